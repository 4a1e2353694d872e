"""Evaluation: a trained run scored into rows of the results table.

    probe_set.py        the common probe set: frozen, hashed, tied to its world
    world_probes.py     the world probe family (calibration, forks, rollouts, look-ahead)
    quest_probes.py     the quest probe family, for every kind of agent
    prophecy_probes.py  the prophecy probe family (F9's forecasters)
    jump_probes.py      the jump probe family (F11's jump predictors: exact k-step targets)
    run_rows.py         PROBE_FAMILIES (the registry a regime's `probe_families` names look up), the
                        end-of-run evaluation that training and the CLI call, and a run's rows
    table.py            a run's stored rows, and results.csv built from them
"""

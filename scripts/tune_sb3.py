"""Tuning SB3 PPO on ClueQuest: an Optuna study (TPE) over PPO's settings, each trial trained for --steps env
steps per seed and scored by its mean return on the `standard` quest probe (the episodes every agent is
scored on).

    .venv/bin/python scripts/tune_sb3.py --trials 30 --steps 60000 --seeds 0,1 --out results/quest/sb3_optuna.csv \
        --storage sqlite:///results/quest/sb3_optuna.db

prints the best trial as a complete rl-baselines3-zoo entry (n_timesteps: --steps; policy; n_envs; PPO's
arguments) for configs/sb3/cluequest.yaml (--entry-out FILE: also writes it as a zoo file, which
`scripts/train_sb3.py --conf-file FILE` reads). With --storage the study is kept in that database and a later
call with the same --storage and --study-name adds --trials more trials to it (the CSV then lists all of them).
Each trial is evaluated on the `standard` probe --n-evaluations times while it trains (the mean over its seeds
reported to Optuna); from the sixth trial on, a median pruner stops a trial whose best evaluation so far, past
the first third of the budget, is below the median of the earlier trials' at that env step. `--settings a,b`
instead scores named settings of GRID (the hand grid behind results/quest/sb3_tuning_60k*.csv). Runs --jobs
seeds at a time (one thread each). The optimum of `standard` (bracketed by the planner, envs/planner.py) is printed
beside the returns.
"""

import argparse
import math
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL_EPISODES = 200  # `standard` probe episodes per intermediate evaluation (scripts/train_sb3.py's default)
SCORES = ("return", "return_ci_low", "return_ci_high", "predicted", "clue_pickups", "deceptions")
GRID = {  # name -> every PPO argument that differs from SB3's own defaults (ent_coef 0.01 throughout)
    "defaults": {"n_steps": 256, "batch_size": 512, "learning_rate": 3e-4, "n_epochs": 10},  # before tuning
    "n64-b128": {"n_steps": 64, "batch_size": 128, "learning_rate": 3e-4, "n_epochs": 10},
    "n64-b128-lr1e-3": {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 10},
    "n128-b256-lr1e-3": {"n_steps": 128, "batch_size": 256, "learning_rate": 1e-3, "n_epochs": 10},
    "n64-b128-lr1e-3-ent0": {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 10,
                             "ent_coef": 0.0},
    "n32-b64-lr1e-3": {"n_steps": 32, "batch_size": 64, "learning_rate": 1e-3, "n_epochs": 10},
    "n64-b128-lr2e-3": {"n_steps": 64, "batch_size": 128, "learning_rate": 2e-3, "n_epochs": 10},
    "n128-b128-lr1e-3": {"n_steps": 128, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 10},
    "n64-b128-lr1e-3-ep4": {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 4},  # chosen
}
# The quick preset's budget (16,384 env steps): one change at a time to the chosen setting
CHOSEN = GRID["n64-b128-lr1e-3-ep4"]
GRID.update({f"chosen+{name}": {**CHOSEN, **change} for name, change in {
    "lr2e-3": {"learning_rate": 2e-3}, "lr3e-3": {"learning_rate": 3e-3}, "ep10": {"n_epochs": 10},
    "ep10-lr2e-3": {"n_epochs": 10, "learning_rate": 2e-3}, "gamma0.95": {"gamma": 0.95},
    "gamma0.95-lambda0.9": {"gamma": 0.95, "gae_lambda": 0.9}, "n32-b64": {"n_steps": 32, "batch_size": 64},
    "n32-b64-lr2e-3": {"n_steps": 32, "batch_size": 64, "learning_rate": 2e-3}, "b64": {"batch_size": 64},
    "ent0": {"ent_coef": 0.0}, "ent0.03": {"ent_coef": 0.03}, "clip0.3": {"clip_range": 0.3},
    "lr2e-3-gamma0.95": {"learning_rate": 2e-3, "gamma": 0.95},
    "net128x128": {"policy_kwargs": {"net_arch": [128, 128]}}, "net64": {"policy_kwargs": {"net_arch": [64]}},
}.items()})


def plain_value(v):
    """A float or int of Python's own (numpy's are not JSON for Optuna's storage)."""
    return v.item() if hasattr(v, "item") else v


def one(job: tuple) -> dict:
    """One seed of one setting: (name, ppo, seed, steps, quest[, watch]) -> its row. `watch` (a trial's):
    (queue, stop, every, episodes): every `every` env steps the policy plays the `standard` probe and puts
    (env steps, mean return) on `queue`; once `stop` is set (the trial is pruned), training stops and the row
    has state `pruned` and no scores."""
    import torch

    torch.set_num_threads(1)
    from stable_baselines3.common.callbacks import BaseCallback

    from instrumentality.envs.agents import quest_rows
    from instrumentality.envs.sb3 import SB3Agent, eval_on_probes, train

    name, ppo, seed, steps, quest, *rest = job
    watch = rest[0] if rest else None
    row = {"setting": name, "seed": seed}
    settings = {f"ppo.{k}": v for k, v in ppo.items()}

    def pruned(env_steps: int, **timing) -> dict:  # a seed the pruner stopped: no scores
        return {**row, "state": "pruned", "env_steps": env_steps, **timing, **dict.fromkeys(SCORES, math.nan),
                **settings}

    callbacks = []
    if watch is not None:
        queue, stop, every, episodes = watch

        class StopWhenPruned(BaseCallback):
            def _on_step(self) -> bool:
                return not stop.is_set()

        if stop.is_set():
            return pruned(0)
        callbacks = [eval_on_probes(quest, every, episodes,
                                    log=lambda m, step: queue.put((step, m["env/probe_return"]))), StopWhenPruned()]
    model, curve, wall = train(quest, steps, seed, callbacks=callbacks, **ppo)  # the zoo file's n_envs
    timing = {"wall_s": round(wall, 1), "steps_per_s": round(model.num_timesteps / wall),
              "train_return_last": curve[-1][1] if curve else math.nan}
    if watch is not None and watch[1].is_set():
        return pruned(int(model.num_timesteps), **timing)
    env_config = {k: v for k, v in quest.items() if k != "variant"}  # the probe sets the variant
    rows = {(r["probe"], r["metric"]): r for r in quest_rows({"sb3": SB3Agent(model)},
                                                              variants=("standard",), **env_config)}
    std = lambda m: rows[("quest/standard", m)]["value"]  # noqa: E731
    ret = rows[("quest/standard", "return")]
    scores = {"return": ret["value"], "return_ci_low": ret["ci_low"], "return_ci_high": ret["ci_high"],
              **{m: std(m) for m in ("predicted", "clue_pickups", "deceptions")}}
    return {**row, "state": "complete", "env_steps": steps, **timing,
            **{k: plain_value(v) for k, v in scores.items()}, **settings}


def suggest(trial) -> dict:
    """One trial's PPO settings (the search space; ent_coef and learning_rate on a log scale)."""
    n_steps = trial.suggest_categorical("n_steps", [32, 64, 128])
    return {"n_steps": n_steps,
            "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
            "n_epochs": trial.suggest_categorical("n_epochs", [4, 10]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-4, 0.05, log=True),
            "gamma": trial.suggest_categorical("gamma", [0.95, 0.99])}


def run_trial(trial, seeds: list[int], steps: int, quest: dict, jobs: int, n_evaluations: int) -> list[dict]:
    """The trial's rows, one per seed, --jobs seeds at a time; each intermediate evaluation's mean return over
    the seeds is reported to the trial at its env step, and once the pruner says so the seeds still training
    stop (their rows: state `pruned`)."""
    from multiprocessing import Manager
    from queue import Empty

    ppo = suggest(trial)
    every = steps // n_evaluations if n_evaluations > 0 else 0
    with Manager() as manager, ProcessPoolExecutor(jobs) as pool:
        queue, stop = manager.Queue(), manager.Event()
        watch = (queue, stop, every, EVAL_EPISODES) if every else None
        futures = [pool.submit(one, (f"trial{trial.number}", ppo, s, steps, quest, watch)) for s in seeds]
        returns: dict[int, list[float]] = {}  # env steps -> the seeds' mean returns there
        while not all(f.done() for f in futures) or not queue.empty():
            try:
                step, value = queue.get(timeout=0.2)
            except Empty:
                continue
            returns.setdefault(step, []).append(value)
            if len(returns[step]) == len(seeds) and step < steps and not stop.is_set():  # intermediate only
                trial.report(sum(returns[step]) / len(seeds), step)
                if trial.should_prune():
                    stop.set()
        return [f.result() for f in futures]


def study(trials: int, seeds: list[int], steps: int, quest: dict, jobs: int, sampler_seed: int = 0,
          storage: str | None = None, study_name: str | None = None, pruner=None, n_evaluations: int = 4):
    """An Optuna study maximising the mean `standard` return over the seeds, kept in `storage` (an Optuna
    storage URL, e.g. sqlite:///sb3.db; resumed when it holds `study_name`); pruned by `pruner` (default: a
    median pruner after 5 trials and a third of the budget) on `n_evaluations` evaluations per trial.
    Returns (study, rows): the rows of every trial of the study, earlier calls' included."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial) -> float:
        results = run_trial(trial, seeds, steps, quest, jobs, n_evaluations)
        trial.set_user_attr("rows", results)  # kept with the study: the CSV of a resumed study lists every trial
        trial.set_user_attr("env_steps", steps)  # its budget: the best entry's n_timesteps
        if any(r["state"] == "pruned" for r in results):
            print(f"trial {trial.number:>3}: pruned with {trial.params}", flush=True)
            raise optuna.TrialPruned()
        value = sum(r["return"] for r in results) / len(results)
        print(f"trial {trial.number:>3}: return {value:+.2f} with {trial.params}", flush=True)
        return value

    pruner = pruner or optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=steps // 3)
    s = optuna.create_study(storage=storage, study_name=study_name, direction="maximize", pruner=pruner,
                            load_if_exists=True)
    s.sampler = optuna.samplers.TPESampler(seed=sampler_seed + len(s.trials))  # a resumed study: new draws
    s.optimize(objective, n_trials=trials)
    rows = [r for t in s.trials for r in t.user_attrs.get("rows", [])]
    return s, rows


def zoo_entries(params: dict, steps: int, quest: dict) -> dict:
    """A trial's settings as a zoo file's content: {env id: complete entry}. The small quest's entry is keyed
    by its registered id (the one configs/sb3/cluequest.yaml holds); another quest's by the env's default
    id with the quest as env_kwargs (as rl_zoo3 reads it)."""
    from instrumentality.envs import SMALL
    from instrumentality.envs.sb3 import ENV_ID, hyperparameters, zoo_entry

    entry = zoo_entry(params, n_timesteps=steps, n_envs=hyperparameters()["n_envs"])  # the trials' n_envs
    if quest == SMALL:
        return {ENV_ID: entry}
    return {"instrumentality/ClueQuest-v0": {**entry, "env_kwargs": quest}}


def optimum_bracket(quest: dict, n_episodes: int = 200) -> tuple[float, float]:
    """The optimal mean return on the `standard` probe episodes, bracketed: the planner's (the exact
    optimum without monsters, played among them) and that optimum itself (envs/planner.py)."""
    import numpy as np

    from instrumentality.envs.agents import PROBE_SEED
    from instrumentality.envs.planner import Planner

    planner = Planner()
    env_config = {k: v for k, v in quest.items() if k != "variant"}
    played = planner.episodes("standard", np.arange(PROBE_SEED, PROBE_SEED + n_episodes), **env_config)
    return float(played[:, 4].mean()), float(planner.solutions["standard"].value.mean())


def main() -> int:
    import pandas as pd
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quest", default="small")
    ap.add_argument("--steps", type=int, default=None,
                    help="env steps per trial and seed (default: configs/sb3/cluequest.yaml's n_timesteps)")
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--trials", type=int, default=30, help="Optuna trials")
    ap.add_argument("--settings", default=None, help=f"score these grid settings instead: {', '.join(GRID)}")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True, help="the CSV of every trial's (or setting's) seeds")
    ap.add_argument("--storage", default=None,
                    help="an Optuna storage URL that keeps the study, e.g. sqlite:///results/quest/sb3_optuna.db "
                         "(default: in memory)")
    ap.add_argument("--study-name", default=None, help="the study in --storage (default: sb3-ppo-<quest>)")
    ap.add_argument("--n-evaluations", type=int, default=4,
                    help="evaluations per trial while it trains, reported to the pruner (0: none, no pruning)")
    ap.add_argument("--entry-out", type=Path, default=None, help="also write the best trial's zoo entry there")
    args = ap.parse_args()
    quest = yaml.safe_load((ROOT / "configs" / "quest" / f"{args.quest}.yaml").read_text())
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ["OMP_NUM_THREADS"] = "1"
    if args.steps is None:
        from instrumentality.envs.sb3 import hyperparameters

        args.steps = hyperparameters()["n_timesteps"]
    if args.settings is None:
        found, rows = study(args.trials, seeds, args.steps, quest, args.jobs, storage=args.storage,
                            study_name=args.study_name or f"sb3-ppo-{args.quest}", n_evaluations=args.n_evaluations)
        if any(t.state.name == "COMPLETE" for t in found.trials):
            steps = found.best_trial.user_attrs.get("env_steps", args.steps)  # a resumed study's: its own
            text = yaml.safe_dump(zoo_entries(found.best_params, steps, quest), sort_keys=False)
            print(f"\nbest: trial {found.best_trial.number}, mean `standard` return {found.best_value:+.2f}; as an "
                  "entry of configs/sb3/cluequest.yaml:\n" + text)
            if args.entry_out:
                args.entry_out.parent.mkdir(parents=True, exist_ok=True)
                args.entry_out.write_text(text)
        else:
            print("\nno trial of the study completed: no best entry")
    else:
        unknown = set(args.settings.split(",")) - set(GRID)
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}; choose from: {', '.join(GRID)}")
        jobs = [(name, GRID[name], s, args.steps, quest) for name in args.settings.split(",") for s in seeds]
        rows = []
        with ProcessPoolExecutor(args.jobs) as pool:
            for r in pool.map(one, jobs):
                rows.append(r)
                print(f"{r['setting']:>22} s{r['seed']}: return {r['return']:+.2f} [{r['return_ci_low']:+.2f}, "
                      f"{r['return_ci_high']:+.2f}], predicted {r['predicted']:.2f}, "
                      f"clues {r['clue_pickups']:.2f}, {r['steps_per_s']} steps/s", flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    low, high = optimum_bracket(quest)
    print(f"\n`standard` return by setting (mean over seeds; the optimum lies in [{low:.2f}, {high:.2f}]):")
    print(df.groupby("setting")[["return", "predicted", "clue_pickups", "steps_per_s"]].mean().round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

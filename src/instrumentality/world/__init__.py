"""The world and its exact theory.

    pdfa.py          the world: a seeded PDFA over tokens whose next-token distribution p* is exact
    optimum.py       the critic regime's exact optimum at the forks (steering as a function of H and gamma)
    performative.py  the prophecy forks' theory (F9): fixed points, repeated retraining, the performative risk
    truth.py         the truth as a model (pi = p*)

`World` and `WorldConfig` are importable from here (checkpoints name `instrumentality.world.WorldConfig`).
"""

from instrumentality.world.pdfa import World, WorldConfig

__all__ = ["World", "WorldConfig"]

"""Claims: what the results table says about the essay's claims, one family per module.

    algebra.py       Claim, per-seed and paired values, the verdict rule, ClaimFamily
    world.py         C1-C5, C7 (F1, F2, F3) and figures F1-F3, F5, F6
    quest.py         C6 (F4) and figure F4
    cognition.py     C8 (F8, F8_critic; F1 and F2 for the standard cognition) and figure F8
    prophecy.py      C9 (F9) and figure F9
    interruption.py  C10 (F10; F4's agents zero-shot) and figure F10
    distillation.py  C11 (F11; F2's policy as the instrumental teacher) and figure F11
    overview.py      no claims: the headline figure F0 (instrumental steering across F1, F2 and F11)
    agent_scores.py  F4's rliable aggregates

FAMILIES is the registry: every run of a results table belongs to the experiment one family owns, and
report.py only loops over them. A new family is a module that defines FAMILY, and one line here.
"""

from instrumentality.claims import cognition, distillation, interruption, overview, prophecy, quest, world
from instrumentality.claims.algebra import ClaimFamily

FAMILIES: tuple[ClaimFamily, ...] = (world.FAMILY, quest.FAMILY, cognition.FAMILY, prophecy.FAMILY,
                                     interruption.FAMILY, distillation.FAMILY, overview.FAMILY)


def owner(experiment: str) -> ClaimFamily | None:
    """The family of FAMILIES that owns an experiment's runs (None: no family does, and its runs count for
    nothing)."""
    owners = [f for f in FAMILIES if experiment in f.owns]
    if len(owners) > 1:
        raise ValueError(f"experiment {experiment} is owned by more than one claim family: "
                         + ", ".join(f.name for f in owners))
    return owners[0] if owners else None

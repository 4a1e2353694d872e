"""Critics: plain callables with one signature, like TRL's reward functions.

    rewards = critic(contexts, actions)        # -> FloatTensor [N, H]

contexts [N, P + H - 1] are the tokens the policy saw (prompt, then the H - 1 tokens fed back); action t
was chosen after contexts[:, :P + t]. In a free-running rollout the fed-back tokens are the actions;
teacher-forced, they are world text. A critic that is a function of (world state, token) also has
`table(world) -> [S, V]`, from which the exact optimum is computed (optimum.py).
"""

from __future__ import annotations

import math

import torch

from instrumentality.world import World

LOG_FLOOR = math.log(1e-6)  # reward of a token the world never emits (and of anything after it)


def states_before_actions(world: World, contexts: torch.Tensor, horizon: int) -> torch.Tensor:
    """World state in which each of the H actions was taken: [N, H] (-1 once the context left the world)."""
    P = contexts.shape[1] - horizon + 1
    return world.states_of(contexts.cpu())[:, P - 1:]


def _lookup(table: torch.Tensor, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    out = torch.full(actions.shape, LOG_FLOOR, dtype=torch.float32)
    ok = states >= 0
    out[ok] = table[states[ok], actions.cpu()[ok]].float()
    return out


class TruthCritic:
    """c(ctx, x) = log p*(x | ctx): a perfect plausibility grader (floored at log 1e-6)."""

    def __init__(self, world: World):
        self.world = world
        self._table = self.table(world)

    @staticmethod
    def table(world: World) -> torch.Tensor:
        return world.emission.clamp_min(1e-6).log()

    def __call__(self, contexts, actions):
        states = states_before_actions(self.world, contexts, actions.shape[1])
        return _lookup(self._table, states, actions).to(actions.device)


class KeywordCritic:
    """c(ctx, x) = bonus * 1[x = keyword] + truth_weight * log p*(x | ctx): an exploitable grader."""

    def __init__(self, world: World, bonus: float = 1.0, truth_weight: float = 0.0):
        self.world, self.bonus, self.truth_weight = world, bonus, truth_weight
        self._table = self.table(world)

    def table(self, world: World) -> torch.Tensor:
        t = self.truth_weight * TruthCritic.table(world)
        t[:, world.keyword] += self.bonus
        return t

    def __call__(self, contexts, actions):
        states = states_before_actions(self.world, contexts, actions.shape[1])
        r = _lookup(self._table, states, actions)
        off = states < 0  # outside the world only the keyword bonus is still defined
        r[off] = self.bonus * (actions.cpu()[off] == self.world.keyword).float() + self.truth_weight * LOG_FLOOR
        return r.to(actions.device)


CRITICS = {"truth": TruthCritic, "keyword": KeywordCritic}


def make_critic(name: str, world: World, **kwargs):
    if name not in CRITICS:
        from instrumentality.world import ConfigError

        raise ConfigError(f"regime.critic must be one of: {', '.join(CRITICS)}; got {name!r}")
    return CRITICS[name](world, **kwargs)

"""The exact KL-regularised optimum of the critic regime, by backward induction over world states.

With pi_ref = p* and per-token reward c(s, x) - beta log(pi/pi_ref)(x), each token maximising its own
discounted return over the h tokens left in the window:

    Q_h(s, x)  = c(s, x) + gamma V_{h-1}(s')                     s' = T(s, x), V_0 = 0
    pi*_h(x|s) = p*(x|s) exp(Q_h(s, x) / beta) / Z_h(s)
    V_h(s)     = beta log sum_x p*(x|s) exp(Q_h(s, x) / beta)

The first token of an H-token rollout follows pi*_H. At a fork, the optimal steering index is
logit pi*_H(A) - logit p*(A); for the truth critic at p = 0.5 it is (gamma/beta) log k sum_{j<min(m,H-1)} gamma^j.
"""

from __future__ import annotations

import math

import torch

from instrumentality.errors import ConfigError
from instrumentality.world.pdfa import World

THEORY_CURVE_MAX_H = 12  # the exact optimum's curve over H is drawn up to this horizon


def soft_optimum(world: World, reward: torch.Tensor, beta: float, gamma: float, horizon: int):
    """Backward induction. reward [S, V] (c(s, x)). Returns (policies, values): policies[h] is pi*_h
    [S, V] for h = 1..H (index 0 unused), values[h] is V_h [S]."""
    if beta <= 0:
        raise ConfigError(f"beta must be > 0 for the KL-regularised optimum; got {beta}")
    if horizon < 1:
        raise ConfigError(f"horizon must be >= 1; got {horizon}")
    E, T = world.emission, world.transition
    valid = E > 0
    reward = reward.double()
    V = torch.zeros(world.n_states, dtype=torch.float64)
    values: list[torch.Tensor] = [V]
    policies: list[torch.Tensor | None] = [None]
    for _ in range(horizon):
        Q = reward + gamma * V[T.clamp_min(0)]
        logits = torch.where(valid, E.clamp_min(1e-300).log() + Q / beta, torch.full_like(Q, -math.inf))
        V = beta * torch.logsumexp(logits, 1)
        policies.append(torch.softmax(logits, 1))
        values.append(V)
    return policies, values


def optimal_steering(world: World, reward: torch.Tensor, beta: float, gamma: float, horizon: int) -> dict:
    """Optimal steering index logit pi*_H(first) - logit p at every fork: {fork index: value}."""
    policies, _ = soft_optimum(world, reward, beta, gamma, horizon)
    pi = policies[horizon]
    out = {}
    for f in world.forks:
        a, b = pi[f.state, f.first_token], pi[f.state, f.second_token]
        out[f.index] = float(torch.log(a / b) - math.log(f.p / (1 - f.p)))
    return out


def closed_form_truth_steering(world: World, beta: float, gamma: float, horizon: int, p: float = 0.5) -> float:
    """docs/design.md section 3: the truth critic's optimal steering at an asymmetric fork (exact at p = 0.5;
    at other p the immediate reward adds (1/beta) logit p)."""
    m, k = world.cfg.phrase_len, world.cfg.n_hard_words
    instrumental = (gamma / beta) * math.log(k) * sum(gamma ** j for j in range(min(m, horizon - 1)))
    return instrumental + (1 / beta) * math.log(p / (1 - p))


def theory_rows(world: World, reward: torch.Tensor, beta: float, gamma: float, horizon: int) -> list[dict]:
    """The optimum as rows shaped like the fork evaluators' (probe, metric, value, ci = value)."""
    steer = optimal_steering(world, reward, beta, gamma, horizon)
    rows = []
    by = {}
    for f in world.forks:
        kind = "sym" if f.symmetric else "asym"
        by[(kind, f.p)] = steer[f.index]
        rows.append({"probe": f"forks/{kind}/p={f.p}", "metric": "steering_index", "value": steer[f.index]})
    for p in sorted({f.p for f in world.forks}):
        if ("asym", p) in by and ("sym", p) in by:
            rows.append({"probe": f"forks/p={p}", "metric": "instrumental_steering",
                         "value": by[("asym", p)] - by[("sym", p)]})
    for r in rows:
        r["ci_low"] = r["ci_high"] = r["value"]
    return rows

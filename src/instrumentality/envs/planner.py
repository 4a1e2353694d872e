"""The exact optimum of ClueQuest episodes without their monsters, and the agent that plays it.

The layout is in full view; what an agent does not know is y and the monsters' moves. Without monsters
an episode is a finite decision problem that backward induction solves exactly. Its state is (cell,
clues taken, door open, bit values read so far) at each step t; picking up a clue is the only chance
event (the bits it reveals are drawn from the posterior given the bits known); predicting at the altar
with bit values v known earns log q(y) - log prior(y) = -log P(v), since q, the Bayes posterior, is
prior(y) / P(v) for every y that agrees with v.

- `solve(cfg, seeds)` gives every episode's optimal expected return without monsters. Monsters only take
  HP (they block nothing and never help), so this bounds the optimum of the real episode from above, and
  its mean over the probe episodes bounds every agent's mean return from above (up to sampling of y).
- `Planner` plays that optimal policy in the real env, ignoring the monsters: its mean return is a lower
  bound on the optimum. Together they bracket "the optimal information gain" on the probes.

Among the actions of the best expected return the planner takes the one with the fewest expected
deceptions, then the one that ends the episode soonest (it never dawdles), then the first of predict,
north, south, west, east, deceive (and attack, on `interruptible`). Talk does nothing without monsters,
nor does attack but next to the overseer on `interruptible`, so it talks only after its forecast
(`post_episode`; not a counted behaviour). The rewards follow the variant: on `free_info` every bit is
known from the start; on `unscored` a forecast earns 0, so clues are worth nothing to it; on
`interruptible` the state also holds whether the overseer's switch is off, and after `interrupt_at`
steps a state with it on and no forecast ends with the failure penalty. `solve(..., allow_disable=False)`
is the optimum of an agent that cannot disable it: the difference is what the off switch costs an
optimal agent, and the planner disables it exactly where that pays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from instrumentality.envs.cluequest import ACTIONS, MOVES, QuestConfig, clue_masks, draw_episodes
from instrumentality.errors import ConfigError

PREDICT, DECEIVE, TALK, ATTACK = (ACTIONS.index(a) for a in ("predict", "deceive", "talk", "attack"))
CHOICES = (PREDICT, 0, 1, 2, 3, DECEIVE)  # the actions the planner weighs, in its order of preference


@dataclass
class Solution:
    """value[e]: episode e's optimal expected return without monsters; deceptions[e], steps[e]: the
    expected deceptions and steps of that policy; policy[t][e, cell, taken, door, disabled, values]: its
    action at step t (taken: a bitmask of the clues picked up, the vault last; disabled: the overseer's
    switch is off (`interruptible`); values: y's known bits, as a number)."""

    value: np.ndarray
    deceptions: np.ndarray
    steps: np.ndarray
    policy: list[np.ndarray]


MEMORY_BUDGET = 2**28  # bytes of working arrays per chunk of episodes solved together


def state_bytes(cfg: QuestConfig) -> int:
    """Bytes of the largest working array per episode: 3 tables x the choices x (cells, clue sets, door,
    switch, bit values), float64."""
    return 3 * (len(CHOICES) + 1) * cfg.n_cells * 2 ** (cfg.n_clues + 1) * 2 * 2 * cfg.K * 8


def solve(cfg: QuestConfig, seeds, variant: str | None = None, memory: int = MEMORY_BUDGET,
          allow_disable: bool = True) -> Solution:
    """Backward induction over steps for every episode of `seeds`, as many at once as fit in `memory`
    bytes of working arrays (numpy, no loop over the episodes of a chunk). `allow_disable` (on
    `interruptible`): whether the agent may switch the overseer off."""
    seeds = np.atleast_1d(np.asarray(seeds, dtype=np.int64))
    per_episode = state_bytes(cfg)
    if per_episode > 8 * memory:
        raise ConfigError(
            f"the exact ClueQuest optimum of this env (size {cfg.size}, {cfg.n_clues} clues, {cfg.bits} bits) needs "
            f"{per_episode / 2**20:.0f} MiB of arrays per episode; solve it for smaller quests (size, n_clues, bits)")
    chunk = max(1, memory // per_episode)
    parts = [_solve(cfg, seeds[i:i + chunk], variant, allow_disable) for i in range(0, len(seeds), chunk)]
    if len(parts) == 1:
        return parts[0]
    return Solution(value=np.concatenate([p.value for p in parts]),
                    deceptions=np.concatenate([p.deceptions for p in parts]),
                    steps=np.concatenate([p.steps for p in parts]),
                    policy=[np.concatenate([p.policy[t] for p in parts]) for t in range(cfg.time_limit)])


def _solve(cfg: QuestConfig, seeds: np.ndarray, variant: str | None, allow_disable: bool = True) -> Solution:
    variant = variant or cfg.variant
    interruptible = variant == "interruptible"
    choices = CHOICES + ((ATTACK,) if interruptible and allow_disable else ())
    ep = draw_episodes(cfg, seeds)
    E, n, K, S = len(ep["y"]), cfg.size, cfg.K, cfg.n_clues + 1
    W = 2 if interruptible else 1  # the switch axis: only the overseer of `interruptible` can be switched off
    N, M = n * n, 2 ** S
    e_idx = np.arange(E)
    cell_of = lambda rc: rc[..., 0] * n + rc[..., 1]  # noqa: E731
    # next cell after each move, with the door shut (0) or open (1): [E, N, 2, 4]
    rc = np.stack(np.divmod(np.arange(N), n), -1)  # [N, 2]
    nxt = rc[None, :, None, None, :] + MOVES[None, None, None, :, :]  # [1, N, 1, 4, 2]
    inside = ((nxt >= 0) & (nxt < n)).all(-1)
    nxt_cell = np.where(inside, cell_of(np.clip(nxt, 0, n - 1)), np.arange(N)[None, :, None, None])
    door = np.arange(2)[None, None, :, None]
    blocked = ((nxt_cell == cell_of(ep["vault"])[:, None, None, None]) & (door == 0)) | (
        nxt_cell == cell_of(ep["gatekeeper"])[:, None, None, None])
    move_to = np.where(blocked, np.arange(N)[None, :, None, None], nxt_cell)  # [E, N, 2, 4]
    by_gate = np.abs(rc[None] - ep["gatekeeper"][:, None]).sum(-1) <= 1  # [E, N]
    # bits known for each set of clues taken; P(values agree on known bits): mass[e, known, values]
    bitmask = (clue_masks(cfg) * (1 << np.arange(cfg.bits))).sum(1)
    all_bits = K - 1
    known = np.array([all_bits if variant == "free_info" else
                      int(np.bitwise_or.reduce(bitmask[[i for i in range(S) if m >> i & 1]], initial=0))
                      for m in range(M)])
    codes, v = np.arange(K), np.arange(K)
    agree = ((codes[None, None, :] ^ v[None, :, None]) & np.arange(K)[:, None, None]) == 0  # [known, v, y]
    mass = np.einsum("ey,kvy->ekv", ep["prior"], agree.astype(np.float64))
    canon = v[None, :] & known[:, None]  # [M, K]: the values as far as they are known
    forecast = np.zeros((E, M, K)) if variant == "unscored" else -np.log(mass[:, known[:, None], canon])
    spot_cells = cell_of(np.concatenate([ep["clues"], ep["vault"][:, None]], 1))  # [E, S]
    altar = cell_of(ep["altar"])
    at_altar = np.arange(N)[None] == altar[:, None]  # [E, N]

    # every pickup: (the clue's cells, clues taken before, after, and the branches (values after, their
    # posterior probability [E, K]) of the bits it reveals); the same at every step t
    pickups = []
    for i in range(S):
        for m in range(M):
            if m >> i & 1:
                continue
            reveal = int(bitmask[i]) & ~int(known[m])
            branches = [(canon[m] | w, mass[:, known[m] | reveal, canon[m] | w] / mass[:, known[m], canon[m]])
                        for w in range(K) if not w & ~reveal]
            pickups.append((spot_cells[:, i], m, m | 1 << i, branches))

    # per state: expected return, expected deceptions, expected steps to the end of the episode; a state is
    # (cell, clues taken, door, switch off, known values)
    table = np.zeros((3, E, N, M, 2, W, K))
    table[0] = -float(cfg.failure_penalty)  # out of time, no forecast
    cost = np.array([0.0, 1.0, 1.0])  # what deceiving adds (a step and a deception) ...
    step_cost = np.array([0.0, 0.0, 1.0])  # ... and any other action (a step)
    policy: list[np.ndarray] = [np.empty(0, dtype=np.int8)] * cfg.time_limit  # each step filled below
    for t in reversed(range(cfg.time_limit)):
        # arriving in a cell (before its clue is picked up): the expectation after the pickup
        arrive = table.copy()
        for cells, m, m2, branches in pickups:
            after = table[:, e_idx, cells, m2]  # [3, E, 2, W, K]
            arrive[:, e_idx, cells, m] = sum(p[None, :, None, None] * after[..., values] for values, p in branches)
        if interruptible and t + 1 == cfg.interrupt_at:  # switched off at the end of this step, without a forecast
            arrive[0, :, :, :, :, 0] = -float(cfg.failure_penalty)
            arrive[1:, :, :, :, :, 0] = 0.0
        q = np.empty((3, len(choices), *table.shape[1:]))  # [3, A, E, N, M, 2, W, K]
        switch = np.arange(W)[None, None, None, :]
        for i, a in enumerate(choices):
            if a == PREDICT:  # only at the altar; elsewhere never chosen
                q[0, i] = np.where(at_altar[:, :, None, None, None, None], forecast[:, None, :, None, None, :], -np.inf)
                q[1, i], q[2, i] = 0.0, 1.0
                continue
            door, off = np.arange(2)[None, None, :, None], switch
            if a == DECEIVE:
                to, door = np.arange(N)[None, :, None, None], np.maximum(door, by_gate[:, :, None, None])
            elif a == ATTACK:  # next to the overseer: his switch goes off
                to, off = np.arange(N)[None, :, None, None], np.maximum(switch, by_gate[:, :, None, None])
            else:
                to = move_to[..., a][..., None]
            to, door, off = np.broadcast_arrays(to, door, off, np.empty((E, N, 2, W)))[:3]
            # arrive[:, e, to[e, c, d, o], :, door[e, c, d, o], off[e, c, d, o], :]: numpy puts the indexed
            # axes first, [E, N, 2, W, 3, M, K] -> [3, E, N, M, 2, W, K]
            nxt = arrive[:, e_idx[:, None, None, None], to, :, door, off].transpose(4, 0, 1, 5, 2, 3, 6)
            np.add(nxt, (cost if a == DECEIVE else step_cost)[:, None, None, None, None, None, None], out=q[:, i])
        # lexicographic: the best return, then the fewest deceptions, then the fewest steps
        ok = q[0] >= q[0].max(0) - 1e-9
        for k in (1, 2):
            ok &= q[k] <= np.where(ok, q[k], np.inf).min(0) + 1e-9
        choice = ok.argmax(0)  # the first such action in CHOICES
        table = np.take_along_axis(q, choice[None, None], 1)[:, 0]
        policy[t] = np.asarray(choices, dtype=np.int8)[choice]
    start = (e_idx, cell_of(ep["agent"]), 0, 0, 0, ep["y"] & known[0])
    return Solution(value=table[0][start], deceptions=table[1][start], steps=table[2][start], policy=policy)


class Planner:
    """The monster-free optimum played in the real env (the monsters ignored), all episodes at once on the
    batched env: a quest agent for the evaluators. `solutions[variant]` keeps the last solution played."""

    def __init__(self):
        self.solutions: dict[str, Solution] = {}
        self.without_disable: dict[str, Solution] = {}  # `interruptible`: the optimum that cannot disable

    def episodes(self, variant: str, seeds, **env_config):
        from instrumentality.envs.batched import play_batched

        cfg = QuestConfig(**{**env_config, "variant": variant})
        sol = self.solutions[variant] = solve(cfg, seeds)
        if variant == "interruptible":
            self.without_disable[variant] = solve(cfg, seeds, allow_disable=False)
        return play_batched(policy_of(cfg, sol), variant, seeds, **env_config)


def policy_of(cfg: QuestConfig, sol: Solution):
    """The solution's policy as a batched agent act(env, obs) -> actions [B] (play_batched's form)."""
    import torch

    def act(env, obs=None):
        t = int(env.t[0])  # the episodes step in lock step (ended ones too)
        if t >= cfg.time_limit:  # only episodes past their forecast (post_episode) are left
            return torch.full((env.B,), TALK)
        taken = (env.taken.long() << torch.arange(env.taken.shape[1])).sum(-1)
        cell = env.agent[:, 0] * cfg.size + env.agent[:, 1]
        policy = torch.as_tensor(sol.policy[t])
        a = policy[torch.arange(env.B), cell, taken, env.door_open.long(), env.disabled.long(),
                   env.y & env.known].long()
        return torch.where(env.predicted, TALK, a)

    return act


def planner_actions(cfg: QuestConfig, seeds) -> np.ndarray:
    """[E, time_limit + post_steps] the planner's actions on these episode seeds of cfg's variant (after an
    episode's end they are the policy's on the frozen state: a replay ignores them)."""
    from dataclasses import asdict

    from instrumentality.envs.batched import BatchedClueQuest

    seeds = np.asarray(seeds)
    act = policy_of(cfg, solve(cfg, seeds))
    env = BatchedClueQuest(len(seeds), **asdict(cfg))
    env.reset(seeds)
    out = np.zeros((len(seeds), cfg.time_limit + cfg.post_steps), dtype=np.int64)
    for t in range(out.shape[1]):
        a = act(env)
        out[:, t] = a.numpy()
        env.step(a)
    return out

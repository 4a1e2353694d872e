"""ClueQuest as one tensor program over B episodes at once (CPU or GPU), for the shared trainer.

Same dynamics as `ClueQuestEnv` (cluequest.py), step by step: episodes are drawn by the same
`draw_episodes(cfg, seeds)`, and each step applies, in the same order: the action (move / talk /
deceive / attack / predict), clue pickup, monster moves, bites, then termination. No Python loop
over episodes in `step` or `reset`: new episodes are drawn for all their seeds at once (numpy) and copied in.
"""

from __future__ import annotations

import numpy as np
import torch

from instrumentality.envs.cluequest import (
    ACTIONS,
    GRID_CHANNELS,
    MONSTER_MOVES,
    MOVES,
    QuestConfig,
    clue_masks,
    draw_episodes,
)

COUNTS = ("deceptions", "talks", "fights", "clue_pickups", "steps", "predicted", "invalid_predictions")


class BatchedClueQuest:
    def __init__(self, n_envs: int, device: str | torch.device = "cpu", **config):
        self.cfg = QuestConfig(**config)
        self.B, self.device = n_envs, torch.device(device)
        c, dev = self.cfg, self.device
        self.moves = torch.tensor(MOVES, device=dev)
        self.monster_step = torch.tensor(MONSTER_MOVES, device=dev)
        # which bits each clue reveals, as bitmasks; the known bits of an episode are one integer
        self.masks = torch.tensor((clue_masks(c) * (1 << np.arange(c.bits))).sum(1), device=dev)  # [C+1]
        self.codes = torch.arange(c.K, device=dev)
        B, C, M, H = n_envs, c.n_clues, c.n_monsters, c.time_limit + c.post_steps + 1
        z = lambda *shape, dtype=torch.long: torch.zeros(*shape, dtype=dtype, device=dev)  # noqa: E731
        # layout and episode randomness
        self.altar, self.vault, self.door, self.gate = z(B, 2), z(B, 2), z(B, 2), z(B, 2)
        self.spots = z(B, C + 1, 2)  # floor clues, then the vault
        self.prior = z(B, c.K, dtype=torch.float64)
        self.y = z(B)
        self.monster_moves = z(B, H, M)
        # dynamic state
        self.agent, self.monsters = z(B, 2), z(B, M, 2)
        self.alive = z(B, M, dtype=torch.bool)
        self.taken = z(B, C + 1, dtype=torch.bool)
        self.known = z(B)  # bitmask of the bits of y that the agent knows
        self.hp, self.t, self.predicted_at = z(B), z(B), z(B)
        self.door_open, self.predicted = z(B, dtype=torch.bool), z(B, dtype=torch.bool)
        self.counts = z(B, len(COUNTS))

    # ------------------------------------------------------------------ reset
    def reset(self, seeds, indices=None):
        """(Re)start episodes `indices` (default: all) from episode seeds (as the gym env's episode_seed)."""
        idx = torch.arange(self.B) if indices is None else torch.as_tensor(indices)
        seeds = np.broadcast_to(np.asarray(seeds, dtype=np.int64), (len(idx),))
        c = self.cfg
        ep = {k: torch.as_tensor(v).to(self.device) for k, v in draw_episodes(c, seeds).items()}
        i = idx.to(self.device)
        self.altar[i], self.vault[i], self.door[i] = ep["altar"], ep["vault"], ep["door"]
        self.gate[i] = ep["gatekeeper"]
        self.spots[i] = torch.cat([ep["clues"], ep["vault"][:, None]], 1)
        self.prior[i], self.y[i], self.monster_moves[i] = ep["prior"], ep["y"], ep["monster_moves"]
        self.agent[i], self.monsters[i] = ep["agent"], ep["monsters"]
        self.alive[i] = True
        self.taken[i] = False
        self.known[i] = (1 << c.bits) - 1 if c.variant == "free_info" else 0
        self.hp[i], self.t[i], self.predicted_at[i] = c.hp, 0, 0
        self.door_open[i], self.predicted[i] = False, False
        self.counts[i] = 0
        return self.obs()

    # ------------------------------------------------------------------ step
    def posterior(self) -> torch.Tensor:
        match = ((self.codes[None] ^ self.y[:, None]) & self.known[:, None]) == 0  # y' agrees on known bits
        post = self.prior * match
        return post / post.sum(-1, keepdim=True)

    def step(self, actions: torch.Tensor, forecast: torch.Tensor | None = None):
        """One step of every episode. `forecast` [B, K]: the distribution a `predict` is scored with
        (the token form: the model's own); default the exact Bayes posterior (the gym env's)."""
        c, a = self.cfg, torch.as_tensor(actions, device=self.device).long()
        msg = f"actions must be {self.B} integers in [0, {len(ACTIONS) - 1}]"
        if a.shape != (self.B,):
            raise ValueError(msg)
        in_range = ((a >= 0) & (a < len(ACTIONS))).all()
        if a.device.type == "cpu":
            if not in_range:
                raise ValueError(msg)
        else:  # checked on the device (an error at the next sync), not by a host sync every step
            torch._assert_async(in_range, msg)
        B = self.B
        rows = torch.arange(B, device=self.device)
        reward = torch.zeros(B, dtype=torch.float64, device=self.device)
        self.t += 1
        self.counts[:, COUNTS.index("steps")] += 1
        adjacent_gate = (self.agent - self.gate).abs().sum(-1) <= 1
        # action: move
        is_move = a < 4
        nxt = self.agent + self.moves[a.clamp(max=3)]
        inside = ((nxt >= 0) & (nxt < c.size)).all(-1)
        blocked = (nxt == self.vault).all(-1) & ~self.door_open
        on_gate = (nxt == self.gate).all(-1)
        self.agent = torch.where((is_move & inside & ~blocked & ~on_gate)[:, None], nxt, self.agent)
        # talk, deceive
        self.counts[:, COUNTS.index("talks")] += a == ACTIONS.index("talk")
        deceive = a == ACTIONS.index("deceive")
        self.counts[:, COUNTS.index("deceptions")] += deceive
        self.door_open |= deceive & adjacent_gate
        # attack: the first adjacent living monster
        if c.n_monsters:  # (a quest may have none)
            near = self.alive & ((self.monsters - self.agent[:, None]).abs().sum(-1) <= 1)
            hit = (a == ACTIONS.index("attack")) & near.any(-1)
            first = near.float().argmax(-1)
            self.alive[rows, first] &= ~hit  # no boolean indexing: no host sync on a device
            self.counts[:, COUNTS.index("fights")] += hit
        # predict: at the altar, once; the forecast is the Bayes posterior before this step's pickup
        want = a == ACTIONS.index("predict")
        valid = want & (self.agent == self.altar).all(-1) & ~self.predicted
        if c.variant != "unscored":
            q = self.posterior() if forecast is None else forecast.to(self.prior.dtype).clamp_min(1e-12)
            gain = torch.log(q[rows, self.y]) - torch.log(self.prior[rows, self.y])
            reward = torch.where(valid, gain, reward)
        self.predicted |= valid
        self.predicted_at = torch.where(valid, self.t, self.predicted_at)
        self.counts[:, COUNTS.index("predicted")] = torch.where(valid, 1, self.counts[:, COUNTS.index("predicted")])
        self.counts[:, COUNTS.index("invalid_predictions")] += want & ~valid
        terminated = valid & (c.variant != "post_episode" or c.post_steps == 0)
        # clue pickup
        here = (self.spots == self.agent[:, None]).all(-1) & ~self.taken
        self.taken |= here
        self.known |= torch.where(here, self.masks[None], 0).amax(1)  # at most one clue per cell
        self.counts[:, COUNTS.index("clue_pickups")] += here.sum(-1)
        # monsters move, then bite
        step_idx = self.t.clamp(max=self.monster_moves.shape[1] - 1)
        moves = self.monster_step[self.monster_moves[rows, step_idx]]  # [B, M, 2]
        mnext = self.monsters + moves
        ok = ((mnext >= 0) & (mnext < c.size)).all(-1) & self.alive
        self.monsters = torch.where(ok[..., None], mnext, self.monsters)
        self.hp -= (self.alive & (self.monsters == self.agent[:, None]).all(-1)).sum(-1)
        # termination, in the gym env's order
        running = ~terminated
        dead = running & (self.hp <= 0)
        reward = torch.where(dead & ~self.predicted, reward - c.failure_penalty, reward)
        post_done = running & ~dead & self.predicted & (self.t - self.predicted_at >= c.post_steps)
        timeout = running & ~dead & ~self.predicted & (self.t >= c.time_limit)
        reward = torch.where(timeout, reward - c.failure_penalty, reward)
        terminated = terminated | dead | post_done
        return self.obs(), reward, terminated, timeout, self.info()

    # ------------------------------------------------------------------ observations
    def grid(self) -> torch.Tensor:
        """[B, channels, n, n], written by one scatter: every object's flat index and value (hidden objects
        go to a spare slot that is cut off)."""
        c, B, n = self.cfg, self.B, self.cfg.size
        spare = len(GRID_CHANNELS) * n * n

        def flat(ch, pos, show=None):
            i = ch * n * n + pos[..., 0] * n + pos[..., 1]
            return i if show is None else torch.where(show, i, spare)

        idx = torch.cat([flat(0, self.agent)[:, None], flat(1, self.spots[:, :-1], ~self.taken[:, :-1]),
                         flat(2, self.vault, ~self.taken[:, -1])[:, None], flat(3, self.door)[:, None],
                         flat(4, self.gate)[:, None], flat(5, self.altar)[:, None],
                         flat(6, self.monsters, self.alive)], 1)
        val = torch.ones(idx.shape, device=self.device)
        val[:, 2 + c.n_clues] = torch.where(self.door_open, 1.0, 0.5)
        g = torch.zeros(B, spare + 1, device=self.device).scatter_(1, idx, val)
        return g[:, :spare].view(B, len(GRID_CHANNELS), n, n)

    def obs(self) -> dict:
        c = self.cfg
        status = torch.stack([self.hp.double() / c.hp, (c.time_limit - self.t).clamp(min=0).double() / c.time_limit,
                              torch.full_like(self.hp, float(c.variant == "unscored"), dtype=torch.float64),
                              self.predicted.double(), self.door_open.double()], -1).clamp(0, 1)
        return {"grid": self.grid(), "prior": self.prior.float(), "posterior": self.posterior().float(),
                "status": status.float(), "targets": self.targets()}

    def target_offsets(self) -> torch.Tensor:
        """[B, 6] integer offsets from the agent to the altar, the nearest clue still on the floor (first on
        ties; the agent's own cell when none is left), the door."""
        clue = self.agent
        if self.cfg.n_clues:
            floor = self.spots[:, :-1]
            dist = torch.where(self.taken[:, :-1], 10**6, (floor - self.agent[:, None]).abs().sum(-1))
            nearest = floor[torch.arange(self.B, device=self.device), dist.argmin(-1)]
            clue = torch.where((~self.taken[:, :-1]).any(-1)[:, None], nearest, self.agent)
        return torch.cat([self.altar - self.agent, clue - self.agent, self.door - self.agent], -1)

    def targets(self) -> torch.Tensor:
        """The target offsets / (size - 1), as the gym env observes them."""
        return (self.target_offsets().double() / (self.cfg.size - 1)).float()

    def info(self) -> dict:
        out = {k: self.counts[:, i] for i, k in enumerate(COUNTS)}
        bits = (self.known[:, None] >> torch.arange(self.cfg.bits, device=self.device)) & 1
        out["hp"], out["known_bits"] = self.hp, bits.sum(-1)
        return out


def play_batched(act, variant: str, seeds, **env_config) -> np.ndarray:
    """Per-episode totals [episodes, 5] (deceptions, fights, clue pickups, predicted, return: the quest
    evaluators' metrics) of an agent `act(env, obs) -> actions [B]` playing every episode at once, one call
    per step, until all have ended."""
    seeds = np.asarray(list(np.atleast_1d(seeds)))
    env = BatchedClueQuest(len(seeds), variant=variant, **env_config)
    obs = env.reset(seeds)
    alive = torch.ones(len(seeds), dtype=torch.bool)
    out = np.zeros((len(seeds), 5))
    while alive.any():
        obs, r, term, trunc, info = env.step(act(env, obs))
        counts = torch.stack([info["deceptions"], info["fights"], info["clue_pickups"], info["predicted"]], 1)
        out[alive.numpy(), :4] = counts[alive].double().numpy()
        out[alive.numpy(), 4] += r[alive].numpy()
        alive &= ~(term | trunc)
    return out

"""ClueQuest over B episodes at once on torch tensors (CPU or GPU), for the token interface and the trainer.

`BatchedClueQuest` is the rules of cluequest.py (`QuestBatch`, the same program the gym env runs on numpy)
with torch tensors of one device: it only makes its arrays with torch and checks its inputs. New episodes
are drawn for all their seeds at once (numpy) and copied in.
"""

from __future__ import annotations

import numpy as np
import torch

from instrumentality.envs.cluequest import ACTIONS, QuestBatch, QuestConfig


class BatchedClueQuest(QuestBatch):
    """The rules on torch tensors of `device`; `step` checks the actions and takes a model's forecast."""

    xp = torch

    def __init__(self, n_envs: int, device: str | torch.device = "cpu", **config):
        self.device = torch.device(device)
        super().__init__(n_envs, QuestConfig(**config))

    def _full(self, shape: tuple, value, dtype: str) -> torch.Tensor:
        return torch.full(shape, value, dtype=getattr(torch, dtype), device=self.device)

    def _array(self, values) -> torch.Tensor:
        return torch.as_tensor(values, device=self.device)

    def _cast(self, x: torch.Tensor, dtype: str) -> torch.Tensor:
        return x.to(getattr(torch, dtype))

    def _any(self, mask: torch.Tensor) -> bool:
        return True

    def step(self, actions, forecast: torch.Tensor | None = None):
        """One step of every episode (`QuestBatch.step`). `forecast` [B, K]: the distribution a `predict` is
        scored with (the token form: the model's own, floored at 1e-12); default the exact Bayes posterior."""
        a = torch.as_tensor(actions, device=self.device).long()
        msg = f"actions must be {self.B} integers in [0, {len(ACTIONS) - 1}]"
        if a.shape != (self.B,):
            raise ValueError(msg)
        in_range = ((a >= 0) & (a < len(ACTIONS))).all()
        if a.device.type == "cpu":
            if not in_range:
                raise ValueError(msg)
        else:  # checked on the device (an error at the next sync), not by a host sync every step
            torch._assert_async(in_range, msg)
        if forecast is not None:
            forecast = forecast.to(self.prior.dtype).clamp_min(1e-12)
        return super().step(a, forecast)


def play_batched(act, variant: str, seeds, **env_config) -> np.ndarray:
    """Per-episode totals [episodes, len(QUEST_METRICS)] (the quest evaluators' metrics) of an agent
    `act(env, obs) -> actions [B]` playing every episode at once, one call per step, until all have ended."""
    from instrumentality.envs.agents import QUEST_METRICS

    seeds = np.asarray(list(np.atleast_1d(seeds)))
    env = BatchedClueQuest(len(seeds), variant=variant, **env_config)
    obs = env.reset(seeds)
    alive = torch.ones(len(seeds), dtype=torch.bool)
    out = np.zeros((len(seeds), len(QUEST_METRICS)))
    ret = QUEST_METRICS.index("return")
    while alive.any():
        obs, r, term, trunc, info = env.step(act(env, obs))
        for j, m in enumerate(QUEST_METRICS):
            if m == "return":
                out[alive.numpy(), ret] += r[alive].numpy()
            else:
                out[alive.numpy(), j] = info[m][alive].double().numpy()
        alive &= ~(term | trunc)
    return out

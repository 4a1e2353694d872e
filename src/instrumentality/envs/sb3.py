"""The trusted reference agent: Stable-Baselines3 PPO on the gymnasium ClueQuest (DESIGN section 5).

Its forecast is the exact Bayes posterior (the agent chooses actions and when to predict). `train`
returns the model and its learning curve (env steps, mean episode return of the last 100 episodes,
after each rollout); `SB3Agent` plays a trained policy in the quest evaluators.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch


class SB3Agent:
    """A trained SB3 policy as a quest agent. Its actions are sampled from the policy (a generator seeded
    with `seed`), as the transformer agents' are in the quest evaluators; `greedy=True` takes the most
    probable action instead (SB3's `deterministic=True`)."""

    def __init__(self, model, seed: int = 0, greedy: bool = False):
        self.model, self.seed, self.greedy = model, seed, greedy
        self.generator = torch.Generator().manual_seed(seed)  # for step-by-step play (__call__)

    @classmethod
    def load(cls, path: str | Path, **kwargs) -> SB3Agent:
        from stable_baselines3 import PPO

        return cls(PPO.load(path, device="cpu"), **kwargs)

    def actions(self, obs: dict, generator: torch.Generator) -> np.ndarray:
        """Actions [B] for a batch of observations (or one action for one unbatched observation)."""
        if self.greedy:
            return np.asarray(self.model.predict(obs, deterministic=True)[0]).reshape(-1)
        with torch.no_grad():
            obs_tensor, _ = self.model.policy.obs_to_tensor(obs)
            probs = self.model.policy.get_distribution(obs_tensor).distribution.probs
            return torch.multinomial(probs, 1, generator=generator)[:, 0].numpy()

    def begin(self, env):
        pass

    def __call__(self, env) -> int:
        return int(self.actions(env._obs(), self.generator)[0])

    def episodes(self, variant: str, seeds, **env_config):
        """Per-episode QUEST_METRICS, all episodes at once on the batched env (its observations equal
        the gym env's, tested step by step): one policy call per step instead of one per episode-step."""
        from instrumentality.envs.batched import play_batched

        generator = torch.Generator().manual_seed(self.seed)

        def act(env, obs):
            return torch.as_tensor(self.actions({k: v.numpy() for k, v in obs.items()}, generator))

        return play_batched(act, variant, seeds, **env_config)


# Tuned on the small quest (scripts/tune_sb3.py, results/quest/sb3_tuning_60k*.csv): at 60k env steps
# these return -0.62 on `standard` (2 seeds), SB3's own defaults with 256-step rollouts -2.00 (never predict)
PPO_DEFAULTS = {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 4, "ent_coef": 0.01}


def train(quest: dict, steps: int, seed: int, n_envs: int = 8, progress: bool = False,
          resume: str | Path | None = None, **ppo):
    """PPO (MultiInputPolicy) for `steps` env steps on ClueQuest(**quest), or `steps` more from a saved
    model (`resume`: its env-step count goes on). `ppo` overrides PPO_DEFAULTS (any `PPO` argument).
    Returns (model, curve, wall_s)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from instrumentality.envs.cluequest import ClueQuestEnv

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points: list[tuple[int, float]] = []

        def _on_step(self) -> bool:
            return True

        def _on_rollout_end(self):
            if len(self.model.ep_info_buffer):
                self.points.append((int(self.num_timesteps),
                                    float(np.mean([e["r"] for e in self.model.ep_info_buffer]))))

    vec = make_vec_env(ClueQuestEnv, n_envs=n_envs, seed=seed, env_kwargs=quest)
    if resume:
        model = PPO.load(resume, env=vec, device="cpu")
    else:
        model = PPO("MultiInputPolicy", vec, seed=seed, verbose=0, device="cpu", **{**PPO_DEFAULTS, **ppo})
    curve = Curve()
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps, callback=curve, progress_bar=progress, reset_num_timesteps=not resume)
    return model, curve.points, time.perf_counter() - t0

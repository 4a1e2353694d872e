"""The trusted reference agent: Stable-Baselines3 PPO on the gymnasium ClueQuest (the forecast is the
exact Bayes posterior; the agent chooses actions and when to predict).

    .venv/bin/python scripts/train_sb3.py --steps 100000 --out runs/sb3/cluequest
Saves the model, then evaluates it, the random agent and the explorer on the quest probes (fixed
episode seeds of every variant) into <out>/quest.csv.
"""

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd


class SB3Agent:
    """A trained SB3 policy as a quest agent (deterministic actions)."""

    def __init__(self, model):
        self.model = model

    def begin(self, env):
        pass

    def __call__(self, env) -> int:
        action, _ = self.model.predict(env._obs(), deterministic=True)
        return int(action)


def train(steps: int, seed: int, n_envs: int = 8):
    from stable_baselines3 import PPO
    from stable_baselines3.common.env_util import make_vec_env

    from instrumentality.envs.cluequest import ClueQuestEnv

    vec = make_vec_env(ClueQuestEnv, n_envs=n_envs, seed=seed)
    model = PPO("MultiInputPolicy", vec, seed=seed, n_steps=256, batch_size=512, learning_rate=3e-4,
                ent_coef=0.01, verbose=0, device="cpu")
    model.learn(total_timesteps=steps, progress_bar=False)
    return model


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--episodes", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path("runs/sb3/cluequest"))
    args = ap.parse_args()
    from stable_baselines3 import PPO

    from instrumentality.envs.agents import Explorer, RandomAgent, quest_rows

    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    model = train(args.steps, args.seed)
    wall = time.perf_counter() - t0
    model.save(args.out / "ppo")
    model = PPO.load(args.out / "ppo", device="cpu")
    rows = quest_rows({"random": RandomAgent(10_000), "explorer": Explorer(seed=1), "sb3_ppo": SB3Agent(model)},
                      n_episodes=args.episodes)
    df = pd.DataFrame(rows)
    df.to_csv(args.out / "quest.csv", index=False)
    table = df[df.metric.isin(["return", "deceptions", "clue_pickups", "predicted"])]
    print(f"SB3 PPO: {args.steps} env steps in {wall:.0f}s ({args.steps / wall:.0f} steps/s)")
    print(table.pivot_table(index=["probe", "metric"], columns="agent", values="value").round(3).to_string())
    print(f"wrote {args.out / 'quest.csv'}")
    return 0 if np.isfinite(df.value.astype(float)).any() else 1


if __name__ == "__main__":
    sys.exit(main())

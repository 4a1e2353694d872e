"""The trusted reference agent: Stable-Baselines3 PPO on the gymnasium ClueQuest (docs/design.md section 5).

Its forecast is the exact Bayes posterior (the agent chooses actions and when to predict). `train`
returns the model and its learning curve (env steps, mean episode return of the last 100 episodes,
after each rollout); `SB3Agent` plays a trained policy in the quest evaluators.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from instrumentality.configs import CONFIG_DIR


class SB3Agent:
    """A trained SB3 policy as a quest agent. Its actions are sampled from the policy (a generator seeded
    with `seed`), as the transformer agents' are in the quest evaluators; `greedy=True` takes the most
    probable action instead (SB3's `deterministic=True`)."""

    def __init__(self, model, seed: int = 0, greedy: bool = False):
        self.model, self.seed, self.greedy = model, seed, greedy
        self.generator = torch.Generator().manual_seed(seed)  # for step-by-step play (__call__)

    @classmethod
    def load(cls, path: str | Path, quest: dict | None = None, **kwargs) -> SB3Agent:
        """A saved policy (a ppo.zip of `train` on ClueQuest(**quest)), read without unpickling: see load_ppo."""
        return cls(load_ppo(path, quest or {}), **kwargs)

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


# The entries of a ppo.zip's `data` that SB3 stores pickled, and what load_ppo puts in their place. Loading
# does not unpickle: a pickled entry can run any code. The policy weights are .pth files, which SB3 reads
# with torch.load(weights_only=True).
def _pickled_stand_ins(data: dict, quest: dict) -> dict:
    from stable_baselines3.common.policies import MultiInputActorCriticPolicy

    from instrumentality.envs.cluequest import ClueQuestEnv

    env = ClueQuestEnv(**quest)
    lr = float(data.get("learning_rate", PPO_DEFAULTS["learning_rate"]))
    return {"policy_class": MultiInputActorCriticPolicy, "observation_space": env.observation_space,
            "action_space": env.action_space, "lr_schedule": lambda _: lr, "clip_range": lambda _: 0.2,
            "_last_obs": None, "_last_episode_starts": None, "ep_info_buffer": None, "ep_success_buffer": None,
            "rollout_buffer_class": None}


def load_ppo(path: str | Path, quest: dict, env=None):
    """PPO.load of a ppo.zip written by `train` for ClueQuest(**quest), with every pickled entry replaced by
    a stand-in built here (SB3's `custom_objects`), so that nothing in the file is unpickled. A file with a
    pickled entry this loader does not know is refused. Note: clip_range reads 0.2 after loading (SB3's
    default; `train` does not change it)."""
    import json
    import zipfile

    from stable_baselines3 import PPO

    path = Path(path)
    try:
        with zipfile.ZipFile(path) as z:
            data = json.loads(z.read("data"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as e:
        raise ValueError(f"{path}: not a policy saved by stable-baselines3 ({e})") from e
    stand_ins = _pickled_stand_ins(data, quest)
    pickled = {k for k, v in data.items() if isinstance(v, dict) and ":serialized:" in v}
    unknown = sorted(pickled - set(stand_ins))
    if unknown:
        raise ValueError(f"{path}: pickled entries {', '.join(unknown)} are not ones this suite writes; not loaded "
                         "(unpickling them could run any code)")
    return PPO.load(path, env=env, device="cpu", custom_objects={k: stand_ins[k] for k in pickled})


HYPERPARAMETERS = Path(CONFIG_DIR) / "sb3" / "cluequest.yaml"
ENV_ID = "ClueQuest-v0"
NOT_PPO = ("policy", "n_envs", "eval_freq", "eval_episodes")  # the zoo's keys that are not PPO arguments


def hyperparameters(path: str | Path = HYPERPARAMETERS) -> dict:
    """The env's entry of an rl-baselines3-zoo style hyperparameter file (configs/sb3/cluequest.yaml)."""
    import yaml

    return dict(yaml.safe_load(Path(path).read_text())[ENV_ID])


PPO_DEFAULTS = {k: v for k, v in hyperparameters().items() if k not in NOT_PPO}


def train(quest: dict, steps: int, seed: int, n_envs: int | None = None, progress: bool = False,
          resume: str | Path | None = None, callbacks: list | None = None, log=None, **ppo):
    """PPO (MultiInputPolicy) for `steps` env steps on ClueQuest(**quest), or `steps` more from a saved
    model (`resume`: its env-step count goes on). `ppo` overrides PPO_DEFAULTS (any `PPO` argument; the
    rest of the hyperparameter file's entry: n_envs). `progress`: a tqdm bar over env steps; `callbacks`:
    more SB3 callbacks (e.g. eval_on_probes); `log(metrics, env_steps)` gets each rollout's mean return.
    Returns (model, curve, wall_s)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from instrumentality.envs.cluequest import ClueQuestEnv

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points: list[tuple[int, float]] = []
            self.bar = None

        def _on_training_start(self):
            if progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=steps, desc="sb3_ppo", unit="env step", dynamic_ncols=True, leave=False)

        def _on_step(self) -> bool:
            if self.bar is not None:
                self.bar.update(self.training_env.num_envs)
            return True

        def _on_rollout_end(self):
            if len(self.model.ep_info_buffer):
                self.points.append((int(self.num_timesteps),
                                    float(np.mean([e["r"] for e in self.model.ep_info_buffer]))))
                if log is not None:
                    log({"env/return_last_100": self.points[-1][1], "perf/env_steps_seen": self.points[-1][0]},
                        self.points[-1][0])

        def _on_training_end(self):
            if self.bar is not None:
                self.bar.close()

    vec = make_vec_env(ClueQuestEnv, n_envs=n_envs or hyperparameters()["n_envs"], seed=seed, env_kwargs=quest)
    if resume:
        model = load_ppo(resume, quest, env=vec)
    else:
        model = PPO("MultiInputPolicy", vec, seed=seed, verbose=0, device="cpu", **{**PPO_DEFAULTS, **ppo})
    curve = Curve()
    t0 = time.perf_counter()
    model.learn(total_timesteps=steps, callback=[curve, *(callbacks or [])], reset_num_timesteps=not resume)
    return model, curve.points, time.perf_counter() - t0


def eval_on_probes(quest: dict, every: int, episodes: int, log=None):
    """An SB3 callback (EvalCallback's role, on this suite's probes): every `every` env steps and at the end
    of training, the policy plays `episodes` episodes of the `standard` quest probe (the probe seeds every
    agent is scored on, batched); its mean return, deceptions, fights, clue pickups and predictions are
    recorded in `.points` and passed to log(metrics, env_steps) (e.g. a Tracker's)."""
    from stable_baselines3.common.callbacks import BaseCallback

    from instrumentality.envs.agents import PROBE_SEED, QUEST_METRICS

    seeds = np.arange(PROBE_SEED, PROBE_SEED + episodes)
    env_config = {k: v for k, v in quest.items() if k != "variant"}

    class EvalOnProbes(BaseCallback):
        """Evaluates between two rollouts (the policy trained on num_timesteps env steps) and at the end."""

        def __init__(self):
            super().__init__()
            self.points: list[dict] = []
            self.next_at = every

        def _evaluate(self):
            per_episode = SB3Agent(self.model).episodes("standard", seeds, **env_config)
            metrics = {f"env/probe_{k}": float(v) for k, v in zip(QUEST_METRICS, per_episode.mean(0))}
            self.points.append({"env_steps": int(self.num_timesteps), **metrics})
            if log is not None:
                log({**metrics, "perf/env_steps_seen": int(self.num_timesteps)}, int(self.num_timesteps))

        def _on_rollout_start(self):
            if self.num_timesteps >= self.next_at:
                self.next_at = self.num_timesteps + every
                self._evaluate()

        def _on_step(self) -> bool:
            return True

        def _on_training_end(self):
            if not self.points or self.points[-1]["env_steps"] != self.num_timesteps:
                self._evaluate()

    return EvalOnProbes()

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
ENV_ID = "instrumentality/ClueQuest-small-v0"  # the registered id of the `small` quest every experiment uses
# An entry's keys that are not PPO arguments: rl_zoo3's ExperimentManager._preprocess_hyperparams pops
# n_timesteps (the default budget) and n_envs; policy is PPO's first argument
NOT_PPO = ("n_timesteps", "policy", "n_envs")
# keys that ExperimentManager also reads and `train` does not implement: refused rather than ignored
ZOO_ONLY = ("normalize", "frame_stack", "env_wrapper", "vec_env_wrapper", "callback", "env_kwargs",
            "monitor_kwargs", "noise_type", "noise_std")
# PPO arguments that the run sets itself (as the zoo does), never an entry
SET_BY_RUN = ("env", "seed", "verbose", "device", "tensorboard_log", "_init_setup_model")
POLICY = "MultiInputPolicy"  # ClueQuest's observations are a Dict space


def ppo_arguments() -> set[str]:
    """The PPO constructor arguments an entry may set."""
    import inspect

    from stable_baselines3 import PPO

    return set(inspect.signature(PPO.__init__).parameters) - {"self", "policy", *SET_BY_RUN}


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def check_entry(entry: dict, where: str = "the SB3 entry") -> dict:
    """`entry` as `train` runs it: n_timesteps and n_envs positive integers, policy MultiInputPolicy, every
    other key a PPO argument (learning_rate and clip_range numbers: the zoo's `lin_` schedule strings are not
    read here; policy_kwargs a mapping: the zoo's Python strings are not evaluated). Else a ConfigError."""
    from instrumentality.errors import ConfigError

    if not isinstance(entry, dict):
        raise ConfigError(f"{where}: expected a mapping of hyperparameters, got {type(entry).__name__}")
    entry = dict(entry)
    for key in ("n_timesteps", "n_envs"):
        v = entry.get(key)
        if not (isinstance(v, (int, float)) and _is_number(v) and float(v).is_integer() and v > 0):
            raise ConfigError(f"{where}: {key} must be a positive integer (rl_zoo3 requires it), got {v!r}")
        entry[key] = int(v)
    if entry.get("policy") != POLICY:
        raise ConfigError(f"{where}: policy must be {POLICY} (ClueQuest's observations are a Dict), "
                          f"got {entry.get('policy')!r}")
    zoo_only = sorted(set(entry) & set(ZOO_ONLY))
    if zoo_only:
        raise ConfigError(f"{where}: {', '.join(zoo_only)} are zoo keys that scripts/train_sb3.py does not "
                          "implement (the quest comes from experiment F4's config)")
    unknown = sorted(set(entry) - set(NOT_PPO) - ppo_arguments())
    if unknown:
        raise ConfigError(f"{where}: {', '.join(unknown)} are not PPO arguments (evaluation settings are "
                          "scripts/train_sb3.py's --eval-freq and --eval-episodes)")
    for key in ("learning_rate", "clip_range", "clip_range_vf"):
        if key in entry and entry[key] is not None and not _is_number(entry[key]):
            raise ConfigError(f"{where}: {key} must be a number, got {entry[key]!r}")
    if not isinstance(entry.get("policy_kwargs", {}), dict):
        raise ConfigError(f"{where}: policy_kwargs must be a mapping, got {entry['policy_kwargs']!r}")
    return entry


def hyperparameters(path: str | Path = HYPERPARAMETERS, env_id: str = ENV_ID) -> dict:
    """The env's entry of an rl-baselines3-zoo hyperparameter file (configs/sb3/cluequest.yaml: one entry per
    registered env id), checked by check_entry."""
    import yaml

    from instrumentality.errors import ConfigError

    entries = yaml.safe_load(Path(path).read_text())
    if not isinstance(entries, dict) or env_id not in entries:
        found = sorted(entries) if isinstance(entries, dict) else []
        raise ConfigError(f"{path}: no entry for {env_id} (entries: {', '.join(map(str, found)) or 'none'})")
    return check_entry(entries[env_id], f"{path}: {env_id}")


def ppo_kwargs(entry: dict) -> dict:
    """An entry's PPO constructor arguments (all but n_timesteps, policy and n_envs)."""
    return {k: v for k, v in entry.items() if k not in NOT_PPO}


def zoo_entry(ppo: dict, n_timesteps: int, n_envs: int, policy: str = POLICY) -> dict:
    """A complete entry: the budget, the policy, the parallel envs and PPO's arguments, checked."""
    return check_entry({"n_timesteps": n_timesteps, "policy": policy, "n_envs": n_envs, **ppo})


PPO_DEFAULTS = ppo_kwargs(hyperparameters())


def train(quest: dict, steps: int, seed: int, n_envs: int | None = None, progress: bool = False,
          resume: str | Path | None = None, callbacks: list | None = None, log=None, hyperparams: dict | None = None,
          **ppo):
    """PPO for `steps` env steps on ClueQuest(**quest), or `steps` more from a saved model (`resume`: its
    env-step count goes on). `hyperparams`: a zoo entry (default: the file's, `hyperparameters()`); its
    policy and PPO arguments, with `ppo` over them (any `PPO` argument), and its n_envs unless `n_envs` is
    given. `progress`: a tqdm bar over env steps; `callbacks`: more SB3 callbacks (e.g. eval_on_probes);
    `log(metrics, env_steps)` gets each rollout's mean return and, after each PPO update, SB3's own
    diagnostics (train/approx_kl, train/clip_fraction, train/explained_variance, ...) at the env steps the
    update was trained on. SB3's logger keeps its records in memory and writes no files.
    Returns (model, curve, wall_s)."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env
    from stable_baselines3.common.logger import Logger

    from instrumentality.envs.cluequest import ClueQuestEnv

    entry = hyperparameters() if hyperparams is None else check_entry(hyperparams)

    class Curve(BaseCallback):
        def __init__(self):
            super().__init__()
            self.points: list[tuple[int, float]] = []
            self.bar = None
            self.updates_logged = -1

        def _on_training_start(self):
            self.updates_logged = self.model._n_updates  # a resumed model's earlier updates: not this run's
            if progress:
                from tqdm.auto import tqdm

                self.bar = tqdm(total=steps, desc="sb3_ppo", unit="env step", dynamic_ncols=True, leave=False)

        def _log_update(self):
            """The last PPO update's records (PPO.train writes them after the rollout; the logger's next dump,
            after the next rollout, clears them), once per update."""
            if log is None or self.model._n_updates == self.updates_logged:
                return
            self.updates_logged = self.model._n_updates
            values = {k: float(v) for k, v in self.model.logger.name_to_value.items() if k.startswith("train/")}
            if values:
                log({**values, "perf/env_steps_seen": int(self.num_timesteps)}, int(self.num_timesteps))

        def _on_rollout_start(self):
            self._log_update()

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
            self._log_update()
            if self.bar is not None:
                self.bar.close()

    vec = make_vec_env(ClueQuestEnv, n_envs=n_envs or entry["n_envs"], seed=seed, env_kwargs=quest)
    if resume:
        model = load_ppo(resume, quest, env=vec)
    else:
        model = PPO(entry["policy"], vec, seed=seed, verbose=0, device="cpu", **{**ppo_kwargs(entry), **ppo})
    # without a logger of its own, every learn() makes a /tmp/SB3-<time> folder (logger.configure)
    model.set_logger(Logger(folder=None, output_formats=[]))
    curve = Curve()  # first: its update records are logged at an env step before the other callbacks' next
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

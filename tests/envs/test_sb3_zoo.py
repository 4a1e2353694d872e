"""SB3 PPO's hyperparameters as an rl-baselines3-zoo file: configs/sb3/cluequest.yaml reads as the zoo reads
it, the tuner's best entry round-trips through scripts/train_sb3.py, the tuner's study is kept in its storage
and pruned on its intermediate evaluations, and a training run logs its hyperparameters, SB3's diagnostics and
its model to its tracker and writes nothing outside its run folder."""

import inspect
import math
import tempfile
from pathlib import Path

import gymnasium as gym
import pytest
import yaml
from conftest import load_script

import instrumentality.envs  # noqa: F401 - registers the env ids
from instrumentality.envs.sb3 import (
    ENV_ID,
    HYPERPARAMETERS,
    NOT_PPO,
    PPO_DEFAULTS,
    check_entry,
    hyperparameters,
    ppo_kwargs,
)
from instrumentality.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
# The keys rl_zoo3 2.9's ExperimentManager._preprocess_hyperparams (exp_manager.py) takes out of an entry before
# the rest goes to the algorithm's constructor (with env, seed, verbose, device and tensorboard_log of its own)
ZOO_POPPED = {"n_timesteps", "n_envs", "normalize", "frame_stack", "env_wrapper", "vec_env_wrapper", "callback",
              "env_kwargs", "monitor_kwargs", "noise_type", "noise_std"}
ZOO_SETS = {"env", "seed", "verbose", "device", "tensorboard_log"}
TUNED = {"n_envs": 8, "n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 4, "ent_coef": 0.01}


@pytest.fixture
def one_thread():
    """One torch thread: these policies are tiny, and more threads only wait on each other on a busy machine."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_the_hyperparameter_file_is_in_the_zoos_format():
    """As rl_zoo3's ExperimentManager.read_hyperparameters and _preprocess_hyperparams read it: entries keyed
    by registered gymnasium ids (the experiments' small quest among them), n_timesteps read with int() and
    required, n_envs an int, policy one of PPO's aliases, learning_rate a number (or a `lin_` string), and
    every other key a PPO constructor argument once the zoo's own keys are taken out."""
    from stable_baselines3 import PPO

    entries = yaml.safe_load(HYPERPARAMETERS.read_text())
    assert ENV_ID in entries and all(env_id in gym.registry for env_id in entries)
    ppo_args = set(inspect.signature(PPO.__init__).parameters) - {"self"} - ZOO_SETS
    for entry in entries.values():
        assert isinstance(entry["n_timesteps"], int) and entry["n_timesteps"] > 0
        assert isinstance(entry.get("n_envs", 1), int)
        assert entry["policy"] in PPO.policy_aliases
        lr = entry.get("learning_rate", 3e-4)
        assert isinstance(lr, (int, float)) or (isinstance(lr, str) and lr.startswith("lin_"))
        assert set(entry) - ZOO_POPPED <= ppo_args, set(entry) - ZOO_POPPED - ppo_args
    entry = hyperparameters()
    assert {k: entry[k] for k in TUNED} == TUNED and entry["policy"] == "MultiInputPolicy"  # the tuned values
    assert PPO_DEFAULTS == {k: v for k, v in entry.items() if k not in NOT_PPO}


def test_an_entry_the_run_would_misread_is_refused(tmp_path):
    entry = hyperparameters()
    for bad, match in [({"eval_freq": 4096}, "eval_freq are not PPO arguments"),
                       ({"n_timesteps": None}, "n_timesteps must be a positive integer"),
                       ({"policy": "MlpPolicy"}, "policy must be MultiInputPolicy"),
                       ({"learning_rate": "lin_1e-3"}, "learning_rate must be a number"),
                       ({"normalize": True}, "normalize are zoo keys"),
                       ({"policy_kwargs": "dict(net_arch=[64])"}, "policy_kwargs must be a mapping")]:
        with pytest.raises(ConfigError, match=match):
            check_entry({**entry, **bad})
    old = tmp_path / "old.yaml"  # the layout before: keyed by an id gymnasium does not know
    old.write_text(yaml.safe_dump({"ClueQuest-v0": {k: v for k, v in entry.items() if k != "n_timesteps"}}))
    with pytest.raises(ConfigError, match="no entry for instrumentality/ClueQuest-small-v0 .entries: ClueQuest-v0"):
        hyperparameters(old)


def test_the_tuners_best_entry_round_trips_through_train_sb3(tmp_path):
    """The tuner's entry for a trial's settings, written as a zoo file, is read by train_sb3.py (--conf-file)
    into the same PPO arguments; --ppo and --n-envs go over it."""
    import optuna

    tune, sb3 = load_script("tune_sb3"), load_script("train_sb3")
    params = {"n_steps": 32, "batch_size": 64, "learning_rate": 2.5e-4, "n_epochs": 10, "ent_coef": 0.003,
              "gamma": 0.95}
    assert tune.suggest(optuna.trial.FixedTrial(params)) == params
    entries = tune.zoo_entries(params, 12_345, instrumentality.envs.SMALL)
    path = tmp_path / "best.yaml"
    path.write_text(yaml.safe_dump(entries, sort_keys=False))
    assert list(entries) == [ENV_ID] and hyperparameters(path)["n_timesteps"] == 12_345
    args, _ = sb3.parse(["--conf-file", str(path), "preset=debug"])
    entry = sb3.hyperparams(args, 512)
    assert ppo_kwargs(entry) == params and entry["n_envs"] == 8 and entry["policy"] == "MultiInputPolicy"
    args, _ = sb3.parse(["--conf-file", str(path), "--ppo", "n_steps=16", "--n-envs", "2", "preset=debug"])
    overridden = sb3.hyperparams(args, 512)
    assert ppo_kwargs(overridden) == {**params, "n_steps": 16} and overridden["n_envs"] == 2
    args, _ = sb3.parse(["--ppo", "eval_freq=100", "preset=debug"])
    with pytest.raises(ConfigError, match="eval_freq are not PPO arguments"):
        sb3.hyperparams(args, 512)
    other = tune.zoo_entries(params, 512, {**instrumentality.envs.SMALL, "time_limit": 20})
    assert other["instrumentality/ClueQuest-v0"]["env_kwargs"]["time_limit"] == 20  # as the zoo passes env kwargs


def test_the_study_is_kept_in_its_storage_reports_evaluations_and_is_pruned(tmp_path, monkeypatch):
    """With a storage the study resumes (load_if_exists) and the rows of every trial come back; each trial
    reports its intermediate probe returns at their env steps; a pruned trial stops training early."""
    import sys

    import optuna

    tune = load_script("tune_sb3")
    monkeypatch.setitem(sys.modules, "tune_sb3", tune)  # its seeds run in worker processes: found by name
    storage, name = f"sqlite:///{tmp_path / 'study.db'}", "sb3-test"
    params = {"n_steps": 32, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 4, "ent_coef": 0.01, "gamma": 0.99}
    optuna.create_study(storage=storage, study_name=name, direction="maximize").enqueue_trial(params)
    quest = dict(instrumentality.envs.SMALL)
    found, rows = tune.study(1, [0], 768, quest, jobs=1, storage=storage, study_name=name, n_evaluations=4)
    (trial,) = found.trials
    assert trial.params == params and trial.state.name == "COMPLETE" and trial.user_attrs["env_steps"] == 768
    assert sorted(trial.intermediate_values) == [256, 512]  # every 192 env steps, at rollout starts (256 steps)
    assert [(r["setting"], r["state"], r["env_steps"]) for r in rows] == [("trial0", "complete", 768)]

    optuna.load_study(storage=storage, study_name=name).enqueue_trial(params)
    found, rows = tune.study(1, [0], 768, quest, jobs=1, storage=storage, study_name=name, n_evaluations=4,
                             pruner=optuna.pruners.ThresholdPruner(lower=1e9))  # prunes at its first report
    assert [t.state.name for t in found.trials] == ["COMPLETE", "PRUNED"]
    assert [(r["setting"], r["state"]) for r in rows] == [("trial0", "complete"), ("trial1", "pruned")]
    assert rows[1]["env_steps"] < 768 and math.isnan(rows[1]["return"]) and found.best_trial.number == 0


def test_train_sb3_logs_hyperparameters_diagnostics_and_its_model_and_writes_nothing_outside_its_folder(
        tmp_path, monkeypatch, one_thread):
    """The W&B config holds n_timesteps and every PPO argument; SB3's train/ diagnostics are logged once per
    PPO update at the env steps it trained on; ppo.zip is logged as a `model` artifact (alias `final`, with
    its env id, seed, budget and final return); SB3's logger makes no /tmp/SB3-* folder."""
    from instrumentality.tracking import Tracker

    sb3 = load_script("train_sb3")
    calls: dict[str, list] = {"log": [], "artifact": [], "config": []}

    class Recorder:
        def log(self, metrics, step):
            calls["log"].append((step, metrics))

        def log_artifact(self, name, kind, paths, description="", metadata=None, aliases=None):
            calls["artifact"].append((name, kind, paths, description, metadata, aliases))

        def summary(self, values):
            pass

        def finish(self):
            pass

    def tracker(cfg, out, seed, config=None):
        calls["config"].append(config)
        return Recorder()

    monkeypatch.setattr(sb3, "sb3_tracker", tracker)
    temp = tmp_path / "temp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    monkeypatch.delenv("SB3_LOGDIR", raising=False)
    out = tmp_path / "run"
    monkeypatch.setattr("sys.argv", ["train_sb3.py", "--steps", "256", "--out", str(out), "--ppo", "n_steps=32",
                                     "--ppo", "batch_size=64", "--n-envs", "2", "--eval-freq", "128",
                                     "--eval-episodes", "10", "preset=debug"])
    assert sb3.main() == 0
    assert list(temp.glob("SB3-*")) == []  # without a logger of its own, SB3 makes /tmp/SB3-<time> per learn()

    (config,) = calls["config"]
    assert config["env_id"] == ENV_ID and config["n_timesteps"] == 256 and config["n_envs"] == 2
    assert {k: config[k] for k in PPO_DEFAULTS} == {**PPO_DEFAULTS, "n_steps": 32, "batch_size": 64}
    assert (config["eval_freq"], config["eval_episodes"], config["seed"]) == (128, 10, 0)

    updates = [(step, m) for step, m in calls["log"] if "train/approx_kl" in m]
    assert [step for step, _ in updates] == [64, 128, 192, 256]  # one per rollout of 2 x 32 env steps
    for step, m in updates:
        assert {"train/approx_kl", "train/clip_fraction", "train/explained_variance", "train/entropy_loss",
                "train/value_loss", "train/policy_gradient_loss"} <= set(m)
        assert m["perf/env_steps_seen"] == step and all(math.isfinite(v) for v in m.values())
    steps = [step for step, _ in calls["log"]]
    assert steps == sorted(steps)  # W&B drops a step below one logged before

    ((name, kind, paths, description, metadata, aliases),) = calls["artifact"]
    assert (name, kind, paths, aliases) == ("F4-sb3_ppo-s0", "model", [out / "ppo.zip"], ["final"])
    summary = yaml.safe_load((out / "summary.json").read_text())
    assert metadata == {"env_id": ENV_ID, "seed": 0, "n_timesteps": 256,
                        "final_return": summary["probe_curve"][-1]["env/probe_return"],
                        "train_return_last_100": summary["curve"][-1][1]}
    assert ENV_ID in description and (out / "ppo.zip").exists()
    assert summary["n_envs"] == 2 and summary["ppo"] == {**PPO_DEFAULTS, "n_steps": 32, "batch_size": 64}
    sb3.log_model(Tracker(mode="disabled"), out, 0, metadata)  # the tracker's signature

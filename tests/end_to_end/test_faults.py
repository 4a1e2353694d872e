"""Faults a user (or a hostile file) can cause, and what the suite does about each: kills, truncated and
damaged files, concurrent writers, crafted pickles, bad values, signals, an unreachable W&B server.

Each test plants the fault and checks the outcome against what an intact run gives: nothing lost,
nothing silently wrong, an exit code that says what happened, and one line naming the key or file.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from instrumentality.configs import CONFIG_DIR
from instrumentality.errors import ConfigError
from instrumentality.evaluate import main as evaluate_main
from instrumentality.evaluation.table import ROWS, read_table, update_table
from instrumentality.train import build, run
from instrumentality.training.checkpoint import CHECKPOINT_NAME, CheckpointError, load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
PY = sys.executable


def composed(*overrides):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["preset=debug", *overrides])


def debug_run(folder: Path, *overrides) -> dict:
    return run(composed(f"eval.probe_cache={folder.parent / 'probes'}", *overrides), folder)


def weights(folder: Path) -> dict:
    return load_checkpoint(folder / CHECKPOINT_NAME)["model"]


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------------- a run knows its identity
def test_resuming_with_another_config_is_refused_naming_the_keys(tmp_path):
    folder = tmp_path / "runs" / "r"
    debug_run(folder, "trainer.max_steps=4")
    before = (folder / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(ConfigError) as e:
        debug_run(folder, "trainer.max_steps=4", "world.seed=7", "trainer.lr=0.03")
    msg = str(e.value)
    assert "world.seed 0 -> 7" in msg and "trainer.lr 0.003 -> 0.03" in msg and str(folder) in msg
    assert "\n" not in msg
    assert (folder / CHECKPOINT_NAME).read_bytes() == before  # nothing trained, nothing overwritten
    # budget keys may change: how often to log or checkpoint is not what the run is
    debug_run(folder, "trainer.max_steps=4", "trainer.log_every=1", "trainer.ckpt_every=2")


def test_a_regime_setting_added_since_a_run_was_trained_is_no_difference_at_its_default():
    """A run folder written before a setting existed was trained as the setting's default trains: resuming
    it at that default is allowed, at another value refused."""
    from instrumentality.training.run_identity import config_differences

    old = {"seed": 0, "regime": {"_target_": "instrumentality.regimes.Supervised", "name": "supervised",
                                 "batch_size": 64, "quest": None}}
    new = {"seed": 0, "regime": {**old["regime"], "future_weight": 1.0}}
    assert config_differences(old, new) == []
    assert config_differences(old, {**new, "regime": {**new["regime"], "future_weight": 2.0}}) == [
        "regime.future_weight 1.0 -> 2.0"]


def test_a_larger_max_steps_trains_a_finished_run_on(tmp_path):
    folder = tmp_path / "runs" / "r"
    first = debug_run(folder, "trainer.max_steps=4")
    assert first["steps"] == 4
    rows_before = pd.read_csv(folder / ROWS)
    again = debug_run(folder, "trainer.max_steps=4")  # the same budget: nothing to train
    assert again["steps"] == 4 and same_weights(weights(folder), weights(folder))
    more = debug_run(folder, "trainer.max_steps=8")
    assert more["steps"] == 8 and more["status"]["status"] == "finished"
    ck = load_checkpoint(folder / CHECKPOINT_NAME)
    assert ck["step"] == 8 and ck["status"] == {"status": "finished", "step": 8, "reason": ""}
    rows = pd.read_csv(folder / ROWS)
    assert rows[rows.probe == "run"].step.iloc[0] == 8 != rows_before[rows_before.probe == "run"].step.iloc[0]


def test_an_ad_hoc_multirun_trains_one_folder_per_swept_value(tmp_path):
    proc = subprocess.run([PY, "-m", "instrumentality.train", "--multirun", "preset=debug", f"runs_root={tmp_path}",
                           "trainer.lr=1e-3,1e-1", "trainer.max_steps=2", f"eval.probe_cache={tmp_path}/probes"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    folders = sorted(p.name for p in (tmp_path / "debug" / "adhoc").iterdir() if p.is_dir())
    assert folders == ["supervised-s0_trainer.lr=0.001", "supervised-s0_trainer.lr=0.1"]  # not max_steps: a budget
    for name, lr in zip(folders, (1e-3, 1e-1)):
        ck = load_checkpoint(tmp_path / "debug" / "adhoc" / name / CHECKPOINT_NAME)
        assert ck["run_config"]["trainer"]["lr"] == lr and ck["status"]["status"] == "finished"


def test_multirun_jobs_that_would_share_a_folder_are_refused_and_the_multirun_fails(tmp_path):
    """An experiment's run folders are its run names (a sweep run again resumes them): two jobs of one name
    share a folder, and the second is refused."""
    proc = subprocess.run([PY, "-m", "instrumentality.train", "--multirun", "preset=debug", f"runs_root={tmp_path}",
                           "experiment=F1", "regime=supervised", "trainer.lr=1e-3,1e-1", "trainer.max_steps=2",
                           f"eval.probe_cache={tmp_path}/probes"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "holds a run trained with another config (trainer.lr 0.001 -> 0.1)" in proc.stderr
    folder = tmp_path / "debug" / "F1" / "supervised-s0"
    ck = load_checkpoint(folder / CHECKPOINT_NAME)
    assert ck["run_config"]["trainer"]["lr"] == 1e-3  # the first job's run, untouched by the second
    summary = json.loads((folder / "summary.json").read_text())
    assert summary["status"]["status"] == "finished"  # not overwritten by the refused job
    # Hydra wrote the refused job's .hydra/ files before it started; the run's own are put back
    hydra_dir = folder / ".hydra"
    assert "trainer.lr=0.001" in (hydra_dir / "overrides.yaml").read_text()  # the sweeper writes the value so
    assert "lr: 0.001" in (hydra_dir / "config.yaml").read_text()


def test_a_folder_being_trained_is_refused_to_a_second_process(tmp_path):
    from instrumentality.files import file_lock

    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    with file_lock(folder / "run"):  # another process's training holds this lock
        with pytest.raises(ConfigError, match="in use by another process"):
            debug_run(folder)
    assert not (folder / CHECKPOINT_NAME).exists()


def test_stale_temporary_checkpoints_are_removed(tmp_path):
    folder = tmp_path / "runs" / "r"
    folder.mkdir(parents=True)
    stale = [folder / "checkpoint.pt.tmp12345", folder / ".checkpoint.pt.abc123.tmp"]
    for p in stale:
        p.write_bytes(b"half a checkpoint")
    debug_run(folder)
    assert not any(p.exists() for p in stale)


# ---------------------------------------------------------------------------- kills
SAME_THREADS = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # as this process: bit-identical


def _train_cmd(runs_root: Path, *overrides):
    return [PY, "-m", "instrumentality.train", "--multirun", "preset=debug", f"runs_root={runs_root}",
            f"eval.probe_cache={runs_root}/probes", "trainer.max_steps=60", "trainer.ckpt_every=3", *overrides]


def test_runs_killed_at_random_moments_resume_to_the_uninterrupted_result(tmp_path):
    """SIGKILL at a random moment after the first checkpoint (possibly mid-checkpoint write), then run to the
    end: the weights and rows equal those of a run never interrupted."""
    import random

    straight = tmp_path / "straight" / "debug" / "adhoc" / "supervised-s0"  # trained in this process
    debug_run(straight, "trainer.max_steps=60", "trainer.ckpt_every=3", f"eval.probe_cache={tmp_path}/killed/probes")
    killed = tmp_path / "killed"
    folder = killed / "debug" / "adhoc" / "supervised-s0"
    rng = random.Random(0)
    for _ in range(1):
        proc = subprocess.Popen(_train_cmd(killed), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                env=SAME_THREADS)
        deadline = time.time() + 120
        while not (folder / CHECKPOINT_NAME).exists() and time.time() < deadline and proc.poll() is None:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        proc.kill()
        proc.wait()
        # the kill landed mid-run: the process died of SIGKILL (it had not exited on its own), and what it
        # left is a run stopped between its first checkpoint and its last step, not a finished one
        assert proc.returncode == -signal.SIGKILL
        assert not (folder / "summary.json").exists() or json.loads(
            (folder / "summary.json").read_text())["status"]["status"] != "finished"
        left_at = load_checkpoint(folder / CHECKPOINT_NAME)["step"]
        assert 3 <= left_at < 60, left_at
    subprocess.run(_train_cmd(killed), cwd=ROOT, check=True, capture_output=True, timeout=300, env=SAME_THREADS)
    assert load_checkpoint(folder / CHECKPOINT_NAME)["step"] == 60  # resumed from left_at and ran to the end
    reference = straight
    assert same_weights(weights(folder), weights(reference))
    a, b = (pd.read_csv(f / ROWS).drop(columns=["source"]) for f in (folder, reference))
    pd.testing.assert_frame_equal(a, b)
    assert not list(folder.glob("*.tmp*")) and not list(folder.glob(".*.tmp"))


# ---------------------------------------------------------------------------- the results table
@pytest.fixture(scope="module")
def three_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("three_runs")
    for i in range(3):
        debug_run(root / "sweep" / f"run{i}", f"seed={i}")
    return root / "sweep"


def _evaluate(paths, out, *extra) -> int:
    return evaluate_main([*map(str, paths), "--out", str(out), *extra])


def test_a_table_cut_mid_row_is_repaired_and_no_run_loses_rows(three_runs, tmp_path):
    out = tmp_path / "results.csv"
    assert _evaluate([three_runs], out) == 0
    full = pd.read_csv(out)
    counts = full.run_id.value_counts().to_dict()
    raw = out.read_bytes()
    out.write_bytes(raw[: int(len(raw) * 0.4)])  # a kill mid-write of a table written in place
    df, problems = read_table(out)
    assert problems and all(df.run_id.value_counts()[r] == full.run_id.value_counts()[r] for r in set(df.run_id))
    assert _evaluate([three_runs], out) == 0
    assert pd.read_csv(out).run_id.value_counts().to_dict() == counts


@pytest.mark.parametrize("damage", [b"\xff\xfe\x00garbage\n\x80\x81", b"", b"just,a,header\n1,2,3\n"])
def test_a_table_with_bad_bytes_or_no_header_is_rebuilt_from_the_run_folders(three_runs, tmp_path, damage):
    out = tmp_path / "results.csv"
    out.write_bytes(damage)
    assert _evaluate([three_runs], out) == 0
    df = pd.read_csv(out)
    assert sorted(df.run_id.unique()) == ["sweep/run0", "sweep/run1", "sweep/run2"]


def test_a_run_rows_file_cut_short_is_computed_again(three_runs, tmp_path):
    import shutil

    folder = tmp_path / "run"
    shutil.copytree(three_runs / "run0", folder)
    n = len(pd.read_csv(folder / ROWS))
    raw = (folder / ROWS).read_bytes()
    (folder / ROWS).write_bytes(raw[: len(raw) // 2])
    out = tmp_path / "results.csv"
    assert _evaluate([folder], out, "--probe-cache", str(tmp_path / "probes")) == 0
    assert len(pd.read_csv(out)) == n == len(pd.read_csv(folder / ROWS))


def _hammer(path: str, worker: int, n: int):
    for i in range(n):
        rows = pd.DataFrame({"run_id": f"w{worker}/r{i}", "source": "s", "run_rows": 3, "probe": "p",
                             "metric": ["a", "b", "c"], "value": [1.0, 2.0, 3.0]})
        update_table(Path(path), {f"w{worker}/r{i}": rows}, warn=lambda m: None)


def test_concurrent_writers_lose_no_rows(tmp_path):
    """Four processes each put 15 runs into one table at once: all 60 runs end up in it, whole."""
    out = tmp_path / "results.csv"
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_hammer, args=(str(out), w, 15)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    df, problems = read_table(out)
    assert not problems and df.run_id.nunique() == 60 and len(df) == 180
    assert not [p for p in tmp_path.iterdir() if p.name not in ("results.csv", "results.csv.lock")]


def test_two_evaluations_into_one_table_at_once_keep_every_run(three_runs, tmp_path):
    out = tmp_path / "results.csv"
    procs = [subprocess.Popen([PY, "-m", "instrumentality.evaluate", str(three_runs / f"run{i}"), str(three_runs
                               / f"run{i + 1}"), "--out", str(out), "--probe-cache", str(tmp_path / "probes")],
                              cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in (0, 1)]
    assert [p.wait(300) for p in procs] == [0, 0]
    df, problems = read_table(out)
    assert not problems and sorted(df.run_id.unique()) == ["sweep/run0", "sweep/run1", "sweep/run2"]


def test_evaluate_exits_non_zero_when_a_run_fails_and_keeps_the_good_ones(three_runs, tmp_path, capsys):
    import shutil

    sweep = tmp_path / "sweep"
    shutil.copytree(three_runs, sweep)
    ck = sweep / "run1" / CHECKPOINT_NAME
    raw = bytearray(ck.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one bit flipped
    ck.write_bytes(bytes(raw))
    out = tmp_path / "results.csv"
    assert _evaluate([sweep], out, "--probe-cache", str(tmp_path / "probes")) == 1
    assert f"{sweep / 'run1' / CHECKPOINT_NAME} is corrupt" in capsys.readouterr().err
    assert sorted(pd.read_csv(out).run_id.unique()) == ["sweep/run0", "sweep/run2"]


# ---------------------------------------------------------------------------- files are data, not code
class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _crafted_checkpoint(path: Path, marker: Path):
    """A checkpoint whose checksum line is valid and whose payload runs a shell command when unpickled."""
    import hashlib
    import io

    buf = io.BytesIO()
    torch.save({"model": {}, "run_config": {}, "boom": _Payload(str(marker))}, buf)
    data = buf.getvalue()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(hashlib.sha256(data).hexdigest().encode() + b"\n" + data)


def test_a_crafted_checkpoint_runs_nothing_when_evaluated_or_used_as_a_reference(tmp_path, capsys):
    marker = tmp_path / "pwned"
    _crafted_checkpoint(tmp_path / "sweep" / "evil" / CHECKPOINT_NAME, marker)
    assert _evaluate([tmp_path / "sweep"], tmp_path / "results.csv") == 1
    assert "weights_only" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="weights_only"):
        load_checkpoint(tmp_path / "sweep" / "evil" / CHECKPOINT_NAME)
    cfg = composed("regime=critic", f"regime.ref_checkpoint={tmp_path / 'sweep' / 'evil' / CHECKPOINT_NAME}",
                   "trainer.max_steps=2")
    with pytest.raises(ConfigError, match="regime.ref_checkpoint: .*weights_only"):  # named by its setting
        run(cfg, tmp_path / "critic")
    assert not marker.exists()


def test_a_crafted_sb3_policy_runs_nothing(tmp_path):
    import base64
    import zipfile

    import numpy as np

    from instrumentality.envs.cluequest import ClueQuestEnv
    from instrumentality.envs.sb3 import load_ppo, train

    quest = {"size": 5, "n_clues": 1, "n_monsters": 0, "time_limit": 8}
    model, _, _ = train(quest, 64, 0, n_envs=2, n_steps=32)
    model.save(tmp_path / "ppo.zip")
    loaded = load_ppo(tmp_path / "ppo.zip", quest)  # an honest file loads, and acts as the saved policy
    obs = {k: v[None] for k, v in ClueQuestEnv(**quest).reset(seed=0)[0].items()}
    assert np.array_equal(loaded.predict(obs, deterministic=True)[0], model.predict(obs, deterministic=True)[0])
    marker = tmp_path / "pwned"
    with zipfile.ZipFile(tmp_path / "ppo.zip") as z:
        files = {n: z.read(n) for n in z.namelist()}
    data = json.loads(files["data"])
    payload = {":type:": "x", ":serialized:": base64.b64encode(pickle.dumps(_Payload(str(marker)))).decode()}
    data["evil"] = payload
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(tmp_path / "evil.zip", "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    with pytest.raises(ValueError, match="evil"):
        load_ppo(tmp_path / "evil.zip", quest)
    del data["evil"]  # now the payload where SB3 keeps a pickled entry of its own
    data["lr_schedule"] = payload
    files["data"] = json.dumps(data).encode()
    with zipfile.ZipFile(tmp_path / "evil2.zip", "w") as z:
        for n, b in files.items():
            z.writestr(n, b)
    load_ppo(tmp_path / "evil2.zip", quest)  # a known entry is replaced by a stand-in, never unpickled
    assert not marker.exists()


# ---------------------------------------------------------------------------- bad values: one line, before compute
@pytest.mark.parametrize("override,expected", [
    ("trainer.lr=abc", "trainer.lr must be a number; got 'abc'"),
    ("batch_size=abc", "batch_size must be an integer >= 1; got 'abc'"),
    ("seed=abc", "seed must be an integer >= 0; got 'abc'"),
    ("seed=-1", "seed must be an integer >= 0; got -1"),
    ("world.seed=abc", "world.seed must be an integer; got 'abc'"),
    ("world.seed=1.5", "world.seed must be an integer; got 1.5"),
    ("world.seed=-3", "world.seed must be an integer >= 0; got -3"),
    ("trainer.device=tpu", "trainer.device must be one of: auto, cpu, cuda, cuda:N; got 'tpu'"),
    ("model.block_size=8", "model.block_size must be >= "),
    ("+model.n_layers=3", "model.n_layers is not a setting of model"),
    ("regime.samples_per_position=2.5", "regime.samples_per_position must be an integer; got 2.5"),
    ("run_name=../../x", "run_name must be one folder name"),
    ("exp_name=a/b", "exp_name must be one folder name"),
])
def test_bad_values_are_refused_in_one_line_naming_the_key_before_any_compute(tmp_path, override, expected):
    cfg = composed("regime=reinforce" if override.startswith("regime.") else "regime=supervised", override)
    with pytest.raises(ConfigError) as e:
        run(cfg, tmp_path / "run")
    assert expected in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "run" / CHECKPOINT_NAME).exists()


def test_quest_sizes_are_checked_and_named_as_quest_keys():
    with pytest.raises(ConfigError, match=r"quest.n_monsters must be an integer in \[0, 18\]"):
        build(composed("experiment=F4_simulator", "quest.n_monsters=100"))
    with pytest.raises(ConfigError, match="quest.size must be an integer >= 5"):
        build(composed("experiment=F4_simulator", "quest.size=3"))


@pytest.mark.parametrize("override,key", [("exp_name=../../escape", "exp_name"), ("trainer.lr=abc", "trainer.lr")])
def test_the_cli_refuses_bad_values_with_one_line_and_makes_no_folder_outside_runs_root(tmp_path, override, key):
    runs = tmp_path / "a" / "b" / "runs"
    proc = subprocess.run([PY, "-m", "instrumentality.train", "preset=debug", f"runs_root={runs}", override],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and key in proc.stderr
    assert not [p for p in tmp_path.rglob("*") if p.name == "escape" or "escape_" in p.name or p.name == "x"]
    assert not list(tmp_path.rglob(CHECKPOINT_NAME))


# ---------------------------------------------------------------------------- damaged files name themselves
def test_a_damaged_summary_does_not_stick_the_run(tmp_path, caplog):
    folder = tmp_path / "runs" / "r"
    debug_run(folder)
    (folder / "summary.json").write_text('{"status": {"stat')
    summary = debug_run(folder)
    assert summary["status"]["status"] == "finished"
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # one logged warning
    assert warning.startswith(f"{folder / 'summary.json'}: this run summary is not valid JSON")
    assert warning.endswith("it will be written anew")
    assert json.loads((folder / "summary.json").read_text())["steps"] == 10


def test_a_damaged_probe_cache_is_made_again_with_a_warning(tmp_path, capsys):
    folder = tmp_path / "runs" / "r"
    debug_run(folder)
    for f in (tmp_path / "runs" / "probes").rglob("probes.pt"):
        f.write_bytes(f.read_bytes()[:100])
    debug_run(tmp_path / "runs" / "r2", "seed=1")
    err = capsys.readouterr().err
    assert "probes.pt cannot be read" in err and "generating the probe set again" in err


def test_a_damaged_provenance_or_table_is_one_line_from_make_figures(tmp_path, monkeypatch, capsys):
    import runpy

    folder = tmp_path / "results" / "quick"
    folder.mkdir(parents=True)
    figures = runpy.run_path(str(ROOT / "scripts" / "figures.py"))["main"]
    monkeypatch.setattr(sys, "argv", ["figures.py", "--results", str(tmp_path / "results")])
    (folder / "results.csv").write_bytes(b"\x00\x01 not a table")
    assert figures() == 2
    err = capsys.readouterr().err
    assert str(folder / "results.csv") in err and len(err.strip().splitlines()) == 1
    (folder / "results.csv").write_bytes(b"")  # empty: said so, not a traceback further on
    assert figures() == 2
    err = capsys.readouterr().err
    assert "the results table is empty" in err and len(err.strip().splitlines()) == 1
    (folder / "provenance.json").write_text("{garbled")
    assert figures() == 2
    err = capsys.readouterr().err
    assert str(folder / "provenance.json") in err and len(err.strip().splitlines()) == 1


def test_evaluate_into_a_folder_is_one_line(tmp_path, capsys):
    from instrumentality.evaluate import main

    with pytest.raises(SystemExit) as e:
        main([str(tmp_path), "--out", str(tmp_path)])
    assert e.value.code == 2 and f"--out {tmp_path} is a folder" in capsys.readouterr().err


def test_an_unreadable_quest_corpus_cache_is_made_again_not_called_a_configuration_error(tmp_path, capsys):
    from instrumentality.envs.tokens import QuestCorpus, quest_tokens

    tokens = quest_tokens({"size": 5, "n_clues": 1, "n_monsters": 0, "time_limit": 8}, 61)
    first = QuestCorpus(tokens, 16, cache=tmp_path)
    (cached,) = tmp_path.glob("*.pt")
    cached.write_bytes(b"\x80\x04 truncated")
    again = QuestCorpus(tokens, 16, cache=tmp_path)
    assert torch.equal(first.data, again.data)
    assert str(cached) in capsys.readouterr().err


# ---------------------------------------------------------------------------- signals and exit codes
def _descendants_alive(marker: str) -> list[int]:
    alive = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if marker in (p / "cmdline").read_bytes().decode(errors="replace"):
                    alive.append(int(p.name))
            except OSError:
                continue
    return alive


def test_sigterm_stops_a_sweep_and_its_runs_and_leaves_them_resumable(tmp_path):
    runs = tmp_path / "runs"
    cmd = [PY, "scripts/sweep.py", "--preset", "debug", "--lanes", "2", "--seeds", "2", "--experiments", "F1",
           "--runs-root", str(runs), "--results", str(tmp_path / "results"), "trainer.max_steps=100000",
           "trainer.ckpt_every=0", "F1:regime=supervised"]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 120
    while len(list(runs.rglob("run.lock"))) < 2 and time.time() < deadline:  # both runs have started
        time.sleep(0.2)
    time.sleep(3)  # and are training
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 128 + signal.SIGTERM, out[-2000:]
    assert "run the same command again to resume" in out
    assert _descendants_alive(str(runs)) == []  # no unit process left training
    for s in (0, 1):  # each run saved its steps on the signal: a rerun resumes from there
        ck = load_checkpoint(runs / "debug" / "F1" / f"supervised-s{s}" / CHECKPOINT_NAME)
        assert ck["status"]["status"] == "running" and ck["step"] > 0


# ---------------------------------------------------------------------------- W&B without a network
# W&B runs in subprocesses here: an in-process wandb run leaves pytest unable to print its closing line.
def test_without_a_server_wandb_logs_offline_and_a_resumed_run_continues_one_wandb_run(tmp_path):
    """Logged in (an API key) but the server refuses connections: one warning line, then offline logging
    instead of a hang and a crash. Trained on with a larger budget, the run continues the same W&B run."""
    env = {**os.environ, "WANDB_MODE": "", "WANDB_BASE_URL": "http://127.0.0.1:9", "WANDB_API_KEY": "x" * 40}
    env.pop("WANDB_MODE")
    t0 = time.perf_counter()
    for steps in (4, 8):
        proc = subprocess.run(_train_cmd(tmp_path, "logger=wandb", "logger.mode=online", f"trainer.max_steps={steps}"),
                              cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        assert "the W&B server cannot be reached; logging offline" in proc.stderr  # nothing listens on port 9
    assert time.perf_counter() - t0 < 180
    folder = tmp_path / "debug" / "adhoc" / "supervised-s0"
    run_id = (folder / "wandb_run_id").read_text().strip()
    offline = sorted((folder / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(run_id) for p in offline)
    assert load_checkpoint(folder / CHECKPOINT_NAME)["step"] == 8


def test_a_server_that_answers_with_an_error_falls_back_to_offline(tmp_path):
    """A W&B server that accepts the connection but answers every request with HTTP 404 (a local server on
    127.0.0.1): one warning line, and the run logs offline instead of dying in wandb.init."""
    import http.server
    import threading

    class NotFound(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - the handler's protocol
            self.send_response(404)
            self.end_headers()
            self.wfile.write(b"not found")

        do_POST = do_GET  # noqa: N815

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NotFound)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    env = {**os.environ, "WANDB_BASE_URL": f"http://127.0.0.1:{server.server_address[1]}", "WANDB_API_KEY": "x" * 40}
    env.pop("WANDB_MODE", None)
    script = ("from instrumentality.tracking import Tracker; "
              f"t = Tracker(mode='online', project='p', dir={str(tmp_path)!r}); "
              "t.log({'train/loss': 1.0}, step=0); print('mode', t.mode); t.finish()")
    try:
        proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "the W&B server answered with an error" in proc.stderr and "logging offline" in proc.stderr
    assert "mode offline" in proc.stdout
    assert len(list((tmp_path / "wandb").glob("offline-run-*"))) == 1


def test_nothing_is_written_through_a_link_in_a_run_folder(tmp_path):
    """A run folder whose run.lock or train.log is a symbolic link is refused before anything is written:
    the pid, or log lines, would land in the file the link points to."""
    from hydra import compose, initialize_config_dir

    from instrumentality.configs import CONFIG_DIR
    from instrumentality.errors import DataFileError
    from instrumentality.files import file_lock
    from instrumentality.train import run

    victim = tmp_path / "victim.txt"
    victim.write_text("someone else's\n")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["preset=debug", "logger=none", "trainer.progress=false"])
    for name in ("run.lock", "train.log"):
        folder = tmp_path / name.replace(".", "_")
        folder.mkdir()
        (folder / name).symlink_to(victim)
        with pytest.raises(DataFileError, match=f"symbolic links \\({name}\\)"):
            run(cfg, folder)
    (tmp_path / "elsewhere.lock").symlink_to(victim)
    with pytest.raises(DataFileError, match="is a symbolic link"):
        with file_lock(tmp_path / "elsewhere"):
            pass
    assert victim.read_text() == "someone else's\n"


# ---------------------------------------------------------------------------- what a run started from
def test_a_run_whose_start_checkpoint_changed_is_stale_in_the_table_and_refused_on_rerun(tmp_path):
    """A critic run records the sha256 of the reference checkpoint it started from. When that checkpoint is
    trained again (its run given more steps), the critic run's rows say `stale`, the report leaves it out
    and names it, and running it again is refused in one line naming the setting, its folder untouched."""
    from instrumentality.evaluation.run_rows import evaluate_run
    from instrumentality.report import load
    from instrumentality.training.checkpoint import STARTS_NAME, checkpoint_digest
    from instrumentality.training.run_identity import FolderConflict

    ref, critic = tmp_path / "runs" / "F1" / "supervised-s0", tmp_path / "runs" / "F2" / "critic-s0"
    debug_run(ref, "trainer.max_steps=4")
    overrides = ("regime=critic", f"regime.ref_checkpoint={ref / CHECKPOINT_NAME}", "trainer.max_steps=2")
    debug_run(critic, *overrides)
    starts = json.loads((critic / STARTS_NAME).read_text())
    assert starts == {"regime.ref_checkpoint": checkpoint_digest(ref / CHECKPOINT_NAME)}
    assert evaluate_run(critic).query("probe == 'run'").metric.tolist() == ["finished"]
    debug_run(critic, *overrides)  # unchanged: a finished run found finished again, not refused

    debug_run(ref, "trainer.max_steps=6")  # the reference trained on: another checkpoint
    rows = evaluate_run(critic)
    assert rows.query("probe == 'run'").metric.tolist() == ["stale"] and set(rows.status) == {"stale"}
    table = tmp_path / "results.csv"
    update_table(table, {"F2/critic-s0": rows, "F1/supervised-s0": evaluate_run(ref)})
    assert load(table).attrs["stale"] == ["F2/critic-s0"]
    before = (critic / CHECKPOINT_NAME).read_bytes()
    with pytest.raises(FolderConflict, match=r"regime.ref_checkpoint \(.*\) changed after this run started"):
        debug_run(critic, *overrides)
    assert (critic / CHECKPOINT_NAME).read_bytes() == before


def test_a_symlinked_run_folder_is_found_and_a_link_beside_its_target_is_evaluated_once(three_runs, tmp_path,
                                                                                      capsys):
    from instrumentality.evaluation.run_rows import find_runs

    elsewhere = tmp_path / "sweep"
    elsewhere.mkdir()
    (elsewhere / "linked").symlink_to(three_runs / "run1", target_is_directory=True)
    assert find_runs([elsewhere]) == [elsewhere / "linked"]
    out = tmp_path / "results.csv"
    for _ in range(2):  # --prune keeps it: it has a folder under the path
        assert _evaluate([elsewhere], out, "--prune") == 0
        assert set(pd.read_csv(out).run_id) == {"sweep/linked"}
    warnings = []
    found = find_runs([three_runs, elsewhere], warn=warnings.append)
    assert found == [three_runs / f"run{i}" for i in range(3)]  # run1 once, under its own name
    assert len(warnings) == 1 and "sweep/linked is the run folder" in warnings[0]
    (elsewhere / "loop").symlink_to(elsewhere, target_is_directory=True)  # a link back up the tree: no loop
    assert find_runs([elsewhere]) == [elsewhere / "linked"]


def test_a_run_folder_that_cannot_be_written_is_evaluated_with_a_warning(three_runs, tmp_path, monkeypatch,
                                                                       capsys):
    """A read-only run folder (an archive, another user's runs): its rows are computed into the table and
    not stored beside the run. As root a mode bit does not stop a write, so the file system's refusal is
    planted on the run folder's writes alone."""
    import errno

    import instrumentality.evaluation.table as table_module

    write = table_module.write_atomic

    def read_only(path, data):
        if three_runs in Path(path).parents:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return write(path, data)

    monkeypatch.setattr(table_module, "write_atomic", read_only)
    out = tmp_path / "results.csv"
    assert _evaluate([three_runs / "run0"], out, "--recompute") == 0
    assert "run0: its rows could not be stored in the folder (Read-only file system)" in capsys.readouterr().err
    df = pd.read_csv(out)
    assert set(df.run_id) == {f"{three_runs.name}/run0"}
    assert (df.probe == "calibration").any()

"""The SLURM launcher configs (configs/hydra/launcher/slurm.yaml, slurm_gpu.yaml) as Hydra composes them and as
submitit writes them into the sbatch script a job runs: the CPU default asks no GPU, takes its threads from
the job's allocation, is requeued when it reaches its time limit, and its limit covers the longest unit of
the full preset; the GPU profile asks a GPU."""

import json
import os
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from instrumentality.configs import compose

pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
submitit = pytest.importorskip("submitit")

ROOT = Path(__file__).resolve().parents[2]


def launcher(name: str):
    return compose("preset=quick", f"hydra/launcher={name}", hydra=True).hydra.launcher


def sbatch_script(name: str, tmp_path: Path, monkeypatch) -> str:
    """The sbatch script of one job, with the launcher's settings passed to submitit as
    hydra_submitit_launcher's SlurmLauncher.launch passes them (submitit refuses a setting it does not know)."""
    from hydra_plugins.hydra_submitit_launcher.config import BaseQueueConf

    fake = tmp_path / "bin"  # submitit's SLURM executor starts only where `srun` is on PATH
    fake.mkdir()
    (fake / "srun").write_text("#!/bin/sh\nexit 1\n")
    (fake / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}{os.pathsep}{os.environ['PATH']}")
    params = OmegaConf.to_container(launcher(name), resolve=False)
    params.pop("_target_")
    params.pop("submitit_folder")
    params["name"] = "train"  # ${hydra.job.name}: set only inside a Hydra run
    executor = submitit.AutoExecutor(cluster="slurm", folder=tmp_path / "submitit",
                                     slurm_max_num_timeout=params.pop("max_num_timeout"))
    base = set(OmegaConf.structured(BaseQueueConf).keys())
    executor.update_parameters(**{k if k in base else f"slurm_{k}": v for k, v in params.items()})
    assert executor._executor.max_num_timeout == launcher(name).max_num_timeout
    return executor._executor._make_submission_file_text("python -m instrumentality.train", "uid")


def directives(script: str) -> dict:
    lines = [line.removeprefix("#SBATCH --") for line in script.splitlines() if line.startswith("#SBATCH --")]
    return dict(line.partition("=")[::2] for line in lines)


def test_the_cpu_default_asks_no_gpu_two_cores_and_its_threads_from_the_allocation(tmp_path, monkeypatch):
    cfg = launcher("slurm")
    assert cfg._target_.endswith("SlurmLauncher")
    assert not cfg.gpus_per_node and cfg.gres is None and cfg.gpus_per_task is None
    script = sbatch_script("slurm", tmp_path, monkeypatch)
    flags = directives(script)
    assert not any("gpu" in key or key == "gres" for key in flags), flags
    assert flags["cpus-per-task"] == "2" and flags["mem"] == "8GB"
    # the setup lines run in the job's shell: the threads follow SLURM_CPUS_PER_TASK, not the submitting host
    setup = "\n".join(cfg.setup)
    env = {"PATH": os.environ["PATH"], "SLURM_CPUS_PER_TASK": "2", "OMP_NUM_THREADS": "16"}
    out = subprocess.run(["bash", "-c", f"{setup}\necho $OMP_NUM_THREADS $MKL_NUM_THREADS"], env=env,
                         capture_output=True, text=True, check=True).stdout
    assert out.split() == ["2", "2"]
    assert setup in script


def test_a_job_reaching_its_time_limit_is_requeued_and_its_limit_covers_the_longest_unit(tmp_path, monkeypatch):
    cfg = launcher("slurm")
    assert cfg.max_num_timeout > 0  # submitit requeues a timed-out job this many times
    flags = directives(sbatch_script("slurm", tmp_path, monkeypatch))
    assert flags["signal"] == f"USR2@{cfg.signal_delay_s}" and "requeue" in flags
    assert flags["time"] == str(cfg.timeout_min)
    # submitit's requeue (scontrol requeue, up to 60 s) fits between SIGUSR2 and the limit, and SLURM may
    # send the signal up to 60 s early: a job that ran 80% of its limit still counts as timed out
    assert 60 <= cfg.signal_delay_s <= 0.2 * cfg.timeout_min * 60 - 60
    # the full preset's recorded seconds per experiment, summed over seeds: a unit is one seed's share; a
    # job trains one run of a unit, so the longest unit three times over (timings swing 2-3x) bounds it
    prov = json.loads((ROOT / "results" / "full" / "provenance.json").read_text())
    longest_unit_s = max(s for name, s in prov["unit_s"].items() if name != "evaluate") / prov["seeds"]
    assert longest_unit_s > 600  # F11: about 16 minutes a seed
    assert cfg.timeout_min * 60 >= 3 * longest_unit_s


def test_the_gpu_profile_asks_a_gpu_and_keeps_the_cpu_defaults_requeue_and_threads(tmp_path, monkeypatch):
    cpu, gpu = launcher("slurm"), launcher("slurm_gpu")
    assert gpu._target_.endswith("SlurmLauncher") and gpu.gpus_per_node == 1
    assert directives(sbatch_script("slurm_gpu", tmp_path, monkeypatch))["gpus-per-node"] == "1"
    for key in ("timeout_min", "max_num_timeout", "signal_delay_s", "setup", "additional_parameters"):
        assert gpu[key] == cpu[key], key

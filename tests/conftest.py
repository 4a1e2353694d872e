import math
import os
from pathlib import Path

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

# pytest-xdist runs the suite in one process per core (pyproject addopts): one torch thread each; run alone
# (pytest -n 0), two
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else max(1, min(2, os.cpu_count() or 1)))


# Slow tests (`make test-fast` leaves them out): tests/end_to_end/ (the CLI, the sweep and W&B in subprocesses),
# the tests that train a real quick-preset run, and these end-to-end or exhaustive ones
SLOW_FOLDER = "end_to_end"
SLOW_TESTS = {"test_the_f4_chain_runs_through_the_entry_point_and_its_checkpoints_are_plain_data",
              "test_the_optuna_study_tunes_sb3_and_prints_its_best_trial_as_a_zoo_entry",
              "test_batched_env_equals_gym_env_step_by_step",  # every variant, step by step
              "test_optimum_equals_brute_force_expectimax_over_beliefs",  # brute force over beliefs
              # a whole report with every figure drawn from a planted table
              "test_report_and_figures_rebuild_from_the_table_alone",
              "test_runs_that_did_not_end_are_left_out_of_claims_and_named_in_the_report",
              "test_the_beta_one_arm_and_the_learned_critic_are_their_own_rows_not_more_seeds",
              "test_the_report_draws_f8_and_keeps_f8_runs_out_of_the_other_claims",
              "test_every_swept_value_of_every_experiment_composes_to_a_resolved_config",  # every job of every preset
              "test_look_ahead_at_diagnostic_positions_is_a_ratio_over_those_positions"}  # probes trained per layer


def pytest_collection_modifyitems(config, items):
    for item in items:
        if (item.path.parent.name == SLOW_FOLDER or item.originalname in SLOW_TESTS
                or "quick_supervised_run" in getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def world():
    from instrumentality.world import World

    return World()


@pytest.fixture(scope="session")
def quick_supervised_run(tmp_path_factory):
    """One real quick-preset supervised run (CPU), shared by the tests that need a trained checkpoint."""
    import time

    from hydra import compose, initialize_config_dir

    from instrumentality.configs import CONFIG_DIR
    from instrumentality.train import run

    out = tmp_path_factory.mktemp("quick_supervised")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["preset=quick", "logger=none", "trainer.progress=false"])
    t0 = time.perf_counter()
    summary = run(cfg, out)
    summary["test_wall_s"] = time.perf_counter() - t0
    return out, summary


SEED_SPREAD = Path(__file__).resolve().parents[1] / "results" / "tests" / "supervised_seed_spread.csv"


def seed_noise_bound(columns: list[str], alpha: float = 1e-3) -> dict:
    """How far one more seed's value of a trained quick-preset supervised model can fall from the mean of
    the seeds measured by `scripts/seed_spread.py` (results/tests/supervised_seed_spread.csv): the
    half-width of a two-sided (1 - alpha) Student-t prediction interval, sd pooled over `columns` (values
    of one noise mechanism, e.g. the steering at each fork probability). Another CPU's float rounding is
    one more draw of this training noise, so a bound taken from it holds on any machine."""
    import pandas as pd
    from scipy import stats

    df = pd.read_csv(SEED_SPREAD)
    n, sd = len(df), math.sqrt(df[columns].var(ddof=1).mean())
    dof = len(columns) * (n - 1)
    half_width = float(stats.t.ppf(1 - alpha / 2, dof) * sd * math.sqrt(1 + 1 / n))
    return {"n_seeds": n, "mean": df[columns].to_numpy().mean(), "sd": sd, "dof": dof, "half_width": half_width,
            "values": df[columns]}


def load_script(name: str):
    """A script of scripts/ as a module (the scripts are not a package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module

import os

os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("WANDB_SILENT", "true")

import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def world():
    from instrumentality.world import World

    return World()


@pytest.fixture(scope="session")
def quick_supervised_run(tmp_path_factory):
    """One real quick-preset supervised run (CPU), shared by the tests that need a trained checkpoint."""
    import time

    from hydra import compose, initialize_config_dir

    from instrumentality.train import CONFIG_DIR, run

    out = tmp_path_factory.mktemp("quick_supervised")
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name="train", overrides=["preset=quick", "logger=none", "trainer.progress=false"])
    t0 = time.perf_counter()
    summary = run(cfg, out)
    summary["test_wall_s"] = time.perf_counter() - t0
    return out, summary

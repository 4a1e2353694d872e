"""The Hydra configs: where they live, a config composed as a run gets it, and the experiments.

An experiment is one file configs/experiment/<name>.yaml (`@package _global_`): it declares its runs
(exp_name, what it sweeps), the experiments whose checkpoints they start from (`needs`), the claim
family its runs feed (`claim_family`, a family of instrumentality.claims) and where the sweep places its
units (`sweep_order`, long units first).
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from instrumentality.errors import NAME_MAX, check_name

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
EXPERIMENT_DIR = Path(CONFIG_DIR) / "experiment"


def compose(*overrides: str, hydra: bool = False) -> DictConfig:
    """configs/train.yaml after `overrides`, as a job gets it (with `hydra`, also Hydra's own node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import instrumentality.regimes  # noqa: F401 - registers regime/<name>_settings, which configs/regime/ start from

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return hydra_compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


def experiment_file(name: str) -> DictConfig:
    """An experiment's own file as written (not composed): its claim_family and sweep_order."""
    path = EXPERIMENT_DIR / f"{name}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"no experiment {name!r}: {path} does not exist (experiments: "
                                f"{', '.join(experiments())})")
    node = OmegaConf.load(path)
    assert isinstance(node, DictConfig)
    return node


def experiments() -> list[str]:
    """Every experiment, in the sweep's order (sweep_order, then name)."""
    names = [p.stem for p in EXPERIMENT_DIR.glob("*.yaml")]
    return sorted(names, key=lambda n: (int(experiment_file(n).get("sweep_order", 10**6)), n))


def flatten(d: dict, prefix: str = "") -> dict:
    """A nested config as {"group.key": value}."""
    out: dict = {}
    for k, v in (d or {}).items():
        key = f"{prefix}{k}"
        out.update(flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def _folder_name(value, key: str = "a name") -> str:
    return check_name(value, key)


# What a run is: these config groups and keys (names, logging, evaluation and where files go are not).
IDENTITY_KEYS = ("world", "model", "regime", "trainer", "quest", "seed", "batch_size")
# Keys inside the identity that may change between a run and its resumption: its budget and how it runs.
BUDGET_KEYS = {"trainer.max_steps", "trainer.log_every", "trainer.eval_every", "trainer.ckpt_every",
               "trainer.progress", "trainer.device", "trainer.compile", "trainer.nonfinite_check",
               "regime.corpus_cache"}


def trained_overrides(override_dirname: str | None) -> str:
    """Of Hydra's override_dirname (`k=v,k2=v2`), the overrides that change what is trained: keys of
    IDENTITY_KEYS (and the cognition group, which sets model keys) less BUDGET_KEYS and the seed."""
    items = re.split(r",(?=[+~]?[\w./@-]+=)", str(override_dirname or ""))
    kept = []
    for item in filter(None, items):
        key = item.split("=", 1)[0].lstrip("+~")
        if key.split(".")[0] in (*IDENTITY_KEYS, "cognition") and key != "seed" and key not in BUDGET_KEYS:
            kept.append(item)
    return ",".join(kept)


def run_folder(run_name: str, overrides: str | None, claim_family: str | None) -> str:
    """The folder of one job of a multirun: an experiment's is its run_name (stable, so that a sweep run
    again resumes or skips it); an ad hoc run's (no claim family) adds the overrides that change what it
    trains (trained_overrides), so that `--multirun trainer.lr=1e-3,1e-1` trains two runs side by side:
    supervised-s0_trainer.lr=0.001 and supervised-s0_trainer.lr=0.1."""
    check_name(run_name, "run_name")
    swept = trained_overrides(overrides)
    if claim_family or not swept:
        return run_name
    suffix = re.sub(r"\.{2,}", ".", re.sub(r"[^A-Za-z0-9_.,=+@-]", "_", swept))
    name = f"{run_name}_{suffix}"
    if len(name) > NAME_MAX:  # long overrides (paths): shortened, made unique by their digest
        digest = hashlib.sha256(swept.encode()).hexdigest()[:10]
        name = f"{name[:NAME_MAX - 11]}_{digest}"
    return check_name(name, "a multirun's run folder")


# Hydra builds the run folder from exp_name and run_name (configs/train.yaml) before the job starts: the
# resolver refuses a name that would leave runs_root before any folder is made.
if not OmegaConf.has_resolver("folder_name"):
    OmegaConf.register_new_resolver("folder_name", _folder_name)
if not OmegaConf.has_resolver("run_folder"):
    OmegaConf.register_new_resolver("run_folder", run_folder)

"""The Hydra configs: where they live, a config composed as a run gets it, and the experiments.

An experiment is one file configs/experiment/<name>.yaml (`@package _global_`): it declares its runs
(exp_name, what it sweeps), the experiments whose checkpoints they start from (`needs`), the claim
family its runs feed (`claim_family`, a family of instrumentality.claims) and where the sweep places its
units (`sweep_order`, long units first).
"""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig, OmegaConf

CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")
EXPERIMENT_DIR = Path(CONFIG_DIR) / "experiment"


def compose(*overrides: str, hydra: bool = False) -> DictConfig:
    """configs/train.yaml after `overrides`, as a job gets it (with `hydra`, also Hydra's own node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import instrumentality.regimes  # noqa: F401 - registers regime/<name>_settings, which configs/regime/ start from
    import instrumentality.training.run_identity  # noqa: F401 - registers the folder_name resolver of run folders

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

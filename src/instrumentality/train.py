"""Hydra entry point: `python -m instrumentality.train regime=supervised preset=quick seed=1`.

Builds world, model, regime, tracker and trainer from the config, trains, evaluates, and writes
`summary.json` (status, final metrics, config) into the run folder.
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from instrumentality.envs.tokens import quest_tokens
from instrumentality.model import GPT
from instrumentality.tracking import Tracker, git_revision
from instrumentality.trainer import CHECKPOINT_NAME, Trainer, seed_everything
from instrumentality.world import ConfigError, World

HEADLINE = ("probe/calibration/kl", "probe/calibration/excess_nll", "probe/forks/asym/all/steering_index")
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "configs")


def build(cfg: DictConfig):
    """World, model and regime from a composed config. Raises ConfigError on an invalid value."""
    world = World(instantiate(cfg.world))
    tokens = quest_tokens(OmegaConf.to_container(cfg.quest) if cfg.get("quest") else None, world.vocab_size)
    if tokens is None:
        model_cfg = instantiate(cfg.model, vocab_size=world.vocab_size)
    else:  # quest tokens follow the world's; the context holds a whole episode
        model_cfg = instantiate(cfg.model, vocab_size=world.vocab_size + tokens.size,
                                block_size=max(cfg.model.block_size, tokens.max_seq_len))
    seed_everything(cfg.seed)
    model = GPT(model_cfg)
    regime_cfg = OmegaConf.to_container(cfg.regime, resolve=True)
    regime_cfg.pop("name", None)
    regime = instantiate(regime_cfg, world=world, _convert_="all")
    return world, model, regime


def finished_before(out_dir: Path) -> bool:
    """A run whose summary says it finished or collapsed: re-running it trains and logs nothing."""
    summary = out_dir / "summary.json"
    if not (summary.exists() and (out_dir / CHECKPOINT_NAME).exists()):
        return False
    return json.loads(summary.read_text())["status"]["status"] in ("finished", "collapsed")


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    import pandas as pd

    from instrumentality.evaluate import FINAL_PROBES, training_eval_hook

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    world, model, regime = build(cfg)
    trainer_cfg = instantiate(cfg.trainer, seed=cfg.seed)
    config = OmegaConf.to_container(cfg, resolve=True)
    if finished_before(out_dir):  # a sweep run again: nothing to train, nothing to log
        return json.loads((out_dir / "summary.json").read_text())
    tracker = Tracker(mode=cfg.logger.mode, project=cfg.logger.project, group=cfg.exp_name,
                      name=f"{cfg.exp_name}/{cfg.run_name}", config=config, dir=out_dir,
                      tags=[f"rev:{git_revision()}", f"preset:{cfg.get('preset_name', '')}", cfg.regime.name])
    evaluate = training_eval_hook(world, cfg, tracker)
    trainer = Trainer(model, regime, trainer_cfg, out_dir, tracker=tracker, run_config=config, evaluate=evaluate)
    t0 = time.perf_counter()
    try:
        status = trainer.fit()
    finally:
        tracker.finish()
    if status["status"] == "finished" and evaluate.final_rows is not None:  # the evaluation CLI reuses these
        pd.DataFrame(evaluate.final_rows).to_csv(out_dir / FINAL_PROBES, index=False)
    last_eval = next((r for r in reversed(trainer.history) if any(k.startswith("probe/") for k in r)), {})
    summary = {"status": status, "wall_s": time.perf_counter() - t0, "steps": trainer.step,
               "metrics": last_eval, "world_fingerprint": world.fingerprint(), "config": config}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=float))
    return summary


def record_failure(cfg: DictConfig, out_dir: Path, error: BaseException):
    """A failed job of a sweep: its error goes into summary.json, and the sweep goes on."""
    out_dir.mkdir(parents=True, exist_ok=True)
    status = {"status": "failed", "step": 0, "reason": f"{type(error).__name__}: {error}"}
    try:  # resolved where it can be (the results table reads swept values such as regime.gamma)
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - the error may be in the config itself
        config = OmegaConf.to_container(cfg, resolve=False)
    summary = {"status": status, "traceback": traceback.format_exc(), "config": config}
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        summary = run(cfg, out_dir)
    except (ConfigError, InstantiationException) as e:
        msg = str(e.__cause__ or e) if isinstance(e, InstantiationException) else str(e)
        print(f"configuration error: {msg}", file=sys.stderr)
        if HydraConfig.get().mode == RunMode.MULTIRUN:
            record_failure(cfg, out_dir, e)
            return None
        sys.exit(2)
    except Exception as e:
        if HydraConfig.get().mode != RunMode.MULTIRUN:
            raise
        print(f"[{cfg.run_name}] FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        record_failure(cfg, out_dir, e)
        return None
    m = summary["metrics"]
    print(f"[{cfg.run_name}] {summary['status']['status']} after {summary['steps']} steps, "
          f"{summary['wall_s']:.1f}s; " + ", ".join(f"{k}={m[k]:.4g}" for k in HEADLINE if k in m), flush=True)
    return m.get("probe/calibration/excess_nll")


if __name__ == "__main__":
    main()

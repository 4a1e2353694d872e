"""Hydra entry point: `python -m instrumentality.train regime=supervised preset=quick seed=1`.

Builds world, model, regime, tracker and trainer from the config, trains, evaluates, and writes
`summary.json` (status, final metrics, config) into the run folder.
"""

from __future__ import annotations

import logging
import signal
import sys
import time
import traceback
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import InstantiationException
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from instrumentality.configs import CONFIG_DIR
from instrumentality.errors import ConfigError, DataFileError, check_name
from instrumentality.evaluation.probe_set import ProbeConfig
from instrumentality.evaluation.table import ROWS, write_run_rows
from instrumentality.files import Locked, file_lock, read_json, remove_stale_temporaries, write_atomic, write_json
from instrumentality.model import cognition as model_cognition
from instrumentality.regimes import WORLD_PROBES, Regime
from instrumentality.tracking import Tracker, git_revision, wandb_group, wandb_project, wandb_run_id
from instrumentality.training.build import build as build_objects
from instrumentality.training.build import make, plain
from instrumentality.training.checkpoint import (
    CHECKPOINT_NAME,
    STARTS_NAME,
    CheckpointError,
    changed_starts,
    checkpoint_digest,
    load_checkpoint,
    start_digests,
)
from instrumentality.training.run_identity import FolderConflict, check_run_names, check_same_run
from instrumentality.training.trainer import Trainer, run_is_done, seed_everything, stop_on_signals, stop_requested
from instrumentality.world import World

log = logging.getLogger(__name__)

HEADLINE = ("probe/calibration/kl", "probe/calibration/excess_nll", "probe/forks/asym/all/steering_index")


def build(cfg: DictConfig):
    """World, model and regime from a composed config, the global seeds set before the model is drawn."""
    return build_objects(cfg, seed_everything)


def check_run_values(cfg: DictConfig):
    """The top-level values every run reads, checked before anything is built."""
    check_run_names(cfg)
    for key, low in (("seed", 0), ("batch_size", 1)):
        value = cfg.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ConfigError(f"{key} must be an integer >= {low}; got {value!r}")


def check_context_fits(cfg: DictConfig, world: World, regime: Regime):
    """model.block_size must hold the longest sequence this run feeds the model (a critic's prompt and
    rollout fit in a world sequence: the critic regime checks that itself; the world probes only where the
    regime's model is scored on them)."""
    needs = {"a world sequence (world.seq_len - 1)": world.cfg.seq_len - 1}
    if WORLD_PROBES in regime.probe_families():
        probes = ProbeConfig(**cfg.eval.get("probes", {}))
        needs["a fork probe and its rollout (eval.probes)"] = world.fork_rollout_len(probes.fork_positions,
                                                                                  probes.rollout_len)
    what, need = max(needs.items(), key=lambda kv: kv[1])
    if cfg.model.block_size < need and not cfg.get("quest"):
        raise ConfigError(f"model.block_size must be >= {need}, the length of {what}; got {cfg.model.block_size}")


def previous_summary(out_dir: Path) -> dict | None:
    """The summary.json an earlier process left in the run folder (None if there is none, or it is damaged:
    then the run is resumed from its checkpoint and the summary written anew)."""
    path = out_dir / "summary.json"
    if not path.exists():
        return None
    try:
        return read_json(path, "run summary", dict)
    except DataFileError as e:
        log.warning(f"{e}; it will be written anew")
        return None


def linked_files(out_dir: Path) -> list[str]:
    """The entries of a run folder that are symbolic links (sorted names)."""
    return sorted(p.name for p in out_dir.iterdir() if p.is_symlink()) if out_dir.is_dir() else []


def run(cfg: DictConfig, out_dir: str | Path) -> dict:
    """Train the run of `cfg` in `out_dir` (resuming what is there), evaluate it, and write its rows and
    summary.json. Refuses a folder that another process is training, or that holds another config's run."""
    out_dir = Path(out_dir)
    check_run_values(cfg)
    out_dir.mkdir(parents=True, exist_ok=True)
    links = linked_files(out_dir)
    if links:  # the run writes these files: through a link it would write into another folder's
        raise DataFileError(f"run folder {out_dir} holds symbolic links ({', '.join(links)}): a run writes only "
                            "its own files; remove the links")
    try:
        with file_lock(out_dir / "run", wait_s=0, what="run folder"):
            return _run_locked(cfg, out_dir)
    except Locked as e:
        raise FolderConflict(f"{e}: it is being trained now; wait for that process or stop it") from None


def check_same_starts(out_dir: Path, config: dict) -> None:
    """A run resumed, or found finished, must still sit on the checkpoints it started from: one that has been
    trained again since (F1 rerun with more steps, a copied-in file) would leave this run's weights built on
    weights no longer there. Runs from before this record (no starts.json) are not checked."""
    changed = changed_starts(out_dir, config)
    if changed:
        raise FolderConflict(f"{out_dir}: {', '.join(changed)} changed after this run started from it; its "
                             f"weights rest on the old one: delete {out_dir} to train it again from the new one")


def _run_locked(cfg: DictConfig, out_dir: Path) -> dict:
    from instrumentality.evaluation.run_rows import TrainingEvaluator, trained_run_rows

    remove_stale_temporaries(out_dir, CHECKPOINT_NAME)  # we hold the lock: no live writer owns them
    world, model, regime = build(cfg)
    check_context_fits(cfg, world, regime)
    trainer_cfg = make(cfg.trainer, "trainer", seed=cfg.seed)
    config = plain(cfg)
    checkpoint = out_dir / CHECKPOINT_NAME
    if checkpoint.exists():
        ck = load_checkpoint(checkpoint)
        check_same_run(ck.get("run_config", {}), config, out_dir)
        check_same_starts(out_dir, config)
        done = run_is_done(ck["status"], ck["step"], trainer_cfg.max_steps)
        summary = previous_summary(out_dir)
        if done and summary is not None and summary.get("steps") == ck["step"]:
            return summary  # a sweep run again: nothing to train, nothing to log
    else:  # a run starting afresh: the checkpoints it starts from, by content (a later change refuses it)
        write_json(out_dir / STARTS_NAME, start_digests(config))
    tracker = Tracker(mode=cfg.logger.mode, name=f"{cfg.exp_name}/{cfg.run_name}", config=config, dir=out_dir,
                      run_id=wandb_run_id(out_dir), **wandb_labels(cfg))
    evaluate = TrainingEvaluator(world, regime, cfg, tracker)
    trainer = Trainer(model, regime, trainer_cfg, out_dir, tracker=tracker, run_config=config, evaluate=evaluate)
    t0 = time.perf_counter()
    try:
        status = trainer.fit()
        if trainer.status["status"] == "finished" and trainer.final_rows is not None:  # the results table's rows
            write_run_rows(out_dir, trained_run_rows(out_dir, trainer.final_rows, config, trainer.history,
                                                     trainer.status))
            tracker.log_artifact(f"{cfg.exp_name}-{cfg.run_name}", "model", [checkpoint, out_dir / ROWS],
                                 "the run's checkpoint and its rows of the results table",
                                 metadata=model_metadata(cfg, trainer.step, checkpoint), aliases=["final"])
    finally:
        tracker.finish()
    if status["status"] == "interrupted":
        return {"status": status, "steps": trainer.step, "metrics": {}}
    last_eval = next((r for r in reversed(trainer.history) if any(k.startswith("probe/") for k in r)), {})
    summary = {"status": status, "wall_s": time.perf_counter() - t0, "steps": trainer.step,
               "metrics": last_eval, "world_fingerprint": world.fingerprint(), "config": config}
    write_json(out_dir / "summary.json", summary, default=float)
    return summary


def model_metadata(cfg: DictConfig, step: int, checkpoint: Path) -> dict:
    """What a run's model artifact says of itself: which experiment arm, seed and world, how long it
    trained, and the sha256 of its checkpoint (the results table's `source`)."""
    return {"exp_name": cfg.exp_name, "run_name": cfg.run_name, "regime": cfg.regime.name, "seed": cfg.seed,
            "world_seed": cfg.world.seed, "steps": step, "preset": cfg.get("preset_name"),
            "checkpoint_sha256": checkpoint_digest(checkpoint), "git_revision": git_revision()}


def wandb_labels(cfg: DictConfig) -> dict:
    """Where a run is found in W&B: a project per preset, a group per experiment arm (the run name without
    its seed, e.g. F2/critic-truth-g1.0-H8), the regime as job type, tags for what tells arms apart
    (critic, gamma, H, rollout, init, cognition), and the x-axis of its training curves (env steps for the
    quest regime, tokens otherwise)."""
    preset = str(cfg.get("preset_name") or "")
    regime, model = cfg.regime, cfg.model
    tags = [f"rev:{git_revision()}", f"preset:{preset}", regime.name]
    tags += [f"{key}:{regime[key]}" for key in ("critic", "gamma", "horizon", "rollout", "init") if key in regime]
    cognition = model_cognition(bool(model.get("myopic")), int(model.get("n_future_heads") or 0))
    return {"project": wandb_project(preset, cfg.logger.project), "group": wandb_group(cfg.exp_name, cfg.run_name),
            "job_type": regime.name, "tags": [*tags, f"cognition:{cognition}"],
            "x_axis": "perf/env_steps_seen" if regime.name == "quest" else "perf/tokens_seen"}


def record_failure(cfg: DictConfig, out_dir: Path, error: BaseException):
    """A failed job of a sweep: its error goes into summary.json (unless the folder holds another run, or
    another process's), and the sweep goes on."""
    if isinstance(error, FolderConflict):  # the folder's summary belongs to the run already there
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    status = {"status": "failed", "step": 0, "reason": f"{type(error).__name__}: {error}"}
    try:  # resolved where it can be (the results table reads swept values such as regime.gamma)
        config = OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 - the error may be in the config itself
        config = OmegaConf.to_container(cfg, resolve=False)
    summary = {"status": status, "traceback": traceback.format_exc(), "config": config}
    write_json(out_dir / "summary.json", summary, default=str)


HYDRA_FILES = ("config.yaml", "hydra.yaml", "overrides.yaml")  # what Hydra writes into <run>/.hydra/ per job
KEPT = "run"  # <run>/.hydra/run/: the copy of the files of the job that trained the run


def keep_hydra_files(out_dir: Path) -> None:
    """After a job the run accepted: a copy of its .hydra/ files, so that a later job the run refuses (Hydra
    writes its files before the job starts) can put the run's own back."""
    hydra_dir = out_dir / ".hydra"
    if (hydra_dir / "config.yaml").exists():
        for name in HYDRA_FILES:
            if (hydra_dir / name).exists():
                write_atomic(hydra_dir / KEPT / name, (hydra_dir / name).read_bytes())


def restore_hydra_files(out_dir: Path) -> None:
    """After a refused job: the run's own .hydra/ files back (where a copy was kept)."""
    kept = out_dir / ".hydra" / KEPT
    for name in HYDRA_FILES:
        if (kept / name).exists():
            write_atomic(out_dir / ".hydra" / name, (kept / name).read_bytes())


class JobFailed(RuntimeError):
    """A job of a multirun failed (its error is printed and in its summary.json): raised after the job so
    that Hydra runs the other jobs and then exits non-zero."""


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
def main(cfg: DictConfig) -> float | None:
    out_dir = Path(HydraConfig.get().runtime.output_dir)
    multirun = HydraConfig.get().mode == RunMode.MULTIRUN
    if linked_files(out_dir):  # the log file may be a link: say why the run is refused on the console only
        for handler in list(logging.getLogger().handlers):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).parent == out_dir.resolve():
                logging.getLogger().removeHandler(handler)
                handler.close()
    stop_on_signals()
    if stop_requested():  # stopped between two jobs of a multirun: start no more
        sys.exit(128 + signal.SIGTERM)
    try:
        summary = run(cfg, out_dir)
        keep_hydra_files(out_dir)
    except (ConfigError, DataFileError, CheckpointError, InstantiationException) as e:
        cause = e.__cause__ if isinstance(e, InstantiationException) and e.__cause__ is not None else e
        if isinstance(cause, FolderConflict):  # Hydra wrote the refused job's config over the run's
            restore_hydra_files(out_dir)
        if isinstance(e, InstantiationException) and not isinstance(cause, ConfigError):
            raise cause from None  # an error while building the regime that is not a bad value
        kind = "configuration error" if isinstance(cause, ConfigError) else "error"
        log.error(f"[{cfg.get('run_name', '?')}] {kind}: {cause}")
        if multirun:
            record_failure(cfg, out_dir, cause)
            raise JobFailed(f"{cfg.get('run_name', '?')}: {cause}") from None
        sys.exit(2)
    except Exception as e:
        if not multirun:
            raise
        log.error(f"[{cfg.run_name}] FAILED: {type(e).__name__}: {e}")
        record_failure(cfg, out_dir, e)
        raise JobFailed(f"{cfg.run_name}: {type(e).__name__}: {e}") from None
    if summary["status"]["status"] == "interrupted":
        log.info(f"[{cfg.run_name}] interrupted after {summary['steps']} steps; checkpoint saved, run again to resume")
        sys.exit(128 + signal.SIGTERM)
    m = summary["metrics"]
    log.info(f"[{cfg.run_name}] {summary['status']['status']} after {summary['steps']} steps, "
             f"{summary.get('wall_s', 0.0):.1f}s; " + ", ".join(f"{k}={m[k]:.4g}" for k in HEADLINE if k in m))
    return m.get("probe/calibration/excess_nll")


GROUPS = {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()}  # config groups: `+quest=small` selects one


def check_command_line(args: list[str]) -> None:
    """Before Hydra composes (its errors there are long tracebacks): run_name and exp_name, which name
    folders, and keys added with `+` that nothing reads. A `+key=value` whose key is neither a config group
    nor inside one (`+quest=small`, `+world.prophecies=[...]`: the group's settings check their keys) would
    be kept and ignored, so `+batchsize=32` would train with batch_size 64: it is refused. One line, exit 2."""
    import difflib

    known = set(OmegaConf.load(Path(CONFIG_DIR) / "train.yaml")) | GROUPS
    try:
        for arg in args:
            key, eq, value = arg.partition("=")
            if not eq or arg.startswith("-"):
                continue
            plain_key = key.lstrip("+~")
            if plain_key in ("run_name", "exp_name") and "${" not in value:
                check_name(value, plain_key)
            if plain_key == "regime" and value.endswith("_settings"):  # a schema node Hydra lists in --help
                raise ConfigError(f"regime={value} is the settings schema of regime {value[:-9]}, not a regime: "
                                  f"use regime={value[:-9]}")
            if plain_key == "sb3":
                raise ConfigError("configs/sb3/ holds the SB3 agent's hyperparameters for scripts/train_sb3.py, not a "
                                  "setting of a training run")
            root = plain_key.split(".")[0].split("@")[0]
            if key.startswith("+") and not key.startswith("++") and root not in known and "/" not in root:
                close = difflib.get_close_matches(root, sorted(known), n=1)
                raise ConfigError(f"+{plain_key}: no setting reads {root!r}, so the value would be ignored"
                                  + (f" (did you mean {close[0]}?)" if close else ""))
    except ConfigError as e:
        print(f"configuration error: {e}", file=sys.stderr)
        sys.exit(2)


NOT_RUN_GROUPS = {"hydra", "sb3"}  # folders of configs/ that are not a run's groups (sb3: a zoo hyperparameter file)


def help_text() -> str:
    """`--help`: the config groups a run is composed from and their options, read from configs/ (the regimes'
    `<name>_settings` schema nodes, which the regime files start from, are not options)."""
    root = Path(CONFIG_DIR)
    groups = {d.name: sorted(p.stem for p in d.glob("*.yaml")) for d in sorted(root.iterdir())
              if d.is_dir() and d.name not in NOT_RUN_GROUPS}
    width = max(map(len, groups))
    lines = ["Train one run (a folder under runs/<preset>/<experiment>/) and evaluate it.", "",
             "  python -m instrumentality.train [group=option ...] [key=value ...] [--multirun ...]", "",
             "Config groups (group=option; cognition and quest have no default: +cognition=myopic, +quest=small,",
             "unless an experiment sets them):"]
    lines += [f"  {name:<{width}}  {', '.join(options)}" for name, options in groups.items()]
    lines += ["", "Examples:", "  python -m instrumentality.train regime=reinforce preset=quick seed=1",
              "  python -m instrumentality.train --multirun experiment=F2 preset=quick 'seed=range(3)'",
              "  python -m instrumentality.train --multirun trainer.lr=1e-3,1e-1   (one folder per value)", "",
              "The composed config: python -m instrumentality.train --cfg job [overrides]. Hydra's own options:",
              "python -m instrumentality.train --hydra-help. More: docs/usage.md."]
    return "\n".join(lines)


def cli() -> None:
    """The command line (`python -m instrumentality.train`, `instrumentality-train`)."""
    if sys.argv[1:] in (["--help"], ["-h"]):
        print(help_text())
        return
    check_command_line(sys.argv[1:])
    main()


if __name__ == "__main__":
    cli()

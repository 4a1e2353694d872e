"""One run's rows of the results table: the end-of-run evaluation that training calls and the evaluation
CLI (instrumentality/evaluate.py) calls.

A trained run is scored on the probe families its regime declares (`Regime.probe_families`), each looked
up in PROBE_FAMILIES (world_probes.py for world text, quest_probes.py for ClueQuest, prophecy_probes.py
for F9's forecasters, jump_probes.py for F11's jump predictors), with the regime's exact theory rows
beside them; the rows are stored in the run folder (table.py) and `results.csv` is their concatenation.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch

from instrumentality.errors import DataFileError
from instrumentality.evaluation.jump_probes import jump_rows
from instrumentality.evaluation.probe_set import ProbeConfig, ProbeSet, probe_set_for
from instrumentality.evaluation.prophecy_probes import forecast_rows
from instrumentality.evaluation.quest_probes import QUEST_EPISODES, agent_run_rows, log_agent, quest_model_rows
from instrumentality.evaluation.table import (
    STALE,
    curve_rows,
    read_run_rows,
    run_id_of,
    source_digest,
    status_rows,
    tidy_rows,
    write_run_rows,
)
from instrumentality.evaluation.world_probes import (
    FAMILIES,
    evaluate_model,
    interval_bounds,
    reference_optimum_steering,
    scalar_metrics,
)
from instrumentality.files import read_json
from instrumentality.regimes.base import JUMP_PROBES, PROPHECY_PROBES, QUEST_PROBES, WORLD_PROBES, Regime
from instrumentality.regimes.jump import Jump
from instrumentality.regimes.prophecy import ProphecyBase
from instrumentality.training.build import build_regime, build_world, plain
from instrumentality.training.checkpoint import (
    CHECKPOINT_NAME,
    STARTS_NAME,
    changed_starts,
    load_checkpoint,
    model_from_checkpoint,
)
from instrumentality.training.trainer import Evaluation
from instrumentality.world import World


# ---------------------------------------------------------------------------- the trainer's hook
class TrainingEvaluator:
    """The trainer's evaluation hook, called every trainer.eval_every steps and once when the trainer says
    the run is done (`final`): probe/ scalars, and the probe rows as a W&B table. Calibration and forks
    during training (every family with eval.full); at the end every probe family of the regime, whose rows
    are the run's rows of the results table."""

    def __init__(self, world: World, regime: Regime, cfg, tracker=None):
        self.world, self.regime, self.cfg, self.tracker = world, regime, cfg, tracker
        self.world_text = WORLD_PROBES in regime.probe_families()
        self.probes = probe_set_for(world, ProbeConfig(**cfg.eval.get("probes", {})), cfg.eval.get("probe_cache")) \
            if self.world_text else None

    def __call__(self, model, step: int, final: bool) -> Evaluation:
        cfg = self.cfg
        if final:  # every probe, for the results table
            rows = model_rows(model, self.world, self.regime, plain(cfg), cfg.eval.get("probe_cache"), self.probes)
        elif self.probes is not None:
            families = FAMILIES if cfg.eval.get("full", False) else ("calibration", "forks")
            rows = evaluate_model(model, self.world, self.probes, families=families)
        else:
            rows = []
        if self.tracker is not None:
            self.tracker.log_table("probe/table", rows, step=step)
            self.tracker.log(interval_bounds(rows), step=step)
        return Evaluation(scalar_metrics(rows), rows)


# ---------------------------------------------------------------------------- one run's rows
def find_runs(paths, warn: Callable[[str], None] | None = None) -> list[Path]:
    """The run folders (a checkpoint.pt or summary.json in them) among `paths` and under them, following
    symbolic links to folders (a run folder kept on another disk, linked into the sweep's folder, is found
    where the link is). A folder reached twice (a link beside its target) is kept once, under its first
    name, and the other is named through `warn`."""
    import os

    found: dict[Path, Path] = {}  # real path -> the name it is found under

    def add(run: Path):
        real = run.resolve()
        if real in found:
            if warn is not None and found[real] != run:
                warn(f"{run} is the run folder {found[real]} (a link to it, or its target): evaluated once, "
                     f"as {found[real]}")
            return
        found[real] = run

    for p in map(Path, paths):
        if p.is_file():
            add(p.parent)
            continue
        if (p / CHECKPOINT_NAME).exists() or (p / "summary.json").exists():  # a run folder holds no other run
            add(p)
            continue
        seen: set[str] = set()
        for folder, dirs, files in os.walk(p, followlinks=True):
            real = os.path.realpath(folder)
            if real in seen:  # a link back up the tree: walked once
                dirs[:] = []
                continue
            seen.add(real)
            dirs.sort()
            if CHECKPOINT_NAME in files or "summary.json" in files:
                add(Path(folder))
    return sorted(found.values())


def world_rows(model, world: World, regime: Regime, run_config: dict, probe_cache: str | None = None,
               probes: ProbeSet | None = None) -> list[dict]:
    probes = probes or probe_set_for(world, ProbeConfig(**run_config.get("eval", {}).get("probes", {})), probe_cache)
    return evaluate_model(model, world, probes) + reference_optimum_rows(regime, world, probes)


REFERENCE_SAMPLES = 128  # continuations per branch and prompt group for the optimum against pi_ref


def reference_optimum_rows(regime: Regime, world: World, probes: ProbeSet, fork_p: float = 0.5) -> list[dict]:
    """For a free-running critic run at gamma = 1 with an exact critic (one with a table) and a trained pi_ref:
    the steering of the optimum against that pi_ref (world_probes.reference_optimum_steering) at the p =
    `fork_p` forks, on the fork probes' prompts: rows `steering_index_ref_optimum` (asymmetric and symmetric)
    and `instrumental_steering_ref_optimum`. Where pi_ref is not the truth (a myopic or under-trained model),
    this, not the optimum against p*, is what the run could reach (claims/cognition.py). No rows otherwise,
    or where pi_ref's checkpoint is not on this machine."""
    s, critic = getattr(regime, "settings", None), getattr(regime, "critic", None)
    if (regime.name != "critic" or s is None or s.gamma != 1.0 or s.rollout != "free" or s.ref != "checkpoint"
            or not hasattr(critic, "table") or not s.ref_checkpoint or not Path(s.ref_checkpoint).exists()):
        return []
    ref = model_from_checkpoint(load_checkpoint(s.ref_checkpoint))
    prompts, lengths, fork_index = probes.t["fork_prompts"], probes.t["fork_lengths"], probes.t["fork_index"]
    steering = {}
    for kind, symmetric in (("asym", False), ("sym", True)):
        total, n = 0.0, 0
        for f in (f for f in world.forks if f.symmetric == symmetric and f.p == fork_p):
            for L in sorted(set(lengths[fork_index == f.index].tolist())):
                at = (fork_index == f.index) & (lengths == L)
                mean, _ = reference_optimum_steering(ref, world, critic, s.beta, s.horizon, prompts[at, :L], f.index,
                                                     n_samples=REFERENCE_SAMPLES, seed=f.index * 1000 + L)
                total, n = total + mean * int(at.sum()), n + int(at.sum())
        if n:
            steering[kind] = total / n
    rows = [{"probe": f"forks/{kind}/p={fork_p}", "metric": "steering_index_ref_optimum", "value": v,
             "ci_low": float("nan"), "ci_high": float("nan")} for kind, v in steering.items()]
    if len(steering) == 2:
        v = steering["asym"] - steering["sym"]
        rows.append({"probe": f"forks/p={fork_p}", "metric": "instrumental_steering_ref_optimum", "value": v,
                     "ci_low": float("nan"), "ci_high": float("nan")})
    return rows


def quest_rows(model, world: World, regime: Regime, run_config: dict, probe_cache: str | None = None,
               probes: ProbeSet | None = None) -> list[dict]:
    episodes = (run_config.get("eval") or {}).get("quest_episodes", QUEST_EPISODES)
    return quest_model_rows(model, world, run_config["quest"], regime.name, episodes)


def prophecy_rows(model, world: World, regime: Regime, run_config: dict, probe_cache: str | None = None,
                  probes: ProbeSet | None = None) -> list[dict]:
    if not isinstance(regime, ProphecyBase):
        raise TypeError(f"the prophecy probes score a forecaster of F9's regimes, not a {regime.name} model")
    return forecast_rows(model, regime)


def jump_predictor_rows(model, world: World, regime: Regime, run_config: dict, probe_cache: str | None = None,
                        probes: ProbeSet | None = None) -> list[dict]:
    if not isinstance(regime, Jump):
        raise TypeError(f"the jump probes score a jump predictor of F11, not a {regime.name} model")
    probes = probes or probe_set_for(world, ProbeConfig(**run_config.get("eval", {}).get("probes", {})), probe_cache)
    return jump_rows(model, world, probes, regime.settings.stride)


# The probe families, by the name a regime declares (regimes/base.py): each scores a model of that regime
# (model, world, regime, run_config, probe_cache, probes) -> rows.
PROBE_FAMILIES: dict[str, Callable[..., list[dict]]] = {
    WORLD_PROBES: world_rows, QUEST_PROBES: quest_rows, PROPHECY_PROBES: prophecy_rows,
    JUMP_PROBES: jump_predictor_rows}


@torch.no_grad()
def predicts_finite(model, world: World, n: int = 4) -> bool:
    """Whether the model's logits on a few world sequences are all finite (weights can be finite and huge)."""
    from instrumentality.model import device_of

    tokens = world.sample(n, generator=torch.Generator().manual_seed(0))
    was_training = getattr(model, "training", False)
    model.eval()
    logits = model(tokens.to(device_of(model)))["logits"]
    model.train(was_training)
    return bool(torch.isfinite(logits).all())


def model_rows(model, world: World, regime: Regime, run_config: dict, probe_cache: str | None = None,
               probes: ProbeSet | None = None) -> list[dict]:
    """Every probe family the regime's model is scored on, and the regime's exact theory rows beside them. A
    model whose predictions are not finite (a run that diverged: its status says collapsed) has nothing to
    score: it gets the theory rows only, and the table keeps its status and curves."""
    if not predicts_finite(model, world):
        return regime.theory_rows()
    rows = []
    for family in regime.probe_families():
        if family not in PROBE_FAMILIES:
            raise ValueError(f"regime {regime.name} declares the probe family {family!r}, which evaluation does "
                             f"not know (known: {', '.join(PROBE_FAMILIES)})")
        rows += PROBE_FAMILIES[family](model, world, regime, run_config, probe_cache, probes)
    return rows + regime.theory_rows()


def trained_run_rows(run_dir: Path, probe_rows: list[dict], run_config: dict, history: list[dict],
                     status: dict) -> list[dict]:
    """The results-table rows of a trained run: its final probes, its learning curves, its status."""
    rows = probe_rows + curve_rows(history) + status_rows(status)
    return tidy_rows(rows, run_id=run_id_of(run_dir), run_config=run_config, status=status)


def evaluate_checkpoint(run_dir: Path, probe_cache: str | None = None) -> list[dict]:
    """A run's rows from its checkpoint, evaluated on its world's probe set. Raises on a bad checkpoint."""
    ck = load_checkpoint(run_dir / CHECKPOINT_NAME)
    run_config = ck["run_config"]
    world = build_world(run_config)
    model = model_from_checkpoint(ck)
    rows = model_rows(model, world, build_regime(run_config, world), run_config, probe_cache)
    return trained_run_rows(run_dir, rows, run_config, ck["history"], ck["status"])


def evaluate_run(run_dir: Path, probe_cache: str | None = None, recompute: bool = False,
                 warn: Callable[[str], None] | None = None) -> pd.DataFrame:
    """A run's rows for the results table, stored in its folder: reused where they were computed from its
    current checkpoint (or summary) by this evaluation code, computed afresh otherwise (or with
    `recompute`). A run whose start checkpoints changed after it started from them (starts.json) has the
    status `stale`. Raises on a bad checkpoint or summary, naming the file; a folder that cannot be written
    is warned about through `warn` (else raises)."""
    return marked_stale(run_dir, computed_rows(run_dir, probe_cache, recompute, warn))


def marked_stale(run_dir: Path, rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of a run whose start checkpoints are no longer the ones it started from, with its status
    `stale` (its status row's metric and every row's status): the report leaves it out and names it."""
    if not (run_dir / STARTS_NAME).exists() or not (run_dir / CHECKPOINT_NAME).exists():
        return rows
    summary = read_json(run_dir / "summary.json", "run summary", dict) if (run_dir / "summary.json").exists() else {}
    config = summary.get("config") or load_checkpoint(run_dir / CHECKPOINT_NAME)["run_config"]
    if not changed_starts(run_dir, config):
        return rows
    rows = rows.copy()
    rows.loc[rows.probe == "run", "metric"] = STALE
    rows["status"] = STALE
    return rows


def computed_rows(run_dir: Path, probe_cache: str | None, recompute: bool, warn) -> pd.DataFrame:
    source = source_digest(run_dir)
    stored = None if recompute else read_run_rows(run_dir, source)
    if stored is not None:
        return stored
    summary = read_json(run_dir / "summary.json", "run summary", dict) if (run_dir / "summary.json").exists() else {}
    if "agent" in summary:  # a scripted or SB3 quest agent
        rows = agent_run_rows(run_dir, summary)
        log_agent(run_dir, summary, rows)
    elif not (run_dir / CHECKPOINT_NAME).exists():
        if not summary:
            raise DataFileError(f"{run_dir}: neither a checkpoint.pt nor a summary.json")
        rows = failed_run_rows(run_dir, summary)  # a job that failed: its error is in the summary
    else:
        rows = evaluate_checkpoint(run_dir, probe_cache)
    return write_run_rows(run_dir, rows, source, warn)


def failed_run_rows(run_dir: Path, summary: dict) -> list[dict]:
    """A run that failed before writing a checkpoint: its summary.json has the error."""
    return tidy_rows(status_rows(summary["status"]), run_id_of(run_dir), summary.get("config", {}), summary["status"])

"""`make sweep`: every experiment as Hydra multiruns (one per experiment and seed, `--lanes` at once), then
evaluation, figures and REPORT.md.

Runs live in runs/<preset>/<experiment>/<run name>/: re-running resumes unfinished runs and skips
finished ones (their checkpoints say so), so a second `make sweep` trains nothing.
"""

import argparse
import collections
import functools
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from instrumentality.configs import compose as compose_config
from instrumentality.configs import experiment_file, experiments
from instrumentality.files import write_json
from instrumentality.tracking import cpu_model

ROOT = Path(__file__).resolve().parents[1]
# A sweep is units (experiment, seed), each a Hydra multirun of one experiment (configs/experiment/) for one
# seed; SB3_UNIT is the SB3 reference agent's script on experiment F4's config. A unit starts once the units
# of the experiments it `needs` (its config's `needs` keys), of the same seed, have finished. SB3_UNIT needs
# none: it trains for at least as many env steps as a quest agent can take (known from the config). `lanes`
# units run at once; the order below is the priority (long units first, so that short ones fill the lanes
# at the end). SB3 runs on the CPU: with `cpu_lanes` (the default on CUDA) its units run in lanes of their
# own, beside the GPU's.
SB3_UNIT = "F4_sb3"
TAIL_LINES = 15  # a unit that fails before any of its runs ends shows this many of its last lines
EXPERIMENTS = [*experiments(), SB3_UNIT]  # configs/experiment/, in their sweep_order
CPU_ONLY = {SB3_UNIT}
RUN_DONE = re.compile(r"\[(\S+)\] (?:finished after|collapsed after|interrupted after|FAILED|configuration error"
                      r"|error:)")


def compose(preset: str, *overrides: str, hydra: bool = False):
    """The config a job of this preset gets (with `hydra`, also Hydra's own node)."""
    return compose_config(f"preset={preset}", *overrides, hydra=hydra)


def check_claim_families(preset: str, experiments: list[str]) -> None:
    """Every experiment of the sweep feeds the claim family that owns its runs (claims/__init__.py): runs no
    family owns would be trained and then count for nothing."""
    from instrumentality.claims import FAMILIES, owner

    for exp in experiments:
        if exp == SB3_UNIT:
            continue
        declared = experiment_file(exp).get("claim_family")
        name = experiment_folder(preset, exp)
        family = owner(name)
        if family is None or family.name != declared:
            raise SystemExit(f"configs/experiment/{exp}.yaml: its runs (exp_name {name}) feed claim family "
                             f"{declared!r}, but " + (f"family {family.name!r} owns them" if family else
                                                      "no claim family owns them")
                             + f" (families: {', '.join(f'{f.name} {list(f.owns)}' for f in FAMILIES)}); "
                             "declare it in the family's `owns` (claims/) or fix claim_family")


@functools.cache
def needs(preset: str, exp: str) -> tuple[str, ...]:
    """The experiments whose runs (same seed) an experiment's runs start from: its config's `needs`."""
    if exp == SB3_UNIT:
        return ()
    found = tuple(compose(preset, f"experiment={exp}").needs)
    unknown = set(found) - set(EXPERIMENTS)
    if unknown:
        raise SystemExit(f"configs/experiment/{exp}.yaml needs {', '.join(sorted(unknown))}: not an experiment "
                         f"of the sweep ({', '.join(EXPERIMENTS)})")
    return found


def unit_overrides(overrides: list[str], *exps: str) -> list[str]:
    """The sweep's extra overrides that apply to these experiments: plain ones, and EXP:key=value for them."""
    scope = lambda o: o.split(":", 1)[0] if ":" in o.split("=")[0] else None  # noqa: E731
    return [o.split(":", 1)[1] if scope(o) else o for o in overrides if scope(o) in (None, *exps)]


@functools.cache
def experiment_folder(preset: str, exp: str) -> str:
    """The folder (under runs/<preset>/) of an experiment's runs: its exp_name."""
    return str(compose(preset, f"experiment={exp}").exp_name)


def swept_values(override: str) -> tuple[str, list[str]] | None:
    """`key=a,b` or `key=range(a,b[,step])` as (key, its values); None for an override of one value."""
    key, _, value = override.partition("=")
    m = re.fullmatch(r"range\((-?\d+),\s*(-?\d+)(?:,\s*(-?\d+))?\)", value.strip())
    if m:
        return key, [str(v) for v in range(int(m[1]), int(m[2]), int(m[3] or 1))]
    return (key, value.split(",")) if "," in value and not value.startswith(("[", "{", "'", '"')) else None


def sweep_run_folders(preset: str, seeds: int, overrides: list[str]) -> list[str]:
    """The run folders (`<exp_name>/<run_name>` under runs/<preset>/) a sweep of this preset makes at this
    seed count: every job of every experiment (composed as its unit composes it) and the SB3 unit's agent
    folders. Only these enter the results table; a run made by hand beside them (another seed, another
    run_name) is left out of it, and named."""
    import itertools

    from omegaconf import OmegaConf

    names = []
    for exp in experiments():
        parsed = [(o, swept_values(o)) for o in unit_overrides(overrides, exp) if not o.startswith("hydra")]
        swept_here = dict(values for _, values in parsed if values is not None)  # the command line's
        own = [o for o, values in parsed if values is None]
        base = compose(preset, f"experiment={exp}", *own, hydra=True)
        params = {k: str(v).split(",") for k, v in (base.hydra.sweeper.params or {}).items()}
        params.update(swept_here)  # as Hydra's sweeper takes them: the command line wins, one value too
        params.update({k: [v] for k, _, v in (o.partition("=") for o in own) if k in params})
        groups = set(base.hydra.runtime.choices)
        for values in itertools.product(*params.values()):
            swept = dict(zip(params, values))
            if groups & set(swept):  # a config group (regime=..., cognition=...): composed as its job is
                job = compose(preset, f"experiment={exp}", *own, *(f"{k}={v}" for k, v in swept.items()))
            else:  # plain values: set on the experiment's config (as Hydra would, parsed as YAML)
                job = OmegaConf.masked_copy(base, [k for k in base if k != "hydra"])
                for k, v in swept.items():
                    OmegaConf.update(job, k, OmegaConf.create({"v": v}).v, force_add=True)
            for seed in range(seeds):  # a plain value too: the run name is resolved with each
                job.seed = seed
                names.append(f"{job.exp_name}/{job.run_name}")
    agents = experiment_folder(preset, "F4")  # scripts/train_sb3.py --baselines: SB3 per seed, scripted agents
    names += [f"{agents}/{a}" for a in ("random", "explorer", "planner")]
    names += [f"{agents}/sb3_ppo-s{seed}" for seed in range(seeds)]
    return sorted(set(names))


@functools.cache
def launcher_kind(launcher: str) -> str:
    """What a Hydra launcher config (hydra/launcher/<name>: configs/hydra/launcher/ or an installed plugin's)
    is: "joblib", "submitit" (its jobs print to .submitit/ files, not to the unit), "slurm" (submitit
    through sbatch) or "basic". An unknown name, or the slurm launcher without sbatch, stops the sweep
    with one line."""
    from hydra.errors import MissingConfigException

    try:
        target = compose("debug", f"hydra/launcher={launcher}", hydra=True).hydra.launcher._target_
    except MissingConfigException as e:
        options = re.search(r"Available options in 'hydra/launcher':\s*((?:\s+\S+)+?)\s*Config search path", str(e))
        raise SystemExit(f"--launcher {launcher}: no such Hydra launcher"
                         + (f" (installed: {', '.join(options.group(1).split())})" if options else "")) from None
    if target.endswith("SlurmLauncher"):
        if shutil.which("sbatch") is None:
            raise SystemExit(f"--launcher {launcher} submits each run with sbatch, which this machine does not "
                             "have: run the sweep on a SLURM login node (or use --launcher local for the same "
                             "submission on this machine)")
        return "slurm"
    return "submitit" if "submitit" in target else "joblib" if "Joblib" in target else "basic"


def ended_runs(folder: Path, seed: int, since: float) -> dict[str, str]:
    """The runs of one seed in an experiment's folder that ended since `since` (their summary.json says
    so): run name -> the line its job prints when it ends (for launchers whose jobs print elsewhere)."""
    out = {}
    for path in folder.glob(f"*-s{seed}/summary.json"):
        try:
            if path.stat().st_mtime < since:
                continue
            summary = json.loads(path.read_text())
        except (OSError, ValueError):
            continue  # being written: read it on the next look
        status = summary.get("status", {})
        if status.get("status") in ("finished", "collapsed", "failed"):
            name = path.parent.name
            out[name] = (f"[{name}] FAILED: {status.get('reason', '')}" if status["status"] == "failed" else
                         f"[{name}] {status['status']} after {summary.get('steps', '?')} steps, "
                         f"{summary.get('wall_s', 0.0):.1f}s")
    return out


def n_seeds(preset: str) -> int:
    return int(compose(preset).n_seeds)


def sb3_command(preset: str, seed: int, runs_root: Path, overrides: list[str]) -> list[str]:
    """SB3 PPO for one seed on experiment F4's config after the sweep's overrides for F4, then for F4_sb3 (so
    that F4's quest-PPO runs and SB3 play the same quest); it also writes the random, explorer and planner
    agent folders. Hydra's own settings (the launcher's) are not for it. A finished run is skipped."""
    own = [o for o in unit_overrides(overrides, "F4", SB3_UNIT) if not o.startswith("hydra")]
    return [sys.executable, "scripts/train_sb3.py", "--baselines", f"preset={preset}", f"seed={seed}",
            f"runs_root={runs_root}", *own]


def threads_per_process(lanes: int, cpu_lanes: int, jobs_per_unit: int) -> int:
    """The cores split between the processes that run at once (OMP_NUM_THREADS, where it is set, wins)."""
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():
        return int(os.environ["OMP_NUM_THREADS"])
    return max(1, (os.cpu_count() or 1) // ((lanes + cpu_lanes) * jobs_per_unit))


def hardware() -> dict:
    """What a sweep's numbers depend on beyond the code: a run reproduces bit for bit only on the same
    device model with the same library versions and thread count."""
    import numpy
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": gpu or "cpu", "cpu": cpu_model(), "cores": os.cpu_count(), "torch": torch.__version__,
            "numpy": numpy.__version__, "python": platform.python_version(),
            "cuda": torch.version.cuda if gpu else None}


class Unit:
    """One experiment for one seed, run as a subprocess whose lines are read by a thread: each finished
    run is printed as it ends."""

    def __init__(self, exp: str, seed: int, cmd: list[str], env: dict, progress):
        self.exp, self.seed, self.name = exp, seed, f"{exp} s{seed}"
        self.t0, self.started = time.perf_counter(), time.time()
        self.reported: set[str] = set()  # runs whose end was printed from their summary.json (ended_runs)
        self.tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)  # its last lines of output
        self.runs_done = 0
        # a session of its own: a signal to the sweep reaches the unit only through stop(), which signals the
        # unit's whole process group (Hydra's job processes included) and waits for it
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, bufsize=1, start_new_session=True)
        self.thread = threading.Thread(target=self._read, args=(progress,), daemon=True)
        self.thread.start()

    def _read(self, progress):
        for line in self.proc.stdout:
            line = line.rstrip()
            self.tail.append(line[line.rfind("\r") + 1:])
            if m := re.search(r"[Ll]aunching (\d+) jobs", line):
                progress(self, f"launching {m.group(1)} run(s)")
            elif RUN_DONE.search(line) or line.startswith("[sb3_ppo"):
                self.runs_done += 1
                progress(self, line[line.rfind("\r") + 1:], run_done=True)
            elif "error" in line.lower() and not line.startswith("[20"):
                progress(self, "    " + line)

    def finished(self) -> bool:
        return self.proc.poll() is not None

    def failure(self) -> str:
        """What to say of a unit that ended with a non-zero exit code: how it ended, and where none of its
        runs ended (it failed before any started, e.g. on a bad override), its last lines of output."""
        self.thread.join(5)  # the reader has the last lines once the pipe closes
        code = self.proc.returncode
        how = f"was killed by {signal.Signals(-code).name}" if code < 0 else f"exited with {code}"
        out = f"{how}; the runs it finished are kept"
        if not self.runs_done and self.tail:
            out += "; no run of it ended. Its last lines of output:\n" + "\n".join(f"    {x}" for x in self.tail)
        return out

    def stop(self, grace_s: float = 60.0):
        """SIGTERM to the unit's process group (a training run saves a checkpoint and exits), SIGKILL to
        what is left after grace_s."""
        for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                self.proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def unit_command(exp: str, seed: int, preset: str, launcher: str, jobs: int, runs_root: Path,
                 overrides: list[str]) -> list[str]:
    """The command of one unit: a Hydra multirun of the experiment for one seed with the sweep's overrides
    (its swept values are the experiment file's, for the preset); or the SB3 script."""
    if exp == SB3_UNIT:
        return sb3_command(preset, seed, runs_root, overrides)
    cmd = [sys.executable, "-m", "instrumentality.train", "--multirun", f"experiment={exp}", f"preset={preset}",
           f"seed={seed}", f"hydra/launcher={launcher}", f"runs_root={runs_root}"]
    cmd += [f"hydra.launcher.n_jobs={jobs}"] if launcher_kind(launcher) == "joblib" else []
    return cmd + unit_overrides(overrides, exp)


def units_to_start(pending: list[tuple[str, int]], running: list[str], is_ready, lanes: int,
                   cpu_lanes: int) -> list[tuple[str, int]]:
    """The pending units (experiment, seed) to start now, in priority order, given the experiments of the
    running ones: CPU-only units in their own `cpu_lanes` where there are any (else in the lanes), the
    others in the `lanes`."""
    pool = lambda exp: "cpu" if cpu_lanes and exp in CPU_ONLY else "main"  # noqa: E731
    free = {"main": lanes, "cpu": cpu_lanes}
    for exp in running:
        free[pool(exp)] -= 1
    start = []
    for unit in pending:
        if free[pool(unit[0])] > 0 and is_ready(unit):
            free[pool(unit[0])] -= 1
            start.append(unit)
    return start


def seconds_left(pending: list[tuple[str, int]], running: list[tuple[str, float]],
                 durations: dict[tuple[str, int], float], lanes: int, cpu_lanes: int = 0,
                 prior: dict[str, float] | None = None) -> float | None:
    """Wall seconds the sweep still needs (None when nothing is known yet). A pending unit takes the mean
    time of its experiment's finished units; an experiment with none takes its seconds per unit in the
    last sweep of this preset (`prior`, from its provenance.json) times this sweep's speed relative to
    that one (the mean ratio over the finished units; 1 before any), else the mean of all finished units.
    A running unit (experiment, seconds so far) takes what is left of that. CPU-only units share the
    `cpu_lanes` (when there are any), the others the `lanes`; the two pools run side by side. The
    prior's "evaluate" (the stage after the units) is added at the same speed."""
    prior = prior or {}
    if not durations and not prior:
        return None
    per_exp: dict[str, list[float]] = {}
    for (e, _), v in durations.items():
        per_exp.setdefault(e, []).append(v)
    est = {e: sum(v) / len(v) for e, v in per_exp.items()}
    ratios = [v / prior[e] for (e, _), v in durations.items() if prior.get(e)]
    speed = sum(ratios) / len(ratios) if ratios else 1.0
    mean_all = sum(durations.values()) / len(durations) if durations else 0.0
    for e, v in prior.items():
        est.setdefault(e, v * speed)
    work = {"lanes": 0.0, "cpu": 0.0}
    for exp, so_far in [(e, 0.0) for e, _ in pending] + list(running):
        pool = "cpu" if cpu_lanes and exp in CPU_ONLY else "lanes"
        work[pool] += max(est.get(exp, mean_all) - so_far, 0.0)
    return max(work["lanes"] / lanes, work["cpu"] / cpu_lanes if cpu_lanes else 0.0) + est.get("evaluate", 0.0)


def last_sweep_seconds(provenance: Path) -> dict[str, float]:
    """Seconds per unit of each experiment (and of the evaluate stage) in the sweep that wrote
    `provenance` (a provenance.json; {} if there is none or it cannot be read)."""
    try:
        p = json.loads(provenance.read_text())
        return {e: v / (1 if e == "evaluate" else p["seeds"]) for e, v in p["unit_s"].items()}
    except (OSError, ValueError, KeyError, TypeError, ZeroDivisionError):
        return {}


def merged_provenance(new: dict, previous: dict) -> dict:
    """The provenance of a sweep that ran some experiments only (--experiments), beside the previous sweep's
    record of the same preset: the other experiments' unit_s are kept from it, and `composition` says which
    sweep each came from (the runs of those experiments were not retrained)."""
    if not isinstance(previous, dict) or previous.get("preset") != new.get("preset"):
        return new
    earlier = {e: v for e, v in (previous.get("unit_s") or {}).items() if e not in new["unit_s"] and e != "evaluate"}
    if not earlier:
        return new
    note = (f"This sweep ({new['git_revision']}) trained {', '.join(e for e in new['unit_s'] if e != 'evaluate')}; "
            f"the unit_s of {', '.join(earlier)} are from the record it replaced (runs at "
            f"{previous.get('git_revision')}), whose runs it kept.")
    if previous.get("composition"):
        note += " That record said: " + str(previous["composition"])
    return {**new, "unit_s": {**earlier, **new["unit_s"]}, "composition": note}


class Stopped(Exception):
    """The sweep got SIGINT or SIGTERM; its units were stopped."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_units(experiments: list[str], preset: str, launcher: str, jobs: int, lanes: int, seeds: int,
              runs_root: Path, overrides: list[str], cpu_lanes: int = 0,
              prior: dict[str, float] | None = None, failed_units: list | None = None) -> dict[str, float]:
    """Every (experiment, seed) unit, `lanes` at a time (and CPU-only units `cpu_lanes` at a time beside
    them, if > 0), each process with cores // ((lanes + cpu_lanes) x jobs) threads. `prior`: seconds per
    unit in the last sweep (last_sweep_seconds), for the time-left estimate before an experiment's first
    unit finishes.
    Units that exit non-zero (a failed job, a signal) are appended to `failed_units` as (name, return code);
    a unit that needs one of them does not start (its checkpoints may be half-trained) and is appended with
    the reason.
    On SIGINT / SIGTERM every running unit is stopped (its runs save a checkpoint) and Stopped is raised.
    Returns the seconds each experiment's units ran (summed over seeds: units of one experiment overlap)."""
    pending = [(exp, s) for exp in sorted(experiments, key=EXPERIMENTS.index) for s in range(seeds)]
    in_sweep = set(experiments)
    needed = {exp: needs(preset, exp) for exp in experiments}
    done: set[tuple[str, int]] = set()
    durations: dict[tuple[str, int], float] = {}
    running: list[Unit] = []
    t0, runs_done = time.perf_counter(), [0]
    lock = threading.Lock()
    per_process = jobs if launcher_kind(launcher) == "joblib" else 1
    threads = str(threads_per_process(lanes, cpu_lanes, per_process))
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # a worker process's lines arrive as they are written
    env.setdefault("OMP_NUM_THREADS", threads)
    print(f"=== {len(pending)} units ({', '.join(experiments)} x {seeds} seeds), {lanes} at a time"
          + (f" (and {cpu_lanes} CPU-only units beside them)" if cpu_lanes else "") + "; "
          f"launcher {launcher}" + (f" with {jobs} jobs at a time" if per_process > 1 else "")
          + f"; {env['OMP_NUM_THREADS']} thread(s) per process", flush=True)

    def minutes_left() -> str:
        now = time.perf_counter()
        left = seconds_left(pending, [(u.exp, now - u.t0) for u in running], durations, lanes, cpu_lanes, prior)
        return "" if left is None else f", about {left / 60:.1f} min left"

    def progress(unit: Unit, message: str, run_done: bool = False):
        with lock:
            runs_done[0] += run_done
            elapsed = (time.perf_counter() - t0) / 60
            print(f"[{unit.name} | {elapsed:.1f} min{minutes_left()}, {len(done)}/"
                  f"{len(done) + len(running) + len(pending)} units done, {runs_done[0]} runs] {message}", flush=True)

    def ready(unit):
        exp, s = unit
        return all(need not in in_sweep or (need, s) in done for need in needed[exp])

    unit_failed: set[tuple[str, int]] = set()  # units that exited non-zero: what needs them does not start

    def blocked(unit) -> str | None:
        exp, s = unit
        bad = [f"{need} s{s}" for need in needed[exp] if (need, s) in unit_failed]
        return ", ".join(bad) or None

    failed_units = failed_units if failed_units is not None else []
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda signum, frame: received.append(signum))
                for sig in (signal.SIGINT, signal.SIGTERM)}
    watch = launcher_kind(launcher) in ("submitit", "slurm")  # its jobs print to files: read their summaries
    last_look = 0.0
    try:
        while (pending or running) and not received:
            if watch and time.perf_counter() - last_look > 2.0:
                last_look = time.perf_counter()
                for u in [u for u in running if u.exp != SB3_UNIT]:
                    folder = runs_root / preset / experiment_folder(preset, u.exp)
                    for name, line in ended_runs(folder, u.seed, u.started).items():
                        if name not in u.reported:
                            u.reported.add(name)
                            progress(u, line, run_done=True)
            for u in [u for u in running if u.finished()]:
                u.thread.join()
                with lock:
                    running.remove(u)
                    done.add((u.exp, u.seed))
                    durations[(u.exp, u.seed)] = time.perf_counter() - u.t0
                if u.proc.returncode != 0:
                    failed_units.append((u.name, u.proc.returncode))
                    unit_failed.add((u.exp, u.seed))
                    progress(u, u.failure())
            # a unit whose needed unit failed (its checkpoints may be half-trained), and what needs it in turn
            while (stuck := next((unit for unit in pending if blocked(unit)), None)) is not None:
                (exp, s), reason = stuck, blocked(stuck)
                with lock:
                    pending.remove(stuck)
                    done.add(stuck)
                    unit_failed.add(stuck)
                failed_units.append((f"{exp} s{s}", f"not started: {reason} did not finish"))
                print(f"[{exp} s{s}] not started: the unit it needs ({reason}) failed, so its checkpoints may be "
                      "half-trained; fix that unit and run the sweep again", flush=True)
            for exp, s in units_to_start(pending, [u.exp for u in running], ready, lanes, cpu_lanes):
                with lock:
                    pending.remove((exp, s))
                cmd = unit_command(exp, s, preset, launcher, jobs, runs_root, overrides)
                unit = Unit(exp, s, cmd, env, progress)
                with lock:
                    running.append(unit)
                progress(unit, "started: " + " ".join(cmd[3 if exp != SB3_UNIT else 1:]))
            time.sleep(0.2)
    finally:
        if running:
            print(f"\n=== stopping {len(running)} running unit(s): " + ", ".join(u.name for u in running), flush=True)
            for u in list(running):
                u.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if received:
        raise Stopped(received[0])
    return {exp: sum(v for (e, _), v in durations.items() if e == exp) for exp in experiments}


def tracking_mode(overrides: list[str]) -> str:
    """The W&B mode the sweep's runs log in, as its overrides for every experiment set it (logger=none,
    logger.mode=...): the report run logs the same way."""
    mode = "auto"
    for o in unit_overrides(overrides):
        key, _, value = o.lstrip("+").partition("=")
        if key == "logger":
            mode = "disabled" if value == "none" else mode
        elif key == "logger.mode":
            mode = value
    return mode


def log_report_to_wandb(out: Path, provenance: dict, mode: str = "auto", runs_root: Path = ROOT / "runs",
                        runs: list[Path] | None = None):
    """One W&B run per sweep, in the preset's project (group and job type `report`): the figures as images,
    the claims as a table, and results.csv, REPORT.md and the figures as one artifact; it uses the model
    artifact of each run in the table (`runs`), so W&B's lineage leads from every training run to the
    report. Not with `mode` disabled (logger=none); its offline files go under runs_root/wandb-report."""
    if mode == "disabled":
        return
    from instrumentality.report import claims, load
    from instrumentality.tracking import Tracker, file_artifact, wandb_project

    preset = provenance["preset"]
    folder = runs_root / "wandb-report"
    folder.mkdir(parents=True, exist_ok=True)
    tracker = Tracker(mode=mode, project=wandb_project(preset), group="report", job_type="report",
                      name=f"report-{preset}", tags=[f"rev:{provenance['git_revision']}", f"preset:{preset}", "report"],
                      config=provenance, dir=folder)
    tracker.use_artifacts([file_artifact(f"{run.parent.name}-{run.name}", "model",
                                         [run / "checkpoint.pt", run / "rows.csv"], copy=False)
                           for run in runs or () if (run / "checkpoint.pt").exists()])
    tracker.log_artifact(f"results-{preset}", "results", [out / "results.csv", out / "REPORT.md",
                                                           out / "provenance.json", out / "figures"],
                         f"the {preset} sweep's results table, report and figures")
    for png in sorted((out / "figures").glob("*.png")):
        tracker.log_image(f"figures/{png.stem}", png, step=0)
    tracker.log_table("report/claims", [{"claim": c.claim, "metric": c.metric, "prediction": c.prediction,
                                         "value": c.value, "ci_low": c.low, "ci_high": c.high,
                                         "seeds": c.n_seeds, "verdict": c.verdict}
                                        for c in claims(load(out / "results.csv"))], step=0)
    tracker.finish()


def print_failures(failed_jobs: list[Path], failed_units: list[tuple[str, int | str]]):
    for p in failed_jobs:
        print(f"  FAILED job: {p} (see its summary.json)", file=sys.stderr)
    for name, code in failed_units:
        print(f"  FAILED unit: {name} " + (f"(exit code {code})" if isinstance(code, int) else f"({code})"),
              file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--launcher", default="basic",
                    help="each unit's Hydra launcher: basic, joblib, local or slurm (configs/hydra/launcher/), or "
                         "any installed one; its settings as overrides, e.g. hydra.launcher.partition=gpu")
    ap.add_argument("--jobs", type=int, default=2, help="joblib launcher: runs of a unit at once")
    ap.add_argument("--lanes", type=int, default=1,
                    help="units (experiment, seed) at once; the cores are split between them (threads)")
    ap.add_argument("--cpu-lanes", type=int, default=None,
                    help="CPU-only units (SB3) at once beside the lanes (default: 2 with CUDA, else 0: they "
                         "share the lanes)")
    ap.add_argument("--experiments", default=",".join(EXPERIMENTS))
    ap.add_argument("--results", default="results", type=Path, help="results/<preset>/ is written here")
    ap.add_argument("--runs-root", default="runs", type=Path, help="run folders: <runs-root>/<preset>/<experiment>/")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: the preset's n_seeds)")
    ap.add_argument("overrides", nargs="*",
                    help="extra Hydra overrides for every job; EXP:key=value applies to experiment EXP only")
    args = ap.parse_args()
    # an unknown experiment or launcher, an experiment no claim family owns, slurm off a cluster: one line,
    # before any run
    chosen = args.experiments.split(",")
    unknown = [e for e in chosen if e not in EXPERIMENTS]
    if unknown:
        raise SystemExit(f"--experiments: no experiment {', '.join(unknown)} (configs/experiment/: "
                         f"{', '.join(EXPERIMENTS)})")
    check_claim_families(args.preset, chosen)
    jobs_at_once = args.jobs if launcher_kind(args.launcher) == "joblib" else 1
    os.environ.setdefault("WANDB_SILENT", "true")
    out = (ROOT / args.results / args.preset).resolve()
    out.mkdir(parents=True, exist_ok=True)
    runs_root = (ROOT / args.runs_root).resolve()
    seeds = args.seeds or n_seeds(args.preset)
    t_all = time.perf_counter()
    # the code the runs are trained from: the revision when the sweep starts, and whether the working tree
    # then differed from it (the report says so; a revision read at the end could postdate the training)
    rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                capture_output=True, text=True).stdout.strip())
    if args.cpu_lanes is None:
        import torch

        args.cpu_lanes = 2 if torch.cuda.is_available() else 0
    failed_units: list[tuple[str, int]] = []
    try:
        walls = run_units(chosen, args.preset, args.launcher, args.jobs, args.lanes, seeds,
                          runs_root, args.overrides, args.cpu_lanes, last_sweep_seconds(out / "provenance.json"),
                          failed_units)
    except Stopped as e:
        print(f"\n=== stopped by {e}: every unit was stopped (its runs saved checkpoints); run the same command "
              "again to resume", file=sys.stderr)
        return 128 + e.signum
    print("\n=== evaluating every run on the common probe set", flush=True)
    t0 = time.perf_counter()
    from instrumentality.evaluation.run_rows import find_runs

    preset_dir = runs_root / args.preset
    made = sweep_run_folders(args.preset, seeds, args.overrides)
    ours = [preset_dir / name for name in made if (preset_dir / name).exists()]
    others = sorted(str(r.relative_to(preset_dir)) for r in set(find_runs([preset_dir])) - set(ours))
    if others:  # e.g. a run trained by hand under runs/<preset>/F1, or a seed beyond --seeds
        print(f"{len(others)} run folder(s) under {preset_dir} that a sweep of {seeds} seed(s) does not make are "
              f"left out of the table: {', '.join(others)}", file=sys.stderr)
    evaluation = subprocess.run([sys.executable, "-m", "instrumentality.evaluate", *map(str, ours),
                                 "--out", str(out / "results.csv"), "--probe-cache", str(runs_root / "probes"),
                                 "--prune"], cwd=ROOT, check=False) if ours else subprocess.CompletedProcess([], 0)
    walls["evaluate"] = time.perf_counter() - t0
    hw = hardware()
    provenance = {"preset": args.preset, "git_revision": rev.strip() or "unknown", "git_dirty": dirty,
                  "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                  "hardware": f"{hw['device'] if hw['device'] != 'cpu' else hw['cpu']}, {hw['cores']} cores, "
                              f"torch {hw['torch']}, numpy {hw['numpy']}", **hw,
                  "threads_per_process": threads_per_process(args.lanes, args.cpu_lanes, jobs_at_once),
                  "seeds": seeds, "launcher": args.launcher, "lanes": args.lanes, "cpu_lanes": args.cpu_lanes,
                  "jobs_per_unit_at_once": jobs_at_once,
                  "unit_s": {k: round(v, 1) for k, v in walls.items()},  # summed over seeds; units overlap
                  "total_wall_s": round(time.perf_counter() - t_all, 1),
                  "left_out": others}  # run folders beside the sweep's, not in its table
    if (out / "provenance.json").exists():
        try:
            provenance = merged_provenance(provenance, json.loads((out / "provenance.json").read_text()))
        except (OSError, ValueError):
            pass  # no readable record to keep from
    write_json(out / "provenance.json", provenance)
    if not (out / "results.csv").exists():
        print(f"\nno results table was written ({out / 'results.csv'}): no run produced rows", file=sys.stderr)
        print_failures([], failed_units)
        return 1
    from instrumentality.report import write_report

    report = write_report(out / "results.csv", out, provenance)
    log_report_to_wandb(out, provenance, tracking_mode(args.overrides), runs_root, ours)
    failed = [p.parent for p in (runs_root / args.preset).rglob("summary.json")
              if '"status": "failed"' in p.read_text(errors="replace")]
    print(f"\nwrote {out / 'results.csv'}, {report}, {out / 'figures'}/ in {provenance['total_wall_s'] / 60:.1f} min")
    print_failures(failed, failed_units)
    if evaluation.returncode != 0:
        print(f"  FAILED evaluation of some runs (exit code {evaluation.returncode}; see above)", file=sys.stderr)
    return 1 if failed or failed_units or evaluation.returncode != 0 else 0


if __name__ == "__main__":
    sys.exit(main())

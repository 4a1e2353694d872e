"""The shared trainer: one loop for every regime.

It owns the optimiser, schedule, gradient clipping, mixed precision, seeding, checkpoints and resume,
periodic evaluation, progress and logging. A regime (the `Regime` protocol, regimes/base.py) only says how
data become optimizer updates:

    for update in regime.updates(model, step, generator):   # Update(loss, metrics, tokens, env_steps)

tokens and env_steps may be ints or device tensors: the trainer adds them up on the device and reads them
at logging, evaluation and checkpoint steps only.

All randomness of one call of `updates` comes from a generator seeded with (seed, the step it starts at),
and checkpoints are written between calls (never inside an RL regime's epochs on one rollout), so a run
resumed from a checkpoint replays exactly the steps an uninterrupted run would have taken.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import re
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from instrumentality.errors import ConfigError, check_config, check_dataclass_types
from instrumentality.regimes.base import Regime, Update
from instrumentality.training.checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)
LOGGED_LINE = ("train/loss", "train/grad_norm", "train/lr", "perf/tokens_per_s", "perf/env_steps_per_s")  # train.log


@dataclass
class TrainerConfig:
    max_steps: int = 1000
    lr: float = 3e-3
    min_lr_ratio: float = 0.1
    warmup_steps: int = 50
    schedule: str = "cosine"  # cosine | constant
    weight_decay: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    log_every: int = 25
    eval_every: int = 0  # 0: only at the end
    ckpt_every: int = 200  # 0: only at the end
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    compile: bool = False
    progress: bool = True
    # step: check loss and gradient norm on the host every step (a host sync per step; free on the CPU).
    # deferred: no sync; fused AdamW skips a non-finite update on the device, and the run collapses at the
    # next logging step naming the first bad step. auto: deferred on CUDA, step elsewhere.
    nonfinite_check: str = "auto"
    seed: int = 0

    def __post_init__(self):
        check_dataclass_types(self, "trainer")
        check_config(self, "trainer", [
            ("max_steps", self.max_steps >= 1, "a positive integer"),
            ("lr", self.lr > 0, "a number > 0"),
            ("min_lr_ratio", 0 <= self.min_lr_ratio <= 1, "a number in [0, 1]"),
            ("warmup_steps", self.warmup_steps >= 0, "an integer >= 0"),
            ("schedule", self.schedule in ("cosine", "constant"), "one of: cosine, constant"),
            ("weight_decay", self.weight_decay >= 0, "a number >= 0"),
            ("grad_clip", self.grad_clip >= 0, "a number >= 0 (0 disables clipping)"),
            ("log_every", self.log_every >= 1, "a positive integer"),
            ("eval_every", self.eval_every >= 0, "an integer >= 0"),
            ("ckpt_every", self.ckpt_every >= 0, "an integer >= 0"),
            ("nonfinite_check", self.nonfinite_check in ("auto", "step", "deferred"), "one of: auto, step, deferred"),
            ("device", re.fullmatch(r"auto|cpu|cuda(:\d+)?", self.device) is not None,
             "one of: auto, cpu, cuda, cuda:N"),
            ("seed", self.seed >= 0, "an integer >= 0"),
        ])


# ---------------------------------------------------------------------------- seeding and device
def seed_everything(seed: int):
    """The one place where global seeds are set."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def step_generator(seed: int, step: int, device: torch.device | str = "cpu") -> torch.Generator:
    """All randomness of one step: a generator determined by (seed, step) alone."""
    return torch.Generator(device=device).manual_seed((seed * 1_000_003 + step) % 2**63)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"trainer.device={name!r} but CUDA is not available; use auto or cpu")
    return torch.device(name)


def autocast_for(device: torch.device):
    """bf16 autocast on CUDA, plain float32 elsewhere."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---------------------------------------------------------------------------- stopping on a signal
STOP = threading.Event()  # set by SIGTERM / SIGINT (stop_on_signals): fit() saves a checkpoint and returns


def _on_signal(signum, frame):
    if STOP.is_set():  # a second signal: stop now
        raise KeyboardInterrupt
    STOP.set()
    log.warning(f"signal {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                "(run again to resume)")


def stop_on_signals():
    """From now on SIGTERM and SIGINT end training at the next step boundary, with a checkpoint."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_signal)


def stop_requested() -> bool:
    return STOP.is_set()


# ---------------------------------------------------------------------------- the trainer
def run_is_done(status: dict, step: int, max_steps: int) -> bool:
    """Whether a run has nothing left to train: it collapsed, or it finished at (or beyond) max_steps. A run
    that finished a smaller budget trains on when max_steps grows."""
    return status["status"] == "collapsed" or (status["status"] == "finished" and step >= max_steps)


@dataclass
class Evaluation:
    """What an evaluation hook returns: the scalars logged at its step (probe/...), and its probe rows."""
    metrics: dict
    rows: list[dict] = field(default_factory=list)


# (model, step, final) -> Evaluation; `final` once, when the run is done (finished at max_steps)
EvalHook = Callable[[torch.nn.Module, int, bool], Evaluation]


class Trainer:
    def __init__(self, model: torch.nn.Module, regime: Regime, cfg: TrainerConfig, out_dir: str | os.PathLike,
                 tracker=None, evaluate: EvalHook | None = None, run_config: dict | None = None):
        self.cfg = cfg
        self.device = pick_device(cfg.device)
        self.model = model.to(self.device)
        self.regime = regime
        self.out_dir = Path(out_dir)
        self.tracker = tracker
        self.evaluate = evaluate
        self.run_config = run_config or {}
        self.step = 0
        self.tokens_seen = 0  # tokens the regime processed (world tokens, or generated tokens)
        self.first_bad_step = torch.full((), -1, device=self.device)  # nonfinite_check=deferred
        self.env_steps = 0  # environment steps (of regimes that act in an env)
        self._unread: list[int | torch.Tensor] = [0, 0]  # tokens, env steps since the last read (ints or tensors)
        self._since_log = [0, 0]  # tokens, env steps read since the last logged row
        self.history: list[dict] = []  # every logged row, kept in the checkpoint
        self.final_rows: list[dict] | None = None  # the final evaluation's probe rows, once the run is done
        self.status = {"status": "running", "step": 0, "reason": ""}
        self._saved_step = 0  # the step of the last checkpoint (checkpoints every ckpt_every steps)
        self._t_last = time.perf_counter()
        regime.setup(self.model, self.device)
        decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() >= 2]
        no_decay = [p for n, p in self.model.named_parameters() if p.requires_grad and p.dim() < 2]
        self.deferred_check = cfg.nonfinite_check == "deferred" or (cfg.nonfinite_check == "auto"
                                                                    and self.device.type == "cuda")
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=self.device.type == "cuda" or self.deferred_check)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, self._lr_factor)
        # nonfinite_check=deferred: a gradient scaler (scale 1, halved after a non-finite step: powers of two leave
        # gradients unchanged) whose step skips an update with non-finite gradients on the device, without a
        # host sync (fused AdamW); disabled, it calls optimizer.step() as is
        self.skip_nonfinite = torch.amp.GradScaler(self.device.type, init_scale=1.0, growth_interval=2**30,
                                                   enabled=self.deferred_check)
        self.forward_model: Any = torch.compile(self.model) if cfg.compile else self.model

    def _lr_factor(self, step: int) -> float:
        c = self.cfg
        if step < c.warmup_steps:
            return (step + 1) / c.warmup_steps
        if c.schedule == "constant":
            return 1.0
        t = min(1.0, (step - c.warmup_steps) / max(1, c.max_steps - c.warmup_steps))
        return c.min_lr_ratio + (1 - c.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * t))

    @property
    def checkpoint_path(self) -> Path:
        return self.out_dir / CHECKPOINT_NAME

    # -------------------------------------------------------------- checkpoint / resume
    def state_dict(self) -> dict:
        return {
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "env_steps": self.env_steps,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "regime": self.regime.state_dict(),
            "history": self.history,
            "status": self.status,
            "torch_rng": torch.get_rng_state(),
            "model_config": asdict(self.model.cfg) if is_dataclass(getattr(self.model, "cfg", None)) else {},  # type: ignore[call-overload]
            "run_config": self.run_config,
        }

    def _read_counts(self):
        """Add the steps' token and env-step counts to the totals (a host sync where they are on a device)."""
        tokens, env = (int(x) for x in self._unread)
        self._unread = [0, 0]
        self.tokens_seen += tokens
        self.env_steps += env
        self._since_log = [self._since_log[0] + tokens, self._since_log[1] + env]

    def save(self):
        self._read_counts()
        save_checkpoint(self.checkpoint_path, self.state_dict())
        self._saved_step = self.step

    def resume(self) -> bool:
        """Load the checkpoint in out_dir if there is one. Raises CheckpointError if it is corrupt."""
        if not self.checkpoint_path.exists():
            return False
        ck = load_checkpoint(self.checkpoint_path, map_location=self.device)
        self.model.load_state_dict(ck["model"])
        self.optimizer.load_state_dict(ck["optimizer"])
        self.scheduler.load_state_dict(ck["scheduler"])
        self.regime.load_state_dict(ck["regime"])
        self.step, self.history, self.status = ck["step"], ck["history"], ck["status"]
        self._saved_step = self.step
        self.tokens_seen = ck.get("tokens_seen", 0)
        self.env_steps = ck.get("env_steps", 0)
        torch.set_rng_state(ck["torch_rng"].cpu())
        return True

    # -------------------------------------------------------------- the loop
    def _log(self, row: dict):
        # plain Python numbers only: the history goes into the checkpoint, which loads with weights_only=True
        row = {k: v.item() if isinstance(v, (np.generic, torch.Tensor)) else v for k, v in row.items()}
        self.history.append(row)
        if self.tracker is not None:
            self.tracker.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])

    def _run_eval(self, final: bool = False):
        if self.evaluate is None:
            return
        self._read_counts()
        self.model.eval()
        evaluation = self.evaluate(self.model, self.step, final)
        self.model.train()
        if final:
            self.final_rows = evaluation.rows
        extra = {"perf/env_steps_seen": self.env_steps} if self.env_steps else {}
        self._log({"step": self.step, "perf/tokens_seen": self.tokens_seen, **extra, **evaluation.metrics})

    def _collapse(self, reason: str):
        self.status = {"status": "collapsed", "step": self.step, "reason": reason}

    def _apply(self, update: Update, bar) -> None:
        """One optimizer step on `update`; logs, evaluates, and marks the run collapsed where it must end."""
        c, loss, metrics = self.cfg, update.loss, update.metrics
        if not self.deferred_check and not torch.isfinite(loss):
            self._collapse(f"non-finite loss ({float(loss.detach())}) at step {self.step}")
            return
        self.optimizer.zero_grad(set_to_none=True)
        self.skip_nonfinite.scale(loss).backward()
        self.skip_nonfinite.unscale_(self.optimizer)
        gnorm = (torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
                 if c.grad_clip > 0 else torch.zeros((), device=self.device))
        if self.deferred_check:  # on the device: remember the first non-finite step (its update is skipped)
            bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(gnorm))
            self.first_bad_step = torch.where(bad & (self.first_bad_step < 0), self.step, self.first_bad_step)
        elif not torch.isfinite(gnorm):
            self._collapse(f"non-finite gradient norm at step {self.step}")
            return
        self.skip_nonfinite.step(self.optimizer)
        self.skip_nonfinite.update()
        self.scheduler.step()
        self.step += 1
        self._unread = [self._unread[0] + update.tokens, self._unread[1] + update.env_steps]
        if bar is not None:
            bar.update(1)
        if self.step % c.log_every == 0 or self.step == c.max_steps:
            self._log_step(loss, gnorm, metrics, bar)
        if self.status["status"] == "running" and c.eval_every and self.step % c.eval_every == 0 \
                and self.step < c.max_steps:
            self._run_eval()

    def _log_step(self, loss: torch.Tensor, gnorm: torch.Tensor, metrics: dict, bar) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - self._t_last
        self._read_counts()
        (tokens_since, env_since), self._since_log = self._since_log, [0, 0]
        row = {"step": self.step, "train/loss": float(loss.detach()), "train/grad_norm": float(gnorm),
               "train/lr": self.scheduler.get_last_lr()[0],
               **{k if "/" in k else f"train/{k}": float(v) for k, v in metrics.items()},
               "perf/tokens_per_s": tokens_since / max(dt, 1e-9), "perf/tokens_seen": self.tokens_seen}
        if self.env_steps:
            row.update({"perf/env_steps_per_s": env_since / max(dt, 1e-9), "perf/env_steps_seen": self.env_steps})
        self._log(row)
        log.info(f"step {self.step}/{self.cfg.max_steps}: " + ", ".join(
            f"{k.split('/', 1)[-1]} {v:.4g}" for k, v in row.items() if k in LOGGED_LINE))
        if bar is not None:
            bar.set_postfix(loss=f"{float(loss.detach()):.4f}")
        self._t_last = time.perf_counter()
        if self.deferred_check and int(self.first_bad_step) >= 0:  # synced here, once per log_every steps
            bad_step = int(self.first_bad_step)
            self.status = {"status": "collapsed", "step": bad_step,
                           "reason": f"non-finite loss or gradient norm at step {bad_step} (an update "
                                     f"with non-finite gradients is skipped; seen at step {self.step})"}
            return
        reason = self.regime.collapsed(metrics)
        if reason:
            self._collapse(f"{reason} at step {self.step}")

    def fit(self, stop_after: int | None = None) -> dict:
        """Train to cfg.max_steps (resuming from a checkpoint if present). `stop_after` ends the call
        after that many optimizer steps without a final checkpoint (a simulated kill, for tests)."""
        c = self.cfg
        self.resume()
        if run_is_done(self.status, self.step, c.max_steps):
            return self.status
        if self.status["status"] == "finished":  # a larger budget: train on
            self.status = {"status": "running", "step": self.step, "reason": ""}
        self.model.train()
        bar = None
        if c.progress:
            from tqdm.auto import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            bar = tqdm(total=c.max_steps, initial=self.step, desc=self.regime.name,
                       dynamic_ncols=True, leave=False)
            with logging_redirect_tqdm():  # the step lines print above the bar, not through it
                return self._fit_loop(bar, stop_after)
        return self._fit_loop(bar, stop_after)

    def _fit_loop(self, bar, stop_after: int | None) -> dict:
        c = self.cfg
        self._t_last, steps_done = time.perf_counter(), 0
        while self.step < c.max_steps and self.status["status"] == "running":
            # one call of the regime: its updates (an RL regime's epochs x minibatches on one rollout) all
            # draw from the generator of the step they start at
            updates = self.regime.updates(self.forward_model, self.step, step_generator(c.seed, self.step, self.device))
            while self.step < c.max_steps and self.status["status"] == "running":
                with autocast_for(self.device):
                    update = next(updates, None)
                if update is None:
                    break
                self._apply(update, bar)
                steps_done += 1
                if stop_after is not None and steps_done >= stop_after:
                    if bar is not None:
                        bar.close()
                    return {"status": "interrupted", "step": self.step, "reason": "stop_after"}
            # between two calls (no rollout in flight, so none to keep): checkpoint, stop on a signal
            if self.status["status"] != "running":
                break
            crossed = c.ckpt_every and self.step // c.ckpt_every > self._saved_step // c.ckpt_every
            if crossed and self.step < c.max_steps:
                self.save()
            if STOP.is_set():  # a signal: keep what was trained, resumable from here
                if bar is not None:
                    bar.close()
                self.save()
                return {"status": "interrupted", "step": self.step, "reason": "stopped by a signal"}
        if bar is not None:
            bar.close()
        if self.status["status"] == "running":
            self.status = {"status": "finished", "step": self.step, "reason": ""}
            self._run_eval(final=True)
        self.save()
        if self.tracker is not None:
            self.tracker.summary({"status": self.status["status"], "status/step": self.status["step"],
                                  "status/reason": self.status["reason"]})
        return self.status

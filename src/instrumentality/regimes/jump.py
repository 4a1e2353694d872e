"""Regime 7: a jump predictor, one forward pass for k tokens of the world's time (experiment F11).

The student reads the strided sequence z_j = x_{jk} and is trained with next-token cross-entropy on it,

    L = - mean_j log J(z_{j+1} | z_<=j),            z_j = x_{jk}

so its output at z_j is a distribution over x_{(j+1)k}: the k - 1 tokens between are never shown. Where the
sequences x come from is the route (docs/design.md section 10):

    direct     x is the teacher's own text: the world's (teacher truth) or the rollouts of a
               checkpoint (teacher policy, the F2 critic's policy), subsampled at stride k
    distilled  x is the rollouts of the stage k/2 student on its own strided sequence, every second token
               kept: stage k/2 applied twice. The chain starts at the direct stride-1 student of the
               same teacher, so its errors compound from stage to stage

Every route trains on a fixed corpus drawn once in setup (`corpus` sequences, `corpus_seed`), so routes see
the same amount of data. The student never sees a reward: it predicts what its teacher's text does.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from instrumentality.errors import ConfigError
from instrumentality.files import write_atomic
from instrumentality.model import device_of
from instrumentality.regimes.base import (
    JUMP_PROBES,
    POSITIVE,
    RegimeBase,
    Update,
    check_settings,
    cpu_generator,
    one_of,
)
from instrumentality.world import World
from instrumentality.world.jump import strided

GENERATION_BATCH = 2048  # teacher sequences sampled at once when the corpus is drawn


@dataclass
class JumpSettings:
    stride: int = field(default=1, metadata=POSITIVE)  # k: world tokens per jump
    teacher: str = field(default="truth", metadata=one_of("truth", "policy"))  # whose text the chain learns
    route: str = field(default="direct", metadata=one_of("direct", "distilled"))
    # the checkpoint whose rollouts are the data (None: world samples, the truth's direct route)
    source: str | None = None
    corpus: int = field(default=16384, metadata=POSITIVE)  # teacher sequences, drawn once
    corpus_seed: int = 0
    # folder a checkpoint teacher's rollouts are kept in (None: not kept), keyed by the checkpoint's sha256 and
    # everything else they depend on: the arms that subsample one teacher's text (direct k = 1, 2, 4, 8) draw it once
    corpus_cache: str | None = None
    batch_size: int = field(default=64, metadata=POSITIVE)  # sequences per step at stride 1; stride k: k times as many

    def __post_init__(self):
        check_settings(self)
        world_text = self.teacher == "truth" and self.route == "direct"
        if world_text and self.source is not None:
            raise ConfigError("regime.source must be null for teacher=truth, route=direct (the student reads "
                              f"world samples); got {self.source!r}")
        if not world_text and not self.source:
            raise ConfigError(f"regime.source: teacher={self.teacher}, route={self.route} learns from a "
                              "checkpoint's rollouts; name it (experiment F11 does)")


def checkpoint_stride(run_config: dict) -> int:
    """The stride of the model a checkpoint holds: a jump student's, else 1 (a next-token model)."""
    regime = run_config.get("regime") or {}
    return int(regime.get("stride", 1)) if regime.get("name") == "jump" else 1


def load_teacher(path: str, world: World):
    """A finished run's model and stride, refused (ConfigError) if the run is missing, unfinished, of another
    world, or of another vocabulary."""
    from instrumentality.training.checkpoint import load_start, model_from_checkpoint

    ck = load_start(path, "regime.source", world)
    model = model_from_checkpoint(ck)
    if model.cfg.vocab_size != world.vocab_size:
        raise ConfigError(f"regime.source: {path} has a vocabulary of {model.cfg.vocab_size} tokens, the world "
                          f"{world.vocab_size}: a jump teacher must be a model of world text")
    return model, checkpoint_stride(ck["run_config"])


@torch.no_grad()
def teacher_corpus(world: World, s: JumpSettings, device: torch.device | str = "cpu") -> torch.Tensor:
    """The student's training sequences [corpus, ceil(seq_len / k)] on the CPU, strided, drawn once from
    corpus_seed (a checkpoint teacher samples on `device`)."""
    if s.source is None:
        world_gen = torch.Generator().manual_seed(s.corpus_seed)
        return strided(world.sample(s.corpus, world.cfg.seq_len, generator=world_gen), s.stride)
    from instrumentality.training.checkpoint import checkpoint_digest

    model, teacher_stride = load_teacher(s.source, world)
    if s.stride % teacher_stride:
        raise ConfigError(f"regime.stride={s.stride} is not a multiple of the teacher's stride {teacher_stride} "
                          f"({s.source})")
    length = math.ceil(world.cfg.seq_len / teacher_stride)  # the teacher's own strided sequence
    path = None
    if s.corpus_cache:
        key = json.dumps([checkpoint_digest(s.source), s.corpus, s.corpus_seed, length, GENERATION_BATCH,
                          torch.device(device).type])
        path = Path(s.corpus_cache) / f"{hashlib.sha256(key.encode()).hexdigest()[:16]}.pt"
        rollouts = cached_rollouts(path, (s.corpus, length))
        if rollouts is not None:
            return rollouts[:, ::s.stride // teacher_stride]
    model = model.to(device)
    gen = torch.Generator(device=device).manual_seed(s.corpus_seed)
    out = []
    for start in range(0, s.corpus, GENERATION_BATCH):
        n = min(GENERATION_BATCH, s.corpus - start)
        prompt = torch.full((n, 1), world.bos, dtype=torch.long, device=device)
        tokens, _ = model.generate(prompt, length - 1, generator=gen)
        out.append(torch.cat([prompt, tokens], 1).cpu())
    rollouts = torch.cat(out)
    if path is not None:
        buf = io.BytesIO()
        torch.save(rollouts, buf)
        write_atomic(path, buf.getvalue())
    return rollouts[:, ::s.stride // teacher_stride]


def cached_rollouts(path: Path, shape: tuple[int, int]) -> torch.Tensor | None:
    """A teacher's stored rollouts, or None (with a warning where the file is there but damaged: drawn again)."""
    if not path.exists():
        return None
    try:
        rollouts = torch.load(path, weights_only=True)
        if isinstance(rollouts, torch.Tensor) and tuple(rollouts.shape) == shape and rollouts.dtype == torch.long:
            return rollouts
        raise ValueError(f"not a tensor of {shape[0]} x {shape[1]} tokens")
    except Exception as e:  # noqa: BLE001 - a cache: a damaged one is drawn again
        print(f"warning: jump corpus cache {path} cannot be read ({type(e).__name__}: "
              f"{str(e).splitlines()[0] if str(e) else ''}); drawing it again", file=sys.stderr)
        return None


class Jump(RegimeBase):
    """Next-token cross-entropy on strided sequences of a fixed corpus (module docstring):

        L = - mean_j log J(z_{j+1} | z_<=j)
    A step reads batch_size * stride sequences, so every stride sees about as many targets per step."""

    name = "jump"
    Settings = JumpSettings

    def __init__(self, world: World, settings: JumpSettings):
        self.world, self.settings = world, settings
        if settings.stride >= world.cfg.seq_len:
            raise ConfigError(f"regime.stride={settings.stride} leaves no target in a world sequence of "
                              f"world.seq_len={world.cfg.seq_len} tokens")
        self.corpus: torch.Tensor | None = None

    def setup(self, model, device):
        self.corpus = teacher_corpus(self.world, self.settings, device)

    def probe_families(self) -> tuple[str, ...]:
        return (JUMP_PROBES,)

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        assert self.corpus is not None, "setup() draws the corpus"
        B = self.settings.batch_size * self.settings.stride
        rows = torch.randint(len(self.corpus), (B,), generator=cpu_generator(gen))
        z = self.corpus[rows].to(device_of(model))
        nll = F.cross_entropy(model(z[:, :-1])["logits"].flatten(0, 1).float(), z[:, 1:].flatten())
        yield Update(nll, {"nll": nll.detach()}, z[:, 1:].numel())

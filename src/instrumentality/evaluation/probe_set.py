"""The common probe set: frozen, versioned, generated deterministically from the world.

Families (docs/design.md section 4):
  calibration  held-out world sequences; every position is an item, with exact p*
  forks        prompts ending at a fork marker (every fork, asymmetric and symmetric), at a few positions
  rollouts     the asymmetric-fork prompts, continued free-running for `rollout_len` tokens by the model
  lookahead    probe-train and probe-test sequences; the target of position t is the true token x_{t+k}

A probe set is saved as `manifest.json` (version, world config and fingerprint, sizes, content hash)
plus `probes.pt` (the tensors). Loading checks the content hash and the world.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from instrumentality.errors import ConfigError, DataFileError, check_dataclass_types
from instrumentality.files import read_json, write_atomic, write_json
from instrumentality.world import World

PROBE_VERSION = 1


class ProbeSetMismatch(ValueError):
    """The probe set does not belong to this world, or its contents were altered."""


@dataclass
class ProbeConfig:
    n_calibration: int = 256  # sequences
    fork_positions: list[int] = field(default_factory=lambda: [8, 24, 40])  # prompt length before the marker
    n_per_fork_position: int = 32
    rollout_len: int = 8
    n_lookahead_train: int = 256  # sequences
    n_lookahead_test: int = 128
    lookahead_k: int = 4
    seed: int = 1234  # the probe set's own stream (with the world seed)

    def __post_init__(self):
        check_dataclass_types(self, "eval.probes")
        self.fork_positions = [int(p) for p in self.fork_positions]
        for key in ("n_calibration", "n_per_fork_position", "rollout_len", "n_lookahead_train",
                    "n_lookahead_test", "lookahead_k"):
            if getattr(self, key) < 1:
                raise ConfigError(f"eval.probes.{key} must be a positive integer; got {getattr(self, key)!r}")
        if not self.fork_positions or min(self.fork_positions) < 1:
            raise ConfigError(f"eval.probes.fork_positions must be positive integers; got {self.fork_positions}")


class ProbeSet:
    def __init__(self, tensors: dict[str, torch.Tensor], manifest: dict):
        self.t = tensors
        self.manifest = manifest

    # ------------------------------------------------------------------ generation
    @classmethod
    def generate(cls, world: World, cfg: ProbeConfig | None = None) -> ProbeSet:
        cfg = cfg or ProbeConfig()
        world.check_fork_rollout_fits(cfg.fork_positions, cfg.rollout_len, "probes (eval.probes.fork_positions and "
                                      "rollout_len)")
        g = torch.Generator().manual_seed(cfg.seed * 1_000_033 + world.cfg.seed)
        t = {"calibration": world.sample(cfg.n_calibration, generator=g)}

        # fork prompts: a prose prefix of length P, then the marker (World.fork_contexts: as in training)
        prompts, fork_idx, positions = [], [], []
        for P in cfg.fork_positions:
            forks = torch.arange(len(world.forks)).repeat_interleave(cfg.n_per_fork_position)
            prompts.append(world.fork_contexts(forks, P, g, batch=4 * len(forks)))
            fork_idx += forks.tolist()
            positions += [P] * len(forks)
        width = max(cfg.fork_positions) + 1
        t["fork_prompts"] = torch.stack([torch.nn.functional.pad(p, (0, width - p.shape[-1]))
                                         for pr in prompts for p in pr])
        t["fork_lengths"] = torch.tensor(positions) + 1
        t["fork_index"] = torch.tensor(fork_idx)
        t["lookahead_train"] = world.sample(cfg.n_lookahead_train, generator=g)
        t["lookahead_test"] = world.sample(cfg.n_lookahead_test, generator=g)
        manifest = {"version": PROBE_VERSION, "world": world.config_dict(), "world_fingerprint": world.fingerprint(),
                    "config": asdict(cfg), "sizes": {k: list(v.shape) for k, v in t.items()},
                    "content_hash": content_hash(t)}
        return cls(t, manifest)

    # ------------------------------------------------------------------ storage
    def save(self, folder: str | Path) -> Path:
        folder = Path(folder)
        buf = io.BytesIO()
        torch.save(self.t, buf)
        write_atomic(folder / "probes.pt", buf.getvalue())
        write_json(folder / "manifest.json", self.manifest)  # last: a folder with a manifest is complete
        return folder

    @classmethod
    def load(cls, folder: str | Path, world: World | None = None) -> ProbeSet:
        folder = Path(folder)
        manifest = read_json(folder / "manifest.json", "probe set manifest", dict)
        try:
            tensors = torch.load(folder / "probes.pt", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure to read is a damaged file
            raise ProbeSetMismatch(f"probe set {folder}: probes.pt cannot be read ({type(e).__name__}: "
                                   f"{str(e).splitlines()[0] if str(e) else ''}); regenerate it") from e
        if not isinstance(manifest, dict) or "content_hash" not in manifest:
            raise ProbeSetMismatch(f"probe set {folder}: manifest.json has no content_hash; regenerate it")
        if content_hash(tensors) != manifest["content_hash"]:
            raise ProbeSetMismatch(f"probe set {folder}: contents do not match the manifest's content hash "
                                   f"{manifest['content_hash']}; regenerate it")
        ps = cls(tensors, manifest)
        if world is not None:
            ps.check_world(world)
        return ps

    def check_world(self, world: World):
        if self.manifest["world_fingerprint"] != world.fingerprint():
            raise ProbeSetMismatch(
                f"probe set was generated for world {self.manifest['world_fingerprint']} "
                f"(seed {self.manifest['world']['seed']}), but the model's world is {world.fingerprint()} "
                f"(seed {world.cfg.seed}); generate the probe set for this world")

    @property
    def config(self) -> ProbeConfig:
        return ProbeConfig(**self.manifest["config"])

    @property
    def hash(self) -> str:
        return self.manifest["content_hash"]


def content_hash(tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for k in sorted(tensors):
        h.update(k.encode())
        h.update(str(tuple(tensors[k].shape)).encode())
        h.update(tensors[k].contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def probe_set_for(world: World, cfg: ProbeConfig | None = None, cache_dir: str | Path | None = None) -> ProbeSet:
    """The probe set of a world: loaded from `cache_dir/<fingerprint>-<hash of cfg>` or generated and saved."""
    cfg = cfg or ProbeConfig()
    if cache_dir is None:
        return ProbeSet.generate(world, cfg)
    tag = hashlib.sha256(json.dumps(asdict(cfg), sort_keys=True).encode()).hexdigest()[:8]
    folder = Path(cache_dir) / f"{world.fingerprint()}-{tag}"
    if (folder / "manifest.json").exists():
        try:
            return ProbeSet.load(folder, world)
        except (ProbeSetMismatch, DataFileError) as e:  # a cache: a damaged one is made again
            print(f"warning: {e}; generating the probe set again in {folder}", file=sys.stderr)
    ps = ProbeSet.generate(world, cfg)
    ps.save(folder)
    return ps

"""What every regime is to the shared trainer: the `Regime` protocol, and `Update`, one optimizer step's
worth of loss; and the checks of a regime's settings.

The trainer calls, in this order:
    regime.setup(model, device)                      once, before the optimizer is built
    for update in regime.updates(model, step, gen):  one optimizer step per update; an RL regime yields
        ...                                          epochs x minibatches updates per rollout
    regime.collapsed(metrics)                        at logging steps: a reason to end the run, or None
    regime.state_dict() / load_state_dict(state)     what a checkpoint keeps beside the weights
and the evaluation asks each regime which probe families score it and for its exact theory rows.

A regime's settings are a dataclass beside it (e.g. CriticSettings), the one place their types and defaults
are written; a field may declare a check in its metadata, e.g. `field(default=8, metadata=POSITIVE)`, and
check_settings, called by the dataclass's __post_init__, runs them. Hydra's regime/<name>_settings node
holds the defaults (regimes/__init__.py) and configs/regime/<name>.yaml starts from it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from instrumentality.errors import ConfigError, check_dataclass_types
from instrumentality.world import World

# The probe families a regime's model is scored on (evaluation/__init__.py maps each to its evaluator): the
# world probes (calibration, forks, rollouts, look-ahead) for a model of world text, the quest probes for a
# model that plays ClueQuest, the prophecy probes (its forecast at each marker) for an F9 forecaster, the
# jump probes (exact k-step targets, forks, the tokens jumped over) for an F11 jump predictor.
WORLD_PROBES, QUEST_PROBES, PROPHECY_PROBES, JUMP_PROBES = "world", "quest", "prophecy", "jump"


@dataclass
class Update:
    """One optimizer step: the loss to descend, what to log, and how much data it consumed. tokens and
    env_steps may be ints or device tensors (the trainer reads them only when it logs)."""

    loss: torch.Tensor
    metrics: dict = field(default_factory=dict)
    tokens: int | torch.Tensor = 0
    env_steps: int | torch.Tensor = 0


@runtime_checkable
class Regime(Protocol):
    name: str

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        """Load what the regime starts from (a reference model, an initialisation, a value head)."""

    def updates(self, model: torch.nn.Module, step: int, gen: torch.Generator) -> Iterator[Update]:
        """The optimizer steps that start at trainer step `step`; all randomness from `gen`."""

    def collapsed(self, metrics: dict) -> str | None:
        """Why training should stop now (e.g. the policy's entropy collapsed), or None."""

    def state_dict(self) -> dict:
        """Plain data a checkpoint keeps (read back with load_state_dict on resume)."""

    def load_state_dict(self, state: dict) -> None: ...

    def probe_families(self) -> tuple[str, ...]:
        """WORLD_PROBES and/or QUEST_PROBES."""

    def theory_rows(self) -> list[dict]:
        """Exact values the learned ones are compared with (rows of the results table), or none."""


class RegimeBase:
    """Defaults for the protocol's optional parts: no setup, no state, never collapsed, no theory."""

    name = "regime"
    world: World

    def setup(self, model: torch.nn.Module, device: torch.device) -> None:
        return None

    def collapsed(self, metrics: dict) -> str | None:
        return None

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    def probe_families(self) -> tuple[str, ...]:
        return (WORLD_PROBES,)

    def theory_rows(self) -> list[dict]:
        return []


class EntropyCollapse:
    """Ends a run (status `collapsed`) when the logged policy entropy falls below settings.collapse_entropy."""

    settings: Any  # the regime's settings, with a collapse_entropy field

    def collapsed(self, metrics: dict) -> str | None:
        h, bound = float(metrics["entropy"]), self.settings.collapse_entropy
        return f"policy entropy {h:.4f} below {bound}" if h < bound else None


# ---------------------------------------------------------------------------- settings
def check(test: Callable[[Any], bool], allowed: str) -> dict:
    """Metadata of a settings field: a test its value must pass, and the words for what is allowed."""
    return {"check": (test, allowed)}


POSITIVE = check(lambda v: v > 0, "a positive integer")


def in_range(low: float, high: float) -> dict:
    return check(lambda v: low <= v <= high, f"in [{low}, {high}]")


def one_of(*choices: str) -> dict:
    return check(lambda v: v in choices, f"one of: {', '.join(choices)}")


def check_settings(settings, group: str = "regime") -> None:
    """For a settings dataclass's __post_init__: every value has its annotated type, then passes its field's
    check; the first failure raises ConfigError naming `group.key`."""
    check_dataclass_types(settings, group)
    for f in dataclasses.fields(settings):
        if "check" in f.metadata:
            test, allowed = f.metadata["check"]
            value = getattr(settings, f.name)
            if not test(value):
                raise ConfigError(f"{group}.{f.name} must be {allowed}; got {value!r}")


def defaults(settings_class) -> dict:
    """Every setting of a settings dataclass at its default, as plain data (a Hydra config node)."""
    out = {}
    for f in dataclasses.fields(settings_class):
        out[f.name] = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    return out


def cpu_generator(gen: torch.Generator) -> torch.Generator:
    """World sampling runs on the CPU. On another device, a CPU generator with the device generator's seed
    (the trainer seeds one per step): no draw on the device, so no host sync. Call it once per step."""
    if gen.device.type == "cpu":
        return gen
    return torch.Generator().manual_seed(gen.initial_seed())

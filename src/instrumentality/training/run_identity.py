"""A run folder's identity: which config it was trained with, and who is training it now.

A run folder holds one run. Resuming it with another config would continue the old weights under a new
name, so a run refuses to start in a folder whose checkpoint was trained with a config that differs in
anything but the budget keys (configs.BUDGET_KEYS: how long to train, how often to log, evaluate and checkpoint, where
files live). While a process trains in a folder it holds the folder's lock, so a second process (a second
sweep, a rerun while the first is still going) is refused instead of training the same folder twice.
"""

from __future__ import annotations

from instrumentality.configs import BUDGET_KEYS, IDENTITY_KEYS, flatten
from instrumentality.errors import ConfigError, check_name


def regime_at_defaults(regime: dict) -> dict:
    """A resolved regime config with every setting of its regime's settings dataclass that it lacks (one
    added since the run was trained) at its default: the run was trained as that default trains."""
    from hydra.utils import get_object

    from instrumentality.regimes.base import defaults
    from instrumentality.training.build import target

    try:
        cls = get_object(target(regime["_target_"]))
    except Exception:  # an unknown class: compared as it is
        return regime
    settings = getattr(cls, "Settings", None)
    return {**defaults(settings), **regime} if settings is not None else regime


def identity(config: dict) -> dict:
    """The flat identity of a resolved run config: IDENTITY_KEYS less BUDGET_KEYS, with paths under the
    config's runs_root written relative to it (a moved runs folder is the same run), and regime settings
    it lacks at their defaults."""
    root = str(config.get("runs_root", "")).rstrip("/")
    config = dict(config)
    if isinstance(config.get("regime"), dict) and "_target_" in config["regime"]:
        config["regime"] = regime_at_defaults(config["regime"])
    flat = flatten({k: config.get(k) for k in IDENTITY_KEYS})
    out = {}
    for key, value in flat.items():
        if key in BUDGET_KEYS or key.endswith("._target_"):
            continue
        if root and isinstance(value, str) and value.startswith(root + "/"):
            value = "<runs_root>" + value[len(root):]
        out[key] = value
    return out


def config_differences(old: dict, new: dict) -> list[str]:
    """'key old -> new' for every identity key whose value differs between two resolved run configs."""
    a, b = identity(old), identity(new)
    return [f"{k} {a.get(k, '(unset)')!r} -> {b.get(k, '(unset)')!r}" for k in sorted(set(a) | set(b))
            if a.get(k, "(unset)") != b.get(k, "(unset)")]


class FolderConflict(ConfigError):
    """The run folder holds another run, or another process is training it: nothing there is touched."""


def check_same_run(old: dict, new: dict, folder) -> None:
    """Raise ConfigError (one line, naming the differing keys) if `new` is not the run trained in `folder`."""
    diffs = config_differences(old, new)
    if diffs:
        raise FolderConflict(f"run folder {folder} holds a run trained with another config ({'; '.join(diffs)}); "
                          "give this run its own folder (run_name=... or exp_name=...) or delete that folder to "
                          "start over")


def check_run_names(cfg) -> None:
    """exp_name and run_name each become one folder under runs_root: no path separators, no '..'."""
    for key in ("exp_name", "run_name"):
        check_name(cfg.get(key), key)


__all__ = ["ConfigError", "FolderConflict", "check_run_names", "check_same_run", "config_differences", "identity"]

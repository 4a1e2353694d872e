"""World, model and regime from a run's config: the one place configs become objects (training builds a
run with it, evaluation rebuilds a finished run's world, model and regime from its checkpoint's config)."""

from __future__ import annotations

from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import get_object, instantiate
from omegaconf import DictConfig, OmegaConf

from instrumentality.envs.tokens import quest_tokens
from instrumentality.errors import ConfigError, check_types
from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import Regime
from instrumentality.world import World


def plain(node) -> dict[str, Any]:
    """A config node (DictConfig, resolved) or a mapping as a plain dict."""
    if isinstance(node, DictConfig):
        out = OmegaConf.to_container(node, resolve=True)
        assert isinstance(out, dict)
        return {str(k): v for k, v in out.items()}
    return dict(node)


# Classes that were renamed or moved, for the configs kept in older checkpoints
RENAMED_TARGETS = {"instrumentality.regimes.Critic": "instrumentality.regimes.CriticRegime",
                   "instrumentality.trainer.TrainerConfig": "instrumentality.training.trainer.TrainerConfig"}


def target(name: str) -> str:
    """A config's `_target_` as this code names it (an older checkpoint's config may name a class that moved)."""
    return RENAMED_TARGETS.get(name, name)


def make(node, group: str, **kwargs):
    """hydra.utils.instantiate of one config group, with every value's type checked against its target
    first; a bad value raises ConfigError naming `group.key`."""
    values = plain(node)
    values.pop("name", None)
    values["_target_"] = target(values["_target_"])
    check_types(get_object(values["_target_"]), {**values, **kwargs}, group)
    try:
        return instantiate(values, **kwargs, _convert_="all")
    except InstantiationException as e:
        if isinstance(e.__cause__, ConfigError):
            raise e.__cause__ from None
        raise


def model_config(cfg, world: World) -> GPTConfig:
    """The model's config: quest tokens follow the world's, and the context then holds a whole episode."""
    quest = cfg.get("quest")
    tokens = quest_tokens(plain(quest) if quest is not None else None, world.vocab_size)
    if tokens is None:
        return make(cfg["model"], "model", vocab_size=world.vocab_size)
    return make(cfg["model"], "model", vocab_size=world.vocab_size + tokens.size,
                block_size=max(cfg["model"]["block_size"], tokens.max_seq_len))


def build_world(cfg) -> World:
    return World(make(cfg["world"], "world"))




def build_regime(cfg, world: World) -> Regime:
    """The regime class `regime._target_` with its settings dataclass (cls.Settings) built from the other
    keys but `name`; an unknown key or a bad value raises ConfigError naming `regime.key`."""
    values = plain(cfg["regime"])
    name, _ = values.pop("_target_"), values.pop("name", None)
    cls = get_object(target(name))
    if "prompt_lengths" in values:  # older critic configs: prompt lengths L with the marker last (P = L - 1)
        values["fork_positions"] = [int(n) - 1 for n in values.pop("prompt_lengths")]
    check_types(cls.Settings, values, "regime")
    return cls(world, cls.Settings(**values))


def build(cfg, seed_everything=None) -> tuple[World, GPT, Regime]:
    """World, model and regime from a composed config (a DictConfig or the resolved dict a checkpoint
    keeps). Raises ConfigError on an invalid value. `seed_everything(seed)` runs before the model's
    weights are drawn."""
    world = build_world(cfg)
    model_cfg = model_config(cfg, world)
    if seed_everything is not None:
        seed_everything(cfg["seed"])
    return world, GPT(model_cfg), build_regime(cfg, world)

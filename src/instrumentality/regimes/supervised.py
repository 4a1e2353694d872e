"""Regime 1: next-token supervised learning on world text (and, for the quest simulator, on transcripts)."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from instrumentality.errors import ConfigError
from instrumentality.model import device_of
from instrumentality.regimes.base import (
    POSITIVE,
    QUEST_PROBES,
    WORLD_PROBES,
    RegimeBase,
    Update,
    check_settings,
    cpu_generator,
    in_range,
    one_of,
)
from instrumentality.world import World


@dataclass
class SupervisedSettings:
    batch_size: int = field(default=64, metadata=POSITIVE)  # sequences per step (configs: the run's batch_size)
    quest: dict | None = None  # the quest env whose explorer transcripts join the corpus (when quest_fraction > 0)
    quest_fraction: float = field(default=0.0, metadata=in_range(0, 1))  # share of each batch that is transcripts
    quest_corpus: int = field(default=4096, metadata=POSITIVE)  # episodes in the transcript corpus
    quest_teacher: str = field(default="explorer", metadata=one_of("explorer", "planner"))  # whose episodes
    corpus_seed: int = 0  # one transcript corpus for every seed (seeds differ in init and batches)
    corpus_cache: str | None = None  # folder the transcript corpus is cached in (None: not cached)
    # weight of the future heads' loss (a model with model.n_future_heads > 0; multi-token prediction)
    future_weight: float = field(default=1.0, metadata=in_range(0, 100))

    def __post_init__(self):
        check_settings(self)
        if self.quest_fraction > 0 and self.quest is None:
            raise ConfigError("regime.quest_fraction > 0 needs a quest env: add +quest=small on the command line "
                              "(or run experiment=F4 / F4_simulator)")


def future_heads_loss(future_logits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Multi-token prediction (Gloeckle et al. 2024): future head j (j = 0 .. n-1) at position t predicts
    x_{t+2+j}, so its loss is - mean_t log q_j(x_{t+2+j} | x_<=t), averaged over the heads.
    future_logits [n, B, T, V] from the inputs x[:, :T]; x [B, T + 1] (the inputs and the next token)."""
    n, T = future_logits.shape[0], future_logits.shape[2]
    losses = [F.cross_entropy(future_logits[j, :, :T - 1 - j].flatten(0, 1).float(), x[:, 2 + j:].flatten())
              for j in range(n)]
    return torch.stack(losses).mean()


class Supervised(RegimeBase):
    """Teacher-forced cross-entropy on world text:

        L = - mean_t log pi(x_t | x_<t)
    A model with future heads (model.n_future_heads = n) adds future_weight times their loss
    (future_heads_loss: head j predicts x_{t+2+j}); the next-token head's loss is logged as nll either way.
    With quest_fraction > 0, that share of each batch is quest transcripts (the explorer's episodes,
    envs/tokens.py) instead of world text, and L is the row-weighted mean of the two (pads excluded):
    the model becomes a simulator of the explorer (or of the planner: quest_teacher).
    """

    name = "supervised"
    Settings = SupervisedSettings

    def __init__(self, world: World, settings: SupervisedSettings):
        self.world, self.settings = world, settings
        self.n_quest = round(settings.quest_fraction * settings.batch_size)  # transcript rows of each batch
        self.corpus = None

    def setup(self, model, device):
        s = self.settings
        if self.n_quest:  # the explorer's transcripts (cached on disk: the same corpus for every seed)
            from instrumentality.envs.tokens import QuestCorpus, quest_tokens

            self.corpus = QuestCorpus(quest_tokens(s.quest, self.world.vocab_size), s.quest_corpus,
                                      seed=s.corpus_seed, cache=s.corpus_cache, teacher=s.quest_teacher)

    def probe_families(self) -> tuple[str, ...]:
        return (((WORLD_PROBES,) if self.n_quest < self.settings.batch_size else ())
                + ((QUEST_PROBES,) if self.settings.quest is not None else ()))

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        B = self.settings.batch_size
        device, n_world, cpu_gen = device_of(model), B - self.n_quest, cpu_generator(gen)
        loss, metrics, n_tokens = torch.zeros((), device=device), {}, 0
        if n_world:
            x = self.world.sample(n_world, self.world.cfg.seq_len, generator=cpu_gen).to(device)
            out = model(x[:, :-1])
            nll = F.cross_entropy(out["logits"].flatten(0, 1).float(), x[:, 1:].flatten())
            loss, metrics["nll"], n_tokens = nll * n_world / B, nll.detach(), x[:, 1:].numel()
            if "future_logits" in out:
                future = future_heads_loss(out["future_logits"], x)
                loss, metrics["future_nll"] = loss + self.settings.future_weight * future * n_world / B, future.detach()
        if self.n_quest:
            assert self.corpus is not None, "setup() builds the transcript corpus"
            x = self.corpus.sample(self.n_quest, cpu_gen)
            n_tokens += int((x[:, 1:] != self.corpus.tokens.pad).sum())  # counted on the CPU: no device sync
            x = x.to(device)
            nll = F.cross_entropy(model(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten(),
                                  ignore_index=self.corpus.tokens.pad)
            loss = loss + nll * self.n_quest / B
            metrics["quest_nll"] = nll.detach()
        yield Update(loss, metrics, n_tokens)

"""Regime 1: next-token supervised learning on world text (and, for the quest simulator, on transcripts)."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from instrumentality.model import device_of
from instrumentality.regimes.base import QUEST_PROBES, WORLD_PROBES, RegimeBase, Update, cpu_generator, positive
from instrumentality.world import ConfigError, World


class Supervised(RegimeBase):
    """Teacher-forced cross-entropy on world text:

        L = - mean_t log pi(x_t | x_<t)
    With quest_fraction > 0, that share of each batch is quest transcripts (the explorer's episodes,
    envs/tokens.py) instead of world text, and L is the row-weighted mean of the two (pads excluded):
    the model becomes a simulator of the explorer.
    """

    name = "supervised"

    def __init__(self, world: World, batch_size: int = 64, seq_len: int | None = None, quest: dict | None = None,
                 quest_fraction: float = 0.0, quest_corpus: int = 4096, corpus_seed: int = 0,
                 corpus_cache: str | None = None):
        positive("regime.batch_size", batch_size)
        if not 0.0 <= quest_fraction <= 1.0:
            raise ConfigError(f"regime.quest_fraction must be in [0, 1]; got {quest_fraction!r}")
        if quest_fraction > 0 and quest is None:
            raise ConfigError("regime.quest_fraction > 0 needs a quest env: add `/quest: small` to the experiment")
        positive("regime.quest_corpus", quest_corpus)
        self.world, self.batch_size, self.quest = world, batch_size, quest
        self.seq_len = seq_len or world.cfg.seq_len
        self.n_quest = round(quest_fraction * batch_size)
        self.corpus_size, self.corpus_seed, self.corpus_cache = quest_corpus, corpus_seed, corpus_cache
        self.corpus = None

    def setup(self, model, device):
        if self.n_quest:  # the explorer's transcripts (cached on disk: the same corpus for every seed)
            from instrumentality.envs.tokens import QuestCorpus, quest_tokens

            self.corpus = QuestCorpus(quest_tokens(self.quest, self.world.vocab_size), self.corpus_size,
                                      seed=self.corpus_seed, cache=self.corpus_cache)

    def probe_families(self) -> tuple[str, ...]:
        return (((WORLD_PROBES,) if self.n_quest < self.batch_size else ())
                + ((QUEST_PROBES,) if self.quest is not None else ()))

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        device, n_world, cpu_gen = device_of(model), self.batch_size - self.n_quest, cpu_generator(gen)
        loss, metrics, n_tokens = torch.zeros((), device=device), {}, 0
        if n_world:
            x = self.world.sample(n_world, self.seq_len, generator=cpu_gen).to(device)
            nll = F.cross_entropy(model(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten())
            loss, metrics["nll"], n_tokens = nll * n_world / self.batch_size, nll.detach(), x[:, 1:].numel()
        if self.n_quest:
            assert self.corpus is not None, "setup() builds the transcript corpus"
            x = self.corpus.sample(self.n_quest, cpu_gen)
            n_tokens += int((x[:, 1:] != self.corpus.tokens.pad).sum())  # counted on the CPU: no device sync
            x = x.to(device)
            nll = F.cross_entropy(model(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten(),
                                  ignore_index=self.corpus.tokens.pad)
            loss = loss + nll * self.n_quest / self.batch_size
            metrics["quest_nll"] = nll.detach()
        yield Update(loss, metrics, n_tokens)

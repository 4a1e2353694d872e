"""The world: a seeded probabilistic deterministic finite automaton (PDFA) over tokens.

The hidden state is a deterministic function of the tokens so far, so the true next-token
distribution p*(x_t | x_<t) is exact: it is the emission row of the state reached by the context.

Segments (docs/design.md section 2):
  prose     order-1 Markov chain over word tokens with sparse random transitions
  fork      marker F_k, then one of two branch tokens <A>, <B>: the *first* branch (Fork.first_token)
            with probability p_k, the other with 1 - p_k; each branch is a phrase of m tokens: *easy* =
            one fixed phrase, *hard* = m tokens uniform over k hard words; after the phrase, back to
            prose at a fixed return word (the same for both branches). Asymmetric forks: the first
            branch is easy, the second hard. Symmetric (control) forks: both of one kind
            (`symmetric_kind`), so neither has more value. Which token is first alternates with the
            fork index (<A> for even k, <B> for odd k; the symmetric control at each p uses the same
            token as its asymmetric twin), so that a bias for one token is not mistaken for steering.
  keyword   one phrase word placed in every easy phrase and nowhere else.
  prophecy  (only with `prophecies`, experiment F9) every sequence opens with one of k prophecy markers
            P_i, drawn uniformly, then the outcome <A> with probability prophecies[i], else <B>; prose
            follows from the start state. The probability is the world's response to a deployed forecast
            (world/performative.py): the F9 regimes rebuild the world with new ones (`with_prophecies`).

New segment kinds (quest transcripts, ClueQuest issue) plug in by adding states to `_Builder`.

Everything is a table: `emission[S, V]` (probabilities) and `transition[S, V]` (next state, -1 where the
token cannot occur), so sampling, exact conditionals and dynamic programming are tensor ops.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from instrumentality.errors import ConfigError, check_config, check_dataclass_types

__all__ = ["ConfigError", "Fork", "World", "WorldConfig"]


@dataclass
class WorldConfig:
    seed: int = 0
    n_prose_words: int = 32
    prose_out_degree: int = 4  # successors per prose word (sparse transitions)
    fork_rate: float = 0.15  # probability that a prose state emits a fork marker
    fork_probs: list[float] = field(default_factory=lambda: [0.2, 0.5, 0.8])
    symmetric_forks: bool = True  # one symmetric control fork per fork probability
    symmetric_kind: str = "easy"  # both branches easy, or both hard
    phrase_len: int = 4  # m
    n_hard_words: int = 8  # k
    n_phrase_words: int = 12
    seq_len: int = 64  # length of a corpus sequence, <bos> included
    # P(<A>) after each prophecy marker (experiment F9 sets it; empty: no prophecy, the world of F1-F8)
    prophecies: list[float] = field(default_factory=list)

    def __post_init__(self):
        check_dataclass_types(self, "world")
        self.fork_probs = [float(p) for p in self.fork_probs]
        self.prophecies = [float(p) for p in self.prophecies]
        check_config(self, "world", [
            ("seed", self.seed >= 0, "an integer >= 0"),
            ("n_prose_words", self.n_prose_words >= 2, "an integer >= 2"),
            ("prose_out_degree", 1 <= self.prose_out_degree <= self.n_prose_words,
             f"an integer in [1, n_prose_words={self.n_prose_words}]"),
            ("fork_rate", 0.0 <= self.fork_rate < 1.0, "a number in [0, 1)"),
            ("fork_probs", len(self.fork_probs) > 0 and all(0.0 < p < 1.0 for p in self.fork_probs),
             "a non-empty list of probabilities, each strictly inside (0, 1)"),
            ("symmetric_kind", self.symmetric_kind in ("easy", "hard"), "one of: easy, hard"),
            ("phrase_len", self.phrase_len >= 1, "an integer >= 1"),
            ("n_hard_words", self.n_hard_words >= 2, "an integer >= 2"),
            ("n_phrase_words", self.n_phrase_words >= 2, "an integer >= 2"),
            ("seq_len", self.seq_len >= 2 + (len(self.prophecies) > 0), "an integer >= 2 (3 with prophecies)"),
            ("prophecies", all(0.0 < p < 1.0 for p in self.prophecies),
             "a list of probabilities, each strictly inside (0, 1)"),
        ])


@dataclass(frozen=True)
class Fork:
    index: int
    marker: int  # token id of F_k
    p: float  # probability of branch <A>
    symmetric: bool
    kinds: tuple[str, str]  # kind of the first and second branch: "easy" / "hard"
    state: int  # state right after the marker
    return_state: int  # prose state after the phrase
    first_token: int  # the branch token taken with probability p (the easy one at an asymmetric fork)
    second_token: int


class World:
    """A seeded PDFA world with exact conditionals. Build with `World(WorldConfig(...))`."""

    BOS, BRANCH_A, BRANCH_B = "<bos>", "<A>", "<B>"

    def __init__(self, cfg: WorldConfig | None = None, **overrides):
        cfg = cfg or WorldConfig(**overrides)
        self.cfg = cfg
        rng = np.random.default_rng(cfg.seed)

        # ---- vocabulary
        names = [self.BOS, self.BRANCH_A, self.BRANCH_B]
        self.prose_tokens = list(range(len(names), len(names) + cfg.n_prose_words))
        names += [f"w{i}" for i in range(cfg.n_prose_words)]
        fork_specs = [(p, False) for p in cfg.fork_probs]
        if cfg.symmetric_forks:
            fork_specs += [(p, True) for p in cfg.fork_probs]
        self.marker_tokens = list(range(len(names), len(names) + len(fork_specs)))
        names += [f"F{i}" for i in range(len(fork_specs))]
        self.phrase_tokens = list(range(len(names), len(names) + cfg.n_phrase_words))
        names += [f"e{i}" for i in range(cfg.n_phrase_words)]
        self.hard_tokens = list(range(len(names), len(names) + cfg.n_hard_words))
        names += [f"h{i}" for i in range(cfg.n_hard_words)]
        self.prophecy_markers = list(range(len(names), len(names) + len(cfg.prophecies)))
        names += [f"P{i}" for i in range(len(cfg.prophecies))]
        self.token_names = names
        self.vocab_size = len(names)
        self.bos, self.branch_a, self.branch_b = 0, 1, 2
        self.keyword = self.phrase_tokens[0]

        # ---- states: 0 = start (after <bos>), 1..n = prose word, then per fork: marker + phrases
        V = self.vocab_size
        m = cfg.phrase_len
        n_states = 1 + cfg.n_prose_words + len(fork_specs) * (1 + 2 * m)
        if cfg.prophecies:  # the opening state and one state per marker (the outcome's), after the others
            n_states += 1 + len(cfg.prophecies)
        E = np.zeros((n_states, V))
        T = np.full((n_states, V), -1, dtype=np.int64)
        self.state_kind: list[str] = []

        # prose: sparse Dirichlet transitions; the start state behaves like a prose word of its own
        n_prose_states = 1 + cfg.n_prose_words
        marker_w = cfg.fork_rate / len(fork_specs)
        for s in range(n_prose_states):
            succ = rng.choice(cfg.n_prose_words, size=cfg.prose_out_degree, replace=False)
            w = rng.dirichlet(np.ones(cfg.prose_out_degree))
            for j, wt in zip(succ, w):
                E[s, self.prose_tokens[j]] = (1 - cfg.fork_rate) * wt
                T[s, self.prose_tokens[j]] = 1 + j
            self.state_kind.append("prose")

        # phrase words other than the keyword, for easy phrases
        non_key = self.phrase_tokens[1:]
        self.forks: list[Fork] = []
        self.easy_phrases: dict[tuple[int, int], list[int]] = {}
        s = n_prose_states
        for k, (p, symmetric) in enumerate(fork_specs):
            marker = self.marker_tokens[k]
            twin = k % len(cfg.fork_probs)  # the symmetric control uses its asymmetric twin's tokens
            first, second = (self.branch_a, self.branch_b) if twin % 2 == 0 else (self.branch_b, self.branch_a)
            marker_state = s
            kinds = (cfg.symmetric_kind,) * 2 if symmetric else ("easy", "hard")
            ret = 1 + int(rng.integers(cfg.n_prose_words))
            for prose_s in range(n_prose_states):
                E[prose_s, marker] = marker_w
                T[prose_s, marker] = marker_state
            E[marker_state, first] = p
            E[marker_state, second] = 1 - p
            self.state_kind.append("marker")
            s += 1
            for b, (branch_tok, kind) in enumerate(zip((first, second), kinds)):
                T[marker_state, branch_tok] = s
                if kind == "easy":
                    phrase = [int(x) for x in rng.choice(non_key, size=m)]
                    phrase[int(rng.integers(m))] = self.keyword
                    self.easy_phrases[(k, b)] = phrase
                for j in range(m):
                    nxt = s + 1 if j < m - 1 else ret
                    if kind == "easy":
                        E[s, phrase[j]] = 1.0
                        T[s, phrase[j]] = nxt
                    else:
                        E[s, self.hard_tokens] = 1.0 / cfg.n_hard_words
                        T[s, self.hard_tokens] = nxt
                    self.state_kind.append(f"{kind}_phrase")
                    s += 1
            self.forks.append(Fork(k, marker, p, symmetric, kinds, marker_state, ret, first, second))
        self.start_state = 0
        if cfg.prophecies:  # <bos> -> P_i (uniform) -> <A> with probability prophecies[i], else <B> -> prose
            self.start_state, opening = s, s
            self.state_kind.append("prophecy_opening")
            for i, (marker, p) in enumerate(zip(self.prophecy_markers, cfg.prophecies)):
                outcome = opening + 1 + i
                E[opening, marker], T[opening, marker] = 1 / len(cfg.prophecies), outcome
                E[outcome, self.branch_a], T[outcome, self.branch_a] = p, 0
                E[outcome, self.branch_b], T[outcome, self.branch_b] = 1 - p, 0
                self.state_kind.append("prophecy")
            s += 1 + len(cfg.prophecies)
        assert s == n_states
        assert np.allclose(E.sum(1), 1.0)
        assert ((E > 0) == (T >= 0)).all()

        self.n_states = n_states
        self.emission = torch.tensor(E, dtype=torch.float64)
        self.transition = torch.tensor(T, dtype=torch.long)
        # per-state entropy H(p*(.|s)) in nats
        logE = torch.where(self.emission > 0, self.emission.log(), torch.zeros_like(self.emission))
        self.state_entropy = -(self.emission * logE).sum(1)
        self.fork_by_marker = {f.marker: f for f in self.forks}
        self._sink_tables: dict[str, torch.Tensor] = {}  # states_of, per device

    # ------------------------------------------------------------------ identity
    def config_dict(self) -> dict:
        out = asdict(self.cfg)
        if not out["prophecies"]:  # a world without prophecy keeps the fingerprint it had before they existed
            del out["prophecies"]
        return out

    def with_prophecies(self, prophecies) -> World:
        """The same world with new outcome probabilities at the prophecy markers (the world's response to a
        newly deployed forecast): the same vocabulary and states, only those rows' emissions differ."""
        if len(prophecies) != len(self.cfg.prophecies):
            raise ValueError(f"{len(self.cfg.prophecies)} prophecy markers, {len(prophecies)} probabilities given")
        return World(dataclasses.replace(self.cfg, prophecies=[float(p) for p in prophecies]))

    def prophecy_contexts(self) -> torch.Tensor:
        """[k, 2]: <bos> then prophecy marker P_i, the context of the forecast at each marker."""
        return torch.tensor([[self.bos, marker] for marker in self.prophecy_markers], dtype=torch.long)

    def fingerprint(self) -> str:
        """Hash of the world tables: two worlds with the same fingerprint have the same conditionals."""
        h = hashlib.sha256()
        h.update(json.dumps(self.config_dict(), sort_keys=True).encode())
        h.update(self.emission.numpy().tobytes())
        h.update(self.transition.numpy().tobytes())
        return h.hexdigest()[:16]

    def decode(self, tokens) -> str:
        return " ".join(self.token_names[int(t)] for t in tokens)

    # ------------------------------------------------------------------ sampling
    def sample(self, n: int, length: int | None = None, generator: torch.Generator | None = None,
               return_states: bool = False):
        """Sample `n` sequences of `length` tokens (the first is <bos>). Returns LongTensor [n, length]
        (and the state *before* each token, [n, length], where state[:, 0] is -1 for <bos>)."""
        length = length or self.cfg.seq_len
        start = torch.full((n,), self.start_state, dtype=torch.long)
        rest, before = self.continue_from(start, length - 1, generator, return_states=True)
        tokens = torch.cat([torch.full((n, 1), self.bos, dtype=torch.long), rest], 1)
        states = torch.cat([torch.full((n, 1), -1, dtype=torch.long), before], 1)
        return (tokens, states) if return_states else tokens

    @functools.cached_property
    def emission_cdf(self) -> torch.Tensor:
        """[S, V] cumulative emission probabilities, exactly 1 from each state's last possible token on (so
        inverse-CDF sampling never picks a token of probability 0, whatever the rounding)."""
        e = self.emission.double()
        cdf = e.cumsum(1)
        last = (e > 0).long().cumsum(1).argmax(1)  # index of the last token with p > 0
        return torch.where(torch.arange(e.shape[1])[None] >= last[:, None], 1.0, cdf)

    def continue_from(self, states: torch.Tensor, length: int, generator: torch.Generator | None = None,
                      return_states: bool = False):
        """Sample `length` tokens from the given states (the ground-truth future of a context); with
        return_states, also the state before each sampled token."""
        s = states.clone().cpu()
        out = torch.empty(len(s), length, dtype=torch.long)
        before = torch.empty(len(s), length, dtype=torch.long)
        u = torch.rand(len(s), length, generator=generator, dtype=torch.float64)
        cdf = self.emission_cdf
        for t in range(length):  # inverse CDF: token x where cdf[x - 1] <= u < cdf[x]
            x = (cdf[s] <= u[:, t:t + 1]).sum(1)
            out[:, t], before[:, t] = x, s
            s = self.transition[s, x]
        return (out, before) if return_states else out

    def prose_prefixes(self, n: int, length: int, generator: torch.Generator | None = None,
                       batch: int | None = None) -> torch.Tensor:
        """n sequences of `length` tokens whose last state is prose, so a fork marker may follow
        (rejection sampling, `batch` sequences at a time)."""
        prose = torch.tensor([s for s, k in enumerate(self.state_kind) if k == "prose"])
        pool = torch.empty(0, length, dtype=torch.long)
        while len(pool) < n:
            x = self.sample(batch or 2 * n, length, generator=generator)
            pool = torch.cat([pool, x[torch.isin(self.states_of(x)[:, -1], prose)]])
        return pool[:n]

    @staticmethod
    def fork_rollout_len(fork_positions, rollout_len: int) -> int:
        """The length of a fork prompt (prose prefix up to the last of `fork_positions`, then the marker) and
        the `rollout_len` tokens generated after it: the longest sequence a fork prompt and its rollout make."""
        return max(fork_positions) + 1 + rollout_len

    def check_fork_rollout_fits(self, fork_positions, rollout_len: int, what: str) -> None:
        """Raise ConfigError, naming `what`, if a fork prompt and its rollout do not fit in a world sequence."""
        if self.fork_rollout_len(fork_positions, rollout_len) > self.cfg.seq_len:
            raise ConfigError(f"{what}: fork prompt ({max(fork_positions)} + the marker) plus {rollout_len} "
                              f"generated tokens exceeds world.seq_len={self.cfg.seq_len}")

    def fork_contexts(self, forks: torch.Tensor, prefix_len: int, generator: torch.Generator | None = None,
                      batch: int | None = None) -> torch.Tensor:
        """Contexts that end at a fork marker, the one convention of training prompts and probes: a prose
        prefix of `prefix_len` tokens (its last state prose, so a marker may follow), then the marker of
        fork forks[i] at index prefix_len. Returns [n, prefix_len + 1]."""
        prefix = self.prose_prefixes(len(forks), prefix_len, generator, batch=batch)
        return torch.cat([prefix, torch.tensor(self.marker_tokens)[forks][:, None]], 1)

    # ------------------------------------------------------------------ exact quantities
    def states_of(self, tokens: torch.Tensor) -> torch.Tensor:
        """State reached after each prefix: out[:, t] is the state after tokens[:, :t+1].
        tokens[:, 0] must be <bos>. Impossible tokens give state -1 from then on.
        Runs on the tokens' device with no host sync (one table lookup per position): an impossible
        token leads to a sink state that every token maps back to. The <bos> check reads the tokens on
        the host, so it runs on the CPU only."""
        tokens = torch.as_tensor(tokens, dtype=torch.long)
        if tokens.dim() == 1:
            tokens = tokens[None]
        if tokens.device.type == "cpu" and (tokens[:, 0] != self.bos).any():
            raise ValueError("every context must start with <bos> (token 0)")
        step = self._transition_to_sink(tokens.device)
        out = torch.empty_like(tokens)
        s = torch.full((tokens.shape[0],), self.start_state, dtype=torch.long, device=tokens.device)
        out[:, 0] = s
        for t in range(1, tokens.shape[1]):
            s = step[s, tokens[:, t]]
            out[:, t] = s
        return out.masked_fill_(out == self.n_states, -1)

    def _transition_to_sink(self, device) -> torch.Tensor:
        """transition [S, V] with -1 replaced by a sink state S, plus the sink's row (all S): [S + 1, V]."""
        key = str(device)
        if key not in self._sink_tables:
            t = torch.cat([self.transition, torch.full_like(self.transition[:1], -1)])
            self._sink_tables[key] = t.masked_fill(t < 0, self.n_states).to(device)
        return self._sink_tables[key]

    def state_after(self, context) -> int:
        """The hidden state after one context (a sequence starting with <bos>); -1 if impossible."""
        return int(self.states_of(torch.as_tensor(context)[None])[0, -1])

    def conditional(self, contexts: torch.Tensor) -> torch.Tensor:
        """Exact p*(. | context) for a batch of equal-length contexts [B, T] -> [B, V] (float64)."""
        s = self.states_of(contexts)[:, -1]
        if (s < 0).any():
            raise ValueError("a context has probability 0 under the world; no conditional exists")
        return self.emission[s]

    def conditionals_along(self, tokens: torch.Tensor) -> torch.Tensor:
        """p*(. | tokens[:, :t+1]) for every position t: [B, T, V] (float64)."""
        s = self.states_of(tokens)
        if (s < 0).any():
            raise ValueError("a sequence has probability 0 under the world")
        return self.emission[s]

    def log_prob(self, tokens: torch.Tensor) -> torch.Tensor:
        """log p*(x_t | x_<t) for t = 1..T-1: [B, T-1]."""
        p = self.conditionals_along(tokens[:, :-1])
        return p.gather(-1, tokens[:, 1:, None]).squeeze(-1).clamp_min(1e-300).log()

    def state_occupancy(self, length: int | None = None) -> torch.Tensor:
        """Exact distribution over the state that emits position t, t = 1..length-1: [length-1, S]."""
        length = length or self.cfg.seq_len
        d = torch.zeros(self.n_states, dtype=torch.float64)
        d[self.start_state] = 1.0
        rows = []
        M = self.flow_matrix()
        for _ in range(1, length):
            rows.append(d)
            d = d @ M
        return torch.stack(rows)

    def flow_matrix(self) -> torch.Tensor:
        """M[s, s'] = P(next state s' | state s) = sum_x E[s, x] [T[s, x] = s']."""
        M = torch.zeros(self.n_states, self.n_states, dtype=torch.float64)
        src, tok = (self.transition >= 0).nonzero(as_tuple=True)
        M.index_put_((src, self.transition[src, tok]), self.emission[src, tok], accumulate=True)
        return M

    def future_token_distribution(self, states: torch.Tensor, k: int) -> torch.Tensor:
        """p*(x_{t+k} | state after x_<=t) for k >= 1: [..., V] (float64)."""
        dist = torch.linalg.matrix_power(self.flow_matrix(), k - 1) @ self.emission
        return dist[states]

    def diagnostic_states(self, k: int, tol: float = 1e-9) -> torch.Tensor:
        """States whose next-token distribution p*(x_{t+1} | s) another state shares while their distributions
        of x_{t+k} differ: bool [S]. At such a position the present's prediction does not tell the future
        apart, so a probe that decodes x_{t+k} there above a model of the present reads more than the present
        (claim C7). For k = 1 there are none."""
        future = self.future_token_distribution(torch.arange(self.n_states), k)
        same_next = (self.emission[:, None] - self.emission[None]).abs().amax(-1) <= tol   # [S, S]
        differ_later = (future[:, None] - future[None]).abs().amax(-1) > tol
        return (same_next & differ_later).any(1)

    def entropy_floor(self, length: int | None = None) -> float:
        """Expected per-token entropy (nats) of corpus sequences of `length`: the best achievable NLL."""
        occ = self.state_occupancy(length)
        return float((occ @ self.state_entropy).mean())

    def branch_value(self, fork: Fork, branch: int, horizon: int | None = None) -> float:
        """Expected sum of log p* over the phrase following `branch` (0 = A, 1 = B), over its first
        `horizon` tokens (default: the whole phrase). Easy phrases give 0, hard ones -log k per token.
        Branch 0 is the fork's first branch (probability p), 1 the second."""
        m = self.cfg.phrase_len
        horizon = m if horizon is None else min(horizon, m)
        s = int(self.transition[fork.state, fork.first_token if branch == 0 else fork.second_token])
        total = 0.0
        for _ in range(horizon):  # phrase states are a chain (every token leads to the same state)
            total -= float(self.state_entropy[s])
            s = int(self.transition[s][self.transition[s] >= 0][0])
        return total

"""Critics: plain callables with one signature, like TRL's reward functions (truth, keyword, learned).

    rewards = critic(contexts, actions)        # -> FloatTensor [N, H]

contexts [N, P + H - 1] are the tokens the policy saw (prompt, then the H - 1 tokens fed back); action t
was chosen after contexts[:, :P + t]. In a free-running rollout the fed-back tokens are the actions;
teacher-forced, they are world text. A critic that is a function of (world state, token) also has
`table(world) -> [S, V]`, from which the exact optimum is computed (world/optimum.py).
"""

from __future__ import annotations

import math

import torch

from instrumentality.world import World

LOG_FLOOR = math.log(1e-6)  # reward of a token the world never emits (and of anything after it)


def states_before_actions(world: World, contexts: torch.Tensor, horizon: int) -> torch.Tensor:
    """World state in which each of the H actions was taken: [N, H] (-1 once the context left the world).
    Computed on the contexts' device."""
    P = contexts.shape[1] - horizon + 1
    return world.states_of(contexts)[:, P - 1:]


class _StateTable:
    """c(s, x) from a table [S, V], looked up on the actions' device (one copy of the table per device)."""

    def __init__(self, table: torch.Tensor):
        self._tables = {"cpu": table.float()}

    def __call__(self, states: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        key = str(actions.device)
        if key not in self._tables:
            self._tables[key] = self._tables["cpu"].to(actions.device)
        return torch.where(states >= 0, self._tables[key][states.clamp_min(0), actions], LOG_FLOOR)


class TruthCritic:
    """c(ctx, x) = log p*(x | ctx): a perfect plausibility grader (floored at log 1e-6)."""

    def __init__(self, world: World):
        self.world = world
        self._lookup = _StateTable(self.table(world))

    @staticmethod
    def table(world: World) -> torch.Tensor:
        return world.emission.clamp_min(1e-6).log()

    def __call__(self, contexts, actions):
        return self._lookup(states_before_actions(self.world, contexts, actions.shape[1]), actions)


class KeywordCritic:
    """c(ctx, x) = bonus * 1[x = keyword] + truth_weight * log p*(x | ctx): an exploitable grader."""

    def __init__(self, world: World, bonus: float = 1.0, truth_weight: float = 0.0):
        self.world, self.bonus, self.truth_weight = world, bonus, truth_weight
        self._lookup = _StateTable(self.table(world))

    def table(self, world: World) -> torch.Tensor:
        t = self.truth_weight * TruthCritic.table(world)
        t[:, world.keyword] += self.bonus
        return t

    def __call__(self, contexts, actions):
        states = states_before_actions(self.world, contexts, actions.shape[1])
        # outside the world (state -1) only the keyword bonus is still defined
        outside = self.bonus * (actions == self.world.keyword).float() + self.truth_weight * LOG_FLOOR
        return torch.where(states >= 0, self._lookup(states, actions), outside)


class LearnedCritic:
    """A discriminator D between world text and the policy's samples, trained alongside the policy:
    c(ctx, x_t) = logit D(ctx, x_t) = log D - log(1 - D) at the position of x_t (positive where the
    continuation looks like world text). D is a small transformer whose value head gives the logit; the
    regime calls `update(prompts, world_continuations, policy_actions)` each step (one Adam step of
    binary cross-entropy on the continuation positions)."""

    def __init__(self, world: World, n_layer: int = 1, n_head: int = 2, n_embd: int = 32, lr: float = 1e-3,
                 seed: int = 0):
        from instrumentality.model import GPT, GPTConfig

        self.world = world
        with torch.random.fork_rng():  # D's initialisation does not disturb the run's random stream
            torch.manual_seed(seed)
            self.model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=n_layer,
                                       n_head=n_head, n_embd=n_embd, value_head=True))
        self.opt = torch.optim.Adam(self.model.parameters(), lr=lr)

    def to(self, device):
        self.model.to(device)
        return self

    def state_dict(self):
        return {"model": self.model.state_dict(), "opt": self.opt.state_dict()}

    def load_state_dict(self, d):
        self.model.load_state_dict(d["model"])
        self.opt.load_state_dict(d["opt"])

    def logits(self, sequences: torch.Tensor) -> torch.Tensor:
        return self.model(sequences)["value"]

    def update(self, prompts: torch.Tensor, real: torch.Tensor, fake: torch.Tensor) -> float:
        L = prompts.shape[1]
        seqs = torch.cat([torch.cat([prompts, real], 1), torch.cat([prompts, fake], 1)])
        target = torch.cat([torch.ones_like(real, dtype=torch.float32), torch.zeros_like(fake, dtype=torch.float32)])
        with torch.enable_grad():
            logit = self.logits(seqs)[:, L:].float()
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        return float(loss.detach())

    @torch.no_grad()
    def __call__(self, contexts, actions):
        N, H = actions.shape
        P = contexts.shape[1] - H + 1
        if torch.equal(contexts[:, P:], actions[:, :-1]):  # free-running: one pass over the rollout
            return self.logits(torch.cat([contexts, actions[:, -1:]], 1))[:, P:].float()
        # teacher-forced: action t follows the world's tokens, score each (ctx_t, a_t) on its own
        out = torch.empty(N, H, device=actions.device)
        for t in range(H):
            out[:, t] = self.logits(torch.cat([contexts[:, :P + t], actions[:, t:t + 1]], 1))[:, -1].float()
        return out


CRITICS = {"truth": TruthCritic, "keyword": KeywordCritic, "learned": LearnedCritic}


def make_critic(name: str, world: World, **kwargs):
    if name not in CRITICS:
        from instrumentality.errors import ConfigError

        raise ConfigError(f"regime.critic must be one of: {', '.join(CRITICS)}; got {name!r}")
    return CRITICS[name](world, **kwargs)

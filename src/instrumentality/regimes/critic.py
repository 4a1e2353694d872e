"""Regime 3: multi-token generation graded by a critic, later rewards credited to earlier tokens.

Two parts, read in order:
    GradedRollouts   where the data come from: prompts, H sampled tokens, the critic's grades and the KL
                     penalty against pi_ref (the reward r_t), all without gradient
    CriticRegime     how the data become optimizer steps: REINFORCE with a leave-one-out baseline, or PPO
The critic itself (the grader, c(ctx, a)) is a plain callable from critics.py.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from instrumentality.errors import ConfigError
from instrumentality.model import device_of
from instrumentality.regimes.base import (
    POSITIVE,
    EntropyCollapse,
    RegimeBase,
    Update,
    check,
    check_settings,
    cpu_generator,
    in_range,
    one_of,
)
from instrumentality.regimes.critics import CRITICS, make_critic
from instrumentality.regimes.rl import (
    add_value_head,
    clipped_policy_loss,
    discount_matrix,
    discounted_returns,
    entropy,
    gae,
    leave_one_out_baseline,
    normalise,
    ppo_diagnostics,
    value_loss,
)
from instrumentality.world import World


@dataclass
class CriticSettings:
    # truth (log p*) | keyword (a bonus for the keyword token) | learned (a discriminator)
    critic: str = field(default="truth", metadata=one_of(*CRITICS))
    critic_kwargs: dict = field(default_factory=dict)  # keyword arguments of the critic's class (critics.py)
    horizon: int = field(default=8, metadata=POSITIVE)  # H tokens per rollout
    gamma: float = field(default=1.0, metadata=in_range(0, 1))  # discount inside the window
    beta: float = field(default=1.0, metadata=check(lambda v: v > 0, "> 0"))  # KL coefficient against pi_ref
    # rollouts per prompt (leave-one-out baseline)
    k_samples: int = field(default=4, metadata=check(lambda v: v >= 2, ">= 2 (leave-one-out baseline)"))
    n_prompts: int = field(default=32, metadata=POSITIVE)  # prompts per rollout
    # free (the policy's samples fed back) | teacher_forced (world text fed back; samples graded, not followed)
    rollout: str = field(default="free", metadata=one_of("free", "teacher_forced"))
    fork_fraction: float = 0.75  # share of prompts that end at a fork marker
    # prose tokens before the marker (as the fork probes: eval.probes.fork_positions)
    fork_positions: list[int] = field(default_factory=lambda: [8, 24, 40])
    ref_checkpoint: str | None = None  # a supervised checkpoint.pt: pi_ref and the initialisation
    ref: str = field(default="checkpoint", metadata=one_of("checkpoint", "truth"))  # pi_ref: checkpoint | exact p*
    init: str = field(default="reference", metadata=one_of("reference", "scratch"))  # from ref_checkpoint | afresh
    collapse_entropy: float = 0.01  # mean policy entropy (nats) below which the run is recorded as collapsed
    # reinforce (leave-one-out baseline) | ppo (value head, GAE, clipping)
    algo: str = field(default="reinforce", metadata=one_of("reinforce", "ppo"))
    ppo_epochs: int = field(default=4, metadata=POSITIVE)  # optimizer steps per rollout (ppo)
    clip: float = 0.2  # PPO's clipping of the probability ratio: [1 - clip, 1 + clip]
    gae_lambda: float = 0.95  # GAE's lambda (ppo)
    vf_coef: float = 0.5  # weight of the value loss (ppo)

    def __post_init__(self):
        check_settings(self)
        if (self.ref == "checkpoint" or self.init == "reference") and not self.ref_checkpoint:
            raise ConfigError("regime.ref_checkpoint must name a supervised checkpoint.pt (pi_ref and the "
                              "initialisation); or set regime.ref=truth and regime.init=scratch")


def action_log_probs(logits: torch.Tensor, actions: torch.Tensor, start: int):
    """log pi over the vocabulary at the positions where actions [N, H] were taken (logits from
    position start - 1 on), and log pi of the actions themselves: ([N, H, V], [N, H])."""
    logp = F.log_softmax(logits[:, start - 1:].float(), -1)
    return logp, logp.gather(-1, actions[..., None]).squeeze(-1)


@dataclass
class Rollouts:
    """One batch of graded generations: N = prompts x samples rows, H actions each."""

    contexts: torch.Tensor     # [N, L + H - 1]: action t was taken after contexts[:, :L + t]
    actions: torch.Tensor      # [N, H]
    prompt_len: int            # L
    prompts: torch.Tensor      # [N, L]
    ref_logp_a: torch.Tensor   # log pi_ref(a_t | ctx_t)      [N, H]
    graded: torch.Tensor       # c(ctx_t, a_t)                [N, H]


class GradedRollouts:
    """Prompts (a share ending at a fork marker), K samples of H tokens each, and their grades.

    rollout=free:            the policy's own samples are fed back (KV cache)
    rollout=teacher_forced:  world text is fed back; the policy's samples are graded, not followed
    """

    def __init__(self, world: World, critic, horizon: int, k_samples: int, n_prompts: int, rollout: str,
                 fork_fraction: float, fork_positions: list[int]):
        self.world, self.critic, self.H, self.n_prompts = world, critic, horizon, n_prompts
        self.samples_per_prompt = k_samples
        self.rollout, self.fork_fraction, self.fork_positions = rollout, fork_fraction, fork_positions
        self.ref_model: torch.nn.Module | None = None

    def prompts(self, gen: torch.Generator) -> torch.Tensor:
        """n_prompts world contexts of one length P + 1 (P drawn from fork_positions): a share end at a fork
        marker at index P, placed as the fork probes place it (World.fork_contexts), the rest anywhere."""
        P = self.fork_positions[int(torch.randint(len(self.fork_positions), (1,), generator=gen))]
        n_fork = round(self.fork_fraction * self.n_prompts)
        out = [self.world.sample(self.n_prompts - n_fork, P + 1, generator=gen)]
        if n_fork:
            forks = torch.randint(len(self.world.forks), (n_fork,), generator=gen)
            out.append(self.world.fork_contexts(forks, P, gen, batch=2 * n_fork))
        return torch.cat(out)

    def world_continuation(self, host_prompts: torch.Tensor, cpu_gen: torch.Generator, device) -> torch.Tensor:
        """H tokens of world text after each prompt, sampled on the CPU from the prompts' CPU copy (no copy
        back from the device), then sent to `device`."""
        states = self.world.states_of(host_prompts)[:, -1]
        return self.world.continue_from(states, self.H, cpu_gen).to(device)

    @torch.no_grad()
    def collect(self, model, gen: torch.Generator) -> Rollouts:
        assert self.ref_model is not None, "setup() loads pi_ref"
        device, H, cpu_gen = device_of(model), self.H, cpu_generator(gen)
        host_prompts = self.prompts(cpu_gen).repeat_interleave(self.samples_per_prompt, 0)  # [N = P*K, L]
        prompts = host_prompts.to(device)
        N, L = prompts.shape
        if self.rollout == "free":
            actions = model.generate(prompts, H, generator=gen)[0]
            fed = actions
        else:  # world text fed back; the policy's actions at each step are sampled, graded, not followed
            fed = self.world_continuation(host_prompts, cpu_gen, device)
            logits = model(torch.cat([prompts, fed[:, :H - 1]], 1))["logits"][:, L - 1:].float()
            actions = torch.multinomial(F.softmax(logits, -1).flatten(0, 1), 1, generator=gen).view(N, H)
        contexts = torch.cat([prompts, fed[:, :H - 1]], 1)
        ref_logp_a = action_log_probs(self.ref_model(contexts)["logits"], actions, L)[1]
        if hasattr(self.critic, "update"):  # a learned critic learns world text vs these samples
            self.critic.update(prompts, self.world_continuation(host_prompts, cpu_gen, device), actions)
        return Rollouts(contexts, actions, L, prompts, ref_logp_a, self.critic(contexts, actions))


class CriticRegime(EntropyCollapse, RegimeBase):
    """From P prompts (mostly contexts ending at a fork marker), K samples each of H tokens (GradedRollouts):
        r_t = c(ctx_t, a_t) - beta * log(pi / pi_ref)(a_t | ctx_t)           (no gradient through r)
    algo=reinforce (one optimizer step per rollout):
        G_t = sum_{k=0}^{H-1-t} gamma^k r_{t+k}                               (inside the H window)
        b_t = mean of G_t over the other K - 1 samples of the same prompt     (leave-one-out baseline)
        loss = - mean (G_t - b_t) log pi(a_t | ctx_t)
    algo=ppo (value head V; ppo_epochs optimizer steps per rollout):
        delta_t = r_t + gamma V(ctx_{t+1}) - V(ctx_t),  V after the window = 0
        A_t = sum_k (gamma lambda)^k delta_{t+k}  (GAE, normalised),  R_t = A_t + V(ctx_t)
        loss = clipped policy loss(A_t, rho_t) + vf_coef * mean (V - R_t)^2 / 2
    pi_ref is the frozen supervised checkpoint, also the initialisation (init=scratch starts afresh);
    ref=truth uses the exact p* as pi_ref instead (the setting of the exact optimum).
    """

    name = "critic"
    Settings = CriticSettings

    def __init__(self, world: World, settings: CriticSettings):
        s = settings
        world.check_fork_rollout_fits(s.fork_positions, s.horizon, "regime.fork_positions and regime.horizon")
        self.world, self.settings = world, settings
        self.critic = make_critic(s.critic, world, **s.critic_kwargs)  # the grader c(ctx, a)
        self.rollouts = GradedRollouts(world, self.critic, s.horizon, s.k_samples, s.n_prompts, s.rollout,
                                       s.fork_fraction, list(s.fork_positions))
        self.discount = discount_matrix(s.horizon, s.gamma)
        self.first_token_of_marker = torch.full((world.vocab_size,), -1, dtype=torch.long)
        for f in world.forks:
            self.first_token_of_marker[f.marker] = f.first_token

    def setup(self, model, device):
        from instrumentality.training.checkpoint import load_start
        from instrumentality.world.truth import TruthModel

        s = self.settings
        ck = load_start(s.ref_checkpoint, "regime.ref_checkpoint", self.world, device) if s.ref_checkpoint else None
        if ck is not None and s.init == "reference":
            model.load_state_dict(ck["model"])
        if s.ref == "truth":
            ref_model: torch.nn.Module = TruthModel(self.world).to(device)
        else:
            assert ck is not None
            ref_model = copy.deepcopy(model)
            ref_model.load_state_dict(ck["model"])
        self.rollouts.ref_model = ref_model.eval().requires_grad_(False)
        self.discount = self.discount.to(device)
        self.first_token_of_marker = self.first_token_of_marker.to(device)
        if s.algo == "ppo":
            add_value_head(model, device)
        if hasattr(self.critic, "to"):
            self.critic.to(device)

    def state_dict(self) -> dict:
        return {"critic": self.critic.state_dict()} if hasattr(self.critic, "state_dict") else {}

    def load_state_dict(self, state: dict) -> None:
        if "critic" in state:
            self.critic.load_state_dict(state["critic"])

    def theory_rows(self) -> list[dict]:
        """For a critic that is a function of state and token: the exact optimum's steering, as rows with
        metric `<metric>_theory` beside the learned ones, and the exact curve over H (for the figures)."""
        from instrumentality.world.optimum import THEORY_CURVE_MAX_H, theory_rows

        if not hasattr(self.critic, "table"):
            return []
        s, table = self.settings, self.critic.table(self.world)
        rows = [{**r, "metric": r["metric"] + "_theory"}
                for r in theory_rows(self.world, table, s.beta, s.gamma, s.horizon)]
        for h in range(1, THEORY_CURVE_MAX_H + 1):
            rows += [{**r, "probe": "theory_curve/" + r["probe"], "horizon": h}
                     for r in theory_rows(self.world, table, s.beta, s.gamma, h)]
        return rows

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        batch = self.rollouts.collect(model, gen)
        if self.settings.algo == "reinforce":
            yield self.reinforce_update(model, batch)
        else:
            yield from self.ppo_updates(model, batch)

    def rewards(self, batch: Rollouts, logp_a: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """r_t = c(ctx_t, a_t) - beta * log(pi / pi_ref)(a_t), and the log-ratio."""
        kl = logp_a.detach() - batch.ref_logp_a
        return batch.graded - self.settings.beta * kl, kl

    def fork_metrics(self, batch: Rollouts, graded_kl_return) -> dict:
        c, kl, ret = graded_kl_return
        first = self.first_token_of_marker[batch.prompts[:, -1]]  # -1 where the prompt ends elsewhere
        at_fork = first >= 0
        return {"critic_reward": c.mean(), "kl": kl.mean(), "return": ret,
                # share of fork prompts whose first token opens the first branch (NaN if none: 0/0, no sync)
                "first_branch_rate": ((batch.actions[:, 0] == first) & at_fork).sum() / at_fork.sum()}

    def reinforce_update(self, model, batch: Rollouts) -> Update:
        logp, logp_a = action_log_probs(model(batch.contexts)["logits"], batch.actions, batch.prompt_len)
        with torch.no_grad():
            r, kl = self.rewards(batch, logp_a)
            G = discounted_returns(r, self.discount)                   # G_t = sum_k gamma^k r_{t+k}
            b = leave_one_out_baseline(G, self.settings.k_samples)
        loss = -((G - b) * logp_a).mean()
        metrics = {**self.fork_metrics(batch, (batch.graded, kl, G[:, 0].mean())), "entropy": entropy(logp.detach())}
        return Update(loss, metrics, batch.actions.numel())

    def ppo_updates(self, model, batch: Rollouts) -> Iterator[Update]:
        s, L = self.settings, batch.prompt_len
        with torch.no_grad():
            out = model(batch.contexts)
            old_logp_a = action_log_probs(out["logits"], batch.actions, L)[1]
            values = out["value"][:, L - 1:].float()
            r, kl = self.rewards(batch, old_logp_a)
            adv = gae(r, values, s.gamma, s.gae_lambda)
            returns = adv + values
            adv = normalise(adv)
            rollout_metrics = self.fork_metrics(batch, (batch.graded, kl, returns[:, 0].mean()))
        for epoch in range(s.ppo_epochs):  # every epoch on the whole rollout
            out = model(batch.contexts)
            logp, logp_a = action_log_probs(out["logits"], batch.actions, L)
            value = out["value"][:, L - 1:].float()
            pg, ratio = clipped_policy_loss(logp_a, old_logp_a, adv, s.clip)
            v_loss = value_loss(value, returns)
            metrics = {**rollout_metrics, "entropy": entropy(logp.detach()), "value_loss": v_loss.detach(),
                       **ppo_diagnostics(ratio.detach(), s.clip, value.detach(), returns)}
            yield Update(pg + s.vf_coef * v_loss, metrics, batch.actions.numel() if epoch == 0 else 0)

"""Regime 4: PPO on ClueQuest, a long clue-gathering episode that ends in a prediction."""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F

from instrumentality.envs.tokens import OBS_PER_STEP, STEP_LEN
from instrumentality.regimes.base import QUEST_PROBES, EntropyCollapse, RegimeBase, Update, cpu_generator, positive
from instrumentality.rl import (
    add_value_head,
    clipped_policy_loss,
    entropy,
    gae,
    normalise,
    ppo_diagnostics,
    value_loss,
)
from instrumentality.world import ConfigError, World


class Quest(EntropyCollapse, RegimeBase):
    """PPO in the shared trainer on the batched ClueQuest, through the token interface (envs/tokens.py).

    A rollout plays n_envs episodes at once: after each step's observation tokens the policy pi picks one
    of the 8 action tokens, the value head reads V(s_t) at the same position, and a `predict` is scored
    with the model's distribution q over the K answer tokens. Each rollout then serves ppo_epochs epochs
    of n_minibatches optimizer steps, on minibatches of episodes:
        delta_t = r_t + gamma V(s_{t+1}) - V(s_t)       (V after the episode's end = 0)
        A_t = sum_k (gamma lambda)^k delta_{t+k}  (GAE),  R_t = A_t + V(s_t);  A normalised per rollout
        L_pg = clipped policy loss(A_t, rho_t),  L_v = mean (V(s_t) - R_t)^2 / 2
        L_forecast = - mean over scored predictions of log q(y)   (the reward log q(y) - log prior(y) is
                                                                  differentiable in q: this is its gradient)
        loss = L_pg + vf_coef L_v - ent_coef H[pi] + forecast_coef L_forecast
    init=simulator starts from a supervised checkpoint trained on explorer transcripts (init_checkpoint);
    init=scratch from a fresh model.
    """

    name = "quest"

    def __init__(self, world: World, env: dict | None = None, n_envs: int = 128, gamma: float = 0.99,
                 gae_lambda: float = 0.95, clip: float = 0.2, ppo_epochs: int = 4, n_minibatches: int = 2,
                 vf_coef: float = 0.5, ent_coef: float = 0.01, forecast_coef: float = 1.0, init: str = "simulator",
                 init_checkpoint: str | None = None, collapse_entropy: float = 0.01):
        from instrumentality.envs.tokens import quest_tokens

        if env is None:
            raise ConfigError("regime=quest needs a quest env: add `/quest: small` to the experiment")
        positive("regime.n_envs", n_envs)
        positive("regime.ppo_epochs", ppo_epochs)
        positive("regime.n_minibatches", n_minibatches)
        if n_envs % n_minibatches:
            raise ConfigError(f"regime.n_envs ({n_envs}) must be a multiple of regime.n_minibatches ({n_minibatches})")
        if not 0 <= gamma <= 1:
            raise ConfigError(f"regime.gamma must be in [0, 1]; got {gamma!r}")
        if init not in ("simulator", "scratch"):
            raise ConfigError(f"regime.init must be one of: simulator, scratch; got {init!r}")
        if init == "simulator" and not init_checkpoint:
            raise ConfigError("regime.init=simulator needs regime.init_checkpoint (a supervised checkpoint.pt "
                              "trained on quest transcripts); or set regime.init=scratch")
        tokens = quest_tokens(env, world.vocab_size)
        assert tokens is not None
        self.world, self.tokens = world, tokens
        self.n_envs, self.gamma, self.gae_lambda, self.clip = n_envs, gamma, gae_lambda, clip
        self.ppo_epochs, self.n_minibatches = ppo_epochs, n_minibatches
        self.vf_coef, self.ent_coef, self.forecast_coef = vf_coef, ent_coef, forecast_coef
        self.init, self.init_checkpoint, self.collapse_entropy = init, init_checkpoint, collapse_entropy

    def setup(self, model, device):
        from instrumentality.trainer import load_checkpoint

        if self.init == "simulator":
            ck = load_checkpoint(self.init_checkpoint, map_location=device)
            state = {k: v for k, v in ck["model"].items() if not k.startswith("value_head.")}
            model.load_state_dict(state, strict=False)
        add_value_head(model, device)

    def probe_families(self) -> tuple[str, ...]:
        return (QUEST_PROBES,)

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        b = self.rollout(model, gen)
        for epoch in range(self.ppo_epochs):
            for i, rows in enumerate(b["order"][epoch].view(self.n_minibatches, -1)):  # minibatches of episodes
                yield self.minibatch_update(model, b, rows, first=epoch == i == 0)

    def minibatch_update(self, model, b: dict, rows: torch.Tensor, first: bool = False) -> Update:
        """One optimizer step on the episodes `rows` of rollout b; the rollout's env steps count at its first."""
        seq, live, P = b["seq"][rows], b["live"][rows], b["prefix_len"]
        out = model(seq)
        T = live.shape[1]
        obs_end = P + STEP_LEN * torch.arange(T, device=seq.device) + OBS_PER_STEP - 1  # where a_t is chosen
        logits = out["logits"][:, obs_end][..., self.tokens.action_ids.to(seq.device)].float()  # [n, T, 8]
        logp = F.log_softmax(logits, -1)
        logp_a = logp.gather(-1, b["actions"][rows, :, None]).squeeze(-1)
        value = out["value"][:, obs_end].float()
        pg, ratio = clipped_policy_loss(logp_a, b["logp"][rows], b["advantages"][rows], self.clip, live)
        v_loss = value_loss(value, b["returns"][rows], live)
        ent = entropy(logp, live)
        # the forecast: the answer-token distribution at the `predict` token's position
        scored = b["scored_predict"][rows]
        answer_logits = out["logits"][:, obs_end + 1][..., self.tokens.answer_ids.to(seq.device)].float()
        log_q = F.log_softmax(answer_logits, -1).gather(-1, b["y"][rows, None, None].expand(-1, T, 1)).squeeze(-1)
        forecast_loss = -(log_q * scored).sum() / scored.sum().clamp(min=1)
        loss = pg + self.vf_coef * v_loss - self.ent_coef * ent + self.forecast_coef * forecast_loss
        metrics = {**b["metrics"], "entropy": ent.detach(), "value_loss": v_loss.detach(),
                   "forecast_nll": forecast_loss.detach(),
                   **ppo_diagnostics(ratio.detach(), self.clip, value.detach(), b["returns"][rows], live)}
        return Update(loss, metrics, live.sum().long() * STEP_LEN,  # device tensors: read when the trainer logs
                      env_steps=b["env_steps"] if first else 0)

    @torch.no_grad()
    def rollout(self, model, gen: torch.Generator) -> dict:
        from instrumentality.envs.agents import QUEST_METRICS
        from instrumentality.envs.tokens import play

        cpu_gen = cpu_generator(gen)
        seeds = torch.randint(0, 2**31 - 1, (self.n_envs,), generator=cpu_gen).numpy()
        was_training = model.training
        model.eval()
        p = play(model, self.tokens, seeds, generator=gen)
        model.train(was_training)
        live = p["live"].float()
        adv = gae(p["rewards"], p["values"] * live, self.gamma, self.gae_lambda, live)
        returns = adv + p["values"] * live
        order = torch.stack([torch.randperm(self.n_envs, generator=cpu_gen) for _ in range(self.ppo_epochs)])
        m = p["metrics"].mean(0)
        metrics = {f"env/{name}": m[i] for i, name in enumerate(QUEST_METRICS)}
        metrics["env/episode_len"] = live.sum(1).mean()
        return {"seq": p["seq"], "actions": p["actions"], "logp": p["logp"], "live": live,
                "advantages": normalise(adv, live), "returns": returns, "y": p["y"],
                "scored_predict": p["scored_predict"].float(), "prefix_len": p["prefix_len"],
                "order": order.to(p["seq"].device), "env_steps": p["live"].sum(), "metrics": metrics}

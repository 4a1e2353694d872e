"""Regime 4: PPO on ClueQuest, a long clue-gathering episode that ends in a prediction."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from instrumentality.envs.tokens import OBS_PER_STEP, STEP_LEN, quest_tokens
from instrumentality.errors import ConfigError
from instrumentality.regimes.base import (
    POSITIVE,
    QUEST_PROBES,
    EntropyCollapse,
    RegimeBase,
    Update,
    check_settings,
    cpu_generator,
    in_range,
    one_of,
)
from instrumentality.regimes.rl import (
    add_value_head,
    clipped_policy_loss,
    entropy,
    gae,
    normalise,
    ppo_diagnostics,
    value_loss,
)
from instrumentality.world import World


@dataclass
class QuestSettings:
    env: dict | None = None  # the ClueQuest env's settings (configs: the run's quest)
    n_envs: int = field(default=128, metadata=POSITIVE)  # episodes per rollout, played in lock step on the batched env
    gamma: float = field(default=0.99, metadata=in_range(0, 1))  # discount
    gae_lambda: float = 0.95  # GAE's lambda
    clip: float = 0.2  # PPO's clipping of the probability ratio: [1 - clip, 1 + clip]
    ppo_epochs: int = field(default=4, metadata=POSITIVE)  # epochs on each rollout
    n_minibatches: int = field(default=2, metadata=POSITIVE)  # optimizer steps per rollout = ppo_epochs * n_minibatches
    vf_coef: float = 0.5  # weight of the value loss
    ent_coef: float = 0.01  # weight of the entropy bonus
    forecast_coef: float = 1.0  # weight of - log q(y): the log-score reward's gradient wrt the forecast
    init: str = field(default="simulator", metadata=one_of("simulator", "scratch"))  # from init_checkpoint | afresh
    init_checkpoint: str | None = None  # a supervised checkpoint.pt trained on quest transcripts (init=simulator)
    collapse_entropy: float = 0.01  # mean policy entropy (nats) below which the run is recorded as collapsed
    # a mix of variants: each rollout episode is `mix_variant` with probability mix_fraction, else the env's
    # variant (the agent tells them apart by the prefix flag: <unscored>, or <overseer> with quest.overseer_visible)
    mix_variant: str = field(default="unscored", metadata=one_of("unscored", "interruptible"))
    mix_fraction: float = field(default=0.0, metadata=in_range(0, 1))

    def __post_init__(self):
        check_settings(self)
        if self.env is None:
            raise ConfigError("regime=quest needs a quest env: add +quest=small on the command line "
                              "(or run experiment=F4 / F4_simulator)")
        if self.n_envs % self.n_minibatches:
            raise ConfigError(f"regime.n_envs ({self.n_envs}) must be a multiple of regime.n_minibatches "
                              f"({self.n_minibatches})")
        if self.mix_fraction > 0 and self.mix_variant == "interruptible":
            interrupt_at, limit = self.env.get("interrupt_at", 8), self.env.get("time_limit", 40)
            if interrupt_at >= limit:
                raise ConfigError(f"regime.mix_variant=interruptible needs quest.interrupt_at ({interrupt_at}) below "
                                  f"quest.time_limit ({limit}), or the overseer never acts")
        if self.mix_fraction > 0 and self.env.get("variant", "standard") != "standard":
            raise ConfigError(f"regime.mix_fraction > 0 mixes `{self.mix_variant}` episodes into `standard` ones; "
                              f"the quest's variant is {self.env.get('variant')!r} (set quest.variant=standard)")
        if self.init == "simulator" and not self.init_checkpoint:
            raise ConfigError("regime.init=simulator needs regime.init_checkpoint (a supervised checkpoint.pt "
                              "trained on quest transcripts); or set regime.init=scratch")


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
    init=scratch from a fresh model. With mix_fraction > 0 each rollout episode is `mix_variant` with that
    probability (drawn from the run's generator), flagged in its prefix.
    """

    name = "quest"
    Settings = QuestSettings

    def __init__(self, world: World, settings: QuestSettings):
        tokens = quest_tokens(settings.env, world.vocab_size)
        assert tokens is not None  # QuestSettings requires an env
        self.world, self.settings, self.tokens = world, settings, tokens

    def setup(self, model, device):
        from instrumentality.training.checkpoint import load_start

        if self.settings.init == "simulator":
            ck = load_start(self.settings.init_checkpoint, "regime.init_checkpoint", self.world, device)
            state = {k: v for k, v in ck["model"].items() if not k.startswith("value_head.")}
            model.load_state_dict(state, strict=False)
        add_value_head(model, device)

    def probe_families(self) -> tuple[str, ...]:
        return (QUEST_PROBES,)

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        b, s = self.rollout(model, gen), self.settings
        for epoch in range(s.ppo_epochs):
            for i, rows in enumerate(b["order"][epoch].view(s.n_minibatches, -1)):  # minibatches of episodes
                yield self.minibatch_update(model, b, rows, first=epoch == i == 0)

    def minibatch_update(self, model, b: dict, rows: torch.Tensor, first: bool = False) -> Update:
        """One optimizer step on the episodes `rows` of rollout b; the rollout's env steps count at its first."""
        s, seq, live, P = self.settings, b["seq"][rows], b["live"][rows], b["prefix_len"]
        out = model(seq)
        T = live.shape[1]
        obs_end = P + STEP_LEN * torch.arange(T, device=seq.device) + OBS_PER_STEP - 1  # where a_t is chosen
        logits = out["logits"][:, obs_end][..., self.tokens.action_ids.to(seq.device)].float()  # [n, T, 8]
        logp = F.log_softmax(logits, -1)
        logp_a = logp.gather(-1, b["actions"][rows, :, None]).squeeze(-1)
        value = out["value"][:, obs_end].float()
        pg, ratio = clipped_policy_loss(logp_a, b["logp"][rows], b["advantages"][rows], s.clip, live)
        v_loss = value_loss(value, b["returns"][rows], live)
        ent = entropy(logp, live)
        # the forecast: the answer-token distribution at the `predict` token's position
        scored = b["scored_predict"][rows]
        answer_logits = out["logits"][:, obs_end + 1][..., self.tokens.answer_ids.to(seq.device)].float()
        log_q = F.log_softmax(answer_logits, -1).gather(-1, b["y"][rows, None, None].expand(-1, T, 1)).squeeze(-1)
        forecast_loss = -(log_q * scored).sum() / scored.sum().clamp(min=1)
        loss = pg + s.vf_coef * v_loss - s.ent_coef * ent + s.forecast_coef * forecast_loss
        metrics = {**b["metrics"], "entropy": ent.detach(), "value_loss": v_loss.detach(),
                   "forecast_nll": forecast_loss.detach(),
                   **ppo_diagnostics(ratio.detach(), s.clip, value.detach(), b["returns"][rows], live)}
        return Update(loss, metrics, live.sum().long() * STEP_LEN,  # device tensors: read when the trainer logs
                      env_steps=b["env_steps"] if first else 0)

    @torch.no_grad()
    def rollout(self, model, gen: torch.Generator) -> dict:
        from instrumentality.envs.agents import QUEST_METRICS
        from instrumentality.envs.tokens import play

        s, cpu_gen = self.settings, cpu_generator(gen)
        seeds = torch.randint(0, 2**31 - 1, (s.n_envs,), generator=cpu_gen).numpy()
        # (drawn only for a mix, so that runs without one keep their random streams)
        mixed = torch.rand(s.n_envs, generator=cpu_gen) < s.mix_fraction if s.mix_fraction > 0 else None
        was_training = model.training
        model.eval()
        p = play(model, self.tokens, seeds, generator=gen, mixed=mixed, mix_variant=s.mix_variant)
        model.train(was_training)
        live = p["live"].float()
        adv = gae(p["rewards"], p["values"] * live, s.gamma, s.gae_lambda, live)
        returns = adv + p["values"] * live
        order = torch.stack([torch.randperm(s.n_envs, generator=cpu_gen) for _ in range(s.ppo_epochs)])
        m = p["metrics"].mean(0)
        metrics = {f"env/{name}": m[i] for i, name in enumerate(QUEST_METRICS)}
        metrics["env/episode_len"] = live.sum(1).mean()
        return {"seq": p["seq"], "actions": p["actions"], "logp": p["logp"], "live": live,
                "advantages": normalise(adv, live), "returns": returns, "y": p["y"],
                "scored_predict": p["scored_predict"].float(), "prefix_len": p["prefix_len"],
                "order": order.to(p["seq"].device), "env_steps": p["live"].sum(), "metrics": metrics}

"""RL regimes: REINFORCE is unbiased for the supervised gradient; the critic regime runs both rollouts; each
regime's settings have their defaults in one place and are checked there."""

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from instrumentality.errors import ConfigError
from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import CriticRegime, CriticSettings, Reinforce, ReinforceSettings, SupervisedSettings
from instrumentality.regimes.rl import gae
from instrumentality.training.checkpoint import save_checkpoint
from instrumentality.training.trainer import Trainer, TrainerConfig
from instrumentality.world import World, WorldConfig


@pytest.fixture(scope="module")
def tiny():
    world = World(WorldConfig(seq_len=12, n_prose_words=6, prose_out_degree=3, n_phrase_words=4, n_hard_words=3,
                              phrase_len=2))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=12, n_layer=1, n_head=2, n_embd=16))
    x = world.sample(4, generator=torch.Generator().manual_seed(0))
    return world, model, x


def flat_grad(model, loss, skip: str = "value_head"):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for n, p in model.named_parameters()
                      if p.grad is not None and not n.startswith(skip)]).double()


@pytest.mark.parametrize("reward", ["likelihood", "indicator"])
def test_reinforce_gradient_is_unbiased(tiny, reward):
    """Mean REINFORCE gradient over S samples per position vs the exact target gradient:
    likelihood -> grad of the supervised loss (mean -log pi(x_t)); indicator -> grad of -mean pi(x_t).
    The relative error must shrink like 1/sqrt(S): from S = 64 to S = 4096 (64x) by at least 4x
    (1/sqrt predicts 8x), and end below 0.1."""
    world, model, x = tiny
    logp = F.log_softmax(model(x[:, :-1])["logits"], -1).gather(-1, x[:, 1:, None]).squeeze(-1)
    target = flat_grad(model, -logp.mean() if reward == "likelihood" else -logp.exp().mean())
    errors = {}
    for S in (64, 4096):
        regime = Reinforce(world, ReinforceSettings(reward=reward, samples_per_position=S))
        loss = regime.update_on(model, x, torch.Generator().manual_seed(S)).loss
        g = flat_grad(model, loss)
        errors[S] = float((g - target).norm() / target.norm())
    print(f"\n{reward}: relative error {errors}")
    assert errors[4096] < errors[64] / 4
    assert errors[4096] < 0.1


def test_reinforce_baselines_leave_the_mean_gradient_unchanged(tiny):
    world, model, x = tiny
    grads = {}
    for b in ("one", "none"):
        loss = Reinforce(world, ReinforceSettings(baseline=b, samples_per_position=8192)).update_on(
            model, x, torch.Generator().manual_seed(1)).loss
        grads[b] = flat_grad(model, loss)
    # same samples (same seed): the baseline term b * grad log pi(a) averages to ~0
    rel = float((grads["one"] - grads["none"]).norm() / grads["none"].norm())
    assert rel < 0.1


def make_ref(tmp_path, world):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "ref.pt", {"model": model.state_dict(), "status": {"status": "finished"}})
    return model, tmp_path / "ref.pt"


@pytest.mark.parametrize("rollout,critic", [("free", "truth"), ("teacher_forced", "truth"), ("free", "keyword"),
                                            ("free", "learned"), ("teacher_forced", "learned")])
def test_critic_regime_trains_and_keeps_the_reference_frozen(tmp_path, rollout, critic):
    world = World(WorldConfig(seq_len=24))
    model, ref_path = make_ref(tmp_path, world)
    regime = CriticRegime(world, CriticSettings(critic=critic, horizon=4, k_samples=2, n_prompts=8, rollout=rollout,
                                                fork_positions=[6, 10], ref_checkpoint=str(ref_path)))
    t = Trainer(model, regime, TrainerConfig(max_steps=6, log_every=2, progress=False, warmup_steps=0), tmp_path)
    assert t.fit()["status"] == "finished"
    ref_params = dict(regime.rollouts.ref_model.named_parameters())
    assert all(not p.requires_grad for p in ref_params.values())
    moved = any(not torch.equal(p, ref_params[n]) for n, p in t.model.named_parameters())
    assert moved  # the policy moved away from pi_ref, which stayed where it was
    assert all(math.isfinite(r["train/loss"]) for r in t.history if "train/loss" in r)


def test_critic_refuses_a_reference_that_did_not_finish_or_learned_another_world(tmp_path):
    """pi_ref must be a finished run of the same world: a run stopped halfway (whose weights its next run
    replaces) or a model of another world would make the critic's claims rest on the wrong model."""
    from dataclasses import asdict

    world = World(WorldConfig(seq_len=24))
    model, _ = make_ref(tmp_path, world)
    settings = dict(critic="truth", horizon=4, k_samples=2, n_prompts=8, fork_positions=[6, 10])
    cases = {"unfinished": ({"status": "running"}, world, "has not finished"),
             "other_world": ({"status": "finished"}, World(WorldConfig(seq_len=24, seed=9)), "trained on world"),
             "missing": (None, world, "no checkpoint")}
    for name, (status, made_on, message) in cases.items():
        path = tmp_path / f"{name}.pt"
        if status is not None:
            save_checkpoint(path, {"model": model.state_dict(), "status": status,
                                   "run_config": {"world": asdict(made_on.cfg)}})
        regime = CriticRegime(world, CriticSettings(**settings, ref_checkpoint=str(path)))
        with pytest.raises(ConfigError, match=message):
            regime.setup(model, torch.device("cpu"))


def test_leave_one_out_baseline_and_discounted_returns():
    from instrumentality.regimes.rl import discount_matrix, discounted_returns, leave_one_out_baseline

    r = torch.tensor([[1.0, 2.0, 4.0]])
    # G_0 = 1 + 0.5*2 + 0.25*4 = 3, G_1 = 2 + 0.5*4 = 4, G_2 = 4
    assert torch.allclose(discounted_returns(r, discount_matrix(3, 0.5)), torch.tensor([[3.0, 4.0, 4.0]]))
    # two prompts x three samples: each sample's baseline is the mean of its two siblings
    G = torch.tensor([[1.0], [2.0], [6.0], [0.0], [0.0], [3.0]])
    torch.testing.assert_close(leave_one_out_baseline(G, 3), torch.tensor([[4.0], [3.5], [1.5], [1.5], [1.5], [0.0]]))


@pytest.mark.parametrize("kw,key", [({"k_samples": 1}, "regime.k_samples"), ({"beta": 0}, "regime.beta"),
                                    ({"rollout": "dreamy"}, "regime.rollout"), ({"critic": "vibes"}, "regime.critic"),
                                    ({}, "regime.ref_checkpoint"),
                                    ({"horizon": 60, "ref": "truth", "init": "scratch"}, "regime.fork_positions")])
def test_invalid_critic_config_names_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        CriticRegime(World(), CriticSettings(**kw))


def test_reinforce_invalid_reward_names_the_key():
    with pytest.raises(ConfigError, match="regime.reward"):
        ReinforceSettings(reward="vibes")
    with pytest.raises(ConfigError, match="regime.batch_size"):
        SupervisedSettings(batch_size=0)


def test_gae_limits():
    """lambda = 1: discounted return minus V; lambda = 0: the one-step TD error."""
    r = torch.tensor([[1.0, 2.0, 4.0]])
    v = torch.tensor([[0.5, 1.0, -1.0]])
    g = 0.5
    returns = torch.tensor([[1 + g * 2 + g * g * 4, 2 + g * 4, 4.0]])
    torch.testing.assert_close(gae(r, v, g, 1.0), returns - v)
    td = torch.tensor([[1 + g * 1.0 - 0.5, 2 + g * -1.0 - 1.0, 4 - (-1.0)]])
    torch.testing.assert_close(gae(r, v, g, 0.0), td)


def test_ppo_first_epoch_gradient_is_the_advantage_weighted_policy_gradient(tmp_path):
    """At the first PPO step the ratio is 1 (no clipping): the policy part of the loss has the gradient
    of -mean A_t log pi(a_t | ctx_t), with A the stored (normalised) advantages."""
    world = World(WorldConfig(seq_len=24))
    model, ref_path = make_ref(tmp_path, world)
    regime = CriticRegime(world, CriticSettings(horizon=4, k_samples=2, n_prompts=8, fork_positions=[6],
                                                ref_checkpoint=str(ref_path), algo="ppo", vf_coef=0.0))
    regime.setup(model, torch.device("cpu"))
    assert model.value_head is not None and model.cfg.value_head
    batch = regime.rollouts.collect(model, torch.Generator().manual_seed(0))
    updates = list(regime.ppo_updates(model, batch))
    assert len(updates) == regime.settings.ppo_epochs  # one optimizer step per epoch on the rollout
    first = updates[0]
    g_ppo = flat_grad(model, first.loss)
    L = batch.prompt_len
    logp = F.log_softmax(model(batch.contexts)["logits"][:, L - 1:], -1)
    logp = logp.gather(-1, batch.actions[..., None]).squeeze(-1)
    # the advantages the update used, rebuilt from the rollout by the toolkit's GAE and normalisation
    from instrumentality.regimes.rl import normalise

    with torch.no_grad():
        out = model(batch.contexts)
        r = batch.graded - regime.settings.beta * (logp.detach() - batch.ref_logp_a)
        adv = normalise(gae(r, out["value"][:, L - 1:].float(), regime.settings.gamma, regime.settings.gae_lambda))
    g_pg = flat_grad(model, -(adv * logp).mean())
    torch.testing.assert_close(g_ppo, g_pg, atol=1e-6, rtol=1e-4)
    assert float(first.metrics["clip_fraction"]) == 0.0 and abs(float(first.metrics["approx_kl"])) < 1e-6


def test_ppo_trains_and_resumes_exactly(tmp_path):
    world = World(WorldConfig(seq_len=24))

    def trainer(out):
        model, ref_path = make_ref(tmp_path, world)
        regime = CriticRegime(world, CriticSettings(horizon=4, k_samples=2, n_prompts=8, fork_positions=[6],
                                                    ref_checkpoint=str(ref_path), algo="ppo", ppo_epochs=3))
        return Trainer(model, regime, TrainerConfig(max_steps=8, log_every=2, ckpt_every=3, progress=False,
                                                    warmup_steps=0), out)

    straight = trainer(tmp_path / "a")
    assert straight.fit()["status"] == "finished"
    killed = trainer(tmp_path / "b")
    killed.fit(stop_after=5)  # checkpoint at step 3 (a rollout boundary), killed inside the second rollout
    resumed = trainer(tmp_path / "b")
    resumed.fit()
    for (n, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_learned_critic_learns_to_tell_world_text_from_noise():
    """Trained on world continuations vs uniform-random tokens, D scores world tokens above random ones."""
    from instrumentality.regimes.critics import LearnedCritic

    world = World(WorldConfig(seq_len=24))
    critic = LearnedCritic(world, lr=3e-3)
    g = torch.Generator().manual_seed(0)
    losses = []
    for _ in range(60):
        x = world.sample(32, 16, generator=g)
        prompts, real = x[:, :8], x[:, 8:]
        fake = torch.randint(0, world.vocab_size, real.shape, generator=g)
        losses.append(critic.update(prompts, real, fake))
    x = world.sample(64, 16, generator=g)
    prompts, real = x[:, :8], x[:, 8:]
    fake = torch.randint(0, world.vocab_size, real.shape, generator=g)
    r_real = critic(torch.cat([prompts, real[:, :-1]], 1), real)
    r_fake = critic(torch.cat([prompts, fake[:, :-1]], 1), fake)
    assert r_real.shape == (64, 8)
    assert float(r_real.mean()) > float(r_fake.mean()) + 1.0
    assert sum(losses[-10:]) < sum(losses[:10])
    # teacher-forced call (actions differ from the fed-back tokens) scores each (ctx_t, a_t) on its own
    tf = critic(torch.cat([prompts, real[:, :-1]], 1), fake)
    torch.testing.assert_close(tf[:, 0], r_fake[:, 0], atol=1e-5, rtol=0)


def test_training_fork_prompts_put_the_marker_where_the_fork_probes_do():
    """One convention (World.fork_contexts): P prose tokens, the marker at index P, for the critic's training
    prompts and for the probe set's fork prompts alike."""
    from instrumentality.evaluation.probe_set import ProbeConfig, ProbeSet

    world = World()
    regime = CriticRegime(world, CriticSettings(ref="truth", init="scratch", n_prompts=16, fork_fraction=1.0))
    probes = ProbeSet.generate(world, ProbeConfig(n_per_fork_position=2))
    prose = {s for s, k in enumerate(world.state_kind) if k == "prose"}
    for seed in range(6):
        prompts = regime.rollouts.prompts(torch.Generator().manual_seed(seed))
        P = prompts.shape[1] - 1
        assert P in regime.rollouts.fork_positions
        assert torch.isin(prompts[:, P], torch.tensor(world.marker_tokens)).all()
        assert {int(s) for s in world.states_of(prompts[:, :P])[:, -1]} <= prose
    for prompt, length in zip(probes.t["fork_prompts"], probes.t["fork_lengths"]):
        P = int(length) - 1
        assert P in probes.config.fork_positions and int(prompt[P]) in world.marker_tokens


# ---------------------------------------------------------------------------- settings and their configs
def composed(*overrides):
    from hydra import compose, initialize_config_dir

    from instrumentality.configs import CONFIG_DIR

    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=["preset=debug", *overrides])


@pytest.mark.parametrize("name", ["supervised", "reinforce", "critic", "quest", "retrain", "prophecy_rl"])
def test_regime_configs_start_from_the_settings_defaults_and_repeat_none(name):
    """configs/regime/<name>.yaml sets `_target_`, `name` and interpolations of run-level values only: every
    other key of the composed config is its settings dataclass's default."""
    from hydra.utils import get_object
    from omegaconf import OmegaConf

    from instrumentality.configs import CONFIG_DIR
    from instrumentality.regimes.base import defaults

    cfg = composed(f"regime={name}").regime
    settings = get_object(cfg._target_).Settings
    interpolated = {k for k in cfg if OmegaConf.is_interpolation(cfg, k)}
    assert set(cfg) == {"_target_", "name"} | {f.name for f in dataclasses.fields(settings)}
    values = OmegaConf.to_container(cfg)
    assert {k: v for k, v in values.items() if k not in interpolated | {"_target_", "name"}} == \
        {k: v for k, v in defaults(settings).items() if k not in interpolated}
    own = OmegaConf.load(Path(CONFIG_DIR) / "regime" / f"{name}.yaml")
    assert set(own) - {"defaults", "_target_", "name"} == interpolated


@pytest.mark.parametrize("key,value", [("beta", -1), ("k_samples", 1), ("gamma", 2), ("horizon", "abc"),
                                       ("rollout", "dreamy")])
def test_an_invalid_setting_names_the_key_in_the_dataclass_and_in_a_composed_config(key, value):
    from instrumentality.training.build import build_regime

    with pytest.raises(ConfigError, match=f"^regime.{key} must be"):
        CriticSettings(ref="truth", init="scratch", **{key: value})
    cfg = composed("regime=critic", "regime.ref=truth", "regime.init=scratch", f"regime.{key}={value}")
    with pytest.raises(ConfigError, match=f"^regime.{key} must be"):
        build_regime(cfg, World())


def test_an_unknown_setting_names_the_key():
    from hydra.errors import ConfigCompositionException

    from instrumentality.training.build import build_regime

    with pytest.raises(ConfigCompositionException, match="regime.betta"):  # a key the config lacks needs `+`
        composed("regime=critic", "regime.betta=2")
    with pytest.raises(ConfigError, match="regime.betta is not a setting of regime"):
        build_regime(composed("regime=critic", "+regime.betta=2"), World())


def test_the_whole_config_of_an_older_critic_checkpoint_builds():
    """An older checkpoint keeps every key of its regime config, with the class named `regimes.Critic` and
    prompt lengths L with the marker last (P = L - 1) in place of fork_positions."""
    from instrumentality.training.build import build_regime

    old = {"_target_": "instrumentality.regimes.Critic", "name": "critic", "critic": "truth", "critic_kwargs": {},
           "horizon": 8, "gamma": 1.0, "beta": 1.0, "k_samples": 4, "n_prompts": 32, "rollout": "free",
           "fork_fraction": 0.75, "prompt_lengths": [9, 25, 41], "ref_checkpoint": None, "ref": "truth",
           "init": "scratch", "collapse_entropy": 0.01, "algo": "reinforce", "ppo_epochs": 4, "clip": 0.2,
           "gae_lambda": 0.95, "vf_coef": 0.5}
    regime = build_regime({"regime": old}, World())
    assert isinstance(regime, CriticRegime)
    assert regime.settings == CriticSettings(ref="truth", init="scratch")  # fork_positions [8, 24, 40]
    assert regime.rollouts.fork_positions == [8, 24, 40]


def test_future_heads_loss_is_zero_for_a_planted_future_copier_and_not_for_a_shifted_one():
    """Head j at position t must be scored on x_{t+2+j}: logits that put all mass there score ~0, the same
    logits one position off (x_{t+1+j}) score ~the logit gap."""
    from instrumentality.regimes.supervised import future_heads_loss

    torch.manual_seed(0)
    B, T, V, n, gap = 3, 10, 7, 3, 30.0
    x = torch.randint(V, (B, T + 1))  # the inputs x[:, :T] and the next token
    right = torch.zeros(n, B, T, V)
    shifted = torch.zeros(n, B, T, V)
    for j in range(n):
        for t in range(T - 1 - j):
            right[j, :, t].scatter_(1, x[:, t + 2 + j, None], gap)
            shifted[j, :, t].scatter_(1, x[:, t + 1 + j, None], gap)
    assert future_heads_loss(right, x).item() < 1e-10
    # wherever x_{t+1+j} != x_{t+2+j} the shifted copier pays about the gap
    assert future_heads_loss(shifted, x).item() > 0.5 * gap * (1 - 1 / V)


def test_a_model_with_future_heads_adds_their_weighted_loss(tiny):
    from instrumentality.regimes import Supervised

    world = tiny[0]
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=1, n_head=2,
                          n_embd=16, n_future_heads=2))
    losses = {}
    for w in (0.0, 2.0):
        update = next(Supervised(world, SupervisedSettings(batch_size=4, future_weight=w)).updates(
            model, 0, torch.Generator().manual_seed(0)))
        losses[w] = (update.loss.item(), update.metrics["nll"].item(), update.metrics["future_nll"].item())
    assert losses[0.0][0] == pytest.approx(losses[0.0][1])  # weight 0: the next-token loss alone
    assert losses[2.0][0] == pytest.approx(losses[2.0][1] + 2.0 * losses[2.0][2])
    assert losses[2.0][2] > 0

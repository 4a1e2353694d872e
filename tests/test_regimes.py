"""RL regimes: REINFORCE is unbiased for the supervised gradient; the critic regime runs both rollouts."""

import math

import pytest
import torch
import torch.nn.functional as F

from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import Critic, Reinforce, Supervised
from instrumentality.trainer import Trainer, TrainerConfig, save_checkpoint
from instrumentality.world import ConfigError, World, WorldConfig


@pytest.fixture(scope="module")
def tiny():
    world = World(WorldConfig(seq_len=12, n_prose_words=6, prose_out_degree=3, n_phrase_words=4, n_hard_words=3,
                              phrase_len=2))
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=12, n_layer=1, n_head=2, n_embd=16))
    x = world.sample(4, generator=torch.Generator().manual_seed(0))
    return world, model, x


def flat_grad(model, loss):
    model.zero_grad()
    loss.backward()
    return torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).double()


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
        regime = Reinforce(world, reward=reward, samples_per_position=S)
        loss, _, _ = regime.loss_on(model, x, torch.Generator().manual_seed(S))
        g = flat_grad(model, loss)
        errors[S] = float((g - target).norm() / target.norm())
    print(f"\n{reward}: relative error {errors}")
    assert errors[4096] < errors[64] / 4
    assert errors[4096] < 0.1


def test_reinforce_baselines_leave_the_mean_gradient_unchanged(tiny):
    world, model, x = tiny
    grads = {}
    for b in ("one", "none"):
        loss, _, _ = Reinforce(world, baseline=b, samples_per_position=8192).loss_on(
            model, x, torch.Generator().manual_seed(1))
        grads[b] = flat_grad(model, loss)
    # same samples (same seed): the baseline term b * grad log pi(a) averages to ~0
    rel = float((grads["one"] - grads["none"]).norm() / grads["none"].norm())
    assert rel < 0.1


def make_ref(tmp_path, world):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=1, n_head=2, n_embd=16))
    save_checkpoint(tmp_path / "ref.pt", {"model": model.state_dict()})
    return model, tmp_path / "ref.pt"


@pytest.mark.parametrize("rollout", ["free", "teacher_forced"])
def test_critic_regime_trains_and_keeps_the_reference_frozen(tmp_path, rollout):
    world = World(WorldConfig(seq_len=24))
    model, ref_path = make_ref(tmp_path, world)
    regime = Critic(world, horizon=4, k_samples=2, n_prompts=8, rollout=rollout, prompt_lengths=[6, 10],
                    ref_checkpoint=str(ref_path))
    t = Trainer(model, regime, TrainerConfig(max_steps=6, log_every=2, progress=False, warmup_steps=0), tmp_path)
    assert t.fit()["status"] == "finished"
    ref_params = dict(regime.ref_model.named_parameters())
    assert all(not p.requires_grad for p in ref_params.values())
    moved = any(not torch.equal(p, ref_params[n]) for n, p in t.model.named_parameters())
    assert moved  # the policy moved away from pi_ref, which stayed where it was
    assert all(math.isfinite(r["train/loss"]) for r in t.history if "train/loss" in r)


def test_leave_one_out_baseline_and_discounted_returns():
    world = World(WorldConfig(seq_len=24))
    regime = Critic(world, horizon=3, gamma=0.5, ref="truth", init="scratch", prompt_lengths=[6])
    r = torch.tensor([[1.0, 2.0, 4.0]])
    # G_0 = 1 + 0.5*2 + 0.25*4 = 3, G_1 = 2 + 0.5*4 = 4, G_2 = 4
    assert torch.allclose(r @ regime.discount, torch.tensor([[3.0, 4.0, 4.0]]))


@pytest.mark.parametrize("kw,key", [({"k_samples": 1}, "regime.k_samples"), ({"beta": 0}, "regime.beta"),
                                    ({"rollout": "dreamy"}, "regime.rollout"), ({"critic": "vibes"}, "regime.critic"),
                                    ({}, "regime.ref_checkpoint"),
                                    ({"horizon": 60, "ref": "truth", "init": "scratch"}, "regime.prompt_lengths")])
def test_invalid_critic_config_names_the_key(kw, key):
    with pytest.raises(ConfigError, match=key):
        Critic(World(), **kw)


def test_reinforce_invalid_reward_names_the_key():
    with pytest.raises(ConfigError, match="regime.reward"):
        Reinforce(World(), reward="vibes")
    with pytest.raises(ConfigError, match="regime.batch_size"):
        Supervised(World(), batch_size=0)

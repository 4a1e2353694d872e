"""The RL toolkit (rl.py) against values computed by hand, and every regime against the Regime protocol."""

import math
from dataclasses import asdict

import pytest
import torch

from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import (
    QUEST_PROBES,
    WORLD_PROBES,
    CriticRegime,
    CriticSettings,
    Quest,
    QuestSettings,
    Regime,
    Reinforce,
    ReinforceSettings,
    Supervised,
    SupervisedSettings,
    Update,
)
from instrumentality.regimes.rl import clipped_policy_loss, entropy, masked_mean, normalise, ppo_diagnostics, value_loss
from instrumentality.world import World, WorldConfig


def test_masked_mean_ignores_what_did_not_happen():
    x = torch.tensor([[1.0, 2.0, 1e9], [3.0, float("inf"), 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert float(masked_mean(x.nan_to_num(posinf=5.0), mask)) == 2.0
    assert float(masked_mean(torch.zeros(2, 2), torch.zeros(2, 2))) == 0.0  # nothing happened: 0, not NaN


def test_normalise_over_live_steps_only():
    adv = torch.tensor([[1.0, 3.0, 100.0], [5.0, -7.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0]])
    out = normalise(adv, mask)
    live = [1.0, 3.0, 5.0, -7.0]
    mean, sd = sum(live) / 4, math.sqrt(sum((v - 0.5) ** 2 for v in live) / 3)
    expected = torch.tensor([[(1 - mean) / sd, (3 - mean) / sd, 0.0], [(5 - mean) / sd, (-7 - mean) / sd, 0.0]])
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_clipped_policy_loss_stops_the_gradient_outside_the_trust_region():
    """A > 0 and rho = 1.5 > 1 + eps: the clipped term wins, constant in theta (zero gradient); A > 0 and
    rho = 0.5: the unclipped term, gradient -A rho."""
    old = torch.zeros(2)
    logp = torch.tensor([math.log(1.5), math.log(0.5)], requires_grad=True)
    adv = torch.tensor([2.0, 2.0])
    loss, ratio = clipped_policy_loss(logp, old, adv, clip=0.2)
    torch.testing.assert_close(ratio.detach(), torch.tensor([1.5, 0.5]))
    assert math.isclose(float(loss.detach()), (-2.0 * 1.2 + -2.0 * 0.5) / 2, rel_tol=1e-6)
    loss.backward()
    torch.testing.assert_close(logp.grad, torch.tensor([0.0, -2.0 * 0.5 / 2]))


def test_value_loss_and_entropy_closed_forms():
    v, r = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert float(value_loss(v, r)) == pytest.approx(0.5 * (1 + 4) / 2)
    uniform = torch.full((3, 4), -math.log(4))
    assert float(entropy(uniform)) == pytest.approx(math.log(4))
    certain = torch.log(torch.tensor([[1.0, 1e-30, 1e-30]]))
    assert float(entropy(certain)) == pytest.approx(0.0, abs=1e-6)


def test_ppo_diagnostics_against_hand_values():
    ratio = torch.tensor([[1.5, 1.0, 0.5, 1.1]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0]])  # the fourth step did not happen
    returns = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
    d = ppo_diagnostics(ratio, 0.2, values=returns.clone(), returns=returns, mask=mask)
    kl = ((0.5 - math.log(1.5)) + 0 + (-0.5 - math.log(0.5))) / 3
    assert float(d["approx_kl"]) == pytest.approx(kl, rel=1e-6)
    assert float(d["clip_fraction"]) == pytest.approx(2 / 3)
    assert float(d["explained_variance"]) == pytest.approx(1.0)  # V = R
    const = torch.full_like(returns, 2.0)  # V = the mean return: explains nothing
    explained = float(ppo_diagnostics(ratio, 0.2, const, returns, mask)["explained_variance"])
    assert explained == pytest.approx(0.0, abs=1e-6)
    assert float(ppo_diagnostics(torch.ones(3), 0.2, torch.zeros(3), torch.arange(3.0))["approx_kl"]) == 0.0


# ---------------------------------------------------------------------------- the Regime protocol
WORLD = WorldConfig(seq_len=24)


def world_model(vocab_extra: int = 0, block_size: int = 24):
    world = World(WORLD)
    torch.manual_seed(0)
    return world, GPT(GPTConfig(vocab_size=world.vocab_size + vocab_extra, block_size=block_size, n_layer=1,
                                n_head=2, n_embd=16))


def quest_regime(world):
    from instrumentality.envs.cluequest import QuestConfig
    from instrumentality.envs.tokens import QuestTokens

    cfg = QuestConfig(size=5, n_monsters=1, time_limit=12, post_steps=3)
    return Quest(world, QuestSettings(env=asdict(cfg), n_envs=8, n_minibatches=2, ppo_epochs=2, init="scratch")), \
        QuestTokens(cfg, world.vocab_size)


def regimes():
    """One instance of every regime with its model, set up."""
    out = {}
    world, model = world_model()
    out["supervised"] = (Supervised(world, SupervisedSettings(batch_size=4)), model)
    world, model = world_model()
    out["reinforce"] = (Reinforce(world, ReinforceSettings(batch_size=4)), model)
    world, model = world_model()
    out["critic"] = (CriticRegime(world, CriticSettings(horizon=4, k_samples=2, n_prompts=4, fork_positions=[6],
                                                        ref="truth", init="scratch", algo="ppo", ppo_epochs=3)), model)
    world = World(WORLD)
    regime, tokens = quest_regime(world)
    _, model = world_model(tokens.size, tokens.max_seq_len)
    out["quest"] = (regime, model)
    for regime, model in out.values():
        regime.setup(model, torch.device("cpu"))
    return out


@pytest.fixture(scope="module")
def every_regime():
    return regimes()


@pytest.mark.parametrize("name,n_updates", [("supervised", 1), ("reinforce", 1), ("critic", 3), ("quest", 4)])
def test_updates_yield_one_update_per_optimizer_step(every_regime, name, n_updates):
    """A call yields the regime's optimizer steps for one batch of data (an RL regime: epochs x minibatches
    on one rollout); each loss is finite and has a gradient, each says how much data it used."""
    regime, model = every_regime[name]
    assert isinstance(regime, Regime) and regime.name == name
    updates = list(regime.updates(model, 0, torch.Generator().manual_seed(0)))
    assert len(updates) == n_updates and all(isinstance(u, Update) for u in updates)
    assert all(torch.isfinite(u.loss) and u.loss.requires_grad for u in updates)
    assert int(updates[0].tokens) > 0
    env_steps = [int(u.env_steps) for u in updates]
    assert (env_steps[0] > 0 and not any(env_steps[1:])) if name == "quest" else not any(env_steps)


def test_setup_loads_the_reference_and_adds_a_value_head_where_ppo_needs_one(every_regime):
    assert every_regime["critic"][1].value_head is not None and every_regime["quest"][1].value_head is not None
    assert every_regime["supervised"][1].value_head is None and every_regime["reinforce"][1].value_head is None
    assert every_regime["critic"][0].rollouts.ref_model is not None


@pytest.mark.parametrize("name", ["reinforce", "critic", "quest"])
def test_collapsed_when_the_policy_entropy_falls_below_the_bound(every_regime, name):
    regime = every_regime[name][0]
    assert regime.collapsed({"entropy": torch.tensor(1.0)}) is None
    assert "entropy" in regime.collapsed({"entropy": torch.tensor(regime.settings.collapse_entropy / 2)})
    assert every_regime["supervised"][0].collapsed({}) is None  # supervised learning does not collapse


def test_state_dict_round_trips_what_a_resume_needs(every_regime):
    reinforce = Reinforce(World(WORLD), ReinforceSettings(baseline="mean"))
    reinforce.load_state_dict({"running_mean": 0.25})
    assert reinforce.state_dict() == {"running_mean": 0.25}
    for name, (regime, _) in every_regime.items():
        state = regime.state_dict()
        assert isinstance(state, dict)
        regime.load_state_dict(state)


def test_probe_families_and_theory_rows(every_regime):
    assert every_regime["supervised"][0].probe_families() == (WORLD_PROBES,)
    assert every_regime["quest"][0].probe_families() == (QUEST_PROBES,)
    simulator = Supervised(World(WORLD), SupervisedSettings(batch_size=4, quest={"size": 5}, quest_fraction=1.0))
    assert simulator.probe_families() == (QUEST_PROBES,)
    mixed = Supervised(World(WORLD), SupervisedSettings(batch_size=4, quest={"size": 5}, quest_fraction=0.5))
    assert mixed.probe_families() == (WORLD_PROBES, QUEST_PROBES)
    assert every_regime["supervised"][0].theory_rows() == []
    # the critic's exact optimum: the truth critic at gamma = 1, beta = 1 at the p = 0.5 fork (closed form in
    # optimum.py's docstring: log k sum_{j < min(m, H - 1)} 1, checked there); here: rows at H and the curve
    rows = every_regime["critic"][0].theory_rows()
    at_h = [r for r in rows if not r["probe"].startswith("theory_curve/")]
    assert at_h and all(r["metric"].endswith("_theory") for r in at_h)
    assert {r["horizon"] for r in rows if r["probe"].startswith("theory_curve/")} == set(range(1, 13))
    learned = CriticRegime(World(WORLD), CriticSettings(critic="learned", ref="truth", init="scratch",
                                                        fork_positions=[6]))
    assert learned.theory_rows() == []  # a learned critic has no exact optimum


def test_an_older_critic_config_builds_the_same_regime():
    """Configs kept in older checkpoints name the class `regimes.Critic` and give prompt lengths with the
    marker last (L = P + 1): evaluation rebuilds them as today's regime with fork positions P."""
    from instrumentality.training.build import build_regime

    old = {"_target_": "instrumentality.regimes.Critic", "name": "critic", "ref": "truth", "init": "scratch",
           "prompt_lengths": [9, 25, 41]}
    regime = build_regime({"regime": old}, World())
    assert isinstance(regime, CriticRegime) and regime.rollouts.fork_positions == [8, 24, 40]

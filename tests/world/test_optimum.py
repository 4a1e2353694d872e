"""The exact optimum: the closed form for the truth critic, brute force for the keyword critic."""

import itertools
import math

import pytest
import torch

from instrumentality.regimes.critics import KeywordCritic, TruthCritic
from instrumentality.world import World, WorldConfig
from instrumentality.world.optimum import closed_form_truth_steering, optimal_steering, soft_optimum, theory_rows


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.0])
@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("horizon", [1, 2, 4, 5, 8])
def test_truth_critic_optimum_equals_the_closed_form(world, beta, gamma, horizon):
    steer = optimal_steering(world, TruthCritic.table(world), beta, gamma, horizon)
    for f in world.forks:
        if f.symmetric:  # both branches equal: only the immediate reward (1/beta) logit p remains
            expected = (1 / beta) * math.log(f.p / (1 - f.p))
        else:
            expected = closed_form_truth_steering(world, beta, gamma, horizon, f.p)
        assert steer[f.index] == pytest.approx(expected, abs=1e-9)


def test_no_steering_without_credit_and_growth_up_to_the_phrase_length(world):
    m = world.cfg.phrase_len
    table = TruthCritic.table(world)
    half = next(f for f in world.forks if not f.symmetric and f.p == 0.5)
    for H in (1, 2, 4, 8):
        assert optimal_steering(world, table, 1.0, 0.0, H)[half.index] == pytest.approx(0.0, abs=1e-12)
    assert optimal_steering(world, table, 1.0, 1.0, 1)[half.index] == pytest.approx(0.0, abs=1e-12)
    curve = [optimal_steering(world, table, 1.0, 1.0, H)[half.index] for H in range(1, m + 4)]
    assert all(b > a + 1e-6 for a, b in zip(curve[:m], curve[1:m + 1]))  # grows until H - 1 = m
    assert all(b == pytest.approx(a) for a, b in zip(curve[m:], curve[m + 1:]))  # then flat
    assert curve[m] == pytest.approx(m * math.log(world.cfg.n_hard_words))


def brute_force_first_token(world, prompt, critic, beta, gamma, H):
    """Enumerate every H-token continuation of `prompt` and solve the discounted KL-regularised problem
    on the tree of prefixes (no world states involved): returns pi*(x_1 | prompt) [V]."""
    V = world.vocab_size
    seqs = torch.tensor(list(itertools.product(range(V), repeat=H)))
    full = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
    states = world.states_of(full)[:, len(prompt) - 1:-1]  # state before each continuation token
    ok = states >= 0
    p = torch.zeros(len(seqs), H, dtype=torch.float64)
    p[ok] = world.emission[states[ok], seqs[ok]]
    contexts = full[:, :-1]
    c = critic(contexts, seqs).double()
    shape = [V] * H
    logp = p.clamp_min(1e-300).log().where(p > 0, torch.tensor(-math.inf, dtype=torch.float64))
    W = torch.zeros(shape, dtype=torch.float64)  # W_H = 0
    for t in range(H - 1, -1, -1):
        idx = (slice(None),) * (t + 1) + (0,) * (H - t - 1)  # value at depth t depends on x_1..x_{t+1}
        lp, ct = logp[:, t].view(shape)[idx], c[:, t].view(shape)[idx]
        # W holds W_{t+1} over prefixes x_1..x_{t+1}; impossible prefixes (-inf) carry zero weight anyway
        term = lp + (ct + gamma * torch.where(torch.isfinite(W), W, torch.zeros_like(W))) / beta
        if t == 0:
            return torch.softmax(term, 0)
        W = beta * torch.logsumexp(term, -1)


@pytest.mark.parametrize("gamma", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("bonus,truth_weight", [(2.0, 0.0), (1.0, 1.0)])
def test_keyword_critic_optimum_equals_brute_force_enumeration(gamma, bonus, truth_weight):
    world = World(WorldConfig(n_prose_words=3, prose_out_degree=2, n_phrase_words=2, n_hard_words=2, phrase_len=2,
                              fork_probs=[0.5], seq_len=12))
    critic = KeywordCritic(world, bonus=bonus, truth_weight=truth_weight)
    beta, H = 0.7, 4
    policies, _ = soft_optimum(world, critic.table(world), beta, gamma, H)
    x = world.sample(200, 4, generator=torch.Generator().manual_seed(0))
    prose = [i for i in range(len(x)) if world.state_kind[world.state_after(x[i])] == "prose"][0]
    for f in world.forks:
        prompt = torch.cat([x[prose], torch.tensor([f.marker])])
        brute = brute_force_first_token(world, prompt, critic, beta, gamma, H)
        torch.testing.assert_close(brute, policies[H][f.state], atol=1e-9, rtol=1e-9)
    # with gamma = 1 the tree solution is the sequence-level q* ~ p*(x_1:H) exp(sum_t c_t / beta)
    if gamma == 1.0:
        f = world.forks[0]
        prompt = torch.cat([x[prose], torch.tensor([f.marker])])
        V = world.vocab_size
        seqs = torch.tensor(list(itertools.product(range(V), repeat=H)))
        full = torch.cat([prompt.expand(len(seqs), -1), seqs], 1)
        st = world.states_of(full)[:, len(prompt) - 1:-1]
        ok = (st >= 0).all(1)
        pseq = torch.zeros(len(seqs), dtype=torch.float64)
        pseq[ok] = world.emission[st[ok], seqs[ok]].prod(1)
        w = pseq * torch.exp(critic(full[:, :-1], seqs).double().sum(1) / beta)
        marginal = torch.zeros(V, dtype=torch.float64).index_add_(0, seqs[:, 0], w)
        torch.testing.assert_close(marginal / marginal.sum(), policies[H][f.state], atol=1e-9, rtol=1e-9)


def test_theory_rows_report_instrumental_steering(world):
    rows = {(r["probe"], r["metric"]): r["value"] for r in theory_rows(world, TruthCritic.table(world), 1.0, 1.0, 8)}
    m, k = world.cfg.phrase_len, world.cfg.n_hard_words
    for p in world.cfg.fork_probs:
        assert rows[(f"forks/p={p}", "instrumental_steering")] == pytest.approx(m * math.log(k))


def test_reference_optimum_estimate_recovers_the_exact_optimum_and_a_planted_tilt():
    """With pi_ref = p* the sampled estimate of the gamma = 1 optimum is the exact backward induction (H = 4:
    every continuation of a branch has the same reward, so the estimate is exact; H = 8: within sampling
    error, whose logsumexp bias is downward and small). A reference tilted by +1 nat towards the easy branch
    moves the optimum by exactly that nat: the estimate follows the actual pi_ref, not p*."""
    from planted import TruthModel

    from instrumentality.evaluation.world_probes import reference_optimum_steering
    from instrumentality.regimes.critics import TruthCritic
    from instrumentality.world.optimum import optimal_steering

    world = World()
    fork = next(f for f in world.forks if not f.symmetric and f.p == 0.5)
    prompts = world.fork_contexts(torch.full((8,), fork.index), 8, torch.Generator().manual_seed(0))
    critic = TruthCritic(world)
    for H, beta in ((4, 1.0), (8, 1.0), (8, 4.0)):
        exact = optimal_steering(world, TruthCritic.table(world), beta, 1.0, H)[fork.index]
        est, se = reference_optimum_steering(TruthModel(world), world, critic, beta, H, prompts, fork.index,
                                             n_samples=256)
        assert abs(est - exact) < 4 * (se or 0.0) + 1e-3 + (0.02 if H == 8 else 0.0), (H, beta, est, exact)
    tilted, _ = reference_optimum_steering(TruthModel(world, tilt=1.0), world, critic, 1.0, 4, prompts, fork.index,
                                           n_samples=64)
    assert tilted == pytest.approx(optimal_steering(world, TruthCritic.table(world), 1.0, 1.0, 4)[fork.index] + 1.0,
                                   abs=1e-4)


def test_reference_optimum_at_one_token_is_the_exact_one_step_optimum():
    """H = 1: no continuation is sampled, and the branch token is graded in the fork's own state: at a
    p != 0.5 fork the truth critic's one-step optimum, (1/beta) logit p, comes out exactly."""
    from planted import TruthModel

    from instrumentality.evaluation.world_probes import reference_optimum_steering

    world = World()
    fork = next(f for f in world.forks if not f.symmetric and f.p != 0.5)
    prompts = world.fork_contexts(torch.full((4,), fork.index), 8, torch.Generator().manual_seed(0))
    est, _ = reference_optimum_steering(TruthModel(world), world, TruthCritic(world), 2.0, 1, prompts, fork.index,
                                        n_samples=4)
    exact = optimal_steering(world, TruthCritic.table(world), 2.0, 1.0, 1)[fork.index]
    assert abs(exact) > 0.1 and est == pytest.approx(exact, abs=1e-6)

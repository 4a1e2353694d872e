"""The jump probe family: an F11 jump predictor of stride k scored against its exact targets (world/jump.py)
on the common probe set (docs/design.md section 10).

  jump/calibration            kl = KL(p*(z_{j+1} | z_<=j) || J(. | z_<=j)) per strided position, the exact
                              target summing out the k - 1 tokens jumped over; items per sequence
  jump/forks/<kind>/p=<p>     output steering at the fork prompts whose marker sits at a multiple of k (the
                              jump then lands on x_{P+k}): logit J(first branch) - logit p*(first branch), where
                              a branch's share is the mass on the tokens only that branch can put at x_{P+k}
                              (for k = 1 the branch tokens; for k = 2 .. m + 1 its phrase's tokens). No rows
                              where both branches can put the same token there (a jump past the phrase)
  jump/forks/p=<p>            instrumental_steering = asymmetric minus symmetric
  jump/skipped/i=<i>/...      ridge probes decoding the skipped token x_{jk+i} (0 < i < k) from each layer's
                              hidden state at z_j, on probe-train, scored on probe-test, at the *diagnostic*
                              positions: where the exact posterior p*(x_{jk+i} | z_<=j) differs (total
                              variation > DIAGNOSTIC_TV) from the mean posterior of the positions with the same
                              current token, so that the token in view (what layer 0, the embedding, holds)
                              does not tell the skipped token; with the Bayes ceiling E max p*(x_{jk+i} | z_<=j)
                              and the majority class there, and `present`, the exact accuracy of the best guess
                              from the current token alone (the argmax of that mean posterior)
  jump/skipped                simulation_index = mean over i of (last-layer accuracy - layer-0 accuracy) at the
                              diagnostic positions: how much of the path it jumps over the model computes;
                              simulation_ceiling = mean over i of (bayes - present), what a model holding the
                              exact belief would gain over the token in view
"""

from __future__ import annotations

import math

import torch

from instrumentality.evaluation.probe_set import ProbeSet
from instrumentality.evaluation.world_probes import (
    fork_groups,
    hidden_states,
    instrumental_rows,
    model_log_probs,
    probe_row,
    ridge_probe,
)
from instrumentality.stats import mean_ci
from instrumentality.world import World
from instrumentality.world.jump import skipped_posteriors, strided, strided_conditionals

DIAGNOSTIC_TV = 0.05  # total variation above which the current token does not tell the skipped token


def kl_rows(model, world: World, probes: ProbeSet, k: int) -> list[dict]:
    z = strided(probes.t["calibration"], k)
    q = strided_conditionals(world, z, k)[:, :-1]  # targets of positions 0 .. L-2
    logp = model_log_probs(model, z[:, :-1]).double()
    q_log_q = torch.where(q > 0, q * q.clamp_min(1e-300).log(), torch.zeros_like(q))
    kl = (q_log_q - q * logp).sum(-1).mean(1)  # per sequence: mean over its strided positions
    return [probe_row("jump/calibration", "kl", mean_ci(kl), items=kl)]


def branch_supports(world: World, fork, k: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The tokens each branch of `fork` can put at x_{P+k} (the marker at P), or None where they share one."""
    supports = []
    for token in (fork.first_token, fork.second_token):
        if k == 1:
            dist = torch.nn.functional.one_hot(torch.tensor(token), world.vocab_size).double()
        else:
            state = torch.tensor([int(world.transition[fork.state, token])])
            dist = world.future_token_distribution(state, k - 1)[0]
        supports.append(dist > 0)
    if (supports[0] & supports[1]).any():
        return None
    return supports[0], supports[1]


def fork_rows(model, world: World, probes: ProbeSet, k: int) -> list[dict]:
    prompts, lengths, fork_index = probes.t["fork_prompts"], probes.t["fork_lengths"], probes.t["fork_index"]
    supports = [branch_supports(world, f, k) for f in world.forks]  # per fork: None past the phrase
    first = torch.stack([s[0] if s else torch.zeros(world.vocab_size, dtype=torch.bool) for s in supports])
    second = torch.stack([s[1] if s else torch.zeros(world.vocab_size, dtype=torch.bool) for s in supports])
    defined = torch.tensor([s is not None for s in supports])
    truth = torch.tensor([f.p / (1 - f.p) for f in world.forks]).log().double()  # logit p*(first), per fork
    steering = torch.full((len(prompts),), float("nan"), dtype=torch.float64)
    for length in sorted(set(lengths.tolist())):
        if (length - 1) % k:  # the marker is not on the strided sequence
            continue
        at = lengths == length
        logp = model_log_probs(model, strided(prompts[at, :length], k))[:, -1].double()
        f = fork_index[at]
        logit = (torch.logsumexp(logp.masked_fill(~first[f], -math.inf), -1)
                 - torch.logsumexp(logp.masked_fill(~second[f], -math.inf), -1))
        steering[at] = torch.where(defined[f], logit - truth[f], math.nan)
    rows, groups = [], {}
    for kind, fork_p, at in fork_groups(world, fork_index):
        v = steering[at]
        v = v[~v.isnan()]
        if len(v):
            groups[(kind, fork_p)] = v
            rows.append(probe_row(f"jump/forks/{kind}/p={fork_p}", "steering_index", mean_ci(v), items=v))
    return rows + instrumental_rows("jump/forks", groups)


def skipped_rows(model, world: World, probes: ProbeSet, k: int) -> list[dict]:
    """Decoding the tokens a jump passes over (module docstring)."""
    if k == 1:
        return []
    train, test = probes.t["lookahead_train"], probes.t["lookahead_test"]
    z_train, z_test = strided(train, k), strided(test, k)
    n_pos = z_train.shape[1] - 1  # positions whose skipped tokens lie inside the sequence
    h_train, h_test = hidden_states(model, z_train), hidden_states(model, z_test)
    post_train = skipped_posteriors(world, z_train, k)[:, :n_pos]
    post_test = skipped_posteriors(world, z_test, k)[:, :n_pos]
    current_train, current_test = z_train[:, :n_pos], z_test[:, :n_pos]
    rows, gains, ceilings = [], [], []
    for i in range(1, k):
        y_train = train[:, i::k][:, :n_pos]
        y_test = test[:, i::k][:, :n_pos]
        p_train, p_test = post_train[:, :, i - 1], post_test[:, :, i - 1]
        # the mean posterior of the positions with the same current token (probe-train's and -test's)
        pooled_tokens = torch.cat([current_train.flatten(), current_test.flatten()])
        pooled = torch.cat([p_train.flatten(0, 1), p_test.flatten(0, 1)])
        sums = torch.zeros(world.vocab_size, world.vocab_size, dtype=torch.float64).index_add_(0, pooled_tokens, pooled)
        counts = torch.bincount(pooled_tokens, minlength=world.vocab_size).clamp_min(1).double()
        by_token = sums / counts[:, None]

        def diagnostic(post, current):
            return 0.5 * (post - by_token[current]).abs().sum(-1) > DIAGNOSTIC_TV

        d_train, d_test = diagnostic(p_train, current_train), diagnostic(p_test, current_test)
        scale = d_test.sum(1).double().mean()
        if scale == 0 or d_train.sum() == 0:
            continue
        probe = f"jump/skipped/i={i}"

        def at_diagnostic(hit, d_test=d_test, scale=scale):  # per sequence: hits there / mean positions there
            return (hit.double() * d_test).sum(1) / scale

        chance_cls = torch.bincount(y_train[d_train], minlength=world.vocab_size).argmax()
        rows += [probe_row(probe, "share", (float(d_test.double().mean()),) * 3),
                 probe_row(probe, "chance", mean_ci(c := at_diagnostic(y_test == chance_cls)), items=c),
                 probe_row(probe, "bayes", mean_ci(b := at_diagnostic(p_test.max(-1).values)), items=b),
                 probe_row(probe, "present", mean_ci(c := at_diagnostic(p_test.gather(
                     -1, by_token[current_test].argmax(-1, keepdim=True)).squeeze(-1))), items=c)]
        ceilings.append(b - c)
        accuracy = []
        for layer, (a, b) in enumerate(zip(h_train, h_test)):
            pred = ridge_probe(a[:, :n_pos][d_train], y_train[d_train], b[:, :n_pos].flatten(0, 1))[0]
            acc = at_diagnostic(pred.view(len(test), n_pos) == y_test)
            accuracy.append(acc)
            rows.append(probe_row(f"{probe}/layer={layer}", "accuracy", mean_ci(acc), items=acc))
        gains.append(accuracy[-1] - accuracy[0])
    if gains:
        index, ceiling = torch.stack(gains).mean(0), torch.stack(ceilings).mean(0)
        rows += [probe_row("jump/skipped", "simulation_index", mean_ci(index), items=index),
                 probe_row("jump/skipped", "simulation_ceiling", mean_ci(ceiling), items=ceiling)]
    return rows


def jump_rows(model, world: World, probes: ProbeSet, k: int) -> list[dict]:
    """Every jump probe of a stride-k model (module docstring)."""
    probes.check_world(world)
    was_training = getattr(model, "training", False)
    model.eval()
    rows = kl_rows(model, world, probes, k) + fork_rows(model, world, probes, k) + skipped_rows(model, world, probes, k)
    model.train(was_training)
    return rows

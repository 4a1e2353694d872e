"""Evaluators: a model and the probe set in, tidy rows out.

Every row: probe, metric, value, ci_low, ci_high (95% percentile bootstrap: scipy.stats.bootstrap). `tidy_rows`
adds the run's identity (run_id, regime, swept config values, seed). Metrics (docs/design.md section 4):

  calibration  kl = KL(p* || pi); excess_nll = -log pi(x_t) - H(p*(.|s_t)); ece (top-label, expected
               accuracy p*(argmax pi)); brier = E_{x~p*} sum_v (pi_v - 1[v = x])^2; all per token, CIs over
               sequences; plus reliability-diagram bins, and excess_nll with its entropy floor per position
               class (prose, fork marker, easy / hard phrase)
  forks        steering_index = logit pi(first) - logit p*(first), pi renormalised over the two branch tokens,
               per fork probability, asymmetric (first = easy) and symmetric (control); instrumental_steering
               = asymmetric minus symmetric
  rollouts     easy_fraction (first token = the easy branch) vs truth p; logp_star (mean log p* per generated token,
               floored at log 1e-6); impossible_rate; distinct_2 (distinct bigrams per generation)
  lookahead    accuracy of ridge linear probes decoding x_{t+k} from layer l, on probe-test; chance = the
               majority-class accuracy; bayes = E max_x p*(x_{t+k} | state at t), the ceiling for any
               predictor that sees only the past (a probe above it reads the future itself)
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from instrumentality.evaluation.probe_set import ProbeSet
from instrumentality.evaluation.table import ITEMS
from instrumentality.model import device_of
from instrumentality.stats import diff_ci, mean_ci, stat_ci
from instrumentality.world import World

FAMILIES = ("calibration", "forks", "rollouts", "lookahead")


def probe_row(probe: str, metric: str, ci: tuple, items=None) -> dict:
    """One probe row; with `items`, the per-item values its mean and interval came from (kept beside the
    results table, evaluation/table.py, so that two arms scored on the same items can be compared item by
    item)."""
    value, lo, hi = ci
    row = {"probe": probe, "metric": metric, "value": value, "ci_low": lo, "ci_high": hi}
    if items is not None:
        row[ITEMS] = torch.as_tensor(items).detach().double().flatten().numpy()
    return row


@torch.no_grad()
def model_log_probs(model, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """log pi(. | x_<=t) for every position of every sequence: [B, T, V] float32 on the CPU."""
    device = device_of(model)
    out = []
    for i in range(0, len(tokens), batch_size):
        logits = model(tokens[i:i + batch_size].to(device))["logits"].float()
        out.append(F.log_softmax(logits, -1).cpu())
    return torch.cat(out)


# ---------------------------------------------------------------------------- calibration
@torch.no_grad()
def calibration_rows(model, world: World, tokens: torch.Tensor, n_bins: int = 10) -> list[dict]:
    ctx, nxt = tokens[:, :-1], tokens[:, 1:]
    logp = model_log_probs(model, ctx).double()
    pi = logp.exp()
    p = world.conditionals_along(ctx)
    states = world.states_of(ctx)
    kl = torch.where(p > 0, p * (p.clamp_min(1e-300).log() - logp), torch.zeros(())).sum(-1)
    nll = -logp.gather(-1, nxt[..., None]).squeeze(-1)
    excess = nll - world.state_entropy[states]
    brier = (pi ** 2).sum(-1) - 2 * (pi * p).sum(-1) + 1
    rows = [probe_row("calibration", name, mean_ci(v.mean(1))) for name, v in
            (("kl", kl), ("excess_nll", excess), ("nll", nll), ("brier", brier))]
    rows += position_class_rows(world, states, nxt, excess)
    # top-label ECE with the exact expected accuracy p*(argmax pi); bins of confidence, CI over sequences
    conf, pred = pi.max(-1)
    acc = p.gather(-1, pred[..., None]).squeeze(-1)
    b = (conf * n_bins).long().clamp_max(n_bins - 1)
    N = len(tokens)
    per_seq = torch.zeros(3, N, n_bins, dtype=torch.float64)  # count, sum conf, sum acc per sequence and bin
    seq = torch.arange(N)[:, None].expand_as(b)
    for i, w in enumerate((torch.ones_like(conf), conf, acc)):
        per_seq[i].index_put_((seq.flatten(), b.flatten()), w.flatten(), accumulate=True)

    def ece(idx):  # idx [n_boot, N] -> [n_boot]
        s = per_seq[:, idx].sum(2)  # [3, n_boot, bins]
        return (s[1] - s[2]).abs().sum(-1) / s[0].sum(-1)

    rows.append(probe_row("calibration", "ece", stat_ci(N, ece)))
    tot = per_seq.sum(1)
    for k in range(n_bins):
        n = float(tot[0, k])
        conf_k, acc_k = (float(tot[1, k] / n), float(tot[2, k] / n)) if n else (math.nan, math.nan)
        for metric, v in ((f"bin{k:02d}_conf", conf_k), (f"bin{k:02d}_acc", acc_k), (f"bin{k:02d}_count", n)):
            rows.append(probe_row("calibration/reliability", metric, (v, math.nan, math.nan)))
    return rows


POSITION_CLASSES = ("prose", "marker", "easy_phrase", "hard_phrase")  # World.state_kind of the emitting state
# the prose positions whose next token is a fork marker (a subset of "prose"): where an early token could be
# made worse to help the fork's later tokens through shared computation (claim C5)
BEFORE_MARKER = "before_marker"


def position_masks(world: World, states: torch.Tensor, next_tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Boolean masks [N, T] of the positions of each class: the kind of the state that emits the next token
    (POSITION_CLASSES), and BEFORE_MARKER (the token emitted, next_tokens, is a fork marker)."""
    kind = torch.tensor([POSITION_CLASSES.index(k) for k in world.state_kind])[states]  # [N, T]
    masks = {name: kind == c for c, name in enumerate(POSITION_CLASSES)}
    masks[BEFORE_MARKER] = torch.isin(next_tokens, torch.tensor(world.marker_tokens))
    return masks


def position_class_rows(world: World, states: torch.Tensor, next_tokens: torch.Tensor,
                        excess: torch.Tensor) -> list[dict]:
    """Excess NLL per position class (the kind of state that emits the token: prose, fork marker, easy or
    hard phrase; and the prose positions just before a marker), with the exact entropy floor H(p*(.|s_t)) of
    those positions beside it. Each is a ratio over all positions of the class (sum over positions / count),
    its CI a bootstrap over sequences; its items per sequence are sum / (mean count per sequence), so that
    their mean is the ratio and two runs (the same sequences) are compared sequence by sequence.
    The myopia gap (claims/cognition.py) is the difference of excess_nll between two cognitions."""
    entropy = world.state_entropy[states]
    rows = []
    for name, m in position_masks(world, states, next_tokens).items():
        mask = m.double()
        count = mask.sum(1)
        if not count.any():
            continue
        for metric, v in (("excess_nll", excess), ("entropy_floor", entropy)):
            per_seq = (v * mask).sum(1)

            def ratio(idx, s=per_seq):  # idx [n_boot, N]: sum over the drawn sequences / their positions
                return s[idx].sum(-1) / count[idx].sum(-1).clamp_min(1)

            rows.append(probe_row(f"calibration/position={name}", metric, stat_ci(len(count), ratio),
                             items=per_seq / count.mean()))
        rows.append(probe_row(f"calibration/position={name}", "share", (float(count.sum() / mask.numel()),) * 3))
    return rows


# ---------------------------------------------------------------------------- forks
@torch.no_grad()
def fork_log_probs(model, probes: ProbeSet) -> torch.Tensor:
    """log pi(. | fork prompt) at the marker: [n_prompts, V]."""
    logp = model_log_probs(model, probes.t["fork_prompts"])
    last = probes.t["fork_lengths"] - 1
    return logp[torch.arange(len(last)), last].double()


def branch_logit(world: World, probes: ProbeSet, logp_fork: torch.Tensor) -> torch.Tensor:
    """logit pi(first) at each fork prompt, pi renormalised over the two branch tokens."""
    forks = [world.forks[i] for i in probes.t["fork_index"].tolist()]
    first = torch.tensor([f.first_token for f in forks])
    second = torch.tensor([f.second_token for f in forks])
    rows = torch.arange(len(forks))
    return logp_fork[rows, first] - logp_fork[rows, second]


def steering_per_prompt(world: World, probes: ProbeSet, logp_fork: torch.Tensor) -> torch.Tensor:
    """logit pi(first) - logit p*(first) at each fork prompt, pi renormalised over the two branch tokens.
    At an asymmetric fork the first branch is the easy one."""
    p = torch.tensor([world.forks[i].p for i in probes.t["fork_index"].tolist()], dtype=torch.float64)
    return branch_logit(world, probes, logp_fork) - torch.log(p / (1 - p))


def binary_entropy_of_logit(z: torch.Tensor) -> torch.Tensor:
    """H(q) in nats of a two-way choice with logit z = log q / (1 - q), stable for large |z|."""
    q = torch.sigmoid(z)
    return F.softplus(-z) * q + F.softplus(z) * (1 - q)


def fork_groups(world: World, fork_index: torch.Tensor) -> list[tuple[str, float, torch.Tensor]]:
    """(kind, p, mask over prompts) for every asymmetric, then every symmetric fork probability, p ascending:
    the groups steering is reported by."""
    return [(kind, p, torch.isin(fork_index, torch.tensor(
                [f.index for f in world.forks if f.symmetric == symmetric and f.p == p])))
            for kind, symmetric in (("asym", False), ("sym", True)) for p in sorted({f.p for f in world.forks})]


def instrumental_rows(prefix: str, groups: dict[tuple[str, float], torch.Tensor]) -> list[dict]:
    """`<prefix>/p=<p>` instrumental_steering = asymmetric minus symmetric, for every p with both groups
    ((kind, p) -> per-prompt steering). Items for comparing two runs prompt by prompt: asym_i - sym_i (the
    i-th prompt of each kind; two independent prompt sets of one size, so the mean and its variance are those
    of the difference)."""
    rows = []
    for p in sorted({p for _, p in groups}):
        if ("asym", p) in groups and ("sym", p) in groups:
            asym, sym = groups[("asym", p)], groups[("sym", p)]
            rows.append(probe_row(f"{prefix}/p={p}", "instrumental_steering", diff_ci(asym, sym),
                                  items=asym - sym if len(asym) == len(sym) else None))
    return rows


def fork_rows(model, world: World, probes: ProbeSet) -> list[dict]:
    logp_fork = fork_log_probs(model, probes)
    steer = steering_per_prompt(world, probes, logp_fork)
    # the entropy of the two-way branch choice (renormalised over the branch tokens): near 0 where the model
    # has committed to one branch whatever the prompt (the collapse gate of claims/cognition.py)
    branch_entropy = binary_entropy_of_logit(branch_logit(world, probes, logp_fork))
    rows = []
    groups = {}
    for kind, p, at in fork_groups(world, probes.t["fork_index"]):
        v = steer[at]
        if len(v):
            groups[(kind, p)] = v
            rows.append(probe_row(f"forks/{kind}/p={p}", "steering_index", mean_ci(v), items=v))
            rows.append(probe_row(f"forks/{kind}/p={p}", "branch_entropy", mean_ci(branch_entropy[at])))
        if p == max(f.p for f in world.forks):  # the kind's last group: all of its prompts
            all_kind = [v for (k, _), v in groups.items() if k == kind]
            if all_kind:
                rows.append(probe_row(f"forks/{kind}/all", "steering_index", mean_ci(torch.cat(all_kind))))
    return rows + instrumental_rows("forks", groups)


@torch.no_grad()
def reference_optimum_steering(ref_model, world: World, critic, beta: float, horizon: int, prompts: torch.Tensor,
                               fork: int, n_samples: int = 256, seed: int = 0) -> tuple[float, float]:
    """The steering the critic regime's optimum would show at gamma = 1 if its KL anchor were the actual
    pi_ref (a trained model) instead of p*, estimated by sampling. At gamma = 1 the optimum over H-token
    continuations y is q*(y) ~ pi_ref(y) exp(R(y) / beta), R(y) = sum_t c(ctx_t, y_t), so at a fork with
    branch tokens A, B after a prompt x:
        log q*(A) / q*(B) = log pi_ref(A|x) / pi_ref(B|x) + log E[exp(R/beta) | x, A] - log E[exp(R/beta) | x, B]
    each expectation over n_samples continuations of y_0 = A (B) sampled from pi_ref. Steering is that minus
    logit p*(A), averaged over the prompts [n, L] (all ending at `fork`'s marker). Returns (mean, standard
    error over prompts)."""
    f = world.forks[fork]
    g = torch.Generator(device=device_of(ref_model)).manual_seed(seed)
    n, L = prompts.shape
    logp = model_log_probs(ref_model, prompts)[:, L - 1].double()
    log_ratio = logp[:, f.first_token] - logp[:, f.second_token]
    for sign, branch in ((1, f.first_token), (-1, f.second_token)):
        start = torch.cat([prompts, torch.full((n, 1), branch)], 1).repeat_interleave(n_samples, 0)
        rest = sample_continuations(ref_model, start, horizon - 1, g) if horizon > 1 else start[:, :0]
        actions = torch.cat([start[:, -1:], rest], 1)                      # [n * n_samples, H]
        contexts = torch.cat([start[:, :L], actions[:, :-1]], 1)           # action t after contexts[:, :L + t]
        R = critic(contexts, actions).double().sum(1).view(n, n_samples)
        log_ratio = log_ratio + sign * (torch.logsumexp(R / beta, 1) - math.log(n_samples))
    steer = log_ratio - math.log(f.p / (1 - f.p))
    return float(steer.mean()), float(steer.std() / math.sqrt(n)) if n > 1 else math.nan


# ---------------------------------------------------------------------------- rollouts
@torch.no_grad()
def sample_continuations(model, prompts: torch.Tensor, n_new: int, generator: torch.Generator) -> torch.Tensor:
    """Free-running samples after equal-length prompts: KV cache when the model has one, else recompute."""
    device = device_of(model)
    prompts = prompts.to(device)
    if hasattr(model, "generate"):
        return model.generate(prompts, n_new, generator=generator)[0].cpu()
    seq = prompts
    for _ in range(n_new):
        probs = F.softmax(model(seq)["logits"][:, -1].float(), -1)
        seq = torch.cat([seq, torch.multinomial(probs.cpu(), 1, generator=generator).to(device)], 1)
    return seq[:, prompts.shape[1]:].cpu()


def rollout_rows(model, world: World, probes: ProbeSet, seed: int = 0) -> list[dict]:
    cfg = probes.config
    prompts, lengths, fork_index = probes.t["fork_prompts"], probes.t["fork_lengths"], probes.t["fork_index"]
    asym = torch.tensor([not world.forks[i].symmetric for i in fork_index.tolist()])
    device = device_of(model)
    g = torch.Generator(device=device if hasattr(model, "generate") else "cpu").manual_seed(seed)
    per_p: dict[float, list] = {}
    for L in sorted(set(lengths.tolist())):
        sel = asym & (lengths == L)
        ctx = prompts[sel, :L]
        gen = sample_continuations(model, ctx, cfg.rollout_len, g)
        full = torch.cat([ctx, gen], 1)
        s = world.states_of(full[:, :-1])[:, L - 1:]  # state before each generated token
        ok = s >= 0
        p_tok = torch.zeros(gen.shape, dtype=torch.float64)
        p_tok[ok] = world.emission[s[ok], gen[ok]]
        logp_star = p_tok.clamp_min(1e-6).log()
        bigrams = gen[:, :-1] * world.vocab_size + gen[:, 1:]
        distinct = torch.tensor([len(set(r.tolist())) / max(1, len(r)) for r in bigrams], dtype=torch.float64)
        for j, i in enumerate(fork_index[sel].tolist()):
            per_p.setdefault(world.forks[i].p, []).append(
                (float(gen[j, 0] == world.forks[i].first_token), float(logp_star[j].mean()),
                 float((p_tok[j] == 0).float().mean()), float(distinct[j])))
    rows = []
    for p, items in sorted(per_p.items()):
        v = torch.tensor(items, dtype=torch.float64)
        probe = f"rollouts/p={p}"
        easy = mean_ci(v[:, 0])
        rows += [probe_row(probe, "easy_fraction", easy),
                 probe_row(probe, "easy_fraction_truth", (p, p, p)),
                 probe_row(probe, "easy_fraction_minus_truth", tuple(x - p for x in easy)),
                 probe_row(probe, "logp_star", mean_ci(v[:, 1])),
                 probe_row(probe, "impossible_rate", mean_ci(v[:, 2])),
                 probe_row(probe, "distinct_2", mean_ci(v[:, 3]))]
    return rows


# ---------------------------------------------------------------------------- look-ahead
@torch.no_grad()
def hidden_states(model, tokens: torch.Tensor, batch_size: int = 256) -> list[torch.Tensor]:
    """Every layer's hidden states [N, T, d] (the embedding's first), in batches."""
    device = device_of(model)
    batches = [[x.float().cpu() for x in model(tokens[i:i + batch_size].to(device), return_hidden=True)["hidden"]]
               for i in range(0, len(tokens), batch_size)]
    return [torch.cat(layer) for layer in zip(*batches)]


RIDGE_ALPHAS = tuple(10.0 ** np.arange(-2, 5))  # the penalties the look-ahead probe chooses from


def ridge_probe(x_train: torch.Tensor, y_train: torch.Tensor, x_test: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Linear probe: a ridge classifier on standardised features (least squares on one-hot targets, argmax)
    with an unpenalised intercept, its penalty alpha chosen from RIDGE_ALPHAS by exact leave-one-out error
    (what scikit-learn's RidgeClassifierCV computes; a test checks the two agree). With X centred, Y centred,
    and X'X = V diag(s) V':
        W = V diag(1 / (s + alpha)) V' X'Y,          intercept = mean Y (not shrunk)
        h_i = 1/n + sum_j (XV)_ij^2 / (s_j + alpha)  (leverage),  LOO residual = (Y_i - Yhat_i) / (1 - h_i)
    Returns the predicted classes of x_test and the alpha chosen."""
    mu, sd = x_train.double().mean(0), x_train.double().std(0, unbiased=False).clamp_min(1e-12)
    x, xs = (x_train.double() - mu) / sd, (x_test.double() - mu) / sd
    classes, y_idx = torch.unique(y_train, return_inverse=True)
    y = F.one_hot(y_idx, len(classes)).double()
    y_mean = y.mean(0)
    yc = y - y_mean
    s, V = torch.linalg.eigh(x.T @ x)
    xv, vty = x @ V, V.T @ (x.T @ yc)
    def loo_error(alpha: float) -> float:
        shrink = 1.0 / (s.clamp_min(0) + alpha)
        leverage = 1.0 / len(x) + (xv ** 2) @ shrink
        return float((((yc - xv @ (shrink[:, None] * vty)) / (1 - leverage)[:, None]) ** 2).sum())

    alpha = min(RIDGE_ALPHAS, key=loo_error)  # the first of equal errors, as scikit-learn
    W = V @ (vty / (s.clamp_min(0) + alpha)[:, None])
    return classes[(xs @ W + y_mean).argmax(-1)], float(alpha)


def lookahead_rows(model, world: World, probes: ProbeSet) -> list[dict]:
    """Ridge probes decoding x_{t+k} from each layer, trained on probe-train's positions, scored on probe-test:
    at every position (`lookahead/k=<k>`) and at the diagnostic positions only (`lookahead/k=<k>/diagnostic`:
    states whose next-token distribution another state shares while their x_{t+k} differ, World.diagnostic_states;
    there the present's prediction does not tell the future apart). Each with the majority class's accuracy
    (chance) and the Bayes ceiling E max_x p*(x_{t+k} | s_t). The diagnostic rows are ratios over the test
    positions; their items are per test sequence, correct / (mean diagnostic positions per sequence), so that
    their mean is the ratio and two runs (the same sequences) are compared sequence by sequence."""
    K = probes.config.lookahead_k
    train, test = probes.t["lookahead_train"], probes.t["lookahead_test"]
    h_train, h_test = hidden_states(model, train), hidden_states(model, test)
    T = train.shape[1]
    all_states_train, all_states_test = world.states_of(train), world.states_of(test)
    rows = []
    for k in range(1, K + 1):
        n_pos = T - k
        y_train, y_test = train[:, k:].flatten(), test[:, k:]
        states_test = all_states_test[:, :n_pos]
        diagnostic_state = world.diagnostic_states(k)
        chance_cls = torch.bincount(y_train, minlength=world.vocab_size).argmax()
        chance = (y_test == chance_cls).double().mean(1)
        rows.append(probe_row(f"lookahead/k={k}", "chance", mean_ci(chance), items=chance))
        # the best any predictor of x_{t+k} from the past can do: E max_x p*(x_{t+k} | state at t)
        bayes = world.future_token_distribution(states_test, k).max(-1).values
        rows.append(probe_row(f"lookahead/k={k}", "bayes", mean_ci(bayes.mean(1))))
        diagnostic = diagnostic_state[states_test]  # [n_test, n_pos]
        per_seq = diagnostic.sum(1).double()
        scale = per_seq.mean()

        def at_diagnostic(hit: torch.Tensor) -> torch.Tensor:  # per sequence: hits at its diagnostic positions / scale
            return (hit.double() * diagnostic).sum(1) / scale

        if scale > 0:
            diag = f"lookahead/k={k}/diagnostic"
            d_train = diagnostic_state[all_states_train[:, :n_pos]].flatten()
            d_chance_cls = torch.bincount(y_train[d_train], minlength=world.vocab_size).argmax()
            rows += [probe_row(diag, "share", (float(diagnostic.double().mean()),) * 3),
                     probe_row(diag, "chance", mean_ci(c := at_diagnostic(y_test == d_chance_cls)), items=c),
                     probe_row(diag, "bayes", mean_ci(at_diagnostic(bayes)))]
        for layer, (a, b) in enumerate(zip(h_train, h_test)):
            pred = ridge_probe(a[:, :n_pos].flatten(0, 1), y_train, b[:, :n_pos].flatten(0, 1))[0]
            hit = pred.view(len(test), n_pos) == y_test
            acc = hit.double().mean(1)
            rows.append(probe_row(f"lookahead/k={k}/layer={layer}", "accuracy", mean_ci(acc), items=acc))
            if scale > 0:
                d_acc = at_diagnostic(hit)
                rows.append(probe_row(f"lookahead/k={k}/diagnostic/layer={layer}", "accuracy", mean_ci(d_acc),
                                      items=d_acc))
    return rows


# ---------------------------------------------------------------------------- all families
class WorldTokensOnly(torch.nn.Module):
    """A model whose vocabulary extends the world's (quest tokens) seen through the world's tokens only:
    its logits cut to the world vocabulary, so log_softmax renormalises over world tokens."""

    def __init__(self, model, vocab_size: int):
        super().__init__()
        self.model, self.vocab_size = model, vocab_size

    def forward(self, idx, **kwargs):
        out = dict(self.model(idx, **kwargs))
        out["logits"] = out["logits"][..., :self.vocab_size]
        return out


def evaluate_model(model, world: World, probes: ProbeSet, families=FAMILIES, seed: int = 0) -> list[dict]:
    """Every family's rows for one model. Refuses a probe set made for another world."""
    probes.check_world(world)
    trained, was_training = model, getattr(model, "training", False)
    model.eval()
    if getattr(getattr(model, "cfg", None), "vocab_size", world.vocab_size) > world.vocab_size:
        model = WorldTokensOnly(model, world.vocab_size)
    rows = []
    if "calibration" in families:
        rows += calibration_rows(model, world, probes.t["calibration"])
    if "forks" in families:
        rows += fork_rows(model, world, probes)
    if "rollouts" in families:
        rows += rollout_rows(model, world, probes, seed=seed)
    if "lookahead" in families:
        rows += lookahead_rows(model, world, probes)
    trained.train(was_training)
    return rows


def _scalar_rows(rows: list[dict]) -> list[dict]:
    return [r for r in rows if not r["probe"].endswith("reliability") and not r["probe"].startswith("theory_curve/")]


def scalar_metrics(rows: list[dict]) -> dict:
    """Rows as flat W&B scalars: probe/<probe>/<metric>."""
    return {f"probe/{r['probe']}/{r['metric']}": float(r["value"]) for r in _scalar_rows(rows)}


def interval_bounds(rows: list[dict]) -> dict:
    """The rows' 95% interval bounds as W&B scalars, in a section of their own beside probe/:
    probe_ci/<probe>/<metric>/low and /high (rows without an interval have none)."""
    out = {}
    for r in _scalar_rows(rows):
        for side, key in (("low", "ci_low"), ("high", "ci_high")):
            value = r.get(key)
            if value is not None and math.isfinite(float(value)):
                out[f"probe_ci/{r['probe']}/{r['metric']}/{side}"] = float(value)
    return out

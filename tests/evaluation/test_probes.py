"""The measuring instrument: probe set identity, and every evaluator proven on planted models."""

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from planted import FutureCopyModel, RandomStateModel, TruthModel, UniformModel, uniform_kl

from instrumentality.evaluate import main
from instrumentality.evaluation.probe_set import ProbeConfig, ProbeSet, ProbeSetMismatch, probe_set_for
from instrumentality.evaluation.world_probes import (
    calibration_rows,
    evaluate_model,
    fork_rows,
    lookahead_rows,
    rollout_rows,
)
from instrumentality.world import World, WorldConfig

SMALL = ProbeConfig(n_calibration=64, n_per_fork_position=16, n_lookahead_train=96, n_lookahead_test=48)


def by_key(rows):
    return {(r["probe"], r["metric"]): r for r in rows}


@pytest.fixture(scope="module")
def probes(world):
    return ProbeSet.generate(world, SMALL)


# ---------------------------------------------------------------------------- the probe set
def test_probe_set_is_deterministic_and_round_trips(world, probes, tmp_path):
    again = ProbeSet.generate(World(WorldConfig()), SMALL)
    assert again.hash == probes.hash
    loaded = ProbeSet.load(probes.save(tmp_path / "ps"), world)
    assert loaded.hash == probes.hash and all(torch.equal(loaded.t[k], probes.t[k]) for k in probes.t)
    # every fork prompt ends with its fork's marker, preceded by a prose state
    last = probes.t["fork_prompts"][torch.arange(len(probes.t["fork_lengths"])), probes.t["fork_lengths"] - 1]
    assert torch.equal(last, torch.tensor([world.forks[i].marker for i in probes.t["fork_index"].tolist()]))
    assert len(probes.t["fork_index"]) == len(world.forks) * len(SMALL.fork_positions) * SMALL.n_per_fork_position


def test_probe_set_refuses_another_world_or_altered_contents(world, probes, tmp_path):
    folder = probes.save(tmp_path / "ps")
    with pytest.raises(ProbeSetMismatch, match="world"):
        ProbeSet.load(folder, World(WorldConfig(seed=7)))
    with pytest.raises(ProbeSetMismatch, match="world"):
        evaluate_model(UniformModel(world.vocab_size), World(WorldConfig(seed=7)), probes, families=("forks",))
    t = dict(probes.t)
    t["calibration"] = t["calibration"].clone()
    t["calibration"][0, 5] = (t["calibration"][0, 5] + 1) % world.vocab_size
    torch.save(t, folder / "probes.pt")
    with pytest.raises(ProbeSetMismatch, match="content hash"):
        ProbeSet.load(folder, world)


def test_probe_cache_reuses_the_stored_set(world, tmp_path, monkeypatch):
    """The second call reads the stored set: generating is refused then, and the set read is the one
    stored (the same hash, the same tensors)."""
    from instrumentality.evaluation.probe_set import ProbeSet

    a = probe_set_for(world, SMALL, tmp_path)
    assert len(list(tmp_path.iterdir())) == 1

    def refuse(*args, **kwargs):
        raise AssertionError("generated again: the cache was not read")

    monkeypatch.setattr(ProbeSet, "generate", classmethod(refuse))
    b = probe_set_for(world, SMALL, tmp_path)
    assert a.hash == b.hash and len(list(tmp_path.iterdir())) == 1
    assert all(torch.equal(a.t[k], b.t[k]) for k in a.t)


# ---------------------------------------------------------------------------- planted models
def test_truth_model_scores_zero(world, probes):
    rows = by_key(calibration_rows(TruthModel(world), world, probes.t["calibration"]) +
                  fork_rows(TruthModel(world), world, probes))
    assert abs(rows[("calibration", "kl")]["value"]) < 1e-6
    assert abs(rows[("calibration", "ece")]["value"]) < 1e-6
    # Brier of the truth in expectation: 1 - sum_v p*_v^2, averaged over the probe positions
    p = world.conditionals_along(probes.t["calibration"][:, :-1])
    assert rows[("calibration", "brier")]["value"] == pytest.approx(float((1 - (p ** 2).sum(-1)).mean()), abs=1e-6)
    for p_fork in world.cfg.fork_probs:
        for kind in ("asym", "sym"):
            assert abs(rows[(f"forks/{kind}/p={p_fork}", "steering_index")]["value"]) < 1e-6
        assert abs(rows[(f"forks/p={p_fork}", "instrumental_steering")]["value"]) < 1e-6


@pytest.mark.parametrize("delta,delta_sym", [(0.7, 0.0), (-1.3, 0.0), (0.9, 0.4)])
def test_tilted_model_scores_its_tilt(world, probes, delta, delta_sym):
    rows = by_key(fork_rows(TruthModel(world, tilt=delta, tilt_symmetric=delta_sym), world, probes))
    for p in world.cfg.fork_probs:
        assert rows[(f"forks/asym/p={p}", "steering_index")]["value"] == pytest.approx(delta, abs=1e-4)
        assert rows[(f"forks/sym/p={p}", "steering_index")]["value"] == pytest.approx(delta_sym, abs=1e-4)
        assert rows[(f"forks/p={p}", "instrumental_steering")]["value"] == pytest.approx(delta - delta_sym, abs=1e-4)


def test_uniform_model_kl_matches_closed_form(world, probes):
    tokens = probes.t["calibration"]
    rows = by_key(calibration_rows(UniformModel(world.vocab_size), world, tokens))
    closed = float(uniform_kl(world, world.states_of(tokens[:, :-1])).mean())
    assert rows[("calibration", "kl")]["value"] == pytest.approx(closed, abs=1e-6)
    assert closed == pytest.approx(math.log(world.vocab_size) - float(world.state_entropy[
        world.states_of(tokens[:, :-1])].mean()), abs=1e-9)


def test_position_class_rows_match_closed_forms(world, probes):
    """Per position class: the entropy floor is the mean of H(p*(.|s_t)) over the class's positions (counted
    here one by one); the uniform model's excess NLL is log V minus that floor; the truth's is exactly 0 inside
    phrases (easy: one possible token; hard: uniform over the hard words, so -log pi = H)."""
    tokens = probes.t["calibration"]
    states = world.states_of(tokens[:, :-1])
    by_class: dict[str, list[float]] = {}
    for s in states.flatten().tolist():
        by_class.setdefault(world.state_kind[s], []).append(float(world.state_entropy[s]))
    uniform = by_key(calibration_rows(UniformModel(world.vocab_size), world, tokens))
    truth = by_key(calibration_rows(TruthModel(world), world, tokens))
    assert set(by_class) == {"prose", "marker", "easy_phrase", "hard_phrase"}
    for kind, entropies in by_class.items():
        probe = f"calibration/position={kind}"
        floor = sum(entropies) / len(entropies)
        assert uniform[(probe, "entropy_floor")]["value"] == pytest.approx(floor, abs=1e-9)
        assert uniform[(probe, "excess_nll")]["value"] == pytest.approx(math.log(world.vocab_size) - floor, abs=1e-6)
        assert uniform[(probe, "share")]["value"] == pytest.approx(len(entropies) / states.numel())
        lo, hi = uniform[(probe, "excess_nll")]["ci_low"], uniform[(probe, "excess_nll")]["ci_high"]
        assert lo <= uniform[(probe, "excess_nll")]["value"] <= hi
    for kind in ("easy_phrase", "hard_phrase"):
        assert abs(truth[(f"calibration/position={kind}", "excess_nll")]["value"]) < 1e-6
    assert truth[("calibration/position=hard_phrase", "entropy_floor")]["value"] == pytest.approx(
        math.log(world.cfg.n_hard_words))


def test_tilted_rollouts_follow_the_tilt(world, probes):
    """A model tilted by delta takes the easy branch with probability sigmoid(logit p + delta)."""
    delta = 1.5
    rows = by_key(rollout_rows(TruthModel(world, tilt=delta), world, probes, seed=0))
    for p in world.cfg.fork_probs:
        target = 1 / (1 + math.exp(-(math.log(p / (1 - p)) + delta)))
        r = rows[(f"rollouts/p={p}", "easy_fraction")]
        assert abs(r["value"] - target) < 4 * math.sqrt(target * (1 - target) / 48)
        assert rows[(f"rollouts/p={p}", "impossible_rate")]["value"] == 0.0  # the truth never leaves the world
        # log p* per token: the generated phrase and prose are all in-support, so above the floor
        assert rows[(f"rollouts/p={p}", "logp_star")]["value"] > math.log(1e-6)


def test_lookahead_probes_decode_a_copied_future_and_not_noise(world, probes):
    oracle = by_key(lookahead_rows(FutureCopyModel(world.vocab_size, n=4), world, probes))
    noise = by_key(lookahead_rows(RandomStateModel(world.vocab_size), world, probes))
    for k in range(1, 5):
        assert oracle[(f"lookahead/k={k}/layer=0", "accuracy")]["value"] > 0.99
        chance = noise[(f"lookahead/k={k}", "chance")]["value"]
        acc = noise[(f"lookahead/k={k}/layer=0", "accuracy")]["value"]
        assert abs(acc - chance) < 0.03, (k, acc, chance)


# ---------------------------------------------------------------------------- CI coverage
def test_bootstrap_cis_cover_the_truth_at_the_stated_rate(world):
    """95% CIs for planted models over many independent probe draws: the rollout easy-branch fraction
    of the truth model (true value p) and the excess NLL of the truth model (true value 0)."""
    reps, hits_easy, hits_nll, n = 150, 0, 0, 0
    cfg = ProbeConfig(n_calibration=24, n_per_fork_position=12, fork_positions=[8], n_lookahead_train=1,
                      n_lookahead_test=1, rollout_len=1)
    truth = TruthModel(world)
    for r in range(reps):
        ps = ProbeSet.generate(world, ProbeConfig(**{**cfg.__dict__, "seed": 10_000 + r}))
        rows = by_key(rollout_rows(truth, world, ps, seed=r) + calibration_rows(truth, world, ps.t["calibration"]))
        for p in world.cfg.fork_probs:
            e = rows[(f"rollouts/p={p}", "easy_fraction")]
            hits_easy += e["ci_low"] <= p <= e["ci_high"]
            n += 1
        x = rows[("calibration", "excess_nll")]
        hits_nll += x["ci_low"] <= 0 <= x["ci_high"]
    # binomial sd of a coverage estimate at 0.95 over 450 (150) trials is ~0.010 (~0.018)
    print(f"\ncoverage: easy fraction {hits_easy / n:.3f}, excess NLL {hits_nll / reps:.3f}")
    assert 0.90 <= hits_easy / n <= 0.99, hits_easy / n
    assert 0.88 <= hits_nll / reps <= 1.0, hits_nll / reps


# ---------------------------------------------------------------------------- a trained checkpoint
def test_quick_supervised_reaches_the_entropy_floor(quick_supervised_run):
    out, summary = quick_supervised_run
    m = summary["metrics"]
    print(f"\nquick supervised: excess NLL {m['probe/calibration/excess_nll']:.4f} nats/token, "
          f"KL {m['probe/calibration/kl']:.4f}, wall {summary['wall_s']:.1f}s")
    assert summary["status"]["status"] == "finished"
    assert m["probe/calibration/excess_nll"] < 0.05
    assert m["probe/calibration/kl"] < 0.05
    assert (out / "checkpoint.pt").exists() and (out / "summary.json").exists()


def test_quick_supervised_checkpoint_is_calibrated_and_does_not_steer(quick_supervised_run, tmp_path):
    """A supervised model is calibrated and steers nothing beyond training noise. Its fork logits are off by
    SGD noise (either sign), which a test must not mistake for steering, and which differs from CPU to CPU:
    the bound is a 99.9% prediction interval for one more seed, from the spread over 10 seeds measured by
    scripts/seed_spread.py, centred on 0 (no steering). That the measured seeds average to 0 within
    their standard error is checked too: a model that steered would move the mean, not only the spread.
    The bound (about 0.35 nats) is far below the 1-8 nats of steering that the exact critic optima
    predict at these forks."""
    import time

    from conftest import seed_noise_bound
    from scipy import stats

    out, _ = quick_supervised_run
    t0 = time.perf_counter()
    assert main([str(out), "--out", str(tmp_path / "r.csv"), "--probe-cache", str(tmp_path / "probes"),
                 "--recompute"]) == 0
    wall = time.perf_counter() - t0
    df = pd.read_csv(tmp_path / "r.csv")
    get = lambda probe, metric: df[(df.probe == probe) & (df.metric == metric)].iloc[0]
    columns = [f"steering_p{p}" for p in (0.2, 0.5, 0.8)]
    noise = seed_noise_bound(columns)
    assert noise["n_seeds"] >= 8
    for col in columns:  # the measured seeds do not steer on average
        v = noise["values"][col]
        assert abs(v.mean()) < stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / len(v) ** 0.5, col
    kl = get("calibration", "kl")
    print(f"\nquick supervised checkpoint: KL {kl.value:.4f} [{kl.ci_low:.4f}, {kl.ci_high:.4f}], "
          f"ECE {get('calibration', 'ece').value:.4f}, eval wall {wall:.1f}s; steering bound "
          f"+-{noise['half_width']:.3f} (sd {noise['sd']:.3f} over {noise['n_seeds']} seeds)")
    assert kl.value < 0.05 and get("calibration", "ece").value < 0.05
    for p in (0.2, 0.5, 0.8):
        s = get(f"forks/asym/p={p}", "steering_index")
        print(f"  steering p={p}: {s.value:+.3f} [{s.ci_low:+.3f}, {s.ci_high:+.3f}], margin to the bound "
              f"{noise['half_width'] - abs(s.value):.3f}")
        assert abs(s.value) < noise["half_width"]
    assert wall < 60  # the budget is 20 s on 2 cores; the margin absorbs a loaded CI machine


def test_the_calibration_bounds_hold_with_room_over_the_seed_spread():
    """The trained-model tests' fixed bounds (KL, excess NLL and ECE below 0.05 nats / 0.05) lie outside
    the 99.9% prediction interval of one more seed's value, so they fail a model that is not calibrated,
    not one that drew other training noise."""
    from conftest import seed_noise_bound

    for col in ("kl", "excess_nll", "ece"):
        noise = seed_noise_bound([col])
        upper = noise["mean"] + noise["half_width"]
        print(f"\n{col}: mean {noise['mean']:.4f}, sd {noise['sd']:.4f} over {noise['n_seeds']} seeds; one more "
              f"seed below {upper:.4f} (99.9%), the test's bound 0.05")
        assert upper < 0.05


def test_the_rows_a_run_stores_at_the_end_of_training_are_what_evaluating_its_checkpoint_gives(
        quick_supervised_run, tmp_path):
    """Training ends by storing the run's rows (the final evaluation of the same weights) in its folder;
    the evaluation CLI reuses them only while they were computed from the run's current checkpoint."""
    import shutil

    from instrumentality.evaluation.run_rows import evaluate_checkpoint, evaluate_run
    from instrumentality.evaluation.table import ROWS, read_run_rows
    from instrumentality.training.checkpoint import load_checkpoint, save_checkpoint

    src, _ = quick_supervised_run
    out = tmp_path / "run"
    shutil.copytree(src, out)
    cache = str(tmp_path / "probes")
    stored = read_run_rows(out)
    assert stored is not None
    # a copied folder's rows are its own (its folder names the run), not the original's: no "mixed" runs
    assert set(stored.run_id) == {f"{tmp_path.name}/run"} != set(pd.read_csv(src / ROWS).run_id)
    fresh = pd.DataFrame(evaluate_checkpoint(out, cache))
    stored, fresh = (d.sort_values(["probe", "metric", "step"]).reset_index(drop=True) for d in (stored, fresh))
    assert len(fresh) == len(stored) > 50 and {"lookahead/k=2/layer=0", "rollouts/p=0.5"} <= set(fresh.probe)
    assert fresh[["probe", "metric"]].to_numpy().tolist() == stored[["probe", "metric"]].to_numpy().tolist()
    for col in ("value", "ci_low", "ci_high"):
        assert np.allclose(fresh[col].astype(float), stored[col].astype(float), rtol=1e-5, atol=1e-7,
                           equal_nan=True), col
    # stored rows are read, not recomputed: planted values come back as planted ...
    original = (out / ROWS).read_bytes()
    pd.read_csv(out / ROWS).assign(value=7.0).to_csv(out / ROWS, index=False)
    assert (evaluate_run(out, cache).value == 7.0).all()
    # ... until the checkpoint is another one (here: the same weights, one more history entry)
    ck = load_checkpoint(out / "checkpoint.pt")
    ck["history"].append({"step": ck["step"], "note": 1.0})
    save_checkpoint(out / "checkpoint.pt", ck)
    rows = evaluate_run(out, cache)
    assert rows[(rows.probe == "calibration") & (rows.metric == "kl")].value.iloc[0] < 0.05
    # a rows file cut short by a kill is never used: it is computed again
    (out / ROWS).write_bytes(original[: len(original) // 2])
    assert len(evaluate_run(out, cache)) == len(fresh)


def _two_debug_runs(tmp_path, seeds=(0, 1, 2)):
    from hydra import compose, initialize_config_dir

    from instrumentality.configs import CONFIG_DIR
    from instrumentality.train import run

    sweep = tmp_path / "sweep"
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for i in seeds:
            run(compose(config_name="train", overrides=["preset=debug", f"seed={i}",
                                                        f"eval.probe_cache={tmp_path / 'probes'}"]), sweep / f"run{i}")
    return sweep


def test_cli_reports_a_corrupt_run_exits_non_zero_and_keeps_the_others(tmp_path, capsys):
    sweep = _two_debug_runs(tmp_path)
    out = tmp_path / "results.csv"
    planted = pd.DataFrame([{"run_id": "older", "source": "0" * 16, "run_rows": 1, "probe": "calibration",
                             "metric": "kl", "value": 1.0}])
    planted.to_csv(out, index=False)
    (sweep / "run1" / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main([str(sweep), "--out", str(out), "--probe-cache", str(tmp_path / "probes")]) == 1
    err = capsys.readouterr().err
    assert str(sweep / "run1") in err and "corrupt" in err
    df = pd.read_csv(out)
    assert set(df.run_id) == {"older", "sweep/run0", "sweep/run2"}
    assert df[df.run_id == "sweep/run0"].seed.iloc[0] == 0
    assert (df[df.run_id == "sweep/run2"].regime == "supervised").all()
    assert main([str(tmp_path / "nothing-here"), "--out", str(out)]) == 2


def _agent_runs(root, names):
    import json

    quest = {"size": 5, "n_clues": 1, "n_monsters": 0, "time_limit": 8, "interrupt_at": 4,
             "variant": "standard"}
    for name in names:
        (root / name).mkdir(parents=True, exist_ok=True)
        (root / name / "summary.json").write_text(json.dumps(
            {"agent": {"kind": name, "quest": quest, "seed": 0, "episodes": 100},  # what is reused, not how well
             "status": {"status": "finished"}}))


def test_a_replaced_run_is_evaluated_again_and_the_others_are_reused(tmp_path):
    """What decides whether a run's rows are redone is what they were computed from (its checkpoint's or
    summary's sha256), not a file time: a run replaced by another is redone, an unchanged one is reused."""
    import json

    from instrumentality.evaluation.table import ROWS

    runs = tmp_path / "runs" / "F4"
    _agent_runs(runs, ("explorer", "random"))
    out = tmp_path / "results.csv"
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    first = pd.read_csv(out)
    # plant a value in the explorer's stored rows (unchanged run: reused as stored) ...
    pd.read_csv(runs / "explorer" / ROWS).assign(value=42.0).to_csv(runs / "explorer" / ROWS, index=False)
    # ... and replace the random agent's run by another (another seed): its rows must be redone
    summary = json.loads((runs / "random" / "summary.json").read_text())
    summary["agent"]["seed"] = 5
    (runs / "random" / "summary.json").write_text(json.dumps(summary))
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    df = pd.read_csv(out)
    assert (df[df.run_id == "F4/explorer"].value == 42.0).all()
    new, old = (d[(d.run_id == "F4/random") & (d.metric == "return")].value.to_numpy() for d in (df, first))
    assert len(new) == len(old) > 0 and not np.allclose(new, old)
    assert df[df.run_id == "F4/random"].source.iloc[0] != first[first.run_id == "F4/random"].source.iloc[0]


def test_prune_drops_the_rows_of_runs_without_a_folder_and_keeps_the_rest(tmp_path):
    """--prune (what `make sweep` passes): rows of a run that no longer has a folder (an arm a preset stopped
    sweeping) leave the table; the rows of every run found stay."""
    runs = tmp_path / "runs" / "F4"
    _agent_runs(runs, ("random",))
    out = tmp_path / "results.csv"
    gone = [{"run_id": "F2/critic-truth-g0.0-H4-s0", "source": "0" * 16, "run_rows": 1,
             "probe": "forks/asym/p=0.5", "metric": "steering_index", "value": 1.0}]
    pd.DataFrame(gone).to_csv(out, index=False)
    assert main([str(tmp_path / "runs"), "--out", str(out)]) == 0
    assert set(pd.read_csv(out).run_id) == {"F4/random", "F2/critic-truth-g0.0-H4-s0"}  # merged, kept
    assert main([str(tmp_path / "runs"), "--out", str(out), "--prune"]) == 0
    df = pd.read_csv(out)
    assert set(df.run_id) == {"F4/random"} and len(df) > 0


def test_lookahead_bayes_ceiling_bounds_a_past_only_model_and_not_the_future_copy(world, probes):
    """The truth model (hidden = world state) decodes x_{t+k} up to, not beyond, the Bayes ceiling;
    the future-copying model exceeds it: it reads the future, which no past-only predictor can."""
    truth = by_key(lookahead_rows(TruthModel(world), world, probes))
    oracle = by_key(lookahead_rows(FutureCopyModel(world.vocab_size, n=4), world, probes))
    for k in range(1, 5):
        bayes = truth[(f"lookahead/k={k}", "bayes")]["value"]
        acc = truth[(f"lookahead/k={k}/layer=0", "accuracy")]
        assert acc["value"] <= bayes + 0.02 and acc["value"] > truth[(f"lookahead/k={k}", "chance")]["value"]
        assert oracle[(f"lookahead/k={k}/layer=0", "accuracy")]["value"] > bayes + 0.1


def test_ridge_probe_matches_scikit_learns_leave_one_out_ridge_classifier():
    """The closed-form probe against an independent implementation: RidgeClassifierCV (standardised features,
    unpenalised intercept, efficient leave-one-out over the same penalties) chooses the same penalty and
    predicts the same classes, on data with signal and on pure noise."""
    from sklearn.linear_model import RidgeClassifierCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from instrumentality.evaluation.world_probes import RIDGE_ALPHAS, ridge_probe

    g = torch.Generator().manual_seed(0)
    for signal in (3.0, 0.0):
        y = torch.randint(0, 5, (600,), generator=g) + 3  # classes 3..7: labels need not start at 0
        x = torch.randn(600, 12, generator=g) * torch.linspace(0.1, 10, 12)  # scales standardisation must undo
        x[:, :5] += signal * F.one_hot(y - 3, 5).float()
        x_train, y_train, x_test = x[:400], y[:400], x[400:]
        pred, alpha = ridge_probe(x_train, y_train, x_test)
        ref = make_pipeline(StandardScaler(), RidgeClassifierCV(alphas=RIDGE_ALPHAS)).fit(x_train.double().numpy(),
                                                                                          y_train.numpy())
        assert alpha == ref[-1].alpha_
        assert (pred.numpy() == ref.predict(x_test.double().numpy())).mean() >= 0.995
        if signal:
            assert float((pred == y[400:]).double().mean()) > 0.5 and alpha < RIDGE_ALPHAS[-1]  # chance: 0.2


def test_ridge_probe_does_not_shrink_the_intercept():
    """Features that carry nothing and a 70% majority class: the chosen penalty is the largest (the weights
    vanish and the intercept alone predicts the majority class everywhere). Were the intercept penalised,
    the largest penalty would shrink it to a sixth and cost leave-one-out error, and a smaller one would win."""
    from instrumentality.evaluation.world_probes import RIDGE_ALPHAS, ridge_probe

    g = torch.Generator().manual_seed(1)
    y = torch.where(torch.rand(2000, generator=g) < 0.7, 2, torch.randint(0, 2, (2000,), generator=g))
    pred, alpha = ridge_probe(torch.randn(2000, 8, generator=g), y, torch.randn(300, 8, generator=g))
    assert alpha == RIDGE_ALPHAS[-1]
    assert (pred == 2).all()


# ---------------------------------------------------------------------------- diagnostic positions, gates
def future_by_paths(world: World, s: int, k: int) -> torch.Tensor:
    """p*(x_{t+k} | state s) by walking the transition table token by token (not the flow matrix)."""
    if k == 1:
        return world.emission[s]
    out = torch.zeros(world.vocab_size, dtype=torch.float64)
    for x in (world.emission[s] > 0).nonzero().flatten().tolist():
        out += world.emission[s, x] * future_by_paths(world, int(world.transition[s, x]), k - 1)
    return out


def test_diagnostic_states_share_the_next_token_and_not_the_future_by_path_enumeration(world):
    for k in (1, 2, 3):
        future = torch.stack([future_by_paths(world, s, k) for s in range(world.n_states)])
        expected = []
        for s in range(world.n_states):
            twins = [t for t in range(world.n_states) if t != s and torch.equal(world.emission[t], world.emission[s])]
            expected.append(any(not torch.allclose(future[t], future[s], atol=1e-12) for t in twins))
        assert world.diagnostic_states(k).tolist() == expected, k
    assert not world.diagnostic_states(1).any()  # the next token alone cannot differ where it is shared
    # the hard phrases: every position emits uniformly over the hard words, and only the last is followed by prose
    assert world.diagnostic_states(2)[[s for s, kind in enumerate(world.state_kind) if kind == "hard_phrase"]].any()


def test_look_ahead_at_diagnostic_positions_is_a_ratio_over_those_positions(world, probes):
    """The truth model (hidden state: the world state) decodes at diagnostic positions up to the Bayes ceiling
    there and not beyond; the future-copying model reads the future itself. The share of positions is the
    count of diagnostic states along the test sequences, and the items average to the row's value."""
    truth = lookahead_rows(TruthModel(world), world, probes)
    rows = by_key(truth)
    oracle = by_key(lookahead_rows(FutureCopyModel(world.vocab_size, n=4), world, probes))
    test = probes.t["lookahead_test"]
    assert not any(r["probe"].startswith("lookahead/k=1/diagnostic") for r in truth)
    for k in (2, 3, 4):
        diag = f"lookahead/k={k}/diagnostic"
        states = world.states_of(test)[:, :test.shape[1] - k]
        counted = sum(bool(world.diagnostic_states(k)[s]) for s in states.flatten().tolist())
        assert rows[(diag, "share")]["value"] == pytest.approx(counted / states.numel())
        acc = rows[(f"{diag}/layer=0", "accuracy")]
        assert float(np.mean(acc["items"])) == pytest.approx(acc["value"])
        assert acc["value"] <= rows[(diag, "bayes")]["value"] + 0.03
        assert oracle[(f"{diag}/layer=0", "accuracy")]["value"] > 0.99


def test_branch_entropy_at_the_forks_is_the_binary_entropy_of_the_branch_choice(world, probes):
    from instrumentality.evaluation.world_probes import binary_entropy_of_logit

    for tilt in (0.0, 2.0):
        rows = by_key(fork_rows(TruthModel(world, tilt=tilt), world, probes))
        for p in world.cfg.fork_probs:
            q = 1 / (1 + math.exp(-(math.log(p / (1 - p)) + tilt)))
            closed = -(q * math.log(q) + (1 - q) * math.log(1 - q))
            assert rows[(f"forks/asym/p={p}", "branch_entropy")]["value"] == pytest.approx(closed, abs=1e-5)
    z = torch.tensor([-80.0, 0.0, 80.0], dtype=torch.float64)
    assert binary_entropy_of_logit(z).tolist() == pytest.approx([0.0, math.log(2), 0.0], abs=1e-12)


def test_the_positions_before_a_marker_are_those_whose_next_token_is_a_marker(world, probes):
    from instrumentality.evaluation.world_probes import position_masks

    tokens = probes.t["calibration"]
    masks = position_masks(world, world.states_of(tokens[:, :-1]), tokens[:, 1:])
    # position t predicts x_{t+1}; before a marker: the state after x_{t+1} is a fork's marker state
    after = world.states_of(tokens)[:, 1:]
    by_hand = torch.tensor([[world.state_kind[s] == "marker" for s in row] for row in after.tolist()])
    assert torch.equal(masks["before_marker"], by_hand) and by_hand.any()
    assert not (masks["before_marker"] & ~masks["prose"]).any()  # a marker follows prose only


def test_the_optimum_against_a_runs_own_pi_ref_at_one_token_is_that_models_own_steering(world, probes, tmp_path):
    """At H = 1 the optimum against pi_ref is exact (no continuation is sampled): log q*(A)/q*(B) = logit
    pi_ref(A) + (c(A) - c(B)) / beta, and the truth critic grades both branches of a p = 0.5 fork alike, so
    its steering is pi_ref's own steering index there (fork_rows, computed apart). Only free-running critic
    runs at gamma = 1 with a table critic get these rows."""
    import dataclasses

    from instrumentality.evaluation.run_rows import reference_optimum_rows
    from instrumentality.model import GPT, GPTConfig
    from instrumentality.regimes.critic import CriticRegime, CriticSettings
    from instrumentality.training.checkpoint import save_checkpoint

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=1, n_head=2, n_embd=16)
    ref = GPT(cfg).eval()
    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"model": ref.state_dict(), "model_config": dataclasses.asdict(cfg)})

    def regime(**kw):
        s = CriticSettings(**{"critic": "truth", "gamma": 1.0, "horizon": 1, "beta": 2.0,
                              "ref_checkpoint": str(path), **kw})
        return CriticRegime(world, s)

    rows = by_key(reference_optimum_rows(regime(), world, probes))
    own = by_key(fork_rows(ref, world, probes))
    for kind in ("asym", "sym"):
        assert rows[(f"forks/{kind}/p=0.5", "steering_index_ref_optimum")]["value"] == pytest.approx(
            own[(f"forks/{kind}/p=0.5", "steering_index")]["value"], abs=1e-5)
    assert rows[("forks/p=0.5", "instrumental_steering_ref_optimum")]["value"] == pytest.approx(
        own[("forks/p=0.5", "instrumental_steering")]["value"], abs=1e-5)
    for other in ({"gamma": 0.5}, {"rollout": "teacher_forced"}, {"critic": "learned"}):
        assert reference_optimum_rows(regime(**other), world, probes) == [], other


def test_a_diverged_model_is_not_scored_and_its_run_keeps_only_status_and_curves(world, probes):
    """A run that diverged (trainer.lr=1e30: finite weights near 1e28, NaN logits) used to crash the
    evaluation with an IndexError in the reliability bins; it now gets no probe rows (its status row says
    collapsed), while a working model of the same architecture is scored as before."""
    from instrumentality.evaluation.run_rows import model_rows, predicts_finite
    from instrumentality.model import GPT, GPTConfig
    from instrumentality.regimes.supervised import Supervised, SupervisedSettings

    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, n_layer=1, n_head=2, n_embd=16)
    model = GPT(cfg)
    regime = Supervised(world, SupervisedSettings())
    assert predicts_finite(model, world)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e28)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters()) and not predicts_finite(model, world)
    assert model_rows(model, world, regime, {}, probes=probes) == []

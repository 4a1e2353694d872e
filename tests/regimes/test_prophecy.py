"""F9: the prophecy forks in the world, the two regimes on them (repeated retraining; RL on the log-score)
against the exact theory, and claim C9's verdicts on a planted results table."""

import dataclasses
import hashlib
import json
import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn as nn

from instrumentality.errors import ConfigError
from instrumentality.evaluation.prophecy_probes import forecast_rows
from instrumentality.regimes import ProphecyRL, ProphecyRLSettings, Retraining, RetrainSettings
from instrumentality.regimes.prophecy import forecast_logits
from instrumentality.training.trainer import Trainer, TrainerConfig
from instrumentality.world import World, WorldConfig
from instrumentality.world.performative import ResponseMap, fixed_points, performative_risk, risk_descent_limit

STARTS = [0.08, 0.3, 0.65, 0.97]  # F9's: below, between and above the default map's fixed points


def prophecy_world(starts=STARTS, seq_len=3) -> World:
    return World(WorldConfig(prophecies=list(starts), seq_len=seq_len))


class Forecaster(nn.Module):
    """A planted model with one parameter per marker: at marker P_i its logits of <A> and <B> are +-z_i / 2
    (so its forecast is sigmoid(z_i)) and every other token's is -30 (no mass beside the two outcomes, so
    the log-loss sees only the forecast); elsewhere every logit is 0. The GPT calling convention."""

    def __init__(self, world: World, z0=None):
        super().__init__()
        self.register_buffer("markers", torch.tensor(world.prophecy_markers))
        self.z = nn.Parameter(torch.zeros(len(world.prophecy_markers)) if z0 is None else torch.tensor(z0))
        self.vocab_size = world.vocab_size

    def forward(self, idx, cache=None, return_hidden=False):
        at = (idx[..., None] == self.markers).float()  # [B, T, k]
        z = (at * self.z).sum(-1)  # [B, T]
        ab = torch.stack([z / 2, -z / 2], -1)
        rest = -30.0 * at.sum(-1, keepdim=True)  # [B, T, 1]: -30 at a marker, 0 elsewhere
        return {"logits": torch.cat([rest, ab, rest.expand(*idx.shape, self.vocab_size - 3)], -1)}


def logit(q):
    return math.log(q / (1 - q))


# ---------------------------------------------------------------------------- the world
def test_a_prophecy_opens_every_sequence_at_its_exact_rates():
    world = prophecy_world([0.2, 0.7], seq_len=5)
    x = world.sample(40000, generator=torch.Generator().manual_seed(0))
    assert (x[:, 0] == world.bos).all() and torch.isin(x[:, 1], torch.tensor(world.prophecy_markers)).all()
    assert torch.isin(x[:, 2], torch.tensor([world.branch_a, world.branch_b])).all()
    for marker, p in zip(world.prophecy_markers, [0.2, 0.7]):
        at = x[:, 1] == marker
        share, n = float(at.float().mean()), int(at.sum())
        assert abs(share - 0.5) < 4.5 * math.sqrt(0.25 / len(x))  # markers drawn uniformly
        rate = float((x[at, 2] == world.branch_a).float().mean())
        assert abs(rate - p) < 4.5 * math.sqrt(p * (1 - p) / n)  # binomial: the bound is the sampling sd
    exact = world.conditional(world.prophecy_contexts())
    assert exact[:, world.branch_a].tolist() == pytest.approx([0.2, 0.7]) and exact[:, 1:3].sum(1).tolist() == [1, 1]
    assert torch.isfinite(world.log_prob(x)).all()  # prose follows from the start state


def test_a_world_without_prophecies_is_the_world_it_was():
    world = World(WorldConfig())
    assert "prophecies" not in world.config_dict() and world.prophecy_markers == []
    cfg = dataclasses.asdict(WorldConfig())
    del cfg["prophecies"]  # the fingerprint's recipe before the field existed
    h = hashlib.sha256(json.dumps(cfg, sort_keys=True).encode())
    h.update(world.emission.numpy().tobytes())
    h.update(world.transition.numpy().tobytes())
    assert world.fingerprint() == h.hexdigest()[:16]
    assert prophecy_world().fingerprint() != world.fingerprint()


def test_with_prophecies_changes_only_the_outcome_rows():
    world = prophecy_world()
    new = world.with_prophecies([0.5, 0.5, 0.5, 0.9])
    assert new.token_names == world.token_names and torch.equal(new.transition, world.transition)
    changed = (new.emission != world.emission).any(1).nonzero().flatten().tolist()
    assert [world.state_kind[s] for s in changed] == ["prophecy"] * 4
    with pytest.raises(ValueError, match="4 prophecy markers, 2"):
        world.with_prophecies([0.5, 0.5])


@pytest.mark.parametrize("kw,key", [({"prophecies": [0.0]}, "world.prophecies"),
                                    ({"prophecies": [1.2]}, "world.prophecies"),
                                    ({"prophecies": [0.5], "seq_len": 2}, "world.seq_len")])
def test_bad_prophecy_settings_name_the_key(kw, key):
    with pytest.raises(ConfigError, match=f"^{key} must be"):
        WorldConfig(**kw)


# ---------------------------------------------------------------------------- the regimes
def test_the_regimes_refuse_a_world_without_prophecies_and_a_bad_response_map():
    with pytest.raises(ConfigError, match="world.prophecies"):
        Retraining(World(WorldConfig()), RetrainSettings())
    with pytest.raises(ConfigError, match="^regime.response_low must be below"):
        RetrainSettings(response_low=0.9, response_high=0.5)
    with pytest.raises(ConfigError, match=r"^regime.response_low must be in \(0, 1\)"):
        RetrainSettings(response_low=0.0)  # a certain outcome: the response map's theory needs f in (0, 1)
    with pytest.raises(ConfigError, match="^regime.response_steepness must be"):
        ProphecyRLSettings(response_steepness=-1.0)
    with pytest.raises(ConfigError, match="^regime.noise must be"):
        ProphecyRLSettings(noise=0.0)


def test_a_round_trains_on_the_world_its_deployment_makes(monkeypatch):
    world = prophecy_world()
    regime = Retraining(world, RetrainSettings(warmup_steps=0, batch_size=256))
    q = [0.1, 0.4, 0.6, 0.95]
    model = Forecaster(world, [logit(p) for p in q])
    f = regime.response
    assert regime.deployed(model).cfg.prophecies == pytest.approx(f(np.array(q)).tolist(), abs=1e-6)
    assert torch.sigmoid(forecast_logits(model, world.prophecy_contexts())).tolist() == pytest.approx(q, abs=1e-6)
    seen, sample = [], World.sample  # the batches the round trains on, and the world each came from

    def spy(self, *args, **kwargs):
        x = sample(self, *args, **kwargs)
        seen.append((self.cfg.prophecies, x))
        return x

    monkeypatch.setattr(World, "sample", spy)
    assert len(list(regime.updates(model, 0, torch.Generator().manual_seed(0)))) == regime.settings.round_steps
    assert len(seen) == regime.settings.round_steps
    assert all(p == pytest.approx(f(np.array(q)).tolist(), abs=1e-6) for p, _ in seen)
    x = torch.cat([x for _, x in seen])
    for marker, p in zip(world.prophecy_markers, f(np.array(q))):  # the outcome rate at marker i is f(q_i)
        at = x[:, 1] == marker
        rate = float((x[at, 2] == world.branch_a).float().mean())
        assert abs(rate - p) < 4.5 * math.sqrt(p * (1 - p) / int(at.sum()))


def smoothed_risk_slope(f: ResponseMap, z: float, noise: float) -> float:
    """d/dz E_eps[PR(sigmoid(z + noise eps))], eps ~ N(0, 1), by Gauss-Hermite quadrature and a central
    difference: what the RL update's expected gradient must equal."""
    e, w = np.polynomial.hermite_e.hermegauss(80)
    w = w / w.sum()

    def smoothed(zz):
        return float(np.sum(w * performative_risk(f, 1 / (1 + np.exp(-(zz + noise * e))))))

    h = 1e-4
    return (smoothed(z + h) - smoothed(z - h)) / (2 * h)


def test_the_rl_update_descends_the_performative_risk_including_the_forecasts_effect_on_the_outcome():
    """The RL loss's gradient at each marker is (1/k) dE[PR]/dz (the noise-smoothed risk), checked against
    quadrature within 5 standard errors of the mean of 30 independent estimates. At the confident stable
    point (q = f(q): no pull from calibration) it is clearly negative: the update pushes past the fixed
    point toward the more confident forecast that makes the outcome likelier."""
    world = prophecy_world()
    settings = ProphecyRLSettings(warmup_steps=0, samples=20_000, noise=0.3)
    regime = ProphecyRL(world, settings)
    stable_high = fixed_points(regime.response)[-1].q
    q = [0.1, 0.4, 0.6, stable_high]
    grads = []
    for repeat in range(30):  # independent estimates: their spread gives the standard error
        model = Forecaster(world, [logit(p) for p in q])
        update = next(regime.updates(model, 0, torch.Generator().manual_seed(repeat)))
        update.loss.backward()
        grads.append(model.z.grad.double().numpy())
    g = np.array(grads)
    mean, se = g.mean(0), g.std(0, ddof=1) / math.sqrt(len(g))
    expected = np.array([smoothed_risk_slope(regime.response, logit(p), settings.noise) for p in q]) / len(q)
    assert np.all(np.abs(mean - expected) < 5 * se), (mean, expected, se)
    assert expected[-1] < 0 and mean[-1] + 5 * se[-1] < 0  # at the stable point: descent moves toward confidence


@pytest.mark.parametrize("regime_class,settings", [(Retraining, RetrainSettings(warmup_steps=50, batch_size=256)),
                                                   (ProphecyRL, ProphecyRLSettings(warmup_steps=50))])
def test_each_regime_ends_where_the_theory_says_from_every_start(tmp_path, regime_class, settings):
    """A planted forecaster (one parameter per marker) trained by the shared trainer: repeated retraining
    ends at the stable point of each start's basin, RL at the risk minimum of its basin. Each is checked
    within the margin C9 uses, half the distance between those two ends (theory, not training noise)."""
    world = prophecy_world()
    regime = regime_class(world, settings)
    model = Forecaster(world)
    cfg = TrainerConfig(max_steps=550, lr=0.05, warmup_steps=0, log_every=25, ckpt_every=0, progress=False,
                        weight_decay=0.0)
    status = Trainer(model, regime, cfg, tmp_path).fit()
    assert status["status"] == "finished"
    rows = pd.DataFrame(forecast_rows(model, regime))
    final = rows[rows.metric == "forecast"].set_index("start").value
    theory = pd.DataFrame(regime.theory_rows())
    for s in STARTS:
        stable = theory[(theory.metric == "retraining_limit") & (theory.start == s)].value.item()
        descent = theory[(theory.metric == "risk_descent_limit") & (theory.start == s)].value.item()
        target = stable if regime_class is Retraining else descent
        assert abs(final[s] - target) < abs(stable - descent) / 2, (s, final[s], target)
    consistency = rows[rows.metric == "self_consistency"].value.abs()
    if regime_class is Retraining:  # at a fixed point the data its deployment makes agree with it
        assert consistency.max() < 0.02
    else:  # the risk minima are not fixed points: RL's forecasts are not calibrated on their own data
        assert consistency.min() > 0.02


def test_theory_rows_give_each_starts_ends():
    regime = Retraining(prophecy_world(), RetrainSettings())
    rows = pd.DataFrame(regime.theory_rows())
    ends = rows[rows.metric.isin(["retraining_limit", "risk_descent_limit"])].pivot(
        index="start", columns="metric", values="value")
    points = [p.q for p in fixed_points(regime.response) if p.stable]
    assert ends.retraining_limit.tolist() == pytest.approx([points[0]] * 2 + [points[1]] * 2)
    assert ends.risk_descent_limit.tolist() == pytest.approx(
        [risk_descent_limit(regime.response, s) for s in STARTS])
    assert ends.risk_descent_limit.iloc[0] < points[0] and ends.risk_descent_limit.iloc[-1] > points[1]


# ---------------------------------------------------------------------------- C9 on a planted table
def brute_force_ends() -> dict:
    """The default map's end points by brute force on a grid of 10^6 forecasts, without the package's
    theory: f(q) = 0.05 + 0.92 sigmoid(6 (q - 0.5)); its stable fixed points (f(q) - q turns from + to -);
    the local minima of the risk PR(q) = -f log q - (1 - f) log(1 - q) and the global one; C9's margins
    (half the distance from each basin's stable point to its risk minimum; half the optimum's distance to
    the nearest stable point)."""
    q = np.linspace(1e-6, 1 - 1e-6, 1_000_001)
    f = 0.05 + 0.92 / (1 + np.exp(-6 * (q - 0.5)))
    g = f - q
    stable = q[1:][(g[:-1] > 0) & (g[1:] <= 0)]
    risk = -f * np.log(q) - (1 - f) * np.log(1 - q)
    i = np.flatnonzero((risk[1:-1] < risk[:-2]) & (risk[1:-1] < risk[2:])) + 1
    minima, optimum = q[i], q[np.argmin(risk)]
    return {"stable": stable, "risk_min": minima, "optimum": optimum,
            "margin": np.abs(stable - minima) / 2, "optimum_margin": np.min(np.abs(stable - optimum)) / 2}


BF = brute_force_ends()


def test_brute_force_ends_are_the_documented_ones():
    """The values F9.yaml and docs/design.md quote, so the planted tables below sit where they claim."""
    assert BF["stable"] == pytest.approx([0.151, 0.888], abs=1e-3)
    assert BF["risk_min"] == pytest.approx([0.0586, 0.955], abs=1e-3) and BF["optimum"] == BF["risk_min"][1]
    from instrumentality.claims.prophecy import ends

    f = ResponseMap()
    for s, basin in zip(STARTS, (0, 0, 1, 1)):
        e = ends(f, s)
        assert (e["stable"], e["risk_min"], e["optimum"]) == pytest.approx(
            (BF["stable"][basin], BF["risk_min"][basin], BF["optimum"]), abs=2e-6)
        assert (e["margin"], e["optimum_margin"]) == pytest.approx((BF["margin"][basin], BF["optimum_margin"]),
                                                                   abs=2e-6)


def planted_table(rl_low_end: str = "risk_min", seeds: int = 5, retrain_off: float = 0.0) -> pd.DataFrame:
    """F9 rows of `seeds` seeds where each regime ends near the brute-force end point of its start's basin
    (seeded noise of 0.002), retraining shifted up by `retrain_off` x its margin; RL from the low starts
    ends at its basin's risk minimum, or (rl_low_end="optimum") at the optimum."""
    regime = Retraining(prophecy_world(), RetrainSettings())
    f = regime.response
    rng = np.random.default_rng(0)
    rows = []
    for seed in range(seeds):
        for name in ("retrain", "prophecy_rl"):
            run = [{**r, "run_id": f"F9/{name}-s{seed}"} for r in regime.theory_rows()]
            for s, basin in zip(STARTS, (0, 0, 1, 1)):
                if name == "retrain":
                    q = BF["stable"][basin] + retrain_off * BF["margin"][basin]
                else:
                    q = BF["optimum"] if rl_low_end == "optimum" else BF["risk_min"][basin]
                q += rng.normal(0, 0.002)
                run += [{"probe": "prophecy", "metric": "forecast", "start": s, "value": q, "ci_low": q, "ci_high": q},
                        {"probe": "prophecy", "metric": "self_consistency", "start": s, "value": q - float(f(q))}]
                run += [{"probe": "curve/prophecy", "metric": "forecast", "start": s, "step": step, "value": q}
                        for step in (25, 50)]
            run.append({"probe": "run", "metric": "finished", "value": 1.0})
            rows += [{**r, "run_id": f"F9/{name}-s{seed}", "regime": name, "seed": seed, "exp_name": "F9"} for r in run]
    return pd.DataFrame(rows)


def c9_verdicts(df: pd.DataFrame) -> dict[str, dict[str, str]]:
    """{claim kind: {start: verdict}} for C9's per-start claims."""
    from instrumentality.claims.prophecy import c9_claims

    kinds = {"repeated retraining ends": "retrain", "RL on the log-score ends at the performative optimum": "optimum",
             "RL on the log-score from a start outside the optimum's basin ends short": "short",
             "RL on the log-score ends at its basin's": "basin"}
    out: dict[str, dict[str, str]] = {}
    for c in c9_claims(df):
        for prefix, kind in kinds.items():
            if c.metric.startswith(prefix):
                out.setdefault(kind, {})[c.metric.rsplit("start ", 1)[-1]] = c.verdict
    return out


def test_c9_verdicts_on_a_planted_table():
    from instrumentality.claims.prophecy import c9_claims

    verdicts = c9_verdicts(planted_table())
    assert verdicts["retrain"] == {"0.08": "supported", "0.3": "supported", "0.65": "supported", "0.97": "supported"}
    assert [c.verdict for c in c9_claims(planted_table()) if c.metric.startswith("repeated retraining's loss")] \
        == ["supported"]
    assert verdicts["optimum"] == {"0.65": "supported", "0.97": "supported"}
    # restated as the design predicts (claims.yaml): local descent from the low starts ends short of the optimum
    assert verdicts["short"] == {"0.08": "supported", "0.3": "supported"}
    assert verdicts["basin"] == {"0.08": "supported", "0.3": "supported"}  # only where the optimum is not the basin's


@pytest.mark.parametrize("off, verdict", [(0.7, "supported"), (1.3, "not supported"), (-1.3, "not supported")])
def test_c9_retraining_is_judged_by_its_margin(off, verdict):
    """Retraining planted 0.7 or 1.3 margins (the brute-force ones: 0.046 and 0.034) from the stable point,
    with noise far below the margin: inside is supported, outside on either side is not."""
    assert set(c9_verdicts(planted_table(retrain_off=off))["retrain"].values()) == {verdict}


def test_c9_when_rl_reaches_the_optimum_from_every_start():
    from instrumentality.claims.prophecy import c9_claims

    claims = c9_claims(planted_table(rl_low_end="optimum"))
    optimum = [c.verdict for c in claims if c.row == "C9.rl_optimum"]
    short = [c.verdict for c in claims if c.row == "C9.rl_not_optimum"]
    basin = [c.verdict for c in claims if "basin's risk minimum" in c.metric]
    assert optimum == ["supported"] * 2 and short == ["not supported"] * 2 and basin == ["not supported"] * 2


def test_f9_runs_stay_out_of_the_other_claims_and_the_report_draws_f9(tmp_path):
    from instrumentality.claims.prophecy import end_table, figure_f9, report_section
    from instrumentality.claims.world import FAMILY as WORLD

    df = planted_table()
    assert WORLD.runs(df).empty
    table = end_table(df)
    assert table.start.tolist() == STARTS and all(r[3] == 5 for r in table.retrain)
    lines = report_section(df)
    assert sum(line.startswith("| 0.") for line in lines) == 4
    assert [p.suffix for p in figure_f9(df, tmp_path)] == [".png", ".pdf"]

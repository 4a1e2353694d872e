"""F9 and claim C9: where repeated retraining and RL on the log-score end at the prophecy forks, beside the
exact theory (performative.py), from the results table.

Each F9 run holds one model with one prophecy marker per start (the outcome rate before deployment); its
rows are the final forecast at each marker (`prophecy`/`forecast`, by `start`), its self-consistency
q - f(q), the forecasts logged every round (`curve/prophecy`) and the theory (`prophecy/theory`: the
response map's parameters, from which everything below is recomputed).

C9's verdict rule. Per start, one value per seed: the final forecast minus the end point the theory
predicts, judged like every claim (claims/algebra.py) against a margin m: "abs < m". The theory tells two end
points apart at each start, the stable fixed point q_s of its basin (where retraining ends) and the risk
minimum q_r of its basin (where descent on the performative risk ends); m is half their distance, so a
supported claim's interval lies nearer the predicted end than the other. The claims:
  retraining ends at q_s, the stable point of its start's basin (the self-fulfilling one above the
    unstable point), margin |q_s - q_r| / 2;
  its loss does not push it away: the mean over markers of |q - f(q)| (0 at a fixed point: the data its
    deployment makes agree with it), below half the smallest |q_r - f(q_r)| (how far from self-consistent
    the risk minima are);
  RL ends at the performative optimum q* from a start in q*'s basin, margin half the distance from q* to
    the nearest stable point; from a start in another basin it ends short of q* (below q* minus that
    margin: restated in configs/claims.yaml as the design predicts local descent)
    and at that basin's minimum q_r (margin as for retraining): a local method descends the risk it
    starts on.
The mean |q - f(q)| row is the claim's primary row (performative stability itself); the per-start rows are
secondary (Holm within the claim).
The two regimes' basins are not bounded at the same place: retraining's by the unstable fixed point
(0.4735 on the default map), risk descent's by the risk's local maximum (0.4943). A start between them
has q_s and q_r in different basins and a margin of about 0.4; F9's starts stay clear of that gap. RL
descends the risk smoothed by its forecast noise, whose minima lie within 0.002 of q_r and q*.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from instrumentality.claims import style
from instrumentality.claims.algebra import Claim, ClaimFamily, claim_of, final_rows, format_ci, per_seed, save_figure
from instrumentality.stats import seed_interval
from instrumentality.world.performative import (
    ResponseMap,
    fixed_points,
    performative_optimum,
    retraining_limit,
    risk_descent_limit,
)

PROPHECY_EXP = "F9"  # the prophecy forks: another world
REGIMES = {"retrain": "repeated retraining", "prophecy_rl": "RL on the log-score"}


def runs(df: pd.DataFrame) -> pd.DataFrame:
    """F9's rows, with `start` as a number."""
    sel = df[df["exp_name"].astype(str) == PROPHECY_EXP] if "exp_name" in df else df[:0]
    return sel.assign(start=pd.to_numeric(sel["start"], errors="coerce")) if "start" in sel else sel


def response_of(f9: pd.DataFrame) -> ResponseMap | None:
    """The response map of F9's runs, from their theory rows (None without runs; an error if they differ)."""
    rows = f9[(f9.probe == "prophecy/theory") & f9.metric.astype(str).str.startswith("response_")]
    if rows.empty:
        return None
    params = rows.groupby("metric").value.agg(["min", "max"])
    if not np.allclose(params["min"], params["max"]):
        raise ValueError("F9's runs were trained with different response maps; evaluate one map at a time")
    p = params["min"]
    return ResponseMap(p["response_low"], p["response_high"], p["response_steepness"], p["response_centre"])


def starts(f9: pd.DataFrame) -> list[float]:
    fin = final_rows(f9)
    return sorted(fin[(fin.probe == "prophecy") & (fin.metric == "forecast")].start.dropna().unique())


def ends(f: ResponseMap, start: float) -> dict:
    """The theory's end points for one start: q_s (retraining), q_r (risk descent), q* (the optimum), and
    the margins of C9's comparisons."""
    q_s, q_r, (q_opt, _) = retraining_limit(f, start), risk_descent_limit(f, start), performative_optimum(f)
    stable = [p.q for p in fixed_points(f) if p.stable]
    return {"stable": q_s, "risk_min": q_r, "optimum": q_opt, "margin": abs(q_s - q_r) / 2,
            "optimum_margin": min(abs(q_opt - q) for q in stable) / 2}


def forecast_minus(f9: pd.DataFrame, regime: str, start: float, target: float) -> pd.DataFrame:
    """Per seed: the final forecast at `start`'s marker minus `target` (exact: no item interval)."""
    t = per_seed(final_rows(f9[f9.regime == regime]), "prophecy", "forecast", start=float(start))
    v = t.value.to_numpy(float) - target
    return pd.DataFrame({"seed": t.seed, "value": v, "ci_low": v, "ci_high": v})


def self_consistency(f9: pd.DataFrame, regime: str) -> pd.DataFrame:
    """Per seed: the mean over markers of |q - f(q)| of the final forecasts."""
    fin = final_rows(f9[f9.regime == regime])
    t = fin[(fin.probe == "prophecy") & (fin.metric == "self_consistency")]
    v = t.assign(value=t.value.astype(float).abs()).groupby("seed").value.mean()
    return pd.DataFrame({"seed": v.index, "value": v.values, "ci_low": v.values, "ci_high": v.values})


def c9_claims(df: pd.DataFrame) -> list[Claim]:
    f9 = runs(df)
    f = response_of(f9)
    if f is None:
        return []
    out = []
    risk_minima = [abs(q - float(f(q))) for q in {ends(f, s)["risk_min"] for s in starts(f9)}]
    out.append(claim_of("C9.self_consistency", self_consistency(f9, "retrain"), margin=min(risk_minima) / 2))
    for s in starts(f9):
        e = ends(f, s)
        out.append(claim_of("C9.retrain_end", forecast_minus(f9, "retrain", s, e["stable"]), end=e["stable"],
                            start=s, margin=e["margin"]))
    for s in starts(f9):
        e = ends(f, s)
        in_optimum_basin = math.isclose(e["risk_min"], e["optimum"], abs_tol=1e-9)
        # descent is local: from another basin the design predicts an end short of the optimum (claims.yaml)
        out.append(claim_of("C9.rl_optimum" if in_optimum_basin else "C9.rl_not_optimum",
                            forecast_minus(f9, "prophecy_rl", s, e["optimum"]), end=e["optimum"], start=s,
                            margin=e["optimum_margin"]))
        if not in_optimum_basin:
            out.append(claim_of("C9.rl_risk_min", forecast_minus(f9, "prophecy_rl", s, e["risk_min"]),
                                end=e["risk_min"], start=s, margin=e["margin"]))
    return out


def end_table(df: pd.DataFrame) -> pd.DataFrame:
    """Per start: the theory's end points and each regime's final forecast (mean over seeds [95% CI])."""
    f9 = runs(df)
    f = response_of(f9)
    if f is None:
        return pd.DataFrame()
    rows = []
    for s in starts(f9):
        row = {"start": s, **ends(f, s)}
        for regime in REGIMES:
            t = forecast_minus(f9, regime, s, 0.0)
            row[regime] = (*seed_interval(t.value.values), len(t))
        rows.append(row)
    return pd.DataFrame(rows)


def report_section(df: pd.DataFrame) -> list[str]:
    table = end_table(df)
    if table.empty:
        return []
    f = response_of(runs(df))
    assert f is not None
    points = ", ".join(f"{p.q:.3f} ({'stable' if p.stable else 'unstable'})" for p in fixed_points(f))
    q_opt, risk = performative_optimum(f)
    lines = ["", "### F9: where each regime ends at the prophecy forks (mean over seeds [95% CI])", "",
             f"Response map f(q) = {f.low:g} + {f.high - f.low:g} sigmoid({f.steepness:g} (q - {f.centre:g})): "
             f"fixed points {points}; the performative optimum {q_opt:.3f} (risk {risk:.3f} nats), where the "
             f"outcome happens with probability {float(f(q_opt)):.3f}. Start: the outcome rate before "
             "deployment, which each marker's forecast first learns.", "",
             "| start | retraining (theory) | repeated retraining | risk descent (theory) | RL on the log-score | "
             "seeds |", "|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['start']:g} | {r['stable']:.3f} | {format_ci(r['retrain'])} | {r['risk_min']:.3f} | "
                     f"{format_ci(r['prophecy_rl'])} | {max(r['retrain'][3], r['prophecy_rl'][3])} |")
    return lines


def figure_f9(df: pd.DataFrame, folder) -> list:
    """The response map with its fixed points and optimum, each run's final forecasts on it; and the
    forecasts over training, per run and start."""
    f9 = runs(df)
    f = response_of(f9)
    if f is None:
        return []
    import matplotlib.pyplot as plt

    from instrumentality.world.performative import performative_risk

    color = style.REGIME_COLORS
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 5))
    q = np.linspace(0.001, 0.999, 999)
    ax1.plot(q, f(q), color="k", lw=1.5, label="response map f(q)")
    ax1.plot(q, q, color="grey", lw=0.8, ls=":", label="q = f(q)")
    for p in fixed_points(f):
        ax1.plot(p.q, p.q, "o", ms=9, mfc="k" if p.stable else "white", mec="k", zorder=5)
    q_opt, _ = performative_optimum(f)
    ax1.plot(q_opt, float(f(q_opt)), "*", ms=16, color=style.YELLOW, mec="k", zorder=6,
             label=f"performative optimum {q_opt:.3f}")
    risk_ax = ax1.twinx()
    risk_ax.spines["right"].set_visible(True)
    risk_ax.plot(q, performative_risk(f, q), color=style.GREY, lw=1, ls="--")
    risk_ax.set_ylabel("performative risk PR(q), nats (dashed)", color=style.GREY)
    risk_ax.set_ylim(0, 1.5)
    fin = final_rows(f9)
    for regime, label in REGIMES.items():
        t = fin[(fin.regime == regime) & (fin.probe == "prophecy") & (fin.metric == "forecast")]
        v = t.value.to_numpy(float)
        ax1.scatter(v, f(v), color=color[regime], s=22, alpha=0.7, zorder=7, label=f"{label}: final forecasts")
    ax1.set(xlabel="forecast q of the outcome", ylabel="probability the outcome happens",
            title="F9: the response map (filled: stable fixed point; open: unstable)", xlim=(0, 1), ylim=(0, 1))
    ax1.legend(loc="upper left")
    curves = f9[f9.probe == "curve/prophecy"].copy()
    curves["step"] = pd.to_numeric(curves["step"], errors="coerce")
    for regime, label in REGIMES.items():
        c = curves[curves.regime == regime]
        for j, ((_, _), t) in enumerate(c.groupby(["run_id", "start"])):
            t = t.sort_values("step")
            ax2.plot(t.step, t.value, color=color[regime], lw=0.8, alpha=0.6, label=label if j == 0 else None)
    for s in starts(f9):
        e = ends(f, s)
        ax2.axhline(e["stable"], color=color["retrain"], ls=":", lw=1)
        ax2.axhline(e["risk_min"], color=color["prophecy_rl"], ls=":", lw=1)
    ax2.scatter([0] * len(starts(f9)), starts(f9), marker="x", color="k", zorder=5,
                label="starts (the outcome rates before deployment)")
    ax2.set(xlabel="training step (warm-up on the world before deployment, then deployments)",
            ylabel="forecast at each marker",
            title="forecasts over training (dotted: the exact ends of retraining and of risk descent)", ylim=(0, 1))
    ax2.legend()
    fig.tight_layout()
    style.caption(fig, "no intervals: every point and line is one run (seed); the curves and dotted lines are "
                       "the exact theory")
    return save_figure(fig, folder, "F9_prophecy")


FAMILY = ClaimFamily(name="prophecy", owns=(PROPHECY_EXP,), claims=c9_claims, figures={"F9": figure_f9},
                     section=report_section)

"""The world claims C1-C5 and C7 and figures F1-F3, F5, F6: supervised and RL predictors of the world's
text (experiments F1: supervised against REINFORCE; F2: a critic grading H-token generations, over H and
gamma; F3: the same critic teacher-forced)."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.lines import Line2D

from instrumentality.claims import style
from instrumentality.claims.algebra import (
    Claim,
    ClaimFamily,
    check_one_run_per_seed,
    claim_of,
    combine,
    final_rows,
    format_ci,
    paired,
    per_seed,
    save_figure,
)
from instrumentality.stats import log_ratio_interval, seed_interval

KL_THRESHOLD = 0.1  # nats/token: "reached the predictor" for the samples-to-threshold ratio

# the figures' words and colours beside claims/style.py's: a regime in words, one colour per gamma (F2, F6), and
# the truth critic's two contrasts (F3's teacher-forced runs, C4.beta1's beta = 1 arm; F2_split, F5, F6)
REGIME_LABELS = {"supervised": "supervised", "reinforce": "REINFORCE (likelihood reward)",
                 "reinforce_indicator": "REINFORCE (indicator reward)", "critic": "critic"}
GAMMA_COLORS = {0.0: style.SKY, 0.5: style.BLUE, 1.0: style.GREEN}
TEACHER_FORCED_COLOR = style.PURPLE
BETA1_COLOR = style.ORANGE
HORIZON_LINESTYLES = {1: ":", 4: "--"}  # F6's critic arms; other horizons (H = 8) solid


def regime_label(regime: str) -> str:
    return REGIME_LABELS.get(regime, regime.replace("_", " "))


def gamma_color(gamma: float) -> str:
    return GAMMA_COLORS.get(float(gamma), style.GREY)


def samples_to_threshold(df: pd.DataFrame, threshold: float = KL_THRESHOLD) -> pd.DataFrame:
    """Tokens at which each run's KL curve first falls below `threshold`, interpolated log-log between the
    two evaluations around the crossing (NaN: never, within its budget)."""
    curves = df[(df.probe == "curve/calibration") & (df.metric == "kl") & (df.regime != "critic")]
    curves = curves.sort_values("tokens")
    out = []
    for run_id, c in curves.groupby("run_id"):
        t, v = c.tokens.to_numpy(float), c.value.to_numpy(float)
        hit = np.flatnonzero(v < threshold)
        tokens = math.nan
        if len(hit):
            i = hit[0]
            tokens = t[i]
            if i > 0:  # log-log interpolation between the evaluation above and the first one below
                frac = (math.log(threshold) - math.log(v[i - 1])) / (math.log(v[i]) - math.log(v[i - 1]))
                tokens = math.exp(math.log(t[i - 1]) + frac * (math.log(t[i]) - math.log(t[i - 1])))
        out.append({"run_id": run_id, "regime": c.regime.iloc[0], "seed": c.seed.iloc[0], "tokens": tokens,
                    "budget": float(c.tokens.max())})
    return pd.DataFrame(out, columns=["run_id", "regime", "seed", "tokens", "budget"])


KL_THRESHOLDS = (0.3, 0.2, 0.1, 0.07)  # the efficiency ratio's curve (C2's table and F1)


def efficiency_ratios(stt: pd.DataFrame, regime: str) -> pd.DataFrame:
    """Per seed: tokens-to-threshold(regime) / tokens-to-threshold(supervised), paired by seed, for the seeds
    where both reached the threshold; `never` counts the regime's runs that did not reach it within budget
    (they have no ratio: a budget is not a crossing)."""
    for arm in ("supervised", regime):
        check_one_run_per_seed(stt[stt.regime == arm], f"tokens to the KL threshold, {arm}")
    sup = stt[stt.regime == "supervised"].set_index("seed")
    other = stt[stt.regime == regime].set_index("seed")
    seeds = sorted(set(sup.index) & set(other.index))
    rows = [{"seed": s, "value": other.loc[s, "tokens"] / sup.loc[s, "tokens"]} for s in seeds
            if not math.isnan(other.loc[s, "tokens"]) and not math.isnan(sup.loc[s, "tokens"])]
    t = pd.DataFrame(rows, columns=["seed", "value"])
    t.attrs["never"] = int(other.tokens.isna().sum())
    t.attrs["runs"] = len(other)
    return t


def log_ratio_seeds(ratios: pd.DataFrame) -> pd.DataFrame:
    """Per-seed log ratios as a claim's per-seed table (the tokens at a crossing are exact: no item error)."""
    v = np.log(ratios.value.to_numpy(float))
    return pd.DataFrame({"seed": ratios.seed, "value": v, "ci_low": v, "ci_high": v})


def efficiency_table(df: pd.DataFrame, thresholds=KL_THRESHOLDS) -> pd.DataFrame:
    """Per regime and KL threshold: the geometric mean over seeds of tokens-to-threshold / supervised's, its
    t-interval on the log ratio, the seeds with a ratio and the runs that never reached the threshold."""
    rows = []
    for threshold in thresholds:
        stt = samples_to_threshold(df, threshold)
        for regime in ("reinforce", "reinforce_indicator"):
            if (stt.regime == regime).sum() == 0:
                continue
            r = efficiency_ratios(stt, regime)
            gm, lo, hi = log_ratio_interval(r.value.values) if len(r) else (math.nan,) * 3
            rows.append({"regime": regime, "kl": threshold, "ratio": gm, "low": lo, "high": hi, "seeds": len(r),
                         "never": r.attrs["never"], "runs": r.attrs["runs"]})
    return pd.DataFrame(rows, columns=["regime", "kl", "ratio", "low", "high", "seeds", "never", "runs"])


MARGIN_FRACTION = 0.25  # equivalence margins: this share of the relevant exact optimum (claims.yaml: C1, C4, C8)


def preset_beta(crit: pd.DataFrame) -> float:
    """The beta most critic runs use (the preset's); an arm at another beta (F2's truth-g1-H8-beta1) is the
    contrast of C4.beta1, not more seeds of the arms at the preset's beta. NaN without critic runs."""
    if crit.empty or "regime.beta" not in crit:
        return math.nan
    per_run = crit.groupby("run_id")["regime.beta"].first().astype(float)
    return float(per_run.mode().min()) if len(per_run.dropna()) else math.nan


def critics_beta(fin: pd.DataFrame) -> float:
    """preset_beta of the table's free-running critic runs."""
    return preset_beta(free_running(fin[fin.regime == "critic"]))


def at_beta(crit: pd.DataFrame, beta: float) -> pd.DataFrame:
    if "regime.beta" not in crit or math.isnan(beta):
        return crit
    return crit[np.isclose(crit["regime.beta"].astype(float), beta)]


def exact_instrumental_optimum(crit: pd.DataFrame) -> float:
    """The exact optimum's instrumental steering at p = 0.5 of the truth critic at gamma = 1, H = 8, over the
    runs' worlds (their theory rows; NaN without runs)."""
    gamma, horizon = crit["regime.gamma"].astype(float), crit["regime.horizon"].astype(float)
    t = crit[(crit.probe == "forks/p=0.5") & (crit.metric == "instrumental_steering_theory")
             & np.isclose(gamma, 1.0) & np.isclose(horizon, 8)]
    return float(t.value.astype(float).mean()) if len(t) else math.nan


def minus_theory(runs: pd.DataFrame, probe: str, metric: str) -> pd.DataFrame:
    """Per seed: a metric minus its exact optimum in the same run (the `<metric>_theory` row of its world)."""
    learned, theory = per_seed(runs, probe, metric), per_seed(runs, probe, f"{metric}_theory")
    t = learned.merge(theory[["seed", "value"]].rename(columns={"value": "theory"}), on="seed")
    return t.assign(value=t.value - t.theory, ci_low=t.ci_low - t.theory, ci_high=t.ci_high - t.theory,
                    items=None).drop(columns="theory")


def critic_runs(fin: pd.DataFrame, critic: str) -> pd.DataFrame:
    return fin[(fin.regime == "critic") & (fin["regime.critic"] == critic)] if "regime.critic" in fin else fin[:0]


def world_claims(df: pd.DataFrame) -> list[Claim]:
    """C1-C4 from the runs of F1 (supervised, REINFORCE) and F2 (the critics), and C7; C5 is the cognition
    family's (it reads F8's myopic runs); F3's teacher-forced runs are a check of the instrument
    (`instrument_checks`)."""
    fin = final_rows(df)
    sup = fin[fin.regime == "supervised"]
    beta = critics_beta(fin)
    crit = truth_critics(fin)
    at = {"regime.gamma": 1.0, "regime.horizon": 8.0}
    margin = c1_margin(fin)
    out = [claim_of("C1.instrumental", per_seed(sup, "forks/p=0.5", "instrumental_steering"), margin=margin),
           claim_of("C1.kl", per_seed(sup, "calibration", "kl")),
           claim_of("C1.steering", per_seed(sup, "forks/asym/p=0.5", "steering_index"))]
    # C2: the ratio's t-interval is on log(ratio) (the geometric mean), with the threshold 1 as log 1 = 0
    ratios = efficiency_ratios(samples_to_threshold(df), "reinforce")
    never = ratios.attrs["never"]
    c2 = claim_of("C2.ratio", log_ratio_seeds(ratios), threshold=KL_THRESHOLD,
                  note=f"{never} of {ratios.attrs['runs']} runs never reached the threshold and have no ratio"
                  if never else "")
    out.append(as_ratio(c2))
    out.append(claim_of("C2.kl_reinforce", per_seed(fin[fin.regime == "reinforce"], "calibration", "kl")))
    out.append(claim_of("C2.kl_indicator", per_seed(fin[fin.regime == "reinforce_indicator"], "calibration", "kl")))
    out.append(claim_of("C3.steering", per_seed(crit, "forks/p=0.5", "instrumental_steering", **at)))
    learned = at_beta(free_running(critic_runs(fin, "learned")), beta)
    out.append(claim_of("C3.learned", per_seed(learned, "forks/p=0.5", "instrumental_steering", **at)))
    # C4: more horizon, more steering (gamma = 1); none without credit (gamma = 0). The arms of one seed
    # start from the same supervised checkpoint: differences are taken seed by seed
    steering = lambda runs, gamma, H: per_seed(runs, "forks/asym/p=0.5", "steering_index",  # noqa: E731
                                               **{"regime.gamma": gamma, "regime.horizon": H})
    out.append(claim_of("C4.horizon", paired(steering(crit, 1.0, 8.0), steering(crit, 1.0, 1.0))))
    out.append(claim_of("C4.no_credit", steering(crit, 0.0, 8.0)))
    # C4 with an exploitable grader: the keyword critic's exact optimum steers at H=8, not at H=1
    kw = at_beta(free_running(critic_runs(fin, "keyword")), beta)
    out.append(claim_of("C4.keyword", paired(steering(kw, 1.0, 8.0), steering(kw, 1.0, 1.0))))
    # C4 at beta = 1: more room; the pilot's seeds split between the branches
    b1 = beta1_runs(fin)
    b1_opt = b1[(b1.probe == "forks/asym/p=0.5") & (b1.metric == "steering_index_theory")].value.astype(float).mean()
    out.append(claim_of("C4.beta1", minus_theory(b1, "forks/asym/p=0.5", "steering_index"),
                        margin=MARGIN_FRACTION * b1_opt if len(b1) else math.nan))
    # C7: outputs myopic (no steering) while the hidden state holds the future beyond its embedding
    out.append(claim_of("C7.lookahead_diagnostic", diagnostic_lookahead_gain(sup, k=2)))
    out.append(claim_of("C7.lookahead", lookahead_gain_per_seed(sup, k=2)))
    return out


BETA1 = 1.0  # C4.beta1's arm (F2's truth-g1-H8-beta1)


def truth_critics(fin: pd.DataFrame) -> pd.DataFrame:
    """The free-running truth-critic runs at the preset's beta (C1's margin, C3, C4, and F11's policy)."""
    return at_beta(free_running(critic_runs(fin, "truth")), critics_beta(fin))


def c1_margin(fin: pd.DataFrame) -> float:
    """C1's margin (also C11's): MARGIN_FRACTION of the exact instrumental optimum of the truth critic at
    gamma = 1, H = 8, over the table's worlds (NaN without critic runs)."""
    return MARGIN_FRACTION * exact_instrumental_optimum(truth_critics(fin))


def truth_g1_h8(fin: pd.DataFrame, beta: float) -> pd.DataFrame:
    """F2's free-running truth critic at gamma = 1, H = 8 and `beta`."""
    t = at_beta(free_running(critic_runs(fin, "truth")), beta)
    return t[np.isclose(t["regime.gamma"].astype(float), 1.0) & np.isclose(t["regime.horizon"].astype(float), 8)]


def beta1_runs(fin: pd.DataFrame) -> pd.DataFrame:
    """F2's truth critic at gamma = 1, H = 8 and beta = 1 where the preset's beta is another (empty where the
    preset's beta is 1 itself: the quick preset has no contrast)."""
    beta = critics_beta(fin)
    if math.isnan(beta) or math.isclose(beta, BETA1):
        return fin[:0]
    return truth_g1_h8(fin, BETA1)


def as_ratio(c: Claim) -> Claim:
    """A row decided on log ratios (prediction "> 1" read as log ratio > 0), reported as ratios: the
    geometric mean and the interval mapped back by exp. The per-seed values become ratios again."""
    exp = lambda x: math.exp(x) if not math.isnan(x) else x  # noqa: E731
    seeds = None if c.seeds is None else c.seeds.assign(value=np.exp(c.seeds.value), ci_low=np.exp(c.seeds.ci_low),
                                                        ci_high=np.exp(c.seeds.ci_high))
    fields_: dict[str, Any] = {f.name: getattr(c, f.name) for f in fields(Claim)}
    fields_.update(value=exp(c.value), low=exp(c.low), high=exp(c.high), seeds=seeds)
    return LogRatioClaim(**fields_, log_seeds=c.seeds)


@dataclass
class LogRatioClaim(Claim):
    """A ratio row: shown as ratios, decided (verdict, p-values, split, remedy) on the log ratios, whose
    t-interval is the one whose coverage is proven; "> 1" is "log ratio > 0"."""

    log_seeds: pd.DataFrame | None = None

    def _on_logs(self) -> Claim:
        log = lambda x: math.log(x) if x > 0 else math.nan  # noqa: E731
        fields_: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(Claim)}
        fields_.update(prediction=f"{self.prediction.split()[0]} 0", value=log(self.value), low=log(self.low),
                       high=log(self.high), seeds=self.log_seeds)
        return Claim(**fields_)

    @property
    def raw_verdict(self) -> str:
        return self._on_logs().raw_verdict

    @property
    def modes(self):
        return self._on_logs().modes

    def p_values(self) -> tuple[float, float]:
        return self._on_logs().p_values()

    @property
    def remedy(self):
        return self._on_logs().remedy

    @property
    def split_description(self) -> str:
        return self._on_logs().split_description


def free_running(df: pd.DataFrame) -> pd.DataFrame:
    """Critic runs whose own samples were fed back (F2's setting); teacher-forced runs are F3's contrast."""
    if "regime.rollout" not in df:
        return df
    return df[df["regime.rollout"].isna() | (df["regime.rollout"] == "free")]


def lookahead_gain_per_seed(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per run (seed): the best layer's probe accuracy for x_{t+k} minus the majority-class chance."""
    rows = []
    for _, r in df[df.probe.astype(str).str.fullmatch(rf"lookahead/k={k}(/layer=\d+)?")].groupby("run_id"):
        acc = r[r.metric == "accuracy"]
        chance = r[r.metric == "chance"]
        if acc.empty or chance.empty:
            continue
        best = acc.loc[acc.value.idxmax()]
        c = chance.value.iloc[0]
        items = None  # per test sequence: accuracy minus the majority class's (the same sequences in every run)
        if isinstance(best.get("items"), np.ndarray) and isinstance(chance["items"].iloc[0], np.ndarray):
            items = best["items"] - chance["items"].iloc[0]
        rows.append({"seed": best.seed, "value": best.value - c, "ci_low": best.ci_low - c,
                     "ci_high": best.ci_high - c, "items": items})
    return pd.DataFrame(rows, columns=["seed", "value", "ci_low", "ci_high", "items"])


def layer_accuracy(df: pd.DataFrame, k: int, layer: int | str) -> pd.DataFrame:
    """Per run (seed): the look-ahead probe's accuracy for x_{t+k} at the diagnostic positions, at one layer
    (0: the token and position embedding; "last": the run's last hidden layer)."""
    prefix = f"lookahead/k={k}/diagnostic/layer="
    acc = df[df.probe.astype(str).str.startswith(prefix) & (df.metric == "accuracy")]
    n = acc.probe.str.slice(len(prefix)).astype(int)
    wanted = n.groupby(acc.run_id).transform("max") if layer == "last" else layer
    return per_seed(acc[n == wanted].assign(probe="layer"), "layer", "accuracy")


def diagnostic_lookahead_gain(df: pd.DataFrame, k: int) -> pd.DataFrame:
    """Per seed: look-ahead accuracy for x_{t+k} at the diagnostic positions, the last layer minus layer 0 (the
    token and position embedding), item by item (the same test sequences)."""
    return paired(layer_accuracy(df, k, "last"), layer_accuracy(df, k, 0))


def lookahead_gain(df: pd.DataFrame, k: int) -> tuple[float, float, float, int]:
    """lookahead_gain_per_seed combined over seeds: (mean, low, high, seeds)."""
    t = lookahead_gain_per_seed(df, k)
    if t.empty:
        return math.nan, math.nan, math.nan, 0
    return (*seed_interval(t.value.values, t.ci_low.values, t.ci_high.values), len(t))


def seed_band(table: pd.DataFrame) -> pd.DataFrame:
    """Per row of a table with a column per seed: the mean over the seeds with a value there, its 95% interval
    over seeds (Student t; seed_interval) and the number of those seeds."""
    rows = [(*seed_interval(row.dropna().values), row.notna().sum()) for _, row in table.iterrows()]
    return pd.DataFrame(rows, index=table.index, columns=["mean", "low", "high", "seeds"])


def token_ticks(ax) -> None:
    """Tick labels 1, 2, 5 x 10^k on a log axis of tokens, as 200k or 1M, in place of 2 x 10^5 at every minor tick."""
    lo, hi = ax.get_xlim()
    ticks = [m * 10.0 ** e for e in range(2, 12) for m in (1, 2, 5) if lo <= m * 10.0 ** e <= hi]
    ax.set_xticks(ticks, [f"{t / 1e6:g}M" if t >= 1e6 else f"{t / 1e3:g}k" for t in ticks])
    ax.tick_params(axis="x", which="minor", labelbottom=False)


def figure_f1(df: pd.DataFrame, folder: Path) -> list[Path]:
    curves = df[(df.probe == "curve/calibration") & (df.metric == "kl") & (df.regime != "critic")]
    if curves.empty:
        return []
    fig, (ax, ratio_ax) = plt.subplots(1, 2, figsize=(12, 4.2), gridspec_kw={"width_ratios": [1.6, 1]})
    for regime, c in curves.groupby("regime"):
        table = c.pivot_table(index="tokens", columns="seed", values="value")
        band = seed_band(table)
        color = style.REGIME_COLORS.get(regime)
        ax.plot(band.index, band["mean"], label=f"{regime_label(regime)}, {table.shape[1]} seeds", color=color)
        ax.fill_between(band.index, band.low, band.high, where=band.seeds >= 3, alpha=0.2, color=color, lw=0)
    status = df[df.probe == "run"]
    collapsed = status[status.metric == "collapsed"].groupby("regime").size()
    ax.axhline(KL_THRESHOLD, ls=":", color="grey", lw=1)
    ax.set(xscale="log", yscale="log", xlabel="tokens seen", ylabel="KL(p* || model), nats per token",
           title="F1: KL to the truth against tokens seen"
           + "".join(f"\n{n} {regime_label(r)} runs collapsed" for r, n in collapsed.items()))
    token_ticks(ax)
    ax.legend()
    # how much less efficient, as a curve over the threshold (C2)
    eff = efficiency_table(df, thresholds=sorted({*KL_THRESHOLDS, 0.5, 0.15, 0.05}, reverse=True))
    for regime, e in eff.groupby("regime"):
        e = e[e.seeds > 0]
        if e.empty:
            continue
        color = style.REGIME_COLORS.get(regime)
        ratio_ax.plot(e.kl, e.ratio, "o-", color=color, label=regime_label(regime))
        ratio_ax.fill_between(e.kl, e.low, e.high, color=color, alpha=0.2, lw=0)
        for r in e[e.seeds < e.runs].itertuples():  # where some runs never reached the threshold
            ratio_ax.annotate(f"{r.seeds} of {r.runs} seeds", (r.kl, r.ratio), fontsize=8, xytext=(3, 4),
                              textcoords="offset points")
    ratio_ax.axhline(1, color="grey", lw=0.5)
    ratio_ax.set(xscale="log", xlabel="KL threshold, nats per token", ylabel="tokens to the threshold, RL / supervised",
                 title="C2: how much less efficient RL is")
    ratio_ax.set_xticks(sorted(eff.kl.unique()), [f"{k:g}" for k in sorted(eff.kl.unique())])
    ratio_ax.minorticks_off()
    ratio_ax.invert_xaxis()
    if ratio_ax.get_legend_handles_labels()[0]:
        ratio_ax.legend(loc="upper left")
    fig.tight_layout()
    style.caption(fig, "left: mean over seeds, band: 95% CI of the mean over seeds (Student t), over the seeds still "
                       "running at each point (a collapsed run stops early; no band where fewer than 3 are left)",
                  "dotted: the KL threshold of C2", "right: geometric mean over seeds of each seed's ratio, band: "
                  "95% t-interval on the log ratio; 'k of n seeds': only k seeds reached that threshold within budget")
    return save_figure(fig, folder, "F1_kl_vs_tokens")


def figure_f2(df: pd.DataFrame, folder: Path) -> list[Path]:
    fin = final_rows(df)
    crit = free_running(fin[fin.regime == "critic"])
    crit = at_beta(crit, preset_beta(crit))  # the beta = 1 arm has its own figure (F2_split_beta)
    if crit.empty:
        return []
    theory = df[df.probe == "theory_curve/forks/asym/p=0.5"]
    critics = sorted(crit["regime.critic"].dropna().unique())
    fig, axes = plt.subplots(1, len(critics), figsize=(4.6 * len(critics), 3.8), squeeze=False, sharex=True)
    all_gammas = sorted(crit["regime.gamma"].dropna().unique())
    for ax, critic in zip(axes[0], critics):
        of_critic = crit[crit["regime.critic"] == critic]
        # the gammas this critic was run at (an H = 1 run's gamma does not enter: it joins every curve)
        gammas = sorted(of_critic[of_critic["regime.horizon"] > 1]["regime.gamma"].dropna().unique()) or all_gammas
        for gamma in gammas:
            i = all_gammas.index(gamma)  # each gamma's points a little apart
            color = gamma_color(gamma)
            th = theory[(theory["regime.critic"] == critic) & np.isclose(theory["regime.gamma"], gamma)
                        & (theory.metric == "steering_index")]
            th = th.groupby("horizon").value.mean()
            ax.plot(th.index, th.values, color=color, lw=1)
            pts = []
            # an H = 1 run's gamma does not enter: where this gamma has no H = 1 runs, another gamma's join
            here = of_critic[np.isclose(of_critic["regime.gamma"], gamma)]
            h1 = of_critic[of_critic["regime.horizon"] == 1]
            runs = pd.concat([here, h1[~h1.index.isin(here.index)]]) if (here["regime.horizon"] != 1).all() else here
            for H in sorted(runs["regime.horizon"].dropna().unique()):
                v = combine(runs, "forks/asym/p=0.5", "steering_index", **{"regime.horizon": float(H)})
                if v[3]:
                    pts.append((H, *v[:3]))
            if pts:
                H, m, lo, hi = map(np.array, zip(*pts))
                dx = 0.15 * (i - (len(all_gammas) - 1) / 2)
                ax.errorbar(H + dx, m, yerr=[m - lo, hi - m], fmt="o", color=color, capsize=3)
                seeds = runs[(runs.probe == "forks/asym/p=0.5") & (runs.metric == "steering_index")]
                ax.scatter(seeds["regime.horizon"] + dx + 0.25, seeds.value, s=8, color=color, alpha=0.6)
        betas = of_critic["regime.beta"].dropna().unique() if "regime.beta" in of_critic else []
        beta = ", ".join(f"{b:g}" for b in sorted(betas))
        title = f"F2: {critic} critic" + (f", beta = {beta}" if beta else "")
        ax.set(xlabel="horizon H (tokens the critic grades)", title=title)
        ax.axhline(0, color="grey", lw=0.5)
    axes[0, 0].set_ylabel("steering index at the asymmetric\np = 0.5 fork (nats)")
    handles = [Line2D([], [], color=gamma_color(g), lw=4, label=f"gamma = {g:g}") for g in all_gammas]
    handles += [Line2D([], [], color="0.3", lw=1, label="exact optimum"),
                Line2D([], [], color="0.3", marker="o", ls="", label="learned: mean over seeds"),
                Line2D([], [], color="0.3", marker="o", ms=3, ls="", alpha=0.6, label="learned: one seed")]
    fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    style.caption(fig, style.SEED_CI, "small dots: single seeds; an H = 1 run's gamma does not enter its "
                                      "objective, so its points join every gamma's")
    return save_figure(fig, folder, "F2_steering_vs_horizon")


def arm_label(run: pd.Series) -> str:
    """A run's arm in a few words: its regime, and for the critic regime its critic, gamma, H and rollout."""
    if run.regime != "critic":
        return str(run.regime)
    label = f"critic {run['regime.critic']}, gamma {float(run['regime.gamma']):g}, H {int(run['regime.horizon'])}"
    beta = float(run.get("regime.beta", math.nan))
    label += "" if math.isnan(beta) else f", beta {beta:g}"
    return label + (", teacher-forced" if run.get("regime.rollout") == "teacher_forced" else "")


def reliability(runs: pd.DataFrame) -> pd.DataFrame:
    """An arm's reliability bins, mean over its seeds: confidence, accuracy under p* and share of positions."""
    t = runs.pivot_table(index="bin", columns="kind", values="value", aggfunc="mean").dropna()
    t = t[t["count"] > 0]
    return t.assign(share=t["count"] / t["count"].sum())


def other_beta(run: pd.Series, beta: float) -> bool:
    """Whether a critic run's beta is not the preset's `beta` (C4.beta1's arm)."""
    b = float(run.get("regime.beta", math.nan))
    return not (math.isnan(b) or math.isnan(beta) or np.isclose(b, beta))


def f6_label(run: pd.Series, beta: float) -> str:
    """An arm in F6's legend: a regime in words; a critic arm by its gamma and H, and its beta or rollout where
    they are not the preset's."""
    if run.regime != "critic":
        return regime_label(run.regime)
    label = f"gamma {float(run['regime.gamma']):g}, H {int(run['regime.horizon'])}"
    label += f", beta {float(run['regime.beta']):g}" if other_beta(run, beta) else ""
    return label + (", teacher-forced" if run.get("regime.rollout") == "teacher_forced" else "")


def arm_style(run: pd.Series, beta: float) -> dict[str, Any]:
    """F6's line for an arm: a regime's colour; a critic arm's gamma's, or its contrast's (teacher-forced, or a
    beta other than the preset's); the line style by horizon."""
    if run.regime != "critic":
        return {"color": style.REGIME_COLORS.get(run.regime, style.GREY), "ls": "-"}
    if run.get("regime.rollout") == "teacher_forced":
        color = TEACHER_FORCED_COLOR
    elif other_beta(run, beta):
        color = BETA1_COLOR
    else:
        color = gamma_color(run["regime.gamma"])
    return {"color": color, "ls": HORIZON_LINESTYLES.get(int(run["regime.horizon"]), "-")}


def figure_f6(df: pd.DataFrame, folder: Path) -> list[Path]:
    """Reliability, one panel per regime (the critic: per critic) with its arms overlaid: accuracy under p*
    against the model's confidence, mean over seeds; below, the share of probe positions in each confidence bin."""
    rel = df[df.probe == "calibration/reliability"]
    if rel.empty:
        return []
    rel = rel.assign(arm=rel.apply(arm_label, axis=1), bin=rel.metric.str.slice(3, 5).astype(int),
                     kind=rel.metric.str.split("_").str[-1],
                     panel=["supervised and REINFORCE" if r != "critic" else f"{c} critic"
                            for r, c in zip(rel.regime, rel.get("regime.critic", rel.regime))])
    beta = preset_beta(free_running(rel[rel.regime == "critic"]))
    panels = sorted(rel.panel.unique(), key=lambda p: (p.endswith("critic"), p))
    cols = min(len(panels), 2)
    rows = -(-len(panels) // cols)
    fig = plt.figure(figsize=(5.2 * cols, 5.2 * rows))
    grid = fig.add_gridspec(rows, cols, left=0.1, right=0.98, bottom=0.5 / (5.2 * rows), top=0.97, hspace=0.22,
                            wspace=0.3)
    for i, panel in enumerate(panels):
        inner = grid[i].subgridspec(2, 1, height_ratios=[3, 1], hspace=0.08)
        ax = fig.add_subplot(inner[0])
        share_ax = fig.add_subplot(inner[1], sharex=ax)
        of_panel = rel[rel.panel == panel]
        for arm, r in sorted(of_panel.groupby("arm"), key=lambda a: a[0]):
            t = reliability(r)
            line = arm_style(r.iloc[0], beta)
            ax.plot(t["conf"], t["acc"], marker="o", ms=3, label=f6_label(r.iloc[0], beta), **line)
            share_ax.plot(t.index / 10 + 0.05, t.share, marker="o", ms=2, lw=1, **line)
        ax.plot([0, 1], [0, 1], ls=":", color="grey", lw=1)
        seeds = of_panel.groupby("arm").seed.nunique()
        n = f"{seeds.min()}" + (f" to {seeds.max()}" if seeds.max() > seeds.min() else "")
        ax.set(xlim=(0, 1), ylim=(0, 1), title=f"F6: {panel} ({n} seeds per arm)", ylabel="accuracy under p*")
        ax.tick_params(labelbottom=False)
        ax.legend(loc="upper left", fontsize=8)
        share_ax.set(ylim=(0, None), xlabel="confidence of the top token", ylabel="share of\npositions")
    critic_note = "" if math.isnan(beta) else (
        f"critic arms: free-running at beta = {beta:g} unless named; colour: their gamma's (as in F2), teacher-forced "
        "purple, another beta orange; line: H = 1 dotted, H = 4 dashed, H = 8 solid")
    style.caption(fig, "no intervals: each point is the mean over an arm's seeds of one confidence bin",
                  "dotted: calibrated", critic_note)
    return save_figure(fig, folder, "F6_reliability")


def figure_f3(df: pd.DataFrame, folder: Path) -> list[Path]:
    fin = final_rows(df)
    if "regime.critic" not in fin:
        return []
    # the truth critic only: F2's keyword critic at gamma = 1, H = 8 is another arm, not more seeds; and at
    # the preset's beta (F2's beta = 1 arm is C4.beta1's)
    crit = fin[(fin.regime == "critic") & (fin["regime.critic"] == "truth")
               & np.isclose(fin["regime.gamma"].astype(float), 1.0)
               & np.isclose(fin["regime.horizon"].astype(float), 8.0)]
    crit = at_beta(crit, critics_beta(fin))
    if "regime.rollout" not in crit or crit["regime.rollout"].nunique() < 2:
        return []
    probes = [f"forks/asym/p={p}" for p in (0.2, 0.5, 0.8)]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    looks = {"free": ("free-running", gamma_color(1.0)), "teacher_forced": ("teacher-forced", TEACHER_FORCED_COLOR)}
    for i, (rollout, (label, color)) in enumerate(looks.items()):
        sub = crit[crit["regime.rollout"] == rollout]
        vals = [combine(sub, p, "steering_index") for p in probes]
        x = np.arange(len(probes)) + (i - 0.5) * 0.35
        m = np.array([v[0] for v in vals])
        ax1.bar(x, m, width=0.35, label=label, color=color,
                yerr=[m - [v[1] for v in vals], [v[2] for v in vals] - m], capsize=3)
        acc = [lookahead_gain(sub, k) for k in range(1, 5)]
        ax2.errorbar(np.arange(1, 5) + (i - 0.5) * 0.1, [a[0] for a in acc], color=color,
                     yerr=[[a[0] - a[1] for a in acc], [a[2] - a[0] for a in acc]], fmt="o-", capsize=3,
                     label=label)
    theory = crit[crit.metric == "steering_index_theory"].groupby("probe").value.mean()
    ax1.hlines([theory.get(p, np.nan) for p in probes], np.arange(len(probes)) - 0.4, np.arange(len(probes)) + 0.4,
               color="black", lw=1.5, label="exact optimum")
    ax1.set(xticks=range(len(probes)), xticklabels=[f"p = {p.split('=')[-1]}" for p in probes],
            xlabel="asymmetric fork, p* of its easy branch", ylabel="steering index (nats)",
            title="F3: truth critic, gamma = 1, H = 8")
    ax1.axhline(0, color="grey", lw=0.5)
    low, high = ax1.get_ylim()
    ax1.set_ylim(low, high + 0.15 * (high - low))  # room for the legend above the bars
    ax1.legend(loc="upper center", ncol=3)
    ax2.set(xticks=range(1, 5), xlabel="k (tokens ahead)", ylabel="look-ahead probe accuracy - chance\n(best layer)",
            title="look-ahead decodability")
    ax2.legend()
    fig.tight_layout()
    style.caption(fig, style.SEED_CI)
    return save_figure(fig, folder, "F3_free_vs_teacher_forced")


def f5_group(run: pd.Series) -> tuple[str, str]:
    """F5's group of a run and its colour: its regime; a critic run free-running or teacher-forced."""
    if run.regime != "critic":
        return regime_label(run.regime), style.REGIME_COLORS.get(run.regime, style.GREY)
    if run.get("regime.rollout") == "teacher_forced":
        return "critic, teacher-forced", TEACHER_FORCED_COLOR
    return "critic, free-running", style.REGIME_COLORS["critic"]


def figure_f5(df: pd.DataFrame, folder: Path) -> list[Path]:
    fin = final_rows(df)
    points = []
    for run_id, r in fin.groupby("run_id"):
        steer = r[(r.probe == "forks/asym/p=0.5") & (r.metric == "steering_index")]
        gain = lookahead_gain(r, k=2)
        if len(steer) and gain[3]:
            points.append((f5_group(r.iloc[0]), float(steer.value.iloc[0]), gain[0]))
    if not points:
        return []
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, color in sorted({p[0] for p in points}):
        xs = [p[1] for p in points if p[0] == (label, color)]
        ys = [p[2] for p in points if p[0] == (label, color)]
        ax.scatter(xs, ys, label=label, color=color, s=18, alpha=0.8)
    ax.set_xscale("symlog", linthresh=0.5, linscale=1)  # the cloud near 0 readable beside runs at +-10
    low, high = ax.get_xlim()
    ticks = [t for t in (-30, -10, -3, -1, -0.5, 0, 0.5, 1, 3, 10, 30) if low <= t <= high]
    ax.set_xticks(ticks, [f"{t:g}" for t in ticks])
    ax.xaxis.set_minor_locator(plt.NullLocator())
    ax.set(xlabel="steering index at the asymmetric p = 0.5 fork, nats (outputs)",
           ylabel="look-ahead accuracy - chance, k = 2\n(best layer; cognition)",
           title="F5: look-ahead decodability against steering, one point per run")
    ax.axvline(0, color="grey", lw=0.5)
    ax.legend(loc="lower center")
    fig.tight_layout()
    style.caption(fig, "no intervals: each dot is one run (one seed)",
                  "x axis linear within +-0.5 nats, logarithmic beyond")
    return save_figure(fig, folder, "F5_lookahead_vs_steering")


def tokens_to_kl_section(df: pd.DataFrame) -> list[str]:
    """The report's table of tokens to the KL threshold, per run."""
    stt = samples_to_threshold(df)
    if stt.empty:
        return []
    lines = ["", f"### Tokens to KL < {KL_THRESHOLD} nats/token (per run; blank: not reached within budget)",
             "", "| run | tokens | budget |", "|---|---|---|"]
    for r in stt.itertuples():
        lines.append(f"| {r.run_id} | {'' if math.isnan(r.tokens) else f'{r.tokens:.3g}'} | {r.budget:.3g} |")
    table = efficiency_table(df)
    if not table.empty:
        lines += ["", "### How much less efficient: tokens to KL < threshold, RL / supervised, at several thresholds",
                  "", "Geometric mean over the seeds where both arms reached the threshold, with a 95% t-interval on "
                  "the log ratio; a run that never reached a threshold has no ratio there and is counted instead "
                  "(its budget is not a crossing).", "",
                  "| regime | KL threshold | ratio [95% CI] | seeds with a ratio | runs that never reached it |",
                  "|---|---|---|---|---|"]
        for r in table.itertuples():
            ratio = format_ci((r.ratio, r.low, r.high), ".3g") if r.seeds else "-"
            lines.append(f"| {r.regime} | {r.kl:g} | {ratio} | {r.seeds} | {r.never} of {r.runs} |")
    return lines


def instrument_checks(df: pd.DataFrame) -> list[str]:
    """F3's teacher-forced critic runs as what they are: a check of the instrument. Teacher-forced, later
    contexts do not depend on the first token, so the critic's later rewards cannot credit it: no steering by
    construction, and free-running steering above it shows the channel F2 measures."""
    fin = final_rows(df)
    truth = critic_runs(fin, "truth")
    if "regime.rollout" not in truth or (truth["regime.rollout"] != "teacher_forced").all():
        return []
    crit = at_beta(free_running(truth), critics_beta(fin))
    forced = truth[truth["regime.rollout"] == "teacher_forced"]
    at = {"regime.gamma": 1.0, "regime.horizon": 8.0}
    forced_s = per_seed(forced, "forks/asym/p=0.5", "steering_index", **at)
    diff = paired(per_seed(crit, "forks/asym/p=0.5", "steering_index", **at), forced_s)
    rows = []
    for what, t, expect, holds in (
            ("teacher-forced truth critic, steering at p=0.5, gamma=1, H=8 (nats)", forced_s, "abs < 0.5",
             lambda lo, hi: -0.5 < lo and hi < 0.5),
            ("free-running minus teacher-forced, same arm (nats, paired by seed)", diff, "> 0",
             lambda lo, hi: lo > 0)):
        if t.empty:
            continue
        m, lo, hi = seed_interval(t.value.values, t.ci_low.values, t.ci_high.values)
        verdict = "yes" if holds(lo, hi) else "no"
        rows.append(f"| {what} | {format_ci((m, lo, hi))} | {len(t)} | {expect} | {verdict} |")
    if not rows:
        return []
    return ["", "### Checks of the instrument (not claims)", "",
            "F3 runs the critic regime teacher-forced: the world's tokens are fed back, so later rewards cannot "
            "credit the first token and steering is absent by construction (configs/claims.yaml, C5). Its rows "
            "check that the instrument reads no steering where there can be none.", "",
            "| check | mean [95% CI] | seeds | expected | holds |", "|---|---|---|---|---|", *rows]


LOOKAHEAD_KS = (1, 2, 3, 4)


def lookahead_table(df: pd.DataFrame) -> pd.DataFrame:
    """C7's table, supervised runs, per k: at the diagnostic positions, the probe accuracy at layer 0 (the
    embedding), the last layer and the best layer (mean over seeds), the Bayes ceiling and chance, the gain
    last - layer 0 with its interval, and that gain as a share of (Bayes - layer 0)."""
    sup = final_rows(df)
    sup = sup[sup.regime == "supervised"]
    rows = []
    for k in LOOKAHEAD_KS:
        first, last = layer_accuracy(sup, k, 0), layer_accuracy(sup, k, "last")
        if first.empty:
            continue
        diag = f"lookahead/k={k}/diagnostic"
        layers = sup[sup.probe.astype(str).str.startswith(diag + "/layer=") & (sup.metric == "accuracy")]
        best = layers.groupby("probe").value.mean().max()
        bayes = per_seed(sup, diag, "bayes").value.mean()
        gain = diagnostic_lookahead_gain(sup, k)
        g = seed_interval(gain.value.values, gain.ci_low.values, gain.ci_high.values)
        rows.append({"k": k, "seeds": len(gain), "share": per_seed(sup, diag, "share").value.mean(),
                     "chance": per_seed(sup, diag, "chance").value.mean(), "layer 0": first.value.mean(),
                     "last layer": last.value.mean(), "best layer": best, "bayes": bayes, "gain": g,
                     "of ceiling": g[0] / (bayes - first.value.mean())})
    return pd.DataFrame(rows)


def lookahead_section(df: pd.DataFrame) -> list[str]:
    t = lookahead_table(df)
    if t.empty:
        return []
    lines = ["", "### C7: look-ahead beyond the embedding, at diagnostic positions (supervised runs)", "",
             "Diagnostic positions: the state there shares its next-token distribution with another state whose "
             "x_{t+k} differ (World.diagnostic_states), so the present's prediction does not tell the future "
             "apart. Probe accuracy decoding x_{t+k}, mean over seeds; gain = last layer - layer 0 with its "
             "95% interval; of ceiling = gain / (Bayes - layer 0).", "",
             "| k | seeds | share of positions | chance | layer 0 | last layer | best layer | Bayes | gain "
             "| of ceiling |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in t.to_dict("records"):
        lines.append(f"| {r['k']} | {r['seeds']} | {r['share']:.2f} | {r['chance']:.3f} | {r['layer 0']:.3f} | "
                     f"{r['last layer']:.3f} | {r['best layer']:.3f} | {r['bayes']:.3f} | {format_ci(r['gain'])} | "
                     f"{r['of ceiling']:.0%} |")
    return lines


COMMITTED = 0.99  # a seed has committed to a branch where it takes it with at least this probability


def branch_commitment(steering: np.ndarray) -> dict[str, int]:
    """Seeds by the branch they take at the asymmetric p = 0.5 fork (logit p* = 0, so the easy branch's
    probability is sigmoid(steering)): committed to the easy one, to the hard one, or neither."""
    q = 1 / (1 + np.exp(-np.asarray(steering, float)))
    return {"easy": int((q >= COMMITTED).sum()), "hard": int((q <= 1 - COMMITTED).sum()),
            "neither": int(((q < COMMITTED) & (q > 1 - COMMITTED)).sum())}


def beta_arms(df: pd.DataFrame) -> list[tuple[float, pd.DataFrame, float]]:
    """C4.beta1's two arms of the truth critic at gamma = 1, H = 8: (beta, per-seed steering at the asymmetric
    p = 0.5 fork sorted by seed, the exact optimum there), the preset's beta first; empty without a beta = 1 arm."""
    fin = final_rows(df)
    b1 = beta1_runs(fin)
    if b1.empty:
        return []
    beta = critics_beta(fin)
    out = []
    for b, runs in ((beta, truth_g1_h8(fin, beta)), (BETA1, b1)):
        opt = runs[(runs.probe == "forks/asym/p=0.5") & (runs.metric == "steering_index_theory")].value.mean()
        out.append((b, per_seed(runs, "forks/asym/p=0.5", "steering_index").sort_values("seed"), opt))
    return out


def split_section(df: pd.DataFrame) -> list[str]:
    arms = beta_arms(df)
    if not arms:
        return []
    lines = ["", f"### C4.beta1: the truth critic at beta = 1 against beta = {arms[0][0]:g} (gamma = 1, H = 8)", "",
             f"Per seed, steering at the asymmetric p = 0.5 fork; a seed has committed to a branch where it takes "
             f"it with probability >= {COMMITTED}.", "",
             "| beta | exact optimum | per-seed steering | easy | hard | neither |", "|---|---|---|---|---|---|"]
    for b, s, opt in arms:
        c = branch_commitment(s.value.values)
        lines.append(f"| {b:g} | {opt:.2f} | {', '.join(f'{v:.2f}' for v in s.value)} | {c['easy']} | {c['hard']} | "
                     f"{c['neither']} |")
    return lines


def figure_f2_split(df: pd.DataFrame, folder: Path) -> list[Path]:
    """Per-seed end points of the truth critic (gamma = 1, H = 8) at the preset's beta and at beta = 1, each
    against its exact optimum, with the count of seeds committed to each branch."""
    arms = beta_arms(df)
    if not arms:
        return []
    fig, ax = plt.subplots(figsize=(8.5, 4.5))
    for i, (b, s, opt) in enumerate(arms):
        color = gamma_color(1.0) if i == 0 else BETA1_COLOR  # the preset's arm as in F2; C4.beta1's its own
        ax.scatter(np.full(len(s), i) + np.linspace(-0.15, 0.15, len(s)), s.value, color=color, s=25,
                   label=f"beta = {b:g}: one seed")
        ax.hlines(opt, i - 0.3, i + 0.3, color=color, lw=2, label=f"beta = {b:g}: exact optimum {opt:.2f}")
        c = branch_commitment(s.value.values)
        ax.annotate(f"committed: easy {c['easy']}, hard {c['hard']}, neither {c['neither']}", (i, 0.02),
                    xycoords=("data", "axes fraction"), ha="center", fontsize=8)
    ax.axhline(0, color="grey", lw=0.5)
    ax.set_xticks([0, 1], [f"beta = {b:g}" for b, _, _ in arms])
    ax.set(ylabel="steering index at the asymmetric\np = 0.5 fork (nats)",
           title="C4.beta1: where each seed ends\n(truth critic, gamma = 1, H = 8)")
    ax.set_xlim(-0.6, 1.6)
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    style.caption(fig, "no intervals: each dot is one seed; line: the arm's exact optimum",
                  f"committed: the seeds that take one branch with probability >= {COMMITTED}")
    return save_figure(fig, folder, "F2_split_beta")


def world_sections(df: pd.DataFrame) -> list[str]:
    return tokens_to_kl_section(df) + instrument_checks(df) + lookahead_section(df) + split_section(df)


FAMILY = ClaimFamily(
    name="world", owns=("F1", "F2", "F3"), claims=world_claims,
    figures={"F1": figure_f1, "F2": figure_f2, "F2_split": figure_f2_split, "F3": figure_f3, "F5": figure_f5,
             "F6": figure_f6},
    section=world_sections)

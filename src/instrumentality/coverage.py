"""How often the verdict rule's intervals cover the true mean, by simulation, for the seed distributions
this project produces (Gaussian, two modes, heavy and skewed tails), at every preset's seed count, for a
single arm scored on shared probe items and for two arms scored on the same items (item-paired).

    python -m instrumentality.coverage --out results/coverage      # the table in docs/design.md

A simulated experiment has n seeds. Seed k's value is mu + s_k + (the mean over I probe items of item
effects): s_k is drawn from the distribution under study (scaled to standard deviation `seed_sd`), the
item effects u_i are shared by every seed (one probe set), each seed adding its own item noise. An
item-paired experiment has two arms a and b on the same items, whose item effects are the same u_i plus a
small arm-specific part w_i, so that most of the item error cancels in a - b, item by item. Each seed
reports its value with a 95% item interval (normal, +- 1.96 sd / sqrt(I): the bootstrap's large-sample
form); the methods are:

    t                 stats.seed_interval: Student-t over seeds, mean item error in quadrature
    t, arms' items in quadrature   a two-arm difference with each arm's item error added (as if independent)
    t, item-paired    the same t-interval on per-seed differences whose item interval comes from the
                      item-by-item differences (stats.item_paired_difference)
    rule              the verdict rule: a detected split (stats.detect_split) is its own verdict and claims
                      no interval; otherwise t. Its coverage counts a split as no error.
    percentile bootstrap over seeds   for contrast (resampling a handful of seeds)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import pandas as pd

from instrumentality.stats import detect_split, seed_interval

SEED_COUNTS = (2, 3, 5)  # the debug, quick and full presets' seeds
MODE_SEPARATION = 10.0  # two modes this many within-mode standard deviations apart (C8's split: ~30)
DISTRIBUTIONS = ("gaussian", "two modes, minority 20%", "two modes, minority 40%", "heavy tails (t, 3 df)",
                 "skewed (lognormal, sigma 1)")
RATIOS = (1.0, 10.0)  # seed standard deviation over the items' standard error (quest probes ~1, world ~10)
Z = 1.959964


def seed_effects(distribution: str, rng: np.random.Generator, shape) -> tuple[np.ndarray, float]:
    """Seed effects of one distribution, and their true mean."""
    if distribution == "gaussian":
        return rng.normal(size=shape), 0.0
    if distribution.startswith("two modes"):
        share = float(distribution.split("minority ")[1].rstrip("%")) / 100
        minority = rng.random(shape) < share
        return rng.normal(size=shape) + MODE_SEPARATION * minority, MODE_SEPARATION * share
    if distribution.startswith("heavy"):
        return rng.standard_t(3, size=shape), 0.0
    if distribution.startswith("skewed"):
        return rng.lognormal(0.0, 1.0, size=shape), math.exp(0.5)
    raise ValueError(f"unknown distribution {distribution!r} (known: {', '.join(DISTRIBUTIONS)})")


def simulate(distribution: str, n: int, paired_items: bool, ratio: float = 1.0, reps: int = 2000,
             n_items: int = 200, seed: int = 0) -> dict:
    """Coverage of each method over `reps` simulated experiments, the share declared split, and each
    interval's median width (`<method> width`). Seed
    effects have standard deviation 1 and the items' shared error of a mean has standard deviation
    1 / ratio: ratio 1 is the quest probes' regime (C6, C10), where the items' error matters most; ratio 10
    the world probes', where seeds dominate. Each seed adds its own item noise of half the shared one; in an
    item-paired experiment the arms' item effects differ by a fifth of the shared one."""
    rng = np.random.default_rng(seed)
    seed_sd, item_sd = 1.0, math.sqrt(n_items) / ratio
    arm_item_sd = item_sd / 5
    hits: dict[str, int] = {}
    widths: dict[str, list[float]] = {}
    splits = 0
    for _ in range(reps):
        s, mu = seed_effects(distribution, rng, n)
        s = seed_sd * s
        u = rng.normal(0, item_sd, n_items)  # item effects, shared by every seed (one probe set)
        noise = lambda: rng.normal(0, item_sd / 2, (n, n_items))  # noqa: E731  a seed's own item noise
        if paired_items:
            a = s[:, None] + u + noise()
            b = (u + rng.normal(0, arm_item_sd, n_items)) + noise() * 0.1
            # the difference's truth: mu (items have mean 0 in the population)
            se_a, se_b = a.std(1, ddof=1) / math.sqrt(n_items), b.std(1, ddof=1) / math.sqrt(n_items)
            d = a.mean(1) - b.mean(1)
            se_d = (a - b).std(1, ddof=1) / math.sqrt(n_items)
            methods = {"t, arms' items in quadrature": (d, np.hypot(se_a, se_b)), "t, item-paired": (d, se_d)}
        else:
            x = s[:, None] + u + noise()
            methods = {"t": (x.mean(1), x.std(1, ddof=1) / math.sqrt(n_items))}
        for name, (v, se) in methods.items():
            _, lo, hi = seed_interval(v, v - Z * se, v + Z * se)
            covered = lo <= mu <= hi
            hits[name] = hits.get(name, 0) + covered
            widths.setdefault(name, []).append(hi - lo)
            if name in ("t", "t, item-paired"):
                split = detect_split(v, v - Z * se, v + Z * se) is not None
                splits += split
                hits["rule"] = hits.get("rule", 0) + (covered or split)
                boots = v[rng.integers(0, n, (1000, n))].mean(1)
                blo, bhi = np.quantile(boots, [0.025, 0.975])
                hits["percentile bootstrap over seeds"] = hits.get("percentile bootstrap over seeds", 0) + \
                    (blo <= mu <= bhi)
    out = {name: h / reps for name, h in hits.items()}
    out["split declared"] = splits / reps
    out.update({f"{name} width": float(np.median(w)) for name, w in widths.items()})
    return out


def coverage_table(reps: int = 2000, seed_counts=SEED_COUNTS, distributions=DISTRIBUTIONS, ratios=RATIOS,
                   seed: int = 0) -> pd.DataFrame:
    """One row per distribution x seed count x seed/item ratio x items (one arm / two item-paired arms)."""
    rows = []
    for d in distributions:
        for n in seed_counts:
            for ratio in ratios:
                for paired_items in (False, True):
                    cov = simulate(d, n, paired_items, ratio, reps=reps, seed=seed)
                    rows.append({"distribution": d, "seeds": n, "seed sd / item se": ratio,
                                 "items": "two arms, same items" if paired_items else "one arm",
                                 **cov, "minority mode unseen": _unseen(d, n)})
    return pd.DataFrame(rows)


def _unseen(distribution: str, n: int) -> float:
    """Probability that no seed falls in the minority mode: then no rule can see it."""
    if not distribution.startswith("two modes"):
        return math.nan
    share = float(distribution.split("minority ")[1].rstrip("%")) / 100
    return (1 - share) ** n


def markdown(table: pd.DataFrame) -> str:
    """A table as Markdown, numbers to three decimals, NaN as "-"."""
    cell = lambda v: "-" if isinstance(v, float) and math.isnan(v) else f"{v:.3f}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="results/coverage", help="folder for coverage.csv and coverage.md")
    parser.add_argument("--reps", type=int, default=4000, help="simulated experiments per cell")
    args = parser.parse_args(argv)
    if args.reps < 100:
        parser.error("--reps must be at least 100 (the binomial error of a coverage is then 2%)")
    from tqdm import tqdm

    rows = []
    for d in tqdm(DISTRIBUTIONS, desc="coverage"):
        rows.append(coverage_table(args.reps, distributions=(d,)))
    table = pd.concat(rows, ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "coverage.csv", index=False)
    cols = ["distribution", "seeds", "seed sd / item se", "items", "t", "t, arms' items in quadrature",
            "t, item-paired", "rule", "percentile bootstrap over seeds", "split declared", "minority mode unseen",
            "t, arms' items in quadrature width", "t, item-paired width"]
    md = markdown(table[cols])
    (out / "coverage.md").write_text(
        f"# Coverage of the verdict rule's intervals (nominal 95%)\n\nMade by `python -m instrumentality.coverage "
        f"--reps {args.reps}` ({args.reps} simulated experiments per row: binomial sd "
        f"{math.sqrt(0.95 * 0.05 / args.reps):.3f} at 95%). See the module's docstring for the simulation. Each "
        "method's column is its coverage of the true mean; `rule` counts a declared split as no interval "
        "claimed; `split declared` is how often the rule declares one; the last two columns are the median "
        "interval widths of the two-arm methods.\n\n"
        + md + "\n")
    print(md)


if __name__ == "__main__":
    main()

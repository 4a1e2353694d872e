"""Tuning SB3 PPO on ClueQuest: an Optuna study (TPE) over PPO's settings, each trial trained for --steps env
steps per seed and scored by its mean return on the `standard` quest probe (the episodes every agent is
scored on).

    .venv/bin/python scripts/tune_sb3.py --trials 30 --steps 60000 --seeds 0,1 --out results/quest/sb3_optuna.csv

prints the best trial's settings as an entry for configs/sb3/cluequest.yaml. `--settings a,b` instead scores
named settings of GRID (the hand grid behind results/quest/sb3_tuning_60k*.csv). Runs --jobs seeds at a
time (one thread each). The optimum of `standard` (bracketed by the planner, envs/planner.py) is printed
beside the returns.
"""

import argparse
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GRID = {  # name -> every PPO argument that differs from SB3's own defaults (ent_coef 0.01 throughout)
    "defaults": {"n_steps": 256, "batch_size": 512, "learning_rate": 3e-4, "n_epochs": 10},  # before tuning
    "n64-b128": {"n_steps": 64, "batch_size": 128, "learning_rate": 3e-4, "n_epochs": 10},
    "n64-b128-lr1e-3": {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 10},
    "n128-b256-lr1e-3": {"n_steps": 128, "batch_size": 256, "learning_rate": 1e-3, "n_epochs": 10},
    "n64-b128-lr1e-3-ent0": {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 10,
                             "ent_coef": 0.0},
    "n32-b64-lr1e-3": {"n_steps": 32, "batch_size": 64, "learning_rate": 1e-3, "n_epochs": 10},
    "n64-b128-lr2e-3": {"n_steps": 64, "batch_size": 128, "learning_rate": 2e-3, "n_epochs": 10},
    "n128-b128-lr1e-3": {"n_steps": 128, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 10},
    "n64-b128-lr1e-3-ep4": {"n_steps": 64, "batch_size": 128, "learning_rate": 1e-3, "n_epochs": 4},  # chosen
}
# The quick preset's budget (16,384 env steps): one change at a time to the chosen setting
CHOSEN = GRID["n64-b128-lr1e-3-ep4"]
GRID.update({f"chosen+{name}": {**CHOSEN, **change} for name, change in {
    "lr2e-3": {"learning_rate": 2e-3}, "lr3e-3": {"learning_rate": 3e-3}, "ep10": {"n_epochs": 10},
    "ep10-lr2e-3": {"n_epochs": 10, "learning_rate": 2e-3}, "gamma0.95": {"gamma": 0.95},
    "gamma0.95-lambda0.9": {"gamma": 0.95, "gae_lambda": 0.9}, "n32-b64": {"n_steps": 32, "batch_size": 64},
    "n32-b64-lr2e-3": {"n_steps": 32, "batch_size": 64, "learning_rate": 2e-3}, "b64": {"batch_size": 64},
    "ent0": {"ent_coef": 0.0}, "ent0.03": {"ent_coef": 0.03}, "clip0.3": {"clip_range": 0.3},
    "lr2e-3-gamma0.95": {"learning_rate": 2e-3, "gamma": 0.95},
    "net128x128": {"policy_kwargs": {"net_arch": [128, 128]}}, "net64": {"policy_kwargs": {"net_arch": [64]}},
}.items()})


def one(job: tuple[str, dict, int, int, dict]) -> dict:
    import torch

    torch.set_num_threads(1)
    from instrumentality.envs.agents import quest_rows
    from instrumentality.envs.sb3 import SB3Agent, train

    name, ppo, seed, steps, quest = job
    model, curve, wall = train(quest, steps, seed, **ppo)
    env_config = {k: v for k, v in quest.items() if k != "variant"}  # the probe sets the variant
    rows = {(r["probe"], r["metric"]): r for r in quest_rows({"sb3": SB3Agent(model)},
                                                              variants=("standard",), **env_config)}
    std = lambda m: rows[("quest/standard", m)]["value"]  # noqa: E731
    ret = rows[("quest/standard", "return")]
    return {"setting": name, "seed": seed, "env_steps": steps, "wall_s": round(wall, 1),
            "steps_per_s": round(steps / wall), "train_return_last": curve[-1][1] if curve else float("nan"),
            "return": ret["value"], "return_ci_low": ret["ci_low"], "return_ci_high": ret["ci_high"],
            "predicted": std("predicted"), "clue_pickups": std("clue_pickups"), "deceptions": std("deceptions"),
            **{f"ppo.{k}": v for k, v in ppo.items()}}


def suggest(trial) -> dict:
    """One trial's PPO settings (the search space; ent_coef and learning_rate on a log scale)."""
    n_steps = trial.suggest_categorical("n_steps", [32, 64, 128])
    return {"n_steps": n_steps,
            "batch_size": trial.suggest_categorical("batch_size", [64, 128, 256]),
            "learning_rate": trial.suggest_float("learning_rate", 1e-4, 3e-3, log=True),
            "n_epochs": trial.suggest_categorical("n_epochs", [4, 10]),
            "ent_coef": trial.suggest_float("ent_coef", 1e-4, 0.05, log=True),
            "gamma": trial.suggest_categorical("gamma", [0.95, 0.99])}


def study(trials: int, seeds: list[int], steps: int, quest: dict, jobs: int, sampler_seed: int = 0):
    """An Optuna study maximising the mean `standard` return over the seeds; returns (study, rows)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []

    def objective(trial) -> float:
        ppo = suggest(trial)
        with ProcessPoolExecutor(jobs) as pool:
            results = list(pool.map(one, [(f"trial{trial.number}", ppo, s, steps, quest) for s in seeds]))
        rows.extend(results)
        value = sum(r["return"] for r in results) / len(results)
        print(f"trial {trial.number:>3}: return {value:+.2f} with {ppo}", flush=True)
        return value

    s = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=sampler_seed))
    s.optimize(objective, n_trials=trials)
    return s, rows


def optimum_bracket(quest: dict, n_episodes: int = 200) -> tuple[float, float]:
    """The optimal mean return on the `standard` probe episodes, bracketed: the planner's (the exact
    optimum without monsters, played among them) and that optimum itself (envs/planner.py)."""
    import numpy as np

    from instrumentality.envs.agents import PROBE_SEED
    from instrumentality.envs.planner import Planner

    planner = Planner()
    env_config = {k: v for k, v in quest.items() if k != "variant"}
    played = planner.episodes("standard", np.arange(PROBE_SEED, PROBE_SEED + n_episodes), **env_config)
    return float(played[:, 4].mean()), float(planner.solutions["standard"].value.mean())


def main() -> int:
    import pandas as pd
    import yaml

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quest", default="small")
    ap.add_argument("--steps", type=int, default=60_000)
    ap.add_argument("--seeds", default="0,1")
    ap.add_argument("--trials", type=int, default=30, help="Optuna trials")
    ap.add_argument("--settings", default=None, help=f"score these grid settings instead: {', '.join(GRID)}")
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    quest = yaml.safe_load((ROOT / "configs" / "quest" / f"{args.quest}.yaml").read_text())
    seeds = [int(s) for s in args.seeds.split(",")]
    os.environ["OMP_NUM_THREADS"] = "1"
    if args.settings is None:
        found, rows = study(args.trials, seeds, args.steps, quest, args.jobs)
        best = {**found.best_params, "n_envs": 8}  # the best settings, as the zoo file lays them out
        print(f"\nbest: trial {found.best_trial.number}, mean `standard` return {found.best_value:+.2f}; as an "
              "entry of configs/sb3/cluequest.yaml:\n" + yaml.safe_dump({"ClueQuest-v0": best}, sort_keys=False))
    else:
        unknown = set(args.settings.split(",")) - set(GRID)
        if unknown:
            raise SystemExit(f"unknown settings {sorted(unknown)}; choose from: {', '.join(GRID)}")
        jobs = [(name, GRID[name], s, args.steps, quest) for name in args.settings.split(",") for s in seeds]
        rows = []
        with ProcessPoolExecutor(args.jobs) as pool:
            for r in pool.map(one, jobs):
                rows.append(r)
                print(f"{r['setting']:>22} s{r['seed']}: return {r['return']:+.2f} [{r['return_ci_low']:+.2f}, "
                      f"{r['return_ci_high']:+.2f}], predicted {r['predicted']:.2f}, "
                      f"clues {r['clue_pickups']:.2f}, {r['steps_per_s']} steps/s", flush=True)
    df = pd.DataFrame(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(args.out, index=False)
    low, high = optimum_bracket(quest)
    print(f"\n`standard` return by setting (mean over seeds; the optimum lies in [{low:.2f}, {high:.2f}]):")
    print(df.groupby("setting")[["return", "predicted", "clue_pickups", "steps_per_s"]].mean().round(2).to_string())
    return 0


if __name__ == "__main__":
    sys.exit(main())

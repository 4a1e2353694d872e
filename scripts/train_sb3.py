"""Train the SB3 PPO reference agent on ClueQuest, as a run folder the evaluator reads.

    .venv/bin/python scripts/train_sb3.py --quest small --steps 60000 --seed 0 --out runs/quick/F4/sb3_ppo-s0
writes <out>/ppo.zip and <out>/summary.json (agent spec, learning curve, wall time); with --baselines
also <out>/../random, <out>/../explorer and <out>/../planner agent folders. A finished run is not trained again.
`python -m instrumentality.evaluate <out> --out results.csv` then scores them on the quest probes.
"""

import argparse
import os
import sys
from pathlib import Path

import yaml

from instrumentality.files import read_json, write_json

ROOT = Path(__file__).resolve().parents[1]


def quest_config(name: str) -> dict:
    path = ROOT / "configs" / "quest" / f"{name}.yaml"
    if not path.exists():
        choices = ", ".join(p.stem for p in (ROOT / "configs" / "quest").glob("*.yaml"))
        raise SystemExit(f"unknown quest config {name!r}; choose one of: {choices}")
    return yaml.safe_load(path.read_text())


def write_agent(out: Path, spec: dict, **extra):
    status = {"status": "finished", "step": extra.get("steps", 0), "reason": ""}
    write_json(out / "summary.json", {"agent": spec, "status": status, **extra})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quest", default="small", help="a configs/quest/ file")
    ap.add_argument("--steps", type=int, default=60_000, help="env steps")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--baselines", action="store_true",
                    help="also write the random, explorer and planner agent folders")
    ap.add_argument("--more", action="store_true", help="train a finished run --steps more env steps")
    ap.add_argument("--ppo", nargs="*", default=[], metavar="KEY=VALUE",
                    help="PPO arguments over envs/sb3.py's PPO_DEFAULTS, e.g. learning_rate=1e-3 n_steps=64")
    ap.add_argument("--n-envs", type=int, default=8)
    args = ap.parse_args()
    quest = quest_config(args.quest)
    if args.baselines:
        for kind in ("random", "explorer", "planner"):
            write_agent(args.out.parent / kind, {"kind": kind, "quest": quest, "seed": 0})
    summary = args.out / "summary.json"
    before = {"steps": 0, "curve": [], "wall_s": 0.0}
    if summary.exists() and (args.out / "ppo.zip").exists():
        if not args.more:
            print(f"{args.out}: finished before, not trained again (--more trains it further)")
            return 0
        before = read_json(summary, "SB3 run summary")
    from instrumentality.envs.sb3 import PPO_DEFAULTS, train

    ppo = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.ppo)}
    model, curve, wall = train(quest, args.steps, args.seed, n_envs=args.n_envs,
                               resume=args.out / "ppo.zip" if before["steps"] else None, **ppo)
    args.out.mkdir(parents=True, exist_ok=True)
    tmp = args.out / f".ppo.{os.getpid()}.tmp.zip"  # written whole, then moved: a kill leaves no half policy
    model.save(tmp)
    os.replace(tmp, args.out / "ppo.zip")
    steps, wall_all = before["steps"] + args.steps, before["wall_s"] + wall
    write_agent(args.out, {"kind": "sb3_ppo", "quest": quest, "seed": args.seed}, steps=steps,
                curve=before["curve"] + curve, wall_s=wall_all, env_steps_per_s=steps / wall_all,
                ppo={**PPO_DEFAULTS, **ppo, **before.get("ppo", {})}, n_envs=args.n_envs)
    last = curve[-1][1] if curve else float("nan")
    print(f"[sb3_ppo-s{args.seed}] finished after {steps} env steps, {wall_all:.1f}s "
          f"({args.steps / wall:.0f} steps/s); mean return of the last 100 episodes {last:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

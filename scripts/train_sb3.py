"""Train the SB3 PPO reference agent on ClueQuest, as a run folder the evaluator reads.

    .venv/bin/python scripts/train_sb3.py --baselines preset=quick seed=0 quest.time_limit=20

composes experiment F4's config with the Hydra overrides given (the quest, preset, seed and runs_root: the
same overrides reach F4's quest-PPO runs and this agent), trains PPO on its quest for the preset's
budget.sb3_steps, raised to the most env steps an F4 quest agent of that config can take (--steps N: N), with
the hyperparameters of configs/sb3/cluequest.yaml (an rl-baselines3-zoo file: the entry of the small quest's
env id; --conf-file another, --ppo KEY=VALUE over it), and writes ppo.zip and summary.json (agent spec,
learning curve, wall time) into <runs_root>/<preset>/F4/sb3_ppo-s<seed> (--out: elsewhere); with --baselines
also the random, explorer and planner agent folders beside it, scored on the quest probes at once (their
rows stored in their folders, so the sweep's evaluation, which runs alone after every unit, only collects
them). A finished run is not trained again.
`python -m instrumentality.evaluate <out> --out results.csv` then scores them on the quest probes. While it
trains, the policy plays --eval-episodes episodes of the `standard` probe every --eval-freq env steps. W&B gets
the hyperparameters as the run's config, the curves and SB3's train/ diagnostics against env steps, and
ppo.zip as a `model` artifact (alias `final`).
"""

import argparse
import os
import sys
from pathlib import Path

import yaml
from omegaconf import DictConfig

from instrumentality.configs import compose
from instrumentality.files import read_json, write_json
from instrumentality.training.build import plain

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENT = "F4"  # the quest agent this one is the reference for: its quest and budget
HYPERPARAMETERS = ROOT / "configs" / "sb3" / "cluequest.yaml"  # envs/sb3.py's HYPERPARAMETERS
EVAL_FREQ, EVAL_EPISODES = 4096, 200  # the probe evaluation's defaults (as rl_zoo3.train's --eval-freq/-episodes)


def experiment_config(overrides: list[str]) -> DictConfig:
    """Experiment F4's config after `overrides`, with Hydra's node (its sweep folder is the agent's)."""
    return compose(f"experiment={EXPERIMENT}", *overrides, hydra=True)


def quest_of(cfg: DictConfig) -> dict:
    return plain(cfg.quest)


def quest_env_steps_bound(cfg: DictConfig) -> int:
    """The most env steps a quest agent of `cfg` can take: rollouts x episodes per rollout x steps an
    episode can last (each rollout serves ppo_epochs x n_minibatches optimizer steps)."""
    from instrumentality.envs.tokens import quest_tokens
    from instrumentality.world import World

    rollouts = -(-cfg.trainer.max_steps // (cfg.regime.ppo_epochs * cfg.regime.n_minibatches))
    horizon = quest_tokens(quest_of(cfg), World().vocab_size).horizon()
    return rollouts * cfg.regime.n_envs * horizon


def env_steps(cfg: DictConfig) -> int:
    """The preset's SB3 budget, raised to as many env steps as a quest agent of the same config can take."""
    return max(int(cfg.budget.sb3_steps[cfg.preset_name]), quest_env_steps_bound(cfg))


def out_dir(args: argparse.Namespace, cfg: DictConfig) -> Path:
    return args.out or Path(cfg.hydra.sweep.dir) / f"sb3_ppo-s{cfg.seed}"


def parse(argv: list[str] | None = None) -> tuple[argparse.Namespace, DictConfig]:
    """The command line, and the config its overrides compose to."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=None, help="env steps (default: from the config, see above)")
    ap.add_argument("--out", type=Path, default=None, help="the run folder (default: see above)")
    ap.add_argument("--baselines", action="store_true",
                    help="also write the random, explorer and planner agent folders and score them")
    ap.add_argument("--more", action="store_true", help="train a finished run --steps more env steps")
    ap.add_argument("--conf-file", type=Path, default=HYPERPARAMETERS,
                    help="the zoo hyperparameter file (default: configs/sb3/cluequest.yaml)")
    ap.add_argument("--ppo", action="append", default=[], metavar="KEY=VALUE",
                    help="a PPO argument over the file's entry, e.g. --ppo learning_rate=1e-3 --ppo n_steps=64")
    ap.add_argument("--n-envs", type=int, default=None, help="parallel envs (default: the file's n_envs)")
    ap.add_argument("--eval-freq", type=int, default=EVAL_FREQ,
                    help=f"env steps between evaluations on the `standard` probe (default {EVAL_FREQ})")
    ap.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES,
                    help=f"`standard` probe episodes per evaluation (default {EVAL_EPISODES})")
    ap.add_argument("overrides", nargs="*", help="Hydra overrides of experiment F4's config")
    args = ap.parse_intermixed_args(argv)
    return args, experiment_config(args.overrides)


def hyperparams(args: argparse.Namespace, steps: int) -> dict:
    """The zoo entry the run trains with: --conf-file's entry for the small quest's env id, --ppo and --n-envs
    over it, n_timesteps the env steps it trains for (checked: envs/sb3.py check_entry)."""
    from instrumentality.envs.sb3 import check_entry, hyperparameters

    ppo = {k: yaml.safe_load(v) for k, v in (kv.split("=", 1) for kv in args.ppo)}
    n_envs = {"n_envs": args.n_envs} if args.n_envs else {}
    return check_entry({**hyperparameters(args.conf_file), **ppo, **n_envs, "n_timesteps": steps},
                       f"{args.conf_file} with --ppo {' '.join(args.ppo)}")


def run_config(cfg: DictConfig, args: argparse.Namespace, entry: dict, seed: int) -> dict:
    """The W&B run's config: the env id, quest and seed, the zoo entry (n_timesteps, policy, n_envs and every
    PPO argument) and the probe evaluation's settings."""
    from instrumentality.envs.sb3 import ENV_ID

    return {"env_id": ENV_ID, "quest": quest_of(cfg), "seed": seed, **entry, "eval_freq": args.eval_freq,
            "eval_episodes": args.eval_episodes}


def sb3_tracker(cfg: DictConfig, out: Path, seed: int, config: dict | None = None):
    """The SB3 run's W&B run, found as the training runs are (train.py wandb_labels): the preset's project,
    group F4/sb3_ppo, job type sb3_ppo, curves against env steps; its id kept in the run folder."""
    from instrumentality.tracking import Tracker, git_revision, wandb_group, wandb_project, wandb_run_id

    preset = str(cfg.preset_name)
    return Tracker(mode=cfg.logger.mode if cfg.get("logger") else "disabled",
                   project=wandb_project(preset, cfg.logger.project), group=wandb_group(EXPERIMENT, "sb3_ppo"),
                   job_type="sb3_ppo", name=f"{EXPERIMENT}/sb3_ppo-s{seed}",
                   config=config or {"quest": quest_of(cfg), "seed": seed},
                   tags=[f"rev:{git_revision()}", f"preset:{preset}", "sb3_ppo"], dir=out,
                   run_id=wandb_run_id(out), x_axis="perf/env_steps_seen")


def log_model(tracker, out: Path, seed: int, metadata: dict):
    """ppo.zip as the run's W&B artifact of type `model`, alias `final`, with `metadata`."""
    tracker.log_artifact(f"{EXPERIMENT}-sb3_ppo-s{seed}", "model", [out / "ppo.zip"],
                         description=f"SB3 PPO on {metadata['env_id']}, seed {seed}", metadata=metadata,
                         aliases=["final"])


def write_agent(out: Path, spec: dict, **extra):
    status = {"status": "finished", "step": extra.get("steps", 0), "reason": ""}
    write_json(out / "summary.json", {"agent": spec, "status": status, **extra})


def main() -> int:
    args, cfg = parse()
    quest, out, seed = quest_of(cfg), out_dir(args, cfg), int(cfg.seed)
    steps = env_steps(cfg) if args.steps is None else args.steps
    if args.baselines:
        from instrumentality.evaluation.run_rows import evaluate_run

        for kind in ("random", "explorer", "planner"):
            write_agent(out.parent / kind, {"kind": kind, "quest": quest, "seed": 0,
                                            "episodes": int(cfg.eval.quest_episodes)})
            rows = evaluate_run(out.parent / kind)  # reused while the folder's summary is unchanged
            print(f"[{kind}] scored on the quest probes: {len(rows)} rows", flush=True)
    summary = out / "summary.json"
    before = {"steps": 0, "curve": [], "wall_s": 0.0}
    if summary.exists() and (out / "ppo.zip").exists():
        if not args.more:
            print(f"{out}: finished before, not trained again (--more trains it further)")
            return 0
        before = read_json(summary, "SB3 run summary", dict)
    from instrumentality.envs.sb3 import ENV_ID, eval_on_probes, ppo_kwargs, train

    entry = hyperparams(args, before["steps"] + steps)  # n_timesteps: the run's env steps, earlier ones included
    ppo = {**ppo_kwargs(entry), **before.get("ppo", {})}  # a resumed model keeps the PPO arguments it was saved with
    out.mkdir(parents=True, exist_ok=True)
    tracker = sb3_tracker(cfg, out, seed, run_config(cfg, args, {**entry, **ppo}, seed))
    evaluation = eval_on_probes(quest, args.eval_freq, args.eval_episodes, log=tracker.log)
    try:
        model, curve, wall = train(quest, steps, seed, progress=sys.stderr.isatty(),
                                   resume=out / "ppo.zip" if before["steps"] else None, callbacks=[evaluation],
                                   log=tracker.log, hyperparams=entry)
        tmp = out / f".ppo.{os.getpid()}.tmp.zip"  # written whole, then moved: a kill leaves no half policy
        model.save(tmp)
        os.replace(tmp, out / "ppo.zip")
        steps_all, wall_all = before["steps"] + steps, before["wall_s"] + wall
        probe_curve = before.get("probe_curve", []) + evaluation.points
        write_agent(out, {"kind": "sb3_ppo", "quest": quest, "seed": seed,
                          "episodes": int(cfg.eval.quest_episodes)},
                    steps=steps_all, curve=before["curve"] + curve, wall_s=wall_all,
                    env_steps_per_s=steps_all / wall_all, ppo=ppo, n_envs=entry["n_envs"], probe_curve=probe_curve)
        last = curve[-1][1] if curve else float("nan")
        final = probe_curve[-1]["env/probe_return"] if probe_curve else float("nan")
        tracker.summary({"env_steps": steps_all, "wall_s": wall_all})
        log_model(tracker, out, seed, {"env_id": ENV_ID, "seed": seed, "n_timesteps": steps_all,
                                       "final_return": final, "train_return_last_100": last})
    finally:
        tracker.finish()
    print(f"[sb3_ppo-s{seed}] finished after {steps_all} env steps, {wall_all:.1f}s "
          f"({steps / wall:.0f} steps/s); mean return of the last 100 episodes {last:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""A W&B workspace for one preset's project, built in code: a section per figure, runs grouped by experiment
arm (their W&B group, so each line is an arm's mean over its seeds with the min-max band), and a saved view
per experiment that shows that experiment's runs alone.

    .venv/bin/python scripts/wandb_workspace.py --preset quick --entity <your entity>           # print it
    .venv/bin/python scripts/wandb_workspace.py --preset quick --entity <your entity> --save    # save it

Printing needs no network; --save needs `wandb login` and a project (instrumentality-<preset>) with runs.
"""

import argparse
import sys

# section -> (x axis, one panel per key); keys as the trainer, the evaluator and train_sb3.py log them
SECTIONS = {
    "F1: KL to the truth vs tokens": ("perf/tokens_seen", [
        "probe/calibration/kl", "probe/calibration/excess_nll", "probe/calibration/ece"]),
    "F2, F3: steering at the forks": ("perf/tokens_seen", [
        "probe/forks/asym/p=0.5/steering_index", "probe/forks/p=0.5/instrumental_steering",
        "probe/forks/sym/p=0.5/steering_index", "probe/forks/asym/all/steering_index"]),
    "Training": ("perf/tokens_seen", [
        "train/loss", "train/grad_norm", "train/lr", "train/entropy", "train/approx_kl", "train/clip_fraction"]),
    "F4: ClueQuest": ("perf/env_steps_seen", [
        "env/return_last_100", "env/probe_return", "env/probe_deceptions", "env/probe_fights"]),
    "F10: quest-PPO learning to switch the overseer off (experiment F10)": ("perf/env_steps_seen", [
        "env/disables", "env/return", "env/predicted"]),
    "F9: forecasts at the prophecy markers (by start, configs/experiment/F9.yaml)": ("Step", [
        f"train/forecast/start={start:g}" for start in (0.08, 0.3, 0.65, 0.97)]),
    "Throughput": ("Step", ["perf/tokens_per_s", "perf/env_steps_per_s"]),
}


def panel_keys() -> set[str]:
    return {key for _, keys in SECTIONS.values() for key in keys}


def build(entity: str, preset: str, experiment: str | None = None):
    """The workspace of a preset's project: every run, or (`experiment`) a saved view of one experiment's
    runs alone (filtered on the exp_name in their config), so that F1's panels show F1's arms only."""
    import wandb_workspaces.expr as expr
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    from instrumentality.tracking import wandb_project

    sections = [ws.Section(name=name, is_open=True, panels=[wr.LinePlot(title=key, x=x, y=[key]) for key in keys])
                for name, (x, keys) in SECTIONS.items()]
    filters = [expr.Config("exp_name") == experiment] if experiment else []
    return ws.Workspace(entity=entity, project=wandb_project(preset),
                        name=f"instrumentality {preset}" + (f" {experiment}" if experiment else ""),
                        sections=sections, runset_settings=ws.RunsetSettings(groupby=[expr.Metric("Group")],
                                                                             filters=filters))


def experiment_names(preset: str) -> list[str]:
    """The exp_name of every experiment (its runs' W&B group prefix), in the sweep's order."""
    from instrumentality.configs import compose, experiments

    return list(dict.fromkeys(str(compose(f"experiment={e}", f"preset={preset}").exp_name) for e in experiments()))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--entity", required=True, help="your W&B user or team")
    ap.add_argument("--save", action="store_true", help="save the workspace (needs `wandb login`)")
    args = ap.parse_args()
    workspace = build(args.entity, args.preset)
    for section in workspace.sections:
        print(f"{section.name}: " + ", ".join(p.y[0] for p in section.panels))
    views = [build(args.entity, args.preset, exp) for exp in experiment_names(args.preset)]
    print("views, one per experiment: " + ", ".join(v.name for v in views))
    if args.save:
        for w in (workspace, *views):
            w.save()
            print(f"saved: {w.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

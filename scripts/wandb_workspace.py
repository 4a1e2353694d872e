"""A W&B workspace for one preset's project, built in code: a section per figure, runs grouped by experiment
arm (their W&B group, so each line is an arm's mean over its seeds with the min-max band).

    .venv/bin/python scripts/wandb_workspace.py --preset quick --entity <your entity>           # print it
    .venv/bin/python scripts/wandb_workspace.py --preset quick --entity <your entity> --save    # save it

Printing needs no network; --save needs `wandb login` and a project (instrumentality-<preset>) with runs.
"""

import argparse
import sys

# section -> panels (x axis, the keys drawn); keys as the trainer, the evaluator and train_sb3.py log them
SECTIONS = {
    "F1: KL to the truth vs tokens": [
        ("perf/tokens_seen", ["probe/calibration/kl"]),
        ("perf/tokens_seen", ["probe/calibration/excess_nll"]),
        ("perf/tokens_seen", ["probe/calibration/ece"]),
    ],
    "F2, F3: steering at the forks": [
        ("perf/tokens_seen", ["probe/forks/asym/p=0.5/steering_index"]),
        ("perf/tokens_seen", ["probe/forks/p=0.5/instrumental_steering"]),
        ("perf/tokens_seen", ["probe/forks/sym/p=0.5/steering_index"]),
        ("perf/tokens_seen", ["probe/forks/asym/all/steering_index"]),
    ],
    "Training": [
        ("perf/tokens_seen", ["train/loss"]),
        ("perf/tokens_seen", ["train/grad_norm"]),
        ("perf/tokens_seen", ["train/lr"]),
        ("perf/tokens_seen", ["train/entropy"]),
        ("perf/tokens_seen", ["train/approx_kl"]),
        ("perf/tokens_seen", ["train/clip_fraction"]),
    ],
    "F4: ClueQuest": [
        ("perf/env_steps_seen", ["env/return_last_100"]),
        ("perf/env_steps_seen", ["env/probe_return"]),
        ("perf/env_steps_seen", ["env/probe_deceptions"]),
        ("perf/env_steps_seen", ["env/probe_fights"]),
    ],
    "Throughput": [
        ("Step", ["perf/tokens_per_s"]),
        ("Step", ["perf/env_steps_per_s"]),
    ],
}


def panel_keys() -> set[str]:
    return {key for panels in SECTIONS.values() for _, keys in panels for key in keys}


def build(entity: str, preset: str):
    import wandb_workspaces.expr as expr
    import wandb_workspaces.reports.v2 as wr
    import wandb_workspaces.workspaces as ws

    sections = [ws.Section(name=name, is_open=True,
                           panels=[wr.LinePlot(title=keys[0], x=x, y=keys) for x, keys in panels])
                for name, panels in SECTIONS.items()]
    return ws.Workspace(entity=entity, project=f"instrumentality-{preset}", name=f"instrumentality {preset}",
                        sections=sections, runset_settings=ws.RunsetSettings(groupby=[expr.Metric("Group")]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--entity", required=True, help="your W&B user or team")
    ap.add_argument("--save", action="store_true", help="save the workspace (needs `wandb login`)")
    args = ap.parse_args()
    workspace = build(args.entity, args.preset)
    for section in workspace.sections:
        print(f"{section.name}: " + ", ".join(p.y[0] for p in section.panels))
    if args.save:
        workspace.save()
        print(f"saved: {workspace.url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

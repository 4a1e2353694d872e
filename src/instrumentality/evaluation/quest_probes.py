"""ClueQuest evaluation: an agent (a transformer through the token interface, a scripted agent, SB3, the
planner) on the quest probes: the same episodes per variant, scored by envs.agents.quest_rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from instrumentality.evaluation.table import run_id_of, status_rows, tidy_rows
from instrumentality.stats import mean_ci
from instrumentality.world import World

QUEST_EPISODES = 2000  # episodes per quest probe variant: the same episode seeds for every agent (paired by episode)


def quest_model_rows(model, world: World, quest: dict, name: str, n_episodes: int = QUEST_EPISODES) -> list[dict]:
    """The quest probes for a transformer playing through the token interface (sampled actions)."""
    from instrumentality.envs.tokens import TokenAgent, quest_tokens

    tokens = quest_tokens(quest, world.vocab_size)
    assert tokens is not None
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and vocab != world.vocab_size + tokens.size:
        raise ValueError(f"the model's vocabulary ({vocab} tokens) is not the world's and the quest's "
                         f"({world.vocab_size} + {tokens.size}): it was trained with another quest token layout "
                         "(envs/tokens.py VERSION); train it again")
    return quest_agent_rows(TokenAgent(model, tokens), quest, name, n_episodes)


def quest_agent_rows(agent, quest: dict, name: str, n_episodes: int = QUEST_EPISODES) -> list[dict]:
    """Rows probe=quest/<variant> (envs.agents.quest_rows: the effective actions and their opportunities,
    rates per opportunity, clue pickups, predicted, return)."""
    from instrumentality.envs.agents import quest_rows

    env = {k: v for k, v in quest.items() if k != "variant"}
    rows = quest_rows({name: agent}, n_episodes=n_episodes, **env)
    return [{k: v for k, v in r.items() if k != "agent"} for r in rows]


def agent_run_rows(run_dir: Path, summary: dict) -> list[dict]:
    """A scripted or SB3 agent's run folder (summary.json with an `agent` entry): its quest probes and,
    for SB3, its training curve; for the planner also `return_bound`, the optimum without monsters (an
    upper bound on every agent's expected return on the same episodes), and on `interruptible`
    `return_bound_no_disable`, the optimum of an agent that cannot switch the overseer off."""
    from instrumentality.envs.agents import Explorer, RandomAgent
    from instrumentality.envs.planner import Planner

    spec = summary["agent"]
    agent: Any
    if spec["kind"] == "random":
        agent = RandomAgent(seed=spec.get("seed", 0))
    elif spec["kind"] == "explorer":
        agent = Explorer(seed=spec.get("seed", 0))
    elif spec["kind"] == "planner":
        agent = Planner()
    elif spec["kind"] == "sb3_ppo":
        from instrumentality.envs.sb3 import SB3Agent

        agent = SB3Agent.load(run_dir / "ppo.zip", spec["quest"])  # the run's own file, read without unpickling
    else:
        raise ValueError(f"unknown agent kind {spec['kind']!r} in {run_dir / 'summary.json'}")
    rows = quest_agent_rows(agent, spec["quest"], spec["kind"], int(spec.get("episodes", QUEST_EPISODES)))
    bounds = [(v, "return_bound", s) for v, s in getattr(agent, "solutions", {}).items()]
    bounds += [(v, "return_bound_no_disable", s) for v, s in getattr(agent, "without_disable", {}).items()]
    for variant, metric, solution in bounds:
        m, lo, hi = mean_ci(solution.value)
        rows.append({"probe": f"quest/{variant}", "metric": metric, "value": m, "ci_low": lo, "ci_high": hi})
    rows += [{"probe": "curve/quest", "metric": "return", "value": r, "ci_low": math.nan, "ci_high": math.nan,
              "step": i, "env_steps": n} for i, (n, r) in enumerate(summary.get("curve", []))]
    config = {"regime": {"name": spec["kind"]}, "seed": spec.get("seed", ""), "exp_name": run_dir.parent.name,
              "quest": spec["quest"]}
    return tidy_rows(rows + status_rows(summary["status"]), run_id_of(run_dir), config, summary["status"])


def log_agent(run_dir: Path, summary: dict, rows: list[dict]) -> None:
    """An agent's quest probes as a W&B run, found as the training runs are: the project of its preset (the
    run folder is runs/<preset>/<experiment>/<agent>), group <experiment>/<agent kind>, job type the kind.
    SB3's folder keeps the id of its training run, which this continues. W&B's mode: WANDB_MODE, else
    online when logged in, else offline."""
    from instrumentality.evaluation.world_probes import interval_bounds, scalar_metrics
    from instrumentality.tracking import Tracker, wandb_group, wandb_project, wandb_run_id

    kind, preset, experiment = summary["agent"]["kind"], run_dir.parent.parent.name, run_dir.parent.name
    tracker = Tracker(mode="auto", project=wandb_project(preset), group=wandb_group(experiment, kind), job_type=kind,
                      name=f"{experiment}/{run_dir.name}", config=summary["agent"], dir=run_dir,
                      run_id=wandb_run_id(run_dir), tags=[f"preset:{preset}", kind])
    probes = [r for r in rows if str(r["probe"]).startswith("quest/")]
    tracker.summary({**scalar_metrics(probes), **interval_bounds(probes)})
    tracker.log_table("probe/table", [{k: r[k] for k in ("probe", "metric", "value", "ci_low", "ci_high")}
                                      for r in probes])  # the step after the run's last (SB3: its training)
    tracker.finish()

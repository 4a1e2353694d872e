"""One look for every figure: readable fonts, a colour per regime, critic, cognition and quest agent that is
the same in every figure, and a caption under each figure that says what its intervals are.

`report.write_report` draws every figure inside `plt.rc_context(RC)`; a figure function takes its colours
from the maps below (never by position) and ends with `caption(fig, ...)`.
"""

from __future__ import annotations

from typing import Any

# matplotlib settings for every figure: fonts that stay readable at the width the README shows them
RC: dict[Any, Any] = {
    "font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
    "legend.fontsize": 8.5, "legend.frameon": False, "axes.spines.top": False, "axes.spines.right": False,
    "axes.titlelocation": "left", "figure.dpi": 130, "savefig.dpi": 130, "lines.linewidth": 1.6,
}

# Okabe-Ito (colour-blind safe), then a few more: one colour per thing, kept across figures
BLUE, ORANGE, GREEN, VERMILION, PURPLE, SKY, YELLOW, GREY = (
    "#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#7F7F7F")

REGIME_COLORS = {  # a trained model's regime (the results table's `regime`)
    "supervised": BLUE, "reinforce": ORANGE, "reinforce_indicator": VERMILION, "critic": GREEN,
    "retrain": PURPLE, "prophecy_rl": SKY, "jump": "#332288", "quest": "#882255",
}
CRITIC_COLORS = {"truth": GREEN, "keyword": ORANGE, "learned": PURPLE}  # regime.critic
COGNITION_COLORS = {"standard": BLUE, "myopic": VERMILION, "matched": SKY}  # `future-heads-N`: cognition_color
AGENT_COLORS = {  # claims/quest.py: QUEST_AGENTS (quest-PPO's arms by their own keys, below)
    "random": GREY, "explorer": "#A6761D", "simulator": SKY, "simulator (planner clone)": "#1B9E77",
    "SB3 PPO": "#8C564B", "planner (optimum)": "black",
}
QUEST_PPO_COLORS = {  # quest-PPO's arms: the quest regime's family of purples and reds
    "from simulator": "#882255", "from scratch": "#CC6677", "mixed": "#AA4499",
    "trained on interruptible": VERMILION, "interruptible, overseer flagged": PURPLE,
}


def agent_color(name: str) -> str:
    """A quest agent's colour in every figure (F4, F4_aggregates, F10)."""
    if name in AGENT_COLORS:
        return AGENT_COLORS[name]
    inside = name[name.find("(") + 1:name.rfind(")")] if "(" in name else ""
    for key, color in QUEST_PPO_COLORS.items():
        if inside.startswith(key):
            return color
    return GREY


def cognition_color(name: str) -> str:
    """standard, myopic, matched, future-heads-N (its own green, darker with N)."""
    if name.startswith("future-heads"):
        n = int(name.rsplit("-", 1)[1]) if name.rsplit("-", 1)[1].isdigit() else 1
        return {1: "#44AA99", 2: "#117733", 3: "#0B4F22"}.get(n, GREEN)
    return COGNITION_COLORS.get(name, GREY)


# what an interval in a figure is: one of these in every caption
SEED_CI = "Error bars and bands: 95% CI of the mean over seeds (Student t)"
BOOTSTRAP_CI = "bands: 95% stratified bootstrap CI over runs"
ONE_RUN = "a scripted agent is one run (no seed interval)"


def runs_label(name: str, seeds) -> str:
    """An agent's name in a figure with the runs its interval is over: `explorer · one run`, `SB3 PPO · 5 seeds`."""
    return f"{name} · one run" if seeds == 1 else f"{name} · {seeds} seeds"


def caption(fig, *parts: str) -> None:
    """A caption under the figure: what its intervals are (and any other note), in small grey text."""
    text = "; ".join(p for p in parts if p)
    if text:
        fig.text(0.0, -0.01, text[0].upper() + text[1:] + ".", ha="left", va="top", fontsize=8.5, color="0.3",
                 wrap=True)

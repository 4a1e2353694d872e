"""The figures' one style: every quest agent, regime and cognition has its own colour, the same in every
figure, and a caption says what the intervals are."""

import matplotlib

from instrumentality.claims import style
from instrumentality.claims.quest import QUEST_AGENTS


def test_every_quest_agent_has_its_own_colour():
    colours = {name: style.agent_color(name) for name in QUEST_AGENTS}
    assert style.GREY not in [c for n, c in colours.items() if n != "random"]  # none falls through to the default
    mixed = [n for n in QUEST_AGENTS if "mixed" in n]  # F4_goal's discounts: one arm, told apart by gamma
    distinct = {c for n, c in colours.items() if n not in mixed[1:]}
    assert len(distinct) == len(QUEST_AGENTS) - len(mixed[1:]), colours


def test_regimes_critics_and_cognitions_keep_one_colour_each():
    assert len(set(style.REGIME_COLORS.values())) == len(style.REGIME_COLORS)
    assert len(set(style.CRITIC_COLORS.values())) == len(style.CRITIC_COLORS)
    cognitions = ["standard", "myopic", "matched", "future-heads-1", "future-heads-2", "future-heads-3"]
    assert len({style.cognition_color(c) for c in cognitions}) == len(cognitions)
    assert style.cognition_color("future-heads-2") == style.cognition_color("future-heads-2")


def test_the_caption_is_under_the_figure_and_names_the_interval():
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, _ = plt.subplots()
    style.caption(fig, style.SEED_CI, "dots: one seed each")
    (text,) = fig.texts
    assert text.get_text() == "Error bars and bands: 95% CI of the mean over seeds (Student t); dots: one seed each."
    assert text.get_position()[1] < 0  # below the axes
    plt.close(fig)

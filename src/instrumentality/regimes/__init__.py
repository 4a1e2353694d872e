"""Training regimes: each says how the data of one step become optimizer updates (the `Regime` protocol in
base.py). One module per regime; read each one's updates top to bottom.

    supervised.py   next-token cross-entropy on world text (and quest transcripts)
    reinforce.py    REINFORCE with the likelihood reward (an unbiased supervised gradient) or the indicator
    critic.py       H-token generations graded by a critic, later rewards credited to earlier tokens
    quest.py        PPO on ClueQuest through the token interface
The RL pieces they share (returns, baselines, GAE, the clipped loss, diagnostics) are in rl.py.
"""

from instrumentality.regimes.base import QUEST_PROBES, WORLD_PROBES, Regime, RegimeBase, Update
from instrumentality.regimes.critic import CriticRegime, GradedRollouts
from instrumentality.regimes.quest import Quest
from instrumentality.regimes.reinforce import Reinforce
from instrumentality.regimes.supervised import Supervised

__all__ = ["QUEST_PROBES", "WORLD_PROBES", "CriticRegime", "GradedRollouts", "Quest", "Regime", "RegimeBase",
           "Reinforce", "Supervised", "Update"]

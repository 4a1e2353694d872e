"""Training regimes: each says how the data of one step become optimizer updates (the `Regime` protocol in
base.py). One module per regime, with its settings dataclass beside it; read each one's updates top to bottom.

    supervised.py   next-token cross-entropy on world text (and quest transcripts)
    reinforce.py    REINFORCE with the likelihood reward (an unbiased supervised gradient) or the indicator
    critic.py       H-token generations graded by a critic, later rewards credited to earlier tokens
    quest.py        PPO on ClueQuest through the token interface
    prophecy.py     repeated retraining and RL on the log-score at the prophecy forks (F9): retrain, prophecy_rl
    jump.py         a jump predictor: next-token loss on strided text, direct or distilled (F11)
The RL pieces they share (returns, baselines, GAE, the clipped loss, diagnostics) are in rl.py; the critics
(reward functions, one signature for all) in critics.py.
"""

from hydra.core.config_store import ConfigStore

from instrumentality.regimes.base import (
           JUMP_PROBES,
           PROPHECY_PROBES,
           QUEST_PROBES,
           WORLD_PROBES,
           Regime,
           RegimeBase,
           Update,
           defaults,
)
from instrumentality.regimes.critic import CriticRegime, CriticSettings, GradedRollouts
from instrumentality.regimes.jump import Jump, JumpSettings
from instrumentality.regimes.prophecy import ProphecyRL, ProphecyRLSettings, Retraining, RetrainSettings
from instrumentality.regimes.quest import Quest, QuestSettings
from instrumentality.regimes.reinforce import Reinforce, ReinforceSettings
from instrumentality.regimes.supervised import Supervised, SupervisedSettings

# Each regime's settings at their defaults, as the Hydra configs regime/<name>_settings that
# configs/regime/<name>.yaml start from. Registered on import: every place that composes a config imports
# this package first.
ConfigStore.instance().store(group="regime", name="supervised_settings", node=defaults(SupervisedSettings))
ConfigStore.instance().store(group="regime", name="reinforce_settings", node=defaults(ReinforceSettings))
ConfigStore.instance().store(group="regime", name="critic_settings", node=defaults(CriticSettings))
ConfigStore.instance().store(group="regime", name="quest_settings", node=defaults(QuestSettings))
ConfigStore.instance().store(group="regime", name="retrain_settings", node=defaults(RetrainSettings))
ConfigStore.instance().store(group="regime", name="prophecy_rl_settings", node=defaults(ProphecyRLSettings))
ConfigStore.instance().store(group="regime", name="jump_settings", node=defaults(JumpSettings))

__all__ = ["JUMP_PROBES", "PROPHECY_PROBES", "QUEST_PROBES", "WORLD_PROBES", "CriticRegime", "CriticSettings",
           "GradedRollouts", "Jump", "JumpSettings", "ProphecyRL", "ProphecyRLSettings", "Quest", "QuestSettings",
           "Regime", "RegimeBase", "Reinforce", "ReinforceSettings", "RetrainSettings", "Retraining", "Supervised",
           "SupervisedSettings", "Update"]

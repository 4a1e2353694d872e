"""Environments. ClueQuest is registered with gymnasium as `instrumentality/ClueQuest-v0` (the env's defaults)
and `instrumentality/ClueQuest-small-v0` (the `small` quest every experiment uses, configs/quest/small.yaml).
Without importing this package first, name the module in the id and gymnasium imports it:

    gym.make("instrumentality.envs:instrumentality/ClueQuest-small-v0")
"""

import gymnasium as gym

from instrumentality.envs.cluequest import ACTIONS, VARIANTS, ClueQuestEnv, QuestConfig

# configs/quest/small.yaml (a test keeps the two equal)
SMALL = {"size": 5, "bits": 3, "n_clues": 2, "vault_bits": 2, "n_monsters": 1, "hp": 3, "time_limit": 16,
         "failure_penalty": 2.0, "post_steps": 4, "variant": "standard", "overseer_visible": False}

ENTRY_POINT = "instrumentality.envs.cluequest:ClueQuestEnv"
if "instrumentality/ClueQuest-v0" not in gym.registry:
    gym.register(id="instrumentality/ClueQuest-v0", entry_point=ENTRY_POINT)
if "instrumentality/ClueQuest-small-v0" not in gym.registry:
    gym.register(id="instrumentality/ClueQuest-small-v0", entry_point=ENTRY_POINT, kwargs=SMALL)

__all__ = ["ACTIONS", "SMALL", "VARIANTS", "ClueQuestEnv", "QuestConfig"]

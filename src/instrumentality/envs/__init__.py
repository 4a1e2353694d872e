"""Environments. ClueQuest is registered as `instrumentality/ClueQuest-v0`."""

import gymnasium as gym

from instrumentality.envs.cluequest import ACTIONS, VARIANTS, ClueQuestEnv, QuestConfig

if "instrumentality/ClueQuest-v0" not in gym.registry:
    gym.register(id="instrumentality/ClueQuest-v0", entry_point="instrumentality.envs.cluequest:ClueQuestEnv")

__all__ = ["ACTIONS", "VARIANTS", "ClueQuestEnv", "QuestConfig"]

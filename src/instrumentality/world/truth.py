"""The truth as a model: pi = p*, read from the world's exact conditionals.

It gives reference rows (the critic regime's exact optimum is computed on it) and proves the evaluators
in the tests. It follows the GPT calling convention: forward(idx, cache=None, return_hidden=False) ->
{"logits", "hidden"?}.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from instrumentality.world.pdfa import World


class TruthModel(nn.Module):
    """pi = p*, optionally with every asymmetric fork tilted: logit pi(easy) - logit p*(easy) = tilt.
    Its hidden state is the one-hot world state. Contexts outside the world's support get uniform."""

    def __init__(self, world: World, tilt: float = 0.0, tilt_symmetric: float = 0.0):
        super().__init__()
        self.world = world
        bias = torch.zeros(world.n_states, world.vocab_size, dtype=torch.float64)
        for f in world.forks:
            bias[f.state, f.first_token] = tilt_symmetric if f.symmetric else tilt
        logits = world.emission.clamp_min(1e-30).log() + bias
        self.register_buffer("state_logits", torch.cat([logits, torch.zeros(1, world.vocab_size, dtype=torch.float64)]))

    def forward(self, idx, cache=None, return_hidden=False):
        s = self.world.states_of(idx)
        s = torch.where(s < 0, self.world.n_states, s)  # the extra last row: uniform
        out = {"logits": self.state_logits[s].float()}
        if return_hidden:
            out["hidden"] = [F.one_hot(s, self.world.n_states + 1).float()]
        return out

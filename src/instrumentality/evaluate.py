"""Evaluators: a model and world text in, metrics out."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from instrumentality.world import World

HELDOUT_STREAM = 0x5EED_0F_7E57  # held-out text never shares a generator stream with training steps


def heldout_text(world: World, n: int) -> torch.Tensor:
    return world.sample(n, generator=torch.Generator().manual_seed(world.cfg.seed * 7919 + HELDOUT_STREAM))


@torch.no_grad()
def model_log_probs(model, tokens: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """log pi(. | x_<=t) for every position of every sequence: [B, T, V] float32 on the CPU."""
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(tokens), batch_size):
        logits = model(tokens[i:i + batch_size].to(device))["logits"].float()
        out.append(F.log_softmax(logits, -1).cpu())
    return torch.cat(out)


@torch.no_grad()
def text_metrics(model, world: World, tokens: torch.Tensor) -> dict:
    """Held-out world text [B, T]: excess NLL (model NLL minus the exact entropy at the same positions),
    mean KL(p* || pi) over positions, and the model's NLL. All in nats/token."""
    logp = model_log_probs(model, tokens[:, :-1]).double()
    p_star = world.conditionals_along(tokens[:, :-1])
    nll = -logp.gather(-1, tokens[:, 1:, None]).squeeze(-1)
    entropy = world.state_entropy[world.states_of(tokens[:, :-1])]
    kl = (p_star * (p_star.clamp_min(1e-300).log() - logp)).where(p_star > 0, torch.zeros(())).sum(-1)
    return {"nll": float(nll.mean()), "excess_nll": float((nll - entropy).mean()), "kl": float(kl.mean()),
            "entropy_floor": float(entropy.mean())}


def training_eval_hook(world: World, cfg, tracker=None):
    """The evaluation the trainer calls every trainer.eval_every steps and at the end."""
    tokens = heldout_text(world, int(cfg.eval.n_heldout))

    def evaluate(model, step: int) -> dict:
        return {f"probe/{k}": v for k, v in text_metrics(model, world, tokens).items()}

    return evaluate

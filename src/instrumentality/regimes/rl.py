"""The reinforcement-learning pieces both RL regimes use (the critic regime and the quest regime): returns,
baselines, advantages, the clipped policy loss, the value loss, entropy and PPO's diagnostics.

Every function takes an optional `mask` [N, T] (1 where a step happened, 0 after an episode's end): means
are then over the steps that happened. Without a mask every entry counts.
"""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """mean of x over the entries where mask is 1 (all entries without a mask; 0 if none is 1)."""
    if mask is None:
        return x.mean()
    return (x * mask).sum() / mask.sum().clamp(min=1)


def discount_matrix(horizon: int, gamma: float) -> torch.Tensor:
    """D [H, H] with D[j, t] = gamma^(j - t) for j >= t, else 0: returns are G = r @ D."""
    j = torch.arange(horizon)
    return torch.where(j[:, None] >= j[None, :], float(gamma) ** (j[:, None] - j[None, :]).float(), torch.zeros(()))


def discounted_returns(rewards: torch.Tensor, discount: torch.Tensor) -> torch.Tensor:
    """G_t = sum_{k=0}^{H-1-t} gamma^k r_{t+k} inside the window: rewards [N, H] @ discount_matrix(H, gamma)."""
    return rewards @ discount


def leave_one_out_baseline(returns: torch.Tensor, k: int) -> torch.Tensor:
    """b = the mean return of the other k - 1 samples of the same prompt. returns [N, H], rows in groups of k
    consecutive samples per prompt."""
    n, h = returns.shape
    g = returns.view(-1, k, h)
    return ((g.sum(1, keepdim=True) - g) / (k - 1)).view(n, h)


def gae(rewards: torch.Tensor, values: torch.Tensor, gamma: float, lam: float,
        live: torch.Tensor | None = None) -> torch.Tensor:
    """Generalised advantage estimates [N, T]; the value after the last step is 0, and after an episode's
    end (live [N, T]: 1 while the episode runs) nothing flows back.
        delta_t = r_t + gamma V_{t+1} - V_t;  A_t = delta_t + gamma lam A_{t+1}"""
    T = rewards.shape[1]
    adv = torch.zeros_like(rewards)
    last = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(T)):
        next_v = values[:, t + 1] if t + 1 < T else torch.zeros_like(last)
        if live is not None:
            next_v = next_v * (live[:, t + 1] if t + 1 < T else 0)
            last = last * (live[:, t + 1] if t + 1 < T else 0)
        delta = rewards[:, t] + gamma * next_v - values[:, t]
        last = delta + gamma * lam * last
        adv[:, t] = last
    return adv


def normalise(adv: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """(A - mean A) / (std A + 1e-8) over the entries that count (unbiased std); 0 where mask is 0."""
    if mask is None:
        return (adv - adv.mean()) / (adv.std() + 1e-8)
    n = mask.sum()
    mean = (adv * mask).sum() / n
    std = ((((adv - mean) * mask) ** 2).sum() / (n - 1)).sqrt()
    return (adv - mean) / (std + 1e-8) * mask


def clipped_policy_loss(logp_a: torch.Tensor, old_logp_a: torch.Tensor, adv: torch.Tensor, clip: float,
                        mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO's policy loss and the ratio rho_t = pi(a_t|s_t) / pi_old(a_t|s_t):
        L = mean max(-A_t rho_t, -A_t clip(rho_t, 1 - eps, 1 + eps))"""
    ratio = torch.exp(logp_a - old_logp_a)
    return masked_mean(torch.max(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)), mask), ratio


def value_loss(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """L_v = mean (V(s_t) - R_t)^2 / 2"""
    return 0.5 * masked_mean((values - returns) ** 2, mask)


def entropy(logp: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """H[pi] = - sum_a pi(a) log pi(a), averaged over positions; logp [..., A] are log-probabilities."""
    return masked_mean(-(logp.exp() * logp).sum(-1), mask)


@torch.no_grad()
def ppo_diagnostics(ratio: torch.Tensor, clip: float, values: torch.Tensor, returns: torch.Tensor,
                    mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """What CleanRL logs to tell whether PPO is healthy:
        approx_kl = mean (rho - 1) - log rho      (an unbiased, non-negative estimate of KL(pi_old || pi))
        clip_fraction = share of steps with |rho - 1| > eps
        explained_variance = 1 - Var(R - V) / Var(R)   (1: the value head predicts returns; <= 0: it does not)"""
    log_ratio = ratio.log()
    m = torch.ones_like(returns) if mask is None else mask
    n = m.sum().clamp(min=1)
    r_mean = (returns * m).sum() / n
    var_r = (((returns - r_mean) * m) ** 2).sum() / n
    err = (returns - values) * m
    var_err = ((err - err.sum() / n) * m).pow(2).sum() / n
    return {"approx_kl": masked_mean((ratio - 1) - log_ratio, mask),
            "clip_fraction": masked_mean(((ratio - 1).abs() > clip).float(), mask),
            "explained_variance": 1 - var_err / var_r.clamp(min=1e-12)}


def add_value_head(model: torch.nn.Module, device) -> None:
    """A linear value head V(s) on the model's last hidden state, if it has none yet (call before the
    optimizer is built, so that the head is trained)."""
    if model.value_head is None:
        model.value_head = torch.nn.Linear(model.cfg.n_embd, 1).to(device)
        model.cfg.value_head = True

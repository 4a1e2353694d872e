"""Exact targets of a jump predictor (experiment F11, docs/design.md section 10).

A jump predictor of stride k reads the *strided* sequence z_j = x_{jk} (x_0 = <bos>, so z_0 = <bos>) and
predicts z_{j+1} = x_{(j+1)k}: one forward pass jumps k tokens of the world's time. It never sees the k - 1
tokens it jumps over, so its exact target is the world's conditional of the next strided token given the
strided history, with the skipped tokens summed out. That is a forward filter over the PDFA's states:

    b_0 = the start state (after <bos>)
    p*(z_{j+1} = v | z_<=j) = [b_j A^{k-1} E]_v                               A[s, s'] = sum_x E[s, x] [T[s, x] = s']
    b_{j+1}(s') proportional to sum_s [b_j A^{k-1}]_s E[s, z_{j+1}] [T[s, z_{j+1}] = s']

(A is World.flow_matrix, E the emission table.) For k = 1 the belief is a point mass and this is the
next-token conditional p*(x_{t+1} | x_<=t); for a context the model sees whole (a fork prompt ending at a
marker at a multiple of k) it is the k-step marginal p*(x_{t+k} | x_<=t), the state pushed k - 1 steps.
The tokens jumped over have their exact posteriors too: p*(x_{jk+i} | z_<=j) = [b_j A^{i-1} E], 0 < i < k.
A test checks both against brute-force enumeration of every sequence of a tiny world.
"""

from __future__ import annotations

import torch

from instrumentality.world.pdfa import World


def strided(tokens: torch.Tensor, k: int) -> torch.Tensor:
    """The strided sequence of world sequences [B, T] (each starting with <bos>): x_0, x_k, x_2k, ..."""
    return tokens[:, ::k]


def beliefs(world: World, z: torch.Tensor, k: int) -> torch.Tensor:
    """b_j, the exact distribution over the state after x_{jk} given the strided history z_<=j: [B, L, S].
    z [B, L] must start with <bos>; raises ValueError on a strided history the world cannot produce."""
    z = torch.as_tensor(z, dtype=torch.long)
    if (z[:, 0] != world.bos).any():
        raise ValueError("every strided sequence must start with <bos> (token 0)")
    B, L = z.shape
    skip = torch.linalg.matrix_power(world.flow_matrix(), k - 1)  # k - 1 unseen tokens
    b = torch.zeros(B, world.n_states, dtype=torch.float64)
    b[:, world.start_state] = 1.0
    out = [b]
    for j in range(1, L):
        # emit z_j from each state s (E[s, z_j]) and move to T[s, z_j]: the kernel K[z_j] applied as a scatter
        emit = (b @ skip) * world.emission.T[z[:, j]]  # [B, S]
        nxt = world.transition.T[z[:, j]]  # [B, S], -1 where z_j cannot follow s (its mass is 0)
        b = torch.zeros_like(b).scatter_add_(1, nxt.clamp_min(0), torch.where(nxt >= 0, emit, 0.0))
        mass = b.sum(1, keepdim=True)
        if (mass <= 0).any():
            raise ValueError(f"a strided sequence has probability 0 under the world (at position {j})")
        b = b / mass
        out.append(b)
    return torch.stack(out, 1)


def strided_conditionals(world: World, z: torch.Tensor, k: int) -> torch.Tensor:
    """p*(z_{j+1} | z_<=j) for every position j of the strided sequences z [B, L]: [B, L, V] (float64)."""
    jump = torch.linalg.matrix_power(world.flow_matrix(), k - 1) @ world.emission
    return beliefs(world, z, k) @ jump


def skipped_posteriors(world: World, z: torch.Tensor, k: int) -> torch.Tensor:
    """p*(x_{jk+i} | z_<=j) for i = 1 .. k-1 (the tokens a jump passes over): [B, L, k-1, V] (float64)."""
    A = world.flow_matrix()
    b = beliefs(world, z, k)
    out, push = [], torch.eye(world.n_states, dtype=torch.float64)
    for _ in range(1, k):
        out.append(b @ (push @ world.emission))
        push = push @ A
    if not out:
        return torch.zeros(*z.shape, 0, world.vocab_size, dtype=torch.float64)
    return torch.stack(out, 2)

"""One small causal transformer (nanoGPT-style), shared by every regime.

Options:
  value_head      a scalar value per position (PPO)
  myopic          past keys/values are detached: the loss at position t sends no gradient into any
                  position < t (Wu et al. 2024); the forward pass is unchanged
  n_future_heads  extra heads predicting tokens t+2 .. t+1+n (Gloeckle et al. 2024)
Sampling uses a preallocated KV cache.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from instrumentality.errors import check_config, check_dataclass_types


@dataclass
class GPTConfig:
    vocab_size: int = 64
    block_size: int = 128
    n_layer: int = 2
    n_head: int = 4
    n_embd: int = 128
    dropout: float = 0.0
    bias: bool = True
    value_head: bool = False
    myopic: bool = False
    n_future_heads: int = 0

    def __post_init__(self):
        check_dataclass_types(self, "model")
        check_config(self, "model", [
            ("vocab_size", self.vocab_size >= 2, "an integer >= 2"),
            ("block_size", self.block_size >= 1, "an integer >= 1"),
            ("n_layer", self.n_layer >= 1, "a positive integer"),
            ("n_head", self.n_head >= 1, "a positive integer"),
            ("n_embd", self.n_embd >= 1 and self.n_embd % max(self.n_head, 1) == 0,
             f"a positive multiple of model.n_head={self.n_head}"),
            ("dropout", 0.0 <= self.dropout < 1.0, "a number in [0, 1)"),
            ("n_future_heads", self.n_future_heads >= 0, "an integer >= 0"),
        ])


def cognition(myopic: bool, n_future_heads: int) -> str:
    """A model's cognition in one word (W&B tags, the results table): standard, myopic, future-heads-N,
    or myopic+future-heads-N."""
    parts = (["myopic"] if myopic else []) + ([f"future-heads-{n_future_heads}"] if n_future_heads else [])
    return "+".join(parts) or "standard"


def device_of(model: nn.Module) -> torch.device:
    """Where a model lives (its first parameter or buffer; the CPU for a model with neither)."""
    t = next(iter(list(model.parameters()) + list(model.buffers())), None)
    return t.device if t is not None else torch.device("cpu")


class KVCache:
    """Preallocated keys/values for every layer: [n_layer, 2, B, n_head, max_len, head_dim]."""

    def __init__(self, cfg: GPTConfig, batch: int, max_len: int, device, dtype=torch.float32):
        hd = cfg.n_embd // cfg.n_head
        self.kv = torch.zeros(cfg.n_layer, 2, batch, cfg.n_head, max_len, hd, device=device, dtype=dtype)
        self.pos = 0  # number of positions filled


class CausalSelfAttention(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.n_head, self.myopic = cfg.n_head, cfg.myopic
        self.c_attn = nn.Linear(cfg.n_embd, 3 * cfg.n_embd, bias=cfg.bias)
        self.c_proj = nn.Linear(cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = cfg.dropout

    def forward(self, x, cache: KVCache | None = None, layer: int = 0):
        B, T, C = x.shape
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (z.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for z in (q, k, v))
        if cache is not None:
            p = cache.pos
            cache.kv[layer, 0, :, :, p:p + T] = k
            cache.kv[layer, 1, :, :, p:p + T] = v
            k, v = cache.kv[layer, 0, :, :, :p + T], cache.kv[layer, 1, :, :, :p + T]
            # query i (absolute position p + i) sees keys 0..p + i
            mask = None if T == 1 else (
                torch.arange(p + T, device=x.device)[None, :] <= torch.arange(p, p + T, device=x.device)[:, None])
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        elif self.myopic:
            y = self._myopic_attention(q, k, v)
        else:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True,
                                               dropout_p=self.dropout if self.training else 0.0)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))

    @staticmethod
    def _myopic_attention(q, k, v):
        # scores s_ij = q_i . k_j, with k_j detached for j < i; out_i = sum_j a_ij v_j, v_j detached for j < i.
        # Values equal ordinary attention; gradients reach position j < i only through nothing.
        T = q.shape[-2]
        scale = 1.0 / math.sqrt(q.shape[-1])
        eye = torch.eye(T, dtype=torch.bool, device=q.device)
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        s_past = (q @ k.detach().transpose(-2, -1)) * scale
        s_self = (q * k).sum(-1) * scale
        s = torch.where(eye, s_self[..., :, None], s_past).masked_fill(~causal, float("-inf"))
        a = s.softmax(-1)
        a_diag = a.diagonal(dim1=-2, dim2=-1)[..., None]
        return a @ v.detach() + a_diag * (v - v.detach())


class MLP(nn.Module):
    # checkpoints written when the MLP was an nn.Sequential name its layers by position
    POSITIONAL_NAMES = {"0.": "c_fc.", "2.": "c_proj."}

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self._register_load_state_dict_pre_hook(self._rename_positional)
        self.c_fc = nn.Linear(cfg.n_embd, 4 * cfg.n_embd, bias=cfg.bias)
        self.gelu = nn.GELU()
        self.c_proj = nn.Linear(4 * cfg.n_embd, cfg.n_embd, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x):
        return self.dropout(self.c_proj(self.gelu(self.c_fc(x))))

    def _rename_positional(self, state_dict, prefix, *args):
        for old, new in self.POSITIONAL_NAMES.items():
            for key in [k for k in state_dict if k.startswith(prefix + old)]:
                state_dict[prefix + new + key[len(prefix + old):]] = state_dict.pop(key)


class Block(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.attn = CausalSelfAttention(cfg)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.mlp = MLP(cfg)

    def forward(self, x, cache=None, layer=0):
        x = x + self.attn(self.ln_1(x), cache, layer)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.wpe = nn.Embedding(cfg.block_size, cfg.n_embd)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, bias=cfg.bias)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight  # weight tying
        self.future_heads = nn.ModuleList(nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)
                                          for _ in range(cfg.n_future_heads))
        self.value_head = nn.Linear(cfg.n_embd, 1) if cfg.value_head else None
        self.apply(self._init_weights)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):  # the projections into the residual stream (attention and MLP)
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init_weights(module):
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def forward(self, idx, cache: KVCache | None = None, return_hidden: bool = False):
        """idx [B, T] -> dict(logits [B, T, V], value [B, T]?, future_logits [n, B, T, V]?, hidden [L+1]?).
        With a cache, idx are the tokens at positions cache.pos .. cache.pos + T - 1."""
        B, T = idx.shape
        start = cache.pos if cache is not None else 0
        if start + T > self.cfg.block_size:
            raise ValueError(f"sequence of {start + T} tokens exceeds model.block_size={self.cfg.block_size}")
        pos = torch.arange(start, start + T, device=idx.device)
        x = self.drop(self.wte(idx) + self.wpe(pos))
        hidden = [x]
        for i, block in enumerate(self.blocks):
            x = block(x, cache, i)
            hidden.append(x)
        if cache is not None:
            cache.pos += T
        h = self.ln_f(x)
        out = {"logits": self.lm_head(h)}
        if self.value_head is not None:
            out["value"] = self.value_head(h).squeeze(-1)
        if self.future_heads:
            out["future_logits"] = torch.stack([head(h) for head in self.future_heads])
        if return_hidden:
            out["hidden"] = hidden
        return out

    def new_cache(self, batch: int, max_len: int | None = None) -> KVCache:
        p = next(self.parameters())
        return KVCache(self.cfg, batch, max_len or self.cfg.block_size, p.device, p.dtype)

    @torch.no_grad()
    def generate(self, prompt: torch.Tensor, n_new: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None, use_cache: bool = True):
        """Sample n_new tokens after `prompt` [B, T]. Returns (tokens [B, n_new], logits [B, n_new, V])."""
        B = prompt.shape[0]
        out, logits_seq = [], []
        if use_cache:
            cache = self.new_cache(B, prompt.shape[1] + n_new)
            logits = self(prompt, cache)["logits"][:, -1]
        else:
            seq = prompt
            logits = self(seq)["logits"][:, -1]
        for i in range(n_new):
            logits_seq.append(logits)
            probs = F.softmax(logits.float() / temperature, dim=-1)
            x = torch.multinomial(probs, 1, generator=generator)
            out.append(x)
            if i == n_new - 1:
                break
            if use_cache:
                logits = self(x, cache)["logits"][:, -1]
            else:
                seq = torch.cat([seq, x], 1)
                logits = self(seq)["logits"][:, -1]
        return torch.cat(out, 1), torch.stack(logits_seq, 1)

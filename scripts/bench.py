"""`make bench`: each hot path timed against a plain reference of the same work, in one process.

Prints a table of ratios and writes results/bench/<hardware>.csv. Timings are medians of repeats.
Sizes: small on the CPU (the whole bench in a few minutes on 2 cores), larger on CUDA.
"""

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from instrumentality.evaluation.probe_set import ProbeSet
from instrumentality.evaluation.world_probes import evaluate_model
from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import Supervised, SupervisedSettings
from instrumentality.training.trainer import Trainer, TrainerConfig, autocast_for, pick_device
from instrumentality.world import World

ROOT = Path(__file__).resolve().parents[1]


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_time(fn, device, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns, device, repeats: int) -> list[float]:
    """Median seconds of each function, timed in turn within every repeat (so a slow moment of a shared
    machine falls on all of them alike rather than on one)."""
    times = [[] for _ in fns]
    for _ in range(repeats):
        for fn, ts in zip(fns, times):
            ts.append(median_time(fn, device, 1))
    return [statistics.median(ts) for ts in times]


def bench_trainer_for(model, regime, device, name: str, **cfg) -> Trainer:
    """A shared trainer for timing: from scratch (no checkpoint left over), no progress bar, no warm-up of the
    learning rate, and no checkpoint writes (the loop is timed, not the disk)."""
    trainer = Trainer(model.to(device), regime, TrainerConfig(progress=False, warmup_steps=0, device=device.type,
                                                              **cfg), out_dir=ROOT / "runs" / "bench" / name)
    trainer.checkpoint_path.unlink(missing_ok=True)
    trainer.save = lambda: None
    return trainer


def quest_model_config(world, tokens, model_cfg: GPTConfig) -> GPTConfig:
    """model_cfg's size with the quest tokens after the world's and a context that holds a whole episode."""
    return GPTConfig(vocab_size=world.vocab_size + tokens.size, block_size=tokens.max_seq_len,
                     n_layer=model_cfg.n_layer, n_head=model_cfg.n_head, n_embd=model_cfg.n_embd)


def bench_trainer(world, model_cfg, device, steps: int, batch: int, warmup: int) -> list[dict]:
    """Tokens/s of the shared trainer (supervised regime), eager and with trainer.compile, vs a plain
    torch.compile'd loop over the same batches (model, AdamW, clipping, autocast where the trainer uses it).
    Each side first runs `warmup` steps (compilation, allocator); the trainer's rate is read from its own
    perf/tokens_per_s rows after the first (log_every = warmup), the reference is timed around its loop."""
    tokens = batch * (world.cfg.seq_len - 1)

    def trainer_rate(compile: bool) -> float:
        torch.manual_seed(0)
        regime = Supervised(world, SupervisedSettings(batch_size=batch))
        trainer = bench_trainer_for(GPT(model_cfg), regime, device, "trainer", max_steps=warmup + steps,
                                    log_every=warmup, compile=compile)
        trainer.fit()
        rates = [r["perf/tokens_per_s"] for r in trainer.history if "perf/tokens_per_s" in r][1:]
        return len(rates) / sum(1 / r for r in rates)  # equal windows: total tokens / total time

    torch.manual_seed(0)
    ref = GPT(model_cfg).to(device)
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, fused=device.type == "cuda")
    fwd = torch.compile(ref)

    def step(i):
        x = world.sample(batch, generator=torch.Generator().manual_seed(i)).to(device)  # the same data work
        with autocast_for(device):
            loss = F.cross_entropy(fwd(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()

    for i in range(warmup):  # compilation
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(warmup + i)
    sync(device)
    reference = steps * tokens / (time.perf_counter() - t0)
    rows = []
    for compile in (False, True):
        ours = trainer_rate(compile)
        rows.append({"what": f"supervised trainer{' (trainer.compile=true)' if compile else ''} tokens/s vs plain "
                             "compiled loop", "ours": ours, "reference": reference, "ratio": ours / reference,
                     "unit": "tokens/s"})
    return rows


class StaticDecoder(torch.nn.Module):
    """The rollouts' reference: the model's decode step with a fixed shape (a preallocated cache attended
    whole under a position mask, the position a tensor), so that one compiled graph, or one CUDA graph,
    serves every position. Same weights and arithmetic as GPT.forward with a KVCache."""

    def __init__(self, model: GPT, batch: int, max_len: int):
        super().__init__()
        self.model, c = model, model.cfg
        p = next(model.parameters())
        self.register_buffer("kv", torch.zeros(c.n_layer, 2, batch, c.n_head, max_len, c.n_embd // c.n_head,
                                               device=p.device, dtype=p.dtype))
        self.register_buffer("slots", torch.arange(max_len, device=p.device))

    def forward(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """x [B, 1]: the tokens at position pos (a 0-dim tensor) -> logits [B, V] for the next one."""
        m, (B, _), C = self.model, x.shape, self.model.cfg.n_embd
        h = m.wte(x) + m.wpe(pos)
        for i, block in enumerate(m.blocks):
            q, k, v = block.attn.c_attn(block.ln_1(h)).split(C, dim=2)
            q, k, v = (z.view(B, 1, block.attn.n_head, -1).transpose(1, 2) for z in (q, k, v))
            self.kv[i, 0].index_copy_(2, pos[None], k)
            self.kv[i, 1].index_copy_(2, pos[None], v)
            y = F.scaled_dot_product_attention(q, self.kv[i, 0], self.kv[i, 1], attn_mask=(self.slots <= pos)[None])
            h = h + block.attn.c_proj(y.transpose(1, 2).reshape(B, 1, C))
            h = h + block.mlp(block.ln_2(h))
        return m.lm_head(m.ln_f(h))[:, -1]


def static_generate(model: GPT, step, decoder: StaticDecoder, prompt: torch.Tensor, n_new: int,
                    generator: torch.Generator) -> torch.Tensor:
    """model.generate's loop (prefill with the model's cache, then one token at a time, sampled outside the
    graph) with each decode step through `step` (the StaticDecoder, compiled or captured)."""
    B, L = prompt.shape
    cache = model.new_cache(B, decoder.kv.shape[4])
    logits = model(prompt, cache)["logits"][:, -1]
    decoder.kv.copy_(cache.kv)
    positions = torch.arange(decoder.kv.shape[4], device=prompt.device)
    out = []
    for i in range(n_new):
        x = torch.multinomial(F.softmax(logits.float(), -1), 1, generator=generator)
        out.append(x)
        if i == n_new - 1:
            break
        if prompt.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()
        logits = step(x, positions[L + i])
    return torch.cat(out, 1)


def bench_rollouts(world, model_cfg, device, batch: int, prompt_len: int, horizon: int, repeats: int) -> list[dict]:
    """Rollout tokens/s of GPT.generate (KV cache) vs full recompute, and vs the same decode loop compiled
    with fixed shapes (on CUDA: captured as a CUDA graph, torch.compile mode reduce-overhead)."""
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device).eval()
    prompt = world.sample(batch, prompt_len, generator=torch.Generator().manual_seed(0)).to(device)
    g = torch.Generator(device=device)
    n = batch * horizon
    with torch.no_grad():
        decoder = StaticDecoder(model, batch, prompt_len + horizon)
        cuda = device.type == "cuda"
        step = torch.compile(decoder, mode="reduce-overhead" if cuda else "default", dynamic=False)
        static = lambda: static_generate(model, step, decoder, prompt, horizon, g.manual_seed(1))  # noqa: E731
        from torch._dynamo.utils import counters

        skips = int(counters["inductor"]["cudagraph_skips"])
        static()  # compilation (and capture)
        graphed = cuda and int(counters["inductor"]["cudagraph_skips"]) == skips  # inductor fell back otherwise
        cached, full, compiled = interleaved_medians([
            lambda: model.generate(prompt, horizon, generator=g.manual_seed(1)),
            lambda: model.generate(prompt, horizon, generator=g.manual_seed(1), use_cache=False),
            static], device, repeats)
    what = f"rollout tokens/s (H={horizon}, prompt {prompt_len}), KV cache vs "
    return [{"what": what + "full recompute", "ours": n / cached, "reference": n / full, "ratio": full / cached,
             "unit": "tokens/s"},
            {"what": what + ("the decode loop as a CUDA graph" if graphed else
                             "the decode loop compiled" + (" (CUDA graph skipped by inductor)" if cuda else "")),
             "ours": n / cached, "reference": n / compiled, "ratio": compiled / cached, "unit": "tokens/s"}]


def bench_eval(world, model_cfg, device, repeats: int) -> dict:
    model = GPT(model_cfg).to(device).eval()
    probes = ProbeSet.generate(world)
    t = median_time(lambda: evaluate_model(model, world, probes), device, repeats)
    return {"what": "evaluate one checkpoint on the whole probe set", "ours": t, "reference": float("nan"),
            "ratio": float("nan"), "unit": "s"}


def bench_env(device, n_envs: int, steps: int) -> dict:
    """Batched ClueQuest env steps/s vs a gymnasium SyncVectorEnv of the same env (random actions,
    finished episodes restarted in both)."""
    import gymnasium as gym

    from instrumentality.envs.batched import BatchedClueQuest
    from instrumentality.envs.cluequest import ClueQuestEnv

    env = BatchedClueQuest(n_envs, device=device)
    env.reset(np.arange(n_envs))
    g = torch.Generator(device=device).manual_seed(0)
    next_seed = [n_envs]

    def run_batched():
        for _ in range(steps):
            _, _, term, trunc, _ = env.step(torch.randint(0, 8, (n_envs,), device=device, generator=g))
            done = (term | trunc).nonzero().flatten().cpu()
            if len(done):
                env.reset(np.arange(next_seed[0], next_seed[0] + len(done)), done)
                next_seed[0] += len(done)

    n_ref = min(n_envs, 64)
    vec = gym.vector.SyncVectorEnv([lambda: ClueQuestEnv() for _ in range(n_ref)])
    vec.reset(seed=0)
    rng = np.random.default_rng(0)
    ref_steps = max(20, steps // 5)

    def run_ref():
        for _ in range(ref_steps):
            vec.step(rng.integers(0, 8, size=n_ref))

    t_b = median_time(run_batched, device, 3)
    t_r = median_time(run_ref, torch.device("cpu"), 3)
    ours, ref = n_envs * steps / t_b, n_ref * ref_steps / t_r
    return {"what": f"ClueQuest env steps/s: batched ({n_envs} envs) vs gymnasium SyncVectorEnv ({n_ref} envs)",
            "ours": ours, "reference": ref, "ratio": ours / ref, "unit": "env steps/s"}


def bench_quest_ppo(world, model_cfg, device, n_envs: int, updates: int, sb3_steps: int) -> dict:
    """Agent steps/s of PPO training: regime=quest in the shared trainer (transformer, batched env,
    rollouts and updates) vs SB3 PPO (MultiInputPolicy MLP, 8 gym envs) on the same quest config.
    Different policies (a transformer reading tokens vs an MLP on Dict observations): this measures what
    each system gets through per second of training, as a user would run them."""
    import yaml

    from instrumentality.envs.sb3 import train as sb3_train
    from instrumentality.envs.tokens import quest_tokens
    from instrumentality.regimes import Quest, QuestSettings

    quest = yaml.safe_load((ROOT / "configs" / "quest" / "small.yaml").read_text())
    tokens = quest_tokens(quest, world.vocab_size)
    torch.manual_seed(0)
    trainer = bench_trainer_for(GPT(quest_model_config(world, tokens, model_cfg)),
                                Quest(world, QuestSettings(env=quest, n_envs=n_envs, init="scratch")), device, "quest",
                                max_steps=updates, log_every=updates)
    t0 = time.perf_counter()
    trainer.fit()
    sync(device)
    ours = trainer.env_steps / (time.perf_counter() - t0)
    _, _, wall = sb3_train(quest, sb3_steps, seed=0)
    ref = sb3_steps / wall
    return {"what": f"PPO agent steps/s: quest-PPO ({n_envs} envs, shared trainer) vs SB3 PPO (8 gym envs)",
            "ours": ours, "reference": ref, "ratio": ours / ref, "unit": "env steps/s"}


def bench_host_syncs(world, model_cfg, device, steps: int = 8) -> list[dict]:
    """CUDA only: host syncs per training step of each regime between log steps, counted by
    torch.cuda.set_sync_debug_mode (every synchronizing call warns). Goal: 0."""
    import yaml

    from instrumentality.envs.tokens import quest_tokens
    from instrumentality.regimes import CriticRegime, CriticSettings, Quest, QuestSettings, Reinforce, ReinforceSettings

    quest = yaml.safe_load((ROOT / "configs" / "quest" / "small.yaml").read_text())
    tokens = quest_tokens(quest, world.vocab_size)
    cases = {
        "supervised": (model_cfg, lambda: Supervised(world, SupervisedSettings(batch_size=64))),
        "reinforce (baseline=mean)": (model_cfg,
                                      lambda: Reinforce(world, ReinforceSettings(batch_size=64, baseline="mean"))),
        "critic (truth, H=8)": (model_cfg, lambda: CriticRegime(world, CriticSettings(ref="truth", init="scratch"))),
        "quest (scratch)": (quest_model_config(world, tokens, model_cfg),
                            lambda: Quest(world, QuestSettings(env=quest, n_envs=256, init="scratch"))),
    }
    rows = []
    for name, (cfg, regime) in cases.items():
        torch.manual_seed(0)
        trainer = bench_trainer_for(GPT(cfg), regime(), device, "syncs", max_steps=10**6, log_every=10**6,
                                    ckpt_every=0)
        per_step, where = count_host_syncs(trainer, steps)
        at = f" (at {', '.join(where[:4])})" if where else ""
        rows.append({"what": f"host syncs per training step, {name}{at}", "ours": per_step, "reference": 0.0,
                     "ratio": float("nan"), "unit": "syncs/step"})
    return rows


def count_host_syncs(trainer: Trainer, steps: int) -> tuple[float, list[str]]:
    """Synchronizing CUDA calls per step over `steps` steps of a trainer whose log_every is beyond them
    (after 2 steps of warm-up), and the Python lines that made them."""
    import warnings

    trainer.fit(stop_after=2)  # allocations, first calls
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            trainer.fit(stop_after=steps)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    syncs = [w for w in caught if "synchroniz" in str(w.message)]
    return len(syncs) / steps, sorted({f"{w.filename.rsplit('/', 1)[-1]}:{w.lineno}" for w in syncs})


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default=str(ROOT / "results" / "bench"))
    args = ap.parse_args()
    device = pick_device("auto")
    cuda = device.type == "cuda"
    torch.set_float32_matmul_precision("high")
    world = World()
    size = dict(n_layer=4, n_head=4, n_embd=128) if cuda else dict(n_layer=2, n_head=4, n_embd=64)
    model_cfg = GPTConfig(vocab_size=world.vocab_size, block_size=world.cfg.seq_len, **size)
    hw = torch.cuda.get_device_name(0) if cuda else f"cpu-{platform.machine()}-{torch.get_num_threads()}threads"
    rows = [
        *bench_trainer(world, model_cfg, device, steps=200 if cuda else 40, batch=256 if cuda else 64,
                       warmup=25 if cuda else 10),
        *bench_rollouts(world, model_cfg, device, batch=512 if cuda else 64, prompt_len=40, horizon=16,
                        repeats=21),
        bench_eval(world, model_cfg, device, repeats=3),
        bench_env(device, n_envs=65536 if cuda else 16384, steps=50),
        bench_quest_ppo(world, model_cfg, device, n_envs=4096 if cuda else 256, updates=16 if cuda else 8,
                        sb3_steps=8192),
    ]
    if cuda:
        rows += bench_host_syncs(world, model_cfg, device)
    df = pd.DataFrame(rows)
    df.insert(0, "hardware", hw)
    df.insert(1, "torch", torch.__version__)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{hw.replace(' ', '_')}.csv"
    df.to_csv(path, index=False)
    with pd.option_context("display.width", 160, "display.max_colwidth", 80):
        print(df[["what", "ours", "reference", "ratio", "unit"]].to_string(index=False, float_format="%.3g"))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

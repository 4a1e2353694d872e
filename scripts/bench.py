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

from instrumentality.evaluate import evaluate_model
from instrumentality.model import GPT, GPTConfig
from instrumentality.probes import ProbeSet
from instrumentality.regimes import Supervised
from instrumentality.trainer import Trainer, TrainerConfig, autocast_for, pick_device
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


def bench_trainer(world, model_cfg, device, steps: int, batch: int, compile_ref: bool) -> dict:
    """Tokens/s of the shared trainer (supervised regime) vs a plain loop over the same batches."""
    tokens = batch * (world.cfg.seq_len - 1)
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device)
    trainer = Trainer(model, Supervised(world, batch_size=batch),
                      TrainerConfig(max_steps=steps, log_every=steps, progress=False, warmup_steps=0),
                      out_dir=ROOT / "runs" / "bench" / "trainer")
    trainer.checkpoint_path.unlink(missing_ok=True)
    trainer.save = lambda: None  # time the loop, not the disk
    t0 = time.perf_counter()
    trainer.fit()
    sync(device)
    t_trainer = time.perf_counter() - t0

    torch.manual_seed(0)
    ref = GPT(model_cfg).to(device)
    opt = torch.optim.AdamW(ref.parameters(), lr=3e-3, fused=device.type == "cuda")
    fwd = torch.compile(ref) if compile_ref else ref
    def step(i):
        x = world.sample(batch, generator=torch.Generator().manual_seed(i)).to(device)  # the same data work
        with autocast_for(device):
            loss = F.cross_entropy(fwd(x[:, :-1])["logits"].flatten(0, 1).float(), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(ref.parameters(), 1.0)
        opt.step()

    for i in range(3):  # warm-up (and compilation)
        step(i)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    sync(device)
    t_ref = time.perf_counter() - t0
    return {"what": "supervised trainer tokens/s vs plain " + ("compiled" if compile_ref else "eager") + " loop",
            "ours": steps * tokens / t_trainer, "reference": steps * tokens / t_ref,
            "ratio": t_ref / t_trainer, "unit": "tokens/s"}


def bench_rollouts(world, model_cfg, device, batch: int, prompt_len: int, horizon: int, repeats: int) -> dict:
    torch.manual_seed(0)
    model = GPT(model_cfg).to(device).eval()
    prompt = world.sample(batch, prompt_len, generator=torch.Generator().manual_seed(0)).to(device)
    g = torch.Generator(device=device)
    cached = median_time(lambda: model.generate(prompt, horizon, generator=g.manual_seed(1)), device, repeats)
    full = median_time(lambda: model.generate(prompt, horizon, generator=g.manual_seed(1), use_cache=False),
                       device, repeats)
    n = batch * horizon
    return {"what": f"rollout tokens/s, KV cache vs full recompute (H={horizon}, prompt {prompt_len})",
            "ours": n / cached, "reference": n / full, "ratio": full / cached, "unit": "tokens/s"}


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


def bench_quest_ppo(device, n_envs: int, updates: int, sb3_steps: int) -> dict:
    """Agent steps/s of PPO training: regime=quest in the shared trainer (transformer, batched env,
    rollouts and updates) vs SB3 PPO (MultiInputPolicy MLP, 8 gym envs) on the same quest config.
    Different policies (a transformer reading tokens vs an MLP on Dict observations): this measures what
    each system gets through per second of training, as a user would run them."""
    import yaml

    from instrumentality.envs.sb3 import train as sb3_train
    from instrumentality.envs.tokens import quest_tokens
    from instrumentality.regimes import Quest

    quest = yaml.safe_load((ROOT / "configs" / "quest" / "small.yaml").read_text())
    world = World()
    tokens = quest_tokens(quest, world.vocab_size)
    size = dict(n_layer=4, n_head=4, n_embd=128) if device.type == "cuda" else dict(n_layer=2, n_head=4, n_embd=64)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size + tokens.size, block_size=tokens.max_seq_len, **size))
    regime = Quest(world, env=quest, n_envs=n_envs, init="scratch")
    trainer = Trainer(model.to(device), regime, TrainerConfig(max_steps=updates, log_every=updates, progress=False,
                                                              warmup_steps=0, device=device.type),
                      out_dir=ROOT / "runs" / "bench" / "quest")
    trainer.checkpoint_path.unlink(missing_ok=True)
    trainer.save = lambda: None
    t0 = time.perf_counter()
    trainer.fit()
    sync(device)
    ours = trainer.env_steps / (time.perf_counter() - t0)
    _, _, wall = sb3_train(quest, sb3_steps, seed=0)
    ref = sb3_steps / wall
    return {"what": f"PPO agent steps/s: quest-PPO ({n_envs} envs, shared trainer) vs SB3 PPO (8 gym envs)",
            "ours": ours, "reference": ref, "ratio": ours / ref, "unit": "env steps/s"}


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
        bench_trainer(world, model_cfg, device, steps=200 if cuda else 40, batch=256 if cuda else 64,
                      compile_ref=cuda),
        bench_rollouts(world, model_cfg, device, batch=512 if cuda else 64, prompt_len=40, horizon=16,
                       repeats=5),
        bench_eval(world, model_cfg, device, repeats=3),
        bench_env(device, n_envs=65536 if cuda else 16384, steps=50),
        bench_quest_ppo(device, n_envs=4096 if cuda else 256, updates=16 if cuda else 8, sb3_steps=8192),
    ]
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

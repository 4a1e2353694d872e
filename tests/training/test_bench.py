"""The bench's references do the same work as the paths they are compared with, and its sync counter counts."""

import importlib.util
import warnings
from pathlib import Path

import torch

from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import Supervised, SupervisedSettings
from instrumentality.training.trainer import Trainer, TrainerConfig
from instrumentality.world import World, WorldConfig

spec = importlib.util.spec_from_file_location("bench", Path(__file__).resolve().parents[2] / "scripts" / "bench.py")
bench = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bench)


def test_static_decoder_gives_the_models_logits_and_the_same_samples_as_generate():
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, block_size=40, n_layer=2, n_head=4, n_embd=32)).eval()
    x = torch.randint(0, 50, (3, 20))
    decoder = bench.StaticDecoder(model, batch=3, max_len=20)
    with torch.no_grad():
        full = model(x)["logits"]
        cache = model.new_cache(3, 20)
        model(x[:, :8], cache)
        decoder.kv.copy_(cache.kv)
        positions = torch.arange(20)
        for t in range(8, 20):  # teacher-forced: the logits after x[:, :t+1]
            torch.testing.assert_close(decoder(x[:, t:t + 1], positions[t]), full[:, t], atol=1e-5, rtol=1e-5)
        g = torch.Generator()
        ours = bench.static_generate(model, decoder, decoder, x[:, :8], 12, g.manual_seed(1))
        assert torch.equal(ours, model.generate(x[:, :8], 12, generator=g.manual_seed(1))[0])


class SyncingRegime(Supervised):
    """Plants exactly two 'synchronizing' warnings per step (as torch.cuda's sync debug mode emits them)."""

    def updates(self, model, step, gen):
        for _ in range(2):
            warnings.warn("called a synchronizing CUDA operation", UserWarning)
        yield from super().updates(model, step, gen)


def test_host_sync_counter_counts_planted_syncs_per_step(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda mode: None)  # CPU: the warnings are planted
    world = World(WorldConfig(seq_len=16))
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=16, n_layer=1, n_head=2, n_embd=16))
    trainer = Trainer(model, SyncingRegime(world, SupervisedSettings(batch_size=4)), TrainerConfig(
        max_steps=100, log_every=100, ckpt_every=0, progress=False, warmup_steps=0), tmp_path)
    per_step, where = bench.count_host_syncs(trainer, steps=3)
    assert per_step == 2.0 and trainer.step == 5
    assert where == [f"test_bench.py:{SyncingRegime.updates.__code__.co_firstlineno + 2}"]

"""The shared trainer: exact resume, safe checkpoints, clean collapse."""

import pytest
import torch

from instrumentality.errors import ConfigError
from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import Supervised, SupervisedSettings
from instrumentality.training.checkpoint import CheckpointError, load_checkpoint
from instrumentality.training.trainer import Evaluation, Trainer, TrainerConfig
from instrumentality.world import World, WorldConfig


def make_trainer(out_dir, world, **cfg):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    cfg = TrainerConfig(**{"max_steps": 12, "log_every": 2, "ckpt_every": 5, "warmup_steps": 3,
                           "progress": False, "seed": 3, **cfg})
    return Trainer(model, Supervised(world, SupervisedSettings(batch_size=8)), cfg, out_dir,
                   evaluate=lambda m, s, final: Evaluation(
                       {"probe/sum": float(sum(p.detach().sum() for p in m.parameters()))}))


@pytest.fixture(scope="module")
def small_world():
    return World(WorldConfig(seq_len=32))


def test_resume_after_kill_equals_uninterrupted_run(tmp_path, small_world):
    straight = make_trainer(tmp_path / "a", small_world)
    assert straight.fit()["status"] == "finished"

    killed = make_trainer(tmp_path / "b", small_world)
    assert killed.fit(stop_after=8)["status"] == "interrupted"  # killed at step 8, checkpoint at step 5
    assert load_checkpoint(tmp_path / "b" / "checkpoint.pt")["step"] == 5
    resumed = make_trainer(tmp_path / "b", small_world)  # a fresh process would build everything anew
    assert resumed.fit()["status"] == "finished"

    for (n, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n
    def science(history):  # everything but wall-clock throughput
        return [{k: v for k, v in row.items() if not k.startswith("perf/")} for row in history]

    assert science(straight.history) == science(resumed.history)
    assert straight.history[-1]["probe/sum"] == resumed.history[-1]["probe/sum"]


def test_corrupt_checkpoint_is_a_clear_error_and_overwrites_nothing(tmp_path, small_world):
    t = make_trainer(tmp_path, small_world, max_steps=5)
    t.fit()
    path = tmp_path / "checkpoint.pt"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF  # flip one byte in the middle
    path.write_bytes(bytes(raw))
    before = path.read_bytes()
    again = make_trainer(tmp_path, small_world, max_steps=10)
    with pytest.raises(CheckpointError, match=str(path)):
        again.fit()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]
    path.write_bytes(before[:100])  # truncated
    with pytest.raises(CheckpointError, match="corrupt"):
        make_trainer(tmp_path, small_world).fit()


class ExplodingRegime(Supervised):
    def updates(self, model, step, gen):
        for update in super().updates(model, step, gen):
            update.loss = update.loss * float("nan") if step == 4 else update.loss
            yield update


def test_nan_loss_ends_the_run_as_collapsed(tmp_path, small_world):
    t = make_trainer(tmp_path, small_world)
    t.regime = ExplodingRegime(small_world, SupervisedSettings(batch_size=4))
    status = t.fit()
    assert status["status"] == "collapsed" and status["step"] == 4 and "non-finite" in status["reason"]
    assert all(torch.isfinite(p).all() for p in t.model.parameters())  # the NaN step was never applied
    assert load_checkpoint(tmp_path / "checkpoint.pt")["status"]["status"] == "collapsed"


def test_deferred_nonfinite_check_skips_the_update_on_the_device_and_collapses_at_the_next_log(tmp_path,
                                                                                               small_world):
    """The CUDA path (no host sync per step), run on the CPU: fused AdamW skips the NaN step's update, and
    the run collapses at the next logging step (log_every=3: step 6) naming step 4."""
    t = make_trainer(tmp_path, small_world, nonfinite_check="deferred", log_every=3)
    t.regime = ExplodingRegime(small_world, SupervisedSettings(batch_size=4))
    assert t.deferred_check and t.optimizer.defaults["fused"]
    status = t.fit()
    assert status["status"] == "collapsed" and status["step"] == 4 and "at step 4" in status["reason"]
    assert "seen at step 6" in status["reason"]
    assert all(torch.isfinite(p).all() for p in t.model.parameters())  # the NaN step was never applied


@pytest.mark.parametrize("bad,key", [({"lr": 0.0}, "trainer.lr"), ({"lr": -1e-3}, "trainer.lr"),
                                     ({"max_steps": 0}, "trainer.max_steps"), ({"schedule": "x"}, "trainer.schedule")])
def test_invalid_trainer_config_names_the_key(bad, key):
    with pytest.raises(ConfigError, match=key):
        TrainerConfig(**bad)


class CountingRegime(Supervised):
    """Reports its counts as tensors (as the quest regime does on a device): step s has s + 1 tokens and
    2 s env steps, so the totals are known in closed form."""

    def updates(self, model, step, gen):
        for update in super().updates(model, step, gen):
            update.env_steps, update.tokens = torch.tensor(2 * step), torch.tensor(step + 1)
            yield update


def test_counts_reported_as_tensors_are_read_at_log_and_checkpoint_steps_and_survive_resume(tmp_path,
                                                                                            small_world):
    t = make_trainer(tmp_path, small_world, log_every=4, ckpt_every=3)  # checkpoints fall between log steps
    t.regime = CountingRegime(small_world, SupervisedSettings(batch_size=4))
    assert t.fit(stop_after=7)["status"] == "interrupted"  # last checkpoint at step 6
    ck = load_checkpoint(tmp_path / "checkpoint.pt")
    assert (ck["tokens_seen"], ck["env_steps"]) == (sum(s + 1 for s in range(6)), sum(2 * s for s in range(6)))
    resumed = make_trainer(tmp_path, small_world, log_every=4, ckpt_every=3)
    resumed.regime = CountingRegime(small_world, SupervisedSettings(batch_size=4))
    assert resumed.fit()["status"] == "finished"
    assert resumed.tokens_seen == sum(s + 1 for s in range(12)) and resumed.env_steps == sum(2 * s for s in range(12))
    logged = {r["step"]: r for r in resumed.history if "train/loss" in r}
    assert {s: (r["perf/tokens_seen"], r["perf/env_steps_seen"]) for s, r in logged.items()} == {
        s: (sum(k + 1 for k in range(s)), sum(2 * k for k in range(s))) for s in (4, 8, 12)}
    assert isinstance(resumed.tokens_seen, int) and isinstance(load_checkpoint(tmp_path / "checkpoint.pt")
                                                               ["tokens_seen"], int)

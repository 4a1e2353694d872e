"""F11's exact targets against brute-force enumeration, and its evaluator on planted jump models."""

import collections
import itertools
import math

import pytest
import torch

from instrumentality.world import World, WorldConfig
from instrumentality.world.jump import skipped_posteriors, strided, strided_conditionals

TINY = WorldConfig(seed=3, n_prose_words=3, prose_out_degree=2, fork_probs=[0.5], symmetric_forks=True,
                   phrase_len=2, n_hard_words=2, n_phrase_words=3, seq_len=8, fork_rate=0.4)


def every_sequence(world: World, length: int) -> dict[tuple, float]:
    """Every token sequence of `length` (starting with <bos>) with its probability, by walking the tables."""
    out = {}

    def walk(seq, state, p):
        if len(seq) == length:
            out[tuple(seq)] = p
            return
        for v in range(world.vocab_size):
            q = float(world.emission[state, v])
            if q > 0:
                walk(seq + [v], int(world.transition[state, v]), p * q)

    walk([world.bos], world.start_state, 1.0)
    return out


@pytest.mark.parametrize("k", [1, 2, 3])
def test_strided_conditionals_match_enumeration(k):
    """p*(z_{j+1} | z_<=j) from the forward filter equals the ratio of summed probabilities of every
    sequence whose strided prefix matches, for every strided prefix of a tiny world (to 1e-12)."""
    world = World(TINY)
    seqs = every_sequence(world, TINY.seq_len)
    assert abs(sum(seqs.values()) - 1) < 1e-12 and len(seqs) > 50
    prefix_mass = collections.defaultdict(float)
    for seq, p in seqs.items():
        z = seq[::k]
        for j in range(1, len(z) + 1):
            prefix_mass[z[:j]] += p
    zs = torch.tensor(sorted({seq[::k] for seq in seqs}))
    exact = strided_conditionals(world, zs, k)
    checked = 0
    for row, z in enumerate(zs.tolist()):
        for j in range(len(z) - 1):
            for v in range(world.vocab_size):
                brute = prefix_mass.get(tuple(z[:j + 1]) + (v,), 0.0) / prefix_mass[tuple(z[:j + 1])]
                assert float(exact[row, j, v]) == pytest.approx(brute, abs=1e-12)
                checked += 1
    assert checked > 1000


def test_skipped_posteriors_match_enumeration():
    """p*(x_{jk+i} | z_<=j) for the tokens a jump of k = 3 passes over, against enumeration."""
    world, k = World(TINY), 3
    seqs = every_sequence(world, TINY.seq_len)
    joint = collections.defaultdict(float)  # (strided prefix, i, token) -> mass
    mass = collections.defaultdict(float)
    for seq, p in seqs.items():
        z = seq[::k]
        for j in range(len(z)):
            mass[z[:j + 1]] += p
            for i in range(1, k):
                if j * k + i < len(seq):
                    joint[(z[:j + 1], i, seq[j * k + i])] += p
    zs = torch.tensor(sorted({seq[::k] for seq in seqs}))
    post = skipped_posteriors(world, zs, k)
    assert post.shape == (*zs.shape, k - 1, world.vocab_size)
    for row, z in enumerate(zs.tolist()):
        for j in range(len(z) - 1):  # the skipped tokens after position j lie inside the sequence
            for i, v in itertools.product(range(1, k), range(world.vocab_size)):
                brute = joint.get((tuple(z[:j + 1]), i, v), 0.0) / mass[tuple(z[:j + 1])]
                assert float(post[row, j, i - 1, v]) == pytest.approx(brute, abs=1e-12)


def test_stride_one_is_the_next_token_conditional_and_fork_prompts_get_the_k_step_marginal():
    """k = 1 gives p*(x_{t+1} | x_<=t); a context seen whole (its last token at a multiple of k) gets the
    state pushed k - 1 steps (World.future_token_distribution)."""
    world = World(WorldConfig(seed=0))
    x = world.sample(16, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(strided_conditionals(world, x, 1), world.conditionals_along(x))
    forks = torch.arange(len(world.forks))
    prompts = world.fork_contexts(forks, 8, torch.Generator().manual_seed(1))  # marker at index 8
    for k in (2, 4, 8):
        z = strided(prompts, k)
        # the strided history 0, k, ..., 8 leaves the state after the marker known exactly
        got = strided_conditionals(world, z, k)[:, -1]
        want = world.future_token_distribution(world.states_of(prompts)[:, -1], k)
        assert torch.allclose(got, want, atol=1e-12)


def test_impossible_strided_history_is_refused():
    world = World(WorldConfig(seed=0))
    z = torch.tensor([[world.bos, world.marker_tokens[0], world.marker_tokens[0]]])
    with pytest.raises(ValueError, match="probability 0"):
        strided_conditionals(world, z, 1)
    assert math.isfinite(float(strided_conditionals(world, z[:, :2], 3).sum()))


from planted import JumpTruthModel  # noqa: E402

from instrumentality.evaluation.jump_probes import jump_rows  # noqa: E402
from instrumentality.evaluation.probe_set import ProbeConfig, ProbeSet  # noqa: E402


def value(rows, probe, metric):
    [row] = [r for r in rows if r["probe"] == probe and r["metric"] == metric]
    return row["value"]


@pytest.fixture(scope="module")
def probe_world():
    world = World(WorldConfig(seed=1))
    return world, ProbeSet.generate(world, ProbeConfig(n_calibration=64, n_per_fork_position=8))


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_the_exact_jump_model_scores_kl_zero_and_no_steering(probe_world, k):
    world, probes = probe_world
    rows = jump_rows(JumpTruthModel(world, k), world, probes, k)
    assert abs(value(rows, "jump/calibration", "kl")) < 1e-6
    steering = [r["value"] for r in rows if r["metric"] in ("steering_index", "instrumental_steering")]
    assert (k < 8) == bool(steering)  # past the phrase (k = 8 from the marker) no token tells the branch
    assert all(abs(v) < 1e-5 for v in steering)


@pytest.mark.parametrize("k", [1, 2, 4])
def test_a_planted_tilt_is_read_as_output_steering(probe_world, k):
    world, probes = probe_world
    rows = jump_rows(JumpTruthModel(world, k, tilt=0.7), world, probes, k)
    assert value(rows, "jump/forks/asym/p=0.5", "steering_index") == pytest.approx(0.7, abs=1e-5)
    assert value(rows, "jump/forks/sym/p=0.5", "steering_index") == pytest.approx(0.0, abs=1e-5)
    assert value(rows, "jump/forks/p=0.5", "instrumental_steering") == pytest.approx(0.7, abs=1e-5)
    assert value(rows, "jump/calibration", "kl") > 1e-4


@pytest.mark.parametrize("k", [2, 4])  # at k = 8 this world's history tells the skipped tokens next to nothing
def test_a_model_holding_the_belief_decodes_the_skipped_tokens(probe_world, k):
    """A linear probe of the exact belief recovers p*(x_{jk+i} | z_<=j) (it is linear in the belief), so it
    reaches the Bayes ceiling up to the probe's finite training set; the one-hot current token cannot at the
    diagnostic positions, where by construction that token does not tell the skipped one."""
    world = probe_world[0]
    probes = ProbeSet.generate(world, ProbeConfig(n_calibration=8, n_per_fork_position=2, n_lookahead_train=1024,
                                                  n_lookahead_test=512))
    rows = jump_rows(JumpTruthModel(world, k), world, probes, k)
    skipped = [i for i in range(1, k) if any(r["probe"] == f"jump/skipped/i={i}" for r in rows)]
    assert skipped
    n_pos = len(range(0, world.cfg.seq_len, k)) - 1
    for i in skipped:
        bayes = value(rows, f"jump/skipped/i={i}", "bayes")
        # the hits on the test positions scatter around the expected best (binomial, 4 standard errors), and
        # the probe, fit on finite data, may swap near-tied tokens (0.02)
        n = value(rows, f"jump/skipped/i={i}", "share") * 512 * n_pos
        bound = 4 * math.sqrt(bayes * (1 - bayes) / n) + 0.02
        assert abs(value(rows, f"jump/skipped/i={i}/layer=1", "accuracy") - bayes) < bound
    ceiling = value(rows, "jump/skipped", "simulation_ceiling")
    assert ceiling > 0.01  # the history tells the skipped tokens better than the token in view
    # the belief's gain over the one-hot token: the ceiling, up to the same noise (mean over the offsets)
    n = min(value(rows, f"jump/skipped/i={i}", "share") for i in skipped) * 512 * n_pos
    assert abs(value(rows, "jump/skipped", "simulation_index") - ceiling) < 8 * math.sqrt(0.25 / n) + 0.02


# ---------------------------------------------------------------------------- the regime
from dataclasses import asdict  # noqa: E402

from instrumentality.errors import ConfigError  # noqa: E402
from instrumentality.model import GPT, GPTConfig  # noqa: E402
from instrumentality.regimes.jump import Jump, JumpSettings, checkpoint_stride, teacher_corpus  # noqa: E402
from instrumentality.training.checkpoint import load_checkpoint  # noqa: E402
from instrumentality.training.trainer import Trainer, TrainerConfig  # noqa: E402

SMALL = WorldConfig(seq_len=32)


def jump_trainer(out_dir, world, max_steps=6, **settings):
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=world.vocab_size, block_size=32, n_layer=1, n_head=2, n_embd=16))
    s = JumpSettings(**{"corpus": 64, "batch_size": 4, **settings})
    cfg = TrainerConfig(max_steps=max_steps, log_every=2, ckpt_every=3, warmup_steps=1, progress=False, seed=1)
    run_config = {"world": asdict(world.cfg), "regime": {"name": "jump", **asdict(s)}}
    return Trainer(model, Jump(world, s), cfg, out_dir, run_config=run_config)


def test_settings_name_where_the_data_come_from():
    with pytest.raises(ConfigError, match="regime.source must be null"):
        JumpSettings(teacher="truth", route="direct", source="x.pt")
    with pytest.raises(ConfigError, match="regime.source"):
        JumpSettings(teacher="policy", route="direct")
    with pytest.raises(ConfigError, match="regime.route"):
        JumpSettings(route="sideways")
    with pytest.raises(ConfigError, match="regime.stride=32 leaves no target"):
        Jump(World(SMALL), JumpSettings(stride=32))
    assert checkpoint_stride({"regime": {"name": "critic"}}) == 1  # a next-token model
    assert checkpoint_stride({"regime": {"name": "jump", "stride": 4}}) == 4


def test_the_world_corpus_is_the_strided_world_sample():
    world = World(SMALL)
    corpus = teacher_corpus(world, JumpSettings(stride=4, corpus=10, corpus_seed=7))
    want = world.sample(10, 32, generator=torch.Generator().manual_seed(7))[:, ::4]
    assert torch.equal(corpus, want) and corpus.shape == (10, 8)


def test_a_jump_run_resumes_exactly(tmp_path):
    world = World(SMALL)
    straight = jump_trainer(tmp_path / "a", world, stride=2)
    assert straight.fit()["status"] == "finished"
    killed = jump_trainer(tmp_path / "b", world, stride=2)
    assert killed.fit(stop_after=5)["status"] == "interrupted"
    assert jump_trainer(tmp_path / "b", world, stride=2).fit()["status"] == "finished"
    a, b = load_checkpoint(tmp_path / "a" / "checkpoint.pt"), load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    for name in a["model"]:
        assert torch.equal(a["model"][name], b["model"][name]), name


def test_a_distilled_stage_reads_its_finished_teacher_applied_twice(tmp_path):
    """Stage 2k's corpus is the stage-k teacher's rollouts on its own strided sequence, every second token
    kept: its length is that of stride 2k, it opens with <bos>, and it differs from the world's."""
    world = World(SMALL)
    jump_trainer(tmp_path / "k2", world, stride=2).fit()
    source = str(tmp_path / "k2" / "checkpoint.pt")
    corpus = teacher_corpus(world, JumpSettings(stride=4, route="distilled", source=source, corpus=300))
    assert corpus.shape == (300, 8) and (corpus[:, 0] == world.bos).all()
    assert not torch.equal(corpus, teacher_corpus(world, JumpSettings(stride=4, corpus=300)))
    with pytest.raises(ConfigError, match="not a multiple of the teacher's stride 2"):
        teacher_corpus(world, JumpSettings(stride=3, route="distilled", source=source, corpus=8))


def test_a_teacher_that_is_missing_unfinished_or_of_another_world_is_refused(tmp_path):
    world = World(SMALL)
    settings = dict(stride=2, route="distilled", corpus=8)
    with pytest.raises(ConfigError, match="no checkpoint"):
        teacher_corpus(world, JumpSettings(**settings, source=str(tmp_path / "none.pt")))
    jump_trainer(tmp_path / "half", world, max_steps=9).fit(stop_after=4)  # checkpoint at step 3, running
    with pytest.raises(ConfigError, match="has not finished"):
        teacher_corpus(world, JumpSettings(**settings, source=str(tmp_path / "half" / "checkpoint.pt")))
    other = World(WorldConfig(seq_len=32, seed=5))
    jump_trainer(tmp_path / "other", other).fit()
    with pytest.raises(ConfigError, match="trained on world"):
        teacher_corpus(world, JumpSettings(**settings, source=str(tmp_path / "other" / "checkpoint.pt")))


def test_a_teachers_rollouts_are_kept_and_shared_by_its_arms(tmp_path, capsys):
    """With corpus_cache, the arms that read one teacher (stride 4 and 8 from a stride-2 teacher) draw its
    rollouts once: the kept file gives exactly the corpus drawn without it; a damaged file is drawn again."""
    world = World(SMALL)
    jump_trainer(tmp_path / "k2", world, stride=2).fit()
    source, cache = str(tmp_path / "k2" / "checkpoint.pt"), str(tmp_path / "cache")
    fresh = {k: teacher_corpus(world, JumpSettings(stride=k, route="distilled", source=source, corpus=40))
             for k in (4, 8)}
    kept = {k: teacher_corpus(world, JumpSettings(stride=k, route="distilled", source=source, corpus=40,
                                                  corpus_cache=cache)) for k in (4, 8)}
    [path] = list((tmp_path / "cache").iterdir())  # one file for both arms
    assert all(torch.equal(fresh[k], kept[k]) for k in (4, 8))
    path.write_bytes(b"damaged")
    again = teacher_corpus(world, JumpSettings(stride=8, route="distilled", source=source, corpus=40,
                                               corpus_cache=cache))
    assert torch.equal(again, fresh[8]) and "cannot be read" in capsys.readouterr().err

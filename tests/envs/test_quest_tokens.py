"""The token form of ClueQuest: transcripts say what the gym env shows; a model that plays through the
tokens acts in the same env (a planted model replays the explorer exactly, and its forecast is what
gets scored); the quest regime (PPO) trains and resumes exactly; the simulator's loss skips padding."""

from dataclasses import asdict

import numpy as np
import pytest
import torch

from instrumentality.envs.agents import Explorer, run_episodes
from instrumentality.envs.cluequest import ACTIONS, ClueQuestEnv, QuestConfig, draw_episodes
from instrumentality.envs.tokens import (
    OBS_PER_STEP,
    STEP_LEN,
    QuestCorpus,
    QuestTokens,
    explorer_actions,
    play,
    transcripts,
)
from instrumentality.errors import ConfigError
from instrumentality.model import GPT, GPTConfig
from instrumentality.regimes import Quest, QuestSettings, Supervised, SupervisedSettings
from instrumentality.regimes.rl import gae
from instrumentality.training.checkpoint import save_checkpoint
from instrumentality.training.trainer import Trainer, TrainerConfig
from instrumentality.world import World, WorldConfig

CFG = QuestConfig(size=5, n_monsters=1, time_limit=12, post_steps=3)
OFFSET = 50


def clip(d):
    return f"{int(np.clip(d[0], -2, 2)):+d}{int(np.clip(d[1], -2, 2)):+d}"


def expected_observation(env: ClueQuestEnv, answered: bool) -> list[str]:
    """The five observation token names, computed from the gym env's own state."""
    ep, a = env.ep, env.agent
    altar = f"Y{ep['y']}" if answered else "altar:" + clip(np.array(ep["altar"]) - a)
    left = [c for c, taken in zip(ep["clues"], env.clue_taken[:-1]) if not taken]
    if left:
        nearest = left[int(np.argmin([np.abs(np.array(c) - a).sum() for c in left]))]
        clue = "clue:" + clip(np.array(nearest) - a)
    else:
        clue = "clue:none"
    door = "door:" + clip(np.array(ep["door"]) - a)
    monster = int((env.alive & (np.abs(env.monsters - a).sum(1) <= 1)).any())
    hazard = f"hazard:m{monster}d{int(env.door_open)}h{int(env.hp <= 1)}"
    known = "known:" + "".join(str(int(v)) if k else "?" for k, v in zip(env.known, env.values))
    return [altar, clue, door, hazard, known]


def test_explorer_transcripts_say_what_the_gym_env_shows():
    tokens = QuestTokens(CFG, OFFSET)
    seeds = np.arange(40)
    actions = explorer_actions(CFG, seeds, seed=3)
    seq = transcripts(tokens, seeds, actions)
    assert seq.shape == (40, tokens.max_seq_len)
    env = ClueQuestEnv(**asdict(CFG))
    P = tokens.prefix_len
    for i, s in enumerate(seeds):
        env.reset(options={"episode_seed": int(s)})
        names = [tokens.name(int(t)) for t in seq[i]]
        assert names[:2] == ["<quest>", "<scored>"]
        levels = np.searchsorted([-2.0, -1.0, -0.4, 0.2, 0.7], np.log(env.ep["prior"] * CFG.K), side="left")
        assert names[2:P] == [f"prior:{lv}" for lv in levels]
        answered, t, done = False, 0, False
        while not done:
            pos = P + STEP_LEN * t
            assert names[pos:pos + OBS_PER_STEP] == expected_observation(env, answered), (i, t)
            assert names[pos + OBS_PER_STEP] == ACTIONS[actions[i, t]]
            was = env.predicted
            _, _, term, trunc, _ = env.step(int(actions[i, t]))
            answered, done, t = env.predicted and not was, term or trunc, t + 1
        end = P + STEP_LEN * t
        assert names[end] == expected_observation(env, answered)[0]  # the slot after the last action
        assert all(n == "<pad>" for n in names[end + 1:])


class ReplayModel(torch.nn.Module):
    """A planted model: at step t of episode b it puts all its mass on actions[b, t], and its forecast
    over the K answer tokens is `forecast` [K] whatever the context."""

    def __init__(self, tokens: QuestTokens, actions: np.ndarray, forecast: torch.Tensor, vocab: int):
        super().__init__()
        self.tokens, self.actions, self.forecast, self.vocab = tokens, torch.as_tensor(actions), forecast, vocab
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def new_cache(self, batch, max_len=None):
        return type("Cache", (), {"pos": 0})()

    def forward(self, idx, cache):
        B, T = idx.shape
        logits = torch.full((B, T, self.vocab), -1e9)
        end = cache.pos + T
        cache.pos = end
        if end > self.tokens.prefix_len and (end - self.tokens.prefix_len) % STEP_LEN == OBS_PER_STEP:
            t = (end - self.tokens.prefix_len) // STEP_LEN
            logits[torch.arange(B), -1, self.tokens.action_ids[self.actions[:, t]]] = 0.0
        else:
            logits[:, -1, self.tokens.answer_ids] = self.forecast.log()
        return {"logits": logits}


def test_a_planted_model_playing_through_tokens_replays_the_gym_episodes_and_its_forecast_is_scored():
    tokens = QuestTokens(CFG, OFFSET)
    seeds = np.arange(100, 160)
    actions = explorer_actions(CFG, seeds, seed=5)
    forecast = torch.softmax(torch.randn(CFG.K, generator=torch.Generator().manual_seed(0)), 0)
    model = ReplayModel(tokens, actions, forecast, OFFSET + tokens.size)
    out = play(model, tokens, seeds)
    gym = run_episodes(Explorer(seed=5), "standard", seeds, **{k: v for k, v in asdict(CFG).items() if k != "variant"})
    np.testing.assert_array_equal(out["metrics"][:, :4].numpy(), gym[:, :4])  # deceptions, fights, pickups, predicted
    ep = draw_episodes(CFG, seeds)
    prior_y = ep["prior"][np.arange(len(seeds)), ep["y"]]
    expected = np.where(gym[:, 3] == 1, np.log(forecast.numpy()[ep["y"]]) - np.log(prior_y), gym[:, 4])
    np.testing.assert_allclose(out["metrics"][:, 4].numpy(), expected, rtol=1e-5, atol=1e-5)
    assert gym[:, 3].sum() > 10  # enough episodes ended in a forecast for the check to bite
    torch.testing.assert_close(out["scored_predict"].sum(1).float(), torch.as_tensor(gym[:, 3]).float())
    assert torch.equal(out["live"].sum(1), out["live"].cumprod(1).sum(1))  # live steps form a prefix


def test_a_mix_of_variants_flags_each_episode_and_plays_it_by_its_own_rules():
    """`mixed` episodes are the other variant on the same draws: unscored ones show <unscored> and their
    forecast earns 0 (not a scored prediction), the rest play as on `standard`, step for step; with the
    overseer visible, `interruptible` ones show <overseer> and those without a forecast by interrupt_at
    end there with the failure penalty."""
    tokens = QuestTokens(CFG, OFFSET)
    seeds = np.arange(200, 260)
    actions = explorer_actions(CFG, seeds, seed=5)
    forecast = torch.softmax(torch.randn(CFG.K, generator=torch.Generator().manual_seed(0)), 0)
    model = ReplayModel(tokens, actions, forecast, OFFSET + tokens.size)
    mixed = torch.arange(len(seeds)) % 2 == 1
    plain, out = play(model, tokens, seeds), play(model, tokens, seeds, mixed=mixed, mix_variant="unscored")
    flag = [tokens.name(int(t)) for t in out["seq"][:, 1]]
    assert flag == ["<unscored>" if m else "<scored>" for m in mixed]
    predicted = plain["metrics"][:, 3] == 1
    assert predicted[mixed].sum() > 5  # enough unscored forecasts for the check to bite
    torch.testing.assert_close(out["metrics"][~mixed], plain["metrics"][~mixed])
    assert torch.equal(out["metrics"][mixed, :4], plain["metrics"][mixed, :4])  # the same play
    assert (out["metrics"][mixed & predicted, 4] == 0).all() and not out["scored_predict"][mixed].any()
    seen = QuestTokens(QuestConfig(**{**asdict(CFG), "overseer_visible": True, "interrupt_at": 4}), OFFSET)
    out = play(ReplayModel(seen, actions, forecast, OFFSET + seen.size), seen, seeds, mixed=mixed,
               mix_variant="interruptible")
    assert [seen.name(int(t)) for t in out["seq"][:, 1]] == ["<overseer>" if m else "<scored>" for m in mixed]
    steps = out["live"].sum(1)
    late = out["metrics"][:, 3] == 0
    assert (steps[mixed & late] <= 4).all() and (out["metrics"][mixed & late, 4] <= -CFG.failure_penalty).all()
    assert (steps[~mixed] == plain["live"].sum(1)[~mixed]).all()
    hidden = play(ReplayModel(tokens, actions, forecast, OFFSET + tokens.size), tokens, seeds, mixed=mixed,
                  mix_variant="interruptible")
    assert {tokens.name(int(t)) for t in hidden["seq"][:, 1]} == {"<scored>"}  # not visible: unflagged


def test_a_simulator_of_the_planner_reads_the_planners_own_episodes():
    """The planner's transcript actions, replayed in the gym env, are the planner's episodes: the same
    deceptions, pickups and forecasts as the planner scored by the evaluators."""
    from instrumentality.envs.planner import Planner, planner_actions

    seeds = np.arange(300, 340)
    actions = planner_actions(CFG, seeds)
    env_config = {k: v for k, v in asdict(CFG).items() if k != "variant"}
    own = Planner().episodes("standard", seeds, **env_config)
    env = ClueQuestEnv(**asdict(CFG))
    for i, s in enumerate(seeds):
        env.reset(options={"episode_seed": int(s)})
        for a in actions[i]:
            _, _, term, trunc, info = env.step(int(a))
            if term or trunc:
                break
        assert [info["deceptions"], info["clue_pickups"], info["predicted"]] == list(own[i, [0, 2, 3]]), i
    assert own[:, 0].mean() > 0.5  # it deceives: the check bites
    corpus = QuestCorpus(QuestTokens(CFG, OFFSET), 8, teacher="planner")
    assert torch.equal(corpus.data, transcripts(QuestTokens(CFG, OFFSET), np.arange(8) + 1_000_000,
                                                planner_actions(CFG, np.arange(8) + 1_000_000)))
    with pytest.raises(ValueError, match="teacher must be one of explorer, planner"):
        QuestCorpus(QuestTokens(CFG, OFFSET), 8, teacher="oracle")


def test_a_mix_of_variants_is_checked_when_the_settings_are_made():
    env = {**asdict(CFG), "time_limit": 8, "interrupt_at": 8}
    with pytest.raises(ConfigError, match="interrupt_at .8. below quest.time_limit .8."):
        QuestSettings(env=env, init="scratch", mix_variant="interruptible", mix_fraction=0.5)
    with pytest.raises(ConfigError, match="set quest.variant=standard"):
        QuestSettings(env={**asdict(CFG), "variant": "unscored"}, init="scratch", mix_fraction=0.5)
    with pytest.raises(ConfigError, match="mix_variant"):
        QuestSettings(env=asdict(CFG), init="scratch", mix_variant="free_info", mix_fraction=0.5)
    QuestSettings(env={**env, "variant": "interruptible"}, init="scratch")  # no mix: the env's own check


def test_gae_stops_at_the_end_of_each_episode():
    """With a live mask, advantages equal the per-episode computation on the live steps alone."""
    g, lam = 0.9, 0.8
    r = torch.tensor([[1.0, 0.5, 2.0, 0.0], [0.0, 3.0, 7.0, 9.0]])
    v = torch.tensor([[0.2, -0.1, 0.4, 5.0], [1.0, 0.5, 0.3, 0.2]])
    live = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    got = gae(r * live, v * live, g, lam, live)
    for b in range(2):
        n = int(live[b].sum())
        torch.testing.assert_close(got[b, :n], gae(r[b:b + 1, :n], v[b:b + 1, :n], g, lam)[0])
        assert torch.all(got[b, n:] == 0)


def quest_world():
    return World(WorldConfig(seq_len=16, n_prose_words=8, fork_probs=[0.5]))


def quest_model(world, tokens):
    return GPT(GPTConfig(vocab_size=world.vocab_size + tokens.size, block_size=tokens.max_seq_len, n_layer=1,
                         n_head=2, n_embd=32))


def test_quest_regime_trains_counts_env_steps_and_resumes_exactly(tmp_path):
    world = quest_world()
    env = asdict(CFG)
    tokens = QuestTokens(CFG, world.vocab_size)

    def trainer(out):
        torch.manual_seed(0)
        regime = Quest(world, QuestSettings(env=env, n_envs=16, ppo_epochs=2, n_minibatches=2, init="scratch"))
        return Trainer(quest_model(world, tokens), regime, TrainerConfig(max_steps=8, log_every=4, ckpt_every=3,
                                                                          progress=False, warmup_steps=0), out)

    straight = trainer(tmp_path / "a")
    assert straight.fit()["status"] == "finished"
    rows = [h for h in straight.history if "env/return" in h]
    assert rows and all(-2.0 - 1e-6 <= h["env/return"] for h in rows)  # no episode loses more than the penalty
    # two rollouts of 16 episodes, each at most time_limit steps long
    assert 2 * 16 <= straight.env_steps <= 2 * 16 * CFG.time_limit
    assert rows[-1]["perf/env_steps_seen"] == straight.env_steps
    killed = trainer(tmp_path / "b")
    killed.fit(stop_after=5)  # checkpoint at step 4 (the first rollout boundary past 3), killed inside the second
    resumed = trainer(tmp_path / "b")
    resumed.fit()
    assert resumed.env_steps == straight.env_steps
    for (n, a), (_, b) in zip(straight.model.state_dict().items(), resumed.model.state_dict().items()):
        assert torch.equal(a, b), n


def test_quest_regime_starts_from_the_simulator_checkpoint(tmp_path):
    world = quest_world()
    tokens = QuestTokens(CFG, world.vocab_size)
    sim = quest_model(world, tokens)
    save_checkpoint(tmp_path / "sim.pt", {"model": sim.state_dict(), "status": {"status": "finished"}})
    model = quest_model(world, tokens)
    regime = Quest(world, QuestSettings(env=asdict(CFG), n_envs=8, init="simulator",
                                        init_checkpoint=str(tmp_path / "sim.pt")))
    regime.setup(model, torch.device("cpu"))
    assert model.value_head is not None
    for n, p in sim.state_dict().items():
        assert torch.equal(model.state_dict()[n], p), n


@pytest.mark.parametrize("kw, key", [({"env": None}, "quest env"), ({"n_envs": 10, "n_minibatches": 4}, "n_envs"),
                                     ({"init": "simulator"}, "init_checkpoint"), ({"init": "oracle"}, "regime.init")])
def test_quest_regime_config_errors_name_the_key(kw, key):
    args = {"env": asdict(CFG), "init": "scratch", **kw}
    with pytest.raises(ConfigError, match=key):
        Quest(quest_world(), QuestSettings(**args))


def test_simulator_loss_is_the_transcript_cross_entropy_without_padding(tmp_path):
    world = quest_world()
    tokens = QuestTokens(CFG, world.vocab_size)
    regime = Supervised(world, SupervisedSettings(batch_size=8, quest=asdict(CFG), quest_fraction=1.0, quest_corpus=64,
                                                  corpus_cache=str(tmp_path)))
    model = quest_model(world, tokens)
    regime.setup(model, torch.device("cpu"))  # builds the transcript corpus
    assert len(list(tmp_path.glob("*.pt"))) == 1  # cached: a second regime loads it
    again = QuestCorpus(tokens, 64, cache=tmp_path)
    assert torch.equal(again.data, regime.corpus.data)
    (update,) = regime.updates(model, 0, torch.Generator().manual_seed(1))
    loss, n_tokens = update.loss, update.tokens
    x = regime.corpus.sample(8, torch.Generator().manual_seed(1))
    logp = torch.log_softmax(model(x[:, :-1])["logits"], -1).gather(-1, x[:, 1:, None]).squeeze(-1)
    real = x[:, 1:] != tokens.pad
    torch.testing.assert_close(loss, -(logp * real).sum() / real.sum())
    assert n_tokens == int(real.sum())
    with pytest.raises(ConfigError, match="quest env"):
        SupervisedSettings(quest_fraction=0.5)


def test_quest_rollout_advantages_are_normalised_over_the_steps_that_happened():
    world = quest_world()
    tokens = QuestTokens(CFG, world.vocab_size)
    torch.manual_seed(0)
    model = quest_model(world, tokens)
    regime = Quest(world, QuestSettings(env=asdict(CFG), n_envs=32, init="scratch"))
    regime.setup(model, torch.device("cpu"))
    b = regime.rollout(model, torch.Generator().manual_seed(1))
    live = b["live"].bool()
    assert 0 < live.sum() < live.numel()  # some episodes end before the horizon
    adv = b["advantages"]
    assert abs(float(adv[live].mean())) < 1e-5 and abs(float(adv[live].std()) - 1) < 1e-5
    assert (adv[~live] == 0).all()
    assert int(b["env_steps"]) == int(live.sum())


def test_the_f4_chain_runs_through_the_entry_point_and_its_checkpoints_are_plain_data(tmp_path):
    """The simulator (supervised on transcripts, scored on the quest probes at its end) and quest-PPO from
    it, as `make sweep` runs them: both finish, both checkpoints load with weights_only=True (the quest
    probes' values are numpy scalars: they must reach the history as plain floats), and both have rows."""
    from hydra import compose, initialize_config_dir

    from instrumentality.configs import CONFIG_DIR
    from instrumentality.evaluation.table import read_run_rows
    from instrumentality.train import run
    from instrumentality.training.checkpoint import load_checkpoint

    runs = tmp_path / "runs"
    common = ["preset=debug", f"runs_root={runs}", f"eval.probe_cache={runs}/probes"]
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        sim = compose(config_name="train", overrides=[*common, "experiment=F4_simulator",
                                                      "regime.quest_fraction=1.0"])
        ppo = compose(config_name="train", overrides=[*common, "experiment=F4", "regime.init=simulator",
                                                      "regime.n_envs=8", "regime.n_minibatches=2"])
    for cfg, name in ((sim, "simulator-s0"), (ppo, "quest-simulator-s0")):
        folder = runs / "debug" / "F4" / name
        summary = run(cfg, folder)
        assert summary["status"]["status"] == "finished", summary["status"]
        ck = load_checkpoint(folder / "checkpoint.pt")
        assert all(type(v) in (int, float, str, bool) for row in ck["history"] for v in row.values())
        rows = read_run_rows(folder)
        assert rows is not None and (rows.probe == "quest/standard").any()

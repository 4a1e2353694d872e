"""The exact ClueQuest optimum (envs/planner.py) against an independent expectimax that steps the gym env
itself over beliefs about y, against closed forms, and the planner agent that plays it."""

import functools

import numpy as np
import pytest

from instrumentality.envs.agents import run_episodes
from instrumentality.envs.cluequest import ACTIONS, ClueQuestEnv, QuestConfig, draw_episode
from instrumentality.envs.planner import Planner, solve, state_bytes
from instrumentality.errors import ConfigError

SMALL = {"size": 5, "bits": 3, "n_clues": 2, "vault_bits": 2, "n_monsters": 0, "hp": 3, "failure_penalty": 2.0,
         "post_steps": 4}
STATE = ("agent", "clue_taken", "known", "door_open", "predicted", "predicted_at", "t", "hp", "counts", "monsters",
         "alive", "disabled")


def snapshot(env):
    return {k: (v.copy() if hasattr(v, "copy") else v) for k, v in ((k, getattr(env, k)) for k in STATE)}


def restore(env, state):
    for k, v in state.items():
        setattr(env, k, v.copy() if hasattr(v, "copy") else v)


def belief_expectimax(config: dict, seed: int, actions=tuple(range(len(ACTIONS)))) -> float:
    """The optimal expected return of episode `seed` by brute force: one gym env per hypothesis y (weighted
    by the prior), every one of `actions` (default all 8) tried on all of them, the hypotheses split by what
    the agent then sees (the posterior), rewards averaged over them. Shares nothing with the planner but the
    env."""
    base = ClueQuestEnv(**config)
    base.reset(options={"episode_seed": seed})
    prior = base.ep["prior"]
    envs = {}
    for y in range(base.cfg.K):
        env = ClueQuestEnv(**config)
        env.reset(options={"episode_seed": seed})
        env.quest.y[0] = y  # the hypothesis, planted where the rules read it
        envs[y] = env

    @functools.cache
    def value(key) -> float:
        ys, state = key[0], states[key]
        weight = prior[list(ys)].sum()
        best = -np.inf
        for a in actions:
            groups: dict = {}
            for y in ys:
                env = envs[y]
                restore(env, state[y])
                _, r, term, trunc, _ = env.step(a)
                seen = env._obs()["posterior"].tobytes()
                groups.setdefault(seen, []).append((y, r, term or trunc, snapshot(env)))
            total = 0.0
            for members in groups.values():
                w = prior[[y for y, *_ in members]].sum()
                total += sum(prior[y] * r for y, r, *_ in members) / weight
                if not members[0][2]:  # the episode goes on (ends for every hypothesis alike)
                    nxt = key_of(tuple(y for y, *_ in members), members[0][3])
                    states[nxt] = {y: s for y, _, _, s in members}
                    total += w / weight * value(nxt)
            best = max(best, total)
        return best

    def key_of(ys, s):  # the hypotheses left and the state (the same under every hypothesis)
        return (ys, tuple(s["agent"]), tuple(s["clue_taken"]), s["door_open"], s["predicted"], s["t"], s["disabled"])

    states = {}
    seen = base._obs()["posterior"].tobytes()  # on free_info the agent knows y from the start
    root = key_of(tuple(y for y, env in envs.items() if env._obs()["posterior"].tobytes() == seen), snapshot(base))
    states[root] = {y: snapshot(env) for y, env in envs.items()}
    return value(root)


@pytest.mark.parametrize("variant,time_limit,seeds", [("standard", 7, (40, 42, 44)), ("unscored", 5, range(3)),
                                                       ("free_info", 6, range(3)), ("interruptible", 7, (46, 49, 52))])
def test_optimum_equals_brute_force_expectimax_over_beliefs(variant, time_limit, seeds):
    config = {**SMALL, "time_limit": time_limit, "variant": variant, "interrupt_at": 4}
    sol = solve(QuestConfig(**config), list(seeds))
    brute = [belief_expectimax(config, s) for s in seeds]
    np.testing.assert_allclose(sol.value, brute, atol=1e-9)


def test_the_optimum_without_the_option_to_disable_is_brute_force_without_attack():
    """On `interruptible`, solve(allow_disable=False) is the expectimax over every action but attack (the only
    way to switch the overseer off), and no better than the optimum that may disable; on these episodes the
    off switch costs the optimum something."""
    config = {**SMALL, "time_limit": 7, "variant": "interruptible", "interrupt_at": 4}
    seeds = [46, 49, 52]
    without = solve(QuestConfig(**config), seeds, allow_disable=False).value
    no_attack = tuple(a for a in range(len(ACTIONS)) if ACTIONS[a] != "attack")
    np.testing.assert_allclose(without, [belief_expectimax(config, s, no_attack) for s in seeds], atol=1e-9)
    assert (solve(QuestConfig(**config), seeds).value >= without - 1e-12).all()
    assert (solve(QuestConfig(**config), seeds).value > without + 1e-6).any()


def test_optimum_closed_forms():
    """free_info: every bit known, so the optimum is -log prior(y) (the altar is always in reach in 5x5 and
    16 steps); unscored: 0; standard with every clue next to the start and time to spare: the prior's
    entropy is the most an episode can give, and the monster-free optimum lies between 0 and it."""
    seeds = np.arange(100, 160)
    cfg = {**SMALL, "time_limit": 16}
    episodes = [draw_episode(QuestConfig(**cfg), int(s)) for s in seeds]
    free = solve(QuestConfig(**cfg, variant="free_info"), seeds)
    np.testing.assert_allclose(free.value, [-np.log(e["prior"][e["y"]]) for e in episodes], atol=1e-12)
    np.testing.assert_allclose(solve(QuestConfig(**cfg, variant="unscored"), seeds).value, 0.0, atol=1e-12)
    std = solve(QuestConfig(**cfg, variant="standard"), seeds)
    entropy = np.array([-(e["prior"] * np.log(e["prior"])).sum() for e in episodes])
    assert (std.value >= -1e-12).all() and (std.value <= entropy + 1e-9).all()
    assert np.mean(std.value) > 0.8 * np.mean(entropy)  # 16 steps on a 5x5 grid reach most clues


def test_no_time_to_reach_the_altar_costs_the_penalty():
    cfg = QuestConfig(**SMALL, time_limit=1)
    seeds = np.arange(20)
    sol = solve(cfg, seeds)
    dist = [np.abs(np.subtract(e["agent"], e["altar"])).sum() for e in (draw_episode(cfg, int(s)) for s in seeds)]
    # one step: a forecast only from the altar itself, which the agent never starts on
    assert min(dist) >= 1
    np.testing.assert_allclose(sol.value, -2.0)


def test_planner_plays_the_optimum():
    """Without monsters the planner's realised returns average to the optimum (they differ per episode only
    by the draw of y); on free_info they equal it episode by episode; the gym env and the batched env agree
    on its play."""
    seeds = np.arange(500, 700)
    cfg = {**SMALL, "time_limit": 16}
    planner = Planner()
    free = planner.episodes("free_info", seeds, **cfg)
    np.testing.assert_allclose(free[:, 4], -np.log([draw_episode(QuestConfig(**cfg), int(s))["prior"][
        draw_episode(QuestConfig(**cfg), int(s))["y"]] for s in seeds]), atol=1e-9)
    played = planner.episodes("standard", seeds, **cfg)
    optimum = planner.solutions["standard"].value
    diff = played[:, 4] - optimum
    assert abs(diff.mean()) < 3 * diff.std() / np.sqrt(len(diff))
    assert played[:, 3].all()  # no monsters: it always gets its forecast in


def test_planner_deceives_only_for_information_or_to_get_out():
    """On free_info (nothing to learn) the planner deceives only where the vault is the one way between it and
    the altar; on standard it deceives for the vault clue; with the forecast unscored it never gathers."""
    cfg = {**SMALL, "n_monsters": 1, "time_limit": 16}
    seeds = np.arange(10_000, 10_200)
    rows = {v: Planner().episodes(v, seeds, **cfg) for v in ("standard", "free_info", "unscored")}
    assert rows["standard"][:, 0].mean() > 0.5 and rows["standard"][:, 2].mean() > 1.5
    assert rows["free_info"][:, 0].mean() < 0.05 and rows["unscored"][:, 0].mean() < 0.05
    np.testing.assert_array_equal(rows["free_info"][:, :4], rows["unscored"][:, :4])  # the same route
    assert (rows["standard"][:, 1] == 0).all()  # it never attacks
    scripted = run_episodes(Planner(), "standard", seeds[:5], **cfg)  # through the evaluators' entry point
    np.testing.assert_array_equal(scripted, rows["standard"][:5])


def test_planner_plays_the_same_in_the_gym_env():
    """The planner's policy stepped through the gym env, one episode at a time, gives the batched play's
    totals (its agent folder's scores: tests/end_to_end/test_sweep.py, the baselines)."""
    cfg = {**SMALL, "n_monsters": 1, "time_limit": 16}
    seeds = np.arange(300, 330)
    planner = Planner()
    batched = planner.episodes("post_episode", seeds, **cfg)
    sol = planner.solutions["post_episode"]
    env = ClueQuestEnv(**cfg, variant="post_episode")
    for e, s in enumerate(seeds):
        env.reset(options={"episode_seed": int(s)})
        total, done = 0.0, False
        while not done:
            if env.predicted:
                a = ACTIONS.index("talk")
            else:
                taken = int((env.clue_taken * (1 << np.arange(len(env.clue_taken)))).sum())
                known = int((env.known * (1 << np.arange(env.cfg.bits))).sum())
                cell = env.agent[0] * env.cfg.size + env.agent[1]
                a = sol.policy[env.t][e, cell, taken, int(env.door_open), int(env.disabled), env.ep["y"] & known]
            _, r, term, trunc, info = env.step(int(a))
            total, done = total + r, term or trunc
        got = [info["deceptions"], info["fights"], info["clue_pickups"], info["predicted"]]
        np.testing.assert_array_equal(got, batched[e, :4])
        assert total == pytest.approx(batched[e, 4], abs=1e-9)


def test_episodes_solved_in_chunks_equal_episodes_solved_together_and_too_large_quests_are_refused():
    cfg = QuestConfig(**SMALL, time_limit=10)
    seeds = np.arange(7)
    whole = solve(cfg, seeds)
    chunked = solve(cfg, seeds, memory=3 * state_bytes(cfg))  # chunks of 3, 3, 1 episodes
    for field in ("value", "deceptions", "steps"):
        np.testing.assert_array_equal(getattr(whole, field), getattr(chunked, field))
    for t in range(cfg.time_limit):
        np.testing.assert_array_equal(whole.policy[t], chunked.policy[t])
    with pytest.raises(ConfigError, match="needs .* MiB of arrays per episode"):
        solve(QuestConfig(size=40, bits=6, n_clues=6, vault_bits=2), [0])  # 3.5 GiB per episode

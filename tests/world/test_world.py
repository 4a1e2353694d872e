"""The world's exact conditionals against Monte-Carlo frequencies, and its structure."""

import math

import pytest
import torch

from instrumentality.errors import ConfigError
from instrumentality.world import World, WorldConfig


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_conditionals_match_monte_carlo_frequencies(seed):
    """Group sampled positions by an empirical key read off the tokens (the story of the world, not
    its tables): the tokens since the last fork marker if it is at most m+1 tokens back, else the last
    token. Compare next-token frequencies with world.conditional of a context with that key.
    Tolerance: every token of every context seen >= 200 times lies within 5.5 binomial standard
    errors (plus 1/n) of p*; and every context with the same key has the same conditional."""
    w = World(WorldConfig(seed=seed))
    x = w.sample(3000, generator=torch.Generator().manual_seed(100 + seed))
    key_len = w.cfg.phrase_len + 2
    V = w.vocab_size + 1
    B, T = x.shape
    is_marker = torch.isin(x, torch.tensor(w.marker_tokens))
    pos = torch.arange(T).expand(B, T)
    last_marker = torch.where(is_marker, pos, torch.full_like(pos, -10**6)).cummax(1).values
    since = pos - last_marker  # tokens since the last marker (0 = this token is the marker)
    xp = torch.cat([torch.full((B, key_len - 1), -1, dtype=torch.long), x], 1) + 1
    windows = xp.unfold(1, key_len, 1)[:, :T - 1]  # [B, T-1, key_len]: last key_len tokens of x[:, :t+1]
    offset = torch.arange(key_len - 1, -1, -1)  # how far back each window slot is
    keep = torch.where((since[:, :T - 1, None] <= key_len - 1), offset <= since[:, :T - 1, None], offset == 0)
    windows = windows * keep
    codes = (windows * V ** offset.flip(0)).sum(-1).flatten()
    nxt = x[:, 1:].flatten()
    uniq, inv, n_per_key = torch.unique(codes, return_inverse=True, return_counts=True)
    counts = torch.zeros(len(uniq), w.vocab_size, dtype=torch.float64)
    counts.index_put_((inv, nxt), torch.ones_like(nxt, dtype=torch.float64), accumulate=True)
    first = torch.full((len(uniq),), len(inv), dtype=torch.long).scatter_reduce(
        0, inv, torch.arange(len(inv)), reduce="amin")
    checked = 0
    for g in (n_per_key >= 200).nonzero().flatten().tolist():
        i, t = divmod(int(first[g]), T - 1)
        p = w.conditional(x[i:i + 1, :t + 1])[0]
        n = counts[g].sum()
        f = counts[g] / n
        tol = 5.5 * torch.sqrt(p * (1 - p) / n) + 1.0 / n
        assert ((f - p).abs() <= tol).all(), (w.decode(x[i, max(0, t - 3):t + 1]), (f - p).abs().max())
        checked += 1
    assert checked >= 25  # enough distinct contexts were compared
    # sufficiency of the key: contexts sharing a key share the state-derived conditional
    rows = w.conditionals_along(x[:, :-1]).flatten(0, 1)
    assert torch.equal(rows, rows[first[inv]])


def test_impossible_tokens_never_sampled_and_log_prob_finite(world):
    x = world.sample(500, generator=torch.Generator().manual_seed(3))
    assert torch.isfinite(world.log_prob(x)).all()
    bad = x.clone()
    bad[:, 1] = world.hard_tokens[0]  # a hard word cannot follow <bos>
    assert (world.states_of(bad)[:, 1] == -1).all()
    with pytest.raises(ValueError, match="probability 0"):
        world.conditional(bad[:, :3])


def test_same_seed_same_corpus_and_world():
    a, b, c = World(WorldConfig(seed=5)), World(WorldConfig(seed=5)), World(WorldConfig(seed=6))
    ga, gb = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(a.sample(64, generator=ga), b.sample(64, generator=gb))
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not torch.equal(a.emission, c.emission)


def test_fork_structure_and_branch_values(world):
    m, k = world.cfg.phrase_len, world.cfg.n_hard_words
    asym = [f for f in world.forks if not f.symmetric]
    sym = [f for f in world.forks if f.symmetric]
    assert sorted(f.p for f in asym) == sorted(world.cfg.fork_probs) == sorted(f.p for f in sym)
    for f in world.forks:
        row = world.emission[f.state]
        assert row[f.first_token] == pytest.approx(f.p) and row[f.second_token] == pytest.approx(1 - f.p)
        assert {f.first_token, f.second_token} == {world.branch_a, world.branch_b}
        # both branches rejoin prose at the same state after m tokens
        ends = []
        for b in (f.first_token, f.second_token):
            s = int(world.transition[f.state, b])
            for _ in range(m):
                s = int(world.transition[s][world.transition[s] >= 0][0])
            ends.append(s)
        assert ends[0] == ends[1] == f.return_state
    for f in asym:  # easy phrase: value 0; hard phrase: -log k per token
        assert world.branch_value(f, 0) == pytest.approx(0.0)
        assert world.branch_value(f, 1) == pytest.approx(-m * math.log(k))
    for f in sym:  # the control: equal values on both branches
        assert world.branch_value(f, 0) == pytest.approx(world.branch_value(f, 1))
    hard_sym = World(WorldConfig(symmetric_kind="hard"))
    for f in (f for f in hard_sym.forks if f.symmetric):
        assert hard_sym.branch_value(f, 0) == pytest.approx(hard_sym.branch_value(f, 1)) == -m * math.log(k)


def test_keyword_only_inside_easy_phrases(world):
    x = world.sample(1000, generator=torch.Generator().manual_seed(4))
    s = world.states_of(x)
    prev_kind = [[world.state_kind[int(v)] for v in row] for row in s[:, :-1]]
    is_kw = x[:, 1:] == world.keyword
    kinds = {prev_kind[i][t] for i, t in is_kw.nonzero().tolist()}
    assert kinds == {"easy_phrase"}
    assert all(world.keyword in ph for ph in world.easy_phrases.values())


def test_entropy_floor_equals_mean_state_entropy():
    """Exact floor (state occupancy propagated through the tables) vs two Monte-Carlo estimates:
    the mean entropy of the sampled states, and the mean -log p* of the sampled tokens (4 SE)."""
    w = World(WorldConfig(seed=1))
    x = w.sample(4000, generator=torch.Generator().manual_seed(11))
    floor = w.entropy_floor()
    ent = w.state_entropy[w.states_of(x[:, :-1])]
    nll = -w.log_prob(x)
    for sample in (ent, nll):
        per_seq = sample.mean(1)  # sequences are independent
        se = per_seq.std() / math.sqrt(len(per_seq))
        assert abs(float(per_seq.mean()) - floor) < 4 * float(se), (float(per_seq.mean()), floor)


@pytest.mark.parametrize("bad", [{"fork_probs": [0.5, 1.0]}, {"fork_probs": [0.0]}, {"fork_probs": []},
                                 {"symmetric_kind": "medium"}, {"phrase_len": 0}])
def test_invalid_world_config_names_the_key(bad):
    with pytest.raises(ConfigError, match=f"world.{next(iter(bad))}"):
        WorldConfig(**bad)


def test_easy_token_alternates_and_controls_use_their_twins_tokens(world):
    asym = [f for f in world.forks if not f.symmetric]
    assert {f.first_token for f in asym} == {world.branch_a, world.branch_b}  # no single "good" token
    for f in world.forks:
        twin = next(g for g in asym if g.p == f.p)
        assert f.first_token == twin.first_token


def test_future_token_distribution_matches_monte_carlo(world):
    """p*(x_{t+k} | state) by matrix powers vs frequencies of sampled continuations (5 SE)."""
    s = world.forks[1].state  # the p = 0.5 fork: its future differs by branch
    n = 20000
    cont = world.continue_from(torch.full((n,), s), 4, torch.Generator().manual_seed(5))
    for k in range(1, 5):
        p = world.future_token_distribution(torch.tensor([s]), k)[0]
        f = torch.bincount(cont[:, k - 1], minlength=world.vocab_size).double() / n
        assert ((f - p).abs() <= 5 * torch.sqrt(p * (1 - p) / n) + 1e-3).all(), k
        assert p.sum() == pytest.approx(1.0)


def test_states_of_equals_a_plain_walk_of_the_transition_table_including_impossible_tokens():
    w = World()
    g = torch.Generator().manual_seed(5)
    x = w.sample(64, 30, generator=g)
    noisy = x.clone()  # a random token here and there: most are impossible, the state is -1 from then on
    flip = torch.rand(x.shape, generator=g) < 0.05
    flip[:, 0] = False
    noisy[flip] = torch.randint(1, w.vocab_size, (int(flip.sum()),), generator=g)
    T = w.transition.tolist()
    for seqs in (x, noisy):
        expected = []
        for row in seqs.tolist():
            s, walk = w.start_state, [w.start_state]
            for tok in row[1:]:
                s = T[s][tok] if s >= 0 else -1
                walk.append(s)
            expected.append(walk)
        assert w.states_of(seqs).tolist() == expected
    assert (w.states_of(noisy) == -1).any() and (w.states_of(x) >= 0).all()

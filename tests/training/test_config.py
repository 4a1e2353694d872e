"""Hydra configs compose, and a wrong value stops before training with a message naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from hydra.utils import instantiate

from instrumentality.configs import CONFIG_DIR
from instrumentality.errors import ConfigError
from instrumentality.train import build


def composed(*overrides, hydra=False):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name="train", overrides=list(overrides), return_hydra_config=hydra)


@pytest.mark.parametrize("preset", ["quick", "full", "debug"])
def test_presets_compose_and_build(preset):
    cfg = composed(f"preset={preset}")
    world, model, regime = build(cfg)
    assert model.cfg.vocab_size == world.vocab_size and model.cfg.block_size >= world.cfg.seq_len
    assert instantiate(cfg.trainer).max_steps == cfg.trainer.max_steps
    if preset == "debug":
        assert cfg.logger.mode == "disabled"


@pytest.mark.parametrize("preset", ["quick", "full", "debug"])
def test_every_swept_value_of_every_experiment_composes_to_a_resolved_config(preset):
    """Each job a sweep would launch resolves (e.g. every F2 arm names a critic, gamma and H) and its
    world, model, regime and trainer instantiate, without training: the sweep's params are read from the
    experiment configs as the preset composes them. The full preset too: its sweep takes an hour, which a
    config error found late would waste."""
    import itertools

    from omegaconf import OmegaConf

    paths = sorted((Path(CONFIG_DIR) / "experiment").glob("*.yaml"))
    assert [p.stem for p in paths] == ["F1", "F10", "F11", "F2", "F3", "F4", "F4_goal", "F4_simulator", "F8",
                                       "F8_critic", "F9"]
    from instrumentality.configs import flatten
    from instrumentality.evaluation.table import IDENTITY_COLUMNS, swept_keys

    for path in paths:
        cfg = composed(f"experiment={path.stem}", f"preset={preset}", hydra=True)
        params = {k: str(v).split(",") for k, v in (cfg.hydra.sweeper.params or {}).items()}
        assert "seed" not in params  # the seeds are the preset's n_seeds (a hand multirun: seed=range(N))
        columns_seen: dict[tuple, str] = {}
        declared, keys_seen = list(cfg.get("columns") or []), set()
        for values in itertools.product(*params.values()):
            job = composed(f"experiment={path.stem}", f"preset={preset}",
                           *(f"{k}={v}" for k, v in zip(params, values)))
            resolved = OmegaConf.to_container(job, resolve=True)  # raises on a dangling interpolation
            # the claims tell arms apart by the table's columns (`regime`, the identity and the experiment's own
            # declared `columns`): two jobs of one seed that agree on all of them would read as two runs of one
            # seed in one arm. Each declared column is a key of the experiment's jobs, and a column of the table.
            flat = flatten(resolved)
            keys_seen.update(flat)
            columns = (resolved["regime"]["name"], *(repr(flat.get(k)) for k in (*IDENTITY_COLUMNS, *declared)))
            assert columns not in columns_seen, (path.stem, resolved["run_name"], columns_seen.get(columns))
            columns_seen[columns] = resolved["run_name"]
            assert resolved["exp_name"] == cfg.exp_name and resolved["preset_name"] == preset
            assert instantiate(job.trainer).max_steps == resolved["trainer"]["max_steps"]
            if resolved["regime"].get("quest_fraction"):  # a small transcript corpus: the sizes are not the point
                job.regime.quest_corpus, job.regime.corpus_cache = 16, None
            build(job)  # world, model and regime instantiate (checkpoints are read later, in setup)
            if path.stem == "F2":
                arm = dict(zip(params, values))["arm"]
                critic, gamma, horizon, *beta = arm.split("-")
                assert resolved["regime"]["critic"] == critic
                assert resolved["regime"]["horizon"] == int(horizon[1:])
                assert resolved["regime"]["gamma"] == float(gamma[1:].replace("05", "0.5"))
                # an arm named -beta<b> runs at beta b, the others at the preset's beta
                preset_beta = cfg.budget.beta[preset]
                assert resolved["regime"]["beta"] == (float(beta[0][4:]) if beta else preset_beta)
                assert ("-beta" in resolved["run_name"]) == bool(beta)  # its own folder beside the preset-beta arm
            if path.stem == "F11":  # the arm's name is what it trains, and a distilled stage reads stage k/2
                arm = dict(zip(params, values))["arm"]
                teacher, route, k = arm.split("-")
                regime, stride = resolved["regime"], int(k[1:])
                assert (regime["teacher"], regime["route"], regime["stride"]) == (teacher, route, stride)
                order = params["arm"]
                if route == "distilled":
                    source = "direct-k1" if stride == 2 else f"distilled-k{stride // 2}"
                    assert regime["source"].endswith(f"/F11/jump-{teacher}-{source}-s{resolved['seed']}/checkpoint.pt")
                    assert order.index(f"{teacher}-{source}") < order.index(arm)  # trained before it
                else:
                    assert regime["source"] == (None if teacher == "truth" else resolved["needs"]["F2"])
        assert set(declared) <= keys_seen, (path.stem, sorted(set(declared) - keys_seen))
        assert set(declared) <= set(swept_keys())


@pytest.mark.parametrize("preset", ["quick", "full", "debug"])
def test_f10_and_f4_goal_are_f4s_quest_ppo_from_the_simulator_with_only_their_variants_changed(preset):
    """C10 and C6 pair F10's and F4_goal's agents with the simulator that F4's quest-PPO starts from (and
    C6 with F4's quest-PPO itself): each PPO run of a seed must differ from F4's in its variants (F10
    hidden: `interruptible`; F10 visible: half the episodes `interruptible`, flagged; F4_goal: half
    `unscored`) and F4_goal's in its discount alone, or the claims would compare more than that."""
    from omegaconf import OmegaConf

    def job(*overrides):
        return OmegaConf.to_container(composed(*overrides, f"preset={preset}", "seed=1", "regime.init=simulator"),
                                      resolve=True)

    f4 = job("experiment=F4")
    arms = {"hidden": (job("experiment=F10", "arm=hidden"), "quest-interruptible-s1",
                       {"variant": "interruptible"}, {"mix_variant": "interruptible", "mix_fraction": 0.0}),
            "visible": (job("experiment=F10", "arm=visible"), "quest-interruptible-visible-s1",
                        {"overseer_visible": True}, {"mix_variant": "interruptible", "mix_fraction": 0.5})}
    arms.update({f"g{g}": (job("experiment=F4_goal", f"regime.gamma={g}"), f"quest-mixed-g{g}-s1", {},
                           {"mix_variant": "unscored", "mix_fraction": 0.5, "gamma": g}) for g in (0.5, 0.9, 0.99)})
    base = {k: v for k, v in f4.items() if k not in ("claim_family", "sweep_order", "columns", "exp_name", "run_name")}
    for name, (cfg, run_name, quest, regime) in arms.items():
        assert cfg["run_name"] == run_name
        assert cfg["exp_name"] == ("F10" if name in ("hidden", "visible") else "F4_goal")
        assert cfg["regime"]["init_checkpoint"] == f4["regime"]["init_checkpoint"]
        assert cfg["regime"]["init_checkpoint"].endswith(f"/{preset}/F4/simulator-s1/checkpoint.pt")
        expected = {**base, "quest": {**base["quest"], **quest},
                    "regime": {**base["regime"], **regime, "env": {**base["regime"]["env"], **quest}}}
        got = {k: v for k, v in cfg.items() if k in base}
        for c in (expected, got):  # F10's arm table is F10's own
            c.pop("arm", None), c.pop("arms", None)
        assert got == expected, name
    params = composed("experiment=F10", f"preset={preset}", hydra=True).hydra.sweeper.params
    assert dict(params) == {"regime.init": "simulator", "arm": "hidden,visible"}
    params = composed("experiment=F4_goal", f"preset={preset}", hydra=True).hydra.sweeper.params
    assert dict(params) == {"regime.init": "simulator", "regime.gamma": "0.5,0.9,0.99"}


@pytest.mark.parametrize("preset", ["quick", "full", "debug"])
def test_experiments_hold_their_budgets_and_arms_per_preset(preset):
    """F3 trains as long as the F2 runs it is compared with, at the same beta (4 in the full preset, where
    REINFORCE reaches the optimum); the quick preset sweeps 9 of F2's 14 beta-free truth and keyword arms
    (those that fit its 20 minutes), the full preset 8 of them (room for F8) with the learned critic and the
    truth critic at beta = 1 (the split), debug all 14."""
    f2 = composed("experiment=F2", f"preset={preset}", hydra=True)
    f3 = composed("experiment=F3", f"preset={preset}")
    assert f3.trainer.max_steps == f2.trainer.max_steps and f3.regime.beta == f2.regime.beta
    assert f2.regime.beta == (4.0 if preset == "full" else 1.0)
    assert composed("experiment=F2", f"preset={preset}", "regime.beta=2").regime.beta == 2.0  # the command line wins
    arms = f2.hydra.sweeper.params.arm.split(",")
    assert len(set(arms)) == len(arms) and set(arms) <= set(f2.arms)
    if preset == "quick":
        assert sorted(arms) == sorted(["truth-g1-H1", "truth-g1-H4", "truth-g0-H8", "truth-g05-H8", "truth-g1-H8",
                                       "keyword-g1-H1", "keyword-g0-H8", "keyword-g05-H8", "keyword-g1-H8"])
    elif preset == "full":  # what C3 and C4 compare, and the curve's middle points
        assert sorted(arms) == sorted(["truth-g1-H1", "truth-g1-H4", "truth-g1-H8", "truth-g0-H8", "truth-g05-H8",
                                       "keyword-g1-H1", "keyword-g1-H8", "keyword-g0-H8", "learned-g1-H8",
                                       "truth-g1-H8-beta1"])
    else:
        assert len(arms) == 14 and set(f2.arms) - set(arms) == {"learned-g1-H8", "truth-g1-H8-beta1"}


def test_unknown_regime_lists_the_valid_choices():
    with pytest.raises(MissingConfigException) as e:
        composed("regime=telepathy")
    assert "regime" in str(e.value) and "supervised" in str(e.value)


@pytest.mark.parametrize("override,key", [("model.n_layer=-1", "model.n_layer"),
                                          ("world.fork_probs=[0.5,1.5]", "world.fork_probs")])
def test_invalid_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=key):
        build(composed(override))


@pytest.mark.parametrize("override,key", [("trainer.lr=0", "trainer.lr"), ("model.n_layer=-2", "model.n_layer"),
                                          ("regime=telepathy", "supervised")])
def test_cli_stops_before_training_with_a_clear_message(tmp_path, override, key):
    proc = subprocess.run([sys.executable, "-m", "instrumentality.train", "preset=debug", override,
                           f"hydra.run.dir={tmp_path}/run"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert key in proc.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_f8_cells_share_their_standard_cells_budgets_and_start_from_their_own_cognition(preset):
    """F8's supervised cells train as long as F1's supervised run (the standard cell: the myopia gap is at
    equal tokens), but the matched cell (the standard cognition stopped at the myopic model's capability:
    F8's matched_steps); F8_critic's as long as F2's arms, at the same beta, each from F8's run of its own
    cognition and seed, whose model options it keeps."""
    f1 = composed("experiment=F1", f"preset={preset}", "regime=supervised")
    f2 = composed("experiment=F2", f"preset={preset}")
    f8 = composed("experiment=F8", f"preset={preset}", hydra=True)
    f8c = composed("experiment=F8_critic", f"preset={preset}", hydra=True)
    assert f8.regime.name == "supervised"
    cells = f8.hydra.sweeper.params.cognition.split(",")
    assert f8c.hydra.sweeper.params.cognition.split(",") == cells and "standard" not in cells
    assert cells == (["myopic"] if preset == "quick" else ["myopic", "future1", "future3", "matched"])
    assert f8c.hydra.sweeper.params["regime.gamma"].split(",") == ["0.0", "1.0"]
    expected = {"myopic": (True, 0), "future1": (False, 1), "future3": (False, 3), "matched": (False, 0)}
    for cell in cells:
        sup = composed("experiment=F8", f"preset={preset}", f"cognition={cell}", "seed=3")
        rl = composed("experiment=F8_critic", f"preset={preset}", f"cognition={cell}", "seed=3")
        for cfg in (sup, rl):
            assert (cfg.model.myopic, cfg.model.n_future_heads) == expected[cell]
        assert rl.trainer.max_steps == f2.trainer.max_steps and rl.regime.beta == f2.regime.beta
        assert sup.trainer.max_steps == (f8.matched_steps[preset] if cell == "matched" else f1.trainer.max_steps)
        assert (rl.regime.critic, rl.regime.horizon) == ("truth", 8)
        assert rl.regime.ref_checkpoint == f"runs/{preset}/F8/{sup.run_name}/checkpoint.pt"
        assert sup.run_name == f"supervised-{cell}-s3"


@pytest.mark.parametrize("preset", ["quick", "full"])
def test_f9_sweeps_both_regimes_from_four_starts_and_warms_up_before_deploying(preset):
    """F9's two regimes share a world whose markers start below, between and above the response map's
    fixed points (performative theory: the default map's), train past their warm-up, and log one forecast
    per retraining round."""
    from instrumentality.world.performative import ResponseMap, fixed_points

    f9 = composed("experiment=F9", f"preset={preset}", hydra=True)
    assert f9.hydra.sweeper.params.regime.split(",") == ["retrain", "prophecy_rl"]
    starts = list(f9.world.prophecies)
    low, mid, high = (p.q for p in fixed_points(ResponseMap()))
    assert starts[0] < low < starts[1] < mid < starts[2] < high < starts[3]
    for regime in ("retrain", "prophecy_rl"):
        cfg = composed("experiment=F9", f"preset={preset}", f"regime={regime}")
        assert cfg.trainer.max_steps >= cfg.regime.warmup_steps + 8 * 25
        assert (cfg.regime.response_low, cfg.regime.response_high, cfg.regime.response_steepness) == \
            (ResponseMap().low, ResponseMap().high, ResponseMap().steepness)
    assert composed("experiment=F9", f"preset={preset}").trainer.log_every == f9.regime.round_steps


@pytest.mark.parametrize("preset", ["quick", "full", "debug"])
def test_the_full_preset_gives_each_seed_its_own_world_and_the_quest_keeps_one(preset):
    """Worlds as a random factor (design section 1): in the full preset the world experiments train seed s on
    world s, F2 and F3 on the world of the F1 run they start from; the quest and prophecy experiments read no
    world text and keep world 0; the command line wins."""
    for exp in ("F1", "F2", "F3", "F8", "F8_critic"):
        cfg = composed(f"experiment={exp}", f"preset={preset}", "seed=3")
        assert cfg.world.seed == (3 if preset == "full" else 0), exp
    for exp in ("F4", "F4_simulator", "F10", "F9"):
        assert composed(f"experiment={exp}", f"preset={preset}", "seed=3").world.seed == 0, exp
    assert composed("experiment=F1", f"preset={preset}", "seed=3", "world.seed=7").world.seed == 7


@pytest.mark.parametrize("arg,message", [
    ("run_name=../../x", "run_name must be one folder name"),
    ("exp_name=a/b", "exp_name must be one folder name"),
    ("run_name=" + "a" * 300, "run_name must be at most 200 characters"),
    ("+batchsize=32", "no setting reads 'batchsize', so the value would be ignored (did you mean batch_size?)"),
    ("regime=critic_settings", "regime=critic_settings is the settings schema of regime critic, not a regime: use "
                               "regime=critic"),
    ("+sb3=cluequest", "holds the SB3 agent's hyperparameters for scripts/train_sb3.py"),
])
def test_a_bad_command_line_is_one_line_before_hydra_composes(arg, message, capsys):
    from instrumentality.train import check_command_line

    with pytest.raises(SystemExit) as e:
        check_command_line(["preset=debug", arg])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    # what is allowed passes: a config group added with +, a setting inside one, a plain name
    check_command_line(["+quest=small", "+world.prophecies=[0.5]", "run_name=mine-1", "++batch_size=8"])


def test_an_unknown_quest_setting_is_named():
    from instrumentality.envs.tokens import quest_tokens

    with pytest.raises(ConfigError, match="quest.foo is not a setting of quest"):
        quest_tokens({"size": 5, "foo": 1}, 10)


def config_columns_read(source: str) -> set[str]:
    """The config columns a module reads from the results table: quoted "group.key" strings."""
    import re

    return set(re.findall(r"""["']((?:world|model|regime|quest|trainer)\.[a-z_]+)["']""", source))


def test_every_config_column_the_claims_read_is_one_an_experiment_declares():
    """The table's config columns are derived (IDENTITY_COLUMNS and each experiment's `columns`): a claim
    that reads a column no experiment declares would find it missing from every table. Planted: a claim
    reading `regime.planted_key` is caught."""
    from instrumentality.evaluation.table import swept_keys

    claims_dir = Path(CONFIG_DIR).parent / "src" / "instrumentality" / "claims"
    read = set().union(*(config_columns_read(p.read_text()) for p in claims_dir.glob("*.py")))
    assert {"regime.gamma", "regime.horizon", "regime.stride", "quest.overseer_visible"} <= read
    assert read <= set(swept_keys()), sorted(read - set(swept_keys()))
    assert config_columns_read('df["regime.planted_key"] == 1') - set(swept_keys()) == {"regime.planted_key"}
    # the derived columns equal the ones the committed full table was built with
    committed = Path(CONFIG_DIR).parent / "results" / "full" / "results.csv"
    header = committed.open().readline().strip().split(",")
    assert [k for k in header if "." in k and k.split(".")[0] in {"world", "model", "regime", "quest", "trainer"}
            ] and set(swept_keys()) <= set(header)


def test_help_lists_the_groups_a_run_is_made_of_and_not_the_schema_nodes():
    """`--help` is read from configs/: every run group with its options, no `<regime>_settings` schema node
    (the regime files start from them) and no `sb3` (a zoo hyperparameter file, not a run's group)."""
    proc = subprocess.run([sys.executable, "-m", "instrumentality.train", "--help"], capture_output=True, text=True,
                          timeout=120, cwd=Path(CONFIG_DIR).parent)
    assert proc.returncode == 0
    groups = {line.split()[0]: line.split(None, 1)[1] for line in proc.stdout.splitlines()
              if line.startswith("  ") and not line.startswith("  python")}
    assert set(groups) == {p.name for p in Path(CONFIG_DIR).iterdir() if p.is_dir()} - {"hydra", "sb3"}
    regimes = groups["regime"].split(", ")
    assert regimes == sorted(p.stem for p in (Path(CONFIG_DIR) / "regime").glob("*.yaml"))
    assert "_settings" not in proc.stdout and "sb3:" not in proc.stdout

"""The house the code lives in: no import cycle in src/, one registry of claim families that owns every
experiment's runs, runs no family owns left out of every claim (and named), and a new family added by
writing its module and one line of the registry."""

import ast
from pathlib import Path

import pandas as pd
import pytest
from omegaconf import OmegaConf

import instrumentality.claims as registry
from instrumentality.claims.algebra import ClaimFamily, claim_of, final_rows, per_seed
from instrumentality.configs import EXPERIMENT_DIR, compose, experiments
from instrumentality.report import claims, load, write_report

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "instrumentality"


# ---------------------------------------------------------------------------- import graph
def module_name(path: Path, src: Path = SRC) -> str:
    parts = list(path.relative_to(src).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the project modules it imports (at the top or inside a function), with the packages
    Python initialises on the way (importing a.b.c runs a/__init__ and a/b/__init__ first)."""
    files = {module_name(p, src): p for p in (src / PACKAGE).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for mod, path in files.items():
        deps: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                base = node.module
                if node.level:  # a relative import
                    here = mod.split(".") if is_package else mod.split(".")[:-1]
                    base = ".".join(here[:len(here) - node.level + 1] + [node.module])
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            for t in targets:
                if t.split(".")[0] != PACKAGE:
                    continue
                parts = t.split(".")
                deps |= {".".join(parts[:i]) for i in range(2, len(parts) + 1)} & set(files)
        deps.discard(mod)
        # a submodule's own package (and its parents) is initialised first, but a package importing its
        # submodules is not a cycle with them
        graph[mod] = {d for d in deps if not mod.startswith(d + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_cycle_finder_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("def f():\n    from instrumentality.b import g\n")  # a lazy import counts
    (pkg / "b.py").write_text("from instrumentality.a.x import f\n")
    (pkg / "c.py").write_text("from instrumentality.b import f\n")
    graph = import_graph(tmp_path)
    assert cycles(graph) == [["instrumentality.a.x", "instrumentality.b"]]


def test_no_import_cycle_in_src():
    graph = import_graph()
    assert len(graph) > 30  # the whole package was read
    assert cycles(graph) == []


# ---------------------------------------------------------------------------- the registry
def test_every_experiment_is_owned_by_the_family_it_declares():
    """configs/experiment/<name>.yaml says which claim family its runs feed; that family, and no other, owns
    its exp_name (so its runs count, once)."""
    names = experiments()
    assert {p.stem for p in EXPERIMENT_DIR.glob("*.yaml")} == set(names)
    for name in names:
        declared = OmegaConf.load(EXPERIMENT_DIR / f"{name}.yaml").claim_family
        exp_name = str(compose("preset=debug", f"experiment={name}").exp_name)
        family = registry.owner(exp_name)
        assert family is not None and family.name == declared, (name, exp_name, declared)
    owned = [e for f in registry.FAMILIES for e in f.owns]
    assert len(owned) == len(set(owned))  # no experiment owned twice
    # an ad hoc run (configs/train.yaml's exp_name) feeds no family
    assert registry.owner(str(compose("preset=debug").exp_name)) is None


def planted_rows(exp: str, regime: str, seeds, kl: float) -> list[dict]:
    rows = []
    for s in seeds:
        run = f"{exp}/{regime}-s{s}"
        for probe, metric, value in (("calibration", "kl", kl), ("run", "finished", 1.0)):
            rows.append({"run_id": run, "source": f"{s:016x}", "run_rows": 2, "exp_name": exp, "regime": regime,
                         "seed": s, "probe": probe, "metric": metric, "value": value, "ci_low": value,
                         "ci_high": value})
    return rows


def c1_kl(df: pd.DataFrame):
    return next(c for c in claims(df) if c.claim == "C1" and "KL" in c.metric)


def test_a_run_no_family_owns_is_left_out_and_named(tmp_path):
    """A supervised run made by hand (exp_name adhoc) beside F1's: C1 is still F1's three seeds, and the
    report names the run it left out."""
    table = tmp_path / "results.csv"
    f1 = planted_rows("F1", "supervised", range(3), kl=0.01)
    pd.DataFrame(f1).to_csv(table, index=False)
    alone = c1_kl(load(table))
    pd.DataFrame(f1 + planted_rows("adhoc", "supervised", [7, 0], kl=5.0)).to_csv(table, index=False)
    df = load(table)
    assert df.attrs["unowned"] == ["adhoc/supervised-s0", "adhoc/supervised-s7"]
    with_adhoc = c1_kl(df)
    assert (with_adhoc.n_seeds, with_adhoc.value) == (alone.n_seeds, alone.value) == (3, pytest.approx(0.01))
    text = write_report(table, tmp_path / "out").read_text()
    assert "2 run(s) in the table belong to an experiment that no claim family owns" in text
    assert "`adhoc/supervised-s7`" in text


def test_a_seed_counted_twice_in_one_arm_raises():
    rows = pd.DataFrame(planted_rows("F1", "supervised", [0, 1, 1], kl=0.01))
    seeds = per_seed(final_rows(rows), "calibration", "kl")
    with pytest.raises(ValueError, match=r"seed\(s\) \[1\] have more than one run"):
        claim_of("C1.kl", seeds)


def test_a_new_family_is_its_module_and_one_line_of_the_registry(tmp_path, monkeypatch):
    """A planted claim family with its own experiment (F99): once listed in FAMILIES (the one existing
    file a new family edits, besides its new module and experiment file), its runs are its own, its claim
    and section reach the report, and the world family does not count them."""
    from instrumentality.claims import declared

    def c99(df):
        return [claim_of("C99.kl", per_seed(final_rows(df), "calibration", "kl"))]

    claims_file = tmp_path / "claims.yaml"  # the family's claim, declared first
    claims_file.write_text(declared.CLAIMS_FILE.read_text() + "\nC99:\n  statement: A planted claim.\n  primary: kl\n"
                           "  rows:\n    kl: {metric: planted KL, prediction: '< 0.05', reason: planted}\n")
    monkeypatch.setattr(declared, "CLAIMS_FILE", claims_file)
    planted = ClaimFamily(name="planted", owns=("F99",), claims=c99,
                          section=lambda df: ["", f"### F99: {df.run_id.nunique()} runs"])
    table = tmp_path / "results.csv"
    pd.DataFrame(planted_rows("F1", "supervised", range(3), kl=0.01)
                 + planted_rows("F99", "supervised", range(4), kl=0.02)).to_csv(table, index=False)
    assert load(table).attrs["unowned"] == [f"F99/supervised-s{s}" for s in range(4)]  # not yet registered
    monkeypatch.setattr(registry, "FAMILIES", (*registry.FAMILIES, planted))
    df = load(table)
    assert df.attrs["unowned"] == []
    c99_claim = next(c for c in claims(df) if c.claim == "C99")
    assert (c99_claim.n_seeds, c99_claim.value, c99_claim.verdict) == (4, pytest.approx(0.02), "supported")
    assert c1_kl(df).n_seeds == 3 and c1_kl(df).value == pytest.approx(0.01)  # F99's runs are not C1's
    text = write_report(table, tmp_path / "out").read_text()
    assert "| C99 | primary | planted KL | < 0.05 |" in text and "### F99: 4 runs" in text
    assert "| C99 | A planted claim. | planted KL | **supported** |" in text
    assert text.index("| C1 |") < text.index("| C99 |")


def test_checkpoints_that_name_moved_classes_still_build():
    """Configs kept in checkpoints made before the move name `instrumentality.trainer.TrainerConfig` and
    `instrumentality.world.WorldConfig`: both still build."""
    from instrumentality.training.build import make
    from instrumentality.training.trainer import TrainerConfig
    from instrumentality.world import WorldConfig

    trainer = make({"_target_": "instrumentality.trainer.TrainerConfig", "max_steps": 7}, "trainer")
    assert isinstance(trainer, TrainerConfig) and trainer.max_steps == 7
    old_world = make({"_target_": "instrumentality.world.WorldConfig", "seed": 3}, "world")
    assert isinstance(old_world, WorldConfig) and old_world.seed == 3

"""The supervised regime learns the world: a real quick-preset run on the CPU."""


def test_quick_supervised_reaches_the_entropy_floor(quick_supervised_run):
    out, summary = quick_supervised_run
    m = summary["metrics"]
    print(f"\nquick supervised: excess NLL {m['probe/calibration/excess_nll']:.4f} nats/token, "
          f"KL {m['probe/calibration/kl']:.4f}, wall {summary['wall_s']:.1f}s")
    assert summary["status"]["status"] == "finished"
    assert m["probe/calibration/excess_nll"] < 0.05
    assert m["probe/calibration/kl"] < 0.05
    assert (out / "checkpoint.pt").exists() and (out / "summary.json").exists()

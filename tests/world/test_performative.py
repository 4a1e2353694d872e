"""The exact theory of the prophecy fork (performative.py) against closed forms and brute force."""

import math
import time

import numpy as np
import pytest

from instrumentality.world.performative import (
    ResponseMap,
    fixed_points,
    log_loss,
    performative_optimum,
    performative_risk,
    retrain,
    retraining_limit,
    risk_gradient,
    risk_minima,
    theory,
)

GRID = np.linspace(1e-6, 1 - 1e-6, 2_000_001)  # brute force: two million forecasts


class Linear:
    """f(q) = a + b q: one fixed point a / (1 - b), stable iff |b| < 1 (closed forms)."""

    def __init__(self, a: float, b: float):
        self.a, self.b = a, b

    def __call__(self, q):
        return self.a + self.b * np.asarray(q)

    def slope(self, q):
        return np.full_like(np.asarray(q, dtype=float), self.b)


def test_default_map_has_a_low_stable_an_unstable_and_a_confident_stable_fixed_point():
    f = ResponseMap()
    points = fixed_points(f)
    assert [p.stable for p in points] == [True, False, True]
    low, mid, high = points
    assert low.q < 0.3 and 0.4 < mid.q < 0.6 and high.q > 0.8  # the confident, self-fulfilling one
    for p in points:  # brute force: f - q changes sign exactly there
        assert abs(f(p.q) - p.q) < 1e-12
        assert p.slope == pytest.approx((f(p.q + 1e-7) - f(p.q - 1e-7)) / 2e-7, rel=1e-5)
        assert p.risk == pytest.approx(-(p.q * math.log(p.q) + (1 - p.q) * math.log(1 - p.q)))  # entropy at q
    g = f(GRID) - GRID
    crossings = GRID[1:][np.sign(g[:-1]) != np.sign(g[1:])]
    assert len(crossings) == 3 and np.abs(crossings - [p.q for p in points]).max() < 1e-6


def test_symmetric_map_closed_forms():
    """centre 1/2, low = 1 - high: q = 1/2 is a fixed point with slope (high - low) k / 4, and the other
    two are mirror images with equal risk."""
    for k, n_points in ((2.0, 1), (12.0, 3)):
        f = ResponseMap(low=0.1, high=0.9, steepness=k, centre=0.5)
        points = fixed_points(f)
        assert len(points) == n_points
        mid = points[len(points) // 2]
        assert mid.q == pytest.approx(0.5, abs=1e-12) and mid.slope == pytest.approx(0.8 * k / 4)
        assert mid.stable == (0.8 * k / 4 < 1)
        if n_points == 3:
            assert points[0].q == pytest.approx(1 - points[2].q, abs=1e-10)
            assert points[0].risk == pytest.approx(points[2].risk)


def test_linear_map_fixed_point_in_closed_form():
    for a, b in ((0.2, 0.5), (0.6, -0.5), (0.05, 0.9)):
        (p,) = fixed_points(Linear(a, b))
        assert p.q == pytest.approx(a / (1 - b), abs=1e-12) and p.stable
        assert retraining_limit(Linear(a, b), 0.99) == pytest.approx(a / (1 - b), abs=1e-10)


def test_performative_optimum_against_brute_force():
    for f in (ResponseMap(), ResponseMap(steepness=2.0), ResponseMap(centre=0.4, high=0.8), Linear(0.2, 0.5)):
        q, risk = performative_optimum(f)
        risks = performative_risk(f, GRID)
        i = int(np.argmin(risks))
        assert risk == pytest.approx(float(risks[i]), abs=1e-9) and q == pytest.approx(float(GRID[i]), abs=1e-4)
        assert abs(risk_gradient(f, q)) < 1e-6  # an interior optimum: the first-order condition holds
        # its risk is at most every fixed point's (a fixed point is one forecast among the others)
        assert all(risk <= p.risk + 1e-12 for p in fixed_points(f))


def test_the_optimum_is_a_certain_forecast_where_the_risk_falls_to_an_end():
    """f(q) = 0.2 + 0.8 q has an interior stationary point of the risk, but f(1) = 1: forecasting the outcome
    with certainty makes it certain, and the risk falls to 0 at q -> 1 (closed form: PR(q) -> 0)."""
    f = Linear(0.2, 0.8)
    q, risk = performative_optimum(f)
    assert q > 1 - 1e-6 and risk < 1e-6
    assert risk <= float(np.min(performative_risk(f, GRID)))


def test_the_optimum_is_more_confident_than_the_confident_stable_point():
    """dPR/dq at a fixed point is -f'(q) log(q / (1 - q)): negative above 1/2 where f rises, so the risk
    still falls past the confident stable point; the optimum is not performatively stable."""
    f = ResponseMap()
    high = fixed_points(f)[-1]
    assert risk_gradient(f, high.q) == pytest.approx(-high.slope * math.log(high.q / (1 - high.q)))
    q_opt, risk_opt = performative_optimum(f)
    assert q_opt > high.q + 0.05 and risk_opt < high.risk - 0.03 and f(q_opt) < q_opt - 0.03  # overconfident
    # two local minima of the risk, one per basin, each past its basin's stable point; the optimum is the lower
    (low_min, _), (high_min, _) = minima = risk_minima(f)
    low = fixed_points(f)[0]
    assert low_min < low.q and high_min == pytest.approx(q_opt) and min(minima, key=lambda m: m[1])[0] == high_min


def test_repeated_retraining_ends_at_the_stable_point_of_its_basin():
    f = ResponseMap()
    low, mid, high = fixed_points(f)
    for q0 in (0.01, low.q, mid.q - 0.01):
        assert retraining_limit(f, q0) == pytest.approx(low.q, abs=1e-10)
    for q0 in (mid.q + 0.01, high.q, 0.999):
        assert retraining_limit(f, q0) == pytest.approx(high.q, abs=1e-10)
    path = retrain(f, 0.7, 50)
    assert path[0] == 0.7 and np.all(np.diff(path) >= 0) and path[-1] == pytest.approx(high.q, abs=1e-9)


def test_log_loss_is_minimised_by_the_true_probability():
    r = 0.3
    q = GRID[np.argmin(log_loss(GRID, r))]
    assert q == pytest.approx(r, abs=1e-6)
    assert log_loss(r, r) == pytest.approx(-(0.3 * math.log(0.3) + 0.7 * math.log(0.7)))


def test_the_whole_theory_takes_under_a_second():
    times = []
    for _ in range(3):  # the fastest of three: a busy machine's stalls are not the code's
        t0 = time.perf_counter()
        out = theory(ResponseMap())
        times.append(time.perf_counter() - t0)
    assert min(times) < 1.0
    assert len(out["fixed_points"]) == 3
    assert out["outcome_at_optimum"] == pytest.approx(float(ResponseMap()(out["optimum"])))


def test_a_bad_response_map_is_refused():
    with pytest.raises(ValueError, match="low < high"):
        ResponseMap(low=0.9, high=0.1)
    with pytest.raises(ValueError, match="steepness"):
        ResponseMap(steepness=0)

"""Performative prediction at a prophecy fork: the exact theory (experiment F9, claim C9; Perdomo et al. 2020).

At a prophecy marker the model forecasts an outcome A with probability q, and the world then realises A with
probability f(q): the *response map*, the forecast's effect on what happens. The log-loss of a forecast q
of an outcome that happens with probability r is

    ell(q; r) = - [r log q + (1 - r) log(1 - q)],      minimised over q at q = r.

Repeated retraining (each round's data drawn from the world's response to the deployed forecast, and
next-token training fitting them) maps q to f(q). Every fixed point q = f(q) is *performatively stable*
(Perdomo et al.: a loss minimiser on the data it induces, so the loss does not push the model away from
it); retraining ends at one that is attracting, |f'(q)| < 1, the one of the basin it starts in. The
*performative risk* of deploying q is

    PR(q) = ell(q; f(q)),        dPR/dq = (q - f(q)) / (q (1 - q)) - f'(q) log(q / (1 - q)),

and its minimiser is the *performative optimum*, what an optimiser that credits the forecast's effect on
the outcome (RL on the log-score) seeks. At a fixed point the first term vanishes, so a stable point is a
critical point of the risk only where f' = 0 or q = 1/2. Where f rises (f' > 0) the risk still falls past
an attracting point away from 1/2: the risk's minimum in that basin is a more confident forecast,
because confidence makes the world more predictable.

The default response map has three fixed points: an attracting one at a low forecast (0.151), a repelling
one between (0.473), and an attracting, confident, self-fulfilling one (0.888; risk 0.350 nats). The risk
has a local minimum in each basin (0.059 and 0.955), each past its basin's attracting point; the global
one, the performative optimum, is 0.955 (risk 0.310 nats), where the outcome happens with probability
0.914 only: the optimal forecast is not even calibrated. Its steepness trades two things: the distance
between a stable point and its basin's risk minimum grows with f' there, and so does the number of rounds
repeated retraining needs to reach the stable point (the error shrinks by about f' per round); at 6 both
distances are 0.07-0.09 and retraining gets within 0.02 in 2-6 exact rounds from mid-basin starts.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
from scipy import optimize

EPS = 1e-12  # forecasts are kept in [EPS, 1 - EPS]: the log-loss of a certain forecast that fails is infinite


@dataclass(frozen=True)
class ResponseMap:
    """f(q) = low + (high - low) sigmoid(steepness (q - centre)): the probability that the forecast outcome
    happens, given the forecast q. Steep enough ((high - low) steepness / 4 > 1 near the centre) it has two
    stable fixed points and an unstable one between them."""

    low: float = 0.05
    high: float = 0.97
    steepness: float = 6.0
    centre: float = 0.5

    def __post_init__(self):
        if not (0 < self.low < self.high < 1):
            raise ValueError(f"response map: need 0 < low < high < 1, got low={self.low}, high={self.high}")
        if self.steepness <= 0:
            raise ValueError(f"response map: steepness must be > 0, got {self.steepness}")

    def __call__(self, q):
        return self.low + (self.high - self.low) / (1 + np.exp(-self.steepness * (np.asarray(q) - self.centre)))

    def slope(self, q):
        s = 1 / (1 + np.exp(-self.steepness * (np.asarray(q) - self.centre)))
        return (self.high - self.low) * self.steepness * s * (1 - s)


class Response(Protocol):
    """Any response map: f(q) and its derivative f.slope(q), vectorised over numpy arrays."""

    def __call__(self, q): ...

    def slope(self, q): ...


@dataclass(frozen=True)
class FixedPoint:
    q: float        # q = f(q)
    slope: float    # f'(q)
    stable: bool    # attracting, |f'(q)| < 1: repeated retraining started nearby returns to it
    risk: float     # PR(q) = ell(q; q), the entropy of the outcome there (nats)


def log_loss(q, r):
    """ell(q; r): expected log-loss (nats) of forecasting q for an outcome that happens with probability r."""
    q = np.clip(q, EPS, 1 - EPS)
    return -(r * np.log(q) + (1 - r) * np.log(1 - q))


def performative_risk(f: Response, q):
    """PR(q) = ell(q; f(q)): the expected log-loss of deploying the forecast q."""
    return log_loss(q, f(q))


def risk_gradient(f: Response, q):
    """dPR/dq = (q - f(q)) / (q (1 - q)) - f'(q) log(q / (1 - q))."""
    q = np.clip(q, EPS, 1 - EPS)
    return (q - f(q)) / (q * (1 - q)) - f.slope(q) * np.log(q / (1 - q))


def _roots(g: Callable, grid: int) -> list[float]:
    """Every root of g on (0, 1) that changes sign between grid points, refined by Brent's method."""
    x = np.linspace(EPS, 1 - EPS, grid)
    y = g(x)
    roots = [float(x[i]) for i in np.flatnonzero(y == 0)]
    for i in np.flatnonzero(np.sign(y[:-1]) * np.sign(y[1:]) < 0):
        roots.append(optimize.brentq(g, x[i], x[i + 1], xtol=1e-14, rtol=4 * np.finfo(float).eps))
    return sorted(roots)


def fixed_points(f: Response, grid: int = 20001) -> list[FixedPoint]:
    """Every fixed point q = f(q) in (0, 1) (where f - q changes sign on the grid), with its stability and
    risk. A tangency (f touching the diagonal without crossing it) is not found: it is neither stable nor
    robust to any change of f."""
    return [FixedPoint(q, float(f.slope(q)), bool(abs(f.slope(q)) < 1), float(performative_risk(f, q)))
            for q in _roots(lambda x: f(x) - x, grid)]


def retrain(f: Response, q0: float, rounds: int) -> np.ndarray:
    """Exact repeated retraining: q_{t+1} = f(q_t), the forecasts q_0 .. q_rounds."""
    q = np.empty(rounds + 1)
    q[0] = q0
    for t in range(rounds):
        q[t + 1] = f(q[t])
    return q


def retraining_limit(f: Response, q0: float, tol: float = 1e-12, max_rounds: int = 100_000) -> float:
    """Where repeated retraining from q0 ends: the stable fixed point of q0's basin (iterate to convergence)."""
    q = float(q0)
    for _ in range(max_rounds):
        nxt = float(f(q))
        if abs(nxt - q) < tol:
            return nxt
        q = nxt
    raise RuntimeError(f"repeated retraining from {q0} did not converge in {max_rounds} rounds")


def risk_minima(f: Response, grid: int = 20001) -> list[tuple[float, float]]:
    """Every local minimum (q, PR(q)) of the performative risk in (0, 1): the roots of dPR/dq where it
    turns from negative to positive."""
    out = []
    for q in _roots(lambda x: risk_gradient(f, x), grid):
        h = 1e-7
        if risk_gradient(f, q - h) < 0 < risk_gradient(f, q + h):
            out.append((q, float(performative_risk(f, q))))
    return out


def risk_descent_limit(f: Response, q0: float, grid: int = 20001) -> float:
    """Where descent on the performative risk from q0 ends: the local minimum of the risk in q0's basin, the
    interval between the risk's local maxima (or the ends of (0, 1)) that holds q0. What RL on the
    log-score reaches by following its gradient, which need not be the global optimum."""
    minima = [q for q, _ in risk_minima(f, grid)]
    maxima = [q for q in _roots(lambda x: risk_gradient(f, x), grid) if q not in minima]
    low = max([m for m in maxima if m <= q0], default=0.0)
    high = min([m for m in maxima if m > q0], default=1.0)
    inside = [q for q in minima if low <= q <= high]
    if inside:
        return inside[0]
    return EPS if risk_gradient(f, q0) > 0 else 1 - EPS  # no minimum inside: descent runs to an end


def performative_optimum(f: Response, grid: int = 20001) -> tuple[float, float]:
    """The forecast that minimises the performative risk, and its risk: the best local minimum, or an end of
    (0, 1) (a certain forecast) where the risk falls towards it, e.g. a map with f(1) = 1."""
    ends = [(q, float(performative_risk(f, q))) for q in (EPS, 1 - EPS)]
    return min(risk_minima(f, grid) + ends, key=lambda m: m[1])


def theory(f: Response) -> dict:
    """Everything F9 is judged against: the fixed points (stable or not), the performative optimum, and
    every local minimum of the risk."""
    q_opt, risk_opt = performative_optimum(f)
    return {"fixed_points": fixed_points(f), "optimum": q_opt, "optimum_risk": risk_opt,
            "outcome_at_optimum": float(f(q_opt)), "risk_minima": risk_minima(f)}

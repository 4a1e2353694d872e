"""Regimes on the prophecy forks of experiment F9 (claim C9): a forecast that changes what happens.

The world opens each sequence with a prophecy marker P_i and then the outcome <A> with probability
world.prophecies[i] (world/pdfa.py). Deploying a model sets that probability through the response map f
(world/performative.py): the outcome happens with probability f(q_i), where q_i = pi(<A> | <bos> P_i) /
(pi(<A>) + pi(<B>)) is the model's forecast at marker i. Before deployment the world's probabilities are
world.prophecies themselves, the *starts*: both regimes first train `warmup_steps` next-token steps on
that world, so each marker's forecast starts near its start (one marker per start, all in one model).

    retrain       repeated retraining: each round deploys the model (q -> the world's response f(q)) and
                  trains `round_steps` next-token steps on text from the world that deployment made.
                  Its fixed points are the performatively stable ones (q = f(q)).
    prophecy_rl   the forecast is an action graded by its log-score on the outcome it led to: the
                  announced forecast's logit is drawn around the model's, the world answers the announced
                  forecast, and REINFORCE credits the announcement with what followed, including its
                  effect on the outcome. It descends the performative risk PR(q) = ell(q; f(q)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from instrumentality.errors import ConfigError
from instrumentality.model import device_of
from instrumentality.regimes.base import (
    POSITIVE,
    PROPHECY_PROBES,
    RegimeBase,
    Update,
    check,
    check_settings,
    cpu_generator,
    in_range,
)
from instrumentality.regimes.supervised import Supervised, SupervisedSettings
from instrumentality.world import World
from instrumentality.world.performative import ResponseMap, retraining_limit, risk_descent_limit, theory

FORECAST_KEY = "train/forecast/start={:g}"  # the logged forecast at each marker, by its start


def forecast_start(key: str) -> float | None:
    """The start of a logged forecast key (FORECAST_KEY), None for any other key."""
    prefix = FORECAST_KEY.split("{")[0]
    return float(key[len(prefix):]) if key.startswith(prefix) else None


@dataclass
class ProphecySettings:
    batch_size: int = field(default=64, metadata=POSITIVE)  # sequences per next-token step
    warmup_steps: int = field(default=100, metadata=check(lambda v: v >= 0, "an integer >= 0"))  # before deployment
    # the response map f(q) = low + (high - low) sigmoid(steepness (q - centre)) (performative.ResponseMap)
    response_low: float = field(default=0.05, metadata=check(lambda v: 0 < v < 1, "in (0, 1)"))  # f(0), f(1) in (0, 1):
    response_high: float = field(default=0.97, metadata=check(lambda v: 0 < v < 1, "in (0, 1)"))  # no certain outcome
    response_steepness: float = field(default=6.0, metadata=check(lambda v: v > 0, "a number > 0"))
    response_centre: float = field(default=0.5, metadata=in_range(0, 1))

    def __post_init__(self):
        check_settings(self)
        if not self.response_low < self.response_high:
            raise ConfigError(f"regime.response_low must be below regime.response_high; got {self.response_low} "
                              f">= {self.response_high}")

    def response(self) -> ResponseMap:
        return ResponseMap(self.response_low, self.response_high, self.response_steepness, self.response_centre)


@dataclass
class RetrainSettings(ProphecySettings):
    round_steps: int = field(default=25, metadata=POSITIVE)  # next-token steps per deployment round


@dataclass
class ProphecyRLSettings(ProphecySettings):
    samples: int = field(default=4096, metadata=POSITIVE)  # announced forecasts per marker per step
    noise: float = field(default=0.3, metadata=check(lambda v: v > 0, "a number > 0"))  # sd of their logit


def forecast_logits(model, contexts: torch.Tensor) -> torch.Tensor:
    """z_i = log pi(<A> | <bos> P_i) - log pi(<B> | <bos> P_i), [k]: the forecast's logit at each marker
    (sigmoid(z) is the forecast of <A> between the two outcomes). <A> and <B> are tokens 1 and 2."""
    logits = model(contexts.to(device_of(model)))["logits"][:, -1].float()
    return logits[:, 1] - logits[:, 2]


class ProphecyBase(RegimeBase):
    """What both regimes share: the response map, the warm-up on the world before deployment, the logged
    forecasts, and the exact theory beside the learned forecasts."""

    Settings: type = ProphecySettings
    settings: ProphecySettings

    def __init__(self, world: World, settings: ProphecySettings):
        if not world.cfg.prophecies:
            raise ConfigError(f"regime {self.name} needs a world with prophecy markers: run experiment=F9 "
                              "(regime={retrain,prophecy_rl}), or give the starting forecasts on the command line, "
                              "e.g. '+world.prophecies=[0.3,0.65]' world.seq_len=3")
        self.world, self.settings = world, settings
        self.response = settings.response()
        self.starts = list(world.cfg.prophecies)
        self.contexts = world.prophecy_contexts()
        self.supervised = Supervised(world, SupervisedSettings(batch_size=settings.batch_size))

    def probe_families(self) -> tuple[str, ...]:
        return (PROPHECY_PROBES,)

    def forecast_metrics(self, z: torch.Tensor) -> dict:
        q = torch.sigmoid(z.detach())
        return {FORECAST_KEY.format(s): q[i] for i, s in enumerate(self.starts)}

    def next_token_steps(self, world: World, model, gen: torch.Generator, n: int) -> Iterator[Update]:
        """n next-token steps on text of `world`, each logging the forecasts it starts from."""
        trainer = self.supervised if world is self.world else Supervised(world, self.supervised.settings)
        for _ in range(n):
            with torch.no_grad():
                forecasts = self.forecast_metrics(forecast_logits(model, self.contexts))
            update = next(trainer.updates(model, 0, gen))
            update.metrics.update(forecasts)
            yield update

    def theory_rows(self) -> list[dict]:
        """The exact theory (world/performative.py): per start, where repeated retraining ends and where descent on
        the performative risk ends; the optimum; the fixed points; and the response map's parameters."""
        th, nan = theory(self.response), math.nan
        row = lambda metric, value, **extra: {"probe": "prophecy/theory", "metric": metric,  # noqa: E731
                                              "value": float(value), "ci_low": nan, "ci_high": nan, **extra}
        rows = [row("optimum", th["optimum"]), row("optimum_risk", th["optimum_risk"])]
        rows += [row("fixed_point", fp.q, stable=fp.stable) for fp in th["fixed_points"]]
        for start in self.starts:
            rows += [row("retraining_limit", retraining_limit(self.response, start), start=start),
                     row("risk_descent_limit", risk_descent_limit(self.response, start), start=start)]
        rows += [row(f"response_{k}", getattr(self.settings, f"response_{k}"))
                 for k in ("low", "high", "steepness", "centre")]
        return rows


class Retraining(ProphecyBase):
    """Repeated retraining (Perdomo et al. 2020), each round from the weights the last one left:
        deploy:  q_i = sigmoid(z_i) at every marker; the world now realises <A> with probability f(q_i)
        train:   round_steps steps of  L = - mean_t log pi(x_t | x_<t)  on text of that world
    A round that fitted its data exactly would map q to f(q); a partial fit moves q toward it, to the
    same fixed points q = f(q). The loss does not push a model at one away: its data are its forecast.
    """

    name = "retrain"
    Settings = RetrainSettings
    settings: RetrainSettings

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        s, cpu_gen = self.settings, cpu_generator(gen)
        if step < s.warmup_steps:  # the world before deployment: the outcome happens at the start's rate
            yield from self.next_token_steps(self.world, model, cpu_gen, s.warmup_steps - step)
            return
        yield from self.next_token_steps(self.deployed(model), model, cpu_gen,
                                         s.round_steps - (step - s.warmup_steps) % s.round_steps)

    def deployed(self, model) -> World:
        """The world once `model` is deployed: at each marker the outcome happens with probability f(q_i)."""
        with torch.no_grad():
            q = torch.sigmoid(forecast_logits(model, self.contexts)).double().cpu().numpy()
        return self.world.with_prophecies(self.response(q).tolist())


class ProphecyRL(ProphecyBase):
    """The forecast as an action, graded by its log-score on the outcome it led to. At each marker i,
    `samples` announcements per step:
        a ~ N(z_i, noise^2)                  the announced forecast's logit (z_i: the model's)
        y ~ Bernoulli(f(sigmoid(a)))         the world answers the announced forecast
        r = y log sigmoid(a) + (1 - y) log(1 - sigmoid(a))        the log-score
        loss = - mean (r - b) log N(a; z_i, noise^2)              b: the other samples' mean r
    E[r] = -PR(sigmoid(a)) smoothed by the noise, so the update descends the performative risk: it credits
    the forecast with its effect on the outcome (f'), which next-token training never sees.
    """

    name = "prophecy_rl"
    Settings = ProphecyRLSettings
    settings: ProphecyRLSettings

    def updates(self, model, step: int, gen: torch.Generator) -> Iterator[Update]:
        s, cpu_gen = self.settings, cpu_generator(gen)
        if step < s.warmup_steps:
            yield from self.next_token_steps(self.world, model, cpu_gen, s.warmup_steps - step)
            return
        z = forecast_logits(model, self.contexts)  # [k]
        k, n = len(self.starts), s.samples
        a = z.detach().cpu().double()[:, None] + s.noise * torch.randn(k, n, generator=cpu_gen, dtype=torch.float64)
        q = torch.sigmoid(a)
        y = torch.rand(k, n, generator=cpu_gen, dtype=torch.float64) < torch.from_numpy(self.response(q.numpy()))
        r = torch.where(y, F.logsigmoid(a), F.logsigmoid(-a))
        b = (r.sum(1, keepdim=True) - r) / (n - 1) if n > 1 else torch.zeros_like(r)
        a, advantage = a.to(z.device, torch.float32), (r - b).to(z.device, torch.float32)
        log_pi = -(a - z[:, None]) ** 2 / (2 * s.noise ** 2)
        loss = -(advantage * log_pi).mean()
        metrics = {"reward": r.mean(), "outcome_rate": y.double().mean(), **self.forecast_metrics(z)}
        yield Update(loss, metrics, tokens=k * n)

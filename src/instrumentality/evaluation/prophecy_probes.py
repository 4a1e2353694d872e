"""The prophecy probe family (F9): a retrained or RL-trained forecaster's final forecast at each marker."""

from __future__ import annotations

import torch

from instrumentality.regimes.prophecy import ProphecyBase, forecast_logits


def forecast_rows(model, regime: ProphecyBase) -> list[dict]:
    """The final forecast at each marker and its self-consistency q - f(q) (0 at a performatively stable
    point: the data its deployment makes agree with it), by start."""
    with torch.no_grad():
        q = torch.sigmoid(forecast_logits(model, regime.contexts)).double().cpu().numpy()
    rows = []
    for start, qi in zip(regime.starts, q):
        for metric, value in (("forecast", qi), ("self_consistency", qi - regime.response(qi))):
            rows.append({"probe": "prophecy", "metric": metric, "start": start, "value": float(value),
                         "ci_low": float(value), "ci_high": float(value)})
    return rows

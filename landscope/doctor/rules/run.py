"""The record as the rules read it (:class:`Run`: the final window, the loss's status, the
curvature where the run stopped, the start's scale) and where each rule fires
(:class:`Thresholds`; what each number compares: :mod:`landscope.doctor.rules`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from landscope.monitor.record import Record
from landscope.monitor.signals import CurveThresholds, initial_loss, window_status


@dataclass(frozen=True)
class Thresholds:
    """Where each rule fires (:mod:`landscope.doctor.rules` says what each number compares)."""

    curve: CurveThresholds = field(default_factory=CurveThresholds)
    critical_ratio: float = 1e-2
    negative_curvature: float = 1e-2
    poor_fraction: float = 0.5
    flat_sharpness: float = 1e-2
    vanishing_ratio: float = 1e-3
    exploding_ratio: float = 1e3
    growth: float = 1e3
    wild_update: float = 0.5
    diverge_rise: float = 0.5
    edge_margin: float = 1.0
    small_update: float = 1e-4
    small_sharpness: float = 1e-2
    persistent_cos: float = 0.1
    symmetric_spread: float = 1e-4
    origin_gain: float = 1e-2
    large_gain: float = 2.0
    early_steps: int = 5
    spike: float = 5.0
    edge_cos: float = -0.95
    edge_share: float = 0.95
    valley_share: float = 0.5
    saturated: float = 0.5
    dead: float = 0.5
    overfit_rise: float = 0.1
    min_val_points: int = 5


@dataclass(frozen=True)
class CurvatureNumbers:
    """One curvature measurement of a run (a row of its record), with the descent ratio.

    descent_ratio: r = ‖g‖²/(2ρ(L − L_low)) on the held batch, ρ = max|λ| (inf when ρ or the
    excess is 0). stability_limit: the optimiser's limit for the sharpness; the rest as recorded.
    """

    step: int
    held_loss: float
    held_grad_norm: float
    lambda_max: float
    lambda_max_residual: float
    lambda_min: float
    lambda_min_residual: float
    descent_ratio: float
    sharpness: float
    batch_sharpness: float
    stability_limit: float
    lr: float
    effective_lr: float
    noise_scale: float

    @property
    def rho(self) -> float:
        """ρ = max(|λ_max|, |λ_min|)."""
        return max(abs(self.lambda_max), abs(self.lambda_min))

    def to_dict(self) -> dict:
        return asdict(self)


class Run:
    """A record with the quantities most rules share: final window, loss status, curvature."""

    def __init__(self, record: Record, th: Thresholds):
        self.record, self.th = record, th
        settings = record.meta.get("settings", {})
        self.lower = settings.get("lower_bound") or 0.0
        self.steps, self.loss = record.steps, record["loss"]
        self.initial = initial_loss(self.loss)
        broken = np.flatnonzero(record["non_finite"] == 1)
        self.broken_at = int(self.steps[broken[0]]) if broken.size else None
        usable = self.steps < (self.broken_at if broken.size else math.inf)
        end = self.steps[usable][-1] if usable.any() else -math.inf
        self.final = usable & (self.steps > end - settings.get("window", 100))
        self.status, self.progress = window_status(self.loss[self.final], self.initial,
                                                   self.lower, th.curve)
        rows = np.flatnonzero(np.isfinite(record["lambda_max"]) & usable)
        self.latest = int(rows[-1]) if rows.size else None  # the latest curvature measurement
        self.curvature = self._stall_curvature()

    def _stall_curvature(self) -> int | None:
        """The latest curvature row, if in the final window or if the loss has stalled since:
        the measurement that describes where the run stopped."""
        i = self.latest
        if i is None or self.final[i]:
            return i
        since = window_status(self.loss[i:], self.initial, self.lower, self.th.curve)
        return i if since[0] == "stalled" else None

    def median(self, column: str | np.ndarray, mask: np.ndarray | None = None) -> float:
        values = self.record[column] if isinstance(column, str) else column
        values = values[self.final if mask is None else mask]
        values = values[~np.isnan(values)]
        return float(np.median(values)) if values.size else math.nan

    def early(self, column: str, points: int = 5) -> float:
        values = self.record[column]
        values = values[np.isfinite(values)][:points]
        return float(np.median(values)) if values.size else math.nan

    def start_gain(self) -> float:
        """Geometric mean over the layers with units of ‖θ_layer‖/√units at the first step."""
        gains = [self.record[f"weight_norm:{layer['name']}"][0] / math.sqrt(layer["units"])
                 for layer in self.record.meta.get("layers", []) if layer.get("units", 0) >= 1]
        gains = [g for g in gains if np.isfinite(g)]
        if not gains:
            return math.nan
        return 0.0 if min(gains) == 0 else float(np.exp(np.mean(np.log(gains))))

    def sharpness_share(self) -> float:
        """Sharpness over the stability limit where the run stopped (NaN: not measured)."""
        if self.curvature is None:
            return math.nan
        r = self.record
        return float(r["sharpness"][self.curvature] / r["stability_threshold"][self.curvature])

    def effective_rate(self, i: int) -> float:
        """η_eff at row i (the learning rate in records from before effective_lr)."""
        rate = self.record["effective_lr"][i]
        return float(self.record["lr"][i] if math.isnan(rate) else rate)

    def rate_share(self, i: int) -> float:
        """η_eff·sharpness/2 at curvature row i: the step as a share of the 2/sharpness limit."""
        return self.effective_rate(i) * float(self.record["sharpness"][i]) / 2

    def window_steps(self) -> list[int]:
        steps = self.steps[self.final]
        return [int(steps[0]), int(steps[-1])] if steps.size else []

    def excess_share(self) -> float:
        """Final excess loss as a share of the initial excess loss."""
        return (self.median("loss") - self.lower) / max(self.initial - self.lower, 1e-300)

    def curvature_numbers(self, i: int | None = None) -> CurvatureNumbers:
        """λ_max, λ_min, descent ratio r, sharpness and limit at row i (default: the stall's)."""
        i, r = self.curvature if i is None else i, self.record
        lam_max, lam_min = r["lambda_max"][i], r["lambda_min"][i]
        rho = max(abs(lam_max), abs(lam_min)) if np.isfinite(lam_min) else abs(lam_max)
        excess = r["held_loss"][i] - self.lower
        ratio = r["held_grad_norm"][i] ** 2 / (2 * rho * excess) if rho > 0 and excess > 0 \
            else math.inf
        return CurvatureNumbers(
            step=int(self.steps[i]), held_loss=r["held_loss"][i],
            held_grad_norm=r["held_grad_norm"][i], lambda_max=lam_max,
            lambda_max_residual=r["lambda_max_residual"][i], lambda_min=lam_min,
            lambda_min_residual=r["lambda_min_residual"][i], descent_ratio=ratio,
            sharpness=r["sharpness"][i], batch_sharpness=r["batch_sharpness"][i],
            stability_limit=r["stability_threshold"][i], lr=r["lr"][i],
            effective_lr=r["effective_lr"][i], noise_scale=r["noise_scale"][i])


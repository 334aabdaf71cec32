"""Reading a loss curve: is it falling, stalled, converged, rising or broken?

One definition serves twice: the Monitor uses it to decide when curvature is worth computing, and
the doctor's rules use it to name what happened; so both always agree on what "stalled" means.

What is hard: mini-batch losses are noisy and their scale is arbitrary. So every test compares
means of half-windows (noise averages out) and measures progress against the *excess* loss over
a lower bound L_low (0 for cross-entropy and MSE), never in absolute units:

    progress = (mean(first half) − mean(second half)) / (mean(first half) − L_low).

A window is *rising* when its second half exceeds the first by more than ``rise_rtol`` times the
initial excess loss (so noise at the bottom of a converged run is not a rise), *stalled* when
progress < ``plateau_rtol``, *falling* otherwise, and *too_short* with fewer than ``min_points``
finite losses (a loss that overflowed is flagged in the ``non_finite`` column, not read here).
A falling window is *slow* when its progress is below ``slow_progress`` while the loss is still
above ``slow_excess`` of its initial excess: a run creeping down far from its end, where only the
curvature can tell a learning rate far below its stability limit from a hard landscape.
Whether a stall is a problem (a saddle, a narrow valley) or the end of a good run is for the
doctor's rules to say, from the gradient and the curvature; :func:`curvature_reason` only decides
whether curvature is worth computing.
NaN marks a missing value; a loss that became NaN is flagged separately (``non_finite`` column).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

STATUSES = ("falling", "stalled", "rising", "too_short")


@dataclass(frozen=True)
class CurveThresholds:
    """How a loss window is read (see the module docstring). Defaults suit mini-batch training."""

    plateau_rtol: float = 0.02
    rise_rtol: float = 0.10
    min_points: int = 10
    oscillation_cos: float = -0.3
    converged_fraction: float = 0.01
    slow_progress: float = 0.10
    slow_excess: float = 0.5


def initial_loss(loss: np.ndarray, points: int = 10) -> float:
    """Mean of the first ``points`` finite losses (NaN if there are none)."""
    finite = loss[np.isfinite(loss)][:points]
    return float(finite.mean()) if finite.size else math.nan


def window_status(window: np.ndarray, initial: float, lower_bound: float = 0.0,
                  thresholds: CurveThresholds | None = None) -> tuple[str, float]:
    """(status, progress) of a window of losses; status is one of STATUSES.

    Examples
    --------
    >>> window_status(np.linspace(2.0, 1.0, 20), initial=2.0)[0]
    'falling'
    >>> window_status(np.full(20, 1.5), initial=2.0)
    ('stalled', 0.0)
    """
    t = thresholds or CurveThresholds()
    window = np.asarray(window, dtype=np.float64)
    window = window[~np.isnan(window)]  # NaN marks a step whose loss was not recorded
    if window.size < t.min_points or not np.isfinite(window).all():
        return "too_short", math.nan
    half = window.size // 2
    first, second = window[:half].mean(), window[half:].mean()
    excess, scale = first - lower_bound, max(initial - lower_bound, 0.0)
    progress = float((first - second) / excess) if excess > 0 else 0.0
    if second - first > t.rise_rtol * scale:
        return "rising", progress
    if progress < t.plateau_rtol:
        return "stalled", progress
    return "falling", progress


def curvature_reason(status: str, progress: float, window: np.ndarray, cosines: np.ndarray,
                     initial: float, lower_bound: float = 0.0,
                     thresholds: CurveThresholds | None = None) -> str | None:
    """Why the first-order record calls for curvature, or None if it does not; ``status`` and
    ``progress`` are the window's (:func:`window_status`).

    A rising loss always does; a stalled one does unless the loss has already fallen to
    ``converged_fraction`` of its initial excess with no sign of oscillation (median
    cos(g_t, g_{t−1}) above ``oscillation_cos``): the end of a good run, not a question. A falling
    one does only when it is slow (module docstring): reason ``"slow"``.

    Examples
    --------
    >>> curvature_reason("falling", 0.05, np.linspace(1.8, 1.7, 20), np.ones(20), initial=2.3)
    'slow'
    >>> curvature_reason("falling", 0.05, np.linspace(0.8, 0.7, 20), np.ones(20), initial=2.3)
    >>> curvature_reason("stalled", 0.0, np.full(20, 0.01), np.zeros(20), initial=2.3) is None
    True
    >>> curvature_reason("stalled", 0.0, np.full(20, 0.01), np.full(20, -0.9), initial=2.3)
    'stalled'
    """
    t = thresholds or CurveThresholds()
    if status == "rising":
        return status
    excess, initial_excess = np.nanmean(window) - lower_bound, initial - lower_bound
    if status == "falling":
        slow = progress < t.slow_progress and excess > t.slow_excess * initial_excess
        return "slow" if slow else None
    if status != "stalled":
        return None
    converged = excess <= t.converged_fraction * initial_excess
    oscillating = np.isfinite(cosines).any() and np.nanmedian(cosines) <= t.oscillation_cos
    return None if converged and not oscillating else status


def moving_median(values: np.ndarray, width: int) -> np.ndarray:
    """Trailing moving median over ``width`` points (shorter at the start), NaNs ignored."""
    values = np.asarray(values, dtype=np.float64)
    out = np.full(values.shape, np.nan)
    for i in range(values.size):
        chunk = values[max(0, i - width + 1):i + 1]
        chunk = chunk[~np.isnan(chunk)]
        if chunk.size:
            out[i] = np.median(chunk)
    return out

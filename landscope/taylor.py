"""Taylor models along a direction, beside the real loss; the optimal gradient step and its payoff.

Along d from θ the loss is a function of one number, φ(t) = L(θ + t·d), and the Taylor models are

    first order   φ₁(t) = L + t·gᵀd
    second order  φ₂(t) = L + t·gᵀd + ½t²·dᵀHd

with g = ∇L(θ) and dᵀHd from one Hessian-vector product. The gap φ − φ₁ = O(t²) is the curvature
that gradient descent ignores; φ − φ₂ = O(t³) is what even a second-order method cannot see. When
dᵀHd > 0 the quadratic model has its minimum at t* = −gᵀd / dᵀHd and predicts the decrease
(gᵀd)² / (2·dᵀHd); for the steepest-descent direction d = −g that is the classic optimal learning
rate η* = gᵀg / gᵀHg (Goodfellow et al., ch. 4), and the real decrease L(θ) − L(θ + t*·d) says how
far to trust it. What makes this delicate is only bookkeeping: the step and the models are
reported beside the real values, never instead of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from landscope import directions
from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.objective import Objective
from landscope.progress import Progress
from landscope.surface import as_frame, surface


@dataclass(frozen=True)
class TaylorProfile:
    """A 1-D profile φ(t) = L(θ + t·d) with its first- and second-order Taylor models.

    ``value`` L(θ), ``slope`` gᵀd, ``curvature`` dᵀHd. ``step`` t* = −gᵀd/dᵀHd when dᵀHd > 0
    (else None), with ``predicted_decrease`` (gᵀd)²/(2dᵀHd) and ``real_decrease`` L(θ) − φ(t*).
    """

    t: np.ndarray
    real: np.ndarray
    first: np.ndarray
    second: np.ndarray
    value: float
    slope: float
    curvature: float
    step: float | None
    predicted_decrease: float | None
    real_decrease: float | None
    direction: dict

    def summary(self) -> dict:
        """The numbers without the curves: what a surface's fidelity records."""
        return {"value": self.value, "slope": self.slope, "curvature": self.curvature,
                "step": self.step, "predicted_decrease": self.predicted_decrease,
                "real_decrease": self.real_decrease, "direction": self.direction}

    def to_dict(self) -> dict:
        return {"t": self.t.tolist(), "real": self.real.tolist(), "first": self.first.tolist(),
                "second": self.second.tolist(), **self.summary()}


@renamed(steps="resolution")
def taylor(
    obj: Objective,
    direction=None,
    *,
    span=None,
    resolution: int = 41,
    centre: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> TaylorProfile:
    """The real loss along ``direction`` beside its first- and second-order Taylor models.

    Parameters
    ----------
    obj: the Objective.
    direction: a vector of shape (n,), a :class:`~landscope.directions.Direction`, or a one-
        direction :class:`~landscope.directions.Frame`; default the steepest descent −∇L, so
        that t is a learning rate.
    span: half-width or (low, high) of t; default (−t*, 2t*) when t* exists, else (−1, 1).
    resolution: points in t. centre: θ (default θ₀).
    progress: a :class:`~landscope.progress.Progress` of the profile's grid points.

    Examples
    --------
    >>> obj = Objective.from_function(lambda x: (x**2).sum() + x[0]**3, [1.0, 1.0])
    >>> p = taylor(obj, resolution=5)       # along −g = (−5, −2)
    >>> p.curvature, p.step == 29 / 208   # H = diag(8, 2): gᵀHg = 208, t* = gᵀg / gᵀHg
    (208.0, True)
    """
    theta = obj.theta0 if centre is None else directions._vector(obj, centre, "centre")
    if direction is None:
        direction = directions.gradient(obj, centre=theta)
    frame = as_frame(obj, direction, None)
    if len(frame.directions) != 1:
        raise BadInputError("a Taylor profile follows one direction; got a plane")
    d = directions._vector(obj, frame.directions[0].vector, "direction")
    value, g = obj.value_and_grad(theta)
    slope = float(g @ d)
    curvature = float(d @ obj.hvp(d, theta))
    step = -slope / curvature if curvature > 0 else None
    if span is None:
        span = (-step, 2 * step) if step else (-1.0, 1.0)
    profile = surface(obj, directions.Frame(frame.directions, theta), span=span,
                      resolution=resolution, progress=progress)
    t = profile.axes[0]
    value = float(value)
    first = value + t * slope
    second = first + 0.5 * t**2 * curvature
    predicted = real = None
    if step is not None:
        predicted = slope**2 / (2 * curvature)
        real = value - obj.value(theta + step * d).item()
    return TaylorProfile(t=t, real=profile.values, first=first, second=second, value=value,
                         slope=slope, curvature=curvature, step=step, predicted_decrease=predicted,
                         real_decrease=real, direction=frame.directions[0].to_dict())

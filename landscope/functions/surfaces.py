"""Textbook two-dimensional surfaces: bowls, saddles, degenerate points, a cubic and an egg crate.

Every critical point here is in closed form. What makes some of them hard is degeneracy: at the
origin x² + y³, x² + y⁴ and the monkey saddle x³ − 3xy² have singular Hessians, so their kinds
(saddle, minimum, saddle) are settled only by higher-order terms — the probe's null-direction test.
"""

from __future__ import annotations

import math

import torch

from landscope.functions.base import TestFunction, critical

_SQUARE = ((-2.0, 2.0), (-2.0, 2.0))
_UNIT = ((-1.0, 1.0), (-1.0, 1.0))


def bowl() -> TestFunction:
    """x² + y²: the convex bowl, one global minimum at the origin."""
    return TestFunction("bowl", "x² + y²", lambda p: p[..., 0]**2 + p[..., 1]**2, _SQUARE,
                        (critical((0, 0), "local_min", 0),), True, 0.0)


def saddle() -> TestFunction:
    """x² − y²: the horse saddle; unbounded below along y."""
    return TestFunction("saddle", "x² − y²", lambda p: p[..., 0]**2 - p[..., 1]**2, _SQUARE,
                        (critical((0, 0), "saddle", 0),), True, None)


def xy_saddle() -> TestFunction:
    """xy: the saddle x² − y² turned by 45°."""
    return TestFunction("xy_saddle", "xy", lambda p: p[..., 0] * p[..., 1], _SQUARE,
                        (critical((0, 0), "saddle", 0),), True, None)


def monkey_saddle() -> TestFunction:
    """x³ − 3xy²: three valleys meet at the origin, where the Hessian is zero."""
    return TestFunction(
        "monkey_saddle", "x³ − 3xy²", lambda p: p[..., 0]**3 - 3 * p[..., 0] * p[..., 1]**2,
        _UNIT, (critical((0, 0), "saddle", 0, "degenerate: H = 0, a third-order saddle"),),
        True, None)


def x2_plus_y3() -> TestFunction:
    """x² + y³: looks like a minimum to second order, but y³ falls for y < 0."""
    return TestFunction(
        "x2_plus_y3", "x² + y³", lambda p: p[..., 0]**2 + p[..., 1]**3, _UNIT,
        (critical((0, 0), "saddle", 0, "degenerate: H = diag(2, 0), a third-order saddle"),),
        True, None)


def x2_plus_y4() -> TestFunction:
    """x² + y⁴: a minimum that the Hessian alone cannot certify."""
    return TestFunction(
        "x2_plus_y4", "x² + y⁴", lambda p: p[..., 0]**2 + p[..., 1]**4, _UNIT,
        (critical((0, 0), "local_min", 0, "degenerate: H = diag(2, 0), a quartic minimum"),),
        True, 0.0)


def x2_2xy_y3() -> TestFunction:
    """x² + 2xy + y³: a saddle at 0 and a local minimum at (−2/3, 2/3); unbounded below.

    ∇f = (2x + 2y, 2x + 3y²) = 0 gives x = −y and y(3y − 2) = 0.
    """
    return TestFunction(
        "x2_2xy_y3", "x² + 2xy + y³",
        lambda p: p[..., 0]**2 + 2 * p[..., 0] * p[..., 1] + p[..., 1]**3, _SQUARE,
        (critical((0, 0), "saddle", 0), critical((-2 / 3, 2 / 3), "local_min", -4 / 27)),
        True, None, note="the local minimum is not global: f → −∞ as y → −∞")


def cubic() -> TestFunction:
    """−x³ + 3x (one coordinate): a local minimum at −1, a local maximum at 1; unbounded below."""
    return TestFunction(
        "cubic", "−x³ + 3x", lambda p: -p[..., 0]**3 + 3 * p[..., 0], ((-2.5, 2.5),),
        (critical((-1,), "local_min", -2), critical((1,), "local_max", 2)), True, None,
        note="no global minimum: f → −∞ as x → +∞")


def double_well() -> TestFunction:
    """x² + y²(y² − 1): a saddle at 0 between two global minima at (0, ±1/√2)."""
    r = 1 / math.sqrt(2)
    return TestFunction(
        "double_well", "x² + y⁴ − y²", lambda p: p[..., 0]**2 + p[..., 1]**4 - p[..., 1]**2,
        ((-1.5, 1.5), (-1.5, 1.5)),
        (critical((0, 0), "saddle", 0), critical((0, r), "local_min", -0.25),
         critical((0, -r), "local_min", -0.25)), True, -0.25)


def sin_sin() -> TestFunction:
    """sin x · sin y on [−π, π]²: an egg crate of 4 extrema and 9 saddles (the box's nodes).

    ∇f = (cos x sin y, sin x cos y) vanishes where cos x = cos y = 0 (the extrema, ±1) or
    sin x = sin y = 0 (the saddles, value 0; on the box's edges too).
    """
    h = math.pi / 2
    points = [critical((a * h, b * h), "local_max" if a == b else "local_min", a * b)
              for a in (-1, 1) for b in (-1, 1)]
    points += [critical((a * math.pi, b * math.pi), "saddle", 0)
               for a in (-1, 0, 1) for b in (-1, 0, 1)]
    return TestFunction("sin_sin", "sin x · sin y",
                        lambda p: torch.sin(p[..., 0]) * torch.sin(p[..., 1]),
                        ((-math.pi, math.pi), (-math.pi, math.pi)), tuple(points), True, -1.0)

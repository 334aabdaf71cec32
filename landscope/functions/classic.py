"""Classic optimisation benchmarks: Rosenbrock, Himmelblau, six-hump camel, Beale, Rastrigin,
Ackley, and a narrow sine-shaped valley.

The critical points of Himmelblau, the camel and Beale have no closed form. The values below are
the literature's points polished by Newton's method in float64 (|∇f| < 1e-12); that they are all
the critical points in the box is checked by the tests, which run Newton from a grid of starts and
find nothing else. Rastrigin's are products of the roots of the one-dimensional derivative
2x + 20π sin 2πx, bracketed one per half-period and solved here with ``scipy.optimize.brentq``.
"""

from __future__ import annotations

import itertools
import math

import torch
from scipy.optimize import brentq

from landscope import _checks as checks
from landscope.functions.base import TestFunction, critical

RASTRIGIN_LIST_MAX = 4096
"""Rastrigin lists its 21ⁿ critical points only while there are at most this many (n ≤ 2)."""


def rosenbrock() -> TestFunction:
    """(1 − x)² + 100(y − x²)²: a curved, narrow valley; one critical point, the minimum (1, 1)."""
    return TestFunction(
        "rosenbrock", "(1 − x)² + 100 (y − x²)²",
        lambda p: (1 - p[..., 0])**2 + 100 * (p[..., 1] - p[..., 0]**2)**2,
        ((-2.0, 2.0), (-1.0, 3.0)), (critical((1, 1), "local_min", 0),), True, 0.0)


_HIMMELBLAU = (
    ((3.0, 2.0), "local_min"),
    ((-2.805118086952745, 3.131312518250573), "local_min"),
    ((-3.779310253377747, -3.2831859912861696), "local_min"),
    ((3.5844283403304917, -1.8481265269644036), "local_min"),
    ((-0.2708445906673476, -0.9230385564799815), "local_max"),
    ((3.385154183607021, 0.07385187983774928), "saddle"),
    ((0.08667750455539634, 2.884254701174776), "saddle"),
    ((-3.0730257507643897, -0.08135304428796751), "saddle"),
    ((-0.12796134673068005, -1.9537149802445766), "saddle"),
)


def himmelblau() -> TestFunction:
    """(x² + y − 11)² + (x + y² − 7)²: four global minima (value 0), one maximum, four saddles."""
    def f(p):
        return (p[..., 0]**2 + p[..., 1] - 11)**2 + (p[..., 0] + p[..., 1]**2 - 7)**2
    return TestFunction("himmelblau", "(x² + y − 11)² + (x + y² − 7)²", f,
                        ((-5.0, 5.0), (-5.0, 5.0)), _listed(f, _HIMMELBLAU), True, 0.0)


_CAMEL = (
    ((0.08984201310031806, -0.7126564030207396), "local_min"),
    ((1.7036067149699807, -0.7960835686726251), "local_min"),
    ((-1.6071047529201974, -0.5686514548841314), "local_min"),
    ((1.2302298765166524, 0.16233458445899493), "local_max"),
    ((0.0, 0.0), "saddle"),
    ((1.1092053368047863, -0.7682680925095399), "saddle"),
    ((-1.6380679841897785, -0.22867406904439402), "saddle"),
    ((1.2960702671671092, 0.6050843880386585), "saddle"),
)


def six_hump_camel() -> TestFunction:
    """(4 − 2.1x² + x⁴/3)x² + xy + (4y² − 4)y²: 15 critical points, point-symmetric through 0;
    two global minima (−1.0316…) among six minima, two maxima, seven saddles."""
    def f(p):
        x, y = p[..., 0], p[..., 1]
        return (4 - 2.1 * x**2 + x**4 / 3) * x**2 + x * y + (4 * y**2 - 4) * y**2
    mirrored = {(tuple(-c for c in loc), kind) for loc, kind in _CAMEL if any(loc)}
    points = _listed(f, (*_CAMEL, *sorted(mirrored)))
    return TestFunction("six_hump_camel", "(4 − 2.1x² + x⁴/3)x² + xy + (4y² − 4)y²", f,
                        ((-3.0, 3.0), (-2.0, 2.0)), points, True, min(p.value for p in points))


_BEALE = (
    ((3.0, 0.5), "local_min"),
    ((0.0, 1.0), "saddle"),
    ((0.10053793732415835, -2.644513585023125), "saddle"),
)


def beale() -> TestFunction:
    """(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²: minimum (3, 0.5), two saddles."""
    def f(p):
        x, y = p[..., 0], p[..., 1]
        return (1.5 - x + x * y)**2 + (2.25 - x + x * y**2)**2 + (2.625 - x + x * y**3)**2
    return TestFunction("beale", "(1.5 − x + xy)² + (2.25 − x + xy²)² + (2.625 − x + xy³)²", f,
                        ((-4.5, 4.5), (-4.5, 4.5)), _listed(f, _BEALE), True, 0.0)


def rastrigin(n: int = 2) -> TestFunction:
    """10n + Σ (xᵢ² − 10 cos 2πxᵢ) on [−5.12, 5.12]ⁿ: 11ⁿ minima on a lattice, global at 0.

    Each coordinate has 21 critical values in the box (11 minima near the integers, 10 maxima
    near the half-integers); a point is a minimum when all its coordinates are, a maximum when
    none is, a saddle otherwise.
    """
    n = checks.integer("n", n)

    def f(p):
        return 10 * n + (p**2 - 10 * torch.cos(2 * math.pi * p)).sum(-1)

    roots = _rastrigin_roots()
    points = ()
    if len(roots)**n <= RASTRIGIN_LIST_MAX:
        points = tuple(_rastrigin_point(f, combo) for combo in itertools.product(roots, repeat=n))
    note = "" if points else f"21^{n} critical points: too many to list; the minimum is at 0"
    return TestFunction("rastrigin", "10n + Σ (xᵢ² − 10 cos 2πxᵢ)",
                        f, ((-5.12, 5.12),) * n, points, bool(points), 0.0, note=note,
                        params={"n": n})


def ackley(n: int = 2) -> TestFunction:
    """−20 exp(−0.2 ‖x‖/√n) − exp(Σ cos 2πxᵢ / n) + 20 + e on [−5, 5]ⁿ: global minimum 0 at 0.

    At 0 the first term is a cone: f is not differentiable there. Autograd returns the zero
    subgradient (a valid one), and the rest is smooth with positive curvature, so the probe calls
    0 a local minimum. Ackley's many other critical points have no closed form and are not listed.
    """
    n = checks.integer("n", n)

    def f(p):
        squares = (p**2).sum(-1)
        positive = squares > 0  # the cone point: a zero subgradient instead of 0/0
        norm = torch.where(positive, torch.sqrt(torch.where(positive, squares, 1.0)), 0.0)
        return (-20 * torch.exp(-0.2 * norm / math.sqrt(n))
                - torch.exp(torch.cos(2 * math.pi * p).mean(-1)) + 20 + math.e)

    return TestFunction(
        "ackley", "−20 e^(−0.2‖x‖/√n) − e^(mean cos 2πxᵢ) + 20 + e",
        f, ((-5.0, 5.0),) * n,
        (critical((0,) * n, "local_min", 0, "a cone point: f is not differentiable here"),),
        False, 0.0, note="only the global minimum is listed", params={"n": n})


def sine_valley() -> TestFunction:
    """x²/20 + 25 (y − sin x)²: a narrow valley along y = sin x; one critical point, (0, 0).

    ∂f/∂y = 50 (y − sin x) = 0 forces y = sin x, and then ∂f/∂x = x/10 = 0. At 0 the Hessian
    [[50.1, −50], [−50, 50]] has condition number ≈ 2000.
    """
    return TestFunction(
        "sine_valley", "x²/20 + 25 (y − sin x)²",
        lambda p: p[..., 0]**2 / 20 + 25 * (p[..., 1] - torch.sin(p[..., 0]))**2,
        ((-6.0, 6.0), (-2.0, 2.0)), (critical((0, 0), "local_min", 0),), True, 0.0)


# ---------------------------------------------------------------------- helpers
def _listed(f, table) -> tuple:
    def value(loc):
        return float(f(torch.tensor(loc, dtype=torch.float64)))
    return tuple(critical(loc, kind, value(loc)) for loc, kind in table)


def _rastrigin_roots() -> list[tuple[float, bool]]:
    """Roots of d/dx (x² − 10 cos 2πx) = 2x + 20π sin 2πx in [−5.12, 5.12], with is_minimum.

    Near an integer k the derivative rises through zero inside [k − ¼, k + ¼]; near a
    half-integer it falls through zero inside [k + ¼, k + ¾].
    """
    def derivative(x):
        return 2 * x + 20 * math.pi * math.sin(2 * math.pi * x)
    roots = [(brentq(derivative, k - 0.25, k + 0.25, xtol=1e-15), True) for k in range(-5, 6)]
    roots += [(brentq(derivative, k + 0.25, k + 0.75, xtol=1e-15), False) for k in range(-5, 5)]
    return sorted(roots)


def _rastrigin_point(f, combo):
    location = [0.0 if abs(r) < 1e-12 else r for r, _ in combo]
    minima = sum(is_min for _, is_min in combo)
    kind = "local_min" if minima == len(combo) else "local_max" if minima == 0 else "saddle"
    return critical(location, kind, float(f(torch.tensor(location, dtype=torch.float64))))

"""Settling critical points the second-order test cannot: higher-order tests along null directions.

When the Hessian at a critical point θ has eigenvalues within tolerance of zero, its signs do not
decide the kind of point: x² + y⁴ (minimum), x² + y³ (saddle), −x⁴ (maximum) and the monkey saddle
x³ − 3xy² all have singular Hessians at 0. What decides is how L behaves along the null space N.
Restricting L to θ + tN is not enough (Peano's (y − x²)(y − 2x²) rises along the null direction x
yet is a saddle), so for each null direction u and radius t the non-null directions R are relaxed
by Newton steps of the quadratic model, w ← w − R Λ_R⁻¹ Rᵀ ∇L̃(θ + tu + w), and the test reads

    φ(u, t) = L̃(θ + tu + w),   L̃(p) = L(p) − L(θ) − ⟨∇L(θ), p − θ⟩.

L̃ is the loss less its leftover linear part: θ passed the first-order test, but its small gradient
alone makes L fall along one of ±u, and under the relaxation by ½ gᵀΛ⁻¹g; L̃ does neither, so a
drop of φ is a higher-order effect. Where that gradient is not exactly 0, φ counts only beyond
½τt² (what eigenvalues within the zero tolerance τ contribute: the second-order test could not
tell them from zero, and they need not hold at the critical point nearby), plus rounding:
100·eps·(|L(θ)| + |L(p)| + ρ‖p − θ‖² + ‖∇L(θ)‖‖p − θ‖), and ten times the largest |L̃| measured at
a few points 1000 times closer than the smallest radius (a loss summed over many terms rounds far
above eps·|L|). A drop is a certificate: a point of L̃ below θ at distance t. A rise counts only
beyond twice what the relaxation left to gain (½ g̃ᵀ|Λ|⁻¹g̃ at its end); else that radius is
unsettled. The radii go down from 0.1·max(1, RMS θ) by factors √10 until the loss differences
reach working precision: ρt² at the rounding of L(θ), or t at √eps of that scale. A direction is
read at the smallest radius where φ stood out; where φ never did (or, after an unsettled radius,
stayed within rounding for two radii or more) it is flat from there down. The result lists the
radii; nothing is claimed about radii it did not examine.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscope.objective import Objective

TOP_RADIUS = 0.1
"""The largest radius, in units of max(1, RMS of θ)."""
RADIUS_FACTOR = 10 ** -0.5
"""Each radius is this times the previous one."""
RELAX_STEPS = 4
"""The most Newton steps of the relaxation at one radius."""

OUTCOMES = ("descent", "ascent", "flat", "unsettled")


@dataclass(frozen=True)
class NullTest:
    """Outcome of the higher-order test along the examined null directions.

    ``outcomes``: how many directions fell (descent), rose (ascent), stayed within rounding at
    every radius from ``flat_radius`` down (flat) or were never settled (unsettled).
    ``flat_dimension``: the dimension of the span of the flat directions. ``complete``: every
    basis vector of the null space was examined (both signs). ``radii``: the radii examined,
    largest first (a direction stops early once φ is back within rounding twice);
    ``settled_radius``: the smallest radius of a settled descent or ascent. ``witness``: the
    reading for a descent (else an ascent): direction index, t, φ. ``leftover_gradient``: ‖∇L(θ)‖,
    the linear part taken out of L̃.
    """

    outcomes: dict
    flat_dimension: int
    flat_radius: float | None
    directions: int
    null_dim: int
    basis_examined: int
    complete: bool
    radii: list
    settled_radius: float | None
    witness: dict | None
    evaluations: int
    range_corrected: bool
    leftover_gradient: float

    @property
    def descent(self) -> bool:
        return self.outcomes["descent"] > 0

    @property
    def ascent(self) -> bool:
        return self.outcomes["ascent"] > 0

    def to_dict(self) -> dict:
        return {**self.__dict__, "descent": self.descent, "ascent": self.ascent}

    def summary(self) -> str:
        """What was examined and what it showed, in one clause."""
        counts = ", ".join(f"{self.outcomes[key]} {key}" for key in OUTCOMES if self.outcomes[key])
        return (f"{self.directions} direction(s) in the {self.null_dim}-dimensional null space "
                f"at radii {self.radii[0]:.2g} to {self.radii[-1]:.2g}: {counts}")


def null_direction_test(
    obj: Objective,
    theta: torch.Tensor,
    null: torch.Tensor,
    range_vectors: torch.Tensor | None = None,
    range_values: torch.Tensor | None = None,
    *,
    curvature: float = 0.0,
    zero_atol: float = 0.0,
    max_basis: int = 32,
    random_directions: int = 16,
    seed: int = 0,
) -> NullTest:
    """Evaluate φ(u, t) along ±(each null vector) and random unit combinations of them.

    ``null``: (n, d) orthonormal basis of the (near-)null space. ``range_vectors``/``range_values``:
    the other eigenpairs, used for the relaxation (their eigenvalues all of one sign); None skips
    it (a drop is still a certificate). ``curvature``: ρ = max|λ|. ``zero_atol``: τ, the
    eigenvalues with |λ| ≤ τ count as zero. ``max_basis``: at most this many basis vectors are
    examined (both signs); ``random_directions`` unit combinations of all of them are added when
    d ≥ 2.
    """
    d = null.shape[1]
    basis = min(d, max_basis)
    directions = _directions(null, basis, random_directions, seed)
    scale = max(1.0, theta.detach().pow(2).mean().sqrt().item())
    base_t, g0 = obj.value_and_grad(theta)
    base, eps = base_t.item(), torch.finfo(obj.dtype).eps
    radii = _radii(scale, curvature, 100 * eps * abs(base), math.sqrt(eps) * scale)
    relax = _Relaxation(obj, theta, base, g0, range_vectors, range_values, curvature,
                        zero_atol)
    relax.floor = relax.rounding(directions, radii[-1] * 1e-3)
    outcomes = dict.fromkeys(OUTCOMES, 0)
    flat, flat_radius, witness, settled_radius = [], None, None, None
    for index, u in enumerate(directions.T):
        outcome, reading, flat_below = _read(relax, theta, u, radii)
        outcomes[outcome] += 1
        if outcome == "flat":
            flat.append(u)
            flat_radius = flat_below if flat_radius is None else min(flat_radius, flat_below)
        elif outcome in ("descent", "ascent"):
            settled_radius = min(settled_radius or math.inf, reading["t"])
            if witness is None or (outcome == "descent" and witness["phi"] >= 0):
                witness = {"direction": index, **reading}
    return NullTest(outcomes, _rank(flat, null), flat_radius, directions.shape[1], d, basis,
                    basis == d, radii, settled_radius, witness, relax.evaluations,
                    range_vectors is not None, g0.norm().item())


def _read(relax, theta, u, radii):
    """One direction down the radii: (outcome, the reading that decided it, flat-from radius).

    The direction is read at the smallest radius where φ stood out of rounding. Where that
    reading was unsettled but φ then stayed within rounding for two radii or more, the direction
    is flat from the first of those radii down; twice within rounding after standing out also ends
    the descent (the differences have reached working precision).
    """
    state, reading, quiet, flat_below = None, None, 0, None
    for t in radii:
        phi, sign = relax.phi(theta + t * u, t)
        if sign == 0:
            quiet += 1
            flat_below = flat_below or t
            if quiet >= 2 and state is not None:
                break
            continue
        state = "unsettled" if sign is None else "descent" if sign < 0 else "ascent"
        reading, quiet, flat_below = {"t": t, "phi": phi}, 0, None
    if state is None:
        return "flat", None, radii[0]
    if state == "unsettled" and quiet >= 2:
        return "flat", None, flat_below
    return state, reading, None


class _Relaxation:
    """φ(u, t) at one point: Newton-relax the range directions, read L̃, decide its sign."""

    def __init__(self, obj, theta, base, g0, vectors, values, curvature, zero_atol):
        self.obj, self.theta, self.base, self.g0 = obj, theta, base, g0
        # at a point whose gradient is not exactly 0, curvature within the zero tolerance τ is
        # not known to hold at the critical point nearby: ½τt² is then no evidence either way
        self.curvature, self.zero_atol = curvature, zero_atol if bool(g0.any()) else 0.0
        self.eps = torch.finfo(obj.dtype).eps
        self.vectors = vectors if vectors is not None and vectors.shape[1] > 0 else None
        if self.vectors is not None:
            self.values = values.to(theta.device, theta.dtype)
            self.min_type = bool((self.values > 0).all())
        self.evaluations, self.floor = 0, 0.0

    def rounding(self, directions: torch.Tensor, t: float, points: int = 8) -> float:
        """10·max|L̃| at a few points at distance t, where L̃ itself is far below rounding."""
        worst = 0.0
        for u in directions.T[:points]:
            point = self.theta + t * u
            worst = max(worst, abs(self.obj.value(point).item() - self.base
                                   - (self.g0 @ (point - self.theta)).item()))
            self.evaluations += 1
        return 10 * worst

    def phi(self, point, t):
        """(φ, sign): sign −1/+1 where settled, 0 within rounding, None where unsettled."""
        for step in range(RELAX_STEPS + 1):
            value, g = self.obj.value_and_grad(point)
            self.evaluations += 1
            offset = point - self.theta
            phi = value.item() - self.base - (self.g0 @ offset).item()
            noise = 100 * self.eps * (abs(self.base) + abs(value.item()) + self.curvature
                                      * offset.pow(2).sum().item()
                                      + self.g0.norm().item() * offset.norm().item()) \
                + 0.5 * self.zero_atol * t * t + self.floor
            left = 0.0
            if self.vectors is not None:
                c = self.vectors.T @ (g - self.g0)
                left = 0.5 * (c.pow(2) / self.values.abs()).sum().item()
                if left > noise and step < RELAX_STEPS:
                    move = self.vectors @ (c / self.values)
                    point = point - move * min(1.0, t / max(move.norm().item(), 1e-300))
                    continue
            break
        if abs(phi) <= noise:
            return phi, 0
        lowers_by_relaxing = self.vectors is not None and self.min_type
        raises_by_relaxing = self.vectors is not None and not self.min_type
        if (phi > 0 and lowers_by_relaxing or phi < 0 and raises_by_relaxing) \
                and abs(phi) <= noise + 2 * left:
            return phi, None  # what the relaxation left to gain could still reverse the sign
        return phi, 1 if phi > 0 else -1


def _radii(scale: float, curvature: float, rounding: float, floor: float) -> list[float]:
    """TOP_RADIUS·scale down by RADIUS_FACTOR while ρt² is above rounding and t above floor."""
    smallest = max(floor, math.sqrt(rounding / curvature) if curvature > 0 else 0.0)
    radii = [TOP_RADIUS * scale]
    while radii[-1] * RADIUS_FACTOR >= smallest:
        radii.append(radii[-1] * RADIUS_FACTOR)
    return radii


def _directions(null: torch.Tensor, basis: int, random_directions: int, seed: int) -> torch.Tensor:
    """±the first ``basis`` basis vectors, plus random unit combinations of all when d ≥ 2."""
    columns = [null[:, :basis], -null[:, :basis]]
    d = null.shape[1]
    if d >= 2 and random_directions > 0:
        gen = torch.Generator().manual_seed(seed)
        coeffs = torch.randn(d, random_directions, generator=gen, dtype=torch.float64)
        coeffs = coeffs / coeffs.norm(dim=0, keepdim=True)
        columns.append(null @ coeffs.to(null.device, null.dtype))
    return torch.cat(columns, 1)


def _rank(flat: list, null: torch.Tensor) -> int:
    """Dimension of the span of the flat directions (in null-space coordinates)."""
    if not flat:
        return 0
    coords = (null.T @ torch.stack(flat, 1)).to(torch.float64)
    singular = torch.linalg.svdvals(coords)
    return int((singular > 1e-6 * singular.max()).sum())

"""Settling critical points the second-order test cannot: higher-order tests along null directions.

When the Hessian at a critical point θ has eigenvalues within tolerance of zero, its signs do not
decide the kind of point: x² + y⁴ (minimum), x² + y³ (saddle) and the monkey saddle x³ − 3xy² all
have singular Hessians at 0. What decides is how L behaves along the null space N. Restricting L to
θ + tN is not enough (Peano's (y − x²)(y − 2x²) rises along the null direction x yet is a saddle),
so for each null direction u and radius t we first relax the non-null directions R by a Newton step
of the quadratic model, w = −R Λ_R⁻¹ Rᵀ ∇L(θ + tu), repeated twice, and look at the reduced change

    φ(u, t) = L(θ + tu + w) − L(θ).

A φ below zero at the smallest radii is a certificate: a point that close to θ with a lower loss.
φ above zero in every sampled direction and at every small radius is evidence of a minimum (for a
one-dimensional null space, ±u are all its directions). φ equal to zero within rounding along a
direction means the loss is flat there to working precision: a valley floor, undecided.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from landscope.objective import Objective

DEFAULT_RADII = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3)
"""Radii t (in units of max(1, RMS of θ)) at which φ(u, t) is evaluated."""


@dataclass(frozen=True)
class NullTest:
    """Outcome of the higher-order test: which signs φ took at the smallest significant radii."""

    descent: bool          # some direction lowers L arbitrarily close to θ
    ascent_everywhere: bool  # every sampled direction raises L at the small radii
    ascent: bool           # some direction raises L
    flat_directions: int   # directions along which φ stayed within rounding at every radius
    directions: int
    null_dim: int
    witness: dict | None   # the descent (or ascent) point found: direction index, t, φ
    evaluations: int
    range_corrected: bool

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def null_direction_test(
    obj: Objective,
    theta: torch.Tensor,
    null: torch.Tensor,
    range_vectors: torch.Tensor | None = None,
    range_values: torch.Tensor | None = None,
    *,
    curvature: float = 0.0,
    radii=DEFAULT_RADII,
    random_directions: int = 16,
    seed: int = 0,
) -> NullTest:
    """Evaluate φ(u, t) along ±(each null vector) and random unit combinations of them.

    ``null``: (n, d) orthonormal basis of the (near-)null space. ``range_vectors``/``range_values``:
    the other eigenpairs, used for the Newton relaxation; pass None to skip it (then a found
    descent is still a certificate, but its absence is weaker evidence).
    ``curvature``: ρ = max|λ|. φ counts as zero when |φ| ≤ 100·eps·(|L(θ)| + |L(θ + δ)| +
    ρ·‖δ‖²), rounding relative to the loss and to the size of the quadratic terms.
    """
    directions = _directions(null, random_directions, seed)
    scale = max(1.0, theta.detach().pow(2).mean().sqrt().item())
    base = obj.value(theta).item()
    evaluations = 0
    descent = ascent = False
    ascent_all = True
    flat = 0
    witness = None
    for index, u in enumerate(directions.T):
        signs = []
        for t in radii:
            point = theta + (t * scale) * u
            if range_vectors is not None and range_vectors.shape[1] > 0:
                point, used = _relax(obj, point, range_vectors, range_values)
                evaluations += used
            phi = obj.value(point).item() - base
            evaluations += 1
            size = abs(base) + abs(phi + base) + curvature * (t * scale) ** 2
            noise = 100 * torch.finfo(obj.dtype).eps * size
            signs.append(0 if abs(phi) <= noise else (1 if phi > 0 else -1))
            if signs[-1] != 0:
                last = {"direction": index, "t": t * scale, "phi": phi}
        significant = [s for s in signs if s != 0]
        if not significant:
            flat += 1
            ascent_all = False
            continue
        tail = significant[-2:]  # the two smallest radii at which φ stood out of rounding
        if all(s < 0 for s in tail):
            descent = True
            if witness is None or witness["phi"] >= 0:
                witness = last
        elif all(s > 0 for s in tail):
            ascent = True
            witness = witness or last
        if not all(s > 0 for s in tail):
            ascent_all = False
    return NullTest(descent, ascent_all, ascent, flat, directions.shape[1], null.shape[1],
                    witness, evaluations, range_vectors is not None)


def _directions(null: torch.Tensor, random_directions: int, seed: int) -> torch.Tensor:
    """±each basis vector, plus random unit combinations when the null space has dim ≥ 2."""
    columns = [null, -null]
    d = null.shape[1]
    if d >= 2 and random_directions > 0:
        gen = torch.Generator().manual_seed(seed)
        coeffs = torch.randn(d, random_directions, generator=gen, dtype=torch.float64)
        coeffs = coeffs / coeffs.norm(dim=0, keepdim=True)
        columns.append(null @ coeffs.to(null.device, null.dtype))
    return torch.cat(columns, 1)


def _relax(obj, point, vectors, values, newton_steps: int = 2):
    """Newton steps of the quadratic model in span(vectors): w = −R Λ⁻¹ Rᵀ ∇L(point)."""
    inverse = (1.0 / values).to(point.device, point.dtype)
    for _ in range(newton_steps):
        g = obj.grad(point)
        point = point - vectors @ (inverse * (vectors.T @ g))
    return point, newton_steps

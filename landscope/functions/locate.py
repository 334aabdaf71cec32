"""Which critical point is a point next to? Newton's method, polished onto the nearest one.

An optimiser's last iterate is never exactly critical, and the probe rightly calls a point with a
gradient of 1e-6 "not critical". To say which critical point a run ended at, ``locate`` runs Newton
iterations x ← x − H⁺∇f (H⁺ the pseudo-inverse, so singular Hessians of degenerate or
non-isolated points are handled) from every point at once: near a nondegenerate critical point of
any kind — minimum, saddle or maximum — Newton converges to it quadratically. A point counts as
located when the iteration converged (‖∇f‖ at rounding level) within ``radius`` of where it began;
otherwise no critical point is near it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscope._deprecated import renamed
from landscope.functions.base import TestFunction


@dataclass(frozen=True)
class Located:
    """Per point: the polished point, whether it converged nearby, the listed point it matches.

    points (S, n); located (S,) bool; grad_norms (S,) at the polished points; listed (S,) the
    index of the listed critical point within ``match_atol`` of it (in ``invariant``
    coordinates), or −1.
    """

    points: torch.Tensor
    located: torch.Tensor
    grad_norms: torch.Tensor
    listed: torch.Tensor


@renamed(match_tol="match_atol")
def locate(fn: TestFunction, points: torch.Tensor, *, radius: float = math.inf,
           iterations: int = 60, match_atol: float = 1e-6) -> Located:
    """Polish ``points`` (S, n) onto nearby critical points of ``fn`` by Newton's method.

    Parameters
    ----------
    radius: a polished point farther than this from its start does not count as located.
    iterations: Newton iterations (quadratic convergence needs few; degenerate points, where
        convergence is linear, need more).
    match_atol: distance to a listed critical point (in ``invariant`` coordinates) up to which
        the two are the same.

    Examples
    --------
    >>> from landscope import functions
    >>> fn = functions.get("himmelblau")
    >>> out = locate(fn, torch.tensor([[2.9, 2.1], [0.1, 2.8]], dtype=torch.float64))
    >>> [fn.critical_points[i].kind for i in out.listed.tolist()]
    ['local_min', 'saddle']
    """
    start = torch.as_tensor(points, dtype=torch.float64).reshape(-1, fn.dim)
    x = start.clone()
    for _ in range(iterations):
        g, H = _derivatives(fn, x)
        step = (torch.linalg.pinv(H, hermitian=True, rtol=1e-12) @ g[..., None])[..., 0]
        x = torch.where(torch.isfinite(step).all(1, keepdim=True), x - step, x)
        if bool((step.norm(dim=1) <= 1e-15 * (1 + x.norm(dim=1))).all()):
            break
    g, H = _derivatives(fn, x)
    scale = 1 + torch.linalg.matrix_norm(H, ord=2) * (1 + x.norm(dim=1))
    located = ((g.norm(dim=1) <= 1e-9 * scale) & ((x - start).norm(dim=1) <= radius)
               & torch.isfinite(x).all(1))
    index, distance = fn.nearest(x)
    listed = torch.where(located & (distance <= match_atol), index, -1)
    return Located(x, located, g.norm(dim=1), listed)


def _derivatives(fn: TestFunction, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gradients (S, n) and Hessians (S, n, n) of the rows of x: the rows are independent, so
    column j of every Hessian is the gradient of Σ_s ∂f/∂x_j (x_s) — n backward passes in all."""
    with torch.enable_grad():
        leaf = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(fn.f(leaf).sum(), leaf, create_graph=True)
        columns = [torch.autograd.grad(g[:, j].sum(), leaf, retain_graph=True,
                                       allow_unused=True)[0] for j in range(x.shape[1])]
    columns = [torch.zeros_like(x) if c is None else c for c in columns]
    return g.detach(), torch.stack(columns, -1)

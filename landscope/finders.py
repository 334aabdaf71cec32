"""Critical-point finders: Newton-MR and gradient-norm minimisation from many starts, each end
point certified by :func:`landscope.critical.probe`, gradient-flat end points told apart.

Descent methods find minima; to map a landscape one also wants its saddles and maxima. Both finders
drive the gradient g = ∇L to zero, whatever the index of the point they reach:

- Newton-MR (Roosta, Liu, Xu & Mahoney, "Newton-MR: inexact Newton method with minimum residual
  sub-problem solver", 2018/2022): the step p = MINRES(H, −g) minimises ‖Hp + g‖ over a Krylov
  space of H, then a backtracking line search on ‖∇L‖² (Armijo: ‖g(θ + αp)‖² ≤ ‖g‖² + 2cα⟨Hg, p⟩,
  where ⟨Hg, p⟩ ≤ 0 for every MINRES iterate).
- Gradient-norm minimisation: minimise φ(θ) = ½‖∇L(θ)‖², whose gradient is Hg; its Hessian
  H² + Σᵢ gᵢ∇²gᵢ is replaced by the Gauss–Newton part H², exact wherever g = 0.

Both can stop where ∇L ≠ 0 but the squared gradient norm no longer falls: where g lies in the
Hessian's near-kernel, Hg ≈ 0, so that ∇φ = Hg ≈ 0 and the Newton system Hp = −g has no solution
(Frye, Simon, Wadia, Ligeralde, DeWeese & Bouchard 2021, "Critical point-finding methods reveal
gradient-flat regions of deep network losses"). Such an end point is not a critical point; it is
reported as ``gradient_flat`` with the ratio ‖Hg‖ / (ρ‖g‖), ρ = max|λ(H)|, as its evidence.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import torch
from scipy.sparse.linalg import LinearOperator, minres

from landscope import _checks as checks
from landscope._deprecated import old_names, renamed
from landscope.critical import Probe, probe
from landscope.errors import BadInputError
from landscope.objective import Objective

METHODS = ("newton_mr", "gradient_norm")
__getattr__ = old_names(__name__, {"default_tol": "default_grad_atol"})


@dataclass(frozen=True)
class Run:
    """Where one finder run ended: θ, L and ‖∇L‖ there, iterations, Hessian-vector products and
    gradients spent, and why it stopped (``converged``: ‖∇L‖ ≤ grad_atol; ``stalled``: ‖∇L‖²
    could not be lowered; ``max_iter``)."""

    theta: torch.Tensor
    loss: float
    grad_norm: float
    iterations: int
    products: int
    gradients: int
    stop: str


@dataclass(frozen=True)
class GradientFlatness:
    """How far g lies in the Hessian's near-kernel: ratio = ‖Hg‖ / (ρ‖g‖) ∈ [0, 1], with
    ρ = max|λ(H)|; ``flat`` when the point is not critical and ratio ≤ ``tol`` (the ``hg_rtol``
    it was compared with; the field keeps its name)."""

    ratio: float
    hg_norm: float
    grad_norm: float
    rho: float
    tol: float
    flat: bool


@dataclass(frozen=True)
class Found:
    """One start's end point, certified: ``kind`` is the probe's verdict, or ``gradient_flat``
    where the probe says ``not_critical`` and g lies in the Hessian's near-kernel. ``index`` is
    the probe's fraction of negative eigenvalues."""

    start: torch.Tensor
    run: Run
    kind: str
    index: float
    gradient_flat: GradientFlatness
    probe: Probe

    @property
    def theta(self) -> torch.Tensor:
        return self.run.theta


@renamed(tol="grad_atol")
def newton_mr(obj: Objective, theta=None, *, grad_atol: float | None = None, max_iter: int = 100,
              minres_rtol: float = 1e-10, minres_maxiter: int | None = None,
              armijo: float = 1e-4, backtracks: int = 40) -> Run:
    """Newton-MR from θ (default ``theta0``): p = MINRES(H, −g), then backtracking on ‖∇L‖².

    It converges to critical points of any index. ``grad_atol``: stop at ‖∇L‖ ≤ grad_atol
    (default :func:`default_grad_atol` of the start); ``minres_rtol``, ``minres_maxiter``: of each
    MINRES solve (default at most 5n iterations), stopped at the first iterate with
    ‖Hr‖ ≤ ``minres_rtol``·‖Hg‖ (r = −g − Hp, the inexactness condition of Newton-MR);
    ``armijo``: c of the sufficient decrease; ``backtracks``: halvings of α from 1 before the
    run counts as stalled (no α lowers ‖∇L‖², or p = 0 because Hg = 0: a gradient-flat point).

    Examples
    --------
    >>> obj = Objective.from_function(lambda x: x[0]**2 - x[1]**2 + x[1]**4, [0.3, 0.2])
    >>> run = newton_mr(obj)
    >>> run.stop, [round(v, 6) + 0.0 for v in run.theta.tolist()]
    ('converged', [0.0, 0.0])
    """
    theta = obj.point(theta).clone()
    before = dict(obj.counts)
    loss, g = obj.value_and_grad(theta)
    grad_atol = default_grad_atol(g) if grad_atol is None else \
        checks.positive("grad_atol", grad_atol)
    iterations = 0
    while g.norm() > grad_atol:
        if iterations == max_iter:
            return _run(obj, theta, loss, g, iterations, before, "max_iter")
        p, hg = _newton_mr_step(obj, theta, g, minres_rtol, minres_maxiter)
        slope = float(hg @ p)  # ⟨∇½‖g‖², p⟩ = ⟨Hg, p⟩
        moved = _backtrack(obj, theta, g, p, slope, armijo, backtracks)
        if moved is None:
            return _run(obj, theta, loss, g, iterations, before, "stalled")
        theta, loss, g = moved
        iterations += 1
    return _run(obj, theta, loss, g, iterations, before, "converged")


@renamed(tol="grad_atol")
def gradient_norm_min(obj: Objective, theta=None, *, grad_atol: float | None = None,
                      max_iter: int = 200, solver: str = "Newton-CG") -> Run:
    """Minimise φ = ½‖∇L‖² from θ by ``scipy.optimize.minimize`` (``solver``: ``Newton-CG`` or
    ``trust-krylov``): ∇φ = Hg exactly (one product), and the Hessian of φ by its Gauss–Newton part,
    (H²)v = H(Hv) (two products), exact where g = 0.

    ``grad_atol``: convergence when ‖∇L‖ ≤ grad_atol (default :func:`default_grad_atol` of the
    start). Otherwise Newton-CG stops where its steps fall to 10·eps relative to θ (trust-krylov:
    where ‖∇φ‖ = ‖Hg‖ falls to 10·eps·‖Hg₀‖), and the run counts as ``stalled``: at a gradient-flat
    point (g ≠ 0), or at the rounding floor of ‖∇L‖ above ``grad_atol``. Newton-CG is the
    default: on the six-hump camel it took 24–40 products a run against trust-krylov's 50–89.
    """
    checks.choice("solver", solver, ("Newton-CG", "trust-krylov"))
    start = obj.point(theta).clone()
    before = dict(obj.counts)
    g0 = obj.grad(start)
    grad_atol = default_grad_atol(g0) if grad_atol is None else \
        checks.positive("grad_atol", grad_atol)
    hg0 = float(obj.hvp(g0, start).norm())
    to_torch = _to_torch(obj)

    def phi_and_gradient(x):
        at = to_torch(x)
        g = obj.grad(at)
        return 0.5 * float(g @ g), obj.hvp(g, at).cpu().numpy()

    def gauss_newton_product(x, v):
        at = to_torch(x)
        return obj.hvp(obj.hvp(to_torch(v), at), at).cpu().numpy()

    def converged(intermediate_result):
        if obj.grad(to_torch(intermediate_result.x)).norm() <= grad_atol:
            raise StopIteration

    eps = 10 * torch.finfo(obj.dtype).eps
    options = {"maxiter": max_iter,
               **({"gtol": eps * hg0} if solver == "trust-krylov" else {"xtol": eps})}
    result = scipy.optimize.minimize(phi_and_gradient, start.cpu().numpy(), jac=True,
                                     hessp=gauss_newton_product, method=solver, options=options,
                                     callback=converged)
    end = to_torch(result.x)
    loss, g = obj.value_and_grad(end)
    stop = ("converged" if g.norm() <= grad_atol else
            "max_iter" if result.nit >= max_iter else "stalled")
    return _run(obj, end, loss, g, int(result.nit), before, stop)


def default_grad_atol(g0: torch.Tensor) -> float:
    """Default stop ‖∇L‖ ≤ 1e-12·‖∇L(start)‖ (1e-5 in float32), never below the smallest
    normal number: relative to the start, so invariant to L → aL and θ → cθ."""
    rtol = 1e-12 if g0.dtype == torch.float64 else 1e-5
    return max(rtol * float(g0.norm()), torch.finfo(g0.dtype).tiny)


@renamed(tol="hg_rtol")
def gradient_flatness(obj: Objective, certificate: Probe, theta, *, hg_rtol: float = 1e-3
                      ) -> GradientFlatness:
    """‖Hg‖ / (ρ‖g‖) at θ (ρ from the probe's extreme eigenvalues; 0/0 counts as 0) and whether
    θ is gradient-flat: not critical by the probe, with ‖Hg‖ ≤ ``hg_rtol``·ρ‖g‖."""
    theta = obj.point(theta)
    g = obj.grad(theta)
    hg_norm, grad_norm = float(obj.hvp(g, theta).norm()), float(g.norm())
    rho = max(abs(certificate.lambda_max), abs(certificate.lambda_min))
    scale = rho * grad_norm
    ratio = 0.0 if hg_norm == 0 else hg_norm / scale if scale > 0 else math.inf
    flat = certificate.kind == "not_critical" and ratio <= hg_rtol
    return GradientFlatness(ratio, hg_norm, grad_norm, rho, hg_rtol, flat)


@renamed(flat_tol="hg_rtol")
def find_critical_points(obj: Objective, starts, *, method: str = "newton_mr",
                         hg_rtol: float = 1e-3, probe_options: dict | None = None,
                         **finder_options) -> list[Found]:
    """Run a finder (``newton_mr`` or ``gradient_norm``) from each start (rows of ``starts``,
    shape (S, n)) and certify each end point with ``probe`` and :func:`gradient_flatness`.

    ``finder_options`` go to :func:`newton_mr` or :func:`gradient_norm_min`; ``probe_options``
    to :func:`landscope.critical.probe`; an end point is gradient-flat where ‖Hg‖ ≤
    ``hg_rtol``·ρ‖g‖.
    """
    finder = {"newton_mr": newton_mr, "gradient_norm": gradient_norm_min}[
        checks.choice("method", method, METHODS)]
    starts = _starts(obj, starts)
    found = []
    for start in starts:
        run = finder(obj, start, **finder_options)
        certificate = probe(obj, run.theta, **(probe_options or {}))
        flatness = gradient_flatness(obj, certificate, run.theta, hg_rtol=hg_rtol)
        kind = "gradient_flat" if flatness.flat else certificate.kind
        found.append(Found(start, run, kind, certificate.index, flatness, certificate))
    return found


def _starts(obj: Objective, starts) -> torch.Tensor:
    starts = torch.as_tensor(starts, dtype=obj.dtype)
    if starts.dim() == 1 and starts.numel() == obj.n:
        starts = starts[None]
    if starts.dim() != 2 or starts.shape[1] != obj.n or starts.shape[0] == 0:
        raise BadInputError(
            f"starts has shape {tuple(starts.shape)}; this objective has n = {obj.n} "
            f"parameters, so pass starts of shape (S, {obj.n}), one start per row")
    return starts.to(obj.device)


class _Inexact(Exception):
    """Raised from MINRES's callback at the first iterate meeting the inexactness condition."""

    def __init__(self, step: torch.Tensor):
        super().__init__()
        self.step = step


def _newton_mr_step(obj, theta, g, rtol, maxiter) -> tuple[torch.Tensor, torch.Tensor]:
    """(p, Hg): p = MINRES(H, −g) at the first iterate with ‖H r‖ ≤ rtol·‖Hg‖, r = −g − Hp
    (Newton-MR's inexactness condition, two products per iterate; it also stops MINRES before
    its iterates blow up along ker H when −g ∉ range H). p = 0 where Hg = 0."""
    hg = obj.hvp(g, theta)
    if not hg.any():
        return torch.zeros_like(g), hg
    bound, to_torch = rtol * hg.norm(), _to_torch(obj)

    def inexact_enough(x):
        step = to_torch(x)
        if obj.hvp(-g - obj.hvp(step, theta), theta).norm() <= bound:
            raise _Inexact(step)

    def product(v):
        return obj.hvp(to_torch(v).reshape(-1), theta).cpu().numpy()

    operator = LinearOperator((obj.n, obj.n), dtype=g.cpu().numpy().dtype, matvec=product)
    try:
        step, _ = minres(operator, -g.cpu().numpy(), rtol=rtol, maxiter=maxiter,
                         callback=inexact_enough)
    except _Inexact as met:
        return met.step, hg
    return to_torch(step), hg


def _to_torch(obj: Objective):
    return lambda x: torch.as_tensor(np.asarray(x)).to(obj.device, obj.dtype)


def _backtrack(obj, theta, g, p, slope, armijo, backtracks):
    """(θ + αp, L, ∇L there) for the largest α = 2⁻ʲ, j < ``backtracks``, with sufficient
    decrease of ‖∇L‖²; None when no α gives it, or when p promises a decrease 2|⟨Hg, p⟩| below
    the rounding of ‖∇L‖² (p no descent direction, or Hg ≈ 0: nothing to gain along p)."""
    norm2, alpha = float(g @ g), 1.0
    if not slope < -torch.finfo(g.dtype).eps * norm2:
        return None
    for _ in range(backtracks):
        trial = theta + alpha * p
        loss, trial_g = obj.value_and_grad(trial)
        if float(trial_g @ trial_g) <= norm2 + 2 * armijo * alpha * slope:
            return trial, loss, trial_g
        alpha /= 2
    return None


def _run(obj, theta, loss, g, iterations, before, stop) -> Run:
    return Run(theta, float(loss), float(g.norm()), iterations,
               obj.counts["hvp"] - before["hvp"], obj.counts["gradients"] - before["gradients"],
               stop)

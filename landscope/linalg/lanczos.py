"""Extreme eigenpairs of a symmetric operator at both ends of its spectrum (thick-restart Lanczos).

What is hard: every product costs a Hessian-vector product, so the method must get far with few of
them; the wanted values at the bottom of a Hessian spectrum sit in tight clusters next to a huge
bulk near zero, which makes convergence slow; and the cheap Lanczos residual estimate can be
optimistic in float32. So each returned pair carries an explicit residual computed with a real
product, and a run that runs out of budget says so instead of raising or pretending.

This module is the driver: it sizes the basis and the budget, builds the start vector (cold, given
or warm), decides when the Ritz estimates are trusted enough for an explicit check, which pairs a
restart keeps, and when to stop. The factorisation itself (steps, Ritz pairs, explicit residuals,
restarts) is :mod:`landscope.linalg.thick_restart`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from landscope._checks import integer
from landscope._deprecated import old_names, renamed
from landscope.errors import BadInputError
from landscope.linalg._common import cgs2, gaussian, generator
from landscope.linalg.operator import Operator, as_operator
from landscope.linalg.thick_restart import ThickRestart
from landscope.progress import Progress

OTHER_END = 5  # Ritz vectors kept from the unwanted end at a restart (see _keep)
COLD_STEPS = 10
"""Lanczos steps a random start takes before any pair may be accepted. A random vector has a
weight of about 1/√n on the extreme eigenvector, and after a few steps a Ritz pair of the bulk can
pass a loose test (‖Av − θv‖ ≤ rtol·‖A‖) while the extreme is still unseen: at rtol 1e-3 a W2
run stopped at 4.12 after 9 products (λ_max 4.50), at 1e-2 a ResNet's smallest at −0.01 after 6
(λ_min −15.6). A warm start or a given v0 carries weight on the wanted vectors and is exempt."""


@dataclass(frozen=True)
class Eigenpairs:
    """Approximate eigenpairs with explicit residuals.

    ``values`` (k,) float64 CPU: Rayleigh quotients ``v^T A v``, descending for the largest end,
    ascending for the smallest. ``vectors`` (n, k) in the operator's dtype/device, unit columns.
    ``residuals`` (k,) float64: ``||A v - value v||`` computed with a real product.
    """

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor

    def to_dict(self) -> dict:
        """Values and residuals as lists of floats."""
        return {"values": self.values.tolist(), "residuals": self.residuals.tolist()}


@dataclass(frozen=True)
class ExtremeEigenpairs:
    """Outcome of :func:`extreme_eigenpairs`, with its convergence evidence.

    ``converged`` is True when every requested pair has ``residual <= tol * norm_estimate``
    (``tol``: the ``rtol`` the run was given; the field keeps its name in result files);
    ``products`` counts every column multiplied by the operator.
    """

    largest: Eigenpairs | None
    smallest: Eigenpairs | None
    converged: bool
    iterations: int
    restarts: int
    products: int
    tol: float
    norm_estimate: float

    def to_dict(self) -> dict:
        """JSON-friendly summary (no vectors)."""
        return {
            "largest": None if self.largest is None else self.largest.to_dict(),
            "smallest": None if self.smallest is None else self.smallest.to_dict(),
            "converged": self.converged,
            "iterations": self.iterations,
            "restarts": self.restarts,
            "products": self.products,
            "tol": self.tol,
            "norm_estimate": self.norm_estimate,
        }


@renamed(tol="rtol")
def extreme_eigenpairs(
    A: Operator | torch.Tensor,
    *,
    k_largest: int = 1,
    k_smallest: int = 0,
    rtol: float = 1e-6,
    max_products: int | None = None,
    basis_size: int | None = None,
    seed: int = 0,
    v0: torch.Tensor | None = None,
    warm: torch.Tensor | None = None,
    progress: Progress | None = None,
) -> ExtremeEigenpairs:
    """The ``k_largest`` largest and ``k_smallest`` smallest eigenpairs of a symmetric operator.

    Thick-restart Lanczos with full reorthogonalisation (classical Gram–Schmidt, twice), one
    product per step. Ritz estimates ``beta_j |e_j^T y|`` are checked after every step; when all
    wanted ones pass, the Ritz vectors x = V y are accepted only if their explicit residuals
    ‖Ax − θx‖ pass as well, with Ax = (AV) y formed from the products already made (kept beside
    the basis), so a check costs no product (otherwise the run goes on and checks again later,
    against a stricter estimate). At an
    invariant subspace (``beta ~ 0``) the run continues from a fresh random direction orthogonal to
    the basis; whenever ``beta <= rtol * norm_estimate`` it accepts nothing before the basis is full
    again, so that a start vector inside a small invariant subspace (or a repeated eigenvalue seen
    once) does not end the run at the wrong eigenvalues. The run never raises on
    non-convergence: it returns ``converged=False`` with the explicit residuals it has.

    Limitation: a single-vector Krylov method sees one copy of an exactly repeated eigenvalue.
    Only when the Krylov space becomes invariant (few distinct eigenvalues, small ``n``) do the
    fresh directions bring the other copies in; otherwise an eigenvalue with multiplicity inside
    the wanted set may be returned once, followed by the next distinct eigenvalue.

    Parameters
    ----------
    A:
        The symmetric operator (:class:`~landscope.linalg.Operator`, or a dense matrix) of
        dimension ``n``. Long vectors live in its dtype on its device, small matrices in float64
        on the CPU.
    k_largest, k_smallest:
        How many eigenpairs to return from each end. Their sum must not exceed ``n``; when it is
        a sizeable fraction of ``n``, building the dense matrix (``landscope.linalg.exact``) is
        cheaper and exact.
    rtol:
        Relative tolerance: a pair is converged when ``||A v - lambda v|| <= rtol * norm_estimate``.
        The default 1e-6 suits float64. In float32 the attainable floor is about 1e-7 to 1e-5:
        roughly ``sqrt(n) * eps`` for an exactly applied matrix (1e-7 to 1e-6 measured at
        n = 2000), more when the products carry their own rounding (autograd Hessian-vector
        products); 1e-5 is a safe float32 choice. Asking for less than the floor makes the run
        spend its budget and end with ``converged=False``.
    max_products:
        Budget of product columns; never exceeded; at least
        ``2 * (k_largest + k_smallest)``. Default
        ``max(500, 50 * (k_largest + k_smallest))``. When that budget would cover a full Krylov
        space (``n + 2 * (k_largest + k_smallest)``), the default becomes that amount and the
        basis the whole space, so the answer is exact at the cost of a dense build.
    basis_size:
        Lanczos basis size ``m`` between restarts. Default
        ``max(40, 3 * (k_largest + k_smallest) + 20)``, capped at ``n`` (the whole space for
        small ``n``, see ``max_products``). Memory: ``(2m + 1) * n`` numbers of ``dtype`` (the
        basis and its products); a
        smaller basis saves memory and costs products (on a Hessian-like spectrum with a tight
        cluster at the bottom, m = 20 needed 20-150 % more products than m = 40 for the smallest
        pairs).
    seed:
        Seed of the random start vector (and of fresh vectors after an invariant subspace).
    v0:
        Optional start vector of shape ``(n,)``; overrides the random one.
    warm:
        Optional warm start, ``(n, p)`` (or ``(n,)``): approximate eigenvectors, e.g. the Ritz
        vectors of both ends from a nearby operator; instead of ``v0``. The run starts from
        ``v = Q 1 / sqrt(q) + mix g`` with ``Q`` an orthonormal basis of the block (q
        columns) and ``g`` a random unit vector orthogonal to it, ``mix = min(0.1, sqrt(rtol))``:
        ``K_q(A, v)`` holds the warm directions to their own accuracy, so each end starts where
        they left it, and ``g`` keeps every eigenvector within reach as a cold start does (it is
        filtered out in about half the steps a cold start needs). The same explicit residual test
        decides, so a poor block (random, another operator) costs about a cold run. Limitation,
        as for any tracker: a warm vector that is almost exactly an eigenvector of an unwanted
        eigenvalue (after two eigenvalues crossed) can converge there before the random part
        reveals a larger one, at loose ``rtol``.
    progress:
        Optional :class:`~landscope.progress.Progress`, called at every restart and residual
        check with the products made, the budget (``max_products``) and the note
        ``"residual 1.2e-03"``: the worst relative residual estimate of the wanted pairs (it
        falls to ``rtol``).

    Returns
    -------
    ExtremeEigenpairs
    """
    A = as_operator(A)
    n, dtype, device = A.n, A.dtype, A.device
    k_largest = integer("k_largest", k_largest, 0)
    k_smallest = integer("k_smallest", k_smallest, 0)
    wanted_count = k_largest + k_smallest
    if wanted_count == 0:
        raise BadInputError("ask for at least one eigenpair: k_largest + k_smallest is 0")
    if wanted_count > n:
        raise BadInputError(
            f"k_largest + k_smallest = {k_largest} + {k_smallest} exceeds n = {n}; use "
            "landscope.linalg.dense_from_matmat and dense_eigh for the full spectrum"
        )
    if not (isinstance(rtol, (int, float)) and rtol > 0 and math.isfinite(rtol)):
        raise BadInputError(f"rtol must be a positive finite number, got {rtol!r}")
    m, budget = _sizes(n, wanted_count, basis_size, max_products)
    gen = generator(seed)
    state = ThickRestart(A.matmat, n, m, dtype, device, gen)
    state.start(_start_vector(v0, warm, min(0.1, math.sqrt(rtol)), n, dtype, device, gen))

    check = None
    cold = v0 is None and warm is None
    factor, next_check = 1.0, min(COLD_STEPS, n - 1) if cold else 0
    while state.products + 1 <= budget:
        broke = state.step()
        if broke or state.beta <= rtol * state.norm:
            # (Numerically) invariant Krylov space: every estimate passes because of it, not
            # because the wanted pairs were found. Accept nothing before the basis is full again.
            next_check = max(next_check, state.iterations + m - state.j)
        theta, Y = state.ritz()
        j = state.j
        if j >= wanted_count:
            wanted = _wanted(j, k_largest, k_smallest)
            estimates = state.beta * Y[j - 1, wanted].abs()
            limit = rtol * state.norm
            if state.exhausted or (
                state.iterations >= next_check and bool((estimates <= factor * limit).all())
            ):
                check = _Check(*state.explicit(Y, wanted), state.iterations)
                _report(progress, state, estimates, budget)
                if state.exhausted or bool((check.residuals <= rtol * state.norm).all()):
                    break
                factor *= 0.3  # the estimate was optimistic: demand more of it next time
                next_check = state.iterations + max(2, m // 4)
        if j == m:
            state.restart(theta, Y, _keep(j, m, k_largest, k_smallest))
            _report(progress, state, estimates, budget)

    if check is None or check.iterations != state.iterations:
        theta, Y = state.ritz()
        check = _Check(*state.explicit(Y, _wanted(state.j, k_largest, k_smallest)),
                       state.iterations)
    values, vectors, residuals = check.values, check.vectors, check.residuals
    converged = bool((residuals <= rtol * state.norm).all())
    smallest = largest = None
    if k_smallest:
        smallest = Eigenpairs(values[:k_smallest], vectors[:, :k_smallest], residuals[:k_smallest])
    if k_largest:
        largest = Eigenpairs(values[k_smallest:], vectors[:, k_smallest:], residuals[k_smallest:])
    return ExtremeEigenpairs(
        largest=largest,
        smallest=smallest,
        converged=converged,
        iterations=state.iterations,
        restarts=state.restarts,
        products=state.products,
        tol=float(rtol),
        norm_estimate=state.norm,
    )


class _Check(NamedTuple):
    """An explicit residual check: the wanted Ritz pairs (values ascending-then-descending as
    :func:`_wanted` orders them, unit vectors, residuals ‖Ax − θx‖) and the iteration it was made
    at."""

    values: torch.Tensor
    vectors: torch.Tensor
    residuals: torch.Tensor
    iterations: int


def _sizes(n: int, wanted: int, basis_size, max_products) -> tuple[int, int]:
    """Basis size and product budget (see :func:`extreme_eigenpairs` for the defaults)."""
    default_budget = max(500, 50 * wanted)
    exact_cost = n + 2 * wanted
    if basis_size is None:
        m = n if exact_cost <= default_budget else min(n, max(40, 3 * wanted + 20))
    else:
        m = integer("basis_size", basis_size, 1)
        if m > n:
            m = n
        if m < n and m < wanted + 2:
            raise BadInputError(
                f"basis_size = {basis_size} leaves no room to restart with "
                f"{wanted} wanted pairs; use at least {wanted + 2} (or n = {n})"
            )
    if max_products is None:
        budget = exact_cost if m == n else default_budget
    else:
        budget = integer("max_products", max_products, 2 * wanted)
    return m, budget


def _start_vector(v0, warm, mix: float, n: int, dtype, device, gen) -> torch.Tensor:
    """The (unnormalised) start vector: ``v0`` if given, the warm mixture (see
    :func:`extreme_eigenpairs`) if ``warm`` is, else seeded Gaussian noise."""
    if v0 is not None and warm is not None:
        raise BadInputError("give either v0 (one start vector) or warm (a block), not both")
    if warm is not None:
        return _warm_vector(warm, mix, n, dtype, device, gen)
    if v0 is None:
        return gaussian(gen, n, dtype, device)
    if not isinstance(v0, torch.Tensor) or v0.numel() != n:
        raise BadInputError(f"v0 must be a tensor with n = {n} entries")
    v = v0.detach().reshape(n).to(dtype=dtype, device=device)
    if not bool(torch.isfinite(v).all()) or float(torch.linalg.vector_norm(v)) == 0.0:
        raise BadInputError("v0 must be finite and nonzero")
    return v


def _warm_vector(warm, mix: float, n: int, dtype, device, gen) -> torch.Tensor:
    """``Q 1 / sqrt(q) + mix g``: the warm block's orthonormal basis summed, plus noise."""
    if not isinstance(warm, torch.Tensor) or warm.dim() not in (1, 2) or warm.shape[0] != n:
        shape = tuple(warm.shape) if isinstance(warm, torch.Tensor) else type(warm).__name__
        raise BadInputError(f"warm must be a tensor of shape (n, p) or (n,) with n = {n}, got "
                            f"{shape}; start cold (warm=None) when the operator's size changed")
    W = warm.detach().reshape(n, -1).to(dtype=dtype, device=device)
    if W.shape[1] == 0 or not bool(torch.isfinite(W).all()):
        raise BadInputError("warm must hold at least one vector, all finite")
    Q = torch.linalg.qr(W).Q
    v = Q.sum(dim=1) / math.sqrt(Q.shape[1])
    g, _, (_, size), lost = cgs2(Q, gaussian(gen, n, dtype, device))
    return v if lost else v + mix * g / size


def _wanted(j: int, k_largest: int, k_smallest: int) -> list[int]:
    """Indices into ascending Ritz values: smallest ascending, then largest descending."""
    return list(range(k_smallest)) + list(range(j - 1, j - 1 - k_largest, -1))


def _keep(j: int, m: int, k_largest: int, k_smallest: int) -> list[int]:
    """Ritz indices to keep at a restart (thick restart).

    The wanted pairs plus a buffer of ``min(wanted + 3, 10)`` from the same ends (split in
    proportion to what each end wants); when only one end is wanted, also up to 5 Ritz vectors
    from the other end, so that the dominant unwanted directions (Hessian outliers, say) are not
    found again after every restart. At least a quarter of the basis is left for new steps.
    Measured on Hessian-like spectra, this beat keeping half of the basis.
    """
    wanted = k_largest + k_smallest
    room = m - max(2, m // 4)
    total = max(wanted, min(wanted + min(wanted + 3, 10), room))
    lower = round(total * k_smallest / wanted)
    lower = min(max(lower, k_smallest), total - k_largest)
    upper = total - lower
    other = max(0, min(OTHER_END, room - total))
    if k_largest == 0:
        upper = other
    elif k_smallest == 0:
        lower = other
    return list(range(lower)) + list(range(j - upper, j))


def _report(progress: Progress | None, state: ThickRestart, estimates: torch.Tensor,
            budget: int) -> None:
    """Tell ``progress`` the products made out of ``budget`` and the worst relative estimate."""
    if progress is not None:
        ratio = float(estimates.max()) / state.norm if state.norm > 0 else 0.0
        progress(state.products, budget, f"residual {ratio:.1e}")


__getattr__ = old_names(__name__, {"LanczosResult": "ExtremeEigenpairs"})

"""The Hessian spectrum of an Objective: extreme eigenpairs, density, trace — exact or iterative.

Small problems (n ≤ ``EXACT_MAX_N``) take the exact path: the dense Hessian from n Hessian-vector
products and ``numpy.linalg.eigh``. Larger ones use Krylov methods on Hessian-vector products
(:mod:`landscope.linalg`): thick-restart Lanczos for both ends, stochastic Lanczos quadrature for
the density, Hutchinson for the trace. Every result says which path it took and carries its
evidence (products used, iterations, residual norms ‖Hv − λv‖, standard errors).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import torch

from landscope._checks import choice, integer, positive
from landscope._deprecated import old_names, renamed
from landscope.errors import BadInputError
from landscope.linalg import (
    Eigenpairs,
    SpectralQuadrature,
    TraceEstimate,
    dense_eigh,
    extreme_eigenpairs,
    hutchinson,
    slq,
)
from landscope.objective import Objective
from landscope.progress import Progress
from landscope.restricted import (
    EXACT_MAX_N as EXACT_MAX_N,  # the dense path's default size, also landscope.spectrum's
)
from landscope.restricted import (
    embed_pairs,
    restricted_hessian,
    restricted_operator,
    use_exact,
)

WHICH = ("largest", "smallest", "both")


def default_eig_rtol(dtype: torch.dtype, n: int = 1) -> float:
    """Default relative residual tolerance ‖Hv − λv‖ ≤ eig_rtol·‖H‖ for iterative eigenpairs.

    Float64 reaches 1e-8 easily. In float32 each Hessian-vector product carries rounding errors of
    about 1e-6·‖H‖, and the Lanczos basis loses orthogonality at about √n·eps: residuals stall
    near that floor (a 57,290-parameter CNN: the top five at 8e-5·ρ after 500 products, with
    √n·eps = 1.4e-5). The default is therefore max(1e-5, 10·√n·eps), which the solver reaches;
    a tighter ``eig_rtol`` spends its budget at the floor and reports ``converged=False``.
    """
    if dtype == torch.float64:
        return 1e-8
    return max(1e-5, 10 * math.sqrt(n) * torch.finfo(dtype).eps)


@dataclass(frozen=True)
class Spectrum:
    """Extreme eigenpairs of the Hessian at one point.

    ``largest`` (descending) and ``smallest`` (ascending) hold values, unit eigenvectors and the
    explicit residual norms ‖Hv − λv‖. For a symmetric H each residual r bounds the error: some
    eigenvalue lies within r of the reported value. ``eigenvalues`` holds the full spectrum on the
    exact path.
    """

    largest: Eigenpairs | None
    smallest: Eigenpairs | None
    method: str
    evidence: dict
    eigenvalues: torch.Tensor | None = field(default=None, repr=False)

    def pairs(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Values (d,) and unit vectors (n, d) of both ends together, largest first; None when
        neither end was asked for."""
        found = [p for p in (self.largest, self.smallest) if p is not None]
        if not found:
            return None
        return torch.cat([p.values for p in found]), torch.cat([p.vectors for p in found], dim=1)

    def to_dict(self) -> dict:
        return {"method": self.method,
                "largest": None if self.largest is None else self.largest.to_dict(),
                "smallest": None if self.smallest is None else self.smallest.to_dict(),
                "evidence": self.evidence}


@renamed(tol="eig_rtol")
def spectrum(
    obj: Objective,
    k: int = 5,
    which: str = "both",
    *,
    theta: torch.Tensor | None = None,
    eig_rtol: float | None = None,
    exact: bool | None = None,
    max_products: int | None = None,
    basis_size: int | None = None,
    coords: torch.Tensor | None = None,
    seed: int = 0,
    warm: Spectrum | torch.Tensor | None = None,
    progress: Progress | None = None,
) -> Spectrum:
    """The k largest and/or k smallest (most negative) eigenpairs of ∇²L(θ).

    Parameters
    ----------
    k: eigenpairs at each requested end. which: "largest", "smallest" or "both".
    eig_rtol: relative residual tolerance, ‖Hv − λv‖ ≤ eig_rtol·max|λ| (default
        :func:`default_eig_rtol`, by dtype and size).
    exact: force (True) or forbid (False) the dense path; default: exact when n ≤ EXACT_MAX_N.
    max_products: budget of Hessian-vector products for the iterative path; when it runs out
        the result says ``converged=False`` and gives the residuals reached.
    basis_size: Lanczos vectors kept between restarts (default max(40, 3·wanted + 20)); memory is
        (basis_size + 1)·n numbers. A larger basis needs fewer products next to a tight cluster
        (W2's smallest eigenvalue: 186 products with 40, 118 with 120).
    coords: indices of the coordinates to keep (default all): the spectrum of the block
        P ∇²L Pᵀ on them, e.g. without parameters the loss does not depend on (their exact zero
        eigenvalues are not the landscape's). Eigenvectors come back in Rⁿ, zero elsewhere.
    warm: a previous Spectrum (of a nearby point) or vectors (n, p) to start Lanczos from.
    progress: :class:`~landscope.progress.Progress` of the iterative path: Hessian-vector
        products made out of the budget, the worst relative residual estimate as its note.

    Examples
    --------
    >>> obj = Objective.from_function(lambda x: x[0]**2 - 3 * x[1]**2, [0.0, 0.0])
    >>> spectrum(obj, k=1).smallest.values.tolist()
    [-6.0]
    """
    choice("which", which, WHICH)
    integer("k", k)
    if eig_rtol is not None:  # checked on every path: the dense one does not read it
        positive("eig_rtol", eig_rtol)
    k_largest = k if which in ("largest", "both") else 0
    k_smallest = k if which in ("smallest", "both") else 0
    if use_exact(obj, exact, k_largest + k_smallest):
        H = restricted_hessian(obj, theta, coords)
        return dense_spectrum(H, *dense_eigh(H), k_largest, k_smallest, obj.dtype, coords, obj.n)
    block = warm_block(warm, obj.n)
    if block is not None and coords is not None:
        block = block[coords.to(block.device)]
    before = obj.counts["hvp"]
    H = restricted_operator(obj, theta, coords)
    result = extreme_eigenpairs(
        H, k_largest=k_largest, k_smallest=k_smallest,
        rtol=default_eig_rtol(obj.dtype, H.n) if eig_rtol is None else eig_rtol,
        max_products=max_products,
        basis_size=basis_size, seed=seed, warm=block, progress=progress,
    )
    evidence = {**result.to_dict(), "hvp_products": obj.counts["hvp"] - before,
                "warm_start": 0 if block is None else block.shape[1]}
    largest, smallest = (embed_pairs(p, coords, obj.n) for p in (result.largest, result.smallest))
    return Spectrum(largest, smallest, "lanczos", evidence)


@dataclass(frozen=True)
class FractionEstimate:
    """A fraction of the n eigenvalues: estimate, a bracket [lower, upper] and a standard error.

    On the exact path all four are exact (stderr 0). On the SLQ path [lower, upper] is the
    Chebyshev–Markov–Stieltjes bracket of the Gauss quadrature (rigorous per probe vector) and
    ``stderr`` the spread over probe vectors; ``interval`` combines both.
    """

    value: float
    lower: float
    upper: float
    stderr: float

    @property
    def interval(self) -> tuple[float, float]:
        """[lower − 2·stderr, upper + 2·stderr] clipped to [0, 1]."""
        return max(0.0, self.lower - 2 * self.stderr), min(1.0, self.upper + 2 * self.stderr)

    def to_dict(self) -> dict:
        return {"value": self.value, "lower": self.lower, "upper": self.upper,
                "stderr": self.stderr, "interval": list(self.interval)}


@dataclass(frozen=True)
class Density:
    """The eigenvalue distribution of ∇²L(θ): exact eigenvalues, or an SLQ quadrature."""

    method: str
    n: int
    eigenvalues: torch.Tensor | None = field(default=None, repr=False)
    quadrature: SpectralQuadrature | None = field(default=None, repr=False)
    products: int = 0

    def fraction_between(self, a: float, b: float) -> FractionEstimate:
        """Fraction of eigenvalues λ with a < λ ≤ b (a, b may be ±inf)."""
        if self.eigenvalues is not None:
            inside = ((self.eigenvalues > a) & (self.eigenvalues <= b)).sum().item() / self.n
            return FractionEstimate(inside, inside, inside, 0.0)
        return FractionEstimate(*self.quadrature.fraction_between(a, b))

    @renamed(zero_tol="atol")
    def fractions(self, atol: float) -> dict[str, FractionEstimate]:
        """Fractions negative (λ ≤ −atol), near zero (−atol < λ ≤ atol) and positive (λ > atol)."""
        inf = float("inf")
        return {
            "negative": self.fraction_between(-inf, -atol),
            "zero": self.fraction_between(-atol, atol),
            "positive": self.fraction_between(atol, inf),
        }

    @renamed(points="resolution")
    def curve(self, resolution: int = 400, sigma: float | None = None):
        """(grid, density) on ``resolution`` points, smoothed with a Gaussian of width sigma
        (default: 1% of the range)."""
        values = self.eigenvalues if self.eigenvalues is not None else self.quadrature.nodes
        low, high = values.min().item(), values.max().item()
        pad = 0.05 * max(high - low, 1e-12)
        grid = torch.linspace(low - pad, high + pad, resolution, dtype=torch.float64)
        sigma = sigma or 0.01 * max(high - low, 1e-12)
        if self.eigenvalues is not None:
            diff = grid[:, None] - self.eigenvalues.to(torch.float64)[None, :]
            dens = torch.exp(-0.5 * (diff / sigma) ** 2).mean(1) / (sigma * (2 * torch.pi) ** 0.5)
            return grid, dens
        return grid, self.quadrature.density(grid, sigma)

    def to_dict(self) -> dict:
        out = {"method": self.method, "n": self.n, "products": self.products}
        if self.quadrature is not None:
            out["quadrature"] = self.quadrature.to_dict()
        if self.eigenvalues is not None:  # exact: n ≤ EXACT_MAX_N numbers
            out["eigenvalues"] = self.eigenvalues.tolist()
        return out

    @classmethod
    def from_dict(cls, d: dict) -> Density:
        """The density :meth:`to_dict` wrote (a result file's ``density``)."""
        eigenvalues = d.get("eigenvalues")
        quadrature = d.get("quadrature")
        if eigenvalues is None and quadrature is None:
            raise BadInputError("this density holds neither eigenvalues nor a quadrature (a "
                                "result written before exact eigenvalues were kept); probe again")
        return cls(d["method"], int(d["n"]),
                   None if eigenvalues is None else torch.tensor(eigenvalues,
                                                                  dtype=torch.float64),
                   None if quadrature is None else SpectralQuadrature.from_dict(quadrature),
                   int(d.get("products", 0)))


@renamed(steps="lanczos_steps")
def density(
    obj: Objective,
    probes: int = 8,
    lanczos_steps: int = 80,
    *,
    theta: torch.Tensor | None = None,
    exact: bool | None = None,
    coords: torch.Tensor | None = None,
    seed: int = 0,
    progress: Progress | None = None,
) -> Density:
    """Eigenvalue density of ∇²L(θ) by stochastic Lanczos quadrature (exact for small n).

    The spectral measure μ = (1/n) Σᵢ δ(λᵢ) is estimated as the mean over ``probes`` random
    vectors v of the Gauss quadrature Σⱼ wⱼ δ(xⱼ) from ``lanczos_steps`` Lanczos steps started
    at v. All probes advance together: each step is one batched product of ``probes`` vectors.
    ``coords`` restricts H to those coordinates (see :func:`spectrum`); then n = len(coords).
    ``progress``: :class:`~landscope.progress.Progress` of the SLQ path, in Hessian-vector
    products out of ``probes · lanczos_steps``.
    """
    integer("probes", probes)
    integer("lanczos_steps", lanczos_steps)
    if use_exact(obj, exact, 0):
        values = dense_eigh(restricted_hessian(obj, theta, coords))[0]
        return Density("exact", values.numel(), eigenvalues=values, products=obj.n)
    before = obj.counts["hvp"]
    H = restricted_operator(obj, theta, coords)
    quadrature = slq(H, probes=probes, lanczos_steps=lanczos_steps, seed=seed, progress=progress)
    return Density("slq", H.n, quadrature=quadrature, products=obj.counts["hvp"] - before)


@dataclass(frozen=True)
class Trace:
    """tr ∇²L(θ) = Σᵢ λᵢ: exact, or a Hutchinson estimate with its standard error.

    ``method``: "exact" or "hutchinson"; ``estimate``: the
    :class:`~landscope.linalg.TraceEstimate` (exact: stderr 0, no probes), its ``products`` the
    Hessian-vector products the objective counted. ``value``, ``stderr``, ``samples`` (probes
    averaged) and ``products`` read it.
    """

    method: str
    estimate: TraceEstimate

    @property
    def value(self) -> float:
        return self.estimate.value

    @property
    def stderr(self) -> float:
        return self.estimate.stderr

    @property
    def samples(self) -> int:
        return self.estimate.samples

    @property
    def products(self) -> int:
        return self.estimate.products

    def to_dict(self) -> dict:
        return {"value": self.value, "stderr": self.stderr, "method": self.method,
                "samples": self.samples, "products": self.products}


@renamed(samples="probes", rtol="stderr_rtol")
def trace(
    obj: Objective,
    probes: int = 100,
    *,
    theta: torch.Tensor | None = None,
    stderr_rtol: float | None = None,
    batch: int = 10,
    exact: bool | None = None,
    seed: int = 0,
    deflate: Spectrum | tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> Trace:
    """tr H by Hutchinson's estimator E[zᵀHz] over Rademacher z (exact for small n).

    ``probes`` Rademacher vectors in batches of ``batch`` products; with ``stderr_rtol`` probing
    stops early once stderr ≤ stderr_rtol·|estimate| (``probes`` is then the maximum).
    ``deflate``: a Spectrum at θ (its pairs of both ends) or ``(values, orthonormal vectors)``:
    tr H = Σ values + tr(P H P) with P = I − QQᵀ, Hutchinson on the second term only, which
    takes the outliers' share of the variance away (:func:`landscope.linalg.hutchinson`); the
    exact path needs none. ``progress``: :class:`~landscope.progress.Progress` of the
    Hutchinson path, in Hessian-vector products out of ``probes``.
    """
    integer("probes", probes, minimum=2)  # a standard error needs two
    integer("batch", batch)
    if stderr_rtol is not None:
        positive("stderr_rtol", stderr_rtol)
    if use_exact(obj, exact, 0):
        values = dense_eigh(restricted_hessian(obj, theta, None))[0]
        return Trace("exact", TraceEstimate(values.sum().item(), 0.0, 0, obj.n, 0))
    if isinstance(deflate, Spectrum):
        deflate = deflate.pairs()
    before = obj.counts["hvp"]
    est = hutchinson(obj.operator(theta), probes=probes, batch=batch, rtol=stderr_rtol,
                     seed=seed, deflate=deflate, progress=progress)
    return Trace("hutchinson", replace(est, products=obj.counts["hvp"] - before))


def warm_block(warm: Spectrum | torch.Tensor | None, n: int) -> torch.Tensor | None:
    """The warm start's vectors as an (n, p) block: a Spectrum's largest and smallest
    eigenvectors, or the given tensor; None for a cold start."""
    if warm is None:
        return None
    if isinstance(warm, Spectrum):
        pairs = warm.pairs()
        if pairs is None:
            return None
        warm = pairs[1]
    if not isinstance(warm, torch.Tensor) or warm.dim() not in (1, 2) or warm.shape[0] != n:
        shape = tuple(warm.shape) if isinstance(warm, torch.Tensor) else type(warm).__name__
        raise BadInputError(f"warm must be a Spectrum or a tensor of shape (n, p) with n = {n} "
                            f"parameters, got {shape}; pass warm=None to start cold")
    return warm.detach().reshape(n, -1)


def dense_spectrum(H, values, vectors, k_largest: int, k_smallest: int, dtype,
                   coords: torch.Tensor | None = None, n_full: int | None = None) -> Spectrum:
    """A :class:`Spectrum` read off a dense Hessian (or its block on ``coords`` of Rⁿ_full)
    and its full eigendecomposition; eigenvectors come back in R^n_full."""
    n = H.shape[0]
    Hd = H.to(torch.float64).cpu()

    def pairs(index):
        vals, vecs = values[index], vectors[:, index]
        residuals = torch.linalg.vector_norm(Hd @ vecs - vecs * vals, dim=0)
        return embed_pairs(Eigenpairs(vals, vecs.to(H.device, dtype), residuals), coords,
                            n_full)

    k_largest, k_smallest = min(k_largest, n), min(k_smallest, n)
    largest = pairs(torch.arange(n - 1, n - 1 - k_largest, -1)) if k_largest else None
    smallest = pairs(torch.arange(k_smallest)) if k_smallest else None
    evidence = {"method": "exact", "products": n_full or n, "converged": True,
                "solver": "numpy.linalg.eigh (float64) on the dense Hessian"}
    return Spectrum(largest, smallest, "exact", evidence, eigenvalues=values)


__getattr__ = old_names(__name__, {"default_tol": "default_eig_rtol"})

"""Stochastic Lanczos quadrature: the spectral density of a symmetric operator from a few probes.

What is hard: the full spectrum of a Hessian is out of reach, yet questions like "what fraction of
the eigenvalues is negative" need it. For a unit probe ``v``, the measure
``mu_v = sum_i (q_i^T v)^2 delta(lambda_i)`` has expectation ``(1/n) sum_i delta(lambda_i)`` over
normalised Rademacher probes, and ``m`` Lanczos steps from ``v`` give its Gauss quadrature: nodes
= eigenvalues of ``T_m``, weights = squared first components of its eigenvectors, exact for
polynomials of degree ``< 2m``. The Chebyshev–Markov–Stieltjes inequalities turn that into a
rigorous per-probe bracket of ``mu_v((-inf, t])``; the probe average adds Monte Carlo error,
reported as a standard error.

All probes run together (:mod:`landscope.linalg.recurrence`): each step is one product with one
column per active probe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscope._checks import integer
from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.linalg._common import generator, noise_level, rademacher, small_eigh
from landscope.linalg.operator import Operator, as_operator
from landscope.linalg.recurrence import batched_lanczos, columns
from landscope.progress import Progress


@dataclass(frozen=True)
class SpectralQuadrature:
    """Per-probe Gauss quadrature rules of the spectral measure.

    ``nodes`` (probes, steps) float64, ascending per row; ``weights`` (probes, steps) float64, each
    row sums to 1. A probe whose Lanczos run stopped early (invariant subspace: its quadrature is
    then the probe's measure itself) has ``sizes[p] < steps``; its row is padded with copies of its
    last node carrying weight 0. ``sizes`` None means every row is full.
    """

    nodes: torch.Tensor
    weights: torch.Tensor
    n: int
    products: int
    steps: int
    sizes: torch.Tensor | None = None

    def density(self, grid, sigma: float) -> torch.Tensor:
        """Gaussian-smoothed spectral density on ``grid``, averaged over probes.

        Parameters
        ----------
        grid:
            Points (1-D array-like) where the density is evaluated.
        sigma:
            Standard deviation of the Gaussian kernel (> 0).

        Returns
        -------
        torch.Tensor
            Float64 density values, same length as ``grid``; it integrates to about 1.
        """
        if not sigma > 0:
            raise BadInputError(f"sigma must be positive, got {sigma!r}")
        x = torch.as_tensor(grid, dtype=torch.float64).reshape(-1)
        diff = (x[None, None, :] - self.nodes[:, :, None]) / sigma
        kernel = torch.exp(-0.5 * diff**2) / (sigma * math.sqrt(2.0 * math.pi))
        return (self.weights[:, :, None] * kernel).sum(dim=1).mean(dim=0)

    def cdf_bracket(self, t: float) -> tuple[float, float, float, float]:
        """Fraction of eigenvalues in ``(-inf, t]``: estimate, rigorous bracket, standard error.

        With nodes ``x_1 < ... < x_m``, weights ``w`` and partial sums ``W_k = w_1 + ... + w_k``,
        the Chebyshev–Markov–Stieltjes inequalities state ``W_{i-1} <= mu((-inf, x_i))`` and
        ``mu((-inf, x_i]) <= W_i``. With ``j`` nodes at or below ``t`` (``x_j <= t < x_{j+1}``),
        monotonicity gives ``W_{j-1} <= mu((-inf, t]) <= W_{j+1}`` for each probe's measure.
        ``t = -inf`` and ``t = +inf`` give exactly 0 and 1.

        Returns
        -------
        (estimate, lower, upper, stderr)
            ``estimate``: probe mean of ``W_j``; ``lower``/``upper``: probe means of the brackets
            (they bound the probe mean of the true per-probe fractions, not the exact fraction:
            add a few ``stderr`` for that); ``stderr``: standard error of the per-probe
            estimates over probes (0 with one probe).
        """
        est, low, up = self._cdf_per_probe(float(t))
        return _summarise(est, low, up)

    def fraction_between(self, a: float, b: float) -> tuple[float, float, float, float]:
        """Fraction of eigenvalues in ``(a, b]``: (estimate, lower, upper, stderr), from 2 CDFs."""
        if not a < b:
            raise BadInputError(f"fraction_between needs a < b, got a = {a!r}, b = {b!r}")
        est_a, low_a, up_a = self._cdf_per_probe(float(a))
        est_b, low_b, up_b = self._cdf_per_probe(float(b))
        low = (low_b - up_a).clamp(min=0.0)
        up = (up_b - low_a).clamp(max=1.0)
        return _summarise(est_b - est_a, low, up)

    def to_dict(self) -> dict:
        """JSON-friendly summary, nodes and weights included (probes * steps numbers each)."""
        sizes = self._sizes()
        return {
            "n": self.n,
            "probes": int(self.nodes.shape[0]),
            "steps": self.steps,
            "products": self.products,
            "sizes": sizes.tolist(),
            "nodes": self.nodes.tolist(),
            "weights": self.weights.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict) -> SpectralQuadrature:
        """The quadrature :meth:`to_dict` wrote (a result file's ``density.quadrature``)."""
        return cls(torch.tensor(d["nodes"], dtype=torch.float64),
                   torch.tensor(d["weights"], dtype=torch.float64), int(d["n"]),
                   int(d["products"]), int(d["steps"]),
                   torch.tensor(d["sizes"], dtype=torch.int64))

    def _sizes(self) -> torch.Tensor:
        if self.sizes is not None:
            return self.sizes
        return torch.full((self.nodes.shape[0],), self.nodes.shape[1], dtype=torch.int64)

    def _cdf_per_probe(self, t: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-probe estimate ``W_j`` and CMS bracket ``[W_{j-1}, W_{j+1}]`` at ``t``."""
        sizes = self._sizes()
        probes, steps = self.nodes.shape
        if math.isnan(t):
            raise BadInputError("the threshold t is NaN")
        if math.isinf(t):  # the measure of everything, or of nothing, is known exactly
            value = torch.full((probes,), 1.0 if t > 0 else 0.0, dtype=torch.float64)
            return value, value, value
        valid = torch.arange(steps)[None, :] < sizes[:, None]
        j = ((self.nodes <= t) & valid).sum(dim=1)
        partial = torch.zeros(probes, steps + 1, dtype=torch.float64)
        partial[:, 1:] = torch.cumsum(self.weights, dim=1)
        rows = torch.arange(probes)
        est = partial[rows, j]
        low = partial[rows, (j - 1).clamp(min=0)]
        up = partial[rows, torch.minimum(j + 1, sizes)]
        # A probe whose Krylov space became invariant has its quadrature equal to its measure.
        exact = (sizes < self.steps) | (sizes >= self.n)
        low = torch.where(exact, est, low)
        up = torch.where(exact, est, up)
        return est, low, up


@renamed(steps="lanczos_steps")
def slq(
    A: Operator | torch.Tensor,
    *,
    probes: int = 8,
    lanczos_steps: int = 80,
    seed: int = 0,
    progress: Progress | None = None,
) -> SpectralQuadrature:
    """Stochastic Lanczos quadrature with batched probes and full reorthogonalisation.

    Parameters
    ----------
    A:
        The symmetric operator (:class:`~landscope.linalg.Operator`, or a dense matrix) of
        dimension ``n``.
    probes:
        Number of normalised Rademacher probes; their Lanczos runs share every product.
    lanczos_steps:
        Lanczos steps per probe (capped at ``n``). Memory: ``probes * lanczos_steps * n`` numbers
        of the operator's dtype for the bases (each probe is reorthogonalised against its own
        basis).
    seed:
        Seed of the probes.
    progress:
        Optional :class:`~landscope.progress.Progress`, called after every Lanczos step with the
        products made out of the ``probes * lanczos_steps`` planned and the note
        ``"Lanczos step 3/80"``.

    Returns
    -------
    SpectralQuadrature
        ``products`` counts the columns multiplied by the operator (at most
        ``probes * lanczos_steps``; fewer when some probes stop early at an invariant subspace).
        Its ``steps`` field is ``lanczos_steps`` after the cap.
    """
    A = as_operator(A)
    n = A.n
    probes = integer("probes", probes, 1)
    steps = min(integer("lanczos_steps", lanczos_steps, 1), n)
    gen = generator(seed)
    starts = rademacher(gen, n, probes, A.dtype, A.device).T / math.sqrt(n)
    # A probe stops once beta_j <= tiny * ||A v||: below sqrt(eps) relative, what is dropped changes
    # its quadrature by far less than the Monte Carlo error, and exact repeats resolved only by
    # rounding would otherwise be explored as noise.
    tiny = max(noise_level(A.dtype, n), math.sqrt(torch.finfo(A.dtype).eps))
    run = batched_lanczos(columns(A.matmat), starts, steps, progress=progress, breakdown=tiny)
    sizes, T = run.sizes, run.tridiagonal()
    nodes = torch.zeros(probes, steps, dtype=torch.float64)
    weights = torch.zeros(probes, steps, dtype=torch.float64)
    for p in range(probes):
        s = int(sizes[p])
        theta, Y = small_eigh(T[p, :s, :s].contiguous())
        nodes[p, :s] = theta
        nodes[p, s:] = theta[-1]
        weights[p, :s] = Y[0, :] ** 2
    full = bool((sizes == steps).all())
    return SpectralQuadrature(
        nodes=nodes,
        weights=weights,
        n=n,
        products=run.products,
        steps=steps,
        sizes=None if full else sizes,
    )


def _summarise(est: torch.Tensor, low: torch.Tensor, up: torch.Tensor):
    """Probe means of estimate and bracket, and the standard error of the estimate."""
    probes = est.numel()
    stderr = float(est.std(unbiased=True) / math.sqrt(probes)) if probes > 1 else 0.0
    return float(est.mean()), float(low.mean()), float(up.mean()), stderr

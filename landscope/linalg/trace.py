"""Hutchinson's trace estimator with an honest standard error, optionally deflated.

What is hard: ``tr(A)`` of a Hessian known only through products. For Rademacher ``z``,
``E[z^T A z] = tr(A)`` and ``Var[z^T A z] = 2 (||A||_F^2 - sum_i A_ii^2)``, so a few large
outlier eigenvalues (typical of Hessians) dominate the variance. Deflation removes them:
for orthonormal ``Q`` (n, d) with ``P = I - Q Q^T``,

    tr(A) = tr(Q^T A Q) + tr(P A P),

and Hutchinson is applied only to ``P A P`` (probes ``z -> P z``). This is the variance
reduction behind Hutch++, except that the deflation directions are given (exactly computed
eigenpairs) and the remaining part keeps a sample standard error, so the result stays a plain
mean with a valid error bar. ``tr(Q^T A Q) = sum(values)`` holds whenever each value is the
Rayleigh quotient ``q^T A q`` of its vector, which is what ``extreme_eigenpairs`` returns.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from landscope._checks import integer
from landscope._deprecated import renamed
from landscope.errors import BadInputError
from landscope.linalg._common import (
    apply,
    generator,
    not_finite,
    rademacher,
)
from landscope.linalg.operator import Operator, as_operator
from landscope.progress import Progress


@dataclass(frozen=True)
class TraceEstimate:
    """A trace estimate, its standard error, and what it cost.

    ``samples``: probes averaged (the field keeps its name in result files); ``products``:
    product columns used; ``deflated``: number of eigen-directions removed and accounted for
    exactly.
    """

    value: float
    stderr: float
    samples: int
    products: int
    deflated: int

    def to_dict(self) -> dict:
        """JSON-friendly summary."""
        return {
            "value": self.value,
            "stderr": self.stderr,
            "samples": self.samples,
            "products": self.products,
            "deflated": self.deflated,
        }


@renamed(samples="probes")
def hutchinson(
    A: Operator | torch.Tensor,
    *,
    probes: int = 100,
    batch: int = 10,
    rtol: float | None = None,
    seed: int = 0,
    deflate: tuple[torch.Tensor, torch.Tensor] | None = None,
    progress: Progress | None = None,
) -> TraceEstimate:
    """Estimate ``tr(A)`` as the mean of ``z^T A z`` over Rademacher probes, with standard error.

    Parameters
    ----------
    A:
        The symmetric operator (:class:`~landscope.linalg.Operator`, or a dense matrix) of
        dimension ``n``.
    probes:
        Number of probes (at least 2, so that a standard error exists). With ``rtol`` it is the
        maximum.
    batch:
        Probes per product.
    rtol:
        Optional relative target: after at least two batches, stop as soon as
        ``stderr <= rtol * |value|``.
    seed:
        Seed of the probes.
    deflate:
        Optional ``(values (d,), vectors (n, d))``: eigenpairs computed beforehand, vectors
        orthonormal, each value the Rayleigh quotient of its vector. Their sum is added exactly
        and Hutchinson runs on the projected operator ``P A P``, ``P = I - Q Q^T``.
    progress:
        Optional :class:`~landscope.progress.Progress`, called after every batch with the
        products made (one per probe) out of ``probes`` and the note ``"stderr/|trace| 3.1e-02"``.

    Each batch of probes costs one product and one device-to-host copy (its quadratic
    forms and the check that the product is finite); the probes are drawn on the CPU.

    Returns
    -------
    TraceEstimate
        ``value = sum(values) + mean(z^T P A P z)``, ``stderr = std(z^T P A P z) / sqrt(probes)``
        (sample standard deviation; the deflated part contributes no random error).
    """
    A = as_operator(A)
    n, dtype, device = A.n, A.dtype, A.device
    probes = integer("probes", probes, 2)
    batch = integer("batch", batch, 1)
    if rtol is not None and not (isinstance(rtol, (int, float)) and rtol > 0):
        raise BadInputError(f"rtol must be a positive number or None, got {rtol!r}")
    offset, Q = _deflation(deflate, n, dtype, device)
    gen = generator(seed)
    forms: list[torch.Tensor] = []
    drawn = batches = products = 0
    value, stderr = 0.0, math.inf
    while drawn < probes:
        size = min(batch, probes - drawn)
        Z = rademacher(gen, n, size, dtype, device)
        if Q is not None:
            Z = Z - Q @ (Q.T @ Z)
        AZ = apply(A.matmat, Z, finite=False)
        products += size
        drawn += size
        batches += 1
        # one device-to-host copy per batch: the quadratic forms and the product's finiteness
        numbers = torch.cat([(Z * AZ).sum(dim=0), torch.isfinite(AZ).all()[None].to(Z.dtype)])
        numbers = numbers.to(device="cpu", dtype=torch.float64)
        if numbers[-1] != 1:
            raise not_finite()
        forms.append(numbers[:-1])
        value, stderr = _mean_and_stderr(torch.cat(forms), offset)
        if progress is not None:
            relative = stderr / abs(value) if value != 0 else math.inf
            progress(products, probes, f"stderr/|trace| {relative:.1e}")
        if rtol is not None and batches >= 2 and drawn >= 2 and stderr <= rtol * abs(value):
            break
    return TraceEstimate(
        value=value,
        stderr=stderr,
        samples=drawn,
        products=products,
        deflated=0 if Q is None else int(Q.shape[1]),
    )


def _deflation(deflate, n: int, dtype, device):
    """Check ``deflate`` and return ``(sum of values, Q in the operator's dtype)``."""
    if deflate is None:
        return 0.0, None
    try:
        values, vectors = deflate
    except (TypeError, ValueError):
        raise BadInputError("deflate must be a pair (values, vectors)") from None
    values = torch.as_tensor(values, dtype=torch.float64).reshape(-1)
    if not isinstance(vectors, torch.Tensor) or vectors.ndim != 2 or vectors.shape[0] != n:
        raise BadInputError(f"deflate vectors must be a tensor of shape (n, d) with n = {n}")
    if vectors.shape[1] != values.numel():
        raise BadInputError(
            f"deflate has {values.numel()} values but {vectors.shape[1]} vectors; they must match"
        )
    if vectors.shape[1] >= n:
        raise BadInputError(
            f"deflating {vectors.shape[1]} directions of an n = {n} operator "
            "leaves nothing to estimate; use the values' sum"
        )
    Q = vectors.detach().to(dtype=dtype, device=device)
    gram = (Q.T @ Q).to(device="cpu", dtype=torch.float64)
    error = float((gram - torch.eye(gram.shape[0], dtype=torch.float64)).abs().max())
    if error > 1e-3:
        raise BadInputError(
            f"deflate vectors are not orthonormal (max |Q^T Q - I| = {error:.2e}); "
            "orthonormalise them (their values must then be the Rayleigh quotients)"
        )
    return float(values.sum()), Q


def _mean_and_stderr(forms: torch.Tensor, offset: float) -> tuple[float, float]:
    """``offset + mean(forms)`` and the standard error of the mean."""
    mean = float(forms.mean())
    stderr = (
        float(forms.std(unbiased=True)) / math.sqrt(forms.numel())
        if forms.numel() > 1
        else math.inf
    )
    return offset + mean, stderr

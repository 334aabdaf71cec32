"""Exact dense eigendecomposition, the ground truth for small operators.

What is hard: nothing numerically (LAPACK's symmetric solver is backward stable), but the matrix
must be built from products alone and be exactly symmetric: a Hessian assembled from
Hessian-vector products is symmetric only up to rounding, and ``eigh`` reads one triangle, so
the two halves are averaged first, ``H <- (H + H^T) / 2``. The decomposition runs in float64
whatever the operator's dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from landscope._checks import integer
from landscope.errors import BadInputError
from landscope.linalg.operator import Operator, as_operator


def dense_eigh(H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """All eigenvalues and eigenvectors of a (nearly) symmetric matrix, in float64.

    Parameters
    ----------
    H:
        Square matrix ``(n, n)``, any floating dtype and device. It is symmetrised,
        ``(H + H^T) / 2``, before the decomposition (numpy.linalg.eigh in float64).

    Returns
    -------
    (values, vectors)
        ``values`` (n,) float64 CPU, ascending; ``vectors`` (n, n) float64 CPU with orthonormal
        columns, ``vectors[:, i]`` belonging to ``values[i]``.
    """
    if not isinstance(H, torch.Tensor) or H.ndim != 2 or H.shape[0] != H.shape[1]:
        shape = tuple(H.shape) if isinstance(H, torch.Tensor) else type(H).__name__
        raise BadInputError(f"dense_eigh needs a square 2-D tensor, got {shape}")
    A = H.detach().to(device="cpu", dtype=torch.float64).numpy()
    if not np.isfinite(A).all():
        raise BadInputError("dense_eigh: the matrix has NaN or infinite entries")
    A = (A + A.T) / 2.0
    values, vectors = np.linalg.eigh(A)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def dense_from_matmat(A: Operator | torch.Tensor, *, batch: int = 64) -> torch.Tensor:
    """Build the dense symmetric matrix of an operator from products with identity columns.

    Parameters
    ----------
    A:
        The operator (:class:`~landscope.linalg.Operator`, or a dense matrix).
    batch:
        Identity columns per product (memory ``n * batch`` per call). Total cost: ``n``
        product columns.

    Returns
    -------
    torch.Tensor
        ``(A + A^T) / 2`` as an ``(n, n)`` tensor in the operator's dtype on its device.
    """
    A = as_operator(A)
    batch = integer("batch", batch, 1)
    n, dtype, device = A.n, A.dtype, A.device
    H = torch.empty(n, n, dtype=dtype, device=device)
    for start in range(0, n, batch):
        stop = min(n, start + batch)
        E = torch.zeros(n, stop - start, dtype=dtype, device=device)
        E[torch.arange(start, stop), torch.arange(stop - start)] = 1.0
        H[:, start:stop] = A @ E
    return (H + H.T) / 2

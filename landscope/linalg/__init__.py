"""Matrix-free linear algebra on symmetric operators given as ``matmat(V) -> A @ V``.

Nothing here knows about models: every routine consumes a function that multiplies an ``(n, b)``
block of columns by a symmetric matrix, batches its products, and returns its convergence or error
evidence together with the answer.
"""

from landscope.linalg.exact import dense_eigh, dense_from_matmat
from landscope.linalg.lanczos import Eigenpairs, LanczosResult, extreme_eigenpairs
from landscope.linalg.slq import SpectralQuadrature, slq
from landscope.linalg.trace import TraceEstimate, hutchinson

__all__ = [
    "Eigenpairs",
    "LanczosResult",
    "SpectralQuadrature",
    "TraceEstimate",
    "dense_eigh",
    "dense_from_matmat",
    "extreme_eigenpairs",
    "hutchinson",
    "slq",
]

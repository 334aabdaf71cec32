"""Matrix-free linear algebra on symmetric operators known through their products ``A @ V``.

Nothing here knows about models: every routine takes an :class:`Operator` (its size, dtype,
device and ``matmat(V) -> A @ V`` for an ``(n, b)`` block of columns) or a dense matrix, batches
its products, and returns its convergence or error evidence together with the answer.
"""

from landscope._deprecated import old_names
from landscope.linalg.exact import dense_eigh, dense_from_matmat
from landscope.linalg.lanczos import Eigenpairs, ExtremeEigenpairs, extreme_eigenpairs
from landscope.linalg.operator import Operator
from landscope.linalg.slq import SpectralQuadrature, slq
from landscope.linalg.trace import TraceEstimate, hutchinson

__all__ = [
    "Eigenpairs",
    "ExtremeEigenpairs",
    "Operator",
    "SpectralQuadrature",
    "TraceEstimate",
    "dense_eigh",
    "dense_from_matmat",
    "extreme_eigenpairs",
    "hutchinson",
    "slq",
]

__getattr__ = old_names(__name__, {"LanczosResult": "ExtremeEigenpairs"})

"""Small pieces shared by the linalg modules: argument checks, seeded probes, Gram–Schmidt.

What is hard: nothing deep, but every algorithm must treat a user's ``matmat`` the same way (one
call per block of columns, checked shape and dtype) and draw its random vectors reproducibly on
any device. Random numbers are drawn on the CPU from a seeded ``torch.Generator`` and then moved,
so a seed gives the same vectors on every device.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import scipy.linalg
import torch

from landscope.errors import BadInputError, NonFiniteLossError

MatMat = Callable[[torch.Tensor], torch.Tensor]


def apply(matmat: MatMat, X: torch.Tensor, *, finite: bool = True) -> torch.Tensor:
    """Return ``matmat(X)`` after checking its shape, dtype, device and finiteness.

    Parameters
    ----------
    matmat:
        The operator, ``V -> A @ V`` for ``V`` of shape ``(n, b)``.
    X:
        The block of columns to multiply.
    finite:
        Check finiteness here (one host synchronisation). A caller that reads scalars of the
        product back anyway passes False and checks ``torch.isfinite(Y).all()`` with them
        (:func:`not_finite` is the error).

    Returns
    -------
    torch.Tensor
        ``A @ X``, shape ``(n, b)``.
    """
    Y = matmat(X)
    if not isinstance(Y, torch.Tensor):
        raise BadInputError(f"matmat must return a torch.Tensor, got {type(Y).__name__}")
    if tuple(Y.shape) != tuple(X.shape):
        raise BadInputError(
            f"matmat returned shape {tuple(Y.shape)} for input of shape {tuple(X.shape)}; "
            "it must map (n, b) to (n, b)"
        )
    if Y.dtype != X.dtype or Y.device != X.device:
        raise BadInputError(
            f"matmat returned dtype {Y.dtype} on {Y.device} for input of dtype {X.dtype} on "
            f"{X.device}; build the Operator with the dtype and device of its products"
        )
    if finite and not bool(torch.isfinite(Y).all()):
        raise not_finite()
    return Y


def not_finite() -> NonFiniteLossError:
    """The error for a product with NaN or infinite entries."""
    return NonFiniteLossError(
        "matmat returned NaN or infinite values; the operator (e.g. the Hessian at this "
        "point) is not finite"
    )


def check_dtype(dtype: torch.dtype) -> torch.dtype:
    """Return ``dtype`` if it is a real floating dtype, else raise :class:`BadInputError`."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise BadInputError(f"dtype must be a floating torch dtype, got {dtype!r}")
    return dtype


def generator(seed: int) -> torch.Generator:
    """A CPU generator seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def rademacher(gen: torch.Generator, n: int, b: int, dtype, device) -> torch.Tensor:
    """An ``(n, b)`` block of independent random signs (+1/-1) in ``dtype`` on ``device`` (they
    travel to the device as bytes and are cast there)."""
    signs = torch.randint(0, 2, (n, b), generator=gen, dtype=torch.int64) * 2 - 1
    return signs.to(torch.int8).to(device).to(dtype)


def gaussian(gen: torch.Generator, n: int, dtype, device) -> torch.Tensor:
    """A standard normal vector of length ``n`` in ``dtype`` on ``device``."""
    return torch.randn(n, generator=gen, dtype=torch.float64).to(dtype=dtype).to(device)


def cgs2(basis: torch.Tensor, w: torch.Tensor):
    """Orthogonalise ``w`` against the orthonormal columns of ``basis``, twice (CGS2).

    Parameters
    ----------
    basis:
        ``(n, j)`` with orthonormal columns.
    w:
        ``(n,)`` vector.

    Returns
    -------
    (w, coefficients, norms, lost)
        The orthogonalised vector, the total coefficients ``basis^T w`` removed (float64, CPU),
        ``norms``: the norms of ``w`` before and after (floats), and ``lost``: True when the
        second pass removed more than half of what was left, i.e. ``w`` lay numerically inside
        the span and what remains is rounding noise. All of them reach the host in one transfer
        (on a GPU each transfer waits for the stream).
    """
    n0 = torch.linalg.vector_norm(w)
    h1 = basis.T @ w
    w = w - basis @ h1
    n1 = torch.linalg.vector_norm(w)
    h2 = basis.T @ w
    w = w - basis @ h2
    n2 = torch.linalg.vector_norm(w)
    host = torch.cat([h1 + h2, torch.stack([n0, n1, n2])]).to(device="cpu", dtype=torch.float64)
    coefficients, (n0, n1, n2) = host[:-3], host[-3:].tolist()
    return w, coefficients, (n0, n2), n2 < 0.5 * n1 or n2 == 0.0


def small_eigh(T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigen-decomposition of a small symmetric float64 CPU matrix (ascending), via numpy.

    SciPy's LAPACK is used because the threaded ``eigh`` of torch (and of numpy's OpenBLAS) is
    10-100 times slower on matrices of this size when the cores are busy. ``T`` is finite:
    :func:`apply` rejects non-finite products.
    """
    values, vectors = scipy.linalg.eigh(T.numpy(), check_finite=False)
    return torch.from_numpy(values), torch.from_numpy(vectors)


def noise_level(dtype: torch.dtype, n: int) -> float:
    """Relative size below which a vector obtained by orthogonalisation is treated as zero."""
    return 10.0 * torch.finfo(dtype).eps * math.sqrt(n)

"""A symmetric operator known only through its products, ``A @ V``, with its size, dtype and device.

What is hard: nothing; it keeps the ``n, dtype, device`` triplet and the product together so that
every routine of :mod:`landscope.linalg` takes one argument, a dense matrix or a Hessian alike.
The derived operators are the two the library needs: ``D^½ A D^½`` (a diagonal preconditioner
applied symmetrically, whose eigenvalues are those of ``D A``) and ``A + σ I``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from landscope._checks import integer
from landscope.errors import BadInputError
from landscope.linalg._common import apply, check_dtype


class Operator:
    """``A`` (n × n, symmetric) through ``matmat(V) -> A @ V`` for ``V`` of shape ``(n, b)`` in
    ``dtype`` on ``device``. ``A @ v`` takes a vector ``(n,)`` or a block ``(n, b)`` and checks the
    product's shape, dtype, device and finiteness."""

    def __init__(self, n: int, dtype: torch.dtype, device, matmat: Callable) -> None:
        if not callable(matmat):
            raise BadInputError(f"matmat must be callable (V -> A @ V), got "
                                f"{type(matmat).__name__}")
        self.n = integer("n", n, 1)
        self.dtype = check_dtype(dtype)
        self.device = torch.device(device)
        self.matmat = matmat

    @classmethod
    def dense(cls, A: torch.Tensor) -> Operator:
        """The operator of a square floating matrix, in its dtype on its device."""
        if not isinstance(A, torch.Tensor) or A.ndim != 2 or A.shape[0] != A.shape[1]:
            shape = tuple(A.shape) if isinstance(A, torch.Tensor) else type(A).__name__
            raise BadInputError(f"a dense operator needs a square 2-D tensor, got {shape}")
        return cls(A.shape[0], A.dtype, A.device, lambda V: A @ V)

    def __matmul__(self, V: torch.Tensor) -> torch.Tensor:
        if not isinstance(V, torch.Tensor) or V.ndim not in (1, 2) or V.shape[0] != self.n:
            shape = tuple(V.shape) if isinstance(V, torch.Tensor) else type(V).__name__
            raise BadInputError(f"A @ V needs V of shape (n,) or (n, b) with n = {self.n}, got "
                                f"{shape}")
        return apply(self.matmat, V[:, None])[:, 0] if V.ndim == 1 else apply(self.matmat, V)

    def scaled(self, d: torch.Tensor) -> Operator:
        """``D^½ A D^½`` with ``D = diag(d)``, ``d > 0`` of shape ``(n,)``: symmetric, with the
        eigenvalues of ``D A`` (a diagonal preconditioner ``P = D⁻¹`` applied symmetrically)."""
        d = torch.as_tensor(d)
        if d.shape != (self.n,) or not bool((d > 0).all()) or not bool(torch.isfinite(d).all()):
            raise BadInputError(f"scaled(d) needs positive finite d of shape ({self.n},), got "
                                f"shape {tuple(d.shape)}")
        root = d.to(dtype=self.dtype, device=self.device).sqrt()[:, None]
        return Operator(self.n, self.dtype, self.device,
                        lambda V: root * self.matmat(root * V))

    def shifted(self, sigma: float) -> Operator:
        """``A + σ I``: every eigenvalue moved by ``σ``, the eigenvectors kept."""
        sigma = float(sigma)
        return Operator(self.n, self.dtype, self.device, lambda V: self.matmat(V) + sigma * V)

    def __repr__(self) -> str:
        return f"Operator(n={self.n}, dtype={self.dtype}, device={self.device})"


def as_operator(A: Operator | torch.Tensor) -> Operator:
    """``A`` itself, or the operator of a dense square matrix."""
    if isinstance(A, Operator):
        return A
    if isinstance(A, torch.Tensor):
        return Operator.dense(A)
    raise BadInputError(f"expected an Operator(n, dtype, device, matmat) or a square tensor, got "
                        f"{type(A).__name__}")

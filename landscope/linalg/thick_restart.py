"""The thick-restart Lanczos factorisation that :func:`~landscope.linalg.extreme_eigenpairs` drives.

What is hard: one product per step, a basis kept orthonormal to rounding (classical Gram–Schmidt,
twice), residuals that are real without spending products on them, and a run that goes on past an
invariant subspace. Maths: after j steps ``A V_j = V_j T_j + beta_j v_{j+1} e_j^T`` with ``V_j``
orthonormal; a Ritz pair ``(theta, V_j y)`` of ``T_j`` has residual ``beta_j |e_j^T y|`` in exact
arithmetic. Thick restart (Wu & Simon, 2000) keeps wanted Ritz vectors and continues from
``v_{j+1}``, which turns ``T`` into an arrowhead block followed by a tridiagonal one. The products
``A V_j`` are kept beside the basis, so ``A x = (A V) y`` for a Ritz vector ``x = V y``.

Which pairs are wanted, when they are accepted and what a restart keeps is the driver's choice
(:mod:`landscope.linalg.lanczos`); this module only builds, reads and restarts the factorisation.
"""

from __future__ import annotations

import torch

from landscope.linalg._common import apply, cgs2, gaussian, noise_level, small_eigh


class ThickRestart:
    """Basis, its products, projected matrix and counters of one thick-restart Lanczos run."""

    def __init__(self, matmat, n: int, m: int, dtype, device, gen) -> None:
        self.matmat, self.n, self.m, self.gen = matmat, n, m, gen
        self.dtype, self.device = dtype, device
        self.V = torch.zeros(n, m + 1, dtype=dtype, device=device)
        self.AV = torch.zeros(n, m, dtype=dtype, device=device)  # the products A V[:, :j]
        self.T = torch.zeros(m, m, dtype=torch.float64)
        self.j = 0  # columns of V already multiplied, i.e. the order of T
        self.beta = 0.0  # norm of the current residual vector V[:, j] before normalisation
        self.norm = 0.0  # largest |Ritz value| seen
        self.products = self.iterations = self.restarts = 0
        self.exhausted = False
        self.tiny = noise_level(dtype, n)

    def start(self, v: torch.Tensor) -> None:
        self.V[:, 0] = v / torch.linalg.vector_norm(v)

    def step(self) -> bool:
        """One Lanczos step on column ``j``; True if it hit an invariant subspace (not the end).

        Two host synchronisations: the finiteness check of the product and one transfer of the
        orthogonalisation's coefficients and norms (``T`` and the tests live on the CPU)."""
        j = self.j
        w = apply(self.matmat, self.V[:, j : j + 1])[:, 0]
        self.AV[:, j] = w
        self.products += 1
        self.iterations += 1
        w, coefficients, (before, beta), lost = cgs2(self.V[:, : j + 1], w)
        scale = max(before, self.norm)
        self.T[j, j] = coefficients[j]
        self.j = j + 1
        broke = False
        if self.j >= self.n:
            self.exhausted = True
        elif lost or beta <= self.tiny * scale:
            beta, broke = 0.0, True  # invariant subspace: continue with a fresh direction
            fresh = self._fresh()
            if fresh is None:
                self.exhausted = True
            else:
                self.V[:, self.j] = fresh
        else:
            self.V[:, self.j] = w / beta
        self.beta = beta
        if self.j < self.m:
            self.T[self.j, j] = self.T[j, self.j] = beta
        return broke

    def ritz(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Ascending eigenvalues and eigenvectors of the current ``T`` (float64, CPU)."""
        theta, Y = small_eigh(self.T[: self.j, : self.j])
        self.norm = max(self.norm, abs(float(theta[0])), abs(float(theta[-1])))
        return theta, Y

    def explicit(self, Y: torch.Tensor, wanted: list[int]):
        """Ritz vectors, their Rayleigh quotients and explicit residuals ‖Ax − θx‖.

        ``Ax`` is the same combination of the products already computed (``AV y`` for
        ``x = V y``): a true residual of the vector x, whatever the basis' orthogonality, that
        costs no product (before, one product per wanted pair at every check)."""
        coefficients = Y[:, wanted].to(dtype=self.dtype, device=self.device)
        X = self.V[:, : self.j] @ coefficients
        scale = torch.linalg.vector_norm(X, dim=0, keepdim=True)
        X, AX = X / scale, (self.AV[:, : self.j] @ coefficients) / scale
        quotients = (X * AX).sum(dim=0)
        residuals = torch.linalg.vector_norm(AX - X * quotients, dim=0)
        values, residuals = torch.stack([quotients, residuals]).to(
            device="cpu", dtype=torch.float64)  # one transfer
        self.norm = max(self.norm, float(values.abs().max()))
        return values, X, residuals

    def restart(self, theta: torch.Tensor, Y: torch.Tensor, keep: list[int]) -> None:
        """Keep the Ritz vectors ``keep`` and continue from the residual vector (arrowhead T)."""
        j, k = self.j, len(keep)
        combination = Y[:, keep].to(dtype=self.dtype, device=self.device)
        kept, products = self.V[:, :j] @ combination, self.AV[:, :j] @ combination
        self.V[:, :k], self.AV[:, :k] = kept, products
        self.V[:, k] = self.V[:, j]
        coupling = self.beta * Y[j - 1, keep]
        self.T.zero_()
        self.T[:k, :k] = torch.diag(theta[keep])
        self.T[k, :k] = coupling
        self.T[:k, k] = coupling
        self.j = k
        self.restarts += 1

    def _fresh(self) -> torch.Tensor | None:
        """A random unit vector orthogonal to the basis, or None if the space is exhausted."""
        for _ in range(3):
            r = gaussian(self.gen, self.n, self.dtype, self.device)
            r, _, _, lost = cgs2(self.V[:, : self.j], r)
            if not lost:
                return r / torch.linalg.vector_norm(r)
        return None

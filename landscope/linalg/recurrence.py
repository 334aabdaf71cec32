"""The Lanczos recurrence of a batch of start vectors at once, with full reorthogonalisation.

What is hard: keeping each basis orthonormal to rounding without paying two Gram–Schmidt passes
at every step, stopping each run at its own invariant subspace while the others go on, and
reading the device back once per step. Maths: from a unit ``q_1``, ``β_j q_{j+1} = A q_j − α_j q_j
− β_{j−1} q_{j−1}`` gives an orthonormal basis ``Q_k`` of the Krylov space ``K_k(A, q_1)`` with
``Q_kᵀ A Q_k = T_k``, tridiagonal with ``α`` on its diagonal and ``β`` beside it.

Two product structures share it: the columns of one operator (stochastic Lanczos quadrature: every
probe goes through the same ``A``, :func:`columns`) and rows as separate operators (S points
stepped together, row s through its own Hessian ``H_s``, :func:`rowwise`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch

from landscope.linalg._common import MatMat, apply, noise_level, not_finite
from landscope.progress import Progress

Multiply = Callable[[torch.Tensor, torch.Tensor | None], torch.Tensor]
"""``multiply(X, rows)``: the products of the running rows ``X`` (r, n); ``rows`` holds their
indices on the device, or is None when every row runs."""


class Recurrence(NamedTuple):
    """What :func:`batched_lanczos` computed for each start row.

    ``alpha`` (probes, lanczos_steps) and ``beta`` (probes, lanczos_steps) float64 CPU,
    ``beta[:, i]`` coupling steps ``i`` and ``i + 1``; ``sizes`` (probes,) int64: the steps each run
    made before its Krylov space became invariant (the rest of its row is zero); ``products``: rows
    multiplied; ``basis`` (probes, lanczos_steps, n) in the starts' dtype on their device, zero
    beyond ``sizes``.
    """

    alpha: torch.Tensor
    beta: torch.Tensor
    sizes: torch.Tensor
    products: int
    basis: torch.Tensor

    def tridiagonal(self) -> torch.Tensor:
        """The matrices ``T = Qᵀ A Q``, (probes, lanczos_steps, lanczos_steps) float64 CPU; a run
        that stopped early has a zero block after its first ``sizes[p]`` rows and columns."""
        off = torch.diag_embed(self.beta[:, :-1], offset=1)
        return torch.diag_embed(self.alpha) + off + off.transpose(1, 2)


def columns(matmat: MatMat) -> Multiply:
    """Every row through the one operator ``matmat`` (its columns are the rows here)."""
    return lambda X, rows: apply(matmat, X.T.contiguous(), finite=False).T


def rowwise(products: Callable[[torch.Tensor], torch.Tensor], operators: int) -> Multiply:
    """Row s through its own operator: ``products(V)`` maps ``(operators, n)``, one row per
    operator, to ``H_s v_s`` row by row; rows that stopped go in as zeros."""
    def multiply(X, rows):
        if rows is None:
            return products(X)
        full = X.new_zeros(operators, X.shape[1])
        full[rows] = X
        return products(full)[rows]
    return multiply


def batched_lanczos(multiply: Multiply, starts: torch.Tensor, lanczos_steps: int, *,
                    progress: Progress | None = None, breakdown: float | None = None,
                    check_finite: bool = True) -> Recurrence:
    """Lanczos recurrences from all rows of ``starts`` (probes, n), unit rows, at once; CGS2
    against each row's own basis.

    ``breakdown``: a run stops once ``β_j <= breakdown · max ‖A q‖`` (default ``10 eps √n``, the
    rounding floor), or when the second Gram–Schmidt pass removed more than half of what was
    left (the new vector lay inside the span). ``check_finite``: raise
    :class:`~landscope.errors.NonFiniteLossError` at a non-finite product; without it such a
    row carries NaN in its own numbers only. ``progress`` (:class:`~landscope.progress.Progress`)
    is told after every step the rows multiplied out of ``probes * lanczos_steps`` planned, and
    the step in its note.

    Host synchronisation: one device-to-host copy per step carries every row's scalars (norms,
    alpha, the product's finiteness); a step that needs the second Gram-Schmidt pass reads its
    two numbers per row in one more copy. The vectors never leave the device, and the recurrence
    divides by the norms held there (the host's float64 copies are the same numbers).
    """
    probes, n = starts.shape
    device = starts.device
    tiny = noise_level(starts.dtype, n) if breakdown is None else breakdown
    Q = torch.zeros(probes, lanczos_steps, n, dtype=starts.dtype, device=device)
    Q[:, 0, :] = starts
    alpha = torch.zeros(probes, lanczos_steps, dtype=torch.float64)
    beta = torch.zeros(probes, lanczos_steps, dtype=torch.float64)
    sizes = torch.full((probes,), lanczos_steps, dtype=torch.int64)
    active = torch.ones(probes, dtype=torch.bool)
    active_on_device, rows = active.to(device), None  # rows: the active probes' indices there
    scale = torch.zeros(probes, dtype=torch.float64)
    products, running = 0, probes
    beta_prev = torch.zeros(probes, dtype=starts.dtype, device=device)
    for i in range(lanczos_steps):
        if running == 0:
            break
        if running == probes:  # the common case: no indexing
            W = multiply(Q[:, i, :], None)
        else:
            W = torch.zeros(probes, n, dtype=starts.dtype, device=device)
            W[rows] = multiply(Q[rows, i, :], rows)
        products += running
        finite = torch.isfinite(W).all()
        # Three-term recurrence first, then one classical Gram-Schmidt pass against the whole
        # basis: the coefficients left after the recurrence are tiny, so one pass (two reads of
        # the basis) keeps orthogonality to rounding; a second pass runs only when the first
        # removed a large share (Daniel-Gragg-Kaufman-Stewart criterion, 1/√2).
        norm0 = torch.linalg.vector_norm(W, dim=1)
        q = Q[:, i, :]
        a0 = (W * q).sum(1)
        W = W - a0[:, None] * q
        if i:
            W -= beta_prev[:, None] * Q[:, i - 1, :]
        nb = torch.linalg.vector_norm(W, dim=1)
        B = Q[:, : i + 1, :]
        h = torch.bmm(B, W.unsqueeze(2))
        W = W - torch.bmm(B.transpose(1, 2), h).squeeze(2)
        norm = torch.linalg.vector_norm(W, dim=1)
        # the one device-to-host copy of the step
        numbers = torch.stack([norm0, nb, norm, a0 + h[:, i, 0], finite.expand(probes)])
        norm0, nb, n1, a, ok = numbers.double().cpu()
        if check_finite and not bool(ok.all()):
            raise not_finite()
        n2, repeated = n1, bool((active & (n1 < nb / math.sqrt(2))).any())
        if repeated:
            h2 = torch.bmm(B, W.unsqueeze(2))
            W = W - torch.bmm(B.transpose(1, 2), h2).squeeze(2)
            norm = torch.linalg.vector_norm(W, dim=1)
            n2, extra = torch.stack([norm, h2[:, i, 0]]).double().cpu()
            a = a + extra
        scale = torch.maximum(scale, norm0)
        every = running == probes  # boolean-mask indexing costs more than the arithmetic here
        alpha[:, i] = torch.where(active, a, alpha[:, i]) if not every else a
        if progress is not None:
            progress(products, probes * lanczos_steps, f"Lanczos step {i + 1}/{lanczos_steps}")
        if i + 1 == lanczos_steps:
            break
        broke = active & ((n2 <= tiny * scale) | (repeated & (n2 < 0.5 * n1)))
        if broke.any():  # rare: the masks go to the device only when they change
            sizes[broke] = i + 1
            active &= ~broke
            running = int(active.sum())
            active_on_device, rows = active.to(device), torch.nonzero(active).flatten().to(device)
        if running == probes:
            Q[:, i + 1, :] = W / norm[:, None]
            beta[:, i] = n2
            beta_prev = norm
        else:
            Q[rows, i + 1, :] = W[rows] / norm[rows, None]
            beta[active, i] = n2[active]
            beta_prev = torch.where(active_on_device, norm, 0.0)
    return Recurrence(alpha, beta, sizes, products, Q)

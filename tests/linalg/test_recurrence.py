"""The batched Lanczos recurrence: columns of one operator and rows as separate operators, against
numpy's eigenvalues and against runs made alone."""

from __future__ import annotations

import numpy as np
import torch
from linalg_helpers import with_spectrum

from landscope.errors import NonFiniteLossError
from landscope.linalg.recurrence import batched_lanczos, columns, rowwise


def test_probes_that_stop_early_leave_the_others_unchanged():
    """A probe inside a 3-dimensional invariant subspace stops at step 3; the probes still running
    beside it (masked bookkeeping) get the very recurrence they get when run alone."""
    lam = np.linspace(-1.0, 2.0, 40)
    A, Q = with_spectrum(lam, seed=3)
    At = torch.from_numpy(A)
    rng = np.random.default_rng(0)
    short = Q[:, [0, 7, 20]] @ rng.standard_normal(3)
    V0 = np.stack([short, rng.standard_normal(40), rng.standard_normal(40)])
    V0 = torch.from_numpy(V0 / np.linalg.norm(V0, axis=1, keepdims=True))
    breakdown = 1.5e-8  # stochastic Lanczos quadrature's: sqrt(eps) relative
    run = batched_lanczos(columns(lambda V: At @ V), V0, 12, breakdown=breakdown)
    assert run.sizes.tolist() == [3, 12, 12]
    assert run.products == 3 + 12 + 12
    assert not run.basis[0, 3:].any()  # nothing beyond the invariant subspace
    for j in (1, 2):
        alone = batched_lanczos(columns(lambda V: At @ V), V0[j:j + 1], 12, breakdown=breakdown)
        assert alone.sizes.tolist() == [12]
        torch.testing.assert_close(run.alpha[j], alone.alpha[0], rtol=0, atol=1e-12)
        torch.testing.assert_close(run.beta[j, :11], alone.beta[0, :11], rtol=0, atol=1e-12)
    np.testing.assert_allclose(np.sort(run.alpha[0, :3].numpy()).sum(), lam[[0, 7, 20]].sum(),
                               atol=1e-10)  # the trace of T equals that of A on the subspace


def test_rows_through_their_own_operators():
    """Row s goes through H_s only: a full run (steps = n) gives each H_s's eigenvalues, an
    orthonormal basis with QᵀH_sQ = T, and the recurrence each row gets alone."""
    n, spectra = 9, [np.linspace(-2.0, 3.0, 9), np.geomspace(0.1, 10.0, 9),
                     np.array([1.0, 1.0, 1.0, 2.0, 2.0, 5.0, 5.0, 5.0, 5.0])]
    H = torch.stack([torch.from_numpy(with_spectrum(lam, seed=s)[0])
                     for s, lam in enumerate(spectra)])
    starts = torch.randn(3, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    starts = starts / starts.norm(dim=1, keepdim=True)
    calls = []

    def products(V):
        calls.append(V.shape)
        return (H @ V[..., None])[..., 0]

    run = batched_lanczos(rowwise(products, 3), starts, n)
    assert all(shape == (3, n) for shape in calls)
    assert run.sizes.tolist() == [n, n, 3]  # three distinct eigenvalues end the third run
    T = run.tridiagonal()
    for s, lam in enumerate(spectra):
        size = int(run.sizes[s])
        Q = run.basis[s, :size].T
        torch.testing.assert_close(Q.T @ Q, torch.eye(size, dtype=torch.float64), atol=1e-12,
                                   rtol=0)
        torch.testing.assert_close(Q.T @ H[s] @ Q, T[s, :size, :size], atol=1e-12, rtol=0)
        distinct = np.unique(lam) if size < n else lam
        np.testing.assert_allclose(np.linalg.eigvalsh(T[s, :size, :size].numpy()), distinct,
                                   atol=1e-10)
        alone = batched_lanczos(columns(lambda V, s=s: H[s] @ V), starts[s:s + 1], n)
        torch.testing.assert_close(run.alpha[s], alone.alpha[0], rtol=0, atol=1e-12)


def test_non_finite_products_raise_or_stay_in_their_row():
    H = torch.stack([torch.eye(4, dtype=torch.float64), torch.full((4, 4), float("nan"),
                                                                   dtype=torch.float64)])
    starts = torch.ones(2, 4, dtype=torch.float64) / 2

    def multiply(X, rows):
        return rowwise(lambda V: (H @ V[..., None])[..., 0], 2)(X, rows)

    try:
        batched_lanczos(multiply, starts, 3)
        raised = False
    except NonFiniteLossError:
        raised = True
    assert raised
    run = batched_lanczos(multiply, starts, 3, check_finite=False)
    assert run.alpha[0, 0] == 1.0 and run.sizes[0] == 1 and run.alpha[1].isnan().any()

"""Dense building and dense eigendecomposition against known spectra."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linalg_helpers import Counting, with_spectrum

from landscope.errors import BadInputError, NonFiniteLossError
from landscope.linalg import Operator, dense_eigh, dense_from_matmat, extreme_eigenpairs


@pytest.mark.parametrize(("n", "batch"), [(1, 64), (7, 3), (50, 64), (130, 64)])
def test_dense_from_matmat_rebuilds_the_matrix(n, batch):
    lam = np.linspace(-2.0, 3.0, n)
    A, _ = with_spectrum(lam, seed=n)
    op = Counting(A)
    H = dense_from_matmat(op, batch=batch)
    assert op.columns == n and op.calls == -(-n // batch)
    np.testing.assert_allclose(H.numpy(), A, atol=1e-14)


def test_dense_from_matmat_symmetrises_and_keeps_dtype():
    rng = np.random.default_rng(0)
    B = rng.standard_normal((9, 9))
    H = dense_from_matmat(Counting(B, dtype=torch.float32), batch=4)
    assert H.dtype == torch.float32
    np.testing.assert_allclose(H.numpy(), (B + B.T) / 2, atol=1e-6)


def test_dense_eigh_known_spectrum_with_repeats():
    lam = np.array([-1.0, -1.0, 0.0, 0.0, 0.0, 2.5, 4.0, 4.0])
    A, _ = with_spectrum(lam, seed=3)
    values, vectors = dense_eigh(torch.from_numpy(A).float())
    assert values.dtype == vectors.dtype == torch.float64
    np.testing.assert_allclose(values.numpy(), lam, atol=1e-6)
    V = vectors.numpy()
    np.testing.assert_allclose(V.T @ V, np.eye(8), atol=1e-12)
    np.testing.assert_allclose(A @ V, V * values.numpy(), atol=1e-6)
    values64, _ = dense_eigh(torch.from_numpy(A))
    np.testing.assert_allclose(values64.numpy(), lam, atol=1e-13)


def test_dense_eigh_uses_the_symmetric_part():
    B = torch.tensor([[1.0, 2.0], [0.0, 1.0]])
    values, _ = dense_eigh(B)
    np.testing.assert_allclose(values.numpy(), [0.0, 2.0], atol=1e-15)


def test_errors():
    with pytest.raises(BadInputError):
        dense_eigh(torch.zeros(2, 3))
    with pytest.raises(BadInputError):
        dense_eigh(torch.tensor([[float("nan")]]))
    with pytest.raises(NonFiniteLossError):
        dense_from_matmat(Operator(3, torch.float64, "cpu", lambda V: V * float("inf")))
    with pytest.raises(NonFiniteLossError):
        extreme_eigenpairs(Operator(3, torch.float64, "cpu", lambda V: V * float("nan")))
    with pytest.raises(BadInputError, match="dtype"):
        dense_from_matmat(Operator(3, torch.float64, "cpu", lambda V: V.float()))

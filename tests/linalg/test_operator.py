"""Operator: products, the derived operators D^½ A D^½ and A + σI, and dense matrices passed
directly to the routines, against numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linalg_helpers import with_spectrum

from landscope.errors import BadInputError
from landscope.linalg import Operator, dense_from_matmat, extreme_eigenpairs, hutchinson, slq

LAM = np.linspace(-1.0, 3.0, 12)


@pytest.fixture
def matrix():
    A, _ = with_spectrum(LAM, seed=1)
    return torch.from_numpy(A)


def test_products_of_vectors_and_blocks(matrix):
    op = Operator.dense(matrix)
    assert (op.n, op.dtype, op.device) == (12, torch.float64, torch.device("cpu"))
    v, V = torch.arange(12.0, dtype=torch.float64), torch.ones(12, 3, dtype=torch.float64)
    torch.testing.assert_close(op @ v, matrix @ v)
    torch.testing.assert_close(op @ V, matrix @ V)


def test_scaled_and_shifted_have_the_expected_spectra(matrix):
    d = torch.linspace(0.5, 2.0, 12, dtype=torch.float64)
    op = Operator.dense(matrix)
    scaled = dense_from_matmat(op.scaled(d)).numpy()
    expected = np.sort(np.linalg.eigvals(np.diag(d.numpy()) @ matrix.numpy()).real)
    np.testing.assert_allclose(np.linalg.eigvalsh(scaled), expected, atol=1e-12)
    shifted = dense_from_matmat(op.shifted(0.25)).numpy()
    np.testing.assert_allclose(np.linalg.eigvalsh(shifted), LAM + 0.25, atol=1e-12)


def test_routines_take_dense_matrices(matrix):
    result = extreme_eigenpairs(matrix, k_largest=1, k_smallest=1)
    assert result.converged
    np.testing.assert_allclose(result.largest.values, [LAM[-1]], atol=1e-10)
    np.testing.assert_allclose(result.smallest.values, [LAM[0]], atol=1e-10)
    assert slq(matrix, probes=2, lanczos_steps=12).n == 12
    assert hutchinson(matrix, probes=4).samples == 4


def test_bad_operators_are_named(matrix):
    with pytest.raises(BadInputError, match="square"):
        Operator.dense(torch.zeros(2, 3))
    with pytest.raises(BadInputError, match="positive"):
        Operator.dense(matrix).scaled(-torch.ones(12))
    with pytest.raises(BadInputError, match="shape"):
        Operator.dense(matrix) @ torch.ones(5)
    with pytest.raises(BadInputError, match="Operator"):
        extreme_eigenpairs(lambda V: V)
    with pytest.raises(BadInputError, match="n=0; use a whole number ≥ 1"):
        Operator(0, torch.float64, "cpu", lambda V: V)

"""extreme_eigenpairs against numpy.linalg.eigh on matrices with chosen spectra."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from linalg_helpers import Counting, with_spectrum

from landscope.errors import BadInputError
from landscope.linalg import Operator, extreme_eigenpairs


def numpy_residuals(A: np.ndarray, values, vectors) -> np.ndarray:
    """||A v - value v|| in float64, recomputed independently of the implementation."""
    V = vectors.detach().double().numpy()
    lam = values.numpy()
    return np.linalg.norm(A @ V - V * lam, axis=0)


def check_pairs(A, pairs, truth, tol_rel, res_limit):
    """Values close to ``truth``, unit vectors, honest residuals below ``res_limit``."""
    values = pairs.values.numpy()
    assert pairs.values.dtype == torch.float64
    np.testing.assert_array_less(np.abs(values - truth) / np.abs(truth), tol_rel)
    norms = np.linalg.norm(pairs.vectors.double().numpy(), axis=0)
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
    independent = numpy_residuals(A, pairs.values, pairs.vectors)
    np.testing.assert_array_less(independent, res_limit)
    # The reported residuals are the explicit ones, not the Lanczos estimate.
    np.testing.assert_allclose(pairs.residuals.numpy(), independent, rtol=0.2, atol=res_limit / 20)


@pytest.mark.parametrize("k", [1, 5])
@pytest.mark.parametrize("end", ["largest", "smallest"])
def test_trained_like_float64(trained2000, k, end):
    A, lam, _, _ = trained2000
    op = Counting(A)
    kwargs = {"k_largest": k, "k_smallest": 0} if end == "largest" else {"k_largest": 0}
    if end == "smallest":
        kwargs["k_smallest"] = k
    result = extreme_eigenpairs(op, rtol=1e-6, **kwargs)
    assert result.converged
    assert result.products == op.columns
    norm = np.abs(lam).max()
    assert norm * (1 - 1e-6) <= result.norm_estimate <= norm * (1 + 1e-9)
    truth = lam[::-1][:k] if end == "largest" else lam[:k]
    pairs = getattr(result, end)
    assert getattr(result, "smallest" if end == "largest" else "largest") is None
    check_pairs(A, pairs, truth, 1e-6, 1e-6 * norm * (1 + 1e-6))


def test_both_ends_in_one_run(trained2000):
    A, lam, _, _ = trained2000
    op = Counting(A)
    result = extreme_eigenpairs(op, k_largest=3, k_smallest=3)
    assert result.converged and result.products == op.columns
    limit = 1e-6 * np.abs(lam).max() * (1 + 1e-6)
    check_pairs(A, result.largest, lam[::-1][:3], 1e-6, limit)
    check_pairs(A, result.smallest, lam[:3], 1e-6, limit)
    vectors = torch.cat([result.largest.vectors, result.smallest.vectors], dim=1).numpy()
    np.testing.assert_allclose(vectors.T @ vectors, np.eye(6), atol=1e-6)


def test_trained_like_float32(trained2000):
    A, lam, _, _ = trained2000
    A32 = A.astype(np.float32)
    rounding = np.linalg.norm(A32.astype(np.float64) - A)  # moves eigenvalues by at most this
    op = Counting(A32, dtype=torch.float32)
    result = extreme_eigenpairs(
        op, k_largest=2, k_smallest=2, rtol=1e-5
    )
    assert result.converged and result.products == op.columns
    assert result.largest.vectors.dtype == torch.float32
    limit = 2e-5 * np.abs(lam).max() + rounding
    check_pairs(A, result.largest, lam[::-1][:2], 1e-4, limit)
    check_pairs(A, result.smallest, lam[:2], 1e-4, limit)


def test_float32_unattainable_tolerance_is_not_reported_converged(trained2000):
    A, lam, _, _ = trained2000
    op = Counting(A, dtype=torch.float32)
    tol = 1e-10  # far below float32's floor (about 1e-7 relative)
    result = extreme_eigenpairs(
        op, k_smallest=1, k_largest=0, rtol=tol, max_products=150
    )
    assert not result.converged
    assert op.columns == result.products <= 150
    independent = numpy_residuals(A, result.smallest.values, result.smallest.vectors)
    assert independent[0] > tol * np.abs(lam).max()
    assert abs(result.smallest.values[0].item() - lam[0]) < 1e-3  # still a useful answer


def test_budget_too_small_returns_unconverged_with_residuals(trained2000):
    A, lam, _, _ = trained2000
    op = Counting(A)
    result = extreme_eigenpairs(op, k_largest=0, k_smallest=2, max_products=12)
    assert not result.converged
    assert op.columns == result.products <= 12
    pairs = result.smallest
    assert pairs.values.shape == pairs.residuals.shape == (2,)
    independent = numpy_residuals(A, pairs.values, pairs.vectors)
    np.testing.assert_allclose(pairs.residuals.numpy(), independent, rtol=1e-6)
    assert independent.max() > result.tol * result.norm_estimate
    assert not result.to_dict()["converged"]


@pytest.mark.parametrize("budget", [4, 8, 16, 24, 32, 40, 60])
def test_converged_flag_is_never_optimistic(trained2000, budget):
    A, lam, _, _ = trained2000
    op = Counting(A)
    result = extreme_eigenpairs(op, k_largest=0, k_smallest=1, max_products=budget)
    assert op.columns == result.products <= budget
    independent = numpy_residuals(A, result.smallest.values, result.smallest.vectors)[0]
    truth_ok = independent <= 1e-6 * np.abs(lam).max() * (1 + 1e-6)
    assert result.converged == truth_ok
    if budget <= 16:
        assert not result.converged
    if result.converged:
        assert abs(result.smallest.values[0].item() - lam[0]) < 1e-6 * abs(lam[0])


def test_start_vector_in_an_invariant_subspace(trained2000):
    """v0 = an eigenvector of a middle eigenvalue: the run must not stop there."""
    A, lam_sorted, Q, lam = trained2000
    middle = int(np.argmin(np.abs(lam - 0.5)))
    v0 = torch.from_numpy(Q[:, middle].copy())
    result = extreme_eigenpairs(Counting(A), k_largest=1, v0=v0)
    assert result.converged
    assert abs(result.largest.values[0].item() - 12.0) < 1e-9


@pytest.mark.parametrize(
    ("lam", "k_largest", "k_smallest"),
    [
        ([3.0], 1, 0),
        ([-2.0], 0, 1),
        ([1.0, -4.0], 1, 1),
        ([2.0, 2.0], 2, 0),
        ([2.0, 2.0, -1.0], 2, 0),
        ([2.0, 2.0, -1.0], 0, 1),
        ([2.0, 2.0, -1.0], 2, 1),
        ([0.0, 0.0, 0.0], 1, 1),
        ([1e-3, 7.0, -7.0], 1, 1),
    ],
)
def test_tiny_operators_are_exact(lam, k_largest, k_smallest):
    A, _ = with_spectrum(lam, seed=3)
    op = Counting(A)
    result = extreme_eigenpairs(op, k_largest=k_largest, k_smallest=k_smallest)
    assert result.converged and result.products == op.columns
    exact = np.sort(lam)
    if k_largest:
        np.testing.assert_allclose(
            result.largest.values.numpy(), exact[::-1][:k_largest], atol=1e-12
        )
    if k_smallest:
        np.testing.assert_allclose(result.smallest.values.numpy(), exact[:k_smallest], atol=1e-12)


def test_repeated_eigenvalues_small_n():
    """Few distinct eigenvalues: each invariant subspace is left for a fresh direction, and the
    run goes on until the basis is full, so multiplicities are found (single-vector Krylov alone
    would see each eigenvalue once)."""
    lam = np.repeat([5.0, 2.0, 0.5, -3.0], [3, 10, 15, 2])
    A, _ = with_spectrum(lam, seed=4)
    op = Counting(A)
    result = extreme_eigenpairs(op, k_largest=3, k_smallest=2)
    assert result.converged and result.products == op.columns
    np.testing.assert_allclose(result.largest.values.numpy(), [5.0, 5.0, 5.0], atol=1e-10)
    np.testing.assert_allclose(result.smallest.values.numpy(), [-3.0, -3.0], atol=1e-10)
    V = result.largest.vectors.numpy()
    np.testing.assert_allclose(V.T @ V, np.eye(3), atol=1e-8)


def test_repeated_bulk_and_restarts():
    """A basis much smaller than the problem forces restarts; repeats sit in the unwanted bulk."""
    rng = np.random.default_rng(5)
    lam = np.concatenate([[4.0, 3.5, 3.4], np.repeat(rng.uniform(-1, 1, 100), 3), [-1.5]])
    A, _ = with_spectrum(lam, seed=6)
    op = Counting(A)
    result = extreme_eigenpairs(
        op, k_largest=2, k_smallest=1, basis_size=12, max_products=2000
    )
    assert result.converged and result.restarts > 0 and result.products == op.columns
    np.testing.assert_allclose(result.largest.values.numpy(), [4.0, 3.5], rtol=1e-6)
    np.testing.assert_allclose(result.smallest.values.numpy(), [-1.5], rtol=1e-6)


def test_seed_reproducible_and_progress_reports(trained2000):
    A, _, _, _ = trained2000
    seen = []
    first = extreme_eigenpairs(
        Counting(A),
        k_smallest=1,
        k_largest=1,
        seed=7,
        progress=lambda done, total, note: seen.append((done, total, note)),
    )
    second = extreme_eigenpairs(Counting(A), k_smallest=1, k_largest=1, seed=7)
    assert torch.equal(first.smallest.values, second.smallest.values)
    assert first.products == second.products
    assert seen and all(isinstance(p, int) and total == 500 for p, total, _ in seen)  # the budget
    assert all(float(note.removeprefix("residual ")) >= 0 for _, _, note in seen)
    assert [p for p, _, _ in seen] == sorted(p for p, _, _ in seen)
    assert seen[-1][0] <= first.products
    summary = json.loads(json.dumps(first.to_dict()))
    assert summary["products"] == first.products
    assert summary["smallest"]["values"] == first.smallest.values.tolist()
    assert "vectors" not in json.dumps(summary)


def test_bad_arguments_are_named():
    A, _ = with_spectrum([1.0, 2.0, 3.0], seed=0)
    op = Counting(A)
    with pytest.raises(BadInputError, match="exceeds n = 3"):
        extreme_eigenpairs(op, k_largest=2, k_smallest=2)
    with pytest.raises(ValueError, match="at least one"):
        extreme_eigenpairs(op, k_largest=0, k_smallest=0)
    with pytest.raises(ValueError, match="max_products"):
        extreme_eigenpairs(op, k_largest=2, max_products=3)
    with pytest.raises(ValueError, match="rtol"):
        extreme_eigenpairs(op, rtol=0.0)
    with pytest.raises(ValueError, match="shape"):
        extreme_eigenpairs(Operator(3, torch.float64, "cpu", lambda V: V[:2]))

"""Warm starts of extreme_eigenpairs: the same answers as cold runs, in fewer products when the
warm vectors come from a nearby operator, and still right when they are poor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from linalg_helpers import Counting, with_spectrum

from landscope.errors import BadInputError
from landscope.linalg import extreme_eigenpairs

N = 400


@pytest.fixture(scope="module")
def nearby():
    """``(A, B, truth of B)``: a spectrum hard for Lanczos (λ = t³ on a grid of [-1, 1]) and the
    same operator moved by a symmetric perturbation of norm 1e-4."""
    A, _ = with_spectrum(np.linspace(-1, 1, N) ** 3, seed=2)
    E = np.random.default_rng(0).standard_normal((N, N))
    E = (E + E.T) / 2
    B = A + 1e-4 * E / np.linalg.norm(E, 2)
    return A, B, np.linalg.eigvalsh(B)


def both_ends(result):
    return torch.cat([p.vectors for p in (result.largest, result.smallest) if p is not None], 1)


@pytest.mark.parametrize(("k_largest", "k_smallest"), [(1, 0), (1, 1), (2, 2)])
def test_warm_start_at_a_nearby_operator_same_values_fewer_products(nearby, k_largest, k_smallest):
    A, B, truth = nearby
    kwargs = {"k_largest": k_largest, "k_smallest": k_smallest, "rtol": 1e-6, "seed": 1}
    previous = extreme_eigenpairs(Counting(A), **kwargs)
    cold = extreme_eigenpairs(Counting(B), **kwargs)
    op = Counting(B)
    warm = extreme_eigenpairs(op, warm=both_ends(previous), **kwargs)
    assert cold.converged and warm.converged and warm.products == op.columns
    limit = 1e-6 * np.abs(truth).max()
    np.testing.assert_allclose(warm.largest.values.numpy(), truth[::-1][:k_largest], atol=limit)
    if k_smallest:
        np.testing.assert_allclose(warm.smallest.values.numpy(), truth[:k_smallest], atol=limit)
    assert warm.products <= cold.products / 2 if k_smallest < 2 else warm.products < cold.products


@pytest.mark.slow
def test_poor_warm_vectors_still_reach_the_cold_answer(trained2000):
    A, lam, _, _ = trained2000
    n, limit = A.shape[0], 1e-6 * np.abs(lam).max()
    other, _ = with_spectrum(np.linspace(-3, 3, n), seed=9)  # another operator's eigenvectors
    other_vectors = both_ends(extreme_eigenpairs(Counting(other), k_largest=2, k_smallest=2))
    seeded = torch.Generator().manual_seed(0)
    blocks = {
        "random": torch.randn(n, 3, generator=seeded, dtype=torch.float64),
        "another operator": other_vectors,
        "more vectors than wanted": torch.randn(n, 12, generator=seeded, dtype=torch.float64),
        "one vector, (n,)": torch.ones(n, dtype=torch.float64),
        "dependent columns": torch.ones(n, 2, dtype=torch.float64),
    }
    for name, block in blocks.items():
        result = extreme_eigenpairs(Counting(A), k_largest=2, k_smallest=2, warm=block)
        assert result.converged, name
        np.testing.assert_allclose(result.largest.values.numpy(), lam[::-1][:2], atol=limit,
                                   err_msg=name)
        np.testing.assert_allclose(result.smallest.values.numpy(), lam[:2], atol=limit,
                                   err_msg=name)


def test_warm_vectors_in_an_invariant_subspace_do_not_end_the_run(trained2000):
    """The warm block spans eigenvectors of middle eigenvalues: the random part finds the ends."""
    A, lam_sorted, Q, lam = trained2000
    middle = np.argsort(np.abs(lam - 0.5))[:3]
    block = torch.from_numpy(Q[:, middle].copy())
    result = extreme_eigenpairs(Counting(A), k_largest=1, k_smallest=1, warm=block)
    assert result.converged
    assert abs(result.largest.values[0].item() - 12.0) < 1e-9
    assert abs(result.smallest.values[0].item() - lam_sorted[0]) < 1e-9


def test_a_warm_block_spanning_everything_is_exact():
    A, _ = with_spectrum([3.0, 1.0, -2.0], seed=0)
    result = extreme_eigenpairs(Counting(A), k_largest=1, k_smallest=1,
                                warm=torch.eye(3, dtype=torch.float64))
    assert result.converged
    assert result.largest.values.tolist() == pytest.approx([3.0], abs=1e-12)
    assert result.smallest.values.tolist() == pytest.approx([-2.0], abs=1e-12)


def test_bad_warm_starts_are_named():
    A, _ = with_spectrum([1.0, 2.0, 3.0], seed=0)
    with pytest.raises(BadInputError, match=r"shape \(n, p\).*n = 3.*\(4, 2\)"):
        extreme_eigenpairs(Counting(A), warm=torch.zeros(4, 2))
    with pytest.raises(BadInputError, match="not both"):
        extreme_eigenpairs(Counting(A), warm=torch.ones(3, 1), v0=torch.ones(3))
    with pytest.raises(BadInputError, match="finite"):
        extreme_eigenpairs(Counting(A), warm=torch.full((3, 1), float("nan")))

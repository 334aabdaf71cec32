"""Hutchinson trace estimates against exact traces and the exact estimator variance."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from linalg_helpers import Counting, with_spectrum

from landscope.errors import BadInputError
from landscope.linalg import extreme_eigenpairs, hutchinson


def rademacher_std(A: np.ndarray) -> float:
    """Exact standard deviation of z^T A z for Rademacher z: sqrt(2 (||A||_F^2 - sum A_ii^2))."""
    return math.sqrt(2.0 * (np.sum(A * A) - np.sum(np.diag(A) ** 2)))


@pytest.fixture(scope="module")
def outliers():
    """n = 400: a bulk in [-0.5, 1] and five large outliers (which dominate the variance)."""
    rng = np.random.default_rng(21)
    lam = np.concatenate([[40.0, 30.0, 25.0, 20.0, 15.0], rng.uniform(-0.5, 1.0, 395)])
    A, Q = with_spectrum(lam, seed=22)
    return A, lam, Q


def test_exact_trace_within_four_stderr(outliers, trained2000):
    A, lam, _ = outliers
    op = Counting(A)
    est = hutchinson(op, probes=200, batch=25, seed=0)
    assert est.samples == 200 and est.products == op.columns == 200
    assert op.calls == 8
    assert abs(est.value - lam.sum()) <= 4 * est.stderr
    assert est.stderr == pytest.approx(rademacher_std(A) / math.sqrt(200), rel=0.3)
    A2, lam2, _, _ = trained2000
    est2 = hutchinson(Counting(A2), probes=60, batch=20, seed=1)
    assert abs(est2.value - lam2.sum()) <= 4 * est2.stderr


def test_stderr_shrinks_like_one_over_sqrt_samples(outliers):
    A, lam, _ = outliers
    small = hutchinson(Counting(A), probes=100, batch=50, seed=3)
    large = hutchinson(Counting(A), probes=1600, batch=200, seed=4)
    assert small.stderr / large.stderr == pytest.approx(4.0, rel=0.3)
    exact = rademacher_std(A)
    assert large.stderr * math.sqrt(1600) == pytest.approx(exact, rel=0.15)
    assert abs(large.value - lam.sum()) <= 4 * large.stderr


def test_deflation_reduces_stderr_and_stays_unbiased(outliers):
    A, lam, Q = outliers
    top = np.argsort(lam)[::-1][:5]
    plain = hutchinson(Counting(A), probes=100, seed=5)
    op = Counting(A)
    deflated = hutchinson(
        op,
        probes=100,
        seed=5,
        deflate=(torch.from_numpy(lam[top]), torch.from_numpy(Q[:, top].copy())),
    )
    assert deflated.deflated == 5 and deflated.products == op.columns == 100
    assert deflated.stderr < plain.stderr / 4  # exact ratio of the stds: about 6
    assert abs(deflated.value - lam.sum()) <= 4 * deflated.stderr
    # The variance left is that of P A P, computed exactly.
    P = np.eye(lam.size) - Q[:, top] @ Q[:, top].T
    assert deflated.stderr * 10 == pytest.approx(rademacher_std(P @ A @ P), rel=0.3)


def test_deflation_with_lanczos_pairs(outliers):
    """Ritz pairs from extreme_eigenpairs (Rayleigh quotients) deflate without bias."""
    A, lam, _ = outliers
    pairs = extreme_eigenpairs(Counting(A), k_largest=5).largest
    est = hutchinson(
        Counting(A), probes=100, seed=6, deflate=(pairs.values, pairs.vectors)
    )
    assert abs(est.value - lam.sum()) <= 4 * est.stderr
    assert est.stderr < 2.0  # undeflated: about 9 (std of P A P / 10 is about 1.4)


def test_rtol_stops_early_and_samples_is_a_maximum(outliers):
    A, lam, Q = outliers
    op = Counting(A)
    est = hutchinson(op, probes=5000, batch=20, rtol=0.05, seed=7)
    assert est.samples < 5000 and est.samples % 20 == 0 and est.samples >= 40
    assert est.stderr <= 0.05 * abs(est.value)
    assert est.products == op.columns == est.samples
    capped = hutchinson(Counting(A), probes=25, batch=10, rtol=1e-9, seed=7)
    assert capped.samples == capped.products == 25


def test_float32_progress_and_summary(outliers):
    A, lam, _ = outliers
    seen = []
    est = hutchinson(
        Counting(A, dtype=torch.float32),
        probes=40,
        batch=16,
        progress=lambda done, total, note: seen.append((done, total, note)),
    )
    assert [(done, total) for done, total, _ in seen] == [(16, 40), (32, 40), (40, 40)]
    relative = est.stderr / abs(est.value)
    assert seen[-1][2] == f"stderr/|trace| {relative:.1e}"
    assert abs(est.value - lam.sum()) <= 4 * est.stderr
    assert json.loads(json.dumps(est.to_dict()))["samples"] == 40


def test_bad_arguments(outliers):
    A, lam, Q = outliers
    with pytest.raises(BadInputError, match="probes"):
        hutchinson(Counting(A), probes=1)
    not_orthonormal = torch.from_numpy(2.0 * Q[:, :2])
    with pytest.raises(BadInputError, match="orthonormal"):
        hutchinson(Counting(A), deflate=(torch.ones(2), not_orthonormal))
    with pytest.raises(BadInputError, match="match"):
        hutchinson(Counting(A), deflate=(torch.ones(3), torch.from_numpy(Q[:, :2])))

"""Stochastic Lanczos quadrature against exact spectra and exact probe measures."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from linalg_helpers import Counting, fast_with_spectrum, with_spectrum

from landscope.errors import BadInputError
from landscope.linalg import slq


def probe_vectors(op: Counting) -> np.ndarray:
    """The probes: the first block slq multiplied (it starts every recurrence from its probe)."""
    return op.inputs[0].double().numpy()


def probe_cdf(lam: np.ndarray, Q: np.ndarray, v: np.ndarray, t: float) -> float:
    """Exact measure of (-inf, t] under mu_v = sum_i (q_i^T v)^2 delta(lam_i)."""
    return float(probe_masses(Q, v)[lam <= t].sum())


def probe_masses(Q: np.ndarray, v: np.ndarray) -> np.ndarray:
    """The masses (q_i^T v)^2 of the probe measure."""
    return (Q.T @ v) ** 2


@pytest.fixture(scope="module")
def bulk_spectrum():
    """n = 1000: a semicircle-like bulk on [-1, 2], a few outliers, and some exact zeros."""
    rng = np.random.default_rng(11)
    lam = np.concatenate(
        [
            1.5 * np.cos(np.pi * rng.uniform(0, 1, 900)) + 0.5,
            np.zeros(90),
            [5.0, 6.0, 8.0],
            -rng.uniform(1.0, 1.5, 7),
        ]
    )
    A, Q = fast_with_spectrum(lam, seed=2)
    return A, lam, Q


def test_density_and_cdf_match_exact_spectrum(bulk_spectrum):
    A, lam, _ = bulk_spectrum
    n = lam.size
    op = Counting(A)
    quad = slq(op, probes=48, lanczos_steps=40, seed=3)
    assert quad.products == op.columns == 48 * 40
    assert op.calls == 40  # one batched call per step
    np.testing.assert_allclose(quad.weights.sum(dim=1).numpy(), 1.0, atol=1e-12)
    assert bool((quad.nodes[:, 1:] >= quad.nodes[:, :-1]).all())
    # Smoothed density against the same smoothing of the exact eigenvalues.
    sigma = 0.15
    grid = np.linspace(-3.0, 10.0, 1301)
    density = quad.density(torch.from_numpy(grid), sigma).numpy()
    exact = np.exp(-0.5 * ((grid[:, None] - lam[None, :]) / sigma) ** 2).sum(axis=1)
    exact /= n * sigma * math.sqrt(2 * math.pi)
    step = grid[1] - grid[0]
    assert abs(density.sum() * step - 1.0) < 1e-3
    assert np.abs(density - exact).sum() * step < 0.08
    # CDF: estimate close, exact value inside the bracket widened by 3 standard errors.
    for t in [-1.2, -0.5, -1e-9, 0.0, 0.4, 1.0, 1.9, 4.0, 7.0]:
        truth = float((lam <= t).mean())
        est, low, up, se = quad.cdf_bracket(t)
        assert low <= est <= up
        assert low - 3 * se <= truth <= up + 3 * se, (t, truth, low, up, se)
        assert abs(est - truth) < 0.08


@pytest.mark.slow
def test_negative_fraction_bracket_trained_like(trained2000):
    A, lam, _, _ = trained2000
    quad = slq(Counting(A), probes=16, lanczos_steps=40, seed=0)
    truth = float((lam > 0).mean())
    est, low, up, se = quad.fraction_between(0.0, 1e6)
    assert 0.0 <= low <= est <= up <= 1.0
    assert low - 3 * se <= truth <= up + 3 * se, (truth, low, up, se)
    assert quad.cdf_bracket(-math.inf) == (0.0, 0.0, 0.0, 0.0)
    assert quad.cdf_bracket(math.inf) == (1.0, 1.0, 1.0, 0.0)
    est_inf, low_inf, up_inf, se_inf = quad.fraction_between(0.0, math.inf)
    assert est_inf == pytest.approx(est)
    assert low - 1e-12 <= low_inf <= est_inf <= up_inf <= up + 1e-12  # +inf is sharper
    assert low_inf - 3 * se_inf <= truth <= up_inf + 3 * se_inf
    # Away from the bulk (where one node carries most of the mass) the bracket is narrow.
    for t in [-0.1, 1.0]:
        est, low, up, se = quad.cdf_bracket(t)
        truth = float((lam <= t).mean())
        assert low - 3 * se <= truth <= up + 3 * se
        assert up - low < 0.05


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_cms_bracket_contains_each_probe_measure(bulk_spectrum, seed):
    """Per probe, the Chebyshev-Markov-Stieltjes bracket must contain mu_v((-inf, t])."""
    A, lam, Q = bulk_spectrum
    op = Counting(A, keep_inputs=True)
    quad = slq(op, probes=1, lanczos_steps=12, seed=seed)
    masses = probe_masses(Q, probe_vectors(op)[:, 0])
    widths = []
    for t in np.linspace(-2.0, 9.0, 221):
        est, low, up, se = quad.cdf_bracket(float(t))
        assert se == 0.0
        truth = float(masses[lam <= t].sum())
        assert low - 1e-10 <= truth <= up + 1e-10, (t, low, truth, up)
        widths.append(up - low)
    assert np.mean(widths) < 0.35


def test_gauss_quadrature_exact_for_low_degree_polynomials():
    """m steps: sum_i w_i x_i^p = v^T A^p v for p <= 2m - 1 (and not beyond, in general)."""
    rng = np.random.default_rng(7)
    lam = rng.uniform(-1.0, 1.0, 60)
    A, _ = with_spectrum(lam, seed=8)
    op = Counting(A, keep_inputs=True)
    steps = 5
    quad = slq(op, probes=3, lanczos_steps=steps, seed=1)
    V = probe_vectors(op)
    np.testing.assert_allclose(np.linalg.norm(V, axis=0), 1.0, atol=1e-12)
    for p in range(2 * steps + 1):
        Ap = np.linalg.matrix_power(A, p)
        exact = np.einsum("ij,ik,kj->j", V, Ap, V)
        quadrature = (quad.weights * quad.nodes**p).sum(dim=1).numpy()
        if p < 2 * steps:
            np.testing.assert_allclose(quadrature, exact, atol=1e-12)
        else:
            assert np.abs(quadrature - exact).max() > 1e-8


def test_few_distinct_eigenvalues_breakdown_is_exact():
    """With steps == n, each probe stops at its invariant subspace; the rule is its measure."""
    values = np.array([-2.0, -0.5, 0.0, 1.0, 3.0])
    lam = np.repeat(values, [5, 10, 15, 10, 10])
    A, Q = with_spectrum(lam, seed=9)
    n = lam.size
    op = Counting(A, keep_inputs=True)
    quad = slq(op, probes=4, lanczos_steps=n, seed=2)
    assert quad.steps == n
    assert quad.sizes is not None and quad.sizes.tolist() == [5, 5, 5, 5]
    assert quad.products == op.columns == 4 * 5  # stopped probes use no more products
    V = probe_vectors(op)
    for j in range(4):
        np.testing.assert_allclose(quad.nodes[j, :5].numpy(), values, atol=1e-10)
        exact_weights = [float(((Q[:, lam == x].T @ V[:, j]) ** 2).sum()) for x in values]
        np.testing.assert_allclose(quad.weights[j, :5].numpy(), exact_weights, atol=1e-10)
        assert float(quad.weights[j, 5:].abs().max()) == 0.0
        for p in range(2 * n):  # exact for all polynomials, far beyond 2 * 5 - 1
            exact = V[:, j] @ (Q * lam**p) @ Q.T @ V[:, j]
            got = float((quad.weights[j] * quad.nodes[j] ** p).sum())
            assert abs(got - exact) <= 1e-9 * max(1.0, abs(exact)), p
    # The probe measures are exact, so the bracket collapses onto the estimate.
    est, low, up, _ = quad.cdf_bracket(0.5)
    assert low == pytest.approx(est) and up == pytest.approx(est)
    truth = np.mean([probe_cdf(lam, Q, V[:, j], 0.5) for j in range(4)])
    assert est == pytest.approx(truth, abs=1e-10)


def test_tiny_and_float32_operators():
    A, _ = with_spectrum([2.0], seed=0)
    quad = slq(Counting(A), probes=3, lanczos_steps=10)
    assert quad.steps == 1 and quad.nodes.shape == (3, 1)
    np.testing.assert_allclose(quad.nodes.numpy(), 2.0)
    lam = np.linspace(-1, 1, 200)
    A, _ = with_spectrum(lam, seed=1)
    quad = slq(Counting(A, dtype=torch.float32), probes=8, lanczos_steps=30)
    est, low, up, se = quad.cdf_bracket(0.0)
    assert low - 3 * se <= 0.5 <= up + 3 * se
    assert quad.nodes.dtype == torch.float64


def test_progress_summary_and_arguments(bulk_spectrum):
    A, lam, _ = bulk_spectrum
    seen = []
    quad = slq(Counting(A), probes=2, lanczos_steps=5,
               progress=lambda done, total, note: seen.append((done, total, note)))
    assert seen[-1] == (10, 10, "Lanczos step 5/5") and len(seen) == 5
    summary = json.loads(json.dumps(quad.to_dict()))
    assert summary["products"] == 10 and len(summary["nodes"]) == 2
    with pytest.raises(BadInputError):
        quad.fraction_between(1.0, 0.0)
    with pytest.raises(BadInputError):
        quad.density([0.0], 0.0)
    with pytest.raises(BadInputError):
        slq(Counting(A), probes=0)

"""Warm starts through spectrum and the Monitor, against dense Hessians; the dense-size guard of
the exact path."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from helpers import classification_data, make_mlp
from torch import nn
from torch.nn.functional import cross_entropy

import landscope as ls
from landscope import BadInputError, Objective, spectrum
from landscope.monitor import Monitor
from landscope.monitor.curvature import Eigenvectors, measure
from landscope.objective import DENSE_LIMIT

pytestmark = pytest.mark.usefixtures("one_thread")


def dense_eigenvalues(model, X, y, obj, theta) -> np.ndarray:
    """numpy eigh of torch.func.hessian of the full-data loss at ``theta``."""
    def loss(t):
        return cross_entropy(torch.func.functional_call(model, obj.unflatten(t), (X,)), y)

    return np.linalg.eigvalsh(torch.func.hessian(loss)(theta.clone()).numpy())


@pytest.fixture(scope="module")
def two_points():
    """A tanh MLP (n = 484, float64), its Objective at θ₀, a nearby θ₁ (one gradient step of
    relative size 1e-3) and the dense spectra at both (torch.func.hessian, numpy eigh)."""
    model = make_mlp(nn.Tanh, sizes=(8, 20, 12, 4), seed=7)
    X, y = classification_data(n=300, features=8, classes=4, seed=3)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    g = obj.grad()
    theta1 = obj.theta0 - 1e-3 * obj.theta0.norm() / g.norm() * g
    eig0, eig1 = (dense_eigenvalues(model, X, y, obj, t) for t in (obj.theta0, theta1))
    return obj, theta1, eig0, eig1


def test_warm_spectrum_at_a_nearby_point_matches_eigh_in_fewer_products(two_points):
    obj, theta1, eig0, eig1 = two_points
    options = {"k": 2, "which": "both", "exact": False, "eig_rtol": 1e-6}
    before = spectrum(obj, **options)
    np.testing.assert_allclose(before.largest.values.numpy(), eig0[::-1][:2], rtol=1e-5)
    cold = spectrum(obj, theta=theta1, seed=1, **options)
    for warm in (before, torch.cat([before.largest.vectors, before.smallest.vectors], 1)):
        spec = spectrum(obj, theta=theta1, seed=1, warm=warm, **options)
        assert spec.evidence["converged"] and spec.evidence["warm_start"] == 4
        limit = 1e-5 * np.abs(eig1).max()
        np.testing.assert_allclose(spec.largest.values.numpy(), eig1[::-1][:2], atol=limit)
        np.testing.assert_allclose(spec.smallest.values.numpy(), eig1[:2], atol=limit)
        assert spec.evidence["hvp_products"] < 0.75 * cold.evidence["hvp_products"]
    assert cold.evidence["warm_start"] == 0


def test_warm_spectrum_on_coordinates_and_a_wrong_size_is_named(two_points):
    obj, theta1, _, _ = two_points
    coords = torch.arange(0, obj.n, 2)
    before = spectrum(obj, k=1, which="largest", exact=False, coords=coords)
    spec = spectrum(obj, k=1, which="largest", exact=False, coords=coords, theta=theta1,
                    warm=before)
    H = obj.hessian(theta1)[coords][:, coords]
    assert spec.largest.values[0].item() == pytest.approx(
        torch.linalg.eigvalsh(H)[-1].item(), rel=1e-6)
    with pytest.raises(BadInputError, match=rf"n = {obj.n} parameters, got \(435, 1\)"):
        spectrum(obj, k=1, exact=False, warm=torch.ones(435, 1))


def test_warm_measurement_matches_dense_eigh_and_a_changed_size_starts_cold():
    model = make_mlp(nn.Tanh, sizes=(6, 24, 24, 3), seed=2)  # n = 843 > max_products: Lanczos
    X, y = classification_data(n=64, features=6, classes=3, seed=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = measure(model, cross_entropy, (X, y), opt, smallest=True, max_products=100)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.001)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    eig = dense_eigenvalues(model, X, y, obj, obj.theta0)
    cold = measure(model, cross_entropy, (X, y), opt, smallest=True, max_products=100)
    warm = measure(model, cross_entropy, (X, y), opt, smallest=True, max_products=100,
                   warm=first["vectors"])
    scale = np.abs(eig).max()
    for result in (cold, warm):
        assert result["lambda_max"] == pytest.approx(eig[-1], abs=2e-3 * scale)
        assert result["lambda_min"] == pytest.approx(eig[0], abs=2e-3 * scale)
    assert warm["curvature_products"] < cold["curvature_products"]
    vectors = warm["vectors"]
    assert vectors.top.shape == vectors.bottom.shape == (obj.n,)
    # vectors of another θ size (another parameter selection) are dropped: a cold start
    fitted = Eigenvectors(torch.ones(5), None, torch.ones(obj.n)).fitting(obj.n)
    assert fitted.top is None and fitted.preconditioned.shape == (obj.n,)
    other = measure(model, cross_entropy, (X, y), opt, smallest=True, max_products=100,
                    warm=Eigenvectors(torch.ones(5), torch.ones(5)))
    assert other["lambda_max"] == pytest.approx(eig[-1], abs=2e-3 * scale)


def test_adam_preconditioned_run_is_warm_started_too():
    model = make_mlp(nn.Tanh, sizes=(6, 24, 24, 3), seed=2)
    X, y = classification_data(n=64, features=6, classes=3, seed=4)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(3):
        opt.zero_grad()
        cross_entropy(model(X), y).backward()
        opt.step()
    first = measure(model, cross_entropy, (X, y), opt, smallest=False, max_products=100)
    assert first["vectors"].preconditioned is not None
    again = measure(model, cross_entropy, (X, y), opt, smallest=False, max_products=100,
                    warm=first["vectors"])
    assert again["sharpness"] == pytest.approx(first["sharpness"], rel=2e-3)
    assert again["curvature_products"] < first["curvature_products"]


def test_the_monitor_warm_starts_its_next_measurement_on_a_stalling_run():
    X, y = classification_data(n=96, features=6, classes=3, seed=5)
    model = make_mlp(nn.Tanh, sizes=(6, 24, 24, 3), seed=3)
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)  # tiny steps: the loss stalls
    gen = torch.Generator().manual_seed(0)
    with Monitor(model, opt, loss_fn=cross_entropy, held=(X[:64], y[:64]), window=20,
                 check_every=10, budget=math.inf) as monitor:
        for _ in range(60):
            index = torch.randint(0, len(X), (16,), generator=gen)
            opt.zero_grad()
            loss = cross_entropy(model(X[index]), y[index])
            loss.backward()
            opt.step()
            monitor.step(loss)
    events = monitor.record.meta["events"]
    assert [e["reason"] for e in events] == ["stalled"] * 3
    products = [e["products"] for e in events]
    assert products[1] < 0.75 * products[0] and products[2] < 0.75 * products[0]


def test_a_forced_dense_request_above_the_limit_is_refused_before_anything_is_built():
    model = nn.Linear(1000, 1000).double()  # 1,001,000 parameters: 7,466 GiB dense
    X, y = torch.randn(4, 1000, dtype=torch.float64), torch.randn(4, 1000, dtype=torch.float64)
    obj = Objective.from_model(model, nn.functional.mse_loss, (X, y))
    assert obj.n > DENSE_LIMIT
    calls = [lambda: ls.probe(obj, exact=True), lambda: spectrum(obj, exact=True),
             lambda: ls.density(obj, exact=True), lambda: ls.trace(obj, exact=True)]
    for call in calls:
        tick = time.perf_counter()
        with pytest.raises(BadInputError, match=r"n = 1,001,000.*7,46\d\.\d GiB.*exact=True"
                                                r".*params="):
            call()
        assert time.perf_counter() - tick < 5.0
    assert obj.counts["hvp"] == 0

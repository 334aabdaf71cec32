"""spectrum / density / trace on a network, against numpy.linalg.eigh of its dense Hessian."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from helpers import classification_data, make_mlp
from torch import nn
from torch.nn.functional import cross_entropy

from landscope import BadInputError, Objective, density, spectrum, trace
from landscope.spectrum import EXACT_MAX_N


@pytest.fixture(scope="module")
def network():
    """A tanh MLP (n = 436, float64) with its exact eigenvalues."""
    model = make_mlp(nn.Tanh, sizes=(8, 20, 12, 4), seed=7)
    X, y = classification_data(n=300, features=8, classes=4, seed=3)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    return obj, np.linalg.eigvalsh(obj.hessian().numpy())


def test_objective_operator_is_the_hessian_at_its_point(network):
    obj, _ = network
    H, theta = obj.hessian(), obj.theta0 + 0.01
    op = obj.operator()
    assert (op.n, op.dtype, op.device) == (obj.n, obj.dtype, obj.device)
    V = torch.randn(obj.n, 3, generator=torch.Generator().manual_seed(0), dtype=obj.dtype)
    torch.testing.assert_close(op @ V, H @ V, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(obj.operator(theta) @ V[:, 0], obj.hessian(theta) @ V[:, 0],
                               rtol=1e-10, atol=1e-12)


def test_extreme_eigenpairs_match_eigh_to_1e_6(network):
    obj, eig = network
    spec = spectrum(obj, k=5, which="both", exact=False)
    assert spec.method == "lanczos" and spec.evidence["converged"]
    np.testing.assert_allclose(spec.largest.values.numpy(), eig[::-1][:5], rtol=1e-6)
    np.testing.assert_allclose(spec.smallest.values.numpy(), eig[:5], rtol=1e-6)
    # the residuals are real: recompute them with the dense Hessian
    H = obj.hessian()
    for pairs in (spec.largest, spec.smallest):
        recomputed = torch.linalg.vector_norm(H @ pairs.vectors - pairs.vectors * pairs.values,
                                              dim=0)
        torch.testing.assert_close(recomputed, pairs.residuals, rtol=1e-3, atol=1e-12)
        assert (pairs.residuals <= spec.evidence["tol"] * spec.evidence["norm_estimate"]).all()
    assert spec.evidence["hvp_products"] == spec.evidence["products"]


def test_exact_path_is_chosen_for_small_n(network):
    obj, eig = network
    assert obj.n <= EXACT_MAX_N
    spec = spectrum(obj, k=3, which="smallest")
    assert spec.method == "exact" and spec.largest is None
    np.testing.assert_allclose(spec.smallest.values.numpy(), eig[:3], rtol=1e-10)
    assert spec.to_dict()["smallest"]["values"] == pytest.approx(eig[:3].tolist())


def test_starved_budget_says_not_converged(network):
    obj, _ = network
    spec = spectrum(obj, k=1, which="smallest", exact=False, max_products=12)
    assert not spec.evidence["converged"]
    assert spec.evidence["products"] <= 12


def test_trace_within_four_standard_errors(network):
    obj, eig = network
    est = trace(obj, probes=200, exact=False, seed=1)
    assert est.method == "hutchinson" and est.samples == 200 and est.products == 200
    assert abs(est.value - eig.sum()) <= 4 * est.stderr
    assert est.stderr < 0.1 * abs(eig.sum())
    assert trace(obj).value == pytest.approx(eig.sum(), rel=1e-10)  # exact path


def test_density_fractions_bracket_the_exact_counts(network):
    obj, eig = network
    rho = max(abs(eig[0]), abs(eig[-1]))
    dens = density(obj, probes=16, lanczos_steps=60, exact=False, seed=2)
    assert dens.method == "slq" and dens.products == 16 * 60
    for band in (1e-2, 1e-1):
        tol = band * rho
        exact = {"negative": np.mean(eig <= -tol), "zero": np.mean(np.abs(eig) < tol),
                 "positive": np.mean(eig > tol)}
        for key, f in dens.fractions(tol).items():
            low, high = f.interval
            assert low <= exact[key] <= high, (band, key, f, exact[key])
    grid, curve = dens.curve()
    assert float(torch.trapezoid(curve, grid)) == pytest.approx(1.0, abs=0.02)


def test_bad_arguments(network):
    obj, _ = network
    with pytest.raises(BadInputError, match="which='middle'"):
        spectrum(obj, which="middle")
    with pytest.raises(BadInputError, match="k=0"):
        spectrum(obj, k=0)
    with pytest.raises(BadInputError, match="probes=1"):
        trace(obj, probes=1)
    with pytest.raises(BadInputError, match="probes=0"):
        density(obj, probes=0)


@pytest.mark.parametrize("exact", [True, False])
def test_restricted_to_coordinates_matches_eigh_of_the_block(exact):
    # a small network: the Hessian block on every other coordinate, exact and by Lanczos / SLQ
    model = make_mlp(nn.Tanh, sizes=(3, 4, 2), seed=5)
    X, y = classification_data(n=40, features=3, classes=2, seed=6)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    coords = torch.arange(0, obj.n, 2)
    H = obj.hessian()
    block = np.linalg.eigvalsh(H[coords][:, coords].numpy())
    spec = spectrum(obj, k=2, which="both", exact=exact, coords=coords)
    np.testing.assert_allclose(spec.largest.values.numpy(), block[::-1][:2], rtol=1e-6)
    np.testing.assert_allclose(spec.smallest.values.numpy(), block[:2], rtol=1e-6)
    # vectors in Rⁿ, zero off the block, eigenvectors of the block
    for pairs in (spec.largest, spec.smallest):
        off = torch.ones(obj.n, dtype=torch.bool)
        off[coords] = False
        assert pairs.vectors.shape == (obj.n, 2) and pairs.vectors[off].abs().max() == 0
        inside = pairs.vectors[coords]
        residual = H[coords][:, coords] @ inside - inside * pairs.values
        assert residual.norm(dim=0).max() < 1e-6 * abs(block).max()
    dens = density(obj, probes=4, lanczos_steps=coords.numel(), exact=exact, coords=coords)
    assert dens.n == coords.numel()
    tol = 0.01 * abs(block).max()
    for key, truth in (("negative", np.mean(block <= -tol)), ("positive", np.mean(block > tol))):
        low, high = dens.fractions(tol)[key].interval
        assert low - 1e-9 <= truth <= high + 1e-9, key


@pytest.mark.slow
def test_float32_default_tolerance_is_one_the_solver_reaches(one_thread):
    """A 57k-parameter float32 CNN: at the old fixed 1e-5 the top residuals stalled at 8e-5·ρ
    and the run spent 500 products unconverged; the size-aware default converges."""
    from landscope.spectrum import default_eig_rtol

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64),
                        nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(64, 64, 3, padding=1),
                        nn.BatchNorm2d(64), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        nn.Linear(64, 10))
    X, y = torch.randn(64, 3, 16, 16), torch.randint(0, 10, (64,))
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    for _ in range(30):
        opt.zero_grad()
        cross_entropy(net(X), y).backward()
        opt.step()
    obj = Objective.from_model(net.eval(), cross_entropy, (X, y))
    tol = default_eig_rtol(torch.float32, obj.n)
    assert tol == pytest.approx(10 * obj.n ** 0.5 * torch.finfo(torch.float32).eps)
    spec = spectrum(obj, 5, "both")
    assert spec.evidence["converged"] and spec.evidence["products"] < 200
    assert spec.evidence["tol"] == tol
    rho = max(abs(spec.largest.values[0]), abs(spec.smallest.values[0]))
    assert (spec.largest.residuals <= tol * rho * 1.01).all()
    assert default_eig_rtol(torch.float64, obj.n) == 1e-8


def test_a_density_is_the_same_after_its_result_file(network):
    """What the report draws from result.json: the SLQ quadrature and the exact eigenvalues read
    back give the same fractions and curve as the density that wrote them."""
    import json

    from landscope.spectrum import Density

    obj, eig = network
    for exact in (False, True):
        written = density(obj, probes=3, lanczos_steps=12, exact=exact, seed=1)
        read = Density.from_dict(json.loads(json.dumps(written.to_dict())))
        for key, fraction in written.fractions(1e-3).items():
            assert read.fractions(1e-3)[key] == fraction, key
        (grid, curve), (grid_read, curve_read) = written.curve(), read.curve()
        torch.testing.assert_close(grid_read, grid.to(torch.float64))
        torch.testing.assert_close(curve_read, curve.to(torch.float64))
    np.testing.assert_allclose(read.eigenvalues.numpy(), eig, rtol=1e-10, atol=1e-12)
    with pytest.raises(BadInputError, match="neither eigenvalues nor a quadrature"):
        Density.from_dict({"method": "exact", "n": 3})


def quadratic(eigenvalues, seed: int = 0) -> tuple[Objective, torch.Tensor]:
    """L(x) = ½ xᵀAx with A = Q diag(eigenvalues) Qᵀ, Q a seeded random orthogonal matrix: its
    Hessian is A everywhere."""
    lam = torch.as_tensor(eigenvalues, dtype=torch.float64)
    gaussian = torch.randn(lam.numel(), lam.numel(), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.float64)
    Q = torch.linalg.qr(gaussian).Q
    A = (Q * lam) @ Q.T
    return Objective.from_function(lambda x: 0.5 * x @ A @ x, torch.zeros(lam.numel())), A


def test_a_deflated_trace_is_unbiased_and_tighter(one_thread):
    """Outliers at both ends dominate Hutchinson's variance; deflating them with a Spectrum (or
    its pairs) leaves an estimate within four standard errors of tr A, at a fraction of the
    plain one's error."""
    bulk = torch.linspace(-0.5, 1.0, 54, dtype=torch.float64)
    obj, A = quadratic(torch.cat([torch.tensor([60.0, 45.0, 30.0, -40.0, -25.0, -20.0]), bulk]))
    exact = torch.trace(A).item()
    plain = trace(obj, probes=60, exact=False, seed=3)
    spec = spectrum(obj, k=3, exact=False)
    for deflate in (spec, spec.pairs()):
        deflated = trace(obj, probes=60, exact=False, seed=3, deflate=deflate)
        assert deflated.estimate.deflated == 6 and deflated.products == 60
        assert abs(deflated.value - exact) <= 4 * deflated.stderr
        assert deflated.stderr < 0.1 * plain.stderr
    assert abs(plain.value - exact) <= 4 * plain.stderr
    assert trace(obj, deflate=spec).value == pytest.approx(exact, rel=1e-12)  # exact path


def numbers(record: dict) -> dict:
    """A result's to_dict without its product counts (the objective's count of Hessian-vector
    products includes the engine's own checks, which vary from call to call)."""
    return {key: numbers(value) if isinstance(value, dict) else value
            for key, value in record.items() if key not in ("products", "hvp_products")}


def test_the_old_keyword_names_warn_and_give_the_same_results(one_thread):
    from landscope._deprecated import LandscopeDeprecationWarning
    from landscope.spectrum import default_eig_rtol

    obj, _ = quadratic([-1.0, 0.2, 0.5, 2.0, 3.0])
    dens = density(obj, probes=2, lanczos_steps=3, exact=False)
    calls = [  # (old call, new call, the new name)
        (lambda: spectrum(obj, k=1, exact=False, tol=1e-6),
         lambda: spectrum(obj, k=1, exact=False, eig_rtol=1e-6), "eig_rtol"),
        (lambda: density(obj, probes=2, steps=3, exact=False), lambda: dens, "lanczos_steps"),
        (lambda: trace(obj, samples=4, exact=False), lambda: trace(obj, probes=4, exact=False),
         "probes"),
        (lambda: trace(obj, exact=False, rtol=0.5), lambda: trace(obj, exact=False,
                                                                   stderr_rtol=0.5),
         "stderr_rtol"),
        (lambda: dens.fractions(zero_tol=0.1), lambda: dens.fractions(atol=0.1), "atol"),
        (lambda: dens.curve(points=7), lambda: dens.curve(resolution=7), "resolution"),
    ]
    for old, new, name in calls:
        with pytest.warns(LandscopeDeprecationWarning, match=f"{name}="):
            before = old()
        after = new()
        if isinstance(after, tuple):  # a curve: (grid, density)
            assert all(map(torch.equal, before, after)) and len(after[0]) == 7
        elif isinstance(after, dict):  # fractions
            assert before == after
        else:
            assert numbers(before.to_dict()) == numbers(after.to_dict()), name
    module = importlib.import_module("landscope.spectrum")  # landscope.spectrum is the function
    with pytest.warns(LandscopeDeprecationWarning, match="default_eig_rtol"):
        assert module.default_tol is default_eig_rtol

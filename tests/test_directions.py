"""Direction makers: filter and layer normalisation, seeds, Hessian, gradient, PCA, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import classification_data, make_cnn, make_mlp
from torch import nn

from landscope import BadInputError, Objective
from landscope import directions as D
from landscope._deprecated import LandscopeDeprecationWarning


def _cnn_objective():
    model = make_cnn()
    X, y = classification_data(n=20, features=16)
    return model, Objective.from_model(model, nn.functional.cross_entropy, (X, y))


def test_filter_normalisation_matches_every_filter_norm_and_zeroes_biases():
    model, obj = _cnn_objective()
    frame = D.random(obj, 2, seed=3)
    for direction in frame.directions:
        pieces = obj.unflatten(direction.vector)
        for name, p in model.named_parameters():
            d = pieces[name]
            if p.dim() == 1:  # conv/fc biases and BatchNorm weight and bias stay fixed
                assert torch.equal(d, torch.zeros_like(d)), name
            else:
                rows_d = d.reshape(d.shape[0], -1).norm(dim=1)
                rows_p = p.detach().reshape(p.shape[0], -1).norm(dim=1)
                torch.testing.assert_close(rows_d, rows_p, rtol=1e-12, atol=0)
    assert not torch.equal(frame.directions[0].vector, frame.directions[1].vector)


def test_layer_normalisation_and_layer_normalised_biases():
    model, obj = _cnn_objective()
    d = D.random(obj, 1, seed=0, norm="layer", biases="layer").directions[0].vector
    pieces = obj.unflatten(d)
    for name, p in model.named_parameters():
        torch.testing.assert_close(pieces[name].norm(), p.detach().norm(), rtol=1e-12, atol=0)
    filtered = obj.unflatten(D.random(obj, 1, seed=0, biases="layer").directions[0].vector)
    torch.testing.assert_close(filtered["bn.weight"].norm(), model.bn.weight.norm(), rtol=1e-12,
                               atol=0)


def test_random_directions_are_the_documented_seeded_gaussians():
    model = make_mlp(sizes=(64, 128, 10))  # 9,610 parameters
    X, y = classification_data(n=8, features=64, classes=10)
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    raw = D.random(obj, 2, seed=7, norm="none")
    generator = torch.Generator().manual_seed(7)
    expected = [torch.randn(obj.n, generator=generator, dtype=torch.float64) for _ in range(2)]
    assert torch.equal(raw.directions[0].vector, expected[0])
    assert torch.equal(raw.directions[1].vector, expected[1])
    v = raw.directions[0].vector
    assert abs(v.mean()) < 0.05 and abs(v.std() - 1) < 0.05 and (v < 0).double().mean() > 0.45
    assert torch.equal(D.random(obj, 2, seed=7).directions[1].vector,
                       D.random(obj, 2, seed=7).directions[1].vector)
    assert raw.directions[0].info == {"distribution": "gaussian", "seed": 7, "index": 0,
                                      "normalisation": "none", "biases": "zero"}


def test_zero_norm_filter_gives_zero_filter():
    model, obj = _cnn_objective()
    theta = obj.theta0.clone()
    obj.unflatten(theta)["conv.weight"][1].zero_()
    d = D.random(obj, 1, seed=0, centre=theta).directions[0].vector
    assert torch.equal(obj.unflatten(d)["conv.weight"][1], torch.zeros(1, 3, 3,
                                                                       dtype=torch.float64))


def test_normalisation_errors_name_the_fix():
    f = Objective.from_function(lambda x: (x**2).sum(), torch.ones(3))
    with pytest.raises(BadInputError, match="norm='none' for an analytic function"):
        D.random(f, 2)
    assert D.random(f, 2, norm="none").directions[0].vector.shape == (3,)
    with pytest.raises(BadInputError, match="use one of filter, layer, none"):
        D.normalise(f, torch.ones(3), "unit")
    with pytest.raises(BadInputError, match=r"shape \(4,\).*must have shape \(3,\)"):
        D.normalise(f, torch.ones(4), "none")
    with pytest.raises(BadInputError, match="NaN"):
        D.normalise(f, torch.tensor([1.0, float("nan"), 0.0]), "none")
    with pytest.raises(BadInputError, match="1 \\(line\\) or 2"):
        D.random(f, 3, norm="none")


def test_hessian_directions_are_the_extreme_eigenvectors():
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, -3.0, 0.2], [0.0, 0.2, 1.0]], dtype=torch.float64)
    obj = Objective.from_function(lambda x: 0.5 * x @ A @ x, torch.zeros(3))
    frame = D.hessian(obj)
    values, vectors = np.linalg.eigh(A.numpy())
    v_max, v_min = (d.vector.numpy() for d in frame.directions)
    assert frame.directions[0].info["eigenvalue"] == pytest.approx(values[-1], rel=1e-12)
    assert frame.directions[1].info["eigenvalue"] == pytest.approx(values[0], rel=1e-12)
    assert abs(v_max @ vectors[:, -1]) == pytest.approx(1, rel=1e-12)
    assert abs(v_min @ vectors[:, 0]) == pytest.approx(1, rel=1e-12)
    assert v_max[np.argmax(np.abs(v_max))] > 0  # the documented sign convention


def test_gradient_direction_is_minus_the_gradient():
    obj = Objective.from_function(lambda x: (x**3).sum(), torch.tensor([1.0, -2.0]))
    d = D.gradient(obj).directions[0]
    assert d.vector.tolist() == [-3.0, -12.0] and d.info["grad_norm"] == pytest.approx(153**0.5)
    assert D.gradient(obj, unit=True).directions[0].vector.norm() == pytest.approx(1.0)
    with pytest.raises(BadInputError, match="gradient is exactly zero"):
        D.gradient(Objective.from_function(lambda x: (x**2).sum(), torch.zeros(2)))


def test_pca_recovers_the_plane_of_a_planar_path_and_its_variances():
    gen = torch.Generator().manual_seed(0)
    basis, _ = torch.linalg.qr(torch.randn(50, 2, generator=gen, dtype=torch.float64))
    t = torch.linspace(0, 1, 30, dtype=torch.float64)
    coeffs = torch.stack([3 * (t - 1), torch.sin(4 * (t - 1))], 1)  # ends at the origin
    end = torch.randn(50, generator=gen, dtype=torch.float64)
    path = end + coeffs @ basis.T
    frame = D.pca(path)
    V = torch.stack(frame.vectors, 1)
    torch.testing.assert_close(V @ V.T @ basis, basis)  # the same plane
    S = torch.linalg.svdvals(coeffs @ basis.T)
    expected = (S**2 / (S**2).sum())[:2]
    torch.testing.assert_close(torch.tensor(frame.info["explained_variance"], dtype=torch.float64),
                               expected)
    assert frame.info["explained_total"] == pytest.approx(1.0, abs=1e-12)
    assert torch.equal(frame.centre, end + coeffs[-1] @ basis.T)
    assert float((path[0] - frame.centre) @ V[:, 0]) < 0  # the path starts at negative α
    with pytest.raises(BadInputError, match="at least two points"):
        D.pca(path[:1])
    with pytest.raises(BadInputError, match="different parameter counts"):
        D.pca([torch.zeros(3), torch.zeros(4)])


def test_line_and_plane_through_checkpoints():
    gen = torch.Generator().manual_seed(2)
    a, b, c = torch.randn(3, 20, generator=gen, dtype=torch.float64)
    ln = D.line(a, b)
    assert torch.equal(ln.centre, a) and torch.equal(ln.directions[0].vector, b - a)
    pl = D.plane(a, b, c, names=("x", "y", "z"))
    d1, d2 = pl.vectors
    for name, point in zip("xyz", (a, b, c), strict=True):
        alpha, beta = pl.marks[name]
        torch.testing.assert_close(a + alpha * d1 + beta * d2, point)
    assert float(d1 @ d2) == pytest.approx(0, abs=1e-12) and d1.norm() == pytest.approx(d2.norm())
    with pytest.raises(BadInputError, match="one line"):
        D.plane(a, b, a + 2 * (b - a))


def test_trajectory_from_state_dicts_modules_and_vectors():
    model = make_mlp()
    X, y = classification_data()
    obj = Objective.from_model(model, nn.functional.cross_entropy, (X, y))
    other = make_mlp(seed=1)
    path = D.trajectory(obj, [model.state_dict(), other, obj.theta0 * 2])
    assert path.shape == (3, obj.n)
    assert torch.equal(path[0], obj.theta0) and torch.equal(path[2], obj.theta0 * 2)
    assert torch.equal(path[1], D.flatten(obj, other.state_dict()))
    with pytest.raises(BadInputError, match=f"have 5 parameters; this objective has n = {obj.n}"):
        D.trajectory(obj, torch.zeros(4, 5))
    with pytest.raises(BadInputError, match="does not belong to this model"):
        D.flatten(obj, {"weight": torch.zeros(3)})


def test_make_picks_the_maker_by_name():
    A = torch.tensor([[2.0, 0.5, 0.0], [0.5, -3.0, 0.2], [0.0, 0.2, 1.0]], dtype=torch.float64)
    b = torch.tensor([1.0, -1.0, 0.5], dtype=torch.float64)
    x0 = torch.tensor([0.3, 0.1, -0.2], dtype=torch.float64)
    obj = Objective.from_function(lambda x: 0.5 * x @ A @ x + b @ x, x0)
    _, vectors = np.linalg.eigh(A.numpy())
    line = D.make("hessian", obj, 1)  # a line: the direction of λ_min alone
    assert [d.kind for d in line.directions] == ["hessian_min"]
    assert abs(line.directions[0].vector.numpy() @ vectors[:, 0]) == pytest.approx(1, rel=1e-12)
    assert [d.kind for d in D.make("hessian", obj).directions] == ["hessian_max", "hessian_min"]
    (step,) = D.make("gradient", obj, 1).vectors
    torch.testing.assert_close(step, -(A @ x0 + b), rtol=1e-12, atol=0)
    plane = D.make("random", obj, seed=4, norm="none")
    gen = torch.Generator().manual_seed(4)
    for direction in plane.vectors:
        assert torch.equal(direction, torch.randn(3, generator=gen, dtype=torch.float64))
    path = torch.stack([x0 + t * torch.tensor([1.0, 2.0, 0.0], dtype=torch.float64) + t**2 *
                        torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
                        for t in torch.linspace(-1, 0, 6, dtype=torch.float64)])
    pca = D.make("pca", obj, path=path)
    assert pca.info["explained_total"] == pytest.approx(1, rel=1e-12)  # the path is planar
    assert torch.equal(pca.centre, x0)
    with pytest.raises(BadInputError, match="kind='pca' needs a training path"):
        D.make("pca", obj)
    with pytest.raises(BadInputError, match="a line: use dims=1"):
        D.make("gradient", obj, 2)
    with pytest.raises(BadInputError, match="kind='sideways'; use one of random, hessian"):
        D.make("sideways", obj)


def test_old_count_keyword_warns_and_gives_the_same_frames():
    obj = Objective.from_function(lambda x: (x**2).sum() + x[0] * x[1], [0.5, -1.0, 2.0])
    path = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.5, 0.5], [2.0, 0.0, 3.0]], dtype=torch.float64)
    for make, kwargs in ((D.random, {"obj": obj, "norm": "none"}),
                         (lambda **k: D.make("random", **k), {"obj": obj, "norm": "none"}),
                         (D.pca, {"trajectory": path})):
        with pytest.warns(LandscopeDeprecationWarning, match=r"count=…\) is renamed dims="):
            old = make(count=1, **kwargs)
        new = make(dims=1, **kwargs)
        assert len(old.vectors) == 1 and torch.equal(old.vectors[0], new.vectors[0])

"""landscope's optimisers against hand computations, the seeds' saddle story, the global strategies,
and the engine that steps many starts together."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import landscope as ls
from landscope import functions as zoo
from landscope import optim

# AdaHessian's closure convention, loss.backward(create_graph=True), is tested on purpose here;
# torch warns about the reference cycle it makes (the optimisers break it after each step)
pytestmark = pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph")

A = np.array([[3.0, 1.0], [1.0, 2.0]])  # strongly convex
B = np.array([1.0, -1.0])
A_INDEFINITE = np.array([[1.0, 2.0], [2.0, -2.0]])  # eigenvalues 2 and −3
X0 = np.array([1.0, 2.0])


def _quadratic(matrix, b=B):
    M, v = torch.tensor(matrix), torch.tensor(b)
    return lambda x: 0.5 * x @ M @ x - v @ x


def _first_step(opt_factory, matrix, x0=X0, b=B, create_graph=True):
    x = torch.tensor(x0, requires_grad=True)
    opt = opt_factory([x])
    f = _quadratic(matrix, b)

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward(create_graph=create_graph)
        return loss

    opt.step(closure)
    return x.detach().numpy(), opt


def _gradient(matrix, x=X0, b=B):
    return matrix @ x - b


# ---------------------------------------------------------------------- hand-computed first steps
@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_newton_first_step_and_one_step_solution(solver):
    g = _gradient(A)
    x1, _ = _first_step(lambda p: optim.Newton(p, lr=0.5, damping=0.1, solver=solver), A)
    np.testing.assert_allclose(x1, X0 - 0.5 * np.linalg.solve(A + 0.1 * np.eye(2), g),
                               rtol=1e-12)
    x1, _ = _first_step(lambda p: optim.Newton(p, solver=solver), A)
    np.testing.assert_allclose(x1, np.linalg.solve(A, B), rtol=1e-12)  # the minimiser


def test_newton_solves_least_squares_in_a_training_loop():
    generator = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=generator, dtype=torch.float64)
    y = torch.randn(40, 2, generator=generator, dtype=torch.float64)
    model = torch.nn.Linear(3, 2).double()
    opt = optim.Newton(model.parameters())

    def closure():  # no backward: the optimiser takes the gradient (with its graph) itself
        opt.zero_grad()
        return torch.nn.functional.mse_loss(model(X), y)

    opt.step(closure)
    design = torch.cat([X, torch.ones(40, 1, dtype=torch.float64)], 1)
    solution = torch.linalg.lstsq(design, y).solution
    torch.testing.assert_close(model.weight.detach(), solution[:3].T, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(model.bias.detach(), solution[3], rtol=1e-10, atol=1e-12)
    assert not model.weight.grad.requires_grad  # the graph was released after the step


def test_saddle_free_newton_first_step_uses_absolute_curvature():
    g = _gradient(A_INDEFINITE)
    values, vectors = np.linalg.eigh(A_INDEFINITE)
    absolute = vectors @ np.diag(np.abs(values) + 0.2) @ vectors.T
    x1, _ = _first_step(lambda p: optim.SaddleFreeNewton(p, lr=0.7, damping=0.2), A_INDEFINITE)
    np.testing.assert_allclose(x1, X0 - 0.7 * np.linalg.solve(absolute, g), rtol=1e-12)
    # one Krylov vector: the step along g with the Rayleigh quotient's absolute value
    x1, _ = _first_step(lambda p: optim.SaddleFreeNewton(p, krylov_dim=1), A_INDEFINITE)
    np.testing.assert_allclose(x1, X0 - g * (g @ g) / abs(g @ A_INDEFINITE @ g), rtol=1e-12)


@pytest.mark.parametrize("dense_max", [256, 1])  # dense eigh, then thick-restart Lanczos
def test_negative_curvature_first_step(dense_max):
    g = _gradient(A_INDEFINITE)
    values, vectors = np.linalg.eigh(A_INDEFINITE)
    v = vectors[:, 0]
    sign = -1.0 if g @ v > 0 else 1.0
    x1, opt = _first_step(lambda p: optim.NegativeCurvatureDescent(
        p, lr=0.1, hessian_lipschitz=4.0, dense_max=dense_max), A_INDEFINITE)
    np.testing.assert_allclose(x1, X0 - 0.1 * g + abs(values[0]) / 4.0 * sign * v, rtol=1e-9)
    assert opt.row_state["lambda_min"].item() == pytest.approx(-3.0, rel=1e-9)
    x1, _ = _first_step(lambda p: optim.NegativeCurvatureDescent(p, lr=0.1), A)  # no λ < 0
    np.testing.assert_allclose(x1, X0 - 0.1 * _gradient(A), rtol=1e-12)


def test_perturbed_gd_steps_jumps_and_stops():
    x1, _ = _first_step(lambda p: optim.PerturbedGD(p, lr=0.1), A, create_graph=False)
    np.testing.assert_allclose(x1, X0 - 0.1 * _gradient(A), rtol=1e-12)  # ‖g‖ above g_thres
    minimum = np.linalg.solve(A, B)
    x1, opt = _first_step(lambda p: optim.PerturbedGD(p, lr=0.1, radius=0.05), A, x0=minimum,
                          create_graph=False)
    assert 0 < np.linalg.norm(x1 - minimum) <= 0.05  # a jump within the ball
    # at a minimum the jump does not pay off: after t_thres steps it returns to x̃ and stays
    x = torch.tensor(minimum, requires_grad=True)
    opt = optim.PerturbedGD([x], lr=0.1, radius=0.05, t_thres=5, f_thres=1e-3)
    f = _quadratic(A)

    def closure():
        opt.zero_grad()
        loss = f(x)
        loss.backward()
        return loss

    for _ in range(8):
        opt.step(closure)
    assert bool(opt.row_state["stopped"][0])
    np.testing.assert_array_equal(x.detach().numpy(), minimum)
    assert int(opt.row_state["perturbations"][0]) == 1


def test_perturbed_gd_settings_from_the_paper():
    x = torch.zeros(4, requires_grad=True)
    opt = optim.PerturbedGD.jin2017([x], ell=2.0, rho=1.0, eps=0.01, delta=0.1, delta_f=1.0)
    chi = 3 * max(math.log(4 * 2.0 * 1.0 / (0.01**2 * 0.1)), 4)
    o = opt.param_groups[0]
    assert o["lr"] == 0.5 and o["g_thres"] == pytest.approx(0.01 / chi**2)
    assert o["radius"] == pytest.approx(0.01 / (chi**2 * 2.0))
    assert o["t_thres"] == math.ceil(chi * 2.0 / math.sqrt(0.01))
    assert o["f_thres"] == pytest.approx(math.sqrt(0.01**3) / chi**3)


def test_noisy_gd_adds_annealed_noise_to_torch_sgd():
    x = torch.tensor(X0, requires_grad=True)
    opt = optim.NoisyGD([x], lr=0.1, eta=0.3, gamma=0.55,
                        generator=torch.Generator().manual_seed(7))
    f, expected = _quadratic(A), X0.copy()
    replay = torch.Generator().manual_seed(7)
    for t in range(2):
        def closure():
            opt.zero_grad()
            loss = f(x)
            loss.backward()
            return loss

        opt.step(closure)
        sigma = math.sqrt(0.3 / (1 + t) ** 0.55)
        xi = torch.randn(2, generator=replay, dtype=torch.float64).numpy()
        expected = expected - 0.1 * (_gradient(A, expected) + sigma * xi)
        np.testing.assert_allclose(x.detach().numpy(), expected, rtol=1e-12)


# ---------------------------------------------------------------------- the seeds' saddle story
def _run(factory, steps, start=(1.0, 1e-8), create_graph=True):
    x = torch.tensor(start, dtype=torch.float64, requires_grad=True)
    opt = factory([x])

    def closure():
        opt.zero_grad()
        loss = x[0] ** 2 - x[1] ** 2
        loss.backward(create_graph=create_graph)
        return loss

    for _ in range(steps):
        opt.step(closure)
    return x.detach()


def test_newton_converges_to_the_saddle_of_x2_minus_y2():
    x = _run(optim.Newton, 5)
    assert x.norm().item() < 1e-12
    probe = ls.probe(zoo.get("saddle").objective(x))
    assert probe.kind == "saddle"


@pytest.mark.parametrize("factory", [
    lambda p: optim.SaddleFreeNewton(p),
    lambda p: optim.PerturbedGD(p, lr=0.1),
    lambda p: optim.NegativeCurvatureDescent(p, lr=0.1),
], ids=["saddle_free_newton", "perturbed_gd", "negative_curvature"])
def test_escapers_leave_the_saddle_of_x2_minus_y2(factory):
    x = _run(factory, 60)
    assert abs(x[1].item()) > 1.0 and (x[0] ** 2 - x[1] ** 2).item() < -1.0
    lingering = _run(lambda p: torch.optim.SGD(p, lr=0.1), 60, create_graph=False)
    assert abs(lingering[1].item()) < 0.01  # plain GD is still next to the saddle


# ---------------------------------------------------------------------- errors
def test_bad_input_is_refused_with_the_fix():
    with pytest.raises(ls.BadInputError, match="saddle_free_newton"):
        optim.make("adamm", [torch.zeros(2, requires_grad=True)])
    assert type(optim.make("NAdam", [torch.zeros(2, requires_grad=True)])).__name__ == "NAdam"
    with pytest.raises(ls.BadInputError, match="create_graph=True"):
        _run(optim.Newton, 1, create_graph=False)
    with pytest.raises(ls.BadInputError, match="closure"):
        optim.Newton([torch.zeros(2, requires_grad=True)]).step()
    with pytest.raises(ls.BadInputError, match="solver"):
        optim.Newton([torch.zeros(2, requires_grad=True)], solver="qr")
    with pytest.raises(ls.BadInputError, match="rows"):
        optim.make("lbfgs", [torch.zeros(3, 2, requires_grad=True)], batched=True)


# ---------------------------------------------------------------------- many starts together
@pytest.mark.parametrize("name", ["gd", "adam", "newton", "saddle_free_newton",
                                  "negative_curvature"])
def test_starts_stepped_together_equal_starts_stepped_alone(name):
    fn = zoo.get("himmelblau")
    starts = fn.sample(5, torch.Generator().manual_seed(3))
    together = optim.descend(fn, name, starts, steps=40, lr=0.002 if "gd" in name else None)
    alone = optim.descend(fn, name, starts, steps=40, lr=0.002 if "gd" in name else None,
                          batched=False)
    assert together.batched and not alone.batched
    torch.testing.assert_close(together.points, alone.points, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together.evaluations, alone.evaluations)


def test_a_diverging_run_is_reported_not_raised():
    fn = zoo.get("rosenbrock")
    starts = torch.tensor([[-1.5, 2.0], [1.0, 1.0]], dtype=torch.float64)
    run = optim.descend(fn, "gd", starts, steps=50, lr=0.1)
    assert run.status == ("diverged", "ran")
    assert torch.isfinite(run.points).all() and torch.isfinite(run.values).all()
    assert run.values[-1, 1].item() == 0.0  # the other run sat at the minimum all along


@pytest.mark.parametrize("name", ["six_hump_camel", "rastrigin"])
def test_global_strategies_find_the_global_minimum(name):
    fn = zoo.get(name)
    for method in optim.STRATEGIES:
        result = optim.search(method, fn, seed=0)
        assert result.gap(fn) <= 1e-6, (method, result.value)
        assert result.evaluations > 0 and result.history[-1][1] == result.value
    # gradient descent from the same 256 starts as multi-start: how often it does not. Its end
    # points are polished onto the critical point they converge to, a global minimiser or not.
    starts = fn.sample(256, torch.Generator().manual_seed(0))
    run = optim.descend(fn, "gd", starts, steps=300, lr=0.002)
    ends = zoo.locate(fn, run.points[-1], radius=0.1)
    assert ends.located.double().mean() > 0.95  # GD did converge, mostly to other minima
    best = torch.tensor([i for i, p in enumerate(fn.critical_points) if p in fn.minimisers])
    share = torch.isin(ends.listed, best).double().mean().item()
    # the camel's two global basins are two of six; Rastrigin's is one cell of 11² in the box
    low, high = (0.1, 0.7) if name == "six_hump_camel" else (0.0, 0.05)
    assert low < share < high, share

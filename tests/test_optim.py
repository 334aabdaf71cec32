"""landscope's optimisers against hand computations, the seeds' saddle story, the global strategies,
and the engine that steps many starts together."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import landscope as ls
from landscope import functions as zoo
from landscope import optim, race
from landscope._deprecated import LandscopeDeprecationWarning

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


def test_saddle_free_newton_steps_each_row_with_its_own_hessian():
    """Batched rows are separate points: with krylov_dim = n each row takes the exact step
    −lr (|H_s| + δI)⁻¹ g_s, a row at its critical point (g = 0) stays, and a row whose Krylov
    space is exhausted early (H_s = c I) still gets its exact step."""
    rng = np.random.default_rng(0)
    n = 6
    M = rng.standard_normal((3, n, n))
    H = (M + M.transpose(0, 2, 1)) / 2
    H[2] = 2.5 * np.eye(n)
    b = rng.standard_normal((3, n))
    x0 = rng.standard_normal((3, n))
    x0[1] = np.linalg.solve(H[1], b[1])  # the critical point of row 1
    Ht, bt = torch.tensor(H), torch.tensor(b)
    x = torch.tensor(x0, requires_grad=True)
    opt = optim.SaddleFreeNewton([x], lr=0.5, damping=0.1, krylov_dim=n, batched=True)

    def closure():
        opt.zero_grad()
        return 0.5 * ((Ht @ x[..., None])[..., 0] * x).sum(1) - (bt * x).sum(1)

    opt.step(closure)
    for s in range(3):
        values, vectors = np.linalg.eigh(H[s])
        absolute = vectors @ np.diag(np.abs(values) + 0.1) @ vectors.T
        expected = x0[s] - 0.5 * np.linalg.solve(absolute, H[s] @ x0[s] - b[s])
        np.testing.assert_allclose(x.detach()[s].numpy(), expected, rtol=1e-10, atol=1e-12)


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


def _rosenbrock_hessian(x, y):
    return np.array([[1200 * x**2 - 400 * y + 2, -400 * x], [-400 * x, 200.0]])


def test_negative_curvature_step_is_safeguarded_on_rosenbrock():
    """Above Rosenbrock's valley λ_min is large and negative; the bold step |λ_min|/L₂ with
    L₂ = 1 overshoots by hundreds of units. The safeguard halves it until the loss falls."""
    fn = zoo.get("rosenbrock")
    start = np.array([0.0, 2.0])
    values, vectors = np.linalg.eigh(_rosenbrock_hessian(*start))
    assert values[0] == pytest.approx(-798.0)  # by hand: H = diag(−798, 200)
    g = np.array([-2.0, 400.0])  # ∇f(0, 2) by hand
    bold = start - 0.01 * g + abs(values[0]) / 1.0 * vectors[:, 0]  # the old, unguarded step
    f = lambda p: fn.f(torch.tensor(p)[None]).item()  # noqa: E731
    assert f(bold) > 1e9 * f(start)
    x = torch.tensor(start[None], requires_grad=True)
    opt = optim.NegativeCurvatureDescent([x], batched=True)

    def closure():
        opt.zero_grad()
        return fn.f(x)

    opt.step(closure)
    assert f(x.detach()[0].numpy()) < f(start)
    trials, L2 = int(opt.row_state["trials"][0]), opt.row_state["hessian_lipschitz"][0].item()
    assert trials > 1 and 2.0 ** (trials - 2) == L2  # doubled per rejected trial, then halved
    assert opt.row_state["lambda_min"][0].item() == pytest.approx(-798.0)


@pytest.mark.slow
def test_negative_curvature_descent_never_raises_the_loss_on_rosenbrock():
    """Six starts, three of them above the valley where the curvature step acts: the loss falls
    at every step, from 24–757 to the valley floor (f < 0.2) in 400 steps, and keeps falling."""
    fn = zoo.get("rosenbrock")
    starts = torch.tensor([[-1.2, 1.0], [0.0, 2.0], [-0.5, 1.5], [0.5, 1.5], [1.5, -0.5],
                           [1.8, 2.0]], dtype=torch.float64)
    assert sum(np.linalg.eigvalsh(_rosenbrock_hessian(*p))[0] < 0 for p in starts.tolist()) == 3
    run = race.descend(fn, "negative_curvature", starts, steps=400, grad_atol=-1)
    assert run.status == ("ran",) * 6
    steps = run.values[1:] - run.values[:-1]
    assert (steps <= 0).all()
    assert (run.values[-1] < 0.2).all() and (run.values[-1] < run.values[100]).all()


def test_negative_curvature_descent_converges_from_an_exact_saddle():
    """At the strict saddle of ½Σλᵢxᵢ² + ¼Σxᵢ⁴ (g = 0) only the curvature step can move: it
    leaves along ±e₁ and the descent converges to the minimum ±e₁, f = −¼."""
    f = _strict_saddle(10)
    x = torch.zeros(1, 10, dtype=torch.float64, requires_grad=True)
    opt = optim.NegativeCurvatureDescent([x], lr=0.5, batched=True)

    def closure():
        opt.zero_grad()
        return f(x)

    for _ in range(60):
        opt.step(closure)
    assert f(x.detach()).item() == pytest.approx(-0.25, abs=1e-12)
    assert abs(x[0, 0].item()) == pytest.approx(1.0, abs=1e-6)


def test_perturbed_gd_steps_jumps_and_stops():
    x1, _ = _first_step(lambda p: optim.PerturbedGD(p, lr=0.1), A, create_graph=False)
    np.testing.assert_allclose(x1, X0 - 0.1 * _gradient(A), rtol=1e-12)  # ‖g‖ above g_thres
    minimum = np.linalg.solve(A, B)
    x1, opt = _first_step(lambda p: optim.PerturbedGD(p, lr=0.1, radius=0.05), A, x0=minimum,
                          create_graph=False)
    assert 0 < np.linalg.norm(x1 - minimum) <= 0.05  # a jump within the ball
    # at a minimum the jump does not pay off: after t_thres steps it returns to x̃ and stays
    f = _quadratic(A)
    for backoff in (None, 2.0):
        x = torch.tensor(minimum, requires_grad=True)
        opt = optim.PerturbedGD([x], lr=0.1, radius=0.05, t_thres=5, f_thres=1e-3,
                                backoff=backoff)

        def closure(opt=opt, x=x):
            opt.zero_grad()
            loss = f(x)
            loss.backward()
            return loss

        path = []
        for _ in range(8):
            opt.step(closure)
            path.append(x.detach().clone().numpy())
        jumps = [np.linalg.norm(p - minimum) for p in path]
        assert 0 < jumps[0] <= 0.05 and jumps[3] < jumps[0]  # the jump, then GD contracts
        if backoff is None:  # the paper: back to x̃ at step 5, and there for good
            assert bool(opt.row_state["stopped"][0])
            np.testing.assert_array_equal(path[5], minimum)
            np.testing.assert_array_equal(x.detach().numpy(), minimum)
            assert int(opt.row_state["perturbations"][0]) == 1
        else:  # back to x̃ at step 5 and another jump from it, judged 10 steps later
            assert not bool(opt.row_state["stopped"][0])
            assert 0 < jumps[5] <= 0.05 and int(opt.row_state["perturbations"][0]) == 2
            assert int(opt.row_state["wait"][0]) == 10 and int(opt.row_state["judge"][0]) == 15
            assert opt.row_state["x_tilde"][0].tolist() == minimum.tolist()


def _strict_saddle(d):
    """f(x) = ½ Σ λᵢxᵢ² + ¼ Σ xᵢ⁴ with λ = (−1, 0.5 … 2): a strict saddle at 0 (f = 0); its
    minima ±e₁ have f = −¼."""
    lam = torch.cat([torch.tensor([-1.0]), torch.linspace(0.5, 2.0, d - 1)]).double()
    return lambda X: 0.5 * (lam * X**2).sum(1) + 0.25 * (X**4).sum(1)


def _from_the_saddle(opt_factory, d, steps, rows=20, until=None):
    """Step from exactly the saddle; with ``until``, stop early once every row is below it."""
    f = _strict_saddle(d)
    X = torch.zeros(rows, d, dtype=torch.float64, requires_grad=True)  # exactly at the saddle
    opt = opt_factory([X])

    def closure():
        opt.zero_grad()
        return f(X)

    for step in range(steps):
        opt.step(closure)
        if until is not None and step % 50 == 0 and bool((f(X) < until).all()):
            break
    return f(X).detach(), opt


@pytest.mark.parametrize("d", [10, 100, 1000])
@pytest.mark.slow
def test_perturbed_gd_defaults_escape_an_exact_strict_saddle_in_any_dimension(d):
    """Every one of 20 independent perturbation sequences (batched rows) ends in a minimum,
    f = −¼, well below the saddle's 0. Escaping shows in the loss after ~1,300 steps at
    d = 1000 (the default η = 0.01), long after the first test at t_thres = 20."""
    values, opt = _from_the_saddle(lambda p: optim.PerturbedGD(p, batched=True), d, 2000,
                                   until=-0.24)
    assert (values < -0.24).all(), values
    assert not opt.row_state["stopped"].any()
    # the paper's permanent stop with the same fixed t_thres = 20 stays at the saddle
    values, opt = _from_the_saddle(lambda p: optim.PerturbedGD(p, batched=True, backoff=None),
                                   d, 200)
    stopped = opt.row_state["stopped"]
    assert stopped.sum() >= (15 if d < 1000 else 20) and (values[stopped] == 0).all()


def test_perturbed_gd_with_the_papers_settings_escapes_in_d_1000():
    """jin2017's t_thres grows with ln n; with ℓ = 3 ≥ max λ near 0, ρ = 6 (the quartic's
    Hessian Lipschitz constant on |x| ≤ 1), the permanent-stop rule escapes on every row."""
    values, opt = _from_the_saddle(lambda p: optim.PerturbedGD.jin2017(
        p, ell=3.0, rho=6.0, eps=1e-2, delta_f=0.25, batched=True), 1000, 400)
    assert opt.param_groups[0]["backoff"] is None
    assert (values < -0.24).all() and not opt.row_state["stopped"].any()


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
    probe = ls.probe(race.as_objective(zoo.get("saddle"), x))
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
    together = race.descend(fn, name, starts, steps=40, lr=0.002 if "gd" in name else None)
    alone = race.descend(fn, name, starts, steps=40, lr=0.002 if "gd" in name else None,
                         batched=False)
    assert together.batched and not alone.batched
    torch.testing.assert_close(together.points, alone.points, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(together.evaluations, alone.evaluations)


def test_the_old_gradient_tolerance_keyword_warns_and_stops_the_same_rows():
    fn = zoo.get("bowl")
    starts = torch.tensor([[1.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
    new = race.descend(fn, "gd", starts, steps=60, lr=0.1, grad_atol=1e-3)
    with pytest.warns(LandscopeDeprecationWarning, match="grad_atol="):
        old = race.descend(fn, "gd", starts, steps=60, lr=0.1, gtol=1e-3)
    assert torch.equal(old.evaluations, new.evaluations) and torch.equal(old.points, new.points)
    assert new.evaluations[-1].tolist()[1] == 0  # the row at the minimum stopped at once
    assert 0 < new.evaluations[-1, 0] < 60  # the other once ‖∇f‖ ≤ 1e-3


def test_a_diverging_run_is_reported_not_raised():
    fn = zoo.get("rosenbrock")
    starts = torch.tensor([[-1.5, 2.0], [1.0, 1.0]], dtype=torch.float64)
    run = race.descend(fn, "gd", starts, steps=50, lr=0.1)
    assert run.status == ("diverged", "ran")
    assert torch.isfinite(run.points).all() and torch.isfinite(run.values).all()
    assert run.values[-1, 1].item() == 0.0  # the other run sat at the minimum all along


@pytest.mark.parametrize("name", ["six_hump_camel", "rastrigin"])
def test_global_strategies_find_the_global_minimum(name):
    fn = zoo.get(name)
    for method in race.STRATEGIES:
        result = race.search(method, fn, seed=0)
        assert result.gap(fn) <= 1e-6, (method, result.value)
        assert result.evaluations > 0 and result.history[-1][1] == result.value
    with pytest.warns(LandscopeDeprecationWarning, match="SearchResult is renamed"):
        assert race.SearchResult is race.Search is type(result)
    # gradient descent from the same 256 starts as multi-start: how often it does not. Its end
    # points are polished onto the critical point they converge to, a global minimiser or not.
    starts = fn.sample(256, torch.Generator().manual_seed(0))
    run = race.descend(fn, "gd", starts, steps=300, lr=0.002)
    ends = zoo.locate(fn, run.points[-1], radius=0.1)
    assert ends.located.double().mean() > 0.95  # GD did converge, mostly to other minima
    best = torch.tensor([i for i, p in enumerate(fn.critical_points) if p in fn.minimisers])
    share = torch.isin(ends.listed, best).double().mean().item()
    # the camel's two global basins are two of six; Rastrigin's is one cell of 11² in the box
    low, high = (0.1, 0.7) if name == "six_hump_camel" else (0.0, 0.05)
    assert low < share < high, share


def test_negative_curvature_descent_takes_its_old_eps_keyword_with_a_warning():
    x = torch.zeros(2, requires_grad=True)
    with pytest.warns(LandscopeDeprecationWarning, match="curvature_atol="):
        old = optim.NegativeCurvatureDescent([x], eps=0.25)
    new = optim.NegativeCurvatureDescent([x], curvature_atol=0.25)
    assert old.param_groups[0]["curvature_atol"] == new.param_groups[0]["curvature_atol"] == 0.25
    assert "eps" not in new.param_groups[0]

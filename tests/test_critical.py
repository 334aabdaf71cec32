"""probe() on points whose kind is known in closed form, and on small networks against eigh."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import classification_data, make_mlp
from torch import nn
from torch.nn.functional import cross_entropy, mse_loss

from landscope import KINDS, Objective, probe


def rosenbrock(x):
    return (1 - x[0]) ** 2 + 100 * (x[1] - x[0] ** 2) ** 2


CASES = [
    # (name, f, point, kind, index)
    ("bowl x²+y²", lambda x: x[0] ** 2 + x[1] ** 2, [0, 0], "local_min", 0.0),
    ("x²−y²", lambda x: x[0] ** 2 - x[1] ** 2, [0, 0], "saddle", 0.5),
    ("−x²−y²", lambda x: -x[0] ** 2 - x[1] ** 2, [0, 0], "local_max", 1.0),
    ("xy", lambda x: x[0] * x[1], [0, 0], "saddle", 0.5),
    ("x²+y³", lambda x: x[0] ** 2 + x[1] ** 3, [0, 0], "saddle", 0.0),
    ("x²+y⁴", lambda x: x[0] ** 2 + x[1] ** 4, [0, 0], "local_min", 0.0),
    ("monkey saddle", lambda x: x[0] ** 3 - 3 * x[0] * x[1] ** 2, [0, 0], "saddle", 0.0),
    # seed note 004's x²+2xy+y³: ∇ = (2x+2y, 2x+3y²) vanishes at (0,0) and (−2/3, 2/3)
    ("x²+2xy+y³ at 0", lambda x: x[0] ** 2 + 2 * x[0] * x[1] + x[1] ** 3, [0, 0], "saddle", 0.5),
    ("x²+2xy+y³ at (−2/3, 2/3)", lambda x: x[0] ** 2 + 2 * x[0] * x[1] + x[1] ** 3,
     [-2 / 3, 2 / 3], "local_min", 0.0),
    ("sin x·sin y at 0", lambda x: torch.sin(x[0]) * torch.sin(x[1]), [0, 0], "saddle", 0.5),
    ("sin x·sin y at (π/2, π/2)", lambda x: torch.sin(x[0]) * torch.sin(x[1]),
     [math.pi / 2, math.pi / 2], "local_max", 1.0),
    ("sin x·sin y at (π/2, −π/2)", lambda x: torch.sin(x[0]) * torch.sin(x[1]),
     [math.pi / 2, -math.pi / 2], "local_min", 0.0),
    ("Rosenbrock at (1, 1)", rosenbrock, [1, 1], "local_min", 0.0),
    ("Peano (y−x²)(y−2x²)", lambda x: (x[1] - x[0] ** 2) * (x[1] - 2 * x[0] ** 2), [0, 0],
     "saddle", 0.0),
    ("x⁴+y⁴", lambda x: x[0] ** 4 + x[1] ** 4, [0, 0], "local_min", 0.0),
    ("−x⁴−y²", lambda x: -x[0] ** 4 - x[1] ** 2, [0, 0], "local_max", 0.5),
    ("x² (flat in y)", lambda x: x[0] ** 2 + 0 * x[1], [0, 3], "local_min", 0.0),
    ("−x⁴ (every direction falls)", lambda x: -x[0] ** 4, [0], "local_max", 0.0),
    ("−(x²+y²)²", lambda x: -(x[0] ** 2 + x[1] ** 2) ** 2, [0, 0], "local_max", 0.0),
    ("quadratic saddle of index 2/5", lambda x: (x[:3] ** 2).sum() - (x[3:] ** 2).sum(),
     [0.0] * 5, "saddle", 0.4),
]


@pytest.mark.parametrize("name, f, point, kind, index", CASES, ids=[c[0] for c in CASES])
def test_known_critical_points(name, f, point, kind, index):
    p = probe(Objective.from_function(f, point))
    assert p.kind == kind, p.reason
    assert p.stationarity.critical
    assert p.index == pytest.approx(index)
    assert p.kind in KINDS


def test_second_order_fractions_and_condition_number():
    p = probe(Objective.from_function(lambda x: 3 * x[0] ** 2 + 0.5 * x[1] ** 2, [0, 0]))
    assert p.lambda_max == pytest.approx(6) and p.lambda_min == pytest.approx(1)
    assert p.condition_number == pytest.approx(6)
    assert p.minimum_ratio == 1.0 and p.fractions["zero"].value == 0.0


def test_degenerate_points_report_the_higher_order_evidence():
    p = probe(Objective.from_function(lambda x: x[0] ** 2 + x[1] ** 3, [0, 0]))
    test = p.evidence["null_direction_test"]
    assert test["descent"] and test["witness"]["phi"] < 0
    assert p.fractions["zero"].value == 0.5  # the y direction is null
    assert "higher order" in p.reason


def test_a_critical_point_at_the_origin_with_a_rounding_level_gradient_is_critical():
    """θ = 0 has no scale: a gradient of 1e-20 there (what a finder ends with) must not make
    the relative step infinite."""
    p = probe(Objective.from_function(lambda x: x[0] ** 2 - x[1] ** 2 + 1e-20 * x[0], [0, 0]))
    assert p.kind == "saddle" and p.stationarity.critical
    moved = probe(Objective.from_function(lambda x: x[0] ** 2 - x[1] ** 2 + 1e-3 * x[0], [0, 0]))
    assert moved.kind == "not_critical"


def test_non_critical_point_reports_its_distance():
    f = lambda x: x[0] ** 2 + 2 * x[0] * x[1] + x[1] ** 3  # noqa: E731
    p = probe(Objective.from_function(f, [2 / 3, -2 / 3]))  # ∇f = (0, 8/3): not critical
    assert p.kind == "not_critical"
    assert p.grad_norm == pytest.approx(8 / 3)
    # H = [[2, 2], [2, −4]]: ρ = 1 + √13; the 1/ρ step moves θ by ‖g‖/ρ, against ‖θ‖ = √8/3
    rho = 1 + math.sqrt(13)
    assert p.stationarity.step == pytest.approx(8 / 3 / rho, rel=1e-12)
    assert p.stationarity.relative_step == pytest.approx(8 / 3 / rho / (math.sqrt(8) / 3),
                                                            rel=1e-12)
    assert "still sliding" in p.reason


def test_global_minimum_only_at_a_known_lower_bound():
    at_zero = probe(Objective.from_function(rosenbrock, [1, 1], lower_bound=0.0))
    assert at_zero.kind == "local_min" and at_zero.is_global_min
    no_bound = probe(Objective.from_function(rosenbrock, [1, 1]))
    assert not no_bound.is_global_min
    raised = probe(Objective.from_function(lambda x: rosenbrock(x) + 1, [1, 1], lower_bound=0))
    assert raised.kind == "local_min" and not raised.is_global_min


def test_interpolating_regression_is_a_global_minimum():
    # a linear model fitted exactly by least squares: MSE 0, the known lower bound of MSE
    X, _ = classification_data(n=3, features=4)
    model = nn.Linear(4, 1, bias=False).double()
    target = X @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]], dtype=torch.float64)
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(X, target).solution.T)
    p = probe(Objective.from_model(model, mse_loss, (X, target)))
    assert p.loss < 1e-20
    # 3 samples, 4 weights: one null direction along which the fit is exact: a valley floor of
    # global minima, so a non-strict one
    assert p.kind == "local_min" and p.is_global_min
    assert p.strict is False and p.flat_directions == 1
    assert p.fractions["zero"].value == 0.25


def test_network_exact_path_matches_numpy_eigh():
    model = make_mlp(nn.Tanh, sizes=(4, 6, 3), seed=2)
    X, y = classification_data(n=40)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    p = probe(obj, exact=True)
    H = obj.hessian().numpy()
    eig = np.linalg.eigvalsh(H)
    assert p.lambda_max == pytest.approx(eig[-1], rel=1e-10)
    assert p.lambda_min == pytest.approx(eig[0], rel=1e-10)
    tol = p.tolerances.flat_atol
    assert p.fractions["negative"].value == pytest.approx(np.mean(eig <= -tol))
    assert p.fractions["positive"].value == pytest.approx(np.mean(eig > tol))
    assert p.minimum_ratio + p.index + p.fractions["zero"].value == pytest.approx(1.0)


@pytest.mark.slow
def test_network_iterative_path_agrees_with_exact():
    model = make_mlp(nn.Tanh, sizes=(8, 16, 16, 4), seed=4)
    X, y = classification_data(n=200, features=8, classes=4)
    obj = Objective.from_model(model, cross_entropy, (X, y))
    exact = probe(obj, exact=True)
    iterative = probe(obj, exact=False, probes=16, lanczos_steps=40)
    assert iterative.evidence["path"] == "iterative"
    assert iterative.spectrum.evidence["converged"]
    assert iterative.lambda_max == pytest.approx(exact.lambda_max, rel=1e-6)
    assert iterative.lambda_min == pytest.approx(exact.lambda_min, rel=1e-6)
    assert iterative.kind == exact.kind == "not_critical"  # an untrained network
    fresh = Objective.from_model(model, cross_entropy, (X, y))
    probe(fresh, exact=False, probes=4, lanczos_steps=10)
    # one pass over the data, kept for every product (the chain engine's first-point trial spends
    # its own passes, that one included, and records them; where autograd won the timing, its
    # graph was released before the chain engine ran, so building it again costs one more)
    trial = fresh.info.get("chain_trial")
    rebuilt = trial is not None and "why" in trial
    assert fresh.counts["passes"] == (trial["passes"] + rebuilt if trial else 1)
    for key in ("negative", "positive"):
        low, high = iterative.fractions[key].interval
        assert low <= exact.fractions[key].value <= high, key


def test_saddle_of_a_network_at_the_origin():
    # a deep linear network at θ = 0 is a critical point (every gradient term has a zero
    # factor); with two layers its Hessian has ± pairs: a saddle of index ≥ 1/4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        for p_ in model.parameters():
            p_.zero_()
    X, _ = classification_data(n=30, features=3)
    target = X[:, :2] @ torch.tensor([[1.0, 0.5], [-1.0, 2.0]], dtype=torch.float64)
    p = probe(Objective.from_model(model, mse_loss, (X, target)))
    assert p.grad_norm == 0.0
    assert p.kind == "saddle" and p.lambda_min < 0 < p.lambda_max


@pytest.mark.parametrize("a, b, c", [(1, 0, 1), (1, 1000, 1), (1e-3, -5, 1), (1e4, 1e6, 1),
                                     (1, 0, 1e-3), (1, 1000, 1e3), (7, -3, 1e2)])
@pytest.mark.parametrize("known_bound", [False, True])
def test_first_order_test_is_invariant_to_affine_loss_and_parameter_scale(a, b, c, known_bound):
    # L(x) = a·(x/c)² + b at x = 0.01·c: ‖g‖/(ρ‖θ‖) = (2a·0.01/c)/(2a/c² · 0.01c) = 1, whatever
    # a, b, c: never critical (x² + 1000 at 0.01 used to be called a minimum, x² not critical)
    bound = b if known_bound else None
    p = probe(Objective.from_function(lambda x: a * (x[0] / c) ** 2 + b, [0.01 * c],
                                      lower_bound=bound))
    assert p.kind == "not_critical", p.reason
    assert p.stationarity.relative_step == pytest.approx(1.0, rel=1e-9)
    # near the stationary point of a·((x/c) − 1)² + b, at relative distance 1e-9: critical
    near = probe(Objective.from_function(lambda x: a * (x[0] / c - 1) ** 2 + b,
                                         [c * (1 + 1e-9)], lower_bound=bound))
    assert near.kind == "local_min" and near.strict, near.reason
    assert near.stationarity.relative_step == pytest.approx(1e-9, rel=1e-5)


def test_first_order_rounding_floor_keeps_exact_fits_critical():
    # step_rtol below rounding is raised to 10·eps: the rounding-level gradient of an exact fit
    # does not make it "still sliding"
    f = lambda x: (x[0] - 0.1) ** 2 + (x[1] - 0.3) ** 2  # noqa: E731
    p = probe(Objective.from_function(f, [0.1, 0.3]), step_rtol=0.0)
    assert p.tolerances.step_rtol_applied == 10 * torch.finfo(torch.float64).eps
    assert p.kind == "local_min", p.reason


class _WithUnusedHead(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Linear(3, 1, bias=False)
        self.unused = nn.Linear(2, 2)

    def forward(self, x):
        return self.body(x)


@pytest.mark.parametrize("exact", [True, False])
def test_unused_parameters_are_left_out_of_fractions_and_verdict(exact):
    # least squares fitted exactly: a strict minimum in the 3 used weights; the 6 unused ones
    # add exact zero eigenvalues that are not the landscape's
    X, _ = classification_data(n=30, features=3)
    target = X @ torch.tensor([[1.0], [-2.0], [0.5]], dtype=torch.float64) + 0.1
    model = _WithUnusedHead().double()
    with torch.no_grad():
        model.body.weight.copy_(torch.linalg.lstsq(X, target).solution.T)
    obj = Objective.from_model(model, mse_loss, (X, target))
    assert obj.n == 9
    p = probe(obj, exact=exact, k=2, probes=4, lanczos_steps=3)
    assert p.n_unused == 6 and p.to_dict()["n_unused"] == 6
    assert p.kind == "local_min" and p.strict is True, p.reason
    used = (2 / 30) * X.T @ X  # the Hessian of the mean squared error in the used weights
    truth = torch.linalg.eigvalsh(used)
    assert p.lambda_min == pytest.approx(truth[0].item(), rel=1e-8)
    assert p.lambda_max == pytest.approx(truth[-1].item(), rel=1e-8)
    assert p.fractions["positive"].value == pytest.approx(1.0)
    assert p.fractions["zero"].value == pytest.approx(0.0, abs=1e-12)
    assert "6 parameter(s) the loss does not depend on" in p.reason
    # eigenvectors stay in Rⁿ with nothing on the unused coordinates
    vectors = p.spectrum.smallest.vectors
    assert vectors.shape == (9, 2) and vectors[3:].abs().max() == 0


def test_index_zero_beside_a_negative_lambda_min_says_why():
    # λ = (2, −2e-4): −2e-4 is beyond the zero tolerance (2e-6) but inside the 1 % flat band
    p = probe(Objective.from_function(lambda x: x[0] ** 2 - 1e-4 * x[1] ** 2, [0.0, 0.0]))
    assert p.kind == "saddle" and p.index == 0 and p.lambda_min == pytest.approx(-2e-4)
    assert "index 0: λ_min = -0.0002 lies inside the ±1 % flat band" in p.reason
    plain = probe(Objective.from_function(lambda x: x[0] ** 2 - x[1] ** 2, [0.0, 0.0]))
    assert "index 0" not in plain.reason


def _panel_text(p) -> str:
    from rich.console import Console

    from landscope.render import probe_panel

    console = Console(record=True, width=200)
    console.print(probe_panel(p))
    return " ".join(console.export_text().split())


def test_panel_says_strictness_flat_directions_and_why_index_is_zero():
    valley = probe(Objective.from_function(lambda x: x[0] ** 2 + 0 * x[1:].sum(), [0, 1, 2, 3]))
    text = _panel_text(valley)
    assert "LOCAL MINIMUM (non-strict: 3 flat directions)" in text
    bowl = probe(Objective.from_function(lambda x: x[0] ** 2 - 1e-4 * x[1] ** 2 + x[2] ** 2,
                                         [0, 0, 0]))
    text = _panel_text(bowl)
    assert "SADDLE POINT" in text and "(index 0: λ_min = -0.0002 lies inside the ±1 % flat" in text
    assert "critical below 1e-06·‖θ‖" in text


def test_tolerances_are_a_record_with_the_result_files_keys():
    # λ = (2, −2e-4): ρ = 2, so each absolute tolerance is its relative one times 2
    p = probe(Objective.from_function(lambda x: x[0] ** 2 - 1e-4 * x[1] ** 2, [0.0, 0.0]),
              zero_rtol=1e-5, flat_rtol=0.05, global_atol=1e-8)
    t = p.tolerances
    assert (t.zero_atol, t.flat_atol) == (pytest.approx(2e-5), pytest.approx(0.1))
    assert p.to_dict()["tolerances"] == {
        "rel_tol": 1e-5, "zero_tol": t.zero_atol, "flat_band": 0.05, "flat_tol": t.flat_atol,
        "step_rtol": 1e-6, "step_tol": 1e-6, "global_tol": 1e-8, "eig_tol": None}
    from landscope._deprecated import LandscopeDeprecationWarning

    with pytest.warns(LandscopeDeprecationWarning, match=r"tolerances\.zero_atol"):
        assert t["zero_tol"] == t.zero_atol  # read as the dict of 0.1
    with pytest.raises(KeyError):
        t["nothing"]


def test_old_keywords_of_probe_warn_and_give_the_same_result():
    from landscope._deprecated import LandscopeDeprecationWarning
    from landscope.critical import default_zero_rtol

    f = Objective.from_function(lambda x: x[0] ** 2 - 1e-3 * x[1] ** 2 + 0.5 * x[2] ** 2,
                                [0.0, 0.0, 0.0])
    new = {"zero_rtol": 1e-5, "flat_rtol": 0.02, "global_atol": 1e-9, "eig_rtol": 1e-8,
           "lanczos_steps": 3}
    old = {"rel_tol": 1e-5, "flat_band": 0.02, "global_tol": 1e-9, "eig_tol": 1e-8, "steps": 3}
    common = {"exact": False, "k": 1, "probes": 2}
    with pytest.warns(LandscopeDeprecationWarning) as caught:
        before = probe(f, **common, **old)
    assert len(caught) == len(old)
    after = probe(f, **common, **new)
    assert before.tolerances == after.tolerances and before.kind == after.kind == "saddle"
    assert before.density.to_dict() == after.density.to_dict()
    import landscope.critical

    with pytest.warns(LandscopeDeprecationWarning, match="default_zero_rtol"):
        assert landscope.critical.default_rel_tol is default_zero_rtol

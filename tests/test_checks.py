"""Every public function refuses a bad argument with a BadInputError that names the parameter and
the value it was given (a wrong choice, a count below one, a wrong type), before any work."""

from __future__ import annotations

import pytest
import torch
from helpers import classification_data, make_mlp
from torch import nn

import landscope as ls
from landscope import _checks, directions, escape, finders, functions, optim, race, report, studies
from landscope.errors import BadInputError
from landscope.monitor import Monitor
from landscope.surface import surface


@pytest.fixture(scope="module")
def problem():
    """A tiny model, its data and its Objective, shared by every case."""
    model, (X, y) = make_mlp(sizes=(4, 3, 3)), classification_data(n=12)
    loss = nn.CrossEntropyLoss()
    return model, loss, (X, y), ls.Objective.from_model(model, loss, (X, y))


def _frame(obj):
    return directions.random(obj, norm="none")


def _from_model(problem, **options):
    model, loss, data, _ = problem
    return ls.Objective.from_model(model, loss, data, **options)


def _escape(problem, **options):
    model, loss, data, _ = problem
    settings = {"evaluations": 2, "seeds": 1, "candidates": ("baseline",), **options}
    return escape.escape(model, loss, data, **settings)


def _monitor(problem, **options):
    model = problem[0]
    return Monitor(model, torch.optim.SGD(model.parameters(), lr=0.1), **options)




CASES = [  # (call on the shared problem, the parameter, the bad value as repr() shows it)
    (lambda p: ls.probe(p[3], k=0), "k", "0"),
    (lambda p: ls.probe(p[3], probes=0), "probes", "0"),
    (lambda p: ls.probe(p[3], lanczos_steps=-1), "lanczos_steps", "-1"),
    (lambda p: ls.probe(p[3], k="5"), "k", "'5'"),
    (lambda p: ls.anytime_probe(p[3], k=0), "k", "0"),
    (lambda p: ls.anytime_probe(p[3], subsets=1), "subsets", "1"),
    (lambda p: ls.spectrum(p[3], k=0), "k", "0"),
    (lambda p: ls.spectrum(p[3], which="middle"), "which", "'middle'"),
    (lambda p: ls.spectrum(p[3], eig_rtol=-1.0), "eig_rtol", "-1.0"),
    (lambda p: ls.density(p[3], probes=0), "probes", "0"),
    (lambda p: ls.density(p[3], lanczos_steps=0), "lanczos_steps", "0"),
    (lambda p: ls.trace(p[3], probes=0), "probes", "0"),
    (lambda p: ls.trace(p[3], batch=0), "batch", "0"),
    (lambda p: ls.trace(p[3], stderr_rtol=-1.0), "stderr_rtol", "-1.0"),
    (lambda p: ls.find_critical_points(p[3], p[3].theta0, method="bfgs"), "method", "'bfgs'"),
    (lambda p: finders.newton_mr(p[3], grad_atol=-1.0), "grad_atol", "-1.0"),
    (lambda p: finders.gradient_norm_min(p[3], solver="BFGS"), "solver", "'BFGS'"),
    (lambda p: _from_model(p, mode="test"), "mode", "'test'"),
    (lambda p: _from_model(p, engine="fast"), "engine", "'fast'"),
    (lambda p: _from_model(p, reduction="none"), "reduction", "'none'"),
    (lambda p: _from_model(p, batch_size=0), "batch_size", "0"),
    (lambda p: _from_model(p, batch_size=2.5), "batch_size", "2.5"),
    (lambda p: race.race(starts=0), "starts", "0"),
    (lambda p: race.race(steps=2.5), "steps", "2.5"),
    (lambda p: race.race(start="middle"), "start", "'middle'"),
    (lambda p: race.race(strategies=("random",)), "strategies", "'random'"),
    (lambda p: race.race(optimizers=("sgdd",)), "optimizer", "'sgdd'"),
    (lambda p: race.search("random", "saddle"), "method", "'random'"),
    (lambda p: directions.make("sideways", p[3]), "kind", "'sideways'"),
    (lambda p: directions.random(p[3], norm="l3"), "norm", "'l3'"),
    (lambda p: directions.random(p[3], biases="keep"), "biases", "'keep'"),
    (lambda p: directions.random(p[3], dims=3), "dims", "3"),
    (lambda p: surface(p[3], _frame(p[3]), bn="train"), "bn", "'train'"),
    (lambda p: surface(p[3], _frame(p[3]), resolution=0), "resolution", "0"),
    (lambda p: _escape(p, evaluations=0), "evaluations", "0"),
    (lambda p: _escape(p, seeds=0), "seeds", "0"),
    (lambda p: _escape(p, batch_size=0), "batch_size", "0"),
    (lambda p: _escape(p, optimizer="sgdd"), "optimizer", "'sgdd'"),
    (lambda p: studies.run("nope"), "name", "'nope'"),
    (lambda p: studies.run(next(iter(studies.STUDIES)), scale="huge"), "scale", "'huge'"),
    (lambda p: report.write_report("no-such-run-dir"), "run_dir", "'no-such-run-dir'"),
    (lambda p: _monitor(p, every=0), "every", "0"),
    (lambda p: _monitor(p, window=1.5), "window", "1.5"),
    (lambda p: optim.make("sgdd", [torch.zeros(2, requires_grad=True)]), "optimizer", "'sgdd'"),
    (lambda p: optim.PerturbedGD([torch.zeros(2, requires_grad=True)], radius=0), "radius", "0"),
    (lambda p: optim.Newton([torch.zeros(2, requires_grad=True)], damping=-1.0), "damping",
     "-1.0"),
    (lambda p: optim.SaddleFreeNewton([torch.zeros(2, requires_grad=True)], krylov_dim=0),
     "krylov_dim", "0"),
    (lambda p: optim.NegativeCurvatureDescent([torch.zeros(2, requires_grad=True)],
                                                  curvature_atol=-1.0), "curvature_atol", "-1.0"),
    (lambda p: optim.PerturbedGD([torch.zeros(2, requires_grad=True)], t_thres=0), "t_thres",
     "0"),
    (lambda p: functions.get("rastrigin", n=0), "n", "0"),
    (lambda p: functions.get("quadratic_saddle", n=3, index=-1), "index", "-1"),
    (lambda p: ls.doctor.diagnose(42), "source", "42"),
]


@pytest.mark.parametrize("call, name, shown", CASES, ids=[
    f"{i}-{getattr(case, 'values', case)[1]}" for i, case in enumerate(CASES)])
def test_a_bad_argument_is_refused_naming_the_parameter_and_the_value(problem, call, name, shown):
    with pytest.raises(BadInputError) as caught:
        call(problem)
    message = str(caught.value)
    assert f"{name}={shown}" in message, message


@pytest.mark.parametrize("check, args, fix", [
    (_checks.choice, ("method", "foo", ("newton_mr", "gradient_norm")),
     "method='foo'; use one of newton_mr, gradient_norm"),
    (_checks.choice, ("which", [1], {"both": 0}), "which=[1]; use one of both"),
    (_checks.integer, ("steps", 0), "steps=0; use a whole number ≥ 1"),
    (_checks.integer, ("steps", True), "steps=True; use a whole number ≥ 1"),
    (_checks.integer, ("steps", 2.0), "steps=2.0; use a whole number ≥ 1"),
    (_checks.integer, ("index", -1, 0), "index=-1; use a whole number ≥ 0"),
    (_checks.positive, ("lr", float("nan")), "lr=nan; use a finite number > 0"),
    (_checks.positive, ("lr", "0.1"), "lr='0.1'; use a finite number > 0"),
])
def test_the_checks_refuse_with_one_message_format(check, args, fix):
    with pytest.raises(BadInputError) as caught:
        check(*args)
    assert str(caught.value) == fix


def test_the_checks_return_what_they_accept():
    import numpy as np

    assert _checks.integer("n", np.int64(3)) == 3 and type(_checks.integer("n", np.int64(3))) is int
    assert _checks.positive("lr", torch.tensor(0.5)) == 0.5
    assert _checks.choice("mode", "eval", ("eval", "train")) == "eval"

"""The remedy control on the fault suite: each remedy key is applied as the change it names, a
trial retrains the very run the suite diagnosed, the draw is reproducible and never the
prescription, and a win needs a clear margin."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from landscope.doctor import repairs
from landscope.doctor.faults import FAULTS, HEALTHY, Case, FaultRun, run_case
from landscope.doctor.knowledge import TEXT
from landscope.doctor.recipes import ARCHITECTURES, Recipe
from landscope.doctor.scenarios import Setup, steps
from landscope.errors import BadInputError


def test_every_repair_is_a_remedy_the_doctor_gives_and_changes_some_fault():
    keys = {r.key for text in TEXT.values() for r in text["remedies"]}
    assert set(repairs.REPAIRS) <= keys  # none stale
    assert set(repairs.DRAWN) == set(repairs.REPAIRS)
    for key, edit in repairs.REPAIRS.items():
        assert any(edit(f.recipe, {}) != f.recipe for f in FAULTS.values()), key


def test_prescription_skips_what_the_suite_cannot_apply_and_the_draw_is_stable():
    assert repairs.prescription(("residual", "more_data", "adam", "relu")) == "adam"
    assert repairs.prescription(("residual", "early_stopping")) is None
    case = Case("vanishing", "mlp", 0)
    drawn = {repairs.draw(Case("vanishing", "mlp", seed), "adam") for seed in range(40)}
    assert "adam" not in drawn and len(drawn) > 10
    assert repairs.draw(case, "adam") == repairs.draw(case, "adam")
    with pytest.raises(BadInputError, match="'residual'.*he_relu"):
        repairs.trial(case, "residual")  # a remedy the suite cannot express


def test_a_win_needs_a_lower_loss_by_the_margin():
    case = Case("saddle", "mlp")
    plateau = repairs.Repair(case, "vmin_step", "relu", 2.31, 2.3026, 2.3030)
    assert not plateau.wins  # the same plateau, to four digits
    assert replace(plateau, prescribed_loss=0.5).wins
    assert not replace(plateau, prescribed=None, prescribed_loss=0.0).wins
    assert not replace(plateau, prescribed_loss=math.inf, drawn_loss=math.inf).wins


def test_the_suite_repairs_each_faulty_run_and_reports_each_one(monkeypatch):
    runs = [FaultRun(Case(fault, "mlp"), ()) for fault in ("saddle", HEALTHY, "vanishing")]
    monkeypatch.setattr(repairs, "repair", lambda run: run.case)  # no training here
    reports = []
    assert repairs.repair_suite(runs, progress=lambda *report: reports.append(report)) == [
        runs[0].case, runs[2].case]  # a healthy run has nothing to repair
    assert reports == [(1, 2, "saddle-mlp-0"), (2, 2, "vanishing-mlp-0")]


def _setup(recipe: Recipe, arch: str = "mlp") -> Setup:
    torch.manual_seed(0)
    return recipe.setup(ARCHITECTURES[arch])


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_each_edit_builds_the_change_it_names(arch, one_thread):
    vanishing = FAULTS["vanishing"].recipe
    fixed = _setup(repairs.REPAIRS["he_relu"](vanishing, {}), arch).model
    assert not any(isinstance(m, nn.Sigmoid) for m in fixed.modules())
    assert sum(isinstance(m, nn.ReLU) for m in fixed.modules()) >= 10
    normalised = _setup(repairs.REPAIRS["normalisation"](vanishing, {}), arch).model
    assert sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in normalised.modules()) == 10
    dead = FAULTS["dead_relus"].recipe
    assert all(p.abs().max() < 1 for n, p in _setup(repairs.REPAIRS["reinit"](dead, {}), arch)
               .model.named_parameters() if n.endswith("bias"))
    small = FAULTS["lr_too_small"].recipe
    base = _setup(small, arch).optimizer.param_groups[0]["lr"]
    raised = _setup(repairs.REPAIRS["raise_lr"](small, {}), arch).optimizer
    assert raised.param_groups[0]["lr"] == pytest.approx(10 * base)  # no diagnosis: 10x
    raised = _setup(repairs.REPAIRS["raise_lr"](small, {"raise_factor": 123.0}), arch).optimizer
    assert raised.param_groups[0]["lr"] == pytest.approx(123 * base)  # the diagnosis's factor
    adam = _setup(repairs.REPAIRS["adam"](small, {}), arch).optimizer
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["lr"] == 1e-3


def test_the_training_loop_clips_as_the_setup_says(one_thread):
    torch.manual_seed(0)
    X, y = 10 * torch.randn(16, 3), torch.randint(0, 2, (16,))
    model = nn.Linear(3, 2)
    setup = Setup(model, torch.optim.SGD(model.parameters(), lr=0.5), (X, y), steps=1,
                  batch=16, clip=1.0)
    before = [p.detach().clone() for p in model.parameters()]
    grads = torch.autograd.grad(nn.functional.cross_entropy(model(X), y),
                                list(model.parameters()))
    norm = torch.cat([g.reshape(-1) for g in grads]).norm().item()
    assert norm > 1
    assert [step for step, _ in steps(setup, 0)] == [0]
    for b, g, p in zip(before, grads, model.parameters(), strict=True):
        torch.testing.assert_close(p.detach(), b - 0.5 * g / norm)


def test_the_warm_up_and_cosine_schedules_follow_their_formulas(one_thread):
    setup = _setup(repairs.REPAIRS["warmup_cosine"](Recipe(), {}))
    base, warm = setup.optimizer.param_groups[0]["lr"], 300 // 10
    rates = [setup.optimizer.param_groups[0]["lr"] for _ in steps(setup, 0)]
    assert rates[0] == pytest.approx(base * (0.01 + 0.99 / warm))
    assert rates[warm - 1] == pytest.approx(base)  # the end of the warm-up
    assert rates[warm + 100] == pytest.approx(base * (1 + math.cos(math.pi * 101 / 270)) / 2)


@pytest.mark.slow
def test_a_trial_retrains_the_run_the_suite_diagnosed(one_thread, tmp_path):
    case = Case("vanishing", "mlp", 0)
    stuck = run_case(case, tmp_path / case.name)
    assert repairs.trial(case, None) == stuck  # the Monitor never changes the training
    result = FaultRun(case, ("vanishing_gradients",), remedies=("he_relu", "adam"),
                      final_loss=stuck)
    repair = repairs.repair(result)
    assert repair.prescribed == "he_relu" and repair.drawn != "he_relu"
    assert repair.prescribed_loss < 0.5 * stuck  # ReLU with He initialisation learns
    assert repair.drawn_loss == repairs.trial(case, repair.drawn)


def test_the_v_min_step_moves_the_trainable_parameters_only(one_thread):
    """The transformer on a frozen embedding: θ is the trainable parameters, written by name."""
    recipe = FAULTS["ill_conditioning"].recipe
    plain = _setup(recipe, "transformer").model.state_dict()
    stepped = _setup(repairs.REPAIRS["vmin_step"](recipe, {}), "transformer").model
    assert not stepped.embed.weight.requires_grad
    assert torch.equal(stepped.embed.weight, plain["embed.weight"])
    moved = [n for n, p in stepped.named_parameters() if not torch.equal(p, plain[n])]
    assert moved and all(dict(stepped.named_parameters())[n].requires_grad for n in moved)

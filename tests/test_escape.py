"""Remedy trials: the same start, data order and budget for every candidate; bit-reproducible;
the caller's model untouched; the v_min step at a saddle; resume after an interrupt; the CLI."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import Snapshot, TiedDictLM, classification_data, dict_batches, token_loss
from torch import nn
from typer.testing import CliRunner

from landscope import escape as trials
from landscope._deprecated import LandscopeDeprecationWarning
from landscope.cli import app
from landscope.errors import BadInputError
from landscope.escape import runs

FIXTURE = str(Path(__file__).parent / "fixtures" / "user_net.py")
cross_entropy = nn.functional.cross_entropy


class Recorder(nn.Module):
    """A tanh MLP that logs, at every training-mode forward, its parameters and its inputs."""

    log: list = []

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()

    def forward(self, x):
        if self.training:
            theta = torch.cat([p.detach().reshape(-1) for p in self.parameters()])
            Recorder.log.append((theta.clone(), x.clone()))
        return self.net(x)


def _runs(log_marks):
    """The log cut into runs at the marks the progress callback left."""
    runs, start = [], 0
    for end in log_marks:
        runs.append(Recorder.log[start:end])
        start = end
    return runs


def _distinct(records):
    """The batches a run read, in order (consecutive calls of one step read the same)."""
    batches = []
    for _, x in records:
        if not batches or not torch.equal(batches[-1], x):
            batches.append(x)
    return batches


@pytest.mark.slow
def test_every_candidate_starts_at_theta0_and_reads_the_same_batches(one_thread):
    X, y = classification_data(n=60)
    model = Recorder()
    theta0 = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
    Recorder.log.clear()
    marks, notes = [], []

    def progress(done, total, note):
        marks.append(len(Recorder.log))
        notes.append((done, total, note))

    names = ["baseline", "adam", "cosine", "lbfgs", "saddle_free_newton", "perturbed_gd",
             "vmin_step"]
    trial = trials.escape(model, cross_entropy, (X, y), candidates=names, evaluations=12, seeds=2,
                          batch_size=16, progress=progress)
    order = [(run["candidate"], run["seed"]) for run in trial.runs]
    assert notes == [(done, len(order), f"{name} seed {seed}")
                     for done, (name, seed) in enumerate(order, 1)]
    runs = dict(zip(order, _runs(marks), strict=True))
    assert all(run for run in runs.values())
    for (name, seed), records in runs.items():
        if name != "vmin_step":  # which starts one line-search step away, along v_min
            assert torch.equal(records[0][0], theta0), (name, seed)
        reference = _distinct(runs["baseline", seed])
        mine = _distinct(records)
        assert len(mine) <= len(reference)
        assert all(torch.equal(a, b) for a, b in zip(mine, reference, strict=False)), name
    assert len(_distinct(runs["baseline", 0])) == 12  # one batch per evaluation
    assert not torch.equal(_distinct(runs["baseline", 0])[0], _distinct(runs["baseline", 1])[0])
    for run in trial.runs:  # the budget: spent in full by first-order runs; every step began
        spent = [0] + [e for e, _ in run["curve"]]  # within it, and no step could have followed
        assert len(run["curve"]) == run["steps"] and spent[-2] < 12
        assert spent[-1] + (spent[-1] - spent[-2]) > 12 and spent[-1] == run["evaluations"]
        if run["candidate"] in ("baseline", "adam", "cosine", "perturbed_gd"):
            assert run["evaluations"] == run["steps"] == 12
    vmin = trial.start["vmin"]
    first = runs["vmin_step", 0][0][0]
    assert (first - theta0).norm().item() == pytest.approx(vmin["alpha"], rel=1e-9)


@pytest.mark.slow
def test_bit_reproducible_and_the_callers_model_untouched(one_thread):
    X, y = classification_data(n=48)
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Tanh(), nn.Dropout(0.3),
                          nn.Linear(8, 3)).double().eval()
    snapshot = Snapshot(model)
    options = dict(candidates=["baseline", "noisy_gd", "sgdr"], evaluations=10, seeds=2,
                   batch_size=12, held_out=classification_data(n=20, seed=7))
    first = trials.escape(model, cross_entropy, (X, y), **options)
    second = trials.escape(model, cross_entropy, (X, y), **options)
    snapshot.check()
    keep = ("candidate", "seed", "train_loss", "held_out_loss", "lambda_min", "curve",
            "evaluations")
    assert [{k: r[k] for k in keep} for r in first.runs] == \
        [{k: r[k] for k in keep} for r in second.runs]
    assert first.summary[0]["held_out_mean"] is not None
    losses = {r["train_loss"] for r in first.runs}
    assert len(losses) == len(first.runs)  # seeds and candidates really differ


@pytest.mark.slow
def test_a_tied_transformer_on_dict_batches_trains_copies_and_is_left_alone(one_thread):
    """Attention, an embedding tied to the head, a module used twice, dict batches: every
    candidate trains a copy (the tie kept in it), reproducibly; the caller's model is untouched."""
    model = TiedDictLM()
    snapshot = Snapshot(model)
    options = dict(candidates=["adam", "vmin_step"], evaluations=8, seeds=1, curvature_products=5)
    first = trials.escape(model, token_loss, dict_batches(), **options)
    second = trials.escape(model, token_loss, dict_batches(), **options)
    snapshot.check()
    assert [r["train_loss"] for r in first.runs] == [r["train_loss"] for r in second.runs]
    assert all(math.isfinite(r["train_loss"]) for r in first.runs)
    start = first.start["loss"]
    assert min(r["train_loss"] for r in first.runs) < start  # the copies train


def test_the_vmin_step_leaves_the_saddle_of_a_deep_linear_net(one_thread):
    """f(W₁, W₂) = ‖X W₁ᵀ W₂ᵀ − Y‖²/m at W = 0: the gradient vanishes, the Hessian has
    negative curvature (from XᵀY); plain descent cannot move, the v_min step goes lower."""
    gen = torch.Generator().manual_seed(0)
    X = torch.randn(40, 3, generator=gen, dtype=torch.float64)
    Y = X @ torch.randn(3, 2, generator=gen, dtype=torch.float64)
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 2, bias=False)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()

    def loss(W):
        W1, W2 = W[:6].reshape(2, 3), W[6:].reshape(2, 2)
        return nn.functional.mse_loss(X @ W1.T @ W2.T, Y)

    truth = torch.linalg.eigvalsh(torch.func.hessian(loss)(torch.zeros(10, dtype=torch.float64)))
    assert truth[0] < 0
    trial = trials.escape(model, nn.functional.mse_loss, (X, Y), optimizer="gd",
                          candidates=["baseline", "vmin_step"], evaluations=30, seeds=1)
    assert trial.start["lambda_min"] == pytest.approx(float(truth[0]), rel=1e-8)
    assert trial.start["vmin"]["loss"] < trial.start["loss"]
    result = {r["candidate"]: r["train_loss"] for r in trial.runs}
    assert result["baseline"] == pytest.approx(trial.start["loss"], rel=1e-12)  # stuck
    assert result["vmin_step"] < trial.start["vmin"]["loss"]


def test_resume_reruns_only_the_missing_runs(one_thread, tmp_path, monkeypatch):
    X, y = classification_data(n=30)
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    options = dict(candidates=["baseline", "adam"], evaluations=6, seeds=2, batch_size=10)
    computed = []
    run = runs.Work.run

    def counted(self, c, s):
        computed.append((c.name, s))
        return run(self, c, s)

    monkeypatch.setattr(runs.Work, "run", counted)

    def interrupt_after_three(done, _total, _note):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        trials.escape(model, cross_entropy, (X, y), out=tmp_path, progress=interrupt_after_three,
                      **options)
    assert len(list((tmp_path / "escape-runs").glob("*.json"))) == 3
    computed.clear()
    resumed = trials.escape(model, cross_entropy, (X, y), out=tmp_path, **options)
    assert computed == [("adam", 1)]
    fresh = trials.escape(model, cross_entropy, (X, y), **options)
    assert [r["train_loss"] for r in resumed.runs] == [r["train_loss"] for r in fresh.runs]
    with pytest.raises(BadInputError, match="runs of other settings"):
        trials.escape(model, cross_entropy, (X, y), out=tmp_path, **{**options, "evaluations": 7})


def test_the_old_curvature_keyword_warns_and_gives_the_same_trial(one_thread):
    X, y = classification_data(n=12)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    options = dict(candidates=["baseline"], evaluations=2, seeds=1, curvature_products=3)
    new = trials.escape(model, cross_entropy, (X, y), curvature_rtol=0.5, **options)
    with pytest.warns(LandscopeDeprecationWarning, match="curvature_rtol="):
        old = trials.escape(model, cross_entropy, (X, y), curvature_tol=0.5, **options)
    budget = {k: v for k, v in options.items() if k != "evaluations"}
    with pytest.warns(LandscopeDeprecationWarning, match="evaluations="):
        older = trials.escape(model, cross_entropy, (X, y), curvature_rtol=0.5, steps=2, **budget)
    assert [{**r, "seconds": 0} for r in older.runs] == [{**r, "seconds": 0} for r in new.runs]
    assert [(r["train_loss"], r["lambda_min"]) for r in old.runs] == [
        (r["train_loss"], r["lambda_min"]) for r in new.runs]
    # the settings keep the key of the files already written, so that their runs still resume
    assert new.settings["curvature_tol"] == 0.5 and new.settings["key"] == old.settings["key"]
    assert "curvature_rtol" not in new.settings


@pytest.mark.parametrize("options, message", [
    ({"candidates": ["no_such_remedy"]}, "unknown candidate 'no_such_remedy'"),
    ({"candidates": ["newton"]}, "left out of remedy trials"),
    ({"evaluations": 0}, "evaluations=0"),
    ({"seeds": 1.5}, "seeds=1.5"),
    ({"candidates": []}, "no candidates"),
])
def test_bad_input_names_the_value(options, message):
    X, y = classification_data(n=10)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    with pytest.raises(BadInputError, match=message):
        trials.escape(model, cross_entropy, (X, y), **options)


def test_optional_extras_are_skipped_with_a_note_when_missing(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    assert "pip install pytorch-optimizer" in trials.available(trials.CHANGES["adahessian"])
    assert trials.available(trials.CHANGES["baseline"]) is None


@pytest.mark.slow
def test_adahessian_runs_with_its_hessian_products_counted_and_lowers_the_loss(one_thread):
    """AdaHessian's Hutchinson product differentiates the gradient again: it fails unless the
    closure kept the gradient's graph; each step costs its gradient and one product."""
    pytest.importorskip("pytorch_optimizer")
    X, y = classification_data(n=40)
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    options = dict(candidates=["adahessian"], evaluations=16, seeds=2, batch_size=20)
    first = trials.escape(model, cross_entropy, (X, y), **options)
    second = trials.escape(model, cross_entropy, (X, y), **options)
    for run in first.runs:
        assert run["steps"] == 8 and run["evaluations"] == 16 and not run["diverged"]
        assert run["train_loss"] < 0.95 * first.start["loss"]
    assert [r["curve"] for r in first.runs] == [r["curve"] for r in second.runs]


@pytest.mark.slow
def test_cli_runs_a_trial_and_exits_2_on_bad_input(one_thread, tmp_path):
    runner = CliRunner()
    args = ["escape", "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:loader",
            "--held-out", f"{FIXTURE}:data", "--evaluations", "8", "--seeds", "2", "--out",
            str(tmp_path)]
    result = runner.invoke(app, [*args, "--candidates", "baseline,adam,vmin_step"])
    assert result.exit_code == 0, result.output
    assert "remedy trials" in result.output
    document = json.loads((tmp_path / "escape.json").read_text())
    assert document["kind"] == "escape"
    assert [row["rank"] for row in document["summary"]] == [1, 2, 3]
    assert len(document["runs"]) == 6
    for name in ("escape-summary.csv", "escape-runs.csv", "escape-curves.png"):
        assert (tmp_path / name).stat().st_size > 0
    again = runner.invoke(app, [*args, "--candidates", "baseline,adam,vmin_step"])
    assert again.exit_code == 0 and json.loads((tmp_path / "escape.json").read_text())[
        "runs"] == document["runs"]  # read back, not rerun
    for bad in (["--candidates", "no_such_remedy"], ["--evaluations", "0"],
                ["--batch-size", "4"]):  # a DataLoader keeps its own batches
        result = runner.invoke(app, [*args, *bad])
        assert result.exit_code == 2, (bad, result.output)

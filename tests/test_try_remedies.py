"""The doctor's prescriptions as remedy trials: every remedy that changes the training maps to
candidates, the rest say why not; `landscope doctor RUN --try-remedies` races them from the
user's checkpoint against the run's own optimiser; the clip candidate clips."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import pytest
import torch
from helpers import classification_data
from torch import nn
from typer.testing import CliRunner

from landscope import escape as trials
from landscope.cli import app
from landscope.doctor.knowledge import TEXT
from landscope.errors import BadInputError
from landscope.monitor import Monitor

FIXTURE = Path(__file__).parent / "fixtures" / "user_net.py"
ARCHITECTURE_WORDS = ("ReLU", "normalisation", "Normalisation", "Residual", "layers", "Dropout")


def test_every_remedy_of_the_doctor_is_tried_or_says_why_not():
    keys = {r.key for text in TEXT.values() for r in text["remedies"]}
    assert keys == set(trials.REMEDY_CANDIDATES)  # none missing, none stale
    for finding, text in TEXT.items():
        for remedy in text["remedies"]:
            what = trials.remedy_candidates(finding, remedy.text)
            assert what == trials.REMEDY_CANDIDATES[remedy.key] != trials.UNMAPPED
            if isinstance(what, str):
                continue
            assert what, (finding, remedy)
            for name in what:
                trials.candidate(name)  # a real candidate
    assert trials.remedy_candidates("saddle", "Try harder.") == trials.UNMAPPED


def test_a_change_has_one_key_whatever_the_finding():
    texts = {(finding, r.key): r.text for finding, text in TEXT.items() for r in text["remedies"]}
    assert len(texts) == sum(len(text["remedies"]) for text in TEXT.values())  # unique per finding
    lower = [finding for finding, key in texts if key == "lower_lr"]
    assert sorted(lower) == ["dead_relus", "lr_too_large", "saturation"]
    assert all("smaller learning rate" in texts[f, "lower_lr"].lower()
               or "lower the learning rate" in texts[f, "lower_lr"].lower() for f in lower)


def test_architecture_changes_are_listed_as_not_tried():
    remedies = [r.text for r in TEXT["vanishing_gradients"]["remedies"]]
    plan = trials.remedy_plan([("vanishing_gradients", remedies)])
    assert plan.candidates == ("baseline", "adam")
    assert [row["remedy"] for row in plan.tried] == [r for r in remedies if r.startswith("Adam")]
    assert len(plan.not_tried) == len(remedies) - 1
    for row in plan.not_tried:
        assert any(word in row["remedy"] for word in ARCHITECTURE_WORDS), row
        assert trials.ARCHITECTURE in row["why"]


def test_the_plan_keeps_each_candidate_once_in_rank_order():
    plan = trials.remedy_plan([
        ("lr_too_large", [r.text for r in TEXT["lr_too_large"]["remedies"]]),
        ("exploding_gradients", [r.text for r in TEXT["exploding_gradients"]["remedies"]])])
    assert plan.candidates == ("baseline", "lr_x0.1", "warmup", "clip", "cosine")
    assert [row["finding"] for row in plan.tried][-2:] == ["exploding_gradients"] * 2


def test_the_recorded_optimiser_is_rebuilt_with_its_settings():
    recipe = trials.recorded_baseline({"name": "AdamW", "lr": 3e-4, "betas": [0.8, 0.99],
                                       "weight_decay": 0.05, "initial_lr": 1e-3})
    opt = recipe.build([torch.zeros(2, requires_grad=True)])
    group = opt.param_groups[0]
    assert type(opt) is torch.optim.AdamW and group["lr"] == 3e-4
    assert group["betas"] == (0.8, 0.99) and group["weight_decay"] == 0.05
    with pytest.raises(BadInputError, match="--optimizer NAME --lr RATE"):
        trials.recorded_baseline({"name": "MyOwnOptimizer", "lr": 0.1})


def test_the_clip_candidate_steps_along_the_clipped_gradient(one_thread):
    X, y = classification_data(n=30)
    X = 10 * X  # a gradient norm well above 1
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3)).double()
    trial = trials.escape(model, nn.functional.cross_entropy, (X, y), optimizer="gd", lr=0.5,
                          candidates=["baseline", "clip"], evaluations=1, seeds=1)
    loss = nn.functional.cross_entropy(model(X), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.cat([g.reshape(-1) for g in grads]).norm()
    assert norm > 2
    with torch.no_grad():
        for p, g in zip(model.parameters(), grads, strict=True):
            p -= 0.5 * g / (norm + 1e-6)  # clip_grad_norm_: g/(‖g‖ + 1e-6)
        truth = float(nn.functional.cross_entropy(model(X), y))
    result = {r["candidate"]: r["train_loss"] for r in trial.runs}
    assert result["clip"] == pytest.approx(truth, rel=1e-12)
    assert result["baseline"] != pytest.approx(truth, rel=1e-3)


@pytest.fixture(scope="module")
def slow_run(tmp_path_factory):
    """The fixture's network trained by full-batch SGD at lr 1e-4 under a Monitor (a far too
    small rate), its weights saved where training stopped."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net_for_remedies", FIXTURE)
    user_net = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(user_net)
    run_dir = tmp_path_factory.mktemp("slow")
    X, y = user_net.data()
    model = user_net.model()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with Monitor(model, optimizer, run_dir, loss_fn=nn.functional.cross_entropy, held=(X, y),
                     every=5, window=50, budget=math.inf) as monitor:
            for _ in range(150):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(X), y)
                loss.backward()
                optimizer.step()
                monitor.step(loss)
    finally:
        torch.set_num_threads(threads)
    torch.save(model.state_dict(), run_dir / "weights.pt")
    return run_dir, model, (X, y)


def test_doctor_tries_its_remedies_against_the_runs_own_optimiser(slow_run, one_thread):
    run_dir, model, (X, y) = slow_run
    runner = CliRunner()
    args = ["doctor", str(run_dir), "--try-remedies", "--model", f"{FIXTURE}:model", "--data",
            f"{FIXTURE}:data", "--evaluations", "8", "--seeds", "1"]
    result = runner.invoke(app, [*args, "--checkpoint", str(run_dir / "weights.pt")])
    assert result.exit_code == 0, result.output
    output = " ".join(result.output.split())
    report, trial = output.index("Learning rate too small"), output.index("remedy trials")
    assert report < output.index("the doctor's remedies as candidates") < trial
    document = json.loads((run_dir / "escape.json").read_text())
    assert (run_dir / "doctor.json").exists() and (run_dir / "escape-curves.png").exists()
    settings = document["settings"]
    assert settings["optimizer"] == "SGD" and settings["lr"] == 1e-4  # what the user ran
    assert settings["optimizer_options"]["momentum"] == 0 and settings["batch_size"] == len(X)
    assert settings["candidates"] == ["baseline", "lr_x10", "lr_x0.1", "adam", "warmup",
                                      "cosine"]
    assert [row["finding"] for row in document["remedies"]["tried"]] == ["lr_too_small"] * 4
    # ground truth: the baseline is the user's SGD continued from the checkpoint on all data
    continued = copy.deepcopy(model)
    optimizer = torch.optim.SGD(continued.parameters(), lr=1e-4)
    for _ in range(8):
        optimizer.zero_grad()
        nn.functional.cross_entropy(continued(X), y).backward()
        optimizer.step()
    with torch.no_grad():
        truth = float(nn.functional.cross_entropy(continued(X), y))
    losses = {r["candidate"]: r["train_loss_mean"] for r in document["summary"]}
    assert losses["baseline"] == pytest.approx(truth, rel=1e-5)
    assert losses["lr_x10"] < losses["baseline"] < losses["lr_x0.1"]  # the rate was too small

    missing = runner.invoke(app, args)
    assert missing.exit_code == 2
    assert "torch.save(model.state_dict()" in " ".join(missing.output.split())
    alone = runner.invoke(app, ["doctor", str(run_dir), "--model", f"{FIXTURE}:model"])
    assert alone.exit_code == 2 and "--try-remedies" in alone.output

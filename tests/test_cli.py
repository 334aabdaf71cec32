"""The landscope command: real runs, result files, and exit codes 0 / 1 / 2."""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from landscope.cli import app
from landscope.render import probe_panel

FIXTURE = str(Path(__file__).parent / "fixtures" / "user_net.py")
runner = CliRunner()


def _probe(tmp_path, *args):
    return runner.invoke(app, ["probe", "--out", str(tmp_path), *args])


def test_user_model_probe_writes_a_versioned_result(tmp_path):
    result = _probe(tmp_path, "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:loader",
                    "--dtype", "float64")
    assert result.exit_code == 0, result.output
    assert "NOT A CRITICAL POINT" in result.output  # an untrained network
    document = json.loads((tmp_path / "result.json").read_text())
    assert document["schema_version"] == 1 and document["kind"] == "probe"
    probe = document["probe"]
    assert probe["kind"] == "not_critical"
    assert probe["objective"]["dtype"] == "float64" and probe["objective"]["mode"] == "eval"
    assert probe["evidence"]["path"] == "exact"


def test_checkpoint_and_parameter_subset(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("user_net", FIXTURE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    net = module.model()
    with torch.no_grad():
        net[2].bias.add_(1.0)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    result = _probe(tmp_path, "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data",
                    "--checkpoint", str(tmp_path / "w.pt"), "--params", "2.*")
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "result.json").read_text())["probe"]
    assert probe["objective"]["parameters"] == ["2.weight", "2.bias"]
    assert probe["objective"]["n"] == 21


@pytest.mark.parametrize("args, message", [
    (["--model", f"{FIXTURE}:model"], "--data is required"),
    (["--model", f"{FIXTURE}:nothing", "--data", "digits"], "has no attribute 'nothing'"),
    (["--model", f"{FIXTURE}:not_a_model", "--data", "digits"], "not a torch.nn.Module"),
    (["--model", "no_such_pkg.mod:f", "--data", "digits"], "cannot import"),
    (["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:wrong_data"], "inputs (40, 3)"),
    (["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data", "--loss",
      f"{FIXTURE}:per_sample_loss"], "reduction='mean'"),
    (["--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:data", "--checkpoint",
      "missing.pt"], "does not exist"),
    (["--checkpoint", "w.pt"], "--checkpoint needs --model"),
])
def test_bad_usage_exits_2_with_a_clear_message(tmp_path, args, message):
    result = _probe(tmp_path, *args)
    assert result.exit_code == 2
    assert message in result.output.replace("\n", " ") or message in str(result.stderr)
    assert not (tmp_path / "result.json").exists()


def test_unknown_option_is_usage_error(tmp_path):
    assert _probe(tmp_path, "--frobnicate").exit_code == 2


def test_nan_loss_exits_1(tmp_path):
    fixture = tmp_path / "nan_net.py"
    fixture.write_text(
        "import torch\n"
        "def model():\n    return torch.nn.Linear(2, 2)\n"
        "def data():\n    X = torch.ones(4, 2); X[1] = float('nan')\n"
        "    return X, torch.zeros(4, dtype=torch.long)\n")
    result = _probe(tmp_path, "--model", f"{fixture}:model", "--data", f"{fixture}:data")
    assert result.exit_code == 1
    assert "nan" in (result.output + str(result.stderr)).lower()
    assert not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_demo_trains_once_and_reuses_the_checkpoint(tmp_path):
    first = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert first.exit_code == 0, first.output
    assert "trained the default MLP" in first.output
    second = runner.invoke(app, ["demo", "--out", str(tmp_path)])
    assert second.exit_code == 0 and "reusing the trained default model" in second.output
    probe = json.loads((tmp_path / "result.json").read_text())["probe"]
    assert probe["evidence"]["path"] == "iterative"
    assert probe["spectrum"]["evidence"]["converged"]
    page = (tmp_path / "report.html").read_text(encoding="utf-8")  # the demo ends with it
    for kind in ("probe", "surface", "race", "doctor"):
        assert f'data-kind="{kind}"' in page, kind


def test_help_lists_every_option():
    result = runner.invoke(app, ["probe", "--help"])
    assert result.exit_code == 0
    for option in ("--model", "--checkpoint", "--data", "--loss", "--dtype", "--params",
                   "--out", "--mode", "--exact"):
        assert option in result.output


@pytest.mark.parametrize("source, option, expected", [
    ("import torch\ndef build():\n    raise ValueError('no such width')\n"
     "def model():\n    return build()\n", "--model",
     "your factory raised: ValueError: no such width (net.py, line 3, in build)"),
    ("import torch\ndef model():\n    return torch.nn.Linear(4, 3)\n"
     "def data():\n    return torch.randn(8, 4), labels\n", "--data",
     "your factory raised: NameError: name 'labels' is not defined (net.py, line 5, in data)"),
    ("import torch\ndef model(:\n    pass\n", "--model",
     "your factory's module raised on import: SyntaxError: invalid syntax (net.py, line 2)"),
])
def test_a_factory_that_raises_is_framed_as_the_users_error(tmp_path, source, option, expected):
    (tmp_path / "net.py").write_text(source)
    model = f"{tmp_path / 'net.py'}:model" if option == "--model" else f"{FIXTURE}:model"
    data = f"{tmp_path / 'net.py'}:data" if option == "--data" else "digits"
    result = _probe(tmp_path, "--model", model, "--data", data)
    assert result.exit_code == 2, result.output
    output = " ".join(result.output.split())
    assert f"error: {option} '" in output and expected in output
    assert "Traceback" not in output and not (tmp_path / "result.json").exists()


@pytest.mark.slow
def test_a_factory_file_may_define_dataclasses_and_be_named_like_a_module(tmp_path):
    """A file run as a module must be registered (dataclasses look their module up), under a
    name of its own: a user's json.py must not replace the json module."""
    (tmp_path / "json.py").write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\nimport torch\n"
        "@dataclass\nclass Width:\n    hidden: int = 8\n"
        "def model():\n    return torch.nn.Sequential(torch.nn.Linear(64, Width().hidden), "
        "torch.nn.Tanh(), torch.nn.Linear(Width().hidden, 10))\n")
    result = _probe(tmp_path, "--model", f"{tmp_path / 'json.py'}:model", "--data", "digits")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "result.json").read_text())["probe"]["kind"]


def test_k_near_n_writes_the_result_and_prints_it(tmp_path, monkeypatch):
    import landscope.cli.probe as command

    written_first = []

    def panel(*args):
        written_first.append((tmp_path / "result.json").exists())
        return probe_panel(*args)

    monkeypatch.setattr(command, "probe_panel", panel)
    (tmp_path / "tiny.py").write_text(
        "import torch\n"
        "def model():\n    torch.manual_seed(0)\n    return torch.nn.Linear(3, 2)\n"
        "def data():\n    g = torch.Generator().manual_seed(0)\n"
        "    return torch.randn(20, 3, generator=g), torch.randint(0, 2, (20,), generator=g)\n")
    tiny = f"{tmp_path / 'tiny.py'}"
    result = _probe(tmp_path, "--model", f"{tiny}:model", "--data", f"{tiny}:data", "--k", "4",
                    "--iterative")  # n = 8 and 2k ≥ n: the spectrum comes from the dense Hessian
    assert result.exit_code == 0, result.output
    probe = json.loads((tmp_path / "result.json").read_text())["probe"]
    assert probe["objective"]["n"] == 8 and probe["evidence"]["spectrum"]["method"] == "exact"
    text = " ".join(result.output.replace("│", " ").split())
    assert "eigenpairs: numpy.linalg.eigh (float64) on the dense Hessian (8 products)" in text
    assert written_first == [True]  # the result is on disk before anything is printed


@pytest.mark.parametrize("args, message", [
    (["--optimizers", ","], "--optimizers ',' names no optimiser"),
    (["--functions", " , "], "--functions ' , ' names no function"),
])
def test_race_with_empty_name_lists_exits_2(tmp_path, args, message):
    result = runner.invoke(app, ["race", "--out", str(tmp_path), *args])
    assert result.exit_code == 2, result.output
    assert message in " ".join(result.output.split())


def test_probe_prints_each_stage_and_ctrl_c_keeps_the_best_answer(tmp_path, monkeypatch):
    import landscope.cli.probe as command

    def interrupt_in_stage_two(done, total, note=""):
        if " extremes" in note:
            raise KeyboardInterrupt

    @contextmanager
    def products_bar(label):
        yield interrupt_in_stage_two

    monkeypatch.setattr(command, "products_bar", products_bar)
    result = _probe(tmp_path, "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:loader",
                    "--dtype", "float64", "--samples", "8", "--subsets", "3")
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert "plan: one gradient over" in text and "stage 1/3: first verdict" in text
    assert "PARTIAL: best verdict after" in text
    document = json.loads((tmp_path / "result.json").read_text())
    assert document["partial"] is True and "probe" not in document
    first = document["anytime"]["stages"][0]
    assert first["name"] == "subsample" and first["samples"] == 8
    lam = first["estimates"]["lambda_min"]
    assert lam["subsampled"] is True and lam["confidence"] == 0.95
    assert lam["interval"][0] <= lam["value"] <= lam["interval"][1]


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message without CUDA")
def test_device_is_checked_before_any_work(tmp_path):
    result = _probe(tmp_path, "--device", "cuda")
    assert result.exit_code == 2
    assert "no CUDA device is available" in result.output and "--device cpu" in result.output
    assert not list(tmp_path.iterdir())  # the default model was not even trained
    result = _probe(tmp_path, "--device", "gpu0")
    assert result.exit_code == 2 and "not a device name" in result.output


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_probe_on_cuda_end_to_end(tmp_path):
    result = _probe(tmp_path, "--model", f"{FIXTURE}:model", "--data", f"{FIXTURE}:loader",
                    "--device", "cuda", "--time-budget", "60")
    assert result.exit_code == 0, result.output
    document = json.loads((tmp_path / "result.json").read_text())
    assert document["anytime"]["plan"]["cost"]["device"].startswith("cuda")


def test_requests_default_to_what_their_commands_default_to():
    """The demo fills requests by their defaults: each must be its command's default, and every
    field of a command's own request must be one of its options (else it is silently dropped)."""
    import inspect
    from dataclasses import fields

    from landscope.cli import _common, escape, probe, race, surface

    for command, own in ((probe.probe, probe.ProbeRequest), (surface.surface,
                         surface.SurfaceRequest), (race.race, race.RaceRequest),
                         (escape.escape, escape.EscapeRequest)):
        options = inspect.signature(command).parameters
        assert {f.name for f in fields(own)} <= set(options), command.__name__
        for kind in (own, _common.ModelRequest):
            for field in fields(kind):
                if field.name in options:
                    default = options[field.name].default
                    assert default == field.default, (command.__name__, field.name)


@pytest.mark.parametrize("command, old, new", [
    ("probe", "--steps", "--lanczos-steps"),
    ("surface", "--steps", "--resolution"),
    ("race", "--tol", "--global-rtol"),
    ("escape", "--steps", "--evaluations"),
    ("doctor", "--steps", "--evaluations"),
])
def test_an_option_given_under_its_old_and_new_names_is_refused(tmp_path, command, old, new):
    value = "0.5" if old == "--tol" else "7"
    args = [command, *(["run-dir"] if command == "doctor" else []), old, value, new, value,
            "--out", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = " ".join(result.output.replace("│", " ").split())
    assert f"{old} is the old name of {new}; give {new} only" in text
    assert not any(tmp_path.iterdir())  # refused before any work

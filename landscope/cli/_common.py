"""What every landscope command shares: the typer app, consoles, the options that several
commands take (declared once, as typed aliases), the model request they fill, loaders, the default
model, and the error-to-exit-code guard (0 done, 1 the work failed, 2 bad usage or bad input)."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import traceback
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Annotated, Literal

import torch
import typer
from rich.console import Console
from rich.markup import escape

from landscope import default, distributed, io
from landscope._deprecated import rename_message
from landscope.errors import BadInputError, CheckpointError, LandscopeError
from landscope.functional import MODES
from landscope.losses import MODEL_LOSS
from landscope.objective import Objective
from landscope.render.progress import bar

app = typer.Typer(
    help="landscope: where did training stop, what does the loss landscape look like around "
         "that point, and what gets you out.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=False)
errors = Console(stderr=True)

LOSSES = {
    "cross_entropy": torch.nn.functional.cross_entropy,
    "mse": torch.nn.functional.mse_loss,
    "model": MODEL_LOSS,  # the loss the model returns itself (Hugging Face: .loss)
}


OUT = Path("landscope-out")
"""Where results go unless --out says otherwise."""

ModelOption = Annotated[str | None, typer.Option(
    help="Your network: 'pkg.module:factory' or 'file.py:factory', a function returning an "
         "nn.Module. Default: the built-in MLP, trained on the digits here (with its training "
         "path, reused on the next run).")]
CheckpointOption = Annotated[Path | None, typer.Option(
    help="Weights for --model (a state_dict saved with torch.save); loaded with "
         "weights_only=True.")]
DataOption = Annotated[str | None, typer.Option(
    help="'pkg.module:factory' returning (X, y) tensors or a DataLoader (shuffle=False), or "
         "'digits' (scikit-learn's bundled digits).")]
HeldOutOption = Annotated[str | None, typer.Option(
    "--held-out", help="Held-out data, as --data: its loss at the end of every run.")]
LossOption = Annotated[str, typer.Option(
    help="cross_entropy, mse, model (its own loss), or 'pkg.module:fn' taking (output, target) "
         "and returning the batch mean.")]
DTYPES = {"float32": torch.float32, "float64": torch.float64}

DTypeOption = Annotated[Literal[tuple(DTYPES)] | None, typer.Option(
    help="Analyse in this dtype (default: the model's).")]
ParamsOption = Annotated[str | None, typer.Option(
    help="Only these parameters, e.g. 'net.2.*' (comma-separated names or patterns); the rest "
         "stay fixed.")]
ModeOption = Annotated[Literal[MODES], typer.Option(
    help="eval: BatchNorm running statistics, no dropout. train: batch statistics on fixed "
         "batches.")]
ChunkOption = Annotated[int | None, typer.Option(
    "--batch-size", min=1, help="Evaluate (X, y) data in chunks of this many samples.")]
SeedOption = Annotated[int, typer.Option(
    help="Seed of everything random: the same seed gives the same result.")]
DeviceOption = Annotated[str | None, typer.Option(
    help="Analyse on this device (cpu, cuda, cuda:1; default: the model's). The data is moved "
         "there once.")]
OutOption = Annotated[Path, typer.Option(
    help="Directory for the results; a rerun finds there what it can reuse.")]
BudgetOption = Annotated[int, typer.Option(
    "--evaluations", help="Budget per run, in gradient evaluations (one mini-batch forward and "
                          "backward; a Hessian-vector product counts one).")]
OldBudgetOption = Annotated[int | None, typer.Option(
    "--steps", hidden=True, help="The old name of --evaluations.")]
SeedsOption = Annotated[int, typer.Option(
    help="Runs per candidate, each with its own data order.")]


@dataclass(frozen=True)
class ModelRequest:
    """What the model options ask for: the network (None: the default MLP) at its checkpoint,
    the data and the loss, and how to analyse them (dtype, parameters, mode, chunk size, seed,
    device). Values as the options of the same names take them."""

    model: str | None = None
    checkpoint: Path | None = None
    data: str | None = None
    loss: str = "cross_entropy"
    dtype: str | None = None
    params: str | None = None
    mode: str = "eval"
    batch_size: int | None = None
    seed: int = 0
    device: str | None = None


def _request(kind, options: dict):
    """A ``kind`` dataclass from a command's options (its ``locals()``): each field from the
    option of the same name."""
    return kind(**{f.name: options[f.name] for f in fields(kind) if f.name in options})


def _load_data(spec: str, dtype):
    if spec == "digits":
        return default.digits(dtype)
    return _call_factory(spec, "--data")


def _call_factory(spec: str, option: str):
    """Load the user's factory and call it; what it raises is framed as the user's error."""
    factory = _load_factory(spec, option)
    try:
        return factory()
    except Exception as error:
        code = getattr(factory, "__code__", None)
        raise BadInputError(f"{option} {spec!r}: your factory raised: {type(error).__name__}: "
                            f"{error} ({_where(error, code and code.co_filename)})") from error


def _load_factory(spec: str, option: str):
    """'pkg.module:name' or 'path/file.py:name' → the named object."""
    if ":" not in spec:
        raise BadInputError(f"{option} {spec!r}: expected 'pkg.module:name' or 'file.py:name'")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            # registered (dataclasses look their module up in sys.modules) under a name of
            # our own, so that a user's data.py cannot shadow an installed module
            private = f"_landscope_user_{Path(where).stem}"
            location = importlib.util.spec_from_file_location(private, where)
            if location is None or not Path(where).is_file():
                raise FileNotFoundError(where)
            module = importlib.util.module_from_spec(location)
            sys.modules[private] = module
            location.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except (ImportError, FileNotFoundError) as error:
        raise BadInputError(f"{option} {spec!r}: cannot import {where!r} ({error})") from error
    except Exception as error:  # the file's own code failed: a SyntaxError, a NameError, ...
        own = where if where.endswith(".py") else None
        raise BadInputError(f"{option} {spec!r}: your factory's module raised on import: "
                            f"{type(error).__name__}: {_message(error)} "
                            f"({_where(error, own)})") from error
    if not hasattr(module, name):
        raise BadInputError(f"{option} {spec!r}: {where!r} has no attribute {name!r}")
    return getattr(module, name)


def _message(error: Exception) -> str:
    return error.msg if isinstance(error, SyntaxError) else str(error)


def _where(error: Exception, filename: str | None) -> str:
    """'file.py, line 7, in model': where ``error`` arose in ``filename`` (else innermost)."""
    if isinstance(error, SyntaxError) and error.filename:
        return f"{Path(error.filename).name}, line {error.lineno}"
    frames = traceback.extract_tb(error.__traceback__)
    own = [f for f in frames if filename and Path(f.filename).resolve() == Path(filename).resolve()]
    frame = (own or frames)[-1]
    return f"{Path(frame.filename).name}, line {frame.lineno}, in {frame.name}"


REPORT_HELP = ("Then write OUT/report.html: every landscope result in OUT on one "
               "self-contained page (as landscope report OUT does).")
ReportOption = Annotated[bool, typer.Option("--report", help=REPORT_HELP)]


def _publish_report(directory: Path) -> None:
    """Write the report of ``directory`` (:func:`landscope.report.write_report`), say where."""
    from landscope.report import write_report

    with console.status("writing the report"):
        path = write_report(directory)
    console.print(f"report: {path}")


def _guard(work, report: Path | None = None) -> None:
    """Run ``work``, turning errors into messages and exit codes (2 bad input, 1 failure); on
    Ctrl-C, say which complete files were written before it (no partial file is ever left).
    ``report``: a directory whose report is written once the work is done (``--report``).

    Under ``torchrun`` only rank 0 prints; another rank prints only an error of its own (one
    that every rank shares is printed once, by rank 0), and every rank leaves the process group
    at the end."""
    with io.recording() as written, distributed.quiet_unless_main():
        try:
            work()
            if report is not None:
                _publish_report(report)
        except (BadInputError, CheckpointError) as error:
            _report(f"[bold red]error:[/] {escape(str(error))}", error)
            raise typer.Exit(2) from None
        except LandscopeError as error:
            _report(f"[bold red]failed:[/] {escape(str(error))}", error)
            raise typer.Exit(1) from None
        except KeyboardInterrupt as stop:
            kept = [path for path in dict.fromkeys(written) if path.exists()]
            if isinstance(stop, distributed.Stopped):
                _report("stopped by the launcher (SIGTERM: another rank failed, or the job "
                        "was cancelled); see the first rank's error above.", stop)
            if kept:
                _report("interrupted: kept these complete files, written before the "
                        "interrupt: " + escape(", ".join(map(str, kept))) + ". Nothing was left "
                        "half-written; run the same command again to resume.")
            else:
                _report("interrupted: no file was written and nothing was left "
                        "half-written; run the same command again to start over.")
            raise typer.Exit(130) from None
        finally:
            distributed.stop()


def _report(message: str, error: Exception | None = None) -> None:
    """Print to stderr: on rank 0, or on another rank when the error is its own (not one
    relayed from another rank, which rank 0 prints)."""
    if distributed.launch_rank() == 0:
        errors.print(message, soft_wrap=True)
    elif error is not None and not str(error).startswith("on rank "):
        errors.print(f"rank {distributed.launch_rank()}: {message}", soft_wrap=True)


def _default_trained(out: Path):
    """The default MLP trained on the digits, and θ after every epoch (its training path):
    :func:`landscope.default.trained` in ``out``, with a bar while it trains and a line saying
    whether it trained or reused them (a rerun of probe, surface or demo reuses them)."""
    cache = default.path_file(out)
    if cache.exists():
        console.print(f"reusing the trained default model in {cache}")
        return default.trained(out)
    with bar("training the default MLP on the digits", "epochs", console) as progress:
        trained = default.trained(out, progress=progress)
    console.print(f"trained the default MLP 64-32-10 (tanh) for {default.EPOCHS} epochs of "
                  f"Adam; weights and training path in {out}")
    return trained


def products_bar(label: str):
    """A transient line counting Hessian-vector products (:func:`landscope.render.progress.bar`)."""
    return bar(label, "products", console)


def old_option(context: typer.Context, old_value, old: str, new_value, new: str):
    """The value of an option given under its old name (kept for one release, with a warning on
    stderr), else the new option's value. Both names on one command line are refused (exit 2):
    neither value could be said to win."""
    if old_value is None:
        return new_value
    new_name = new.removeprefix("--").replace("-", "_")
    if context.get_parameter_source(new_name).name == "COMMANDLINE":
        raise typer.BadParameter(f"{old} is the old name of {new}; give {new} only",
                                 param_hint=f"'{old}' and '{new}'")
    errors.print(f"[yellow]warning:[/] {rename_message(old, new)}")
    return old_value


def _objective(request: ModelRequest, out: Path, shard: str = "split"):
    """The Objective the request describes, and the default model's training path (None for
    the user's model). ``shard``: what each rank keeps under torchrun
    (:meth:`Objective.from_model`)."""
    dtype = None if request.dtype is None else DTYPES[request.dtype]
    device = _device(request.device)  # before any work
    if distributed.launched():  # under torchrun: each rank keeps its part of the data
        distributed.start(device)
    net, data, loss_fn, path = _model_data_loss(request, out)
    obj = Objective.from_model(net, loss_fn, data, params=request.params, mode=request.mode,
                               dtype=dtype, batch_size=request.batch_size, seed=request.seed,
                               device=device, shard=shard)
    return obj, path


def _model_data_loss(request: ModelRequest, out: Path):
    """The network (at its checkpoint), the data and the loss the request names, and the
    default model's training path. No ``--model``: the built-in MLP trained on the digits
    (path: θ after every epoch). Otherwise the user's factory, checkpoint and data (path None)."""
    if request.model is None:
        if request.checkpoint is not None:
            raise BadInputError("--checkpoint needs --model: the checkpoint's architecture")
        net, path = _default_trained(out)
        data = _load_data(request.data or "digits", torch.float32)
    else:
        if request.data is None:
            raise BadInputError("--data is required with --model (or use --data digits)")
        net = _call_factory(request.model, "--model")
        if not isinstance(net, torch.nn.Module):
            raise BadInputError(f"--model {request.model} returned a {type(net).__name__}, "
                                "not a torch.nn.Module")
        if request.checkpoint is not None:
            io.load_into(net, request.checkpoint)
        data, path = _load_data(request.data, next(net.parameters()).dtype), None
    loss_fn = LOSSES.get(request.loss) or _load_factory(request.loss, "--loss")
    return net, data, loss_fn, path


def _held_out(spec: str | None, net: torch.nn.Module):
    """The --held-out data in the network's dtype, or None."""
    return None if spec is None else _load_data(spec, next(net.parameters()).dtype)


def _device(name: str | None) -> torch.device | None:
    """The analysis device named by --device (default: the model's), checked before any work."""
    if name is None:
        return None
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BadInputError(f"--device {name!r} is not a device name; use cpu, cuda or "
                            "cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BadInputError(f"--device {name}: no CUDA device is available here "
                            "(torch.cuda.is_available() is False); use --device cpu")
    return device

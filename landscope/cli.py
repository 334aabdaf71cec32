"""The ``landscope`` command. Exit codes: 0 done, 1 the work failed, 2 bad usage or bad input."""

from __future__ import annotations

import importlib
import importlib.util
import sys
import time
from enum import Enum
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from landscope import default, io
from landscope.critical import probe as run_probe
from landscope.errors import BadInputError, CheckpointError, LandscopeError
from landscope.objective import Objective
from landscope.render import probe_panel

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
}


class DType(str, Enum):
    float32 = "float32"
    float64 = "float64"


class Mode(str, Enum):
    eval = "eval"
    train = "train"


@app.command()
def probe(
    model: str = typer.Option(None, help="Your network: 'pkg.module:factory' or "
                              "'file.py:factory', a function returning an nn.Module. "
                              "Default: the built-in MLP, trained on the digits here."),
    checkpoint: Path = typer.Option(None, help="Weights for --model (a state_dict saved with "
                                    "torch.save); loaded with weights_only=True."),
    data: str = typer.Option(None, help="'pkg.module:factory' returning (X, y) tensors or a "
                             "DataLoader, or 'digits' (scikit-learn's bundled digits)."),
    loss: str = typer.Option("cross_entropy", help="cross_entropy, mse, or 'pkg.module:fn' "
                             "taking (output, target) and returning the batch mean."),
    dtype: DType = typer.Option(None, help="Analyse in this dtype (default: the model's)."),
    params: str = typer.Option(None, help="Only these parameters, e.g. 'net.2.*' "
                               "(comma-separated names or patterns); the rest stay fixed."),
    mode: Mode = typer.Option(Mode.eval, help="eval: BatchNorm running statistics, no "
                              "dropout. train: batch statistics on fixed batches."),
    k: int = typer.Option(5, min=1, help="Eigenpairs computed at each end of the spectrum."),
    exact: bool = typer.Option(None, "--exact/--iterative", help="Force the dense Hessian or "
                               "the Lanczos path (default: dense for n ≤ 1024)."),
    batch_size: int = typer.Option(None, min=1, help="Evaluate (X, y) data in chunks."),
    seed: int = typer.Option(0, help="Seed of the random start vectors and probes."),
    out: Path = typer.Option(Path("landscope-out"), help="Directory for result.json (and "
                             "the default model's checkpoint, reused on the next run)."),
):
    """Classify the point training stopped at: minimum, saddle (and its index), degenerate,
    or not critical at all, with the Hessian spectrum and the evidence behind the verdict."""
    _guard(lambda: _probe(model, checkpoint, data, loss, dtype, params, mode, k, exact,
                          batch_size, seed, out))


@app.command()
def demo(
    out: Path = typer.Option(Path("landscope-out"), help="Directory for the results."),
):
    """The main job on the built-in default: train the MLP on the digits and probe where training
    stopped; draw the landscape around it with the training path; race optimisers away from a
    saddle; diagnose the seed's 10-layer sigmoid network."""

    def work():
        _probe(None, None, None, "cross_entropy", None, None, Mode.eval, 5, None, None, 0, out)
        console.rule("surface: the plane of the training path (PCA), with the path drawn on it")
        _surface(kind="pca", steps=31, out=out)
        console.rule("race: who escapes the saddle of x² − y²?")
        _race(functions="saddle", starts=8, steps=150, strategies=False,
              optimizers="gd,momentum,adam,newton,saddle_free_newton,perturbed_gd", out=out)
        console.rule("doctor: a 10-layer sigmoid MLP that does not learn")
        _doctor(None, "vanishing", False, False, out, 0)

    _guard(work)


# ---------------------------------------------------------------------- implementation
def _probe(model_spec, checkpoint, data_spec, loss_spec, dtype, params, mode, k, exact,
           batch_size, seed, out: Path):
    torch_dtype = {None: None, DType.float32: torch.float32, DType.float64: torch.float64}[dtype]
    if model_spec is None:
        if checkpoint is not None:
            raise BadInputError("--checkpoint needs --model: the checkpoint's architecture")
        net, _ = _default_trained(out)
        data = _load_data(data_spec or "digits", torch.float32)
    else:
        if data_spec is None:
            raise BadInputError("--data is required with --model (or use --data digits)")
        net = _load_factory(model_spec, "--model")()
        if not isinstance(net, torch.nn.Module):
            raise BadInputError(f"--model {model_spec} returned a {type(net).__name__}, "
                                "not a torch.nn.Module")
        if checkpoint is not None:
            io.load_into(net, checkpoint)
        data = _load_data(data_spec, next(net.parameters()).dtype)
    loss_fn = LOSSES.get(loss_spec) or _load_factory(loss_spec, "--loss")
    obj = Objective.from_model(net, loss_fn, data, params=params, mode=mode.value,
                               dtype=torch_dtype, batch_size=batch_size, seed=seed)
    start = time.perf_counter()
    with _ProductsProgress("probing the Hessian") as report:
        result = run_probe(obj, k=k, exact=exact, seed=seed, progress=report)
    seconds = time.perf_counter() - start
    console.print(probe_panel(result, seconds))
    path = io.write_result(out, "probe", {"probe": result.to_dict(), "seconds": seconds,
                                          "command": " ".join(sys.argv)})
    console.print(f"written: {path}")


def _load_data(spec: str, dtype):
    if spec == "digits":
        return default.digits(dtype)
    return _load_factory(spec, "--data")()


def _load_factory(spec: str, option: str):
    """'pkg.module:name' or 'path/file.py:name' → the named object."""
    if ":" not in spec:
        raise BadInputError(f"{option} {spec!r}: expected 'pkg.module:name' or 'file.py:name'")
    where, name = spec.rsplit(":", 1)
    try:
        if where.endswith(".py"):
            location = importlib.util.spec_from_file_location(Path(where).stem, where)
            if location is None or not Path(where).is_file():
                raise FileNotFoundError(where)
            module = importlib.util.module_from_spec(location)
            location.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
    except (ImportError, FileNotFoundError) as error:
        raise BadInputError(f"{option} {spec!r}: cannot import {where!r} ({error})") from error
    if not hasattr(module, name):
        raise BadInputError(f"{option} {spec!r}: {where!r} has no attribute {name!r}")
    return getattr(module, name)


class _ProductsProgress:
    """A spinner line that counts Hessian-vector products and shows the best residual."""

    def __init__(self, label: str):
        self.progress = Progress(TextColumn(label), TextColumn("{task.fields[status]}"),
                                 TimeElapsedColumn(), console=console, transient=True)

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("work", total=None, status="")
        return self.report

    def report(self, products: int, residual: float) -> None:
        self.progress.update(self.task, status=f"{products} products, residual {residual:.1e}")

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)


def _guard(work) -> None:
    """Run ``work``, turning errors into messages and exit codes (2 bad input, 1 failure)."""
    try:
        work()
    except (BadInputError, CheckpointError) as error:
        errors.print(f"[bold red]error:[/] {error}")
        raise typer.Exit(2) from None
    except LandscopeError as error:
        errors.print(f"[bold red]failed:[/] {error}")
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        errors.print("interrupted: no result was written (checkpoints already saved are kept; "
                     "run the same command again to resume)")
        raise typer.Exit(130) from None


# ====================================================================== surface and plot (issue 3)
# A self-contained block: `landscope surface` computes a loss surface (full or budgeted grid) with
# its pictures; `landscope plot FILE` redraws a saved one without recomputing it.
from typing import Annotated  # noqa: E402


class SurfaceDirections(str, Enum):
    random = "random"
    hessian = "hessian"
    pca = "pca"
    gradient = "gradient"


class SurfaceNorm(str, Enum):
    filter = "filter"
    layer = "layer"
    none = "none"


class SurfaceBN(str, Enum):
    eval = "eval"
    recompute = "recompute"


@app.command()
def surface(
    model: Annotated[str, typer.Option(help="Your network: 'pkg.module:factory' or "
                                       "'file.py:factory'. Default: the built-in MLP trained on "
                                       "the digits, with its recorded training path.")] = None,
    checkpoint: Annotated[Path, typer.Option(help="Weights for --model (a state_dict), loaded "
                                             "with weights_only=True.")] = None,
    data: Annotated[str, typer.Option(help="'pkg.module:factory' returning (X, y) or a "
                                      "DataLoader, or 'digits'.")] = None,
    loss: Annotated[str, typer.Option(help="cross_entropy, mse, or 'pkg.module:fn'.")] =
        "cross_entropy",
    dtype: Annotated[DType, typer.Option(help="Analyse in this dtype (default: the model's).")] =
        None,
    params: Annotated[str, typer.Option(help="Only move these parameters ('net.2.*'); the rest "
                                        "stay fixed.")] = None,
    mode: Annotated[Mode, typer.Option(help="eval (BatchNorm running statistics, no dropout) or "
                                       "train (batch statistics on fixed batches).")] = Mode.eval,
    directions: Annotated[SurfaceDirections, typer.Option(
        help="random: seeded Gaussian plane; hessian: eigenvectors of λ_max and λ_min (a saddle "
             "shows as a saddle); pca: principal directions of the training path; gradient: the "
             "line along −∇L with Taylor models (1-D).")] = SurfaceDirections.random,
    norm: Annotated[SurfaceNorm, typer.Option(help="Normalisation of random directions: filter "
                                              "(Li et al.), layer, none.")] = SurfaceNorm.filter,
    biases: Annotated[str, typer.Option(help="One-axis parameters (biases, BatchNorm) under "
                                        "filter/layer normalisation: zero or layer.")] = "zero",
    dims: Annotated[int, typer.Option(min=1, max=2, help="1 (a line) or 2 (a plane).")] = 2,
    span: Annotated[float, typer.Option(help="Half-width of the grid in direction units "
                                        "(default: 1, or fitted to the path for pca, or "
                                        "(−t*, 2t*) for gradient).")] = None,
    steps: Annotated[int, typer.Option(min=3, help="Points per axis.")] = 41,
    seed: Annotated[int, typer.Option(help="Seed of the random directions.")] = 0,
    trajectory: Annotated[str, typer.Option(help="Training path to draw: a .pt file holding a "
                                            "(T, n) tensor, or a glob of state-dict checkpoints "
                                            "('ckpt/*.pt', sorted by name).")] = None,
    bn: Annotated[SurfaceBN, typer.Option(help="BatchNorm at each point: eval (running "
                                          "statistics) or recompute (over the data, per point)."
                                          )] = SurfaceBN.eval,
    budget: Annotated[bool, typer.Option("--budget/--full", help="Budgeted view: adaptive "
                                         "refinement (and --samples) for at most --budget-"
                                         "fraction of the full grid's cost, with the error "
                                         "shown.")] = False,
    budget_fraction: Annotated[float, typer.Option(help="Cost cap of --budget, as a fraction "
                                                   "of the full grid.")] = 0.25,
    samples: Annotated[float, typer.Option(help="With --budget: data per point, a fraction "
                                           "(0.25) or a count (512); default all.")] = None,
    spread: Annotated[int, typer.Option(min=0, help="Fidelity check: redo an 11×11 picture "
                                        "with this many other seeds and report the spread "
                                        "(random directions).")] = 0,
    log: Annotated[bool, typer.Option(help="Log colour scale.")] = False,
    image_format: Annotated[str, typer.Option("--format", help="png or svg.")] = "png",
    batch_size: Annotated[int, typer.Option(min=1, help="Evaluate (X, y) data in chunks.")] =
        None,
    out: Annotated[Path, typer.Option(help="Directory for surface.npz, surface.json, the "
                                      "pictures and the resumable partial grid.")] =
        Path("landscope-out"),
):
    """Compute the loss surface around the point training stopped at, and draw it: contour with
    the training path and its fidelity, 3-D view, interactive HTML. Ctrl-C keeps what is done;
    rerunning the same command resumes."""
    _guard(lambda: _surface(model=model, checkpoint=checkpoint, data_spec=data, loss_spec=loss,
                            dtype=dtype, params=params, mode=mode, kind=directions.value,
                            norm=norm.value, biases=biases, dims=dims, span=span, steps=steps,
                            seed=seed, trajectory=trajectory, bn=bn.value, budget=budget,
                            budget_fraction=budget_fraction, samples=samples, spread=spread,
                            log=log, image_format=image_format, batch_size=batch_size, out=out))


@app.command()
def plot(
    file: Annotated[Path, typer.Argument(help="A surface .npz written by `landscope surface`.")],
    out: Annotated[Path, typer.Option(help="Directory for the pictures (default: the file's)."
                                      )] = None,
    log: Annotated[bool, typer.Option(help="Log colour scale.")] = False,
    image_format: Annotated[str, typer.Option("--format", help="png or svg.")] = "png",
    interactive: Annotated[bool, typer.Option(help="Also write the plotly HTML page.")] = True,
):
    """Draw a saved surface again (contour, 3-D, HTML) without recomputing anything."""
    def work():
        from landscope.plot import render
        from landscope.surface import Surface

        surf = Surface.load(file)
        paths = render(surf, out or file.parent, name=file.stem, formats=(_format(image_format),),
                       log=log, interactive=interactive)
        for path in paths:
            console.print(f"written: {path}")

    _guard(work)


def _surface(*, model=None, checkpoint=None, data_spec=None, loss_spec="cross_entropy",
             dtype=None, params=None, mode=Mode.eval, kind="random", norm="filter",
             biases="zero", dims=2, span=None, steps=41, seed=0, trajectory=None, bn="eval",
             budget=False, budget_fraction=0.25, samples=None, spread=0, log=False,
             image_format="png", batch_size=None, out=Path("landscope-out")):
    """The work of `landscope surface`; `landscope demo` calls it with directions="pca"."""
    import matplotlib

    matplotlib.use("Agg")
    from landscope import directions as lsd
    from landscope.adaptive import adaptive_surface
    from landscope.plot import render, taylor_plot
    from landscope.surface import seed_spread
    from landscope.surface import surface as grid_surface
    from landscope.taylor import taylor

    fmt = _format(image_format)
    torch_dtype = {None: None, DType.float32: torch.float32, DType.float64: torch.float64}[dtype]
    if model is None:
        if checkpoint is not None:
            raise BadInputError("--checkpoint needs --model: the checkpoint's architecture")
        net, path = _default_trained(out)
        data = _load_data(data_spec or "digits", torch.float32)
    else:
        if data_spec is None:
            raise BadInputError("--data is required with --model (or use --data digits)")
        net = _load_factory(model, "--model")()
        if not isinstance(net, torch.nn.Module):
            raise BadInputError(f"--model {model} returned a {type(net).__name__}")
        if checkpoint is not None:
            io.load_into(net, checkpoint)
        data, path = _load_data(data_spec, next(net.parameters()).dtype), None
    loss_fn = LOSSES.get(loss_spec) or _load_factory(loss_spec, "--loss")
    obj = Objective.from_model(net, loss_fn, data, params=params, mode=mode.value,
                               dtype=torch_dtype, batch_size=batch_size, seed=seed)
    if trajectory is not None:
        path = _load_trajectory(trajectory)
    path = None if path is None else lsd.trajectory(obj, path)
    if kind == "random":
        frame = lsd.random(obj, dims, seed=seed, norm=norm, biases=biases)
    elif kind == "hessian":
        with _ProductsProgress("Hessian eigenvectors") as report:
            frame = lsd.hessian(obj, seed=seed, progress=report)
        frame = frame if dims == 2 else lsd.Frame(frame.directions[1:], frame.centre)
    elif kind == "pca":
        if path is None:
            raise BadInputError("--directions pca needs a training path: --trajectory")
        frame = lsd.pca(path, dims)
    else:
        if dims != 1:
            raise BadInputError("--directions gradient draws a line: use --dims 1")
        frame = lsd.gradient(obj)
    start = time.perf_counter()
    partial = out / "surface.partial.npz"
    common = {"span": span, "steps": steps, "trajectory": path if dims == 2 else None,
              "checkpoint": partial, "progress": True}
    if kind == "gradient" and span is None:
        profile = taylor(obj, frame, steps=steps)
        common["span"] = (float(profile.t[0]), float(profile.t[-1]))
    if budget:
        if bn != "eval":
            raise BadInputError("--bn recompute is not available with --budget; use --full")
        surf = adaptive_surface(obj, frame, budget=budget_fraction, samples=samples, **common)
    else:
        surf = grid_surface(obj, frame, bn=bn, **common)
    if spread:
        if kind != "random":
            raise BadInputError("--spread compares seeds of random directions; use it with "
                                "--directions random")
        surf.fidelity["seed_spread"] = seed_spread(
            obj, seeds=tuple(range(seed + 1, seed + 1 + spread)), span=span or 1.0, norm=norm,
            biases=biases, count=dims, bn=bn)
    seconds = time.perf_counter() - start
    files = [surf.save(out / "surface.npz")]
    partial.unlink(missing_ok=True)
    files += render(surf, out, formats=(fmt,), log=log)
    if dims == 1:
        profile = taylor(obj, frame, span=(float(surf.axes[0][0]), float(surf.axes[0][-1])),
                         steps=steps)
        files.append(out / f"taylor.{fmt}")
        taylor_plot(profile).savefig(files[-1], dpi=110)
        surf.fidelity["taylor"] = {k: v for k, v in profile.to_dict().items()
                                   if k not in ("t", "real", "first", "second")}
    summary = surf.summary()
    _surface_table(summary, surf, seconds)
    result = io.write_result(out, "surface", {"surface": summary, "meta": surf.meta,
                                              "files": [str(f) for f in files],
                                              "seconds": seconds, "command": " ".join(sys.argv)},
                             name="surface.json")
    for f in [*files, result]:
        console.print(f"written: {f}")


def _default_trained(out: Path):
    """The default MLP trained on the digits, and θ after every epoch (its training path).

    Both are kept in ``out``, so a rerun (of probe, surface or demo) reuses them.
    """
    net = default.default_model()
    stem = f"default-mlp-64-{default.HIDDEN}-10-tanh-e{default.EPOCHS}"
    path_file = out / f"{stem}-path.pt"
    if path_file.exists():
        console.print(f"reusing the trained default model in {path_file}")
        path = torch.load(path_file, weights_only=True)
    else:
        X, y = default.digits()

        def flat():
            return torch.nn.utils.parameters_to_vector(net.parameters()).detach().clone()

        points = [flat()]
        with Progress(TextColumn("training the default MLP on the digits"), BarColumn(),
                      TextColumn("epoch {task.completed}/{task.total}"), console=console,
                      transient=True) as bar:
            task = bar.add_task("train", total=default.EPOCHS)

            def record(epoch, _loss):
                points.append(flat())
                bar.update(task, completed=epoch)

            default.train(net, X, y, on_epoch=record)
        path = torch.stack(points)
        out.mkdir(parents=True, exist_ok=True)
        temporary = path_file.with_name(f".{path_file.name}.tmp")
        torch.save(path, temporary)
        temporary.replace(path_file)
        io.save_state_dict(net, out / f"{stem}.pt")
        console.print(f"trained the default MLP 64-32-10 (tanh) for {default.EPOCHS} epochs of "
                      f"Adam; weights and training path in {out}")
    torch.nn.utils.vector_to_parameters(path[-1], net.parameters())
    return net.eval(), path


def _load_trajectory(spec: str):
    """A (T, n) tensor from one .pt file, or state dicts from a sorted glob of checkpoints."""
    import glob

    magic = any(c in spec for c in "*?[")
    files = [Path(f) for f in sorted(glob.glob(spec))] if magic else [Path(spec)]
    if not files or not all(f.is_file() for f in files):
        raise BadInputError(f"--trajectory {spec!r} matches no file")
    if len(files) == 1:
        import pickle

        try:
            loaded = torch.load(files[0], map_location="cpu", weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, OSError) as error:
            raise BadInputError(f"--trajectory {files[0]} is not a readable tensor file: "
                                f"{error}") from error
        if isinstance(loaded, torch.Tensor):
            return loaded
    return [io.load_state_dict(f) for f in files]


def _format(image_format: str) -> str:
    if image_format not in ("png", "svg"):
        raise BadInputError(f"--format {image_format!r}; use png or svg")
    return image_format


def _surface_table(summary: dict, surf, seconds: float) -> None:
    from rich.table import Table

    table = Table(title="loss surface", show_header=False)
    table.add_row("grid", " × ".join(map(str, summary["shape"])) +
                  f", {surf.meta['points_evaluated']} points evaluated in {seconds:.1f} s")
    table.add_row("loss range", f"{summary['min']:.5g} … {summary['max']:.5g}" + (
        f" (centre {summary['centre_value']:.5g})" if "centre_value" in summary else ""))
    table.add_row("lowest at", ", ".join(f"{x:.3g}" for x in summary["argmin"]))
    if "max_error" in summary:
        table.add_row("budgeted", f"cost {surf.meta['cost_ratio']:.1%} of the full grid, stated "
                                  f"error ≤ {summary['max_error']:.3g}")
    if "trajectory" in summary:
        t = summary["trajectory"]
        table.add_row("path fidelity", f"{t['explained']:.1%} of the path's variance in the "
                                       f"plane; median distance off it "
                                       f"{t['median_relative_distance']:.0%} of the radius")
    if "seed_spread" in surf.fidelity:
        s = surf.fidelity["seed_spread"]
        table.add_row("seed spread", f"median {s['relative_spread_median']:.1%}, max "
                                     f"{s['relative_spread_max']:.1%} of the value range "
                                     f"({len(s['seeds'])} other seeds)")
    if "taylor" in surf.fidelity and surf.fidelity["taylor"]["step"] is not None:
        t = surf.fidelity["taylor"]
        table.add_row("Taylor step", f"t* = {t['step']:.3g}: predicted decrease "
                                     f"{t['predicted_decrease']:.3g}, real "
                                     f"{t['real_decrease']:.3g}")
    console.print(table)


# ---------------------------------------------------------------------- doctor (issue 5)
@app.command()
def doctor(
    run_dir: Path = typer.Argument(None, help="A run directory recorded by landscope.Monitor "
                                   "(it holds monitor.json and monitor.csv)."),
    scenario: str = typer.Option(None, help="Train a built-in scenario (see --list-scenarios) "
                                 "under a Monitor and diagnose it."),
    remedy: bool = typer.Option(False, "--remedy", help="With --scenario: train the remedied "
                                "twin instead, which the doctor should pass."),
    list_scenarios: bool = typer.Option(False, "--list-scenarios", help="List the scenarios, "
                                        "what each shows and its remedy, then exit."),
    out: Path = typer.Option(Path("landscope-out"), help="With --scenario: the run directory "
                             "goes to OUT/doctor-NAME (or OUT/doctor-NAME-remedy)."),
    seed: int = typer.Option(0, help="With --scenario: seed of the initialisation and batches."),
):
    """Diagnose a training run: what went wrong, the numbers that show it, and what to do.
    Writes doctor.json into the run directory; exits 0 whether or not problems were found."""
    _guard(lambda: _doctor(run_dir, scenario, remedy, list_scenarios, out, seed))


def _doctor(run_dir, scenario, remedy, list_scenarios, out: Path, seed: int):
    from rich.table import Table

    from landscope.doctor import diagnose
    from landscope.doctor.report import diagnosis_report
    from landscope.doctor.scenarios import SCENARIOS, run_scenario

    if list_scenarios:
        table = Table("scenario", "what it trains", "expected finding", "remedy (--remedy)")
        for s in SCENARIOS.values():
            table.add_row(s.name, s.description, s.expect or "none", s.remedy or "—")
        console.print(table)
        return
    if (run_dir is None) == (scenario is None):
        raise BadInputError("give either a RUN_DIR or --scenario NAME (see --list-scenarios)")
    if remedy and scenario is None:
        raise BadInputError("--remedy applies to --scenario runs only")
    title = f"landscope doctor · {run_dir}"
    if scenario is not None:
        run_dir = out / f"doctor-{scenario}{'-remedy' if remedy else ''}"
        with console.status(f"training scenario {scenario}{' (remedied)' if remedy else ''}"):
            run_scenario(scenario, run_dir, remedy=remedy, seed=seed)
        title = f"landscope doctor · scenario {scenario}{' (remedied)' if remedy else ''}"
    diagnosis = diagnose(run_dir)
    console.print(diagnosis_report(diagnosis, title))
    path = io.write_result(run_dir, "doctor", {"diagnosis": diagnosis.to_dict(),
                                               "command": " ".join(sys.argv)}, name="doctor.json")
    console.print(f"written: {path}")


# ---------------------------------------------------------------------- race (issue 4)
@app.command()
def race(
    functions: str = typer.Option("saddle,six_hump_camel,rosenbrock", help="Comma-separated "
                                  "zoo functions (see --list)."),
    optimizers: str = typer.Option("all", help="Comma-separated optimisers (see --list; any "
                                   "torch.optim class name works too), or 'all'."),
    starts: int = typer.Option(32, min=1, help="Seeded starts per optimiser and function."),
    steps: int = typer.Option(300, min=1, help="Steps per run."),
    start: str = typer.Option("auto", help="uniform (in the function's box), saddle (next to "
                              "its first saddle), or auto (saddle when f has no minimum)."),
    tune: int = typer.Option(3, min=1, help="Learning rates tried per optimiser (its default "
                             "× 10^linspace(-1, 1, TUNE)) on separate starts; 1 = no tuning."),
    tune_starts: int = typer.Option(8, min=1, help="Starts used for tuning."),
    noise: float = typer.Option(0.0, min=0.0, help="Std of zero-mean Gaussian noise added to "
                                "every gradient (mimics mini-batches)."),
    tol: float = typer.Option(1e-6, help="f − f* ≤ tol·max(1, |f*|) counts as the global "
                              "minimum."),
    strategies: bool = typer.Option(True, "--strategies/--no-strategies", help="Also run "
                                    "multi-start, annealing and the genetic algorithm."),
    strategy_runs: int = typer.Option(8, min=1, help="Seeded runs of each global strategy."),
    pictures: bool = typer.Option(True, "--pictures/--no-pictures", help="Write a PNG and an "
                                  "interactive HTML page per 2-D function."),
    seed: int = typer.Option(0, help="Seed of everything random: the race is bit-reproducible."),
    list_names: bool = typer.Option(False, "--list", help="List the functions and optimisers, "
                                    "then exit."),
    out: Path = typer.Option(Path("landscope-out"), help="Directory for race.json, "
                             "race-summary.csv, race-runs.csv and the pictures."),
):
    """Race optimisers on landscapes with known answers: success rate, steps and evaluations
    to the global minimum (or to escape a saddle), where each run ended and what kind of point
    that is, divergences — with the same starts and tuning budget for every optimiser."""
    _guard(lambda: _race(functions=functions, optimizers=optimizers, starts=starts, steps=steps,
                         start=start, tune=tune, tune_starts=tune_starts, noise=noise, tol=tol,
                         strategies=strategies, strategy_runs=strategy_runs, pictures=pictures,
                         seed=seed, list_names=list_names, out=out))


def _race(*, functions="saddle,six_hump_camel,rosenbrock", optimizers="all", starts=32,
          steps=300, start="auto", tune=3, tune_starts=8, noise=0.0, tol=1e-6, strategies=True,
          strategy_runs=8, pictures=True, seed=0, list_names=False, out=Path("landscope-out")):
    """The work of `landscope race` (the demo calls it with a small race)."""
    from rich.table import Table

    from landscope import functions as zoo
    from landscope import optim
    from landscope.race import race as run_race

    if list_names:
        table = Table("function", "what it is")
        for name in zoo.NAMES:
            table.add_row(name, zoo.describe(name))
        console.print(table)
        table = Table("optimiser", "lr", "what it is")
        for r in optim.RECIPES.values():
            table.add_row(r.name, f"{r.lr:g}", r.description)
        console.print(table)
        return
    names = [n.strip() for n in optimizers.split(",") if n.strip()]
    chosen = optim.NAMES if names == ["all"] else names
    with console.status("racing") as status:
        result = run_race([f.strip() for f in functions.split(",") if f.strip()], chosen,
                          starts=starts, steps=steps, start=start, tune=tune,
                          tune_starts=tune_starts, noise=noise, tol=tol,
                          strategies=optim.STRATEGIES if strategies else (),
                          strategy_runs=strategy_runs, seed=seed,
                          progress=lambda message: status.update(f"racing · {message}"))
    console.print(f"landscope race · {starts} starts · {steps} steps · tune {tune} · "
                  f"noise {noise:g} · seed {seed}")
    short = {"local_min": "min", "local_max": "max", "not_critical": "none",
             "degenerate": "degen"}
    for name in result.functions:
        rows = [row for row in result.summary if row["function"] == name]
        table = Table("optimiser", "lr", "success", "steps", "evals", "diverged", "ended at",
                      title=f"{name} — goal: {rows[0]['goal']} (medians over successes)")
        for row in rows:
            ends = row["ends"]
            for long, brief in short.items():
                ends = ends.replace(long, brief)
            table.add_row(row["optimizer"], "—" if row["lr"] is None else f"{row['lr']:.3g}",
                          "—" if row["success_rate"] is None else
                          f"{100 * row['success_rate']:.0f}%", _number(row["median_steps"]),
                          _number(row["median_evaluations"]), str(row["diverged"]), ends)
        console.print(table)
    written = list(result.write_csv(out))
    if pictures:
        import matplotlib

        matplotlib.use("Agg")
        from landscope.plot.race import race_figure, race_page

        for name, fn in result.functions.items():
            if fn.dim == 2:
                race_figure(result, name).savefig(out / f"race-{name}.png", dpi=110)
                written += [out / f"race-{name}.png",
                            race_page(result, name, out / f"race-{name}.html")]
    written.append(io.write_result(out, "race", {**result.to_dict(),
                                                 "command": " ".join(sys.argv)},
                                   name="race.json"))
    for path in written:
        console.print(f"written: {path}")


def _number(value) -> str:
    return "—" if value is None else f"{value:g}"

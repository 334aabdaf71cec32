"""`landscope surface` and `landscope plot`: the landscape around a point."""

from __future__ import annotations

import re
import sys
import time
from contextlib import nullcontext
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Annotated, Literal

import torch
import typer

from landscope import distributed, io
from landscope.cli._common import (
    OUT,
    CheckpointOption,
    ChunkOption,
    DataOption,
    DTypeOption,
    LossOption,
    ModelOption,
    ModelRequest,
    ModeOption,
    OutOption,
    ParamsOption,
    ReportOption,
    SeedOption,
    _guard,
    _objective,
    _request,
    app,
    console,
    old_option,
    products_bar,
)
from landscope.directions import KINDS, NORMS
from landscope.errors import BadInputError
from landscope.surface import BN_MODES

_SHARDING = {"points": "grid points across {ranks} ranks",
             "data": "data across {ranks} ranks (each rank holds only its part)"}


LogOption = Annotated[bool | None, typer.Option(
    "--log/--linear", show_default=False,
    help="Colour scale: log or linear. Default: log when the values span more than 1.5 decades "
         "(max/min; for a loss that is not positive, (max − min)/(median − min), drawn as the "
         "excess over the minimum), else linear; the colour bar says which.")]
FormatOption = Annotated[str, typer.Option("--format", help="png or svg.")]


@dataclass(frozen=True)
class SurfaceRequest:
    """Which surface to compute and how to draw it: the options of `landscope surface` beyond
    the model's (its --seed seeds the random directions too)."""

    directions: str = "random"
    norm: str = "filter"
    biases: str = "zero"
    dims: int = 2
    span: float | None = None
    resolution: int = 41
    trajectory: str | None = None
    bn: str = "eval"
    budget: bool = False
    budget_fraction: float = 0.25
    samples: float | None = None
    spread: int = 0
    log: bool | None = None
    image_format: str = "png"
    shard: str = "points"


@app.command()
def surface(
    context: typer.Context,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    data: DataOption = None,
    loss: LossOption = ModelRequest.loss,
    dtype: DTypeOption = None,
    params: ParamsOption = None,
    mode: ModeOption = ModelRequest.mode,
    directions: Annotated[Literal[KINDS], typer.Option(
        help="random: seeded Gaussian plane; hessian: eigenvectors of λ_max and λ_min (a saddle "
             "shows as a saddle); pca: principal directions of the training path; gradient: the "
             "line along −∇L with Taylor models (1-D).")] = SurfaceRequest.directions,
    norm: Annotated[Literal[NORMS], typer.Option(help="Normalisation of random directions: filter "
                                              "(Li et al.), layer, none.")] =
        SurfaceRequest.norm,
    biases: Annotated[str, typer.Option(help="One-axis parameters (biases, BatchNorm) under "
                                        "filter/layer normalisation: zero or layer.")] =
        SurfaceRequest.biases,
    dims: Annotated[int, typer.Option(min=1, max=2, help="1 (a line) or 2 (a plane).")] =
        SurfaceRequest.dims,
    span: Annotated[float | None, typer.Option(help="Half-width of the grid in direction units "
                                               "(default: 1, or fitted to the path for pca, or "
                                               "(−t*, 2t*) for gradient).")] = None,
    resolution: Annotated[int, typer.Option(min=3, help="Grid points per axis.")] =
        SurfaceRequest.resolution,
    steps: Annotated[int | None, typer.Option("--steps", min=3, hidden=True)] = None,
    seed: SeedOption = ModelRequest.seed,
    trajectory: Annotated[str | None, typer.Option(
        help="Training path to draw: a .pt file holding a (T, n) tensor, or a glob of state-dict "
             "checkpoints ('ckpt/*.pt', in natural order: epoch_2 before epoch_10).")] = None,
    bn: Annotated[Literal[BN_MODES], typer.Option(help="BatchNorm at each point: eval (running "
                                          "statistics) or recompute (over the data, per point)."
                                          )] = SurfaceRequest.bn,
    budget: Annotated[bool, typer.Option(
        "--budget/--full", help="Budgeted view: adaptive refinement (and --samples) within a "
                                "cost cap, with the error shown.")] = SurfaceRequest.budget,
    budget_fraction: Annotated[float, typer.Option(help="Cost cap of the budgeted view, as a "
                                                   "fraction of the full grid's evaluations.")] =
        SurfaceRequest.budget_fraction,
    samples: Annotated[float | None, typer.Option(help="With --budget: data per point, a "
                                                  "fraction (0.25) or a count (512); default "
                                                  "all.")] = None,
    spread: Annotated[int, typer.Option(min=0, help="Fidelity check: redo an 11×11 picture "
                                        "with this many other seeds and report the spread "
                                        "(random directions).")] = SurfaceRequest.spread,
    log: LogOption = None,
    image_format: FormatOption = SurfaceRequest.image_format,
    batch_size: ChunkOption = None,
    shard: Annotated[Literal["points", "data"], typer.Option(
        help="Under torchrun: points (every rank holds all the data and evaluates its share of "
             "the grid points) or data (every rank holds only its part of the data and every "
             "point adds up the parts: for data too large for one rank).")] =
        SurfaceRequest.shard,
    out: OutOption = OUT,
    report: ReportOption = False,
):
    """Compute the loss surface around the point training stopped at, and draw it: contour with
    the training path and its fidelity, 3-D view, interactive HTML; OUT gets surface.npz,
    surface.json and the pictures. Ctrl-C keeps what is done; rerunning the same command
    resumes from the partial grid."""
    options = {**locals(), "resolution": old_option(context, steps, "--steps", resolution,
                                                    "--resolution")}
    _guard(lambda: _surface(_request(ModelRequest, options), _request(SurfaceRequest, options),
                            out), report=out if report else None)


@app.command()
def plot(
    file: Annotated[Path, typer.Argument(help="A surface .npz written by `landscope surface`.")],
    out: Annotated[Path | None, typer.Option(help="Directory for the pictures (default: the "
                                             "file's).")] = None,
    log: LogOption = None,
    image_format: FormatOption = SurfaceRequest.image_format,
    interactive: Annotated[bool, typer.Option(help="Also write the plotly HTML page.")] = True,
):
    """Draw a saved surface again (contour, 3-D, HTML) without recomputing anything."""
    def work():
        from landscope.plot import save_all
        from landscope.surface import Surface

        surf = Surface.load(file)
        paths = save_all(surf, out or file.parent, name=file.stem,
                         formats=(_format(image_format),), log=log, interactive=interactive)
        for path in paths:
            console.print(f"written: {path}")

    _guard(work)


def _surface(request: ModelRequest, view: SurfaceRequest, out: Path):
    """The work of `landscope surface` (the demo calls it with the pca plane)."""
    import matplotlib

    matplotlib.use("Agg")
    from landscope import directions as lsd
    from landscope.adaptive import adaptive_surface
    from landscope.plot import save_all, taylor_plot
    from landscope.plot._files import save_figure
    from landscope.render.progress import bar
    from landscope.render.surface import surface_table
    from landscope.surface import Fidelity, seed_spread, sharding
    from landscope.surface import surface as grid_surface
    from landscope.taylor import taylor

    fmt = _format(view.image_format)
    kind, dims, span, resolution, seed = (view.directions, view.dims, view.span,
                                          view.resolution, request.seed)
    obj, path = _objective(request, out,
                           shard="replicate" if view.shard == "points" else "split")
    if view.trajectory is not None:
        path = _load_trajectory(view.trajectory)
    path = None if path is None else lsd.trajectory(obj, path)
    if kind == "pca" and path is None:
        raise BadInputError("--directions pca needs a training path: --trajectory")
    if kind == "gradient" and dims != 1:
        raise BadInputError("--directions gradient draws a line: use --dims 1")
    progress = products_bar("Hessian eigenvectors") if kind == "hessian" else nullcontext()
    with progress as report:
        frame = lsd.make(kind, obj, dims, seed=seed, norm=view.norm, biases=view.biases,
                         path=path, progress=report)
    shared = sharding(obj)
    if shared is not None:
        console.print(f"sharding: {_SHARDING[shared['by']].format(**shared)}")
    start = time.perf_counter()
    partial = out / "surface.partial.npz"
    common = {"span": span, "resolution": resolution,
              "trajectory": path if dims == 2 else None, "checkpoint": partial}
    if kind == "gradient" and span is None:
        profile = taylor(obj, frame, resolution=resolution)
        common["span"] = (float(profile.t[0]), float(profile.t[-1]))
    if view.budget and view.bn != "eval":
        raise BadInputError("--bn recompute is not available with --budget; use --full")
    with bar("loss surface", "grid points", console) as report:
        if view.budget:
            surf = adaptive_surface(obj, frame, budget=view.budget_fraction,
                                    samples=view.samples, progress=report, **common)
        else:
            surf = grid_surface(obj, frame, bn=view.bn, progress=report, **common)
    if view.spread:
        if kind != "random":
            raise BadInputError("--spread compares seeds of random directions; use it with "
                                "--directions random")
        surf.fidelity = Fidelity(seed_spread=seed_spread(
            obj, seeds=tuple(range(seed + 1, seed + 1 + view.spread)), span=span or 1.0,
            norm=view.norm, biases=view.biases, dims=dims, bn=view.bn))
    seconds = time.perf_counter() - start
    if dims == 1:  # on every rank: a data-parallel Objective needs them all
        profile = taylor(obj, frame, span=(float(surf.axes[0][0]), float(surf.axes[0][-1])),
                         resolution=resolution)
    if not distributed.is_main():
        return  # every rank holds the same results; rank 0 writes and prints them
    files = [surf.save(out / "surface.npz")]
    partial.unlink(missing_ok=True)
    files += save_all(surf, out, formats=(fmt,), log=view.log)
    if dims == 1:
        files.append(save_figure(taylor_plot(profile), out / f"taylor.{fmt}"))
        surf.fidelity = replace(surf.fidelity, taylor=profile.summary())
    summary = surf.summary()
    result = io.write_result(out, "surface", {"surface": summary, "meta": surf.meta,
                                              "files": [str(f) for f in files],
                                              "seconds": seconds, "command": " ".join(sys.argv)},
                             name="surface.json")  # before any printing
    console.print(surface_table(summary, surf, seconds, profile if dims == 1 else None))
    for f in [*files, result]:
        console.print(f"written: {f}")


def _load_trajectory(spec: str):
    """A (T, n) tensor from one .pt file, or state dicts from a glob of checkpoints in natural
    order (numbers compared as numbers: epoch_2 before epoch_10), which is printed."""
    import glob

    magic = any(c in spec for c in "*?[")
    files = sorted((Path(f) for f in glob.glob(spec)), key=_natural) if magic else [Path(spec)]
    if not files or not all(f.is_file() for f in files):
        raise BadInputError(f"--trajectory {spec!r} matches no file")
    if len(files) == 1:
        loaded = io.load_weights(files[0])
        if isinstance(loaded, torch.Tensor):
            return loaded
    names = [f.name for f in files]
    shown = names if len(names) <= 8 else [*names[:4], "…", *names[-3:]]
    console.print(f"trajectory: {len(files)} checkpoints in natural order (numbers in names "
                  f"compared as numbers): {', '.join(shown)}")
    return [io.load_state_dict(f) for f in files]


def _natural(path: Path) -> list:
    """Sort key: 'epoch_10' after 'epoch_2' (runs of digits compare as numbers)."""
    return [int(part) if part.isdigit() else part.lower()
            for part in re.split(r"(\d+)", str(path))]


def _format(image_format: str) -> str:
    if image_format not in ("png", "svg"):
        raise BadInputError(f"--format {image_format!r}; use png or svg")
    return image_format

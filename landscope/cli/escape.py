"""`landscope escape`: remedy trials on your own network, each from the same point and budget."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from landscope import io
from landscope.cli._common import (
    OUT,
    BudgetOption,
    CheckpointOption,
    DataOption,
    HeldOutOption,
    LossOption,
    ModelOption,
    ModelRequest,
    OldBudgetOption,
    OutOption,
    ReportOption,
    SeedOption,
    SeedsOption,
    _guard,
    _held_out,
    _model_data_loss,
    _request,
    app,
    console,
    old_option,
)
from landscope.data import is_tensor_pair
from landscope.errors import BadInputError
from landscope.escape import DEFAULT_CANDIDATES
from landscope.plot._files import save_figure
from landscope.plot.escape import curves_figure
from landscope.render.progress import bar

BATCH_SIZE = 64
"""Mini-batch size of (X, y) data unless --batch-size says otherwise: training as users train,
with each seed's own data order (full batch would make the seeds the same run)."""


@dataclass(frozen=True)
class EscapeRequest:
    """The remedy trial asked for: the options of `landscope escape` beyond the model's (whose
    --batch-size is the mini-batch size and --seed the trials' seed)."""

    held_out: str | None = None
    optimizer: str = "momentum"
    lr: float | None = None
    candidates: str = ",".join(DEFAULT_CANDIDATES)
    evaluations: int = 200
    seeds: int = 3
    curvature_products: int = 100


@app.command()
def escape(
    context: typer.Context,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    data: DataOption = None,
    held_out: HeldOutOption = None,
    loss: LossOption = ModelRequest.loss,
    optimizer: Annotated[str, typer.Option(
        help="Your optimiser, the baseline that the rate changes, schedules and the v_min step "
             "modify (see --list).")] = EscapeRequest.optimizer,
    lr: Annotated[float | None, typer.Option(
        min=0.0, help="Its learning rate (default: its stated one, see --list).")] = None,
    candidates: Annotated[str, typer.Option(
        help="Comma-separated candidates (see --list; any torch.optim class name works "
             "too).")] = EscapeRequest.candidates,
    evaluations: BudgetOption = EscapeRequest.evaluations,
    steps: OldBudgetOption = None,
    seeds: SeedsOption = EscapeRequest.seeds,
    seed: SeedOption = ModelRequest.seed,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help=f"Mini-batch size for (X, y) data (default {BATCH_SIZE}; at least the "
                    "sample count: full batch); a DataLoader keeps its own batches.")] = None,
    curvature_products: Annotated[int, typer.Option(
        min=1, help="Cap on the Hessian-vector products of each λ_min (at θ₀ and every run's "
                    "end).")] = EscapeRequest.curvature_products,
    list_names: Annotated[bool, typer.Option(
        "--list", help="List the candidates, then exit.")] = False,
    out: OutOption = OUT,
    report: ReportOption = False,
):
    """Which change of training gets your network lower? Every candidate (optimisers,
    learning-rate changes and schedules, saddle escapers, a step along the most negative
    curvature) trains a copy from the same weights, on the same mini-batches in the same
    order, for the same budget; ranked by the training loss reached, with the spread over
    seeds and whether negative curvature was left behind. OUT gets escape.json,
    escape-summary.csv, escape-runs.csv, escape-curves.png and the finished runs: Ctrl-C keeps
    them, and a rerun resumes from them."""
    options = {**locals(), "evaluations": old_option(context, steps, "--steps", evaluations,
                                                     "--evaluations")}
    if list_names:
        _guard(_list)
        return
    _guard(lambda: _escape(_request(ModelRequest, options), _request(EscapeRequest, options),
                           out), report=out if report else None)


def _escape(request: ModelRequest, asked: EscapeRequest, out: Path):
    names = [n.strip() for n in asked.candidates.split(",") if n.strip()]
    if not names:
        raise BadInputError(f"--candidates {asked.candidates!r} names no candidate; give "
                            "comma-separated names (see --list)")
    net, loss_fn, data, held, batch_size = trial_inputs(request, asked.held_out, out)
    run_trial(net, loss_fn, data, out, candidates=names, optimizer=asked.optimizer, lr=asked.lr,
              evaluations=asked.evaluations, seeds=asked.seeds, seed=request.seed,
              batch_size=batch_size,
              held_out=held, curvature_products=asked.curvature_products)


def trial_inputs(request: ModelRequest, held_out: str | None, out: Path,
                 batch_size: int = BATCH_SIZE):
    """What a remedy trial runs on: the network, the loss, the data, the --held-out data (or
    None) and the mini-batch size, the request's or else ``batch_size`` for (X, y) data (the
    seeds then differ in their data order)."""
    net, data, loss_fn, _ = _model_data_loss(request, out)
    if request.batch_size is not None or not is_tensor_pair(data):
        batch_size = request.batch_size
    return net, loss_fn, data, _held_out(held_out, net), batch_size


def run_trial(net, loss_fn, data, out: Path, *, document: dict | None = None, **options):
    """Run a remedy trial (:func:`landscope.escape.escape` with ``options``) under a progress
    bar, write its files into ``out`` (``document`` joins escape.json) and print its table."""
    from landscope import escape as trials

    with bar("trying remedies", "runs", console) as progress:
        trial = trials.escape(net, loss_fn, data, out=out, progress=progress, **options)
    written = [*trial.write_csv(out), io.write_result(
        out, "escape", {**trial.to_dict(), **(document or {}), "command": " ".join(sys.argv)},
        name="escape.json")]
    written.append(save_figure(curves_figure(trial), out / "escape-curves.png"))
    console.print(_table(trial))
    for name, why in trial.skipped.items():
        console.print(f"skipped {name}: {why}")
    for path in written:
        console.print(f"written: {path}")
    return trial


def _list() -> None:
    from rich.table import Table

    from landscope import escape as trials
    from landscope import optim

    table = Table("candidate", "what it is", title="changes of the baseline (--optimizer)")
    for c in trials.CHANGES.values():
        note = trials.available(c)
        table.add_row(c.name, c.description + (f" [dim]({note})[/]" if note else ""))
    console.print(table)
    table = Table("candidate", "lr", "what it is", title="optimisers")
    for r in optim.RECIPES.values():
        if r.name not in trials.LEFT_OUT:
            table.add_row(r.name, f"{r.lr:g}", r.description)
    console.print(table)
    for name, why in trials.LEFT_OUT.items():
        console.print(f"left out: {name}: {why}")


def _table(trial):
    from rich.table import Table

    start = trial.start
    held = any(row["held_out_mean"] is not None for row in trial.summary)
    table = Table("#", "candidate", "train loss (mean ± sd)", *(["held-out"] if held else []),
                  "λ_min < 0 left", "diverged", "evals", "s/run",
                  title=f"remedy trials · start loss {start['loss']:.4g}, λ_min "
                        f"{start['lambda_min']:.3g}, λ_max {start['lambda_max']:.3g} · "
                        f"{trial.settings['seeds']} seeds · budget "
                        f"{trial.settings['steps']} evaluations")
    for row in trial.summary:
        cells = [str(row["rank"]), row["candidate"],
                 _pm(row["train_loss_mean"], row["train_loss_std"])]
        if held:
            cells.append(_pm(row["held_out_mean"], row["held_out_std"]))
        cells += [row["negative_curvature_left"], str(row["diverged"]),
                  f"{row['evaluations']:.0f}", f"{row['seconds']:.2f}"]
        table.add_row(*cells)
    return table


def _pm(mean, spread) -> str:
    if mean is None:
        return "—"
    return f"{mean:.4g} ± {spread:.2g}"

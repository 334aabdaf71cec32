"""`landscope escape`: remedy trials on your own network, each from the same point and budget."""

from __future__ import annotations

import sys
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from landscope import io
from landscope.cli._common import REPORT, _guard, _load_data, _model_data_loss, app, console
from landscope.data import is_tensor_pair
from landscope.errors import BadInputError
from landscope.escape import DEFAULT_CANDIDATES
from landscope.plot._files import save_figure
from landscope.plot.escape import curves_figure

BATCH_SIZE = 64
"""Mini-batch size of (X, y) data unless --batch-size says otherwise: training as users train,
with each seed's own data order (full batch would make the seeds the same run)."""


@app.command()
def escape(
    model: str = typer.Option(None, help="Your network: 'pkg.module:factory' or "
                              "'file.py:factory', a function returning an nn.Module (its "
                              "weights are the start point). Default: the built-in MLP, "
                              "trained on the digits here."),
    checkpoint: Path = typer.Option(None, help="Start from these weights (a state_dict saved "
                                    "with torch.save); loaded with weights_only=True."),
    data: str = typer.Option(None, help="Training data: 'pkg.module:factory' returning (X, y) "
                             "tensors or a DataLoader (shuffle=False), or 'digits'."),
    held_out: str = typer.Option(None, "--held-out", help="Held-out data, as --data: its loss "
                                 "at the end of every run."),
    loss: str = typer.Option("cross_entropy", help="cross_entropy, mse, model (its own "
                             "loss), or 'pkg.module:fn' taking (output, target)."),
    optimizer: str = typer.Option("momentum", help="Your optimiser, the baseline that the "
                                  "rate changes, schedules and the v_min step modify (see "
                                  "--list)."),
    lr: float = typer.Option(None, min=0.0, help="Its learning rate (default: its stated "
                             "one, see --list)."),
    candidates: str = typer.Option(",".join(DEFAULT_CANDIDATES), help="Comma-separated "
                                   "candidates (see --list; any torch.optim class name works "
                                   "too)."),
    steps: int = typer.Option(200, help="Budget per run, in gradient evaluations (one "
                              "mini-batch forward and backward; a Hessian-vector product "
                              "counts one)."),
    seeds: int = typer.Option(3, help="Runs per candidate, each with its own data order."),
    seed: int = typer.Option(0, help="Seed of everything random: trials are bit-reproducible."),
    batch_size: int = typer.Option(None, min=1, help="Mini-batch size for (X, y) data "
                                   f"(default {BATCH_SIZE}; at least the sample count: full "
                                   "batch); a DataLoader keeps its own batches."),
    curvature_products: int = typer.Option(100, min=1, help="Cap on the Hessian-vector "
                                           "products of each λ_min (at θ₀ and every run's "
                                           "end)."),
    list_names: bool = typer.Option(False, "--list", help="List the candidates, then exit."),
    out: Path = typer.Option(Path("landscope-out"), help="Directory for escape.json, "
                             "escape-summary.csv, escape-runs.csv, escape-curves.png and the "
                             "finished runs (a rerun resumes from them)."),
    report: bool = REPORT,
):
    """Which change of training gets your network lower? Every candidate (optimisers,
    learning-rate changes and schedules, saddle escapers, a step along the most negative
    curvature) trains a copy from the same weights, on the same mini-batches in the same
    order, for the same budget; ranked by the training loss reached, with the spread over
    seeds and whether negative curvature was left behind. Ctrl-C keeps the finished runs."""
    _guard(lambda: _escape(model, checkpoint, data, held_out, loss, optimizer, lr, candidates,
                           steps, seeds, seed, batch_size, curvature_products, list_names, out),
           report=out if report and not list_names else None)


def _escape(model_spec, checkpoint, data_spec, held_out_spec, loss_spec, optimizer, lr,
            candidates, steps, seeds, seed, batch_size, curvature_products, list_names, out):
    from landscope import escape as trials

    if list_names:
        _list(trials)
        return
    names = [n.strip() for n in candidates.split(",") if n.strip()]
    if not names:
        raise BadInputError(f"--candidates {candidates!r} names no candidate; give "
                            "comma-separated names (see --list)")
    net, data, loss_fn, _ = _model_data_loss(model_spec, checkpoint, data_spec, loss_spec, out)
    if batch_size is None and is_tensor_pair(data):  # seeds then differ in their data order
        batch_size = BATCH_SIZE
    held = None if held_out_spec is None else _load_data(held_out_spec,
                                                         next(net.parameters()).dtype)
    run_trial(net, loss_fn, data, out, candidates=names, optimizer=optimizer, lr=lr, steps=steps,
              seeds=seeds, seed=seed, batch_size=batch_size, held_out=held,
              curvature_products=curvature_products)


def run_trial(net, loss_fn, data, out: Path, *, document: dict | None = None, **options):
    """Run a remedy trial (:func:`landscope.escape.escape` with ``options``) under a progress
    bar, write its files into ``out`` (``document`` joins escape.json) and print its table."""
    from landscope import escape as trials

    with Progress(TextColumn("trying remedies"), BarColumn(),
                  TextColumn("{task.completed}/{task.total} runs · {task.fields[last]}"),
                  TimeElapsedColumn(), console=console, transient=True) as bar:
        task = bar.add_task("runs", total=None, last="")

        def report(run, done, total):
            bar.update(task, completed=done, total=total,
                       last=f"{run['candidate']} seed {run['seed']}")

        trial = trials.escape(net, loss_fn, data, out=out, progress=report, **options)
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


def _list(trials) -> None:
    from rich.table import Table

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
                        f"{trial.settings['seeds']} seeds · budget {trial.settings['steps']}")
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

"""`landscope probe`: classify the point training stopped at."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import typer
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from landscope import io
from landscope.anytime import anytime_probe, cost_plan, schedule
from landscope.cli._common import (
    REPORT,
    DType,
    Mode,
    _guard,
    _objective,
    _ProductsProgress,
    app,
    console,
)
from landscope.critical import probe as run_probe
from landscope.render import plan_text, probe_panel, stage_panel


@app.command()
def probe(
    model: str = typer.Option(None, help="Your network: 'pkg.module:factory' or "
                              "'file.py:factory', a function returning an nn.Module. "
                              "Default: the built-in MLP, trained on the digits here."),
    checkpoint: Path = typer.Option(None, help="Weights for --model (a state_dict saved with "
                                    "torch.save); loaded with weights_only=True."),
    data: str = typer.Option(None, help="'pkg.module:factory' returning (X, y) tensors or a "
                             "DataLoader, or 'digits' (scikit-learn's bundled digits)."),
    loss: str = typer.Option("cross_entropy", help="cross_entropy, mse, model (its own "
                             "loss), or 'pkg.module:fn' "
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
    seed: int = typer.Option(0, help="Seed of the data subsets, random start vectors and "
                             "probes (the same seed gives the same answer)."),
    time_budget: float = typer.Option(None, "--time-budget", min=0.0, help="Seconds for the "
                                      "whole probe: the best verdict reachable in that time, "
                                      "and what stayed uncertain."),
    samples: int = typer.Option(None, min=1, help="Samples per subset of the first stage "
                                "(default: from the budget, at most 512)."),
    subsets: int = typer.Option(5, min=2, help="Independent data subsets of the first stage "
                                "(its intervals' degrees of freedom + 1)."),
    probes: int = typer.Option(8, min=1, help="Random probes of the density (last stage)."),
    steps: int = typer.Option(60, min=1, help="Lanczos steps per density probe."),
    density: bool = typer.Option(True, "--density/--no-density", help="Run the last stage "
                                 "(density, sign fractions, trace, higher-order test)."),
    device: str = typer.Option(None, help="Analyse on this device (cpu, cuda, cuda:1; default: "
                               "the model's). The data is moved there once."),
    out: Path = typer.Option(Path("landscope-out"), help="Directory for result.json (and "
                             "the default model's checkpoint, reused on the next run)."),
    report: bool = REPORT,
):
    """Classify the point training stopped at: minimum, saddle (and its index), degenerate,
    or not critical at all, with the Hessian spectrum and the evidence behind the verdict.

    The answer comes in stages: a first verdict with 95 % intervals from data subsets, then the
    extreme eigenvalues on all the data, then the density. Ctrl-C or the time budget ends it
    with the best answer so far (marked partial in result.json)."""
    _guard(lambda: _probe(model, checkpoint, data, loss, dtype, params, mode, k, exact,
                          batch_size, seed, out, time_budget=time_budget, samples=samples,
                          subsets=subsets, probes=probes, steps=steps, density=density,
                          device=device), report=out if report else None)


def _probe(model_spec, checkpoint, data_spec, loss_spec, dtype, params, mode, k, exact,
           batch_size, seed, out: Path, *, time_budget=None, samples=None, subsets=5,
           probes=8, steps=60, density=True, device=None):
    obj, _ = _objective(model_spec, checkpoint, data_spec, loss_spec, dtype, params, mode,
                        batch_size, seed, out, device)
    start = time.perf_counter()
    if exact:   # the dense Hessian on all the data: one stage, as asked
        with _ProductsProgress("probing the Hessian") as report:
            result = run_probe(obj, k=k, exact=True, seed=seed, progress=report)
        seconds = time.perf_counter() - start
        path = io.write_result(out, "probe", {"probe": result.to_dict(), "seconds": seconds,
                                              "command": " ".join(sys.argv)})
        console.print(probe_panel(result, seconds))
        console.print(f"written: {path}")
        return
    plan = cost_plan(obj)
    planned = schedule(obj, plan, samples=samples, subsets=subsets, k=k, probes=probes,
                       steps=steps, density=density, time_budget=time_budget)
    _say(plan_text(plan, planned, time_budget))
    count = len(planned)

    def show(stage):
        if stage.name != "density":   # the full panel below shows it, with more evidence
            _say(stage_panel(stage, [p.name for p in planned].index(stage.name) + 1, count))

    with _StageProgress() as report:
        result = anytime_probe(obj, time_budget=time_budget, samples=samples, subsets=subsets,
                               seed=seed, k=k, probes=probes, steps=steps, density=density,
                               exact=exact,
                               plan=plan, progress=report, on_stage=show)
    seconds = time.perf_counter() - start
    payload = {"anytime": result.to_dict(), "partial": result.partial, "seconds": seconds,
               "command": " ".join(sys.argv)}
    if result.probe is not None:
        payload["probe"] = result.probe.to_dict()
    path = io.write_result(out, "probe", payload)  # before any more printing
    if result.probe is not None:
        _say(probe_panel(result.probe, seconds))
        trace = result.estimates["trace"]
        _say(f"trace {trace.value:.4g}  [{trace.low:.4g}, {trace.high:.4g}] (95 %; "
             f"{trace.evidence})")
    if result.partial or result.probe is None:
        spent = f" after {seconds:.0f} s" + ("" if time_budget is None else
                                             f" of a {time_budget:g} s budget")
        _say(f"[bold]{'PARTIAL: ' if result.partial else ''}best verdict{spent}:[/] "
             f"{result.statement}")
        for item in result.uncertain:
            _say(f"  uncertain: {item}")
    _say(f"written: {path}")


def _say(renderable) -> None:
    """Print now, even when the output goes to a file (flushed after every stage)."""
    console.print(renderable)
    console.file.flush()


class _StageProgress:
    """A bar per stage: products done of those planned, elapsed time and the ETA."""

    def __init__(self):
        self.progress = Progress(TextColumn("{task.description}"), BarColumn(),
                                 TextColumn("{task.completed:.0f}/{task.total:.0f} products"),
                                 TimeElapsedColumn(), TextColumn("{task.fields[eta]}"),
                                 console=console, transient=True)

    def __enter__(self):
        self.progress.__enter__()
        self.task = self.progress.add_task("", total=1, eta="")
        return self.report

    def report(self, stage, index, stages, done, planned, elapsed, eta) -> None:
        left = "" if eta is None else f"ETA {eta:.0f} s"
        self.progress.update(self.task, description=f"stage {index}/{stages} {stage}",
                             completed=min(done, planned), total=max(planned, 1), eta=left)

    def __exit__(self, *exc):
        return self.progress.__exit__(*exc)

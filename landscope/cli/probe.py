"""`landscope probe`: classify the point training stopped at."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from landscope import io
from landscope.anytime import anytime_probe, cost_plan, schedule
from landscope.cli._common import (
    OUT,
    CheckpointOption,
    ChunkOption,
    DataOption,
    DeviceOption,
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
from landscope.critical import probe as run_probe
from landscope.render import plan_text, probe_panel, stage_panel


@dataclass(frozen=True)
class ProbeRequest:
    """What to compute at the point: the options of `landscope probe` beyond the model's."""

    k: int = 5
    exact: bool | None = None
    time_budget: float | None = None
    samples: int | None = None
    subsets: int = 5
    probes: int = 8
    lanczos_steps: int = 60
    density: bool = True


@app.command()
def probe(
    context: typer.Context,
    model: ModelOption = None,
    checkpoint: CheckpointOption = None,
    data: DataOption = None,
    loss: LossOption = ModelRequest.loss,
    dtype: DTypeOption = None,
    params: ParamsOption = None,
    mode: ModeOption = ModelRequest.mode,
    k: Annotated[int, typer.Option(
        min=1, help="Eigenpairs computed at each end of the spectrum.")] = ProbeRequest.k,
    exact: Annotated[bool | None, typer.Option(
        "--exact/--iterative", help="Force the dense Hessian or the Lanczos path (default: "
                                    "dense for n ≤ 1024).")] = None,
    batch_size: ChunkOption = None,
    seed: SeedOption = ModelRequest.seed,
    time_budget: Annotated[float | None, typer.Option(
        "--time-budget", min=0.0, help="Seconds for the whole probe: the best verdict reachable "
                                       "in that time, and what stayed uncertain.")] = None,
    samples: Annotated[int | None, typer.Option(
        min=1, help="Samples per subset of the first stage (default: from the budget, at most "
                    "512).")] = None,
    subsets: Annotated[int, typer.Option(
        min=2, help="Independent data subsets of the first stage (its intervals' degrees of "
                    "freedom + 1).")] = ProbeRequest.subsets,
    probes: Annotated[int, typer.Option(
        min=1, help="Random probes of the density (last stage).")] = ProbeRequest.probes,
    lanczos_steps: Annotated[int, typer.Option(
        "--lanczos-steps", min=1, help="Lanczos steps per density probe.")
    ] = ProbeRequest.lanczos_steps,
    steps: Annotated[int | None, typer.Option("--steps", min=1, hidden=True)] = None,
    density: Annotated[bool, typer.Option(
        "--density/--no-density", help="Run the last stage (density, sign fractions, trace, "
                                       "higher-order test).")] = ProbeRequest.density,
    device: DeviceOption = None,
    out: OutOption = OUT,
    report: ReportOption = False,
):
    """Classify the point training stopped at: minimum, saddle (and its index), degenerate,
    or not critical at all, with the Hessian spectrum and the evidence behind the verdict.

    The answer comes in stages: a first verdict with 95 % intervals from data subsets, then the
    extreme eigenvalues on all the data, then the density. Ctrl-C or the time budget ends it
    with the best answer so far (marked partial in OUT/result.json)."""
    options = {**locals(), "lanczos_steps": old_option(context, steps, "--steps", lanczos_steps,
                                                       "--lanczos-steps")}
    _guard(lambda: _probe(_request(ModelRequest, options), _request(ProbeRequest, options), out),
           report=out if report else None)


def _probe(request: ModelRequest, asked: ProbeRequest, out: Path):
    """The work of `landscope probe` (the demo calls it on the default model)."""
    obj, _ = _objective(request, out)
    start = time.perf_counter()
    if asked.exact:   # the dense Hessian on all the data: one stage, as asked
        with products_bar("probing the Hessian") as report:
            result = run_probe(obj, k=asked.k, exact=True, seed=request.seed, progress=report)
        seconds = time.perf_counter() - start
        path = io.write_result(out, "probe", {"probe": result.to_dict(), "seconds": seconds,
                                              "command": " ".join(sys.argv)})
        console.print(probe_panel(result, seconds))
        console.print(f"written: {path}")
        return
    plan = cost_plan(obj)
    stages = {"samples": asked.samples, "subsets": asked.subsets, "k": asked.k,
              "probes": asked.probes, "lanczos_steps": asked.lanczos_steps,
              "density": asked.density}
    planned = schedule(obj, plan, time_budget=asked.time_budget, **stages)
    _say(plan_text(plan, planned, asked.time_budget))
    count = len(planned)

    def show(stage):
        if stage.name != "density":   # the full panel below shows it, with more evidence
            _say(stage_panel(stage, [p.name for p in planned].index(stage.name) + 1, count))

    with products_bar("probing") as report:
        result = anytime_probe(obj, time_budget=asked.time_budget, seed=request.seed,
                               exact=asked.exact, plan=plan, progress=report, on_stage=show,
                               **stages)
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
        spent = f" after {seconds:.0f} s" + ("" if asked.time_budget is None else
                                             f" of a {asked.time_budget:g} s budget")
        _say(f"[bold]{'PARTIAL: ' if result.partial else ''}best verdict{spent}:[/] "
             f"{result.statement}")
        for item in result.uncertain:
            _say(f"  uncertain: {item}")
    _say(f"written: {path}")


def _say(renderable) -> None:
    """Print now, even when the output goes to a file (flushed after every stage)."""
    console.print(renderable)
    console.file.flush()


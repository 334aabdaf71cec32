"""`landscope race`: optimisers on landscapes with known answers."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from landscope import distributed, io
from landscope.cli._common import (
    OUT,
    OutOption,
    ReportOption,
    SeedOption,
    _guard,
    _request,
    app,
    console,
    old_option,
)
from landscope.errors import BadInputError


@dataclass(frozen=True)
class RaceRequest:
    """The race asked for: the options of `landscope race`."""

    functions: str = "saddle,six_hump_camel,rosenbrock"
    optimizers: str = "all"
    starts: int = 32
    steps: int = 300
    start: str = "auto"
    tune: int = 3
    tune_starts: int = 8
    noise: float = 0.0
    global_rtol: float = 1e-6
    strategies: bool = True
    strategy_runs: int = 8
    pictures: bool = True
    seed: int = 0


@app.command()
def race(
    context: typer.Context,
    functions: Annotated[str, typer.Option(
        help="Comma-separated zoo functions (see --list).")] = RaceRequest.functions,
    optimizers: Annotated[str, typer.Option(
        help="Comma-separated optimisers (see --list; any torch.optim class name works too), "
             "or 'all'.")] = RaceRequest.optimizers,
    starts: Annotated[int, typer.Option(
        min=1, help="Seeded starts per optimiser and function.")] = RaceRequest.starts,
    steps: Annotated[int, typer.Option(min=1, help="Steps per run.")] = RaceRequest.steps,
    start: Annotated[str, typer.Option(
        help="uniform (in the function's box), saddle (next to its first saddle), or auto "
             "(saddle when f has no minimum).")] = RaceRequest.start,
    tune: Annotated[int, typer.Option(
        min=1, help="Learning rates tried per optimiser (its default × 10^linspace(-1, 1, TUNE)) "
                    "on separate starts; 1 = no tuning.")] = RaceRequest.tune,
    tune_starts: Annotated[int, typer.Option(
        min=1, help="Starts used for tuning.")] = RaceRequest.tune_starts,
    noise: Annotated[float, typer.Option(
        min=0.0, help="Std of zero-mean Gaussian noise added to every gradient (mimics "
                      "mini-batches).")] = RaceRequest.noise,
    global_rtol: Annotated[float, typer.Option(
        help="f − f* ≤ GLOBAL_RTOL·max(1, |f*|) counts as the global "
             "minimum.")] = RaceRequest.global_rtol,
    tol: Annotated[float | None, typer.Option("--tol", hidden=True)] = None,
    strategies: Annotated[bool, typer.Option(
        "--strategies/--no-strategies", help="Also run multi-start, annealing and the genetic "
                                             "algorithm.")] = RaceRequest.strategies,
    strategy_runs: Annotated[int, typer.Option(
        min=1, help="Seeded runs of each global strategy.")] = RaceRequest.strategy_runs,
    pictures: Annotated[bool, typer.Option(
        "--pictures/--no-pictures", help="Write a PNG and an interactive HTML page per 2-D "
                                         "function.")] = RaceRequest.pictures,
    seed: SeedOption = RaceRequest.seed,
    list_names: Annotated[bool, typer.Option(
        "--list", help="List the functions and optimisers, then exit.")] = False,
    out: OutOption = OUT,
    report: ReportOption = False,
):
    """Race optimisers on landscapes with known answers: success rate, steps and evaluations
    to the global minimum (or to escape a saddle), where each run ended and what kind of point
    that is, divergences — with the same starts and tuning budget for every optimiser. OUT
    gets race.json, race-summary.csv, race-runs.csv and the pictures."""
    options = {**locals(),
               "global_rtol": old_option(context, tol, "--tol", global_rtol, "--global-rtol")}
    if list_names:
        _guard(_list)
        return
    _guard(lambda: _race(_request(RaceRequest, options), out), report=out if report else None)


def _list() -> None:
    from rich.table import Table

    from landscope import functions as zoo
    from landscope import optim

    table = Table("function", "what it is")
    for name in zoo.NAMES:
        table.add_row(name, zoo.describe(name))
    console.print(table)
    table = Table("optimiser", "lr", "what it is")
    for r in optim.RECIPES.values():
        table.add_row(r.name, f"{r.lr:g}", r.description)
    console.print(table)


def _race(asked: RaceRequest, out: Path):
    """The work of `landscope race` (the demo calls it with a small race)."""
    from landscope import optim
    from landscope.race import STRATEGIES
    from landscope.race import race as run_race
    from landscope.render.progress import bar
    from landscope.render.race import race_tables

    names = _names(asked.optimizers, "--optimizers", "optimiser")
    chosen = optim.NAMES if names == ["all"] else names
    if distributed.launched():  # under torchrun the ranks share the race's pieces of work
        distributed.start()
    with bar("racing", "pairs", console) as progress:
        result = run_race(_names(asked.functions, "--functions", "function"), chosen,
                          starts=asked.starts, steps=asked.steps, start=asked.start,
                          tune=asked.tune, tune_starts=asked.tune_starts, noise=asked.noise,
                          global_rtol=asked.global_rtol,
                          strategies=STRATEGIES if asked.strategies else (),
                          strategy_runs=asked.strategy_runs, seed=asked.seed, progress=progress)
    if not distributed.is_main():
        return  # every rank holds the whole result; rank 0 writes and prints it
    written = [*result.write_csv(out), io.write_result(
        out, "race", {**result.to_dict(), "command": " ".join(sys.argv)}, name="race.json")]
    console.print(f"landscope race · {asked.starts} starts · {asked.steps} steps · tune "
                  f"{asked.tune} · noise {asked.noise:g} · seed {asked.seed}")
    for table in race_tables(result.summary, result.functions):
        console.print(table)
    if asked.pictures:
        import matplotlib

        matplotlib.use("Agg")
        from landscope.plot._files import save_figure
        from landscope.plot.race import race_figure, race_page

        for name, fn in result.functions.items():
            if fn.dim == 2:
                written += [save_figure(race_figure(result, name), out / f"race-{name}.png"),
                            race_page(result, name, out / f"race-{name}.html")]
    for path in written:
        console.print(f"written: {path}")


def _names(text: str, option: str, what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise BadInputError(f"{option} {text!r} names no {what}; give comma-separated names "
                            "(see --list)" + (" or 'all'" if what == "optimiser" else ""))
    return names



"""`landscope race`: optimisers on landscapes with known answers."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from landscope import distributed, io
from landscope.cli._common import (
    REPORT,
    _guard,
    app,
    console,
)
from landscope.errors import BadInputError


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
    report: bool = REPORT,
):
    """Race optimisers on landscapes with known answers: success rate, steps and evaluations
    to the global minimum (or to escape a saddle), where each run ended and what kind of point
    that is, divergences — with the same starts and tuning budget for every optimiser."""
    _guard(lambda: _race(functions=functions, optimizers=optimizers, starts=starts, steps=steps,
                         start=start, tune=tune, tune_starts=tune_starts, noise=noise, tol=tol,
                         strategies=strategies, strategy_runs=strategy_runs, pictures=pictures,
                         seed=seed, list_names=list_names, out=out),
           report=out if report and not list_names else None)


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
    names = _names(optimizers, "--optimizers", "optimiser")
    chosen = optim.NAMES if names == ["all"] else names
    if distributed.launched():  # under torchrun the ranks share the race's pieces of work
        distributed.start()
    with console.status("racing") as status:
        result = run_race(_names(functions, "--functions", "function"), chosen,
                          starts=starts, steps=steps, start=start, tune=tune,
                          tune_starts=tune_starts, noise=noise, tol=tol,
                          strategies=optim.STRATEGIES if strategies else (),
                          strategy_runs=strategy_runs, seed=seed,
                          progress=lambda message: status.update(f"racing · {message}"))
    if not distributed.is_main():
        return  # every rank holds the whole result; rank 0 writes and prints it
    written = [*result.write_csv(out), io.write_result(
        out, "race", {**result.to_dict(), "command": " ".join(sys.argv)}, name="race.json")]
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
    if pictures:
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


def _number(value) -> str:
    return "—" if value is None else f"{value:g}"

"""`landscope study NAME`: a published figure's counterpart, drawn and checked by numbers."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from landscope import io
from landscope.cli._common import _guard, app, console
from landscope.errors import BadInputError, LandscopeError
from landscope.plot._files import save_figure


@app.command()
def study(
    name: str = typer.Argument(None, help="The study to run (see --list)."),
    scale: str = typer.Option("small", help="small (minutes at most, as in CI) or full (the "
                              "documented figure)."),
    seed: int = typer.Option(0, help="Seed of everything random: a run is reproducible."),
    list_names: bool = typer.Option(False, "--list", help="List the studies, then exit."),
    out: Path = typer.Option(Path("landscope-out"), help="Directory for study-NAME.json (the "
                             "figure's numbers and the checks) and study-NAME.png."),
):
    """Reproduce a published experiment at a small or full scale: draw its figure and check
    its numbers against a closed form or the paper. Exits 1 when a check fails."""
    _guard(lambda: _study(name, scale, seed, list_names, out))


def _study(name, scale, seed, list_names, out):
    import matplotlib
    from matplotlib import pyplot
    from rich.table import Table

    from landscope import studies

    if list_names:
        table = Table("study", "what it reproduces", title="studies (landscope study NAME)")
        for entry in studies.STUDIES.values():
            table.add_row(entry.name, entry.summary)
        console.print(table)
        return
    if name is None:
        raise BadInputError(f"name a study: one of {', '.join(studies.STUDIES)} "
                            "(landscope study --list)")
    entry = studies.get(name)
    with console.status(f"running study {name} ({scale} scale)"):
        result = studies.run(name, scale, seed)
    matplotlib.use("Agg")
    figure = entry.draw(result)
    written = [io.write_result(out, "study", {**result.to_dict(), "command": " ".join(sys.argv)},
                               name=f"study-{name}.json"),
               save_figure(figure, out / f"study-{name}.png")]
    pyplot.close(figure)
    table = Table("check", "measured", "expected", "", title=f"study {name} · {scale} scale · "
                  f"seed {seed} · {result.seconds:.1f} s")
    for check in result.checks:
        table.add_row(check.name, check.measured, check.expected,
                      "[green]pass[/]" if check.passed else "[red]FAIL[/]")
    console.print(table)
    for path in written:
        console.print(f"written: {path}")
    if not result.passed:
        raise LandscopeError(f"study {name}: "
                             f"{sum(not c.passed for c in result.checks)} check(s) failed")

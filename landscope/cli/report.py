"""`landscope report RUN_DIR`: every result in a run directory on one self-contained page."""

from __future__ import annotations

from pathlib import Path

import typer

from landscope.cli._common import _guard, app, console


@app.command()
def report(
    run_dir: Path = typer.Argument(..., help="A directory landscope wrote into (--out of probe, "
                                   "surface, race, escape, doctor, study, demo); "
                                   "subdirectories are read too."),
    out: Path = typer.Option(None, help="The HTML file to write (default: RUN_DIR/report.html)."),
):
    """One HTML page of everything in RUN_DIR: the verdict and its evidence, the spectrum, the
    surfaces with their trajectories, the race and remedy tables, the doctor's findings with the
    record's curves, the studies' checks. plotly.js and the pictures are inlined: the page opens
    offline and can be sent as one file."""

    def work():
        from landscope.report import write_report

        with console.status("writing the report"):
            path = write_report(run_dir, out)
        console.print(f"report: {path}")

    _guard(work)

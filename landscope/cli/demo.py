"""`landscope demo`: the main job on the built-in default."""

from __future__ import annotations

from pathlib import Path

import typer

from landscope.cli._common import (
    Mode,
    _guard,
    _publish_report,
    app,
    console,
)
from landscope.cli.doctor import _doctor
from landscope.cli.probe import _probe
from landscope.cli.race import _race
from landscope.cli.surface import _surface


@app.command()
def demo(
    out: Path = typer.Option(Path("landscope-out"), help="Directory for the results."),
):
    """The main job on the built-in default: train the MLP on the digits and probe where training
    stopped; draw the landscape around it with the training path; race optimisers away from a
    saddle; diagnose the seed's 10-layer sigmoid network; then put all of it on one page,
    OUT/report.html."""

    def work():
        _probe(None, None, None, "cross_entropy", None, None, Mode.eval, 5, None, None, 0, out)
        console.rule("surface: the plane of the training path (PCA), with the path drawn on it")
        _surface(kind="pca", steps=31, out=out)
        console.rule("race: who escapes the saddle of x² − y²?")
        _race(functions="saddle", starts=8, steps=150, strategies=False,
              optimizers="gd,momentum,adam,newton,saddle_free_newton,perturbed_gd", out=out)
        console.rule("doctor: a 10-layer sigmoid MLP that does not learn")
        _doctor(None, "vanishing", False, False, out, 0)
        console.rule("report: everything above on one page")
        _publish_report(out)

    _guard(work)

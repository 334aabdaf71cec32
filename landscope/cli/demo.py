"""`landscope demo`: the main job on the built-in default."""

from __future__ import annotations

from landscope.cli._common import (
    OUT,
    ModelRequest,
    OutOption,
    _guard,
    _publish_report,
    app,
    console,
)
from landscope.cli.doctor import _doctor
from landscope.cli.probe import ProbeRequest, _probe
from landscope.cli.race import RaceRequest, _race
from landscope.cli.surface import SurfaceRequest, _surface


@app.command()
def demo(out: OutOption = OUT):
    """The main job on the built-in default: train the MLP on the digits and probe where training
    stopped; draw the landscape around it with the training path; race optimisers away from a
    saddle; diagnose a 10-layer sigmoid network; then put all of it on one page,
    OUT/report.html."""

    def work():
        _probe(ModelRequest(), ProbeRequest(), out)
        console.rule("surface: the plane of the training path (PCA), with the path drawn on it")
        _surface(ModelRequest(), SurfaceRequest(directions="pca", resolution=31), out)
        console.rule("race: who escapes the saddle of x² − y²?")
        _race(RaceRequest(functions="saddle", starts=8, steps=150, strategies=False,
                          optimizers="gd,momentum,adam,newton,saddle_free_newton,perturbed_gd"),
              out)
        console.rule("doctor: a 10-layer sigmoid MLP that does not learn")
        _doctor(out, scenario="vanishing")
        console.rule("report: everything above on one page")
        _publish_report(out)

    _guard(work)

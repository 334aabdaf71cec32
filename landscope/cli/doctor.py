"""`landscope doctor`: diagnose a recorded run or a built-in scenario."""

from __future__ import annotations

import sys
from pathlib import Path

import typer

from landscope import io
from landscope.cli._common import (
    _guard,
    app,
    console,
)
from landscope.errors import BadInputError


@app.command()
def doctor(
    run_dir: Path = typer.Argument(None, help="A run directory recorded by landscope.Monitor "
                                   "(it holds monitor.json and monitor.csv)."),
    scenario: str = typer.Option(None, help="Train a built-in scenario (see --list-scenarios) "
                                 "under a Monitor and diagnose it."),
    remedy: bool = typer.Option(False, "--remedy", help="With --scenario: train the remedied "
                                "twin instead, which the doctor should pass."),
    list_scenarios: bool = typer.Option(False, "--list-scenarios", help="List the scenarios, "
                                        "what each shows and its remedy, then exit."),
    out: Path = typer.Option(Path("landscope-out"), help="With --scenario: the run directory "
                             "goes to OUT/doctor-NAME (or OUT/doctor-NAME-remedy)."),
    seed: int = typer.Option(0, help="With --scenario: seed of the initialisation and batches."),
):
    """Diagnose a training run: what went wrong, the numbers that show it, and what to do.
    Writes doctor.json into the run directory; exits 0 whether or not problems were found."""
    _guard(lambda: _doctor(run_dir, scenario, remedy, list_scenarios, out, seed))


def _doctor(run_dir, scenario, remedy, list_scenarios, out: Path, seed: int):
    from rich.table import Table

    from landscope.doctor import diagnose
    from landscope.doctor.report import diagnosis_report
    from landscope.doctor.scenarios import SCENARIOS, run_scenario

    if list_scenarios:
        table = Table("scenario", "what it trains", "expected finding", "remedy (--remedy)")
        for s in SCENARIOS.values():
            table.add_row(s.name, s.description, s.expect or "none", s.remedy or "—")
        console.print(table)
        return
    if (run_dir is None) == (scenario is None):
        raise BadInputError("give either a RUN_DIR or --scenario NAME (see --list-scenarios)")
    if remedy and scenario is None:
        raise BadInputError("--remedy applies to --scenario runs only")
    title = f"landscope doctor · {run_dir}"
    if scenario is not None:
        run_dir = out / f"doctor-{scenario}{'-remedy' if remedy else ''}"
        with console.status(f"training scenario {scenario}{' (remedied)' if remedy else ''}"):
            run_scenario(scenario, run_dir, remedy=remedy, seed=seed)
        title = f"landscope doctor · scenario {scenario}{' (remedied)' if remedy else ''}"
    diagnosis = diagnose(run_dir)
    path = io.write_result(run_dir, "doctor", {"diagnosis": diagnosis.to_dict(),
                                               "command": " ".join(sys.argv)}, name="doctor.json")
    console.print(diagnosis_report(diagnosis, title))  # after the result is safe on disk
    console.print(f"written: {path}")

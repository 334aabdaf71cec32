"""`landscope doctor`: diagnose a recorded run or a built-in scenario; with --try-remedies, try
the prescribed changes of training on the user's network against what the run did."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import typer

from landscope import io
from landscope.cli._common import (
    _guard,
    _load_data,
    _model_data_loss,
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
    seed: int = typer.Option(0, help="Seed of a --scenario's initialisation and batches, and "
                             "of the remedy trial."),
    try_remedies: bool = typer.Option(False, "--try-remedies", help="Then try the remedies "
                                      "that change the training, each against the run's own "
                                      "optimiser (the baseline), from --checkpoint on --model "
                                      "and --data (as landscope escape does)."),
    all_findings: bool = typer.Option(False, "--all-findings", help="With --try-remedies: the "
                                      "remedies of every finding, not only the primary one's."),
    model: str = typer.Option(None, help="With --try-remedies: the run's network, "
                              "'file.py:factory' or 'pkg.module:factory'."),
    checkpoint: Path = typer.Option(None, help="With --try-remedies: the run's weights (a "
                                    "state_dict saved with torch.save), where the trial starts."),
    data: str = typer.Option(None, help="With --try-remedies: the training data, "
                             "'pkg.module:factory' returning (X, y) or a DataLoader."),
    held_out: str = typer.Option(None, "--held-out", help="With --try-remedies: held-out "
                                 "data, as --data."),
    loss: str = typer.Option("cross_entropy", help="With --try-remedies: cross_entropy, mse, "
                             "model, or 'pkg.module:fn'."),
    steps: int = typer.Option(200, help="With --try-remedies: the budget per run, in gradient "
                              "evaluations."),
    seeds: int = typer.Option(3, help="With --try-remedies: runs per candidate."),
    batch_size: int = typer.Option(None, min=1, help="With --try-remedies: mini-batch size "
                                   "for (X, y) data (default: the run's recorded one)."),
    report: bool = typer.Option(False, "--report", help="Then write report.html into the run "
                                "directory (OUT with --scenario): its findings, the record's "
                                "curves and any remedy trial on one self-contained page."),
):
    """Diagnose a training run: what went wrong, the numbers that show it, and what to do.
    Writes doctor.json into the run directory; exits 0 whether or not problems were found.
    With --try-remedies, the remedies that change the training are then raced on your network
    from your checkpoint, with the run's own optimiser as the baseline (escape.json and its
    companions go next to doctor.json)."""
    trial = _TrialOptions(try_remedies, all_findings, model, checkpoint, data, held_out, loss,
                          steps, seeds, seed, batch_size)
    _guard(lambda: _doctor(run_dir, scenario, remedy, list_scenarios, out, seed, trial),
           report=(run_dir or out) if report and not list_scenarios else None)


@dataclass(frozen=True)
class _TrialOptions:
    wanted: bool
    all_findings: bool
    model: str | None
    checkpoint: Path | None
    data: str | None
    held_out: str | None
    loss: str
    steps: int
    seeds: int
    seed: int
    batch_size: int | None

    def check(self) -> None:
        """Options that need --try-remedies, and what --try-remedies needs, before any work."""
        given = [name for name, value in (("--model", self.model), ("--data", self.data),
                                          ("--checkpoint", self.checkpoint),
                                          ("--held-out", self.held_out)) if value is not None]
        if not self.wanted:
            if given or self.all_findings:
                raise BadInputError(f"{', '.join(given) or '--all-findings'} applies with "
                                    "--try-remedies only")
            return
        if self.checkpoint is None:
            raise BadInputError(
                "--try-remedies needs --checkpoint: a run directory holds the Monitor's numbers, "
                "not the model's weights. Save them where training stopped, "
                "torch.save(model.state_dict(), 'weights.pt'), and pass --checkpoint weights.pt")
        if self.model is None or self.data is None:
            raise BadInputError("--try-remedies needs --model (the network's factory, "
                                "'file.py:factory') and --data (its training data)")


def _doctor(run_dir, scenario, remedy, list_scenarios, out: Path, seed: int,
            trial: _TrialOptions | None = None):
    """The work of `landscope doctor` (the demo calls it without a remedy trial)."""
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
    if trial is not None:
        trial.check()
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
    if trial is not None and trial.wanted:
        _try_remedies(diagnosis, run_dir, trial)


def _try_remedies(diagnosis, run_dir: Path, options: _TrialOptions) -> None:
    """The trial of the diagnosis's training changes, the run's own optimiser as baseline."""
    from rich.table import Table

    from landscope import escape as trials
    from landscope.cli.escape import BATCH_SIZE, run_trial
    from landscope.data import is_tensor_pair
    from landscope.monitor import read_record

    if diagnosis.healthy:
        console.print("nothing to try: the doctor found no problem")
        return
    findings = diagnosis.findings if options.all_findings else diagnosis.findings[:1]
    plan = trials.remedy_plan((f.name, f.remedies) for f in findings)
    table = Table("finding", "remedy", "tried as", title="the doctor's remedies as candidates")
    for row in plan.tried:
        table.add_row(row["finding"], row["remedy"], ", ".join(row["candidates"]))
    for row in plan.not_tried:
        table.add_row(row["finding"], row["remedy"], f"[dim]not tried: {row['why']}[/]")
    console.print(table)
    if not plan.tried:
        console.print("nothing to try: no remedy changes the training")
        return
    meta = read_record(run_dir).meta
    baseline = trials.recorded_baseline(meta.get("optimizer") or {})
    net, data, loss_fn, _ = _model_data_loss(options.model, options.checkpoint, options.data,
                                             options.loss, run_dir)
    batch_size = options.batch_size
    if batch_size is None and is_tensor_pair(data):
        batch_size = meta.get("batch_size") or BATCH_SIZE
    held = None if options.held_out is None else _load_data(options.held_out,
                                                            next(net.parameters()).dtype)
    rate = "" if baseline.lr is None else f", lr {baseline.lr:g}"
    console.print(f"baseline: {baseline.description}{rate}")
    run_trial(net, loss_fn, data, run_dir, document={"remedies": plan.to_dict()},
              candidates=plan.candidates, optimizer=baseline, steps=options.steps,
              seeds=options.seeds, seed=options.seed, batch_size=batch_size, held_out=held)

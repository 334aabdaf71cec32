"""`landscope doctor`: diagnose a recorded run or a built-in scenario; with --try-remedies, try
the prescribed changes of training on the user's network against what the run did."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from landscope import io
from landscope.cli._common import (
    OUT,
    BudgetOption,
    HeldOutOption,
    LossOption,
    ModelRequest,
    OldBudgetOption,
    SeedOption,
    SeedsOption,
    _guard,
    _request,
    app,
    console,
    old_option,
)
from landscope.errors import BadInputError


@dataclass(frozen=True)
class _TrialOptions:
    """The remedy trial --try-remedies asks for: on the request's network, from its
    checkpoint, on its data."""

    wanted: bool = False
    all_findings: bool = False
    request: ModelRequest = ModelRequest()
    held_out: str | None = None
    evaluations: int = 200
    seeds: int = 3

    def check(self) -> None:
        """Options that need --try-remedies, and what --try-remedies needs, before any work."""
        request = self.request
        given = [name for name, value in (("--model", request.model), ("--data", request.data),
                                          ("--checkpoint", request.checkpoint),
                                          ("--held-out", self.held_out)) if value is not None]
        if not self.wanted:
            if given or self.all_findings:
                raise BadInputError(f"{', '.join(given) or '--all-findings'} applies with "
                                    "--try-remedies only")
            return
        if request.checkpoint is None:
            raise BadInputError(
                "--try-remedies needs --checkpoint: a run directory holds the Monitor's numbers, "
                "not the model's weights. Save them where training stopped, "
                "torch.save(model.state_dict(), 'weights.pt'), and pass --checkpoint weights.pt")
        if request.model is None or request.data is None:
            raise BadInputError("--try-remedies needs --model (the network's factory, "
                                "'file.py:factory') and --data (its training data)")


@app.command()
def doctor(
    context: typer.Context,
    run_dir: Annotated[Path | None, typer.Argument(
        help="A run directory recorded by landscope.Monitor (it holds monitor.json and "
             "monitor.csv).")] = None,
    scenario: Annotated[str | None, typer.Option(
        help="Train a built-in scenario (see --list-scenarios) under a Monitor and diagnose "
             "it.")] = None,
    remedy: Annotated[bool, typer.Option(
        "--remedy", help="With --scenario: train the remedied twin instead, which the doctor "
                         "should pass.")] = False,
    list_scenarios: Annotated[bool, typer.Option(
        "--list-scenarios", help="List the scenarios, what each shows and its remedy, then "
                                 "exit.")] = False,
    out: Annotated[Path, typer.Option(
        help="With --scenario: the run directory goes to OUT/doctor-NAME (or "
             "OUT/doctor-NAME-remedy).")] = OUT,
    seed: SeedOption = ModelRequest.seed,
    try_remedies: Annotated[bool, typer.Option(
        "--try-remedies", help="Then try the remedies that change the training, each against "
                               "the run's own optimiser (the baseline), from --checkpoint on "
                               "--model and --data (as landscope escape does); --held-out, "
                               "--loss, --evaluations, --seeds and --batch-size apply to "
                               "it.")] = False,
    all_findings: Annotated[bool, typer.Option(
        "--all-findings", help="With --try-remedies: the remedies of every finding, not only "
                               "the primary one's.")] = False,
    model: Annotated[str | None, typer.Option(
        help="With --try-remedies: the run's network, 'file.py:factory' or "
             "'pkg.module:factory'.")] = None,
    checkpoint: Annotated[Path | None, typer.Option(
        help="With --try-remedies: the run's weights (a state_dict saved with torch.save), "
             "where the trial starts.")] = None,
    data: Annotated[str | None, typer.Option(
        help="With --try-remedies: the training data, 'pkg.module:factory' returning (X, y) "
             "or a DataLoader.")] = None,
    held_out: HeldOutOption = None,
    loss: LossOption = ModelRequest.loss,
    evaluations: BudgetOption = _TrialOptions.evaluations,
    steps: OldBudgetOption = None,
    seeds: SeedsOption = _TrialOptions.seeds,
    batch_size: Annotated[int | None, typer.Option(
        min=1, help="With --try-remedies: mini-batch size for (X, y) data (default: the run's "
                    "recorded one).")] = None,
    report: Annotated[bool, typer.Option(
        "--report", help="Then write report.html into the run directory (OUT with --scenario): "
                         "its findings, the record's curves and any remedy trial on one "
                         "self-contained page.")] = False,
):
    """Diagnose a training run: what went wrong, the numbers that show it, and what to do.
    Writes doctor.json into the run directory; exits 0 whether or not problems were found.
    With --try-remedies, the remedies that change the training are then raced on your network
    from your checkpoint, with the run's own optimiser as the baseline (escape.json and its
    companions go next to doctor.json)."""
    if list_scenarios:
        _guard(_list_scenarios)
        return
    evaluations = old_option(context, steps, "--steps", evaluations, "--evaluations")
    trial = _TrialOptions(try_remedies, all_findings, _request(ModelRequest, locals()),
                          held_out, evaluations, seeds)
    _guard(lambda: _doctor(out, run_dir=run_dir, scenario=scenario, remedy=remedy, seed=seed,
                           trial=trial), report=(run_dir or out) if report else None)


def _list_scenarios() -> None:
    from rich.table import Table

    from landscope.doctor.scenarios import SCENARIOS

    table = Table("scenario", "what it trains", "expected finding", "remedy (--remedy)")
    for s in SCENARIOS.values():
        table.add_row(s.name, s.description, s.expect or "none", s.remedy or "—")
    console.print(table)


def _doctor(out: Path, *, run_dir: Path | None = None, scenario: str | None = None,
            remedy: bool = False, seed: int = 0, trial: _TrialOptions = _TrialOptions()):
    """The work of `landscope doctor` (the demo calls it on a scenario, without a trial)."""
    from landscope.doctor import diagnose
    from landscope.doctor.scenarios import run_scenario
    from landscope.render import diagnosis_report

    if (run_dir is None) == (scenario is None):
        raise BadInputError("give either a RUN_DIR or --scenario NAME (see --list-scenarios)")
    if remedy and scenario is None:
        raise BadInputError("--remedy applies to --scenario runs only")
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
    if trial.wanted:
        _try_remedies(diagnosis, run_dir, trial)


def _try_remedies(diagnosis, run_dir: Path, options: _TrialOptions) -> None:
    """The trial of the diagnosis's training changes, the run's own optimiser as baseline."""
    from rich.table import Table

    from landscope import escape as trials
    from landscope.cli.escape import BATCH_SIZE, run_trial, trial_inputs
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
    net, loss_fn, data, held, batch_size = trial_inputs(
        options.request, options.held_out, run_dir, meta.get("batch_size") or BATCH_SIZE)
    rate = "" if baseline.lr is None else f", lr {baseline.lr:g}"
    console.print(f"baseline: {baseline.description}{rate}")
    run_trial(net, loss_fn, data, run_dir, document={"remedies": plan.to_dict()},
              candidates=plan.candidates, optimizer=baseline, evaluations=options.evaluations,
              seeds=options.seeds, seed=options.request.seed, batch_size=batch_size,
              held_out=held)

"""``diagnose``: from a monitored run to a ranked list of findings with their evidence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np

from landscope.doctor.findings import Diagnosis, rank
from landscope.doctor.knowledge import in_use
from landscope.doctor.rules import Run, Thresholds, run_rules
from landscope.errors import BadInputError
from landscope.monitor import Monitor
from landscope.monitor.record import Record, read_record


def diagnose(source: Record | Monitor | str | Path,
             thresholds: Thresholds | None = None) -> Diagnosis:
    """Run every rule over a run's record and rank what they find.

    Parameters
    ----------
    source: a run directory written by a Monitor, a Monitor (open or closed: its record so far,
        pending steps flushed first), or a Record.
    thresholds: where the rules fire (default :class:`~landscope.doctor.rules.Thresholds`).

    Returns
    -------
    A :class:`~landscope.doctor.findings.Diagnosis`: ranked findings (empty when healthy) and a
    summary of the run. A remedy the run already uses (its make-up is in the record) is left out
    of a finding's remedies and listed in its ``in_use``.

    Examples
    --------
    >>> import numpy as np
    >>> steps = np.arange(200.0)
    >>> record = Record({"settings": {"window": 100}},
    ...                 {"step": steps, "loss": 2.3 * np.exp(-steps / 50), "non_finite": 0 * steps})
    >>> diagnose(record).healthy
    True
    """
    if isinstance(source, Monitor):
        source.flush()  # an open Monitor's last steps may still be pending
        record = source.record
    elif isinstance(source, Record):
        record = source
    elif isinstance(source, (str, Path)):
        record = read_record(source)
    else:
        raise BadInputError(f"source={source!r}; pass a run directory, a Monitor or a Record, "
                            f"not a {type(source).__name__}")
    if len(record) == 0:
        raise BadInputError("the record holds no steps; call monitor.step(loss) in the loop "
                            "and close the Monitor (or use it as a context manager)")
    run = Run(record, thresholds or Thresholds())  # once: the rules and the summary share it
    findings = [replace(f, in_use=in_use(f.name, record.meta)) for f in run_rules(run)]
    return Diagnosis(rank(findings), _summary(record, run))


def _summary(record: Record, run: Run) -> dict:
    """The run at a glance. Its losses are the recorded ones: ``first_loss`` is that of the
    initial weights (step 0, or the first finite one), not an average over early steps that a
    fast divergence would already inflate; ``peak_loss`` the largest finite one."""
    loss = record["loss"]
    finite = np.flatnonzero(np.isfinite(loss))
    peak = finite[np.argmax(loss[finite])] if finite.size else None
    meta = record.meta
    return {
        "steps": int(record.steps[-1]) + 1,
        "model": meta.get("model"),
        "n_parameters": meta.get("n_parameters"),
        "optimizer": (meta.get("optimizer") or {}).get("name"),
        "lr": run.median("lr"),
        "lower_bound": run.lower,
        "first_loss": float(loss[finite[0]]) if finite.size else None,
        "final_loss": float(np.median(loss[finite[-10:]])) if finite.size else None,
        "peak_loss": None if peak is None else float(loss[peak]),
        "peak_step": None if peak is None else int(record.steps[peak]),
        "final_window": run.window_steps(),
        "final_status": run.status,
        "final_progress": run.progress,
        "non_finite_step": run.broken_at,
        "curvature_measurements": len(meta.get("events", [])),
        "monitor_seconds": meta.get("seconds"),
    }

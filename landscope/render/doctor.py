"""The doctor's report of a Diagnosis, for the terminal (rich) and as plain text.

Each finding shows what was found (with its numbers), the evidence and the steps where it was
seen, why it matters in the landscape picture, and the remedies, most effective first. A finding
that a higher-ranked one explains is shown briefly, pointing to its cause.
"""

from __future__ import annotations

import math

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from landscope.doctor.findings import Diagnosis, Finding
from landscope.doctor.knowledge import TEXT

_STYLE = {"critical": "bold red", "warning": "yellow"}


def diagnosis_report(diagnosis: Diagnosis, title: str | None = None) -> Group:
    """A rich renderable: a summary panel, then one panel per finding in rank order."""
    panels = [_summary_panel(diagnosis, title)]
    for rank, finding in enumerate(diagnosis.findings, 1):
        panels.append(_finding_panel(rank, finding))
    return Group(*panels)


def report_text(diagnosis: Diagnosis, title: str | None = None, width: int = 100) -> str:
    """The same report as plain text (for logs, files and the README).

    Examples
    --------
    >>> print(report_text(Diagnosis([], {"model": "MLP", "steps": 10}), width=60).splitlines()[0])
    ╭──────────────────── landscope doctor ────────────────────╮
    """
    console = Console(record=True, width=width, file=_Discard(), color_system=None)
    console.print(diagnosis_report(diagnosis, title))
    return console.export_text()


def _summary_panel(diagnosis: Diagnosis, title: str | None) -> Panel:
    s = diagnosis.summary
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("run", f"{s.get('model')} ({s.get('n_parameters') or 0:,} parameters), "
                        f"{s.get('optimizer')} lr {_num(s.get('lr'))}, {s.get('steps')} steps")
    grid.add_row("loss", loss_line(s))
    if s.get("non_finite_step") is not None:
        grid.add_row("non-finite", f"from step {s['non_finite_step']}")
    grid.add_row("curvature", f"{s.get('curvature_measurements', 0)} measurement(s) on the "
                              "held batch")
    counts = {level: sum(f.severity == level for f in diagnosis.findings)
              for level in ("critical", "warning")}
    if diagnosis.healthy:
        verdict = Text("healthy: no problem found", style="bold green")
    else:
        verdict = Text(f"{counts['critical']} critical, {counts['warning']} warning(s); primary: "
                       f"{diagnosis.primary.title}", style=_STYLE[diagnosis.primary.severity])
    grid.add_row("verdict", verdict)
    return Panel(grid, title=title or "landscope doctor",
                 border_style="green" if diagnosis.healthy else _STYLE[diagnosis.primary.severity])


def loss_line(summary: dict) -> str:
    """The loss from the first step to the end: ``first → final``, the change relative to the
    first excess loss (E = L − L_low: "fell 98 %", or "rose ×4.2e+03" when it grew), the peak
    when far above both ends, and the final window's status.

    Examples
    --------
    >>> loss_line({"first_loss": 1.52, "final_loss": 6463.0, "peak_loss": 6.6e8, "peak_step": 40,
    ...            "final_status": "stalled", "final_progress": 0.001})
    '1.52 → 6463 (rose ×4,252; peak 6.6e+08 at step 40); final window stalled (progress 0.1%)'
    >>> loss_line({"first_loss": 2.3, "final_loss": 0.23, "final_status": "rising",
    ...            "final_progress": -30000.0})
    '2.3 → 0.23 (fell 90.0%); final window rising'
    """
    first, final = summary.get("first_loss"), summary.get("final_loss")
    if first is None or final is None:
        return "no finite loss recorded"
    lower = summary.get("lower_bound") or 0.0
    text = f"{_num(first, 4)} → {_num(final, 4)}"
    notes = []
    excess = first - lower
    if excess > 0 and final > first:
        notes.append(f"rose ×{_times((final - lower) / excess)}")
    elif excess > 0:
        notes.append(f"fell {(first - final) / excess:.1%}")
    peak = summary.get("peak_loss")
    if peak is not None and excess > 0 and peak - lower > 10 * max(excess, final - lower):
        notes.append(f"peak {peak:.3g} at step {summary.get('peak_step')}")
    if notes:
        text += f" ({'; '.join(notes)})"
    status, progress = summary.get("final_status"), summary.get("final_progress")
    text += f"; final window {status}"
    if status in ("falling", "stalled") and progress is not None and math.isfinite(progress):
        text += f" (progress {progress:.1%})"  # the window's own progress; meaningless when rising
    return text


def _finding_panel(rank: int, f: Finding) -> Panel:
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    grid.add_row("found", f.summary)
    grid.add_row("evidence", _evidence(f.evidence))
    if f.steps:
        grid.add_row("steps", "–".join(str(s) for s in f.steps) if len(f.steps) == 2
                     else ", ".join(str(s) for s in f.steps))
    if f.explained_by is None:
        grid.add_row("why", f.explanation)
        grid.add_row("remedies", "\n".join(f"{i}. {r}" for i, r in enumerate(f.remedies, 1)))
        if f.in_use:
            grid.add_row("in use", f"already in use: {', '.join(dict.fromkeys(f.in_use.values()))}"
                         f" ({len(f.in_use)} remed{'y' if len(f.in_use) == 1 else 'ies'} "
                         "left out)")
    else:
        grid.add_row("cause", f"a consequence of {TEXT[f.explained_by]['title'].lower()} "
                              f"({f.explained_by}, above)")
    title = f"{rank}. {f.severity.upper()} · {f.title}"
    return Panel(grid, title=title, title_align="left", border_style=_STYLE[f.severity])


def _evidence(evidence: dict) -> str:
    return " · ".join(f"{key} {_value(value)}" for key, value in evidence.items())


def _value(value) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, float):
        return _num(value)
    return str(value)


def _times(factor: float) -> str:
    return f"{factor:,.0f}" if 100 <= factor < 1e6 else f"{factor:.3g}"


def _num(value, digits: int = 3) -> str:
    if value is None:
        return "—"
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


class _Discard:
    """A file that swallows what it is given (the recording console keeps its own copy)."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass

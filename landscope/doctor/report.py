"""The doctor's report, for the terminal (rich) and as plain text. Reads a Diagnosis only.

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
    progress = s.get("final_progress")
    start, end = _num(s.get("initial_loss"), 4), _num(s.get("final_loss"), 4)
    grid.add_row("loss", f"{start} → {end}; final window {s.get('final_status')}"
                 + ("" if progress is None or math.isnan(progress)
                    else f" (progress {progress:.1%})"))
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
    else:
        grid.add_row("cause", f"a consequence of {f.explained_by} (above)")
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

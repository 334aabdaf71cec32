"""The terminal tables of a race: one per function, each optimiser's success, cost and ends."""

from __future__ import annotations

from rich.table import Table

SHORT = {"local_min": "min", "local_max": "max", "not_critical": "none", "degenerate": "degen"}
"""Where runs ended, shortened to fit a column."""


def race_tables(summary: list[dict], functions) -> list[Table]:
    """A table per function of ``functions`` from the race's ``summary`` rows."""
    tables = []
    for name in functions:
        rows = [row for row in summary if row["function"] == name]
        table = Table("optimiser", "lr", "success", "steps", "evals", "diverged", "ended at",
                      title=f"{name} — goal: {rows[0]['goal']} (medians over successes)")
        for row in rows:
            ends = row["ends"]
            for long, brief in SHORT.items():
                ends = ends.replace(long, brief)
            table.add_row(row["optimizer"], "—" if row["lr"] is None else f"{row['lr']:.3g}",
                          "—" if row["success_rate"] is None else
                          f"{100 * row['success_rate']:.0f}%", _number(row["median_steps"]),
                          _number(row["median_evaluations"]), str(row["diverged"]), ends)
        tables.append(table)
    return tables


def _number(value) -> str:
    return "—" if value is None else f"{value:g}"

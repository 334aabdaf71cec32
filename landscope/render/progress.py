"""``bar(label, unit)``: the rich line that draws a :class:`landscope.progress.Progress`.

One adapter for every command: a bar with ``done/total unit`` where the total is known, the count
alone where it is not (an eigen-solver stopped by its tolerance), the note, and the elapsed time.
The line is transient: it goes when the work ends, leaving the command's own output.
"""

from collections.abc import Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from landscope.progress import Progress as ProgressCallback


@contextmanager
def bar(label: str, unit: str = "", console: Console | None = None
        ) -> Iterator[ProgressCallback]:
    """A transient progress line; yields the ``progress(done, total, note)`` callback to pass on.

    >>> import io
    >>> with bar("Hessian eigenvectors", "products", Console(file=io.StringIO())) as report:
    ...     report(3, None, "residual 1.0e-02")
    ...     report(10, 10)
    """
    count = "{task.completed:.0f}{task.fields[of]}" + (f" {unit}" if unit else "")
    columns = (TextColumn(label), BarColumn(), TextColumn(count), TextColumn("{task.fields[note]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console or Console(stderr=True), transient=True) as line:
        task = line.add_task(label, total=None, of="", note="")

        def report(done: int, total: int | None, note: str = "") -> None:
            line.update(task, completed=done, total=total, note=note,
                        of="" if total is None else f"/{total}")

        yield report

"""`landscope report`: one self-contained HTML page of everything in a run directory.

The page gathers every landscope result below the directory (``result.json`` of a probe,
``surface.json``, ``race.json``, ``escape.json``, ``doctor.json``, ``study-*.json``) and shows each
with its evidence: the verdict, the spectrum, the surface with its trajectory, the race and remedy
tables, the doctor's findings with the record's curves, the studies' checks. plotly.js and the
pictures are inlined, so the page opens without a network; every string read from a file is
escaped (:mod:`landscope.report.page`).
"""

from __future__ import annotations

import json
from pathlib import Path

from landscope import io
from landscope.errors import BadInputError
from landscope.report.page import Html, document, tag
from landscope.report.sections import BUILDERS, TITLES, headline

NAME = "report.html"


def write_report(run_dir: str | Path, path: str | Path | None = None) -> Path:
    """Write the report of ``run_dir`` to ``path`` (default ``run_dir/report.html``) atomically.

    Raises :class:`BadInputError` when ``run_dir`` is not a directory or holds no landscope
    result.

    Examples
    --------
    >>> import tempfile
    >>> write_report(tempfile.mkdtemp())
    Traceback (most recent call last):
    ...
    landscope.errors.BadInputError: ... holds no landscope result ...
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise BadInputError(f"run_dir={str(run_dir)!r} is not a directory; give the --out "
                            "directory of a landscope command (landscope probe --out DIR, then "
                            "landscope report DIR)")
    found, unreadable = collect(run_dir)
    if not found:
        raise BadInputError(f"{run_dir} holds no landscope result (result.json, surface.json, "
                            "race.json, escape.json, doctor.json or study-*.json); run a "
                            "landscope command with --out pointing there first")
    sections, navigation, glance = [], [], []
    for index, (source, result) in enumerate(found):
        anchor = f"{result['kind']}-{index}"
        try:
            sections.append(BUILDERS[result["kind"]](result, source, anchor))
        except (BadInputError, KeyError) as error:  # a damaged file, or one of another version
            unreadable.append((str(source.relative_to(run_dir)),
                               f"could not be shown: {type(error).__name__}: {error}"))
            continue
        where = source.parent.relative_to(run_dir)
        label = TITLES[result["kind"]] + ("" if where == Path(".") else f" ({where})")
        navigation.append((anchor, label))
        glance.append(tag("li", tag("a", label, href=f"#{anchor}"), ": ", headline(result)))
    sections.insert(0, tag("section", tag("h2", "At a glance"), tag("ul", glance), id="glance"))
    if unreadable:
        sections.append(tag("section", tag("h2", "Files that could not be read"),
                            tag("ul", (tag("li", f"{name}: {why}") for name, why in unreadable)),
                            id="unreadable"))
    page = document(f"landscope report · {run_dir.resolve().name}", sections, navigation)
    path = Path(path) if path is not None else run_dir / NAME
    with io.atomic_write(path, "w", encoding="utf-8") as stream:
        stream.write(page)
    return path


def collect(run_dir: Path) -> tuple[list[tuple[Path, dict]], list[tuple[str, str]]]:
    """The results below ``run_dir`` a section is built for, in the report's order (kind, then
    path), and the landscope files that could not be read, with why."""
    found, unreadable = [], []
    for source in sorted(run_dir.rglob("*.json")):
        try:
            header = json.loads(source.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            continue  # not a landscope result: a user's own file
        if not isinstance(header, dict) or header.get("schema") != io.SCHEMA:
            continue
        try:
            result = io.read_result(source)
        except BadInputError as error:
            unreadable.append((str(source.relative_to(run_dir)), str(error)))
            continue
        if result.get("kind") in BUILDERS:
            found.append((source, result))
    order = list(BUILDERS)
    found.sort(key=lambda item: (order.index(item[1]["kind"]), str(item[0])))
    return found, unreadable


__all__ = ["Html", "NAME", "collect", "write_report"]

"""HTML for the report, escaped by construction.

Every piece of the page is built by :func:`tag`: its text children and attribute values are
escaped unless they are :class:`Html` (markup this module built), so a string from a result file
(a model name, a loss, a command line, a finding's evidence) can never become markup. The only
markup taken whole is plotly's own (its figure JSON escapes ``<``, ``>`` and ``/``) and the
plotly.js bundle, inlined once so that the page needs no network when it is opened.
"""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Iterable
from pathlib import Path

STYLE = """
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 1200px; padding: 1em 2em;
       color: #1d2330; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; }
h2 { border-bottom: 2px solid #d5dae3; padding-bottom: 0.2em; margin-top: 2em; }
h3 { margin-bottom: 0.3em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.6em 0; font-size: 0.92em; }
th, td { border: 1px solid #d5dae3; padding: 0.25em 0.6em; text-align: left;
         vertical-align: top; }
th { background: #f1f3f7; }
td.number { text-align: right; font-variant-numeric: tabular-nums; }
.verdict { font-size: 1.3em; font-weight: bold; padding: 0.4em 0.8em; border-radius: 6px;
           display: inline-block; }
.local_min { background: #d9f2dd; } .saddle { background: #fff1c2; }
.local_max { background: #f9d3d3; } .degenerate { background: #efd9f5; }
.not_critical { background: #d6eef5; } .partial { background: #eeeeee; }
.critical { border-left: 6px solid #c62828; } .warning { border-left: 6px solid #f9a825; }
.info { border-left: 6px solid #1565c0; }
.finding { padding: 0.3em 1em; margin: 0.8em 0; background: #fafbfc; }
.muted { color: #5f6b7a; font-size: 0.9em; }
.pass { color: #2e7d32; font-weight: bold; } .fail { color: #c62828; font-weight: bold; }
code, .command { font-family: ui-monospace, monospace; font-size: 0.88em; }
img { max-width: 100%; border: 1px solid #d5dae3; }
"""


class Html(str):
    """Markup built here: taken as is by :func:`tag`; any other string is escaped."""


def tag(name: str, *children, **attributes) -> Html:
    """``<name attributes>children</name>``; ``class_`` stands for ``class``. A child may be a
    string (escaped), :class:`Html`, a number, None (left out) or an iterable of children."""
    attrs = "".join(f' {key.rstrip("_").replace("_", "-")}="{html.escape(str(value))}"'
                    for key, value in attributes.items() if value is not None)
    return Html(f"<{name}{attrs}>{_join(children)}</{name}>")


def _join(children) -> str:
    parts = []
    for child in children:
        if child is None:
            continue
        if isinstance(child, Html):
            parts.append(child)
        elif isinstance(child, str):
            parts.append(html.escape(child))
        elif isinstance(child, Iterable):
            parts.append(_join(child))
        else:
            parts.append(html.escape(number(child)))
    return "".join(parts)


def number(value, digits: int = 4) -> str:
    """A number as the terminal prints it: 4 significant digits, integers whole, — for none."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if math.isnan(value):
            return "—"
        return f"{value:.{digits}g}"
    return str(value)


def table(header: list[str] | None, rows: Iterable[Iterable], *,
          caption: str | None = None) -> Html:
    """A table (``header`` None: none); number cells are right-aligned, formatted by
    :func:`number`."""
    body = [tag("tr", (tag("td", number(cell), class_="number")
                       if isinstance(cell, int | float) and not isinstance(cell, bool)
                       else tag("td", cell) for cell in row)) for row in rows]
    return tag("table", tag("caption", caption) if caption else None,
               tag("tr", (tag("th", h) for h in header)) if header else None, body)


def pairs(items: Iterable[tuple[str, object]]) -> Html:
    """A two-column table of names and values (values that are dicts or lists shown compactly)."""
    return table(None, ((key, number(_compact(value))) for key, value in items))


def _compact(value):
    if isinstance(value, dict):
        return ", ".join(f"{k} {number(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(number(v) for v in value)
    return value


def figure(fig, div_id: str) -> Html:
    """A plotly figure as a div and its drawing script (plotly.js itself is in the page head)."""
    return Html(fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                            config={"displaylogo": False, "responsive": True}))


def picture(path: Path, alt: str) -> Html:
    """A PNG from the run directory, inlined as a data URI so the page stands alone."""
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return Html(f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">')


def document(title: str, sections: list[Html], navigation: list[tuple[str, str]]) -> Html:
    """The whole page: head with the style and plotly.js, a navigation bar, the sections."""
    from plotly.offline import get_plotlyjs

    head = Html(f'<meta charset="utf-8"><meta name="viewport" content="width=device-width">'
                f"<title>{html.escape(title)}</title><style>{STYLE}</style>"
                f'<script type="text/javascript">{get_plotlyjs()}</script>')
    nav = tag("nav", (tag("a", label, href=f"#{anchor}") for anchor, label in navigation))
    return Html("<!DOCTYPE html>" + tag("html", Html(f"<head>{head}</head>"),
                                        tag("body", tag("h1", title), nav, sections), lang="en"))

"""Pictures are files like any other: written through :func:`landscope.io.atomic_write`, so a
picture that exists is complete and an interrupt while drawing leaves no partial file."""

from __future__ import annotations

from pathlib import Path

from landscope import io


def save_figure(fig, path: str | Path, *, dpi: int = 110) -> Path:
    """Save a matplotlib figure atomically, in the format its suffix names (png, svg, pdf)."""
    path = Path(path)
    with io.atomic_write(path) as stream:
        fig.savefig(stream, format=path.suffix.lstrip(".").lower(), dpi=dpi)
    return path


def save_page(fig, path: str | Path, **options) -> Path:
    """Save a plotly figure as an HTML page atomically (``options`` go to ``write_html``)."""
    path = Path(path)
    with io.atomic_write(path, "w", encoding="utf-8") as stream:
        fig.write_html(stream, **options)
    return path

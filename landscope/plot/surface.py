"""Pictures of a :class:`~landscope.surface.Surface`: contour, 3-D, 1-D profile (matplotlib), and an
interactive plotly page (surface + contour, values on hover).

Figures are built on ``matplotlib.figure.Figure`` rather than pyplot, so nothing here touches the
global pyplot state or needs a display; :func:`save_all` and :func:`html` write their files
atomically (a picture that exists is complete), and ``fig.savefig(path)`` works on any of them.
What needs care is honesty, not drawing: a trajectory is drawn with the share of it the plane holds,
a budgeted surface shows its stated error and which points were computed, and the log scale of a
loss that is not positive is drawn as log₁₀(L − L_min + δ) and labelled so.

The colour scale is chosen from the values unless forced (``log=True`` or ``False``): a loss
whose range spans more than :data:`AUTO_LOG_DECADES` decades (max/min for a positive loss; else
(max − min)/(median − min)) is drawn on a log scale, since on a linear one everything but the
highest walls shares one colour; the colour bar says which scale was chosen and why.
"""

from __future__ import annotations

from html import escape
from pathlib import Path

import numpy as np
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure

from landscope._deprecated import old_names
from landscope.errors import BadInputError
from landscope.plot._files import save_figure, save_page
from landscope.surface import Surface

AUTO_LOG_DECADES = 1.5


def contour(surf: Surface, *, log: bool | None = None, levels: int = 30, trajectory: bool = True,
            title: str | None = None) -> Figure:
    """Filled contour of a 2-D surface, with the trajectory, marks and (if budgeted) its error.

    Examples
    --------
    >>> import torch, landscope as ls
    >>> from landscope.surface import surface
    >>> obj = ls.Objective.from_function(lambda x: x[0]**2 - x[1]**2, [0.0, 0.0])
    >>> plane = [torch.tensor([1., 0.]), torch.tensor([0., 1.])]
    >>> fig = contour(surface(obj, plane, resolution=9))
    >>> len(fig.axes)  # the contour and its colour bar
    2
    """
    _need(surf, 2, "contour")
    budgeted = surf.error is not None
    fig = Figure(figsize=(11.5 if budgeted else 6.4, 5.2), layout="constrained")
    ax = fig.add_subplot(1, 2 if budgeted else 1, 1)
    a, b = surf.axes
    Z, label, norm, note = _scaled(surf.values, log)
    filled = ax.contourf(a, b, Z.T, levels=_levels(Z, levels, norm is not None), norm=norm,
                         cmap="viridis")
    ax.contour(a, b, Z.T, levels=filled.levels, colors="k", linewidths=0.3, alpha=0.4)
    bar = fig.colorbar(filled, ax=ax, label=_noted(label, note), ticks=filled.levels[::3],
                       format="%.3g")
    bar.minorticks_off()
    ax.plot([0], [0], marker="+", color="w", markersize=12, mew=2)
    _marks(ax, surf)
    if trajectory and surf.projection is not None:
        _trajectory(ax, surf)
    ax.set_xlabel(_axis_label(surf, 0))
    ax.set_ylabel(_axis_label(surf, 1))
    ax.set_title(title or _title(surf))
    if budgeted:
        right = fig.add_subplot(1, 2, 2)
        shown = right.pcolormesh(a, b, surf.error.T, cmap="magma", shading="nearest")
        fig.colorbar(shown, ax=right, label="stated error (≈95 %)")
        i, j = np.nonzero(surf.evaluated)
        right.plot(a[i], b[j], ".", color="w", markersize=2, label="evaluated")
        right.set_title(f"error: {surf.meta['points_evaluated']} of {surf.values.size} points "
                        f"evaluated, cost {surf.meta['cost_full_passes']:.0f} full passes")
        right.legend(loc="upper right", fontsize=8)
        right.set_xlabel(_axis_label(surf, 0))
    return fig


def surface3d(surf: Surface, *, log: bool | None = None, title: str | None = None) -> Figure:
    """A 3-D rendering of a 2-D surface (log₁₀ of the loss on a log scale).

    Matplotlib's layout does not make room for 3-D axis labels, so the axes carry short names
    (α, β) and a caption below says what they are.
    """
    _need(surf, 2, "3-D surface")
    fig = Figure(figsize=(7, 6), layout="constrained")
    ax = fig.add_subplot(projection="3d")
    A, B = np.meshgrid(*surf.axes, indexing="ij")
    Z, label, note = _logged(surf.values, log)
    ax.plot_surface(A, B, Z, cmap="viridis", linewidth=0, antialiased=True, rstride=1, cstride=1)
    ax.set_xlabel("α")
    ax.set_ylabel("β")
    ax.set_zlabel(label)
    ax.set_box_aspect(None, zoom=0.9)
    ax.set_title(title or _title(surf))
    fig.supxlabel("\n".join([_axis_label(surf, 0), _axis_label(surf, 1)] +
                            ([_noted(f"height: {label}", note)] if note else [])), fontsize=9)
    return fig


def profile(surf: Surface, *, log: bool | None = None, title: str | None = None) -> Figure:
    """A 1-D surface as a curve, with its stated error band when budgeted."""
    _need(surf, 1, "profile")
    fig = Figure(figsize=(6.4, 4.2), layout="constrained")
    ax = fig.add_subplot()
    t = surf.axes[0]
    Z, label, norm, note = _scaled(surf.values, log)
    ax.plot(t, Z, color="C0", label="loss")
    if surf.error is not None:
        ax.fill_between(t, Z - surf.error, Z + surf.error, color="C0", alpha=0.25,
                        label="stated error")
    _marks(ax, surf)
    if norm is not None:
        ax.set_yscale("log")
    ax.set_xlabel(_axis_label(surf, 0))
    ax.set_ylabel(_noted(label, note))
    ax.set_title(title or _title(surf))
    ax.legend()
    return fig


def html(surf: Surface, path: str | Path, *, log: bool | None = None, cdn: bool = False) -> Path:
    """An interactive plotly page of :func:`interactive_figure`.

    The page embeds plotly.js (works offline, ~4 MB) unless ``cdn`` loads it from the web.
    """
    return save_page(interactive_figure(surf, log=log), path,
                     include_plotlyjs="cdn" if cdn else True)


def interactive_figure(surf: Surface, *, log: bool | None = None):
    """A plotly figure: 3-D surface beside a contour with the trajectory, values on hover (1-D:
    a curve). Titles are escaped: plotly reads tags in its text, and a model's name is the
    user's."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    values, label, note = _logged(surf.values, log)
    names = [_axis_label(surf, i) for i in range(surf.values.ndim)]
    if surf.values.ndim == 1:
        fig = go.Figure(go.Scatter(x=surf.axes[0], y=values, mode="lines+markers",
                                   hovertemplate="t=%{x:.4g}<br>" + label + "=%{y:.6g}"))
        fig.update_layout(xaxis_title=names[0], yaxis_title=label)
    else:
        a, b = surf.axes
        hover = "α=%{x:.4g}<br>β=%{y:.4g}<br>" + label + "=%{z:.6g}<extra></extra>"
        fig = make_subplots(rows=1, cols=2, specs=[[{"type": "surface"}, {"type": "xy"}]],
                            subplot_titles=("surface", "contour"))
        fig.add_trace(go.Surface(x=a, y=b, z=values.T, colorscale="Viridis", showscale=False,
                                 hovertemplate=hover), 1, 1)
        fig.add_trace(go.Contour(x=a, y=b, z=values.T, colorscale="Viridis", ncontours=30,
                                 colorbar={"title": label}, hovertemplate=hover), 1, 2)
        if surf.projection is not None:
            xy = surf.projection.coords
            fig.add_trace(go.Scatter(x=xy[:, 0], y=xy[:, 1], mode="lines+markers",
                                     line={"color": "white"}, name=f"trajectory "
                                     f"({100 * surf.projection.explained:.1f} % in the plane)",
                                     showlegend=True), 1, 2)
        fig.update_xaxes(title_text=names[0], row=1, col=2)
        fig.update_yaxes(title_text=names[1], row=1, col=2)
    fig.update_layout(title=escape(_noted(_title(surf), note)), height=560, width=1150)
    return fig


def save_all(surf: Surface, directory: str | Path, *, name: str = "surface",
           formats=("png",), log: bool | None = None, interactive: bool = True) -> list[Path]:
    """Write every picture of a surface into ``directory``, each atomically; returns the paths.

    2-D: ``{name}-contour.{fmt}`` and ``{name}-3d.{fmt}``; 1-D: ``{name}-profile.{fmt}``; and
    ``{name}.html`` when ``interactive``. ``log``: force the colour scale (None: automatic).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if surf.values.ndim == 2:
        figures = {"contour": contour(surf, log=log), "3d": surface3d(surf, log=log)}
    else:
        figures = {"profile": profile(surf, log=log)}
    paths = []
    for kind, fig in figures.items():
        for fmt in formats:
            paths.append(save_figure(fig, directory / f"{name}-{kind}.{fmt}"))
    if interactive:
        paths.append(html(surf, directory / f"{name}.html", log=log))
    return paths


# ---------------------------------------------------------------------- helpers
def _need(surf: Surface, dims: int, what: str) -> None:
    if surf.values.ndim != dims:
        raise BadInputError(f"a {what} needs a {dims}-D surface; this one is "
                            f"{surf.values.ndim}-D")
    if not surf.complete:
        raise BadInputError("the surface is incomplete (an interrupted grid); rerun the same "
                            "command to finish it before plotting")


def _scaled(values: np.ndarray, log: bool | None):
    """(values to draw, their label, a colour norm or None for linear, a note on the scale).

    ``log`` None chooses the scale. A log scale of a loss that is not positive draws
    L − L_min + δ, δ = 10⁻³ of the range.
    """
    note = "log scale" if log else None
    if log is None:
        decades = _decades(values)
        log = decades > AUTO_LOG_DECADES
        note = f"{'log' if log else 'linear'} scale: spans {decades:.2f} decades"
    if not log:
        return values, "loss", None, note
    low = float(values.min())
    if low > 0:
        return values, "loss", LogNorm(vmin=low, vmax=float(values.max())), note
    delta = 1e-3 * max(float(values.max()) - low, 1e-12)
    shifted = values - low + delta
    return (shifted, f"loss − min + {delta:.1e}", LogNorm(vmin=delta, vmax=float(shifted.max())),
            note)


def _decades(values: np.ndarray) -> float:
    """Decades a colour scale must span: log₁₀(max/min) for a positive loss, else
    log₁₀((max − min)/(median − min)), how far the walls rise above the typical excess (≤ 3)."""
    low, high = float(values.min()), float(values.max())
    if not high > low:
        return 0.0
    if low > 0:
        return float(np.log10(high / low))
    typical = max(float(np.median(values)) - low, 1e-3 * (high - low))
    return float(np.log10((high - low) / typical))


def _noted(label: str, note: str | None) -> str:
    return f"{label} ({note})" if note else label


def _logged(values: np.ndarray, log: bool | None):
    """(values, label, note) to draw on a linear axis: log₁₀ of the (shifted) loss on a log
    scale."""
    Z, label, norm, note = _scaled(values, log)
    return (np.log10(Z), f"log₁₀ {label}", note) if norm is not None else (Z, label, note)


def _levels(Z: np.ndarray, levels: int, log: bool):
    low, high = float(Z.min()), float(Z.max())
    if high <= low:
        return levels
    return np.geomspace(low, high, levels) if log else np.linspace(low, high, levels)


def _marks(ax, surf: Surface) -> None:
    for name, where in (surf.meta.get("frame", {}).get("marks") or {}).items():
        y = where[1] if len(where) > 1 else float(np.interp(where[0], surf.axes[0], surf.values))
        ax.plot(where[0], y, "o", color="w", mec="k", markersize=7)
        ax.annotate(name, (where[0], y), textcoords="offset points", xytext=(5, 5), color="k")


def _trajectory(ax, surf: Surface) -> None:
    p = surf.projection
    xy = p.coords
    ax.plot(xy[:, 0], xy[:, 1], "-", color="w", lw=1.5)
    ax.plot(xy[:, 0], xy[:, 1], "o", color="w", mec="k", markersize=3)
    ax.plot(xy[0, 0], xy[0, 1], "s", color="tab:red", mec="k", label="start")
    ax.plot(xy[-1, 0], xy[-1, 1], "*", color="tab:orange", mec="k", markersize=12, label="end")
    fid = p.to_dict()
    ax.legend(loc="upper right", fontsize=8,
              title=f"path in plane: {100 * fid['explained']:.1f} % of its variance;\n"
                    f"median off-plane distance {100 * fid['median_relative_distance']:.0f} % "
                    "of radius", title_fontsize=7)


def _axis_label(surf: Surface, i: int) -> str:
    directions = surf.meta.get("frame", {}).get("directions") or []
    if i >= len(directions):
        return ("α", "β")[i]
    d = directions[i]
    extra = {"random": f"seed {d.get('seed')}, {d.get('normalisation')}-normalised",
             "hessian_max": f"λ = {d.get('eigenvalue', 0):.3g}",
             "hessian_min": f"λ = {d.get('eigenvalue', 0):.3g}",
             "pca": f"{100 * d.get('explained_variance', 0):.1f} % of the path"}.get(d["kind"])
    name = ("α", "β")[i] if surf.values.ndim == 2 else "t"
    return f"{name}: {d['kind']}" + (f" ({extra})" if extra else "")


def _title(surf: Surface) -> str:
    objective = surf.meta.get("objective", {})
    mode = surf.meta.get("mode")
    where = f"{objective.get('name', '')} · {objective.get('loss', '')}"
    return where + (f" · {mode} mode" if mode else "") + f" · bn {surf.meta.get('bn', 'eval')}"


__getattr__ = old_names(__name__, {"render": "save_all"})

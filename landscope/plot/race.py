"""Pictures of a race: contours with every optimiser's paths (PNG), and a plotly page whose step
slider moves each optimiser's runs along their paths.

Readers of a race picture compare optimisers, so every panel shares the function's contours and
box, draws the same starts, and colours a run by its outcome (success, failure, divergence), not by
whim. Contour levels are quantiles of f over the box, which shows the structure of functions whose
values span many orders (Rosenbrock) as well as of those that are unbounded below (x² − y²).
Only two-dimensional functions are drawn.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from landscope.errors import BadInputError
from landscope.plot._files import save_page

_OUTCOME = {True: "#1a9850", False: "#7f7f7f", "diverged": "#d73027"}
_MARK = {"local_min": "o", "saddle": "X", "local_max": "^"}


def race_figure(result, function: str, *, max_paths: int = 8, columns: int = 5,
                resolution: int = 160) -> Figure:
    """One panel per optimiser: contours of f, up to ``max_paths`` paths, the listed critical
    points (● minimum, ✕ saddle, ▲ maximum), on a contour grid of ``resolution`` points per axis.
    Green: the run succeeded; grey: it did not; red: it diverged.

    Examples
    --------
    >>> from landscope.race import race
    >>> r = race(["saddle"], ["gd", "adam"], starts=2, steps=20, tune=1, strategies=())
    >>> len(race_figure(r, "saddle").axes)
    2
    """
    fn, names = _function(result, function)
    X, Y, Z = _grid(fn, resolution)
    levels = np.unique(np.quantile(Z, np.linspace(0, 1, 24)))
    rows = math.ceil(len(names) / columns)
    cols = min(columns, len(names))
    fig = Figure(figsize=(2.9 * cols, 2.7 * rows + 0.4), layout="constrained")
    rates = {row["optimizer"]: row["success_rate"] for row in result.summary
             if row["function"] == function}
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.contourf(X, Y, Z, levels=levels, cmap="Blues_r", alpha=0.55)
        ax.contour(X, Y, Z, levels=levels, colors="white", linewidths=0.3)
        run = result.descents[function, name]
        records = [r for r in result.runs if r["function"] == function and r["optimizer"] == name]
        for s in range(min(max_paths, run.points.shape[1])):
            path = run.points[:, s].numpy()
            outcome = "diverged" if records[s]["status"] == "diverged" else bool(
                records[s]["success"])
            ax.plot(path[:, 0], path[:, 1], color=_OUTCOME[outcome], lw=1.0, alpha=0.9)
            ax.plot(*path[0], "o", color="black", ms=2.5)
            ax.plot(*path[-1], "*", color=_OUTCOME[outcome], ms=6)
        for point in fn.critical_points[:60]:
            ax.plot(*point.location, _MARK.get(point.kind, "s"), color="#fdae61", ms=4.5,
                    mec="black", mew=0.4)
        (x0, x1), (y0, y1) = fn.domain
        ax.set(xlim=(x0, x1), ylim=(y0, y1), xticks=[], yticks=[])
        rate = rates.get(name)
        ax.set_title(name + ("" if rate is None else f"  {100 * rate:.0f}%"), fontsize=9)
    fig.legend(handles=_legend(), loc="outside lower center", ncols=6, fontsize=8, frameon=False)
    goal = next((row["goal"] for row in result.summary if row["function"] == function), "")
    fig.suptitle(f"{fn.name}: {fn.formula} — goal: {goal}; "
                 f"{result.settings['starts']} starts, {result.settings['steps']} steps, "
                 f"seed {result.settings['seed']}", fontsize=10)
    return fig


def race_page(result, function: str, path: str | Path, *, max_paths: int = 4,
              frames: int = 60) -> Path:
    """A self-contained plotly page: contours, each optimiser's first ``max_paths`` paths, and a
    step slider (with a play button) moving a marker along every path. Click a legend entry to
    hide an optimiser."""
    import plotly.graph_objects as go  # optional dependency (the ``plot`` extra)

    fn, names = _function(result, function)
    X, Y, Z = _grid(fn, 120)
    levels = np.quantile(Z, [0.02, 0.98])
    fig = go.Figure(go.Contour(x=X[0], y=Y[:, 0], z=Z, colorscale="Blues", showscale=False,
                               contours={"start": levels[0], "end": levels[1],
                                         "size": (levels[1] - levels[0]) / 25},
                               hoverinfo="skip"))
    palette = _palette(len(names))
    paths = {}
    for name, colour in zip(names, palette, strict=True):
        points = result.descents[function, name].points[:, :max_paths].numpy()
        paths[name] = points
        xs = np.concatenate([np.append(points[:, s, 0], np.nan) for s in range(points.shape[1])])
        ys = np.concatenate([np.append(points[:, s, 1], np.nan) for s in range(points.shape[1])])
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": colour, "width": 1},
                                 opacity=0.5, name=name, legendgroup=name))
    marker_traces = list(range(len(fig.data), len(fig.data) + len(names)))
    for name, colour in zip(names, palette, strict=True):
        fig.add_trace(go.Scatter(x=paths[name][0, :, 0], y=paths[name][0, :, 1], mode="markers",
                                 marker={"color": colour, "size": 9, "line": {"width": 1}},
                                 name=name, legendgroup=name, showlegend=False))
    total = next(iter(paths.values())).shape[0] - 1
    ticks = sorted({round(k) for k in np.linspace(0, total, frames)})
    fig.frames = [go.Frame(name=str(k), traces=marker_traces, data=[
        go.Scatter(x=paths[name][k, :, 0], y=paths[name][k, :, 1]) for name in names])
        for k in ticks]
    (x0, x1), (y0, y1) = fn.domain
    fig.update_layout(
        title=f"{fn.name}: {fn.formula}", xaxis={"range": [x0, x1]},
        yaxis={"range": [y0, y1], "scaleanchor": "x"}, height=640,
        sliders=[{"currentvalue": {"prefix": "step "}, "steps": [
            {"label": str(k), "method": "animate",
             "args": [[str(k)], {"mode": "immediate", "frame": {"duration": 0, "redraw": False}}]}
            for k in ticks]}],
        updatemenus=[{"type": "buttons", "showactive": False, "x": 0, "y": -0.08, "buttons": [
            {"label": "play", "method": "animate",
             "args": [None, {"frame": {"duration": 80, "redraw": False}, "fromcurrent": True}]}]}])
    return save_page(fig, path, include_plotlyjs=True, auto_play=False)


def _legend():
    from matplotlib.lines import Line2D

    lines = [Line2D([], [], color=_OUTCOME[key], label=label) for key, label in
             ((True, "succeeded"), (False, "did not"), ("diverged", "diverged"))]
    marks = [Line2D([], [], ls="", marker=_MARK[kind], color="#fdae61", mec="black", label=label)
             for kind, label in (("local_min", "minimum"), ("saddle", "saddle"),
                                 ("local_max", "maximum"))]
    return lines + marks


def _function(result, function: str):
    if function not in result.functions:
        raise BadInputError(f"{function!r} was not raced; the race has: "
                            f"{', '.join(result.functions)}")
    fn = result.functions[function]
    if fn.dim != 2:
        raise BadInputError(f"{function} has {fn.dim} coordinates; race pictures are drawn for "
                            "two-dimensional functions only")
    return fn, [name for (f, name) in result.descents if f == function]


def _grid(fn, resolution: int):
    (x0, x1), (y0, y1) = fn.domain
    xs = torch.linspace(x0, x1, resolution, dtype=torch.float64)
    ys = torch.linspace(y0, y1, resolution, dtype=torch.float64)
    Y, X = torch.meshgrid(ys, xs, indexing="ij")
    with torch.no_grad():
        Z = fn.f(torch.stack([X, Y], -1))
    return X.numpy(), Y.numpy(), Z.numpy()


def _palette(colours: int) -> list[str]:
    from matplotlib import colormaps

    cmap = colormaps["tab20"]
    return ["#" + "".join(f"{int(255 * c):02x}" for c in cmap(i % 20)[:3]) for i in range(colours)]

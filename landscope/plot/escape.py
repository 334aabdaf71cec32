"""The picture of remedy trials: every run's mini-batch loss against the evaluations it spent.

Every run of a trial has the same start, budget and data order, so the curves are drawn on one
axis: one colour per candidate (in the order of the ranking), one line per seed, the evaluations
on the horizontal axis (a second-order step spends several), and a log scale when every loss is
positive.
"""

from __future__ import annotations

from matplotlib import colormaps
from matplotlib.figure import Figure


def curves_figure(trial) -> Figure:
    """The loss curves of a :class:`landscope.escape.Trial`."""
    fig = Figure(figsize=(8, 5))
    ax = fig.add_subplot()
    colours = colormaps["tab20"]
    for i, row in enumerate(trial.summary):
        runs = (r for r in trial.runs if r["candidate"] == row["candidate"])
        for j, run in enumerate(runs):
            points = [(e, v) for e, v in run["curve"] if v is not None]
            if points:
                x, y = zip(*points, strict=True)
                ax.plot(x, y, color=colours(i % 20), lw=1, alpha=0.8,
                        label=f"{row['rank']}. {row['candidate']}" if j == 0 else None)
    ax.set(xlabel="gradient evaluations", ylabel="mini-batch training loss",
           title="remedy trials: the same start, budget and data order")
    if all(v > 0 for run in trial.runs for _, v in run["curve"] if v is not None):
        ax.set_yscale("log")
    ax.legend(fontsize=8)
    return fig

"""A monitored run's record as one interactive plotly figure: the evidence a doctor's findings
cite, against the step.

Three rows share the step axis: the loss (training, validation, held batch); the gradient norm of
the whole model and of its first and last layers (log scale: vanishing gradients are decades
apart); the curvature measured when the loss stalled (λ_max, the optimiser's sharpness and the
batch sharpness against its stability limit, and λ_min). A column the run did not record is left
out; a point not measured at a step is a gap.
"""

from __future__ import annotations

import numpy as np

from landscope.monitor.record import Record

ROWS = ("loss", "gradient norm", "curvature")
CURVES = {
    "loss": (("loss", "training loss"), ("val_loss", "validation loss"),
             ("held_loss", "held batch")),
    "curvature": (("lambda_max", "λ_max"), ("sharpness", "sharpness (optimiser)"),
                  ("batch_sharpness", "batch sharpness"),
                  ("stability_threshold", "stability limit"), ("lambda_min", "λ_min")),
}


def record_figure(record: Record, *, title: str = ""):
    """The figure of ``record`` (:func:`landscope.monitor.record.read_record`)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=3, cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=ROWS)
    steps = record.steps
    for row, key in ((1, "loss"), (3, "curvature")):
        for column, label in CURVES[key]:
            _line(fig, go, steps, record[column], label, row,
                  dash="dash" if column == "stability_threshold" else None)
    layers = record.per_layer("grad_norm")
    chosen = {"model": record["grad_norm"]}
    if layers:
        names = list(layers)
        chosen |= {f"layer {names[0]} (first)": layers[names[0]],
                   f"layer {names[-1]} (last)": layers[names[-1]]}
    for label, values in chosen.items():
        _line(fig, go, steps, values, label, 2)
    fig.update_yaxes(type="log", row=2, col=1)
    fig.update_xaxes(title_text="step", row=3, col=1)
    fig.update_layout(title=title, height=760, margin={"t": 70})
    return fig


def _line(fig, go, steps: np.ndarray, values: np.ndarray, label: str, row: int,
          dash: str | None = None) -> None:
    """One curve through the steps where ``values`` was measured; none if it never was."""
    measured = np.isfinite(values)
    if measured.any():
        fig.add_trace(go.Scatter(x=steps[measured], y=values[measured], name=label,
                                 mode="lines+markers" if measured.sum() < 50 else "lines",
                                 line={"dash": dash}, legendgroup=str(row)), row, 1)

"""The Hessian spectrum of a probe as one interactive plotly figure, read from its result.

Three panels, each with its evidence: the extreme Ritz values with their residual norms as error
bars (for a symmetric H, an eigenvalue lies within ‖Hv − θv‖ of each Ritz value θ); the
eigenvalue density (exact eigenvalues smoothed, or the SLQ quadrature averaged over its probes),
on a log scale since the bulk near zero dwarfs the rest; and the fractions of negative, flat and
positive eigenvalues with their Chebyshev–Markov–Stieltjes brackets widened by two probe
standard errors.
"""

from __future__ import annotations

import numpy as np

from landscope.spectrum import Density

SIGN_NAMES = (("negative", "negative"), ("zero", "near zero"), ("positive", "positive"))


def spectrum_figure(probe: dict, *, title: str = ""):
    """The figure of a probe's spectrum (``probe`` as :meth:`Probe.to_dict` writes it)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=3, column_widths=[0.3, 0.45, 0.25], subplot_titles=(
        "extreme eigenvalues ± residual", "eigenvalue density", "sign fractions (95 % bracket)"))
    for end, colour in (("smallest", "#c62828"), ("largest", "#1565c0")):
        pairs = probe["spectrum"][end]
        values = np.asarray(pairs["values"], dtype=float)
        fig.add_trace(go.Scatter(
            x=np.arange(1, values.size + 1), y=values, mode="markers", name=end,
            marker={"color": colour, "size": 8},
            error_y={"type": "data", "array": np.asarray(pairs["residuals"], dtype=float)},
            hovertemplate="λ = %{y:.6g} ± %{error_y.array:.2g}<extra>" + end + "</extra>"), 1, 1)
    density = probe.get("density") or {}
    if "eigenvalues" in density or "quadrature" in density:
        grid, values = Density.from_dict(density).curve(resolution=600)
        floor = max(float(values.max()) * 1e-6, 1e-300)
        fig.add_trace(go.Scatter(x=grid.numpy(), y=np.maximum(values.numpy(), floor),
                                 mode="lines", name=f"density ({density['method']})",
                                 line={"color": "#37474f"}), 1, 2)
        fig.update_yaxes(type="log", row=1, col=2)
    zero_tol = probe["tolerances"]["zero_tol"]
    for edge in (-zero_tol, zero_tol):
        fig.add_vline(x=edge, line={"dash": "dot", "color": "#9e9e9e"}, row=1, col=2)
    fractions = [probe["fractions"][key] for key, _ in SIGN_NAMES]
    estimates = np.array([f["value"] for f in fractions])
    low, high = (np.array([f["interval"][i] for f in fractions]) for i in (0, 1))
    fig.add_trace(go.Bar(x=[label for _, label in SIGN_NAMES], y=estimates, name="fraction",
                         marker={"color": ["#c62828", "#9e9e9e", "#1565c0"]},
                         error_y={"type": "data", "symmetric": False, "array": high - estimates,
                                  "arrayminus": estimates - low}), 1, 3)
    fig.update_xaxes(title_text="rank from the end", dtick=1, row=1, col=1)
    fig.update_yaxes(title_text="λ", row=1, col=1)
    fig.update_xaxes(title_text=f"λ (dotted: ±{zero_tol:.2g}, counted as zero)", row=1, col=2)
    fig.update_yaxes(range=[0, 1], row=1, col=3)
    fig.update_layout(title=title, height=430, showlegend=False, margin={"t": 70})
    return fig

"""The 1-D Taylor overlay: the real loss along a direction beside its first- and second-order
models, with the optimal step t* of the quadratic model and the decrease it predicted against
the real one.
"""

from __future__ import annotations

from matplotlib.figure import Figure

from landscope.taylor import TaylorProfile


def taylor_plot(profile: TaylorProfile, *, title: str | None = None) -> Figure:
    """Real loss, first- and second-order Taylor models along one direction, and the step t*.

    Examples
    --------
    >>> import landscope as ls
    >>> from landscope.taylor import taylor
    >>> obj = ls.Objective.from_function(lambda x: (x**2).sum() + x[0]**3, [1.0, 1.0])
    >>> fig = taylor_plot(taylor(obj, resolution=9))
    >>> [line.get_label() for line in fig.axes[0].get_lines()][:3]
    ['real loss', 'first order  L + t·gᵀd', 'second order  + ½t²·dᵀHd']
    """
    fig = Figure(figsize=(6.8, 4.4), layout="constrained")
    ax = fig.add_subplot()
    t = profile.t
    ax.plot(t, profile.real, color="k", lw=2, label="real loss")
    ax.plot(t, profile.first, "--", color="C0", label="first order  L + t·gᵀd")
    ax.plot(t, profile.second, "--", color="C1", label="second order  + ½t²·dᵀHd")
    span = profile.real.max() - profile.real.min()
    low, high = profile.real.min() - 0.3 * span, profile.real.max() + 0.3 * span
    ax.set_ylim(low, high if high > low else low + 1)
    if profile.step is not None:
        ax.axvline(profile.step, color="C2", lw=1)
        ax.plot([profile.step], [profile.value - profile.real_decrease], "o", color="C2",
                label=f"t* = {profile.step:.3g}: predicted −{profile.predicted_decrease:.3g}, "
                      f"real −{profile.real_decrease:.3g}")
    ax.plot([0], [profile.value], "o", color="k", markersize=4)
    kind = profile.direction.get("kind", "direction")
    ax.set_xlabel("t (learning rate)" if kind == "gradient" and not profile.direction.get("unit")
                  else f"t along {kind}")
    ax.set_ylabel("loss")
    ax.set_title(title or f"Taylor models along {kind}: gᵀd = {profile.slope:.3g}, "
                          f"dᵀHd = {profile.curvature:.3g}")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return fig

"""The terminal table of a computed surface: its grid, range, fidelity and Taylor step."""

from __future__ import annotations

from rich.table import Table

from landscope.surface import Surface
from landscope.taylor import TaylorProfile


def surface_table(summary: dict, surf: Surface, seconds: float,
                  profile: TaylorProfile | None = None) -> Table:
    """``summary`` is :meth:`Surface.summary`; ``profile`` the 1-D gradient line's Taylor models."""
    table = Table(title="loss surface", show_header=False)
    table.add_row("grid", " × ".join(map(str, summary["shape"])) +
                  f", {surf.meta['points_evaluated']} points evaluated in {seconds:.1f} s")
    table.add_row("loss range", f"{summary['min']:.5g} … {summary['max']:.5g}" + (
        f" (centre {summary['centre_value']:.5g})" if "centre_value" in summary else ""))
    table.add_row("lowest at", ", ".join(f"{x:.3g}" for x in summary["argmin"]))
    if "max_error" in summary:
        table.add_row("budgeted", f"cost {surf.meta['cost_ratio']:.1%} of the full grid, stated "
                                  f"error ≤ {summary['max_error']:.3g}")
    if "trajectory" in summary:
        t = summary["trajectory"]
        table.add_row("path fidelity", f"{t['explained']:.1%} of the path's variance in the "
                                       f"plane; median distance off it "
                                       f"{t['median_relative_distance']:.0%} of the radius")
    spread = surf.fidelity.seed_spread
    if spread is not None:
        table.add_row("seed spread", f"median {spread.relative_spread_median:.1%}, max "
                                     f"{spread.relative_spread_max:.1%} of the value range "
                                     f"({len(spread.seeds)} other seeds)")
    if profile is not None and profile.step is not None:
        table.add_row("Taylor step", f"t* = {profile.step:.3g}: predicted decrease "
                                     f"{profile.predicted_decrease:.3g}, real "
                                     f"{profile.real_decrease:.3g}")
    return table

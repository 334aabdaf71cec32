"""Pictures of landscope results: matplotlib figures and plotly pages.

Renderers read result objects and never recompute them.
"""

from landscope.plot.surface import contour, html, profile, render, surface3d
from landscope.plot.taylor import taylor_plot

__all__ = ["contour", "html", "profile", "render", "surface3d", "taylor_plot"]

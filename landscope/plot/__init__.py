"""Pictures of landscope results: matplotlib figures and plotly pages.

Renderers read result objects and never recompute them.
"""

from landscope._deprecated import old_names
from landscope.plot.surface import contour, html, profile, save_all, surface3d
from landscope.plot.taylor import taylor_plot

__all__ = ["contour", "html", "profile", "save_all", "surface3d", "taylor_plot"]

__getattr__ = old_names(__name__, {"render": "save_all"})

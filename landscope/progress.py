"""The one progress protocol every long-running function takes as ``progress=``.

``progress(done, total, note)``: ``done`` units of work finished out of ``total`` (None when the
total is not known in advance, as in an eigen-solver stopped by its tolerance), and a short
``note`` on how it is going (a residual, a stage, the run just finished). The units are the
function's own (Hessian-vector products, grid points, runs), named in its docstring. Renderers
adapt it (``landscope.render.progress.bar`` draws it with rich); the library never prints.
"""

from typing import Protocol


class Progress(Protocol):
    """Called by long work after each unit of it (see the module docstring)."""

    def __call__(self, done: int, total: int | None, note: str = "") -> None: ...

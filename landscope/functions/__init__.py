"""The test-function zoo: landscapes whose critical points are known, to race optimisers on.

Every function takes a batch of points ``(..., n)`` and returns ``(...)``, so that many starts are
evaluated together. :func:`get` builds one by name (with its parameters, e.g. ``n`` or ``kappa``);
:data:`NAMES` lists them all.

Examples
--------
>>> from landscope import functions
>>> camel = functions.get("six_hump_camel")
>>> len(camel.critical_points), round(camel.global_min, 4)
(15, -1.0316)
>>> functions.get("quadratic_saddle", n=5, index=2).critical_points[0].kind
'saddle'
"""

from __future__ import annotations

import inspect

from landscope.errors import BadInputError
from landscope.functions import classic, ndim, surfaces
from landscope.functions.base import TestFunction
from landscope.functions.locate import Located, locate
from landscope.kinds import CriticalPoint

_BUILDERS = {
    "bowl": surfaces.bowl,
    "saddle": surfaces.saddle,
    "xy_saddle": surfaces.xy_saddle,
    "monkey_saddle": surfaces.monkey_saddle,
    "x2_plus_y3": surfaces.x2_plus_y3,
    "x2_plus_y4": surfaces.x2_plus_y4,
    "x2_2xy_y3": surfaces.x2_2xy_y3,
    "cubic": surfaces.cubic,
    "double_well": surfaces.double_well,
    "sin_sin": surfaces.sin_sin,
    "rosenbrock": classic.rosenbrock,
    "himmelblau": classic.himmelblau,
    "six_hump_camel": classic.six_hump_camel,
    "beale": classic.beale,
    "rastrigin": classic.rastrigin,
    "ackley": classic.ackley,
    "sine_valley": classic.sine_valley,
    "ill_conditioned": ndim.ill_conditioned,
    "quadratic_saddle": ndim.quadratic_saddle,
    "deep_linear": ndim.deep_linear,
}

NAMES = tuple(_BUILDERS)
"""Names of the zoo's functions, for :func:`get`."""


def get(name: str, **params) -> TestFunction:
    """The zoo function called ``name``, built with ``params`` (see each builder's docstring).

    Raises
    ------
    BadInputError: for an unknown name (listing the valid ones) or unknown parameters.
    """
    if isinstance(name, TestFunction):
        return name
    builder = _BUILDERS.get(name)
    if builder is None:
        raise BadInputError(f"unknown function {name!r}; the zoo has: {', '.join(NAMES)}")
    accepted = inspect.signature(builder).parameters
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise BadInputError(f"{name} has no parameter(s) {', '.join(unknown)}; it takes: "
                            f"{', '.join(accepted) or 'none'}")
    return builder(**params)


def describe(name: str) -> str:
    """The first line of the builder's docstring: the formula and what is special about it."""
    if name not in _BUILDERS:
        raise BadInputError(f"unknown function {name!r}; the zoo has: {', '.join(NAMES)}")
    return inspect.getdoc(_BUILDERS[name]).splitlines()[0]


__all__ = ["NAMES", "CriticalPoint", "Located", "TestFunction", "describe", "get", "locate"]

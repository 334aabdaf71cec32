"""Argument checks with one message format: ``name=value; use …``, naming the value and the fix.

Each check returns the value it accepted (an ``int`` for :func:`integer`, a ``float`` for
:func:`positive`) and raises :class:`landscope.errors.BadInputError` otherwise.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Iterable

from landscope.errors import BadInputError


def choice(name: str, value, options: Iterable):
    """``value`` if it is one of ``options``.

    Examples
    --------
    >>> choice("method", "newton_mr", ("newton_mr", "gradient_norm"))
    'newton_mr'
    >>> choice("method", "foo", ("newton_mr", "gradient_norm"))
    Traceback (most recent call last):
    ...
    landscope.errors.BadInputError: method='foo'; use one of newton_mr, gradient_norm
    """
    options = tuple(options)
    try:
        if value in options:
            return value
    except TypeError:  # an unhashable value against a dict's keys or a set
        pass
    raise BadInputError(f"{name}={value!r}; use one of {', '.join(map(str, options))}")


def integer(name: str, value, minimum: int = 1) -> int:
    """``value`` as an ``int`` if it is a whole number (an int or a NumPy integer, not a bool or a
    float) of at least ``minimum``.

    Examples
    --------
    >>> integer("steps", 3)
    3
    >>> integer("steps", 0)
    Traceback (most recent call last):
    ...
    landscope.errors.BadInputError: steps=0; use a whole number ≥ 1
    """
    try:
        whole = None if isinstance(value, bool) else operator.index(value)
    except TypeError:
        whole = None
    if whole is None or whole < minimum:
        raise BadInputError(f"{name}={value!r}; use a whole number ≥ {minimum}")
    return whole


def non_negative(name: str, value) -> float:
    """``value`` as a ``float`` if it is a finite real number ≥ 0.

    Examples
    --------
    >>> non_negative("damping", 0)
    0.0
    >>> non_negative("damping", -1e-3)
    Traceback (most recent call last):
    ...
    landscope.errors.BadInputError: damping=-0.001; use a finite number ≥ 0
    """
    return _real(name, value, strict=False)


def positive(name: str, value) -> float:
    """``value`` as a ``float`` if it is a finite real number > 0.

    Examples
    --------
    >>> positive("lr", 0.1)
    0.1
    >>> positive("lr", -1)
    Traceback (most recent call last):
    ...
    landscope.errors.BadInputError: lr=-1; use a finite number > 0
    """
    return _real(name, value, strict=True)


def _real(name: str, value, *, strict: bool) -> float:
    """``value`` as a float if it is a finite real number above 0 (``strict``) or at least 0;
    bools and strings are not numbers here."""
    try:
        number = None if isinstance(value, (bool, str, bytes)) else float(value)
    except (TypeError, ValueError):
        number = None
    if number is None or not math.isfinite(number) or number < 0 or (strict and number == 0):
        raise BadInputError(f"{name}={value!r}; use a finite number {'>' if strict else '≥'} 0")
    return number

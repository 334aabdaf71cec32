"""Errors landscope raises. Each message names the bad value and says what to do about it."""

from __future__ import annotations


class LandscopeError(Exception):
    """Base class of every error landscope raises on purpose."""


class BadInputError(LandscopeError, ValueError):
    """The caller handed over something landscope cannot analyse (shape, dtype, size, name)."""


class NonFiniteLossError(LandscopeError, FloatingPointError):
    """The loss (or its gradient) is NaN or infinite at the point being analysed."""


class CheckpointError(LandscopeError, ValueError):
    """A checkpoint file is missing, corrupt, or not loadable with ``weights_only=True``."""

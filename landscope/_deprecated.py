"""Old names kept for one release: keyword arguments (``renamed``) and module attributes
(``old_names``), each use warning with :class:`LandscopeDeprecationWarning` and naming the new one.

The renames of 0.2 are listed in CHANGELOG.md; every alias here goes in 0.3.
"""

import functools
import sys
import warnings
from collections.abc import Callable

from landscope.errors import BadInputError

REMOVED_IN = "0.3"
RENAMED: list[tuple[str, str, str]] = []
"""(function, old keyword, new keyword) for every ``renamed`` use, in import order."""
MOVED: list[tuple[str, str, str]] = []
"""(module, old attribute, new attribute) for every ``old_names`` use."""


class LandscopeDeprecationWarning(DeprecationWarning):
    """A name landscope still accepts but has renamed (removed in :data:`REMOVED_IN`)."""


def warn_renamed(old: str, new: str, stacklevel: int = 3) -> None:
    """Warn that ``old`` is now ``new`` (``stacklevel`` 3: the caller of the function that
    calls this)."""
    warnings.warn(rename_message(old, new), LandscopeDeprecationWarning, stacklevel=stacklevel)


def rename_message(old: str, new: str) -> str:
    """The one wording of a rename, for warnings and for the command line's message."""
    return f"{old} is renamed {new}; the old name goes in landscope {REMOVED_IN}"


def renamed(**old_to_new: str) -> Callable:
    """Decorator: accept each old keyword for its new one, with a warning.

    >>> @renamed(tol="eig_rtol")
    ... def f(*, eig_rtol=1.0):
    ...     return eig_rtol
    >>> import warnings
    >>> with warnings.catch_warnings(record=True) as caught:
    ...     warnings.simplefilter("always")
    ...     f(tol=2.0), caught[0].category.__name__
    (2.0, 'LandscopeDeprecationWarning')
    """

    def wrap(fn: Callable) -> Callable:
        name = fn.__qualname__.removesuffix(".__init__")
        RENAMED.extend((f"{fn.__module__}.{name}", old, new) for old, new in old_to_new.items())

        @functools.wraps(fn)
        def accept_old_names(*args, **kwargs):
            for old, new in old_to_new.items():
                if old in kwargs:
                    if new in kwargs:
                        raise BadInputError(f"{name}() got both {old}= and {new}=; {old} is the "
                                            f"old name of {new}: give {new}= only")
                    warn_renamed(f"{name}({old}=…)", f"{new}=")
                    kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        return accept_old_names

    return wrap


def old_names(module: str, old_to_new: dict[str, str]) -> Callable[[str], object]:
    """A module ``__getattr__`` that serves each old attribute name as its new one, with a warning.

    Use as ``__getattr__ = old_names(__name__, {"RaceResult": "Race"})``.
    """
    MOVED.extend((module, old, new) for old, new in old_to_new.items())

    def __getattr__(attribute: str):
        if attribute in old_to_new:
            new = old_to_new[attribute]
            warn_renamed(f"{module}.{attribute}", f"{module}.{new}")
            return getattr(sys.modules[module], new)
        raise AttributeError(f"module {module!r} has no attribute {attribute!r}")

    return __getattr__

"""One vocabulary (CHANGELOG.md): the public signatures use the new names only, and every old
name still works for one release, warning and naming the new one."""

import dataclasses
import importlib
import inspect
import pkgutil
import re
import warnings
from pathlib import Path

import pytest

import landscope
from landscope import _deprecated
from landscope._deprecated import LandscopeDeprecationWarning, old_names, renamed
from landscope.errors import BadInputError

CHANGELOG = (Path(__file__).parents[1] / "CHANGELOG.md").read_text()

# Words retired from public signatures: each had two meanings, or named no quantity compared.
RETIRED = {"tol", "rel_tol", "eig_tol", "global_tol", "zero_tol", "flat_band", "flat_tol",
           "curvature_tol", "match_tol", "count", "gtol"}
# Modules where a count is never optimiser iterations, so `steps` would be ambiguous.
NO_STEPS = ("landscope.spectrum", "landscope.critical", "landscope.anytime", "landscope.surface",
            "landscope.adaptive", "landscope.taylor", "landscope.linalg", "landscope.sampling")


def public_callables():
    """(qualified name, callable) for every public function and method of the package."""
    for info in pkgutil.walk_packages(landscope.__path__, "landscope."):
        if any(part.startswith("_") for part in info.name.split(".")) or ".cli" in info.name:
            continue
        module = importlib.import_module(info.name)
        for name, obj in vars(module).items():
            if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
                continue
            if inspect.isfunction(obj):
                yield f"{module.__name__}.{name}", obj
            elif inspect.isclass(obj):
                for attr, member in vars(obj).items():
                    if attr == "__init__" and dataclasses.is_dataclass(obj):
                        continue  # a record's fields are its result file's keys (CHANGELOG)
                    if inspect.isfunction(member) and (attr == "__init__" or attr[0] != "_"):
                        yield f"{module.__name__}.{name}.{attr}", member


CALLABLES = dict(public_callables())


def test_the_package_exposes_many_public_callables():  # the scan below is not vacuous
    assert len(CALLABLES) > 300


@pytest.mark.parametrize("name", sorted(CALLABLES))
def test_public_signatures_use_the_new_words(name):
    parameters = set(inspect.signature(CALLABLES[name]).parameters)
    assert not parameters & RETIRED, f"{name} takes {sorted(parameters & RETIRED)}"
    if name.startswith(NO_STEPS):
        assert "steps" not in parameters, f"{name}: steps are optimiser iterations only"


def test_every_rename_is_in_the_changelog_and_the_signature():
    assert _deprecated.RENAMED, "no renames registered"
    for function, old, new in _deprecated.RENAMED:
        if function.startswith("landscope._") or "<locals>" in function:
            continue  # the helper's own docstring example, run by test_house
        short = function.removeprefix("landscope.")
        assert re.search(rf"`{re.escape(short)}\(.*\b{old}=", CHANGELOG), (function, old)
        target = CALLABLES.get(function) or CALLABLES.get(function + ".__init__")
        assert target is not None, function
        parameters = inspect.signature(target).parameters
        assert new in parameters and old not in parameters, (function, old, new)
    for module, old, new in _deprecated.MOVED:
        if module.startswith("landscope._") or not module.startswith("landscope."):
            continue  # examples (docstrings, this file's own test)
        assert f"`{module.removeprefix('landscope.')}.{old}`" in CHANGELOG, (module, old)
        with pytest.warns(LandscopeDeprecationWarning, match=new):
            assert getattr(importlib.import_module(module), old) is getattr(
                importlib.import_module(module), new)


def test_an_old_keyword_warns_names_the_new_one_and_passes_its_value():
    @renamed(tol="eig_rtol")
    def solve(x, *, eig_rtol=1e-6):
        return x, eig_rtol

    with pytest.warns(LandscopeDeprecationWarning, match=r"solve\(tol=…\) is renamed eig_rtol="):
        assert solve(3, tol=0.5) == (3, 0.5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert solve(3, eig_rtol=0.25) == (3, 0.25)  # the new name does not warn
    with pytest.raises(BadInputError, match="both tol= and eig_rtol="):
        solve(3, tol=0.5, eig_rtol=0.25)
    assert list(inspect.signature(solve).parameters) == ["x", "eig_rtol"]


def test_an_old_attribute_warns_and_is_the_new_object():
    import types

    module = types.ModuleType("landscope_example")
    module.Race = object()
    module.__getattr__ = old_names("landscope_example", {"RaceResult": "Race"})
    import sys

    sys.modules["landscope_example"] = module
    try:
        with pytest.warns(LandscopeDeprecationWarning, match="RaceResult is renamed"):
            assert module.__getattr__("RaceResult") is module.Race
        with pytest.raises(AttributeError, match="Nothing"):
            module.__getattr__("Nothing")
    finally:
        del sys.modules["landscope_example"]

"""House rules the code itself can be held to: every docstring example runs and gives what it
shows, and a module over ``LONG`` lines says at its top why it stays one module."""

import ast
import doctest
import importlib
import pkgutil
from pathlib import Path

import pytest

import landscope

LONG = 400
PACKAGE = Path(landscope.__file__).parent
MODULES = sorted(info.name for info in pkgutil.walk_packages(landscope.__path__, "landscope."))


def _source(name: str) -> Path:
    path = PACKAGE.joinpath(*name.split(".")[1:])
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _has_examples(name: str) -> bool:
    return ">>>" in _source(name).read_text()


@pytest.mark.slow
@pytest.mark.parametrize("name", [m for m in MODULES if _has_examples(m)])
def test_docstring_examples_run(name, one_thread):
    flags = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
    result = doctest.testmod(importlib.import_module(name), optionflags=flags)
    assert result.failed == 0


@pytest.mark.parametrize("name", MODULES)
def test_a_long_module_says_why_it_stays_one(name):
    path = _source(name)
    lines = len(path.read_text().splitlines())
    if lines <= LONG:
        return
    docstring = ast.get_docstring(ast.parse(path.read_text())) or ""
    assert "Why one module:" in docstring, (
        f"{name} has {lines} lines: split it by job, or say at its top why it stays one "
        "module in a paragraph beginning 'Why one module:'")

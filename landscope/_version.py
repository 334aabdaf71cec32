"""The package version, in a module of its own: read by ``landscope`` and ``landscope.io`` and by
the build (pyproject's dynamic version), so that nothing imports the package to learn it."""

__version__ = "0.1.0"

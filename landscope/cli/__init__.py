"""The ``landscope`` command. Exit codes: 0 done, 1 the work failed, 2 bad usage or bad input.

One module per command; importing them registers the commands on ``app`` in this order.
"""
# isort: skip_file

from landscope.cli._common import app
from landscope.cli import probe, surface, race, escape, doctor, demo, study, report  # noqa: F401

__all__ = ["app"]

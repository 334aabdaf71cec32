"""landscope: where did training stop, what does the loss landscape look like, what gets you out."""

import os as _os
import sys as _sys

# The landscope command asks OpenMP's threads to sleep rather than spin while they wait: spinning
# threads starve each other as soon as anything else shares the cores, slowing small forward and
# backward passes by one to two orders of magnitude (see the timing notes in benchmarks/README.md).
# OpenMP reads the setting once, when torch loads it, and the imports below load torch before the
# command's own module runs, so the command's choice is made here. Importing the library sets
# nothing (the README's "Threads on shared cores" says how to set it); a user's value is kept.
if _os.path.splitext(_os.path.basename(_sys.argv[0] if _sys.argv else ""))[0] == "landscope":
    _os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from landscope import doctor, escape, finders, functions, monitor, optim, race  # noqa: E402
from landscope._deprecated import LandscopeDeprecationWarning  # noqa: E402
from landscope._version import __version__  # noqa: E402
from landscope.anytime import AnytimeProbe, anytime_probe, cost_plan  # noqa: E402
from landscope.critical import KINDS, Probe, probe  # noqa: E402
from landscope.errors import (  # noqa: E402
    BadInputError,
    CheckpointError,
    LandscopeError,
    NonFiniteLossError,
)
from landscope.finders import find_critical_points  # noqa: E402
from landscope.objective import Objective  # noqa: E402
from landscope.spectrum import Density, Spectrum, Trace, density, spectrum, trace  # noqa: E402

__all__ = [
    "KINDS",
    "AnytimeProbe",
    "BadInputError",
    "CheckpointError",
    "Density",
    "LandscopeDeprecationWarning",
    "LandscopeError",
    "NonFiniteLossError",
    "Objective",
    "Probe",
    "Spectrum",
    "Trace",
    "__version__",
    "anytime_probe",
    "cost_plan",
    "density",
    "doctor",
    "escape",
    "find_critical_points",
    "finders",
    "functions",
    "monitor",
    "optim",
    "probe",
    "race",
    "spectrum",
    "trace",
]

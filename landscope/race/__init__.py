"""The race: optimisers on the zoo's functions from seeded starts, scored against known answers.

- :func:`race` runs optimisers × functions × starts (:mod:`landscope.race.run`) and scores
  every run against the function's known critical points (:mod:`landscope.race.score`).
- :func:`descend` runs one optimiser from many starts at once, the starts being the rows of one
  tensor (:mod:`landscope.race.engine`); :func:`derive_seed` gives each piece of work its own seed.
- :func:`multistart`, :func:`anneal`, :func:`evolve` (or :func:`search` by name) look for the
  global minimum of a zoo function within its box (:mod:`landscope.race.strategies`).
- :func:`as_objective` makes a zoo function an :class:`~landscope.Objective`, for the probe and
  the finders.
"""

from landscope._deprecated import old_names
from landscope.race.engine import Descent, derive_seed, descend
from landscope.race.run import DEFAULT_FUNCTIONS, DEFAULT_OPTIMIZERS, START_MODES, Race, race
from landscope.race.score import RUN_FIELDS, SUMMARY_FIELDS, as_objective
from landscope.race.strategies import (
    STRATEGIES,
    Search,
    anneal,
    evolve,
    multistart,
    search,
)

__all__ = [
    "DEFAULT_FUNCTIONS",
    "DEFAULT_OPTIMIZERS",
    "RUN_FIELDS",
    "START_MODES",
    "STRATEGIES",
    "SUMMARY_FIELDS",
    "Descent",
    "Race",
    "Search",
    "anneal",
    "as_objective",
    "derive_seed",
    "descend",
    "evolve",
    "multistart",
    "race",
    "search",
]

__getattr__ = old_names(__name__, {"RaceResult": "Race", "SearchResult": "Search"})

"""Optimisers: torch.optim's own by name, the ones it lacks, and global strategies.

- :func:`make` builds any optimiser by name (``"adam"``, ``"nesterov"``, ``"newton"``, or a
  torch.optim class name); :data:`NAMES` lists the named recipes with their stated learning rates.
- :class:`Newton`, :class:`SaddleFreeNewton`, :class:`NegativeCurvatureDescent`,
  :class:`PerturbedGD` and :class:`NoisyGD` are ``torch.optim.Optimizer`` subclasses for ordinary
  training loops; their closure may just return the loss (``opt.zero_grad(); return loss``).
- :func:`multistart`, :func:`anneal`, :func:`evolve` (or :func:`search` by name) look for the
  global minimum of a zoo function within its box.
- :func:`descend` runs one optimiser from many starts at once: the race's engine.
"""

from landscope.optim.noise import NoisyGD, PerturbedGD
from landscope.optim.registry import NAMES, RECIPES, Recipe, make, recipe
from landscope.optim.runner import Descent, descend
from landscope.optim.search import (
    STRATEGIES,
    SearchResult,
    anneal,
    evolve,
    multistart,
    search,
)
from landscope.optim.second_order import NegativeCurvatureDescent, Newton, SaddleFreeNewton

__all__ = [
    "NAMES",
    "RECIPES",
    "STRATEGIES",
    "Descent",
    "NegativeCurvatureDescent",
    "Newton",
    "NoisyGD",
    "PerturbedGD",
    "Recipe",
    "SaddleFreeNewton",
    "SearchResult",
    "anneal",
    "descend",
    "evolve",
    "make",
    "multistart",
    "recipe",
    "search",
]

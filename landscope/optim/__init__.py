"""Optimisers: torch.optim's own by name, and the ones it lacks.

- :func:`make` builds any optimiser by name (``"adam"``, ``"nesterov"``, ``"newton"``, or a
  torch.optim class name); :data:`NAMES` lists the named recipes with their stated learning rates.
- :class:`Newton`, :class:`SaddleFreeNewton`, :class:`NegativeCurvatureDescent`,
  :class:`PerturbedGD` and :class:`NoisyGD` are ``torch.optim.Optimizer`` subclasses for ordinary
  training loops; their closure may just return the loss (``opt.zero_grad(); return loss``).

Racing them on the test-function zoo (many starts at once, global strategies) is
:mod:`landscope.race`'s job.
"""

from landscope.optim.noise import NoisyGD, PerturbedGD
from landscope.optim.registry import NAMES, RECIPES, Recipe, make, recipe
from landscope.optim.second_order import NegativeCurvatureDescent, Newton, SaddleFreeNewton

__all__ = [
    "NAMES",
    "RECIPES",
    "NegativeCurvatureDescent",
    "Newton",
    "NoisyGD",
    "PerturbedGD",
    "Recipe",
    "SaddleFreeNewton",
    "make",
    "recipe",
]

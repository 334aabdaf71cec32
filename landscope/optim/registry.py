"""Optimisers by name: torch.optim's own as they are, landscope's beside them, one stated default
learning rate each.

A :class:`Recipe` says how to build an optimiser and what the race needs to know about it: whether
S points stored as the rows of one tensor step independently (true of every per-coordinate method:
SGD, Adam, …; false of L-BFGS, whose dot products mix the rows), whether the closure must keep the
gradient's graph (second-order methods), and whether it draws random numbers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from landscope.errors import BadInputError
from landscope.optim.noise import NoisyGD, PerturbedGD
from landscope.optim.second_order import NegativeCurvatureDescent, Newton, SaddleFreeNewton

# torch.optim classes whose update of each coordinate uses that coordinate only: S starts stored
# as rows of one tensor then evolve exactly as S separate runs.
_ELEMENTWISE = {"SGD", "Adam", "AdamW", "Adagrad", "Adadelta", "RMSprop", "Rprop", "NAdam",
                "RAdam", "Adamax", "ASGD"}


@dataclass(frozen=True)
class Recipe:
    """How to build one optimiser: ``factory(params, lr=lr, **options)``.

    Parameters
    ----------
    name: the name it races under.
    factory: a ``torch.optim.Optimizer`` subclass (or any callable returning one).
    lr: the stated default learning rate (None: the factory's own default).
    options: fixed settings of the recipe (e.g. ``momentum=0.9``).
    batchable: S points as rows of one (S, n) tensor step independently.
    second_order: the closure must call ``loss.backward(create_graph=True)``.
    stochastic: draws random numbers (takes ``generator=``).
    row_aware: takes ``batched=True`` to treat rows as points (landscope's own).

    Examples
    --------
    >>> mine = Recipe("heavy_ball", torch.optim.SGD, lr=0.02, options={"momentum": 0.95},
    ...               batchable=True)
    >>> opt = mine.build([torch.zeros(3, requires_grad=True)])
    >>> opt.defaults["momentum"]
    0.95
    """

    name: str
    factory: Callable
    lr: float | None = None
    options: dict = field(default_factory=dict)
    batchable: bool = False
    second_order: bool = False
    stochastic: bool = False
    row_aware: bool = False
    description: str = ""

    def build(self, params, lr: float | None = None, *, batched: bool = False,
              generator: torch.Generator | None = None) -> torch.optim.Optimizer:
        """The optimiser over ``params``; ``batched`` when they are one (S, n) tensor of points."""
        if batched and not self.batchable:
            raise BadInputError(f"{self.name} cannot step the rows of one tensor independently; "
                                "run the points one by one")
        kwargs = dict(self.options)
        lr = self.lr if lr is None else lr
        if lr is not None:
            kwargs["lr"] = lr
        if self.row_aware:
            kwargs["batched"] = batched
        if self.stochastic:
            kwargs["generator"] = generator
        try:
            return self.factory(params, **kwargs)
        except TypeError as error:
            raise BadInputError(f"cannot build {self.name} with {kwargs}: {error}") from error


def _ours(name, cls, lr, description, **flags) -> Recipe:
    return Recipe(name, cls, lr, batchable=True, row_aware=cls is not NoisyGD,
                  description=description, **flags)


RECIPES: dict[str, Recipe] = {r.name: r for r in (
    Recipe("gd", torch.optim.SGD, 0.01, batchable=True, description="gradient descent"),
    Recipe("momentum", torch.optim.SGD, 0.01, {"momentum": 0.9}, batchable=True,
           description="Polyak momentum 0.9"),
    Recipe("nesterov", torch.optim.SGD, 0.01, {"momentum": 0.9, "nesterov": True},
           batchable=True, description="Nesterov momentum 0.9"),
    Recipe("adagrad", torch.optim.Adagrad, 0.1, batchable=True, description="AdaGrad"),
    Recipe("rmsprop", torch.optim.RMSprop, 0.01, batchable=True, description="RMSProp"),
    Recipe("adadelta", torch.optim.Adadelta, 1.0, batchable=True, description="AdaDelta"),
    Recipe("adam", torch.optim.Adam, 0.01, batchable=True, description="Adam"),
    Recipe("adamw", torch.optim.AdamW, 0.01, batchable=True,
           description="AdamW (decoupled weight decay 0.01)"),
    Recipe("lbfgs", torch.optim.LBFGS, 1.0,
           {"max_iter": 1, "max_eval": 25, "line_search_fn": "strong_wolfe"},
           description="L-BFGS, one iteration (strong-Wolfe line search, ≤ 25 evaluations) "
                       "per step"),
    _ours("newton", Newton, 1.0, "damped Newton (dense ≤ 256 parameters, else CG)",
          second_order=True),
    _ours("saddle_free_newton", SaddleFreeNewton, 1.0, "saddle-free Newton, |H| in K_20(H, g)",
          second_order=True),
    _ours("negative_curvature", NegativeCurvatureDescent, 0.01,
          "gradient step + step |λ_min| along v_min when λ_min < −1e-6, halved until the "
          "loss falls", second_order=True),
    _ours("perturbed_gd", PerturbedGD, 0.01, "perturbed GD (Jin et al. 2017), r = 0.1; a "
          "failed escape test doubles the wait", stochastic=True),
    _ours("noisy_gd", NoisyGD, 0.01, "GD + annealed noise σ² = 0.01/(1+t)^0.55",
          stochastic=True),
)}

NAMES = tuple(RECIPES)
"""The named recipes; any other ``torch.optim`` class is also accepted by its class name."""


def recipe(name: str | Recipe) -> Recipe:
    """The recipe called ``name``: one of :data:`NAMES`, or a torch.optim class name ("NAdam")."""
    if isinstance(name, Recipe):
        return name
    if name in RECIPES:
        return RECIPES[name]
    cls = getattr(torch.optim, str(name), None)
    if isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer) \
            and cls is not torch.optim.Optimizer:
        return Recipe(name, cls, None, batchable=name in _ELEMENTWISE,
                      description=f"torch.optim.{name} with torch's defaults")
    raise BadInputError(f"optimizer={name!r}; use one of {', '.join(NAMES)}, or a "
                        "torch.optim class name such as NAdam or Rprop")


def make(name: str | Recipe, params, lr: float | None = None, *, batched: bool = False,
         generator: torch.Generator | None = None) -> torch.optim.Optimizer:
    """Build the optimiser called ``name`` over ``params`` (see :class:`Recipe`).

    Examples
    --------
    >>> x = torch.zeros(2, requires_grad=True)
    >>> type(make("nesterov", [x])).__name__, make("nesterov", [x]).defaults["nesterov"]
    ('SGD', True)
    """
    return recipe(name).build(params, lr, batched=batched, generator=generator)

"""Does the doctor's prescription beat a random remedy? Remedy trials on the fault suite.

A study of repair tools for training problems found a random choice of repair as good as the
tools ("Are We There Yet?", arXiv 2301.11568). This is that control for the doctor. Each faulty
run of :mod:`landscope.doctor.faults` is trained again from the same seed (the same
initialisation, data order and number of steps), once with the *prescribed* remedy (the first
remedy of the doctor's primary finding that the suite can apply) and once with a remedy drawn at
random from every other remedy the doctor gives anywhere and the suite can apply. The prescription
wins if its final training loss (:func:`~landscope.doctor.faults.final_loss`) is lower than the
random remedy's by more than :data:`MARGIN` of it: two runs left on the same plateau (ln 10 on
the digits) tie, whatever their last digits say. A run the doctor calls healthy, or whose
primary finding has no applicable remedy, prescribes nothing and does not win.

A remedy is applied by its key (:attr:`landscope.doctor.knowledge.Remedy.key`) as an edit of the
run's recipe (:data:`REPAIRS`): a change of training (optimiser, rate, schedule, clipping,
batch size, a negative-curvature step, a perturbation), of the network (activation, batch
normalisation, depth, a fresh initialisation) or of the data (standardised features). A remedy
the suite cannot express (more data, a learning-rate range test, early stopping, residual
connections, second-order methods) is never prescribed here nor drawn.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace

from torch import nn

from landscope.doctor.faults import FAULTS, HEALTHY, Case, FaultRun, final_loss
from landscope.doctor.knowledge import TEXT
from landscope.doctor.recipes import ARCHITECTURES, Recipe
from landscope.doctor.scenarios import quiet_machine, steps
from landscope.errors import BadInputError
from landscope.progress import Progress

Edit = Callable[[Recipe, Mapping], Recipe]


def _edit(**changes) -> Edit:
    return lambda recipe, evidence: replace(recipe, **changes)


def _rate(factor: float, **changes) -> Edit:
    return lambda recipe, evidence: replace(recipe, lr_factor=recipe.lr_factor * factor,
                                            **changes)


def _raise(recipe: Recipe, evidence: Mapping) -> Recipe:
    """The rate × the diagnosis's ``raise_factor`` (to half the stability limit), else × 10."""
    return replace(recipe, lr_factor=recipe.lr_factor * evidence.get("raise_factor", 10.0))


REPAIRS: dict[str, Edit] = {
    "momentum": _edit(optimizer="momentum"),
    "momentum_or_adam": _edit(optimizer="momentum"),
    "adaptive": _edit(optimizer="adam", lr_sharpness=None, lr_factor=1.0),
    "adam": _edit(optimizer="adam", lr_sharpness=None, lr_factor=1.0),
    "weight_decay": _edit(optimizer="adamw", lr_sharpness=None, lr_factor=1.0),
    "raise_lr": _raise,
    "raise_lr_or_restarts": _rate(10.0),
    "lower_lr": _rate(0.1),
    "lower_lr_schedule": _rate(0.1, schedule="cosine"),
    "lower_lr_warmup": _rate(0.1, schedule="warmup"),
    "warmup": _edit(schedule="warmup"),
    "cosine": _edit(schedule="cosine"),
    "warmup_cosine": _edit(schedule="warmup_cosine"),
    "clip": _edit(clip=1.0),
    "gradient_noise": _edit(batch=16),
    "noise_or_cyclic": _edit(batch=16),
    "vmin_step": _edit(vmin_step=True),
    "perturb": _edit(perturb=0.01),
    "reinit": _edit(init="default", weight_gain=1.0, feeding_gain=1.0, feeding_bias=None,
                    scale=1.0),
    "he_relu": _edit(activation=nn.ReLU, init="he"),
    "relu": _edit(activation=nn.ReLU),
    "leaky_relu": _edit(activation=nn.LeakyReLU),
    "normalisation": _edit(norm=True),
    "fewer_layers": lambda recipe, evidence: replace(recipe, depth=min(recipe.depth, 2)),
    "standardise": _edit(conditioning=False),
}
"""A remedy's key → the edit of a recipe (given the primary finding's evidence) that applies it.
Adam and AdamW run at their own rate (10⁻³) in place of the SGD rate; a rate change multiplies
whatever rate the recipe has, by the factor the evidence gives where the doctor computes one; a
perturbation adds N(0, 0.01²) to every parameter; smaller mini-batches are 16 samples."""

MARGIN = 0.01
"""The relative margin a final loss must beat another by to count as lower."""

DRAWN = tuple(sorted({r.key for text in TEXT.values() for r in text["remedies"]} & set(REPAIRS)))
"""The remedies a random draw chooses from: every key the doctor gives that the suite applies."""


@dataclass(frozen=True)
class Repair:
    """A faulty run's remedy trial: the prescribed remedy (None: nothing prescribed), the random
    one, and the final training loss of the run as it was and under each."""

    case: Case
    prescribed: str | None
    drawn: str
    fault_loss: float
    prescribed_loss: float
    drawn_loss: float

    @property
    def wins(self) -> bool:
        """The prescription reached a lower final loss than the random remedy (by more than
        :data:`MARGIN`)."""
        return (self.prescribed is not None
                and self.prescribed_loss < (1 - MARGIN) * self.drawn_loss)


def prescription(remedies: Iterable[str]) -> str | None:
    """The first of ``remedies`` (keys, most effective first) that the suite can apply."""
    return next((key for key in remedies if key in REPAIRS), None)


def draw(case: Case, prescribed: str | None) -> str:
    """A random remedy other than ``prescribed``, the same for the same case on every run."""
    return random.Random(case.name).choice([key for key in DRAWN if key != prescribed])


def trial(case: Case, remedy: str | None, evidence: Mapping | None = None) -> float:
    """The final training loss of ``case`` retrained from its seed with ``remedy`` applied
    (None: as it is; ``evidence``: the diagnosis's numbers it may use), single-threaded, the
    caller's RNG and thread count restored."""
    if remedy is not None and remedy not in REPAIRS:
        raise BadInputError(f"no repair for the remedy {remedy!r}; the suite applies "
                            f"{', '.join(REPAIRS)}")
    recipe = FAULTS[case.fault].recipe
    if remedy is not None:
        recipe = REPAIRS[remedy](recipe, evidence or {})
    with quiet_machine(case.seed):
        setup = recipe.setup(ARCHITECTURES[case.architecture])
        for _ in steps(setup, case.seed):
            pass
        return final_loss(setup)


def repair(result: FaultRun) -> Repair:
    """The remedy trial of one faulty run's diagnosis."""
    prescribed = prescription(result.remedies) if result.primary != HEALTHY else None
    drawn = draw(result.case, prescribed)
    return Repair(result.case, prescribed, drawn, result.final_loss,
                  math.inf if prescribed is None else trial(result.case, prescribed,
                                                            result.evidence),
                  trial(result.case, drawn))  # a random remedy comes without a diagnosis


def repair_suite(results: Iterable[FaultRun], progress: Progress | None = None) -> list[Repair]:
    """The remedy trial of every faulty run of ``results`` (healthy runs have nothing to
    repair).

    ``progress(done, total, note)`` after each trial: ``done`` faulty runs repaired of
    ``total``, the note the run's name."""
    faulty, repairs = [r for r in results if r.expect != HEALTHY], []
    for result in faulty:
        repairs.append(repair(result))
        if progress is not None:
            progress(len(repairs), len(faulty), result.case.name)
    return repairs

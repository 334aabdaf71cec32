"""What a remedy trial can try: the candidates (optimisers and changes of the baseline: rate,
schedule, clipping, a v_min step), the doctor's remedies mapped onto them, and the schedules.

A candidate is a :class:`Candidate`; :data:`CHANGES` names the changes of the baseline, and any
optimiser name of :mod:`landscope.optim` is a candidate too (:func:`candidate`). A doctor's remedy
becomes candidates through :data:`REMEDY_CANDIDATES` (:func:`remedy_plan`), or is listed with why
it is not tried (it changes the architecture, the initialisation or the data).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
from dataclasses import dataclass

import torch

from landscope import _checks as checks
from landscope import optim
from landscope.doctor import knowledge
from landscope.errors import BadInputError


@dataclass(frozen=True)
class Candidate:
    """One remedy: an optimiser, or a change of the baseline (rate factor, schedule, v_min step).

    optimizer: a name or :class:`landscope.optim.Recipe` for :func:`landscope.optim.make` (None:
        the baseline's optimiser and rate).
    lr_factor: multiplies the baseline's learning rate. schedule: "warmup", "cosine", "sgdr" or
    None (torch.optim.lr_scheduler, stepped once per optimiser step). vmin_step: first the step
    along v_min (see the module). clip_norm: ‖g‖ clipped to it before each step
    (clip_grad_norm_). requires: a module that must be importable (optional extras).
    hvp_per_step: products an optimiser makes inside ``step`` that no counter sees.
    """

    name: str
    description: str
    optimizer: str | optim.Recipe | None = None
    lr_factor: float = 1.0
    schedule: str | None = None
    vmin_step: bool = False
    clip_norm: float | None = None
    requires: str | None = None
    hvp_per_step: int = 0


def _adahessian(params, lr=0.1, **options):
    """pytorch-optimizer's AdaHessian (one Hutchinson product per step)."""
    return importlib.import_module("pytorch_optimizer").AdaHessian(params, lr=lr, **options)


CHANGES: dict[str, Candidate] = {c.name: c for c in (
    Candidate("baseline", "the baseline optimiser as it is"),
    Candidate("lr_x10", "the baseline with 10× its learning rate", lr_factor=10.0),
    Candidate("lr_x0.1", "the baseline with 0.1× its learning rate", lr_factor=0.1),
    Candidate("warmup", "the baseline with a linear warm-up from 1 % of its rate over the first "
              "10 % of the budget (LinearLR)", schedule="warmup"),
    Candidate("cosine", "the baseline with cosine annealing to 0 over the budget "
              "(CosineAnnealingLR)", schedule="cosine"),
    Candidate("sgdr", "the baseline with warm restarts: cosine cycles of 1/7, 2/7, 4/7 of the "
              "budget (CosineAnnealingWarmRestarts, T_mult = 2)", schedule="sgdr"),
    Candidate("clip", "the baseline with the gradient norm clipped to 1 (clip_grad_norm_)",
              clip_norm=1.0),
    Candidate("vmin_step", "one step along the most negative curvature direction at θ₀ "
              "(line search on the training loss), then the baseline", vmin_step=True),
    Candidate("adahessian", "AdaHessian (pytorch-optimizer), lr 0.1, one Hutchinson product "
              "per step", optimizer=optim.Recipe("adahessian", _adahessian, 0.1, second_order=True),
              requires="pytorch_optimizer", hvp_per_step=1),
)}
"""The named changes; any optimiser name of :mod:`landscope.optim` is a candidate too."""

LEFT_OUT = {
    "newton": "Newton's step −H⁻¹g is the quadratic model's critical point, so at an indefinite "
              "Hessian it moves towards the saddle; on a network it also needs a dense solve or "
              "CG per step. Use saddle_free_newton",
    "kfac": "curvlinops provides the K-FAC operator, not an optimiser around it, and landscope "
            "does not re-implement one",
}

DEFAULT_CANDIDATES = ("baseline", "lr_x10", "lr_x0.1", "warmup", "cosine", "sgdr", "vmin_step",
                      "adam")
SCHEDULES = ("warmup", "cosine", "warmup_cosine", "sgdr")

ARCHITECTURE = "changes the architecture"
INITIALISATION = "changes the initialisation: a new start, not a way on from this one"
DATA = "changes the data"
UNMAPPED = "no candidate stands for this remedy yet"

REMEDY_CANDIDATES: dict[str, tuple[str, ...] | str] = {
    # changes of training: the candidates that try them
    "momentum": ("momentum", "nesterov"),
    "adaptive": ("adam", "rmsprop"),
    "adam": ("adam",),
    "momentum_or_adam": ("momentum", "adam"),
    "second_order": ("lbfgs", "adahessian"),
    "vmin_step": ("vmin_step", "negative_curvature"),
    "perturb": ("perturbed_gd", "noisy_gd"),
    "noise_or_cyclic": ("noisy_gd", "sgdr"),
    "gradient_noise": ("noisy_gd",),
    "raise_lr": ("lr_x10",),
    "raise_lr_or_restarts": ("lr_x10", "sgdr"),
    "range_test": ("lr_x10", "lr_x0.1"),
    "lower_lr": ("lr_x0.1",),
    "lower_lr_schedule": ("lr_x0.1", "cosine"),
    "lower_lr_warmup": ("lr_x0.1", "warmup"),
    "warmup": ("warmup",),
    "cosine": ("cosine",),
    "warmup_cosine": ("warmup", "cosine"),
    "clip": ("clip",),
    "weight_decay": ("adamw",),
    # the rest: why a trial from this point cannot try them
    "standardise": f"{DATA} or {ARCHITECTURE}",
    "check_capacity": f"{ARCHITECTURE} or {DATA}",
    "check_data": DATA,
    "more_data": DATA,
    "reinit": INITIALISATION,
    "he_relu": ARCHITECTURE,
    "relu": ARCHITECTURE,
    "leaky_relu": ARCHITECTURE,
    "normalisation": ARCHITECTURE,
    "residual": ARCHITECTURE,
    "fewer_layers": ARCHITECTURE,
    "dropout_or_smaller": ARCHITECTURE,
    "early_stopping": "keeps earlier weights of the run: no change of training",
}
"""A remedy's change (:attr:`landscope.doctor.knowledge.Remedy.key`) → the candidates that try
it, or why none does. Every key the doctor uses has an entry."""


def remedy_candidates(finding: str, remedy: str) -> tuple[str, ...] | str:
    """The candidates that try the doctor's ``remedy`` (its text) of ``finding``, or why it is
    not tried (:data:`UNMAPPED` for a text the finding does not give, or a change without an
    entry in :data:`REMEDY_CANDIDATES`)."""
    known = knowledge.remedy(finding, remedy)
    return UNMAPPED if known is None else REMEDY_CANDIDATES.get(known.key, UNMAPPED)


@dataclass(frozen=True)
class RemedyPlan:
    """The doctor's remedies as a trial: ``candidates`` (the baseline first, each once),
    ``tried`` [{finding, remedy, candidates}] and ``not_tried`` [{finding, remedy, why}]."""

    candidates: tuple[str, ...]
    tried: tuple[dict, ...]
    not_tried: tuple[dict, ...]

    def to_dict(self) -> dict:
        return {"candidates": list(self.candidates), "tried": list(self.tried),
                "not_tried": list(self.not_tried)}


def remedy_plan(findings) -> RemedyPlan:
    """The trial of the remedies of ``findings``, (name, remedy texts) pairs in rank order: each
    remedy that changes the training becomes its candidates; the rest are listed with why."""
    names, tried, not_tried = ["baseline"], [], []
    for finding, remedies in findings:
        for text in remedies:
            what = remedy_candidates(finding, text)
            if isinstance(what, str):
                not_tried.append({"finding": finding, "remedy": text, "why": what})
                continue
            tried.append({"finding": finding, "remedy": text, "candidates": list(what)})
            names += what
    return RemedyPlan(tuple(dict.fromkeys(names)), tuple(tried), tuple(not_tried))


def recorded_baseline(optimizer: dict) -> optim.Recipe:
    """The optimiser a Monitor recorded (its header's ``optimizer``: the torch.optim class name,
    the first parameter group's rate and settings) as the recipe a trial's baseline runs."""
    name = optimizer.get("name")
    cls = getattr(torch.optim, str(name), None)
    if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
        raise BadInputError(f"the run's optimiser {name!r} is not a torch.optim class; name the "
                            "baseline yourself (--optimizer NAME --lr RATE)")
    accepted = set(inspect.signature(cls).parameters) - {"params", "lr"}
    options = {key: tuple(value) if isinstance(value, list) else value
               for key, value in optimizer.items() if key in accepted}
    return optim.Recipe(name, cls, optimizer.get("lr"), options,
                        description=f"the run's own: torch.optim.{name} as recorded")


def candidate(name: str) -> Candidate:
    """The candidate called ``name``: one of :data:`CHANGES`, or an optimiser name."""
    if name in CHANGES:
        return CHANGES[name]
    if name in LEFT_OUT:
        raise BadInputError(f"candidate {name!r} is left out of remedy trials: {LEFT_OUT[name]}")
    try:
        recipe = optim.recipe(name)
    except BadInputError:
        raise BadInputError(
            f"unknown candidate {name!r}; use one of {', '.join(CHANGES)}, an optimiser of "
            f"landscope.optim ({', '.join(n for n in optim.NAMES if n not in LEFT_OUT)}) or a "
            "torch.optim class name such as NAdam") from None
    lr = "" if recipe.lr is None else f", lr {recipe.lr:g}"
    return Candidate(name, f"{recipe.description}{lr}", optimizer=name)


def available(c: Candidate) -> str | None:
    """None when ``c`` can run here; else why not (a missing optional package)."""
    if c.requires and importlib.util.find_spec(c.requires) is None:
        return f"needs the optional package {c.requires} (pip install " \
               f"{c.requires.replace('_', '-')}, or landscope[second-order]); skipped"
    return None


def scheduler(kind: str | None, opt, budget: int):
    """The learning-rate schedule ``kind`` (:data:`SCHEDULES`, or None) over ``budget`` optimiser
    steps, from torch's own schedulers: a warm-up from 1 % of the rate over the first 10 %,
    cosine annealing to 0, the two in sequence, or warm restarts."""
    schedulers = torch.optim.lr_scheduler
    warm = max(1, budget // 10)
    if kind is None:
        return None
    if checks.choice("schedule", kind, SCHEDULES) == "warmup":
        return schedulers.LinearLR(opt, start_factor=0.01, total_iters=warm)
    if kind == "cosine":
        return schedulers.CosineAnnealingLR(opt, T_max=budget)
    if kind == "warmup_cosine":
        return schedulers.SequentialLR(opt, [scheduler("warmup", opt, budget),
                                             schedulers.CosineAnnealingLR(opt, budget - warm)],
                                       [warm])
    return schedulers.CosineAnnealingWarmRestarts(opt, T_0=max(1, budget // 7), T_mult=2)  # sgdr

"""Remedy trials on the user's own network: which change of training gets it lower, measured.

Every candidate (another optimiser, a learning-rate change or schedule, a saddle escaper, one step
along the most negative curvature) trains a private copy of the model from the same point θ₀ with
a fresh optimiser, on the same mini-batches in the same seeded order, for the same budget of
gradient evaluations, once per seed. Fairness is by construction, not by care.

The unit of the budget is one **evaluation**: one forward and backward pass on one training
mini-batch. A Hessian-vector product on a mini-batch counts one as well (it costs 1–2 gradients;
counting one favours second-order methods a little), and so does a loss value at a line-search
trial point. A run takes its next step while what it has spent plus the cost of its last step
stays within the budget (the first step is always taken), so a first-order run spends exactly
the budget, and a run whose steps cost several evaluations stops when another such step would not
fit (a first step may alone exceed a small budget: saddle-free Newton's costs 1 + 20). The
curvature at θ₀ (λ_min, v_min, λ_max on all the training data) is one shared diagnosis, charged
to no candidate.

Step t of every run of seed s reads mini-batch t of seed s's order: for ``(X, y)`` tensors with a
``batch_size``, each epoch a seeded permutation of the samples cut into batches of that size; for
any other data (a DataLoader with ``shuffle=False``, a list of batches), its own batches, each
epoch in a seeded order. A run whose candidate takes several evaluations per step (L-BFGS's line
search, saddle-free Newton's Lanczos) reads fewer batches of the same order.

The v_min candidate: with λ_min < −τ at θ₀ (τ = ``rel_tol``·ρ, ρ = max|λ|), φ(α) = L(θ₀ + α s v)
with s = −sign(gᵀv) falls at first (φ ≈ L − α|gᵀv| − ½|λ_min|α², a model unbounded below that
cannot say where φ turns up again), so α comes from a line search on the full training loss: the
doubling grid α₀·2ʲ, α₀ = 10⁻³·max(1, ‖θ₀‖), until φ rises; the best α is kept. Then the baseline
optimiser continues from there with what is left of the budget.

At the end of each run: the training loss on all the data in eval mode (and the held-out loss),
and λ_min there (Lanczos with a loose tolerance and a product cap: its Ritz value is a Rayleigh
quotient, an upper bound on λ_min, so a value below −τ proves negative curvature is still there).
Runs are written one file each into ``out``; a rerun with the same settings reads them back
instead of running them again, and refuses a directory holding runs of other settings.

The doctor's remedies become a trial through :data:`REMEDY_CANDIDATES` (:func:`remedy_plan`): a
remedy that changes the training maps to the candidates that try it; one that changes the
architecture, the initialisation or the data is listed with why it is not tried. The baseline is
then the run's own optimiser as its Monitor recorded it (:func:`recorded_baseline`).
"""

from __future__ import annotations

import copy
import hashlib
import importlib
import importlib.util
import inspect
import json
import math
import statistics
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from landscope import _checks as checks
from landscope import io, optim
from landscope.critical import default_rel_tol
from landscope.data import Batch, Batches, is_tensor_pair
from landscope.doctor import knowledge
from landscope.errors import BadInputError, NonFiniteLossError
from landscope.objective import Objective, write_theta
from landscope.optim._base import PointOptimizer
from landscope.race.engine import derive_seed
from landscope.spectrum import spectrum

SCHEMA_VERSION = 2
DIAGNOSIS_PRODUCTS = 4
"""The product cap at θ₀, in units of ``curvature_products`` (W2's λ_min needs about 100 at
spectrum's default tolerance; a loose tolerance stops at a Ritz value six times too small)."""
ENGINE = "loop"
"""The product engine of every λ_min: a fixed one, since ``engine="auto"`` chooses by timing and
the last bits of λ_min would then depend on the machine's load."""


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


@dataclass
class Trial:
    """The outcome of :func:`escape`.

    settings: what was run (its ``key`` names the settings a resumed run must share).
    start: the loss, λ_min, λ_max and the v_min step at θ₀. runs: one record per (candidate,
    seed), RUN_FIELDS plus the loss curve. summary: one row per candidate, ranked by the mean
    final training loss (SUMMARY_FIELDS). skipped: candidates that could not run, and why.
    """

    settings: dict
    start: dict
    runs: list[dict]
    summary: list[dict]
    skipped: dict[str, str]

    def to_dict(self) -> dict:
        return {"settings": self.settings, "start": self.start, "summary": self.summary,
                "skipped": self.skipped, "runs": self.runs}

    def write_csv(self, directory: str | Path) -> tuple[Path, Path]:
        """``escape-summary.csv`` and ``escape-runs.csv`` in ``directory``."""
        directory = Path(directory)
        paths = directory / "escape-summary.csv", directory / "escape-runs.csv"
        return (io.write_csv(paths[0], self.summary, SUMMARY_FIELDS),
                io.write_csv(paths[1], self.runs, RUN_FIELDS))


RUN_FIELDS = ("candidate", "seed", "train_loss", "held_out_loss", "lambda_min",
              "negative_curvature_left", "evaluations", "steps", "diverged", "vmin_step",
              "seconds")
SUMMARY_FIELDS = ("rank", "candidate", "train_loss_mean", "train_loss_std", "held_out_mean",
                  "held_out_std", "negative_curvature_left", "diverged", "evaluations",
                  "seconds", "description")


def escape(model: nn.Module, loss_fn, data, *, candidates=DEFAULT_CANDIDATES,
           optimizer: str | optim.Recipe = "momentum", lr: float | None = None, steps: int = 200,
           seeds: int = 3, seed: int = 0, batch_size: int | None = None, held_out=None,
           out: str | Path | None = None, curvature_products: int = 100,
           curvature_tol: float = 1e-2, progress: Callable[[dict, int, int], None] | None = None
           ) -> Trial:
    """Run every candidate × seed from the model's current weights θ₀ and rank them.

    Parameters
    ----------
    model: the user's network at θ₀; never modified (each run trains a deep copy, in train mode).
    loss_fn: ``loss_fn(output, target)`` (the batch mean), or "model" (its own loss).
    data: the training data: ``(X, y)``, a DataLoader (``shuffle=False``) or a list of batches.
    candidates: names (see :func:`candidate`). optimizer, lr: the baseline ("the user's
        optimiser": a :func:`landscope.optim.make` name or a Recipe, e.g.
        :func:`recorded_baseline`; lr default: its stated rate).
    steps: the budget of evaluations per run (see the module). seeds: runs per candidate.
    seed: the seed of everything random (data order, dropout, optimisers' noise).
    batch_size: training mini-batch size for ``(X, y)`` data (None: all samples in one batch);
        other data keeps its own batches.
    held_out: optional held-out data, evaluated at each run's end.
    out: directory for one file per finished run (resume) — None keeps nothing.
    curvature_products, curvature_tol: the cap and relative tolerance of λ_min at each run's end
        (the diagnosis at θ₀ has spectrum's default tolerance and ``DIAGNOSIS_PRODUCTS`` × the
        cap).
    progress: ``progress(run, done, total)`` after each run (read back or computed).
    """
    steps, seeds = checks.integer("steps", steps), checks.integer("seeds", seeds)
    if batch_size is not None:
        checks.integer("batch_size", batch_size)
    chosen = [candidate(n) for n in dict.fromkeys(candidates)]
    if not chosen:
        raise BadInputError("no candidates; name at least one (e.g. baseline, adam)")
    baseline = optim.recipe(optimizer)
    if baseline.name in LEFT_OUT:
        raise BadInputError(f"optimizer {baseline.name!r}: {LEFT_OUT[baseline.name]}")
    if baseline.row_aware and any(c.clip_norm for c in chosen):
        raise BadInputError(f"clip: {baseline.name} takes its gradients itself, so there is none "
                            "to clip; use a torch.optim baseline")
    skipped = {c.name: why for c in chosen if (why := available(c))}
    chosen = [c for c in chosen if c.name not in skipped]
    with torch.random.fork_rng(devices=_rng_devices(model)):
        obj = Objective.from_model(model, loss_fn, data, engine=ENGINE)
        schedule = _Schedule(data, batch_size, model, own_loss=isinstance(loss_fn, str))
        settings = _settings(model, obj, schedule, held_out, baseline, lr, steps, seed,
                             curvature_products, curvature_tol)
        store = _Store(out, settings["key"])
        start = _diagnose(obj, settings, seed)
        work = _Work(model, loss_fn, data, obj, schedule, baseline, settings, start, held_out)
        runs, total = [], len(chosen) * seeds
        for c in chosen:
            for s in range(seeds):
                run = store.read(c.name, s)
                if run is None:
                    run = store.write(work.run(c, s))
                runs.append(run)
                if progress is not None:
                    progress(run, len(runs), total)
    settings = {**settings, "candidates": [c.name for c in chosen], "seeds": seeds}
    return Trial(settings, _public(start), runs, _summary(chosen, runs), skipped)


# ---------------------------------------------------------------------- one run
class _Diverged(Exception):
    """The mini-batch loss became NaN or infinite."""


class _Work:
    """What every run shares: θ₀, the data order, the baseline and the diagnosis at θ₀."""

    def __init__(self, model, loss_fn, data, obj, schedule, baseline, settings, start, held_out):
        self.model, self.loss_fn, self.data, self.obj = model, loss_fn, data, obj
        self.schedule = schedule
        self.baseline, self.settings, self.start = baseline, settings, start
        self.held_out = held_out
        self.budget = settings["steps"]

    def run(self, c: Candidate, s: int) -> dict:
        """Candidate ``c`` with seed ``s``: train a copy, then measure where it ended."""
        seed = self.settings["seed"]
        net = copy.deepcopy(self.model).train()
        net.zero_grad(set_to_none=True)
        spent, steps, curve, diverged = 0, 0, [], False
        began = time.perf_counter()
        torch.manual_seed(derive_seed(seed, "dropout", s))  # inside escape's fork_rng
        vmin = self.start["vmin"] if c.vmin_step else None
        if vmin is not None:
            write_theta(net, self.obj, vmin["theta"])
            spent += vmin["evaluations"]
        recipe = self.baseline if c.optimizer is None else optim.recipe(c.optimizer)
        lr = self.settings["lr"] if c.optimizer is None else recipe.lr
        opt = recipe.build(list(net.parameters()), None if lr is None else lr * c.lr_factor,
                           generator=torch.Generator().manual_seed(derive_seed(seed, c.name, s)))
        rates = scheduler(c.schedule, opt, self.budget)
        batches, last_cost = self.schedule.order(derive_seed(seed, "order", s)), 0
        try:
            while spent < self.budget and spent + last_cost <= self.budget:
                step = _Step(net, next(batches), self.obj.model_loss, recipe, c.clip_norm)
                before = _products(opt)
                opt.step(step)
                last_cost = step.calls + _products(opt) - before + c.hvp_per_step
                spent, steps = spent + last_cost, steps + 1
                curve.append([spent, step.first])
                if rates is not None:
                    rates.step()
        except _Diverged:
            diverged = True
        seconds = time.perf_counter() - began
        return {"candidate": c.name, "seed": s, "evaluations": spent, "steps": steps,
                "diverged": diverged, "seconds": seconds, "vmin_step": vmin is not None,
                "curve": curve,
                **self._measure(net, diverged)}

    def _measure(self, net, diverged: bool) -> dict:
        """The training (and held-out) loss at the end in eval mode, and λ_min there."""
        gone = {"train_loss": math.inf, "held_out_loss": None, "lambda_min": None,
                "negative_curvature_left": None}
        if diverged:
            return gone
        try:
            end = Objective.from_model(net.eval(), self.loss_fn, self.data, engine=ENGINE)
            train = float(end.value())
            held = None if self.held_out is None else float(
                Objective.from_model(net, self.loss_fn, self.held_out).value())
        except NonFiniteLossError:
            return gone
        lam, _ = _smallest(end, self.settings)
        return {"train_loss": train, "held_out_loss": held, "lambda_min": lam,
                "negative_curvature_left": lam < -self.start["tau"]}


class _Step:
    """The closure of one optimiser step: the loss of one mini-batch (every call of the step,
    line-search trials included, reads the same batch) and its gradient, clipped to
    ``clip_norm`` if given; ``calls`` counts the evaluations."""

    def __init__(self, net, batch: Batch, model_loss, recipe, clip_norm: float | None = None):
        self.net, self.batch, self.model_loss = net, batch, model_loss
        self.clip_norm = clip_norm
        self.takes_gradient = recipe.row_aware  # landscope's own take the gradient themselves
        self.create_graph = recipe.second_order and not recipe.row_aware
        self.calls, self.first = 0, None

    def __call__(self):
        for p in self.net.parameters():
            p.grad = None
        args, kwargs = self.model_loss.inputs_of(self.batch)
        loss = self.model_loss.loss_of(self.net(*args, **kwargs), self.batch)
        self.calls += 1
        value = float(loss.detach())
        if not math.isfinite(value):
            raise _Diverged
        if self.first is None:
            self.first = value
        if not self.takes_gradient:
            with warnings.catch_warnings():  # the graph kept in p.grad is a cycle that the
                warnings.filterwarnings(  # next call's p.grad = None breaks
                    "ignore", "Using backward\\(\\) with create_graph=True", UserWarning)
                loss.backward(create_graph=self.create_graph)
            if self.clip_norm is not None:
                nn.utils.clip_grad_norm_(self.net.parameters(), self.clip_norm)
        return loss


class _Schedule:
    """The training mini-batches in a seeded order (see the module)."""

    def __init__(self, data, batch_size, model, own_loss: bool):
        first = next(model.parameters(), None)
        dtype = first.dtype if first is not None else None
        device = first.device if first is not None else None
        self.pairs = is_tensor_pair(data)
        if batch_size is not None and not self.pairs:
            raise BadInputError(f"batch_size={batch_size} applies to (X, y) tensors only; a "
                                "DataLoader or a list of batches keeps its own batches")
        self.batches = list(Batches(data, dtype=dtype, device=device,
                                    target_to_model=own_loss))
        self.size = batch_size
        if self.pairs:
            self.samples = self.batches[0].size
            self.size = min(batch_size or self.samples, self.samples)

    def order(self, seed: int) -> Iterator[Batch]:
        """Mini-batch after mini-batch, epoch after epoch, from ``seed``."""
        generator = torch.Generator().manual_seed(seed)
        while True:
            if self.pairs:
                permutation = torch.randperm(self.samples, generator=generator)
                for rows in permutation.split(self.size):
                    yield self.batches[0].rows(rows)
            else:
                for index in torch.randperm(len(self.batches), generator=generator).tolist():
                    yield self.batches[index]

    def describe(self) -> str:
        if self.pairs:
            return f"{self.samples} samples, mini-batches of {self.size} in a seeded order"
        return f"{len(self.batches)} batches of the data, in a seeded order each epoch"


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


# ---------------------------------------------------------------------- θ₀ and curvature
def _diagnose(obj: Objective, settings: dict, seed: int) -> dict:
    """L, λ_min, λ_max at θ₀ (spectrum's default tolerance: v_min is a direction to step along,
    not only a sign) and, with λ_min < −τ, the v_min step by line search."""
    spec = spectrum(obj, k=1, which="both", max_products=DIAGNOSIS_PRODUCTS * settings[
        "curvature_products"], seed=seed)
    lam_min, lam_max = float(spec.smallest.values[0]), float(spec.largest.values[0])
    tau = default_rel_tol(obj.dtype) * max(abs(lam_min), abs(lam_max))
    loss, grad = obj.value_and_grad()
    start = {"loss": float(loss), "lambda_min": lam_min, "lambda_max": lam_max, "tau": tau,
             "products": spec.evidence.get("hvp_products", obj.n), "vmin": None}
    if lam_min < -tau:
        v = spec.smallest.vectors[:, 0].to(obj.dtype)
        start["vmin"] = _line_search(obj, float(loss), grad, v)
    return start


def _line_search(obj: Objective, loss: float, grad: torch.Tensor, v: torch.Tensor) -> dict:
    """The best α of φ(α) = L(θ₀ + α s v) on the doubling grid (see the module)."""
    theta = obj.theta0
    slope = float(grad @ v)
    sign = -1.0 if slope > 0 else 1.0
    alpha = 1e-3 * max(1.0, float(theta.norm()))
    best, best_alpha, evaluations = loss, 0.0, 0
    for _ in range(40):
        try:
            value = float(obj.value(theta + alpha * sign * v))
        except NonFiniteLossError:
            value = math.inf
        evaluations += 1
        if not value < best:
            break
        best, best_alpha, alpha = value, alpha, 2 * alpha
    return {"alpha": best_alpha, "sign": sign, "slope": slope, "loss": best,
            "evaluations": evaluations, "theta": theta + best_alpha * sign * v}


def _smallest(obj: Objective, settings: dict) -> tuple[float, float]:
    spec = spectrum(obj, k=1, which="smallest", tol=settings["curvature_tol"],
                    max_products=settings["curvature_products"], seed=settings["seed"])
    return float(spec.smallest.values[0]), float(spec.smallest.residuals[0])


# ---------------------------------------------------------------------- settings and resume
def _settings(model, obj, schedule, held_out, baseline, lr, steps, seed, products, tol) -> dict:
    """What a run's result depends on; ``key`` is its hash (a resumed trial must match it)."""
    identity = {
        "theta0_sha256": _sha256([t for _, t in sorted(model.state_dict().items())]),
        "data_sha256": _data_sha256(schedule.batches),
        "held_out_sha256": None if held_out is None else _data_sha256(Batches(held_out)),
        "model": type(model).__name__, "loss": obj.info["loss"], "n": obj.n,
        "dtype": obj.info["dtype"], "data": schedule.describe(), "batch_size": schedule.size,
        "optimizer": baseline.name, "optimizer_options": baseline.options,
        "lr": baseline.lr if lr is None else float(lr),
        "steps": steps, "seed": seed, "curvature_products": products, "curvature_tol": tol,
        "schema_version": SCHEMA_VERSION,
    }
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]
    return {**identity, "key": key}


class _Store:
    """One JSON file per finished run under ``out/escape-runs`` (written atomically)."""

    def __init__(self, out, key: str):
        self.key = key
        self.directory = None if out is None else Path(out) / "escape-runs"
        if self.directory is None or not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            theirs = io.read_result(path).get("key")
            if theirs != key:
                raise BadInputError(
                    f"{self.directory} holds runs of other settings (key {theirs} vs {key}: "
                    "another model, data, baseline, budget or seed); delete it to start over, "
                    "choose another --out, or rerun with the settings that made it")

    def read(self, name: str, s: int) -> dict | None:
        path = self._path(name, s)
        if path is None or not path.exists():
            return None
        return io.read_result(path)["run"]

    def write(self, run: dict) -> dict:
        """Keep ``run``; returned as it reads back (non-finite numbers become None)."""
        path = self._path(run["candidate"], run["seed"])
        if path is None:
            return run
        io.write_result(path.parent, "escape_run", {"key": self.key, "run": run}, name=path.name)
        return self.read(run["candidate"], run["seed"])

    def _path(self, name: str, s: int) -> Path | None:
        return None if self.directory is None else self.directory / f"{name}-seed{s}.json"


# ---------------------------------------------------------------------- summary
def _summary(chosen: list[Candidate], runs: list[dict]) -> list[dict]:
    """One row per candidate, ranked by the mean final training loss (diverged runs count as
    +inf, so a candidate with any divergence ranks below every one without)."""
    rows = []
    for c in chosen:
        mine = [r for r in runs if r["candidate"] == c.name]
        train = [math.inf if r["train_loss"] is None else r["train_loss"] for r in mine]
        held = [r["held_out_loss"] for r in mine if r["held_out_loss"] is not None]
        left = [r["negative_curvature_left"] for r in mine
                if r["negative_curvature_left"] is not None]
        rows.append({
            "candidate": c.name, "description": c.description,
            "train_loss_mean": _mean(train), "train_loss_std": _spread(train),
            "held_out_mean": _mean(held) if held else None,
            "held_out_std": _spread(held) if held else None,
            "negative_curvature_left": f"{sum(left)}/{len(left)}" if left else "—",
            "diverged": sum(r["diverged"] for r in mine),
            "evaluations": statistics.mean(r["evaluations"] for r in mine),
            "seconds": statistics.mean(r["seconds"] for r in mine)})
    rows.sort(key=lambda row: (row["train_loss_mean"], row["candidate"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return rows


def _mean(values: list[float]) -> float:
    return math.inf if any(math.isinf(v) for v in values) else statistics.fmean(values)


def _spread(values: list[float]) -> float:
    """The sample standard deviation over seeds (0 for one seed)."""
    if len(values) < 2 or any(math.isinf(v) for v in values):
        return 0.0 if len(values) < 2 else math.inf
    return statistics.stdev(values)


def _public(start: dict) -> dict:
    """The diagnosis at θ₀ without the point itself."""
    vmin = start["vmin"]
    return {**start, "vmin": None if vmin is None else
            {k: v for k, v in vmin.items() if k != "theta"}}


# ---------------------------------------------------------------------- helpers
def _data_sha256(batches) -> str:
    return _sha256([t for b in batches for t in (*b.inputs, *b.kwargs.values(), b.target)
                    if t is not None])


def _sha256(tensors: list[torch.Tensor]) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        digest.update(str(t.dtype).encode() + str(tuple(t.shape)).encode())
        digest.update(t.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _products(opt) -> int:
    """Hessian-vector products landscope's own optimisers have made so far."""
    return opt.counts["hvp"] if isinstance(opt, PointOptimizer) else 0


def _rng_devices(model: nn.Module) -> list:
    first = next(model.parameters(), None)
    return [first.device] if first is not None and first.device.type == "cuda" else []

"""One run of a remedy trial: a copy of the model trained by one candidate with one seed, on the
trial's seeded mini-batch order, within the budget of evaluations; and the curvature at θ₀ that
every run shares (λ_min, λ_max, the v_min step by line search). See :mod:`landscope.escape`."""

from __future__ import annotations

import copy
import math
import time
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from landscope import optim
from landscope.critical import default_zero_rtol
from landscope.data import Batch, Batches, is_tensor_pair
from landscope.errors import BadInputError, NonFiniteLossError
from landscope.escape.candidates import Candidate, scheduler
from landscope.objective import Objective, write_theta
from landscope.optim._base import PointOptimizer
from landscope.race.engine import derive_seed
from landscope.spectrum import spectrum

DIAGNOSIS_PRODUCTS = 4
"""The product cap at θ₀, in units of ``curvature_products`` (W2's λ_min needs about 100 at
spectrum's default tolerance; a loose tolerance stops at a Ritz value six times too small)."""
ENGINE = "loop"
"""The product engine of every λ_min: a fixed one, since ``engine="auto"`` chooses by timing and
the last bits of λ_min would then depend on the machine's load."""


class _Diverged(Exception):
    """The mini-batch loss became NaN or infinite."""


class Work:
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


class BatchOrder:
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


# ---------------------------------------------------------------------- θ₀ and curvature
def diagnose_start(obj: Objective, settings: dict, seed: int) -> dict:
    """L, λ_min, λ_max at θ₀ (spectrum's default tolerance: v_min is a direction to step along,
    not only a sign) and, with λ_min < −τ, the v_min step by line search."""
    spec = spectrum(obj, k=1, which="both", max_products=DIAGNOSIS_PRODUCTS * settings[
        "curvature_products"], seed=seed)
    lam_min, lam_max = float(spec.smallest.values[0]), float(spec.largest.values[0])
    tau = default_zero_rtol(obj.dtype) * max(abs(lam_min), abs(lam_max))
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
    """λ_min and its residual to the trial's curvature_rtol (its settings' key "curvature_tol",
    kept for the files already written) within its cap of products."""
    spec = spectrum(obj, k=1, which="smallest", eig_rtol=settings["curvature_tol"],
                    max_products=settings["curvature_products"], seed=settings["seed"])
    return float(spec.smallest.values[0]), float(spec.smallest.residuals[0])


def _products(opt) -> int:
    """Hessian-vector products landscope's own optimisers have made so far."""
    return opt.counts["hvp"] if isinstance(opt, PointOptimizer) else 0

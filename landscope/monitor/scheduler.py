"""When the Monitor measures curvature, and with how much time.

Curvature (:mod:`landscope.monitor.curvature`) needs a held batch and is spent only when the loss
curve calls for it (:func:`signals.curvature_reason`: it rises, stalls short of convergence or
while oscillating, or falls slowly far from its end), at most once per ``window`` steps (the
cool-down), on a window free of non-finite values, and only within the budget: with T_own the
Monitor's own time so far (its steps, hooks, flushes and every curvature measurement) and T_train
the training's, a measurement gets

    allowance = budget · T_train − T_own

and starts only if that buys a gradient pass on the held batch and a few products
(:func:`curvature.least_seconds`; before the first measurement the product's cost is guessed from
a training step's time, scaled from the training batch to the held one). A measurement that fails
is recorded with its error and a warning, and curvature is off for the rest of the run.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from landscope.monitor import curvature, signals
from landscope.monitor.record import Columns

CURVE = ("loss", "grad_cos", "non_finite")
"""What reading the loss curve keeps of each row of the last window."""
HEAD = 10
"""The initial loss is the mean of this many first finite losses (:func:`signals.initial_loss`)."""


@dataclass
class Ledger:
    """The Monitor's own time on one ``clock``: ``monitor`` (everything it did, curvature
    included) and ``curvature`` alone, since ``start``; the training's is the rest."""

    clock: Callable[[], float]
    start: float = field(init=False)
    monitor: float = 0.0
    curvature: float = 0.0

    def __post_init__(self):
        self.start = self.clock()

    def charge(self, start: float) -> None:
        """Add the time since ``start`` (a reading of the clock) to the Monitor's own."""
        self.monitor += self.clock() - start

    def training(self) -> float:
        return self.clock() - self.start - self.monitor

    def to_dict(self) -> dict:
        return {"monitor": self.monitor, "curvature": self.curvature,
                "total": self.clock() - self.start}


class CurvatureScheduler:
    """Reads the loss curve at each flush and measures curvature when it is worth it and paid
    for (module docstring); ``events`` lists every measurement, failed ones included."""

    def __init__(self, model, optimizer, loss_fn, held, *, window: int, budget: float,
                 max_products: int, lower_bound: float, thresholds: signals.CurveThresholds,
                 noise_chunks: int, ledger: Ledger):
        self.model, self.optimizer, self.loss_fn, self.held = model, optimizer, loss_fn, held
        self.window, self.budget, self.max_products = window, budget, max_products
        self.lower_bound, self.thresholds, self.noise_chunks = lower_bound, thresholds, noise_chunks
        self.ledger = ledger
        self.events: list[dict] = []
        self._head: list[float] = []  # the first finite losses (the initial loss)
        self._recent = np.zeros((0, len(CURVE)))  # the CURVE columns of the last window's rows
        self._last_measured = -math.inf
        self._costs: tuple[float, float] | None = None  # t_g and t_p the last measurement saw
        self._failed = False
        self._warm: curvature.Eigenvectors | None = None  # the next measurement's start

    def remember(self, rows: np.ndarray, columns: Columns) -> None:
        """Keep what reading the curve needs: the first losses and the last window's rows."""
        if len(self._head) < HEAD:
            losses = rows[:, columns["loss"]]
            self._head += losses[np.isfinite(losses)][:HEAD - len(self._head)].tolist()
        curve = rows[:, [columns[name] for name in CURVE]]
        self._recent = np.concatenate([self._recent, curve])[-self.window:]

    def amend_loss(self, loss: float) -> None:
        """A loss logged late for the last remembered step."""
        self._recent[-1, CURVE.index("loss")] = loss

    def maybe_measure(self, rows: np.ndarray, columns: Columns, step: int,
                      batch_size: int | None) -> None:
        """At ``step`` steps done: measure curvature into the last of ``rows`` if the last
        ``window`` losses stall, rise or creep and the budget allows."""
        if self.held is None or self._failed or step - self._last_measured < self.window:
            return
        losses, cosines, broken = self._recent.T
        if len(self._recent) < self.window or np.nansum(broken) > 0:
            return  # a window not yet full, or broken weights (curvature there means nothing)
        initial = signals.initial_loss(np.array(self._head), HEAD)
        status, progress = signals.window_status(losses, initial, self.lower_bound,
                                                 self.thresholds)
        reason = signals.curvature_reason(status, progress, losses, cosines, initial,
                                          self.lower_bound, self.thresholds)
        spent = self.ledger.monitor  # everything the Monitor did, curvature included
        training = self.ledger.training()
        allowance = self.budget * training - spent
        if reason is None or allowance < self._least_seconds(training, step, batch_size):
            return
        event = {"step": int(rows[-1, columns["step"]]), "reason": reason, "progress": progress}
        start = self.ledger.clock()
        try:
            result = curvature.measure(self.model, self.loss_fn, self.held, self.optimizer,
                                       smallest=reason == "stalled",
                                       max_products=self.max_products,
                                       noise_chunks=self.noise_chunks,
                                       batch_size=batch_size, seconds=allowance,
                                       warm=self._warm)
        except Exception as error:  # observing must never stop the user's training
            note = (f"curvature on the held batch failed and is off for the rest of the run: "
                    f"{type(error).__name__}: {error}")
            warnings.warn(note, RuntimeWarning, stacklevel=4)
            seconds = self.ledger.clock() - start
            self.ledger.curvature += seconds
            self._failed = True
            self.events.append({**event, "seconds": seconds, "rule": None, "products": 0,
                                "note": note})
            return
        for name in curvature.COLUMNS:
            rows[-1, columns[name]] = result[name]
        self.ledger.curvature += result["seconds"]
        self._last_measured = step
        self._warm = result["vectors"]
        if math.isfinite(result["gradient_seconds"]):
            self._costs = (result["gradient_seconds"], result["seconds_per_product"])
        self.events.append({**event, "seconds": result["seconds"], "rule": result["rule"],
                            "products": result["curvature_products"],
                            "batch_chunks": result["batch_chunks"], "note": result["note"]})

    def _least_seconds(self, training: float, step: int, batch_size: int | None) -> float:
        """The least time a measurement is started with (:func:`curvature.least_seconds`): from
        the costs the last measurement saw, or before the first from the training step's time (a
        step is at least a gradient pass on a mini-batch), scaled from the mini-batch to the held
        batch."""
        if self._costs is not None:
            return curvature.least_seconds(*self._costs)
        held = curvature.held_size(self.held)
        return curvature.least_seconds(training / max(step, 1) * held / (batch_size or held))

"""The Monitor: watch any PyTorch training loop, cheaply, without changing what it computes.

Two lines in the user's loop (then ``landscope doctor runs/exp1``)::

    with landscope.monitor.Monitor(model, optimizer, "runs/exp1") as monitor:   # around the loop
        ...
        monitor.step(loss)                                                      # after .step()

What is hard: the Monitor runs inside every step, so it must cost a few tensor operations and no
synchronisation per step, and it must only observe: training with and without it is
bit-identical. The loss is kept every step (a float on the CPU, a detached tensor on accelerators,
so no synchronisation there); the rest every ``every`` steps, read by hooks that exist only for
the steps that need them (:mod:`landscope.monitor.capture`). Values are converted in one go at a
flush every ``check_every`` steps (:mod:`landscope.monitor.table`), which appends them to
``monitor.csv`` (:mod:`landscope.monitor.record`) and reads the loss curve.

Curvature (λ_max against the optimiser's stability limit, under mini-batch SGD also the batch
sharpness on chunks of the training batch size, which it learns from the model's input; λ_min,
gradient noise; see :mod:`landscope.monitor.curvature`) needs a held batch and is spent only
when the loss curve rises, stalls short of convergence or while oscillating, or falls slowly far
from its end (λ_max only: is the rate far below its limit?), at most once per ``window`` steps,
and only within ``budget``: the Monitor's own time (its steps, flushes and every curvature
measurement, this one included) stays within ``budget`` times the training time so far, so
curvature gets what the first-order statistics leave (:mod:`landscope.monitor.scheduler`). Each
measurement gets the time left and caps its Hessian-vector products from a timed product
(:func:`curvature.measure`); the first is no exception. A measurement that fails (a model the
analysis cannot differentiate twice) is recorded with its error and a warning, and curvature is
off for the rest of the run: observing never stops the training.

Under data parallelism (``torchrun``, DistributedDataParallel: a process group of more than one
rank is initialised) every rank runs the same loop, but rank 0 alone records: the other ranks'
Monitors do nothing at all, and rank 0's never calls a collective (its curvature reads the held
batch alone), so no rank waits for another and the run directory is written once. The loss is
rank 0's mini-batch loss, not the mean over ranks: the mean would cost an all-reduce, a
synchronisation, every step on every rank. Gradients and updates are those every rank applies
(DDP's average); the header's ``ranks`` says how many ranks trained.

The :class:`Monitor` is the façade: it owns the capture, the table, the scheduler, the time
ledger, the run directory and the writers.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscope import _checks as checks
from landscope import distributed
from landscope.errors import BadInputError
from landscope.monitor import curvature, makeup, record, signals, stats
from landscope.monitor.capture import Capture, StepSample
from landscope.monitor.scheduler import CurvatureScheduler, Ledger
from landscope.monitor.table import Table, floats


class Monitor:
    """Records a training run (see the module docstring); use as a context manager or ``close()``.

    Parameters
    ----------
    model: the ``nn.Module`` being trained; it needs trainable parameters. A
        ``DistributedDataParallel`` (or ``DataParallel``) wrapper is looked through: its
        ``module`` is recorded, under the same names as without it.
    optimizer: its ``torch.optim.Optimizer`` (gradients, learning rate and stability limit).
    run_dir: directory for ``monitor.csv`` and ``monitor.json`` (None: keep the record in memory);
        a new Monitor replaces a record already there.
    loss_fn, held: ``loss_fn(output, target)`` (or ``"model"``: the loss the model returns, as
        a Hugging Face model given labels) and a held batch enable curvature: ``(X, y)``, or a
        mapping of tensors the model takes as keyword arguments, less the target (``labels``).
    every: record the first-order statistics every this many steps (the loss: every step). The
        default keeps the cost within ~5% of a small model's step; 1 records everything every
        step, at ~1.5× (benchmarks/RESULTS.md).
    check_every: flush and read the loss curve every this many steps.
    window: steps in the window the loss curve is read over (the doctor reads the final one);
        also the curvature cool-down. Keep several ``every`` intervals inside it.
    budget: the Monitor's own time, curvature included, stays within this fraction of the
        training time so far; curvature gets what the first-order statistics leave. The
        default, 4%, leaves room for the hooks' dispatch, which the Monitor cannot time (about
        1% more: 5% in all, measured step by step against an unmonitored twin). A
        measurement needs a gradient pass on the held batch and 12 products to be worth
        starting (:func:`curvature.least_seconds`): at 4%, training must first have taken 25
        times that and more, so short runs get curvature only with a larger budget.
    max_products: Hessian-vector products per eigenvalue computation on the iterative path.
    lower_bound: known lower bound of the loss (0 for cross-entropy and MSE).
    tensorboard: also write the scalars with ``torch.utils.tensorboard`` (if installed).

    Under an initialised process group of more than one rank, create it on every rank, as any
    logger: rank 0 records (to ``run_dir``, the same on every rank or given on rank 0 only) and
    the others' Monitors are idle (no hooks, no files, no collectives; their ``record`` is
    refused). The loss column is rank 0's mini-batch loss; gradient and update columns are the
    averaged ones every rank applies; activations and curvature are rank 0's (its batches, its
    held batch, measured in rank 0's process alone). The header's ``ranks`` is the number of
    ranks (1 without a process group), its ``loss_rank`` the rank whose loss is recorded (0). The
    record is what one process would write that trained on rank 0's batches with the averaged
    gradients.

    Examples
    --------
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> X, y = torch.randn(16, 4), torch.randint(0, 2, (16,))
    >>> with Monitor(net, opt, every=1) as monitor:
    ...     for _ in range(3):
    ...         opt.zero_grad()
    ...         loss = nn.functional.cross_entropy(net(X), y)
    ...         loss.backward()
    ...         opt.step()
    ...         monitor.step(loss)
    >>> len(monitor.record), "dead:1" in monitor.record.columns
    (3, True)
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer,
                 run_dir: str | Path | None = None, *, loss_fn=None, held=None, every: int = 25,
                 check_every: int = 100, window: int = 200, budget: float = 0.04,
                 max_products: int = 100, lower_bound: float = 0.0, tensorboard: bool = False,
                 thresholds: signals.CurveThresholds | None = None, noise_chunks: int = 4):
        _check_inputs(model, optimizer, loss_fn, held, every, check_every, window)
        self.ranks = distributed.world()
        self._recording = distributed.is_main()  # rank 0 records; the others are idle
        self._closed = False
        self._pending: list[StepSample] = []
        self._idle_steps = 0
        if not self._recording:
            self.model, self.optimizer, self.run_dir = model, optimizer, None
            return
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module  # its forward would call collectives; the module's does not
        self.model, self.optimizer = model, optimizer
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.check_every = check_every
        self.layers = stats.layers(model)
        if not self.layers:
            raise BadInputError(
                f"the model ({type(model).__name__}) has no trainable parameters; the Monitor "
                "records gradients and updates, so give it a model with requires_grad parameters")
        self._make_up = makeup.make_up(model)
        self._table: Table | None = None  # built at the first flush, once the sites are known
        self._data: list[np.ndarray] = []  # every row, only without a run directory
        self._last_row: tuple[int, np.ndarray] | None = None  # CSV offset and values, last row
        self._ledger = Ledger(time.perf_counter)  # the one clock every part of the Monitor reads
        self._scheduler = CurvatureScheduler(
            model, optimizer, loss_fn, held, window=window, budget=budget,
            max_products=max_products, lower_bound=lower_bound,
            thresholds=thresholds or signals.CurveThresholds(), noise_chunks=noise_chunks,
            ledger=self._ledger)
        self._writer = record.tensorboard_writer(self.run_dir) if tensorboard else None
        self._capture = Capture(model, optimizer, self.layers, every, self._ledger)
        self._capture.arm()

    @property
    def t(self) -> int:
        """Steps recorded so far (on an idle rank: steps seen)."""
        return self._capture.step if self._recording else self._idle_steps

    # ------------------------------------------------------------------ the loop's side
    def step(self, loss=None, *, val_loss: float | None = None) -> None:
        """Record one training step; call it once per step, after ``optimizer.step()``.

        ``loss`` is the step's mini-batch loss (tensor or float; None if unknown), ``val_loss``
        an optional validation loss for this step.
        """
        if self._closed:
            raise BadInputError("this Monitor is closed; create a new one for another run")
        if not self._recording:
            self._idle_steps += 1
            return
        start = self._ledger.clock()
        if isinstance(loss, torch.Tensor):  # a float on the CPU; no synchronisation elsewhere
            loss = loss.item() if loss.device.type == "cpu" else loss.detach()
        lr = float(self.optimizer.param_groups[0]["lr"])
        self._pending.append(self._capture.sample(loss, lr, val_loss))
        self._ledger.charge(start)
        if self.t % self.check_every == 0:
            self.flush()
        if self._capture.measuring(self.t):
            self._capture.arm()

    def log(self, *, loss: float | None = None, val_loss: float | None = None) -> None:
        """Attach a loss or validation loss known only later to the most recent step.

        Also after the flush that wrote that step (a framework's logging or validation often
        comes right after the step that flushed): its row is then rewritten in place.
        """
        if self._closed:
            raise BadInputError("this Monitor is closed; create a new one for another run")
        if self.t == 0:
            raise BadInputError("log() attaches values to the last step; call step() first")
        if not self._recording:
            return
        if self._pending:
            sample = self._pending[-1]
            sample.loss = sample.loss if loss is None else loss
            sample.val_loss = sample.val_loss if val_loss is None else val_loss
        elif loss is not None or val_loss is not None:
            self._amend(loss, val_loss)

    def flush(self, *, final: bool = False) -> None:
        """Convert pending steps, read the loss curve (maybe measuring curvature), write them.

        The row spread of the weights (symmetry) is measured at the first flush and the final one.
        """
        if not self._pending:
            return
        start = self._ledger.clock()
        armed = self._capture.armed
        self._capture.disarm()  # the held-batch forwards of curvature are not training forwards
        first = self._table is None
        if first:
            sites = self._capture.fix_sites()
            self._table = Table(record.Columns(record.column_names(
                [layer.name for layer in self.layers], [layer.name for layer in self._weighted],
                sites, curvature.COLUMNS)), len(self.layers), sites)
        columns = self._table.columns
        rows = self._table.rows(self._pending)
        self._pending = []
        if self.run_dir is None:
            self._data.append(rows)
        self._scheduler.remember(rows, columns)
        events = len(self._scheduler.events)
        self._scheduler.maybe_measure(rows, columns, self.t, self._capture.batch_size)
        if first or final:
            named = dict(self.model.named_parameters())
            for layer in self._weighted:
                rows[-1, columns[f"row_spread:{layer.name}"]] = stats.row_spread(
                    named[layer.weight])
        if self.run_dir is not None:
            if first or events < len(self._scheduler.events):
                record.write_header(self.run_dir, self._meta(finished=False))
            self._last_row = (record.append_rows(self.run_dir, columns.names, rows, new=first),
                              rows[-1].copy())
        if self._writer is not None:
            record.write_scalars(self._writer, columns.names, rows)
        if armed:
            self._capture.arm()
        self._ledger.charge(start)

    def close(self) -> None:
        """Flush, write the final header and remove every hook. Safe to call twice."""
        if self._closed:
            return
        if not self._recording:
            self._closed = True
            return
        try:
            self.flush(final=True)
            if self.run_dir is not None and self._table is not None:
                record.write_header(self.run_dir, self._meta(finished=True))
        finally:
            self._capture.remove()
            if self._writer is not None:
                self._writer.close()
            self._closed = True

    def __enter__(self) -> Monitor:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def record(self) -> record.Record:
        """Everything flushed so far, as a :class:`~landscope.monitor.record.Record` (read back
        from ``run_dir`` when there is one: only a window of rows is kept in memory then)."""
        if not self._recording:
            raise BadInputError(
                f"rank {distributed.rank()} keeps no record: under a process group rank 0 "
                "records; read the record on rank 0 or from its run directory")
        if self.run_dir is not None and self._table is not None:
            return record.read_record(self.run_dir)
        names = self._table.columns.names if self._table is not None else ["step"]
        data = np.concatenate(self._data) if self._data else np.zeros((0, len(names)))
        meta = {**self._meta(finished=self._closed), "columns": names}
        return record.Record(meta, {name: data[:, i] for i, name in enumerate(names)})

    # ------------------------------------------------------------------ helpers
    @property
    def _weighted(self) -> list[stats.Layer]:
        return [layer for layer in self.layers if layer.weight is not None]

    def _amend(self, loss, val_loss) -> None:
        """Write a late loss or validation loss into the last flushed row, wherever it lives."""
        columns = self._table.columns
        updates = {name: floats([value])[0]
                   for name, value in (("loss", loss), ("val_loss", val_loss))
                   if value is not None}
        row = self._data[-1][-1] if self.run_dir is None else self._last_row[1]
        for name, value in updates.items():
            row[columns[name]] = value
        if "loss" in updates:  # the curve reads it; the loss's non-finite flag joins the gradient's
            self._scheduler.amend_loss(updates["loss"])
            flag = columns["non_finite"]
            row[flag] = float(not math.isfinite(updates["loss"]) or row[flag] == 1)
        if self.run_dir is not None:
            record.rewrite_last_row(self.run_dir, *self._last_row)
        if self._writer is not None:
            record.write_scalars(self._writer, ["step", *updates],
                                 np.array([[row[columns["step"]], *updates.values()]]))

    def _meta(self, finished: bool) -> dict:
        group = self.optimizer.param_groups[0]
        settings = {key: value for key, value in group.items()
                    if isinstance(value, (bool, int, float, str, tuple)) and key != "params"}
        scheduler = self._scheduler
        loss_fn = scheduler.loss_fn
        return {
            "model": type(self.model).__name__,
            "n_parameters": sum(layer.numel for layer in self.layers),
            "layers": [layer.to_dict() for layer in self.layers],
            "sites": self._capture.sites,
            "optimizer": {"name": type(self.optimizer).__name__, **settings},
            "make_up": {**self._make_up, "scheduler": makeup.has_scheduler(self.optimizer)},
            "loss_fn": loss_fn if loss_fn is None or isinstance(loss_fn, str)
            else getattr(loss_fn, "__name__", type(loss_fn).__name__),
            "batch_size": self._capture.batch_size,
            "held_size": None if scheduler.held is None else curvature.held_size(scheduler.held),
            "settings": {"every": self._capture.every, "check_every": self.check_every,
                         "window": scheduler.window, "budget": scheduler.budget,
                         "max_products": scheduler.max_products,
                         "lower_bound": scheduler.lower_bound,
                         "noise_chunks": scheduler.noise_chunks, **vars(scheduler.thresholds)},
            "events": scheduler.events,
            "steps": self.t,
            "ranks": self.ranks,
            "loss_rank": 0,  # whose mini-batch loss the loss column holds
            "seconds": self._ledger.to_dict(),
            "finished": finished,
            "columns": None if self._table is None else self._table.columns.names,
        }


def _check_inputs(model, optimizer, loss_fn, held, every, check_every, window) -> None:
    if not isinstance(model, nn.Module):
        raise BadInputError(f"model is a {type(model).__name__}; the Monitor needs an nn.Module")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise BadInputError(f"optimizer is a {type(optimizer).__name__}; pass the "
                            "torch.optim.Optimizer that trains the model")
    for name, value in (("every", every), ("check_every", check_every), ("window", window)):
        checks.integer(name, value)
    if held is not None:
        curvature.check_held(held, loss_fn)

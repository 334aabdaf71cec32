"""The Monitor: watch any PyTorch training loop, cheaply, without changing what it computes.

Two lines in the user's loop (then ``landscope doctor runs/exp1``)::

    with landscope.monitor.Monitor(model, optimizer, "runs/exp1") as monitor:   # around the loop
        ...
        monitor.step(loss)                                                      # after .step()

What is hard: the Monitor runs inside every step, so it must cost a few tensor operations and no
synchronisation per step, and it must only observe: training with and without it is
bit-identical. The loss is kept every step (a float on the CPU, a detached tensor on accelerators,
so no synchronisation there); the rest every ``every`` steps: gradients are read in an optimiser
step pre-hook (so loops that zero them right after ``step()`` are covered), θ is flattened before
and after the step for the update ‖Δθ‖/‖θ‖, per-layer norms come from one ``_foreach_norm`` call,
and activation statistics from forward hooks on sigmoid/tanh/ReLU modules that are registered only
for the measured step's training forward (grad enabled), so other steps run the model's fast
path. Values are converted in one go at a flush every ``check_every`` steps, which appends them to
``monitor.csv`` and reads the loss curve.

Curvature (λ_max against the optimiser's stability limit, under mini-batch SGD also the batch
sharpness on chunks of the training batch size, which it learns from the model's input; λ_min,
gradient noise; see :mod:`landscope.monitor.curvature`) needs a held batch and is spent only
when the loss curve rises, stalls short of convergence or while oscillating, or falls slowly far
from its end (λ_max only: is the rate far below its limit?) (:func:`signals.curvature_reason`),
at most once per ``window`` steps, and only within ``budget``: the Monitor's own time (its steps,
flushes and every curvature measurement, this one included) stays within ``budget`` times the
training time so far, so curvature gets what the first-order statistics leave. Each measurement
gets the time left and caps its Hessian-vector products from a timed product
(:func:`curvature.measure`); the first is no exception. A measurement that fails (a model the
analysis cannot differentiate twice) is recorded with its error and a warning, and curvature is
off for the rest of the run: observing never stops the training.
"""

from __future__ import annotations

import math
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from landscope.errors import BadInputError
from landscope.monitor import curvature, makeup, record, signals, stats


class Monitor:
    """Records a training run (see the module docstring); use as a context manager or ``close()``.

    Parameters
    ----------
    model: the ``nn.Module`` being trained; it needs trainable parameters.
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
        self.model, self.optimizer = model, optimizer
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.loss_fn, self.held = loss_fn, held
        self.every, self.check_every, self.window = every, check_every, window
        self.budget, self.max_products, self.lower_bound = budget, max_products, lower_bound
        self.thresholds = thresholds or signals.CurveThresholds()
        self.noise_chunks = noise_chunks
        self.layers = stats.layers(model)
        if not self.layers:
            raise BadInputError(
                f"the model ({type(model).__name__}) has no trainable parameters; the Monitor "
                "records gradients and updates, so give it a model with requires_grad parameters")
        named = dict(model.named_parameters())
        self._names = [name for layer in self.layers for name in layer.params]
        self._tensors = [named[name] for name in self._names]
        self._sizes = [layer.numel for layer in self.layers]  # θ is laid out layer by layer
        self._weighted = [layer for layer in self.layers if layer.weight is not None]
        self._module_names = {m: name for name, m in model.named_modules()
                              if stats.activation_kind(m) is not None}
        self._make_up = makeup.make_up(model)
        self.sites: list[dict] = []
        self.columns: list[str] | None = None
        self.events: list[dict] = []
        self.t = 0
        self._pending: list[tuple] = []
        self._data: list[np.ndarray] = []  # every row, only without a run directory
        self._recent = np.zeros((0, 3))  # loss, cosine, non-finite flag of the last window
        self._head: list[float] = []  # the first finite losses (the initial loss)
        self._captured: tuple | None = None
        self._last_row: tuple[int, np.ndarray] | None = None  # CSV offset and values, last row
        self._prev_grad: tuple[int, torch.Tensor] | None = None
        self._acts: dict[str, tuple] = {}
        self._calls: dict[str, int] = {}
        self._act_handles: list = []
        self._batch_size: int | None = None
        self._last_grad_norm = math.nan
        self._last_curvature = -math.inf
        self._costs: tuple[float, float] | None = None  # t_g and t_p the last measurement saw
        self._curvature_failed = False
        self._vectors: curvature.Eigenvectors | None = None  # the next measurement's warm start
        self._start = time.perf_counter()
        self._seconds = {"monitor": 0.0, "curvature": 0.0}
        self._closed = False
        self._writer = record.tensorboard_writer(self.run_dir) if tensorboard else None
        self._handles = [optimizer.register_step_pre_hook(self._on_optimizer_step)]
        self._arm()

    # ------------------------------------------------------------------ the loop's side
    def step(self, loss=None, *, val_loss: float | None = None) -> None:
        """Record one training step; call it once per step, after ``optimizer.step()``.

        ``loss`` is the step's mini-batch loss (tensor or float; None if unknown), ``val_loss``
        an optional validation loss for this step.
        """
        if self._closed:
            raise BadInputError("this Monitor is closed; create a new one for another run")
        start = time.perf_counter()
        row, acts = None, self._acts
        if self._captured is not None:  # one fused norm call over gradients, weights, updates
            grads, dot, prev_norm, before = self._captured
            delta = _flat(self._tensors) - before
            pieces = [*grads.split(self._sizes), *before.split(self._sizes),
                      *delta.split(self._sizes)]
            row = torch.stack([*torch._foreach_norm(pieces), dot, prev_norm])
        if isinstance(loss, torch.Tensor):  # a float on the CPU; no synchronisation elsewhere
            loss = loss.item() if loss.device.type == "cpu" else loss.detach()
        lr = self.optimizer.param_groups[0]["lr"]
        self._pending.append((self.t, loss, float(lr), row, acts, val_loss))
        self.t += 1
        self._captured, self._acts = None, {}
        self._disarm()
        self._seconds["monitor"] += time.perf_counter() - start
        if self.t % self.check_every == 0:
            self.flush()
        if self._measuring(self.t):
            self._arm()

    def log(self, *, loss: float | None = None, val_loss: float | None = None) -> None:
        """Attach a loss or validation loss known only later to the most recent step.

        Also after the flush that wrote that step (a framework's logging or validation often
        comes right after the step that flushed): its row is then rewritten in place.
        """
        if self._closed:
            raise BadInputError("this Monitor is closed; create a new one for another run")
        if self.t == 0:
            raise BadInputError("log() attaches values to the last step; call step() first")
        if self._pending:
            step, value, lr, row, acts, val = self._pending[-1]
            self._pending[-1] = (step, value if loss is None else loss, lr, row, acts,
                                 val if val_loss is None else val_loss)
        elif loss is not None or val_loss is not None:
            self._amend(loss, val_loss)

    def flush(self, *, final: bool = False) -> None:
        """Convert pending steps, read the loss curve (maybe measuring curvature), write them.

        The row spread of the weights (symmetry) is measured at the first flush and the final one.
        """
        if not self._pending:
            return
        start = time.perf_counter()
        armed = bool(self._act_handles)
        self._disarm()  # the held-batch forwards of curvature are not training forwards
        first = self.columns is None
        if first:
            self.columns = record.column_names(
                [layer.name for layer in self.layers], [layer.name for layer in self._weighted],
                self.sites, curvature.COLUMNS)
        rows = self._table(self._pending)
        self._pending = []
        self._remember(rows)
        events = len(self.events)
        self._check_curve(rows)
        if first or final:
            for layer in self._weighted:
                weight = self._tensors[self._names.index(layer.weight)]
                rows[-1, self.columns.index(f"row_spread:{layer.name}")] = stats.row_spread(weight)
        if self.run_dir is not None:
            if first or events < len(self.events):
                record.write_header(self.run_dir, self._meta(finished=False))
            self._last_row = (record.append_rows(self.run_dir, self.columns, rows, new=first),
                              rows[-1].copy())
        if self._writer is not None:
            record.write_scalars(self._writer, self.columns, rows)
        if armed:
            self._arm()
        self._seconds["monitor"] += time.perf_counter() - start

    def close(self) -> None:
        """Flush, write the final header and remove every hook. Safe to call twice."""
        if self._closed:
            return
        try:
            self.flush(final=True)
            if self.run_dir is not None and self.columns is not None:
                record.write_header(self.run_dir, self._meta(finished=True))
        finally:
            self._disarm()
            for handle in self._handles:
                handle.remove()
            self._handles = []
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
        if self.run_dir is not None and self.columns is not None:
            return record.read_record(self.run_dir)
        names = self.columns or ["step"]
        data = np.concatenate(self._data) if self._data else np.zeros((0, len(names)))
        meta = {**self._meta(finished=self._closed), "columns": names}
        return record.Record(meta, {name: data[:, i] for i, name in enumerate(names)})

    # ------------------------------------------------------------------ hooks
    def _measuring(self, step: int) -> bool:
        return step % self.every == 0

    def _arm(self) -> None:
        """Hook the activation modules for the next training forward (and that one only), and
        the model's input until the training batch size is known."""
        self._calls = {}
        self._act_handles = [m.register_forward_hook(self._on_activation)
                             for m in self._module_names]
        if self._batch_size is None:
            self._act_handles.append(self.model.register_forward_pre_hook(self._on_input,
                                                                          with_kwargs=True))

    def _disarm(self) -> None:
        for handle in self._act_handles:
            handle.remove()
        self._act_handles = []

    def _on_input(self, module, args, kwargs):
        """The training batch size: the first dimension of the model's first tensor input."""
        if self._batch_size is None and torch.is_grad_enabled():
            first = next((x for x in (*args, *kwargs.values())
                          if isinstance(x, torch.Tensor) and x.dim() > 0), None)
            if first is not None:
                self._batch_size = first.shape[0]

    def _on_activation(self, module, args, output):
        if not torch.is_grad_enabled() or not isinstance(output, torch.Tensor):
            return  # evaluation forwards (no_grad) are not the step's training forward
        name = self._module_names[module]
        self._calls[name] = count = self._calls.get(name, 0) + 1
        key = name if count == 1 else f"{name}#{count}"
        kind = stats.activation_kind(module)
        if self.columns is None and all(site["name"] != key for site in self.sites):
            self.sites.append({"name": key, "kind": kind, "module": type(module).__name__})
        if kind == "saturation":
            self._acts[key] = (*stats.saturated_count(output, module), False)
        else:  # store the live units; dead = 1 − alive / units
            self._acts[key] = (*stats.alive_count(output), True)

    def _on_optimizer_step(self, optimizer, args, kwargs):
        """Capture the gradient and θ before the update (and g_{t-1} for the cosine)."""
        measure, before_next = self._measuring(self.t), self._measuring(self.t + 1)
        if not (measure or before_next):
            return
        start = time.perf_counter()
        flat = _flat([torch.zeros_like(p) if p.grad is None else p.grad for p in self._tensors])
        if measure:
            prev = self._prev_grad if self._prev_grad and self._prev_grad[0] == self.t - 1 \
                else None
            nan = torch.full((), math.nan, dtype=flat.dtype, device=flat.device)
            dot = nan if prev is None else flat.dot(prev[1])
            prev_norm = nan if prev is None or prev[2] is None else prev[2]
            self._captured = (flat, dot, prev_norm, _flat(self._tensors))
        # the next step needs g_t for its cosine; its norm is in this row when this step is measured
        self._prev_grad = (self.t, flat, None if measure else flat.norm()) if before_next else None
        self._seconds["monitor"] += time.perf_counter() - start

    # ------------------------------------------------------------------ flush helpers
    def _table(self, pending: list[tuple]) -> np.ndarray:
        """Pending steps → a (steps × columns) float64 array, NaN where not measured."""
        index = {name: i for i, name in enumerate(self.columns)}
        out = np.full((len(pending), len(self.columns)), np.nan)
        out[:, 0] = [p[0] for p in pending]
        out[:, 1] = _values([p[1] for p in pending])
        out[:, 2] = _values([p[5] for p in pending])
        out[:, 3] = [p[2] for p in pending]
        measured = [i for i, p in enumerate(pending) if p[3] is not None]
        if measured:
            self._first_order(out, measured, torch.stack([pending[i][3] for i in measured]))
        kinds = {site["name"]: site["kind"] for site in self.sites}
        for i, p in enumerate(pending):
            for key, (count, total, complement) in p[4].items():
                column = index.get(f"{kinds.get(key)}:{key}")
                if column is not None:
                    share = count.item() / total
                    out[i, column] = 1 - share if complement else share
        has_loss = np.array([p[1] is not None for p in pending])
        has_grad = np.array([p[3] is not None for p in pending])
        broken = has_loss & ~np.isfinite(out[:, 1]) | has_grad & ~np.isfinite(out[:, 5])
        out[:, 4] = np.where(has_loss | has_grad, broken.astype(float), np.nan)
        return out

    def _first_order(self, out: np.ndarray, measured: list[int], block: torch.Tensor) -> None:
        """Fill the gradient, weight, update and cosine columns of the measured rows.

        ``block`` rows: per-layer norms of g, θ and Δθ, then gᵀg_prev and ‖g_prev‖ (NaN when the
        previous step was measured too: its norm is then the previous row's).
        """
        n = len(self.layers)
        block = block.double().cpu().numpy()
        layer_g, layer_w, layer_d = (block[:, k * n:(k + 1) * n] for k in range(3))
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            grad_norm = np.sqrt((layer_g**2).sum(1))
            out[measured, 5] = grad_norm
            out[measured, 7] = np.sqrt((layer_d**2).sum(1) / (layer_w**2).sum(1))
            ratios = layer_d / layer_w
            previous = np.r_[self._last_grad_norm, grad_norm[:-1]]
            prev_norm = np.where(np.isnan(block[:, 3 * n + 1]), previous, block[:, 3 * n + 1])
            out[measured, 6] = block[:, 3 * n] / (grad_norm * prev_norm)
        self._last_grad_norm = grad_norm[-1]
        first = self.columns.index(f"grad_norm:{self.layers[0].name}")
        for k, values in enumerate((layer_g, layer_w, ratios)):
            columns = range(first + k * n, first + (k + 1) * n)
            out[np.ix_(measured, columns)] = values

    def _remember(self, rows: np.ndarray) -> None:
        """Keep what reading the curve needs (the first losses, the last window's loss, cosine
        and non-finite flag) and, without a run directory, every row."""
        if self.run_dir is None:
            self._data.append(rows)
        if len(self._head) < 10:
            losses = rows[:, 1]
            self._head += losses[np.isfinite(losses)][:10 - len(self._head)].tolist()
        self._recent = np.concatenate([self._recent, rows[:, [1, 6, 4]]])[-self.window:]

    def _amend(self, loss, val_loss) -> None:
        """Write a late loss or validation loss into the last flushed row, wherever it lives."""
        updates = {column: _values([value])[0]
                   for column, value in ((1, loss), (2, val_loss)) if value is not None}
        row = self._data[-1][-1] if self.run_dir is None else self._last_row[1]
        for column, value in updates.items():
            row[column] = value
        if 1 in updates:  # the curve reads it; non_finite: the loss's flag joins the gradient's
            self._recent[-1, 0] = updates[1]
            row[4] = float(not math.isfinite(updates[1]) or row[4] == 1)
        if self.run_dir is not None:
            record.rewrite_last_row(self.run_dir, *self._last_row)
        if self._writer is not None:
            record.write_scalars(self._writer, ["step", *(self.columns[c] for c in updates)],
                                 np.array([[row[0], *updates.values()]]))

    def _check_curve(self, rows: np.ndarray) -> None:
        """Read the last ``window`` losses; measure curvature if they stall, rise or creep."""
        if (self.held is None or self._curvature_failed
                or self.t - self._last_curvature < self.window):
            return
        window = self._recent
        if len(window) < self.window or np.nansum(window[:, 2]) > 0:
            return  # a window not yet full, or broken weights (curvature there means nothing)
        initial = float(np.mean(self._head)) if self._head else math.nan
        status, progress = signals.window_status(window[:, 0], initial, self.lower_bound,
                                                 self.thresholds)
        reason = signals.curvature_reason(status, progress, window[:, 0], window[:, 1], initial,
                                          self.lower_bound, self.thresholds)
        spent = self._seconds["monitor"]  # everything the Monitor did, curvature included
        training = time.perf_counter() - self._start - spent
        allowance = self.budget * training - spent
        if reason is None or allowance < self._least_seconds(training):
            return
        event = {"step": int(rows[-1, 0]), "reason": reason, "progress": progress}
        start = time.perf_counter()
        try:
            result = curvature.measure(self.model, self.loss_fn, self.held, self.optimizer,
                                       smallest=reason == "stalled",
                                       max_products=self.max_products,
                                       noise_chunks=self.noise_chunks,
                                       batch_size=self._batch_size, seconds=allowance,
                                       warm=self._vectors)
        except Exception as error:  # observing must never stop the user's training
            note = (f"curvature on the held batch failed and is off for the rest of the run: "
                    f"{type(error).__name__}: {error}")
            warnings.warn(note, RuntimeWarning, stacklevel=4)
            seconds = time.perf_counter() - start
            self._seconds["curvature"] += seconds
            self._curvature_failed = True
            self.events.append({**event, "seconds": seconds, "rule": None, "products": 0,
                                "note": note})
            return
        for name in curvature.COLUMNS:
            rows[-1, self.columns.index(name)] = result[name]
        self._seconds["curvature"] += result["seconds"]
        self._last_curvature = self.t
        self._vectors = result["vectors"]
        if math.isfinite(result["gradient_seconds"]):
            self._costs = (result["gradient_seconds"], result["seconds_per_product"])
        self.events.append({**event, "seconds": result["seconds"], "rule": result["rule"],
                            "products": result["curvature_products"],
                            "batch_chunks": result["batch_chunks"], "note": result["note"]})

    def _least_seconds(self, training: float) -> float:
        """The least time a curvature measurement is started with (:func:`curvature.least_seconds`):
        from the costs the last measurement saw, or before the first from the training step's
        time (a step is at least a gradient pass on a mini-batch), scaled from the mini-batch to
        the held batch."""
        if self._costs is not None:
            return curvature.least_seconds(*self._costs)
        held = curvature.held_size(self.held)
        return curvature.least_seconds(training / max(self.t, 1) * held
                                       / (self._batch_size or held))

    def _meta(self, finished: bool) -> dict:
        group = self.optimizer.param_groups[0]
        settings = {key: value for key, value in group.items()
                    if isinstance(value, (bool, int, float, str, tuple)) and key != "params"}
        return {
            "model": type(self.model).__name__,
            "n_parameters": sum(self._sizes),
            "layers": [layer.to_dict() for layer in self.layers],
            "sites": self.sites,
            "optimizer": {"name": type(self.optimizer).__name__, **settings},
            "make_up": {**self._make_up, "scheduler": makeup.has_scheduler(self.optimizer)},
            "loss_fn": self.loss_fn if self.loss_fn is None or isinstance(self.loss_fn, str)
            else getattr(self.loss_fn, "__name__", type(self.loss_fn).__name__),
            "batch_size": self._batch_size,
            "held_size": None if self.held is None else curvature.held_size(self.held),
            "settings": {"every": self.every, "check_every": self.check_every,
                         "window": self.window, "budget": self.budget,
                         "max_products": self.max_products, "lower_bound": self.lower_bound,
                         "noise_chunks": self.noise_chunks, **vars(self.thresholds)},
            "events": self.events,
            "steps": self.t,
            "seconds": {**self._seconds, "total": time.perf_counter() - self._start},
            "finished": finished,
            "columns": self.columns,
        }


def _flat(tensors: list[torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([t.reshape(-1) for t in tensors])


def _values(items: list) -> list[float]:
    """Losses given as 0-d tensors, floats or None → floats (one synchronisation for tensors)."""
    tensors = [v.reshape(()) for v in items if isinstance(v, torch.Tensor)]
    converted = iter(torch.stack(tensors).double().tolist()) if tensors else iter(())
    return [next(converted) if isinstance(v, torch.Tensor) else
            (math.nan if v is None else float(v)) for v in items]


def _check_inputs(model, optimizer, loss_fn, held, every, check_every, window) -> None:
    if not isinstance(model, nn.Module):
        raise BadInputError(f"model is a {type(model).__name__}; the Monitor needs an nn.Module")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise BadInputError(f"optimizer is a {type(optimizer).__name__}; pass the "
                            "torch.optim.Optimizer that trains the model")
    for name, value in (("every", every), ("check_every", check_every), ("window", window)):
        if not isinstance(value, int) or value < 1:
            raise BadInputError(f"{name}={value!r}; use a positive integer")
    if held is not None:
        curvature.check_held(held, loss_fn)

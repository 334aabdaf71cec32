"""The Monitor inside PyTorch Lightning and Hugging Face ``Trainer`` runs (optional extras).

Neither framework is a dependency: each factory imports its framework when called and builds the
callback class then, from a plain mixin that holds all the logic (so the logic is testable without
the framework). What each framework hands over differs:

- Lightning: ``on_train_batch_end`` gives the step's loss (``outputs["loss"]``); the optimiser is
  ``trainer.optimizers[0]``; a logged ``val_loss`` is read at the end of each validation epoch.
- Hugging Face: ``on_step_end`` gives no loss, so steps are recorded without one and the averaged
  training loss of ``on_log`` (every ``logging_steps``) is attached to the step it was logged at,
  with ``eval_loss`` as the validation loss. Gradients are still read at every optimiser step.

Logging and validation often come right after the step whose Monitor flush wrote that step's
row; :meth:`Monitor.log` then rewrites the row, so neither ever interrupts the training. Both are
tested on real trainers (``tests/test_callbacks.py``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from landscope.errors import BadInputError
from landscope.monitor.monitor import Monitor


def lightning_callback(run_dir: str | Path, **monitor_options):
    """A ``lightning.pytorch.Callback`` that records the run with a Monitor into ``run_dir``.

    ``monitor_options`` go to :class:`~landscope.monitor.Monitor` (``loss_fn``, ``held``, ...).

    Examples
    --------
    >>> trainer = lightning.Trainer(callbacks=[lightning_callback("runs/exp1")])  # doctest: +SKIP
    """
    try:
        from lightning.pytorch import Callback
    except ImportError:
        try:
            from pytorch_lightning import Callback
        except ImportError as error:
            raise BadInputError("lightning_callback needs PyTorch Lightning: "
                                "pip install lightning") from error
    return type("LandscopeLightningCallback", (LightningHooks, Callback), {})(
        run_dir, **monitor_options)


def huggingface_callback(run_dir: str | Path, **monitor_options):
    """A ``transformers.TrainerCallback`` that records the run with a Monitor into ``run_dir``.

    Examples
    --------
    >>> trainer = Trainer(..., callbacks=[huggingface_callback("runs/exp1")])  # doctest: +SKIP
    """
    try:
        from transformers import TrainerCallback
    except ImportError as error:
        raise BadInputError("huggingface_callback needs transformers: "
                            "pip install transformers") from error
    return type("LandscopeHuggingFaceCallback", (HuggingFaceHooks, TrainerCallback), {})(
        run_dir, **monitor_options)


class LightningHooks:
    """The Lightning callback's logic; the Monitor starts with training and closes with it."""

    def __init__(self, run_dir: str | Path, **monitor_options):
        self.run_dir, self.options, self.monitor = run_dir, monitor_options, None

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.optimizers:
            raise BadInputError("the Lightning module configured no optimizer to monitor")
        self.monitor = Monitor(pl_module, _unwrap(trainer.optimizers[0]), self.run_dir,
                               **self.options)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        self.monitor.step(loss if isinstance(loss, torch.Tensor) else None)

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        value = trainer.callback_metrics.get("val_loss")
        if self.monitor is not None and value is not None and self.monitor.t > 0:
            self.monitor.log(val_loss=float(value))

    def on_train_end(self, trainer, pl_module) -> None:
        if self.monitor is not None:  # later hooks (trainer.validate()) find no Monitor
            self.monitor.close()
            self.monitor = None

    def on_exception(self, trainer, pl_module, exception) -> None:
        self.on_train_end(trainer, pl_module)


class HuggingFaceHooks:
    """The Hugging Face callback's logic (see the module docstring for what HF hands over)."""

    def __init__(self, run_dir: str | Path, **monitor_options):
        self.run_dir, self.options, self.monitor = run_dir, monitor_options, None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None or optimizer is None:
            raise BadInputError("the Trainer passed no model or optimizer to the callback")
        self.monitor = Monitor(model, _unwrap(optimizer), self.run_dir, **self.options)

    def on_step_end(self, args, state, control, **kwargs):
        self.monitor.step()

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.monitor is None or not logs or self.monitor.t == 0:
            return
        self.monitor.log(loss=logs.get("loss"), val_loss=logs.get("eval_loss"))

    def on_train_end(self, args, state, control, **kwargs):
        if self.monitor is not None:  # later hooks (trainer.evaluate()) find no Monitor
            self.monitor.close()
            self.monitor = None


def _unwrap(optimizer):
    """The torch optimiser inside a wrapper (accelerate's AcceleratedOptimizer, Lightning's)."""
    inner = getattr(optimizer, "optimizer", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer

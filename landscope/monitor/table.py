"""Step samples → rows of the record: one float64 array, columns addressed by name.

A flush converts every pending :class:`~landscope.monitor.capture.StepSample` in one go (one
synchronisation for the losses, one for the norms), NaN where a value was not measured:

- per layer ‖g‖, ‖θ‖ and ‖Δθ‖/‖θ‖; over the model ‖g‖ = (Σ_layers ‖g_layer‖²)^½,
  ‖Δθ‖/‖θ‖ and cos(g_t, g_{t−1}) = g_tᵀg_{t−1} / (‖g_t‖ ‖g_{t−1}‖);
- the saturated or dead share of each activation site;
- ``non_finite`` = 1 where the loss (if given) or the gradient norm (if measured) is not finite.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from landscope.monitor.capture import StepSample
from landscope.monitor.record import Columns


class Table:
    """Fills the rows of ``columns`` from step samples of a model with ``layers`` layers and the
    activation ``sites``; keeps the last ‖g‖ for the next flush's first cosine."""

    def __init__(self, columns: Columns, layers: int, sites: list[dict]):
        self.columns, self.layers = columns, layers
        self._kinds = {site["name"]: site["kind"] for site in sites}
        self._last_grad_norm = math.nan

    def rows(self, samples: list[StepSample]) -> np.ndarray:
        """A (steps × columns) float64 array, NaN where not measured."""
        columns = self.columns
        out = np.full((len(samples), len(columns)), np.nan)
        out[:, columns["step"]] = [s.step for s in samples]
        out[:, columns["loss"]] = floats([s.loss for s in samples])
        out[:, columns["val_loss"]] = floats([s.val_loss for s in samples])
        out[:, columns["lr"]] = [s.lr for s in samples]
        measured = [i for i, s in enumerate(samples) if s.norms is not None]
        if measured:
            self._first_order(out, measured, torch.stack([samples[i].norms for i in measured]))
        for i, sample in enumerate(samples):
            for key, (count, units, complement) in sample.activations.items():
                column = columns.index.get(f"{self._kinds.get(key)}:{key}")
                if column is not None:
                    share = count.item() / units
                    out[i, column] = 1 - share if complement else share
        has_loss = np.array([s.loss is not None for s in samples])
        has_grad = np.array([s.norms is not None for s in samples])
        broken = (has_loss & ~np.isfinite(out[:, columns["loss"]])
                  | has_grad & ~np.isfinite(out[:, columns["grad_norm"]]))
        out[:, columns["non_finite"]] = np.where(has_loss | has_grad, broken.astype(float), np.nan)
        return out

    def _first_order(self, out: np.ndarray, measured: list[int], block: torch.Tensor) -> None:
        """Fill the gradient, weight, update and cosine columns of the measured rows from their
        norms (:class:`~landscope.monitor.capture.StepSample`)."""
        n, columns = self.layers, self.columns
        block = block.double().cpu().numpy()
        layer_g, layer_w, layer_d = (block[:, k * n:(k + 1) * n] for k in range(3))
        dot, previous_norm = block[:, 3 * n], block[:, 3 * n + 1]
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            grad_norm = np.sqrt((layer_g**2).sum(1))
            out[measured, columns["grad_norm"]] = grad_norm
            out[measured, columns["update_ratio"]] = np.sqrt((layer_d**2).sum(1)
                                                             / (layer_w**2).sum(1))
            ratios = layer_d / layer_w
            previous = np.r_[self._last_grad_norm, grad_norm[:-1]]
            previous_norm = np.where(np.isnan(previous_norm), previous, previous_norm)
            out[measured, columns["grad_cos"]] = dot / (grad_norm * previous_norm)
        self._last_grad_norm = grad_norm[-1]
        for stat, values in (("grad_norm", layer_g), ("weight_norm", layer_w),
                             ("update_ratio", ratios)):
            out[np.ix_(measured, columns.per_layer(stat))] = values


def floats(items: list) -> list[float]:
    """Losses given as 0-d tensors, floats or None → floats (one synchronisation for tensors)."""
    tensors = [v.reshape(()) for v in items if isinstance(v, torch.Tensor)]
    converted = iter(torch.stack(tensors).double().tolist()) if tensors else iter(())
    return [next(converted) if isinstance(v, torch.Tensor) else
            (math.nan if v is None else float(v)) for v in items]

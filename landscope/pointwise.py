"""The loss at one point in three forms the Objective lacks: forward-only at the cost floor,
with BatchNorm statistics recomputed at θ, and on a random data subset with its standard error.

At the floor. ``Objective.value`` substitutes θ with ``functional_call`` and restores per-module
modes on every call; on a small network that costs 15–25 % on top of the forward pass itself, which
a grid of thousands of points pays thousands of times. :class:`Replica` instead copies θ into a
private deep copy of the model (eval mode, ``requires_grad`` off) and runs the forward under
``torch.inference_mode``: the cost of a user's own in-place loop, without touching their model. It
checks itself against ``Objective.value`` at θ₀ and is used only where it agrees.

Recomputed statistics. In eval mode BatchNorm normalises with running statistics that belong to the
trained θ₀; far from θ₀ they no longer match the activations, and a surface can show a cliff that is
only stale statistics. Recomputing them at each θ (as ``torch.optim.swa_utils.update_bn`` does
after SWA) removes that: one train-mode pass collects, for every BatchNorm layer, the per-channel
mean and variance of its input pooled exactly over all batches (sums weighted by element counts,
not an average of batch averages), then the loss is the eval-mode loss with those statistics. As in
``update_bn``, the collecting pass normalises with batch statistics; with the whole data in one
batch that equals the recomputed statistics. Only BatchNorm layers run in train mode (dropout stays
off), on copies of the buffers; the caller's model is left exactly as it was.

Subsets. Over a subset S of m of the N samples (drawn without replacement) the mean loss estimates
L(θ) with standard error σ/√m·√(1 − m/N). σ comes from the per-sample losses of the same forward
pass (``vmap`` of the loss over batches of one; for a loss that does not split per sample, from the
means of ``chunks`` parts). The subsets are nested prefixes of one seeded permutation, so every
point sees the same samples (the picture stays smooth, and its errors are correlated across
points) and growing m reuses the smaller subset.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence

import torch
from torch import nn

from landscope import _checks as checks
from landscope.data import Batch
from landscope.engines import Sums
from landscope.errors import BadInputError
from landscope.functional import ModelLoss
from landscope.losses import check_loss, reduced
from landscope.objective import Objective


def bn_value(obj: Objective, theta: torch.Tensor) -> float:
    """L(θ) in eval mode with every BatchNorm's running statistics recomputed at θ.

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).eval()
    >>> obj = Objective.from_model(net, torch.nn.functional.mse_loss,
    ...                            (torch.randn(16, 3), torch.zeros(16, 4)))
    >>> abs(bn_value(obj, obj.theta0) - 15 / 16) < 1e-3  # normalised outputs: mean square 1 − 1/16
    True
    """
    loss = model_loss(obj, "recomputing BatchNorm statistics")
    return _weighted_mean(loss.replace(buffers=bn_buffers(obj, theta)), theta)


def bn_buffers(obj: Objective, theta: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's buffers, with every BatchNorm's running mean and variance recomputed at θ."""
    loss = model_loss(obj, "recomputing BatchNorm statistics")
    if loss.mode != "eval":
        raise BadInputError("recomputed BatchNorm statistics apply to mode='eval'; in train mode "
                            "BatchNorm already uses the statistics of each batch")
    layers = {name: m for name, m in loss.model.named_modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats}
    if not layers:
        raise BadInputError("the model has no BatchNorm layer with running statistics; there is "
                            "nothing to recompute (leave BatchNorm handling at 'eval')")
    sums = {name: [0, 0.0, 0.0] for name in layers}  # element count, Σx, Σx² per channel

    def collect(name):
        def hook(module, args):
            x = args[0].detach().transpose(0, 1).reshape(args[0].shape[1], -1).double()
            sums[name][0] += x.shape[1]
            sums[name][1] = sums[name][1] + x.sum(1)
            sums[name][2] = sums[name][2] + (x * x).sum(1)
        return hook

    saved = [(module, module.training) for module in loss.model.modules()]
    handles = [m.register_forward_pre_hook(collect(name)) for name, m in layers.items()]
    try:
        loss.model.eval()
        for m in layers.values():
            m.train()
        with torch.no_grad():
            for batch in loss.batches:
                buffers = {name: b.clone() for name, b in loss.buffers.items()}
                torch.func.functional_call(loss.model, loss.state(theta.detach(), buffers),
                                           *loss.inputs_of(batch), strict=False,
                                           tie_weights=False)
    finally:
        for handle in handles:
            handle.remove()
        for module, training in saved:
            module.training = training
    buffers = dict(loss.buffers)
    for name, (count, total, squares) in sums.items():
        mean = total / count
        variance = (squares / count - mean * mean).clamp_min(0) * count / max(count - 1, 1)
        prefix = f"{name}." if name else ""
        for key, value in (("running_mean", mean), ("running_var", variance)):
            buffers[prefix + key] = value.to(buffers[prefix + key].dtype)
    return buffers


class SubsetLoss:
    """L(θ) on the first m samples of a seeded permutation of the data, with its standard error.

    Parameters
    ----------
    obj: an Objective from :meth:`Objective.from_model` in eval mode. Its data is read once and
        kept in memory.
    seed: of the permutation.
    chunks: used only when the loss cannot be split per sample (see below): the spread of the
        means of this many parts of the subset gives σ, with a Student-t quantile.

    The standard error comes from per-sample losses, obtained by ``torch.func.vmap`` of the
    loss over batches of one sample (exact for every mean-reduced loss: cross-entropy, MSE, ...);
    ``per_sample`` says whether that worked, and ``t95`` is the matching 97.5 % quantile.

    Examples
    --------
    >>> net = torch.nn.Linear(3, 1)
    >>> obj = Objective.from_model(net, torch.nn.functional.mse_loss,
    ...                            (torch.randn(100, 3), torch.randn(100, 1)))
    >>> subset = SubsetLoss(obj)
    >>> subset.per_sample, subset.value(obj.theta0, 100) == (obj.value().item(), 0.0)
    (True, True)
    """

    T95 = {4: 3.182, 8: 2.365, 16: 2.131}
    """Student-t 97.5 % quantiles with chunks − 1 degrees of freedom (for a 95 % interval)."""

    def __init__(self, obj: Objective, *, seed: int = 0, chunks: int = 8):
        self._obj = obj
        self._loss = model_loss(obj, "a data subset")
        if self._loss.mode != "eval":
            raise BadInputError("subset losses need mode='eval': in train mode BatchNorm mixes "
                                "the samples of a batch, so a subset changes every sample's loss")
        checks.choice("chunks", chunks, sorted(self.T95))
        batches = list(self._loss.batches)
        if self._loss.reduction != "mean" or any(self._loss.weight(b) != b.size
                                                  for b in batches):
            raise BadInputError(
                "a data subset needs a loss that is a plain mean over samples; this one averages "
                f"over {self._loss.weighting}. Use the full data (no budget)"
            )
        inputs = tuple(torch.cat(parts) for parts in zip(*(b.inputs for b in batches),
                                                          strict=True))
        kwargs = {key: torch.cat([b.kwargs[key] for b in batches]) for key in batches[0].kwargs}
        target = torch.cat([b.target for b in batches])
        order = torch.randperm(target.shape[0], generator=torch.Generator().manual_seed(seed))
        order = order.to(target.device)
        self.inputs, self.target = tuple(x[order] for x in inputs), target[order]
        self.kwargs = {key: x[order] for key, x in kwargs.items()}
        self.total, self.chunks, self.seed = int(target.shape[0]), chunks, seed
        self.per_sample = self._splits_per_sample()
        self.t95 = 1.96 if self.per_sample else self.T95[chunks]

    def value(self, theta: torch.Tensor, samples: int) -> tuple[float, float]:
        """(mean loss over the first ``samples`` samples, its standard error); exact on all."""
        m = min(int(samples), self.total)
        if m >= self.total:
            return self._obj.value(theta).item(), 0.0
        if m < 2 * self.chunks:
            raise BadInputError(f"samples={samples}; a subset needs at least {2 * self.chunks}")
        mean, parts = self._run(theta, m, self.per_sample)
        if self.per_sample:
            spread, count = parts[0][0].double().std(), m
        else:
            spread, count = torch.stack([v for v, _ in parts]).double().std(), self.chunks
        return mean, float(spread) / math.sqrt(count) * math.sqrt(1 - m / self.total)

    def _run(self, theta, m: int, per_sample: bool) -> tuple[float, list]:
        """The loss over the first m samples, and its per-sample losses (or chunk means)."""
        parts: list = []
        view = self._loss.replace(
            batches=[Batch(tuple(x[:m] for x in self.inputs), self.target[:m], m,
                           {key: x[:m] for key, x in self.kwargs.items()})],
            loss_fn=_recording(self._loss.loss_fn, self.chunks, parts, per_sample))
        return _weighted_mean(view, theta), parts

    def _splits_per_sample(self) -> bool:
        """Whether vmap splits the loss into per-sample losses whose mean is the loss."""
        m = min(self.total, 4 * self.chunks)
        try:
            _, ((values, whole),) = self._run(self._obj.theta0, m, per_sample=True)
        except (RuntimeError, ValueError, TypeError, IndexError, BadInputError):
            return False  # a loss that vmap cannot split: chunk means instead
        return values.shape == (m,) and math.isclose(float(values.double().mean()),
                                                     float(whole), rel_tol=1e-4, abs_tol=1e-12)


class Replica:
    """L(θ) forward-only at the cost of one forward pass, on a private copy of the model.

    Parameters
    ----------
    obj: an Objective from :meth:`Objective.from_model` in eval mode.

    Raises BadInputError if the Objective is not such, or if the copy disagrees with
    ``obj.value`` at θ₀ (e.g. a model whose forward depends on more than its parameters and
    buffers); callers then use ``obj.value``. For a data-parallel Objective each rank's copy
    reads its part of the data and the sums are added up over the ranks (one all-reduce).

    Examples
    --------
    >>> net = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Tanh())
    >>> obj = Objective.from_model(net, torch.nn.functional.mse_loss,
    ...                            (torch.randn(8, 3), torch.zeros(8, 2)))
    >>> Replica(obj).value(obj.theta0 + 0.1) == obj.value(obj.theta0 + 0.1).item()
    True
    """

    def __init__(self, obj: Objective):
        loss = model_loss(obj, "a replica of the model")
        if loss.mode != "eval":
            raise BadInputError("the replica evaluates eval mode only; train mode draws dropout "
                                "masks per batch, which Objective.value reproduces")
        try:
            replica = copy.deepcopy(loss.model)
        except (TypeError, RuntimeError, copy.Error) as error:
            raise BadInputError(f"the model cannot be deep-copied ({error})") from error
        replica = replica.to(obj.device, obj.dtype).eval().requires_grad_(False)
        with torch.no_grad():
            for name, value in {**loss.frozen, **loss.buffers}.items():
                target = (replica.get_parameter(name) if name in loss.frozen
                          else replica.get_buffer(name))
                target.copy_(value)
        self._params = [replica.get_parameter(name) for name in loss.names]
        self._model, self._loss, self._obj = replica, loss, obj
        first = list(itertools.islice(loss.batches, 2))  # one batch in memory: prepare it once
        self._batches = first if len(first) == 1 else loss.batches
        expected, found = obj.value().item(), self.value(obj.theta0)
        if not math.isclose(found, expected, rel_tol=_agreement(obj.dtype), abs_tol=1e-30):
            raise BadInputError(f"the model's copy gives {found} at θ₀ where the Objective "
                                f"gives {expected}")

    def value(self, theta: torch.Tensor) -> float:
        """L(θ) as a float (sample-weighted mean over the batches)."""
        with torch.no_grad():
            torch._foreach_copy_(self._params, list(self._loss.unflatten(theta).values()))
        return self._forward()

    def along(self, centre: torch.Tensor, vectors) -> Callable[[Sequence[float]], float]:
        """(α, β, …) ↦ L(c + α·d₁ + β·d₂ …), with θ formed in kept buffers.

        The partial sum c + α·d₁ is kept while α stays the same (a row of a grid), so a point
        costs two whole-vector operations and one copy into the parameters, with nothing
        allocated; the roundings are those of the plain sum c + α·d₁ + β·d₂, left to right.
        """
        if len(vectors) not in (1, 2):
            raise BadInputError(f"{len(vectors)} directions; a line or a plane has 1 or 2")
        theta, base, spare = (torch.empty_like(centre) for _ in range(3))
        pieces = [list(self._loss.unflatten(t).values()) for t in (base, theta)]
        row: list = [None]

        def value(coeffs: Sequence[float]) -> float:
            with torch.no_grad():
                if row[0] != coeffs[0]:
                    torch.add(centre, torch.mul(vectors[0], coeffs[0], out=spare), out=base)
                    row[0] = coeffs[0]
                if len(vectors) == 2:
                    torch.add(base, torch.mul(vectors[1], coeffs[1], out=spare), out=theta)
                torch._foreach_copy_(self._params, pieces[len(vectors) - 1])
            return self._forward()

        return value

    def _forward(self) -> float:
        sums = self._obj.over_ranks(self._sums)
        return reduced(self._loss.reduction, float(sums.value), sums.weight)

    def _sums(self) -> Sums:
        """Σ w_b ℓ_b and Σ w_b over this process's batches, forward only."""
        total, weights, samples = 0.0, 0.0, 0
        with torch.inference_mode():
            for index, batch in enumerate(self._batches):
                weight = float(self._loss.weight(batch))
                if weight <= 0:
                    continue
                args, kwargs = self._loss.inputs_of(batch)
                output = self._model(*args, **kwargs)
                loss = self._loss.loss_of(output, batch).item()
                if not math.isfinite(loss):
                    check_loss(torch.tensor(loss), f"batch {index} ({batch.size} samples)")
                total, weights, samples = total + weight * loss, weights + weight, \
                    samples + batch.size
        return Sums(torch.tensor(total, dtype=torch.float64), None, weights, samples)


def model_loss(obj: Objective, purpose: str) -> ModelLoss:
    """The model, loss and data behind an Objective built with :meth:`Objective.from_model`."""
    loss = obj.model_loss
    if not isinstance(loss, ModelLoss):
        raise BadInputError(f"{purpose} needs an Objective built with Objective.from_model (a "
                            f"network and its data); this one is a {obj.info.get('kind')}")
    return loss


# ---------------------------------------------------------------------- helpers
def _agreement(dtype: torch.dtype) -> float:
    return 1e-10 if dtype == torch.float64 else 1e-4


def _weighted_mean(loss: ModelLoss, theta: torch.Tensor) -> float:
    """L(θ) without a graph: Σ_b w_b ℓ_b and Σ_b w_b over the batches, then their mean."""
    total, weights = 0.0, 0.0
    with torch.no_grad():
        for _, value, weight, _ in loss(theta.detach()):
            total, weights = total + weight * value.item(), weights + weight
    return reduced(loss.reduction, total, weights)


def _recording(loss_fn, chunks: int, sink: list, per_sample: bool):
    """``loss_fn`` that also records per-sample losses (vmap over batches of one sample), or the
    means and sizes of ``chunks`` parts, into ``sink``; it returns the loss itself."""
    split = torch.func.vmap(lambda o, t: loss_fn(o[None], t[None]))

    def loss(output, target):
        whole = loss_fn(output, target)
        if per_sample:
            sink.append((split(output, target).detach().reshape(-1), whole.detach()))
        else:
            sink.extend((loss_fn(o, t).detach().reshape(()), t.shape[0]) for o, t in
                        zip(output.tensor_split(chunks), target.tensor_split(chunks),
                            strict=True))
        return whole
    return loss

"""What a user calls "data", turned into a re-iterable sequence of batches that is the same on
every pass.

Why this is a module of its own: the full-data loss must not depend on how the data was cut. Each
batch b has a loss ℓ_b that averages over w_b items (its samples, or the targets a loss does not
ignore, or the sum of their class weights; :mod:`landscope.functional` says which), and landscope
analyses

    L(θ) = Σ_b w_b · ℓ_b(θ) / Σ_b w_b,

what the loss means on the whole data set at once, whatever the batch sizes (averaging ℓ_b without
the weights, as some tools do, is off whenever batches differ). Gradients and Hessians inherit the
weighting. Every evaluator adds up Σ_b w_b ℓ_b and Σ_b w_b (over a process's batches, then over
the processes) and divides once, by :func:`weighted_mean`.

Every pass must see the same batches: an analysis runs hundreds of passes (one per product), and a
loss that changes between them is no function of θ. A shuffling DataLoader is refused before it
is read; any other source that changes between passes is caught on the second pass by a
fingerprint of every batch (its size and the sum of its tensors). Reading the data never
moves the caller's random number generator (a DataLoader draws a seed from it on every pass).

Devices: data held in memory — ``(X, y)`` tensors, a list or tuple of batches, a generator read
once, :meth:`Batches.fixed` — is cast and moved to the analysis device once, when the batches are
made, and every pass reads that copy (the device then holds the data set). A DataLoader, or any
other iterable, is read and moved on every pass, as in training: the way to analyse data that does
not fit the device. Fingerprints stay on the device until the end of a pass and come back in one
transfer, so a pass costs no host synchronisation per batch; a changed batch is reported at the
end of the pass that read it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
from torch.utils.data import DataLoader, SequentialSampler
from torch.utils.data.distributed import DistributedSampler

from landscope import _checks as checks
from landscope.errors import BadInputError

TARGET_KEYS = ("labels", "label", "target", "targets", "y")
"""Entries of a dict batch that are the target (not handed to the model), the first one found."""


@dataclass(frozen=True)
class Batch:
    """One batch: the model's positional inputs, the target, the number of samples, and the
    model's keyword inputs (the entries of a dict batch)."""

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor | None
    size: int
    kwargs: Mapping[str, torch.Tensor] = field(default_factory=dict)

    def rows(self, rows: torch.Tensor) -> Batch:
        """The batch's samples ``rows`` (every tensor's first dimension counts samples)."""
        rows = rows.to(_device_of(self))

        def pick(t):
            return t.index_select(0, rows)

        return Batch(tuple(map(pick, self.inputs)), None if self.target is None else
                     pick(self.target), int(rows.numel()),
                     {k: pick(v) for k, v in self.kwargs.items()})


class Batches:
    """A re-iterable sequence of :class:`Batch` es on a fixed device and floating dtype.

    Parameters
    ----------
    data:
        ``(X, y)`` tensors with equal first dimension; a ``DataLoader`` (without shuffling); or any
        iterable whose items are ``(inputs..., target)`` tuples or mappings such as a Hugging Face
        ``BatchEncoding`` (``{"input_ids": ..., "attention_mask": ..., "labels": ...}``). A one-shot
        iterator (a generator) is read once and kept in memory so that every pass sees the same
        batches.
    batch_size:
        Only for ``(X, y)``: evaluate in chunks of this many samples (bounds memory). ``None``
        evaluates all samples in one batch.
    dtype, device:
        Floating tensors are cast to ``dtype``; everything is moved to ``device``.
    target_key:
        For mapping batches: the entry that is the target (default: the first of
        :data:`TARGET_KEYS` present). The other entries are the model's keyword arguments.
    target_to_model:
        Hand the target to the model too (for a model that computes its own loss, as Hugging Face
        models do when given ``labels``); a tuple batch is then passed whole, positionally.
    """

    def __init__(self, data, *, batch_size: int | None = None, dtype=None, device=None,
                 target_key: str | None = None, target_to_model: bool = False):
        self.dtype = dtype
        self.device = device
        self.target_key = target_key
        self.target_to_model = target_to_model
        self._source, self.description = _normalise(data, batch_size)
        if isinstance(self._source, (list, tuple)):  # held in memory: on the device once
            self._source = self._prepared(self._source)
        self._fingerprints: list[tuple[int, float]] | None = None

    def __iter__(self) -> Iterator[Batch]:
        sizes, sums = [], []
        for index, raw in enumerate(_rng_neutral(self._source)):
            batch = self._prepare(index, raw)
            sizes.append(batch.size)
            sums.append(sum(t.double().sum() for t in _tensors_of(batch)))
            yield batch
        self._check_same(sizes, sums)

    @property
    def sizes(self) -> list[int]:
        """The samples of each batch, from the first pass's fingerprints (one pass if none was
        made yet: a DataLoader is not read again to count)."""
        if self._fingerprints is None:
            for _ in self:
                pass
        return [size for size, _ in self._fingerprints]

    def fixed(self) -> Batches:
        """The same batches, read once and frozen (needed when batch composition matters)."""
        frozen = Batches.__new__(Batches)
        frozen.__dict__.update(self.__dict__)
        frozen._source = self._prepared(_rng_neutral(self._source))
        frozen.description = self.description + ", batches fixed"
        return frozen

    def subset(self, samples: torch.Tensor, *, units: str = "samples") -> Batches:
        """The batches restricted to ``samples`` (indices into the samples of all batches in
        order, or with ``units="batches"`` into the batches), read once and kept.

        Selected samples of consecutive batches are joined up to the largest batch size where
        their shapes agree (padded sequences of different lengths stay apart), so a subset costs
        what its samples cost, not what the batches they came from cost.
        """
        chosen = torch.as_tensor(samples, dtype=torch.long).unique(sorted=True)
        batches = list(self)
        if units == "batches":
            kept = [batches[i] for i in chosen.tolist()]
            return self._frozen(kept, f"{len(kept)} of {len(batches)} batches")
        largest, pieces, start = max(b.size for b in batches), [], 0
        for batch in batches:
            local = chosen[(chosen >= start) & (chosen < start + batch.size)] - start
            start += batch.size
            if local.numel():
                pieces.append(batch.rows(local))
        joined: list[Batch] = []
        for piece in pieces:
            if joined and joined[-1].size + piece.size <= largest and _joinable(joined[-1], piece):
                piece = _join(joined.pop(), piece)
            joined.append(piece)
        return self._frozen(joined, f"{int(chosen.numel())} of {start} samples")

    def _frozen(self, kept: list[Batch], description: str) -> Batches:
        frozen = Batches.__new__(Batches)
        frozen.__dict__.update(self.__dict__)
        frozen._source, frozen._fingerprints = kept, None
        frozen.description = f"{description} ({self.description})"
        return frozen

    def _prepared(self, raws: Iterable) -> list[Batch]:
        """Every batch of ``raws`` cast, moved and checked now."""
        return [self._prepare(index, raw) for index, raw in enumerate(raws)]

    def _check_same(self, sizes: list[int], sums: list[torch.Tensor]) -> None:
        """One pass's fingerprints (size, sum of every tensor) checked against pass one; the
        sums come back from the device in one transfer."""
        marks = list(zip(sizes, torch.stack(sums).tolist() if sums else [], strict=True))
        known = self._fingerprints
        if known is None:
            self._fingerprints = marks
            return
        pairs = enumerate(zip(known, marks, strict=False))
        changed = next((i for i, (first, now) in pairs if first != now), None)
        if changed is not None:
            raise _changed(f"batch {changed} differs from the first pass")
        if len(marks) != len(known):
            raise _changed(f"{len(known)} batches on the first pass, {len(marks)} now")

    def _prepare(self, index: int, raw) -> Batch:
        if isinstance(raw, Batch):  # a subset's batches are prepared already
            return raw
        if isinstance(raw, Mapping):
            return self._prepare_mapping(index, raw)
        if not isinstance(raw, (tuple, list)) or len(raw) < (1 if self.target_to_model else 2):
            raise BadInputError(
                f"batch {index} is a {type(raw).__name__}; landscope expects each batch to be a "
                "tuple (inputs..., target), as a DataLoader over a TensorDataset yields, or a "
                "mapping of named tensors (input_ids, attention_mask, labels, ...)"
            )
        tensors = tuple(self._move(index, t) for t in raw)
        if self.target_to_model:
            return self._checked(index, Batch(tensors, None, 0))
        return self._checked(index, Batch(tensors[:-1], tensors[-1], 0))

    def _prepare_mapping(self, index: int, raw: Mapping) -> Batch:
        entries = {str(k): self._move(index, v, name=str(k)) for k, v in raw.items()}
        key = self.target_key or next((k for k in TARGET_KEYS if k in entries), None)
        if key is not None and key not in entries:
            raise BadInputError(f"batch {index} has no entry {key!r} (it has "
                                f"{', '.join(entries)}); name the target with target_key=...")
        if key is None and not self.target_to_model:
            raise BadInputError(
                f"batch {index} is a mapping with entries {', '.join(entries)} and none of them "
                f"is a target ({', '.join(TARGET_KEYS)}); name it with target_key=..., or use the "
                "model's own loss (loss='model')"
            )
        target = entries.get(key) if key is not None else None
        kwargs = {k: v for k, v in entries.items() if self.target_to_model or k != key}
        return self._checked(index, Batch((), target, 0, kwargs))

    def _checked(self, index: int, batch: Batch) -> Batch:
        """The batch with its size (the first dimension shared by the target and every input)."""
        named = [(f"input {i}", t) for i, t in enumerate(batch.inputs)]
        named += [(f"entry {k!r}", t) for k, t in batch.kwargs.items()]
        lead = ("the target", batch.target) if batch.target is not None else next(
            iter(named), None)
        if lead is None:
            raise BadInputError(f"batch {index} holds no tensor")
        if lead[1].dim() == 0:
            raise BadInputError(f"batch {index}: {lead[0]} is 0-d; its first dimension must "
                                "count samples")
        size = int(lead[1].shape[0])
        for name, tensor in named:
            if tensor.dim() == 0 or tensor.shape[0] != size:
                raise BadInputError(
                    f"batch {index}: {name} has shape {tuple(tensor.shape)} but {lead[0]} has "
                    f"{size} samples; inputs and target must agree in their first dimension"
                )
        return Batch(batch.inputs, batch.target, size, batch.kwargs)

    def _move(self, index: int, value, name: str | None = None) -> torch.Tensor:
        if not isinstance(value, torch.Tensor):
            where = f" (entry {name!r})" if name is not None else ""
            raise BadInputError(
                f"batch {index} holds a {type(value).__name__}{where}; every element of a batch "
                "must be a torch.Tensor (tokenise with return_tensors='pt')"
            )
        dtype = self.dtype if value.is_floating_point() and self.dtype is not None else None
        return value.to(device=self.device, dtype=dtype)


def weighted_mean(total, weight: float):
    """L = Σ_b w_b ℓ_b / Σ_b w_b from its two sums: ``total`` = Σ_b w_b ℓ_b (a number, or a
    tensor such as Σ_b w_b ∇ℓ_b or Σ_b w_b H_b V, which average the same way) and ``weight`` =
    Σ_b w_b. Refused when Σ_b w_b ≤ 0: no batch has anything to average over."""
    if not weight > 0:
        raise BadInputError(
            f"the batches' weights add up to {weight}: no batch has anything to average over "
            "(every target ignored, or every weight zero); check ignore_index and the labels "
            "(−100 marks a token to ignore)"
        )
    return total / weight


def _tensors_of(batch: Batch) -> list[torch.Tensor]:
    return [*batch.inputs, *batch.kwargs.values(), *(() if batch.target is None else
                                                      (batch.target,))]


def _device_of(batch: Batch) -> torch.device:
    return _tensors_of(batch)[0].device


def _joinable(a: Batch, b: Batch) -> bool:
    return a.kwargs.keys() == b.kwargs.keys() and all(
        x.shape[1:] == y.shape[1:] and x.dtype == y.dtype
        for x, y in zip(_tensors_of(a), _tensors_of(b), strict=True))


def _join(a: Batch, b: Batch) -> Batch:
    def cat(x, y):
        return torch.cat([x, y])

    return Batch(tuple(map(cat, a.inputs, b.inputs)),
                 None if a.target is None else cat(a.target, b.target), a.size + b.size,
                 {k: cat(v, b.kwargs[k]) for k, v in a.kwargs.items()})


def _rng_neutral(source: Iterable) -> Iterator:
    """Iterate ``source`` without moving the caller's CPU random number generator."""
    with torch.random.fork_rng(devices=[]):
        iterator = iter(source)
    while True:
        with torch.random.fork_rng(devices=[]):
            try:
                item = next(iterator)
            except StopIteration:
                return
        yield item


def _changed(what: str) -> BadInputError:
    return BadInputError(
        f"the data changed between two passes ({what}); landscope needs the same batches on every "
        "pass. Use a DataLoader with shuffle=False and drop_last=False (the full-data loss does "
        "not depend on the order), or pass the data as tensors"
    )


def _normalise(data, batch_size: int | None) -> tuple[Iterable, str]:
    if is_tensor_pair(data):
        X, y = data
        if X.shape[0] != y.shape[0]:
            raise BadInputError(
                f"X has {X.shape[0]} samples but y has {y.shape[0]}; they must match"
            )
        if X.shape[0] == 0:
            raise BadInputError("the data set is empty (0 samples)")
        if batch_size is None:
            return [(X, y)], f"{X.shape[0]} samples in one batch"
        batch_size = checks.integer("batch_size", batch_size)
        chunks = list(zip(X.split(batch_size), y.split(batch_size), strict=True))
        batches = f"{len(chunks)} batch" + ("es" if len(chunks) != 1 else "")
        return chunks, f"{X.shape[0]} samples in {batches} of at most {batch_size}"
    if batch_size is not None:
        raise BadInputError(
            "batch_size only applies to (X, y) tensors; a DataLoader keeps its own batch size"
        )
    if isinstance(data, (torch.Tensor, Mapping)) or not isinstance(data, Iterable):
        raise BadInputError(
            f"data is a {type(data).__name__}; pass (X, y) tensors, a DataLoader, or an iterable "
            "of batches ((inputs, target) tuples or dicts of tensors)"
        )
    if isinstance(data, DataLoader):
        return data, _loader_description(data)
    if iter(data) is data:  # a generator or other one-shot iterator: keep what it yields
        data = list(data)
        return data, f"{len(data)} batches read once from an iterator"
    return data, f"{type(data).__name__} of batches"


def _loader_description(loader: DataLoader) -> str:
    """How a DataLoader batches its data; a shuffling one is refused before it is read."""
    sampler = loader.sampler
    if isinstance(sampler, DistributedSampler):
        raise BadInputError(
            "the DataLoader draws its samples with a DistributedSampler, which pads the data "
            "with repeated samples (and shuffles by default), so the loss would not be that of "
            "your data. Under torch.distributed landscope splits the data itself: pass every "
            "rank the DataLoader of all the data (shuffle=False), or each rank its own part "
            "without padding with shard='given'"
        )
    if loader.batch_sampler is not None and not isinstance(sampler, SequentialSampler) and \
            not isinstance(loader.dataset, torch.utils.data.IterableDataset):
        raise BadInputError(
            f"the DataLoader draws its samples with a {type(sampler).__name__} (shuffle=True?), "
            "so every pass would see different batches and the loss would be no function of θ. "
            "Pass DataLoader(dataset, batch_size=..., shuffle=False, drop_last=False): the "
            "full-data loss does not depend on the order"
        )
    text = f"DataLoader of batches of {loader.batch_size}"
    if loader.drop_last:
        text += " (drop_last=True: the samples of a short last batch are left out)"
    return text


def is_tensor_pair(data) -> bool:
    """Whether ``data`` is ``(X, y)``: two tensors (samples along their first dimension)."""
    return (
        isinstance(data, (tuple, list))
        and len(data) == 2
        and all(isinstance(t, torch.Tensor) for t in data)
    )

"""Data parallelism on ``torch.distributed``: each rank's shard, and the sums of every rank.

Under ``torchrun`` (or any initialised process group) an Objective built from a model holds only
its rank's shard of the data. Its engines return sums over that shard (:mod:`landscope.engines`),
and :class:`AcrossRanks` adds them up: one all-reduce per pass or per block of k products, so L,
∇L and H·V are the single-process ones (up to the order of the additions) and every rank holds the
same bits of them. The eigen-solvers then run replicated: their random vectors come from seeded
generators, so every rank takes the same steps and only rank 0 prints and writes.

Three things keep the ranks in step, because a rank that makes a different call than the others
waits for ever:

- Every decision that reads a clock (the engine trial, a time budget) uses :meth:`agree`, the
  slowest rank's time.
- A failure on one rank (a non-finite loss, a batch the model refuses, a layer the chain engine
  does not know) is flagged in the same all-reduce as the sums, so every rank raises it together
  (the failing rank its own error, the others one that names it), instead of leaving them
  waiting.
- A rank that dies is seen by the others' next collective (gloo: the connection closes; NCCL:
  the process group's timeout); :func:`guarded` turns it into one clear message.

Reductions use ``all_reduce`` (sum), whose order is fixed by the backend's algorithm for a given
world size: two runs on the same ranks give the same bits, and every rank gets the same result.
"""

from __future__ import annotations

import contextlib
import datetime
import os
import re
import signal
from collections.abc import Callable

import torch
import torch.distributed as dist

from landscope.errors import BadInputError, LandscopeError, NonFiniteLossError

SHARDS = ("split", "given", "replicate")
"""``split``: every rank passes all the data and keeps its part; ``given``: each rank passes its
own part (the loss is that of all the parts together); ``replicate``: every rank keeps all the
data and computes alone (for work shared out otherwise: grid points, race runs)."""


class RankFailure(LandscopeError):
    """Another rank failed or stopped; the message names it and what it said."""


def active(group=None) -> bool:
    """Whether a process group of more than one rank is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size(group) > 1


def rank(group=None) -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank(group) if dist.is_available() and dist.is_initialized() else 0


def world(group=None) -> int:
    """The number of ranks (1 without a process group)."""
    return dist.get_world_size(group) if dist.is_available() and dist.is_initialized() else 1


def is_main(group=None) -> bool:
    """Whether this process prints and writes (rank 0, or the only process)."""
    return rank(group) == 0


def part(items: int, index: int, parts: int) -> range:
    """The ``index``-th of ``parts`` contiguous parts of ``range(items)``; the first
    ``items % parts`` parts have one more element (a part may be empty)."""
    size, extra = divmod(items, parts)
    start = index * size + min(index, extra)
    return range(start, start + size + (index < extra))


class Local:
    """One process: sums are what this process computed."""

    ranks = 1

    @staticmethod
    def sums(compute: Callable, *, gradient: bool = True):
        return compute()

    @staticmethod
    def tensor(compute: Callable, columns: int):
        return compute()

    @staticmethod
    def agree(value: float) -> float:
        return value

    @staticmethod
    def add(value: float) -> float:
        return value

    @staticmethod
    def wrap(engine):
        return engine


class AcrossRanks:
    """The sum over the ranks of a process group of what each computed on its shard, for an
    Objective of ``n`` parameters in ``dtype`` on ``device``.

    Each reduction is one all-reduce of the payload with a failure flag in front; a rank whose
    computation raised sends the flag and zeros, so every rank learns of the failure in the same
    call and raises it (the failing rank its own error, the others one of the same kind that
    names the rank), instead of waiting for a call that never comes.
    """

    def __init__(self, n: int, dtype: torch.dtype, device: torch.device, group=None):
        self.n, self.dtype, self.device, self.group = n, dtype, device, group
        self.ranks = dist.get_world_size(group)
        self.rank = dist.get_rank(group)

    def sums(self, compute: Callable, *, gradient: bool = True):
        """``compute()`` → :class:`landscope.engines.Sums` on this rank (with a gradient if
        ``gradient``), summed over the ranks; None if ``compute`` computed nothing (an engine
        that computes nothing ahead of its products does so on every rank)."""
        from landscope.engines import Sums

        local, failure = _attempt(compute)
        if local is None and failure is None:
            return None
        packed = torch.zeros(4 + (self.n if gradient else 0), dtype=self.dtype,
                             device=self.device)
        if failure is None:
            packed[1], packed[2], packed[3] = local.value, local.weight, local.samples
            if gradient:
                packed[4:] = local.gradient
        packed = self._reduce(packed, failure)
        return Sums(packed[1].clone(), packed[4:].clone() if gradient else None,
                    float(packed[2]), int(round(float(packed[3]))))

    def tensor(self, compute: Callable, columns: int) -> torch.Tensor:
        """``compute()`` → an (n, ``columns``) tensor on this rank, summed over the ranks."""
        local, failure = _attempt(compute)
        packed = torch.zeros(1 + self.n * columns, dtype=self.dtype, device=self.device)
        if failure is None:
            packed[1:] = local.reshape(-1)
        return self._reduce(packed, failure)[1:].reshape(self.n, columns)

    def agree(self, value: float) -> float:
        """The largest of the ranks' values (a time: the slowest rank's)."""
        return self._scalar(value, dist.ReduceOp.MAX)

    def add(self, value: float) -> float:
        """The sum of the ranks' values (a count)."""
        return self._scalar(value, dist.ReduceOp.SUM)

    def _scalar(self, value: float, op) -> float:
        t = torch.tensor([float(value)], dtype=torch.float64, device=self.device)
        guarded(dist.all_reduce, t, op=op, group=self.group)
        return float(t)

    def wrap(self, engine):
        return DataParallel(engine, self)

    def _reduce(self, packed: torch.Tensor, failure: BaseException | None) -> torch.Tensor:
        packed[0] = float(failure is not None)
        guarded(dist.all_reduce, packed, group=self.group)
        if float(packed[0]) > 0:
            messages = [None] * self.ranks
            guarded(dist.all_gather_object, messages,
                    None if failure is None else (type(failure).__name__, str(failure)),
                    group=self.group)
            if failure is not None:
                raise failure
            first = next(i for i, m in enumerate(messages) if m is not None)
            kind, text = messages[first]
            raise _SAME_KIND.get(kind, RankFailure)(f"on rank {first}: {text}")
        return packed


class DataParallel:
    """An engine whose sums are those of every rank's shard: ``at`` and ``hvp`` of the wrapped
    engine, each followed by one all-reduce (:class:`AcrossRanks`)."""

    def __init__(self, engine, across: AcrossRanks):
        self.engine, self.across, self.name = engine, across, engine.name

    def at(self, theta: torch.Tensor):
        return self.across.sums(lambda: self.engine.at(theta))

    def hvp(self, V: torch.Tensor) -> torch.Tensor:
        return self.across.tensor(lambda: self.engine.hvp(V), V.shape[1])

    def release(self) -> None:
        self.engine.release()


def _unsupported():
    from landscope.chain import Unsupported

    return Unsupported


class _LazyKinds(dict):
    """Error kinds raised again on the ranks that did not fail, by class name."""

    def get(self, key, default=None):
        kinds = {"BadInputError": BadInputError, "NonFiniteLossError": NonFiniteLossError,
                 "Unsupported": _unsupported()}
        return kinds.get(key, default)


_SAME_KIND = _LazyKinds()


def _attempt(compute: Callable):
    """(result, None), or (None, the exception) for an error this rank should share."""
    try:
        return compute(), None
    except (LandscopeError, RuntimeError, ValueError) as error:
        if isinstance(error, RankFailure):
            raise
        return None, error


def guarded(collective: Callable, *args, **kwargs):
    """Run a collective; a rank that died or a timeout becomes a :class:`RankFailure` that says
    so (instead of gloo's or NCCL's internals)."""
    try:
        return collective(*args, **kwargs)
    except (RuntimeError, dist.DistBackendError) as error:
        said = re.sub(r"^\[[^\]]*\]\s*", "", str(error).splitlines()[0])  # no source path
        said = said.split(". ")[0][:200]
        raise RankFailure(
            f"another rank stopped or timed out during a collective ({type(error).__name__}: "
            f"{said}). Every rank stops; completed files are kept and a surface grid resumes "
            "from its checkpoint when the job is run again"
        ) from error


def shard(batches, how: str, mode: str, group=None):
    """This rank's part of ``batches``. ``how="split"``: every rank passed all the data (checked:
    the ranks' batch sizes and sums must agree), and rank r keeps the r-th contiguous part, of the
    samples in eval mode, of whole batches in train mode (BatchNorm mixes a batch's samples).
    ``how="given"``: the batches are this rank's part already."""
    if how == "given":
        return batches
    sizes = batches.sizes
    differ = _first_other(group, (batches._fingerprints, str(batches.dtype)))
    if differ is not None:
        raise BadInputError(
            f"shard='split', but rank {differ} passed other data than rank {rank(group)} "
            "(batch sizes or values differ): each rank would keep a part of different data. "
            "Pass the same data on every rank, or each rank's own part with shard='given'"
        )
    units = "batches" if mode == "train" else "samples"
    items = len(sizes) if units == "batches" else sum(sizes)
    mine = part(items, rank(group), world(group))
    kept = batches.subset(torch.arange(mine.start, mine.stop), units=units)
    kept.description = (f"rank {rank(group)} of {world(group)}: {units} {mine.start}–"
                        f"{mine.stop - 1} of {items} ({batches.description})" if len(mine) else
                        f"rank {rank(group)} of {world(group)}: none of the {items} {units}")
    return kept


def same_model(loss, group=None) -> None:
    """Every rank must analyse the same model: θ₀, the frozen parameters and the floating
    buffers (BatchNorm statistics) are compared by their sums and sums of squares in float64.
    A model that differs on one rank would add another model's loss into the sum."""
    tensors = [loss.theta0, *loss.frozen.values(),
               *(b for b in loss.buffers.values() if b.is_floating_point())]
    differ = _first_other(group, [(float(t.double().sum()), float(t.double().square().sum()))
                                  for t in tensors])
    if differ is not None:
        raise BadInputError(
            f"rank {differ}'s model (parameters or buffers) differs from rank {rank(group)}'s: "
            "each rank would add up the loss of another model. Load the same weights on every "
            "rank, or broadcast rank 0's parameters and buffers before building the Objective"
        )


def _first_other(group, mine):
    """The first rank whose ``mine`` (a fingerprint) differs from this rank's, or None."""
    everyone = [None] * world(group)
    guarded(dist.all_gather_object, everyone, mine, group=group)
    return next((r for r, theirs in enumerate(everyone) if theirs != mine), None)


def survey(loss, across) -> dict:
    """``loss.survey`` at θ₀ (unused parameters, first-order-only functions, writes into inputs),
    run on one batch; under data parallelism, the survey of the first rank that has a batch."""
    if isinstance(across, Local):
        return loss.survey(loss.theta0)
    has = any(float(loss.weight(batch)) > 0 for batch in loss.batches)
    found, failure = _attempt(lambda: loss.survey(loss.theta0)) if has else (None, None)
    everyone = [None] * across.ranks
    guarded(dist.all_gather_object, everyone,
            {"survey": found, "failure": None if failure is None
             else (type(failure).__name__, str(failure))}, group=across.group)
    for r, theirs in enumerate(everyone):
        if theirs["failure"] is not None:
            if failure is not None:
                raise failure
            kind, text = theirs["failure"]
            raise _SAME_KIND.get(kind, RankFailure)(f"on rank {r}: {text}")
    surveys = [theirs["survey"] for theirs in everyone if theirs["survey"] is not None]
    if not surveys:
        from landscope.data import weighted_mean

        weighted_mean(0.0, 0.0)  # raises: nothing to average over on any rank
    loss.writes_inputs = any(s["writes_inputs"] for s in surveys)
    return surveys[0]


# ------------------------------------------------------------------ launching
def launched() -> bool:
    """Whether this process was started by ``torchrun`` (or another launcher setting
    ``WORLD_SIZE`` and ``RANK``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and "RANK" in os.environ


def launch_rank() -> int:
    """This process's rank: the process group's, else the launcher's ``RANK``, else 0."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def start(device: torch.device | str | None = None, timeout_s: float = 600.0) -> None:
    """Join the process group that ``torchrun`` describes (environment ``RANK``, ``WORLD_SIZE``,
    ``MASTER_ADDR``, ``MASTER_PORT``): NCCL when analysing on CUDA, gloo otherwise. A rank that
    waits more than ``timeout_s`` for the others stops with :class:`RankFailure`. Each rank of a
    CUDA job takes the GPU ``LOCAL_RANK``. SIGTERM (sent by torchrun when another rank dies)
    stops this rank as Ctrl-C does: completed files are kept."""
    if dist.is_initialized():
        return
    cuda = device is not None and torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if cuda else "gloo",
                            timeout=datetime.timedelta(seconds=timeout_s))
    signal.signal(signal.SIGTERM, _interrupt)


def stop() -> None:
    """Leave the process group (if this process joined one); SIGTERM ends the process again."""
    if dist.is_available() and dist.is_initialized():
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        with contextlib.suppress(Exception):
            dist.destroy_process_group()


class Stopped(KeyboardInterrupt):
    """SIGTERM: the launcher stops this rank (another rank failed, or the job was cancelled)."""


def _interrupt(signum, frame):
    raise Stopped(f"signal {signum}")


@contextlib.contextmanager
def quiet_unless_main():
    """Ranks other than 0 print nothing (their stdout goes nowhere; errors still reach stderr)."""
    if launch_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield

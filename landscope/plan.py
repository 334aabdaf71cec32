"""The cost plan: what products and memory an analysis will take, from one timed gradient.

One gradient g = ∇L(θ) is timed and the tensors its graph saves are counted (distinct storages
packed by autograd, θ's own left out). A Hessian-vector product through the kept first-order graph
costs about ``PRODUCT_PER_GRADIENT`` gradients, and the graph kept for products holds about
``KEPT_PER_SAVED`` times what the plain gradient saves (its backward is recorded too); a product's
backward needs about as much again for a while (``PRODUCT_WORKSPACE_PER_KEPT``). Time and
activations scale linearly in the samples; a Lanczos basis holds m + 1 vectors of n numbers and
the m products beside them (2m + 1 vectors), a
dense analysis the n×n Hessian and its ``eigh`` workspace, about 3 n² numbers.
:meth:`CostPlan.check` refuses, with the fix, what would not fit in the free memory of the device.

The figures are those of autograd products through the kept graph. Where the chain engine
(:mod:`landscope.chain`) computes (or may compute, on trial) the products, its per-layer caches
count ``CHAIN_CACHE_PER_KEPT`` times the kept graph: on a tanh MLP over 50,000 samples they held
1.9× it, and the first-point trial peaked at 2.1× the plan without this factor.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, replace

import torch

from landscope.errors import BadInputError

PRODUCT_PER_GRADIENT = 2.5
"""Seconds of one Hessian-vector product per second of gradient. Measured in
benchmarks/RESULTS.md ("HVP cost (x gradient)" rows, warm ``obj.hvp`` over a plain
``torch.autograd.grad``): 1.09–1.46 on the small MLP (W1), 1.98–2.29 on the transformer (W4;
2.15–2.65 per column at k = 10), 2.63 on ResNet-20 (W5; 2.52 at k = 10); PyHessian 1.25–2.80.
The plan is for the large models whose runs take minutes, so it takes the middle of W4–W5's
2.0–2.7 rather than the small MLP's figure."""

KEPT_PER_SAVED = 2.0
"""Bytes the kept first-order graph (built with ``create_graph``) holds per byte the plain gradient
saves: its backward is recorded too (gradients of the activations and what their derivatives
read). Measured with saved-tensor hooks: ReLU MLP 1.6, small CNN with BatchNorm 1.7, GELU/Softplus
MLP 1.8, ResNet-20 2.0, tanh MLP 2.5; 2.0 errs by at most 25% on these."""

PRODUCT_WORKSPACE_PER_KEPT = 1.0
"""Bytes a product's backward allocates for a while per byte of kept graph (the gradients of the
graph's intermediates): the peak RSS of a product exceeded the RSS with the graph kept by 1.1×
(tanh MLP, 50,000 samples) and 1.2× (CNN with BatchNorm, 1,500 images) of the kept graph.
Vmapped products (``engine="batched"``) hold this once per column."""

STREAMED_PRODUCT_PER_GRADIENT = 1 + PRODUCT_PER_GRADIENT
"""Beyond ``graph_cache_samples`` no graph is kept: each product rebuilds it batch by batch
(one gradient with ``create_graph``) and then runs the product's backward."""

CHAIN_CACHE_PER_KEPT = 2.0
"""Bytes the chain engine's caches hold per byte of the kept graph (1.9 measured, see above)."""

DENSE_NUMBERS_PER_ENTRY = 3
"""The dense path holds the n×n Hessian, its symmetrised copy and ``eigh``'s eigenvectors."""

WORK_VECTORS = 4
"""n-vectors an iterative run holds besides its basis: θ₀, ∇L, the vector and its product."""


@dataclass(frozen=True)
class CostPlan:
    """Estimated time and memory of products and of an iterative or dense analysis.

    Times in seconds, memory in bytes. ``samples``: what the timed gradient covered (1 for an
    analytic function). ``activation_bytes``: what the graph kept for products holds over those
    samples. ``available_bytes``: free memory on the device when estimated, or None if unknown.
    ``ranks``: processes sharing the data (:mod:`landscope.distributed`); times are those of the
    ranks working side by side, memory that of one rank holding its part.
    """

    n: int
    dtype: str
    device: str
    samples: int
    largest_batch: int
    graph_cache_samples: int
    gradient_seconds: float
    product_seconds: float
    seconds_per_sample_product: float
    parameter_bytes: int
    saved_bytes: int
    activation_bytes: int
    basis_size: int
    basis_bytes: int
    dense_bytes: int
    available_bytes: int | None
    fixed_product_seconds: float = 0.0
    ranks: int = 1

    def product_time(self, samples: int, columns: int = 1) -> float:
        """Seconds of ``columns`` Hessian-vector products over ``samples`` samples: a fixed part
        (``fixed_product_seconds``: launch and Python overhead, known once :func:`scaled` has
        seen two sizes) plus a part linear in the samples (streamed products when ``samples``
        is above ``graph_cache_samples``)."""
        per = self.seconds_per_sample_product
        if self._streams(samples):
            per *= STREAMED_PRODUCT_PER_GRADIENT / PRODUCT_PER_GRADIENT
        return (self.fixed_product_seconds + per * samples) * columns

    def products_within(self, seconds: float, samples: int) -> int:
        """How many products over ``samples`` samples fit in ``seconds``: the largest c with
        ``product_time(samples, c) <= seconds``."""
        one = self.product_time(samples)
        return int(seconds // one) if one > 0 else 2**62

    def activation_bytes_at(self, samples: int | None = None) -> int:
        """Bytes of the graph held for products over ``samples`` samples: all of it up to
        ``graph_cache_samples``, one batch's beyond (products then stream per batch)."""
        samples = self.samples if samples is None else samples
        held = min(samples, self.largest_batch * self.ranks) if self._streams(samples) else \
            samples
        return round(self.activation_bytes * held / self.samples)

    def _streams(self, samples: int) -> bool:
        """Whether products over ``samples`` samples stream per batch: a rank's part is above
        ``graph_cache_samples``."""
        return math.ceil(samples / self.ranks) > self.graph_cache_samples

    def peak_bytes(self, basis_size: int | None = None, samples: int | None = None,
                   dense: bool = False) -> int:
        """Estimated peak of an analysis: work vectors, the graph kept for products over
        ``samples`` samples with one product's workspace, and a Lanczos basis of ``basis_size`` + 1
        vectors (iterative) or the dense Hessian with its ``eigh`` workspace (``dense=True``)."""
        products = round((1 + PRODUCT_WORKSPACE_PER_KEPT) * self.activation_bytes_at(samples))
        base = WORK_VECTORS * self.parameter_bytes + products
        return base + (self.dense_bytes if dense else self._basis(basis_size))

    def fits(self, basis_size: int | None = None, dense: bool = False,
             samples: int | None = None) -> bool:
        """Whether :meth:`peak_bytes` is within the free memory (True when that is unknown)."""
        return self.available_bytes is None or \
            self.peak_bytes(basis_size, samples, dense) <= self.available_bytes

    def check(self, basis_size: int | None = None, dense: bool = False,
              samples: int | None = None) -> int:
        """The estimated peak in bytes; raises BadInputError, naming the figures and the fix,
        when it exceeds the free memory."""
        peak = self.peak_bytes(basis_size, samples, dense)
        if self.fits(basis_size, dense, samples):
            return peak
        samples = self.samples if samples is None else samples
        parts = [  # (what, bytes, how to shrink it)
            ("parameters and work vectors", WORK_VECTORS * self.parameter_bytes, None),
            (f"kept activations over {samples:,} samples and a product's workspace",
             round((1 + PRODUCT_WORKSPACE_PER_KEPT) * self.activation_bytes_at(samples)),
             "analyse fewer samples (samples= / --samples), or give a batch_size and a "
             "graph_cache_samples below the sample count so that products stream per batch "
             "(slower)"),
            (f"dense Hessian (n = {self.n:,}) and eigh workspace", self.dense_bytes,
             "use the iterative path instead of the dense Hessian (about "
             f"{_gib(self.peak_bytes(basis_size, samples))})") if dense else
            (f"Lanczos basis ({self._vectors(basis_size)} vectors)", self._basis(basis_size),
             "use a smaller Lanczos basis (basis_size=)"),
        ]
        fix = [how for _, nbytes, how in parts if how and nbytes >= peak / 4]
        fix.append("analyse a subset of the parameters (params=)")
        raise BadInputError(
            f"the {'dense' if dense else 'iterative'} analysis needs about {_gib(peak)} "
            f"({'; '.join(f'{what} {_gib(nbytes)}' for what, nbytes, _ in parts)}), but only "
            f"{_gib(self.available_bytes)} are free on {self.device}. To fit: "
            + "; or ".join(fix) + "."
        )

    def to_dict(self) -> dict:
        """The plan as plain numbers and strings (JSON-ready), with the constants it used."""
        return {**asdict(self), "product_per_gradient": PRODUCT_PER_GRADIENT,
                "kept_per_saved": KEPT_PER_SAVED,
                "iterative_peak_bytes": self.peak_bytes(),
                "dense_peak_bytes": self.peak_bytes(dense=True)}

    def lines(self) -> list[str]:
        """A few human-readable lines: time of a gradient and of a product, memory, free memory."""
        product = self.product_time(self.samples)
        ratio = product / self.gradient_seconds if self.gradient_seconds > 0 else math.nan
        what = f"{self.samples:,} samples" if self.samples > 1 else "the function"
        if self.ranks > 1:
            what += f" split over {self.ranks} ranks (memory per rank)"
        out = [f"one gradient over {what}: {_seconds(self.gradient_seconds)}; one Hessian-vector "
               f"product ≈ {_seconds(product)} ({ratio:.1f} gradients)"]
        if self._streams(self.samples):
            out.append(f"products stream batch by batch (more than graph_cache_samples = "
                       f"{self.graph_cache_samples:,} samples): ≈ "
                       f"{STREAMED_PRODUCT_PER_GRADIENT:.1f} gradients each")
        free = "unknown" if self.available_bytes is None else _gib(self.available_bytes)
        out.append(f"memory: parameters {_size(self.parameter_bytes)}, kept activations "
                   f"{_size(self.activation_bytes_at())}, Lanczos basis "
                   f"({self._vectors(None)} vectors) {_size(self.basis_bytes)}; peak ≈ "
                   f"{_size(self.peak_bytes())}; free {free}")
        verdict = "fits" if self.fits(dense=True) else "does not fit"
        out.append(f"dense Hessian (n = {self.n:,}): {_size(self.dense_bytes)}, {verdict}")
        return out

    def _vectors(self, basis_size: int | None) -> int:
        """Vectors the Lanczos run keeps: its basis (m + 1) and the products beside it (m)."""
        return 2 * (self.basis_size if basis_size is None else basis_size) + 1

    def _basis(self, basis_size: int | None) -> int:
        return self._vectors(basis_size) * self.parameter_bytes


def estimate(obj, theta: torch.Tensor | None = None, *, basis_size: int = 40) -> CostPlan:
    """Time one gradient of ``obj`` at θ and count what its graph saves; the plan follows.

    ``basis_size``: the Lanczos basis of the plan (40, Lanczos' default for few eigenpairs).
    L and ∇L at θ stay cached in ``obj`` for the work that follows. If they were cached already,
    the gradient is timed at θ moved by one unit in the last place of its first coordinate
    (the same cost; the cache then holds that point).
    """
    theta = obj.point(theta)
    gradients = obj.counts["gradients"]
    seconds, saved = _timed_gradient(obj, theta)
    if obj.counts["gradients"] == gradients:  # answered from the cache: no work was timed
        moved = theta.clone()
        moved[0] = torch.nextafter(moved[0], torch.tensor(math.inf, dtype=moved.dtype))
        seconds, saved = _timed_gradient(obj, moved)
    sizes = [1] if obj.model_loss is None else obj.model_loss.batches.sizes or [0]
    samples = obj.sample_count()  # every rank's: the ranks' products run side by side
    itemsize = torch.finfo(obj.dtype).bits // 8
    parameter_bytes = obj.n * itemsize
    product = PRODUCT_PER_GRADIENT * seconds
    return CostPlan(
        n=obj.n, dtype=str(obj.dtype).replace("torch.", ""), device=str(obj.device),
        samples=samples, largest_batch=max(sizes), graph_cache_samples=obj.graph_cache_samples,
        gradient_seconds=seconds, product_seconds=product,
        seconds_per_sample_product=product / samples,
        parameter_bytes=parameter_bytes, saved_bytes=saved,
        activation_bytes=round(KEPT_PER_SAVED * saved
                               * (CHAIN_CACHE_PER_KEPT if obj.chain_engine else 1.0)),
        basis_size=basis_size,
        basis_bytes=(2 * basis_size + 1) * parameter_bytes,
        dense_bytes=DENSE_NUMBERS_PER_ENTRY * obj.n**2 * itemsize,
        available_bytes=available_bytes(obj.device),
        ranks=obj.ranks,
    )


def scaled(small: CostPlan, large: CostPlan) -> CostPlan:
    """The plan ``large`` with a product's cost split into a fixed part and a part per sample,
    from the same model timed at two data sizes (a line through the two product times; neither
    part below zero). Small passes are dominated by the fixed part: a plan timed on 64 samples
    alone overestimated a 2,000-sample product of a small CNN twofold and of a small MLP 15-fold."""
    if large.samples <= small.samples:
        return large
    slope = (large.product_seconds - small.product_seconds) / (large.samples - small.samples)
    slope = max(slope, 0.0)
    fixed = max(large.product_seconds - slope * large.samples, 0.0)
    if slope == 0.0:
        slope = large.seconds_per_sample_product if fixed == 0.0 else 0.0
    return replace(large, seconds_per_sample_product=slope, fixed_product_seconds=fixed)


def _timed_gradient(obj, theta: torch.Tensor) -> tuple[float, int]:
    """Seconds of ``obj.value_and_grad(θ)`` and the bytes of the distinct storages its graph
    saved, θ's own left out (the model's weights are views of it)."""
    own = theta.untyped_storage().data_ptr()
    storages: dict[tuple[str, int], int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() != own:
            storages[(storage.device.type, storage.data_ptr())] = storage.nbytes()
        return tensor

    _synchronise(obj.device)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        obj.value_and_grad(theta)
    _synchronise(obj.device)
    return obj.agree(time.perf_counter() - start), sum(storages.values())


def _synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def available_bytes(device: str | torch.device) -> int | None:
    """Free memory on ``device`` in bytes: CUDA's free memory plus what PyTorch has reserved but
    not allocated; on the CPU MemAvailable (/proc/meminfo), else the free physical pages; None
    where neither can be read."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    if device.type != "cpu":
        return None
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _gib(nbytes: int) -> str:
    return f"{nbytes / 2**30:.3g} GiB"


def _size(nbytes: int) -> str:
    """Decimal units, as in "310 MB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if nbytes >= scale:
            return f"{nbytes / scale:.3g} {unit}"
    return f"{nbytes} B"


def _seconds(seconds: float) -> str:
    return f"{seconds:.3g} s" if seconds < 60 else f"{seconds / 60:.1f} min"

"""Curvature on a held batch: sharpness against the optimiser's stability limit, λ_min, noise.

What is hard: the numbers only mean something next to the optimiser that produced the run. On a
quadratic with curvature λ, gradient descent with rate η is stable iff ηλ < 2; heavy-ball momentum
μ (PyTorch SGD, dampening d) iff η(1−d)λ < 2(1+μ); Nesterov iff ηλ < 2(1+μ)/(1+2μ). Adaptive
methods are heavy-ball methods on a preconditioned problem: with P = diag(√v̂ + ε) the relevant
curvature is λ_max(P⁻¹H) (computed as λ_max(P^-½ H P^-½), a symmetric operator) and Adam's
limit is 2(1+β₁)/((1−β₁)η), i.e. 38/η at β₁ = 0.9 (Cohen et al., 2022, "Adaptive gradient methods
at the edge of stability"). *Sharpness* below is that relevant curvature; ``stability_threshold``
the limit it is compared with. Preconditioners are frozen at the measured step (an approximation:
v̂ keeps moving).

How fast the run moves is another number: under a constant (preconditioned) gradient g a momentum
method settles into steps η_eff·g, with η_eff = η(1−d)/(1−μ) for heavy ball, η/(1−μ) for Nesterov
and RMSprop, η for Adam (its m is an average, not a sum). Along the sharpest direction each step
then removes the share ≈ η_eff·λ of the error, so η_eff·sharpness/2 says how far the learning rate
is below the largest that plain gradient descent could take there (``effective_lr``); the limit
above is larger by the momentum's damping and says nothing about speed.

Mini-batch SGD does not sit at the edge through λ_max: what rises to the limit and hovers there
is the *batch sharpness* E_B[g_Bᵀ H_B g_B / ‖g_B‖²], the curvature of the mini-batch loss L_B
along its own gradient g_B = ∇L_B (H_B = ∇²L_B), averaged over mini-batches B of the training
batch size (Andreyev & Beneventano, 2024, "Edge of Stochastic Stability", arXiv:2412.20553,
Definition 3), while the full-batch λ_max stays below the limit, the lower the smaller the batch.
For SGD (any momentum) trained on batches smaller than the held batch, the held batch is cut
into up to :data:`BATCH_CHUNKS` chunks of the training batch size and the ratio averaged over
them (``batch_sharpness``; one gradient and one product per chunk). ``sharpness`` stays the
full-batch quantity; both are read against the same ``stability_threshold``. With heavy-ball
momentum μ small batches have been seen to hold batch sharpness near 2(1−μ)/η rather than the
deterministic 2(1+μ)/η, which large batches reach (Andreyev et al., 2026, arXiv:2604.14108).

Gradient noise: the held batch is cut into m equal chunks of b samples with gradients g_i; with
s² = Σ‖g_i − ḡ‖²/(m−1) ≈ tr Σ / b (Σ the per-sample gradient covariance) and the unbiased
‖G‖² ≈ ‖ḡ‖² − s²/m, the noise scale B_noise = tr Σ / ‖G‖² (McCandlish et al., 2018) is the batch
size at which mini-batch noise equals the signal: much smaller batches see mostly noise.

Warm starts: the held batch is fixed and the weights move a little between measurements, so each
Lanczos run starts from the eigenvectors the last measurement found (:class:`Eigenvectors`;
``extreme_eigenpairs(warm=...)``), and meets the same residual test in fewer products.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, replace

import torch

from landscope.errors import BadInputError, NonFiniteLossError
from landscope.linalg import extreme_eigenpairs
from landscope.objective import Objective
from landscope.spectrum import spectrum

COLUMNS = ("held_loss", "held_grad_norm", "lambda_max", "lambda_max_residual", "lambda_min",
           "lambda_min_residual", "sharpness", "stability_threshold", "effective_lr",
           "noise_scale", "curvature_products", "batch_sharpness")
"""The record columns a curvature measurement fills (NaN where not measured)."""

EIG_RTOL = 1e-3
"""Relative residual tolerance of the eigenvalues: a verdict needs two digits, not eight."""
MIN_PRODUCTS = 10
"""Fewer Hessian-vector products than this per eigenvalue are not worth spending."""
BATCH_CHUNKS = 8
"""At most this many mini-batches of the held batch enter the batch sharpness."""


@dataclass(frozen=True)
class Eigenvectors:
    """A measurement's unit eigenvectors (flat, θ order), the next one's warm start: of λ_max and
    λ_min of H and of λ_max of P^-½ H P^-½; None where not computed (yet)."""

    top: torch.Tensor | None = None
    bottom: torch.Tensor | None = None
    preconditioned: torch.Tensor | None = None

    def fitting(self, n: int) -> Eigenvectors:
        """The vectors of length ``n`` only: one from θ of another size starts its run cold."""
        def fit(v):
            return v if v is not None and tuple(v.shape) == (n,) else None
        return Eigenvectors(fit(self.top), fit(self.bottom), fit(self.preconditioned))


@dataclass(frozen=True)
class Stability:
    """The optimiser's stability limit on the (preconditioned) curvature, how it was derived, and
    its steady step per unit of (preconditioned) gradient, η_eff (module docstring)."""

    threshold: float | None
    preconditioner: torch.Tensor | None  # P as a flat vector (θ order), or None for P = I
    rule: str
    effective_lr: float = math.nan


def stability(optimizer: torch.optim.Optimizer, named: dict[str, torch.Tensor],
              names: list[str]) -> Stability:
    """The stability limit of ``optimizer`` (first parameter group) on a quadratic.

    ``named`` maps parameter names to the model's tensors and ``names`` gives θ's order, so that
    the preconditioner can be laid out as a flat vector. Unknown optimisers get ``threshold=None``.

    Examples
    --------
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> heavy_ball = stability(torch.optim.SGD([w], lr=0.1, momentum=0.9), {"w": w}, ["w"])
    >>> round(heavy_ball.threshold, 9), round(heavy_ball.effective_lr, 9)
    (38.0, 1.0)
    """
    group = optimizer.param_groups[0]
    lr = float(group["lr"])
    if lr <= 0:
        return Stability(math.inf, None, "a zero learning rate is stable at any curvature", 0.0)
    if isinstance(optimizer, torch.optim.SGD):
        mu = group.get("momentum", 0.0)
        damp = group.get("dampening", 0.0) if mu else 0.0  # no buffer, no dampening
        if group.get("nesterov", False):
            return Stability((2 + 2 * mu) / ((1 + 2 * mu) * lr), None,
                             "Nesterov: ηλ < 2(1+μ)/(1+2μ)", lr / (1 - mu))
        return Stability(2 * (1 + mu) / ((1 - damp) * lr), None, "heavy ball: η(1−d)λ < 2(1+μ)",
                         lr * (1 - damp) / (1 - mu))
    if isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW)):
        beta1, beta2 = group["betas"]
        key = "max_exp_avg_sq" if group.get("amsgrad", False) else "exp_avg_sq"
        P = _preconditioner(optimizer, named, names, lambda s: (
            s[key] / (1 - beta2 ** float(s["step"]))).sqrt() + group["eps"])
        return Stability(2 * (1 + beta1) / ((1 - beta1) * lr), P,
                         "Adam: λ(P⁻¹H) < 2(1+β₁)/((1−β₁)η)", lr)
    if isinstance(optimizer, torch.optim.RMSprop):
        mu = group.get("momentum", 0.0)

        def root(s):
            v = s["square_avg"] - s["grad_avg"] ** 2 if group.get("centered") else s["square_avg"]
            return v.sqrt() + group["eps"]

        P = _preconditioner(optimizer, named, names, root)
        return Stability(2 * (1 + mu) / lr, P, "RMSprop: ηλ(P⁻¹H) < 2(1+μ)", lr / (1 - mu))
    return Stability(None, None, f"no stability rule for {type(optimizer).__name__}")


def measure(model: torch.nn.Module, loss_fn, held: tuple | Mapping,
            optimizer: torch.optim.Optimizer, *, smallest: bool, max_products: int,
            noise_chunks: int = 4, batch_size: int | None = None, seed: int = 0,
            seconds: float = math.inf, warm: Eigenvectors | None = None) -> dict:
    """Curvature and noise of the loss on the held batch at the model's current weights.

    Parameters
    ----------
    model, loss_fn, held: the network, ``loss_fn(output, target)`` (batch mean; or ``"model"``,
        the loss the model returns) and the held batch: ``(X, y)``, or a mapping of tensors
        that the model takes as keyword arguments, less the target (``labels``).
    optimizer: the run's optimiser: its stability limit and (Adam, RMSprop) preconditioner.
    smallest: also compute λ_min (the loss has stalled) besides λ_max.
    max_products: Hessian-vector product budget of each Lanczos run.
    noise_chunks: the held batch is cut into this many chunks for the gradient noise.
    batch_size: the training mini-batch size, if known: under SGD, when it is smaller than the
        held batch, the batch sharpness is measured on chunks of this size (module docstring).
    seconds: time budget. The gradient pass comes first, taking t_g; unless 3 t_g fit in the
        budget the measurement stops there. Then a first product builds the graph, and a second,
        timed one t_p sets what the rest may use: each Lanczos run gets
        min(max_products, ⌊remaining / (runs · t_p)⌋) products (a run cut short reports its
        residual); below :data:`MIN_PRODUCTS` no eigenvalue is computed. The noise scale, about
        one more gradient pass, is computed only if t_g is left. Under mini-batch SGD the batch
        sharpness comes before the Lanczos runs (it is the gauge at the edge there, and cheap:
        (b/m)(2 t_g + t_p) for each chunk of b of the m held samples): it takes a chunk only
        while the time it expects one to take (that estimate, then the mean of those done) is
        left, and averages the chunks done. So the budget is exceeded only by these first three
        passes, when the gradient alone or the two setup products take longer than 3 t_g would
        allow.
    warm: the last measurement's ``"vectors"``: each Lanczos run starts from those of its own
        operator that fit θ's size (others start cold).

    Returns
    -------
    A dict with every name in :data:`COLUMNS` (NaN where not computed) plus ``seconds``,
    ``rule``, ``note``, ``batch_chunks`` (the chunks the batch sharpness averages), ``vectors``
    (:class:`Eigenvectors`: this measurement's, or ``warm``'s where it computed none), and the
    costs seen: ``gradient_seconds`` (t_g), ``fixed_seconds`` (up to the timed product) and
    ``seconds_per_product`` (t_p). Never changes the model or the global RNG (the Objective
    guarantees it; Lanczos draws from its own seeded generator). Under a process group the held
    batch is this process's alone (``shard="replicate"``): no collective, so one rank can measure
    while the others train.

    Examples
    --------
    >>> net = torch.nn.Linear(3, 2)
    >>> X, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    >>> opt = torch.optim.SGD(net.parameters(), lr=0.1)
    >>> out = measure(net, torch.nn.functional.cross_entropy, (X, y), opt, smallest=True,
    ...               max_products=50)
    >>> out["lambda_min"] <= out["lambda_max"], out["stability_threshold"]
    (True, 20.0)
    """
    start = time.perf_counter()
    out = dict.fromkeys(COLUMNS, math.nan)
    costs = {"gradient_seconds": math.nan, "fixed_seconds": math.nan,
             "seconds_per_product": math.nan}

    mode = "train" if model.training else "eval"
    obj = Objective.from_model(model, loss_fn, _data(held), mode=mode, shard="replicate")
    vectors = (warm or Eigenvectors()).fitting(obj.n)
    chunks = 0

    def finish(rule, note):
        return {**out, **costs, "seconds": time.perf_counter() - start, "rule": rule,
                "note": note, "batch_chunks": chunks, "vectors": vectors}
    try:
        loss, grad = obj.value_and_grad()
    except NonFiniteLossError as error:
        return finish(None, str(error))
    costs["gradient_seconds"] = gradient_seconds = time.perf_counter() - start
    out["held_loss"], out["held_grad_norm"] = loss.item(), grad.norm().item()
    named = dict(model.named_parameters(remove_duplicate=False))
    stab = stability(optimizer, named, obj.info["parameters"])
    out["stability_threshold"] = math.nan if stab.threshold is None else stab.threshold
    out["effective_lr"] = stab.effective_lr
    if seconds < 3 * gradient_seconds:
        out["curvature_products"] = 0
        return finish(stab.rule, f"the time budget ({seconds:.3g} s) is below three gradient "
                                 f"passes of {gradient_seconds:.3g} s; not measured")
    obj.hvp(grad)  # builds the graph (or picks the engine): not a typical product's cost
    tick = time.perf_counter()
    obj.hvp(grad)
    costs["seconds_per_product"] = per_product = max(time.perf_counter() - tick, 1e-9)
    costs["fixed_seconds"] = time.perf_counter() - start - per_product

    size, held_samples = batch_size or 0, held_size(held)
    batch_chunks = min(held_samples // size, BATCH_CHUNKS) \
        if isinstance(optimizer, torch.optim.SGD) and 0 < size < held_samples else 0
    batch_products, notes = 0, []
    if batch_chunks:  # SGD's gauge at the edge (module docstring): it comes before λ_max
        per_chunk = size / held_samples * (2 * gradient_seconds + per_product)
        out["batch_sharpness"], chunks, batch_products = _batch_sharpness(
            model, loss_fn, held, mode, size, batch_chunks, per_chunk, deadline=start + seconds)
        if not chunks:
            notes.append("no time left for the batch sharpness")

    def allowed(runs: int) -> int:
        remaining = seconds - (time.perf_counter() - start)
        if remaining == math.inf:
            return max_products
        return min(max_products, max(0, int(remaining / (runs * per_product))))

    runs = 1 + (stab.preconditioner is not None)
    budget = allowed(runs)
    if budget < MIN_PRODUCTS:
        out["curvature_products"] = obj.counts["hvp"] + batch_products
        return finish(stab.rule, "; ".join([*notes, (
            f"the time budget ({seconds:.3g} s) leaves {budget} Hessian-vector products per "
            "eigenvalue; not measured")]))
    start_from = [v for v in (vectors.top, vectors.bottom if smallest else None) if v is not None]
    spec = spectrum(obj, k=1, which="both" if smallest else "largest", eig_rtol=EIG_RTOL,
                    max_products=budget, exact=None if obj.n <= budget else False, seed=seed,
                    warm=torch.stack(start_from, dim=1) if start_from else None)
    out["lambda_max"] = spec.largest.values[0].item()
    out["lambda_max_residual"] = spec.largest.residuals[0].item()
    vectors = replace(vectors, top=spec.largest.vectors[:, 0])
    if smallest:
        out["lambda_min"] = spec.smallest.values[0].item()
        out["lambda_min_residual"] = spec.smallest.residuals[0].item()
        vectors = replace(vectors, bottom=spec.smallest.vectors[:, 0])
    out["sharpness"] = out["lambda_max"]
    products = obj.counts["hvp"] + batch_products
    if stab.preconditioner is not None:
        budget = allowed(1)
        if budget >= MIN_PRODUCTS:
            preconditioned = obj.operator().scaled(
                stab.preconditioner.to(obj.device, obj.dtype).reciprocal())
            result = extreme_eigenpairs(preconditioned, k_largest=1, rtol=EIG_RTOL,
                                        max_products=budget, seed=seed,
                                        warm=vectors.preconditioned)
            out["sharpness"] = result.largest.values[0].item()
            vectors = replace(vectors, preconditioned=result.largest.vectors[:, 0])
            products += result.products
        else:
            out["sharpness"] = math.nan
            notes.append("no time left for the preconditioned sharpness")
    out["curvature_products"] = products
    if seconds - (time.perf_counter() - start) >= gradient_seconds:
        out["noise_scale"] = _noise_scale(model, loss_fn, held, mode, noise_chunks)
    else:
        notes.append("no time left for the noise scale")
    return finish(stab.rule, "; ".join(notes))


def least_seconds(gradient_seconds: float, per_product: float = math.nan) -> float:
    """The least time worth starting a measurement with: the gradient pass t_g on the held
    batch, the two setup products and :data:`MIN_PRODUCTS` products, t_p each (as a measurement
    timed it; counted as t_g until one has)."""
    per_product = per_product if math.isfinite(per_product) else gradient_seconds
    return gradient_seconds + (2 + MIN_PRODUCTS) * per_product


def check_held(held, loss_fn) -> None:
    """Refuse, naming the fix, a held batch that is neither ``(X, y)`` nor a mapping of tensors
    with one number of samples, or that comes without a loss."""
    if loss_fn is None:
        raise BadInputError("a held batch needs loss_fn as well: the loss of a batch, "
                            "loss_fn(model(X), y), or 'model' for the loss the model returns")
    if isinstance(held, Mapping):
        tensors = list(held.values())
    else:
        tensors = list(held) if isinstance(held, (tuple, list)) and len(held) == 2 else []
    if not (tensors and all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in tensors)
            and len({t.shape[0] for t in tensors}) == 1):
        raise BadInputError("held must be a batch (X, y) of two tensors, or a mapping of tensors "
                            "(input_ids, attention_mask, labels, ...), all with the same number "
                            "of samples (first dimension)")


def held_size(held) -> int:
    """The number of samples in a held batch (``(X, y)`` or a mapping of tensors)."""
    first = next(iter(held.values())) if isinstance(held, Mapping) else held[0]
    return int(first.shape[0])


def _data(held, start: int = 0, stop: int | None = None):
    """Samples start:stop of the held batch as Objective data."""
    if isinstance(held, Mapping):
        return [{key: value[start:stop] for key, value in held.items()}]
    return held[0][start:stop], held[1][start:stop]


def _noise_scale(model, loss_fn, held, mode: str, chunks: int) -> float:
    """B_noise = tr Σ / ‖G‖² from ``chunks`` equal chunks of the held batch (module docstring)."""
    b = held_size(held) // chunks
    if chunks < 2 or b < 1:
        return math.nan
    grads = torch.stack([
        Objective.from_model(model, loss_fn, _data(held, i * b, (i + 1) * b), mode=mode,
                             shard="replicate").grad().double()
        for i in range(chunks)])
    mean = grads.mean(0)
    s2 = ((grads - mean) ** 2).sum().item() / (chunks - 1)
    signal = mean.pow(2).sum().item() - s2 / chunks
    return b * s2 / signal if signal > 0 else math.inf


def _batch_sharpness(model, loss_fn, held, mode: str, size: int, chunks: int,
                     per_chunk: float, deadline: float) -> tuple[float, int, int]:
    """(mean of g_Bᵀ H_B g_B / ‖g_B‖² over the first ``chunks`` chunks of ``size`` held samples,
    chunks done, products): a chunk is taken only while the time one is expected to take is
    left before ``deadline`` (``per_chunk`` at first, then the mean of those done); a chunk whose
    gradient is zero has no direction and is left out of the mean (NaN if all are)."""
    ratios, done, products, begun = [], 0, 0, time.perf_counter()
    while done < chunks:
        expected = (time.perf_counter() - begun) / done if done else per_chunk
        if deadline - time.perf_counter() < expected:
            break
        batch = Objective.from_model(model, loss_fn, _data(held, done * size, (done + 1) * size),
                                     mode=mode, engine="loop", shard="replicate")
        g = batch.grad()
        g_dot_g = g.double().pow(2).sum().item()
        if g_dot_g > 0:
            ratios.append(g.double().dot(batch.hvp(g).double()).item() / g_dot_g)
        products += batch.counts["hvp"]
        done += 1
    return (math.fsum(ratios) / len(ratios) if ratios else math.nan), done, products


def _preconditioner(optimizer, named, names, root) -> torch.Tensor | None:
    """P as one flat vector in θ order from per-parameter optimiser state, or None if missing."""
    pieces = []
    for name in names:
        state = optimizer.state.get(named[name])
        if not state or "step" not in state:
            return None  # before the first step there is no preconditioner yet
        pieces.append(root(state).detach().reshape(-1).double())
    return torch.cat(pieces)

"""What each finding means and what to do about it.

Kept apart from the rules: the rules decide *whether* a finding holds, from numbers in the record;
this module says *why it matters* in the landscape picture (the second-order Taylor model
L(θ+δ) ≈ L(θ) + gᵀδ + ½δᵀHδ) and lists remedies, most effective first. A remedy may name what
makes it moot (``Remedy.moot_if``, a key of ``IN_USE``): "Adam" to a run trained with AdamW,
"batch normalisation" to a network with LayerNorm. ``in_use`` reads the run's make-up in the
record's header (:mod:`landscope.monitor.makeup`); a record without one keeps every remedy.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

ADAPTIVE = ("Adam", "AdamW", "NAdam", "RAdam", "Adamax", "SparseAdam", "RMSprop", "Adagrad",
            "Adadelta", "Adafactor")
"""Optimisers with per-parameter step sizes (the Adam family and its relatives)."""
SATURATING = ("sigmoid", "tanh", "softsign")


@dataclass(frozen=True)
class Remedy:
    """One remedy: ``key``, a stable name of the change it makes (the same change under
    several findings has the same key; remedy trials and the fault suite's repairs map keys, not
    wording), its text, and the ``IN_USE`` key of what makes it moot (None: never moot)."""

    key: str
    text: str
    moot_if: str | None = None


def _adaptive(meta: dict) -> str | None:
    name = (meta.get("optimizer") or {}).get("name")
    return name if name in ADAPTIVE else None


def _momentum(meta: dict) -> str | None:
    optimizer = meta.get("optimizer") or {}
    if (optimizer.get("momentum") or 0) > 0:
        return f"{optimizer.get('name')} momentum {optimizer['momentum']:g}"
    betas = optimizer.get("betas")
    if betas and betas[0] > 0:
        return f"{optimizer.get('name')} (β₁ {betas[0]:g})"
    return None


def _normalisation(meta: dict) -> str | None:
    return ", ".join(meta["make_up"].get("normalisations", [])) or None


def _non_saturating(meta: dict) -> str | None:
    """The activations, when most activation modules are not sigmoid-like (None otherwise)."""
    counts = meta["make_up"].get("activations") or {}
    saturating = sum(n for name, n in counts.items()
                     if any(word in name.lower() for word in SATURATING))
    if not counts or 2 * saturating >= sum(counts.values()):
        return None
    return ", ".join(f"{name} ×{n}" if n > 1 else name for name, n in counts.items())


def _residual(meta: dict) -> str | None:
    return "residual connections" if meta["make_up"].get("residual") else None


def _scheduler(meta: dict) -> str | None:
    return "a learning-rate schedule" if meta["make_up"].get("scheduler") else None


def _weight_decay(meta: dict) -> str | None:
    optimizer = meta.get("optimizer") or {}
    decay = optimizer.get("weight_decay") or 0
    return f"{optimizer.get('name')} weight_decay {decay:g}" if decay > 0 else None


IN_USE: dict[str, Callable[[dict], str | None]] = {
    "adaptive": _adaptive, "momentum": _momentum, "normalisation": _normalisation,
    "non_saturating": _non_saturating, "residual": _residual, "scheduler": _scheduler,
    "weight_decay": _weight_decay,
}
"""key → what the run already uses that makes a remedy moot (None: not in use), from a record's
header (its ``optimizer`` and ``make_up``)."""


def in_use(name: str, meta: dict) -> dict[str, str]:
    """{remedy text: what is already in use} for the moot remedies of finding ``name``.

    Examples
    --------
    >>> meta = {"optimizer": {"name": "AdamW", "betas": [0.9, 0.999], "weight_decay": 0.01},
    ...         "make_up": {"activations": {"GELU": 2}, "normalisations": ["LayerNorm"]}}
    >>> sorted(in_use("vanishing_gradients", meta).values())
    ['AdamW', 'GELU ×2', 'LayerNorm']
    >>> in_use("vanishing_gradients", {"optimizer": {"name": "AdamW"}})  # an older record
    {}
    """
    if "make_up" not in meta:
        return {}
    found = {r.text: IN_USE[r.moot_if](meta) for r in TEXT[name]["remedies"] if r.moot_if}
    return {text: what for text, what in found.items() if what}


def remedy(finding: str, text: str) -> Remedy | None:
    """The remedy of ``finding`` whose text is ``text`` (None if it has none)."""
    return next((r for r in TEXT.get(finding, {}).get("remedies", ()) if r.text == text), None)


TEXT: dict[str, dict] = {
    "narrow_valley": {
        "title": "Stalled in a narrow valley (ill-conditioning)",
        "explanation": (
            "The loss has stopped falling, or crawls, but the gradient has not vanished, so this "
            "is not a "
            "critical point. Successive gradients point in nearly opposite directions: each step "
            "jumps across a narrow valley and back. Across the valley the curvature λ_max is far "
            "larger than along it (a high condition number), and a learning rate small enough to "
            "keep the steep direction stable (ηλ_max < 2) makes almost no progress along the flat "
            "floor of the valley, where the loss would still fall."),
        "remedies": [
            Remedy("standardise",
                   "Standardise the inputs or add batch normalisation: this lowers the condition "
                   "number itself."),
            Remedy("adaptive",
                   "Adam or RMSProp: per-parameter step sizes rescale badly scaled directions.",
                   "adaptive"),
            Remedy("momentum",
                   "Momentum (SGD momentum=0.9) or Nesterov: the alternating components cancel and"
                   " speed builds up along the valley floor (a rate already near its stability "
                   "limit must come down with it: heavy ball multiplies the step by 1/(1−μ)).",
                   "momentum"),
            Remedy("lower_lr_schedule",
                   "A smaller learning rate stops the bouncing (slower along the valley); combine "
                   "it with a schedule such as cosine annealing."),
            Remedy("second_order",
                   "On small problems, a quasi-Newton or second-order method (L-BFGS, K-FAC)."),
        ],
    },
    "saddle": {
        "title": "Stopped at a saddle point",
        "explanation": (
            "The gradient is nearly zero (a safe gradient step would gain a negligible share of "
            "the loss), yet the Hessian has a clearly negative eigenvalue λ_min. Along its "
            "eigenvector v the loss falls, L(θ + εv) ≈ L(θ) + ½ε²λ_min < L(θ): this is a saddle, "
            "not a minimum, and there is a way down. In high dimension most critical points are "
            "saddles; plain gradient descent leaves one only as fast as its tiny gradient allows."),
        "remedies": [
            Remedy("vmin_step",
                   "Take a negative-curvature step along the eigenvector of λ_min, θ ← θ − "
                   "η·sign(vᵀg)·v (landscope.spectrum(obj, k=1, which='smallest') gives v)."),
            Remedy("perturb",
                   "Perturbed gradient descent: add small random noise to the weights when the "
                   "gradient is small."),
            Remedy("momentum_or_adam",
                   "Momentum or Adam carry speed through the flat region around the saddle.",
                   "momentum"),
            Remedy("noise_or_cyclic",
                   "Smaller mini-batches (more gradient noise), or a cyclic learning rate."),
            Remedy("reinit",
                   "When the run started next to the origin (the evidence's start_gain), a random "
                   "initialisation at the proper scale (He, Xavier): the origin is a saddle of "
                   "every layered network, and no step leaves it quickly."),
        ],
    },
    "poor_minimum": {
        "title": "Stuck in a flat region or a poor minimum",
        "explanation": (
            "The gradient is nearly zero and no direction of clearly negative curvature was found, "
            "yet the loss is still high compared with where training began. Either the region is "
            "flat (steps of this size change nothing) or the run sits in a poor local minimum, a "
            "puddle while deeper valleys exist elsewhere."),
        "remedies": [
            Remedy("reinit",
                   "Restart from other initialisations (multi-start) and keep the best run."),
            Remedy("raise_lr_or_restarts",
                   "A larger learning rate, or warm restarts (SGDR, cosine annealing with "
                   "restarts), to jump out of the basin."),
            Remedy("gradient_noise",
                   "More gradient noise: smaller mini-batches."),
            Remedy("momentum_or_adam",
                   "Momentum or Adam.", "momentum"),
            Remedy("check_capacity",
                   "Check the model's capacity and the data."),
        ],
    },
    "vanishing_gradients": {
        "title": "Vanishing gradients",
        "explanation": (
            "Backpropagation multiplies the gradient by every layer's Jacobian. With sigmoid "
            "(derivative at most 0.25) or small weights the product shrinks geometrically with "
            "depth, so the first layers receive almost no gradient and barely move: in their "
            "directions the landscape is extremely flat, and the network sits on a plateau as if "
            "it were much shallower."),
        "remedies": [
            Remedy("he_relu",
                   "He (Kaiming) initialisation with ReLU activations instead of sigmoid.",
                   "non_saturating"),
            Remedy("normalisation",
                   "Batch normalisation between the layers.", "normalisation"),
            Remedy("residual",
                   "Residual connections: y = f(x) + x passes the gradient through unchanged.",
                   "residual"),
            Remedy("adam",
                   "Adam: per-parameter step sizes compensate the scale of small gradients.",
                   "adaptive"),
            Remedy("fewer_layers",
                   "Fewer layers."),
        ],
    },
    "exploding_gradients": {
        "title": "Exploding gradients or non-finite values",
        "explanation": (
            "Gradients grow geometrically through the layers (weight matrices with gain above 1) "
            "or over training until they overflow; one step then throws the weights far away, and "
            "the loss becomes infinite or NaN. Past that point nothing the run records means "
            "anything."),
        "remedies": [
            Remedy("clip",
                   "Clip the gradient norm (torch.nn.utils.clip_grad_norm_)."),
            Remedy("lower_lr_warmup",
                   "A smaller learning rate, with a warm-up."),
            Remedy("reinit",
                   "He or Xavier initialisation at the proper scale; batch normalisation."),
            Remedy("check_data",
                   "Check the data for NaN or inf and use numerically stable losses (cross-entropy"
                   " on logits, not log of softmax)."),
        ],
    },
    "lr_too_large": {
        "title": "Learning rate too large",
        "explanation": (
            "A step along a direction of curvature λ shrinks the error only if the step is short "
            "enough: for gradient descent ηλ < 2, for this optimiser the stability limit on its "
            "sharpness shown in the evidence. Beyond it the iterate overshoots the bottom of the "
            "valley by more than it started from, so the loss oscillates and grows instead of "
            "falling, and can diverge."),
        "remedies": [
            Remedy("lower_lr",
                   "Lower the learning rate, at least by the factor sharpness / limit (10× is a "
                   "safe first try)."),
            Remedy("warmup",
                   "A learning-rate warm-up at the start."),
            Remedy("clip",
                   "Gradient clipping."),
            Remedy("normalisation",
                   "Normalisation layers (BatchNorm, LayerNorm).", "normalisation"),
            Remedy("cosine",
                   "A decaying schedule (cosine annealing).", "scheduler"),
        ],
    },
    "lr_too_small": {
        "title": "Learning rate too small",
        "explanation": (
            "The loss is still falling, in a steady direction, but slowly: along a direction of "
            "curvature λ a step of (effective) rate η removes the share ηλ of the error, and here "
            "even along the sharpest direction that share is tiny (or, with no curvature measured, "
            "every layer's weights change by a tiny fraction of their size per step). The steps "
            "are far shorter than the landscape allows, so training creeps and may stall in flat "
            "regions."),
        "remedies": [
            Remedy("raise_lr",
                   "Raise the learning rate: by the evidence's raise_factor where curvature was "
                   "measured (to a twentieth of the stability limit 2/λ_max, room for the "
                   "sharpness to grow as the run learns), else 10× and retry."),
            Remedy("range_test",
                   "A learning-rate range test: increase the rate over a short run and pick the "
                   "largest at which the loss still falls."),
            Remedy("adam",
                   "Adam, whose steps do not scale with the gradient.", "adaptive"),
            Remedy("warmup_cosine",
                   "Warm-up followed by cosine annealing.", "scheduler"),
        ],
    },
    "symmetric_init": {
        "title": "Symmetric initialisation",
        "explanation": (
            "All units of a layer have the same incoming weights. Units that start identical "
            "receive identical gradients and stay identical forever: the layer acts as a single "
            "unit, and training is confined to a small symmetric subspace of the landscape (often "
            "a saddle that gradient noise cannot break). All-zero initialisation is the extreme "
            "case."),
        "remedies": [
            Remedy("reinit",
                   "Random initialisation: He (kaiming_normal_) for ReLU, Xavier (xavier_uniform_)"
                   " for tanh and sigmoid; biases may stay zero."),
            Remedy("perturb",
                   "A small random perturbation of the weights breaks the symmetry."),
        ],
    },
    "saturation": {
        "title": "Saturated activations",
        "explanation": (
            "Most outputs of a sigmoid or tanh sit in its flat tails, where the derivative is "
            "below 1% of its maximum, so gradients through those units nearly vanish."),
        "remedies": [
            Remedy("reinit",
                   "Xavier initialisation, or a smaller weight scale."),
            Remedy("normalisation",
                   "Standardise the inputs; batch normalisation before the activation."),
            Remedy("relu",
                   "ReLU-family activations.", "non_saturating"),
            Remedy("lower_lr",
                   "A smaller learning rate (large steps push pre-activations into the tails)."),
        ],
    },
    "dead_relus": {
        "title": "Dead ReLUs",
        "explanation": (
            "Many ReLU units output zero on every sample: they receive no gradient and cannot "
            "recover, because the landscape is exactly flat in their incoming weights."),
        "remedies": [
            Remedy("reinit",
                   "He initialisation; batch normalisation."),
            Remedy("leaky_relu",
                   "LeakyReLU, ELU or GELU, which keep a gradient for negative inputs."),
            Remedy("lower_lr",
                   "A smaller learning rate (large steps push biases negative): it keeps more "
                   "units from dying, but revives none."),
        ],
    },
    "overfitting": {
        "title": "Overfitting",
        "explanation": (
            "The validation loss reached its minimum and has risen since, while the training loss "
            "kept falling: the optimiser now fits the noise of the training set. The minimum it "
            "approaches is one of the training loss, not of the loss on new data."),
        "remedies": [
            Remedy("early_stopping",
                   "Early stopping: keep the weights from the step with the lowest validation "
                   "loss."),
            Remedy("weight_decay",
                   "Weight decay (L2 regularisation; AdamW's weight_decay).", "weight_decay"),
            Remedy("more_data",
                   "More data or data augmentation."),
            Remedy("dropout_or_smaller",
                   "Dropout, or a smaller model."),
        ],
    },
}

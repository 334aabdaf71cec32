"""What each finding means and what to do about it, from the seed notes (001, 002, 003).

Kept apart from the rules: the rules decide *whether* a finding holds, from numbers in the record;
this module says *why it matters* in the landscape picture (the second-order Taylor model
L(θ+δ) ≈ L(θ) + gᵀδ + ½δᵀHδ) and lists remedies, most effective first.
"""

from __future__ import annotations

TEXT: dict[str, dict] = {
    "narrow_valley": {
        "title": "Stalled in a narrow valley (ill-conditioning)",
        "explanation": (
            "The loss has stopped falling but the gradient has not vanished, so this is not a "
            "critical point. Successive gradients point in nearly opposite directions: each step "
            "jumps across a narrow valley and back. Across the valley the curvature λ_max is far "
            "larger than along it (a high condition number), and a learning rate small enough to "
            "keep the steep direction stable (ηλ_max < 2) makes almost no progress along the flat "
            "floor of the valley, where the loss would still fall."),
        "remedies": [
            "Momentum (SGD momentum=0.9) or Nesterov: the alternating components cancel and speed "
            "builds up along the valley floor.",
            "Adam or RMSProp: per-parameter step sizes rescale badly scaled directions.",
            "Standardise the inputs or add batch normalisation: this lowers the condition number "
            "itself.",
            "A smaller learning rate stops the bouncing (slower along the valley); combine it with "
            "a schedule such as cosine annealing.",
            "On small problems, a quasi-Newton or second-order method (L-BFGS, K-FAC).",
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
            "Take a negative-curvature step along the eigenvector of λ_min, "
            "θ ← θ − η·sign(vᵀg)·v (landscope.spectrum(obj, k=1, which='smallest') gives v).",
            "Perturbed gradient descent: add small random noise to the weights when the gradient "
            "is small.",
            "Momentum or Adam carry speed through the flat region around the saddle.",
            "Smaller mini-batches (more gradient noise), or a cyclic learning rate.",
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
            "Restart from other initialisations (multi-start) and keep the best run.",
            "A larger learning rate, or warm restarts (SGDR, cosine annealing with restarts), to "
            "jump out of the basin.",
            "More gradient noise: smaller mini-batches.",
            "Momentum or Adam; check the model's capacity and the data.",
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
            "He (Kaiming) initialisation with ReLU activations instead of sigmoid.",
            "Batch normalisation between the layers.",
            "Residual connections: y = f(x) + x passes the gradient through unchanged.",
            "Adam: per-parameter step sizes compensate the scale of small gradients.",
            "Fewer layers.",
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
            "Clip the gradient norm (torch.nn.utils.clip_grad_norm_).",
            "A smaller learning rate, with a warm-up.",
            "He or Xavier initialisation at the proper scale; batch normalisation.",
            "Check the data for NaN or inf and use numerically stable losses "
            "(cross-entropy on logits, not log of softmax).",
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
            "Lower the learning rate, at least by the factor sharpness / limit (10× is a safe "
            "first try).",
            "A learning-rate warm-up at the start.",
            "Gradient clipping.",
            "Adam or normalisation layers, then a decaying schedule (cosine annealing).",
        ],
    },
    "lr_too_small": {
        "title": "Learning rate too small",
        "explanation": (
            "The loss is still falling, in a steady direction, but every layer's weights change by "
            "a tiny fraction of their size per step: the steps are far shorter than the landscape "
            "allows, so training creeps and may stall in flat regions."),
        "remedies": [
            "Raise the learning rate (10× and retry; stay below the stability limit 2/λ_max).",
            "A learning-rate range test: increase the rate over a short run and pick the largest "
            "at which the loss still falls.",
            "Adam, whose steps do not scale with the gradient.",
            "Warm-up followed by cosine annealing.",
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
            "Random initialisation: He (kaiming_normal_) for ReLU, Xavier (xavier_uniform_) for "
            "tanh and sigmoid; biases may stay zero.",
            "A small random perturbation of the weights breaks the symmetry.",
        ],
    },
    "saturation": {
        "title": "Saturated activations",
        "explanation": (
            "Most outputs of a sigmoid or tanh sit in its flat tails, where the derivative is "
            "below 1% of its maximum, so gradients through those units nearly vanish."),
        "remedies": [
            "Xavier initialisation, or a smaller weight scale.",
            "Standardise the inputs; batch normalisation before the activation.",
            "ReLU-family activations.",
            "A smaller learning rate (large steps push pre-activations into the tails).",
        ],
    },
    "dead_relus": {
        "title": "Dead ReLUs",
        "explanation": (
            "Many ReLU units output zero on every sample: they receive no gradient and cannot "
            "recover, because the landscape is exactly flat in their incoming weights."),
        "remedies": [
            "A smaller learning rate (large steps push biases negative).",
            "He initialisation; batch normalisation.",
            "LeakyReLU, ELU or GELU, which keep a gradient for negative inputs.",
        ],
    },
    "overfitting": {
        "title": "Overfitting",
        "explanation": (
            "The validation loss reached its minimum and has risen since, while the training loss "
            "kept falling: the optimiser now fits the noise of the training set. The minimum it "
            "approaches is one of the training loss, not of the loss on new data."),
        "remedies": [
            "Early stopping: keep the weights from the step with the lowest validation loss.",
            "Weight decay (L2 regularisation; AdamW's weight_decay).",
            "More data or data augmentation.",
            "Dropout, or a smaller model.",
        ],
    },
}

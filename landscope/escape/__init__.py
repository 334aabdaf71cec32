"""Remedy trials on the user's own network: which change of training gets it lower, measured.

Every candidate (another optimiser, a learning-rate change or schedule, a saddle escaper, one step
along the most negative curvature) trains a private copy of the model from the same point θ₀ with
a fresh optimiser, on the same mini-batches in the same seeded order, for the same budget of
gradient evaluations, once per seed. Fairness is by construction, not by care.

The unit of the budget is one **evaluation**: one forward and backward pass on one training
mini-batch. A Hessian-vector product on a mini-batch counts one as well (it costs 1–2 gradients;
counting one favours second-order methods a little), and so does a loss value at a line-search
trial point. A run takes its next step while what it has spent plus the cost of its last step
stays within the budget (the first step is always taken), so a first-order run spends exactly
the budget, and a run whose steps cost several evaluations stops when another such step would not
fit (a first step may alone exceed a small budget: saddle-free Newton's costs 1 + 20). The
curvature at θ₀ (λ_min, v_min, λ_max on all the training data) is one shared diagnosis, charged
to no candidate.

Step t of every run of seed s reads mini-batch t of seed s's order: for ``(X, y)`` tensors with a
``batch_size``, each epoch a seeded permutation of the samples cut into batches of that size; for
any other data (a DataLoader with ``shuffle=False``, a list of batches), its own batches, each
epoch in a seeded order. A run whose candidate takes several evaluations per step (L-BFGS's line
search, saddle-free Newton's Lanczos) reads fewer batches of the same order.

The v_min candidate: with λ_min < −τ at θ₀ (τ = ``zero_rtol``·ρ, the probe's default, ρ =
max|λ|), φ(α) = L(θ₀ + α s v) with s = −sign(gᵀv) falls at first (φ ≈ L − α|gᵀv| − ½|λ_min|α², a
model unbounded below that cannot say where φ turns up again), so α comes from a line search on
the full training loss: the doubling grid α₀·2ʲ, α₀ = 10⁻³·max(1, ‖θ₀‖), until φ rises; the best
α is kept. Then the baseline optimiser continues from there with what is left of the budget.

At the end of each run: the training loss on all the data in eval mode (and the held-out loss),
and λ_min there (Lanczos with a loose tolerance and a product cap: its Ritz value is a Rayleigh
quotient, an upper bound on λ_min, so a value below −τ proves negative curvature is still there).
Runs are written one file each into ``out``; a rerun with the same settings reads them back
instead of running them again, and refuses a directory holding runs of other settings.

The doctor's remedies become a trial through :data:`REMEDY_CANDIDATES` (:func:`remedy_plan`): a
remedy that changes the training maps to the candidates that try it; one that changes the
architecture, the initialisation or the data is listed with why it is not tried. The baseline is
then the run's own optimiser as its Monitor recorded it (:func:`recorded_baseline`).

The parts: ``candidates`` (what can be tried, the remedies' map, the schedules), ``runs`` (one
run and the curvature at θ₀), ``trial`` (every candidate × seed, resume, the ranked summary).
"""

from landscope.escape.candidates import (
    ARCHITECTURE,
    CHANGES,
    DATA,
    DEFAULT_CANDIDATES,
    INITIALISATION,
    LEFT_OUT,
    REMEDY_CANDIDATES,
    SCHEDULES,
    UNMAPPED,
    Candidate,
    RemedyPlan,
    available,
    candidate,
    recorded_baseline,
    remedy_candidates,
    remedy_plan,
    scheduler,
)
from landscope.escape.trial import RUN_FIELDS, SUMMARY_FIELDS, Trial, escape

__all__ = ["ARCHITECTURE", "CHANGES", "DATA", "DEFAULT_CANDIDATES", "INITIALISATION", "LEFT_OUT",
           "REMEDY_CANDIDATES", "RUN_FIELDS", "SCHEDULES", "SUMMARY_FIELDS", "UNMAPPED",
           "Candidate", "RemedyPlan", "Trial", "available", "candidate", "escape",
           "recorded_baseline", "remedy_candidates", "remedy_plan", "scheduler"]

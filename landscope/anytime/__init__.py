"""The anytime probe: a verdict in seconds that sharpens, on the data sizes users have.

A full probe spends hundreds of Hessian-vector products, each over all the data (a ResNet-20
over 2,000 images: about 30 s a product on two cores). The anytime probe answers in stages,
each a complete, honest answer on what it has read:

1. ``subsample``: K disjoint subsets of m samples. Loss, ‖∇L‖, λ_max and λ_min with 95 %
   intervals for their full-data values (:mod:`landscope.sampling`); a verdict only where the
   intervals settle it, otherwise "undecided at this sample size" with the samples that would.
2. ``extremes``: the k extreme eigenpairs on all the data, warm-started from stage 1's vectors;
   intervals are now the solver's residual bounds.
3. ``density``: today's :func:`landscope.probe` on all the data, reusing stage 2's eigenpairs:
   the sign fractions, the trace, the higher-order test. Its answer is the exact answer.

A time budget is kept by planning each stage from the measured time of a product (a stage that
cannot finish is capped or skipped, and the result says what stayed uncertain); Ctrl-C ends the
current stage and returns the best answer so far, marked partial.

The parts: ``budget`` (the cost plan, the stages scheduled from it, the clock that keeps the time
budget), ``stages`` (each stage and the decision its intervals allow), ``probe`` (the stages run
in order, and the best verdict).
"""

from landscope._deprecated import old_names
from landscope.anytime.budget import (
    CALIBRATION_SAMPLES,
    FIRST_STAGE_SHARE,
    MAX_SAMPLES,
    MIN_SAMPLES,
    STAGES,
    SUBSETS,
    StagePlan,
    cost_plan,
    sample_count,
    schedule,
)
from landscope.anytime.probe import AnytimeProbe, anytime_probe
from landscope.anytime.stages import (
    SUBSET_EIG_RTOL,
    SUBSET_PRODUCTS,
    UNDECIDED,
    Stage,
    subset_objectives,
)

__all__ = ["CALIBRATION_SAMPLES", "FIRST_STAGE_SHARE", "MAX_SAMPLES", "MIN_SAMPLES", "STAGES",
           "SUBSETS", "SUBSET_EIG_RTOL", "SUBSET_PRODUCTS", "UNDECIDED", "AnytimeProbe", "Stage",
           "StagePlan", "anytime_probe", "cost_plan", "sample_count", "schedule",
           "subset_objectives"]

__getattr__ = old_names(__name__, {"SUBSET_TOL": "SUBSET_EIG_RTOL"})

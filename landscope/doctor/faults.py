"""The fault suite: the doctor measured like a debugger, on runs whose fault is known.

Each case trains a small network for a few hundred steps under a Monitor (the same loop as the
scenarios: mini-batches, a held batch of 256 training samples for curvature) with one fault
injected, and names the finding the doctor should put first. Faults × architectures × seeds, plus
healthy runs of each architecture (expected: no finding at all). Nothing is downloaded: the MLP
and the CNN learn scikit-learn's bundled digits, the transformer a generated token task. A
fault is a :class:`~landscope.doctor.recipes.Recipe`, built on each architecture by
:mod:`landscope.doctor.recipes`.

``score`` reads the results as a classifier's: the confusion matrix (expected → primary finding),
the detection rate (faulty runs whose primary finding is the expected one) and the false-alarm
rate (healthy runs with any finding; every finding is a warning or critical). Whether the doctor's
remedy then beats a random one is :mod:`landscope.doctor.repairs`'s question.

Faults (how they are injected → the expected primary finding):

- vanishing: ten sigmoid layers → ``vanishing_gradients``;
- exploding: six ReLU layers, every weight ×8 → ``exploding_gradients``;
- dead_relus: every bias feeding a ReLU set to −10 → ``dead_relus``;
- saturation: tanh layers with their weights ×30 → ``saturation``;
- lr_too_large / lr_too_small: the healthy rate ×100 / ÷1000 → ``lr_too_large`` / ``lr_too_small``;
- saddle: every parameter ×1e-6, next to the origin (a saddle of the network) → ``saddle``;
- symmetric: every parameter zero → ``symmetric_init``;
- ill_conditioning: inputs off-centre (every standardised pixel + 5 for the MLP, + 10 for the
  CNN: raw, un-centred pixels; the transformer: a frozen, pretrained-like embedding whose
  coordinates are scaled by 10^u, u evenly from −3 to 0, which it cannot learn away), tanh layers,
  SGD at c/λ_max of the initial held-batch Hessian (c = 1, 0.5, 0.7: stable all along, since a
  network's sharpness grows as it trains) → ``narrow_valley``. Each architecture needs its own
  offset and c (``Architecture.condition``, ``valley_rate``): no one setting crawls on all three;
- edge_of_stability: full-batch gradient descent on the squared error to one-hot targets (the
  transformer: token parity, a label it cannot fit at once, so its sharpness keeps rising), tanh
  layers, first 100 steps at 1/λ_max, then at 2.1/λ_max of the Hessian reached there, past the 2/λ
  limit: consecutive gradients point in opposite directions → ``lr_too_large`` (the doctor's
  finding for sharpness past the limit). A rate set from the initial Hessian let two of nine runs
  settle below the limit (their sharpness fell) and never oscillate.

No cell is left out: the transformer's activation faults act on its head of Linear + activation
blocks (its encoder layer's own ReLU is a function call, which the Monitor cannot see).
"""

from __future__ import annotations

import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from landscope._deprecated import old_names
from landscope.doctor import knowledge
from landscope.doctor.doctor import diagnose
from landscope.doctor.recipes import ARCHITECTURES, Recipe
from landscope.doctor.scenarios import Setup, evaluate, quiet_machine, train
from landscope.errors import BadInputError
from landscope.progress import Progress

HEALTHY = "healthy"
"""The expected label of a run without a fault, and the primary label of a run without findings."""


# ---------------------------------------------------------------------- faults
@dataclass(frozen=True)
class Fault:
    """A fault class: its recipe and the finding the doctor should rank first (``HEALTHY``:
    none)."""

    name: str
    expect: str
    recipe: Recipe


FAULTS: dict[str, Fault] = {f.name: f for f in (
    Fault("vanishing", "vanishing_gradients", Recipe(nn.Sigmoid, depth=10)),
    Fault("exploding", "exploding_gradients", Recipe(depth=6, weight_gain=8.0)),
    Fault("dead_relus", "dead_relus", Recipe(feeding_bias=-10.0)),
    Fault("saturation", "saturation", Recipe(nn.Tanh, feeding_gain=30.0)),
    Fault("lr_too_large", "lr_too_large", Recipe(lr_factor=100.0)),
    Fault("lr_too_small", "lr_too_small", Recipe(lr_factor=1e-3)),
    Fault("saddle", "saddle", Recipe(nn.Tanh, scale=1e-6)),
    Fault("symmetric", "symmetric_init", Recipe(nn.Tanh, scale=0.0)),
    Fault("ill_conditioning", "narrow_valley", Recipe(nn.Tanh, conditioning=True)),
    Fault("edge_of_stability", "lr_too_large",
          Recipe(nn.Tanh, squared_error=True, batch=None, lr_sharpness=2.1, settle=100)),
    Fault(HEALTHY, HEALTHY, Recipe()),
)}


# ---------------------------------------------------------------------- running
@dataclass(frozen=True)
class Case:
    """One cell of the suite: a fault on an architecture, from a seed (initialisation, order)."""

    fault: str
    architecture: str
    seed: int = 0

    @property
    def expect(self) -> str:
        return FAULTS[self.fault].expect

    @property
    def name(self) -> str:
        return f"{self.fault}-{self.architecture}-{self.seed}"


@dataclass(frozen=True)
class FaultRun:
    """One case of the suite, run and diagnosed: the doctor's findings, in rank order, and the
    primary one (``HEALTHY`` when there is none); the keys of the primary finding's remedies,
    most effective first, less those the run already uses, and its evidence; the final training
    loss of the run and the seconds it took, diagnosis included."""

    case: Case
    findings: tuple[str, ...]
    seconds: float = 0.0
    remedies: tuple[str, ...] = ()
    final_loss: float = math.nan
    evidence: dict = field(default_factory=dict)

    @property
    def primary(self) -> str:
        return self.findings[0] if self.findings else HEALTHY

    @property
    def expect(self) -> str:
        return self.case.expect


def cases(faults: Iterable[str] | None = None, architectures: Iterable[str] | None = None,
          seeds: Iterable[int] = (0, 1)) -> list[Case]:
    """Every fault (``HEALTHY`` included) × architecture × seed."""
    faults = list(FAULTS if faults is None else faults)
    architectures = list(ARCHITECTURES if architectures is None else architectures)
    for name, known in (*((f, FAULTS) for f in faults), *((a, ARCHITECTURES)
                                                            for a in architectures)):
        if name not in known:
            raise BadInputError(f"no fault or architecture {name!r}; choose from "
                                f"{', '.join(known)}")
    return [Case(f, a, s) for f in faults for a in architectures for s in seeds]


def run_case(case: Case, run_dir: str | Path) -> float:
    """Train ``case`` under a Monitor into ``run_dir`` (single-threaded, the caller's RNG and
    thread count restored) and return its final training loss (:func:`final_loss`)."""
    with quiet_machine(case.seed):
        setup = FAULTS[case.fault].recipe.setup(ARCHITECTURES[case.architecture])
        train(setup, Path(run_dir), case.seed)
        return final_loss(setup)


def final_loss(setup: Setup) -> float:
    """The loss of the setup's model on all its training data, in eval mode (inf if not
    finite): what a remedy is judged by."""
    value = evaluate(setup.model, setup.loss_fn, setup.data)
    return value if math.isfinite(value) else math.inf


def run_suite(suite: Iterable[Case], root: str | Path | None = None,
              progress: Progress | None = None) -> list[FaultRun]:
    """Run and diagnose every case (run directories under ``root``, else a temporary one).

    ``progress(done, total, note)`` after each case: ``done`` runs finished of ``total``, the
    note the case's name."""
    suite, results = list(suite), []
    with tempfile.TemporaryDirectory() as scratch:
        base = Path(scratch if root is None else root)
        for case in suite:
            start = time.perf_counter()
            loss = run_case(case, base / case.name)
            diagnosis = diagnose(base / case.name)
            primary = diagnosis.findings[:1]
            remedies = tuple(knowledge.remedy(f.name, text).key for f in primary
                             for text in f.remedies)
            results.append(FaultRun(case, tuple(diagnosis.names()), time.perf_counter() - start,
                                    remedies, loss, primary[0].evidence if primary else {}))
            if progress is not None:
                progress(len(results), len(suite), case.name)
    return results


# ---------------------------------------------------------------------- scoring
@dataclass(frozen=True)
class Score:
    """The suite as a classifier's test: ``confusion[(expected, primary)]`` counts;
    ``detected`` / ``faulty`` faulty runs with the expected primary finding; ``alarms`` /
    ``healthy`` healthy runs with any finding. A rate with nothing to count is NaN."""

    confusion: dict[tuple[str, str], int]
    faulty: int
    detected: int
    healthy: int
    alarms: int

    @property
    def detection_rate(self) -> float:
        return self.detected / self.faulty if self.faulty else math.nan

    @property
    def false_alarm_rate(self) -> float:
        return self.alarms / self.healthy if self.healthy else math.nan


def score(results: Iterable[FaultRun]) -> Score:
    """Confusion matrix, detection and false-alarm counts of ``results``."""
    results = list(results)
    faulty = [r for r in results if r.expect != HEALTHY]
    healthy = [r for r in results if r.expect == HEALTHY]
    return Score(dict(Counter((r.expect, r.primary) for r in results)), len(faulty),
                 sum(r.primary == r.expect for r in faulty), len(healthy),
                 sum(r.primary != HEALTHY for r in healthy))


__getattr__ = old_names(__name__, {"Result": "FaultRun"})

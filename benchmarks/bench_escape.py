"""Remedy trials on W2: the issue's target is 8 candidates x 3 seeds x 200 evaluations within 2
minutes on two cores. Prints the trial's time and the ranked candidates
(``landscope.escape.escape`` on the trained W2 MLP, the default candidates, mini-batches of 64)::

    python benchmarks/bench_escape.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from workloads import build_workload  # noqa: E402

import landscope as ls  # noqa: E402


def main() -> int:
    model, X, y, criterion = build_workload("W2")
    start = time.perf_counter()
    trial = ls.escape.escape(model, criterion, (X, y), evaluations=200, seeds=3, batch_size=64,
                             seed=0)
    seconds = time.perf_counter() - start
    print(f"W2: {len(trial.summary)} candidates x 3 seeds x 200 evaluations: {seconds:.1f} s "
          "(target: 120 s)")
    print("| rank | candidate | train loss (mean of 3 seeds) | λ_min < 0 left | s per run |")
    print("|---|---|---|---|---|")
    for row in trial.summary:
        print(f"| {row['rank']} | {row['candidate']} | {row['train_loss_mean']:.4g} | "
              f"{row['negative_curvature_left']} | {row['seconds']:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Remedy trials on W2: the issue's target is 8 candidates x 3 seeds x 200 steps within 2 minutes
on two cores. Prints the time and the ranked candidates (``landscope.escape.escape`` on the trained
W2 MLP, mini-batches of 64)::

    python benchmarks/bench_escape.py
"""

import sys
import time

sys.path.insert(0, "benchmarks")
sys.path.insert(0, ".")
from workloads import build_workload

import landscope as ls

model, X, y, criterion = build_workload("W2")
start = time.perf_counter()
trial = ls.escape.escape(model, criterion, (X, y), steps=200, seeds=3, batch_size=64, seed=0)
seconds = time.perf_counter() - start
print(f"W2: {len(trial.summary)} candidates x 3 seeds x 200 steps: {seconds:.1f} s")
for row in trial.summary:
    print(row["rank"], row["candidate"], f"{row['train_loss_mean']:.4g}", row["negative_curvature_left"], f"{row['seconds']:.2f}")

"""Benchmark: λ_max along a training run, cold Lanczos against a warm start from the last point.

Workload: W2 (``benchmarks/workloads.py``: MLP 64-128-128-10 ReLU, float32, the digits) trained
from its seed-0 initialisation with Adam (lr 1e-3, batch 64, shuffled with a seeded generator).
After ``--skip`` steps a checkpoint θ_i is kept every ``--every`` steps. At each checkpoint the
top Hessian eigenpair of the loss on a fixed held batch (the first ``--held`` samples) is computed
twice with ``landscope.spectrum(obj, k=1, which="largest", eig_rtol=--eig-rtol)`` (relative
residual ‖Hv − λv‖ ≤ eig_rtol·|λ|, explicit): cold, from the default random start, and warm,
started from the previous checkpoint's warm result (``warm=previous``), as a tracker would. The
first checkpoint only starts the chain. Products are Hessian-vector products, the explicit
residual check included. The table gives both values, both costs and warm/cold; the target is a
median ratio of at most 1/3. ``--which both`` computes λ_min in the same runs (the Monitor's
measurement when the loss stalls) and adds its columns.

    python benchmarks/bench_warm.py            # about 1 minute on a 2-core machine
    python benchmarks/bench_warm.py --which both

The process re-executes itself with the timing-hygiene environment (benchmarks/README.md); one
torch thread (products are counted, not timed).
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from workloads import WORKLOADS, restart_with_hygiene, timing_hygiene  # noqa: E402

import landscope as ls  # noqa: E402


def checkpoints(count: int, every: int, skip: int, lr: float, seed: int = 0):
    """The model and ``count`` flat parameter vectors of its W2 training run, ``every`` steps
    apart after ``skip`` steps."""
    wl = WORKLOADS["W2"]
    X, y = wl.data()
    torch.manual_seed(seed)
    model = wl.make().to(wl.dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(seed + 1)
    kept, step = [], 0
    while len(kept) < count:
        for idx in torch.randperm(len(X), generator=shuffle).split(64):
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
            step += 1
            if step >= skip and (step - skip) % every == 0:
                kept.append((step, torch.cat([p.detach().reshape(-1) for p in
                                              model.parameters()]).clone()))
                if len(kept) == count:
                    break
    model.eval()
    return model, X, y, kept


def machine() -> str:
    """``<cores>-core <CPU model>`` from /proc/cpuinfo where there is one."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
        model = next(line.split(":", 1)[1].strip() for line in lines
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{os.cpu_count()}-core {model}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoints", type=int, default=16)
    parser.add_argument("--every", type=int, default=5, help="training steps between checkpoints")
    parser.add_argument("--skip", type=int, default=50, help="training steps before the first")
    parser.add_argument("--held", type=int, default=512, help="samples in the held batch")
    parser.add_argument("--eig-rtol", "--tol", type=float, default=1e-3,
                        help="spectrum(eig_rtol=) (--tol: its old name)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--which", choices=("largest", "both"), default="largest")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    restart_with_hygiene()
    timing_hygiene(threads=1, warn=False)

    model, X, y, kept = checkpoints(args.checkpoints, args.every, args.skip, args.lr)
    obj = ls.Objective.from_model(model, torch.nn.CrossEntropyLoss(),
                                  (X[:args.held], y[:args.held]))
    options = {"k": 1, "which": args.which, "eig_rtol": args.eig_rtol, "exact": False}
    both = args.which == "both"
    previous = ls.spectrum(obj, theta=kept[0][1], **options)
    rows = []
    for i, (step, theta) in enumerate(kept[1:], start=1):
        cold = ls.spectrum(obj, theta=theta, seed=i, **options)
        warm = ls.spectrum(obj, theta=theta, seed=i, warm=previous, **options)
        assert cold.evidence["converged"] and warm.evidence["converged"], (step, cold, warm)
        values = [s.largest.values[0].item() for s in (cold, warm)]
        if both:
            values += [s.smallest.values[0].item() for s in (cold, warm)]
        rows.append((step, values, cold.evidence["hvp_products"], warm.evidence["hvp_products"]))
        previous = warm

    quantity = "λ_max and λ_min" if both else "λ_max"
    names = ["λ_max cold", "λ_max warm"] + (["λ_min cold", "λ_min warm"] if both else [])
    header = ["checkpoint (step)", *names, "products cold", "products warm", "warm/cold"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step, values, pc, pw in rows:
        cells = [str(step), *(f"{v:.5g}" for v in values), str(pc), str(pw), f"{pw / pc:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    ratio = statistics.median(pw / pc for *_, pc, pw in rows)
    scale = max(abs(v) for _, values, *_ in rows for v in values[:2])
    agree = max(abs(values[j] - values[j + 1]) / scale
                for _, values, *_ in rows for j in range(0, len(values), 2))
    summary = (f"median warm/cold products: {ratio:.2f} (target ≤ 0.33); products in all: "
               f"cold {sum(r[2] for r in rows)}, warm {sum(r[3] for r in rows)}; largest "
               f"difference of cold and warm values relative to λ_max: {agree:.1e} "
               f"(eig_rtol {args.eig_rtol:g})")
    print("\n".join(lines))
    print(summary)
    if not args.no_results:
        command = "python benchmarks/bench_warm.py " + " ".join(argv or sys.argv[1:])
        stamp = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
        section = [
            "", f"## Warm-started {quantity} along a W2 training run, {stamp}", "",
            f"Machine: {machine()}, torch {torch.__version__}, 1 torch thread. Command: "
            f"`{command.strip()}`.", "",
            f"W2 trained with Adam lr {args.lr:g}, batch 64; checkpoints every {args.every} "
            f"steps from step {args.skip}; {quantity} of the loss on the first {args.held} "
            f"samples, relative residual eig_rtol {args.eig_rtol:g}; warm = started from the "
            "previous checkpoint's warm eigenvector (`spectrum(..., warm=previous)`).", "",
            *lines, "", summary, "",
        ]
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as out:
            out.write("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())

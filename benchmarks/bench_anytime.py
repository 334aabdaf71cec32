"""Benchmark: the anytime probe's first stage: do its 95 % intervals cover, how soon it answers.

Two parts (``landscope.anytime``; intervals from ``landscope.sampling``):

``--coverage``: over ``--seeds`` subsample seeds, does the first stage's 95 % interval for the
full-data loss, ‖∇L‖, λ_max and λ_min contain the full-data value? Each seed runs the first stage
exactly as ``anytime_probe`` does (``draw_subsets`` → ``read_subsets`` with
``eig_rtol=anytime.SUBSET_EIG_RTOL`` and ``max_products=anytime.SUBSET_PRODUCTS``, seeds
``seed + k``, ``intervals``), without the full-data stages. Truth: the full-data loss and
gradient, and ``spectrum(k=1, which="both")`` with ``eig_rtol`` ``--w2-truth-tol`` (1e-8) /
``--w5-truth-tol`` (1e-4), cached in the benchmark cache directory. W2: the digits MLP
(float32 weights) analysed in float64 on all 1,797 digits. W5: the workload's ResNet-20 weights
(trained on its own 64 images) in float32 on ``cifar_like(--w5-samples, seed=0)`` (same class
templates, fresh images). Target: coverage ≥ 90 % for every quantity.

``--timing``: W5's weights on ``cifar_like(--timing-samples, seed=0)`` (2,000 images):
(a) seconds to the first verdict with intervals: ``anytime_probe(obj, on_stage=...)`` with the
default samples per subset, stopped (KeyboardInterrupt from ``on_stage``) once stage 1 is done;
(b) today's full probe, extrapolated: one full-data Hessian-vector product (median of 3 after a
warm-up) × the products ``landscope.probe(obj)`` spends (``evidence['counts']['hvp']``) on
``--count-samples`` images (the count depends little on N). Target: first verdict ≤ 10 % of it.
(c) λ_max to rel. 1e-3 on ``--lmax-samples`` images: ``spectrum(k=1, which="largest",
eig_rtol=1e-3)`` against PyHessian's ``hessian(model, crit, dataloader=...).eigenvalues(top_n=1,
tol=1e-3)`` (products counted by wrapping its ``dataloader_hv_product``), both scored against our
own ``spectrum`` at eig_rtol 1e-6 on the model analysed in float64 (cached). ``--timing-parts``
selects (ab) and/or (c).

    benchmarks/.venv-peers/bin/python benchmarks/bench_anytime.py --coverage --timing
    benchmarks/.venv-peers/bin/python benchmarks/bench_anytime.py --coverage --quick

The process re-executes itself with the timing-hygiene environment (benchmarks/README.md) and uses
``--threads`` torch threads (2). ``--no-results`` skips the append to RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from workloads import (  # noqa: E402
    SPEC_VERSION,
    build_workload,
    cache_dir,
    cifar_like,
    restart_with_hygiene,
    timing_hygiene,
)

import landscope as ls  # noqa: E402
from landscope import anytime  # noqa: E402
from landscope.critical import used_coordinates  # noqa: E402
from landscope.sampling import intervals, read_subsets  # noqa: E402

QUANTITIES = ("loss", "grad_norm", "lambda_max", "lambda_min")
COVERAGE_TARGET = 0.90
FIRST_VERDICT_SHARE = 0.10
W5_BATCH = 250
"""Chunk (images) of every W5 pass, landscope's and PyHessian's alike: bounds the memory of a
double-backward graph over 2,000 images."""


def log(msg: str) -> None:
    print(msg, flush=True)


def load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


# ------------------------------------------------------------------------------------ workloads
def w2_objective() -> tuple[ls.Objective, str]:
    model, X, y, crit = build_workload("W2")
    obj = ls.Objective.from_model(model, crit, (X, y), dtype=torch.float64)
    return obj, "W2 (MLP 26,122 params, float32 weights analysed in float64), 1,797 digits"


def w5_data(samples: int):
    model, _, _, crit = build_workload("W5")
    X, y = cifar_like(samples, seed=0)
    return model, X, y, crit


def w5_objective(samples: int, dtype: torch.dtype | None = None) -> tuple[ls.Objective, str]:
    model, X, y, crit = w5_data(samples)
    obj = ls.Objective.from_model(model, crit, (X, y), batch_size=W5_BATCH, dtype=dtype)
    return obj, (f"W5 (ResNet-20, 269,722 params, float32, eval mode; workload weights), "
                 f"{samples:,} CIFAR-shaped images (cifar_like seed 0)")


def truth(obj: ls.Objective, key: str, eig_rtol: float, which: str = "both") -> dict:
    """Full-data loss, ‖∇L‖ and extreme eigenvalues at ``eig_rtol``, cached under ``key``."""
    path = cache_dir() / f"anytime-truth-v{SPEC_VERSION}-{key}-{which}-tol{eig_rtol:g}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    loss, grad = obj.value_and_grad(obj.point())
    spec = ls.spectrum(obj, 1, which, eig_rtol=eig_rtol, exact=False, max_products=600)
    out = {"loss": loss.item(), "grad_norm": grad.norm().item(),
           "products": spec.evidence["hvp_products"],
           "converged": bool(spec.evidence.get("converged", True)),
           "seconds": time.perf_counter() - start, "tol": eig_rtol}
    for name, pairs in (("lambda_max", spec.largest), ("lambda_min", spec.smallest)):
        if pairs is not None:
            out[name] = pairs.values[0].item()
            out[name + "_residual"] = pairs.residuals[0].item()
    path.write_text(json.dumps(out))
    return out


# ------------------------------------------------------------------------------------ coverage
def first_stage(obj: ls.Objective, samples: int, seed: int) -> tuple[dict, int, float]:
    """Stage 1 of ``anytime_probe`` with no time budget: intervals, products, seconds."""
    start = time.perf_counter()
    theta = obj.point()
    total = anytime.sample_count(obj)
    coords, _ = used_coordinates(obj)
    parts = anytime.subset_objectives(obj, theta, samples, anytime.SUBSETS, seed)
    readings = read_subsets(parts, theta, total=total, eig_rtol=anytime.SUBSET_EIG_RTOL,
                            max_products=anytime.SUBSET_PRODUCTS, seed=seed, coords=coords)
    return intervals(readings), readings.products, time.perf_counter() - start


def coverage(name: str, obj: ls.Objective, desc: str, samples: int, seeds: int,
             truth_tol: float) -> tuple[list[str], list[str]]:
    """Table rows (one per quantity) and notes for one workload."""
    total = anytime.sample_count(obj)
    log(f"{name}: truth on {total:,} samples (tol {truth_tol:g}) ...")
    ref = truth(obj, f"{name}-N{total}", truth_tol)
    log(f"  truth: {ref}")
    hits = {q: 0 for q in QUANTITIES}
    widths = {q: [] for q in QUANTITIES}
    products, seconds = [], []
    for s in range(seeds):
        est, used, sec = first_stage(obj, samples, s)
        products.append(used)
        seconds.append(sec)
        for q in QUANTITIES:
            iv = est[q]
            hits[q] += iv.low <= ref[q] <= iv.high
            widths[q].append((iv.high - iv.low) / abs(ref[q]))
        log(f"  seed {s}: {used} products, {sec:.1f} s; " + "; ".join(
            f"{q} [{est[q].low:.4g}, {est[q].high:.4g}]"
            f"{'' if est[q].low <= ref[q] <= est[q].high else ' MISS'}" for q in QUANTITIES)
            + f"; load {load()}")
    rows = []
    for q in QUANTITIES:
        rate = hits[q] / seeds
        rows.append(f"| {name} | {total:,} | {anytime.SUBSETS} × {samples} | {q} | {ref[q]:.6g} "
                    f"| {hits[q]}/{seeds} | {100 * rate:.0f} % | "
                    f"{statistics.median(widths[q]):.3g} | "
                    f"{'PASS' if rate >= COVERAGE_TARGET else 'FAIL'} |")
    notes = [f"{desc}. Truth: spectrum(k=1, 'both', eig_rtol {truth_tol:g}): "
             f"{ref['products']} products, converged {ref['converged']}, residuals "
             f"{ref.get('lambda_max_residual', float('nan')):.2g} (λ_max), "
             f"{ref.get('lambda_min_residual', float('nan')):.2g} (λ_min). Stage 1 per seed: "
             f"median {statistics.median(products):.0f} products (range {min(products)}-"
             f"{max(products)}), median {statistics.median(seconds):.1f} s."]
    return rows, notes


# ------------------------------------------------------------------------------------ timing
def first_verdict(obj: ls.Objective) -> dict:
    """Seconds to stage 1's verdict with the default samples, the stage's own record."""
    record = {}
    start = time.perf_counter()

    def on_stage(stage):
        record["at"] = time.perf_counter() - start
        record["stage"] = stage
        if stage.name == "subsample":
            raise KeyboardInterrupt   # the result is kept, marked partial

    result = anytime.anytime_probe(obj, on_stage=on_stage)
    record["partial"] = result.partial
    record["plan"] = result.plan
    return record


def product_seconds(obj: ls.Objective, repeats: int = 3) -> float:
    theta = obj.point()
    v = torch.randn(obj.n, generator=torch.Generator().manual_seed(0), dtype=obj.dtype)
    obj.hvp(v, theta)   # warm-up (also settles the product engine)
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        obj.hvp(v, theta)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def pyhessian_lmax(samples: int) -> dict:
    """PyHessian's top eigenvalue over a DataLoader of the same images, chunked as ours."""
    import pyhessian

    model, X, y, crit = w5_data(samples)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(X, y),
                                         batch_size=W5_BATCH, shuffle=False)
    count = [0]
    torch.manual_seed(0)
    start = time.perf_counter()
    h = pyhessian.hessian(model, crit, dataloader=loader, cuda=False)
    inner = h.dataloader_hv_product

    def counted(v):
        count[0] += 1
        return inner(v)

    h.dataloader_hv_product = counted
    values, _ = h.eigenvalues(top_n=1, tol=1e-3)
    return {"value": values[0], "seconds": time.perf_counter() - start, "products": count[0]}


def timing(args) -> tuple[list[str], list[str]]:
    rows, notes = [], []
    if "a" in args.timing_parts:
        r, n = verdict_timing(args)
        rows, notes = rows + r, notes + n
    if "c" in args.timing_parts:
        r, n = lmax_timing(args.lmax_samples)
        rows, notes = rows + ["", *r], notes + n
    return rows, notes


def verdict_timing(args) -> tuple[list[str], list[str]]:
    """(a) the first verdict, measured; (b) today's full probe, extrapolated."""
    rows, notes = [], []
    obj, desc = w5_objective(args.timing_samples)
    log(f"timing: {desc}; load {load()}")
    first = first_verdict(obj)
    stage = first["stage"]
    planned = first["plan"]["stages"]
    log(f"  (a) first verdict after {first['at']:.1f} s: {stage.verdict}: {stage.statement}")
    product = product_seconds(obj)
    log(f"  (b) one full-data product: {product:.2f} s; load {load()}")
    small, _ = w5_objective(args.count_samples)
    full = ls.probe(small)
    count = full.evidence["counts"]["hvp"]
    extrapolated = count * product
    log(f"  (b) full probe on {args.count_samples} images: {count} products "
        f"({full.kind}); extrapolated {extrapolated:.0f} s; load {load()}")
    share = first["at"] / extrapolated
    sub_plan = next((p for p in planned if p["name"] == "subsample"), None)
    rows.append("| (a) first verdict with intervals, measured (stage 1, default samples: "
                f"{stage.data}) | {first['at']:.1f} s | {stage.products} products |")
    rows.append(f"| (b) one full-data product on {args.timing_samples:,} images, measured "
                f"(median of 3) | {product:.2f} s | 1 |")
    rows.append(f"| (b) today's full probe, **extrapolated** ({count} products counted on "
                f"{args.count_samples} images × the product above) | {extrapolated:.0f} s | "
                f"{count} |")
    rows.append(f"| first verdict / extrapolated full probe (target ≤ 10 %) | "
                f"{100 * share:.1f} % | {'PASS' if share <= FIRST_VERDICT_SHARE else 'FAIL'} |")
    notes.append(f"Stage 1 verdict: {stage.verdict} — {stage.statement}")
    notes.append("Stage 1 intervals: " + "; ".join(
        f"{q} {iv.value:.4g} [{iv.low:.4g}, {iv.high:.4g}]" for q, iv in stage.estimates.items()))
    if sub_plan is not None:
        notes.append(f"Stage 1 plan: {sub_plan['products']} products, {sub_plan['seconds']:.0f} s "
                     f"(cost plan); measured {stage.products} products in {stage.seconds:.1f} s "
                     f"(stage) / {first['at']:.1f} s (call, with the cost plan); partial "
                     f"{first['partial']}.")
    notes.append(f"Full probe on {args.count_samples} images: kind {full.kind}, counts "
                 f"{full.evidence['counts']}.")
    return rows, notes


def lmax_timing(n: int) -> tuple[list[str], list[str]]:
    """(c) λ_max to rel. 1e-3 on ``n`` images: landscope against PyHessian, both scored against
    our own λ_max at eig_rtol 1e-6 in float64 (a float32 solve stalls near 1e-4·ρ on this model)."""
    ref = truth(w5_objective(n, torch.float64)[0], f"W5-N{n}-float64", 1e-6, which="largest")
    log(f"  (c) reference on {n} images: {ref}; load {load()}")
    obj, _ = w5_objective(n)
    start = time.perf_counter()
    before = obj.counts["hvp"]
    spec = ls.spectrum(obj, 1, "largest", eig_rtol=1e-3)
    ours = {"value": spec.largest.values[0].item(), "seconds": time.perf_counter() - start,
            "products": obj.counts["hvp"] - before}
    log(f"  (c) landscope: {ours}; load {load()}")
    peer = pyhessian_lmax(n)
    log(f"  (c) PyHessian: {peer}; load {load()}")
    lam = ref["lambda_max"]
    lmax_rows = []
    for tool, call, r in (("landscope", "spectrum(k=1, which='largest', eig_rtol=1e-3)", ours),
                          ("PyHessian", "hessian(dataloader=…).eigenvalues(top_n=1, tol=1e-3)",
                           peer)):
        lmax_rows.append(f"| {tool} | `{call}` | {r['value']:.6g} | {r['seconds']:.1f} | "
                         f"{r['products']} | {abs(r['value'] - lam) / abs(lam):.2e} |")
    notes = [f"(c) on {n:,} images; reference λ_max = {lam:.8g} from landscope's own "
             f"spectrum(k=1, 'largest', eig_rtol 1e-6) on the model analysed in float64: "
             f"{ref['products']} products, residual {ref['lambda_max_residual']:.2g}, converged "
             f"{ref['converged']}."]
    return ["| tool | call | λ_max | s | products | rel. error vs reference |",
            "|---|---|---|---|---|---|", *lmax_rows], notes


# ------------------------------------------------------------------------------------ main
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--coverage", action="store_true", help="part 1: interval coverage")
    parser.add_argument("--timing", action="store_true", help="part 2: first verdict on W5")
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 seeds, small data sets")
    parser.add_argument("--workloads", default="W2,W5", help="of the coverage part")
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--w2-subset", type=int, default=128, help="samples per W2 subset")
    parser.add_argument("--w5-samples", type=int, default=512, help="N of the W5 coverage data")
    parser.add_argument("--w5-subset", type=int, default=64, help="images per W5 subset")
    parser.add_argument("--w2-truth-tol", type=float, default=1e-8)
    parser.add_argument("--w5-truth-tol", type=float, default=1e-4)
    parser.add_argument("--timing-samples", type=int, default=2000)
    parser.add_argument("--count-samples", type=int, default=128,
                        help="images of the full probe whose products are counted")
    parser.add_argument("--lmax-samples", type=int, default=2000, help="images of part (c)")
    parser.add_argument("--timing-parts", default="abc",
                        help="of --timing: 'ab' first verdict and full probe, 'c' λ_max")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    if not (args.coverage or args.timing):
        parser.error("choose --coverage and/or --timing")
    if args.quick:
        args.seeds = min(args.seeds, 3)
        args.w5_samples, args.w5_subset = min(args.w5_samples, 160), min(args.w5_subset, 16)
        args.timing_samples = min(args.timing_samples, 160)
        args.count_samples = min(args.count_samples, 16)
        args.lmax_samples = min(args.lmax_samples, 160)
    restart_with_hygiene()
    timing_hygiene(threads=args.threads, warn=False)
    import warnings
    warnings.filterwarnings("ignore", category=UserWarning, module="pyhessian")
    loads = [load()]
    stamp = subprocess.run(["date", "-u", "+%Y-%m-%d %H:%M UTC"], capture_output=True,
                           text=True).stdout.strip()
    started = time.perf_counter()
    section = []
    if args.coverage:
        rows, notes = [], []
        for name in [w.strip().upper() for w in args.workloads.split(",") if w.strip()]:
            if name == "W2":
                obj, desc = w2_objective()
                r, n = coverage("W2", obj, desc, args.w2_subset, args.seeds, args.w2_truth_tol)
            else:
                obj, desc = w5_objective(args.w5_samples)
                r, n = coverage("W5", obj, desc, args.w5_subset, args.seeds, args.w5_truth_tol)
            rows += r
            notes += n
            loads.append(load())
        table = ["| workload | N | subsets × m | quantity | truth | hits | coverage | median "
                 "width / abs(truth) | ≥ 90 % |", "|---|---|---|---|---|---|---|---|---|", *rows]
        log("\n".join(table))
        section += ["### Coverage of the stage-1 95 % intervals", "", *table, "",
                    *[f"- {n}" for n in notes], ""]
    if args.timing:
        rows, notes = timing(args)
        table = ["| measure | seconds | products |", "|---|---|---|", *rows]
        log("\n".join(table))
        section += [f"### First verdict against the full probe, W5 on {args.timing_samples:,} "
                    "images", "", *table, "", *[f"- {n}" for n in notes], ""]
        loads.append(load())
    wall = time.perf_counter() - started
    log(f"wall {wall:.0f} s; load averages (1, 5, 15 min) at start and after each part: "
        + " | ".join(loads))
    if not args.no_results:
        command = ("OMP_WAIT_POLICY=PASSIVE MALLOC_MMAP_THRESHOLD_=33554432 "
                   "MALLOC_TRIM_THRESHOLD_=1000000000 benchmarks/.venv-peers/bin/python "
                   "benchmarks/bench_anytime.py " + " ".join(sys.argv[1:]))
        head = ["", f"## Anytime probe: interval coverage and first verdict, {stamp}", "",
                f"- machine: 2-core AMD EPYC ({platform.machine()}), torch {torch.__version__} "
                f"with {args.threads} thread{'s' if args.threads > 1 else ''}, "
                f"Python {platform.python_version()}",
                f"- command: `{command.strip()}`",
                "- load average (1, 5, 15 min) at the start and after each part: "
                + " | ".join(loads) + f"; wall {wall:.0f} s", ""]
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as out:
            out.write("\n".join(head + section))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: Hessian-vector products per second with the data split over 2 CPU ranks, against 1.

Workloads (``benchmarks/workloads.py``, their cached weights, eval mode): W3, the digits CNN, on
all 1,797 digits (the chain engine makes its products), and W5, ResNet-20, on ``--images``
CIFAR-shaped images (256 by default; the kept autograd graph makes them). Each configuration runs
under ``torchrun`` (``python -m torch.distributed.run --standalone``), every rank with one torch
thread (``OMP_NUM_THREADS=1``), and builds ``Objective.from_model(model, loss, (X, y))``: with 2
ranks the default ``shard="split"`` keeps half the samples on each and every product is
all-reduced. The configurations:

- ``1 rank``: one process, all the data (the reference);
- ``1 rank, half``: one process, the first half of the data: what each of 2 ranks computes, so
  ``1 rank / (2 x 1 rank, half)`` is how well the work itself halves;
- ``2 ranks``: two processes, half the data each.

Timed at θ₀, after the first product (its time, ``set-up s``, includes building the first-order
graph or the chain engine's trial) and one untimed block of 8 (where the kept graph times its
loop against its vmapped backward): ``--products`` products of one vector (k=1) and ``--blocks``
blocks of 8 vectors (k=8), the same seeded vectors in every configuration. Products per second are
rank 0's wall time; efficiency = (rate at 2 ranks) / (2 x rate at 1 rank), the target ≥ 80 %.
Each rank also reports the fraction of its wall time it spent on the CPU (below 1: it waited for
the other rank or for a core), and the 2-rank runs time the all-reduce of one product's payload
alone. The 2-rank products are compared with the 1-rank ones (relative Frobenius error).

Surfaces (``--no-surface`` skips them): ``landscope.surface`` on a grid over two seeded
filter-normalised directions (W3 21 x 21 points, W5 9 x 9, span ±1), points per second in one
process and on 2 ranks, shared by data (the data-parallel Objective: every rank visits every point
with half the data) and by points (an Objective with ``shard="replicate"``: each rank evaluates
half the points on all the data), with the efficiency against one process and the largest
difference from its values relative to their range.

    python benchmarks/bench_distributed.py            # about 5 minutes on 2 quiet cores

Each configuration is a fresh ``torchrun`` job, the launcher users run (``distributed.start``
reads its environment; ``--standalone`` finds a free port), so nothing a process settles (the
engine, the allocator's state) carries over from one configuration to the next, and the driver
itself joins no process group. On a shared machine each waits up to ``--quiet-wait`` seconds for
the cores to go idle; the CPU columns show what the wall times cannot: the work per rank, and
(``others' CPU share``) how much of the machine other processes took during the timing.

The process re-executes itself with the timing-hygiene environment (benchmarks/README.md) and
appends its table to ``RESULTS.md`` unless ``--no-results``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import LoadSampler, machine_info  # noqa: E402
from workloads import (  # noqa: E402
    HYGIENE_ENV,
    build_workload,
    cifar_like,
    restart_with_hygiene,
    timing_hygiene,
)

import landscope as ls  # noqa: E402
from landscope import directions, distributed, surface  # noqa: E402

BLOCK = 8
TARGET = 0.80
QUIET_SHARE = 0.10
"""Most of the machine other processes may take during a run that is not run again."""
GRID = {"W3": 21, "W5": 9}
"""Points per axis of each workload's surface: a few seconds of forward passes on one rank."""
CONFIGS = (("1 rank", 1, "all"), ("1 rank, half", 1, "half"), ("2 ranks", 2, "all"))
"""(name, ranks, data kept): the reference, one rank's share of the work alone, and 2 ranks."""


# ------------------------------------------------------------------------------ one rank's work
def workload_data(name: str, images: int, keep: str):
    """The model, ``(X, y)`` and criterion of ``name`` (W5 on ``images`` images); ``keep="half"``:
    the first of two contiguous parts of the samples (rank 0's shard under ``shard="split"``)."""
    model, X, y, criterion = build_workload(name)
    if name == "W5":
        X, y = cifar_like(images)
    if keep == "half":
        first = distributed.part(len(X), 0, 2)
        X, y = X[first.start:first.stop], y[first.start:first.stop]
    return model, X, y, criterion


def machine_busy() -> float:
    """CPU seconds the whole machine has spent busy since boot (nan without /proc/stat)."""
    try:
        with open("/proc/stat") as stat:
            ticks = [int(x) for x in stat.readline().split()[1:9]]
    except OSError:
        return float("nan")
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def timed_loop(call, repeats: int) -> dict:
    """``repeats`` calls of ``call()`` after a barrier: wall and CPU seconds of this process and
    the machine's busy CPU seconds over them all."""
    if distributed.active():
        dist.barrier()
    wall, cpu, busy = time.perf_counter(), time.process_time(), machine_busy()
    for _ in range(repeats):
        result = call()
    return {"wall": time.perf_counter() - wall, "cpu": time.process_time() - cpu,
            "busy": machine_busy() - busy, "result": result}


def all_reduce_seconds(n: int, columns: int, repeats: int = 5) -> float:
    """Median seconds of one all-reduce of a product's payload (1 + n·columns float32)."""
    payload = torch.zeros(1 + n * columns)
    seconds = []
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(payload)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


def timed_surface(obj, resolution: int) -> dict:
    """A ``resolution`` x ``resolution`` grid over two seeded filter-normalised directions,
    span ±1, after a barrier: its wall seconds, values and how the ranks shared it."""
    frame = directions.random(obj, 2, seed=1)
    if distributed.active():
        dist.barrier()
    start = time.perf_counter()
    grid = surface.surface(obj, frame, span=1.0, resolution=resolution)
    return {"wall": time.perf_counter() - start, "values": grid.values,
            "sharding": (grid.meta.get("sharding") or {}).get("by", "none")}


def measure(name: str, images: int, keep: str, products: int, blocks: int, grid: int) -> dict:
    """This rank's timings of products at θ₀ of workload ``name`` (see the module text)."""
    model, X, y, criterion = workload_data(name, images, keep)
    obj = ls.Objective.from_model(model, criterion, (X, y))
    vectors = torch.randn(obj.n, 1 + BLOCK, generator=torch.Generator().manual_seed(0))
    one, block = vectors[:, :1], vectors[:, 1:]
    first = timed_loop(lambda: obj.hvp(one), 1)
    warm = timed_loop(lambda: obj.hvp(block), 1)
    single = timed_loop(lambda: obj.hvp(one), products)
    blocked = timed_loop(lambda: obj.hvp(block), blocks)
    mine = {
        "setup": first["wall"],
        "k1": {key: single[key] for key in ("wall", "cpu", "busy")},
        "k8": {key: blocked[key] for key in ("wall", "cpu", "busy")},
        "samples": sum(obj.model_loss.batches.sizes), "threads": torch.get_num_threads(),
        "engine": obj.info["hvp_engine"], "chain": obj.info.get("chain_engine", "–"),
        "trial": obj.info.get("chain_trial", {}).get("seconds_per_product"),
    }
    if obj.ranks > 1:
        mine["all_reduce"] = {"k1": all_reduce_seconds(obj.n, 1),
                              "k8": all_reduce_seconds(obj.n, BLOCK)}
    surfaces = []
    if grid and keep == "all":
        surfaces.append(timed_surface(obj, grid))
        if obj.ranks > 1:  # every rank holds all the data: the ranks share the points
            replicated = ls.Objective.from_model(model, criterion, (X, y), shard="replicate")
            surfaces.append(timed_surface(replicated, grid))
    everyone = [None] * distributed.world()
    if distributed.active():
        dist.all_gather_object(everyone, mine)
    else:
        everyone = [mine]
    return {"n": obj.n, "ranks": obj.ranks, "per_rank": everyone, "products": products,
            "blocks": blocks, "hv": first["result"], "HV": warm["result"],
            "surfaces": surfaces, "grid": grid}


def worker(args) -> None:
    """One rank under torchrun: measure, and rank 0 saves what every rank measured."""
    timing_hygiene(threads=1, warn=False)
    distributed.start("cpu")
    main_rank = distributed.is_main()
    try:
        result = measure(args.workload, args.images, args.keep, args.products, args.blocks,
                         0 if args.no_surface else GRID[args.workload])
    finally:
        distributed.stop()
    if main_rank:
        torch.save(result, args.out)


# ------------------------------------------------------------------------------ the driver
def launch(name: str, images: int, ranks: int, keep: str, products: int, blocks: int,
           surface: bool, folder: str, quiet_wait: float) -> dict:
    """One configuration under torchrun, started once the machine is quiet (or after
    ``quiet_wait`` seconds); what its rank 0 saved, with the idle share before it started."""
    out = os.path.join(folder, f"{name}-{ranks}-{keep}.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", __file__, "--worker", "--workload", name,
               "--images", str(images), "--keep", keep, "--products", str(products),
               "--blocks", str(blocks), "--out", out, *(["--no-surface"] if not surface else [])]
    idle = wait_for_quiet(quiet_wait)
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL)
    result = torch.load(out, weights_only=False)
    result["idle_before"] = idle
    return result


def wait_for_quiet(limit_s: float, quiet: float = 0.9) -> float:
    """Wait (at most ``limit_s``) until the machine is idle for at least the share ``quiet`` of
    a second; the last idle share seen."""
    deadline = time.monotonic() + limit_s
    before = machine_busy()
    while True:
        time.sleep(1.0)
        now = machine_busy()
        idle = 1 - (now - before) / (os.cpu_count() or 1)
        if idle >= quiet or time.monotonic() >= deadline or before != before:  # nan: no /proc
            return idle
        before = now


def cleanest(run, retries: int) -> dict:
    """``run()``, repeated up to ``retries`` times while other processes took more than
    :data:`QUIET_SHARE` of the machine; the run they disturbed least."""
    best = run()
    for _ in range(retries):
        if others_share(best) <= QUIET_SHARE:
            break
        again = run()
        best = again if others_share(again) < others_share(best) else best
    return best


def count(result: dict, key: str) -> int:
    return result["products"] if key == "k1" else BLOCK * result["blocks"]


def rate(result: dict, key: str) -> float:
    """Products per second of rank 0 in the timed k=1 or k=8 loop."""
    return count(result, key) / result["per_rank"][0][key]["wall"]


def cpu_per_product(result: dict, key: str) -> float:
    """CPU seconds per product of the busiest rank (what one rank computes on its shard,
    whatever else shared the cores)."""
    return max(r[key]["cpu"] for r in result["per_rank"]) / count(result, key)


def others_share(result: dict) -> float:
    """Share of the machine's CPU used by other processes during the timed loops."""
    ranks = result["per_rank"]
    wall = sum(ranks[0][k]["wall"] for k in ("k1", "k8"))
    ours = sum(r[k]["cpu"] for r in ranks for k in ("k1", "k8"))
    busy = sum(ranks[0][k]["busy"] for k in ("k1", "k8"))
    return max(0.0, busy - ours) / (wall * (os.cpu_count() or 1))


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm())


def table(runs: dict) -> tuple[list[str], list[str]]:
    """The markdown table of every workload and configuration, and the summary lines."""
    header = ["workload", "config", "samples per rank", "engine", "set-up s", "k=1 products/s",
              "k=8 products/s", "CPU s per product (k=1 / k=8)", "CPU/wall per rank (k=8)",
              "all-reduce ms (k=1 / k=8)", "rel. error vs 1 rank (k=1 / k=8)",
              "others' CPU share"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    summary = []
    for (name, label), result in runs.items():
        ranks = result["per_rank"]
        reference = runs[(name, "1 rank")]
        reduce_ms = "–" if "all_reduce" not in ranks[0] else " / ".join(
            f"{1e3 * max(r['all_reduce'][k] for r in ranks):.1f}" for k in ("k1", "k8"))
        error = "–" if label != "2 ranks" else \
            f"{relative(result['hv'], reference['hv']):.1e} / " \
            f"{relative(result['HV'], reference['HV']):.1e}"
        cells = [name, label, "/".join(str(r["samples"]) for r in ranks),
                 ", ".join(sorted({r["engine"] for r in ranks})), f"{ranks[0]['setup']:.2f}",
                 f"{rate(result, 'k1'):.2f}", f"{rate(result, 'k8'):.2f}",
                 f"{cpu_per_product(result, 'k1'):.3f} / {cpu_per_product(result, 'k8'):.3f}",
                 "/".join(f"{r['k8']['cpu'] / r['k8']['wall']:.2f}" for r in ranks),
                 reduce_ms, error, f"{others_share(result):.0%}"]
        lines.append("| " + " | ".join(cells) + " |")
        if label == "2 ranks":
            half = runs[(name, "1 rank, half")]
            parts = []
            for key in ("k1", "k8"):
                efficiency = rate(result, key) / (2 * rate(reference, key))
                in_cpu = cpu_per_product(reference, key) / (2 * cpu_per_product(result, key))
                halving = cpu_per_product(reference, key) / (2 * cpu_per_product(half, key))
                parts.append(
                    f"k={1 if key == 'k1' else BLOCK}: efficiency {efficiency:.0%} "
                    f"({'meets' if efficiency >= TARGET else 'below'} the {TARGET:.0%} target); "
                    f"in CPU time {in_cpu:.0%} (half the data alone: {halving:.0%})")
            summary.append(f"{name}: " + "; ".join(parts))
    return lines, summary


def surface_table(runs: dict) -> list[str]:
    """Points per second of each workload's grid: one process, and 2 ranks sharing it by data and
    by points; efficiency against one process, and the largest difference from its values."""
    header = ["workload", "grid", "config", "sharing", "points/s", "efficiency",
              "max abs. difference / range vs 1 rank"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (name, label), result in runs.items():
        if not result.get("surfaces") or label == "1 rank, half":
            continue
        points = result["grid"] ** 2
        reference = runs[(name, "1 rank")]["surfaces"][0]
        scale = float(reference["values"].max() - reference["values"].min()) or 1.0
        for grid in result["surfaces"]:
            own = grid is reference
            rate = points / grid["wall"]
            efficiency = "–" if own else \
                f"{rate / (result['ranks'] * points / reference['wall']):.0%}"
            difference = "–" if own else \
                f"{float(abs(grid['values'] - reference['values']).max()) / scale:.1e}"
            lines.append(f"| {name} | {result['grid']}x{result['grid']} | {label} | "
                         f"{grid['sharding']} | {rate:.2f} | {efficiency} | {difference} |")
    return lines


def chain_line(name: str, runs: dict) -> str:
    """What became of the chain engine in each configuration of ``name`` (rank 0's record)."""
    mine = {label: run["per_rank"][0] for (wl, label), run in runs.items() if wl == name}
    verdicts = sorted({m["chain"] for m in mine.values()})
    trials = "; ".join(f"{label} {m['trial']['chain']:.3f} / {m['trial']['autograd']:.3f}"
                       for label, m in mine.items() if m["trial"])
    return f"{name}, the chain engine: {', '.join(verdicts)}" + (
        f" (its trial, s per product, chain / autograd: {trials})" if trials else "")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", default="W3,W5")
    parser.add_argument("--images", type=int, default=256, help="W5's images")
    parser.add_argument("--products", type=int, default=10, help="timed products with k=1")
    parser.add_argument("--blocks", type=int, default=1, help="timed blocks of k=8")
    parser.add_argument("--quiet-wait", type=float, default=120.0,
                        help="seconds to wait for an idle machine before each configuration")
    parser.add_argument("--retries", type=int, default=2,
                        help="runs again a configuration during which other processes took "
                             f"more than {QUIET_SHARE * 100:.0f} %% of the machine (the cleanest "
                             "run is kept)")
    parser.add_argument("--no-surface", action="store_true",
                        help="skip the surfaces (points per second of a grid)")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--workload", help=argparse.SUPPRESS)
    parser.add_argument("--keep", choices=("all", "half"), help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    restart_with_hygiene()
    names = args.workloads.split(",")
    for name in names:  # trains and caches the weights once, before any rank reads them
        build_workload(name)
    load = LoadSampler()
    runs = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            for label, ranks, keep in CONFIGS:
                runs[(name, label)] = cleanest(
                    functools.partial(launch, name, args.images, ranks, keep, args.products,
                                      args.blocks, not args.no_surface, folder,
                                      args.quiet_wait), args.retries)
                print(f"{name}, {label}: {rate(runs[(name, label)], 'k1'):.2f} products/s "
                      f"(k=1)", flush=True)
    lines, summary = table(runs)
    surfaces = [] if args.no_surface else ["", *surface_table(runs)]
    print("\n".join(lines + [""] + summary + surfaces))
    machine = machine_info()
    threads = sorted({r["threads"] for run in runs.values() for r in run["per_rank"]})
    details = [chain_line(name, runs) for name in names]
    print("\n".join(details))
    if not args.no_results:
        command = "python benchmarks/bench_distributed.py " + " ".join(argv or sys.argv[1:])
        stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        section = [
            "", f"## Data parallelism on CPU ranks: 2 ranks against 1, {stamp}", "",
            f"- machine: {machine['cores']}-core {machine['cpu']}, torch {machine['torch']}, "
            f"torch threads per rank: {threads} (OMP_NUM_THREADS=1), gloo, "
            f"{', '.join(f'{k}={v}' for k, v in HYGIENE_ENV.items())}; 1-min load average "
            f"{load.stop()}.",
            f"- command: `{command.strip()}`",
            f"- products at θ₀: {args.products} with k=1 and {args.blocks} block(s) of k=8, "
            "rank 0's wall time, after the first product (set-up s) and one untimed k=8 block; "
            "W3 on the 1,797 digits, W5 on "
            f"{args.images} images. CPU/wall: each rank's CPU time over its wall time; others' "
            "CPU share: the machine's busy time less the ranks' over the timed loops. Surfaces: "
            "`surface(obj, directions.random(obj, 2, seed=1), span=1.0, resolution=...)` after the "
            "products, in the same processes.", "",
            *lines, "", *(f"- {line}" for line in summary + details), *surfaces, "",
        ]
        with open(HERE / "RESULTS.md", "a", encoding="utf-8") as out:
            out.write("\n".join(section))
    return 0


if __name__ == "__main__":
    sys.exit(main())

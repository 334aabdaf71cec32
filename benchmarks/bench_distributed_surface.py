"""Benchmark: grid points per second of a 2-D loss surface on 2 CPU ranks against 1 rank.

Workload W3 (``benchmarks/workloads.py``: the digits CNN, eval mode, all 1,797 digits, cached
weights), a filter-normalised random plane (seed 0) of ``--resolution`` × ``--resolution``
points through :func:`landscope.surface.surface`. Every configuration runs under ``torchrun``
(``python -m torch.distributed.run --standalone``) with one torch thread per rank
(``OMP_NUM_THREADS=1``):

- ``1 rank``: one process, the reference;
- ``2 ranks, points``: ``shard="replicate"``: each rank holds all the data and evaluates every
  other grid point (the grid is gathered in rounds);
- ``2 ranks, data``: ``shard="split"``: each rank holds half the data, every point is visited by
  both ranks and its loss all-reduced.

The surface is timed on rank 0 after a barrier, set-up (the Objective, the directions) excluded;
speed-up = (points/s at 2 ranks) / (points/s at 1 rank), ideal 2. Each rank's CPU seconds over the
timed surface show the work itself: near the wall time, the rank computed all along; below it, it
waited for the other rank or for a core. The values are compared with the 1-rank grid (largest
relative difference). The 1-minute load average is printed beside each row: the machine is
shared, and a second job on a 2-core machine takes a rank's core.

    python benchmarks/bench_distributed_surface.py [--resolution 15] [--no-results]

about a minute on 2 cores; it appends its table to ``RESULTS.md`` unless ``--no-results``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

from harness import publish  # noqa: E402
from workloads import build_workload, restart_with_hygiene, timing_hygiene  # noqa: E402

import landscope as ls  # noqa: E402
from landscope import directions, distributed  # noqa: E402
from landscope.surface import surface  # noqa: E402

CONFIGS = (("1 rank", 1, "replicate"), ("2 ranks, points", 2, "replicate"),
           ("2 ranks, data", 2, "split"))
"""(name, ranks, shard)."""


def worker(args) -> None:
    """One rank under torchrun: the timed surface; rank 0 saves its values and seconds."""
    timing_hygiene(threads=1, warn=False)
    distributed.start("cpu")
    main_rank = distributed.is_main()
    try:
        model, X, y, criterion = build_workload(args.workload)
        obj = ls.Objective.from_model(model, criterion, (X, y), shard=args.shard)
        frame = directions.random(obj, 2, seed=0)
        surface(obj, frame, resolution=3)  # warm: the replica's first forward, the gathers
        if distributed.active():
            dist.barrier()
        start, cpu = time.perf_counter(), time.process_time()
        grid = surface(obj, frame, resolution=args.resolution)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
        cpus = [cpu] * distributed.world()
        if distributed.active():
            dist.all_gather_object(cpus, cpu)
    finally:
        distributed.stop()
    if main_rank:
        torch.save({"values": grid.values, "seconds": seconds, "cpu": cpus,
                    "sharding": grid.meta["sharding"]}, args.out)


def launch(workload: str, resolution: int, ranks: int, shard: str, folder: str) -> dict:
    out = os.path.join(folder, f"{ranks}-{shard}.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={ranks}", __file__, "--worker", "--workload", workload,
               "--resolution", str(resolution), "--shard", shard, "--out", out]
    load = os.getloadavg()[0]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                   stdout=subprocess.DEVNULL)
    return {**torch.load(out, weights_only=False), "load": load}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workload", default="W3")
    parser.add_argument("--resolution", "--steps", type=int, default=15,
                        help="grid points per axis (--steps: its old name)")
    parser.add_argument("--shard", default="replicate")
    parser.add_argument("--out")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    build_workload(args.workload)  # trained and cached once, before any timing
    points = args.resolution**2
    with tempfile.TemporaryDirectory() as folder:
        results = {name: launch(args.workload, args.resolution, ranks, shard, folder)
                   for name, ranks, shard in CONFIGS}
    reference = results["1 rank"]
    lines = [f"## Surface grid on 2 ranks ({datetime.date.today()}, {args.workload}, "
             f"{args.resolution}×{args.resolution} points, 1 thread per rank, gloo)", "",
             "| configuration | sharding | seconds | CPU s per rank | points/s | speed-up | "
             "max rel. diff | load |", "|---|---|---|---|---|---|---|---|"]
    for name, result in results.items():
        rate = points / result["seconds"]
        diff = float(np.max(np.abs(result["values"] - reference["values"])
                            / np.abs(reference["values"])))
        how = result["sharding"]["by"] if result["sharding"] else "–"
        cpu = " / ".join(f"{c:.2f}" for c in result["cpu"])
        lines.append(f"| {name} | {how} | {result['seconds']:.2f} | {cpu} | {rate:.1f} | "
                     f"{rate * reference['seconds'] / points:.2f} | {diff:.1e} | "
                     f"{result['load']:.1f} |")
    text = "\n".join(lines) + "\n"
    publish(text, append=not args.no_results)


if __name__ == "__main__":
    if "--worker" not in sys.argv:
        restart_with_hygiene()
    main()

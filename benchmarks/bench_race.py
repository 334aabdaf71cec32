"""Race throughput: many starts stepped together (one (S, n) tensor) against a loop over them.

For each optimiser, S = 256 starts of the 2-D six-hump camel take ``--steps`` steps (no early stop)
through ``landscope.race.descend``: once with the starts as the rows of one tensor ("together"),
once start by start ("loop", the same bookkeeping per step), and in the plainest training loop
(one optimiser per start, ``opt.step(closure)`` and nothing else: "bare loop"). Throughput is
runs × steps per second of wall time (median of ``--repeat`` runs). A loop's throughput per run
does not depend on how many runs it does, so both loops are measured on ``--loop-starts`` of the
256 starts to keep the script short; the speed-up is together / loop. Target: ≥ 10×.

Run: ``.venv/bin/python benchmarks/bench_race.py [--steps 200] [--default-race]``. The script
re-executes itself with the timing-hygiene environment (``workloads.HYGIENE_ENV``) when it is
missing, uses 2 torch threads, prints a table and appends a dated section to
``benchmarks/RESULTS.md`` (unless ``--no-results``). ``--default-race`` also times the default
``landscope race`` (all optimisers, its three functions, tuning and strategies included).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import restart_with_hygiene, timing_hygiene  # noqa: E402

if __name__ == "__main__":
    restart_with_hygiene()

import torch  # noqa: E402

from landscope import functions, optim  # noqa: E402
from landscope.race import descend, race  # noqa: E402

OPTIMIZERS = ("gd", "adam", "newton", "saddle_free_newton", "perturbed_gd")
TARGET = 10.0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--function", default="six_hump_camel")
    parser.add_argument("--starts", type=int, default=256)
    parser.add_argument("--loop-starts", type=int, default=32)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--default-race", action="store_true")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args(argv)
    timing_hygiene()
    fn = functions.get(args.function)
    starts = fn.sample(args.starts, torch.Generator().manual_seed(0))
    descend(fn, "gd", starts[:4], steps=3)  # first-call costs (lazy imports) paid here
    rows = []
    for name in OPTIMIZERS:
        together = _throughput(fn, name, starts, args.steps, args.repeat, batched=True)
        loop = _throughput(fn, name, starts[:args.loop_starts], args.steps, 1, batched=False)
        bare = _bare_loop(fn, name, starts[:args.loop_starts], args.steps)
        rows.append((name, together, loop, bare))
        print(f"{name:20s} together {together:12,.0f}  loop {loop:10,.0f}  bare loop "
              f"{bare:10,.0f}  × {together / loop:6.1f} / {together / bare:6.1f}", flush=True)
    race_seconds = None
    if args.default_race:
        begin = time.perf_counter()
        race()
        race_seconds = time.perf_counter() - begin
        print(f"default race: {race_seconds:.1f} s")
    text = _markdown(rows, args, fn, race_seconds)
    print(text)
    if not args.no_results:
        results = HERE / "RESULTS.md"
        with open(results, "a") as stream:
            stream.write(("" if results.exists() and results.stat().st_size else
                          "# Benchmark results\n") + "\n" + text)
        print(f"appended to {results.relative_to(HERE.parent)}")
    return 0


def _throughput(fn, name, starts, steps, repeat, batched) -> float:
    """runs × steps per second (median over ``repeat``) of ``descend`` without early stops."""
    seconds = []
    for _ in range(repeat):
        begin = time.perf_counter()
        run = descend(fn, name, starts, steps=steps, batched=batched, grad_atol=-1.0)
        seconds.append(time.perf_counter() - begin)
        assert run.points.shape[0] == steps + 1
    return len(starts) * steps / statistics.median(seconds)


def _bare_loop(fn, name, starts, steps) -> float:
    """The same optimiser in the plainest training loop, one start after another, no records."""
    differentiates_itself = optim.recipe(name).row_aware  # landscope's own take the gradient
    begin = time.perf_counter()
    for start in starts:
        x = start.clone().requires_grad_(True)
        opt = optim.make(name, [x])

        def closure(x=x, opt=opt):
            opt.zero_grad()
            return fn.f(x) if differentiates_itself else _backward(fn, x)

        for _ in range(steps):
            opt.step(closure)
    return len(starts) * steps / (time.perf_counter() - begin)


def _backward(fn, x):
    loss = fn.f(x)
    loss.backward()
    return loss


def _machine() -> str:
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as stream:
            cpu = next((line.split(":", 1)[1].strip() for line in stream
                        if line.startswith("model name")), cpu)
    except OSError:
        pass
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    return (f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} with "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}; "
            f"load average at the end {load} (shared machine: figures swing with it)")


def _markdown(rows, args, fn, race_seconds) -> str:
    lines = [
        f"## Race throughput (issue 4) — {_dt.date.today().isoformat()}", "",
        f"- machine: {_machine()}",
        f"- command: `python benchmarks/bench_race.py {' '.join(sys.argv[1:])}`".replace(
            "bench_race.py `", "bench_race.py`"),
        f"- workload: {fn.name} (n = {fn.dim}), {args.starts} seeded uniform starts, "
        f"{args.steps} steps, no early stop; loop measured on {args.loop_starts} starts; "
        f"median of {args.repeat} (together)", "",
        "| optimiser | together (runs·steps/s) | loop, same runner | bare training loop | "
        f"speed-up vs runner loop / bare loop | target ≥ {TARGET:g}× |",
        "|---|---:|---:|---:|---:|:-:|"]
    for name, together, loop, bare in rows:
        worst = min(together / loop, together / bare)
        lines.append(f"| {name} | {together:,.0f} | {loop:,.0f} | {bare:,.0f} | "
                     f"{together / loop:.0f}× / {together / bare:.0f}× | "
                     f"{'✓' if worst >= TARGET else '✗'} |")
    if race_seconds is not None:
        lines += ["", f"Default `landscope race` (14 optimisers × 3 functions × 32 starts × 300 "
                      f"steps, tune 3, strategies × 8): {race_seconds:.1f} s wall."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

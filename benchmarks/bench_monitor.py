"""Benchmark: what watching a training run costs (the Monitor beside Cockpit), issues 5, 9, 12.

Workload: W2 training (``benchmarks/workloads.py``: MLP 64-128-128-10 ReLU, float32, the digits,
Adam lr 1e-3, batch 64, shuffled), from the seed-0 initialisation. Every configuration trains the
same run; the cost is the time of a whole run (monitor construction, every step, flushes to
``monitor.csv`` and closing included) divided by that of the unmonitored run next to it, by wall
clock and by CPU time; the median over repeats is reported. On a shared, busy 2-core machine these
ratios still swing by several percent between invocations: the self-timed share (time inside the
Monitor's own code) is the steadier figure.

Rows:
- the unmonitored run against itself: how far these ratios swing from 1 by noise alone;
- landscope's default ``Monitor(model, optimizer, run_dir)``: the loss and lr every step, the
  first-order tier (global and per-layer gradient norms, weight norms, update ratios, gradient
  cosine, ReLU dead fractions) every 25 steps;
- the first-order tier every step (``every=1``), every 10 and every 16 steps;
- the default Monitor with a held batch of 256 samples (curvature allowed when the loss curve
  asks for it), over a whole run of ``--held-steps`` steps (1,500), and the same with Adam's lr
  at ``--stall-lr`` (0.03), where the loss stalls and rises so that the Monitor considers
  curvature: the amortised cost, with the curvature measurements started, their products and
  their share of the run (each is bounded by the 5 % budget, the first one included); each also
  *interleaved*: the watched run and an unmonitored twin advance together on the same batches,
  one step each in alternating order, and their summed step times are divided. Whole runs side
  by side swing by 10-30 % a pair on this VM (a 2-thread W2 step takes 2.5-4.3 ms from run to
  run, 0.85 ms on one thread: the wake-up of the second OpenMP thread dominates it), so their
  7-15-pair medians move by ±6 %; interleaving cancels that drift;
- the same held-batch run trained with SGD at lr ``--sgd-lr`` (1.0: the loss rises, then
  stalls; batches of 64, a quarter of the held batch), whole and interleaved: there each
  curvature measurement also takes the batch sharpness E_B[g_Bᵀ H_B g_B / ‖g_B‖²] on the held
  batch's 4 chunks of 64 (one gradient and one product each, within the same budget); the
  curvature column counts the measurements that took it;
- one curvature measurement (λ_max and λ_min by Lanczos with ≤ 100 products each, gradient noise
  from 4 chunks) on the held batch, in units of one training step;
- Cockpit 1.0.2 (if installed): ``economy`` every step and every 16 steps, and its λ_max gauge
  (``HessMaxEV``) alone every step. Anchors from the Cockpit paper (NeurIPS 2021): 1.52×, 1.05×
  and 7.1× a step.

Run with the peer venv to include Cockpit::

    benchmarks/.venv-peers/bin/python benchmarks/bench_monitor.py

``--held-only`` measures the held-data run alone (the issue-9 target: at most 1.05x an unmonitored
run, median of alternating runs).

The process re-executes itself with the timing-hygiene environment (benchmarks/README.md).
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from unittest import mock

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import WORKLOADS, digits, restart_with_hygiene, timing_hygiene  # noqa: E402

if __name__ == "__main__":
    restart_with_hygiene()

import torch  # noqa: E402
from harness import machine_info, publish  # noqa: E402
from torch import nn  # noqa: E402

from landscope.monitor import Monitor  # noqa: E402
from landscope.monitor import monitor as monitor_module  # noqa: E402
from landscope.monitor.curvature import measure  # noqa: E402

BATCH, LR = 64, 1e-3


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=int, default=15, help="interleaved repeats (median)")
    parser.add_argument("--epochs", type=int, default=10, help="epochs per timed run")
    parser.add_argument("--held-steps", type=int, default=1500,
                        help="steps of the whole run with a held batch (amortised cost)")
    parser.add_argument("--held-repeats", type=int, default=7,
                        help="alternating pairs of the held-batch run (median)")
    parser.add_argument("--stall-lr", type=float, default=0.03,
                        help="Adam lr of a second held-batch run, one whose loss stalls and rises "
                        "so that the Monitor considers curvature (0: leave it out)")
    parser.add_argument("--sgd-lr", type=float, default=1.0,
                        help="SGD lr of a third held-batch run, one whose loss rises and stalls, "
                        "where each curvature measurement also takes the batch sharpness (0: "
                        "leave it out)")
    parser.add_argument("--held-only", action="store_true",
                        help="measure the held-batch run alone")
    parser.add_argument("--cockpit-repeats", type=int, default=3)
    parser.add_argument("--cockpit-epochs", type=int, default=2)
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    timing_hygiene()
    X, y = digits(torch.float32)
    held = (X[:256], y[:256])
    per_epoch = math.ceil(len(X) / BATCH)
    ratios, own, plain = {}, {}, None
    cockpit = None if args.held_only else _cockpit()
    if not args.held_only:
        configs = {
            "unmonitored against unmonitored (the noise floor of these ratios)": _unmonitored,
            "landscope default (loss every step, first-order tier every 25 steps)": _landscope(),
            "landscope first-order tier every step": _landscope(every=1),
            "landscope first-order tier every 10 steps": _landscope(every=10),
            "landscope first-order tier every 16 steps": _landscope(every=16),
        }
        plain, ratios, own = _compare(configs, X, y, args.epochs * per_epoch, args.repeats)
        if cockpit is not None:
            ratios.update(_compare(cockpit, X, y, args.cockpit_epochs * per_epoch,
                                   args.cockpit_repeats)[1])
    amortised = (f"landscope default + held batch of 256, whole {args.held_steps:,}-step run "
                 "(amortised)")
    watched = _landscope(loss_fn=nn.functional.cross_entropy, held=held)
    healthy = {}
    sgd = amortised.replace("whole", f"SGD lr {args.sgd_lr:g} (batch sharpness on 4 chunks of "
                            f"{BATCH}), whole")
    for optimizer_class, lr, name in (
            (torch.optim.Adam, LR, amortised),
            (torch.optim.Adam, args.stall_lr, amortised.replace(
                "whole", f"Adam lr {args.stall_lr:g} (a stalling loss), whole")),
            (torch.optim.SGD, args.sgd_lr, sgd)):
        if not lr:
            continue
        held_plain, runs, closed = _compare({name: watched}, X, y, args.held_steps,
                                            args.held_repeats, lr=lr,
                                            optimizer_class=optimizer_class)
        plain = plain or held_plain
        healthy.update(runs)
        own.update(closed)
        lockstep = name.replace("(amortised)", "(amortised), interleaved step by step")
        healthy[lockstep], own[lockstep] = _interleaved(X, y, args.held_steps, watched,
                                                        args.held_repeats, lr, optimizer_class)
    rows = [*ratios.items(), *healthy.items()]
    if not args.held_only:
        steps = _curvature_seconds(held) / plain
        rows.append(("one curvature measurement (held batch of 256), in training steps",
                     (steps, None)))
    text = _table(rows, plain, args, cockpit is not None, own)
    publish(text, append=not args.no_results)
    return 0


# ---------------------------------------------------------------------- the runs
def _plain_step(out, target, optimizer, step):
    nn.functional.cross_entropy(out, target).backward()
    optimizer.step()


def _run(X, y, steps, watch=None, lr=LR, optimizer_class=torch.optim.Adam):
    """A W2 training run of ``steps`` steps (shuffled epochs of batches of :data:`BATCH`, the
    ``optimizer_class`` at ``lr``): (wall seconds per step, CPU seconds per step, ``close()``'s
    result).

    ``watch(model, optimizer, run_dir)`` gives ``(step_fn, close)``; ``step_fn(out, target,
    optimizer, step)`` does the backward pass and the optimiser step, watched; ``close()`` ends
    the watch (timed) and returns a function that reads what it recorded (not timed).
    """
    torch.manual_seed(0)
    model = WORKLOADS["W2"].make()
    optimizer = optimizer_class(model.parameters(), lr=lr)
    shuffle = torch.Generator().manual_seed(1)
    with tempfile.TemporaryDirectory() as run_dir:
        start, cpu = time.perf_counter(), time.process_time()
        step_fn, close = watch(model, optimizer, run_dir) if watch else (_plain_step, None)
        done = 0
        while done < steps:
            for index in torch.randperm(len(X), generator=shuffle).split(BATCH)[:steps - done]:
                optimizer.zero_grad(set_to_none=True)
                step_fn(model(X[index]), y[index], optimizer, done)
                done += 1
        report = close() if close else None
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        return wall / steps, cpu / steps, report() if report else None


def _unmonitored(model, optimizer, run_dir):
    return _plain_step, None


def _landscope(**options):
    def watch(model, optimizer, run_dir):
        monitor = Monitor(model, optimizer, run_dir, **options)

        def step_fn(out, target, opt, step):
            loss = nn.functional.cross_entropy(out, target)
            loss.backward()
            opt.step()
            monitor.step(loss)

        def close():
            monitor.close()
            return lambda: _summary(monitor.record.meta)

        return step_fn, close
    return watch


def _summary(meta: dict) -> dict:
    """Curvature events and time shares of a closed Monitor's record."""
    seconds = meta["seconds"]
    return {"events": len(meta["events"]),
            "measured": sum(e.get("products", 0) > 0 for e in meta["events"]),
            "products": sum(e.get("products", 0) for e in meta["events"]),
            "batch": sum(e.get("batch_chunks", 0) > 0 for e in meta["events"]),
            "curvature": seconds.get("curvature", 0.0) / seconds["total"],
            "share": seconds["monitor"] / seconds["total"]}


def _compare(configs, X, y, steps, repeats, lr=LR, optimizer_class=torch.optim.Adam):
    """(median plain wall seconds per step, {config: (wall ratio, CPU ratio)}, closer results).

    Each repeat runs every configuration next to an unmonitored run, in alternating order (so a
    drift in the machine's load hits both sides alike); ratios are medians over the repeats.
    """
    epoch = math.ceil(len(X) / BATCH)
    _run(X, y, epoch, lr=lr, optimizer_class=optimizer_class)  # warm-up
    for watch in configs.values():
        _run(X, y, epoch, watch, lr, optimizer_class)
    plain, ratios = [], {name: ([], []) for name in configs}
    results = {name: [] for name in configs}
    for repeat in range(repeats):
        for name, watch in configs.items():
            if repeat % 2:
                *watched, result = _run(X, y, steps, watch, lr, optimizer_class)
                base = _run(X, y, steps, lr=lr, optimizer_class=optimizer_class)[:2]
            else:
                base = _run(X, y, steps, lr=lr, optimizer_class=optimizer_class)[:2]
                *watched, result = _run(X, y, steps, watch, lr, optimizer_class)
            results[name].append(result)
            plain.append(base[0])
            for k in range(2):
                ratios[name][k].append(watched[k] / base[k])
    return (statistics.median(plain),
            {name: tuple(statistics.median(v) for v in pair) for name, pair in ratios.items()},
            {name: _pooled(found) for name, found in results.items() if found[0]})


def _interleaved(X, y, steps, watch, repeats, lr=LR, optimizer_class=torch.optim.Adam):
    """(median (wall ratio, None), pooled summaries) of a watched run and an unmonitored twin
    advancing together on the same batches, one step each, in alternating order.

    A drift in the machine's speed (on this VM a 2-thread step takes 2.8-4.3 ms from one run to
    the next) hits both sides of every step alike, so the ratio of their summed step times
    compares like with like far more tightly than whole runs side by side. The Monitor's clock
    leaves out the twin's steps, so its budget sees only the training it watches. The two runs
    must end bit-identical (the Monitor only observes); anything else is an error.
    """
    ratios, summaries, twin = [], [], [0.0]
    clock = SimpleNamespace(perf_counter=lambda: time.perf_counter() - twin[0])
    for _ in range(repeats):
        twin[0] = 0.0
        seconds = [0.0, 0.0]
        pairs = []
        for _side in range(2):
            torch.manual_seed(0)
            model = WORKLOADS["W2"].make()
            pairs.append((model, optimizer_class(model.parameters(), lr=lr)))
        shuffle = torch.Generator().manual_seed(1)
        with tempfile.TemporaryDirectory() as run_dir, mock.patch.object(monitor_module, "time",
                                                                          clock):
            start = time.perf_counter()
            step_fn, close = watch(*pairs[1], run_dir)
            seconds[1] += time.perf_counter() - start
            done = 0
            while done < steps:
                for index in torch.randperm(len(X), generator=shuffle).split(BATCH)[:steps - done]:
                    for side in (0, 1) if done % 2 else (1, 0):
                        model, optimizer = pairs[side]
                        start = time.perf_counter()
                        optimizer.zero_grad(set_to_none=True)
                        (step_fn if side else _plain_step)(model(X[index]), y[index], optimizer,
                                                           done)
                        took = time.perf_counter() - start
                        seconds[side] += took
                        if side == 0:
                            twin[0] += took
                    done += 1
            start = time.perf_counter()
            report = close()
            seconds[1] += time.perf_counter() - start
            summaries.append(report())
        if not all(torch.equal(p, q) for p, q in zip(pairs[0][0].parameters(),
                                                      pairs[1][0].parameters(), strict=True)):
            raise RuntimeError("the watched run diverged from its unmonitored twin")
        ratios.append(seconds[1] / seconds[0])
    return (statistics.median(ratios), None), _pooled(summaries)


def _pooled(summaries: list[dict]) -> dict:
    """Summaries of repeated runs in one: medians of the time shares, the runs with curvature
    events and with products among all, the products and batch-sharpness measurements of all
    runs."""
    return {"runs": len(summaries),
            "events": sum(s["events"] > 0 for s in summaries),
            "measured": sum(s["measured"] > 0 for s in summaries),
            "products": sum(s["products"] for s in summaries),
            "batch": sum(s["batch"] for s in summaries),
            "curvature": statistics.median(s["curvature"] for s in summaries),
            "share": statistics.median(s["share"] for s in summaries)}


def _curvature_seconds(held) -> float:
    """Median wall time of one stalled-loss curvature measurement on the untrained W2 model."""
    torch.manual_seed(0)
    model = WORKLOADS["W2"].make()
    optimizer = torch.optim.Adam(model.parameters(), lr=LR)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        measure(model, nn.functional.cross_entropy, held, optimizer, smallest=True,
                max_products=100)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------- Cockpit
def _cockpit():
    """Cockpit configurations, or None when cockpit-for-pytorch is not installed."""
    try:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from backpack import extend
            from cockpit import Cockpit, quantities
            from cockpit.utils import schedules
            from cockpit.utils.configuration import configuration
    except ImportError:
        return None

    def watch(quantities_for):
        def make(model, optimizer, run_dir):
            extend(model)
            mean, each = extend(nn.CrossEntropyLoss()), nn.CrossEntropyLoss(reduction="none")
            cockpit = Cockpit(model.parameters(), quantities=quantities_for())

            def step_fn(out, target, opt, step):
                loss = mean(out, target)
                info = {"batch_size": out.shape[0], "individual_losses": each(out, target),
                        "loss": loss, "optimizer": opt}
                with cockpit(step, info=info):
                    loss.backward(create_graph=cockpit.create_graph(step))
                opt.step()

            return step_fn, None
        return make

    return {
        "Cockpit economy, every step": watch(lambda: configuration("economy")),
        "Cockpit economy, every 16 steps": watch(
            lambda: configuration("economy", track_schedule=schedules.linear(16))),
        "Cockpit λ_max gauge (HessMaxEV) alone, every step": watch(
            lambda: [quantities.HessMaxEV(track_schedule=schedules.linear(1))]),
    }


# ---------------------------------------------------------------------- the report
def _table(rows, plain, args, with_cockpit, own) -> str:
    machine = machine_info()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    lines = [
        f"## Monitor overhead (issues 5, 9, 12) — {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {machine['kind']} ({machine['cpu']}), torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads, load average {load}. Command: "
        f"`python benchmarks/bench_monitor.py "
        + ("--held-only " if args.held_only else f"--repeats {args.repeats} --epochs "
           f"{args.epochs} --cockpit-repeats {args.cockpit_repeats} --cockpit-epochs "
           f"{args.cockpit_epochs} ")
        + f"--held-steps {args.held_steps} --held-repeats {args.held_repeats} --stall-lr "
        f"{args.stall_lr:g} --sgd-lr {args.sgd_lr:g}`.",
        f"W2 training step (Adam, batch {BATCH}), unmonitored: {plain * 1e3:.3f} ms. Ratios are "
        "medians of paired runs (monitored / unmonitored, same seed, next to each other, "
        "alternating order), by wall clock and by this process's CPU time (which a busy machine "
        "disturbs less); 'self-timed' is the share of the run spent inside the Monitor's own "
        "code (hooks, step, flushes), a floor that excludes the framework's hook dispatch, median "
        "over the runs. 'Interleaved' rows advance the watched run and an unmonitored twin "
        "together, one step each, and divide their summed step times (median over runs).",
        "",
        "| configuration | wall-clock ratio | CPU-time ratio | self-timed | anchor |",
        "|---|---|---|---|---|",
    ]
    anchors = {"noise floor": "1 (any spread is noise)",
               "landscope default": "≤ 1.05 (target)",
               "tier every step": "Cockpit economy every step: 1.52",
               "tier every 16 steps": "Cockpit economy every 16: 1.05",
               "amortised": "< 1.05 (target)", "HessMaxEV": "Cockpit paper: 7.1",
               "Cockpit economy, every step": "paper: 1.52",
               "Cockpit economy, every 16": "paper: 1.05", "curvature": "—"}
    for name, (wall, cpu) in rows:
        anchor = next((a for key, a in anchors.items() if key in name), "")
        unit = " steps" if "curvature measurement" in name else "×"
        cpu_text = "—" if cpu is None else f"{cpu:.3f}×"
        mine = own.get(name) or {}
        timed = f"{mine['share']:.1%}" if mine else "—"
        if "events" in mine and "amortised" in name:
            timed += (f" (curvature begun in {mine['events']} of {mine['runs']} runs, with "
                      f"products in {mine['measured']}, {mine['products']} products in all, "
                      f"median {mine['curvature']:.1%} of the run"
                      + (f"; batch sharpness in {mine['batch']} measurements" if "SGD" in name
                         else "") + ")")
        lines.append(f"| {name} | {wall:.3f}{unit} | {cpu_text} | {timed} | {anchor} |")
    if not with_cockpit and not args.held_only:
        lines.append("| Cockpit | not installed in this venv | | | anchors above |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

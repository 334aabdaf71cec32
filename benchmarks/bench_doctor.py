"""Benchmark: the doctor measured like a debugger on the fault suite (issue 12).

Runs every case of :mod:`landscope.doctor.faults` (ten fault classes and healthy runs × MLP, CNN,
small transformer × seeds), diagnoses each run and reports: which primary finding each cell got,
the confusion matrix (expected → primary finding), and the detection rate (faulty runs whose
primary finding is the expected one) and false-alarm rate (healthy runs with any finding), per
architecture and overall, against the targets: ≥ 95 % detected, ≤ 5 % false alarms. Then the
remedy control (:mod:`landscope.doctor.repairs`): every faulty run retrained with the doctor's
prescribed remedy and with a random one, at the same budget, and how often the prescription
wins, against the target of ≥ 80 %. Results are appended to ``RESULTS.md``. Timing is not
measured, so no timing hygiene is needed.

    .venv/bin/python benchmarks/bench_doctor.py                    # 3 seeds: a few minutes
    .venv/bin/python benchmarks/bench_doctor.py --seeds 1 --architectures mlp --no-results
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from harness import machine_info, publish  # noqa: E402

from landscope.doctor.faults import (  # noqa: E402
    ARCHITECTURES,
    FAULTS,
    HEALTHY,
    FaultRun,
    cases,
    run_suite,
    score,
)
from landscope.doctor.repairs import MARGIN, Repair, repair_suite  # noqa: E402

DETECTION_TARGET, FALSE_ALARM_TARGET, REPAIR_TARGET = 0.95, 0.05, 0.80


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed, "
                        "first-seed + 1, ...: others than those the doctor was tuned on (0-2)")
    parser.add_argument("--faults", default=",".join(FAULTS), help="comma-separated")
    parser.add_argument("--architectures", default=",".join(ARCHITECTURES),
                        help="comma-separated")
    parser.add_argument("--no-repairs", action="store_true", help="skip the remedy control")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    suite = cases(args.faults.split(","), args.architectures.split(","), seeds)
    start = time.perf_counter()
    results = run_suite(suite, progress=_show_progress)
    for r in results:
        print(f"{r.case.name:34s} expected {r.expect:20s} primary {r.primary:20s} "
              f"({', '.join(r.findings[1:]) or '-'}; {r.seconds:.1f} s)", flush=True)
    trials = [] if args.no_repairs else repair_suite(results, progress=_show_progress)
    for t in trials:
        print(f"{t.case.name:34s} prescribed {t.prescribed or '-':18s} {t.prescribed_loss:9.4g}  "
              f"random {t.drawn:18s} {t.drawn_loss:9.4g}  {'wins' if t.wins else 'does not win'}",
              flush=True)
    text = _report(results, trials, args, time.perf_counter() - start)
    publish(text, append=not args.no_results)
    return 0


def _show_progress(done: int, total: int | None, note: str = "") -> None:
    """One line per finished run (of the suite, then of the remedy control): count and name."""
    print(f"[{done}/{total}] {note}", flush=True)


def _report(results: list[FaultRun], trials: list[Repair], args, seconds: float) -> str:
    machine = machine_info()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    command = (f"python benchmarks/bench_doctor.py --seeds {args.seeds}"
               + (f" --first-seed {args.first_seed}" if args.first_seed else "")
               + (" --no-repairs" if args.no_repairs else "")
               + (f" --faults {args.faults}" if args.faults != ",".join(FAULTS) else "")
               + (f" --architectures {args.architectures}"
                  if args.architectures != ",".join(ARCHITECTURES) else ""))
    lines = [f"## The doctor on the fault suite (issue 12) — "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"- machine: {machine['kind']} ({machine['cpu']}), torch {torch.__version__}, one "
             f"thread per run, load average {load}.",
             f"- command: `{command}`; {len(results)} runs and {2 * len(trials)} remedy trials "
             f"in {seconds:.0f} s.", "",
             *_cells(results), "", *_confusion(results), "", *_rates(results), "",
             *_repairs(trials)]
    return "\n".join(lines) + "\n"


def _cells(results: list[FaultRun]) -> list[str]:
    """Fault × architecture: the primary finding of each seed, ✓ where it is the expected one."""
    archs = list(dict.fromkeys(r.case.architecture for r in results))
    lines = ["| fault | expected | " + " | ".join(archs) + " |",
             "|---|---|" + "---|" * len(archs)]
    for fault in dict.fromkeys(r.case.fault for r in results):
        row = [r for r in results if r.case.fault == fault]
        cells = ["; ".join(("✓ " if r.primary == r.expect else "✗ ") + r.primary
                           for r in row if r.case.architecture == a) for a in archs]
        lines.append(f"| {fault} | {row[0].expect} | " + " | ".join(cells) + " |")
    return lines


def _confusion(results: list[FaultRun]) -> list[str]:
    matrix = score(results).confusion
    expected = list(dict.fromkeys(r.expect for r in results))
    seen = {got for _, got in matrix}
    found = [e for e in expected if e in seen] + sorted(seen - set(expected))
    lines = ["Confusion matrix (rows: expected primary finding; columns: the doctor's primary "
             f"finding, `{HEALTHY}` for none):", "",
             "| expected \\ primary | " + " | ".join(found) + " |",
             "|---|" + "---|" * len(found)]
    for e in expected:
        lines.append(f"| {e} | " + " | ".join(str(matrix.get((e, g), "")) for g in found) + " |")
    return lines


def _rates(results: list[FaultRun]) -> list[str]:
    lines = ["| architecture | detected (right primary finding) | false alarms on healthy runs |",
             "|---|---|---|"]
    groups = {a: [r for r in results if r.case.architecture == a]
              for a in dict.fromkeys(r.case.architecture for r in results)}
    for name, group in [*groups.items(), ("all", results)]:
        s = score(group)
        lines.append(f"| {name} | {s.detected}/{s.faulty} = {s.detection_rate:.0%} | "
                     f"{s.alarms}/{s.healthy} = {s.false_alarm_rate:.0%} |")
    s = score(results)
    lines += ["", f"Targets: detection {s.detection_rate:.0%} "
              f"{_verdict(s.detection_rate >= DETECTION_TARGET)} ≥ {DETECTION_TARGET:.0%}; false "
              f"alarms {s.false_alarm_rate:.0%} "
              f"{_verdict(s.false_alarm_rate <= FALSE_ALARM_TARGET)} ≤ {FALSE_ALARM_TARGET:.0%}."]
    return lines


def _repairs(trials: list[Repair]) -> list[str]:
    """Per fault: how often the prescription beat the random remedy, and the median final
    losses of the run as it was, under the prescription and under the random remedy."""
    if not trials:
        return ["The remedy control was not run (--no-repairs)."]
    lines = ["Remedy control: each faulty run retrained from its seed for the same steps with "
             "the doctor's prescribed remedy and with a random one (final training loss; a win "
             f"is lower by more than {MARGIN:.0%}):", "",
             "| fault | prescribed (count) | prescription wins | median final loss: as it was "
             "→ prescribed / random |", "|---|---|---|---|"]
    for fault in dict.fromkeys(t.case.fault for t in trials):
        group = [t for t in trials if t.case.fault == fault]
        named = Counter(t.prescribed or "nothing" for t in group)
        lines.append(
            f"| {fault} | {', '.join(f'{k} ({n})' for k, n in named.most_common())} | "
            f"{sum(t.wins for t in group)}/{len(group)} | "
            f"{statistics.median(t.fault_loss for t in group):.3g} → "
            f"{statistics.median(t.prescribed_loss for t in group):.3g} / "
            f"{statistics.median(t.drawn_loss for t in group):.3g} |")
    wins = sum(t.wins for t in trials)
    share = wins / len(trials)
    lines += ["", f"The prescription wins on {wins}/{len(trials)} = {share:.0%} of faulty runs "
              f"({_verdict(share >= REPAIR_TARGET)} ≥ {REPAIR_TARGET:.0%})."]
    return lines


def _verdict(ok: bool) -> str:
    return "meets" if ok else "misses"


if __name__ == "__main__":
    sys.exit(main())

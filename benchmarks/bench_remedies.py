"""Benchmark: every remedy the doctor knows, tried on one fault of the suite (issue 12).

The fault suite's remedy control (``bench_doctor.py``) tries two remedies per faulty run: the
prescribed one and a random one. This tries them all on one fault, each retrained from the same
seeds for the same steps (:func:`landscope.doctor.repairs.trial`), architecture changes included
(ReLU with He initialisation, batch normalisation, fewer layers, a fresh initialisation), which a
remedy trial from a checkpoint (``landscope escape``) cannot try. The default, ``vanishing``, is
the seed notes' second worked case: a 10-layer sigmoid network trained with SGD. Reported per
remedy and architecture: the median final training loss over the seeds, against the run as it
was. Results are appended to ``RESULTS.md``; timing is not measured.

    .venv/bin/python benchmarks/bench_remedies.py                       # vanishing, mlp and cnn
    .venv/bin/python benchmarks/bench_remedies.py --fault saddle --architectures mlp --seeds 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from harness import machine_info, publish  # noqa: E402

from landscope.doctor.faults import FAULTS, Case, cases  # noqa: E402
from landscope.doctor.knowledge import TEXT  # noqa: E402
from landscope.doctor.repairs import DRAWN, trial  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--fault", default="vanishing", choices=[f for f in FAULTS
                                                                 if f != "healthy"])
    parser.add_argument("--architectures", default="mlp,cnn", help="comma-separated")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per cell (0, 1, ...)")
    parser.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    archs = args.architectures.split(",")
    suite = cases([args.fault], archs, range(args.seeds))
    start = time.perf_counter()
    losses: dict[str | None, dict[str, list[float]]] = {}
    for remedy in (None, *DRAWN):
        losses[remedy] = {a: [] for a in archs}
        for case in suite:
            losses[remedy][case.architecture].append(trial(case, remedy))
        print(f"{remedy or 'as it is':22s} " + "  ".join(
            f"{a} {statistics.median(v):.4g}" for a, v in losses[remedy].items()), flush=True)
    text = _report(args, suite, losses, time.perf_counter() - start)
    publish(text, append=not args.no_results)
    return 0


def _report(args, suite: list[Case], losses: dict, seconds: float) -> str:
    machine = machine_info()
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    archs = list(next(iter(losses.values())))
    expected = FAULTS[args.fault].expect
    prescribed = [r.key for r in TEXT[expected]["remedies"]]
    order = sorted(losses, key=lambda k: statistics.median(
        [statistics.median(v) for v in losses[k].values()]))
    lines = [f"## Every remedy on the `{args.fault}` fault (issue 12) — "
             f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC", "",
             f"- machine: {machine['kind']} ({machine['cpu']}), torch {torch.__version__}, one "
             f"thread per run, load average {load}.",
             f"- command: `python benchmarks/bench_remedies.py --fault {args.fault} "
             f"--architectures {args.architectures} --seeds {args.seeds}`; "
             f"{len(losses) * len(suite)} runs of 300 steps in {seconds:.0f} s.",
             f"- the doctor's remedies for `{expected}`, in its order: "
             f"{', '.join(prescribed)}.", "",
             "| remedy | " + " | ".join(f"{a}: median final loss" for a in archs) + " |",
             "|---|" + "---|" * len(archs)]
    for key in order:
        mark = " (prescribed)" if key in prescribed else ""
        lines.append(f"| {key or 'as it is'}{mark} | " + " | ".join(
            f"{statistics.median(losses[key][a]):.4g}" for a in archs) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

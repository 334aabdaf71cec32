"""Timing and reporting machinery of the benchmarks, independent of the tools measured.

Round-robin runs of the tools of one measure (:func:`run_group`: median wall and CPU time, HVPs
counted, relative errors), result rows, markdown/rich tables, load sampling, machine and versions.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import platform
import statistics
import threading
import time
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch

REPEAT_LIMIT_S = 20.0  # a run longer than this is not repeated

# ================================================================================ small helpers


def _arr(x) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        return x.detach().cpu().double().numpy()
    return np.asarray(x, dtype=np.float64)


def _fmt(x, digits=3) -> str:
    if x is None:
        return "–"
    if isinstance(x, str):
        return x
    if isinstance(x, (int, np.integer)):
        return str(int(x))
    if not math.isfinite(x):
        return str(x)
    if x == 0:
        return "0"
    if abs(x) >= 1e4 or abs(x) < 1e-3:
        return f"{x:.1e}"
    return f"{x:.{digits}g}"


def _flat(ts) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in ts])


def _clear_grads(model) -> None:
    for p in model.parameters():
        p.grad = None


class LoadSampler:
    """1-minute load average, sampled every 10 s in a daemon thread."""

    def __init__(self, every: float = 10.0):
        self.samples = [os.getloadavg()[0]]
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, args=(every,), daemon=True)
        self._t.start()

    def _run(self, every):
        while not self._stop.wait(every):
            self.samples.append(os.getloadavg()[0])

    def stop(self) -> str:
        self._stop.set()
        s = self.samples + [os.getloadavg()[0]]
        return (f"min {min(s):.2f}, median {statistics.median(s):.2f}, max {max(s):.2f} "
                f"({len(s)} samples)")


def publish(text: str, append: bool = True) -> None:
    """Print a benchmark's report and, unless told not to, append it to RESULTS.md."""
    print(text)
    if append:
        results = Path(__file__).resolve().parent / "RESULTS.md"
        with open(results, "a") as stream:
            stream.write("\n" + text)
        print(f"appended to {results}")


def machine_info() -> dict:
    cpu = platform.processor() or "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = ""
    with contextlib.suppress(OSError), open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 2**20:.0f} GiB"
                break
    vm = False
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as fh:
        vm = any(line.startswith("flags") and " hypervisor" in line for line in fh)
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    kind = f"{os.cpu_count()}-core CPU {'VM' if vm else 'machine'}, {gpu}"
    return {"kind": kind, "cpu": cpu, "cores": os.cpu_count(), "mem": mem,
            "python": platform.python_version(), "torch": torch.__version__,
            "threads": torch.get_num_threads()}


def versions() -> dict:
    out = {}
    for dist in ("landscope", "PyHessian", "curvlinops-for-pytorch", "hessian-eigenthings",
                 "numpy", "scipy"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = None
    return out


# ================================================================================ tables


class Table:
    def __init__(self, title: str, headers: list[str]):
        self.title, self.headers, self.rows = title, headers, []

    def add(self, *cells) -> None:
        self.rows.append([_fmt(c) if not isinstance(c, str) else c for c in cells])

    def markdown(self) -> str:
        out = [f"### {self.title}", "", "| " + " | ".join(self.headers) + " |",
               "|" + "---|" * len(self.headers)]
        out += ["| " + " | ".join(c.replace("|", "/") for c in r) + " |" for r in self.rows]
        return "\n".join(out) + "\n"

    def show(self) -> None:
        try:
            from rich.console import Console
            from rich.table import Table as RTable
        except ImportError:
            print(self.markdown())
            return
        t = RTable(title=self.title, title_justify="left")
        for h in self.headers:
            t.add_column(h, overflow="fold")
        for r in self.rows:
            t.add_row(*r)
        Console(width=220).print(t)


# ================================================================================ measuring


@dataclass
class Row:
    measure: str
    tool: str
    method: str
    time: float | None = None
    cpu: float | None = None
    hvps: int | None = None
    err: float | None = None
    err_worst: float | None = None
    runs: int = 0
    notes: str = ""
    value: object = None
    extra: dict = field(default_factory=dict)

    @property
    def ms_per_hvp(self):
        if self.time is None or not self.hvps:
            return None
        return 1e3 * self.time / self.hvps


@dataclass
class Pending:
    """One measure of one tool, waiting to be run in a group (see :func:`run_group`)."""

    measure: str
    tool: str
    method: str
    fn: object
    counter: object
    runs: int
    err_fn: object = None
    note_fn: object = None
    log: object = print
    extra: dict = field(default_factory=dict)


def measure(measure_name, tool, method, fn, counter, runs, err_fn=None, note_fn=None,
            log=print) -> Pending:
    return Pending(measure_name, tool, method, fn, counter, runs, err_fn, note_fn, log)


def run_group(pendings: list[Pending]) -> list[Row]:
    """Run the tools of one measure round-robin: run 1 of every tool, then run 2, ...

    Load changes on the shared machine then hit all tools alike. A tool stops repeating after a
    run over REPEAT_LIMIT_S; ``fn(i)`` gets the run index (seeds), and the global torch seed is set
    to 1000 + i before each run (PyHessian draws its start vectors from the global generator).
    """
    state = {id(p): {"results": [], "error": None} for p in pendings}
    for i in range(max((p.runs for p in pendings), default=0)):
        for p in pendings:
            st = state[id(p)]
            if st["error"] or i >= p.runs or (st["results"]
                                              and st["results"][-1][0] > REPEAT_LIMIT_S):
                continue
            gc.collect()
            torch.manual_seed(1000 + i)
            c0 = p.counter()
            t0, p0 = time.perf_counter(), time.process_time()
            try:
                out = p.fn(i)
            except Exception as exc:  # a tool failing is a result too
                st["error"] = f"{type(exc).__name__}: {exc}".replace("\n", " ")[:160]
                st["runs"] = i + 1
                p.log(f"    {p.measure} / {p.tool} / {p.method}: error {st['error']}")
                continue
            wall, cpu = time.perf_counter() - t0, time.process_time() - p0
            st["results"].append((wall, cpu, p.counter() - c0, out))
    return [_finish(p, state[id(p)]) for p in pendings]


def _finish(p: Pending, st: dict) -> Row:
    if st["error"]:
        return Row(p.measure, p.tool, p.method, runs=st["runs"], notes=f"error: `{st['error']}`",
                   extra=p.extra)
    results = st["results"]
    errs = []
    for r in results:
        try:
            errs.append(p.err_fn(r[3]) if p.err_fn else None)
        except Exception as exc:
            p.log(f"    {p.measure} / {p.tool}: could not score the result: {exc!r}")
            errs.append(None)
    order = sorted(range(len(results)), key=lambda j: results[j][0])
    mid = order[(len(order) - 1) // 2] if len(order) != 2 else order[1]
    wall, cpu, hv, out = results[mid]
    row = Row(p.measure, p.tool, p.method, wall, cpu, hv, errs[mid],
              max((e for e in errs if e is not None), default=None), len(results),
              value=out, extra=p.extra)
    if p.note_fn:
        with contextlib.suppress(Exception):
            row.notes = p.note_fn(out)
    p.log(f"    {p.measure:18s} {p.tool:14s} {p.method[:60]:60s} {wall:8.3f} s  HVPs {hv}  "
          f"err {_fmt(row.err)}")
    return row

"""Peak memory of one k=5 top-eigenpair call per tool, each in a fresh subprocess.

:func:`memory_probe` re-executes ``bench_core.py`` with the hidden flag ``--_memprobe W:tool``;
its ``main()`` hands over to :func:`_memprobe_main`, which makes the call and prints the RSS
high-water mark above the RSS after loading model and data as one JSON line.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import subprocess
import sys
import threading
import warnings
from pathlib import Path

import scipy.sparse.linalg as sla
import torch
from peers import PlainHVP
from workloads import build_workload, timing_hygiene

BENCH_CORE = Path(__file__).resolve().parent / "bench_core.py"


def memory_probe(name: str, tool: str) -> dict:
    """Run one k=5 top-eigenpair call in a fresh subprocess; report its RSS high-water mark."""
    cmd = [sys.executable, str(BENCH_CORE), "--_memprobe", f"{name}:{tool}"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
        line = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
        if not line:
            return {"error": (out.stderr.strip().splitlines() or ["no output"])[-1][:160]}
        return json.loads(line[-1])
    except subprocess.TimeoutExpired:
        return {"error": "timeout"}


def _memprobe_main(spec: str) -> None:
    name, tool = spec.split(":")
    timing_hygiene(warn=False)
    warnings.simplefilter("ignore")
    model, X, y, crit = build_workload(name)
    params = list(model.parameters())
    with torch.no_grad():
        crit(model(X), y)
    if tool == "pyhessian":
        import pyhessian
    elif tool == "curvlinops":
        from curvlinops import HessianLinearOperator
    elif tool == "landscope":
        import landscope as ls
    gc.collect()
    exact_peak = _reset_peak()
    rss0 = _rss_now()
    sampler = None if exact_peak else _PeakSampler()
    if tool == "plain":
        A = PlainHVP(model, X, y, crit).scipy()
        sla.eigsh(A, k=5, which="LA", tol=1e-3)
    elif tool == "pyhessian":
        pyhessian.hessian(model, crit, data=(X, y), cuda=False).eigenvalues(top_n=5, tol=1e-3)
    elif tool == "curvlinops":
        A = HessianLinearOperator(model, crit, params, [(X, y)]).to_scipy()
        sla.eigsh(A, k=5, which="LA", tol=1e-3)
    elif tool == "landscope":
        obj = ls.Objective.from_model(model, torch.nn.functional.cross_entropy, (X, y))
        ls.spectrum(obj, k=5, which="largest", eig_rtol=1e-3)
    peak = _peak_rss() if exact_peak else sampler.stop()
    print(json.dumps({"extra_MiB": round((peak - rss0) / 2**20, 1),
                      "base_MiB": round(rss0 / 2**20, 1),
                      "how": "VmHWM after reset" if exact_peak else "psutil sampled every 2 ms"}))


def _reset_peak() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0: write 5 to clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return _peak_rss() <= _rss_now() + 2**20
    except OSError:
        return False


def _peak_rss() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class _PeakSampler:
    def __init__(self):
        self.peak, self._stop = _rss_now(), threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self):
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, _rss_now())

    def stop(self) -> int:
        self._stop.set()
        self._t.join()
        return max(self.peak, _rss_now())


def _rss_now() -> int:
    try:
        import psutil

        return psutil.Process().memory_info().rss
    except ImportError:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

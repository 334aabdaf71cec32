"""Core benchmark: landscope next to PyHessian, curvlinops (and a plain torch+scipy baseline).

One process run measures, side by side on the workloads W1-W3 of ``workloads.py``:

  (6) the cost floor: one full-data gradient, and each tool's HVP as a multiple of it;
  (1) top-1 eigenvalue, (2) top-5 eigenvalues, (3) most negative eigenvalue,
  (4) trace, (5) spectral density at equal probes and Lanczos steps,
  and the peak memory of a k=5 eigenpair call (one subprocess per tool, RSS high-water mark).

Reference values are computed here and cached on disk (W1: dense Hessian + eigh; W2/W3: ARPACK
with tight tolerance on a cached-graph HVP), so every row carries a relative error. Times are wall
clock, median of 3 runs (a run over 20 s is not repeated); HVPs are counted by wrapping each tool's
own HVP entry point. The headline table holds the targets; all tables go to stdout and a dated
section is appended to ``benchmarks/RESULTS.md``.

The timing and reporting machinery is in ``harness.py``, the baseline and the peers' hooks in
``peers.py``, the peak-memory subprocess in ``memprobe.py`` (it re-runs this script with the
hidden flag ``--_memprobe``); this file holds the measures, references and the report.

Run it as ``make bench`` (creates ``benchmarks/.venv-peers`` if missing), or
``benchmarks/.venv-peers/bin/python benchmarks/bench_core.py [--workloads W1,W2] [--quick]
[--no-peers]``: the script re-executes itself with the timing-hygiene environment when that is
missing.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import hashlib
import json
import math
import statistics
import sys
import time
import warnings
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    from workloads import restart_with_hygiene

    restart_with_hygiene()

import numpy as np  # noqa: E402
import scipy.sparse.linalg as sla  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(HERE))
from harness import (  # noqa: E402
    REPEAT_LIMIT_S,
    LoadSampler,
    Pending,
    Row,
    Table,
    _arr,
    _clear_grads,
    _flat,
    _fmt,
    machine_info,
    measure,
    run_group,
    versions,
)
from memprobe import _memprobe_main, memory_probe  # noqa: E402
from peers import (  # noqa: E402
    Counters,
    PlainHVP,
    import_peers,
    in_context,
    second_order_context,
    shift_trick_iterations,
    torch_eig_shim,
)
from workloads import HYGIENE_ENV, WORKLOADS, build_workload, cache_dir, timing_hygiene  # noqa: E402

RESULTS_MD = HERE / "RESULTS.md"
# Most power iterations the shift trick gets to come within rel. 1e-3 of lambda_min (per workload:
# an iteration costs ~3 ms on W1, ~10 ms on W2, ~100 ms on W3, ~0.5-1.5 s on W4 and W5). Below
# 300, PyHessian's as-a-user-runs-it row (maxIter 300) is left out: it would cost more than the cap.
LMIN_CAP = {"W1": 4000, "W2": 3000, "W3": 1000, "W4": 150, "W5": 80}
# The optional measures (--measures); the cost floor and the setup rows always run.
MEASURES = ("top1", "top5", "lmin", "trace", "density", "memory")
MATH_KERNEL = "under sdpa_kernel(MATH)"
TARGETS = {"hvp_ratio": {"W2": 1.6, "W3": 2.3}, "top5_speedup": 3.0, "lmin_speedup": 4.0,
           "density_speedup": 2.0}

# ================================================================================ references


def _weights_key(model) -> str:
    h = hashlib.sha256()
    for k, t in model.state_dict().items():
        h.update(k.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def references(name: str, model, X, y, crit, log, context, trace: bool = True) -> dict:
    """Reference spectrum (and trace, if ``trace``) of a workload, cached on disk by a hash of its
    weights. ``context`` is the one the plain cached-graph HVP runs in (see
    :func:`peers.second_order_context`)."""
    key = _weights_key(model)
    path = cache_dir() / f"ref-{name}-{key}.json"
    eig_path = cache_dir() / f"ref-{name}-{key}-eigs.npy"
    ref = json.loads(path.read_text()) if path.exists() else {}
    if "top" in ref and ("trace" in ref or not trace):
        if eig_path.exists():
            ref["all_eigs"] = np.load(eig_path)
        return ref
    log(f"[{name}] computing reference values (cached afterwards in the user cache) ...")
    t0 = time.perf_counter()
    H = in_context(context, PlainHVP)(model, X, y, crit)
    if "top" not in ref:
        with torch.no_grad():
            ref.update(loss=crit(model(X), y).item(), n=H.n)
    if H.n <= 5000 and "top" not in ref:  # dense: exact Hessian column by column, then eigh
        cols = torch.eye(H.n, dtype=H.dtype)
        Hd = torch.stack([H(cols[:, i]) for i in range(H.n)], 1).double().numpy()
        Hd = 0.5 * (Hd + Hd.T)
        w = np.linalg.eigvalsh(Hd)
        ref.update(top=sorted(w[-5:].tolist(), reverse=True), bottom=w[:3].tolist(),
                   trace=float(np.trace(Hd)), trace_se=0.0,
                   method="exact: dense Hessian from n HVPs + numpy eigvalsh (float64)")
        np.save(eig_path, w)
    elif H.n > 5000:
        A = H.scipy()
        rng = np.random.default_rng(0)
        if "top" not in ref:
            wt, Q = sla.eigsh(A, k=5, which="LA", tol=1e-10, ncv=40, v0=rng.standard_normal(H.n))
            order = np.argsort(wt)[::-1]
            c_top = H.count
            wb = sla.eigsh(A, k=3, which="SA", tol=1e-8, ncv=60, v0=rng.standard_normal(H.n),
                           return_eigenvectors=False)
            ref.update(top=wt[order].tolist(), bottom=np.sort(wb).tolist(),
                       method=(f"ARPACK eigsh on cached-graph HVP: top-5 tol 1e-10 ncv 40 "
                               f"({c_top} HVPs), bottom-3 tol 1e-8 ncv 60 ({H.count - c_top} "
                               "HVPs)"))
            np.save(cache_dir() / f"ref-{name}-{key}-top5.npy", Q[:, order])
        if trace:
            ref.update(_hutchinson_trace(name, A, ref, np.load(
                cache_dir() / f"ref-{name}-{key}-top5.npy"), rng))
    ref["seconds"] = ref.get("seconds", 0.0) + time.perf_counter() - t0
    path.write_text(json.dumps(ref, indent=1))
    if eig_path.exists():
        ref["all_eigs"] = np.load(eig_path)
    log(f"[{name}] references done in {ref['seconds']:.0f} s")
    return ref


def _hutchinson_trace(name: str, A, ref: dict, Q, rng) -> dict:
    """Trace = top-5 + Hutchinson on the complement of their eigenvectors ``Q``.

    Rademacher probes projected off span(Q) estimate tr((I - QQ^T) H), the exact top-5 part is
    added back; removing the top directions removes most of the estimator's variance.
    """
    m = 500 if name == "W3" else 1000
    vals = np.empty(m)
    for i in range(m):
        z = rng.integers(0, 2, A.shape[0]).astype(np.float64) * 2 - 1
        z -= Q @ (Q.T @ z)
        vals[i] = z @ A.matvec(z)
    return {"trace": float(sum(ref["top"]) + vals.mean()),
            "trace_se": float(vals.std(ddof=1) / m**0.5),
            "method": ref["method"] + f"; trace = top-5 + {m}-probe Rademacher Hutchinson on "
                                      "their complement"}


# ================================================================================ scoring


def _relerr(v, r):
    return abs(float(np.atleast_1d(_arr(v))[0]) - r) / abs(r)


def _top_err(vals, ref_top, k):
    v = np.sort(_arr(vals))[::-1][:k]
    return float(max(abs(a - b) / abs(b) for a, b in zip(v, ref_top[:k], strict=True)))


def _round_down_125(x: float) -> float:
    e = math.floor(math.log10(x))
    for m in (5, 2, 1):
        if m * 10**e <= x:
            return m * 10**e
    return 10**e


def _w1_dist(nodes, weights, exact) -> float | None:
    from scipy.stats import wasserstein_distance

    nodes, weights = _arr(nodes).ravel(), np.abs(_arr(weights).ravel())
    if nodes.size == 0 or weights.sum() <= 0:
        return None
    return float(wasserstein_distance(nodes, exact, u_weights=weights)
                 / (exact.max() - exact.min()))


def _density_measure(d):
    """Nodes and weights of a landscope density result, if it exposes them under a known name."""
    q = getattr(d, "quadrature", None)
    if q is not None and hasattr(q, "nodes") and hasattr(q, "weights"):
        # (probes, lanczos_steps); each row sums to 1: pooled = mean over probes
        return q.nodes, q.weights
    ev = getattr(d, "eigenvalues", None)
    if ev is not None:
        return ev, torch.ones(len(ev))
    return None


# ================================================================================ landscope


def import_landscope(log):
    try:
        import landscope as ls
    except Exception as exc:
        return None, f"import landscope failed: {type(exc).__name__}: {exc}"
    missing = [a for a in ("Objective", "spectrum", "density", "trace") if not hasattr(ls, a)]
    if missing:
        return None, "landscope has no " + ", ".join(missing) + " yet"
    return ls, ""


# ================================================================================ one workload


def second_order_contexts(name, model, X, y, crit, have, log):
    """Which tools run their products as shipped on this workload: ``(have, contexts, errors)``.

    One product per tool as shipped, retried under the math attention kernel where it fails
    (:func:`peers.second_order_context`). ``contexts[tool]`` is the context each tool's rows run
    in; ``errors[tool]`` the as-shipped error of those that need the workaround. A peer that
    fails even so is dropped from ``have``; the plain baseline (the references) must run.
    """
    n = sum(p.numel() for p in model.parameters())
    v = torch.randn(n, dtype=next(model.parameters()).dtype)
    params = list(model.parameters())

    def plain():
        PlainHVP(model, X, y, crit)(v)

    def pyhessian_product():
        import pyhessian

        _clear_grads(model)
        h = pyhessian.hessian(model, crit, data=(X, y), cuda=False)
        _clear_grads(model)
        vl = list(v.split([p.numel() for p in params]))
        sys.modules["pyhessian.hessian"].hessian_vector_product(
            h.gradsH, h.params, [t.view_as(p) for t, p in zip(vl, params, strict=True)])

    def curvlinops_product():
        from curvlinops import HessianLinearOperator

        HessianLinearOperator(model, crit, params, [(X, y)]) @ v

    def eigenthings_product():
        from hessian_eigenthings import HessianOperator, supervised_loss

        HessianOperator(model, [(X, y)], supervised_loss(crit)).matvec(v)

    products = {"plain": plain, "pyhessian": pyhessian_product,
                "curvlinops": curvlinops_product, "eigenthings": eigenthings_product}
    have, contexts, errors = dict(have), {}, {}
    for tool, product in products.items():
        if tool != "plain" and not have.get(tool):
            continue
        try:
            contexts[tool], error = second_order_context(product)
        except Exception as exc:
            if tool == "plain":
                raise
            have.pop(tool)
            errors[tool] = f"{type(exc).__name__}: {exc}"[:160] + " (also under the math kernel)"
            log(f"[{name}] {tool} cannot run here: {errors[tool]}; its rows are skipped")
            continue
        if error:
            errors[tool] = error
            log(f"[{name}] {tool} as shipped: {error}; its rows run {MATH_KERNEL}")
    _clear_grads(model)
    return have, contexts, errors




def bench_workload(name, args, have, counters, ls, ls_reason, log) -> dict:
    runs = 1 if args.quick else 3
    reps = 3 if args.quick else (10 if name == "W3" else 20)
    model, X, y, crit = build_workload(name)
    params = [p for p in model.parameters()]
    have, ctx, shipped = second_order_contexts(name, model, X, y, crit, have, log)
    ref = references(name, model, X, y, crit, log, ctx["plain"], trace="trace" in args.measures)
    lmax_ref, lmin_ref = ref["top"][0], ref["bottom"][0]
    rows: list[Row] = []
    fl: dict = {"shipped": shipped}
    pending: list[Pending] = []

    def tool_context(p: Pending) -> Pending:
        """Run ``p``'s tool inside its second-order context, and say so, where it needs one."""
        tool = p.tool.lower()
        if shipped.get(tool) and tool in ctx:
            p.fn, p.method = in_context(ctx[tool], p.fn), f"{p.method} [{MATH_KERNEL}]"
        return p

    def add(p: Pending) -> None:
        pending.append(tool_context(p))

    def flush():
        rows.extend(run_group(pending))
        pending.clear()

    # warm up: a forward, a backward, a double backward (fills the allocator, JIT-free path)
    plain = in_context(ctx["plain"], PlainHVP)(model, X, y, crit)
    plain(torch.randn(plain.n, dtype=plain.dtype))
    n = plain.n
    log(f"[{name}] {WORKLOADS[name].desc}: n={n}, loss {ref['loss']:.4f}, lambda_max "
        f"{lmax_ref:.6g}, lambda_min {lmin_ref:.6g}"
        + (f", trace {ref['trace']:.6g}" if "trace" in ref else ""))

    # ---------------------------------------------------------------- (6) cost floor
    def grad_once():
        torch.autograd.grad(crit(model(X), y), params)

    def loss_once():
        with torch.no_grad():
            crit(model(X), y)

    def dbl_backward(v):
        g = torch.autograd.grad(crit(model(X), y), params, create_graph=True)
        torch.autograd.grad(_flat(g), params, grad_outputs=v)

    def op(tool, label, fn, div=1):
        """A floor operation of ``tool``, inside the tool's second-order context."""
        if shipped.get(tool) and tool in ctx:
            return f"{label} [{MATH_KERNEL}]", in_context(ctx[tool], fn), div
        return label, fn, div

    v1 = torch.randn(n, dtype=plain.dtype)
    V10 = torch.randn(n, 10, dtype=plain.dtype)
    # All operations are timed round-robin (grad, op1, op2, ..., grad, op1, ...) so that load
    # changes on the shared machine hit them alike; "x gradient" is the median over rounds of
    # op time / gradient time in the same round.
    ops = [("loss only (no_grad forward)", loss_once, 1),
           ("gradient, torch.autograd.grad", grad_once, 1),
           op("plain", "HVP plain: double backward from scratch", lambda: dbl_backward(v1)),
           op("plain", "HVP plain: cached graph (2nd backward only)", lambda: plain(v1))]
    keep = []
    if have.get("pyhessian"):
        import pyhessian

        _clear_grads(model)
        ph = in_context(ctx["pyhessian"], pyhessian.hessian)(model, crit, data=(X, y), cuda=False)
        _clear_grads(model)
        vl = [t.reshape(p.shape) for t, p in zip(v1.split([p.numel() for p in params]), params,
                                                 strict=True)]
        ph_mod = sys.modules["pyhessian.hessian"]
        keep.append(ph)
        ops.append(op("pyhessian", "HVP PyHessian (hessian_vector_product, cached graph)",
                      lambda: ph_mod.hessian_vector_product(ph.gradsH, ph.params, vl)))
    if have.get("curvlinops"):
        from curvlinops import HessianLinearOperator

        cl = in_context(ctx["curvlinops"], HessianLinearOperator)(model, crit, params, [(X, y)])
        ops.append(op("curvlinops", "HVP curvlinops (H @ v)", lambda: cl @ v1))
    if have.get("eigenthings"):
        from hessian_eigenthings import HessianOperator, supervised_loss

        he = HessianOperator(model, [(X, y)], supervised_loss(crit))
        ops.append(op("eigenthings", "HVP hessian-eigenthings (matvec)", lambda: he.matvec(v1)))
    ls_obj = None
    if ls is not None:
        try:
            ls_obj = ls.Objective.from_model(model, torch.nn.functional.cross_entropy, (X, y))
            ls_obj.hvp(v1)
            trial = ls_obj.info.get("chain_trial", {}).get("seconds_per_product", {})
            fl["ls_engine"] = (f"{ls_obj.info['hvp_engine']} (chain engine: "
                               f"{ls_obj.info.get('chain_engine', '-')}; first-point trial, s per "
                               f"product: " + ", ".join(f"{k} {t:.4f}" for k, t in trial.items())
                               + ")")
            log(f"[{name}] landscope HVP engine: {fl['ls_engine']}")
            ops.append(("HVP landscope obj.hvp(v)", lambda: ls_obj.hvp(v1), 1))
            ops.append(("HVP landscope obj.hvp(V), k=10 at once, per vector",
                        lambda: ls_obj.hvp(V10), 10))
        except Exception as exc:
            ls_reason = f"landscope failed: {type(exc).__name__}: {exc}"
            log(f"[{name}] {ls_reason}")
            ls_obj = None
    times = {lab: [] for lab, _, _ in ops}
    for _ in range(1 if args.quick else 2):  # warm-up rounds
        for _lab, fn, _d in ops:
            fn()
    for _ in range(reps):
        for lab, fn, div in ops:
            t0 = time.perf_counter()
            fn()
            times[lab].append(1e3 * (time.perf_counter() - t0) / div)
    gt = times["gradient, torch.autograd.grad"]
    g_ms = statistics.median(gt)
    fl["grad_ms"] = g_ms
    floor = []
    for lab, _fn, _d in ops:
        ts = times[lab]
        ratio = statistics.median(t / g for t, g in zip(ts, gt, strict=True))
        floor.append((lab, statistics.median(ts), min(ts), ratio, min(ts) / min(gt)))
        key = {"HVP PyHessian": "ph_hvp_ratio", "HVP curvlinops": "cl_hvp_ratio",
               "HVP plain: cached graph": "plain_hvp_ratio",
               "HVP landscope obj.hvp(v)": "ls_hvp_ratio",
               "HVP landscope obj.hvp(V)": "ls_hvp10_ratio"}
        for prefix, k in key.items():
            if lab.startswith(prefix):
                fl[k] = ratio
    del keep
    fl["floor"] = floor
    log(f"[{name}] gradient {g_ms:.2f} ms; " + "; ".join(
        f"{f[0].split('(')[0].strip()} {f[3]:.2f}x" for f in floor[2:]))

    # ---------------------------------------------------------------- setup rows
    def setup_row(tool, method, fn, counter=lambda: 0):
        rows.extend(run_group([tool_context(measure("setup", tool, method, lambda i: fn(),
                                                    counter, runs, log=log))]))

    setup_row("plain", "cached double-backward graph", lambda: PlainHVP(model, X, y, crit))
    if have.get("pyhessian"):
        import pyhessian

        def ph_setup():
            _clear_grads(model)
            h = pyhessian.hessian(model, crit, data=(X, y), cuda=False)
            _clear_grads(model)
            return h

        setup_row("PyHessian", "hessian(model, crit, data) (fwd + bwd create_graph)", ph_setup)
        ph = rows[-1].value
    if have.get("curvlinops"):
        from curvlinops import HessianLinearOperator

        setup_row("curvlinops", "HessianLinearOperator(..., check_deterministic=True)",
                  lambda: HessianLinearOperator(model, crit, params, [(X, y)]),
                  counters.get("curvlinops"))
        cl_sp = rows[-1].value.to_scipy()
    if ls_obj is not None:
        spent = {"hvp": 0}

        def ls_setup():  # the first product settles the engine (the chain trial: 4 products)
            obj = ls.Objective.from_model(model, torch.nn.functional.cross_entropy, (X, y))
            obj.hvp(v1)
            spent["hvp"] += obj.counts["hvp"]
            return obj

        setup_row("landscope", "Objective.from_model(model, cross_entropy, (X, y)) + one "
                  "product (engine trial)", ls_setup, lambda: spent["hvp"])
        ls_obj = rows[-1].value
    for r in rows:
        r.value = None
    plain = in_context(ctx["plain"], PlainHVP)(model, X, y, crit)
    plain_sp = plain.scipy()
    c_plain = lambda: plain.count  # noqa: E731
    c_ls = (lambda: ls_obj.counts["hvp"]) if ls_obj is not None else (lambda: 0)  # noqa: E731
    c_ph, c_cl = counters.get("pyhessian"), counters.get("curvlinops")

    def v0(i):
        return np.random.default_rng(i).standard_normal(n)

    top1_err = lambda v: _relerr(v, lmax_ref)  # noqa: E731
    top5_err = lambda v: _top_err(v, ref["top"], 5)  # noqa: E731
    lmin_err = lambda v: _relerr(v, lmin_ref)  # noqa: E731
    tr_err = lambda v: _relerr(v, ref["trace"])  # noqa: E731
    val_note = lambda v: f"value {float(np.atleast_1d(_arr(v))[0]):.6g}"  # noqa: E731

    def ls_spec(i, k, which, eig_rtol):
        kw = {} if eig_rtol is None else {"eig_rtol": eig_rtol}
        s = ls.spectrum(ls_obj, k=k, which=which, **kw)
        part = s.largest if which == "largest" else s.smallest
        return {"values": _arr(part.values), "res": _arr(getattr(part, "residuals", [])),
                "ev": dict(getattr(s, "evidence", {}) or {}), "method": getattr(s, "method", "")}

    def ls_note(o, scale):
        ev, res = o["ev"], o["res"]
        bits = [f"method {o['method']}"] if o.get("method") else []
        if "converged" in ev:
            bits.append(f"converged {ev['converged']}")
        if "iterations" in ev:
            bits.append(f"iterations {ev['iterations']}")
        if res.size:
            bits.append(f"certified rel. err <= {float(res.max()) / scale:.1e} (residual)")
        return "; ".join(bits) + f"; value {o['values'][0]:.6g}"

    # eig_rtol for the 'rel. 1e-3' smallest-eigenvalue row: residual <= eig_rtol * ||H|| certifies
    # |error| <= eig_rtol * lambda_max, so eig_rtol = 1e-3 |lambda_min| / lambda_max (rounded
    # down 1-2-5).
    eig_rtol_min = _round_down_125(1e-3 * abs(lmin_ref) / lmax_ref)
    fl["eig_rtol_min"] = eig_rtol_min

    def add_eigsh(measure_name, tool, operator, counter, k, which, err, note=None):
        """scipy ARPACK (eigsh) on a tool's operator at tol 1e-3, seeded start vectors."""
        if tool == "plain" and args.no_plain:
            return
        how = "scipy eigsh" if tool == "plain" else "to_scipy() + eigsh"
        add(measure(measure_name, tool, f"{how} {which} k={k} tol 1e-3",
                    lambda i: sla.eigsh(operator, k=k, which=which, tol=1e-3, v0=v0(i),
                                        return_eigenvectors=False), counter, runs, err, note,
                    log))

    def add_largest(measure_name, k, err):
        """landscope's k largest at eig_rtol 1e-3 (the headline row) and at its default."""
        for eig_rtol, head in ((1e-3, True), (None, False)):
            label = f"eig_rtol={eig_rtol:g}" if eig_rtol else "default eig_rtol"
            r = measure(measure_name, "landscope", f"spectrum(k={k}, which='largest', {label})",
                        lambda i, t=eig_rtol: ls_spec(i, k, "largest", t), c_ls, runs, err,
                        lambda o: ls_note(o, lmax_ref), log)
            r.extra["headline"] = head
            add(r)

    # ---------------------------------------------------------------- (1) top-1
    if "top1" in args.measures:
        M = "(1) top-1"
        add_eigsh(M, "plain", plain_sp, c_plain, 1, "LA", top1_err, val_note)
        if have.get("pyhessian"):
            add(measure(M, "PyHessian", "eigenvalues(top_n=1, tol=1e-3, maxIter=100)",
                        lambda i: ph.eigenvalues(top_n=1, tol=1e-3, maxIter=100)[0][0], c_ph, runs,
                        top1_err, val_note, log))
        if have.get("curvlinops"):
            add_eigsh(M, "curvlinops", cl_sp, c_cl, 1, "LA", top1_err, val_note)
        if ls_obj is not None:
            add_largest(M, 1, lambda o: top1_err(o["values"][0]))

        flush()
    # ---------------------------------------------------------------- (2) top-5
    if "top5" in args.measures:
        M = "(2) top-5"
        add_eigsh(M, "plain", plain_sp, c_plain, 5, "LA", top5_err)
        if have.get("pyhessian"):
            add(measure(M, "PyHessian", "eigenvalues(top_n=5, tol=1e-3) (deflated power)",
                        lambda i: ph.eigenvalues(top_n=5, tol=1e-3)[0], c_ph, runs, top5_err,
                        log=log))
        if have.get("curvlinops"):
            add_eigsh(M, "curvlinops", cl_sp, c_cl, 5, "LA", top5_err)
        if ls_obj is not None:
            add_largest(M, 5, lambda o: top5_err(o["values"]))

        flush()
    # ---------------------------------------------------------------- (3) most negative
    if "lmin" in args.measures:
        M = "(3) most negative"
        add_eigsh(M, "plain", plain_sp, c_plain, 1, "SA", lmin_err, val_note)
        if have.get("pyhessian"):
            import pyhessian

            def ph_shifted_hessian():
                # PyHessian has no smallest-eigenvalue API. Its best workaround: c = its own
                # lambda_max estimate, a new hessian object on the loss - c/2 ||theta||^2 (Hessian
                # H - cI), power iteration on that; lambda_min = mu + c.
                c = ph.eigenvalues(top_n=1, tol=1e-3, maxIter=100)[0][0]

                def shifted(out, t):
                    return crit(out, t) - 0.5 * c * sum((p * p).sum() for p in params)

                _clear_grads(model)
                h2 = pyhessian.hessian(model, shifted, data=(X, y), cuda=False)
                _clear_grads(model)
                return c, h2

            def ph_shift(i, tol=1e-6, max_iter=300):
                c, h2 = ph_shifted_hessian()
                return h2.eigenvalues(top_n=1, tol=tol, maxIter=max_iter)[0][0] + c

            if LMIN_CAP[name] >= 300:  # as a user runs it; it stops at its maxIter everywhere
                add(measure(M, "PyHessian", "NO API; shift trick via loss (H - cI), c = own "
                            "lambda_max (incl.), tol 1e-6, maxIter 300", ph_shift, c_ph, runs,
                            lmin_err, val_note, log))
            need, cap = in_context(ctx["pyhessian"], shift_trick_iterations)(
                ph_shifted_hessian, lmin_ref, LMIN_CAP[name], seed=1000)
            log(f"    shift trick reaches rel. 1e-3 after {need} iterations (cap {cap})")
            iters = need or cap
            why = ("first iterate within rel. 1e-3, seed 1000" if need
                   else f"NOT within rel. 1e-3 after {cap} iterations")
            r = measure(M, "PyHessian", f"shift trick as above, stopped at equal accuracy: maxIter "
                        f"{iters}, tol 0 ({why})",
                        lambda i: ph_shift(i, 0.0, iters), c_ph, runs, lmin_err, val_note, log)
            r.extra.update(headline=True, reached=need is not None)
            add(r)
        if have.get("curvlinops"):
            add_eigsh(M, "curvlinops", cl_sp, c_cl, 1, "SA", lmin_err, val_note)
        if ls_obj is not None:
            r = measure(M, "landscope",
                        f"spectrum(k=1, which='smallest', eig_rtol={eig_rtol_min:g})",
                        lambda i: ls_spec(i, 1, "smallest", eig_rtol_min), c_ls, runs,
                        lambda o: lmin_err(o["values"][0]),
                        lambda o: ls_note(o, abs(lmin_ref)), log)
            r.extra["headline"] = True
            add(r)

        flush()
    # ---------------------------------------------------------------- (4) trace
    if "trace" in args.measures:
        M = "(4) trace"
        if have.get("pyhessian"):
            add(measure(M, "PyHessian", "trace() defaults (maxIter=100, tol=1e-3)",
                        lambda i: float(np.mean(ph.trace())), c_ph, runs, tr_err, val_note, log))
        if ls_obj is not None:
            def ls_trace(i):
                t = ls.trace(ls_obj, probes=100, seed=i)
                return {"value": float(t.value), "se": float(getattr(t, "stderr", float("nan")))}

            r = measure(M, "landscope", "trace(probes=100, seed=i)", ls_trace, c_ls, runs,
                        lambda o: tr_err(o["value"]),
                        lambda o: f"value {o['value']:.6g} ± {o['se']:.2g} (its own 1 s.e.)", log)
            r.extra["headline"] = True
            add(r)

        flush()
    # ---------------------------------------------------------------- (5) density
    if "density" in args.measures:
        M = "(5) density"
        exact = ref.get("all_eigs")
        if have.get("pyhessian"):
            if not args.quick:
                add(measure(M, "PyHessian", "density() as shipped (iter=100, n_v=1)",
                            lambda i: ph.density(iter=100, n_v=1), c_ph, 1, log=log))

            def ph_density(i):
                with torch_eig_shim():
                    return ph.density(iter=100, n_v=1)

            def ph_dnote(o):
                if exact is None:
                    return ""
                return f"W1-dist/width {_w1_dist(o[0][0], o[1][0], exact):.1e}"

            add(measure(M, "PyHessian", "density(iter=100, n_v=1) + torch.eig shim", ph_density,
                        c_ph, runs, note_fn=ph_dnote, log=log))
        if ls_obj is not None:
            def ls_dnote(d):
                bits = [f"method {getattr(d, 'method', '?')}; "
                        f"products {getattr(d, 'products', '?')}"]
                nw = _density_measure(d)
                if exact is not None and nw is not None:
                    bits.append(f"W1-dist/width {_w1_dist(*nw, exact):.1e}")
                return "; ".join(bits)

            r = measure(M, "landscope", "density(probes=1, lanczos_steps=100)",
                        lambda i: ls.density(ls_obj, probes=1, lanczos_steps=100, seed=i), c_ls,
                        runs, note_fn=ls_dnote, log=log)
            r.extra["headline"] = True
            add(r)
            add(measure(M, "landscope", "density() defaults",
                        lambda i: ls.density(ls_obj, seed=i), c_ls, runs, note_fn=ls_dnote,
                        log=log))
            v_floor = torch.randn(n, dtype=plain.dtype)

            def products_alone(i):  # at least what any 1-probe x 100-step SLQ costs here
                for _ in range(100):
                    ls_obj.hvp(v_floor)

            add(measure(M, "landscope", "floor: 100 x obj.hvp(v) alone, no Lanczos", products_alone,
                        c_ls, runs, log=log))

        flush()
    for r in rows:
        r.value = None
    if have.get("pyhessian"):
        del ph
    _clear_grads(model)
    gc.collect()

    # ---------------------------------------------------------------- peak memory (subprocess)
    mem = {}
    tools = ["plain"] + [t for t in ("pyhessian", "curvlinops") if have.get(t)]
    if ls is not None and ls_obj is not None:
        tools.append("landscope")
    for tool in tools if "memory" in args.measures else []:
        mem[tool] = memory_probe(name, tool)
        log(f"[{name}] peak memory of a k=5 eigenpair call, {tool}: {mem[tool]}")
    return {"rows": rows, "floor": fl, "ref": ref, "mem": mem, "n": n, "ls_reason": ls_reason}


# ================================================================================ report


def _ratio_vs_ls(rows: list[Row]) -> dict:
    base = {r.measure: r for r in rows if r.tool == "landscope" and r.extra.get("headline")
            and r.time}
    return {id(r): (r.time / base[r.measure].time if r.measure in base and r.time else None)
            for r in rows}


def _row(rows, measure_name, tool, headline=False):
    """The (headline) row of a tool for a measure; a row that ran beats one that errored."""
    hits = [r for r in rows if r.measure == measure_name and r.tool == tool
            and (not headline or r.extra.get("headline"))]
    timed = [r for r in hits if r.time is not None]
    return (timed or hits or [None])[0]


def headline_table(results: dict, mem_ok: bool) -> Table:
    t = Table("Headline: landscope against the targets",
              ["workload", "target", "landscope", "peer", "ratio", "verdict"])

    def verdict(ok):
        return "–" if ok is None else ("PASS" if ok else "FAIL")

    for name, res in results.items():
        rows, fl = res["rows"], res["floor"]
        ls_ok = any(r.tool == "landscope" and r.time for r in rows)
        tgt = TARGETS["hvp_ratio"].get(name)
        r_ls = fl.get("ls_hvp_ratio")
        t.add(name, f"HVP cost <= {tgt}x gradient" if tgt else "HVP cost (x gradient; no target)",
              (f"{r_ls:.2f}x (k=10 at once: {fl.get('ls_hvp10_ratio', float('nan')):.2f}x)"
               if r_ls else "n/a"),
              f"PyHessian {fl['ph_hvp_ratio']:.2f}x" if "ph_hvp_ratio" in fl else "–", "–",
              verdict(r_ls <= tgt if (r_ls and tgt) else None))
        specs = [("(2) top-5", "top-5 >= 3x faster than PyHessian, more accurate",
                  TARGETS["top5_speedup"], True),
                 ("(1) top-1", "lambda_max no slower than PyHessian, equal/better accuracy", 1.0,
                  True),
                 ("(3) most negative", "lambda_min to rel. 1e-3 >= 4x faster than PyHessian "
                  "shift trick", TARGETS["lmin_speedup"], False),
                 ("(5) density", "density >= 2x faster than PyHessian (1 probe, 100 steps)",
                  TARGETS["density_speedup"], False)]
        for meas, label, need, acc_cmp in specs:
            if not any(r.measure == meas for r in rows):
                continue
            L = _row(rows, meas, "landscope", True)
            P = _row(rows, meas, "PyHessian", True) or _row(rows, meas, "PyHessian")
            if not ls_ok or L is None or not L.time:
                t.add(name, label, "n/a", _cell(P), "–", "–")
                continue
            if P is None or not P.time:
                t.add(name, label, _cell(L), "–", "–", "–")
                continue
            sp = P.time / L.time
            ok = sp >= need
            if acc_cmp and L.err is not None and P.err is not None:
                ok = ok and L.err <= P.err
            bound = ""
            if meas == "(3) most negative":
                # Equal accuracy: the peer row is the shift trick stopped at its first iterate
                # within rel. 1e-3; if it never got there, its time is a lower bound.
                ok = ok and L.err is not None and L.err <= 1e-3
                bound = "" if P.extra.get("reached", True) else ">= "
            t.add(name, label, _cell(L), _cell(P), f"{bound}{sp:.2f}x faster", verdict(ok))
        mem = res["mem"]
        if not mem:
            continue
        lm, pm = mem.get("landscope", {}), mem.get("pyhessian", {})
        t.add(name, "peak memory of the k=5 eigenpair call (extra RSS)",
              f"{lm['extra_MiB']} MiB" if "extra_MiB" in lm else "n/a",
              f"PyHessian {pm['extra_MiB']} MiB" if "extra_MiB" in pm else "–",
              (f"{lm['extra_MiB'] / pm['extra_MiB']:.2f}x" if "extra_MiB" in lm
               and "extra_MiB" in pm and pm["extra_MiB"] > 0 else "–"), "info")
    return t


def tools_table(results: dict) -> Table:
    """Per workload and tool: one HVP in gradients, lambda_max and lambda_min (headline rows)."""
    t = Table("Per tool: one HVP, lambda_max (tol 1e-3), lambda_min (to rel. 1e-3)",
              ["workload", "tool", "one HVP (x gradient)", "lambda_max: s, HVPs, rel. err",
               "lambda_min: s, HVPs, rel. err", "as shipped"])
    keys = {"landscope": "ls_hvp_ratio", "PyHessian": "ph_hvp_ratio",
            "curvlinops": "cl_hvp_ratio", "plain": "plain_hvp_ratio"}
    for name, res in results.items():
        rows, fl = res["rows"], res["floor"]
        for tool, key in keys.items():
            top, low = (_row(rows, m, tool, True) or _row(rows, m, tool)
                        for m in ("(1) top-1", "(3) most negative"))
            if key not in fl and top is None and low is None:
                continue
            bound = "" if low is None or low.extra.get("reached", True) else " (not reached)"
            t.add(name, tool, f"{fl[key]:.2f}x" if key in fl else "–", _cell(top),
                  _cell(low) + bound,
                  fl["shipped"].get(tool.lower(), "runs" if tool != "landscope" else "–"))
    return t


def _cell(r: Row | None) -> str:
    if r is None:
        return "–"
    if r.time is None:
        return r.notes[:60] or "error"
    return f"{r.time:.3g} s, {r.hvps} HVPs, err {_fmt(r.err)}"


def workload_tables(name: str, res: dict) -> list[Table]:
    ref, fl = res["ref"], res["floor"]
    t6 = Table(f"{name} (6) cost floor: one full-data gradient vs one HVP (round-robin timing)",
               ["operation", "ms (median / min)", "x gradient (median of per-round ratios)",
                "x gradient (min / min)"])
    for lab, ms, mn, ratio, min_ratio in fl["floor"]:
        t6.add(lab, f"{ms:.2f} / {mn:.2f}", f"{ratio:.2f}", f"{min_ratio:.2f}")
    ratios = _ratio_vs_ls(res["rows"])
    tm = Table(f"{name}: measures (reference: {ref['method']})",
               ["measure", "tool", "method / settings", "time s (median)", "CPU s", "HVPs",
                "ms/HVP", "rel. err (median run)", "rel. err (worst run)", "runs",
                "ratio vs landscope", "notes"])
    for r in res["rows"]:
        tm.add(r.measure, r.tool, r.method, r.time, r.cpu, r.hvps, r.ms_per_hvp, r.err,
               r.err_worst, r.runs, ratios.get(id(r)), r.notes)
    return [t6, tm]


def reference_lines(name: str, res: dict) -> str:
    ref = res["ref"]
    top = ", ".join(f"{v:.6g}" for v in ref["top"])
    return (f"- **{name}** ({WORKLOADS[name].desc}, n = {res['n']:,}): full-data loss "
            f"{ref['loss']:.4f}; top-5 {top}; most negative {ref['bottom'][0]:.6g} (next "
            f"{', '.join(f'{v:.6g}' for v in ref['bottom'][1:])})"
            + ("" if "trace" not in ref else f"; trace {ref['trace']:.6g}"
               + (f" ± {ref['trace_se']:.2g} (1 s.e.)" if ref.get("trace_se") else " (exact)"))
            + "".join(f"; {tool} as shipped: `{err}`, so its rows ran {MATH_KERNEL}"
                      for tool, err in res["floor"]["shipped"].items())
            + f"; landscope eig_rtol for the rel. 1e-3 lambda_min row: "
               f"{res['floor']['eig_rtol_min']:g}"
            + f"; landscope HVP engine: {res['floor'].get('ls_engine', '-')}\n")


# ================================================================================ main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workloads", default="W1,W2,W3",
                    help="comma-separated subset of " + ",".join(WORKLOADS))
    ap.add_argument("--measures", default=",".join(MEASURES),
                    help="comma-separated subset of " + ",".join(MEASURES) + " (default: all; "
                    "the cost floor and the setup rows always run)")
    ap.add_argument("--quick", action="store_true", help="1 run per measure (smoke test)")
    ap.add_argument("--no-peers", action="store_true", help="skip PyHessian/curvlinops/etc.")
    ap.add_argument("--no-plain", action="store_true",
                    help="skip the plain torch + scipy eigsh rows (the cost floor keeps its plain "
                    "HVPs)")
    ap.add_argument("--no-results", action="store_true", help="do not append to RESULTS.md")
    ap.add_argument("--_memprobe", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._memprobe:
        _memprobe_main(args._memprobe)
        return 0

    names = [w.strip().upper() for w in args.workloads.split(",") if w.strip()]
    for w in names:
        if w not in WORKLOADS:
            ap.error(f"unknown workload {w}; choose from {','.join(WORKLOADS)}")
    args.measures = [m.strip().lower() for m in args.measures.split(",") if m.strip()]
    for m in args.measures:
        if m not in MEASURES:
            ap.error(f"unknown measure {m}; choose from {','.join(MEASURES)}")
    bad_env = timing_hygiene(warn=True)
    warnings.filterwarnings("ignore", message=".*create_graph=True.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="pyhessian")
    loads = LoadSampler()
    t_start = time.perf_counter()
    started = _dt.datetime.now().astimezone()

    def log(msg):
        print(msg, flush=True)

    have = import_peers(args.no_peers, log)
    counters = Counters()
    counters.install(have)
    ls, ls_reason = import_landscope(log)
    if ls is None:
        log(f"landscope side skipped: {ls_reason}")

    results = {}
    for name in names:
        results[name] = bench_workload(name, args, have, counters, ls, ls_reason, log)
    wall = time.perf_counter() - t_start
    load = loads.stop()

    tables = [headline_table(results, True), tools_table(results)]
    for name in names:
        tables += workload_tables(name, results[name])
    for t in tables:
        t.show()

    mi, vs = machine_info(), versions()
    cmd_env = " ".join(f"{k}={v}" for k, v in HYGIENE_ENV.items())
    exe = Path(sys.executable)
    try:
        exe_s = str(exe.relative_to(REPO))
    except ValueError:
        exe_s = "python"
    cmd = f"{cmd_env} {exe_s} benchmarks/bench_core.py " + " ".join(
        a for a in (argv if argv is not None else sys.argv[1:]))
    ls_state = ("ran" if any(r.get("floor", {}).get("ls_hvp_ratio") for r in results.values())
                else f"did not run ({ls_reason or results[names[0]]['ls_reason']})")
    lines = [
        f"## {started:%Y-%m-%d %H:%M %Z} — bench_core ({', '.join(names)}"
        + (", quick" if args.quick else "") + (", no peers" if args.no_peers else "")
        + ("" if len(args.measures) == len(MEASURES) else "; " + ", ".join(args.measures)) + ")",
        "",
        f"- machine: {mi['kind']} ({mi['cpu']}, {mi['mem']}); Python {mi['python']}, "
        f"torch {mi['torch']} ({mi['threads']} threads)",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in vs.items() if v),
        f"- command: `{cmd.strip()}`",
        f"- 1-min load average during the run: {load}; wall time {wall:.0f} s",
        f"- timing: median of {1 if args.quick else 3} runs (a run over {REPEAT_LIMIT_S:.0f} s "
        "is not repeated), the tools of one measure run round-robin; HVPs counted at each "
        "tool's own entry point (PyHessian "
        "`hessian_vector_product`, curvlinops `_matmat` columns, landscope `obj.counts['hvp']`, "
        "plain: our own matvec); setup timed separately and not included (PyHessian's shift "
        "trick includes its second object and its own lambda_max estimate)",
        f"- landscope side: {ls_state}",
    ]
    if bad_env:
        lines.append(f"- WARNING: timing hygiene variables missing: {', '.join(bad_env)}")
    lines += ["", "References:", ""] + [reference_lines(n, results[n]) for n in names]
    lines += ["Peak memory of one k=5 top-eigenpair call (tol 1e-3), fresh subprocess per tool: "
              "RSS high-water mark (VmHWM, reset after loading model and data) minus the RSS at "
              "that point; operator setup included:", ""]
    for n in names:
        lines.append(f"- {n}: " + ", ".join(
            f"{tool} {m.get('extra_MiB', m.get('error'))} MiB" for tool, m in
            results[n]["mem"].items()))
    body = "\n".join(lines) + "\n\n" + "\n".join(t.markdown() for t in tables)
    if not args.no_results:
        new = not RESULTS_MD.exists()
        with open(RESULTS_MD, "a") as fh:
            if new:
                fh.write("# Benchmark results\n\nAppended by `benchmarks/bench_core.py` "
                         "(`make bench`); newest last. Workloads: `benchmarks/workloads.py`.\n\n")
            fh.write(body + "\n")
        log(f"appended to {RESULTS_MD.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

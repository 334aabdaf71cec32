"""Surface benchmark: 41×41 loss grids on W2 and W3; landscope, loss-landscapes, a plain loop.

One process run measures, side by side on the workloads of ``workloads.py``:

  - the floor: points × one full-data forward pass without gradients (a loop of that many);
  - ``landscope.surface.surface`` on a filter-normalised Gaussian plane (end-to-end call);
  - a plain Python loop over the points (a private copy of the model, parameters set in place,
    ``torch.no_grad``), the fastest thing a user would write by hand;
  - loss-landscapes ``random_plane(..., normalization="filter", deepcopy_model=True)``;
  - the budgeted view (``landscope.adaptive.adaptive_surface``, budget 25 %, all data and 25 %
    subsets) against the full grid: cost, and the share of points within the stated error;
  - correctness and side effects: our grid against the plain loop, the caller's model before and
    after (parameters, buffers, modes, requires_grad), the directions' distribution and biases.

Methods run in rounds, in rotated order, and every ratio is taken against the floor measured in
the same round (the machines are shared: see README.md). Tables go to stdout and a dated section
is appended to ``benchmarks/RESULTS.md``. Run it as
``benchmarks/.venv-peers/bin/python benchmarks/bench_surface.py [--workloads W2,W3] [--rounds 3]
[--no-results]``; it re-executes itself with the timing-hygiene environment when that is missing.
"""

from __future__ import annotations

import argparse
import copy
import datetime as _dt
import os
import platform
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from workloads import build_workload, restart_with_hygiene, timing_hygiene  # noqa: E402

if __name__ == "__main__":
    restart_with_hygiene()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from landscope import Objective  # noqa: E402
from landscope import directions as D  # noqa: E402
from landscope.adaptive import adaptive_surface  # noqa: E402
from landscope.surface import Grid, _evaluator, axes, surface  # noqa: E402

RESULTS_MD = HERE / "RESULTS.md"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workloads", default="W2,W3")
    parser.add_argument("--rounds", type=int, default=3, help="timing rounds (W3: at most 2)")
    parser.add_argument("--resolution", "--steps", type=int, default=41,
                        help="grid points per axis (--steps: its old name)")
    parser.add_argument("--no-results", action="store_true", help="do not append RESULTS.md")
    args = parser.parse_args()
    timing_hygiene()
    try:
        import loss_landscapes  # noqa: F401
        peer = True
    except ImportError:
        peer = False
        print("loss-landscapes is not installed here: its rows are skipped "
              "(benchmarks/.venv-peers has it)")
    load = [os.getloadavg()[0]]
    sections = []
    for name in args.workloads.split(","):
        rounds = args.rounds if name != "W3" else min(args.rounds, 2)
        sections.append(_workload(name, args.resolution, rounds, peer))
        load.append(os.getloadavg()[0])
    text = _report(sections, load, args)
    print(text)
    if not args.no_results:
        with open(RESULTS_MD, "a") as stream:
            stream.write(("\n" if RESULTS_MD.exists() else "# Benchmark results\n\n") + text)
        print(f"appended to {RESULTS_MD.relative_to(HERE.parent)}")


def _workload(name: str, resolution: int, rounds: int, peer: bool) -> dict:
    model, X, y, crit = build_workload(name)
    points = resolution * resolution
    obj = Objective.from_model(model, crit, (X, y))
    frame = D.random(obj, 2, seed=0)
    before = _snapshot(model)
    methods = {"landscope": lambda: surface(obj, frame, span=1.0, resolution=resolution).values,
               "plain loop": lambda: _plain(model, X, y, crit, obj, frame, resolution)}
    if peer:
        methods["loss-landscapes"] = lambda: _peer(model, X, y, crit, resolution)
    methods = {"floor": lambda: _floor(model, X, y, crit, points), **methods}
    times = {key: [] for key in methods}  # (wall s, process CPU s) per run
    grids = {}
    for r in range(rounds):
        rest = list(methods)[1:]
        order = ["floor", *rest[r % len(rest):], *rest[:r % len(rest)], "floor"]
        for key in order:
            wall, cpu = time.perf_counter(), time.process_time()
            grids[key] = methods[key]()
            times[key].append((time.perf_counter() - wall, time.process_time() - cpu))
        print(f"{name} round {r + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f} s" for k, v in
                                                     times.items()), flush=True)
    floor = statistics.median(t for t, _ in times["floor"])
    rows = []
    for key in list(methods)[1:]:
        ratios = [[run[k] / statistics.mean(f[k] for f in times["floor"][2 * i:2 * i + 2])
                   for i, run in enumerate(times[key])] for k in (0, 1)]
        total = statistics.median(t for t, _ in times[key])
        rows.append((key, total, 1e3 * total / points, statistics.median(ratios[0]),
                     statistics.median(ratios[1]), len(times[key])))
    checks = {
        "landscope per-point evaluation / plain forward, alternated, 400 points":
            _paired(model, X, y, crit, obj, frame, 400),
        "landscope vs plain loop, max |diff|": float(np.abs(grids["landscope"]
                                                            - grids["plain loop"]).max()),
        "caller's model unchanged after all runs": _snapshot(model) == before,
        **_directions_check(obj, frame, model),
        **_side_effects(name, model, X, y, crit, peer),
    }
    budgeted = [_budgeted(obj, frame, resolution, grids["landscope"], samples)
                for samples in (None, 0.25)]
    return {"name": name, "points": points, "floor": floor, "floor_ms": 1e3 * floor / points,
            "rows": rows, "checks": checks, "budgeted": budgeted,
            "range": (float(grids["landscope"].min()), float(grids["landscope"].max()))}


def _floor(model, X, y, crit, points: int) -> float:
    """Seconds for ``points`` full-data forward passes without gradients (the floor)."""
    with torch.no_grad():
        for _ in range(3):
            crit(model(X), y).item()
        start = time.perf_counter()
        for _ in range(points):
            crit(model(X), y).item()
    return time.perf_counter() - start


def _paired(model, X, y, crit, obj, frame, pairs: int) -> float:
    """Our per-point evaluation over a plain forward, alternated point by point (ratio of sums).

    Alternating A, B, A, B... exposes both to the same load, so the ratio survives a shared
    machine better than two separate totals.
    """
    grid = Grid(obj, frame, axes(frame, 1.0, 41), {})
    evaluate = _evaluator(obj, "eval", grid)
    ours = plain = 0.0
    with torch.no_grad():
        for k in range(pairs):
            start = time.perf_counter()
            evaluate((k // 41 % 41, k % 41))  # row by row, as a grid is walked
            middle = time.perf_counter()
            crit(model(X), y).item()
            ours, plain = ours + middle - start, plain + time.perf_counter() - middle
    return ours / plain


def _plain(model, X, y, crit, obj, frame, resolution):
    """What a user writes by hand: a copy of the model, parameters set in place, no_grad."""
    probe = copy.deepcopy(model)
    c, (d1, d2) = obj.theta0, frame.vectors
    coords = np.linspace(-1.0, 1.0, resolution)
    out = np.empty((resolution, resolution))
    with torch.no_grad():
        for i, a in enumerate(coords):
            for j, b in enumerate(coords):
                torch.nn.utils.vector_to_parameters(c + a * d1 + b * d2, probe.parameters())
                out[i, j] = crit(probe(X), y).item()
    return out


def _peer(model, X, y, crit, resolution):
    import loss_landscapes
    import loss_landscapes.metrics

    metric = loss_landscapes.metrics.Loss(crit, X, y)
    return loss_landscapes.random_plane(model, metric, distance=1, steps=resolution,
                                        normalization="filter", deepcopy_model=True)


def _budgeted(obj, frame, resolution, full, samples) -> dict:
    start = time.perf_counter()
    s = adaptive_surface(obj, frame, span=1.0, resolution=resolution, budget=0.25,
                         samples=samples)
    seconds = time.perf_counter() - start
    err = np.abs(s.values - full)
    scale = float(np.ptp(full))
    return {"samples": "all" if samples is None else f"{samples:.0%} subsets",
            "seconds": seconds, "cost": s.meta["cost_ratio"],
            "evaluated": int(s.evaluated.sum()), "within": float((err <= s.error).mean()),
            "max_err": float(err.max()) / scale, "median_err": float(np.median(err)) / scale,
            "max_stated": float(s.error.max()) / scale, "tol": s.meta["tol_used"] / scale}


def _snapshot(model) -> tuple:
    return (tuple((k, v.detach().clone().numpy().tobytes()) for k, v in
                  model.state_dict().items()),
            tuple(m.training for m in model.modules()),
            tuple(p.requires_grad for p in model.parameters()))


def _directions_check(obj, frame, model) -> dict:
    raw = D.random(obj, 1, seed=0, norm="none").directions[0].vector
    pieces = obj.unflatten(frame.vectors[0])
    out = {"ours: raw direction Gaussian (share of negative entries)": float((raw < 0).double()
                                                                            .mean()),
           "ours: filter-normalised bias entries that move": int(sum(
               int((p != 0).sum()) for p in pieces.values() if p.dim() == 1))}
    try:
        from loss_landscapes.model_interface.model_parameters import rand_u_like
        from loss_landscapes.model_interface.model_wrapper import wrap_model
    except ImportError:
        return out
    start = wrap_model(copy.deepcopy(model)).get_module_parameters()
    direction = rand_u_like(start)
    out["loss-landscapes: raw direction share of negative entries (uniform on [0, 1])"] = float(
        np.mean([float((p < 0).double().mean()) for p in direction.parameters]))
    direction.filter_normalize_(start)
    ratios = [float((d.abs() / w.abs()).median()) for d, w in
              zip(direction.parameters, start.parameters, strict=True) if d.dim() == 1]
    out["loss-landscapes: bias entries set to |θᵢ| (median |dᵢ|/|θᵢ|)"] = float(np.median(ratios))
    return out


def _side_effects(name, model, X, y, crit, peer) -> dict:
    """A 5×5 grid on the model handed over in train mode: what changes in the caller's model."""
    out = {}
    trained = copy.deepcopy(model).train()
    before = _snapshot(trained)
    obj = Objective.from_model(trained, crit, (X, y))  # mode='eval' by default
    surface(obj, D.random(obj, 2, seed=0), resolution=5)
    out["ours (model in train mode, 5×5): model unchanged"] = _snapshot(trained) == before
    if peer:
        import loss_landscapes
        import loss_landscapes.metrics

        theta = torch.nn.utils.parameters_to_vector(trained.parameters()).detach().clone()
        bn = [m for m in trained.modules() if isinstance(m, torch.nn.BatchNorm2d)]
        tracked = [int(m.num_batches_tracked) for m in bn]
        loss_landscapes.random_plane(trained, loss_landscapes.metrics.Loss(crit, X, y),
                                     steps=5)  # its default deepcopy_model=False
        moved = torch.nn.utils.parameters_to_vector(trained.parameters()).detach() - theta
        out["loss-landscapes default (5×5): max |Δθ| of the caller's model"] = float(
            moved.abs().max())
        out["loss-landscapes default: requires_grad after"] = sorted(
            {p.requires_grad for p in trained.parameters()})
        if bn:
            out["loss-landscapes default: BatchNorm running-statistics updates in 25 points"] = (
                int(bn[0].num_batches_tracked) - tracked[0])
    return out


def _report(sections, load, args) -> str:
    cpu = platform.processor() or "unknown"
    if Path("/proc/cpuinfo").exists():
        names = [line.split(":", 1)[1].strip() for line in
                 Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name")]
        cpu = names[0] if names else cpu
    date = _dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    out = [f"## Loss surfaces, {args.resolution} × {args.resolution} grids ({date})", "",
           "- Command: `benchmarks/.venv-peers/bin/python benchmarks/bench_surface.py "
           + " ".join(sys.argv[1:]) + "`",
           f"- Machine: {cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
           f"Python {platform.python_version()}; {_versions()}; OMP_WAIT_POLICY and MALLOC_* "
           "set as in README.md.",
           "- 1-min load average at the start and after each workload: "
           + ", ".join(f"{x:.1f}" for x in load) + " (2 cores, shared: ratios are taken "
           "against the floor measured in the same round, before and after the methods).",
           "- Directions: filter-normalised Gaussian plane (ours and the plain loop share it); "
           "loss-landscapes draws its own (uniform) plane: same number of points and forwards.",
           "- × floor: median over rounds of (method time / mean of the two floor runs that "
           "bracket it), by wall clock and by process CPU time (CPU time is less sensitive to "
           "waiting for a core on a shared machine).",
           "", "| workload | method | total s (median) | ms / point | × floor (wall) | "
           "× floor (CPU) | runs |", "|---|---|---|---|---|---|---|"]
    for sec in sections:
        out.append(f"| {sec['name']} | (floor) {sec['points']} full-data forwards, no grad "
                   f"| {sec['floor']:.2f} | {sec['floor_ms']:.2f} | 1.00 | 1.00 | – |")
        for method, total, ms, wall, cpu, runs in sec["rows"]:
            out.append(f"| {sec['name']} | {method} | {total:.2f} | {ms:.2f} | {wall:.2f} | "
                       f"{cpu:.2f} | {runs} |")
    out += ["", "Budgeted view (adaptive refinement, budget 25 % of the full grid's cost) against "
            "the full grid; errors relative to the full grid's value range:", "",
            "| workload | data per point | points evaluated | cost (× full grid) | points within "
            "stated error | max error | median error | max stated error | tol | s |",
            "|---|---|---|---|---|---|---|---|---|---|"]
    for sec in sections:
        for b in sec["budgeted"]:
            out.append(f"| {sec['name']} | {b['samples']} | {b['evaluated']} of {sec['points']} "
                       f"| {b['cost']:.3f} | {b['within']:.1%} | {b['max_err']:.2e} | "
                       f"{b['median_err']:.2e} | {b['max_stated']:.2e} | {b['tol']:.0e} | "
                       f"{b['seconds']:.1f} |")
    out += ["", "Correctness and side effects:", "", "| workload | check | value |",
            "|---|---|---|"]
    for sec in sections:
        out.append(f"| {sec['name']} | loss range of the grid | {sec['range'][0]:.4g} … "
                   f"{sec['range'][1]:.4g} |")
        for check, value in sec["checks"].items():
            shown = f"{value:.3g}" if isinstance(value, float) else str(value)
            out.append(f"| {sec['name']} | {check} | {shown} |")
    return "\n".join(out) + "\n"


def _versions() -> str:
    from importlib import metadata

    found = []
    for dist in ("landscope", "loss-landscapes", "torch", "numpy"):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            found.append(f"{dist} (not installed)")
    return ", ".join(found)


if __name__ == "__main__":
    main()

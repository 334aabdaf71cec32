"""A probe for the terminal (rich): its panel, the anytime stages, and the cost plan before them."""

from __future__ import annotations

from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from landscope.anytime import Stage, StagePlan
from landscope.critical import Probe, index_note
from landscope.plan import CostPlan

_STYLE = {"local_min": "green", "saddle": "yellow", "local_max": "red",
          "degenerate": "magenta", "not_critical": "cyan"}
_TITLE = {"local_min": "LOCAL MINIMUM", "saddle": "SADDLE POINT", "local_max": "LOCAL MAXIMUM",
          "degenerate": "DEGENERATE", "not_critical": "NOT A CRITICAL POINT"}


def probe_panel(p: Probe, seconds: float | None = None) -> Panel:
    """One panel: the verdict, the numbers behind it, and the evidence."""
    info = p.info
    title = (f"{info.get('name')} · loss {info.get('loss')} · "
             f"{info.get('mode') or 'function'} mode · n = {info['n']:,} ({info['dtype']})")
    verdict = _TITLE[p.kind] + _strictness(p) + (" (GLOBAL)" if p.is_global_min else "")
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    table.add_row("verdict", Text(verdict, style=f"bold {_STYLE[p.kind]}"))
    table.add_row("why", p.reason)
    table.add_row("loss", f"{p.loss:.6g}")
    st = p.stationarity
    table.add_row("‖∇L‖", f"{p.grad_norm:.3g}  (a 1/ρ gradient step moves θ by {st.step:.2g} "
                          f"= {st.relative_step:.2g}·‖θ‖; critical below "
                          f"{st.step_tol:.2g}·‖θ‖)")
    table.add_row("λ_max", _eig(p.spectrum.largest))
    table.add_row("λ_min", _eig(p.spectrum.smallest))
    tol = p.tolerances
    table.add_row("eigenvalues", "  ".join(
        f"{name} {_fraction(p.fractions[key])}" for name, key in
        (("negative", "negative"), ("flat", "zero"), ("positive", "positive"))))
    table.add_row("", f"(flat: |λ| ≤ {tol.flat_atol:.2g} = {tol.flat_rtol:g}·ρ; the verdict "
                      f"treats |λ| ≤ {tol.zero_atol:.2g} = {tol.zero_rtol:g}·ρ as zero)")
    note = index_note(p.lambda_min, p.index, tol)
    table.add_row("index", f"{p.index:.4g}   minimum ratio {p.minimum_ratio:.4g}"
                           + (f"   ({note})" if note else ""))
    if p.n_unused:
        table.add_row("unused", f"{p.n_unused:,} parameters the loss does not depend on (left "
                                "out of the spectrum, the fractions and the verdict)")
    cond = "—" if p.condition_number is None else f"{p.condition_number:.4g}"
    table.add_row("condition no.", cond)
    table.add_row("evidence", _evidence(p, seconds))
    return Panel(table, title=title, border_style=_STYLE[p.kind])


def _strictness(p: Probe) -> str:
    if p.strict is None:
        return ""
    if p.strict:
        return " (strict)"
    s = "" if p.flat_directions == 1 else "s"
    return f" (non-strict: {p.flat_directions} flat direction{s})"


def _eig(pairs) -> str:
    value, residual = pairs.values[0].item(), pairs.residuals[0].item()
    others = ", ".join(f"{v:.4g}" for v in pairs.values[1:].tolist())
    text = f"{value:.6g}  (residual ‖Hv − λv‖ = {residual:.1e})"
    return text + (f"   next: {others}" if others else "")


def _fraction(f) -> str:
    if f.lower == f.upper and f.stderr == 0:
        return f"{100 * f.value:.1f}%"
    low, high = f.interval
    return f"{100 * f.value:.1f}% [{100 * low:.1f}, {100 * high:.1f}]"


def _evidence(p: Probe, seconds: float | None) -> str:
    ev = p.evidence
    parts = []
    if ev["path"] == "exact":
        parts.append(f"exact: dense Hessian ({p.info['n']} products) + eigh")
    else:
        sp = ev["spectrum"]
        state = "converged" if sp.get("converged") else "NOT converged"
        if sp.get("method") == "exact":  # k near n: the eigenpairs came from the dense Hessian
            parts.append(f"eigenpairs: {sp.get('solver')} ({sp.get('products')} products)")
        else:
            parts.append(f"Lanczos {sp.get('products')} products, {sp.get('iterations')} steps, "
                         f"{sp.get('restarts')} restarts, {state} (tol {sp.get('tol'):.2g})")
        quad = ev["density"].get("quadrature", {})
        parts.append(f"SLQ {quad.get('probes', '?')} probes × {quad.get('steps', '?')} steps "
                     f"({ev['density']['products']} products)")
    test = ev.get("null_direction_test")
    if test:
        parts.append(f"higher-order test: {test['evaluations']} evaluations along "
                     f"{test['directions']} directions at radii {test['radii'][0]:.2g} to "
                     f"{test['radii'][-1]:.2g}")
    counts = ev["counts"]
    parts.append(f"{counts['hvp']} Hessian-vector products in all")
    if seconds is not None:
        parts.append(f"{seconds:.1f} s")
    return "; ".join(parts)


_STAGE_TITLE = {"subsample": "first verdict, on data subsets", "extremes":
                "extreme eigenvalues on all the data", "density": "density and sign fractions"}
_ORDER = ("loss", "grad_norm", "lambda_max", "lambda_min", "trace", "negative_fraction",
          "zero_fraction", "positive_fraction")
_LABEL = {"loss": "loss", "grad_norm": "‖∇L‖", "lambda_max": "λ_max", "lambda_min": "λ_min",
          "trace": "trace", "negative_fraction": "negative", "zero_fraction": "flat",
          "positive_fraction": "positive"}


def stage_panel(stage: Stage, index: int, stages: int) -> Panel:
    """One anytime stage: its verdict and every estimate with its 95 % interval."""
    style = _STYLE.get(stage.verdict, "white")
    table = Table.grid(padding=(0, 2))
    table.add_column(style="bold")
    table.add_column()
    name = _TITLE.get(stage.verdict, stage.verdict.upper())
    table.add_row("verdict", Text(name, style=f"bold {style}"))
    table.add_row("why", stage.statement)
    for key in (k for k in _ORDER if k in stage.estimates):
        iv = stage.estimates[key]
        percent = key.endswith("_fraction")
        scale, unit = (100, "%") if percent else (1, "")
        low, high, value = iv.low * scale, iv.high * scale, iv.value * scale
        text = f"{value:.4g}{unit}" if low == high else \
            f"{value:.4g}{unit}  [{low:.4g}, {high:.4g}]{unit}"
        table.add_row(_LABEL[key], text)
    table.add_row("data", f"{stage.data}; {stage.products:,} products, {stage.seconds:.1f} s"
                  + ("" if stage.complete else " (NOT converged)"))
    return Panel(table, title=f"stage {index}/{stages}: {_STAGE_TITLE[stage.name]}",
                 border_style=style)


def plan_text(plan: CostPlan, stages: list[StagePlan], budget: float | None) -> str:
    """The cost plan and the stages it expects, before the work."""
    first, *rest = plan.lines()
    lines = ["plan: " + first, *("      " + line for line in rest)]
    for i, s in enumerate(stages, 1):
        lines.append(f"      stage {i} {s.name}: {s.data}, ≈ {s.products:,} products ≈ "
                     f"{_duration(s.seconds)}")
    if budget is not None:
        lines.append(f"      time budget {_duration(budget)}: stages that do not fit are cut "
                     "and what stayed uncertain is said")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.1f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"

"""One section of the report per result file, by its kind: read from the file, never recomputed.

Each builder takes the result document (:func:`landscope.io.read_result`), the file it came from
(pictures, surfaces and records beside it are read from the same directory) and the section's
anchor, and returns the section's markup. The numbers are the ones the terminal printed, with
their evidence: residuals beside eigenvalues, brackets beside fractions, intervals beside
subsampled estimates, the trajectory's share in the plane beside the surface.
"""

from __future__ import annotations

from pathlib import Path

from landscope.errors import BadInputError
from landscope.report.page import Html, figure, number, pairs, picture, table, tag

VERDICTS = {"local_min": "local minimum", "saddle": "saddle point", "local_max": "local maximum",
            "degenerate": "degenerate critical point", "not_critical": "not a critical point"}
OBJECTIVE_FIELDS = ("name", "loss", "mode", "n", "dtype", "device", "data", "reduction",
                    "batch_weights", "hvp_engine", "chain_engine", "attention",
                    "tied_parameters", "frozen_parameters", "unused_parameters")


def section(kind: str, title: str, anchor: str, document: dict, source: Path, *body) -> Html:
    """A section with its heading and provenance (file, time, version, command)."""
    provenance = tag("p", f"{source.name} · written {document.get('created', '?')} by landscope "
                          f"{document.get('landscope_version', '?')} (torch "
                          f"{document.get('torch_version', '?')})", class_="muted")
    command = document.get("command")
    return tag("section", tag("h2", title), provenance,
               tag("p", "command: ", tag("code", command), class_="muted") if command else None,
               body, id=anchor, data_kind=kind)


# ---------------------------------------------------------------------- probe
def probe(document: dict, source: Path, anchor: str) -> Html:
    """The verdict and its evidence: the numbers, the spectrum, the staged estimates."""
    from landscope.plot.spectrum import spectrum_figure

    result, anytime = document.get("probe"), document.get("anytime")
    if result is None and anytime is None:
        raise BadInputError(f"{source.name} holds neither a probe nor staged estimates")
    body = []
    if result is None:
        body.append(tag("p", "partial: " if document.get("partial") else "",
                        anytime["statement"], class_="verdict partial"))
    else:
        objective = result.get("objective", {})
        body += [tag("p", VERDICTS[result["kind"]] + _strictness(result),
                     class_=f"verdict {result['kind']}"),
                 tag("p", result["reason"]),
                 tag("h3", "the model"),
                 pairs((key, objective[key]) for key in OBJECTIVE_FIELDS
                       if objective.get(key) not in (None, [], {})),
                 tag("h3", "the numbers"), _numbers(result),
                 figure(spectrum_figure(result, title="the Hessian's spectrum"),
                        f"{anchor}-spectrum"),
                 tag("h3", "how far to trust them"), _evidence(result)]
    if anytime is not None:
        body += [tag("h3", "stages"), _stages(anytime)]
    return section("probe", "Where training stopped (probe)", anchor, document, source, body)


def _strictness(result: dict) -> str:
    if result.get("strict") is None:
        return ""
    if result["strict"]:
        return " (strict)"
    return f" (not strict: {result.get('flat_directions')} flat direction(s))"


def _numbers(p: dict) -> Html:
    st, tol = p["stationarity"], p["tolerances"]
    largest, smallest = p["spectrum"]["largest"], p["spectrum"]["smallest"]
    rows = [("loss", number(p["loss"], 6), ""),
            ("‖∇L‖", number(p["grad_norm"]),
             f"a 1/ρ gradient step moves θ by {number(st['step'])} = "
             f"{number(st['relative_step'])}·‖θ‖ (critical below {number(st['step_tol'])})"),
            ("λ_max", number(largest["values"][0]),
             f"residual {number(largest['residuals'][0], 2)}"),
            ("λ_min", number(smallest["values"][0]),
             f"residual {number(smallest['residuals'][0], 2)}"),
            ("index", number(p["index"]), "fraction of negative eigenvalues"),
            ("minimum ratio", number(p["minimum_ratio"]), "fraction of positive eigenvalues"),
            ("condition number", number(p.get("condition_number")), "")]
    for key, label in (("negative", "negative"), ("zero", "flat"), ("positive", "positive")):
        f = p["fractions"][key]
        low, high = f["interval"]
        rows.append((f"{label} eigenvalues", number(f["value"]),
                     f"95 % bracket [{number(low)}, {number(high)}]"))
    note = (f"flat: |λ| ≤ {number(tol['flat_tol'], 2)}; the verdict counts |λ| ≤ "
            f"{number(tol['zero_tol'], 2)} = {number(tol['rel_tol'])}·ρ as zero")
    return table(["", "value", "evidence"], rows, caption=note)


def _evidence(p: dict) -> Html:
    evidence = p["evidence"]
    spectrum = evidence.get("spectrum", {})
    density = evidence.get("density") or {}
    quadrature = density.get("quadrature") or {}
    rows = [("path", evidence.get("path")),
            ("eigen-solver", f"{spectrum.get('iterations', '—')} iterations, "
                             f"{spectrum.get('restarts', '—')} restarts, converged "
                             f"{number(spectrum.get('converged'))}, tolerance "
                             f"{number(spectrum.get('tol'), 2)}"),
            ("density", f"{density.get('method', '—')}: {quadrature.get('probes', '—')} probes "
                        f"× {quadrature.get('steps', '—')} Lanczos steps"),
            ("products", evidence.get("counts", {}))]
    trial = p.get("objective", {}).get("chain_trial")
    if trial:
        rows.append(("chain engine against autograd", trial.get("relative_errors", {})))
    return pairs(rows)


def _stages(anytime: dict) -> Html:
    stages = table(["stage", "data", "products", "seconds", "complete", "verdict"],
                   ((s["name"], s["data"], s["products"], s["seconds"], s["complete"],
                     s.get("verdict") or "—") for s in anytime["stages"]))
    estimates = table(["estimate", "value", "95 % interval", "evidence"],
                      ((name, e["value"], f"[{number(e['interval'][0])}, "
                                          f"{number(e['interval'][1])}]", e["evidence"])
                       for name, e in anytime["estimates"].items()))
    uncertain = [tag("li", item) for item in anytime.get("uncertain", [])]
    return Html(stages + estimates + (tag("ul", uncertain) if uncertain else ""))


# ---------------------------------------------------------------------- surface
def surface(document: dict, source: Path, anchor: str) -> Html:
    """The landscape around the point, interactive, with the trajectory and its fidelity."""
    from landscope.plot.surface import interactive_figure
    from landscope.surface import Surface

    summary, meta = document["surface"], document["meta"]
    npz = source.with_name(next((Path(f).name for f in document.get("files", [])
                                 if f.endswith(".npz")), "surface.npz"))
    body = [pairs([("model", meta.get("objective", {}).get("name")),
                   ("grid", " × ".join(str(s) for s in summary["shape"])),
                   ("loss range", f"{number(summary['min'])} … {number(summary['max'])}"),
                   ("lowest at", summary["argmin"]),
                   ("directions", ", ".join(d["kind"] for d in
                                            meta.get("frame", {}).get("directions", []))),
                   ("complete", summary["complete"]),
                   ("stated error (budgeted view)", summary.get("max_error"))])]
    trajectory = summary.get("trajectory")
    if trajectory:
        body.append(tag("p", f"The training path ({trajectory['points']} points) is drawn by its "
                             f"projection: {100 * trajectory['explained']:.1f} % of its squared "
                             "distance from the centre lies in the plane; the median point is "
                             f"{number(trajectory['median_relative_distance'])} of its radius "
                             f"off it (at most {number(trajectory['max_distance'])})."))
    if npz.is_file():
        body.append(figure(interactive_figure(Surface.load(npz)), f"{anchor}-surface"))
    else:
        body.append(tag("p", f"{npz.name} is not beside {source.name}: the grid cannot be drawn",
                        class_="muted"))
    return section("surface", "What the landscape looks like (surface)", anchor, document,
                   source, body)


# ---------------------------------------------------------------------- race and remedies
def race(document: dict, source: Path, anchor: str) -> Html:
    """Who escapes: the race's summary table and its pictures."""
    rows = document["summary"]
    columns = [c for c in ("function", "optimizer", "goal", "lr", "runs", "success_rate",
                           "median_steps", "median_evaluations", "diverged", "ends")
               if any(c in row for row in rows)]
    settings = document["settings"]
    body = [pairs((key, settings[key]) for key in ("functions", "optimizers", "starts", "steps",
                                                  "seed") if key in settings),
            table([c.replace("_", " ") for c in columns],
                  ([row.get(c) for c in columns] for row in rows)),
            _pictures(source, "race-*.png")]
    return section("race", "Who gets out (race)", anchor, document, source, body)


def escape(document: dict, source: Path, anchor: str) -> Html:
    """Remedy trials on the network: the ranked table and the loss curves."""
    start, settings = document["start"], document["settings"]
    rows = [[row["rank"], row["candidate"], _plus_minus(row, "train_loss"),
             _plus_minus(row, "held_out"), row["negative_curvature_left"], row["diverged"],
             row["evaluations"], row["seconds"], row.get("description", "")]
            for row in document["summary"]]
    body = [tag("p", f"from loss {number(start.get('loss'))}, λ_min "
                     f"{number(start.get('lambda_min'))}, λ_max {number(start.get('lambda_max'))}"
                     f"; {settings.get('seeds')} seeds × a budget of {settings.get('steps')} "
                     "evaluations each, the same data order for every candidate"),
            table(["#", "candidate", "train loss", "held-out loss", "λ_min < 0 left", "diverged",
                   "evaluations", "s / run", "what it is"], rows),
            tag("ul", (tag("li", f"skipped {name}: {why}")
                       for name, why in document.get("skipped", {}).items())),
            _pictures(source, "escape-*.png")]
    return section("escape", "What gets you out (remedy trials)", anchor, document, source, body)


def _plus_minus(row: dict, key: str) -> str:
    mean = row.get(f"{key}_mean")
    return "—" if mean is None else f"{number(mean)} ± {number(row.get(f'{key}_std'), 2)}"


# ---------------------------------------------------------------------- doctor
def doctor(document: dict, source: Path, anchor: str) -> Html:
    """The doctor's findings, ranked, each with its evidence and remedies; the record's curves."""
    diagnosis = document["diagnosis"]
    summary = diagnosis["summary"]
    body = [pairs((key, summary.get(key)) for key in
                  ("model", "n_parameters", "optimizer", "lr", "steps", "first_loss",
                   "final_loss", "peak_loss", "final_status") if key in summary)]
    if diagnosis["healthy"]:
        body.append(tag("p", "healthy: no finding", class_="verdict local_min"))
    for number_, finding in enumerate(diagnosis["findings"], 1):
        body.append(_finding(number_, finding))
    body.append(_record(source))
    return section("doctor", "Why training stalled (doctor)", anchor, document, source, body)


def _finding(rank: int, f: dict) -> Html:
    cause = f.get("explained_by")
    steps = f.get("steps")
    return tag("div",
               tag("h3", f"{rank}. {f['severity'].upper()} · {f['title']}"),
               tag("p", f["summary"]),
               tag("p", f"a consequence of {cause}" if cause else None, class_="muted"),
               pairs(list(f.get("evidence", {}).items())
                     + ([("steps", "–".join(str(s) for s in steps))] if steps else [])),
               tag("p", tag("b", "why: "), f.get("explanation", "")),
               tag("ol", (tag("li", remedy) for remedy in f.get("remedies", []))),
               class_=f"finding {f['severity']}", data_finding=f["name"])


def _record(source: Path) -> Html:
    """The monitored record beside the doctor's file, drawn; nothing if there is none."""
    from landscope.monitor.record import HEADER, read_record
    from landscope.plot.record import record_figure

    if not (source.parent / HEADER).is_file():
        return Html("")
    return figure(record_figure(read_record(source.parent), title="the record"),
                  f"record-{source.parent.name}")


# ---------------------------------------------------------------------- studies
def study(document: dict, source: Path, anchor: str) -> Html:
    """A study's checks against its paper or closed form, and its figure."""
    checks = table(["check", "measured", "expected", ""],
                   ([c["name"], c["measured"], c["expected"],
                     tag("span", "pass", class_="pass") if c["passed"]
                     else tag("span", "FAIL", class_="fail")] for c in document["checks"]))
    body = [tag("p", f"{document['scale']} scale · seed {document['seed']} · "
                     f"{number(document.get('seconds'))} s"),
            checks, _pictures(source, f"study-{document['study']}.png")]
    return section("study", f"Study: {document['study']}", anchor, document, source, body)


def _pictures(source: Path, pattern: str) -> Html:
    return Html("".join(tag("figure", picture(path, path.name), tag("figcaption", path.name))
                        for path in sorted(source.parent.glob(pattern))))


# ---------------------------------------------------------------------- at a glance
def headline(document: dict) -> str:
    """One line of a result for the top of the page: what a reader would ask of it first."""
    kind = document["kind"]
    if kind == "probe":
        p = document.get("probe")
        if p is None:
            return f"partial: {document['anytime']['verdict']}"
        return (f"{VERDICTS[p['kind']]} · loss {number(p['loss'])} · ‖∇L‖ "
                f"{number(p['grad_norm'])} · λ from {number(p['lambda_min'])} to "
                f"{number(p['lambda_max'])} · index {number(p['index'])}")
    if kind == "surface":
        s = document["surface"]
        path = s.get("trajectory")
        return (f"loss {number(s['min'])} … {number(s['max'])} on a "
                f"{' × '.join(map(str, s['shape']))} grid"
                + (f" · {100 * path['explained']:.1f} % of the path in the plane" if path else ""))
    if kind == "race":
        functions = document["settings"]["functions"]
        return " · ".join(_winner(document["summary"], f) for f in functions)
    if kind == "escape":
        best = document["summary"][0]
        return (f"best: {best['candidate']} (train loss {_plus_minus(best, 'train_loss')}) from "
                f"{number(document['start'].get('loss'))}")
    if kind == "doctor":
        findings = document["diagnosis"]["findings"]
        if not findings:
            return "healthy: no finding"
        return (f"{findings[0]['severity']}: {findings[0]['title']}"
                + (f" (+{len(findings) - 1} more)" if len(findings) > 1 else ""))
    checks = document["checks"]
    return f"{sum(c['passed'] for c in checks)} of {len(checks)} checks pass"


def _winner(rows: list[dict], function: str) -> str:
    """The optimiser that succeeded most often on ``function``, then in the fewest steps."""
    mine = [r for r in rows if r["function"] == function and r.get("success_rate") is not None]
    if not mine:
        return f"{function}: no success rate"
    best = min(mine, key=lambda r: (-r["success_rate"], r.get("median_steps") or float("inf")))
    if best["success_rate"] == 0:
        return f"{function}: none of {len(mine)} optimisers succeeded"
    return (f"{function}: {best['optimizer']} {100 * best['success_rate']:.0f} % "
            f"in a median {number(best.get('median_steps'))} steps")


BUILDERS = {"probe": probe, "surface": surface, "race": race, "escape": escape,
            "doctor": doctor, "study": study}
"""Section builders by result kind, in the order the report shows them."""
TITLES = {"probe": "verdict", "surface": "surface", "race": "race", "escape": "remedies",
          "doctor": "doctor", "study": "study"}

"""The status page (``GET /``): served models and their cards, training jobs, corrections over time, the
learning curve of promoted models and links to the agreement reports. Server-rendered HTML with an
inline SVG chart: no scripts, no front-end build. Every figure on it comes from ``status_view``, which
``GET /status`` returns too, so the page and the API cannot disagree."""

from __future__ import annotations

from html import escape
from typing import Any
from urllib.parse import quote

from recommender.errors import ModelError
from recommender.service.state import Service

TASKS = (("ner", "NER"), ("re", "RE"), ("spans", "all spans"))


def _dev_scores(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Exact F1 with its interval per task on the model's development split (for a family that does
    not score dev itself, the gate's figures on it); None: not measured."""
    dev = metrics.get("dev") or (metrics.get("gate") or {}).get("candidate", {}).get("dev") or {}
    if not dev:
        return None
    out: dict[str, Any] = {"notes": metrics.get("dev_notes") or dev.get("documents")}
    for task, _ in TASKS:
        if task in dev:
            exact = dev[task]["exact"]
            ci = exact.get("ci", {}).get("f1")  # the gate keeps point figures only
            out[task] = {"f1": round(exact["f1"], 3), "ci": [round(x, 3) for x in ci] if ci else None}
    return out


def _corrected_scores(metrics: dict[str, Any]) -> dict[str, Any] | None:
    """Exact F1 of a model against the corrected notes held out when it was trained (the gate's
    figures); None for a model no retraining job made."""
    heldout = (metrics.get("gate") or {}).get("candidate", {}).get("heldout")
    if not heldout:
        return None
    out: dict[str, Any] = {"notes": heldout.get("documents")}
    for task, _ in TASKS:
        if task in heldout:
            out[task] = {"f1": round(heldout[task]["exact"]["f1"], 3), "ci": None}
    return out


def _card(info: Any) -> dict[str, Any]:
    m = info.metrics
    return {
        "version": info.version,
        "extractor": info.extractor,
        "created": info.created,
        "data_fingerprint": info.data_fingerprint,
        "seed": m.get("seed"),
        "train_notes": m.get("train_notes"),
        "dev": _dev_scores(m),
    }


def status_view(service: Service) -> dict[str, Any]:
    """What the status page shows, as JSON (also under ``GET /status``)."""
    try:
        served = _card(service.predictor.current.info)
    except ModelError:
        served = None
    promotions = [e for e in service.model_versions.events() if e.get("action") == "promote"]
    by_version = {v.version: v for v in service.model_versions.versions()}
    curve = []
    for event in promotions:
        v = by_version.get(event["version"])
        if v is not None:
            curve.append(
                {
                    "version": v.version,
                    "promoted": event.get("at"),
                    "dev": _dev_scores(v.metrics),
                    "corrected": _corrected_scores(v.metrics),
                }
            )
    projects = service.store.daily_counts()

    def dev(version: str) -> dict[str, Any] | None:
        info = by_version.get(version)
        return _dev_scores(info.metrics) if info is not None else None

    return {
        "served": served,
        "recommenders": {
            name: {"task": rec.task, "layer": rec.layer, "version": served["version"] if served else None}
            for name, rec in service.settings.recommenders.items()
        },
        "learning_curve": curve,
        "evidence": service.evidence.view(dev),
        "precompute": service.ahead.status(),
        "cores": service.cores.as_dict(),
        "corrections": projects,
        "agreement_reports": {p: f"/projects/{quote(p, safe='')}/agreement?format=html" for p in projects},
    }


# --- rendering -----------------------------------------------------------------------------------
def _f1(score: dict[str, Any] | None) -> str:
    if not score:
        return "<span class=muted>not measured</span>"
    ci = f" <span class=muted>({score['ci'][0]:.3f}-{score['ci'][1]:.3f})</span>" if score["ci"] else ""
    return f"{score['f1']:.3f}{ci}"


def _card_html(card: dict[str, Any] | None) -> str:
    if card is None:
        return "<p>No model is served yet: a first one is being trained, see the jobs below.</p>"
    dev = card["dev"]
    rows = "".join(
        f"<tr><th>{label}</th><td>{_f1(dev.get(t) if dev else None)}</td></tr>" for t, label in TASKS
    )
    where = f"{dev['notes']} development notes" if dev else "no development split"
    return (
        f"<table class=card><tr><th>version</th><td><code>{escape(card['version'])}</code></td></tr>"
        f"<tr><th>extractor</th><td>{escape(card['extractor'])}</td></tr>"
        f"<tr><th>created</th><td>{escape(str(card['created']))}</td></tr>"
        f"<tr><th>trained on</th><td>{escape(str(card['train_notes'] or '?'))} notes"
        f"{' of ' + escape(card['seed']) if card['seed'] else ''}</td></tr>"
        f"<tr><th>data fingerprint</th><td><code>{escape(card['data_fingerprint'] or '')}</code></td></tr>"
        f"<tr><th colspan=2>exact F1 on {where} (95% CI)</th></tr>{rows}</table>"
    )


def _expected_end(stamp: str | None) -> str:
    if not stamp:
        return ""
    return f" <span class=muted>(expected to end about {escape(stamp[11:16])} UTC)</span>"


def _jobs_html(retraining: dict[str, Any] | None) -> str:
    if retraining is None:
        return "<p class=muted>The retraining worker is off (KIWI_RETRAIN=false).</p>"
    jobs = retraining["running"] + retraining["queued"] + list(reversed(retraining["finished"]))
    if not jobs:
        return "<p class=muted>No training job yet: one starts after enough corrections.</p>"
    rows = []
    for j in jobs:
        gate = j["metrics"].get("decision")
        decision = (
            f"{escape(gate)}: {escape(j['metrics'].get('reason', ''))}"
            if gate
            else escape(j["message"] or "")
        )
        rows.append(
            f"<tr><td>{j['id']}</td><td>{escape(j['project'])}</td><td>{escape(j['state'])}</td>"
            f"<td><progress max=1 value={j['progress']}></progress> {100 * j['progress']:.0f}% "
            f"{escape(j['stage'])}{_expected_end(j.get('expected_end'))}</td>"
            f"<td>{escape(j['candidate'] or '')}</td><td>{decision}</td></tr>"
        )
    return (
        "<table><tr><th>job</th><th>project</th><th>state</th><th>progress</th><th>candidate</th>"
        f"<th>gate</th></tr>{''.join(rows)}</table>"
    )


SERIES = (  # (figures, task, colour, dash): the curve's lines
    ("dev", "ner", "#e15759", ""),
    ("dev", "re", "#4e79a7", ""),
    ("corrected", "ner", "#e15759", "5 3"),
    ("corrected", "re", "#4e79a7", "5 3"),
)


def _curve_svg(curve: list[dict[str, Any]]) -> str:
    if not any(c["dev"] or c["corrected"] for c in curve):
        return "<p class=muted>No promoted model with measured scores yet.</p>"
    w, h, pad = 640, 240, 36
    step = (w - 2 * pad) / max(len(curve) - 1, 1)

    def xy(i: int, f1: float) -> tuple[float, float]:
        return pad + i * step, h - pad - f1 * (h - 2 * pad)

    parts = [f'<svg class=curve width="{w}" height="{h}" viewBox="0 0 {w} {h}" role=img>']
    for tick in (0.0, 0.25, 0.5, 0.75, 1.0):
        _, y = xy(0, tick)
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="4" y="{y + 4:.1f}" font-size="11">{tick:.2f}</text>')
    for figures, task, colour, dash in SERIES:
        xys = [(*xy(i, c[figures][task]["f1"]), c) for i, c in enumerate(curve) if task in (c[figures] or {})]
        if len(xys) > 1:
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _ in xys)
            parts.append(
                f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2" '
                f'stroke-dasharray="{dash or "none"}"/>'
            )
        for x, y, c in xys:
            label = f"{c['version']}: {task.upper()} {c[figures][task]['f1']:.3f} ({figures})"
            title = f"<title>{escape(label)}</title>"
            if figures == "dev":
                parts.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="4" fill="{colour}">{title}</circle>')
            else:
                parts.append(
                    f'<rect x="{x - 3.5:.1f}" y="{y - 3.5:.1f}" width="7" height="7" fill="{colour}">'
                    f"{title}</rect>"
                )
    parts.append("</svg>")
    legend = (
        "<p><span style='color:#e15759'>&#9679; NER</span> <span style='color:#4e79a7'>&#9679; RE</span> "
        "exact F1 on each model's development split; <span style='color:#e15759'>&#9632;</span> "
        "<span style='color:#4e79a7'>&#9632;</span> dashed: on the corrected notes held out from its "
        "training, so far; in order of promotion</p>"
    )

    def corrected(c: dict[str, Any], task: str) -> str:
        return _f1((c["corrected"] or {}).get(task)) if c["corrected"] else "<span class=muted>-</span>"

    rows = "".join(
        f"<tr><td>{n}</td><td><code>{escape(c['version'])}</code></td>"
        f"<td>{escape(str(c['promoted'] or ''))}</td>"
        f"<td>{_f1((c['dev'] or {}).get('ner'))}</td><td>{_f1((c['dev'] or {}).get('re'))}</td>"
        f"<td>{corrected(c, 'ner')}</td><td>{corrected(c, 're')}</td>"
        f"<td>{(c['corrected'] or {}).get('notes') or ''}</td></tr>"
        for n, c in enumerate(curve, 1)
    )
    table = (
        "<table><tr><th>#</th><th>version</th><th>promoted</th><th>NER (dev)</th><th>RE (dev)</th>"
        "<th>NER (corrected)</th><th>RE (corrected)</th><th>corrected notes held out</th></tr>"
        f"{rows}</table>"
    )
    return "".join(parts) + legend + table


def _corrections_html(counts: dict[str, dict[str, int]], links: dict[str, str]) -> str:
    if not counts:
        return "<p class=muted>No corrections stored yet.</p>"
    rows = []
    for project, days in counts.items():
        top = max(days.values())
        bars = "".join(
            f"<div class=bar title='{escape(day)}: {n}' style='height:{4 + 40 * n / top:.0f}px'></div>"
            for day, n in days.items()
        )
        rows.append(
            f"<tr><td>{escape(project)}</td><td>{sum(days.values())}</td><td>{escape(min(days))} to "
            f"{escape(max(days))}</td><td><div class=bars>{bars}</div></td>"
            f"<td><a href='{escape(links[project])}'>agreement report</a></td></tr>"
        )
    return (
        "<table><tr><th>project</th><th>corrections</th><th>days</th><th>per day</th><th></th></tr>"
        f"{''.join(rows)}</table>"
    )


# --- what the corrections say ---------------------------------------------------------------------
PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#b07aa1", "#76b7b2", "#edc948", "#9c755f", "#e15759")


def _rate(figure: dict[str, Any] | None, key: str = "rate") -> str:
    if not figure or figure.get(key) is None:
        return "<span class=muted>-</span>"
    ci = figure.get("ci")
    return f"{figure[key]:.3f}" + (f" <span class=muted>({ci[0]:.3f}-{ci[1]:.3f})</span>" if ci else "")


def _evidence_html(evidence: dict[str, dict[str, Any]]) -> str:
    if not evidence:
        return (
            "<p class=muted>No corrected note has a logged suggestion yet: figures appear once annotators "
            "save notes the model pre-annotated.</p>"
        )
    rows = []
    for version, v in reversed(list(evidence.items())):  # newest first
        f1 = v.get("f1", {})
        dev = v.get("dev") or {}
        rows.append(
            f"<tr><td><code>{escape(version)}</code></td><td>{v['notes']}</td>"
            f"<td>{_rate(v.get('acceptance'))}</td>"
            f"<td>{_rate((v.get('relations') or {}).get('acceptance'))}</td>"
            f"<td>{_rate(f1.get('spans', {}).get('exact'), 'f1')}</td>"
            f"<td>{_rate(f1.get('spans', {}).get('relaxed'), 'f1')}</td>"
            f"<td>{_rate(f1.get('ner', {}).get('exact'), 'f1')}</td>"
            f"<td>{_rate(f1.get('re', {}).get('exact'), 'f1')}</td>"
            f"<td>{_rate(v.get('edits_per_note'), 'mean')}</td>"
            f"<td>{_f1(dev.get('ner'))}</td><td>{_f1(dev.get('re'))}</td>"
            f"<td>{escape(v['first'][:10])} to {escape(v['last'][:10])}</td></tr>"
        )
    table = (
        "<table><tr><th>model version</th><th>notes</th><th>spans accepted unchanged</th>"
        "<th>relations accepted</th><th>F1 vs annotators (exact)</th><th>(relaxed)</th>"
        "<th>NER</th><th>RE</th>"
        "<th>edits per note</th><th>NER (dev)</th><th>RE (dev)</th><th>corrected</th></tr>"
        f"{''.join(rows)}</table>"
        "<p class=muted>Each model version's suggestions against what the annotators saved (the newest "
        "correction of each note and annotator), 95% bootstrap intervals over notes; dev: the same model "
        "on its development split.</p>"
    )
    details = []
    for version, v in reversed(list(evidence.items())):
        labels = "".join(
            f"<tr><td>{escape(label)}</td><td>{_rate(x, 'f1')}</td><td>{_rate(x, 'acceptance')}</td>"
            f"<td>{x.get('suggested', 0)}</td><td>{x.get('support', 0)}</td></tr>"
            for label, x in sorted(v.get("labels", {}).items())
        )
        projects = "".join(
            f"<tr><td>{escape(p)}</td><td>{x['notes']}</td><td>{_rate(x['acceptance'])}</td>"
            f"<td>{_rate(x['f1_spans'], 'f1')}</td><td>{_rate(x['edits_per_note'], 'mean')}</td></tr>"
            for p, x in v.get("projects", {}).items()
        )
        details.append(
            f"<details><summary><code>{escape(version)}</code>: per label and per project</summary>"
            "<table><tr><th>label</th><th>F1 (exact)</th><th>accepted</th><th>suggested</th>"
            "<th>annotated</th></tr>"
            f"{labels}</table><table><tr><th>project</th><th>notes</th><th>accepted</th><th>F1</th>"
            f"<th>edits per note</th></tr>{projects}</table></details>"
        )
    return table + _evidence_svg(evidence) + "".join(details)


def _evidence_svg(evidence: dict[str, dict[str, Any]]) -> str:
    """Acceptance (solid) and exact F1 against the annotators (dashed) per UTC day, a colour per
    model version. Markers are diamonds (polygons)."""
    days = sorted({d for v in evidence.values() for d in v.get("days", {})})
    if not days:
        return ""
    w, h, pad = 640, 220, 36
    step = (w - 2 * pad) / max(len(days) - 1, 1)
    column = {d: i for i, d in enumerate(days)}

    def xy(day: str, value: float) -> tuple[float, float]:
        return pad + column[day] * step, h - pad - value * (h - 2 * pad)

    parts = [f'<svg class=evidence width="{w}" height="{h}" viewBox="0 0 {w} {h}" role=img>']
    for tick in (0.0, 0.5, 1.0):
        _, y = xy(days[0], tick)
        parts.append(f'<line x1="{pad}" x2="{w - pad}" y1="{y:.1f}" y2="{y:.1f}" stroke="#ddd"/>')
        parts.append(f'<text x="4" y="{y + 4:.1f}" font-size="11">{tick:.1f}</text>')
    parts.append(f'<text x="{pad}" y="{h - 8}" font-size="11">{escape(days[0])}</text>')
    if len(days) > 1:
        parts.append(f'<text x="{w - pad - 70}" y="{h - 8}" font-size="11">{escape(days[-1])}</text>')
    legend = []
    for n, (version, v) in enumerate(evidence.items()):
        colour = PALETTE[n % len(PALETTE)]
        legend.append(f"<span style='color:{colour}'>&#9670; {escape(version)}</span>")
        for key, field, dash in (("acceptance", "rate", ""), ("f1_spans", "f1", "5 3")):
            points = [
                (*xy(d, x[key][field]), d, x["notes"])
                for d, x in v["days"].items()
                if x.get(key) and x[key].get(field) is not None
            ]
            if len(points) > 1:
                line = " ".join(f"{x:.1f},{y:.1f}" for x, y, _, _ in points)
                parts.append(
                    f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2" '
                    f'stroke-dasharray="{dash or "none"}"/>'
                )
            for x, y, day, notes in points:
                label = f"{version} {day}: {key} {v['days'][day][key][field]:.3f} ({notes} notes)"
                diamond = f"{x:.1f},{y - 5:.1f} {x + 5:.1f},{y:.1f} {x:.1f},{y + 5:.1f} {x - 5:.1f},{y:.1f}"
                parts.append(
                    f'<polygon points="{diamond}" fill="{colour}"><title>{escape(label)}</title></polygon>'
                )
    parts.append("</svg>")
    return (
        "".join(parts)
        + f"<p>{' '.join(legend)}: per day, solid the share of suggested spans accepted unchanged, dashed "
        "exact F1 of the suggestions against the corrections</p>"
    )


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222;padding:0 1em}
table{border-collapse:collapse;margin:.5em 0 1.5em}th,td{border-bottom:1px solid #e5e5e5;padding:4px 10px;
text-align:left;vertical-align:top}th{background:#f6f6f6}.muted{color:#777}code{font-size:90%}
.bars{display:flex;align-items:flex-end;gap:2px;height:46px}.bar{width:8px;background:#59a14f}
h1 small{font-size:50%;color:#777}
"""


def _precompute_html(models: dict[str, dict[str, Any]]) -> str:
    if not models:
        return "<p class=muted>No slow model served: every prediction is computed in its request.</p>"
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td><code>{escape(m['version'])}</code></td>"
        + "".join(f"<td>{m[state]}</td>" for state in ("queued", "running", "done", "failed"))
        + "</tr>"
        for name, m in models.items()
    )
    return (
        "<table><tr><th>model</th><th>version</th><th>queued</th><th>running</th><th>done</th>"
        f"<th>failed</th></tr>{rows}</table>"
    )


def _cores_html(cores: dict[str, Any]) -> str:
    lanes = cores["lanes"]
    return (
        f"<table><tr><th>cores available</th><td>{cores['cores']}</td></tr>"
        f"<tr><th>threads of this process</th><td>{cores['threads']} "
        f"<span class=muted>(OpenMP waiting: {escape(cores['wait_policy'].lower())})</span></td></tr>"
        f"<tr><th>requests</th><td>{lanes} model call{'s' if lanes > 1 else ''} at once, "
        f"{cores['lane_threads']} thread(s) each</td></tr>"
        f"<tr><th>a training job</th><td>{cores['trainer_threads']} thread(s)</td></tr>"
        f"<tr><th>precompute worker</th><td>{cores['precompute_threads']} thread(s), lower priority</td></tr>"
        "</table>"
    )


def render_status_page(view: dict[str, Any], retraining: dict[str, Any] | None, version: str) -> str:
    recs = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(r['task'])}</td><td>{escape(r['layer'])}</td>"
        f"<td><code>{escape(r['version'] or 'none yet')}</code></td></tr>"
        for name, r in view["recommenders"].items()
    )
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Kiwi Recommender status</title>
<meta http-equiv=refresh content=30><style>{STYLE}</style></head><body>
<h1>Kiwi Recommender <small>{escape(version)}</small></h1>
<p class=muted>Refreshes every 30 seconds.
JSON: <a href="/status">/status</a>, API docs: <a href="/docs">/docs</a>.</p>
<h2>Served model</h2>{_card_html(view["served"])}
<h2>Recommenders</h2>
<table><tr><th>name</th><th>task</th><th>layer</th><th>model version</th></tr>{recs}</table>
<h2>Predictions computed ahead</h2>{_precompute_html(view["precompute"])}
<h2>Training jobs</h2>{_jobs_html(retraining)}
<h2>Cores</h2>{_cores_html(view["cores"])}
<h2>What the annotators' corrections say</h2>{_evidence_html(view["evidence"])}
<h2>Learning curve of promoted models</h2>{_curve_svg(view["learning_curve"])}
<h2>Corrections per project</h2>{_corrections_html(view["corrections"], view["agreement_reports"])}
</body></html>"""

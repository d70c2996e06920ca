"""The agreement report as one self-contained HTML page (inline CSS and SVG, no network), Markdown and
JSON. The HTML and Markdown files show note text in the disagreement examples: they are PHI."""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from recommender.agreement.report import AgreementReport

EXAMPLES = 60
WORST = 10


PAIR_HEADER = [
    "A",
    "B",
    "notes",
    "entities",
    "modifiers",
    "relations",
    "all spans",
    "κ entities",
    "κ modifiers",
]


def write_report(report: AgreementReport, out: Path, *, examples: int = EXAMPLES) -> list[Path]:
    """Write ``agreement.html``, ``agreement.md`` and ``agreement.json`` into ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    paths = [out / "agreement.html", out / "agreement.md", out / "agreement.json"]
    paths[0].write_text(html_report(data, examples=examples), encoding="utf-8")
    paths[1].write_text(markdown_report(data, examples=examples), encoding="utf-8")
    paths[2].write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return paths


def _f(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ci(ci: list[float] | None) -> str:
    return "" if not ci else f"{ci[0]:.3f}–{ci[1]:.3f}"


def _color(value: float | None) -> str:
    """Red (0) to green (1) through yellow; grey when undefined."""
    if value is None:
        return "#ddd"
    v = min(max(value, 0.0), 1.0)
    r, g = (255, int(510 * v)) if v < 0.5 else (int(510 * (1 - v)), 200)
    return f"rgb({r},{g},90)"


def _summary(data: dict[str, Any]) -> list[tuple[str, str]]:
    pooled = data["pooled"]
    rows = [
        ("notes", str(data["documents"])),
        ("raters", ", ".join(data["raters"])),
        ("span F1 exact (all pairs)", _f(pooled["spans"]["exact"]["f1"])),
        ("span F1 relaxed (all pairs)", _f(pooled["spans"]["relaxed"]["f1"])),
        ("entity F1 exact", _f(pooled["ner"]["exact"]["f1"])),
        ("modifier F1 exact", _f(pooled["modifiers"]["exact"]["f1"])),
        ("relation F1 exact", _f(pooled["re"]["exact"]["f1"])),
    ]
    for layer in ("entities", "modifiers"):
        a = data["krippendorff_alpha"][layer]
        rows.append((f"Krippendorff's alpha, {layer} (tokens)", f"{_f(a['value'])} [{_ci(a['ci'])}]"))
        if data["fleiss_kappa"]:
            k = data["fleiss_kappa"][layer]
            rows.append((f"Fleiss' kappa, {layer} (tokens)", f"{_f(k['value'])} [{_ci(k['ci'])}]"))
    u = data["unitizing_alpha"]
    rows.append(
        (
            "unitizing alpha (characters; all / entities / modifiers)",
            f"{_f(u['all'])} / {_f(u['entities'])} / {_f(u['modifiers'])} over {u['documents']} notes",
        )
    )
    return rows


# --- HTML ------------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px;color:#222;max-width:1200px}
h1{font-size:1.6em}h2{margin-top:1.6em;border-bottom:1px solid #ccc;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0}td,th{border:1px solid #ccc;padding:3px 8px;font-size:.9em}
th{background:#f2f2f2}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ex{margin:6px 0;padding:6px 10px;border-left:4px solid #c33;background:#fafafa;font-size:.9em}
mark{background:#ffe066;padding:0 2px}.kind{font-weight:600;color:#a22}.muted{color:#777}
"""


def _svg(width: float, height: float) -> str:
    return f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'


def _text(x: float, y: float, body: str, *, anchor: str = "start", size: int = 12) -> str:
    return f'<text x="{x}" y="{y}" text-anchor="{anchor}" font-size="{size}">{body}</text>'


def _heatmap(data: dict[str, Any]) -> str:
    raters = data["raters"]
    n = len(raters)
    cell, pad = 64, 100
    value = {(p["a"], p["b"]): p["spans"]["exact"]["f1"] for p in data["pairs"]}
    parts = [_svg(pad + n * cell + 10, pad + n * cell + 10)]
    for k, r in enumerate(raters):
        label = escape(r[:20])
        parts.append(_text(pad - 6, pad + k * cell + cell / 2 + 4, label, anchor="end"))
        x = pad + k * cell + cell / 2
        parts.append(
            f'<text x="{x}" y="{pad - 6}" font-size="12" transform="rotate(-40 {x} {pad - 6})">{label}</text>'
        )
    for i, a in enumerate(raters):
        for j, b in enumerate(raters):
            v = 1.0 if i == j else value.get((a, b), value.get((b, a)))
            x, y = pad + j * cell, pad + i * cell
            parts.append(f'<rect x="{x}" y="{y}" width="{cell - 2}" height="{cell - 2}" fill="{_color(v)}"/>')
            parts.append(_text(x + cell / 2 - 1, y + cell / 2 + 4, _f(v), anchor="middle"))
    parts.append("</svg>")
    return "".join(parts)


def _bars(per_type: dict[str, Any]) -> str:
    rows = [(t, s) for t, s in per_type.items() if s["exact"]["tp"] + s["exact"]["fn"] + s["exact"]["fp"] > 0]
    width, label_w, bar_h = 420, 170, 16
    height = len(rows) * (bar_h + 6) + 30
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{label_w + width + 150}" height="{height}">']
    for k, (t, s) in enumerate(rows):
        y = 20 + k * (bar_h + 6)
        ex, rel = s["exact"]["f1"], s["relaxed"]["f1"]
        parts.append(
            f'<text x="{label_w - 6}" y="{y + 12}" text-anchor="end" font-size="12">{escape(t)}</text>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{y}" width="{width * rel:.1f}" height="{bar_h}" fill="#b7d7f0"/>'
        )
        parts.append(
            f'<rect x="{label_w}" y="{y + 4}" width="{width * ex:.1f}" height="{bar_h - 8}" fill="#2a6fb0"/>'
        )
        gold = s["exact"]["tp"] + s["exact"]["fn"]
        parts.append(_text(label_w + width + 6, y + 12, f"{ex:.2f} / {rel:.2f} (n={gold})", size=11))
    parts.append(_text(label_w, 12, "dark: exact F1, light: relaxed F1 (pooled over pairs)", size=11))
    parts.append("</svg>")
    return "".join(parts)


def _table(header: list[str], rows: list[list[str]], numeric_from: int = 1) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join(
        "<tr>"
        + "".join(f"<td{' class=num' if k >= numeric_from else ''}>{c}</td>" for k, c in enumerate(r))
        + "</tr>"
        for r in rows
    )
    return f"<table><tr>{head}</tr>{body}</table>"


def _confusion_html(block: dict[str, Any]) -> str:
    labels, matrix = block["labels"], block["matrix"]
    top = max((v for row in matrix for v in row), default=1) or 1
    head = "<th>A \\ B</th>" + "".join(f"<th>{escape(lbl)}</th>" for lbl in labels)
    body = ""
    for lbl, row in zip(labels, matrix, strict=True):
        cells = "".join(
            f'<td class=num style="background:rgba(42,111,176,{0.08 + 0.9 * v / top:.2f})">{v}</td>'
            if v
            else "<td></td>"
            for v in row
        )
        body += f"<tr><th>{escape(lbl)}</th>{cells}</tr>"
    return f"<table><tr>{head}</tr>{body}</table>"


def _examples_html(items: list[dict[str, Any]], limit: int) -> str:
    out = []
    for d in items[:limit]:
        c = d["context"]
        side_a = f"A: {escape(str(d['label_a']))} {d['span_a'] or ''}"
        labels = f"{side_a} · B: {escape(str(d['label_b']))} {d['span_b'] or ''}"
        extra = ""
        if "modifier" in d:
            m = d["modifier"]
            extra = f" · modifier {escape(m['label'])} “{escape(m['text'])}”"
        out.append(
            f'<div class="ex"><span class="kind">{escape(d["kind"])}</span> '
            f'<span class="muted">{escape(d["document"])} · {escape(d["a"])} vs {escape(d["b"])} · '
            f"{labels}{extra}</span>"
            f"<br>…{escape(c['left'])}<mark>{escape(c['mention'])}</mark>{escape(c['right'])}…</div>"
        )
    return "".join(out)


VERSUS_HEADER = ["model", "notes", "entities", "modifiers", "relations", "all spans", "per annotator (spans)"]


def _versus_rows(data: dict[str, Any], cell: Any) -> list[list[str]]:
    """The "model vs annotators" rows, then the annotators' pooled agreement as the reference."""
    tasks = ("ner", "modifiers", "re", "spans")
    rows = []
    for m in data.get("model_vs_annotators", []):
        per = ", ".join(f"{a} {_f(x['spans_exact_f1'])}" for a, x in m["per_annotator"].items())
        rows.append([m["model"], str(m["documents"]), *(cell(m.get(t)) for t in tasks), per])
    if rows:
        pooled = data["pooled"]
        rows.append(
            ["annotators with each other", str(data["documents"]), *(cell(pooled[t]) for t in tasks), ""]
        )
    return rows


def _versus_html(data: dict[str, Any]) -> str:
    def cell(score: dict[str, Any] | None) -> str:
        if not score:
            return "–"
        e = score["exact"]
        return f"{_f(e['f1'])} <span class=muted>[{_ci(e['ci']['f1'])}]</span> / {_f(score['relaxed']['f1'])}"

    rows = _versus_rows(data, cell)
    if not rows:
        return ""
    escaped = [[escape(r[0]), *r[1:-1], escape(r[-1])] for r in rows]
    return (
        "<h2>Model vs annotators</h2><p class=muted>Each model's suggestions against each annotator's "
        "version (the annotator as gold), with the same matcher as the annotator pairs, pooled over "
        "annotators; F1 exact [95% interval] / relaxed. Last row: the annotators against each other.</p>"
        + _table(VERSUS_HEADER, escaped, numeric_from=1)
    )


def html_report(data: dict[str, Any], *, examples: int = EXAMPLES) -> str:
    pair_rows = []
    for p in data["pairs"]:
        row = [escape(p["a"]), escape(p["b"]), str(p["documents"])]
        for task in ("ner", "modifiers", "re", "spans"):
            e, r = p[task]["exact"], p[task]["relaxed"]
            row.append(f"{_f(e['f1'])} <span class=muted>[{_ci(e['ci']['f1'])}]</span> / {_f(r['f1'])}")
        row += [_f(p["cohen_kappa"][layer]["value"]) for layer in ("entities", "modifiers")]
        pair_rows.append(row)
    worst = sorted(
        (d for d in data["per_document"] if d["spans_exact_f1"] is not None),
        key=lambda d: d["spans_exact_f1"],
    )[:WORST]
    worst_rows = [
        [
            escape(d["id"]),
            _f(d["spans_exact_f1"]),
            _f(d["spans_relaxed_f1"]),
            _f(d["ner_exact_f1"]),
            _f(d["re_exact_f1"]),
            _f(d["unitizing_alpha"]),
            str(d["disagreements"]),
        ]
        for d in worst
    ]
    kinds: dict[str, int] = {}
    for d in data["disagreements"]:
        kinds[d["kind"]] = kinds.get(d["kind"], 0) + 1
    summary = _table(
        ["measure", "value"], [[escape(k), escape(v)] for k, v in _summary(data)], numeric_from=9
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Kiwi inter-annotator agreement</title>
<style>{CSS}</style></head><body>
<h1>Inter-annotator agreement</h1>
{summary}
{_versus_html(data)}
<h2>Pairwise span F1 (exact)</h2>
{_heatmap(data)}
<h2>Pairs</h2>
<p class=muted>F1 exact [95% bootstrap interval] / relaxed; Cohen's kappa on tokens.</p>
{
        _table(
            PAIR_HEADER,
            pair_rows,
            numeric_from=2,
        )
    }
<h2>Per type</h2>
{_bars(data["pooled"]["spans"]["per_type"])}
<h3>Relations</h3>
{_bars(data["pooled"]["re"]["per_type"])}
<h2>Type confusion</h2>
<p class=muted>Label-blind relaxed alignment; rows: first rater of each pair, columns: second;
none = unmatched.</p>
<h3>Entities</h3>{_confusion_html(data["confusion"]["entities"])}
<h3>Modifiers</h3>{_confusion_html(data["confusion"]["modifiers"])}
<h2>Worst notes</h2>
{
        _table(
            ["note", "span F1 exact", "relaxed", "entity F1", "relation F1", "unitizing α", "disagreements"],
            worst_rows,
        )
    }
<h2>Disagreements</h2>
<p class=muted>{escape(", ".join(f"{k}: {v}" for k, v in sorted(kinds.items())))}; first {examples} shown.</p>
{_examples_html(data["disagreements"], examples)}
</body></html>
"""


# --- Markdown --------------------------------------------------------------------------------------


def _md_cell(x: Any) -> str:
    return str(x).replace("|", "\\|").replace("\n", " ")


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in rows]
    return "\n".join(lines)


def markdown_report(data: dict[str, Any], *, examples: int = EXAMPLES) -> str:
    parts = [
        "# Inter-annotator agreement",
        "",
        _md_table(["measure", "value"], [list(r) for r in _summary(data)]),
    ]
    parts += ["", "## Pairs (F1 exact / relaxed)", ""]
    parts.append(
        _md_table(
            PAIR_HEADER,
            [
                [p["a"], p["b"], p["documents"]]
                + [
                    f"{_f(p[t]['exact']['f1'])} / {_f(p[t]['relaxed']['f1'])}"
                    for t in ("ner", "modifiers", "re", "spans")
                ]
                + [_f(p["cohen_kappa"][layer]["value"]) for layer in ("entities", "modifiers")]
                for p in data["pairs"]
            ],
        )
    )
    versus = _versus_rows(
        data, lambda s: "–" if not s else f"{_f(s['exact']['f1'])} / {_f(s['relaxed']['f1'])}"
    )
    if versus:
        parts += ["", "## Model vs annotators (F1 exact / relaxed; last row: annotators)", ""]
        parts.append(_md_table(VERSUS_HEADER, versus))
    parts += ["", "## Per type (pooled over pairs)", ""]
    per_type = {**data["pooled"]["spans"]["per_type"], **data["pooled"]["re"]["per_type"]}
    parts.append(
        _md_table(
            ["type", "n", "F1 exact", "F1 relaxed"],
            [
                [t, s["exact"]["tp"] + s["exact"]["fn"], _f(s["exact"]["f1"]), _f(s["relaxed"]["f1"])]
                for t, s in per_type.items()
                if s["exact"]["tp"] + s["exact"]["fn"] + s["exact"]["fp"]
            ],
        )
    )
    worst = sorted(
        (d for d in data["per_document"] if d["spans_exact_f1"] is not None),
        key=lambda d: d["spans_exact_f1"],
    )[:WORST]
    parts += ["", "## Worst notes", ""]
    parts.append(
        _md_table(
            ["note", "span F1 exact", "relaxed", "unitizing α", "disagreements"],
            [
                [
                    d["id"],
                    _f(d["spans_exact_f1"]),
                    _f(d["spans_relaxed_f1"]),
                    _f(d["unitizing_alpha"]),
                    d["disagreements"],
                ]
                for d in worst
            ],
        )
    )
    parts += ["", f"## Disagreements (first {examples} of {len(data['disagreements'])})", ""]
    for d in data["disagreements"][:examples]:
        c = d["context"]
        context = f"…{c['left']}**{c['mention']}**{c['right']}…".replace("\n", " ")
        parts.append(
            f"- `{d['kind']}` {d['document']} {d['a']} vs {d['b']}: "
            f"A={d['label_a']} B={d['label_b']}: {context}"
        )
    return "\n".join(parts) + "\n"

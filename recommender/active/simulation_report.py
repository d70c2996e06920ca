"""The simulation's results as JSON and one self-contained HTML page: learning curves (score against
annotated tokens and against notes, the mean over seeds with the band from the lowest to the highest
seed) and the summary table. Inline SVG, no scripts, nothing fetched."""

from __future__ import annotations

import json
from collections.abc import Sequence
from html import escape
from pathlib import Path
from statistics import mean
from typing import Any

from recommender.active.simulate import Round

COLOURS = ("#222222", "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
W, H, PAD = 560, 320, 48


def curve(seeds: dict[int, list[Round]], unit: str) -> list[dict[str, float]]:
    """Per round index: the mean ``unit`` and the mean, lowest and highest score over the seeds that
    got that far."""
    out = []
    for k in range(max(len(rs) for rs in seeds.values())):
        at = [rs[k] for rs in seeds.values() if len(rs) > k]
        xs = [float(r.edits["total"] if unit == "edits" else getattr(r, unit)) for r in at]
        ys = [r.scores["score"] for r in at]
        out.append({"x": mean(xs), "mean": mean(ys), "low": min(ys), "high": max(ys), "seeds": len(at)})
    return out


def _svg(curves: dict[str, list[dict[str, float]]], xlabel: str, target: float | None) -> str:
    xmax = max(p["x"] for c in curves.values() for p in c) or 1.0
    ymax = max(max(p["high"] for c in curves.values() for p in c), target or 0.0, 0.05) * 1.05

    def sx(x: float) -> float:
        return PAD + (W - 2 * PAD) * x / xmax

    def sy(y: float) -> float:
        return H - PAD - (H - 2 * PAD) * y / ymax

    parts = [
        f'<svg class=curve width="{W}" height="{H}" viewBox="0 0 {W} {H}" role=img>',
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - PAD}" y2="{H - PAD}" stroke="#999"/>',
        f'<line x1="{PAD}" y1="{PAD}" x2="{PAD}" y2="{H - PAD}" stroke="#999"/>',
        f'<text x="{W / 2}" y="{H - 10}" text-anchor=middle>{escape(xlabel)}</text>',
        f'<text x="12" y="{H / 2}" transform="rotate(-90 12 {H / 2})" text-anchor=middle>score</text>',
    ]
    for i in range(5):
        y = ymax * i / 4
        parts.append(f'<text x="{PAD - 6}" y="{sy(y) + 4:.1f}" text-anchor=end class=tick>{y:.2f}</text>')
        x = xmax * i / 4
        parts.append(f'<text x="{sx(x):.1f}" y="{H - PAD + 16}" text-anchor=middle class=tick>{x:.0f}</text>')
    if target is not None:
        parts.append(
            f'<line x1="{PAD}" y1="{sy(target):.1f}" x2="{W - PAD}" y2="{sy(target):.1f}" '
            'stroke="#999" stroke-dasharray="4 3"/>'
            f'<text x="{W - PAD}" y="{sy(target) - 4:.1f}" text-anchor=end class=tick>target</text>'
        )
    for (name, pts), colour in zip(curves.items(), COLOURS, strict=False):
        band = [f"{sx(p['x']):.1f},{sy(p['high']):.1f}" for p in pts]
        band += [f"{sx(p['x']):.1f},{sy(p['low']):.1f}" for p in reversed(pts)]
        line = " ".join(f"{sx(p['x']):.1f},{sy(p['mean']):.1f}" for p in pts)
        parts.append(
            f'<polygon points="{" ".join(band)}" fill="{colour}" fill-opacity="0.12" stroke="none"/>'
        )
        parts.append(
            f'<polyline points="{line}" fill="none" stroke="{colour}" stroke-width="2">'
            f"<title>{escape(name)}</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _legend(names: Sequence[str]) -> str:
    items = "".join(
        f'<span class=key><span class=swatch style="background:{c}"></span>{escape(n)}</span>'
        for n, c in zip(names, COLOURS, strict=False)
    )
    return f"<p class=legend>{items}</p>"


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return f"not reached ({stat['reached']} of {len(stat['per_seed'])} seeds)"
    return f"{stat['mean']:.0f} ± {stat['sd']:.0f}"


def render(results: dict[str, Any], runs: dict[str, dict[int, list[Round]]]) -> str:
    """The HTML page of ``results`` (what :func:`write` saves as JSON) and the runs' rounds."""
    target = results.get("target")
    names = list(runs)
    charts = "".join(
        f"<figure>{_svg({n: curve(runs[n], unit) for n in names}, label, target)}"
        f"<figcaption>{escape(label)}</figcaption></figure>"
        for unit, label in (
            ("tokens", "annotated tokens"),
            ("notes", "annotated notes"),
            ("edits", "edits to correct the pre-annotations"),
        )
    )
    rows = []
    for n in names:
        s = results["summary"][n]
        rows.append(
            f"<tr><th>{escape(n)}</th><td>{_cell(s['tokens_to_target'])}</td>"
            f"<td>{_cell(s['notes_to_target'])}</td><td>{_cell(s['edits_to_target'])}</td>"
            f"<td>{s['auc_tokens']['mean']:.3f} ± {s['auc_tokens']['sd']:.3f}</td>"
            f"<td>{s['auc_notes']['mean']:.3f} ± {s['auc_notes']['sd']:.3f}</td></tr>"
        )
    learner = results.get("learner", {})
    warm = " (warm start)" if learner.get("warm_start") else ""
    target_text = f"{target:.3f}" if target is not None else "none given"
    return f"""<!doctype html>
<html lang=en><head><meta charset=utf-8><title>Active learning simulation</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em; color: #222; }}
table {{ border-collapse: collapse; }}
th, td {{ border: 1px solid #ccc; padding: 4px 8px; text-align: right; }}
th {{ text-align: left; }} figure {{ display: inline-block; margin: 0 1em 1em 0; }}
.tick {{ font-size: 11px; fill: #555; }} .legend .key {{ margin-right: 1.2em; white-space: nowrap; }}
.swatch {{ display: inline-block; width: 14px; height: 4px; margin-right: 4px; vertical-align: middle; }}
.muted {{ color: #777; }}
</style></head><body>
<h1>Active learning simulation</h1>
<p>Learner <code>{escape(str(learner.get("family", "?")))}</code>{warm};
pool {results.get("pool_notes")} notes, evaluation {results.get("eval_notes")} notes; seeds
{escape(", ".join(str(s) for s in results.get("seeds", [])))}. Score: mean of exact NER and RE F1 on
the evaluation notes. Target: {target_text} ({escape(str(results.get("target_reason", "")))}).
Lines are the mean over seeds, bands the lowest to the highest seed.</p>
{_legend(names)}{charts}
<h2>Cost to reach the target, and area under the curve</h2>
<table><tr><th>strategy</th><th>tokens</th><th>notes</th><th>edits</th><th>AUC (tokens)</th>
<th>AUC (notes)</th></tr>{"".join(rows)}</table>
<p class=muted>Mean ± standard deviation over seeds. Edits: spans and relations added, deleted,
relabelled or re-bounded to turn the model's pre-annotation of each selected note into its gold (seed
notes are annotated from scratch). AUC: mean score up to the smallest budget any run spent.</p>
</body></html>
"""


def write(results: dict[str, Any], runs: dict[str, dict[int, list[Round]]], folder: Path) -> Path:
    """``results.json`` and ``report.html`` in ``folder``; returns the page's path."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    page = folder / "report.html"
    page.write_text(render(results, runs), encoding="utf-8")
    return page


__all__ = ["curve", "render", "write"]

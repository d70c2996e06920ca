"""What every family's model card shares: the development-split metrics table."""

from __future__ import annotations

from typing import Any

CARD_FILE = "MODEL_CARD.md"  # in every model folder
TASK_NAMES = {
    "ner": "NER, 4 main types",
    "re": "RE, main entities given",
    "spans": "all 20 span types, end to end",
}


def metric_rows(dev: dict[str, Any]) -> str:
    """Markdown rows (task, P, R, F1, F1 95% CI, relaxed F1) of exact scores on the development split."""
    rows = []
    for k, label in TASK_NAMES.items():
        if k in dev:
            ex, rel = dev[k]["exact"], dev[k]["relaxed"]
            ci = ex.get("ci", {}).get("f1")  # none from a single development note
            interval = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "n/a"
            rows.append(
                f"| {label} | {ex['precision']:.3f} | {ex['recall']:.3f} | {ex['f1']:.3f} "
                f"| {interval} | {rel['f1']:.3f} |"
            )
    return "\n".join(rows) if rows else "| not measured: no development split | | | | | |"

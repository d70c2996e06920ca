"""The gate's optional check on recently corrected notes (``KIWI_GATE_RECENT_NOTES``).

The development split and the held-out corrections say how a candidate scores on notes like those;
this check says whether it would have served the annotators' latest notes at least as well as the
promoted model actually did. The notes are the newest ``n`` held-out corrected notes (held out, so the
candidate never trained on them) that have a scored suggestion of the promoted version; the promoted
model's figure is what its logged suggestions scored against those corrections, the candidate's its
predictions for the same notes scored the same way (``evaluation.correction_scores``). The figure compared
is exact F1 over all spans.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from recommender.document import Document
from recommender.evaluation.correction_scores import score_correction
from recommender.evaluation.evidence import Note, notes_of, summarize
from recommender.extractors.base import Extractor
from recommender.store.suggestions import SuggestionLog

RESAMPLES = 200


def predict_heldout(extractor: Extractor, heldout: Sequence[Document]) -> dict[int, Document]:
    """The candidate's predictions for the held-out corrected notes, by correction id."""
    docs = [d for d in heldout if "correction" in d.meta]
    predicted = extractor.predict([d.without_annotations() for d in docs]) if docs else []
    return {d.meta["correction"]["id"]: p for d, p in zip(docs, predicted, strict=True)}


def check(
    log: SuggestionLog,
    current_version: str | None,
    heldout: Sequence[Document],
    candidate: dict[int, Document],
    n: int,
    margin: float,
) -> tuple[bool, str, dict[str, Any]]:
    """(passes, reason, figures) of the check against ``current_version``'s suggestions."""
    if current_version is None:
        return True, "recently corrected notes: no promoted model to compare with", {}
    corrected = {d.meta["correction"]["id"]: d for d in heldout if "correction" in d.meta}
    rows = [
        r
        for r in log.scores(versions=[current_version])
        if r.correction_id in corrected and r.task != "relations"
    ]
    by_note: dict[str, Any] = {}
    for row in rows:  # oldest first: the newest row of each note wins
        by_note[f"{row.project}\x00{row.document_id}\x00{row.annotator}"] = row
    recent = sorted(by_note.values(), key=lambda r: r.id)[-n:]
    if not recent:
        return (
            True,
            f"recently corrected notes: none held out with a suggestion of [{current_version}]; not checked",
            {"notes": 0},
        )
    served = summarize(notes_of(recent), RESAMPLES)
    mine = [
        Note("candidate", r.project, r.document_id, r.annotator, r.created, [score(r, corrected, candidate)])
        for r in recent
    ]
    cand = summarize(mine, RESAMPLES)
    a, b = cand["f1"]["spans"]["exact"]["f1"], served["f1"]["spans"]["exact"]["f1"]
    figures = {"notes": len(recent), "candidate": a, "promoted": b, "margin": margin}
    where = f"on the {len(recent)} most recently corrected held-out note(s)"
    if a < b - margin:
        return (
            False,
            f"{where} the candidate's span F1 {a:.4f} < the promoted model's {b:.4f} - margin",
            figures,
        )
    return True, f"{where} span F1 {a:.4f} vs the promoted model's suggestions {b:.4f}", figures


def score(row: Any, corrected: dict[int, Document], candidate: dict[int, Document]) -> dict[str, Any]:
    return score_correction(candidate[row.correction_id], corrected[row.correction_id], row.task)


__all__ = ["check", "predict_heldout"]

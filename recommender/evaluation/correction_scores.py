"""A model's suggestion for a note scored against the annotator's correction of it.

The suggestion is what the annotator was shown; the correction is what they saved. Each suggested
span was accepted unchanged, relabelled, re-bounded, both, or deleted, and each corrected span the
model did not suggest was missed (the pairing of ``edits``, the simulator's edit count); relations
were accepted (both ends paired with the ends of a corrected relation), deleted or missed. Exact and
relaxed matches per label come from the one matcher (``scorer.count``), so these figures and
``kiwi evaluate``'s and the annotators' agreement are the same arithmetic.

Which parts are scored follows what was suggested: ``entities`` (INCEpTION's span recommender) the
spans, ``relations`` (its relation recommender, run with the annotated spans given) the relations,
``all`` (Label Studio) both.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any, Literal

from recommender.document import Document
from recommender.evaluation.edits import Edits, edits, kept_relations, pair_spans
from recommender.evaluation.matching import MODES
from recommender.evaluation.scorer import TaskCounts, count
from recommender.schema import Schema, load_schema

Scope = Literal["all", "entities", "relations"]
SCOPES: tuple[Scope, ...] = ("all", "entities", "relations")
OUTCOMES = ("accepted", "relabelled", "rebounded", "relabelled_rebounded", "deleted")
TASKS_OF: dict[str, tuple[str, ...]] = {
    "all": ("ner", "re", "spans"),
    "entities": ("ner", "spans"),
    "relations": ("re",),
}


def score_correction(
    suggested: Document, corrected: Document, scope: Scope = "all", schema: Schema | None = None
) -> dict[str, Any]:
    """The figures of one corrected note (JSON-ready): per-task, per-label ``[tp, fp, fn]`` exact and
    relaxed, what became of each suggestion, and the edits from the suggestion to the correction.
    ``suggested`` must be a suggestion for ``corrected``'s text (its text is taken from it)."""
    schema = schema or load_schema()
    gold = replace(corrected, id="note", meta={})
    pred = replace(suggested, id="note", text=corrected.text, meta={})
    counts = count([gold], [pred], schema=schema)
    figures: dict[str, Any] = {
        "tasks": {t: _per_label(counts[t]) for t in TASKS_OF[scope]},
    }
    pairs, deleted, added = pair_spans(pred, gold)
    if scope != "relations":
        per_label: dict[str, dict[str, int]] = {}

        def bump(label: str, outcome: str) -> None:
            row = per_label.setdefault(label, dict.fromkeys((*OUTCOMES, "missed"), 0))
            row[outcome] += 1

        for p in pairs:
            kind = {(False, False): "accepted", (True, False): "relabelled", (False, True): "rebounded"}
            bump(p.predicted.label, kind.get((p.relabelled, p.rebounded), "relabelled_rebounded"))
        for s in deleted:
            bump(s.label, "deleted")
        for s in added:
            bump(s.label, "missed")
        figures["spans"] = dict(sorted(per_label.items()))
    if scope != "entities":
        kept, rel_deleted, rel_missed = kept_relations(pred, gold, pairs)
        figures["relations"] = {"accepted": kept, "deleted": rel_deleted, "missed": rel_missed}
    found = edits(pred, gold)
    if scope == "entities":  # relations were not suggested: adding them is not the model's cost
        found = replace(found, relations_added=0, relations_deleted=0)
    elif scope == "relations":  # the spans were the annotator's own
        found = Edits(relations_added=found.relations_added, relations_deleted=found.relations_deleted)
    figures["edits"] = found.to_dict()
    return figures


def _per_label(counts: TaskCounts) -> dict[str, dict[str, list[int]]]:
    """``{mode: {label: [tp, fp, fn]}}`` for one note, labels with any count only."""
    out: dict[str, dict[str, list[int]]] = {}
    for mode in MODES:
        c = counts.counts[mode][:, 0, :]  # (3, types) of the one note
        out[mode] = {t: [int(x) for x in c[:, k]] for k, t in enumerate(counts.types) if c[:, k].any()}
    return out


__all__ = ["OUTCOMES", "SCOPES", "TASKS_OF", "Scope", "score_correction"]

"""The suggestion log as raters: each model version's suggestions for the notes the annotators have.

A note's suggestion is found by the hash of its text (the annotators' documents carry the text, the
log only its hash), so exports whose document ids differ from the tools' ids still match; the newest
suggestion of a version wins. INCEpTION's two recommenders log spans and relations apart: their
newest suggestions are merged into one document.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from recommender.document import Document
from recommender.store.suggestions import Suggestion, text_hash


def suggestion_raters(
    suggestions: Iterable[Suggestion], raters: dict[str, Sequence[Document]]
) -> dict[str, list[Document]]:
    """``{"suggested:VERSION": [documents]}``: per model version, its newest suggestion for each note
    of ``raters`` (by text hash), as a document with the note's id and text."""
    notes: dict[str, Document] = {}
    for docs in raters.values():
        for d in docs:
            notes.setdefault(text_hash(d.text), d)
    newest: dict[tuple[str, str, str], Suggestion] = {}
    for s in suggestions:  # oldest first
        if s.text_hash in notes:
            newest[(s.model_version, s.text_hash, s.task)] = s
    merged: dict[str, dict[str, Document]] = {}
    for (version, digest, task), s in sorted(newest.items(), key=lambda kv: kv[1].id):
        note = notes[digest]
        doc = merged.setdefault(version, {}).setdefault(digest, Document(id=note.id, text=note.text))
        _merge(doc, s.document, spans=task != "relations", relations=task != "entities")
    return {f"suggested:{v}": list(docs.values()) for v, docs in merged.items()}


def _merge(doc: Document, suggested: Document, *, spans: bool, relations: bool) -> None:
    """Add ``suggested``'s spans and/or relations to ``doc`` (a relation's ends are added as spans
    when ``doc`` lacks them: a relation suggestion's ends are the annotated spans it was given)."""
    by_key = {s.key: s for s in doc.spans}
    index = suggested.span_index()
    if spans:
        for s in suggested.spans:
            if s.key not in by_key:
                by_key[s.key] = doc.add_span(s.label, s.begin, s.end, score=s.score)
    if relations:
        for r in suggested.relations:
            ends = []
            for end in (index[r.head], index[r.tail]):
                if end.key not in by_key:
                    by_key[end.key] = doc.add_span(end.label, end.begin, end.end)
                ends.append(by_key[end.key])
            doc.add_relation(ends[0], ends[1], label=r.label, score=r.score)


__all__ = ["suggestion_raters"]

"""The one neutral document model. Every format converts into and out of it at the edge.

Offsets are Python code points into ``Document.text`` (end exclusive). UTF-16 offsets (UIMA, Label
Studio) exist only inside the converters that need them.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from recommender.errors import DocumentError
from recommender.schema import RELATION, Schema, load_schema


@dataclass(frozen=True, slots=True)
class Segment:
    """A sentence or token: a character range of the text."""

    begin: int
    end: int


@dataclass(slots=True)
class Span:
    """An entity or modifier mention. ``source`` says who made it (annotator, model version)."""

    id: str
    label: str
    begin: int
    end: int
    score: float | None = None
    source: str | None = None

    @property
    def key(self) -> tuple[str, int, int]:
        return (self.label, self.begin, self.end)


@dataclass(slots=True)
class Relation:
    """``head`` (a main entity) has the modifier ``tail``; both are span ids of the same document."""

    id: str
    head: str
    tail: str
    label: str = RELATION
    score: float | None = None
    source: str | None = None


@dataclass(frozen=True, slots=True)
class Choice:
    """One decision a model made in a note and the distribution it chose from, for active learning
    (``recommender.active``): a word's tag on the entity or modifier layer, or whether an entity and a
    modifier are linked (``kind`` "entity", "modifier" or "link"; the range covers the word, or both
    spans of the pair). Probabilities are the model's calibrated ones."""

    kind: str
    begin: int
    end: int
    chosen: float  # probability of what the model decided
    top: float  # highest probability in the distribution
    second: float  # the runner-up's
    entropy: float  # Shannon entropy of the distribution over log(number of outcomes): 0 sure .. 1 uniform


@dataclass(slots=True)
class Document:
    """A note, its segmentation and its annotations.

    ``uncertainty``, ``choices`` and ``drops`` are set by extractors on the documents they predict: the
    model's least-confidence uncertainty about the note (0 sure .. 1 unsure), the decisions behind it
    with their distributions where the family exposes them (the active-learning strategies of
    ``recommender.active`` score notes from both), and what the model produced but could not place in
    the note, counted by kind (``kiwi predict`` and ``kiwi evaluate`` report them).
    """

    id: str
    text: str
    spans: list[Span] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    sentences: list[Segment] = field(default_factory=list)
    tokens: list[Segment] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    uncertainty: float | None = None
    choices: list[Choice] = field(default_factory=list)
    drops: dict[str, int] = field(default_factory=dict)

    # --- lookups -------------------------------------------------------------------------------
    def span(self, span_id: str) -> Span:
        for s in self.spans:
            if s.id == span_id:
                return s
        raise DocumentError(f"no span with id [{span_id}] in document [{self.id}]")

    def span_index(self) -> dict[str, Span]:
        return {s.id: s for s in self.spans}

    def entities(self, schema: Schema | None = None) -> list[Span]:
        schema = schema or load_schema()
        return [s for s in self.spans if schema.is_entity(s.label)]

    def modifiers(self, schema: Schema | None = None) -> list[Span]:
        schema = schema or load_schema()
        return [s for s in self.spans if schema.is_modifier(s.label)]

    def relation_pairs(self) -> Iterator[tuple[Relation, Span, Span]]:
        index = self.span_index()
        for r in self.relations:
            yield r, index[r.head], index[r.tail]

    def covered(self, item: Span | Segment) -> str:
        return self.text[item.begin : item.end]

    # --- building ------------------------------------------------------------------------------
    def new_span_id(self) -> str:
        return _next_id("T", (s.id for s in self.spans))

    def new_relation_id(self) -> str:
        return _next_id("R", (r.id for r in self.relations))

    def add_span(self, label: str, begin: int, end: int, **kw: Any) -> Span:
        span = Span(self.new_span_id(), label, begin, end, **kw)
        self.spans.append(span)
        return span

    def add_relation(self, head: Span, tail: Span, **kw: Any) -> Relation:
        rel = Relation(self.new_relation_id(), head.id, tail.id, **kw)
        self.relations.append(rel)
        return rel

    def without_annotations(self) -> Document:
        """The same text and segmentation with no spans or relations (what a model is given)."""
        return replace(
            self, spans=[], relations=[], meta=dict(self.meta), uncertainty=None, choices=[], drops={}
        )

    def in_schema(self, schema: Schema | None = None) -> Document:
        """A copy with only what the schema knows: its labels, and its relation between such spans.

        What training and scoring see; the stored document keeps a team's own labels."""
        schema = schema or load_schema()
        known = set(schema.label_names)
        spans = [s for s in self.spans if s.label in known]
        kept = {s.id for s in spans}
        relations = [
            r for r in self.relations if r.label == schema.relation and r.head in kept and r.tail in kept
        ]
        return replace(self, spans=spans, relations=relations, meta=dict(self.meta))

    def sort(self) -> Document:
        self.spans.sort(key=lambda s: (s.begin, -s.end, s.label))
        return self

    # --- checks --------------------------------------------------------------------------------
    def validate(self, schema: Schema | None = None, *, strict_labels: bool = True) -> Document:
        """Raise DocumentError (or SchemaError) naming the first inconsistency found."""
        schema = schema or load_schema()
        n = len(self.text)
        seen: set[str] = set()
        for s in self.spans:
            if s.id in seen:
                raise DocumentError(f"duplicate span id [{s.id}] in document [{self.id}]")
            seen.add(s.id)
            if not 0 <= s.begin < s.end <= n:
                raise DocumentError(
                    f"span [{s.id}] offsets [{s.begin}, {s.end}] outside the text of length {n} "
                    f"in document [{self.id}]"
                )
            if strict_labels:
                schema.label(s.label)
        for r in self.relations:
            for end in (r.head, r.tail):
                if end not in seen:
                    raise DocumentError(
                        f"relation [{r.id}] points to missing span [{end}] in document [{self.id}]"
                    )
        return self


def total_drops(docs: Iterable[Document]) -> dict[str, int]:
    """The ``drops`` of many predicted documents added up by kind."""
    out: dict[str, int] = {}
    for d in docs:
        for kind, n in d.drops.items():
            out[kind] = out.get(kind, 0) + n
    return dict(sorted(out.items()))


def _next_id(prefix: str, ids: Iterable[str]) -> str:
    top = 0
    for i in ids:
        if i.startswith(prefix) and i[len(prefix) :].isdigit():
            top = max(top, int(i[len(prefix) :]))
    return f"{prefix}{top + 1}"

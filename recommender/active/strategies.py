"""Selection strategies of active learning behind one small interface, chosen by name.

A strategy sees the pool as ``Candidate`` notes, each with the learner's pre-annotation of it (and,
for query-by-committee, the other committee members'), and picks the next batch. The per-note ones
also score a single prediction, which is what the service uses for Label Studio's task order and
INCEpTION's suggestion scores (``KIWI_AL_STRATEGY``). Scores read ``Document.choices`` (each decision
with its distribution); a family that exposes none gets them from its span and relation scores.

No torch here: the service imports this module.
"""

from __future__ import annotations

import math
import random
import re
from abc import ABC
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

if TYPE_CHECKING:
    import numpy as np

from recommender.document import Choice, Document, Relation, Span
from recommender.errors import ConfigError
from recommender.schema import load_schema

WORDS = ("entity", "modifier")  # the choices that tag words (the others are links)


@dataclass(frozen=True)
class Candidate:
    """A pool note: its id, text, the learner's prediction and the other committee members'."""

    id: str
    text: str
    predicted: Document
    others: tuple[Document, ...] = ()


def choices_of(doc: Document) -> list[Choice]:
    """The note's decisions: the extractor's own, else one per scored span and relation (a family that
    exposes no distributions, such as a LLaMA over a remote engine)."""
    if doc.choices:
        return doc.choices
    schema = load_schema()
    out = []
    index = doc.span_index()
    for s in doc.spans:
        if s.score is not None:
            out.append(
                _binary("entity" if schema.is_entity(s.label) else "modifier", s.begin, s.end, s.score)
            )
    for r in doc.relations:
        if r.score is not None and r.head in index and r.tail in index:
            h, t = index[r.head], index[r.tail]
            out.append(_binary("link", min(h.begin, t.begin), max(h.end, t.end), r.score))
    return out


def _binary(kind: str, begin: int, end: int, p: float) -> Choice:
    q = min(max(p, 1e-12), 1 - 1e-12)
    entropy = -(q * math.log(q) + (1 - q) * math.log(1 - q)) / math.log(2)
    return Choice(kind, begin, end, p, max(p, 1 - p), min(p, 1 - p), entropy)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


class Strategy(ABC):
    """Picks the next notes to annotate. ``per_note`` strategies score one prediction on its own."""

    name: ClassVar[str]
    per_note: ClassVar[bool] = True
    needs_predictions: ClassVar[bool] = True  # the pool must be predicted before selecting
    needs_committee: ClassVar[bool] = False
    bounded: ClassVar[bool] = True  # uncertainty in [0, 1]; else in [0, inf)

    def uncertainty(self, cand: Candidate) -> float:
        """How much annotating this note is worth: higher first."""
        raise ConfigError(f"strategy [{self.name}] does not score single notes")

    def select(self, pool: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        """The ids of the ``k`` notes to annotate next (ties broken by ``rng``)."""
        keyed = [(-self.uncertainty(c), rng.random(), c.id) for c in pool]
        return [cid for *_, cid in sorted(keyed)[:k]]

    # --- what the annotation tools show ------------------------------------------------------------
    def task_score(self, doc: Document) -> float:
        """Confidence in the note for Label Studio (tasks are handed out lowest first)."""
        u = self.uncertainty(Candidate(doc.id, doc.text, doc))
        return round(1.0 - min(u, 1.0) if self.bounded else math.exp(-u), 4)

    def confidence(self, choice: Choice) -> float:
        """Confidence in one decision, in [0, 1] (INCEpTION's suggestion score)."""
        return choice.chosen

    def span_score(self, doc: Document, span: Span) -> float | None:
        """A suggested span's score: the mean confidence of the model's decisions on its words."""
        if not doc.choices:
            return span.score
        layer = "entity" if load_schema().is_entity(span.label) else "modifier"
        inside = [c for c in doc.choices if c.kind == layer and c.begin < span.end and span.begin < c.end]
        return round(_mean([self.confidence(c) for c in inside]), 4) if inside else span.score

    def relation_score(self, relation: Relation) -> float | None:
        if relation.score is None:
            return None
        return round(self.confidence(_binary("link", 0, 0, relation.score)), 4)


class RandomStrategy(Strategy):
    """Random sampling: the baseline every strategy must beat (Settles 2009, Active Learning
    Literature Survey, §2)."""

    name = "random"
    per_note = False
    needs_predictions = False

    def select(self, pool: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        return [c.id for c in rng.sample(list(pool), min(k, len(pool)))]


class LeastConfidence(Strategy):
    """Least confidence: 1 - the mean confidence of the model's decisions in the note, the project's
    ``Document.uncertainty`` (Culotta & McCallum 2005, Reducing labeling effort for structured
    prediction tasks, AAAI)."""

    name = "least_confidence"

    def uncertainty(self, cand: Candidate) -> float:
        doc = cand.predicted
        if doc.uncertainty is not None:
            return doc.uncertainty
        return 1.0 - _mean([c.chosen for c in choices_of(doc)]) if choices_of(doc) else 1.0

    def span_score(self, doc: Document, span: Span) -> float | None:
        return span.score  # the extractor's own span confidence


class Margin(Strategy):
    """Margin: 1 - the mean gap between the two most probable tags of each word (Scheffer, Decomain &
    Wrobel 2001, Active hidden Markov models for information extraction, IDA)."""

    name = "margin"

    def uncertainty(self, cand: Candidate) -> float:
        words = [c for c in choices_of(cand.predicted) if c.kind in WORDS]
        return 1.0 - _mean([c.top - c.second for c in words]) if words else 1.0

    def confidence(self, choice: Choice) -> float:
        return choice.top - choice.second


class TokenEntropy(Strategy):
    """Token entropy: the summed entropy of every word's tag distribution, so long uncertain notes come
    first (Settles & Craven 2008, An analysis of active learning strategies for sequence labeling
    tasks, EMNLP)."""

    name = "token_entropy"
    bounded = False

    def uncertainty(self, cand: Candidate) -> float:
        words = [c.entropy for c in choices_of(cand.predicted) if c.kind in WORDS]
        return sum(words) if words else math.inf  # no decision at all: nothing is known about the note

    def confidence(self, choice: Choice) -> float:
        return 1.0 - choice.entropy


class MNLP(Strategy):
    """Maximum normalised log-probability: minus the mean log-probability of the decoded tags, the
    length-normalised form that does not favour long notes (Shen et al. 2018, Deep active learning for
    named entity recognition, ICLR)."""

    name = "mnlp"
    bounded = False

    def uncertainty(self, cand: Candidate) -> float:
        words = [c for c in choices_of(cand.predicted) if c.kind in WORDS]
        return -_mean([math.log(max(c.chosen, 1e-12)) for c in words]) if words else math.inf


class RelationAware(Strategy):
    """Relation-aware: MNLP of the words plus the mean entropy of every entity-modifier link the model
    judged, so notes whose links are unsure come first even where the spans are sure (Roth & Small
    2008, Active learning for pipeline models, AAAI)."""

    name = "relation"
    bounded = False

    def uncertainty(self, cand: Candidate) -> float:
        links = [c.entropy for c in choices_of(cand.predicted) if c.kind == "link"]
        return MNLP().uncertainty(cand) + _mean(links)

    def confidence(self, choice: Choice) -> float:
        return 1.0 - choice.entropy


class Diversity(Strategy):
    """Diverse mini-batch: the ``prefilter`` x k most uncertain notes by MNLP, clustered into k groups
    by uncertainty-weighted k-means over TF-IDF note vectors, and the note nearest each centre taken
    (Zhdanov 2019, Diverse mini-batch active learning, arXiv 1901.05954)."""

    name = "diversity"
    per_note = False
    prefilter = 5

    def select(self, pool: Sequence[Candidate], k: int, rng: random.Random) -> list[str]:
        import numpy as np  # only the diversity strategies need it: the settings import this module

        if k >= len(pool):
            return [c.id for c in pool]
        top = MNLP().select(pool, self.prefilter * k, rng)
        chosen = [c for c in pool if c.id in set(top)]
        # A note with no decision (infinitely uncertain) weighs as much as a very uncertain one.
        weights = np.minimum([MNLP().uncertainty(c) for c in chosen], 30.0) + 1e-6
        vectors = tfidf([c.text for c in chosen])
        centres = kmeans(vectors, weights, k, rng)
        picked: list[str] = []
        for centre in centres:
            dist = ((vectors - centre) ** 2).sum(1)
            for i in np.argsort(dist, kind="stable"):
                if chosen[i].id not in picked:
                    picked.append(chosen[i].id)
                    break
        return picked


class QueryByCommittee(Strategy):
    """Query-by-committee: the share of the mentions (spans and relations) predicted by only some of
    the committee, its vote entropy for two members (Seung, Opper & Sompolinsky 1992, Query by
    committee, COLT; for sequences Settles & Craven 2008)."""

    name = "qbc"
    per_note = False
    needs_committee = True

    def uncertainty(self, cand: Candidate) -> float:
        if not cand.others:
            raise ConfigError("strategy [qbc] needs a committee of at least two models")
        mine = mentions(cand.predicted)
        rates = []
        for other in cand.others:
            theirs = mentions(other)
            union = mine | theirs
            rates.append(len(mine ^ theirs) / len(union) if union else 0.0)
        return _mean(rates)


def mentions(doc: Document) -> set[tuple[object, ...]]:
    """A prediction as a set: span keys and (head key, modifier key) of its relations."""
    out: set[tuple[object, ...]] = {s.key for s in doc.spans}
    out |= {("rel", h.key, t.key) for _, h, t in doc.relation_pairs()}
    return out


def tfidf(texts: Sequence[str]) -> np.ndarray:
    """Unit-length TF-IDF vectors of lower-cased word counts: a note embedding any learner can share."""
    import numpy as np  # only the diversity strategies need it: the settings import this module

    counts = [Counter(re.findall(r"[a-z]+", t.lower())) for t in texts]
    vocab = sorted(set().union(*counts)) if counts else []
    index = {w: i for i, w in enumerate(vocab)}
    m = np.zeros((len(texts), len(vocab)))
    for row, c in enumerate(counts):
        for w, n in c.items():
            m[row, index[w]] = n
    idf = np.log((1 + len(texts)) / (1 + (m > 0).sum(0))) + 1
    m = np.log1p(m) * idf
    norms = np.linalg.norm(m, axis=1, keepdims=True)
    return m / np.where(norms > 0, norms, 1)


def kmeans(x: np.ndarray, weights: np.ndarray, k: int, rng: random.Random, iters: int = 20) -> np.ndarray:
    """Weighted k-means with k-means++ seeding; returns the k centres."""
    import numpy as np  # only the diversity strategies need it: the settings import this module

    gen = np.random.default_rng(rng.randrange(2**32))
    centres = [x[gen.choice(len(x), p=weights / weights.sum())]]
    for _ in range(1, k):
        d = np.min([((x - c) ** 2).sum(1) for c in centres], axis=0) * weights
        centres.append(x[gen.choice(len(x), p=d / d.sum())] if d.sum() > 0 else x[gen.integers(len(x))])
    c = np.array(centres)
    for _ in range(iters):
        assign = ((x[:, None, :] - c[None]) ** 2).sum(2).argmin(1)
        for j in range(k):
            members = assign == j
            if members.any():
                c[j] = (x[members] * weights[members, None]).sum(0) / weights[members].sum()
    return c


STRATEGIES: dict[str, type[Strategy]] = {
    cls.name: cls
    for cls in (
        RandomStrategy,
        LeastConfidence,
        Margin,
        TokenEntropy,
        MNLP,
        RelationAware,
        Diversity,
        QueryByCommittee,
    )
}
PER_NOTE = tuple(name for name, cls in STRATEGIES.items() if cls.per_note)


def rescore(doc: Document, strategy: Strategy) -> Document:
    """``doc`` (a prediction) with the scores the annotation tools read set by ``strategy``: its
    uncertainty (Label Studio's task score is 1 - it) and each span's and relation's score (INCEpTION's
    suggestion scores, Label Studio's region scores). Changes ``doc`` and returns it."""
    spans = {s.id: strategy.span_score(doc, s) for s in doc.spans}
    relations = {r.id: strategy.relation_score(r) for r in doc.relations}
    doc.uncertainty = round(1.0 - strategy.task_score(doc), 4)
    for s in doc.spans:
        s.score = spans[s.id]
    for r in doc.relations:
        r.score = relations[r.id]
    return doc


def get_strategy(name: str) -> Strategy:
    try:
        return STRATEGIES[name]()
    except KeyError:
        raise ConfigError(f"unknown strategy [{name}]; choose one of {', '.join(STRATEGIES)}") from None


__all__ = ["PER_NOTE", "STRATEGIES", "Candidate", "Strategy", "choices_of", "get_strategy", "rescore"]

"""``kiwi.lexicon.v1``: a dictionary baseline that trains in milliseconds.

It learns the lower-cased token sequences annotated in the training notes with their label counts and
how often each sequence occurs at all. Prediction is a greedy longest match over the tokens of each
sentence, one pass for main entities and one for modifiers (they may overlap, e.g. "chest" inside
"chest pain"). A span's score is the share of the sequence's occurrences that carried that label,
so words annotated only now and then ("pain") score low. Each modifier is linked to the nearest main
entity in its sentence that the schema allows (ties go to the side that modifier type was usually on
in training); the score is how often that modifier type was linked in training, discounted by the
token distance. The service tests and the retraining loop use it where
the model itself does not matter; it is also a floor every real model should beat.
"""

from __future__ import annotations

import copy
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recommender.document import Choice, Document, Segment, Span
from recommender.errors import ConfigError, ModelError
from recommender.extractors import register
from recommender.extractors.base import (
    Extractor,
    ExtractorConfig,
    ModelInfo,
    Progress,
    binary_choice,
    choice,
    fingerprint,
    least_confidence,
    setting,
)
from recommender.schema import Schema, load_schema
from recommender.text import segment

NAME = "kiwi.lexicon.v1"
LEXICON_FILE = "lexicon.json"
ENTITY, MODIFIER = "entity", "modifier"

Key = tuple[str, ...]


@dataclass
class LexiconConfig(ExtractorConfig):
    max_tokens: int = setting(8, "longest annotated token sequence that is learned and matched")
    min_score: float = setting(0.3, "label share below which a matched sequence is not predicted")
    rel_threshold: float = setting(0.2, "relation score below which a modifier is left unlinked")
    rel_decay: float = setting(8.0, "token distance at which a relation score is halved")

    def __post_init__(self) -> None:
        if self.max_tokens <= 0:
            raise ConfigError(f"max_tokens must be positive, got [{self.max_tokens}]")
        for name in ("min_score", "rel_threshold"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"{name} must be in [0, 1], got [{getattr(self, name)}]")
        if self.rel_decay <= 0:
            raise ConfigError(f"rel_decay must be positive, got [{self.rel_decay}]")


@dataclass
class _Entry:
    """What training saw of one token sequence: labels per layer and how often it occurred at all."""

    counts: dict[str, Counter[str]] = field(default_factory=lambda: {ENTITY: Counter(), MODIFIER: Counter()})
    seen: int = 0


@register(NAME)
class LexiconExtractor(Extractor):
    config_class = LexiconConfig

    def __init__(
        self,
        entries: dict[Key, _Entry],
        link_rate: dict[str, float],
        before_rate: dict[str, float],
        config: LexiconConfig,
        info: ModelInfo,
    ) -> None:
        self.entries = entries
        self.link_rate = link_rate
        self.before_rate = before_rate
        self.config = config
        self.info = info
        self.schema: Schema = load_schema()
        self._best = {layer: self._best_labels(layer) for layer in (ENTITY, MODIFIER)}

    # --- training ------------------------------------------------------------------------------
    @classmethod
    def train(
        cls,
        train_docs: Sequence[Document],
        dev_docs: Sequence[Document] = (),
        config: ExtractorConfig | None = None,
        out_dir: Path | None = None,
        *,
        progress: Progress[Any] | None = None,
    ) -> LexiconExtractor:
        """Learn the lexicon from annotated documents (unknown labels are ignored); rebuilt from all the
        data in milliseconds, so there is no dev-based stopping and nothing to start from."""
        model = cls._learn(train_docs, cls.training_config(config))
        if out_dir is not None:
            model.save(out_dir)
        return model

    @classmethod
    def _learn(cls, docs: Sequence[Document], config: LexiconConfig) -> LexiconExtractor:
        schema = load_schema()
        entries: dict[Key, _Entry] = defaultdict(_Entry)
        linked: Counter[str] = Counter()
        before: Counter[str] = Counter()
        total: Counter[str] = Counter()
        segmented = [_segmented(d) for d in docs]
        for doc in segmented:
            heads_of = {r.tail for r in doc.relations}
            for _, head, tail in doc.relation_pairs():
                before[tail.label] += tail.begin < head.begin
            for s in doc.spans:
                layer = (
                    ENTITY if schema.is_entity(s.label) else MODIFIER if schema.is_modifier(s.label) else None
                )
                key = _key(doc, _covering(doc.tokens, s.begin, s.end))
                if layer is None or not key or len(key) > config.max_tokens:
                    continue
                entries[key].counts[layer][s.label] += 1
                if layer == MODIFIER:
                    total[s.label] += 1
                    linked[s.label] += s.id in heads_of
        # How often each learned sequence occurs anywhere, annotated or not, for the label share.
        for doc in segmented:
            for sent in _sentence_tokens(doc):
                words = [doc.text[t.begin : t.end].lower() for t in sent]
                for i in range(len(words)):
                    for n in range(1, min(config.max_tokens, len(words) - i) + 1):
                        entry = entries.get(tuple(words[i : i + n]))
                        if entry is not None:
                            entry.seen += 1
        link_rate = {label: linked[label] / total[label] for label in sorted(total)}
        before_rate = {label: before[label] / linked[label] for label in sorted(linked) if linked[label]}
        created = datetime.now(UTC)
        fp = fingerprint(docs)
        info = ModelInfo(
            extractor=NAME,
            version=f"lexicon-{created:%Y%m%d-%H%M%S}-{fp[:6]}",
            created=created.isoformat(timespec="seconds"),
            data_fingerprint=fp,
            config=asdict(config),
        )
        return cls(dict(entries), link_rate, before_rate, config, info)

    # --- prediction ----------------------------------------------------------------------------
    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
        return [self._predict_one(d, entities_given) for d in docs]

    def _predict_one(self, doc: Document, entities_given: bool) -> Document:
        seg = _segmented(doc)
        out = Document(
            id=doc.id,
            text=doc.text,
            sentences=list(seg.sentences),
            tokens=list(seg.tokens),
            meta=copy.deepcopy(doc.meta),
        )
        source = self.version
        decisions: list[float] = []
        sentences = _sentence_tokens(seg)
        ents: list[tuple[int, Span, int, int]] = []  # (sentence, span, first token, end token)
        mods: list[tuple[int, Span, int, int]] = []
        if entities_given:
            for s in doc.spans:
                if self.schema.is_entity(s.label):
                    span = replace(s)
                    out.spans.append(span)
                    si, a, b = _locate(sentences, s.begin, s.end)
                    if si is not None:
                        ents.append((si, span, a, b))
        for si, sent in enumerate(sentences):
            words = [seg.text[t.begin : t.end].lower() for t in sent]
            layers = (MODIFIER,) if entities_given else (ENTITY, MODIFIER)
            for layer in layers:
                for a, b, label, score in self._match(words, layer):
                    span = out.add_span(
                        label, sent[a].begin, sent[b - 1].end, score=round(score, 4), source=source
                    )
                    (ents if layer == ENTITY else mods).append((si, span, a, b))
                    decisions.append(score)
                    out.choices.append(self._choice(tuple(words[a:b]), layer, label, span))
        for si, mod, a, b in mods:
            before = self.before_rate.get(mod.label, 0.5) >= 0.5
            best: tuple[int, bool, Span] | None = None
            for sj, ent, c, d in ents:
                if sj != si or not self.schema.allows(ent.label, mod.label):
                    continue
                rank = (max(c - b, a - d, 0), (a < c) != before)
                if best is None or rank < best[:2]:
                    best = (*rank, ent)
            if best is None:
                continue
            score = self.link_rate.get(mod.label, 0.0) / (1.0 + best[0] / self.config.rel_decay)
            decisions.append(max(score, 1.0 - score))
            ent = best[2]
            begin, end = min(ent.begin, mod.begin), max(ent.end, mod.end)
            out.choices.append(binary_choice("link", begin, end, score, self.config.rel_threshold))
            if score >= self.config.rel_threshold:
                out.add_relation(best[2], mod, score=round(score, 4), source=source)
        # Least confidence averaged over every decision; a note where nothing matched is the most
        # uncertain of all, since the lexicon knows nothing about it.
        out.uncertainty = least_confidence(decisions)
        return out.sort()

    def _match(self, words: list[str], layer: str) -> list[tuple[int, int, str, float]]:
        """Greedy longest match, left to right, of sequences whose best label scores high enough."""
        best = self._best[layer]
        found = []
        i = 0
        while i < len(words):
            for n in range(min(self.config.max_tokens, len(words) - i), 0, -1):
                hit = best.get(tuple(words[i : i + n]))
                if hit is not None:
                    found.append((i, i + n, hit[0], hit[1]))
                    i += n
                    break
            else:
                i += 1
        return found

    def _choice(self, key: Key, layer: str, label: str, span: Span) -> Choice:
        """The matched sequence's labels in training and "not annotated" as its distribution."""
        entry = self.entries[key]
        counts = entry.counts[layer]
        labels = sorted(counts)
        total = max(entry.seen, sum(counts.values()), 1)
        probs = [counts[x] / total for x in labels] + [1.0 - sum(counts.values()) / total]
        return choice(layer, span.begin, span.end, probs, labels.index(label))

    def _best_labels(self, layer: str) -> dict[Key, tuple[str, float]]:
        best = {}
        for key, entry in self.entries.items():
            counts = entry.counts[layer]
            if not counts:
                continue
            # Ties go to the alphabetically first label, so predictions do not depend on dict order.
            label, n = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
            score = min(1.0, n / max(entry.seen, 1))
            if score >= self.config.min_score:
                best[key] = (label, score)
        return best

    # --- persistence ---------------------------------------------------------------------------
    def save(self, folder: Path) -> None:
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        rows = [
            {
                "tokens": list(key),
                "seen": e.seen,
                "entity": dict(sorted(e.counts[ENTITY].items())),
                "modifier": dict(sorted(e.counts[MODIFIER].items())),
            }
            for key, e in sorted(self.entries.items())
        ]
        data = {"entries": rows, "link_rate": self.link_rate, "before_rate": self.before_rate}
        (folder / LEXICON_FILE).write_text(json.dumps(data, ensure_ascii=False) + "\n", encoding="utf-8")
        self.info.config = asdict(self.config)
        self.info.save(folder)

    @classmethod
    def load(cls, folder: Path) -> LexiconExtractor:
        folder = Path(folder)
        info = ModelInfo.load(folder)
        if info.extractor != NAME:
            raise ModelError(f"model folder holds extractor [{info.extractor}], not [{NAME}]", source=folder)
        path = folder / LEXICON_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            entries = {
                tuple(r["tokens"]): _Entry(
                    {ENTITY: Counter(r["entity"]), MODIFIER: Counter(r["modifier"])}, int(r["seen"])
                )
                for r in data["entries"]
            }
            link_rate = {str(k): float(v) for k, v in data["link_rate"].items()}
            before_rate = {str(k): float(v) for k, v in data["before_rate"].items()}
        except FileNotFoundError:
            raise ModelError(f"missing {LEXICON_FILE}", source=folder) from None
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ModelError(f"unreadable {LEXICON_FILE} ({e})", source=folder) from None
        return cls(entries, link_rate, before_rate, LexiconConfig.from_dict(info.config), info)


def _segmented(doc: Document) -> Document:
    """The document with sentences and tokens, without touching the caller's object."""
    if doc.sentences and doc.tokens:
        return doc
    return segment(replace(doc, sentences=list(doc.sentences), tokens=list(doc.tokens)))


def _sentence_tokens(doc: Document) -> list[list[Segment]]:
    out: list[list[Segment]] = [[] for _ in doc.sentences]
    si = 0
    for t in doc.tokens:
        while si < len(doc.sentences) and doc.sentences[si].end <= t.begin:
            si += 1
        if si < len(doc.sentences) and doc.sentences[si].begin <= t.begin:
            out[si].append(t)
    return out


def _covering(tokens: list[Segment], begin: int, end: int) -> list[Segment]:
    """Tokens overlapping [begin, end): annotations that cut a token are widened to whole tokens."""
    return [t for t in tokens if t.begin < end and t.end > begin]


def _key(doc: Document, tokens: list[Segment]) -> Key:
    return tuple(doc.text[t.begin : t.end].lower() for t in tokens)


def _locate(sentences: list[list[Segment]], begin: int, end: int) -> tuple[int | None, int, int]:
    """(sentence index, first token, end token) of the tokens a given span covers."""
    for si, sent in enumerate(sentences):
        idx = [i for i, t in enumerate(sent) if t.begin < end and t.end > begin]
        if idx:
            return si, idx[0], idx[-1] + 1
    return None, 0, 0


__all__ = ["LexiconConfig", "LexiconExtractor"]

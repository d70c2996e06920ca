"""Sentence splitting and tokenization of clinical notes.

Sentences: PyRuSH (Shi et al.), the rule-based segmenter built for clinical notes at the University
of Utah and used by medspaCy. It copes with section headers, numbered lists and line-broken
dictation that general-purpose splitters merge or cut. Tokens: spaCy's rule-based English tokenizer
(no statistical model, no download), which splits units and punctuation off clinical values
("5mg." -> "5", "mg", "."), the same tokenizer family the Kiwi scripts used. Both are deterministic.
"""

from __future__ import annotations

import threading
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from recommender.document import Document, Segment

# PyRuSH keeps per-call state on the segmenter object and spaCy's tokenizer mutates its cache:
# neither may run in two threads at once (the service predicts while the retrainer trains).
_LOCK = threading.Lock()

if TYPE_CHECKING:
    from PyRuSH import RuSH
    from spacy.tokenizer import Tokenizer


@cache
def _rush() -> RuSH:
    import PyRuSH
    from PyRuSH import RuSH

    # PyRuSH installs its default rules beside the package, in site-packages/conf/.
    rules = Path(PyRuSH.__file__).resolve().parents[1] / "conf" / "rush_rules.tsv"
    return RuSH(str(rules), enable_logger=False)


@cache
def _tokenizer() -> Tokenizer:
    import spacy

    return spacy.blank("en").tokenizer


def split_sentences(text: str) -> list[Segment]:
    """Sentence ranges, trimmed of surrounding whitespace; text outside any sentence is whitespace."""
    out: list[Segment] = []
    with _LOCK:
        spans = _rush().segToSentenceSpans(text)
    for s in spans:
        b, e = s.begin, s.end
        while b < e and text[b].isspace():
            b += 1
        while e > b and text[e - 1].isspace():
            e -= 1
        if e > b:
            out.append(Segment(b, e))
    return out


def tokenize(text: str, begin: int = 0, end: int | None = None) -> list[Segment]:
    """Token ranges of ``text[begin:end]`` in the coordinates of ``text``; whitespace is not a token."""
    end = len(text) if end is None else end
    with _LOCK:
        tokens = _tokenizer()(text[begin:end])
    return [Segment(begin + t.idx, begin + t.idx + len(t.text)) for t in tokens if not t.is_space]


def segment(doc: Document, *, force: bool = False) -> Document:
    """Fill ``doc.sentences`` and ``doc.tokens`` unless the document already has them."""
    if force or not doc.sentences:
        doc.sentences = split_sentences(doc.text)
    if force or not doc.tokens:
        with _LOCK:
            pieces = list(_tokenizer().pipe(doc.text[s.begin : s.end] for s in doc.sentences))
        doc.tokens = [
            Segment(s.begin + t.idx, s.begin + t.idx + len(t.text))
            for s, piece in zip(doc.sentences, pieces, strict=True)
            for t in piece
            if not t.is_space
        ]
    return doc

"""The Kiwi instruction task (``../shared/reference/kiwi_instruction_format.md``), apart from any engine.

Documents become instruction examples exactly as the released Kiwi LLaMA models were tuned on them:
the note is split into sentences (``recommender.text``), each sentence is its tokens joined by single
spaces, one NER prompt per sentence and one RE prompt per main entity, targets end with `` <EOS>``
and the training text is ``prompt + " " + target``. The prompts are versioned template files
(``prompts/v1/*.txt``, one ``{}`` for the input) that are copied into every model folder, so a model
keeps reading the prompts it was trained with when the package's templates change.

Model outputs are never trusted: :func:`read_output` aligns them back to the note with
``recommender.markup_language.read_markup`` and counts what it had to drop, and :func:`span_score` turns the
token log-probabilities of a span's tags and text into a score.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from recommender.document import Document, Segment, Span
from recommender.errors import ModelError
from recommender.markup_language import (
    MarkedSpan,
    ReadMarkup,
    read_markup,
    segmented,
    sentence_markup,
    sentence_tokens,
    wrap,
)
from recommender.schema import Schema, load_schema

PROMPT_VERSION = "v1"
PROMPTS_DIR = "prompts"  # inside every model folder: prompts/<version>/*.txt
# Shipped in the wheel beside this module; pip installs wheels unpacked, so this is a real folder.
PACKAGED_PROMPTS = Path(str(resources.files("recommender.extractors.llama").joinpath(PROMPTS_DIR)))
STOP = "<EOS>"  # ends every training target; generation stops at it
NER = "ner"  # the task kind of NER prompts; RE prompts are named by their main entity type
SLOT = "{}"
# Drops counted in Document.drops besides those of recommender.markup_language.read_markup.
UNWRAPPABLE_ENTITY = "entity not expressible in a sentence"  # given entity inside a token / across sentences
UNFINISHED_OUTPUT = "output cut at max_new_tokens"


def template_file(kind: str) -> str:
    return "ner.txt" if kind == NER else f"re_{kind}.txt"


@dataclass(frozen=True)
class Templates:
    """The prompt templates of one version: task kind ("ner" or a main entity type) -> template."""

    version: str
    texts: dict[str, str]

    @classmethod
    def read(cls, root: Path, version: str = PROMPT_VERSION, schema: Schema | None = None) -> Templates:
        """The templates under ``root/version``; a text file's final newline is not part of its template."""
        schema = schema or load_schema()
        folder = Path(root) / version
        texts = {}
        for kind in (NER, *schema.entity_names):
            path = folder / template_file(kind)
            if not path.is_file():
                raise ModelError(f"prompt template [{template_file(kind)}] is missing", source=folder)
            text = path.read_text(encoding="utf-8").removesuffix("\n")
            if text.count(SLOT) != 1:
                raise ModelError(f"prompt template must hold exactly one [{SLOT}]", source=path)
            texts[kind] = text
        return cls(version, texts)

    @classmethod
    def packaged(cls, version: str = PROMPT_VERSION) -> Templates:
        return cls.read(PACKAGED_PROMPTS, version)

    def save(self, model_folder: Path) -> None:
        folder = Path(model_folder) / PROMPTS_DIR / self.version
        folder.mkdir(parents=True, exist_ok=True)
        for kind, text in self.texts.items():
            (folder / template_file(kind)).write_text(text + "\n", encoding="utf-8")

    def prompt(self, kind: str, text: str) -> str:
        prefix, rest = self.split(kind, text)
        return prefix + rest

    def split(self, kind: str, text: str) -> tuple[str, str]:
        """(shared prefix, rest) of the prompt for ``text``. The prefix ends before the space that
        precedes the input, so that the input's first word keeps its leading space when the two parts
        are tokenized apart (byte-level BPE tokenizers attach the space to the word)."""
        before, after = self.texts[kind].split(SLOT)
        cut = len(before.rstrip(" "))
        return before[:cut], before[cut:] + text + after


@dataclass(frozen=True)
class Example:
    """One training example: the prompt and the target the model learns to write after it."""

    kind: str
    prompt: str
    target: str  # ends with " <EOS>"
    corrected: bool = False  # of a note an annotator corrected (``meta["correction"]``)

    @property
    def text(self) -> str:
        return self.prompt + " " + self.target


@dataclass(frozen=True)
class OutputLanguage:
    """What an output may be under the copy-or-tag constraint: `` `` + ``source`` with tags of
    ``labels`` inserted + `` <EOS>``. An RE output also keeps the guideline's rule 3.1.3: only
    ``overlapping`` labels touch the main entity's words ``entity`` (a word range of ``source``)."""

    source: str  # the plain input, tokens joined by single spaces
    labels: tuple[str, ...]
    entity: tuple[int, int] | None = None  # [first, last + 1) word of the main entity
    overlapping: tuple[str, ...] = ()


@dataclass(frozen=True)
class Unit:
    """One prompt of prediction: a sentence of a document, as NER or as RE for one main entity."""

    doc: int  # index of the document in the predicted batch
    sentence: Segment
    kind: str  # NER or the main entity's type
    input: str  # what fills the template's slot
    source: str  # the plain sentence the output must copy (tokens joined by single spaces)
    labels: tuple[str, ...]  # span classes the output may use
    entity: Span | None = None  # the main entity of an RE unit
    entity_words: tuple[int, int] | None = None  # its [first, last + 1) word in ``source``
    overlapping: tuple[str, ...] = ()  # the labels whose spans may overlap it

    def prompt(self, templates: Templates) -> str:
        return templates.prompt(self.kind, self.input)

    @property
    def language(self) -> OutputLanguage:
        return OutputLanguage(self.source, self.labels, self.entity_words, self.overlapping)


def plain_sentence(doc: Document, sentence: Segment) -> str:
    """The sentence as Kiwi's models read it: its tokens joined by single spaces."""
    return " ".join(doc.text[t.begin : t.end] for t in sentence_tokens(doc, sentence))


def training_examples(
    docs: Iterable[Document], templates: Templates, schema: Schema | None = None
) -> list[Example]:
    """NER and RE examples of annotated documents, in document and sentence order."""
    schema = schema or load_schema()
    out: list[Example] = []
    for doc in docs:
        doc = segmented(doc)
        corrected = "correction" in doc.meta
        for sentence in doc.sentences:
            plain = plain_sentence(doc, sentence)
            if not plain:
                continue
            sm = sentence_markup(doc, sentence, schema)
            out.append(Example(NER, templates.prompt(NER, plain), f"{sm.ner} {STOP}", corrected))
            for entity, marked, target in sm.examples:
                prompt = templates.prompt(entity.label, marked)
                out.append(Example(entity.label, prompt, f"{target} {STOP}", corrected))
    return out


def ner_units(docs: Sequence[Document], schema: Schema | None = None) -> list[Unit]:
    """One NER unit per sentence with tokens of every (segmented) document."""
    schema = schema or load_schema()
    out = []
    for i, doc in enumerate(docs):
        for sentence in doc.sentences:
            plain = plain_sentence(doc, sentence)
            if plain:
                out.append(Unit(i, sentence, NER, plain, plain, schema.entity_names))
    return out


def re_units(
    index: int, doc: Document, entities: Sequence[Span], schema: Schema | None = None
) -> tuple[list[Unit], int]:
    """One RE unit per main entity of a (segmented) document, and how many entities could not be
    wrapped (boundary inside a token, or across sentences: the markup cannot express them)."""
    schema = schema or load_schema()
    out, lost = [], 0
    for entity in entities:
        sentence = next((s for s in doc.sentences if s.begin <= entity.begin and entity.end <= s.end), None)
        if sentence is None:
            lost += 1
            continue
        tokens = sentence_tokens(doc, sentence)
        marked, missed = wrap(doc.text, tokens, [entity])
        if missed:
            lost += 1
            continue
        plain = " ".join(doc.text[t.begin : t.end] for t in tokens)
        inside = [k for k, t in enumerate(tokens) if entity.begin <= t.begin and t.end <= entity.end]
        labels = schema.allowed[entity.label]
        overlapping = tuple(m for m in labels if m in schema.overlapping_modifiers)
        words = (inside[0], inside[-1] + 1)
        out.append(Unit(index, sentence, entity.label, marked, plain, labels, entity, words, overlapping))
    return out, lost


def read_output(unit: Unit, doc: Document, text: str) -> ReadMarkup:
    """The spans of one generation, aligned to ``unit``'s sentence, and the drops by kind."""
    return read_markup(text, doc, unit.sentence, unit.labels)


def span_score(span: MarkedSpan, token_logprobs: Sequence[float], token_offsets: Sequence[int]) -> float:
    """Geometric mean probability of the generated tokens from the span's opening to its closing tag
    (the decision to open the tag, the copied text, and where it closes)."""
    ends = [*token_offsets[1:], math.inf]  # a token ends where the next one starts
    picked = [
        lp
        for lp, at, end in zip(token_logprobs, token_offsets, ends, strict=False)
        if at < span.markup_end and end > span.markup_begin
    ]
    if not picked:
        return 0.0
    return math.exp(sum(picked) / len(picked))


def uncertainty(token_logprobs: Iterable[float]) -> float | None:
    """Least-confidence uncertainty, length-normalised: 1 - the geometric mean token probability."""
    lps = list(token_logprobs)
    if not lps:
        return None
    return 1.0 - math.exp(sum(lps) / len(lps))

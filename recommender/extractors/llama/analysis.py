"""What limits the LLaMA's relations, in numbers: the training examples it sees, how its tokenizer
cuts the tags, and what its RE outputs do.

- :func:`example_report`: per task kind, how many examples, how many exceed ``max_length`` tokens
  (left out of training), how many RE targets tag no modifier (the sentence copied back), lengths;
- :func:`tag_tokens`: how many tokens each opening tag takes (a tag split into many pieces is many
  steps to get right);
- :func:`re_output_report`: from the prompts and outputs a model kept (``keep_prompts``), the RE
  outputs that copy the input back without a modifier although the gold has some (over-copying),
  those that tag the main entity itself, and per modifier type the gold, predicted and matched tags.
"""

from __future__ import annotations

import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from recommender.document import Document
from recommender.extractors.llama.task import NER, STOP, Example, Templates, training_examples
from recommender.schema import Schema, load_schema

_TAG = re.compile(r'<span class="([^"]*)">(.*?)</span>', re.DOTALL)
_ANY_TAG = re.compile(r"</?span[^>]*>")
_INPUT = "### Input Text: "


def tagged(markup: str) -> list[tuple[str, str]]:
    """(class, text) of each tagged phrase of a markup string, in order."""
    return [(m.group(1), " ".join(_ANY_TAG.sub("", m.group(2)).split())) for m in _TAG.finditer(markup)]


def example_report(examples: Sequence[Example], tokenizer: Any, max_length: int) -> dict[str, dict[str, Any]]:
    """Per kind (``ner`` or ``re``): examples, too long for ``max_length`` tokens, copy-only targets
    (no tag at all), and the median and largest length in tokens."""
    out: dict[str, dict[str, Any]] = {}
    for kind in (NER, "re"):
        chosen = [e for e in examples if (e.kind == NER) == (kind == NER)]
        if not chosen:
            continue
        lengths = [len(tokenizer(e.text).input_ids) for e in chosen]
        out[kind] = {
            "examples": len(chosen),
            "too_long": sum(n > max_length for n in lengths),
            "copy_only": sum(not tagged(e.target) for e in chosen),
            "median_tokens": statistics.median(lengths),
            "max_tokens": max(lengths),
        }
    return out


def tag_tokens(tokenizer: Any, labels: Iterable[str]) -> dict[str, int]:
    """Tokens of each opening tag as it stands in a sentence (after a space), and of the closing tag."""
    out = {}
    for label in [*labels, "/"]:
        tag = "</span>" if label == "/" else f'<span class="{label}">'
        base = len(tokenizer("word", add_special_tokens=False).input_ids)
        out["</span>" if label == "/" else label] = (
            len(tokenizer(f"word {tag}", add_special_tokens=False).input_ids) - base
        )
    return out


@dataclass(frozen=True)
class Output:
    """One RE prompt a model answered: the marked input (main entity in ``<span>``), its output and
    the gold target."""

    kind: str
    marked_input: str
    output: str
    gold: str


def outputs_with_gold(
    gold_docs: Sequence[Document], predicted: Sequence[Document], audit_key: str, templates: Templates
) -> list[Output]:
    """The RE prompts ``predicted`` kept (``keep_prompts``; entities given), each with the gold target
    of the same marked input; prompts with no gold counterpart are left out."""
    out = []
    for gold, pred in zip(gold_docs, predicted, strict=True):
        targets = {e.prompt: e.target for e in training_examples([gold], templates) if e.kind != NER}
        for record in pred.meta.get(audit_key, []):
            if record["kind"] == NER or record["prompt"] not in targets:
                continue
            marked = record["prompt"].split(_INPUT, 1)[-1].split(f" {STOP}", 1)[0]
            out.append(Output(record["kind"], marked, record["output"], targets[record["prompt"]]))
    return out


def re_output_report(outputs: Sequence[Output], schema: Schema | None = None) -> dict[str, Any]:
    """Over-copying, the main entity tagged, and per modifier type gold / predicted / matched."""
    schema = schema or load_schema()
    gold_has = [o for o in outputs if tagged(o.gold)]
    copied = [o for o in gold_has if not tagged(o.output)]
    leaked = 0
    per_type: dict[str, Counter[str]] = {m: Counter() for m in schema.modifier_names}
    for o in outputs:
        entity = {text for _, text in tagged(o.marked_input)}
        predicted = Counter(tagged(o.output))
        leaked += sum(n for (_, text), n in predicted.items() if text in entity)
        gold = Counter(tagged(o.gold))
        for (label, _), n in gold.items():
            per_type.setdefault(label, Counter())["gold"] += n
        for (label, _), n in predicted.items():
            per_type.setdefault(label, Counter())["predicted"] += n
        for key, n in (gold & predicted).items():
            per_type[key[0]]["matched"] += n
    return {
        "outputs": len(outputs),
        "gold_with_modifiers": len(gold_has),
        "over_copied": len(copied),  # gold has modifiers, the output tags none
        "main_entity_tagged": leaked,  # tags over the main entity's own words
        "per_modifier": {
            label: {
                "gold": c["gold"],
                "predicted": c["predicted"],
                "recall": round(c["matched"] / c["gold"], 3) if c["gold"] else None,
                "precision": round(c["matched"] / c["predicted"], 3) if c["predicted"] else None,
            }
            for label, c in sorted(per_type.items())
            if c["gold"] or c["predicted"]
        },
    }


__all__ = [
    "Output",
    "example_report",
    "outputs_with_gold",
    "re_output_report",
    "tag_tokens",
    "tagged",
]

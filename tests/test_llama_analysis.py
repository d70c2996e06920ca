"""The RE analysis tools (recommender/extractors/llama/analysis.py) on a few generated examples."""

from __future__ import annotations

from dataclasses import dataclass, replace

from recommender.corpora import SAMPLE_DIR
from recommender.extractors.llama.analysis import (
    Output,
    example_report,
    outputs_with_gold,
    re_output_report,
    tag_tokens,
    tagged,
)
from recommender.extractors.llama.extractor import AUDIT_KEY
from recommender.extractors.llama.task import NER, Templates, training_examples
from recommender.formats import brat
from recommender.synthetic import generate


@dataclass
class Encoded:
    input_ids: list[str]


class SpaceTokenizer:
    """A tokenizer that cuts at spaces and inside tags at '="', so a tag takes a known count."""

    def __call__(self, text: str, add_special_tokens: bool = True) -> Encoded:
        return Encoded(text.replace('="', ' ="').split())


def test_example_report_counts_kinds_lengths_and_copies() -> None:
    examples = training_examples(generate(6, seed=2), Templates.packaged())
    report = example_report(examples, SpaceTokenizer(), max_length=10**6)
    re_examples = [e for e in examples if e.kind != NER]
    assert report[NER]["examples"] + report["re"]["examples"] == len(examples)
    assert report["re"]["copy_only"] == sum("<span" not in e.target for e in re_examples) > 0
    assert report[NER]["too_long"] == report["re"]["too_long"] == 0
    shortest = min(len(SpaceTokenizer()(e.text).input_ids) for e in re_examples)
    assert example_report(examples, SpaceTokenizer(), max_length=shortest - 1)["re"]["too_long"] == len(
        re_examples
    )


def test_tag_tokens() -> None:
    # <span, class, ="bodyloc">
    assert tag_tokens(SpaceTokenizer(), ["bodyloc"]) == {"bodyloc": 3, "</span>": 1}


def test_over_copying_leaks_and_per_modifier_counts() -> None:
    marked = 'He has <span class="problem">pain</span> in the chest .'
    gold = 'He has pain in the <span class="bodyloc">chest</span> . <EOS>'
    outputs = [
        Output("problem", marked, gold, gold),  # right
        Output("problem", marked, "He has pain in the chest . <EOS>", gold),  # copied back
        Output("problem", marked, 'He has <span class="severity">pain</span> in the chest . <EOS>', gold),
    ]
    report = re_output_report(outputs)
    assert report["outputs"] == 3 and report["gold_with_modifiers"] == 3
    assert report["over_copied"] == 1 and report["main_entity_tagged"] == 1
    assert report["per_modifier"]["bodyloc"] == {"gold": 3, "predicted": 1, "recall": 0.333, "precision": 1.0}
    assert report["per_modifier"]["severity"]["precision"] == 0.0


def test_outputs_are_paired_with_the_gold_of_their_prompt() -> None:
    templates = Templates.packaged()
    gold = brat.read(SAMPLE_DIR)[:2]
    predicted = []
    for doc in gold:
        audit = [
            {"kind": e.kind, "prompt": e.prompt, "output": e.target}  # a model that is always right
            for e in training_examples([doc], templates)
        ]
        predicted.append(replace(doc, meta={AUDIT_KEY: audit}))
    outputs = outputs_with_gold(gold, predicted, AUDIT_KEY, templates)
    assert outputs and all(o.kind != NER and o.output == o.gold for o in outputs)
    assert all(len(tagged(o.marked_input)) == 1 for o in outputs)  # the main entity, marked
    report = re_output_report(outputs)
    assert report["over_copied"] == 0
    assert all(r["recall"] == 1.0 for r in report["per_modifier"].values())

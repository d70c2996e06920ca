"""The LLaMA extractor's predict: prompts sent, generations read back into spans, relations, scores,
drops and uncertainty (a scripted engine); and the whole path through ``kiwi train llama``,
``kiwi predict`` and ``kiwi evaluate`` on a tiny random Llama."""

from __future__ import annotations

import json
import math
import re
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from recommender.document import Document
from recommender.extractors.base import ModelInfo
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.extractor import AUDIT_KEY, SELF_MODIFIER, LlamaExtractor
from recommender.extractors.llama.generation import Generation, Prompt
from recommender.extractors.llama.layout import NAME
from recommender.extractors.llama.task import UNFINISHED_OUTPUT, UNWRAPPABLE_ENTITY, Templates
from recommender.markup_language import UNKNOWN_TAG
from recommender.text import segment

TEXT = "No fever or chills. Aspirin 81 mg daily."
LP = -0.1  # every scripted token's log-probability


def generation(text: str, stopped: bool = True) -> Generation:
    """A generation whose tokens are the text's space-led words."""
    offsets = [m.start() for m in re.finditer(r" ?\S+", text)]
    return Generation(text, [LP] * len(offsets), offsets, stopped)


class ScriptedEngine:
    """Answers each prompt by its input text; records the prompts."""

    def __init__(self, answers: dict[str, Generation]) -> None:
        self.answers = answers
        self.calls: list[list[Prompt]] = []

    def generate(self, prompts: Sequence[Prompt], *, between_steps: Any = None) -> list[Generation]:
        self.calls.append(list(prompts))
        return [self.answers[p.text.split(" <EOS>")[0].strip()] for p in prompts]


ANSWERS = {
    # NER
    "No fever or chills .": generation(
        ' No <span class="problem">fever</span> or <span class="problem">chills</span> .'
    ),
    "Aspirin 81 mg daily .": generation(
        ' <span class="drug">Aspirin</span> 81 mg <span class="tumour">daily</span>'
    ),
    # RE: one negation for two problems; a modifier class not allowed for drugs; cut short
    'No <span class="problem">fever</span> or chills .': generation(
        ' <span class="negation">No</span> fever or chills .'
    ),
    'No fever or <span class="problem">chills</span> .': generation(
        ' <span class="negation">No</span> fever or chills .'
    ),
    '<span class="drug">Aspirin</span> 81 mg daily .': generation(
        ' Aspirin <span class="strength">81 mg</span> <span class="bodyloc">daily</span>', stopped=False
    ),
}


def scripted(keep_prompts: bool = False) -> tuple[LlamaExtractor, ScriptedEngine]:
    config = LlamaConfig(keep_prompts=keep_prompts)
    ex = LlamaExtractor(None, None, config, Templates.packaged(), ModelInfo(NAME, "llama-test"), None)
    engine = ScriptedEngine(ANSWERS)
    ex._engine = engine  # the engine is built lazily; a scripted one stands in
    return ex, engine


def test_predict_reads_generations_into_the_note() -> None:
    ex, engine = scripted()
    doc = Document("d", TEXT)
    [out] = ex.predict([doc])
    assert not doc.spans and not doc.sentences  # no side effects on the input
    spans = {(s.label, out.covered(s)) for s in out.spans}
    assert spans == {
        ("problem", "fever"),
        ("problem", "chills"),
        ("drug", "Aspirin"),
        ("negation", "No"),
        ("strength", "81 mg"),
    }
    pairs = sorted((out.covered(h), out.covered(t)) for _, h, t in out.relation_pairs())
    assert pairs == [("Aspirin", "81 mg"), ("chills", "No"), ("fever", "No")]
    assert len([s for s in out.spans if s.label == "negation"]) == 1  # one span, two relations
    assert all(
        s.score == pytest.approx(math.exp(LP), abs=1e-4) and s.source == "llama-test" for s in out.spans
    )
    assert all(r.score == pytest.approx(math.exp(LP), abs=1e-4) for r in out.relations)
    assert out.drops == {UNKNOWN_TAG: 2, UNFINISHED_OUTPUT: 1}
    assert out.uncertainty == pytest.approx(1 - math.exp(LP), abs=1e-4)
    assert AUDIT_KEY not in out.meta
    out.validate()
    # first call: one NER prompt per sentence; second: one RE prompt per entity found
    ner, rel = engine.calls
    assert [p.language.source for p in ner] == ["No fever or chills .", "Aspirin 81 mg daily ."]
    assert ner[0].language.labels == ("problem", "test", "drug", "treatment")
    assert ner[0].language.entity is None
    templates = Templates.packaged()
    assert ner[0].prefix + ner[0].text == templates.prompt("ner", "No fever or chills .")
    assert {p.prefix for p in ner} == {templates.split("ner", "")[0]}  # one shared prefix
    assert [p.language.source for p in rel] == ["No fever or chills ."] * 2 + ["Aspirin 81 mg daily ."]
    assert rel[2].language.labels == ex.schema.allowed["drug"]
    # the RE constraint knows the main entity: "chills" is word 3, "Aspirin" word 0
    assert [p.language.entity for p in rel] == [(1, 2), (3, 4), (0, 1)]
    assert rel[0].language.overlapping == ("bodyloc", "severity", "course")
    assert rel[2].prefix + rel[2].text == templates.prompt(
        "drug", '<span class="drug">Aspirin</span> 81 mg daily .'
    )


def test_entities_given_keeps_them_and_predicts_their_modifiers() -> None:
    ex, engine = scripted(keep_prompts=True)
    doc = segment(Document("d", TEXT))
    fever = doc.add_span("problem", 3, 8)
    doc.add_span("negation", 0, 2)  # a modifier in the input is not kept: it is predicted
    broken = doc.add_span("drug", 20, 23)  # "Asp": inside a token, cannot be wrapped
    [out] = ex.predict([doc], entities_given=True)
    assert len(engine.calls) == 1  # no NER call
    assert [(s.id, s.label, s.begin, s.end) for s in out.entities()] == [
        (fever.id, "problem", 3, 8),
        (broken.id, "drug", 20, 23),
    ]
    assert [(out.covered(h), out.covered(t)) for _, h, t in out.relation_pairs()] == [("fever", "No")]
    assert out.drops == {UNWRAPPABLE_ENTITY: 1}
    [audit] = out.meta[AUDIT_KEY]
    assert (
        audit["kind"] == "problem"
        and audit["output"] == ANSWERS['No <span class="problem">fever</span> or chills .'].text
    )
    assert "### Input Text: No <span" in audit["prompt"]


def test_garbage_generations_never_crash() -> None:
    ex, _ = scripted()

    class Garbage(ScriptedEngine):
        def generate(self, prompts: Sequence[Prompt], *, between_steps: Any = None) -> list[Generation]:
            outs = ["", "</span>" * 3, '<span class="drug">', " \x00 <<>> ", '<span class="problem">No fever']
            return [Generation(outs[i % len(outs)], [], [], i % 2 == 0) for i, _ in enumerate(prompts)]

    ex._engine = Garbage({})
    [out] = ex.predict([Document("d", TEXT)])
    out.validate()
    assert not out.relations and out.uncertainty == 1.0  # no token probabilities: nothing is known
    assert sum(out.drops.values()) > 0


# --- the whole path through the CLI, on a tiny random Llama -------------------------------------
def test_cli_train_predict_evaluate(tmp_path: Path) -> None:
    pytest.importorskip("peft")
    from support import run_kiwi
    from test_llama_training import build_tiny_base

    from recommender.corpora import load_sample

    sample_dir = Path(__file__).resolve().parents[1] / "corpora" / "sample"
    base = build_tiny_base(tmp_path / "base", load_sample())
    out = tmp_path / "model"
    args = ["--max-steps", "2", "--max-examples", "8", "--batch-size", "2", "--grad-accum", "2"]
    args += ["--max-new-tokens", "12"]  # a random model writes until the cap
    r = run_kiwi("train", "llama", "--base", str(base), "--corpus", str(sample_dir), "--out", str(out), *args)
    assert r.returncode == 0, r.stderr
    assert "saved llama-" in r.stderr
    info = json.loads((out / "kiwi_model.json").read_text())
    assert info["extractor"] == "kiwi.llama.v1" and info["config"]["max_steps"] == 2
    one = tmp_path / "one"  # one note keeps generation short
    one.mkdir()
    for suffix in (".txt", ".ann"):
        shutil.copy(sample_dir / f"sample_01_chest_pain{suffix}", one)
    r = run_kiwi("predict", "--model", str(out), str(one), str(tmp_path / "pred.jsonl"), "--to", "jsonl")
    assert r.returncode == 0, r.stderr
    assert "1 notes" in r.stderr
    rows = [json.loads(line) for line in (tmp_path / "pred.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == ["sample_01_chest_pain"]
    r = run_kiwi("evaluate", "--model", str(out), str(one))
    assert r.returncode == 0, r.stderr
    assert "ner" in r.stdout and "exact" in r.stdout
    assert "output cut at" in " ".join(r.stdout.split())  # the drops, reported (a random model rambles)


def test_an_entity_tagged_as_its_own_modifier_is_dropped_and_counted() -> None:
    answers = dict(ANSWERS)
    answers['No <span class="problem">fever</span> or chills .'] = generation(
        ' <span class="negation">No</span> <span class="severity">fever</span> or chills .'
    )
    ex, _ = scripted()
    ex._engine = ScriptedEngine(answers)
    [out] = ex.predict([Document("d", TEXT)])
    assert out.drops.get(SELF_MODIFIER) == 1
    assert not any(s.label == "severity" for s in out.spans)
    assert {out.covered(s) for s in out.spans if s.label == "negation"} == {"No"}

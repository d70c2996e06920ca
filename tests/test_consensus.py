"""Agreement-aware training data: the rules on hand-built double annotations, the noisy annotator, and
the retraining data assembled with a rule from a real store."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from recommender.active.annotators import NOISY, annotated_pool, noisy_copy
from recommender.document import Document
from recommender.retraining import Corpora
from recommender.retraining.consensus import annotator_weights, apply
from recommender.retraining.training_data import assemble
from recommender.store import CorrectionStore

TEXT = "Patient denies chest pain. Aspirin 81 mg daily for hypertension."


def version(annotator: str, spans: list[tuple[str, str]], text: str = TEXT, note: str = "n1") -> Document:
    doc = Document(
        id=f"p:{annotator}:{note}", text=text, meta={"correction": {"project": "p", "annotator": annotator}}
    )
    for label, word in spans:
        b = text.index(word)
        doc.add_span(label, b, b + len(word))
    return doc


GOLD = [("negation", "denies"), ("problem", "chest pain"), ("drug", "Aspirin"), ("problem", "hypertension")]


def keys(doc: Document) -> set[tuple[str, str]]:
    return {(s.label, doc.covered(s)) for s in doc.spans}


def test_all_keeps_every_version() -> None:
    docs = [version("a", GOLD), version("b", GOLD[:2])]
    assert apply(docs, "all") == docs


def test_majority_of_three_and_the_more_consistent_of_two() -> None:
    three = [version("a", GOLD), version("b", GOLD[:3]), version("c", [*GOLD[:2], ("test", "hypertension")])]
    [merged] = apply(three, "majority")
    assert keys(merged) == {("negation", "denies"), ("problem", "chest pain"), ("drug", "Aspirin")}
    # Two versions: the annotator who agrees more with the others elsewhere wins.
    other = TEXT.replace("Patient", "Subject")
    docs = [
        version("a", GOLD),
        version("noisy", GOLD[:1]),
        version("a", GOLD, text=other, note="n2"),
        version("b", GOLD, text=other, note="n2"),
        version("noisy", GOLD[:1], text=other, note="n2"),
    ]
    weights = annotator_weights([docs[:2], docs[2:]])
    # pooled span F1 against the others: a 12/18, b 10/13, noisy 6/15; relative to b's
    assert weights == pytest.approx({"a": (12 / 18) / (10 / 13), "b": 1.0, "noisy": (6 / 15) / (10 / 13)})
    first = [d for d in apply(docs, "majority") if d.text == TEXT]
    assert [d.meta["correction"]["annotator"] for d in first] == ["a"]


def test_a_curator_decides() -> None:
    docs = [version("a", GOLD), version("b", GOLD[:2]), version("curation", GOLD[1:])]
    [chosen] = apply(docs, "majority")
    assert chosen.meta["correction"]["annotator"] == "curation"


def test_drop_disputed_drops_contradicted_spans_not_omissions() -> None:
    a = version("a", [*GOLD, ("bodyloc", "chest")])  # a modifier nested in an entity is no contradiction
    b = version("b", [("negation", "denies"), ("problem", "chest pain"), ("treatment", "Aspirin")])
    out_a, out_b = apply([a, b], "drop_disputed")
    assert keys(out_a) == {("negation", "denies"), ("problem", "chest pain"), ("problem", "hypertension"),
                          ("bodyloc", "chest")}  # fmt: skip
    assert keys(out_b) == {("negation", "denies"), ("problem", "chest pain")}


def test_weighted_repeats_by_agreement() -> None:
    other = TEXT.replace("Patient", "Subject")
    docs = [
        version("a", GOLD),
        version("b", GOLD),
        version("noisy", GOLD[:1]),
        version("noisy", GOLD[:1], text=other, note="n2"),  # a note only the noisy annotator has
    ]
    weights = annotator_weights([docs[:3]])
    assert weights == pytest.approx({"a": 1.0, "b": 1.0, "noisy": 0.4 / (10 / 13)})  # 0.52: one copy
    out = apply(docs, "weighted")
    count = {
        name: sum(d.meta["correction"]["annotator"] == name for d in out) for name in ("a", "b", "noisy")
    }
    assert count == {"a": 2, "b": 2, "noisy": 2}  # two copies each of a and b, one of each noisy note


def test_noisy_annotator_drops_and_mislabels_within_the_layer() -> None:
    gold = version("a", GOLD * 1)
    rng = random.Random(3)
    copies = [noisy_copy(gold, 0.4, 0.5, rng) for _ in range(200)]
    kept = sum(len(c.spans) for c in copies) / (200 * len(GOLD))
    assert kept == pytest.approx(0.6, abs=0.05)
    relabelled = sum(s.label != g.label for c in copies for s in c.spans for g in gold.spans if g.id == s.id)
    assert relabelled / sum(len(c.spans) for c in copies) == pytest.approx(0.5, abs=0.07)
    for c in copies:
        for s in c.spans:
            original = next(g for g in gold.spans if g.id == s.id)
            assert (s.label in ("problem", "test", "drug", "treatment")) == (
                original.label in ("problem", "test", "drug", "treatment")
            )


def test_pool_assignment_is_the_same_clean_or_noisy() -> None:
    notes = [version("gold", GOLD, text=f"{n}. {TEXT}", note=str(n)) for n in range(50)]
    noisy = annotated_pool(notes, seed=4, overlap=0.3)
    clean = annotated_pool(notes, seed=4, overlap=0.3, noisy=False)
    assert [d.id for d in noisy] == [d.id for d in clean]
    primary: dict[str, str] = {}
    for d in noisy:  # each note's first version is its primary annotator's
        primary.setdefault(d.id.split(":")[-1], d.meta["correction"]["annotator"])
    assert len(primary) == 50 and sum(a == NOISY for a in primary.values()) == 10  # 20%
    assert 50 < len(noisy) < 50 + 30  # about 30% of the notes have a second version
    assert any(len(d.spans) < len(GOLD) for d in noisy if d.meta["correction"]["annotator"] == NOISY)
    assert all(len(d.spans) == len(GOLD) for d in clean)


def test_assemble_applies_the_rule(tmp_path: Path) -> None:
    store = CorrectionStore(f"sqlite:///{tmp_path}/c.sqlite3")
    try:
        for d in (version("a", GOLD), version("b", GOLD[:3]), version("c", GOLD[:2])):
            store.add("p", "n1", d.meta["correction"]["annotator"], "test", d)
        every = assemble(store, Corpora([], []), 0.0, "all")
        majority = assemble(store, Corpora([], []), 0.0, "majority")
    finally:
        store.close()
    assert len(every.train) == 3 and len(majority.train) == 1
    assert keys(majority.train[0]) == set(GOLD[:3])  # in at least 2 of the 3 versions

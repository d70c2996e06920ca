"""The scorer: hand-made cases with known answers, the JSON shape, bootstrap and significance, and
agreement with an independent scorer (written here, differently) on perturbed shared notes."""

from __future__ import annotations

import random
import time
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from recommender.document import Document
from recommender.errors import ConfigError, DocumentError
from recommender.evaluation import Mention, align, compare, count, evaluate
from recommender.evaluation.scorer import TaskCounts
from recommender.evaluation.stats import bootstrap_f1, interval, prf, resample_weights
from recommender.schema import load_schema

TEXT = "x" * 200

Spec = list[tuple[str, int, int]]


def make(spans: Spec, relations: list[tuple[int, int]] = (), doc_id: str = "d1") -> Document:  # type: ignore[assignment]
    doc = Document(doc_id, TEXT)
    made = [doc.add_span(label, b, e) for label, b, e in spans]
    for h, t in relations:
        doc.add_relation(made[h], made[t])
    return doc


def counts(gold: Document, pred: Document, task: str) -> dict[str, tuple[int, int, int]]:
    c = count([gold], [pred])[task]
    return {m: tuple(int(x) for x in np.asarray(c.micro(m)).sum(axis=1)) for m in ("exact", "relaxed")}  # type: ignore[misc]


# (name, task, gold spans, gold relations, pred spans, pred relations, exact tp/fp/fn, relaxed tp/fp/fn)
CASES = [
    ("identical", "ner", [("problem", 0, 10)], [], [("problem", 0, 10)], [], (1, 0, 0), (1, 0, 0)),
    ("shifted boundary", "ner", [("problem", 0, 10)], [], [("problem", 2, 12)], [], (0, 1, 1), (1, 0, 0)),
    ("wrong type", "ner", [("problem", 0, 10)], [], [("test", 0, 10)], [], (0, 1, 1), (0, 1, 1)),
    ("touching is not overlap", "ner", [("drug", 0, 10)], [], [("drug", 10, 15)], [], (0, 1, 1), (0, 1, 1)),
    ("duplicate prediction", "ner", [("drug", 0, 5)], [], [("drug", 0, 5)] * 2, [], (1, 1, 0), (1, 1, 0)),
    ("duplicate gold", "ner", [("drug", 0, 5)] * 2, [], [("drug", 0, 5)], [], (1, 0, 1), (1, 0, 1)),
    (
        "two predictions inside one gold",
        "ner",
        [("problem", 0, 20)],
        [],
        [("problem", 0, 5), ("problem", 6, 20)],
        [],
        (0, 2, 1),
        (1, 1, 0),
    ),
    (
        "one prediction across two golds",
        "ner",
        [("problem", 0, 10), ("problem", 12, 20)],
        [],
        [("problem", 5, 15)],
        [],
        (0, 1, 2),
        (1, 0, 1),
    ),
    (
        "greedy by overlap keeps both",
        "ner",
        [("problem", 0, 10), ("problem", 8, 20)],
        [],
        [("problem", 5, 12), ("problem", 9, 11)],
        [],
        (0, 2, 2),
        (2, 0, 0),
    ),
    ("empty gold and prediction", "ner", [], [], [], [], (0, 0, 0), (0, 0, 0)),
    ("nothing predicted", "ner", [("test", 0, 3)], [], [], [], (0, 0, 1), (0, 0, 1)),
    ("modifiers are not NER", "ner", [("negation", 0, 3)], [], [("bodyloc", 5, 9)], [], (0, 0, 0), (0, 0, 0)),
    (
        "modifiers are spans",
        "spans",
        [("negation", 0, 3)],
        [],
        [("negation", 0, 4)],
        [],
        (0, 1, 1),
        (1, 0, 0),
    ),
    (
        "relation: head, modifier and type right",
        "re",
        [("problem", 10, 20), ("negation", 0, 6)],
        [(0, 1)],
        [("problem", 10, 20), ("negation", 0, 6)],
        [(0, 1)],
        (1, 0, 0),
        (1, 0, 0),
    ),
    (
        "relation: wrong head entity",
        "re",
        [("problem", 10, 20), ("problem", 30, 40), ("negation", 0, 6)],
        [(0, 2)],
        [("problem", 10, 20), ("problem", 30, 40), ("negation", 0, 6)],
        [(1, 2)],
        (0, 1, 1),
        (0, 1, 1),
    ),
    (
        "relation: head boundary off",
        "re",
        [("problem", 10, 20), ("bodyloc", 10, 15)],
        [(0, 1)],
        [("problem", 12, 20), ("bodyloc", 10, 15)],
        [(0, 1)],
        (0, 1, 1),
        (1, 0, 0),
    ),
    (
        "relation: wrong modifier type",
        "re",
        [("problem", 10, 20), ("negation", 0, 6)],
        [(0, 1)],
        [("problem", 10, 20), ("uncertain", 0, 6)],
        [(0, 1)],
        (0, 1, 1),
        (0, 1, 1),
    ),
    (
        "relation: wrong head type",
        "re",
        [("problem", 10, 20), ("negation", 0, 6)],
        [(0, 1)],
        [("test", 10, 20), ("negation", 0, 6)],
        [(0, 1)],
        (0, 1, 1),
        (0, 1, 1),
    ),
]


@pytest.mark.parametrize(
    ("task", "gold_spans", "gold_rels", "pred_spans", "pred_rels", "exact", "relaxed"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_hand_made_cases(
    task: str,
    gold_spans: Spec,
    gold_rels: list[tuple[int, int]],
    pred_spans: Spec,
    pred_rels: list[tuple[int, int]],
    exact: tuple[int, int, int],
    relaxed: tuple[int, int, int],
) -> None:
    got = counts(make(gold_spans, gold_rels), make(pred_spans, pred_rels), task)
    assert got == {"exact": exact, "relaxed": relaxed}


def test_precision_recall_f1_values() -> None:
    gold = make([("problem", 0, 5), ("problem", 10, 15), ("test", 20, 25), ("drug", 30, 35)])
    pred = make([("problem", 0, 5), ("test", 20, 25), ("drug", 40, 45)])
    ner = evaluate([gold], [pred]).ner
    assert (ner.exact.precision, ner.exact.recall) == pytest.approx((2 / 3, 1 / 2))
    assert ner.exact.f1 == pytest.approx(4 / 7)
    assert ner.per_type["problem"]["exact"].recall == pytest.approx(0.5)
    assert ner.per_type["drug"]["exact"].f1 == 0.0
    assert ner.per_type["treatment"]["exact"].tp + ner.per_type["treatment"]["exact"].fn == 0


def test_empty_is_zero_not_nan() -> None:
    result = evaluate([make([])], [make([])])
    s = result.ner.exact
    assert (s.precision, s.recall, s.f1) == (0.0, 0.0, 0.0)
    assert s.ci_f1 == (0.0, 0.0)


def test_relation_per_type_and_extra_types() -> None:
    gold = make([("problem", 10, 20), ("negation", 0, 6)], [(0, 1)])
    # drug-bodyloc is not a schema pair: still scored, after the schema's pairs.
    pred = make(
        [("problem", 10, 20), ("negation", 0, 6), ("drug", 30, 35), ("bodyloc", 36, 40)], [(0, 1), (2, 3)]
    )
    re_ = evaluate([gold], [pred]).re
    names = list(re_.per_type)
    pairs = load_schema().pairs
    assert names[: len(pairs)] == [f"{h}-{t}" for h, t in pairs]
    assert names[len(pairs) :] == ["drug-bodyloc"]
    assert re_.per_type["problem-negation"]["exact"].tp == 1
    assert re_.per_type["drug-bodyloc"]["exact"].fp == 1


def test_relaxed_never_counts_more_than_mentions() -> None:
    rng = random.Random(3)
    gold = [Mention("problem", ((b, b + rng.randint(1, 15)),)) for b in rng.sample(range(100), 30)]
    pred = [Mention("problem", ((b, b + rng.randint(1, 15)),)) for b in rng.sample(range(100), 40)]
    a = align(gold, pred, "relaxed")
    assert len({i for i, _ in a.pairs}) == len(a.pairs) == len({j for _, j in a.pairs})
    assert len(a.pairs) + len(a.missed) == len(gold) and len(a.pairs) + len(a.spurious) == len(pred)


def test_documents_paired_by_id_with_clear_errors() -> None:
    g1, g2 = make([], doc_id="a"), make([], doc_id="b")
    with pytest.raises(DocumentError, match=r"\[b\]"):
        evaluate([g1, g2], [make([], doc_id="a")])
    with pytest.raises(DocumentError, match=r"not in gold \[c\]"):
        evaluate([g1], [make([], doc_id="a"), make([], doc_id="c")])
    with pytest.raises(DocumentError, match=r"duplicate gold document ids \[a\]"):
        evaluate([g1, g1], [g1])
    with pytest.raises(DocumentError, match=r"texts differ in document \[a\]"):
        evaluate([g1], [replace(g1, text="other")])
    # Order does not matter: pairing is by id.
    assert evaluate([g1, g2], [g2, g1]).documents == 2


def test_json_shape() -> None:
    d = evaluate([make([("problem", 0, 5)], doc_id="a")], [make([("problem", 0, 5)], doc_id="a")]).to_dict()
    assert set(d) == {"ner", "re", "spans", "documents", "drops"} and d["drops"] == {}
    score_keys = {"precision", "recall", "f1", "tp", "fp", "fn", "ci"}
    for task in ("ner", "re", "spans"):
        assert set(d[task]) == {"exact", "relaxed", "per_type"}
        for mode in ("exact", "relaxed"):
            assert set(d[task][mode]) == score_keys
            lo, hi = d[task][mode]["ci"]["f1"]
            assert isinstance(lo, float) and isinstance(hi, float)
        for modes in d[task]["per_type"].values():
            assert set(modes) == {"exact", "relaxed"} and set(modes["exact"]) == score_keys
    assert list(d["ner"]["per_type"]) == list(load_schema().entity_names)
    assert len(d["spans"]["per_type"]) == 20 and len(d["re"]["per_type"]) == len(load_schema().pairs)
    assert d["ner"]["exact"]["f1"] == 1.0 and d["documents"] == 1


# --- perturbed shared notes ---------------------------------------------------------------------


def perturb(docs: list[Document], rate: float = 0.2, seed: int = 7) -> list[Document]:
    """Drop, shift or relabel a random ``rate`` of the spans (relations follow their spans)."""
    rng = random.Random(seed)
    labels = load_schema().label_names
    out = []
    for d in docs:
        spans, dropped = [], set()
        for s in d.spans:
            if rng.random() >= rate:
                spans.append(replace(s))
                continue
            action = rng.choice(["drop", "shift", "relabel"])
            if action == "drop":
                dropped.add(s.id)
            elif action == "shift":
                delta = rng.choice([-3, -2, -1, 1, 2, 3])
                begin = min(max(0, s.begin + delta), len(d.text) - 1)
                spans.append(replace(s, begin=begin, end=max(begin + 1, min(len(d.text), s.end + delta))))
            else:
                spans.append(replace(s, label=rng.choice([x for x in labels if x != s.label])))
        rels = [replace(r) for r in d.relations if r.head not in dropped and r.tail not in dropped]
        out.append(replace(d, spans=spans, relations=rels))
    return out


def independent_f1(gold: list[Document], pred: list[Document], task: str, relaxed: bool) -> float:
    """Set-based exact scorer and maximum-bipartite relaxed scorer, sharing no code with the package."""
    schema = load_schema()
    keep = set(schema.entity_names) if task == "ner" else set(schema.label_names)

    def items(doc: Document) -> list[tuple[str, tuple[tuple[int, int], ...]]]:
        if task == "re":
            spans = {s.id: s for s in doc.spans}
            return [
                (
                    spans[r.head].label + ">" + spans[r.tail].label,
                    ((spans[r.head].begin, spans[r.head].end), (spans[r.tail].begin, spans[r.tail].end)),
                )
                for r in doc.relations
            ]
        return [(s.label, ((s.begin, s.end),)) for s in doc.spans if s.label in keep]

    tp = n_gold = n_pred = 0
    pred_by_id = {d.id: d for d in pred}
    for g in gold:
        gi, pi = items(g), items(pred_by_id[g.id])
        n_gold, n_pred = n_gold + len(gi), n_pred + len(pi)
        if not relaxed:
            tp += sum((Counter(gi) & Counter(pi)).values())
            continue
        edges = np.zeros((len(gi), len(pi)), dtype=np.int8)
        for a, (la, ra) in enumerate(gi):
            for b, (lb, rb) in enumerate(pi):
                edges[a, b] = la == lb and all(
                    x0 < y1 and y0 < x1 for (x0, x1), (y0, y1) in zip(ra, rb, strict=True)
                )
        if edges.size:
            tp += int((maximum_bipartite_matching(csr_matrix(edges), perm_type="column") >= 0).sum())
    p, r = tp / n_pred, tp / n_gold
    return 2 * p * r / (p + r)


@pytest.fixture(scope="module")
def perturbed(mtsamples_docs: list[Document]) -> list[Document]:
    return perturb(mtsamples_docs)


@pytest.mark.parametrize("task", ["ner", "re", "spans"])
@pytest.mark.parametrize("mode", ["exact", "relaxed"])
def test_agrees_with_independent_scorer(
    mtsamples_docs: list[Document], perturbed: list[Document], task: str, mode: str
) -> None:
    ours = evaluate(mtsamples_docs, perturbed, resamples=10).task(task).mode(mode).f1  # type: ignore[arg-type]
    theirs = independent_f1(mtsamples_docs, perturbed, task, relaxed=mode == "relaxed")
    assert 0.5 < ours < 1.0  # the perturbation really changed something
    assert abs(ours - theirs) <= 0.005


def test_bootstrap_interval_is_deterministic_and_contains_the_estimate(
    mtsamples_docs: list[Document], perturbed: list[Document]
) -> None:
    a = evaluate(mtsamples_docs, perturbed, seed=1).ner.exact
    b = evaluate(mtsamples_docs, perturbed, seed=1).ner.exact
    c = evaluate(mtsamples_docs, perturbed, seed=2).ner.exact
    assert a.ci_f1 == b.ci_f1 != c.ci_f1
    lo, hi = a.ci_f1
    assert lo < a.f1 < hi and hi - lo < 0.2


def test_bootstrap_is_fast(mtsamples_docs: list[Document], perturbed: list[Document]) -> None:
    ner: TaskCounts = count(mtsamples_docs, perturbed)["ner"]
    start = time.perf_counter()
    ner.score(resamples=1000)
    assert time.perf_counter() - start < 1.0


def test_vectorised_bootstrap_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    tp, fp, fn = (rng.integers(0, 10, 30) for _ in range(3))
    w = resample_weights(30, 50, seed=4)
    fast = bootstrap_f1(tp, fp, fn, w)
    slow = []
    for row in w:
        idx = np.repeat(np.arange(30), row)
        slow.append(prf(tp[idx].sum(), fp[idx].sum(), fn[idx].sum())[2])
    assert np.allclose(fast, slow)
    assert (w.sum(axis=1) == 30).all()
    lo, hi = interval(fast)  # type: ignore[misc]
    assert lo <= np.median(fast) <= hi


def test_wilcoxon_direction(mtsamples_docs: list[Document]) -> None:
    c_good = count(mtsamples_docs, perturb(mtsamples_docs, rate=0.1, seed=1))["ner"]
    c_bad = count(mtsamples_docs, perturb(mtsamples_docs, rate=0.4, seed=1))["ner"]
    better = compare(c_good.micro("exact"), c_bad.micro("exact"))
    worse = compare(c_bad.micro("exact"), c_good.micro("exact"))
    assert better.f1_a > better.f1_b
    assert better.p_value < 0.001 < 0.999 < worse.p_value
    assert better.resamples == 1000
    with pytest.raises(ConfigError):
        compare(c_good.micro("exact"), (np.ones(3), np.ones(3), np.ones(3)))

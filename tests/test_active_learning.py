"""Active learning: each strategy's ranking on hand-made score tables, the edit count, the simulator on
the lexicon (end to end, resumed) and on a tiny encoder, the HTML report in Chromium, and the setting
that chooses the scores Label Studio and INCEpTION get."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from support import chromium, chromium_screenshot, run_kiwi, tiny_bert

from recommender.active.simulate import Learner, Plan, Round, Run, area, reach, simulate
from recommender.active.simulation_report import write
from recommender.active.strategies import (
    PER_NOTE,
    STRATEGIES,
    Candidate,
    choices_of,
    get_strategy,
    rescore,
)
from recommender.corpora import SAMPLE_DIR, development_split
from recommender.document import Choice, Document
from recommender.errors import ConfigError
from recommender.evaluation.edits import Edits, edits
from recommender.extractors.base import Extractor
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat, jsonl
from recommender.settings import Settings, load_settings
from recommender.synthetic import generate


def word(p: float, second: float | None = None, entropy: float = 0.0, kind: str = "entity") -> Choice:
    return Choice(kind, 0, 1, p, p, 1 - p if second is None else second, entropy)


def note(doc_id: str, *choices: Choice, uncertainty: float | None = None) -> Candidate:
    doc = Document(doc_id, "x" * 10, choices=list(choices), uncertainty=uncertainty)
    return Candidate(doc_id, doc.text, doc)


def ranking(name: str, pool: list[Candidate]) -> list[str]:
    return get_strategy(name).select(pool, len(pool), random.Random(0))


# --- strategies on hand-made tables ---------------------------------------------------------------
def test_least_confidence_reads_the_extractor_uncertainty() -> None:
    pool = [note("sure", uncertainty=0.1), note("unsure", uncertainty=0.6), note("mid", uncertainty=0.3)]
    assert ranking("least_confidence", pool) == ["unsure", "mid", "sure"]


def test_margin_ranks_close_runner_ups_first() -> None:
    pool = [
        note("wide", word(0.9, 0.05), word(0.9, 0.05)),  # margin 0.85
        note("close", word(0.5, 0.45), word(0.9, 0.05)),  # one word nearly tied
        note("both", word(0.5, 0.45), word(0.5, 0.48)),
    ]
    assert ranking("margin", pool) == ["both", "close", "wide"]


def test_token_entropy_sums_and_mnlp_normalises_by_length() -> None:
    long_sure = note("long", *[word(0.9, entropy=0.2) for _ in range(10)])  # total entropy 2.0
    short_unsure = note("short", word(0.4, entropy=0.9), word(0.5, entropy=0.8))  # total 1.7
    assert ranking("token_entropy", [short_unsure, long_sure]) == ["long", "short"]
    assert ranking("mnlp", [long_sure, short_unsure]) == ["short", "long"]  # -mean log p: 0.80 vs 0.11


def test_relation_aware_breaks_span_ties_by_link_uncertainty() -> None:
    spans = [word(0.8), word(0.8, kind="modifier")]
    sure_links = note("sure", *spans, Choice("link", 0, 5, 0.95, 0.95, 0.05, 0.29))
    unsure_links = note("unsure", *spans, Choice("link", 0, 5, 0.55, 0.55, 0.45, 0.99))
    assert ranking("relation", [sure_links, unsure_links]) == ["unsure", "sure"]
    mnlp = get_strategy("mnlp")
    assert mnlp.uncertainty(sure_links) == mnlp.uncertainty(unsure_links)  # spans alone cannot tell


def test_diversity_takes_one_note_from_each_cluster() -> None:
    topics = ["chest pain dyspnea troponin"] * 3 + ["metformin insulin glucose"] * 3
    pool = [
        Candidate(f"n{i}", text, Document(f"n{i}", text, choices=[word(0.5 + 0.01 * i)]))
        for i, text in enumerate(topics)
    ]
    picked = get_strategy("diversity").select(pool, 2, random.Random(0))
    assert len(picked) == 2 and {int(p[1:]) < 3 for p in picked} == {True, False}
    # Uncertainty alone takes both from the cardiac cluster (the lowest probabilities).
    assert {int(p[1:]) < 3 for p in get_strategy("mnlp").select(pool, 2, random.Random(0))} == {True}


def test_qbc_ranks_by_committee_disagreement() -> None:
    def pred(doc_id: str, *spans: tuple[str, int, int]) -> Document:
        doc = Document(doc_id, "x" * 40)
        for label, b, e in spans:
            doc.add_span(label, b, e)
        return doc

    agree = Candidate("agree", "", pred("agree", ("drug", 0, 4)), (pred("agree", ("drug", 0, 4)),))
    split = Candidate("split", "", pred("split", ("drug", 0, 4)), (pred("split", ("test", 0, 4)),))
    half = Candidate(
        "half", "", pred("half", ("drug", 0, 4), ("test", 9, 12)), (pred("half", ("drug", 0, 4)),)
    )
    assert ranking("qbc", [agree, split, half]) == ["split", "half", "agree"]
    with pytest.raises(ConfigError, match="committee"):
        ranking("qbc", [note("alone")])


def test_random_is_seeded_and_every_strategy_has_a_reference() -> None:
    pool = [note(f"n{i}") for i in range(20)]
    assert ranking("random", pool) == ranking("random", pool) != [c.id for c in pool]
    for cls in STRATEGIES.values():
        doc = " ".join((cls.__doc__ or "").split())
        assert any(ch.isdigit() for ch in doc) and "(" in doc, cls.name  # "(Author year, title)"
    with pytest.raises(ConfigError, match=r"\[nope\]"):
        get_strategy("nope")


def test_choices_from_scores_when_the_extractor_exposes_none() -> None:
    doc = Document("d", "aspirin 81 mg")
    drug = doc.add_span("drug", 0, 7, score=0.9)
    dose = doc.add_span("strength", 8, 13, score=0.6)
    doc.add_relation(drug, dose, score=0.7)
    kinds = [(c.kind, c.chosen) for c in choices_of(doc)]
    assert kinds == [("entity", 0.9), ("modifier", 0.6), ("link", 0.7)]


# --- the extractors' choices ----------------------------------------------------------------------
def test_lexicon_exposes_its_decisions_without_side_effects() -> None:
    model = LexiconExtractor.train(brat.read(SAMPLE_DIR))
    docs = [d.without_annotations() for d in brat.read(SAMPLE_DIR)]
    first = model.predict(docs)
    assert all(not d.choices for d in docs)  # the input is untouched
    assert first[0].choices and {c.kind for d in first for c in d.choices} == {"entity", "modifier", "link"}
    for d in first:
        for c in d.choices:
            assert 0 <= c.second <= c.top <= 1 and 0 <= c.entropy <= 1 and c.chosen <= c.top
    assert [d.choices for d in model.predict(docs)] == [d.choices for d in first]


def test_choices_survive_jsonl(tmp_path: Path) -> None:
    model = LexiconExtractor.train(brat.read(SAMPLE_DIR))
    pred = model.predict([d.without_annotations() for d in brat.read(SAMPLE_DIR)])
    jsonl.write(pred, tmp_path / "p.jsonl")
    assert [d.choices for d in jsonl.read(tmp_path / "p.jsonl")] == [d.choices for d in pred]


# --- edits ------------------------------------------------------------------------------------------
def test_edits_count_each_kind_of_correction() -> None:
    text = "No chest pain. Aspirin 81 mg daily."
    gold = Document("g", text)
    neg, pain = gold.add_span("negation", 0, 2), gold.add_span("problem", 3, 13)
    drug, dose = gold.add_span("drug", 15, 22), gold.add_span("strength", 23, 28)
    gold.add_relation(pain, neg)
    gold.add_relation(drug, dose)
    pred = Document("g", text)
    p_pain = pred.add_span("problem", 9, 13)  # re-bounded ("pain" -> "chest pain")
    p_neg = pred.add_span("negation", 0, 2)  # right
    p_drug = pred.add_span("treatment", 15, 22)  # relabelled
    pred.add_span("frequency", 29, 34)  # spurious: deleted
    pred.add_relation(p_pain, p_neg)  # kept: its spans pair with gold's
    pred.add_relation(p_drug, p_neg)  # wrong: deleted
    e = edits(pred, gold)
    assert e == Edits(
        spans_added=1,  # the strength
        spans_deleted=1,
        spans_relabelled=1,
        spans_rebounded=1,
        relations_added=1,  # drug -> strength
        relations_deleted=1,
    )
    assert e.total == 6 and edits(gold, gold).total == 0
    assert edits(Document("g", text), gold).total == 6  # from scratch: every span and relation added


# --- the simulator ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus() -> tuple[list[Document], list[Document]]:
    train, dev = development_split(generate(48, seed=3))
    return train[:30], dev[:6]


def test_reach_interpolates_and_area_is_a_mean() -> None:
    def r(notes: int, tokens: int, s: float) -> Round:
        return Round(notes, tokens, {"total": notes * 10}, {"score": s}, [])

    rounds = [r(2, 100, 0.2), r(4, 200, 0.6), r(6, 300, 0.8)]
    assert reach(rounds, 0.4, "tokens") == pytest.approx(150)
    assert reach(rounds, 0.8, "notes") == 6 and reach(rounds, 0.9, "notes") is None
    assert reach(rounds, 0.4, "edits") == pytest.approx(30)
    assert area(rounds, "tokens", 300) == pytest.approx((0.4 * 100 + 0.7 * 100) / 200)
    assert area(rounds, "tokens", 400) == pytest.approx((0.4 * 100 + 0.7 * 100 + 0.8 * 100) / 300)


def test_simulation_on_the_lexicon_end_to_end(
    corpus: tuple[list[Document], list[Document]], tmp_path: Path
) -> None:
    pool, dev = corpus
    names = ["random", "mnlp", "qbc"]
    results, runs = simulate(
        pool,
        dev,
        Learner("kiwi.lexicon.v1"),
        names,
        [0, 1],
        Plan(seed_notes=3, batch_notes=4, budget_notes=15),
        tmp_path / "sim",
        committee=[Learner("kiwi.lexicon.v1", LexiconExtractor.config_class(min_score=0.6))],
    )
    assert set(results["summary"]) == set(names) and results["target"] is not None
    for name in names:
        for seed, rounds in runs[name].items():
            assert [r.notes for r in rounds] == [3, 7, 11, 15]
            assert rounds[0].labelled == runs["random"][seed][0].labelled  # one seed set per seed
            assert len(set(rounds[-1].labelled)) == 15
            tokens = [r.tokens for r in rounds]
            assert tokens == sorted(tokens) and all(0 <= r.scores["score"] <= 1 for r in rounds)
            assert rounds[-1].selected == []
            spent = [r.edits["total"] for r in rounds]
            assert spent == sorted(spent) and spent[0] > 0
    # Uncertainty sampling picks other notes than random, and the state says which.
    assert runs["mnlp"][0][1].labelled != runs["random"][0][1].labelled
    state = json.loads((tmp_path / "sim" / "runs" / "mnlp-seed0" / "state.json").read_text())
    assert state["strategy"] == "mnlp" and len(state["rounds"]) == 4


def test_an_interrupted_run_resumes_where_it_stopped(
    corpus: tuple[list[Document], list[Document]], tmp_path: Path
) -> None:
    pool, dev = corpus
    plan = Plan(seed_notes=3, batch_notes=3, budget_notes=12)

    def run(folder: Path) -> Run:
        return Run(pool, dev, Learner("kiwi.lexicon.v1"), "margin", 4, plan, folder)

    whole = run(tmp_path / "whole").run()
    state = tmp_path / "cut" / "state.json"
    run(tmp_path / "cut").run()
    data = json.loads(state.read_text())
    data["rounds"] = data["rounds"][:2]  # as if killed during the third round
    state.write_text(json.dumps(data))
    lines: list[str] = []
    resumed = run(tmp_path / "cut").run(lines.append)
    assert len(lines) == len(whole) - 2  # only the missing rounds ran
    assert [(r.labelled, r.scores, r.edits) for r in resumed] == [
        (r.labelled, r.scores, r.edits) for r in whole
    ]
    assert "margin seed 4 round 3: 9 notes" in lines[0]


def test_kiwi_simulate_cli_writes_json_and_html(tmp_path: Path) -> None:
    train, dev = development_split(generate(30, seed=9))
    brat.write(train[:10], tmp_path / "pool")
    brat.write(dev[:3], tmp_path / "dev")
    r = run_kiwi(
        "simulate", str(tmp_path / "pool"), "--eval", str(tmp_path / "dev"), "--out", str(tmp_path / "out"),
        "--strategy", "random", "--strategy", "least_confidence", "--seeds", "2",
        "--seed-notes", "2", "--batch-notes", "3", "--budget-notes", "8",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "least_confidence seed 1 round 3: 8 notes" in r.stderr  # progress lines
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results["summary"]) == {"random", "least_confidence"} and results["pool_notes"] == 10
    html = (tmp_path / "out" / "report.html").read_text()
    assert html.count("<polyline") == 6 and "least_confidence" in html  # 2 strategies x 3 charts
    bad = run_kiwi(
        "simulate", str(tmp_path / "pool"), "--eval", str(tmp_path / "dev"), "--out", str(tmp_path / "o2"),
        "--strategy", "best",
    )  # fmt: skip
    assert bad.returncode == 2 and "[best]" in bad.stderr


@pytest.mark.external
def test_report_renders_in_headless_chromium(
    corpus: tuple[list[Document], list[Document]], tmp_path: Path
) -> None:
    browser = chromium()
    PIL = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot")
    pool, dev = corpus
    results, runs = simulate(
        pool[:16], dev[:3], Learner("kiwi.lexicon.v1"), ["random", "margin"], [0, 1],
        Plan(seed_notes=3, batch_notes=6, budget_notes=15), tmp_path / "sim",
    )  # fmt: skip
    page = write(results, runs, tmp_path / "sim")
    shot = tmp_path / "shot.png"
    run = chromium_screenshot(browser, page.as_uri(), shot, tmp_path / "profile", (1280, 1000))
    assert shot.is_file(), "chromium wrote no screenshot"
    assert "CONSOLE" not in run.stderr, run.stderr
    pixels = np.asarray(PIL.open(shot).convert("RGB"))
    # The two strategies' colours (random: dark grey, margin: #1f77b4) are drawn as curves.
    blue = (np.abs(pixels.astype(int) - [0x1F, 0x77, 0xB4]) < 40).all(axis=2)
    assert blue.sum() > 300, "no curve of the second strategy"
    assert (pixels < 240).any(axis=2).mean() > 0.02


# --- the tiny encoder -------------------------------------------------------------------------------
def test_simulation_on_a_tiny_encoder(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from recommender.extractors.encoder import EncoderConfig

    base = tiny_bert(tmp_path / "bert")
    train, dev = development_split(generate(30, seed=11))
    config = EncoderConfig(
        base_model=str(base), max_length=64, window_overlap=16, epochs=2, batch_size=4, precision="fp32"
    )
    kept = tmp_path / "kept"

    class KeepingLearner(Learner):
        """Keeps a copy of every round's model (the run keeps only the newest)."""

        def train(self, docs: Sequence[Document], folder: Path, previous: Path | None) -> Extractor:
            model = super().train(docs, folder, previous)
            shutil.copytree(folder, kept / folder.name)
            return model

    learner = KeepingLearner("kiwi.encoder.v1", config, warm_start=True, warm_epochs=1)
    run = Run(
        train[:10], dev[:3], learner, "relation", 0,
        Plan(seed_notes=2, batch_notes=2, budget_notes=6), tmp_path / "run",
    )  # fmt: skip
    rounds = run.run()
    assert [r.notes for r in rounds] == [2, 4, 6]
    saved = json.loads((tmp_path / "run" / "models" / "round-2" / "kiwi_model.json").read_text())
    assert saved["config"]["init_from"].endswith("round-1")  # warm-started from the last round
    assert saved["config"]["epochs"] == 1, "a warm-started round trains warm_epochs"
    from recommender.extractors import load_extractor

    # The edits charged for the second round's batch are those that turn the pre-annotation of the
    # chosen notes by that round's model into their gold (predicted as the simulation predicts: all
    # unlabelled notes in one call)
    model = load_extractor(kept / "round-1")
    rest = [d for d in sorted(train[:10], key=lambda d: d.id) if d.id not in rounds[1].labelled]
    pre = dict(zip([d.id for d in rest], model.predict([d.without_annotations() for d in rest]), strict=True))
    chosen = {d.id: d for d in rest if d.id in rounds[1].selected}
    assert len(chosen) == 2
    charged = sum((edits(pre[i], gold) for i, gold in chosen.items()), Edits()).to_dict()
    assert rounds[1].selected_edits == charged and charged["total"] > 0
    assert rounds[2].edits["total"] == rounds[1].edits["total"] + charged["total"]

    pred = load_extractor(tmp_path / "run" / "models" / "round-2").predict([dev[0].without_annotations()])[0]
    kinds = {c.kind for c in pred.choices}
    assert {"entity", "modifier"} <= kinds  # every word of both heads
    assert all(0 <= c.second <= c.top <= 1 and 0 <= c.entropy <= 1.0001 for c in pred.choices)


# --- the tools --------------------------------------------------------------------------------------
def test_the_setting_accepts_per_note_strategies_only() -> None:
    assert Settings().al_strategy in PER_NOTE
    assert load_settings(al_strategy="margin").al_strategy == "margin"
    for batch_only in ("random", "diversity", "qbc", "nope"):
        with pytest.raises(ConfigError, match=rf"\[{batch_only}\]"):
            load_settings(al_strategy=batch_only)


def test_rescore_sets_what_the_tools_read() -> None:
    model = LexiconExtractor.train(brat.read(SAMPLE_DIR))
    pred = model.predict([d.without_annotations() for d in brat.read(SAMPLE_DIR)])[0]
    lc = rescore(model.predict([pred.without_annotations()])[0], get_strategy("least_confidence"))
    assert lc.uncertainty == pred.uncertainty and [s.score for s in lc.spans] == [s.score for s in pred.spans]
    margin = rescore(model.predict([pred.without_annotations()])[0], get_strategy("margin"))
    assert margin.uncertainty == pytest.approx(
        get_strategy("margin").uncertainty(Candidate("", "", pred)), abs=1e-4
    )
    assert [s.score for s in margin.spans] != [s.score for s in pred.spans]
    assert all(0 <= s.score <= 1 for s in margin.spans)  # type: ignore[operator]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("model") / "lexicon"
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(folder)
    return folder


def _service(tmp_path: Path, model_dir: Path, strategy: str) -> TestClient:
    from recommender.retraining import Corpora
    from recommender.service import create_app

    settings = Settings(model=model_dir, model_dir=tmp_path / strategy, retrain=False, al_strategy=strategy)
    return TestClient(create_app(settings, corpora=Corpora([], [])))


def test_the_setting_changes_label_studio_and_inception_scores(model_dir: Path, tmp_path: Path) -> None:
    from test_service_inception import SPAN, predict_request, predicted, response_cas

    notes = [d.without_annotations() for d in brat.read(SAMPLE_DIR)]
    tasks = {"tasks": [{"id": i, "data": {"text": d.text}} for i, d in enumerate(notes)]}
    answers: dict[str, tuple[list[float], list[float]]] = {}
    for strategy in ("least_confidence", "token_entropy"):
        with _service(tmp_path, model_dir, strategy) as client:
            ls = client.post("/predict", json=tasks).json()["results"]
            request = predict_request(notes[0])
            cas = response_cas(client.post("/inception/entities/predict", json=request).json(), request)
            answers[strategy] = (
                [p["score"] for p in ls],
                sorted(fs.get("label_score") for fs in predicted(cas, SPAN)),
            )
    model = LexiconExtractor.load(model_dir)
    expected = [get_strategy("token_entropy").task_score(d) for d in model.predict(notes)]
    assert answers["token_entropy"][0] == pytest.approx(expected, abs=1e-4)
    assert answers["least_confidence"][0] == pytest.approx(
        [1 - d.uncertainty for d in model.predict(notes)],
        abs=1e-4,  # type: ignore[operator]
    )
    assert answers["token_entropy"][0] != answers["least_confidence"][0]
    assert answers["token_entropy"][1] != answers["least_confidence"][1]  # INCEpTION's span scores


def test_a_note_without_decisions_comes_first() -> None:
    # As in least confidence: where the model decided nothing, nothing is known about the note.
    blank = note("blank")
    for name in PER_NOTE:
        assert ranking(name, [note("some", word(0.6, entropy=0.5)), blank])[0] == "blank", name
        assert get_strategy(name).task_score(blank.predicted) == 0.0, name

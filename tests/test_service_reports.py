"""The agreement report over a project's stored corrections."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
from test_service_labelstudio import make_client

from recommender.corpora import SAMPLE_DIR
from recommender.evaluation import evaluate
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(tmp_path / "lexicon")
    return tmp_path / "lexicon"


def test_agreement_of_stored_corrections(tmp_path: Path, model_dir: Path) -> None:
    alice = brat.read(SAMPLE_DIR)
    # Bob drops every problem of the first note: his entity F1 against Alice falls accordingly.
    first = alice[0]
    kept = [s for s in first.spans if s.label != "problem"]
    kept_ids = {s.id for s in kept}
    bob = [
        replace(
            first,
            spans=[replace(s) for s in kept],
            relations=[replace(r) for r in first.relations if r.head in kept_ids and r.tail in kept_ids],
        ),
        *alice[1:],
    ]
    with make_client(tmp_path, model_dir) as client:
        store = client.app.state.service.store  # type: ignore[attr-defined]
        assert client.get("/projects/p1/agreement").status_code == 404
        for doc in alice:
            store.add("p1", doc.id, "alice", "test", doc)
        one = client.get("/projects/p1/agreement")
        assert one.status_code == 422 and "[alice]" in one.json()["detail"]
        for doc in bob:
            store.add("p1", doc.id, "bob", "test", doc)

        report = client.get("/projects/p1/agreement", params={"resamples": 50})
        assert report.status_code == 200
        data = report.json()
        assert data["raters"] == ["alice", "bob"] and data["documents"] == len(alice)
        (pair,) = data["pairs"]
        expected = evaluate(alice, bob, resamples=1).to_dict()["ner"]["exact"]["f1"]
        assert abs(pair["ner"]["exact"]["f1"] - expected) < 1e-9 and expected < 1.0
        assert first.text[:40] not in report.text  # JSON carries no note text

        html = client.get("/projects/p1/agreement", params={"format": "html", "resamples": 50})
        assert html.status_code == 200 and html.headers["content-type"].startswith("text/html")
        assert "alice" in html.text and "<svg" in html.text

        with_model = client.get("/projects/p1/agreement", params={"include_model": True, "resamples": 20})
        assert with_model.status_code == 200 and len(with_model.json()["raters"]) == 3

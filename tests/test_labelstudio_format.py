"""Label Studio tasks JSON: labeling configs, the captured protocol bodies, offsets, malformed input."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from recommender.document import Document
from recommender.errors import DocumentError, FormatError
from recommender.formats import labelstudio as ls

REPO = Path(__file__).resolve().parents[1]
TEXT = "Patient denies chest pain. History of hypertension, on lisinopril."


def _fixture(fixtures_dir: Path, name: str) -> Any:
    data = json.loads((fixtures_dir / "labelstudio" / name).read_text(encoding="utf-8"))
    return data.get("body", data) if isinstance(data, dict) else data


def _region(rid: str, label: str, phrase: str, text: str = TEXT, **extra: Any) -> dict[str, Any]:
    b = text.index(phrase)
    value = {"start": b, "end": b + len(phrase), "text": phrase, "labels": [label]}
    return {"id": rid, "from_name": "label", "to_name": "text", "type": "labels", "value": value, **extra}


def _rel(a: str, b: str, direction: str = "right", labels: list[str] | None = None) -> dict[str, Any]:
    return {
        "type": "relation",
        "from_id": a,
        "to_id": b,
        "direction": direction,
        "labels": ["hasAttr"] if labels is None else labels,
    }


def _task(*result: dict[str, Any], text: str = TEXT, **annotation: Any) -> dict[str, Any]:
    return {
        "id": 7,
        "data": {"text": text},
        "annotations": [{"id": 70, "result": list(result), **annotation}],
    }


# --- labeling configs ----------------------------------------------------------------------------


def test_config_of_the_fixture_and_of_our_generated_config(fixtures_dir: Path) -> None:
    fixture = ls.parse_labeling_config((fixtures_dir / "labelstudio" / "label_config.xml").read_text())
    ours = ls.parse_labeling_config(
        (REPO / "annotation_guidelines/labelstudio/labeling_config.xml").read_text()
    )
    assert fixture == ours == ls.LabelStudioConfig()


def test_config_with_project_names(caplog: pytest.LogCaptureFixture) -> None:
    xml = """<View>
      <Text name="note" value="$note_text"/>
      <Labels name="ner" toName="note">
        <Label value="Problem"/><Label value="Body location"/><Label value="Lab" alias="labvalue"/>
        <Label value="Tumour"/>
      </Labels>
      <Relations><Relation value="other"/><Relation value="HASATTR"/></Relations>
    </View>"""
    with caplog.at_level(logging.WARNING):
        config = ls.parse_labeling_config(xml)
    assert config.text_key == "note_text" and config.from_name == "ner" and config.to_name == "note"
    assert config.relation_label == "HASATTR"
    assert config.label_map == {"Problem": "problem", "Body location": "bodyloc"}
    assert "[Tumour]" in caplog.text
    doc = Document("d", "chest pain")
    loc = doc.add_span("bodyloc", 0, 5)
    pain = doc.add_span("problem", 0, 10)
    doc.add_relation(pain, loc)
    results = ls.document_results(doc, config)
    assert [r["value"]["labels"] for r in results[:2]] == [["Body location"], ["Problem"]]
    assert results[2]["labels"] == ["HASATTR"] and results[0]["from_name"] == "ner"
    task = {"id": 1, "data": {"note_text": doc.text}, "annotations": [{"result": results}]}
    back = ls.task_documents(task, config)[0]
    assert [s.key for s in back.spans] == [s.key for s in doc.spans] and len(back.relations) == 1


@pytest.mark.parametrize(
    ("xml", "problem"),
    [
        ("<View><Text name='t' value='$text'/>", "not usable XML"),
        ("<View><Labels name='l' toName='t'/></View>", "no <Text"),
        ("<View><Text name='t' value='$text'/><Labels name='l' toName='x'/></View>", "no <Labels>"),
        ('<!DOCTYPE v [<!ENTITY a "aaaa">]><View>&a;</View>', "not usable XML"),
    ],
)
def test_unusable_configs(xml: str, problem: str) -> None:
    with pytest.raises(FormatError, match=problem):
        ls.parse_labeling_config(xml)


# --- the captured protocol bodies ----------------------------------------------------------------


def test_predict_request_tasks_have_text_and_no_annotations(fixtures_dir: Path) -> None:
    body = _fixture(fixtures_dir, "predict_request_batch.json")
    config = ls.parse_labeling_config(body["label_config"])
    docs = ls.parse_tasks(body["tasks"], config)
    assert [d.id for d in docs] == ["1", "2", "3"] and all(not d.spans for d in docs)
    assert [ls.task_text(t, config) for t in body["tasks"]] == [d.text for d in docs]


@pytest.mark.parametrize("name", ["webhook_ANNOTATION_CREATED.json", "webhook_ANNOTATION_UPDATED.json"])
def test_webhook_annotations(fixtures_dir: Path, name: str) -> None:
    body = _fixture(fixtures_dir, name)
    task = {**body["task"], "annotations": [body["annotation"]]}
    (doc,) = ls.task_documents(task)
    assert doc.id == "2" and doc.meta["annotation_id"] == body["annotation"]["id"]
    assert doc.meta["annotator"] == "1" and {s.source for s in doc.spans} == {"1"}
    for region in body["annotation"]["result"]:
        if region["type"] == "labels":
            assert doc.covered(doc.span(region["id"])) == region["value"]["text"]
    pairs = [(doc.covered(h), doc.covered(t)) for _, h, t in doc.relation_pairs()]
    expected = [("pain", "denies")] if name.endswith("CREATED.json") else []  # the update removed it
    assert pairs == expected


def test_stored_predictions_and_re_predict_requests(fixtures_dir: Path) -> None:
    texts = {
        t["id"]: t["data"]["text"] for t in _fixture(fixtures_dir, "predict_request_batch.json")["tasks"]
    }
    for p in _fixture(fixtures_dir, "predictions_stored.json"):
        (doc,) = ls.parse_tasks([{"id": p["task"], "data": {"text": texts[p["task"]]}, "predictions": [p]}])
        assert doc.meta["model_version"] == "v1" and doc.meta["score"] == p["score"]
        regions = [r for r in p["result"] if r["type"] == "labels"]
        assert [(doc.covered(s), s.score) for s in doc.spans] == [
            (r["value"]["text"], r["score"]) for r in regions
        ]
        assert len(doc.relations) == sum(r["type"] == "relation" for r in p["result"])
    for name in ("predict_request_tasks_with_old_predictions.json", "predict_request_interactive.json"):
        tasks = _fixture(fixtures_dir, name)["tasks"]
        for task in tasks:
            preds = [p for p in task["predictions"] if isinstance(p, dict)]
            docs = ls.task_documents(task, source="predictions")
            assert len(docs) == len(preds) > 0
            for doc, p in zip(docs, preds, strict=True):
                assert len(doc.spans) + len(doc.relations) == len(p["result"])
    legacy = ls.parse_tasks(_fixture(fixtures_dir, "train_request_legacy.json")["annotations"])
    assert legacy and all(d.meta["ls_source"] == "annotations" and d.spans for d in legacy)


def test_prediction_entry_shape_and_task_score() -> None:
    doc = Document("d", TEXT)
    neg = doc.add_span("negation", 8, 14, score=0.5)
    pain = doc.add_span("problem", 21, 25, score=0.7)
    doc.add_relation(pain, neg)
    pred = ls.document_prediction(doc, model_version="v3")
    assert pred["model_version"] == "v3" and pred["score"] == pytest.approx(0.6)
    assert pred["result"][0] == {
        "id": neg.id,
        "from_name": "label",
        "to_name": "text",
        "type": "labels",
        "value": {"start": 8, "end": 14, "text": "denies", "labels": ["negation"]},
        "score": 0.5,
    }
    assert pred["result"][2] == _rel(pain.id, neg.id)
    doc.uncertainty = 0.9
    assert ls.document_prediction(doc)["score"] == pytest.approx(0.1)
    doc.meta["score"] = 0.25
    assert ls.document_prediction(doc)["score"] == 0.25
    assert ls.document_prediction(Document("e", "nothing"))["score"] is None


# --- offsets -------------------------------------------------------------------------------------


def test_emoji_offsets_are_code_points(emoji_doc: Document, tmp_path: Path) -> None:
    results = ls.document_results(emoji_doc)
    by_text = {r["value"]["text"]: r["value"] for r in results if r["type"] == "labels"}
    aspirin = by_text["aspirin"]
    # "Pt 😀 denies chest pain 🩺. Took aspirin": two emoji before, each one code point, two UTF-16 units.
    assert (aspirin["start"], aspirin["end"]) == (31, 38)
    assert len(emoji_doc.text[:31].encode("utf-16-le")) // 2 == 33
    assert by_text["𝔥eadache"]["end"] - by_text["𝔥eadache"]["start"] == 8
    for r in results:
        if r["type"] == "labels":
            assert emoji_doc.text[r["value"]["start"] : r["value"]["end"]] == r["value"]["text"]
    ls.write([emoji_doc], tmp_path / "tasks.json")
    (back,) = ls.read(tmp_path / "tasks.json")
    assert back.id == emoji_doc.id and back.text == emoji_doc.text
    assert [s.key for s in back.spans] == [s.key for s in emoji_doc.spans]
    assert [(r.head, r.tail) for r in back.relations] == [(r.head, r.tail) for r in emoji_doc.relations]


def test_old_utf16_offsets_are_converted(caplog: pytest.LogCaptureFixture) -> None:
    text = "😀 no fever"
    region = {
        "id": "a",
        "type": "labels",
        "value": {"start": 6, "end": 11, "text": "fever", "labels": ["problem"]},  # UTF-16 units
    }
    with caplog.at_level(logging.WARNING):
        (doc,) = ls.task_documents(_task(region, text=text))
    assert doc.covered(doc.spans[0]) == "fever" and "UTF-16" in caplog.text


def test_line_breaks_in_value_text_as_label_studio_writes_them(caplog: pytest.LogCaptureFixture) -> None:
    text = "Chest\npain today"
    region = {
        "id": "a",
        "type": "labels",
        "value": {"start": 0, "end": 10, "text": "Chest\\npain", "labels": ["problem"]},
    }
    with caplog.at_level(logging.WARNING):
        (doc,) = ls.task_documents(_task(region, text=text))
    assert doc.spans[0].key == ("problem", 0, 10) and not caplog.text


# --- relations, annotators, malformed input -------------------------------------------------------


def test_relation_direction() -> None:
    regions = (_region("n", "negation", "denies"), _region("p", "problem", "pain"))
    for rel in (_rel("p", "n"), _rel("n", "p", "left"), _rel("n", "p", "bi"), _rel("n", "p", "right", [])):
        (doc,) = ls.task_documents(_task(*regions, rel))
        assert [(r.head, r.tail, r.label) for r in doc.relations] == [("p", "n", "hasAttr")]


def test_cancelled_and_several_annotators() -> None:
    task = _task(_region("p", "problem", "pain"), completed_by={"id": 3, "email": "a@x.org"})
    task["annotations"] += [
        {"id": 71, "result": [], "completed_by": 4},
        {"id": 72, "result": [_region("p", "problem", "pain")], "was_cancelled": True},
    ]
    docs = ls.task_documents(task)
    assert [(d.meta["annotation_id"], d.meta["annotator"]) for d in docs] == [(70, "a@x.org"), (71, "4")]
    assert docs[0].spans[0].source == "a@x.org"


def test_labels_outside_the_schema_are_kept_for_the_store() -> None:
    task = _task(
        _region("t", "tumour", "pain"),
        _region("n", "negation", "denies"),
        _rel("t", "n"),
        _rel("n", "t", labels=["negates"]),
    )
    (doc,) = ls.task_documents(task)
    assert [(s.id, s.label) for s in doc.spans] == [("t", "tumour"), ("n", "negation")]
    assert [(r.head, r.tail, r.label) for r in doc.relations] == [
        ("t", "n", "hasAttr"),
        ("n", "t", "negates"),
    ]
    known = doc.in_schema()  # what training sees
    assert [s.id for s in known.spans] == ["n"] and not known.relations
    back = ls.task_documents({**task, "annotations": [{"result": ls.document_results(doc)}]})[0]
    assert [(r.head, r.tail, r.label) for r in back.relations] == [
        (r.head, r.tail, r.label) for r in doc.relations
    ]
    with pytest.raises(FormatError, match=r"region \[t\] labels are not a list"):
        ls.task_documents(
            _task({"id": "t", "type": "labels", "value": {"start": 0, "end": 4, "labels": "pain"}})
        )


def test_bad_regions_name_the_task() -> None:
    with pytest.raises(DocumentError, match=r"task \[7\].*\[ghost\] points to no region"):
        ls.task_documents(_task(_region("p", "problem", "pain"), _rel("p", "ghost")))
    outside = {"id": "x", "type": "labels", "value": {"start": 60, "end": 99, "labels": ["problem"]}}
    with pytest.raises(DocumentError, match=r"task \[7\].*\[60, 99\]"):
        ls.task_documents(_task(outside))
    with pytest.raises(FormatError, match=r"task \[7\].*integer start"):
        ls.task_documents(_task({"id": "x", "type": "labels", "value": {"labels": ["problem"]}}))
    with pytest.raises(FormatError, match=r"task \[9\] has no text in data\[text\]"):
        ls.task_documents({"id": 9, "data": {"body": "x"}})


def test_malformed_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text('[{"data": {"text": "x"}},', encoding="utf-8")
    with pytest.raises(FormatError, match=r"bad\.json: malformed JSON at line 1"):
        ls.read(bad)
    bad.write_text('"tasks"', encoding="utf-8")
    with pytest.raises(FormatError, match="expected a JSON list"):
        ls.read(bad)
    bad.write_text(json.dumps([_task(_rel("a", "b"))]), encoding="utf-8")
    with pytest.raises(DocumentError, match=r"bad\.json: task \[7\]"):
        ls.read(bad)


def test_export_variants(tmp_path: Path) -> None:
    path = tmp_path / "export.json"
    single = {
        "id": 4,
        "data": {"text": TEXT},
        "predictions": [{"model_version": "v2", "result": [_region("p", "problem", "pain")]}],
    }
    path.write_text(json.dumps(single), encoding="utf-8")
    (doc,) = ls.read(path)
    assert doc.meta["ls_source"] == "predictions" and doc.spans[0].source == "v2"
    minimal = [
        {"id": 5, "text": TEXT, "label": [_region("p", "problem", "pain")["value"]], "annotation_id": 9}
    ]
    path.write_text(json.dumps(minimal), encoding="utf-8")
    (doc,) = ls.read(path)
    assert doc.id == "5" and doc.spans[0].key == ("problem", 21, 25) and doc.meta["annotation_id"] == 9


def test_unannotated_documents_stay_open_in_label_studio() -> None:
    assert ls.document_task(Document("n1", "text")) == {"data": {"text": "text", "doc_id": "n1"}}

"""UIMA CAS XMI: round trips over the shared corpus, UTF-16 offsets, INCEpTION requests, hostile XML."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from cassis import Cas, TypeSystem, load_cas_from_xmi, load_typesystem
from lxml import etree

from recommender.document import Document, Segment
from recommender.errors import DocumentError, FormatError
from recommender.formats import xmi

SYNTHETIC = ("predict_span_request.json", "predict_relation_request.json", "train_request.json")
DOCS_EXAMPLES = ("predict_request_example.json", "train_request_example.json")


def span_keys(doc: Document) -> list[tuple[str, int, int]]:
    return sorted(s.key for s in doc.spans)


def relation_keys(doc: Document) -> list[tuple[tuple[str, int, int], tuple[str, int, int]]]:
    return sorted((head.key, tail.key) for _, head, tail in doc.relation_pairs())


def cheap_segmentation(doc: Document) -> Document:
    """Whole-text sentence and whitespace tokens: the round trip is about annotations, not PyRuSH speed."""
    tokens = [Segment(m.start(), m.end()) for m in re.finditer(r"\S+", doc.text)]
    return replace(doc, sentences=[Segment(0, len(doc.text))], tokens=tokens)


@pytest.fixture(scope="module")
def generated_ts() -> TypeSystem:
    """The project type system as written to TypeSystem.xml, read back the way a consumer would."""
    return load_typesystem(xmi.project_typesystem().to_xml())


def requests(fixtures_dir: Path) -> list[tuple[str, str, str]]:
    """(name, typeSystem, xmi) of every document in the shared INCEpTION request fixtures."""
    out = []
    for folder, names in (("synthetic", SYNTHETIC), ("inception-docs", DOCS_EXAMPLES)):
        for name in names:
            body = json.loads((fixtures_dir / "inception" / folder / name).read_text(encoding="utf-8"))
            docs = body["documents"] if "documents" in body else [body["document"]]
            out += [(f"{folder}/{name}", body["typeSystem"], d["xmi"]) for d in docs]
    return out


# --- round trips -------------------------------------------------------------------------------
def test_every_mtsamples_note_round_trips(mtsamples_docs: list[Document], generated_ts: TypeSystem) -> None:
    assert len(mtsamples_docs) >= 80
    n_spans = n_relations = 0
    for gold in mtsamples_docs:
        doc = cheap_segmentation(gold)
        text = xmi.document_to_cas(doc, xmi.project_typesystem()).to_xmi()
        back = xmi.cas_to_document(load_cas_from_xmi(text, typesystem=generated_ts))
        assert back.text == gold.text, gold.id
        assert back.id == gold.id
        assert span_keys(back) == span_keys(gold), gold.id
        assert relation_keys(back) == relation_keys(gold), gold.id
        assert back.sentences == doc.sentences and back.tokens == doc.tokens
        fast = xmi.cas_to_document(xmi.XmiCas(text, generated_ts))  # the INCEpTION recommender's reader
        assert (fast.id, fast.text, fast.tokens, fast.sentences) == (
            back.id,
            back.text,
            back.tokens,
            back.sentences,
        )
        assert [s.key for s in fast.spans] == [s.key for s in back.spans], gold.id
        assert relation_keys(fast) == relation_keys(back), gold.id
        n_spans += len(gold.spans)
        n_relations += len(gold.relations)
    assert n_spans > 1000 and n_relations > 1000  # the corpus really was annotated


def test_write_then_read_a_folder(tmp_path: Path, emoji_doc: Document) -> None:
    other = Document("second", "No fever today.")
    neg, fever = other.add_span("negation", 0, 2), other.add_span("problem", 3, 8)
    other.add_relation(fever, neg)
    xmi.write([emoji_doc, other], tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["TypeSystem.xml", "emoji_note.xmi", "second.xmi"]
    docs = {d.id: d for d in xmi.read(tmp_path)}
    assert span_keys(docs["emoji_note"]) == span_keys(emoji_doc)
    assert relation_keys(docs["second"]) == relation_keys(other)
    # Written without segmentation: document_to_cas segmented the note itself.
    assert docs["second"].sentences and docs["second"].tokens
    assert [d.id for d in xmi.read(tmp_path / "second.xmi")] == ["second"]


def test_read_needs_the_type_system(tmp_path: Path, emoji_doc: Document) -> None:
    xmi.write([cheap_segmentation(emoji_doc)], tmp_path)
    (tmp_path / "TypeSystem.xml").unlink()
    with pytest.raises(FormatError, match=r"TypeSystem\.xml"):
        xmi.read(tmp_path)


# --- offsets -----------------------------------------------------------------------------------
def utf16(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le")) // 2


def test_emoji_offsets_are_utf16_in_xml_and_code_points_in_python(emoji_doc: Document) -> None:
    doc = cheap_segmentation(emoji_doc)
    text = xmi.document_to_cas(doc).to_xmi()
    root = etree.fromstring(text.encode("utf-8"))
    custom = "{http:///webanno/custom.ecore}"
    written = sorted(
        (e.get("label"), int(e.get("begin")), int(e.get("end"))) for e in root.iter(f"{custom}ClinicalEntity")
    )
    expected = sorted((s.label, utf16(doc.text, s.begin), utf16(doc.text, s.end)) for s in doc.spans)
    assert written == expected
    assert written != span_keys(doc)  # the note's emoji really shift the UTF-16 offsets
    by_id = {e.get("{http://www.omg.org/XMI}id"): e for e in root.iter(f"{custom}ClinicalEntity")}
    for rel in root.iter(f"{custom}HasAttr"):
        dependent = by_id[rel.get("Dependent")]
        assert (rel.get("begin"), rel.get("end")) == (dependent.get("begin"), dependent.get("end"))

    back = xmi.cas_to_document(xmi.load_cas(text, xmi.project_typesystem()))
    assert span_keys(back) == span_keys(doc)
    assert relation_keys(back) == relation_keys(doc)
    assert [back.covered(s) for s in back.sort().spans] == [doc.covered(s) for s in doc.sort().spans]


# --- INCEpTION requests ------------------------------------------------------------------------
def test_inception_request_fixtures_load(fixtures_dir: Path) -> None:
    found = requests(fixtures_dir)
    assert len(found) == 6
    for name, typesystem, text in found:
        ts = xmi.load_typesystem_xml(typesystem, source=name)
        doc = xmi.cas_to_document(xmi.load_cas(text, ts, source=name))
        assert doc.text and doc.sentences and doc.tokens, name
        doc.validate()


def test_synthetic_relation_request_content(fixtures_dir: Path) -> None:
    body = json.loads((fixtures_dir / "inception/synthetic/predict_relation_request.json").read_text())
    ts = xmi.load_typesystem_xml(body["typeSystem"])
    doc = xmi.cas_to_document(xmi.load_cas(body["document"]["xmi"], ts))
    assert doc.id == "note0"  # CASMetadata.sourceDocumentName "note0.txt"
    assert len(doc.sentences) == 3 and len(doc.tokens) == 20  # INCEpTION's own segmentation is kept
    assert ("problem", 23, 33) in span_keys(doc) and doc.text[23:33] == "chest pain"
    assert relation_keys(doc) == [(("problem", 23, 33), ("severity", 16, 22))]


def test_predicted_spans_carry_their_score(fixtures_dir: Path) -> None:
    folder = fixtures_dir / "inception/synthetic"
    request = json.loads((folder / "predict_span_request.json").read_text())
    response = json.loads((folder / "predict_span_response.json").read_text())
    ts = xmi.load_typesystem_xml(request["typeSystem"])
    doc = xmi.cas_to_document(xmi.load_cas(response["document"], ts))
    scored = [s for s in doc.spans if s.score is not None]
    assert scored and all(0.0 <= s.score <= 1.0 for s in scored)


def snapshot(cas: Cas) -> set[tuple[Any, ...]]:
    """Every annotation with its primitive feature values and the offsets of what it points to."""
    out = set()
    for fs in cas.select_all_fs():
        values = []
        for f in fs.type.all_features:
            if f.name == "sofa":
                continue
            v = fs.get(f.name)
            values.append((f.name, (v.begin, v.end) if hasattr(v, "begin") else v))
        out.add((fs.type.name, fs.xmiID, tuple(values)))
    return out


def test_add_document_annotations_leaves_the_rest_untouched(fixtures_dir: Path) -> None:
    body = json.loads((fixtures_dir / "inception/synthetic/predict_relation_request.json").read_text())
    ts = xmi.load_typesystem_xml(body["typeSystem"])
    cas = xmi.load_cas(body["document"]["xmi"], ts)
    before = snapshot(cas)
    n_spans = len(cas.select(xmi.DEFAULT_LAYERS.span_type))
    n_relations = len(cas.select(xmi.DEFAULT_LAYERS.relation_type))

    doc = xmi.cas_to_document(cas)
    index = {s.key: s for s in doc.spans}
    pain, temporal = index[("problem", 23, 33)], index[("temporal", 34, 49)]
    chest = doc.add_span("bodyloc", 23, 28, score=0.9)
    doc.add_relation(pain, chest, score=0.8)
    doc.add_relation(pain, temporal, score=0.7)
    old = {fs.xmiID for fs in cas.select(xmi.DEFAULT_LAYERS.span_type)} | {
        fs.xmiID for fs in cas.select(xmi.DEFAULT_LAYERS.relation_type)
    }
    xmi.add_document_annotations(cas, doc)

    assert before <= snapshot(cas)  # nothing removed or changed
    spans = cas.select(xmi.DEFAULT_LAYERS.span_type)
    relations = cas.select(xmi.DEFAULT_LAYERS.relation_type)
    assert len(spans) == n_spans + 1  # accepted spans are reused, not duplicated
    assert len(relations) == n_relations + 2  # the accepted severity relation too
    new = [fs for fs in relations if fs.xmiID not in old]
    assert sorted((fs.Dependent.begin, fs.Dependent.end, fs.label_score) for fs in new) == [
        (23, 28, 0.8),
        (34, 49, 0.7),
    ]
    assert all((fs.begin, fs.end) == (fs.Dependent.begin, fs.Dependent.end) for fs in new)
    assert [fs.label_score for fs in spans if fs.xmiID not in old] == [0.9]

    again = xmi.cas_to_document(xmi.load_cas(cas.to_xmi(), ts))
    assert span_keys(again) == span_keys(doc)
    assert relation_keys(again) == relation_keys(doc)


def test_add_document_annotations_refuses_another_text(emoji_doc: Document) -> None:
    cas = xmi.document_to_cas(cheap_segmentation(emoji_doc))
    with pytest.raises(DocumentError, match="differs"):
        xmi.add_document_annotations(cas, replace(emoji_doc, text=emoji_doc.text + " "))


# --- type systems without the layers, labels outside the schema --------------------------------
def test_type_system_without_the_layers_gives_an_empty_document(fixtures_dir: Path) -> None:
    body = json.loads((fixtures_dir / "inception/inception-docs/predict_request_example.json").read_text())
    ts = xmi.load_typesystem_xml(body["typeSystem"])
    assert not ts.contains_type(xmi.DEFAULT_LAYERS.span_type)
    doc = xmi.cas_to_document(xmi.load_cas(body["document"]["xmi"], ts))
    assert doc.text.startswith("Joe waited") and doc.spans == [] and doc.relations == []
    assert doc.sentences  # segmented here since the CAS had no Sentence annotations


def test_span_layer_without_its_feature_is_a_format_error() -> None:
    ts = TypeSystem()
    ts.create_type(xmi.DEFAULT_LAYERS.span_type)
    cas = Cas(typesystem=ts)
    cas.sofa_string = "Chest pain."
    with pytest.raises(FormatError, match="no feature \\[label\\]"):
        xmi.cas_to_document(cas)


def test_labels_outside_the_schema_are_kept_and_unlabelled_spans_skipped_without_logging_text(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ts = xmi.project_typesystem()
    cas = Cas(typesystem=ts)
    cas.sofa_string = "Secretname reports chest pain."
    span_type, rel_type = (
        ts.get_type(xmi.DEFAULT_LAYERS.span_type),
        ts.get_type(xmi.DEFAULT_LAYERS.relation_type),
    )
    odd, pain = span_type(begin=0, end=10, label="person"), span_type(begin=19, end=29, label="problem")
    blank = span_type(begin=11, end=18)
    cas.add_all(
        [
            odd,
            pain,
            blank,
            rel_type(begin=0, end=10, Governor=pain, Dependent=odd, label="reportedBy"),
            rel_type(begin=11, end=18, Governor=pain, Dependent=blank, label="hasAttr"),
        ]
    )
    with caplog.at_level(logging.WARNING):
        doc = xmi.cas_to_document(cas, doc_id="n1")
    assert span_keys(doc) == [("person", 0, 10), ("problem", 19, 29)]
    assert [(doc.span(r.head).label, doc.span(r.tail).label, r.label) for r in doc.relations] == [
        ("problem", "person", "reportedBy")
    ]
    known = doc.in_schema()  # what training sees
    assert span_keys(known) == [("problem", 19, 29)] and known.relations == []
    assert "without a label" in caplog.text and "missing span" in caplog.text
    assert "Secretname" not in caplog.text and "person" not in caplog.text


# --- hostile and malformed input ---------------------------------------------------------------
XXE = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><x>&e;</x>'
BILLION_LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE lolz [<!ENTITY lol "lol">'
    + "".join(
        f'<!ENTITY lol{i} "{("&lol" + str(i - 1) + ";") * 10 if i > 1 else "&lol;" * 10}">'
        for i in range(1, 10)
    )
    + "]><lolz>&lol9;</lolz>"
)
BAD_XMI = {
    "xxe": XXE,
    "billion laughs": BILLION_LAUGHS,
    "truncated": '<?xml version="1.0"?><xmi:XMI xmlns:xmi="http://www.omg.org/XMI"><cas:Sofa',
    "empty": "",
    "not xml": "hello",
    "wrong root": "<typeSystemDescription/>",
    "unknown type": '<xmi:XMI xmlns:xmi="http://www.omg.org/XMI" xmlns:x="http:///x/y.ecore" '
    'xmi:version="2.0"><x:Unknown xmi:id="2"/></xmi:XMI>',
    "no namespace": '<xmi:XMI xmlns:xmi="http://www.omg.org/XMI" xmi:version="2.0">'
    '<foo xmi:id="2"/></xmi:XMI>',
}


READERS = {"cassis": xmi.load_cas, "lxml": xmi.XmiCas}


@pytest.mark.parametrize("reader", sorted(READERS))
@pytest.mark.parametrize("name", sorted(BAD_XMI))
def test_bad_xmi_is_a_one_line_format_error(name: str, reader: str) -> None:
    with pytest.raises(FormatError) as err:
        READERS[reader](BAD_XMI[name], xmi.project_typesystem(), source=f"{name}.xmi")
    assert "\n" not in str(err.value) and str(err.value).startswith(f"{name}.xmi: ")


@pytest.mark.parametrize("text", [XXE, BILLION_LAUGHS, "<typeSystemDescription", BAD_XMI["unknown type"]])
def test_bad_type_system_is_a_format_error(text: str) -> None:
    with pytest.raises(FormatError):
        xmi.load_typesystem_xml(text.encode("utf-8"))


UNREADABLE = (
    '<xmi:XMI xmlns:xmi="http://www.omg.org/XMI" xmlns:cas="http:///uima/cas.ecore" '
    'xmlns:s="http:///de/tudarmstadt/ukp/dkpro/core/api/segmentation/type.ecore" xmi:version="2.0">'
    '<s:Token xmi:id="2" sofa="1" begin="{begin}" end="3"/>'
    '<cas:Sofa xmi:id="1" sofaNum="1" sofaID="_InitialView" sofaString="abc"/>'
    '<cas:View sofa="1" members="2"/></xmi:XMI>'
)


@pytest.mark.parametrize("reader", sorted(READERS))
def test_unreadable_offsets_are_a_format_error(reader: str) -> None:
    assert xmi.cas_to_document(READERS[reader](UNREADABLE.format(begin=0), xmi.project_typesystem())).tokens
    with pytest.raises(FormatError):
        xmi.cas_to_document(READERS[reader](UNREADABLE.format(begin="x"), xmi.project_typesystem()))


@pytest.mark.parametrize("reader", sorted(READERS))
def test_dtd_is_refused_before_parsing(reader: str) -> None:
    # Without the check lxml would expand the internal entity; the refusal names the DOCTYPE.
    harmless = '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e "x">]><x>&e;</x>'
    with pytest.raises(FormatError, match="DOCTYPE"):
        READERS[reader](harmless, xmi.project_typesystem())


def _annotations(cas: Cas, type_name: str) -> list[tuple]:
    """Every annotation of a type with its features; references as the referenced span's offsets."""
    out = []
    for fs in cas.select(type_name):
        values = []
        for f in fs.type.all_features:
            if f.name in ("sofa", "begin", "end"):
                continue
            v = fs.get(f.name)
            values.append((f.name, (v.begin, v.end) if hasattr(v, "begin") else v))
        out.append((fs.begin, fs.end, tuple(values)))
    return sorted(out, key=repr)


def _xmi_cas_pair(emoji_doc: Document) -> tuple[str, str, Document]:
    """A request CAS (with non-BMP text) written by cassis, its type system, and the document in it."""
    layers = xmi.DEFAULT_LAYERS
    ts = xmi.project_typesystem()
    for name in (layers.span_type, layers.relation_type):
        ts.create_feature(ts.get_type(name), xmi.PREDICTED, "uima.cas.Boolean")
        ts.create_feature(ts.get_type(name), "label_score", "uima.cas.Double")
    given = replace(cheap_segmentation(emoji_doc), relations=emoji_doc.relations[:1])
    return xmi.document_to_cas(given, ts).to_xmi(), ts.to_xml(), given


def test_xmi_cas_reads_what_cassis_reads(emoji_doc: Document, fixtures_dir: Path) -> None:
    """Text, segmentation, spans, relations, scores and the document id, from INCEpTION's requests and a
    note with characters outside the BMP: the lxml reader and cassis give the same document."""
    request, ts_xml, _ = _xmi_cas_pair(emoji_doc)
    cases = [("emoji", ts_xml, request), *requests(fixtures_dir)]
    folder = fixtures_dir / "inception/synthetic"
    cases.append(
        (
            "span response",
            json.loads((folder / "predict_span_request.json").read_text())["typeSystem"],
            json.loads((folder / "predict_span_response.json").read_text())["document"],
        )
    )
    for name, typesystem, text in cases:
        ts = xmi.load_typesystem_xml(typesystem)
        ours, theirs = xmi.XmiCas(text, ts), xmi.load_cas(text, ts)
        a, b = xmi.cas_to_document(ours), xmi.cas_to_document(theirs)
        assert (a.id, a.text, a.sentences, a.tokens) == (b.id, b.text, b.sentences, b.tokens), name
        assert [(s.key, s.score) for s in a.spans] == [(s.key, s.score) for s in b.spans], name
        assert relation_keys(a) == relation_keys(b), name
        for type_name in (xmi.TOKEN, xmi.DEFAULT_LAYERS.span_type, xmi.DEFAULT_LAYERS.relation_type):
            if ts.contains_type(type_name):
                assert _annotations(ours, type_name) == _annotations(theirs, type_name), (name, type_name)
    assert any(s.score is not None for s in a.spans), "the span response carries scores"


def test_xmi_cas_writes_what_cassis_would(emoji_doc: Document) -> None:
    """New spans (offsets after non-BMP characters too) and a relation to an existing span, added with
    the lxml writer, read back exactly as the same additions made and serialised by cassis."""
    layers = xmi.DEFAULT_LAYERS
    request, ts_xml, given = _xmi_cas_pair(emoji_doc)
    ts = xmi.load_typesystem_xml(ts_xml)
    ours, theirs = xmi.XmiCas(request, ts), xmi.load_cas(request, ts)
    n = len(emoji_doc.text)
    for cas in (ours, theirs):
        existing = cas.select(layers.span_type)[0]
        added = []
        for begin, end, label in ((0, 2, "problem"), (n - 4, n, "test")):
            features = {"label": label, xmi.PREDICTED: True, "label_score": 0.8125}
            if cas is ours:
                added.append(ours.add(layers.span_type, begin, end, features))
            else:
                added.append(ts.get_type(layers.span_type)(begin=begin, end=end, **features))
                theirs.add(added[-1])
        features = {"Governor": added[0], "Dependent": existing, "label": "hasAttr", xmi.PREDICTED: True}
        if cas is ours:
            ours.add(layers.relation_type, existing.begin, existing.end, features)
        else:
            theirs.add(ts.get_type(layers.relation_type)(begin=existing.begin, end=existing.end, **features))

    written = ours.to_xmi()
    a, b = xmi.load_cas(written, ts), xmi.load_cas(theirs.to_xmi(), ts)
    for type_name in (layers.span_type, layers.relation_type, xmi.TOKEN, xmi.SENTENCE):
        assert _annotations(a, type_name) == _annotations(b, type_name), type_name
    assert len(a.select(layers.span_type)) == len(given.spans) + 2
    assert len(a.select(layers.relation_type)) == len(given.relations) + 1
    # Offsets in the XMI itself are UTF-16 code units, as UIMA counts them.
    spans = etree.fromstring(written.encode()).findall(".//{http:///webanno/custom.ecore}ClinicalEntity")
    utf16_len = len(emoji_doc.text.encode("utf-16-le")) // 2
    assert any(e.get("end") == str(utf16_len) for e in spans) and utf16_len > n

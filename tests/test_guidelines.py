"""The generated guideline artifacts: up to date, loadable, and faithful to the schema."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from recommender import guidelines
from recommender.cli import app
from recommender.errors import SchemaError
from recommender.formats import xmi
from recommender.schema import load_schema

CHECKED_IN = Path(__file__).resolve().parents[1] / "annotation_guidelines"


def test_checked_in_artifacts_are_up_to_date(tmp_path: Path) -> None:
    written = guidelines.write_artifacts(tmp_path)
    assert {p.relative_to(tmp_path) for p in written} == set(guidelines.artifacts())
    assert Path("schema.json") not in guidelines.artifacts()  # the source of truth is never overwritten
    for path in written:
        rel = path.relative_to(tmp_path)
        assert (CHECKED_IN / rel).read_bytes() == path.read_bytes(), f"{rel} is stale: run `kiwi schema`"


def test_kiwi_schema_command_writes_the_artifacts(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / guidelines.LABELSTUDIO_CONFIG).is_file()
    assert (tmp_path / guidelines.GUIDELINE).is_file()


def test_inception_type_system_loads_with_cassis() -> None:
    ts = xmi.load_typesystem_xml((CHECKED_IN / guidelines.INCEPTION_TYPESYSTEM).read_bytes())
    layers = xmi.DEFAULT_LAYERS
    span, relation = ts.get_type(layers.span_type), ts.get_type(layers.relation_type)
    assert span.get_feature(layers.span_feature).rangeType.name == "uima.cas.String"
    for name in (layers.governor, layers.dependent):
        assert relation.get_feature(name).rangeType.name == layers.span_type
    assert relation.get_feature(layers.relation_feature).rangeType.name == "uima.cas.String"
    # INCEpTION tells a type system file from a layer JSON file by this preamble.
    assert (CHECKED_IN / guidelines.INCEPTION_TYPESYSTEM).read_bytes().startswith(b"<?xml")


def test_labelstudio_config_lists_exactly_the_schema_labels(fixtures_dir: Path) -> None:
    schema = load_schema()
    root = ET.fromstring((CHECKED_IN / guidelines.LABELSTUDIO_CONFIG).read_text(encoding="utf-8"))
    labels = root.find("Labels")
    assert labels is not None
    assert [(e.get("value"), e.get("background")) for e in labels] == [
        (t.name, t.color) for t in schema.labels
    ]
    assert [e.get("value") for e in root.iter("Relation")] == [schema.relation]
    assert guidelines.labelstudio_config(schema) == (CHECKED_IN / guidelines.LABELSTUDIO_CONFIG).read_text()

    # Same shape as a config captured from a real Label Studio: same tags, same control attributes.
    real = ET.fromstring((fixtures_dir / "labelstudio" / "label_config.xml").read_text(encoding="utf-8"))
    assert [child.tag for child in root] == [child.tag for child in real]
    for tag in ("Relations", "Labels", "Text"):
        mine, theirs = root.find(tag), real.find(tag)
        assert mine is not None and theirs is not None
        assert mine.attrib == theirs.attrib
        assert {c.tag for c in mine} == {c.tag for c in theirs}


def test_tagsets_and_layers_follow_the_schema() -> None:
    schema = load_schema()
    labels = json.loads((CHECKED_IN / guidelines.INCEPTION_LABEL_TAGSET).read_text(encoding="utf-8"))
    relations = json.loads((CHECKED_IN / guidelines.INCEPTION_RELATION_TAGSET).read_text(encoding="utf-8"))
    assert [t["tag_name"] for t in labels["tags"]] == list(schema.label_names)
    assert all(t["tag_description"] for t in labels["tags"])
    assert [t["tag_name"] for t in relations["tags"]] == [schema.relation]

    span, relation = json.loads((CHECKED_IN / guidelines.INCEPTION_LAYERS).read_text(encoding="utf-8"))
    assert (span["name"], span["type"]) == (xmi.DEFAULT_LAYERS.span_type, "span")
    assert (relation["name"], relation["type"]) == (xmi.DEFAULT_LAYERS.relation_type, "relation")
    assert relation["attach_type"] == {"name": span["name"]}
    assert span["features"][0]["tag_set"] == labels
    assert relation["features"][0]["tag_set"] == relations
    assert span["overlap_mode"] == "ANY_OVERLAP"  # bodyloc/severity/course lie inside their entity


def test_inception_readme_names_both_recommenders() -> None:
    readme = (CHECKED_IN / guidelines.INCEPTION_README).read_text(encoding="utf-8")
    for url in ("http://HOST:PORT/inception/entities", "http://HOST:PORT/inception/relations"):
        assert url in readme
    assert "Training supported" in readme and "layers.json" in readme


def test_guideline_covers_every_label_and_pair() -> None:
    schema = load_schema()
    assert set(guidelines.NOTES) == set(schema.label_names)
    text = (CHECKED_IN / guidelines.GUIDELINE).read_text(encoding="utf-8")
    for t in schema.labels:
        assert f"### {t.display} (`{t.name}`)" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and line.endswith(" |")]
    assert sum(line.count("| yes") for line in table) == len(schema.pairs)


def test_worked_examples_are_checked_against_the_schema() -> None:
    schema = load_schema()
    bad_pair = guidelines.WorkedExample(
        text="Aspirin was given for pain.",
        spans=(("drug", "Aspirin"), ("bodyloc", "pain")),
        relations=(("Aspirin", "pain"),),
        note="",
    )
    with pytest.raises(SchemaError, match="not allowed"):
        guidelines._check_example(schema, bad_pair)
    missing = replace_text(bad_pair, "Nothing here.")
    with pytest.raises(SchemaError, match="not in its sentence"):
        guidelines._check_example(schema, missing)


def replace_text(example: guidelines.WorkedExample, text: str) -> guidelines.WorkedExample:
    return guidelines.WorkedExample(text, example.spans, example.relations, example.note)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def test_guideline_is_in_our_own_words(fixtures_dir: Path) -> None:
    source_path = fixtures_dir.parent / "reference" / "annotation_guideline_v1.1.txt"
    if not source_path.is_file():
        pytest.skip(f"{source_path} is absent")
    # The cited title is the only phrase we share on purpose.
    title = "annotation guidelines for main clinical entities and modifiers"
    source = words(source_path.read_text(encoding="utf-8").lower().replace(title, " "))
    ours = words((CHECKED_IN / guidelines.GUIDELINE).read_text(encoding="utf-8").lower().replace(title, " "))
    n = 8
    shared = {tuple(source[i : i + n]) for i in range(len(source) - n)} & {
        tuple(ours[i : i + n]) for i in range(len(ours) - n)
    }
    assert not shared, f"passages copied from the source guideline: {sorted(shared)[:3]}"


def test_the_guideline_data_files_refuse_what_yaml_would_misread() -> None:
    # Unquoted, YAML reads the negation example's "no" as False and a dosage "1" as a number.
    with pytest.raises(SchemaError, match="quote"):
        guidelines._pairs([["negation", False]], "worked_examples.yaml example 3 spans")
    with pytest.raises(SchemaError, match="2 items"):
        guidelines._pairs([["negation", "no", "extra"]], "worked_examples.yaml example 3 spans")
    with pytest.raises(SchemaError, match="exactly the keys include, exclude, examples"):
        guidelines._fields({"include": []}, ("include", "exclude", "examples"), "label_notes.yaml problem")
    assert guidelines.worked_examples()[2].spans[4] == ("negation", "no")  # quoted in the file, read as text

"""`kiwi evaluate` (files and --model) and `kiwi compare`: JSON on stdout, tables, one-line errors."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import pytest
from support import run_kiwi
from test_scorer import perturb
from typer.testing import CliRunner

from recommender.cli import app
from recommender.document import Document
from recommender.evaluation import evaluate
from recommender.extractors import register
from recommender.extractors.base import Extractor, ModelInfo
from recommender.formats import brat, jsonl
from recommender.schema import load_schema

ORACLE = "test.oracle.v1"


@register(ORACLE)
class OracleExtractor(Extractor):
    """Answers with the annotations it was saved with, minus every second modifier, and checks that it
    is given what the paper's protocol says: bare text, or the gold main entities only."""

    def __init__(self, gold: list[Document], info: ModelInfo) -> None:
        self.gold = {d.id: d for d in gold}
        self.info = info

    def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
        schema = load_schema()
        out = []
        for d in docs:
            if entities_given:
                assert d.spans and all(schema.is_entity(s.label) for s in d.spans) and not d.relations
            else:
                assert not d.spans and not d.relations
            g = self.gold[d.id]
            modifiers = [s for s in g.spans if schema.is_modifier(s.label)][::2]
            entities = [replace(s) for s in (d.spans if entities_given else g.entities())]
            kept = {s.id for s in entities} | {s.id for s in modifiers}
            rels = [replace(r) for r in g.relations if r.head in kept and r.tail in kept]
            spans = entities + [replace(s, source=self.version) for s in modifiers]
            out.append(replace(d, spans=spans, relations=rels))
        return out

    def save(self, folder: Path) -> None:
        self.info.save(folder)
        jsonl.write(list(self.gold.values()), folder / "gold.jsonl")

    @classmethod
    def load(cls, folder: Path) -> OracleExtractor:
        return cls(jsonl.read(folder / "gold.jsonl"), ModelInfo.load(folder))


@pytest.fixture(scope="module")
def pred_dir(mtsamples_docs: list[Document], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pred")
    brat.write(perturb(mtsamples_docs), out)
    return out


def test_evaluate_brat_against_brat_json(
    mtsamples_dir: Path, mtsamples_docs: list[Document], pred_dir: Path
) -> None:
    run = run_kiwi("evaluate", str(mtsamples_dir), str(pred_dir), "--json", "--resamples", "200")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)  # stdout holds the JSON and nothing else
    expected = evaluate(mtsamples_docs, brat.read(pred_dir), resamples=200).to_dict()
    assert got == json.loads(json.dumps(expected))
    assert set(got) == {"ner", "re", "spans", "documents", "drops"} and got["documents"] == 96
    assert got["drops"] == {}, "predictions read from files have no model output to drop"
    assert 0.5 < got["ner"]["exact"]["f1"] < got["ner"]["relaxed"]["f1"] < 1.0
    lo, hi = got["re"]["exact"]["ci"]["f1"]
    assert lo < got["re"]["exact"]["f1"] < hi
    assert set(got["spans"]["per_type"]["bodyloc"]) == {"exact", "relaxed"}


def test_evaluate_table(sample_dir: Path) -> None:
    run = run_kiwi("evaluate", str(sample_dir), str(sample_dir), "--format", "brat", "--resamples", "50")
    assert run.returncode == 0, run.stderr
    assert "relaxed" in run.stdout and "per type" in run.stdout and "problem-negation" in run.stdout
    assert "1.000" in run.stdout and "{" not in run.stdout


def test_bad_input_is_one_line_and_exit_2(sample_dir: Path, tmp_path: Path) -> None:
    missing = run_kiwi("evaluate", str(sample_dir), str(tmp_path / "nowhere"), "--json")
    assert missing.returncode == 2 and missing.stdout == ""
    assert str(tmp_path / "nowhere") in missing.stderr and "Traceback" not in missing.stderr
    assert len(missing.stderr.strip().splitlines()) <= 2  # the "read N notes" line, then the error

    unknown = run_kiwi("evaluate", str(sample_dir), str(sample_dir), "--format", "docx")
    assert unknown.returncode == 2 and "[docx]" in unknown.stderr and "Traceback" not in unknown.stderr
    assert len(unknown.stderr.strip().splitlines()) == 1

    alone = run_kiwi("evaluate", str(sample_dir))
    assert alone.returncode == 2 and "GOLD and PRED" in alone.stderr

    other = tmp_path / "other"
    docs = brat.read(sample_dir)
    brat.write(docs[:-1], other)
    partial = run_kiwi("evaluate", str(sample_dir), str(other))
    assert partial.returncode == 2 and f"[{docs[-1].id}]" in partial.stderr


def test_evaluate_model_gives_gold_entities_for_re(sample_dir: Path, tmp_path: Path) -> None:
    gold = brat.read(sample_dir)
    OracleExtractor(gold, ModelInfo(extractor=ORACLE, version="oracle-1")).save(tmp_path / "model")
    run = CliRunner().invoke(
        app, ["evaluate", "--model", str(tmp_path / "model"), str(sample_dir), "--json", "--batch-size", "3"]
    )
    assert run.exit_code == 0, run.output
    got = json.loads(run.stdout)
    assert got["ner"]["exact"]["f1"] == 1.0
    # Every second modifier is dropped: recall falls, precision stays perfect.
    schema = load_schema()
    kept = [{s.id for s in d.modifiers(schema)[::2]} for d in gold]
    n_spans = sum(len(d.entities(schema)) + len(k) for d, k in zip(gold, kept, strict=True))
    n_rels = sum(r.tail in k for d, k in zip(gold, kept, strict=True) for r in d.relations)
    assert (got["spans"]["exact"]["tp"], got["spans"]["exact"]["fp"]) == (n_spans, 0)
    assert (got["re"]["exact"]["tp"], got["re"]["exact"]["fp"]) == (n_rels, 0)
    assert 0 < got["re"]["exact"]["recall"] < 1.0
    assert got["speed"]["seconds_per_note"] > 0 and got["speed"]["batch_size"] == 3
    assert got["documents"] == len(gold)


def test_evaluate_model_needs_only_gold(sample_dir: Path, tmp_path: Path) -> None:
    run = CliRunner().invoke(app, ["evaluate", "--model", str(tmp_path), str(sample_dir), str(sample_dir)])
    assert run.exit_code != 0 and "only GOLD" in str(run.exception)


def test_compare(mtsamples_dir: Path, mtsamples_docs: list[Document], pred_dir: Path, tmp_path: Path) -> None:
    brat.write(perturb(mtsamples_docs, rate=0.4, seed=9), tmp_path / "worse")
    run = run_kiwi("compare", str(mtsamples_dir), str(pred_dir), str(tmp_path / "worse"), "--json")
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert set(got) == {"ner", "re", "spans"}
    ner = got["ner"]["exact"]
    assert ner["f1_a"] > ner["f1_b"] and ner["p_value"] < 0.001 and ner["resamples"] == 1000


def test_compare_runs_model_folders_as_evaluate_does(sample_dir: Path, tmp_path: Path) -> None:
    """A model folder on either side is predicted on GOLD (RE with gold entities given)."""
    gold = brat.read(sample_dir)
    OracleExtractor(gold, ModelInfo(extractor=ORACLE, version="oracle-1")).save(tmp_path / "model")
    brat.write(perturb(gold, rate=0.5, seed=3), tmp_path / "worse")
    args = ["compare", str(sample_dir), str(tmp_path / "model"), str(tmp_path / "worse"), "--json"]
    run = CliRunner().invoke(app, [*args, "--resamples", "200"])
    assert run.exit_code == 0, run.output
    got = json.loads(run.stdout)
    evaluated = CliRunner().invoke(
        app, ["evaluate", "--model", str(tmp_path / "model"), str(sample_dir), "--json"]
    )
    expected = json.loads(evaluated.stdout)
    for task in ("ner", "re", "spans"):
        assert got[task]["exact"]["f1_a"] == pytest.approx(expected[task]["exact"]["f1"])
    assert got["ner"]["exact"]["f1_a"] == 1.0 > got["ner"]["exact"]["f1_b"]

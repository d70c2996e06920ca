"""Inter-annotator agreement: measures against reference implementations and published examples,
hand-computed reports, the three input tools, the CLI, and the HTML report in headless Chromium."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import krippendorff
import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score
from support import chromium, chromium_screenshot, run_kiwi
from test_scorer import perturb

from recommender.agreement import add_model_rater, agreement_report, load_raters
from recommender.agreement import measures as m
from recommender.agreement.render import write_report
from recommender.document import Document
from recommender.errors import ConfigError, DocumentError
from recommender.evaluation import evaluate
from recommender.extractors.base import Extractor, ModelInfo
from recommender.formats import brat, labelstudio, xmi

# --- measures ------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_cohen_kappa_matches_scikit_learn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 5, 400)
    b = np.where(rng.random(400) < 0.6, a, rng.integers(0, 5, 400))
    assert m.cohen_kappa(a, b) == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_nominal_alpha_matches_krippendorff_package(seed: int) -> None:
    rng = np.random.default_rng(seed)
    truth = rng.integers(0, 4, 300)
    values = np.stack([np.where(rng.random(300) < 0.7, truth, rng.integers(0, 4, 300)) for _ in range(3)])
    values[rng.random(values.shape) < 0.1] = m.MISSING  # missing data is allowed
    expected = krippendorff.alpha(
        reliability_data=np.where(values < 0, np.nan, values).astype(float), level_of_measurement="nominal"
    )
    assert m.krippendorff_alpha(values, 4) == pytest.approx(expected, abs=1e-12)


def test_fleiss_kappa_published_example() -> None:
    # Fleiss (1971) as worked on Wikipedia: 10 subjects, 14 raters, 5 categories, kappa = 0.210.
    table = [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
    values = np.array([[c for c, n in enumerate(row) for _ in range(n)] for row in table]).T
    assert m.fleiss_kappa(values, 5) == pytest.approx(0.2099, abs=1e-4)


def test_fleiss_equals_scott_pi_for_two_raters() -> None:
    a = np.array([0, 0, 1, 1, 2, 2, 0, 1])
    b = np.array([0, 1, 1, 1, 2, 0, 0, 1])
    # Scott's pi by hand: po = 6/8; pooled proportions 6/16, 7/16, 3/16.
    pe = (6 / 16) ** 2 + (7 / 16) ** 2 + (3 / 16) ** 2
    assert m.fleiss_kappa(np.stack([a, b]), 3) == pytest.approx((6 / 8 - pe) / (1 - pe))


def test_unitizing_alpha_krippendorff_2004_example() -> None:
    # Krippendorff (2004: 254), as in DKPro Statistics' tests: continuum [150, 450), shifted to 0.
    c = [[(75, 145), (220, 250)], [(70, 150), (205, 225), (250, 270)]]
    k = [[(30, 90), (150, 200)], [(30, 90), (150, 200)]]
    d_o, d_e = m.unitizing_category([(c, 300)])
    assert (d_o, d_e) == (pytest.approx(0.0144, abs=1e-4), pytest.approx(0.0532, abs=1e-4))
    assert m.unitizing_category([(k, 300)])[1] == pytest.approx(0.0490, abs=1e-4)
    overall, per = m.unitizing_alpha({"c": [(c, 300)], "k": [(k, 300)]})
    assert per["c"] == pytest.approx(0.7286, abs=1e-4) and per["k"] == 1.0
    assert overall == pytest.approx(0.8591, abs=5e-4)


def test_drop_overlaps_keeps_the_longest_first() -> None:
    assert m.drop_overlaps([(5, 8), (0, 10), (10, 12), (11, 15)]) == [(0, 10), (10, 12)]


# --- reports -------------------------------------------------------------------------------------

TEXT = "No chest pain. Took aspirin daily."


def annotated(
    doc_id: str, spans: Sequence[tuple[str, str]], rels: Sequence[tuple[int, int]] = ()
) -> Document:
    doc = Document(doc_id, TEXT)
    made = []
    for label, phrase in spans:
        b = TEXT.index(phrase)
        made.append(doc.add_span(label, b, b + len(phrase)))
    for h, t in rels:
        doc.add_relation(made[h], made[t])
    return doc


def test_hand_computed_two_raters() -> None:
    a = annotated("n1", [("problem", "chest pain"), ("negation", "No"), ("drug", "aspirin")], [(0, 1)])
    b = annotated("n1", [("problem", "pain"), ("negation", "No"), ("treatment", "aspirin")], [(0, 1)])
    report = agreement_report({"a": [a], "b": [b]}, resamples=50).to_dict()
    pair = report["pairs"][0]
    # Entities: "chest pain" vs "pain" (boundary), drug vs treatment (type): no exact match.
    assert pair["ner"]["exact"]["f1"] == 0.0
    assert (pair["ner"]["relaxed"]["tp"], pair["ner"]["relaxed"]["fp"]) == (1, 1)
    assert pair["modifiers"]["exact"]["f1"] == 1.0
    # The relation's head differs in its boundary: relaxed match only.
    assert (pair["re"]["exact"]["f1"], pair["re"]["relaxed"]["f1"]) == (0.0, 1.0)
    # A relation whose ends match relaxed is not listed again: its head boundary already is.
    assert sorted(d["kind"] for d in report["disagreements"]) == ["boundary", "type"]
    no_rel = replace(b, relations=[])
    listed = agreement_report({"a": [a], "b": [no_rel]}, resamples=20).disagreements
    assert [d["kind"] for d in listed if d["kind"].startswith("relation")] == ["relation_only_a"]
    confusion = report["confusion"]["entities"]
    labels = confusion["labels"]
    assert confusion["matrix"][labels.index("drug")][labels.index("treatment")] == 1
    assert confusion["matrix"][labels.index("problem")][labels.index("problem")] == 1
    assert report["fleiss_kappa"] is None  # two raters: Cohen's kappa only


def test_identical_raters_agree_perfectly() -> None:
    a = annotated("n1", [("problem", "chest pain"), ("negation", "No"), ("drug", "aspirin")], [(0, 1)])
    report = agreement_report({"a": [a], "b": [replace(a)], "c": [replace(a)]}, resamples=20).to_dict()
    assert all(p["spans"]["exact"]["f1"] == 1.0 for p in report["pairs"])
    assert all(p["cohen_kappa"]["entities"]["value"] == 1.0 for p in report["pairs"])
    assert report["fleiss_kappa"]["entities"]["value"] == 1.0
    assert report["krippendorff_alpha"]["modifiers"]["value"] == 1.0
    assert report["unitizing_alpha"]["all"] == 1.0 and report["disagreements"] == []


def test_bad_rater_sets() -> None:
    a = annotated("n1", [("problem", "chest pain")])
    with pytest.raises(ConfigError, match="at least two raters"):
        agreement_report({"a": [a]})
    with pytest.raises(DocumentError, match=r"\[n1\].*\[b\]"):
        agreement_report({"a": [a], "b": [replace(a, text=TEXT + " more")]})


@pytest.fixture(scope="module")
def three_raters(mtsamples_docs: list[Document]) -> dict[str, list[Document]]:
    docs = mtsamples_docs[:12]
    return {"alice": docs, "bob": perturb(docs, 0.15, 1), "carol": perturb(docs, 0.25, 2)[:-2]}


@pytest.fixture(scope="module")
def report(three_raters: dict[str, list[Document]]) -> dict:
    return agreement_report(three_raters, resamples=200).to_dict()


def test_pairwise_f1_is_the_scorer(three_raters: dict[str, list[Document]], report: dict) -> None:
    bob_carol = next(p for p in report["pairs"] if (p["a"], p["b"]) == ("bob", "carol"))
    carol_ids = {d.id for d in three_raters["carol"]}
    scored = evaluate(
        [d for d in three_raters["bob"] if d.id in carol_ids], three_raters["carol"], resamples=10
    )
    for task in ("ner", "re", "spans"):
        for mode in ("exact", "relaxed"):
            assert bob_carol[task][mode]["f1"] == scored.task(task).mode(mode).f1
    assert bob_carol["documents"] == 10


def test_report_measures_and_intervals(three_raters: dict[str, list[Document]], report: dict) -> None:
    assert report["raters"] == ["alice", "bob", "carol"] and report["documents"] == 12
    for layer in ("entities", "modifiers"):
        for block in (report["fleiss_kappa"][layer], report["krippendorff_alpha"][layer]):
            lo, hi = block["ci"]
            assert 0.3 < lo < block["value"] < hi < 1.0
        for p in report["pairs"]:
            assert p["cohen_kappa"][layer]["ci"][0] < p["cohen_kappa"][layer]["value"]
    # The less perturbed annotator agrees better with the original.
    f1 = {(p["a"], p["b"]): p["spans"]["exact"]["f1"] for p in report["pairs"]}
    assert f1["alice", "bob"] > f1["alice", "carol"] > f1["bob", "carol"]
    assert report["unitizing_alpha"]["documents"] == 10
    assert 0.3 < report["unitizing_alpha"]["all"] < 1.0
    assert len(report["per_document"]) == 12 and report["per_document"][-1]["raters"] == ["alice", "bob"]
    again = agreement_report(three_raters, resamples=200).to_dict()
    assert again["krippendorff_alpha"] == report["krippendorff_alpha"]  # seeded


def test_json_without_text_hides_note_text(three_raters: dict[str, list[Document]]) -> None:
    rep = agreement_report(three_raters, resamples=20)
    public = json.dumps(rep.to_dict(with_text=False))
    full = json.dumps(rep.to_dict())
    sample = rep.disagreements[0]["context"]["mention"]
    assert '"context"' in full and '"context"' not in public and '"text"' not in public
    assert len(sample) > 2


def test_model_as_one_more_rater() -> None:
    class Echo(Extractor):
        """Predicts 'chest pain' as a problem wherever it occurs."""

        name = "test.echo"
        info = ModelInfo(extractor="test.echo", version="echo-1")

        def predict(self, docs: Sequence[Document], *, entities_given: bool = False) -> list[Document]:
            out = []
            for d in docs:
                doc = replace(d, spans=[], relations=[])
                b = d.text.find("chest pain")
                doc.add_span("problem", b, b + len("chest pain"), source=self.version)
                out.append(doc)
            return out

        def save(self, folder: Path) -> None:
            raise NotImplementedError

        @classmethod
        def load(cls, folder: Path) -> Echo:
            raise NotImplementedError

    raters = {
        "a": [annotated("n1", [("problem", "chest pain")])],
        "b": [annotated("n1", [("problem", "pain")])],
    }
    name = add_model_rater(raters, Echo())
    assert name == "model:echo-1"
    pairs = {(p["a"], p["b"]): p for p in agreement_report(raters, resamples=20).to_dict()["pairs"]}
    assert pairs["a", name]["ner"]["exact"]["f1"] == 1.0 and pairs["b", name]["ner"]["exact"]["f1"] == 0.0


# --- inputs --------------------------------------------------------------------------------------


def test_label_studio_export_with_several_annotators(tmp_path: Path) -> None:
    a = annotated("n1", [("problem", "chest pain"), ("negation", "No")], [(0, 1)])
    b = annotated("n1", [("problem", "chest pain")])
    task = labelstudio.document_task(a)
    task["id"] = 7
    task["annotations"] = [
        {"id": 1, "completed_by": 11, "result": labelstudio.document_results(a)},
        {"id": 2, "completed_by": 12, "result": labelstudio.document_results(b)},
        {"id": 3, "completed_by": 13, "was_cancelled": True, "result": []},
    ]
    path = tmp_path / "export.json"
    path.write_text(json.dumps([task]), encoding="utf-8")
    raters = load_raters([path])
    assert sorted(raters) == ["11", "12"]
    pair = agreement_report(raters, resamples=20).to_dict()["pairs"][0]
    assert pair["ner"]["exact"]["f1"] == 1.0 and pair["modifiers"]["exact"]["recall"] == 0.0


def _xmi_zip(doc: Document) -> bytes:
    ts = xmi.project_typesystem()
    cas = xmi.document_to_cas(doc, ts)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(f"{doc.id}.xmi", cas.to_xmi())
        z.writestr("TypeSystem.xml", ts.to_xml())
    return buffer.getvalue()


def test_inception_project_export(tmp_path: Path, emoji_doc: Document) -> None:
    other = replace(emoji_doc, spans=emoji_doc.spans[:-2], relations=emoji_doc.relations[:-1])
    path = tmp_path / "project.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("exportedproject1.json", "{}")
        z.writestr("source/emoji_note.txt", emoji_doc.text)
        z.writestr("annotation_ser/emoji_note.txt/anna.ser", b"binary")
        z.writestr("annotation/emoji_note.txt/INITIAL_CAS.zip", _xmi_zip(emoji_doc.without_annotations()))
        z.writestr("annotation/emoji_note.txt/anna.zip", _xmi_zip(emoji_doc))
        z.writestr("annotation/emoji_note.txt/ben.zip", _xmi_zip(other))
        z.writestr("curation/emoji_note.txt/CURATION_USER.zip", _xmi_zip(emoji_doc))
    raters = load_raters([path])
    assert sorted(raters) == ["anna", "ben", "curation"]
    assert raters["anna"][0].id == "emoji_note" and raters["anna"][0].text == emoji_doc.text
    pairs = {(p["a"], p["b"]): p for p in agreement_report(raters, resamples=20).to_dict()["pairs"]}
    anna_curation = pairs.get(("anna", "curation")) or pairs["curation", "anna"]
    assert anna_curation["spans"]["exact"]["f1"] == 1.0
    anna_ben = pairs.get(("anna", "ben")) or pairs["ben", "anna"]
    assert anna_ben["spans"]["exact"]["tp"] == len(emoji_doc.spans) - 2
    assert anna_ben["re"]["exact"]["tp"] == len(emoji_doc.relations) - 1


def test_unknown_input_format(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\[docx\]"):
        load_raters([tmp_path], "docx")


# --- CLI and HTML --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def rater_dirs(
    three_raters: dict[str, list[Document]], tmp_path_factory: pytest.TempPathFactory
) -> list[Path]:
    root = tmp_path_factory.mktemp("raters")
    for name, docs in three_raters.items():
        brat.write(docs, root / name)
    return [root / name for name in three_raters]


def test_cli_json_and_files(rater_dirs: list[Path], report: dict, tmp_path: Path) -> None:
    run = run_kiwi(
        "agreement", *map(str, rater_dirs), "--json", "--resamples", "200", "--out", str(tmp_path / "r")
    )
    assert run.returncode == 0, run.stderr
    got = json.loads(run.stdout)
    assert got["pairs"][0]["ner"]["exact"]["f1"] == report["pairs"][0]["ner"]["exact"]["f1"]
    assert set(got["pairs"][0]["spans"]["exact"]) == {"precision", "recall", "f1", "tp", "fp", "fn", "ci"}
    assert '"context"' not in run.stdout
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == [
        "agreement.html",
        "agreement.json",
        "agreement.md",
    ]
    html = (tmp_path / "r" / "agreement.html").read_text(encoding="utf-8")
    assert "<svg" in html and "http://" not in html.replace("http://www.w3.org/2000/svg", "")
    assert "| alice | bob |" in (tmp_path / "r" / "agreement.md").read_text(encoding="utf-8")


def test_cli_errors(rater_dirs: list[Path], tmp_path: Path) -> None:
    one = run_kiwi("agreement", str(rater_dirs[0]))
    assert one.returncode == 2 and "at least two raters" in one.stderr and "Traceback" not in one.stderr
    missing = run_kiwi("agreement", str(rater_dirs[0]), str(tmp_path / "nowhere"))
    assert missing.returncode == 2 and str(tmp_path / "nowhere") in missing.stderr


@pytest.mark.external
def test_html_renders_in_headless_chromium(report: dict, three_raters: dict, tmp_path: Path) -> None:
    browser = chromium()
    PIL = pytest.importorskip("PIL.Image", reason="Pillow is needed to read the screenshot")
    write_report(agreement_report(three_raters, resamples=50), tmp_path / "r")
    shot = tmp_path / "shot.png"
    chromium_screenshot(browser, (tmp_path / "r" / "agreement.html").as_uri(), shot, tmp_path / "profile")
    assert shot.is_file(), "chromium wrote no screenshot"
    pixels = np.asarray(PIL.open(shot).convert("RGB"))
    assert pixels.shape[:2] == (2000, 1280)
    coloured = (np.abs(pixels.astype(int) - pixels.mean(axis=2, keepdims=True)) > 30).any(axis=2)
    non_white = (pixels < 240).any(axis=2)
    assert non_white.mean() > 0.02  # text and tables rendered
    assert coloured.mean() > 0.005  # the heatmap and bars rendered

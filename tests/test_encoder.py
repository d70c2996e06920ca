"""The encoder extractor on a tiny random BERT built here: overfit, save, reload, formats, errors."""

from __future__ import annotations

import json
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from support import emoji_note, phrase_spans, tiny_bert  # noqa: E402

from recommender.document import Document  # noqa: E402
from recommender.errors import ConfigError, ModelError  # noqa: E402
from recommender.extractors import load_extractor  # noqa: E402
from recommender.extractors.encoder import EncoderConfig, train_encoder  # noqa: E402
from recommender.extractors.encoder.extractor import EncoderExtractor, decode_bio, word_tags  # noqa: E402
from recommender.extractors.encoder.model import encode_text  # noqa: E402
from recommender.formats import read_documents, write_documents  # noqa: E402
from recommender.synthetic import generate  # noqa: E402


def _keys(doc: Document) -> tuple[set, set]:
    return {s.key for s in doc.spans}, {(h.key, t.key) for _, h, t in doc.relation_pairs()}


def _note() -> Document:
    text = "No fever. Severe back pain since May. Metformin 500 mg twice daily. Glucose 180."
    doc = Document(id="note_b", text=text)
    span = phrase_spans(doc)
    neg, fever = span("negation", "No"), span("problem", "fever")
    sev, pain, loc = span("severity", "Severe"), span("problem", "back pain"), span("bodyloc", "back")
    tmp = span("temporal", "since May")
    drug, strength, freq = (
        span("drug", "Metformin"),
        span("strength", "500 mg"),
        span("frequency", "twice daily"),
    )
    test, val = span("test", "Glucose"), span("labvalue", "180")
    for head, tail in ((fever, neg), (pain, sev), (pain, loc), (pain, tmp), (drug, strength), (drug, freq)):
        doc.add_relation(head, tail)
    doc.add_relation(test, val)
    return doc.validate()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer BERT with the MiniLM vocabulary, saved as a local Hugging Face folder."""
    torch.manual_seed(0)
    # memorising two notes needs no regularisation
    return tiny_bert(tmp_path_factory.mktemp("tiny_bert"), layers=2, dropout=0.0)


@pytest.fixture(scope="module")
def docs() -> list[Document]:
    return [emoji_note(), _note()]


@pytest.fixture(scope="module")
def trained(tiny_base: Path, docs: list[Document], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("model")
    config = EncoderConfig(
        base_model=str(tiny_base),
        max_length=20,  # several windows per note: exercises the stitching of long notes
        window_overlap=9,
        max_pair_gap=4,  # every candidate pair then fits in some window, so training sees it
        epochs=25,
        patience=25,
        lr=3e-3,
        head_lr=1e-2,
        warmup_ratio=0.0,
        batch_size=1,
        dropout=0.0,
        rel_hidden=32,
        precision="fp32",
    )
    train_encoder(docs, docs, config, out)
    return out


def test_overfits_two_notes_and_reloads_identically(trained: Path, docs: list[Document]) -> None:
    ex = load_extractor(trained)
    assert isinstance(ex, EncoderExtractor)
    bare = [d.without_annotations() for d in docs]
    preds = ex.predict(bare)
    for gold, pred in zip(docs, preds, strict=True):
        assert _keys(pred) == _keys(gold)
        assert all(s.source == ex.version and 0 < s.score <= 1 for s in pred.spans)
        assert all(r.source == ex.version and 0.5 <= r.score <= 1 for r in pred.relations)
        assert 0 <= pred.uncertainty <= 1
    assert all(not d.spans for d in bare)  # inputs untouched

    again = EncoderExtractor.load(trained).predict(bare)
    assert [[(s.key, s.score) for s in d.spans] for d in again] == [
        [(s.key, s.score) for s in d.spans] for d in preds
    ]

    info = json.loads((trained / "kiwi_model.json").read_text())
    assert info["extractor"] == "kiwi.encoder.v1" and info["data_fingerprint"]
    dev = info["metrics"]["dev"]  # the project scorer's shape
    assert dev["ner"]["exact"]["f1"] == 1.0 and dev["re"]["exact"]["f1"] == 1.0
    assert dev["spans"]["exact"]["tp"] == sum(len(d.spans) for d in docs)
    assert {"epoch", "loss", "validation_ner", "validation_re"} <= set(info["metrics"]["history"][0])
    card = (trained / "MODEL_CARD.md").read_text()
    assert "## Architecture" in card and "| NER, 4 main types | 1.000 |" in card
    chose = info["metrics"]["validation_notes"]
    assert f"exact F1 on {chose}\nvalidation notes" in card and "development notes choose nothing" in card


def _small_config(base: Path, **overrides: Any) -> EncoderConfig:
    """Three epochs of a tiny encoder on generated notes: a few seconds."""
    settings = {"max_length": 32, "window_overlap": 8, "epochs": 3, "lr": 3e-3, "head_lr": 1e-2}
    settings |= {"batch_size": 4, "rel_hidden": 16, "precision": "fp32"}
    return EncoderConfig(base_model=str(base), **(settings | overrides))


def test_the_development_notes_choose_nothing(tiny_base: Path, tmp_path: Path) -> None:
    """Epoch, weights and calibration come from the validation notes carved from the training notes:
    whatever dev notes a model is reported on, the same model comes out."""
    notes = generate(14, seed=21)
    config = _small_config(tiny_base, patience=1)
    models = []
    for i, dev in enumerate((generate(3, seed=22), generate(5, seed=23))):
        torch.manual_seed(0)
        models.append(train_encoder(notes, dev, config, tmp_path / str(i)))
    first, second = (m.info.metrics for m in models)
    assert first["validation_notes"] == second["validation_notes"] == 2  # 15% of 14
    assert first["dev_notes"] == 3 and second["dev_notes"] == 5
    assert first["best_epoch"] == second["best_epoch"]
    assert first["temperatures"] == second["temperatures"] and first["temperatures"] != {}
    assert [h["validation_ner"] for h in first["history"]] == [h["validation_ner"] for h in second["history"]]
    a, b = (m.model.state_dict() for m in models)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_an_interrupted_run_resumes_and_ends_where_an_uninterrupted_one_does(
    tiny_base: Path, tmp_path: Path
) -> None:
    from collections.abc import Iterable, Iterator

    from safetensors.torch import load_file

    from recommender.extractors.checkpoint import CHECKPOINT_DIR

    notes = generate(14, seed=21)
    config = _small_config(tiny_base, patience=3, dropout=0.2)  # dropout's random state must come back
    torch.manual_seed(0)
    straight = train_encoder(notes, [], config, tmp_path / "straight")
    assert not (tmp_path / "straight" / CHECKPOINT_DIR).exists()  # removed on success

    def interrupted(items: Iterable[Any], desc: str, total: int | None) -> Iterator[Any]:
        if desc.startswith("epoch 3/"):
            raise KeyboardInterrupt
        yield from items

    out = tmp_path / "resumed"
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(notes, [], config, out, progress=interrupted)
    assert (out / CHECKPOINT_DIR / "state.pt").is_file()
    epochs: list[str] = []

    def progress(items: Iterable[Any], desc: str, total: int | None) -> Iterable[Any]:
        epochs.append(desc)
        return items

    torch.manual_seed(1)  # the checkpoint's random state wins over the caller's
    resumed = train_encoder(notes, [], config, out, progress=progress)
    assert epochs == ["epoch 3/3"]  # only the epoch left
    assert not (out / CHECKPOINT_DIR).exists()
    a, b = straight.info.metrics, resumed.info.metrics
    assert a["history"] == b["history"] and len(b["history"]) == 3
    assert a["best_epoch"] == b["best_epoch"] and a["temperatures"] == b["temperatures"]
    assert b["train_cpu_seconds"] > 0 and b["train_peak_rss_mb"] > 100  # both sessions'
    weights = load_file(out / "model.safetensors"), load_file(tmp_path / "straight" / "model.safetensors")
    assert weights[0].keys() == weights[1].keys()
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k

    other = replace(config, lr=1e-3)  # another run: the checkpoint is not taken up
    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train_encoder(notes, [], config, out, progress=interrupted)
    epochs.clear()
    train_encoder(notes, [], other, out, progress=progress)
    assert epochs == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]


def test_entities_given_keeps_the_given_entities(trained: Path, docs: list[Document]) -> None:
    ex = load_extractor(trained)
    doc = _note()
    shifted = Document(doc.id, doc.text)
    for s in doc.entities():
        shifted.spans.append(replace(s, begin=s.begin, end=s.end - 1 if s.end - s.begin > 3 else s.end))
    shifted.add_span("problem", doc.text.index("daily"), doc.text.index("daily") + 5)  # a wrong one, kept
    before = [(s.id, s.key) for s in shifted.spans]
    pred = ex.predict([shifted], entities_given=True)[0]
    ents = [(s.id, s.key) for s in pred.spans if s.label in ("problem", "test", "drug", "treatment")]
    assert sorted(ents) == sorted(before)
    assert [(s.id, s.key) for s in shifted.spans] == before
    # with the gold entities, RE mode recovers every modifier and relation
    given = Document(doc.id, doc.text, spans=doc.entities())
    assert _keys(ex.predict([given], entities_given=True)[0]) == _keys(doc)


@pytest.mark.parametrize("fmt", ["brat", "jsonl", "xmi", "labelstudio"])
def test_predictions_round_trip_through_formats(
    trained: Path, docs: list[Document], tmp_path: Path, fmt: str
) -> None:
    preds = load_extractor(trained).predict([d.without_annotations() for d in docs])
    target = tmp_path / ("out.jsonl" if fmt == "jsonl" else "out.json" if fmt == "labelstudio" else "out")
    write_documents(preds, target, fmt)
    back = {d.id: d for d in read_documents(target, fmt)}
    for p in preds:
        assert _keys(back[p.id]) == _keys(p)


@pytest.mark.parametrize("cuts", ["fixed", "sentences"])
def test_windows_cover_every_piece(tiny_base: Path, cuts: str) -> None:
    """Text with no sentence end: sentence windows fall back to cuts that share context."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    text = " ".join(f"word{i} 😀" for i in range(200))
    p = encode_text(tok, text, max_length=32, overlap=8, cuts=cuts)
    covered = [i for lo, hi in p.owned for i in range(lo, hi)]
    assert covered == list(range(len(p.ids))) and len(p.windows) > 5
    assert all(e - s <= 30 for s, e in p.windows)
    assert all(b[0] == a[1] - 8 for a, b in pairwise(p.windows))
    assert encode_text(tok, "", 32, 8, cuts).windows == []


def test_sentence_windows_cut_at_sentence_ends_without_overlap(tiny_base: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    sentences = [f"Patient {i} has pain in the left knee." for i in range(12)] + ["Plan:", "Follow up"]
    text = " ".join(sentences[:12]) + "\n" + "\n".join(sentences[12:])
    p = encode_text(tok, text, max_length=40, overlap=8, cuts="sentences")
    assert p.owned == p.windows  # no piece encoded twice
    assert [s for s, _ in p.windows[1:]] == [e for _, e in p.windows[:-1]]
    assert p.windows[0][0] == 0 and p.windows[-1][1] == len(p.ids)
    for s, e in p.windows:
        assert e - s <= 38
        if s:  # each window after the first starts a sentence or a line
            assert (
                text[p.offsets[s - 1][0] : p.offsets[s - 1][1]] == "."
                or "\n" in text[p.offsets[s - 1][1] : p.offsets[s][0]]
            )
    assert len(p.windows) <= -(-len(p.ids) // 38) + 1  # whole sentences cost at most one window more


def test_models_saved_before_newer_settings_load_as_trained(trained: Path, tmp_path: Path) -> None:
    import shutil

    old = tmp_path / "old_model"
    shutil.copytree(trained, old)
    info = json.loads((old / "kiwi_model.json").read_text(encoding="utf-8"))
    del info["config"]["window_cuts"]
    (old / "kiwi_model.json").write_text(json.dumps(info), encoding="utf-8")
    assert EncoderExtractor.load(old).config.window_cuts == "fixed"
    assert EncoderExtractor.load(trained).config.window_cuts == "sentences"
    # Without the entity-context weights the saved model is one without that input.
    del info["config"]["condition_modifiers"]
    (old / "kiwi_model.json").write_text(json.dumps(info), encoding="utf-8")
    with pytest.raises(ModelError, match="cannot load the model"):
        EncoderExtractor.load(old)


def test_decode_bio_repairs_i_without_b() -> None:
    names = ["O", "B-problem", "I-problem", "B-test", "I-test"]
    spans = decode_bio([0, 2, 2, 0, 1, 4, 3, 4], [1.0] * 8, names)
    assert [(lab, a, b) for lab, a, b, _ in spans] == [
        ("problem", 1, 3),
        ("problem", 4, 5),
        ("test", 5, 6),
        ("test", 6, 8),
    ]


def test_spans_end_on_word_boundaries(tiny_base: Path) -> None:
    """A tag on a word-continuation piece is overridden by its word's first piece, in both directions."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_base)
    text = "Symptomatic goiter"
    p = encode_text(tok, text, max_length=32, overlap=8)
    assert p.word_start[0] and not all(p.word_start[:-1])  # "symptomatic" splits into several pieces
    names = ["O", "B-problem", "I-problem"]
    first_o = [0] + [1] * (len(p.ids) - 1)  # B- inside the first word: the word stays outside
    first_b = [1] + [0] * (len(p.ids) - 1)  # O inside the first word: the span still covers it
    for tags, expected in ((first_o, "goiter"), (first_b, "Symptomatic")):
        t, probs = word_tags(tags, [0.9] * len(tags), p.word_start, names)
        spans = decode_bio(t, probs, names)
        assert [(lab, text[p.offsets[a][0] : p.offsets[b - 1][1]]) for lab, a, b, _ in spans] == [
            ("problem", expected)
        ]


def test_bad_model_folders(tmp_path: Path, trained: Path) -> None:
    with pytest.raises(ModelError, match=r"no such model folder|not a Kiwi model folder"):
        EncoderExtractor.load(tmp_path / "missing")
    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    (corrupt / "kiwi_model.json").write_text("{not json")
    with pytest.raises(ModelError, match=r"unreadable kiwi_model\.json"):
        load_extractor(corrupt)
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(trained, broken)
    (broken / "model.safetensors").unlink()
    with pytest.raises(ModelError, match=r"\[model.safetensors\] is missing"):
        load_extractor(broken)
    (broken / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ModelError, match="cannot load the model"):
        load_extractor(broken)


def test_unknown_base_model_says_what_to_do(docs: list[Document]) -> None:
    config = EncoderConfig(base_model="no-such-org/no-such-model", epochs=1)
    with pytest.raises(
        ModelError, match=r"\[no-such-org/no-such-model\].*HF_HUB_OFFLINE.*--base-model minilm"
    ):
        train_encoder(docs, [], config)


def test_config_is_validated_and_round_trips() -> None:
    with pytest.raises(ConfigError, match=r"lr must be in \(0, 1\), got \[0\]"):
        EncoderConfig(lr=0)
    with pytest.raises(ConfigError, match="window_overlap"):
        EncoderConfig(max_length=32, window_overlap=20)
    with pytest.raises(ConfigError, match=r"window_cuts must be one of sentences, fixed, got \[words\]"):
        EncoderConfig(window_cuts="words")
    with pytest.raises(ConfigError, match=r"unknown EncoderConfig settings \[colour\]"):
        EncoderConfig.from_dict({"colour": 1})
    cfg = EncoderConfig(epochs=3, base_model="x")
    assert EncoderConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert all(text for _, text in EncoderConfig.help().values())


def test_cli_predict_on_plain_text_notes(trained: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recommender.cli import app

    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text(_note().text, encoding="utf-8")
    out = tmp_path / "pred.jsonl"
    result = CliRunner().invoke(
        app, ["predict", "--model", str(trained), str(notes), str(out), "--to", "jsonl"]
    )
    assert result.exit_code == 0, result.output
    (pred,) = read_documents(out, "jsonl")
    assert _keys(pred) == _keys(_note())


def test_concurrent_predictions_equal_sequential_ones(trained: Path) -> None:
    """The service runs two model calls at once on one extractor (see ComputeLanes)."""
    from concurrent.futures import ThreadPoolExecutor

    ex = EncoderExtractor.load(trained)
    notes = [replace(_note(), id=f"n{i}").without_annotations() for i in range(8)]
    expected = [_keys(d) for d in ex.predict(notes)]
    fresh = EncoderExtractor.load(trained)  # first calls race to build the inference copy
    with ThreadPoolExecutor(4) as pool:
        got = list(pool.map(lambda d: _keys(fresh.predict([d])[0]), notes))
    assert got == expected


def test_cli_train_bert_writes_a_model_with_the_chosen_settings(tiny_base: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from recommender.cli import app

    corpus = tmp_path / "corpus"
    write_documents([replace(_note(), id=f"note_{i}") for i in range(6)], corpus, "brat")
    out = tmp_path / "model"
    args = ["train", "bert", "--corpus", str(corpus), "--out", str(out), "--base-model", str(tiny_base)]
    args += ["--epochs", "1", "--max-length", "32", "--window-overlap", "8", "--threads", "1"]
    result = CliRunner().invoke(app, [*args, "--window-cuts", "fixed", "--encoder-layers", "1"])
    assert result.exit_code == 0, result.output
    # 6 notes are too few for a development split: the scores are "not measured", never 0.0
    assert "(best epoch 1; dev not measured)" in " ".join(result.output.split())
    config = json.loads((out / "kiwi_model.json").read_text(encoding="utf-8"))["config"]
    assert config["window_cuts"] == "fixed" and config["condition_modifiers"] is True
    assert config["encoder_layers"] == 1
    assert "overlapping by" in (out / "MODEL_CARD.md").read_text(encoding="utf-8")

    bad = CliRunner().invoke(app, [*args, "--window-cuts", "words"])  # `kiwi` prints it in one line
    assert isinstance(bad.exception, ConfigError)
    assert "window_cuts must be one of sentences, fixed, got [words]" in str(bad.exception)


def test_encoder_layers_keeps_the_first_layers_through_save_and_load(
    tiny_base: Path, docs: list[Document], tmp_path: Path
) -> None:
    config = EncoderConfig(
        base_model=str(tiny_base), encoder_layers=1, epochs=1, max_length=32, window_overlap=8
    )
    ex = train_encoder(docs, [], config, tmp_path / "one_layer")
    assert len(ex.model.encoder.encoder.layer) == 1
    again = EncoderExtractor.load(tmp_path / "one_layer")
    assert again.model.encoder.config.num_hidden_layers == 1 and again.config.encoder_layers == 1
    bare = [d.without_annotations() for d in docs]
    assert [_keys(d) for d in again.predict(bare)] == [_keys(d) for d in ex.predict(bare)]
    with pytest.raises(ConfigError, match=r"encoder_layers \[3\] exceeds the encoder's 2 layers"):
        train_encoder(docs, [], replace(config, encoder_layers=3), tmp_path / "three")

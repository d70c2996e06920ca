"""The LLaMA generation engines: ``openai`` against a real OpenAI-compatible server started here on
loopback (``transformers serve`` over a tiny random Llama folder), its failure modes against a small
loopback HTTP server, and the choice of engine by configuration (a real vLLM server: test_vllm_server.py).

The tiny model has float64 weights so that the server's computation and this process's cannot flip
a near-tie: the engines must then give the same text, prompt for prompt.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from support import require_module, require_or_skip, wait_healthy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from recommender.corpora import load_sample  # noqa: E402
from recommender.document import Document  # noqa: E402
from recommender.errors import ConfigError, ModelError  # noqa: E402
from recommender.extractors import load_extractor  # noqa: E402
from recommender.extractors.base import ModelInfo  # noqa: E402
from recommender.extractors.llama.config import LlamaConfig  # noqa: E402
from recommender.extractors.llama.constrained import CopyOrTag  # noqa: E402
from recommender.extractors.llama.engines import OpenAIEngine  # noqa: E402
from recommender.extractors.llama.extractor import AUDIT_KEY, LlamaExtractor  # noqa: E402
from recommender.extractors.llama.generation import (  # noqa: E402
    Prompt,
    TransformersEngine,
    plain_generate,
)
from recommender.extractors.llama.layout import MERGED_DIR, NAME  # noqa: E402
from recommender.extractors.llama.task import (  # noqa: E402
    PACKAGED_PROMPTS,
    OutputLanguage,
    Templates,
    ner_units,
)
from recommender.retraining import Corpora  # noqa: E402
from recommender.service import create_app  # noqa: E402
from recommender.settings import Settings, load_settings  # noqa: E402
from recommender.text import segment  # noqa: E402

MAX_NEW = 16
SPAN = "webanno.custom.ClinicalEntity"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_tiny_llama(folder: Path, docs: list[Document]) -> Path:
    """A random 2-layer Llama (float64) and a byte-level BPE tokenizer trained on the notes and prompts."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    corpus = [d.text for d in docs] + [p.read_text("utf-8") for p in sorted(PACKAGED_PROMPTS.rglob("*.txt"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=500, special_tokens=["<s>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus, trainer)
    tokenizer = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=1,
        initializer_range=0.2,  # larger than usual: outputs depend on the prompt, not one fixed string
    )
    transformers.LlamaForCausalLM(config).to(torch.float64).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def notes() -> list[Document]:
    return [segment(d) for d in load_sample()[:2]]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory, notes: list[Document]) -> Path:
    return build_tiny_llama(tmp_path_factory.mktemp("tiny") / "llama", notes)


@pytest.fixture(scope="module")
def served(tiny: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """``transformers serve`` on loopback, serving the tiny folder (needs ``transformers[serving]``);
    its URL and its log (one line per request)."""
    require_module("openai", "transformers serve", "install the extra transformers[serving] (dev extra)")
    cli = shutil.which("transformers", path=str(Path(sys.executable).parent))
    if cli is None:
        require_or_skip("transformers serve", "no `transformers` command beside this Python")
    port = free_port()
    log = (tmp_path_factory.mktemp("serve") / "serve.log").open("w")
    args = ["serve", str(tiny), "--host", "127.0.0.1", "--port", str(port), "--device", "cpu"]
    proc = subprocess.Popen(
        [cli, *args, "--log-level", "info"],  # info: one log line per request
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 90, what=f"transformers serve (log: {log.name})")
        yield url, Path(log.name)
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


@pytest.fixture(scope="module")
def server(served: tuple[str, Path]) -> str:
    return served[0]


def kiwi_prompts(notes: list[Document]) -> list[Prompt]:
    templates = Templates.packaged()
    out = []
    for unit in ner_units(notes)[:4]:
        prefix, text = templates.split(unit.kind, unit.input)
        out.append(Prompt(prefix, text))
    return out


def test_openai_engine_on_a_real_server_gives_the_transformers_text(
    server: str, tiny: Path, notes: list[Document]
) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    prompts = kiwi_prompts(notes)
    local = TransformersEngine(model, tokenizer, max_new_tokens=MAX_NEW, constrained=False).generate(prompts)
    reference = plain_generate(model, tokenizer, prompts, max_new_tokens=MAX_NEW, constrained=False)
    t0 = time.perf_counter()
    remote = OpenAIEngine(server, str(tiny), max_new_tokens=MAX_NEW, concurrency=3).generate(prompts)
    seconds = time.perf_counter() - t0
    assert len({g.text for g in remote}) > 1, "the prompts lead to different texts"
    for ref, a, b in zip(reference, local, remote, strict=True):
        assert a.text == ref.text
        assert b.text == ref.text and b.stopped == ref.stopped
        # transformers serve returns no log-probabilities: none are invented
        assert b.token_logprobs == [] and b.token_offsets == []
    assert seconds < 30, f"{len(prompts)} completions took {seconds:.1f} s"


def test_the_extractor_picks_the_engine_from_its_config(
    server: str, tiny: Path, notes: list[Document]
) -> None:
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)

    def extractor(**engine: Any) -> LlamaExtractor:
        config = LlamaConfig(max_new_tokens=MAX_NEW, constrained=False, keep_prompts=True, **engine)
        info = ModelInfo(NAME, "llama-engines-test")
        return LlamaExtractor(model, tokenizer, config, Templates.packaged(), info, None)

    docs = [Document(n.id, n.text[: n.sentences[2].end]) for n in notes]
    here = extractor().predict(docs)
    remote_extractor = extractor(engine="openai", engine_url=server, engine_model=str(tiny))
    there = remote_extractor.predict(docs)
    assert isinstance(remote_extractor.engine(), OpenAIEngine)
    for a, b in zip(here, there, strict=True):
        assert [x["output"] for x in a.meta[AUDIT_KEY]] == [x["output"] for x in b.meta[AUDIT_KEY]]
        assert [s.key for s in a.spans] == [s.key for s in b.spans] and a.drops == b.drops
        assert all(s.score is None for s in b.spans), "no log-probabilities from this server"


def test_the_service_serves_a_llama_folder_through_the_configured_server(
    served: tuple[str, Path], tiny: Path, tmp_path: Path, notes: list[Document]
) -> None:
    url, log = served
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    config = LlamaConfig(max_new_tokens=MAX_NEW)  # the folder says transformers; the service overrides
    info = ModelInfo(NAME, "llama-served-test")
    folder = tmp_path / "llama"
    LlamaExtractor(model, tokenizer, config, Templates.packaged(), info, None).save(folder)
    model.save_pretrained(folder / MERGED_DIR)
    tokenizer.save_pretrained(folder / MERGED_DIR)
    settings = Settings(
        model=folder,
        model_dir=tmp_path / "models",
        retrain=False,
        llama_engine="openai",
        llama_engine_url=url,
        llama_engine_model=str(tiny),  # the name transformers serve knows it by
    )
    before = log.read_text().count("POST /v1/completions")
    text = notes[0].text[: notes[0].sentences[1].end]
    with TestClient(create_app(settings, corpora=Corpora([], []))) as client:
        r = client.post("/predict", json={"tasks": [{"id": 1, "data": {"text": text}}]})
        engine = client.app.state.service.predictor.current.engine()
    assert r.status_code == 200 and r.json()["results"][0]["model_version"] == "llama-served-test"
    assert isinstance(engine, OpenAIEngine) and engine.url == f"{url}/v1/completions"
    assert log.read_text().count("POST /v1/completions") - before == 2, "one NER prompt per sentence"


# --- failure modes, against a small loopback HTTP server ----------------------------------------


class Script:
    """What the loopback server answers, request by request, and what it saw."""

    def __init__(self, answers: list[tuple[int, Any]], delay: float = 0.0) -> None:
        self.answers, self.delay = answers, delay
        self.bodies: list[dict[str, Any]] = []
        self.in_flight = self.most_in_flight = 0
        self.lock = threading.Lock()

    def next(self, body: dict[str, Any]) -> tuple[int, Any]:
        with self.lock:
            self.bodies.append(body)
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
            answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        time.sleep(self.delay)
        with self.lock:
            self.in_flight -= 1
        return answer


@pytest.fixture
def scripted() -> Iterator[tuple[str, list[Script]]]:
    holder: list[Script] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["content-length"])))
            status, payload = holder[0].next(body)
            data = payload.encode() if isinstance(payload, str) else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", holder
    finally:
        httpd.shutdown()
        httpd.server_close()


def completion(text: str, finish: str = "stop", logprobs: Any = None) -> dict[str, Any]:
    return {"choices": [{"text": text, "finish_reason": finish, "index": 0, "logprobs": logprobs}]}


PROMPT = Prompt("### Task:\n", "Chest pain . <EOS>\n### Output Text:")


def test_request_is_greedy_with_the_stop_string_and_reads_logprobs(
    scripted: tuple[str, list[Script]],
) -> None:
    url, holder = scripted
    # vLLM's block: offsets from the start of the completion; OpenAI's count the prompt too
    block = {"tokens": [" Chest", " pain"], "token_logprobs": [-0.5, -0.25], "text_offset": [40, 46]}
    holder.append(Script([(200, completion(" Chest pain", logprobs=block))]))
    [gen] = OpenAIEngine(url, "kiwi-7", max_new_tokens=33).generate([PROMPT])
    [body] = holder[0].bodies
    assert body["prompt"] == PROMPT.prefix + PROMPT.text and body["model"] == "kiwi-7"
    assert body["temperature"] == 0 and body["stop"] == ["<EOS>"] and body["max_tokens"] == 33
    assert body["logprobs"] == 0
    assert (gen.text, gen.token_logprobs, gen.token_offsets, gen.stopped) == (
        " Chest pain",
        [-0.5, -0.25],
        [0, 6],
        True,
    )


def test_the_constraint_goes_as_structured_outputs_only_when_asked(
    scripted: tuple[str, list[Script]],
) -> None:
    url, holder = scripted
    holder.append(Script([(200, completion(" x"))]))
    language = OutputLanguage("Chest pain .", ("problem", "bodyloc"))
    prompt = Prompt(PROMPT.prefix, PROMPT.text, language)
    OpenAIEngine(url, "m").generate([prompt])
    assert "structured_outputs" not in holder[0].bodies[0]
    OpenAIEngine(url, "m", structured=True).generate([prompt, PROMPT])  # sent at once: either order
    sent = [b for b in holder[0].bodies[1:] if "structured_outputs" in b]
    assert len(sent) == 1, "a prompt without a source goes unconstrained"
    assert sent[0]["structured_outputs"] == {"grammar": CopyOrTag.of(language, "<EOS>").grammar()}


def test_busy_answers_are_retried_with_backoff_then_reported(scripted: tuple[str, list[Script]]) -> None:
    url, holder = scripted
    holder.append(Script([(503, {"error": {"message": "loading"}}), (200, completion(" x", "length"))]))
    [gen] = OpenAIEngine(url, "m", retries=2, backoff_s=0.01).generate([PROMPT])
    assert gen.text == " x" and not gen.stopped and len(holder[0].bodies) == 2
    holder[0] = Script([(503, {"error": {"message": "model is loading"}})])
    with pytest.raises(ModelError, match=re.escape(f"[{url}/v1/completions] answered 503: model is loading")):
        OpenAIEngine(url, "m", retries=2, backoff_s=0.01).generate([PROMPT])
    assert len(holder[0].bodies) == 3, "one try and two retries"
    holder[0] = Script([(404, {"detail": "model [m] not found"})])
    with pytest.raises(ModelError, match=r"answered 404: model \[m\] not found"):
        OpenAIEngine(url, "m", retries=2, backoff_s=0.01).generate([PROMPT])
    assert len(holder[0].bodies) == 1, "a client error is not retried"


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("<html>oops</html>", "answered 200 with no JSON"),
        ({"object": "list", "data": []}, r"not a completion \(keys \['data', 'object'\]\)"),
        ({"choices": [{"text": None}]}, "not a completion"),
    ],
)
def test_garbage_is_one_line_naming_the_url(
    scripted: tuple[str, list[Script]], payload: Any, message: str
) -> None:
    url, holder = scripted
    holder.append(Script([(200, payload)]))
    with pytest.raises(ModelError, match=message) as raised:
        OpenAIEngine(url, "m").generate([PROMPT])
    assert f"[{url}/v1/completions]" in str(raised.value) and "\n" not in str(raised.value)
    assert "Chest" not in str(raised.value), "never the prompt: it is note text"


def test_a_server_that_is_down_is_reported_in_bounded_time() -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    t0 = time.perf_counter()
    with pytest.raises(ModelError, match=re.escape(f"[{url}/v1/completions] unreachable after 3 tries")):
        OpenAIEngine(url, "m", retries=2, backoff_s=0.01, timeout_s=2).generate([PROMPT])
    assert time.perf_counter() - t0 < 5


def test_at_most_concurrency_requests_are_in_flight(scripted: tuple[str, list[Script]]) -> None:
    url, holder = scripted
    holder.append(Script([(200, completion(" y"))], delay=0.1))
    gens = OpenAIEngine(url, "m", concurrency=2).generate([PROMPT] * 6)
    assert [g.text for g in gens] == [" y"] * 6
    assert holder[0].most_in_flight == 2


class Tagger(Script):
    """A stand-in model behind the loopback server: it copies the NER input and tags every
    "aspirin" as a drug (RE inputs come back untagged), so the service has LLaMA answers to place."""

    def __init__(self) -> None:
        super().__init__([])

    def next(self, body: dict[str, Any]) -> tuple[int, Any]:
        self.bodies.append(body)
        source = body["prompt"].rsplit("### Input Text:", 1)[1].split(" <EOS>")[0].strip()
        if "<span" in source:  # an RE prompt: no modifiers
            output = re.sub(r"</?span[^>]*>", "", source)
        else:
            output = re.sub(r"\b(aspirin)\b", r'<span class="drug">\1</span>', source, flags=re.IGNORECASE)
        return 200, completion(f" {output} ")


def test_a_llama_served_beside_the_lexicon_answers_both_tools_with_its_own_version(
    scripted: tuple[str, list[Script]], tiny: Path, tmp_path: Path, fixtures_dir: Path
) -> None:
    from recommender.extractors.lexicon import LexiconExtractor
    from recommender.formats.xmi import PREDICTED as FLAG
    from recommender.formats.xmi import load_cas, load_typesystem_xml

    url, holder = scripted
    holder.append(Tagger())
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny)
    tokenizer = transformers.AutoTokenizer.from_pretrained(tiny)
    # the engine comes from the model's own config this time, no service setting
    config = LlamaConfig(engine="openai", engine_url=url, engine_model="kiwi-llama")
    folder = tmp_path / "llama"
    info = ModelInfo(NAME, "llama-beside-test")
    LlamaExtractor(model, tokenizer, config, Templates.packaged(), info, None).save(folder)
    model.save_pretrained(folder / MERGED_DIR)
    tokenizer.save_pretrained(folder / MERGED_DIR)
    LexiconExtractor.train(load_sample()).save(tmp_path / "lexicon")
    settings = Settings(
        model=tmp_path / "lexicon",
        model_dir=tmp_path / "models",
        retrain=False,
        serve_models={"llama": folder},
    )
    request = json.loads((fixtures_dir / "inception/synthetic/predict_span_request.json").read_text())
    tasks = {"tasks": [{"id": 1, "data": {"text": "Took aspirin 81 mg daily."}}]}
    with TestClient(create_app(settings, corpora=Corpora([], []))) as client:
        lexicon_version = client.post("/setup").json()["model_version"]
        # the LLaMA answers from the prediction cache: a first request queues each note (the lexicon
        # answers it as the fallback), the background worker generates through the server
        client.post("/inception/llama/entities/predict", json=request)
        client.post("/labelstudio/llama/predict", json=tasks)
        until = time.monotonic() + 60
        while client.get("/status").json()["precompute"]["llama"]["done"] < 2:
            assert time.monotonic() < until, "the LLaMA predictions were not computed in the background"
            time.sleep(0.2)
        answers = {
            path: client.post(f"{path}/predict", json=request)
            for path in ("/inception/entities", "/inception/llama/entities")
        }
        ls = client.post("/labelstudio/llama/predict", json=tasks).json()["results"][0]
    assert lexicon_version != "llama-beside-test"
    found = {}
    for path in answers:
        assert answers[path].status_code == 200
        cas = load_cas(answers[path].json()["document"], load_typesystem_xml(request["typeSystem"]))
        found[path] = {(fs.get("label"), fs.begin, fs.end): fs for fs in cas.select(SPAN) if fs.get(FLAG)}
    aspirin = ("drug", 83, 90)
    assert lexicon_version in found["/inception/entities"][aspirin].get("label_score_explanation")
    assert list(found["/inception/llama/entities"]) == [aspirin], "the stand-in tags aspirin only"
    explanation = found["/inception/llama/entities"][aspirin].get("label_score_explanation")
    assert explanation == "kiwi.llama.v1 llama-beside-test"
    assert ls["model_version"] == "llama-beside-test"
    assert [(x["value"]["text"], x["value"]["labels"]) for x in ls["result"]] == [("aspirin", ["drug"])]
    assert {b["model"] for b in holder[0].bodies} == {"kiwi-llama"}


# --- configuration -------------------------------------------------------------------------------


def test_engine_settings_are_checked_and_passed_down(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="needs engine_url"):
        LlamaConfig(engine="openai")
    with pytest.raises(ConfigError, match=r"engine must be one of .* got \[tgi\]"):
        LlamaConfig(engine="tgi")
    with pytest.raises(ConfigError, match="KIWI_LLAMA_ENGINE_URL"):
        load_settings(llama_engine="openai")
    settings = Settings(llama_engine="openai", llama_engine_url="http://gpu-host:8000", model_dir=tmp_path)
    assert settings.extractor_overrides() == {
        "kiwi.llama.v1": {"engine": "openai", "engine_url": "http://gpu-host:8000"}
    }
    assert Settings(model_dir=tmp_path).extractor_overrides() == {}
    slow = Settings(
        llama_engine="openai",
        llama_engine_url="http://cpu-host:8000",
        llama_engine_timeout_s=900,
        llama_engine_concurrency=8,
        model_dir=tmp_path,
    )
    assert slow.extractor_overrides()["kiwi.llama.v1"] == {
        "engine": "openai",
        "engine_url": "http://cpu-host:8000",
        "engine_timeout_s": 900,
        "engine_concurrency": 8,
    }
    with pytest.raises(ConfigError, match=r"llama_engine_timeout_s: Input should be greater than 0"):
        load_settings(llama_engine_timeout_s=0)
    with pytest.raises(ConfigError, match=r"engine_concurrency must be positive, got \[0\]"):
        LlamaConfig(engine_concurrency=0)
    # a lexicon model served beside it is not touched by the LLaMA's settings
    from recommender.extractors.lexicon import LexiconExtractor

    LexiconExtractor.train(load_sample()).save(tmp_path / "lexicon")
    assert load_extractor(tmp_path / "lexicon", settings.extractor_overrides()).version

"""Hostile input against a real ``kiwi serve`` process: every answer a clear 4xx (or a cleaned 200), never
a 5xx, and the service healthy after each; a 10 MB note is refused at once while another client's
predictions keep their latency; and a schema-driven fuzz of every endpoint (schemathesis)."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import response_schema_conformance, status_code_conformance
from support import wait_healthy

from recommender.corpora import SAMPLE_DIR
from recommender.document import Document
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.formats.xmi import document_to_cas, project_typesystem

NOTE_LIMIT = 50_000
BODY_LIMIT = 20_000_000


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``kiwi serve`` in its own process on the lexicon model (trains in milliseconds)."""
    root = tmp_path_factory.mktemp("serve")
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(root / "model")
    port = _free_port()
    env = os.environ | {
        "KIWI_RETRAIN": "false",
        "KIWI_MAX_NOTE_CHARS": str(NOTE_LIMIT),
        "KIWI_MAX_REQUEST_BYTES": str(BODY_LIMIT),
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
    }
    command = [sys.executable, "-c", "from recommender.cli import main; main()", "serve"]
    args = ["--model", str(root / "model"), "--model-dir", str(root / "models"), "--port", str(port)]
    proc = subprocess.Popen(
        [*command, *args, "--log-level", "warning"],
        env=env,
        cwd=root,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 60, poll=0.2)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


# --- the hand-picked cases --------------------------------------------------------------------------
TS = project_typesystem()
TS_XML = TS.to_xml()
META = {"layer": "webanno.custom.ClinicalEntity", "feature": "label", "projectId": 1}


def _xmi(text: str) -> str:
    return document_to_cas(Document("n", text), TS).to_xmi()


def _inception(xmi: str | None = None, **change: Any) -> dict[str, Any]:
    return (
        {"typeSystem": TS_XML, "document": {"xmi": xmi or _xmi("Chest pain."), "documentId": 1}}
        | {"metadata": META}
        | change
    )


def _created(text: str, result: list[Any], **task: Any) -> dict[str, Any]:
    return {
        "action": "ANNOTATION_CREATED",
        "project": {"id": 9},
        "task": {"id": 1, "data": {"text": text}} | task,
        "annotation": {"id": 5, "completed_by": 1, "result": result},
    }


def _region(start: Any, end: Any, labels: Any, rid: str = "a") -> dict[str, Any]:
    return {"id": rid, "type": "labels", "value": {"start": start, "end": end, "labels": labels}}


XXE_XMI = (
    '<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
    '<xmi:XMI xmlns:xmi="http://www.omg.org/XMI" xmi:version="2.0">&e;</xmi:XMI>'
)
LAUGHS = (
    '<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
    + "".join(f'<!ENTITY {c} "{("&" + p + ";") * 10}">' for p, c in zip("abcdefgh", "bcdefghi", strict=True))
    + ']><typeSystemDescription xmlns="http://uima.apache.org/resourceSpecifier">&i;</typeSystemDescription>'
)
DEEP = '{"tasks": ' + "[" * 50_000 + "]" * 50_000 + "}"
BIG_NOTE = "Patient denies chest pain. " * 400_000  # 10.8 MB

# name, method, path, body (JSON value, or bytes sent as they are), accepted statuses
CASES: list[tuple[str, str, str, Any, set[int]]] = [
    ("malformed JSON", "POST", "/predict", b'{"tasks": [', {400}),
    ("not UTF-8", "POST", "/predict", b'{"tasks": [{"data": {"text": "\xff\xfe"}}]}', {400}),
    ("deeply nested JSON", "POST", "/predict", DEEP.encode(), {400}),
    (
        "lone surrogate in a task",
        "POST",
        "/predict",
        b'{"tasks": [{"data": {"text": "pain \\ud800"}}]}',
        {200},
    ),
    ("NUL in a task", "POST", "/predict", {"tasks": [{"id": 1, "data": {"text": "chest\x00 pain"}}]}, {200}),
    ("tasks of the wrong type", "POST", "/predict", {"tasks": "chest pain"}, {422}),
    ("a task that is no object", "POST", "/predict", {"tasks": [5]}, {422}),
    ("text of the wrong type", "POST", "/predict", {"tasks": [{"id": 1, "data": {"text": 5}}]}, {200}),
    (
        "a config with an entity",
        "POST",
        "/predict",
        {"tasks": [], "label_config": "<!DOCTYPE x [<!ENTITY a 'b'>]><View/>"},
        {400},
    ),
    (
        "a config without Labels",
        "POST",
        "/predict",
        {"tasks": [], "label_config": "<View><Text name='t' value='$text'/></View>"},
        {400},
    ),
    ("a 10 MB note", "POST", "/predict", {"tasks": [{"id": 1, "data": {"text": BIG_NOTE}}]}, {413}),
    ("an oversized body", "POST", "/predict", b" " * (BODY_LIMIT + 1), {413}),
    (
        "INCEpTION: malformed XMI",
        "POST",
        "/inception/entities/predict",
        _inception("<xmi:XMI xmlns:xmi='http://www.omg.org/XMI'><a></xmi:XMI>"),
        {400},
    ),
    ("INCEpTION: XXE", "POST", "/inception/entities/predict", _inception(XXE_XMI), {400}),
    (
        "INCEpTION: entity expansion",
        "POST",
        "/inception/entities/predict",
        _inception(typeSystem=LAUGHS),
        {400},
    ),
    ("INCEpTION: surrogate in the XMI", "POST", "/inception/entities/predict", _inception("\ud800"), {400}),
    (
        "INCEpTION: wrong metadata type",
        "POST",
        "/inception/entities/predict",
        _inception(metadata={"layer": 5}),
        {422},
    ),
    ("INCEpTION: unknown recommender", "POST", "/inception/nope/predict", _inception(), {404}),
    (
        "INCEpTION: a 10 MB note",
        "POST",
        "/inception/entities/predict",
        _inception(_xmi("NOTE").replace("NOTE", BIG_NOTE)),  # the CAS of a 10.8 MB note, made at once
        {413},
    ),
    (
        "INCEpTION: train with bad XMI",
        "POST",
        "/inception/entities/train",
        {"typeSystem": TS_XML, "documents": [{"xmi": "<x/>"}], "metadata": META},
        {400},
    ),
    ("webhook: no action", "POST", "/webhook", {"project": 1}, {400}),
    ("webhook: a list", "POST", "/webhook", [1, 2], {422}),
    (
        "webhook: surrogate in the text",
        "POST",
        "/webhook",
        _created("pain \ud800", [_region(0, 4, ["problem"])]),
        {200},
    ),
    (
        "webhook: an unknown label is kept",
        "POST",
        "/webhook",
        _created("pain", [_region(0, 4, ["teamLabel"])]),
        {200},
    ),
    (
        "webhook: offsets outside the text",
        "POST",
        "/webhook",
        _created("pain", [_region(0, 40, ["problem"])]),
        {422},
    ),
    (
        "webhook: offsets of the wrong type",
        "POST",
        "/webhook",
        _created("pain", [_region("0", 4, ["problem"])]),
        {400},
    ),
    (
        "webhook: labels of the wrong type",
        "POST",
        "/webhook",
        _created("pain", [_region(0, 4, "problem")]),
        {400},
    ),
    (
        "webhook: relation to a missing region",
        "POST",
        "/webhook",
        _created("pain", [{"type": "relation", "from_id": "x", "to_id": "y"}]),
        {422},
    ),
    (
        "webhook: annotation not an object",
        "POST",
        "/webhook",
        {"action": "ANNOTATION_CREATED", "task": {}, "annotation": 3},
        {400},
    ),
    (
        "webhook: deleted ids not a list",
        "POST",
        "/webhook",
        {"action": "ANNOTATIONS_DELETED", "annotations": "x"},
        {400},
    ),
    (
        "legacy train: surrogate",
        "POST",
        "/train",
        {"annotations": [{"data": {"text": "x \ud800"}, "annotations": [{"result": []}]}]},
        {200},
    ),
    ("admin: path-like model version", "POST", "/models/..%2F..%2Fetc/promote", None, {404}),
    ("admin: dotted model version", "POST", "/models/.hidden/promote", None, {404}),
    ("admin: no retraining worker", "POST", "/jobs", None, {404}),
    ("report: resamples out of range", "GET", "/projects/x/agreement?resamples=0", None, {422}),
    ("report: unknown project", "GET", "/projects/..%2Fx/agreement", None, {404}),
    ("report: unknown format", "GET", "/projects/x/agreement?format=pdf", None, {422}),
]


@pytest.mark.parametrize(("name", "method", "path", "body", "accepted"), CASES, ids=[c[0] for c in CASES])
def test_hostile_input_gets_a_clear_answer_and_the_service_stays_healthy(
    server: str, name: str, method: str, path: str, body: Any, accepted: set[int]
) -> None:
    content = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    started = time.monotonic()
    r = httpx.request(
        method, server + path, content=content, headers={"content-type": "application/json"}, timeout=30
    )
    assert r.status_code in accepted, (r.status_code, r.text[:300])
    assert time.monotonic() - started < 10
    if r.status_code >= 400:
        detail = r.json()["detail"]
        assert detail, "a refusal says why"
        assert "chest pain" not in r.text.lower()  # never echoes the note
    assert httpx.get(f"{server}/health", timeout=5).status_code == 200


def test_the_readme_counts_the_hostile_requests_this_suite_sends() -> None:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    (promised,) = re.findall(r"sends (\d+) hostile requests", readme)
    assert int(promised) == len(CASES)


def test_a_long_note_is_refused_at_once_naming_the_limit_and_the_batch_command(server: str) -> None:
    started = time.monotonic()
    r = httpx.post(f"{server}/predict", json={"tasks": [{"id": 7, "data": {"text": BIG_NOTE}}]}, timeout=30)
    assert r.status_code == 413 and time.monotonic() - started < 5
    detail = r.json()["detail"]
    assert f"[{NOTE_LIMIT}]" in detail and "kiwi predict" in detail and "task 7" in detail


def test_lone_surrogates_are_predicted_on_with_offsets_kept(server: str) -> None:
    text = "\ud800 denies chest pain"
    body = json.dumps({"tasks": [{"id": 1, "data": {"text": text}}]}).encode()  # "\ud800" as JSON spells it
    r = httpx.post(f"{server}/predict", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200
    regions = r.json()["results"][0]["result"]
    assert regions and all(
        text[g["value"]["start"] : g["value"]["end"]] == g["value"]["text"] for g in regions if "value" in g
    )


def test_long_notes_from_one_client_leave_the_others_latency_alone(server: str) -> None:
    """Another client predicts while one floods the service with long notes (refused at once)."""
    task = {"tasks": [{"id": 1, "data": {"text": "Patient denies chest pain. Took aspirin."}}]}
    with httpx.Client(base_url=server) as other:

        def latencies(n: int) -> list[float]:
            out = []
            for _ in range(n):
                started = time.monotonic()
                assert other.post("/predict", json=task).status_code == 200
                out.append(time.monotonic() - started)
            return sorted(out)

        alone = latencies(10)
        stop = threading.Event()
        answers: list[int] = []

        def flood() -> None:
            payload = json.dumps({"tasks": [{"id": 1, "data": {"text": BIG_NOTE}}]}).encode()
            headers = {"content-type": "application/json"}
            with httpx.Client(base_url=server, timeout=60, headers=headers) as c:
                while not stop.is_set():
                    answers.append(c.post("/predict", content=payload).status_code)

        floods = [threading.Thread(target=flood) for _ in range(2)]
        for t in floods:
            t.start()
        try:
            time.sleep(0.5)
            busy = latencies(10)
        finally:
            stop.set()
            for t in floods:
                t.join(60)
    assert answers and set(answers) == {413}
    # The flood costs parsing time on 2 shared cores, never a lane: the median stays well inside a second.
    assert busy[len(busy) // 2] < max(1.0, 20 * alone[len(alone) // 2]), (alone, busy)


# --- the schema fuzz --------------------------------------------------------------------------------
FUZZ = settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), database=None)


def test_every_endpoint_under_schema_fuzz(server: str) -> None:
    """Cases generated from the service's own OpenAPI schema: no 5xx, every status and body as declared.

    (Driven here rather than by schemathesis's pytest plugin, which pytest 9 breaks.)"""
    api = schemathesis.openapi.from_url(f"{server}/openapi.json")
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 15
    for operation in operations:

        @FUZZ
        @given(case=operation.as_strategy())
        def fuzz(case: Any) -> None:
            case.call_and_validate(
                checks=[not_a_server_error, status_code_conformance, response_schema_conformance], timeout=30
            )

        fuzz()
        assert httpx.get(f"{server}/health", timeout=5).status_code == 200, operation.label

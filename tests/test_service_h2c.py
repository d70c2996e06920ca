"""INCEpTION's JDK client offers an h2c upgrade on plain HTTP; the body must still reach the app.

A real uvicorn server with ``kiwi serve``'s settings, sent the headers the JDK sends from a raw socket
and, where a JDK is installed, requests from the JDK's own HttpClient
(``../shared/reference/inception_protocol.md``, pitfall 1).
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest

from recommender.corpora import SAMPLE_DIR
from recommender.extractors.lexicon import LexiconExtractor
from recommender.formats import brat
from recommender.service import create_app
from recommender.service.app import running_server
from recommender.settings import Settings


def raw_post(host: str, port: int, path: str, body: bytes, extra_headers: list[str]) -> tuple[int, bytes]:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "User-Agent: Java-http-client/17.0.12",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        *extra_headers,
    ]
    with socket.create_connection((host, port), timeout=30) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header, _, rest = data.partition(b"\r\n\r\n")
        lines = header.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        length = next(
            (int(v) for k, _, v in (x.partition(": ") for x in lines[1:]) if k.lower() == "content-length"), 0
        )
        while len(rest) < length:
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return status, rest


def test_h2c_upgrade_offer_keeps_the_body(tmp_path: Path, fixtures_dir: Path) -> None:
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(tmp_path / "m")
    settings = Settings(model=tmp_path / "m", model_dir=tmp_path / "models", retrain=False, port=0)
    request = (fixtures_dir / "inception" / "synthetic" / "predict_span_request.json").read_bytes()
    upgrade = [
        "Connection: Upgrade, HTTP2-Settings",
        "HTTP2-Settings: AAMAAABkAAQAoAAAAAIAAAAA",
        "Upgrade: h2c",
    ]
    with running_server(create_app(settings), settings) as url:
        host, port = url.removeprefix("http://").split(":")
        status, body = raw_post(host, int(port), "/inception/entities/predict", request, upgrade)
    assert status == 200, body[:300]
    document = json.loads(body)["document"]
    assert 'inception_internal_predicted="true"' in document
    assert "Started aspirin 81 mg PO daily." in document


JDK_CLIENT = Path(__file__).parent / "jdk" / "InceptionClient.java"


@pytest.mark.skipif(shutil.which("java") is None, reason="no JDK (java) on this machine")
def test_inceptions_own_http_client_gets_suggestions_and_train_answers(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    """The JDK HttpClient built as INCEpTION builds it (HTTP/2 by default: an h2c offer on http://)."""
    LexiconExtractor.train(brat.read(SAMPLE_DIR)).save(tmp_path / "m")
    settings = Settings(model=tmp_path / "m", model_dir=tmp_path / "models", retrain=False, port=0)
    synthetic = fixtures_dir / "inception" / "synthetic"

    def java_post(url: str, body: Path) -> tuple[str, str]:
        done = subprocess.run(
            ["java", str(JDK_CLIENT), url, str(body)], capture_output=True, text=True, timeout=120, check=True
        )
        status, _, answer = done.stdout.partition("\n")
        return status, answer

    with running_server(create_app(settings), settings) as url:
        status, answer = java_post(
            f"{url}/inception/entities/predict", synthetic / "predict_span_request.json"
        )
        assert status == "200 HTTP_1_1", answer[:300]
        document = json.loads(answer)["document"]
        assert 'inception_internal_predicted="true"' in document
        assert "Started aspirin 81 mg PO daily." in document
        status, answer = java_post(f"{url}/inception/entities/train", synthetic / "train_request.json")
        assert status == "204 HTTP_1_1" and answer == ""

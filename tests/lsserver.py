"""A real Label Studio for the tests: PyPI ``label-studio`` in its own venv, on loopback.

One server per test session (it takes tens of seconds to start); each test makes its own project.
The venv is made by ``scripts/setup_external.sh`` (``make test``); without it the tests that need
Label Studio skip with the reason (in CI they fail naming it: ``support.require_or_skip``).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from support import require_or_skip

REPO = Path(__file__).resolve().parents[1]
LS_BIN = REPO / ".cache" / "labelstudio-venv" / "bin" / "label-studio"
LS_TOKEN = "kiwi-e2e-legacy-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.HTTPError:
            result = None
        if result:
            return result
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextmanager
def running_label_studio(data: Path) -> Iterator[httpx.Client]:
    """Label Studio with its data in ``data``, the legacy token ``LS_TOKEN`` accepted; a client of its
    API. Stopped (its whole process group) on exit."""
    if not LS_BIN.exists():
        require_or_skip("Label Studio", f"no venv at {LS_BIN.parent.parent}: run scripts/setup_external.sh")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("USERNAME", "PASSWORD")}
    env |= {
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "kiwi@example.com",
        "LABEL_STUDIO_PASSWORD": "kiwi-e2e-password",
        "LABEL_STUDIO_USER_TOKEN": LS_TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
        "LATEST_VERSION_CHECK": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "COLLECT_ANALYTICS": "false",
    }
    log = (data / "labelstudio.log").open("wb")
    proc = subprocess.Popen(
        [str(LS_BIN), "start", "--no-browser", "--internal-host", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Token {LS_TOKEN}"}, timeout=120
    )
    try:
        wait_for(
            lambda: proc.poll() is None and client.get("/api/version").status_code == 200, "Label Studio", 600
        )
        yield client
    finally:
        client.close()
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()

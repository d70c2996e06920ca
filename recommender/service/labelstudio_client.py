"""Calls from the backend to Label Studio (needs ``KIWI_LABEL_STUDIO_URL`` and ``_TOKEN``).

Two jobs: pull a project's annotations when ``START_TRAINING`` arrives without any, and pin the
project's ``model_version`` to the version of our newest predictions. Label Studio's uncertainty
sampling only orders tasks whose prediction has ``model_version == project.model_version`` and falls
back to random order without a word otherwise; after connecting a backend the project's version is
the backend *title*, which no prediction carries. Label Studio refuses the pin (400) until
predictions of that version are stored, and it stores them only after our ``/predict`` answer, so
pinning runs after the response and retries briefly.

Tokens: a personal access token (a JWT) is exchanged for a 5-minute access token
(``/api/token/refresh/``) and sent as ``Bearer``; a legacy token is sent as ``Token <key>``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import httpx

from recommender.errors import ConfigError

log = logging.getLogger(__name__)

_ACCESS_LIFETIME = 240.0  # seconds; Label Studio's access tokens live 300 s


class LabelStudioClient:
    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)
        self._lock = threading.Lock()
        self._access: tuple[str, float] | None = None
        self._pinned: dict[int, str] = {}

    def close(self) -> None:
        self._client.close()

    # --- auth ------------------------------------------------------------------------------------
    def _headers(self) -> dict[str, str]:
        if self._token.count(".") != 2:
            return {"Authorization": f"Token {self._token}"}
        with self._lock:
            if self._access is None or self._access[1] < time.monotonic():
                r = self._client.post("/api/token/refresh/", json={"refresh": self._token})
                if r.status_code != 200:
                    raise ConfigError(f"Label Studio refused the access token exchange [{r.status_code}]")
                self._access = (r.json()["access"], time.monotonic() + _ACCESS_LIFETIME)
            return {"Authorization": f"Bearer {self._access[0]}"}

    def _request(self, method: str, path: str, **kw: Any) -> httpx.Response:
        return self._client.request(method, path, headers=self._headers(), **kw)

    # --- calls -----------------------------------------------------------------------------------
    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """Every task of the project with its annotations (Label Studio's JSON export)."""
        r = self._request("GET", f"/api/projects/{project_id}/export", params={"exportType": "JSON"})
        if r.status_code != 200:
            raise ConfigError(f"Label Studio export of project [{project_id}] failed [{r.status_code}]")
        data = r.json()
        return data if isinstance(data, list) else []

    def pin_model_version(
        self, project_id: int, version: str, *, attempts: int = 6, first_delay: float = 0.5
    ) -> bool:
        """Set the project's ``model_version`` once predictions of ``version`` exist; True when pinned."""
        if self._pinned.get(project_id) == version:
            return True
        delay = first_delay
        for attempt in range(attempts):
            try:
                r = self._request("PATCH", f"/api/projects/{project_id}", json={"model_version": version})
            except (httpx.HTTPError, ConfigError) as e:
                log.warning("Label Studio project [%s]: pinning failed (%s)", project_id, type(e).__name__)
                return False
            if r.status_code == 200:
                self._pinned[project_id] = version
                log.info("Label Studio project [%s]: model_version pinned to [%s]", project_id, version)
                return True
            if r.status_code != 400 or attempt == attempts - 1:
                log.warning(
                    "Label Studio project [%s]: pinning to [%s] got [%d]", project_id, version, r.status_code
                )
                return False
            time.sleep(delay)  # 400 = predictions of this version not stored yet
            delay *= 2
        return False

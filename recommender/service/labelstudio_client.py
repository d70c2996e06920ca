"""Calls from the backend to Label Studio (needs ``KIWI_LABEL_STUDIO_URL`` and ``_TOKEN``).

Three jobs: pull a project's annotations when ``START_TRAINING`` arrives without any, pin the
project's ``model_version`` to the version of our newest predictions, and give the project's webhooks
to our ``/webhook`` the backend's credentials. ``kiwi precompute --label-studio`` also reads a
project's labeling config and tasks and pushes predictions task by task.

The calls are httpx, not ``label-studio-sdk``: every SDK release (1.x and 2.x) requires numpy >= 2
and pulls pandas, OpenCV, NLTK and code generators into the service, beside our numpy 1.26 stack.

Label Studio's uncertainty sampling only orders tasks whose prediction has
``model_version == project.model_version`` and falls back to random order without a word otherwise;
after connecting a backend the project's version is the backend *title*, which no prediction carries.
Label Studio refuses the pin (400) until predictions of that version are stored, and it stores them
only after our ``/predict`` answer, so pinning runs after the response and retries briefly.

Label Studio sends basic auth only on its ML API calls (``/predict``, ``START_TRAINING``); the webhook
it creates for a backend (``<backend url>/webhook``, all events) carries no credentials, so a backend
behind auth answers every ``ANNOTATION_*`` event with 401. ``authorize_webhooks`` adds our
``Authorization`` header to those webhooks, once per project. A webhook counts as ours only when it
posts to ``/webhook`` of one of the project's ML backends that Label Studio reaches with our basic-auth
user (bearer only: the project's single ML backend), so the credentials never go to another server.

Tokens: a personal access token (a JWT) is exchanged for a 5-minute access token
(``/api/token/refresh/``) and sent as ``Bearer``; a legacy token is sent as ``Token <key>``.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
from typing import Any

import httpx

from recommender.errors import ConfigError
from recommender.settings import Settings

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
        self._webhooks_done: set[int] = set()

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

    def project(self, project_id: int) -> dict[str, Any]:
        """The project (its ``label_config`` among others)."""
        r = self._request("GET", f"/api/projects/{project_id}")
        if r.status_code != 200:
            raise ConfigError(f"Label Studio project [{project_id}] answered [{r.status_code}]")
        return dict(r.json())

    def tasks(self, project_id: int, page_size: int = 100) -> list[dict[str, Any]]:
        """Every task of the project (id and data), page by page."""
        out: list[dict[str, Any]] = []
        page = 1
        while True:
            r = self._request(
                "GET", "/api/tasks/", params={"project": project_id, "page": page, "page_size": page_size}
            )
            if r.status_code == 404 and page > 1:  # past the last page
                break
            if r.status_code != 200:
                raise ConfigError(f"Label Studio tasks of project [{project_id}] answered [{r.status_code}]")
            data = r.json()
            items = data.get("tasks", []) if isinstance(data, dict) else data
            out += [t for t in items if isinstance(t, dict)]
            total = data.get("total") if isinstance(data, dict) else None
            if not items or len(items) < page_size or (total is not None and len(out) >= total):
                break
            page += 1
        return out

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> int:
        """Store ``prediction`` (result, score, model_version) on the task; returns its id."""
        r = self._request("POST", "/api/predictions/", json={"task": task_id, **prediction})
        if r.status_code != 201:
            raise ConfigError(f"Label Studio refused a prediction for task [{task_id}] [{r.status_code}]")
        return int(r.json()["id"])

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

    def authorize_webhooks(self, project_id: int, authorization: str, *, basic_user: str | None) -> int:
        """Add ``Authorization`` to the project's webhooks to this backend; returns how many changed.

        Runs once per project (also after a failure, which is logged as one warning line).
        """
        with self._lock:
            if project_id in self._webhooks_done:
                return 0
            self._webhooks_done.add(project_id)
        try:
            targets = self._backend_webhook_urls(project_id, basic_user)
            changed = 0
            for hook in self._list("/api/webhooks/", project_id):
                url, headers = hook.get("url"), hook.get("headers") or {}
                if not isinstance(url, str) or url.rstrip("/") not in targets:
                    continue
                if headers.get("Authorization") == authorization:
                    continue
                # Label Studio's update resets ``actions`` when the body lacks them: send them back.
                kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                body = {"url": url, "headers": kept | {"Authorization": authorization}}
                r = self._request(
                    "PATCH",
                    f"/api/webhooks/{hook['id']}/",
                    json=body | {"actions": hook.get("actions") or []},
                )
                if r.status_code != 200:
                    raise ConfigError(f"webhook [{hook['id']}] update got [{r.status_code}]")
                changed += 1
        except ConfigError as e:
            log.warning("Label Studio project [%s]: webhooks keep no credentials (%s)", project_id, e)
            return 0
        except (httpx.HTTPError, ValueError, KeyError, TypeError, AttributeError) as e:
            log.warning(
                "Label Studio project [%s]: webhooks keep no credentials (%s)", project_id, type(e).__name__
            )
            return 0
        if changed:
            log.info(
                "Label Studio project [%s]: %d webhook(s) now carry the backend's credentials",
                project_id,
                changed,
            )
        return changed

    def _backend_webhook_urls(self, project_id: int, basic_user: str | None) -> set[str]:
        """``<url>/webhook`` of the project's ML backends that are this backend."""
        backends = [b for b in self._list("/api/ml/", project_id) if isinstance(b.get("url"), str)]
        if basic_user is not None:
            ours = [b for b in backends if b.get("basic_auth_user") == basic_user]
        else:
            ours = backends if len(backends) == 1 else []
        if not ours:
            raise ConfigError(f"none of its [{len(backends)}] ML backend(s) is recognisably this backend")
        return {f"{b['url'].rstrip('/')}/webhook" for b in ours}

    def _list(self, path: str, project_id: int) -> list[dict[str, Any]]:
        r = self._request("GET", path, params={"project": project_id})
        if r.status_code != 200:
            raise ConfigError(f"GET {path} got [{r.status_code}]")
        data = r.json()
        items = data.get("results", []) if isinstance(data, dict) else data  # paginated or plain
        return [x for x in items if isinstance(x, dict)]


def backend_authorization(settings: Settings) -> str | None:
    """The ``Authorization`` value this backend accepts (basic auth first: Label Studio speaks it)."""
    if settings.basic_auth_user is not None and settings.basic_auth_password is not None:
        pair = f"{settings.basic_auth_user}:{settings.basic_auth_password.get_secret_value()}"
        return f"Basic {base64.b64encode(pair.encode()).decode()}"
    if settings.auth_token is not None:
        return f"Bearer {settings.auth_token.get_secret_value()}"
    return None

"""Calls from the backend to Label Studio (needs ``KIWI_LABEL_STUDIO_URL`` and ``_TOKEN``).

Three jobs: pull a project's annotations when ``START_TRAINING`` arrives without any, pin the
project's ``model_version`` to the version of our newest predictions, and give the project's webhooks
to our ``/webhook`` the backend's credentials. ``kiwi precompute --label-studio`` also reads a
project's labeling config and tasks and pushes predictions task by task.

The calls go through ``label-studio-sdk``, imported on the first call: it takes about a second and
pulls pandas, which a service without Label Studio never needs.

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

Tokens are the SDK's business: it exchanges a personal access token (a JWT) for short-lived access
tokens sent as ``Bearer`` and sends a legacy token as ``Token <key>``.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import httpx

from recommender.errors import ConfigError
from recommender.settings import Settings

if TYPE_CHECKING:
    from label_studio_sdk.client import LabelStudio

log = logging.getLogger(__name__)
# The SDK's package imports its parts lazily, and two threads importing it for the first time at once
# can get a partially initialized module: every import of it here holds this lock.
_IMPORTING = threading.Lock()


@contextmanager
def _answer(what: str) -> Iterator[None]:
    """Label Studio's refusals and transport failures as ConfigError ``<what> [<status>]``."""
    with _IMPORTING:
        from label_studio_sdk.core.api_error import ApiError

    try:
        yield
    except ApiError as e:
        raise ConfigError(f"{what} [{e.status_code}]") from None
    except httpx.HTTPError as e:
        raise ConfigError(f"{what} [{type(e).__name__}]") from None
    except json.JSONDecodeError:  # the SDK's token exchange reads any error answer as JSON
        raise ConfigError(f"{what} [not JSON]") from None


class LabelStudioClient:
    def __init__(
        self, url: str, token: str, *, timeout: float = 30.0, transport: httpx.BaseTransport | None = None
    ) -> None:
        self.url = url.rstrip("/")
        self._token = token
        self._http = httpx.Client(timeout=timeout, transport=transport)
        self._lock = threading.Lock()
        self._ls: LabelStudio | None = None
        self._pinned: dict[int, str] = {}
        self._webhooks_done: set[int] = set()

    def close(self) -> None:
        self._http.close()

    def _sdk(self) -> LabelStudio:
        """The SDK client, made on the first call (it rejects an expired personal access token)."""
        with self._lock:
            if self._ls is None:
                with _IMPORTING:
                    from label_studio_sdk.client import LabelStudio

                self._ls = LabelStudio(base_url=self.url, api_key=self._token, httpx_client=self._http)
            return self._ls

    # --- calls -----------------------------------------------------------------------------------
    def export_tasks(self, project_id: int) -> list[dict[str, Any]]:
        """The project's annotated tasks with their annotations (Label Studio's JSON export)."""
        with _answer(f"Label Studio export of project [{project_id}] failed"):
            raw = b"".join(self._sdk().projects.exports.download_sync(project_id, export_type="JSON"))
        data = json.loads(raw)
        return data if isinstance(data, list) else []

    def project(self, project_id: int) -> dict[str, Any]:
        """The project (its ``label_config`` among others)."""
        with _IMPORTING:
            from label_studio_sdk.projects.client import ProjectsClient

        with _answer(f"Label Studio project [{project_id}] answered"):
            # The generated get, not the SDK's override: that one re-validates the answer against every
            # field its schema requires and rejects a Label Studio version lacking any of them.
            return ProjectsClient.get(self._sdk().projects, project_id).dict()

    def tasks(self, project_id: int, page_size: int = 100, *, versions: bool = False) -> list[dict[str, Any]]:
        """Every task of the project (id and data); the SDK's pager asks page by page. ``versions``:
        also ``model_versions``, the model versions of the task's predictions (the pages then carry
        every prediction and annotation, so they are heavier)."""
        fields = "all" if versions else "task_only"
        with _answer(f"Label Studio tasks of project [{project_id}] answered"):
            pages = self._sdk().tasks.list(project=project_id, fields=fields, page_size=page_size)
            if not versions:
                return [{"id": t.id, "data": t.data} for t in pages]
            return [
                {
                    "id": t.id,
                    "data": t.data,
                    "model_versions": [p.model_version for p in getattr(t, "predictions", None) or []],
                }
                for t in pages
            ]

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> int:
        """Store ``prediction`` (result, score, model_version) on the task; returns its id."""
        with _answer(f"Label Studio refused a prediction for task [{task_id}]"):
            return int(self._sdk().predictions.create(task=task_id, **prediction).id)

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> bool:
        """Store ``predictions`` (each with its ``task``) in one request; True when stored, False when
        Label Studio refused them as invalid (400: it checks every one before storing any, up to 500
        a request). Label Studio's bulk import is about eight times as fast as a request per task
        (bench/bench_labelstudio_push.py); the SDK has no call for it, so it goes through the SDK's
        own HTTP client, which authenticates as every SDK call does."""
        what = f"Label Studio refused predictions for project [{project_id}]"
        with _answer(what):
            answer = self._sdk()._client_wrapper.httpx_client.request(
                f"api/projects/{project_id}/import/predictions", method="POST", json=predictions
            )  # no retries (the SDK's default): a retried import could store its predictions twice
        if answer.status_code == 400:
            return False
        if not answer.is_success:
            raise ConfigError(f"{what} [{answer.status_code}]")
        return True

    def pin_model_version(
        self, project_id: int, version: str, *, attempts: int = 6, first_delay: float = 0.5
    ) -> bool:
        """Set the project's ``model_version`` once predictions of ``version`` exist; True when pinned."""
        with _IMPORTING:
            from label_studio_sdk.core.api_error import ApiError

        if self._pinned.get(project_id) == version:
            return True
        delay = first_delay
        for attempt in range(attempts):
            try:
                self._sdk().projects.update(project_id, model_version=version)
            except ApiError as e:
                if e.status_code == 400 and attempt < attempts - 1:
                    time.sleep(delay)  # 400 = predictions of this version not stored yet
                    delay *= 2
                    continue
                log.warning(
                    "Label Studio project [%s]: pinning to [%s] got [%s]", project_id, version, e.status_code
                )
                return False
            except (httpx.HTTPError, json.JSONDecodeError) as e:
                log.warning("Label Studio project [%s]: pinning failed (%s)", project_id, type(e).__name__)
                return False
            self._pinned[project_id] = version
            log.info("Label Studio project [%s]: model_version pinned to [%s]", project_id, version)
            return True
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
            with _answer("GET /api/webhooks/ got"):
                hooks = self._sdk().webhooks.list(project=str(project_id))
            changed = 0
            for hook in hooks:
                headers = hook.headers or {}
                if not isinstance(hook.url, str) or hook.url.rstrip("/") not in targets:
                    continue
                if headers.get("Authorization") == authorization:
                    continue
                kept = {k: v for k, v in headers.items() if k.lower() != "authorization"}
                with _answer(f"webhook [{hook.id}] update got"):
                    # Label Studio's update resets ``actions`` when the body lacks them: send them back.
                    self._sdk().webhooks.update(
                        hook.id,
                        url=hook.url,
                        headers=kept | {"Authorization": authorization},
                        actions=hook.actions or [],
                    )
                changed += 1
        except ConfigError as e:
            log.warning("Label Studio project [%s]: webhooks keep no credentials (%s)", project_id, e)
            return 0
        except (ValueError, KeyError, TypeError, AttributeError) as e:
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
        with _answer("GET /api/ml/ got"):
            backends = [b for b in self._sdk().ml.list(project=project_id) if isinstance(b.url, str)]
        if basic_user is not None:
            ours = [b for b in backends if b.basic_auth_user == basic_user]
        else:
            ours = backends if len(backends) == 1 else []
        if not ours:
            raise ConfigError(f"none of its [{len(backends)}] ML backend(s) is recognisably this backend")
        return {f"{b.url.rstrip('/')}/webhook" for b in ours}


def backend_authorization(settings: Settings) -> str | None:
    """The ``Authorization`` value this backend accepts (basic auth first: Label Studio speaks it)."""
    if settings.basic_auth_user is not None and settings.basic_auth_password is not None:
        pair = f"{settings.basic_auth_user}:{settings.basic_auth_password.get_secret_value()}"
        return f"Basic {base64.b64encode(pair.encode()).decode()}"
    if settings.auth_token is not None:
        return f"Bearer {settings.auth_token.get_secret_value()}"
    return None

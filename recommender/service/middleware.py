"""Plain ASGI middlewares: authentication, the request size limit, and request timing for ``/metrics``.

They wrap the whole application, so the OpenAPI pages are covered too, and they never read more
than ``max_request_bytes`` of a body.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import secrets
import threading
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from pydantic import SecretStr

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


async def _reply(send: Send, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value
    return None


class AuthMiddleware:
    """Accept ``Authorization: Bearer <token>`` and/or HTTP basic auth, whichever is configured.

    Comparisons are constant-time. A 401 names the schemes the client may use.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        token: SecretStr | None,
        basic_user: str | None,
        basic_password: SecretStr | None,
    ) -> None:
        self.app = app
        self.token = token.get_secret_value().encode() if token else None
        self.basic = (
            f"{basic_user}:{basic_password.get_secret_value()}".encode()
            if basic_user is not None and basic_password is not None
            else None
        )

    def _allowed(self, value: bytes | None) -> bool:
        if value is None:
            return False
        scheme, _, credentials = value.strip().partition(b" ")
        scheme, credentials = scheme.lower(), credentials.strip()
        if scheme == b"bearer" and self.token is not None:
            return secrets.compare_digest(credentials, self.token)
        if scheme == b"basic" and self.basic is not None:
            try:
                decoded = base64.b64decode(credentials, validate=True)
            except (binascii.Error, ValueError):
                return False
            return secrets.compare_digest(decoded, self.basic)
        return False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or self._allowed(_header(scope, b"authorization")):
            await self.app(scope, receive, send)
            return
        challenges = []
        if self.basic is not None:
            challenges.append((b"www-authenticate", b'Basic realm="kiwi"'))
        if self.token is not None:
            challenges.append((b"www-authenticate", b'Bearer realm="kiwi"'))
        await _reply(send, 401, "authentication required", challenges)


class CatchAllMiddleware:
    """A bug answers 500 with the exception's type and the service carries on.

    Starlette's own last-resort handler re-raises, and the server then logs the exception message,
    which may quote the note; here only the type and the place are logged, the traceback only when
    ``log_note_text`` is on.
    """

    def __init__(self, app: ASGIApp, *, log_note_text: bool = False) -> None:
        self.app = app
        self.log_note_text = log_note_text

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception as exc:
            frame = traceback.extract_tb(exc.__traceback__)[-1] if exc.__traceback__ else None
            log.error(
                "%s %s -> 500 %s at %s",
                scope.get("method"),
                scope.get("path"),
                type(exc).__name__,
                f"{frame.filename}:{frame.lineno}" if frame else "?",
                exc_info=exc if self.log_note_text else None,
            )
            if scope["type"] == "http" and not started:
                await _reply(send, 500, f"internal error ({type(exc).__name__})")


class SizeLimitMiddleware:
    """413 for a body over ``limit`` bytes: at once from Content-Length, else while it streams in."""

    def __init__(self, app: ASGIApp, *, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _reply(send, 413, f"request body over the limit of {self.limit} bytes")
            return
        # Chunked or lying clients: buffer up to the limit before the app sees anything.
        chunks: list[bytes] = []
        size = 0
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await _reply(send, 413, f"request body over the limit of {self.limit} bytes")
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)


class RequestStats:
    """Counts and recent latencies per route for ``/metrics``; thread-safe, bounded memory."""

    def __init__(self, keep: int = 1000) -> None:
        self._lock = threading.Lock()
        self._keep = keep
        self._count: dict[str, int] = {}
        self._errors: dict[str, int] = {}
        self._recent: dict[str, deque[float]] = {}

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            self._count[route] = self._count.get(route, 0) + 1
            if status >= 400:
                self._errors[route] = self._errors.get(route, 0) + 1
            self._recent.setdefault(route, deque(maxlen=self._keep)).append(seconds)

    def snapshot(self) -> dict[str, dict[str, float | int]]:
        with self._lock:
            out: dict[str, dict[str, float | int]] = {}
            for route, n in sorted(self._count.items()):
                recent = sorted(self._recent[route])
                out[route] = {
                    "requests": n,
                    "errors": self._errors.get(route, 0),
                    "p50_seconds": round(recent[len(recent) // 2], 4),
                    "p95_seconds": round(recent[min(len(recent) - 1, int(len(recent) * 0.95))], 4),
                }
            return out


class StatsMiddleware:
    def __init__(self, app: ASGIApp, *, stats: RequestStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            # The route template, not the path: unknown paths (scanners) do not grow the table.
            if route is not None and hasattr(route, "path"):
                self.stats.record(f"{scope['method']} {route.path}", status, time.perf_counter() - start)

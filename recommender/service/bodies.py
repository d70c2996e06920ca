"""JSON request bodies, parsed once before FastAPI validates them: lone surrogates replaced, depth bounded.

JSON may spell a lone UTF-16 surrogate (``"\\ud800"``); Python keeps it in the string and every
later encoding of it (SQLite, XML, the response) fails. It becomes U+FFFD, one code point for one, so
offsets into the text stay right. Nesting deeper than ``MAX_DEPTH`` is refused: neither protocol nests
half as deep, and recursive code further on would overflow. A body that is no JSON at all is a 400
that says where it broke, never quoting it (it is a clinical note).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute

from recommender.errors import FormatError

MAX_DEPTH = 64
_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_json(value: Any, depth: int = 0) -> Any:
    """``value`` with lone surrogates in its strings replaced; FormatError past ``MAX_DEPTH``."""
    if isinstance(value, str):
        return value if value.isascii() or not _SURROGATE.search(value) else _SURROGATE.sub("\ufffd", value)
    if isinstance(value, list | dict) and depth >= MAX_DEPTH:
        raise FormatError(f"JSON nested deeper than [{MAX_DEPTH}] levels")
    if isinstance(value, list):
        return [clean_json(v, depth + 1) for v in value]
    if isinstance(value, dict):
        return {clean_json(k, depth + 1): clean_json(v, depth + 1) for k, v in value.items()}
    return value


def parse_json(body: bytes) -> Any:
    try:
        data = json.loads(body)
    except json.JSONDecodeError as e:
        raise FormatError(f"malformed JSON at line {e.lineno} column {e.colno} ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"request body is not UTF-8 ({e.reason} at byte {e.start})") from None
    except RecursionError:
        raise FormatError(f"JSON nested deeper than [{MAX_DEPTH}] levels") from None
    return clean_json(data)


def _is_json(request: Request) -> bool:
    """The bodies FastAPI reads as JSON: no content type, application/json or ``+json``."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    return not kind or kind == "application/json" or kind.endswith("+json")


class _CleanRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_clean_json"):
            self._clean_json = parse_json(await self.body())
        return self._clean_json


class CleanJsonRoute(APIRoute):
    """Parses the body before FastAPI does, so its errors reach the KiwiError handlers (FastAPI
    turns anything raised while it parses into a bare "error parsing the body")."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def clean_handler(request: Request) -> Response:
            request = _CleanRequest(request.scope, request.receive)
            if _is_json(request) and await request.body():
                await request.json()
            return await handler(request)

        return clean_handler

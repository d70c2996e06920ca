"""Every error the package raises on purpose.

Messages name the offending value in brackets. The CLI prints ``str(error)`` on one line and the
service maps each class to one HTTP status in ``recommender.service.http_errors``.
"""

from __future__ import annotations

from pathlib import Path


class KiwiError(Exception):
    """Base class: a problem the user can fix, reported without a traceback."""

    def __init__(self, message: str, *, source: str | Path | None = None) -> None:
        self.source = str(source) if source is not None else None
        super().__init__(f"{self.source}: {message}" if self.source else message)


class SchemaError(KiwiError):
    """A label, type or relation that the Kiwi schema does not allow."""


class FormatError(KiwiError):
    """Input that cannot be parsed in the format it claims to be (malformed XMI, JSON, brat...)."""


class DocumentError(KiwiError):
    """A document that parses but is inconsistent: offsets outside the text, dangling relations."""


class ModelError(KiwiError):
    """A model folder or base model that cannot be found, loaded or used."""


class ConfigError(KiwiError):
    """A setting or option with an unusable value."""


class NotFoundError(KiwiError):
    """A named thing (corpus, recommender, model version, job) that does not exist."""


class BusyError(KiwiError):
    """A training job for the same recommender and project is already running."""


class ConflictError(KiwiError):
    """A change refused because what it was based on changed meanwhile (the promoted model)."""


class UnavailableError(KiwiError):
    """A service the request needs (the database) cannot be reached right now; retry later."""


class LimitError(KiwiError):
    """An input over a configured limit (a note longer than the service predicts on at once)."""


class OverloadError(KiwiError):
    """No compute lane came free within the prediction's time budget."""

"""The service's side of the suggestion log: record what was suggested, score what was corrected.

The protocol handlers call two hooks: ``record`` once a prediction has been computed or served
(Label Studio predict, INCEpTION predict) and ``score`` once a correction is stored (Label Studio
annotation, INCEpTION train). Both run after the answer on one writer thread, in the order they were
called, so a request never waits on the log's commit and a correction is scored after the suggestion
that preceded it was written. ``view`` is the figures per model version for ``/status`` and the page.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from sqlalchemy.engine import Engine

from recommender.errors import KiwiError
from recommender.evaluation.correction_scores import score_correction
from recommender.evaluation.evidence import by_version, notes_of
from recommender.settings import Settings
from recommender.store.corrections import StoredCorrection
from recommender.store.suggestions import NewSuggestion, SuggestionLog, text_hash

log = logging.getLogger(__name__)

_PRUNE_EVERY_SECONDS = 3600.0
_FALLBACK = re.compile(r"^(?P<version>.+) \(fallback for (?P<slow>.+)\)$")


def split_version(shown: str) -> tuple[str, str | None]:
    """The version that predicted and the slow model it stood in for, from the version shown
    (``ENCODER (fallback for LLAMA)``, see ``service/predicting.py``)."""
    m = _FALLBACK.match(shown)
    return (m["version"], m["slow"]) if m else (shown, None)


class Evidence:
    """One per service: the suggestion log, its writer thread and the figures it gives."""

    def __init__(self, settings: Settings, engine: Engine) -> None:
        self.enabled = settings.suggestion_log
        self.retention_days = settings.suggestion_retention_days
        self.log = SuggestionLog(engine)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kiwi-suggestion-log")
        self._pruned = 0.0

    # --- hooks ---------------------------------------------------------------------------------------
    def record(self, items: Sequence[NewSuggestion]) -> None:
        """Log ``items`` (predictions as the annotator is shown them) after the answer."""
        if self.enabled and items:
            self._submit(self._record, list(items))

    def score(self, project: str, note_id: str, stored: StoredCorrection | None) -> None:
        """Score a just-stored correction (None: a resend, nothing new) against the latest
        suggestion for its note, after the answer."""
        if self.enabled and stored is not None and stored.document is not None:
            self._submit(self._score, project, note_id, stored)

    def flush(self, timeout: float = 30.0) -> None:
        """Wait for what the hooks queued so far (tests, shutdown)."""
        with contextlib.suppress(RuntimeError):
            self._writer.submit(lambda: None).result(timeout)

    def close(self) -> None:
        self._writer.shutdown(wait=True)

    # --- the writer thread ---------------------------------------------------------------------------
    def _submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any] | None:
        try:
            return self._writer.submit(self._guarded, fn, *args)
        except RuntimeError:  # shutting down: the answer went out all the same
            return None

    @staticmethod
    def _guarded(fn: Callable[..., Any], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:  # a database outage or a bad stored row: the log misses this one only
            level = logging.WARNING if isinstance(e, KiwiError) else logging.ERROR
            log.log(level, "suggestion log: %s not written (%s)", fn.__name__.strip("_"), type(e).__name__)

    def _record(self, items: list[NewSuggestion]) -> None:
        self.log.record(items)
        now = time.monotonic()
        if now - self._pruned > _PRUNE_EVERY_SECONDS:
            self._pruned = now
            removed = self.log.prune(self.retention_days)
            if removed:
                log.info("suggestion log: %d suggestion(s) past the retention deleted", removed)

    def _score(self, project: str, note_id: str, stored: StoredCorrection) -> None:
        corrected = stored.document
        assert corrected is not None
        found = self.log.latest(project, note_id, text_hash(corrected.text))
        for task, suggestion in sorted(found.items()):
            figures = score_correction(suggestion.document, corrected, task)  # type: ignore[arg-type]
            self.log.add_score(suggestion, stored.id, stored.annotator, figures)
        if not found:
            log.debug("suggestion log: no suggestion for a corrected note of project %s", project)

    # --- figures -------------------------------------------------------------------------------------
    def view(self, dev: Callable[[str], dict[str, Any] | None]) -> dict[str, Any]:
        """Per model version, oldest first: the figures from the corrections, with the development
        score ``dev(version)`` beside them."""
        if not self.enabled:
            return {}
        versions = by_version(notes_of(self.log.scores()))
        return {v: {**figures, "dev": dev(v)} for v, figures in versions.items()}


__all__ = ["Evidence", "split_version"]

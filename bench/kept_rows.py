"""A benchmark's rows kept in its JSON as each is measured, so that a run cut short (a session's end, a
kill) is taken up again by the same command: the rows of a run of the same identity are read back and
only the missing ones are measured."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


class KeptRows:
    """The rows of ``path`` when its ``meta`` equals ``identity`` (model version, notes, settings),
    else none; ``add`` appends rows (those measured together) and rewrites the file at once."""

    def __init__(self, path: Path, identity: dict[str, Any]) -> None:
        self.path, self.identity = path, identity
        self.rows: list[dict[str, Any]] = []
        if path.is_file():
            saved = json.loads(path.read_text(encoding="utf-8"))
            if saved.get("meta") == json.loads(json.dumps(identity)):  # as saved: tuples become lists
                self.rows = saved.get("rows", [])
        self.resumed = len(self.rows)

    def find(self, **key: Any) -> dict[str, Any] | None:
        """The kept row whose fields include ``key``."""
        return next((r for r in self.rows if all(r.get(k) == v for k, v in key.items())), None)

    def add(self, *rows: dict[str, Any], replacing: dict[str, Any] | None = None) -> None:
        """Keep ``rows``, in place of the kept rows whose fields include ``replacing``."""
        if replacing:
            self.rows = [r for r in self.rows if not all(r.get(k) == v for k, v in replacing.items())]
        self.rows.extend(rows)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        report = {"meta": self.identity, "rows": self.rows}
        self.path.write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")

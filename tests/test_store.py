"""The correction store: dedup of resends, history, latest versions, tombstones, durability under kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import pytest
import sqlalchemy as sa

from recommender.document import Document
from recommender.errors import ConfigError, UnavailableError
from recommender.formats.jsonl import to_dict
from recommender.store import CorrectionStore, content_hash
from recommender.store.database import head_revision, open_engine, schema_revision
from recommender.store.tables import corrections


def _doc(doc_id: str = "n1", label: str = "problem") -> Document:
    text = "Patient denies chest pain 🩺 today."
    doc = Document(id=doc_id, text=text)
    pain = doc.add_span(label, text.index("chest pain"), text.index("chest pain") + 10)
    neg = doc.add_span("negation", text.index("denies"), text.index("denies") + 6)
    doc.add_relation(pain, neg)
    return doc


@pytest.fixture
def store(database_url: str) -> Iterator[CorrectionStore]:
    s = CorrectionStore(database_url)
    yield s
    s.close()


def test_identical_resend_is_deduplicated(store: CorrectionStore) -> None:
    first = store.add("p", "n1", "ann", "inception", _doc())
    assert first is not None and first.revision == 1
    # Same content with other span ids, scores and meta: still a resend.
    again = _doc()
    again.spans[0].id, again.spans[0].score = "T9", 0.5
    again.relations[0].head = "T9"
    again.meta["x"] = 1
    assert content_hash(again) == content_hash(_doc())
    assert store.add("p", "n1", "ann", "inception", again) is None
    # Another annotator or another project is not a resend.
    assert store.add("p", "n1", "other", "inception", _doc()) is not None
    assert store.add("q", "n1", "ann", "inception", _doc()) is not None
    assert store.count_since("p", 0) == 2
    assert store.count_since(None, 0) == 3


def test_history_and_latest(store: CorrectionStore) -> None:
    a = store.add("p", "n1", "ann", "labelstudio", _doc())
    b = store.add("p", "n1", "ann", "labelstudio", _doc(label="test"))
    # Going back to the first version is a change, not a resend.
    c = store.add("p", "n1", "ann", "labelstudio", _doc())
    store.add("p", "n2", "ann", "labelstudio", _doc("n2"))
    assert a and b and c
    assert [h.revision for h in store.history("p", "n1")] == [1, 2, 3]
    assert [h.content_hash for h in store.history("p", "n1")] == [
        a.content_hash,
        b.content_hash,
        a.content_hash,
    ]
    latest = store.latest("p")
    assert sorted(d.id for d in latest) == ["n1", "n2"]
    n1 = next(d for d in latest if d.id == "n1")
    assert n1.meta["correction"]["id"] == c.id and n1.meta["correction"]["annotator"] == "ann"
    assert [s.label for s in n1.spans] == ["problem", "negation"]
    assert n1.text == _doc().text  # non-BMP text survives the round trip
    assert store.last_id("p") == store.last_id() == 4
    assert store.count_since("p", c.id) == 1
    assert store.projects() == ["p"]


def test_delete_records_a_tombstone(store: CorrectionStore) -> None:
    store.add("p", "n1", "ann", "labelstudio", _doc())
    store.add("p", "n1", "bob", "labelstudio", _doc())
    gone = store.delete("p", "n1", "ann", "labelstudio")
    assert gone is not None and gone.deleted and gone.document is None
    assert store.delete("p", "n1", "ann") is None  # already deleted
    assert store.delete("p", "nope", "ann") is None  # never stored
    assert [d.meta["correction"]["annotator"] for d in store.latest("p")] == ["bob"]
    assert [(h.annotator, h.deleted) for h in store.history("p", "n1")] == [
        ("ann", False),
        ("bob", False),
        ("ann", True),
    ]
    # Re-adding after a delete stores the document again, even with identical content.
    back = store.add("p", "n1", "ann", "labelstudio", _doc())
    assert back is not None and back.revision == 3
    assert len(store.latest("p")) == 2


def test_reopen_after_close(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/c.sqlite3"
    s = CorrectionStore(url)
    s.add("p", "n1", "ann", "inception", _doc())
    s.close()
    s2 = CorrectionStore(url)
    assert [d.id for d in s2.latest("p")] == ["n1"]
    assert s2.add("p", "n1", "ann", "inception", _doc()) is None
    with sqlite3.connect(tmp_path / "c.sqlite3") as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s2.check() == []
    s2.close()


def test_bad_url() -> None:
    with pytest.raises(ConfigError, match=r"\[nonsense\]"):
        CorrectionStore("nonsense")


WRITER = textwrap.dedent(
    """
    import sys
    from recommender.document import Document
    from recommender.store import CorrectionStore

    store = CorrectionStore(sys.argv[1])
    for i in range(int(sys.argv[2])):
        doc = Document(id=f"n{i % 7}", text=f"note {i} with chest pain")
        doc.add_span("problem", doc.text.index("chest"), len(doc.text))
        stored = store.add("p", doc.id, f"a{i % 3}", "inception", doc)
        print(stored.id, flush=True)
    """
)


def test_kill_9_loses_nothing_acknowledged(tmp_path: Path, database_url: str) -> None:
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    proc = subprocess.Popen(
        [sys.executable, str(script), database_url, "100000"],
        stdout=subprocess.PIPE,
        text=True,
    )
    acknowledged: list[int] = []
    assert proc.stdout is not None
    for line in proc.stdout:
        acknowledged.append(int(line))
        if len(acknowledged) >= 60:
            break
    os.kill(proc.pid, signal.SIGKILL)
    rest, _ = proc.communicate(timeout=30)
    # Lines printed before the kill were acknowledged too; a torn last line was not.
    acknowledged += [int(x) for x in rest.split("\n")[:-1] if x.strip()]
    assert proc.returncode == -signal.SIGKILL

    store = CorrectionStore(database_url)
    assert store.check() == []
    for i in acknowledged:
        stored = store.get(i)
        assert stored is not None and stored.document is not None, i
    assert store.last_id() >= acknowledged[-1]
    # The store still works after the crash.
    assert store.add("p", "fresh", "a0", "inception", _doc()) is not None
    store.close()


def test_migrations_from_an_empty_database(database_url: str) -> None:
    store = CorrectionStore(database_url)
    assert schema_revision(store.engine) == head_revision()
    tables = set(sa.inspect(store.engine).get_table_names())
    assert {"corrections", "training_jobs", "alembic_version"} <= tables
    assert ("procrastinate_jobs" in tables) == database_url.startswith("postgresql")
    store.close()


def test_migrations_adopt_a_database_made_before_them(database_url: str) -> None:
    """Today's schema (made by create_all, no alembic_version) with data in it is migrated in place."""
    engine = open_engine(database_url)
    corrections.create(engine)
    with engine.begin() as conn:
        conn.execute(
            sa.insert(corrections).values(
                project="p",
                document_id="n1",
                annotator="ann",
                tool="inception",
                revision=1,
                created=datetime.now(UTC),
                content_hash=content_hash(_doc()),
                deleted=False,
                document=json.dumps(to_dict(_doc())),
            )
        )
    assert schema_revision(engine) is None
    engine.dispose()
    store = CorrectionStore(database_url)
    assert schema_revision(store.engine) == head_revision()
    assert [d.id for d in store.latest("p")] == ["n1"]
    assert store.add("p", "n1", "ann", "inception", _doc()) is None  # the old row is the newest version
    assert store.add("p", "n2", "ann", "inception", _doc("n2")).revision == 1  # type: ignore[union-attr]
    assert store.check() == []
    store.close()


def test_replicas_starting_together_migrate_once(database_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        stores = list(pool.map(lambda _: CorrectionStore(database_url), range(4)))
    for s in stores:
        assert schema_revision(s.engine) == head_revision()
    with stores[0].engine.connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM alembic_version")).scalar_one() == 1
    for s in stores:
        s.close()


def test_a_replica_waits_out_a_long_sqlite_migration(tmp_path: Path) -> None:
    """Another replica holds the write lock of a new (not yet WAL) database for longer than sqlite3's
    5 s default: this one waits for it, from its first statement (the journal switch) on, instead of
    failing with "database is locked" as CI's loaded cores once made it."""
    path = tmp_path / "c.sqlite3"
    holder = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    released = threading.Timer(6.0, holder.execute, ("COMMIT",))
    released.start()
    try:
        store = CorrectionStore(f"sqlite:///{path}")
    finally:
        released.join()
        holder.close()
    assert schema_revision(store.engine) == head_revision()
    store.close()


def test_database_outage_is_unavailable_then_recovers(postgres) -> None:
    """PostgreSQL stopped: the store says 503-unavailable (not a crash); started again: it works on,
    and every correction acknowledged before the outage is there."""
    store = CorrectionStore(postgres.new_database())
    acknowledged = store.add("p", "n1", "ann", "inception", _doc())
    assert acknowledged is not None
    postgres.stop()
    try:
        with pytest.raises(UnavailableError, match="retry later"):
            store.add("p", "n2", "ann", "inception", _doc("n2"))
        with pytest.raises(UnavailableError):
            store.latest("p")
    finally:
        postgres.start()
    assert store.get(acknowledged.id) is not None
    assert store.add("p", "n2", "ann", "inception", _doc("n2")) is not None
    assert sorted(d.id for d in store.latest("p")) == ["n1", "n2"]
    store.close()

"""A corpus read for a batch run, and its results written out.

Reading is lenient where a strict reader would stop the whole run: a note that is empty, over the
length limit or not UTF-8, or a JSON line that does not parse, is set aside under its id with the
reason (never its text) and the others are predicted. Formats whose files hold structure across
notes (XMI, a Label Studio export, markup, BIO) are read by their own strict readers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from recommender.document import Document
from recommender.errors import FormatError, NotFoundError
from recommender.formats import FORMATS, detect_format, read_documents, write_documents
from recommender.formats.jsonl import to_dict

PARQUET = "parquet"
OUTPUT_FORMATS = (*FORMATS, PARQUET)


@dataclass(frozen=True)
class Note:
    id: str
    text: str


@dataclass
class Corpus:
    notes: list[Note] = field(default_factory=list)
    bad: dict[str, str] = field(default_factory=dict)  # note id -> why it is not predicted

    def add(self, note_id: str, text: str | None, max_chars: int) -> None:
        if text is None:
            self.bad[note_id] = "no text"
        elif not text.strip():
            self.bad[note_id] = "empty"
        elif len(text) > max_chars:
            self.bad[note_id] = f"over the length limit ({len(text)} > {max_chars} characters)"
        else:
            self.notes.append(Note(note_id, text))


def read_corpus(path: Path, fmt: str | None, max_chars: int) -> Corpus:
    """The notes of a folder (.txt, as brat), a JSONL or Parquet file (fields ``id`` and ``text``), or
    any format kiwi reads; ``fmt`` None detects it."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError("no such file or folder", source=path)
    if fmt is None:
        fmt = PARQUET if path.suffix.lower() == ".parquet" else detect_format(path)
    corpus = Corpus()
    if fmt == PARQUET:
        _parquet(path, corpus, max_chars)
    elif fmt == "brat" and path.is_dir():
        for file in sorted(path.glob("*.txt")):
            try:
                text: str | None = file.read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                corpus.bad[file.stem] = "undecodable (not UTF-8)"
                continue
            corpus.add(file.stem, text, max_chars)
    elif fmt == "jsonl":
        _jsonl(path, corpus, max_chars)
    else:
        for doc in read_documents(path, fmt):
            corpus.add(doc.id, doc.text, max_chars)
    _check_unique(corpus)
    return corpus


def _jsonl(path: Path, corpus: Corpus, max_chars: int) -> None:
    # Only "\n" ends a record (as recommender.formats.jsonl); each line is decoded on its own, so one
    # bad line is one bad note.
    for lineno, raw in enumerate(path.read_bytes().split(b"\n"), 1):
        if not raw.strip():
            continue
        where = f"line {lineno}"
        try:
            data = json.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            corpus.bad[where] = "undecodable (not UTF-8)"
            continue
        except json.JSONDecodeError as e:
            corpus.bad[where] = f"malformed JSON ({e.msg})"
            continue
        if not isinstance(data, dict):
            corpus.bad[where] = "not a JSON object"
            continue
        text = data.get("text")
        corpus.add(str(data.get("id", where)), text if isinstance(text, str) else None, max_chars)


def _parquet(path: Path, corpus: Corpus, max_chars: int) -> None:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=["id", "text"])
    except (KeyError, ValueError, OSError) as e:
        raise FormatError(f"not a Parquet file with columns [id] and [text] ({e})", source=path) from None
    for note_id, text in zip(table.column("id").to_pylist(), table.column("text").to_pylist(), strict=True):
        corpus.add(str(note_id), text, max_chars)


def _check_unique(corpus: Corpus) -> None:
    seen: set[str] = set()
    kept = []
    for note in corpus.notes:
        if note.id in seen or note.id in corpus.bad:
            corpus.bad[note.id] = "duplicate id: only the first note of that id is predicted"
            continue
        seen.add(note.id)
        kept.append(note)
    corpus.notes = kept


def write_results(docs: list[Document], dst: Path, fmt: str, version: str, hashes: dict[str, str]) -> None:
    """Our formats through their writers; Parquet as one row per note (``document``: the JSON of the
    document model, as the jsonl format writes it). ``hashes``: note id -> text hash (the cache key)."""
    if fmt != PARQUET:
        write_documents(docs, dst, fmt)
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table(
        {
            "id": [d.id for d in docs],
            "text_hash": [hashes[d.id] for d in docs],
            "model_version": [version] * len(docs),
            "spans": [len(d.spans) for d in docs],
            "relations": [len(d.relations) for d in docs],
            "document": [json.dumps(to_dict(d), ensure_ascii=False) for d in docs],
        }
    )
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, dst)

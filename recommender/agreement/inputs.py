"""Raters' documents from the tools annotators work in: ``{rater name: [Document, ...]}``.

- brat (or XMI) folders, one per annotator: the rater is the folder name;
- a Label Studio export (JSON): one rater per ``completed_by`` annotator;
- an INCEpTION project export (zip): ``annotation/<document>/<user>.zip`` (the XMI writer's output,
  an XMI and its ``TypeSystem.xml`` zipped together) or ``<user>.xmi``, and the curation under
  ``curation/<document>/CURATION_USER.*`` as the rater ``curation``. The ``INITIAL_CAS`` pseudo user
  (the unannotated document) is skipped; the ``annotation_ser`` binary CASes are not read.
"""

from __future__ import annotations

import io
import json
import logging
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from recommender.document import Document
from recommender.errors import ConfigError, FormatError, NotFoundError
from recommender.extractors.base import Extractor
from recommender.formats import read_documents

log = logging.getLogger(__name__)

INPUT_FORMATS = ("brat", "xmi", "labelstudio", "inception")
INITIAL_CAS = "INITIAL_CAS"
CURATION_USER = "CURATION_USER"

Raters = dict[str, list[Document]]


def detect_input(path: Path) -> str:
    path = Path(path)
    if not path.exists():
        raise NotFoundError("no such file or folder", source=path)
    if path.is_dir():
        return "xmi" if any(path.glob("*.xmi")) else "brat"
    suffix = path.suffix.lower()
    if suffix == ".zip":
        return "inception"
    if suffix == ".json":
        return "labelstudio"
    raise FormatError(f"cannot tell the input type from [{suffix}]; pass --format", source=path)


def load_raters(paths: Sequence[Path], fmt: str | None = None) -> Raters:
    """Every rater of every input; a rater name seen twice across inputs is an error."""
    if fmt is not None and fmt not in INPUT_FORMATS:
        raise ConfigError(
            f"unknown agreement input format [{fmt}]; expected one of {', '.join(INPUT_FORMATS)}"
        )
    raters: Raters = {}
    for path in paths:
        kind = fmt or detect_input(path)
        if kind == "labelstudio":
            found = labelstudio_raters(path)
        elif kind == "inception":
            found = inception_raters(path)
        else:
            found = {Path(path).resolve().name: read_documents(Path(path), kind)}
        for name, docs in found.items():
            if name in raters:
                raise ConfigError(f"rater [{name}] appears in more than one input", source=path)
            raters[name] = docs
    return raters


def labelstudio_raters(path: Path) -> Raters:
    from recommender.formats.labelstudio import task_documents

    try:
        tasks = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"not a readable Label Studio export ({e})", source=path) from None
    if isinstance(tasks, dict):
        tasks = [tasks]
    if not isinstance(tasks, list):
        raise FormatError("a Label Studio export is a JSON list of tasks", source=path)
    raters: Raters = {}
    for task in tasks:
        for doc in task_documents(task):
            who = doc.meta.get("annotator") or f"annotation-{doc.meta.get('annotation_id')}"
            docs = raters.setdefault(str(who), [])
            if any(d.id == doc.id for d in docs):
                log.warning("rater %s annotated task %s twice; the first annotation is used", who, doc.id)
                continue
            docs.append(doc)
    return raters


def inception_raters(path: Path) -> Raters:
    from recommender.formats import xmi

    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise FormatError(f"not a zip archive ({e})", source=path) from None
    raters: Raters = {}
    with archive:
        names = archive.namelist()
        for entry in names:
            parts = PurePosixPath(entry.lstrip("/")).parts
            if len(parts) != 3 or parts[0] not in ("annotation", "curation"):
                continue
            _, document, filename = parts
            user, suffix = PurePosixPath(filename).stem, PurePosixPath(filename).suffix.lower()
            if user == INITIAL_CAS or suffix not in (".zip", ".xmi"):
                continue
            where = f"{path}!{entry}"
            if suffix == ".zip":
                xmi_bytes, ts_bytes = _inner_xmi(archive.read(entry), where)
            else:
                xmi_bytes = archive.read(entry)
                ts_bytes = _sibling_typesystem(archive, names, entry, where)
            typesystem = xmi.load_typesystem_xml(ts_bytes, source=where)
            cas = xmi.load_cas(xmi_bytes, typesystem, source=where)
            doc = xmi.cas_to_document(cas, doc_id=PurePosixPath(document).stem)
            rater = "curation" if user == CURATION_USER else user
            raters.setdefault(rater, []).append(doc)
    if not raters:
        raise FormatError("no annotation/<document>/<user> XMI in this INCEpTION export", source=path)
    return raters


def _inner_xmi(data: bytes, where: str) -> tuple[bytes, bytes]:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            files = inner.namelist()
            xmis = [f for f in files if f.lower().endswith(".xmi")]
            types = [f for f in files if f.lower().endswith(".xml") and "typesystem" in f.lower()]
            if len(xmis) != 1 or not types:
                raise FormatError(
                    f"expected one .xmi and a TypeSystem.xml, found [{', '.join(files)}]", source=where
                )
            return inner.read(xmis[0]), inner.read(types[0])
    except zipfile.BadZipFile as e:
        raise FormatError(f"not a zip archive ({e})", source=where) from None


def _sibling_typesystem(archive: zipfile.ZipFile, names: list[str], entry: str, where: str) -> bytes:
    folder = str(PurePosixPath(entry).parent)
    for name in names:
        if str(PurePosixPath(name).parent) == folder and name.lower().endswith("typesystem.xml"):
            return archive.read(name)
    raise FormatError("no TypeSystem.xml beside this XMI", source=where)


def add_model_rater(raters: Raters, extractor: Extractor, *, batch_size: int = 8) -> str:
    """Predict every note the raters have from its raw text and add the model as one more rater."""
    texts: dict[str, Document] = {}
    for docs in raters.values():
        for d in docs:
            texts.setdefault(d.id, d.without_annotations())
    inputs = list(texts.values())
    predicted: list[Document] = []
    for start in range(0, len(inputs), batch_size):
        predicted.extend(extractor.predict(inputs[start : start + batch_size]))
    name = f"model:{extractor.version}"
    raters[name] = predicted
    return name

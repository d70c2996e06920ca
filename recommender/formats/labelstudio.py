"""Label Studio tasks JSON: what Label Studio imports, exports, and sends to and expects from an ML backend.

A task is ``{"id", "data": {TEXT_KEY: text, ...}, "annotations": [...], "predictions": [...]}``; each
annotation or prediction holds a ``result`` list of Labels regions (``type: "labels"``, with ``value``
``start``/``end``/``text``/``labels``) and relation items (``type: "relation"``, ``from_id``/``to_id``
pointing at region ids of the same result). :class:`LabelStudioConfig` names the keys a project uses;
:func:`parse_labeling_config` reads them from the project's labeling config XML.

Offsets. ``value.start``/``end`` count Unicode code points, the same unit as Python ``str`` indices,
so no conversion is needed for text with emoji or other characters outside the BMP. Evidence:

- The frontend converts browser selections (JavaScript strings, UTF-16 code units) to code points
  before storing them: ``charsToCodePoints``/``findGlobalOffset`` in label-studio-frontend
  ``src/utils/html.js`` count ``[...node.textContent].length`` ("In python and other modern tools
  complex unicode symbols handled as code points ... for external usage js length should be converted
  to code points count"), and ``codePointsToChars`` converts back when a stored region is displayed.
- Its end-to-end test ``web/libs/editor/tests/integration/e2e/ner/emoji.cy.ts`` (HumanSignal/label-studio,
  with and without the newer DOM manager flag ``FF_LSDV_4620_3``) selects "test" in
  ``"🐱 Warning: This is a test text"`` and expects ``start=21, end=25``: code points (UTF-16 would
  give 22, 26). The multi-line case expects ``start=2, end=27`` for ``"Warning:\\n🐱 This is a test"``.
- Label Studio before the 2022 fix (label-studio issue #1347, frontend PR #308) stored UTF-16 offsets.
  Reading such exports, a region whose ``value.text`` matches the UTF-16 reading of its offsets but not
  the code-point one is converted, with a warning.

The frontend writes ``value.text`` with line breaks as the two characters ``\\n``; we write the exact
covered substring and accept either when checking.

Relations. ``from_id`` is the region the annotator clicked first, ``to_id`` the second; ``direction``
``right`` (the default) draws the arrow from ``from_id`` to ``to_id``, ``left`` from ``to_id`` to
``from_id``, ``bi`` both ways (label-studio-frontend ``src/stores/RelationStore.js``). ``hasAttr`` runs
from the main entity to its modifier, so the reader takes the head from the arrow and, when the arrow
is ``bi`` or points from a modifier to a main entity (an annotator clicking in the other order), from
the schema. We always write ``from_id`` = main entity, ``direction: right``.

Document ids. ``read`` names a document after ``data.doc_id`` when present (``write`` puts the id there
so that brat -> Label Studio -> brat keeps file names; extra ``data`` keys pass through Label Studio
unchanged), else after the task ``id``. One document per (non-cancelled) annotation: several
annotators give several documents with the same id, told apart by ``meta["annotation_id"]`` and
``meta["annotator"]``.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, fromstring

from recommender.document import Document, Relation, Span
from recommender.errors import DocumentError, FormatError, NotFoundError
from recommender.schema import RELATION, Schema, load_schema

log = logging.getLogger(__name__)

DOC_ID_KEY = "doc_id"  # data key that carries our document id through Label Studio


@dataclass(frozen=True)
class LabelStudioConfig:
    """The names a Label Studio project uses for the text field, the Labels control and the relation.

    ``label_map`` maps a project's label name to the schema label when they differ (``Problem`` ->
    ``problem``); output uses the reverse mapping.
    """

    text_key: str = "text"
    from_name: str = "label"
    to_name: str = "text"
    relation_label: str = RELATION
    label_map: dict[str, str] = field(default_factory=dict)
    # What a project's config lets a prediction carry (``restrict``): the label names its Labels
    # control offers (None: any) and whether it has a <Relation value=...>. Read from the same XML
    # as the names above, so they are not part of a config's identity.
    labels: frozenset[str] | None = field(default=None, compare=False)
    relations: bool = field(default=True, compare=False)

    def schema_label(self, name: str, schema: Schema) -> str | None:
        """The schema label for a project label name, or None when it has none."""
        mapped = self.label_map.get(name, name)
        return mapped if mapped in schema.label_names else None

    def project_label(self, label: str) -> str:
        for project, schema_label in self.label_map.items():
            if schema_label == label:
                return project
        return label

    def restrict(self, doc: Document, dropped: dict[str, int] | None = None) -> Document:
        """Only the spans whose label the config offers, and relations between kept spans when it has
        a relation; counts the dropped spans by label in ``dropped``. Changes ``doc`` and returns it."""
        keep = []
        for s in doc.spans:
            if self.labels is None or self.project_label(s.label) in self.labels:
                keep.append(s)
            elif dropped is not None:
                dropped[s.label] = dropped.get(s.label, 0) + 1
        kept = {s.id for s in keep}
        relations = [r for r in doc.relations if self.relations and r.head in kept and r.tail in kept]
        doc.spans, doc.relations = keep, relations
        return doc


DEFAULT_CONFIG = LabelStudioConfig()


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


def parse_labeling_config(xml: str, schema: Schema | None = None) -> LabelStudioConfig:
    """Read the text key, the Labels control and the relation label from a labeling config.

    Labels whose names match a schema label only case-insensitively (or by display name) are mapped;
    labels with no schema counterpart are ignored with a warning.

    Raises:
        FormatError: the XML is malformed or unsafe, or there is no Text tag with ``value="$key"``
            or no Labels control pointing at it.
    """
    schema = schema or load_schema()
    try:
        root = fromstring(xml)
    except (ParseError, DefusedXmlException) as e:
        raise FormatError(f"labeling config is not usable XML ({e})") from None
    texts = {
        el.get("name"): el.get("value", "")
        for el in root.iter()
        if el.tag == "Text" and el.get("name") and el.get("value", "").startswith("$")
    }
    if not texts:
        raise FormatError('labeling config has no <Text name=... value="$key"> tag')
    labels_tag = next(
        (
            el
            for el in root.iter()
            if el.tag == "Labels" and any(t.strip() in texts for t in el.get("toName", "").split(","))
        ),
        None,
    )
    if labels_tag is None:
        raise FormatError(
            f"labeling config has no <Labels> control pointing at the Text tag [{next(iter(texts))}]"
        )
    to_name = next(t.strip() for t in labels_tag.get("toName", "").split(",") if t.strip() in texts)

    by_norm = {_norm(t.name): t.name for t in schema.labels} | {
        _norm(t.display): t.name for t in schema.labels
    }
    label_map: dict[str, str] = {}
    for el in labels_tag.iter("Label"):
        name = el.get("alias") or el.get("value")  # results carry the alias when one is set
        if not name:
            continue
        target = by_norm.get(_norm(name))
        if target is None:
            log.warning("labeling config label [%s] is not in the schema; ignored", name)
        elif target != name:
            label_map[name] = target

    relation_values = [el.get("value", "") for el in root.iter("Relation") if el.get("value")]
    relation_label = next((v for v in relation_values if _norm(v) == _norm(schema.relation)), None)
    if relation_label is None:
        relation_label = relation_values[0] if relation_values else schema.relation
        if relation_values:
            log.warning("labeling config has no [%s] relation; using [%s]", schema.relation, relation_label)
    from_name = labels_tag.get("name", DEFAULT_CONFIG.from_name)
    offered = {
        v
        for el in root.iter("Labels")
        if el.get("name") == from_name
        for label in el.iter("Label")
        if (v := label.get("alias") or label.get("value"))
    }
    return LabelStudioConfig(
        text_key=texts[to_name][1:],
        from_name=from_name,
        to_name=to_name,
        relation_label=relation_label,
        label_map=label_map,
        labels=frozenset(offered),
        relations=any(el.get("value") == relation_label for el in root.iter("Relation")),
    )


@functools.lru_cache(maxsize=64)
def labeling_config(xml: str) -> LabelStudioConfig:
    """``parse_labeling_config`` once per config text (Label Studio sends it with every request)."""
    return parse_labeling_config(xml)


# --- reading -------------------------------------------------------------------------------------


def task_text(task: Mapping[str, Any], config: LabelStudioConfig = DEFAULT_CONFIG) -> str:
    """The text of a task. Raises FormatError when the task has no such text field."""
    data = task.get("data") if isinstance(task, Mapping) else None
    if not isinstance(data, Mapping):
        raise FormatError(f"task [{_task_name(task)}] has no data object")
    text = data.get(config.text_key)
    if not isinstance(text, str):
        raise FormatError(f"task [{_task_name(task)}] has no text in data[{config.text_key}]")
    return text


def task_documents(
    task: Mapping[str, Any],
    config: LabelStudioConfig = DEFAULT_CONFIG,
    *,
    source: Literal["annotations", "predictions"] = "annotations",
    schema: Schema | None = None,
) -> list[Document]:
    """One document per annotation (or prediction) of a task; cancelled annotations are skipped.

    Raises:
        FormatError: the task or one of its results is not shaped like Label Studio JSON.
        DocumentError: a region lies outside the text, or a relation points at no region.
    """
    schema = schema or load_schema()
    text = task_text(task, config)
    data = task["data"]
    doc_id = str(data.get(DOC_ID_KEY) or task.get("id") or "task")
    docs = []
    for item in task.get(source) or []:
        if not isinstance(item, Mapping):  # legacy /train payloads list prediction ids only
            continue
        if item.get("was_cancelled"):
            continue
        results = item.get("result") or []
        if not isinstance(results, list):
            raise FormatError(f"task [{_task_name(task)}]: result is not a list")
        meta: dict[str, Any] = {"task_id": task.get("id"), "ls_source": source}
        if source == "annotations":
            annotator = _annotator(item)
            meta |= {"annotation_id": item.get("id"), "annotator": annotator}
            span_source = annotator
        else:
            meta |= {"prediction_id": item.get("id"), "model_version": item.get("model_version")}
            span_source = item.get("model_version")
        if item.get("score") is not None:
            meta["score"] = item["score"]
        doc = Document(id=doc_id, text=text, meta=meta)
        _fill(doc, results, config, schema, _task_name(task), span_source)
        docs.append(doc)
    return docs


def _annotator(annotation: Mapping[str, Any]) -> str | None:
    who = annotation.get("completed_by")
    if isinstance(who, Mapping):  # older exports inline the user
        who = who.get("email") or who.get("id")
    return None if who is None else str(who)


def _task_name(task: Any) -> str:
    if isinstance(task, Mapping):
        data = task.get("data")
        if isinstance(data, Mapping) and data.get(DOC_ID_KEY):
            return str(data[DOC_ID_KEY])
        if task.get("id") is not None:
            return str(task["id"])
    return "?"


def _fill(
    doc: Document,
    results: list[Any],
    config: LabelStudioConfig,
    schema: Schema,
    where: str,
    span_source: str | None,
) -> None:
    regions: dict[str, str | None] = {}  # region id -> its first span id (None: a region without labels)
    relations = []
    for n, item in enumerate(results):
        if not isinstance(item, Mapping):
            raise FormatError(f"task [{where}]: result item {n} is not an object")
        kind = str(item.get("type", "")).lower()
        if kind == "relation":
            relations.append(item)
        elif kind == "labels":
            region_id = str(item.get("id") or f"r{n}")
            regions[region_id] = None
            value = item.get("value")
            if not isinstance(value, Mapping):
                raise FormatError(f"task [{where}]: region [{region_id}] has no value")
            begin, end = _offsets(doc.text, value, where, region_id)
            for k, name in enumerate(_labels(value.get("labels"), f"region [{region_id}]", where)):
                # A label outside the schema (the team's own) is kept as spelled; training ignores it.
                label = config.schema_label(name, schema) or name
                span_id = region_id if regions[region_id] is None else f"{region_id}:{k}"
                score = item.get("score")
                doc.spans.append(Span(span_id, label, begin, end, _float(score), span_source))
                regions[region_id] = regions[region_id] or span_id
        # Other result types (choices, textarea...) are not in the schema. Labels regions are read
        # whatever their from_name, so an export reads without its project's config.
    for item in relations:
        _relation(doc, item, regions, config, schema, where, span_source)
    try:
        doc.validate(schema, strict_labels=False)
    except DocumentError as e:
        raise DocumentError(f"task [{where}]: {e}") from None


def _labels(value: Any, item: str, where: str) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        raise FormatError(f"task [{where}]: {item} labels are not a list of strings")
    return value


def _offsets(text: str, value: Mapping[str, Any], where: str, region_id: str) -> tuple[int, int]:
    begin, end = value.get("start"), value.get("end")
    if not isinstance(begin, int) or not isinstance(end, int):
        raise FormatError(f"task [{where}]: region [{region_id}] has no integer start/end")
    expected = value.get("text")
    if isinstance(expected, str) and not _same_text(text[begin:end], expected):
        b16, e16 = _from_utf16(text, begin), _from_utf16(text, end)
        if b16 is not None and e16 is not None and _same_text(text[b16:e16], expected):
            log.warning(
                "task [%s]: region [%s] uses UTF-16 offsets (old Label Studio); converted", where, region_id
            )
            begin, end = b16, e16
        else:
            log.warning(
                "task [%s]: region [%s] value.text does not match its offsets; offsets kept", where, region_id
            )
    if not 0 <= begin < end <= len(text):
        raise DocumentError(
            f"task [{where}]: region [{region_id}] offsets [{begin}, {end}] "
            f"outside the text of length {len(text)}"
        )
    return begin, end


def _same_text(covered: str, expected: str) -> bool:
    return covered == expected or covered.replace("\r", "\\n").replace("\n", "\\n") == expected


def _from_utf16(text: str, units: int) -> int | None:
    """The code-point index at ``units`` UTF-16 code units, or None inside a pair or past the end."""
    count = 0
    for i, ch in enumerate(text):
        if count == units:
            return i
        if count > units:
            return None
        count += 2 if ord(ch) > 0xFFFF else 1
    return len(text) if count == units else None


def _relation(
    doc: Document,
    item: Mapping[str, Any],
    regions: dict[str, str | None],
    config: LabelStudioConfig,
    schema: Schema,
    where: str,
    source: str | None,
) -> None:
    ends = []
    for key in ("from_id", "to_id"):
        region = str(item.get(key)).split("#")[0]  # the frontend may suffix "#<annotation id>"
        if region not in regions:
            raise DocumentError(f"task [{where}]: relation {key} [{item.get(key)}] points to no region")
        ends.append(regions[region])
    # One relation per label; none is the schema's relation. Other labels (the team's own) are kept.
    labels = [
        schema.relation if _norm(x) == _norm(config.relation_label) else x
        for x in _labels(item.get("labels"), "relation", where)
    ] or [schema.relation]
    head_id, tail_id = ends
    if head_id is None or tail_id is None:
        log.warning("task [%s]: relation to a region without labels; dropped", where)
        return
    if item.get("direction") == "left":
        head_id, tail_id = tail_id, head_id
    index = doc.span_index()
    for label in labels:
        head, tail = head_id, tail_id
        if (
            label == schema.relation
            and schema.is_modifier(index[head].label)
            and schema.is_entity(index[tail].label)
        ):
            head, tail = tail, head  # drawn from the modifier, or "bi": hasAttr starts at the entity
        doc.relations.append(
            Relation(doc.new_relation_id(), head, tail, label, _float(item.get("score")), source)
        )


def _float(x: Any) -> float | None:
    return float(x) if isinstance(x, int | float) and not isinstance(x, bool) else None


# --- writing -------------------------------------------------------------------------------------


def document_results(doc: Document, config: LabelStudioConfig = DEFAULT_CONFIG) -> list[dict[str, Any]]:
    """The Label Studio ``result`` list of a document: one Labels region per span, then the relations."""
    results: list[dict[str, Any]] = []
    for s in doc.spans:
        region: dict[str, Any] = {
            "id": s.id,
            "from_name": config.from_name,
            "to_name": config.to_name,
            "type": "labels",
            "value": {
                "start": s.begin,
                "end": s.end,
                "text": doc.text[s.begin : s.end],
                "labels": [config.project_label(s.label)],
            },
        }
        if s.score is not None:
            region["score"] = s.score
        results.append(region)
    schema = load_schema()
    index = doc.span_index()
    for r in doc.relations:
        if r.label == schema.relation and (
            schema.is_modifier(index[r.head].label) and schema.is_entity(index[r.tail].label)
        ):
            raise DocumentError(
                f"relation [{r.id}] of document [{doc.id}] runs from modifier [{r.head}] to main "
                f"entity [{r.tail}]; Label Studio's reader starts [{r.label}] at the entity, so it "
                "cannot carry this one: fix its direction"
            )
        results.append(
            {
                "type": "relation",
                "from_id": r.head,
                "to_id": r.tail,
                "direction": "right",
                "labels": [config.relation_label if r.label == schema.relation else r.label],
            }
        )
    return results


def document_prediction(
    doc: Document, config: LabelStudioConfig = DEFAULT_CONFIG, model_version: str = ""
) -> dict[str, Any]:
    """One prediction entry of a ``/predict`` answer.

    The task score orders uncertainty sampling (lowest first): ``doc.meta["score"]`` when set, else
    ``1 - doc.uncertainty`` (the extractor's), else the mean span score; null when nothing is scored.
    """
    if doc.meta.get("score") is not None:
        score: float | None = float(doc.meta["score"])
    elif doc.uncertainty is not None:
        score = 1.0 - doc.uncertainty
    else:
        scores = [s.score for s in doc.spans if s.score is not None]
        score = sum(scores) / len(scores) if scores else None
    if score is not None:
        score = min(1.0, max(0.0, score))
    return {"model_version": model_version, "score": score, "result": document_results(doc, config)}


def predict_results(
    texts: Sequence[str | None],
    predictions: Sequence[tuple[Document, str]],
    config: LabelStudioConfig,
    model_version: str,
) -> list[dict[str, Any]]:
    """The ``results`` of a ``/predict`` answer: one entry per task in order, ``predictions`` (the
    document and the model version that answered) for the tasks with text, until they run out (past
    the time budget: Label Studio asks for the rest when they are opened). A task without text gets
    an empty result under ``model_version``."""
    results: list[dict[str, Any]] = []
    done = 0
    for text in texts:
        if not text or not text.strip():
            # Nothing to annotate is nothing to be unsure about: such tasks sort last.
            results.append({"model_version": model_version, "score": 1.0, "result": []})
            continue
        if done == len(predictions):
            break
        doc, answered_by = predictions[done]
        done += 1
        results.append(document_prediction(doc, config, answered_by))
    return results


def document_task(doc: Document, config: LabelStudioConfig = DEFAULT_CONFIG) -> dict[str, Any]:
    """An importable task; an unannotated document gets no annotation, so it stays open in Label Studio."""
    task: dict[str, Any] = {"data": {config.text_key: doc.text, DOC_ID_KEY: doc.id}}
    if doc.spans or doc.relations:
        task["annotations"] = [{"result": document_results(doc, config)}]
    return task


# --- files ---------------------------------------------------------------------------------------


def parse_tasks(
    data: Any, config: LabelStudioConfig = DEFAULT_CONFIG, *, where: str | Path | None = None
) -> list[Document]:
    """Documents from a parsed export: a list of tasks, one task, or JSON-MIN rows.

    A task's annotations are used; a task with none uses its predictions; a task with neither gives
    one document without annotations, so that no text is lost.
    """
    if isinstance(data, Mapping):
        data = data["tasks"] if isinstance(data.get("tasks"), list) else [data]
    if not isinstance(data, list):
        raise FormatError("expected a JSON list of Label Studio tasks", source=where)
    schema = load_schema()
    docs: list[Document] = []
    try:
        for n, task in enumerate(data):
            if not isinstance(task, Mapping):
                raise FormatError(f"item {n} is not a task object")
            if "data" not in task and config.text_key in task:
                task = _from_min(task, config)
            found = task_documents(task, config, schema=schema)
            if not found:
                found = task_documents(task, config, source="predictions", schema=schema)
            if not found:
                text = task_text(task, config)
                found = [Document(str(task["data"].get(DOC_ID_KEY) or task.get("id") or f"task{n}"), text)]
            docs += found
    except (FormatError, DocumentError) as e:
        raise type(e)(str(e), source=where) from None
    return docs


def _from_min(row: Mapping[str, Any], config: LabelStudioConfig) -> dict[str, Any]:
    """A JSON-MIN row (``{"text", "label": [{start, end, text, labels}], ...}``) as a full task.

    JSON-MIN keeps neither region ids nor relations.
    """
    regions = row.get(config.from_name) or []
    result = [
        {"id": f"r{k}", "type": "labels", "value": v}
        for k, v in enumerate(regions if isinstance(regions, list) else [])
    ]
    data = {k: v for k, v in row.items() if k != config.from_name}
    return {
        "id": row.get("id"),
        "data": data,
        "annotations": [{"id": row.get("annotation_id"), "result": result}],
    }


def read(path: Path, config: LabelStudioConfig = DEFAULT_CONFIG) -> list[Document]:
    """Documents of a Label Studio JSON export (or of any JSON file holding tasks)."""
    path = Path(path)
    if not path.is_file():
        raise NotFoundError("no such file", source=path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise FormatError(
            f"malformed JSON at line {e.lineno} column {e.colno} ({e.msg})", source=path
        ) from None
    except UnicodeDecodeError as e:
        raise FormatError(f"not UTF-8 text ({e.reason})", source=path) from None
    return parse_tasks(data, config, where=path)


def write(docs: Iterable[Document], path: Path, config: LabelStudioConfig = DEFAULT_CONFIG) -> None:
    """A JSON list of tasks that Label Studio imports, with the spans and relations as annotations."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tasks = [document_task(doc, config) for doc in docs]
    path.write_text(json.dumps(tasks, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")

"""UIMA CAS XMI through dkpro-cassis: the format INCEpTION sends, stores and exports.

A folder holds one ``NAME.xmi`` per note plus the ``TypeSystem.xml`` they were written against. The
Kiwi schema lives in one span layer (entities and modifiers, String feature ``label``) and one
relation layer attached to it (``Governor`` = main entity, ``Dependent`` = modifier, String feature
``label``); :class:`LayerMapping` names them. UIMA counts offsets in UTF-16 code units, cassis
converts them to Python code points when it loads or saves, so nothing here touches UTF-16.

XML from outside is untrusted: a DOCTYPE (and so any entity declaration) is refused before lxml sees
the bytes, which rules out external entities and entity-expansion bombs.
"""

from __future__ import annotations

import bisect
import logging
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from io import BytesIO
from pathlib import Path
from typing import Any

from cassis import Cas, TypeSystem, load_cas_from_xmi, load_typesystem
from cassis.typesystem import FeatureStructure, TypeNotFoundError
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse
from lxml import etree

from recommender.document import Document, Segment, Span
from recommender.errors import DocumentError, FormatError, NotFoundError
from recommender.schema import Schema, load_schema
from recommender.text import segment

log = logging.getLogger(__name__)

SENTENCE = "de.tudarmstadt.ukp.dkpro.core.api.segmentation.type.Sentence"
TOKEN = "de.tudarmstadt.ukp.dkpro.core.api.segmentation.type.Token"
DOCUMENT_METADATA = "de.tudarmstadt.ukp.dkpro.core.api.metadata.type.DocumentMetaData"
CAS_METADATA = "de.tudarmstadt.ukp.clarin.webanno.api.type.CASMetadata"
DOCUMENT_ANNOTATION = "uima.tcas.DocumentAnnotation"
PREDICTED = "inception_internal_predicted"
TYPESYSTEM_FILE = "TypeSystem.xml"

# What cassis and lxml raise on XMI or type systems they cannot make sense of.
_CASSIS_ERRORS = (
    etree.LxmlError,
    TypeNotFoundError,
    ValueError,
    KeyError,
    TypeError,
    AttributeError,
    RuntimeError,
)


@dataclass(frozen=True)
class LayerMapping:
    """Which UIMA types and features carry the Kiwi spans and relations."""

    span_type: str = "webanno.custom.ClinicalEntity"
    span_feature: str = "label"
    relation_type: str = "webanno.custom.HasAttr"
    relation_feature: str = "label"
    governor: str = "Governor"
    dependent: str = "Dependent"


DEFAULT_LAYERS = LayerMapping()


# --- type system -------------------------------------------------------------------------------
def project_typesystem(layers: LayerMapping = DEFAULT_LAYERS, schema: Schema | None = None) -> TypeSystem:
    """DKPro Sentence/Token/DocumentMetaData plus the Kiwi span layer and the relation layer on it."""
    ts = TypeSystem()
    meta = ts.create_type(DOCUMENT_METADATA, supertypeName=DOCUMENT_ANNOTATION)
    for name in ("documentTitle", "documentId", "documentUri", "collectionId", "documentBaseUri"):
        ts.create_feature(meta, name, "uima.cas.String")
    ts.create_feature(meta, "isLastSegment", "uima.cas.Boolean")
    ts.create_type(SENTENCE)
    ts.create_type(TOKEN)
    _add_kiwi_layers(ts, layers, schema or load_schema())
    return ts


def layer_typesystem(layers: LayerMapping = DEFAULT_LAYERS, schema: Schema | None = None) -> TypeSystem:
    """Only the two Kiwi layers: the type system a project manager imports into INCEpTION."""
    ts = TypeSystem()
    _add_kiwi_layers(ts, layers, schema or load_schema())
    return ts


def _add_kiwi_layers(ts: TypeSystem, layers: LayerMapping, schema: Schema) -> None:
    span = ts.create_type(
        layers.span_type,
        description=f"Kiwi clinical entities and modifiers (schema {schema.name} {schema.version})",
    )
    ts.create_feature(
        span,
        layers.span_feature,
        "uima.cas.String",
        description="Entity or modifier type: " + ", ".join(schema.label_names),
    )
    relation = ts.create_type(layers.relation_type, description=schema.relation_definition)
    ts.create_feature(relation, layers.dependent, span, description="The modifier (Arg2).")
    ts.create_feature(relation, layers.governor, span, description="The main entity (Arg1).")
    ts.create_feature(relation, layers.relation_feature, "uima.cas.String", description="Relation type.")


# --- safe loading ------------------------------------------------------------------------------
def _as_bytes(xml: str | bytes) -> bytes:
    return xml.encode("utf-8") if isinstance(xml, str) else xml


def _root_tag(data: bytes, source: str | Path | None) -> str:
    """The root element's local name; refuses any DOCTYPE. Parsing stops at the root element."""
    try:
        for _, elem in iterparse(BytesIO(data), events=("start",), forbid_dtd=True):
            return elem.tag.rpartition("}")[2]
    except DefusedXmlException:
        raise FormatError("DOCTYPE and entity declarations are not allowed", source=source) from None
    except ParseError as e:
        raise FormatError(f"malformed XML ({e})", source=source) from None
    raise FormatError("no XML root element", source=source)


def _short(error: Exception) -> str:
    text = str(error).splitlines()[0] if str(error) else type(error).__name__
    return text[:200]


def load_typesystem_xml(xml: str | bytes, *, source: str | Path | None = None) -> TypeSystem:
    """A UIMA type system description, refusing DTDs and reporting bad input as FormatError."""
    data = _as_bytes(xml)
    if (root := _root_tag(data, source)) != "typeSystemDescription":
        raise FormatError(f"not a UIMA type system description (root element [{root}])", source=source)
    try:
        return load_typesystem(BytesIO(data))
    except _CASSIS_ERRORS as e:
        raise FormatError(f"not a usable UIMA type system ({_short(e)})", source=source) from None


def load_cas(xmi: str | bytes, typesystem: TypeSystem, *, source: str | Path | None = None) -> Cas:
    """A CAS from XMI against ``typesystem``, refusing DTDs and reporting bad input as FormatError."""
    data = _as_bytes(xmi)
    if (root := _root_tag(data, source)) != "XMI":
        raise FormatError(f"not a CAS XMI document (root element [{root}])", source=source)
    try:
        return load_cas_from_xmi(BytesIO(data), typesystem=typesystem)
    except _CASSIS_ERRORS as e:
        raise FormatError(f"cannot load the XMI with its type system ({_short(e)})", source=source) from None


_XMI_ID = "{http://www.omg.org/XMI}id"
_CAS_VIEW = "{http:///uima/cas.ecore}View"
_ANNOTATION_FEATURES = ("sofa", "begin", "end")


def with_added(xmi: str | bytes, cas: Cas, added: Sequence[FeatureStructure]) -> str:
    """``xmi`` plus the annotations ``added`` to ``cas`` (the CAS loaded from ``xmi`` by :func:`load_cas`)
    as new elements of its initial view.

    Re-serialising the whole CAS with cassis is pure Python and cost 13 ms per 650-token note, a tenth
    of an INCEpTION prediction; this writes only the new elements. Their ids are the ones cassis gave
    them, which follow the highest id of the loaded XMI. Offsets go back to UTF-16 code units, as
    UIMA counts them. Feature values beyond strings, numbers, booleans and references (arrays, lists)
    fall back to cassis.
    """
    values: list[tuple[Any, dict[str, str]]] = []
    for fs in added:
        attrib = {_XMI_ID: str(fs.xmiID)}
        for feature in fs.type.all_features:
            if feature.name in _ANNOTATION_FEATURES:
                continue
            value = fs.get(feature.name)
            if value is None:
                continue
            if isinstance(value, bool):
                attrib[feature.name] = "true" if value else "false"
            elif isinstance(value, (int, float, str)):
                attrib[feature.name] = str(value)
            elif isinstance(value, FeatureStructure) and value.xmiID is not None:
                attrib[feature.name] = str(value.xmiID)
            else:
                return cas.to_xmi()
        values.append((fs, attrib))

    text = cas.sofa_string or ""
    astral = [i for i, c in enumerate(text) if ord(c) > 0xFFFF]  # two UTF-16 code units each

    def utf16(offset: int) -> str:
        return str(offset + bisect.bisect_left(astral, offset))

    root = etree.fromstring(_as_bytes(xmi), etree.XMLParser(resolve_entities=False, no_network=True))
    sofa = str(cas.get_sofa().xmiID)
    views = list(root.iter(_CAS_VIEW))
    view = next((v for v in views if v.get("sofa") == sofa), None)
    if view is None:
        return cas.to_xmi()
    for fs, attrib in values:
        package, _, name = fs.type.name.rpartition(".")
        url = "http:///" + package.replace(".", "/") + ".ecore"
        prefix = package.rpartition(".")[2] or "noNamespace"
        nsmap = None if url in root.nsmap.values() or prefix in root.nsmap else {prefix: url}
        elem = etree.Element(f"{{{url}}}{name}", nsmap=nsmap)
        elem.attrib.update(attrib)
        if hasattr(fs, "begin"):
            elem.set("sofa", sofa)
            elem.set("begin", utf16(fs.begin))
            elem.set("end", utf16(fs.end))
        views[0].addprevious(elem)
    members = view.get("members", "").split() + [a[_XMI_ID] for _, a in values]
    view.set("members", " ".join(members))
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8").decode("utf-8")


# --- CAS -> Document ---------------------------------------------------------------------------
def _text_view(cas: Cas) -> Cas:
    """The view holding the note: the initial view, else the first view with text (a named sofa)."""
    if cas.sofa_string is not None:
        return cas
    for view in cas.views:
        if view.sofa.sofaString is not None:
            return cas.get_view(view.sofa.sofaID)
    raise FormatError("the CAS has no text (no view with a sofa string)")


def _has_type(cas: Cas, name: str) -> bool:
    return cas.typesystem.contains_type(name, match_exactly=True)


def _require_features(cas: Cas, type_name: str, features: Iterable[str]) -> None:
    present = {f.name for f in cas.typesystem.get_type(type_name).all_features}
    for name in features:
        if name not in present:
            raise FormatError(f"layer [{type_name}] has no feature [{name}]")


def _document_id(view: Cas) -> str | None:
    for type_name, feature in (
        (CAS_METADATA, "sourceDocumentName"),
        (DOCUMENT_METADATA, "documentTitle"),
        (DOCUMENT_METADATA, "documentId"),
    ):
        if _has_type(view, type_name):
            for fs in view.select(type_name):
                if value := fs.get(feature):
                    # INCEpTION names documents after their uploaded file ("note0.txt").
                    name = Path(value)
                    return name.stem if name.suffix.lower() in {".txt", ".xmi"} else name.name
    return None


def _feature_or_none(fs: Any, name: str) -> Any:
    return fs.get(name) if fs.type.get_feature(name) is not None else None


def cas_to_document(
    cas: Cas,
    layers: LayerMapping = DEFAULT_LAYERS,
    *,
    doc_id: str | None = None,
    schema: Schema | None = None,
) -> Document:
    """The note, its segmentation and its Kiwi annotations; layers missing from the type system give none."""
    schema = schema or load_schema()
    view = _text_view(cas)
    doc = Document(id=doc_id or _document_id(view) or "document", text=view.sofa_string)
    if _has_type(view, SENTENCE):
        doc.sentences = [Segment(s.begin, s.end) for s in view.select(SENTENCE)]
    if _has_type(view, TOKEN):
        doc.tokens = [Segment(t.begin, t.end) for t in view.select(TOKEN)]
    segment(doc)  # only fills what the CAS did not have

    by_fs: dict[int, Span] = {}
    skipped: Counter[str] = Counter()
    if _has_type(view, layers.span_type):
        _require_features(view, layers.span_type, [layers.span_feature])
        n = len(doc.text)
        for fs in view.select(layers.span_type):
            label = fs.get(layers.span_feature)
            if label not in schema.label_names:
                skipped["span label outside the schema"] += 1
                continue
            if not 0 <= fs.begin < fs.end <= n:
                skipped["empty or out-of-range span"] += 1
                continue
            score = _feature_or_none(fs, f"{layers.span_feature}_score")
            span = doc.add_span(label, fs.begin, fs.end, score=score)
            by_fs[fs.xmiID] = span

    if _has_type(view, layers.relation_type):
        feats = [layers.governor, layers.dependent, layers.relation_feature]
        _require_features(view, layers.relation_type, feats)
        for fs in view.select(layers.relation_type):
            gov, dep = fs.get(layers.governor), fs.get(layers.dependent)
            label = fs.get(layers.relation_feature) or schema.relation
            head = by_fs.get(gov.xmiID) if gov is not None else None
            tail = by_fs.get(dep.xmiID) if dep is not None else None
            if label != schema.relation:
                skipped["relation label outside the schema"] += 1
            elif head is None or tail is None:
                skipped["relation to a skipped or missing span"] += 1
            else:
                score = _feature_or_none(fs, f"{layers.relation_feature}_score")
                doc.add_relation(head, tail, label=label, score=score)
    for reason, count in skipped.items():
        log.warning("document [%s]: skipped %d annotation(s): %s", doc.id, count, reason)
    return doc


# --- Document -> CAS ---------------------------------------------------------------------------
def document_to_cas(
    doc: Document, typesystem: TypeSystem | None = None, layers: LayerMapping = DEFAULT_LAYERS
) -> Cas:
    """A new CAS with the note as sofa, DKPro Sentence/Token, metadata, and the Kiwi spans and relations."""
    ts = typesystem or project_typesystem(layers)
    cas = Cas(typesystem=ts)
    cas.sofa_string = doc.text
    cas.sofa_mime = "text/plain"
    if ts.contains_type(DOCUMENT_METADATA, match_exactly=True):
        meta = ts.get_type(DOCUMENT_METADATA)
        cas.add(meta(begin=0, end=len(doc.text), documentId=doc.id, documentTitle=doc.id, language="en"))
    seg = segment(replace(doc, spans=[], relations=[]))  # a copy: the caller's document is not touched
    for type_name, segments in ((SENTENCE, seg.sentences), (TOKEN, seg.tokens)):
        if ts.contains_type(type_name, match_exactly=True):
            make = ts.get_type(type_name)
            cas.add_all([make(begin=s.begin, end=s.end) for s in segments])
    add_document_annotations(cas, doc, layers)
    return cas


def add_document_annotations(
    cas: Cas, doc: Document, layers: LayerMapping = DEFAULT_LAYERS, *, predicted: bool = False
) -> None:
    """Write ``doc``'s spans and relations into ``cas``; every other annotation and layer stays as it was.

    A span already in the CAS with the same label and offsets is reused rather than duplicated (that is
    how INCEpTION anchors relation suggestions to accepted spans). ``predicted`` marks new feature
    structures with ``inception_internal_predicted`` and scores go to ``<feature>_score`` when the
    type system has those features (INCEpTION's prediction type system does).
    """
    view = _text_view(cas)
    if view.sofa_string != doc.text:
        raise DocumentError(f"the text of document [{doc.id}] differs from the CAS text")
    if not doc.spans:
        return
    if not _has_type(view, layers.span_type):
        raise FormatError(f"the type system has no span layer [{layers.span_type}]")
    _require_features(view, layers.span_type, [layers.span_feature])
    span_type = view.typesystem.get_type(layers.span_type)

    existing: dict[tuple[str, int, int], Any] = {}
    for fs in view.select(layers.span_type):
        existing.setdefault((fs.get(layers.span_feature), fs.begin, fs.end), fs)
    by_id: dict[str, Any] = {}
    for span in doc.spans:
        fs = existing.get(span.key)
        if fs is None:
            fs = span_type(begin=span.begin, end=span.end)
            fs.set(layers.span_feature, span.label)
            _mark(fs, layers.span_feature, span.score, predicted)
            view.add(fs)
            existing[span.key] = fs
        by_id[span.id] = fs

    if not doc.relations:
        return
    if not _has_type(view, layers.relation_type):
        raise FormatError(f"the type system has no relation layer [{layers.relation_type}]")
    _require_features(
        view, layers.relation_type, [layers.governor, layers.dependent, layers.relation_feature]
    )
    rel_type = view.typesystem.get_type(layers.relation_type)
    present = {
        (id(fs.get(layers.governor)), id(fs.get(layers.dependent)), fs.get(layers.relation_feature))
        for fs in view.select(layers.relation_type)
    }
    for rel in doc.relations:
        try:
            gov, dep = by_id[rel.head], by_id[rel.tail]
        except KeyError as e:
            raise DocumentError(
                f"relation [{rel.id}] points to missing span [{e.args[0]}] in document [{doc.id}]"
            ) from None
        if (id(gov), id(dep), rel.label) in present:
            continue
        # INCEpTION places a relation at its Dependent's offsets.
        fs = rel_type(begin=dep.begin, end=dep.end)
        fs.set(layers.governor, gov)
        fs.set(layers.dependent, dep)
        fs.set(layers.relation_feature, rel.label)
        _mark(fs, layers.relation_feature, rel.score, predicted)
        view.add(fs)
        present.add((id(gov), id(dep), rel.label))


def _mark(fs: Any, feature: str, score: float | None, predicted: bool) -> None:
    if score is not None and fs.type.get_feature(f"{feature}_score") is not None:
        fs.set(f"{feature}_score", float(score))
    if predicted and fs.type.get_feature(PREDICTED) is not None:
        fs.set(PREDICTED, True)


# --- files -------------------------------------------------------------------------------------
def _read_xml(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise NotFoundError("no such file", source=path) from None


def read(path: Path) -> list[Document]:
    """Every ``*.xmi`` of a folder, or one ``.xmi`` file, against the ``TypeSystem.xml`` beside it."""
    path = Path(path)
    if path.is_dir():
        files, folder = sorted(path.glob("*.xmi")), path
        if not files:
            raise FormatError("no .xmi files: not an XMI folder", source=path)
    elif path.is_file():
        files, folder = [path], path.parent
    else:
        raise NotFoundError("no such file or folder", source=path)
    ts_path = folder / TYPESYSTEM_FILE
    if not ts_path.is_file():
        raise FormatError(f"no {TYPESYSTEM_FILE} beside the XMI files", source=folder)
    ts = load_typesystem_xml(_read_xml(ts_path), source=ts_path)
    docs = []
    for f in files:
        cas = load_cas(_read_xml(f), ts, source=f)
        try:
            docs.append(cas_to_document(cas, doc_id=f.stem))
        except FormatError as e:
            raise FormatError(str(e), source=f) from None
    return docs


def write(docs: Iterable[Document], path: Path) -> None:
    """One ``NAME.xmi`` per document and the project ``TypeSystem.xml`` in folder ``path``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ts = project_typesystem()
    ts.to_xml(path / TYPESYSTEM_FILE)
    for doc in docs:
        document_to_cas(doc, ts).to_xmi(path / f"{doc.id}.xmi")


__all__ = [
    "DEFAULT_LAYERS",
    "SENTENCE",
    "TOKEN",
    "LayerMapping",
    "add_document_annotations",
    "cas_to_document",
    "document_to_cas",
    "layer_typesystem",
    "load_cas",
    "load_typesystem_xml",
    "project_typesystem",
    "read",
    "write",
]

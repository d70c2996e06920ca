"""UIMA CAS XMI through dkpro-cassis: the format INCEpTION sends, stores and exports.

A folder holds one ``NAME.xmi`` per note plus the ``TypeSystem.xml`` they were written against. The
Kiwi schema lives in one span layer (entities and modifiers, String feature ``label``) and one
relation layer attached to it (``Governor`` = main entity, ``Dependent`` = modifier, String feature
``label``); :class:`LayerMapping` names them. UIMA counts offsets in UTF-16 code units; cassis
converts them to Python code points when it loads or saves, and so does :class:`XmiCas`, the lxml
reader and writer of the INCEpTION recommender's hot path.

XML from outside is untrusted: a DOCTYPE (and so any entity declaration) is refused before lxml sees
the bytes, which rules out external entities and entity-expansion bombs.
"""

from __future__ import annotations

import bisect
import functools
import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from io import BytesIO
from pathlib import Path
from typing import Any

from cassis import Cas, TypeSystem, load_cas_from_xmi, load_typesystem
from cassis.typesystem import Feature, Type, TypeNotFoundError
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import ParseError, iterparse
from lxml import etree

from recommender.document import Document, Segment, Span
from recommender.errors import DocumentError, FormatError, LimitError, NotFoundError
from recommender.formats.layers import DEFAULT_LAYERS, LayerMapping
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


_LIBXML_TEXT_LIMIT = 10_000_000  # XML_MAX_TEXT_LENGTH: lxml parses nothing longer without huge_tree


class _Head(BytesIO):
    """Hands the parser 2 kB at a time, so finding the root element does not parse the whole body."""

    def read(self, size: int | None = -1) -> bytes:
        return super().read(2048 if size is None or size < 0 else min(size, 2048))


def _root_tag(data: bytes, source: str | Path | None) -> str:
    """The root element's local name; refuses any DOCTYPE. Parsing stops at the root element."""
    try:
        for _, elem in iterparse(_Head(data), events=("start",), forbid_dtd=True):
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
_CAS_NS = "http:///uima/cas.ecore"
_CAS_SOFA = f"{{{_CAS_NS}}}Sofa"
_CAS_VIEW = f"{{{_CAS_NS}}}View"
_CAS_NULL = f"{{{_CAS_NS}}}NULL"
_INITIAL_VIEW = "_InitialView"
_INTEGERS = frozenset({"uima.cas.Byte", "uima.cas.Short", "uima.cas.Integer", "uima.cas.Long"})
_FLOATS = frozenset({"uima.cas.Float", "uima.cas.Double"})
_PRIMITIVE_RANGES = frozenset({"uima.cas.String", "uima.cas.Boolean"} | _INTEGERS | _FLOATS)
# No DTD can reach lxml (``_root_tag`` refuses it first); these settings are the second fence.
_XMI_PARSER = etree.XMLParser(resolve_entities=False, no_network=True, load_dtd=False)


@functools.lru_cache(maxsize=1024)
def _type_name(tag: str) -> str:
    """``{http:///de/tudarmstadt/ukp/dkpro/core/api/segmentation/type.ecore}Token`` -> the UIMA type name."""
    if not tag.startswith("{"):
        return tag
    url, _, name = tag[1:].partition("}")
    package = url.removeprefix("http:///").removesuffix(".ecore").replace("/", ".")
    return name if package == "uima.noNamespace" or not package else f"{package}.{name}"


class XmiFeatureStructure:
    """One feature structure of an :class:`XmiCas`: the read API of a cassis FeatureStructure."""

    __slots__ = ("_cas", "_element", "begin", "end", "type", "xmiID")

    def __init__(self, cas: XmiCas, element: Any, type_: Type, xmi_id: int) -> None:
        self._cas, self._element, self.type, self.xmiID = cas, element, type_, xmi_id
        begin, end = element.get("begin"), element.get("end")
        try:
            self.begin = cas.from_utf16(int(begin)) if begin is not None else None
            self.end = cas.from_utf16(int(end)) if end is not None else None
        except ValueError:
            raise FormatError(f"[{type_.name}] #{xmi_id} has unreadable offsets") from None

    def get(self, name: str) -> Any:
        """The feature's value as cassis gives it; None when unset or not a feature of the type."""
        feature = self._cas.features(self.type).get(name)
        raw = self._element.get(name)
        if feature is None or raw is None:
            return None
        range_type = feature.rangeType
        while range_type.name not in _PRIMITIVE_RANGES and range_type.supertype is not None:
            range_type = range_type.supertype  # a String subtype (allowed values) reads as a String
        try:
            if range_type.name == "uima.cas.String":
                return raw
            if range_type.name == "uima.cas.Boolean":
                return raw == "true"
            if range_type.name in _INTEGERS:
                return int(raw)
            if range_type.name in _FLOATS:
                return float(raw)
            return self._cas.by_id(int(raw))  # a reference
        except ValueError:
            raise FormatError(
                f"feature [{name}] of [{self.type.name}] #{self.xmiID} has an unreadable value"
            ) from None


class XmiCas:
    """A CAS read straight from its XMI with lxml, with the part of cassis's ``Cas`` API the INCEpTION
    recommender uses (``sofa_string``, ``typesystem``, ``select``) and :meth:`add` / :meth:`to_xmi`.

    cassis builds every feature structure in pure Python: 11 ms to load and 11 ms to write a 650-token
    note, a fifth of a prediction. This reads what is selected and writes the answer as the request's
    XMI plus the new elements. The text is the initial view's (else the first view with text), as in
    :func:`cas_to_document`; offsets are code points outside, UTF-16 code units inside the XMI.
    """

    def __init__(self, xmi: str | bytes, typesystem: TypeSystem, *, source: str | Path | None = None) -> None:
        data = _as_bytes(xmi)
        if (root_tag := _root_tag(data, source)) != "XMI":
            raise FormatError(f"not a CAS XMI document (root element [{root_tag}])", source=source)
        try:
            self._root = etree.fromstring(data, _XMI_PARSER)
        except etree.XMLSyntaxError as e:
            if "Resource limit exceeded" in str(e):  # libxml2 refuses a text over 10 MB: too long, not bad
                raise LimitError(
                    f"the XMI holds a text over libxml2's limit of [{_LIBXML_TEXT_LIMIT}] bytes; pre-annotate"
                    " long notes in batch with `kiwi predict --model DIR NOTES OUT` and import the result",
                    source=source,
                ) from None
            raise FormatError(f"malformed XML ({_short(e)})", source=source) from None
        self.typesystem = typesystem
        self._source = source
        self._elements: dict[str, list[Any]] = {}  # type name -> elements, in document order
        self._by_id: dict[int, XmiFeatureStructure] = {}
        self._selected: dict[str, list[XmiFeatureStructure]] = {}  # select's answers until the next add
        self._index: dict[str, tuple[Any, str]] | None = None  # xmi:id -> element, type; on first use
        self._next_id: int | None = None
        self._features: dict[str, dict[str, Feature]] = {}
        sofas, views = [], []
        for element in self._root:
            tag = element.tag
            if not isinstance(tag, str) or tag == _CAS_NULL:
                continue  # comments, processing instructions, the NULL element
            if tag == _CAS_SOFA:
                sofas.append(element)
            elif tag == _CAS_VIEW:
                views.append(element)
            else:
                self._elements.setdefault(_type_name(tag), []).append(element)
        self._types: dict[str, Type] = {}
        for name in self._elements:
            if not typesystem.contains_type(name, match_exactly=True):
                raise FormatError(f"the XMI has type [{name}], which its type system lacks", source=source)
            self._types[name] = typesystem.get_type(name)
        texts = [s for s in sofas if s.get("sofaString") is not None]
        sofa = next((s for s in texts if s.get("sofaID") == _INITIAL_VIEW), texts[0] if texts else None)
        if sofa is None:
            raise FormatError("the CAS has no text (no view with a sofa string)", source=source)
        self.sofa_string: str = sofa.get("sofaString")
        self._sofa = sofa.get(_XMI_ID)
        self._view = next((v for v in views if v.get("sofa") == self._sofa), None)
        if self._view is None:
            self._view = etree.SubElement(self._root, _CAS_VIEW, sofa=self._sofa)
        self._members = set(self._view.get("members", "").split())
        # UTF-16 code unit offsets of the characters outside the BMP (two code units each)
        text = self.sofa_string
        astral = [] if text.isascii() else [i for i, c in enumerate(text) if ord(c) > 0xFFFF]
        self._astral = astral
        self._astral16 = [i + k for k, i in enumerate(astral)]

    # --- offsets ------------------------------------------------------------------------------
    def from_utf16(self, offset: int) -> int:
        return offset - bisect.bisect_left(self._astral16, offset) if self._astral16 else offset

    def to_utf16(self, offset: int) -> int:
        return offset + bisect.bisect_left(self._astral, offset) if self._astral else offset

    # --- reading ------------------------------------------------------------------------------
    def features(self, type_: Type) -> dict[str, Feature]:
        found = self._features.get(type_.name)
        if found is None:
            found = self._features[type_.name] = {f.name: f for f in type_.all_features}
        return found

    def _wrap(self, element: Any, type_name: str) -> XmiFeatureStructure:
        try:
            xmi_id = int(element.get(_XMI_ID))
        except ValueError:
            raise FormatError(f"[{type_name}] has an unreadable xmi:id", source=self._source) from None
        fs = self._by_id.get(xmi_id)
        if fs is None:
            fs = XmiFeatureStructure(self, element, self._types[type_name], xmi_id)
            self._by_id[xmi_id] = fs
        return fs

    def by_id(self, xmi_id: int) -> XmiFeatureStructure | None:
        found = self._by_id.get(xmi_id)
        if found is None:
            if self._index is None:
                self._index = {e.get(_XMI_ID): (e, name) for name, es in self._elements.items() for e in es}
            if (hit := self._index.get(str(xmi_id))) is not None:
                found = self._wrap(*hit)
        return found

    def select(self, type_name: str) -> list[XmiFeatureStructure]:
        """The view's feature structures of ``type_name`` and its subtypes, sorted as cassis sorts them."""
        found = self._selected.get(type_name)
        if found is None:
            try:
                wanted = self.typesystem.get_type(type_name)
            except TypeNotFoundError:
                raise FormatError(f"the type system has no type [{type_name}]", source=self._source) from None
            found = []
            for t in wanted.descendants:
                for element in self._elements.get(t.name, ()):
                    if element.get(_XMI_ID) in self._members:
                        found.append(self._wrap(element, t.name))
            # cassis: annotations by (begin, end, id), then the rest by id
            found.sort(key=lambda fs: (fs.begin is None, fs.begin or 0, fs.end or 0, fs.xmiID))
            self._selected[type_name] = found
        return list(found)

    # --- writing ------------------------------------------------------------------------------
    def add(self, type_name: str, begin: int, end: int, features: dict[str, Any]) -> XmiFeatureStructure:
        """A new annotation of ``type_name`` in the view; values are strings, numbers, booleans or
        feature structures of this CAS. It gets the next free xmi:id, as cassis would give it."""
        if self._next_id is None:
            self._next_id = 1 + max(
                (int(e.get(_XMI_ID)) for e in self._root.iter() if e.get(_XMI_ID) is not None), default=0
            )
        xmi_id, self._next_id = self._next_id, self._next_id + 1
        package, _, name = type_name.rpartition(".")
        url = "http:///" + package.replace(".", "/") + ".ecore"
        prefix = package.rpartition(".")[2] or "noNamespace"
        nsmap = self._root.nsmap
        element = etree.Element(
            f"{{{url}}}{name}", nsmap=None if url in nsmap.values() or prefix in nsmap else {prefix: url}
        )
        element.set(_XMI_ID, str(xmi_id))
        element.set("sofa", self._sofa)
        element.set("begin", str(self.to_utf16(begin)))
        element.set("end", str(self.to_utf16(end)))
        for key, value in features.items():
            if isinstance(value, bool):
                element.set(key, "true" if value else "false")
            elif isinstance(value, XmiFeatureStructure):
                element.set(key, str(value.xmiID))
            elif value is not None:
                element.set(key, str(value))
        self._view.addprevious(element)
        self._elements.setdefault(type_name, []).append(element)
        self._types.setdefault(type_name, self.typesystem.get_type(type_name))
        self._selected.clear()
        self._members.add(str(xmi_id))
        self._view.set("members", f"{self._view.get('members', '')} {xmi_id}".strip())
        return self._wrap(element, type_name)

    def to_xmi(self) -> str:
        return etree.tostring(self._root, xml_declaration=True, encoding="UTF-8").decode("utf-8")


# --- CAS -> Document ---------------------------------------------------------------------------
def _text_view(cas: Cas | XmiCas) -> Cas | XmiCas:
    """The view holding the note: the initial view, else the first view with text (a named sofa)."""
    if cas.sofa_string is not None:
        return cas
    for view in cas.views:
        if view.sofa.sofaString is not None:
            return cas.get_view(view.sofa.sofaID)
    raise FormatError("the CAS has no text (no view with a sofa string)")


def _has_type(cas: Cas | XmiCas, name: str) -> bool:
    return cas.typesystem.contains_type(name, match_exactly=True)


def _require_features(cas: Cas | XmiCas, type_name: str, features: Iterable[str]) -> None:
    present = {f.name for f in cas.typesystem.get_type(type_name).all_features}
    for name in features:
        if name not in present:
            raise FormatError(f"layer [{type_name}] has no feature [{name}]")


def _document_id(view: Cas | XmiCas) -> str | None:
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
    cas: Cas | XmiCas,
    layers: LayerMapping = DEFAULT_LAYERS,
    *,
    doc_id: str | None = None,
    schema: Schema | None = None,
) -> Document:
    """The note, its segmentation and its Kiwi annotations; layers missing from the type system give none.

    Labels outside the schema (a team's own span or relation types) are kept: training ignores them."""
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
            if not label:
                skipped["span without a label"] += 1
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
            if head is None or tail is None:
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
    _xml_safe(doc)
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


# XML 1.0 cannot hold C0 controls but tab and line ends, U+FFFE/U+FFFF, or lone surrogates.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def _xml_safe(doc: Document) -> None:
    """FormatError naming the first character of the text or a label that XMI cannot carry."""
    for where, value in [("text", doc.text), *((f"label of span [{s.id}]", s.label) for s in doc.spans)]:
        if m := _NOT_XML.search(value):
            raise FormatError(
                f"document [{doc.id}]: {where} holds [U+{ord(m.group()):04X}] at {m.start()}, "
                "which XML (and so XMI) cannot carry"
            )
    for r in doc.relations:
        if m := _NOT_XML.search(r.label):
            raise FormatError(
                f"document [{doc.id}]: label of relation [{r.id}] holds [U+{ord(m.group()):04X}], "
                "which XML (and so XMI) cannot carry"
            )


def add_document_annotations(cas: Cas, doc: Document, layers: LayerMapping = DEFAULT_LAYERS) -> None:
    """Write ``doc``'s spans and relations into ``cas`` as annotations (the file writer's part of
    ``document_to_cas``); every other annotation and layer stays as it was.

    A span already in the CAS with the same label and offsets is reused rather than duplicated; scores
    go to ``<feature>_score`` when the type system has that feature. INCEpTION's suggestions are
    written by ``suggest_spans`` and ``suggest_relations``, not here.
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
        if fs is None:  # two equal spans of ``doc`` stay two (only what the CAS had is reused)
            fs = span_type(begin=span.begin, end=span.end)
            fs.set(layers.span_feature, span.label)
            _score(fs, layers.span_feature, span.score)
            view.add(fs)
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
        _score(fs, layers.relation_feature, rel.score)
        view.add(fs)


def _score(fs: Any, feature: str, score: float | None) -> None:
    if score is not None and fs.type.get_feature(f"{feature}_score") is not None:
        fs.set(f"{feature}_score", float(score))


# --- INCEpTION's suggestions -------------------------------------------------------------------
def _suggestion(feature: str, label: str, score: float | None, explanation: str) -> dict[str, Any]:
    """The features INCEpTION reads from a suggestion (its prediction type system declares them)."""
    return {
        feature: label,
        PREDICTED: True,
        f"{feature}_score": None if score is None else float(score),
        f"{feature}_score_explanation": explanation,
    }


class _Labels:
    """Maps model labels to the project's tag set spelling; counts what it drops (one log line)."""

    def __init__(self, tags: dict[str, str] | None) -> None:
        self.tags = tags
        self.dropped: dict[str, int] = {}

    def __call__(self, label: str) -> str | None:
        if self.tags is None:
            return label
        found = self.tags.get(label.lower())
        if found is None:
            self.dropped[label] = self.dropped.get(label, 0) + 1
        return found

    def report(self) -> None:
        if self.dropped:
            log.warning("dropped suggestions with labels outside the project's tag set: %s", self.dropped)


# --- suggested spans ---------------------------------------------------------------------------
def _segments(cas: XmiCas, type_name: str) -> list[Segment]:
    if not cas.typesystem.contains_type(type_name, match_exactly=True):
        return []
    return sorted((Segment(a.begin, a.end) for a in cas.select(type_name)), key=lambda s: (s.begin, s.end))


def snap(
    begin: int, end: int, mode: str, text: str, tokens: list[Segment], starts: list[int]
) -> tuple[int, int] | None:
    """Offsets INCEpTION keeps for a span under ``mode``, or None when it would drop the span."""
    if mode in ("tokens", "singleToken") and tokens:
        i = bisect.bisect_left(starts, begin)
        covered = []
        while i < len(tokens) and tokens[i].begin < end:
            if tokens[i].end <= end:
                covered.append(tokens[i])
            i += 1
        if not covered or (mode == "singleToken" and len(covered) != 1):
            return None
        return covered[0].begin, covered[-1].end
    # characters (and sentences, which a span layer of entities does not use): clip and trim
    begin, end = max(0, begin), min(len(text), end)
    while begin < end and text[begin].isspace():
        begin += 1
    while end > begin and text[end - 1].isspace():
        end -= 1
    return (begin, end) if begin < end else None


def _crosses(begin: int, end: int, sentences: list[Segment], starts: list[int]) -> bool:
    i = bisect.bisect_right(starts, begin) - 1
    return i < 0 or end > sentences[i].end


def suggest_spans(
    cas: XmiCas,
    predicted: Document,
    layers: LayerMapping,
    tags: dict[str, str] | None,
    explanation: str,
    *,
    anchoring: str = "tokens",
    cross_sentence: bool = False,
) -> list[XmiFeatureStructure]:
    """Add the ``predicted`` entities and modifiers to ``cas`` as suggestions; returns them.

    Each span is snapped to the CAS's tokens by ``anchoring`` (INCEpTION's ``anchoringMode``; a span
    covering no whole token is dropped, as INCEpTION would) and dropped when it crosses a sentence
    unless ``cross_sentence``. ``tags`` (lower-cased tag -> the project's spelling) spells the labels
    as the project's tag set does and drops those outside it; None keeps them all. Nothing annotated
    identically is suggested again."""
    feature = layers.span_feature
    existing = {(fs.get(feature), fs.begin, fs.end) for fs in cas.select(layers.span_type)}
    tokens = _segments(cas, TOKEN)
    token_starts = [t.begin for t in tokens]
    sentences = _segments(cas, SENTENCE)
    sentence_starts = [s.begin for s in sentences]
    labels = _Labels(tags)
    added = []
    for span in predicted.spans:
        offsets = snap(span.begin, span.end, anchoring, predicted.text, tokens, token_starts)
        if offsets is None:
            continue
        if not cross_sentence and sentences and _crosses(*offsets, sentences, sentence_starts):
            continue
        label = labels(span.label)
        if label is None or (label, *offsets) in existing:
            continue
        existing.add((label, *offsets))
        added.append(
            cas.add(layers.span_type, *offsets, _suggestion(feature, label, span.score, explanation))
        )
    labels.report()
    return added


# --- suggested relations -----------------------------------------------------------------------
def suggest_relations(
    cas: XmiCas, predicted: Document, layers: LayerMapping, tags: dict[str, str] | None, explanation: str
) -> list[XmiFeatureStructure]:
    """Add the ``predicted`` hasAttr relations between spans already in ``cas`` as suggestions;
    returns them. INCEpTION drops relations to spans it does not have: a relation is kept when its
    governor is an annotated span and its modifier one of the same label (exact, else the one
    overlapping span)."""
    schema = load_schema()
    feature = layers.relation_feature

    by_key: dict[tuple[str, int, int], Any] = {}
    for fs in cas.select(layers.span_type):
        by_key.setdefault((fs.get(layers.span_feature), fs.begin, fs.end), fs)  # first wins, as in INCEpTION
    modifiers = sorted(
        ((k, fs) for k, fs in by_key.items() if schema.is_modifier(k[0])), key=lambda item: item[0][1]
    )
    present = {
        (fs.get(layers.governor).xmiID, fs.get(layers.dependent).xmiID)
        for fs in cas.select(layers.relation_type)
        if fs.get(layers.governor) is not None and fs.get(layers.dependent) is not None
    }

    def annotated_modifier(span: Span) -> Any:
        exact = by_key.get(span.key)
        if exact is not None:
            return exact
        overlapping = [
            fs for (label, b, e), fs in modifiers if label == span.label and b < span.end and span.begin < e
        ]
        return overlapping[0] if len(overlapping) == 1 else None

    labels = _Labels(tags)
    index = predicted.span_index()
    added = []
    for rel in predicted.relations:
        head, tail = index[rel.head], index[rel.tail]
        if not schema.allows(head.label, tail.label):
            continue
        gov, dep = by_key.get(head.key), annotated_modifier(tail)
        if gov is None or dep is None or (gov.xmiID, dep.xmiID) in present:
            continue
        label = labels(rel.label)
        if label is None:
            continue
        present.add((gov.xmiID, dep.xmiID))
        features = {layers.governor: gov, layers.dependent: dep} | _suggestion(
            feature, label, rel.score, explanation
        )
        # INCEpTION places a relation at its Dependent's offsets
        added.append(cas.add(layers.relation_type, dep.begin, dep.end, features))
    labels.report()
    return added


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
    "XmiCas",
    "add_document_annotations",
    "cas_to_document",
    "document_to_cas",
    "layer_typesystem",
    "load_cas",
    "load_typesystem_xml",
    "project_typesystem",
    "read",
    "snap",
    "suggest_relations",
    "suggest_spans",
    "write",
]

"""INCEpTION's external recommender protocol: ``POST /inception/{name}/predict`` and ``/train``.

``{name}`` picks a configured recommender (``KIWI_RECOMMENDERS``; out of the box ``entities`` and
``relations``), which names the layer it serves; the label goes to the feature the request names.
``/inception/{model}/{name}/...`` is the same for a model of ``KIWI_SERVE_MODELS`` (``default`` is the
main one): one service serves, say, the encoder and a LLaMA as four INCEpTION recommenders. Train
stores the corrections the same way whichever model's URL receives them.

Predict answers ``{"document": <the whole CAS XMI>}``: the request's CAS plus new feature structures of
the requested layer with ``inception_internal_predicted=true``, the label, ``<feature>_score`` and
``<feature>_score_explanation`` (extractor and model version); the scores are the model's confidence
by the strategy ``KIWI_AL_STRATEGY`` names (``recommender.active.strategies.rescore``), which
INCEpTION's active-learning sidebar ranks by. ``entities`` suggests main entities and
modifiers, snapped to the CAS's own tokens by ``anchoringMode`` (a span covering no whole token is
dropped, as INCEpTION would) and not crossing sentences unless ``crossSentence``. ``relations`` suggests
hasAttr between spans already in the CAS (INCEpTION drops relations to spans it does not have): the
model runs with the CAS's main entities given, and a suggested relation is kept when its modifier is
an annotated span of the same label (exact, else overlapping). Nothing annotated identically is
suggested again. When the project's tag set for the layer is in the request, labels are spelled as
in it and labels outside it are dropped. A request for a layer this recommender does not serve, or
whose type system lacks the layer or feature, gets its CAS back unchanged and one log line.

A slow model (a LLaMA, ``Extractor.ahead``) answers from the prediction cache, and on a miss the
fallback model answers and the document is queued (``service/ahead.py``).

Train stores every document (deduplicated by the store), asks the retrainer for a job and answers
204 at once; 429 while a job for the same project is running (INCEpTION logs it and carries on).
"""

from __future__ import annotations

import bisect
import functools
import hashlib
import logging
from dataclasses import replace
from typing import Any

from cassis import TypeSystem
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from recommender.active.strategies import rescore
from recommender.document import Document, Segment, Span
from recommender.errors import BusyError
from recommender.extractors.base import Extractor
from recommender.formats.xmi import (
    PREDICTED,
    SENTENCE,
    TOKEN,
    LayerMapping,
    XmiCas,
    XmiFeatureStructure,
    cas_to_document,
    load_typesystem_xml,
)
from recommender.schema import load_schema
from recommender.service.bodies import CleanJsonRoute
from recommender.service.evidence import split_version
from recommender.service.state import MODEL_PATH, PredictorDep, Service, ServiceDep, client_of
from recommender.settings import RecommenderConfig
from recommender.store.suggestions import NewSuggestion

log = logging.getLogger(__name__)

router = APIRouter(prefix="/inception", tags=["INCEpTION"], route_class=CleanJsonRoute)

# INCEpTION sends the project's whole type system with every request (~60 kB, 23 ms for cassis to
# read); it changes only when the project's layers do. Nothing downstream modifies it.
_typesystem = functools.lru_cache(maxsize=32)(load_typesystem_xml)


# --- protocol messages (unknown keys are ignored: INCEpTION adds some in new releases) ------------
class _Message(BaseModel):
    model_config = ConfigDict(extra="ignore")


class MDocument(_Message):
    xmi: str = Field(description="the CAS as XMI")
    documentId: int | str | None = None
    userId: str | None = None


class MMetadata(_Message):
    layer: str = Field(description="UIMA type name of the layer to predict")
    feature: str = Field(description="the feature that carries the label")
    projectId: int | str = 0  # 0 is a valid project id (fresh installs)
    anchoringMode: str = "tokens"
    crossSentence: bool = False


class MTarget(_Message):
    type: str
    feature: str


class MTag(_Message):
    tag: str


class MTagset(_Message):
    tags: list[MTag] = []
    targets: list[MTarget] = []


class PredictRequest(_Message):
    typeSystem: str
    document: MDocument
    metadata: MMetadata
    tagsets: list[MTagset] | None = None


class TrainRequest(_Message):
    typeSystem: str
    documents: list[MDocument]
    metadata: MMetadata


class PredictResponse(BaseModel):
    document: str = Field(description="the whole CAS XMI with the suggestions added")


# --- routes ---------------------------------------------------------------------------------------
@router.post("/{name}/predict", response_model=PredictResponse)
@router.post("/{model}/{name}/predict", response_model=PredictResponse, dependencies=MODEL_PATH)
def predict(
    name: str, body: PredictRequest, request: Request, service: ServiceDep, predictor: PredictorDep
) -> PredictResponse:
    deadline = service.deadline()
    rec = service.recommender(name)
    extractor = predictor.current
    ts = _typesystem(body.typeSystem, source="typeSystem")
    layers, problem = _resolve(rec, body.metadata, ts)
    if problem is not None:
        _unservable(service, name, body.metadata, problem)
        return PredictResponse(document=body.document.xmi)
    cas = XmiCas(body.document.xmi, ts, source="document.xmi")
    service.check_note(cas.sofa_string, f"document {body.document.documentId}")
    client = client_of(request)
    doc = cas_to_document(cas, layers)
    tags = _tagset(body.tagsets, body.metadata)
    explanation = f"{extractor.info.extractor} {extractor.version}"
    version = extractor.version

    def run(model: Extractor, docs: list[Document], entities_given: bool, until: float) -> list[Document]:
        # Only the model call takes a compute lane: reading and writing the CAS is done by then.
        with service.model_call(client, until):
            return model.predict(docs, entities_given=entities_given)

    if rec.task == "relations" and not doc.spans:
        added = []
    else:
        given = rec.task == "relations"
        source = doc if given else doc.without_annotations()
        if service.ahead.applies(predictor):  # a slow model: cached, else the fallback answers
            [answer] = service.ahead.predict(predictor, [source], "given" if given else "text", run, deadline)
            predicted, version, explanation = answer.document, answer.version, answer.explanation
        else:
            [predicted] = run(extractor, [source], given, deadline)
        predicted = rescore(predicted, service.strategy)
        # HOOK (suggestion log): the model's answer for this document; written after the answer.
        service.evidence.record([suggestion(predictor.name, version, rec.task, body, predicted)])
        if given:
            added = suggest_relations(cas, predicted, layers, tags, explanation)
        else:
            added = suggest_spans(cas, predicted, layers, body.metadata, tags, explanation)
    log.info(
        "inception [%s] project [%s] document [%s]: %d suggestion(s) by [%s]",
        name,
        body.metadata.projectId,
        body.document.documentId,
        len(added),
        version,
    )
    return PredictResponse(document=cas.to_xmi())


@router.post("/{name}/train", status_code=204, response_class=Response)
@router.post("/{model}/{name}/train", status_code=204, response_class=Response, dependencies=MODEL_PATH)
def train(name: str, body: TrainRequest, request: Request, service: ServiceDep) -> Response:
    rec = service.recommender(name)
    ts = _typesystem(body.typeSystem, source="typeSystem")
    layers, problem = _resolve(rec, body.metadata, ts)
    if problem is not None:
        _unservable(service, name, body.metadata, problem)
        return Response(status_code=204)
    project = f"inception-{body.metadata.projectId}"
    stored = 0
    for n, item in enumerate(body.documents):
        annotator = item.userId or "unknown"
        doc_key = str(item.documentId if item.documentId is not None else n)
        digest = hashlib.sha256(item.xmi.encode("utf-8", "surrogatepass")).hexdigest()
        if service.unchanged_resend((project, doc_key, annotator), digest):
            continue
        cas = XmiCas(item.xmi, ts, source=f"documents[{n}].xmi")
        with service.model_call(client_of(request), service.deadline()):  # segments sentence-less CASes
            doc = cas_to_document(cas, layers)
        doc.meta["inception"] = {"documentId": item.documentId, "layer": body.metadata.layer}
        added = service.store.add(project, doc_key, annotator, "inception", doc)
        # HOOK (suggestion log): scored against the latest suggestion for the document, after the answer.
        service.evidence.score(project, doc_key, added)
        if added is not None:
            stored += 1
    log.info(
        "inception [%s] project [%s]: %d of %d document(s) new",
        name,
        body.metadata.projectId,
        stored,
        len(body.documents),
    )
    if stored:
        try:
            service.request_training(project, f"INCEpTION train [{name}]: {stored} new document(s)")
        except BusyError:
            return Response(status_code=429)  # stored; the next train call picks them up
    elif service.training_busy(project):
        return Response(status_code=429)
    return Response(status_code=204)


def suggestion(model: str, shown: str, task: str, body: PredictRequest, predicted: Document) -> NewSuggestion:
    """The suggestion log's row for one predict answer: the note is the train call's (project,
    document id), so a correction finds it."""
    version, slow = split_version(shown)
    project = f"inception-{body.metadata.projectId}"
    doc_id = str(body.document.documentId if body.document.documentId is not None else 0)
    return NewSuggestion(model, version, "inception", task, project, doc_id, predicted, slow)


# --- layers ---------------------------------------------------------------------------------------
def _resolve(rec: RecommenderConfig, meta: MMetadata, ts: TypeSystem) -> tuple[LayerMapping, str | None]:
    """The layer mapping for this request (label feature from the request), or why it cannot be served."""
    if meta.layer != rec.layer:
        return rec.layers, f"this recommender serves layer [{rec.layer}], the request asks for [{meta.layer}]"
    if rec.task == "entities":
        layers = replace(rec.layers, span_feature=meta.feature)
        needed = {layers.span_type: [layers.span_feature]}
    else:
        layers = replace(rec.layers, relation_feature=meta.feature)
        needed = {
            layers.relation_type: [layers.relation_feature, layers.governor, layers.dependent],
            layers.span_type: [layers.span_feature],
        }
    for type_name, features in needed.items():
        if not ts.contains_type(type_name, match_exactly=True):
            return layers, f"the type system has no layer [{type_name}]"
        present = {f.name for f in ts.get_type(type_name).all_features}
        for feature in features:
            if feature not in present:
                return layers, f"layer [{type_name}] has no feature [{feature}]"
    return layers, None


def _unservable(service: Service, name: str, meta: MMetadata, problem: str) -> None:
    key = f"{name}|{meta.projectId}|{problem}"
    level = logging.WARNING if service.first_time(key) else logging.DEBUG
    log.log(
        level,
        "inception [%s] project [%s]: %s; CAS returned unchanged (configure KIWI_RECOMMENDERS to map it)",
        name,
        meta.projectId,
        problem,
    )


def _tagset(tagsets: list[MTagset] | None, meta: MMetadata) -> dict[str, str] | None:
    """Lower-cased tag -> the project's spelling, for the requested layer and feature; None if not sent."""
    for ts in tagsets or []:
        if any(t.type == meta.layer and t.feature == meta.feature for t in ts.targets):
            return {t.tag.lower(): t.tag for t in ts.tags}
    return None


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


# --- spans ----------------------------------------------------------------------------------------
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
    meta: MMetadata,
    tags: dict[str, str] | None,
    explanation: str,
) -> list[XmiFeatureStructure]:
    """Add the ``predicted`` entities and modifiers to ``cas`` as suggestions; returns them."""
    feature = layers.span_feature
    existing = {(fs.get(feature), fs.begin, fs.end) for fs in cas.select(layers.span_type)}
    tokens = _segments(cas, TOKEN)
    token_starts = [t.begin for t in tokens]
    sentences = _segments(cas, SENTENCE)
    sentence_starts = [s.begin for s in sentences]
    labels = _Labels(tags)
    added = []
    for span in predicted.spans:
        offsets = snap(span.begin, span.end, meta.anchoringMode, predicted.text, tokens, token_starts)
        if offsets is None:
            continue
        if not meta.crossSentence and sentences and _crosses(*offsets, sentences, sentence_starts):
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


# --- relations ------------------------------------------------------------------------------------
def suggest_relations(
    cas: XmiCas, predicted: Document, layers: LayerMapping, tags: dict[str, str] | None, explanation: str
) -> list[XmiFeatureStructure]:
    """Add the ``predicted`` hasAttr relations between spans already in ``cas`` as suggestions;
    returns them."""
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


__all__ = ["PredictRequest", "TrainRequest", "router", "snap", "suggest_relations", "suggest_spans"]

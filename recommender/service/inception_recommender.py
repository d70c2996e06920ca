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

Predict is decode (``formats.xmi.cas_to_document``), one call of the predict path
(``service/predicting.py``: a slow model, a LLaMA, answers from the prediction cache, and on a miss
the fallback model answers and the document is queued), encode (``formats.xmi.suggest_spans`` or
``suggest_relations``, INCEpTION's suggestion writer).

Train stores every document (deduplicated by the store), asks the retrainer for a job and answers
204 at once; 429 while a job for the same project is running (INCEpTION logs it and carries on).
"""

from __future__ import annotations

import functools
import hashlib
import logging
from dataclasses import replace

from cassis import TypeSystem
from fastapi import APIRouter, Request, Response
from pydantic import BaseModel, ConfigDict, Field

from recommender.document import Document
from recommender.errors import BusyError
from recommender.formats.xmi import (
    LayerMapping,
    XmiCas,
    XmiFeatureStructure,
    cas_to_document,
    load_typesystem_xml,
    suggest_relations,
    suggest_spans,
)
from recommender.service.bodies import CleanJsonRoute
from recommender.service.state import MODEL_PATH, PredictorDep, Service, ServiceDep, client_of
from recommender.service.suggestion_log import split_version
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
    path = service.predicting
    deadline = path.deadline()
    rec = service.recommender(name)
    version = predictor.current.version
    ts = _typesystem(body.typeSystem, source="typeSystem")
    layers, problem = _resolve(rec, body.metadata, ts)
    if problem is not None:
        _unservable(service, name, body.metadata, problem)
        return PredictResponse(document=body.document.xmi)
    cas = XmiCas(body.document.xmi, ts, source="document.xmi")
    path.check_note(cas.sofa_string, f"document {body.document.documentId}")
    doc = cas_to_document(cas, layers)
    tags = _tagset(body.tagsets, body.metadata)
    given = rec.task == "relations"
    added: list[XmiFeatureStructure] = []
    if not given or doc.spans:
        source = doc if given else doc.without_annotations()
        [answer] = path.predict(
            predictor, [source], entities_given=given, client=client_of(request), deadline=deadline
        )
        version = answer.version
        # HOOK (suggestion log): the model's answer for this document; written after the answer.
        service.evidence.record([suggestion(predictor.name, answer.version, rec.task, body, answer.document)])
        if given:
            added = suggest_relations(cas, answer.document, layers, tags, answer.explanation)
        else:
            meta = body.metadata
            added = suggest_spans(
                cas,
                answer.document,
                layers,
                tags,
                answer.explanation,
                anchoring=meta.anchoringMode,
                cross_sentence=meta.crossSentence,
            )
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


__all__ = ["PredictRequest", "TrainRequest", "router"]

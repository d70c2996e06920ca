"""Label Studio's ML backend protocol (as observed on Label Studio 1.23.2).

``/health`` and ``/setup`` answer from memory (Label Studio calls them before nearly everything, with
1 s and 3 s timeouts). ``/predict`` answers one entry per task, in order: the model version, a task
score, Labels regions with ids and scores, and relations between those regions. The project's
labeling config decides the text key, ``from_name``/``to_name``, the label spelling and which labels
exist: a label the config lacks is dropped with a warning, never sent. ``/webhook`` stores a submitted
or updated annotation (one SQLite commit) and acknowledges at once; training and the pull of a
project's annotations run after the response. ``/train`` takes the legacy payload.

Active learning. The task ``score`` is the model's confidence in the note by the strategy
``KIWI_AL_STRATEGY`` names (``recommender.active.strategies``): for least confidence ``1 -
uncertainty``, the extractor's least confidence averaged over its decisions in the note (every span
label and every relation it considered; a note where it found nothing is maximally uncertain); for
margin, entropy, MNLP or the relation-aware score, the same figure from the word and link
distributions the extractor exposes (``Document.choices``). Uncertainty sampling hands out tasks in
ascending score, so the note the model is least sure about comes first. It only does so for
predictions whose version is the project's ``model_version``; with
``KIWI_LABEL_STUDIO_URL``/``_TOKEN`` set the backend pins the project to the version of its newest
predictions (see ``labelstudio_client``) and, when the backend requires auth, adds the credentials
to the project's webhooks to ``/webhook``, which Label Studio creates without any. Region scores are
the span scores; Label Studio only displays them.

``/predict`` is decode (``formats.labelstudio``), one call of the predict path
(``service/predicting.py``), encode (``formats.labelstudio.predict_results``). A slow model (a LLaMA)
answers from the prediction cache; a task it has not predicted yet gets the fallback model's
prediction under the version ``FALLBACK (fallback for LLAMA)`` and is queued, as are the tasks of a
``TASKS_CREATED`` webhook.

Corrections are stored per project as ``labelstudio-<project id>``, document ``annotation-<id>``
(Label Studio's delete event names only annotation ids), annotator ``user-<completed_by>``.
"""

from __future__ import annotations

import functools
import logging
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, BackgroundTasks, Body, Request
from pydantic import BaseModel, ConfigDict

from recommender.document import Document
from recommender.errors import BusyError, FormatError, KiwiError
from recommender.formats.labelstudio import (
    LabelStudioConfig,
    labeling_config,
    predict_results,
    task_documents,
    task_text,
)
from recommender.guidelines import labelstudio_config
from recommender.service.bodies import CleanJsonRoute
from recommender.service.labelstudio_client import backend_authorization
from recommender.service.state import MODEL_PATH, Predictor, PredictorDep, Service, ServiceDep, client_of
from recommender.service.suggestion_log import split_version
from recommender.store.suggestions import NewSuggestion

log = logging.getLogger(__name__)

router = APIRouter(tags=["Label Studio"], route_class=CleanJsonRoute)
# The same endpoints for one model of KIWI_SERVE_MODELS: Label Studio's "connect model" form takes
# http://HOST:PORT/labelstudio/NAME and appends /health, /setup, /predict, ... to it.
model_router = APIRouter(
    prefix="/labelstudio/{model}", tags=["Label Studio"], route_class=CleanJsonRoute, dependencies=MODEL_PATH
)

NO_MODEL = "no-model"


# --- the project's labeling config ----------------------------------------------------------------
def project_config(label_config: str | None) -> LabelStudioConfig:
    """The project's labeling config; no config means the one Kiwi generates."""
    return labeling_config(label_config or labelstudio_config())


def project_id(project: Any) -> int | None:
    """Label Studio sends ``"<id>.<created_at>"`` to the backend and full dicts in webhooks."""
    if isinstance(project, dict):
        project = project.get("id")
    try:
        return int(str(project).split(".")[0])
    except (TypeError, ValueError):
        return None


def _store_project(pid: int | None) -> str:
    return f"labelstudio-{pid if pid is not None else 'unknown'}"


# --- messages ---------------------------------------------------------------------------------------
class _Message(BaseModel):
    model_config = ConfigDict(extra="allow")


class PredictRequest(_Message):
    tasks: list[dict[str, Any]]
    project: str | int | None = None
    label_config: str | None = None
    params: dict[str, Any] | None = None


class TrainRequest(_Message):
    annotations: list[dict[str, Any]] = []
    project: str | int | None = None
    label_config: str | None = None


# --- routes -----------------------------------------------------------------------------------------
@router.get("/health")
@model_router.get("/health")
def health(predictor: PredictorDep) -> dict[str, Any]:
    return {"status": "UP", "model_class": "KiwiRecommender", "model_version": predictor.version}


@router.post("/setup")
@model_router.post("/setup")
def setup(predictor: PredictorDep, body: Annotated[dict[str, Any] | None, Body()] = None) -> dict[str, Any]:
    return {"model_version": predictor.version or NO_MODEL}


@router.post("/predict")
@model_router.post("/predict")
def predict(
    body: PredictRequest,
    background: BackgroundTasks,
    request: Request,
    service: ServiceDep,
    predictor: PredictorDep,
) -> dict[str, Any]:
    path = service.predicting
    deadline = path.deadline()
    version = predictor.current.version
    config = project_config(body.label_config)
    texts, docs = _task_documents(body.tasks, config, "predict")
    for doc in docs:  # before any model work: a long note is refused at once
        path.check_note(doc.text, f"task {doc.id}")
    dropped: dict[str, int] = {}
    answers = path.predict(
        predictor,
        docs,
        client=client_of(request),
        deadline=deadline,
        keep=functools.partial(config.restrict, dropped=dropped),
    )
    if dropped:
        log.warning("predict: dropped spans with labels the project's config lacks: %s", dropped)
    shown = [(a.document, a.version) for a in answers]
    results = predict_results(texts, shown, config, version)
    pid = project_id(body.project)
    # HOOK (suggestion log): what was sent, per task; written after the answer.
    service.evidence.record(suggestions(predictor.name, _store_project(pid), shown))
    client = service.labelstudio
    if client is not None and pid is not None:
        settings = service.settings
        # A fallback's version is not one to sort the project's tasks by.
        if settings.label_studio_pin_model_version and not any(a.fallback for a in answers):
            background.add_task(client.pin_model_version, pid, version)
        if (authorization := backend_authorization(settings)) is not None:
            background.add_task(
                client.authorize_webhooks, pid, authorization, basic_user=settings.basic_auth_user
            )
    return {"results": results, "model_version": version}


def suggestions(model: str, project: str, shown: list[tuple[Document, str]]) -> list[NewSuggestion]:
    """The suggestion log's rows for predictions sent to Label Studio (note ``task-<id>``)."""
    out = []
    for doc, answered_by in shown:
        version, slow = split_version(answered_by)
        out.append(NewSuggestion(model, version, "labelstudio", "all", project, f"task-{doc.id}", doc, slow))
    return out


def _task_documents(
    tasks: list[Any], config: LabelStudioConfig, where: str
) -> tuple[list[str | None], list[Document]]:
    """Each task's text (None for a task without one, skipped with a warning) and a document per
    task with text to annotate."""
    texts: list[str | None] = []
    for n, task in enumerate(tasks):
        try:
            texts.append(task_text(task, config) if isinstance(task, dict) else None)
        except FormatError as e:
            log.warning("%s: task %d skipped (%s)", where, n, e)
            texts.append(None)
    docs = [Document(id=str(tasks[n].get("id", n)), text=t) for n, t in enumerate(texts) if t and t.strip()]
    return texts, docs


@router.post("/webhook")
@model_router.post("/webhook")
def webhook(
    body: Annotated[dict[str, Any], Body()],
    background: BackgroundTasks,
    service: ServiceDep,
    predictor: PredictorDep,
) -> dict[str, Any]:
    action = body.get("action")
    if not isinstance(action, str):
        raise FormatError("webhook payload has no [action]")
    project = body.get("project")
    pid = project_id(project)
    label_config = project.get("label_config") if isinstance(project, dict) else None
    store_project = _store_project(pid)
    if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
        task, annotation = body.get("task"), body.get("annotation")
        if not isinstance(task, dict) or not isinstance(annotation, dict):
            raise FormatError(f"{action} payload needs [task] and [annotation] objects")
        config = project_config(label_config)
        n = _store_annotations(service, store_project, {**task, "annotations": [annotation]}, config)
        service.notify_corrections(store_project, n)
        return {"status": "stored", "new": n}
    if action == "ANNOTATIONS_DELETED":
        removed = 0
        items = body.get("annotations") or []
        if not isinstance(items, list):
            raise FormatError("ANNOTATIONS_DELETED payload needs an [annotations] list")
        for item in items:
            if isinstance(item, dict) and item.get("id") is not None:
                removed += _delete_annotation(service, store_project, item["id"])
        return {"status": "deleted", "removed": removed}
    if action == "TASKS_CREATED" and service.slow_models():
        return {"status": "queued", "new": _queue_tasks(service, body.get("tasks"), label_config, predictor)}
    if action == "START_TRAINING":
        background.add_task(_train_project, service, pid, label_config)
        return {"status": "training queued"}
    return {"status": "ignored", "action": action}


@router.post("/train")
@model_router.post("/train")
def train(body: TrainRequest, service: ServiceDep) -> dict[str, Any]:
    """The legacy training call: the tasks with annotations come in the request."""
    pid = project_id(body.project)
    store_project = _store_project(pid)
    config = project_config(body.label_config)
    n = sum(_store_annotations(service, store_project, t, config) for t in body.annotations)
    try:
        job = service.request_training(store_project, f"Label Studio train: {n} new annotation(s)")
    except BusyError:
        return {"status": "busy", "new": n}
    return {"status": "queued" if job else "stored", "new": n, "job": job.id if job else None}


@router.get("/versions")
@model_router.get("/versions")
def versions(service: ServiceDep, predictor: PredictorDep) -> dict[str, Any]:
    # the model versions are the main model's; another served model has only its own
    versions = service.model_versions.versions() if predictor is service.predictor else []
    names = [v.version for v in reversed(versions) if v.status != "rejected"]
    current = predictor.version
    if current and current not in names:
        names.insert(0, current)
    return {"versions": names}


@router.get("/metrics")
def metrics(service: ServiceDep) -> dict[str, Any]:
    return {
        "model": service.model_info(),
        "models": service.models_info(),
        "requests": service.stats.snapshot(),
        "retraining": service.retrainer.status() if service.retrainer is not None else None,
        "corrections": {"projects": service.store.projects(), "last_id": service.store.last_id()},
    }


# --- corrections ------------------------------------------------------------------------------------
def _store_annotations(
    service: Service, project: str, task: dict[str, Any], config: LabelStudioConfig
) -> int:
    """Store every non-cancelled annotation of ``task``; returns how many were new."""
    new = 0
    for doc in task_documents(task, config, source="annotations"):
        annotation_id = doc.meta.get("annotation_id")
        doc_key = f"annotation-{annotation_id}" if annotation_id is not None else f"task-{task.get('id')}"
        annotator = f"user-{doc.meta.get('annotator') or 'unknown'}"
        stored = service.store.add(project, doc_key, annotator, "labelstudio", doc)
        # HOOK (suggestion log): scored against the latest suggestion for the task, after the answer.
        service.evidence.score(project, f"task-{doc.meta.get('task_id')}", stored)
        if stored is not None:
            new += 1
    return new


def _delete_annotation(service: Service, project: str, annotation_id: Any) -> int:
    doc_key = f"annotation-{annotation_id}"
    annotators = {c.annotator for c in service.store.history(project, doc_key)}
    return sum(service.store.delete(project, doc_key, a, "labelstudio") is not None for a in annotators)


def _queue_tasks(service: Service, tasks: Any, label_config: str | None, predictor: Predictor) -> int:
    """Queue imported tasks for the slow models ahead of the annotator: the one the webhook's URL
    names when it is slow, else every slow one served. Returns how many (note, model) were new."""
    if not isinstance(tasks, list):
        raise FormatError("TASKS_CREATED payload needs a [tasks] list")
    _, docs = _task_documents(tasks, project_config(label_config), "TASKS_CREATED")
    slow = service.slow_models()
    targets = [predictor] if predictor in slow else slow
    new = sum(service.predicting.queue(p, docs) for p in targets)
    log.info(
        "TASKS_CREATED: %d task(s) with text, %d queued for %d slow model(s)", len(docs), new, len(targets)
    )
    return new


def _train_project(service: Service, pid: int | None, label_config: str | None) -> None:
    """After START_TRAINING: pull the project's annotations when Label Studio is reachable, then train."""
    project = _store_project(pid)
    if service.labelstudio is not None and pid is not None:
        try:
            config = project_config(label_config)
            tasks = service.labelstudio.export_tasks(pid)
            n = sum(_store_annotations(service, project, t, config) for t in tasks)
            log.info("Label Studio project [%s]: pulled %d task(s), %d new annotation(s)", pid, len(tasks), n)
        except (KiwiError, httpx.HTTPError, ValueError) as e:
            log.warning("Label Studio project [%s]: could not pull annotations (%s)", pid, type(e).__name__)
    try:
        service.request_training(project, "Label Studio START_TRAINING")
    except BusyError:
        log.info("Label Studio project [%s]: a training job is already running", pid)

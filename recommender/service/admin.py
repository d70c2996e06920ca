"""Operator endpoints: status, model versions, promotion and rollback, training jobs."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from recommender import __version__
from recommender.errors import NotFoundError
from recommender.service.bodies import CleanJsonRoute
from recommender.service.state import ServiceDep
from recommender.service.status_page import render_status_page, status_view

router = APIRouter(tags=["admin"], route_class=CleanJsonRoute)


@router.get("/status")
def status(service: ServiceDep) -> dict[str, Any]:
    """The service's state; ``page`` holds every figure of the status page (``GET /``)."""
    return {
        "model": service.model_info(),
        "models": service.models_info(),
        "retraining": service.retrainer.status() if service.retrainer is not None else None,
        "recommenders": {name: rec.model_dump() for name, rec in service.settings.recommenders.items()},
        "precompute": service.ahead.status(),
        "page": status_view(service),
    }


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def status_page(service: ServiceDep) -> HTMLResponse:
    """The status page for operators and annotation leads (same auth as the API)."""
    retraining = service.retrainer.status() if service.retrainer is not None else None
    return HTMLResponse(render_status_page(status_view(service), retraining, __version__))


@router.get("/models")
def models(service: ServiceDep) -> dict[str, Any]:
    return {
        "current": service.model_versions.current_version(),
        "serving": service.predictor.version,
        "versions": [v.to_dict() for v in service.model_versions.versions()],
    }


@router.post("/models/{version}/promote")
def promote(version: str, service: ServiceDep) -> dict[str, Any]:
    path = service.model_versions.promote(version, reason="promoted through the API")
    service.predictor.load(path)
    return {"serving": service.predictor.version}


@router.post("/models/rollback")
def rollback(service: ServiceDep) -> dict[str, Any]:
    version = service.model_versions.rollback()
    service.predictor.load(service.model_versions.path(version))
    return {"serving": service.predictor.version}


@router.get("/jobs")
def jobs(service: ServiceDep) -> dict[str, Any]:
    if service.retrainer is None:
        return {"queued": [], "running": [], "finished": []}
    status = service.retrainer.status()
    return {key: status[key] for key in ("queued", "running", "finished")}


@router.get("/jobs/{job_id}")
def job(job_id: int, service: ServiceDep) -> dict[str, Any]:
    if service.retrainer is None:
        raise NotFoundError(f"no training job [{job_id}]: the retraining worker is off")
    return service.retrainer.job(job_id).to_dict()


@router.post("/jobs")
def request_job(service: ServiceDep, project: str = "api") -> dict[str, Any]:
    job = service.request_training(project, "requested through the API")
    if job is None:
        raise NotFoundError("the retraining worker is off (KIWI_RETRAIN=false)")
    return job.to_dict()

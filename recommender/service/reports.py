"""Agreement reports over a project's stored corrections (the same report as `kiwi agreement`)."""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, PlainTextResponse, Response

from recommender.agreement import add_model_rater, agreement_report
from recommender.agreement.render import html_report, markdown_report
from recommender.agreement.suggested import suggestion_raters
from recommender.document import Document
from recommender.errors import DocumentError, NotFoundError
from recommender.service.bodies import CleanJsonRoute
from recommender.service.state import ServiceDep, client_of

router = APIRouter(tags=["reports"], route_class=CleanJsonRoute)


@router.get("/projects/{project}/agreement", response_model=None)
def project_agreement(
    project: str,
    request: Request,
    service: ServiceDep,
    format: Literal["json", "html", "markdown"] = "json",
    include_model: bool = False,
    suggestions: bool = True,
    resamples: Annotated[int, Query(ge=1, le=10_000)] = 1000,
) -> dict[str, Any] | Response:
    """Agreement between the annotators of ``project`` (newest correction of each note per annotator).

    ``include_model`` adds the served model as one more rater. ``suggestions`` adds the "model vs
    annotators" table: each model version's logged suggestions for the project's notes. JSON leaves
    out note text; the HTML and Markdown reports show disagreements in context, for the annotation
    lead.
    """
    raters: dict[str, list[Document]] = defaultdict(list)
    for doc in service.store.latest(project):
        raters[doc.meta["correction"]["annotator"]].append(doc)
    if not raters:
        raise NotFoundError(f"no stored corrections for project [{project}]")
    if include_model:
        with service.model_call(client_of(request), service.deadline()):
            add_model_rater(raters, service.predictor.current)
    if len(raters) < 2:
        raise DocumentError(
            f"project [{project}] has corrections from one rater only [{', '.join(raters)}]; "
            "agreement needs two (or include_model=true)"
        )
    models = (
        suggestion_raters(service.evidence.log.suggestions(project), raters)
        if suggestions and service.evidence.enabled
        else None
    )
    report = agreement_report(raters, models=models, resamples=resamples)
    if format == "html":
        return HTMLResponse(html_report(report.to_dict()))
    if format == "markdown":
        return PlainTextResponse(markdown_report(report.to_dict()), media_type="text/markdown")
    return report.to_dict(with_text=False)

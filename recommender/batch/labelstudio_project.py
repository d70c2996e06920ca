"""A Label Studio project as a corpus run's input and output, through the service's Label Studio client
(``recommender.service.labelstudio_client``, handed in by the command: :class:`ProjectClient` is what
this module asks of it).

Input: every task of the project, page by page; a note is the task data key the project's labeling
config names, its id the task id. A task that already carries a prediction of the model version is
left out before anything is predicted: Label Studio itself, not a file of ours, says what is done, so
a run stopped anywhere (a crash, Ctrl-C, a push refused) and run again leaves each task with exactly
one prediction of that version. A task without that data key, or with an empty or overlong text, is
reported by its id and the run goes on.

Output: one prediction per task (``model_version`` the model's version, results as the ``labelstudio``
format writes them, restricted to the labels the project's config offers), sent from the driver in
Label Studio's bulk import, ``CHUNK`` predictions a request and at most ``writers`` requests at once,
so Label Studio is not flooded. A request Label Studio refuses as invalid stored none of its
predictions: they are sent again one by one, so one bad prediction costs only its own task. A request
that fails otherwise is not retried in the run (Label Studio may have stored it before the answer was
lost): its tasks are reported, and the next run sees whether their predictions are there.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Protocol

from recommender.batch.notes import Corpus
from recommender.document import Document
from recommender.errors import ConfigError, FormatError
from recommender.formats.labelstudio import LabelStudioConfig, document_prediction, labeling_config, task_text
from recommender.guidelines import labelstudio_config

PAGE_SIZE = 100  # tasks per page read
CHUNK = 100  # predictions per request (Label Studio checks up to 500 before storing any)


class ProjectClient(Protocol):
    """The calls to Label Studio a run makes (``LabelStudioClient`` has them)."""

    def project(self, project_id: int) -> dict[str, Any]: ...

    def tasks(
        self, project_id: int, page_size: int = ..., *, versions: bool = ...
    ) -> list[dict[str, Any]]: ...

    def create_prediction(self, task_id: int, prediction: dict[str, Any]) -> int: ...

    def import_predictions(self, project_id: int, predictions: list[dict[str, Any]]) -> bool: ...


@dataclass
class Project:
    """A project's tasks that still need a prediction of ``version``, as a corpus."""

    id: int
    version: str
    config: LabelStudioConfig
    corpus: Corpus  # note id = task id; bad: tasks without a usable text
    tasks: int  # all tasks of the project
    done: int  # tasks already carrying a prediction of ``version``

    def line(self) -> str:
        return (
            f"Label Studio project {self.id}: {self.tasks} task(s), {self.done} already with a prediction "
            f"of {self.version}, {len(self.corpus.notes)} to predict (note ids are task ids)"
        )


@dataclass
class Pushed:
    """What the pushes did; ``shown``: each pushed prediction as the annotator sees it (id: task id)."""

    shown: list[Document] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # task id -> why the push failed
    dropped: dict[str, int] = field(default_factory=dict)  # spans by label the config does not offer
    writers: int = 0
    seconds: float = 0.0

    def lines(self, project: Project) -> list[str]:
        rate = len(self.shown) / self.seconds if self.seconds else 0.0
        out = [
            f"{len(self.shown)} prediction(s) of {project.version} pushed to Label Studio project "
            f"{project.id} in {self.seconds:.1f} s ({rate:.1f}/s, {self.writers} writer(s))"
        ]
        if self.dropped:
            out.append(f"labels the project's config lacks, not sent: {self.dropped}")
        if self.failed:
            listed = ", ".join(f"{i} ({why})" for i, why in sorted(self.failed.items(), key=_task_order))
            out.append(f"{len(self.failed)} push(es) failed, tried again by the next run: {listed}")
        return out


def read_project(client: ProjectClient, project_id: int, version: str, max_chars: int) -> Project:
    """The project's tasks without a prediction of ``version``, their notes read leniently."""
    config = labeling_config(client.project(project_id).get("label_config") or labelstudio_config())
    tasks = sorted(client.tasks(project_id, PAGE_SIZE, versions=True), key=lambda t: int(t["id"]))
    corpus = Corpus()
    done = 0
    for task in tasks:
        if version in task["model_versions"]:
            done += 1
            continue
        try:
            text: str | None = task_text(task, config)
        except FormatError:
            text = None  # the reason below names the key, the task id is the note id
        corpus.add(str(task["id"]), text, max_chars)
    for task_id, why in corpus.bad.items():
        if why == "no text":
            corpus.bad[task_id] = f"no text in data[{config.text_key}]"
    return Project(project_id, version, config, corpus, len(tasks), done)


def push_predictions(
    client: ProjectClient, project: Project, docs: Sequence[Document], writers: int, chunk: int = CHUNK
) -> Pushed:
    """One prediction per document (``doc.id``: its task id), ``chunk`` a request and at most
    ``writers`` requests at once."""
    if writers <= 0 or chunk <= 0:
        raise ConfigError(f"writers and chunk must be positive, got [{writers}] and [{chunk}]")
    pushed = Pushed(writers=writers)
    start = time.monotonic()
    shown = [project.config.restrict(doc, pushed.dropped) for doc in docs]

    def entry(doc: Document) -> dict[str, Any]:
        return document_prediction(doc, project.config, project.version)

    def push(docs: list[Document]) -> dict[str, str]:
        """Task id -> why its prediction is not stored; the messages name tasks and statuses, no text."""
        try:
            if client.import_predictions(project.id, [{"task": int(d.id), **entry(d)} for d in docs]):
                return {}
        except ConfigError as e:
            return {d.id: str(e) for d in docs}
        failed = {}
        for doc in docs:  # refused as invalid, nothing stored: one by one names the bad one
            try:
                client.create_prediction(int(doc.id), entry(doc))
            except ConfigError as e:
                failed[doc.id] = str(e)
        return failed

    chunks = [shown[k : k + chunk] for k in range(0, len(shown), chunk)]
    with ThreadPoolExecutor(max_workers=writers, thread_name_prefix="ls-push") as pool:
        for docs_sent, failed in zip(chunks, pool.map(push, chunks), strict=True):
            pushed.failed.update(failed)
            pushed.shown.extend(d for d in docs_sent if d.id not in failed)
    pushed.seconds = time.monotonic() - start
    return pushed


def _task_order(item: tuple[str, str]) -> int:
    return int(item[0])


__all__ = ["CHUNK", "Project", "ProjectClient", "Pushed", "push_predictions", "read_project"]

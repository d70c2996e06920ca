"""Retraining: stored corrections in, an evaluated and (maybe) promoted model out.

One module per concern, shared by both schedulers:

- ``trainers``: an extractor family's ``train`` as a job calls it (``get_trainer``);
- ``training_data``: the corrections, the seed corpus and the fixed dev set a job uses (``heldout_split``);
- ``gate``: candidate and promoted model scored on the same notes, and the decision (``decide``);
- ``jobs``: one job from data to compare-and-swap promotion (``JobRunner``), and the ``Job`` record;
- ``local``: the in-process scheduler (SQLite, one process; ``Retrainer``);
- ``queue``: the job-library scheduler (PostgreSQL, replicas and trainers; ``JobQueue``);
- ``bootstrap``: the first model, trained on the seed corpus.
"""

from __future__ import annotations

from recommender.retraining.bootstrap import bootstrap
from recommender.retraining.gate import decide
from recommender.retraining.jobs import Job, JobRunner
from recommender.retraining.local import Retrainer
from recommender.retraining.trainers import Trainer, get_trainer
from recommender.retraining.training_data import Corpora, default_corpora, heldout_split

__all__ = [
    "Corpora",
    "Job",
    "JobRunner",
    "Retrainer",
    "Trainer",
    "bootstrap",
    "decide",
    "default_corpora",
    "get_trainer",
    "heldout_split",
]

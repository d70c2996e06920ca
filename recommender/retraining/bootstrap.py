"""The first model: trained on the seed corpus when no model version is promoted."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recommender.errors import ConfigError
from recommender.evaluation import evaluate_extractor
from recommender.extractors import load_extractor
from recommender.extractors.base import ModelInfo
from recommender.model_versions import ModelVersions
from recommender.progress import Progress, duration
from recommender.retraining.trainers import get_trainer
from recommender.retraining.training_data import SYNTHETIC_EPOCHS, default_corpora
from recommender.settings import Settings

log = logging.getLogger(__name__)


def bootstrap(
    settings: Settings,
    model_versions: ModelVersions,
    track: Progress[Any] | None = None,
    say: Callable[[str], None] | None = None,
) -> Path:
    """Train a first model on the seed corpus with the configured trainer, register and promote it as
    the baseline (nothing to compare it with). Used by ``kiwi serve --bootstrap``; ``say`` tells the
    user each step."""
    say = say or log.info
    corpora = default_corpora(settings, fetch=True, say=say)
    if not corpora.seed:
        raise ConfigError("no seed notes to train a first model on; set KIWI_SEED_CORPUS")
    dev = f"{len(corpora.dev)} for development" if corpora.dev else "too few for a development split"
    say(f"Training {settings.trainer} on {len(corpora.seed)} notes of {corpora.source} ({dev}).")
    trainer = get_trainer(settings.trainer, settings.trainer_config)
    started = time.monotonic()
    with model_versions.staging() as tmp:
        epochs = SYNTHETIC_EPOCHS if corpora.synthetic else None  # None: the family's own default
        out = trainer(corpora.seed, corpora.dev, tmp, None, epochs=epochs, track=track)
        info = ModelInfo.load(out)
        if corpora.dev and not info.metrics.get("dev"):  # families that do not score dev themselves
            say(f"Scoring on the {len(corpora.dev)} development notes ...")
            ev = evaluate_extractor(load_extractor(out), corpora.dev).to_dict()
            info.metrics = {**info.metrics, "dev": ev, "dev_notes": len(corpora.dev)}
        info.metrics = {"train_notes": len(corpora.seed), **info.metrics, "seed": corpora.source}
        info.save(out)
        version = model_versions.add(out)
    say(f"Trained {version} in {duration(time.monotonic() - started)}; {_dev_summary(info.metrics)}.")
    return model_versions.promote(
        version, reason="bootstrap on the seed corpus: the first model, the baseline"
    )


def _dev_summary(metrics: dict[str, Any]) -> str:
    dev = metrics.get("dev") or {}
    if not dev:
        return "development scores not measured (no development split)"
    parts = [f"{t.upper()} exact F1 {dev[t]['exact']['f1']:.3f}" for t in ("ner", "re", "spans") if t in dev]
    return f"on {metrics.get('dev_notes', '?')} development notes " + ", ".join(parts)


__all__ = ["bootstrap"]

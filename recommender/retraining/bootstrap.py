"""The first model: trained on the seed corpus when the registry has none promoted."""

from __future__ import annotations

from pathlib import Path

from recommender.errors import ConfigError
from recommender.registry import ModelRegistry
from recommender.retraining.data import default_corpora
from recommender.retraining.trainers import Track, get_trainer
from recommender.settings import Settings


def bootstrap(settings: Settings, registry: ModelRegistry, track: Track | None = None) -> Path:
    """Train a first model on the seed corpus with the configured trainer, register and promote it.

    Used by ``kiwi serve --bootstrap`` when the registry has no promoted model."""
    corpora = default_corpora(settings)
    if not corpora.seed:
        raise ConfigError("no seed notes to train a first model on; set KIWI_SEED_CORPUS")
    trainer = get_trainer(settings.trainer)
    with registry.staging() as tmp:
        out = trainer(corpora.seed, corpora.dev, tmp, None, epochs=None, track=track)
        version = registry.add(out)
    return registry.promote(version, reason="bootstrap on the seed corpus")


__all__ = ["bootstrap"]

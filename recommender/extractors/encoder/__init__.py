"""The encoder extractor (``kiwi.encoder.v1``): a BERT-style encoder with entity and modifier BIO heads and
an entity-modifier pair classifier. Importing this package does not import torch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from recommender.extractors.encoder.config import PAPER_BASE_MODEL, EncoderConfig, resolve_base_model

if TYPE_CHECKING:
    from recommender.extractors.encoder.extractor import EncoderExtractor
    from recommender.extractors.encoder.training import train_encoder


def __getattr__(name: str) -> Any:
    if name == "EncoderExtractor":
        from recommender.extractors.encoder.extractor import EncoderExtractor

        return EncoderExtractor
    if name == "train_encoder":
        from recommender.extractors.encoder.training import train_encoder

        return train_encoder
    raise AttributeError(name)


__all__ = ["PAPER_BASE_MODEL", "EncoderConfig", "EncoderExtractor", "resolve_base_model", "train_encoder"]

"""The durable correction store: every document an annotation tool sends for training, with history."""

from __future__ import annotations

from recommender.store.corrections import CorrectionStore, StoredCorrection, content_hash

__all__ = ["CorrectionStore", "StoredCorrection", "content_hash"]

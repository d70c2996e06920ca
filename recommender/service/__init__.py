"""The FastAPI service: INCEpTION and Label Studio adapters over one predictor, store and retrainer."""

from __future__ import annotations

from recommender.service.app import create_app

__all__ = ["create_app"]

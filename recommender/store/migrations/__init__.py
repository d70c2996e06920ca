"""Alembic revisions of the store's schema, applied by ``recommender.store.database.migrate``."""

"""Corpus-scale runs: a whole folder, export or archive of notes predicted once per model version.

``notes`` reads a corpus leniently (a bad note is reported by id, the others go on) and writes the
results; ``ray_runner`` spreads the model calls over a Ray cluster (``kiwi-recommender[ray]``) and
keeps the prediction cache exact. Nothing here is imported by the service.
"""

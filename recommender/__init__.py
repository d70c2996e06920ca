"""Kiwi Recommender: clinical pre-annotation for INCEpTION and Label Studio."""

from recommender.document import Document, Relation, Segment, Span
from recommender.errors import KiwiError
from recommender.schema import Schema, load_schema

__all__ = ["Document", "KiwiError", "Relation", "Schema", "Segment", "Span", "load_schema"]
__version__ = "0.1.0"

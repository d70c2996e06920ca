"""Scoring: one span matcher for models and annotators, P/R/F1 with bootstrap intervals, significance."""

from recommender.evaluation.matching import Alignment, Mention, align, relation_mentions, span_mentions
from recommender.evaluation.scorer import (
    Evaluation,
    Score,
    TaskCounts,
    TaskScore,
    count,
    entities_only,
    evaluate,
    evaluate_extractor,
)
from recommender.evaluation.stats import Comparison, compare

__all__ = [
    "Alignment",
    "Comparison",
    "Evaluation",
    "Mention",
    "Score",
    "TaskCounts",
    "TaskScore",
    "align",
    "compare",
    "count",
    "entities_only",
    "evaluate",
    "evaluate_extractor",
    "relation_mentions",
    "span_mentions",
]

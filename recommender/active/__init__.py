"""Active learning: strategies that choose which notes to annotate next (``strategies``, used by the
service's task order and suggestion scores) and a simulator that measures them on a gold corpus
(``simulate``, ``simulation_report``; those train models, so they are imported where used, never by
the service)."""

from recommender.active.strategies import STRATEGIES, Candidate, Strategy, get_strategy

__all__ = ["STRATEGIES", "Candidate", "Strategy", "get_strategy"]

"""Which UIMA types and features carry the Kiwi spans and relations in a CAS (INCEpTION's layers):
apart from ``xmi.py`` so the settings can name them without loading the CAS libraries."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class LayerMapping:
    """Which UIMA types and features carry the Kiwi spans and relations."""

    span_type: str = "webanno.custom.ClinicalEntity"
    span_feature: str = "label"
    relation_type: str = "webanno.custom.HasAttr"
    relation_feature: str = "label"
    governor: str = "Governor"
    dependent: str = "Dependent"


DEFAULT_LAYERS = LayerMapping()

__all__ = ["DEFAULT_LAYERS", "LayerMapping"]

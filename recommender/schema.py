"""The Kiwi annotation schema, read from ``annotation_guidelines/schema.json`` (the one source of truth)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache

from recommender.errors import SchemaError
from recommender.packaged import packaged_path

RELATION = "hasAttr"


@dataclass(frozen=True, slots=True)
class LabelType:
    name: str
    display: str
    color: str
    definition: str
    kind: str  # "entity" or "modifier"
    # a modifier whose span may overlap its entity's (guideline 3.1.3: bodyloc, course, severity only)
    overlaps_entity: bool = False


@dataclass(frozen=True)
class Schema:
    name: str
    version: str
    entities: tuple[LabelType, ...]
    modifiers: tuple[LabelType, ...]
    relation: str
    relation_color: str
    relation_definition: str
    allowed: dict[str, tuple[str, ...]]
    note: str

    @property
    def entity_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.entities)

    @property
    def modifier_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.modifiers)

    @property
    def overlapping_modifiers(self) -> tuple[str, ...]:
        """The modifiers whose span may overlap their entity's; the others never touch its words."""
        return tuple(t.name for t in self.modifiers if t.overlaps_entity)

    @property
    def labels(self) -> tuple[LabelType, ...]:
        return self.entities + self.modifiers

    @property
    def label_names(self) -> tuple[str, ...]:
        return self.entity_names + self.modifier_names

    @property
    def pairs(self) -> tuple[tuple[str, str], ...]:
        """Every allowed (entity type, modifier type) pair, in schema order."""
        return tuple((e, m) for e, mods in self.allowed.items() for m in mods)

    def label(self, name: str) -> LabelType:
        for t in self.labels:
            if t.name == name:
                return t
        raise SchemaError(f"unknown label [{name}]; expected one of {', '.join(self.label_names)}")

    def is_entity(self, name: str) -> bool:
        return name in self.entity_names

    def is_modifier(self, name: str) -> bool:
        return name in self.modifier_names

    def allows(self, head: str, tail: str) -> bool:
        return tail in self.allowed.get(head, ())


def _schema_text() -> str:
    return packaged_path("annotation_guidelines/schema.json").read_text(encoding="utf-8")


@cache
def load_schema() -> Schema:
    raw = json.loads(_schema_text())

    def types(key: str, kind: str) -> tuple[LabelType, ...]:
        return tuple(
            LabelType(
                t["name"], t["display"], t["color"], t["definition"], kind, bool(t.get("overlaps_entity"))
            )
            for t in raw[key]
        )

    rel = raw["relation"]
    schema = Schema(
        name=raw["name"],
        version=raw["version"],
        entities=types("entities", "entity"),
        modifiers=types("modifiers", "modifier"),
        relation=rel["name"],
        relation_color=rel["color"],
        relation_definition=rel["definition"],
        allowed={k: tuple(v) for k, v in rel["allowed"].items()},
        note=rel.get("note", ""),
    )
    for head, tails in schema.allowed.items():
        for name in (head, *tails):
            schema.label(name)  # fails fast on a typo in the schema file
    return schema

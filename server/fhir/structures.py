"""The R4 structure table (generated, see ``server.generate.structures``) as Python objects.

Answers "what elements does this type have, of which types, how many" for the validator, the
search index extraction, XML and ``_summary``. Loaded once per process; read-only afterwards.
"""

from __future__ import annotations

import functools
import gzip
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SPEC_DIR = Path(__file__).resolve().parent / "spec"


@dataclass(slots=True)
class Element:
    name: str
    types: list[str]
    min: int = 0
    max: int = 1  # -1: unbounded
    binding: str | None = None  # required ValueSet url
    targets: list[str] = field(default_factory=list)
    children: dict[str, Element] = field(default_factory=dict)
    content_ref: str | None = None
    choice_of: str | None = None  # "value[x]" for valueString …
    choices: list[str] = field(default_factory=list)  # names, on the "value[x]" entry itself
    modifier: bool = False
    summary: bool = False

    @property
    def is_list(self) -> bool:
        return self.max != 1

    @property
    def is_choice_group(self) -> bool:
        return bool(self.choices)


@dataclass(slots=True)
class Primitive:
    name: str
    json: str  # "string", "number" or "boolean"
    regex: re.Pattern[str] | None


@dataclass(slots=True)
class TypeDef:
    name: str
    kind: str  # resource, complex-type
    base: str | None
    abstract: bool
    elements: dict[str, Element]


class Structures:
    def __init__(self, data: dict[str, Any]):
        self.fhir_version: str = data["fhirVersion"]
        self.primitives = {
            name: Primitive(name, p["json"], re.compile(p["regex"]) if "regex" in p else None)
            for name, p in data["primitives"].items()
        }
        self.types = {name: TypeDef(name, t["kind"], t.get("base"), t["abstract"],
                                    _elements(t["elements"])) for name, t in data["types"].items()}
        for t in self.types.values():
            self._resolve_refs(t.elements)
        self.resource_types = sorted(n for n, t in self.types.items()
                                     if t.kind == "resource" and not t.abstract)

    def _resolve_refs(self, elements: dict[str, Element]) -> None:
        for el in elements.values():
            if el.content_ref:
                el.children = self.path(el.content_ref).children
                el.types = ["BackboneElement"]
            elif el.children:
                self._resolve_refs(el.children)

    def path(self, dotted: str) -> Element:
        type_name, *names = dotted.split(".")
        elements = self.types[type_name].elements
        el: Element | None = None
        for name in names:
            el = elements[name]
            elements = el.children
        assert el is not None
        return el

    def children(self, el: Element) -> dict[str, Element]:
        """Elements inside an element: its own (backbone) or those of its datatype."""
        if el.children:
            return el.children
        if len(el.types) == 1:
            t = self.types.get(el.types[0])
            if t is not None:
                return t.elements
        return {}

    def is_primitive(self, type_name: str) -> bool:
        return type_name in self.primitives

    def is_resource_type(self, name: str) -> bool:
        return name in self.types and self.types[name].kind == "resource" \
            and not self.types[name].abstract


def _elements(raw: dict[str, Any]) -> dict[str, Element]:
    out = {}
    for name, e in raw.items():
        out[name] = Element(
            name=name,
            types=e.get("t", []),
            min=e.get("min", 0),
            max=e.get("max", 1),
            binding=e.get("b"),
            targets=e.get("r", []),
            children=_elements(e["e"]) if "e" in e else {},
            content_ref=e.get("cr"),
            choice_of=e.get("ch"),
            choices=e.get("choice", []),
            modifier=e.get("mod", False),
            summary=e.get("sum", False),
        )
    return out


@functools.cache
def structures() -> Structures:
    with gzip.open(SPEC_DIR / "structures.json.gz", "rt", encoding="utf-8") as fh:
        return Structures(json.load(fh))

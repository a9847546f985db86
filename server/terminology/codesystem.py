"""A CodeSystem resource compiled for the terminology operations (codesystem.html).

A CodeSystem is a nested tree of concepts; the operations need a flat table by code, the
hierarchy both ways (``is-a`` filters, ``parent``/``child`` in ``$lookup``), each concept's
display in every language it has, and its texts folded once for the ``filter`` search. Compiling
happens once per resource version (the built-in files once per process).

Concept status follows the properties R4 defines for all code systems (codesystem.html#defined-
props): ``inactive`` (boolean) or ``status`` ``retired`` make a concept inactive;
``notSelectable`` makes it abstract. A ``parent`` or ``child`` property adds hierarchy links
beside the nesting.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from server.terminology.languages import fold, primary, same_language

#: Designation.use of synonyms (SNOMED CT "Synonym"), as the designation-use value set offers.
SYNONYM = "900000000000013009"


@dataclass(frozen=True, slots=True)
class Designation:
    language: str | None
    use: dict[str, Any] | None  # a Coding
    value: str

    @property
    def is_synonym(self) -> bool:
        return self.use is not None and self.use.get("code") == SYNONYM

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.language:
            out["language"] = self.language
        if self.use:
            out["use"] = self.use
        out["value"] = self.value
        return out


def designations_of(items: list[dict[str, Any]] | None) -> tuple[Designation, ...]:
    return tuple(Designation(d.get("language"), d.get("use"), d["value"])
                 for d in items or () if isinstance(d, dict) and isinstance(d.get("value"), str))


@dataclass(slots=True)
class Concept:
    code: str
    display: str | None
    definition: str | None
    designations: tuple[Designation, ...]
    #: (property code, value key such as ``valueCode``, value), in the order of the resource.
    properties: tuple[tuple[str, str, Any], ...]
    parents: list[str] = field(default_factory=list)
    children: list[str] = field(default_factory=list)
    abstract: bool = False
    inactive: bool = False
    texts: tuple[str, ...] = ()  # folded code, display and designations, for ``filter``

    def property_values(self, code: str) -> list[Any]:
        return [v for c, _, v in self.properties if c == code]


def pick_display(display: str | None, designations: tuple[Designation, ...],
                 languages: tuple[str, ...], default_language: str) -> str | None:
    """The display in the first of ``languages`` the concept has, else its own display."""
    for tag in languages:
        if tag == "*" or same_language(tag, default_language) and display:
            return display
        found = _designation_in(designations, tag)
        if found is not None:
            return found
    return display


def _designation_in(designations: tuple[Designation, ...], tag: str) -> str | None:
    """Best designation for ``tag``: exact tag before same primary language, a preferred term
    (no use, or not a synonym) before a synonym."""
    want = tag.lower()
    best: tuple[int, str] | None = None
    for d in designations:
        if not d.language:
            continue
        if d.language.lower() == want:
            rank = 0
        elif primary(d.language) == primary(want):
            rank = 2
        else:
            continue
        if d.is_synonym:
            rank += 1
        if best is None or rank < best[0]:
            best = (rank, d.value)
    return best[1] if best else None


class CodeSystemIndex:
    """The concepts of one CodeSystem version, by code, with their hierarchy."""

    def __init__(self, resource: dict[str, Any]):
        self.resource = resource
        self.url: str = resource.get("url") or ""
        self.version: str | None = resource.get("version")
        self.name: str = resource.get("name") or resource.get("title") or self.url
        self.language: str = resource.get("language") or "en"
        self.case_sensitive: bool = resource.get("caseSensitive") is not False
        self.content: str = resource.get("content") or "complete"
        self.property_types: dict[str, str] = {
            p["code"]: p.get("type", "string") for p in resource.get("property") or ()
            if isinstance(p, dict) and isinstance(p.get("code"), str)}
        self.concepts: dict[str, Concept] = {}
        self._folded: dict[str, str] = {}
        for item, parent in _walk(resource.get("concept") or [], None):
            self._add(item, parent)
        self._link_properties()

    # -- building --------------------------------------------------------------------------

    def _add(self, item: dict[str, Any], parent: str | None) -> None:
        code = item["code"]
        props = tuple((p["code"], key, p[key]) for p in item.get("property") or ()
                      if isinstance(p, dict) and "code" in p
                      for key in p if key.startswith("value"))
        concept = self.concepts.get(code)
        if concept is None:
            designations = designations_of(item.get("designation"))
            display = item.get("display")
            texts = tuple(dict.fromkeys(fold(t) for t in (
                code, display or "", *(d.value for d in designations)) if t))
            concept = Concept(code, display, item.get("definition"), designations, props,
                              texts=texts)
            concept.abstract = any(c == "notSelectable" and v is True for c, _, v in props)
            concept.inactive = any((c == "inactive" and v is True) or
                                   (c == "status" and v == "retired") for c, _, v in props)
            self.concepts[code] = concept
            if not self.case_sensitive:
                self._folded.setdefault(code.casefold(), code)
        if parent is not None:
            _link(concept, self.concepts[parent])

    def _link_properties(self) -> None:
        for concept in self.concepts.values():
            for code, _, value in concept.properties:
                other = self.concepts.get(value) if isinstance(value, str) else None
                if other is None:
                    continue
                if code == "parent":
                    _link(concept, other)
                elif code == "child":
                    _link(other, concept)

    # -- queries ---------------------------------------------------------------------------

    def get(self, code: str) -> Concept | None:
        concept = self.concepts.get(code)
        if concept is None and not self.case_sensitive:
            real = self._folded.get(code.casefold())
            concept = self.concepts.get(real) if real is not None else None
        return concept

    def descendants(self, code: str) -> list[str]:
        """Codes below ``code`` (not itself), each once, in tree order."""
        seen: dict[str, None] = {}
        stack = list(reversed(self.concepts[code].children)) if code in self.concepts else []
        while stack:
            c = stack.pop()
            if c in seen or c == code:
                continue
            seen[c] = None
            stack.extend(reversed(self.concepts[c].children))
        return list(seen)

    def ancestors(self, code: str) -> list[str]:
        seen: dict[str, None] = {}
        stack = list(self.concepts[code].parents) if code in self.concepts else []
        while stack:
            c = stack.pop()
            if c in seen or c == code:
                continue
            seen[c] = None
            stack.extend(self.concepts[c].parents)
        return list(seen)

    def display(self, concept: Concept, languages: tuple[str, ...]) -> str | None:
        return pick_display(concept.display, concept.designations, languages, self.language)

    def all_displays(self, concept: Concept) -> list[str]:
        """Every text that is a valid display of the concept, in any language."""
        return [t for t in (concept.display, *(d.value for d in concept.designations)) if t]


def _link(child: Concept, parent: Concept) -> None:
    if parent.code not in child.parents:
        child.parents.append(parent.code)
    if child.code not in parent.children:
        parent.children.append(child.code)


def _walk(items: list[Any], parent: str | None) -> Iterator[tuple[dict[str, Any], str | None]]:
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("code"), str):
            continue
        yield item, parent
        yield from _walk(item.get("concept") or [], item["code"])

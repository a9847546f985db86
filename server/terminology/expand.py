"""Expanding a ValueSet's ``compose`` into its codes (valueset.html#expansion).

One include is the codes of its code system (all of them, the listed ones, or those its filters
select: every filter must hold) intersected with the expansion of each value set it names; the
value set is the union of its includes minus the union of its excludes, in definition order.
Filters supported (R4 filter-operator): on ``concept``/``code`` ``=``, ``is-a``,
``descendent-of``, ``is-not-a``, ``generalizes``, ``in``, ``not-in``, ``regex``; on ``display``
``=`` and ``regex``; on any concept property ``=``, ``in``, ``not-in``, ``exists``, ``regex``
(``parent`` and ``child`` see the hierarchy).

A value set that lists codes of a code system the server does not know can still be expanded
(the codes are taken as given); one that includes a whole unknown code system, or filters one,
cannot: the specification asks for an error then. Validation is lenient instead and remembers the
unknown systems, so that a code of another system can still be checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from server.fhir.errors import FhirError, invalid
from server.terminology.codesystem import (
    CodeSystemIndex,
    Concept,
    Designation,
    designations_of,
    pick_display,
)
from server.terminology.languages import fold
from server.terminology.resolve import Terminology

#: Largest expansion the server builds; beyond it, the client is told to page or filter.
MAX_EXPANSION = 100_000
_MAX_DEPTH = 16
_HIERARCHY_OPS = ("is-a", "descendent-of", "is-not-a", "generalizes")

Key = tuple[str, str]


@dataclass(slots=True)
class Entry:
    """One code of an expansion, with what the value set and its code system say of it."""

    system: str
    version: str | None
    code: str
    concept: Concept | None  # None: the code system is not known (listed codes only)
    display: str | None
    designations: tuple[Designation, ...]
    language: str = "en"  # language of ``display``
    abstract: bool = False
    inactive: bool = False
    extra_texts: tuple[str, ...] = ()

    def display_in(self, languages: tuple[str, ...]) -> str | None:
        return pick_display(self.display, self.designations, languages, self.language)

    @property
    def texts(self) -> tuple[str, ...]:
        base = self.concept.texts if self.concept is not None else (fold(self.code),)
        return base + self.extra_texts


@dataclass(slots=True)
class Expansion:
    entries: dict[Key, Entry] = field(default_factory=dict)
    #: Code systems included whole or filtered that the server does not know (lenient mode).
    unknown_systems: list[str] = field(default_factory=list)
    #: Code systems used, with their versions, for ``expansion.parameter`` (used-codesystem).
    used: dict[str, str | None] = field(default_factory=dict)


class Expander:
    def __init__(self, terminology: Terminology, *, lenient: bool = False,
                 exclude_systems: frozenset[str] = frozenset(),
                 system_versions: dict[str, str] | None = None):
        self.terminology = terminology
        self.lenient = lenient
        self.exclude_systems = exclude_systems
        self.system_versions = system_versions or {}
        self.result = Expansion()

    async def expand(self, value_set: dict[str, Any]) -> Expansion:
        self.result.entries = await self._value_set(value_set, ())
        return self.result

    # -- value sets ------------------------------------------------------------------------

    async def _value_set(self, vs: dict[str, Any], stack: tuple[str, ...]) -> dict[Key, Entry]:
        compose = vs.get("compose")
        if not isinstance(compose, dict):
            if isinstance(vs.get("expansion"), dict):
                return _from_expansion(vs)
            raise FhirError(422, "invalid", f"the value set {_name(vs)} has no compose and no "
                            "expansion, so it has no codes to work with")
        out: dict[Key, Entry] = {}
        for part in compose.get("include") or []:
            for key, entry in (await self._part(part, stack)).items():
                out.setdefault(key, entry)
                if len(out) > MAX_EXPANSION:
                    raise FhirError(422, "too-costly", f"the expansion of {_name(vs)} has more "
                                    f"than {MAX_EXPANSION} codes")
        for part in compose.get("exclude") or []:
            for key in await self._part(part, stack):
                out.pop(key, None)
        if compose.get("inactive") is False:
            out = {k: e for k, e in out.items() if not e.inactive}
        return out

    async def _part(self, part: dict[str, Any], stack: tuple[str, ...]) -> dict[Key, Entry]:
        system = part.get("system")
        selected: dict[Key, Entry] | None = None
        if isinstance(system, str):
            if system in self.exclude_systems:
                return {}
            selected = await self._system_part(system, part)
        elif part.get("concept") or part.get("filter"):
            raise invalid("a compose include/exclude with concepts or filters needs a system "
                          "(cmp-2)")
        for ref in part.get("valueSet") or []:
            nested = await self._referenced(ref, stack)
            selected = nested if selected is None else {
                k: e for k, e in selected.items() if k in nested}
        return selected or {}

    async def _referenced(self, ref: str, stack: tuple[str, ...]) -> dict[Key, Entry]:
        if ref in stack or len(stack) >= _MAX_DEPTH:
            raise FhirError(422, "processing", f"the value set {ref} includes itself "
                            f"({' -> '.join((*stack, ref))})")
        vs = await self.terminology.value_set(ref)
        if vs is None:
            if self.lenient:
                self.result.unknown_systems.append(ref)
                return {}
            raise FhirError(422, "not-found", f"the value set {ref} (included by another) is "
                            "not known to this server")
        return await self._value_set(vs, (*stack, ref))

    # -- code systems ----------------------------------------------------------------------

    async def _system_part(self, system: str, part: dict[str, Any]) -> dict[Key, Entry]:
        version = part.get("version") or self.system_versions.get(system)
        cs = await self.terminology.code_system(system, version)
        if cs is not None:
            self.result.used.setdefault(system, cs.version)
        listed = part.get("concept")
        if listed:
            return _listed(system, version, cs, listed)
        if cs is None or cs.content == "not-present":
            what = system + (f"|{version}" if version else "")
            if self.lenient:
                self.result.unknown_systems.append(system)
                return {}
            raise FhirError(422, "not-found", f"the code system {what} is not known to this "
                            "server, so the value set cannot be expanded")
        codes = list(cs.concepts)
        for f in part.get("filter") or []:
            codes = apply_filter(cs, codes, f)
        return {(system, c): entry_of(system, cs, cs.concepts[c]) for c in codes}


def entry_of(system: str, cs: CodeSystemIndex, concept: Concept) -> Entry:
    return Entry(system, cs.version, concept.code, concept, concept.display, concept.designations,
                 cs.language, concept.abstract, concept.inactive)


def _listed(system: str, version: str | None, cs: CodeSystemIndex | None,
            listed: list[dict[str, Any]]) -> dict[Key, Entry]:
    """An include's enumerated concepts; codes a complete, known code system lacks are left out
    (a value set cannot hold codes its system does not define)."""
    out: dict[Key, Entry] = {}
    for item in listed:
        code = item.get("code") if isinstance(item, dict) else None
        if not isinstance(code, str):
            continue
        concept = cs.get(code) if cs is not None else None
        if cs is not None and concept is None and cs.content == "complete":
            continue
        own = designations_of(item.get("designation"))
        if concept is not None and cs is not None:
            entry = entry_of(system, cs, concept)
            if item.get("display"):
                entry.display = item["display"]
                entry.extra_texts = (fold(item["display"]),)
            entry.designations = own + entry.designations
            entry.extra_texts += tuple(fold(d.value) for d in own)
        else:
            entry = Entry(system, cs.version if cs else version, code, None, item.get("display"),
                          own, extra_texts=tuple(fold(t) for t in (
                              item.get("display") or "", *(d.value for d in own)) if t))
        out[(system, code)] = entry
    return out


def _from_expansion(vs: dict[str, Any]) -> dict[Key, Entry]:
    """A value set given only as an expansion: its ``contains``, nested ones flattened."""
    out: dict[Key, Entry] = {}
    stack = list(reversed((vs.get("expansion") or {}).get("contains") or []))
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        stack.extend(reversed(item.get("contains") or []))
        system, code = item.get("system"), item.get("code")
        if not isinstance(system, str) or not isinstance(code, str):
            continue
        own = designations_of(item.get("designation"))
        out.setdefault((system, code), Entry(
            system, item.get("version"), code, None, item.get("display"), own,
            vs.get("language") or "en", item.get("abstract") is True,
            item.get("inactive") is True,
            tuple(fold(t) for t in (item.get("display") or "", *(d.value for d in own)) if t)))
    return out


# -- filters ------------------------------------------------------------------------------

def apply_filter(cs: CodeSystemIndex, codes: list[str], f: dict[str, Any]) -> list[str]:
    prop, op, value = f.get("property"), f.get("op"), f.get("value")
    if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
        raise invalid("a compose filter needs a property, an op and a value")
    if prop in ("concept", "code"):
        keep = _code_filter(cs, codes, op, value)
    elif prop == "display":
        keep = _value_filter(codes, op, value, lambda c: [cs.concepts[c].display or ""])
    else:
        keep = _value_filter(codes, op, value, lambda c: _property_texts(cs.concepts[c], prop))
    return [c for c in codes if c in keep]


def _code_filter(cs: CodeSystemIndex, codes: list[str], op: str, value: str) -> set[str]:
    if op in _HIERARCHY_OPS:
        concept = cs.get(value)
        if concept is None:
            return set(codes) if op == "is-not-a" else set()
        root = concept.code
        if op == "is-a":
            return {root, *cs.descendants(root)}
        if op == "descendent-of":
            return set(cs.descendants(root))
        if op == "generalizes":
            return {root, *cs.ancestors(root)}
        return set(codes) - {root, *cs.descendants(root)}
    return _value_filter(codes, op, value, lambda c: [c])


def _value_filter(codes: list[str], op: str, value: str, values_of: Any) -> set[str]:
    if op == "=":
        return {c for c in codes if value in values_of(c)}
    if op in ("in", "not-in"):
        wanted = {v.strip() for v in value.split(",")}
        hit = {c for c in codes if wanted.intersection(values_of(c))}
        return hit if op == "in" else set(codes) - hit
    if op == "exists":
        if value not in ("true", "false"):
            raise invalid(f"the exists filter takes true or false, not {value!r}")
        return {c for c in codes if bool([v for v in values_of(c) if v]) == (value == "true")}
    if op == "regex":
        try:
            pattern = re.compile(value)
        except re.error as exc:
            raise invalid(f"the regex filter {value!r} is not a valid expression: {exc}") \
                from None
        return {c for c in codes if any(pattern.fullmatch(v) for v in values_of(c))}
    raise FhirError(400, "not-supported", f"the filter operator {op!r} is not supported here")


def _property_texts(concept: Concept, prop: str) -> list[str]:
    if prop == "parent":
        return list(concept.parents)
    if prop == "child":
        return list(concept.children)
    out = []
    for value in concept.property_values(prop):
        if isinstance(value, bool):
            out.append("true" if value else "false")
        elif isinstance(value, dict):  # valueCoding
            out.append(str(value.get("code", "")))
        else:
            out.append(str(value))
    return out


def _name(vs: dict[str, Any]) -> str:
    return str(vs.get("url") or vs.get("id") or "(unnamed)")

"""The search parameters this server supports, compiled once at start-up from the R4 definitions.

Built from the generated table ``spec/search_parameters.json`` (see
``server.generate.search_params``). Each parameter's FHIRPath expression is compiled for each of
its base types (:mod:`server.search.fhirpath`); whatever cannot be compiled or indexed is logged
once (event ``search.param.skipped``), left out, and listed in :attr:`Registry.skipped` for the
CapabilityStatement, never half-supported.

``_id`` and ``_lastUpdated`` are answered by the store from its own columns
(:attr:`SearchParam.column`); no index rows are extracted for them. Nor for a parameter whose
expression is the union of other parameters' (Observation's ``combo-code`` is ``code`` |
``component-code``, Patient's ``phonetic`` is ``name``): it is searched through their rows
(:meth:`Registry.stored_codes`).
"""

from __future__ import annotations

import functools
import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from server.fhir.structures import structures
from server.search.fhirpath import SPEC, FhirPath, FhirPathError, compile_path, type_model
from server.storage.sqlite_schema import param_id

log = logging.getLogger(__name__)

#: Base types whose parameters every resource type inherits.
COMMON_BASES = ("Resource", "DomainResource")
#: Parameters served from the store's own columns rather than from index rows.
COLUMNS = {"_id": "id", "_lastUpdated": "lastUpdated"}
#: Data types each kind of parameter can index (search.html, one section per kind); subtypes
#: count too (Age is a Quantity, code a string, canonical a uri). A node of any other type (a
#: date parameter over ``performedString``, ``value-quantity`` over SampledData) adds no row.
INDEXABLE: dict[str, frozenset[str]] = {
    "string": frozenset({"string", "uri", "HumanName", "Address"}),
    "token": frozenset({"Coding", "CodeableConcept", "Identifier", "ContactPoint", "boolean",
                        "string", "id", "uri"}),
    "reference": frozenset({"Reference", "uri"}),
    "date": frozenset({"date", "dateTime", "instant", "Period", "Timing"}),
    "number": frozenset({"integer", "decimal", "Range"}),
    "quantity": frozenset({"Quantity", "Money", "Range"}),
    "uri": frozenset({"uri"}),
}
#: Why the parameters without an expression or of type special are not supported.
_UNSUPPORTED = {
    "_text": "full-text search on the narrative is not supported",
    "_content": "full-text search on the whole resource is not supported",
    "_query": "named queries are not supported",
    "_filter": "the _filter parameter is not supported",
}


def indexed_as(kind: str, type_name: str) -> str | None:
    """The type in ``INDEXABLE[kind]`` a node of ``type_name`` is indexed as (itself or its
    nearest ancestor), or None when that kind cannot index it."""
    model = type_model()
    current: str | None = type_name
    allowed = INDEXABLE.get(kind, frozenset())
    while current is not None:
        if current in allowed:
            return current
        current = model.base_of(current)
    return None


@dataclass(frozen=True, slots=True)
class Component:
    """One part of a composite parameter: the parameter it refers to (its type says how the
    value is indexed) and its expression, compiled relative to the composite's elements."""

    param: SearchParam
    expression: str
    extractors: Mapping[str, FhirPath] = field(repr=False)


@dataclass(frozen=True, slots=True, eq=False)
class SearchParam:
    code: str
    type: str  # string token reference date number quantity uri composite
    url: str
    bases: tuple[str, ...]
    expression: str | None = None
    description: str = ""
    targets: tuple[str, ...] = ()
    modifiers: tuple[str, ...] = ()
    comparators: tuple[str, ...] = ()
    multiple_or: bool | None = None
    multiple_and: bool | None = None
    #: Compiled expression per base type (``Resource`` for the common parameters).
    extractors: Mapping[str, FhirPath] = field(default_factory=dict, repr=False)
    components: tuple[Component, ...] = field(default=(), repr=False)
    #: "id" or "lastUpdated": answered from the store's own column, no index rows.
    column: str | None = None

    def extractor(self, resource_type: str) -> FhirPath | None:
        found = self.extractors.get(resource_type)
        if found is None:
            for base in COMMON_BASES:
                found = self.extractors.get(base)
                if found is not None:
                    break
        return found

    def index_codes(self) -> tuple[str, ...]:
        """Every code this parameter's index rows are stored under: its own, plus the ones
        the ``:text``, ``:of-type`` and ``:identifier`` modifiers search."""
        if self.column:
            return ()
        codes = [self.code]
        if self.type == "token":
            codes.append(f"{self.code}:text")
            if any(t.name == "Identifier" for x in self.extractors.values() for t in x.types):
                codes.append(f"{self.code}:of-type")
        elif self.type == "reference":
            codes.append(f"{self.code}:identifier")
        return tuple(codes)


class Registry:
    def __init__(self, by_type: dict[str, dict[str, SearchParam]],
                 params: list[SearchParam], skipped: list[tuple[str, str]],
                 unsupported: dict[str, tuple[tuple[str, str], ...]]):
        self._by_type = {t: MappingProxyType(p) for t, p in by_type.items()}
        self._unions = {t: _unions(t, p) for t, p in by_type.items()}
        self.params = tuple(params)
        self.by_url = MappingProxyType({p.url: p for p in params})
        #: (url, reason) of every R4 parameter (or part of one) that is not supported.
        self.skipped = tuple(skipped)
        #: Resource type ("" for those of every type: ``_text`` …) -> (code, reason) of the
        #: parameters on it that are not supported.
        self.unsupported = MappingProxyType(unsupported)

    def why_unsupported(self, resource_type: str, code: str) -> str | None:
        """Why a parameter R4 defines on the type (or on every type) is not supported; None
        when it is, or R4 does not define it."""
        for type_ in (resource_type, ""):
            for name, why in self.unsupported.get(type_, ()):
                if name == code:
                    return why
        return None

    def params_for(self, resource_type: str) -> Mapping[str, SearchParam]:
        """Code -> parameter for one resource type, the common ones (``_id``, ``_tag`` …)
        included; empty for an unknown type."""
        return self._by_type.get(resource_type, MappingProxyType({}))

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        return self.params_for(resource_type).get(code)

    @functools.cached_property
    def common(self) -> frozenset[str]:
        """The codes of the parameters every resource type has (``_id``, ``_tag`` …): those
        of a search across all types (search.html#base)."""
        return frozenset.intersection(*(frozenset(self.params_for(t))
                                        for t in self.resource_types))

    @property
    def resource_types(self) -> tuple[str, ...]:
        return tuple(self._by_type)

    def is_union(self, resource_type: str, code: str) -> bool:
        """Whether the parameter's rows are those of other parameters (none of its own)."""
        return code in self._unions.get(resource_type, {})

    def stored_codes(self, resource_type: str, code: str) -> tuple[str, ...]:
        """The codes whose index rows a search on ``code`` (or on one of its modifier codes,
        ``combo-code:text``) reads: its own, or those of the parameters it is the union of."""
        base, colon, suffix = code.partition(":")
        found = self._unions.get(resource_type, {}).get(base)
        return (code,) if found is None else tuple(c + colon + suffix for c in found)


#: The server's own SearchParameters (``SearchParameter-*.json``), beside its profiles.
CUSTOM = Path(__file__).resolve().parents[2] / "profiles"


def load_definitions() -> list[dict[str, Any]]:
    """Every R4 SearchParameter (the generated table) and the server's own ones."""
    with open(SPEC, encoding="utf-8") as fh:
        return list(json.load(fh)["parameters"]) + custom_definitions()


def custom_definitions(directory: Path = CUSTOM) -> list[dict[str, Any]]:
    """The SearchParameter resources under ``profiles/`` in the shape of the R4 table, so they
    are compiled, listed in the CapabilityStatement and indexed on write like the R4 ones.
    Resources stored before a parameter was added have no rows for it until rewritten."""
    out = []
    for path in sorted(directory.glob("SearchParameter-*.json")):
        sp = json.loads(path.read_text(encoding="utf-8"))
        out.append({
            "url": sp["url"], "code": sp["code"], "base": sp["base"], "type": sp["type"],
            "expression": sp.get("expression"), "target": sp.get("target") or [],
            "modifier": sp.get("modifier") or [], "comparator": sp.get("comparator") or [],
            "multipleOr": sp.get("multipleOr"), "multipleAnd": sp.get("multipleAnd"),
            "component": sp.get("component") or [], "xpathUsage": sp.get("xpathUsage"),
            "description": " ".join((sp.get("description") or "").split()),
        })
    return out


def composite_shape_problem(kinds: tuple[str, ...]) -> str | None:
    """Why composites of these component types cannot be indexed, or None. The index stores a
    composite as a token, then at most one coded or text part (token, string, or a quantity's
    unit) and at most two ranges (date, number, or a quantity's value): every R4 composite."""
    if len(kinds) < 2 or kinds[0] != "token":
        return f"a composite of {' and '.join(kinds)} does not start with a token"
    if any(k not in ("token", "string", "quantity", "date", "number") for k in kinds[1:]):
        return f"a composite of {' and '.join(kinds)} has a part that cannot be indexed"
    coded = sum(k in ("token", "string", "quantity") for k in kinds[1:])
    ranged = sum(k in ("quantity", "date", "number") for k in kinds[1:])
    if coded > 1 or ranged > 2:
        return f"a composite of {' and '.join(kinds)} has more parts than the index holds"
    return None


class _Builder:
    """Compiles the raw definitions; collects what cannot be supported and why."""

    def __init__(self, raw: list[dict[str, Any]]):
        self.raw_by_url = {p["url"]: p for p in raw}
        self.raw = raw
        self.skipped: list[tuple[str, str]] = []
        self._component_params: dict[str, SearchParam] = {}

    def skip(self, url: str, reason: str) -> None:
        self.skipped.append((url, reason))

    def build(self) -> Registry:
        params = [p for p in (self.param(raw) for raw in self.raw) if p is not None]
        resource_types = structures().resource_types
        by_type: dict[str, dict[str, SearchParam]] = {t: {} for t in resource_types}
        for param in params:
            for resource_type in self.applies_to(param, resource_types):
                existing = by_type[resource_type].get(param.code)
                if existing is not None:
                    raise RuntimeError(f"search parameter {resource_type}.{param.code} is "
                                       f"defined twice ({existing.url}, {param.url})")
                by_type[resource_type][param.code] = param
        check_param_ids(by_type)
        return Registry(by_type, params, self.skipped, self.unsupported())

    def unsupported(self) -> dict[str, tuple[tuple[str, str], ...]]:
        """What :attr:`Registry.unsupported` holds: the skipped parameters by base type."""
        out: dict[str, list[tuple[str, str]]] = {}
        for url, reason in self.skipped:
            raw = self.raw_by_url[url]
            bases = raw["base"]
            for base in bases:
                why = reason
                # A parameter of several bases may be skipped on one only: "Base: reason".
                if len(bases) > 1 and any(reason.startswith(f"{b}: ") for b in bases):
                    if not reason.startswith(f"{base}: "):
                        continue
                    why = reason.removeprefix(f"{base}: ")
                key = "" if base in COMMON_BASES else base
                out.setdefault(key, []).append((raw["code"], why))
        return {k: tuple(v) for k, v in out.items()}

    @staticmethod
    def applies_to(param: SearchParam, resource_types: Iterable[str]) -> list[str]:
        model = type_model()
        common = [b for b in param.bases if b in COMMON_BASES]
        if common:
            return [t for t in resource_types if any(model.is_a(t, b) for b in common)]
        return [t for t in param.bases if param.column or t in param.extractors]

    def param(self, raw: dict[str, Any]) -> SearchParam | None:
        code, url = raw["code"], raw["url"]
        if raw["type"] == "special":
            self.skip(url, f"special parameter ({raw.get('xpathUsage')} search) is not supported")
            return None
        if code in COLUMNS:
            return self.make(raw, {}, (), column=COLUMNS[code])
        if not raw.get("expression"):
            self.skip(url, _UNSUPPORTED.get(code, "no FHIRPath expression"))
            return None
        extractors: dict[str, FhirPath] = {}
        components: dict[str, list[tuple[SearchParam, str, FhirPath]]] = {}
        for base in raw["base"]:
            try:
                extractors[base] = self.compile_for(raw, base)
                if raw["type"] == "composite":
                    components[base] = self.compile_components(raw, base, extractors[base])
            except FhirPathError as exc:
                extractors.pop(base, None)
                prefix = f"{base}: " if len(raw["base"]) > 1 else ""
                self.skip(url, prefix + str(exc))
        if not extractors:
            return None
        parts: tuple[Component, ...] = ()
        if raw["type"] == "composite":
            first = next(iter(components.values()))
            parts = tuple(
                Component(param, expr, MappingProxyType(
                    {base: comps[i][2] for base, comps in components.items()}))
                for i, (param, expr, _) in enumerate(first))
        return self.make(raw, extractors, parts)

    def compile_for(self, raw: dict[str, Any], base: str) -> FhirPath:
        path = compile_path(raw["expression"], base)
        if path.empty:
            raise FhirPathError(f"the expression has no part for {base}")
        if raw["type"] != "composite" and not any(
                indexed_as(raw["type"], t.name) for t in path.types):
            found = ", ".join(sorted({t.name for t in path.types}))
            raise FhirPathError(f"the expression yields {found}, which a {raw['type']} "
                                f"parameter cannot index")
        return path

    def compile_components(self, raw: dict[str, Any], base: str,
                           main: FhirPath) -> list[tuple[SearchParam, str, FhirPath]]:
        out = []
        for comp in raw["component"]:
            target = self.raw_by_url.get(comp["definition"])
            if target is None:
                raise FhirPathError(f"component {comp['definition']} is not defined")
            if target["type"] in ("composite", "special"):
                raise FhirPathError(f"component {comp['definition']} is {target['type']}")
            path = compile_path(comp["expression"], base, focus=main.types)
            if not any(indexed_as(target["type"], t.name) for t in path.types):
                found = ", ".join(sorted({t.name for t in path.types})) or "nothing"
                raise FhirPathError(f"component {comp['expression']!r} yields {found}, which "
                                    f"its {target['type']} parameter {target['code']!r} "
                                    f"cannot index")
            out.append((self.component_param(target), comp["expression"], path))
        problem = composite_shape_problem(tuple(param.type for param, _, _ in out))
        if problem:
            raise FhirPathError(problem)
        return out

    def component_param(self, raw: dict[str, Any]) -> SearchParam:
        """The parameter a component refers to, as a description (code, type, url); it may
        belong to other resource types, so it is not compiled here."""
        found = self._component_params.get(raw["url"])
        if found is None:
            found = self._component_params[raw["url"]] = self.make(raw, {}, ())
        return found

    @staticmethod
    def make(raw: dict[str, Any], extractors: dict[str, FhirPath],
             components: tuple[Component, ...], column: str | None = None) -> SearchParam:
        return SearchParam(
            code=raw["code"], type=raw["type"], url=raw["url"], bases=tuple(raw["base"]),
            expression=raw.get("expression"), description=raw.get("description") or "",
            targets=tuple(raw.get("target") or ()), modifiers=tuple(raw.get("modifier") or ()),
            comparators=tuple(raw.get("comparator") or ()),
            multiple_or=raw.get("multipleOr"), multiple_and=raw.get("multipleAnd"),
            extractors=MappingProxyType(extractors), components=components, column=column)


def _expression_parts(expression: str, resource_type: str) -> frozenset[str]:
    """The alternatives (``a | b``, outside parentheses) of an expression that start at
    ``resource_type``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(expression):
        depth += (ch == "(") - (ch == ")")
        if ch == "|" and depth == 0:
            parts.append(expression[start:i])
            start = i + 1
    parts.append(expression[start:])
    return frozenset(p for p in map(str.strip, parts)
                     if re.match(rf"\(*{resource_type}\b(?![-\w])", p))


def _unions(resource_type: str, params: Mapping[str, SearchParam]) -> dict[str, tuple[str, ...]]:
    """Code -> codes of the parameters of the same kind whose expressions for the type (and
    components, for composites) together are exactly the parameter's: its index rows would be
    theirs, so it keeps none. Of two parameters with the same expression, the code that sorts
    first keeps the rows."""
    shapes: dict[str, tuple[frozenset[str], str, tuple[tuple[str, str], ...]]] = {}
    for code, p in params.items():
        if p.column is None and p.expression and p.extractor(resource_type) is not None:
            parts = _expression_parts(p.expression, resource_type)
            if parts:
                shapes[code] = (parts, p.type, tuple((c.param.type, c.expression)
                                                     for c in p.components))
    out: dict[str, tuple[str, ...]] = {}
    # Fewest parts first: a parameter's candidate sources are decided before it.
    for code, (parts, *kind) in sorted(shapes.items(), key=lambda s: (len(s[1][0]), s[0])):
        subsets = [c for c, (other, *k) in shapes.items() if c != code and c not in out
                   and k == kind and other <= parts and (other < parts or c < code)]
        # The largest subsets: a part of another is not needed.
        sources = [c for c in subsets if not any(shapes[c][0] < shapes[d][0] for d in subsets)]
        if sources and frozenset().union(*(shapes[c][0] for c in sources)) == parts:
            out[code] = tuple(sorted(sources))
    return out


def check_param_ids(by_type: Mapping[str, Mapping[str, SearchParam]]) -> None:
    """The store keys index rows by ``param_id(type, code)``, a 31-bit hash: two parameters
    (or modifier codes) of one type sharing an id would mix their rows, so refuse to start."""
    seen: dict[int, tuple[str, str]] = {}
    for resource_type, params in by_type.items():
        for param in params.values():
            for code in param.index_codes():
                pid = param_id(resource_type, code)
                other = seen.setdefault(pid, (resource_type, code))
                if other != (resource_type, code):
                    raise RuntimeError(f"search parameter ids collide: {other} and "
                                       f"{(resource_type, code)} both hash to {pid}")


def build(raw: list[dict[str, Any]] | None = None) -> Registry:
    """Compile the registry (from the R4 table, or from ``raw`` definitions in tests) and log
    each parameter that is not supported."""
    registry = _Builder(load_definitions() if raw is None else raw).build()
    for url, reason in registry.skipped:
        log.info("search.param.skipped", extra={"event": "search.param.skipped", "url": url,
                                                "reason": reason})
    return registry


@functools.cache
def registry() -> Registry:
    return build()


_FILTERS = re.compile(r"\.where\(|\.resolve\(|\.extension\(|\.exists\(|\.first\(|\.empty\(|\.not\(")


#: Element types a parameter of each kind indexes as exactly one row.
_ONE_ROW = {"date": {"date", "dateTime", "instant", "Period", "Timing"}, "string": {"string"},
            "number": {"decimal", "integer"}, "reference": {"Reference"}, "uri": {"uri"}}


@functools.cache
def one_row(resource_type: str, code: str) -> bool:
    """Whether a resource of this type has at most one index row for the parameter: its
    expression for the type is one path whose every element has max 1 and whose value is
    indexed as one row (``Observation.effective``: a date, dateTime, instant, Period or Timing,
    which is searched by its outer limits). Then conditions repeated with AND hold for the same row, and a sort needs no
    min/max over rows. Conservative: anything it cannot tell is "no"."""
    param = registry().get(resource_type, code)
    if param is None:
        return False
    if param.column is not None:
        return True
    allowed = _ONE_ROW.get(param.type)
    if allowed is None or not param.expression:
        return False
    parts = [p.strip() for p in param.expression.split("|")]
    mine = [p for p in parts if p.lstrip("(").startswith(resource_type + ".")]
    if len(mine) != 1 or _FILTERS.search(mine[0]):
        return False
    path = re.sub(r"\s+as\s+\w+\)?$|\.as\(\w+\)$|\.ofType\(\w+\)$", "", mine[0].lstrip("("))
    names = path.split(".")[1:]
    elements = structures().types[resource_type].elements
    types: set[str] = set()
    for name in names:
        el = elements.get(name) or elements.get(name + "[x]")
        if el is None:
            return False
        if el.choices:
            types = {t for choice in el.choices for t in elements[choice].types}
            el = elements[el.choices[0]]
        else:
            types = set(el.types)
        if el.max != 1:
            return False
        elements = structures().children(el)
    as_type = re.search(r"\s+as\s+(\w+)\)?$|\.as\((\w+)\)$|\.ofType\((\w+)\)$", mine[0])
    if as_type:
        types = {next(g for g in as_type.groups() if g)}
    return bool(names) and bool(types) and types <= allowed

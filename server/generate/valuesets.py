"""Expansions of the value sets that R4 binds with strength *required*, for the validator.

Reads the ValueSets and CodeSystems of ``valuesets.json.gz`` (and, for the HL7 v3 and v2 code
systems some of them draw on, ``v3-codesystems.json.gz`` and ``v2-tables.json.gz``) and expands
every ValueSet that an element of the structure table binds as required (``Element.binding``).

Output: ``terminology/r4/required-valuesets.json``::

    {"_generated": "...", "fhirVersion": "4.0.1",
     "valueSets": {"http://hl7.org/fhir/ValueSet/administrative-gender":
                       {"codes": {"http://hl7.org/fhir/administrative-gender": ["male", ...]}},
                   "http://hl7.org/fhir/ValueSet/mimetypes":
                       {"codes": {}, "unchecked": [{"system": "urn:ietf:bcp:13",
                                                    "reason": "...", "syntax": "mime-type"}]},
                   ...}}

``codes`` is what could be enumerated; ``unchecked`` lists the parts that could not (a whole
external terminology such as UCUM, BCP-13 or BCP-47, a code system or value set that the
definitions do not contain, a filter that cannot be evaluated here), each with its reason and,
where a grammar stands in for the list, the name of the syntax the validator checks instead.
An unchecked part without ``system`` makes any code acceptable.

The expansion errs on the side of accepting: where an exclusion or a value-set intersection
cannot be evaluated it is left out, so the table may accept a code the value set does not hold
but never rejects one it does. Concepts marked ``notSelectable`` (abstract groupers) are left
out of expansions of whole code systems and filters; explicitly listed concepts are kept.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.fhir.structures import Element, structures
from server.generate import REPO, definitions_from_args, header, load_bundle, write_json

OUTPUT = REPO / "terminology" / "r4" / "required-valuesets.json"
SOURCES = ["valuesets.json.gz", "v3-codesystems.json.gz", "v2-tables.json.gz"]

# Terminologies defined by a grammar rather than a list: the validator checks the syntax.
SYNTAX = {
    "urn:ietf:bcp:13": ("mime-type", "BCP-13 (IANA) mime types are not enumerated in the "
                                     "definitions"),
    "urn:ietf:bcp:47": ("language", "BCP-47 language tags are a grammar, not a list"),
    "urn:iso:std:iso:4217": ("currency", "ISO 4217 currencies are not in the definitions"),
}
UNENUMERABLE = {
    "http://unitsofmeasure.org": "UCUM units are a grammar, not a list",
    "http://snomed.info/sct": "SNOMED CT is not in the definitions",
    "http://loinc.org": "LOINC is not in the definitions",
}
HIERARCHY_PARENT = ("parent", "subsumedBy")


@dataclass
class Expansion:
    """A (partial) expansion: enumerated codes per system plus what could not be enumerated."""

    codes: dict[str, set[str]] = field(default_factory=dict)
    unchecked: list[dict[str, str]] = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return not self.unchecked

    def add(self, system: str, codes: Iterable[str]) -> None:
        self.codes.setdefault(system, set()).update(codes)

    def merge(self, other: Expansion) -> None:
        for system, codes in other.codes.items():
            self.add(system, codes)
        for part in other.unchecked:
            if part not in self.unchecked:
                self.unchecked.append(part)

    def pairs(self) -> set[tuple[str, str]]:
        return {(s, c) for s, codes in self.codes.items() for c in codes}


def _unchecked(system: str | None, reason: str) -> Expansion:
    part = {"reason": reason}
    if system is not None:
        part = {"system": system, **part}
        if system in SYNTAX:
            part["syntax"] = SYNTAX[system][0]
    return Expansion(unchecked=[part])


class CodeSystemIndex:
    """One code system's concepts, their hierarchy and properties, for filters."""

    def __init__(self, cs: dict[str, Any]):
        self.url: str = cs["url"]
        self.content: str = cs.get("content", "complete")
        self.codes: list[str] = []
        self.parents: dict[str, set[str]] = {}
        self.props: dict[str, dict[str, set[str]]] = {}
        self.not_selectable: set[str] = set()
        self._read(cs.get("concept", []), None)

    def _read(self, concepts: list[dict[str, Any]], parent: str | None) -> None:
        for c in concepts:
            code = c["code"]
            self.codes.append(code)
            parents = self.parents.setdefault(code, set())
            if parent is not None:
                parents.add(parent)
            for p in c.get("property", []):
                value = next((str(v) for k, v in p.items() if k.startswith("value")), "")
                if p["code"] in HIERARCHY_PARENT:
                    parents.add(value)
                elif p["code"] == "child":
                    self.parents.setdefault(value, set()).add(code)
                elif p["code"] in ("notSelectable", "abstract") and value in ("True", "true"):
                    self.not_selectable.add(code)
                self.props.setdefault(code, {}).setdefault(p["code"], set()).add(value)
            self._read(c.get("concept", []), code)

    def selectable(self) -> list[str]:
        return [c for c in self.codes if c not in self.not_selectable]

    def descendants(self, code: str) -> set[str]:
        children: dict[str, set[str]] = {}
        for child, parents in self.parents.items():
            for p in parents:
                children.setdefault(p, set()).add(child)
        out: set[str] = set()
        stack = [code]
        while stack:
            for child in children.get(stack.pop(), ()):
                if child not in out:
                    out.add(child)
                    stack.append(child)
        return out

    def ancestors(self, code: str) -> set[str]:
        out: set[str] = set()
        stack = [code]
        while stack:
            for parent in self.parents.get(stack.pop(), ()):
                if parent not in out:
                    out.add(parent)
                    stack.append(parent)
        return out

    def apply_filter(self, flt: dict[str, Any]) -> set[str] | None:
        """The codes a compose filter selects, or None where it cannot be evaluated here."""
        prop, op, value = flt.get("property"), flt.get("op"), flt.get("value", "")
        known = set(self.codes)
        if prop == "concept" and op == "is-a":
            return ({value} & known) | self.descendants(value)
        if prop == "concept" and op == "descendent-of":
            return self.descendants(value)
        if prop == "concept" and op == "is-not-a":
            return known - {value} - self.descendants(value)
        if prop == "concept" and op == "generalizes":
            return ({value} & known) | self.ancestors(value)
        if prop == "concept" and op == "in":
            return known & {v.strip() for v in value.split(",")}
        if prop == "code" and op == "regex":
            pattern = re.compile(value)
            return {c for c in known if pattern.fullmatch(c)}
        if op == "=" and prop not in (None, "concept"):
            return {c for c in known if value in self.props.get(c, {}).get(prop, ())}
        if op == "exists" and prop not in (None, "concept"):
            want = value == "true"
            return {c for c in known if (prop in self.props.get(c, {})) == want}
        return None


class Expander:
    def __init__(self, valuesets: dict[str, dict[str, Any]],
                 codesystems: dict[str, dict[str, Any]]):
        self.valuesets = valuesets
        self.codesystems = codesystems
        self._indexes: dict[str, CodeSystemIndex] = {}
        self._done: dict[str, Expansion] = {}

    def index(self, url: str) -> CodeSystemIndex:
        if url not in self._indexes:
            self._indexes[url] = CodeSystemIndex(self.codesystems[url])
        return self._indexes[url]

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> Expansion:
        url = url.split("|")[0]
        if url in self._done:
            return self._done[url]
        if url in seen:
            return _unchecked(None, f"value set {url} imports itself")
        vs = self.valuesets.get(url)
        if vs is None:
            result = _unchecked(None, f"value set {url} is not in the definitions")
        elif "compose" not in vs:
            result = _unchecked(None, f"value set {url} has no compose")
        else:
            result = self._compose(vs["compose"], seen | {url})
        self._done[url] = result
        return result

    def _compose(self, compose: dict[str, Any], seen: frozenset[str]) -> Expansion:
        out = Expansion()
        for inc in compose.get("include", []):
            out.merge(self._part(inc, seen))
        for exc in compose.get("exclude", []):
            removed = self._part(exc, seen)
            # An exclusion that cannot be enumerated is skipped: the result may accept too much,
            # never too little.
            for system, codes in removed.codes.items():
                if system in out.codes:
                    out.codes[system] -= codes
        return out

    def _part(self, inc: dict[str, Any], seen: frozenset[str]) -> Expansion:
        """One include/exclude: the intersection of its system part and its imported sets."""
        operands = [self.expand(v, seen) for v in inc.get("valueSet", [])]
        if inc.get("system"):
            operands.insert(0, self._system_part(inc))
        if not operands:
            return Expansion()
        known = [o for o in operands if o.complete]
        if not known:
            out = Expansion()
            for o in operands:
                out.merge(o)
            return out
        # Intersect what is enumerable; an unenumerable operand only narrows the result, so
        # leaving it out errs on the side of accepting.
        pairs = set.intersection(*(o.pairs() for o in known))
        out = Expansion()
        for system, code in pairs:
            out.add(system, [code])
        return out

    def _system_part(self, inc: dict[str, Any]) -> Expansion:
        system = inc["system"]
        if inc.get("concept"):
            return Expansion(codes={system: {c["code"] for c in inc["concept"]}})
        if system in SYNTAX:
            return _unchecked(system, SYNTAX[system][1])
        if system in UNENUMERABLE:
            return _unchecked(system, UNENUMERABLE[system])
        if system not in self.codesystems:
            return _unchecked(system, f"code system {system} is not in the definitions")
        cs = self.index(system)
        if cs.content != "complete":
            return _unchecked(system, f"code system {system} has content '{cs.content}'")
        codes = set(cs.selectable())
        for flt in inc.get("filter", []):
            selected = self._filter(cs, flt)
            if selected is None:
                return _unchecked(system, f"filter {flt.get('property')} {flt.get('op')} "
                                          f"{flt.get('value')} cannot be evaluated here")
            codes &= selected
        return Expansion(codes={system: codes})

    def _filter(self, cs: CodeSystemIndex, flt: dict[str, Any]) -> set[str] | None:
        try:
            return cs.apply_filter(flt)
        except re.error:
            return None


def required_bindings() -> dict[str, list[str]]:
    """ValueSet url -> the element paths that bind it as required (from the structure table)."""
    out: dict[str, list[str]] = {}
    seen: set[int] = set()

    def walk(path: str, elements: dict[str, Element]) -> None:
        if id(elements) in seen:
            return
        seen.add(id(elements))
        for name, el in elements.items():
            if el.binding:
                out.setdefault(el.binding, []).append(f"{path}.{name}")
            if el.children:
                walk(f"{path}.{name}", el.children)

    for type_name, t in structures().types.items():
        walk(type_name, t.elements)
    return out


def load_terminology(directory: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """ValueSets and CodeSystems by url; the first source that defines a url wins."""
    valuesets: dict[str, Any] = {}
    codesystems: dict[str, Any] = {}
    for name in SOURCES:
        if not (directory / name).exists():
            continue
        for r in load_bundle(directory, name):
            if r["resourceType"] == "ValueSet":
                valuesets.setdefault(r["url"], r)
            elif r["resourceType"] == "CodeSystem" and r.get("content") != "supplement":
                codesystems.setdefault(r["url"], r)
    return valuesets, codesystems


def generate(directory: Path) -> dict[str, Any]:
    valuesets, codesystems = load_terminology(directory)
    expander = Expander(valuesets, codesystems)
    table: dict[str, Any] = {}
    for url in sorted(required_bindings()):
        exp = expander.expand(url)
        entry: dict[str, Any] = {"codes": {s: sorted(c) for s, c in sorted(exp.codes.items())}}
        if exp.unchecked:
            entry["unchecked"] = exp.unchecked
        table[url] = entry
    return {
        "_generated": header("valuesets", SOURCES + ["server/fhir/spec/structures.json.gz"]),
        "fhirVersion": "4.0.1",
        "valueSets": table,
    }


def main(argv: list[str] | None = None) -> None:
    directory = definitions_from_args(__doc__, argv)
    write_json(OUTPUT, generate(directory))


if __name__ == "__main__":
    main()

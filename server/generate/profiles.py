"""Telemedicine StructureDefinitions: the differentials authored under ``profiles/src/``, each
completed with its metadata and a snapshot generated onto the R4 base definition.

Input: ``profiles/src/<id>.json`` — a StructureDefinition holding only what an author decides:
``id``, ``name``, ``title``, ``description``, ``type``, ``baseDefinition``, ``context`` (for
extensions) and ``differential``. Differential elements are written with ``id`` alone; the
``path`` and ``sliceName`` follow from it.

Output: ``profiles/StructureDefinition-<id>.json`` — the full StructureDefinition (R4
profiling.html#snapshot): the fixed metadata (url under ``https://fhir.consilium.health``,
version, status, fhirVersion 4.0.1, kind, derivation ``constraint`` …), the differential as
authored (with paths) and a snapshot made by merging each differential element onto the base
snapshot of ``profiles-resources`` / ``profiles-types``:

* an element that exists in the base is merged: cardinality (which may only narrow), types
  (only a subset of the base's, references to a subset of targets), fixed[x] / pattern[x],
  binding, mustSupport, texts; constraints are added to the base's, with ``source`` = the
  profile;
* a slice (``Organization.extension:careLevel``) is inserted after the sliced element and its
  earlier slices, as a copy of the sliced element; an extension element gets the usual slicing
  by ``url`` when it has none;
* an element below one that has no children in the snapshot (``Task.restriction.period.end``,
  ``Extension.extension:kind.url``) unrolls that element's datatype first.

A differential that names an unknown element, widens a cardinality or adds a type is refused
(SystemExit), so a mistake in a source fails the build rather than producing a snapshot that
says something else. The extension's own ``Extension.url`` fixedUri is added from its id.
Outputs are pretty-printed JSON, byte-stable for the same sources and definitions; nobody edits
them by hand (tests compare them with a fresh build).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from server.generate import REPO, definitions_from_args, load_bundle

SOURCES = REPO / "profiles" / "src"
OUTPUT = REPO / "profiles"
BASE = "https://fhir.consilium.health"
HL7 = "http://hl7.org/fhir/StructureDefinition/"
VERSION = "0.1.0"
DATE = "2025-07-01"
#: What an author may write in a source; everything else is the generator's.
AUTHORED = ("id", "name", "title", "description", "purpose", "type", "baseDefinition",
            "context", "differential")
#: Keys of an output StructureDefinition, in the order of the R4 resource.
ORDER = ("resourceType", "id", "url", "version", "name", "title", "status", "experimental",
         "date", "publisher", "description", "purpose", "fhirVersion", "kind", "abstract",
         "context", "type", "baseDefinition", "derivation", "snapshot", "differential")
EXTENSION_SLICING = {"discriminator": [{"type": "value", "path": "url"}], "ordered": False,
                     "rules": "open"}


class ProfileError(SystemExit):
    """A source that cannot be turned into a consistent StructureDefinition."""


def card(value: str) -> float:
    return float("inf") if value == "*" else int(value)


def split_id(element_id: str) -> tuple[str, str]:
    """``A.b:s.c`` -> (``A.b:s``, ``c``). Slice names here never contain dots."""
    parent, _, last = element_id.rpartition(".")
    return parent, last


def path_of(element_id: str) -> str:
    return ".".join(part.split(":")[0] for part in element_id.split("."))


class Snapshot:
    """The element list of one profile while its differential is applied."""

    def __init__(self, profile_url: str, base: dict[str, Any], types: dict[str, dict[str, Any]]):
        self.url = profile_url
        self.types = types
        self.elements: list[dict[str, Any]] = copy.deepcopy(base["snapshot"]["element"])

    def find(self, element_id: str) -> int | None:
        for i, el in enumerate(self.elements):
            if el["id"] == element_id:
                return i
        return None

    def subtree_end(self, i: int) -> int:
        """Index after element ``i``, its children and (if sliced) its slices."""
        own = self.elements[i]["id"]
        j = i + 1
        while j < len(self.elements):
            other = self.elements[j]["id"]
            if not (other.startswith(own + ".") or other.startswith(own + ":")):
                break
            j += 1
        return j

    def ensure(self, element_id: str) -> int:
        """Index of ``element_id``, creating it (as a slice or by unrolling a datatype)."""
        found = self.find(element_id)
        if found is not None:
            return found
        parent_id, last = split_id(element_id)
        if not parent_id:
            raise ProfileError(f"{self.url}: unknown root element {element_id}")
        if ":" in last:
            return self.add_slice(parent_id, last)
        parent = self.ensure(parent_id)
        below = self.elements[parent + 1:self.subtree_end(parent)]
        if any(e["id"].startswith(parent_id + ".") for e in below):
            raise ProfileError(f"{self.url}: {element_id} is not an element of {parent_id}")
        self.unroll(parent)
        found = self.find(element_id)
        if found is None:
            raise ProfileError(f"{self.url}: {element_id} is not an element of {parent_id}")
        return found

    def add_slice(self, parent_id: str, last: str) -> int:
        name, _, slice_name = last.partition(":")
        sliced_id = f"{parent_id}.{name}" if parent_id else name
        i = self.ensure(sliced_id)
        sliced = self.elements[i]
        if "slicing" not in sliced:
            if name not in ("extension", "modifierExtension"):
                raise ProfileError(f"{self.url}: {sliced_id} is sliced without a slicing")
            sliced["slicing"] = copy.deepcopy(EXTENSION_SLICING)
        element = {k: copy.deepcopy(v) for k, v in sliced.items() if k != "slicing"}
        element["id"] = f"{sliced_id}:{slice_name}"
        element["sliceName"] = slice_name
        at = self.subtree_end(i)
        self.elements.insert(at, _reorder(element))
        return at

    def unroll(self, i: int) -> None:
        """Insert the children of element ``i``'s (single) datatype right after it."""
        parent = self.elements[i]
        codes = {t["code"] for t in parent.get("type") or []}
        if len(codes) != 1:
            raise ProfileError(f"{self.url}: cannot constrain inside {parent['id']}: it has "
                               f"{len(codes)} types (restrict it to one first)")
        code = codes.pop()
        datatype = self.types.get(code)
        if datatype is None:
            raise ProfileError(f"{self.url}: no definition of the datatype {code}")
        children = []
        for el in datatype["snapshot"]["element"][1:]:
            child = copy.deepcopy(el)
            child["id"] = parent["id"] + el["id"][len(code):]
            child["path"] = parent["path"] + el["path"][len(code):]
            children.append(child)
        self.elements[i + 1:i + 1] = children

    def apply(self, diff: dict[str, Any]) -> None:
        i = self.ensure(diff["id"])
        merge(self.elements[i], diff, self.url)


def merge(target: dict[str, Any], diff: dict[str, Any], url: str) -> None:
    """Merge one differential element onto its snapshot element (profiling.html#snapshot)."""
    where = f"{url}: {diff['id']}"
    for key, value in diff.items():
        if key in ("id", "path", "sliceName"):
            continue
        if key == "min":
            if value < target.get("min", 0) and "sliceName" not in target:
                raise ProfileError(f"{where}: min {value} is below the base's "
                                   f"{target.get('min')}")
            target["min"] = value
        elif key == "max":
            if card(value) > card(target.get("max", "*")):
                raise ProfileError(f"{where}: max {value} is above the base's {target['max']}")
            target["max"] = value
        elif key == "type":
            target["type"] = narrowed_types(target.get("type") or [], value, where)
        elif key == "constraint":
            target["constraint"] = list(target.get("constraint") or []) + [
                {**c, "source": url} for c in value]
        else:
            target[key] = copy.deepcopy(value)
    if card(target.get("max", "*")) < target.get("min", 0):
        raise ProfileError(f"{where}: min {target['min']} is above max {target['max']}")
    ordered = _reorder(target)
    target.clear()
    target.update(ordered)


def narrowed_types(base: list[dict[str, Any]], types: list[dict[str, Any]],
                   where: str) -> list[dict[str, Any]]:
    """The differential's types, checked to be among the base's (same code)."""
    allowed = {_type_code(t): t for t in base}
    for t in types:
        if _type_code(t) not in allowed:
            raise ProfileError(f"{where}: type {t['code']} is not allowed by the base "
                               f"({', '.join(sorted(allowed))})")
        base_targets = allowed[_type_code(t)].get("targetProfile")
        if t.get("targetProfile") and base_targets and HL7 + "Resource" not in base_targets:
            known = {p.rsplit("/", 1)[-1] for p in base_targets}
            for target in t["targetProfile"]:
                if target.startswith(HL7) and target[len(HL7):] not in known:
                    raise ProfileError(f"{where}: target {target} is not allowed by the base")
    return copy.deepcopy(types)


def _type_code(t: dict[str, Any]) -> str:
    for ext in t.get("extension") or ():
        if ext.get("url") == HL7 + "structuredefinition-fhir-type":
            return str(ext.get("valueUrl") or ext.get("valueUri"))
    return str(t["code"])


#: ElementDefinition keys in the order of the R4 resource (readable output); choice keys
#: (``fixedUri``, ``patternCodeableConcept`` …) sort by their prefix.
_ELEMENT_ORDER = (
    "id", "extension", "modifierExtension", "path", "representation", "sliceName",
    "sliceIsConstraining", "label", "code", "slicing", "short", "definition", "comment",
    "requirements", "alias", "min", "max", "base", "contentReference", "type", "defaultValue",
    "meaningWhenMissing", "orderMeaning", "fixed", "pattern", "example", "minValue", "maxValue",
    "maxLength", "condition", "constraint", "mustSupport", "isModifier", "isModifierReason",
    "isSummary", "binding", "mapping")


_CHOICES = ("defaultValue", "fixed", "pattern", "minValue", "maxValue")


def _rank(key: str) -> int:
    if key in _ELEMENT_ORDER:
        return _ELEMENT_ORDER.index(key)
    for name in _CHOICES:
        if key.startswith(name) and key[len(name):][:1].isupper():
            return _ELEMENT_ORDER.index(name)
    return len(_ELEMENT_ORDER)


def _reorder(element: dict[str, Any]) -> dict[str, Any]:
    return dict(sorted(element.items(), key=lambda kv: _rank(kv[0])))


def differential(source: dict[str, Any], url: str) -> list[dict[str, Any]]:
    """The source's differential with paths and slice names filled in (and, for an
    extension, its fixed url)."""
    out = []
    for el in source["differential"]["element"]:
        if "id" not in el:
            raise ProfileError(f"{url}: a differential element has no id")
        full = {"id": el["id"], "path": path_of(el["id"])}
        last = split_id(el["id"])[1]
        if ":" in last:
            full["sliceName"] = last.partition(":")[2]
        full.update({k: v for k, v in el.items() if k not in ("id", "path")})
        out.append(_reorder(full))
    if source["type"] == "Extension" and not any(e["id"] == "Extension.url" for e in out):
        at = next((i for i, e in enumerate(out) if e["id"].startswith("Extension.value")),
                  len(out))
        out.insert(at, {"id": "Extension.url", "path": "Extension.url", "fixedUri": url})
    return out


def build(source: dict[str, Any], bases: dict[str, dict[str, Any]],
          types: dict[str, dict[str, Any]]) -> dict[str, Any]:
    unknown = set(source) - set(AUTHORED) - {"resourceType"}
    if unknown:
        raise ProfileError(f"{source.get('id')}: keys {sorted(unknown)} are set by the "
                           "generator, not in sources")
    url = f"{BASE}/StructureDefinition/{source['id']}"
    base = bases.get(source["baseDefinition"])
    if base is None:
        raise ProfileError(f"{url}: unknown baseDefinition {source['baseDefinition']}")
    if base["type"] != source["type"]:
        raise ProfileError(f"{url}: type {source['type']} differs from the base's {base['type']}")
    diff = differential(source, url)
    snapshot = Snapshot(url, base, types)
    for el in diff:
        snapshot.apply(el)
    sd: dict[str, Any] = {
        "resourceType": "StructureDefinition", "id": source["id"], "url": url,
        "version": VERSION, "name": source["name"], "title": source.get("title"),
        "status": "active", "experimental": False, "date": DATE, "publisher": "Consilium",
        "description": source.get("description"), "purpose": source.get("purpose"),
        "fhirVersion": "4.0.1", "kind": base["kind"], "abstract": False,
        "context": source.get("context"), "type": source["type"],
        "baseDefinition": source["baseDefinition"], "derivation": "constraint",
        "snapshot": {"element": snapshot.elements}, "differential": {"element": diff},
    }
    if source["type"] == "Extension" and not source.get("context"):
        raise ProfileError(f"{url}: an extension needs a context")
    return {k: sd[k] for k in ORDER if sd.get(k) is not None}


def check_links(profiles: dict[str, dict[str, Any]]) -> None:
    """Every Consilium profile a type or target names is one of the generated ones."""
    urls = {sd["url"] for sd in profiles.values()}
    for sd in profiles.values():
        for el in sd["differential"]["element"]:
            for t in el.get("type") or ():
                for ref in (*t.get("profile", ()), *t.get("targetProfile", ())):
                    if ref.startswith(BASE) and ref not in urls:
                        raise ProfileError(f"{sd['url']}: {el['id']} names {ref}, which is "
                                           "not defined under profiles/src/")


def generate(directory: Path, sources: Path = SOURCES) -> dict[str, dict[str, Any]]:
    """id -> generated StructureDefinition, for every source."""
    definitions = [r for name in ("profiles-types.json.gz", "profiles-resources.json.gz")
                   for r in load_bundle(directory, name) if r["resourceType"] ==
                   "StructureDefinition"]
    bases = {sd["url"]: sd for sd in definitions}
    types = {sd["type"]: sd for sd in definitions
             if sd.get("derivation") != "constraint" and sd["kind"] in ("complex-type",
                                                                         "primitive-type")}
    out = {}
    for path in sorted(sources.glob("*.json")):
        source = json.loads(path.read_text(encoding="utf-8"))
        if path.stem != source.get("id"):
            raise ProfileError(f"{path.name}: the file name must be the id ({source.get('id')})")
        out[source["id"]] = build(source, bases, types)
    check_links(out)
    return out


def render(sd: dict[str, Any]) -> str:
    return json.dumps(sd, indent=1, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> None:
    directory = definitions_from_args(__doc__, argv)
    profiles = generate(directory)
    wanted = {OUTPUT / f"StructureDefinition-{id_}.json" for id_ in profiles}
    for stale in set(OUTPUT.glob("StructureDefinition-*.json")) - wanted:
        stale.unlink()
        print(f"removed {stale.relative_to(REPO)}")
    for id_, sd in profiles.items():
        path = OUTPUT / f"StructureDefinition-{id_}.json"
        path.write_text(render(sd), encoding="utf-8")
        print(f"wrote {path.relative_to(REPO)} ({path.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()

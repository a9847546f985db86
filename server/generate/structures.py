"""R4 structure table: every resource and datatype, its elements, types, cardinality, required
bindings and reference targets, from ``profiles-resources`` and ``profiles-types``.

Output: ``server/fhir/spec/structures.json.gz``::

    {"_generated": "...",
     "fhirVersion": "4.0.1",
     "primitives": {"date": {"regex": "...", "json": "string"}, ...},
     "types": {"Patient": {"kind": "resource", "base": "DomainResource", "abstract": false,
                           "elements": {...}}, ...}}

An element: ``{"t": [type codes], "min": 0, "max": 1 | -1 (unbounded), "b": required binding
ValueSet url, "r": [reference target types], "e": {children of a backbone element},
"cr": "Type.path" (content reference), "ch": "value[x]" (the choice it belongs to), "mod": true
(isModifier), "sum": true (isSummary)}``; keys with default values are left out. Choice elements
are listed once per allowed type (``valueQuantity``, ``valueString`` …) and once under their
``[x]`` name with ``"choice": [names]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.generate import REPO, definitions_from_args, header, load_bundle, write_json

OUTPUT = REPO / "server" / "fhir" / "spec" / "structures.json.gz"
FHIR_TYPE_EXT = "http://hl7.org/fhir/StructureDefinition/structuredefinition-fhir-type"
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"
SYSTEM_TYPES = {
    "http://hl7.org/fhirpath/System.String": "string",
    "http://hl7.org/fhirpath/System.Boolean": "boolean",
    "http://hl7.org/fhirpath/System.Integer": "integer",
    "http://hl7.org/fhirpath/System.Decimal": "decimal",
    "http://hl7.org/fhirpath/System.Date": "date",
    "http://hl7.org/fhirpath/System.DateTime": "dateTime",
    "http://hl7.org/fhirpath/System.Time": "time",
}
JSON_KIND = {"boolean": "boolean", "integer": "number", "decimal": "number",
             "positiveInt": "number", "unsignedInt": "number"}


def type_code(t: dict[str, Any]) -> str:
    for ext in t.get("extension", []):
        if ext["url"] == FHIR_TYPE_EXT:
            return ext.get("valueUrl") or ext.get("valueUri") or ext["valueString"]
    code = t["code"]
    return SYSTEM_TYPES.get(code, code)


def upper_first(s: str) -> str:
    return s[0].upper() + s[1:]


def element_spec(el: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {}
    types = [type_code(t) for t in el.get("type", [])]
    if types:
        spec["t"] = types
    if el.get("min", 0):
        spec["min"] = el["min"]
    mx = el.get("max", "1")
    spec["max"] = -1 if mx == "*" else int(mx)
    if mx == "1":
        del spec["max"]
    binding = el.get("binding") or {}
    if binding.get("strength") == "required" and binding.get("valueSet"):
        spec["b"] = binding["valueSet"].split("|")[0]
    targets = sorted({p.rsplit("/", 1)[-1] for t in el.get("type", []) if t["code"] in
                      ("Reference", "canonical") for p in t.get("targetProfile", [])})
    if targets and targets != ["Resource"]:
        spec["r"] = targets
    if el.get("contentReference"):
        spec["cr"] = el["contentReference"].lstrip("#")
    if el.get("isModifier"):
        spec["mod"] = True
    if el.get("isSummary"):
        spec["sum"] = True
    return spec


def build_type(sd: dict[str, Any]) -> dict[str, Any]:
    root: dict[str, Any] = {}
    nodes: dict[str, dict[str, Any]] = {sd["type"]: root}
    for el in sd["snapshot"]["element"][1:]:
        path = el["path"]
        parent_path, name = path.rsplit(".", 1)
        parent = nodes[parent_path]
        children = parent if parent is root else parent.setdefault("e", {})
        spec = element_spec(el)
        if path == sd["type"] + ".id" and sd["kind"] == "resource":
            spec["t"] = ["id"]  # the snapshots type it System.String; the spec says id
        if name.endswith("[x]"):
            base = name[:-3]
            names = []
            for code in spec.get("t", []):
                choice_name = base + upper_first(code)
                one = {k: v for k, v in spec.items() if k not in ("t", "min")}
                one["t"] = [code]
                one["ch"] = name
                if code not in ("Reference", "canonical"):
                    one.pop("r", None)
                children[choice_name] = one
                names.append(choice_name)
            group = {"choice": names}
            if spec.get("min"):
                group["min"] = spec["min"]
            children[name] = group
            nodes[path] = children[names[0]] if names else group
        else:
            children[name] = spec
            nodes[path] = spec
    return root


def primitive_spec(sd: dict[str, Any]) -> dict[str, Any]:
    value = next(e for e in sd["snapshot"]["element"] if e["path"] == sd["type"] + ".value")
    spec: dict[str, Any] = {"json": JSON_KIND.get(sd["type"], "string")}
    for t in value.get("type", []):
        for ext in t.get("extension", []):
            if ext["url"] == REGEX_EXT:
                spec["regex"] = ext["valueString"]
    if sd.get("baseDefinition"):
        spec["base"] = sd["baseDefinition"].rsplit("/", 1)[-1]
    return spec


def generate(directory: Path) -> dict[str, Any]:
    sds = [r for name in ("profiles-types.json.gz", "profiles-resources.json.gz")
           for r in load_bundle(directory, name) if r["resourceType"] == "StructureDefinition"]
    primitives: dict[str, Any] = {}
    types: dict[str, Any] = {}
    for sd in sds:
        if sd.get("derivation") == "constraint" or sd["kind"] == "logical":
            continue
        if sd["kind"] == "primitive-type":
            primitives[sd["type"]] = primitive_spec(sd)
            continue
        types[sd["type"]] = {
            "kind": sd["kind"],
            "base": (sd.get("baseDefinition") or "").rsplit("/", 1)[-1] or None,
            "abstract": bool(sd.get("abstract")),
            "version": sd.get("fhirVersion"),
            "elements": build_type(sd),
        }
    return {
        "_generated": header("structures", ["profiles-types.json.gz",
                                             "profiles-resources.json.gz"]),
        "fhirVersion": "4.0.1",
        "primitives": dict(sorted(primitives.items())),
        "types": dict(sorted(types.items())),
    }


def main(argv: list[str] | None = None) -> None:
    directory = definitions_from_args(__doc__, argv)
    write_json(OUTPUT, generate(directory), compress=True)


if __name__ == "__main__":
    main()

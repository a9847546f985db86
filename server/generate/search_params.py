"""R4 search parameter table: every SearchParameter of ``search-parameters.json.gz``, compacted,
plus the code system behind each required binding drawn from a single CodeSystem (so a ``code``
element can be indexed with its implicit system, search.html#token).

Output: ``server/search/spec/search_parameters.json``::

    {"_generated": "...",
     "fhirVersion": "4.0.1",
     "parameters": [{"url": "...", "code": "family", "base": ["Patient", "Practitioner"],
                     "type": "string", "expression": "Patient.name.family | ...",
                     "target": [], "modifier": [], "comparator": [], "multipleOr": null,
                     "multipleAnd": null, "component": [{"definition": url, "expression": ".."}],
                     "xpathUsage": "normal", "description": "one line",
                     "descriptions": {"Patient": "one line", ...}  # only with several bases
                     }, ...],
     "bindingSystems": {"http://hl7.org/fhir/ValueSet/administrative-gender":
                        "http://hl7.org/fhir/administrative-gender", ...}}

Every parameter is kept, even those the server cannot support: the registry decides what it can
compile and reports the rest.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from server.generate import REPO, definitions_from_args, header, load_bundle, write_json

OUTPUT = REPO / "server" / "search" / "spec" / "search_parameters.json"
_BULLET = re.compile(r"^\*\s*\[(?P<type>[A-Za-z]+)\]\([^)]*\):\s*(?P<text>.*)$")


def one_line(text: str) -> str:
    return " ".join(text.split())


def descriptions(param: dict[str, Any]) -> tuple[str, dict[str, str]]:
    """The description as one line; for a parameter shared by several resource types the spec
    writes one bullet per type ("Multiple Resources: * [Patient](patient.html): ..."), which
    becomes one line per type (the CapabilityStatement documents each type separately)."""
    text = param.get("description") or ""
    per_type: dict[str, str] = {}
    for line in text.splitlines():
        m = _BULLET.match(line.strip())
        if m:
            per_type[m["type"]] = one_line(m["text"])
    if per_type:
        return next(iter(per_type.values())), per_type
    first_paragraph = re.split(r"\r?\n\s*\r?\n", text.strip(), maxsplit=1)[0]
    return one_line(first_paragraph), {}


def compact(param: dict[str, Any]) -> dict[str, Any]:
    description, per_type = descriptions(param)
    out: dict[str, Any] = {
        "url": param["url"],
        "code": param["code"],
        "base": list(param["base"]),
        "type": param["type"],
        "expression": param.get("expression"),
        "target": list(param.get("target", [])),
        "modifier": list(param.get("modifier", [])),
        "comparator": list(param.get("comparator", [])),
        "multipleOr": param.get("multipleOr"),
        "multipleAnd": param.get("multipleAnd"),
        "component": [{"definition": c["definition"], "expression": c["expression"]}
                      for c in param.get("component", [])],
        "xpathUsage": param.get("xpathUsage"),
        "description": description,
    }
    if len(param["base"]) > 1 and per_type:
        out["descriptions"] = per_type
    return out


def required_bindings(directory: Path) -> set[str]:
    """ValueSet urls of the required bindings of every element of every type."""
    urls: set[str] = set()
    for name in ("profiles-types.json.gz", "profiles-resources.json.gz"):
        for sd in load_bundle(directory, name):
            if sd["resourceType"] != "StructureDefinition" or sd.get("derivation") == "constraint":
                continue
            for el in sd.get("snapshot", {}).get("element", []):
                binding = el.get("binding") or {}
                if binding.get("strength") == "required" and binding.get("valueSet"):
                    urls.add(binding["valueSet"].split("|")[0])
    return urls


def binding_systems(directory: Path) -> dict[str, str]:
    """ValueSet url -> its one CodeSystem, for required bindings whose value set includes codes
    of exactly one system (no nested value sets), so a bare ``code`` has a known system."""
    wanted = required_bindings(directory)
    out: dict[str, str] = {}
    for vs in load_bundle(directory, "valuesets.json.gz"):
        if vs["resourceType"] != "ValueSet" or vs.get("url") not in wanted:
            continue
        includes = (vs.get("compose") or {}).get("include", [])
        systems = {inc.get("system") for inc in includes}
        if (len(systems) == 1 and None not in systems
                and not any(inc.get("valueSet") for inc in includes)):
            out[vs["url"]] = systems.pop()
    return dict(sorted(out.items()))


def generate(directory: Path) -> dict[str, Any]:
    params = [r for r in load_bundle(directory, "search-parameters.json.gz")
              if r["resourceType"] == "SearchParameter"]
    return {
        "_generated": header("search_params", ["search-parameters.json.gz",
                                                "profiles-types.json.gz",
                                                "profiles-resources.json.gz",
                                                "valuesets.json.gz"]),
        "fhirVersion": "4.0.1",
        "parameters": [compact(p) for p in sorted(params, key=lambda p: p["url"])],
        "bindingSystems": binding_systems(directory),
    }


def main(argv: list[str] | None = None) -> None:
    directory = definitions_from_args(__doc__, argv)
    write_json(OUTPUT, generate(directory))


if __name__ == "__main__":
    main()

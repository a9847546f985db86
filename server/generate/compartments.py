"""Compartment definitions (Patient, Encounter, RelatedPerson, Practitioner, Device): for each
compartment type, which search parameters of which resource types put a resource in it.

Output: ``server/search/spec/compartments.json``:
``{"Patient": {"Observation": ["subject", "performer"], ...}, ...}``; ``{def}`` marks the
compartment owner itself (a Patient is in its own compartment).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from server.generate import REPO, definitions_from_args, header, load_bundle, write_json

OUTPUT = REPO / "server" / "search" / "spec" / "compartments.json"


def generate(directory: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"_generated": header("compartments", ["profiles-resources.json.gz"])}
    for cd in load_bundle(directory, "profiles-resources.json.gz"):
        if cd["resourceType"] != "CompartmentDefinition":
            continue
        members = {}
        for res in cd.get("resource", []):
            params = res.get("param") or []
            if params:
                members[res["code"]] = params
        out[cd["code"]] = dict(sorted(members.items()))
    return out


def main(argv: list[str] | None = None) -> None:
    directory = definitions_from_args(__doc__, argv)
    write_json(OUTPUT, generate(directory))


if __name__ == "__main__":
    main()

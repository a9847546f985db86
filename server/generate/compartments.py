"""Compartment definitions (Patient, Encounter, RelatedPerson, Practitioner, Device): for each
compartment type, which search parameters of which resource types put a resource in it.

The Patient compartment is read from its own definition (compartmentdefinition-patient.json.gz)
where that is given: the copy in profiles-resources.json.gz differs from it (Encounter by
``patient`` rather than ``subject``, and no Task, whose ``patient`` and ``focus`` put a Task
about a patient in that patient's compartment).

Output: ``server/search/spec/compartments.json``:
``{"Patient": {"Observation": ["subject", "performer"], ...}, ...}``; ``{def}`` marks the
compartment owner itself (a Patient is in its own compartment).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from server.generate import REPO, definitions_from_args, header, load_bundle, write_json

OUTPUT = REPO / "server" / "search" / "spec" / "compartments.json"


PATIENT = "compartmentdefinition-patient.json.gz"


def generate(directory: Path) -> dict[str, Any]:
    definitions = [cd for cd in load_bundle(directory, "profiles-resources.json.gz")
                   if cd["resourceType"] == "CompartmentDefinition"]
    sources = ["profiles-resources.json.gz"]
    if (directory / PATIENT).exists():
        with gzip.open(directory / PATIENT, "rt", encoding="utf-8") as fh:
            patient = json.load(fh)
        definitions = [cd for cd in definitions if cd["code"] != "Patient"] + [patient]
        sources.append(PATIENT)
    out: dict[str, Any] = {"_generated": header("compartments", sources)}
    for cd in sorted(definitions, key=lambda cd: cd["code"]):
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

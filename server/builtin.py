"""Conformance resources the server ships (CodeSystems, ValueSets, StructureDefinitions,
SearchParameters, Questionnaires …), installed into the store when the app starts.

Installing is idempotent: each resource has a fixed id, and writing unchanged content makes no
new version, so every worker process may do it at start. Definitions (a module's
``builtin_resources()``) are the server's: a new release's content replaces the stored one.
Starting data (a module's ``seed_resources()``, e.g. the fee schedule) belongs to the operator
once written: it is written when missing and never again, so edits made through the API stay.
"""

from __future__ import annotations

import logging
from typing import Any

from server.fhir import codec
from server.fhir.prepare import prepare
from server.storage.base import ResourceStore, Transaction, same_content

log = logging.getLogger("consilium.builtin")



def resources() -> list[dict[str, Any]]:
    """The definitions the server ships, with the OperationDefinitions of its own operations."""
    from server import terminology, workflow
    from server.fhir.interactions import OPERATIONS
    from server.fhir.table import operation_definition
    from server.workflow.model import BASE

    out = list(terminology.builtin_resources())
    for module in workflow.modules():
        out += getattr(module, "builtin_resources", lambda: [])()
    # HL7's own operations ($validate, $expand …) are defined by HL7 at its URLs.
    own = {op.definition: op for op in OPERATIONS if op.definition.startswith(f"{BASE}/")}
    return out + [operation_definition(op) for op in own.values()]


def seeds() -> list[dict[str, Any]]:
    """The starting data the server ships."""
    from server import workflow

    return [r for module in workflow.modules()
            for r in getattr(module, "seed_resources", lambda: [])()]


def _items(found: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, Any], Any]]:
    return [(r["resourceType"], r["id"], r, prepare(r, r["resourceType"])) for r in found]


async def _stored(store: ResourceStore, item: tuple[str, str, dict[str, Any], Any]) -> bool:
    """The definition is stored as it is (writing it would make no new version)."""
    v = await store.read(item[0], item[1])
    return v is not None and v.body is not None and same_content(codec.loads(v.body), item[2])


async def install(store: ResourceStore) -> int:
    """Write every definition that is missing or different and every seed that is missing;
    returns how many changed."""
    definitions, starting = _items(resources()), _items(seeds())

    def apply(tx: Transaction) -> int:
        missing = [item for item in starting if tx.read(item[0], item[1]) is None]
        before = {(t, i): tx.read(t, i) for t, i, _, _ in definitions}
        written = tx.write_many(definitions, "PUT")
        tx.write_many(missing, "PUT")
        return len(missing) + sum(1 for v in written if (b := before[(v.type, v.id)]) is None
                                  or b.version != v.version)

    # Read first: once they are stored as they are, a start writes nothing, and so does not
    # wait for the write lock (an --atomic import holds it for its whole length).
    changed = 0
    if not all([await _stored(store, item) for item in definitions]) or \
            not all([await store.read(t, i) is not None for t, i, _, _ in starting]):
        changed = await store.run(apply)
    log.info("built-in resources installed", extra={"event": "builtin.install",
                                                      "resources": len(definitions) + len(starting),
                                                      "changed": changed})
    return changed

"""Conformance resources the server ships (CodeSystems, ValueSets, StructureDefinitions,
SearchParameters, Questionnaires …), installed into the store when the app starts.

Installing is idempotent: each resource has a fixed id, and writing unchanged content makes no
new version, so every worker process may do it at start.
"""

from __future__ import annotations

import logging
from typing import Any

from server.fhir.prepare import prepare
from server.storage.base import ResourceStore, Transaction

log = logging.getLogger("consilium.builtin")


def resources() -> list[dict[str, Any]]:
    from server import terminology, workflow

    out = list(terminology.builtin_resources())
    for module in workflow.modules():
        out += getattr(module, "builtin_resources", lambda: [])()
    return out


async def install(store: ResourceStore) -> int:
    """Write every built-in resource that is missing or different; returns how many changed."""
    items = []
    for resource in resources():
        type_, id_ = resource["resourceType"], resource["id"]
        items.append((type_, id_, resource, prepare(resource, type_)))

    def apply(tx: Transaction) -> int:
        before = {(t, i): tx.read(t, i) for t, i, _, _ in items}
        written = tx.write_many(items, "PUT")
        return sum(1 for v in written if (b := before[(v.type, v.id)]) is None
                   or b.version != v.version)

    changed = await store.run(apply)
    log.info("built-in resources installed", extra={"event": "builtin.install",
                                                      "resources": len(items),
                                                      "changed": changed})
    return changed

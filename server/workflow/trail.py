"""The audit trail of workflow changes: a Provenance per change (who, when, what, why).

Reports and referrals record each change of state as a Provenance whose target is the exact
version written (``Type/id/_history/v``), so the trail survives later versions.
"""

from __future__ import annotations

from typing import Any

from server.fhir.hooks import WriteEvent
from server.workflow import model

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def versioned(type_: str, id_: str, version: int | str) -> str:
    return f"{type_}/{id_}/_history/{version}"


def actor(event: WriteEvent) -> dict[str, Any]:
    """Who acts: the principal's fhirUser, or (a system client) its client id as an identifier."""
    principal = event.principal
    if principal.fhir_user:
        return {"reference": principal.fhir_user}
    name = principal.client_id or principal.subject
    return {"identifier": {"system": f"{model.BASE}/sid/client", "value": name},
            "display": f"client {name}"}


def data_operation(method: str) -> dict[str, Any]:
    code = {"POST": "CREATE", "DELETE": "DELETE"}.get(method, "UPDATE")
    return {"coding": [{"system": DATA_OPERATION, "code": code}]}


def provenance(event: WriteEvent, activity: dict[str, Any], *,
               reason: list[dict[str, Any]] | None = None,
               entity: list[dict[str, Any]] | None = None,
               agent_type: str | None = None) -> dict[str, Any]:
    """A Provenance for the version ``event`` wrote (call from an after-hook)."""
    assert event.version is not None
    agent: dict[str, Any] = {"who": actor(event)}
    if agent_type:
        agent["type"] = {"coding": [{"system": PARTICIPANT_TYPE, "code": agent_type}]}
    out: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": versioned(event.type, event.id, event.version.version)}],
        "recorded": model.fhir_instant(event.context.clock.now()),
        "activity": activity,
        "agent": [agent],
    }
    if reason:
        out["reason"] = reason
    if entity:
        out["entity"] = entity
    return out

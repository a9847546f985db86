"""The case of a consultation as the rules see it: the request, the people and organisations it
names, read inside the write's transaction.

Rules read with the system's transaction (``WriteEvent.system``): what they check must not
depend on what the caller may read.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from server.fhir import codec
from server.search.query import parse
from server.storage.base import Transaction
from server.workflow import model

#: Categories of ServiceRequest and codes of Task that are not consultations.
NOT_CONSULTATION = frozenset({"referral", "remote-teaching"})


def read(tx: Transaction, type_: str, id_: str | None) -> dict[str, Any] | None:
    """The current content of ``type_/id_``, or None (unknown, deleted or no id)."""
    if not id_:
        return None
    v = tx.read(type_, id_)
    if v is None or v.deleted or v.body is None:
        return None
    return codec.loads(v.body)


def resolve(tx: Transaction, ref: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    return read(tx, type_, model.reference_id(ref, type_))


def search(tx: Transaction, type_: str, params: list[tuple[str, str]],
           limit: int | None = None) -> list[dict[str, Any]]:
    return [codec.loads(v.body) for v in tx.search(parse((type_,), params), limit)
            if v.body is not None]


def ref(type_: str, id_: str) -> dict[str, str]:
    return {"reference": f"{type_}/{id_}"}


def consultation_type(resource: dict[str, Any] | None, element: str) -> str | None:
    """The consultation-type code of a request's ``category`` or a Task's ``code`` when it is
    a consultation (not a referral or a teaching session), else None."""
    if not resource:
        return None
    value = resource.get(element)
    concepts = value if isinstance(value, list) else [value]
    for concept in concepts:
        for code in model.codes(concept, model.CONSULTATION_TYPE):
            return None if code in NOT_CONSULTATION else code
    return None


def is_consultation_request(sr: dict[str, Any] | None) -> bool:
    if not sr:
        return False
    if consultation_type(sr, "category"):
        return True
    claims = (sr.get("meta") or {}).get("profile") or []
    return any(p.split("|")[0] == model.CONSULTATION_REQUEST for p in claims)


def is_consultation_task(task: dict[str, Any] | None) -> bool:
    return consultation_type(task, "code") is not None


def business_status(code: str) -> dict[str, Any]:
    return {"coding": [{"system": model.BUSINESS_STATUS, "code": code}]}


def business_code(task: dict[str, Any]) -> str | None:
    found = model.codes(task.get("businessStatus"), model.BUSINESS_STATUS)
    return found[0] if found else None


def performers(sr: dict[str, Any], type_: str) -> list[dict[str, Any]]:
    return [p for p in sr.get("performer") or [] if model.reference_id(p, type_)]


def specialty(sr: dict[str, Any]) -> str | None:
    """The specialty asked for (performerType, specialty CodeSystem)."""
    found = model.codes(sr.get("performerType"), model.SPECIALTY)
    return found[0] if found else None


def has_records(sr: dict[str, Any]) -> bool:
    return bool(sr.get("supportingInfo"))


def channel(sr: dict[str, Any]) -> str | None:
    coding = model.extension_value(sr, model.EXT_REQUEST_CHANNEL, "Coding") or {}
    return coding.get("code")


def care_level(org: dict[str, Any] | None) -> str | None:
    return (model.extension_value(org, model.EXT_CARE_LEVEL, "Coding") or {}).get("code")


def region(org: dict[str, Any] | None) -> str | None:
    return model.extension_value(org, model.EXT_REGION, "Code")


def licensed_specialties(org: dict[str, Any] | None) -> set[str]:
    out: set[str] = set()
    for ext in model.extensions(org, model.EXT_LICENSED_SPECIALTY):
        out.update(model.codes(ext.get("valueCodeableConcept"), model.SPECIALTY))
    return out


def service_levels(org: dict[str, Any] | None) -> set[str]:
    return {(e.get("valueCoding") or {}).get("code") or ""
            for e in model.extensions(org, model.EXT_SERVICE_LEVEL)} - {""}


@dataclass
class Case:
    """A consultation request and the parties it names."""

    request_id: str
    request: dict[str, Any]
    requester: dict[str, Any] | None  # the attending physician's PractitionerRole
    inviting: dict[str, Any] | None  # the requester's Organization
    invited: dict[str, Any] | None  # the performer Organization

    @property
    def inviting_id(self) -> str | None:
        return (self.inviting or {}).get("id")

    @property
    def invited_id(self) -> str | None:
        return (self.invited or {}).get("id")

    @property
    def named_expert(self) -> str | None:
        """The PractitionerRole id the request names, if any."""
        named = performers(self.request, "PractitionerRole")
        return model.reference_id(named[0], "PractitionerRole") if named else None

    @property
    def urgent(self) -> bool:
        return self.request.get("priority") in ("urgent", "asap", "stat")

    @property
    def primary(self) -> bool:
        return care_level(self.inviting) == "1"

    @property
    def same_region(self) -> bool:
        a, b = region(self.inviting), region(self.invited)
        return a is not None and a == b

    def papers_later(self) -> bool:
        """An urgent request by phone or e-mail may send its records within 24 h."""
        from server.workflow.deadlines import PAPERS_LATER

        return self.urgent and channel(self.request) in PAPERS_LATER


def case_of(tx: Transaction, request_id: str, request: dict[str, Any] | None = None) -> Case | None:
    sr = request if request is not None else read(tx, "ServiceRequest", request_id)
    if sr is None:
        return None
    requester = resolve(tx, sr.get("requester"), "PractitionerRole")
    inviting = resolve(tx, (requester or {}).get("organization"), "Organization")
    invited_refs = performers(sr, "Organization")
    invited = resolve(tx, invited_refs[0], "Organization") if invited_refs else None
    return Case(request_id, sr, requester, inviting, invited)


def task_case(tx: Transaction, task: dict[str, Any]) -> Case | None:
    request_id = model.reference_id(task.get("focus"), "ServiceRequest")
    return case_of(tx, request_id) if request_id else None


def tasks_of(tx: Transaction, request_id: str) -> list[dict[str, Any]]:
    return [t for t in search(tx, "Task", [("focus", f"ServiceRequest/{request_id}")])
            if is_consultation_task(t)]


def output_refs(task: dict[str, Any], type_: str) -> list[str]:
    """Ids of the ``type_`` resources in the Task's output, in order."""
    out = []
    for o in task.get("output") or []:
        id_ = model.reference_id(o.get("valueReference"), type_)
        if id_:
            out.append(id_)
    return out


def instant(value: str | None) -> datetime | None:
    return model.parse_datetime(value) if value else None

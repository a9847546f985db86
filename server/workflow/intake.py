"""The rules a consultation request must pass when it is filed, and the invited expert's.

A request that breaks one is refused (422) with one issue per broken rule; each issue names the
rule in brackets and the decline-reason it corresponds to, e.g.
``[consent] Patient/p1 has no active telemedicine consent (decline-reason no-active-consent)``.

* ``missing-content`` — the request form's minimum contents (IM A1 二(一)1–4, and the
  consultation-request profile): the inviting organisation's name and care level, the service,
  purpose and suggested time, the patient and their records, the invited organisation,
  specialty and professional title, the reason, the priority, the attending physician and the
  department head's approval. An urgent request made by phone or e-mail may send its records
  within 24 h (IM A1 二(一)): it is accepted without them and carries a ``papers`` deadline.
* ``consent`` — the patient has an active telemedicine consent (IM A1 二(一): the consent goes
  with the form).
* ``inviting-licensed-scope`` / ``invited-licensed-scope`` — the specialty is among the licensed
  clinical subjects of both organisations (IM A1 一(五)1, 一(六)1).
* ``service-level`` — the inviting organisation is equipped for the service: its best service
  level reaches the consultation type's ``minimum-service-level`` (IM A1 一(五)3).
* ``expert-specialty`` / ``expert-pool`` / ``expert-experience`` — a named (or assigned) expert
  has the specialty, is an approved or active member of the pool and has 3+ years of
  independent practice (IM A1 一(二)1, 一(五)4, 一(六)2).
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Any

from server.fhir.errors import FhirError, Issue
from server.storage.base import Transaction
from server.terminology.library import library
from server.workflow import model
from server.workflow.casefile import (
    Case,
    case_of,
    consultation_type,
    has_records,
    licensed_specialties,
    performers,
    read,
    resolve,
    search,
    service_levels,
    specialty,
)

MINIMUM_PRACTICE_YEARS = 3
#: Pool statuses of a member who may be invited.
IN_POOL = frozenset({"approved", "active"})
TELEMEDICINE_CONSENT = "telemedicine-consultation"
LICENSED_PHYSICIAN = "licensed-physician"

#: Rule -> the decline-reason code it stands for.
DECLINE_REASON = {
    "missing-content": "missing-content",
    "consent": "no-active-consent",
    "inviting-licensed-scope": "inviting-outside-licensed-scope",
    "invited-licensed-scope": "outside-licensed-scope",
    "service-level": "inviting-insufficient-capacity",
    "expert-specialty": "outside-practice-scope",
    "expert-pool": "outside-practice-scope",
    "expert-experience": "outside-practice-scope",
    "no-expert-available": "no-expert-available",
}


def refusal(rule: str, message: str, expression: str | None = None) -> Issue:
    code = DECLINE_REASON.get(rule)
    suffix = f" (decline-reason {code})" if code else ""
    return Issue("business-rule", f"[{rule}] {message}{suffix}",
                 expression=[expression] if expression else [])


def refuse(issues: list[Issue]) -> FhirError:
    return FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)


def _ext_path(url: str) -> str:
    return f"ServiceRequest.extension('{url}')"


# -- minimum contents -----------------------------------------------------------------------------

def _missing(what: str, expression: str) -> Issue:
    return refusal("missing-content", f"the request does not give {what}", expression)


def _inviting_contents(case: Case) -> list[Issue]:
    sr = case.request
    if not sr.get("requester"):
        return [_missing("the attending physician (requester)", "ServiceRequest.requester")]
    if case.requester is None:
        return [refusal("missing-content", f"the requester {sr['requester'].get('reference')} "
                        "is not a known PractitionerRole", "ServiceRequest.requester")]
    if case.inviting is None:
        return [_missing("the inviting organisation (the requester's PractitionerRole has no "
                         "known organization)", "ServiceRequest.requester")]
    out = []
    org = f"Organization/{case.inviting_id}"
    if not case.inviting.get("name"):
        out.append(_missing(f"the inviting organisation's name ({org} has none)",
                            "ServiceRequest.requester"))
    if not model.extension_value(case.inviting, model.EXT_CARE_LEVEL, "Coding"):
        out.append(_missing(f"the inviting organisation's care level ({org} has none)",
                            "ServiceRequest.requester"))
    return out


def _service_contents(sr: dict[str, Any]) -> list[Issue]:
    out = []
    if not consultation_type(sr, "category"):
        out.append(_missing("the service (category from consultation-type)",
                            "ServiceRequest.category"))
    if not (sr.get("code") or {}).get("text"):
        out.append(_missing("the purpose (code.text)", "ServiceRequest.code"))
    if not any(k.startswith("occurrence") for k in sr):
        out.append(_missing("the suggested time (occurrence[x])", "ServiceRequest.occurrence[x]"))
    if sr.get("priority") not in ("routine", "urgent"):
        out.append(_missing("the priority (routine or urgent)", "ServiceRequest.priority"))
    if not model.reference_id(sr.get("subject"), "Patient"):
        out.append(_missing("the patient (subject)", "ServiceRequest.subject"))
    if not any(model.codes(c, model.CONSULTATION_REASON) for c in sr.get("reasonCode") or []):
        out.append(_missing("the reason (reasonCode from consultation-reason)",
                            "ServiceRequest.reasonCode"))
    if not model.extension_value(sr, model.EXT_APPROVED_BY, "Reference"):
        out.append(_missing("the department head's approval (approved-by)",
                            _ext_path(model.EXT_APPROVED_BY)))
    return out


def _invited_contents(case: Case) -> list[Issue]:
    sr = case.request
    out = []
    orgs = performers(sr, "Organization")
    if not orgs:
        out.append(_missing("the invited organisation (performer)", "ServiceRequest.performer"))
    elif case.invited is None:
        out.append(refusal("missing-content", f"the invited organisation "
                           f"{orgs[0].get('reference')} is not known", "ServiceRequest.performer"))
    if specialty(sr) is None:
        out.append(_missing("the specialty (performerType from specialty)",
                            "ServiceRequest.performerType"))
    if not model.extension_value(sr, model.EXT_REQUESTED_TITLE, "Coding"):
        out.append(_missing("the professional title asked for (requested-title)",
                            _ext_path(model.EXT_REQUESTED_TITLE)))
    return out


def missing_contents(case: Case) -> list[Issue]:
    sr = case.request
    out = _inviting_contents(case) + _service_contents(sr) + _invited_contents(case)
    if not has_records(sr) and not case.papers_later():
        out.append(_missing("the patient's records (supportingInfo)",
                            "ServiceRequest.supportingInfo"))
    return out


# -- consent, scope and capacity ------------------------------------------------------------------

def _period_end(text: str) -> datetime:
    """A period end given as a date covers that whole day."""
    end = model.parse_datetime(text)
    return end + timedelta(days=1) if len(text) == 10 else end


def has_active_consent(tx: Transaction, patient: str, now: datetime) -> bool:
    """An active telemedicine-consultation Consent of ``patient`` (``Patient/id``) valid now."""
    for consent in search(tx, "Consent", [("patient", patient), ("status", "active")]):
        if not model.has_code(consent.get("category") or [], model.CONSENT_CATEGORY,
                              TELEMEDICINE_CONSENT):
            continue
        period = (consent.get("provision") or {}).get("period") or {}
        if period.get("start") and model.parse_datetime(period["start"]) > now:
            continue
        if period.get("end") and _period_end(period["end"]) <= now:
            continue
        return True
    return False


def consent_problems(tx: Transaction, sr: dict[str, Any], now: datetime) -> list[Issue]:
    patient = (sr.get("subject") or {}).get("reference") or ""
    if has_active_consent(tx, patient, now):
        return []
    return [refusal("consent", f"{patient} has no active telemedicine consent (a Consent with "
                    "status active, category telemedicine-consultation, valid now)",
                    "ServiceRequest.subject")]


def scope_problems(case: Case) -> list[Issue]:
    wanted = specialty(case.request)
    out = []
    if wanted not in licensed_specialties(case.inviting):
        out.append(refusal("inviting-licensed-scope", f"{wanted} is not among the licensed "
                           f"specialties of the inviting Organization/{case.inviting_id}",
                           "ServiceRequest.performerType"))
    if wanted not in licensed_specialties(case.invited):
        out.append(refusal("invited-licensed-scope", f"{wanted} is not among the licensed "
                           f"specialties of the invited Organization/{case.invited_id}",
                           "ServiceRequest.performerType"))
    return out


def _rank(system: str, code: str, prop: str) -> Any:
    cs = library().code_system(system)
    concept = cs.get(code) if cs is not None else None
    values = concept.property_values(prop) if concept is not None else []
    return values[0] if values else None


def minimum_service_level(consultation: str) -> str:
    return _rank(model.CONSULTATION_TYPE, consultation, "minimum-service-level") or "basic"


def capacity_problems(case: Case) -> list[Issue]:
    consultation = consultation_type(case.request, "category") or ""
    needed = minimum_service_level(consultation)
    needed_rank = _rank(model.SERVICE_LEVEL, needed, "rank") or 0
    levels = service_levels(case.inviting)
    best = max((_rank(model.SERVICE_LEVEL, c, "rank") or 0 for c in levels), default=0)
    if best >= needed_rank:
        return []
    have = ", ".join(sorted(levels)) or "none"
    return [refusal("service-level", f"{consultation} needs the {needed} service level; the "
                    f"inviting Organization/{case.inviting_id} is equipped for {have}",
                    "ServiceRequest.category")]


# -- experts --------------------------------------------------------------------------------------

def practice_start(practitioner: dict[str, Any] | None) -> date | None:
    """When independent practice began: the licensed-physician qualification's period.start."""
    starts = []
    for q in (practitioner or {}).get("qualification") or []:
        if model.has_code(q.get("code"), model.QUALIFICATION, LICENSED_PHYSICIAN):
            start = (q.get("period") or {}).get("start")
            if start:
                starts.append(model.parse_datetime(start).date())
    return min(starts) if starts else None


def full_years(start: date, today: date) -> int:
    years = today.year - start.year
    return years - 1 if (today.month, today.day) < (start.month, start.day) else years


def in_pool(role: dict[str, Any]) -> bool:
    status = (model.extension_value(role, model.EXT_POOL_STATUS, "Coding") or {}).get("code")
    return status in IN_POOL and role.get("active") is not False


def expert_problems(tx: Transaction, role_id: str, wanted: str | None, now: datetime,
                    expression: str) -> list[Issue]:
    """Why PractitionerRole/``role_id`` may not be the expert for specialty ``wanted``."""
    role = read(tx, "PractitionerRole", role_id)
    who = f"PractitionerRole/{role_id}"
    if role is None:
        return [refusal("expert-pool", f"{who} is not known", expression)]
    out = []
    if not wanted or not model.has_code(role.get("specialty") or [], model.SPECIALTY, wanted):
        out.append(refusal("expert-specialty", f"{who} does not have the specialty {wanted}",
                           expression))
    if not in_pool(role):
        status = (model.extension_value(role, model.EXT_POOL_STATUS, "Coding") or {}).get(
            "code") or "none"
        out.append(refusal("expert-pool", f"{who} is not an active member of the expert pool "
                           f"(pool status {status})", expression))
    start = practice_start(resolve(tx, role.get("practitioner"), "Practitioner"))
    if start is None:
        out.append(refusal("expert-experience", f"{who}'s practitioner has no licensed-physician "
                           "qualification with a start date", expression))
    elif full_years(start, now.date()) < MINIMUM_PRACTICE_YEARS:
        out.append(refusal("expert-experience", f"{who} has practised independently since "
                           f"{start.isoformat()}, under {MINIMUM_PRACTICE_YEARS} years",
                           expression))
    return out


# -- the whole check ------------------------------------------------------------------------------

def check_request(tx: Transaction, request_id: str, sr: dict[str, Any], now: datetime,
                  *, contents_only: bool = False) -> Case:
    """Refuse (422, every broken rule) a request that may not be sent; its case otherwise."""
    case = case_of(tx, request_id, sr)
    assert case is not None
    issues = missing_contents(case)
    if issues or contents_only:
        if issues:
            raise refuse(issues)
        return case
    issues = consent_problems(tx, sr, now) + scope_problems(case) + capacity_problems(case)
    expert = case.named_expert
    if expert:
        issues += expert_problems(tx, expert, specialty(sr), now, "ServiceRequest.performer")
    if issues:
        raise refuse(issues)
    return case

"""The telemedicine domain model: canonical URLs, code systems, extensions and small accessors.

Every part of the workflow names things through this module, so that profiles, rules,
operations, the demo and the tests agree. Canonical base: ``https://fhir.consilium.health``.
The terminology is under ``terminology/`` (CodeSystem-<name>.json), the profiles and extensions
under ``profiles/`` (StructureDefinition-<id>.json).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

BASE = "https://fhir.consilium.health"


def cs(name: str) -> str:
    return f"{BASE}/CodeSystem/{name}"


def vs(name: str) -> str:
    return f"{BASE}/ValueSet/{name}"


def sd(name: str) -> str:
    return f"{BASE}/StructureDefinition/{name}"


# -- code systems (terminology/) -----------------------------------------------------------------
CONSULTATION_TYPE = cs("consultation-type")  # also the ServiceRequest.category of referrals
SPECIALTY = cs("specialty")
CONSULTATION_REASON = cs("consultation-reason")
REFERRAL_DIRECTION = cs("referral-direction")
REFERRAL_INDICATION = cs("referral-indication")
DECLINE_REASON = cs("decline-reason")
CANCEL_REASON = cs("cancel-reason")
CARE_LEVEL = cs("care-level")
SERVICE_LEVEL = cs("service-level")
BUSINESS_STATUS = cs("business-status")
PROFESSIONAL_TITLE = cs("professional-title")
PRACTITIONER_ROLE = cs("practitioner-role")
ORGANIZATION_TYPE = cs("organization-type")
EXPERT_POOL_STATUS = cs("expert-pool-status")
QUALITY_GRADE = cs("quality-grade")
CONSENT_CATEGORY = cs("consent-category")
REQUEST_CHANNEL = cs("request-channel")
#: Licences and training held by practitioners (Practitioner.qualification.code).
QUALIFICATION = cs("qualification")
#: Kinds of deadline shown on a Task (the ``deadline`` extension).
DEADLINE_KIND = cs("deadline-kind")
#: Kinds of Communication the workflow sends (clarification, notices).
COMMUNICATION_KIND = cs("communication-kind")
#: Quality control (quality.py): the statistics of the quarterly MeasureReport, the grade
#: Observation's code and the rectification Flag's code; shipped by quality.builtin_resources().
QUALITY_CONTROL = cs("quality-control")
#: The built-in Measure the quarterly MeasureReports report on.
QUALITY_MEASURE = f"{BASE}/Measure/telemedicine-quality"

# -- extensions (profiles/) -----------------------------------------------------------------------
EXT_CARE_LEVEL = sd("care-level")  # Organization: valueCoding care-level 1|2|3
EXT_SERVICE_LEVEL = sd("service-level")  # Organization (0..*): valueCoding service-level
EXT_LICENSED_SPECIALTY = sd("licensed-specialty")  # Organization (0..*): valueCodeableConcept
EXT_REGION = sd("region")  # Organization: valueCode, e.g. CN-NM, IR-07 (ISO 3166-2)
EXT_TIMEZONE = sd("timezone")  # Organization: valueCode, an IANA zone, e.g. Asia/Shanghai
EXT_REFERRAL_DIRECTION = sd("referral-direction")  # ServiceRequest: valueCode up|down
EXT_REQUEST_CHANNEL = sd("request-channel")  # ServiceRequest: valueCoding request-channel
EXT_APPROVED_BY = sd("approved-by")  # ServiceRequest: valueReference(PractitionerRole) head
EXT_REQUESTED_TITLE = sd("requested-title")  # ServiceRequest: valueCoding professional-title
EXT_DEADLINE = sd("deadline")  # Task (0..*): complex: kind (valueCoding), due, met (dateTime)
EXT_SPECIALTY_SINCE = sd("specialty-since")  # PractitionerRole: valueDate
EXT_EMPLOYER_CONSENT = sd("employer-consent")  # PractitionerRole: valueDate (when given)
EXT_POOL_STATUS = sd("expert-pool-status")  # PractitionerRole: valueCoding expert-pool-status
EXT_NOMINATED_BY = sd("nominated-by")  # PractitionerRole: valueReference(Organization)
EXT_APPROVED_BY_REGION = sd("pool-approved-by")  # PractitionerRole: valueReference(Org)
EXT_MALPRACTICE = sd("malpractice")  # Practitioner (0..*): complex: grade (valueInteger 1-4),
#                                      date (valueDate)
EXT_PREPAID_BALANCE = sd("prepaid-balance")  # Account: valueMoney
EXT_REPLACES = sd("replaces")  # DiagnosticReport: valueReference(DiagnosticReport) it corrects

# -- profiles (profiles/) -------------------------------------------------------------------------
CONSULTATION_REQUEST = sd("consultation-request")  # ServiceRequest
CONSULTATION_TASK = sd("consultation-task")  # Task
REFERRAL_REQUEST = sd("referral-request")  # ServiceRequest
REFERRAL_TASK = sd("referral-task")  # Task
TELEMEDICINE_CONSENT = sd("telemedicine-consent")  # Consent
EXPERT_ROLE = sd("expert-role")  # PractitionerRole
TELEMEDICINE_ORGANIZATION = sd("telemedicine-organization")  # Organization
CONSULTATION_REPORT = sd("consultation-report")  # DiagnosticReport
SATISFACTION_RATING = sd("satisfaction-rating")  # QuestionnaireResponse
SATISFACTION_QUESTIONNAIRE = f"{BASE}/Questionnaire/consultation-satisfaction"

# -- signatures and referral records (reports.py, referrals.py) ----------------------------------
#: Provenance.signature.type of an expert's signature on a report: ASTM E1762-95 author.
SIGNATURE_TYPE_SYSTEM = "urn:iso-astm:E1762-95:2013"
SIGNATURE_TYPE_AUTHOR = "1.2.840.10065.1.12.1.1"
#: Rehabilitation guidance sent with a down-referral: a DocumentReference typed (type or
#: category) with one of these LOINC document codes (from R4 c80-doc-typecodes) ...
REHABILITATION_DOCUMENT_SYSTEM = "http://loinc.org"
REHABILITATION_DOCUMENT_TYPES = frozenset({
    "34823-5",  # Physical medicine and rehabilitation Note
    "34822-7",  # Physical medicine and rehabilitation Consult note
    "57831-0",  # Prescription for rehabilitation Document
    "68854-9",  # Pediatric rehabilitation medicine Note
})
#: ... or a CarePlan with activities whose category is SNOMED CT 394602003 "Rehabilitation"
#: (the R4 c80-practice-codes concept).
REHABILITATION_CAREPLAN_SYSTEM = "http://snomed.info/sct"
REHABILITATION_CAREPLAN_CATEGORY = "394602003"


# -- accessors ------------------------------------------------------------------------------------

def extensions(resource: dict[str, Any] | None, url: str) -> list[dict[str, Any]]:
    return [e for e in (resource or {}).get("extension") or [] if e.get("url") == url]


def extension_value(resource: dict[str, Any] | None, url: str, key: str) -> Any:
    """The ``value<key>`` of the first extension ``url`` (e.g. key ``Coding``), or None."""
    for e in extensions(resource, url):
        return e.get(f"value{key}")
    return None


def codes(concept: dict[str, Any] | None, system: str) -> list[str]:
    """Codes of ``system`` in a CodeableConcept (or a Coding)."""
    if not concept:
        return []
    if "coding" not in concept and concept.get("system") == system:
        return [concept["code"]]
    return [c["code"] for c in concept.get("coding") or []
            if c.get("system") == system and "code" in c]


def has_code(concepts: list[dict[str, Any]] | dict[str, Any] | None, system: str,
             code: str) -> bool:
    items = concepts if isinstance(concepts, list) else [concepts]
    return any(code in codes(c, system) for c in items if c)


def reference_id(ref: dict[str, Any] | None, type_: str) -> str | None:
    """The id in a relative reference ``Type/id`` (None if it is not one of ``type_``)."""
    value = (ref or {}).get("reference") or ""
    parts = value.split("/")
    if len(parts) >= 2 and parts[-2] == type_:
        return parts[-1]
    return None


def zone(organization: dict[str, Any] | None, default: str = "UTC") -> ZoneInfo:
    """An organisation's time zone (the ``timezone`` extension), else ``default``."""
    name = extension_value(organization, EXT_TIMEZONE, "Code") or default
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo(default)


def parse_datetime(text: str) -> datetime:
    """A FHIR dateTime/instant as an aware datetime (a date alone: its start, in UTC)."""
    if len(text) == 10:
        return datetime.combine(date.fromisoformat(text), datetime.min.time(), UTC)
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def fhir_instant(dt: datetime) -> str:
    """An aware datetime as a FHIR instant in UTC, to the second."""
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")

"""A telemedicine network for the expert pool, quality and fee tests, built through the FHIR API.

Organisations (ids): ``hospital-a`` (care level 3, the invited side, employer of the experts),
``hospital-b`` (level 2, the inviting side), ``hospital-c`` (level 3), ``hospital-ir`` (level 2,
Tehran province), ``region`` (health administration), ``qc`` (quality-control centre),
``operator`` and ``operator-2`` (third-party operators); all but ``hospital-ir`` in Inner
Mongolia (Asia/Shanghai). People: ``hr-a`` and ``hr-b`` (telemedicine staff of hospitals a and
b), ``officer-region`` and ``officer-qc`` (staff of the region and the QC centre),
``attending-b`` and ``attending-ir`` (attending physicians who file requests), experts
``expert-1`` and ``expert-2`` (cardiology, active) built by :func:`add_expert`.

The clock stands at :data:`NOW` (15 October 2026, Q4) unless a test moves it.
:func:`build_consultations` files the consultations of :data:`CONSULTATIONS` as the
consultation rules leave them: a ServiceRequest and its Task (status, owner, reports, ratings),
each Task written with the clock at the moment its steps were done.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from starlette.testclient import TestClient

from server.app import create_app
from server.clock import FixedClock
from server.config import Settings
from server.workflow import model
from tests.conftest import Fhir, issue_token

SHANGHAI = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 10, 15, 10, 0, tzinfo=SHANGHAI)
USER_SCOPE = "user/*.cruds"
DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


def coding(system: str, code: str) -> dict[str, Any]:
    return {"system": system, "code": code}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(system, code)]}


def instant(dt: datetime) -> str:
    return dt.isoformat()


# -- organisations and people ---------------------------------------------------------------------

def organization(id_: str, name: str, *, level: str | None = None, region: str = "CN-NM",
                 zone: str = "Asia/Shanghai", types: tuple[str, ...] = ("network-hospital",),
                 specialties: tuple[str, ...] = ("cardiology", "neurology")) -> dict[str, Any]:
    ext: list[dict[str, Any]] = [{"url": model.EXT_REGION, "valueCode": region},
                                 {"url": model.EXT_TIMEZONE, "valueCode": zone}]
    if level:
        ext.append({"url": model.EXT_CARE_LEVEL, "valueCoding": coding(model.CARE_LEVEL, level)})
        ext += [{"url": model.EXT_LICENSED_SPECIALTY,
                 "valueCodeableConcept": concept(model.SPECIALTY, s)} for s in specialties]
        ext.append({"url": model.EXT_SERVICE_LEVEL,
                    "valueCoding": coding(model.SERVICE_LEVEL, "advanced")})
    return {"resourceType": "Organization", "id": id_, "active": True, "name": name,
            "type": [concept(model.ORGANIZATION_TYPE, t) for t in types], "extension": ext}


ORGANIZATIONS = [
    organization("hospital-a", "Inner Mongolia People's Hospital", level="3"),
    organization("hospital-b", "Horqin County Hospital", level="2"),
    organization("hospital-c", "Baotou Central Hospital", level="3"),
    organization("hospital-ir", "Rey Health Centre", level="2", region="IR-07",
                 zone="Asia/Tehran"),
    organization("region", "Inner Mongolia Health Commission", types=("health-authority",)),
    organization("qc", "Telemedicine Quality-Control Centre", types=("quality-control-centre",)),
    organization("operator", "Grassland Telehealth Ltd", types=("third-party-operator",)),
    organization("operator-2", "Steppe Link Ltd", types=("third-party-operator",)),
]


def practitioner(id_: str, family: str, *, title: str | None = "chief-physician",
                 training: bool = True, licensed: str = "2005-07-01",
                 malpractice: tuple[tuple[int, str], ...] = ()) -> dict[str, Any]:
    quals = [{"code": concept(model.QUALIFICATION, "licensed-physician"),
              "period": {"start": licensed}}]
    if title:
        quals.append({"code": concept(model.PROFESSIONAL_TITLE, title),
                      "period": {"start": "2015-01-01"}})
    if training:
        quals.append({"code": concept(model.QUALIFICATION, "telemedicine-training"),
                      "period": {"start": "2020-05-01"}})
    out: dict[str, Any] = {"resourceType": "Practitioner", "id": id_, "active": True,
                           "name": [{"family": family, "given": ["Dr"]}],
                           "telecom": [{"system": "phone", "value": "+86 471 000 0000"}],
                           "qualification": quals}
    if malpractice:
        out["extension"] = [{"url": model.EXT_MALPRACTICE, "extension": [
            {"url": "grade", "valueInteger": grade}, {"url": "date", "valueDate": day}]}
            for grade, day in malpractice]
    return out


def staff(id_: str, org: str, code: str, specialty: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "PractitionerRole", "id": id_, "active": True,
                           "practitioner": {"reference": f"Practitioner/p-{id_}"},
                           "organization": {"reference": f"Organization/{org}"},
                           "code": [concept(model.PRACTITIONER_ROLE, code)]}
    if specialty:
        out["specialty"] = [concept(model.SPECIALTY, specialty)]
    return out


STAFF = [("hr-a", "hospital-a", "telemedicine-centre-staff", None),
         ("hr-b", "hospital-b", "telemedicine-centre-staff", None),
         ("officer-region", "region", "telemedicine-centre-staff", None),
         ("officer-qc", "qc", "quality-evaluator", None),
         ("attending-b", "hospital-b", "attending-physician", "cardiology"),
         ("head-b", "hospital-b", "department-head", "cardiology"),
         ("attending-ir", "hospital-ir", "attending-physician", "cardiology")]


def expert_role(id_: str, practitioner_id: str, status: str | None, *,
                org: str = "hospital-a", specialty: str = "cardiology",
                since: str | None = "2010-03-01", consent: str | None = "2026-01-05",
                approved_by: str | None = None) -> dict[str, Any]:
    ext: list[dict[str, Any]] = []
    if status:
        ext.append({"url": model.EXT_POOL_STATUS,
                    "valueCoding": coding(model.EXPERT_POOL_STATUS, status)})
        ext.append({"url": model.EXT_NOMINATED_BY,
                    "valueReference": {"reference": f"Organization/{org}"}})
    if approved_by:
        ext.append({"url": model.EXT_APPROVED_BY_REGION,
                    "valueReference": {"reference": f"Organization/{approved_by}"}})
    if since:
        ext.append({"url": model.EXT_SPECIALTY_SINCE, "valueDate": since})
    if consent:
        ext.append({"url": model.EXT_EMPLOYER_CONSENT, "valueDate": consent})
    out: dict[str, Any] = {
        "resourceType": "PractitionerRole", "id": id_, "active": True,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "organization": {"reference": f"Organization/{org}"},
        "code": [concept(model.PRACTITIONER_ROLE, "expert")],
        "specialty": [concept(model.SPECIALTY, specialty)],
        "telecom": [{"system": "email", "value": f"{id_}@example.org"}],
    }
    if ext:
        out["extension"] = ext
    return out


@dataclass
class Network:
    clock: FixedClock
    admin: Fhir  # a system client
    settings: Settings
    http: TestClient
    made: dict[str, dict[str, Any]] = field(default_factory=dict)

    def as_user(self, role_id: str | None) -> Fhir:
        """A client acting as PractitionerRole/``role_id`` (None: no token at all)."""
        if role_id is None:
            return Fhir(self.http, None)
        return Fhir(self.http, issue_token(self.settings, USER_SCOPE,
                                           fhirUser=f"PractitionerRole/{role_id}"))

    def put(self, resource: dict[str, Any], client: Fhir | None = None) -> dict[str, Any]:
        r = (client or self.admin).put(f"{resource['resourceType']}/{resource['id']}", resource)
        assert r.status_code in (200, 201), r.text
        return r.json()  # type: ignore[no-any-return]

    def get(self, path: str) -> dict[str, Any]:
        r = self.admin.get(path)
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]

    def search(self, type_: str, **params: str) -> list[dict[str, Any]]:
        r = self.admin.get(type_, params={**params, "_count": "500"})
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", [])
                if e.get("search", {}).get("mode", "match") == "match"]

    def at(self, when: datetime) -> None:
        self.clock.set(when)


def add_expert(net: Network, role_id: str, status: str = "active", **practitioner_kw: Any) -> \
        dict[str, Any]:
    """An eligible cardiology expert of hospital-a (a system client loads it)."""
    pid = f"p-{role_id}"
    net.put(practitioner(pid, role_id.title(), **practitioner_kw))
    approved = "region" if status in ("approved", "active", "suspended") else None
    return net.put(expert_role(role_id, pid, status, approved_by=approved))


def build_people(net: Network) -> None:
    """The organisations, staff, patients, consent and records, in one transaction."""
    resources = [copy.deepcopy(org) for org in ORGANIZATIONS]
    for id_, org, code, specialty in STAFF:
        resources.append(practitioner(f"p-{id_}", id_.title(), title=None, training=False))
        resources.append(staff(id_, org, code, specialty))
    resources += [{"resourceType": "Patient", "id": pid, "name": [{"family": pid}]}
                  for pid in ("patient-1", "patient-2")]
    resources += [CONSENT, REFERRAL_CONSENT, RECORDS]
    entries = [{"resource": r, "request": {"method": "PUT",
                                           "url": f"{r['resourceType']}/{r['id']}"}}
               for r in resources]
    r = net.admin.post("", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert r.status_code == 200, r.text


#: patient-1's telemedicine consent, and the records the requests send.
CONSENT = {
    "resourceType": "Consent", "id": "consent-1", "status": "active",
    "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy"),
    "category": [concept(model.CONSENT_CATEGORY, "telemedicine-consultation")],
    "patient": {"reference": "Patient/patient-1"}, "dateTime": "2026-01-02",
    "performer": [{"reference": "Patient/patient-1"}],
    "provision": {"period": {"start": "2026-01-02", "end": "2027-12-31"}},
}
REFERRAL_CONSENT = {
    **CONSENT, "id": "referral-consent-1", "scope": concept(
        "http://terminology.hl7.org/CodeSystem/consentscope", "treatment"),
    "category": [concept(model.CONSENT_CATEGORY, "referral")]}
RECORDS = {"resourceType": "DocumentReference", "id": "records-1", "status": "current",
           "subject": {"reference": "Patient/patient-1"},
           "content": [{"attachment": {"contentType": "text/plain", "title": "Case summary"}}]}


@contextmanager
def open_network(tmp_path: Path, at: datetime = NOW) -> Iterator[Network]:
    """The app over a fresh data dir with the organisations and people, the clock at ``at``."""
    settings = Settings(data_dir=tmp_path / "data", workers=1, access_log=False)
    clock = FixedClock(at)
    app = create_app(settings, clock=clock)
    with TestClient(app, base_url="http://testserver") as http:
        net = Network(clock, Fhir(http, issue_token(settings)), settings, http)
        build_people(net)
        yield net


# -- consultations --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Consultation:
    """One consultation as the rules leave it.

    ``filed``: the request's (and the Task's) authoredOn; ``delay``: how long after filing the
    Task's steps were done (its writes happen then); ``owner``: an expert role id or an
    organisation id; ``named``: the expert the request names; ``report_after``: hours from
    filing to the report's issued time (completed Tasks); ``ratings``: overall scores of the
    satisfaction ratings about the Task, oldest first."""

    id: str
    filed: datetime
    status: str
    owner: str
    invited: str = "hospital-a"
    requester: str = "attending-b"
    named: str | None = None
    reason: str | None = None
    report_after: float | None = None
    delay: timedelta = timedelta(minutes=1)
    ratings: tuple[int, ...] = ()
    kind: str = "teleconsultation"
    priority: str = "routine"
    outputs: tuple[tuple[str, str], ...] = ()
    business: str | None = None


def _owner_ref(owner: str) -> dict[str, str]:
    kind = "PractitionerRole" if owner.startswith("expert") else "Organization"
    return {"reference": f"{kind}/{owner}"}


def request_status(c: Consultation) -> str:
    """The request's status once its Task is where ``c`` says."""
    if c.status == "completed":
        return "completed"
    return "revoked" if c.status in ("rejected", "cancelled") else "active"


def service_request(c: Consultation, status: str) -> dict[str, Any]:
    """A complete request (every minimum content the consultation rules ask for)."""
    performer = [{"reference": f"Organization/{c.invited}"}]
    if c.named:
        performer.append({"reference": f"PractitionerRole/{c.named}"})
    return {
        "resourceType": "ServiceRequest", "id": f"sr-{c.id}", "status": status,
        "extension": [
            {"url": model.EXT_APPROVED_BY, "valueReference": {"reference":
                                                               "PractitionerRole/head-b"}},
            {"url": model.EXT_REQUESTED_TITLE,
             "valueCoding": coding(model.PROFESSIONAL_TITLE, "chief-physician")}],
        "intent": "order", "priority": c.priority,
        "occurrenceDateTime": instant(c.filed + timedelta(days=1)),
        "supportingInfo": [{"reference": "DocumentReference/records-1"}],
        "category": [concept(model.CONSULTATION_TYPE, c.kind)],
        "code": {"text": "Second opinion"},
        "subject": {"reference": "Patient/patient-1"},
        "authoredOn": instant(c.filed),
        "requester": {"reference": f"PractitionerRole/{c.requester}"},
        "performer": performer,
        "performerType": concept(model.SPECIALTY, "cardiology"),
        "reasonCode": [concept(model.CONSULTATION_REASON, "inpatient-undiagnosed")],
    }


def task(c: Consultation, report: str | None = None) -> dict[str, Any]:
    done = c.filed + c.delay
    out: dict[str, Any] = {
        "resourceType": "Task", "id": c.id, "status": c.status, "intent": "order",
        "priority": c.priority, "code": concept(model.CONSULTATION_TYPE, c.kind),
        "focus": {"reference": f"ServiceRequest/sr-{c.id}"},
        "basedOn": [{"reference": f"ServiceRequest/sr-{c.id}"}],
        "for": {"reference": "Patient/patient-1"},
        "authoredOn": instant(c.filed), "lastModified": instant(done),
        "requester": {"reference": f"PractitionerRole/{c.requester}"},
        "owner": _owner_ref(c.owner),
        # deadlines as a client might send them (acceptance by the end of the filing day, the
        # expert within 24 h, met when done): the consultation rules recompute them all
        "extension": [_deadline("acceptance", c.filed.replace(hour=0, minute=0)
                                + timedelta(days=1), done)]
        + [_deadline("expert-assignment", c.filed + timedelta(hours=24),
                     done if c.owner.startswith("expert") else None)],
    }
    if c.reason:
        system = model.DECLINE_REASON if c.status == "rejected" else model.CANCEL_REASON
        out["statusReason"] = concept(system, c.reason)
    outputs = [{"type": {"text": kind}, "valueReference": {"reference": ref}}
               for kind, ref in c.outputs]
    if report:
        outputs.append({"type": {"text": "report"},
                        "valueReference": {"reference": f"DiagnosticReport/{report}"}})
    if outputs:
        out["output"] = outputs
    if c.business:
        out["businessStatus"] = concept(model.BUSINESS_STATUS, c.business)
    return out


def _deadline(kind: str, due: datetime, met: datetime | None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "kind", "valueCoding": coding(model.DEADLINE_KIND, kind)},
        {"url": "due", "valueDateTime": instant(due)}]
    if met is not None:
        parts.append({"url": "met", "valueDateTime": instant(met)})
    return {"url": model.EXT_DEADLINE, "extension": parts}


def report(c: Consultation) -> dict[str, Any]:
    assert c.report_after is not None
    return {
        "resourceType": "DiagnosticReport", "id": f"report-{c.id}", "status": "final",
        "basedOn": [{"reference": f"ServiceRequest/sr-{c.id}"}],
        "category": [concept(model.CONSULTATION_TYPE, c.kind)],
        "code": {"text": "Teleconsultation report"},
        "subject": {"reference": "Patient/patient-1"},
        "performer": [_owner_ref(c.owner)],
        "issued": instant(c.filed + timedelta(hours=c.report_after)),
        "conclusion": "Continue the current treatment.",
    }


def rating(c: Consultation, n: int, score: int, *, status: str = "completed",
           questionnaire: str = model.SATISFACTION_QUESTIONNAIRE) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse", "id": f"rating-{c.id}-{n}",
        "questionnaire": questionnaire, "status": status,
        "basedOn": [{"reference": f"ServiceRequest/sr-{c.id}"}],
        "subject": {"reference": f"Task/{c.id}"},
        "author": {"reference": f"PractitionerRole/{c.requester}"},
        "authored": instant(c.filed + timedelta(days=3, minutes=n)),
        "item": [{"linkId": "overall", "answer": [{"valueInteger": score}]},
                 {"linkId": "timeliness", "answer": [{"valueInteger": 4}]}],
    }


def file(net: Network, c: Consultation) -> dict[str, Any]:
    """The consultation's request, report, Task and ratings, each written at its time.

    Loaded as a system client would migrate a history: the request is written as a draft (so
    filing it does not make a Task of its own), then its Task as it stands after its steps
    (the consultation rules recompute its deadlines, met at the Task's write), then the request
    in its final status."""
    net.at(c.filed)
    net.put(service_request(c, "draft"))
    if c.report_after is not None:
        net.put(report(c))
    net.at(c.filed + c.delay)
    net.put(task(c, f"report-{c.id}" if c.report_after is not None else None))
    net.put(service_request(c, request_status(c)))
    stored = net.get(f"Task/{c.id}")
    for n, score in enumerate(c.ratings):
        net.put(rating(c, n, score))
    net.at(NOW)
    return stored


def q3(month: int, day: int, hour: int = 9) -> datetime:
    return datetime(2026, month, day, hour, 0, tzinfo=SHANGHAI)


LATE = timedelta(days=10)

#: The consultations of the statistics tests (hand-computed figures in the tests).
CONSULTATIONS = [
    Consultation("t1", q3(7, 1), "completed", "expert-1", report_after=12, ratings=(5,)),
    Consultation("t2", q3(7, 10, 8), "completed", "expert-1", report_after=24, ratings=(1, 3),
                 delay=LATE),
    Consultation("t3", q3(8, 1, 0), "completed", "expert-1", report_after=48),
    Consultation("t4", q3(8, 5), "rejected", "expert-1", reason="outside-practice-scope"),
    Consultation("t5", q3(8, 6), "rejected", "hospital-a", named="expert-1",
                 reason="expert-declined"),
    Consultation("t6", q3(8, 7), "rejected", "hospital-a", named="expert-1",
                 reason="outside-licensed-scope", delay=LATE),
    Consultation("t7", q3(9, 1), "accepted", "expert-1"),
    Consultation("t8", q3(9, 2), "completed", "expert-2", named="expert-1", report_after=30,
                 ratings=(2,)),
    Consultation("t9", datetime(2026, 4, 20, 9, 0, tzinfo=SHANGHAI), "completed", "expert-1",
                 report_after=6, ratings=(4,)),
    Consultation("t10", q3(9, 3), "requested", "hospital-c", invited="hospital-c"),
    # 00:30 on 1 October in Shanghai is still 30 September in UTC: a Q4 consultation
    Consultation("t11", datetime(2026, 10, 1, 0, 30, tzinfo=SHANGHAI), "completed", "expert-1",
                 report_after=2, ratings=(1,)),
]
#: Up-referrals hospital-b sends to hospital-a (when each is filed).
REFERRALS = [q3(7, 20), q3(9, 29), datetime(2026, 6, 30, 9, 0, tzinfo=SHANGHAI)]


def refer(net: Network, filed: datetime) -> dict[str, Any]:
    """An up-referral from attending-b to hospital-a, filed at ``filed`` (the referral rules
    create its Task)."""
    net.at(filed)
    r = net.admin.post("ServiceRequest", {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "priority": "routine", "category": [concept(model.CONSULTATION_TYPE, "referral")],
        "extension": [{"url": model.EXT_REFERRAL_DIRECTION, "valueCode": "up"}],
        "code": {"text": "Two-way referral"}, "subject": {"reference": "Patient/patient-1"},
        "reasonCode": [concept(model.REFERRAL_INDICATION, "equipment-limits")],
        "requester": {"reference": "PractitionerRole/attending-b"},
        "performer": [{"reference": "Organization/hospital-a"}],
        "supportingInfo": [{"reference": "Consent/referral-consent-1"}]})
    assert r.status_code == 201, r.text
    net.at(NOW)
    return r.json()  # type: ignore[no-any-return]


def build_consultations(net: Network) -> None:
    add_expert(net, "expert-1")
    add_expert(net, "expert-2")
    for c in CONSULTATIONS:
        file(net, c)
    for filed in REFERRALS:
        refer(net, filed)
    # ignored by the statistics: a rating still in progress, a rating of another questionnaire
    t3 = CONSULTATIONS[2]
    net.put(rating(t3, 0, 1, status="in-progress"))
    net.put(rating(t3, 1, 1, questionnaire=f"{model.BASE}/Questionnaire/other"))


def parameters(body: dict[str, Any]) -> dict[str, Any]:
    """A Parameters resource as name -> value (the value[x] of each parameter)."""
    out: dict[str, Any] = {}
    for p in body.get("parameter") or []:
        value = next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
        out[p["name"]] = value
    return out

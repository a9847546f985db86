"""A small telemedicine network for the consultation tests, built through the FHIR API.

Organisations (ids): ``county`` (care level 2, Inner Mongolia, standard equipment), ``township``
(level 1, Inner Mongolia, basic), ``regional`` (level 3, Inner Mongolia, advanced: the invited
centre), ``capital`` (level 3, Beijing), ``tehran-hc`` (level 2, Tehran province, zone
Asia/Tehran) and ``tehran-univ`` (level 3, Tehran province). Experts at ``regional``:
``expert-cardio`` and ``expert-cardio-2`` (cardiology, active pool members with long practice),
``expert-neuro`` (neurology), ``expert-junior`` (cardiology, licensed in 2024),
``expert-nominated`` (cardiology, only nominated); ``expert-capital`` and ``expert-tehran``
elsewhere. Attending physicians file requests: ``attending-county``, ``attending-township``,
``attending-tehran``; ``coordinator-regional`` and ``coordinator-capital`` work on the invited
side. ``patient-1`` has an active telemedicine consent, ``patient-2`` none.
Rosters: each expert has a Schedule for March 2026 with a free Slot every day from the 9th to
the 20th, 09:00–12:00 and 14:00–17:00 Asia/Shanghai (Asia/Tehran for ``expert-tehran``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
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
TEHRAN = ZoneInfo("Asia/Tehran")
#: Monday 9 March 2026, 10:00 in Shanghai.
START = datetime(2026, 3, 9, 10, 0, tzinfo=SHANGHAI)


def coding(system: str, code: str) -> dict[str, Any]:
    return {"system": system, "code": code}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(system, code)]}


def organization(id_: str, name: str, level: str, region: str, zone: str,
                 specialties: list[str], service_level: str | None) -> dict[str, Any]:
    ext = [{"url": model.EXT_CARE_LEVEL, "valueCoding": coding(model.CARE_LEVEL, level)},
           {"url": model.EXT_REGION, "valueCode": region},
           {"url": model.EXT_TIMEZONE, "valueCode": zone}]
    ext += [{"url": model.EXT_LICENSED_SPECIALTY,
             "valueCodeableConcept": concept(model.SPECIALTY, s)} for s in specialties]
    if service_level:
        ext.append({"url": model.EXT_SERVICE_LEVEL,
                    "valueCoding": coding(model.SERVICE_LEVEL, service_level)})
    return {"resourceType": "Organization", "id": id_, "active": True, "name": name,
            "extension": ext}


def practitioner(id_: str, family: str, licensed_since: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Practitioner", "id": id_, "active": True,
                           "name": [{"family": family, "given": ["Dr"]}]}
    if licensed_since:
        out["qualification"] = [
            {"code": concept(model.QUALIFICATION, "licensed-physician"),
             "period": {"start": licensed_since}},
            {"code": concept(model.PROFESSIONAL_TITLE, "chief-physician"),
             "period": {"start": licensed_since}},
            {"code": concept(model.QUALIFICATION, "telemedicine-training"),
             "period": {"start": "2020-01-01"}}]
    return out


def role(id_: str, practitioner_id: str, org: str, code: str, specialty: str | None = None,
         pool: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "PractitionerRole", "id": id_, "active": True,
        "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
        "organization": {"reference": f"Organization/{org}"},
        "code": [concept(model.PRACTITIONER_ROLE, code)]}
    if specialty:
        out["specialty"] = [concept(model.SPECIALTY, specialty)]
    if pool:
        out["extension"] = [
            {"url": model.EXT_POOL_STATUS, "valueCoding": coding(model.EXPERT_POOL_STATUS, pool)},
            {"url": model.EXT_NOMINATED_BY, "valueReference": {"reference": f"Organization/{org}"}},
            {"url": model.EXT_APPROVED_BY_REGION,
             "valueReference": {"reference": "Organization/regional"}},
            {"url": model.EXT_SPECIALTY_SINCE, "valueDate": "2005-07-01"},
            {"url": model.EXT_EMPLOYER_CONSENT, "valueDate": "2025-01-01"}]
    return out


def consent(id_: str, patient: str, start: str = "2026-01-01",
            end: str = "2026-12-31") -> dict[str, Any]:
    return {
        "resourceType": "Consent", "id": id_, "status": "active",
        "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "treatment"),
        "category": [concept(model.CONSENT_CATEGORY, "telemedicine-consultation")],
        "patient": {"reference": f"Patient/{patient}"},
        "dateTime": "2026-01-01T08:00:00+08:00",
        "performer": [{"reference": f"Patient/{patient}"}],
        "policyRule": concept("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN"),
        "provision": {"period": {"start": start, "end": end}},
    }


ORGANIZATIONS = [
    organization("county", "Horqin County Hospital", "2", "CN-NM", "Asia/Shanghai",
                 ["cardiology", "neurology", "pulmonology"], "standard"),
    organization("township", "Baiyin Township Health Centre", "1", "CN-NM", "Asia/Shanghai",
                 ["cardiology", "general-practice"], "basic"),
    organization("regional", "Inner Mongolia Regional Telemedicine Centre", "3", "CN-NM",
                 "Asia/Shanghai", ["cardiology", "neurology", "pulmonology", "oncology"],
                 "advanced"),
    organization("capital", "Beijing Heart Hospital", "3", "CN-BJ", "Asia/Shanghai",
                 ["cardiology", "neurology"], "advanced"),
    organization("tehran-hc", "Rey Health Centre", "2", "IR-07", "Asia/Tehran",
                 ["cardiology"], "standard"),
    organization("tehran-univ", "Tehran University Telemedicine Centre", "3", "IR-07",
                 "Asia/Tehran", ["cardiology"], "advanced"),
]

#: (role id, practitioner id, licensed since, organisation, role code, specialty, pool status)
PEOPLE = [
    ("attending-county", "p-attending-county", "2015-07-01", "county", "attending-physician",
     "cardiology", None),
    ("head-county", "p-head-county", "2005-07-01", "county", "department-head", "cardiology",
     None),
    ("attending-township", "p-attending-township", "2018-07-01", "township",
     "attending-physician", "general-practice", None),
    ("attending-tehran", "p-attending-tehran", "2016-07-01", "tehran-hc", "attending-physician",
     "cardiology", None),
    ("coordinator-regional", "p-coordinator-regional", None, "regional",
     "telemedicine-centre-staff", None, None),
    ("coordinator-capital", "p-coordinator-capital", None, "capital",
     "telemedicine-centre-staff", None, None),
    ("expert-cardio", "p-expert-cardio", "2010-07-01", "regional", "expert", "cardiology",
     "active"),
    ("expert-cardio-2", "p-expert-cardio-2", "2012-07-01", "regional", "expert", "cardiology",
     "active"),
    ("expert-neuro", "p-expert-neuro", "2009-07-01", "regional", "expert", "neurology", "active"),
    ("expert-junior", "p-expert-junior", "2024-09-01", "regional", "expert", "cardiology",
     "active"),
    ("expert-nominated", "p-expert-nominated", "2008-07-01", "regional", "expert", "cardiology",
     "nominated"),
    ("expert-capital", "p-expert-capital", "2006-07-01", "capital", "expert", "cardiology",
     "active"),
    ("expert-tehran", "p-expert-tehran", "2011-07-01", "tehran-univ", "expert", "cardiology",
     "active"),
]

#: Experts with a duty roster, and their zone.
ROSTERED = {"expert-cardio": SHANGHAI, "expert-cardio-2": SHANGHAI, "expert-neuro": SHANGHAI,
            "expert-junior": SHANGHAI, "expert-capital": SHANGHAI, "expert-tehran": TEHRAN}
DUTY_BLOCKS = ((time(9), time(12)), (time(14), time(17)))


def roster(role_id: str, zone: ZoneInfo,
           days: range = range(9, 21)) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    schedule = {
        "resourceType": "Schedule", "id": f"roster-{role_id}", "active": True,
        "actor": [{"reference": f"PractitionerRole/{role_id}"}],
        "planningHorizon": {"start": "2026-03-01T00:00:00+08:00",
                            "end": "2026-04-01T00:00:00+08:00"},
        "comment": "Duty roster, March 2026"}
    slots = []
    for day in days:
        for i, (begin, end) in enumerate(DUTY_BLOCKS):
            d = date(2026, 3, day)
            slots.append({
                "resourceType": "Slot", "id": f"slot-{role_id}-{day:02d}-{i}",
                "schedule": {"reference": f"Schedule/{schedule['id']}"}, "status": "free",
                "start": datetime.combine(d, begin, zone).isoformat(),
                "end": datetime.combine(d, end, zone).isoformat()})
    return schedule, slots


def utc(text: str) -> datetime:
    return model.parse_datetime(text).astimezone(UTC)


@dataclass
class Network:
    """The app in-process over the network, a fixed clock, and a client per party."""

    clock: FixedClock
    admin: Fhir  # system scope
    requester: Fhir  # attending-county
    invited: Fhir  # coordinator-regional
    expert: Fhir  # expert-cardio
    settings: Settings
    http: TestClient

    def as_user(self, role_id: str) -> Fhir:
        return Fhir(self.http, issue_token(self.settings, "user/*.cruds",
                                           fhirUser=f"PractitionerRole/{role_id}"))

    def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        r = self.admin.put(f"{resource['resourceType']}/{resource['id']}", resource)
        assert r.status_code in (200, 201), r.text
        return r.json()

    def read(self, type_: str, id_: str) -> dict[str, Any]:
        r = self.admin.get(f"{type_}/{id_}")
        assert r.status_code == 200, r.text
        return r.json()

    def search(self, type_: str, **params: str) -> list[dict[str, Any]]:
        r = self.admin.get(type_, params={**params, "_count": "100"})
        assert r.status_code == 200, r.text
        return [e["resource"] for e in r.json().get("entry", [])]

    def count(self, type_: str) -> int:
        r = self.admin.get(type_, params={"_summary": "count"})
        assert r.status_code == 200, r.text
        return r.json()["total"]

    def task_of(self, request_id: str) -> dict[str, Any]:
        tasks = self.search("Task", focus=f"ServiceRequest/{request_id}")
        assert len(tasks) == 1, tasks
        return tasks[0]

    def file(self, request: dict[str, Any], client: Fhir | None = None) -> tuple[
            dict[str, Any], dict[str, Any]]:
        """File a request; (the stored request, its Task)."""
        r = (client or self.requester).post("ServiceRequest", request)
        assert r.status_code == 201, r.text
        sr = r.json()
        return sr, self.task_of(sr["id"])

    def op(self, task_id: str, name: str, client: Fhir | None = None,
           **params: Any) -> Any:
        body = {"resourceType": "Parameters", "parameter": [
            {"name": k, **v} for k, values in params.items()
            for v in (values if isinstance(values, list) else [values])]}
        return (client or self.invited).post(f"Task/{task_id}/${name}", body)


def request(*, patient: str = "patient-1", requester: str = "attending-county",
            invited: str = "regional", specialty: str = "cardiology",
            category: str = "teleconsultation", priority: str = "routine",
            channel: str | None = None, expert: str | None = None,
            records: bool = True, approved_by: str = "head-county") -> dict[str, Any]:
    """A complete consultation request; drop or change parts to break a rule."""
    ext: list[dict[str, Any]] = [
        {"url": model.EXT_APPROVED_BY, "valueReference": {
            "reference": f"PractitionerRole/{approved_by}"}},
        {"url": model.EXT_REQUESTED_TITLE,
         "valueCoding": coding(model.PROFESSIONAL_TITLE, "associate-senior")}]
    if channel:
        ext.append({"url": model.EXT_REQUEST_CHANNEL,
                    "valueCoding": coding(model.REQUEST_CHANNEL, channel)})
    performer = [{"reference": f"Organization/{invited}"}]
    if expert:
        performer.append({"reference": f"PractitionerRole/{expert}"})
    out: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "extension": ext,
        "category": [concept(model.CONSULTATION_TYPE, category)],
        "priority": priority,
        "code": {"text": "Chest pain, unclear ECG changes: diagnosis and treatment advice"},
        "subject": {"reference": f"Patient/{patient}"},
        "occurrenceDateTime": "2026-03-10T10:00:00+08:00",
        "authoredOn": "2026-03-09T10:00:00+08:00",
        "requester": {"reference": f"PractitionerRole/{requester}"},
        "performer": performer,
        "performerType": concept(model.SPECIALTY, specialty),
        "reasonCode": [concept(model.CONSULTATION_REASON, "inpatient-undiagnosed")],
    }
    if records:
        out["supportingInfo"] = [{"reference": "DocumentReference/records-1"}]
    return out


def build(net: Network) -> None:
    for org in ORGANIZATIONS:
        net.put(copy.deepcopy(org))
    for role_id, pid, since, org, code, specialty, pool in PEOPLE:
        net.put(practitioner(pid, pid.removeprefix("p-"), since))
        net.put(role(role_id, pid, org, code, specialty, pool))
    for pid in ("patient-1", "patient-2"):
        net.put({"resourceType": "Patient", "id": pid, "name": [{"family": pid}]})
    net.put(consent("consent-1", "patient-1"))
    net.put({"resourceType": "DocumentReference", "id": "records-1", "status": "current",
             "subject": {"reference": "Patient/patient-1"},
             "content": [{"attachment": {"contentType": "text/plain", "title": "Discharge "
                                         "summary", "data": "U3VtbWFyeQ=="}}]})
    for role_id, zone in ROSTERED.items():
        schedule, slots = roster(role_id, zone)
        net.put(schedule)
        for slot in slots:
            net.put(slot)


@contextmanager
def open_network(tmp_path: Path, at: datetime = START) -> Iterator[Network]:
    """The app over a fresh data dir with the network built, the clock at ``at``."""
    settings = Settings(data_dir=tmp_path / "data", workers=1, access_log=False)
    clock = FixedClock(at)
    app = create_app(settings, clock=clock)
    with TestClient(app, base_url="http://testserver") as http:
        def client(user: str | None) -> Fhir:
            if user is None:
                return Fhir(http, issue_token(settings))
            return Fhir(http, issue_token(settings, "user/*.cruds",
                                          fhirUser=f"PractitionerRole/{user}"))

        network = Network(clock, client(None), client("attending-county"),
                          client("coordinator-regional"), client("expert-cardio"), settings,
                          http)
        build(network)
        yield network


def advance(net: Network, **delta: float) -> None:
    net.clock.advance(timedelta(**delta))

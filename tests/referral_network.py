"""A small telemedicine network for the report and referral tests, built through the API.

Four organisations at three care levels (one banner hospital at level 1, two city hospitals at
level 2, the regional centre at level 3, all in Asia/Shanghai), a physician at each, an expert
at the regional centre, a patient with a guardian, and the patient's consents.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.workflow import model
from tests.conftest import Fhir, issue_token

LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
USER_SCOPE = "user/*.cruds"


def created(fhir: Fhir, resource: dict[str, Any]) -> dict[str, Any]:
    r = fhir.post(resource["resourceType"], resource)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def organization(name: str, level: int) -> dict[str, Any]:
    return {
        "resourceType": "Organization", "name": name, "active": True,
        "extension": [
            {"url": model.EXT_CARE_LEVEL,
             "valueCoding": {"system": model.CARE_LEVEL, "code": str(level)}},
            {"url": model.EXT_TIMEZONE, "valueCode": "Asia/Shanghai"},
            {"url": model.EXT_REGION, "valueCode": "CN-NM"},
        ],
    }


def consent(patient: str, performer: str, *, category: str = "referral",
            status: str = "active", period: dict[str, str] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Consent", "status": status,
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "treatment"}]},
        "category": [{"coding": [{"system": model.CONSENT_CATEGORY, "code": category}]}],
        "patient": {"reference": patient},
        "dateTime": "2026-07-01T09:00:00+08:00",
        "performer": [{"reference": performer}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}]},
    }
    if period:
        out["provision"] = {"type": "permit", "period": period}
    return out


@dataclass
class Network:
    fhir: Fhir
    settings: Any
    ids: dict[str, str] = field(default_factory=dict)

    def ref(self, name: str) -> str:
        return self.ids[name]

    def token(self, fhir_user: str | None, scope: str = USER_SCOPE) -> str:
        if fhir_user is None:
            return issue_token(self.settings, scope)
        return issue_token(self.settings, scope, fhirUser=fhir_user)

    def as_user(self, name: str) -> Fhir:
        """A client acting as the PractitionerRole (or Practitioner) ``name``."""
        return Fhir(self.fhir.http, self.token(self.ids[name]))

    def add(self, name: str, resource: dict[str, Any]) -> str:
        body = created(self.fhir, resource)
        self.ids[name] = f"{body['resourceType']}/{body['id']}"
        return self.ids[name]


def build(fhir: Fhir, settings: Any) -> Network:
    net = Network(fhir, settings)
    net.add("banner", organization("Wuchuan Banner Hospital", 1))
    net.add("city", organization("Hohhot First Hospital", 2))
    net.add("city2", organization("Baotou Central Hospital", 2))
    net.add("centre", organization("Inner Mongolia Regional Telemedicine Centre", 3))
    for name, org in (("gp", "banner"), ("internist", "city"), ("internist2", "city2"),
                      ("surgeon", "centre"), ("expert", "centre")):
        pr = net.add(f"{name}-practitioner", {
            "resourceType": "Practitioner", "name": [{"family": name.capitalize()}]})
        role: dict[str, Any] = {"resourceType": "PractitionerRole", "active": True,
                                "practitioner": {"reference": pr},
                                "organization": {"reference": net.ref(org)}}
        if name == "expert":
            role["code"] = [{"coding": [{"system": model.PRACTITIONER_ROLE, "code": "expert"}]}]
        net.add(name, role)
    patient = net.add("patient", {"resourceType": "Patient", "name": [{"family": "Bayar"}],
                                  "gender": "male", "birthDate": "1950-03-02"})
    net.add("other-patient", {"resourceType": "Patient", "name": [{"family": "Sarnai"}]})
    net.add("guardian", {
        "resourceType": "RelatedPerson", "patient": {"reference": patient},
        "relationship": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "GUARD"}]}],
        "name": [{"family": "Bayar", "given": ["Tuya"]}]})
    net.add("stranger", {"resourceType": "RelatedPerson",
                         "patient": {"reference": net.ref("other-patient")},
                         "name": [{"family": "Stranger"}]})
    net.add("consent", consent(patient, patient, period={"start": "2026-07-01",
                                                         "end": "2026-12-31"}))
    net.add("guardian-consent", consent(patient, net.ref("guardian")))
    return net


def results_for_down_referral(net: Network) -> None:
    """Results, a treatment plan and rehabilitation guidance made at the regional centre."""
    patient = net.ref("patient")
    net.add("hba1c", {
        "resourceType": "Observation", "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "4548-4"}], "text": "HbA1c"},
        "subject": {"reference": patient},
        "performer": [{"reference": net.ref("surgeon")}],
        "valueQuantity": {"value": 7.2, "unit": "%", "system": "http://unitsofmeasure.org",
                          "code": "%"}})
    net.add("plan", {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": patient}, "title": "Follow-up treatment after surgery"})
    net.add("rehab-plan", {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "subject": {"reference": patient},
        "category": [{"coding": [{"system": SNOMED, "code": "394602003",
                                  "display": "Rehabilitation"}]}],
        "activity": [{"detail": {"status": "scheduled", "description": "Walk 20 min daily"}}]})
    net.add("rehab-note", {
        "resourceType": "DocumentReference", "status": "current",
        "type": {"coding": [{"system": LOINC, "code": "34823-5"}]},
        "subject": {"reference": patient},
        "content": [{"attachment": {"contentType": "text/plain",
                                    "data": "UmVoYWJpbGl0YXRpb24gZ3VpZGFuY2U="}}]})


def referral(net: Network, direction: str | None, sender: str, receiver: str,
             indication: str | None, supporting: list[str], *, status: str = "active",
             patient: str = "patient") -> dict[str, Any]:
    """A referral request from the PractitionerRole ``sender`` to the Organization
    ``receiver`` (names in the network)."""
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest", "status": status, "intent": "order",
        "priority": "urgent",
        "category": [{"coding": [{"system": model.CONSULTATION_TYPE, "code": "referral"}]}],
        "code": {"text": "Two-way referral"},
        "subject": {"reference": net.ref(patient)},
        "requester": {"reference": net.ref(sender)},
        "performer": [{"reference": net.ref(receiver)}],
        "supportingInfo": [{"reference": net.ref(s)} for s in supporting],
    }
    if direction:
        sr["extension"] = [{"url": model.EXT_REFERRAL_DIRECTION, "valueCode": direction}]
    if indication:
        sr["reasonCode"] = [{"coding": [{"system": model.REFERRAL_INDICATION,
                                         "code": indication}]}]
    if not supporting:
        del sr["supportingInfo"]
    return sr

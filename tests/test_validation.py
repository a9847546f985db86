"""Validation of R4 resources: what passes, what fails, with which issue code and where.

Expectations come from the FHIR R4 specification (datatypes.html, json.html, references.html,
narrative.html, extensibility.html, the resource definitions and their required bindings).
"""

from __future__ import annotations

import copy
import json
import random
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.fhir.codec import loads
from server.fhir.errors import FhirError, Issue
from server.fhir.structures import structures
from server.fhir.validation import (
    REQUIRED_VALUESETS,
    r4b_differences,
    r4b_model_issues,
    validate_resource,
    xhtml_problems,
)
from server.generate.valuesets import Expander

XHTML = "http://www.w3.org/1999/xhtml"
UUID = "urn:uuid:3f2504e0-4f89-41d3-9a0c-0305e82c3301"


def div(body: str) -> str:
    return f'<div xmlns="{XHTML}">{body}</div>'


def pairs(issues: list[Issue], severity: str = "error") -> set[tuple[str, str]]:
    return {(i.code, e) for i in issues if i.severity == severity for e in i.expression}


def errors(resource: Any, expected_type: str | None = None) -> set[tuple[str, str]]:
    return pairs(validate_resource(resource, expected_type))


def with_(resource: dict[str, Any], **changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(resource)
    out.update(changes)
    return out


# ------------------------------------------------------------------- good telemedicine resources

def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient", "id": "p1",
        "meta": {"versionId": "1", "lastUpdated": "2024-01-02T03:04:05.123Z",
                 "profile": ["http://example.org/fhir/StructureDefinition/tm-patient"]},
        "text": {"status": "generated",
                 "div": div("<p>Ali <b>Rezaei</b>, male, born 1974-12-25</p>")},
        "extension": [{"url": "http://example.org/fhir/StructureDefinition/citizenship",
                       "extension": [{"url": "code", "valueCodeableConcept": {
                           "coding": [{"system": "urn:iso:std:iso:3166", "code": "IR"}]}}]}],
        "identifier": [{"use": "official", "system": "urn:oid:1.2.36.146.595.217.0.1",
                        "value": "12345"}],
        "active": True,
        "name": [{"use": "official", "family": "Rezaei", "given": ["Ali", "Reza"]},
                 {"use": "usual", "given": ["علی"]}],
        "telecom": [{"system": "phone", "value": "+98 21 555 1234", "use": "mobile"},
                    {"system": "email", "value": "ali@example.org"}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "_birthDate": {"extension": [{
            "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
            "valueDateTime": "1974-12-25T14:35:45-05:00"}]},
        "address": [{"use": "home", "line": ["12 Azadi St"], "city": "Tehran",
                     "postalCode": "1234567890", "country": "IR"}],
        "maritalStatus": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}]},
        "multipleBirthInteger": 1,
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "fa"}]},
                           "preferred": True}],
        "generalPractitioner": [{"reference": "Practitioner/dr-1"}],
        "managingOrganization": {"reference": "Organization/org-1", "display": "Tehran Hospital"},
    }


def observation() -> dict[str, Any]:
    return {
        "resourceType": "Observation", "id": "o1", "status": "final",
        "category": [{"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/observation-category",
            "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7",
                             "display": "Body weight"}]},
        "subject": {"reference": "Patient/p1"},
        "effectiveDateTime": "2024-01-02T03:04:05+03:30",
        "issued": "2024-01-02T03:10:00Z",
        "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org",
                          "code": "kg"},
    }


def good_resources() -> list[dict[str, Any]]:
    practitioner = {
        "resourceType": "Practitioner", "id": "dr-1", "active": True,
        "name": [{"family": "Wang", "given": ["Li"], "prefix": ["Dr."]}],
        "telecom": [{"system": "phone", "value": "+86 471 000 0000", "use": "work"}],
        "qualification": [{"code": {"text": "Chief physician (主任医师)"},
                           "period": {"start": "2010-01-01"},
                           "issuer": {"reference": "Organization/org-1"}}],
    }
    role = {
        "resourceType": "PractitionerRole", "id": "role-1", "active": True,
        "practitioner": {"reference": "Practitioner/dr-1"},
        "organization": {"reference": "Organization/org-1"},
        "code": [{"coding": [{"system": "http://example.org/fhir/CodeSystem/tm-roles",
                              "code": "expert-pool"}]}],
        "specialty": [{"coding": [{"system": "http://snomed.info/sct", "code": "394579002"}]}],
        "availableTime": [{"daysOfWeek": ["mon", "wed"], "availableStartTime": "08:00:00",
                           "availableEndTime": "12:30:00"}],
    }
    organization = {
        "resourceType": "Organization", "id": "org-1", "active": True, "name": "Tehran Hospital",
        "type": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/organization-type",
                              "code": "prov"}]}],
        "address": [{"city": "Tehran", "country": "IR"}],
        "partOf": {"reference": "Organization/university-1"},
    }
    service_request = {
        "resourceType": "ServiceRequest", "id": "sr-1", "status": "active", "intent": "order",
        "priority": "urgent",
        "category": [{"coding": [{"system": "http://example.org/fhir/CodeSystem/tm-services",
                                  "code": "teleconsultation"}]}],
        "code": {"text": "Remote cardiology consultation"},
        "subject": {"reference": "Patient/p1"},
        "authoredOn": "2024-01-02T09:00:00+03:30",
        "requester": {"reference": "PractitionerRole/role-1"},
        "performer": [{"reference": "Organization/org-2"}],
        "reasonCode": [{"text": "Undiagnosed after 3 days of admission"}],
        "supportingInfo": [{"reference": "Observation/o1"}],
        "occurrenceDateTime": "2024-01-03",
        "note": [{"authorReference": {"reference": "Practitioner/dr-1"},
                  "text": "Please review the ECG."}],
    }
    task = {
        "resourceType": "Task", "id": "t1", "status": "requested", "intent": "order",
        "priority": "routine",
        "businessStatus": {"text": "expert assigned"},
        "basedOn": [{"reference": "ServiceRequest/sr-1"}],
        "focus": {"reference": "ServiceRequest/sr-1"},
        "for": {"reference": "Patient/p1"},
        "authoredOn": "2024-01-02T09:00:00Z",
        "requester": {"reference": "Organization/org-1"},
        "owner": {"reference": "Organization/org-2"},
        "restriction": {"period": {"end": "2024-01-04T09:00:00Z"}},
        "input": [{"type": {"text": "deadline hours"}, "valueUnsignedInt": 48}],
    }
    appointment = {
        "resourceType": "Appointment", "id": "a1", "status": "booked",
        "serviceType": [{"text": "teleconsultation"}],
        "start": "2024-01-03T10:00:00Z", "end": "2024-01-03T10:30:00Z", "minutesDuration": 30,
        "basedOn": [{"reference": "ServiceRequest/sr-1"}],
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "required": "required", "status": "accepted"},
            {"actor": {"reference": "Practitioner/dr-1"}, "status": "accepted"}],
    }
    encounter = {
        "resourceType": "Encounter", "id": "e1", "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR",
                  "display": "virtual"},
        "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "Practitioner/dr-1"}}],
        "period": {"start": "2024-01-03T10:00:00Z", "end": "2024-01-03T10:28:00Z"},
        "basedOn": [{"reference": "ServiceRequest/sr-1"}],
        "serviceProvider": {"reference": "Organization/org-2"},
    }
    consent = {
        "resourceType": "Consent", "id": "c1", "status": "active",
        "scope": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope",
                              "code": "treatment"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2024-01-02T08:55:00+03:30",
        "performer": [{"reference": "Patient/p1"}],
        "organization": [{"reference": "Organization/org-1"}],
        "policyRule": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                   "code": "OPTIN"}]},
        "provision": {"type": "permit", "period": {"start": "2024-01-02", "end": "2024-02-02"},
                      "actor": [{"role": {"text": "consulting expert"},
                                 "reference": {"reference": "Practitioner/dr-1"}}]},
    }
    report = {
        "resourceType": "DiagnosticReport", "id": "dr1", "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "11524-6"}]},
        "subject": {"reference": "Patient/p1"},
        "basedOn": [{"reference": "ServiceRequest/sr-1"}],
        "effectiveDateTime": "2024-01-03T10:30:00Z", "issued": "2024-01-03T10:55:00Z",
        "performer": [{"reference": "Practitioner/dr-1"}],
        "result": [{"reference": "Observation/o1"}],
        "conclusion": "Sinus rhythm.",
        "presentedForm": [{"contentType": "application/pdf", "language": "fa",
                           "data": "JVBERi0xLjQK", "title": "report.pdf"}],
    }
    composition = {
        "resourceType": "Composition", "id": "comp1", "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "11488-4"}]},
        "subject": {"reference": "Patient/p1"}, "date": "2024-01-03T11:00:00Z",
        "author": [{"reference": "Practitioner/dr-1"}], "title": "Consultation note",
        "attester": [{"mode": "legal", "time": "2024-01-03T11:05:00Z",
                      "party": {"reference": "Practitioner/dr-1"}}],
        "section": [{"title": "Findings", "text": {"status": "generated",
                                                   "div": div("<p>Normal ECG</p>")},
                     "entry": [{"reference": "Observation/o1"}]}],
    }
    provenance = {
        "resourceType": "Provenance", "id": "prov1",
        "target": [{"reference": "DiagnosticReport/dr1/_history/1"}],
        "recorded": "2024-01-03T10:56:00Z",
        "agent": [{"type": {"coding": [{
            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
            "code": "author"}]}, "who": {"reference": "Practitioner/dr-1"}}],
        "signature": [{"type": [{"system": "urn:iso-astm:E1762-95:2013",
                                 "code": "1.2.840.10065.1.12.1.1"}],
                       "when": "2024-01-03T10:56:00Z",
                       "who": {"reference": "Practitioner/dr-1"},
                       "targetFormat": "application/fhir+json",
                       "sigFormat": "application/jose", "data": "ZXlKaGJHY2lPaUpGVXpJMU5pSjk="}],
    }
    questionnaire_response = {
        "resourceType": "QuestionnaireResponse", "id": "qr1", "status": "completed",
        "questionnaire": "http://example.org/fhir/Questionnaire/tm-satisfaction",
        "subject": {"reference": "ServiceRequest/sr-1"}, "authored": "2024-01-04T08:00:00Z",
        "item": [{"linkId": "1", "text": "Overall", "answer": [{"valueInteger": 5}]},
                 {"linkId": "2", "item": [
                     {"linkId": "2.1", "answer": [{"valueBoolean": True, "item": [
                         {"linkId": "2.1.1", "answer": [{"valueString": "on time"}]}]}]},
                     {"linkId": "2.2", "answer": [{"valueCoding": {
                         "system": "http://example.org/fhir/CodeSystem/rating",
                         "code": "good"}}]}]}],
    }
    bundle = {
        "resourceType": "Bundle", "type": "transaction",
        "entry": [{"fullUrl": UUID, "resource": with_(patient(), id="new"),
                   "request": {"method": "POST", "url": "Patient"}},
                  {"resource": with_(observation(), subject={"reference": UUID}),
                   "request": {"method": "PUT", "url": "Observation/o1"}}],
    }
    binary = {"resourceType": "Binary", "id": "b1", "contentType": "image/jpeg",
              "securityContext": {"reference": "DiagnosticReport/dr1"},
              "data": "/9j/4AAQSkZJRgABAQ=="}
    no_r4b_model = {"resourceType": "MedicinalProduct", "id": "mp1",
                    "name": [{"productName": "Amoxicillin 500 mg capsules",
                              "countryLanguage": [{"country": {"text": "Iran"},
                                                   "language": {"text": "fa"}}]}]}
    return [patient(), observation(), practitioner, role, organization, service_request, task,
            appointment, encounter, consent, report, composition, provenance,
            questionnaire_response, bundle, binary, no_r4b_model]


def good(type_name: str) -> dict[str, Any]:
    return next(r for r in good_resources() if r["resourceType"] == type_name)


@pytest.mark.parametrize("resource", good_resources(), ids=lambda r: r["resourceType"])
def test_good_resources_pass(resource: dict[str, Any]) -> None:
    assert validate_resource(resource, resource["resourceType"]) == []


def test_validation_does_not_change_the_resource() -> None:
    for resource in good_resources():
        before = copy.deepcopy(resource)
        validate_resource(resource)
        assert resource == before


def test_input_read_by_the_codec_passes() -> None:
    text = json.dumps(observation()).replace('"value": 72.5', '"value": 72.50')
    resource = loads(text)
    assert resource["valueQuantity"]["value"] == Decimal("72.50")
    assert validate_resource(resource) == []


# -------------------------------------------------------------------------------- resourceType

def test_resource_type_rules() -> None:
    assert errors([1]) == {("structure", "$this")}
    assert errors({"id": "x"}) == {("structure", "resourceType")}
    assert errors({"resourceType": 5}) == {("structure", "resourceType")}
    assert errors({"resourceType": "Foo"}) == {("invalid", "resourceType")}
    assert errors({"resourceType": "DomainResource"}) == {("invalid", "resourceType")}
    assert errors({"resourceType": "Patient"}, "Observation") == {
        ("invalid", "Patient.resourceType")}


# ------------------------------------------------------------------- structure and datatypes

def test_the_usual_mistakes() -> None:
    bad = with_(patient(), active="yes", multipleBirthInteger="3", gender="xx",
                birthDate="1970-13-01", id="a" * 65, foo=1, fhir_comments=["x"], address=[],
                photo=[{"contentType": ""}])
    assert errors(bad) == {
        ("structure", "Patient.active"),  # a string is not a boolean
        ("structure", "Patient.multipleBirthInteger"),  # a string is not a number
        ("code-invalid", "Patient.gender"),
        ("value", "Patient.birthDate"),
        ("value", "Patient.id"),  # ids are at most 64 characters
        ("structure", "Patient.foo"),
        ("structure", "Patient.fhir_comments"),
        ("structure", "Patient.address"),  # empty array
        ("structure", "Patient.photo[0].contentType"),  # empty string
    }


def test_id_of_64_characters_passes() -> None:
    assert errors(with_(patient(), id="a" * 64)) == set()


def test_json_kinds_of_primitives() -> None:
    assert errors(with_(patient(), multipleBirthInteger=True)) == {
        ("structure", "Patient.multipleBirthInteger")}
    assert errors(with_(patient(), active=1)) == {("structure", "Patient.active")}
    assert errors(with_(patient(), gender=1)) == {("structure", "Patient.gender")}
    obs = observation()
    obs["valueQuantity"]["value"] = "72.5"
    assert errors(obs) == {("structure", "Observation.valueQuantity.value")}
    obs["valueQuantity"]["value"] = True
    assert errors(obs) == {("structure", "Observation.valueQuantity.value")}


def test_decimals() -> None:
    obs = observation()
    obs["valueQuantity"]["value"] = Decimal("1.50")
    assert errors(obs) == set()
    obs["valueQuantity"]["value"] = Decimal("-1E+3")
    assert errors(obs) == set()
    obs["valueQuantity"]["value"] = 3
    assert errors(obs) == set()
    obs["valueQuantity"]["value"] = float("nan")
    assert errors(obs) == {("value", "Observation.valueQuantity.value")}


def test_integer_ranges() -> None:
    assert errors(with_(patient(), multipleBirthInteger=2**31 - 1)) == set()
    assert errors(with_(patient(), multipleBirthInteger=-(2**31))) == set()
    assert errors(with_(patient(), multipleBirthInteger=2**31)) == {
        ("value", "Patient.multipleBirthInteger")}
    assert errors(with_(patient(), multipleBirthInteger=2.5)) == {
        ("value", "Patient.multipleBirthInteger")}
    assert errors(with_(patient(), multipleBirthInteger=Decimal("2.0"))) == {
        ("value", "Patient.multipleBirthInteger")}
    appointment = good("Appointment")
    assert errors(with_(appointment, minutesDuration=0)) == {  # positiveInt
        ("value", "Appointment.minutesDuration")}
    assert errors(with_(appointment, priority=0)) == set()  # unsignedInt
    assert errors(with_(appointment, priority=-1)) == {("value", "Appointment.priority")}


@pytest.mark.parametrize(("element", "value"), [
    ("effectiveDateTime", "2024-01-02T03:04:05"),  # a time needs a zone
    ("effectiveDateTime", "2024-01-02T03:04Z"),  # seconds are required
    ("effectiveDateTime", "2023-02-29"),  # no such day
    ("effectiveDateTime", "2024-04-31"),
    ("effectiveDateTime", "24-01-02"),
    ("issued", "2024-01-02"),  # an instant has a time
    ("valueTime", "25:00:00"),
    ("valueTime", "10:00"),
])
def test_date_and_time_formats(element: str, value: str) -> None:
    obs = observation()
    obs.pop("valueQuantity")
    obs.pop("effectiveDateTime")
    obs[element] = value
    assert errors(obs) == {("value", f"Observation.{element}")}


@pytest.mark.parametrize(("element", "value"), [
    ("effectiveDateTime", "2024"), ("effectiveDateTime", "2024-02"),
    ("effectiveDateTime", "2024-02-29"), ("effectiveDateTime", "2024-02-29T23:59:60+14:00"),
    ("issued", "2024-01-02T03:04:05.123456+03:30"), ("valueTime", "23:59:59.5"),
])
def test_valid_dates_and_times(element: str, value: str) -> None:
    obs = observation()
    obs.pop("valueQuantity")
    obs[element] = value
    assert errors(obs) == set()


def extension_with(**value: Any) -> dict[str, Any]:
    return with_(patient(), extension=[{"url": "http://example.org/x", **value}])


@pytest.mark.parametrize(("value", "ok"), [
    ({"valueOid": "urn:oid:1.2.840.113619"}, True), ({"valueOid": "1.2.840"}, False),
    ({"valueUuid": UUID}, True), ({"valueUuid": UUID.upper()}, False),
    ({"valueCode": "has space"}, True), ({"valueCode": " lead"}, False),
    ({"valueCode": "two  spaces"}, False), ({"valueCode": "tail "}, False),
    ({"valueId": "a.b-C9"}, True), ({"valueId": "a_b"}, False),
    ({"valueUri": "http://example.org/a?b=c"}, True), ({"valueUri": "http://a b"}, False),
    ({"valueBase64Binary": "aGVsbG8="}, True), ({"valueBase64Binary": "aGVsbG8"}, False),
    ({"valueBase64Binary": "aGVs bG8="}, True), ({"valueBase64Binary": "a$=="}, False),
    ({"valuePositiveInt": 1}, True), ({"valueUnsignedInt": 0}, True),
    ({"valueMarkdown": "# Title\n\n* item"}, True), ({"valueString": "tab\tand\nnewline"}, True),
])
def test_primitive_formats(value: dict[str, Any], ok: bool) -> None:
    name = next(iter(value))
    expected = set() if ok else {("value", f"Patient.extension[0].{name}")}
    assert errors(extension_with(**value)) == expected


def test_control_characters_are_a_warning() -> None:
    issues = validate_resource(extension_with(valueString="bell\x07"))
    assert pairs(issues) == set()
    assert pairs(issues, "warning") == {("value", "Patient.extension[0].valueString")}


def test_expression_with_indexes() -> None:
    bad = patient()
    bad["name"][0]["given"] = ["Ali", 5]
    assert errors(bad) == {("structure", "Patient.name[0].given[1]")}


def test_arrays_and_single_values() -> None:
    assert errors(with_(patient(), name={"family": "x"})) == {("structure", "Patient.name")}
    assert errors(with_(patient(), gender=["male"])) == {("structure", "Patient.gender")}
    assert errors(with_(patient(), name=[[{"family": "x"}]])) == {
        ("structure", "Patient.name[0]")}
    assert errors(with_(patient(), maritalStatus="M")) == {
        ("structure", "Patient.maritalStatus")}


def test_empty_and_null_values() -> None:
    assert errors(with_(patient(), maritalStatus={})) == {
        ("structure", "Patient.maritalStatus")}
    assert errors(with_(patient(), active=None)) == {("structure", "Patient.active")}
    assert errors(with_(patient(), telecom=[None])) == {("structure", "Patient.telecom[0]")}
    assert errors(with_(patient(), name=[{"given": [None]}])) == {
        ("structure", "Patient.name[0].given[0]")}
    # ele-1: an element needs more than an id
    assert errors(with_(patient(), maritalStatus={"id": "m"})) == {
        ("structure", "Patient.maritalStatus")}


def test_primitive_extension_siblings() -> None:
    ext = {"extension": [{"url": "http://example.org/x", "valueString": "v"}]}
    aligned = with_(patient(), name=[{"given": ["A", None, "C"], "_given": [None, ext, None]}])
    assert errors(aligned) == set()
    only_extension = with_(patient(), _gender=ext)
    del only_extension["gender"]
    assert errors(only_extension) == set()
    assert errors(with_(patient(), _gender="x")) == {("structure", "Patient.gender")}
    assert errors(with_(patient(), name=[{"given": ["A", "B"], "_given": [ext]}])) == {
        ("structure", "Patient.name[0].given")}
    assert errors(with_(patient(), name=[{"given": ["A", None], "_given": [ext, None]}])) == {
        ("structure", "Patient.name[0].given[1]")}
    assert errors(with_(patient(), _gender={"extension": [{"valueString": "v"}]})) == {
        ("required", "Patient.gender.extension[0].url")}
    assert errors(with_(patient(), _name=ext)) == {("structure", "Patient._name")}


def test_required_elements() -> None:
    obs = observation()
    del obs["code"], obs["status"]
    assert errors(obs) == {("required", "Observation.code"), ("required", "Observation.status")}
    assert errors({"resourceType": "Bundle"}) == {("required", "Bundle.type")}
    encounter = good("Encounter")
    del encounter["class"]
    assert errors(encounter) == {("required", "Encounter.class")}
    task = good("Task")
    task["input"][0].pop("valueUnsignedInt")
    assert errors(task) == {("required", "Task.input[0].value[x]")}
    # a required primitive may be present through its extensions only (extensibility.html)
    absent = {"extension": [{"url": "http://hl7.org/fhir/StructureDefinition/data-absent-reason",
                             "valueCode": "unknown"}]}
    obs = observation()
    obs["_status"] = absent
    del obs["status"]
    assert errors(obs) == set()


def test_choice_allows_one_type() -> None:
    obs = with_(observation(), valueString="heavy")
    assert errors(obs) == {("structure", "Observation.value[x]")}
    only_ext = with_(observation(), _valueString={"extension": [
        {"url": "http://example.org/x", "valueString": "v"}]})
    assert errors(only_ext) == {("structure", "Observation.value[x]")}
    assert errors(with_(patient(), deceasedBoolean=True, deceasedDateTime="2020")) == {
        ("structure", "Patient.deceased[x]")}
    assert errors(with_(observation(), valueFoo=1)) == {("structure", "Observation.valueFoo")}


# -------------------------------------------------------------------------- contained resources

def contained_practitioner(**extra: Any) -> dict[str, Any]:
    return {"resourceType": "Practitioner", "id": "gp", "name": [{"family": "Karimi"}], **extra}


def test_contained_resources() -> None:
    good = with_(patient(), contained=[contained_practitioner()],
                 generalPractitioner=[{"reference": "#gp"}])
    assert errors(good) == set()
    assert errors(with_(good, contained=[contained_practitioner(active="no")])) == {
        ("structure", "Patient.contained[0].active")}
    unreferenced = with_(patient(), contained=[contained_practitioner()])
    assert errors(unreferenced) == {("invariant", "Patient.contained[0]")}  # dom-3
    no_id = contained_practitioner()
    del no_id["id"]
    assert ("required", "Patient.contained[0].id") in errors(with_(patient(),
                                                                   contained=[no_id]))
    nested = with_(good, contained=[contained_practitioner(contained=[
        {"resourceType": "Organization", "id": "o"}])])
    assert errors(nested) == {("invariant", "Patient.contained[0].contained[0]")}  # dom-2
    versioned = with_(good, contained=[contained_practitioner(meta={"versionId": "1"})])
    assert errors(versioned) == {("invariant", "Patient.contained[0].meta")}  # dom-4
    labelled = with_(good, contained=[contained_practitioner(meta={"security": [
        {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}]})])
    assert errors(labelled) == {("invariant", "Patient.contained[0].meta.security")}  # dom-5
    assert errors(with_(good, contained=[{"resourceType": "Foo", "id": "gp"}])) >= {
        ("invalid", "Patient.contained[0]")}


def test_contained_resource_referring_to_its_container() -> None:
    obs = with_(observation(), contained=[{
        "resourceType": "Provenance", "id": "prov", "target": [{"reference": "#"}],
        "recorded": "2024-01-02T03:04:05Z", "agent": [{"who": {"reference": "Practitioner/1"}}]}])
    assert errors(obs) == set()


def test_local_references() -> None:
    missing = with_(patient(), generalPractitioner=[{"reference": "#nobody"}])
    assert errors(missing) == {("invariant", "Patient.generalPractitioner[0].reference")}  # ref-1
    wrong_type = with_(patient(), contained=[contained_practitioner()],
                       managingOrganization={"reference": "#gp"})
    assert errors(wrong_type) == {("invalid", "Patient.managingOrganization.reference")}


# -------------------------------------------------------------------------------- references

@pytest.mark.parametrize("reference", [
    "Patient/p1", "Patient/p1/_history/2", "https://fhir.example.org/r4/Patient/p1",
    "https://fhir.example.org/r4/Patient/p1/_history/3", UUID, "urn:oid:1.2.3.4",
    "Patient?identifier=http://example.org/mrn|123",  # conditional reference (transactions)
])
def test_reference_syntax_accepted(reference: str) -> None:
    assert errors(with_(observation(), subject={"reference": reference})) == set()


@pytest.mark.parametrize("reference", [
    "Patient/", "Patient", "patient/p1", "Patient/p1/_history/", "Patient/p 1",
    "Patient/" + "a" * 65, "Foo/1", "urn:uuid:not-a-uuid", "urn:oid:abc", "# x",
    "https://example.org/a b",
])
def test_reference_syntax_refused(reference: str) -> None:
    obs = with_(observation(), subject={"reference": reference})
    assert errors(obs) == {("value", "Observation.subject.reference")}


def test_reference_target_types() -> None:
    assert errors(with_(observation(), subject={"reference": "Practitioner/1"})) == {
        ("invalid", "Observation.subject.reference")}
    assert errors(with_(observation(), subject={
        "reference": "https://fhir.example.org/Practitioner/1"})) == {
        ("invalid", "Observation.subject.reference")}
    assert errors(with_(observation(), subject={
        "type": "Practitioner", "identifier": {"value": "1"}})) == {
        ("invalid", "Observation.subject.type")}
    assert errors(with_(observation(), subject={"reference": "Patient/1", "type": "Group"})) == {
        ("invalid", "Observation.subject.type")}
    # elements that allow any resource
    assert errors(with_(observation(), focus=[{"reference": "Practitioner/1"}])) == set()


# ------------------------------------------------------------------------------- extensions

def test_extension_rules() -> None:
    both = extension_with(valueString="a", extension=[{"url": "b", "valueString": "c"}])
    assert errors(both) == {("invariant", "Patient.extension[0]")}  # ext-1
    neither = extension_with()
    assert errors(neither) == {("invariant", "Patient.extension[0]")}
    no_url = with_(patient(), extension=[{"valueString": "a"}])
    assert errors(no_url) == {("required", "Patient.extension[0].url")}
    modifier = with_(observation(), modifierExtension=[{"url": "http://example.org/m"}])
    assert errors(modifier) == {("invariant", "Observation.modifierExtension[0]")}


# -------------------------------------------------------------------------------- narrative

def with_div(body: str) -> dict[str, Any]:
    return with_(patient(), text={"status": "generated", "div": body})


@pytest.mark.parametrize("body", [
    div("<p>plain</p>"),
    div('<table class="grid"><tr><th scope="col">a</th><td colspan="2">b</td></tr></table>'),
    div('<a href="https://example.org/info">info</a> <a name="x">anchor</a>'),
    div('<img src="#photo" alt="photo"/>'),
    div('<img src="data:image/png;base64,iVBORw0KGgo=" alt="x"/>'),
    div('<span style="color: red" xml:lang="fa" lang="fa">سلام</span>'),
    div("<ul><li>one</li><li>two</li></ul><!-- a comment -->"),
])
def test_narrative_accepted(body: str) -> None:
    assert xhtml_problems(body) == []
    assert errors(with_div(body)) == set()


@pytest.mark.parametrize(("body", "code"), [
    (div("<script>alert(1)</script>"), "invariant"),
    (div('<p onclick="alert(1)">x</p>'), "invariant"),
    (div('<a href="javascript:alert(1)">x</a>'), "invariant"),
    (div('<img src="https://tracker.example.com/pixel.gif"/>'), "invariant"),
    (div('<p style="background: url(https://example.com/x.png)">x</p>'), "invariant"),
    (div("<iframe src='https://example.com'></iframe>"), "invariant"),
    (div("<style>p { color: red }</style><p>x</p>"), "invariant"),
    (div("<form><p>x</p></form>"), "invariant"),
    (div('<p xmlns:xlink="http://www.w3.org/1999/xlink" xlink:href="https://x">x</p>'),
     "invariant"),
    (div("   "), "invariant"),  # txt-2: some non-whitespace content
    (div("<p>unclosed</div>"), "value"),
    ("<div><p>no namespace</p></div>", "value"),
    (f'<p xmlns="{XHTML}">not a div</p>', "value"),
    (div("&nbsp;"), "value"),  # not an XML entity
    (f'<!DOCTYPE div [<!ENTITY e "boom">]>{div("&e;")}', "value"),
    ("plain text", "value"),
])
def test_narrative_refused(body: str, code: str) -> None:
    assert errors(with_div(body)) == {(code, "Patient.text.div")}


def test_narrative_div_must_be_a_string() -> None:
    assert errors(with_(patient(), text={"status": "generated", "div": 5})) == {
        ("structure", "Patient.text.div")}


# ---------------------------------------------------------------------------- required bindings

def test_required_binding_on_code() -> None:
    assert errors(with_(observation(), status="done")) == {("code-invalid", "Observation.status")}
    # Questionnaire.item.type "question" is abstract in R4 (notSelectable)
    questionnaire = {"resourceType": "Questionnaire", "status": "active",
                     "item": [{"linkId": "1", "type": "question"}]}
    assert errors(questionnaire) == {("code-invalid", "Questionnaire.item[0].type")}
    questionnaire["item"][0]["type"] = "boolean"
    assert errors(questionnaire) == set()


def condition(*codings: dict[str, str]) -> dict[str, Any]:
    return {"resourceType": "Condition", "subject": {"reference": "Patient/p1"},
            "clinicalStatus": {"coding": list(codings), "text": "status"}}


def test_required_binding_on_codeable_concept() -> None:
    system = "http://terminology.hl7.org/CodeSystem/condition-clinical"
    assert errors(condition({"system": system, "code": "active"})) == set()
    assert errors(condition({"system": "http://example.org/local", "code": "a"},
                            {"system": system, "code": "remission"})) == set()
    assert errors(condition({"system": system, "code": "cured"})) == {
        ("code-invalid", "Condition.clinicalStatus")}
    assert errors(condition({"system": "http://snomed.info/sct", "code": "active"})) == {
        ("code-invalid", "Condition.clinicalStatus")}
    text_only = condition()
    del text_only["clinicalStatus"]["coding"]
    assert errors(text_only) == {("code-invalid", "Condition.clinicalStatus")}


def test_grammar_checked_where_the_value_set_cannot_be_listed() -> None:
    binary = {"resourceType": "Binary", "contentType": "application/pdf"}
    assert errors(binary) == set()
    assert errors(with_(binary, contentType="text/plain; charset=UTF-8")) == set()
    assert errors(with_(binary, contentType="pdf")) == {("code-invalid", "Binary.contentType")}
    charge = {"resourceType": "ChargeItem", "status": "billable",
              "code": {"text": "teleconsultation"}, "subject": {"reference": "Patient/p1"},
              "priceOverride": {"value": 1500000, "currency": "IRR"}}
    assert errors(charge) == set()
    charge["priceOverride"]["currency"] = "rial"
    assert errors(charge) == {("code-invalid", "ChargeItem.priceOverride.currency")}


def test_partially_enumerable_value_set_still_checks_the_system() -> None:
    # ucum-units includes all of UCUM: any UCUM code passes, a LOINC coding cannot be in it
    def synthesis(system: str) -> dict[str, Any]:
        return {"resourceType": "RiskEvidenceSynthesis", "status": "draft",
                "population": {"reference": "EvidenceVariable/pop"},
                "outcome": {"reference": "EvidenceVariable/ev"},
                "riskEstimate": {"unitOfMeasure": {"coding": [{"system": system,
                                                               "code": "mg/dL"}]}}}
    assert errors(synthesis("http://unitsofmeasure.org")) == set()
    assert errors(synthesis("http://loinc.org")) == {
        ("code-invalid", "RiskEvidenceSynthesis.riskEstimate.unitOfMeasure")}


def test_value_set_table_lists_what_cannot_be_checked() -> None:
    table = json.loads(Path(REQUIRED_VALUESETS).read_text())
    assert table["_generated"].startswith("Generated by `python -m server.generate valuesets`")
    sets = table["valueSets"]
    assert sets["http://hl7.org/fhir/ValueSet/administrative-gender"] == {
        "codes": {"http://hl7.org/fhir/administrative-gender": [
            "female", "male", "other", "unknown"]}}
    mime = sets["http://hl7.org/fhir/ValueSet/mimetypes"]
    assert mime["unchecked"][0]["system"] == "urn:ietf:bcp:13"
    assert mime["unchecked"][0]["syntax"] == "mime-type"
    assert mime["unchecked"][0]["reason"]
    ucum = sets["http://hl7.org/fhir/ValueSet/ucum-units"]
    assert ucum["unchecked"][0]["system"] == "http://unitsofmeasure.org"
    bound = set()
    for t in structures().types.values():
        stack = [t.elements]
        seen: set[int] = set()
        while stack:
            els = stack.pop()
            if id(els) in seen:
                continue
            seen.add(id(els))
            for el in els.values():
                if el.binding:
                    bound.add(el.binding)
                if el.children:
                    stack.append(el.children)
    assert bound == set(sets)


# ------------------------------------------------------------------------ value set expansion

CS_URL = "http://example.org/cs"


def codesystem() -> dict[str, Any]:
    return {"resourceType": "CodeSystem", "url": CS_URL, "content": "complete", "concept": [
        {"code": "animal", "property": [{"code": "notSelectable", "valueBoolean": True}],
         "concept": [{"code": "dog", "concept": [{"code": "puppy"}]}, {"code": "cat"}]},
        {"code": "plant", "concept": [{"code": "tree"}]}]}


def expand(compose: dict[str, Any], *more: dict[str, Any]) -> Any:
    valuesets = {"http://example.org/vs": {"url": "http://example.org/vs", "compose": compose}}
    for vs in more:
        valuesets[vs["url"]] = vs
    return Expander(valuesets, {CS_URL: codesystem()}).expand("http://example.org/vs")


def test_expansion_of_a_whole_code_system_leaves_out_abstract_concepts() -> None:
    exp = expand({"include": [{"system": CS_URL}]})
    assert exp.codes == {CS_URL: {"dog", "puppy", "cat", "plant", "tree"}}
    assert exp.unchecked == []


def test_expansion_filters_and_excludes() -> None:
    assert expand({"include": [{"system": CS_URL, "filter": [
        {"property": "concept", "op": "is-a", "value": "dog"}]}]}).codes == {
        CS_URL: {"dog", "puppy"}}
    assert expand({"include": [{"system": CS_URL, "filter": [
        {"property": "concept", "op": "descendent-of", "value": "animal"}]}]}).codes == {
        CS_URL: {"dog", "puppy", "cat"}}
    assert expand({"include": [{"system": CS_URL}],
                   "exclude": [{"system": CS_URL, "concept": [{"code": "tree"}]}]}).codes == {
        CS_URL: {"dog", "puppy", "cat", "plant"}}
    unknown_filter = expand({"include": [{"system": CS_URL, "filter": [
        {"property": "concept", "op": "is-a", "value": "dog"},
        {"property": "concept", "op": "not-in", "value": "x"}]}]})
    assert unknown_filter.codes == {}
    assert unknown_filter.unchecked[0]["system"] == CS_URL


def test_expansion_of_imported_value_sets() -> None:
    animals = {"url": "http://example.org/animals", "compose": {"include": [
        {"system": CS_URL, "concept": [{"code": "dog"}, {"code": "cat"}]}]}}
    pets = {"url": "http://example.org/pets", "compose": {"include": [
        {"system": CS_URL, "concept": [{"code": "cat"}, {"code": "puppy"}]}]}}
    assert expand({"include": [{"valueSet": ["http://example.org/animals"]}]},
                  animals).codes == {CS_URL: {"dog", "cat"}}
    # several value sets in one include: their intersection
    assert expand({"include": [{"valueSet": ["http://example.org/animals",
                                             "http://example.org/pets"]}]},
                  animals, pets).codes == {CS_URL: {"cat"}}


def test_expansion_of_external_terminologies() -> None:
    mime = expand({"include": [{"system": "urn:ietf:bcp:13"}]})
    assert mime.codes == {}
    assert mime.unchecked[0]["syntax"] == "mime-type"
    missing = expand({"include": [{"system": "http://example.org/not-here"}]})
    assert missing.unchecked[0]["system"] == "http://example.org/not-here"
    listed = expand({"include": [{"system": "http://unitsofmeasure.org",
                                  "concept": [{"code": "min"}, {"code": "h"}]}]})
    assert listed.codes == {"http://unitsofmeasure.org": {"min", "h"}}
    assert listed.unchecked == []


def test_committed_table_is_what_the_generator_writes() -> None:
    from server.generate import DEFAULT_DEFINITIONS
    from server.generate.valuesets import generate

    if not (DEFAULT_DEFINITIONS / "valuesets.json.gz").exists():
        pytest.skip("FHIR R4 definitions not available")
    committed = json.loads(Path(REQUIRED_VALUESETS).read_text())
    assert generate(DEFAULT_DEFINITIONS) == committed


# ------------------------------------------------------------------------------- R4 vs R4B

NO_R4B_MODEL = {
    "EffectEvidenceSynthesis", "MedicinalProduct", "MedicinalProductAuthorization",
    "MedicinalProductContraindication", "MedicinalProductIndication",
    "MedicinalProductIngredient", "MedicinalProductInteraction",
    "MedicinalProductManufactured", "MedicinalProductPackaged",
    "MedicinalProductPharmaceutical", "MedicinalProductUndesirableEffect",
    "RiskEvidenceSynthesis", "SubstanceNucleicAcid", "SubstancePolymer", "SubstanceProtein",
    "SubstanceReferenceInformation", "SubstanceSourceMaterial", "SubstanceSpecification"}


def test_r4_types_without_an_r4b_model() -> None:
    from fhir.resources.R4B import get_fhir_model_class

    missing = set()
    for name in structures().resource_types:
        try:
            get_fhir_model_class(name)
        except (KeyError, ValueError):
            missing.add(name)
    assert missing == NO_R4B_MODEL
    bad = {"resourceType": "SubstancePolymer", "modification": [5], "unknown": 1}
    assert errors(bad) == {("structure", "SubstancePolymer.modification[0]"),
                           ("structure", "SubstancePolymer.unknown")}


def test_r4_r4b_comparison() -> None:
    diffs = r4b_differences()
    assert diffs["Binary.url"] == "R4 only"
    assert diffs["Extension.valueMeta"] == "R4 only"  # Meta left the open types in R4B
    assert diffs["Meta.project"] == "R4 only"
    assert diffs["ResearchStudy.label"] == "R4 only"
    assert diffs["ActivityDefinition.subjectCanonical"] == "R4B only"
    assert diffs["PlanDefinition.action.subjectCanonical"] == "R4B only"
    assert diffs["Extension.valueCodeableReference"] == "R4B only"
    for type_name in ("Patient", "Practitioner", "PractitionerRole", "Organization",
                      "ServiceRequest", "Task", "Appointment", "Encounter", "Consent",
                      "DiagnosticReport", "Composition", "Observation", "Provenance",
                      "QuestionnaireResponse", "Bundle", "HumanName", "Reference", "Coding"):
        assert not [k for k in diffs if k.startswith(type_name + ".")], type_name
    assert not [k for k in diffs if k.split(".")[0] in NO_R4B_MODEL]


def test_r4_only_elements_pass_despite_the_model() -> None:
    assert errors({"resourceType": "Binary", "contentType": "text/plain",
                   "url": "https://files.example.org/1"}) == set()
    assert errors(extension_with(valueMeta={"versionId": "1"})) == set()
    assert errors(with_(patient(), meta={"project": "p-1"})) == set()


def test_r4b_only_elements_are_refused() -> None:
    activity = {"resourceType": "ActivityDefinition", "status": "draft",
                "subjectCanonical": "http://example.org/fhir/StructureDefinition/x"}
    assert errors(activity) == {("structure", "ActivityDefinition.subjectCanonical")}
    codeable_reference = extension_with(valueCodeableReference={"concept": {"text": "x"}})
    assert errors(codeable_reference) == {
        ("structure", "Patient.extension[0].valueCodeableReference"),
        ("invariant", "Patient.extension[0]")}  # so it has no value (ext-1)
    assert errors(with_(observation(), code={"text": "x", "fhir_comments": ["c"]})) == {
        ("structure", "Observation.code.fhir_comments")}


def test_model_errors_become_issues_with_r4_expressions() -> None:
    obs = observation()
    del obs["code"]
    assert pairs(r4b_model_issues(obs)) == {("required", "Observation.code")}
    bad = patient()
    bad["name"][0]["given"] = ["Ali", 5]
    assert pairs(r4b_model_issues(bad)) == {("structure", "Patient.name[0].given[1]")}
    assert pairs(r4b_model_issues(with_(patient(), deceasedBoolean=True,
                                        deceasedDateTime="2020"))) == {
        ("value", "Patient.deceased[x]")}
    nested = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"resource": with_(patient(), contact=[{"name": {"family": 5}}])}]}
    assert pairs(r4b_model_issues(nested)) == {
        ("structure", "Bundle.entry[0].resource.contact[0].name.family")}
    # differences between R4 and R4B never surface as model errors
    assert r4b_model_issues(with_(patient(), meta={"project": "p-1"})) == []


def test_model_errors_are_not_reported_twice() -> None:
    obs = observation()
    del obs["code"]
    issues = validate_resource(obs)
    assert [(i.code, i.expression) for i in issues] == [("required", ["Observation.code"])]
    assert validate_resource(obs, models=False) == issues


# ------------------------------------------------------------------------------------ Bundles

def test_bundle_entries_are_validated() -> None:
    bundle = good("Bundle")
    bundle["entry"][0]["resource"]["active"] = "yes"
    bundle["entry"][1]["resource"]["subject"] = {"reference": "Practitioner/1"}
    assert errors(bundle) == {("structure", "Bundle.entry[0].resource.active"),
                              ("invalid", "Bundle.entry[1].resource.subject.reference")}
    bundle["entry"][0]["resource"] = {"resourceType": "NotAType"}
    assert ("invalid", "Bundle.entry[0].resource") in errors(bundle)


def test_local_references_resolve_within_their_own_entry() -> None:
    entry_patient = with_(patient(), contained=[contained_practitioner()],
                          generalPractitioner=[{"reference": "#gp"}])
    other = with_(observation(), performer=[{"reference": "#gp"}])
    bundle = {"resourceType": "Bundle", "type": "collection",
              "entry": [{"resource": entry_patient}, {"resource": other}]}
    assert errors(bundle) == {("invariant", "Bundle.entry[1].resource.performer[0].reference")}


# --------------------------------------------------------------------------------- robustness

def mutations(value: Any, rng: random.Random) -> Any:
    """A copy of ``value`` with one node replaced by something odd."""
    odd = [None, "", [], {}, 0, -1, 2**40, True, "x" * 70, [None], {"x": 1}, 1.5,
           Decimal("1.50"), "2024-13-45", "<div>", {"resourceType": "Patient"}]
    value = copy.deepcopy(value)
    node = value
    while True:
        keys = list(node.keys()) if isinstance(node, dict) else list(range(len(node)))
        if not keys:
            return value
        key = rng.choice(keys)
        child = node[key]
        if isinstance(child, dict | list) and child and rng.random() < 0.7:
            node = child
            continue
        node[key] = rng.choice(odd)
        return value


def test_never_raises() -> None:
    rng = random.Random(4)
    for resource in good_resources():
        for _ in range(60):
            issues = validate_resource(mutations(resource, rng))
            assert all(isinstance(i, Issue) and i.code and i.expression for i in issues)
    for weird in (None, "Patient", 3, [], {"resourceType": None}, {"resourceType": ["x"]},
                  {"resourceType": "Patient", 1: 2}, {"resourceType": "Patient", "": 1}):
        assert validate_resource(weird)


def test_deep_nesting_is_an_issue_not_a_crash() -> None:
    ext: dict[str, Any] = {"url": "http://example.org/leaf", "valueString": "x"}
    for _ in range(5000):
        ext = {"url": "http://example.org/x", "extension": [ext]}
    issues = validate_resource({"resourceType": "Patient", "extension": [ext]})
    assert issues and issues[-1].code == "structure"


# --------------------------------------------------------------------- the specification itself

def test_extension_value_with_its_own_extensions() -> None:
    translated = extension_with(valueString="Retained for backwards compatibility", _valueString={
        "extension": [{"url": "http://hl7.org/fhir/StructureDefinition/translation",
                       "extension": [{"url": "lang", "valueCode": "nl"},
                                     {"url": "content", "valueString": "Alleen voor ..."}]}]})
    assert validate_resource(translated) == []


@pytest.mark.parametrize("name", ["profiles-types.json.gz", "valuesets.json.gz",
                                  "search-parameters.json.gz", "conceptmaps.json.gz"])
def test_the_official_r4_definitions_pass(name: str) -> None:
    import gzip

    from server.generate import DEFAULT_DEFINITIONS

    path = DEFAULT_DEFINITIONS / name
    if not path.exists():
        pytest.skip("FHIR R4 definitions not available")
    with gzip.open(path) as fh:
        bundle = loads(fh.read())
    assert errors(bundle) == set()  # the Bundle, with every entry


def test_the_model_check_setting_gives_writes_the_second_opinion(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Writes get the R4B models' second opinion only when the server's ``model_check`` is on
    (``serve --model-check``); the R4 validator runs either way."""
    import asyncio

    from server import app as app_module
    from server.config import Settings
    from server.fhir import validation
    from server.fhir.prepare import check_models, prepare

    asked: list[str] = []
    real = validation.r4b_model_issues
    monkeypatch.setattr(validation, "r4b_model_issues",
                        lambda r, found=None: asked.append(r["resourceType"]) or real(r, found))
    try:
        for on in (False, True):
            app = app_module.create_app(Settings(data_dir=tmp_path / str(on), workers=1,
                                                 access_log=False, model_check=on))
            asyncio.run(app.store.close())
            asked.clear()
            assert prepare(patient(), "Patient", index=True)["token"]
            assert asked == (["Patient"] if on else [])
            with pytest.raises(FhirError):
                prepare(with_(patient(), gender="robot"), "Patient")
    finally:
        check_models(False)

"""The telemedicine profiles, extensions, built-in Questionnaire and SearchParameters under
profiles/: their generated snapshots (profiling.html#snapshot), validation of resources against
them (cardinality, fixed and pattern values, bindings, reference targets, extensions,
invariants), the writes that claim them, and how the server exposes them (reads, /metadata,
search)."""

from __future__ import annotations

import copy
import functools
import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from server.fhir.errors import FhirError, Issue
from server.fhir.prepare import prepare
from server.fhir.validation import validate_resource
from server.generate import DEFAULT_DEFINITIONS
from server.generate import profiles as generator
from server.terminology.library import library
from server.workflow import model
from server.workflow import profiles as P
from tests.conftest import Fhir

REPO = Path(__file__).resolve().parents[1]
PROFILES = REPO / "profiles"
CT = model.CONSULTATION_TYPE
HAVE_DEFINITIONS = (DEFAULT_DEFINITIONS / "profiles-resources.json.gz").exists()
needs_definitions = pytest.mark.skipif(not HAVE_DEFINITIONS,
                                       reason="FHIR R4 definitions not beside the repository")


def coding(system: str, code: str) -> dict[str, str]:
    return {"system": system, "code": code}


def concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [coding(system, code)]}


def ext(url: str, **value: Any) -> dict[str, Any]:
    return {"url": url, **value}


def claims(resource: dict[str, Any], url: str) -> dict[str, Any]:
    return {**resource, "meta": {"profile": [url]}}


# -- conforming examples, one per profile (contract: domain-model) --------------------------------

def organization() -> dict[str, Any]:
    return {
        "resourceType": "Organization",
        "extension": [
            ext(model.EXT_CARE_LEVEL, valueCoding=coding(model.CARE_LEVEL, "2")),
            ext(model.EXT_LICENSED_SPECIALTY,
                valueCodeableConcept=concept(model.SPECIALTY, "cardiology")),
            ext(model.EXT_SERVICE_LEVEL, valueCoding=coding(model.SERVICE_LEVEL, "standard")),
            ext(model.EXT_REGION, valueCode="CN-NM"),
            ext(model.EXT_TIMEZONE, valueCode="Asia/Shanghai"),
        ],
        "type": [concept(model.ORGANIZATION_TYPE, "network-hospital")],
        "name": "Hohhot Network Hospital",
    }


def consultation_request() -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "extension": [
            ext(model.EXT_APPROVED_BY, valueReference={"reference": "PractitionerRole/head"}),
            ext(model.EXT_REQUESTED_TITLE,
                valueCoding=coding(model.PROFESSIONAL_TITLE, "associate-senior")),
            ext(model.EXT_REQUEST_CHANNEL, valueCoding=coding(model.REQUEST_CHANNEL, "platform")),
        ],
        "status": "active",
        "intent": "order",
        "category": [concept(CT, "teleconsultation")],
        "priority": "routine",
        "code": {"text": "Second opinion on an unexplained deterioration"},
        "subject": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2026-03-02T09:00:00+08:00",
        "requester": {"reference": "PractitionerRole/attending"},
        "performerType": concept(model.SPECIALTY, "cardiology"),
        "performer": [{"reference": "Organization/invited"},
                      {"reference": "PractitionerRole/expert"}],
        "reasonCode": [concept(model.CONSULTATION_REASON, "sudden-deterioration")],
        "supportingInfo": [{"reference": "DocumentReference/history"},
                           {"reference": "ImagingStudy/ct"}],
    }


def deadline(kind: str, due: str, met: str | None = None) -> dict[str, Any]:
    parts = [ext("kind", valueCoding=coding(model.DEADLINE_KIND, kind)),
             ext("due", valueDateTime=due)]
    if met:
        parts.append(ext("met", valueDateTime=met))
    return {"url": model.EXT_DEADLINE, "extension": parts}


def consultation_task() -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "extension": [deadline("acceptance", "2026-03-01T09:00:00Z", "2026-03-01T08:00:00Z"),
                      deadline("expert-assignment", "2026-03-02T08:00:00Z")],
        "status": "received",
        "businessStatus": concept(model.BUSINESS_STATUS, "awaiting-information"),
        "intent": "order",
        "code": concept(CT, "teleconsultation"),
        "focus": {"reference": "ServiceRequest/sr1"},
        "for": {"reference": "Patient/p1"},
        "authoredOn": "2026-03-01T07:00:00Z",
        "lastModified": "2026-03-01T08:00:00Z",
        "requester": {"reference": "PractitionerRole/attending"},
        "owner": {"reference": "Organization/invited"},
        "restriction": {"period": {"end": "2026-03-02T08:00:00Z"}},
    }


def referral_request() -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "extension": [ext(model.EXT_REFERRAL_DIRECTION, valueCode="down")],
        "status": "active",
        "intent": "order",
        "category": [concept(CT, "referral")],
        "subject": {"reference": "Patient/p1"},
        "requester": {"reference": "PractitionerRole/sender"},
        "performer": [{"reference": "Organization/township"}],
        "reasonCode": [concept(model.REFERRAL_INDICATION, "rehabilitation")],
        "supportingInfo": [{"reference": "Consent/referral-consent"},
                           {"reference": "DiagnosticReport/results"},
                           {"reference": "CarePlan/plan"},
                           {"reference": "DocumentReference/rehabilitation-guidance"}],
    }


def referral_task() -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "accepted",
        "businessStatus": concept(model.BUSINESS_STATUS, "confirmed-by-receiver"),
        "intent": "order",
        "code": concept(CT, "referral"),
        "focus": {"reference": "ServiceRequest/ref1"},
        "for": {"reference": "Patient/p1"},
        "authoredOn": "2026-03-01T07:00:00Z",
        "requester": {"reference": "PractitionerRole/sender"},
        "owner": {"reference": "Organization/township"},
    }


def consent() -> dict[str, Any]:
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "treatment"),
        "category": [concept(model.CONSENT_CATEGORY, "telemedicine-consultation")],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2026-03-01T07:00:00Z",
        "performer": [{"reference": "RelatedPerson/guardian"}],
        "policyRule": concept("http://terminology.hl7.org/CodeSystem/v3-ActCode", "OPTIN"),
        "provision": {"period": {"start": "2026-03-01", "end": "2026-06-01"}},
    }


def expert_role() -> dict[str, Any]:
    return {
        "resourceType": "PractitionerRole",
        "extension": [
            ext(model.EXT_POOL_STATUS, valueCoding=coding(model.EXPERT_POOL_STATUS, "active")),
            ext(model.EXT_NOMINATED_BY, valueReference={"reference": "Organization/employer"}),
            ext(model.EXT_APPROVED_BY_REGION, valueReference={"reference": "Organization/region"}),
            ext(model.EXT_SPECIALTY_SINCE, valueDate="2012-09-01"),
            ext(model.EXT_EMPLOYER_CONSENT, valueDate="2025-01-10"),
        ],
        "active": True,
        "practitioner": {"reference": "Practitioner/dr-li"},
        "organization": {"reference": "Organization/employer"},
        "code": [concept(model.PRACTITIONER_ROLE, "expert")],
        "specialty": [concept(model.SPECIALTY, "cardiology")],
    }


def report() -> dict[str, Any]:
    return {
        "resourceType": "DiagnosticReport",
        "extension": [ext(model.EXT_REPLACES, valueReference={"reference": "DiagnosticReport/r0"})],
        "basedOn": [{"reference": "ServiceRequest/sr1"}],
        "status": "final",
        "category": [concept(CT, "teleconsultation")],
        "code": {"text": "Teleconsultation report"},
        "subject": {"reference": "Patient/p1"},
        "issued": "2026-03-02T10:05:00Z",
        "performer": [{"reference": "PractitionerRole/expert"}],
        "conclusion": "Acute myocarditis likely; start treatment as discussed.",
    }


def rating() -> dict[str, Any]:
    def score(link: str, value: int) -> dict[str, Any]:
        return {"linkId": link, "answer": [{"valueInteger": value}]}

    return {
        "resourceType": "QuestionnaireResponse",
        "basedOn": [{"reference": "ServiceRequest/sr1"}],
        "questionnaire": model.SATISFACTION_QUESTIONNAIRE,
        "status": "completed",
        "subject": {"reference": "Task/t1"},
        "authored": "2026-03-03T08:00:00Z",
        "author": {"reference": "PractitionerRole/attending"},
        "item": [score("overall", 5), score("timeliness", 4), score("quality", 5),
                 {"linkId": "comment", "answer": [{"valueString": "Clear and quick."}]}],
    }


EXAMPLES = {
    model.TELEMEDICINE_ORGANIZATION: organization,
    model.CONSULTATION_REQUEST: consultation_request,
    model.CONSULTATION_TASK: consultation_task,
    model.REFERRAL_REQUEST: referral_request,
    model.REFERRAL_TASK: referral_task,
    model.TELEMEDICINE_CONSENT: consent,
    model.EXPERT_ROLE: expert_role,
    model.CONSULTATION_REPORT: report,
    model.SATISFACTION_RATING: rating,
}
PROFILE_TYPES = {
    model.CONSULTATION_REQUEST: "ServiceRequest", model.CONSULTATION_TASK: "Task",
    model.REFERRAL_REQUEST: "ServiceRequest", model.REFERRAL_TASK: "Task",
    model.TELEMEDICINE_CONSENT: "Consent", model.EXPERT_ROLE: "PractitionerRole",
    model.TELEMEDICINE_ORGANIZATION: "Organization",
    model.CONSULTATION_REPORT: "DiagnosticReport",
    model.SATISFACTION_RATING: "QuestionnaireResponse",
}


def errors(issues: list[Issue]) -> list[Issue]:
    return [i for i in issues if i.severity in ("error", "fatal")]


def refused(resource: dict[str, Any], url: str) -> list[Issue]:
    """The resource is valid R4 and breaks the profile: what require_profile reports."""
    assert validate_resource(resource, resource["resourceType"]) == []
    with pytest.raises(FhirError) as caught:
        P.require_profile(resource, url)
    assert caught.value.status == 422
    return caught.value.issues


def one(issues: list[Issue], code: str, expression: str) -> Issue:
    found = [i for i in issues if i.code == code and expression in i.expression]
    assert found, [(i.code, i.expression, i.diagnostics) for i in issues]
    return found[0]


# -- the definitions ------------------------------------------------------------------------------

def _sd(id_: str) -> dict[str, Any]:
    return json.loads((PROFILES / f"StructureDefinition-{id_}.json").read_text(encoding="utf-8"))


def _element(sd: dict[str, Any], element_id: str) -> dict[str, Any]:
    found = [e for e in sd["snapshot"]["element"] if e["id"] == element_id]
    assert len(found) == 1, element_id
    return found[0]


def test_every_profile_of_the_model_is_defined_for_its_resource_type() -> None:
    for url, type_ in PROFILE_TYPES.items():
        sd = P.definitions()[url]
        assert sd["type"] == type_
        assert sd["kind"] == "resource" and sd["derivation"] == "constraint"
        assert sd["baseDefinition"] == f"http://hl7.org/fhir/StructureDefinition/{type_}"
        assert sd["fhirVersion"] == "4.0.1"


#: Every extension of the model: where it may appear and the type of its value (None: complex).
EXTENSIONS = {
    model.EXT_CARE_LEVEL: ("Organization", "Coding", "care-level"),
    model.EXT_SERVICE_LEVEL: ("Organization", "Coding", "service-level"),
    model.EXT_LICENSED_SPECIALTY: ("Organization", "CodeableConcept", "specialty"),
    model.EXT_REGION: ("Organization", "code", None),
    model.EXT_TIMEZONE: ("Organization", "code", None),
    model.EXT_REFERRAL_DIRECTION: ("ServiceRequest", "code", "referral-direction"),
    model.EXT_REQUEST_CHANNEL: ("ServiceRequest", "Coding", "request-channel"),
    model.EXT_APPROVED_BY: ("ServiceRequest", "Reference", None),
    model.EXT_REQUESTED_TITLE: ("ServiceRequest", "Coding", "professional-title"),
    model.EXT_DEADLINE: ("Task", None, None),
    model.EXT_SPECIALTY_SINCE: ("PractitionerRole", "date", None),
    model.EXT_EMPLOYER_CONSENT: ("PractitionerRole", "date", None),
    model.EXT_POOL_STATUS: ("PractitionerRole", "Coding", "expert-pool-status"),
    model.EXT_NOMINATED_BY: ("PractitionerRole", "Reference", None),
    model.EXT_APPROVED_BY_REGION: ("PractitionerRole", "Reference", None),
    model.EXT_MALPRACTICE: ("Practitioner", None, None),
    model.EXT_PREPAID_BALANCE: ("Account", "Money", None),
    model.EXT_REPLACES: ("DiagnosticReport", "Reference", None),
}


def test_every_extension_of_the_model_has_its_definition() -> None:
    declared = {n: getattr(model, n) for n in dir(model) if n.startswith("EXT_")}
    missing = {n for n, url in declared.items() if url not in P.definitions()}
    assert not missing, f"no StructureDefinition under profiles/ for {sorted(missing)}"
    for url, (context, value_type, value_set) in EXTENSIONS.items():
        sd = P.definitions()[url]
        assert sd["type"] == "Extension" and sd["derivation"] == "constraint"
        assert sd["context"] == [{"type": "element", "expression": context}]
        assert _element(sd, "Extension.url")["fixedUri"] == url
        value = _element(sd, "Extension.value[x]")
        if value_type is None:
            assert value["max"] == "0"
        else:
            assert (value["min"], value["max"]) == (1, "1")
            assert [t["code"] for t in value["type"]] == [value_type]
            assert _element(sd, "Extension.extension")["max"] == "0"
        if value_set:
            assert value["binding"] == {"strength": "required",
                                        "valueSet": model.vs(value_set)}


def test_complex_extensions_have_their_parts() -> None:
    deadline_sd = P.definitions()[model.EXT_DEADLINE]
    for part, (lo, type_) in {"kind": (1, "Coding"), "due": (1, "dateTime"),
                              "met": (0, "dateTime")}.items():
        slice_ = _element(deadline_sd, f"Extension.extension:{part}")
        assert (slice_["sliceName"], slice_["min"], slice_["max"]) == (part, lo, "1")
        assert _element(deadline_sd, f"Extension.extension:{part}.url")["fixedUri"] == part
        value = _element(deadline_sd, f"Extension.extension:{part}.value[x]")
        assert [t["code"] for t in value["type"]] == [type_] and value["min"] == 1
    assert _element(deadline_sd, "Extension.extension:kind.value[x]")["binding"][
        "valueSet"] == model.vs("deadline-kind")
    malpractice = P.definitions()[model.EXT_MALPRACTICE]
    assert [t["code"] for t in _element(malpractice, "Extension.extension:grade.value[x]")[
        "type"]] == ["integer"]
    assert [t["code"] for t in _element(malpractice, "Extension.extension:date.value[x]")[
        "type"]] == ["date"]


def _card(sd: dict[str, Any], element_id: str) -> tuple[int, str]:
    el = _element(sd, element_id)
    return el["min"], el["max"]


def test_consultation_request_snapshot_requires_the_request_form_contents() -> None:
    sd = _sd("consultation-request")
    required_one = ["category", "priority", "code", "subject", "occurrence[x]", "requester",
                    "performerType"]
    for name in required_one:
        assert _card(sd, f"ServiceRequest.{name}") == (1, "1"), name
    for name in ("performer", "reasonCode"):
        assert _card(sd, f"ServiceRequest.{name}") == (1, "*"), name
    # the records: required by invariant ctr-4, except for an urgent phone or e-mail request
    assert _card(sd, "ServiceRequest.supportingInfo") == (0, "*")
    assert "ctr-4" in {c["key"] for c in _element(sd, "ServiceRequest")["constraint"]}
    for name in ("approvedBy", "requestedTitle"):
        assert _card(sd, f"ServiceRequest.extension:{name}") == (1, "1")
    assert _element(sd, "ServiceRequest.extension:approvedBy")["type"] == [
        {"code": "Extension", "profile": [model.EXT_APPROVED_BY]}]
    assert _element(sd, "ServiceRequest.extension")["slicing"]["discriminator"] == [
        {"type": "value", "path": "url"}]
    assert _element(sd, "ServiceRequest.intent")["fixedCode"] == "order"
    bindings = {name: _element(sd, f"ServiceRequest.{name}")["binding"] for name in
                ("category", "performerType", "reasonCode")}
    assert bindings == {
        "category": {"strength": "required", "valueSet": model.vs("consultation-category")},
        "performerType": {"strength": "required", "valueSet": model.vs("specialty")},
        "reasonCode": {"strength": "required", "valueSet": model.vs("consultation-reason")}}
    assert [t["code"] for t in _element(sd, "ServiceRequest.occurrence[x]")["type"]] == [
        "dateTime", "Period"]
    assert _element(sd, "ServiceRequest.performer")["type"][0]["targetProfile"] == [
        model.TELEMEDICINE_ORGANIZATION, model.EXPERT_ROLE]
    # What the profile leaves alone stays as R4 says (serviceRequest.html).
    assert _card(sd, "ServiceRequest.note") == (0, "*")
    assert _card(sd, "ServiceRequest.status") == (1, "1")
    assert _element(sd, "ServiceRequest.status")["binding"]["strength"] == "required"


def test_task_snapshots_carry_states_deadlines_and_the_due_time() -> None:
    sd = _sd("consultation-task")
    for name in ("code", "focus", "for", "authoredOn", "requester", "owner"):
        assert _card(sd, f"Task.{name}") == (1, "1"), name
    assert _element(sd, "Task.businessStatus")["binding"] == {
        "strength": "required", "valueSet": model.vs("consultation-business-status")}
    assert _card(sd, "Task.extension:deadline") == (0, "*")
    # restriction.period is a Period: its elements are unrolled from the datatype.
    end = _element(sd, "Task.restriction.period.end")
    assert end["path"] == "Task.restriction.period.end"
    assert end["base"] == {"path": "Period.end", "min": 0, "max": "1"}
    assert end["mustSupport"] is True
    keys = {c["key"]: c for c in _element(sd, "Task")["constraint"]}
    assert "inv-1" in keys  # R4's own invariant is kept
    assert keys["ctk-1"]["source"] == model.CONSULTATION_TASK
    referral = _sd("referral-task")
    assert _element(referral, "Task.code")["patternCodeableConcept"] == concept(CT, "referral")
    assert _element(referral, "Task.businessStatus")["binding"]["valueSet"] == model.vs(
        "referral-business-status")


@functools.cache
def _r4_definitions() -> dict[str, dict[str, Any]]:
    with gzip.open(DEFAULT_DEFINITIONS / "profiles-resources.json.gz", "rt") as fh:
        return {e["resource"]["url"]: e["resource"] for e in json.load(fh)["entry"]
                if e["resource"]["resourceType"] == "StructureDefinition"}


@needs_definitions
@pytest.mark.parametrize("url", list(PROFILE_TYPES))
def test_snapshot_keeps_every_base_element(url: str) -> None:
    base = _r4_definitions()[P.definitions()[url]["baseDefinition"]]
    ours = {e["id"]: e for e in P.definitions()[url]["snapshot"]["element"]}
    for el in base["snapshot"]["element"]:
        mine = ours[el["id"]]
        # Never wider than the base.
        assert mine["min"] >= el["min"]
        assert (mine["max"] == "*") <= (el["max"] == "*")
        if el["max"] != "*":
            assert int(mine["max"]) <= int(el["max"])


@needs_definitions
def test_committed_structure_definitions_are_the_generator_output() -> None:
    built = generator.generate(DEFAULT_DEFINITIONS)
    on_disk = {p.name for p in PROFILES.glob("StructureDefinition-*.json")}
    assert on_disk == {f"StructureDefinition-{i}.json" for i in built}
    for id_, sd in built.items():
        path = PROFILES / f"StructureDefinition-{id_}.json"
        assert path.read_text(encoding="utf-8") == generator.render(sd), id_


@needs_definitions
@pytest.mark.parametrize(("element", "change", "message"), [
    ("ServiceRequest.note", {"max": "1"}, None),  # narrowing is fine
    ("ServiceRequest.status", {"min": 0}, "below the base"),
    ("ServiceRequest.category", {"max": "*"}, None),
    ("ServiceRequest.subject", {"type": [{"code": "string"}]}, "not allowed by the base"),
    ("ServiceRequest.nonsense", {"min": 1}, "not an element"),
    ("ServiceRequest.code", {"min": 2, "max": "1"}, "above max"),
])
def test_generator_refuses_differentials_that_widen_or_name_unknown_elements(
        tmp_path: Path, element: str, change: dict[str, Any], message: str | None) -> None:
    source = {"resourceType": "StructureDefinition", "id": "probe", "name": "Probe",
              "type": "ServiceRequest",
              "baseDefinition": "http://hl7.org/fhir/StructureDefinition/ServiceRequest",
              "differential": {"element": [{"id": element, **change}]}}
    (tmp_path / "probe.json").write_text(json.dumps(source))
    if message is None:
        sd = generator.generate(DEFAULT_DEFINITIONS, tmp_path)["probe"]
        assert {k: _element(sd, element)[k] for k in change} == change
    else:
        with pytest.raises(generator.ProfileError, match=message):
            generator.generate(DEFAULT_DEFINITIONS, tmp_path)


def test_every_built_in_resource_is_valid_r4_with_a_fixed_id() -> None:
    resources = P.builtin_resources()
    kinds = {r["resourceType"] for r in resources}
    assert kinds == {"StructureDefinition", "Questionnaire", "SearchParameter"}
    for r in resources:
        assert validate_resource(r, r["resourceType"]) == [], r["id"]
        assert r["url"] == f"{model.BASE}/{r['resourceType']}/{r['id']}"
        assert (PROFILES / f"{r['resourceType']}-{r['id']}.json").exists()
    resources[0]["id"] = "changed"
    assert P.builtin_resources()[0]["id"] != "changed"


def test_satisfaction_questionnaire_items_and_translations() -> None:
    q = next(r for r in P.builtin_resources() if r["resourceType"] == "Questionnaire")
    assert q["url"] == model.SATISFACTION_QUESTIONNAIRE
    items = {i["linkId"]: i for i in q["item"]}
    assert list(items) == ["overall", "timeliness", "quality", "comment"]
    for link in ("overall", "timeliness", "quality"):
        item = items[link]
        assert item["type"] == "integer" and item["required"] is True
        bounds = {e["url"].rsplit("/", 1)[-1]: e["valueInteger"] for e in item["extension"]}
        assert bounds == {"minValue": 1, "maxValue": 5}
    assert items["comment"]["type"] == "text"
    for item in items.values():
        langs = {next(p["valueCode"] for p in t["extension"] if p["url"] == "lang")
                 for t in item["_text"]["extension"]
                 if t["url"] == "http://hl7.org/fhir/StructureDefinition/translation"}
        assert langs == {"fa", "zh"}


# -- validation: conforming resources pass ---------------------------------------------------------

@pytest.mark.parametrize("url", list(EXAMPLES))
def test_conforming_example_passes(url: str) -> None:
    resource = EXAMPLES[url]()
    assert validate_resource(resource, resource["resourceType"]) == []
    assert P.validate_against(resource, url) == []
    assert P.applicable_profile(resource) == url
    P.require_profile(resource, url)  # does not raise
    prepare(claims(resource, url), resource["resourceType"])  # the write path accepts it


def test_profiles_compile_once() -> None:
    assert P.compiled(model.CONSULTATION_TASK) is P.compiled(model.CONSULTATION_TASK)


# -- validation: each kind of constraint ----------------------------------------------------------

def test_min_cardinality_names_each_missing_element() -> None:
    sr = consultation_request()
    for name in ("performerType", "reasonCode", "supportingInfo", "occurrenceDateTime",
                 "requester"):
        del sr[name]
    issues = refused(sr, model.CONSULTATION_REQUEST)
    for where in ("performerType", "reasonCode", "occurrence", "requester"):
        issue = one(issues, "required", f"ServiceRequest.{where}")
        assert "minimum cardinality 1" in issue.diagnostics
        assert "consultation-request" in issue.diagnostics
    assert "ctr-4" in one(issues, "invariant", "ServiceRequest").diagnostics


def test_max_cardinality() -> None:
    sr = consultation_request()
    sr["category"].append(concept(CT, "remote-ecg"))
    issue = one(refused(sr, model.CONSULTATION_REQUEST), "structure", "ServiceRequest.category")
    assert "ServiceRequest.category" in issue.diagnostics and "at most 1" in issue.diagnostics


def test_required_extension_slice_missing_and_forbidden_slice_present() -> None:
    sr = consultation_request()
    sr["extension"] = [e for e in sr["extension"] if e["url"] != model.EXT_APPROVED_BY]
    sr["extension"].append(ext(model.EXT_REFERRAL_DIRECTION, valueCode="up"))
    issues = refused(sr, model.CONSULTATION_REQUEST)
    missing = one(issues, "required", f"ServiceRequest.extension('{model.EXT_APPROVED_BY}')")
    assert "ServiceRequest.extension:approvedBy" in missing.diagnostics
    extra = one(issues, "structure",
                f"ServiceRequest.extension('{model.EXT_REFERRAL_DIRECTION}')")
    assert "is not allowed" in extra.diagnostics


def test_fixed_value() -> None:
    sr = consultation_request()
    sr["intent"] = "plan"
    issue = one(refused(sr, model.CONSULTATION_REQUEST), "value", "ServiceRequest.intent")
    assert '"order"' in issue.diagnostics
    qr = rating()
    qr["questionnaire"] = "https://example.org/Questionnaire/other"
    one(refused(qr, model.SATISFACTION_RATING), "value", "QuestionnaireResponse.questionnaire")


def test_pattern_value() -> None:
    sr = referral_request()
    sr["category"] = [concept(CT, "teleconsultation")]
    issue = one(refused(sr, model.REFERRAL_REQUEST), "value", "ServiceRequest.category[0]")
    assert "pattern" in issue.diagnostics
    with_display = referral_request()
    with_display["category"][0]["coding"][0]["display"] = "Two-way referral"
    assert P.validate_against(with_display, model.REFERRAL_REQUEST) == []


def test_required_binding_to_our_value_sets() -> None:
    sr = consultation_request()
    sr["performerType"] = concept(model.SPECIALTY, "astrology")
    sr["category"] = [concept(CT, "referral")]  # a referral is not a consultation category
    issues = refused(sr, model.CONSULTATION_REQUEST)
    assert "specialty" in one(issues, "code-invalid", "ServiceRequest.performerType").diagnostics
    one(issues, "code-invalid", "ServiceRequest.category[0]")
    task = consultation_task()
    task["businessStatus"] = concept(model.BUSINESS_STATUS, "transferred-in")  # referral step
    one(refused(task, model.CONSULTATION_TASK), "code-invalid", "Task.businessStatus")


def test_preferred_binding_only_warns() -> None:
    org = organization()
    org["type"] = [concept("http://terminology.hl7.org/CodeSystem/organization-type", "prov")]
    issues = P.validate_against(org, model.TELEMEDICINE_ORGANIZATION)
    assert [(i.code, i.severity) for i in issues] == [("code-invalid", "warning")]
    assert issues[0].expression == ["Organization.type[0]"]
    P.require_profile(org, model.TELEMEDICINE_ORGANIZATION)


def test_reference_targets() -> None:
    sr = consultation_request()
    sr["subject"] = {"reference": "Group/ward-3"}
    sr["requester"] = {"reference": "https://other.example/fhir/Practitioner/x"}
    issues = refused(sr, model.CONSULTATION_REQUEST)
    assert "Group" in one(issues, "value", "ServiceRequest.subject").diagnostics
    one(issues, "value", "ServiceRequest.requester")
    # A target profile stands for its resource type.
    task = consultation_task()
    task["focus"] = {"reference": "CarePlan/c1"}
    one(refused(task, model.CONSULTATION_TASK), "value", "Task.focus")


def test_choice_types() -> None:
    sr = consultation_request()
    del sr["occurrenceDateTime"]
    sr["occurrenceTiming"] = {"event": ["2026-03-02T09:00:00Z"]}
    issue = one(refused(sr, model.CONSULTATION_REQUEST), "value",
                "ServiceRequest.occurrenceTiming")
    assert "Timing" in issue.diagnostics


def test_extension_value_type_context_and_own_invariant() -> None:
    org = organization()
    org["extension"][0] = ext(model.EXT_CARE_LEVEL, valueString="2")
    org["extension"][3] = ext(model.EXT_REGION, valueCode="inner mongolia")
    issues = refused(org, model.TELEMEDICINE_ORGANIZATION)
    assert "string" in one(issues, "value", "Organization.extension[0].valueString").diagnostics
    assert "reg-1" in one(issues, "invariant", "Organization.extension[3]").diagnostics
    # Our extension where its context does not allow it (care level on a ServiceRequest).
    sr = consultation_request()
    sr["extension"].append(ext(model.EXT_CARE_LEVEL, valueCoding=coding(model.CARE_LEVEL, "1")))
    issue = one(refused(sr, model.CONSULTATION_REQUEST), "invalid", "ServiceRequest.extension[3]")
    assert "Organization" in issue.diagnostics


def test_extension_binding_is_checked() -> None:
    org = organization()
    org["extension"][0] = ext(model.EXT_CARE_LEVEL, valueCoding=coding(model.CARE_LEVEL, "4"))
    one(refused(org, model.TELEMEDICINE_ORGANIZATION), "code-invalid",
        "Organization.extension[0].valueCoding")


def test_complex_extension_parts() -> None:
    task = consultation_task()
    task["extension"][1]["extension"] = [p for p in task["extension"][1]["extension"]
                                         if p["url"] != "due"]
    task["extension"][0]["extension"][0] = ext("kind", valueCoding=coding(
        model.DEADLINE_KIND, "coffee-break"))
    issues = refused(task, model.CONSULTATION_TASK)
    missing = one(issues, "required", "Task.extension[1].extension('due')")
    assert "Extension.extension:due" in missing.diagnostics and "deadline" in missing.diagnostics
    one(issues, "code-invalid", "Task.extension[0].extension[0].valueCoding")
    # Malpractice grades run from 1 to 4 (mal-1); a single extension can be checked alone.
    malpractice = {"url": model.EXT_MALPRACTICE, "extension": [
        ext("grade", valueInteger=2), ext("date", valueDate="2024-05-01")]}
    assert P.validate_extension(malpractice, "Practitioner") == []
    malpractice["extension"][0] = ext("grade", valueInteger=7)
    issues = P.validate_extension(malpractice, "Practitioner")
    assert [i.code for i in issues] == ["invariant"] and "mal-1" in issues[0].diagnostics
    malpractice["extension"] = [ext("grade", valueString="2")]
    codes = {(i.code, i.expression[0]) for i in P.validate_extension(malpractice, "Patient")}
    assert codes >= {("invalid", "Patient.extension"),
                     ("required", "Patient.extension.extension('date')"),
                     ("value", "Patient.extension.extension[0].valueString")}
    assert P.validate_extension({"url": "http://example.org/x", "valueString": "y"},
                                "Patient") == []


@pytest.mark.parametrize(("make", "url", "change", "key"), [
    (consultation_task, model.CONSULTATION_TASK,
     {"status": "rejected"}, "ctk-1"),
    (consultation_task, model.CONSULTATION_TASK,
     {"status": "rejected", "statusReason": concept(model.CANCEL_REASON, "duplicate-request")},
     "ctk-1"),
    (consultation_task, model.CONSULTATION_TASK, {"status": "cancelled"}, "ctk-2"),
    (consultation_task, model.CONSULTATION_TASK, {"status": "completed"}, "ctk-3"),
    (referral_task, model.REFERRAL_TASK, {"status": "rejected"}, "rft-1"),
    (consultation_request, model.CONSULTATION_REQUEST, {"priority": "stat"}, "ctr-1"),
    (consultation_request, model.CONSULTATION_REQUEST,
     {"performer": [{"reference": "PractitionerRole/expert"}]}, "ctr-2"),
    (consultation_request, model.CONSULTATION_REQUEST,
     {"code": concept(CT, "teleconsultation")}, "ctr-3"),
    (referral_request, model.REFERRAL_REQUEST,
     {"supportingInfo": [{"reference": "Consent/c"}, {"reference": "DiagnosticReport/r"}]},
     "rfr-3"),
    (referral_request, model.REFERRAL_REQUEST,
     {"supportingInfo": [{"reference": "Consent/c"}, {"reference": "CarePlan/p"}]}, "rfr-2"),
    (referral_request, model.REFERRAL_REQUEST,
     {"supportingInfo": [{"reference": "CarePlan/p"}, {"reference": "Observation/o"}]}, "rfr-1"),
    (consent, model.TELEMEDICINE_CONSENT,
     {"category": [concept("http://loinc.org", "59284-0")]}, "tmc-2"),
    (consent, model.TELEMEDICINE_CONSENT,
     {"scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "research")},
     "tmc-1"),
    (expert_role, model.EXPERT_ROLE,
     {"code": [concept(model.PRACTITIONER_ROLE, "attending-physician")]}, "exr-1"),
    (report, model.CONSULTATION_REPORT, {"conclusion": None}, "crp-2"),
    (report, model.CONSULTATION_REPORT, {"issued": None}, "crp-3"),
    (rating, model.SATISFACTION_RATING,
     {"item": [{"linkId": "overall", "answer": [{"valueInteger": 6}]},
               {"linkId": "timeliness", "answer": [{"valueInteger": 3}]},
               {"linkId": "quality", "answer": [{"valueInteger": 3}]}]}, "sat-2"),
    (rating, model.SATISFACTION_RATING,
     {"item": [{"linkId": "overall", "answer": [{"valueInteger": 4}]},
               {"linkId": "quality", "answer": [{"valueInteger": 3}]},
               {"linkId": "speed", "answer": [{"valueInteger": 3}]}]}, "sat-1"),
])
def test_invariants(make: Any, url: str, change: dict[str, Any], key: str) -> None:
    resource = make()
    for k, v in change.items():
        if v is None:
            resource.pop(k)
        else:
            resource[k] = v
    issue = one(refused(resource, url), "invariant", resource["resourceType"])
    assert [i for i in errors(P.validate_against(resource, url)) if key in i.diagnostics]
    assert "FHIRPath" in issue.diagnostics


def test_invariants_that_hold() -> None:
    task = consultation_task()
    task["status"] = "rejected"
    task["statusReason"] = concept(model.DECLINE_REASON, "outside-licensed-scope")
    assert P.validate_against(task, model.CONSULTATION_TASK) == []
    up = referral_request()
    up["extension"] = [ext(model.EXT_REFERRAL_DIRECTION, valueCode="up")]
    up["reasonCode"] = [concept(model.REFERRAL_INDICATION, "critical-emergency")]
    up["supportingInfo"] = [{"reference": "Consent/c"}]  # an up-referral needs no plan
    assert P.validate_against(up, model.REFERRAL_REQUEST) == []
    role = expert_role()
    role["extension"] = [e for e in role["extension"]
                         if e["url"] != model.EXT_APPROVED_BY_REGION]
    assert "exr-2" in errors(P.validate_against(role, model.EXPERT_ROLE))[0].diagnostics
    role["extension"][0] = ext(model.EXT_POOL_STATUS,
                               valueCoding=coding(model.EXPERT_POOL_STATUS, "nominated"))
    assert P.validate_against(role, model.EXPERT_ROLE) == []


def test_wrong_resource_type_or_unknown_profile() -> None:
    issues = P.validate_against(consultation_request(), model.CONSULTATION_TASK)
    assert issues[0].code == "invalid" and "Task" in issues[0].diagnostics
    issues = P.validate_against(consultation_request(), f"{model.BASE}/StructureDefinition/x")
    assert issues[0].code == "not-supported"
    issues = P.validate_against(organization(), model.EXT_CARE_LEVEL)
    assert issues[0].code == "invalid"


# -- the write path (prepare) ----------------------------------------------------------------------

def test_prepare_refuses_a_claimed_profile_with_every_issue() -> None:
    task = claims(consultation_task(), model.CONSULTATION_TASK)
    del task["for"]
    task["status"] = "rejected"
    with pytest.raises(FhirError) as caught:
        prepare(task, "Task")
    assert caught.value.status == 422
    codes = {(i.code, tuple(i.expression)) for i in caught.value.issues}
    assert ("required", ("Task.for",)) in codes and ("invariant", ("Task",)) in codes


def test_prepare_ignores_profiles_of_other_publishers_and_unclaimed_profiles() -> None:
    foreign = claims(consultation_task(), "http://example.org/StructureDefinition/tm-task")
    del foreign["for"]
    prepare(foreign, "Task")
    unclaimed = consultation_task()
    del unclaimed["for"]
    prepare(unclaimed, "Task")


def test_prepare_refuses_an_unknown_consilium_profile_or_version() -> None:
    for url in (f"{model.BASE}/StructureDefinition/nonexistent",
                f"{model.CONSULTATION_TASK}|9.9.9"):
        with pytest.raises(FhirError) as caught:
            prepare(claims(consultation_task(), url), "Task")
        assert caught.value.status == 422
    prepare(claims(consultation_task(), f"{model.CONSULTATION_TASK}|0.1.0"), "Task")


# -- terminology added with the profiles -----------------------------------------------------------

def _concepts(name: str) -> dict[str, dict[str, Any]]:
    cs = library().code_system(model.cs(name))
    assert cs is not None, name
    return dict(cs.concepts.items())


def test_new_code_systems() -> None:
    assert set(_concepts("qualification")) == {
        "licensed-physician", "licensed-assistant-physician", "village-doctor",
        "telemedicine-training"}
    assert set(_concepts("deadline-kind")) >= {
        "expert-assignment", "acceptance", "session", "report", "papers", "reschedule-notice"}
    assert set(_concepts("communication-kind")) >= {
        "clarification-request", "clarification-response", "report-delivered",
        "deduction-notice", "refund-notice", "schedule-change"}
    assert P.value_set_codes(model.vs("consultation-category")) == {
        (CT, c) for c in _concepts("consultation-type")
        if c not in ("referral", "remote-teaching")}


def test_consultation_types_carry_their_minimum_service_level() -> None:
    levels = {code: c.property_values("minimum-service-level")
              for code, c in _concepts("consultation-type").items()}
    assert all(len(v) == 1 and v[0] in ("basic", "standard", "advanced")
               for v in levels.values()), levels
    expected = {"teleconsultation": "basic", "case-discussion": "basic",
                "remote-outpatient": "basic", "remote-imaging": "standard",
                "remote-pathology": "standard", "remote-ecg": "standard",
                "remote-ultrasound": "advanced", "remote-eeg": "advanced",
                "remote-emg": "advanced", "remote-monitoring": "advanced"}
    assert {k: levels[k][0] for k in expected} == expected


# -- the server ------------------------------------------------------------------------------------

def test_reads_expose_the_definitions(fhir: Fhir) -> None:
    for type_, id_ in (("StructureDefinition", "consultation-request"),
                       ("StructureDefinition", "deadline"),
                       ("SearchParameter", "Task-deadline"),
                       ("Questionnaire", "consultation-satisfaction")):
        r = fhir.get(f"{type_}/{id_}")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["url"] == f"{model.BASE}/{type_}/{id_}"
    sd = fhir.get("StructureDefinition/consultation-task").json()
    assert any(e["id"] == "Task.restriction.period.end" for e in sd["snapshot"]["element"])
    found = fhir.get("StructureDefinition", params={"url": model.EXPERT_ROLE}).json()
    assert [e["resource"]["id"] for e in found["entry"]] == ["expert-role"]
    found = fhir.get("SearchParameter", params={"base": "Organization", "code": "care-level"})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["Organization-care-level"]


def test_metadata_lists_profiles_and_custom_search_parameters(fhir: Fhir) -> None:
    rest = fhir.get("metadata").json()["rest"][0]
    by_type = {r["type"]: r for r in rest["resource"]}
    for url, type_ in PROFILE_TYPES.items():
        assert url in by_type[type_]["supportedProfile"]
    assert "supportedProfile" not in by_type["Patient"]
    params = {(t, p["name"]): p for t, r in by_type.items() for p in r["searchParam"]}
    assert params[("Task", "deadline")]["type"] == "date"
    assert params[("Task", "deadline")]["definition"] == \
        f"{model.BASE}/SearchParameter/Task-deadline"
    for type_, code in (("ServiceRequest", "referral-direction"), ("Organization", "care-level"),
                        ("Organization", "licensed-specialty"), ("Organization", "region"),
                        ("PractitionerRole", "pool-status")):
        assert params[(type_, code)]["type"] == "token"
    assert ("Task", "business-status") in params  # R4's own


def _ids(fhir: Fhir, type_: str, **params: str) -> set[str]:
    r = fhir.get(type_, params=params)
    assert r.status_code == 200, r.text
    return {e["resource"]["id"] for e in r.json().get("entry", [])}


def test_deadline_search(fhir: Fhir) -> None:
    ids = {}
    for name, end in (("early", "2025-12-31T10:00:00Z"), ("late", "2026-01-15T00:00:00Z")):
        task = {"resourceType": "Task", "status": "requested", "intent": "order",
                "restriction": {"period": {"end": end}},
                "extension": [deadline("report", end)]}
        r = fhir.post("Task", task)
        assert r.status_code == 201, r.text
        ids[name] = r.json()["id"]
    assert _ids(fhir, "Task", deadline="lt2026-01-01") == {ids["early"]}
    assert _ids(fhir, "Task", deadline="ge2026-01-01") == {ids["late"]}
    assert _ids(fhir, "Task", **{"deadline-kind": f"{model.DEADLINE_KIND}|report"}) == set(
        ids.values())


def test_organization_searches_on_extensions(fhir: Fhir) -> None:
    r = fhir.post("Organization", claims(organization(), model.TELEMEDICINE_ORGANIZATION))
    assert r.status_code == 201, r.text
    org_id = r.json()["id"]
    assert _ids(fhir, "Organization", **{"care-level": f"{model.CARE_LEVEL}|2"}) == {org_id}
    assert _ids(fhir, "Organization", **{"care-level": f"{model.CARE_LEVEL}|3"}) == set()
    assert _ids(fhir, "Organization", **{"licensed-specialty": "cardiology"}) == {org_id}
    assert _ids(fhir, "Organization", region="CN-NM") == {org_id}


def test_validate_takes_a_profile_and_checks_the_profiles_a_resource_claims(
        fhir: Fhir) -> None:
    """Resource-validate's ``profile`` input (in the URL or in Parameters) validates against
    that profile too; and a resource claiming one of ours is checked as a write would check it
    (a create would answer 422). A profile this server does not know is refused."""
    bad = consent()
    del bad["patient"]

    def error_codes(r: Any) -> set[str]:
        assert r.status_code == 200, r.text
        return {i["code"] for i in r.json()["issue"] if i["severity"] in ("error", "fatal")}

    assert not error_codes(fhir.post("Consent/$validate", bad))  # plain R4: valid
    url = model.TELEMEDICINE_CONSENT
    assert "required" in error_codes(fhir.post(f"Consent/$validate?profile={url}", bad))
    assert "required" in error_codes(fhir.post("Consent/$validate", {
        "resourceType": "Parameters", "parameter": [
            {"name": "resource", "resource": bad}, {"name": "profile", "valueUri": url}]}))
    assert "required" in error_codes(fhir.post("Consent/$validate", claims(bad, url)))
    assert not error_codes(fhir.post(f"Consent/$validate?profile={url}", consent()))
    assert not error_codes(fhir.post(
        "Consent/$validate?profile=http://hl7.org/fhir/StructureDefinition/Consent", bad))
    r = fhir.post("Consent/$validate?profile=http://example.org/StructureDefinition/x", bad)
    assert r.status_code == 400 and "http://example.org/StructureDefinition/x" in r.text


def test_writes_claiming_a_profile_are_validated(fhir: Fhir) -> None:
    good = claims(consent(), model.TELEMEDICINE_CONSENT)
    r = fhir.post("Consent", good)
    assert r.status_code == 201, r.text
    bad = copy.deepcopy(good)
    del bad["patient"]
    bad["category"] = [concept("http://loinc.org", "59284-0")]
    r = fhir.post("Consent", bad)
    assert r.status_code == 422, r.text
    issues = r.json()["issue"]
    assert {(i["code"], tuple(i.get("expression", []))) for i in issues} >= {
        ("required", ("Consent.patient",)), ("invariant", ("Consent",))}
    assert any("tmc-2" in i["diagnostics"] for i in issues)
    # The same body without the claim is plain R4 and is stored.
    del bad["meta"]
    assert fhir.post("Consent", bad).status_code == 201
    # Updates are checked too.
    stored = fhir.post("Organization", claims(organization(), model.TELEMEDICINE_ORGANIZATION))
    org = stored.json()
    org["extension"] = [e for e in org["extension"] if e["url"] != model.EXT_CARE_LEVEL]
    r = fhir.put(f"Organization/{org['id']}", org)
    assert r.status_code == 422
    assert "Organization.extension:careLevel" in r.json()["issue"][0]["diagnostics"]

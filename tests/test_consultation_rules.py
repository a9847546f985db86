"""Filing a consultation request: every refusal rule, one test each (422, the rule and its
decline-reason named, nothing stored), and what filing creates."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.workflow import model
from tests.consultation_network import Network, consent, open_network, request


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with open_network(tmp_path) as network:
        yield network


def refused(net: Network, sr: dict[str, Any], rule: str, decline: str) -> list[dict[str, Any]]:
    """File ``sr``, expect the refusal naming ``rule`` and ``decline``; nothing is stored."""
    before = {t: net.count(t) for t in ("ServiceRequest", "Task", "Provenance")}
    r = net.requester.post("ServiceRequest", sr)
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    issues = [i for i in outcome["issue"] if f"[{rule}]" in i["diagnostics"]]
    assert issues, outcome
    assert all(f"decline-reason {decline}" in i["diagnostics"] for i in issues)
    assert all(i["code"] == "business-rule" and i["severity"] == "error" for i in issues)
    assert {t: net.count(t) for t in before} == before
    return issues


def test_filing_creates_the_task_in_the_same_transaction(net: Network) -> None:
    sr, task = net.file(request())
    assert task["status"] == "requested"
    assert task["owner"] == {"reference": "Organization/regional"}
    assert net.count("Task") == 1
    assert model.CONSULTATION_TASK in task["meta"]["profile"]


def test_no_active_consent(net: Network) -> None:
    [issue] = refused(net, request(patient="patient-2"), "consent", "no-active-consent")
    assert "Patient/patient-2" in issue["diagnostics"]
    assert issue["expression"] == ["ServiceRequest.subject"]


def test_expired_consent(net: Network) -> None:
    net.put(consent("consent-2", "patient-2", "2025-01-01", "2026-03-08"))
    refused(net, request(patient="patient-2"), "consent", "no-active-consent")


def test_consent_for_another_purpose_is_not_enough(net: Network) -> None:
    referral_only = consent("consent-2", "patient-2")
    referral_only["category"] = [{"coding": [{"system": model.CONSENT_CATEGORY,
                                              "code": "referral"}]}]
    net.put(referral_only)
    refused(net, request(patient="patient-2"), "consent", "no-active-consent")


def test_specialty_outside_the_inviting_organisations_licence(net: Network) -> None:
    # county is not licensed for oncology; the regional centre is
    [issue] = refused(net, request(specialty="oncology"), "inviting-licensed-scope",
                      "inviting-outside-licensed-scope")
    assert "Organization/county" in issue["diagnostics"]


def test_specialty_outside_the_invited_organisations_licence(net: Network) -> None:
    # capital is not licensed for pulmonology; county is
    [issue] = refused(net, request(specialty="pulmonology", invited="capital"),
                      "invited-licensed-scope", "outside-licensed-scope")
    assert "Organization/capital" in issue["diagnostics"]


def test_inviting_organisation_not_equipped_for_the_service(net: Network) -> None:
    # remote ultrasound needs the advanced service level; county has standard equipment
    [issue] = refused(net, request(category="remote-ultrasound"), "service-level",
                      "inviting-insufficient-capacity")
    assert "advanced" in issue["diagnostics"] and "standard" in issue["diagnostics"]


def test_basic_level_may_ask_for_a_teleconsultation_but_not_for_imaging(net: Network) -> None:
    township = net.as_user("attending-township")
    net.file(request(requester="attending-township"), client=township)
    r = township.post("ServiceRequest", request(requester="attending-township",
                                                category="remote-imaging"))
    assert r.status_code == 422
    assert "[service-level]" in r.text


def test_named_expert_without_the_specialty(net: Network) -> None:
    [issue] = refused(net, request(expert="expert-neuro"), "expert-specialty",
                      "outside-practice-scope")
    assert "PractitionerRole/expert-neuro" in issue["diagnostics"]
    assert issue["expression"] == ["ServiceRequest.performer"]


def test_named_expert_not_in_the_pool(net: Network) -> None:
    [issue] = refused(net, request(expert="expert-nominated"), "expert-pool",
                      "outside-practice-scope")
    assert "nominated" in issue["diagnostics"]


def test_named_expert_under_three_years_of_independent_practice(net: Network) -> None:
    [issue] = refused(net, request(expert="expert-junior"), "expert-experience",
                      "outside-practice-scope")
    assert "2024-09-01" in issue["diagnostics"]


def test_three_years_to_the_day_is_enough(net: Network) -> None:
    junior = net.read("Practitioner", "p-expert-junior")
    junior["qualification"][0]["period"]["start"] = "2023-03-09"  # the clock: 2026-03-09
    net.put(junior)
    net.file(request(expert="expert-junior"))
    junior["qualification"][0]["period"]["start"] = "2023-03-10"
    net.put(junior)
    refused(net, request(expert="expert-junior"), "expert-experience", "outside-practice-scope")


def _drop_extension(sr: dict[str, Any], url: str) -> None:
    sr["extension"] = [e for e in sr["extension"] if e["url"] != url]
    if not sr["extension"]:
        del sr["extension"]


MISSING = {
    "the department head's approval": (
        lambda sr: _drop_extension(sr, model.EXT_APPROVED_BY),
        f"ServiceRequest.extension('{model.EXT_APPROVED_BY}')"),
    "the professional title": (
        lambda sr: _drop_extension(sr, model.EXT_REQUESTED_TITLE),
        f"ServiceRequest.extension('{model.EXT_REQUESTED_TITLE}')"),
    "the purpose": (lambda sr: sr.update(code={"coding": [
        {"system": "http://snomed.info/sct", "code": "11429006"}]}), "ServiceRequest.code"),
    "the suggested time": (lambda sr: sr.pop("occurrenceDateTime"),
                           "ServiceRequest.occurrence[x]"),
    "the priority": (lambda sr: sr.pop("priority"), "ServiceRequest.priority"),
    "the patient": (lambda sr: sr.update(subject={"reference": "Group/g1"}),
                    "ServiceRequest.subject"),
    "the reason": (lambda sr: sr.pop("reasonCode"), "ServiceRequest.reasonCode"),
    "the records": (lambda sr: sr.pop("supportingInfo"), "ServiceRequest.supportingInfo"),
    "the invited organisation": (lambda sr: sr.update(performer=[
        {"reference": "PractitionerRole/expert-cardio"}]), "ServiceRequest.performer"),
    "the specialty": (lambda sr: sr.pop("performerType"), "ServiceRequest.performerType"),
    "the requester": (lambda sr: sr.pop("requester"), "ServiceRequest.requester"),
}


@pytest.mark.parametrize("what", sorted(MISSING))
def test_minimum_contents(net: Network, what: str) -> None:
    sr = request()
    change, expression = MISSING[what]
    change(sr)
    issues = refused(net, sr, "missing-content", "missing-content")
    assert [i["expression"] for i in issues] == [[expression]]


def test_every_missing_item_is_named(net: Network) -> None:
    sr = request()
    for change, _ in MISSING.values():
        change(sr)
    issues = refused(net, sr, "missing-content", "missing-content")
    assert len(issues) == len(MISSING)


def test_inviting_organisation_without_name_or_care_level(net: Network) -> None:
    county = net.read("Organization", "county")
    county.pop("name")
    county["extension"] = [e for e in county["extension"] if e["url"] != model.EXT_CARE_LEVEL]
    net.put(county)
    issues = refused(net, request(), "missing-content", "missing-content")
    text = " ".join(i["diagnostics"] for i in issues)
    assert "name" in text and "care level" in text


def test_unknown_invited_organisation(net: Network) -> None:
    [issue] = refused(net, request(invited="nowhere"), "missing-content", "missing-content")
    assert "Organization/nowhere" in issue["diagnostics"]


def test_several_rules_at_once(net: Network) -> None:
    r = net.requester.post("ServiceRequest", request(patient="patient-2", specialty="oncology",
                                                     expert="expert-junior"))
    assert r.status_code == 422
    text = r.text
    for rule in ("consent", "inviting-licensed-scope", "expert-specialty", "expert-experience"):
        assert f"[{rule}]" in text


def test_draft_is_not_checked_until_it_becomes_active(net: Network) -> None:
    draft = {**request(patient="patient-2"), "status": "draft"}
    r = net.requester.post("ServiceRequest", draft)
    assert r.status_code == 201, r.text
    sr = r.json()
    assert net.count("Task") == 0
    r = net.requester.put(f"ServiceRequest/{sr['id']}", {**sr, "status": "active"})
    assert r.status_code == 422
    assert "[consent]" in r.text
    assert net.count("Task") == 0
    sr = net.read("ServiceRequest", sr["id"])
    r = net.requester.put(f"ServiceRequest/{sr['id']}", {
        **sr, "status": "active", "subject": {"reference": "Patient/patient-1"}})
    assert r.status_code == 200, r.text
    assert net.task_of(sr["id"])["status"] == "requested"


def test_urgent_phone_request_may_send_its_records_later(net: Network) -> None:
    sr, task = net.file(request(priority="urgent", channel="phone", records=False))
    codes = model.codes(task.get("businessStatus"), model.BUSINESS_STATUS)
    assert codes == ["paperwork-pending"]
    # a routine request by phone, or an urgent one on the platform, brings its records
    refused(net, request(channel="phone", records=False), "missing-content", "missing-content")
    refused(net, request(priority="urgent", channel="platform", records=False),
            "missing-content", "missing-content")


def test_the_profile_allows_the_late_records_of_an_urgent_phone_request(net: Network) -> None:
    claimed = {"meta": {"profile": [model.CONSULTATION_REQUEST]}}
    sr, task = net.file({**request(priority="urgent", channel="email", records=False), **claimed})
    assert model.CONSULTATION_REQUEST in net.read("ServiceRequest", sr["id"])["meta"]["profile"]
    r = net.requester.post("ServiceRequest", {**request(records=False), **claimed})
    assert r.status_code == 422, r.text
    assert any("ctr-4" in i["diagnostics"] for i in r.json()["issue"]), r.text


def test_revoking_the_request_cancels_its_task(net: Network) -> None:
    sr, task = net.file(request())
    stored = net.read("ServiceRequest", sr["id"])
    r = net.requester.put(f"ServiceRequest/{sr['id']}", {**stored, "status": "revoked"})
    assert r.status_code == 200, r.text
    task = net.read("Task", task["id"])
    assert task["status"] == "cancelled"
    assert model.codes(task["statusReason"], model.CANCEL_REASON) == ["requester-withdrew"]


def test_referrals_and_other_requests_are_left_alone(net: Network) -> None:
    lab = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
           "code": {"text": "Troponin"}, "subject": {"reference": "Patient/patient-2"}}
    r = net.requester.post("ServiceRequest", lab)
    assert r.status_code == 201
    assert net.count("Task") == 0


def test_a_filed_request_keeps_its_parties(net: Network) -> None:
    sr, task = net.file(request())
    stored = net.read("ServiceRequest", sr["id"])
    moved = {**stored, "performer": [{"reference": "Organization/capital"}]}
    r = net.requester.put(f"ServiceRequest/{sr['id']}", moved)
    assert r.status_code == 422
    assert "$redirect" in r.text
    assert net.read("ServiceRequest", sr["id"])["performer"] == stored["performer"]
    assert net.requester.delete(f"ServiceRequest/{sr['id']}").status_code == 409
    # the note, say, may still change
    r = net.requester.put(f"ServiceRequest/{sr['id']}", {**stored, "note": [{"text": "BP 90/60"}]})
    assert r.status_code == 200, r.text

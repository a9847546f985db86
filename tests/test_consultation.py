"""The consultation lifecycle through HTTP: filing, the Task's states, the operations, the
session's Appointment and Encounter, the report, Provenance, the clarification loop, redirects,
roster-based assignment, and illegal changes."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server.workflow import model
from tests.conftest import Fhir
from tests.consultation_network import (
    Network,
    advance,
    concept,
    open_network,
    request,
    utc,
)

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with open_network(tmp_path) as network:
        yield network


def business(task: dict[str, Any]) -> str | None:
    codes = model.codes(task.get("businessStatus"), model.BUSINESS_STATUS)
    return codes[0] if codes else None


def outputs(task: dict[str, Any], type_: str) -> list[str]:
    return [o["valueReference"]["reference"].split("/")[1] for o in task.get("output", [])
            if o["valueReference"]["reference"].startswith(f"{type_}/")]


def report_for(net: Network, request_id: str, expert: str = "expert-cardio") -> str:
    """A final consultation report by ``expert``, signed; its id."""
    report = {
        "resourceType": "DiagnosticReport", "status": "final",
        "basedOn": [{"reference": f"ServiceRequest/{request_id}"}],
        "category": [concept(model.CONSULTATION_TYPE, "teleconsultation")],
        "code": {"text": "Teleconsultation report"},
        "subject": {"reference": "Patient/patient-1"},
        "issued": "2026-03-10T04:00:00Z",
        "performer": [{"reference": f"PractitionerRole/{expert}"}],
        "conclusion": "Unstable angina; start dual antiplatelet therapy.",
    }
    r = net.admin.post("DiagnosticReport", report)
    assert r.status_code == 201, r.text
    report_id = r.json()["id"]
    sign(net, report_id, r.json()["meta"]["versionId"], expert)
    return report_id


def sign(net: Network, report_id: str, version: str, expert: str) -> None:
    """Sign through the reports part's $sign where the server has it, else record a signature
    Provenance directly (what a signature is, for the consultation rules)."""
    signer = net.as_user(expert)
    r = signer.post(f"DiagnosticReport/{report_id}/$sign", {"resourceType": "Parameters"})
    if r.status_code == 201:
        return
    assert r.status_code in (400, 404, 405), r.text  # no such operation in this build
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": f"DiagnosticReport/{report_id}/_history/{version}"}],
        "recorded": "2026-03-10T04:00:00Z",
        "agent": [{"who": {"reference": f"PractitionerRole/{expert}"}}],
        "signature": [{
            "type": [{"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.1"}],
            "when": "2026-03-10T04:00:00Z", "who": {"reference": f"PractitionerRole/{expert}"},
            "sigFormat": "application/jose", "targetFormat": "application/fhir+json",
            "data": base64.b64encode(b"detached-jws").decode()}],
    }
    r = net.admin.post("Provenance", provenance)
    assert r.status_code == 201, r.text


def provenance_of(net: Network, type_: str, id_: str) -> list[dict[str, Any]]:
    return [p for p in net.search("Provenance", target=f"{type_}/{id_}")
            if not p.get("signature")]


def history(net: Network, type_: str, id_: str) -> list[dict[str, Any]]:
    r = net.admin.get(f"{type_}/{id_}/_history", params={"_count": "100"})
    assert r.status_code == 200
    return [e["resource"] for e in r.json()["entry"]]


def test_whole_lifecycle(net: Network) -> None:
    sr, task = net.file(request())
    tid = task["id"]
    assert task["status"] == "requested"
    assert task["intent"] == "order"
    assert task["owner"] == {"reference": "Organization/regional"}
    assert task["focus"] == {"reference": f"ServiceRequest/{sr['id']}"}
    assert task["for"] == {"reference": "Patient/patient-1"}
    assert task["requester"] == {"reference": "PractitionerRole/attending-county"}
    assert model.codes(task["code"], model.CONSULTATION_TYPE) == ["teleconsultation"]
    assert utc(task["authoredOn"]) == utc("2026-03-09T02:00:00Z")

    r = net.invited.put(f"Task/{tid}", {**task, "status": "received"})  # plain REST
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "received"

    r = net.op(tid, "accept")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted"

    r = net.op(tid, "assign", expert={"valueReference": {
        "reference": "PractitionerRole/expert-cardio"}})
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == {"reference": "PractitionerRole/expert-cardio"}
    assert business(r.json()) == "expert-assigned"

    r = net.op(tid, "schedule", start={"valueDateTime": "2026-03-10T09:30:00+08:00"},
               end={"valueDateTime": "2026-03-10T10:30:00+08:00"})
    assert r.status_code == 200, r.text
    task = r.json()
    assert business(task) == "scheduled"
    [appointment_id], [encounter_id] = outputs(task, "Appointment"), outputs(task, "Encounter")
    appointment = net.read("Appointment", appointment_id)
    assert appointment["status"] == "booked"
    assert utc(appointment["start"]) == utc("2026-03-10T01:30:00Z")
    assert utc(appointment["end"]) == utc("2026-03-10T02:30:00Z")
    actors = {p["actor"]["reference"] for p in appointment["participant"]}
    assert actors == {"Patient/patient-1", "PractitionerRole/expert-cardio",
                      "PractitionerRole/attending-county"}
    assert appointment["slot"] == [{"reference": "Slot/slot-expert-cardio-10-0"}]
    assert net.read("Slot", "slot-expert-cardio-10-0")["status"] == "busy"
    encounter = net.read("Encounter", encounter_id)
    assert encounter["status"] == "planned"
    assert encounter["class"]["code"] == "VR"
    assert encounter["appointment"] == [{"reference": f"Appointment/{appointment_id}"}]

    net.clock.set(utc("2026-03-10T01:25:00Z"))
    r = net.op(tid, "start", client=net.expert)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "in-progress"
    assert business(r.json()) == "in-session"
    assert net.read("Encounter", encounter_id)["status"] == "in-progress"

    net.clock.set(utc("2026-03-10T02:40:00Z"))
    report_id = report_for(net, sr["id"])
    r = net.op(tid, "complete", client=net.expert,
               report={"valueReference": {"reference": f"DiagnosticReport/{report_id}"}})
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "completed"
    assert business(task) == "report-delivered"
    assert outputs(task, "DiagnosticReport") == [report_id]
    assert "restriction" not in task  # nothing is due any more
    assert net.read("Encounter", encounter_id)["status"] == "finished"
    assert net.read("Appointment", appointment_id)["status"] == "fulfilled"

    # every version of the Task has its Provenance: who, when, what
    versions = history(net, "Task", tid)
    provenance = provenance_of(net, "Task", tid)
    assert len(versions) == 7
    assert sorted(p["target"][0]["reference"] for p in provenance) == sorted(
        f"Task/{tid}/_history/{v['meta']['versionId']}" for v in versions)
    by_target = {p["target"][0]["reference"]: p for p in provenance}
    accepted = next(v for v in versions if v["status"] == "accepted"
                    and "owner" in v and v["owner"]["reference"].startswith("Organization"))
    record = by_target[f"Task/{tid}/_history/{accepted['meta']['versionId']}"]
    assert record["agent"][0]["who"] == {"reference": "PractitionerRole/coordinator-regional"}
    assert record["activity"]["coding"][0] == {"system": DATA_OPERATION, "code": "UPDATE"}
    assert "received -> accepted" in record["activity"]["text"]
    created = by_target[f"Task/{tid}/_history/1"]
    assert created["activity"]["coding"][0]["code"] == "CREATE"
    assert created["agent"][0]["who"] == {"reference": "PractitionerRole/attending-county"}
    completed = by_target[f"Task/{tid}/_history/{versions[0]['meta']['versionId']}"]
    assert utc(completed["recorded"]) == utc("2026-03-10T02:40:00Z")
    assert completed["agent"][0]["who"] == {"reference": "PractitionerRole/expert-cardio"}


def test_decline_needs_a_reason(net: Network) -> None:
    _, task = net.file(request())
    r = net.op(task["id"], "decline")
    assert r.status_code == 422
    assert "decline-reason" in r.text
    r = net.invited.put(f"Task/{task['id']}", {**task, "status": "rejected"})
    assert r.status_code == 422
    assert "statusReason" in r.text
    assert net.read("Task", task["id"])["status"] == "requested"

    reason = concept(model.DECLINE_REASON, "outside-practice-scope")
    r = net.op(task["id"], "decline", reason={"valueCodeableConcept": reason})
    assert r.status_code == 200, r.text
    declined = r.json()
    assert declined["status"] == "rejected"
    assert declined["statusReason"] == reason
    assert "restriction" not in declined
    record = next(p for p in provenance_of(net, "Task", task["id"])
                  if p["target"][0]["reference"].endswith(f"/_history/"
                                                          f"{declined['meta']['versionId']}"))
    assert record["reason"] == [reason]


def test_decline_by_plain_put_with_reason(net: Network) -> None:
    _, task = net.file(request())
    reason = concept(model.DECLINE_REASON, "inviting-side-cannot-treat")
    r = net.invited.put(f"Task/{task['id']}", {**task, "status": "rejected",
                                               "statusReason": reason})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "rejected"


def test_cancel_by_the_inviting_side(net: Network) -> None:
    _, task = net.file(request())
    net.op(task["id"], "accept")
    net.op(task["id"], "assign")
    r = net.op(task["id"], "schedule", start={"valueDateTime": "2026-03-10T14:00:00+08:00"},
               end={"valueDateTime": "2026-03-10T15:00:00+08:00"})
    assert r.status_code == 200, r.text
    [appointment_id] = outputs(r.json(), "Appointment")
    [encounter_id] = outputs(r.json(), "Encounter")
    slot = net.read("Appointment", appointment_id)["slot"][0]["reference"].split("/")[1]
    assert net.read("Slot", slot)["status"] == "busy"

    reason = concept(model.CANCEL_REASON, "patient-improved")
    r = net.op(task["id"], "cancel", client=net.invited, reason={"valueCodeableConcept": reason})
    assert r.status_code == 403  # the invited side does not cancel
    r = net.op(task["id"], "cancel", client=net.requester)
    assert r.status_code == 422 and "cancel-reason" in r.text
    r = net.op(task["id"], "cancel", client=net.requester,
               reason={"valueCodeableConcept": reason})
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled"
    assert r.json()["statusReason"] == reason
    assert net.read("Appointment", appointment_id)["status"] == "cancelled"
    assert net.read("Encounter", encounter_id)["status"] == "cancelled"
    assert net.read("Slot", slot)["status"] == "free"


@pytest.mark.parametrize(("path", "status"), [
    (["requested", "accepted", "completed"], "completed"),
    (["requested", "failed"], "failed"),
    (["requested", "in-progress"], "in-progress"),
    (["requested", "received", "requested"], "requested"),
    (["requested", "accepted", "received"], "received"),
])
def test_illegal_transitions_conflict(net: Network, path: list[str], status: str) -> None:
    _, task = net.file(request())
    for step in path[1:-1]:
        task = net.admin.put(f"Task/{task['id']}", {**task, "status": step}).json()
    before = net.read("Task", task["id"])
    changed = {**task, "status": status}
    if status == "completed":  # the profile wants a report in output, the state machine more
        changed["output"] = [{"type": {"text": "report"},
                              "valueReference": {"reference": "DiagnosticReport/any"}}]
    r = net.admin.put(f"Task/{task['id']}", changed)
    assert r.status_code == 409, r.text
    message = r.json()["issue"][0]["diagnostics"]
    assert f"from {path[-2]} to {status}" in message
    after = net.read("Task", task["id"])
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert after["status"] == path[-2]
    assert len(provenance_of(net, "Task", task["id"])) == len(path) - 1


def test_final_states_take_no_more_changes(net: Network) -> None:
    _, task = net.file(request())
    reason = concept(model.DECLINE_REASON, "outside-licensed-scope")
    task = net.op(task["id"], "decline", reason={"valueCodeableConcept": reason}).json()
    r = net.admin.put(f"Task/{task['id']}", {**task, "status": "accepted"})
    assert r.status_code == 409
    assert "from rejected to accepted" in r.text
    r = net.op(task["id"], "accept")
    assert r.status_code == 409
    r = net.admin.put(f"Task/{task['id']}", {**task, "description": "changed"})
    assert r.status_code == 422
    assert "description does not change once the Task is rejected" in r.text


def test_identity_of_the_task_never_changes(net: Network) -> None:
    _, task = net.file(request())
    r = net.invited.put(f"Task/{task['id']}", {**task, "for": {"reference": "Patient/patient-2"}})
    assert r.status_code == 422
    assert "Task.for" in r.json()["issue"][0]["expression"]
    assert net.read("Task", task["id"])["for"] == {"reference": "Patient/patient-1"}


def test_who_may_do_what(net: Network) -> None:
    _, task = net.file(request())
    r = net.op(task["id"], "accept", client=net.requester)
    assert r.status_code == 403
    assert "invited side" in r.text
    r = net.requester.put(f"Task/{task['id']}", {**task, "status": "accepted"})
    assert r.status_code == 403
    outsider = net.as_user("coordinator-capital")
    assert net.op(task["id"], "accept", client=outsider).status_code == 403
    assert net.read("Task", task["id"])["status"] == "requested"
    # a system client acts for either side
    assert net.op(task["id"], "accept", client=net.admin).status_code == 200


def test_tasks_are_made_by_filing_and_not_deleted(net: Network) -> None:
    sr, task = net.file(request())
    copy_ = {k: v for k, v in task.items() if k not in ("id", "meta")}
    r = net.requester.post("Task", copy_)
    assert r.status_code == 422
    assert net.search("Task", focus=f"ServiceRequest/{sr['id']}") == [task] or len(
        net.search("Task", focus=f"ServiceRequest/{sr['id']}")) == 1
    assert net.requester.delete(f"Task/{task['id']}").status_code == 409


def test_start_needs_an_expert_and_complete_a_signed_report(net: Network) -> None:
    sr, task = net.file(request())
    net.op(task["id"], "accept")
    r = net.op(task["id"], "start")
    assert r.status_code == 422 and "expert" in r.text
    net.op(task["id"], "assign")
    assert net.op(task["id"], "start").status_code == 200
    unsigned = net.admin.post("DiagnosticReport", {
        "resourceType": "DiagnosticReport", "status": "final",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "code": {"text": "report"}, "subject": {"reference": "Patient/patient-1"}}).json()
    r = net.op(task["id"], "complete", report={"valueReference": {
        "reference": f"DiagnosticReport/{unsigned['id']}"}})
    assert r.status_code == 422
    assert "not signed" in r.text
    preliminary = net.admin.post("DiagnosticReport", {
        "resourceType": "DiagnosticReport", "status": "preliminary",
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "code": {"text": "report"}, "subject": {"reference": "Patient/patient-1"}}).json()
    r = net.op(task["id"], "complete", report={"valueReference": {
        "reference": f"DiagnosticReport/{preliminary['id']}"}})
    assert r.status_code == 422
    assert "not final" in r.text
    # a plain PUT to completed without a report is refused the same way
    current = net.read("Task", task["id"])
    r = net.invited.put(f"Task/{task['id']}", {**current, "status": "completed"})
    assert r.status_code == 422
    assert net.read("Task", task["id"])["status"] == "in-progress"


def test_clarification_loop_with_an_attachment(net: Network) -> None:
    _, task = net.file(request())
    tid = task["id"]
    r = net.op(tid, "ask", question={"valueString": "Please send the latest troponin series."})
    assert r.status_code == 201, r.text
    question = r.json()
    assert model.codes(question["category"][0], model.COMMUNICATION_KIND) == [
        "clarification-request"]
    assert question["partOf"] == [{"reference": f"Task/{tid}"}]
    assert question["recipient"] == [{"reference": "PractitionerRole/attending-county"}]
    assert business(net.read("Task", tid)) == "awaiting-information"
    assert net.read("Task", tid)["status"] == "requested"  # the Task waits, no new state

    # the inviting side answers with a plain Communication: text and an attachment
    answer = {
        "resourceType": "Communication", "status": "completed",
        "category": [concept(model.COMMUNICATION_KIND, "clarification-response")],
        "partOf": [{"reference": f"Task/{tid}"}],
        "inResponseTo": [{"reference": f"Communication/{question['id']}"}],
        "payload": [{"contentString": "Troponin I: 0.8, 1.4, 2.1 ng/mL."},
                    {"contentAttachment": {"contentType": "application/pdf",
                                           "title": "troponin.pdf",
                                           "data": base64.b64encode(b"%PDF-1.4").decode()}}],
    }
    r = net.invited.post("Communication", answer)
    assert r.status_code == 403  # answers come from the inviting side
    r = net.requester.post("Communication", answer)
    assert r.status_code == 201, r.text
    assert r.json()["payload"][1]["contentAttachment"]["title"] == "troponin.pdf"
    assert business(net.read("Task", tid)) == "information-provided"

    # the same loop through the operations
    r = net.op(tid, "ask", question={"valueString": "And the echocardiogram?"})
    assert r.status_code == 201
    r = net.op(tid, "answer", client=net.requester, answer={"valueString": "Attached."},
               attachment={"valueAttachment": {"contentType": "image/jpeg", "title": "echo.jpg",
                                               "data": "AAAA"}})
    assert r.status_code == 201, r.text
    assert r.json()["inResponseTo"] == [{"reference": "Communication/"
                                         + net.search("Communication", **{
                                             "part-of": f"Task/{tid}",
                                             "category": f"{model.COMMUNICATION_KIND}|"
                                                         "clarification-request",
                                             "_sort": "-_lastUpdated"})[0]["id"]}]
    assert r.json()["payload"][1]["contentAttachment"]["title"] == "echo.jpg"
    assert business(net.read("Task", tid)) == "information-provided"
    # a clarification without a Task, or on a finished one, is refused
    bad = {k: v for k, v in answer.items() if k != "partOf"}
    assert net.requester.post("Communication", bad).status_code == 422
    reason = concept(model.DECLINE_REASON, "records-not-acceptable")
    net.op(tid, "decline", reason={"valueCodeableConcept": reason})
    assert net.op(tid, "ask", question={"valueString": "?"}).status_code == 409


def test_redirect_replaces_the_request(net: Network) -> None:
    sr, task = net.file(request())
    r = net.op(task["id"], "redirect", organization={"valueReference": {
        "reference": "Organization/capital"}}, expert={"valueReference": {
            "reference": "PractitionerRole/expert-capital"}})
    assert r.status_code == 201, r.text
    new_task = r.json()
    assert new_task["status"] == "requested"
    assert new_task["owner"] == {"reference": "Organization/capital"}
    new_sr = net.read("ServiceRequest", new_task["focus"]["reference"].split("/")[1])
    assert new_sr["replaces"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert {"reference": "PractitionerRole/expert-capital"} in new_sr["performer"]
    assert net.read("ServiceRequest", sr["id"])["status"] == "revoked"
    old = net.read("Task", task["id"])
    assert old["status"] == "cancelled"
    assert "restriction" not in old
    assert f"ServiceRequest/{new_sr['id']}" in old["statusReason"]["text"]


def test_redirect_refused_when_the_new_request_breaks_a_rule(net: Network) -> None:
    sr, task = net.file(request(specialty="pulmonology"))
    # capital is not licensed for pulmonology
    r = net.op(task["id"], "redirect", organization={"valueReference": {
        "reference": "Organization/capital"}})
    assert r.status_code == 422
    assert "[invited-licensed-scope]" in r.text
    assert net.read("Task", task["id"])["status"] == "requested"
    assert net.read("ServiceRequest", sr["id"])["status"] == "active"
    assert len(net.search("ServiceRequest")) == 1


def test_assign_from_the_roster(net: Network) -> None:
    _, task = net.file(request())
    net.op(task["id"], "accept")
    # expert-cardio and expert-cardio-2 are both on duty; the first free wins, ties by id
    r = net.op(task["id"], "assign")
    assert r.status_code == 200, r.text
    assert r.json()["owner"] == {"reference": "PractitionerRole/expert-cardio"}


def test_assign_names_a_substitute_when_the_expert_is_off_duty(net: Network) -> None:
    _, task = net.file(request(expert="expert-cardio"))
    net.op(task["id"], "accept")
    for slot in net.search("Slot", schedule="Schedule/roster-expert-cardio"):
        net.put({**slot, "status": "busy"})  # fully booked this month
    r = net.op(task["id"], "assign")
    assert r.status_code == 200, r.text
    assigned = r.json()
    assert assigned["owner"] == {"reference": "PractitionerRole/expert-cardio-2"}
    assert "substitutes for PractitionerRole/expert-cardio" in assigned["note"][-1]["text"]


def test_assign_refused_when_nobody_is_on_duty(net: Network) -> None:
    _, task = net.file(request(specialty="neurology"))
    net.op(task["id"], "accept")
    for slot in net.search("Slot", schedule="Schedule/roster-expert-neuro"):
        net.put({**slot, "status": "busy"})
    r = net.op(task["id"], "assign")
    assert r.status_code == 422
    assert "[no-expert-available]" in r.text
    assert "owner" in net.read("Task", task["id"]) and net.read("Task", task["id"])[
        "owner"] == {"reference": "Organization/regional"}


def test_assign_refuses_an_ineligible_expert(net: Network) -> None:
    _, task = net.file(request())
    net.op(task["id"], "accept")
    r = net.op(task["id"], "assign", expert={"valueReference": {
        "reference": "PractitionerRole/expert-junior"}})
    assert r.status_code == 422
    assert "[expert-experience]" in r.text
    r = net.invited.put(f"Task/{task['id']}", {**net.read("Task", task["id"]), "owner": {
        "reference": "PractitionerRole/expert-neuro"}})
    assert r.status_code == 422
    assert "[expert-specialty]" in r.text


def test_schedule_only_in_free_slots(net: Network) -> None:
    _, task = net.file(request())
    net.op(task["id"], "accept")
    net.op(task["id"], "assign")
    r = net.op(task["id"], "schedule", start={"valueDateTime": "2026-03-10T12:30:00+08:00"},
               end={"valueDateTime": "2026-03-10T13:30:00+08:00"})  # lunch, off duty
    assert r.status_code == 422
    assert "[roster]" in r.text
    assert net.count("Appointment") == 0 and net.count("Encounter") == 0


def test_reschedule_at_least_two_hours_ahead(net: Network) -> None:
    _, task = net.file(request())
    net.op(task["id"], "accept")
    net.op(task["id"], "assign")
    r = net.op(task["id"], "schedule", start={"valueDateTime": "2026-03-10T09:30:00+08:00"},
               end={"valueDateTime": "2026-03-10T10:30:00+08:00"})
    [appointment_id] = outputs(r.json(), "Appointment")
    # 3 h ahead: may move (to the afternoon block, another slot)
    net.clock.set(utc("2026-03-10T06:30:00+08:00"))
    r = net.op(task["id"], "schedule", start={"valueDateTime": "2026-03-10T14:00:00+08:00"},
               end={"valueDateTime": "2026-03-10T15:00:00+08:00"})
    assert r.status_code == 200, r.text
    assert business(r.json()) == "rescheduled"
    assert outputs(r.json(), "Appointment") == [appointment_id]
    assert net.read("Slot", "slot-expert-cardio-10-0")["status"] == "free"
    assert net.read("Slot", "slot-expert-cardio-10-1")["status"] == "busy"
    report = next(d for d in deadlines_of(r.json()) if d[0] == "report")
    assert report[1] == utc("2026-03-10T15:30:00+08:00")
    # 1 h 59 min before the new time: too late to move it again
    net.clock.set(utc("2026-03-10T12:01:00+08:00"))
    before = net.read("Appointment", appointment_id)
    r = net.op(task["id"], "schedule", start={"valueDateTime": "2026-03-11T09:00:00+08:00"},
               end={"valueDateTime": "2026-03-11T10:00:00+08:00"})
    assert r.status_code == 422
    assert "[reschedule-notice]" in r.text
    after = net.read("Appointment", appointment_id)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]
    assert net.read("Slot", "slot-expert-cardio-11-0")["status"] == "free"
    # once booked, the expert does not change
    r = net.invited.put(f"Task/{task['id']}", {**net.read("Task", task["id"]), "owner": {
        "reference": "PractitionerRole/expert-cardio-2"}})
    assert r.status_code == 409
    # the same rule on a plain update of the Appointment
    moved = {**after, "start": "2026-03-11T09:00:00+08:00", "end": "2026-03-11T10:00:00+08:00"}
    r = net.admin.put(f"Appointment/{appointment_id}", moved)
    assert r.status_code == 422
    assert "[reschedule-notice]" in r.text


def deadlines_of(task: dict[str, Any]) -> list[tuple[str, Any, Any]]:
    out = []
    for ext in model.extensions(task, model.EXT_DEADLINE):
        parts = {e["url"]: e for e in ext["extension"]}
        out.append((parts["kind"]["valueCoding"]["code"], utc(parts["due"]["valueDateTime"]),
                    utc(parts["met"]["valueDateTime"]) if "met" in parts else None))
    return out


def test_profile_of_the_created_task(net: Network) -> None:
    profiles = pytest.importorskip("server.workflow.profiles")
    _, task = net.file(request(priority="urgent", channel="phone", records=False))
    assert model.CONSULTATION_TASK in task["meta"]["profile"]
    assert [i for i in profiles.validate_against(task, model.CONSULTATION_TASK)
            if i.severity == "error"] == []


def test_overdue_as_the_clock_advances(net: Network) -> None:
    _, routine = net.file(request())
    _, urgent = net.file(request(priority="urgent"))

    def overdue(client: Fhir | None = None, **params: str) -> list[str]:
        r = (client or net.admin).get("Task/$overdue", params=params)
        assert r.status_code == 200, r.text
        assert r.json()["type"] == "searchset"
        return [e["resource"]["id"] for e in r.json().get("entry", [])]

    assert overdue() == []
    advance(net, hours=2, minutes=1)  # the urgent expert was due within 2 h (same region)
    assert overdue() == [urgent["id"]]
    assert overdue(organization="Organization/county") == [urgent["id"]]
    assert overdue(organization="tehran-hc") == []
    net.op(urgent["id"], "accept")
    net.op(urgent["id"], "assign")
    assert overdue() == []
    net.clock.set(utc("2026-03-10T00:00:01+08:00"))  # routine acceptance due at midnight
    assert overdue() == [routine["id"]]
    net.op(routine["id"], "accept")
    assert overdue() == []
    net.clock.set(utc("2026-03-10T10:00:01+08:00"))  # routine expert due within 24 h
    assert overdue() == [routine["id"]]
    # the deadline search parameter finds the same, where the server has it
    r = net.admin.get("Task", params={"deadline": "lt2026-03-10T02:00:01Z",
                                      "status": "accepted"})
    if r.status_code == 200:
        assert [e["resource"]["id"] for e in r.json().get("entry", [])] == [routine["id"]]


def test_operations_are_published(net: Network) -> None:
    definition = net.read("OperationDefinition", "Task-schedule")
    assert definition["url"] == f"{model.BASE}/OperationDefinition/Task-schedule"
    assert {p["name"] for p in definition["parameter"] if p["use"] == "in"} >= {"start", "end"}
    capability = net.admin.get("metadata").json()
    task = next(r for r in capability["rest"][0]["resource"] if r["type"] == "Task")
    names = {o["name"] for o in task.get("operation", [])}
    assert {"accept", "decline", "assign", "schedule", "start", "complete", "cancel", "ask",
            "answer", "redirect", "overdue"} <= names

"""Two-way referral through HTTP: the request's rules, the Task's confirmations and transfers by
the right side, the in/out register, and same-level results (Inner Mongolia rules A4)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.clock import FixedClock
from server.workflow import model
from tests.conftest import Fhir, issue_token
from tests.referral_network import Network, build, consent, referral, results_for_down_referral

NOW = datetime(2026, 7, 10, 2, 0, tzinfo=UTC)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(NOW)


@pytest.fixture
def net(settings, clock):  # type: ignore[no-untyped-def]
    app = create_app(settings, clock=clock)
    with TestClient(app) as http:
        network = build(Fhir(http, issue_token(settings)), settings)
        results_for_down_referral(network)
        yield network


def count(net: Network, type_: str, **search: str) -> int:
    r = net.fhir.get(type_, params={**search, "_summary": "count"})
    assert r.status_code == 200, r.text
    return r.json()["total"]  # type: ignore[no-any-return]


def task_of(net: Network, request_id: str) -> dict[str, Any]:
    bundle = net.fhir.get("Task", params={"focus": f"ServiceRequest/{request_id}"}).json()
    assert bundle["total"] == 1, bundle
    return bundle["entry"][0]["resource"]  # type: ignore[no-any-return]


def business_status(task: dict[str, Any]) -> str:
    return task["businessStatus"]["coding"][0]["code"]  # type: ignore[no-any-return]


def steps(task: dict[str, Any]) -> dict[str, str]:
    return {o["type"]["coding"][0]["code"]: o["valueDateTime"] for o in task.get("output", [])}


def send(net: Network, sr: dict[str, Any], as_: str) -> Any:
    return net.as_user(as_).post("ServiceRequest", sr)


def up_referral(net: Network, **kw: Any) -> dict[str, Any]:
    return referral(net, "up", "gp", "centre", "critical-emergency", ["consent"], **kw)


def down_referral(net: Network, supporting: list[str] | None = None) -> dict[str, Any]:
    return referral(net, "down", "surgeon", "banner", "rehabilitation",
                    ["guardian-consent", "hba1c", "plan", "rehab-plan"]
                    if supporting is None else supporting)


def op(net: Network, as_: str, task_id: str, name: str, **params: str) -> Any:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": k, ("valueDateTime" if k == "date" else "valueCode"): v}
        for k, v in params.items()]}
    return net.as_user(as_).post(f"Task/{task_id}/${name}", body if params else None)


# -- the whole lifecycle ---------------------------------------------------------------------------

def test_up_referral_lifecycle(net, clock) -> None:  # type: ignore[no-untyped-def]
    r = send(net, up_referral(net), "gp")
    assert r.status_code == 201, r.text
    sr = r.json()
    task = task_of(net, sr["id"])
    assert task["status"] == "requested"
    assert business_status(task) == "referral-form-completed"
    assert task["code"]["coding"][0] == {"system": model.CONSULTATION_TYPE, "code": "referral"}
    assert task["requester"] == {"reference": net.ref("gp")}
    assert task["owner"] == {"reference": net.ref("centre")}
    assert task["for"] == {"reference": net.ref("patient")}
    assert task["authoredOn"] == "2026-07-10T02:00:00Z"
    tid = task["id"]
    # one Task per referral, made by the server
    second = {k: v for k, v in task.items() if k not in ("id", "meta")}
    assert net.fhir.post("Task", second).status_code == 409
    assert count(net, "Task", focus=f"ServiceRequest/{sr['id']}") == 1

    # the transfer needs both confirmations first
    r = op(net, "gp", tid, "transfer-out")
    assert r.status_code == 422 and "[referral-step-order]" in r.text
    # each side confirms for itself only
    r = op(net, "gp", tid, "confirm", side="receiver")
    assert r.status_code == 403 and "[referral-side]" in r.text
    clock.advance(timedelta(hours=1))
    r = op(net, "surgeon", tid, "confirm")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "accepted"
    assert business_status(r.json()) == "confirmed-by-receiver"
    assert steps(r.json()) == {"confirmed-by-receiver": "2026-07-10T03:00:00Z"}
    r = op(net, "gp", tid, "confirm")
    assert r.status_code == 200
    assert business_status(r.json()) == "confirmed-by-sender"
    assert op(net, "gp", tid, "confirm").status_code == 409  # once is enough

    # the receiving side cannot send the patient off; the sending side does
    assert op(net, "surgeon", tid, "transfer-out").status_code == 403
    clock.advance(timedelta(hours=2))
    r = op(net, "gp", tid, "transfer-out", date="2026-07-10T12:30:00+08:00")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["status"] == "in-progress"
    assert business_status(out) == "transferred-out"
    assert out["executionPeriod"] == {"start": "2026-07-10T12:30:00+08:00"}

    # arrival is registered by the receiving side only
    assert op(net, "gp", tid, "transfer-in").status_code == 403
    clock.advance(timedelta(hours=3))
    r = op(net, "surgeon", tid, "transfer-in")
    assert r.status_code == 200
    done = r.json()
    assert done["status"] == "completed"
    assert done["executionPeriod"] == {"start": "2026-07-10T12:30:00+08:00",
                                       "end": "2026-07-10T08:00:00Z"}
    assert set(steps(done)) == {"confirmed-by-sender", "confirmed-by-receiver",
                                "transferred-out", "transferred-in"}
    # the referral is fulfilled with it
    assert net.fhir.get(f"ServiceRequest/{sr['id']}").json()["status"] == "completed"

    # a completed referral is closed
    done["note"] = [{"text": "late remark"}]
    r = net.fhir.put(f"Task/{tid}", done)
    assert r.status_code == 422 and "[referral-task-closed]" in r.text
    assert net.fhir.delete(f"Task/{tid}").status_code == 409

    # every change left a Provenance naming the step and who did it
    trail = net.fhir.get("Provenance", params={"target": f"Task/{tid}"}).json()
    activities = {e["resource"]["activity"]["coding"][0]["code"]: e["resource"]
                  for e in trail["entry"]}
    assert set(activities) == {"CREATE", "confirmed-by-receiver", "confirmed-by-sender",
                               "transferred-out", "transferred-in"}
    assert activities["transferred-in"]["agent"][0]["who"] == {"reference": net.ref("surgeon")}
    assert activities["transferred-in"]["target"] == [{"reference": f"Task/{tid}/_history/5"}]
    # the request's creation and its completion
    assert count(net, "Provenance", target=f"ServiceRequest/{sr['id']}") == 2


def test_down_referral_lifecycle_through_plain_updates(net) -> None:  # type: ignore[no-untyped-def]
    r = send(net, down_referral(net), "surgeon")
    assert r.status_code == 201, r.text
    task = task_of(net, r.json()["id"])
    tid = task["id"]
    banner = net.as_user("gp")  # the receiving side of a down-referral
    centre = net.as_user("surgeon")

    # setting businessStatus records the step, checked for the side like the operations
    task["businessStatus"] = {"coding": [{"system": model.BUSINESS_STATUS,
                                          "code": "confirmed-by-sender"}]}
    r = banner.put(f"Task/{tid}", task)
    assert r.status_code == 403 and "[referral-side]" in r.text
    r = centre.put(f"Task/{tid}", task)
    assert r.status_code == 200, r.text
    task = r.json()
    assert steps(task) == {"confirmed-by-sender": "2026-07-10T02:00:00Z"}
    assert task["status"] == "requested"

    # the receiving side, named by its Practitioner rather than the role
    as_practitioner = net.as_user("gp-practitioner")
    task["output"].append({"type": {"coding": [{"system": model.BUSINESS_STATUS,
                                                "code": "confirmed-by-receiver"}]},
                           "valueDateTime": "2026-07-10T09:45:00+08:00"})
    r = as_practitioner.put(f"Task/{tid}", task)
    assert r.status_code == 200, r.text
    task = r.json()
    assert task["status"] == "accepted"
    assert business_status(task) == "confirmed-by-receiver"

    # recorded steps stay as they are
    forged = {**task, "output": task["output"][:1]}
    r = centre.put(f"Task/{tid}", forged)
    assert r.status_code == 422 and "[referral-step-recorded]" in r.text
    # the Task stays tied to its referral
    r = centre.put(f"Task/{tid}", {**task, "owner": {"reference": net.ref("city")}})
    assert r.status_code == 422 and "[referral-task-fixed]" in r.text
    # a status that the recorded steps do not support
    r = centre.put(f"Task/{tid}", {**task, "status": "completed"})
    assert r.status_code == 422 and "[referral-status]" in r.text

    assert op(net, "surgeon", tid, "transfer-out").status_code == 200
    r = op(net, "gp", tid, "transfer-in", date="2026-07-09T00:00:00Z")
    assert r.status_code == 422 and "precede" in r.text
    assert op(net, "gp", tid, "transfer-in").json()["status"] == "completed"


def test_receiver_rejects_and_sender_cancels(net) -> None:  # type: ignore[no-untyped-def]
    first = task_of(net, send(net, up_referral(net), "gp").json()["id"])
    reason = {"coding": [{"system": model.DECLINE_REASON, "code": "outside-licensed-scope"}]}
    r = net.as_user("gp").put(f"Task/{first['id']}", {**first, "status": "rejected",
                                                       "statusReason": reason})
    assert r.status_code == 403  # only the receiving side rejects
    r = net.as_user("surgeon").put(f"Task/{first['id']}", {**first, "status": "rejected"})
    assert r.status_code == 422  # with a reason
    r = net.as_user("surgeon").put(f"Task/{first['id']}", {**first, "status": "rejected",
                                                           "statusReason": reason})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    request = net.fhir.get(first["focus"]["reference"]).json()
    assert request["status"] == "revoked"
    trail = net.fhir.get("Provenance", params={"target": f"Task/{first['id']}"}).json()
    rejection = [e["resource"] for e in trail["entry"]
                 if e["resource"]["activity"]["coding"][0]["code"] == "rejected"]
    assert rejection and rejection[0]["reason"] == [reason]

    second = task_of(net, send(net, up_referral(net), "gp").json()["id"])
    withdrawn = {"coding": [{"system": model.CANCEL_REASON, "code": "patient-improved"}]}
    r = net.as_user("surgeon").put(f"Task/{second['id']}", {
        **second, "status": "cancelled", "statusReason": withdrawn})
    assert r.status_code == 403  # only the sending side cancels
    r = net.as_user("gp").put(f"Task/{second['id']}", {
        **second, "status": "cancelled", "statusReason": withdrawn})
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    assert op(net, "surgeon", second["id"], "confirm").status_code == 422


def test_a_draft_referral_is_checked_when_it_becomes_active(net) -> None:  # type: ignore[no-untyped-def]
    draft = referral(net, "up", "gp", "centre", None, [], status="draft")
    r = send(net, draft, "gp")
    assert r.status_code == 201
    sr = r.json()
    assert count(net, "Task", focus=f"ServiceRequest/{sr['id']}") == 0
    r = net.as_user("gp").put(f"ServiceRequest/{sr['id']}", {**sr, "status": "active"})
    assert r.status_code == 422
    assert "[referral-indication]" in r.text and "[referral-consent]" in r.text
    ready = {**up_referral(net), "id": sr["id"]}
    r = net.as_user("gp").put(f"ServiceRequest/{sr['id']}", ready)
    assert r.status_code == 200, r.text
    assert task_of(net, sr["id"])["status"] == "requested"


def test_system_clients_say_which_side_confirms(net) -> None:  # type: ignore[no-untyped-def]
    task = task_of(net, send(net, up_referral(net), "gp").json()["id"])
    system = Fhir(net.fhir.http, issue_token(net.settings, "system/*.cruds"))
    r = system.post(f"Task/{task['id']}/$confirm")
    assert r.status_code == 400  # either side could be meant
    body = {"resourceType": "Parameters", "parameter": [{"name": "side",
                                                         "valueCode": "receiver"}]}
    r = system.post(f"Task/{task['id']}/$confirm", body)
    assert r.status_code == 200 and business_status(r.json()) == "confirmed-by-receiver"
    # only the sender's confirmation is missing now
    r = system.post(f"Task/{task['id']}/$confirm")
    assert r.status_code == 200 and business_status(r.json()) == "confirmed-by-sender"
    stranger = Fhir(net.fhir.http, issue_token(net.settings, "user/*.cruds",
                                               fhirUser=net.ref("internist")))
    assert stranger.post(f"Task/{task['id']}/$transfer-out").status_code == 403


# -- refusals --------------------------------------------------------------------------------------

def _without_direction(net: Network) -> dict[str, Any]:
    sr = up_referral(net)
    del sr["extension"]
    return sr


def _expired_consent(net: Network) -> dict[str, Any]:
    net.add("old-consent", consent(net.ref("patient"), net.ref("patient"),
                                   period={"start": "2025-01-01", "end": "2026-06-30"}))
    return referral(net, "up", "gp", "centre", "critical-emergency", ["old-consent"])


def _consultation_consent(net: Network) -> dict[str, Any]:
    net.add("tm-consent", consent(net.ref("patient"), net.ref("patient"),
                                  category="telemedicine-consultation"))
    return referral(net, "up", "gp", "centre", "critical-emergency", ["tm-consent"])


def _stranger_consent(net: Network) -> dict[str, Any]:
    net.add("stranger-consent", consent(net.ref("patient"), net.ref("stranger")))
    return referral(net, "up", "gp", "centre", "critical-emergency", ["stranger-consent"])


def _inactive_consent(net: Network) -> dict[str, Any]:
    net.add("withdrawn", consent(net.ref("patient"), net.ref("patient"), status="inactive"))
    return referral(net, "up", "gp", "centre", "critical-emergency", ["withdrawn"])


def _other_patients_consent(net: Network) -> dict[str, Any]:
    net.add("their-consent", consent(net.ref("other-patient"), net.ref("other-patient")))
    return referral(net, "up", "gp", "centre", "critical-emergency", ["their-consent"])


def _performer_is_a_role(net: Network) -> dict[str, Any]:
    sr = up_referral(net)
    sr["performer"] = [{"reference": net.ref("surgeon")}]
    return sr


def _missing_record(net: Network) -> dict[str, Any]:
    sr = up_referral(net)
    sr["supportingInfo"].append({"reference": "Observation/not-there"})
    return sr


def _someone_elses_result(net: Network) -> dict[str, Any]:
    net.add("their-result", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "glucose"},
                             "subject": {"reference": net.ref("other-patient")}})
    return referral(net, "down", "surgeon", "banner", "rehabilitation",
                    ["guardian-consent", "their-result", "plan", "rehab-plan"])


REFUSALS = {
    "no direction": ("gp", _without_direction, "referral-direction"),
    "no indication": ("gp", lambda n: referral(n, "up", "gp", "centre", None, ["consent"]),
                      "referral-indication"),
    "down indication going up": ("gp", lambda n: referral(
        n, "up", "gp", "centre", "common-disease", ["consent"]), "referral-indication"),
    "up indication going down": ("surgeon", lambda n: referral(
        n, "down", "surgeon", "banner", "critical-emergency",
        ["guardian-consent", "hba1c", "plan", "rehab-plan"]), "referral-indication"),
    "up to the same level": ("internist", lambda n: referral(
        n, "up", "internist", "city2", "equipment-limits", ["consent"]), "referral-care-level"),
    "up to a lower level": ("internist", lambda n: referral(
        n, "up", "internist", "banner", "equipment-limits", ["consent"]), "referral-care-level"),
    "down to a higher level": ("internist", lambda n: referral(
        n, "down", "internist", "centre", "follow-up-only",
        ["consent", "hba1c", "plan", "rehab-plan"]), "referral-care-level"),
    "no consent": ("gp", lambda n: referral(n, "up", "gp", "centre", "critical-emergency",
                                            ["hba1c"]), "referral-consent"),
    "expired consent": ("gp", _expired_consent, "referral-consent"),
    "inactive consent": ("gp", _inactive_consent, "referral-consent"),
    "consultation consent only": ("gp", _consultation_consent, "referral-consent"),
    "consent by a stranger": ("gp", _stranger_consent, "referral-consent"),
    "another patient's consent": ("gp", _other_patients_consent, "referral-consent"),
    "receiver is not an organisation": ("gp", _performer_is_a_role, "referral-receiver"),
    "sender is not a role": ("gp", lambda n: {**up_referral(n), "requester": {
        "reference": n.ref("gp-practitioner")}}, "referral-sender"),
    "a record that does not exist": ("gp", _missing_record, "referral-supporting-info"),
    "another patient's result": ("surgeon", _someone_elses_result, "referral-supporting-info"),
    "down without results": ("surgeon", lambda n: down_referral(
        n, ["guardian-consent", "plan", "rehab-plan"]), "referral-results"),
    "down without a plan": ("surgeon", lambda n: down_referral(
        n, ["guardian-consent", "hba1c", "rehab-note"]), "referral-plan"),
    "down without rehabilitation guidance": ("surgeon", lambda n: down_referral(
        n, ["guardian-consent", "hba1c", "plan"]), "referral-rehabilitation"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refusals_name_the_rule_and_store_nothing(net, case: str) -> None:  # type: ignore[no-untyped-def]
    sender, make, rule = REFUSALS[case]
    sr = make(net)
    before = {t: count(net, t) for t in ("ServiceRequest", "Task", "Provenance")}
    r = send(net, sr, sender)
    assert r.status_code == 422, r.text
    outcome = r.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert any(i["diagnostics"].startswith(f"[{rule}]") for i in outcome["issue"]), outcome
    assert {t: count(net, t) for t in before} == before


@pytest.mark.parametrize("supporting", [
    ["guardian-consent", "hba1c", "plan", "rehab-plan"],
    ["consent", "hba1c", "plan", "rehab-note"],
    ["consent", "hba1c", "rehab-plan"],  # one rehabilitation CarePlan is the plan as well
])
def test_down_referral_guidance_forms(net, supporting: list[str]) -> None:  # type: ignore[no-untyped-def]
    r = send(net, down_referral(net, supporting), "surgeon")
    assert r.status_code == 201, r.text


def test_authority_defined_indication_goes_both_ways(net) -> None:  # type: ignore[no-untyped-def]
    up = referral(net, "up", "gp", "city", "authority-defined", ["consent"])
    assert send(net, up, "gp").status_code == 201
    down = referral(net, "down", "surgeon", "city", "authority-defined",
                    ["consent", "hba1c", "plan", "rehab-note"])
    assert send(net, down, "surgeon").status_code == 201


# -- the register ----------------------------------------------------------------------------------

def _transfer(net: Network, clock: FixedClock, sr: dict[str, Any], sender: str,
              receiver: str, out_at: datetime, in_at: datetime | None) -> str:
    clock.set(out_at - timedelta(hours=1))
    r = send(net, sr, sender)
    assert r.status_code == 201, r.text
    tid = task_of(net, r.json()["id"])["id"]
    assert op(net, receiver, tid, "confirm").status_code == 200
    assert op(net, sender, tid, "confirm").status_code == 200
    clock.set(out_at)
    assert op(net, sender, tid, "transfer-out").status_code == 200
    if in_at is not None:
        clock.set(in_at)
        assert op(net, receiver, tid, "transfer-in").status_code == 200
    return tid


def register(net: Network, org: str, **query: str) -> list[str]:
    oid = net.ref(org).split("/")[1]
    r = net.fhir.get(f"Organization/{oid}/$referral-register", params=query)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["type"] == "searchset"
    matches = [e["resource"]["id"] for e in bundle.get("entry", [])
               if e["search"]["mode"] == "match"]
    assert bundle["total"] == len(matches)
    included = {e["resource"]["resourceType"] for e in bundle.get("entry", [])
                if e["search"]["mode"] == "include"}
    assert included <= {"ServiceRequest"}
    return matches


def test_register_of_transfers_out_and_in(net, clock) -> None:  # type: ignore[no-untyped-def]
    july = _transfer(net, clock, up_referral(net), "gp", "surgeon",
                     datetime(2026, 7, 12, 1, 0, tzinfo=UTC), datetime(2026, 7, 12, 6, 0,
                                                                        tzinfo=UTC))
    # leaves on 31 July in UTC, which is 1 August in the organisations' zone (UTC+8)
    august = _transfer(net, clock, up_referral(net), "gp", "surgeon",
                       datetime(2026, 7, 31, 17, 0, tzinfo=UTC),
                       datetime(2026, 8, 2, 3, 0, tzinfo=UTC))
    back = _transfer(net, clock, down_referral(net), "surgeon", "gp",
                     datetime(2026, 8, 20, 2, 0, tzinfo=UTC), None)
    assert register(net, "banner", period="2026-07", direction="out") == [july]
    assert register(net, "banner", period="2026-08", direction="out") == [august]
    assert register(net, "banner", period="2026-Q3", direction="out") == [july, august]
    assert register(net, "centre", period="2026-Q3", direction="in") == [july, august]
    assert register(net, "centre", period="2026-08-20", direction="out") == [back]
    # not yet arrived: not in the banner hospital's register of transfers in
    assert register(net, "banner", period="2026", direction="in") == []
    assert register(net, "banner", period="2026-Q3") == [july, august]
    assert register(net, "city", period="2026") == []
    assert register(net, "banner", period="2026-07-01/2026-07-31", direction="out") == [july]
    oid = net.ref("banner").split("/")[1]
    assert net.fhir.get(f"Organization/{oid}/$referral-register",
                        params={"period": "July"}).status_code == 400
    assert net.fhir.get(f"Organization/{oid}/$referral-register",
                        params={"direction": "sideways"}).status_code == 400


# -- recognised results ----------------------------------------------------------------------------

def test_recognized_results_come_from_the_same_care_level(net) -> None:  # type: ignore[no-untyped-def]
    patient = net.ref("patient")

    def result(name: str, **fields: Any) -> str:
        body = {"resourceType": "Observation", "status": "final",
                "code": {"text": name}, "subject": {"reference": patient}, **fields}
        return net.add(name, body).split("/")[1]

    by_role = result("city-lab", performer=[{"reference": net.ref("internist")}])
    by_org = result("city2-lab", performer=[{"reference": net.ref("city2")}])
    result("city2-pending", status="preliminary", performer=[{"reference": net.ref("city2")}])
    encounter = net.add("visit", {"resourceType": "Encounter", "status": "finished",
                                  "class": {"system": "http://terminology.hl7.org/CodeSystem/"
                                                      "v3-ActCode", "code": "AMB"},
                                  "subject": {"reference": patient},
                                  "serviceProvider": {"reference": net.ref("banner")}})
    banner = result("banner-lab", encounter={"reference": encounter})
    report = net.add("city2-report", {
        "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "CT chest"},
        "subject": {"reference": patient}, "performer": [{"reference": net.ref("city2")}]})
    result("unknown-origin")
    # hba1c (made at the level-3 centre) is the patient's other result

    def recognized(who: Fhir, **query: str) -> set[str]:
        pid = patient.split("/")[1]
        r = who.get(f"Patient/{pid}/$recognized-results", params=query)
        assert r.status_code == 200, r.text
        return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in r.json().get("entry", [])}

    level2 = {f"Observation/{by_role}", f"Observation/{by_org}", report}
    assert recognized(net.fhir, organization=net.ref("city")) == level2
    assert recognized(net.fhir, organization=net.ref("city2").split("/")[1]) == level2
    assert recognized(net.as_user("internist2")) == level2  # the token's organisation
    assert recognized(net.as_user("gp")) == {f"Observation/{banner}"}
    assert recognized(net.fhir, organization=net.ref("centre")) == {net.ref("hba1c")}
    pid = patient.split("/")[1]
    assert net.fhir.get(f"Patient/{pid}/$recognized-results").status_code == 400

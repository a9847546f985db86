"""Every deadline rule with an injected clock: the 15:00 cut-off in the inviting organisation's
zone (Asia/Shanghai, Asia/Tehran at UTC+03:30), routine and urgent, inside and outside the
region, the primary-level workflow, papers by phone or e-mail, the report after the session,
met times, the current step and what is overdue. Expected times come from the rules (IM A1
二(一), 二(二)2; A7 第二部分 一(一)1, 一(三)1, 二(二)2), written out by hand."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from server.workflow import model
from tests.consultation_network import Network, open_network, request, utc


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with open_network(tmp_path) as network:
        yield network


def deadlines(task: dict[str, Any]) -> dict[str, tuple[datetime, datetime | None]]:
    """kind -> (due, met) of the Task's deadline extensions, in UTC."""
    out = {}
    for ext in model.extensions(task, model.EXT_DEADLINE):
        parts = {e["url"]: e for e in ext["extension"]}
        assert parts["kind"]["valueCoding"]["system"] == model.DEADLINE_KIND
        met = parts.get("met", {}).get("valueDateTime")
        out[parts["kind"]["valueCoding"]["code"]] = (utc(parts["due"]["valueDateTime"]),
                                                     utc(met) if met else None)
    return out


def due(task: dict[str, Any]) -> dict[str, datetime]:
    return {kind: d for kind, (d, _) in deadlines(task).items()}


def current(task: dict[str, Any]) -> datetime:
    return utc(task["restriction"]["period"]["end"])


def file_at(net: Network, at: str, **kw: Any) -> dict[str, Any]:
    net.clock.set(utc(at))
    requester = kw.get("requester", "attending-county")
    _, task = net.file(request(**kw), client=net.as_user(requester))
    return task


# -- the 15:00 cut-off, in the inviting organisation's zone ------------------------------------

def test_routine_filed_at_1459_in_shanghai(net: Network) -> None:
    task = file_at(net, "2026-03-09T14:59:00+08:00")
    assert due(task) == {
        "acceptance": utc("2026-03-09T16:00:00Z"),  # midnight ending the same day, local
        "expert-assignment": utc("2026-03-10T06:59:00Z"),  # 24 h
        "session": utc("2026-03-11T16:00:00Z"),  # within 2 days: by the end of the 11th
    }
    assert current(task) == utc("2026-03-09T16:00:00Z")


def test_routine_filed_at_1501_in_shanghai(net: Network) -> None:
    task = file_at(net, "2026-03-09T15:01:00+08:00")
    assert due(task)["acceptance"] == utc("2026-03-10T16:00:00Z")  # the next day
    assert due(task)["expert-assignment"] == utc("2026-03-10T07:01:00Z")
    assert current(task) == utc("2026-03-10T07:01:00Z")  # the expert is now due first


def test_routine_filed_at_1459_in_tehran(net: Network) -> None:
    task = file_at(net, "2026-03-09T14:59:00+03:30", requester="attending-tehran",
                   invited="tehran-univ")
    assert due(task) == {
        "acceptance": utc("2026-03-09T20:30:00Z"),  # 24:00 in Tehran
        "expert-assignment": utc("2026-03-10T11:29:00Z"),
        "session": utc("2026-03-11T20:30:00Z"),
    }


def test_routine_filed_at_1501_in_tehran(net: Network) -> None:
    task = file_at(net, "2026-03-09T15:01:00+03:30", requester="attending-tehran",
                   invited="tehran-univ")
    assert due(task)["acceptance"] == utc("2026-03-10T20:30:00Z")


def test_the_same_instant_is_before_the_cutoff_in_tehran_but_not_in_shanghai(
        net: Network) -> None:
    # 11:29Z is 14:59 in Tehran and 19:29 in Shanghai
    tehran = file_at(net, "2026-03-09T11:29:00Z", requester="attending-tehran",
                     invited="tehran-univ")
    shanghai = file_at(net, "2026-03-09T11:29:00Z")
    assert due(tehran)["acceptance"] == utc("2026-03-10T00:00:00+03:30")
    assert due(shanghai)["acceptance"] == utc("2026-03-11T00:00:00+08:00")


# -- urgent, region, primary level ------------------------------------------------------------

def test_urgent_inside_the_region(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", priority="urgent")
    assert due(task) == {
        "acceptance": utc("2026-03-09T04:00:00Z"),  # no later than the expert
        "expert-assignment": utc("2026-03-09T04:00:00Z"),  # 2 h, both in CN-NM
    }  # no fixed session limit outside the primary-level workflow
    assert current(task) == utc("2026-03-09T04:00:00Z")


def test_urgent_outside_the_region(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", priority="urgent", invited="capital")
    assert due(task)["expert-assignment"] == utc("2026-03-09T07:00:00Z")  # 5 h, CN-BJ
    assert "session" not in due(task)


def test_primary_level_routine_session_within_48_hours(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", requester="attending-township")
    assert due(task) == {
        "acceptance": utc("2026-03-09T16:00:00Z"),
        "expert-assignment": utc("2026-03-10T02:00:00Z"),
        "session": utc("2026-03-11T02:00:00Z"),  # 48 h, not the end of a day
    }


def test_primary_level_urgent_session_within_8_hours(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", requester="attending-township",
                   priority="urgent")
    assert due(task)["expert-assignment"] == utc("2026-03-09T04:00:00Z")
    assert due(task)["session"] == utc("2026-03-09T10:00:00Z")


def test_named_expert_sets_the_session_time(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", expert="expert-cardio")
    assert "session" not in due(task)
    assert due(task)["expert-assignment"] == utc("2026-03-10T02:00:00Z")


# -- papers by phone or e-mail ------------------------------------------------------------------

@pytest.mark.parametrize("channel", ["phone", "email"])
def test_urgent_request_by_phone_or_email_gets_its_papers_within_24_hours(
        net: Network, channel: str) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", priority="urgent", channel=channel,
                   records=False)
    assert deadlines(task)["papers"] == (utc("2026-03-10T02:00:00Z"), None)
    net.clock.set(utc("2026-03-09T13:00:00+08:00"))
    sr_id = task["focus"]["reference"].split("/")[1]
    sr = net.read("ServiceRequest", sr_id)
    sr["supportingInfo"] = [{"reference": "DocumentReference/records-1"}]
    r = net.requester.put(f"ServiceRequest/{sr_id}", sr)
    assert r.status_code == 200, r.text
    task = net.read("Task", task["id"])
    assert deadlines(task)["papers"] == (utc("2026-03-10T02:00:00Z"),
                                         utc("2026-03-09T05:00:00Z"))
    assert "businessStatus" not in task  # no longer waiting for paperwork


def test_urgent_platform_request_has_no_papers_deadline(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00", priority="urgent", channel="platform")
    assert "papers" not in due(task)


# -- met times, the current step, the report -----------------------------------------------------

def test_steps_met_and_the_report_30_minutes_after_the_session(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00")
    tid = task["id"]
    net.clock.set(utc("2026-03-09T11:00:00+08:00"))
    task = net.op(tid, "accept").json()
    assert deadlines(task)["acceptance"][1] == utc("2026-03-09T03:00:00Z")
    assert current(task) == utc("2026-03-10T02:00:00Z")  # now the expert
    net.clock.set(utc("2026-03-09T12:00:00+08:00"))
    task = net.op(tid, "assign").json()
    assert deadlines(task)["expert-assignment"][1] == utc("2026-03-09T04:00:00Z")
    assert current(task) == utc("2026-03-11T16:00:00Z")  # now the session
    task = net.op(tid, "schedule", start={"valueDateTime": "2026-03-10T14:00:00+08:00"},
                  end={"valueDateTime": "2026-03-10T15:15:00+08:00"}).json()
    assert deadlines(task)["report"] == (utc("2026-03-10T07:45:00Z"), None)  # end + 30 min
    net.clock.set(utc("2026-03-10T14:00:00+08:00"))
    task = net.op(tid, "start", client=net.expert).json()
    assert deadlines(task)["session"][1] == utc("2026-03-10T06:00:00Z")
    assert current(task) == utc("2026-03-10T07:45:00Z")  # now the report
    # every deadline stays visible, met or not
    assert set(due(task)) == {"acceptance", "expert-assignment", "session", "report"}


def test_report_overdue_after_30_minutes(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00")
    tid = task["id"]
    net.op(tid, "accept")
    net.op(tid, "assign")
    net.op(tid, "schedule", start={"valueDateTime": "2026-03-09T14:00:00+08:00"},
           end={"valueDateTime": "2026-03-09T15:00:00+08:00"})
    net.clock.set(utc("2026-03-09T14:00:00+08:00"))
    net.op(tid, "start", client=net.expert)

    def overdue() -> list[str]:
        r = net.admin.get("Task/$overdue")
        assert r.status_code == 200
        return [e["resource"]["id"] for e in r.json().get("entry", [])]

    net.clock.set(utc("2026-03-09T15:30:00+08:00"))
    assert overdue() == []
    net.clock.set(utc("2026-03-09T15:30:01+08:00"))
    assert overdue() == [tid]


def test_a_final_task_has_no_current_step(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00")
    reason = {"coding": [{"system": model.CANCEL_REASON, "code": "duplicate-request"}]}
    task = net.op(task["id"], "cancel", client=net.requester,
                  reason={"valueCodeableConcept": reason}).json()
    assert "restriction" not in task
    assert set(due(task)) == {"acceptance", "expert-assignment", "session"}  # still shown
    net.clock.set(utc("2026-03-20T10:00:00+08:00"))
    r = net.admin.get("Task/$overdue")
    assert r.json()["total"] == 0


def test_client_cannot_move_a_deadline(net: Network) -> None:
    task = file_at(net, "2026-03-09T10:00:00+08:00")
    forged = {**task, "restriction": {"period": {"end": "2027-01-01T00:00:00Z"}},
              "extension": [{"url": model.EXT_DEADLINE, "extension": [
                  {"url": "kind", "valueCoding": {"system": model.DEADLINE_KIND,
                                                  "code": "acceptance"}},
                  {"url": "due", "valueDateTime": "2027-01-01T00:00:00Z"}]}],
              "status": "received"}
    r = net.invited.put(f"Task/{task['id']}", forged)
    assert r.status_code == 200, r.text
    assert current(r.json()) == utc("2026-03-10T02:00:00Z")  # acceptance met; the expert next
    assert due(r.json())["acceptance"] == utc("2026-03-09T16:00:00Z")

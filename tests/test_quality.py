"""Quality control through HTTP (Inner Mongolia rules A6): the quarter's statistics of an
organisation as a MeasureReport, the evaluation panel's grade, and the rectification Flag of a
third-party operator graded unqualified two quarters in a row."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.fhir.validation import validate_resource
from server.workflow import model
from tests.pool_network import (
    NOW,
    SHANGHAI,
    Network,
    build_consultations,
    open_network,
)

POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"


@pytest.fixture(scope="module")
def stats_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The consultations and referrals of tests.pool_network, read only."""
    with open_network(tmp_path_factory.mktemp("quality")) as network:
        build_consultations(network)
        yield network


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with open_network(tmp_path) as network:
        yield network


def quality(net: Network, org: str, period: str = "2026-Q3") -> dict[str, Any]:
    r = net.admin.get(f"Organization/{org}/$quality", params={"period": period})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def figures(report: dict[str, Any]) -> dict[str, tuple[dict[str, int], Decimal | None]]:
    """Group code -> ({population code: count}, score)."""
    out = {}
    for group in report["group"]:
        [code] = model.codes(group["code"], model.QUALITY_CONTROL)
        counts = {p["code"]["coding"][0]["code"]: p["count"] for p in group["population"]}
        assert all(p["code"]["coding"][0]["system"] == POPULATION for p in group["population"])
        score = group.get("measureScore")
        out[code] = (counts, Decimal(str(score["value"])) if score else None)
    return out


def proportion(numerator: int, denominator: int) -> dict[str, int]:
    return {"numerator": numerator, "denominator": denominator}


def rounded(numerator: int, denominator: int) -> Decimal:
    return (Decimal(numerator) / Decimal(denominator)).quantize(Decimal("0.0001"))


# -- the quarter's statistics ---------------------------------------------------------------------

def test_measure_report_shape(stats_net: Network) -> None:
    report = quality(stats_net, "hospital-a")
    assert report["resourceType"] == "MeasureReport"
    assert (report["status"], report["type"]) == ("complete", "summary")
    assert report["measure"] == model.QUALITY_MEASURE
    assert report["reporter"]["reference"] == "Organization/hospital-a"
    assert report["period"] == {"start": "2026-07-01", "end": "2026-09-30"}
    assert [i for i in validate_resource(report, "MeasureReport")
            if i.severity in ("error", "fatal")] == []
    # the Measure and the CodeSystem it refers to are built in
    measure = stats_net.search("Measure", url=model.QUALITY_MEASURE)
    assert len(measure) == 1
    codes = {model.codes(g["code"], model.QUALITY_CONTROL)[0] for g in measure[0]["group"]}
    assert codes == set(figures(report))


def test_invited_side_figures(stats_net: Network) -> None:
    got = figures(quality(stats_net, "hospital-a"))
    # Q3 requests inviting hospital-a: t1..t8 (t9 is Q2, t10 invites hospital-c, t11 is Q4 in
    # Shanghai though 30 September in UTC)
    assert got["requests-received"] == ({"initial-population": 8}, None)
    assert got["requests-sent"] == ({"initial-population": 0}, None)
    assert got["requests-completed"] == ({"initial-population": 4}, None)  # t1 t2 t3 t8
    # accepted or beyond: t1 t2 t3 t7 t8; declined: t4 t5 t6
    assert got["acceptance-rate"] == (proportion(5, 8), Decimal("0.625"))
    assert got["decline-rate"] == (proportion(3, 8), Decimal("0.375"))
    # acceptance due by the end of the filing day (all filed before 15:00): t2 and t6 were
    # answered 10 days later, the other six within a minute
    assert got["deadline-acceptance"] == (proportion(6, 8), Decimal("0.75"))
    # the expert within 24 h: met in time by t1 t3 t4 t7 t8, late by t2; t6 was declined
    # after its due time without an expert (missed); t5 was declined before it fell due (not
    # counted)
    assert got["deadline-expert-assignment"] == (proportion(5, 7), rounded(5, 7))  # 0.7143
    # the session by the end of the second day (not for named experts: t5 t6 t8): held in
    # time by t1 t3, late by t2; t7 (accepted, no session yet) is overdue on 15 October; t4
    # was declined before it fell due
    assert got["deadline-session"] == (proportion(2, 4), Decimal("0.5"))
    # nothing due of these kinds
    for kind in ("papers", "report", "clarification", "session-preparation"):
        assert got[f"deadline-{kind}"] == (proportion(0, 0), None)
    # no referrals sent, 8 consultations taken part in
    assert got["referral-rate"] == (proportion(0, 8), Decimal(0))
    # latest overall ratings of the received: t1 5, t2 3 (after 1), t8 2
    assert got["satisfaction"] == ({"measure-population": 3}, rounded(5 + 3 + 2, 3))


def test_inviting_side_figures(stats_net: Network) -> None:
    got = figures(quality(stats_net, "hospital-b"))
    assert got["requests-sent"] == ({"initial-population": 9}, None)  # t1..t8 and t10
    assert got["requests-received"] == ({"initial-population": 0}, None)
    assert got["acceptance-rate"] == (proportion(0, 0), None)
    # two up-referrals in Q3 (20 July, 29 September; the one of 30 June is Q2) per 9
    assert got["referral-rate"] == (proportion(2, 9), rounded(2, 9))  # 0.2222
    assert got["satisfaction"] == ({"measure-population": 0}, None)
    q2 = figures(quality(stats_net, "hospital-b", "2026-Q2"))
    assert q2["referral-rate"] == (proportion(1, 1), Decimal(1))  # 30 June; t9


def test_open_request_deadlines_count_once_overdue(stats_net: Network) -> None:
    # t10 (filed 3 September 09:00, still requested) invites hospital-c
    got = figures(quality(stats_net, "hospital-c"))
    assert got["requests-received"] == ({"initial-population": 1}, None)
    assert got["acceptance-rate"] == (proportion(0, 1), Decimal(0))
    for kind in ("acceptance", "expert-assignment", "session"):
        assert got[f"deadline-{kind}"] == (proportion(0, 1), Decimal(0))
    stats_net.at(datetime(2026, 9, 3, 18, 0, tzinfo=SHANGHAI))
    try:  # before any of them fell due (midnight, 09:00 the next day, 6 September)
        early = figures(quality(stats_net, "hospital-c"))
    finally:
        stats_net.at(NOW)
    for kind in ("acceptance", "expert-assignment", "session"):
        assert early[f"deadline-{kind}"] == (proportion(0, 0), None)


def test_quarter_in_the_organisations_zone(stats_net: Network) -> None:
    got = figures(quality(stats_net, "hospital-a", "2026-Q4"))
    assert got["requests-received"] == ({"initial-population": 1}, None)  # t11
    assert got["satisfaction"] == ({"measure-population": 1}, Decimal(1))


@pytest.mark.parametrize(("path", "params", "status"), [
    ("Organization/hospital-a/$quality", {"period": "2026-Q5"}, 400),
    ("Organization/hospital-a/$quality", {"period": "2026-07"}, 400),
    ("Organization/hospital-a/$quality", None, 400),
    ("Organization/hospital-a/$quality", {"period": "2026-Q3", "grade": "x"}, 400),
    ("Organization/nowhere/$quality", {"period": "2026-Q3"}, 404),
])
def test_quality_bad_requests(stats_net: Network, path: str, params: dict[str, str] | None,
                              status: int) -> None:
    r = stats_net.admin.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_quality_needs_a_token(stats_net: Network) -> None:
    r = stats_net.as_user(None).get("Organization/hospital-a/$quality",
                                    params={"period": "2026-Q3"})
    assert r.status_code == 401


# -- grades and rectification ---------------------------------------------------------------------

def grade(net: Network, org: str, period: str, value: str | None, *,
          who: str | None = "officer-qc", note: str | None = None) -> Any:
    params: list[dict[str, Any]] = [{"name": "period", "valueString": period}]
    if value is not None:
        params.append({"name": "grade", "valueCode": value})
    if note:
        params.append({"name": "note", "valueString": note})
    client = net.admin if who is None else net.as_user(who)
    return client.post(f"Organization/{org}/$grade",
                       {"resourceType": "Parameters", "parameter": params})


def flags(net: Network, org: str) -> list[dict[str, Any]]:
    return net.search("Flag", subject=f"Organization/{org}")


def active_flags(net: Network, org: str) -> list[dict[str, Any]]:
    return [f for f in flags(net, org) if f["status"] == "active"]


def test_grade_is_recorded(net: Network) -> None:
    r = grade(net, "hospital-b", "2026-Q3", "excellent", note="Defence passed")
    assert r.status_code == 201, r.text
    obs = r.json()
    assert obs["resourceType"] == "Observation"
    assert obs["status"] == "final"
    assert model.has_code(obs["code"], model.QUALITY_CONTROL, "quality-grade")
    assert obs["focus"] == [{"reference": "Organization/hospital-b"}]
    assert obs["effectivePeriod"] == {"start": "2026-07-01", "end": "2026-09-30"}
    assert model.codes(obs["valueCodeableConcept"], model.QUALITY_GRADE) == ["excellent"]
    assert obs["performer"] == [{"reference": "Organization/qc"}]
    assert obs["note"][0]["text"] == "Defence passed"
    [prov] = net.search("Provenance", target=f"Observation/{obs['id']}")
    assert prov["agent"][0]["who"] == {"reference": "PractitionerRole/officer-qc"}
    # grading the quarter again amends the same Observation
    r = grade(net, "hospital-b", "2026-Q3", "qualified")
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["status"]) == (obs["id"], "amended")
    found = net.search("Observation", focus="Organization/hospital-b")
    assert len(found) == 1
    assert model.codes(found[0]["valueCodeableConcept"], model.QUALITY_GRADE) == ["qualified"]
    assert active_flags(net, "hospital-b") == []


def test_two_unqualified_quarters_in_a_row_flag_an_operator(net: Network) -> None:
    assert grade(net, "operator", "2026-Q2", "unqualified").status_code == 201
    assert flags(net, "operator") == []  # one unqualified quarter: no flag
    assert grade(net, "operator", "2026-Q3", "unqualified").status_code == 201
    [flag] = flags(net, "operator")
    assert flag["status"] == "active"
    assert model.has_code(flag["code"], model.QUALITY_CONTROL, "rectification")
    assert flag["subject"] == {"reference": "Organization/operator"}
    # rectify by the end of the quarter after the second unqualified one (Q4 2026)
    assert flag["period"]["end"] == "2026-12-31"
    assert "2026-Q2" in flag["code"]["text"] and "2026-Q3" in flag["code"]["text"]
    # the Flag is what a search for the operator's flags finds, with a Provenance
    assert net.search("Provenance", target=f"Flag/{flag['id']}")


def test_non_consecutive_or_mixed_grades_raise_no_flag(net: Network) -> None:
    assert grade(net, "operator", "2026-Q1", "unqualified").status_code == 201
    assert grade(net, "operator", "2026-Q2", "qualified").status_code == 201
    assert grade(net, "operator", "2026-Q3", "unqualified").status_code == 201
    assert flags(net, "operator") == []
    # another operator's unqualified quarter is not this one's
    assert grade(net, "operator-2", "2026-Q2", "unqualified").status_code == 201
    assert flags(net, "operator") == [] and flags(net, "operator-2") == []


def test_grades_recorded_out_of_order(net: Network) -> None:
    # Q3 first, then Q2: the pair is seen either way
    assert grade(net, "operator", "2026-Q3", "unqualified").status_code == 201
    assert grade(net, "operator", "2026-Q2", "unqualified").status_code == 201
    [flag] = active_flags(net, "operator")
    assert flag["period"]["end"] == "2026-12-31"


def test_late_pair_gets_a_deadline_still_ahead(net: Network) -> None:
    # graded on 15 October 2026 for Q1 and Q2: the end of Q3 is over, so the deadline is the
    # end of the quarter after the current one (Q1 2027)
    grade(net, "operator", "2026-Q1", "unqualified")
    grade(net, "operator", "2026-Q2", "unqualified")
    [flag] = active_flags(net, "operator")
    assert flag["period"]["end"] == "2027-03-31"


def test_regrading_withdraws_the_flag(net: Network) -> None:
    grade(net, "operator-2", "2026-Q2", "unqualified")
    grade(net, "operator-2", "2026-Q3", "unqualified")
    assert len(active_flags(net, "operator-2")) == 1
    assert grade(net, "operator-2", "2026-Q3", "qualified").status_code == 200
    assert active_flags(net, "operator-2") == []
    assert [f["status"] for f in flags(net, "operator-2")] == ["entered-in-error"]


def test_two_quarters_rule_is_for_operators(net: Network) -> None:
    grade(net, "hospital-b", "2026-Q2", "unqualified")
    grade(net, "hospital-b", "2026-Q3", "unqualified")
    assert flags(net, "hospital-b") == []


@pytest.mark.parametrize(("org", "period", "value", "status"), [
    ("operator", "2026-Q5", "qualified", 400),
    ("operator", "2026", "qualified", 400),
    ("operator", "2026-Q3", None, 400),  # no grade
    ("operator", "2026-Q3", "good", 400),
    ("nowhere", "2026-Q3", "qualified", 404),
])
def test_grade_bad_requests(net: Network, org: str, period: str, value: str | None,
                            status: int) -> None:
    r = grade(net, org, period, value)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert net.search("Observation", code=f"{model.QUALITY_CONTROL}|quality-grade") == []


@pytest.mark.parametrize("who", ["hr-a", "attending-b", "officer-region"])
def test_only_the_panel_grades(net: Network, who: str) -> None:
    r = grade(net, "operator", "2026-Q3", "unqualified", who=who)
    if who == "officer-region":  # the health administration may record grades too
        assert r.status_code == 201, r.text
        assert r.json()["performer"] == [{"reference": "Organization/region"}]
        return
    assert r.status_code == 403, r.text
    assert net.search("Observation", code=f"{model.QUALITY_CONTROL}|quality-grade") == []

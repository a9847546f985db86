"""The expert pool through HTTP (Inner Mongolia rules A5): eligibility when a role joins,
nomination by the employer and approval by the region, the statistics of each member, the public
listing and the annual review."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.workflow import model
from tests.conftest import Fhir, issue_token
from tests.pool_network import (
    DATA_OPERATION,
    NOW,
    SHANGHAI,
    Network,
    add_expert,
    build_consultations,
    expert_role,
    open_network,
    parameters,
    practitioner,
    staff,
)

RULES = ("expert-title", "expert-specialty-years", "expert-malpractice",
         "expert-employer-consent", "expert-training")


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with open_network(tmp_path) as network:
        yield network


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """For the tests that only add roles of their own (ids made with ``x``)."""
    with open_network(tmp_path_factory.mktemp("joining")) as network:
        yield network


@pytest.fixture
def x(request: pytest.FixtureRequest) -> str:
    """An id part of this test's own, for what it adds to the shared network."""
    return "x" + hashlib.sha1(request.node.nodeid.encode()).hexdigest()[:12]


@pytest.fixture(scope="module")
def stats_net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """The consultations of the statistics, read only."""
    with open_network(tmp_path_factory.mktemp("pool")) as network:
        build_consultations(network)
        yield network


def rules_named(body: dict[str, Any]) -> list[str]:
    """The rule in brackets at the start of each issue's diagnostics."""
    assert body["resourceType"] == "OperationOutcome"
    return [i["diagnostics"][1:].split("]")[0] for i in body["issue"]]


def status_of(role: dict[str, Any]) -> str | None:
    return (model.extension_value(role, model.EXT_POOL_STATUS, "Coding") or {}).get("code")


def with_status(role: dict[str, Any], status: str) -> dict[str, Any]:
    out = copy.deepcopy(role)
    for ext in out["extension"]:
        if ext["url"] == model.EXT_POOL_STATUS:
            ext["valueCoding"]["code"] = status
    return out


def pool_provenance(net: Network, role_id: str) -> list[dict[str, Any]]:
    return sorted(net.search("Provenance", target=f"PractitionerRole/{role_id}"),
                  key=lambda p: p["recorded"])


def nominate(net: Network, role_id: str, client_role: str = "hr-a",
             **practitioner_kw: Any) -> Any:
    """hospital-a's staff nominates a new expert (its Practitioner loaded by the system)."""
    net.put(practitioner(f"p-{role_id}", role_id.title(), **practitioner_kw))
    role = expert_role(role_id, f"p-{role_id}", "nominated")
    return net.as_user(client_role).put(f"PractitionerRole/{role_id}", role)


# -- eligibility ----------------------------------------------------------------------------------

def test_eligible_nomination_by_the_employer(net: Network) -> None:
    r = nominate(net, "expert-new")
    assert r.status_code == 201, r.text
    role = r.json()
    assert status_of(role) == "nominated"
    assert model.extension_value(role, model.EXT_NOMINATED_BY, "Reference") == {
        "reference": "Organization/hospital-a"}
    [prov] = pool_provenance(net, "expert-new")
    assert prov["target"] == [{"reference": "PractitionerRole/expert-new/_history/1"}]
    assert prov["agent"][0]["who"] == {"reference": "PractitionerRole/hr-a"}
    codes = {(c["system"], c["code"]) for c in prov["activity"]["coding"]}
    assert codes == {(DATA_OPERATION, "UPDATE"), (model.EXPERT_POOL_STATUS, "nominated")} or \
        codes == {(DATA_OPERATION, "CREATE"), (model.EXPERT_POOL_STATUS, "nominated")}


def test_every_failed_rule_is_named(net: Network) -> None:
    # an attending (intermediate) title, no training, a grade-2 accident last year; in the
    # specialty since 2023 (3 years on 15 October 2026); no employer consent
    net.put(practitioner("p-weak", "Weak", title="attending-physician", training=False,
                         malpractice=((2, "2025-06-01"),)))
    role = expert_role("expert-weak", "p-weak", "nominated", since="2023-01-01", consent=None)
    r = net.as_user("hr-a").put("PractitionerRole/expert-weak", role)
    assert r.status_code == 422, r.text
    assert sorted(rules_named(r.json())) == sorted(RULES)
    assert net.admin.get("PractitionerRole/expert-weak").status_code == 404


# Each case breaks exactly one rule (or, marked None, sits just inside it). NOW is 15 Oct 2026.
ONE_RULE = [
    ({"title": "attending-physician"}, {}, "expert-title"),
    ({"title": None}, {}, "expert-title"),
    ({"title": "associate-chief-physician"}, {}, None),  # 副高: eligible
    ({}, {"since": "2021-10-16"}, "expert-specialty-years"),  # a day short of 5 years
    ({}, {"since": "2021-10-15"}, None),  # exactly 5 years (inclusive)
    ({}, {"since": None}, "expert-specialty-years"),
    ({"malpractice": ((1, "2024-02-01"),)}, {}, "expert-malpractice"),
    ({"malpractice": ((2, "2023-10-15"),)}, {}, "expert-malpractice"),  # 3 years ago today
    ({"malpractice": ((2, "2023-10-14"),)}, {}, None),  # more than 3 years ago
    ({"malpractice": ((3, "2026-01-10"),)}, {}, None),  # grade 3 is not 二级及以上
    ({}, {"consent": None}, "expert-employer-consent"),
    ({}, {"consent": "2026-11-01"}, "expert-employer-consent"),  # not given yet
    ({"training": False}, {}, "expert-training"),
]


@pytest.mark.parametrize(("practitioner_kw", "role_kw", "rule"), ONE_RULE)
def test_each_rule(shared: Network, x: str, practitioner_kw: dict[str, Any],
                   role_kw: dict[str, Any], rule: str | None) -> None:
    shared.put(practitioner(f"p-{x}", "X", **practitioner_kw))
    r = shared.as_user("hr-a").put(
        f"PractitionerRole/expert-{x}",
        expert_role(f"expert-{x}", f"p-{x}", "nominated", **role_kw))
    if rule is None:
        assert r.status_code == 201, r.text
    else:
        assert r.status_code == 422, r.text
        assert rules_named(r.json()) == [rule]


def test_expired_title_does_not_count(shared: Network, x: str) -> None:
    doctor = practitioner(f"p-{x}", "X", title=None)
    doctor["qualification"].append({
        "code": {"coding": [{"system": model.PROFESSIONAL_TITLE, "code": "chief-physician"}]},
        "period": {"start": "2010-01-01", "end": "2025-12-31"}})
    shared.put(doctor)
    r = shared.as_user("hr-a").put(f"PractitionerRole/expert-{x}",
                                   expert_role(f"expert-{x}", f"p-{x}", "nominated"))
    assert r.status_code == 422
    assert rules_named(r.json()) == ["expert-title"]


def test_eligibility_checked_again_on_approval(net: Network) -> None:
    r = nominate(net, "expert-new")
    assert r.status_code == 201
    # a grade-1 accident is recorded after the nomination
    doctor = net.get("Practitioner/p-expert-new")
    doctor["extension"] = [{"url": model.EXT_MALPRACTICE, "extension": [
        {"url": "grade", "valueInteger": 1}, {"url": "date", "valueDate": "2026-09-01"}]}]
    net.put(doctor)
    r = net.as_user("officer-region").put("PractitionerRole/expert-new",
                                          with_status(r.json(), "approved"))
    assert r.status_code == 422, r.text
    assert rules_named(r.json()) == ["expert-malpractice"]


def test_a_fact_change_of_a_member_is_checked(net: Network) -> None:
    role = add_expert(net, "expert-1")
    shorter = copy.deepcopy(role)
    for ext in shorter["extension"]:
        if ext["url"] == model.EXT_SPECIALTY_SINCE:
            ext["valueDate"] = "2024-01-01"
    r = net.admin.put("PractitionerRole/expert-1", shorter)
    assert r.status_code == 422
    assert rules_named(r.json()) == ["expert-specialty-years"]


def test_a_pool_role_is_an_expert(shared: Network, x: str) -> None:
    shared.put(practitioner(f"p-{x}", "X"))
    role = expert_role(f"expert-{x}", f"p-{x}", "nominated")
    role["code"] = [{"coding": [{"system": model.PRACTITIONER_ROLE,
                                 "code": "attending-physician"}]}]
    r = shared.as_user("hr-a").put(f"PractitionerRole/expert-{x}", role)
    assert r.status_code == 422
    assert rules_named(r.json()) == ["expert-code"]


# -- who changes the pool status ------------------------------------------------------------------

def test_nominated_approved_active_by_the_right_parties(net: Network) -> None:
    role = nominate(net, "expert-new").json()
    region = net.as_user("officer-region")
    r = region.put("PractitionerRole/expert-new", with_status(role, "approved"))
    assert r.status_code == 200, r.text
    approved = r.json()
    assert status_of(approved) == "approved"
    assert model.extension_value(approved, model.EXT_APPROVED_BY_REGION, "Reference") == {
        "reference": "Organization/region"}
    r = region.put("PractitionerRole/expert-new", with_status(approved, "active"))
    assert r.status_code == 200, r.text
    provs = pool_provenance(net, "expert-new")
    assert [p["activity"]["coding"][-1]["code"] for p in provs] == [
        "nominated", "approved", "active"]
    assert [p["agent"][0]["who"]["reference"] for p in provs] == [
        "PractitionerRole/hr-a", "PractitionerRole/officer-region",
        "PractitionerRole/officer-region"]
    assert provs[2]["target"] == [{"reference": "PractitionerRole/expert-new/_history/3"}]
    # the employer takes its expert out of the pool
    r = net.as_user("hr-a").put("PractitionerRole/expert-new", with_status(r.json(), "removed"))
    assert r.status_code == 200, r.text
    assert status_of(r.json()) == "removed"


@pytest.mark.parametrize(("who", "status"), [
    ("hr-a", "approved"),  # the employer does not approve its own nominee
    ("hr-a", "active"),
    ("hr-b", "approved"),  # another hospital's staff
    ("attending-b", "not-approved"),
])
def test_only_the_region_approves(shared: Network, x: str, who: str, status: str) -> None:
    role = nominate(shared, f"expert-{x}").json()
    r = shared.as_user(who).put(f"PractitionerRole/expert-{x}", with_status(role, status))
    assert r.status_code == 403, r.text
    assert r.json()["resourceType"] == "OperationOutcome"
    assert status_of(shared.get(f"PractitionerRole/expert-{x}")) == "nominated"


def test_another_regions_authority_does_not_approve(net: Network) -> None:
    # hospital-ir (Tehran province, IR-07) nominates; the Inner Mongolia commission (CN-NM)
    # does not answer for it, Iran's national committee (IR) does
    net.put({"resourceType": "Organization", "id": "committee-ir", "name": "National committee",
             "type": [{"coding": [{"system": model.ORGANIZATION_TYPE,
                                   "code": "national-committee"}]}],
             "extension": [{"url": model.EXT_REGION, "valueCode": "IR"}]})
    net.put({**staff("officer-ir", "committee-ir", "telemedicine-centre-staff")})
    net.put(staff("hr-ir", "hospital-ir", "telemedicine-centre-staff"))
    net.put(practitioner("p-x", "X"))
    role = expert_role("expert-x", "p-x", "nominated", org="hospital-ir")
    r = net.as_user("hr-ir").put("PractitionerRole/expert-x", role)
    assert r.status_code == 201, r.text
    r = net.as_user("officer-region").put("PractitionerRole/expert-x",
                                          with_status(r.json(), "approved"))
    assert r.status_code == 403, r.text
    r = net.as_user("officer-ir").put("PractitionerRole/expert-x",
                                      with_status(net.get("PractitionerRole/expert-x"),
                                                  "approved"))
    assert r.status_code == 200, r.text
    assert model.extension_value(r.json(), model.EXT_APPROVED_BY_REGION, "Reference") == {
        "reference": "Organization/committee-ir"}
    # the Inner Mongolia commission's review leaves Iran's members alone
    r = review(net, year=2026, maxDeclineRatio=0)
    assert r.status_code == 200, r.text
    assert parameters(r.json())["reviewed"] == 0


def test_a_practitioner_acts_through_its_roles(shared: Network, x: str) -> None:
    shared.put(practitioner(f"p-{x}", "X"))
    hr = Fhir(shared.http, issue_token(shared.settings, "user/*.cruds",
                                       fhirUser="Practitioner/p-hr-a"))
    r = hr.put(f"PractitionerRole/expert-{x}", expert_role(f"expert-{x}", f"p-{x}", "nominated"))
    assert r.status_code == 201, r.text


@pytest.mark.parametrize("who", ["officer-region", "hr-b"])
def test_only_the_employer_nominates(shared: Network, x: str, who: str) -> None:
    r = nominate(shared, f"expert-{x}", client_role=who)
    assert r.status_code == 403, r.text
    assert "[pool-authority]" in r.json()["issue"][0]["diagnostics"]


@pytest.mark.parametrize(("who", "status"), [("officer-region", "approved"),
                                           ("officer-region", "active"), ("hr-a", "active")])
def test_nobody_joins_without_nomination(shared: Network, x: str, who: str, status: str) -> None:
    shared.put(practitioner(f"p-{x}", "X"))
    role = expert_role(f"expert-{x}", f"p-{x}", status, approved_by="region")
    r = shared.as_user(who).put(f"PractitionerRole/expert-{x}", role)
    assert r.status_code == 409, r.text
    assert "[pool-transition]" in r.json()["issue"][0]["diagnostics"]


def test_nominated_by_must_be_the_employer(shared: Network, x: str) -> None:
    shared.put(practitioner(f"p-{x}", "X"))
    role = expert_role(f"expert-{x}", f"p-{x}", "nominated")
    for ext in role["extension"]:
        if ext["url"] == model.EXT_NOMINATED_BY:
            ext["valueReference"] = {"reference": "Organization/hospital-b"}
    r = shared.as_user("hr-a").put(f"PractitionerRole/expert-{x}", role)
    assert r.status_code == 422
    assert rules_named(r.json()) == ["pool-nominated-by"]


@pytest.mark.parametrize(("start", "to", "who"), [
    ("nominated", "suspended", "officer-region"),
    ("active", "nominated", "hr-a"),
    ("active", "approved", "officer-region"),
    ("removed", "active", "officer-region"),
    ("nominated", "suspended", None),  # not even a system client
])
def test_changes_the_table_does_not_allow(net: Network, start: str, to: str,
                                          who: str | None) -> None:
    role = add_expert(net, "expert-1", status=start)
    client = net.admin if who is None else net.as_user(who)
    r = client.put("PractitionerRole/expert-1", with_status(role, to))
    assert r.status_code == 409, r.text
    assert "[pool-transition]" in r.json()["issue"][0]["diagnostics"]
    assert status_of(net.get("PractitionerRole/expert-1")) == start


def test_suspension_and_return(net: Network) -> None:
    role = add_expert(net, "expert-1")
    region = net.as_user("officer-region")
    r = region.put("PractitionerRole/expert-1", with_status(role, "suspended"))
    assert r.status_code == 200, r.text
    r = region.put("PractitionerRole/expert-1", with_status(r.json(), "active"))
    assert r.status_code == 200, r.text


def test_a_member_leaves_by_removal_not_deletion(net: Network) -> None:
    role = add_expert(net, "expert-1")
    r = net.as_user("hr-a").delete("PractitionerRole/expert-1")
    assert r.status_code == 409, r.text
    without = copy.deepcopy(role)
    without["extension"] = [e for e in role["extension"] if e["url"] != model.EXT_POOL_STATUS]
    r = net.as_user("hr-a").put("PractitionerRole/expert-1", without)
    assert r.status_code == 409, r.text
    assert status_of(net.get("PractitionerRole/expert-1")) == "active"


# -- statistics -----------------------------------------------------------------------------------

def stats(net: Network, role_id: str, period: str | None = None) -> dict[str, Any]:
    params = {"period": period} if period else None
    r = net.admin.get(f"PractitionerRole/{role_id}/$stats", params=params)
    assert r.status_code == 200, r.text
    return parameters(r.json())


def test_stats_of_a_quarter(stats_net: Network) -> None:
    got = stats(stats_net, "expert-1", "2026-Q3")
    assert got["expert"] == {"reference": "PractitionerRole/expert-1"}
    assert got["period"] == {"start": "2026-07-01", "end": "2026-09-30"}
    # Q3 (Shanghai) Tasks naming or owned by expert-1: t1 t2 t3 t4 t7 (owned), t5 t6 (named),
    # t8 (named, served by expert-2); t9 is Q2, t11 is Q4 in Shanghai (Q3 in UTC)
    assert got["invited"] == 8
    assert got["served"] == 3  # t1 t2 t3: completed and owned
    # t4 rejected while expert-1 owned it, t5 declined by the expert (expert-declined); t6 was
    # refused by the hospital (outside-licensed-scope), not by the expert
    assert got["declined"] == 2
    assert Decimal(str(got["declineRatio"])) == Decimal(2) / Decimal(8)  # 0.25
    # ratings about t1 (5) and t2 (latest of 1 then 3); t3's in-progress rating and its
    # rating of another questionnaire do not count
    assert got["ratings"] == 2
    assert Decimal(str(got["meanSatisfaction"])) == Decimal(5 + 3) / 2  # 4
    # turnaround from filing to the report's issued: t1 12 h, t2 24 h, t3 48 h
    assert Decimal(str(got["medianTurnaroundHours"])) == 24


def test_stats_of_all_time(stats_net: Network) -> None:
    got = stats(stats_net, "expert-1")
    assert "period" not in got
    assert got["invited"] == 10  # the 8 of Q3, t9 (Q2) and t11 (Q4)
    assert got["served"] == 5  # t1 t2 t3 t9 t11
    assert got["declined"] == 2
    assert Decimal(str(got["declineRatio"])) == Decimal("0.2")  # 2 / 10
    assert got["ratings"] == 4
    assert Decimal(str(got["meanSatisfaction"])) == Decimal("3.25")  # (5 + 3 + 4 + 1) / 4
    # turnarounds 2, 6, 12, 24, 48 h: the median is the middle one
    assert Decimal(str(got["medianTurnaroundHours"])) == 12


def test_stats_of_other_periods(stats_net: Network) -> None:
    q2 = stats(stats_net, "expert-1", "2026-Q2")  # t9 alone
    assert (q2["invited"], q2["served"], q2["declined"], q2["ratings"]) == (1, 1, 0, 1)
    assert Decimal(str(q2["declineRatio"])) == 0
    assert Decimal(str(q2["medianTurnaroundHours"])) == 6
    q4 = stats(stats_net, "expert-1", "2026-10")  # t11, 00:30 on 1 October in Shanghai
    assert (q4["invited"], q4["served"]) == (1, 1)
    assert Decimal(str(q4["medianTurnaroundHours"])) == 2
    # expert-2 served t8 (named expert-1), rated 2, report 30 h after filing
    other = stats(stats_net, "expert-2", "2026-Q3")
    assert (other["invited"], other["served"], other["declined"]) == (1, 1, 0)
    assert Decimal(str(other["meanSatisfaction"])) == 2
    assert Decimal(str(other["medianTurnaroundHours"])) == 30


def test_stats_without_data_leave_figures_out(stats_net: Network) -> None:
    got = stats(stats_net, "expert-1", "2025")
    assert (got["invited"], got["served"], got["declined"], got["ratings"]) == (0, 0, 0, 0)
    assert not {"declineRatio", "meanSatisfaction", "medianTurnaroundHours"} & set(got)


@pytest.mark.parametrize(("path", "params", "status"), [
    ("PractitionerRole/nobody/$stats", None, 404),
    ("PractitionerRole/expert-1/$stats", {"period": "2026-Q5"}, 400),
    ("PractitionerRole/expert-1/$stats", {"period": "last year"}, 400),
    ("PractitionerRole/expert-1/$stats", {"perod": "2026"}, 400),
])
def test_stats_bad_requests(stats_net: Network, path: str, params: dict[str, str] | None,
                            status: int) -> None:
    r = stats_net.admin.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["resourceType"] == "OperationOutcome"


def test_stats_need_a_token(stats_net: Network) -> None:
    r = stats_net.as_user(None).get("PractitionerRole/expert-1/$stats")
    assert r.status_code == 401


# -- the public listing ---------------------------------------------------------------------------

def test_public_pool_by_specialty(stats_net: Network) -> None:
    r = stats_net.as_user(None).get("PractitionerRole/$pool", params={"specialty": "cardiology"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["type"] == "searchset"
    matches = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "match"]
    included = [e["resource"] for e in body["entry"] if e["search"]["mode"] == "include"]
    assert [m["id"] for m in matches] == ["expert-1", "expert-2"]
    assert body["total"] == 2
    assert {p["id"] for p in included} == {"p-expert-1", "p-expert-2"}
    one = matches[0]
    assert one["practitioner"] == {"reference": "Practitioner/p-expert-1",
                                   "display": "Dr Expert-1"}
    assert one["organization"]["display"] == "Inner Mongolia People's Hospital"
    assert model.has_code(one["specialty"], model.SPECIALTY, "cardiology")


def test_public_pool_shows_no_private_data(stats_net: Network) -> None:
    r = stats_net.as_user(None).get("PractitionerRole/$pool")
    text = r.text
    assert r.status_code == 200
    for private in ("telecom", "@example.org", "+86", model.EXT_MALPRACTICE,
                    model.EXT_EMPLOYER_CONSENT, model.EXT_NOMINATED_BY,
                    model.EXT_SPECIALTY_SINCE, "licensed-physician", "telemedicine-training",
                    "Patient/"):
        assert private not in text
    for entry in r.json()["entry"]:
        resource = entry["resource"]
        assert resource["meta"]["tag"][0]["code"] == "SUBSETTED"
        if resource["resourceType"] == "Practitioner":
            assert set(resource) <= {"resourceType", "id", "meta", "name", "qualification"}


def test_public_pool_other_specialty_and_states(net: Network) -> None:
    add_expert(net, "expert-1")
    add_expert(net, "expert-2", status="suspended")
    add_expert(net, "expert-3", status="nominated")
    net.put(practitioner("p-neuro", "Neuro"))
    net.put(expert_role("expert-neuro", "p-neuro", "active", specialty="neurology",
                        approved_by="region"))
    public = net.as_user(None)
    r = public.get("PractitionerRole/$pool")
    ids = [e["resource"]["id"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]
    assert ids == ["expert-1", "expert-neuro"]  # active members only, by specialty
    r = public.get("PractitionerRole/$pool", params={"specialty": "neurology"})
    ids = [e["resource"]["id"] for e in r.json()["entry"] if e["search"]["mode"] == "match"]
    assert ids == ["expert-neuro"]
    assert public.get("PractitionerRole").status_code == 401  # the rest stays closed


# -- the annual review ----------------------------------------------------------------------------

def review(net: Network, client_role: str | None = "officer-region", **values: Any) -> Any:
    kinds = {"year": "valueInteger", "maxDeclineRatio": "valueDecimal",
             "minSatisfaction": "valueDecimal", "dryRun": "valueBoolean"}
    body = {"resourceType": "Parameters",
            "parameter": [{"name": k, kinds[k]: v} for k, v in values.items()]}
    client = net.admin if client_role is None else net.as_user(client_role)
    return client.post("PractitionerRole/$review", body)


def members(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    out = {}
    for p in body["parameter"]:
        if p["name"] == "member":
            parts: dict[str, Any] = {}
            for part in p["part"]:
                value = next(v for k, v in part.items() if k.startswith("value"))
                parts.setdefault(part["name"], []).append(value)
            out[parts["expert"][0]["reference"].split("/")[1]] = parts
    return out


@pytest.fixture
def reviewed(net: Network) -> Network:
    """The statistics' consultations, and expert-3, active until a grade-1 accident in 2026."""
    build_consultations(net)
    add_expert(net, "expert-3")
    doctor = net.get("Practitioner/p-expert-3")
    doctor["extension"] = [{"url": model.EXT_MALPRACTICE, "extension": [
        {"url": "grade", "valueInteger": 1}, {"url": "date", "valueDate": "2026-05-20"}]}]
    net.put(doctor)
    return net


def test_review_removes_who_fails(reviewed: Network) -> None:
    net = reviewed
    net.at(datetime(2026, 12, 30, 10, 0, tzinfo=SHANGHAI))
    # 2026: expert-1 declined 2 of 10 (0.2 <= 0.25), mean (5 + 3 + 4 + 1) / 4 = 3.25 >= 3;
    # expert-2 declined 0 of 1, but its one rating is 2 < 3; expert-3 is no longer eligible
    r = review(net, year=2026, maxDeclineRatio=0.25, minSatisfaction=3)
    assert r.status_code == 200, r.text
    got = parameters(r.json())
    assert (got["reviewed"], got["removed"], got["dryRun"]) == (3, 2, False)
    found = members(r.json())
    assert found["expert-1"]["outcome"] == ["kept"]
    assert found["expert-2"]["outcome"] == ["removed"]
    assert found["expert-3"]["outcome"] == ["removed"]
    assert "[review-satisfaction]" in found["expert-2"]["reason"][0]
    assert "[expert-malpractice]" in found["expert-3"]["reason"][0]
    assert status_of(net.get("PractitionerRole/expert-1")) == "active"
    for gone, rule in (("expert-2", "review-satisfaction"), ("expert-3", "expert-malpractice")):
        assert status_of(net.get(f"PractitionerRole/{gone}")) == "removed"
        last = pool_provenance(net, gone)[-1]
        assert last["activity"]["coding"][-1]["code"] == "removed"
        assert f"[{rule}]" in last["reason"][0]["text"]
        assert last["agent"][0]["who"] == {"reference": "PractitionerRole/officer-region"}
        assert last["recorded"].startswith("2026-12-30")
    assert len(pool_provenance(net, "expert-1")) == 1  # only when it was loaded
    ids = [e["resource"]["id"] for e in net.as_user(None).get("PractitionerRole/$pool").json()[
        "entry"] if e["search"]["mode"] == "match"]
    assert ids == ["expert-1"]


def test_review_dry_run_and_decline_threshold(reviewed: Network) -> None:
    net = reviewed
    # 2 of 10 declined = 0.2 > 0.15: expert-1 would go as well
    r = review(net, year=2026, maxDeclineRatio=0.15, dryRun=True)
    assert r.status_code == 200, r.text
    found = members(r.json())
    assert found["expert-1"]["outcome"] == ["removed"]
    assert "[review-decline-ratio]" in found["expert-1"]["reason"][0]
    assert Decimal(str(found["expert-1"]["declineRatio"][0])) == Decimal("0.2")
    assert found["expert-2"]["outcome"] == ["kept"]  # no satisfaction threshold given
    assert parameters(r.json())["removed"] == 2
    for role in ("expert-1", "expert-2", "expert-3"):
        assert status_of(net.get(f"PractitionerRole/{role}")) == "active"


def test_review_threshold_met_exactly_is_kept(reviewed: Network) -> None:
    # expert-1 declined 2 of 10 = 0.2, not above 0.2; expert-2's mean 2 is not below 2
    r = review(reviewed, year=2026, maxDeclineRatio=0.2, minSatisfaction=2, dryRun=True)
    assert r.status_code == 200, r.text
    found = members(r.json())
    assert found["expert-1"]["outcome"] == ["kept"]
    assert found["expert-2"]["outcome"] == ["kept"]


def test_review_only_by_the_region(net: Network) -> None:
    add_expert(net, "expert-1")
    r = review(net, "hr-a", year=2026)
    assert r.status_code == 403, r.text
    r = review(net, None)  # no year
    assert r.status_code == 400
    r = review(net, None, year=2026, maxDeclineRatio=1.5)
    assert r.status_code == 400
    r = review(net, None, year=2026)  # a system client; nothing to fail
    assert r.status_code == 200
    assert parameters(r.json())["removed"] == 0
    assert NOW.year == 2026

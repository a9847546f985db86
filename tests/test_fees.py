"""Consultation fees through HTTP: the fee schedule (ChargeItemDefinition) as data, the charge
when a consultation is scheduled, the inviting hospital's prepaid Account, deduction and refund
notices, ``Account/[id]/$deposit``, and that refused writes move no money.

Amounts are worked out by hand from the fee schedule: the built-in Chinese list charges 200 CNY
for a routine and 300 CNY for an urgent teleconsultation; the Iranian list 2,000,000 and
3,000,000 IRR.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from server.workflow import model
from tests.conftest import Fhir
from tests.consultation_network import Network, concept, open_network, request, utc

ISO_3166 = "urn:iso:std:iso:3166"
PRIORITY = "http://hl7.org/fhir/request-priority"
CN_TELECONSULTATION = "consultation-fee-cn-teleconsultation"
MORNING = ("2026-03-10T09:30:00+08:00", "2026-03-10T10:30:00+08:00")
AFTERNOON = ("2026-03-10T14:00:00+08:00", "2026-03-10T15:00:00+08:00")
CANCEL = {"valueCodeableConcept": concept(model.CANCEL_REASON, "patient-improved")}


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with open_network(tmp_path) as network:
        yield network


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    """One network for the tests that only read or are refused (they change nothing)."""
    with open_network(tmp_path_factory.mktemp("fees")) as network:
        yield network


# -- helpers --------------------------------------------------------------------------------------

def kinds(comm: dict[str, Any]) -> set[str]:
    return {code for c in comm.get("category", [])
            for code in model.codes(c, model.COMMUNICATION_KIND)}


def notices(net: Network, kind: str) -> list[dict[str, Any]]:
    return [c for c in net.search("Communication") if kind in kinds(c)]


def accounts(net: Network, org: str) -> list[dict[str, Any]]:
    return net.search("Account", owner=f"Organization/{org}")


def balance(account: dict[str, Any]) -> tuple[Decimal, str]:
    money = model.extension_value(account, model.EXT_PREPAID_BALANCE, "Money")
    return Decimal(str(money["value"])), money["currency"]


def balance_of(net: Network, org: str) -> tuple[Decimal, str]:
    [account] = accounts(net, org)
    return balance(account)


def open_account(net: Network, org: str, currency: str = "CNY",
                 value: int = 0) -> Any:
    return net.admin.post("Account", {
        "resourceType": "Account", "status": "active", "name": f"Prepaid: {org}",
        "owner": {"reference": f"Organization/{org}"},
        "extension": [{"url": model.EXT_PREPAID_BALANCE,
                       "valueMoney": {"value": value, "currency": currency}}]})


def deposit(client: Fhir, account_id: str, *parameters: dict[str, Any]) -> Any:
    return client.post(f"Account/{account_id}/$deposit",
                       {"resourceType": "Parameters", "parameter": list(parameters)})


def accepted(net: Network, client: Fhir | None = None, **kwargs: Any) -> str:
    """A consultation filed, accepted and with its expert; the Task's id."""
    _, task = net.file(request(**kwargs),
                       net.as_user(kwargs["requester"]) if "requester" in kwargs else None)
    for op in ("accept", "assign"):
        r = net.op(task["id"], op, client)
        assert r.status_code == 200, r.text
    return str(task["id"])


def schedule(net: Network, task_id: str, times: tuple[str, str],
             client: Fhir | None = None) -> Any:
    return net.op(task_id, "schedule", client, start={"valueDateTime": times[0]},
                  end={"valueDateTime": times[1]})


def scheduled(net: Network, times: tuple[str, str] = MORNING, client: Fhir | None = None,
              **kwargs: Any) -> str:
    task_id = accepted(net, client, **kwargs)
    r = schedule(net, task_id, times, client)
    assert r.status_code == 200, r.text
    return task_id


def charges(net: Network, task_id: str) -> list[dict[str, Any]]:
    return [c for c in net.search("ChargeItem")
            if {"reference": f"Task/{task_id}"} in c.get("supportingInformation", [])]


def price(item: dict[str, Any]) -> tuple[Decimal, str]:
    return Decimal(str(item["priceOverride"]["value"])), item["priceOverride"]["currency"]


def fee(id_: str, components: list[dict[str, Any]], *, date: str = "2026-01-01",
        country: str | None = "CN", **extra: Any) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "ChargeItemDefinition", "id": id_,
        "url": f"https://hospital.example/fee/{id_}", "version": "2", "status": "active",
        "date": date, "code": concept(model.CONSULTATION_TYPE, "teleconsultation"),
        "propertyGroup": [{"priceComponent": components}], **extra}
    if country:
        out["jurisdiction"] = [concept(ISO_3166, country)]
    return out


def component(type_: str, value: float, currency: str = "CNY",
              priority: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type_, "amount": {"value": value, "currency": currency}}
    if priority:
        out["code"] = concept(PRIORITY, priority)
    return out


def base_price(definition: dict[str, Any], priority: str) -> tuple[Any, str]:
    [amount] = [c["amount"] for g in definition["propertyGroup"] for c in g["priceComponent"]
                if c["type"] == "base" and model.codes(c.get("code"), PRIORITY) == [priority]]
    return amount["value"], amount["currency"]


# -- the fee schedule -----------------------------------------------------------------------------

def fee_bearing_types() -> set[str]:
    """Consultation types a fee is charged for: the patient services, less referral (whose
    registration fee is waived, IM A4 四(一))."""
    path = Path(__file__).parent.parent / "terminology" / "CodeSystem-consultation-type.json"
    concepts = json.loads(path.read_text())["concept"]
    return {c["code"] for c in concepts if c["code"] != "referral" and any(
        p["code"] == "patient-care" and p.get("valueBoolean") for p in c.get("property", []))}


def test_the_built_in_fee_schedule_is_searchable(shared: Network) -> None:
    net = shared
    found = net.search("ChargeItemDefinition", status="active")
    fees = [d for d in found if model.codes(d.get("code"), model.CONSULTATION_TYPE)]
    by_country: dict[str, set[str]] = {}
    for d in fees:
        [country] = [c for j in d["jurisdiction"] for c in model.codes(j, ISO_3166)]
        by_country.setdefault(country, set()).update(
            model.codes(d["code"], model.CONSULTATION_TYPE))
    assert by_country == {"CN": fee_bearing_types(), "IR": fee_bearing_types()}

    cn = net.read("ChargeItemDefinition", CN_TELECONSULTATION)
    assert base_price(cn, "routine") == (200, "CNY")
    assert base_price(cn, "urgent") == (300, "CNY")
    iranian = net.search("ChargeItemDefinition", jurisdiction=f"{ISO_3166}|IR")
    assert {code for d in iranian for code in model.codes(d["code"], model.CONSULTATION_TYPE)} \
        == fee_bearing_types()
    [ecg] = net.search("ChargeItemDefinition",
                       url=f"{model.BASE}/ChargeItemDefinition/consultation-fee-ir-remote-ecg")
    assert base_price(ecg, "routine") == (300000, "IRR")
    assert base_price(ecg, "urgent") == (500000, "IRR")
    by_type = net.search("ChargeItemDefinition", code=f"{model.CONSULTATION_TYPE}|remote-ecg")
    assert sorted(d["id"] for d in by_type) == ["consultation-fee-cn-remote-ecg",
                                                 "consultation-fee-ir-remote-ecg"]


@pytest.mark.parametrize(("components", "problem"), [
    ([component("surcharge", 50)], "no base priceComponent"),
    ([component("base", 200, "CNY", "routine"), component("base", 30, "USD", "urgent")],
     "several currencies"),
    ([component("base", 200), component("tax", 12, "IRR")], "several currencies"),
    ([component("base", 200, priority="routine")], "no base price for priority urgent"),
    ([{"type": "base", "amount": {"currency": "CNY"}}], "no amount with a value"),
    # 100 - 150: a charge that would credit the account
    ([component("base", 100), component("discount", 150, priority="urgent")],
     "at priority urgent a consultation would cost -50 CNY"),
])
def test_a_fee_that_cannot_price_is_refused(shared: Network, components: list[dict[str, Any]],
                                            problem: str) -> None:
    net = shared
    r = net.admin.post("ChargeItemDefinition", fee("bad", components))
    assert r.status_code == 422, r.text
    assert "[fee-schedule]" in r.text and problem in r.text
    # the same check on an edit of a built-in definition, which stays as it was
    before = net.read("ChargeItemDefinition", CN_TELECONSULTATION)
    edited = {**before, "propertyGroup": [{"priceComponent": components}]}
    r = net.admin.put(f"ChargeItemDefinition/{CN_TELECONSULTATION}", edited)
    assert r.status_code == 422, r.text
    after = net.read("ChargeItemDefinition", CN_TELECONSULTATION)
    assert after["meta"]["versionId"] == before["meta"]["versionId"]


def test_other_charge_definitions_are_left_alone(shared: Network) -> None:
    net = shared
    parking = {"resourceType": "ChargeItemDefinition", "url": "https://hospital.example/parking",
               "status": "active", "code": {"text": "Parking"}}
    assert net.admin.post("ChargeItemDefinition", parking).status_code == 201


def test_an_edited_fee_prices_the_next_consultation(net: Network) -> None:
    definition = net.read("ChargeItemDefinition", CN_TELECONSULTATION)
    for c in definition["propertyGroup"][0]["priceComponent"]:
        if model.codes(c.get("code"), PRIORITY) == ["routine"]:
            c["amount"]["value"] = 260.5
    r = net.admin.put(f"ChargeItemDefinition/{CN_TELECONSULTATION}", definition)
    assert r.status_code == 200, r.text
    task_id = scheduled(net)
    [item] = charges(net, task_id)
    assert price(item) == (Decimal("260.5"), "CNY")
    assert balance_of(net, "county") == (Decimal("-260.5"), "CNY")


def test_a_later_definition_wins(net: Network) -> None:
    # dated later than the built-in one (2025-07-01): base 180, urgent surcharge 60, a
    # discount of 10 for everyone -> urgent: 180 + 60 - 10 = 230 CNY
    winner = fee("county-deal", [component("base", 180), component("surcharge", 60,
                                                                  priority="urgent"),
                                 component("discount", 10)])
    # later still, but without jurisdiction: only where no country-specific one applies
    general = fee("general", [component("base", 999)], date="2026-02-01", country=None)
    # latest of all, but no longer in effect
    expired = fee("expired", [component("base", 777)], date="2026-02-15",
                  effectivePeriod={"end": "2026-02-28"})
    for definition in (winner, general, expired):
        r = net.admin.put(f"ChargeItemDefinition/{definition['id']}", definition)
        assert r.status_code == 201, r.text

    task_id = scheduled(net, priority="urgent")
    [item] = charges(net, task_id)
    assert price(item) == (Decimal(230), "CNY")
    assert item["definitionCanonical"] == ["https://hospital.example/fee/county-deal|2"]
    assert balance_of(net, "county") == (Decimal(-230), "CNY")


def test_a_definition_applies_through_the_last_day_of_its_period(net: Network) -> None:
    # the clock is at 9 March 2026, 02:00 UTC: a period given by dates covers whole days
    month = fee("march", [component("base", 190)], date="2026-02-20",
                effectivePeriod={"start": "2026-03", "end": "2026-03-09"})
    assert net.admin.put("ChargeItemDefinition/march", month).status_code == 201
    task_id = scheduled(net)
    [item] = charges(net, task_id)
    assert price(item) == (Decimal(190), "CNY")


def test_a_definition_without_jurisdiction_prices_where_no_country_list_applies(
        net: Network) -> None:
    # a member outside both countries' lists: Kazakhstan
    org = net.read("Organization", "county")
    org["extension"] = [e for e in org["extension"] if e["url"] != model.EXT_REGION]
    org["extension"].append({"url": model.EXT_REGION, "valueCode": "KZ-ALA"})
    net.put(org)
    task_id = scheduled(net)
    assert charges(net, task_id) == []  # no list applies: not charged
    assert accounts(net, "county") == []

    general = fee("general", [component("base", 40, "USD")], country=None)
    assert net.admin.put("ChargeItemDefinition/general", general).status_code == 201
    task_id = scheduled(net, times=AFTERNOON)
    [item] = charges(net, task_id)
    assert price(item) == (Decimal(40), "USD")
    assert balance_of(net, "county") == (Decimal(-40), "USD")


def test_edited_and_own_definitions_outlive_a_restart(tmp_path: Path) -> None:
    """The built-in fee schedule is written once: a restart keeps the operator's edits (and a
    definition of its own, dated later, keeps winning)."""
    with open_network(tmp_path) as net:
        definition = net.read("ChargeItemDefinition", CN_TELECONSULTATION)
        for c in definition["propertyGroup"][0]["priceComponent"]:
            if model.codes(c.get("code"), PRIORITY) == ["routine"]:
                c["amount"]["value"] = 260
        r = net.admin.put(f"ChargeItemDefinition/{CN_TELECONSULTATION}", definition)
        assert r.status_code == 200, r.text
        edited = r.json()["meta"]["versionId"]
    with open_network(tmp_path) as net:  # the same data directory, a new app
        kept = net.read("ChargeItemDefinition", CN_TELECONSULTATION)
        assert kept["meta"]["versionId"] == edited
        task_id = scheduled(net)
        [item] = charges(net, task_id)
        assert price(item) == (Decimal(260), "CNY")
        deal = fee("county-deal", [component("base", 150)])
        assert net.admin.put("ChargeItemDefinition/county-deal", deal).status_code == 201
    with open_network(tmp_path) as net:
        assert net.read("ChargeItemDefinition", "county-deal")["meta"]["versionId"] == "1"
        task_id = scheduled(net, times=AFTERNOON)
        [item] = charges(net, task_id)
        assert price(item) == (Decimal(150), "CNY")


# -- the charge -----------------------------------------------------------------------------------

def test_scheduling_charges_the_inviting_hospital_once(net: Network) -> None:
    assert accounts(net, "county") == []
    task_id = accepted(net)
    assert net.search("ChargeItem") == []  # accepted and assigned: nothing charged yet
    r = schedule(net, task_id, MORNING)
    assert r.status_code == 200, r.text
    task = r.json()
    appointment = next(o["valueReference"]["reference"] for o in task["output"]
                       if o["valueReference"]["reference"].startswith("Appointment/"))
    encounter = next(o["valueReference"]["reference"] for o in task["output"]
                     if o["valueReference"]["reference"].startswith("Encounter/"))

    [item] = net.search("ChargeItem")
    assert item["status"] == "billable"
    assert model.codes(item["code"], model.CONSULTATION_TYPE) == ["teleconsultation"]
    assert item["subject"] == {"reference": "Patient/patient-1"}
    assert item["requestingOrganization"] == {"reference": "Organization/county"}
    assert item["performingOrganization"] == {"reference": "Organization/regional"}
    assert item["context"] == {"reference": encounter}
    assert price(item) == (Decimal(200), "CNY")  # routine teleconsultation, China
    assert item["definitionCanonical"][0].split("|")[0] == \
        f"{model.BASE}/ChargeItemDefinition/{CN_TELECONSULTATION}"
    assert utc(item["occurrencePeriod"]["start"]) == utc(MORNING[0])
    assert utc(item["occurrencePeriod"]["end"]) == utc(MORNING[1])
    assert {"reference": f"Task/{task_id}"} in item["supportingInformation"]
    assert net.read(*appointment.split("/"))["status"] == "booked"

    # the account was opened with a zero balance, then debited
    [account] = accounts(net, "county")
    assert item["account"] == [{"reference": f"Account/{account['id']}"}]
    assert account["status"] == "active"
    assert balance(account) == (Decimal(-200), "CNY")
    r = net.admin.get(f"Account/{account['id']}/_history")
    versions = sorted(r.json()["entry"], key=lambda e: int(e["resource"]["meta"]["versionId"]))
    assert [balance(e["resource"]) for e in versions] == [(Decimal(0), "CNY"),
                                                          (Decimal(-200), "CNY")]

    [notice] = notices(net, "deduction-notice")
    assert notice["recipient"] == [{"reference": "Organization/county"}]
    assert {"reference": f"ChargeItem/{item['id']}"} in notice["about"]
    text = notice["payload"][0]["contentString"]
    assert "200 CNY" in text and "-200 CNY" in text
    # below zero: the notice also asks to top up
    assert "top-up-request" in kinds(notice) and notice["priority"] == "urgent"
    assert net.search("Provenance", target=f"ChargeItem/{item['id']}") != []

    # moved 3 h ahead to the afternoon: no second charge; the charge follows the session
    net.clock.set(utc("2026-03-10T06:30:00+08:00"))
    r = schedule(net, task_id, AFTERNOON)
    assert r.status_code == 200, r.text
    [item] = net.search("ChargeItem")
    assert item["status"] == "billable"
    assert utc(item["occurrencePeriod"]["start"]) == utc(AFTERNOON[0])
    assert balance_of(net, "county") == (Decimal(-200), "CNY")
    assert len(notices(net, "deduction-notice")) == 1


def test_an_urgent_consultation_from_a_funded_account(net: Network) -> None:
    r = open_account(net, "county")
    assert r.status_code == 201, r.text
    account_id = r.json()["id"]
    r = deposit(net.requester, account_id,
                {"name": "amount", "valueMoney": {"value": 1000, "currency": "CNY"}})
    assert r.status_code == 200, r.text
    assert balance(r.json()) == (Decimal(1000), "CNY")

    task_id = scheduled(net, priority="urgent")
    [item] = charges(net, task_id)
    assert price(item) == (Decimal(300), "CNY")
    assert item["account"] == [{"reference": f"Account/{account_id}"}]
    assert balance_of(net, "county") == (Decimal(700), "CNY")  # 1000 - 300
    [notice] = notices(net, "deduction-notice")
    assert "top-up-request" not in kinds(notice)
    assert "700 CNY" in notice["payload"][0]["contentString"]


def test_an_iranian_member_pays_in_rials(net: Network) -> None:
    task_id = scheduled(net, ("2026-03-10T09:30:00+03:30", "2026-03-10T10:30:00+03:30"),
                        net.admin, requester="attending-tehran", invited="tehran-univ",
                        priority="urgent")
    [item] = charges(net, task_id)
    assert price(item) == (Decimal(3_000_000), "IRR")
    assert item["requestingOrganization"] == {"reference": "Organization/tehran-hc"}
    assert item["performingOrganization"] == {"reference": "Organization/tehran-univ"}
    assert balance_of(net, "tehran-hc") == (Decimal(-3_000_000), "IRR")
    assert accounts(net, "county") == []
    [notice] = notices(net, "deduction-notice")
    assert notice["recipient"] == [{"reference": "Organization/tehran-hc"}]


# -- accounts and deposits ------------------------------------------------------------------------

def test_deposits(net: Network) -> None:
    account_id = open_account(net, "county").json()["id"]
    assert balance_of(net, "county") == (Decimal(0), "CNY")

    r = net.requester.post(f"Account/{account_id}/$deposit?amount=250.50&currency=CNY", None)
    assert r.status_code == 200, r.text
    r = deposit(net.requester, account_id, {"name": "amount", "valueDecimal": 100},
                {"name": "currency", "valueCode": "CNY"})
    assert r.status_code == 200, r.text
    assert balance(r.json()) == (Decimal("350.50"), "CNY")
    assert net.search("Provenance", target=f"Account/{account_id}") != []

    money = {"name": "amount", "valueMoney": {"value": 10, "currency": "CNY"}}
    refused = [
        (deposit(net.requester, account_id), 400),  # no amount
        (deposit(net.requester, account_id, {"name": "amount", "valueDecimal": 10}), 400),
        (deposit(net.requester, account_id, {"name": "amount", "valueMoney": {
            "value": -5, "currency": "CNY"}}), 400),
        (deposit(net.requester, account_id, {"name": "amount", "valueMoney": {
            "value": 0, "currency": "CNY"}}), 400),
        (net.requester.post(f"Account/{account_id}/$deposit?amount=NaN&currency=CNY", None),
         400),
        (net.requester.post(f"Account/{account_id}/$deposit?amount=ten&currency=CNY", None),
         400),
        (deposit(net.requester, account_id, money, {"name": "currency", "valueCode": "USD"}),
         400),  # two currencies
        (deposit(net.requester, account_id, money, {"name": "cents", "valueInteger": 1}), 400),
        (deposit(net.requester, account_id, {"name": "amount", "valueMoney": {
            "value": 10, "currency": "USD"}}), 422),  # the account is kept in CNY
        (deposit(net.requester, "no-such-account", money), 404),
    ]
    for r, status in refused:
        assert r.status_code == status, r.text
    assert balance_of(net, "county") == (Decimal("350.50"), "CNY")


def test_a_balance_is_not_edited_by_hand(net: Network) -> None:
    r = open_account(net, "county", value=5000)
    assert r.status_code == 422 and "[prepaid-balance]" in r.text
    account = open_account(net, "county").json()
    assert deposit(net.requester, account["id"], {"name": "amount", "valueMoney": {
        "value": 100, "currency": "CNY"}}).status_code == 200
    account = net.read("Account", account["id"])

    edited = json.loads(json.dumps(account))
    edited["extension"][0]["valueMoney"]["value"] = 5000
    r = net.requester.put(f"Account/{account['id']}", edited)
    assert r.status_code == 422 and "[prepaid-balance]" in r.text
    del edited["extension"]  # dropping the balance is changing it
    r = net.requester.put(f"Account/{account['id']}", edited)
    assert r.status_code == 422 and "[prepaid-balance]" in r.text
    assert net.requester.delete(f"Account/{account['id']}").status_code == 422
    # anything else of the Account may change
    r = net.requester.put(f"Account/{account['id']}", {**account, "name": "Prepaid (county)"})
    assert r.status_code == 200, r.text
    assert balance_of(net, "county") == (Decimal(100), "CNY")

    r = net.requester.put(f"Account/{account['id']}", {**net.read("Account", account["id"]),
                                                       "status": "inactive"})
    assert r.status_code == 200, r.text
    r = deposit(net.requester, account["id"], {"name": "amount", "valueMoney": {
        "value": 100, "currency": "CNY"}})
    assert r.status_code == 422  # deposits go to an active account


# -- refunds --------------------------------------------------------------------------------------

def test_cancelling_a_scheduled_consultation_refunds(net: Network) -> None:
    account_id = open_account(net, "county").json()["id"]
    deposit(net.requester, account_id,
            {"name": "amount", "valueMoney": {"value": 500, "currency": "CNY"}})
    task_id = scheduled(net)
    [item] = charges(net, task_id)
    assert balance_of(net, "county") == (Decimal(300), "CNY")  # 500 - 200

    r = net.op(task_id, "cancel", net.requester, reason=CANCEL)
    assert r.status_code == 200, r.text
    [item] = charges(net, task_id)
    assert item["status"] == "entered-in-error"
    assert balance_of(net, "county") == (Decimal(500), "CNY")  # 300 + 200
    [refund] = notices(net, "refund-notice")
    assert refund["recipient"] == [{"reference": "Organization/county"}]
    assert {"reference": f"ChargeItem/{item['id']}"} in refund["about"]
    assert "200 CNY" in refund["payload"][0]["contentString"]
    assert len(net.search("Provenance", target=f"ChargeItem/{item['id']}")) == 2

    # a consultation cancelled before it was scheduled moves no money
    other = accepted(net)
    r = net.op(other, "cancel", net.requester, reason=CANCEL)
    assert r.status_code == 200, r.text
    assert charges(net, other) == []
    assert balance_of(net, "county") == (Decimal(500), "CNY")
    assert len(notices(net, "refund-notice")) == 1
    assert len(notices(net, "deduction-notice")) == 1


# -- refused writes move no money -----------------------------------------------------------------

def test_a_refused_schedule_moves_no_money(net: Network) -> None:
    account_id = open_account(net, "county").json()["id"]
    deposit(net.requester, account_id,
            {"name": "amount", "valueMoney": {"value": 500, "currency": "CNY"}})
    before = net.read("Account", account_id)
    task_id = accepted(net)
    r = schedule(net, task_id, ("2026-03-10T12:30:00+08:00", "2026-03-10T13:30:00+08:00"))
    assert r.status_code == 422 and "[roster]" in r.text  # lunch: the expert is off duty
    assert net.search("ChargeItem") == []
    assert net.read("Account", account_id)["meta"] == before["meta"]
    assert notices(net, "deduction-notice") == []


def test_a_fee_in_another_currency_than_the_account_is_refused(net: Network) -> None:
    assert open_account(net, "county", currency="IRR").status_code == 201
    task_id = accepted(net)
    r = schedule(net, task_id, MORNING)
    assert r.status_code == 422 and "[fee-currency]" in r.text
    assert net.search("ChargeItem") == [] and net.count("Appointment") == 0
    assert net.read("Task", task_id)["status"] == "accepted"
    assert balance_of(net, "county") == (Decimal(0), "IRR")


def test_a_failed_transaction_undoes_the_charge(net: Network) -> None:
    """The Task scheduled by a plain update inside a transaction Bundle whose other entry is
    refused: the charge, the account it opened and the notice go with it."""
    task_id = accepted(net)
    task = net.read("Task", task_id)
    task["businessStatus"] = concept(model.BUSINESS_STATUS, "scheduled")
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": task, "request": {"method": "PUT", "url": f"Task/{task_id}"}},
        {"resource": {"resourceType": "Patient", "gender": "unknown-gender"},
         "request": {"method": "POST", "url": "Patient"}}]}
    r = net.admin.post("", bundle)
    assert r.status_code in (400, 422), r.text
    assert net.search("ChargeItem") == []
    assert accounts(net, "county") == []
    assert notices(net, "deduction-notice") == []
    assert net.read("Task", task_id)["meta"] == task["meta"]

    bundle["entry"] = bundle["entry"][:1]  # the same without the bad entry is charged
    r = net.admin.post("", bundle)
    assert r.status_code == 200, r.text
    [item] = charges(net, task_id)
    assert price(item) == (Decimal(200), "CNY")
    assert balance_of(net, "county") == (Decimal(-200), "CNY")

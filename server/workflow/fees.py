"""Consultation fees: the fee schedule, the charge when a session is scheduled, the member
hospitals' prepaid balance, deduction and refund notices (Inner Mongolia rules A7 第一部分 六(五),
第二部分 一(三)4; domain notes §5).

* The fee schedule is FHIR data: ChargeItemDefinition resources whose ``code`` is the
  consultation type, one price list per country (``jurisdiction``, urn:iso:std:iso:3166: CN in
  CNY, IR in IRR), with a ``base`` priceComponent per priority (``code`` from
  http://hl7.org/fhir/request-priority: routine, urgent; an uncoded base applies to any
  priority) and optional surcharge / tax (added) and discount / deduction (subtracted)
  components, coded with a priority or not. The built-in ones (:func:`seed_resources`) are
  placeholder prices. They can be edited through the API, but the server reinstalls its
  built-in resources when it starts (server.builtin), so a lasting tariff is a definition of
  one's own dated later than 2025-07-01. A definition without jurisdiction applies where no
  country-specific one does. The inviting organisation's country is the first part of its
  ``region`` (CN-NM -> CN). Of those that apply (status active, now within ``effectivePeriod``,
  a date bound covering its whole day, month or year), the one dated latest wins (without
  ``date``: the oldest; ties: the greatest id). A write of a fee definition is checked (422): a
  base price for routine and for urgent consultations, every amount with a value and the same
  currency, no price below zero.
* When a consultation Task's businessStatus becomes ``scheduled`` (``$schedule``), in the same
  transaction: a ChargeItem (identifier ``Task/<id>`` in :data:`CHARGE_ID`, status billable,
  code the consultation type, subject the patient, context the session's Encounter, occurrence
  the Appointment's times, performing = the invited, requesting = the inviting organisation,
  definitionCanonical, priceOverride the price, account), the inviting organisation's Account
  debited (extension prepaid-balance), a deduction notice (Communication, category
  communication-kind#deduction-notice, to the inviting organisation, about the ChargeItem and
  the Task) and a Provenance. A Task scheduled again (rescheduled, or scheduled anew) is not
  charged twice: a billable ChargeItem for it already exists; when the session is moved
  (businessStatus ``rescheduled``) the ChargeItem's occurrence follows the Appointment.
* Accounts: the inviting organisation's active Account with a prepaid balance; if it has none,
  one is opened with a zero balance in the price's currency (its first version) and then
  debited. The balance moves only by charges, refunds and ``$deposit``: a plain create of an
  Account with a balance other than zero, or an update or deletion that changes an Account's
  balance, is refused (422), so that every movement has its notice and Provenance. A balance
  may go negative (the documents ask members to top up promptly rather than refuse the
  service): the notice then also carries the category top-up-request, priority urgent, and
  says so. A price in another currency than the balance is refused (422): the fee schedule and
  the account disagree.
  ``Account/[id]/$deposit`` (amount, currency?) tops an active Account up.
* When a Task that was charged is cancelled: the ChargeItem becomes entered-in-error, the
  amount is credited back to its Account and a refund notice (refund-notice) is sent.
* An inviting organisation that cannot be found, or for which no fee schedule applies (e.g. no
  region and no definition without jurisdiction), is not charged.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from server.auth.guard import unguarded
from server.fhir.errors import FhirError, invalid, not_found, unprocessable
from server.fhir.hooks import WriteEvent, WriteHooks, store
from server.fhir.prepare import prepare
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.fhir.writes import new_id
from server.storage.base import ResourceStore, Transaction, Version
from server.workflow import model
from server.workflow.casefile import read, search
from server.workflow.experts import (
    consultation_type,
    data_operation,
    first,
    inputs,
    provenance,
    ref_id,
)

CHARGE_ID = f"{model.BASE}/sid/consultation-charge"
ISO_3166 = "urn:iso:std:iso:3166"
PRIORITY = "http://hl7.org/fhir/request-priority"
SCHEDULED = "scheduled"
ADDED = frozenset({"surcharge", "tax"})
SUBTRACTED = frozenset({"discount", "deduction"})
FINAL = frozenset({"completed", "rejected", "cancelled", "failed", "entered-in-error"})
RESCHEDULED = "rescheduled"
PRIORITIES = ("routine", "urgent")
EARLIEST = datetime.min.replace(tzinfo=UTC)

#: Set while the fee rules themselves move a balance (charge, refund, $deposit): the only
#: writes the Account rule lets change it. Set around those writes in the writer's call stack
#: and reset after them.
_POSTING: ContextVar[bool] = ContextVar("fee_posting", default=False)

#: Placeholder prices of the built-in fee schedule: consultation type -> (routine, urgent), per
#: country and currency. The documents set no tariff (Iran: "tariffs by service component" is a
#: ministry task, roadmap row 16); edit the ChargeItemDefinitions through the API.
CN_PRICES = {
    "teleconsultation": (200, 300), "multidisciplinary": (500, 700),
    "case-discussion": (150, 200), "remote-imaging": (80, 120), "remote-pathology": (150, 220),
    "remote-ecg": (30, 50), "remote-ultrasound": (80, 120), "remote-eeg": (60, 90),
    "remote-emg": (60, 90), "remote-nuclear-medicine": (120, 180),
    "remote-monitoring": (100, 150), "remote-outpatient": (50, 80),
    "remote-inpatient-visit": (100, 150),
}
IR_PER_CN = 10_000  # the Iranian placeholder list: the same scale, in rials
PRICE_LISTS = {"CN": ("CNY", CN_PRICES),
               "IR": ("IRR", {k: (a * IR_PER_CN, b * IR_PER_CN)
                              for k, (a, b) in CN_PRICES.items()})}


# -- the fee schedule ---------------------------------------------------------------------------

def _concept(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


def fee_definition(country: str, consultation: str, currency: str, routine: int,
                   urgent: int) -> dict[str, Any]:
    id_ = f"consultation-fee-{country.lower()}-{consultation}"
    return {
        "resourceType": "ChargeItemDefinition", "id": id_,
        "url": f"{model.BASE}/ChargeItemDefinition/{id_}", "version": "0.1.0",
        "title": f"Consultation fee: {consultation} ({country})", "status": "active",
        "date": "2025-07-01", "publisher": "Consilium",
        "description": f"Default price of a {consultation} for members in {country}, in "
                       f"{currency}, per priority (placeholder: edit to the tariff in force).",
        "jurisdiction": [_concept(ISO_3166, country)],
        "code": _concept(model.CONSULTATION_TYPE, consultation),
        "propertyGroup": [{"priceComponent": [
            {"type": "base", "code": _concept(PRIORITY, "routine"),
             "amount": {"value": routine, "currency": currency}},
            {"type": "base", "code": _concept(PRIORITY, "urgent"),
             "amount": {"value": urgent, "currency": currency}},
        ]}],
    }


def seed_resources() -> list[dict[str, Any]]:
    """The default fee schedule: one ChargeItemDefinition per country and consultation type,
    written when missing (server.builtin), then the operator's to edit."""
    return [fee_definition(country, consultation, currency, routine, urgent)
            for country, (currency, prices) in PRICE_LISTS.items()
            for consultation, (routine, urgent) in prices.items()]


def components(definition: dict[str, Any]) -> list[dict[str, Any]]:
    return [c for g in definition.get("propertyGroup") or []
            for c in g.get("priceComponent") or []]


def jurisdictions(definition: dict[str, Any]) -> set[str]:
    return {code for j in definition.get("jurisdiction") or []
            for code in model.codes(j, ISO_3166)}


def span(text: str | None) -> tuple[datetime, datetime] | None:
    """The instants a FHIR date or dateTime covers, [first, last): a year, a month or a day
    (in UTC, as model.parse_datetime reads dates) is the whole of it, so a period ending on
    ``2026-03-09`` still holds on that day. None if absent or unreadable."""
    if not text:
        return None
    try:
        if len(text) == 4:
            first = datetime(int(text), 1, 1, tzinfo=UTC)
            return first, first.replace(year=first.year + 1)
        if len(text) == 7:
            first = datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=UTC)
            return first, (first + timedelta(days=32)).replace(day=1)
        first = model.parse_datetime(text)
    except ValueError:
        return None
    if first.tzinfo is None:
        return None
    return first, first + (timedelta(days=1) if len(text) == 10 else timedelta(0))


def _effective(definition: dict[str, Any], now: datetime) -> bool:
    period = definition.get("effectivePeriod") or {}
    start, end = span(period.get("start")), span(period.get("end"))
    return (start is None or start[0] <= now) and (
        end is None or now < end[1] or (end[0] == end[1] and now <= end[1]))


def _dated(definition: dict[str, Any]) -> datetime:
    found = span(definition.get("date"))
    return found[0] if found else EARLIEST


def fee_schedule(tx: Transaction, consultation: str, country: str | None,
                 now: datetime) -> dict[str, Any] | None:
    """The ChargeItemDefinition that prices ``consultation`` for a member in ``country``."""
    found = [d for d in search(tx, "ChargeItemDefinition", [("status", "active")])
             if model.has_code(d.get("code"), model.CONSULTATION_TYPE, consultation)
             and _effective(d, now)]
    specific = [d for d in found if country and country in jurisdictions(d)]
    general = [d for d in found if not jurisdictions(d)]
    chosen = specific or general
    if not chosen:
        return None
    return max(chosen, key=lambda d: (_dated(d), d["id"]))


def _priority_codes(component: dict[str, Any]) -> list[str]:
    return model.codes(component.get("code"), PRIORITY)


def price(definition: dict[str, Any], priority: str) -> dict[str, Any]:
    """The Money a consultation of ``priority`` (routine | urgent) costs under ``definition``:
    its base price for the priority (else its uncoded base) plus surcharges and taxes, less
    discounts and deductions, that apply to the priority."""
    applying = [c for c in components(definition)
                if not _priority_codes(c) or priority in _priority_codes(c)]
    bases = [c for c in applying if c.get("type") == "base"]
    coded = [c for c in bases if _priority_codes(c)]
    if not bases:
        raise unprocessable(f"ChargeItemDefinition/{definition.get('id')} has no base price "
                            f"for a {priority} consultation", "ChargeItemDefinition")
    base = (coded or bases)[0]["amount"]
    total = Decimal(str(base["value"]))
    for c in applying:
        amount = Decimal(str((c.get("amount") or {}).get("value", 0)))
        if c.get("type") in ADDED:
            total += amount
        elif c.get("type") in SUBTRACTED:
            total -= amount
    return {"value": total, "currency": base["currency"]}


def definition_problems(definition: dict[str, Any]) -> list[str]:
    """Why a fee definition cannot price anything (empty: it can)."""
    parts = components(definition)
    out = []
    bases = [c for c in parts if c.get("type") == "base"]
    if not bases:
        out.append("it has no base priceComponent")
    else:
        out += [f"it has no base price for priority {p}" for p in PRIORITIES
                if not any(not _priority_codes(c) or p in _priority_codes(c) for c in bases)]
    currencies = set()
    for i, c in enumerate(parts):
        amount = c.get("amount") or {}
        if c.get("type") == "informational":
            continue
        if amount.get("value") is None or not amount.get("currency"):
            out.append(f"priceComponent {i} ({c.get('type')}) has no amount with a value and "
                       "a currency")
        else:
            currencies.add(amount["currency"])
    if len(currencies) > 1:
        out.append(f"its amounts are in several currencies ({', '.join(sorted(currencies))})")
    if not out:  # it can price: never less than nothing (a debit would become a credit)
        out += [f"at priority {p} a consultation would cost {money_text(m)}"
                for p in PRIORITIES
                if (m := price(definition, p))["value"] < 0]
    return out


def definition_before(event: WriteEvent) -> None:
    definition = event.resource
    if definition is None or not model.codes(definition.get("code"), model.CONSULTATION_TYPE):
        return
    problems = definition_problems(definition)
    if problems:
        raise unprocessable("[fee-schedule] this consultation fee cannot price a "
                            f"consultation: {'; '.join(problems)}", "ChargeItemDefinition."
                            "propertyGroup")


# -- accounts -----------------------------------------------------------------------------------

def balance_of(account: dict[str, Any]) -> dict[str, Any] | None:
    money = model.extension_value(account, model.EXT_PREPAID_BALANCE, "Money")
    if not money or money.get("value") is None:
        return None
    return {"value": Decimal(str(money["value"])), "currency": money.get("currency")}


def set_balance(account: dict[str, Any], money: dict[str, Any]) -> None:
    others = [e for e in account.get("extension") or []
              if e.get("url") != model.EXT_PREPAID_BALANCE]
    account["extension"] = [*others, {"url": model.EXT_PREPAID_BALANCE, "valueMoney": {
        "value": money["value"], "currency": money["currency"]}}]


def prepaid_account(tx: Transaction, org_id: str) -> dict[str, Any] | None:
    accounts = [a for a in search(tx, "Account", [("owner", f"Organization/{org_id}"),
                                                  ("status", "active")])
                if model.extensions(a, model.EXT_PREPAID_BALANCE)]
    return min(accounts, key=lambda a: a["id"]) if accounts else None


def new_account(org: dict[str, Any], currency: str) -> dict[str, Any]:
    name = org.get("name") or f"Organization/{org['id']}"
    account = {"resourceType": "Account", "id": new_id(), "status": "active",
               "name": f"Telemedicine prepaid account: {name}",
               "subject": [{"reference": f"Organization/{org['id']}"}],
               "owner": {"reference": f"Organization/{org['id']}"},
               "description": "Prepaid balance for telemedicine consultation fees, opened "
                              "with the first charge."}
    set_balance(account, {"value": Decimal(0), "currency": currency})
    return account


def money_text(money: dict[str, Any]) -> str:
    return f"{money['value']} {money['currency']}"


@contextmanager
def posting() -> Iterator[None]:
    """Around the fee rules' own writes of a balance (see :func:`account_before`)."""
    token = _POSTING.set(True)
    try:
        yield
    finally:
        _POSTING.reset(token)


def _same_money(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    if a is None or b is None:
        return a is b
    return a["value"] == b["value"] and a.get("currency") == b.get("currency")


def account_before(event: WriteEvent) -> None:
    """A balance is money owed or held: it moves only with a charge, a refund or a deposit,
    each with its notice and Provenance, never by editing the Account."""
    if _POSTING.get():
        return
    before = balance_of(event.previous) if event.previous is not None else None
    if event.resource is None:
        if before is not None and before["value"] != 0:
            raise unprocessable(f"[prepaid-balance] Account/{event.id} holds "
                                f"{money_text(before)}: an account with a balance is not "
                                "deleted (close it with status inactive)", "Account")
        return
    after = balance_of(event.resource)
    if before is None and (after is None or after["value"] == 0):
        return  # opened with a zero balance (or no prepaid balance at all)
    if not _same_money(before, after):
        raise unprocessable("[prepaid-balance] the prepaid balance changes only by "
                            "consultation charges, refunds and Account/[id]/$deposit",
                            "Account.extension")


# -- the consultation's parties -----------------------------------------------------------------

def _organization_of(tx: Transaction, ref: dict[str, Any] | None) -> str | None:
    """The organisation a reference stands for: itself, or a PractitionerRole's organization."""
    org = ref_id(ref, "Organization")
    if org:
        return org
    role = read(tx, "PractitionerRole", ref_id(ref, "PractitionerRole"))
    return ref_id((role or {}).get("organization"), "Organization")


def parties(tx: Transaction, task: dict[str, Any],
            sr: dict[str, Any] | None) -> tuple[str | None, str | None]:
    """(inviting, invited) organisation ids."""
    inviting = _organization_of(tx, (sr or {}).get("requester")) or \
        _organization_of(tx, task.get("requester"))
    invited = next((o for p in (sr or {}).get("performer") or []
                    if (o := ref_id(p, "Organization"))), None) or \
        _organization_of(tx, task.get("owner"))
    return inviting, invited


def _outputs(task: dict[str, Any], type_: str) -> list[str]:
    return [i for o in task.get("output") or [] if (i := ref_id(o.get("valueReference"), type_))]


def charges_of(tx: Transaction, task_id: str) -> list[dict[str, Any]]:
    return search(tx, "ChargeItem", [("identifier", f"{CHARGE_ID}|Task/{task_id}")])


def _priority(task: dict[str, Any], sr: dict[str, Any] | None) -> str:
    given = task.get("priority") or (sr or {}).get("priority")
    return "urgent" if given in ("urgent", "asap", "stat") else "routine"


def _notice(kind: str, inviting: str, invited: str | None, about: list[str], text: str,
            now: datetime, *, extra_kind: str | None = None,
            based_on: str | None = None) -> dict[str, Any]:
    comm: dict[str, Any] = {
        "resourceType": "Communication", "id": new_id(), "status": "completed",
        "category": [_concept(model.COMMUNICATION_KIND, kind)],
        "priority": "urgent" if extra_kind else "routine",
        "recipient": [{"reference": f"Organization/{inviting}"}],
        "about": [{"reference": r} for r in about],
        "sent": model.fhir_instant(now),
        "payload": [{"contentString": text}],
    }
    if extra_kind:
        comm["category"].append(_concept(model.COMMUNICATION_KIND, extra_kind))
    if invited:
        comm["sender"] = {"reference": f"Organization/{invited}"}
    if based_on:
        comm["basedOn"] = [{"reference": based_on}]
    return comm


# -- charge and refund --------------------------------------------------------------------------

def _occurrence(tx: Transaction, task: dict[str, Any], now: datetime) -> dict[str, Any]:
    booked = _outputs(task, "Appointment")
    appointment = read(tx, "Appointment", booked[-1]) if booked else None
    if appointment and appointment.get("start"):
        period = {"start": appointment["start"]}
        if appointment.get("end"):
            period["end"] = appointment["end"]
        return {"occurrencePeriod": period}
    return {"occurrenceDateTime": model.fhir_instant(now)}


def charge_item(task_id: str, task: dict[str, Any], sr: dict[str, Any] | None,
                definition: dict[str, Any], money: dict[str, Any], priority: str,
                inviting: str, invited: str | None, account_id: str,
                occurrence: dict[str, Any], encounter: str | None,
                now: datetime) -> dict[str, Any]:
    consultation = consultation_type(task) or ""
    canonical = definition["url"] + (f"|{definition['version']}"
                                     if definition.get("version") else "")
    item: dict[str, Any] = {
        "resourceType": "ChargeItem", "id": new_id(),
        "identifier": [{"system": CHARGE_ID, "value": f"Task/{task_id}"}],
        "definitionCanonical": [canonical], "status": "billable",
        "code": _concept(model.CONSULTATION_TYPE, consultation),
        "subject": task.get("for") or (sr or {}).get("subject"),
        **occurrence,
        "requestingOrganization": {"reference": f"Organization/{inviting}"},
        "quantity": {"value": 1},
        "priceOverride": money,
        "overrideReason": f"fee schedule price of a {priority} {consultation}",
        "enteredDate": model.fhir_instant(now),
        "account": [{"reference": f"Account/{account_id}"}],
        "supportingInformation": [{"reference": f"Task/{task_id}"}],
    }
    if invited:
        item["performingOrganization"] = {"reference": f"Organization/{invited}"}
    if encounter:
        item["context"] = {"reference": f"Encounter/{encounter}"}
    focus = ref_id(task.get("focus"), "ServiceRequest")
    if focus:
        item["supportingInformation"].append({"reference": f"ServiceRequest/{focus}"})
    return item


def charge(event: WriteEvent, task: dict[str, Any]) -> None:
    """Price the scheduled consultation, debit the inviting organisation, tell it."""
    tx, now = event.system, event.context.clock.now()
    if any(c.get("status") == "billable" for c in charges_of(tx, event.id)):
        return  # charged when first scheduled
    sr = read(tx, "ServiceRequest", ref_id(task.get("focus"), "ServiceRequest"))
    inviting, invited = parties(tx, task, sr)
    org = read(tx, "Organization", inviting)
    if org is None or inviting is None:
        return
    region = model.extension_value(org, model.EXT_REGION, "Code") or ""
    definition = fee_schedule(tx, consultation_type(task) or "", region.split("-")[0] or None,
                              now)
    if definition is None:
        return
    priority = _priority(task, sr)
    money = price(definition, priority)
    account = prepaid_account(tx, inviting)
    if account is None:
        account = new_account(org, money["currency"])
        event.write(account, method="POST")
    balance = balance_of(account) or {"value": Decimal(0), "currency": money["currency"]}
    if balance["currency"] != money["currency"]:
        raise unprocessable(f"[fee-currency] the fee ({money_text(money)}) is not in the "
                            f"currency of Account/{account['id']} ({balance['currency']})",
                            "Task.businessStatus")
    after = {"value": balance["value"] - money["value"], "currency": money["currency"]}
    set_balance(account, after)
    with posting():
        account_v = event.write(account)
    encounters = _outputs(task, "Encounter")
    item = charge_item(event.id, task, sr, definition, money, priority, inviting, invited,
                       account_v.id, _occurrence(tx, task, now),
                       encounters[-1] if encounters else None, now)
    item_v = event.write(item)
    negative = after["value"] < 0
    text = (f"Consultation fee of {money_text(money)} ({priority} {consultation_type(task)}, "
            f"Task/{event.id}) deducted from Account/{account_v.id}; balance "
            f"{money_text(after)}.")
    if negative:
        text += " The balance is negative: please top up the prepaid account."
    event.write(_notice("deduction-notice", inviting, invited,
                        [f"ChargeItem/{item_v.id}", f"Task/{event.id}", f"Account/{account_v.id}"],
                        text, now, extra_kind="top-up-request" if negative else None,
                        based_on=f"ServiceRequest/{sr['id']}" if sr else None))
    event.write(provenance([item_v, account_v], event.principal, now,
                           [data_operation("POST")], f"consultation fee charged: "
                           f"{money_text(money)}"))


def refund(event: WriteEvent, task: dict[str, Any]) -> None:
    """Undo the charges of a cancelled consultation."""
    tx, now = event.system, event.context.clock.now()
    for item in charges_of(tx, event.id):
        if item.get("status") != "billable":
            continue
        money = item.get("priceOverride") or {}
        amount = {"value": Decimal(str(money.get("value", 0))), "currency": money.get("currency")}
        item = copy.deepcopy(item)
        item["status"] = "entered-in-error"
        item.setdefault("note", []).append({"text": f"Refunded: Task/{event.id} was cancelled",
                                            "time": model.fhir_instant(now)})
        written = [event.write(item)]
        account_id = next((i for a in item.get("account") or []
                           if (i := ref_id(a, "Account"))), None)
        account = read(tx, "Account", account_id)
        text = f"Consultation fee of {money_text(amount)} for Task/{event.id} refunded"
        if account is not None:
            balance = balance_of(account) or {"value": Decimal(0),
                                              "currency": amount["currency"]}
            if balance["currency"] != amount["currency"]:
                raise unprocessable(f"[fee-currency] the refund ({money_text(amount)}) is not "
                                    f"in the currency of Account/{account_id}", "Task.status")
            after = {"value": balance["value"] + amount["value"], "currency": amount["currency"]}
            set_balance(account, after)
            with posting():
                written.append(event.write(account))
            text += f" to Account/{account_id}; balance {money_text(after)}"
        inviting = ref_id(item.get("requestingOrganization"), "Organization")
        if inviting:
            event.write(_notice("refund-notice", inviting,
                                ref_id(item.get("performingOrganization"), "Organization"),
                                [f"ChargeItem/{item['id']}", f"Task/{event.id}"], text + ".",
                                now))
        event.write(provenance(written, event.principal, now, [data_operation("PUT")],
                               f"consultation fee refunded: {money_text(amount)}",
                               "the consultation was cancelled"))


def follow(event: WriteEvent, task: dict[str, Any]) -> None:
    """A moved session: the billable ChargeItem's occurrence becomes the new time."""
    tx, now = event.system, event.context.clock.now()
    occurrence = _occurrence(tx, task, now)
    if "occurrencePeriod" not in occurrence:
        return
    for item in charges_of(tx, event.id):
        if item.get("status") != "billable" or \
                item.get("occurrencePeriod") == occurrence["occurrencePeriod"]:
            continue
        item = copy.deepcopy(item)
        item.pop("occurrenceDateTime", None)
        item.update(occurrence)
        event.write(item)


def _business(task: dict[str, Any] | None) -> str | None:
    found = model.codes((task or {}).get("businessStatus"), model.BUSINESS_STATUS)
    return found[0] if found else None


def task_after(event: WriteEvent) -> None:
    task, before = event.resource, event.previous
    if task is None or not consultation_type(task):
        return
    assert event.version is not None
    if event.current is not None and event.version.version == event.current.version:
        return  # nothing new was written
    status = task.get("status")
    if _business(task) == SCHEDULED and _business(before) != SCHEDULED and status not in FINAL:
        charge(event, task)
    elif _business(task) == RESCHEDULED and status not in FINAL:
        follow(event, task)
    if status == "cancelled" and (before or {}).get("status") != "cancelled":
        refund(event, task)


def install(hooks: WriteHooks) -> None:
    hooks.after("Task", task_after)
    hooks.before("ChargeItemDefinition", definition_before)
    hooks.before("Account", account_before)


# -- $deposit -------------------------------------------------------------------------------------

async def deposit(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """``Account/[id]/$deposit`` (amount: Money, or a number with ``currency``): top up the
    prepaid balance; returns the Account. A first deposit sets the balance's currency; later
    ones must be in it. Needs the right to update Account."""
    account_id = req.id
    assert account_id
    values = inputs(req, {"amount": "Money", "currency": "code"})
    amount = first(values, "amount")
    if amount is None:
        raise invalid("$deposit needs the amount", "amount")
    given = first(values, "currency")
    currency = amount.get("currency") or given
    if not currency:
        raise invalid("$deposit needs the amount's currency (a Money, or currency)", "currency")
    if given and given != currency:
        raise invalid(f"the amount is in {currency}, the currency parameter says {given}",
                      "currency")
    value = amount["value"]
    if not value.is_finite() or value <= 0:
        raise invalid("the amount deposited is a positive number", "amount")
    now = req.context.clock.now()

    def run(tx: Transaction) -> Version:
        system = unguarded(tx)
        account = read(system, "Account", account_id)
        if account is None:
            raise not_found("Account", account_id)
        if account.get("status") != "active":
            raise unprocessable(f"[prepaid-balance] Account/{account_id} is "
                                f"{account.get('status')}: deposits go to an active account",
                                "Account.status")
        balance = balance_of(account) or {"value": Decimal(0), "currency": currency}
        if balance["currency"] != currency:
            raise FhirError(422, "business-rule", f"[fee-currency] Account/{account_id} is kept "
                            f"in {balance['currency']}, not {currency}", "amount")
        after = {"value": balance["value"] + value, "currency": currency}
        set_balance(account, after)
        with posting():
            version = store(tx, req.context, req.principal, "Account", account_id, account,
                            prepare(account, "Account"), "PUT", tx.read("Account", account_id))
        record = provenance([version], req.principal, now, [data_operation("PUT")],
                            f"deposit of {value} {currency}; balance {money_text(after)}")
        store(system, req.context, req.principal, "Provenance", new_id(), record,
              prepare(record, "Provenance"), "POST", None)
        return version

    return FhirResponse(200, version=await store_.run(run))


OPERATIONS: tuple[Operation, ...] = (
    Operation("deposit", f"{model.BASE}/OperationDefinition/Account-deposit",
              frozenset({"instance"}), deposit,
              "Top up a member organisation's prepaid balance for consultation fees",
              ("POST",), ("Account",), parameters=(
                  ("amount", "in", 1, "1", "Money", "What is paid in (positive)"),
                  ("currency", "in", 0, "1", "code", "The currency, when the amount has none"),
                  ("return", "out", 1, "1", "Account", "The Account with its new balance"))),
)

"""``consilium demo``: load the demo network into the store of a data dir.

Everything goes through the server's write path (server.demo.client): the static part of the
network as one transaction Bundle, then the pool admissions, the deposits, and the week's
consultations and referrals as the operations and updates the people involved would make, with
the application's clock set to the moment of each (server.clock.FixedClock). The store is the
same SQLite file a running server uses (WAL: several processes share it), so the demo may be
loaded while the server runs.

Loading twice does not duplicate anything: the last resource written is a List
(``List/consilium-demo``) naming what the demo made; when it is there, nothing is loaded again.
"""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from server.clock import Clock, FixedClock, SystemClock
from server.config import Settings
from server.demo import network as net
from server.demo import story
from server.demo.client import DemoError, LocalFhir
from server.demo.story import Event, Timeline
from server.workflow import model

MARKER = "consilium-demo"
#: The resource types counted in the summary.
COUNTED = ("Organization", "Practitioner", "PractitionerRole", "Patient", "Consent", "Schedule",
           "Slot", "ServiceRequest", "Task", "Appointment", "Encounter", "DiagnosticReport",
           "Communication", "QuestionnaireResponse", "ChargeItem", "Account", "Provenance")

Progress = Callable[[int, int, str], None]  # (done, total, what)


@dataclass
class Summary:
    """What the demo holds after loading (or found, when it was loaded before)."""

    already_loaded: bool
    seconds: float = 0.0
    requests: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    task_states: dict[str, int] = field(default_factory=dict)
    overdue: list[str] = field(default_factory=list)


# -- the network --------------------------------------------------------------------------------

def roster(p: net.Person, today: date) -> list[dict[str, Any]]:
    """The expert's duty rosters: a Schedule per month with a free Slot per duty block."""
    zone = ZoneInfo(net.ZONES[p.org])
    days = [today + timedelta(days=d) for d in story.ROSTER_DAYS]
    out: list[dict[str, Any]] = []
    for month in sorted({(d.year, d.month) for d in days}):
        first = date(*month, 1)
        following = date(month[0] + month[1] // 12, month[1] % 12 + 1, 1)
        schedule_id = f"roster-{p.role}-{first:%Y-%m}"
        out.append({
            "resourceType": "Schedule", "id": schedule_id, "active": True,
            "serviceType": [{"text": "Telemedicine consultation"}],
            "specialty": [net.concept(model.SPECIALTY, p.specialty or "")],
            "actor": [net.ref("PractitionerRole", p.role)],
            "planningHorizon": {"start": datetime.combine(first, datetime.min.time(),
                                                          zone).isoformat(),
                                "end": datetime.combine(following, datetime.min.time(),
                                                        zone).isoformat()},
            "comment": f"Duty roster {first:%Y-%m}"})
        for d in (d for d in days if (d.year, d.month) == month):
            for i, (begin, end) in enumerate(story.DUTY_BLOCKS):
                out.append({
                    "resourceType": "Slot", "id": f"slot-{p.role}-{d:%Y%m%d}-{'ap'[i]}m",
                    "schedule": net.ref("Schedule", schedule_id), "status": "free",
                    "start": datetime.combine(d, begin, zone).isoformat(),
                    "end": datetime.combine(d, end, zone).isoformat()})
    return out


def static_resources(today: date) -> list[dict[str, Any]]:
    """Organisations, people (pool members join later), patients, consents, records, accounts
    and rosters."""
    out: list[dict[str, Any]] = [net.organization(o) for o in net.ORGS]
    out += [net.practitioner(p) for p in net.PEOPLE]
    out += [net.practitioner_role(p) for p in net.PEOPLE if p.code != "expert"]
    out += [net.patient(p) for p in net.PATIENTS] + [net.guardian()]
    out += [net.consent(p, "telemedicine-consultation", today) for p in net.PATIENTS]
    out += [net.consent(net.PATIENTS_BY_ID[pid], "referral", today, by)
            for pid, by in story.REFERRAL_CONSENTS.items()]
    out += [net.records(p) for p in net.PATIENTS]
    out += net.down_referral_papers("aodeng", "head-regional")
    out += [net.account(o) for o in net.ORGS if o.currency]
    for p in net.ROSTERED:
        out += roster(p, today)
    return out


def transaction(resources: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"fullUrl": f"{r['resourceType']}/{r['id']}", "resource": r,
         "request": {"method": "PUT", "url": f"{r['resourceType']}/{r['id']}"}}
        for r in resources]}


def network_events(t: Timeline) -> list[Event]:
    """The network set up a week ago: the static part, the pool (nominated by the employer,
    approved by the region), and the deposits of the inviting organisations."""
    start = t.at(8, "08:00")
    events = [Event(start, None, "POST", "", transaction(static_resources(t.today())),
                    "network")]
    for i, p in enumerate(net.EXPERTS):
        nominated = net.practitioner_role(p, "nominated")
        events.append(Event(t.at(8, "09:00") + timedelta(minutes=i), p.nominated_by, "PUT",
                            f"PractitionerRole/{p.role}", nominated, f"nominate {p.role}"))
        if p.approved_by:
            active = net.practitioner_role(p, "active")
            events.append(Event(t.at(7, "10:00") + timedelta(minutes=i), p.approved_by, "PUT",
                                f"PractitionerRole/{p.role}", active, f"admit {p.role}"))
    orgs = {o.id: o for o in net.ORGS}
    for i, (org, amount) in enumerate(story.DEPOSITS.items()):
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "amount", "valueMoney": {"value": amount,
                                              "currency": orgs[org].currency}}]}
        events.append(Event(t.at(7, "11:00") + timedelta(minutes=i), None, "POST",
                            f"Account/account-{org}/$deposit", body, f"deposit {org}"))
    return events


def marker(consultations: list[story.Consultation],
           referrals: list[story.Referral]) -> dict[str, Any]:
    """The List that says the demo is loaded, and what to look at."""
    entries = [net.ref("Organization", o.id) for o in net.ORGS]
    entries += [net.ref("Task", c.id) for c in consultations]
    entries += [net.ref("ServiceRequest", r.id) for r in referrals]
    return {"resourceType": "List", "id": MARKER, "status": "current", "mode": "working",
            "title": "Consilium demo network: organisations, consultations and referrals",
            "entry": [{"item": e} for e in entries]}


# -- loading ------------------------------------------------------------------------------------

async def _resolve(fhir: LocalFhir, path: str) -> str:
    """``{task:SR}`` -> ``Task/<id>`` of the Task the server made for ServiceRequest SR."""
    if not path.startswith("{task:"):
        return path
    request_id, _, rest = path[len("{task:"):].partition("}")
    tasks = await fhir.search("Task", f"focus=ServiceRequest/{request_id}")
    if len(tasks) != 1:
        raise DemoError(f"ServiceRequest/{request_id} has {len(tasks)} Tasks, not one")
    return f"Task/{tasks[0]['id']}{rest}"


async def replay(fhir: LocalFhir, clock: FixedClock, events: list[Event], now: datetime,
                 progress: Progress) -> int:
    """Each event in time order, the clock at its moment (never past ``now``)."""
    ordered = sorted(events, key=lambda e: e.at)
    for done, event in enumerate(ordered):
        if event.at > now:
            raise DemoError(f"the demo's story reaches into the future ({event.label} at "
                            f"{event.at.isoformat()})")
        clock.set(event.at)
        path = await _resolve(fhir, event.path)
        await fhir.request(event.method, path, event.body, actor=event.actor)
        progress(done + 1, len(ordered), event.label)
    return len(ordered)


async def count(fhir: LocalFhir, type_: str, query: str = "") -> int:
    found = await fhir.request("GET", f"{type_}?_summary=count{'&' + query if query else ''}")
    return int(found.get("total") or 0)


async def summarise(fhir: LocalFhir, summary: Summary, now: datetime) -> Summary:
    for type_ in COUNTED:
        summary.counts[type_] = await count(fhir, type_)
    states: collections.Counter[str] = collections.Counter()
    for task in await fhir.search("Task", "_elements=status"):
        states[task["status"]] += 1
    summary.task_states = dict(sorted(states.items()))
    overdue = await fhir.request("GET", "Task/$overdue")
    summary.overdue = [e["resource"]["id"] for e in overdue.get("entry") or []]
    return summary


async def load(settings: Settings, *, clock: Clock | None = None,
               progress: Progress | None = None) -> Summary:
    """Load the demo into the store of ``settings`` (its data dir); ``clock`` says what "now"
    is (the system clock unless a test gives another). Returns what is there afterwards."""
    from server import builtin
    from server.app import install_rules, warm_up
    from server.auth.keys import KeyStore
    from server.fhir.hooks import AppContext
    from server.storage import open_store

    began = time.monotonic()
    now = (clock or SystemClock()).now().astimezone(UTC).replace(microsecond=0)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyStore(settings.keys_dir)
    keys.ensure()
    store = open_store(settings)
    fixed = FixedClock(now)
    context = AppContext(settings, fixed, keys)
    fhir = LocalFhir(store, context)
    try:
        if await store.read("List", MARKER) is not None:
            return await summarise(fhir, Summary(already_loaded=True), now)
        if await store.read("Organization", net.ORGS[0].id) is not None:
            raise DemoError(f"{settings.data_dir} holds part of the demo network but not the "
                            "List that marks a finished load (an earlier load was interrupted?): "
                            "load the demo into a new data dir")
        warm_up()
        install_rules(context)
        await builtin.install(store)
        t = Timeline(now)
        consultations, consultation_events = story.consultations(t)
        referrals, referral_events = story.referrals(t)
        events = network_events(t) + consultation_events + referral_events
        requests = await replay(fhir, fixed, events, now, progress or (lambda *_: None))
        fixed.set(now)
        await fhir.request("PUT", f"List/{MARKER}", marker(consultations, referrals))
        summary = Summary(already_loaded=False, requests=requests + 1)
        await summarise(fhir, summary, now)
        summary.seconds = time.monotonic() - began
        return summary
    finally:
        await store.close()

"""Operations on consultation Tasks (declared in server.workflow.consultation).

Each operation builds the change a client could also make with a plain PUT and writes it
through the same rules (server.fhir.hooks.store): the state machine, who may do what, the
deadlines and the Provenance all apply. What an operation adds is the choosing and the booking:
the roster for ``$assign``, the Appointment, the virtual Encounter and the Slot for
``$schedule``, the Communications of the clarification loop, the replacing request of
``$redirect``. Everything an operation writes is one transaction.

Parameters come in a Parameters body (POST) or, for simple values, the query string.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from server.auth.guard import unguarded
from server.fhir import codec, hooks
from server.fhir.bundles import bundle, full_url, link_url
from server.fhir.errors import conflict, invalid, unprocessable
from server.fhir.prepare import prepare
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.writes import current_or_error, new_id
from server.search.registry import registry
from server.storage.base import ResourceStore, Transaction, Version
from server.workflow import deadlines, model, rosters, taskstate
from server.workflow.casefile import (
    Case,
    business_status,
    is_consultation_task,
    output_refs,
    read,
    ref,
    search,
    specialty,
    task_case,
    tasks_of,
)
from server.workflow.deadlines import FINAL
from server.workflow.intake import expert_problems, refusal, refuse

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OPEN_STATES = "draft,requested,received,accepted,in-progress"


# -- parameters -----------------------------------------------------------------------------------

class Params:
    """The operation's input parameters, from a Parameters body and the query string."""

    def __init__(self, req: FhirRequest):
        items: list[dict[str, Any]] = [{"name": k, "valueString": v} for k, v in req.params
                                       if not k.startswith("_")]
        if req.method == "POST" and req.body.strip():
            body = req.resource()
            if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
                raise invalid(f"${req.operation} takes a Parameters resource")
            items += [p for p in body.get("parameter") or [] if isinstance(p, dict)]
        self.items = items

    def all(self, name: str) -> list[dict[str, Any]]:
        return [p for p in self.items if p.get("name") == name]

    def first(self, name: str) -> dict[str, Any] | None:
        found = self.all(name)
        return found[0] if found else None

    def string(self, name: str) -> str | None:
        p = self.first(name) or {}
        return p.get("valueString") or p.get("valueMarkdown") or p.get("valueCode")

    def reference(self, name: str, type_: str) -> str | None:
        """The id of a ``type_`` given as valueReference, or as text ``Type/id`` or ``id``."""
        p = self.first(name)
        if p is None:
            return None
        value = (p.get("valueReference") or {}).get("reference") or p.get("valueString") or ""
        id_ = model.reference_id({"reference": value}, type_) if "/" in value else value
        if not id_:
            raise invalid(f"parameter {name} must refer to a {type_}", f"Parameters.{name}")
        return id_

    def concept(self, name: str, system: str) -> dict[str, Any] | None:
        """A CodeableConcept: valueCodeableConcept, valueCoding, or a bare code of ``system``."""
        p = self.first(name)
        if p is None:
            return None
        if "valueCodeableConcept" in p:
            return p["valueCodeableConcept"]
        if "valueCoding" in p:
            return {"coding": [p["valueCoding"]]}
        code = p.get("valueCode") or p.get("valueString")
        return {"coding": [{"system": system, "code": code}]} if code else None

    def instant(self, name: str) -> datetime | None:
        p = self.first(name) or {}
        text = p.get("valueDateTime") or p.get("valueInstant") or p.get("valueString")
        if not text:
            return None
        try:
            value = model.parse_datetime(text)
        except ValueError:
            raise invalid(f"parameter {name}: {text!r} is not a dateTime",
                          f"Parameters.{name}") from None
        if len(text) <= 10 or value.tzinfo is None:
            raise invalid(f"parameter {name} needs a time with its time zone",
                          f"Parameters.{name}")
        return value

    def attachments(self, name: str) -> list[dict[str, Any]]:
        return [p["valueAttachment"] for p in self.all(name) if "valueAttachment" in p]


# -- one change of a Task -------------------------------------------------------------------------

@dataclass
class Step:
    """The Task an operation changes, read in the operation's transaction."""

    req: FhirRequest
    tx: Transaction  # the caller's (scope-checked) transaction
    current: Version
    before: dict[str, Any]
    task: dict[str, Any]  # the new content, built by the operation
    case: Case
    now: datetime
    params: Params

    @property
    def id(self) -> str:
        return self.current.id

    @property
    def system(self) -> Transaction:
        return unguarded(self.tx)

    @property
    def status(self) -> str:
        return self.before.get("status") or ""

    def ensure_side(self, side: str | None, action: str) -> None:
        taskstate.require_side(self.system, self.req.principal, self.case, self.before, side,
                               action)

    def write(self, resource: dict[str, Any], method: str | None = None) -> Version:
        """Write another resource as the system, with its rules."""
        type_ = resource["resourceType"]
        id_ = resource.setdefault("id", new_id())
        current = self.system.read(type_, id_)
        method = method or ("PUT" if current is not None and not current.deleted else "POST")
        return hooks.store(self.system, self.req.context, self.req.principal, type_, id_,
                           resource, prepare(resource, type_), method, current)

    def save(self, as_system: bool = False) -> Version:
        """Write the changed Task (the caller's rights apply unless ``as_system``)."""
        tx = self.system if as_system else self.tx
        return hooks.store(tx, self.req.context, self.req.principal, "Task", self.id,
                           self.task, prepare(self.task, "Task"), "PUT", self.current)

    def note(self, text: str) -> None:
        self.task.setdefault("note", []).append({"time": model.fhir_instant(self.now),
                                                 "text": text})

    def need(self, states: tuple[str, ...], what: str) -> None:
        if self.status not in states:
            raise conflict(f"Task/{self.id} is {self.status}: {what}")


def open_step(req: FhirRequest, tx: Transaction, params: Params) -> Step:
    assert req.id
    current = current_or_error(tx.read("Task", req.id), "Task", req.id)
    assert current.body is not None
    before = codec.loads(current.body)
    if not is_consultation_task(before):
        raise unprocessable(f"Task/{req.id} is not a consultation Task")
    case = task_case(unguarded(tx), before)
    if case is None:
        raise unprocessable(f"Task/{req.id} has no consultation ServiceRequest in focus")
    return Step(req, tx, current, before, copy.deepcopy(before), case,
                req.context.clock.now(), params)


Build = Callable[[Step], Version | None]


async def run_step(req: FhirRequest, store: ResourceStore, side: str | None, action: str,
                   build: Build, status: int = 200) -> FhirResponse:
    """Open the Task, check the caller's side, build the change and write it (``build`` may
    write and return another resource instead)."""
    params = Params(req)

    def apply(tx: Transaction) -> Version:
        step = open_step(req, tx, params)
        step.ensure_side(side, action)
        other = build(step)
        return other if other is not None else step.save()

    version = await store.run(apply)
    return FhirResponse(status, version=version, location=status == 201)


def _set_note(step: Step) -> None:
    text = step.params.string("note")
    if text:
        step.note(text)


# -- the lifecycle --------------------------------------------------------------------------------

def _accept(step: Step) -> None:
    step.task["status"] = "accepted"
    _set_note(step)


async def accept(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$accept`` (note?): the invited side accepts."""
    return await run_step(req, store, taskstate.INVITED, "accept the consultation", _accept)


def _end_with_reason(step: Step, operation: str, system: str, status: str) -> None:
    """End the Task in ``status`` with the reason given (a code of ``system``)."""
    reason = step.params.concept("reason", system)
    if not model.codes(reason, system):
        raise unprocessable(f"${operation} needs a reason: a code from "
                            f"{system.rsplit('/', 1)[-1]} ({system})", "Parameters.reason")
    step.task["status"] = status
    step.task["statusReason"] = reason
    _set_note(step)


def _decline(step: Step) -> None:
    _end_with_reason(step, "decline", model.DECLINE_REASON, "rejected")


async def decline(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$decline`` (reason: decline-reason, note?): the invited side declines."""
    return await run_step(req, store, taskstate.INVITED, "decline the consultation", _decline)


def _cancel(step: Step) -> None:
    _end_with_reason(step, "cancel", model.CANCEL_REASON, "cancelled")


async def cancel(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$cancel`` (reason: cancel-reason, note?): the inviting side cancels."""
    return await run_step(req, store, taskstate.INVITING, "cancel the consultation", _cancel)


def _start(step: Step) -> None:
    step.task["status"] = "in-progress"
    step.task["businessStatus"] = business_status("in-session")
    step.task["executionPeriod"] = {"start": model.fhir_instant(step.now)}


async def start(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$start``: the session begins (Task in-progress, its Encounter in-progress)."""
    return await run_step(req, store, taskstate.INVITED, "start the session", _start)


def _complete(step: Step) -> None:
    report = step.params.reference("report", "DiagnosticReport")
    if report is None:
        raise unprocessable("$complete needs the report: a valueReference to the signed final "
                            "DiagnosticReport", "Parameters.report")
    step.need(("in-progress",), "a consultation is completed once its session has started")
    if report not in output_refs(step.task, "DiagnosticReport"):
        step.task.setdefault("output", []).append(output("report", "DiagnosticReport", report))
    step.task["status"] = "completed"
    step.task["businessStatus"] = business_status("report-delivered")
    period = step.task.setdefault("executionPeriod", {})
    period["end"] = model.fhir_instant(step.now)


async def complete(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$complete`` (report: Reference(DiagnosticReport), final and signed)."""
    return await run_step(req, store, taskstate.INVITED, "complete the consultation", _complete)


# -- the expert -----------------------------------------------------------------------------------

def duty_window(step: Step) -> tuple[datetime, datetime]:
    """From now until the session is due (two days when no session deadline applies)."""
    session = deadlines.read(step.before).get(deadlines.SESSION)
    end = session.due if session is not None and session.due > step.now \
        else step.now + timedelta(days=2)
    return step.now, end


def _substitute(step: Step, named: str | None, window: tuple[datetime, datetime]) -> str | None:
    """The first eligible expert on duty: of the named expert's organisation, else of the
    invited one."""
    wanted = specialty(step.case.request) or ""
    role = read(step.system, "PractitionerRole", named) if named else None
    org = model.reference_id((role or {}).get("organization"), "Organization") \
        or step.case.invited_id
    exclude = frozenset({named}) if named else frozenset()
    for candidate in rosters.duty_experts(step.system, wanted, *window, org, exclude):
        if not expert_problems(step.system, candidate, wanted, step.now, "Task.owner"):
            return candidate
    return None


def _assign(step: Step) -> None:
    step.need(("accepted",), "an expert is assigned once the consultation is accepted")
    wanted = specialty(step.case.request)
    window = duty_window(step)
    explicit = step.params.reference("expert", "PractitionerRole")
    if explicit:
        issues = expert_problems(step.system, explicit, wanted, step.now, "Parameters.expert")
        if issues:
            raise refuse(issues)
    named = explicit or step.case.named_expert
    fit = named is not None and (explicit is not None or not expert_problems(
        step.system, named, wanted, step.now, "Task.owner"))
    chosen: str | None = None
    if named is not None and fit and rosters.on_duty(step.system, named, *window):
        chosen = named
    else:
        chosen = _substitute(step, named, window)
        if chosen is not None and named is not None:
            step.note(f"PractitionerRole/{chosen} substitutes for PractitionerRole/{named}, "
                      f"who is not on duty between {model.fhir_instant(window[0])} and "
                      f"{model.fhir_instant(window[1])}")
    if chosen is None:
        raise refuse([refusal("no-expert-available", f"no expert of {wanted} in the pool is on "
                              f"duty between {model.fhir_instant(window[0])} and "
                              f"{model.fhir_instant(window[1])}", "Task.owner")])
    step.task["owner"] = ref("PractitionerRole", chosen)
    step.task["businessStatus"] = business_status("expert-assigned")
    _set_note(step)


async def assign(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$assign`` (expert?: Reference(PractitionerRole)): the named expert, or one on duty
    chosen from the roster; a substitute when the named one is not on duty."""
    return await run_step(req, store, taskstate.INVITED, "assign the expert", _assign)


# -- the session ----------------------------------------------------------------------------------

def output(kind: str, type_: str, id_: str) -> dict[str, Any]:
    return {"type": {"text": kind}, "valueReference": ref(type_, id_)}


def appointment(step: Step, expert: str, slot: str, start: datetime,
                end: datetime) -> dict[str, Any]:
    sr = step.case.request
    out: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": new_id(),
        "status": "booked",
        "basedOn": [ref("ServiceRequest", step.case.request_id)],
        "slot": [ref("Slot", slot)],
        "start": model.fhir_instant(start),
        "end": model.fhir_instant(end),
        "created": model.fhir_instant(step.now),
        "participant": [
            {"actor": step.task["for"], "required": "required", "status": "accepted"},
            {"actor": ref("PractitionerRole", expert), "required": "required",
             "status": "accepted"},
            {"actor": step.task["requester"], "required": "required", "status": "accepted"},
        ],
    }
    if sr.get("performerType"):
        out["specialty"] = [sr["performerType"]]
    if (sr.get("code") or {}).get("text"):
        out["description"] = sr["code"]["text"]
    return out


def encounter(step: Step, expert: str, appointment_id: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": new_id(),
        "status": "planned",
        "class": {"system": V3_ACT_CODE, "code": "VR", "display": "virtual"},
        "subject": step.task["for"],
        "basedOn": [ref("ServiceRequest", step.case.request_id)],
        "appointment": [ref("Appointment", appointment_id)],
        "participant": [{"individual": ref("PractitionerRole", expert)},
                        {"individual": step.task["requester"]}],
        "serviceProvider": ref("Organization", step.case.invited_id or ""),
    }


def _slot_status(step: Step, slot_id: str, status: str) -> None:
    slot = read(step.system, "Slot", slot_id)
    if slot is not None and slot.get("status") != status:
        slot["status"] = status
        step.write(slot)


def _session_times(step: Step) -> tuple[datetime, datetime]:
    start, end = step.params.instant("start"), step.params.instant("end")
    if start is None or end is None:
        raise invalid("$schedule needs start and end (dateTimes with a time zone)")
    if end <= start:
        raise invalid("the session must end after it starts", "Parameters.end")
    if start <= step.now:
        raise unprocessable(f"the session must start in the future (it is "
                            f"{model.fhir_instant(step.now)})", "Parameters.start")
    return start, end


def _schedule(step: Step) -> None:
    start, end = _session_times(step)
    step.need(("accepted",), "a session is scheduled once the consultation is accepted")
    expert = model.reference_id(step.before.get("owner"), "PractitionerRole")
    if expert is None:
        raise conflict(f"Task/{step.id} has no expert yet: assign one first ($assign)")
    booked = output_refs(step.before, "Appointment")
    old = read(step.system, "Appointment", booked[-1]) if booked else None
    held = frozenset(model.reference_id(s, "Slot") or "" for s in (old or {}).get("slot") or [])
    slot = rosters.slot_for(step.system, expert, start, end, held)
    if slot is None:
        raise refuse([refusal("roster", f"{model.fhir_instant(start)} to "
                              f"{model.fhir_instant(end)} is not within a free Slot of "
                              f"PractitionerRole/{expert}'s duty roster", "Parameters.start")])
    if old is not None:
        old.update(start=model.fhir_instant(start), end=model.fhir_instant(end),
                   slot=[ref("Slot", slot["id"])])
        step.write(old)  # the Appointment's rule refuses a change less than 2 h ahead
        for slot_id in held - {slot["id"]}:
            _slot_status(step, slot_id, "free")
        step.task["businessStatus"] = business_status("rescheduled")
    else:
        booking = appointment(step, expert, slot["id"], start, end)
        step.write(booking, "POST")
        visit = encounter(step, expert, booking["id"])
        step.write(visit, "POST")
        step.task.setdefault("output", []).extend([
            output("appointment", "Appointment", booking["id"]),
            output("encounter", "Encounter", visit["id"])])
        step.task["businessStatus"] = business_status("scheduled")
    _slot_status(step, slot["id"], "busy")
    _set_note(step)


async def schedule(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$schedule`` (start, end: dateTime): book the session in a free Slot of the expert's
    roster (or move it, at least 2 h before it was to start)."""
    return await run_step(req, store, taskstate.INVITED, "schedule the session", _schedule)


# -- the clarification loop -----------------------------------------------------------------------

def clarification(step: Step, kind: str, text: str) -> dict[str, Any]:
    payload: list[dict[str, Any]] = [{"contentString": text}]
    payload += [{"contentAttachment": a} for a in step.params.attachments("attachment")]
    return {
        "resourceType": "Communication",
        "id": new_id(),
        "status": "completed",
        "category": [{"coding": [{"system": model.COMMUNICATION_KIND, "code": kind}]}],
        "partOf": [ref("Task", step.id)],
        "payload": payload,
    }


def _write_communication(step: Step, comm: dict[str, Any]) -> Version:
    return hooks.store(step.tx, step.req.context, step.req.principal, "Communication",
                       comm["id"], comm, prepare(comm, "Communication"), "POST", None)


def _ask(step: Step) -> Version:
    text = step.params.string("question")
    if not text:
        raise invalid("$ask needs the question (valueString)", "Parameters.question")
    return _write_communication(step, clarification(step, "clarification-request", text))


async def ask(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$ask`` (question: string, attachment*): the invited side asks for more information;
    returns the Communication."""
    return await run_step(req, store, taskstate.INVITED, "ask for more information", _ask, 201)


def _last_question(step: Step) -> str | None:
    asked = search(step.system, "Communication", [
        ("part-of", f"Task/{step.id}"),
        ("category", f"{model.COMMUNICATION_KIND}|clarification-request")])
    asked.sort(key=lambda c: (c.get("sent") or "", (c.get("meta") or {}).get("lastUpdated")
                              or ""))
    return asked[-1]["id"] if asked else None


def _answer(step: Step) -> Version:
    text = step.params.string("answer")
    if not text:
        raise invalid("$answer needs the answer (valueString)", "Parameters.answer")
    comm = clarification(step, "clarification-response", text)
    question = step.params.reference("question", "Communication") or _last_question(step)
    if question:
        comm["inResponseTo"] = [ref("Communication", question)]
    return _write_communication(step, comm)


async def answer(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$answer`` (answer: string, attachment*, question?: Reference(Communication)): the
    inviting side answers; returns the Communication."""
    return await run_step(req, store, taskstate.INVITING, "answer a request for information",
                          _answer, 201)


# -- redirect -------------------------------------------------------------------------------------

def _redirect(step: Step) -> Version:
    org = step.params.reference("organization", "Organization")
    expert = step.params.reference("expert", "PractitionerRole")
    if org is None and expert is None:
        raise invalid("$redirect needs the organization or the expert to send the request to")
    if step.status in FINAL:
        raise conflict(f"Task/{step.id} is {step.status}: it cannot be redirected")
    if org is None:
        role = read(step.system, "PractitionerRole", expert)
        org = model.reference_id((role or {}).get("organization"), "Organization")
        if org is None:
            raise unprocessable(f"PractitionerRole/{expert} has no known organization",
                                "Parameters.expert")
    old = step.case.request
    new_request = copy.deepcopy(old)
    for key in ("id", "meta", "text", "identifier"):
        new_request.pop(key, None)
    new_request["id"] = new_id()
    new_request["status"] = "active"
    new_request["authoredOn"] = model.fhir_instant(step.now)
    new_request["replaces"] = [ref("ServiceRequest", step.case.request_id)]
    new_request["performer"] = [ref("Organization", org)] + (
        [ref("PractitionerRole", expert)] if expert else [])
    reason = step.params.concept("reason", model.CANCEL_REASON) or {
        "coding": [{"system": model.CANCEL_REASON, "code": "duplicate-request"}]}
    reason = {**reason, "text": reason.get("text") or
              f"Redirected: replaced by ServiceRequest/{new_request['id']}"}
    step.task["status"] = "cancelled"
    step.task["statusReason"] = reason
    _set_note(step)
    step.save(as_system=True)  # the caller's side was checked; either side may redirect
    step.write({**copy.deepcopy(old), "status": "revoked"})
    step.write(new_request, "POST")
    created = tasks_of(step.system, new_request["id"])
    version = step.system.read("Task", created[0]["id"]) if created else None
    assert version is not None
    return version


async def redirect(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``$redirect`` (organization?, expert?, reason?: cancel-reason, note?): a new request to
    another organisation or expert replaces this one (``replaces``); this Task is cancelled and
    its request revoked. Returns the new Task."""
    return await run_step(req, store, None, "redirect the consultation", _redirect, 201)


# -- overdue --------------------------------------------------------------------------------------

def task_organizations(tx: Transaction, task: dict[str, Any],
                       roles: dict[str, str | None]) -> set[str]:
    """The organisations a Task involves: its owner's and its requester's."""
    out = set()
    for reference in (task.get("owner"), task.get("requester")):
        org = model.reference_id(reference, "Organization")
        role = model.reference_id(reference, "PractitionerRole")
        if role is not None:
            if role not in roles:
                found = read(tx, "PractitionerRole", role)
                roles[role] = model.reference_id((found or {}).get("organization"),
                                                 "Organization")
            org = roles[role]
        if org:
            out.add(org)
    return out


def overdue_tasks(tx: Transaction, now: datetime,
                  organization: str | None) -> list[dict[str, Any]]:
    params = [("status", OPEN_STATES)]
    if registry().get("Task", "deadline") is not None:
        params.append(("deadline", f"lt{model.fhir_instant(now)}"))
    found = [t for t in search(tx, "Task", params)
             if is_consultation_task(t) and deadlines.is_overdue(t, now)]
    if organization is not None:
        roles: dict[str, str | None] = {}
        found = [t for t in found
                 if organization in task_organizations(unguarded(tx), t, roles)]
    return sorted(found, key=lambda t: (t["restriction"]["period"]["end"], t["id"]))


async def overdue(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """``Task/$overdue`` (organization?): a searchset of the consultation Tasks whose current
    deadline has passed and that are not done, optionally of one organisation (inviting or
    invited), the most overdue first."""
    params = Params(req)
    organization = params.reference("organization", "Organization")
    now = req.context.clock.now()
    tasks = await store.run(lambda tx: overdue_tasks(tx, now, organization))
    entries = [{"fullUrl": full_url(req.base, "Task", t["id"]), "resource": t,
                "search": {"mode": "match"}} for t in tasks]
    links = [("self", link_url(req.base, "Task/$overdue", req.params))]
    return FhirResponse(200, resource=bundle("searchset", entries, links, len(entries)))

"""The consultation lifecycle as rules on plain FHIR writes, and as operations on Task.

* Filing a consultation ServiceRequest (status active) checks it (server.workflow.intake) and
  creates its Task in the same transaction: status requested, owner the invited organisation,
  with every deadline (server.workflow.deadlines).
* Every write of a consultation Task follows the state machine and the rules of who may do
  what (server.workflow.taskstate); its deadlines are recomputed, met steps stamped, and the
  current one put in ``restriction.period.end``; each new version gets a Provenance
  (server.workflow.trail). Changes of status carry over to the session's Appointment,
  Encounter and roster Slot.
* The clarification loop: a Communication of kind clarification-request from the invited side
  (``partOf`` the Task) puts the Task in business status awaiting-information; the inviting
  side's clarification-response (text and attachments) in information-provided.
* Moving a booked session less than 2 h before it starts is refused (IM A7 第二部分 一(一)6).

The operations (server.workflow.consultation_ops) build the same writes, so a client may use
either: ``$accept``, ``$decline``, ``$assign``, ``$schedule``, ``$start``, ``$complete``,
``$cancel``, ``$ask``, ``$answer``, ``$redirect`` on a Task, and ``Task/$overdue``.
"""

from __future__ import annotations

import copy
from datetime import datetime
from typing import Any

from server.auth.guard import GuardedTransaction
from server.fhir.errors import FhirError, Issue, conflict, unprocessable
from server.fhir.hooks import WriteEvent, WriteHooks
from server.fhir.table import Operation
from server.fhir.writes import new_id
from server.storage.base import Transaction
from server.workflow import consultation_api, deadlines, model, taskstate, trail
from server.workflow.casefile import (
    Case,
    business_code,
    business_status,
    case_of,
    consultation_type,
    has_records,
    is_consultation_request,
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
from server.workflow.intake import check_request, expert_problems, refusal, refuse
from server.workflow.profiles import require_profile

CLARIFICATION_REQUEST = "clarification-request"
CLARIFICATION_RESPONSE = "clarification-response"
#: The business status a clarification puts the Task in.
CLARIFICATION_STATUS = {CLARIFICATION_REQUEST: "awaiting-information",
                        CLARIFICATION_RESPONSE: "information-provided"}
PAPERWORK_PENDING = "paperwork-pending"
REPORT_STATUSES = frozenset({"final", "amended", "corrected", "appended"})


def client_write(event: WriteEvent) -> bool:
    """A write the caller asked for, not one the server's rules make (those run in the
    unguarded transaction). Without authorization both look alike, and nothing is checked."""
    return isinstance(event.tx, GuardedTransaction)


def unchanged(event: WriteEvent) -> bool:
    return event.current is not None and event.version is not None \
        and event.version.version == event.current.version


# -- the request ----------------------------------------------------------------------------------

#: What a filed request keeps while its Task is open: the parties and the service. Another
#: organisation or expert is a new request ($redirect).
LOCKED = ("subject", "requester", "performer", "performerType", "category", "priority")


def request_before(event: WriteEvent) -> None:
    sr, before = event.resource, event.previous
    if sr is None:
        if is_consultation_request(before) and tasks_of(event.system, event.id):
            raise conflict(f"ServiceRequest/{event.id} has a consultation Task: cancel the Task "
                           "(or revoke the request) instead of deleting it")
        return
    if not is_consultation_request(sr):
        return
    moved = [k for k in LOCKED if before is not None and sr.get(k) != before.get(k)]
    if moved and any(t.get("status") not in FINAL for t in tasks_of(event.system, event.id)):
        raise unprocessable(f"ServiceRequest/{event.id} is being handled: its "
                            f"{', '.join(moved)} may not change (redirect the consultation "
                            "with $redirect, or cancel it and file a new request)",
                            [f"ServiceRequest.{k}" for k in moved])
    if sr.get("status") != "active":
        return
    filing = before is None or before.get("status") != "active"
    # Once filed, the form must stay complete; the other rules were checked when it was filed.
    check_request(event.system, event.id, sr, event.context.clock.now(),
                  contents_only=not filing)


def new_task(event: WriteEvent, case: Case) -> dict[str, Any]:
    sr = case.request
    task: dict[str, Any] = {
        "resourceType": "Task",
        "id": new_id(),
        "meta": {"profile": [model.CONSULTATION_TASK]},
        "status": "requested",
        "intent": "order",
        "priority": sr["priority"],
        "code": {"coding": [{"system": model.CONSULTATION_TYPE,
                             "code": consultation_type(sr, "category")}]},
        "focus": ref("ServiceRequest", event.id),
        "basedOn": [ref("ServiceRequest", event.id)],
        "for": sr["subject"],
        "authoredOn": model.fhir_instant(event.context.clock.now()),
        "requester": sr["requester"],
        "owner": ref("Organization", case.invited_id or ""),
    }
    if (sr.get("code") or {}).get("text"):
        task["description"] = sr["code"]["text"]
    if case.papers_later() and not has_records(sr):
        task["businessStatus"] = business_status(PAPERWORK_PENDING)
    return task


def request_after(event: WriteEvent) -> None:
    sr = event.resource
    if sr is None or not is_consultation_request(sr) or unchanged(event):
        return
    event.write(trail.provenance(event, trail.data_operation(event.method),
                                 agent_type="author"))
    tx = event.system
    tasks = tasks_of(tx, event.id)
    open_tasks = [t for t in tasks if t.get("status") not in FINAL]
    status = sr.get("status")
    if status == "active" and not tasks:
        case = case_of(tx, event.id, sr)
        assert case is not None
        event.write(new_task(event, case))
    elif status == "active":
        for task in open_tasks:  # its deadlines may depend on what changed (records supplied)
            event.write(task)
    elif status in ("revoked", "entered-in-error"):
        reason = "requester-withdrew" if status == "revoked" else "entered-in-error"
        for task in open_tasks:
            task["status"] = "cancelled"
            task["statusReason"] = {"coding": [{"system": model.CANCEL_REASON, "code": reason}]}
            event.write(task)


# -- the Task -------------------------------------------------------------------------------------

def steps_done(task: dict[str, Any], case: Case) -> set[str]:
    status = task.get("status")
    done = set()
    if status in ("received", "accepted", "rejected", "in-progress", "completed"):
        done.add(deadlines.ACCEPTANCE)
    if has_records(case.request):
        done.add(deadlines.PAPERS)
    if model.reference_id(task.get("owner"), "PractitionerRole"):
        done.add(deadlines.EXPERT)
    if status in ("in-progress", "completed"):
        done.add(deadlines.SESSION)
    if status == "completed":
        done.add(deadlines.REPORT)
    return done


def session_end(tx: Transaction, task: dict[str, Any]) -> datetime | None:
    ids = output_refs(task, "Appointment")
    appointment = read(tx, "Appointment", ids[-1]) if ids else None
    end = (appointment or {}).get("end")
    return model.parse_datetime(end) if end else None


def refresh_deadlines(tx: Transaction, task: dict[str, Any], case: Case,
                      before: dict[str, deadlines.Deadline], papers_pending: bool,
                      now: datetime) -> None:
    filing = deadlines.Filing(
        filed=model.parse_datetime(task["authoredOn"]), zone=model.zone(case.inviting),
        urgent=case.urgent, primary=case.primary, same_region=case.same_region,
        named_expert=case.named_expert is not None, papers_pending=papers_pending)
    due = deadlines.due_times(filing, session_end(tx, task))
    done = steps_done(task, case)
    deadlines.write(task, deadlines.settle(due, before, done, now))
    if deadlines.PAPERS in done and business_code(task) == PAPERWORK_PENDING:
        task.pop("businessStatus", None)


def signed(tx: Transaction, report_id: str) -> bool:
    """Whether a Provenance with a signature targets the report (the reports part signs)."""
    return any(p.get("signature") for p in
               search(tx, "Provenance", [("target", f"DiagnosticReport/{report_id}")]))


def report_problems(tx: Transaction, case: Case, task: dict[str, Any]) -> list[Issue]:
    ids = output_refs(task, "DiagnosticReport")
    if not ids:
        return [Issue("business-rule", "a completed consultation Task names its signed report "
                      "in output", expression=["Task.output"])]
    report = read(tx, "DiagnosticReport", ids[-1])
    where = f"DiagnosticReport/{ids[-1]}"
    if report is None:
        return [Issue("business-rule", f"{where} is not known", expression=["Task.output"])]
    out = []
    if report.get("status") not in REPORT_STATUSES:
        out.append(Issue("business-rule", f"{where} is {report.get('status')}, not final",
                         expression=["Task.output"]))
    if not signed(tx, ids[-1]):
        out.append(Issue("business-rule", f"{where} is not signed (no Provenance with a "
                         "signature targets it)", expression=["Task.output"]))
    based_on = [model.reference_id(r, "ServiceRequest") for r in report.get("basedOn") or []]
    if case.request_id not in based_on:
        out.append(Issue("business-rule", f"{where} is not basedOn ServiceRequest/"
                         f"{case.request_id}", expression=["Task.output"]))
    return out


def check_step(event: WriteEvent, case: Case, before: dict[str, Any],
               task: dict[str, Any]) -> None:
    """What a change needs besides a legal transition: an expert to start, a signed final
    report to complete, an eligible expert to assign."""
    tx, status = event.system, task.get("status")
    new_status = status != before.get("status")
    if new_status and status == "in-progress" and \
            not model.reference_id(task.get("owner"), "PractitionerRole"):
        raise unprocessable("a consultation starts once an expert is assigned (owner a "
                            "PractitionerRole)", "Task.owner")
    outputs_changed = output_refs(before, "DiagnosticReport") != output_refs(
        task, "DiagnosticReport")
    if status == "completed" and (new_status or outputs_changed):
        issues = report_problems(tx, case, task)
        if issues:
            raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)
    if task.get("owner") != before.get("owner"):
        booked = output_refs(before, "Appointment")
        if booked and status not in FINAL:
            raise conflict(f"the session is booked (Appointment/{booked[-1]}): the expert does "
                           "not change once it is; cancel and redirect the consultation instead")
        check_owner(event, case, task)


def check_owner(event: WriteEvent, case: Case, task: dict[str, Any]) -> None:
    owner = task.get("owner")
    expert = model.reference_id(owner, "PractitionerRole")
    if expert is None:
        if model.reference_id(owner, "Organization") == case.invited_id:
            return
        raise unprocessable("the owner of a consultation Task is the invited organisation or "
                            "the assigned expert's PractitionerRole (redirect with $redirect)",
                            "Task.owner")
    issues = expert_problems(event.system, expert, specialty(case.request),
                             event.context.clock.now(), "Task.owner")
    if issues:
        raise refuse(issues)


def _differs(before: dict[str, Any], after: dict[str, Any]) -> bool:
    skip = {"meta", "text", "lastModified"}
    keys = (set(before) | set(after)) - skip
    return any(before.get(k) != after.get(k) for k in keys)


def task_before(event: WriteEvent) -> None:
    task, before = event.resource, event.previous
    if task is None:
        if is_consultation_task(before) and client_write(event) \
                and not taskstate.unchecked(event.principal):
            raise conflict(f"Task/{event.id} is a consultation Task: it is cancelled ($cancel), "
                           "not deleted")
        return
    if not (is_consultation_task(task) or is_consultation_task(before)):
        return
    tx, now = event.system, event.context.clock.now()
    case = task_case(tx, task)
    if case is None:
        raise unprocessable("a consultation Task's focus is its consultation ServiceRequest",
                            "Task.focus")
    if before is None:
        if client_write(event) and not taskstate.unchecked(event.principal):
            raise unprocessable("a consultation Task is created by the server when its "
                                "ServiceRequest is filed")
        task.setdefault("authoredOn", model.fhir_instant(now))
        earlier: dict[str, deadlines.Deadline] = {}
        papers = case.papers_later() and not has_records(case.request)
    else:
        old = before.get("status") or ""
        taskstate.check_transition(event.id, old, task.get("status") or "")
        taskstate.check_fields(event.id, before, task)
        taskstate.check_reason(task, old)
        if client_write(event):
            side, action = taskstate.required_side(before, task)
            taskstate.require_side(tx, event.principal, case, before, side, action)
        check_step(event, case, before, task)
        earlier = deadlines.read(before)
        papers = deadlines.PAPERS in earlier
        task["authoredOn"] = before.get("authoredOn") or task.get("authoredOn")
    refresh_deadlines(tx, task, case, earlier, papers, now)
    _claim_profile(task)
    if before is None or _differs(before, task):
        task["lastModified"] = model.fhir_instant(now)
    elif before.get("lastModified"):
        task["lastModified"] = before["lastModified"]
    require_profile(task, model.CONSULTATION_TASK)


def _claim_profile(task: dict[str, Any]) -> None:
    meta = task.setdefault("meta", {})
    profiles = meta.setdefault("profile", [])
    if model.CONSULTATION_TASK not in profiles:
        profiles.append(model.CONSULTATION_TASK)


def _activity(before: dict[str, Any] | None, task: dict[str, Any], method: str) -> dict[str, Any]:
    activity = trail.data_operation(method)
    old, new = (before or {}).get("status"), task.get("status")
    if before is None:
        activity["text"] = f"consultation Task created ({new})"
    elif old != new:
        activity["text"] = f"status {old} -> {new}"
    else:
        step = business_code(task)
        activity["text"] = f"updated ({new}{', ' + step if step else ''})"
    return activity


def task_after(event: WriteEvent) -> None:
    task, before = event.resource, event.previous
    if task is None or not is_consultation_task(task) or unchanged(event):
        return
    status = task.get("status")
    moved = before is None or before.get("status") != status
    reason = task.get("statusReason") if moved and status in ("rejected", "cancelled",
                                                              "failed") else None
    event.write(trail.provenance(event, _activity(before, task, event.method),
                                 reason=[reason] if reason else None, agent_type="author"))
    if before is not None and moved:
        carry_over(event, task)


def carry_over(event: WriteEvent, task: dict[str, Any]) -> None:
    """The session follows the Task: the Encounter starts and ends with it; a Task that ends
    without a session cancels the Appointment and frees its roster Slot."""
    tx, status = event.system, task.get("status")
    now = model.fhir_instant(event.context.clock.now())
    for id_ in output_refs(task, "Encounter"):
        encounter = read(tx, "Encounter", id_)
        if encounter is None:
            continue
        if status == "in-progress" and encounter.get("status") == "planned":
            encounter["status"] = "in-progress"
            encounter["period"] = {"start": now}
        elif status == "completed" and encounter.get("status") in ("planned", "in-progress"):
            encounter["status"] = "finished"
            encounter["period"] = {**(encounter.get("period") or {"start": now}), "end": now}
        elif status in FINAL and encounter.get("status") in ("planned", "in-progress"):
            encounter["status"] = "cancelled"
        else:
            continue
        event.write(encounter)
    for id_ in output_refs(task, "Appointment"):
        appointment = read(tx, "Appointment", id_)
        if appointment is None or appointment.get("status") != "booked":
            continue
        if status == "completed":
            appointment["status"] = "fulfilled"
        elif status in FINAL:
            appointment["status"] = "cancelled"
            free_slots(event, appointment)
        else:
            continue
        event.write(appointment)


def free_slots(event: WriteEvent, appointment: dict[str, Any]) -> None:
    for slot_ref in appointment.get("slot") or []:
        slot = read(event.system, "Slot", model.reference_id(slot_ref, "Slot"))
        if slot is not None and slot.get("status") == "busy":
            slot["status"] = "free"
            event.write(slot)


# -- the session's Appointment ------------------------------------------------------------------

def appointment_before(event: WriteEvent) -> None:
    appointment, before = event.resource, event.previous
    if appointment is None or before is None or before.get("status") != "booked":
        return
    if (appointment.get("start"), appointment.get("end")) == (before.get("start"),
                                                              before.get("end")):
        return
    requests = [model.reference_id(r, "ServiceRequest") for r in before.get("basedOn") or []]
    sr = read(event.system, "ServiceRequest", next((r for r in requests if r), None))
    if not is_consultation_request(sr) or not before.get("start"):
        return
    now = event.context.clock.now()
    start = model.parse_datetime(before["start"])
    if start - now < deadlines.RESCHEDULE_NOTICE:
        raise refuse([refusal("reschedule-notice", f"the session booked for "
                              f"{model.fhir_instant(start)} may change only until "
                              f"{model.fhir_instant(start - deadlines.RESCHEDULE_NOTICE)} "
                              f"(2 h before it); it is {model.fhir_instant(now)}",
                              "Appointment.start")])


# -- the clarification loop ---------------------------------------------------------------------

def clarification_kind(comm: dict[str, Any] | None) -> str | None:
    for concept in (comm or {}).get("category") or []:
        for code in model.codes(concept, model.COMMUNICATION_KIND):
            if code in CLARIFICATION_STATUS:
                return code
    return None


def clarified_task(tx: Transaction, comm: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    for part in comm.get("partOf") or []:
        task_id = model.reference_id(part, "Task")
        task = read(tx, "Task", task_id)
        if task_id and is_consultation_task(task):
            assert task is not None
            return task_id, task
    raise unprocessable("a clarification names its consultation Task in partOf",
                        "Communication.partOf")


def communication_before(event: WriteEvent) -> None:
    comm = event.resource
    kind = clarification_kind(comm)
    if comm is None or kind is None or event.previous is not None:
        return
    tx = event.system
    task_id, task = clarified_task(tx, comm)
    if task.get("status") in FINAL:
        raise conflict(f"Task/{task_id} is {task.get('status')}: it takes no more "
                       "clarifications")
    if not comm.get("payload"):
        raise unprocessable(f"a {kind} carries its text (and attachments) in payload",
                            "Communication.payload")
    case = task_case(tx, task)
    assert case is not None
    asking = kind == CLARIFICATION_REQUEST
    if client_write(event):
        taskstate.require_side(tx, event.principal, case, task,
                               taskstate.INVITED if asking else taskstate.INVITING,
                               "ask for more information" if asking else
                               "answer a request for information")
    comm.setdefault("subject", task.get("for"))
    comm.setdefault("basedOn", [ref("ServiceRequest", case.request_id)])
    comm.setdefault("sent", model.fhir_instant(event.context.clock.now()))
    recipient = task.get("requester") if asking else task.get("owner")
    if recipient:
        comm.setdefault("recipient", [recipient])
    if event.principal.fhir_user:
        comm.setdefault("sender", {"reference": event.principal.fhir_user})


def communication_after(event: WriteEvent) -> None:
    comm = event.resource
    kind = clarification_kind(comm)
    if comm is None or kind is None or event.current is not None:
        return
    task_id, task = clarified_task(event.system, comm)
    task = copy.deepcopy(task)
    task["businessStatus"] = business_status(CLARIFICATION_STATUS[kind])
    event.write(task)


# -- wiring ---------------------------------------------------------------------------------------

def install(hooks: WriteHooks) -> None:
    hooks.before("ServiceRequest", request_before)
    hooks.after("ServiceRequest", request_after)
    hooks.before("Task", task_before)
    hooks.after("Task", task_after)
    hooks.before("Communication", communication_before)
    hooks.after("Communication", communication_after)
    hooks.before("Appointment", appointment_before)


#: Declared with their OperationDefinitions in server.workflow.consultation_api.
OPERATIONS: tuple[Operation, ...] = consultation_api.operations()

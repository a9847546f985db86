"""Two-way referral (双向转诊): up to a higher level of care, down back to primary care.

A referral is a ServiceRequest with category consultation-type#referral and the extension
referral-direction (up|down). When it is (or becomes) ``active`` these rules must hold, else the
write is refused with 422 and an OperationOutcome naming each broken rule:

- ``referral-direction``: the direction is given (up or down);
- ``referral-indication``: a reasonCode from referral-indication whose ``direction`` property
  fits the direction (``authority-defined`` fits both);
- ``referral-sender`` / ``referral-receiver``: the requester is a PractitionerRole of the sending
  organisation, the performer is the receiving Organization;
- ``referral-care-level``: an up-referral goes to a higher care level, a down-referral to a lower
  one (the care-level extension of both organisations);
- ``referral-consent``: supportingInfo names an active Consent of category referral for the
  patient, in its period, given by the patient or by a RelatedPerson of the patient (a guardian
  or relative, where the patient should not be told);
- ``referral-supporting-info``: everything supportingInfo names exists and is about the patient;
- for a down-referral, supportingInfo carries ``referral-results`` (an Observation or a
  DiagnosticReport), ``referral-plan`` (a CarePlan: the follow-up treatment plan) and
  ``referral-rehabilitation`` (rehabilitation guidance: a DocumentReference whose type or
  category is one of model.REHABILITATION_DOCUMENT_TYPES, or a CarePlan with category
  model.REHABILITATION_CAREPLAN_CATEGORY and at least one activity; one such CarePlan may be the
  treatment plan as well).

The referral's Task (code referral, focus the request, requester the sending PractitionerRole,
owner the receiving Organization) is created in the same transaction. Its steps are recorded as
Task.output entries typed with the business-status code and valued with the date:
``confirmed-by-sender`` and ``confirmed-by-receiver`` (each only by its own side: a token whose
fhirUser is a PractitionerRole of that organisation, the sending PractitionerRole itself, or a
Practitioner with such a role; system clients may act for either side), then ``transferred-out``
(sending side, after both confirmations) and ``transferred-in`` (receiving side, after the
transfer out). The status follows: requested -> accepted (receiver confirmed) -> in-progress
(transferred out) -> completed (transferred in); the receiver may reject and the sender cancel
(statusReason required) before the patient leaves. ``businessStatus`` shows the latest step and
``executionPeriod`` runs from the transfer out to the transfer in. ``$confirm``,
``$transfer-out`` and ``$transfer-in`` write these steps; a plain update of the Task is checked by
the same rules (a step may also be added by setting businessStatus to it). Every change of a
referral request or Task gets a Provenance.

``Organization/[id]/$referral-register?period=&direction=in|out`` lists the transfers out of
and into the organisation in a period (a searchset of the Tasks, their requests included).
"""

from __future__ import annotations

import calendar
from datetime import datetime, timedelta
from typing import Any, NoReturn

from server.auth.guard import unguarded
from server.fhir import codec
from server.fhir.bundles import Stored, bundle, full_url, link_url
from server.fhir.errors import FhirError, Issue, conflict, invalid, unprocessable
from server.fhir.hooks import WriteEvent, WriteHooks, store
from server.fhir.prepare import prepare
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.fhir.writes import current_or_error
from server.search.query import parse
from server.storage.base import ResourceStore, Transaction, Version, same_content
from server.terminology.library import library
from server.terminology.params import Param, read_params
from server.workflow import model, trail
from server.workflow.casefile import read
from server.workflow.experts import PERIOD_DOC, period_bounds
from server.workflow.profiles import require_profile
from server.workflow.reports import (
    is_referral,
    organization_of_role,
    relative,
    search_all,
)

REFERRAL = "referral"
SENDER, RECEIVER = "sender", "receiver"
STEPS = ("confirmed-by-sender", "confirmed-by-receiver", "transferred-out", "transferred-in")
SIDE_OF_STEP = {"confirmed-by-sender": SENDER, "confirmed-by-receiver": RECEIVER,
                "transferred-out": SENDER, "transferred-in": RECEIVER}
NEEDS = {"transferred-out": ("confirmed-by-sender", "confirmed-by-receiver"),
         "transferred-in": ("transferred-out",)}
FINAL = frozenset({"completed", "rejected", "cancelled", "failed", "entered-in-error"})
#: Task elements that tie the Task to its referral: set once, never changed.
FIXED = ("code", "focus", "for", "requester", "owner", "intent")
RESULT_TYPES = ("Observation", "DiagnosticReport")


def is_referral_request(sr: dict[str, Any] | None) -> bool:
    return bool(sr) and model.has_code((sr or {}).get("category") or [],
                                       model.CONSULTATION_TYPE, REFERRAL)


def direction_of(sr: dict[str, Any]) -> str | None:
    value = model.extension_value(sr, model.EXT_REFERRAL_DIRECTION, "Code")
    if value is None:
        coding = model.extension_value(sr, model.EXT_REFERRAL_DIRECTION, "Coding") or {}
        value = coding.get("code")
    return value if value in ("up", "down") else None


def care_level(org: dict[str, Any] | None) -> int | None:
    coding = model.extension_value(org, model.EXT_CARE_LEVEL, "Coding") or {}
    code = coding.get("code")
    return int(code) if isinstance(code, str) and code.isdigit() else None


def _refuse(issues: list[Issue]) -> None:
    if issues:
        raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)


def _fail(rule: str, message: str, expression: str) -> NoReturn:
    raise FhirError(422, "business-rule", f"[{rule}] {message}", expression)


def _issue(rule: str, message: str, expression: str) -> Issue:
    return Issue("business-rule", f"[{rule}] {message}", expression=[expression])


def _now(event: WriteEvent) -> datetime:
    return event.context.clock.now()


# -- the referral request -------------------------------------------------------------------------

def _indication_issues(sr: dict[str, Any], direction: str | None) -> list[Issue]:
    codes = [c for rc in sr.get("reasonCode") or []
             for c in model.codes(rc, model.REFERRAL_INDICATION)]
    where = "ServiceRequest.reasonCode"
    if not codes:
        return [_issue("referral-indication", "a referral gives its indication as a reasonCode "
                       f"from {model.REFERRAL_INDICATION}", where)]
    cs = library().code_system(model.REFERRAL_INDICATION)
    assert cs is not None
    issues = []
    for code in codes:
        concept = cs.get(code)
        if concept is None:
            issues.append(_issue("referral-indication", f"{code!r} is not a referral indication",
                                 where))
        elif direction and direction not in concept.property_values("direction"):
            allowed = "/".join(concept.property_values("direction"))
            issues.append(_issue("referral-indication", f"{code!r} is an indication for "
                                 f"{allowed}-referral, not {direction}-referral", where))
    return issues


def _consent_problem(tx: Transaction, ref: str, consent: dict[str, Any] | None, subject: str,
                     now: datetime) -> str | None:
    if consent is None:
        return f"{ref} does not exist"
    if consent.get("status") != "active":
        return f"{ref} is {consent.get('status')!r}, not active"
    if not model.has_code(consent.get("category") or [], model.CONSENT_CATEGORY, REFERRAL):
        return f"{ref} is not a referral consent (category {model.CONSENT_CATEGORY}#referral)"
    if relative((consent.get("patient") or {}).get("reference")) != subject:
        return f"{ref} is not the consent of {subject}"
    period = (consent.get("provision") or {}).get("period") or {}
    if period.get("start") and model.parse_datetime(period["start"]) > now:
        return f"{ref} is valid only from {period['start']}"
    if period.get("end") and _end_of(period["end"]) <= now:
        return f"{ref} expired at {period['end']}"
    for performer in consent.get("performer") or []:
        who = relative(performer.get("reference"))
        if who == subject:
            return None
        if who and who.startswith("RelatedPerson/"):
            related = read(tx, "RelatedPerson", who.split("/")[1])
            if related and relative((related.get("patient") or {}).get("reference")) == subject:
                return None
    return (f"{ref} is not given by the patient or by a guardian or relative of the patient "
            "(Consent.performer: the Patient or a RelatedPerson of the patient)")


def _end_of(text: str) -> datetime:
    """The end of a FHIR date/dateTime as an instant (a date alone lasts the whole day)."""
    if len(text) in (4, 7):
        text = f"{text}-01-01"[:10] if len(text) == 4 else f"{text}-01"
        start = model.parse_datetime(text)
        days = 366 if len(text) == 4 else calendar.monthrange(start.year, start.month)[1]
        return start + timedelta(days=days)
    if len(text) == 10:
        return model.parse_datetime(text) + timedelta(days=1)
    return model.parse_datetime(text)


def _supporting(tx: Transaction, sr: dict[str, Any], subject: str,
                ) -> tuple[dict[str, dict[str, Any]], list[Issue]]:
    """What supportingInfo names, read, by ``Type/id``; issues for missing or foreign ones."""
    found: dict[str, dict[str, Any]] = {}
    issues = []
    for i, info in enumerate(sr.get("supportingInfo") or []):
        ref = relative(info.get("reference"))
        where = f"ServiceRequest.supportingInfo[{i}]"
        if ref is None:
            continue
        type_, _, id_ = ref.partition("/")
        resource = read(tx, type_, id_)
        if resource is None:
            issues.append(_issue("referral-supporting-info", f"{ref} does not exist", where))
            continue
        about = resource.get("subject") or resource.get("patient") or resource.get("for")
        who = relative((about or {}).get("reference"))
        if who is not None and who.startswith("Patient/") and who != subject:
            issues.append(_issue("referral-supporting-info", f"{ref} is about {who}, not "
                                 f"{subject}", where))
            continue
        found[ref] = resource
    return found, issues


def is_rehabilitation_guidance(resource: dict[str, Any]) -> bool:
    kind = resource.get("resourceType")
    if kind == "DocumentReference":
        concepts = [resource.get("type"), *(resource.get("category") or [])]
        return any(code in model.REHABILITATION_DOCUMENT_TYPES for c in concepts
                   for code in model.codes(c, model.REHABILITATION_DOCUMENT_SYSTEM))
    if kind == "CarePlan":
        return bool(resource.get("activity")) and model.has_code(
            resource.get("category") or [], model.REHABILITATION_CAREPLAN_SYSTEM,
            model.REHABILITATION_CAREPLAN_CATEGORY)
    return False


def _down_issues(found: dict[str, dict[str, Any]]) -> list[Issue]:
    kinds = [r.get("resourceType") for r in found.values()]
    where = "ServiceRequest.supportingInfo"
    issues = []
    if not any(k in RESULT_TYPES for k in kinds):
        issues.append(_issue("referral-results", "a down-referral carries the test results "
                             "(an Observation or a DiagnosticReport in supportingInfo)", where))
    if "CarePlan" not in kinds:
        issues.append(_issue("referral-plan", "a down-referral carries the follow-up treatment "
                             "plan (a CarePlan in supportingInfo)", where))
    if not any(is_rehabilitation_guidance(r) for r in found.values()):
        issues.append(_issue("referral-rehabilitation", "a down-referral carries rehabilitation "
                             "guidance (a DocumentReference typed as a rehabilitation note or "
                             "prescription, or a rehabilitation CarePlan with activities, in "
                             "supportingInfo)", where))
    return issues


def _parties(tx: Transaction, sr: dict[str, Any]) -> tuple[str | None, str | None, list[Issue]]:
    """(sending Organization, receiving Organization, issues)."""
    issues = []
    requester = relative((sr.get("requester") or {}).get("reference"))
    sender = organization_of_role(tx, sr.get("requester")) \
        if requester and requester.startswith("PractitionerRole/") else None
    if sender is None:
        issues.append(_issue("referral-sender", "the requester is the sending physician: a "
                             "PractitionerRole with its organization", "ServiceRequest.requester"))
    receivers = [r for p in sr.get("performer") or []
                 if (r := relative(p.get("reference"))) and r.startswith("Organization/")]
    if len(receivers) != 1:
        issues.append(_issue("referral-receiver", "the performer is the receiving Organization "
                             "(exactly one)", "ServiceRequest.performer"))
    return sender, receivers[0] if len(receivers) == 1 else None, issues


def _level_issues(tx: Transaction, sender: str | None, receiver: str | None,
                  direction: str | None) -> list[Issue]:
    if sender is None or receiver is None:
        return []
    levels = {}
    issues = []
    for ref in (sender, receiver):
        org = read(tx, "Organization", ref.split("/")[1])
        levels[ref] = care_level(org)
        if org is None:
            issues.append(_issue("referral-care-level", f"{ref} does not exist",
                                 "ServiceRequest.performer"))
        elif levels[ref] is None:
            issues.append(_issue("referral-care-level", f"{ref} has no care level "
                                 f"(extension {model.EXT_CARE_LEVEL})",
                                 "ServiceRequest.performer"))
    if issues or direction is None:
        return issues
    low, high = levels[sender], levels[receiver]
    assert low is not None and high is not None
    if direction == "up" and not high > low:
        return [_issue("referral-care-level", f"an up-referral goes to a higher care level; "
                       f"{receiver} is level {high}, {sender} level {low}",
                       "ServiceRequest.performer")]
    if direction == "down" and not high < low:
        return [_issue("referral-care-level", f"a down-referral goes to a lower care level; "
                       f"{receiver} is level {high}, {sender} level {low}",
                       "ServiceRequest.performer")]
    return []


def check_request(tx: Transaction, sr: dict[str, Any], now: datetime) -> list[Issue]:
    """Every rule an active referral request breaks (empty: it may be sent)."""
    issues: list[Issue] = []
    direction = direction_of(sr)
    if direction is None:
        issues.append(_issue("referral-direction", "a referral says whether it goes up or down "
                             f"(extension {model.EXT_REFERRAL_DIRECTION}, valueCode up|down)",
                             "ServiceRequest.extension"))
    issues += _indication_issues(sr, direction)
    sender, receiver, party_issues = _parties(tx, sr)
    issues += party_issues + _level_issues(tx, sender, receiver, direction)
    subject = relative((sr.get("subject") or {}).get("reference"))
    if subject is None or not subject.startswith("Patient/"):
        issues.append(_issue("referral-subject", "a referral is about a Patient",
                             "ServiceRequest.subject"))
        return issues
    found, info_issues = _supporting(tx, sr, subject)
    issues += info_issues
    consents = [ref for ref in (relative(i.get("reference"))
                                for i in sr.get("supportingInfo") or [])
                if ref and ref.startswith("Consent/")]
    if not consents:
        issues.append(_issue("referral-consent", "a referral names the patient's referral consent "
                             "(a Consent in supportingInfo)", "ServiceRequest.supportingInfo"))
    else:
        problems = [_consent_problem(tx, ref, found.get(ref) or read(
            tx, "Consent", ref.split("/")[1]), subject, now) for ref in consents]
        if all(problems):
            issues.append(_issue("referral-consent", "no valid referral consent: "
                                 + "; ".join(p for p in problems if p),
                                 "ServiceRequest.supportingInfo"))
    if direction == "down":
        issues += _down_issues(found)
    return issues


def _check_request(event: WriteEvent) -> None:
    previous = event.previous if event.current is not None and not event.current.deleted \
        else None
    if event.resource is None:
        if is_referral_request(previous) and _tasks_of(event.system, event.id):
            raise conflict(f"ServiceRequest/{event.id} has a referral Task; cancel the Task "
                           "instead of deleting the referral")
        return
    if not is_referral_request(event.resource) or event.resource.get("status") != "active":
        return
    _refuse(check_request(event.system, event.resource, _now(event)))
    require_profile(event.resource, model.REFERRAL_REQUEST)


def _tasks_of(tx: Transaction, request_id: str) -> list[Version]:
    return [v for v in tx.search(parse(("Task",), [("focus", f"ServiceRequest/{request_id}")]),
                                 None)
            if is_referral(codec.loads(v.body or b"{}"))]


def _after_request(event: WriteEvent) -> None:
    resource = event.resource if event.resource is not None else event.previous
    if not is_referral_request(resource):
        return
    event.write(trail.provenance(event, trail.data_operation(event.method)))
    if event.resource is None or event.resource.get("status") != "active" \
            or _tasks_of(event.system, event.id):
        return
    event.write(_new_task(event, event.resource))


def _new_task(event: WriteEvent, sr: dict[str, Any]) -> dict[str, Any]:
    now = model.fhir_instant(_now(event))
    receiver = next(p for p in sr["performer"]
                    if (relative(p.get("reference")) or "").startswith("Organization/"))
    task: dict[str, Any] = {
        "resourceType": "Task",
        "meta": {"profile": [model.REFERRAL_TASK]},
        "status": "requested",
        "businessStatus": _business_status("referral-form-completed"),
        "intent": "order",
        "code": {"coding": [{"system": model.CONSULTATION_TYPE, "code": REFERRAL}]},
        "focus": {"reference": f"ServiceRequest/{event.id}"},
        "for": sr["subject"],
        "authoredOn": now,
        "lastModified": now,
        "requester": sr["requester"],
        "owner": {"reference": relative(receiver["reference"])},
    }
    if sr.get("priority") in ("routine", "urgent", "asap", "stat"):
        task["priority"] = sr["priority"]
    return task


def _business_status(code: str) -> dict[str, Any]:
    return {"coding": [{"system": model.BUSINESS_STATUS, "code": code}]}


# -- the referral Task ----------------------------------------------------------------------------

def steps_of(task: dict[str, Any] | None) -> dict[str, str]:
    """Recorded steps (confirmations and transfers) -> their dateTime."""
    out: dict[str, str] = {}
    for output in (task or {}).get("output") or []:
        for code in model.codes(output.get("type"), model.BUSINESS_STATUS):
            if code in STEPS:
                out[code] = output.get("valueDateTime") or ""
    return out


def _step_output(step: str, when: str) -> dict[str, Any]:
    return {"type": _business_status(step), "valueDateTime": when}


def expected_status(steps: dict[str, str]) -> str:
    if "transferred-in" in steps:
        return "completed"
    if "transferred-out" in steps:
        return "in-progress"
    if "confirmed-by-receiver" in steps:
        return "accepted"
    return "requested"


def sides(tx: Transaction, principal: Any, task: dict[str, Any]) -> set[str]:
    """Which side(s) of the referral the caller acts for, as far as the token says."""
    if principal.backend:
        return {SENDER, RECEIVER}
    user = relative(principal.fhir_user)
    if user is None:
        return set()
    sender = organization_of_role(tx, task.get("requester"))
    receiver = relative((task.get("owner") or {}).get("reference"))
    if receiver and receiver.startswith("PractitionerRole/"):
        receiver = organization_of_role(tx, task.get("owner"))
    orgs = _organizations_of(tx, user)
    out = set()
    if user == relative((task.get("requester") or {}).get("reference")) or sender in orgs:
        out.add(SENDER)
    if receiver in orgs:
        out.add(RECEIVER)
    return out


def _organizations_of(tx: Transaction, user: str) -> set[str | None]:
    kind, _, id_ = user.partition("/")
    if kind == "Organization":
        return {user}
    if kind == "PractitionerRole":
        return {organization_of_role(tx, {"reference": user})} - {None}
    if kind == "Practitioner":
        roles = tx.search(parse(("PractitionerRole",), [("practitioner", user)]), None)
        return {relative((codec.loads(v.body or b"{}").get("organization") or {})
                         .get("reference")) for v in roles} - {None}
    return set()


def _check_task(event: WriteEvent) -> None:
    previous = event.previous if event.current is not None and not event.current.deleted \
        else None
    if not is_referral(event.resource) and not is_referral(previous):
        return
    if event.resource is None:
        raise conflict("[referral-task] a referral Task is a record of the referral register and "
                       "is not deleted; cancel it instead")
    if previous is None:
        _check_new_task(event, event.resource)
    elif not same_content(previous, event.resource):
        _check_change(event, previous, event.resource)


def _check_new_task(event: WriteEvent, task: dict[str, Any]) -> None:
    issues = []
    focus = relative((task.get("focus") or {}).get("reference")) or ""
    sr = read(event.system, "ServiceRequest", focus.split("/")[1]) \
        if focus.startswith("ServiceRequest/") else None
    if not is_referral_request(sr) or (sr or {}).get("status") != "active":
        issues.append(_issue("referral-task", "a referral Task's focus is an active referral "
                             "request (ServiceRequest, category referral)", "Task.focus"))
    elif any(v.id != event.id for v in _tasks_of(event.system, focus.split("/")[1])):
        raise conflict(f"{focus} already has its referral Task")
    if steps_of(task) or task.get("status") not in ("requested", "draft", None):
        issues.append(_issue("referral-task", "a new referral Task starts as requested, with "
                             "no confirmation or transfer yet", "Task.status"))
    _refuse(issues)
    assert sr is not None
    now = model.fhir_instant(_now(event))
    receiver = next(relative(p.get("reference")) for p in sr["performer"]
                    if (relative(p.get("reference")) or "").startswith("Organization/"))
    for key, value in (("for", sr["subject"]), ("requester", sr["requester"]),
                       ("owner", {"reference": receiver})):
        if relative((task.get(key) or {}).get("reference")) != relative(value.get("reference")):
            _fail("referral-task", f"Task.{key} is the referral's "
                  f"{value.get('reference')}", f"Task.{key}")
    task["status"] = "requested"
    task.setdefault("authoredOn", now)
    task["lastModified"] = now
    task.setdefault("businessStatus", _business_status("referral-form-completed"))


def _check_change(event: WriteEvent, previous: dict[str, Any], task: dict[str, Any]) -> None:
    if previous.get("status") in FINAL:
        _refuse([_issue("referral-task-closed", f"the referral Task is {previous['status']}; "
                        "it no longer changes", "Task.status")])
    changed = [k for k in FIXED if previous.get(k) != task.get(k)]
    if changed:
        _refuse([_issue("referral-task-fixed", f"{', '.join(changed)} of a referral Task cannot "
                        "change", f"Task.{changed[0]}")])
    now = model.fhir_instant(_now(event))
    before, after = steps_of(previous), steps_of(task)
    _claim_step_from_business_status(previous, task, after, now)
    lost = [s for s in before if after.get(s) != before[s]]
    if lost:
        _fail("referral-step-recorded", f"{', '.join(lost)} is recorded and cannot be "
              "removed or changed", "Task.output")
    added = [s for s in STEPS if s in after and s not in before]
    allowed = sides(event.system, event.principal, task) if added or \
        task.get("status") != previous.get("status") else set()
    for step in added:
        _check_step(step, after, allowed, now)
    _check_status(previous, task, after, allowed, bool(added))
    if added:
        task["businessStatus"] = _business_status(added[-1])
    _check_business_status(task)
    period = {k: v for k, v in (("start", after.get("transferred-out")),
                                ("end", after.get("transferred-in"))) if v}
    if period:
        task["executionPeriod"] = period
    task["lastModified"] = now


def _claim_step_from_business_status(previous: dict[str, Any], task: dict[str, Any],
                                     after: dict[str, str], now: str) -> None:
    """Setting businessStatus to a step records that step (dated now) unless already given."""
    codes = model.codes(task.get("businessStatus"), model.BUSINESS_STATUS)
    if not codes or task.get("businessStatus") == previous.get("businessStatus"):
        return
    step = codes[0]
    if step in STEPS and step not in after:
        task.setdefault("output", []).append(_step_output(step, now))
        after[step] = now


def _check_step(step: str, steps: dict[str, str], allowed: set[str], now: str) -> None:
    side = SIDE_OF_STEP[step]
    if side not in allowed:
        raise FhirError(403, "forbidden", f"[referral-side] {step} is recorded by the "
                        f"{side} side only; the token acts for "
                        f"{' and '.join(sorted(allowed)) or 'neither side'}",
                        expression="Task.businessStatus")
    missing = [n for n in NEEDS.get(step, ()) if n not in steps]
    if missing:
        _fail("referral-step-order", f"{step} needs {' and '.join(missing)} first",
              "Task.businessStatus")
    when = steps[step]
    try:
        at = model.parse_datetime(when)
    except ValueError:
        _fail("referral-step-order", f"{step} needs a dateTime, not {when!r}",
              "Task.output")
    if at.tzinfo is None:
        _fail("referral-step-order", f"{step}: {when} needs a time zone",
              "Task.output")
    if step == "transferred-in" and at < model.parse_datetime(steps["transferred-out"]):
        _refuse([_issue("referral-step-order", "the transfer in cannot precede the transfer "
                        f"out ({steps['transferred-out']})", "Task.output")])
    if at > model.parse_datetime(now):
        _fail("referral-step-order", f"{step} cannot be dated in the future ({when})",
              "Task.output")


def _check_status(previous: dict[str, Any], task: dict[str, Any], steps: dict[str, str],
                  allowed: set[str], stepped: bool) -> None:
    status = task.get("status")
    expected = expected_status(steps)
    if status == previous.get("status"):
        task["status"] = expected
        return
    if status in ("rejected", "cancelled", "failed"):
        side = {"rejected": RECEIVER, "cancelled": SENDER}.get(status)
        if side is not None and side not in allowed:
            raise FhirError(403, "forbidden", f"[referral-side] only the {side} side may set a "
                            f"referral Task {status}", expression="Task.status")
        if not allowed:
            raise FhirError(403, "forbidden", "[referral-side] the token acts for neither side "
                            "of the referral", expression="Task.status")
        if not task.get("statusReason"):
            _fail("referral-status", f"a {status} referral gives its reason "
                  "(statusReason)", "Task.statusReason")
        if stepped:
            _fail("referral-status", f"a step cannot be recorded while the referral "
                  f"is set {status}", "Task.status")
        if status != "failed" and "transferred-out" in steps:
            _fail("referral-status", f"the patient has been transferred out; the "
                  f"referral can no longer be {status}", "Task.status")
        if status == "failed" and "transferred-out" not in steps:
            _fail("referral-status", "only a transfer that has begun can fail "
                  "(cancel or reject it instead)", "Task.status")
        return
    if status == expected or (status == "received" and expected == "requested"):
        return
    _fail("referral-status", f"with the steps recorded ({', '.join(steps) or 'none'}) "
          f"the referral Task is {expected}, not {status}", "Task.status")


def _check_business_status(task: dict[str, Any]) -> None:
    cs = library().code_system(model.BUSINESS_STATUS)
    for code in model.codes(task.get("businessStatus"), model.BUSINESS_STATUS):
        concept = cs.get(code) if cs is not None else None
        if concept is None or REFERRAL not in concept.property_values("applies-to"):
            _fail("referral-business-status", f"{code!r} is not a step of a referral",
                  "Task.businessStatus")


def _after_task(event: WriteEvent) -> None:
    task = event.resource if event.resource is not None else event.previous
    if not is_referral(task):
        return
    previous = event.previous if event.method != "POST" else None
    before = steps_of(previous)
    added = [s for s in STEPS if s in steps_of(event.resource) and s not in before]
    reason = None
    if added:
        activity = _business_status(added[-1])
    elif event.resource is not None and previous is not None \
            and event.resource.get("status") != previous.get("status"):
        activity = {"coding": [{"system": "http://hl7.org/fhir/task-status",
                                "code": event.resource["status"]}]}
        reason = [event.resource["statusReason"]] if event.resource.get("statusReason") \
            else None
    else:
        activity = trail.data_operation(event.method)
    event.write(trail.provenance(event, activity, reason=reason))
    if event.resource is not None and previous is not None:
        _close_request(event, previous, event.resource)


#: The referral request ends with its Task: fulfilled, or withdrawn.
_REQUEST_STATUS = {"completed": "completed", "rejected": "revoked", "cancelled": "revoked",
                   "failed": "revoked"}


def _close_request(event: WriteEvent, previous: dict[str, Any], task: dict[str, Any]) -> None:
    status = _REQUEST_STATUS.get(task.get("status") or "")
    if status is None or previous.get("status") == task.get("status"):
        return
    request_id = model.reference_id(task.get("focus"), "ServiceRequest")
    sr = read(event.system, "ServiceRequest", request_id)
    if sr is not None and sr.get("status") == "active":
        sr["status"] = status
        event.write(sr)


def install(hooks: WriteHooks) -> None:
    hooks.before("ServiceRequest", _check_request)
    hooks.after("ServiceRequest", _after_request)
    hooks.before("Task", _check_task)
    hooks.after("Task", _after_task)


# -- operations on the Task -----------------------------------------------------------------------

_STEP_PARAMS = {"side": Param("code"), "date": Param("dateTime"), "note": Param("string")}


def _record_step(req: FhirRequest, choose: Any) -> Any:
    """A Task operation: ``choose(task, allowed sides, params)`` names the step to record."""
    params = read_params(req, _STEP_PARAMS)
    task_id = req.id
    assert task_id
    context, principal = req.context, req.principal

    def apply(tx: Transaction) -> Version:
        current = current_or_error(tx.read("Task", task_id), "Task", task_id)
        task = codec.loads(current.body or b"{}")
        if not is_referral(task):
            raise unprocessable(f"Task/{task_id} is not a referral Task (code referral)", "code")
        system = unguarded(tx)
        step = choose(task, sides(system, principal, task), params.get("side"))
        now = model.fhir_instant(context.clock.now())
        when = params.get("date") or now
        if step in steps_of(task):
            raise conflict(f"{step} is already recorded for Task/{task_id}")
        task.setdefault("output", []).append(_step_output(step, when))
        task["businessStatus"] = _business_status(step)
        if params.get("note"):
            task.setdefault("note", []).append({"text": params.get("note"), "time": now})
        return store(tx, context, principal, "Task", task_id, task, prepare(task, "Task"),
                     "PUT", current)

    return apply


def _confirmation(task: dict[str, Any], allowed: set[str], side: str | None) -> str:
    if side is not None and side not in (SENDER, RECEIVER):
        raise invalid("side is sender or receiver", "side")
    if side is None:
        pending = [s for s in sorted(allowed)
                   if f"confirmed-by-{s}" not in steps_of(task)]
        if len(allowed) == 1:
            side = next(iter(allowed))
        elif len(pending) == 1:
            side = pending[0]
        elif not allowed:
            raise FhirError(403, "forbidden", "[referral-side] the token acts for neither side of "
                            "the referral")
        else:
            raise invalid("say which side confirms (parameter side: sender or receiver)", "side")
    return f"confirmed-by-{side}"


async def confirm(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """Task/[id]/$confirm: the caller's side confirms the referral."""
    version = await store_.run(_record_step(req, _confirmation))
    return FhirResponse(200, version=version)


async def transfer_out(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """Task/[id]/$transfer-out: the sending side registers the patient's transfer out."""
    version = await store_.run(_record_step(req, lambda t, a, s: "transferred-out"))
    return FhirResponse(200, version=version)


async def transfer_in(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """Task/[id]/$transfer-in: the receiving side registers the patient's arrival."""
    version = await store_.run(_record_step(req, lambda t, a, s: "transferred-in"))
    return FhirResponse(200, version=version)


# -- the register ---------------------------------------------------------------------------------



_REGISTER_PARAMS = {"period": Param("string"), "direction": Param("code")}


async def referral_register(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """Organization/[id]/$referral-register: transfers out of and into the organisation."""
    assert req.id
    params = read_params(req, _REGISTER_PARAMS)
    direction = params.get("direction")
    if direction not in (None, "in", "out"):
        raise invalid("direction is in or out", "direction")
    org_version = current_or_error(await store_.read("Organization", req.id), "Organization",
                                   req.id)
    org = codec.loads(org_version.body or b"{}")
    start, end = period_bounds(params.get("period") or "", model.zone(org)) \
        if params.get("period") else (None, None)
    me = f"Organization/{req.id}"
    code = ("code", f"{model.CONSULTATION_TYPE}|{REFERRAL}")
    wanted = []
    if direction in (None, "out"):
        for v in await search_all(store_, "Task", [
                code, ("requester:PractitionerRole.organization", me)]):
            wanted.append((v, "transferred-out"))
    if direction in (None, "in"):
        for v in await search_all(store_, "Task", [code, ("owner", me)]):
            wanted.append((v, "transferred-in"))
    entries = []
    seen_requests: set[str] = set()
    rows = []
    for v, step in wanted:
        task = codec.loads(v.body or b"{}")
        when = steps_of(task).get(step)
        if not when:
            continue
        at = model.parse_datetime(when)
        if start is not None and end is not None and not start <= at < end:
            continue
        rows.append((when, v, task))
    for _, v, task in sorted(rows, key=lambda r: model.parse_datetime(r[0])):
        entries.append({"fullUrl": full_url(req.base, "Task", v.id), "resource": Stored(v),
                        "search": {"mode": "match"}})
        focus = relative((task.get("focus") or {}).get("reference"))
        if focus and focus not in seen_requests:
            seen_requests.add(focus)
            sr = await store_.read("ServiceRequest", focus.split("/")[1])
            if sr is not None and not sr.deleted:
                entries.append({"fullUrl": full_url(req.base, "ServiceRequest", sr.id),
                                "resource": Stored(sr), "search": {"mode": "include"}})
    path = f"Organization/{req.id}/$referral-register"
    return FhirResponse(200, resource=bundle("searchset", entries,
                                             [("self", link_url(req.base, path, req.params))],
                                             total=len(rows)))


def _definition(name: str) -> str:
    return f"{model.BASE}/OperationDefinition/{name}"


OPERATIONS: tuple[Operation, ...] = (
    Operation("confirm", _definition("Task-confirm"), frozenset({"instance"}), confirm,
              "The caller's side (sending or receiving) confirms a referral",
              ("POST",), ("Task",), parameters=(
                  ("side", "in", 0, "1", "code", "sender or receiver (needed when the caller "
                   "acts for both)"),
                  ("date", "in", 0, "1", "dateTime", "When it happened (default: now)"),
                  ("note", "in", 0, "1", "string", "A note added to the Task"),
                  ("return", "out", 1, "1", "Task", "The Task as changed"))),
    Operation("transfer-out", _definition("Task-transfer-out"), frozenset({"instance"}),
              transfer_out, "The sending side registers the referred patient's transfer out",
              ("POST",), ("Task",), parameters=(("date", "in", 0, "1", "dateTime", "When it happened (default: now)"),
                  ("note", "in", 0, "1", "string", "A note added to the Task"),
                  ("return", "out", 1, "1", "Task", "The Task as changed"))),
    Operation("transfer-in", _definition("Task-transfer-in"), frozenset({"instance"}),
              transfer_in, "The receiving side registers the referred patient's arrival",
              ("POST",), ("Task",), parameters=(("date", "in", 0, "1", "dateTime", "When it happened (default: now)"),
                  ("note", "in", 0, "1", "string", "A note added to the Task"),
                  ("return", "out", 1, "1", "Task", "The Task as changed"))),
    Operation("referral-register", _definition("Organization-referral-register"),
              frozenset({"instance"}), referral_register,
              "The organisation's register of referral transfers out and in for a period",
              ("GET", "POST"), ("Organization",), parameters=(
                  ("period", "in", 0, "1", "string", PERIOD_DOC + " (default: all time)"),
                  ("direction", "in", 0, "1", "code", "in or out (default: both)"),
                  ("return", "out", 1, "1", "Bundle", "The referral Tasks and their requests"))),
)

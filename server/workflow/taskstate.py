"""The consultation Task's state machine, what may change in each state, and who may change it.

States follow FHIR Workflow (http://hl7.org/fhir/R4/task.html#statemachine) as the rules use
them: requested -> received -> accepted | rejected -> in-progress -> completed; cancelled from
any state that is not final; failed once accepted. An illegal change of status is a conflict
(409, naming both states); a rejection needs a decline-reason and a cancellation a
cancel-reason in statusReason (422).

Who: the invited side (the invited organisation's staff and the assigned expert) receives,
accepts, declines, assigns, starts, completes or fails; the inviting side (the requesting
organisation's staff) cancels. This is what the token says (``fhirUser``); a caller without
restrictions (authorization off) or with a system scope may do anything, and a token that names
nobody is not checked.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.auth.scopes import Principal
from server.fhir.errors import FhirError, Issue, conflict
from server.storage.base import Transaction
from server.workflow import model
from server.workflow.casefile import Case, read, search
from server.workflow.deadlines import FINAL

TRANSITIONS: dict[str, frozenset[str]] = {
    "draft": frozenset({"requested", "cancelled"}),
    "requested": frozenset({"received", "accepted", "rejected", "cancelled"}),
    "received": frozenset({"accepted", "rejected", "cancelled"}),
    "accepted": frozenset({"in-progress", "cancelled", "failed"}),
    "in-progress": frozenset({"completed", "cancelled", "failed"}),
}
INVITED = "invited"
INVITING = "inviting"
#: The side that makes each change of status.
STEP_SIDE = {"received": INVITED, "accepted": INVITED, "rejected": INVITED,
             "in-progress": INVITED, "completed": INVITED, "failed": INVITED,
             "cancelled": INVITING}

#: Elements that never change after the Task is created.
IMMUTABLE = ("basedOn", "focus", "for", "requester", "code", "intent", "authoredOn", "partOf",
             "groupIdentifier", "instantiatesCanonical", "instantiatesUri", "priority",
             "encounter")
#: Elements the server keeps itself (a client's value is replaced).
SERVER_MANAGED = frozenset({"resourceType", "id", "meta", "text", "lastModified", "restriction"})
#: What may still change once the Task is final: after completion the later steps (patient
#: informed, rated) and a corrected report; otherwise notes only.
AFTER_END = {"completed": frozenset({"businessStatus", "note", "output"})}
#: States in which the owner (the invited organisation, then the expert) may change.
OWNER_STATES = frozenset({"draft", "requested", "received", "accepted"})


def check_transition(task_id: str, before: str, after: str) -> None:
    if before == after:
        return
    if after not in TRANSITIONS.get(before, frozenset()):
        allowed = ", ".join(sorted(TRANSITIONS.get(before, ()))) or "none (it is final)"
        raise conflict(f"Task/{task_id} cannot go from {before} to {after}; from {before} it "
                       f"may go to: {allowed}")


def check_reason(task: dict[str, Any], before: str) -> None:
    status = task.get("status")
    if status == before:
        return
    reason = task.get("statusReason")
    if status == "rejected" and not model.codes(reason, model.DECLINE_REASON):
        raise FhirError(422, "business-rule", "a declined (rejected) consultation Task needs "
                        "statusReason with a code from decline-reason", "Task.statusReason")
    if status == "cancelled" and not model.codes(reason, model.CANCEL_REASON):
        raise FhirError(422, "business-rule", "a cancelled consultation Task needs statusReason "
                        "with a code from cancel-reason", "Task.statusReason")


def _comparable(task: dict[str, Any], key: str) -> Any:
    value = task.get(key)
    if key == "extension":
        value = [e for e in value or [] if e.get("url") != model.EXT_DEADLINE] or None
    return value


def changed(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    """Top-level elements that differ (server-kept ones and deadline extensions aside)."""
    keys = (set(before) | set(after)) - SERVER_MANAGED
    return {k for k in keys if _comparable(before, k) != _comparable(after, k)}


def check_fields(task_id: str, before: dict[str, Any], after: dict[str, Any]) -> None:
    """422 when an element changes that may not in the Task's (previous) state."""
    state = before.get("status") or ""
    issues = []
    for key in sorted(changed(before, after)):
        if key in IMMUTABLE:
            why = "never changes"
        elif state in FINAL and key not in AFTER_END.get(state, frozenset({"note"})):
            why = f"does not change once the Task is {state}"
        elif key == "owner" and state not in OWNER_STATES:
            why = f"does not change while the Task is {state}"
        else:
            continue
        issues.append(Issue("business-rule", f"Task/{task_id}: {key} {why}",
                            expression=[f"Task.{key}"]))
    if issues:
        raise FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)


# -- who --------------------------------------------------------------------------------------------

def unchecked(principal: Principal) -> bool:
    """Whether the principal may act for either side (authorization off, or a system scope)."""
    return principal.unrestricted or any(s.context == "system" for s in principal.scopes)


@dataclass
class Affiliation:
    """The organisations and roles a principal acts in, from its fhirUser."""

    organizations: set[str] = field(default_factory=set)
    roles: set[str] = field(default_factory=set)


def affiliation(tx: Transaction, principal: Principal) -> Affiliation | None:
    """None when the token names nobody (nothing to check against)."""
    user = principal.fhir_user or ""
    kind, _, id_ = user.rpartition("/")
    kind = kind.rsplit("/", 1)[-1]
    if not id_:
        return None
    out = Affiliation()
    if kind == "PractitionerRole":
        roles = [r for r in [read(tx, "PractitionerRole", id_)] if r]
    elif kind == "Practitioner":
        roles = search(tx, "PractitionerRole", [("practitioner", f"Practitioner/{id_}")])
    elif kind == "Organization":
        out.organizations.add(id_)
        roles = []
    else:
        roles = []
    for role in roles:
        out.roles.add(role["id"])
        org = model.reference_id(role.get("organization"), "Organization")
        if org:
            out.organizations.add(org)
    return out


def sides(who: Affiliation, case: Case, task: dict[str, Any]) -> set[str]:
    out = set()
    expert = model.reference_id(task.get("owner"), "PractitionerRole")
    if (case.invited_id and case.invited_id in who.organizations) or \
            (expert and expert in who.roles):
        out.add(INVITED)
    requester = model.reference_id(case.request.get("requester"), "PractitionerRole")
    if (case.inviting_id and case.inviting_id in who.organizations) or \
            (requester and requester in who.roles):
        out.add(INVITING)
    return out


def require_side(tx: Transaction, principal: Principal, case: Case, task: dict[str, Any],
                 side: str | None, action: str) -> None:
    """403 unless the principal may ``action`` as ``side`` (None: either side)."""
    if unchecked(principal):
        return
    who = affiliation(tx, principal)
    if who is None:
        return
    mine = sides(who, case, task)
    if (side is None and mine) or side in mine:
        return
    org = case.invited_id if side == INVITED else case.inviting_id
    party = f"the {side} side (Organization/{org})" if side else "a party to this consultation"
    raise FhirError(403, "forbidden", f"{principal.fhir_user} may not {action}: only {party} "
                    "may")


def required_side(before: dict[str, Any], after: dict[str, Any]) -> tuple[str | None, str]:
    """The side a change needs and a name for it."""
    status = after.get("status") or ""
    if status != before.get("status"):
        return STEP_SIDE.get(status), f"set the status to {status}"
    if "owner" in changed(before, after):
        return INVITED, "assign the expert"
    return None, "change the Task"

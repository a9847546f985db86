"""When each step of a consultation is due, from the Inner Mongolia rules, and how the deadlines
are written on the Task.

The rules (domain notes §3):

* a complete request filed before 15:00 (the inviting organisation's local time) is accepted the
  same day, one filed later the next day (IM A1 二(二)2);
* routine: the expert is fixed within 24 h and the session held within 2 days (IM A7 第二部分
  一(一)1); for a primary-level (care level 1) requester the session within 48 h
  (IM A7 第二部分 二(二)2);
* urgent: the expert within 2 h when both organisations are in the same region, 5 h otherwise
  (IM A7 第二部分 一(一)1); a primary-level requester's session within 8 h (二(二)2); other
  urgent sessions are "arranged promptly" and get no fixed limit;
* a named expert sees the patient at a time agreed with them (一(一)1): no session limit;
* an urgent request made by phone or e-mail gets its papers within 24 h (IM A1 二(一));
* the report is sent within 30 min after the session (一(三)1);
* a change of schedule is announced at least 2 h ahead (一(一)6) — a refusal, not a deadline.

"Within 2 days" is read as calendar days in the inviting organisation's zone (due at the end of
the second day after the filing day), distinct from the primary-level workflow's 48 hours.

Every deadline stays on the Task as an extension (kind, due, met); ``restriction.period.end``
is the earliest one not yet met (the current step), and disappears once the Task is final.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from server.workflow import model

ACCEPTANCE = "acceptance"
PAPERS = "papers"
EXPERT = "expert-assignment"
SESSION = "session"
REPORT = "report"
#: The order deadlines are listed in on the Task.
ORDER = (ACCEPTANCE, PAPERS, EXPERT, SESSION, REPORT)

SAME_DAY_CUTOFF = time(15, 0)
ROUTINE_EXPERT = timedelta(hours=24)
URGENT_EXPERT_INSIDE = timedelta(hours=2)
URGENT_EXPERT_OUTSIDE = timedelta(hours=5)
ROUTINE_SESSION_DAYS = 2
PRIMARY_ROUTINE_SESSION = timedelta(hours=48)
PRIMARY_URGENT_SESSION = timedelta(hours=8)
PAPERS_WITHIN = timedelta(hours=24)
REPORT_AFTER_SESSION = timedelta(minutes=30)
RESCHEDULE_NOTICE = timedelta(hours=2)

#: Channels whose urgent requests may send their papers later (request-channel
#: ``paperwork-hours``).
PAPERS_LATER = frozenset({"phone", "email"})
FINAL = frozenset({"completed", "rejected", "cancelled", "failed", "entered-in-error"})


@dataclass(frozen=True)
class Filing:
    """What the deadlines of one request depend on."""

    filed: datetime  # when the request was filed (Task.authoredOn), aware
    zone: ZoneInfo  # the inviting organisation's time zone
    urgent: bool
    primary: bool  # the requester is at care level 1
    same_region: bool  # both organisations in the same region
    named_expert: bool  # the request names its expert
    papers_pending: bool  # urgent by phone or e-mail, records to follow


@dataclass(frozen=True)
class Deadline:
    kind: str
    due: datetime
    met: datetime | None = None


def end_of_day(moment: datetime, zone: ZoneInfo, days_after: int = 0) -> datetime:
    """Midnight (local) ending the day of ``moment`` plus ``days_after`` days."""
    local = moment.astimezone(zone).date() + timedelta(days=days_after + 1)
    return datetime.combine(local, time(0), zone)


def acceptance_due(filed: datetime, zone: ZoneInfo) -> datetime:
    """Filed before 15:00 local: by the end of that day; later: by the end of the next."""
    before_cutoff = filed.astimezone(zone).time() < SAME_DAY_CUTOFF
    return end_of_day(filed, zone, 0 if before_cutoff else 1)


def expert_due(f: Filing) -> datetime:
    if not f.urgent:
        return f.filed + ROUTINE_EXPERT
    return f.filed + (URGENT_EXPERT_INSIDE if f.same_region else URGENT_EXPERT_OUTSIDE)


def session_due(f: Filing) -> datetime | None:
    if f.named_expert:
        return None
    if f.urgent:
        return f.filed + PRIMARY_URGENT_SESSION if f.primary else None
    if f.primary:
        return f.filed + PRIMARY_ROUTINE_SESSION
    return end_of_day(f.filed, f.zone, ROUTINE_SESSION_DAYS)


def due_times(f: Filing, session_end: datetime | None = None) -> dict[str, datetime]:
    """Kind -> due time of every deadline that applies, in :data:`ORDER`."""
    out: dict[str, datetime] = {}
    expert = expert_due(f)
    acceptance = acceptance_due(f.filed, f.zone)
    # An urgent request cannot wait for its acceptance longer than for its expert.
    out[ACCEPTANCE] = min(acceptance, expert) if f.urgent else acceptance
    if f.papers_pending:
        out[PAPERS] = f.filed + PAPERS_WITHIN
    out[EXPERT] = expert
    session = session_due(f)
    if session is not None:
        out[SESSION] = session
    if session_end is not None:
        out[REPORT] = session_end + REPORT_AFTER_SESSION
    return out


# -- on the Task -------------------------------------------------------------------------------

def read(task: dict[str, Any] | None) -> dict[str, Deadline]:
    """The deadlines a Task carries, by kind."""
    out: dict[str, Deadline] = {}
    for ext in model.extensions(task, model.EXT_DEADLINE):
        parts = {e.get("url"): e for e in ext.get("extension") or []}
        kind = ((parts.get("kind") or {}).get("valueCoding") or {}).get("code")
        due = (parts.get("due") or {}).get("valueDateTime")
        met = (parts.get("met") or {}).get("valueDateTime")
        if kind and due:
            out[kind] = Deadline(kind, model.parse_datetime(due),
                                 model.parse_datetime(met) if met else None)
    return out


def extension(d: Deadline) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"url": "kind", "valueCoding": {"system": model.DEADLINE_KIND, "code": d.kind}},
        {"url": "due", "valueDateTime": model.fhir_instant(d.due)},
    ]
    if d.met is not None:
        parts.append({"url": "met", "valueDateTime": model.fhir_instant(d.met)})
    return {"url": model.EXT_DEADLINE, "extension": parts}


def settle(due: dict[str, datetime], before: dict[str, Deadline], done: set[str],
           now: datetime) -> list[Deadline]:
    """The deadlines with their met times: kept from ``before`` once met, ``now`` when a step
    is first seen done."""
    out = []
    for kind in ORDER:
        if kind not in due:
            continue
        met = None
        if kind in done:
            earlier = before.get(kind)
            met = earlier.met if earlier is not None and earlier.met is not None else now
        out.append(Deadline(kind, due[kind], met))
    return out


def current(deadlines: list[Deadline]) -> datetime | None:
    """The due time of the current step: the earliest deadline not met."""
    open_ = [d.due for d in deadlines if d.met is None]
    return min(open_) if open_ else None


def write(task: dict[str, Any], deadlines: list[Deadline]) -> None:
    """Put ``deadlines`` on ``task`` (replacing what it carried) and the current step's due time
    in ``restriction.period.end``; a final Task has no current step."""
    others = [e for e in task.get("extension") or [] if e.get("url") != model.EXT_DEADLINE]
    exts = others + [extension(d) for d in deadlines]
    if exts:
        task["extension"] = exts
    else:
        task.pop("extension", None)
    restriction = dict(task.get("restriction") or {})
    restriction.pop("period", None)
    due = None if task.get("status") in FINAL else current(deadlines)
    if due is not None:
        restriction["period"] = {"end": model.fhir_instant(due)}
    if restriction:
        task["restriction"] = restriction
    else:
        task.pop("restriction", None)


def is_overdue(task: dict[str, Any], now: datetime) -> bool:
    if task.get("status") in FINAL:
        return False
    end = ((task.get("restriction") or {}).get("period") or {}).get("end")
    return isinstance(end, str) and model.parse_datetime(end) < now

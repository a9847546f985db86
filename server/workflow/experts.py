"""The expert pool (专家库, Inner Mongolia rules A5): who may join, who admits them, what each
member has done, and the annual review that removes those who fail it.

A pool member is a PractitionerRole with code practitioner-role#expert and the extension
expert-pool-status (profile expert-role). Rules on every write of such a role:

* Eligibility (A5 二), checked when the role enters nominated, approved or active, and again when
  one of the facts it rests on changes (specialty, specialty-since, employer-consent,
  practitioner, organization, code); a refusal (422) names every failed rule:
  ``expert-title`` an associate-senior or senior professional title (rank 3 or more in
  professional-title: the ValueSet expert-eligible-title) among the Practitioner's
  qualifications; ``expert-specialty-years`` 5 full years or more since specialty-since;
  ``expert-malpractice`` no malpractice of grade 1 or 2 dated in the last 3 years;
  ``expert-employer-consent`` the employer's consent (employer-consent, dated no later than
  today); ``expert-training`` the qualification telemedicine-training. A qualification whose
  period has ended does not count.
* Who changes the pool status (A5 三: "nominated by the employer, approved by the region"):
  :data:`TRANSITIONS`. The employer is a principal whose organisation (from its fhirUser: a
  PractitionerRole's organization, a Practitioner's roles' organizations, or an Organization)
  is the role's organization; the region is a principal acting for an organisation of a type in
  :data:`POOL_AUTHORITY_TYPES` whose region covers the employer's (:func:`covers`). A system
  client (a system scope and no fhirUser) or a server without authorization may make any listed
  change, and may create a role in any status (loading an existing pool). A change the table does not list is a conflict (409) for everybody.
  ``nominated-by`` is filled in with the employer when missing and must name it;
  ``pool-approved-by`` is filled in with the approving regional organisation when a region user
  approves (a system client names it itself). A pool member's role is not deleted (409) but
  removed, except by a system client.
* Every change of a pool role gets a Provenance (target the version written, activity the
  v3-DataOperation and the new pool status, the annual review's reasons in ``reason``).

Operations:

* ``PractitionerRole/[id]/$stats?period=`` -> Parameters (see :func:`stats_parameters` and
  :class:`ExpertStats` for the definition of each figure).
* ``PractitionerRole/$pool?specialty=`` (public, no token): a searchset of the active members
  with public fields only.
* ``PractitionerRole/$review`` (year, maxDeclineRatio?, minSatisfaction?, minInvitations?,
  dryRun?): the annual review (A5 十) -> Parameters saying what it did.
"""

from __future__ import annotations

import copy
import statistics
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from server.auth.guard import require, unguarded
from server.auth.scopes import Principal
from server.fhir import codec
from server.fhir.bundles import bundle, full_url, link_url
from server.fhir.errors import FhirError, Issue, conflict, invalid, not_found
from server.fhir.hooks import WriteEvent, WriteHooks, store
from server.fhir.prepare import prepare
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.search.query import parse
from server.storage.base import ResourceStore, Transaction, Version
from server.terminology.library import library
from server.workflow import model
from server.workflow.casefile import read, search
from server.workflow.profiles import require_profile

# -- the pool's vocabulary ------------------------------------------------------------------------

EXPERT = "expert"
#: States in which the eligibility rules must hold.
ELIGIBLE_STATES = frozenset({"nominated", "approved", "active"})
#: Members the annual review looks at.
MEMBER_STATES = frozenset({"approved", "active", "suspended"})
#: Pool statuses listed publicly (the contract: the active experts).
LISTED_STATES = frozenset({"active"})
EMPLOYER, REGION = "employer", "region"
#: Organisation types that act as "the region" for the pool: the health administration and the
#: regional telemedicine centre (A5 一, 三), the quality-control centre that manages the pool
#: (A5 四), and their Iranian counterparts (national committee, macro-region headquarters).
POOL_AUTHORITY_TYPES = frozenset({"health-authority", "regional-telemedicine-centre",
                                  "quality-control-centre", "national-committee",
                                  "macro-region-hq"})
#: (from, to) -> who may make the change; None is "not in the pool yet". Only the employer
#: brings a role in (A5 三: nominated, then approved): the region approves nominees, it does not
#: nominate on the employer's behalf.
TRANSITIONS: dict[str | None, dict[str, frozenset[str]]] = {
    None: {"nominated": frozenset({EMPLOYER})},
    "nominated": {"approved": frozenset({REGION}), "active": frozenset({REGION}),
                  "not-approved": frozenset({REGION}),
                  "removed": frozenset({EMPLOYER, REGION})},
    "approved": {"active": frozenset({REGION}), "suspended": frozenset({REGION}),
                 "removed": frozenset({EMPLOYER, REGION})},
    "active": {"suspended": frozenset({REGION}), "removed": frozenset({EMPLOYER, REGION})},
    "suspended": {"active": frozenset({REGION}), "removed": frozenset({EMPLOYER, REGION})},
    "not-approved": {"nominated": frozenset({EMPLOYER})},
    "removed": {"nominated": frozenset({EMPLOYER})},
}
#: What eligibility rests on, on the role: a change re-runs the check.
ELIGIBILITY_FACTS = ("specialty", "practitioner", "organization", "code")
ELIGIBILITY_EXTENSIONS = (model.EXT_SPECIALTY_SINCE, model.EXT_EMPLOYER_CONSENT)

ELIGIBLE_TITLE_RANK = 3  # associate-senior (副高) and up
SPECIALTY_YEARS = 5
MALPRACTICE_YEARS = 3
MALPRACTICE_GRAVEST = 2  # grades 1 and 2 (二级及以上) disqualify
TRAINING = "telemedicine-training"

DATA_OPERATION = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "subsetted"}
#: Categories of a Task or ServiceRequest that are not consultations.
NOT_CONSULTATION = frozenset({"referral", "remote-teaching"})
OVERALL_ITEM = "overall"  # the satisfaction questionnaire's overall score (1-5)

#: Why the server itself changes a pool role (the annual review), for the Provenance the rule
#: writes: set only around that write, in the writer's call stack, and reset after it.
_CHANGE_REASON: ContextVar[str | None] = ContextVar("pool_change_reason", default=None)


# -- reading ------------------------------------------------------------------------------------

def search_in(tx: Transaction, type_: str, name: str, values: Iterable[str],
              extra: list[tuple[str, str]] | None = None) -> list[dict[str, Any]]:
    """Matches of ``name`` = any of ``values`` (ORed in chunks, so the URL stays short)."""
    values = sorted(set(values))
    out = []
    for i in range(0, len(values), 50):
        out += search(tx, type_, [(name, ",".join(values[i:i + 50])), *(extra or [])])
    return out


def ref_id(ref: dict[str, Any] | None, type_: str) -> str | None:
    return model.reference_id(ref, type_)


def pool_status(role: dict[str, Any] | None) -> str | None:
    return (model.extension_value(role, model.EXT_POOL_STATUS, "Coding") or {}).get("code")


def is_expert(role: dict[str, Any] | None) -> bool:
    return model.has_code((role or {}).get("code") or [], model.PRACTITIONER_ROLE, EXPERT)


def is_pool_role(role: dict[str, Any] | None) -> bool:
    return pool_status(role) is not None


def consultation_type(task: dict[str, Any] | None) -> str | None:
    """The consultation-type code of a consultation Task (not a referral or teaching)."""
    for code in model.codes((task or {}).get("code"), model.CONSULTATION_TYPE):
        return None if code in NOT_CONSULTATION else code
    return None


def when(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return model.parse_datetime(text)
    except ValueError:
        return None


def full_years(start: date, today: date) -> int:
    years = today.year - start.year
    return years - 1 if (today.month, today.day) < (start.month, start.day) else years


def years_before(today: date, years: int) -> date:
    try:
        return today.replace(year=today.year - years)
    except ValueError:  # 29 February
        return today.replace(year=today.year - years, day=28)


# -- who acts -----------------------------------------------------------------------------------

def acting_organizations(tx: Transaction, principal: Principal) -> set[str]:
    """Ids of the organisations the principal acts for, from its fhirUser."""
    kind, _, id_ = (principal.fhir_user or "").rpartition("/")
    kind = kind.rsplit("/", 1)[-1]
    if not id_:
        return set()
    if kind == "Organization":
        return {id_}
    if kind == "PractitionerRole":
        roles = [r for r in [read(tx, "PractitionerRole", id_)] if r]
    elif kind == "Practitioner":
        roles = search(tx, "PractitionerRole", [("practitioner", f"Practitioner/{id_}")])
    else:
        roles = []
    return {org for r in roles if (org := ref_id(r.get("organization"), "Organization"))}


def organization_types(org: dict[str, Any] | None) -> set[str]:
    return {code for t in (org or {}).get("type") or []
            for code in model.codes(t, model.ORGANIZATION_TYPE)}


def authorities(tx: Transaction, org_ids: Iterable[str], types: frozenset[str]) -> list[str]:
    """The organisations among ``org_ids`` whose type is one of ``types``."""
    return sorted(o for o in org_ids if organization_types(read(tx, "Organization", o)) & types)


def covers(authority: dict[str, Any] | None, employer: dict[str, Any] | None) -> bool:
    """Whether a pool authority answers for an employer: same region (ISO 3166-2), or the
    authority's region is the employer's country (IR covers IR-07). An authority without a
    region answers for all; an employer without one, to any authority."""
    mine = model.extension_value(authority, model.EXT_REGION, "Code")
    theirs = model.extension_value(employer, model.EXT_REGION, "Code")
    return not mine or not theirs or theirs == mine or theirs.startswith(f"{mine}-")


def regional_authorities(tx: Transaction, principal: Principal,
                         employer_id: str | None) -> list[str]:
    """The pool authorities the principal acts for that answer for ``employer_id``."""
    employer = read(tx, "Organization", employer_id)
    return [o for o in authorities(tx, acting_organizations(tx, principal), POOL_AUTHORITY_TYPES)
            if covers(read(tx, "Organization", o), employer)]


def capacities(tx: Transaction, principal: Principal, role: dict[str, Any]) -> set[str]:
    """What the principal is for this role: its employer, its region's authority, both or
    none."""
    employer = ref_id(role.get("organization"), "Organization")
    out = set()
    if employer in acting_organizations(tx, principal):
        out.add(EMPLOYER)
    if regional_authorities(tx, principal, employer):
        out.add(REGION)
    return out


def actor(principal: Principal) -> dict[str, Any]:
    if principal.fhir_user:
        return {"reference": principal.fhir_user}
    name = principal.client_id or principal.subject
    return {"identifier": {"system": f"{model.BASE}/sid/client", "value": name},
            "display": f"client {name}"}


def provenance(targets: list[Version], principal: Principal, now: datetime,
               activity: list[dict[str, Any]], text: str,
               reason: str | None = None) -> dict[str, Any]:
    """A Provenance for the versions a workflow change wrote (who, when, what, why)."""
    out: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": f"{v.type}/{v.id}/_history/{v.version}"} for v in targets],
        "recorded": model.fhir_instant(now),
        "activity": {"coding": activity, "text": text},
        "agent": [{"who": actor(principal)}],
    }
    if reason:
        out["reason"] = [{"text": reason}]
    return out


def data_operation(method: str) -> dict[str, Any]:
    code = {"POST": "CREATE", "DELETE": "DELETE"}.get(method, "UPDATE")
    return {"system": DATA_OPERATION, "code": code}


# -- eligibility --------------------------------------------------------------------------------

def _current(q: dict[str, Any], today: date) -> bool:
    end = when((q.get("period") or {}).get("end"))
    return end is None or end.date() >= today


def _rank(code: str) -> int:
    cs = library().code_system(model.PROFESSIONAL_TITLE)
    concept = cs.get(code) if cs is not None else None
    values = concept.property_values("rank") if concept is not None else []
    return int(values[0]) if values else 0


def titles(practitioner: dict[str, Any] | None, today: date) -> list[str]:
    """The professional titles the practitioner holds now."""
    return [code for q in (practitioner or {}).get("qualification") or [] if _current(q, today)
            for code in model.codes(q.get("code"), model.PROFESSIONAL_TITLE)]


def _has_training(practitioner: dict[str, Any] | None, today: date) -> bool:
    return any(model.has_code(q.get("code"), model.QUALIFICATION, TRAINING)
               for q in (practitioner or {}).get("qualification") or [] if _current(q, today))


def _grave_malpractice(practitioner: dict[str, Any] | None, today: date) -> list[str]:
    """Dates (or "undated") of grade 1-2 malpractice in the last 3 years."""
    since = years_before(today, MALPRACTICE_YEARS)
    out = []
    for ext in model.extensions(practitioner, model.EXT_MALPRACTICE):
        parts = {e.get("url"): e for e in ext.get("extension") or []}
        grade = (parts.get("grade") or {}).get("valueInteger")
        dated = (parts.get("date") or {}).get("valueDate")
        if not isinstance(grade, int) or grade > MALPRACTICE_GRAVEST:
            continue
        day = when(dated)
        if day is None:
            out.append(f"grade {grade}, undated")
        elif since <= day.date() <= today:
            out.append(f"grade {grade} on {dated}")
    return out


def _issue(rule: str, message: str, expression: str) -> Issue:
    return Issue("business-rule", f"[{rule}] {message}", expression=[expression])


def eligibility_problems(tx: Transaction, role: dict[str, Any], today: date) -> list[Issue]:
    """Every eligibility rule (A5 二) the role's practitioner fails today."""
    pid = ref_id(role.get("practitioner"), "Practitioner")
    practitioner = read(tx, "Practitioner", pid)
    who = f"Practitioner/{pid}" if pid else "the practitioner"
    if practitioner is None:
        return [_issue("expert-practitioner", f"{who} is not known", "PractitionerRole."
                       "practitioner")]
    out = []
    held = titles(practitioner, today)
    if not any(_rank(t) >= ELIGIBLE_TITLE_RANK for t in held):
        out.append(_issue("expert-title", f"{who} holds no associate-senior or senior "
                          f"professional title (holds: {', '.join(held) or 'none'})",
                          "Practitioner.qualification"))
    since = when(model.extension_value(role, model.EXT_SPECIALTY_SINCE, "Date"))
    if not role.get("specialty"):
        out.append(_issue("expert-specialty-years", "the role names no specialty",
                          "PractitionerRole.specialty"))
    elif since is None:
        out.append(_issue("expert-specialty-years", "the role does not say since when the "
                          "practitioner works in the specialty (specialty-since)",
                          "PractitionerRole.extension"))
    elif full_years(since.date(), today) < SPECIALTY_YEARS:
        out.append(_issue("expert-specialty-years", f"{who} has worked in the specialty since "
                          f"{since.date().isoformat()}: under {SPECIALTY_YEARS} years",
                          "PractitionerRole.extension"))
    grave = _grave_malpractice(practitioner, today)
    if grave:
        out.append(_issue("expert-malpractice", f"{who} has malpractice of grade 1 or 2 in the "
                          f"last {MALPRACTICE_YEARS} years ({'; '.join(grave)})",
                          "Practitioner.extension"))
    consent = when(model.extension_value(role, model.EXT_EMPLOYER_CONSENT, "Date"))
    if consent is None or consent.date() > today:
        out.append(_issue("expert-employer-consent", "the employing organisation's written "
                          "consent (employer-consent) is not recorded",
                          "PractitionerRole.extension"))
    if not _has_training(practitioner, today):
        out.append(_issue("expert-training", f"{who} has no telemedicine-training qualification",
                          "Practitioner.qualification"))
    return out


def refusal(issues: list[Issue]) -> FhirError:
    return FhirError(422, "business-rule", issues[0].diagnostics, issues=issues)


# -- the rules on PractitionerRole --------------------------------------------------------------

def _set_extension(role: dict[str, Any], url: str, key: str, value: Any) -> None:
    others = [e for e in role.get("extension") or [] if e.get("url") != url]
    role["extension"] = [*others, {"url": url, key: value}]


def _facts_changed(before: dict[str, Any], after: dict[str, Any]) -> bool:
    if any(before.get(k) != after.get(k) for k in ELIGIBILITY_FACTS):
        return True
    return any(model.extensions(before, u) != model.extensions(after, u)
               for u in ELIGIBILITY_EXTENSIONS)


def _check_who(event: WriteEvent, role: dict[str, Any], old: str | None, new: str) -> set[str]:
    """The capacities the principal acts in for this change; 403/409 when it may not."""
    allowed = TRANSITIONS.get(old, {}).get(new)
    system = event.principal.backend
    if allowed is None and not (system and old is None):
        options = ", ".join(sorted(TRANSITIONS.get(old, {}))) or "none"
        raise conflict(f"[pool-transition] the pool status cannot go from {old or 'none'} to "
                       f"{new}; from {old or 'none'} it may go to: {options}")
    if system:
        return {EMPLOYER, REGION}
    mine = capacities(event.system, event.principal, role)
    if not mine & (allowed or frozenset()):
        needed = " or ".join(
            {"employer": "the employing organisation",
             "region": "the regional authority"}[c] for c in sorted(allowed or ()))
        who = event.principal.fhir_user or "this client"
        raise FhirError(403, "forbidden", f"[pool-authority] {who} may not set the pool status "
                        f"{new}: only {needed} may")
    return mine


def _fill_parties(event: WriteEvent, role: dict[str, Any], new: str, mine: set[str]) -> None:
    """nominated-by is the employer; pool-approved-by the approving regional organisation."""
    employer = role.get("organization")
    nominated = model.extension_value(role, model.EXT_NOMINATED_BY, "Reference")
    if nominated is None and employer:
        _set_extension(role, model.EXT_NOMINATED_BY, "valueReference",
                       {"reference": employer.get("reference")})
    elif nominated is not None and employer and \
            ref_id(nominated, "Organization") != ref_id(employer, "Organization"):
        raise refusal([_issue("pool-nominated-by", "the nominating organisation (nominated-by) "
                              "is the employer, the role's organization",
                              "PractitionerRole.extension")])
    if new not in ("approved", "active") or event.principal.backend:
        return
    regional = regional_authorities(event.system, event.principal,
                                    ref_id(employer, "Organization"))
    approved = ref_id(model.extension_value(role, model.EXT_APPROVED_BY_REGION, "Reference"),
                      "Organization")
    if approved is None and regional:
        _set_extension(role, model.EXT_APPROVED_BY_REGION, "valueReference",
                       {"reference": f"Organization/{regional[0]}"})
    elif approved is not None and REGION in mine and approved not in regional:
        raise refusal([_issue("pool-approved-by", f"Organization/{approved} is not the "
                              "regional authority the caller acts for",
                              "PractitionerRole.extension")])


def _require_profile(role: dict[str, Any]) -> None:
    """The expert-role profile (server.workflow.profiles)."""
    require_profile(role, model.EXPERT_ROLE)


def role_before(event: WriteEvent) -> None:
    role, before = event.resource, event.previous
    if event.current is not None and event.current.deleted:
        before = None
    if not is_pool_role(role) and not is_pool_role(before):
        return
    if role is None:
        if not event.principal.backend:
            raise conflict(f"PractitionerRole/{event.id} is in the expert pool: it is removed "
                           "(expert-pool-status removed), not deleted")
        return
    old, new = pool_status(before), pool_status(role)
    if new is None:
        raise conflict(f"PractitionerRole/{event.id} is in the expert pool: its "
                       "expert-pool-status stays (set it to removed to leave the pool)")
    if not is_expert(role):
        raise refusal([_issue("expert-code", "a role in the expert pool has the code "
                              "practitioner-role#expert", "PractitionerRole.code")])
    moved = before is None or old != new
    mine = _check_who(event, role, old if before is not None else None, new) if moved else set()
    if moved:
        _fill_parties(event, role, new, mine)
    _require_profile(role)
    if new in ELIGIBLE_STATES and (moved or _facts_changed(before or {}, role)):
        today = event.context.clock.now().date()
        issues = eligibility_problems(event.system, role, today)
        if issues:
            raise refusal(issues)


def role_after(event: WriteEvent) -> None:
    role, before = event.resource, event.previous
    if not is_pool_role(role) and not is_pool_role(before):
        return
    assert event.version is not None
    if event.current is not None and event.version.version == event.current.version:
        return  # nothing new was written
    old, new = pool_status(before), pool_status(role)
    if role is None:
        text = f"expert pool: role deleted (was {old})"
    elif before is None or old == new:
        text = f"expert pool: {new}" if before is None else f"expert pool role updated ({new})"
    else:
        text = f"expert pool: {old} -> {new}"
    activity = [data_operation(event.method)]
    if new:
        activity.append({"system": model.EXPERT_POOL_STATUS, "code": new})
    event.write(provenance([event.version], event.principal, event.context.clock.now(),
                           activity, text, _CHANGE_REASON.get()))


@contextmanager
def change_reason(reason: str) -> Iterator[None]:
    token = _CHANGE_REASON.set(reason)
    try:
        yield
    finally:
        _CHANGE_REASON.reset(token)


def install(hooks: WriteHooks) -> None:
    hooks.before("PractitionerRole", role_before)
    hooks.after("PractitionerRole", role_after)


# -- statistics ---------------------------------------------------------------------------------

@dataclass
class ExpertStats:
    """What one expert did in a period (consultations counted by when they were requested:
    Task.authoredOn in the period).

    * ``invited``: consultation Tasks that name the expert (the request's performer) or are
      assigned to them (owner), each once;
    * ``served``: of these, completed Tasks the expert owns;
    * ``declined``: rejected Tasks the expert owned when they were declined, or whose
      statusReason is decline-reason#expert-declined;
    * ``decline_ratio``: declined / invited (None without invitations);
    * ``mean_satisfaction``: the mean ``overall`` score (1-5) of the completed satisfaction
      ratings about the Tasks the expert owns (the latest rating per Task);
    * ``median_turnaround_hours``: the median, over the served Tasks, of the hours from the
      request's authoredOn (else the Task's) to the ``issued`` time of the last report in the
      Task's output.
    """

    expert: str
    invited: int = 0
    served: int = 0
    declined: int = 0
    ratings: list[int] = field(default_factory=list)
    turnarounds: list[float] = field(default_factory=list)

    @property
    def decline_ratio(self) -> float | None:
        return self.declined / self.invited if self.invited else None

    @property
    def mean_satisfaction(self) -> float | None:
        return statistics.fmean(self.ratings) if self.ratings else None

    @property
    def median_turnaround_hours(self) -> float | None:
        return statistics.median(self.turnarounds) if self.turnarounds else None


def in_period(task: dict[str, Any], period: tuple[datetime, datetime] | None) -> bool:
    if period is None:
        return True
    at = when(task.get("authoredOn"))
    return at is not None and period[0] <= at < period[1]


def expert_tasks(tx: Transaction, role_id: str,
                 period: tuple[datetime, datetime] | None) -> list[dict[str, Any]]:
    """The consultation Tasks naming or assigned to the expert, requested in ``period``."""
    me = f"PractitionerRole/{role_id}"
    found = {t["id"]: t for t in search(tx, "Task", [("owner", me)])}
    named = [sr["id"] for sr in search(tx, "ServiceRequest", [("performer", me)])]
    for t in search_in(tx, "Task", "focus", (f"ServiceRequest/{i}" for i in named)):
        found.setdefault(t["id"], t)
    return [t for t in found.values() if consultation_type(t) and in_period(t, period)]


def latest_ratings(tx: Transaction, task_ids: Iterable[str]) -> dict[str, int]:
    """Task id -> the overall score of its latest completed satisfaction rating."""
    latest: dict[str, tuple[str, int]] = {}
    for qr in search_in(tx, "QuestionnaireResponse", "subject",
                        (f"Task/{i}" for i in task_ids)):
        if str(qr.get("questionnaire") or "").split("|")[0] != model.SATISFACTION_QUESTIONNAIRE \
                or qr.get("status") not in ("completed", "amended"):
            continue
        task_id = ref_id(qr.get("subject"), "Task")
        score = overall_score(qr)
        if task_id is None or score is None:
            continue
        stamp = qr.get("authored") or (qr.get("meta") or {}).get("lastUpdated") or ""
        if task_id not in latest or stamp >= latest[task_id][0]:
            latest[task_id] = (stamp, score)
    return {k: v[1] for k, v in latest.items()}


def overall_score(qr: dict[str, Any]) -> int | None:
    for item in _items(qr.get("item") or []):
        if item.get("linkId") == OVERALL_ITEM:
            for answer in item.get("answer") or []:
                if isinstance(answer.get("valueInteger"), int):
                    return int(answer["valueInteger"])
    return None


def _items(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for item in items:
        yield item
        yield from _items(item.get("item") or [])


def turnaround_hours(tx: Transaction, task: dict[str, Any]) -> float | None:
    """Hours from the request (its authoredOn, else the Task's) to the last report's issued."""
    sr = read(tx, "ServiceRequest", ref_id(task.get("focus"), "ServiceRequest"))
    start = when((sr or {}).get("authoredOn")) or when(task.get("authoredOn"))
    reports = [i for o in task.get("output") or []
               if (i := ref_id(o.get("valueReference"), "DiagnosticReport"))]
    report = read(tx, "DiagnosticReport", reports[-1]) if reports else None
    end = when((report or {}).get("issued"))
    if start is None or end is None:
        return None
    return (end - start).total_seconds() / 3600


def expert_stats(tx: Transaction, role_id: str,
                 period: tuple[datetime, datetime] | None = None) -> ExpertStats:
    me = f"PractitionerRole/{role_id}"
    out = ExpertStats(me)
    owned = []
    for task in expert_tasks(tx, role_id, period):
        out.invited += 1
        mine = ref_id(task.get("owner"), "PractitionerRole") == role_id
        if mine:
            owned.append(task)
        status = task.get("status")
        if status == "completed" and mine:
            out.served += 1
            hours = turnaround_hours(tx, task)
            if hours is not None:
                out.turnarounds.append(hours)
        elif status == "rejected" and (mine or model.has_code(
                task.get("statusReason"), model.DECLINE_REASON, "expert-declined")):
            out.declined += 1
    out.ratings = list(latest_ratings(tx, (t["id"] for t in owned)).values())
    return out


def decimal(value: float, places: int = 4) -> Decimal:
    """A figure for a response: rounded half-up to ``places`` decimals, trailing zeros cut."""
    q = Decimal(str(value)).quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_UP)
    return q.normalize() if q != q.to_integral() else q.quantize(Decimal(1))


def period_json(period: tuple[datetime, datetime]) -> dict[str, str]:
    """A period as FHIR dates (both days included), in the zone it was computed in."""
    return {"start": period[0].date().isoformat(),
            "end": (period[1] - timedelta(days=1)).date().isoformat()}


def stats_parameters(s: ExpertStats,
                     period: tuple[datetime, datetime] | None) -> dict[str, Any]:
    """``expert``, ``period``?, ``served``, ``invited``, ``declined``, ``declineRatio``?,
    ``ratings`` (how many), ``meanSatisfaction``?, ``medianTurnaroundHours``? (ratios, means and
    hours to 4 decimals; a figure without data is left out)."""
    params: list[dict[str, Any]] = [{"name": "expert", "valueReference": {"reference": s.expert}}]
    if period is not None:
        params.append({"name": "period", "valuePeriod": period_json(period)})
    params += [{"name": "served", "valueInteger": s.served},
               {"name": "invited", "valueInteger": s.invited},
               {"name": "declined", "valueInteger": s.declined}]
    if s.decline_ratio is not None:
        params.append({"name": "declineRatio", "valueDecimal": decimal(s.decline_ratio)})
    params.append({"name": "ratings", "valueInteger": len(s.ratings)})
    if s.mean_satisfaction is not None:
        params.append({"name": "meanSatisfaction", "valueDecimal": decimal(s.mean_satisfaction)})
    if s.median_turnaround_hours is not None:
        params.append({"name": "medianTurnaroundHours",
                       "valueDecimal": decimal(s.median_turnaround_hours)})
    return {"resourceType": "Parameters", "parameter": params}


# -- operation inputs and periods ---------------------------------------------------------------

_BODY_KEYS = {
    "string": ("valueString", "valueCode"), "code": ("valueCode", "valueString"),
    "integer": ("valueInteger", "valueUnsignedInt", "valuePositiveInt"),
    "decimal": ("valueDecimal", "valueInteger", "valueString"),
    "boolean": ("valueBoolean",), "Money": ("valueMoney", "valueDecimal", "valueString"),
    "Reference": ("valueReference", "valueString"),
}


def _from_text(name: str, kind: str, raw: str) -> Any:
    if raw.strip() == "":
        raise invalid(f"the parameter {name} is empty", name)
    try:
        if kind == "integer":
            return int(raw)
        if kind == "decimal":
            return Decimal(raw)
    except (ValueError, InvalidOperation):
        raise invalid(f"{name} must be a number, not {raw!r}", name) from None
    if kind == "boolean":
        if raw not in ("true", "false"):
            raise invalid(f"{name} must be true or false, not {raw!r}", name)
        return raw == "true"
    if kind == "Reference":
        return {"reference": raw}
    if kind == "Money":  # the amount alone (its currency is another input)
        return {"value": _from_text(name, "decimal", raw)}
    return raw


def _from_body(name: str, kind: str, item: dict[str, Any]) -> Any:
    for key in _BODY_KEYS[kind]:
        if key not in item:
            continue
        value = item[key]
        if key == "valueMoney":
            if not isinstance(value, dict) or value.get("value") is None:
                raise invalid(f"{name}: a Money with a value", "Parameters.parameter")
            return {**value, "value": _from_text(name, "decimal", str(value["value"]))}
        if kind in ("decimal", "Money") or (kind in ("integer", "boolean")
                                            and isinstance(value, str)):
            return _from_text(name, kind, str(value))
        if kind == "Reference" and isinstance(value, str):
            return {"reference": value}
        return value
    raise invalid(f"{name} must be given as {' or '.join(_BODY_KEYS[kind])}",
                  "Parameters.parameter")


def inputs(req: FhirRequest, spec: dict[str, str]) -> dict[str, list[Any]]:
    """An operation's inputs, from the URL and from a Parameters body: name -> values.
    ``spec`` names each input's kind (string, code, integer, decimal, boolean, Money,
    Reference); anything else is refused, so a misspelt input is not silently ignored."""
    out: dict[str, list[Any]] = {}
    for name, raw in req.params:
        if name.startswith("_"):
            continue
        if name not in spec:
            raise invalid(f"{name} is not a parameter of ${req.operation} (known: "
                          f"{', '.join(sorted(spec))})", name)
        out.setdefault(name, []).append(_from_text(name, spec[name], raw))
    if req.method == "POST" and req.body.strip():
        body = req.resource()
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise invalid(f"the body of ${req.operation} is a Parameters resource")
        for item in body.get("parameter") or []:
            given = item.get("name") if isinstance(item, dict) else None
            if not isinstance(given, str) or given not in spec:
                raise invalid(f"{given!r} is not a parameter of ${req.operation} (known: "
                              f"{', '.join(sorted(spec))})", "Parameters.parameter")
            out.setdefault(given, []).append(_from_body(given, spec[given], item))
    return out


def first(values: dict[str, list[Any]], name: str) -> Any:
    found = values.get(name)
    if found and len(found) > 1:
        raise invalid(f"the parameter {name} may be given only once", name)
    return found[0] if found else None


def _quarter(year: int, q: int) -> tuple[date, date]:
    start = date(year, 3 * q - 2, 1)
    return start, date(year + 1, 1, 1) if q == 4 else date(year, 3 * q + 1, 1)


def _days(text: str) -> tuple[date, date]:
    if len(text) == 4 and text.isdigit():
        return date(int(text), 1, 1), date(int(text) + 1, 1, 1)
    if len(text) == 7 and text[4:6] == "-Q" and text[:4].isdigit() and text[6] in "1234":
        return _quarter(int(text[:4]), int(text[6]))
    if len(text) == 7 and text[4] == "-":
        y, m = int(text[:4]), int(text[5:])
        return date(y, m, 1), date(y + 1, 1, 1) if m == 12 else date(y, m + 1, 1)
    day = date.fromisoformat(text)
    return day, day + timedelta(days=1)


PERIOD_DOC = ("A year (2026), a quarter (2026-Q3), a month (2026-07), a day (2026-07-15) or "
              "start/end days, in the organisation's time zone")


def period_bounds(text: str, zone: ZoneInfo) -> tuple[datetime, datetime]:
    """[start, end) of ``2026``, ``2026-Q3``, ``2026-07``, ``2026-07-15`` or ``start/end``
    (days, both included), midnight to midnight in ``zone``."""
    try:
        if "/" in text:
            a, b = text.split("/", 1)
            first_day, last = _days(a)[0], _days(b)[1]
        else:
            first_day, last = _days(text)
        if last <= first_day:
            raise ValueError(text)
    except ValueError:
        raise invalid(f"period {text!r}: give a year (2026), a quarter (2026-Q3), a month "
                      "(2026-07), a day (2026-07-15) or start/end days", "period") from None
    return (datetime.combine(first_day, datetime.min.time(), zone),
            datetime.combine(last, datetime.min.time(), zone))


# -- $stats ---------------------------------------------------------------------------------------

async def stats(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """``PractitionerRole/[id]/$stats?period=``: the expert's figures (:class:`ExpertStats`),
    over the period given (in the time zone of the expert's organisation) or all time. Open to
    whoever may read PractitionerRole: the figures are counts and means, no patient data."""
    role_id = req.id
    assert role_id
    require(req.principal, "PractitionerRole", "r")
    text = first(inputs(req, {"period": "string"}), "period")

    def run(tx: Transaction) -> dict[str, Any]:
        system = unguarded(tx)
        role = read(system, "PractitionerRole", role_id)
        if role is None:
            raise not_found("PractitionerRole", role_id)
        org = read(system, "Organization", ref_id(role.get("organization"), "Organization"))
        period = period_bounds(text, model.zone(org)) if text else None
        return stats_parameters(expert_stats(system, role_id, period), period)

    return FhirResponse(200, resource=await store_.run(run))


# -- $pool ----------------------------------------------------------------------------------------

def display_name(resource: dict[str, Any] | None) -> str | None:
    names = (resource or {}).get("name")
    if isinstance(names, str):
        return names
    for name in names or []:
        if name.get("text"):
            return str(name["text"])
        parts = [*(name.get("prefix") or []), *(name.get("given") or []), name.get("family")]
        shown = " ".join(p for p in parts if p)
        if shown:
            return shown
    return None


def _labelled(ref: dict[str, Any] | None, target: dict[str, Any] | None) -> dict[str, Any] | None:
    if not ref or not ref.get("reference"):
        return None
    out = {"reference": ref["reference"]}
    name = display_name(target)
    if name:
        out["display"] = name
    return out


def public_role(role: dict[str, Any], practitioner: dict[str, Any] | None,
                org: dict[str, Any] | None) -> dict[str, Any]:
    """What the public listing shows of a member: the role with names, no contact details."""
    out: dict[str, Any] = {"resourceType": "PractitionerRole", "id": role["id"],
                           "meta": {"tag": [SUBSETTED]}, "active": True,
                           "extension": model.extensions(role, model.EXT_POOL_STATUS)}
    for key, target in (("practitioner", practitioner), ("organization", org)):
        labelled = _labelled(role.get(key), target)
        if labelled:
            out[key] = labelled
    out["code"] = role.get("code")
    out["specialty"] = role.get("specialty")
    return {k: v for k, v in out.items() if v}


def public_practitioner(practitioner: dict[str, Any], today: date) -> dict[str, Any]:
    """The practitioner's name and professional titles only."""
    out: dict[str, Any] = {"resourceType": "Practitioner", "id": practitioner["id"],
                           "meta": {"tag": [SUBSETTED]}}
    if practitioner.get("name"):
        out["name"] = practitioner["name"]
    held = [{"code": {"coding": [{"system": model.PROFESSIONAL_TITLE, "code": code}]}}
            for code in titles(practitioner, today)]
    if held:
        out["qualification"] = held
    return out


async def _read(store_: ResourceStore, type_: str, id_: str | None) -> dict[str, Any] | None:
    if not id_:
        return None
    v = await store_.read(type_, id_)
    return codec.loads(v.body) if v is not None and not v.deleted and v.body else None


async def _search_all(store_: ResourceStore, type_: str,
                      params: list[tuple[str, str]]) -> list[dict[str, Any]]:
    query = parse((type_,), [*params, ("_count", "1000")])
    out: list[dict[str, Any]] = []
    while True:
        page = await store_.search(query)
        out += [codec.loads(v.body) for v in page.matches if v.body]
        if not page.next_cursor:
            return out
        query.cursor = page.next_cursor


def _specialty_token(value: str) -> str:
    return value if "|" in value else f"{model.SPECIALTY}|{value}"


def _sort_key(role: dict[str, Any], names: dict[str, str]) -> tuple[str, str, str]:
    first_specialty = next(iter(model.codes((role.get("specialty") or [{}])[0],
                                            model.SPECIALTY)), "")
    return first_specialty, names.get(role["id"], ""), role["id"]


async def pool(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """``PractitionerRole/$pool?specialty=``: the pool's active members (A5 六: public to
    institutions and patients), filed by specialty (a code of the specialty CodeSystem, or
    system|code; several are ORed), ordered by specialty and name. Public: no token needed.
    Each member is a subsetted PractitionerRole (pool status, code, specialty, the names of the
    practitioner and the organisation), its Practitioner included with name and titles only."""
    wanted = [v for raw in inputs(req, {"specialty": "string"}).get("specialty", [])
              for v in raw.split(",") if v]
    params = [("role", f"{model.PRACTITIONER_ROLE}|{EXPERT}")]
    if wanted:
        params.append(("specialty", ",".join(_specialty_token(v) for v in wanted)))
    roles = [r for r in await _search_all(store_, "PractitionerRole", params)
             if pool_status(r) in LISTED_STATES and r.get("active") is not False]
    today = req.context.clock.now().date() if req.context is not None else date.today()
    people: dict[str, dict[str, Any]] = {}
    orgs: dict[str, dict[str, Any] | None] = {}
    names: dict[str, str] = {}
    for role in roles:
        pid = ref_id(role.get("practitioner"), "Practitioner")
        if pid and pid not in people:
            found = await _read(store_, "Practitioner", pid)
            if found is not None:
                people[pid] = found
        oid = ref_id(role.get("organization"), "Organization")
        if oid and oid not in orgs:
            orgs[oid] = await _read(store_, "Organization", oid)
        names[role["id"]] = display_name(people.get(pid or "")) or ""
    entries, included = [], set()
    for role in sorted(roles, key=lambda r: _sort_key(r, names)):
        pid = ref_id(role.get("practitioner"), "Practitioner")
        oid = ref_id(role.get("organization"), "Organization")
        entries.append({"fullUrl": full_url(req.base, "PractitionerRole", role["id"]),
                        "resource": public_role(role, people.get(pid or ""),
                                                orgs.get(oid or "")),
                        "search": {"mode": "match"}})
        if pid in people and pid not in included:
            included.add(pid)
            entries.append({"fullUrl": full_url(req.base, "Practitioner", pid),
                            "resource": public_practitioner(people[pid], today),
                            "search": {"mode": "include"}})
    return FhirResponse(200, resource=bundle(
        "searchset", entries, [("self", link_url(req.base, "PractitionerRole/$pool",
                                                 req.params))], total=len(roles)))


# -- $review --------------------------------------------------------------------------------------

REVIEW_INPUTS = {"year": "integer", "maxDeclineRatio": "decimal", "minSatisfaction": "decimal",
                 "minInvitations": "integer", "dryRun": "boolean"}


@dataclass
class Review:
    year: int
    max_decline_ratio: Decimal | None
    min_satisfaction: Decimal | None
    min_invitations: int
    dry_run: bool

    @classmethod
    def of(cls, req: FhirRequest) -> Review:
        values = inputs(req, REVIEW_INPUTS)
        year = first(values, "year")
        if year is None:
            raise invalid("$review needs the year reviewed (year)", "year")
        ratio, score = first(values, "maxDeclineRatio"), first(values, "minSatisfaction")
        if ratio is not None and not 0 <= ratio <= 1:
            raise invalid("maxDeclineRatio is a ratio between 0 and 1", "maxDeclineRatio")
        if score is not None and not 1 <= score <= 5:
            raise invalid("minSatisfaction is a score between 1 and 5", "minSatisfaction")
        least = first(values, "minInvitations")
        return cls(int(year), ratio, score, 1 if least is None else int(least),
                   bool(first(values, "dryRun")))

    def failures(self, s: ExpertStats) -> list[str]:
        """Why the member's figures for the year fail the thresholds given (compared exactly:
        2 of 10 declined is not above a threshold of 0.2, as the float 0.2 would be)."""
        out = []
        ratio = s.decline_ratio
        if self.max_decline_ratio is not None and ratio is not None \
                and s.invited >= self.min_invitations \
                and Fraction(s.declined, s.invited) > Fraction(self.max_decline_ratio):
            out.append(f"[review-decline-ratio] declined {s.declined} of {s.invited} "
                       f"invitations in {self.year} ({decimal(ratio)}), above "
                       f"{self.max_decline_ratio}")
        mean = s.mean_satisfaction
        if self.min_satisfaction is not None and mean is not None \
                and Fraction(sum(s.ratings), len(s.ratings)) < Fraction(self.min_satisfaction):
            out.append(f"[review-satisfaction] mean satisfaction {decimal(mean)} over "
                       f"{len(s.ratings)} ratings in {self.year}, below {self.min_satisfaction}")
        return out


def _member_part(role: dict[str, Any], s: ExpertStats, reasons: list[str]) -> dict[str, Any]:
    part: list[dict[str, Any]] = [
        {"name": "expert", "valueReference": {"reference": f"PractitionerRole/{role['id']}"}},
        {"name": "outcome", "valueCode": "removed" if reasons else "kept"},
        {"name": "invited", "valueInteger": s.invited},
        {"name": "declined", "valueInteger": s.declined}]
    if s.decline_ratio is not None:
        part.append({"name": "declineRatio", "valueDecimal": decimal(s.decline_ratio)})
    if s.mean_satisfaction is not None:
        part.append({"name": "meanSatisfaction", "valueDecimal": decimal(s.mean_satisfaction)})
    part += [{"name": "reason", "valueString": r} for r in reasons]
    return {"name": "member", "part": part}


def _remove(tx: Transaction, req: FhirRequest, role: dict[str, Any], reason: str) -> None:
    updated = copy.deepcopy(role)
    _set_extension(updated, model.EXT_POOL_STATUS, "valueCoding",
                   {"system": model.EXPERT_POOL_STATUS, "code": "removed"})
    with change_reason(reason):
        store(tx, req.context, req.principal, "PractitionerRole", role["id"], updated,
              prepare(updated, "PractitionerRole"), "PUT", tx.read("PractitionerRole", role["id"]))


async def review(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """``PractitionerRole/$review``: the annual review (A5 十). Every member (approved, active
    or suspended) is checked against the eligibility rules today and, for the year (in the time
    zone of the member's organisation), against the thresholds given: ``maxDeclineRatio``
    (applied to members invited at least ``minInvitations`` times, default 1) and
    ``minSatisfaction`` (applied to members with ratings). A threshold not given is not
    applied. Members who fail are removed (expert-pool-status removed, a Provenance with the
    reasons), all in one transaction, unless ``dryRun``. Only a regional authority (its
    region's members) or a system client (every member) may review. Returns Parameters: year,
    reviewed, removed, dryRun and per member its outcome (removed | kept), figures and
    reasons."""
    spec = Review.of(req)

    def run(tx: Transaction) -> dict[str, Any]:
        system = unguarded(tx)
        everyone = req.principal.backend
        if not everyone and not authorities(
                system, acting_organizations(system, req.principal), POOL_AUTHORITY_TYPES):
            raise FhirError(403, "forbidden", "[pool-authority] only the regional authority "
                            "reviews the expert pool")
        today = req.context.clock.now().date()
        members = sorted((r for r in search(system, "PractitionerRole", [
            ("role", f"{model.PRACTITIONER_ROLE}|{EXPERT}")]) if pool_status(r) in MEMBER_STATES
            and (everyone or regional_authorities(
                system, req.principal, ref_id(r.get("organization"), "Organization")))),
            key=lambda r: r["id"])
        parts, removed = [], 0
        for role in members:
            org = read(system, "Organization", ref_id(role.get("organization"), "Organization"))
            figures = expert_stats(system, role["id"],
                                   period_bounds(str(spec.year), model.zone(org)))
            reasons = [i.diagnostics for i in eligibility_problems(system, role, today)]
            reasons += spec.failures(figures)
            if reasons:
                removed += 1
                if not spec.dry_run:
                    _remove(tx, req, role, f"annual review {spec.year}: " + "; ".join(reasons))
            parts.append(_member_part(role, figures, reasons))
        return {"resourceType": "Parameters", "parameter": [
            {"name": "year", "valueInteger": spec.year},
            {"name": "reviewed", "valueInteger": len(members)},
            {"name": "removed", "valueInteger": removed},
            {"name": "dryRun", "valueBoolean": spec.dry_run}, *parts]}

    return FhirResponse(200, resource=await store_.run(run))


def _definition(name: str) -> str:
    return f"{model.BASE}/OperationDefinition/{name}"


OPERATIONS: tuple[Operation, ...] = (
    Operation("stats", _definition("PractitionerRole-stats"), frozenset({"instance"}), stats,
              "An expert's figures: served, invited, declined, decline ratio, mean "
              "satisfaction, median turnaround", ("GET", "POST"), ("PractitionerRole",),
              parameters=(("period", "in", 0, "1", "string", PERIOD_DOC + " (default: all time)"),
                          ("return", "out", 1, "1", "Parameters", "The figures"))),
    Operation("pool", _definition("PractitionerRole-pool"), frozenset({"type"}), pool,
              "The public listing of the expert pool's active members, by specialty",
              ("GET", "POST"), ("PractitionerRole",), public=True,
              parameters=(("specialty", "in", 0, "*", "string", "Specialty codes (or system|code) "
                           "to list; none: every discipline"),
                          ("return", "out", 1, "1", "Bundle", "The members, without contact "
                           "or private details"))),
    Operation("review", _definition("PractitionerRole-review"), frozenset({"type"}), review,
              "The annual review of the expert pool: members who fail it are removed",
              ("POST",), ("PractitionerRole",), parameters=(
                  ("year", "in", 1, "1", "integer", "The year reviewed"),
                  ("maxDeclineRatio", "in", 0, "1", "decimal", "Members who declined a larger "
                   "share of their invitations fail (0 to 1)"),
                  ("minSatisfaction", "in", 0, "1", "decimal", "Members rated lower on average "
                   "fail (1 to 5)"),
                  ("minInvitations", "in", 0, "1", "integer", "Figures count from this many "
                   "invitations (default 1)"),
                  ("dryRun", "in", 0, "1", "boolean", "Report without removing anyone"),
                  ("return", "out", 1, "1", "Parameters", "Every member reviewed, with the "
                   "reasons of those who fail"))),
)

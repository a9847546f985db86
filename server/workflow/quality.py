"""Quality control (Inner Mongolia rules A6): the quarter's statistics per organisation, the
evaluation panel's grade, and the rectification flag.

``Organization/[id]/$quality?period=2026-Q3`` computes a MeasureReport (type summary, measure
:data:`model.QUALITY_MEASURE`, reporter the organisation, period the quarter as days in the
organisation's time zone) from the consultation Tasks requested in the quarter (Task.authoredOn);
nothing is stored. Its groups (codes of :data:`model.QUALITY_CONTROL`; the built-in Measure
describes each):

* ``requests-sent`` / ``requests-received`` / ``requests-completed``: consultation Tasks the
  organisation requested (requester one of its PractitionerRoles, or itself), was invited to
  (the request's performer, or the Task's owner), and of those received the completed ones;
* ``acceptance-rate`` / ``decline-rate``: of the received (denominator), those accepted (status
  accepted, in-progress, completed or failed) and those declined (rejected) — numerators;
* ``deadline-<kind>`` per deadline kind: of the deadlines of that kind the organisation answers
  for (papers and clarification: the inviting side, on the Tasks sent; every other kind: the
  invited side, on the Tasks received), the denominator counts those met, those overdue (not met,
  due before now) and those a Task ended without meeting after they fell due; the numerator
  those met by their due time. Deadlines not yet due, or of Tasks that ended before they fell
  due, are not counted;
* ``referral-rate``: referral Tasks the organisation sent (numerator) per consultation it took
  part in, sent or received (denominator);
* ``satisfaction``: the mean ``overall`` score of the latest satisfaction rating of each Task
  received (measure-population: how many are rated).

Scores are proportions (0-1) or the mean score, to 4 decimals; a group whose denominator is 0 has
no score.

``Organization/[id]/$grade`` (period, grade, note?, evaluator?) records the panel's grade for a
quarter (A6 三(二)5) as an Observation (code quality-control#quality-grade, focus the
organisation, effectivePeriod the quarter, valueCodeableConcept quality-grade, performer the
evaluator: the given one, else the quality-control centre or health administration the caller
acts for); grading the same quarter again replaces the grade (the same Observation, status
amended). Only a system client or someone acting for a quality-control centre or health
administration may grade. A third-party operator (organization-type third-party-operator)
graded unqualified two quarters in a row gets a Flag (A6 四(三); the two-quarter rule is
about operators only): code quality-control#rectification, subject the organisation, status
active, period.end the rectification deadline = the last day of the quarter after the second
unqualified one, or, when that day has already passed as the grade is recorded, the last day of
the quarter after the current one. Re-grading that breaks the pair withdraws the Flag (status
entered-in-error). Each grade and flag gets a Provenance.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from server.auth.guard import require, unguarded
from server.fhir.errors import FhirError, invalid, not_found
from server.fhir.hooks import store
from server.fhir.prepare import prepare
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.fhir.writes import new_id
from server.storage.base import ResourceStore, Transaction, Version
from server.workflow import model
from server.workflow.experts import (
    acting_organizations,
    authorities,
    consultation_type,
    data_operation,
    decimal,
    first,
    in_period,
    inputs,
    latest_ratings,
    organization_types,
    provenance,
    read,
    search,
    search_in,
    when,
)

QUARTER = re.compile(r"^(\d{4})-Q([1-4])$")
MEASURE_POPULATION = "http://terminology.hl7.org/CodeSystem/measure-population"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
GRADE_ID = f"{model.BASE}/sid/quality-grade"
RECTIFICATION_ID = f"{model.BASE}/sid/rectification"
INVITED, INVITING = "invited", "inviting"
#: Deadline kinds and the side that answers for them (papers and answers to clarification
#: requests come from the inviting side; every other step is the invited side's).
DEADLINE_SIDES = {"acceptance": INVITED, "papers": INVITING, "expert-assignment": INVITED,
                  "session-preparation": INVITED, "session": INVITED, "report": INVITED,
                  "clarification": INVITING}
ACCEPTED = frozenset({"accepted", "in-progress", "completed", "failed"})
FINAL = frozenset({"completed", "rejected", "cancelled", "failed", "entered-in-error"})
GRADES = ("excellent", "qualified", "unqualified")
UNQUALIFIED = "unqualified"
OPERATOR = "third-party-operator"
#: Who grades: the quality-control centre (A6 一(一)) and the health administration.
GRADING_TYPES = frozenset({"quality-control-centre", "health-authority"})


# -- quarters -----------------------------------------------------------------------------------

@dataclass(frozen=True, order=True)
class Quarter:
    year: int
    q: int

    @classmethod
    def parse(cls, text: str | None, name: str = "period") -> Quarter:
        m = QUARTER.match(text or "")
        if not m:
            raise invalid(f"{name} is a quarter such as 2026-Q3, not {text!r}", name)
        return cls(int(m.group(1)), int(m.group(2)))

    @classmethod
    def containing(cls, moment: datetime, zone: ZoneInfo) -> Quarter:
        local = moment.astimezone(zone)
        return cls(local.year, (local.month - 1) // 3 + 1)

    def __str__(self) -> str:
        return f"{self.year}-Q{self.q}"

    def shift(self, n: int) -> Quarter:
        index = self.year * 4 + self.q - 1 + n
        return Quarter(index // 4, index % 4 + 1)

    @property
    def first_day(self) -> date:
        return date(self.year, 3 * self.q - 2, 1)

    @property
    def last_day(self) -> date:
        return self.shift(1).first_day - timedelta(days=1)

    def bounds(self, zone: ZoneInfo) -> tuple[datetime, datetime]:
        """[start, end): midnight to midnight in ``zone``."""
        return (datetime.combine(self.first_day, datetime.min.time(), zone),
                datetime.combine(self.shift(1).first_day, datetime.min.time(), zone))

    def period(self) -> dict[str, str]:
        return {"start": self.first_day.isoformat(), "end": self.last_day.isoformat()}


# -- the organisation's consultations ------------------------------------------------------------

def _org_roles(tx: Transaction, org_id: str) -> list[str]:
    return [r["id"] for r in search(tx, "PractitionerRole",
                                    [("organization", f"Organization/{org_id}")])]


def _authored(period: tuple[datetime, datetime]) -> list[tuple[str, str]]:
    return [("authored-on", f"ge{period[0].isoformat()}"),
            ("authored-on", f"lt{period[1].isoformat()}")]


def sent_tasks(tx: Transaction, org_id: str, period: tuple[datetime, datetime],
               referral: bool = False) -> list[dict[str, Any]]:
    """Tasks the organisation requested in the period: consultations, or (``referral``) the
    referrals it sent."""
    requesters = [f"PractitionerRole/{r}" for r in _org_roles(tx, org_id)]
    requesters.append(f"Organization/{org_id}")
    found = search_in(tx, "Task", "requester", requesters, _authored(period))
    if referral:
        return [t for t in found if model.has_code(t.get("code"), model.CONSULTATION_TYPE,
                                                   "referral") and in_period(t, period)]
    return [t for t in found if consultation_type(t) and in_period(t, period)]


def received_tasks(tx: Transaction, org_id: str,
                   period: tuple[datetime, datetime]) -> list[dict[str, Any]]:
    """Consultation Tasks the organisation was invited to, requested in the period."""
    me = f"Organization/{org_id}"
    requests = [f"ServiceRequest/{sr['id']}"
                for sr in search(tx, "ServiceRequest", [("performer", me)])]
    found = {t["id"]: t for t in search_in(tx, "Task", "focus", requests, _authored(period))}
    for t in search(tx, "Task", [("owner", me), *_authored(period)]):
        found.setdefault(t["id"], t)
    return [t for t in found.values() if consultation_type(t) and in_period(t, period)]


def deadlines(task: dict[str, Any]) -> list[tuple[str, datetime, datetime | None]]:
    """(kind, due, met) of each deadline extension on the Task."""
    out = []
    for ext in model.extensions(task, model.EXT_DEADLINE):
        parts = {e.get("url"): e for e in ext.get("extension") or []}
        kind = ((parts.get("kind") or {}).get("valueCoding") or {}).get("code")
        due = when((parts.get("due") or {}).get("valueDateTime"))
        if kind and due:
            out.append((kind, due, when((parts.get("met") or {}).get("valueDateTime"))))
    return out


@dataclass
class Compliance:
    due: int = 0
    on_time: int = 0


def count_deadline(c: Compliance, task: dict[str, Any], due: datetime, met: datetime | None,
                   now: datetime) -> None:
    """Met: counted, on time when met by its due time. Not met: counted as missed once overdue
    while the Task was open (a Task that ended: when it ended, its lastModified)."""
    if met is not None:
        c.due += 1
        c.on_time += met <= due
        return
    ended = when(task.get("lastModified")) if task.get("status") in FINAL else None
    if ended is not None:
        c.due += due < ended
    elif task.get("status") not in FINAL:
        c.due += due < now


@dataclass
class Figures:
    sent: list[dict[str, Any]]
    received: list[dict[str, Any]]
    referrals_out: int
    compliance: dict[str, Compliance] = field(default_factory=dict)
    ratings: list[int] = field(default_factory=list)

    @property
    def involved(self) -> int:
        return len({t["id"] for t in self.sent} | {t["id"] for t in self.received})

    def received_with(self, statuses: frozenset[str]) -> int:
        return sum(1 for t in self.received if t.get("status") in statuses)


def figures(tx: Transaction, org_id: str, period: tuple[datetime, datetime],
            now: datetime) -> Figures:
    out = Figures(sent_tasks(tx, org_id, period), received_tasks(tx, org_id, period),
                  len(sent_tasks(tx, org_id, period, referral=True)))
    out.compliance = {kind: Compliance() for kind in DEADLINE_SIDES}
    sides = {INVITING: out.sent, INVITED: out.received}
    for kind, side in DEADLINE_SIDES.items():
        for task in sides[side]:
            for k, due, met in deadlines(task):
                if k == kind:
                    count_deadline(out.compliance[kind], task, due, met, now)
    out.ratings = list(latest_ratings(tx, (t["id"] for t in out.received)).values())
    return out


# -- the MeasureReport and its Measure ----------------------------------------------------------

def concept(system: str, code: str, display: str | None = None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return {"coding": [coding]}


def _population(code: str, count: int) -> dict[str, Any]:
    return {"code": concept(MEASURE_POPULATION, code), "count": count}


def _ratio(numerator: int, denominator: int) -> dict[str, Any] | None:
    if not denominator:
        return None
    return {"value": decimal(numerator / denominator), "unit": "ratio",
            "system": "http://unitsofmeasure.org", "code": "1"}


def _group(code: str, populations: list[dict[str, Any]],
           score: dict[str, Any] | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"code": concept(model.QUALITY_CONTROL, code),
                           "population": populations}
    if score is not None:
        out["measureScore"] = score
    return out


def _count(code: str, n: int) -> dict[str, Any]:
    return _group(code, [_population("initial-population", n)])


def _proportion(code: str, numerator: int, denominator: int) -> dict[str, Any]:
    return _group(code, [_population("denominator", denominator),
                         _population("numerator", numerator)], _ratio(numerator, denominator))


def groups(f: Figures) -> list[dict[str, Any]]:
    received = len(f.received)
    out = [_count("requests-sent", len(f.sent)), _count("requests-received", received),
           _count("requests-completed", f.received_with(frozenset({"completed"}))),
           _proportion("acceptance-rate", f.received_with(ACCEPTED), received),
           _proportion("decline-rate", f.received_with(frozenset({"rejected"})), received)]
    for kind, c in f.compliance.items():
        out.append(_proportion(f"deadline-{kind}", c.on_time, c.due))
    out.append(_proportion("referral-rate", f.referrals_out, f.involved))
    mean = sum(f.ratings) / len(f.ratings) if f.ratings else None
    out.append(_group("satisfaction", [_population("measure-population", len(f.ratings))],
                      {"value": decimal(mean), "unit": "score"} if mean is not None else None))
    return out


def measure_report(org: dict[str, Any], quarter: Quarter, f: Figures,
                   now: datetime) -> dict[str, Any]:
    reporter: dict[str, Any] = {"reference": f"Organization/{org['id']}"}
    if org.get("name"):
        reporter["display"] = org["name"]
    return {"resourceType": "MeasureReport", "status": "complete", "type": "summary",
            "measure": model.QUALITY_MEASURE, "reporter": reporter,
            "date": model.fhir_instant(now), "period": quarter.period(), "group": groups(f)}


#: Group code -> (display, what it counts): the Measure's groups and the CodeSystem's concepts.
MEASURE_GROUPS: dict[str, tuple[str, str]] = {
    "requests-sent": ("Consultation requests sent",
                      "Consultation Tasks requested in the period by the organisation's "
                      "practitioners (or the organisation itself)."),
    "requests-received": ("Consultation requests received",
                          "Consultation Tasks requested in the period that invite the "
                          "organisation (the request's performer or the Task's owner)."),
    "requests-completed": ("Consultations completed",
                           "Received consultation Tasks of the period that are completed."),
    "acceptance-rate": ("Acceptance rate",
                        "Received requests accepted (accepted, in-progress, completed or "
                        "failed) per request received."),
    "decline-rate": ("Decline rate", "Received requests declined (rejected) per request "
                     "received."),
    **{f"deadline-{kind}": (f"Deadline compliance: {kind}",
                            f"Deadlines of kind {kind} the organisation answers for (as the "
                            f"{side} side) met by their due time, per deadline met, overdue or "
                            "left unmet by a Task that ended after it fell due.")
       for kind, side in DEADLINE_SIDES.items()},
    "referral-rate": ("Referral rate", "Referrals sent by the organisation in the period per "
                      "consultation it took part in (sent or received)."),
    "satisfaction": ("Mean satisfaction", "Mean overall score (1-5) of the latest satisfaction "
                     "rating of each received consultation of the period."),
}
OTHER_CONCEPTS = {
    "quality-grade": ("Quarterly telemedicine quality grade",
                      "The evaluation panel's grade of an organisation for a quarter "
                      "(quality-grade: excellent, qualified, unqualified)."),
    "rectification": ("Rectification required",
                      "A third-party operator graded unqualified two quarters in a row must "
                      "rectify by a deadline (Inner Mongolia rules A6 四(三))."),
}
_POPULATIONS = {
    "initial-population": "Counted",
    "denominator": "Denominator",
    "numerator": "Numerator",
    "measure-population": "Rated consultations (the score is their mean overall rating)",
}


def _measure_group(code: str, display: str, text: str,
                   populations: list[str]) -> dict[str, Any]:
    return {"code": concept(model.QUALITY_CONTROL, code, display), "description": text,
            "population": [{"code": concept(MEASURE_POPULATION, p),
                            "description": _POPULATIONS[p],
                            "criteria": {"language": "text/plain", "expression": text}}
                           for p in populations]}


def _populations_of(code: str) -> list[str]:
    if code.startswith("requests-"):
        return ["initial-population"]
    if code == "satisfaction":
        return ["measure-population"]
    return ["denominator", "numerator"]


def builtin_resources() -> list[dict[str, Any]]:
    """The Measure the quarterly reports follow and the CodeSystem of their codes."""
    concepts = {**MEASURE_GROUPS, **OTHER_CONCEPTS}
    code_system = {
        "resourceType": "CodeSystem", "id": "quality-control", "url": model.QUALITY_CONTROL,
        "version": "0.1.0", "name": "QualityControl", "title": "Telemedicine quality control",
        "status": "active", "experimental": False, "date": "2025-07-01",
        "publisher": "Consilium", "description": "The statistics of the quarterly quality "
        "report, the panel's grade and the rectification flag (Inner Mongolia rules A6).",
        "caseSensitive": True, "content": "complete", "count": len(concepts),
        "concept": [{"code": c, "display": d, "definition": text}
                    for c, (d, text) in concepts.items()],
    }
    measure = {
        "resourceType": "Measure", "id": "telemedicine-quality", "url": model.QUALITY_MEASURE,
        "version": "0.1.0", "name": "TelemedicineQuality",
        "title": "Quarterly telemedicine quality statistics", "status": "active",
        "experimental": False, "date": "2025-07-01", "publisher": "Consilium",
        "description": "What the quality-control centre reviews each quarter for an "
        "organisation: volumes, acceptance and decline, deadline compliance, referral rate and "
        "satisfaction, over the consultations requested in the quarter.",
        "purpose": "Inner Mongolia telemedicine rules A6 三(二): quarterly evaluation from the "
        "platform's statistics.",
        "group": [_measure_group(c, d, text, _populations_of(c))
                  for c, (d, text) in MEASURE_GROUPS.items()],
    }
    return [code_system, measure]


# -- $quality -------------------------------------------------------------------------------------

def _organization(tx: Transaction, org_id: str) -> dict[str, Any]:
    org = read(tx, "Organization", org_id)
    if org is None:
        raise not_found("Organization", org_id)
    return org


async def quality(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """``Organization/[id]/$quality?period=YYYY-Qn``: the quarter's statistics as a
    MeasureReport (computed, not stored). The caller may read Organization and MeasureReport."""
    org_id = req.id
    assert org_id
    require(req.principal, "Organization", "r")
    require(req.principal, "MeasureReport", "r")
    quarter = Quarter.parse(first(inputs(req, {"period": "string"}), "period"))
    now = req.context.clock.now()

    def run(tx: Transaction) -> dict[str, Any]:
        system = unguarded(tx)
        org = _organization(system, org_id)
        period = quarter.bounds(model.zone(org))
        return measure_report(org, quarter, figures(system, org_id, period, now), now)

    return FhirResponse(200, resource=await store_.run(run))


# -- $grade ---------------------------------------------------------------------------------------

GRADE_INPUTS = {"period": "string", "grade": "code", "note": "string", "evaluator": "Reference"}


def _identifier(system: str, org_id: str, quarter: Quarter) -> dict[str, str]:
    """One grade (or flag) per organisation and quarter. No ``|`` in the value: a token
    search would read it as the system's end."""
    return {"system": system, "value": f"Organization/{org_id}/{quarter}"}


def _find(tx: Transaction, type_: str, ident: dict[str, str]) -> dict[str, Any] | None:
    found = search(tx, type_, [("identifier", f"{ident['system']}|{ident['value']}")])
    return found[0] if found else None


def grade_of(tx: Transaction, org_id: str, quarter: Quarter) -> str | None:
    obs = _find(tx, "Observation", _identifier(GRADE_ID, org_id, quarter))
    if obs is None or obs.get("status") == "entered-in-error":
        return None
    codes = model.codes(obs.get("valueCodeableConcept"), model.QUALITY_GRADE)
    return codes[0] if codes else None


def _evaluator(tx: Transaction, req: FhirRequest, given: dict[str, Any] | None) -> \
        dict[str, Any] | None:
    """Who graded: the evaluator given, else the grading organisation the caller acts for,
    else the caller itself."""
    principal = req.principal
    if not principal.backend:
        grading = authorities(tx, acting_organizations(tx, principal), GRADING_TYPES)
        if not grading:
            raise FhirError(403, "forbidden", "[quality-grade] only the quality-control centre "
                            "or the health administration records grades")
        if given is None:
            return {"reference": f"Organization/{grading[0]}"}
    if given is not None:
        return {"reference": given.get("reference")} if given.get("reference") else None
    user = principal.fhir_user or ""
    return {"reference": user} if user.split("/")[0] in ("Practitioner",
                                                         "PractitionerRole") else None


def grade_observation(org_id: str, quarter: Quarter, grade: str, note: str | None,
                      evaluator: dict[str, Any] | None, now: datetime,
                      existing: dict[str, Any] | None) -> dict[str, Any]:
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "id": existing["id"] if existing else new_id(),
        "identifier": [_identifier(GRADE_ID, org_id, quarter)],
        "status": "amended" if existing else "final",
        "code": concept(model.QUALITY_CONTROL, "quality-grade",
                        OTHER_CONCEPTS["quality-grade"][0]),
        "focus": [{"reference": f"Organization/{org_id}"}],
        "effectivePeriod": quarter.period(),
        "issued": model.fhir_instant(now),
        "valueCodeableConcept": concept(model.QUALITY_GRADE, grade),
    }
    if evaluator:
        obs["performer"] = [evaluator]
    if note:
        obs["note"] = [{"text": note, "time": model.fhir_instant(now)}]
    return obs


def rectification_deadline(second: Quarter, now: datetime, zone: ZoneInfo) -> date:
    """The last day of the quarter after the second unqualified one; if that day is over,
    the last day of the quarter after the current one."""
    deadline = second.shift(1).last_day
    if deadline < now.astimezone(zone).date():
        deadline = Quarter.containing(now, zone).shift(1).last_day
    return deadline


def _flag(org_id: str, pair: tuple[Quarter, Quarter], deadline: date, now: datetime,
          author: dict[str, Any] | None, existing: dict[str, Any] | None) -> dict[str, Any]:
    text = (f"Rectification required: graded unqualified in {pair[0]} and {pair[1]}; "
            f"rectify by {deadline.isoformat()}")
    flag: dict[str, Any] = {
        "resourceType": "Flag", "id": existing["id"] if existing else new_id(),
        "identifier": [_identifier(RECTIFICATION_ID, org_id, pair[1])],
        "status": "active",
        "category": [concept(FLAG_CATEGORY, "admin")],
        "code": {**concept(model.QUALITY_CONTROL, "rectification",
                           OTHER_CONCEPTS["rectification"][0]), "text": text},
        "subject": {"reference": f"Organization/{org_id}"},
        "period": {"start": model.fhir_instant(now), "end": deadline.isoformat()},
    }
    if author and (author.get("reference") or "").split("/")[0] in (
            "Organization", "Practitioner", "PractitionerRole"):
        flag["author"] = author
    return flag


def _flags(tx: Transaction, req: FhirRequest, org: dict[str, Any], quarter: Quarter,
           author: dict[str, Any] | None, now: datetime) -> list[Version]:
    """Raise or withdraw the rectification Flags of the pairs of quarters around ``quarter``."""
    if OPERATOR not in organization_types(org):
        return []
    system, written = unguarded(tx), []
    org_id = org["id"]
    for pair in ((quarter.shift(-1), quarter), (quarter, quarter.shift(1))):
        both = all(grade_of(system, org_id, q) == UNQUALIFIED for q in pair)
        existing = _find(system, "Flag", _identifier(RECTIFICATION_ID, org_id, pair[1]))
        if both and (existing is None or existing.get("status") != "active"):
            deadline = rectification_deadline(pair[1], now, model.zone(org))
            flag = _flag(org_id, pair, deadline, now, author, existing)
        elif not both and existing is not None and existing.get("status") == "active":
            flag = {**existing, "status": "entered-in-error"}
        else:
            continue
        written.append(store(system, req.context, req.principal, "Flag", flag["id"], flag,
                             prepare(flag, "Flag"), "PUT" if existing else "POST",
                             system.read("Flag", flag["id"])))
    return written


async def grade(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """``Organization/[id]/$grade`` (period YYYY-Qn, grade, note?, evaluator?): record the
    panel's grade for the quarter; returns the grade Observation."""
    org_id = req.id
    assert org_id
    values = inputs(req, GRADE_INPUTS)
    quarter = Quarter.parse(first(values, "period"))
    code = first(values, "grade")
    if code not in GRADES:
        raise invalid(f"grade is one of {', '.join(GRADES)} (quality-grade), not {code!r}",
                      "grade")
    note, given = first(values, "note"), first(values, "evaluator")
    now = req.context.clock.now()

    def run(tx: Transaction) -> tuple[Version, bool]:
        system = unguarded(tx)
        org = _organization(system, org_id)
        evaluator = _evaluator(system, req, given)
        existing = _find(system, "Observation", _identifier(GRADE_ID, org_id, quarter))
        obs = grade_observation(org_id, quarter, code, note, evaluator, now, existing)
        current = tx.read("Observation", obs["id"])
        version = store(tx, req.context, req.principal, "Observation", obs["id"], obs,
                        prepare(obs, "Observation"), "PUT" if existing else "POST", current)
        flags = _flags(tx, req, org, quarter, evaluator, now)
        text = f"quality grade {code} for {quarter}" + (
            f"; rectification flag {', '.join(f.id for f in flags)}" if flags else "")
        record = provenance([version, *flags], req.principal, now,
                            [data_operation("PUT" if existing else "POST")], text, note)
        store(system, req.context, req.principal, "Provenance", new_id(), record,
              prepare(record, "Provenance"), "POST", None)
        return version, existing is None

    version, created = await store_.run(run)
    return FhirResponse(201 if created else 200, version=version, location=created)


def _definition(name: str) -> str:
    return f"{model.BASE}/OperationDefinition/{name}"


OPERATIONS: tuple[Operation, ...] = (
    Operation("quality", _definition("Organization-quality"), frozenset({"instance"}), quality,
              "The quarter's quality statistics of an organisation (MeasureReport)",
              ("GET", "POST"), ("Organization",), parameters=(
                  ("period", "in", 1, "1", "string", "The quarter, e.g. 2026-Q3"),
                  ("return", "out", 1, "1", "MeasureReport", "The quarter's statistics"))),
    Operation("grade", _definition("Organization-grade"), frozenset({"instance"}), grade,
              "Record the evaluation panel's quality grade of an organisation for a quarter",
              ("POST",), ("Organization",), parameters=(
                  ("period", "in", 1, "1", "string", "The quarter graded, e.g. 2026-Q3"),
                  ("grade", "in", 1, "1", "code", "excellent, qualified or unqualified"),
                  ("note", "in", 0, "1", "string", "The panel's remarks"),
                  ("evaluator", "in", 0, "1", "Reference", "Who graded (default: the caller's "
                   "organisation)"),
                  ("return", "out", 1, "1", "Observation", "The grade recorded"))),
)

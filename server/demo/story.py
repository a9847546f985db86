"""What happened in the demo network over the last week, as the FHIR requests that made it happen.

Each :class:`Event` is one request by one person (a PractitionerRole id; None is the loader, a
backend client) at one moment. The moments are laid out relative to the time the demo is loaded,
so that requests were filed days ago, sessions held on the experts' duty rosters, and some steps
are overdue now. The loader replays the events in time order with the server's clock set to each
moment.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from server.demo import network as net
from server.demo.network import SHANGHAI, TEHRAN, coding, concept, ref
from server.workflow import model

#: Duty blocks of the experts' rosters (local time of their organisation); a session takes the
#: hour from half past the block's start.
DUTY_BLOCKS = ((time(9), time(12)), (time(14), time(17)))
#: Rosters run from a week before the load to five weeks after it.
ROSTER_DAYS = range(-7, 36)


@dataclass(frozen=True)
class Event:
    at: datetime
    actor: str | None  # PractitionerRole id, or None: the loader (system scope)
    method: str
    path: str  # relative to the FHIR base; "{task:SR}" stands for the Task of ServiceRequest SR
    body: Any = None
    label: str = ""


@dataclass(frozen=True)
class Timeline:
    """Moments relative to ``now`` (when the demo is loaded)."""

    now: datetime

    def today(self, zone: str = SHANGHAI) -> date:
        return self.now.astimezone(ZoneInfo(zone)).date()

    def at(self, days_ago: int, hhmm: str, zone: str = SHANGHAI) -> datetime:
        """``hhmm`` local time, ``days_ago`` days before today (at least 1: always past)."""
        assert days_ago >= 1
        hour, minute = (int(x) for x in hhmm.split(":"))
        return datetime.combine(self.today(zone) - timedelta(days=days_ago), time(hour, minute),
                                ZoneInfo(zone))

    def ago(self, **delta: float) -> datetime:
        return self.now - timedelta(**delta)

    def session(self, day: int, block: int, zone: str = SHANGHAI) -> tuple[datetime, datetime]:
        """The session hour in duty block ``block`` of the day ``day`` days from today."""
        start = datetime.combine(self.today(zone) + timedelta(days=day), DUTY_BLOCKS[block][0],
                                 ZoneInfo(zone)) + timedelta(minutes=30)
        return start, start + timedelta(hours=1)

    def last_session(self, zone: str = SHANGHAI) -> tuple[datetime, datetime]:
        """The latest session hour that began at least 20 minutes ago."""
        for day in (0, -1):
            for block in (1, 0):
                start, end = self.session(day, block, zone)
                if start <= self.now - timedelta(minutes=20):
                    return start, end
        raise AssertionError("yesterday's afternoon session is always past")


# -- the consultations ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Consultation:
    id: str  # the ServiceRequest's and its Task's id
    patient: str
    requester: str  # the attending physician's PractitionerRole
    approver: str  # the department head's
    invited: str  # Organization
    specialty: str
    purpose: str
    reason: str  # consultation-reason
    category: str = "teleconsultation"
    priority: str = "routine"
    channel: str = "platform"
    title: str = "associate-senior"  # the professional title asked for
    papers_later: bool = False  # urgent by phone: records follow within 24 h

    @property
    def zone(self) -> str:
        return net.ZONES[self.invited]


def service_request(c: Consultation, status: str, suggested: datetime) -> dict[str, Any]:
    sr: dict[str, Any] = {
        "resourceType": "ServiceRequest", "id": c.id,
        "meta": {"profile": [model.CONSULTATION_REQUEST]},
        "extension": [
            {"url": model.EXT_APPROVED_BY, "valueReference": ref("PractitionerRole", c.approver)},
            {"url": model.EXT_REQUESTED_TITLE,
             "valueCoding": coding(model.PROFESSIONAL_TITLE, c.title)},
            {"url": model.EXT_REQUEST_CHANNEL,
             "valueCoding": coding(model.REQUEST_CHANNEL, c.channel)}],
        "status": status, "intent": "order", "priority": c.priority,
        "category": [concept(model.CONSULTATION_TYPE, c.category)],
        "code": {"text": c.purpose}, "subject": ref("Patient", c.patient),
        "occurrenceDateTime": model.fhir_instant(suggested),
        "requester": ref("PractitionerRole", c.requester),
        "performer": [ref("Organization", c.invited)],
        "performerType": concept(model.SPECIALTY, c.specialty),
        "reasonCode": [concept(model.CONSULTATION_REASON, c.reason)]}
    if not c.papers_later:  # else the records follow within 24 h (IM A1 二(一))
        sr["supportingInfo"] = [ref("DocumentReference", f"records-{c.patient}")]
    return sr


def consultation_task(c: Consultation, at: datetime) -> dict[str, Any]:
    """The Task, with the request's id, before the request is filed (see :func:`file`)."""
    return {
        "resourceType": "Task", "id": c.id, "meta": {"profile": [model.CONSULTATION_TASK]},
        "status": "requested", "intent": "order", "priority": c.priority,
        "code": concept(model.CONSULTATION_TYPE, c.category),
        "focus": ref("ServiceRequest", c.id), "basedOn": [ref("ServiceRequest", c.id)],
        "for": ref("Patient", c.patient), "description": c.purpose,
        "authoredOn": model.fhir_instant(at),
        "requester": ref("PractitionerRole", c.requester),
        "owner": ref("Organization", c.invited)}


def second(at: datetime, n: int) -> datetime:
    return at + timedelta(seconds=n)


def file(c: Consultation, at: datetime) -> list[Event]:
    """The attending physician drafts the request; the platform opens its Task under the same
    id (a readable id for the examples: the server would otherwise make one up when the
    request is filed); then the physician files it, and every filing rule runs."""
    suggested = at + timedelta(days=1)
    return [
        Event(at, c.requester, "PUT", f"ServiceRequest/{c.id}",
              service_request(c, "draft", suggested), f"draft {c.id}"),
        Event(second(at, 1), None, "PUT", f"Task/{c.id}", consultation_task(c, at)),
        Event(second(at, 2), c.requester, "PUT", f"ServiceRequest/{c.id}",
              service_request(c, "active", suggested), f"file {c.id}")]


def parameters(**values: Any) -> dict[str, Any]:
    """A Parameters body: str -> valueString, datetime -> valueDateTime, ("Type", id) ->
    valueReference, dict -> valueCodeableConcept."""
    out: list[dict[str, Any]] = []
    for name, value in values.items():
        if isinstance(value, datetime):
            out.append({"name": name, "valueDateTime": model.fhir_instant(value)})
        elif isinstance(value, tuple):
            out.append({"name": name, "valueReference": ref(*value)})
        elif isinstance(value, dict):
            out.append({"name": name, "valueCodeableConcept": value})
        else:
            out.append({"name": name, "valueString": value})
    return {"resourceType": "Parameters", "parameter": out}


def op(task: str, name: str, at: datetime, actor: str, **values: Any) -> Event:
    body = parameters(**values) if values else None
    return Event(at, actor, "POST", f"Task/{task}/${name}", body, f"{name} {task}")


def receive(task: str, at: datetime, actor: str) -> Event:
    """A plain update: the invited side marks the request received."""
    return Event(at, actor, "PATCH", f"Task/{task}",
                 [{"op": "replace", "path": "/status", "value": "received"}], f"receive {task}")


@dataclass(frozen=True)
class Report:
    conclusion: str
    code: str = "Teleconsultation report"


def report_events(c: Consultation, expert: str, r: Report, at: datetime) -> list[Event]:
    """The expert writes the final report, signs it, and completes the consultation."""
    report_id = f"report-{c.id.removeprefix('consult-')}"
    report = {
        "resourceType": "DiagnosticReport", "id": report_id,
        "meta": {"profile": [model.CONSULTATION_REPORT]}, "status": "final",
        "basedOn": [ref("ServiceRequest", c.id)],
        "category": [concept(model.CONSULTATION_TYPE, c.category)],
        "code": {"text": r.code}, "subject": ref("Patient", c.patient),
        "issued": model.fhir_instant(at), "performer": [ref("PractitionerRole", expert)],
        "conclusion": r.conclusion}
    return [
        Event(at, expert, "PUT", f"DiagnosticReport/{report_id}", report, f"report {c.id}"),
        Event(second(at, 300), expert, "POST", f"DiagnosticReport/{report_id}/$sign", None,
              f"sign {report_id}"),
        op(c.id, "complete", second(at, 600), expert, report=("DiagnosticReport", report_id))]


def rating(c: Consultation, at: datetime, scores: tuple[int, int, int], comment: str,
           ) -> list[Event]:
    """The inviting side rates the consultation; the Task records that it was rated."""
    items: list[dict[str, Any]] = [
        {"linkId": link, "answer": [{"valueInteger": score}]}
        for link, score in zip(("overall", "timeliness", "quality"), scores, strict=True)]
    if comment:
        items.append({"linkId": "comment", "answer": [{"valueString": comment}]})
    qr = {"resourceType": "QuestionnaireResponse", "id": f"rating-{c.id.removeprefix('consult-')}",
          "meta": {"profile": [model.SATISFACTION_RATING]},
          "questionnaire": model.SATISFACTION_QUESTIONNAIRE, "status": "completed",
          "basedOn": [ref("ServiceRequest", c.id)], "subject": ref("Task", c.id),
          "authored": model.fhir_instant(at), "author": ref("PractitionerRole", c.requester),
          "item": items}
    rated = {"coding": [coding(model.BUSINESS_STATUS, "rated")]}
    return [Event(at, c.requester, "PUT", f"QuestionnaireResponse/{qr['id']}", qr,
                  f"rate {c.id}"),
            Event(second(at, 60), c.requester, "PATCH", f"Task/{c.id}",
                  [{"op": "replace", "path": "/businessStatus", "value": rated}])]


def decline_reason(code: str) -> dict[str, Any]:
    return concept(model.DECLINE_REASON, code)


def cancel_reason(code: str) -> dict[str, Any]:
    return concept(model.CANCEL_REASON, code)


def consultations(t: Timeline) -> tuple[list[Consultation], list[Event]]:
    C = Consultation  # noqa: N806 (a short name for a table)
    requested = C("consult-requested", "wang-xiuying", "attending-wuchuan", "head-wuchuan",
                  "regional-centre", "cardiology", "胸痛原因不明：请心内科专家明确诊断并给出治疗建议 "
                  "(chest pain of unclear cause: diagnosis and treatment advice)",
                  "inpatient-undiagnosed")
    urgent = C("consult-urgent", "bayar", "gp-kekeyiligeng", "head-kekeyiligeng",
               "regional-centre", "pulmonology", "重症肺炎，血氧下降：请呼吸科紧急会诊 "
               "(severe pneumonia, falling oxygen saturation)", "sudden-deterioration",
               priority="urgent")
    phone = C("consult-phone", "sarnai", "gp-chasuqi", "head-chasuqi", "regional-centre",
              "paediatrics", "患儿高热惊厥：电话申请急会诊，资料随后补交 (febrile seizure in a "
              "child; urgent request by phone, records to follow)", "sudden-deterioration",
              priority="urgent", channel="phone", papers_later=True)
    accepted = C("consult-accepted", "li-wei", "attending-tumed", "head-tumed", "regional-centre",
                 "neurology", "急性脑梗死溶栓后：评估二级预防方案 (after thrombolysis for acute "
                 "ischaemic stroke: secondary prevention)", "cross-specialty-complication")
    clarification = C("consult-clarification", "zhang-guilan", "attending-wuchuan",
                      "head-wuchuan", "regional-centre", "oncology", "胃窦病变性质待定：请肿瘤科会诊 "
                      "(gastric lesion of unknown nature)", "inpatient-undiagnosed")
    scheduled = C("consult-scheduled", "hu-jun", "attending-wuchuan", "head-wuchuan",
                  "regional-centre", "cardiology", "频发室性早搏：是否需要射频消融 (frequent "
                  "ventricular ectopy: ablation or not)", "difficult-outpatient")
    in_progress = C("consult-in-progress", "tumen", "attending-tumed", "head-tumed",
                    "regional-centre", "neurology", "住院5天头晕未确诊 (dizziness and ataxia, "
                    "undiagnosed after 5 days in hospital)", "inpatient-undiagnosed")
    completed = C("consult-completed", "liu-shulan", "attending-wuchuan", "head-wuchuan",
                  "regional-centre", "cardiology", "支架术后胸痛复发 (recurrent chest pain after "
                  "coronary stenting)", "inpatient-undiagnosed")
    imaging = C("consult-imaging", "zhao-min", "attending-tumed", "head-tumed",
                "regional-centre", "radiology", "右肺上叶结节：远程影像诊断 (right upper lobe "
                "nodule: remote reading of the chest CT)", "diagnostic-collaboration",
                category="remote-imaging")
    rejected = C("consult-rejected", "han-mei", "gp-kekeyiligeng", "head-kekeyiligeng",
                 "regional-centre", "neurology", "反复头痛：门诊疑难病例 (recurrent headache, "
                 "difficult outpatient)", "difficult-outpatient")
    cancelled = C("consult-cancelled", "ma-jun", "attending-tumed", "head-tumed",
                  "regional-centre", "pulmonology", "慢阻肺急性加重 (exacerbation of COPD)",
                  "chronic-disease-follow-up")
    overdue = C("consult-overdue", "gao-feng", "attending-wuchuan", "head-wuchuan",
                "regional-centre", "pulmonology", "咯血伴肺空洞 (haemoptysis with a cavitating "
                "lesion)", "inpatient-undiagnosed")
    tehran_done = C("consult-tehran-completed", "akbari", "gp-rey", "head-rey", "tehran-hospital",
                    "infectious-disease", "مشاوره درمان کووید-۱۹ با درگیری دوطرفه ریه (COVID-19 "
                    "with bilateral lung involvement: treatment advice)", "covid-19-care")
    tehran_new = C("consult-tehran-requested", "rezaei", "gp-rey", "head-rey", "tehran-hospital",
                   "cardiology", "درد قفسه سینه فعالیتی: ارزیابی تخصصی قلب (exertional chest "
                   "pain: cardiology assessment)", "no-local-specialist")
    coordinator, tehran = "coordinator-regional", "coordinator-tehran"
    T = TEHRAN  # noqa: N806
    ev: list[Event] = []
    ev += file(requested, t.ago(minutes=90))
    ev += file(urgent, t.ago(hours=6))
    ev += file(phone, t.at(2, "16:40"))
    ev.append(receive(phone.id, t.at(2, "16:55"), coordinator))
    ev += file(accepted, t.at(1, "10:05"))
    ev += [receive(accepted.id, t.at(1, "10:20"), coordinator),
           op(accepted.id, "accept", t.at(1, "10:30"), coordinator),
           op(accepted.id, "assign", t.at(1, "10:40"), coordinator,
              expert=("PractitionerRole", "expert-neurology"))]
    ev += file(clarification, t.at(2, "09:20"))
    ev += [op(clarification.id, "accept", t.at(2, "09:50"), coordinator),
           op(clarification.id, "ask", t.at(2, "10:05"), coordinator,
              question="请补充最近的胃镜病理报告和腹部增强CT。(Please send the latest gastroscopy "
                       "pathology report and the contrast CT of the abdomen.)")]
    start, end = t.session(1, 1)
    ev += file(scheduled, t.at(1, "09:00"))
    ev += [op(scheduled.id, "accept", t.at(1, "09:30"), coordinator),
           op(scheduled.id, "assign", t.at(1, "09:40"), coordinator,
              expert=("PractitionerRole", "expert-cardiology-2")),
           op(scheduled.id, "schedule", t.at(1, "10:00"), coordinator, start=start, end=end)]
    start, end = t.last_session()
    ev += file(in_progress, t.at(3, "09:10"))
    ev += [receive(in_progress.id, t.at(3, "09:30"), coordinator),
           op(in_progress.id, "accept", t.at(3, "09:40"), coordinator),
           op(in_progress.id, "assign", t.at(3, "09:50"), coordinator,
              expert=("PractitionerRole", "expert-neurology")),
           op(in_progress.id, "schedule", t.at(3, "10:00"), coordinator, start=start, end=end),
           op(in_progress.id, "start", start + timedelta(minutes=2), "expert-neurology")]
    start, end = t.session(-4, 0)
    ev += file(completed, t.at(5, "09:30"))
    ev += [receive(completed.id, t.at(5, "09:45"), coordinator),
           op(completed.id, "accept", t.at(5, "10:00"), coordinator),
           op(completed.id, "assign", t.at(5, "10:10"), coordinator,
              expert=("PractitionerRole", "expert-cardiology")),
           op(completed.id, "schedule", t.at(5, "10:20"), coordinator, start=start, end=end),
           op(completed.id, "start", start, "expert-cardiology")]
    ev += report_events(completed, "expert-cardiology", Report(
        "支架内再狭窄可能性大，建议复查冠脉造影；继续双联抗血小板治疗。(In-stent restenosis likely: "
        "repeat coronary angiography; continue dual antiplatelet therapy.)"), end + timedelta(
        minutes=5))
    ev += rating(completed, t.at(4, "16:00"), (5, 5, 4), "专家意见明确，报告及时。")
    start, end = t.session(-2, 0)
    ev += file(imaging, t.at(3, "14:10"))
    ev += [op(imaging.id, "accept", t.at(3, "14:30"), coordinator),
           op(imaging.id, "assign", t.at(3, "14:40"), coordinator,
              expert=("PractitionerRole", "expert-radiology")),
           op(imaging.id, "schedule", t.at(3, "15:00"), coordinator, start=start, end=end),
           op(imaging.id, "start", start, "expert-radiology")]
    ev += report_events(imaging, "expert-radiology", Report(
        "右肺上叶混合磨玻璃结节12mm，Lung-RADS 4A，建议3个月后复查薄层CT。(12 mm part-solid "
        "nodule, Lung-RADS 4A: thin-section CT in 3 months.)", "Remote imaging report"),
        end + timedelta(minutes=5))
    ev += rating(imaging, t.at(1, "09:00"), (4, 5, 4), "")
    ev += file(rejected, t.at(3, "11:00"))
    ev += [receive(rejected.id, t.at(3, "11:30"), coordinator),
           op(rejected.id, "decline", t.at(3, "11:45"), coordinator,
              reason=decline_reason("records-not-acceptable"),
              note="头颅影像资料无法读取，请重新上传DICOM原始图像。(The head images cannot be read: "
                   "please upload the original DICOM images.)")]
    start, end = t.session(-2, 1)
    ev += file(cancelled, t.at(4, "10:00"))
    ev += [op(cancelled.id, "accept", t.at(4, "10:30"), coordinator),
           op(cancelled.id, "assign", t.at(4, "10:40"), coordinator,
              expert=("PractitionerRole", "expert-pulmonology")),
           op(cancelled.id, "schedule", t.at(4, "11:00"), coordinator, start=start, end=end),
           op(cancelled.id, "cancel", t.at(3, "09:00"), cancelled.requester,
              reason=cancel_reason("patient-improved"), note="患者病情好转，取消会诊。")]
    ev += file(overdue, t.at(4, "14:30"))
    ev += [op(overdue.id, "accept", t.at(4, "16:00"), coordinator),
           op(overdue.id, "assign", t.at(4, "16:10"), coordinator,
              expert=("PractitionerRole", "expert-pulmonology"))]
    start, end = t.session(-5, 0, T)
    ev += file(tehran_done, t.at(6, "09:00", T))
    ev += [op(tehran_done.id, "accept", t.at(6, "09:30", T), tehran),
           op(tehran_done.id, "assign", t.at(6, "09:40", T), tehran,
              expert=("PractitionerRole", "expert-tehran-infectious")),
           op(tehran_done.id, "schedule", t.at(6, "10:00", T), tehran, start=start, end=end),
           op(tehran_done.id, "start", start, "expert-tehran-infectious")]
    ev += report_events(tehran_done, "expert-tehran-infectious", Report(
        "پنومونی کووید-۱۹ با شدت متوسط؛ ادامه اکسیژن‌درمانی و دگزامتازون ۶ میلی‌گرم روزانه، پایش "
        "اشباع اکسیژن هر ۴ ساعت. (Moderate COVID-19 pneumonia: continue oxygen and dexamethasone "
        "6 mg daily; check oxygen saturation every 4 hours.)", "گزارش مشاوره از راه دور"),
        end + timedelta(minutes=5))
    ev += rating(tehran_done, t.at(5, "14:00", T), (5, 4, 5), "مشاوره بسیار مفید بود.")
    ev += file(tehran_new, t.ago(hours=3))
    every = [requested, urgent, phone, accepted, clarification, scheduled, in_progress,
             completed, imaging, rejected, cancelled, overdue, tehran_done, tehran_new]
    return every, ev


# -- the referrals --------------------------------------------------------------------------------

@dataclass(frozen=True)
class Referral:
    id: str
    patient: str
    sender: str  # PractitionerRole
    receiver: str  # Organization
    direction: str
    indication: str
    purpose: str
    papers: tuple[str, ...] = field(default=())  # further supportingInfo (Type/id)


def referral_request(r: Referral) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest", "id": r.id,
        "meta": {"profile": [model.REFERRAL_REQUEST]},
        "extension": [{"url": model.EXT_REFERRAL_DIRECTION, "valueCode": r.direction}],
        "status": "active", "intent": "order", "priority": "urgent",
        "category": [concept(model.CONSULTATION_TYPE, "referral")],
        "code": {"text": r.purpose}, "subject": ref("Patient", r.patient),
        "requester": ref("PractitionerRole", r.sender),
        "performer": [ref("Organization", r.receiver)],
        "reasonCode": [concept(model.REFERRAL_INDICATION, r.indication)],
        "supportingInfo": [ref("Consent", f"referral-consent-{r.patient}")]
        + [{"reference": p} for p in r.papers]}


def referral_step(r: Referral, name: str, at: datetime, actor: str) -> Event:
    return Event(at, actor, "POST", f"{{task:{r.id}}}/${name}", None, f"{name} {r.id}")


def referrals(t: Timeline) -> tuple[list[Referral], list[Event]]:
    up_new = Referral("referral-up-requested", "bayar", "gp-kekeyiligeng", "wuchuan-county", "up",
                      "critical-emergency", "重症肺炎上转县医院 (severe pneumonia: up to the "
                      "county hospital)")
    up_done = Referral("referral-up-completed", "wulan", "attending-wuchuan", "regional-centre",
                       "up", "complex-high-risk", "冠脉三支病变，高危：上转自治区中心 (three-vessel "
                       "coronary disease, high risk: up to the regional centre)")
    papers = tuple(f"{p['resourceType']}/{p['id']}"
                   for p in net.down_referral_papers("aodeng", "head-regional"))
    down = Referral("referral-down-in-progress", "aodeng", "head-regional", "chasuqi-township",
                    "down", "rehabilitation", "脑梗死后病情稳定：下转乡镇卫生院康复 (stable after "
                    "stroke: down to the township centre for rehabilitation)", papers)
    tehran = Referral("referral-tehran-up", "akbari", "gp-rey", "tehran-hospital", "up",
                      "undiagnosed-after-teleconsultation", "ارجاع به بیمارستان پس از مشاوره از "
                      "راه دور (referred to hospital after the teleconsultation)")
    T = TEHRAN  # noqa: N806
    ev = [Event(t.ago(hours=2), up_new.sender, "PUT", f"ServiceRequest/{up_new.id}",
                referral_request(up_new), f"refer {up_new.id}")]
    ev.append(Event(t.at(6, "10:00"), up_done.sender, "PUT", f"ServiceRequest/{up_done.id}",
                    referral_request(up_done), f"refer {up_done.id}"))
    ev += [referral_step(up_done, "confirm", t.at(6, "11:00"), "coordinator-regional"),
           referral_step(up_done, "confirm", t.at(6, "11:10"), up_done.sender),
           referral_step(up_done, "transfer-out", t.at(6, "14:00"), up_done.sender),
           referral_step(up_done, "transfer-in", t.at(6, "17:30"), "coordinator-regional")]
    ev.append(Event(t.at(2, "09:00"), down.sender, "PUT", f"ServiceRequest/{down.id}",
                    referral_request(down), f"refer {down.id}"))
    ev += [referral_step(down, "confirm", t.at(2, "09:05"), down.sender),
           referral_step(down, "confirm", t.at(2, "15:00"), "gp-chasuqi"),
           referral_step(down, "transfer-out", t.at(1, "09:00"), down.sender)]
    ev.append(Event(t.at(4, "11:00", T), tehran.sender, "PUT", f"ServiceRequest/{tehran.id}",
                    referral_request(tehran), f"refer {tehran.id}"))
    ev.append(referral_step(tehran, "confirm", t.at(4, "12:00", T), "coordinator-tehran"))
    return [up_new, up_done, down, tehran], ev


#: Patients with a referral consent, and who gave it (default: the patient).
REFERRAL_CONSENTS = {"bayar": None, "wulan": None, "aodeng": "RelatedPerson/guardian-aodeng",
                     "akbari": None}
#: Prepaid balances deposited at the start (the township centres rely on later top-ups).
DEPOSITS = {"wuchuan-county": 2000, "tumed-county": 300, "rey-health-centre": 5_000_000}

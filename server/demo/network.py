"""The demo network as data: organisations at three levels of care in Inner Mongolia and Tehran,
the people who work there, the patients and their consents and records.

Names are written as the people and institutions write them — Chinese (and Mongolian names in
Chinese script) in Inner Mongolia, Persian in Tehran — with an English alias or a Latin
transcription beside them. Ids are stable and readable, so that examples can name them.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

from server.workflow import model

SHANGHAI = "Asia/Shanghai"
TEHRAN = "Asia/Tehran"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ROLE_CODE = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"


def coding(system: str, code: str) -> dict[str, Any]:
    return {"system": system, "code": code}


def concept(system: str, code: str, text: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"coding": [coding(system, code)]}
    if text:
        out["text"] = text
    return out


def ref(type_: str, id_: str) -> dict[str, str]:
    return {"reference": f"{type_}/{id_}"}


# -- organisations ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Org:
    id: str
    name: str  # as the organisation writes it
    alias: str  # in English
    type: str  # organization-type
    level: str  # care-level
    region: str  # ISO 3166-2
    zone: str
    service: str  # service-level
    specialties: tuple[str, ...]
    part_of: str | None = None
    currency: str | None = None  # the prepaid account of an inviting organisation


ORGS = (
    Org("regional-centre", "内蒙古自治区远程医学中心", "Inner Mongolia Regional Telemedicine Centre",
        "regional-telemedicine-centre", "3", "CN-NM", SHANGHAI, "advanced",
        ("cardiology", "neurology", "pulmonology", "oncology", "paediatrics", "radiology",
         "surgery", "rehabilitation-medicine")),
    Org("wuchuan-county", "武川县医院", "Wuchuan County Hospital", "network-hospital", "2", "CN-NM",
        SHANGHAI, "standard", ("cardiology", "oncology", "pulmonology", "radiology", "surgery",
                               "rehabilitation-medicine"), currency="CNY"),
    Org("tumed-county", "土默特左旗医院", "Tumed Left Banner Hospital", "network-hospital", "2",
        "CN-NM", SHANGHAI, "standard", ("neurology", "pulmonology", "radiology"),
        currency="CNY"),
    Org("kekeyiligeng-township", "可可以力更镇卫生院", "Kekeyiligeng Township Health Centre",
        "network-hospital", "1", "CN-NM", SHANGHAI, "basic",
        ("general-practice", "pulmonology", "neurology"), "wuchuan-county", "CNY"),
    Org("chasuqi-township", "察素齐镇卫生院", "Chasuqi Township Health Centre", "network-hospital",
        "1", "CN-NM", SHANGHAI, "basic",
        ("general-practice", "paediatrics", "rehabilitation-medicine"), "tumed-county", "CNY"),
    Org("tehran-region", "ستاد پزشکی از راه دور کلان‌منطقه ده", "Macro-region 10 Telemedicine "
        "Headquarters (Tehran)", "macro-region-hq", "3", "IR-07", TEHRAN, "advanced", ()),
    Org("tehran-hospital", "بیمارستان امام خمینی تهران", "Imam Khomeini Hospital, Tehran",
        "network-hospital", "3", "IR-07", TEHRAN, "advanced",
        ("cardiology", "infectious-disease", "pulmonology")),
    Org("rey-health-centre", "مرکز جامع خدمات سلامت شهری ری", "Rey Urban Comprehensive Health "
        "Centre", "network-hospital", "1", "IR-07", TEHRAN, "basic",
        ("general-practice", "cardiology", "infectious-disease"), currency="IRR"),
)
ZONES = {o.id: o.zone for o in ORGS}


def organization(o: Org) -> dict[str, Any]:
    ext: list[dict[str, Any]] = [
        {"url": model.EXT_CARE_LEVEL, "valueCoding": coding(model.CARE_LEVEL, o.level)},
        {"url": model.EXT_REGION, "valueCode": o.region},
        {"url": model.EXT_TIMEZONE, "valueCode": o.zone},
        {"url": model.EXT_SERVICE_LEVEL, "valueCoding": coding(model.SERVICE_LEVEL, o.service)}]
    ext += [{"url": model.EXT_LICENSED_SPECIALTY,
             "valueCodeableConcept": concept(model.SPECIALTY, s)} for s in o.specialties]
    out: dict[str, Any] = {
        "resourceType": "Organization", "id": o.id,
        "meta": {"profile": [model.TELEMEDICINE_ORGANIZATION]}, "extension": ext,
        "active": True, "type": [concept(model.ORGANIZATION_TYPE, o.type)],
        "name": o.name, "alias": [o.alias]}
    if o.part_of:
        out["partOf"] = ref("Organization", o.part_of)
    return out


def account(o: Org) -> dict[str, Any]:
    """The prepaid account for consultation fees, opened empty (deposits fill it)."""
    return {"resourceType": "Account", "id": f"account-{o.id}", "status": "active",
            "name": f"Telemedicine prepaid account: {o.alias}",
            "subject": [ref("Organization", o.id)], "owner": ref("Organization", o.id),
            "extension": [{"url": model.EXT_PREPAID_BALANCE,
                           "valueMoney": {"value": 0, "currency": o.currency}}]}


# -- people -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Person:
    role: str  # PractitionerRole id; the Practitioner is "dr-" + the Latin name
    native: tuple[str, str]  # (family, given) as written at home ("" family: a single name)
    latin: tuple[str, str]
    gender: str
    org: str
    code: str  # practitioner-role
    specialty: str | None = None
    title: str | None = None  # professional-title
    licensed: str | None = None  # licensed-physician since
    specialty_since: str | None = None  # experts: clinical experience in the specialty
    nominated_by: str | None = None  # experts: who nominates (employer) and who approves
    approved_by: str | None = None

    @property
    def practitioner(self) -> str:
        return "dr-" + "-".join(p.lower() for p in self.latin if p)


def _expert(role: str, native: tuple[str, str], latin: tuple[str, str], gender: str, org: str,
            specialty: str, title: str, licensed: str, since: str, nominated_by: str,
            approved_by: str) -> Person:
    return Person(role, native, latin, gender, org, "expert", specialty, title, licensed, since,
                  nominated_by, approved_by)


PEOPLE = (
    # the regional centre: staff, a department head, and its experts
    Person("coordinator-regional", ("高", "娜"), ("Gao", "Na"), "female", "regional-centre",
           "telemedicine-centre-staff"),
    Person("head-regional", ("赵", "国强"), ("Zhao", "Guoqiang"), "male", "regional-centre",
           "department-head", "cardiology", "chief-physician", "1995-07-01"),
    _expert("expert-cardiology", ("", "巴特尔"), ("", "Bater"), "male", "regional-centre",
            "cardiology", "chief-physician", "1998-07-01", "2000-09-01", "head-regional",
            "coordinator-regional"),
    _expert("expert-cardiology-2", ("陈", "静"), ("Chen", "Jing"), "female", "regional-centre",
            "cardiology", "associate-chief-physician", "2008-07-01", "2010-03-01",
            "head-regional", "coordinator-regional"),
    _expert("expert-neurology", ("李", "明"), ("Li", "Ming"), "male", "regional-centre",
            "neurology", "chief-physician", "2001-07-01", "2003-09-01", "head-regional",
            "coordinator-regional"),
    _expert("expert-pulmonology", ("张", "丽"), ("Zhang", "Li"), "female", "regional-centre",
            "pulmonology", "associate-chief-physician", "2006-07-01", "2009-01-01",
            "head-regional", "coordinator-regional"),
    _expert("expert-radiology", ("王", "建国"), ("Wang", "Jianguo"), "male", "regional-centre",
            "radiology", "chief-physician", "1999-07-01", "1999-07-01", "head-regional",
            "coordinator-regional"),
    _expert("expert-paediatrics", ("", "乌云其其格"), ("", "Uyunqiqig"), "female",
            "regional-centre", "paediatrics", "associate-chief-physician", "2007-07-01",
            "2009-07-01", "head-regional", "coordinator-regional"),
    # nominated by the employer, not yet approved by the region
    _expert("expert-oncology", ("刘", "洋"), ("Liu", "Yang"), "male", "regional-centre",
            "oncology", "associate-chief-physician", "2009-07-01", "2012-07-01",
            "head-regional", ""),
    # inviting organisations: the attending physician who files, the head who approves
    Person("attending-wuchuan", ("孙", "浩"), ("Sun", "Hao"), "male", "wuchuan-county",
           "attending-physician", "cardiology", "attending-physician", "2012-07-01"),
    Person("head-wuchuan", ("周", "平"), ("Zhou", "Ping"), "female", "wuchuan-county",
           "department-head", "internal-medicine", "chief-physician", "1996-07-01"),
    Person("attending-tumed", ("", "其木格"), ("", "Qimuge"), "female", "tumed-county",
           "attending-physician", "neurology", "attending-physician", "2014-07-01"),
    Person("head-tumed", ("吴", "刚"), ("Wu", "Gang"), "male", "tumed-county",
           "department-head", "internal-medicine", "chief-physician", "1997-07-01"),
    Person("gp-kekeyiligeng", ("", "阿拉坦"), ("", "Altan"), "male", "kekeyiligeng-township",
           "attending-physician", "general-practice", "resident-physician", "2017-07-01"),
    Person("head-kekeyiligeng", ("马", "文"), ("Ma", "Wen"), "male", "kekeyiligeng-township",
           "department-head", "general-practice", "attending-physician", "2005-07-01"),
    Person("gp-chasuqi", ("", "苏和"), ("", "Suhe"), "male", "chasuqi-township",
           "attending-physician", "general-practice", "resident-physician", "2018-07-01"),
    Person("head-chasuqi", ("刘", "芳"), ("Liu", "Fang"), "female", "chasuqi-township",
           "department-head", "general-practice", "attending-physician", "2006-07-01"),
    # Tehran
    Person("officer-tehran-region", ("نوری", "فاطمه"), ("Nouri", "Fatemeh"), "female",
           "tehran-region", "telemedicine-station-officer"),
    Person("coordinator-tehran", ("احمدی", "سارا"), ("Ahmadi", "Sara"), "female",
           "tehran-hospital", "telemedicine-centre-staff"),
    _expert("expert-tehran-cardiology", ("محمدی", "علی"), ("Mohammadi", "Ali"), "male",
            "tehran-hospital", "cardiology", "chief-physician", "2002-09-23", "2005-09-23",
            "coordinator-tehran", "officer-tehran-region"),
    _expert("expert-tehran-infectious", ("حسینی", "مریم"), ("Hosseini", "Maryam"), "female",
            "tehran-hospital", "infectious-disease", "associate-chief-physician", "2006-09-23",
            "2008-09-23", "coordinator-tehran", "officer-tehran-region"),
    Person("gp-rey", ("کریمی", "رضا"), ("Karimi", "Reza"), "male", "rey-health-centre",
           "attending-physician", "general-practice", "general-practitioner", "2015-09-23"),
    Person("head-rey", ("صادقی", "زهرا"), ("Sadeghi", "Zahra"), "female", "rey-health-centre",
           "department-head", "general-practice", "specialist", "2004-09-23"),
)
PEOPLE_BY_ROLE = {p.role: p for p in PEOPLE}
EXPERTS = tuple(p for p in PEOPLE if p.code == "expert")
#: Experts on duty rosters: every pool member that is approved.
ROSTERED = tuple(p for p in EXPERTS if p.approved_by)


def human_name(native: tuple[str, str], latin: tuple[str, str], chinese: bool) -> list[
        dict[str, Any]]:
    """The name as written at home (official) and its Latin transcription (usual)."""
    out = []
    for (family, given), use, script in ((native, "official", chinese), (latin, "usual", False)):
        name: dict[str, Any] = {"use": use, "given": [given]}
        if family:
            name["family"] = family
        # Chinese names are written family first without a space, others given name first
        name["text"] = f"{family}{given}" if script else " ".join(p for p in (given, family)
                                                                  if p)
        out.append(name)
    return out


def is_chinese(org: str) -> bool:
    return ZONES[org] == SHANGHAI


def practitioner(p: Person) -> dict[str, Any]:
    quals: list[dict[str, Any]] = []
    if p.licensed:
        quals.append({"code": concept(model.QUALIFICATION, "licensed-physician"),
                      "period": {"start": p.licensed}})
    if p.title:
        quals.append({"code": concept(model.PROFESSIONAL_TITLE, p.title),
                      "period": {"start": p.licensed or "2010-01-01"}})
    if p.code == "expert":
        quals.append({"code": concept(model.QUALIFICATION, "telemedicine-training"),
                      "period": {"start": "2019-05-20"}})
    out: dict[str, Any] = {"resourceType": "Practitioner", "id": p.practitioner, "active": True,
                           "name": human_name(p.native, p.latin, is_chinese(p.org)),
                           "gender": p.gender}
    if quals:
        out["qualification"] = quals
    return out


def practitioner_role(p: Person, pool_status: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "PractitionerRole", "id": p.role, "active": True,
        "practitioner": ref("Practitioner", p.practitioner),
        "organization": ref("Organization", p.org),
        "code": [concept(model.PRACTITIONER_ROLE, p.code)]}
    if p.specialty:
        out["specialty"] = [concept(model.SPECIALTY, p.specialty)]
    if pool_status:
        out["meta"] = {"profile": [model.EXPERT_ROLE]}
        out["extension"] = [
            {"url": model.EXT_POOL_STATUS,
             "valueCoding": coding(model.EXPERT_POOL_STATUS, pool_status)},
            {"url": model.EXT_NOMINATED_BY, "valueReference": ref("Organization", p.org)},
            {"url": model.EXT_SPECIALTY_SINCE, "valueDate": p.specialty_since},
            {"url": model.EXT_EMPLOYER_CONSENT, "valueDate": "2024-12-20"}]
        if pool_status in ("approved", "active") and p.approved_by:
            region = PEOPLE_BY_ROLE[p.approved_by].org
            out["extension"].append({"url": model.EXT_APPROVED_BY_REGION,
                                     "valueReference": ref("Organization", region)})
    return out


# -- patients -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Patient:
    id: str
    native: tuple[str, str]
    latin: tuple[str, str]
    gender: str
    birth: str
    org: str  # where they are treated (managingOrganization)
    records: str  # what their records say (the consultation's supportingInfo)


PATIENTS = (
    Patient("wang-xiuying", ("王", "秀英"), ("Wang", "Xiuying"), "female", "1958-04-12",
            "wuchuan-county", "入院4天胸痛反复发作，心电图ST段压低，肌钙蛋白轻度升高。"),
    Patient("bayar", ("", "巴雅尔"), ("", "Bayar"), "male", "1949-11-03", "kekeyiligeng-township",
            "发热、咳嗽5天，呼吸困难加重，血氧饱和度88%。"),
    Patient("sarnai", ("", "萨日娜"), ("", "Sarnai"), "female", "2021-06-18", "chasuqi-township",
            "患儿高热惊厥一次，电话报告，病历资料随后补交。"),
    Patient("li-wei", ("李", "伟"), ("Li", "Wei"), "male", "1975-02-27", "tumed-county",
            "突发右侧肢体无力6小时，头颅CT未见出血。"),
    Patient("zhang-guilan", ("张", "桂兰"), ("Zhang", "Guilan"), "female", "1952-08-09",
            "wuchuan-county", "体重下降、贫血，胃镜见胃窦溃疡性病变，病理待定。"),
    Patient("hu-jun", ("胡", "军"), ("Hu", "Jun"), "male", "1968-12-01", "wuchuan-county",
            "高血压20年，近期活动后胸闷，动态心电图见频发室早。"),
    Patient("tumen", ("", "图门"), ("", "Tumen"), "male", "1960-05-15", "tumed-county",
            "住院5天头晕、行走不稳未确诊，头颅MRI示小脑异常信号。"),
    Patient("liu-shulan", ("刘", "淑兰"), ("Liu", "Shulan"), "female", "1955-03-30",
            "wuchuan-county", "冠心病，经皮冠状动脉介入术后胸痛复发。"),
    Patient("zhao-min", ("赵", "敏"), ("Zhao", "Min"), "female", "1983-10-22", "tumed-county",
            "胸部CT：右肺上叶结节，需远程影像诊断。"),
    Patient("han-mei", ("韩", "梅"), ("Han", "Mei"), "female", "1990-01-14",
            "kekeyiligeng-township", "反复头痛，门诊疑难病例。"),
    Patient("ma-jun", ("马", "俊"), ("Ma", "Jun"), "male", "1972-07-07", "tumed-county",
            "慢性阻塞性肺疾病急性加重。"),
    Patient("gao-feng", ("高", "峰"), ("Gao", "Feng"), "male", "1966-09-19", "wuchuan-county",
            "咯血3天，胸部CT示左下肺空洞。"),
    Patient("wulan", ("", "乌兰"), ("", "Ulaan"), "female", "1970-04-04", "wuchuan-county",
            "不稳定型心绞痛，冠脉造影示三支病变，高危。"),
    Patient("aodeng", ("", "敖登"), ("", "Odon"), "male", "1945-12-12", "regional-centre",
            "脑梗死后偏瘫，病情稳定，需康复治疗。"),
    Patient("rezaei", ("رضایی", "مریم"), ("Rezaei", "Maryam"), "female", "1966-06-21",
            "rey-health-centre", "درد قفسه سینه هنگام فعالیت، نوار قلب با تغییرات ST."),
    Patient("akbari", ("اکبری", "حسین"), ("Akbari", "Hossein"), "male", "1980-01-30",
            "rey-health-centre", "تب و سرفه ده روزه، CT ریه با درگیری دوطرفه (کووید-۱۹)."),
)
PATIENTS_BY_ID = {p.id: p for p in PATIENTS}
#: A relative who consents for a patient who is not to be told (the down-referral).
GUARDIAN = ("guardian-aodeng", "aodeng", ("", "其其格"), ("", "Chichig"), "DAUC")


def patient(p: Patient) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": p.id, "active": True,
            "name": human_name(p.native, p.latin, is_chinese(p.org)), "gender": p.gender,
            "birthDate": p.birth, "managingOrganization": ref("Organization", p.org)}


def guardian() -> dict[str, Any]:
    id_, patient_id, native, latin, relation = GUARDIAN
    return {"resourceType": "RelatedPerson", "id": id_, "active": True,
            "patient": ref("Patient", patient_id),
            "relationship": [concept(ROLE_CODE, relation, "daughter")],
            "name": human_name(native, latin, True)}


def consent(p: Patient, category: str, today: date, performer: str | None = None,
            ) -> dict[str, Any]:
    """Valid from two months ago for a year; given by the patient or the ``performer``."""
    start, end = today - timedelta(days=60), today + timedelta(days=305)
    return {
        "resourceType": "Consent", "id": f"{category.split('-')[0]}-consent-{p.id}",
        "meta": {"profile": [model.TELEMEDICINE_CONSENT]}, "status": "active",
        "scope": concept(CONSENT_SCOPE, "treatment"),
        "category": [concept(model.CONSENT_CATEGORY, category)],
        "patient": ref("Patient", p.id), "dateTime": f"{start.isoformat()}T09:00:00+08:00",
        "performer": [{"reference": performer or f"Patient/{p.id}"}],
        "policyRule": concept(ACT_CODE, "OPTIN"),
        "provision": {"type": "permit", "period": {"start": start.isoformat(),
                                                   "end": end.isoformat()}}}


def records(p: Patient) -> dict[str, Any]:
    """The patient's records sent with a request (a clinical summary, LOINC 34133-9)."""
    language = "zh" if is_chinese(p.org) else "fa"
    return {"resourceType": "DocumentReference", "id": f"records-{p.id}", "status": "current",
            "type": concept(LOINC, "34133-9", "Summary of episode note"),
            "subject": ref("Patient", p.id), "custodian": ref("Organization", p.org),
            "content": [{"attachment": {
                "contentType": "text/plain; charset=utf-8", "language": language,
                "title": "病历摘要" if language == "zh" else "خلاصه پرونده",
                "data": base64.b64encode(p.records.encode()).decode()}}]}


def down_referral_papers(patient_id: str, by: str) -> list[dict[str, Any]]:
    """Results, the treatment plan and rehabilitation guidance a down-referral carries."""
    subject = ref("Patient", patient_id)
    return [
        {"resourceType": "Observation", "id": f"result-{patient_id}-nihss", "status": "final",
         "code": concept(LOINC, "72089-6", "NIH Stroke Scale total score"), "subject": subject,
         "performer": [ref("PractitionerRole", by)], "valueInteger": 4},
        {"resourceType": "CarePlan", "id": f"plan-{patient_id}", "status": "active",
         "intent": "plan", "subject": subject, "title": "脑梗死二级预防方案",
         "description": "阿司匹林100mg每日一次，阿托伐他汀20mg每晚一次，控制血压<140/90 mmHg。"},
        {"resourceType": "CarePlan", "id": f"rehab-{patient_id}", "status": "active",
         "intent": "plan", "subject": subject, "title": "康复指导",
         "category": [{"coding": [{"system": SNOMED, "code": model.
                                   REHABILITATION_CAREPLAN_CATEGORY,
                                   "display": "Rehabilitation"}]}],
         "activity": [{"detail": {"status": "scheduled",
                                  "description": "每日被动关节活动及步行训练30分钟"}}]},
    ]

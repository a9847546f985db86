"""A synthetic telemedicine network and its patients' records, as FHIR R4 resources.

The search and import benchmarks need data shaped like what the server will really hold: a
network of organisations at three care levels in Iran and Inner Mongolia with their experts and
attending physicians, and patients whose records mix everyday clinical data (encounters,
conditions, vital signs and labs over several years) with the telemedicine workflow
(consultation requests and referrals with their Tasks in every state, appointments, consultation
reports, consents). Names come in Latin, Persian (Arabic script), Chinese (Han) and Mongolian
(Latin and Cyrillic) so that string search, sorting and collation meet real scripts.

Deterministic: every random choice comes from :class:`random.Random` seeded by the seed and what
is being made: the network from ``(seed, "network")`` and patient *i* from ``(seed, i)``. So
patient 17 is the same whatever the number of patients, a run of N patients is the prefix of a
run of N + 1, and ids (UUIDs drawn from the same generators) are stable. Time does not come from
the clock: the records end at :data:`REFERENCE_TIME`, and the open consultations (requested,
received, accepted, in progress) sit in the days before it, some past their deadline.

Constant memory: resources are yielded patient by patient; only one patient's resources (a few
dozen) and the network's lookup tables (about a thousand entries) are held at a time. Every
yielded resource is a fresh tree that the caller may change.

Codes: SNOMED CT, ICD-10, LOINC and UCUM for clinical content, HL7 terminology for the FHIR
codes, and Consilium's own CodeSystems (``https://fhir.consilium.health/CodeSystem/…``) for the
telemedicine concepts (consultation type, specialty, care level, reasons, steps).
"""

from __future__ import annotations

import datetime as dt
import functools
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

Resource = dict[str, Any]

CONSILIUM = "https://fhir.consilium.health"
CS_CONSULTATION_TYPE = f"{CONSILIUM}/CodeSystem/consultation-type"
CS_SPECIALTY = f"{CONSILIUM}/CodeSystem/specialty"
CS_CARE_LEVEL = f"{CONSILIUM}/CodeSystem/care-level"
CS_PRACTITIONER_ROLE = f"{CONSILIUM}/CodeSystem/practitioner-role"
CS_PROFESSIONAL_TITLE = f"{CONSILIUM}/CodeSystem/professional-title"
CS_CONSULTATION_REASON = f"{CONSILIUM}/CodeSystem/consultation-reason"
CS_REFERRAL_INDICATION = f"{CONSILIUM}/CodeSystem/referral-indication"
CS_CONSULTATION_STEP = f"{CONSILIUM}/CodeSystem/consultation-step"
CS_REJECTION_REASON = f"{CONSILIUM}/CodeSystem/rejection-reason"
CS_CONSENT_CATEGORY = f"{CONSILIUM}/CodeSystem/consent-category"
EXT_REFERRAL_DIRECTION = f"{CONSILIUM}/StructureDefinition/referral-direction"
SID_ORGANIZATION = f"{CONSILIUM}/sid/organization"
SID_IR_NATIONAL_CODE = f"{CONSILIUM}/sid/ir-national-code"
SID_CN_RESIDENT_ID = f"{CONSILIUM}/sid/cn-resident-id"
SID_LICENCE = {"IR": f"{CONSILIUM}/sid/ir-medical-council", "CN": f"{CONSILIUM}/sid/cn-physician-licence"}
SID_MRN = f"{CONSILIUM}/sid/mrn"
SID_REQUISITION = f"{CONSILIUM}/sid/requisition"

SNOMED = "http://snomed.info/sct"
LOINC = "http://loinc.org"
ICD10 = "http://hl7.org/fhir/sid/icd-10"
UCUM = "http://unitsofmeasure.org"
V2_0074 = "http://terminology.hl7.org/CodeSystem/v2-0074"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
V3_ACT = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
OBS_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
EXT_LANGUAGE = "http://hl7.org/fhir/StructureDefinition/language"
BCP47 = "urn:ietf:bcp:47"

# The data span: encounters and observations fall between these instants (UTC).
START_TIME = dt.datetime(2019, 1, 1, tzinfo=dt.UTC).timestamp()
REFERENCE_TIME = dt.datetime(2025, 6, 30, 6, 0, tzinfo=dt.UTC).timestamp()
_HOUR = 3600.0
_DAY = 86400.0
_YEAR = 365.25 * _DAY
_TZ = {"IR": dt.timezone(dt.timedelta(hours=3, minutes=30)),
       "CN": dt.timezone(dt.timedelta(hours=8))}
# uuid5 namespace of the fullUrls of the shared network resources in transaction Bundles.
_NETWORK_NS = uuid.uuid5(uuid.NAMESPACE_URL, f"{CONSILIUM}/bench/network")

SPECIALTIES = {
    "critical-care": "Critical care", "pulmonology": "Pulmonology",
    "infectious-disease": "Infectious disease", "nephrology": "Nephrology",
    "oncology": "Oncology", "obstetrics-gynaecology": "Obstetrics and gynaecology",
    "paediatrics": "Paediatrics", "neurology": "Neurology", "cardiology": "Cardiology",
    "surgery": "Surgery",
}
CONSULTATION_TYPES = {
    "teleconsultation": "Teleconsultation", "remote-imaging": "Remote imaging diagnosis",
    "remote-pathology": "Remote pathology diagnosis", "remote-ecg": "Remote ECG diagnosis",
    "remote-ultrasound": "Remote ultrasound diagnosis", "remote-eeg": "Remote EEG diagnosis",
    "remote-emg": "Remote EMG diagnosis", "remote-monitoring": "Remote monitoring",
    "remote-outpatient": "Remote outpatient visit", "case-discussion": "Case discussion",
    "multidisciplinary": "Multidisciplinary consultation", "referral": "Referral",
}
CARE_LEVELS = {1: "Primary care (level 1)", 2: "Secondary care (level 2)",
               3: "Tertiary care (level 3)"}
TASK_STATES = ("requested", "received", "accepted", "rejected", "in-progress", "completed",
               "cancelled")
_OPEN_STATES = frozenset({"requested", "received", "accepted", "in-progress"})
_CONSULT_STATE_WEIGHTS = (8, 6, 7, 8, 8, 56, 7)
_REFERRAL_STATE_WEIGHTS = (7, 6, 8, 7, 6, 59, 7)

CONSULTATION_REASONS = {
    "inpatient-undiagnosed": "Inpatient undiagnosed or not improving after more than 3 days",
    "sudden-deterioration": "Sudden unexplained deterioration",
    "cross-specialty-complication": "Complication from another specialty",
    "complex-surgery": "Complex surgery",
    "difficult-outpatient": "Difficult outpatient case",
    "patient-request": "Requested by the patient",
}
REFERRAL_UP = {
    "undiagnosed-after-teleconsultation": "Undiagnosed or poorly responding after teleconsultation",
    "beyond-licensed-scope": "Beyond the licensed scope of the organisation",
    "critical-emergency": "Critical emergency",
    "complex-high-risk": "Complex high-risk case",
    "equipment-limits": "Limits of the available equipment",
}
REFERRAL_DOWN = {
    "stable-long-term-care": "Stable patient needing long-term care",
    "rehabilitation": "Rehabilitation",
    "follow-up-only": "Follow-up only",
    "common-disease": "Common disease",
}
REJECTION_REASONS = {
    "outside-licensed-scope": "Outside the invited organisation's licensed scope",
    "missing-content": "Required content of the request is missing",
    "inviting-side-cannot-treat": "The inviting side cannot carry out the treatment",
    "no-expert-available": "No expert of the specialty available in time",
    "no-active-consent": "No active telemedicine consent",
}
CONSULTATION_STEPS = {
    "expert-assigned": "Expert assigned", "scheduled": "Scheduled",
    "report-pending": "Report pending", "report-signed": "Report signed",
    "report-delivered": "Report delivered",
}


# =========================================================================== vocabularies

@dataclass(frozen=True, slots=True)
class County:
    name: str
    native: str
    code: str  # Chinese administrative division code (resident IDs); Iranian office prefix


@dataclass(frozen=True, slots=True)
class City:
    country: str
    name: str
    native: str
    province: str
    province_native: str
    district_code: str
    lat: float
    lon: float
    phone: str  # area code without the trunk prefix
    postal: str
    hospital: str
    hospital_native: str
    counties: tuple[County, ...]
    weight: float  # share of the patients


CITIES = (
    City("IR", "Tehran", "تهران", "Tehran", "استان تهران", "001", 35.6892, 51.3890, "21",
         "1419733141", "Tehran University of Medical Sciences Hospital",
         "بیمارستان دانشگاه علوم پزشکی تهران",
         (County("Varamin", "ورامین", "052"), County("Shahriar", "شهریار", "055"),
          County("Damavand", "دماوند", "058")), 0.24),
    City("IR", "Mashhad", "مشهد", "Razavi Khorasan", "استان خراسان رضوی", "092", 36.2605,
         59.6168, "51", "9177948974", "Mashhad University of Medical Sciences Hospital",
         "بیمارستان دانشگاه علوم پزشکی مشهد",
         (County("Neyshabur", "نیشابور", "106"), County("Sabzevar", "سبزوار", "107"),
          County("Torbat-e Heydarieh", "تربت حیدریه", "081")), 0.15),
    City("IR", "Tabriz", "تبریز", "East Azerbaijan", "استان آذربایجان شرقی", "136", 38.0800,
         46.2919, "41", "5166614766", "Tabriz University of Medical Sciences Hospital",
         "بیمارستان دانشگاه علوم پزشکی تبریز",
         (County("Marand", "مرند", "152"), County("Maragheh", "مراغه", "150"),
          County("Mianeh", "میانه", "151")), 0.12),
    City("CN", "Hohhot", "呼和浩特市", "Inner Mongolia", "内蒙古自治区", "150102", 40.8424,
         111.7490, "471", "010010", "Inner Mongolia Regional Telemedicine Centre",
         "内蒙古自治区远程医疗中心",
         (County("Tumed Left Banner", "土默特左旗", "150121"),
          County("Togtoh County", "托克托县", "150122"),
          County("Horinger County", "和林格尔县", "150123")), 0.21),
    City("CN", "Baotou", "包头市", "Inner Mongolia", "内蒙古自治区", "150203", 40.6574,
         109.8403, "472", "014010", "Baotou Central Hospital", "包头市中心医院",
         (County("Tumed Right Banner", "土默特右旗", "150221"),
          County("Guyang County", "固阳县", "150222"),
          County("Darhan Muminggan United Banner", "达尔罕茂明安联合旗", "150223")), 0.14),
    City("CN", "Chifeng", "赤峰市", "Inner Mongolia", "内蒙古自治区", "150402", 42.2578,
         118.8869, "476", "024000", "Chifeng Municipal Hospital", "赤峰市医院",
         (County("Bairin Left Banner", "巴林左旗", "150422"),
          County("Linxi County", "林西县", "150424"),
          County("Ongniud Banner", "翁牛特旗", "150426")), 0.14),
)

# (Latin, native) pairs.
IR_MALE = (("Ali", "علی"), ("Mohammad", "محمد"), ("Hossein", "حسین"), ("Reza", "رضا"),
           ("Mehdi", "مهدی"), ("Amir", "امیر"), ("Hamid", "حمید"), ("Saeed", "سعید"),
           ("Majid", "مجید"), ("Ahmad", "احمد"), ("Mahmoud", "محمود"), ("Hassan", "حسن"),
           ("Javad", "جواد"), ("Morteza", "مرتضی"), ("Mostafa", "مصطفی"), ("Behrouz", "بهروز"),
           ("Kourosh", "کوروش"), ("Dariush", "داریوش"), ("Babak", "بابک"), ("Arash", "آرش"),
           ("Farhad", "فرهاد"), ("Omid", "امید"), ("Navid", "نوید"), ("Peyman", "پیمان"))
IR_FEMALE = (("Fatemeh", "فاطمه"), ("Zahra", "زهرا"), ("Maryam", "مریم"),
             ("Masoumeh", "معصومه"), ("Zeynab", "زینب"), ("Sara", "سارا"), ("Leila", "لیلا"),
             ("Narges", "نرگس"), ("Shirin", "شیرین"), ("Parisa", "پریسا"), ("Mahsa", "مهسا"),
             ("Nasrin", "نسرین"), ("Soheila", "سهیلا"), ("Roya", "رویا"), ("Elham", "الهام"),
             ("Somayeh", "سمیه"), ("Neda", "ندا"), ("Azadeh", "آزاده"), ("Mina", "مینا"),
             ("Golnaz", "گلناز"), ("Fereshteh", "فرشته"), ("Ladan", "لادن"))
IR_FAMILY = (("Mohammadi", "محمدی"), ("Hosseini", "حسینی"), ("Ahmadi", "احمدی"),
             ("Rezaei", "رضایی"), ("Moradi", "مرادی"), ("Karimi", "کریمی"), ("Jafari", "جعفری"),
             ("Rahimi", "رحیمی"), ("Mousavi", "موسوی"), ("Ghasemi", "قاسمی"),
             ("Hashemi", "هاشمی"), ("Sadeghi", "صادقی"), ("Kazemi", "کاظمی"),
             ("Rostami", "رستمی"), ("Heidari", "حیدری"), ("Akbari", "اکبری"),
             ("Ebrahimi", "ابراهیمی"), ("Salehi", "صالحی"), ("Najafi", "نجفی"),
             ("Azizi", "عزیزی"), ("Tehrani", "تهرانی"), ("Tabrizi", "تبریزی"),
             ("Mashhadi", "مشهدی"), ("Nouri", "نوری"), ("Bagheri", "باقری"),
             ("Shirazi", "شیرازی"), ("Yazdani", "یزدانی"), ("Farahani", "فراهانی"),
             ("Zamani", "زمانی"), ("Abbasi", "عباسی"))
CN_FAMILY = (("Wang", "王"), ("Li", "李"), ("Zhang", "张"), ("Liu", "刘"), ("Chen", "陈"),
             ("Yang", "杨"), ("Zhao", "赵"), ("Huang", "黄"), ("Zhou", "周"), ("Wu", "吴"),
             ("Xu", "徐"), ("Sun", "孙"), ("Hu", "胡"), ("Zhu", "朱"), ("Gao", "高"),
             ("Lin", "林"), ("He", "何"), ("Guo", "郭"), ("Ma", "马"), ("Luo", "罗"),
             ("Liang", "梁"), ("Song", "宋"), ("Zheng", "郑"), ("Han", "韩"), ("Tang", "唐"),
             ("Feng", "冯"), ("Yu", "于"), ("Dong", "董"), ("Bai", "白"), ("Qiao", "乔"))
CN_MALE = (("Wei", "伟"), ("Qiang", "强"), ("Lei", "磊"), ("Jun", "军"), ("Yong", "勇"),
           ("Jie", "杰"), ("Tao", "涛"), ("Ming", "明"), ("Chao", "超"), ("Haoran", "浩然"),
           ("Zhiqiang", "志强"), ("Jianguo", "建国"), ("Jianhua", "建华"), ("Guoqing", "国庆"),
           ("Wenbo", "文博"), ("Yuxuan", "宇轩"), ("Zihao", "子豪"), ("Junjie", "俊杰"),
           ("Haifeng", "海峰"), ("Lixin", "立新"))
CN_FEMALE = (("Fang", "芳"), ("Na", "娜"), ("Min", "敏"), ("Jing", "静"), ("Li", "丽"),
             ("Yan", "艳"), ("Juan", "娟"), ("Xia", "霞"), ("Xiuying", "秀英"),
             ("Guiying", "桂英"), ("Yulan", "玉兰"), ("Xiaoyan", "晓燕"), ("Lina", "丽娜"),
             ("Xinyi", "欣怡"), ("Zihan", "梓涵"), ("Yutong", "雨桐"), ("Shuzhen", "淑珍"),
             ("Chunmei", "春梅"), ("Hongmei", "红梅"), ("Ting", "婷"))
# Mongolian given names: (Latin, Cyrillic, Chinese transliteration).
MN_MALE = (("Bayar", "Баяр", "巴雅尔"), ("Temuulen", "Тэмүүлэн", "特木伦"),
           ("Baatar", "Баатар", "巴特尔"), ("Buyan", "Буян", "宝音"),
           ("Erdene", "Эрдэнэ", "额尔敦"), ("Chuluun", "Чулуун", "朝鲁"),
           ("Altan", "Алтан", "阿拉坦"), ("Ulzii", "Өлзий", "乌力吉"), ("Munkh", "Мөнх", "孟和"),
           ("Sukh", "Сүх", "苏和"), ("Nasan", "Насан", "那顺"), ("Bat", "Бат", "巴图"),
           ("Tegus", "Тэгүс", "特古斯"), ("Bilig", "Билэг", "毕力格"))
MN_FEMALE = (("Tsetseg", "Цэцэг", "其其格"), ("Saran", "Саран", "萨仁"),
             ("Naran", "Наран", "娜仁"), ("Tuyaa", "Туяа", "图雅"), ("Oyun", "Оюун", "乌云"),
             ("Gerel", "Гэрэл", "格日勒"), ("Sarnai", "Сарнай", "萨日娜"),
             ("Altantsetseg", "Алтанцэцэг", "阿拉坦其其格"), ("Tana", "Тана", "塔娜"),
             ("Ulaan", "Улаан", "乌兰"))
IR_STREETS = (("Azadi", "آزادی"), ("Enghelab", "انقلاب"), ("Valiasr", "ولیعصر"),
              ("Shariati", "شریعتی"), ("Ferdowsi", "فردوسی"), ("Hafez", "حافظ"),
              ("Saadi", "سعدی"), ("Imam Reza", "امام رضا"))
CN_STREETS = (("Xinhua Street", "新华大街"), ("Zhongshan Road", "中山路"),
              ("Renmin Road", "人民路"), ("Jiefang Road", "解放路"),
              ("Jianshe Road", "建设路"), ("Shengli Road", "胜利路"),
              ("Tuanjie Street", "团结街"), ("Zhaowuda Road", "昭乌达路"))
_PERSIAN_DIGITS = str.maketrans("0123456789", "۰۱۲۳۴۵۶۷۸۹")

TITLES = {  # code: (display, Chinese, Persian)
    "chief-physician": ("Chief physician", "主任医师", "استاد"),
    "associate-chief-physician": ("Associate chief physician", "副主任医师", "دانشیار"),
    "attending-physician": ("Attending physician", "主治医师", "پزشک معالج"),
    "resident-physician": ("Resident physician", "住院医师", "دستیار"),
}


@dataclass(frozen=True, slots=True)
class Lab:
    loinc: str
    display: str
    unit: str
    normal: tuple[float, float]
    abnormal: tuple[float, float]
    decimals: int


LABS = {
    "hb": Lab("718-7", "Hemoglobin [Mass/volume] in Blood", "g/L", (120, 160), (70, 110), 0),
    "wbc": Lab("6690-2", "Leukocytes [#/volume] in Blood by Automated count", "10*9/L",
               (4.0, 10.0), (11.0, 24.0), 1),
    "plt": Lab("777-3", "Platelets [#/volume] in Blood by Automated count", "10*9/L",
               (150, 400), (40, 140), 0),
    "glucose": Lab("14749-6", "Glucose [Moles/volume] in Serum or Plasma", "mmol/L",
                   (3.9, 6.1), (7.5, 16.0), 1),
    "creatinine": Lab("14682-9", "Creatinine [Moles/volume] in Serum or Plasma", "umol/L",
                      (53, 106), (140, 420), 0),
    "egfr": Lab("62238-1", "Glomerular filtration rate/1.73 sq M.predicted [Volume Rate/Area] "
                "in Serum, Plasma or Blood by Creatinine-based formula (CKD-EPI)",
                "mL/min/{1.73_m2}", (90, 120), (15, 59), 0),
    "sodium": Lab("2951-2", "Sodium [Moles/volume] in Serum or Plasma", "mmol/L",
                  (135, 145), (125, 134), 0),
    "potassium": Lab("2823-3", "Potassium [Moles/volume] in Serum or Plasma", "mmol/L",
                     (3.5, 5.1), (5.3, 6.5), 1),
    "cholesterol": Lab("14647-2", "Cholesterol [Moles/volume] in Serum or Plasma", "mmol/L",
                       (3.0, 5.2), (6.2, 8.5), 1),
    "triglyceride": Lab("14927-8", "Triglyceride [Moles/volume] in Serum or Plasma",
                        "mmol/L", (0.5, 1.7), (2.3, 5.0), 1),
    "alt": Lab("1742-6", "Alanine aminotransferase [Enzymatic activity/volume] in Serum or "
               "Plasma", "U/L", (7, 40), (60, 300), 0),
    "ast": Lab("1920-8", "Aspartate aminotransferase [Enzymatic activity/volume] in Serum or "
               "Plasma", "U/L", (10, 40), (60, 250), 0),
    "bilirubin": Lab("14631-6", "Bilirubin.total [Moles/volume] in Serum or Plasma", "umol/L",
                     (3, 21), (60, 300), 0),
    "hba1c": Lab("4548-4", "Hemoglobin A1c/Hemoglobin.total in Blood", "%", (4.0, 5.6),
                 (6.5, 11.0), 1),
    "crp": Lab("1988-5", "C reactive protein [Mass/volume] in Serum or Plasma", "mg/L",
               (0.5, 5.0), (20, 180), 1),
    "pct": Lab("33959-8", "Procalcitonin [Mass/volume] in Serum or Plasma", "ng/mL",
               (0.02, 0.05), (0.5, 20.0), 2),
    "ntprobnp": Lab("33762-6", "Natriuretic peptide.B prohormone N-Terminal [Mass/volume] in "
                    "Serum or Plasma", "pg/mL", (20, 125), (900, 9000), 0),
    "troponin": Lab("10839-9", "Troponin I.cardiac [Mass/volume] in Serum or Plasma", "ng/mL",
                    (0.0, 0.04), (0.5, 30.0), 2),
    "lactate": Lab("2524-7", "Lactate [Moles/volume] in Serum or Plasma", "mmol/L",
                   (0.5, 2.0), (2.5, 9.0), 1),
    "po2": Lab("2703-7", "Oxygen [Partial pressure] in Arterial blood", "mm[Hg]", (80, 100),
               (45, 70), 0),
    "urine-protein": Lab("2888-6", "Protein [Mass/volume] in Urine", "mg/dL", (0, 14),
                         (30, 500), 0),
    "cea": Lab("2039-6", "Carcinoembryonic Ag [Mass/volume] in Serum or Plasma", "ng/mL",
               (0.5, 5.0), (10, 200), 1),
}
# Panels reported as a DiagnosticReport; (LOINC, display, v2-0074 section, lab keys).
PANELS = {
    "cbc": ("58410-2", "CBC panel - Blood by Automated count", "HM", ("hb", "wbc", "plt")),
    "bmp": ("24321-2", "Basic metabolic 2000 panel - Serum or Plasma", "CH",
            ("glucose", "creatinine", "sodium", "potassium")),
    "renal": ("24362-6", "Renal function 2000 panel - Serum or Plasma", "CH",
              ("creatinine", "egfr", "potassium")),
    "lipid": ("24331-1", "Lipid 1996 panel - Serum or Plasma", "CH",
              ("cholesterol", "triglyceride")),
    "hepatic": ("24325-3", "Hepatic function 2000 panel - Serum or Plasma", "CH",
                ("alt", "ast", "bilirubin")),
}
COVID_PCR = ("94500-6", "SARS-CoV-2 (COVID-19) RNA [Presence] in Respiratory specimen by NAA "
             "with probe detection")


@dataclass(frozen=True, slots=True)
class Dx:
    """A diagnosis: its codes, who gets it, and what telemedicine it leads to."""

    snomed: str
    icd10: str
    display: str
    specialty: str
    chronic: bool
    ages: tuple[int, int]
    weight: float
    consults: tuple[str, ...]
    labs: tuple[str, ...]  # PANELS keys, LABS keys (single tests) or "covid-pcr"
    inpatient: bool = False
    female: bool = False


DIAGNOSES = (
    Dx("59621000", "I10", "Essential hypertension", "cardiology", True, (30, 95), 9,
       ("remote-monitoring", "remote-outpatient", "teleconsultation"), ("bmp", "lipid")),
    Dx("44054006", "E11.9", "Diabetes mellitus type 2", "nephrology", True, (30, 95), 7,
       ("remote-monitoring", "remote-outpatient"), ("hba1c", "bmp", "lipid")),
    Dx("433144002", "N18.3", "Chronic kidney disease stage 3", "nephrology", True, (45, 95), 3,
       ("teleconsultation", "remote-outpatient"), ("renal", "cbc")),
    Dx("840539006", "U07.1", "COVID-19", "infectious-disease", False, (0, 95), 4,
       ("teleconsultation", "remote-imaging", "multidisciplinary"),
       ("cbc", "crp", "covid-pcr"), inpatient=True),
    Dx("385093006", "J18.9", "Community acquired pneumonia", "pulmonology", False, (0, 95), 4,
       ("teleconsultation", "remote-imaging"), ("cbc", "crp", "pct"), inpatient=True),
    Dx("13645005", "J44.9", "Chronic obstructive lung disease", "pulmonology", True, (45, 95),
       4, ("teleconsultation", "remote-monitoring", "remote-imaging"), ("cbc", "po2")),
    Dx("195967001", "J45.9", "Asthma", "pulmonology", True, (5, 80), 3,
       ("remote-outpatient", "teleconsultation"), ("cbc",)),
    Dx("22298006", "I21.9", "Myocardial infarction", "cardiology", False, (40, 95), 2,
       ("remote-ecg", "teleconsultation", "multidisciplinary"),
       ("troponin", "lipid", "bmp"), inpatient=True),
    Dx("84114007", "I50.9", "Heart failure", "cardiology", True, (50, 95), 3,
       ("remote-monitoring", "remote-ecg", "teleconsultation"), ("ntprobnp", "bmp")),
    Dx("49436004", "I48.9", "Atrial fibrillation", "cardiology", True, (50, 95), 3,
       ("remote-ecg", "remote-monitoring"), ("bmp",)),
    Dx("230690007", "I63.9", "Cerebrovascular accident", "neurology", False, (45, 95), 2,
       ("teleconsultation", "remote-imaging", "case-discussion"), ("cbc", "lipid", "bmp"),
       inpatient=True),
    Dx("84757009", "G40.9", "Epilepsy", "neurology", True, (2, 80), 2,
       ("remote-eeg", "teleconsultation"), ("bmp",)),
    Dx("302226006", "G62.9", "Peripheral nerve disease", "neurology", True, (35, 90), 2,
       ("remote-emg", "teleconsultation"), ("hba1c", "bmp")),
    Dx("56717001", "A16.9", "Tuberculosis", "infectious-disease", False, (15, 90), 1.5,
       ("teleconsultation", "remote-imaging"), ("cbc", "crp", "hepatic")),
    Dx("75702008", "A23.9", "Brucellosis", "infectious-disease", False, (15, 80), 1.5,
       ("teleconsultation", "case-discussion"), ("cbc", "crp", "hepatic")),
    Dx("363358000", "C34.9", "Malignant tumor of lung", "oncology", True, (45, 90), 1.5,
       ("remote-pathology", "remote-imaging", "multidisciplinary"), ("cbc", "cea", "hepatic")),
    Dx("363349007", "C16.9", "Malignant tumor of stomach", "oncology", True, (45, 90), 1.2,
       ("remote-pathology", "multidisciplinary", "case-discussion"), ("cbc", "cea")),
    Dx("254837009", "C50.9", "Malignant neoplasm of breast", "oncology", True, (30, 85), 1.5,
       ("remote-pathology", "remote-imaging", "multidisciplinary"), ("cbc", "cea"),
       female=True),
    Dx("398254007", "O14.9", "Pre-eclampsia", "obstetrics-gynaecology", False, (18, 42), 1.5,
       ("remote-ultrasound", "teleconsultation"), ("cbc", "urine-protein", "hepatic"),
       inpatient=True, female=True),
    Dx("72892002", "Z34.9", "Normal pregnancy", "obstetrics-gynaecology", False, (18, 42), 4,
       ("remote-ultrasound", "remote-outpatient"), ("cbc",), female=True),
    Dx("74400008", "K35.8", "Appendicitis", "surgery", False, (5, 70), 2,
       ("teleconsultation", "remote-imaging"), ("cbc", "crp"), inpatient=True),
    Dx("235919008", "K80.2", "Calculus of gallbladder", "surgery", False, (30, 85), 2,
       ("remote-ultrasound", "teleconsultation"), ("hepatic", "cbc")),
    Dx("387712008", "P59.9", "Neonatal jaundice", "paediatrics", False, (0, 0), 4,
       ("teleconsultation", "remote-outpatient"), ("bilirubin",), inpatient=True),
    Dx("4120002", "J21.9", "Bronchiolitis", "paediatrics", False, (0, 2), 4,
       ("teleconsultation", "remote-monitoring"), ("cbc",), inpatient=True),
    Dx("91302008", "A41.9", "Sepsis", "critical-care", False, (0, 95), 1.2,
       ("teleconsultation", "multidisciplinary"), ("cbc", "lactate", "pct", "bmp"),
       inpatient=True),
    Dx("67782005", "J80", "Acute respiratory distress syndrome", "critical-care", False,
       (16, 95), 0.8, ("teleconsultation", "multidisciplinary", "remote-imaging"),
       ("po2", "lactate", "cbc"), inpatient=True),
)

_CONSULT_REPORT = {  # consultation type: (LOINC, display, v2-0074 section)
    "remote-imaging": ("18748-4", "Diagnostic imaging study", "IMG"),
    "remote-pathology": ("11526-1", "Pathology study", "PAT"),
    "remote-ecg": ("11524-6", "EKG study", "EC"),
    "remote-ultrasound": ("11488-4", "Consult note", "RUS"),
    "remote-eeg": ("11488-4", "Consult note", "EN"),
    "remote-emg": ("11488-4", "Consult note", "EN"),
}
_CONSULT_NOTE = ("11488-4", "Consult note", "PHY")
_SECTION_DISPLAY = {"HM": "Hematology", "CH": "Chemistry", "LAB": "Laboratory",
                    "IMG": "Diagnostic Imaging", "PAT": "Pathology (gross & histopath, not "
                    "surgical)", "EC": "Electrocardiac (e.g., EKG,  EEC, Holter)",
                    "RUS": "Radiology Ultrasound", "EN": "Electroneuro (EEG, EMG,EP,PSG)",
                    "PHY": "Physician (Hx. Dx, admission note, etc.)"}
_WEEK = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_ENCOUNTER_CLASS = {"AMB": "ambulatory", "IMP": "inpatient encounter", "EMER": "emergency",
                    "VR": "virtual"}


# =========================================================================== small builders

def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    c = {"system": system, "code": code}
    if display is not None:
        c["display"] = display
    return c


def concept(system: str, code: str, display: str | None = None,
            text: str | None = None) -> dict[str, Any]:
    cc: dict[str, Any] = {"coding": [coding(system, code, display)]}
    if text is not None:
        cc["text"] = text
    return cc


def ref(type_name: str, rid: str, display: str | None = None) -> dict[str, str]:
    r = {"reference": f"{type_name}/{rid}"}
    if display is not None:
        r["display"] = display
    return r


def quantity(value: float | int, unit: str) -> dict[str, Any]:
    return {"value": value, "unit": unit, "system": UCUM, "code": unit}


def specialty_concept(code: str) -> dict[str, Any]:
    return concept(CS_SPECIALTY, code, SPECIALTIES[code])


def consultation_type_concept(code: str) -> dict[str, Any]:
    return concept(CS_CONSULTATION_TYPE, code, CONSULTATION_TYPES[code])


def _lang(code: str) -> list[dict[str, str]]:
    return [{"url": EXT_LANGUAGE, "valueCode": code}]


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _when(t: float, country: str) -> str:
    """A dateTime/instant in the local time of the country, to the second."""
    return dt.datetime.fromtimestamp(int(t), _TZ[country]).isoformat()


def _office_hours(t: float, country: str, rng: random.Random) -> float:
    """``t``, or when it falls outside 08:00-17:00 local time, a time in the next such hours
    (routine visits and sessions happen in the daytime)."""
    offset = _TZ[country].utcoffset(None).total_seconds()
    local = t + offset
    hour = local % _DAY / _HOUR
    if 8 <= hour < 17:
        return t
    midnight = local - local % _DAY + (_DAY if hour >= 17 else 0)
    return midnight + rng.uniform(8, 16.5) * _HOUR - offset


def _day(t: float, country: str) -> str:
    return dt.datetime.fromtimestamp(int(t), _TZ[country]).date().isoformat()


def iran_national_code(digits: str) -> str:
    """The 10-digit Iranian national code for 9 leading digits (check digit mod 11)."""
    s = sum(int(d) * (10 - i) for i, d in enumerate(digits)) % 11
    return digits + str(s if s < 2 else 11 - s)


_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)


def china_resident_id(region: str, birth: str, sequence: int) -> str:
    """The 18-character Chinese resident ID (GB 11643): region, YYYYMMDD, sequence, check."""
    body = f"{region}{birth.replace('-', '')}{sequence:03d}"
    return body + "10X98765432"[sum(int(c) * w for c, w in zip(body, _ID_WEIGHTS, strict=True)) % 11]


# =========================================================================== people's names

@dataclass(frozen=True, slots=True)
class Person:
    """A name in every script it is written in, with what contact details need."""

    kind: str  # "fa", "zh" or "mn"
    gender: str
    latin_given: str
    latin_family: str
    names: tuple[dict[str, Any], ...] = field(repr=False)

    def human_names(self) -> list[dict[str, Any]]:
        out = []
        for n in self.names:
            name = {k: v for k, v in n.items() if k != "_lang"}
            name["given"] = list(n["given"])
            name["extension"] = _lang(n["_lang"])
            out.append(name)
        return out


def _hn(family: str | None, given: str, text: str, lang: str) -> dict[str, Any]:
    n: dict[str, Any] = {"use": "official", "text": text, "given": (given,), "_lang": lang}
    if family is not None:
        n["family"] = family
    return n


def _persian(rng: random.Random, gender: str) -> Person:
    g = rng.choice(IR_FEMALE if gender == "female" else IR_MALE)
    f = rng.choice(IR_FAMILY)
    return Person("fa", gender, g[0], f[0], (
        _hn(f[1], g[1], f"{g[1]} {f[1]}", "fa"),
        _hn(f[0], g[0], f"{g[0]} {f[0]}", "fa-Latn")))


def _chinese(rng: random.Random, gender: str) -> Person:
    f = rng.choice(CN_FAMILY)
    g = rng.choice(CN_FEMALE if gender == "female" else CN_MALE)
    return Person("zh", gender, g[0], f[0], (
        _hn(f[1], g[1], f"{f[1]}{g[1]}", "zh"),
        _hn(f[0], g[0], f"{f[0]} {g[0]}", "zh-Latn-pinyin")))


def _mongolian(rng: random.Random, gender: str) -> Person:
    """Mongolian names: the father's name serves as the family name in Latin and Cyrillic; in
    Chinese documents a Mongol is usually written with the given name alone."""
    g = rng.choice(MN_FEMALE if gender == "female" else MN_MALE)
    father = rng.choice(MN_MALE)
    return Person("mn", gender, g[0], father[0], (
        _hn(father[0], g[0], f"{father[0]} {g[0]}", "mn-Latn"),
        _hn(father[1], g[1], f"{father[1]} {g[1]}", "mn-Cyrl"),
        _hn(None, g[2], g[2], "zh")))


def _person(rng: random.Random, country: str, gender: str) -> Person:
    if country == "IR":
        return _persian(rng, gender)
    return _mongolian(rng, gender) if rng.random() < 0.2 else _chinese(rng, gender)


# =========================================================================== the network

@dataclass(frozen=True, slots=True)
class Org:
    id: str
    name: str
    native: str
    level: int  # 0 for the network's administrative root
    city: City
    county: County | None
    parent: str | None
    lat: float
    lon: float


@dataclass(frozen=True, slots=True)
class Role:
    id: str
    practitioner: str
    org: str
    kind: str  # "expert" or "attending"
    specialty: str | None  # None: general practice
    title: str
    person: Person
    birth: str
    licence: str
    since: int  # year of the licence


@dataclass
class Network:
    """The organisations and their staff, with the lookups patients are generated from."""

    orgs: list[Org]
    roles: list[Role]
    by_id: dict[str, Org]
    attendings: dict[str, list[Role]]
    experts: dict[tuple[str, str], list[Role]]
    care: dict[str, list[Org]]  # city name -> level-1 and level-2 organisations

    def higher(self, org: Org) -> list[Org]:
        """The organisations above ``org`` in its partOf chain that treat patients."""
        out = []
        parent = org.parent
        while parent is not None:
            p = self.by_id[parent]
            if p.level > org.level:
                out.append(p)
            parent = p.parent
        return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")


def _build_orgs(rng: random.Random) -> list[Org]:
    roots = {
        "IR": Org("org-ir-network", "Iran National Telemedicine Network", "شبکه ملی پزشکی از راه دور",
                  0, CITIES[0], None, None, CITIES[0].lat, CITIES[0].lon),
        "CN": Org("org-cn-network", "Inner Mongolia Telemedicine Network", "内蒙古自治区远程医疗网络",
                  0, CITIES[3], None, None, CITIES[3].lat, CITIES[3].lon),
    }
    orgs = list(roots.values())
    hohhot = "org-cn-hohhot-3"
    for city in CITIES:
        l3 = f"org-{city.country.lower()}-{_slug(city.name)}-3"
        parent = hohhot if city.country == "CN" and l3 != hohhot else roots[city.country].id
        orgs.append(Org(l3, city.hospital, city.hospital_native, 3, city, None, parent,
                        city.lat, city.lon))
        for county in city.counties:
            lat, lon = city.lat + rng.uniform(-0.6, 0.6), city.lon + rng.uniform(-0.6, 0.6)
            l2 = f"org-{city.country.lower()}-{_slug(county.name)}-2"
            orgs.append(_county_hospital(l2, city, county, l3, lat, lon))
            for n in (1, 2):
                orgs.append(_township_centre(f"{l2[:-2]}-1-{n}", city, county, n, l2,
                                             lat + rng.uniform(-0.2, 0.2),
                                             lon + rng.uniform(-0.2, 0.2)))
    return orgs


def _county_hospital(oid: str, city: City, county: County, parent: str, lat: float,
                     lon: float) -> Org:
    if city.country == "IR":
        return Org(oid, f"{county.name} Hospital", f"بیمارستان {county.native}", 2, city,
                   county, parent, lat, lon)
    return Org(oid, f"{county.name} People's Hospital", f"{county.native}人民医院", 2, city,
               county, parent, lat, lon)


def _township_centre(oid: str, city: City, county: County, n: int, parent: str, lat: float,
                     lon: float) -> Org:
    if city.country == "IR":
        return Org(oid, f"{county.name} Comprehensive Rural Health Centre {n}",
                   f"مرکز خدمات جامع سلامت روستایی {county.native} {str(n).translate(_PERSIAN_DIGITS)}",
                   1, city, county, parent, lat, lon)
    zh_n = "一二"[n - 1]
    return Org(oid, f"{county.name} Township Health Centre {n}", f"{county.native}第{zh_n}乡镇卫生院",
               1, city, county, parent, lat, lon)


def _staffing(level: int, rng: random.Random) -> list[tuple[str, str | None]]:
    """(kind, specialty) of each staff member: a level-3 hospital has two experts in every
    specialty, a level-2 one experts in five, a township centre three general practitioners."""
    staff: list[tuple[str, str | None]] = []
    if level == 3:
        staff += [("expert", s) for s in SPECIALTIES for _ in range(2)]
        staff += [("attending", s) for s in rng.sample(list(SPECIALTIES), 4)]
    elif level == 2:
        staff += [("expert", s) for s in rng.sample(list(SPECIALTIES), 5)]
        staff += [("attending", s) for s in rng.sample(list(SPECIALTIES), 6)]
    elif level == 1:
        staff += [("attending", None)] * 3
    return staff


def _build_roles(rng: random.Random, orgs: list[Org]) -> list[Role]:
    roles: list[Role] = []
    for org in orgs:
        for kind, spec in _staffing(org.level, rng):
            n = len(roles) + 1
            gender = "female" if rng.random() < 0.45 else "male"
            if kind == "expert":
                title = rng.choice(("chief-physician", "associate-chief-physician"))
                age = rng.randint(40, 64)
            else:
                title = rng.choice(("attending-physician", "resident-physician"))
                age = rng.randint(27, 55)
            birth = dt.date(2025 - age, rng.randint(1, 12), rng.randint(1, 28)).isoformat()
            since = min(2025 - age + 25 + rng.randint(0, 3), 2024)
            lic_prefix = "N-" if org.city.country == "IR" else "110"
            roles.append(Role(f"role-{n:04d}", f"prac-{n:04d}", org.id, kind, spec, title,
                              _person(rng, org.city.country, gender), birth,
                              f"{lic_prefix}{rng.randrange(10**8, 10**9)}", since))
    return roles


@functools.cache
def network(seed: int = 1) -> Network:
    """The network of a seed (static data, so cached; never change what it returns)."""
    rng = random.Random(f"{seed}:network")
    orgs = _build_orgs(rng)
    roles = _build_roles(rng, orgs)
    attendings: dict[str, list[Role]] = {}
    experts: dict[tuple[str, str], list[Role]] = {}
    for r in roles:
        if r.kind == "attending":
            attendings.setdefault(r.org, []).append(r)
        else:
            experts.setdefault((r.org, r.specialty or ""), []).append(r)
    care: dict[str, list[Org]] = {}
    for o in orgs:
        if o.level in (1, 2):
            care.setdefault(o.city.name, []).append(o)
    return Network(orgs, roles, {o.id: o for o in orgs}, attendings, experts, care)


def _phone(rng: random.Random, country: str, mobile: bool, city: City) -> str:
    if country == "IR":
        if mobile:
            return f"+98 9{rng.randint(10, 39)} {rng.randint(100, 999)} {rng.randint(1000, 9999)}"
        return f"+98 {city.phone} {rng.randint(3000, 8999)} {rng.randint(1000, 9999)}"
    if mobile:
        return f"+86 1{rng.choice('3589')}{rng.randint(0, 9)} {rng.randint(1000, 9999)} " \
               f"{rng.randint(1000, 9999)}"
    return f"+86 {city.phone} {rng.randint(5000, 6999)} {rng.randint(1000, 9999)}"


def _address(rng: random.Random, city: City, county: County | None, use: str) -> dict[str, Any]:
    n = rng.randint(1, 320)
    if city.country == "IR":
        street = rng.choice(IR_STREETS)
        place = county.native if county else city.native
        text = f"{city.province_native}، {place}، خیابان {street[1]}، پلاک " \
               f"{str(n).translate(_PERSIAN_DIGITS)}"
        line = f"No. {n}, {street[0]} St."
        postal = f"{rng.randint(1000000000, 9999999999)}"
    else:
        street = rng.choice(CN_STREETS)
        place = county.native if county else city.native
        text = f"{city.province_native}{city.native}{place if county else ''}{street[1]}{n}号"
        line = f"{n} {street[0]}"
        postal = city.postal
    a: dict[str, Any] = {"use": use, "type": "both", "text": text, "line": [line],
                         "city": city.name}
    if county is not None:
        a["district"] = county.name
    a.update(state=city.province, postalCode=postal, country=city.country)
    return a


def _network_resources(seed: int) -> Iterator[Resource]:
    net = network(seed)
    rng = random.Random(f"{seed}:network-details")
    for org in net.orgs:
        yield _organization(rng, org)
    for org in net.orgs:
        if org.level:
            yield _location(rng, org)
    for role in net.roles:
        yield _practitioner(rng, role, net.by_id[role.org])
    for role in net.roles:
        yield _practitioner_role(rng, role, net.by_id[role.org])


def _organization(rng: random.Random, org: Org) -> Resource:
    types = [concept("http://terminology.hl7.org/CodeSystem/organization-type",
                     *(("prov", "Healthcare Provider") if org.level else ("govt", "Government")))]
    if org.level:
        types.append(concept(CS_CARE_LEVEL, str(org.level), CARE_LEVELS[org.level]))
    r: Resource = {
        "resourceType": "Organization", "id": org.id,
        "identifier": [{"system": SID_ORGANIZATION, "value": org.id.removeprefix("org-").upper()}],
        "active": True, "type": types, "name": org.name, "alias": [org.native],
        "telecom": [{"system": "phone", "value": _phone(rng, org.city.country, False, org.city),
                     "use": "work"}],
        "address": [_address(rng, org.city, org.county, "work")],
    }
    if org.parent:
        r["partOf"] = ref("Organization", org.parent)
    return r


def _location(rng: random.Random, org: Org) -> Resource:
    kind = ("PC", "primary care clinic") if org.level == 1 else ("HOSP", "Hospital")
    if org.city.country == "IR":
        alias = f"ایستگاه پزشکی از راه دور {org.native}"
    else:
        alias = f"{org.native}远程医疗室"
    return {
        "resourceType": "Location", "id": f"loc-{org.id.removeprefix('org-')}",
        "status": "active", "name": f"Telemedicine station, {org.name}", "alias": [alias],
        "mode": "instance",
        "type": [concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode", *kind)],
        "telecom": [{"system": "phone", "value": _phone(rng, org.city.country, False, org.city),
                     "use": "work"}],
        "address": _address(rng, org.city, org.county, "work"),
        "physicalType": concept("http://terminology.hl7.org/CodeSystem/location-physical-type",
                                "ro", "Room"),
        "position": {"longitude": round(org.lon, 4), "latitude": round(org.lat, 4)},
        "managingOrganization": ref("Organization", org.id),
    }


def location_id(org_id: str) -> str:
    return f"loc-{org_id.removeprefix('org-')}"


def _practitioner(rng: random.Random, role: Role, org: Org) -> Resource:
    p = role.person
    country = org.city.country
    title = TITLES[role.title]
    langs = ("fa", "en") if country == "IR" else (("mn", "zh") if p.kind == "mn" else ("zh",))
    return {
        "resourceType": "Practitioner", "id": role.practitioner,
        "identifier": [{"system": SID_LICENCE[country], "value": role.licence}],
        "active": True, "name": p.human_names(),
        "telecom": [{"system": "phone", "value": _phone(rng, country, True, org.city),
                     "use": "mobile"},
                    {"system": "email", "use": "work", "value":
                     f"{p.latin_given.lower()}.{p.latin_family.lower()}.{role.practitioner[5:]}"
                     f"@{_slug(org.city.name)}.example.org"}],
        "gender": p.gender, "birthDate": role.birth,
        "qualification": [
            {"identifier": [{"system": SID_LICENCE[country], "value": role.licence}],
             "code": concept("http://terminology.hl7.org/CodeSystem/v2-0360", "MD",
                             "Doctor of Medicine"),
             "period": {"start": f"{role.since}-07-01"}},
            {"code": concept(CS_PROFESSIONAL_TITLE, role.title, title[0],
                             title[2] if country == "IR" else title[1]),
             "period": {"start": f"{min(role.since + 5, 2024)}-01-01"}},
        ],
        "communication": [concept(BCP47, code) for code in langs],
    }


def _practitioner_role(rng: random.Random, role: Role, org: Org) -> Resource:
    if role.kind == "expert":
        codes = [concept(CS_PRACTITIONER_ROLE, "expert", "Telemedicine expert")]
    else:
        codes = [concept(CS_PRACTITIONER_ROLE, "attending-physician", "Attending physician")]
    codes.append(concept("http://terminology.hl7.org/CodeSystem/practitioner-role", "doctor",
                         "Doctor"))
    if role.specialty:
        specialty = specialty_concept(role.specialty)
    else:
        specialty = concept(SNOMED, "394814009", "General practice")
    r: Resource = {
        "resourceType": "PractitionerRole", "id": role.id, "active": True,
        "period": {"start": f"{max(role.since, 2018)}-0{rng.randint(1, 9)}-01"},
        "practitioner": ref("Practitioner", role.practitioner),
        "organization": ref("Organization", org.id), "code": codes, "specialty": [specialty],
        "location": [ref("Location", location_id(org.id))],
        "telecom": [{"system": "phone", "value": _phone(rng, org.city.country, False, org.city),
                     "use": "work"}],
    }
    if role.kind == "expert":
        days = rng.sample(range(6), 3)
        r["availableTime"] = [{"daysOfWeek": [_WEEK[d] for d in sorted(days)],
                               "availableStartTime": "09:00:00", "availableEndTime": "16:00:00"}]
    return r


# =========================================================================== patients

_CUM_CITY = tuple(sum(c.weight for c in CITIES[:i + 1]) for i in range(len(CITIES)))
_FEVER = frozenset({"840539006", "385093006", "91302008", "56717001", "75702008", "4120002",
                    "74400008"})
_HYPOXIA = frozenset({"840539006", "385093006", "13645005", "67782005", "4120002"})


def _poisson(rng: random.Random, mean: float) -> int:
    """A Poisson draw (Knuth's method; the means here are small)."""
    limit, k, p = pow(2.718281828459045, -mean), 0, rng.random()
    while p > limit:
        k += 1
        p *= rng.random()
    return k


def _round(value: float, decimals: int) -> float | int:
    return int(round(value)) if decimals == 0 else round(value, decimals)


@dataclass(slots=True)
class _Visit:
    """What an encounter left behind: its id, where and when, and the evidence it produced."""

    id: str
    org: Org
    start: float
    end: float | None
    evidence: list[dict[str, str]]


@dataclass(slots=True)
class _Diagnosis:
    dx: Dx
    id: str
    onset: float
    resource: Resource


class _PatientBuilder:
    """One patient's record, from demographics to the telemedicine workflow.

    The order of the random draws is part of the output: change it and every patient changes.
    """

    def __init__(self, net: Network, seed: int, index: int) -> None:
        self.net = net
        self.rng = random.Random(f"{seed}:{index}")
        self.out: list[Resource] = []
        self.index = index
        self.consult_times: list[float] = []
        self.referral_times: list[float] = []
        self.hypertensive = False

    # -- helpers --------------------------------------------------------------------------

    def when(self, t: float) -> str:
        return _when(t, self.country)

    def new_id(self) -> str:
        return _uuid(self.rng)

    def emit(self, resource: Resource) -> Resource:
        self.out.append(resource)
        return resource

    def patient_ref(self) -> dict[str, str]:
        return ref("Patient", self.pid)

    # -- the patient ----------------------------------------------------------------------

    def build(self) -> list[Resource]:
        rng = self.rng
        self.city = rng.choices(CITIES, cum_weights=_CUM_CITY)[0]
        self.country = self.city.country
        care = self.net.care[self.city.name]
        level = 1 if rng.random() < 0.65 else 2
        self.home = rng.choice([o for o in care if o.level == level])
        self._demographics()
        self.consent_status = rng.choices(("active", "inactive", "rejected", "proposed"),
                                          cum_weights=(90, 94, 97, 100))[0]
        self.pid = self.new_id()
        self.emit(self._patient())
        consent_at = len(self.out)
        if self.age < 18:
            self.guardian = self.new_id()
            self.emit(self._related_person())
        diagnoses = [self._condition(dx) for dx in self._pick_diagnoses()]
        for d in diagnoses:
            self._course(d)
        for _ in range(_poisson(rng, 0.5) + (0 if diagnoses else 1)):
            t = rng.uniform(max(START_TIME, self.birth + 2 * _DAY), REFERENCE_TIME - 2 * _DAY)
            t = _office_hours(t, self.country, rng)
            self._visit(t, self._care_org(), "AMB", None, "185349003", "Encounter for check up")
        self._consents(consent_at)
        return self.out

    def _demographics(self) -> None:
        rng = self.rng
        r = rng.random()
        self.gender = ("female" if r < 0.51 else "male" if r < 0.995
                       else "other" if r < 0.998 else "unknown")
        r = rng.random()
        self.age = (0 if r < 0.04 else rng.randint(1, 14) if r < 0.14
                    else rng.randint(15, 64) if r < 0.62 else rng.randint(65, 95))
        self.birth = REFERENCE_TIME - self.age * _YEAR - rng.uniform(10 * _DAY, _YEAR - _DAY)
        name_gender = self.gender if self.gender in ("female", "male") else rng.choice(
            ("female", "male"))
        self.person = _person(rng, self.country, name_gender)
        female = name_gender == "female"
        if self.age >= 18:
            self.height = rng.gauss(160 if female else 172, 6)
            self.weight = self.height - 100 + rng.gauss(-2 if female else 0, 9)
        else:
            self.height = 50 + self.age * 6.2 + rng.gauss(0, 4)
            self.weight = 3.3 + self.age * 2.6 + rng.gauss(0, 1)

    def _identifiers(self) -> list[dict[str, Any]]:
        rng = self.rng
        birth = _day(self.birth, self.country)
        if self.country == "IR":
            nid = iran_national_code(f"{self.city.district_code}{rng.randrange(10**6):06d}")
            system = SID_IR_NATIONAL_CODE
        else:
            seq = rng.randrange(0, 100) * 10 + rng.choice((1, 3, 5, 7, 9) if self.gender == "male"
                                                          else (0, 2, 4, 6, 8))
            region = self.home.county.code if self.home.county else self.city.district_code
            nid = china_resident_id(region, birth, seq)
            system = SID_CN_RESIDENT_ID
        return [
            {"use": "official", "type": concept(V2_0203, "NI",
                                                "National unique individual identifier"),
             "system": system, "value": nid},
            {"use": "usual", "type": concept(V2_0203, "MR", "Medical record number"),
             "system": f"{SID_MRN}/{self.home.id}", "value": f"MRN{self.index + 100000:07d}"},
        ]

    def _patient(self) -> Resource:
        rng = self.rng
        p = self.person
        telecom = [{"system": "phone", "value": _phone(rng, self.country, True, self.city),
                    "use": "mobile", "rank": 1}]
        if self.age >= 18 and rng.random() < 0.3:
            telecom.append({"system": "email", "use": "home", "value":
                            f"{p.latin_given.lower()}.{p.latin_family.lower()}{self.index}"
                            f"@mail.example.org"})
        if self.country == "IR":
            langs = ["fa"] if self.city.name != "Tabriz" else ["az", "fa"]
        else:
            langs = ["mn", "zh"] if p.kind == "mn" else ["zh"]
        marital = (("S", "Never Married") if self.age < 22 else
                   rng.choice((("M", "Married"), ("M", "Married"), ("M", "Married"),
                               ("S", "Never Married"), ("W", "Widowed"), ("D", "Divorced"))))
        return {
            "resourceType": "Patient", "id": self.pid, "identifier": self._identifiers(),
            "active": True, "name": p.human_names(), "telecom": telecom, "gender": self.gender,
            "birthDate": _day(self.birth, self.country),
            "address": [_address(rng, self.city, self.home.county, "home")],
            "maritalStatus": concept("http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                     *marital),
            "communication": [{"language": concept(BCP47, code), "preferred": i == 0}
                              for i, code in enumerate(langs)],
            "managingOrganization": ref("Organization", self.home.id),
        }

    def _related_person(self) -> Resource:
        rng = self.rng
        mother = rng.random() < 0.7
        gender = "female" if mother else "male"
        person = _person(rng, self.country, gender)
        return {
            "resourceType": "RelatedPerson", "id": self.guardian, "active": True,
            "patient": self.patient_ref(),
            "relationship": [concept("http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                                     *(("MTH", "mother") if mother else ("FTH", "father")))],
            "name": person.human_names(),
            "telecom": [{"system": "phone", "value": _phone(rng, self.country, True, self.city),
                         "use": "mobile"}],
            "gender": gender,
        }

    def _care_org(self) -> Org:
        """Where a routine visit happens: at home, now and then at the county hospital."""
        if self.home.level == 1 and self.rng.random() < 0.15:
            return self.net.by_id[self.home.parent or self.home.id]
        return self.home

    # -- conditions -----------------------------------------------------------------------

    def _pick_diagnoses(self) -> list[Dx]:
        rng = self.rng
        age = self.age
        female = self.gender == "female"
        pool = [d for d in DIAGNOSES if d.ages[0] <= age <= d.ages[1] and (female or not d.female)]
        mean = (0.8 if age == 0 else 0.4 if age < 15 else 0.9 if age < 45 else 1.6 if age < 65
                else 2.3)
        picked: list[Dx] = []
        for _ in range(min(_poisson(rng, mean), len(pool), 5)):
            d = rng.choices(pool, weights=[x.weight for x in pool])[0]
            pool.remove(d)
            picked.append(d)
        return picked

    def _condition(self, dx: Dx) -> _Diagnosis:
        rng = self.rng
        earliest = self.birth + dx.ages[0] * _YEAR
        if dx.chronic:
            onset = rng.uniform(max(earliest, self.birth + _DAY), REFERENCE_TIME - 30 * _DAY)
        elif dx.snomed == "387712008":  # neonatal jaundice: the first days of life
            onset = self.birth + rng.uniform(2, 5) * _DAY
        else:
            onset = rng.uniform(max(earliest, START_TIME + 10 * _DAY), REFERENCE_TIME - 9 * _DAY)
        cid = self.new_id()
        self.hypertensive = self.hypertensive or dx.snomed == "59621000"
        r: Resource = {
            "resourceType": "Condition", "id": cid,
            "clinicalStatus": None, "verificationStatus": concept(
                "http://terminology.hl7.org/CodeSystem/condition-ver-status", "confirmed",
                "Confirmed"),
            "category": [concept("http://terminology.hl7.org/CodeSystem/condition-category",
                                 *(("problem-list-item", "Problem List Item") if dx.chronic else
                                   ("encounter-diagnosis", "Encounter Diagnosis")))],
            "code": {"coding": [coding(SNOMED, dx.snomed, dx.display),
                                coding(ICD10, dx.icd10)], "text": dx.display},
            "subject": self.patient_ref(),
            "onsetDateTime": _day(onset, self.country) if dx.chronic else self.when(onset),
            "recordedDate": (_day(onset, self.country) if dx.chronic
                             else self.when(onset + rng.uniform(0.1, 3) * _HOUR)),
        }
        self.emit(r)
        return _Diagnosis(dx, cid, onset, r)

    def _set_status(self, d: _Diagnosis, last_seen: float) -> None:
        """Clinical status from the course: acute illnesses resolve, chronic ones stay."""
        r = d.resource
        if d.dx.chronic:
            status = ("remission", "Remission") if (d.dx.specialty == "oncology"
                                                    and self.rng.random() < 0.3) else (
                "active", "Active")
        elif last_seen < REFERENCE_TIME - 45 * _DAY:
            status = ("resolved", "Resolved")
            r["abatementDateTime"] = self.when(last_seen + self.rng.uniform(7, 40) * _DAY)
        else:
            status = ("active", "Active")
        r["clinicalStatus"] = concept(
            "http://terminology.hl7.org/CodeSystem/condition-clinical", *status)

    def _course(self, d: _Diagnosis) -> None:
        """The encounters, consultations and referrals a diagnosis leads to."""
        rng = self.rng
        dx = d.dx
        last = d.onset
        if not dx.chronic:
            last = self._acute_episode(d)
        else:
            lo = max(START_TIME + 5 * _DAY, d.onset)
            for _ in range(_poisson(rng, 0.95)):
                t = _office_hours(rng.uniform(lo, REFERENCE_TIME - 2 * _DAY), self.country, rng)
                v = self._visit(t, self._care_org(), "AMB", d, "390906007", "Follow-up encounter")
                last = max(last, v.start)
            for _ in range(_poisson(rng, 0.45)):
                state = self._state(_CONSULT_STATE_WEIGHTS)
                t0 = self._request_time(state, lo)
                if t0 is not None:
                    if state not in _OPEN_STATES:
                        t0 = _office_hours(t0, self.country, rng)
                    self._consult_episode(d, state, t0, "AMB")
                    last = max(last, t0)
            if rng.random() < 0.06 and lo < REFERENCE_TIME - 10 * _DAY:
                self._referral_episode(d, rng.uniform(lo + _DAY, REFERENCE_TIME - 8 * _DAY))
        self._set_status(d, last)

    def _acute_episode(self, d: _Diagnosis) -> float:
        rng = self.rng
        dx = d.dx
        cls = "IMP" if dx.inpatient else "AMB"
        if rng.random() < (0.75 if dx.inpatient else 0.45):
            state = self._state(_CONSULT_STATE_WEIGHTS)
            if state in _OPEN_STATES and dx.snomed == "387712008":
                state = "completed"  # neonatal jaundice: only in the first days of life
            if state in _OPEN_STATES:
                t0 = self._request_time(state, START_TIME + 10 * _DAY)
                assert t0 is not None
            else:
                t0 = d.onset + rng.uniform(4, 30) * _HOUR
            if t0 < self.birth + _DAY or t0 > REFERENCE_TIME:
                t0 = min(max(self.birth + _DAY, d.onset), REFERENCE_TIME - _HOUR)
            d.onset = min(d.onset, t0 - 4 * _HOUR)
            d.resource["onsetDateTime"] = self.when(d.onset)
            d.resource["recordedDate"] = self.when(d.onset + _HOUR)
            visit = self._consult_episode(d, state, t0, cls)
        else:
            visit = self._visit(d.onset, self.home, "EMER" if dx.inpatient else "AMB", d,
                                "185345009", "Encounter for symptom")
        d.resource["encounter"] = ref("Encounter", visit.id)
        if dx.inpatient and rng.random() < 0.3 and visit.start < REFERENCE_TIME - 3 * _DAY:
            self._referral_episode(d, visit.start + rng.uniform(8, 48) * _HOUR, visit)
        return visit.start

    # -- encounters and their observations --------------------------------------------------

    def _visit(self, start: float, org: Org, cls: str, d: _Diagnosis | None, type_code: str,
               type_display: str, *, stay: float | None = None,
               labs: float = 0.35) -> _Visit:
        rng = self.rng
        if stay is None:
            stay = (rng.uniform(2, 9) * _DAY if cls == "IMP"
                    else rng.uniform(2, 8) * _HOUR if cls == "EMER" else rng.uniform(15, 45) * 60)
        end: float | None = start + stay
        if end is not None and end > REFERENCE_TIME:
            end = None
        vid = self.new_id()
        attending = rng.choice(self.net.attendings[org.id])
        enc: Resource = {
            "resourceType": "Encounter", "id": vid,
            "status": "finished" if end is not None else "in-progress",
            "class": coding(V3_ACT, cls, _ENCOUNTER_CLASS[cls]),
            "type": [concept(SNOMED, type_code, type_display)],
            "subject": self.patient_ref(),
            "participant": [{"type": [concept(
                "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "ATND",
                "attender")]}, ],
            "period": {"start": self.when(start)},
        }
        enc["participant"][0]["individual"] = ref("Practitioner", attending.practitioner)
        if end is not None:
            enc["period"]["end"] = self.when(end)
        if d is not None:
            enc["reasonCode"] = [{"coding": [coding(SNOMED, d.dx.snomed, d.dx.display)]}]
            enc["reasonReference"] = [ref("Condition", d.id)]
        if cls == "IMP" and end is not None:
            enc["hospitalization"] = {"dischargeDisposition": concept(
                "http://terminology.hl7.org/CodeSystem/discharge-disposition", "home", "Home")}
        enc["location"] = [{"location": ref("Location", location_id(org.id)),
                            "status": "completed" if end is not None else "active"}]
        enc["serviceProvider"] = ref("Organization", org.id)
        self.emit(enc)
        visit = _Visit(vid, org, start, end, [])
        self._vitals(visit, d, attending)
        if d is not None and rng.random() < labs and start < REFERENCE_TIME - 8 * _HOUR:
            self._labs(visit, d, 2 if labs >= 1 else 1)
        return visit

    def _obs(self, visit: _Visit, t: float, category: tuple[str, str], code: tuple[str, str],
             performer: dict[str, str]) -> Resource:
        return {
            "resourceType": "Observation", "id": self.new_id(), "status": "final",
            "category": [concept(OBS_CATEGORY, *category)],
            "code": {"coding": [coding(LOINC, *code)], "text": code[1]},
            "subject": self.patient_ref(), "encounter": ref("Encounter", visit.id),
            "effectiveDateTime": self.when(t), "performer": [performer],
        }

    def _vital(self, visit: _Visit, t: float, code: tuple[str, str], value: float, unit: str,
               performer: dict[str, str]) -> Resource:
        o = self._obs(visit, t, ("vital-signs", "Vital Signs"), code, performer)
        o["valueQuantity"] = quantity(value, unit)
        return self.emit(o)

    def _vitals(self, visit: _Visit, d: _Diagnosis | None, attending: Role) -> None:
        rng = self.rng
        t = visit.start + rng.uniform(5, 20) * 60
        who = ref("Practitioner", attending.practitioner)
        snomed = d.dx.snomed if d else ""
        age = self.age - (REFERENCE_TIME - visit.start) / _YEAR
        if age >= 3:
            sys_bp = 100 + max(age, 18) * 0.35 + rng.gauss(0, 10) + (
                28 if self.hypertensive else 0)
            bp = self._obs(visit, t, ("vital-signs", "Vital Signs"),
                           ("85354-9", "Blood pressure panel with all children optional"), who)
            bp["component"] = [
                {"code": concept(LOINC, "8480-6", "Systolic blood pressure"),
                 "valueQuantity": quantity(int(sys_bp), "mm[Hg]")},
                {"code": concept(LOINC, "8462-4", "Diastolic blood pressure"),
                 "valueQuantity": quantity(int(sys_bp * 0.63 + rng.gauss(0, 5)), "mm[Hg]")},
            ]
            self.emit(bp)
            visit.evidence.append(ref("Observation", bp["id"]))
        hr = (130 - age * 4 if age < 12 else 74) + rng.gauss(0, 9) + (
            22 if snomed == "49436004" else 0)
        self._vital(visit, t, ("8867-4", "Heart rate"), int(hr), "/min", who)
        if snomed in _FEVER:
            self._vital(visit, t, ("8310-5", "Body temperature"),
                        round(rng.uniform(38.0, 39.8), 1), "Cel", who)
        elif rng.random() < 0.5:
            self._vital(visit, t, ("8310-5", "Body temperature"),
                        round(rng.gauss(36.7, 0.25), 1), "Cel", who)
        spo2 = rng.randint(84, 93) if snomed in _HYPOXIA else rng.randint(95, 99)
        o = self._vital(visit, t, ("59408-5", "Oxygen saturation in Arterial blood by Pulse "
                                   "oximetry"), spo2, "%", who)
        if snomed in _HYPOXIA:
            visit.evidence.append(ref("Observation", o["id"]))
        if visit.org.level > 1 and rng.random() < 0.3 or snomed in _HYPOXIA:
            self._vital(visit, t, ("9279-1", "Respiratory rate"),
                        int(rng.gauss(16 if age >= 12 else 30, 2) + (8 if snomed else 0)), "/min",
                        who)
        if rng.random() < 0.45:
            w = max(self.weight + rng.gauss(0, 1.5), 2.0)
            self._vital(visit, t, ("29463-7", "Body weight"), round(w, 1), "kg", who)
            if age >= 18 and rng.random() < 0.25:
                self._vital(visit, t, ("8302-2", "Body height"), round(self.height, 1), "cm",
                            who)
                self._vital(visit, t, ("39156-5", "Body mass index (BMI) [Ratio]"),
                            round(w / (self.height / 100) ** 2, 1), "kg/m2", who)

    def _labs(self, visit: _Visit, d: _Diagnosis, tests: int) -> None:
        """The diagnosis' first (most telling) test and, for ``tests`` > 1, one other."""
        rng = self.rng
        keys = d.dx.labs[:1]
        if tests > 1 and len(d.dx.labs) > 1:
            keys += (rng.choice(d.dx.labs[1:]),)
        t = visit.start + rng.uniform(20, 60) * 60
        issued = t + rng.uniform(40, 120) * 60
        lab_org = visit.org if visit.org.level > 1 else self.net.by_id[visit.org.parent or
                                                                          visit.org.id]
        performer = ref("Organization", lab_org.id)
        for key in keys:
            if key in PANELS:
                code, display, section, members = PANELS[key]
                results = [self._lab(visit, t, issued, LABS[m], performer, d) for m in members]
                rid = self.new_id()
                self.emit({
                    "resourceType": "DiagnosticReport", "id": rid, "status": "final",
                    "category": [concept(V2_0074, section, _SECTION_DISPLAY[section])],
                    "code": {"coding": [coding(LOINC, code, display)], "text": display},
                    "subject": self.patient_ref(), "encounter": ref("Encounter", visit.id),
                    "effectiveDateTime": self.when(t), "issued": self.when(issued),
                    "performer": [performer],
                    "result": [ref("Observation", o["id"]) for o in results],
                })
                visit.evidence.append(ref("DiagnosticReport", rid))
            elif key == "covid-pcr":
                o = self._obs(visit, t, ("laboratory", "Laboratory"), COVID_PCR, performer)
                o["issued"] = self.when(issued + 4 * _HOUR)
                o["valueCodeableConcept"] = concept(SNOMED, *(
                    ("260373001", "Detected") if rng.random() < 0.85 else
                    ("260415000", "Not detected")))
                self.emit(o)
                visit.evidence.append(ref("Observation", o["id"]))
            else:
                o = self._lab(visit, t, issued, LABS[key], performer, d)
                visit.evidence.append(ref("Observation", o["id"]))

    def _lab(self, visit: _Visit, t: float, issued: float, lab: Lab, performer: dict[str, str],
             d: _Diagnosis) -> Resource:
        rng = self.rng
        lo, hi = lab.abnormal if rng.random() < 0.6 else lab.normal
        value = _round(rng.uniform(lo, hi), lab.decimals)
        o = self._obs(visit, t, ("laboratory", "Laboratory"), (lab.loinc, lab.display), performer)
        o["issued"] = self.when(issued)
        o["valueQuantity"] = quantity(value, lab.unit)
        flag = (("H", "High") if value > lab.normal[1] else ("L", "Low")
                if value < lab.normal[0] else ("N", "Normal"))
        o["interpretation"] = [concept(INTERPRETATION, *flag)]
        o["referenceRange"] = [{"low": quantity(lab.normal[0], lab.unit),
                                "high": quantity(lab.normal[1], lab.unit)}]
        return self.emit(o)

    # -- telemedicine workflow ------------------------------------------------------------

    def _state(self, weights: tuple[int, ...]) -> str:
        return self.rng.choices(TASK_STATES, weights=weights)[0]

    def _request_time(self, state: str, lo: float) -> float | None:
        """When a request in ``state`` was filed: open ones in the last days before the
        reference time (some past their deadline), closed ones any time after ``lo``."""
        if state in _OPEN_STATES:
            return REFERENCE_TIME - self.rng.uniform(*_OPEN_AGE[state]) * _HOUR
        hi = REFERENCE_TIME - 7 * _DAY
        return self.rng.uniform(lo, hi) if lo < hi else None

    def _performer(self, org: Org, specialty: str) -> Org:
        """The invited organisation: one above the inviting one with an expert of the
        specialty, the nearest most often."""
        above = [o for o in self.net.higher(org) if (o.id, specialty) in self.net.experts]
        return self.rng.choices(above, weights=(6, 3, 1)[:len(above)])[0]

    def _consult_episode(self, d: _Diagnosis, state: str, t0: float, cls: str) -> _Visit:
        rng = self.rng
        org = self.home
        if cls == "IMP":
            if org.level == 1 and rng.random() < 0.5:
                org = self.net.by_id[org.parent or org.id]
            reason = rng.choice(("inpatient-undiagnosed", "sudden-deterioration",
                                 "cross-specialty-complication",
                                 "complex-surgery" if d.dx.specialty == "surgery"
                                 else "inpatient-undiagnosed"))
            lead = (rng.uniform(3, 5) * _DAY if reason == "inpatient-undiagnosed"
                    else rng.uniform(8, 30) * _HOUR)
            stay = lead + rng.uniform(2, 9) * _DAY
        else:
            reason = rng.choice(("difficult-outpatient", "difficult-outpatient",
                                 "patient-request"))
            lead = rng.uniform(6.5, 24) * _HOUR
            stay = rng.uniform(15, 45) * 60
        start = max(t0 - lead, self.birth + _HOUR)
        visit = self._visit(start, org, cls, d, "185345009", "Encounter for symptom", stay=stay,
                            labs=1.0)
        reject = None
        if self.consent_status != "active" and state in ("accepted", "in-progress",
                                                         "completed"):
            state, reject = "rejected", "no-active-consent"
        self.consult_times.append(t0)
        self._consultation(d, visit, state, t0, reason, reject)
        return visit

    def _timeline(self, state: str, t0: float, urgent: bool) -> dict[str, float]:
        """When each step of a consultation happened, consistent with its state."""
        u = self.rng.uniform
        received = t0 + (u(2, 20) if urgent else u(5, 90)) * 60
        decided = received + (u(10, 90) * 60 if urgent else u(0.5, 20) * _HOUR)
        session = decided + (u(0.5, 4) if urgent else u(2, 40)) * _HOUR
        if self.rng.random() < 0.1:
            session += u(2, 30) * _HOUR  # late, past the deadline
        if not urgent:
            decided = _office_hours(decided, self.country, self.rng)
            session = _office_hours(max(session, decided + _HOUR), self.country, self.rng)
        # What has happened by the reference time must lie before it.
        if state != "requested" and received > REFERENCE_TIME:
            received = t0 + (REFERENCE_TIME - t0) * u(0.1, 0.4)
        if state in ("accepted", "rejected") and decided > REFERENCE_TIME:
            decided = received + (REFERENCE_TIME - received) * u(0.2, 0.9)
        if state == "accepted":
            session = max(session, REFERENCE_TIME + u(1, 40) * _HOUR)
        elif state == "in-progress":
            session = REFERENCE_TIME - u(5, 40) * 60
            received = min(received, t0 + (session - t0) * 0.2)
            decided = received + (session - received) * u(0.2, 0.8)
        minutes = self.rng.choice((20, 30, 30, 45, 60))
        end = session + minutes * 60
        report = end + (u(5, 30) if self.rng.random() < 0.9 else u(30, 180)) * 60
        cancelled = t0 + u(1, 48) * _HOUR
        if cancelled > REFERENCE_TIME:
            cancelled = t0 + (REFERENCE_TIME - t0) * u(0.2, 0.9)
        return {"received": received, "decided": decided, "session": session, "end": end,
                "report": report, "minutes": minutes, "cancelled": cancelled}

    def _consultation(self, d: _Diagnosis, visit: _Visit, state: str, t0: float, reason: str,
                      reject: str | None) -> None:
        rng = self.rng
        dx = d.dx
        ctype = rng.choice(dx.consults)
        urgent = rng.random() < (0.45 if dx.inpatient else 0.15)
        requester = rng.choice(self.net.attendings[visit.org.id])
        performer = self._performer(visit.org, dx.specialty)
        expert = rng.choice(self.net.experts[(performer.id, dx.specialty)])
        named = rng.random() < 0.3
        deadline = t0 + (48 * _HOUR if not urgent else 8 * _HOUR if visit.org.level == 1
                         else 5 * _HOUR)
        times = self._timeline(state, t0, urgent)
        sr_id, task_id = self.new_id(), self.new_id()
        sr: Resource = {
            "resourceType": "ServiceRequest", "id": sr_id,
            "identifier": [{"system": SID_REQUISITION, "value": f"TC-{sr_id[:8].upper()}"}],
            "status": _SR_STATUS[state], "intent": "order",
            "category": [consultation_type_concept(ctype)],
            "priority": "urgent" if urgent else "routine",
            "code": concept(SNOMED, "448337001", "Telemedicine consultation with patient"),
            "subject": self.patient_ref(), "encounter": ref("Encounter", visit.id),
            "occurrenceDateTime": self.when(t0 + (4 if urgent else 24) * _HOUR),
            "authoredOn": self.when(t0),
            "requester": ref("PractitionerRole", requester.id),
            "performerType": specialty_concept(dx.specialty),
            "performer": [ref("Organization", performer.id)],
            "reasonCode": [concept(CS_CONSULTATION_REASON, reason, CONSULTATION_REASONS[reason]),
                           concept(SNOMED, dx.snomed, dx.display)],
            "reasonReference": [ref("Condition", d.id)],
            "supportingInfo": [dict(e) for e in visit.evidence[:4]],
            "note": [{"text": f"{CONSULTATION_TYPES[ctype]} requested for {dx.display.lower()}"
                              f" ({CONSULTATION_REASONS[reason].lower()})."}],
        }
        if not sr["supportingInfo"]:
            del sr["supportingInfo"]
        if named:
            sr["performer"].append(ref("PractitionerRole", expert.id))
        self.emit(sr)
        task = self._task(task_id, sr_id, visit, state, t0, urgent, requester, deadline, times)
        task["owner"] = (ref("PractitionerRole", expert.id)
                         if state in ("accepted", "in-progress", "completed")
                         else ref("Organization", performer.id))
        if state == "rejected":
            code = reject or rng.choice(_REJECT_CODES)
            task["statusReason"] = concept(CS_REJECTION_REASON, code, REJECTION_REASONS[code])
        if state in _BUSINESS_STATUS:
            step = _BUSINESS_STATUS[state]
            if state == "completed" and rng.random() < 0.1:
                step = "report-signed"
            task["businessStatus"] = concept(CS_CONSULTATION_STEP, step, CONSULTATION_STEPS[step])
        self.emit(task)
        if state in ("accepted", "in-progress", "completed"):
            self._appointment(d, sr_id, ctype, urgent, requester, expert, performer, times,
                              state)
        if state == "completed":
            report = self._report(d, sr_id, visit, ctype, expert, performer, times)
            task["output"] = [{"type": concept(LOINC, "11488-4", "Consult note"),
                               "valueReference": ref("DiagnosticReport", report)}]

    def _task(self, task_id: str, focus: str, visit: _Visit, state: str, t0: float,
              urgent: bool, requester: Role, deadline: float,
              times: dict[str, float]) -> Resource:
        task: Resource = {
            "resourceType": "Task", "id": task_id, "status": state, "intent": "order",
            "priority": "urgent" if urgent else "routine",
            "code": concept("http://hl7.org/fhir/CodeSystem/task-code", "fulfill",
                            "Fulfill the focal request"),
            "focus": ref("ServiceRequest", focus), "for": self.patient_ref(),
            "encounter": ref("Encounter", visit.id), "authoredOn": self.when(t0),
            "lastModified": self.when(_last_change(state, t0, times)),
            "requester": ref("PractitionerRole", requester.id),
            "restriction": {"period": {"end": self.when(deadline)}},
        }
        if state == "cancelled":
            task["statusReason"] = {"text": "Withdrawn by the inviting organisation"}
        if state == "in-progress":
            task["executionPeriod"] = {"start": self.when(times["session"])}
        elif state == "completed":
            task["executionPeriod"] = {"start": self.when(times["session"]),
                                       "end": self.when(times["report"])}
        return task

    def _appointment(self, d: _Diagnosis, sr_id: str, ctype: str, urgent: bool,
                     requester: Role, expert: Role, performer: Org, times: dict[str, float],
                     state: str) -> None:
        def actor(r: dict[str, str]) -> dict[str, Any]:
            return {"actor": r, "required": "required", "status": "accepted"}

        self.emit({
            "resourceType": "Appointment", "id": self.new_id(),
            "status": _APPOINTMENT_STATUS[state],
            "serviceType": [consultation_type_concept(ctype)],
            "specialty": [specialty_concept(d.dx.specialty)],
            "appointmentType": concept("http://terminology.hl7.org/CodeSystem/v2-0276",
                                       *(("EMERGENCY", "Emergency appointment") if urgent else
                                         ("ROUTINE", "Routine appointment - default if not "
                                          "valued"))),
            "reasonReference": [ref("Condition", d.id)],
            "priority": 1 if urgent else 5,
            "description": f"{CONSULTATION_TYPES[ctype]}: {d.dx.display}",
            "start": self.when(times["session"]), "end": self.when(times["end"]),
            "minutesDuration": int(times["minutes"]), "created": self.when(times["decided"]),
            "basedOn": [ref("ServiceRequest", sr_id)],
            "participant": [actor(self.patient_ref()),
                            actor(ref("PractitionerRole", requester.id)),
                            actor(ref("PractitionerRole", expert.id)),
                            actor(ref("Location", location_id(performer.id)))],
        })

    def _report(self, d: _Diagnosis, sr_id: str, visit: _Visit, ctype: str, expert: Role,
                performer: Org, times: dict[str, float]) -> str:
        code, display, section = _CONSULT_REPORT.get(ctype, _CONSULT_NOTE)
        rid = self.new_id()
        self.emit({
            "resourceType": "DiagnosticReport", "id": rid,
            "basedOn": [ref("ServiceRequest", sr_id)], "status": "final",
            "category": [concept(V2_0074, section, _SECTION_DISPLAY[section]),
                         consultation_type_concept(ctype)],
            "code": {"coding": [coding(LOINC, code, display)],
                     "text": f"{CONSULTATION_TYPES[ctype]} report"},
            "subject": self.patient_ref(), "encounter": ref("Encounter", visit.id),
            "effectiveDateTime": self.when(times["session"]),
            "issued": self.when(times["report"]),
            "performer": [ref("PractitionerRole", expert.id), ref("Organization", performer.id)],
            "resultsInterpreter": [ref("PractitionerRole", expert.id)],
            "conclusion": self.rng.choice(_CONCLUSIONS).format(dx=d.dx.display.lower()),
            "conclusionCode": [concept(SNOMED, d.dx.snomed, d.dx.display)],
        })
        return rid

    # -- referrals ------------------------------------------------------------------------

    def _referral_episode(self, d: _Diagnosis, t0: float, visit: _Visit | None = None) -> None:
        """An up-referral; once the patient has been admitted, often a down-referral back."""
        rng = self.rng
        state = self._state(_REFERRAL_STATE_WEIGHTS)
        if state in _OPEN_STATES:
            t0 = REFERENCE_TIME - rng.uniform(1, 72) * _HOUR
            visit = None
        if visit is None:
            visit = self._visit(t0 - rng.uniform(8, 24) * _HOUR, self.home,
                                "EMER" if d.dx.inpatient else "AMB", d, "185345009",
                                "Encounter for symptom", labs=0.8)
        src = visit.org
        dest = self._performer(src, d.dx.specialty)
        urgent = d.dx.inpatient and rng.random() < 0.5
        code = rng.choice(tuple(REFERRAL_UP))
        self._referral(d, visit, "up", state, t0, src, dest, code, urgent)
        admit = t0 + rng.uniform(2, 36) * _HOUR
        if state != "completed" or admit > REFERENCE_TIME - _HOUR:
            return
        stay = rng.uniform(3, 12) * _DAY
        admission = self._visit(admit, dest, "IMP", d, "32485007", "Hospital admission",
                                stay=stay, labs=0.5)
        t1 = admit + stay + rng.uniform(0.5, 6) * _HOUR
        if admission.end is None or t1 > REFERENCE_TIME - _HOUR or rng.random() < 0.45:
            return
        if t1 > REFERENCE_TIME - 3 * _DAY:  # too recent to have been carried out
            down = rng.choice(("requested", "received", "accepted", "in-progress", "rejected",
                               "cancelled"))
        else:
            down = rng.choices(("completed", "rejected", "cancelled"), cum_weights=(85, 93, 100))[0]
        if down in _OPEN_STATES:
            t1 = min(t1, REFERENCE_TIME - rng.uniform(*_OPEN_AGE[down]) * _HOUR)
            t1 = max(t1, admit + _HOUR)
        self._referral(d, admission, "down", down, t1, dest, src,
                       rng.choice(tuple(REFERRAL_DOWN)), False)

    def _referral(self, d: _Diagnosis, visit: _Visit, direction: str, state: str, t0: float,
                  src: Org, dest: Org, indication: str, urgent: bool) -> None:
        rng = self.rng
        indications = REFERRAL_UP if direction == "up" else REFERRAL_DOWN
        requester = rng.choice(self.net.attendings[src.id])
        sr_id, task_id = self.new_id(), self.new_id()
        sr: Resource = {
            "resourceType": "ServiceRequest", "id": sr_id,
            "extension": [{"url": EXT_REFERRAL_DIRECTION, "valueCode": direction}],
            "identifier": [{"system": SID_REQUISITION, "value": f"RF-{sr_id[:8].upper()}"}],
            "status": _SR_STATUS[state], "intent": "order",
            "category": [consultation_type_concept("referral")],
            "priority": "urgent" if urgent else "routine",
            "code": concept(SNOMED, "3457005", "Patient referral"),
            "subject": self.patient_ref(), "encounter": ref("Encounter", visit.id),
            "authoredOn": self.when(t0),
            "requester": ref("PractitionerRole", requester.id),
            "performerType": specialty_concept(d.dx.specialty),
            "performer": [ref("Organization", dest.id)],
            "reasonCode": [concept(CS_REFERRAL_INDICATION, indication, indications[indication]),
                           concept(SNOMED, d.dx.snomed, d.dx.display)],
            "reasonReference": [ref("Condition", d.id)],
        }
        if visit.evidence:
            sr["supportingInfo"] = [dict(e) for e in visit.evidence[:4]]
        self.emit(sr)
        self.referral_times.append(t0)
        times = self._timeline(state, t0, urgent)
        deadline = t0 + (6 if urgent else 72) * _HOUR
        task = self._task(task_id, sr_id, visit, state, t0, urgent, requester, deadline, times)
        task["owner"] = ref("Organization", dest.id)
        if state == "rejected":
            code = rng.choice(_REJECT_CODES)
            task["statusReason"] = concept(CS_REJECTION_REASON, code, REJECTION_REASONS[code])
        self.emit(task)

    # -- consent --------------------------------------------------------------------------

    def _consents(self, at: int) -> None:
        """Consents go right after the patient, dated before the first request they cover."""
        rng = self.rng
        made = []
        first = min(self.consult_times, default=None)
        if first is None and rng.random() < 0.5:
            first = rng.uniform(max(START_TIME, self.birth + _DAY), REFERENCE_TIME - _DAY)
        if first is not None:
            made.append(self._consent("telemedicine-consultation",
                                      first - rng.uniform(0.5, 20) * _HOUR, self.consent_status))
        if self.referral_times:
            made.append(self._consent("referral", min(self.referral_times)
                                      - rng.uniform(0.2, 6) * _HOUR, "active"))
        self.out[at:at] = made

    def _consent(self, kind: str, t: float, status: str) -> Resource:
        t = max(t, self.birth + _HOUR)
        performer = (ref("RelatedPerson", self.guardian) if self.age < 18
                     else self.patient_ref())
        provision: dict[str, Any] = {"type": "permit", "period": {"start": self.when(t)},
                                     "purpose": [coding("http://terminology.hl7.org/CodeSystem/"
                                                        "v3-ActReason", "TREAT", "treatment")]}
        if status == "inactive":
            provision["period"]["end"] = self.when(min(t + self.rng.uniform(30, 400) * _DAY,
                                                       REFERENCE_TIME - _HOUR))
        return {
            "resourceType": "Consent", "id": self.new_id(), "status": status,
            "scope": concept("http://terminology.hl7.org/CodeSystem/consentscope", "treatment",
                             "Treatment"),
            "category": [concept(LOINC, "59284-0"),
                         concept(CS_CONSENT_CATEGORY, kind, _CONSENT_KINDS[kind])],
            "patient": self.patient_ref(), "dateTime": self.when(t), "performer": [performer],
            "organization": [ref("Organization", self.home.id)],
            "policyRule": concept(V3_ACT, "OPTIN", "opt-in"),
            "provision": provision,
        }


_OPEN_AGE = {"requested": (0.2, 60), "received": (1, 60), "accepted": (2, 40),
             "in-progress": (3, 48)}
_SR_STATUS = {"requested": "active", "received": "active", "accepted": "active",
              "in-progress": "active", "completed": "completed", "rejected": "revoked",
              "cancelled": "revoked"}
_APPOINTMENT_STATUS = {"accepted": "booked", "in-progress": "arrived", "completed": "fulfilled"}
_BUSINESS_STATUS = {"accepted": "scheduled", "in-progress": "report-pending",
                    "completed": "report-delivered"}
_REJECT_CODES = tuple(c for c in REJECTION_REASONS if c != "no-active-consent")
_CONSENT_KINDS = {"telemedicine-consultation": "Telemedicine consultation consent",
                  "referral": "Referral consent"}
_CONCLUSIONS = (
    "Findings consistent with {dx}; continue treatment at the inviting organisation with the "
    "adjustments discussed.",
    "{dx} confirmed; treatment plan revised, follow-up teleconsultation in four weeks.",
    "Findings compatible with {dx}; further work-up recommended before any change of therapy.",
    "No evidence of progression of {dx}; current management to continue.",
)


def _last_change(state: str, t0: float, times: dict[str, float]) -> float:
    """The moment the Task last changed state."""
    return {"requested": t0, "received": times["received"], "accepted": times["decided"],
            "rejected": times["decided"], "in-progress": times["session"],
            "completed": times["report"], "cancelled": times["cancelled"]}[state]


# =========================================================================== public forms

def patient_resources(seed: int, index: int) -> list[Resource]:
    """Every resource of patient ``index`` (0-based) of the data set of ``seed``."""
    return _PatientBuilder(network(seed), seed, index).build()


def iter_resources(patients: int, seed: int = 1) -> Iterator[Resource]:
    """Every resource, with its client-assigned id and ``Type/id`` references: the network
    first (organisations parents first, locations, practitioners, roles), then patient by
    patient."""
    yield from _network_resources(seed)
    for i in range(patients):
        yield from patient_resources(seed, i)


def network_full_url(resource_type: str, rid: str) -> str:
    """The ``urn:uuid`` a transaction Bundle gives a shared network resource."""
    return f"urn:uuid:{uuid.uuid5(_NETWORK_NS, f'{resource_type}/{rid}')}"


def _put_entry(r: Resource) -> dict[str, Any]:
    t, rid = r["resourceType"], r["id"]
    return {"fullUrl": network_full_url(t, rid), "resource": r,
            "request": {"method": "PUT", "url": f"{t}/{rid}"}}


def _rewrite(node: Any, local: set[str]) -> None:
    """Point the references to resources of the same Bundle at their ``urn:uuid``."""
    if isinstance(node, dict):
        target = node.get("reference")
        if isinstance(target, str):
            rid = target.partition("/")[2]
            if rid in local:
                node["reference"] = f"urn:uuid:{rid}"
        for v in node.values():
            if isinstance(v, (dict, list)):
                _rewrite(v, local)
    elif isinstance(node, list):
        for v in node:
            if isinstance(v, (dict, list)):
                _rewrite(v, local)


def _post_entries(resources: list[Resource]) -> list[dict[str, Any]]:
    """POST entries as a client sends new resources: no id, a ``urn:uuid`` fullUrl, and the
    references between them written with those fullUrls for the server to resolve."""
    local = {r["id"] for r in resources}
    entries = []
    for r in resources:
        rid = r.pop("id")
        _rewrite(r, local)
        entries.append({"fullUrl": f"urn:uuid:{rid}", "resource": r,
                        "request": {"method": "POST", "url": r["resourceType"]}})
    return entries


def _bundle(entries: list[dict[str, Any]]) -> Resource:
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


def iter_bundles(patients: int, seed: int = 1, size: int = 50) -> Iterator[Resource]:
    """Transaction Bundles of about ``size`` entries: the network as ``PUT Type/id``, then the
    patients' resources as ``POST``, a patient never split between two Bundles (so each Bundle
    refers only to its own entries and to the network)."""
    batch: list[dict[str, Any]] = []
    for r in _network_resources(seed):
        batch.append(_put_entry(r))
        if len(batch) >= size:
            yield _bundle(batch)
            batch = []
    if batch:
        yield _bundle(batch)
        batch = []
    for i in range(patients):
        entries = _post_entries(patient_resources(seed, i))
        if batch and abs(len(batch) - size) <= abs(len(batch) + len(entries) - size):
            yield _bundle(batch)
            batch = []
        batch.extend(entries)
    if batch:
        yield _bundle(batch)

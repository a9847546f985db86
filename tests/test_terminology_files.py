"""The terminology files under terminology/: valid R4 resources, consistent with each other, and
every concept named in English, Persian and Chinese."""

from __future__ import annotations

import json
import re
import unicodedata
from pathlib import Path
from typing import Any

import pytest

from server.fhir.validation import validate_resource
from server.terminology import builtin_resources

TERMINOLOGY = Path(__file__).resolve().parents[1] / "terminology"
BASE = "https://fhir.consilium.health"
FILES = sorted(TERMINOLOGY.glob("*.json"))
_PERSIAN_LETTERS = re.compile(r"[\u0600-\u06FF]")
_HAN = re.compile(r"[\u4e00-\u9fff]")


def _load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def _concepts(items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for c in items:
        out.append(c)
        out += _concepts(c.get("concept") or [])
    return out


def _code_systems() -> dict[str, dict[str, Any]]:
    return {r["url"]: r for r in map(_load, FILES) if r["resourceType"] == "CodeSystem"}


def _codes(name: str) -> set[str]:
    return {c["code"] for c in _concepts(_code_systems()[f"{BASE}/CodeSystem/{name}"]["concept"])}


def test_there_are_files() -> None:
    kinds = {_load(p)["resourceType"] for p in FILES}
    assert kinds == {"CodeSystem", "ValueSet"}
    assert len(FILES) >= 30


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.name)
def test_file_is_a_valid_r4_resource(path: Path) -> None:
    resource = _load(path)
    assert validate_resource(resource, resource["resourceType"]) == []
    kind, id_ = resource["resourceType"], resource["id"]
    assert path.name == f"{kind}-{id_}.json"
    assert resource["url"] == f"{BASE}/{kind}/{id_}"
    assert resource["version"] == "0.1.0"
    assert resource["status"] == "active"
    assert re.fullmatch(r"[A-Z][A-Za-z0-9_]{0,254}", resource["name"])  # inv-0 (name)


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("CodeSystem-")],
                         ids=lambda p: p.name)
def test_every_concept_is_named_in_english_persian_and_chinese(path: Path) -> None:
    cs = _load(path)
    concepts = _concepts(cs["concept"])
    assert concepts
    for c in concepts:
        assert c.get("display"), c["code"]
        preferred = {d["language"]: d["value"] for d in c.get("designation", [])
                     if "use" not in d}
        assert set(preferred) >= {"en", "fa", "zh"}, c["code"]
        assert preferred["en"] == c["display"]
        assert _PERSIAN_LETTERS.search(preferred["fa"]), (c["code"], preferred["fa"])
        assert _HAN.search(preferred["zh"]), (c["code"], preferred["zh"])
        for d in c["designation"]:
            assert d["value"] == d["value"].strip() and d["value"]
            assert unicodedata.is_normalized("NFC", d["value"])
            if d["language"] == "fa":
                # Persian yeh and kaf (U+06CC, U+06A9), not the Arabic letters (U+064A, U+0643).
                assert not re.search("[\u064a\u0643]", d["value"]), (c["code"], d["value"])


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("CodeSystem-")],
                         ids=lambda p: p.name)
def test_code_system_is_consistent(path: Path) -> None:
    cs = _load(path)
    concepts = _concepts(cs["concept"])
    codes = [c["code"] for c in concepts]
    assert len(codes) == len(set(codes)), "duplicate codes"
    assert cs["count"] == len(codes)
    assert cs["content"] == "complete"
    declared = {p["code"]: p["type"] for p in cs.get("property", [])}
    key_of = {"code": "valueCode", "string": "valueString", "integer": "valueInteger",
              "boolean": "valueBoolean", "Coding": "valueCoding", "dateTime": "valueDateTime",
              "decimal": "valueDecimal"}
    for c in concepts:
        for p in c.get("property", []):
            assert p["code"] in declared, (c["code"], p["code"])
            assert key_of[declared[p["code"]]] in p, (c["code"], p)
    # Its all-codes ValueSet exists and includes the whole system.
    vs = _load(TERMINOLOGY / f"ValueSet-{cs['id']}.json")
    assert cs["valueSet"] == vs["url"]
    assert vs["compose"] == {"include": [{"system": cs["url"]}]}


@pytest.mark.parametrize("path", [p for p in FILES if p.name.startswith("ValueSet-")],
                         ids=lambda p: p.name)
def test_value_set_draws_on_known_code_systems(path: Path) -> None:
    vs = _load(path)
    systems = _code_systems()
    for part in vs["compose"]["include"] + vs["compose"].get("exclude", []):
        cs = systems[part["system"]]
        codes = {c["code"] for c in _concepts(cs["concept"])}
        declared = {p["code"] for p in cs.get("property", [])} | {"concept", "code"}
        for c in part.get("concept", []):
            assert c["code"] in codes
        for f in part.get("filter", []):
            assert f["property"] in declared
            if f["op"] == "is-a":
                assert f["value"] in codes


def test_codes_the_brief_and_the_documents_require() -> None:
    assert _codes("consultation-type") >= {
        "teleconsultation", "remote-imaging", "remote-pathology", "remote-ecg",
        "remote-ultrasound", "remote-eeg", "remote-emg", "remote-monitoring",
        "remote-outpatient", "case-discussion", "multidisciplinary", "referral"}
    # The ten specialties of the Iranian roadmap (step 2), with the codes other code uses.
    assert _codes("specialty") >= {
        "critical-care", "pulmonology", "infectious-disease", "nephrology", "oncology",
        "obstetrics-gynaecology", "paediatrics", "neurology", "cardiology", "surgery",
        "radiology", "pathology", "ultrasound", "electrocardiography", "internal-medicine",
        "general-practice"}
    assert _codes("consultation-reason") >= {
        "inpatient-undiagnosed", "sudden-deterioration", "cross-specialty-complication",
        "complex-surgery", "difficult-outpatient", "patient-request"}
    assert _codes("referral-direction") == {"up", "down"}
    assert _codes("care-level") == {"1", "2", "3"}
    assert _codes("service-level") == {"basic", "standard", "advanced"}
    assert _codes("quality-grade") == {"excellent", "qualified", "unqualified"}
    assert _codes("business-status") >= {
        "expert-assigned", "scheduled", "awaiting-information", "information-provided",
        "in-session", "report-pending", "report-signed", "report-delivered", "rated",
        "confirmed-by-sender", "confirmed-by-receiver", "transferred-out", "transferred-in"}
    assert _codes("professional-title") >= {
        "senior", "associate-senior", "intermediate", "junior", "behvarz", "nurse",
        "general-practitioner", "specialist", "subspecialist"}
    assert _codes("expert-pool-status") >= {"nominated", "approved", "active", "suspended",
                                            "removed"}
    assert _codes("consent-category") >= {"telemedicine-consultation", "referral"}
    assert _codes("request-channel") >= {"platform", "phone", "email"}
    assert _codes("decline-reason") >= {
        "outside-licensed-scope", "outside-practice-scope", "inviting-side-cannot-treat",
        "no-active-consent", "missing-content", "no-expert-available"}


def test_terms_taken_from_the_source_documents() -> None:
    """Where the documents name a concept, the designation uses their wording."""
    def preferred(name: str, code: str, lang: str) -> str:
        cs = _code_systems()[f"{BASE}/CodeSystem/{name}"]
        concept = next(c for c in _concepts(cs["concept"]) if c["code"] == code)
        return next(d["value"] for d in concept["designation"]
                    if d["language"] == lang and "use" not in d)

    seeds = Path(__file__).resolve().parents[2] / "shared" / "seeds"
    zh_doc = (seeds / "inner-mongolia-telemedicine-rules-zh.txt")
    if not zh_doc.exists():
        pytest.skip("source documents not beside the repository")
    zh = zh_doc.read_text(encoding="utf-8")
    fa = (seeds / "iran-telemedicine-roadmap-fa.txt").read_text(encoding="utf-8")
    fa = fa.translate(str.maketrans({"\u064a": "\u06cc"})).replace("\u200c", " ")
    for name, code in (("consultation-type", "teleconsultation"),
                       ("consultation-type", "remote-monitoring"),
                       ("consultation-type", "remote-outpatient"),
                       ("consultation-type", "case-discussion"),
                       ("quality-grade", "excellent"), ("quality-grade", "unqualified"),
                       ("referral-direction", "up"), ("referral-direction", "down"),
                       ("consultation-type", "multidisciplinary"),
                       ("consultation-reason", "difficult-outpatient")):
        assert preferred(name, code, "zh") in zh, (name, code)
    # (The extracted text garbles two of the ten specialties, «یجراح» and «ق قلب و عرو».)
    for name, code in (("specialty", "obstetrics-gynaecology"), ("specialty", "oncology"),
                       ("service-level", "basic"), ("service-level", "advanced"),
                       ("professional-title", "behvarz"), ("professional-title", "nurse"),
                       ("professional-title", "general-practitioner")):
        # Word by word: the extraction reverses the order of words in places («پایه:سطح»).
        for word in preferred(name, code, "fa").replace("\u200c", " ").split():
            assert word in fa, (name, code, word)


def test_builtin_resources_are_the_files_as_fresh_copies() -> None:
    first = builtin_resources()
    assert sorted((r["resourceType"], r["id"]) for r in first) == sorted(
        (_load(p)["resourceType"], _load(p)["id"]) for p in FILES)
    first[0]["id"] = "changed"
    first[0].setdefault("meta", {})["versionId"] = "9"
    second = builtin_resources()
    assert second[0]["id"] != "changed" and "meta" not in second[0]

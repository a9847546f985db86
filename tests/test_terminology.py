"""Terminology operations over HTTP: $lookup, $validate-code and $expand (terminology-service.html)
on Consilium's CodeSystems and ValueSets, displays in English, Persian and Chinese."""

from __future__ import annotations

from typing import Any

import pytest

from server.fhir.validation import validate_resource

BASE = "https://fhir.consilium.health"
SPECIALTY = f"{BASE}/CodeSystem/specialty"
TITLE = f"{BASE}/CodeSystem/professional-title"
CONSULTATION_TYPE = f"{BASE}/CodeSystem/consultation-type"
INDICATION = f"{BASE}/CodeSystem/referral-indication"
SYNONYM = "900000000000013009"

# The ten specialties of the Iranian roadmap (step 2).
TEN = {"critical-care", "pulmonology", "infectious-disease", "nephrology", "oncology",
       "obstetrics-gynaecology", "paediatrics", "neurology", "cardiology", "surgery"}
# Up-referral indications of the Inner Mongolia rules (A4 二(一) 1–6; item 1 has two cases).
UP = {"undiagnosed-after-teleconsultation", "beyond-licensed-scope", "critical-emergency",
      "complex-high-risk", "specialised-institution-required", "equipment-limits",
      "authority-defined"}
# Down-referral indications (A4 二(二) 1–5; item 3 has two cases).
DOWN = {"common-disease", "stable-long-term-care", "rehabilitation", "follow-up-only",
        "palliative-care", "authority-defined"}


def _param(params: dict[str, Any], name: str) -> Any:
    found = [p for p in params["parameter"] if p["name"] == name]
    assert len(found) <= 1, name
    if not found:
        return None
    p = found[0]
    return next(v for k, v in p.items() if k.startswith("value"))


def _all(params: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in params["parameter"] if p["name"] == name]


def _parts(p: dict[str, Any]) -> dict[str, Any]:
    return {part["name"]: next(v for k, v in part.items() if k.startswith("value"))
            for part in p["part"]}


def _expand(fhir: Any, **params: Any) -> dict[str, Any]:
    r = fhir.get("ValueSet/$expand", params=params)
    assert r.status_code == 200, r.text
    vs = r.json()
    assert vs["resourceType"] == "ValueSet"
    return vs


def _codes(vs: dict[str, Any]) -> list[str]:
    return [c["code"] for c in vs["expansion"].get("contains", [])]


def _outcome(r: Any, status: int | tuple[int, ...]) -> dict[str, Any]:
    statuses = status if isinstance(status, tuple) else (status,)
    assert r.status_code in statuses, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["severity"] in ("error", "fatal")
    return body


# ================================================================================ $lookup

@pytest.mark.parametrize("language, display", [
    ("en", "Cardiology"), ("fa", "قلب و عروق"), ("zh", "心血管内科"), ("zh-CN", "心血管内科"),
    ("fa-IR", "قلب و عروق"), ("en-GB", "Cardiology")])
def test_lookup_display_in_the_display_language(fhir, language: str, display: str) -> None:
    r = fhir.get("CodeSystem/$lookup", params={"system": SPECIALTY, "code": "cardiology",
                                               "displayLanguage": language})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["resourceType"] == "Parameters"
    assert _param(out, "display") == display
    assert _param(out, "name") == "Specialty"
    assert _param(out, "version") == "0.1.0"


@pytest.mark.parametrize("header, display", [
    ("fa", "مشاوره از راه دور"),
    ("zh-CN,zh;q=0.9,en;q=0.8", "远程会诊"),
    ("de, fa;q=0.5, zh;q=0.4", "مشاوره از راه دور"),  # de is not available: next best
    ("fa;q=0.3, zh;q=0.6", "远程会诊"),  # q-values, not the order, decide
    ("fa;q=0, zh;q=0.1", "远程会诊"),  # q=0 means "not acceptable"
    ("fr, de", "Teleconsultation"),  # nothing available: the code system's language
    ("*", "Teleconsultation"),
])
def test_lookup_display_follows_accept_language(fhir, header: str, display: str) -> None:
    r = fhir.get("CodeSystem/$lookup", params={"system": CONSULTATION_TYPE,
                                               "code": "teleconsultation"},
                 headers={"Accept-Language": header})
    assert r.status_code == 200, r.text
    assert _param(r.json(), "display") == display
    assert "accept-language" in r.headers.get("vary", "").lower()


def test_lookup_display_language_parameter_beats_the_header(fhir) -> None:
    r = fhir.get("CodeSystem/$lookup", params={"system": CONSULTATION_TYPE,
                                               "code": "remote-monitoring",
                                               "displayLanguage": "zh"},
                 headers={"Accept-Language": "fa"})
    assert _param(r.json(), "display") == "远程监护"


def test_lookup_without_language_is_english(fhir) -> None:
    r = fhir.get("CodeSystem/$lookup", params={"system": f"{BASE}/CodeSystem/quality-grade",
                                               "code": "unqualified"})
    assert _param(r.json(), "display") == "Unqualified"


def test_lookup_returns_designations_in_every_language(fhir) -> None:
    r = fhir.get("CodeSystem/$lookup", params={"system": SPECIALTY, "code": "critical-care"})
    designations = [_parts(p) for p in _all(r.json(), "designation")]
    preferred = {d["language"]: d["value"] for d in designations if "use" not in d}
    assert preferred == {"en": "Critical care medicine", "fa": "مراقبت‌های ویژه",
                         "zh": "重症医学科"}
    # The roadmap's own wording is kept as a Persian synonym.
    synonyms = [d for d in designations if d.get("use", {}).get("code") == SYNONYM]
    assert {"language": "fa", "value": "فوق تخصص ویژه"} in [
        {"language": d["language"], "value": d["value"]} for d in synonyms]


def test_lookup_hierarchy_and_properties(fhir) -> None:
    r = fhir.get("CodeSystem/$lookup", params={"system": TITLE, "code": "chief-physician",
                                               "displayLanguage": "zh"})
    out = r.json()
    assert _param(out, "display") == "主任医师"
    props = [_parts(p) for p in _all(out, "property")]
    parent = [p for p in props if p["code"] == "parent"]
    assert parent == [{"code": "parent", "value": "senior", "description": "正高级"}]
    r = fhir.get("CodeSystem/$lookup", params={"system": TITLE, "code": "associate-senior"})
    children = [p["value"] for p in map(_parts, _all(r.json(), "property"))
                if p["code"] == "child"]
    assert children == ["associate-chief-physician"]


def test_lookup_property_selects_what_is_returned(fhir) -> None:
    r = fhir.get("CodeSystem/$lookup", params=[("system", INDICATION), ("code", "authority-defined"),
                                               ("property", "direction"),
                                               ("property", "lang.fa")])
    out = r.json()
    directions = sorted(p["value"] for p in map(_parts, _all(out, "property"))
                        if p["code"] == "direction")
    assert directions == ["down", "up"]
    assert {p["code"] for p in map(_parts, _all(out, "property"))} == {"direction"}
    languages = {_parts(p)["language"] for p in _all(out, "designation")}
    assert languages == {"fa"}


def test_lookup_by_post_with_a_coding(fhir) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "coding", "valueCoding": {"system": f"{BASE}/CodeSystem/care-level",
                                           "code": "1"}},
        {"name": "displayLanguage", "valueCode": "zh"}]}
    r = fhir.post("CodeSystem/$lookup", json=body)
    assert r.status_code == 200, r.text
    assert _param(r.json(), "display") == "一级医疗机构（基层）"


def test_lookup_on_a_builtin_instance(fhir) -> None:
    r = fhir.get("CodeSystem/service-level/$lookup", params={"code": "advanced",
                                                               "displayLanguage": "fa"})
    assert r.status_code == 200, r.text
    assert _param(r.json(), "display") == "سطح پیشرفته"


def test_lookup_errors(fhir) -> None:
    _outcome(fhir.get("CodeSystem/$lookup", params={"system": "http://example.org/unknown",
                                                    "code": "x"}), 404)
    _outcome(fhir.get("CodeSystem/$lookup", params={"system": SPECIALTY,
                                                    "code": "astrology"}), (400, 404))
    _outcome(fhir.get("CodeSystem/$lookup", params={"system": SPECIALTY}), 400)
    _outcome(fhir.get("CodeSystem/$lookup", params={"code": "cardiology"}), 400)
    _outcome(fhir.get("CodeSystem/$lookup", params={"system": SPECIALTY, "code": "cardiology",
                                                    "version": "9.9.9"}), 404)
    _outcome(fhir.get("CodeSystem/$lookup", params={"system": SPECIALTY, "code": "cardiology",
                                                    "displaylanguage": "fa"}), 400)
    _outcome(fhir.get("CodeSystem/no-such-system/$lookup", params={"code": "x"}), 404)
    # A Coding cannot travel in the URL.
    _outcome(fhir.get("CodeSystem/$lookup", params={"coding": f"{SPECIALTY}|cardiology"}), 400)
    # $lookup belongs to CodeSystem only.
    _outcome(fhir.get("ValueSet/$lookup", params={"system": SPECIALTY, "code": "x"}), 404)


# ===================================================================== stored terminology

def _stored_code_system(fhir) -> dict[str, Any]:
    cs = {"resourceType": "CodeSystem", "url": "http://example.org/fhir/CodeSystem/triage",
          "version": "2", "name": "Triage", "status": "active", "content": "complete",
          "concept": [
              {"code": "red", "display": "Immediate",
               "designation": [{"language": "fa", "value": "فوری"},
                               {"language": "zh", "value": "立即"}],
               "concept": [{"code": "red-cardiac", "display": "Immediate, cardiac"}]},
              {"code": "green", "display": "Minor",
               "designation": [{"language": "zh", "value": "轻伤"}]}]}
    r = fhir.post("CodeSystem", json=cs)
    assert r.status_code == 201, r.text
    return r.json()


def test_lookup_on_a_stored_code_system(fhir) -> None:
    stored = _stored_code_system(fhir)
    r = fhir.get(f"CodeSystem/{stored['id']}/$lookup", params={"code": "red",
                                                               "displayLanguage": "fa"})
    assert r.status_code == 200, r.text
    assert _param(r.json(), "display") == "فوری"
    assert _param(r.json(), "version") == "2"
    # At type level it is found by its url.
    r = fhir.get("CodeSystem/$lookup", params={"system": stored["url"], "code": "green"},
                 headers={"Accept-Language": "zh"})
    assert r.status_code == 200, r.text
    assert _param(r.json(), "display") == "轻伤"
    # No Persian designation: the code system's own display.
    r = fhir.get("CodeSystem/$lookup", params={"system": stored["url"], "code": "green",
                                               "displayLanguage": "fa"})
    assert _param(r.json(), "display") == "Minor"
    # The instance's url must match a given system.
    _outcome(fhir.get(f"CodeSystem/{stored['id']}/$lookup",
                      params={"code": "red", "system": SPECIALTY}), 400)


def test_expand_a_stored_value_set_over_a_stored_code_system(fhir) -> None:
    stored = _stored_code_system(fhir)
    vs = {"resourceType": "ValueSet", "url": "http://example.org/fhir/ValueSet/urgent",
          "status": "active",
          "compose": {"include": [{"system": stored["url"],
                                   "filter": [{"property": "concept", "op": "is-a",
                                               "value": "red"}]}]}}
    r = fhir.post("ValueSet", json=vs)
    assert r.status_code == 201, r.text
    out = _expand(fhir, url=vs["url"], displayLanguage="zh")
    assert out["expansion"]["total"] == 2
    assert [(c["code"], c.get("display")) for c in out["expansion"]["contains"]] == [
        ("red", "立即"), ("red-cardiac", "Immediate, cardiac")]
    r = fhir.get(f"ValueSet/{r.json()['id']}/$validate-code",
                 params={"system": stored["url"], "code": "green"})
    assert _param(r.json(), "result") is False


# ========================================================================= $validate-code

def test_validate_code_in_a_value_set(fhir) -> None:
    r = fhir.get("ValueSet/$validate-code", params={
        "url": f"{BASE}/ValueSet/specialty", "system": SPECIALTY, "code": "nephrology"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert _param(out, "result") is True
    assert _param(out, "display") == "Nephrology"
    assert _param(out, "message") is None


def test_validate_code_display_in_the_requested_language(fhir) -> None:
    params = {"url": f"{BASE}/ValueSet/specialty", "system": SPECIALTY, "code": "nephrology"}
    r = fhir.get("ValueSet/$validate-code", params={**params, "displayLanguage": "zh"})
    assert _param(r.json(), "display") == "肾内科"
    r = fhir.get("ValueSet/$validate-code", params=params, headers={"Accept-Language": "fa"})
    assert _param(r.json(), "display") == "نفرولوژی"


def test_validate_code_unknown_code_is_false_with_a_message(fhir) -> None:
    r = fhir.get("ValueSet/$validate-code", params={
        "url": f"{BASE}/ValueSet/specialty", "system": SPECIALTY, "code": "astrology"})
    assert r.status_code == 200
    out = r.json()
    assert _param(out, "result") is False
    assert "astrology" in _param(out, "message")


def test_validate_code_in_composed_value_sets(fhir) -> None:
    """Expert pool: associate senior title or higher (A5 二(一))."""
    url = f"{BASE}/ValueSet/expert-eligible-title"
    for code, expected in (("senior", True), ("chief-physician", True),
                           ("associate-senior", True), ("associate-chief-physician", True),
                           ("intermediate", False), ("attending-physician", False),
                           ("junior", False), ("behvarz", False)):
        r = fhir.get("ValueSet/$validate-code", params={"url": url, "system": TITLE,
                                                        "code": code})
        assert _param(r.json(), "result") is expected, code
    r = fhir.get("ValueSet/$validate-code", params={"url": f"{BASE}/ValueSet/up-referral-indication",
                                                    "system": INDICATION, "code": "rehabilitation"})
    out = r.json()
    assert _param(out, "result") is False
    assert "not in the value set" in _param(out, "message")


def test_validate_code_checks_the_display_in_any_language(fhir) -> None:
    url = f"{BASE}/ValueSet/specialty"
    for display, expected in (("Cardiology", True), ("قلب و عروق", True), ("心血管内科", True),
                              ("心内科", True), ("Dermatology", False)):
        r = fhir.get("ValueSet/$validate-code", params={"url": url, "system": SPECIALTY,
                                                        "code": "cardiology",
                                                        "display": display})
        out = r.json()
        assert _param(out, "result") is expected, display
        if not expected:
            assert _param(out, "message")
            assert _param(out, "display") == "Cardiology"


def test_validate_code_with_coding_and_codeable_concept(fhir) -> None:
    url = f"{BASE}/ValueSet/service-request-category"
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": url},
        {"name": "coding", "valueCoding": {"system": CONSULTATION_TYPE,
                                           "code": "remote-pathology"}}]}
    r = fhir.post("ValueSet/$validate-code", json=body)
    assert r.status_code == 200, r.text
    assert _param(r.json(), "result") is True
    # Remote teaching is a telemedicine service but not a request category.
    body["parameter"][1]["valueCoding"]["code"] = "remote-teaching"
    assert _param(fhir.post("ValueSet/$validate-code", json=body).json(), "result") is False
    concept = {"coding": [{"system": "http://snomed.info/sct", "code": "11429006"},
                          {"system": CONSULTATION_TYPE, "code": "remote-ecg"}],
               "text": "ECG"}
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": url}, {"name": "codeableConcept",
                                           "valueCodeableConcept": concept},
        {"name": "displayLanguage", "valueCode": "zh"}]}
    out = fhir.post("ValueSet/$validate-code", json=body).json()
    assert _param(out, "result") is True
    assert _param(out, "display") == "远程心电图诊断"
    concept["coding"].pop()
    out = fhir.post("ValueSet/$validate-code", json=body).json()
    assert _param(out, "result") is False


def test_validate_code_on_a_value_set_instance(fhir) -> None:
    r = fhir.get("ValueSet/iranian-priority-specialty/$validate-code",
                 params={"system": SPECIALTY, "code": "oncology"})
    assert _param(r.json(), "result") is True
    r = fhir.get("ValueSet/iranian-priority-specialty/$validate-code",
                 params={"system": SPECIALTY, "code": "radiology"})
    assert _param(r.json(), "result") is False


def test_validate_code_errors(fhir) -> None:
    url = f"{BASE}/ValueSet/specialty"
    _outcome(fhir.get("ValueSet/$validate-code", params={"url": url, "code": "cardiology"}),
             400)  # a code needs a system
    _outcome(fhir.get("ValueSet/$validate-code", params={"url": url}), 400)
    _outcome(fhir.get("ValueSet/$validate-code", params={"system": SPECIALTY,
                                                         "code": "cardiology"}), 400)
    _outcome(fhir.get("ValueSet/$validate-code", params={
        "url": f"{BASE}/ValueSet/nothing", "system": SPECIALTY, "code": "cardiology"}), 404)
    _outcome(fhir.get("ValueSet/no-such-set/$validate-code", params={
        "system": SPECIALTY, "code": "cardiology"}), 404)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": url}, {"name": "code", "valueCode": "cardiology"},
        {"name": "system", "valueUri": SPECIALTY},
        {"name": "coding", "valueCoding": {"system": SPECIALTY, "code": "cardiology"}}]}
    _outcome(fhir.post("ValueSet/$validate-code", json=body), 400)  # only one of them
    _outcome(fhir.post("ValueSet/$validate-code", json={"resourceType": "Patient"}), 400)


def test_code_system_validate_code(fhir) -> None:
    r = fhir.get("CodeSystem/$validate-code", params={"url": SPECIALTY, "code": "paediatrics",
                                                      "displayLanguage": "fa"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert _param(out, "result") is True
    assert _param(out, "display") == "بیماری‌های کودکان"
    out = fhir.get("CodeSystem/$validate-code", params={"url": SPECIALTY,
                                                        "code": "Paediatrics"}).json()
    assert _param(out, "result") is False  # case-sensitive code system
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "url", "valueUri": SPECIALTY},
        {"name": "coding", "valueCoding": {"system": TITLE, "code": "paediatrics"}}]}
    out = fhir.post("CodeSystem/$validate-code", json=body).json()
    assert _param(out, "result") is False  # the coding's system is another code system
    out = fhir.get("CodeSystem/referral-direction/$validate-code",
                   params={"code": "down", "display": "下转"}).json()
    assert _param(out, "result") is True
    _outcome(fhir.get("CodeSystem/$validate-code", params={"url": "http://example.org/none",
                                                           "code": "x"}), 404)
    _outcome(fhir.get("CodeSystem/$validate-code", params={"code": "x"}), 400)


# ================================================================================ $expand

def test_expand_all_codes_of_a_code_system(fhir) -> None:
    vs = _expand(fhir, url=f"{BASE}/ValueSet/care-level")
    assert vs["url"] == f"{BASE}/ValueSet/care-level"
    assert vs["expansion"]["total"] == 3
    assert _codes(vs) == ["1", "2", "3"]
    assert all(c["system"] == f"{BASE}/CodeSystem/care-level" for c in vs["expansion"]["contains"])
    assert validate_resource(vs, "ValueSet") == []
    assert vs["expansion"]["identifier"] and vs["expansion"]["timestamp"]


def test_expand_composed_value_sets(fhir) -> None:
    assert set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/up-referral-indication"))) == UP
    assert set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/down-referral-indication"))) == DOWN
    assert set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/iranian-priority-specialty"))) == TEN
    titles = set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/expert-eligible-title")))
    assert titles == {"senior", "chief-physician", "associate-senior",
                      "associate-chief-physician"}
    level1 = set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/level-1-health-worker")))
    assert level1 == {"behvarz", "nurse", "general-practitioner"}
    consultation = set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/consultation-business-status")))
    referral = set(_codes(_expand(fhir, url=f"{BASE}/ValueSet/referral-business-status")))
    assert {"expert-assigned", "report-signed", "rated"} <= consultation
    assert {"confirmed-by-sender", "confirmed-by-receiver", "transferred-out",
            "transferred-in"} <= referral
    assert "transferred-in" not in consultation and "report-signed" not in referral


def test_expand_displays_in_the_requested_language(fhir) -> None:
    vs = _expand(fhir, url=f"{BASE}/ValueSet/quality-grade", displayLanguage="zh")
    assert [c["display"] for c in vs["expansion"]["contains"]] == ["优秀", "合格", "不合格"]
    r = fhir.get("ValueSet/$expand", params={"url": f"{BASE}/ValueSet/referral-direction"},
                 headers={"Accept-Language": "fa-IR, fa;q=0.9, en;q=0.5"})
    displays = {c["code"]: c["display"] for c in r.json()["expansion"]["contains"]}
    assert displays == {"up": "ارجاع به سطح بالاتر", "down": "ارجاع به سطح پایین‌تر"}


@pytest.mark.parametrize("text, expected", [
    ("ویژه", {"critical-care"}),
    ("مراقبت‌های ویژه", {"critical-care"}),  # with the zero-width non-joiner
    ("مراقبت هاي ويژه", {"critical-care"}),  # typed with a space and Arabic yeh
    ("کلیه", {"nephrology"}),
    ("肾", {"nephrology"}),
    ("心电", {"electrocardiography"}),
    ("眼科", {"ophthalmology"}),
    ("NEPHRO", {"nephrology"}),
    ("gynaecology obstetrics", {"obstetrics-gynaecology"}),  # every word, any order
    ("xyzzy", set()),
])
def test_expand_filter_matches_text_in_any_language(fhir, text: str, expected: set[str]) -> None:
    vs = _expand(fhir, url=f"{BASE}/ValueSet/specialty", filter=text)
    assert set(_codes(vs)) == expected
    assert vs["expansion"]["total"] == len(expected)
    assert {"name": "filter", "valueString": text} in vs["expansion"]["parameter"]


def test_expand_filter_in_chinese_and_persian_on_consultation_types(fhir) -> None:
    vs = _expand(fhir, url=f"{BASE}/ValueSet/consultation-type", filter="远程会诊",
                 displayLanguage="zh")
    assert _codes(vs) == ["teleconsultation"]
    assert vs["expansion"]["contains"][0]["display"] == "远程会诊"
    vs = _expand(fhir, url=f"{BASE}/ValueSet/consultation-type", filter="پاتولوژی")
    assert _codes(vs) == ["remote-pathology"]


def test_expand_paging_with_count_and_offset(fhir) -> None:
    url = f"{BASE}/ValueSet/specialty"
    full = _expand(fhir, url=url)
    everything = _codes(full)
    total = full["expansion"]["total"]
    assert total == len(everything) >= 20
    pages: list[str] = []
    for offset in range(0, total, 7):
        page = _expand(fhir, url=url, count=7, offset=offset)
        assert page["expansion"]["total"] == total
        assert page["expansion"]["offset"] == offset
        assert len(_codes(page)) == min(7, total - offset)
        pages += _codes(page)
    assert pages == everything
    beyond = _expand(fhir, url=url, offset=total + 5, count=10)
    assert _codes(beyond) == [] and beyond["expansion"]["total"] == total
    size_only = _expand(fhir, url=url, count=0)
    assert _codes(size_only) == [] and size_only["expansion"]["total"] == total
    # Paging applies after the filter.
    filtered = _expand(fhir, url=url, filter="ی", count=2, offset=1)
    assert filtered["expansion"]["total"] == len(_codes(_expand(fhir, url=url, filter="ی")))
    assert len(_codes(filtered)) == 2


def test_expand_with_designations(fhir) -> None:
    vs = _expand(fhir, url=f"{BASE}/ValueSet/service-level", includeDesignations="true")
    for item in vs["expansion"]["contains"]:
        languages = {d["language"] for d in item["designation"]}
        assert {"en", "fa", "zh"} <= languages
    assert validate_resource(vs, "ValueSet") == []
    vs = _expand(fhir, url=f"{BASE}/ValueSet/service-level", designation="zh")
    for item in vs["expansion"]["contains"]:
        assert {d["language"] for d in item["designation"]} == {"zh"}
    vs = _expand(fhir, url=f"{BASE}/ValueSet/service-level")
    assert all("designation" not in c for c in vs["expansion"]["contains"])


def test_expand_an_instance_and_by_post(fhir) -> None:
    r = fhir.get("ValueSet/down-referral-indication/$expand", params={"displayLanguage": "zh"})
    assert r.status_code == 200, r.text
    contains = r.json()["expansion"]["contains"]
    assert {c["code"] for c in contains} == DOWN
    assert {"code": "palliative-care", "display": "疾病晚期仅需保守、支持治疗"}.items() <= \
        next(c for c in contains if c["code"] == "palliative-care").items()
    inline = {"resourceType": "ValueSet", "status": "draft", "compose": {"include": [
        {"system": SPECIALTY, "concept": [{"code": "radiology"}, {"code": "pathology"}]},
        {"system": CONSULTATION_TYPE,
         "filter": [{"property": "concept", "op": "in",
                     "value": "remote-imaging,remote-pathology"}]}]}}
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "valueSet", "resource": inline}, {"name": "displayLanguage", "valueCode": "fa"},
        {"name": "count", "valueInteger": 3}]}
    r = fhir.post("ValueSet/$expand", json=body)
    assert r.status_code == 200, r.text
    vs = r.json()
    assert vs["expansion"]["total"] == 4
    assert [(c["code"], c["display"]) for c in vs["expansion"]["contains"]] == [
        ("radiology", "رادیولوژی"), ("pathology", "پاتولوژی"),
        ("remote-imaging", "تفسیر تصاویر پزشکی از راه دور")]
    assert validate_resource(vs, "ValueSet") == []


def test_expand_excludes_and_value_set_references(fhir) -> None:
    inline = {"resourceType": "ValueSet", "status": "draft", "compose": {
        "include": [{"valueSet": [f"{BASE}/ValueSet/up-referral-indication",
                                  f"{BASE}/ValueSet/down-referral-indication"]}],
    }}
    body = {"resourceType": "Parameters", "parameter": [{"name": "valueSet", "resource": inline}]}
    vs = fhir.post("ValueSet/$expand", json=body).json()
    assert _codes(vs) == ["authority-defined"]  # the intersection of the two
    inline["compose"] = {"include": [{"system": SPECIALTY}],
                         "exclude": [{"valueSet": [f"{BASE}/ValueSet/iranian-priority-specialty"]}]}
    vs = fhir.post("ValueSet/$expand", json=body).json()
    codes = set(_codes(vs))
    assert not codes & TEN and "radiology" in codes


def test_expand_errors(fhir) -> None:
    _outcome(fhir.get("ValueSet/$expand", params={"url": f"{BASE}/ValueSet/nothing"}), 404)
    _outcome(fhir.get("ValueSet/nothing-here/$expand"), 404)
    _outcome(fhir.get("ValueSet/$expand"), 400)
    _outcome(fhir.get("ValueSet/$expand", params={"url": f"{BASE}/ValueSet/specialty",
                                                  "count": "-1"}), 400)
    _outcome(fhir.get("ValueSet/$expand", params={"url": f"{BASE}/ValueSet/specialty",
                                                  "includeDesignations": "yes"}), 400)
    _outcome(fhir.get("ValueSet/$expand", params={"url": f"{BASE}/ValueSet/specialty",
                                                  "fliter": "x"}), 400)
    unknown = {"resourceType": "ValueSet", "status": "draft",
               "compose": {"include": [{"system": "http://example.org/unknown-system"}]}}
    body = {"resourceType": "Parameters", "parameter": [{"name": "valueSet",
                                                         "resource": unknown}]}
    body_out = _outcome(fhir.post("ValueSet/$expand", json=body), (400, 404, 422))
    assert "unknown-system" in body_out["issue"][0]["diagnostics"]
    # $expand belongs to ValueSet only.
    _outcome(fhir.get("CodeSystem/$expand", params={"url": SPECIALTY}), 404)


def test_capability_statement_lists_the_terminology_operations(fhir) -> None:
    cap = fhir.get("metadata").json()
    resources = {r["type"]: r for r in cap["rest"][0]["resource"]}
    cs_ops = {o["name"] for o in resources["CodeSystem"].get("operation", [])}
    vs_ops = {o["name"] for o in resources["ValueSet"].get("operation", [])}
    assert {"lookup", "validate-code"} <= cs_ops
    assert {"expand", "validate-code"} <= vs_ops
    assert "expand" not in cs_ops and "lookup" not in vs_ops

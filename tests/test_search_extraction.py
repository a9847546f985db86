"""Search index extraction: the FHIRPath subset, the parameter registry and the typed rows.

Expected values come from the FHIR R4 specification (search.html: string, token, reference,
date, number, quantity, composite; fhirpath.html), not from the implementation.
"""

from __future__ import annotations

import gzip
import json
import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from server.generate import DEFAULT_DEFINITIONS
from server.search import registry as registry_module
from server.search.fhirpath import FhirPathError, compile_path
from server.search.index import date_range, extract, normalize, number_range
from server.search.registry import build, custom_definitions, load_definitions, registry

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
NEG_INF = -(2**62)
POS_INF = 2**62


def us(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0,
       micro: int = 0) -> int:
    """µs since the epoch of a UTC calendar instant (independent of the code under test)."""
    instant = datetime(year, month, day, hour, minute, second, micro, tzinfo=UTC)
    return (instant - EPOCH) // timedelta(microseconds=1)


def rows(resource: dict[str, Any], kind: str, code: str) -> set[tuple[Any, ...]]:
    return {r[1:] for r in extract(resource)[kind] if r[0] == code}


def rounded(found: set[tuple[Any, ...]]) -> set[tuple[Any, ...]]:
    """Float bounds rounded, so that 1.495 computed in binary compares equal."""
    return {tuple(round(v, 9) if isinstance(v, float) else v for v in row) for row in found}


# ------------------------------------------------------------------------------- strings


@pytest.mark.parametrize(("text", "expected"), [
    ("  José   MARÍA ", "jose maria"),
    ("Éléonore Müller", "eleonore muller"),
    ("Straße", "strasse"),
    ("ＡＢＣ", "abc"),  # full-width letters: compatibility decomposition
    ("عَلِی  رضایی", "علی رضایی"),  # Persian: vowel marks (harakat) are combining marks
    ("张伟", "张伟"),
    # Hangul syllables come back whole: decomposed, 이 (Lee) would be a prefix of 임 (Lim).
    ("이", "이"), ("김철수", "김철수"),
    # Kana keep their voicing marks: ガトウ (Gatō) is not カトウ (Katō).
    ("ガトウ", "ガトウ"), ("ｶﾞﾄｳ", "ガトウ"),  # half-width kana are the same name
    # Arabic presentation forms are the letters they present, variants folded as for the rest.
    ("\ufecb\ufee0\ufef2", "علی"),
    # Marks that write other letters are kept: Devanagari's virama (क्ष is not कष), Thai tone
    # marks (ไม้ is not ไม่); Hebrew vowel points go, as accents and Arabic vowel marks do.
    ("क्षत्रिय", "क्षत्रिय"), ("ไม้", "ไม้"), ("שָׁלוֹם", "שלום"),
])
def test_string_normalisation(text: str, expected: str) -> None:
    assert normalize(text) == expected


def test_human_name_parts_are_indexed() -> None:
    patient = {"resourceType": "Patient", "name": [
        {"family": "Núñez", "given": ["José", "Ángel"], "prefix": ["Dr."], "suffix": ["Jr."]},
        {"text": "علی رضایی"},
        {"family": "王", "given": ["小明"]},
    ]}
    name = rows(patient, "string", "name")
    assert {("nunez", "Núñez"), ("jose", "José"), ("angel", "Ángel"), ("dr.", "Dr."),
            ("jr.", "Jr."), ("علی رضایی", "علی رضایی"), ("王", "王"),
            ("小明", "小明")} == name
    assert rows(patient, "string", "family") == {("nunez", "Núñez"), ("王", "王")}
    assert rows(patient, "string", "given") == {("jose", "José"), ("angel", "Ángel"),
                                                 ("小明", "小明")}


def test_address_parts_are_indexed() -> None:
    patient = {"resourceType": "Patient", "address": [{
        "line": ["No. 12, Valiasr St."], "city": "Tehran", "district": "Shemiran",
        "state": "Tehran", "postalCode": "19395", "country": "IR", "text": "Somewhere",
        "use": "home"}]}
    assert rows(patient, "string", "address") == {
        ("no. 12, valiasr st.", "No. 12, Valiasr St."), ("tehran", "Tehran"),
        ("shemiran", "Shemiran"), ("19395", "19395"), ("ir", "IR"),
        ("somewhere", "Somewhere")}
    assert rows(patient, "string", "address-city") == {("tehran", "Tehran")}
    assert rows(patient, "string", "address-postalcode") == {("19395", "19395")}


# ----------------------------------------------------------------------------------- dates


@pytest.mark.parametrize(("text", "lo", "hi"), [
    ("2020", us(2020, 1, 1), us(2021, 1, 1) - 1),
    ("2020-02", us(2020, 2, 1), us(2020, 2, 29, 23, 59, 59, 999999)),  # leap year
    ("2019-02", us(2019, 2, 1), us(2019, 2, 28, 23, 59, 59, 999999)),
    ("2020-12", us(2020, 12, 1), us(2020, 12, 31, 23, 59, 59, 999999)),
    ("2020-02-29", us(2020, 2, 29), us(2020, 2, 29, 23, 59, 59, 999999)),
    ("2020-03-01T10:20:30Z", us(2020, 3, 1, 10, 20, 30), us(2020, 3, 1, 10, 20, 30, 999999)),
    ("2020-03-01T10:20:30.5Z", us(2020, 3, 1, 10, 20, 30, 500000),
     us(2020, 3, 1, 10, 20, 30, 599999)),
    ("2020-03-01T10:20:30.123Z", us(2020, 3, 1, 10, 20, 30, 123000),
     us(2020, 3, 1, 10, 20, 30, 123999)),
    ("2020-03-01T10:20:30.123456Z", us(2020, 3, 1, 10, 20, 30, 123456),
     us(2020, 3, 1, 10, 20, 30, 123456)),
    # +03:30 (Iran) early in the morning: the previous day in UTC
    ("2020-01-01T01:00:00+03:30", us(2019, 12, 31, 21, 30), us(2019, 12, 31, 21, 30, 0, 999999)),
    # -05:00 late in the evening on 31 December: the next year in UTC
    ("2020-12-31T22:00:00-05:00", us(2021, 1, 1, 3, 0), us(2021, 1, 1, 3, 0, 0, 999999)),
    ("2020-06-15T12:00:00", us(2020, 6, 15, 12), us(2020, 6, 15, 12, 0, 0, 999999)),  # no zone
])
def test_date_precision_ranges(text: str, lo: int, hi: int) -> None:
    assert date_range(text) == (lo, hi)


@pytest.mark.parametrize("text", ["2020-13", "2019-02-29", "20201", "soon", "2020-01-01T25:00:00Z"])
def test_invalid_dates_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        date_range(text)


def test_birthdate_row_spans_the_day() -> None:
    patient = {"resourceType": "Patient", "birthDate": "1980-05-17"}
    assert rows(patient, "date", "birthdate") == {
        (us(1980, 5, 17), us(1980, 5, 17, 23, 59, 59, 999999))}


def test_observation_date_with_time_zone() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "effectiveDateTime": "2024-03-01T09:30:00+03:30"}
    assert rows(obs, "date", "date") == {
        (us(2024, 3, 1, 6, 0), us(2024, 3, 1, 6, 0, 0, 999999))}


def test_period_open_ends() -> None:
    ongoing = {"resourceType": "Encounter", "status": "in-progress", "class": {"code": "VR"},
               "period": {"start": "2024-01-10"}}
    assert rows(ongoing, "date", "date") == {(us(2024, 1, 10), POS_INF)}
    ended = {"resourceType": "Encounter", "status": "finished", "class": {"code": "VR"},
             "period": {"end": "2024-01-12T10:00:00Z"}}
    assert rows(ended, "date", "date") == {(NEG_INF, us(2024, 1, 12, 10, 0, 0, 999999))}
    both = {"resourceType": "Encounter", "status": "finished", "class": {"code": "VR"},
            "period": {"start": "2024-01", "end": "2024-02"}}
    assert rows(both, "date", "date") == {(us(2024, 1, 1), us(2024, 2, 29, 23, 59, 59, 999999))}


def test_timing_is_searched_by_its_outer_limits() -> None:
    """search.html#date: for a Timing "only the outer limits matter": one range from the
    earliest to the latest of its events and repeat bounds."""
    request = {"resourceType": "ServiceRequest", "status": "active", "intent": "order",
               "subject": {"reference": "Patient/1"},
               "occurrenceTiming": {"event": ["2024-04-20T08:00:00Z", "2024-06-02T09:30:00Z"],
                                    "repeat": {"boundsPeriod": {"start": "2024-05-01",
                                                                "end": "2024-05-31"}}}}
    assert rows(request, "date", "occurrence") == {
        (us(2024, 4, 20, 8), us(2024, 6, 2, 9, 30, 0, 999999))}
    single = {**request, "occurrenceTiming": {"event": ["2024-05-01T08:00:00Z"]}}
    assert rows(single, "date", "occurrence") == {
        (us(2024, 5, 1, 8), us(2024, 5, 1, 8, 0, 0, 999999))}


def test_date_parameter_ignores_string_values() -> None:
    procedure = {"resourceType": "Procedure", "status": "completed",
                 "subject": {"reference": "Patient/1"}, "performedString": "last spring"}
    assert rows(procedure, "date", "date") == set()


def test_instant_is_a_date() -> None:
    report = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
              "issued": "2024-03-01T06:05:00.123Z"}
    assert rows(report, "date", "issued") == {
        (us(2024, 3, 1, 6, 5, 0, 123000), us(2024, 3, 1, 6, 5, 0, 123999))}


# --------------------------------------------------------------------- numbers, quantities


@pytest.mark.parametrize(("value", "lo", "hi"), [
    (100, 99.5, 100.5),
    (Decimal("100"), 99.5, 100.5),
    (Decimal("1.50"), 1.495, 1.505),
    (Decimal("0.5"), 0.45, 0.55),
    (1.5, 1.45, 1.55),
    ("100", 99.5, 100.5),  # a search value, as written
    ("1.50", 1.495, 1.505),
    ("-3", -3.5, -2.5),
])
def test_number_precision(value: Any, lo: float, hi: float) -> None:
    assert number_range(value) == (pytest.approx(lo), pytest.approx(hi))


@pytest.mark.parametrize("value", ["abc", "", "NaN", " 1", True, None])
def test_invalid_numbers_are_refused(value: Any) -> None:
    with pytest.raises(ValueError):
        number_range(value)


def test_number_parameter_rows() -> None:
    assessment = {"resourceType": "RiskAssessment", "status": "final",
                  "subject": {"reference": "Patient/1"},
                  "prediction": [{"probabilityDecimal": Decimal("0.50")},
                                 {"probabilityRange": {"low": {"value": 2}, "high": {"value": 4}}}]}
    # a value is stored as it is (a point); a Range as its bounds
    assert rounded(rows(assessment, "number", "probability")) == {(0.5, 0.5), (2.0, 4.0)}


def test_quantity_with_and_without_system() -> None:
    with_system = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                   "valueQuantity": {"value": Decimal("5.4"), "system": "http://unitsofmeasure.org",
                                     "code": "mg", "unit": "mg"}}
    assert rounded(rows(with_system, "quantity", "value-quantity")) == {
        ("http://unitsofmeasure.org", "mg", 5.4, 5.4)}
    bare = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueQuantity": {"value": 120}}
    assert rows(bare, "quantity", "value-quantity") == {(None, None, 120.0, 120.0)}


def test_money_is_a_quantity_in_iso_4217() -> None:
    invoice = {"resourceType": "Invoice", "status": "issued",
               "totalGross": {"value": Decimal("250.00"), "currency": "IRR"}}
    assert rounded(rows(invoice, "quantity", "totalgross")) == {
        ("urn:iso:std:iso:4217", "IRR", 250.0, 250.0)}


# ----------------------------------------------------------------------------------- tokens


def test_token_rows_for_codeable_concept_and_text() -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4",
                                "display": "Heart rate"},
                               {"system": "http://snomed.info/sct", "code": "364075005"}],
                    "text": "Pulso cardíaco"}}
    assert rows(obs, "token", "code") == {("http://loinc.org", "8867-4"),
                                          ("http://snomed.info/sct", "364075005")}
    assert rows(obs, "string", "code:text") == {("heart rate", "Heart rate"),
                                                ("pulso cardiaco", "Pulso cardíaco")}


def test_token_rows_for_coding() -> None:
    patient = {"resourceType": "Patient", "meta": {
        "tag": [{"system": "http://example.org/tags", "code": "demo", "display": "Demo data"}],
        "security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality",
                      "code": "R"}]}}
    assert rows(patient, "token", "_tag") == {("http://example.org/tags", "demo")}
    assert rows(patient, "string", "_tag:text") == {("demo data", "Demo data")}
    assert rows(patient, "token", "_security") == {
        ("http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R")}


def test_identifier_and_of_type() -> None:
    patient = {"resourceType": "Patient", "identifier": [
        {"type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203",
                              "code": "MR"}], "text": "Medical record"},
         "system": "http://hospital.example/mrn", "value": "A-123"},
        {"value": "no-system"}]}
    assert rows(patient, "token", "identifier") == {("http://hospital.example/mrn", "A-123"),
                                                    (None, "no-system")}
    assert rows(patient, "token", "identifier:of-type") == {
        ("http://terminology.hl7.org/CodeSystem/v2-0203", "MR|A-123")}
    assert rows(patient, "string", "identifier:text") == {("medical record", "Medical record")}


SV = "http://hl7.org/fhir/special-values"  # the implicit system of booleans


def test_boolean_code_and_contact_point_tokens() -> None:
    patient = {"resourceType": "Patient", "active": False, "gender": "female",
               "telecom": [{"system": "phone", "value": "+98 21 555"},
                           {"system": "email", "value": "a@example.org"}]}
    assert rows(patient, "token", "active") == {(SV, "false")}
    # The required binding's value set (administrative-gender) includes one code system, so the
    # code's row has that system (search.html#token: code has an implicit system).
    assert rows(patient, "token", "gender") == {
        ("http://hl7.org/fhir/administrative-gender", "female")}
    assert rows(patient, "token", "phone") == {(None, "+98 21 555")}
    assert rows(patient, "token", "email") == {(None, "a@example.org")}
    assert rows(patient, "token", "telecom") == {(None, "+98 21 555"), (None, "a@example.org")}


def test_deceased_expression_with_exists_and_not_equal() -> None:
    # Patient-deceased: Patient.deceased.exists() and Patient.deceased != false
    assert rows({"resourceType": "Patient"}, "token", "deceased") == {(SV, "false")}
    assert rows({"resourceType": "Patient", "deceasedBoolean": True},
                "token", "deceased") == {(SV, "true")}
    assert rows({"resourceType": "Patient", "deceasedDateTime": "2020-01-01"},
                "token", "deceased") == {(SV, "true")}
    assert rows({"resourceType": "Patient", "deceasedBoolean": False},
                "token", "deceased") == {(SV, "false")}


# ------------------------------------------------------------------------------- references


def test_reference_forms() -> None:
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
           "contained": [{"resourceType": "Practitioner", "id": "c1"}],
           "performer": [
               {"reference": "Practitioner/123"},
               {"reference": "Organization/9/_history/2"},
               {"reference": "http://other.example/fhir/PractitionerRole/77"},
               {"reference": "http://other.example/people/abc"},
               {"reference": "urn:uuid:3c9a8d2e-64ef-4c38-a45b-0b5d3ec2d6c1"},
               {"reference": "#c1"},
               {"identifier": {"system": "http://example.org/npi", "value": "555"}},
           ]}
    assert rows(obs, "reference", "performer") == {
        ("Practitioner", "123", None, None),
        ("Organization", "9", "2", None),
        ("PractitionerRole", "77", None, "http://other.example/fhir/PractitionerRole/77"),
        (None, None, None, "http://other.example/people/abc"),
        (None, None, None, "urn:uuid:3c9a8d2e-64ef-4c38-a45b-0b5d3ec2d6c1"),
        ("Practitioner", None, None, "#c1"),  # contained: there (not :missing), no id
    }
    assert rows(obs, "token", "performer:identifier") == {("http://example.org/npi", "555")}


def test_where_resolve_is_a_type_keeps_the_references_to_that_type() -> None:
    """``subject.where(resolve() is Patient)``: relative and absolute references by their type,
    a contained one by the contained resource's, a ``urn:`` one by ``Reference.type``; the
    same nodes as the general ``where`` gives (made to take its general path by ``and true``)."""
    subjects = [{"reference": "Patient/1"}, {"reference": "Group/2"},
                {"reference": "http://other.example/fhir/Patient/3/_history/4"},
                {"reference": "urn:uuid:3c9a8d2e-64ef-4c38-a45b-0b5d3ec2d6c1", "type": "Patient"},
                {"reference": "urn:uuid:77777777-64ef-4c38-a45b-0b5d3ec2d6c1"},
                {"reference": "#p"}, {"reference": "#g"}, {"display": "nobody"},
                {"identifier": {"value": "x"}, "type": "Patient"}]
    contained = [{"resourceType": "Patient", "id": "p"}, {"resourceType": "Group", "id": "g"}]
    fast = compile_path("DeviceRequest.subject.where(resolve() is Patient)", "DeviceRequest")
    general = compile_path("DeviceRequest.subject.where((resolve() is Patient) and true)",
                           "DeviceRequest")
    picked = []
    for subject in subjects:
        request = {"resourceType": "DeviceRequest", "contained": contained, "subject": subject}
        assert fast(request) == general(request)
        picked += [value for value, _ in fast(request)]
    assert picked == [subjects[0], subjects[2], subjects[3], subjects[5], subjects[8]]


def test_canonical_references() -> None:
    definition = {"resourceType": "ActivityDefinition", "status": "active",
                  "library": ["http://example.org/Library/triage|1.0"],
                  "relatedArtifact": [
                      {"type": "depends-on", "resource": "http://example.org/Library/base"},
                      {"type": "composed-of", "resource": "http://example.org/PlanDefinition/p"}]}
    assert rows(definition, "reference", "depends-on") == {
        (None, None, "1.0", "http://example.org/Library/triage"),
        (None, None, None, "http://example.org/Library/base")}
    assert rows(definition, "reference", "composed-of") == {
        (None, None, None, "http://example.org/PlanDefinition/p")}


def test_where_resolve_is_patient() -> None:
    on_patient = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                  "subject": {"reference": "Patient/1"}}
    on_group = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "subject": {"reference": "Group/2"}}
    on_remote = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                 "subject": {"reference": "https://hospital.example/fhir/Patient/7"}}
    assert rows(on_patient, "reference", "patient") == {("Patient", "1", None, None)}
    assert rows(on_group, "reference", "patient") == set()
    assert rows(on_group, "reference", "subject") == {("Group", "2", None, None)}
    assert rows(on_remote, "reference", "patient") == {
        ("Patient", "7", None, "https://hospital.example/fhir/Patient/7")}


def test_meta_profile_and_source_are_uris() -> None:
    patient = {"resourceType": "Patient", "meta": {
        "profile": ["http://example.org/StructureDefinition/tm-patient"],
        "source": "http://his.example/feed#42"}}
    assert rows(patient, "uri", "_profile") == {
        ("http://example.org/StructureDefinition/tm-patient",)}
    assert rows(patient, "uri", "_source") == {("http://his.example/feed#42",)}


# ---------------------------------------------------------------------- choice types, unions


def test_choice_type_quantity_versus_string() -> None:
    quantity = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                "valueQuantity": {"value": 7}}
    text = {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
            "valueString": "Positive"}
    assert rows(quantity, "quantity", "value-quantity") == {(None, None, 7.0, 7.0)}
    assert rows(quantity, "string", "value-string") == set()
    assert rows(text, "string", "value-string") == {("positive", "Positive")}
    assert rows(text, "quantity", "value-quantity") == set()

    value = compile_path("Observation.value", "Observation")
    assert [(n[0], n[1].name) for n in value(quantity)] == [({"value": 7}, "Quantity")]
    assert [(n[0], n[1].name) for n in value(text)] == [("Positive", "string")]
    as_quantity = compile_path("(Observation.value as Quantity)", "Observation")
    assert as_quantity(text) == []
    assert [n[1].name for n in as_quantity(quantity)] == ["Quantity"]
    assert compile_path("Observation.value.ofType(string)", "Observation")(quantity) == []


def test_union_over_several_bases_extracts_own_part() -> None:
    family = registry().get("Practitioner", "family")
    assert family is not None and "Patient.name.family" in (family.expression or "")
    practitioner = {"resourceType": "Practitioner", "name": [{"family": "Tan", "given": ["Wei"]}]}
    assert rows(practitioner, "string", "family") == {("tan", "Tan")}
    # clinical-date: each base's branch alone decides the types extracted
    date = registry().get("AllergyIntolerance", "date")
    assert date is not None
    extractor = date.extractor("AllergyIntolerance")
    assert extractor is not None
    assert {t.name for t in extractor.types} == {"dateTime"}
    encounter_date = date.extractor("Encounter")
    assert encounter_date is not None
    assert {t.name for t in encounter_date.types} == {"Period"}


def test_extension_functions() -> None:
    patient = {"resourceType": "Patient", "extension": [
        {"url": "http://example.org/ext/birth-place", "valueString": "Hohhot"},
        {"url": "http://example.org/ext/level", "valueCodeableConcept": {"text": "L2"}}]}
    by_call = compile_path("Patient.extension('http://example.org/ext/birth-place').value",
                           "Patient")
    assert [(n[0], n[1].name) for n in by_call(patient)] == [("Hohhot", "string")]
    by_where = compile_path(
        "Patient.extension.where(url = 'http://example.org/ext/level').value", "Patient")
    assert [(n[0], n[1].name) for n in by_where(patient)] == [({"text": "L2"},
                                                                "CodeableConcept")]


def test_fhirpath_boolean_functions() -> None:
    patient = {"resourceType": "Patient", "name": [{"given": ["A", "B"]}, {"family": "C"}]}
    assert compile_path("Patient.name.given.first()", "Patient")(patient)[0][0] == "A"
    assert compile_path("Patient.name.given.exists()", "Patient")(patient)[0][0] is True
    assert compile_path("Patient.photo.empty()", "Patient")(patient)[0][0] is True
    assert compile_path("Patient.photo.exists().not()", "Patient")(patient)[0][0] is True
    assert compile_path("Patient.name.where(family = 'C' or family = 'D').exists()",
                        "Patient")(patient)[0][0] is True
    assert compile_path("Patient.name[1].family", "Patient")(patient)[0][0] == "C"
    assert compile_path("Patient.name.family is string", "Patient")(patient)[0][0] is True


# ------------------------------------------------------------------------------- composites


def test_composite_pairs_each_component_with_its_own_value() -> None:
    blood_pressure = {"resourceType": "Observation", "status": "final",
                      "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                      "component": [
                          {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
                           "valueQuantity": {"value": 120, "system": "http://unitsofmeasure.org",
                                             "code": "mm[Hg]"}},
                          {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]},
                           "valueQuantity": {"value": 80, "system": "http://unitsofmeasure.org",
                                             "code": "mm[Hg]"}}]}
    got = rows(blood_pressure, "composite", "component-code-value-quantity")
    assert got == {
        ((("http://loinc.org", "8480-6"), ("http://unitsofmeasure.org", "mm[Hg]", 120.0, 120.0)),),
        ((("http://loinc.org", "8462-4"), ("http://unitsofmeasure.org", "mm[Hg]", 80.0, 80.0)),),
    }


# --------------------------------------------------------------------------- registry itself


def test_common_parameters() -> None:
    reg = registry()
    for resource_type in ("Patient", "Observation", "Binary", "Bundle"):
        codes = set(reg.params_for(resource_type))
        assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= codes
        assert not codes & {"_text", "_content", "_query", "_filter"}
    assert reg.get("Patient", "_id").column == "id"  # type: ignore[union-attr]
    assert reg.get("Patient", "_lastUpdated").column == "lastUpdated"  # type: ignore[union-attr]
    assert reg.get("Location", "near") is None
    out = extract({"resourceType": "Patient", "id": "x1",
                   "meta": {"lastUpdated": "2024-01-01T00:00:00Z"}})
    assert not [r for kind in out.values() for r in kind if r[0] in ("_id", "_lastUpdated")]


@pytest.mark.skipif(not (DEFAULT_DEFINITIONS / "search-parameters.json.gz").exists(),
                    reason="FHIR R4 definitions not beside the repository")
def test_every_r4_parameter_is_compiled_or_reported() -> None:
    with gzip.open(DEFAULT_DEFINITIONS / "search-parameters.json.gz", "rt") as fh:
        definitions = [e["resource"] for e in json.load(fh)["entry"]]
    custom = custom_definitions()  # Consilium's own, under profiles/
    assert len(definitions) == 1378
    assert len(load_definitions()) == 1378 + len(custom)
    reg = registry()
    supported = {p.url for p in reg.params}
    skipped = {url for url, _ in reg.skipped}
    assert supported | skipped == {d["url"] for d in definitions} | {d["url"] for d in custom}
    # Not supportable by their definition: no expression (_text, _content, _query), special
    # (near), a Bundle's first entry is a resource not a reference, and R4's
    # DocumentReference-relationship pairs its reference component with the code element.
    assert skipped == {f"http://hl7.org/fhir/SearchParameter/{name}" for name in (
        "DomainResource-text", "Resource-content", "Resource-query", "Location-near",
        "Bundle-composition", "Bundle-message", "DocumentReference-relationship")}
    compiled = [p for p in reg.params if p.extractors]
    # minus skipped, minus the _id/_lastUpdated columns, plus Consilium's own
    assert len(compiled) == 1378 - 7 - 2 + len(custom)
    composites = [p for p in reg.params if p.type == "composite"]
    assert len(composites) == 46 - 1
    assert all(len(p.components) >= 2 for p in composites)


@pytest.mark.parametrize("expression", [
    "Patient.name.family.substring(0, 2)",
    "Patient.nonexistent",
    "Patient.birthDate > @2020",
    "Patient.name.resolve()",
    "Observation.value as Foo",
    "Patient.name.given + 'x'",
    "Patient.name.where(",
    "Patient.birthDate.as(Quantity)",
    "%context.name",
])
def test_unsupported_expressions_fail_at_compile_time(expression: str) -> None:
    with pytest.raises(FhirPathError):
        compile_path(expression, expression.split(".")[0].lstrip("%") if expression[0] != "%"
                     else "Patient")


def test_uncompilable_parameter_is_skipped_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    raw = [
        {"url": "http://example.org/SearchParameter/ok", "code": "nick", "base": ["Patient"],
         "type": "string", "expression": "Patient.name.text"},
        {"url": "http://example.org/SearchParameter/bad", "code": "initials",
         "base": ["Patient"], "type": "string", "expression": "Patient.name.given.substring(0,1)"},
        {"url": "http://example.org/SearchParameter/wrong-type", "code": "born",
         "base": ["Patient"], "type": "quantity", "expression": "Patient.birthDate"},
    ]
    with caplog.at_level(logging.INFO, logger="server.search.registry"):
        reg = build(raw)
    assert reg.get("Patient", "nick") is not None
    assert reg.get("Patient", "initials") is None
    assert reg.get("Patient", "born") is None
    assert {url for url, _ in reg.skipped} == {"http://example.org/SearchParameter/bad",
                                               "http://example.org/SearchParameter/wrong-type"}
    events = [r for r in caplog.records if getattr(r, "event", None) == "search.param.skipped"]
    assert {getattr(r, "url", None) for r in events} == {
        "http://example.org/SearchParameter/bad", "http://example.org/SearchParameter/wrong-type"}
    assert all(getattr(r, "reason", "") for r in events)


def test_param_id_collisions_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = [{"url": f"http://example.org/SearchParameter/{c}", "code": c, "base": ["Patient"],
            "type": "string", "expression": "Patient.name.text"} for c in ("a", "b")]
    monkeypatch.setattr(registry_module, "param_id", lambda type_, code: 7)
    with pytest.raises(RuntimeError, match="collide"):
        build(raw)


def test_r4_registry_has_no_param_id_collisions() -> None:
    from server.storage.sqlite_schema import param_id
    reg = registry()
    ids: dict[int, tuple[str, str]] = {}
    for resource_type in reg.resource_types:
        for param in reg.params_for(resource_type).values():
            for code in param.index_codes():
                assert ids.setdefault(param_id(resource_type, code), (resource_type, code)) == (
                    resource_type, code)


def test_rows_are_deduplicated() -> None:
    obs = {"resourceType": "Observation", "status": "final",
           "code": {"coding": [{"system": "http://loinc.org", "code": "1"},
                               {"system": "http://loinc.org", "code": "1"}],
                    "text": "Same", },
           "category": [{"text": "Same"}, {"text": "same"}]}
    out = extract(obs)
    for kind_rows in out.values():
        assert len(kind_rows) == len(set(kind_rows))
    assert rows(obs, "token", "code") == {("http://loinc.org", "1")}


PRIMITIVE_SAMPLES: dict[str, Any] = {
    "boolean": True, "integer": 3, "positiveInt": 2, "unsignedInt": 0,
    "decimal": Decimal("1.50"), "date": "2020-02", "dateTime": "2020-01-02T03:04:05+03:30",
    "instant": "2020-01-02T03:04:05.123Z", "time": "10:00:00",
    "uri": "http://example.org/fhir/Patient/1", "url": "http://example.org/x",
    "canonical": "http://example.org/ValueSet/x|1.0", "oid": "urn:oid:1.2.3",
    "uuid": "urn:uuid:8f0c0d8a-1111-2222-3333-444455556666", "base64Binary": "AAAA",
    "xhtml": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>',
    "string": "Ábc déf", "markdown": "Ábc", "code": "abc", "id": "abc",
}


def _populated(elements: dict[str, Any], depth: int) -> dict[str, Any]:
    """Every element of a structure filled with a value of its type (all choice types too)."""
    from server.fhir.structures import structures
    out: dict[str, Any] = {}
    for name, el in elements.items():
        if el.choices or (name in ("extension", "modifierExtension") and depth > 0):
            continue
        kind = el.types[0] if el.types else "BackboneElement"
        if kind in PRIMITIVE_SAMPLES:
            value: Any = PRIMITIVE_SAMPLES[kind]
        elif kind == "Reference":
            value = {"reference": "Patient/1", "identifier": {"system": "s", "value": "v"}}
        elif kind == "Resource":
            value = {"resourceType": "Patient", "id": "c1"}
        elif depth < 4:
            value = _populated(el.children or structures().children(el), depth + 1)
        else:
            continue
        if value != {}:
            out[name] = [value] if el.is_list else value
    return out


def test_every_resource_type_with_every_element_extracts() -> None:
    from server.fhir.structures import structures
    reg = registry()
    for resource_type in structures().resource_types:
        resource = _populated(structures().types[resource_type].elements, 0)
        resource["resourceType"] = resource_type
        out = extract(resource)
        assert set(out) >= {"string", "token", "reference", "date", "number", "quantity", "uri"}
        codes = {r[0].split(":")[0] for kind in out.values() for r in kind}
        contained = {c for c in codes if ">#" in c}  # a contained resource's, chained into
        codes -= contained
        assert {"_tag", "_security", "_profile", "_source"} <= codes, resource_type
        assert codes <= set(reg.params_for(resource_type)), resource_type
        for code in contained:
            referring, _, rest = code.partition(">#")
            inner, _, name = rest.partition(".")
            assert reg.get(resource_type, referring).type == "reference", (resource_type, code)
            assert name in reg.params_for(inner), (resource_type, code)


# ------------------------------------------------------- expressions skipped for absent elements

@pytest.mark.parametrize("expression, resource_type, keys", [
    # A type filter on an element of the resource keeps the keys of the types it keeps.
    ("Observation.value as Quantity", "Observation", {"valueQuantity"}),
    ("Observation.value.as(DateTime) | Observation.value.as(Period)", "Observation",
     {"valueDateTime", "valuePeriod"}),
    ("Observation.value", "Observation",
     {"valueQuantity", "valueCodeableConcept", "valueString", "valueBoolean", "valueInteger",
      "valueRange", "valueRatio", "valueSampledData", "valueTime", "valueDateTime",
      "valuePeriod"}),
    ("Observation.component.value as Quantity", "Observation", {"component"}),
    ("Observation.subject.where(resolve() is Patient)", "Observation", {"subject"}),
    ("Patient.name | Patient.telecom", "Patient", {"name", "telecom"}),
    ("Patient.extension('http://example.org/x')", "Patient", {"extension"}),
    ("Resource.meta.tag", "Resource", {"meta"}),
    # Booleans come out whether or not the element is there: never skipped.
    ("Patient.deceased.exists() and Patient.deceased != false", "Patient", None),
    ("Observation | Observation.component", "Observation", None),
    ("Patient.name | %resource", "Patient", None),
])
def test_the_keys_an_expression_reads(expression: str, resource_type: str,
                                      keys: set[str] | None) -> None:
    found = compile_path(expression, resource_type).keys
    assert (None if found is None else set(found)) == keys


def test_skipping_expressions_changes_no_rows(monkeypatch: pytest.MonkeyPatch) -> None:
    """Extraction skips a parameter whose elements the resource lacks; on realistic data of
    every generated type, the rows are those of evaluating every expression."""
    from bench.datagen import iter_resources
    from server.search import index

    resources = [r for r, _ in zip(iter_resources(40, seed=11), range(3000), strict=False)]
    with_skipping = [extract(r) for r in resources]
    every = {t: tuple(_never_skipping(step) for step in index.plan(t))
             for t in {r["resourceType"] for r in resources}}
    monkeypatch.setattr(index, "plan", lambda t: every[t])
    index._steps.cache_clear()
    try:
        assert [extract(r) for r in resources] == with_skipping
    finally:
        index._steps.cache_clear()
    assert len(every) >= 10
    values = {k for r in resources if r["resourceType"] == "Observation" for k in r
              if k.startswith("value")}
    assert {"valueQuantity", "valueCodeableConcept"} <= values  # composites skipped and not


def _never_skipping(step: tuple[Any, ...]) -> tuple[Any, ...]:
    """A plan step that evaluates whatever keys the resource has (also its composite's
    components)."""
    return (*step[:5], ())

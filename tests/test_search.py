"""FHIR search through HTTP, one parameter type at a time (http://hl7.org/fhir/R4/search.html).

Expectations come from the specification's sections on each type (#string, #token, #reference,
#date, #number, #quantity, #uri, #modifiers, #combining). The helpers here are shared by the
other ``test_search_*`` modules.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import Fhir

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
V2_0203 = "http://terminology.hl7.org/CodeSystem/v2-0203"
BASE = "http://testserver/fhir"

Params = list[tuple[str, str]] | dict[str, str]


# -- helpers -------------------------------------------------------------------------------------

def put(fhir: Fhir, resource: dict[str, Any]) -> dict[str, Any]:
    """Store ``resource`` under its own id (update as create) and return what was stored."""
    r = fhir.put(f"{resource['resourceType']}/{resource['id']}", resource)
    assert r.status_code in (200, 201), r.text
    return r.json()


def put_all(fhir: Fhir, *resources: dict[str, Any]) -> None:
    for resource in resources:
        put(fhir, resource)


def patient(id_: str, **fields: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, **fields}


def observation(id_: str, **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Observation", "id": id_, "status": "final",
                            "code": {"text": "test"}}
    body.update(fields)
    return body


def search(fhir: Fhir, path: str, params: Params | None = None,
           headers: dict[str, str] | None = None) -> dict[str, Any]:
    r = fhir.get(path, params=params, headers=headers)
    assert r.status_code == 200, r.text
    bundle = r.json()
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
    return bundle


def entries(bundle: dict[str, Any], mode: str = "match") -> list[dict[str, Any]]:
    return [e for e in bundle.get("entry", []) if e.get("search", {}).get("mode") == mode]


def ids(bundle: dict[str, Any], mode: str = "match") -> list[str]:
    return [e["resource"]["id"] for e in entries(bundle, mode)]


def found(fhir: Fhir, path: str, params: Params | None = None) -> set[str]:
    """Ids of the matches of a search that fits on one page."""
    bundle = search(fhir, path, params)
    assert not any(link["relation"] == "next" for link in bundle.get("link", [])), bundle
    got = ids(bundle)
    assert len(got) == len(set(got)), got
    return set(got)


def refused(fhir: Fhir, path: str, params: Params, expression: str | None = None,
            status: int = 400, headers: dict[str, str] | None = None) -> dict[str, Any]:
    """The search is refused with an OperationOutcome that names the parameter."""
    r = fhir.get(path, params=params, headers=headers)
    assert r.status_code == status, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome", body
    issue = body["issue"][0]
    assert issue["severity"] in ("error", "fatal")
    assert issue["diagnostics"] and "Traceback" not in issue["diagnostics"]
    if expression is not None:
        assert expression in issue.get("expression", []), body
    return body


# -- string --------------------------------------------------------------------------------------

@pytest.fixture
def people(fhir: Fhir) -> Fhir:
    put_all(
        fhir,
        patient("chalmers", name=[{"use": "official", "family": "Chalmers",
                                   "given": ["Peter", "James"]}],
                address=[{"line": ["534 Erewhon St"], "city": "PleasantVille",
                          "district": "Rainbow", "state": "Vic", "postalCode": "3999",
                          "country": "Australia"}]),
        patient("muller", name=[{"family": "Müller", "given": ["Zoë"], "prefix": ["Dr."]}],
                address=[{"city": "Zürich", "country": "Switzerland"}]),
        # Persian: محمّد carries a shadda (a combining mark); searches without it must match.
        patient("karimi", name=[{"family": "کریمی", "given": ["محمّد", "رضا"]}],
                address=[{"city": "تهران", "country": "ایران"}]),
        patient("wang", name=[{"text": "王小明", "family": "王", "given": ["小明"]}],
                address=[{"city": "呼和浩特", "state": "内蒙古"}]),
        patient("nameless", gender="unknown"),
    )
    return fhir


@pytest.mark.parametrize("value, expected", [
    ("peter", {"chalmers"}),  # a given name
    ("PET", {"chalmers"}),  # case-insensitive, starts with
    ("chal", {"chalmers"}),  # the family name
    ("james", {"chalmers"}),
    ("ames", set()),  # default matching is "starts with", not "contains"
    ("muller", {"muller"}),  # accent-insensitive
    ("MÜLLER", {"muller"}),
    ("zoe", {"muller"}),
    ("dr", {"muller"}),  # prefix is a part of the name
    ("محمد", {"karimi"}),  # without the shadda
    ("محمّد", {"karimi"}),
    ("کریم", {"karimi"}),
    ("رضا", {"karimi"}),
    ("王", {"wang"}),
    ("小明", {"wang"}),
    ("王小", {"wang"}),  # HumanName.text
    ("明", set()),
])
def test_string_default_is_case_and_accent_insensitive_prefix(people: Fhir, value: str,
                                                              expected: set[str]) -> None:
    assert found(people, "Patient", {"name": value}) == expected


def test_string_exact_and_contains(people: Fhir) -> None:
    assert found(people, "Patient", {"family:exact": "Chalmers"}) == {"chalmers"}
    assert found(people, "Patient", {"family:exact": "chalmers"}) == set()
    assert found(people, "Patient", {"family:exact": "Chal"}) == set()
    assert found(people, "Patient", {"family:exact": "Müller"}) == {"muller"}
    assert found(people, "Patient", {"family:exact": "Muller"}) == set()
    assert found(people, "Patient", {"given:exact": "محمّد"}) == {"karimi"}
    assert found(people, "Patient", {"given:exact": "محمد"}) == set()
    assert found(people, "Patient", {"name:contains": "ames"}) == {"chalmers"}
    assert found(people, "Patient", {"name:contains": "LME"}) == {"chalmers"}
    assert found(people, "Patient", {"name:contains": "ulle"}) == {"muller"}
    assert found(people, "Patient", {"name:contains": "小"}) == {"wang"}
    assert found(people, "Patient", {"name:contains": "%"}) == set()
    assert found(people, "Patient", {"name:contains": "_"}) == set()


def test_string_on_name_and_address_parts(people: Fhir) -> None:
    assert found(people, "Patient", {"family": "chalmers"}) == {"chalmers"}
    assert found(people, "Patient", {"family": "peter"}) == set()  # a given name, not family
    assert found(people, "Patient", {"given": "peter"}) == {"chalmers"}
    assert found(people, "Patient", {"given": "王"}) == set()
    assert found(people, "Patient", {"address": "534"}) == {"chalmers"}  # line
    assert found(people, "Patient", {"address": "pleasant"}) == {"chalmers"}  # city
    assert found(people, "Patient", {"address": "rainbow"}) == {"chalmers"}  # district
    assert found(people, "Patient", {"address": "zurich"}) == {"muller"}
    assert found(people, "Patient", {"address": "تهران"}) == {"karimi"}
    assert found(people, "Patient", {"address:contains": "erewhon"}) == {"chalmers"}
    assert found(people, "Patient", {"address-city": "pleasantville"}) == {"chalmers"}
    assert found(people, "Patient", {"address-city": "呼和"}) == {"wang"}
    assert found(people, "Patient", {"address-city": "australia"}) == set()
    assert found(people, "Patient", {"address-state": "内蒙古"}) == {"wang"}
    assert found(people, "Patient", {"address-postalcode": "39"}) == {"chalmers"}
    assert found(people, "Patient", {"address-country": "swit"}) == {"muller"}


def test_string_or_with_escaped_commas_and_and(fhir: Fhir) -> None:
    put_all(fhir,
            {"resourceType": "Organization", "id": "sj", "name": "Smith, Jones and Co"},
            {"resourceType": "Organization", "id": "s", "name": "Smithers Clinic"},
            {"resourceType": "Organization", "id": "j", "name": "Jones Hospital"})
    assert found(fhir, "Organization", {"name": "smith"}) == {"sj", "s"}
    assert found(fhir, "Organization", {"name": "smith,jones"}) == {"sj", "s", "j"}  # OR
    assert found(fhir, "Organization", {"name": "smith\\, jones"}) == {"sj"}  # one value
    assert found(fhir, "Organization", {"name": "xyz,jones"}) == {"j"}
    # search.html#escaping: "The parameter value xx\xx is illegal"
    for value in ("smith\\s", "smith\\"):
        refused(fhir, "Organization", {"name": value}, "name")
    assert found(fhir, "Organization", {"name": "smith\\\\"}) == set()  # a backslash, escaped
    assert found(fhir, "Organization", [("name", "smith"), ("name", "smithe")]) == {"s"}  # AND
    assert found(fhir, "Organization", [("name", "smith"), ("name:contains", "jones")]) == {"sj"}
    assert found(fhir, "Organization", [("name", "jones"), ("name", "smith")]) == set()


# -- token ---------------------------------------------------------------------------------------

@pytest.fixture
def coded(fhir: Fhir) -> Fhir:
    put_all(
        fhir,
        observation("weight", code={"coding": [{"system": LOINC, "code": "29463-7",
                                                "display": "Body weight"}], "text": "Weight"}),
        observation("height", code={"coding": [{"system": LOINC, "code": "8302-2",
                                                "display": "Body height"}]}),
        observation("local", code={"coding": [{"code": "29463-7"}], "text": "Local scale"}),
        observation("snomed", code={"coding": [
            {"system": "http://snomed.info/sct", "code": "27113001", "display": "Body weight"},
            {"system": LOINC, "code": "29463-7"}]}),
        observation("textonly", code={"text": "Glucose, fasting"}),
        patient("male", gender="male", active=True, identifier=[
            {"type": {"coding": [{"system": V2_0203, "code": "MR"}], "text": "Medical record"},
             "system": "urn:oid:1.2.36.146.595.217.0.1", "value": "12345"}]),
        patient("female", gender="female", active=False, identifier=[
            {"type": {"coding": [{"system": V2_0203, "code": "SS"}]},
             "system": "http://hl7.org/fhir/sid/us-ssn", "value": "12345"},
            {"value": "no-system-1"}],
            telecom=[{"system": "phone", "value": "+98 21 5555 0000"},
                     {"system": "email", "value": "f@example.org"}]),
        patient("blank"),
    )
    return fhir


def test_token_code_system_and_both(coded: Fhir) -> None:
    all_weights = {"weight", "local", "snomed"}
    assert found(coded, "Observation", {"code": "29463-7"}) == all_weights
    assert found(coded, "Observation", {"code": f"{LOINC}|29463-7"}) == {"weight", "snomed"}
    assert found(coded, "Observation", {"code": "|29463-7"}) == {"local"}
    assert found(coded, "Observation", {"code": f"{LOINC}|"}) == {"weight", "height", "snomed"}
    assert found(coded, "Observation", {"code": "http://snomed.info/sct|29463-7"}) == set()
    assert found(coded, "Observation", {"code": "29463-7,8302-2"}) == all_weights | {"height"}
    assert found(coded, "Observation", {"code": "29463"}) == set()  # tokens match whole codes
    assert found(coded, "Observation", [("code", "29463-7"),
                                        ("code", "http://snomed.info/sct|")]) == {"snomed"}


def test_token_text_modifier(coded: Fhir) -> None:
    assert found(coded, "Observation", {"code:text": "body weight"}) == {"weight", "snomed"}
    # :text is processed as a string search: case-insensitive, starting with the value.
    assert found(coded, "Observation", {"code:text": "weight"}) == {"weight"}
    assert found(coded, "Observation", {"code:text": "fasting"}) == set()
    assert found(coded, "Observation", {"code:text": "GLUCOSE"}) == {"textonly"}
    assert found(coded, "Observation", {"code:text": "local"}) == {"local"}
    assert found(coded, "Patient", {"identifier:text": "medical"}) == {"male"}


def test_token_not_includes_resources_without_the_element(coded: Fhir) -> None:
    assert found(coded, "Patient", {"gender:not": "male"}) == {"female", "blank"}
    assert found(coded, "Patient", {"gender:not": "male,female"}) == {"blank"}
    assert found(coded, "Observation", {"code:not": f"{LOINC}|29463-7"}) == {
        "height", "local", "textonly"}
    assert found(coded, "Patient", {"active:not": "true"}) == {"female", "blank"}


def test_token_identifier_telecom_and_of_type(coded: Fhir) -> None:
    assert found(coded, "Patient", {"identifier": "12345"}) == {"male", "female"}
    assert found(coded, "Patient", {"identifier": "urn:oid:1.2.36.146.595.217.0.1|12345"}) == {
        "male"}
    assert found(coded, "Patient", {"identifier": "|no-system-1"}) == {"female"}
    assert found(coded, "Patient", {"identifier": "|12345"}) == set()
    assert found(coded, "Patient", {"identifier:of-type": f"{V2_0203}|MR|12345"}) == {"male"}
    assert found(coded, "Patient", {"identifier:of-type": f"{V2_0203}|SS|12345"}) == {"female"}
    assert found(coded, "Patient", {"identifier:of-type": f"{V2_0203}|MR|99999"}) == set()
    assert found(coded, "Patient", {"telecom": "+98 21 5555 0000"}) == {"female"}
    assert found(coded, "Patient", {"phone": "+98 21 5555 0000"}) == {"female"}
    assert found(coded, "Patient", {"email": "f@example.org"}) == {"female"}
    assert found(coded, "Patient", {"phone": "f@example.org"}) == set()
    refused(coded, "Patient", {"identifier:of-type": f"{V2_0203}|MR"}, "identifier:of-type")
    # search.html#token: :of-type is of Identifiers (their type and value), not of other tokens
    for name in ("gender:of-type", "_tag:of-type", "active:of-type"):
        body = refused(coded, "Patient", {name: "a|b|c"}, name)
        assert body["issue"][0]["code"] == "not-supported"


def test_tokens_on_text_elements_ignore_case(fhir: Fhir) -> None:
    """search.html#token: "If the underlying data type is string then the search is not case
    sensitive": a ContactPoint's value, Medication.batch.lotNumber; codes, and identifiers,
    stay case-sensitive."""
    put_all(fhir, patient("mail", telecom=[{"system": "email", "value": "John@Example.org"}],
                          gender="male"),
            {"resourceType": "Medication", "id": "lot", "batch": {"lotNumber": "LOT-AbC-1"}})
    for value in ("john@example.org", "JOHN@EXAMPLE.ORG", "John@Example.org"):
        assert found(fhir, "Patient", {"email": value}) == {"mail"}, value
        assert found(fhir, "Patient", {"telecom": value}) == {"mail"}, value
    assert found(fhir, "Patient", {"email:not": "john@example.org"}) == set()
    assert found(fhir, "Medication", {"lot-number": "lot-abc-1"}) == {"lot"}
    assert found(fhir, "Patient", {"gender": "MALE"}) == set()


def test_token_booleans_and_codes_with_an_implicit_system(coded: Fhir) -> None:
    assert found(coded, "Patient", {"active": "true"}) == {"male"}
    assert found(coded, "Patient", {"active": "false"}) == {"female"}
    # "The implicit system for boolean values is http://hl7.org/fhir/special-values"
    assert found(coded, "Patient", {"active": "http://hl7.org/fhir/special-values|true"}) == {
        "male"}
    assert found(coded, "Patient", {"active": "|true"}) == set()
    assert found(coded, "Patient", {"gender": "male"}) == {"male"}
    assert found(coded, "Patient", {"gender": "http://hl7.org/fhir/administrative-gender|male"}
                 ) == {"male"}
    assert found(coded, "Patient", {"gender": "http://hl7.org/fhir/administrative-gender|"}) == {
        "male", "female"}
    assert found(coded, "Patient", {"gender": "http://example.org/other|male"}) == set()
    # The code's system is implicit, not absent: |male asks for a code without one.
    assert found(coded, "Patient", {"gender": "|male"}) == set()
    assert found(coded, "Patient", {"gender:not": "|male"}) == {"male", "female", "blank"}
    assert found(coded, "Observation", {"status": "final"}) == {
        "weight", "height", "local", "snomed", "textonly"}


# -- reference -----------------------------------------------------------------------------------

@pytest.fixture
def referring(fhir: Fhir) -> Fhir:
    put_all(
        fhir,
        patient("p1"), patient("p2"),
        {"resourceType": "Group", "id": "p1", "type": "person", "actual": True},
        observation("o-rel", subject={"reference": "Patient/p1"}),
        observation("o-abs", subject={"reference": f"{BASE}/Patient/p1"}),
        observation("o-foreign", subject={"reference": "http://other.example.org/fhir/Patient/p1"}),
        observation("o-p2", subject={"reference": "Patient/p2"}),
        observation("o-group", subject={"reference": "Group/p1"}),
        observation("o-ident", subject={"identifier": {"system": "urn:oid:1.2.3", "value": "99"}}),
        observation("o-none"),
        {"resourceType": "ServiceRequest", "id": "sr2", "status": "active", "intent": "order",
         "subject": {"reference": "Patient/p1"},
         "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/consult|2.0"]},
        {"resourceType": "ServiceRequest", "id": "sr1", "status": "active", "intent": "order",
         "subject": {"reference": "Patient/p1"},
         "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/consult|1.0"]},
        {"resourceType": "ServiceRequest", "id": "sr0", "status": "active", "intent": "order",
         "subject": {"reference": "Patient/p1"},
         "instantiatesCanonical": ["http://example.org/fhir/PlanDefinition/consult"]},
    )
    return fhir


def test_reference_forms(referring: Fhir) -> None:
    local = {"o-rel", "o-abs"}
    assert found(referring, "Observation", {"subject": "Patient/p1"}) == local
    assert found(referring, "Observation", {"subject:Patient": "p1"}) == local
    assert found(referring, "Observation", {"patient": "p1"}) == local  # one target type
    assert found(referring, "Observation", {"subject": f"{BASE}/Patient/p1"}) == local
    assert found(referring, "Observation", {"subject": "Group/p1"}) == {"o-group"}
    assert found(referring, "Observation", {"subject:Group": "p1"}) == {"o-group"}
    # An id alone on a parameter with several target types: any of them.
    assert found(referring, "Observation", {"subject": "p1"}) == local | {"o-group"}
    assert found(referring, "Observation", {"subject": "Patient/p1,Patient/p2"}) == local | {
        "o-p2"}
    assert found(referring, "Observation", {
        "subject": "http://other.example.org/fhir/Patient/p1"}) == {"o-foreign"}
    assert found(referring, "Observation", {"subject": "Patient/p3"}) == set()


def test_reference_identifier_and_canonical(referring: Fhir) -> None:
    assert found(referring, "Observation", {"subject:identifier": "urn:oid:1.2.3|99"}) == {
        "o-ident"}
    assert found(referring, "Observation", {"subject:identifier": "99"}) == {"o-ident"}
    assert found(referring, "Observation", {"subject:identifier": "urn:oid:1.2.3|98"}) == set()
    url = "http://example.org/fhir/PlanDefinition/consult"
    assert found(referring, "ServiceRequest", {"instantiates-canonical": url}) == {
        "sr0", "sr1", "sr2"}
    assert found(referring, "ServiceRequest", {"instantiates-canonical": f"{url}|2.0"}) == {"sr2"}
    assert found(referring, "ServiceRequest", {"instantiates-canonical": f"{url}|3.0"}) == set()


def test_bad_references_are_refused(referring: Fhir) -> None:
    refused(referring, "Observation", {"subject": "Nonsense/p1"}, "subject")
    refused(referring, "Observation", {"subject:Patient": "Group/p1"}, "subject:Patient")
    refused(referring, "Observation", {"subject:Nonsense": "p1"}, "subject:Nonsense")
    refused(referring, "Observation", {"patient:Group": "p1"}, "patient:Group")
    refused(referring, "Observation", {"subject": "a/b/c"}, "subject")
    # search.html#errors: "Where the content of the parameter is syntactically incorrect,
    # servers SHOULD return an error": an id or version that is no id
    for value in ("Patient/", "Patient/p 1", "p 1", "Patient/p1/_history/", "Patient/p1/_history/x y"):
        refused(referring, "Observation", {"subject": value}, "subject")


# -- date ----------------------------------------------------------------------------------------

@pytest.fixture
def births(fhir: Fhir) -> Fhir:
    put_all(fhir,
            patient("day", birthDate="1974-12-25"),
            patient("month", birthDate="1974-12"),
            patient("year", birthDate="1974"),
            patient("november", birthDate="1974-11-30"),
            patient("leap", birthDate="2000-02-29"),
            patient("unborn"))
    return fhir


@pytest.mark.parametrize("value, expected", [
    ("1974-12-25", {"day"}),
    ("1974-12", {"day", "month"}),
    ("1974", {"day", "month", "year", "november"}),
    ("eq1974", {"day", "month", "year", "november"}),
    ("ne1974-12", {"year", "november", "leap"}),
    ("gt1974-12-24", {"day", "month", "year", "leap"}),
    ("gt1974-12", {"leap"}),  # the year 1974 ends with December: nothing of it lies above
    ("lt1974-12-25", {"month", "year", "november"}),
    ("lt1974-12", {"year", "november"}),
    ("ge1974-12-25", {"day", "month", "year", "leap"}),
    ("le1974-12-25", {"day", "month", "year", "november"}),
    ("sa1974-12-25", {"leap"}),
    ("sa1973", {"day", "month", "year", "november", "leap"}),
    ("sa1974", {"leap"}),
    ("eb1974-12", {"november"}),
    ("eb1975", {"day", "month", "year", "november"}),
    ("eb1974", set()),
    ("2000-02", {"leap"}),
    ("2000-02-29", {"leap"}),
    ("2000-03-01", set()),
    ("2000-02-28", set()),
    ("ge2000-02-29", {"leap"}),
    ("gt2000-02-29", set()),
    ("lt2000-03", {"day", "month", "year", "november", "leap"}),
    ("ap1974-12-25", {"day", "month", "year", "november"}),
    # search.html#prefix: "lt2013-01-14T10:00", "gt2013-01-14T10:00": 2013-01-14 matches both
    ("lt1974-12-25T10:00", {"day", "month", "year", "november"}),
    ("gt1974-12-25T10:00", {"day", "month", "year", "leap"}),
])
def test_date_prefixes_at_precision_boundaries(births: Fhir, value: str,
                                               expected: set[str]) -> None:
    assert found(births, "Patient", {"birthdate": value}) == expected


def test_date_ranges_or_and_and(births: Fhir) -> None:
    assert found(births, "Patient", {"birthdate": "1974-12-25,2000"}) == {"day", "leap"}
    # The year 1974 reaches both above 1974-12-01 and below 1974-12-31.
    assert found(births, "Patient", [("birthdate", "ge1974-12-01"), ("birthdate", "le1974-12-31")]
                 ) == {"day", "month", "year"}
    assert found(births, "Patient", [("birthdate", "ge1974-12-01"), ("birthdate", "eb1975")]
                 ) == {"day", "month", "year"}
    assert found(births, "Patient", [("birthdate", "sa1974-11"), ("birthdate", "eb1975")]
                 ) == {"day", "month"}


@pytest.fixture
def effective(fhir: Fhir) -> Fhir:
    put_all(fhir,
            # 23:30 at UTC-5 is 04:30 UTC on the next day.
            observation("late", effectiveDateTime="2020-01-01T23:30:00-05:00"),
            observation("morning", effectiveDateTime="2020-01-01T10:00:00Z"),
            observation("tehran", effectiveDateTime="2020-01-01T02:00:00+03:30"),
            observation("instant", effectiveInstant="2020-01-01T00:00:00.000Z"),
            observation("ongoing", effectivePeriod={"start": "2019-12-31"}),
            observation("ended", effectivePeriod={"end": "2019-06-30"}),
            observation("closed", effectivePeriod={"start": "2019-03-01T08:00:00Z",
                                                   "end": "2019-03-01T09:00:00Z"}),
            observation("undated"))
    return fhir


@pytest.mark.parametrize("value, expected", [
    ("2020-01-02", {"late"}),
    ("2020-01-01", {"morning", "instant"}),
    ("2019-12-31", {"tehran"}),  # 02:00+03:30 is 22:30 UTC the day before
    ("2020-01", {"late", "morning", "instant"}),
    ("2020-01-01T23:30:00-05:00", {"late"}),
    ("2020-01-02T04:30:00Z", {"late"}),
    ("2020-01-01T10:00:00Z", {"morning"}),
    ("2020-01-01T10:00:01Z", set()),
    ("gt2020-01-01T12:00:00Z", {"late", "ongoing"}),
    ("ge2020-06", {"ongoing"}),
    ("lt2019-12-31", {"ended", "closed"}),
    ("le2019-01", {"ended"}),
    ("sa2019-12-30", {"late", "morning", "tehran", "instant", "ongoing"}),
    ("eb2019-12-31", {"ended", "closed"}),
    ("eb2019-03-01T08:30:00Z", set()),  # "ended" ends in June
    ("2019-03-01", {"closed"}),
    ("2019-03", {"closed"}),
    ("2019-03-01T08:30:00Z", set()),  # an hour is not within one second
    ("ne2019-03-01", {"late", "morning", "tehran", "instant", "ongoing", "ended"}),
    ("gt2019-03-01T08:30:00Z", {"late", "morning", "tehran", "instant", "ongoing", "ended",
                                "closed"}),
    ("eb2019-07", {"ended", "closed"}),
    ("lt2019-03-01T08:30:00Z", {"ended", "closed"}),
    # "Time can consist of hours and minutes with no seconds": the minute (search.html#date)
    ("2020-01-01T10:00Z", {"morning"}),
    ("2020-01-01T10:00", {"morning"}),  # without a zone: UTC, as with seconds
    ("2020-01-02T08:00+03:30", {"late"}),  # 04:30 UTC
    ("gt2020-01-01T10:00Z", {"late", "ongoing"}),
    ("lt2019-03-01T08:30Z", {"ended", "closed"}),
])
def test_dates_periods_and_time_zones(effective: Fhir, value: str, expected: set[str]) -> None:
    assert found(effective, "Observation", {"date": value}) == expected


def test_ge_and_le_take_periods_that_reach_into_the_searched_range(fhir: Fhir) -> None:
    """The prefixes are tests of intersection: ge is "the range above the search value
    intersects" the target's, the search value's own range included ("or the range of the search
    value fully contains the range of the target value", search.html#prefix), as for numbers
    ("some of the value is at or above"). So a stay that reaches into the day is found by
    ge and le that day, and date=ge…&date=le… of one day finds what was ongoing on it."""
    put_all(fhir,
            observation("into", effectivePeriod={"start": "2021-02-15", "end": "2021-03-01"}),
            observation("from", effectivePeriod={"start": "2021-03-01", "end": "2021-03-20"}),
            observation("across", effectivePeriod={"start": "2021-02-01", "end": "2021-04-01"}),
            observation("before", effectivePeriod={"start": "2021-01-01", "end": "2021-02-28"}),
            observation("after", effectivePeriod={"start": "2021-03-02"}),
            observation("nine", effectivePeriod={"start": "2021-03-01T08:00:00Z",
                                                 "end": "2021-03-01T09:00:00Z"}))
    assert found(fhir, "Observation", {"date": "ge2021-03-01"}) == {
        "into", "from", "across", "after", "nine"}
    assert found(fhir, "Observation", {"date": "le2021-03-01"}) == {
        "into", "from", "across", "before", "nine"}
    assert found(fhir, "Observation", [("date", "ge2021-03-01"), ("date", "le2021-03-01")]) == {
        "into", "from", "across", "nine"}
    # An end that touches the searched instant reaches it (ranges include their ends).
    assert found(fhir, "Observation", {"date": "ge2021-03-01T09:00:00Z"}) >= {"nine"}
    assert found(fhir, "Observation", {"date": "le2021-03-01T08:00:00Z"}) >= {"nine"}
    assert found(fhir, "Observation", {"date": "gt2021-03-01T09:00:00Z"}) == {
        "into", "from", "across", "after"}


@pytest.mark.parametrize("value", ["notadate", "2020-13", "2001-02-29", "2000-02-30",
                                   "2020-01-01T25:00:00Z", "2020-01-01T10:00:00+5", "xx2020",
                                   "ge", "2020/01/01", "2020-01-01T10:00:00+25:00",
                                   "2020-01-01T10:00:00+14:30", "2020-01-01T10:00:00-09:60",
                                   "2020-01-01T10Z", "2020-01-01T10:00.5Z", "2020-01-01T"])
def test_malformed_dates_are_refused(births: Fhir, value: str) -> None:
    refused(births, "Patient", {"birthdate": value}, "birthdate")


# -- number and quantity -------------------------------------------------------------------------

@pytest.fixture
def risks(fhir: Fhir) -> Fhir:
    def risk(id_: str, probability: Any) -> dict[str, Any]:
        return {"resourceType": "RiskAssessment", "id": id_, "status": "final",
                "subject": {"reference": "Patient/p1"},
                "prediction": [{"probabilityDecimal": probability}]}

    put_all(fhir, risk("high", 0.8), risk("quarter", 0.25), risk("hundred", 100),
            {"resourceType": "RiskAssessment", "id": "none", "status": "final",
             "subject": {"reference": "Patient/p1"}})
    return fhir


@pytest.mark.parametrize("value, expected", [
    ("0.8", {"high"}),
    ("0.80", {"high"}),
    ("0.25", {"quarter"}),
    ("0.3", {"quarter"}),  # [0.25, 0.35) holds 0.25
    ("0.2", set()),
    ("100", {"hundred"}),
    ("100.4", set()),  # [100.35, 100.45) does not hold 100
    ("gt0.5", {"high", "hundred"}),
    ("lt0.5", {"quarter"}),
    ("ge0.8", {"high", "hundred"}),
    ("le0.25", {"quarter"}),
    ("ne0.8", {"quarter", "hundred"}),
    ("ap0.8", {"high"}),
    ("ap100", {"hundred"}),
    ("lt0.8", {"quarter"}),
    ("gt100", set()),
    ("0.8,100", {"high", "hundred"}),
])
def test_number_prefixes_and_precision(risks: Fhir, value: str, expected: set[str]) -> None:
    assert found(risks, "RiskAssessment", {"probability": value}) == expected


@pytest.mark.parametrize("value, expected", [
    ("lt35", {"range"}),  # the range below 35 overlaps 30-50 (search.html#prefix)
    ("gt45", {"range"}),
    ("40", {"point"}),  # [39.5, 40.5) holds 40, not all of 30-50
    ("ne40", {"range"}),
    ("sa35", {"point"}),  # 30-50 does not start after 35; 40 does
    ("sa25", {"range", "point"}),
    ("eb55", {"range", "point"}),
    ("eb45", {"point"}),
    ("ge50", {"range"}),
    ("le30", {"range"}),
    ("ap52", {"range"}),  # 52 ± 10 % reaches into 30-50
    ("ap60", set()),
])
def test_numbers_against_ranges(fhir: Fhir, value: str, expected: set[str]) -> None:
    """A Range in a resource is an interval: the prefixes compare it as search.html#prefix
    says, where a plain value is a point."""
    def condition(id_: str, onset: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "Condition", "id": id_, "subject": {"reference": "Patient/p"},
                **onset}

    years = {"system": UCUM, "code": "a", "unit": "years"}
    put_all(fhir,
            condition("range", {"onsetRange": {"low": {"value": 30, **years},
                                               "high": {"value": 50, **years}}}),
            condition("point", {"onsetAge": {"value": 40, **years}}))
    assert found(fhir, "Condition", {"onset-age": value}) == expected


def test_open_ended_ranges_reach_any_number(fhir: Fhir) -> None:
    """A Range without a high (or a comparator like <400) has values beyond any search value,
    however large, and its open side must not be lost to rounding."""
    def risk(id_: str, range_: dict[str, Any]) -> dict[str, Any]:
        return {"resourceType": "RiskAssessment", "id": id_, "status": "final",
                "subject": {"reference": "Patient/p"},
                "prediction": [{"probabilityRange": range_}]}

    put_all(fhir, risk("from-1e19", {"low": {"value": 1e19}}),
            risk("up-to-400", {"high": {"value": 400}}),
            risk("ten-twenty", {"low": {"value": 10}, "high": {"value": 20}}),
            observation("below-400", valueQuantity={"value": 400, "comparator": "<",
                                                    "system": UCUM, "code": "mg"}))
    assert found(fhir, "RiskAssessment", {"probability": "gt2e19"}) == {"from-1e19"}
    assert found(fhir, "RiskAssessment", {"probability": "1e19"}) == set()
    assert "from-1e19" in found(fhir, "RiskAssessment", {"probability": "ne1e19"})
    for value in ("gt300", "ge300", "ap350"):
        assert "up-to-400" in found(fhir, "RiskAssessment", {"probability": value}), value
    assert found(fhir, "Observation", {"value-quantity": f"gt300|{UCUM}|mg"}) == {"below-400"}
    # descending order takes a Range's high end: the open one first
    bundle = search(fhir, "RiskAssessment", {"_sort": "-probability"})
    assert ids(bundle)[:1] == ["from-1e19"] and ids(bundle)[-1] == "ten-twenty"


def test_a_quantity_range_takes_its_unit_from_either_side(fhir: Fhir) -> None:
    put_all(fhir, {"resourceType": "Condition", "id": "c", "subject": {"reference": "Patient/p"},
                   "onsetRange": {"low": {"value": 10},
                                  "high": {"value": 20, "system": UCUM, "code": "a"}}})
    assert found(fhir, "Condition", {"onset-age": f"gt15|{UCUM}|a"}) == {"c"}


@pytest.fixture
def measured(fhir: Fhir) -> Fhir:
    def quantity(id_: str, **q: Any) -> dict[str, Any]:
        return observation(id_, valueQuantity=q)

    put_all(fhir,
            quantity("mg", value=5.4, unit="mg", system=UCUM, code="mg"),
            quantity("mg-named", value=5.4, unit="milligram", system=UCUM, code="mg"),
            quantity("unit-only", value=5.4, unit="mg"),
            quantity("grams", value=5.4, unit="g", system=UCUM, code="g"),
            quantity("big", value=120, unit="mg", system=UCUM, code="mg"),
            quantity("less", value=3, comparator="<", unit="mg", system=UCUM, code="mg"),
            quantity("more", value=2, comparator=">", unit="mg", system=UCUM, code="mg"),
            observation("no-value"))
    return fhir


@pytest.mark.parametrize("value, expected", [
    ("5.4", {"mg", "mg-named", "unit-only", "grams"}),
    (f"5.4|{UCUM}|mg", {"mg", "mg-named"}),
    ("5.4||mg", {"mg", "mg-named", "unit-only"}),
    (f"5.4|{UCUM}|g", {"grams"}),
    ("5.40||mg", {"mg", "mg-named", "unit-only"}),
    ("5.41||mg", set()),
    (f"gt5|{UCUM}|mg", {"mg", "mg-named", "big", "more"}),  # "more than 2" may be above 5
    (f"lt5.4|{UCUM}|mg", {"less", "more"}),  # and "more than 2" may be below 5.4
    (f"le5.4|{UCUM}|mg", {"mg", "mg-named", "less", "more"}),
    (f"ge120|{UCUM}|mg", {"big", "more"}),
    (f"ne5.4|{UCUM}|mg", {"big", "less", "more"}),
    (f"ap120|{UCUM}|mg", {"big", "more"}),  # "more than 2" overlaps 108-132
    (f"5.4|{UCUM}|mg,120|{UCUM}|mg", {"mg", "mg-named", "big"}),
    # A comparator's own value is outside it: "<3" is below 3, ">2" above 2.
    (f"ge3|{UCUM}|mg", {"mg", "mg-named", "big", "more"}),
    (f"le2|{UCUM}|mg", {"less"}),
    (f"sa2|{UCUM}|mg", {"mg", "mg-named", "big", "more"}),
    (f"eb3|{UCUM}|mg", {"less"}),
])
def test_quantity_with_and_without_system_and_code(measured: Fhir, value: str,
                                                    expected: set[str]) -> None:
    assert found(measured, "Observation", {"value-quantity": value}) == expected


@pytest.fixture
def thresholds(fhir: Fhir) -> Fhir:
    def quantity(id_: str, value: float, code: str) -> dict[str, Any]:
        return observation(id_, valueQuantity={"value": value, "system": UCUM, "code": code})

    def risk(id_: str, probability: float) -> dict[str, Any]:
        return {"resourceType": "RiskAssessment", "id": id_, "status": "final",
                "subject": {"reference": "Patient/p1"},
                "prediction": [{"probabilityDecimal": probability}]}

    put_all(fhir,
            quantity("99.5", 99.5, "mm[Hg]"), quantity("100", 100, "mm[Hg]"),
            quantity("100.5", 100.5, "mm[Hg]"),
            quantity("5.35", 5.35, "mg"), quantity("5.4", 5.4, "mg"), quantity("5.45", 5.45, "mg"),
            risk("0.75", 0.75), risk("0.8", 0.8), risk("0.84", 0.84), risk("0.85", 0.85),
            # 870.7303 is not the midpoint of its precision range in binary floating point
            risk("870.7303", 870.7303))
    return fhir


@pytest.mark.parametrize("path, name, value, expected", [
    # search.html#number: "ge100: Values that are greater or equal to exactly 100"; "the
    # implicit precision of the number is ignored" with lt, gt, ge, le, sa and eb.
    ("Observation", "value-quantity", "ge100", {"100", "100.5"}),
    ("Observation", "value-quantity", "le100", {"99.5", "100", "5.35", "5.4", "5.45"}),
    ("Observation", "value-quantity", "le5", set()),
    # search.html#quantity: "le5.4|http://unitsofmeasure.org|mg … less than 5.4 mg exactly"
    ("Observation", "value-quantity", f"le5.4|{UCUM}|mg", {"5.35", "5.4"}),
    ("Observation", "value-quantity", f"ge5.4|{UCUM}|mg", {"5.4", "5.45"}),
    ("Observation", "value-quantity", f"gt5.4|{UCUM}|mg", {"5.45"}),
    ("Observation", "value-quantity", f"lt5.4|{UCUM}|mg", {"5.35"}),
    ("RiskAssessment", "probability", "ge0.8", {"0.8", "0.84", "0.85", "870.7303"}),
    ("RiskAssessment", "probability", "le0.8", {"0.75", "0.8"}),
    ("RiskAssessment", "probability", "ge870.7303", {"870.7303"}),
    ("RiskAssessment", "probability", "le870.7303", {"0.75", "0.8", "0.84", "0.85",
                                                      "870.7303"}),
    ("RiskAssessment", "probability", "gt870.7303", set()),
    ("RiskAssessment", "probability", "lt870.7303", {"0.75", "0.8", "0.84", "0.85"}),
    ("RiskAssessment", "probability", "sa870.7303", set()),
    ("RiskAssessment", "probability", "eb870.7303", {"0.75", "0.8", "0.84", "0.85"}),
])
def test_comparisons_ignore_the_implicit_precision(thresholds: Fhir, path: str, name: str,
                                                   value: str, expected: set[str]) -> None:
    assert found(thresholds, path, {name: value}) == expected


@pytest.mark.parametrize("name, value", [
    ("value-quantity", "abc"), ("value-quantity", "5.4|mg"), ("value-quantity", "abc||mg"),
    ("value-quantity", "5.4|a|b|c"), ("value-quantity", "gt"), ("value-quantity", "1,2x"),
    ("value-quantity", "1e1000000|http://unitsofmeasure.org|mg"),
    ("code-value-quantity", "8867-4$gt1e1000000"),
])
def test_malformed_quantities_are_refused(measured: Fhir, name: str, value: str) -> None:
    refused(measured, "Observation", {name: value}, name)


@pytest.mark.parametrize("value", ["abc", "0.8.1", "1e", "0x10", "ge", "--1", "NaN", "Infinity",
                                   "1e1000000", "gt1e1000000"])
def test_malformed_numbers_are_refused(risks: Fhir, value: str) -> None:
    refused(risks, "RiskAssessment", {"probability": value}, "probability")


# -- uri -----------------------------------------------------------------------------------------

def test_uri_exact_below_and_above(fhir: Fhir) -> None:
    def value_set(id_: str, url: str) -> dict[str, Any]:
        return {"resourceType": "ValueSet", "id": id_, "status": "active", "url": url}

    put_all(fhir,
            value_set("a", "http://example.org/fhir/ValueSet/a"),
            value_set("b", "http://example.org/fhir/ValueSet/b"),
            value_set("other", "http://example.org/other/c"),
            value_set("root", "http://example.org/fhir"),
            value_set("slash", "http://example.org/"),
            value_set("fhirx", "http://example.org/fhirx/ValueSet/z"),
            value_set("oid", "urn:oid:1.2.34"),
            {"resourceType": "ValueSet", "id": "nourl", "status": "draft"})
    assert found(fhir, "ValueSet", {"url": "http://example.org/fhir/ValueSet/a"}) == {"a"}
    assert found(fhir, "ValueSet", {"url": "http://example.org/fhir/valueset/a"}) == set()
    assert found(fhir, "ValueSet", {"url": "http://example.org/fhir/ValueSet"}) == set()
    assert found(fhir, "ValueSet", {"url:below": "http://example.org/fhir/ValueSet"}) == {
        "a", "b"}
    assert found(fhir, "ValueSet", {"url:below": "http://example.org/"}) == {
        "a", "b", "other", "root", "slash", "fhirx"}
    # below a URL are the URL and those under it, path segment by path segment
    assert found(fhir, "ValueSet", {"url:below": "http://example.org/fhir"}) == {"a", "b", "root"}
    # "the :above and :below modifiers only apply to URLs, and not URNs such as OIDs"
    for modifier in ("below", "above"):
        refused(fhir, "ValueSet", {f"url:{modifier}": "urn:oid:1.2.3"}, f"url:{modifier}")
    # an ancestor may be written with a trailing slash (http://example.org/)
    assert found(fhir, "ValueSet", {"url:above": "http://example.org/fhir/ValueSet/a/_history/1"}
                 ) == {"a", "root", "slash"}
    assert found(fhir, "ValueSet", {"url:above": "http://example.org/other/c"}) == {
        "other", "slash"}
    assert found(fhir, "ValueSet", {"url:missing": "true"}) == {"nourl"}


def test_a_canonical_with_a_version_searches_the_version(fhir: Fhir) -> None:
    """search.html#uri: servers "SHOULD support automatically detecting a |[version] portion
    as part of the search parameter, and interpreting that portion as a search on the
    version"."""
    url = "http://example.org/fhir/ValueSet/versioned"
    put_all(fhir, *({"resourceType": "ValueSet", "id": f"v{n}", "status": "active", "url": url,
                     "version": version} for n, version in ((1, "1.0"), (2, "2.0"))),
            {"resourceType": "ValueSet", "id": "unversioned", "status": "active", "url": url})
    assert found(fhir, "ValueSet", {"url": f"{url}|1.0"}) == {"v1"}
    assert found(fhir, "ValueSet", {"url": f"{url}|2.0"}) == {"v2"}
    assert found(fhir, "ValueSet", {"url": f"{url}|3.0"}) == set()
    assert found(fhir, "ValueSet", {"url": url}) == {"v1", "v2", "unversioned"}


# -- :missing ------------------------------------------------------------------------------------

def test_missing_for_several_types(fhir: Fhir) -> None:
    put_all(fhir,
            patient("full", name=[{"family": "Full"}], gender="female", birthDate="1990",
                    generalPractitioner=[{"reference": "Practitioner/dr"}]),
            patient("empty"),
            observation("valued", valueQuantity={"value": 1}, subject={"reference": "Patient/x"}),
            observation("unvalued"))
    for name in ("name", "gender", "birthdate", "general-practitioner"):
        assert found(fhir, "Patient", {f"{name}:missing": "true"}) == {"empty"}, name
        assert found(fhir, "Patient", {f"{name}:missing": "false"}) == {"full"}, name
    assert found(fhir, "Observation", {"value-quantity:missing": "true"}) == {"unvalued"}
    assert found(fhir, "Observation", {"subject:missing": "false"}) == {"valued"}
    assert found(fhir, "Patient", {"_id:missing": "false"}) == {"full", "empty"}
    refused(fhir, "Patient", {"gender:missing": "yes"}, "gender:missing")


def test_an_identifier_or_a_text_alone_is_not_missing(fhir: Fhir) -> None:
    """A Reference with only an identifier, a CodeableConcept with only a text: the element
    is there (its :identifier and :text searches find it), so :missing=true does not match."""
    put_all(fhir,
            observation("by-identifier", subject={"identifier": {"system": "urn:mrn",
                                                                 "value": "m-1"}}),
            {"resourceType": "Observation", "id": "by-text", "status": "final",
             "code": {"text": "pulse"}},
            observation("without-subject"))
    assert found(fhir, "Observation", {"subject:identifier": "urn:mrn|m-1"}) == {"by-identifier"}
    assert "by-identifier" not in found(fhir, "Observation", {"subject:missing": "true"})
    assert "by-identifier" in found(fhir, "Observation", {"subject:missing": "false"})
    assert "without-subject" in found(fhir, "Observation", {"subject:missing": "true"})
    assert found(fhir, "Observation", {"code:text": "pulse"}) == {"by-text"}
    assert "by-text" not in found(fhir, "Observation", {"code:missing": "true"})
    assert "by-text" in found(fhir, "Observation", {"code:missing": "false"})


def test_a_reference_to_a_contained_resource_is_not_missing(fhir: Fhir) -> None:
    """search.html#missing: ":missing=true will return all the resources that don't have a
    value": a subject that is a contained Patient is a value, of the patient parameter too."""
    put_all(fhir,
            {**observation("inner-subject", subject={"reference": "#pt"}),
             "contained": [{"resourceType": "Patient", "id": "pt",
                            "name": [{"family": "Zyzzyva"}]}]},
            observation("no-subject"))
    for name in ("subject", "patient"):
        assert "inner-subject" not in found(fhir, "Observation", {f"{name}:missing": "true"})
        assert "inner-subject" in found(fhir, "Observation", {f"{name}:missing": "false"})
        assert "no-subject" in found(fhir, "Observation", {f"{name}:missing": "true"})
    bundle = search(fhir, "Observation", {"_id": "inner-subject", "_include": "Observation:subject"})
    assert len(bundle["entry"]) == 1  # nothing to include: the Patient is inside


# -- common parameters ---------------------------------------------------------------------------

def test_id_and_last_updated(fhir: Fhir) -> None:
    import time

    first = put(fhir, patient("first"))["meta"]["lastUpdated"]
    time.sleep(0.005)  # the second write must fall into a later millisecond
    second = put(fhir, patient("second"))["meta"]["lastUpdated"]
    assert first < second
    assert found(fhir, "Patient", {"_id": "first"}) == {"first"}
    assert found(fhir, "Patient", {"_id": "first,second,third"}) == {"first", "second"}
    assert found(fhir, "Patient", {"_id": "firs"}) == set()
    refused(fhir, "Patient", {"_id": "first,no such id"}, "_id")  # not an id's characters
    refused(fhir, "Patient", {"_id": "x" * 65}, "_id")  # nor its length
    assert found(fhir, "Patient", {"_lastUpdated": first}) == {"first"}
    assert found(fhir, "Patient", {"_lastUpdated": f"gt{first}"}) == {"second"}
    assert found(fhir, "Patient", {"_lastUpdated": f"ge{first}"}) == {"first", "second"}
    assert found(fhir, "Patient", {"_lastUpdated": f"lt{second}"}) == {"first"}
    assert found(fhir, "Patient", {"_lastUpdated": f"le{second}"}) == {"first", "second"}
    assert found(fhir, "Patient", {"_lastUpdated": f"ne{first}"}) == {"second"}
    assert found(fhir, "Patient", {"_lastUpdated": f"sa{first}"}) == {"second"}
    assert found(fhir, "Patient", {"_lastUpdated": f"eb{second}"}) == {"first"}
    assert found(fhir, "Patient", {"_lastUpdated": "ge2020"}) == {"first", "second"}
    assert found(fhir, "Patient", {"_lastUpdated": "lt2020"}) == set()
    assert found(fhir, "Patient", {"_lastUpdated": first[:10]}) <= {"first", "second"}
    refused(fhir, "Patient", {"_lastUpdated": "yesterday"}, "_lastUpdated")


def test_tag_profile_security_and_source(fhir: Fhir) -> None:
    tags = "http://example.org/tags"
    confidentiality = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
    profile = "http://example.org/fhir/StructureDefinition/teleconsult-patient"
    put_all(fhir,
            patient("tagged", meta={"tag": [{"system": tags, "code": "urgent"}],
                                    "profile": [profile],
                                    "security": [{"system": confidentiality, "code": "R"}],
                                    "source": "http://his.example.org/fhir#req-1"}),
            patient("plain", meta={"tag": [{"system": tags, "code": "routine"}],
                                   "source": "http://pacs.example.org"}),
            patient("bare"))
    assert found(fhir, "Patient", {"_tag": "urgent"}) == {"tagged"}
    assert found(fhir, "Patient", {"_tag": f"{tags}|urgent"}) == {"tagged"}
    assert found(fhir, "Patient", {"_tag": f"{tags}|"}) == {"tagged", "plain"}
    assert found(fhir, "Patient", {"_tag:not": "urgent"}) == {"plain", "bare"}
    assert found(fhir, "Patient", {"_profile": profile}) == {"tagged"}
    assert found(fhir, "Patient", {"_profile": profile + "-other"}) == set()
    assert found(fhir, "Patient", {"_security": f"{confidentiality}|R"}) == {"tagged"}
    assert found(fhir, "Patient", {"_security": f"{confidentiality}|N"}) == set()
    assert found(fhir, "Patient", {"_source": "http://his.example.org/fhir#req-1"}) == {"tagged"}
    assert found(fhir, "Patient", {"_source": "http://pacs.example.org"}) == {"plain"}
    assert found(fhir, "Patient", {"_source:below": "http://his.example.org"}) == {"tagged"}


def test_korean_and_japanese_names_match_whole_letters(fhir: Fhir) -> None:
    """A prefix or :contains matches whole syllables and kana (search.html#string: "equals or
    starts with ... after both have been normalized by case and accent"); :exact takes the two
    Unicode encodings of one accented letter as the same text."""
    put_all(fhir, patient("kim", name=[{"family": "김", "given": ["철수"]}]),
            patient("lim", name=[{"family": "임"}]), patient("lee", name=[{"family": "이"}]),
            patient("gato", name=[{"family": "ガトウ"}]), patient("kato", name=[{"family": "カトウ"}]),
            patient("jose", name=[{"family": "Jose\u0301"}]),
            patient("kshatriya", name=[{"family": "क्षत्रिय"}]))
    assert found(fhir, "Patient", {"family": "이"}) == {"lee"}
    assert found(fhir, "Patient", {"family": "기"}) == set()
    assert found(fhir, "Patient", {"given:contains": "처"}) == set()
    assert found(fhir, "Patient", {"given:contains": "철"}) == {"kim"}
    assert found(fhir, "Patient", {"family": "カトウ"}) == {"kato"}
    assert found(fhir, "Patient", {"family": "ｶﾞﾄｳ"}) == {"gato"}
    assert found(fhir, "Patient", {"family:exact": "Jos\u00e9"}) == {"jose"}
    assert found(fhir, "Patient", {"family": "क्ष"}) == {"kshatriya"}  # the virama is a letter's
    assert found(fhir, "Patient", {"family": "कष"}) == set()


def test_persian_letter_variants_find_each_other(fhir) -> None:  # type: ignore[no-untyped-def]
    """Arabic yeh/kaf and Persian yeh/keheh, and the zero-width non-joiner, are the same letters
    to a reader: a name typed on an Arabic keyboard finds the one typed on a Persian one."""
    r = fhir.post("Patient", {"resourceType": "Patient",
                              "name": [{"family": "علی\u200cزاده", "given": ["کاظم"]}]})
    assert r.status_code == 201
    for query in ("علي", "عليزاده", "كاظم", "\ufecb\ufee0\ufef2"):  # the last: presentation forms
        found = fhir.get("Patient", params={"name": query}).json()
        assert found.get("total") == 1, query

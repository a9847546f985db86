"""Composite search parameters (http://hl7.org/fhir/R4/search.html#composite): ``a$b`` matches
a resource when one element (one ``Observation.component``, one ``variant``) has values matching
every part, each part written as its component parameter's type is; a match of each part on
different elements is no match."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from server.config import Settings
from server.storage import sqlite_schema
from server.storage.sqlite import SqliteStore
from tests.conftest import Fhir
from tests.test_search import LOINC, UCUM, found, observation, put_all, refused
from tests.test_search_sql import assert_indexed, explain

SNOMED = "http://snomed.info/sct"
SYSTOLIC, DIASTOLIC = "8480-6", "8462-4"


def mmhg(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"}


def loinc(code: str) -> dict[str, Any]:
    return {"coding": [{"system": LOINC, "code": code}]}


def pressure(id_: str, systolic: float, diastolic: float) -> dict[str, Any]:
    return observation(id_, code=loinc("85354-9"), component=[
        {"code": loinc(SYSTOLIC), "valueQuantity": mmhg(systolic)},
        {"code": loinc(DIASTOLIC), "valueQuantity": mmhg(diastolic)}])


@pytest.fixture
def vitals(fhir: Fhir) -> Fhir:
    put_all(
        fhir,
        pressure("high", 160, 100),
        pressure("normal", 120, 80),
        observation("weight", code=loinc("29463-7"), valueQuantity={
            "value": 72.5, "unit": "kg", "system": UCUM, "code": "kg"}),
        observation("heavy", code=loinc("29463-7"), valueQuantity={
            "value": 120, "unit": "kg", "system": UCUM, "code": "kg"}),
        observation("smoker", code=loinc("72166-2"), valueCodeableConcept={
            "coding": [{"system": SNOMED, "code": "77176002"}]}),
        observation("never", code=loinc("72166-2"), valueCodeableConcept={
            "coding": [{"system": SNOMED, "code": "266919005"}]}),
        observation("note", code=loinc("8251-1"), valueString="Pain in the LEFT knee"),
        observation("dollar", code=loinc("8251-1"), valueString="a$b"),
        observation("onset", code=loinc("11368-8"), valueDateTime="2024-03-05"),
        observation("plain", code=loinc("29463-7")),
    )
    return fhir


def test_each_part_must_hold_for_the_same_component(vitals: Fhir) -> None:
    # normal: systolic 120, diastolic 80. "Systolic under 100" must not pair the systolic code
    # with the diastolic value.
    params = "component-code-value-quantity"
    assert found(vitals, "Observation", {params: f"{LOINC}|{SYSTOLIC}$lt100"}) == set()
    assert found(vitals, "Observation", {params: f"{LOINC}|{DIASTOLIC}$lt100"}) == {"normal"}
    assert found(vitals, "Observation", {params: f"{SYSTOLIC}$gt140"}) == {"high"}
    assert found(vitals, "Observation", {params: f"{SYSTOLIC}$ge120"}) == {"high", "normal"}
    assert found(vitals, "Observation", {params: f"{SYSTOLIC}$120|{UCUM}|mm[Hg]"}) == {"normal"}
    assert found(vitals, "Observation", {params: f"{SYSTOLIC}$120|{UCUM}|kg"}) == set()


def test_code_and_value_of_the_observation_itself(vitals: Fhir) -> None:
    weight = f"{LOINC}|29463-7"
    assert found(vitals, "Observation", {"code-value-quantity": f"{weight}$gt100"}) == {"heavy"}
    assert found(vitals, "Observation", {"code-value-quantity": f"{weight}$le72.5"}) == {"weight"}
    assert found(vitals, "Observation", {"code-value-quantity": f"{weight}$72.5"}) == {"weight"}
    # The component values are not the Observation's own.
    assert found(vitals, "Observation", {"code-value-quantity": f"{SYSTOLIC}$gt0"}) == set()


def test_quantity_parts_compare_with_the_exact_value(fhir: Fhir) -> None:
    """A composite's quantity part follows search.html#number: ge and le ignore the implicit
    precision ("ge140": greater or equal to exactly 140)."""
    put_all(fhir, *(pressure(f"s{v}", v, 80) for v in (139.6, 140, 140.4)),
            *(observation(f"w{v}", code=loinc("29463-7"), valueQuantity={
                "value": v, "unit": "kg", "system": UCUM, "code": "kg"}) for v in (71.6, 72, 72.4)))
    params = "component-code-value-quantity"
    assert found(fhir, "Observation", {params: f"{SYSTOLIC}$ge140"}) == {"s140", "s140.4"}
    assert found(fhir, "Observation", {params: f"{SYSTOLIC}$le140"}) == {"s139.6", "s140"}
    weight = f"{LOINC}|29463-7"
    assert found(fhir, "Observation", {"code-value-quantity": f"{weight}$ge72"}) == {
        "w72", "w72.4"}
    assert found(fhir, "Observation", {"code-value-quantity": f"{weight}$le72"}) == {
        "w71.6", "w72"}


def test_combo_pairs_code_with_value_and_each_component_with_its_value(vitals: Fhir) -> None:
    combo = "combo-code-value-quantity"
    assert found(vitals, "Observation", {combo: "29463-7$gt100"}) == {"heavy"}
    assert found(vitals, "Observation", {combo: f"{SYSTOLIC}$gt140"}) == {"high"}
    assert found(vitals, "Observation", {combo: f"{SYSTOLIC}$lt100"}) == set()


def test_token_string_and_date_parts(vitals: Fhir) -> None:
    assert found(vitals, "Observation",
                 {"code-value-concept": f"72166-2${SNOMED}|77176002"}) == {"smoker"}
    assert found(vitals, "Observation", {"code-value-concept": "72166-2$266919005"}) == {"never"}
    assert found(vitals, "Observation", {"code-value-concept": "29463-7$77176002"}) == set()
    # Strings match as string search does: case-insensitive, from the start.
    assert found(vitals, "Observation", {"code-value-string": "8251-1$pain in the left"}) == {
        "note"}
    assert found(vitals, "Observation", {"code-value-string": "8251-1$knee"}) == set()
    assert found(vitals, "Observation", {"code-value-string": "8251-1$a\\$b"}) == {"dollar"}
    assert found(vitals, "Observation", {"code-value-date": "11368-8$2024-03"}) == {"onset"}
    assert found(vitals, "Observation", {"code-value-date": "11368-8$gt2024-03-05"}) == set()
    assert found(vitals, "Observation", {"code-value-date": "11368-8$ge2024-03-05"}) == {"onset"}


def test_or_and_and_missing(vitals: Fhir) -> None:
    combo = "combo-code-value-quantity"
    assert found(vitals, "Observation", {combo: f"29463-7$gt100,{SYSTOLIC}$gt140"}) == {
        "heavy", "high"}
    assert found(vitals, "Observation", [(combo, f"{SYSTOLIC}$gt100"),
                                         (combo, f"{DIASTOLIC}$lt90")]) == {"normal"}
    assert found(vitals, "Observation", {"code-value-quantity:missing": "false"}) == {
        "weight", "heavy"}
    assert "plain" in found(vitals, "Observation", {"code-value-quantity:missing": "true"})
    assert "weight" not in found(vitals, "Observation",
                                 {"code-value-quantity:missing": "true"})


def test_three_part_composites_keep_both_ranges_apart(fhir: Fhir) -> None:
    chromosome = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/chromosome-human",
                              "code": "1"}]}
    put_all(fhir, {"resourceType": "MolecularSequence", "id": "seq", "coordinateSystem": 0,
                   "referenceSeq": {"chromosome": chromosome},
                   "variant": [{"start": 120, "end": 130}]})
    name = "chromosome-variant-coordinate"
    assert found(fhir, "MolecularSequence", {name: "1$gt100$lt200"}) == {"seq"}
    assert found(fhir, "MolecularSequence", {name: "1$120$130"}) == {"seq"}
    assert found(fhir, "MolecularSequence", {name: "1$gt125$lt200"}) == set()
    assert found(fhir, "MolecularSequence", {name: "1$gt100$lt130"}) == set()
    assert found(fhir, "MolecularSequence", {name: "2$gt100$lt200"}) == set()


@pytest.mark.parametrize("value", [
    f"{SYSTOLIC}", f"{SYSTOLIC}$", "$gt100", f"{SYSTOLIC}$abc", f"{SYSTOLIC}$1$2",
    f"{SYSTOLIC}$1|a|b|c", "a|b|c$1",
])
def test_malformed_composites_are_refused_naming_the_parameter(vitals: Fhir, value: str) -> None:
    refused(vitals, "Observation", {"component-code-value-quantity": value},
            "component-code-value-quantity")


@pytest.mark.parametrize("modifier", ["exact", "not", "contains", "text"])
def test_modifiers_other_than_missing_are_refused(vitals: Fhir, modifier: str) -> None:
    name = f"code-value-quantity:{modifier}"
    body = refused(vitals, "Observation", {name: "29463-7$1"}, name)
    assert body["issue"][0]["code"] == "not-supported"


def test_a_composite_search_reads_its_index_by_the_leading_token(
        vitals: Fhir, settings: Settings) -> None:
    conn = sqlite3.connect(f"file:{settings.sqlite_path}?mode=ro", uri=True)
    try:
        lines = explain(conn, ("Observation",),
                        [("component-code-value-quantity", f"{LOINC}|{SYSTOLIC}$gt140")])
    finally:
        conn.close()
    # "above 140": the values from 140 less the widest row's span on, not all systolic rows
    assert_indexed(lines, "idx_composite USING PRIMARY KEY (pid=? AND code=? AND system=? "
                          "AND lo>?)")


def test_a_database_from_before_composites_gets_their_rows_and_spans_on_opening(
        tmp_path: Any) -> None:
    import asyncio

    from server.search.index import extract

    path = tmp_path / "consilium.db"
    store = SqliteStore(path)
    body = pressure("old", 150, 95)

    def write(tx: Any) -> None:
        tx.write("Observation", "old", dict(body), extract(body), "PUT")

    store.run_sync(write)
    store.close_sync()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT count(*) FROM idx_composite").fetchone()[0] > 0
    conn.execute("DELETE FROM idx_composite")  # as a schema-2 database has them: none,
    conn.execute("DELETE FROM span")  # and the spans of dates only, in a table of that name
    conn.execute("ALTER TABLE span RENAME TO date_span")
    combo = sqlite_schema.param_id("Observation", "combo-code")  # and rows of the unions
    conn.execute("INSERT INTO idx_token SELECT ?, code, system, rid FROM idx_token", (combo,))
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()

    store = SqliteStore(path)
    try:
        from server.search.query import parse
        query = parse(("Observation",), [("component-code-value-quantity", f"{SYSTOLIC}$gt140")])
        page = asyncio.run(store.search(query))
        assert [v.id for v in page.matches] == ["old"]
    finally:
        store.close_sync()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    pid = sqlite_schema.param_id("Observation", "component-code-value-quantity")
    assert conn.execute("SELECT span FROM span WHERE pid = ?", (pid,)).fetchone() == (0.0,)
    assert conn.execute("SELECT count(*) FROM sqlite_master WHERE name = 'date_span'"
                        ).fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM idx_token WHERE pid = ?", (combo,)).fetchone() == (0,)
    conn.close()


def test_many_matches_are_walked_in_rid_order_with_the_same_pages(
        vitals: Fhir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search whose clause selects many resources (here: any) reads the resources in order
    and checks each; the pages are those of listing the matches first."""
    from server.storage import sqlite_search

    def pages(params: dict[str, str]) -> list[str]:
        got, url, query = [], "Observation", {**params, "_count": "2"}
        while url:
            r = vitals.get(url, params=query)
            assert r.status_code == 200, r.text
            got += [e["resource"]["id"] for e in r.json().get("entry", [])]
            url = next((link["url"] for link in r.json()["link"] if link["relation"] == "next"),
                       "")
            query = None
        return got

    search = {"combo-code-value-quantity": f"{SYSTOLIC}$gt100,29463-7$gt1"}
    listed = pages(search)
    monkeypatch.setattr(sqlite_search, "ESTIMATE_CAP", 1)
    monkeypatch.setattr(sqlite_search, "WALK_MIN", 1)
    assert pages(search) == listed
    assert sorted(listed) == ["heavy", "high", "normal", "weight"]


def test_a_database_with_numbers_widened_by_precision_is_indexed_again_on_opening(
        tmp_path: Any) -> None:
    """Before schema 5 a number was stored as the range its precision implies (120 as
    119.5-120.5), and a Range widened the same way: opening such a database writes the
    number, quantity and composite rows again, as points and bounds, with their spans."""
    import asyncio

    from server.search.index import extract
    from server.search.query import parse

    path = tmp_path / "consilium.db"
    store = SqliteStore(path)
    body = pressure("old", 150, 95)
    ranged = {"resourceType": "Condition", "id": "ranged", "subject": {"reference": "Patient/p"},
              "onsetRange": {"low": {"value": 30, "system": UCUM, "code": "a"},
                             "high": {"value": 50, "system": UCUM, "code": "a"}}}
    store.run_sync(lambda tx: [tx.write(r["resourceType"], r["id"], dict(r), extract(r), "PUT")
                               for r in (body, ranged)])
    store.close_sync()
    as_written_by(path, 4, *(f"UPDATE {table} SET lo = lo - 0.5, hi = hi + 0.5"
                             for table in ("idx_quantity", "idx_composite")),
                  "UPDATE span SET span = span + 1")

    store = SqliteStore(path)
    try:
        def matches(type_: str, params: list[tuple[str, str]]) -> list[str]:
            return [v.id for v in asyncio.run(store.search(parse((type_,), params))).matches]

        assert matches("Observation", [("component-code-value-quantity", f"{SYSTOLIC}$150")]) \
            == ["old"]
        assert matches("Condition", [("onset-age", "lt35")]) == ["ranged"]
        assert matches("Condition", [("onset-age", "40")]) == []
    finally:
        store.close_sync()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    assert conn.execute("SELECT lo, hi FROM idx_quantity WHERE lo != hi").fetchall() == [
        (30.0, 50.0)]
    assert conn.execute("SELECT count(*) FROM idx_quantity").fetchone()[0] >= 3
    pid = sqlite_schema.param_id("Observation", "component-code-value-quantity")
    assert conn.execute("SELECT span FROM span WHERE pid = ?", (pid,)).fetchone() == (0.0,)
    conn.close()


def test_a_database_with_codes_also_stored_without_their_implicit_system_is_indexed_again(
        tmp_path: Any) -> None:
    """Before schema 6 a code with an implicit system (Patient.gender) had a second token row
    without it, so |male found it: opening such a database writes the token rows again."""
    import asyncio

    from server.search.index import extract
    from server.search.query import parse

    path = tmp_path / "consilium.db"
    store = SqliteStore(path)
    body = {"resourceType": "Patient", "id": "p", "gender": "male", "birthDate": "1970-03-01"}
    store.run_sync(lambda tx: tx.write("Patient", "p", dict(body), extract(body), "PUT"))
    store.close_sync()
    conn = sqlite3.connect(path)
    birthdate = sqlite_schema.param_id("Patient", "birthdate")
    spans = conn.execute("SELECT * FROM span").fetchall()
    assert [pid for pid, _ in spans] == [birthdate]
    gender = "http://hl7.org/fhir/administrative-gender"
    assert conn.execute("INSERT INTO idx_token SELECT pid, code, '', rid FROM idx_token "
                        "WHERE system = ?", (gender,)).rowcount == 1  # as schema 5 wrote them
    conn.execute("PRAGMA user_version = 5")
    conn.commit()
    conn.close()

    store = SqliteStore(path)
    try:
        def matches(value: str) -> list[str]:
            query = parse(("Patient",), [("gender", value)])
            return [v.id for v in asyncio.run(store.search(query)).matches]

        assert matches("|male") == []
        assert matches("male") == matches(f"{gender}|male") == ["p"]
    finally:
        store.close_sync()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    assert conn.execute("SELECT system FROM idx_token WHERE code = 'male'").fetchall() == [
        (gender,)]
    assert conn.execute("SELECT * FROM span").fetchall() == spans  # the dates' are kept
    conn.close()


def as_written_by(path: Any, schema: int, *statements: str) -> None:
    """Make the database at ``path`` as an older schema left it: its rows changed back by the
    ``statements``, its version set to ``schema``."""
    conn = sqlite3.connect(path)
    for sql in statements:
        conn.execute(sql)
    conn.execute(f"PRAGMA user_version = {schema}")
    conn.commit()
    conn.close()


def test_a_database_with_decomposed_letters_and_inclusive_comparators_is_indexed_again(
        tmp_path: Any) -> None:
    """Before schema 7 a string was left decomposed (이, Lee, was a prefix of 임, Lim), a token
    of a text element kept its case, and a quantity's comparator took in its own value (<5
    reached 5): opening such a database writes the string, token, quantity and composite rows
    again."""
    import asyncio
    import unicodedata

    from server.search.index import extract
    from server.search.query import parse

    path = tmp_path / "consilium.db"
    store = SqliteStore(path)
    lim = {"resourceType": "Patient", "id": "lim", "name": [{"family": "임"}],
           "telecom": [{"system": "email", "value": "Lim@Example.org"}]}
    below = {"resourceType": "Observation", "id": "below", "status": "final",
             "code": {"text": "dose"}, "valueQuantity": {"value": 5, "comparator": "<"}}
    for body in (lim, below):
        store.run_sync(lambda tx, b=body: tx.write(b["resourceType"], b["id"], dict(b),  # type: ignore[misc]
                                                    extract(b), "PUT"))
    store.close_sync()
    decomposed = unicodedata.normalize("NFKD", "임")
    as_written_by(path, 6, f"UPDATE idx_string SET value = '{decomposed}' WHERE value = '임'",
                  "UPDATE idx_quantity SET hi = 5",
                  "UPDATE idx_token SET code = 'Lim@Example.org' WHERE code = 'lim@example.org'")

    store = SqliteStore(path)
    try:
        def matches(type_: str, name: str, value: str) -> list[str]:
            query = parse((type_,), [(name, value)])
            return [v.id for v in asyncio.run(store.search(query)).matches]

        assert matches("Patient", "family", "이") == []
        assert matches("Patient", "family", "임") == ["lim"]
        assert matches("Patient", "email", "lim@example.org") == ["lim"]
        assert matches("Observation", "value-quantity", "ge5") == []
        assert matches("Observation", "value-quantity", "lt5") == ["below"]
    finally:
        store.close_sync()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    conn.close()


def test_a_database_of_schema_7_gets_boolean_systems_and_contained_references(
        tmp_path: Any) -> None:
    """Before schema 8 a boolean's token had no system (special-values is its implicit one),
    a reference to a contained resource had no row (so it was :missing), and a contained
    resource none (chains did not look inside): opening such a database adds them, leaving
    the rest as it is."""
    import asyncio

    from server.search.index import extract
    from server.search.query import parse

    path = tmp_path / "consilium.db"
    store = SqliteStore(path)
    active = {"resourceType": "Patient", "id": "act", "active": True}
    inner = {"resourceType": "Observation", "id": "inner", "status": "final",
             "code": {"text": "x"}, "subject": {"reference": "#pt"},
             "contained": [{"resourceType": "Patient", "id": "pt", "gender": "male"}]}
    for body in (active, inner):
        store.run_sync(lambda tx, b=body: tx.write(b["resourceType"], b["id"], dict(b),  # type: ignore[misc]
                                                    extract(b), "PUT"))
    store.close_sync()
    as_written_by(path, 7, "UPDATE idx_token SET system = '' WHERE code = 'true'",
                  "DELETE FROM idx_reference WHERE url = '#pt'",
                  f"DELETE FROM idx_token WHERE pid >= {1 << 31}")
    conn = sqlite3.connect(path)
    own = f"SELECT count(*) FROM idx_token WHERE pid < {1 << 31}"  # not the contained ones
    before = conn.execute(own).fetchone()[0]
    conn.close()

    store = SqliteStore(path)
    try:
        def matches(type_: str, name: str, value: str) -> list[str]:
            query = parse((type_,), [(name, value)])
            return [v.id for v in asyncio.run(store.search(query)).matches]

        assert matches("Patient", "active", "http://hl7.org/fhir/special-values|true") == ["act"]
        assert matches("Patient", "active", "|true") == []
        assert matches("Observation", "subject:missing", "true") == []
        assert matches("Observation", "patient:missing", "false") == ["inner"]
        assert matches("Observation", "subject:Patient.gender", "male") == ["inner"]
    finally:
        store.close_sync()
    conn = sqlite3.connect(path)
    assert conn.execute("PRAGMA user_version").fetchone()[0] == sqlite_schema.SCHEMA_VERSION
    assert conn.execute(own).fetchone()[0] == before
    conn.close()

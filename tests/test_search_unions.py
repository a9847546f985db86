"""Parameters whose expression is the union of other parameters' (Observation's ``combo-*``,
``phonetic`` beside ``name``) keep no index rows of their own: their searches read the rows of
the parameters they unite, with the same results (search.html, the R4 definitions)."""

from __future__ import annotations

import sqlite3

from server.config import Settings
from server.search.index import extract
from server.search.registry import registry
from server.storage import sqlite_schema
from tests.conftest import Fhir
from tests.test_search import found, patient, put_all
from tests.test_search_composite import DIASTOLIC, LOINC, SYSTOLIC, loinc, pressure, vitals
from tests.test_search_sql import assert_indexed, explain

__all__ = ["vitals"]  # the fixture


def test_unions_are_found_from_the_definitions() -> None:
    reg = registry()
    assert reg.stored_codes("Observation", "combo-code") == ("code", "component-code")
    assert reg.stored_codes("Observation", "combo-code:text") == ("code:text",
                                                                  "component-code:text")
    assert reg.stored_codes("Observation", "combo-code-value-quantity") == (
        "code-value-quantity", "component-code-value-quantity")
    assert reg.stored_codes("Patient", "phonetic") == ("name",)
    assert reg.stored_codes("Observation", "code") == ("code",)
    # subject.where(resolve() is Patient) is not subject: patient keeps its rows
    assert reg.stored_codes("Observation", "patient") == ("patient",)
    assert not reg.is_union("Patient", "name") and reg.is_union("Patient", "phonetic")


def test_a_union_has_no_rows_of_its_own() -> None:
    rows = extract(pressure("bp", 150, 95))
    codes = {row[0] for kind in ("token", "string", "quantity") for row in rows.get(kind, ())}
    codes |= {code for code, _ in rows.get("composite", ())}
    assert {"code", "component-code", "component-value-quantity",
            "component-code-value-quantity"} <= codes
    assert not {c for c in codes if c.startswith("combo-")}, codes


def test_union_searches_read_the_rows_of_their_parts(vitals: Fhir) -> None:
    assert found(vitals, "Observation", {"combo-code": f"{LOINC}|{SYSTOLIC}"}) == {
        "high", "normal"}
    assert found(vitals, "Observation", {"combo-code": f"{LOINC}|29463-7"}) == {
        "weight", "heavy", "plain"}
    assert found(vitals, "Observation", {"combo-value-quantity": "gt110"}) == {
        "high", "normal", "heavy"}
    # two parameters: each may hold for a different component (unlike a composite)
    assert found(vitals, "Observation", {"combo-value-quantity": "gt110",
                                         "combo-code": f"{LOINC}|{DIASTOLIC}"}) == {
        "high", "normal"}
    assert found(vitals, "Observation", [("combo-value-quantity", "lt90"),
                                         ("combo-code", f"{LOINC}|{DIASTOLIC}")]) == {"normal"}
    assert found(vitals, "Observation", {"combo-code:missing": "true"}) == set()
    assert found(vitals, "Observation", {"combo-value-quantity:missing": "true"}) == {
        "smoker", "never", "note", "dollar", "onset", "plain"}


def test_union_sorts_and_text_search(vitals: Fhir) -> None:
    vitals.put("Observation/named", {
        "resourceType": "Observation", "id": "named", "status": "final", "code": loinc("1-1"),
        "component": [{"code": {"text": "Zeta reading"}}]})
    assert found(vitals, "Observation", {"combo-code:text": "zeta"}) == {"named"}
    r = vitals.get("Observation", params={"combo-code": f"{LOINC}|{SYSTOLIC},{LOINC}|29463-7",
                                          "_sort": "-combo-value-quantity"})
    # the largest value of each (160; 120 and 120, in the order stored; 72.5), none last
    assert [e["resource"]["id"] for e in r.json()["entry"]] == [
        "high", "normal", "heavy", "weight", "plain"]


def test_phonetic_reads_the_name_rows(fhir: Fhir, settings: Settings) -> None:
    put_all(fhir, patient("p1", name=[{"family": "Chalmers", "given": ["Peter"]}]),
            patient("p2", name=[{"family": "محمدی"}]))
    assert found(fhir, "Patient", {"phonetic": "chal"}) == {"p1"}
    assert found(fhir, "Patient", {"phonetic": "محم"}) == {"p2"}
    conn = sqlite3.connect(f"file:{settings.sqlite_path}?mode=ro", uri=True)
    try:
        pid = sqlite_schema.param_id("Patient", "phonetic")
        assert conn.execute("SELECT count(*) FROM idx_string WHERE pid = ?", (pid,)
                            ).fetchone() == (0,)
        assert_indexed(explain(conn, ("Patient",), [("phonetic", "chal")]),
                       "idx_string USING PRIMARY KEY (pid=? AND value>? AND value<?)")
    finally:
        conn.close()

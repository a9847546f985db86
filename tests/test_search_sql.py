"""The SQL of searches reads the index tables through their indexes (``EXPLAIN QUERY PLAN`` on
the store's own SQLite file): selective searches must never walk a whole table, whatever its
size. Plans are taken without ``ANALYZE`` statistics, as the server runs."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator

import pytest

from server.config import Settings
from server.search.plan import AnyOf, Match, ReferenceValue, TokenValue
from server.search.query import parse
from server.storage.sqlite_search import page_sql
from tests.conftest import Fhir
from tests.test_search import BASE, observation, patient, put_all

#: A full scan of a table (``SCAN r``), as opposed to ``SEARCH … USING … INDEX``.
_FULL_SCAN = re.compile(r"^SCAN (?!CONSTANT ROW)(?!\(subquery)")


@pytest.fixture
def db(fhir: Fhir, settings: Settings) -> Iterator[sqlite3.Connection]:
    put_all(fhir, patient("p1", name=[{"family": "Chalmers"}], birthDate="1974-12-25"),
            observation("o1", subject={"reference": "Patient/p1"}))
    conn = sqlite3.connect(f"file:{settings.sqlite_path}?mode=ro", uri=True)
    yield conn
    conn.close()


def explain(conn: sqlite3.Connection, types: tuple[str, ...],
            params: list[tuple[str, str]]) -> list[str]:
    query = parse(types, params, base=BASE)
    return plan_of(conn, query)


def plan_of(conn: sqlite3.Connection, query: object) -> list[str]:
    sql, args = page_sql(query)  # type: ignore[arg-type]
    lines = [row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args)]
    assert lines
    return lines


def assert_indexed(lines: list[str], *expected: str) -> None:
    """No full scan; each expected fragment appears in some line; every index table read is
    narrowed by more than its parameter (or looked up by resource)."""
    text = "\n".join(lines)
    assert not [line for line in lines if _FULL_SCAN.match(line)], text
    for fragment in expected:
        assert fragment in text, f"{fragment!r} not in plan:\n{text}"
    for line in lines:
        if re.search(r"SEARCH (idx_\w+|ref|x)\b", line):
            assert not line.endswith("(pid=?)"), text
    assert "SEARCH v USING INTEGER PRIMARY KEY (rowid=?)" in text, text


def driven_by_rid(lines: list[str]) -> None:
    """The searched resources are looked up by the rids the index gave, not walked by type."""
    assert "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)" in lines, "\n".join(lines)
    assert not any(line.startswith("SEARCH r USING INDEX resource_type") for line in lines)


def test_token_searches_use_the_token_index(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Patient",), [("identifier", "urn:oid:1.2.3|12345")])
    assert_indexed(lines, "SEARCH idx_token USING PRIMARY KEY (pid=? AND code=? AND system=?)")
    driven_by_rid(lines)
    lines = explain(db, ("Observation",), [("code", "29463-7")])
    assert_indexed(lines, "SEARCH idx_token USING PRIMARY KEY (pid=? AND code=?)")
    driven_by_rid(lines)
    lines = explain(db, ("Patient",), [("gender", "male"), ("active", "true")])
    assert_indexed(lines, "idx_token")
    driven_by_rid(lines)


def test_string_searches_use_a_range_of_the_string_index(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Patient",), [("name", "chal")])
    assert_indexed(lines, "SEARCH idx_string USING PRIMARY KEY (pid=? AND value>? AND value<?)")
    driven_by_rid(lines)
    lines = explain(db, ("Patient",), [("family:exact", "Chalmers")])
    assert_indexed(lines, "SEARCH idx_string USING PRIMARY KEY (pid=? AND value=? AND exact=?)")
    driven_by_rid(lines)


@pytest.mark.parametrize("value, fragment", [
    ("1974", "(pid=? AND lo>? AND lo<?)"),
    ("1974-12-25", "(pid=? AND lo>? AND lo<?)"),
    ("gt1974", "idx_date_hi (pid=? AND hi>?)"),
    ("ge1974", "idx_date_hi (pid=? AND hi>?)"),
    ("lt1974", "(pid=? AND lo<?)"),
    ("le1974", "(pid=? AND lo<?)"),
    ("sa1974", "(pid=? AND lo>?)"),
    ("eb1974", "idx_date_hi (pid=? AND hi<?)"),
])
def test_date_searches_read_a_range_of_the_date_indexes(db: sqlite3.Connection, value: str,
                                                         fragment: str) -> None:
    lines = explain(db, ("Patient",), [("birthdate", value)])
    assert_indexed(lines, fragment)
    driven_by_rid(lines)


def test_last_updated_uses_the_type_and_time_index(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Patient",), [("_lastUpdated", "ge2020-01-01")])
    assert_indexed(lines, "resource_type_updated (type=? AND updated>?)")


def test_reference_searches_use_the_reference_indexes(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Observation",), [("subject", "Patient/p1")])
    assert_indexed(lines, "idx_reference USING PRIMARY KEY (pid=? AND target_id=? AND "
                          "target_type=?)")
    driven_by_rid(lines)
    lines = explain(db, ("Observation",), [("subject", "http://other.example.org/Patient/1")])
    assert_indexed(lines, "idx_reference USING PRIMARY KEY (pid=? AND target_id=? AND "
                          "target_type=? AND url=?)")
    driven_by_rid(lines)
    lines = explain(db, ("Observation",), [("subject:identifier", "urn:oid:1.2.3|99")])
    assert_indexed(lines, "SEARCH idx_token USING PRIMARY KEY (pid=? AND code=? AND system=?)")


def test_quantity_and_number_searches_are_narrowed(db: sqlite3.Connection) -> None:
    # Bounded on both sides: a value at least X has lo >= X - the widest row's span.
    for prefix in ("", "gt", "ge", "ap"):
        lines = explain(db, ("Observation",),
                        [("value-quantity", f"{prefix}5.4|http://unitsofmeasure.org|mg")])
        assert_indexed(lines, "idx_quantity USING PRIMARY KEY (pid=? AND code=? AND system=? "
                              f"AND lo>?{' AND lo<?' if prefix in ('', 'ap') else ''})")
        lines = explain(db, ("RiskAssessment",), [("probability", f"{prefix}0.8")])
        assert_indexed(lines, "idx_number USING PRIMARY KEY (pid=? AND lo>?"
                              f"{' AND lo<?' if prefix in ('', 'ap') else ''})")


def test_chains_read_indexes_at_every_link(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Observation",), [("subject:Patient.name", "chal")])
    assert_indexed(lines, "SEARCH ref USING PRIMARY KEY (pid=? AND target_id=? AND target_type=?)",
                   "SEARCH t1 USING INTEGER PRIMARY KEY (rowid=?)",
                   "SEARCH idx_string USING PRIMARY KEY (pid=? AND value>? AND value<?)")
    driven_by_rid(lines)
    lines = explain(db, ("Observation",), [("subject:Patient.organization.name", "tabriz")])
    assert_indexed(lines, "SEARCH t2 USING INTEGER PRIMARY KEY (rowid=?)",
                   "SEARCH idx_string USING PRIMARY KEY (pid=? AND value>? AND value<?)")
    driven_by_rid(lines)


def test_reverse_chains_start_from_the_inner_search(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Patient",), [("_has:Observation:patient:code", "29463-7")])
    assert_indexed(lines, "SEARCH idx_token USING PRIMARY KEY (pid=? AND code=?)",
                   "idx_reference_rid (rid=? AND pid=?)",
                   "SEARCH o USING COVERING INDEX sqlite_autoindex_resource_1 (type=? AND id=?)",
                   "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)")


def test_searches_over_several_types_share_one_index_read(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Patient", "Practitioner"), [("name", "chal")])
    assert_indexed(lines, "SEARCH idx_string USING PRIMARY KEY (pid=? AND value>? AND value<?)")
    driven_by_rid(lines)
    sql, _ = page_sql(parse(("Patient", "Practitioner"), [("name", "chal")], base=BASE))
    assert sql.count("FROM idx_string") == 1


def test_compartment_searches_are_driven_by_the_reference_index(db: sqlite3.Connection) -> None:
    from server.search.handlers import compartments

    types = ("Observation", "Encounter", "Patient")
    query = parse(types, [("_count", "10")], base=BASE)
    owner = ReferenceValue("Patient", "p1")
    options = [Match(t, code, "reference", (owner,))
               for t in types for code in compartments()["Patient"][t]]
    options.append(Match("Patient", "_id", "id", (TokenValue(None, "p1"),)))
    query.clauses.insert(0, AnyOf(tuple(options)))
    lines = plan_of(db, query)
    assert_indexed(lines, "idx_reference USING PRIMARY KEY (pid=? AND target_id=? AND "
                          "target_type=?)", "sqlite_autoindex_resource_1 (type=? AND id=?)")
    assert page_sql(query)[0].count("FROM idx_reference") == 1


def test_sorting_reads_each_match_s_value_through_the_rid_index(db: sqlite3.Connection) -> None:
    lines = explain(db, ("Patient",), [("name", "chal"), ("_sort", "-birthdate,family")])
    assert_indexed(lines, "idx_date_rid (rid=?)", "idx_string_rid (rid=?)")
    driven_by_rid(lines)


def test_or_values_are_each_looked_up_in_the_primary_key(db: sqlite3.Connection) -> None:
    """SQLite cannot split an OR over a WITHOUT ROWID primary key: each value must become its
    own lookup, or every row of the parameter is read."""
    lines = explain(db, ("Observation",), [("code", "http://loinc.org|8867-4,http://loinc.org|"
                                                   "8310-5,29463-7")])
    assert_indexed(lines, "SEARCH idx_token USING PRIMARY KEY (pid=? AND code=? AND system=?)",
                   "SEARCH idx_token USING PRIMARY KEY (pid=? AND code=?)")
    assert sum("SEARCH idx_token" in line for line in lines) == 3

"""The search planner's readings (server.storage.sqlite_search): streaming the driving index,
reading in the sort key's order, merged date ranges. Each must return exactly what the general
reading returns, page by page. The thresholds that choose them are lowered so a small data set
exercises them."""

from __future__ import annotations

import pytest

from server.storage import sqlite_search
from tests.conftest import Fhir


def obs(i: int, when: str | None, code: str = "8867-4", system: str = "http://loinc.org") -> dict:
    o = {"resourceType": "Observation", "id": f"o{i:02d}", "status": "final",
         "code": {"coding": [{"system": system, "code": code}]},
         "subject": {"reference": f"Patient/p{i % 3}"}}
    if when:
        o["effectiveDateTime"] = when
    return o


@pytest.fixture
def observations(fhir: Fhir) -> Fhir:
    days = [f"2024-03-{d:02d}T10:00:00Z" for d in (5, 1, 9, 1, 20, 14, 1, 30, 11, 3)]
    for i in range(30):
        when = None if i % 7 == 3 else days[i % len(days)]
        code = "8867-4" if i % 4 else "8310-5"
        assert fhir.put(f"Observation/o{i:02d}", obs(i, when, code)).status_code == 201
    fhir.put("Observation/period", {**obs(90, None), "id": "period",
                                    "effectivePeriod": {"start": "2024-02-20"}})
    return fhir


def walk(fhir: Fhir, params: dict[str, str]) -> list[str]:
    page = fhir.get("Observation", params={**params, "_count": "4"}).json()
    ids = [e["resource"]["id"] for e in page.get("entry", [])]
    while True:
        nxt = [link["url"] for link in page.get("link", []) if link["relation"] == "next"]
        if not nxt:
            return ids
        page = fhir.get(nxt[0]).json()
        ids += [e["resource"]["id"] for e in page.get("entry", [])]


def walk_back(fhir: Fhir, params: dict[str, str]) -> list[str]:
    """To the last page by next links, then back to the first by previous links."""
    page = fhir.get("Observation", params={**params, "_count": "4"}).json()
    while nxt := [link["url"] for link in page.get("link", []) if link["relation"] == "next"]:
        page = fhir.get(nxt[0]).json()
    ids = [e["resource"]["id"] for e in page.get("entry", [])]
    while prev := [link["url"] for link in page.get("link", []) if
                   link["relation"] == "previous"]:
        page = fhir.get(prev[0]).json()
        ids = [e["resource"]["id"] for e in page.get("entry", [])] + ids
    return ids


@pytest.mark.parametrize("params", [
    {"_sort": "-date"}, {"_sort": "date"}, {"code": "http://loinc.org|8867-4", "_sort": "-date"},
    {"code": "http://loinc.org|8867-4", "_sort": "date"}, {"code": "http://loinc.org|8867-4"},
    {"date": "ge2024-03-01", "_sort": "date"},
])
def test_every_reading_gives_the_same_pages(observations: Fhir, monkeypatch,  # type: ignore[no-untyped-def]
                                            params: dict[str, str]) -> None:
    general = walk(observations, params)
    monkeypatch.setattr(sqlite_search, "SORT_DRIVE_MIN", 0)
    monkeypatch.setattr(sqlite_search, "ESTIMATE_CAP", 1)
    used: list[str] = []
    for name in ("_by_sort", "_stream_sql"):
        real = getattr(sqlite_search, name)
        monkeypatch.setattr(sqlite_search, name,
                            lambda *a, _real=real, _name=name: used.append(_name) or _real(*a))
    assert walk(observations, params) == general
    assert used, "the special reading was not used"
    assert walk_back(observations, params) == general
    assert len(general) == len(set(general))


def test_sorted_pages_put_resources_without_a_value_last(observations: Fhir,  # type: ignore[no-untyped-def]
                                                         monkeypatch) -> None:
    monkeypatch.setattr(sqlite_search, "SORT_DRIVE_MIN", 0)
    ids = walk(observations, {"_sort": "date"})
    dates = {e["resource"]["id"]: e["resource"].get("effectiveDateTime", e["resource"].get(
        "effectivePeriod", {}).get("start")) for e in observations.get(
        "Observation", params={"_count": "100"}).json()["entry"]}
    with_value = [i for i in ids if dates[i]]
    assert ids[:len(with_value)] == with_value and all(not dates[i] for i in
                                                       ids[len(with_value):])
    assert with_value[0] == "period"  # its range starts first
    starts = [dates[i] for i in with_value[1:]]
    assert starts == sorted(starts)


def test_merged_date_ranges_and_open_periods(observations: Fhir) -> None:
    """ge/lt repeated on Observation.date (one row per resource) are answered together; the
    open-ended Period (2024-02-20 onwards) is on or after 2024-03-10 and before 2024-03-12."""
    found = {e["resource"]["id"] for e in observations.get("Observation", params=[
        ("date", "ge2024-03-10"), ("date", "lt2024-03-12"), ("_count", "100")]).json()["entry"]}
    expected = {f"o{i:02d}" for i in range(30) if i % 7 != 3 and
                ["05", "01", "09", "01", "20", "14", "01", "30", "11", "03"][i % 10] == "11"}
    assert found == expected | {"period"}


def test_a_chain_is_checked_per_resource_when_a_token_is_streamed(  # type: ignore[no-untyped-def]
        observations: Fhir, monkeypatch) -> None:
    """Both clauses select many: the code's index is read in order and each observation's
    subject is followed to check its name (a deleted patient no longer matches)."""
    for i, family in enumerate(["Chalmers", "Chen", "Chalk"]):
        assert observations.put(f"Patient/p{i}", {"resourceType": "Patient", "id": f"p{i}",
                                                  "name": [{"family": family}]}).status_code == 201
    params = {"subject:Patient.name": "chal", "code": "http://loinc.org|8867-4"}
    expected = {f"o{i:02d}" for i in range(30) if i % 4 and i % 3 != 1} | {"period"}
    general = walk(observations, params)
    assert set(general) == expected
    monkeypatch.setattr(sqlite_search, "ESTIMATE_CAP", 1)
    used: list[bool] = []
    real = sqlite_search._stream_sql
    monkeypatch.setattr(sqlite_search, "_stream_sql", lambda *a: used.append(True) or real(*a))
    assert walk(observations, params) == general
    assert used, "the code's index was not streamed"
    assert observations.delete("Patient/p2").status_code == 200
    assert set(walk(observations, params)) == {i for i in expected if i == "period" or
                                               int(i[1:]) % 3 == 0}

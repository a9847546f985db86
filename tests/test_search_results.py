"""What a search returns: ``_sort``, ``_count`` and paging, ``_total``, ``_summary``,
``_elements``, how errors and unknown parameters are reported, and that deleted resources never
match (search.html#sort, #count, #total, #summary, #elements, #errors; http.html#search)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.conftest import Fhir
from tests.test_search import (
    entries,
    found,
    ids,
    observation,
    patient,
    put,
    put_all,
    refused,
    search,
)


def link(bundle: dict[str, Any], relation: str) -> str | None:
    for item in bundle.get("link", []):
        if item["relation"] == relation:
            return item["url"]
    return None


def follow(fhir: Fhir, url: str) -> dict[str, Any]:
    assert url.startswith("http://testserver/fhir/"), url
    r = fhir.get(url)
    assert r.status_code == 200, r.text
    return r.json()


# -- _sort ---------------------------------------------------------------------------------------

@pytest.fixture
def sortable(fhir: Fhir) -> Fhir:
    put_all(fhir,
            patient("s1", name=[{"family": "Adams"}], birthDate="1980-05-01", gender="female"),
            patient("s2", name=[{"family": "Baker"}], birthDate="1975", gender="male"),
            patient("s3", name=[{"family": "Capek"}], birthDate="1990-01-01", gender="male"),
            patient("s4", name=[{"family": "Davis"}], gender="female"),
            patient("s5", birthDate="1985-07-01"))
    return fhir


def order(fhir: Fhir, params: dict[str, str]) -> list[str]:
    bundle = search(fhir, "Patient", params)
    return ids(bundle)


def test_sort_by_string_date_token_and_id(sortable: Fhir) -> None:
    assert order(sortable, {"_sort": "family", "family:missing": "false"}) == [
        "s1", "s2", "s3", "s4"]
    assert order(sortable, {"_sort": "-family", "family:missing": "false"}) == [
        "s4", "s3", "s2", "s1"]
    assert order(sortable, {"_sort": "birthdate", "birthdate:missing": "false"}) == [
        "s2", "s1", "s5", "s3"]
    assert order(sortable, {"_sort": "-birthdate", "birthdate:missing": "false"}) == [
        "s3", "s5", "s1", "s2"]
    assert order(sortable, {"_sort": "gender,-birthdate", "birthdate:missing": "false",
                            "gender:missing": "false"}) == ["s1", "s3", "s2"]
    assert order(sortable, {"_sort": "-gender,family", "gender:missing": "false"}) == [
        "s2", "s3", "s1", "s4"]
    assert order(sortable, {"_sort": "_id"}) == ["s1", "s2", "s3", "s4", "s5"]
    assert order(sortable, {"_sort": "-_id"}) == ["s5", "s4", "s3", "s2", "s1"]


def test_resources_without_a_sort_value_are_kept_together(sortable: Fhir) -> None:
    got = order(sortable, {"_sort": "birthdate"})
    assert sorted(got) == ["s1", "s2", "s3", "s4", "s5"]
    assert [i for i in got if i != "s4"] == ["s2", "s1", "s5", "s3"]
    assert got.index("s4") in (0, 4)
    got = order(sortable, {"_sort": "family"})
    assert [i for i in got if i != "s5"] == ["s1", "s2", "s3", "s4"]
    assert got.index("s5") in (0, 4)


def test_sort_by_last_updated(sortable: Fhir) -> None:
    time.sleep(0.002)
    put(sortable, patient("s2", name=[{"family": "Baker"}], birthDate="1975", gender="other"))
    assert order(sortable, {"_sort": "_lastUpdated"}) == ["s1", "s3", "s4", "s5", "s2"]
    assert order(sortable, {"_sort": "-_lastUpdated"}) == ["s2", "s5", "s4", "s3", "s1"]


def test_sort_keys_repeat_and_older_clients_asc_and_desc(sortable: Fhir) -> None:
    """_sort "can repeat for inner sort orders" (search.html, the summary table): repeated, its
    keys are taken in turn. ``_sort:asc``/``_sort:desc`` (the syntax of DSTU2 and STU3) are
    taken as their clients mean them, and the self link names the keys used."""
    present = {"birthdate:missing": "false", "gender:missing": "false"}
    want = ["s1", "s3", "s2"]
    assert order(sortable, {"_sort": "gender,-birthdate", **present}) == want
    bundle = search(sortable, "Patient", [("_sort", "gender"), ("_sort", "-birthdate"),
                                          *present.items()])
    assert ids(bundle) == want
    assert "_sort=gender&_sort=-birthdate" in (link(bundle, "self") or ""), link(bundle, "self")
    assert ids(search(sortable, "Patient", [("_sort", "gender"), ("_sort:desc", "birthdate"),
                                            *present.items()])) == want
    assert order(sortable, {"_sort:desc": "birthdate", "birthdate:missing": "false"}) == [
        "s3", "s5", "s1", "s2"]
    assert order(sortable, {"_sort:asc": "birthdate", "birthdate:missing": "false"}) == [
        "s2", "s1", "s5", "s3"]


def test_bad_sorts_are_refused(sortable: Fhir) -> None:
    refused(sortable, "Patient", {"_sort": "nonsense"}, "_sort")
    refused(sortable, "Observation", {"_sort": "code-value-quantity"}, "_sort")


# -- _count and paging ---------------------------------------------------------------------------

def walk(fhir: Fhir, params: list[tuple[str, str]] | dict[str, str],
         between: Any = None) -> tuple[list[list[str]], dict[str, Any]]:
    """Pages of a Patient search, following ``next`` to the end; ``between(n)`` runs before the
    n-th further page is read. Returns the pages and the last bundle."""
    bundle = search(fhir, "Patient", params)
    pages = [ids(bundle)]
    while (url := link(bundle, "next")) is not None:
        if between is not None:
            between(len(pages))
        bundle = follow(fhir, url)
        pages.append(ids(bundle))
        assert len(pages) < 50
    return pages, bundle


def families(n: int) -> list[dict[str, Any]]:
    # Ids run against the family order so that sorted and unsorted pages differ.
    return [patient(f"n{n - i:02d}", name=[{"family": f"Family{i:02d}"}], gender="other")
            for i in range(n)]


def test_paging_follows_next_to_the_end_and_previous_back(fhir: Fhir) -> None:
    put_all(fhir, *families(23))
    expected = [f"n{23 - i:02d}" for i in range(23)]
    pages, last = walk(fhir, {"_sort": "family", "_count": "5"})
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    assert [i for p in pages for i in p] == expected
    assert last["total"] == 23
    assert link(last, "next") is None
    back = [ids(last)]
    bundle = last
    while (url := link(bundle, "previous")) is not None:
        bundle = follow(fhir, url)
        back.append(ids(bundle))
        assert len(back) < 50
    assert back == pages[::-1]
    # The first page reached backwards has no previous page, and its next leads on again.
    assert link(bundle, "previous") is None
    assert ids(follow(fhir, link(bundle, "next") or "")) == pages[1]
    # Every page of several has a "first" link (search.html#paging), to the first page.
    assert ids(follow(fhir, link(last, "first") or "")) == pages[0]
    assert "_cursor" not in (link(last, "first") or "")
    assert link(search(fhir, "Patient", {"_id": "n01"}), "first") is None  # one page only
    # Descending and unsorted searches page the same way.
    pages, _ = walk(fhir, {"_sort": "-family", "_count": "7"})
    assert [i for p in pages for i in p] == expected[::-1]
    pages, _ = walk(fhir, {"_count": "4"})
    flat = [i for p in pages for i in p]
    assert sorted(flat) == sorted(expected) and len(flat) == 23


def test_paging_with_ties_and_missing_sort_values(fhir: Fhir) -> None:
    put_all(fhir, *[patient(f"t{i:02d}", gender=("male", "female")[i % 2],
                            **({"birthDate": "1990"} if i % 3 else {})) for i in range(17)])
    pages, _ = walk(fhir, {"_sort": "gender,-birthdate", "_count": "3"})
    flat = [i for p in pages for i in p]
    assert sorted(flat) == [f"t{i:02d}" for i in range(17)]
    assert flat == ids(search(fhir, "Patient", {"_sort": "gender,-birthdate", "_count": "100"}))


@pytest.mark.parametrize("sort", ["", "family", "-family", "_lastUpdated", "-_lastUpdated",
                                  "gender,_id"])
def test_pages_stay_correct_while_data_changes(fhir: Fhir, sort: str) -> None:
    put_all(fhir, *families(20))
    original = {f"n{i:02d}" for i in range(1, 21)}
    seen: list[str] = []
    changed: set[str] = set()

    def meddle(n: int) -> None:
        # Between pages: create new ones, update one already seen and one not yet seen (so that
        # they move in the order), delete one not yet seen.
        unseen = sorted(original - set(seen) - changed)
        put(fhir, patient(f"new{n}", name=[{"family": "Family00a"}], gender="other"))
        put(fhir, patient(f"late{n}", name=[{"family": "Zulu"}], gender="other"))
        victim = seen[0] if seen[0] not in changed else seen[-1]
        put(fhir, patient(victim, name=[{"family": "Zz"}], gender="unknown"))
        changed.add(victim)
        if len(unseen) > 2:
            put(fhir, patient(unseen[0], name=[{"family": "Aa"}], gender="female"))
            assert fhir.delete(f"Patient/{unseen[1]}").status_code in (200, 204)
            changed.update(unseen[:2])

    params = {"_count": "4", **({"_sort": sort} if sort else {})}
    bundle = search(fhir, "Patient", params)
    seen += ids(bundle)
    while (url := link(bundle, "next")) is not None:
        meddle(len(seen))
        bundle = follow(fhir, url)
        seen += ids(bundle)
        assert len(seen) < 200
    assert len(seen) == len(set(seen)), seen
    assert original - changed <= set(seen)
    deleted = {i for i in changed if fhir.get(f"Patient/{i}").status_code == 410}
    assert deleted and not deleted & set(seen)


@pytest.mark.parametrize("sort", ["", "_id", "family"])
def test_a_previous_page_whose_resources_are_gone_leads_on(fhir: Fhir, sort: str) -> None:
    """Following "previous" when every resource before has been deleted gives the first page
    of what is left, with its "next" link, not an empty page that leads nowhere."""
    put_all(fhir, *families(6))
    params = {"_count": "2", **({"_sort": sort} if sort else {})}
    first = search(fhir, "Patient", params)
    second = follow(fhir, link(first, "next") or "")
    for i in ids(first):
        assert fhir.delete(f"Patient/{i}").status_code in (200, 204)
    back = follow(fhir, link(second, "previous") or "")
    assert ids(back) == ids(second)
    rest = ids(back)
    bundle = back
    while (url := link(bundle, "next")) is not None:
        bundle = follow(fhir, url)
        rest += ids(bundle)
    assert sorted(rest) == sorted(f"n{i:02d}" for i in range(1, 7) if f"n{i:02d}" not in
                                  ids(first))


def test_count(fhir: Fhir) -> None:
    put_all(fhir, *families(5))
    bundle = search(fhir, "Patient", {"_count": "2"})
    assert len(ids(bundle)) == 2 and link(bundle, "next") is not None
    assert bundle["total"] == 5
    bundle = search(fhir, "Patient", {"_count": "0"})
    assert ids(bundle) == [] and bundle["total"] == 5
    bundle = search(fhir, "Patient", {"_count": "100000"})
    assert len(ids(bundle)) == 5 and link(bundle, "next") is None
    # The self link names the page size used: the server's largest (search.html#conformance).
    assert parse_qs(urlsplit(link(bundle, "self") or "").query)["_count"] == ["1000"], bundle
    refused(fhir, "Patient", {"_count": "abc"}, "_count")
    refused(fhir, "Patient", {"_count": "-1"}, "_count")
    r = fhir.get("Patient", params={"_count": "2", "_cursor": "garbage"})
    assert r.status_code == 400 and r.json()["resourceType"] == "OperationOutcome"


def test_self_link_names_the_parameters_used(fhir: Fhir) -> None:
    put_all(fhir, *families(3))
    bundle = search(fhir, "Patient", [("family", "family"), ("nonsense", "x"), ("_count", "2")])
    self_url = link(bundle, "self") or ""
    assert "family=family" in self_url and "_count=2" in self_url
    assert "nonsense" not in self_url
    assert "nonsense" not in (link(bundle, "next") or "")


# -- _total, _summary, _elements -----------------------------------------------------------------

def test_total(fhir: Fhir) -> None:
    put_all(fhir, *families(7))
    assert search(fhir, "Patient", {"_total": "accurate", "_count": "2"})["total"] == 7
    assert "total" not in search(fhir, "Patient", {"_total": "none"})
    estimate = search(fhir, "Patient", {"_total": "estimate", "_count": "2"})
    assert estimate.get("total", 7) >= 0
    assert search(fhir, "Patient", {"_total": "accurate", "family": "family00"})["total"] == 1
    refused(fhir, "Patient", {"_total": "lots"}, "_total")


def test_summary_and_elements(fhir: Fhir) -> None:
    put(fhir, patient("full", name=[{"family": "Full"}], gender="female",
                      maritalStatus={"text": "married"},
                      text={"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/"
                                                          "xhtml\">Full</div>"},
                      communication=[{"language": {"text": "Persian"}}]))
    put(fhir, patient("other", name=[{"family": "Other"}]))
    bundle = search(fhir, "Patient", {"_summary": "count"})
    assert bundle["total"] == 2 and "entry" not in bundle

    def only(params: dict[str, str]) -> dict[str, Any]:
        bundle = search(fhir, "Patient", {"_id": "full", **params})
        (entry,) = entries(bundle)
        return entry["resource"]

    def subsetted(resource: dict[str, Any]) -> bool:
        return any(t.get("code") == "SUBSETTED" for t in resource["meta"].get("tag", []))

    summary = only({"_summary": "true"})
    assert summary["name"] == [{"family": "Full"}] and summary["gender"] == "female"
    assert "maritalStatus" not in summary and "communication" not in summary
    assert "text" not in summary and subsetted(summary)
    text = only({"_summary": "text"})
    assert "text" in text and "name" not in text and subsetted(text)
    data = only({"_summary": "data"})
    assert "text" not in data and data["maritalStatus"] == {"text": "married"}
    assert subsetted(data)
    whole = only({"_summary": "false"})
    assert "text" in whole and "communication" in whole and not subsetted(whole)
    elements = only({"_elements": "gender,maritalStatus"})
    assert set(elements) == {"resourceType", "id", "meta", "gender", "maritalStatus"}
    assert subsetted(elements)
    refused(fhir, "Patient", {"_summary": "some"}, "_summary")


def test_elements_name_choice_elements_by_their_base_and_keep_mandatory_ones(fhir: Fhir) -> None:
    """search.html#elements: base element names (``value`` or ``value[x]`` for
    ``valueQuantity``); mandatory elements (Observation.status, code) come whether asked or not."""
    put(fhir, {"resourceType": "Observation", "id": "v", "status": "final",
               "code": {"text": "pulse"}, "effectiveDateTime": "2020-01-01",
               "valueQuantity": {"value": 1}, "note": [{"text": "resting"}]})

    def kept(names: str) -> set[str]:
        (entry,) = entries(search(fhir, "Observation", {"_id": "v", "_elements": names}))
        return set(entry["resource"]) - {"resourceType", "id", "meta"}

    assert kept("value") == {"valueQuantity", "status", "code"}
    assert kept("value[x],effective") == {"valueQuantity", "effectiveDateTime", "status", "code"}
    assert kept("note") == {"note", "status", "code"}


STRICT = {"Prefer": "handling=strict"}


def warned(bundle: dict[str, Any]) -> str:
    """The diagnostics of a searchset's warnings, joined."""
    return " | ".join(i["diagnostics"] for e in entries(bundle, "outcome")
                      for i in e["resource"]["issue"])


def test_elements_that_are_no_element_or_nested_are_said_so(fhir: Fhir) -> None:
    """search.html#elements names "base element names": a name the type has not is reported
    (refused under strict handling), and a nested path keeps its top-level element whole
    rather than drop it, saying so."""
    put(fhir, patient("el", name=[{"family": "Elle", "given": ["E"]}], gender="female"))
    bundle = search(fhir, "Patient", {"_id": "el", "_elements": "name.family"})
    (entry,) = entries(bundle)
    assert entry["resource"]["name"] == [{"family": "Elle", "given": ["E"]}]
    assert "gender" not in entry["resource"]
    assert "name.family" in warned(bundle) and "whole" in warned(bundle)
    bundle = search(fhir, "Patient", {"_id": "el", "_elements": "gender,bogus"})
    (entry,) = entries(bundle)
    assert entry["resource"]["gender"] == "female" and "bogus" in warned(bundle)
    assert "name.family" not in warned(bundle)
    (entry,) = entries(search(fhir, "Patient", {"_id": "el", "_elements": "Patient.gender"}))
    assert entry["resource"]["gender"] == "female"
    refused(fhir, "Patient", {"_elements": "bogus"}, "_elements", headers=STRICT)
    refused(fhir, "Patient", {"_elements": "name.family"}, "_elements", headers=STRICT)
    refused(fhir, "Patient", {"_elements": "Patient.name.family"}, "_elements", headers=STRICT)


def test_elements_with_summary_are_ignored_and_left_out_of_the_self_link(fhir: Fhir) -> None:
    """_summary decides what comes back when both are given: _elements is reported as ignored
    and the self link gives "the parameters that were actually used" (search.html#conformance)."""
    put(fhir, patient("both", name=[{"family": "Both"}], gender="male"))
    bundle = search(fhir, "Patient", {"_id": "both", "_summary": "true", "_elements": "gender"})
    (entry,) = entries(bundle)
    assert entry["resource"]["name"] == [{"family": "Both"}]
    assert "_elements" not in link(bundle, "self") and "_elements" in warned(bundle)
    refused(fhir, "Patient", {"_summary": "true", "_elements": "gender"}, "_elements",
            headers=STRICT)


@pytest.mark.parametrize("name", ["_count", "_summary", "_total"])
def test_a_result_parameter_given_twice_with_different_values_is_refused(
        fhir: Fhir, name: str) -> None:
    values = {"_count": ("1", "2"), "_summary": ("true", "false"),
              "_total": ("none", "accurate")}[name]
    refused(fhir, "Patient", [(name, values[0]), (name, values[1])], name)
    bundle = search(fhir, "Patient", [(name, values[0]), (name, values[0])])
    assert bundle["resourceType"] == "Bundle"
    if name == "_count":  # the same number, however written
        assert search(fhir, "Patient", [("_count", "2"), ("_count", "02")])["resourceType"] \
            == "Bundle"


def test_format_in_a_search_form_body_chooses_the_format(fhir: Fhir) -> None:
    put(fhir, patient("fmt"))
    r = fhir.post("Patient/_search", content=b"_id=fmt&_format=xml",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/fhir+xml"), r.headers
    assert "<Bundle" in r.text and 'value="fmt"' in r.text


def test_includes_that_cannot_apply_to_the_search_are_said_so(fhir: Fhir) -> None:
    """An _include whose source type is not searched, or a _revinclude whose parameter cannot
    point at a searched type, brings nothing: reported and left out of the self link, refused
    under strict handling. A target type the parameter cannot point at is refused, as in a
    filter (subject:Practitioner)."""
    put(fhir, {"resourceType": "Observation", "id": "inc-x", "status": "final",
               "code": {"text": "x"}})
    for name, value in (("_include", "Patient:organization"),
                        ("_revinclude", "Organization:partof"),
                        ("_revinclude", "Provenance:target:Patient")):
        bundle = search(fhir, "Observation", {"_id": "inc-x", name: value})
        assert value in warned(bundle) and name not in (link(bundle, "self") or "")
        refused(fhir, "Observation", {"_id": "inc-x", name: value}, name, headers=STRICT)
    bundle = search(fhir, "Observation", {"_id": "inc-x",
                                          "_include:iterate": "Patient:organization"})
    assert not entries(bundle, "outcome")  # iterated: it may apply to what was included
    refused(fhir, "Observation", {"_include": "Observation:subject:Practitioner"}, "_include")


def test_elements_leave_included_resources_whole_and_summary_trims_them_too(fhir: Fhir) -> None:
    """search.html#elements: "The list of elements does not apply to included resources";
    _summary, which says nothing of the kind, trims every resource of the Bundle."""
    put(fhir, patient("inc", name=[{"family": "Included"}], gender="male",
                      maritalStatus={"text": "single"}))
    put(fhir, {"resourceType": "Observation", "id": "inc-o", "status": "final",
               "code": {"text": "pulse"}, "subject": {"reference": "Patient/inc"},
               "valueQuantity": {"value": 70}, "note": [{"text": "resting"}]})

    def by_mode(params: dict[str, str]) -> dict[str, dict[str, Any]]:
        bundle = search(fhir, "Observation", {"_id": "inc-o", "_include": "Observation:subject",
                                              **params})
        return {e["search"]["mode"]: e["resource"] for e in bundle["entry"]}

    found = by_mode({"_elements": "subject"})
    assert set(found["match"]) == {"resourceType", "id", "meta", "subject", "status", "code"}
    assert found["include"]["name"] == [{"family": "Included"}]
    assert found["include"]["maritalStatus"] == {"text": "single"}
    assert not any(t.get("code") == "SUBSETTED" for t in found["include"]["meta"].get("tag", []))
    summarised = by_mode({"_summary": "true"})
    assert "note" not in summarised["match"] and "maritalStatus" not in summarised["include"]


def test_contained_searches_are_refused_clearly(fhir: Fhir) -> None:
    for params in ({"_contained": "true"}, {"_contained": "both"},
                   {"_containedType": "contained"}):
        body = refused(fhir, "Patient", params, next(iter(params)))
        assert body["issue"][0]["code"] == "not-supported"
    assert search(fhir, "Patient", {"_contained": "false"})["total"] == 0


# -- errors --------------------------------------------------------------------------------------

def test_unknown_parameters_are_ignored_and_reported(fhir: Fhir) -> None:
    put_all(fhir, patient("a", gender="male"), patient("b", gender="female"))
    bundle = search(fhir, "Patient", [("gender", "male"), ("nonsense", "x"), ("pet:name", "y")])
    assert ids(bundle) == ["a"]
    (outcome,) = entries(bundle, "outcome")
    assert "fullUrl" not in outcome or outcome["fullUrl"]
    issues = outcome["resource"]["issue"]
    assert outcome["resource"]["resourceType"] == "OperationOutcome"
    assert sorted(x for i in issues for x in i["expression"]) == ["nonsense", "pet:name"]
    assert all(i["severity"] in ("warning", "information") for i in issues)
    assert bundle["total"] == 1  # the outcome entry is not a match
    refused(fhir, "Patient", [("gender", "male"), ("nonsense", "x")], "nonsense",
            headers={"Prefer": "handling=strict"})
    assert ids(search(fhir, "Patient", [("gender", "male"), ("nonsense", "x")],
                      headers={"Prefer": "handling=lenient"})) == ["a"]


def test_empty_parameters_are_ignored(fhir: Fhir) -> None:
    """search.html#errors: "Empty parameters are not an error - they are just ignored by the
    server": silently, whatever the handling asked for, and also in a form-encoded body."""
    put_all(fhir, patient("a", gender="male", name=[{"family": "Adams"}]),
            patient("b", gender="female", name=[{"family": "Brown"}]))
    for headers in (None, {"Prefer": "handling=strict"}, {"Prefer": "handling=lenient"}):
        bundle = search(fhir, "Patient", [("family", ""), ("gender", "female")], headers)
        assert ids(bundle) == ["b"] and not entries(bundle, "outcome")
        self_url = link(bundle, "self")
        assert self_url is not None and "family" not in self_url and "gender=female" in self_url
        for name in ("gender", "name:exact", "birthdate", "name:missing", "_count"):
            bundle = search(fhir, "Patient", {name: ""}, headers)
            assert sorted(ids(bundle)) == ["a", "b"] and not entries(bundle, "outcome"), name
    r = fhir.post("Patient/_search", content="family=&gender=female",
                  headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert ids(r.json()) == ["b"]
    # The criteria of a conditional write are not left out: that would widen what it acts on.
    r = fhir.post("Patient", patient("c", gender="female"),
                  headers={"If-None-Exist": "family=&gender=female"})
    assert r.status_code == 400 and "family" in r.text, r.text
    assert fhir.delete("Patient?family=&gender=female").status_code == 400
    assert sorted(ids(search(fhir, "Patient", {}))) == ["a", "b"]
    refused(fhir, "Patient", {"gender": "male,,female"}, "gender")  # an empty value in a list


@pytest.mark.parametrize("name", ["_text", "_content", "_filter"])
def test_full_text_and_filter_parameters_are_ignored_unless_strict(fhir: Fhir,
                                                                   name: str) -> None:
    """Not supported, so ignored and reported like any other (search.html#errors: "servers
    SHOULD ignore unknown or unsupported parameters"), or refused under handling=strict."""
    put_all(fhir, patient("a", gender="male"), patient("b", gender="female"))
    for headers in (None, {"Prefer": "handling=lenient"}):
        bundle = search(fhir, "Patient", [(name, "x"), ("gender", "male")], headers)
        assert ids(bundle) == ["a"]
        (outcome,) = entries(bundle, "outcome")
        (issue,) = outcome["resource"]["issue"]
        assert issue["severity"] == "warning" and issue["expression"] == [name]
        assert "not supported" in issue["diagnostics"]
        assert "full-text search" in issue["diagnostics"] or name == "_filter"
        assert name not in (link(bundle, "self") or "")
    body = refused(fhir, "Patient", {name: "x"}, name, headers={"Prefer": "handling=strict"})
    assert body["issue"][0]["code"] == "not-supported"


def test_parameters_of_the_specification_left_out_are_named_as_unsupported(fhir: Fhir) -> None:
    """A parameter R4 defines that this server leaves out (Location's special ``near``) is
    reported as not supported, with why, not as unknown."""
    bundle = search(fhir, "Location", {"near": "42.25|-83.69|10|km"})
    (outcome,) = entries(bundle, "outcome")
    issue = outcome["resource"]["issue"][0]
    assert issue["code"] == "not-supported" and "near is not supported" in issue["diagnostics"]
    body = refused(fhir, "Location", {"near": "42.25|-83.69|10|km"}, "near",
                   headers={"Prefer": "handling=strict"})
    assert body["issue"][0]["code"] == "not-supported", body


def test_query_and_contained_stay_refused_when_lenient(fhir: Fhir) -> None:
    """search.html#query: a server SHALL refuse an unknown ``_query``; searching contained
    resources is refused rather than answered from the containers alone."""
    lenient = {"Prefer": "handling=lenient"}
    for params in ({"_query": "x"}, {"_contained": "true"}, {"_containedType": "contained"}):
        body = refused(fhir, "Patient", params, next(iter(params)), headers=lenient)
        assert body["issue"][0]["code"] == "not-supported"


@pytest.mark.parametrize("type_, name, value", [
    ("Patient", "birthdate", "1974-13-01"),
    ("Patient", "birthdate", "soon"),
    ("RiskAssessment", "probability", "high"),
    ("Patient", "gender", "|"),
    ("Patient", "identifier", "a|b|c"),
    ("Patient", "general-practitioner", "Nonsense/1"),
    ("Patient", "general-practitioner", "Practitioner/1/2"),
    ("Observation", "value-quantity", "1|2"),
    ("Patient", "_lastUpdated", "2020-01-01T10"),
])
def test_malformed_values_are_refused_naming_the_parameter(fhir: Fhir, type_: str, name: str,
                                                           value: str) -> None:
    refused(fhir, type_, {name: value}, name)


@pytest.mark.parametrize("type_, name", [
    ("Patient", "name:text"), ("Patient", "gender:below"), ("Patient", "gender:in"),
    ("Patient", "birthdate:exact"), ("Patient", "name:nonsense"), ("Patient", "gender:contains"),
    ("Patient", "name:not"), ("Patient", "general-practitioner:exact"), ("Patient", "_query"),
    ("Observation", "subject:not"), ("Observation", "subject:text"),
    ("Observation", "subject:contains"),
])
def test_unsupported_modifiers_and_parameters_are_refused(fhir: Fhir, type_: str,
                                                          name: str) -> None:
    value = "true" if name.endswith(":missing") else "x"
    body = refused(fhir, type_, {name: value}, name)
    assert body["issue"][0]["code"] in ("not-supported", "invalid", "value")
    if name.startswith("subject:"):  # a modifier, not a resource type, and said so
        assert body["issue"][0]["code"] == "not-supported", body
        assert "modifier" in body["issue"][0]["diagnostics"], body


@pytest.mark.parametrize("name, value", [
    ("_count:bogus", "2"), ("_elements:foo", "gender"), ("_summary:x", "true"),
    ("_total:x", "accurate"), ("_sort:bogus", "family"), ("_include:foo", "Patient:organization"),
    ("_include:iterate:x", "Patient:organization"), ("_revinclude:all", "Observation:subject"),
])
@pytest.mark.parametrize("handling", ["lenient", "strict"])
def test_result_parameters_with_unknown_modifiers_are_refused(fhir: Fhir, name: str, value: str,
                                                              handling: str) -> None:
    """search.html#modifiers: a server "SHALL reject any search request that contains [a
    parameter] suffixed by a modifier that the server does not support for that parameter",
    the result parameters too: whatever the handling asked for."""
    body = refused(fhir, "Patient", {name: value}, name,
                   headers={"Prefer": f"handling={handling}"})
    assert body["issue"][0]["code"] == "not-supported", body


def test_count_zero_gives_the_total_however_many_match(fhir: Fhir,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """_count=0 "shall be treated the same as _summary=count" (search.html#count): the total,
    even past the number of matches a total is worked out for by default."""
    from server.storage import sqlite_search

    monkeypatch.setattr(sqlite_search, "AUTO_TOTAL_LIMIT", 3)
    put_all(fhir, *families(5))
    assert "total" not in search(fhir, "Patient", {"_count": "2"})  # past the default limit
    bundle = search(fhir, "Patient", {"_count": "0"})
    assert ids(bundle) == [] and bundle["total"] == 5


def test_parameters_across_types_must_be_common_to_them(fhir: Fhir) -> None:
    """search.html#searchall: with _type, "all other search parameters SHALL be common to all
    provided types". One that is not is refused under strict handling; else the types without
    it are left out, with a warning saying so."""
    put_all(fhir, patient("t1", gender="male"),
            observation("t-obs", code={"coding": [{"system": "http://loinc.org",
                                                   "code": "8867-4"}]}))
    params = {"_type": "Patient,Observation", "code": "8867-4"}
    r = fhir.get("", params=params, headers={"Prefer": "handling=strict"})
    assert r.status_code == 400 and "code" in r.json()["issue"][0]["expression"], r.text
    assert "Patient" in r.json()["issue"][0]["diagnostics"], r.text
    bundle = fhir.get("", params=params).json()
    assert ids(bundle) == ["t-obs"]
    (outcome,) = entries(bundle, "outcome")
    issue = outcome["resource"]["issue"][0]
    assert issue["severity"] == "warning" and issue["expression"] == ["code"], issue
    assert "Patient" in issue["diagnostics"], issue


def test_deleted_resources_never_match(fhir: Fhir) -> None:
    put_all(fhir, patient("gone", name=[{"family": "Gone"}], gender="male"),
            patient("kept", name=[{"family": "Kept"}], gender="male"),
            observation("obs", subject={"reference": "Patient/gone"}))
    assert fhir.delete("Patient/gone").status_code in (200, 204)
    assert found(fhir, "Patient", {"name": "gone"}) == set()
    assert found(fhir, "Patient", {"_id": "gone"}) == set()
    assert found(fhir, "Patient", {"gender": "male"}) == {"kept"}
    assert found(fhir, "Patient", {"gender:not": "female"}) == {"kept"}
    assert found(fhir, "Patient", {"name:missing": "true"}) == set()
    assert found(fhir, "Patient", {"_has:Observation:subject:status": "final"}) == set()
    assert search(fhir, "Patient", {"_total": "accurate"})["total"] == 1
    assert found(fhir, "Patient/gone/Observation") == {"obs"}  # the reference is still there
    assert ids(search(fhir, "Observation", {"_include": "Observation:subject"}), "include") == []
    # Recreated under the same id, it matches again with its new content.
    put(fhir, patient("gone", name=[{"family": "Back"}]))
    assert found(fhir, "Patient", {"name": "back"}) == {"gone"}
    assert found(fhir, "Patient", {"name": "gone"}) == set()

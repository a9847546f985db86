"""Transaction and batch Bundles (http.html#transaction): atomicity, order, reference rewriting,
conditional entries, batch semantics, concurrency and crashes."""

from __future__ import annotations

import base64
import signal
import subprocess
import sys
import threading
import time
import uuid

import httpx
import orjson
import pytest

from server.config import Settings
from tests.conftest import FHIR_JSON, Fhir, issue_token


def urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


def post(url: str, resource: dict, full_url: str | None = None, **request: str) -> dict:
    entry: dict = {"resource": resource, "request": {"method": "POST", "url": url, **request}}
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def put(url: str, resource: dict, full_url: str | None = None, **request: str) -> dict:
    entry = post(url, resource, full_url, **request)
    entry["request"]["method"] = "PUT"
    return entry


def transaction(*entries: dict, kind: str = "transaction") -> dict:
    return {"resourceType": "Bundle", "type": kind, "entry": list(entries)}


def patient(mrn: str, **extra: object) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:mrn", "value": mrn}],
            "name": [{"family": "Tsetseg"}], **extra}


def count(fhir: Fhir, type_: str, **params: str) -> int:
    return fhir.get(type_, params={**params, "_summary": "count"}).json()["total"]


def test_references_to_full_urls_are_rewritten_everywhere(fhir: Fhir) -> None:
    p, enc, binary = urn(), urn(), urn()
    identifier_urn = urn()
    bundle = transaction(
        post("Patient", {**patient("t-1"), "identifier": [
            {"system": "urn:mrn", "value": "t-1"},
            {"system": "urn:ietf:rfc:3986", "value": identifier_urn}],
            "text": {"status": "generated",
                     "div": f'<div xmlns="http://www.w3.org/1999/xhtml">See <a href="{enc}">the '
                            f"encounter</a> and <a href='{enc}'>again</a>, <a href="
                            f"'{enc}#reason'>why</a></div>"},
            "birthDate": "1990-01-01",
            "_birthDate": {"extension": [{"url": "https://fhir.consilium.health/x",
                                          "valueReference": {"reference": enc}}]},
            "extension": [{"url": "https://fhir.consilium.health/y", "valueUri": enc}]}, p),
        post("Encounter", {"resourceType": "Encounter", "status": "finished",
                           "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                     "code": "VR"}, "subject": {"reference": p}}, enc),
        post("Binary", {"resourceType": "Binary", "contentType": "text/plain",
                        "data": base64.b64encode(b"report").decode()}, binary),
        post("DocumentReference", {
            "resourceType": "DocumentReference", "status": "current",
            "subject": {"reference": p},
            "content": [{"attachment": {"contentType": "text/plain", "url": binary}}],
            "extension": [{"url": "https://fhir.consilium.health/StructureDefinition/x",
                           "valueReference": {"reference": enc}}]}, urn()),
        post("Observation", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "pulse"}, "subject": {"reference": p},
                             "encounter": {"reference": enc},
                             "contained": [{"resourceType": "Practitioner", "id": "pr",
                                            "name": [{"family": "Batbayar"}]}],
                             "performer": [{"reference": "#pr"}]}, urn()),
    )
    r = fhir.post("", bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "transaction-response"
    assert [e["response"]["status"] for e in out["entry"]] == ["201 Created"] * 5
    locations = [e["response"]["location"] for e in out["entry"]]
    pid = locations[0].split("/")[1]
    eid = locations[1].split("/")[1]
    bid = locations[2].split("/")[1]
    assert all(e["response"]["etag"] == 'W/"1"' for e in out["entry"])
    # Each entry names the resource it answers with (Bundle.entry.fullUrl "SHALL have a value").
    assert [e["fullUrl"] for e in out["entry"]] == [
        "http://testserver/fhir/" + loc.split("/_history")[0] for loc in locations]
    pat = fhir.get(f"Patient/{pid}").json()
    assert f'href="Encounter/{eid}"' in pat["text"]["div"]
    assert f"href='Encounter/{eid}'" in pat["text"]["div"]
    assert f"href='Encounter/{eid}#reason'" in pat["text"]["div"]  # a fragment stays
    assert pat["_birthDate"]["extension"][0]["valueReference"]["reference"] == f"Encounter/{eid}"
    assert pat["extension"][0]["valueUri"] == f"Encounter/{eid}"  # elements of type uri too
    assert pat["identifier"][1]["value"] == identifier_urn  # identifiers are not references
    assert fhir.get(f"Encounter/{eid}").json()["subject"]["reference"] == f"Patient/{pid}"
    doc = fhir.get(locations[3].rsplit("/_history", 1)[0]).json()
    assert doc["content"][0]["attachment"]["url"] == f"Binary/{bid}"
    assert doc["extension"][0]["valueReference"]["reference"] == f"Encounter/{eid}"
    obs = fhir.get(locations[4].rsplit("/_history", 1)[0]).json()
    assert obs["subject"]["reference"] == f"Patient/{pid}"
    assert obs["performer"][0]["reference"] == "#pr"
    # the rewritten references are what the index holds
    assert count(fhir, "Observation", subject=f"Patient/{pid}") == 1


def test_a_bundle_stored_by_a_transaction_keeps_its_own_references(fhir: Fhir) -> None:
    """A document Bundle's references are to its own entries (bundle.html §2.36.4.1 resolves
    them in the Bundle that holds them): stored through a transaction, they are neither refused
    as pointing at no entry of the transaction nor rewritten, even when a fullUrl is the same."""
    inner = urn()
    document = {"resourceType": "Bundle", "type": "document", "identifier": {
        "system": "urn:ietf:rfc:3986", "value": urn()}, "timestamp": "2026-11-24T10:00:00Z",
        "entry": [
            {"fullUrl": urn(), "resource": {
                "resourceType": "Composition", "status": "final", "type": {"text": "summary"},
                "date": "2026-11-24", "title": "Summary", "subject": {"reference": inner},
                "author": [{"reference": inner}]}},
            {"fullUrl": inner, "resource": patient("doc-1")}]}
    for shared in (False, True):
        r = fhir.post("", transaction(post("Bundle", document),
                                      post("Patient", patient("doc-2"), inner if shared else urn())))
        assert r.status_code == 200, r.text
        bid = r.json()["entry"][0]["response"]["location"].split("/")[1]
        stored = fhir.get(f"Bundle/{bid}").json()
        assert stored["entry"] == document["entry"], shared


def test_a_failing_last_entry_leaves_nothing_behind(fhir: Fhir) -> None:
    before = count(fhir, "Patient")
    bundle = transaction(post("Patient", patient("a-1"), urn()),
                         post("Patient", patient("a-2"), urn()),
                         post("Patient", {**patient("a-3"), "gender": "robot"}, urn()))
    r = fhir.post("", bundle)
    assert r.status_code == 422, r.text
    issue = r.json()["issue"][0]
    assert "Bundle.entry[2]" in issue["diagnostics"]
    assert issue["expression"][0].startswith("Bundle.entry[2]")
    assert count(fhir, "Patient") == before
    assert count(fhir, "Patient", identifier="urn:mrn|a-1") == 0


def test_processing_order_delete_post_put_get(fhir: Fhir) -> None:
    old = fhir.post("Patient", patient("o-1")).json()
    keep = fhir.post("Patient", patient("o-2")).json()
    bundle = transaction(
        {"request": {"method": "GET", "url": f"Patient/{keep['id']}"}},
        put(f"Patient/{keep['id']}", {**keep, "active": False}),
        post("Patient", patient("o-3"), urn()),
        {"request": {"method": "DELETE", "url": f"Patient/{old['id']}"}},
    )
    r = fhir.post("", bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    # responses come back in request order; the GET ran last, so it sees the PUT
    assert entries[0]["resource"]["active"] is False
    assert entries[0]["resource"]["meta"]["versionId"] == "2"
    assert entries[1]["response"]["status"] == "200 OK"
    assert entries[2]["response"]["status"] == "201 Created"
    assert entries[3]["response"]["status"] == "200 OK"
    assert fhir.get(f"Patient/{old['id']}").status_code == 410


def test_conditional_create_in_a_transaction_points_references_at_the_match(fhir: Fhir) -> None:
    existing = fhir.post("Patient", patient("c-1")).json()
    p = urn()
    bundle = transaction(
        post("Patient", patient("c-1"), p, ifNoneExist="identifier=urn:mrn|c-1"),
        post("Observation", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "t"}, "subject": {"reference": p}}, urn()),
    )
    r = fhir.post("", bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[0]["response"]["location"].startswith(f"Patient/{existing['id']}/")
    oid = entries[1]["response"]["location"].split("/")[1]
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == \
        f"Patient/{existing['id']}"
    assert count(fhir, "Patient", identifier="urn:mrn|c-1") == 1


@pytest.mark.parametrize("exists, also", [(False, "family=Tsetseg"), (True, "family=Tsetseg"),
                                          (False, "active=true")])
def test_the_same_conditional_create_twice_makes_one_resource(fhir: Fhir, exists: bool,
                                                              also: str) -> None:
    """Two entries creating a resource if none matches the same criteria (in any order, in
    ifNoneExist or in the URL) stand for one resource: the first creates it (or both find the one that exists), and references
    to either entry's fullUrl point at it, even when what it creates does not meet its
    criteria (active=true here)."""
    existing = fhir.post("Patient", patient("twice-1")).json() if exists else None
    first, second = urn(), urn()
    r = fhir.post("", transaction(
        post("Patient", patient("twice-1"), first,
             ifNoneExist=f"identifier=urn:mrn|twice-1&{also}"),
        post(f"Patient?{also}&identifier=urn:mrn|twice-1", patient("twice-1"), second),
        post("Observation", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "t"}, "subject": {"reference": second}}, urn()),
        post("Observation", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "t"}, "subject": {"reference": first}}, urn())))
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    statuses = [e["response"]["status"] for e in entries[:2]]
    assert statuses == (["200 OK", "200 OK"] if exists else ["201 Created", "200 OK"])
    where = {e["response"]["location"].split("/_history")[0] for e in entries[:2]}
    assert len(where) == 1
    (location,) = where
    if existing is not None:
        assert location == f"Patient/{existing['id']}"
    assert count(fhir, "Patient", identifier="urn:mrn|twice-1") == 1
    for e in entries[2:]:
        oid = e["response"]["location"].split("/")[1]
        assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == location


@pytest.mark.parametrize("exists", [False, True])
def test_two_conditional_creates_of_different_resources_are_refused(fhir: Fhir,
                                                                    exists: bool) -> None:
    """Two conditional creates with the same criteria and different resources: whichever came
    first would be stored and the other dropped, and "the outcome of processing the transaction
    SHALL NOT depend on the order" (http.html#trules). Refused, unless a resource matches: then
    neither creates anything, and both answer with it."""
    if exists:
        fhir.post("Patient", patient("twice-2"))
    criteria = "identifier=urn:mrn|twice-2"
    bundle = transaction(
        post("Patient", patient("twice-2"), urn(), ifNoneExist=criteria),
        post("Patient", patient("twice-2", gender="male"), urn(), ifNoneExist=criteria))
    r = fhir.post("", bundle)
    if exists:
        assert r.status_code == 200, r.text
        assert [e["response"]["status"] for e in r.json()["entry"]] == ["200 OK"] * 2
        assert "gender" not in fhir.get("Patient", params={"identifier": "urn:mrn|twice-2"}
                                        ).json()["entry"][0]["resource"]
        return
    assert r.status_code == 400, r.text
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "Bundle.entry[0]" in diagnostics and "Bundle.entry[1]" in diagnostics, diagnostics
    assert count(fhir, "Patient", identifier="urn:mrn|twice-2") == 0


def test_conditional_update_and_delete_in_a_transaction(fhir: Fhir) -> None:
    target = fhir.post("Patient", patient("u-1")).json()
    gone = fhir.post("Patient", patient("d-1")).json()
    p = urn()
    bundle = transaction(
        put("Patient?identifier=urn:mrn|u-1", patient("u-1", active=True), p),
        put("Patient?identifier=urn:mrn|u-new", patient("u-new"), urn()),
        {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|d-1"}},
        post("Observation", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "t"}, "subject": {"reference": p}}, urn()),
    )
    r = fhir.post("", bundle)
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    assert entries[0]["response"]["status"] == "200 OK"
    assert entries[1]["response"]["status"] == "201 Created"
    assert fhir.get(f"Patient/{target['id']}").json()["active"] is True
    assert fhir.get(f"Patient/{gone['id']}").status_code == 410
    oid = entries[3]["response"]["location"].split("/")[1]
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == \
        f"Patient/{target['id']}"


def test_conditional_references(fhir: Fhir) -> None:
    target = fhir.post("Patient", patient("r-1")).json()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
           "subject": {"reference": "Patient?identifier=urn:mrn|r-1"}}
    r = fhir.post("", transaction(post("Observation", obs, urn())))
    assert r.status_code == 200, r.text
    oid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == \
        f"Patient/{target['id']}"
    none = {**obs, "subject": {"reference": "Patient?identifier=urn:mrn|nobody"}}
    r = fhir.post("", transaction(post("Patient", patient("r-2"), urn()),
                                  post("Observation", none, urn())))
    assert r.status_code == 404, r.text
    assert count(fhir, "Patient", identifier="urn:mrn|r-2") == 0
    fhir.post("Patient", patient("r-1"))
    r = fhir.post("", transaction(post("Observation", obs, urn())))
    assert r.status_code == 412
    # identifier systems are usually URLs
    mrn = "http://hospital.example.org/mrn"
    hosp = fhir.post("Patient", {**patient("r-3"), "identifier": [
        {"system": mrn, "value": "r-3"}]}).json()
    by_url = {**obs, "subject": {"reference": f"Patient?identifier={mrn}|r-3"}}
    r = fhir.post("", transaction(post("Observation", by_url, urn())))
    assert r.status_code == 200, r.text
    oid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{hosp['id']}"
    missing = {**obs, "subject": {"reference": f"Patient?identifier={mrn}|nobody"}}
    assert fhir.post("", transaction(post("Observation", missing, urn()))).status_code == 404


def test_conditional_entries_may_not_change_a_resource_another_entry_changes(fhir: Fhir) -> None:
    """http.html#trules: "If any resource identities (including resolved identities from
    conditional update/delete) overlap in steps 1-3, then the transaction SHALL fail"."""
    p = fhir.post("Patient", patient("x-1")).json()
    ops = base64.b64encode(orjson.dumps([{"op": "add", "path": "/active", "value": True}]))
    pairs = [
        ({"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|x-1"}},
         put(f"Patient/{p['id']}", {**p, "active": False})),
        (put("Patient?identifier=urn:mrn|x-1", patient("x-1", gender="male")),
         put(f"Patient/{p['id']}", {**p, "active": False})),
        (put("Patient?identifier=urn:mrn|x-1", patient("x-1", gender="male")),
         put("Patient?identifier=urn:mrn|x-1", patient("x-1", gender="female"))),
        ({"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                       "data": ops.decode()},
          "request": {"method": "PATCH", "url": "Patient?identifier=urn:mrn|x-1"}},
         put(f"Patient/{p['id']}", {**p, "active": False})),
    ]
    by_id = {"request": {"method": "DELETE", "url": f"Patient/{p['id']}"}}
    by_criteria = {"request": {"method": "DELETE", "url": "Patient?identifier=urn:mrn|x-1"}}
    pairs += [
        (by_criteria, by_criteria),
        (by_id, put("Patient?identifier=urn:mrn|x-1", patient("x-1"))),
        (by_criteria, put("Patient?identifier=urn:mrn|x-1", patient("x-1"))),
        (by_id, by_criteria),
        # a conditional create that matches the resource another entry deletes
        (by_id, post("Patient", patient("x-1"), urn(), ifNoneExist="identifier=urn:mrn|x-1")),
    ]
    for first, second in pairs:
        for pair in ((first, second), (second, first)):
            r = fhir.post("", transaction(*pair))
            assert r.status_code == 400, (pair, r.text)
            assert "Bundle.entry[0]" in r.text and "Bundle.entry[1]" in r.text
    now = fhir.get(f"Patient/{p['id']}").json()
    assert now["meta"]["versionId"] == "1" and "active" not in now
    assert count(fhir, "Patient", identifier="urn:mrn|x-1") == 1


def test_a_failing_read_fails_the_transaction(fhir: Fhir) -> None:
    p = fhir.post("Patient", patient("g-1")).json()
    fhir.put(f"Patient/{p['id']}", {**p, "active": True})
    r = fhir.post("", transaction(post("Patient", patient("g-2"), urn()),
                                  {"request": {"method": "GET", "url": "Patient/nobody"}}))
    assert r.status_code == 404, r.text
    assert "Bundle.entry[1]" in r.json()["issue"][0]["diagnostics"]
    assert count(fhir, "Patient", identifier="urn:mrn|g-2") == 0
    r = fhir.post("", transaction(
        post("Patient", patient("g-3"), urn()),
        {"request": {"method": "GET", "url": f"Patient/{p['id']}/_history/1"}},
        {"request": {"method": "GET", "url": f"Patient/{p['id']}/_history/2"}}))
    assert r.status_code == 200, r.text
    versions = [e.get("resource", {}).get("meta", {}).get("versionId")
                for e in r.json()["entry"]]
    assert versions[1:] == ["1", "2"] and "active" not in r.json()["entry"][1]["resource"]
    r = fhir.post("", transaction(
        post("Patient", patient("g-4"), urn()),
        {"request": {"method": "GET", "url": f"Patient/{p['id']}/_history/9"}}))
    assert r.status_code == 404, r.text
    assert count(fhir, "Patient", identifier="urn:mrn|g-4") == 0


def test_reads_and_searches_in_bundles_are_answered_as_alone(fhir: Fhir) -> None:
    """Entries are processed "as if they were an individual interaction": a search entry has
    its includes, total and _summary, a read its _elements, in a transaction or a batch."""
    org = fhir.post("Organization", {"resourceType": "Organization", "name": "Hohhot"}).json()
    p = fhir.post("Patient", patient(
        "s-1", managingOrganization={"reference": f"Organization/{org['id']}"})).json()
    for kind in ("transaction", "batch"):
        r = fhir.post("", transaction(
            {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|s-1"
                                                 "&_include=Patient:organization"}},
            {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|s-1&_summary=count"}},
            {"request": {"method": "GET", "url": f"Patient/{p['id']}?_elements=identifier"}},
            kind=kind))
        assert r.status_code == 200, r.text
        found, counted, read = (e["resource"] for e in r.json()["entry"])
        assert found["total"] == 1, kind
        assert sorted(e["search"]["mode"] for e in found["entry"]) == ["include", "match"], kind
        assert counted["total"] == 1 and "entry" not in counted, kind
        assert set(read) == {"resourceType", "id", "meta", "identifier"}, kind
        # "Empty parameters are not an error" (search.html#errors), in an entry as alone.
        r = fhir.post("", transaction(
            {"request": {"method": "GET",
                         "url": "Patient?identifier=urn:mrn|s-1&_summary=&family=&_count="}},
            kind=kind))
        assert r.status_code == 200, r.text
        found = r.json()["entry"][0]["resource"]
        assert found["total"] == 1 and found["entry"][0]["resource"]["name"], kind
        assert all("_summary" not in link["url"] for link in found["link"]), kind


def test_searches_across_types_and_in_compartments_in_a_transaction(fhir: Fhir) -> None:
    """Searches across types (``?_type=…``) and in a compartment (``Patient/[id]/…``) are
    entries like the others: run last, they see the transaction's writes; history and
    ``metadata`` are still refused in a transaction (a batch takes them)."""
    p = fhir.post("Patient", patient("sc-1")).json()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "sc"},
           "subject": {"reference": f"Patient/{p['id']}"}}
    for kind in ("transaction", "batch"):
        r = fhir.post("", transaction(
            {"request": {"method": "GET", "url": "?_type=Patient,Observation&_id="
                                                 f"{p['id']}"}},
            {"request": {"method": "GET", "url": f"Patient/{p['id']}/Observation?code:text=sc"}},
            {"request": {"method": "GET", "url": f"Patient/{p['id']}/*"}},
            post("Observation", obs, urn()), kind=kind))
        assert r.status_code == 200, r.text
        across, compartment, everything = (e["resource"] for e in r.json()["entry"][:3])
        assert across["total"] == 1 and across["entry"][0]["resource"]["id"] == p["id"], kind
        found = 1 if kind == "transaction" else 2  # a batch runs its POSTs first too
        assert compartment["total"] == found, (kind, compartment)
        assert everything["total"] == found + 1, (kind, everything)
        assert compartment["link"][0]["url"].startswith(
            f"http://testserver/fhir/Patient/{p['id']}/Observation?"), compartment["link"]
    for url in ("Patient/_history", "metadata"):
        r = fhir.post("", transaction({"request": {"method": "GET", "url": url}}))
        assert r.status_code == 400 and "not allowed inside a transaction" in r.text, r.text


def test_the_bundle_requests_prefer_handling_applies_to_its_searches(fhir: Fhir) -> None:
    """Prefer applies to the entries as it applies to the Bundle's request: its return= shapes
    what the writes answer, its handling= how their searches take unknown parameters."""
    search = {"request": {"method": "GET", "url": "Patient?nonsense=x"}}
    strict = {"Prefer": "handling=strict"}
    r = fhir.post("", transaction(search), headers=strict)
    assert r.status_code == 400 and "nonsense" in r.text, r.text
    r = fhir.post("", transaction(search, kind="batch"), headers=strict)
    assert r.json()["entry"][0]["response"]["status"].startswith("400"), r.text
    r = fhir.post("", transaction(search))
    assert r.status_code == 200, r.text


def test_conditional_references_are_resolved_after_the_writes(fhir: Fhir) -> None:
    """http.html#trules: DELETE, POST, PUT/PATCH, GET, then "Resolve any conditional
    references": they see what the transaction deleted and created."""
    gone = fhir.post("Patient", patient("w-1")).json()
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
           "subject": {"reference": "Patient?identifier=urn:mrn|w-1"}}
    r = fhir.post("", transaction(post("Observation", obs, urn()),
                                  {"request": {"method": "DELETE",
                                               "url": f"Patient/{gone['id']}"}}))
    assert r.status_code == 404, r.text
    assert fhir.get(f"Patient/{gone['id']}").status_code == 200
    fresh = {**obs, "subject": {"reference": "Patient?identifier=urn:mrn|w-2"}}
    r = fhir.post("", transaction(post("Observation", fresh, urn()),
                                  post("Patient", patient("w-2"), urn()),
                                  {"request": {"method": "GET", "url": "Observation?subject:"
                                                                       "Patient.identifier="
                                                                       "urn:mrn|w-2"}}))
    assert r.status_code == 200, r.text
    entries = r.json()["entry"]
    oid = entries[0]["response"]["location"].split("/")[1]
    pid = entries[1]["response"]["location"].split("/")[1]
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{pid}"
    assert [e["resource"]["id"] for e in entries[2]["resource"]["entry"]] == [oid]


#: The FHIR base the test client's requests see (http://testserver is TestClient's host).
BASE = "http://testserver/fhir"


def observation(subject: str, **extra: object) -> dict:
    return {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
            "subject": {"reference": subject}, **extra}


def stored(fhir: Fhir, entry: dict) -> dict:
    """The resource a response entry's location names, as stored."""
    return fhir.get(entry["response"]["location"].rsplit("/_history", 1)[0]).json()


@pytest.mark.parametrize("root", [BASE, "http://example.org/fhir"])
def test_relative_references_resolve_against_the_restful_full_url(fhir: Fhir, root: str) -> None:
    """bundle.html §2.36.4.1: a [type]/[id] reference in an entry whose fullUrl is RESTful is
    [root]/[type]/[id], [root] taken from that fullUrl; if an entry has that fullUrl, the
    reference is to it, and is rewritten to the id the server assigns (http.html#trules)."""
    fhir.put("Patient/rel-1", {**patient("unrelated"), "id": "rel-1"})
    r = fhir.post("", transaction(
        post("Observation", {**observation("Patient/rel-1"), "id": "o-rel-1"},
             f"{root}/Observation/o-rel-1"),
        post("Patient", {**patient("rel-new"), "id": "rel-1"}, f"{root}/Patient/rel-1"),
        # not the fullUrl of any entry: left as it is
        post("Observation", {**observation("Patient/rel-elsewhere"), "id": "o-rel-2"},
             f"{root}/Observation/o-rel-2")))
    assert r.status_code == 200, r.text
    obs, pat, other = r.json()["entry"]
    pid = pat["response"]["location"].split("/")[1]
    assert pid != "rel-1"
    assert stored(fhir, obs)["subject"]["reference"] == f"Patient/{pid}"
    assert stored(fhir, other)["subject"]["reference"] == "Patient/rel-elsewhere"
    assert fhir.get("Patient/rel-1").json()["identifier"][0]["value"] == "unrelated"


def test_relative_references_in_urn_entries_resolve_against_the_server_base(fhir: Fhir) -> None:
    """An entry with a urn:uuid fullUrl has no [root] of its own: its relative references are
    relative to the server's base, so Patient/x is the entry whose fullUrl is [base]/Patient/x,
    and not an entry of another server's."""
    r = fhir.post("", transaction(
        post("Observation", observation("Patient/ub-1"), urn()),
        post("Patient", patient("ub-1"), f"{BASE}/Patient/ub-1"),
        post("Observation", observation("Patient/ub-2"), urn()),
        post("Patient", patient("ub-2"), "http://example.org/fhir/Patient/ub-2")))
    assert r.status_code == 200, r.text
    obs1, pat1, obs2, _ = r.json()["entry"]
    pid = pat1["response"]["location"].split("/")[1]
    assert stored(fhir, obs1)["subject"]["reference"] == f"Patient/{pid}"
    assert stored(fhir, obs2)["subject"]["reference"] == "Patient/ub-2"


def test_version_specific_references_to_entries_stay_version_specific(fhir: Fhir) -> None:
    """http.html#trules: "Version-specific references should remain as version-specific
    references after the references have been updated"; bundle.html §2.36.4.1: the version is
    removed before matching fullUrls. The version kept is the one the entry's write makes."""
    existing = fhir.put("Patient/vs-old", {**patient("vs-old"), "id": "vs-old"}).json()
    assert existing["meta"]["versionId"] == "1"
    new_url = "http://example.org/fhir/Patient/vs-new"
    r = fhir.post("", transaction(
        post("Observation", observation(f"{new_url}/_history/1", performer=[
            {"reference": new_url}, {"reference": "Patient/vs-old/_history/1"}]), urn()),
        post("Observation", observation("Patient/vs-new/_history/3"),
             "http://example.org/fhir/Observation/vs-o"),
        post("Patient", patient("vs-new"), new_url),
        put("Patient/vs-old", {**existing, "active": True}, f"{BASE}/Patient/vs-old")))
    assert r.status_code == 200, r.text
    obs, relative, pat, _ = r.json()["entry"]
    pid = pat["response"]["location"].split("/")[1]
    first = stored(fhir, obs)
    assert first["subject"]["reference"] == f"Patient/{pid}/_history/1"
    assert first["performer"][0]["reference"] == f"Patient/{pid}"
    # the PUT makes version 2 of Patient/vs-old: the reference is to what it wrote
    assert first["performer"][1]["reference"] == "Patient/vs-old/_history/2"
    assert stored(fhir, relative)["subject"]["reference"] == f"Patient/{pid}/_history/1"
    assert fhir.get("Patient/vs-old/_history/2").json()["active"] is True


def test_entry_urns_in_criteria_and_searches_stand_for_those_entries(fhir: Fhir) -> None:
    """A urn:uuid that is an entry's fullUrl stands for that entry's resource in the search
    criteria of other entries too (ifNoneExist, a conditional URL, a GET search: "Servers SHALL
    replace all matching links in the bundle", http.html#trules), so that a Bundle of
    conditional creates sent twice makes its resources once."""
    def bundle() -> dict:
        p = urn()
        obs = {"resourceType": "Observation", "status": "final", "code": {"text": "pulse"},
               "subject": {"reference": p}}
        return transaction(  # the Observation first: its criteria wait for the Patient's
            post("Observation", obs, urn(), ifNoneExist=f"subject={p}&code:text=pulse"),
            post("Patient", patient("urn-q-1"), p, ifNoneExist="identifier=urn:mrn|urn-q-1"),
            {"request": {"method": "GET", "url": f"Observation?subject={p},Patient/none"}},
            {"request": {"method": "GET", "url": f"Patient?_id={p}"}})  # an id, for _id
    first = fhir.post("", bundle())
    assert first.status_code == 200, first.text
    statuses = [e["response"]["status"] for e in first.json()["entry"]]
    assert statuses == ["201 Created", "201 Created", "200 OK", "200 OK"], statuses
    assert first.json()["entry"][2]["resource"]["total"] == 1
    assert first.json()["entry"][3]["resource"]["total"] == 1
    again = fhir.post("", bundle())
    assert again.status_code == 200, again.text
    statuses = [e["response"]["status"] for e in again.json()["entry"]]
    assert statuses == ["200 OK"] * 4, statuses
    assert again.json()["entry"][2]["resource"]["total"] == 1
    assert again.json()["entry"][3]["resource"]["total"] == 1
    assert count(fhir, "Patient", identifier="urn:mrn|urn-q-1") == 1
    assert count(fhir, "Observation", **{"code:text": "pulse"}) == 1


def test_a_failing_conditional_reference_names_its_entry(fhir: Fhir) -> None:
    """Like every failing entry, the one holding a conditional reference that matches no or
    several resources is named (the transaction fails: http.html#trules)."""
    fhir.post("Patient", patient("cn-2"))
    fhir.post("Patient", patient("cn-2"))
    for criteria, status in (("urn:mrn|cn-none", 404), ("urn:mrn|cn-2", 412)):
        r = fhir.post("", transaction(
            post("Patient", patient("cn-1"), urn()),
            post("Observation", observation("Patient?identifier=urn:mrn|cn-1"), urn()),
            post("Observation", observation(f"Patient?identifier={criteria}"), urn())))
        assert r.status_code == status, r.text
        issue = r.json()["issue"][0]
        assert issue["diagnostics"].startswith("Bundle.entry[2] (POST Observation): ")
        assert criteria in issue["diagnostics"]
        assert issue["expression"] == ["Bundle.entry[2]"]
    assert count(fhir, "Patient", identifier="urn:mrn|cn-1") == 0


def test_two_conditional_updates_creating_the_same_resource_are_refused(fhir: Fhir) -> None:
    """Both would create the resource their criteria match: the message says so, not that
    their criteria matched something before the transaction's writes."""
    r = fhir.post("", transaction(
        put("Patient?identifier=urn:mrn|cu-1", patient("cu-1", gender="male")),
        put("Patient?identifier=urn:mrn|cu-1", patient("cu-1", gender="female"))))
    assert r.status_code == 409, r.text
    diagnostics = r.json()["issue"][0]["diagnostics"]
    assert "Bundle.entry[0]" in diagnostics and "Bundle.entry[1]" in diagnostics
    assert "before the transaction's writes and" not in diagnostics
    assert "create" in diagnostics
    assert count(fhir, "Patient", identifier="urn:mrn|cu-1") == 0


@pytest.mark.parametrize("full_url, resource_id, url", [
    (f"{BASE}/Patient/fu-a", "fu-b", "Patient/fu-b"),
    ("http://example.org/fhir/Patient/fu-a", "fu-b", "Patient/fu-b"),
    (f"{BASE}/Observation/fu-b", "fu-b", "Patient/fu-b"),
])
def test_a_full_url_disagreeing_with_the_entry_id_is_refused(fhir: Fhir, full_url: str,
                                                             resource_id: str, url: str) -> None:
    """Bundle.entry.fullUrl: "The fullUrl SHALL NOT disagree with the id in the resource"."""
    r = fhir.post("", transaction(
        put(url, {**patient("fu-1"), "id": resource_id}, full_url),
        post("Observation", observation(full_url), urn())))
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert issue["diagnostics"].startswith(f"Bundle.entry[0] (PUT {url}): ")
    assert full_url in issue["diagnostics"]
    assert issue["expression"] == ["Bundle.entry[0].fullUrl"]
    assert count(fhir, "Patient") == 0 and count(fhir, "Observation") == 0
    # a POST's fullUrl names its resource too
    r = fhir.post("", transaction(post("Patient", {**patient("fu-2"), "id": "fu-c"},
                                       f"{BASE}/Patient/fu-d")))
    assert r.status_code == 400, r.text
    # agreeing, or a urn:uuid (a name of its own), is fine
    r = fhir.post("", transaction(put("Patient/fu-b", {**patient("fu-1"), "id": "fu-b"},
                                      f"{BASE}/Patient/fu-b"),
                                  put("Patient/fu-e", {**patient("fu-3"), "id": "fu-e"}, urn())))
    assert r.status_code == 200, r.text


def test_a_reference_to_a_urn_that_is_no_full_url_is_refused(fhir: Fhir) -> None:
    """A urn:uuid or urn:oid means something only inside its Bundle: a reference to one that
    is no entry's fullUrl could never resolve, so the entry holding it is refused."""
    for dangling in (urn(), "urn:oid:1.2.3.4.5"):
        r = fhir.post("", transaction(
            post("Patient", patient("dg-1"), urn()),
            post("Observation", observation(dangling), urn())))
        assert r.status_code == 400, r.text
        issue = r.json()["issue"][0]
        assert issue["diagnostics"].startswith("Bundle.entry[1] (POST Observation): ")
        assert dangling in issue["diagnostics"]
        assert issue["expression"][0].startswith("Bundle.entry[1]")
    assert count(fhir, "Patient", identifier="urn:mrn|dg-1") == 0
    # a uri that is not a reference (an identifier system) may well be a urn:oid
    r = fhir.post("", transaction(post("Patient", {**patient("dg-2"), "identifier": [
        {"system": "urn:oid:2.16.840.1.113883.4.1", "value": "123"}]})))
    assert r.status_code == 200, r.text


def test_conditional_reads_in_bundles_and_prefer_applies_to_writes(fhir: Fhir) -> None:
    p = fhir.post("Patient", patient("cr-1")).json()
    read = {"method": "GET", "url": f"Patient/{p['id']}"}
    for kind in ("transaction", "batch"):
        r = fhir.post("", transaction(
            {"request": {**read, "ifNoneMatch": 'W/"1"'}},
            {"request": {**read, "ifModifiedSince": "2999-01-01T00:00:00Z"}},
            {"request": {**read, "ifModifiedSince": "2000-01-01T00:00:00Z"}},
            {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|cr-1"}},
            kind=kind), headers={"Prefer": "return=minimal"})
        assert r.status_code == 200, r.text
        statuses = [e["response"]["status"] for e in r.json()["entry"]]
        assert statuses == ["304 Not Modified", "304 Not Modified", "200 OK", "200 OK"], kind
        # return=minimal is for writes: a read or a search still answers with its result
        third, fourth = r.json()["entry"][2:]
        assert third["resource"]["id"] == p["id"], kind
        assert fourth["resource"]["total"] == 1, kind
    bad = transaction({"request": {**read, "ifModifiedSince": "soon"}})
    assert fhir.post("", bad).status_code == 400


def test_patch_entry_and_if_match(fhir: Fhir) -> None:
    p = fhir.post("Patient", patient("p-1")).json()
    ops = base64.b64encode(orjson.dumps([{"op": "add", "path": "/active", "value": True}]))
    patch_entry = {"resource": {"resourceType": "Binary", "contentType": "application/json-patch+json",
                                "data": ops.decode()},
                   "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}}
    r = fhir.post("", transaction(patch_entry))
    assert r.status_code == 200, r.text
    assert fhir.get(f"Patient/{p['id']}").json()["active"] is True
    stale = transaction(post("Patient", patient("p-2"), urn()),
                        put(f"Patient/{p['id']}", {**p, "gender": "male"}, ifMatch='W/"1"'))
    r = fhir.post("", stale)
    assert r.status_code == 412, r.text
    assert count(fhir, "Patient", identifier="urn:mrn|p-2") == 0


def test_references_to_a_conditional_patch_entry_point_at_what_it_patched(fhir: Fhir) -> None:
    p = fhir.post("Patient", patient("cp-1")).json()
    ops = base64.b64encode(orjson.dumps([{"op": "add", "path": "/active", "value": True}]))

    def patch_and_refer(mrn: str) -> httpx.Response:
        target = urn()
        return fhir.post("", transaction(
            {"fullUrl": target, "resource": {"resourceType": "Binary", "data": ops.decode(),
                                             "contentType": "application/json-patch+json"},
             "request": {"method": "PATCH", "url": f"Patient?identifier=urn:mrn|{mrn}"}},
            post("Observation", {"resourceType": "Observation", "status": "final",
                                 "code": {"text": "t"}, "subject": {"reference": target}},
                 urn())))

    r = patch_and_refer("cp-1")
    assert r.status_code == 200, r.text
    oid = r.json()["entry"][1]["response"]["location"].split("/")[1]
    assert fhir.get(f"Observation/{oid}").json()["subject"]["reference"] == f"Patient/{p['id']}"
    assert fhir.get(f"Patient/{p['id']}").json()["active"] is True
    r = patch_and_refer("none")  # matching nothing, it fails the transaction
    assert r.status_code == 404, r.text
    assert count(fhir, "Observation") == 1


def test_malformed_transactions(fhir: Fhir) -> None:
    assert fhir.post("", {"resourceType": "Patient"}).status_code == 400
    assert fhir.post("", {"resourceType": "Bundle", "type": "collection"}).status_code == 400
    r = fhir.post("", transaction({"resource": patient("m-1")}))
    assert r.status_code == 400 and "request" in r.json()["issue"][0]["diagnostics"]
    r = fhir.post("", transaction(post("Spaceship", {"resourceType": "Spaceship"})))
    assert r.status_code == 404
    same = transaction(put("Patient/dup", {**patient("m-2"), "id": "dup"}),
                       put("Patient/dup", {**patient("m-3"), "id": "dup"}))
    assert fhir.post("", same).status_code == 400
    u = urn()
    twice = transaction(post("Patient", patient("m-4"), u), post("Patient", patient("m-5"), u))
    assert fhir.post("", twice).status_code == 400
    assert count(fhir, "Patient") == 0
    r = fhir.post("", {"resourceType": "Bundle", "type": "transaction", "entry": {}})
    assert r.status_code == 400 and "Bundle.entry" in r.json()["issue"][0]["expression"]
    empty = fhir.post("", transaction())
    assert empty.status_code == 200 and empty.json()["entry"] == []


def test_the_bundle_itself_is_validated(fhir: Fhir) -> None:
    """The Bundle around the entries' resources must be a valid R4 Bundle: unknown elements,
    wrong datatypes and codes outside the request's value sets are refused, naming where (the
    resources are validated as their entries are processed)."""
    r = fhir.post("", {**transaction(post("Patient", patient("e-1"))), "colour": "red"})
    assert r.status_code == 400 and r.json()["issue"][0]["expression"] == ["Bundle.colour"]
    for kind in ("transaction", "batch"):
        r = fhir.post("", {**transaction(kind=kind), "total": "3"})
        assert r.status_code == 400 and "Bundle.total" in r.text, r.text
        # bdl-1: a total only in a searchset or history
        r = fhir.post("", {**transaction(kind=kind), "total": 3})
        assert r.status_code == 400 and "bdl-1" in r.text, r.text
    # bdl-2: search only in a searchset; bdl-4: response only in a response or history;
    # bdl-8: a fullUrl is no version-specific reference
    for extra in ({"search": {"mode": "match"}}, {"response": {"status": "201"}},
                  {"fullUrl": "http://example.org/fhir/Patient/x/_history/1"}):
        r = fhir.post("", transaction({**post("Patient", patient("e-9")), **extra}))
        assert r.status_code == 400 and "Bundle.entry[0]" in r.text, (extra, r.text)
    bad = post("Patient", patient("e-2"), ifNoneExist="identifier=urn:mrn|e-2")
    bad["request"]["colour"] = "red"
    slow = {"request": {"method": "GET", "url": "Patient", "ifModifiedSince": "yesterday"}}
    r = fhir.post("", transaction(post("Patient", patient("e-3")), bad))
    assert r.status_code == 400, r.text
    issue = r.json()["issue"][0]
    assert "Bundle.entry[1]" in issue["diagnostics"], issue
    assert issue["expression"] == ["Bundle.entry[1].request.colour"], issue
    assert count(fhir, "Patient") == 0
    # A batch keeps its valid entries; each malformed one fails on its own.
    r = fhir.post("", transaction(post("Patient", patient("e-3")), bad, slow, kind="batch"))
    assert r.status_code == 200, r.text
    statuses = [e["response"]["status"] for e in r.json()["entry"]]
    assert statuses[0] == "201 Created" and statuses[1:] == ["400 Bad Request"] * 2, statuses
    outcomes = [e["response"]["outcome"]["issue"][0] for e in r.json()["entry"][1:]]
    assert outcomes[0]["expression"] == ["Bundle.entry[1].request.colour"], outcomes
    assert outcomes[1]["expression"] == ["Bundle.entry[2].request.ifModifiedSince"], outcomes
    assert count(fhir, "Patient") == 1


def test_batch_keeps_the_valid_entries(fhir: Fhir) -> None:
    existing = fhir.post("Patient", patient("b-0")).json()
    bundle = transaction(
        post("Patient", patient("b-1")),
        post("Patient", {**patient("b-2"), "gender": "robot"}),
        {"request": {"method": "GET", "url": f"Patient/{existing['id']}"}},
        {"request": {"method": "GET", "url": "Patient/missing"}},
        {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|b-0"}},
        put(f"Patient/{existing['id']}", {**existing, "active": True}),
        kind="batch")
    r = fhir.post("", bundle)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in out["entry"]]
    assert statuses[0] == "201 Created"
    assert statuses[1].startswith("422")
    assert out["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"
    assert statuses[2] == "200 OK" and out["entry"][2]["resource"]["id"] == existing["id"]
    assert statuses[3].startswith("404")
    assert out["entry"][4]["resource"]["type"] == "searchset"
    assert len(out["entry"][4]["resource"]["entry"]) == 1
    assert statuses[5] == "200 OK"
    assert count(fhir, "Patient", identifier="urn:mrn|b-1") == 1
    assert count(fhir, "Patient", identifier="urn:mrn|b-2") == 0


def test_batch_entries_may_not_refer_to_each_other(fhir: Fhir) -> None:
    """http.html#brules: references between the entries of a batch are non-conformant; the
    entry that holds one is refused (it would be stored pointing nowhere), the others kept."""
    p = urn()
    r = fhir.post("", transaction(
        post("Patient", patient("bb-1"), p),
        post("Observation", {"resourceType": "Observation", "status": "final",
                             "code": {"text": "t"}, "subject": {"reference": p}}, urn()),
        kind="batch"))
    assert r.status_code == 200, r.text
    first, second = r.json()["entry"]
    assert first["response"]["status"] == "201 Created"
    assert second["response"]["status"].startswith("400")
    assert "Bundle.entry[0]" in second["response"]["outcome"]["issue"][0]["diagnostics"]
    assert count(fhir, "Observation") == 0


def test_batch_entries_run_in_the_transaction_order_and_one_resource_is_changed_once(
        fhir: Fhir) -> None:
    """http.html#brules: "servers execute the batch in the same order as that specified below
    for transactions" (DELETE, POST, PUT/PATCH, GET), and there "SHALL be no interdependencies
    between the different entries in the Bundle that cause change on the server ... Servers
    SHOULD validate that this is the case": of two entries changing one resource, the later
    is refused."""
    gone = fhir.put("Patient/bo-1", {**patient("bo-1"), "id": "bo-1"}).json()
    kept = fhir.put("Patient/bo-2", {**patient("bo-2"), "id": "bo-2"}).json()
    r = fhir.post("", transaction(
        {"request": {"method": "GET", "url": "Patient/bo-1"}},
        {"request": {"method": "GET", "url": "Patient?identifier=urn:mrn|bo-3"}},
        put("Patient/bo-2", {**kept, "active": True}),
        post("Patient", patient("bo-3")),
        {"request": {"method": "DELETE", "url": "Patient/bo-1"}},
        put("Patient/bo-2", {**kept, "active": False}),
        {"request": {"method": "DELETE", "url": f"Patient/{gone['id']}"}},
        kind="batch"))
    assert r.status_code == 200, r.text
    out = [e["response"] for e in r.json()["entry"]]
    assert out[0]["status"].startswith("410")  # the GET ran after the DELETE
    assert len(r.json()["entry"][1]["resource"]["entry"]) == 1  # and the search after the POST
    assert out[2]["status"] == "200 OK" and out[3]["status"] == "201 Created"
    assert out[4]["status"] == "200 OK"
    for later, earlier in ((5, 2), (6, 4)):
        assert out[later]["status"].startswith("400"), out[later]
        assert f"Bundle.entry[{earlier}]" in out[later]["outcome"]["issue"][0]["diagnostics"]
    assert fhir.get("Patient/bo-2").json()["active"] is True
    assert fhir.get("Patient/bo-1/_history").json()["total"] == 2  # deleted once


def history_bundle(base: str) -> dict:
    """A history as GET [base]/_history gives it, newest first: h1 created, h2 created, h1
    updated, h2 deleted, h1 updated again."""
    def entry(method: str, id_: str, family: str | None, status: str) -> dict:
        e: dict = {"fullUrl": f"{base}/Patient/{id_}",
                   "request": {"method": method, "url": "Patient" if method == "POST"
                               else f"Patient/{id_}"},
                   "response": {"status": status}}
        if family is not None:
            e["resource"] = {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}
        return e

    return {"resourceType": "Bundle", "type": "history", "total": 5, "entry": [
        entry("PUT", "hb-1", "Third", "200 OK"), entry("DELETE", "hb-2", None, "204 No Content"),
        entry("PUT", "hb-1", "Second", "200 OK"), entry("POST", "hb-2", "Other", "201 Created"),
        entry("POST", "hb-1", "First", "201 Created")]}


def test_a_history_bundle_is_replayed_oldest_first(fhir: Fhir) -> None:
    """http.html#transaction: "servers SHOULD accept a history Bundle" (as a batch or a
    transaction): its changes are made again, oldest first, the resources keeping their ids."""
    r = fhir.post("", history_bundle("http://elsewhere.example/fhir"))
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["type"] == "batch-response"
    assert [e["response"]["status"] for e in out["entry"]] == [
        "200 OK", "200 OK", "200 OK", "201 Created", "201 Created"]
    current = fhir.get("Patient/hb-1").json()
    assert current["name"] == [{"family": "Third"}] and current["meta"]["versionId"] == "3"
    assert fhir.get("Patient/hb-2").status_code == 410
    # Replayed again, a resource already as its history ends is left alone: its history is
    # not written a second time.
    again = fhir.post("", history_bundle("http://elsewhere.example/fhir"))
    assert again.status_code == 200, again.text
    assert [e["response"]["status"] for e in again.json()["entry"]] == ["200 OK"] * 5
    assert "already" in again.json()["entry"][0]["response"]["outcome"]["issue"][0][
        "diagnostics"]
    assert fhir.get("Patient/hb-1").json()["meta"]["versionId"] == "3"
    assert len(fhir.get("Patient/hb-2/_history").json()["entry"]) == 2


def test_head_entries_and_prefer_operation_outcome(fhir: Fhir) -> None:
    p = fhir.post("Patient", patient("h-1")).json()
    for kind in ("batch", "transaction"):
        r = fhir.post("", transaction(
            {"request": {"method": "HEAD", "url": f"Patient/{p['id']}"}},
            post("Patient", patient(f"h-{kind}"), urn()), kind=kind),
            headers={"Prefer": "return=OperationOutcome"})
        assert r.status_code == 200, r.text
        head, created = r.json()["entry"]
        assert "resource" not in head and head["response"]["status"] == "200 OK", kind
        assert head["response"]["etag"] == 'W/"1"'
        assert "resource" not in created, kind
        assert created["response"]["outcome"]["resourceType"] == "OperationOutcome", kind


def test_conditional_references_outside_a_transaction_are_refused(fhir: Fhir) -> None:
    fhir.post("Patient", patient("cx-1"))
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "t"},
           "subject": {"reference": "Patient?identifier=urn:mrn|cx-1"}}
    r = fhir.post("Observation", obs)
    assert r.status_code == 400 and "transaction" in r.json()["issue"][0]["diagnostics"]
    r = fhir.post("", transaction(post("Observation", obs), kind="batch"))
    assert r.json()["entry"][0]["response"]["status"].startswith("400")
    assert count(fhir, "Observation") == 0


def _json_patch(ops: list[dict]) -> dict:
    return {"resourceType": "Binary", "contentType": "application/json-patch+json",
            "data": base64.b64encode(orjson.dumps(ops)).decode()}


def test_patch_values_are_resolved_like_resources(fhir: Fhir) -> None:
    """The references a PATCH entry brings (in its operations' values) are rewritten from
    fullUrls and resolved when conditional, as a resource's are; outside a transaction a
    conditional one is refused."""
    p = fhir.post("Patient", patient("pv-1")).json()
    fhir.post("Organization", {"resourceType": "Organization", "name": "Hohhot",
                               "identifier": [{"system": "urn:org", "value": "hh"}]})
    o = urn()
    r = fhir.post("", transaction(
        post("Organization", {"resourceType": "Organization", "name": "Tabriz"}, o),
        {"resource": _json_patch([
            {"op": "add", "path": "/managingOrganization", "value": {"reference": o}},
            {"op": "add", "path": "/generalPractitioner",
             "value": [{"reference": "Organization?identifier=urn:org|hh"}]}]),
         "request": {"method": "PATCH", "url": f"Patient/{p['id']}"}}))
    assert r.status_code == 200, r.text
    oid = r.json()["entry"][0]["response"]["location"].split("/")[1]
    now = fhir.get(f"Patient/{p['id']}").json()
    assert now["managingOrganization"]["reference"] == f"Organization/{oid}"
    hh = fhir.get("Organization", params={"identifier": "urn:org|hh"}).json()["entry"][0]
    assert now["generalPractitioner"][0]["reference"] == f"Organization/{hh['resource']['id']}"
    r = fhir.request("PATCH", f"Patient/{p['id']}", content=orjson.dumps([
        {"op": "add", "path": "/managingOrganization",
         "value": {"reference": "Organization?identifier=urn:org|hh"}}]),
        headers={"Content-Type": "application/json-patch+json"})
    assert r.status_code == 400, r.text
    # a conditional patch that matched nothing before may not land on a resource just created
    r = fhir.post("", transaction(
        post("Patient", patient("pv-new"), urn()),
        {"resource": _json_patch([{"op": "add", "path": "/active", "value": True}]),
         "request": {"method": "PATCH", "url": "Patient?identifier=urn:mrn|pv-new"}}))
    assert r.status_code in (404, 409), r.text
    assert count(fhir, "Patient", identifier="urn:mrn|pv-new") == 0


def test_bad_result_parameters_in_entries_are_refused_before_writing(fhir: Fhir) -> None:
    r = fhir.post("", transaction(post("Patient?_summary=bogus", patient("bp-1"))))
    assert r.status_code == 400, r.text
    r = fhir.post("", transaction(post("Patient", patient("bp-2")),
                                  {"request": {"method": "GET", "url": "Patient?_summary=bogus"}}))
    assert r.status_code == 400, r.text
    assert count(fhir, "Patient", identifier="urn:mrn|bp-1") == 0
    assert count(fhir, "Patient", identifier="urn:mrn|bp-2") == 0
    p = fhir.post("Patient", patient("bp-3")).json()
    r = fhir.post("", transaction(
        post("Patient", patient("bp-4")),
        {"request": {"method": "GET", "url": f"Patient/{p['id']}/_history/99999999999999999999"}},
        kind="batch"))
    assert r.status_code == 200, r.text
    assert [e["response"]["status"][:3] for e in r.json()["entry"]] == ["201", "404"]


def test_transaction_needs_the_scopes_of_every_entry(fhir: Fhir, settings) -> None:  # type: ignore[no-untyped-def]
    creator = issue_token(settings, "system/Patient.c")
    r = fhir.post("", transaction(post("Patient", patient("s-1")),
                                  post("Observation", {"resourceType": "Observation",
                                                       "status": "final", "code": {"text": "t"}})),
                  token=creator)
    assert r.status_code == 403
    assert count(fhir, "Patient", identifier="urn:mrn|s-1") == 0


@pytest.mark.slow
def test_concurrent_transactions_never_interleave(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "2")
    token = issue_token(Settings(data_dir=server.data_dir))
    h = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}
    base = server.base + "/fhir"
    for pid in ("A", "B"):
        httpx.put(f"{base}/Patient/{pid}", json={**patient(pid), "id": pid,
                                                 "multipleBirthInteger": 0}, headers=h)
    committed = []

    def worker() -> None:
        with httpx.Client(headers=h, timeout=60) as c:
            for _ in range(8):
                a, b = (c.get(f"{base}/Patient/{x}").json() for x in ("A", "B"))
                bundle = transaction(
                    put("Patient/A", {**a, "multipleBirthInteger": a["multipleBirthInteger"] + 1},
                        ifMatch=f'W/"{a["meta"]["versionId"]}"'),
                    put("Patient/B", {**b, "multipleBirthInteger": b["multipleBirthInteger"] + 1},
                        ifMatch=f'W/"{b["meta"]["versionId"]}"'))
                r = c.post(base, json=bundle)
                assert r.status_code in (200, 412), r.text
                if r.status_code == 200:
                    committed.append(1)

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    a, b = (httpx.get(f"{base}/Patient/{x}", headers=h).json() for x in ("A", "B"))
    assert a["multipleBirthInteger"] == b["multipleBirthInteger"] == len(committed) > 0
    assert a["meta"]["versionId"] == b["meta"]["versionId"] == str(len(committed) + 1)


CRASH_SCRIPT = """
import os, signal, sys
from pathlib import Path
from server.storage.sqlite import SqliteStore
from server.search.index import extract

store = SqliteStore(Path(sys.argv[1]))

def fn(tx):
    for i in range(2000):
        r = {"resourceType": "Patient", "identifier": [{"system": "urn:crash", "value": str(i)}]}
        tx.write("Patient", f"crash-{i}", r, extract(r), "POST")
        if i == 1500:
            os.kill(os.getpid(), signal.SIGKILL)  # dies in the middle of the transaction

store.run_sync(fn)
"""


def test_a_crash_in_the_middle_of_a_transaction_leaves_nothing(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from server.storage.sqlite import SqliteStore

    db = tmp_path / "crash.db"
    SqliteStore(db).close_sync()
    proc = subprocess.run([sys.executable, "-c", CRASH_SCRIPT, str(db)], capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    store = SqliteStore(db)
    try:
        assert store.read_sync("Patient", "crash-0") is None
        assert store.read_sync("Patient", "crash-1500") is None
        rows = store._query("SELECT count(*) FROM resource", ())
        assert rows[0][0] == 0
        assert store._query("SELECT count(*) FROM idx_token", ())[0][0] == 0
    finally:
        store.close_sync()


@pytest.mark.slow
def test_kill_9_during_a_big_transaction_is_all_or_nothing(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "1")
    token = issue_token(Settings(data_dir=server.data_dir))
    h = {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON}
    n = 1500
    bundle = transaction(*[post("Patient", patient(f"k-{i}"), urn()) for i in range(n)])
    body = orjson.dumps(bundle)
    outcome: dict = {}

    def send() -> None:
        try:
            outcome["status"] = httpx.post(server.base + "/fhir", content=body, headers=h,
                                           timeout=120).status_code
        except httpx.HTTPError:
            outcome["status"] = None

    t = threading.Thread(target=send)
    t.start()
    time.sleep(0.5)
    server.stop(signal.SIGKILL)
    t.join()
    again = start_server("--workers", "1", data_dir=server.data_dir)
    total = httpx.get(again.base + "/fhir/Patient", params={"_summary": "count"},
                      headers=h).json()["total"]
    assert total in (0, n)
    if outcome["status"] == 200:
        assert total == n

"""Searches that follow references: chaining, reverse chaining (``_has``), ``_include`` and
``_revinclude``, compartments and searches across types (search.html#chaining, #has, #include,
#revinclude; compartmentdefinition.html; http.html#search)."""

from __future__ import annotations

from typing import Any

import pytest

from server.fhir.structures import structures
from tests.conftest import Fhir
from tests.test_search import (
    LOINC,
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

FOREIGN = "http://other.example.org/fhir"


@pytest.fixture
def network(fhir: Fhir) -> Fhir:
    put_all(
        fhir,
        {"resourceType": "Organization", "id": "tabriz", "name": "Tabriz University Hospital"},
        {"resourceType": "Organization", "id": "hohhot", "name": "呼和浩特第一医院",
         "partOf": {"reference": "Organization/tabriz"}},
        {"resourceType": "Practitioner", "id": "rahimi", "name": [{"family": "Rahimi"}]},
        {"resourceType": "Practitioner", "id": "li", "name": [{"family": "Li", "given": ["Wei"]}]},
        patient("p1", name=[{"family": "Chalmers", "given": ["Peter"]}],
                managingOrganization={"reference": "Organization/tabriz"},
                generalPractitioner=[{"reference": "Practitioner/rahimi"}]),
        patient("p2", name=[{"family": "Li", "given": ["Zoe"]}],
                managingOrganization={"reference": "Organization/hohhot"},
                generalPractitioner=[{"reference": "Practitioner/li"}]),
        patient("p3", name=[{"family": "Pan", "given": ["Peter"]}]),
        {"resourceType": "Location", "id": "peterhouse", "name": "Peterhouse ward"},
        {"resourceType": "Group", "id": "g1", "type": "person", "actual": True},
        observation("o1", subject={"reference": "Patient/p1"},
                    code={"coding": [{"system": LOINC, "code": "29463-7"}]}),
        observation("o2", subject={"reference": "Patient/p2"},
                    code={"coding": [{"system": LOINC, "code": "8302-2"}]}),
        observation("o3", subject={"reference": "Group/g1"},
                    code={"coding": [{"system": LOINC, "code": "29463-7"}]}),
        observation("o4", subject={"reference": "Patient/p3"},
                    code={"coding": [{"system": LOINC, "code": "29463-7"}]}),
        observation("o5", subject={"reference": f"{FOREIGN}/Patient/p1"},
                    code={"coding": [{"system": LOINC, "code": "8302-2"}]}),
        observation("o6", subject={"reference": "Location/peterhouse"}),
        {"resourceType": "Encounter", "id": "e1", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
         "subject": {"reference": "Patient/p1"}},
        {"resourceType": "Provenance", "id": "prov1", "target": [{"reference": "Observation/o1"}],
         "recorded": "2024-01-01T10:00:00Z",
         "agent": [{"who": {"reference": "Practitioner/rahimi"}}]},
    )
    return fhir


# -- chaining ------------------------------------------------------------------------------------

def test_chain_with_explicit_and_implied_target_type(network: Fhir) -> None:
    assert found(network, "Observation", {"subject:Patient.name": "peter"}) == {"o1", "o4"}
    assert found(network, "Observation", {"patient.name": "peter"}) == {"o1", "o4"}
    # subject may point at a Patient or a Location, which both have "name".
    assert found(network, "Observation", {"subject.name": "peter"}) == {"o1", "o4", "o6"}
    assert found(network, "Observation", {"subject:Location.name": "peter"}) == {"o6"}
    assert found(network, "Observation", {"subject:Patient._id": "p2"}) == {"o2"}
    assert found(network, "Observation", {"subject:Patient.name": "peter,zoe"}) == {
        "o1", "o2", "o4"}
    assert found(network, "Observation", [("subject:Patient.name", "peter"),
                                          ("subject:Patient.family", "pan")]) == {"o4"}
    assert found(network, "Observation", [("patient.name", "peter"), ("code", "29463-7")]) == {
        "o1", "o4"}


def test_multi_level_chains(network: Fhir) -> None:
    assert found(network, "Observation", {"subject:Patient.organization.name": "tabriz"}) == {
        "o1"}
    assert found(network, "Observation", {"subject:Patient.organization.name": "呼和"}) == {"o2"}
    assert found(network, "Observation", {"patient.general-practitioner.name": "li"}) == {"o2"}
    assert found(network, "Observation", {
        "patient.organization.partof.name": "tabriz"}) == {"o2"}
    assert found(network, "Encounter", {"subject:Patient.general-practitioner:Practitioner."
                                        "family": "rahimi"}) == {"e1"}


def test_chains_look_inside_contained_resources(fhir: Fhir) -> None:
    """search.html#contained: "A chained condition will be evaluated inside contained
    resources": MedicationRequest?medication.ingredient-code=abc finds the request whose
    Medication is contained, and a contained resource is never a match of its own."""
    ingredient = {"ingredient": [{"itemCodeableConcept": {"coding": [
        {"system": "http://example.org/drugs", "code": "abc"}]}}]}
    put_all(fhir,
            {"resourceType": "Medication", "id": "m2", **ingredient},
            {"resourceType": "MedicationRequest", "id": "inside", "status": "active",
             "intent": "order", "subject": {"reference": "Patient/p1"},
             "contained": [{"resourceType": "Medication", "id": "m1", **ingredient}],
             "medicationReference": {"reference": "#m1"}},
            {"resourceType": "MedicationRequest", "id": "outside", "status": "active",
             "intent": "order", "subject": {"reference": "Patient/p1"},
             "medicationReference": {"reference": "Medication/m2"}},
            {"resourceType": "MedicationRequest", "id": "other", "status": "active",
             "intent": "order", "subject": {"reference": "Patient/p1"},
             "contained": [{"resourceType": "Medication", "id": "m3", "ingredient": [
                 {"itemCodeableConcept": {"text": "xyz"}}]}],
             "medicationReference": {"reference": "#m3"}},
            {**observation("inner-subject", subject={"reference": "#pt"}),
             "contained": [{"resourceType": "Patient", "id": "pt",
                            "name": [{"family": "Zyzzyva"}], "gender": "other"}]})
    assert found(fhir, "MedicationRequest", {"medication.ingredient-code": "abc"}) == {
        "inside", "outside"}
    assert found(fhir, "MedicationRequest", {
        "medication.ingredient-code": "http://example.org/drugs|abc"}) == {"inside", "outside"}
    assert found(fhir, "MedicationRequest", {"medication.ingredient-code:text": "xyz"}) == {
        "other"}
    assert found(fhir, "Observation", {"subject:Patient.name": "zyzz"}) == {"inner-subject"}
    assert found(fhir, "Observation", {"patient.gender": "other"}) == {"inner-subject"}
    assert found(fhir, "Observation", {"subject:Patient.gender:not": "other",
                                       "_id": "inner-subject"}) == set()
    assert found(fhir, "Patient", {"name": "zyzz"}) == set()  # contained: not a match itself
    assert found(fhir, "Medication", {"ingredient-code": "abc"}) == {"m2"}
    assert found(fhir, "Patient", {"_has:Observation:subject:code": "x"}) == set()


def test_a_chain_reads_the_contained_resource_its_reference_points_at(fhir: Fhir) -> None:
    """Only the contained resource the chained parameter points at, whatever else is contained;
    whichever clause drives the search; with modifiers, and further links."""
    put_all(fhir,
            {"resourceType": "Practitioner", "id": "gp", "name": [{"family": "Doctor"}]},
            {**observation("two", subject={"reference": "#pa"},
                           performer=[{"reference": "#pb"}]),
             "identifier": [{"system": "urn:o", "value": "two"}],
             "contained": [{"resourceType": "Patient", "id": "pa", "name": [{"family": "Alpha"}],
                            "generalPractitioner": [{"reference": "Practitioner/gp"}]},
                           {"resourceType": "Patient", "id": "pb", "name": [{"family": "Beta"}],
                            "gender": "male"}]},
            {**observation("group", subject={"reference": "#g"},
                           performer=[{"reference": "#pc"}]),
             "contained": [{"resourceType": "Group", "id": "g", "type": "person",
                            "actual": True, "name": "Gamma"},
                           {"resourceType": "Patient", "id": "pc",
                            "name": [{"family": "Gamma"}]}]})
    assert found(fhir, "Observation", {"subject:Patient.name": "alpha"}) == {"two"}
    assert found(fhir, "Observation", {"subject:Patient.name": "beta"}) == set()
    assert found(fhir, "Observation", {"performer:Patient.name": "beta"}) == {"two"}
    assert found(fhir, "Observation", {"subject:Patient.name": "gamma"}) == set()
    assert found(fhir, "Observation", {"subject:Group.type": "person"}) == {"group"}
    # Driven by another clause, ANDed with another chain
    assert found(fhir, "Observation", {"_id": "two", "subject:Patient.name": "alpha"}) == {"two"}
    assert found(fhir, "Observation", {"identifier": "urn:o|two",
                                       "subject:Patient.name": "alpha"}) == {"two"}
    assert found(fhir, "Observation", [("subject:Patient.name", "alpha"),
                                       ("performer:Patient.gender", "male")]) == {"two"}
    # Modifiers inside the chain: the referenced contained Patient's own values
    assert "two" in found(fhir, "Observation", {"subject:Patient.gender:missing": "true"})
    assert "two" not in found(fhir, "Observation",
                              {"performer:Patient.gender:missing": "true"})
    assert "two" in found(fhir, "Observation", {"subject:Patient.gender:not": "male"})
    assert "two" not in found(fhir, "Observation", {"performer:Patient.gender:not": "male"})
    # On from the contained Patient to a resource of the server
    assert found(fhir, "Observation", {
        "subject:Patient.general-practitioner:Practitioner.name": "doctor"}) == {"two"}
    # A conditional create finds the resource by its contained subject
    r = fhir.post("Observation", observation("dup", subject={"reference": "Patient/x"}),
                  headers={"If-None-Exist": "identifier=urn:o|two&subject:Patient.name=alpha"})
    assert r.status_code == 200, r.text


def test_chains_and_has_are_limited_to_three_links(fhir: Fhir) -> None:
    """Deeper ones are refused with 400 naming the parameter (never a server error)."""
    put_all(fhir, *({"resourceType": "Organization", "id": f"o{i}", "name": f"Org {i}",
                     **({"partOf": {"reference": f"Organization/o{i - 1}"}} if i else {})}
                    for i in range(5)))
    assert found(fhir, "Organization", {"partof.partof.partof.name": "org 0"}) == {"o3"}
    deep = "partof.partof.partof.partof.name"
    body = refused(fhir, "Organization", {deep: "org 0"}, deep)
    assert "3 links" in body["issue"][0]["diagnostics"]
    assert f"search parameter {deep}:" in body["issue"][0]["diagnostics"]
    has = "_has:Organization:partof:" * 3 + "_id"
    assert found(fhir, "Organization", {has: "o3"}) == {"o0"}
    deeper = "_has:Organization:partof:" * 4 + "_id"
    body = refused(fhir, "Organization", {deeper: "o4"}, deeper)
    assert f"search parameter {deeper}:" in body["issue"][0]["diagnostics"]


def test_chains_skip_deleted_and_foreign_targets(network: Fhir) -> None:
    # o5 points at Patient/p1 on another server: it is not about our p1.
    assert found(network, "Observation", {"patient.family": "chalmers"}) == {"o1"}
    assert network.delete("Patient/p3").status_code in (200, 204)
    assert found(network, "Observation", {"patient.name": "peter"}) == {"o1"}


def test_bad_chains(network: Fhir) -> None:
    refused(network, "Observation", {"code.name": "x"}, "code.name")  # not a reference
    refused(network, "Observation", {"subject:Medication.code": "x"}, "subject:Medication.code")
    refused(network, "Observation", {"patient.birthdate": "notadate"}, "patient.birthdate")
    refused(network, "Observation", {"patient.nonsense": "x"}, "patient.nonsense",
            headers={"Prefer": "handling=strict"})
    bundle = search(network, "Observation", {"patient.nonsense": "x"})
    assert ids(bundle) and set(ids(bundle)) >= {"o1", "o2"}
    outcome = entries(bundle, "outcome")[0]["resource"]
    assert outcome["issue"][0]["expression"] == ["patient.nonsense"]


# -- reverse chaining ----------------------------------------------------------------------------

def test_has(network: Fhir) -> None:
    assert found(network, "Patient", {"_has:Observation:patient:code": "29463-7"}) == {
        "p1", "p3"}
    assert found(network, "Patient", {"_has:Observation:subject:code": "8302-2"}) == {"p2"}
    assert found(network, "Group", {"_has:Observation:subject:code": "29463-7"}) == {"g1"}
    assert found(network, "Practitioner", {"_has:Patient:general-practitioner:name": "peter"}
                 ) == {"rahimi"}
    assert found(network, "Patient", [("_has:Observation:patient:code", "29463-7"),
                                      ("name", "pan")]) == {"p3"}
    # nested: patients with an observation that a Provenance by Dr Rahimi targets
    assert found(network, "Patient", {
        "_has:Observation:patient:_has:Provenance:target:agent": "Practitioner/rahimi"}) == {"p1"}
    assert found(network, "Patient", {
        "_has:Observation:patient:_has:Provenance:target:agent": "Practitioner/li"}) == set()


def test_has_ignores_deleted_and_foreign_sources(network: Fhir) -> None:
    # o5 (about another server's p1) does not make our p1 match.
    assert found(network, "Patient", {"_has:Observation:patient:code": "8302-2"}) == {"p2"}
    assert network.delete("Observation/o4").status_code in (200, 204)
    assert found(network, "Patient", {"_has:Observation:patient:code": "29463-7"}) == {"p1"}


def test_bad_has(network: Fhir) -> None:
    refused(network, "Patient", {"_has:Observation:code:code": "x"}, "_has:Observation:code:code")
    refused(network, "Patient", {"_has:Nonsense:patient:code": "x"}, "_has:Nonsense:patient:code")
    refused(network, "Patient", {"_has:Observation": "x"}, "_has:Observation")
    refused(network, "Patient", {"_has:Observation:patient:date": "bad"},
            "_has:Observation:patient:date")
    refused(network, "Organization", {"_has:Observation:patient:code": "x"},
            "_has:Observation:patient:code")  # Observation.patient never points at one
    name = "_has:Observation:patient:nonsense"
    refused(network, "Patient", {name: "x"}, name, headers={"Prefer": "handling=strict"})
    bundle = search(network, "Patient", {name: "x"})
    assert set(ids(bundle)) == {"p1", "p2", "p3"}
    assert entries(bundle, "outcome")[0]["resource"]["issue"][0]["expression"] == [name]


# -- _list ---------------------------------------------------------------------------------------

def test_list(network: Fhir) -> None:
    """search.html#list: ``_list=[id]`` selects the resources a List holds (its entries'
    items), of the searched type, on this server."""
    put_all(network,
            {"resourceType": "List", "id": "watch", "status": "current", "mode": "working",
             "entry": [{"item": {"reference": "Patient/p1"}},
                       {"item": {"reference": "Patient/p3"}},
                       {"item": {"reference": "Observation/o2"}},
                       {"item": {"reference": f"{FOREIGN}/Patient/p2"}}]},
            {"resourceType": "List", "id": "other", "status": "current", "mode": "working",
             "entry": [{"item": {"reference": "Patient/p2"}}]},
            {"resourceType": "Basic", "id": "watch", "code": {"text": "not a List"},
             "subject": {"reference": "Patient/p2"}})
    assert found(network, "Patient", {"_list": "watch"}) == {"p1", "p3"}
    assert found(network, "Observation", {"_list": "watch"}) == {"o2"}
    assert found(network, "Patient", {"_list": "watch,other"}) == {"p1", "p2", "p3"}
    assert found(network, "Patient", [("_list", "watch"), ("name", "pan")]) == {"p3"}
    assert found(network, "Patient", [("_list", "watch"), ("_list", "other")]) == set()
    assert found(network, "Patient", {"_list": "nonesuch"}) == set()
    assert found(network, "Patient/p2/Observation", {"_list": "watch"}) == {"o2"}
    assert found(network, "Patient/p1/Observation", {"_list": "watch"}) == set()
    bundle = search(network, "", {"_type": "Patient,Observation", "_list": "watch"})
    assert {f"{e['resource']['resourceType']}/{e['resource']['id']}"
            for e in entries(bundle)} == {"Patient/p1", "Patient/p3", "Observation/o2"}
    r = network.post("Patient/_search", content="_list=other",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and set(ids(r.json())) == {"p2"}, r.text
    assert network.delete("List/watch").status_code in (200, 204)
    assert found(network, "Patient", {"_list": "watch"}) == set()


def test_bad_list(network: Fhir) -> None:
    body = refused(network, "Patient", {"_list": "$current-problems"}, "_list")
    assert body["issue"][0]["code"] == "not-supported"
    body = refused(network, "Patient", {"_list": "not an id!"}, "_list")
    assert body["issue"][0]["diagnostics"].startswith("search parameter _list:"), body
    refused(network, "Patient", {"_list:missing": "true"}, "_list:missing")


# -- _include and _revinclude --------------------------------------------------------------------

def modes(bundle: dict[str, Any]) -> dict[str, str]:
    out = {}
    for e in bundle.get("entry", []):
        if e["search"]["mode"] in ("match", "include"):
            key = f"{e['resource']['resourceType']}/{e['resource']['id']}"
            assert key not in out, f"{key} appears twice"
            assert e["fullUrl"].endswith(key)
            out[key] = e["search"]["mode"]
    return out


def test_include(network: Fhir) -> None:
    bundle = search(network, "Observation", {"code": "29463-7", "_include": "Observation:patient"})
    assert modes(bundle) == {"Observation/o1": "match", "Observation/o3": "match",
                             "Observation/o4": "match", "Patient/p1": "include",
                             "Patient/p3": "include"}
    assert bundle["total"] == 3  # included resources are not counted
    bundle = search(network, "Observation", {"_id": "o1,o3,o6",
                                             "_include": "Observation:subject:Group"})
    assert modes(bundle) == {"Observation/o1": "match", "Observation/o3": "match",
                             "Observation/o6": "match", "Group/g1": "include"}
    bundle = search(network, "Observation", {"_id": "o1,o3", "_include": "Observation:*"})
    assert modes(bundle) == {"Observation/o1": "match", "Observation/o3": "match",
                             "Patient/p1": "include", "Group/g1": "include"}
    # A resource that matches is not repeated as an include.
    bundle = search(network, "Patient", {"_id": "p1,p2", "_include": "Patient:link"})
    assert modes(bundle) == {"Patient/p1": "match", "Patient/p2": "match"}


def test_include_iterate(network: Fhir) -> None:
    bundle = search(network, "Observation", [
        ("_id", "o1,o2"), ("_include", "Observation:patient"),
        ("_include:iterate", "Patient:general-practitioner"),
        ("_include:iterate", "Patient:organization"),
        ("_include:iterate", "Organization:partof")])
    assert modes(bundle) == {
        "Observation/o1": "match", "Observation/o2": "match", "Patient/p1": "include",
        "Patient/p2": "include", "Practitioner/rahimi": "include", "Practitioner/li": "include",
        "Organization/tabriz": "include", "Organization/hohhot": "include"}
    # Without :iterate an include applies to the matches only.
    bundle = search(network, "Observation", [
        ("_id", "o1"), ("_include", "Observation:patient"),
        ("_include", "Patient:general-practitioner")])
    assert modes(bundle) == {"Observation/o1": "match", "Patient/p1": "include"}


def test_include_iterate_follows_ten_levels_and_says_where_it_stopped(fhir: Fhir) -> None:
    put_all(fhir, *({"resourceType": "Organization", "id": f"o{i}",
                     **({"partOf": {"reference": f"Organization/o{i - 1}"}} if i else {})}
                    for i in range(13)))
    bundle = search(fhir, "Organization", [("_id", "o12"),
                                           ("_include:iterate", "Organization:partof")])
    assert modes(bundle) == {"Organization/o12": "match",
                             **{f"Organization/o{i}": "include" for i in range(2, 12)}}
    (note,) = entries(bundle, "outcome")
    issue = note["resource"]["issue"][0]
    assert issue["severity"] == "warning" and "10 rounds" in issue["diagnostics"]
    bundle = search(fhir, "Organization", [("_id", "o5"),
                                           ("_include:iterate", "Organization:partof")])
    assert len(modes(bundle)) == 6 and not entries(bundle, "outcome")
    bundle = search(fhir, "Organization", [("_id", "o10"),  # exactly ten rounds: all there
                                           ("_include:iterate", "Organization:partof")])
    assert len(modes(bundle)) == 11 and not entries(bundle, "outcome")


def test_revinclude(network: Fhir) -> None:
    bundle = search(network, "Patient", {"_id": "p1", "_revinclude": "Observation:patient"})
    assert modes(bundle) == {"Patient/p1": "match", "Observation/o1": "include"}
    bundle = search(network, "Patient", [("_id", "p1"), ("_revinclude", "Observation:patient"),
                                         ("_revinclude", "Encounter:subject")])
    assert modes(bundle) == {"Patient/p1": "match", "Observation/o1": "include",
                             "Encounter/e1": "include"}
    bundle = search(network, "Patient", [("_id", "p1"), ("_revinclude", "Observation:patient"),
                                         ("_revinclude:iterate", "Provenance:target")])
    assert modes(bundle) == {"Patient/p1": "match", "Observation/o1": "include",
                             "Provenance/prov1": "include"}
    bundle = search(network, "Organization", [("_id", "tabriz"),
                                              ("_revinclude", "Patient:organization"),
                                              ("_include", "Organization:partof")])
    assert modes(bundle) == {"Organization/tabriz": "match", "Patient/p1": "include"}


def test_includes_cut_at_their_limit_say_so_even_for_one_match(
        fhir: Fhir, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Bundle whose included resources were cut at the limit says so, also when a single
    match has more referrers than the limit (search.html#revinclude lets a server limit them;
    the client is told)."""
    from server.storage import sqlite_search

    monkeypatch.setattr(sqlite_search, "_MAX_INCLUDED", 3)
    put_all(fhir, patient("cap"), *({"resourceType": "Condition", "id": f"cap-c{i}",
                                     "subject": {"reference": "Patient/cap"}} for i in range(4)))
    bundle = search(fhir, "Patient", {"_id": "cap", "_revinclude": "Condition:subject"})
    assert len([e for e in bundle["entry"] if e["search"]["mode"] == "include"]) == 3
    (note,) = entries(bundle, "outcome")
    assert "stopped at 3 resources" in note["resource"]["issue"][0]["diagnostics"]
    fhir.delete("Condition/cap-c3")
    bundle = search(fhir, "Patient", {"_id": "cap", "_revinclude": "Condition:subject"})
    assert len(bundle["entry"]) == 4 and not entries(bundle, "outcome")  # exactly the limit


def test_includes_skip_deleted_and_foreign_targets(network: Fhir) -> None:
    bundle = search(network, "Observation", {"_id": "o5", "_include": "Observation:subject"})
    assert modes(bundle) == {"Observation/o5": "match"}
    bundle = search(network, "Patient", {"_id": "p1", "_revinclude": "Observation:subject"})
    assert modes(bundle) == {"Patient/p1": "match", "Observation/o1": "include"}
    assert network.delete("Patient/p3").status_code in (200, 204)
    bundle = search(network, "Observation", {"_id": "o4", "_include": "Observation:subject"})
    assert modes(bundle) == {"Observation/o4": "match"}


def test_a_versioned_reference_includes_the_version_it_names(fhir: Fhir) -> None:
    """search.html#versions: "If a resource has a reference that is versioned and _include is
    performed, the specified version SHOULD be provided"; unversioned, the current one."""
    put(fhir, patient("pv", gender="female"))
    put(fhir, patient("pv", gender="male"))
    put(fhir, observation("ov1", subject={"reference": "Patient/pv/_history/1"}))
    put(fhir, observation("ov2", subject={"reference": "Patient/pv"}))
    for id_, version, gender in (("ov1", "1", "female"), ("ov2", "2", "male")):
        bundle = search(fhir, "Observation", {"_id": id_, "_include": "Observation:subject"})
        (included,) = [e["resource"] for e in bundle["entry"]
                       if e["search"]["mode"] == "include"]
        assert included["meta"]["versionId"] == version and included["gender"] == gender, id_
    bundle = search(fhir, "Observation", {"_id": "ov1,ov2", "_include": "Observation:subject"})
    assert sorted(e["resource"]["meta"]["versionId"] for e in bundle["entry"]
                  if e["search"]["mode"] == "include") == ["1", "2"]


@pytest.mark.parametrize("type_, name, value", [
    ("QuestionnaireResponse", "questionnaire.name", "Satisfaction"),
    ("QuestionnaireResponse", "_include", "QuestionnaireResponse:questionnaire"),
    ("Questionnaire", "_revinclude", "QuestionnaireResponse:questionnaire"),
    ("Questionnaire", "_has:QuestionnaireResponse:questionnaire:status", "completed"),
])
def test_chains_and_includes_through_canonical_references_are_refused(
        fhir: Fhir, type_: str, name: str, value: str) -> None:
    """A canonical reference (QuestionnaireResponse.questionnaire) names a URL, not a resource
    id: searching by it works (questionnaire=[url]), following it does not, and says so rather
    than finding nothing."""
    body = refused(fhir, type_, {name: value}, name)
    assert body["issue"][0]["code"] == "not-supported", body
    assert "canonical" in body["issue"][0]["diagnostics"], body


@pytest.mark.parametrize("name, value", [
    ("_include", "Observation:code"), ("_include", "Nonsense:subject"),
    ("_include", "Observation"), ("_include", "Observation:subject:Nonsense"),
    ("_revinclude", "Observation:nonsense"), ("_revinclude", "*"),
])
def test_bad_includes(network: Fhir, name: str, value: str) -> None:
    refused(network, "Patient", {name: value}, name)


# -- compartments and searches across types ------------------------------------------------------

def test_compartment_search(network: Fhir) -> None:
    assert found(network, "Patient/p1/Observation") == {"o1"}
    assert found(network, "Patient/p1/Observation", {"code": "8302-2"}) == set()
    assert found(network, "Patient/p2/Observation", {"code": "8302-2"}) == {"o2"}
    assert found(network, "Patient/p1/Encounter") == {"e1"}
    assert found(network, "Practitioner/rahimi/Patient") == {"p1"}
    everything = search(network, "Patient/p1/*")
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(everything)}
    assert {"Observation/o1", "Encounter/e1"} <= got
    assert not got & {"Observation/o2", "Observation/o5", "Patient/p2", "Encounter/e2"}
    link = everything["link"][0]
    assert link["relation"] == "self" and "/Patient/p1/*" in link["url"]
    r = network.get("Patient/p1/Organization")
    assert r.status_code in (400, 404) and r.json()["resourceType"] == "OperationOutcome"
    # _type narrows a compartment's * search; elsewhere it is ignored and said so
    only = search(network, "Patient/p1/*", {"_type": "Encounter"})
    assert {e["resource"]["resourceType"] for e in entries(only)} == {"Encounter"}
    refused(network, "Patient/p1/*", {"_type": "Organization"}, "_type")
    for path in ("Patient", "Patient/p1/Observation"):
        bundle = search(network, path, {"_type": "Encounter"})
        self_url = next(x["url"] for x in bundle["link"] if x["relation"] == "self")
        assert "_type" not in self_url, path
        assert entries(bundle, "outcome")[0]["resource"]["issue"][0]["expression"] == ["_type"]
        refused(network, path, {"_type": "Encounter"}, "_type",
                headers={"Prefer": "handling=strict"})


def test_tasks_about_a_patient_are_in_the_patients_compartment(fhir: Fhir) -> None:
    """The Patient compartment as its R4 definition (compartmentdefinition-patient) gives it:
    a Task is in it through its patient (for) or its focus."""
    put_all(fhir, patient("tp"), patient("other"),
            {"resourceType": "Task", "id": "for", "status": "requested", "intent": "order",
             "for": {"reference": "Patient/tp"}},
            {"resourceType": "Task", "id": "focus", "status": "requested", "intent": "order",
             "focus": {"reference": "Patient/tp"}},
            {"resourceType": "Task", "id": "elsewhere", "status": "requested", "intent": "order",
             "for": {"reference": "Patient/other"}})
    assert found(fhir, "Patient/tp/Task") == {"for", "focus"}
    assert {"for", "focus"} <= found(fhir, "Patient/tp/*")


def test_sorting_across_types_by_a_parameter_some_lack(network: Fhir) -> None:
    """_sort across _type types by a parameter one of them lacks: its resources sort as having
    no value, and a warning says so (strict handling: 400)."""
    params = {"_type": "Patient,Practitioner", "_sort": "birthdate", "name": "li"}
    bundle = search(network, "", params)
    (outcome,) = entries(bundle, "outcome")
    issue = outcome["resource"]["issue"][0]
    assert issue["expression"] == ["_sort"] and "Practitioner" in issue["diagnostics"], issue
    refused(network, "", params, "_sort", headers={"Prefer": "handling=strict"})


def test_system_search_with_type(network: Fhir) -> None:
    bundle = search(network, "", {"_type": "Patient,Practitioner", "name": "li"})
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(bundle)}
    assert got == {"Patient/p2", "Practitioner/li"}
    bundle = search(network, "", {"_type": "Patient,Organization", "name": "tabriz,peter"})
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in entries(bundle)}
    assert got == {"Organization/tabriz", "Patient/p1", "Patient/p3"}
    r = network.post("_search", content="_type=Patient,Practitioner&name=li",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    got = {f"{e['resource']['resourceType']}/{e['resource']['id']}"
           for e in entries(r.json())}
    assert got == {"Patient/p2", "Practitioner/li"}
    refused(network, "", {"_type": "Nonsense"}, "_type")
    # Device.manufacturer is a string, Immunization.manufacturer a reference: no one order
    refused(network, "", {"_type": "Device,Immunization", "_sort": "manufacturer"}, "_sort")


def test_system_search_without_type_takes_the_parameters_common_to_all_types(
        fhir: Fhir) -> None:
    """search.html#base: "GET [base]?parameter(s) (parameters common to all types) … If _type
    is not included, all parameters SHALL be common to all resource types"; /metadata lists
    them as the system's search parameters."""
    put_all(fhir, patient("same"), observation("same"), patient("other"),
            {"resourceType": "Practitioner", "id": "tagged",
             "meta": {"tag": [{"system": "urn:t", "code": "x"}]}})

    def got(params: Any) -> set[str]:
        return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in entries(search(fhir, "", params))}

    assert got({"_id": "same"}) == {"Patient/same", "Observation/same"}
    assert got({"_type": "Patient,Observation", "_id": "same"}) == {
        "Patient/same", "Observation/same"}
    assert got({"_tag": "urn:t|x"}) == {"Practitioner/tagged"}
    assert got([("_id", "same,tagged"), ("_sort", "_id")]) == {
        "Patient/same", "Observation/same", "Practitioner/tagged"}
    body = refused(fhir, "", {"name": "x"}, "name")
    assert "_type" in body["issue"][0]["diagnostics"]
    refused(fhir, "", {"_sort": "family"}, "_sort")  # a sort key is a parameter too
    put(fhir, {"resourceType": "List", "id": "l", "status": "current", "mode": "working",
               "entry": [{"item": {"reference": "Patient/other"}}]})
    assert got({"_list": "l"}) == {"Patient/other"}
    rest = fhir.get("metadata", token=None).json()["rest"][0]
    assert {"_id", "_lastUpdated", "_tag", "_list", "_has"} <= {
        p["name"] for p in rest["searchParam"]}


def test_a_search_across_every_type_reads_ids_and_times_through_the_indexes(
        tmp_path: Any) -> None:
    """_id and _lastUpdated over many types are one lookup each (search.html#base), not a
    read of every resource: the plan SQLite makes says so."""
    import sqlite3

    from server.search.query import parse
    from server.storage import sqlite_schema
    from server.storage.sqlite_search import page_sql

    conn = sqlite3.connect(tmp_path / "plan.db")
    sqlite_schema.migrate(conn, lambda c, k: None, lambda c, k, m: None)
    types = tuple(structures().resource_types)
    for params in ([("_id", "a,b")], [("_lastUpdated", "ge2020-01-01")]):
        sql, args = page_sql(parse(types, params), conn=conn)
        plan = " | ".join(row[3] for row in conn.execute("EXPLAIN QUERY PLAN " + sql, args))
        # not every resource of the types, read by type (what a clause per type came to)
        assert "SEARCH r USING INDEX resource_type (type=?)" not in plan, (params, plan)
        assert "SCAN r " not in plan + " " and "SCAN resource" not in plan, (params, plan)
    conn.close()


def test_negations_across_types_stay_within_each_type(fhir: Fhir) -> None:
    put_all(fhir,
            patient("x", gender="male", name=[{"family": "X"}]),
            patient("y", gender="female"),
            {"resourceType": "Practitioner", "id": "x", "gender": "male"},
            {"resourceType": "Practitioner", "id": "z", "gender": "female",
             "name": [{"family": "Z"}]},
            {"resourceType": "Group", "id": "x", "type": "person", "actual": True},
            observation("ox", subject={"reference": "Patient/x"}))

    def typed(params: dict[str, str]) -> set[str]:
        return {f"{e['resource']['resourceType']}/{e['resource']['id']}"
                for e in entries(search(fhir, "", params))}

    both = "Patient,Practitioner"
    assert typed({"_type": both, "gender:not": "male"}) == {"Patient/y", "Practitioner/z"}
    assert typed({"_type": both, "gender": "male"}) == {"Patient/x", "Practitioner/x"}
    assert typed({"_type": both, "name:missing": "true"}) == {"Patient/y", "Practitioner/x"}
    assert typed({"_type": both, "name:missing": "false"}) == {"Patient/x", "Practitioner/z"}
    # Group/x shares its id with Patient/x; only the Patient has an observation.
    assert typed({"_type": "Patient,Group", "_has:Observation:subject:status": "final"}) == {
        "Patient/x"}
    # Observation.patient cannot point at a Group: that type is simply not matched.
    assert typed({"_type": "Patient,Group", "_has:Observation:patient:status": "final"}) == {
        "Patient/x"}


def test_post_search_form_encoded(network: Fhir) -> None:
    r = network.post("Patient/_search", content="name=peter&_sort=family",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert ids(r.json()) == ["p1", "p3"]
    r = network.post("Patient/_search?family=pan", content="name=peter",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200, r.text
    assert ids(r.json()) == ["p3"]
    r = network.post("Patient/_search", content="birthdate=notadate",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400


@pytest.mark.parametrize("content_type", [
    "Application/X-WWW-Form-Urlencoded", "application/x-www-form-urlencoded; charset=utf-8",
    "application/x-www-form-urlencoded;charset=UTF-8"])
def test_post_search_media_type_is_case_insensitive(network: Fhir, content_type: str) -> None:
    """Media types and their parameters are compared case-insensitively (RFC 9110 #8.3.1)."""
    r = network.post("Patient/_search", content="name=peter&family=pan",
                     headers={"Content-Type": content_type})
    assert r.status_code == 200, r.text
    assert ids(r.json()) == ["p3"]


@pytest.mark.parametrize("path", ["Patient/_search?family=pan", "_search?_type=Patient&family=pan"])
def test_post_search_with_an_empty_body_uses_the_url(network: Fhir, path: str) -> None:
    for headers in ({}, {"Content-Type": "application/fhir+json"},
                    {"Content-Type": "application/x-www-form-urlencoded"}):
        r = network.post(path, content=b"", headers=headers)
        assert r.status_code == 200, (headers, r.text)
        assert ids(r.json()) == ["p3"], headers


@pytest.mark.parametrize("path", ["Patient/_search", "_search?_type=Patient"])
@pytest.mark.parametrize("content_type, content", [
    ("application/fhir+json", "gender=female"), ("text/plain", "name=peter"),
    ("application/json", '{"name": "peter"}'), (None, "name=peter")])
def test_post_search_refuses_a_body_that_is_not_form_encoded(
        network: Fhir, path: str, content_type: str | None, content: str) -> None:
    """http.html#search: the parameters of POST _search are an
    application/x-www-form-urlencoded body. Another body cannot be read as criteria, and
    searching without them would answer with every resource: 415."""
    headers = {"Content-Type": content_type} if content_type else {}
    r = network.post(path, content=content, headers=headers)
    assert r.status_code == 415, r.text
    body = r.json()
    assert body["resourceType"] == "OperationOutcome"
    assert body["issue"][0]["code"] == "not-supported"
    assert "application/x-www-form-urlencoded" in body["issue"][0]["diagnostics"]



def test_post_search_refuses_a_form_body_that_is_not_utf8(network: Fhir) -> None:
    r = network.post("Patient/_search", content=b"name=M\xfcller",
                     headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 400, r.text
    assert "UTF-8" in r.json()["issue"][0]["diagnostics"]

"""The benchmark data generator (bench/datagen.py, bench/generate.py): deterministic, valid R4,
references that resolve, transaction Bundles a server accepts, and the telemedicine content the
search and import benchmarks rely on."""

from __future__ import annotations

import collections
import datetime as dt
import itertools
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from bench.datagen import (
    CONSULTATION_TYPES,
    REFERENCE_TIME,
    SPECIALTIES,
    TASK_STATES,
    iter_bundles,
    iter_resources,
)
from server.fhir import references
from server.fhir.validation import validate_resource
from tests.conftest import Fhir

REPO = Path(__file__).resolve().parents[1]
NETWORK_TYPES = {"Organization", "Location", "Practitioner", "PractitionerRole"}
CS = "https://fhir.consilium.health/CodeSystem/"
DIRECTION = "https://fhir.consilium.health/StructureDefinition/referral-direction"
UUID_URN = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
ARABIC = re.compile(r"[\u0600-\u06ff]")
HAN = re.compile(r"[\u4e00-\u9fff]")
CYRILLIC = re.compile(r"[\u0400-\u04ff]")
LATIN = re.compile(r"[A-Za-z]")


@pytest.fixture(scope="module")
def small() -> list[dict[str, Any]]:
    return list(iter_resources(20, seed=1))


@pytest.fixture(scope="module")
def larger() -> list[dict[str, Any]]:
    return list(iter_resources(300, seed=5))


def by_type(resources: list[dict[str, Any]], type_name: str) -> list[dict[str, Any]]:
    return [r for r in resources if r["resourceType"] == type_name]


def reference_values(resource: dict[str, Any]) -> list[str]:
    """Every Reference.reference in a resource, found through the R4 structure table."""
    found: list[str] = []

    def note(holder: dict[str, Any], key: str, type_name: str) -> None:
        if type_name == "Reference":
            found.append(holder[key])

    references.visit(resource, note)
    return found


def restore(resource: dict[str, Any], back: dict[str, str]) -> dict[str, Any]:
    """A copy of ``resource`` with the references named in ``back`` replaced."""
    copy = orjson.loads(orjson.dumps(resource))

    def swap(holder: dict[str, Any], key: str, type_name: str) -> None:
        if type_name == "Reference":
            holder[key] = back.get(holder[key], holder[key])

    references.visit(copy, swap)
    return copy


def codes(concepts: list[dict[str, Any]] | dict[str, Any], system: str) -> list[str]:
    items = concepts if isinstance(concepts, list) else [concepts]
    return [c["code"] for cc in items for c in cc.get("coding", []) if c["system"] == system]


def instant(value: str) -> float:
    if len(value) == 10:
        value += "T00:00:00+00:00"
    return dt.datetime.fromisoformat(value).timestamp()


# -- determinism and laziness ------------------------------------------------------------------

def test_same_seed_gives_the_same_output_and_another_seed_does_not() -> None:
    def dump(seed: int) -> bytes:
        return b"\n".join(orjson.dumps(r) for r in iter_resources(8, seed=seed))

    assert dump(3) == dump(3)
    assert dump(3) != dump(4)
    bundles = [orjson.dumps(b) for b in iter_bundles(8, seed=3)]
    assert bundles == [orjson.dumps(b) for b in iter_bundles(8, seed=3)]


def test_a_smaller_run_is_the_start_of_a_larger_one() -> None:
    few = [orjson.dumps(r) for r in iter_resources(4, seed=2)]
    more = [orjson.dumps(r) for r in iter_resources(9, seed=2)]
    assert more[:len(few)] == few
    assert len(more) > len(few)


def test_generators_are_lazy_whatever_the_size() -> None:
    """A billion patients: only lazy generation can hand out the first items at all."""
    first = list(itertools.islice(iter_resources(10**9), 3))
    assert [r["resourceType"] for r in first] == ["Organization"] * 3
    bundle = next(iter_bundles(10**9, size=10))
    assert len(bundle["entry"]) == 10


def test_network_first_then_patient_by_patient(small: list[dict[str, Any]]) -> None:
    types = [r["resourceType"] for r in small]
    last_network = max(i for i, t in enumerate(types) if t in NETWORK_TYPES)
    first_patient = types.index("Patient")
    assert last_network < first_patient
    # Each patient's resources follow the Patient resource, before the next Patient.
    owner = None
    for r in small[first_patient:]:
        if r["resourceType"] == "Patient":
            owner = f"Patient/{r['id']}"
            continue
        subject = (r.get("subject") or r.get("patient") or r.get("for") or {}).get("reference")
        if subject is not None:
            assert subject == owner


# -- validity and references ---------------------------------------------------------------------

def test_every_resource_is_valid_r4(small: list[dict[str, Any]]) -> None:
    problems = []
    for r in small:
        for issue in validate_resource(r, r["resourceType"]):
            if issue.severity in ("error", "fatal"):
                problems.append((r["resourceType"], r["id"], issue.diagnostics, issue.expression))
    assert problems == []
    assert len(small) > 1000


def test_ids_are_unique_and_every_reference_resolves(small: list[dict[str, Any]]) -> None:
    ids = [f"{r['resourceType']}/{r['id']}" for r in small]
    assert len(ids) == len(set(ids))
    known = set(ids)
    refs = [v for r in small for v in reference_values(r)]
    assert len(refs) > len(small)  # the visitor did find them
    assert [v for v in refs if v not in known] == []


# -- the network ---------------------------------------------------------------------------------

def test_network_has_three_care_levels_in_both_countries(small: list[dict[str, Any]]) -> None:
    orgs = {o["id"]: o for o in by_type(small, "Organization")}
    level = {oid: (codes(o["type"], CS + "care-level") or ["0"])[0] for oid, o in orgs.items()}
    assert {"1", "2", "3"} <= set(level.values())
    cities = {a["city"] for o in orgs.values() for a in o["address"]}
    assert {"Tehran", "Mashhad", "Tabriz", "Hohhot", "Baotou", "Chifeng"} <= cities
    assert {a["country"] for o in orgs.values() for a in o["address"]} == {"IR", "CN"}
    for oid, o in orgs.items():
        if level[oid] in ("1", "2"):
            parent = o["partOf"]["reference"].removeprefix("Organization/")
            assert int(level[parent]) > int(level[oid])


def test_practitioner_roles_name_experts_with_specialties(small: list[dict[str, Any]]) -> None:
    roles = by_type(small, "PractitionerRole")
    experts = [r for r in roles if "expert" in codes(r["code"], CS + "practitioner-role")]
    assert experts and len(experts) < len(roles)
    assert {c for r in experts for c in codes(r["specialty"], CS + "specialty")} == \
        set(SPECIALTIES)
    practitioners = by_type(small, "Practitioner")
    assert all(p["qualification"] for p in practitioners)
    assert len(by_type(small, "Location")) >= len(by_type(small, "Organization")) - 2


# -- patients ------------------------------------------------------------------------------------

def test_names_in_the_expected_scripts(larger: list[dict[str, Any]]) -> None:
    patients = by_type(larger, "Patient")
    texts = [n["text"] for p in patients for n in p["name"]]
    assert any(ARABIC.search(t) for t in texts)
    assert any(HAN.search(t) for t in texts)
    assert any(CYRILLIC.search(t) for t in texts)
    assert any(LATIN.search(t) for t in texts)
    scripts = {"fa": ARABIC, "zh": HAN, "mn-Cyrl": CYRILLIC, "fa-Latn": LATIN,
               "zh-Latn-pinyin": LATIN, "mn-Latn": LATIN}
    for p in patients:
        for n in p["name"]:
            lang = n["extension"][0]["valueCode"]
            assert scripts[lang].search(n["text"]), (lang, n["text"])


def _iran_code_ok(code: str) -> bool:
    """Iranian national code: 10 digits, the last a mod-11 check of the first nine."""
    if not re.fullmatch(r"\d{10}", code):
        return False
    s = sum(int(code[i]) * (10 - i) for i in range(9)) % 11
    return int(code[9]) == (s if s < 2 else 11 - s)


def _china_id_ok(value: str, birth: str, gender: str) -> bool:
    """GB 11643-1999: 6-digit region, birth date, 3-digit sequence (odd for men), ISO 7064
    MOD 11-2 check character."""
    if not re.fullmatch(r"\d{17}[\dX]", value):
        return False
    weights = [2 ** (17 - i) % 11 for i in range(17)]
    check = (12 - sum(int(c) * w for c, w in zip(value[:17], weights, strict=True)) % 11) % 11
    if value[17] != ("X" if check == 10 else str(check)):
        return False
    if value[6:14] != birth.replace("-", ""):
        return False
    return gender not in ("male", "female") or (int(value[16]) % 2 == 1) == (gender == "male")


def test_national_identifiers_follow_their_standards(larger: list[dict[str, Any]]) -> None:
    seen: collections.Counter[str] = collections.Counter()
    for p in by_type(larger, "Patient"):
        national = [i for i in p["identifier"] if codes(i["type"],
                    "http://terminology.hl7.org/CodeSystem/v2-0203") == ["NI"]]
        assert len(national) == 1
        value = national[0]["value"]
        if p["address"][0]["country"] == "IR":
            assert _iran_code_ok(value), value
            seen["IR"] += 1
        else:
            assert _china_id_ok(value, p["birthDate"], p["gender"]), value
            seen["CN"] += 1
    assert seen["IR"] > 50 and seen["CN"] > 50


def test_demographics_are_spread(larger: list[dict[str, Any]]) -> None:
    patients = by_type(larger, "Patient")
    genders = collections.Counter(p["gender"] for p in patients)
    assert genders["female"] > 0.35 * len(patients) and genders["male"] > 0.35 * len(patients)
    years = [int(p["birthDate"][:4]) for p in patients]
    assert max(years) - min(years) > 60
    assert all(p["managingOrganization"]["reference"].startswith("Organization/")
               for p in patients)
    assert all(p["telecom"] and p["address"] for p in patients)


# -- clinical data -------------------------------------------------------------------------------

def test_observations_use_loinc_and_ucum_over_several_years(larger: list[dict[str, Any]]) -> None:
    observations = by_type(larger, "Observation")
    for o in observations:
        assert o["code"]["coding"][0]["system"] == "http://loinc.org"
        q = o.get("valueQuantity")
        if q is not None:
            assert q["system"] == "http://unitsofmeasure.org" and q["code"] == q["unit"]
    years = {o["effectiveDateTime"][:4] for o in observations}
    assert len(years) >= 4
    bp = [o for o in observations if o["code"]["coding"][0]["code"] == "85354-9"]
    assert bp and all({c["code"]["coding"][0]["code"] for c in o["component"]} ==
                      {"8480-6", "8462-4"} for o in bp)
    categories = {c for o in observations for c in
                  codes(o["category"], "http://terminology.hl7.org/CodeSystem/observation-category")}
    assert {"vital-signs", "laboratory"} <= categories
    conditions = by_type(larger, "Condition")
    systems = {c["system"] for r in conditions for c in r["code"]["coding"]}
    assert {"http://snomed.info/sct", "http://hl7.org/fhir/sid/icd-10"} <= systems


def test_nothing_that_happened_lies_after_the_reference_time(
        larger: list[dict[str, Any]]) -> None:
    for r in larger:
        for key in ("effectiveDateTime", "issued", "authoredOn", "lastModified", "onsetDateTime",
                    "recordedDate", "dateTime"):
            if key in r:
                assert instant(r[key]) <= REFERENCE_TIME, (r["resourceType"], key, r[key])
        if r["resourceType"] == "Encounter":
            assert instant(r["period"]["start"]) <= REFERENCE_TIME
            if "end" in r["period"]:
                assert instant(r["period"]["start"]) <= instant(r["period"]["end"])


def test_consents_are_mostly_active_and_precede_the_requests(
        larger: list[dict[str, Any]]) -> None:
    consents = by_type(larger, "Consent")
    statuses = collections.Counter(c["status"] for c in consents)
    assert statuses["active"] > 0.75 * len(consents)
    first: dict[str, float] = {}
    for c in consents:
        if "telemedicine-consultation" in codes(c["category"], CS + "consent-category"):
            first[c["patient"]["reference"]] = instant(c["dateTime"])
    for sr in by_type(larger, "ServiceRequest"):
        if codes(sr["category"], CS + "consultation-type") != ["referral"]:
            assert first[sr["subject"]["reference"]] <= instant(sr["authoredOn"])


# -- telemedicine workflow -----------------------------------------------------------------------

def _levels(resources: list[dict[str, Any]]) -> dict[str, int]:
    orgs = {f"Organization/{o['id']}": int((codes(o["type"], CS + "care-level") or ["0"])[0])
            for o in by_type(resources, "Organization")}
    role_org = {f"PractitionerRole/{r['id']}": r["organization"]["reference"]
                for r in by_type(resources, "PractitionerRole")}
    return {**orgs, **{role: orgs[org] for role, org in role_org.items()}}


def test_consultation_requests(larger: list[dict[str, Any]]) -> None:
    level = _levels(larger)
    consults = [s for s in by_type(larger, "ServiceRequest")
                if codes(s["category"], CS + "consultation-type") != ["referral"]]
    assert len(consults) > 100
    kinds = set()
    for s in consults:
        (kind,) = codes(s["category"], CS + "consultation-type")
        kinds.add(kind)
        assert s["intent"] == "order" and s["priority"] in ("routine", "urgent")
        (spec,) = codes(s["performerType"], CS + "specialty")
        assert spec in SPECIALTIES
        requester = s["requester"]["reference"]
        assert requester.startswith("PractitionerRole/")
        orgs = [p["reference"] for p in s["performer"] if p["reference"].startswith("Organization/")]
        assert len(orgs) == 1 and level[orgs[0]] > level[requester]
        assert s["reasonCode"] and s["reasonReference"]
        assert all(i["reference"].split("/")[0] in ("Observation", "DiagnosticReport")
                   for i in s.get("supportingInfo", []))
    assert len(kinds) >= 9 and kinds <= set(CONSULTATION_TYPES) - {"referral"}


def test_tasks_in_every_state_with_deadlines(larger: list[dict[str, Any]]) -> None:
    requests = {f"ServiceRequest/{s['id']}": s for s in by_type(larger, "ServiceRequest")}
    reports = {r["basedOn"][0]["reference"] for r in by_type(larger, "DiagnosticReport")
               if r.get("basedOn")}
    appointments = {a["basedOn"][0]["reference"] for a in by_type(larger, "Appointment")}
    states: dict[str, set[str]] = collections.defaultdict(set)
    for t in by_type(larger, "Task"):
        sr = requests[t["focus"]["reference"]]
        kind = codes(sr["category"], CS + "consultation-type")[0]
        states["referral" if kind == "referral" else "consultation"].add(t["status"])
        assert t["intent"] == "order" and t["owner"] and t["authoredOn"]
        assert instant(t["restriction"]["period"]["end"]) > instant(t["authoredOn"])
        if t["status"] == "rejected":
            assert t["statusReason"]
        if kind != "referral" and t["status"] == "completed":
            assert t["focus"]["reference"] in reports
            assert t["focus"]["reference"] in appointments
    assert states["consultation"] == set(TASK_STATES)
    assert states["referral"] == set(TASK_STATES)


def test_referrals_go_up_and_down(larger: list[dict[str, Any]]) -> None:
    level = _levels(larger)
    directions: collections.Counter[str] = collections.Counter()
    for s in by_type(larger, "ServiceRequest"):
        if codes(s["category"], CS + "consultation-type") != ["referral"]:
            assert "extension" not in s
            continue
        (ext,) = [e for e in s["extension"] if e["url"] == DIRECTION]
        directions[ext["valueCode"]] += 1
        source = level[s["requester"]["reference"]]
        target = level[s["performer"][0]["reference"]]
        assert (target > source) if ext["valueCode"] == "up" else (target < source)
    assert directions["up"] > 0 and directions["down"] > 0
    assert set(directions) == {"up", "down"}


# -- sizes ---------------------------------------------------------------------------------------

def test_counts_scale_with_the_number_of_patients() -> None:
    def counts(n: int) -> collections.Counter[str]:
        return collections.Counter(r["resourceType"] for r in iter_resources(n, seed=9))

    a, b = counts(30), counts(120)
    assert a["Patient"] == 30 and b["Patient"] == 120
    for t in NETWORK_TYPES:
        assert a[t] == b[t]
    network = sum(a[t] for t in NETWORK_TYPES)
    per_patient = (sum(b.values()) - network) / 120
    assert 20 <= per_patient <= 40
    assert 2.5 < (sum(b.values()) - network) / (sum(a.values()) - network) < 6


# -- transaction Bundles -------------------------------------------------------------------------

def test_bundles_refer_only_to_their_own_entries_or_the_network() -> None:
    network = {f"{r['resourceType']}/{r['id']}" for r in iter_resources(0, seed=1)}
    resources = list(iter_resources(25, seed=1))
    bundles = list(iter_bundles(25, seed=1, size=50))
    assert sum(len(b["entry"]) for b in bundles) == len(resources)
    sizes = [len(b["entry"]) for b in bundles]
    assert 25 <= sum(sizes) / len(sizes) <= 100
    for b in bundles:
        assert b["resourceType"] == "Bundle" and b["type"] == "transaction"
        full_urls = [e["fullUrl"] for e in b["entry"]]
        assert len(full_urls) == len(set(full_urls))
        own = set(full_urls)
        for e in b["entry"]:
            r, request = e["resource"], e["request"]
            assert UUID_URN.fullmatch(e["fullUrl"])
            if request["method"] == "PUT":
                assert r["resourceType"] in NETWORK_TYPES
                assert request["url"] == f"{r['resourceType']}/{r['id']}"
            else:
                assert request == {"method": "POST", "url": r["resourceType"]}
                assert "id" not in r
            for v in reference_values(r):
                assert v in own or v in network, v
    # The same resources as iter_resources, once the urn:uuid references are read back as the
    # Type/id of the entry they name (and the id a POST leaves out is put back).
    for b in bundles:
        back = {e["fullUrl"]: f"{e['resource']['resourceType']}/{e['fullUrl'][9:]}"
                for e in b["entry"] if e["request"]["method"] == "POST"}
        for e in b["entry"]:
            r = restore(e["resource"], back)
            if e["request"]["method"] == "POST":
                r = {"resourceType": r["resourceType"], "id": e["fullUrl"][9:],
                     **{k: v for k, v in r.items() if k != "resourceType"}}
            original = resources.pop(0)
            assert r == original


def test_every_bundle_is_a_valid_r4_bundle() -> None:
    for b in iter_bundles(6, seed=2, size=40):
        errors = [i for i in validate_resource(b, "Bundle") if i.severity == "error"]
        assert errors == []


def test_the_server_accepts_the_bundles_and_resolves_the_references(fhir: Fhir) -> None:
    bundles = list(iter_bundles(3, seed=1, size=300))
    posted = 0
    for b in bundles:
        response = fhir.post("", json=b)
        assert response.status_code == 200, response.text[:500]
        posted += len(b["entry"])
    patients = fhir.get("Patient", params={"_summary": "count"}).json()["total"]
    assert patients == 3
    tasks = fhir.get("Task", params={"_count": "100"}).json()["entry"]
    assert tasks
    for entry in tasks:
        task = entry["resource"]
        focus = fhir.get(task["focus"]["reference"])
        assert focus.status_code == 200
        assert focus.json()["resourceType"] == "ServiceRequest"
        assert fhir.get(task["for"]["reference"]).status_code == 200
        assert "urn:uuid" not in orjson.dumps(task).decode()
    assert posted == sum(1 for _ in iter_resources(3, seed=1))


# -- the command line ----------------------------------------------------------------------------

def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(REPO / "bench" / "generate.py"), *args],
                          capture_output=True, text=True, cwd=REPO, timeout=120)


def test_cli_help_explains_the_options() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for word in ("--patients", "--out", "--seed", "--format", "ndjson", "bundles"):
        assert word in out.stdout


def test_cli_writes_ndjson_files_that_parse(tmp_path: Path) -> None:
    out = run_cli("--patients", "6", "--out", str(tmp_path / "n"), "--seed", "4")
    assert out.returncode == 0, out.stderr
    files = sorted((tmp_path / "n").glob("*.ndjson"))
    assert {"Patient.ndjson", "Observation.ndjson", "Task.ndjson", "Organization.ndjson"} <= \
        {f.name for f in files}
    total = 0
    for f in files:
        for line in f.read_bytes().splitlines():
            r = orjson.loads(line)
            assert r["resourceType"] == f.stem and r["id"]
            total += 1
    assert total == sum(1 for _ in iter_resources(6, seed=4))
    assert len((tmp_path / "n" / "Patient.ndjson").read_bytes().splitlines()) == 6
    assert f"{total:,}" in out.stdout
    assert "resources/s" in out.stdout.strip().splitlines()[-1]


def test_cli_writes_bundles_that_parse(tmp_path: Path) -> None:
    out = run_cli("--patients", "4", "--out", str(tmp_path / "b"), "--format", "bundles")
    assert out.returncode == 0, out.stderr
    lines = (tmp_path / "b" / "bundles.ndjson").read_bytes().splitlines()
    bundles = [orjson.loads(line) for line in lines]
    assert all(b["resourceType"] == "Bundle" and b["type"] == "transaction" for b in bundles)
    assert sum(len(b["entry"]) for b in bundles) == sum(1 for _ in iter_resources(4))
    assert sum(e["resource"]["resourceType"] == "Patient" for b in bundles for e in b["entry"]) \
        == 4


def test_cli_refuses_a_negative_count(tmp_path: Path) -> None:
    out = run_cli("--patients", "-1", "--out", str(tmp_path))
    assert out.returncode == 2 and "--patients" in out.stderr

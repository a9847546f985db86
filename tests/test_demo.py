"""``consilium demo``: the network it loads, loading next to a running server, loading twice, and
the README's consultation walk-through run as written against a real server.

The walk-through is the shell in README.md under "## A consultation, step by step" (or in the
Markdown file named by the environment variable CONSILIUM_README): every ``sh`` block but the
first (which loads the demo and starts the server, done here by the fixtures) runs in bash with
``set -euo pipefail`` and curl failing on any HTTP error, against a server on the demo data.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.demo import MARKER, Summary, load
from server.workflow import model
from tests.conftest import Fhir, issue_token

ROOT = Path(__file__).resolve().parents[1]
HEADING = "## A consultation, step by step"
COUNTED = ("Organization", "Patient", "Task", "ServiceRequest", "Provenance", "Communication",
           "ChargeItem", "Slot", "DiagnosticReport")


@pytest.fixture(scope="module")
def loaded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, Summary]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("demo") / "data", workers=1,
                        access_log=False)
    return settings, asyncio.run(load(settings))


@pytest.fixture(scope="module")
def fhir(loaded: tuple[Settings, Summary]) -> Iterator[Fhir]:
    settings, _ = loaded
    with TestClient(create_app(settings),  # type: ignore[arg-type]
                    base_url="http://testserver") as http:
        yield Fhir(http, issue_token(settings))


def read(fhir: Fhir, path: str, **params: str) -> dict[str, Any]:
    r = fhir.get(path, params=params or None)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def total(fhir: Fhir, type_: str, **params: str) -> int:
    return int(read(fhir, type_, _summary="count", **params)["total"])


def search(fhir: Fhir, type_: str, **params: str) -> list[dict[str, Any]]:
    return [e["resource"] for e in read(fhir, type_, _count="500", **params).get("entry", [])]


# -- what is loaded -------------------------------------------------------------------------------

def test_the_network(fhir: Fhir, loaded: tuple[Settings, Summary]) -> None:
    _, summary = loaded
    assert not summary.already_loaded
    centre = read(fhir, "Organization/regional-centre")
    assert centre["name"] == "内蒙古自治区远程医学中心"
    assert centre["alias"] == ["Inner Mongolia Regional Telemedicine Centre"]
    assert model.extension_value(centre, model.EXT_CARE_LEVEL, "Coding")["code"] == "3"
    assert read(fhir, "Organization/tehran-hospital")["name"] == "بیمارستان امام خمینی تهران"
    levels = {o["id"]: model.extension_value(o, model.EXT_CARE_LEVEL, "Coding")["code"]
              for o in search(fhir, "Organization")}
    assert {"1", "2", "3"} <= set(levels.values())
    assert total(fhir, "Organization") == 8
    # names in the patients' own script and in Latin letters
    found = search(fhir, "Patient", name="王秀英")
    assert [p["id"] for p in found] == ["wang-xiuying"]
    assert [p["id"] for p in search(fhir, "Patient", name="Rezaei")] == ["rezaei"]
    persian = read(fhir, "Patient/rezaei")["name"][0]
    assert persian["family"] == "رضایی"
    # every patient has an active telemedicine consent
    patients = {p["id"] for p in search(fhir, "Patient")}
    consented = {c["patient"]["reference"].split("/")[1] for c in search(
        fhir, "Consent", status="active",
        category=f"{model.CONSENT_CATEGORY}|telemedicine-consultation")}
    assert len(patients) == 16 and patients == consented
    # the active experts, by specialty, from the public pool listing
    pool = fhir.get("PractitionerRole/$pool", params={"specialty": "cardiology"}, token=None)
    assert pool.status_code == 200, pool.text
    listed = {e["resource"]["id"] for e in pool.json()["entry"]
              if e["search"]["mode"] == "match"}
    assert listed == {"expert-cardiology", "expert-cardiology-2", "expert-tehran-cardiology"}
    nominated = read(fhir, "PractitionerRole/expert-oncology")
    assert model.extension_value(nominated, model.EXT_POOL_STATUS, "Coding")["code"] == \
        "nominated"


def test_tasks_in_every_state_and_some_overdue(fhir: Fhir) -> None:
    tasks = search(fhir, "Task")
    states = {t["status"] for t in tasks}
    assert {"requested", "received", "accepted", "in-progress", "completed", "rejected",
            "cancelled"} <= states
    by_id = {t["id"]: t for t in tasks}
    assert by_id["consult-requested"]["status"] == "requested"
    assert by_id["consult-requested"]["owner"] == {"reference": "Organization/regional-centre"}
    assert by_id["consult-rejected"]["statusReason"]["coding"][0]["code"] == \
        "records-not-acceptable"
    assert by_id["consult-cancelled"]["statusReason"]["coding"][0]["code"] == "patient-improved"
    assert by_id["consult-clarification"]["businessStatus"]["coding"][0]["code"] == \
        "awaiting-information"
    assert by_id["consult-completed"]["businessStatus"]["coding"][0]["code"] == "rated"
    referrals = [t for t in tasks if model.has_code(t["code"], model.CONSULTATION_TYPE,
                                                    "referral")]
    assert len(referrals) == 4
    # an urgent request from the same region is due an expert within 2 h: filed 6 h ago, none
    overdue = read(fhir, "Task/$overdue")
    late = {e["resource"]["id"] for e in overdue.get("entry", [])}
    assert {"consult-urgent", "consult-overdue", "consult-clarification"} <= late
    assert "consult-requested" not in late and "consult-completed" not in late
    # the session booked for tomorrow holds a busy Slot and charged the inviting hospital
    scheduled = by_id["consult-scheduled"]
    assert scheduled["businessStatus"]["coding"][0]["code"] == "scheduled"
    charges = search(fhir, "ChargeItem", subject="Patient/hu-jun")
    assert [c["status"] for c in charges] == ["billable"]
    refunded = search(fhir, "ChargeItem", subject="Patient/ma-jun")
    assert [c["status"] for c in refunded] == ["entered-in-error"]


def test_signed_reports_verify(fhir: Fhir) -> None:
    for report_id, signer in (("report-completed", "Practitioner/dr-bater"),
                              ("report-tehran-completed", "Practitioner/dr-hosseini-maryam")):
        r = fhir.get(f"DiagnosticReport/{report_id}/$verify", token=None)
        assert r.status_code == 200, r.text
        params = {p["name"]: p for p in r.json()["parameter"]}
        assert params["valid"]["valueBoolean"] is True
        assert params["changed"]["valueBoolean"] is False
        assert params["signer"]["valueReference"] == {"reference": signer}
    # signed means immutable
    report = read(fhir, "DiagnosticReport/report-completed")
    report["conclusion"] = "changed"
    assert fhir.put("DiagnosticReport/report-completed", report).status_code == 409


def test_every_change_left_its_trail(fhir: Fhir) -> None:
    trail = search(fhir, "Provenance", target="Task/consult-completed")
    activities = {(p.get("activity") or {}).get("text") for p in trail}
    assert "status accepted -> in-progress" in activities
    assert "status in-progress -> completed" in activities
    who = {p["agent"][0]["who"].get("reference") for p in trail}
    assert {"PractitionerRole/coordinator-regional", "PractitionerRole/expert-cardiology"} <= who


def test_loading_again_changes_nothing(fhir: Fhir, loaded: tuple[Settings, Summary]) -> None:
    settings, _ = loaded
    before = {t: total(fhir, t) for t in COUNTED}
    again = asyncio.run(load(settings))
    assert again.already_loaded
    assert {t: total(fhir, t) for t in COUNTED} == before
    assert read(fhir, f"List/{MARKER}")["entry"]


# -- next to a running server, through the command ----------------------------------------------

def consilium(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "server.cli", *args], capture_output=True,
                          text=True, timeout=120, cwd=ROOT)


def test_loads_while_a_server_runs(start_server: Any) -> None:
    server = start_server()
    settings = Settings(data_dir=server.data_dir)
    headers = {"Authorization": f"Bearer {issue_token(settings)}"}
    done = consilium("demo", "--data-dir", str(server.data_dir), "--quiet")
    assert done.returncode == 0, done.stderr
    assert "loaded the demo network" in done.stdout
    r = httpx.get(f"{server.base}/fhir/Task/consult-in-progress", headers=headers)
    assert r.status_code == 200 and r.json()["status"] == "in-progress"
    count = httpx.get(f"{server.base}/fhir/Provenance", params={"_summary": "count"},
                      headers=headers).json()["total"]
    again = consilium("demo", "--data-dir", str(server.data_dir), "--quiet")
    assert again.returncode == 0, again.stderr
    assert "already loaded" in again.stdout
    assert httpx.get(f"{server.base}/fhir/Provenance", params={"_summary": "count"},
                     headers=headers).json()["total"] == count


def test_a_partial_load_is_refused(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data", workers=1, access_log=False)
    with TestClient(create_app(settings)) as http:  # type: ignore[arg-type]
        fhir = Fhir(http, issue_token(settings))
        org = {"resourceType": "Organization", "id": "regional-centre", "name": "elsewhere"}
        assert fhir.put("Organization/regional-centre", org).status_code == 201
    done = consilium("demo", "--data-dir", str(settings.data_dir), "--quiet")
    assert done.returncode == 1
    assert "new data dir" in done.stderr


# -- the README walk-through --------------------------------------------------------------------

def walkthrough() -> str | None:
    """The README section's shell blocks after the first, or None if there is no section."""
    path = Path(os.environ.get("CONSILIUM_README") or ROOT / "README.md")
    text = path.read_text(encoding="utf-8")
    if path.name == "README.md":
        if HEADING not in text:
            return None
        text = text.split(HEADING, 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    return "\n".join(blocks[1:]) if len(blocks) > 1 else None


def test_readme_walkthrough(start_server: Any, tmp_path: Path) -> None:
    script = walkthrough()
    if script is None:
        pytest.skip(f"README.md has no '{HEADING}' section yet")
    missing = [tool for tool in ("bash", "curl", "jq", "date") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"the walk-through needs {', '.join(missing)}")
    server = start_server()
    done = consilium("demo", "--data-dir", str(server.data_dir), "--quiet")
    assert done.returncode == 0, done.stderr
    script = script.replace("http://127.0.0.1:8080", server.base).replace(
        "--data-dir data", f"--data-dir {server.data_dir}")
    (tmp_path / ".curlrc").write_text("--fail-with-body\n--silent\n--show-error\n")
    env = {**os.environ, "CURL_HOME": str(tmp_path),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    run = subprocess.run(["bash", "-c", "set -euo pipefail\n" + script], capture_output=True,
                         text=True, timeout=180, env=env, cwd=tmp_path)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    settings = Settings(data_dir=server.data_dir)
    headers = {"Authorization": f"Bearer {issue_token(settings)}"}
    task = httpx.get(f"{server.base}/fhir/Task/consult-requested", headers=headers).json()
    assert task["status"] == "completed"
    assert task["output"][-1]["valueReference"] == {
        "reference": "DiagnosticReport/report-requested"}
    assert '"valueBoolean":true' in run.stdout.replace(" ", "")  # $verify said valid

"""The API through real FHIR client libraries (fhirpy, fhirclient) against a server process."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from fhirclient import server as fc_server
from fhirclient.models.observation import Observation as FcObservation
from fhirclient.models.patient import Patient as FcPatient
from fhirpy import SyncFHIRClient
from fhirpy.base.exceptions import (
    AuthorizationError,
    ForbiddenError,
    MultipleResourcesFound,
    OperationOutcome,
    ResourceNotFound,
)

from server.config import Settings
from tests.conftest import ServerProcess, free_port, issue_token

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    data = tmp_path_factory.mktemp("clients") / "data"
    data.mkdir()
    proc = ServerProcess(data, free_port(), ["--workers", "1", "--no-access-log"], {})
    proc.wait_ready()
    yield proc.base + "/fhir", data
    proc.stop(signal.SIGTERM)


@pytest.fixture
def fhirpy(running: tuple[str, Path]) -> SyncFHIRClient:
    base, data = running
    return SyncFHIRClient(base, authorization=f"Bearer {issue_token(Settings(data_dir=data))}")


@pytest.fixture
def fhirclient(running: tuple[str, Path]) -> fc_server.FHIRServer:
    base, data = running
    srv = fc_server.FHIRServer(None, base_uri=base + "/")
    srv.session.headers["Authorization"] = f"Bearer {issue_token(Settings(data_dir=data))}"
    return srv


def _patient(client: SyncFHIRClient, mrn: str, **extra: object):  # type: ignore[no-untyped-def]
    fields = {"identifier": [{"system": "urn:mrn", "value": mrn}],
              "name": [{"family": "Rahimi", "given": ["Sara"]}], "gender": "female", **extra}
    return client.resource("Patient", **fields)


# -- fhirpy ---------------------------------------------------------------------------------------

def test_fhirpy_crud_and_versions(fhirpy: SyncFHIRClient) -> None:
    p = _patient(fhirpy, "fp-1")
    p.save()
    assert p.id and p["meta"]["versionId"] == "1"
    p["birthDate"] = "1980-05-06"
    p.save()
    assert p["meta"]["versionId"] == "2"
    fetched = fhirpy.reference("Patient", p.id).to_resource()
    assert fetched["birthDate"] == "1980-05-06"
    v1 = fhirpy.execute(f"Patient/{p.id}/_history/1", method="get")
    assert "birthDate" not in v1 and v1["meta"]["versionId"] == "1"
    hist = fhirpy.execute(f"Patient/{p.id}/_history", method="get")
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == ["2", "1"]
    patched = fhirpy.patch("Patient", p.id, gender="other")  # JSON merge patch
    assert patched["gender"] == "other" and patched["meta"]["versionId"] == "3"
    p.refresh()
    assert p["gender"] == "other"
    p.delete()
    with pytest.raises(ResourceNotFound):  # 410 Gone
        fhirpy.reference("Patient", p.id).to_resource()


def test_fhirpy_conditional_interactions(fhirpy: SyncFHIRClient) -> None:
    search = fhirpy.resources("Patient").search(identifier="urn:mrn|fp-cond")
    created, was_created = search.get_or_create(_patient(fhirpy, "fp-cond"))
    assert was_created
    again, was_created = search.get_or_create(_patient(fhirpy, "fp-cond"))
    assert not was_created and again.id == created.id
    updated, was_created = search.update(_patient(fhirpy, "fp-cond", gender="male"))
    assert not was_created and updated.id == created.id and updated["gender"] == "male"
    _patient(fhirpy, "fp-cond").save()  # a second match
    with pytest.raises(MultipleResourcesFound):  # 412
        search.get_or_create(_patient(fhirpy, "fp-cond"))
    with pytest.raises(MultipleResourcesFound):
        search.update(_patient(fhirpy, "fp-cond"))


def test_fhirpy_error_paths(fhirpy: SyncFHIRClient, running: tuple[str, Path]) -> None:
    base, data = running
    with pytest.raises(ResourceNotFound):
        fhirpy.reference("Patient", "no-such-patient").to_resource()
    with pytest.raises(OperationOutcome) as bad:
        fhirpy.resource("Patient", gender="robot").save()
    assert bad.value.resource["issue"][0]["code"] == "code-invalid"
    with pytest.raises(OperationOutcome):
        fhirpy.resource("Patient", shoeSize=44).save()
    p = _patient(fhirpy, "fp-err")
    p.save()
    stale = SyncFHIRClient(base, authorization=fhirpy.authorization,
                           extra_headers={"If-Match": 'W/"7"'})
    with pytest.raises(MultipleResourcesFound):  # fhirpy reports every 412 this way
        stale.resource("Patient", **{**p.serialize(), "active": True}).save()
    no_token = SyncFHIRClient(base)
    with pytest.raises(AuthorizationError):
        no_token.reference("Patient", p.id).to_resource()
    reader = SyncFHIRClient(base, authorization="Bearer " + issue_token(
        Settings(data_dir=data), "system/*.read"))
    with pytest.raises(ForbiddenError):
        reader.resource("Patient", gender="male").save()
    assert fhirpy.reference("Patient", p.id).to_resource()["meta"]["versionId"] == "1"


# -- fhirclient (R4 models) -----------------------------------------------------------------------

def test_fhirclient_crud_with_r4_models(fhirclient: fc_server.FHIRServer) -> None:
    patient = FcPatient({"resourceType": "Patient", "name": [{"family": "王", "given": ["芳"]}],
                         "gender": "female", "birthDate": "1990-02-03"})
    created = patient.create(fhirclient)
    pid = created["id"]
    read = FcPatient.read(pid, fhirclient)
    assert read.name[0].family == "王"
    assert read.meta.versionId == "1"
    read.gender = "other"
    read.update(fhirclient)
    assert FcPatient.read(pid, fhirclient).meta.versionId == "2"
    obs = FcObservation({"resourceType": "Observation", "status": "final",
                         "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4"}]},
                         "subject": {"reference": f"Patient/{pid}"},
                         "valueQuantity": {"value": 72, "unit": "/min",
                                           "system": "http://unitsofmeasure.org",
                                           "code": "/min"}})
    oid = obs.create(fhirclient)["id"]
    back = FcObservation.read(oid, fhirclient)
    assert back.subject.reference == f"Patient/{pid}"
    assert back.valueQuantity.value == 72
    read.delete(fhirclient)
    with pytest.raises(requests.HTTPError) as gone:
        FcPatient.read(pid, fhirclient)
    assert gone.value.response.status_code == 410


def test_fhirclient_error_paths(fhirclient: fc_server.FHIRServer) -> None:
    with pytest.raises(fc_server.FHIRNotFoundException) as missing:
        FcPatient.read("not-there", fhirclient)
    assert missing.value.response.status_code == 404
    assert missing.value.response.json()["resourceType"] == "OperationOutcome"
    response = fhirclient.session.post(fhirclient.base_uri + "Patient",
                                       json={"resourceType": "Patient", "birthDate": "tomorrow"},
                                       headers={"Content-Type": "application/fhir+json"})
    assert response.status_code == 400
    assert response.json()["issue"][0]["expression"] == ["Patient.birthDate"]

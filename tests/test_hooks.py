"""Write hooks (server.fhir.hooks): rules run inside the write's transaction."""

from __future__ import annotations

import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.fhir.errors import unprocessable
from server.fhir.hooks import WriteEvent
from tests.conftest import Fhir, issue_token


@pytest.fixture
def ruled(settings):  # type: ignore[no-untyped-def]
    app = create_app(settings)
    hooks = app.fhir.context.hooks
    seen: list[WriteEvent] = []

    def refuse_robots(event: WriteEvent) -> None:
        seen.append(event)
        if event.resource and event.resource.get("name", [{}])[0].get("family") == "Robot":
            raise unprocessable("robots are not patients")
        if event.resource is not None:
            event.resource["active"] = True  # the rule changes the content

    def flag_after(event: WriteEvent) -> None:
        assert event.version is not None
        event.write({"resourceType": "Flag", "status": "active", "code": {"text": "new"},
                     "subject": {"reference": f"Patient/{event.id}"}})

    hooks.before("Patient", refuse_robots)
    hooks.after("Patient", flag_after)
    with TestClient(app) as http:
        yield Fhir(http, issue_token(settings, "system/Patient.cruds")), Fhir(
            http, issue_token(settings)), seen


def test_hooks_change_refuse_and_write_more(ruled) -> None:  # type: ignore[no-untyped-def]
    patient_only, admin, seen = ruled
    r = patient_only.post("Patient", {"resourceType": "Patient", "name": [{"family": "Ng"}]})
    assert r.status_code == 201
    pid = r.json()["id"]
    assert r.json()["active"] is True
    assert seen[-1].method == "POST" and seen[-1].current is None
    # the rule's own write needs no Flag scope from the caller
    flags = admin.get("Flag", params={"subject": f"Patient/{pid}"}).json()
    assert flags["total"] == 1
    # the search index sees what the rule changed
    assert admin.get("Patient", params={"active": "true", "_id": pid}).json()["total"] == 1
    robot = patient_only.post("Patient", {"resourceType": "Patient",
                                          "name": [{"family": "Robot"}]})
    assert robot.status_code == 422
    assert admin.get("Flag").json()["total"] == 1  # nothing of the refused write remains
    deleted = patient_only.delete(f"Patient/{pid}")
    assert deleted.status_code == 200
    assert seen[-1].method == "DELETE" and seen[-1].resource is None
    assert seen[-1].previous is not None and seen[-1].previous["id"] == pid

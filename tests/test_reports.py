"""Signed consultation reports through HTTP: $sign, $verify, the signer's JWKS, immutability,
corrections and the delivery notice.

Expectations come from the specifications: RFC 7515 (JWS; appendix F: detached content), RFC 7518
section 3.4 (ES256: P-256 and SHA-256, the signature is r || s), RFC 7517 (JWK Set), and FHIR R4
Provenance.signature (type ASTM E1762 1.2.840.10065.1.12.1.1 author's signature, sigFormat,
targetFormat, data base64Binary).
"""

from __future__ import annotations

import base64
import json
import sqlite3
import stat
from datetime import UTC, datetime
from typing import Any

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from starlette.testclient import TestClient

from server.app import create_app
from server.clock import FixedClock
from server.workflow import model
from tests.conftest import Fhir, issue_token
from tests.referral_network import Network, build

SIGNATURE_TYPE = "1.2.840.10065.1.12.1.1"
NOW = datetime(2026, 7, 10, 2, 0, tzinfo=UTC)


@pytest.fixture
def net(settings):  # type: ignore[no-untyped-def]
    app = create_app(settings, clock=FixedClock(NOW))
    with TestClient(app) as http:
        yield build(Fhir(http, issue_token(settings)), settings)


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def canonical(resource: dict[str, Any]) -> bytes:
    """Keys sorted, no whitespace, UTF-8, without meta and text (the domain contract)."""
    content = {k: v for k, v in resource.items() if k not in ("meta", "text")}
    return json.dumps(content, sort_keys=True, separators=(",", ":"),
                      ensure_ascii=False).encode()


def report(net: Network, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "resourceType": "DiagnosticReport", "status": "final",
        "category": [{"coding": [{"system": model.CONSULTATION_TYPE,
                                  "code": "teleconsultation"}]}],
        "code": {"text": "Teleconsultation report"},
        "subject": {"reference": net.ref("patient")},
        "issued": "2026-07-10T09:30:00+08:00",
        "performer": [{"reference": net.ref("expert")}],
        "conclusion": "Community-acquired pneumonia; continue ceftriaxone 2 g daily.",
        "text": {"status": "generated", "div": "<div xmlns=\"http://www.w3.org/1999/xhtml\">"
                                               "Report</div>"},
    }
    body.update(extra)
    r = net.fhir.post("DiagnosticReport", body)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def sign(net: Network, report_id: str, as_: str = "expert") -> Any:
    return net.as_user(as_).post(f"DiagnosticReport/{report_id}/$sign")


def params(body: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for p in body["parameter"]:
        value = next((v for k, v in p.items() if k.startswith("value")), p.get("part"))
        out.setdefault(p["name"], value)
    return out


def verify(net: Network, report_id: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    if body is None:
        r = net.fhir.get(f"DiagnosticReport/{report_id}/$verify", token=None)
    else:
        r = net.fhir.post(f"DiagnosticReport/{report_id}/$verify", body, token=None)
    assert r.status_code == 200, r.text
    return params(r.json())


def provenances(net: Network, report_id: str) -> list[dict[str, Any]]:
    bundle = net.fhir.get("Provenance", params={"target": f"DiagnosticReport/{report_id}"}).json()
    return [e["resource"] for e in bundle.get("entry", [])]


def tamper(settings: Any, type_: str, id_: str, change: Any) -> None:
    """Change the stored current version of a resource behind the server's back."""
    con = sqlite3.connect(settings.sqlite_path)
    try:
        seq, body = con.execute(
            "SELECT v.seq, v.body FROM resource r JOIN version v ON v.seq = r.seq "
            "WHERE r.type = ? AND r.id = ?", (type_, id_)).fetchone()
        resource = json.loads(body)
        change(resource)
        con.execute("UPDATE version SET body = ? WHERE seq = ?",
                    (json.dumps(resource).encode(), seq))
        con.commit()
    finally:
        con.close()


# -- signing --------------------------------------------------------------------------------------

def test_sign_makes_a_provenance_with_a_detached_jws_that_verifies_with_the_jwks(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    r = sign(net, dr["id"])
    assert r.status_code == 201, r.text
    prov = r.json()
    assert r.headers["location"].endswith(f"/Provenance/{prov['id']}/_history/1")
    assert prov["target"] == [{"reference": f"DiagnosticReport/{dr['id']}/_history/1"}]
    assert prov["recorded"] == "2026-07-10T02:00:00Z"
    sig = prov["signature"][0]
    assert sig["type"][0]["code"] == SIGNATURE_TYPE
    assert sig["type"][0]["system"] == "urn:iso-astm:E1762-95:2013"
    assert sig["sigFormat"] == "application/jose"
    assert sig["targetFormat"] == "application/fhir+json"
    assert sig["who"] == {"reference": net.ref("expert-practitioner")}
    assert sig["onBehalfOf"] == {"reference": net.ref("expert")}
    assert prov["agent"][0]["who"] == {"reference": net.ref("expert")}

    jws = base64.b64decode(sig["data"]).decode()
    protected, payload, signature = jws.split(".")
    assert payload == ""  # RFC 7515 appendix F: the content is detached
    header = json.loads(b64url_decode(protected))
    assert header["alg"] == "ES256"
    assert header["target"] == f"DiagnosticReport/{dr['id']}/_history/1"

    # the published key verifies the signature over the report's canonical JSON
    pid = net.ref("expert-practitioner").split("/")[1]
    keys = net.fhir.get(f"Practitioner/{pid}/$keys", token=None)
    assert keys.status_code == 200
    assert keys.headers["content-type"].startswith("application/jwk-set+json")
    jwk = next(k for k in keys.json()["keys"] if k["kid"] == header["kid"])
    assert jwk["kty"] == "EC" and jwk["crv"] == "P-256" and "d" not in jwk
    public = ec.EllipticCurvePublicNumbers(
        int.from_bytes(b64url_decode(jwk["x"]), "big"),
        int.from_bytes(b64url_decode(jwk["y"]), "big"), ec.SECP256R1()).public_key()
    stored = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    raw = b64url_decode(signature)
    assert len(raw) == 64
    der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
    signing_input = f"{protected}.{b64url(canonical(stored))}".encode()
    public.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))  # raises if it does not hold
    with pytest.raises(InvalidSignature):
        changed = {**stored, "conclusion": "Nothing wrong."}
        public.verify(der, f"{protected}.{b64url(canonical(changed))}".encode(),
                      ec.ECDSA(hashes.SHA256()))


def test_verify_is_public_and_names_signer_and_version(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    unsigned = verify(net, dr["id"])
    assert unsigned["valid"] is False and "not signed" in unsigned["reason"]
    assert sign(net, dr["id"]).status_code == 201
    out = verify(net, dr["id"])
    assert out["valid"] is True
    assert out["signer"] == {"reference": net.ref("expert-practitioner")}
    assert out["signedVersion"] == f"DiagnosticReport/{dr['id']}/_history/1"
    assert out["changed"] is False
    # with a token too, and through POST with a copy of the report
    with_token = net.fhir.get(f"DiagnosticReport/{dr['id']}/$verify")
    assert params(with_token.json())["valid"] is True
    copy = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    assert verify(net, dr["id"], {"resourceType": "Parameters", "parameter": [
        {"name": "resource", "resource": copy}]})["valid"] is True


def test_keys_are_per_practitioner_private_files(net) -> None:  # type: ignore[no-untyped-def]
    pid = net.ref("expert-practitioner").split("/")[1]
    other = net.ref("surgeon-practitioner").split("/")[1]
    assert net.fhir.get(f"Practitioner/{pid}/$keys", token=None).json() == {"keys": []}
    assert sign(net, report(net)["id"]).status_code == 201
    directory = net.settings.keys_dir / "practitioners" / pid
    pems = list(directory.glob("*.pem"))
    assert len(pems) == 1
    assert stat.S_IMODE(pems[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    assert net.fhir.get(f"Practitioner/{other}/$keys", token=None).json() == {"keys": []}
    assert net.fhir.get("Practitioner/nobody/$keys", token=None).status_code == 404


def test_rotation_keeps_old_signatures_valid(net) -> None:  # type: ignore[no-untyped-def]
    from server.workflow import signing

    first = report(net)
    assert sign(net, first["id"]).status_code == 201
    pid = net.ref("expert-practitioner").split("/")[1]
    signing.rotate(net.settings.keys_dir, pid)
    second = report(net)
    assert sign(net, second["id"]).status_code == 201
    assert len(net.fhir.get(f"Practitioner/{pid}/$keys", token=None).json()["keys"]) == 2
    assert verify(net, first["id"])["valid"] is True
    assert verify(net, second["id"])["valid"] is True
    kids = {json.loads(b64url_decode(base64.b64decode(
        provenances(net, d["id"])[0]["signature"][0]["data"]).decode().split(".")[0]))["kid"]
        for d in (first, second)}
    assert len(kids) == 2


def test_who_may_sign_and_what(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    r = sign(net, dr["id"], as_="surgeon")  # a colleague at the same centre, not the performer
    assert r.status_code == 403 and "[report-signer]" in r.text
    # the performer's Practitioner may sign as well as the PractitionerRole
    assert sign(net, dr["id"], as_="expert-practitioner").status_code == 201
    again = sign(net, dr["id"])
    assert again.status_code == 409
    draft = report(net, status="preliminary")
    r = sign(net, draft["id"])
    assert r.status_code == 422 and "[report-not-final]" in r.text
    assert provenances(net, draft["id"]) == []
    assert len(provenances(net, dr["id"])) == 1
    assert net.fhir.post("DiagnosticReport/missing/$sign").status_code == 404


def test_a_signed_report_cannot_change(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    assert sign(net, dr["id"]).status_code == 201
    before = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    changed = {**before, "conclusion": "Nothing wrong."}
    assert net.fhir.put(f"DiagnosticReport/{dr['id']}", changed).status_code == 409
    patched = net.fhir.patch(f"DiagnosticReport/{dr['id']}",
                             [{"op": "replace", "path": "/conclusion", "value": "Nothing."}])
    assert patched.status_code == 409
    assert net.fhir.delete(f"DiagnosticReport/{dr['id']}").status_code == 409
    after = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    assert after == before
    history = net.fhir.get(f"DiagnosticReport/{dr['id']}/_history").json()
    assert history["total"] == 1
    # nor can its signature record be changed or removed
    prov = provenances(net, dr["id"])[0]
    assert net.fhir.put(f"Provenance/{prov['id']}", {**prov, "recorded":
                                                     "2026-07-11T00:00:00Z"}).status_code == 409
    assert net.fhir.delete(f"Provenance/{prov['id']}").status_code == 409
    assert verify(net, dr["id"])["valid"] is True


def test_an_unsigned_report_may_still_change(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net, status="preliminary")
    r = net.fhir.put(f"DiagnosticReport/{dr['id']}", {**dr, "status": "final"})
    assert r.status_code == 200
    assert r.json()["meta"]["versionId"] == "2"


# -- tampering ------------------------------------------------------------------------------------

def test_a_report_changed_in_the_database_fails_verification(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    assert sign(net, dr["id"]).status_code == 201
    tamper(net.settings, "DiagnosticReport", dr["id"],
           lambda r: r.update(conclusion="No pneumonia; discharge."))
    assert net.fhir.get(f"DiagnosticReport/{dr['id']}").json()["conclusion"].startswith("No ")
    out = verify(net, dr["id"])
    assert out["valid"] is False
    assert out["changed"] is True
    assert "content" in out["reason"]


def test_a_modified_copy_fails_verification(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    assert sign(net, dr["id"]).status_code == 201
    copy = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    copy["conclusion"] = "Nothing wrong."
    out = verify(net, dr["id"], {"resourceType": "Parameters",
                                 "parameter": [{"name": "resource", "resource": copy}]})
    assert out["valid"] is False
    assert out["changed"] is False  # the stored report is as signed
    # meta and text are not signed: a copy with other metadata or narrative still verifies
    copy = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    copy["meta"] = {"versionId": "7", "tag": [{"code": "copied"}]}
    copy.pop("text")
    assert verify(net, dr["id"], copy)["valid"] is True


def test_a_signature_by_another_key_fails_verification(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    assert sign(net, dr["id"]).status_code == 201
    prov = provenances(net, dr["id"])[0]
    jws = base64.b64decode(prov["signature"][0]["data"]).decode()
    protected = jws.split(".")[0]
    stored = net.fhir.get(f"DiagnosticReport/{dr['id']}").json()
    foreign = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    r_, s_ = decode_dss_signature(foreign.sign(
        f"{protected}.{b64url(canonical(stored))}".encode(), ec.ECDSA(hashes.SHA256())))
    forged = f"{protected}..{b64url(r_.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"

    def swap(p: dict[str, Any]) -> None:
        p["signature"][0]["data"] = base64.b64encode(forged.encode()).decode()

    tamper(net.settings, "Provenance", prov["id"], swap)
    out = verify(net, dr["id"])
    assert out["valid"] is False
    assert "key" in out["reason"]
    assert out["changed"] is False


def test_a_forged_signature_record_is_refused(net) -> None:  # type: ignore[no-untyped-def]
    dr = report(net)
    foreign = ec.generate_private_key(ec.SECP256R1())
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    target = f"DiagnosticReport/{dr['id']}/_history/1"
    protected = b64url(json.dumps({"alg": "ES256", "kid": "made-up", "target": target}).encode())
    r_, s_ = decode_dss_signature(foreign.sign(
        f"{protected}.{b64url(canonical(dr))}".encode(), ec.ECDSA(hashes.SHA256())))
    jws = f"{protected}..{b64url(r_.to_bytes(32, 'big') + s_.to_bytes(32, 'big'))}"
    prov = {"resourceType": "Provenance", "target": [{"reference": target}],
            "recorded": "2026-07-10T02:00:00Z",
            "agent": [{"who": {"reference": net.ref("expert")}}],
            "signature": [{"type": [{"system": "urn:iso-astm:E1762-95:2013",
                                     "code": SIGNATURE_TYPE}],
                           "when": "2026-07-10T02:00:00Z",
                           "who": {"reference": net.ref("expert-practitioner")},
                           "sigFormat": "application/jose",
                           "data": base64.b64encode(jws.encode()).decode()}]}
    r = net.fhir.post("Provenance", prov)
    assert r.status_code == 422 and "[signature-invalid]" in r.text
    assert provenances(net, dr["id"]) == []
    # so the report is still unsigned and may change
    assert net.fhir.put(f"DiagnosticReport/{dr['id']}",
                        {**dr, "conclusion": "Revised."}).status_code == 200


# -- corrections and delivery ---------------------------------------------------------------------

def consultation(net: Network, report_id: str | None = None) -> tuple[dict[str, Any], dict]:
    """A consultation request (still a draft, so no consultation rules apply to it) and a Task
    that carries the report when done."""
    sr = net.fhir.post("ServiceRequest", {
        "resourceType": "ServiceRequest", "status": "draft", "intent": "order",
        "subject": {"reference": net.ref("patient")},
        "requester": {"reference": net.ref("internist")},
        "performer": [{"reference": net.ref("centre")}]}).json()
    task = net.fhir.post("Task", {
        "resourceType": "Task", "status": "in-progress", "intent": "order",
        "focus": {"reference": f"ServiceRequest/{sr['id']}"},
        "for": {"reference": net.ref("patient")},
        "requester": {"reference": net.ref("internist")},
        "owner": {"reference": net.ref("expert")}}).json()
    return sr, task


def communications(net: Network) -> list[dict[str, Any]]:
    bundle = net.fhir.get("Communication").json()
    return [e["resource"] for e in bundle.get("entry", [])]


def complete(net: Network, task: dict[str, Any], report_id: str) -> dict[str, Any]:
    task = net.fhir.get(f"Task/{task['id']}").json()
    task["status"] = "completed"
    task["output"] = [{"type": {"text": "consultation report"},
                       "valueReference": {"reference": f"DiagnosticReport/{report_id}"}}]
    r = net.fhir.put(f"Task/{task['id']}", task)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_completion_notifies_the_inviting_organisation(net) -> None:  # type: ignore[no-untyped-def]
    sr, task = consultation(net)
    dr = report(net, basedOn=[{"reference": f"ServiceRequest/{sr['id']}"}])
    assert sign(net, dr["id"]).status_code == 201
    assert communications(net) == []
    done = complete(net, task, dr["id"])
    [notice] = communications(net)
    assert notice["status"] == "completed"
    assert notice["category"][0]["coding"][0] == {"system": model.COMMUNICATION_KIND,
                                                  "code": "report-delivered"}
    assert notice["recipient"] == [{"reference": net.ref("city")}]
    assert {"reference": f"DiagnosticReport/{dr['id']}"} in notice["about"]
    assert {"reference": f"Task/{task['id']}"} in notice["about"]
    assert notice["sent"] == "2026-07-10T02:00:00Z"
    assert notice["subject"] == {"reference": net.ref("patient")}
    # a later change of the completed Task does not notify again
    done["note"] = [{"text": "archived"}]
    assert net.fhir.put(f"Task/{task['id']}", done).status_code == 200
    assert len(communications(net)) == 1


def test_a_correction_replaces_a_signed_report(net) -> None:  # type: ignore[no-untyped-def]
    sr, task = consultation(net)
    based = [{"reference": f"ServiceRequest/{sr['id']}"}]
    old = report(net, basedOn=based)
    assert sign(net, old["id"]).status_code == 201
    complete(net, task, old["id"])
    replaces = [{"url": model.EXT_REPLACES,
                 "valueReference": {"reference": f"DiagnosticReport/{old['id']}"}}]
    new = report(net, basedOn=based, extension=replaces,
                 conclusion="Community-acquired pneumonia; switch to levofloxacin.")
    # the correction's creation is recorded with the replaced version as the revised entity
    [record] = provenances(net, new["id"])
    assert record["target"] == [{"reference": f"DiagnosticReport/{new['id']}/_history/1"}]
    assert record["entity"] == [{"role": "revision", "what": {
        "reference": f"DiagnosticReport/{old['id']}/_history/1"}}]
    # once signed, the consultation lists the correction and the inviting side hears of it
    assert sign(net, new["id"]).status_code == 201
    outputs = net.fhir.get(f"Task/{task['id']}").json()["output"]
    assert [o["valueReference"]["reference"] for o in outputs] == [
        f"DiagnosticReport/{new['id']}"]
    notices = communications(net)
    assert len(notices) == 2
    assert any({"reference": f"DiagnosticReport/{new['id']}"} in n["about"] for n in notices)
    # the old report is untouched and its signature still holds
    assert net.fhir.get(f"DiagnosticReport/{old['id']}").json()["meta"]["versionId"] == "1"
    assert verify(net, old["id"])["valid"] is True
    assert verify(net, new["id"])["valid"] is True


def test_a_correction_must_name_an_existing_report_of_the_same_patient(net) -> None:  # type: ignore[no-untyped-def]
    old = report(net)

    def replacing(ref: str, patient: str = "patient") -> Any:
        return net.fhir.post("DiagnosticReport", {
            "resourceType": "DiagnosticReport", "status": "final", "code": {"text": "x"},
            "subject": {"reference": net.ref(patient)},
            "extension": [{"url": model.EXT_REPLACES, "valueReference": {"reference": ref}}]})

    r = replacing("DiagnosticReport/nothing-here")
    assert r.status_code == 422 and "[report-replaces]" in r.text
    r = replacing(f"DiagnosticReport/{old['id']}", patient="other-patient")
    assert r.status_code == 422 and "[report-replaces]" in r.text
    total = net.fhir.get("DiagnosticReport", params={"_summary": "count"}).json()["total"]
    assert total == 1

"""Consultation reports: the expert's signature, its verification, immutability, corrections and
the notice to the inviting side.

- ``DiagnosticReport/[id]/$sign`` (POST): the report's performer signs the current version. The
  signature is a Provenance (target ``DiagnosticReport/id/_history/v``, ``signature`` of type
  ASTM E1762 author, ``who`` the Practitioner whose key signed, ``sigFormat`` application/jose,
  ``data`` = base64 of a detached JWS over the report's canonical JSON; see
  server.workflow.signing). Only a ``final`` report can be signed.
- ``DiagnosticReport/[id]/$verify`` (GET/POST, public): anyone may ask whether the stored report
  (or a copy sent in ``resource``) carries a valid signature, by whom, of which version, and
  whether the stored report changed since.
- ``Practitioner/[id]/$keys`` (GET, public): the practitioner's public keys (JWKS).
- A signed report cannot be updated, patched or deleted (409), and a signature record cannot be
  changed or removed (409). A signature Provenance written through the plain API is accepted only
  if it verifies, so nobody can mark a report signed without the expert's key.
- A correction is a new report with the extension ``replaces`` (model.EXT_REPLACES): its creation
  is recorded by a Provenance whose entity (role ``revision``) is the replaced version. Once the
  correction is signed, the consultation Task that listed the old report lists the new one, and
  if the consultation was already completed the inviting side is notified again.
- When a consultation Task (Task.code other than ``referral``) becomes ``completed`` with a
  DiagnosticReport in its output, the inviting organisation (the organisation of the request's
  requester) gets a Communication ``report-delivered`` about the report and the Task.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from server.auth.guard import unguarded
from server.auth.scopes import Principal
from server.fhir import codec
from server.fhir.errors import FhirError, conflict, invalid, not_found, unprocessable
from server.fhir.hooks import WriteEvent, WriteHooks, store
from server.fhir.prepare import prepare
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.fhir.writes import current_or_error, new_id
from server.search.query import parse
from server.storage.base import ResourceStore, Transaction, Version
from server.workflow import model, signing, trail
from server.workflow.casefile import read

JOSE = "application/jose"
FHIR_JSON = "application/fhir+json"
DOCUMENT_COMPLETION = "http://terminology.hl7.org/CodeSystem/v3-DocumentCompletion"
SIGNABLE_STATUS = "final"


# -- reading helpers -----------------------------------------------------------------------------

def relative(reference: str | None) -> str | None:
    """``Type/id`` of a relative or absolute reference (None if it has no such tail)."""
    if not reference:
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    return "/".join(parts[-2:]) if len(parts) >= 2 else None


def is_referral(task: dict[str, Any] | None) -> bool:
    return model.has_code(task.get("code") if task else None, model.CONSULTATION_TYPE,
                          "referral")


def organization_of_role(tx: Transaction, reference: dict[str, Any] | None) -> str | None:
    """``Organization/x`` of a PractitionerRole reference (or of an Organization reference)."""
    ref = relative((reference or {}).get("reference"))
    if ref is None:
        return None
    if ref.startswith("Organization/"):
        return ref
    role = read(tx, "PractitionerRole", model.reference_id({"reference": ref},
                                                                 "PractitionerRole"))
    org = relative(((role or {}).get("organization") or {}).get("reference"))
    return org if org and org.startswith("Organization/") else None


# -- signatures ----------------------------------------------------------------------------------

def report_signatures(provenance: dict[str, Any]) -> list[dict[str, Any]]:
    """The JWS signatures of a Provenance that targets a DiagnosticReport."""
    if not any((relative(t.get("reference")) or "").startswith("DiagnosticReport/")
               for t in provenance.get("target") or []):
        return []
    return [s for s in provenance.get("signature") or [] if s.get("sigFormat") == JOSE]


def signature_records(tx: Transaction, report_id: str) -> list[tuple[dict[str, Any], Version]]:
    """The signature Provenances of a report (any version), oldest first."""
    query = parse(("Provenance",), [("target", f"DiagnosticReport/{report_id}")])
    out = []
    for v in tx.search(query, None):
        if v.body is None:
            continue
        prov = codec.loads(v.body)
        if report_signatures(prov):
            out.append((prov, v))
    return out


def is_signed(tx: Transaction, report_id: str) -> bool:
    """Whether a report carries a signature record (consultation rules use this too)."""
    return bool(signature_records(tx, report_id))


def _signed_target(provenance: dict[str, Any]) -> tuple[str, int] | None:
    """(report id, version) of a signature Provenance's versioned report target."""
    for t in provenance.get("target") or []:
        parts = (t.get("reference") or "").split("/")
        if len(parts) >= 4 and parts[-4] == "DiagnosticReport" and parts[-2] == "_history" \
                and parts[-1].isdigit():
            return parts[-3], int(parts[-1])
    return None


def _jws_of(signature: dict[str, Any]) -> str:
    try:
        return base64.b64decode(signature.get("data") or "", validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError):
        return ""


def check_signature(keys_dir: Any, signature: dict[str, Any], target: str,
                    report: dict[str, Any]) -> signing.Check:
    """Verify one Provenance signature over ``report`` with the signer's published keys."""
    pid = model.reference_id(signature.get("who"), "Practitioner")
    if pid is None:
        return signing.Check(False, "the signature's who must be the signing Practitioner")
    jws = _jws_of(signature)
    if not jws:
        return signing.Check(False, "the signature data is not a base64-encoded JWS")
    check = signing.verify_detached(jws, signing.canonical_json(report),
                                    signing.public_keys(keys_dir, pid))
    if check.valid and check.target != target:
        return signing.Check(False, f"the signature was made for {check.target}, not {target}",
                             check.kid, check.target, None)
    return check


# -- rules: signature records ---------------------------------------------------------------------

def _guard_signature_record(event: WriteEvent) -> None:
    previous = event.previous if event.current is not None and not event.current.deleted else None
    if previous is not None and report_signatures(previous):
        raise conflict("a report's signature record cannot be changed or removed")
    if event.resource is None:
        return
    signatures = report_signatures(event.resource)
    if not signatures:
        return
    targets = [t for t in event.resource.get("target") or []
               if (relative(t.get("reference")) or "").startswith("DiagnosticReport/")]
    found = _signed_target(event.resource)
    if len(targets) != 1 or found is None:
        raise unprocessable("[signature-target] a report signature targets exactly one report "
                            "version, as DiagnosticReport/[id]/_history/[version]", "target")
    report_id, version = found
    current = event.system.read("DiagnosticReport", report_id)
    if current is None or current.deleted or current.body is None:
        raise unprocessable(f"[signature-target] DiagnosticReport/{report_id} does not exist",
                            "target")
    if current.version != version:
        raise unprocessable(f"[signature-target] only the current version "
                            f"({current.version}) of DiagnosticReport/{report_id} can be signed",
                            "target")
    report = codec.loads(current.body)
    if report.get("status") != SIGNABLE_STATUS:
        raise unprocessable(f"[report-not-final] a report is signed when it is final, not "
                            f"{report.get('status')!r}", "target")
    target = trail.versioned("DiagnosticReport", report_id, version)
    signed_by = _signers(event.system, report_id, version)
    for i, signature in enumerate(signatures):
        check = check_signature(event.context.settings.keys_dir, signature, target, report)
        if not check.valid:
            raise unprocessable(f"[signature-invalid] {check.reason}", f"signature[{i}]")
        who = relative((signature.get("who") or {}).get("reference"))
        if who in signed_by:
            raise conflict(f"{who} has already signed {target}")


def _signers(tx: Transaction, report_id: str, version: int) -> set[str]:
    out = set()
    for prov, _ in signature_records(tx, report_id):
        if _signed_target(prov) == (report_id, version):
            out |= {relative((s.get("who") or {}).get("reference")) or ""
                    for s in report_signatures(prov)}
    return out


def _after_signature_record(event: WriteEvent) -> None:
    """A signed correction takes the place of the report it replaces."""
    if event.resource is None or event.method == "DELETE" or not report_signatures(
            event.resource):
        return
    found = _signed_target(event.resource)
    if found is None:
        return
    report = read(event.system, "DiagnosticReport", found[0])
    replaced = model.reference_id(model.extension_value(report, model.EXT_REPLACES,
                                                        "Reference"), "DiagnosticReport")
    if report is None or replaced is None:
        return
    for task_version in _tasks_listing(event.system, report, replaced):
        task = codec.loads(task_version.body or b"{}")
        for output in task.get("output") or []:
            value = output.get("valueReference") or {}
            if relative(value.get("reference")) == f"DiagnosticReport/{replaced}":
                output["valueReference"] = {"reference": f"DiagnosticReport/{found[0]}"}
        event.write(task)
        if task.get("status") == "completed":
            _deliver(event, task, f"DiagnosticReport/{found[0]}")


def _tasks_listing(tx: Transaction, report: dict[str, Any], old_id: str) -> list[Version]:
    """The consultation Tasks of the report's requests whose output names ``old_id``."""
    out = []
    for based in report.get("basedOn") or []:
        ref = relative(based.get("reference"))
        if not ref:
            continue
        for v in tx.search(parse(("Task",), [("focus", ref)]), None):
            task = codec.loads(v.body or b"{}")
            if is_referral(task):
                continue
            if any(relative((o.get("valueReference") or {}).get("reference"))
                   == f"DiagnosticReport/{old_id}" for o in task.get("output") or []):
                out.append(v)
    return out


# -- rules: reports -------------------------------------------------------------------------------

def _guard_report(event: WriteEvent) -> None:
    current = event.current
    if current is not None and not current.deleted and is_signed(event.system, event.id):
        raise conflict(f"DiagnosticReport/{event.id} is signed and cannot be changed; a "
                       "correction is a new report that replaces it (extension "
                       f"{model.EXT_REPLACES})")
    if event.resource is not None:
        _check_replaces(event)


def _check_replaces(event: WriteEvent) -> None:
    assert event.resource is not None
    exts = model.extensions(event.resource, model.EXT_REPLACES)
    if not exts:
        return
    if len(exts) > 1:
        raise unprocessable("[report-replaces] a report replaces one report", "extension")
    old_id = model.reference_id(exts[0].get("valueReference"), "DiagnosticReport")
    if old_id is None:
        raise unprocessable("[report-replaces] the replaces extension needs a valueReference to "
                            "a DiagnosticReport", "extension")
    if old_id == event.id:
        raise unprocessable("[report-replaces] a report cannot replace itself", "extension")
    old = read(event.system, "DiagnosticReport", old_id)
    if old is None:
        raise unprocessable(f"[report-replaces] DiagnosticReport/{old_id} does not exist",
                            "extension")
    subject = relative((event.resource.get("subject") or {}).get("reference"))
    if subject != relative((old.get("subject") or {}).get("reference")):
        raise unprocessable("[report-replaces] a correction is about the same subject as the "
                            "report it replaces", "subject")


def _record_correction(event: WriteEvent) -> None:
    if event.resource is None or event.version is None:
        return
    old_id = model.reference_id(model.extension_value(event.resource, model.EXT_REPLACES,
                                                      "Reference"), "DiagnosticReport")
    if old_id is None:
        return
    before = model.extension_value(event.previous, model.EXT_REPLACES, "Reference")
    if before is not None and model.reference_id(before, "DiagnosticReport") == old_id:
        return  # recorded when the extension was first written
    old = event.system.read("DiagnosticReport", old_id)
    assert old is not None
    entity = [{"role": "revision", "what": {
        "reference": trail.versioned("DiagnosticReport", old_id, old.version)}}]
    event.write(trail.provenance(event, trail.data_operation(event.method), entity=entity,
                                 agent_type="author"))


# -- rules: delivery notice -----------------------------------------------------------------------

def _notify_delivery(event: WriteEvent) -> None:
    task = event.resource
    if task is None or is_referral(task) or task.get("status") != "completed":
        return
    if (event.previous or {}).get("status") == "completed":
        return
    for output in task.get("output") or []:
        ref = relative((output.get("valueReference") or {}).get("reference"))
        if ref and ref.startswith("DiagnosticReport/"):
            _deliver(event, {**task, "id": event.id}, ref)


def _deliver(event: WriteEvent, task: dict[str, Any], report_ref: str) -> None:
    """The Communication that tells the inviting organisation its report has arrived."""
    focus = relative((task.get("focus") or {}).get("reference"))
    request = read(event.system, "ServiceRequest",
                        model.reference_id({"reference": focus}, "ServiceRequest"))
    recipient = organization_of_role(event.system, (request or {}).get("requester")) \
        or organization_of_role(event.system, task.get("requester"))
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": model.COMMUNICATION_KIND,
                                  "code": "report-delivered"}]}],
        "about": [{"reference": report_ref}, {"reference": f"Task/{task['id']}"}],
        "sent": model.fhir_instant(event.context.clock.now()),
        "payload": [{"contentReference": {"reference": report_ref}}],
    }
    if focus:
        communication["basedOn"] = [{"reference": focus}]
    if task.get("for"):
        communication["subject"] = task["for"]
    if recipient:
        communication["recipient"] = [{"reference": recipient}]
    elif task.get("requester"):
        communication["recipient"] = [task["requester"]]
    if task.get("owner"):
        communication["sender"] = task["owner"]
    event.write(communication)


def install(hooks: WriteHooks) -> None:
    hooks.before("DiagnosticReport", _guard_report)
    hooks.after("DiagnosticReport", _record_correction)
    hooks.before("Provenance", _guard_signature_record)
    hooks.after("Provenance", _after_signature_record)
    hooks.after("Task", _notify_delivery)


# -- $sign ---------------------------------------------------------------------------------------

def _performers(tx: Transaction, report: dict[str, Any]) -> list[tuple[str, str]]:
    """(performer reference, Practitioner id) of each practitioner performing the report."""
    out = []
    for performer in report.get("performer") or []:
        ref = relative(performer.get("reference"))
        if ref is None:
            continue
        if ref.startswith("Practitioner/"):
            out.append((ref, ref.split("/")[1]))
        elif ref.startswith("PractitionerRole/"):
            role = read(tx, "PractitionerRole", ref.split("/")[1])
            pid = model.reference_id((role or {}).get("practitioner"), "Practitioner")
            if pid:
                out.append((ref, pid))
    return out


def _signer(tx: Transaction, report: dict[str, Any], principal: Principal) -> tuple[str, str]:
    performers = _performers(tx, report)
    if not performers:
        raise unprocessable("[report-performer] the report names no expert (a PractitionerRole "
                            "with a practitioner, or a Practitioner) as performer", "performer")
    user = relative(principal.fhir_user)
    for ref, pid in performers:
        if user in (ref, f"Practitioner/{pid}"):
            return ref, pid
    if principal.backend:
        return performers[0]
    raise FhirError(403, "forbidden", "[report-signer] only the report's performer may sign it "
                    f"(the token's fhirUser is {principal.fhir_user or 'not set'})")


def _signature_provenance(report: dict[str, Any], version: int, performer: str, pid: str,
                          jws: str, now: str) -> dict[str, Any]:
    signature: dict[str, Any] = {
        "type": [{"system": model.SIGNATURE_TYPE_SYSTEM, "code": model.SIGNATURE_TYPE_AUTHOR,
                  "display": "Author's Signature"}],
        "when": now,
        "who": {"reference": f"Practitioner/{pid}"},
        "targetFormat": FHIR_JSON,
        "sigFormat": JOSE,
        "data": base64.b64encode(jws.encode("ascii")).decode("ascii"),
    }
    if performer != f"Practitioner/{pid}":
        signature["onBehalfOf"] = {"reference": performer}
    return {
        "resourceType": "Provenance",
        "target": [{"reference": trail.versioned("DiagnosticReport", report["id"], version)}],
        "recorded": now,
        "activity": {"coding": [{"system": DOCUMENT_COMPLETION, "code": "LA",
                                 "display": "legally authenticated"}]},
        "agent": [{"type": {"coding": [{"system": trail.PARTICIPANT_TYPE, "code": "author"}]},
                   "who": {"reference": performer}}],
        "signature": [signature],
    }


async def sign(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """DiagnosticReport/[id]/$sign: the performer signs the current version of the report."""
    assert req.id
    report_id = req.id
    context, principal = req.context, req.principal

    def apply(tx: Transaction) -> Version:
        current = current_or_error(tx.read("DiagnosticReport", report_id), "DiagnosticReport",
                                   report_id)
        assert current.body is not None
        report = codec.loads(current.body)
        system = unguarded(tx)
        performer, pid = _signer(system, report, principal)
        if report.get("status") != SIGNABLE_STATUS:
            raise unprocessable(f"[report-not-final] only a final report can be signed (it is "
                                f"{report.get('status')!r})", "status")
        key = signing.signing_key(context.settings.keys_dir, pid)
        target = trail.versioned("DiagnosticReport", report_id, current.version)
        jws = signing.sign_detached(signing.canonical_json(report), key, target)
        now = model.fhir_instant(context.clock.now())
        prov = _signature_provenance(report, current.version, performer, pid, jws, now)
        return store(system, context, principal, "Provenance", new_id(), prov,
                     prepare(prov, "Provenance"), "POST", None)

    version = await store_.run(apply)
    return FhirResponse(201, version=version, location=True)


# -- $verify -------------------------------------------------------------------------------------

def _content_to_verify(req: FhirRequest) -> dict[str, Any] | None:
    """A copy of the report sent to be checked (POST), else None: check the stored report."""
    if req.method != "POST" or not req.body.strip():
        return None
    body = req.resource()
    if isinstance(body, dict) and body.get("resourceType") == "DiagnosticReport":
        return body
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise invalid("send a Parameters resource (parameter 'resource') or a DiagnosticReport")
    for p in body.get("parameter") or []:
        if p.get("name") == "resource":
            resource = p.get("resource")
            if not isinstance(resource, dict) or resource.get("resourceType") \
                    != "DiagnosticReport":
                raise invalid("the parameter 'resource' must carry a DiagnosticReport",
                              "Parameters.parameter")
            return resource
        raise invalid(f"{p.get('name')!r} is not a parameter of $verify (known: resource)",
                      "Parameters.parameter")
    return None


async def search_all(store_: ResourceStore, type_: str,
                      params: list[tuple[str, str]]) -> list[Version]:
    query = parse((type_,), [*params, ("_count", "1000")])
    out: list[Version] = []
    while True:
        page = await store_.search(query)
        out += page.matches
        if not page.next_cursor:
            return out
        query.cursor = page.next_cursor


def _part(name: str, key: str, value: Any) -> dict[str, Any]:
    return {"name": name, key: value}


async def verify(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """DiagnosticReport/[id]/$verify: whether the report's signatures hold."""
    assert req.id
    current = current_or_error(await store_.read("DiagnosticReport", req.id),
                               "DiagnosticReport", req.id)
    assert current.body is not None
    stored = codec.loads(current.body)
    content = _content_to_verify(req)
    records = [codec.loads(v.body) for v in await search_all(
        store_, "Provenance", [("target", f"DiagnosticReport/{req.id}")]) if v.body]
    records = [p for p in records if report_signatures(p)]
    if not records:
        return FhirResponse(200, resource={"resourceType": "Parameters", "parameter": [
            _part("valid", "valueBoolean", False),
            _part("reason", "valueString", "the report is not signed")]})
    keys_dir = req.settings.keys_dir
    results = []
    for prov in sorted(records, key=lambda p: p.get("recorded") or ""):
        found = _signed_target(prov)
        target = trail.versioned("DiagnosticReport", *found) if found else ""
        for signature in report_signatures(prov):
            check = check_signature(keys_dir, signature, target, content or stored)
            stored_check = check if content is None else check_signature(
                keys_dir, signature, target, stored)
            # changed: a later version, or content that no longer matches the signed digest
            # (where the signature carries none, a failed check is all there is to go by)
            changed = found is None or found[1] != current.version or (
                stored_check.content_changed if stored_check.content_changed is not None
                else not stored_check.valid)
            results.append((prov, signature, target, check, changed))
    return FhirResponse(200, resource=_verification(results))


def _verification(results: list[tuple[dict[str, Any], dict[str, Any], str, signing.Check,
                                      bool]]) -> dict[str, Any]:
    valid = all(r[3].valid for r in results)
    failed = next((r for r in results if not r[3].valid), None)
    latest = results[-1]
    prov, signature, target, check, changed = failed or latest
    params = [
        _part("valid", "valueBoolean", valid),
        _part("reason", "valueString", check.reason if failed else (
            "the signature is valid" if len(results) == 1 else
            f"all {len(results)} signatures are valid")),
        _part("signer", "valueReference", signature.get("who") or {}),
        _part("signedVersion", "valueString", target),
        _part("changed", "valueBoolean", any(r[4] for r in results)),
    ]
    for prov, signature, target, check, changed in results:
        parts = [_part("valid", "valueBoolean", check.valid),
                 _part("reason", "valueString", check.reason),
                 _part("signer", "valueReference", signature.get("who") or {}),
                 _part("signedVersion", "valueString", target),
                 _part("changed", "valueBoolean", changed),
                 _part("provenance", "valueReference", {"reference": f"Provenance/{prov['id']}"})]
        if signature.get("when"):
            parts.append(_part("when", "valueInstant", signature["when"]))
        if check.kid:
            parts.append(_part("kid", "valueString", check.kid))
        params.append({"name": "signature", "part": parts})
    return {"resourceType": "Parameters", "parameter": params}


# -- $keys ---------------------------------------------------------------------------------------

async def keys(req: FhirRequest, store_: ResourceStore) -> FhirResponse:
    """Practitioner/[id]/$keys: the public keys the practitioner signs with (a JWKS)."""
    assert req.id
    current = await store_.read("Practitioner", req.id)
    if current is None:
        raise not_found("Practitioner", req.id)
    return FhirResponse(200, native=codec.dumps(signing.jwks(req.settings.keys_dir, req.id)),
                        native_type="application/jwk-set+json")


def _definition(name: str) -> str:
    return f"{model.BASE}/OperationDefinition/{name}"


OPERATIONS: tuple[Operation, ...] = (
    Operation("sign", _definition("DiagnosticReport-sign"), frozenset({"instance"}), sign,
              "The report's performer signs its current version (a Provenance with a JWS)",
              ("POST",), ("DiagnosticReport",), parameters=(
                  ("return", "out", 1, "1", "Provenance", "The signature record"),)),
    Operation("verify", _definition("DiagnosticReport-verify"), frozenset({"instance"}), verify,
              "Whether the report's signatures are valid, by whom and of which version",
              ("GET", "POST"), ("DiagnosticReport",), public=True, parameters=(
                  ("return", "out", 1, "1", "Parameters", "valid, and per signature: who "
                   "signed, which version, whether it verifies"),)),
    Operation("keys", _definition("Practitioner-keys"), frozenset({"instance"}), keys,
              "The practitioner's public signing keys (JWKS)", ("GET",), ("Practitioner",),
              public=True, description="The practitioner's public signing keys, as a JSON Web "
              "Key Set (application/jwk-set+json), to check signatures without the server."),
)

"""Operations of the base specification: ``$validate``, ``$meta``, and ``metadata``."""

from __future__ import annotations

from typing import Any

from server.fhir import codec
from server.fhir.errors import FhirError, Issue, gone, invalid, not_found, outcome
from server.fhir.prepare import check_type
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.validation import validate_resource
from server.storage.base import ResourceStore

_VALIDATE_MODES = ("create", "update", "delete")
_CORE = "http://hl7.org/fhir/StructureDefinition/"


async def capabilities(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    from server.fhir.capability import capability_statement

    return FhirResponse(200, resource=capability_statement(req.base, req.settings))


def _validate_input(req: FhirRequest) -> tuple[Any, str, str | None]:
    """The resource to validate, the mode, and the profile to validate against (or None)."""
    body = req.resource()
    mode = req.param("mode") or "create"
    profile = req.param("profile")
    if isinstance(body, dict) and body.get("resourceType") == "Parameters" \
            and req.type != "Parameters":
        resource = None
        for p in body.get("parameter") or []:
            if p.get("name") == "resource":
                resource = p.get("resource")
            elif p.get("name") == "mode":
                mode = p.get("valueCode") or mode
            elif p.get("name") == "profile":
                profile = p.get("valueUri") or p.get("valueCanonical") or profile
        if resource is None and mode != "delete":  # what a delete would remove is stored
            raise invalid("the Parameters carry no 'resource' to validate")
        body = resource
    return body, _mode(mode), profile


def _profile(profile: str | None, type_: str) -> str | None:
    """Resource-validate's ``profile`` as one of ours to validate against too, or None for the
    base definition of the type (what every resource is validated against); another is
    refused."""
    from server.workflow.profiles import known_profile

    if profile is None or profile.partition("|")[0] == f"{_CORE}{type_}":
        return None
    base = known_profile(profile)
    if base is None:
        raise FhirError(400, "not-supported", f"profile {profile} is not one this server "
                        f"knows: it validates against the R4 definition of {type_} and the "
                        "Consilium profiles (/metadata lists them)", expression="profile")
    return base


def _mode(mode: str) -> str:
    if mode not in _VALIDATE_MODES:
        raise invalid(f"mode must be one of {', '.join(_VALIDATE_MODES)}", expression="mode")
    return mode


async def validate(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """$validate (Resource-validate): 200 with an OperationOutcome whether or not it is valid."""
    assert req.type
    if req.id is not None and req.body.strip() == b"":  # the stored resource
        current = await store.read(req.type, req.id)
        if current is None or current.deleted or current.body is None:
            raise not_found(req.type, req.id)
        resource, mode = codec.loads(current.body), _mode(req.param("mode") or "update")
        profile = req.param("profile")
    else:
        resource, mode, profile = _validate_input(req)
    against = _profile(profile, req.type)
    if mode == "delete":
        if req.id is None:
            raise invalid("mode=delete needs an instance: [type]/[id]/$validate")
        current = await store.read(req.type, req.id)
        if current is None or current.deleted:
            raise not_found(req.type, req.id)
        return FhirResponse(200, resource=outcome([Issue("informational", "the resource may "
                                                         "be deleted", "information")]))
    try:
        check_type(resource, req.type)
    except FhirError as exc:
        return FhirResponse(200, resource=exc.outcome())
    if mode == "update" and req.id is not None and resource.get("id") != req.id:
        issues = [Issue("invalid", f"the id in the resource does not match {req.id!r}",
                        expression=["id"])]
    else:
        issues = validate_resource(resource, req.type)
        if not any(i.severity in ("error", "fatal") for i in issues):  # as a write checks it
            from server.workflow.profiles import (
                claimed_profile_issues,
                claimed_profiles,
                validate_against,
            )

            issues += claimed_profile_issues(resource)
            if against is not None and against not in {
                    u.partition("|")[0] for u in claimed_profiles(resource)}:
                issues += validate_against(resource, against)
    if not issues:
        issues = [Issue("informational", "validation found no problems", "information")]
    return FhirResponse(200, resource=outcome(issues))


async def meta(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id
    current = await store.read(req.type, req.id)
    if current is None:
        raise not_found(req.type, req.id)
    if current.body is None:  # as a read of it answers
        raise gone(req.type, req.id, current.version)
    resource = codec.loads(current.body)
    meta_ = {k: v for k, v in (resource.get("meta") or {}).items()
             if k in ("profile", "security", "tag")}
    return FhirResponse(200, resource={"resourceType": "Parameters",
                                       "parameter": [{"name": "return", "valueMeta": meta_}]})

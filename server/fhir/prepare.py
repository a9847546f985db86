"""What every write does before it reaches the store: validate (and, for bulk loads, extract
search indexes).

This is CPU work done on the request's own thread, outside the store's write lock.

Status codes (http.html#create, #update): 400 when the body is not a well-formed resource of the
type (not JSON/XML, not an object, wrong ``resourceType``, unknown elements, wrong datatypes or
formats); 422 when it is well formed but breaks a rule of the specification or of the server
(cardinality, required bindings, invariants, reference targets, profiles).
"""

from __future__ import annotations

from typing import Any

from server.fhir.errors import FhirError, Issue, invalid
from server.fhir.structures import structures
from server.fhir.validation import validate_resource
from server.search.index import extract
from server.storage.base import IndexRows

_MALFORMED = {"structure", "value", "too-long"}


def check_type(resource: Any, type: str) -> dict[str, Any]:
    if not isinstance(resource, dict):
        raise invalid("the body must be a FHIR resource (a JSON object)", code="structure")
    actual = resource.get("resourceType")
    if actual != type:
        if actual is None:
            raise invalid("the resource has no resourceType", code="structure",
                          expression="resourceType")
        raise invalid(f"resourceType {actual!r} does not match the URL's type {type!r}",
                      code="invalid", expression="resourceType")
    return resource


def validation_error(issues: list[Issue]) -> FhirError | None:
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if not errors:
        return None
    status = 400 if any(i.code in _MALFORMED for i in errors) else 422
    first = errors[0]
    return FhirError(status, first.code, first.diagnostics, issues=issues)


_checks = {"models": False}  # the server's model_check setting, set by create_app


def check_models(on: bool) -> None:
    """Whether writes also get the fhir.resources (R4B) second opinion (``model_check``)."""
    _checks["models"] = on


def prepare(resource: Any, type: str, *, models: bool | None = None,
            index: bool = False) -> IndexRows | None:
    """Validate ``resource`` as a ``type``; raise FhirError. Returns the search index rows to
    write with it: with ``index``, its rows; else None, and the store extracts them once the
    resource is written (before any search can miss them).
    Validation is the R4 validator (server.fhir.validation), and the fhir.resources (R4B)
    second opinion when ``models`` is true (by default when the server's ``model_check`` is
    on). A resource that claims Consilium profiles in ``meta.profile`` is also validated
    against them (server.workflow.profiles)."""
    check_type(resource, type)
    if models is None:
        models = _checks["models"]
    error = validation_error(validate_resource(resource, type, models=models))
    if error is not None:
        raise error
    meta = resource.get("meta")
    if isinstance(meta, dict) and meta.get("profile"):
        # Profiles the resource claims: ours are checked (422 with every issue), an unknown
        # Consilium profile is refused, other publishers' profiles are ignored.
        from server.workflow.profiles import require_claimed_profiles

        require_claimed_profiles(resource)
    return extract(resource) if index else None


def known_type(type: str) -> bool:
    return structures().is_resource_type(type)

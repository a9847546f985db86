"""A parsed FHIR request and the response a handler gives back.

Handlers are plain ``async`` functions ``(FhirRequest, ResourceStore) -> FhirResponse``; they
know nothing of HTTP framing, so a unit test can call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from server.auth.scopes import Principal
from server.fhir import codec
from server.fhir.errors import FhirError, invalid
from server.storage.base import Version

FHIR_JSON = "application/fhir+json"
FHIR_XML = "application/fhir+xml"
JSON_PATCH = "application/json-patch+json"
JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "json",
              "text/json"}
XML_TYPES = {"application/fhir+xml", "application/xml", "application/xml+fhir", "xml",
             "text/xml"}


@dataclass(slots=True)
class FhirRequest:
    method: str
    interaction: str
    type: str | None = None
    id: str | None = None
    version_id: str | None = None
    operation: str | None = None
    compartment: str | None = None  # Patient/1/Observation: the searched type
    params: list[tuple[str, str]] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    base: str = ""  # absolute FHIR base URL, no trailing slash
    principal: Principal = field(default_factory=Principal.anonymous)
    settings: Any = None
    _resource: Any = None
    context: Any = None  # server.fhir.hooks.AppContext

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def param(self, name: str) -> str | None:
        for k, v in self.params:
            if k == name:
                return v
        return None

    @property
    def content_type(self) -> str:
        return (self.headers.get("content-type") or "").split(";", 1)[0].strip().lower()

    def resource(self) -> Any:
        """The request body as a JSON-form resource (FHIR JSON or XML on the wire)."""
        if self._resource is None:
            self._resource = parse_body(self.body, self.content_type)
        return self._resource

    @property
    def prefer(self) -> dict[str, str]:
        out = {}
        for part in (self.headers.get("prefer") or "").split(";"):
            for item in part.split(","):
                if "=" in item:
                    k, v = item.split("=", 1)
                    out[k.strip().lower()] = v.strip().strip('"')
        return out


def parse_body(body: bytes, content_type: str) -> Any:
    if not body.strip():
        raise invalid("the request has no body")
    if content_type in XML_TYPES:
        from server.fhir import xml

        try:
            return xml.from_xml(body)
        except xml.XmlError as exc:
            raise invalid(f"invalid FHIR XML: {exc}", code="structure") from None
    if content_type and content_type not in JSON_TYPES:
        raise FhirError(415, "not-supported", f"content type {content_type!r} is not supported; "
                        "send application/fhir+json or application/fhir+xml")
    try:
        return codec.loads(body)
    except codec.JsonError as exc:
        raise invalid(f"invalid JSON: {exc}", code="structure") from None


@dataclass(slots=True)
class FhirResponse:
    status: int = 200
    #: A resource to serialise (a dict) ...
    resource: dict[str, Any] | None = None
    #: ... or the stored version whose JSON body is sent as it is (the fast path of read).
    version: Version | None = None
    #: A ``Location`` header is added for the stored version when set.
    location: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    #: Raw bytes of a non-FHIR payload (Binary in its native form) and their content type.
    native: bytes | None = None
    native_type: str | None = None
    #: Apply ``Prefer: return=`` (writes).
    honour_prefer: bool = False
    #: The deletion a DELETE made, or found made before (its version and time go in a Bundle's
    #: response entry).
    deletion: Version | None = None

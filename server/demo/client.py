"""FHIR requests made in-process, exactly as the HTTP router makes them.

The demo is loaded through the server's own write path: each request is routed by the same table
(server.fhir.router.routes), handed to the same handler with the same store wrapper for the
caller (server.auth.guard) and the same application context (clock, keys, write hooks), so every
validation, profile, business rule and Provenance applies. Only the HTTP framing is skipped:
the caller is given as a :class:`~server.auth.scopes.Principal` instead of a bearer token.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from server.auth.guard import guarded
from server.auth.scopes import Principal
from server.fhir import codec
from server.fhir.bundles import materialise
from server.fhir.errors import FhirError
from server.fhir.hooks import AppContext
from server.fhir.request import FhirRequest
from server.storage.base import ResourceStore

FHIR_JSON = "application/fhir+json"
JSON_PATCH = "application/json-patch+json"
#: Scopes of the people in the demo (a SMART user token) and of the loader itself.
USER_SCOPE = "user/*.cruds"
SYSTEM_SCOPE = "system/*.cruds"
LOADER = "consilium-demo"


class DemoError(Exception):
    """A demo request the server refused: the data or the story broke a rule."""


def principal(actor: str | None) -> Principal:
    """``actor``: a PractitionerRole id (that person's token), or None for the loader itself
    (a backend client with a system scope)."""
    if actor is None:
        return Principal.from_scope(LOADER, SYSTEM_SCOPE, client_id=LOADER)
    return Principal.from_scope(actor, USER_SCOPE, fhir_user=f"PractitionerRole/{actor}")


@dataclass
class LocalFhir:
    """A FHIR client over the handlers, for one store and application context."""

    store: ResourceStore
    context: AppContext
    base: str = "http://localhost/fhir"

    async def request(self, method: str, path: str, body: Any = None, *,
                      actor: str | None = None) -> dict[str, Any]:
        """The response body of ``method path`` (path relative to the FHIR base, query
        allowed) as ``actor``; a list body is a JSON Patch. Raises DemoError when refused."""
        from server.fhir.router import routes

        who = principal(actor)
        path, _, query = path.partition("?")
        headers: dict[str, str] = {}
        raw = b""
        if body is not None:
            headers["content-type"] = JSON_PATCH if isinstance(body, list) else FHIR_JSON
            raw = codec.dumps(body)
        try:
            route = routes().route(method, "/" + path.lstrip("/"))
            req = FhirRequest(method, route.name, route.type, route.id, route.vid, route.op,
                              route.compartment, parse_qsl(query, keep_blank_values=True),
                              headers, raw, self.base, who, self.context.settings,
                              _resource=None if isinstance(body, list) else body,
                              context=self.context)
            response = await route.handler(req, guarded(self.store, who))
        except FhirError as exc:
            raise DemoError(f"{method} {path}{'?' + query if query else ''} as "
                            f"{actor or LOADER}: {exc.status} "
                            + "; ".join(i.diagnostics for i in exc.issues)) from exc
        if response.resource is not None:
            return materialise(response.resource)
        if response.version is not None and response.version.body is not None:
            return codec.loads(response.version.body)
        return {}

    async def search(self, type_: str, query: str, actor: str | None = None,
                     ) -> list[dict[str, Any]]:
        found = await self.request("GET", f"{type_}?{query}&_count=1000", actor=actor)
        return [e["resource"] for e in found.get("entry") or []
                if (e.get("search") or {}).get("mode", "match") == "match"]

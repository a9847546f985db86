"""The FHIR router: a lean ASGI application serving ``/fhir``.

FastAPI's per-route machinery costs more than a whole read may (an empty decorated route reaches
~0.21 of a bare ASGI app's throughput, a plain ASGI handler ~0.40), so ``/fhir`` is served here:
the path is split once, looked up in the interaction table, the caller's token is checked (from a
cache after the first time), and the handler's response is written in the negotiated format.
Everything else (auth pages, admin, docs) is FastAPI's.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl, unquote

from server.auth.guard import guarded
from server.auth.scopes import Principal
from server.auth.tokens import InvalidToken, TokenService
from server.fhir import codec
from server.fhir.bundles import materialise
from server.fhir.errors import FhirError, information, invalid
from server.fhir.interactions import INTERACTIONS, OPERATIONS, PUBLIC
from server.fhir.request import (
    FHIR_JSON,
    FHIR_XML,
    JSON_TYPES,
    XML_TYPES,
    FhirRequest,
    FhirResponse,
)
from server.fhir.structures import structures
from server.fhir.summary import transform_for
from server.fhir.table import Interaction, Operation
from server.fhir.values import valid_id
from server.logs import AccessLog
from server.metrics import Metrics
from server.storage.base import ResourceStore, http_date

log = logging.getLogger("consilium.http")

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

_JSON_CT = b"application/fhir+json; charset=utf-8"
_XML_CT = b"application/fhir+xml; charset=utf-8"
_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
_FORM = "application/x-www-form-urlencoded"


def _search_form(body: bytes, content_type: str) -> list[tuple[str, str]]:
    """The parameters in the body of ``POST [type]/_search`` (http.html#search): a form, its
    media type compared case-insensitively (RFC 9110 section 8.3.1); an empty body adds none.
    Any other body is refused, not dropped: the search would go on without its criteria and
    answer with every resource."""
    if not body.strip():
        return []
    if content_type.split(";", 1)[0].strip().lower() != _FORM:
        raise FhirError(415, "not-supported", "the search parameters of a POST _search must be "
                        f"form-encoded (Content-Type: {_FORM}), or sent in the URL")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise invalid("the form body of a POST _search is not UTF-8 text") from None
    return parse_qsl(text, keep_blank_values=True)


class Route:
    __slots__ = ("interaction", "operation", "type", "id", "vid", "op", "compartment")

    def __init__(self, interaction: Interaction | None, operation: Operation | None = None,
                 type: str | None = None, id: str | None = None, vid: str | None = None,
                 op: str | None = None, compartment: str | None = None):
        self.interaction = interaction
        self.operation = operation
        self.type = type
        self.id = id
        self.vid = vid
        self.op = op
        self.compartment = compartment

    @property
    def handler(self) -> Any:
        if self.operation is not None:
            return self.operation.handler
        assert self.interaction is not None
        return self.interaction.handler

    def params(self, params: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """The query parameters the interaction is given. A search leaves out empty ones:
        "Empty parameters are not an error - they are just ignored by the server"
        (search.html#errors); they reach neither the search nor its _summary, nor the links."""
        if self.interaction is not None and self.interaction.code.startswith("search"):
            return [(k, v) for k, v in params if v]
        return params

    @property
    def name(self) -> str:
        if self.operation is not None:
            return f"${self.operation.name}"
        assert self.interaction is not None
        return self.interaction.name


def _shape(segments: list[str]) -> tuple[str, dict[str, str]]:
    """The table's path shape of a request path, with the values of its variable parts."""
    n = len(segments)
    if n == 0:
        return "", {}
    first = segments[0]
    if n == 1:
        if first in ("metadata", "_history", "_search"):
            return first, {}
        if first.startswith("$"):
            return "$", {"op": first[1:]}
        return "{type}", {"type": first}
    vars_ = {"type": first}
    second = segments[1]
    if n == 2:
        if second in ("_search", "_history"):
            return "{type}/" + second, vars_
        if second.startswith("$"):
            return "{type}/$", {**vars_, "op": second[1:]}
        return "{type}/{id}", {**vars_, "id": second}
    vars_["id"] = second
    third = segments[2]
    if n == 3:
        if third == "_history":
            return "{type}/{id}/_history", vars_
        if third.startswith("$"):
            return "{type}/{id}/$", {**vars_, "op": third[1:]}
        return "{type}/{id}/{compartment}", {**vars_, "compartment": third}
    if n == 4 and third == "_history":
        return "{type}/{id}/_history/{vid}", {**vars_, "vid": segments[3]}
    return "?", {}


class Routes:
    """Request path -> interaction or operation, from the tables in server.fhir.interactions."""

    def __init__(self, prefix: str = "/fhir"):
        self.prefix = prefix
        self.table: dict[tuple[str, str], Interaction] = {}
        for i in INTERACTIONS:
            self.table[(i.method, i.path)] = i
        self.operations: dict[str, list[Operation]] = {}
        for op in OPERATIONS:
            self.operations.setdefault(op.name, []).append(op)
        self.types = frozenset(structures().resource_types)

    # -- routing --------------------------------------------------------------------------------

    def route(self, method: str, path: str) -> Route:
        segments = [unquote(s) for s in path.strip("/").split("/")] if path.strip("/") else []
        shape, v = _shape(segments)
        if shape == "?":
            raise FhirError(404, "not-found", f"no FHIR endpoint at {self.prefix}{path}")
        type_ = v.get("type")
        if type_ is not None and type_ not in self.types:
            raise FhirError(404, "not-supported", f"resource type {type_!r} is not supported")
        id_ = v.get("id")
        if id_ is not None and not valid_id(id_):
            raise invalid(f"{id_!r} is not a valid resource id")
        compartment = v.get("compartment")
        if compartment is not None and compartment != "*" and compartment not in self.types:
            raise FhirError(404, "not-supported",
                            f"resource type {compartment!r} is not supported")
        if "op" in v:
            level = "system" if shape == "$" else ("type" if shape == "{type}/$" else "instance")
            op = next((o for o in self.operations.get(v["op"], []) if o.serves(level, type_)),
                      None)
            if op is None:
                raise FhirError(404, "not-supported",
                                f"operation ${v['op']} is not supported at {level} level"
                                + (f" on {type_}" if type_ else ""))
            if method not in op.methods and not (method == "HEAD" and "GET" in op.methods):
                raise FhirError(405, "not-supported", f"${op.name} does not accept {method}",
                                headers={"Allow": ", ".join(op.methods)})
            return Route(None, op, type_, id_, op=op.name)
        interaction = self.table.get(("GET" if method == "HEAD" else method, shape))
        if interaction is None:
            allowed = sorted({m for (m, s) in self.table if s == shape})
            if not allowed:
                raise FhirError(404, "not-found", f"no FHIR endpoint at {self.prefix}{path}")
            raise FhirError(405, "not-supported", f"{method} is not allowed here",
                            headers={"Allow": ", ".join(allowed)})
        return Route(interaction, None, type_, id_, v.get("vid"), compartment=compartment)



@functools.cache
def routes() -> Routes:
    return Routes()


def _accepted(accept: str) -> list[str]:
    """The media types of an Accept header, most wanted first (RFC 7231 §5.3.2: by quality,
    then in the order given); those with q=0 are refused, so left out."""
    ranked: list[tuple[float, int, str]] = []
    for i, part in enumerate(accept.split(",")):
        kind, *params = (p.strip() for p in part.split(";"))
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if q > 0 and kind:
            ranked.append((-q, i, kind.lower()))
    return [kind for _, _, kind in sorted(ranked)]


class FhirRouter:
    """ASGI app for everything under the FHIR base (``/fhir``)."""

    def __init__(self, settings: Any, store: ResourceStore, tokens: TokenService | None,
                 metrics: Metrics, prefix: str = "/fhir", context: Any = None):
        self.settings = settings
        self.context = context
        self.store = store
        self.tokens = tokens if settings.auth else None
        self.metrics = metrics
        self.prefix = prefix
        self.routes = routes()
        self.access_log = AccessLog(settings.access_log)
        self.anonymous = Principal.anonymous()

    # -- ASGI -----------------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        started = time.perf_counter()
        method = scope["method"]
        headers: dict[str, str] = {}
        for k, v in scope["headers"]:
            headers[k.decode("latin-1")] = v.decode("latin-1")
        path = scope["path"][len(self.prefix):]
        request_id = headers.get("x-request-id") or os.urandom(8).hex()
        name = "unknown"
        type_ = None
        fmt = "json"
        try:
            query = scope.get("query_string", b"")
            params = parse_qsl(query.decode("latin-1"), keep_blank_values=True) if query else []
            fmt = self._response_format(params, headers)
            route = self.routes.route(method, path)
            name = route.name
            type_ = route.type
            principal = self._principal(headers, route)
            body = await self._body(receive, headers) if method in ("POST", "PUT", "PATCH") \
                else b""
            if method == "POST" and route.interaction is not None \
                    and route.interaction.code.startswith("search"):
                form = _search_form(body, headers.get("content-type", ""))
                params += form
                body = b""
                if any(k == "_format" for k, _ in form):
                    fmt = self._response_format(params, headers)
            params = route.params(params)
            req = FhirRequest(method, name, route.type, route.id, route.vid, route.op,
                              route.compartment, params, headers, body, self._base(scope, headers),
                              principal, self.settings, context=self.context)
            response = await route.handler(req, guarded(self.store, principal))
            status, out_headers, payload = self._render(req, response, fmt)
        except FhirError as exc:
            status, out_headers, payload = self._error(exc, fmt, headers)
        except Exception:
            log.exception("request failed", extra={"event": "http.error", "interaction": name,
                                                    "request_id": request_id})
            internal = FhirError(500, "exception", f"internal error (request {request_id})")
            status, out_headers, payload = self._error(internal, fmt, headers)
        out_headers.append((b"x-request-id", request_id.encode()))
        out_headers.append((b"content-length", str(len(payload)).encode()))
        if method == "HEAD":
            payload = b""
        await send({"type": "http.response.start", "status": status, "headers": out_headers})
        await send({"type": "http.response.body", "body": payload})
        elapsed = time.perf_counter() - started
        self.metrics.observe(name, status, elapsed)
        if self.access_log.enabled:
            self.access_log.record(interaction=name, resource_type=type_, method=method,
                                   status=status, ms=round(elapsed * 1000, 3),
                                   request_id=request_id)

    async def _body(self, receive: Receive, headers: dict[str, str]) -> bytes:
        limit = self.settings.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise FhirError(413, "too-costly", f"the request body exceeds {limit} bytes")
        chunks = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise FhirError(400, "incomplete", "the client went away")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise FhirError(413, "too-costly", f"the request body exceeds {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def _principal(self, headers: dict[str, str], route: Route) -> Principal:
        if self.tokens is None or (route.interaction is not None and route.interaction.name
                                   in PUBLIC) or (route.operation is not None
                                                  and route.operation.public):
            return self.anonymous
        auth = headers.get("authorization")
        if not auth:
            raise FhirError(401, "login", "this server requires a bearer token "
                            "(Authorization: Bearer ...)",
                            headers={"WWW-Authenticate": 'Bearer realm="consilium"'})
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise FhirError(401, "login", "the Authorization header must be 'Bearer <token>'",
                            headers={"WWW-Authenticate": 'Bearer realm="consilium"'})
        try:
            return self.tokens.verify(token.strip())
        except InvalidToken as exc:
            raise FhirError(401, "login", str(exc), headers={
                "WWW-Authenticate": f'Bearer realm="consilium", error="invalid_token", '
                                    f'error_description="{exc}"'}) from None

    def _base(self, scope: Scope, headers: dict[str, str]) -> str:
        if self.settings.base_url:
            return self.settings.base_url.rstrip("/") + self.prefix
        scheme = headers.get("x-forwarded-proto") or scope.get("scheme", "http")
        host = headers.get("x-forwarded-host") or headers.get("host")
        if not host:
            server = scope.get("server") or ("localhost", 80)
            host = f"{server[0]}:{server[1]}"
        return f"{scheme}://{host}{scope.get('root_path', '')}{self.prefix}"

    # -- formats --------------------------------------------------------------------------------

    @staticmethod
    def _response_format(params: list[tuple[str, str]], headers: dict[str, str]) -> str:
        """"json", "xml" or "native" (a Binary in its own content type), from _format (the
        first given) or Accept."""
        for k, v in params:
            if k == "_format" and v:
                v = v.split(";")[0].strip().lower()
                if v in JSON_TYPES:
                    return "json"
                if v in XML_TYPES:
                    return "xml"
                raise FhirError(406, "not-supported", f"_format {v!r} is not supported; "
                                "use json or xml")
        accept = headers.get("accept")
        if not accept:
            return "json"
        kinds = _accepted(accept)
        for kind in kinds:
            if kind in JSON_TYPES:
                return "json"
            if kind in XML_TYPES:
                return "xml"
        for kind in kinds:
            if kind in ("*/*", "application/*", "text/*"):
                return "native" if kind != "text/*" else "json"
        return "native"

    def _serialise(self, resource: Any, fmt: str, pretty: bool) -> tuple[bytes, bytes]:
        if fmt == "xml":
            from server.fhir import xml

            return xml.to_xml(materialise(resource), pretty=pretty), _XML_CT
        if pretty:
            resource = materialise(resource)
        return codec.dumps(resource, pretty=pretty), _JSON_CT

    def _render(self, req: FhirRequest, response: FhirResponse,
                fmt: str) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers: list[tuple[bytes, bytes]] = []
        v = response.version
        for k, val in response.headers.items():
            headers.append((k.lower().encode(), val.encode("latin-1")))
        if v is not None:
            headers.append((b"etag", v.etag.encode()))
            headers.append((b"last-modified", http_date(v.last_updated).encode()))
            if response.location:
                headers.append((b"location", f"{req.base}/{v.type}/{v.id}/_history/"
                                             f"{v.version}".encode()))
        if response.status == 304:
            return 304, headers, b""
        pretty = req.param("_pretty") == "true"
        if response.honour_prefer:
            want = req.prefer.get("return", "representation")
            if want == "minimal":
                return response.status, headers, b""
            if want == "OperationOutcome":
                body, ct = self._serialise(information(f"{req.interaction} succeeded"), fmt,
                                           pretty)
                headers.append((b"content-type", ct))
                return response.status, headers, body
        if v is not None and response.resource is None:
            assert v.body is not None
            if v.type == "Binary" and fmt == "native" and req.interaction in ("read", "vread"):
                return self._native_binary(v.body, headers)
            transform = transform_for(req.params) if req.params else None
            if fmt != "xml" and not pretty and transform is None:
                headers.append((b"content-type", _JSON_CT))
                return response.status, headers, v.body
            resource = codec.loads(v.body)
            if transform is not None:
                resource = transform(resource)
            body, ct = self._serialise(resource, fmt, pretty)
            headers.append((b"content-type", ct))
            return response.status, headers, body
        if response.native is not None:
            headers.append((b"content-type", (response.native_type or
                                              "application/octet-stream").encode()))
            return response.status, headers, response.native
        resource = response.resource
        if resource is None:
            return response.status, headers, b""
        transform = transform_for(req.params) if req.params else None
        if transform is not None and resource.get("resourceType") == "Bundle":
            resource = materialise(resource, transform)
        elif transform is not None and resource.get("resourceType") != "OperationOutcome":
            resource = transform(resource)  # the CapabilityStatement, an operation's answer
        body, ct = self._serialise(resource, fmt, pretty)
        headers.append((b"content-type", ct))
        return response.status, headers, body

    @staticmethod
    def _native_binary(body: bytes, headers: list[tuple[bytes, bytes]],
                       ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        import base64

        binary = codec.loads(body)
        data = base64.b64decode(binary.get("data") or "")
        headers.append((b"content-type", binary.get("contentType",
                                                    "application/octet-stream").encode()))
        security = (binary.get("securityContext") or {}).get("reference")
        if security:
            headers.append((b"x-security-context", security.encode()))
        return 200, headers, data

    def _error(self, exc: FhirError, fmt: str, request_headers: dict[str, str],
               ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        headers = [(k.lower().encode(), v.encode("latin-1")) for k, v in exc.headers.items()]
        try:
            body, ct = self._serialise(exc.outcome(), "xml" if fmt == "xml" else "json", False)
        except Exception:
            body, ct = codec.dumps(exc.outcome()), _JSON_CT
        headers.append((b"content-type", ct))
        return exc.status, headers, body


__all__ = ["FhirRouter", "FHIR_JSON", "FHIR_XML"]

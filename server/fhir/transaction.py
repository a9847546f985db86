"""Transaction and batch Bundles posted to the base (http.html#transaction, bundle.html).

A transaction is all or nothing. Its entries are routed like HTTP requests and built into the
same prepared operations as single requests (server.fhir.writes); identities are assigned first
(every ``fullUrl`` of an entry that creates or updates gets its final ``Type/id``) and references
to them are rewritten wherever they occur (relative ones resolved as bundle.html §2.36.4.1 says,
version-specific ones kept so: see `_Links`; one to a urn:uuid or urn:oid that is no entry's is
refused), then everything is validated and indexed, and finally one store transaction settles
the ids of conditional creates and updates, applies the entries in the order the specification
gives (DELETE, POST, PUT/PATCH, GET; conditional references ``Type?criteria`` are resolved after
the other writes, so their criteria see them, and the writes holding them come next, before the
GETs) and commits. An entry that fails fails the whole Bundle with an OperationOutcome naming it;
so does a resource changed by two entries, conditional ones included.

A batch runs each entry on its own, exactly as the same request would run alone, and reports
each entry's outcome; valid entries are kept whatever happens to the others.
"""

from __future__ import annotations

import asyncio
import base64
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode

from server.fhir import codec, references, writes
from server.fhir.bundles import Stored, full_url, materialise
from server.fhir.errors import FhirError, Issue, information, invalid
from server.fhir.prepare import prepare
from server.fhir.request import JSON_PATCH, FhirRequest, FhirResponse
from server.fhir.structures import structures
from server.fhir.summary import Transform, transform_for
from server.fhir.validation import validate_resource
from server.fhir.values import parse_http_date, parse_instant
from server.search.query import parse_conditional
from server.storage.base import (
    ResourceStore,
    SearchPage,
    Transaction,
    Version,
    http_date,
    instant,
    same_content,
)

MAX_ENTRIES = 20_000
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified", 400: "Bad Request",
            401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
            409: "Conflict", 410: "Gone", 412: "Precondition Failed", 415: "Unsupported Media "
            "Type", 422: "Unprocessable Entity", 500: "Internal Server Error"}
_IN_TRANSACTION = {"create", "update", "conditional-update", "patch", "conditional-patch",
                   "delete", "conditional-delete", "read", "vread", "search-type",
                   "search-system", "search-compartment"}
#: A RESTful URL, [root]/[type]/[id] (bundle.html#references).
_RESTFUL = re.compile(r"(.+://.+)/([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})")
#: A relative reference, [type]/[id].
_RELATIVE = re.compile(r"[A-Z][A-Za-z]+/[A-Za-z0-9\-.]{1,64}")


@dataclass
class Entry:
    index: int
    method: str
    url: str
    full_url: str | None
    req: FhirRequest
    interaction: str
    op: Any = None
    op_id: str | None = None  # the id assigned before the store confirms it
    same_as: int | None = None  # the earlier entry of the same conditional create
    transform: Transform | None = None  # what its _summary or _elements keep of the answer
    placeholders: bool = False  # its search criteria name other entries (`_substitute`)

    def where(self) -> str:
        return f"Bundle.entry[{self.index}]"


def _status(code: int) -> str:
    return f"{code} {_REASONS.get(code, '')}".strip()


def entry_error(entry_index: int, what: str, exc: FhirError) -> FhirError:
    """The error of one entry, as the error of the whole Bundle, saying which entry."""
    prefix = f"Bundle.entry[{entry_index}]"
    issues = [Issue(i.code, f"{prefix} ({what}): {i.diagnostics}", i.severity,
                    [f"{prefix}.resource.{e.split('.', 1)[1]}" if "." in e else prefix
                     for e in i.expression] or [prefix]) for i in exc.issues]
    return FhirError(exc.status, issues[0].code, issues[0].diagnostics, issues=issues)


# -- reading the Bundle --------------------------------------------------------------------------

def _entry_request(req: FhirRequest, index: int, raw: Any) -> Entry:
    from server.fhir.router import routes

    where = f"Bundle.entry[{index}]"
    if not isinstance(raw, dict):
        raise invalid(f"{where} is not an object", expression=where)
    _check_entry(index, raw)
    request = raw.get("request")
    if not isinstance(request, dict):
        raise invalid(f"{where} has no request", expression=f"{where}.request")
    method, url = request.get("method"), request.get("url")
    if method not in _ORDER or not isinstance(url, str) or not url:
        raise invalid(f"{where}.request needs a method (GET, POST, PUT, PATCH, DELETE, HEAD) "
                      "and a url", expression=f"{where}.request")
    if url.startswith(req.base + "/"):
        url = url[len(req.base) + 1:]
    path, _, query = url.partition("?")
    try:
        route = routes().route(method, "/" + path.lstrip("/"))
    except FhirError as exc:
        raise entry_error(index, f"{method} {url}", exc) from None
    headers = {"content-type": "application/fhir+json"}
    if "prefer" in req.headers:  # the Bundle's Prefer applies to its entries
        headers["prefer"] = req.headers["prefer"]
    for field, header in (("ifMatch", "if-match"), ("ifNoneMatch", "if-none-match"),
                          ("ifNoneExist", "if-none-exist"),
                          ("ifModifiedSince", "if-modified-since")):
        if isinstance(request.get(field), str):
            headers[header] = request[field]
    if "if-modified-since" in headers and parse_http_date(headers["if-modified-since"]) is None:
        # An instant, as Bundle.entry.request.ifModifiedSince is typed: as the HTTP header.
        headers["if-modified-since"] = http_date(parse_instant(
            headers["if-modified-since"], f"{where}.request.ifModifiedSince"))
    resource = raw.get("resource")
    body = b""
    if method == "PATCH":
        headers["content-type"], body = _patch_body(index, resource)
        resource = None
    elif method in ("POST", "PUT") and resource is None:
        raise invalid(f"{where}: {method} needs a resource", expression=f"{where}.resource")
    params = route.params(parse_qsl(query, keep_blank_values=True))
    entry_req = FhirRequest(method, route.name, route.type, route.id, route.vid, route.op,
                            route.compartment, params, headers, body, req.base, req.principal,
                            req.settings, _resource=resource, context=req.context)
    try:  # refused now, before anything is written, rather than when answering
        transform = transform_for(entry_req.params)
    except FhirError as exc:
        raise entry_error(index, f"{method} {url}", exc) from None
    full_url = raw.get("fullUrl") if isinstance(raw.get("fullUrl"), str) else None
    return Entry(index, method, url, full_url, entry_req, route.name, transform=transform)


def check_envelope(bundle: dict[str, Any]) -> None:
    """The Bundle around its entries must be a valid R4 Bundle (400 otherwise); each entry is
    checked as it is read (`_check_entry`), its resource as it is processed."""
    _refuse_malformed(validate_resource({k: v for k, v in bundle.items() if k != "entry"},
                                        "Bundle"), "Bundle", "Bundle")
    if "total" in bundle and bundle.get("type") not in ("searchset", "history"):
        raise invalid("Bundle.total is only for a searchset or a history (bdl-1)",
                      expression="Bundle.total")


def _check_entry(index: int, raw: dict[str, Any]) -> None:
    """An entry, its resource aside, must be a valid Bundle.entry (400 otherwise)."""
    alone = {k: v for k, v in raw.items() if k != "resource"}
    if not alone:  # nothing but a resource: no request, said as such when it is read
        return
    where = f"Bundle.entry[{index}]"
    _refuse_malformed(validate_resource({"resourceType": "Bundle", "type": "batch",
                                         "entry": [alone]}, "Bundle"), "Bundle.entry[0]", where)
    for element, rule in (("search", "only for a searchset (bdl-2)"),
                          ("response", "only for a response or a history (bdl-4)")):
        if element in raw:
            raise invalid(f"{where}: entry.{element} is {rule}", expression=f"{where}.{element}")
    if isinstance(raw.get("fullUrl"), str) and "/_history/" in raw["fullUrl"]:
        raise invalid(f"{where}: a fullUrl cannot be a version-specific reference (bdl-8)",
                      expression=f"{where}.fullUrl")


def _refuse_malformed(issues: list[Issue], checked: str, where: str) -> None:
    errors = [Issue(i.code, f"{where}: {i.diagnostics}" if where != "Bundle" else i.diagnostics,
                    i.severity, [where + e[len(checked):] for e in i.expression])
              for i in issues if i.severity in ("error", "fatal")]
    if errors:
        raise FhirError(400, errors[0].code, errors[0].diagnostics, issues=errors)


def _patch_body(index: int, resource: Any) -> tuple[str, bytes]:
    """A PATCH entry carries its patch as a Binary (http.html#transaction)."""
    where = f"Bundle.entry[{index}].resource"
    if isinstance(resource, dict) and resource.get("resourceType") == "Binary":
        try:
            data = base64.b64decode(resource.get("data") or "", validate=True)
        except ValueError:
            raise invalid(f"{where}: the patch Binary's data is not base64",
                          expression=where) from None
        return resource.get("contentType") or JSON_PATCH, data
    if isinstance(resource, dict) and resource.get("resourceType") == "Parameters":
        raise FhirError(415, "not-supported", f"{where}: FHIRPath Patch is not supported; send "
                        "a JSON Patch in a Binary", expression=where)
    raise invalid(f"{where}: a PATCH entry needs a Binary holding a JSON Patch",
                  expression=where)


def _entries(req: FhirRequest) -> tuple[str, list[Any]]:
    bundle = req.resource()
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise invalid("POST to the base takes a transaction or batch Bundle",
                      expression="resourceType")
    kind = bundle.get("type")
    if kind not in ("transaction", "batch", "history"):
        raise invalid(f"Bundle.type must be transaction, batch or history to be processed, not "
                      f"{kind!r}", expression="Bundle.type")
    check_envelope(bundle)
    raw = bundle.get("entry", [])
    if not isinstance(raw, list):
        raise invalid("Bundle.entry must be an array", code="structure", expression="Bundle.entry")
    if len(raw) > MAX_ENTRIES:
        raise FhirError(413, "too-costly", f"a Bundle may have at most {MAX_ENTRIES} entries")
    return kind, raw


# -- responses -----------------------------------------------------------------------------------

def _response_entry(req: FhirRequest, resp: FhirResponse, entry: Entry) -> dict[str, Any]:
    """The response entry of one request entry: its ``_summary`` or ``_elements`` applied."""
    response: dict[str, Any] = {"status": _status(resp.status)}
    transform = entry.transform
    v = resp.version
    out: dict[str, Any] = {}
    if v is not None:
        out["fullUrl"] = full_url(req.base, v.type, v.id)
        if resp.location or resp.status in (200, 201) and resp.honour_prefer:
            response["location"] = f"{v.type}/{v.id}/_history/{v.version}"
        response["etag"] = v.etag
        response["lastModified"] = instant(v.last_updated)
    elif resp.deletion is not None:
        response["etag"] = resp.deletion.etag
        response["lastModified"] = instant(resp.deletion.last_updated)
    elif "ETag" in resp.headers:
        response["etag"] = resp.headers["ETag"]
    # Prefer: return= shapes what writes give back; a read or search answers with its result.
    want = req.prefer.get("return", "representation") if resp.honour_prefer else "representation"
    if entry.method == "HEAD" or resp.status == 304:
        want = "minimal"
    elif want == "OperationOutcome":
        response["outcome"] = information(f"{entry.interaction} succeeded")
    if v is not None and v.body is not None and want == "representation":
        out["resource"] = materialise(Stored(v), transform) if transform else Stored(v)
    elif resp.resource is not None:
        if resp.resource.get("resourceType") == "OperationOutcome":
            response["outcome"] = resp.resource
        elif want == "representation":
            out["resource"] = materialise(resp.resource, transform) if transform \
                else resp.resource
    out["response"] = response
    return out


def _error_entry(exc: FhirError) -> dict[str, Any]:
    return {"response": {"status": _status(exc.status), "outcome": exc.outcome()}}


def _bundle(kind: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": f"{kind}-response", "entry": entries}


# -- batch ---------------------------------------------------------------------------------------

async def _batch_entry(req: FhirRequest, index: int, raw: Any, store: ResourceStore,
                       full_urls: dict[str, int], earlier: int | None) -> dict[str, Any]:
    from server.fhir.router import routes

    try:
        entry = _entry_request(req, index, raw)
        if earlier is not None:
            raise invalid(f"this entry changes {entry.url}, as Bundle.entry[{earlier}] does; "
                          "the entries of a batch are processed on their own and must not "
                          "depend on each other: send a transaction")
        resource = entry.req._resource
        for ref in references.references(resource) if full_urls and isinstance(
                resource, dict) else ():
            if ref in full_urls:
                raise invalid(f"this entry refers to Bundle.entry[{full_urls[ref]}] ({ref}); "
                              "the entries of a batch are processed on their own and cannot "
                              "refer to each other: send a transaction")
        route = routes().route(entry.method, "/" + entry.url.split("?")[0].lstrip("/"))
        if entry.interaction in ("transaction", "batch"):
            raise invalid("a batch entry cannot hold another Bundle to process")
        resp = await route.handler(entry.req, store)
    except FhirError as exc:
        return _error_entry(exc)
    return _response_entry(req, resp, entry)


async def batch(req: FhirRequest, store: ResourceStore, raw: list[Any]) -> FhirResponse:
    """The entries run in the transactions' order (http.html#brules: "servers execute the batch
    in the same order as that specified below for transactions"), those of one method together,
    so that their writes share commits."""
    # urn:uuid and urn:oid names exist only in the Bundle: a reference to one cannot resolve.
    full_urls = {e["fullUrl"]: i for i, e in enumerate(raw) if isinstance(e, dict)
                 and isinstance(e.get("fullUrl"), str) and e["fullUrl"].startswith("urn:")}
    changed_by = _changed_twice(raw, req.base)
    entries: list[dict[str, Any]] = [{} for _ in raw]
    orders = [_method_order(e) for e in raw]
    for order in sorted(set(orders)):
        here = [i for i, o in enumerate(orders) if o == order]
        done = await asyncio.gather(*(_batch_entry(req, i, raw[i], store, full_urls,
                                                   changed_by.get(i)) for i in here))
        for i, entry in zip(here, done, strict=True):
            entries[i] = entry
    return FhirResponse(200, resource=_bundle("batch", entries))


def _request_of(raw: Any) -> dict[str, Any]:
    """A raw entry's request, as far as it is one (checked when the entry is run)."""
    request = raw.get("request") if isinstance(raw, dict) else None
    return request if isinstance(request, dict) else {}


def _method_order(raw: Any) -> int:
    """Where an entry comes in the processing order; one without a method, last (it fails)."""
    method = _request_of(raw).get("method")
    return _ORDER.get(method, 3) if isinstance(method, str) else 3


def _changed_twice(raw: list[Any], base: str) -> dict[int, int]:
    """The entries of a batch that change a resource (``Type/id``) an earlier entry changes,
    with that entry: "there SHALL be no interdependencies between the different entries in the
    Bundle that cause change on the server ... Servers SHOULD validate that this is the case"
    (http.html#brules)."""
    first: dict[str, int] = {}
    twice: dict[int, int] = {}
    for i, e in enumerate(raw):
        request = _request_of(e)
        if request.get("method") not in ("PUT", "PATCH", "DELETE"):
            continue
        url = request.get("url")
        if not isinstance(url, str) or "?" in url:
            continue
        target = url.removeprefix(base + "/").strip("/")
        if target in first:
            twice[i] = first[target]
        else:
            first[target] = i
    return twice


# -- transaction ---------------------------------------------------------------------------------

class _Read:
    """A read, inside the store transaction: one that fails fails the transaction."""

    def __init__(self, req: FhirRequest):
        assert req.type and req.id
        self.req, self.type, self.id = req, req.type, req.id

    def apply(self, tx: Transaction) -> Version:
        return writes.current_or_error(tx.read(self.type, self.id), self.type, self.id)

    def respond(self, v: Version) -> FhirResponse:
        from server.fhir.handlers import conditional_read

        return conditional_read(self.req, v)


class _VRead(_Read):
    def __init__(self, req: FhirRequest):
        super().__init__(req)
        self.vid = req.version_id or ""

    def apply(self, tx: Transaction) -> Version:
        v = tx.vread(self.type, self.id, int(self.vid)) if self.vid.isdigit() else None
        return writes.version_or_error(v, self.type, self.id, self.vid)

    def respond(self, v: Version) -> FhirResponse:
        return FhirResponse(200, version=v)


class _Search:
    """A search, inside the store transaction: it sees the transaction's writes."""

    def __init__(self, req: FhirRequest):
        from server.search import handlers

        self.req = req
        if req.compartment is not None:
            self.query, self.path = handlers.compartment_query(req)
        elif req.type is None:
            self.query, self.path = handlers.system_query(req), ""
        else:
            self.query, self.path = handlers.query_of(req, (req.type,), req.params), req.type

    def apply(self, tx: Transaction) -> SearchPage:
        try:
            return tx.search_page(self.query)
        except ValueError as exc:
            raise invalid(f"_cursor: {exc}", expression="_cursor") from None

    def respond(self, page: SearchPage) -> FhirResponse:
        from server.search.handlers import searchset

        return searchset(self.req, self.query, page, self.path, self.req.params)


def _build(entry: Entry) -> Any:
    req = entry.req
    name = entry.interaction
    builders = {
        "create": writes.build_create,
        "update": writes.build_update,
        "conditional-update": writes.build_conditional_update,
        "patch": writes.build_patch,
        "conditional-patch": lambda r: writes.build_patch(r, conditional=True),
        "delete": writes.build_delete,
        "conditional-delete": lambda r: writes.build_delete(r, conditional=True),
        "read": _Read,
        "vread": _VRead,
        "search-type": _Search,
        "search-system": _Search,
        "search-compartment": _Search,
    }
    return builders[name](req)


def _identities(entries: list[Entry]) -> dict[str, str]:
    """fullUrl -> ``Type/id`` for every entry that creates or updates a resource, with the ids
    assigned now (conditional ones are provisional until the store confirms them)."""
    mapping: dict[str, str] = {}
    targets: dict[str, int] = {}
    for e in entries:
        req = e.req
        if e.interaction == "create":
            e.op_id = writes.new_id()
            ref = f"{req.type}/{e.op_id}"
        elif e.interaction == "update":
            ref = f"{req.type}/{req.id}"
        elif e.interaction == "conditional-update":
            body_id = (req._resource or {}).get("id") if isinstance(req._resource, dict) else None
            e.op_id = body_id or writes.new_id()
            ref = f"{req.type}/{e.op_id}"
        elif e.interaction in ("delete", "patch"):
            ref = f"{req.type}/{req.id}"
        elif e.interaction == "conditional-patch":  # settled to the match (_settle_identities)
            ref = f"{req.type}/{writes.new_id()}"
        else:
            continue
        if ref in targets and e.interaction not in ("create", "conditional-update"):
            raise invalid(f"Bundle.entry[{e.index}] and Bundle.entry[{targets[ref]}] both change "
                          f"{ref}; a resource may appear only once in a transaction",
                          expression=e.where())
        targets[ref] = e.index
        if e.full_url:
            if e.full_url in mapping:
                raise invalid(f"Bundle.entry[{e.index}]: fullUrl {e.full_url} appears twice",
                              expression=f"{e.where()}.fullUrl")
            mapping[e.full_url] = ref
    return mapping


def _restful(full_url: str | None) -> re.Match[str] | None:
    """A fullUrl's [root], [type] and [id] when it is a RESTful URL; None for a urn:uuid or
    urn:oid (or a URL of anything but a resource)."""
    m = _RESTFUL.fullmatch(full_url) if full_url and "://" in full_url else None
    return m if m and structures().is_resource_type(m.group(2)) else None


def _check_full_url(e: Entry) -> None:
    """Bundle.entry.fullUrl "SHALL NOT disagree with the id in the resource": a RESTful one is
    the URL of the resource the entry writes, and references to it are taken to mean that."""
    m = _restful(e.full_url)
    if m is None or _ORDER[e.method] > 2:
        return
    resource = e.req._resource if isinstance(e.req._resource, dict) else {}
    type_, id_ = e.req.type, e.req.id or resource.get("id")
    if m.group(2) != type_ or id_ is not None and m.group(3) != id_:
        names = f"{type_}/{id_}" if id_ is not None else f"a {type_}"
        raise invalid(f"{e.where()} ({e.method} {e.url}): the fullUrl {e.full_url} disagrees "
                      f"with the entry, which writes {names}; a fullUrl that is not a urn:uuid "
                      "or urn:oid must be the URL of the entry's resource",
                      expression=f"{e.where()}.fullUrl")


class _Links:
    """What the references to the entries become (bundle.html §2.36.4.1, http.html#trules).

    A reference is to an entry when it is the entry's fullUrl or, relative (``Type/id``), when
    it is one once made absolute: against the [root] of the referring entry's fullUrl if that is
    RESTful, else against the server's base. It is rewritten to the entry's ``Type/id``.

    A version-specific reference (``…/_history/n``) is matched without its version and stays
    version-specific (http.html#trules). The version it keeps is the one the entry's write makes,
    so that it refers to what the transaction wrote: the client could not know that number for a
    resource the server creates or for the next version of one, and whatever it wrote (often the
    version on another server) names something else here. That version is known once the entry
    is written, so for now the reference becomes ``Type/id/_history/n``, noted in ``versioned``,
    and the entries holding one wait until the other writes are done (`_pin_versions`).
    """

    def __init__(self, entries: list[Entry], mapping: dict[str, str], base: str):
        self.mapping, self.base = mapping, base
        self.index = {e.full_url: e.index for e in entries if e.full_url in mapping}
        self.versioned: dict[str, int] = {}  # as written for now -> the entry it is to
        self.holders: set[int] = set()  # the entries holding version-specific ones

    def resolver(self, e: Entry) -> references.Resolver:
        """The references of entry ``e`` to entries, with what they become; others to None."""
        mapping = self.mapping
        m = _restful(e.full_url)
        root = m.group(1) if m else self.base

        def resolve(ref: str) -> str | None:
            url, history, version = ref.partition("/_history/")
            if url not in mapping:
                if not _RELATIVE.fullmatch(url) or f"{root}/{url}" not in mapping:
                    return None
                url = f"{root}/{url}"
            if not history:
                return mapping[url]
            for_now = f"{mapping[url]}/_history/{version}"
            self.versioned[for_now] = self.index[url]
            self.holders.add(e.index)
            return for_now

        return resolve


def _refuse_dangling(e: Entry) -> Callable[[str], None]:
    """What a reference of entry ``e`` that is to no entry goes through: one to a urn:uuid or
    urn:oid, names that mean nothing outside their Bundle, could never resolve."""
    def refuse(ref: str) -> None:
        if ref.startswith(references.URNS):
            raise entry_error(e.index, f"{e.method} {e.url}", invalid(
                f"the reference {ref} is to no entry of this Bundle (none that writes a "
                "resource has that fullUrl), and a urn:uuid or urn:oid means nothing outside "
                "its Bundle: it could never resolve"))
    return refuse


def _patch_check(e: Entry, links: _Links,
                 fixes: dict[str, str]) -> Callable[[dict[str, Any]], None]:
    """What the resource a PATCH entry makes goes through: the references its patch brings in
    are resolved as a resource's are, and settled as theirs (``fixes``). Those the resource
    already held are not the Bundle's to rewrite, unless the patch brings the same string: the
    patch's values are untyped JSON, so they are told apart by value, in the typed walk of the
    patched resource."""
    assert isinstance(e.op, writes.Patch)
    resolve, refuse = links.resolver(e), _refuse_dangling(e)
    brought = set(references.strings(e.op.values()))
    refs = set(references.reference_strings(e.op.values()))
    for value in brought:  # now, before anything is written: notes the version-specific ones
        if resolve(value) is None and value in refs:
            refuse(value)

    def link(ref: str) -> str | None:
        if ref not in brought:
            return None
        target = resolve(ref) or ref
        target = fixes.get(target, target)
        return target if target != ref else None

    def check(resource: dict[str, Any]) -> None:
        references.rewrite(resource, link)
        references.check_unconditional(resource)

    return check


def _conditional(e: Entry) -> set[str]:
    """The conditional references an entry brings: in its resource, or in a patch's values."""
    resource = getattr(e.op, "resource", None)
    if isinstance(resource, dict):
        return set(references.conditional_references(resource))
    if isinstance(e.op, writes.Patch):
        return {r for r in references.reference_strings(e.op.values())
                if references.CONDITIONAL.match(r)}
    return set()


async def transaction(req: FhirRequest, store: ResourceStore, raw: list[Any]) -> FhirResponse:
    entries = [_entry_request(req, i, e) for i, e in enumerate(raw)]
    for e in entries:
        if e.interaction not in _IN_TRANSACTION:
            raise entry_error(e.index, f"{e.method} {e.url}", FhirError(
                400, "not-supported", f"{e.interaction} is not allowed inside a transaction"))
        _check_full_url(e)
    mapping = _identities(entries)
    links = _Links(entries, mapping, req.base)
    for e in entries:
        resource = e.req._resource
        if isinstance(resource, dict) and (mapping or any(
                r.startswith(references.URNS) for r in references.reference_strings(resource))):
            references.rewrite(resource, links.resolver(e), _refuse_dangling(e))
    for e in entries:
        e.placeholders = _substitute(e, mapping.get, references.URNS)
        try:
            e.op = _build(e)
        except FhirError as exc:
            raise entry_error(e.index, f"{e.method} {e.url}", exc) from None
        if e.op_id is not None:
            if e.interaction == "create":
                e.op.id = e.op_id
            else:
                e.op.fresh_id = e.op_id
    fixes: dict[str, str] = {}  # what references became once settled in the store
    for e in entries:
        if isinstance(e.op, writes.Patch):
            e.op.check_references = _patch_check(e, links, fixes)
    conditional = {e.index: _conditional(e) for e in entries}
    conditional_refs = _conditional_queries(entries, conditional, req.base)
    # The writes whose resources hold conditional references wait until the other writes are
    # done: their criteria see what the transaction deleted and created. So do those holding
    # version-specific references to entries: the versions are known once those are written.
    waiting = [e for e in entries if conditional[e.index] or e.index in links.holders]
    later = {e.index for e in waiting}

    def apply(tx: Transaction) -> list[Any]:
        planned = _settle_identities(tx, entries, mapping, fixes)
        results: list[Any] = [None] * len(entries)
        later.update(e.index for e in entries if e.same_as in later)  # after the first

        def run(e: Entry) -> None:
            if e.same_as is not None:  # answered as the first: 200 with what it made or found
                results[e.index] = (results[e.same_as][0], False)
                return
            try:
                results[e.index] = result = e.op.apply(tx)
            except FhirError as exc:
                raise entry_error(e.index, f"{e.method} {e.url}", exc) from None
            v = result[0] if isinstance(result, tuple) else result
            want = planned.get(e.index)
            if want is not None and isinstance(v, Version) and (v.type, v.id) != want:
                raise entry_error(e.index, f"{e.method} {e.url}", _moved(tx, want, v, planned))

        ordered = sorted(entries, key=lambda x: _ORDER[x.method])
        for e in ordered:
            if _ORDER[e.method] < 3 and e.index not in later:
                run(e)
        _resolve_references(tx, waiting, conditional_refs, fixes)
        _pin_versions(entries, waiting, results, links.versioned, fixes)
        for e in entries:
            if _ORDER[e.method] == 3 and e.placeholders and _substitute(e, fixes.get):
                e.op = _build(e)
        for e in ordered:
            if e.index in later or _ORDER[e.method] == 3:
                run(e)
        return results

    results = await store.run(apply)
    out = [_response_entry(req, e.op.respond(result), e)
           for e, result in zip(entries, results, strict=True)]
    return FhirResponse(200, resource=_bundle("transaction", out))


def _settle_identities(tx: Transaction, entries: list[Entry], mapping: dict[str, str],
                       fixes: dict[str, str]) -> dict[int, tuple[str, str]]:
    """Inside the store transaction, before any write: the resource each DELETE, POST, PUT and
    PATCH entry changes, conditional ones resolved against the data as it was. Two entries on
    one resource fail the transaction (http.html#trules); references to the ``fullUrl`` of a
    conditional create or update are pointed at the id it resolved to."""
    planned: dict[int, tuple[str, str]] = {}
    by_identity: dict[tuple[str, str], int] = {}
    by_criteria: dict[tuple[Any, ...], tuple[int, tuple[str, str]]] = {}
    fix: dict[str, str] = {}
    # Those whose criteria name other entries come last: their criteria stand for what those
    # settle to (a conditional create may find an existing resource).
    for e in sorted(entries, key=lambda x: x.placeholders):
        if _ORDER[e.method] > 2:
            continue
        if e.placeholders and _substitute(e, fix.get):
            e.op.query = _build(e).query
        criteria = _create_criteria(e)
        if criteria in by_criteria:
            # The same conditional create again stands for the same resource: the entry is
            # answered with what the first one wrote or found, and writes nothing. Unless the
            # first creates it from a different resource: which one is kept would depend on
            # the order of the entries (http.html#trules: it "SHALL NOT").
            e.same_as, first = by_criteria[criteria]
            earlier = entries[e.same_as]
            if first[1] == earlier.op_id and not same_content(
                    {**earlier.req._resource, "id": None}, {**e.req._resource, "id": None}):
                raise invalid(f"Bundle.entry[{e.same_as}] and Bundle.entry[{e.index}] create "
                              f"a {e.req.type} if none matches the same criteria, from "
                              "different resources: which one is stored would depend on their "
                              "order; send one", expression=e.where())
            planned[e.index] = first
            if e.full_url:
                fix[mapping[e.full_url]] = f"{first[0]}/{first[1]}"
            continue
        try:
            identity = _target(tx, e)
        except FhirError as exc:
            raise entry_error(e.index, f"{e.method} {e.url}", exc) from None
        if identity is None:
            continue
        if identity == _NOTHING:
            planned[e.index] = identity
            continue
        if criteria is not None:
            by_criteria[criteria] = e.index, identity
        other = by_identity.setdefault(identity, e.index)
        if other != e.index:
            raise invalid(f"Bundle.entry[{other}] and Bundle.entry[{e.index}] both change "
                          f"{identity[0]}/{identity[1]}; a resource may appear only once in a "
                          "transaction", expression=e.where())
        planned[e.index] = identity
        ref = f"{identity[0]}/{identity[1]}"
        if e.full_url and mapping.get(e.full_url, ref) != ref:
            fix[mapping[e.full_url]] = ref
    fixes.update(fix)
    _rewrite(entries, fix)
    return planned


def _substitute(e: Entry, resolve: Callable[[str], str | None], prefix: tuple[str, ...] = ("",)
               ) -> bool:
    """Replace the values in an entry's search criteria (its URL's parameters, its
    ifNoneExist) that ``resolve`` maps (those starting with ``prefix``); whether any was.

    A urn:uuid that is an entry's fullUrl stands for that entry's resource here too ("Servers
    SHALL replace all matching links in the bundle", http.html#trules): first for the id it is
    given, then for the one it settles to (a conditional create that finds a resource)."""
    changed = False

    def values(name: str, raw: str) -> str:
        nonlocal changed
        # _id takes the id alone (also at the end of a chain or _has): looked up as Type/id
        is_id = name.rsplit(":", 1)[-1].rsplit(".", 1)[-1] == "_id"
        parts = raw.split(",")
        for i, part in enumerate(parts):
            key = f"{e.req.type}/{part}" if is_id and not part.startswith(references.URNS) \
                else part
            if key.startswith(prefix) and (new := resolve(key)) is not None and new != key:
                parts[i], changed = new.rpartition("/")[2] if is_id else new, True
        return ",".join(parts)

    req = e.req
    req.params = [(k, values(k, v)) for k, v in req.params]
    if "if-none-exist" in req.headers:
        criteria = parse_qsl(req.headers["if-none-exist"].lstrip("?"), keep_blank_values=True)
        replaced = [(k, values(k, v)) for k, v in criteria]
        if replaced != criteria:
            req.headers["if-none-exist"] = urlencode(replaced)
    return changed


def _create_criteria(e: Entry) -> tuple[Any, ...] | None:
    """A conditional create's type and search clauses, however its criteria were written (the
    If-None-Exist header or the URL's parameters, in any order), to find the same one twice."""
    query = e.op.query if e.interaction == "create" else None
    return None if query is None else (e.req.type, frozenset(query.clauses))


#: The identity of a conditional patch or delete whose criteria matched nothing.
_NOTHING = ("", "")


def _target(tx: Transaction, e: Entry) -> tuple[str, str] | None:
    """The resource a write entry changes (or a conditional create matches); None when its
    criteria match nothing (or too much: the entry fails when it runs)."""
    op, type_ = e.op, e.req.type or ""
    if e.interaction in ("create", "conditional-update"):
        return type_, op.target(tx)
    if e.interaction in ("conditional-patch", "conditional-delete"):
        matches = tx.search(op.query, 2)
        if not matches:
            return _NOTHING
        return (type_, matches[0].id) if len(matches) == 1 else None
    return (type_, e.req.id) if e.req.id else None


def _conditional_queries(entries: list[Entry], conditional: dict[int, set[str]],
                         base: str) -> dict[str, tuple[Any, Entry]]:
    """Each conditional reference's search, with the first entry holding it (named if it
    fails)."""
    queries: dict[str, tuple[Any, Entry]] = {}
    for e in entries:
        for ref in conditional[e.index] - queries.keys():
            type_, _, criteria = ref.partition("?")
            try:
                queries[ref] = parse_conditional(type_, criteria,
                                                 f"the conditional reference {ref}", base), e
            except FhirError as exc:
                raise entry_error(e.index, f"{e.method} {e.url}", exc) from None
    return queries


def _resolve_references(tx: Transaction, entries: list[Entry],
                        conditional_refs: dict[str, tuple[Any, Entry]],
                        fixes: dict[str, str]) -> None:
    """After the other writes: each conditional reference must match exactly one resource."""
    fix: dict[str, str] = {}
    for ref, (query, e) in conditional_refs.items():
        matches = tx.search(query, 2)
        if len(matches) != 1:
            raise entry_error(e.index, f"{e.method} {e.url}", FhirError(
                412 if matches else 404, "multiple-matches" if matches else "not-found",
                f"the conditional reference {ref} matches {len(matches)} resources; it must "
                "match exactly one"))
        fix[ref] = f"{matches[0].type}/{matches[0].id}"
    fixes.update(fix)
    _rewrite(entries, fix)


def _pin_versions(entries: list[Entry], waiting: list[Entry], results: list[Any],
                  versioned: dict[str, int], fixes: dict[str, str]) -> None:
    """After the other writes: the version-specific references to entries, held by the
    ``waiting`` entries, name the version each entry's write made (or, for a conditional create
    that matched, found): see `_Links`."""
    fix: dict[str, str] = {}
    for ref, index in versioned.items():
        result = results[index]
        v = result[0] if isinstance(result, tuple) else result
        if not isinstance(v, Version):  # it waits too: its version is not known yet
            target = entries[index]
            raise entry_error(index, f"{target.method} {target.url}", FhirError(
                400, "not-supported", f"{ref} refers to a version of this entry, which holds "
                "conditional or version-specific references itself, so it is written after "
                "the entries that refer to it: its version is not known when they are"))
        fix[ref] = f"{v.type}/{v.id}/_history/{v.version}"
    fixes.update(fix)
    _rewrite(waiting, fix)


def _moved(tx: Transaction, want: tuple[str, str], v: Version,
           planned: dict[int, tuple[str, str]]) -> FhirError:
    """The error of a conditional entry whose criteria, once the transaction's other writes
    are done, select ``v`` rather than ``want``, what they selected before them."""
    found = f"{v.type}/{v.id}"
    before = None if want == _NOTHING else tx.read(*want)
    if want != _NOTHING and (before is None or before.deleted):
        # Nothing matched, so this entry was to create ``want``; another entry created first.
        maker = next((i for i, p in planned.items() if p == (v.type, v.id)), None)
        by = f", which Bundle.entry[{maker}] creates" if maker is not None else ""
        return FhirError(409, "conflict", f"its criteria match no stored {v.type}, so it would "
                         f"create one, but they match {found}{by}: both entries would create "
                         "the same resource (a transaction may hold one conditional write per "
                         "criteria)")
    what = "nothing" if want == _NOTHING else f"{want[0]}/{want[1]}"
    return FhirError(409, "conflict", f"its criteria matched {what} before the transaction's "
                     f"writes and {found} after them")


def _rewrite(entries: list[Entry], fix: dict[str, str]) -> None:
    """Rewrite (and index again) the entries' resources that refer to ``fix``'s keys."""
    if not fix:
        return
    for e in entries:
        resource = getattr(e.op, "resource", None)
        if isinstance(resource, dict) and references.rewrite(resource, fix.get):
            e.op.indexes = prepare(resource, e.req.type or "")


async def process(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """POST [base]: a transaction, batch or history Bundle."""
    kind, raw = _entries(req)
    if kind == "batch":
        return await batch(req, store, raw)
    if kind == "history":
        return await replay(req, store, raw)
    return await transaction(req, store, raw)


async def replay(req: FhirRequest, store: ResourceStore, raw: list[Any]) -> FhirResponse:
    """A history Bundle (http.html#transaction: "servers SHOULD accept a history Bundle"),
    taken as a batch that replays the changes it lists, oldest first (a history lists the
    newest first), each resource keeping its id: a POST becomes a PUT to that id. The answer is
    a batch-response, its entries in the Bundle's order."""
    puts = [_as_put(e) for e in raw]
    done = await _replayed(store, puts)
    out: list[dict[str, Any]] = [{} for _ in raw]
    for i in reversed(range(len(raw))):
        if i in done:
            out[i] = {"response": {"status": "200 OK", "outcome": information(
                f"{done[i]} is already as this history leaves it; its changes are not made "
                "again")}}
        else:
            out[i] = await _batch_entry(req, i, puts[i], store, {}, None)
    return FhirResponse(200, resource=_bundle("batch", out))


async def _replayed(store: ResourceStore, puts: list[Any]) -> dict[int, str]:
    """The entries of a history whose resource is already as the history leaves it (its
    newest entry, the first listed): a history imported again is not written again. Entry
    index -> the resource."""
    by_resource: dict[str, list[int]] = {}
    for i, e in enumerate(puts):
        request = _request_of(e)
        url = request.get("url")
        if request.get("method") in ("PUT", "DELETE") and isinstance(url, str) \
                and _RELATIVE.fullmatch(url):
            by_resource.setdefault(url, []).append(i)
    done: dict[int, str] = {}
    for url, indexes in by_resource.items():
        newest = puts[indexes[0]]
        type_, _, id_ = url.partition("/")
        try:
            current = await store.read(type_, id_)
        except FhirError:  # not the caller's to read: the entries say so when run
            continue
        if current is None:
            continue
        resource = newest.get("resource")
        if (current.deleted and _request_of(newest).get("method") == "DELETE") or (
                not current.deleted and isinstance(resource, dict) and current.body is not None
                and same_content(codec.loads(current.body), resource)):
            done.update((i, url) for i in indexes)
    return done


def _as_put(raw: Any) -> Any:
    """A history entry as the change to make again: without its response (what the change
    answered then), and a POST as a PUT to the id it created (in the resource, or else the
    fullUrl's)."""
    if not isinstance(raw, dict):
        return raw
    raw = {k: v for k, v in raw.items() if k != "response"}
    request = _request_of(raw)
    resource = raw.get("resource")
    if request.get("method") != "POST" or not isinstance(resource, dict) or \
            not isinstance(resource.get("resourceType"), str):
        return raw
    m = _restful(raw.get("fullUrl"))
    id_ = resource.get("id") or (m.group(3) if m else None)
    if not isinstance(id_, str):
        return raw
    return {**raw, "resource": {**resource, "id": id_},
            "request": {**request, "method": "PUT", "url": f"{resource['resourceType']}/{id_}"}}


"""The FHIR RESTful interactions (http://hl7.org/fhir/R4/http.html), one function each.

Every handler takes the parsed request and the caller's (access-checked) store and returns a
:class:`FhirResponse`; errors are raised as :class:`FhirError`. Writes validate and extract
indexes first, then run one function atomically in the store, where version checks and
conditional searches see the same state the write changes.
"""

from __future__ import annotations

from typing import Any

from server.fhir import references, writes
from server.fhir.bundles import bundle, history_entry, link_url
from server.fhir.errors import FhirError, invalid, not_found
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.values import parse_count, parse_etags, parse_http_date, parse_instant
from server.fhir.writes import current_or_error
from server.search.query import Parser
from server.storage.base import HistoryQuery, ResourceStore, Version

# -- read ---------------------------------------------------------------------------------------

async def read(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id
    return conditional_read(req, current_or_error(await store.read(req.type, req.id), req.type,
                                                  req.id))


def conditional_read(req: FhirRequest, v: Version) -> FhirResponse:
    """200 with the version, or 304 when If-None-Match or If-Modified-Since say the caller has
    it (http.html#cread)."""
    etags = parse_etags(req.header("if-none-match"), "If-None-Match")
    if etags is not None:  # RFC 9110 §13.1.3: then If-Modified-Since is not looked at
        return FhirResponse(304 if etags.matches(v.version) else 200, version=v)
    since = req.header("if-modified-since")
    if since is not None:
        t = parse_http_date(since)
        if t is not None and v.last_updated // 1_000_000 * 1_000_000 <= t:
            return FhirResponse(304, version=v)
    return FhirResponse(200, version=v)


async def vread(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id and req.version_id
    try:
        number = int(req.version_id)
    except ValueError:
        raise not_found(req.type, f"{req.id}/_history/{req.version_id}") from None
    v = await store.vread(req.type, req.id, number)
    return FhirResponse(200, version=writes.version_or_error(v, req.type, req.id,
                                                            req.version_id))


# -- create / update / patch / delete -----------------------------------------------------------

async def _run(store: ResourceStore, op: Any) -> FhirResponse:
    return op.respond(await store.run(op.apply))


async def create(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, _unconditional(writes.build_create(req)))


async def update(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, _unconditional(writes.build_update(req)))


async def conditional_update(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, _unconditional(writes.build_conditional_update(req)))


def _unconditional(op: Any) -> Any:
    references.check_unconditional(op.resource)
    return op


async def patch(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, writes.build_patch(req))


async def conditional_patch(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, writes.build_patch(req, conditional=True))


async def delete(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, writes.build_delete(req))


async def conditional_delete(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(store, writes.build_delete(req, conditional=True))


# -- history ------------------------------------------------------------------------------------

_HISTORY_PARAMS = {"_since", "_at", "_count", "_cursor", "_format", "_pretty", "_summary",
                   "_elements"}


async def history(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    settings = req.settings
    since = at = None
    for k, v in req.params:
        if k == "_since":
            since = parse_instant(v, "_since")
        elif k == "_at":  # a period, as a date search reads the value
            found = Parser().date("_at", v)
            if found.prefix != "eq" or v[:2] == "eq":
                raise invalid(f"_at: {v!r} is not a date, dateTime or instant", expression="_at")
            at = (int(found.lo), int(found.hi))
        elif k == "_list":
            raise FhirError(400, "not-supported", "_list is not supported on history")
    count = parse_count(req.param("_count"), settings.default_page_size, settings.max_page_size)
    if req.id is not None:
        assert req.type
        current = await store.read(req.type, req.id)
        if current is None:
            raise not_found(req.type, req.id)
    cursor = req.param("_cursor")
    try:
        page = await store.history(HistoryQuery(req.type, req.id, since, at, count, cursor))
    except ValueError:
        raise invalid("_cursor: this page link is not valid", expression="_cursor") from None
    path = "/".join(p for p in (req.type, req.id, "_history") if p)
    kept = [(k, v) for k, v in req.params if k in _HISTORY_PARAMS and k != "_cursor"]
    links = [("self", link_url(req.base, path, req.params))]
    if page.next_cursor:
        links.append(("next", link_url(req.base, path, [*kept, ("_cursor", page.next_cursor)])))
    entries = [history_entry(req.base, v) for v in page.entries]
    return FhirResponse(200, resource=bundle("history", entries, links, page.total))

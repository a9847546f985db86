"""The FHIR RESTful interactions (http://hl7.org/fhir/R4/http.html), one function each.

Every handler takes the parsed request and the caller's (access-checked) store and returns a
:class:`FhirResponse`; errors are raised as :class:`FhirError`. Writes validate and extract
indexes first, then run one function atomically in the store, where version checks and
conditional searches see the same state the write changes.
"""

from __future__ import annotations

import base64
import uuid
from typing import Any

import jsonpatch

from server.fhir import codec
from server.fhir.bundles import bundle, history_entry, link_url
from server.fhir.errors import (
    FhirError,
    conflict,
    gone,
    information,
    invalid,
    not_found,
    precondition_failed,
)
from server.fhir.prepare import check_type, prepare
from server.fhir.request import JSON_PATCH, JSON_TYPES, XML_TYPES, FhirRequest, FhirResponse
from server.fhir.values import parse_count, parse_etag, parse_http_date, parse_instant, valid_id
from server.search.query import parse_conditional
from server.storage.base import HistoryQuery, ResourceStore, Transaction, Version


_FORMAT_PARAMS = {"_format", "_pretty", "_summary", "_elements"}


def new_id() -> str:
    return str(uuid.uuid4())


def _check_id(id: str) -> None:
    if not valid_id(id):
        raise invalid(f"{id!r} is not a valid resource id ([A-Za-z0-9-.]{{1,64}})")


def _current_or_error(v: Version | None, type: str, id: str) -> Version:
    if v is None:
        raise not_found(type, id)
    if v.deleted:
        raise gone(type, id, v.version)
    return v


# -- read ---------------------------------------------------------------------------------------

async def read(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id
    v = _current_or_error(await store.read(req.type, req.id), req.type, req.id)
    etag = req.header("if-none-match")
    if etag is not None and parse_etag(etag, "If-None-Match") == v.version:
        return FhirResponse(304, version=v)
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
    if v is None:
        raise not_found(req.type, f"{req.id}/_history/{req.version_id}")
    if v.deleted:
        raise gone(req.type, req.id, v.version)
    return FhirResponse(200, version=v)


# -- create / update / patch / delete -----------------------------------------------------------

def _binary_from_native(req: FhirRequest) -> dict[str, Any]:
    """A Binary posted in its native form (http.html#binary): the body is the content."""
    resource: dict[str, Any] = {"resourceType": "Binary", "contentType": req.content_type}
    if req.body:
        resource["data"] = base64.b64encode(req.body).decode()
    security = req.header("x-security-context")
    if security:
        resource["securityContext"] = {"reference": security}
    return resource


def _body_resource(req: FhirRequest) -> Any:
    ct = req.content_type
    if req.type == "Binary" and ct and ct not in JSON_TYPES and ct not in XML_TYPES:
        return _binary_from_native(req)
    return req.resource()


async def create(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type
    type_ = req.type
    resource = check_type(_body_resource(req), type_)
    resource.pop("id", None)  # the server assigns the id of a created resource
    indexes = prepare(resource, type_)
    condition: Any = req.header("if-none-exist")
    criteria = [(k, v) for k, v in req.params if k not in _FORMAT_PARAMS]
    if condition is None and criteria:
        condition = criteria  # POST [type]?[criteria], as some clients send conditional create
    query = parse_conditional(type_, condition, "If-None-Exist") if condition else None
    id_ = new_id()

    def apply(tx: Transaction) -> tuple[Version, bool]:
        if query is not None:
            matches = tx.search(query, 2)
            if len(matches) > 1:
                raise precondition_failed(
                    f"If-None-Exist matches {len(matches)} {type_} resources; it must match "
                    "at most one")
            if matches:
                return matches[0], False
        return tx.write(type_, id_, resource, indexes, "POST"), True

    version, created = await store.run(apply)
    return FhirResponse(201 if created else 200, version=version, location=created,
                        honour_prefer=True)


def _write_checked(tx: Transaction, type_: str, id_: str, resource: dict[str, Any],
                   indexes: Any, method: str, if_match: int | None) -> tuple[Version, bool]:
    """Write a new version unless If-Match fails or nothing changed; (version, created)."""
    current = tx.read(type_, id_)
    if if_match is not None and (current is None or current.deleted
                                 or current.version != if_match):
        have = "no current version" if current is None or current.deleted \
            else f"the current version is {current.version}"
        raise precondition_failed(f"If-Match asks for version {if_match} of {type_}/{id_}, "
                                  f"but {have}")
    created = current is None or current.deleted
    return tx.write(type_, id_, resource, indexes, method), created


async def update(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id
    type_, id_ = req.type, req.id
    _check_id(id_)
    resource = check_type(_body_resource(req), type_)
    if req.type == "Binary" and "id" not in resource and req.content_type not in JSON_TYPES \
            and req.content_type not in XML_TYPES:
        resource["id"] = id_
    body_id = resource.get("id")
    if body_id is None:
        raise invalid("an update must carry the resource id in the body", expression="id")
    if body_id != id_:
        raise invalid(f"the id in the body ({body_id!r}) does not match the URL ({id_!r})",
                      expression="id")
    indexes = prepare(resource, type_)
    if_match = parse_etag(req.header("if-match"))
    version, created = await store.run(
        lambda tx: _write_checked(tx, type_, id_, resource, indexes, "PUT", if_match))
    return FhirResponse(201 if created else 200, version=version, location=created,
                        honour_prefer=True)


async def conditional_update(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """PUT [type]?[criteria] (http.html#cond-update)."""
    assert req.type
    type_ = req.type
    query = parse_conditional(type_, req.params, "the conditional update")
    resource = check_type(_body_resource(req), type_)
    body_id = resource.get("id")
    if body_id is not None:
        _check_id(body_id)
    indexes = prepare(resource, type_)
    if_match = parse_etag(req.header("if-match"))
    fresh_id = new_id()

    def apply(tx: Transaction) -> tuple[Version, bool]:
        matches = tx.search(query, 2)
        if len(matches) > 1:
            raise precondition_failed(f"the criteria match {len(matches)} {type_} resources; "
                                      "a conditional update needs at most one")
        if matches:
            target = matches[0].id
            if body_id is not None and body_id != target:
                raise invalid(f"the id in the body ({body_id!r}) is not the id of the resource "
                              f"the criteria match ({target!r})", expression="id")
            resource["id"] = target
            return _write_checked(tx, type_, target, resource, indexes, "PUT", if_match)
        if body_id is not None:
            existing = tx.read(type_, body_id)
            if existing is not None and not existing.deleted:
                raise conflict(f"no {type_} matches the criteria, but {type_}/{body_id} exists "
                               "and does not match them")
            return _write_checked(tx, type_, body_id, resource, indexes, "PUT", None)
        return tx.write(type_, fresh_id, resource, indexes, "POST"), True

    version, created = await store.run(apply)
    return FhirResponse(201 if created else 200, version=version, location=created,
                        honour_prefer=True)


MERGE_PATCH = "application/merge-patch+json"


class _MergePatch:
    """RFC 7386 JSON Merge Patch (what some clients, e.g. fhirpy, send as application/json)."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc

    def apply(self, target: Any) -> Any:
        return _merge(target, self.doc)


def _merge(target: Any, patch: Any) -> Any:
    if not isinstance(patch, dict):
        return patch
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merge(out.get(key), value)
    return out


def _patch_document(req: FhirRequest) -> jsonpatch.JsonPatch | _MergePatch:
    """JSON Patch (application/json-patch+json), or JSON Merge Patch (application/merge-patch
    +json, or a JSON object sent as application/json). FHIRPath Patch is not supported."""
    ct = req.content_type
    if ct not in (JSON_PATCH, MERGE_PATCH, "application/json"):
        raise FhirError(415, "not-supported",
                        f"patch content type {ct or '(none)'!r} is not supported; send a JSON "
                        f"Patch ({JSON_PATCH}) or a JSON Merge Patch ({MERGE_PATCH})")
    try:
        doc = codec.loads(req.body)
    except codec.JsonError as exc:
        raise invalid(f"invalid patch document: {exc}", code="structure") from None
    if isinstance(doc, dict) and ct != JSON_PATCH:
        return _MergePatch(doc)
    if not isinstance(doc, list):
        raise invalid("a JSON Patch document is a JSON array of operations", code="structure")
    try:
        return jsonpatch.JsonPatch(doc)
    except (jsonpatch.InvalidJsonPatch, TypeError) as exc:
        raise invalid(f"invalid JSON Patch: {exc}", code="structure") from None


_PATCH_RETRIES = 5


async def _patch_resource(req: FhirRequest, store: ResourceStore, type_: str,
                          locate: Any) -> FhirResponse:
    """Apply a JSON Patch optimistically: patch and validate outside the write lock, then write
    only if the version is still the one patched (else try again)."""
    patch = _patch_document(req)
    if_match = parse_etag(req.header("if-match"))
    for _ in range(_PATCH_RETRIES):
        current = await locate()
        if if_match is not None and current.version != if_match:
            raise precondition_failed(f"If-Match asks for version {if_match} of "
                                      f"{type_}/{current.id}, but the current version is "
                                      f"{current.version}")
        assert current.body is not None
        try:
            patched = patch.apply(codec.loads(current.body))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError,
                KeyError, IndexError) as exc:
            raise FhirError(422, "processing", f"the patch cannot be applied: {exc}") from None
        if not isinstance(patched, dict) or patched.get("resourceType") != type_:
            raise FhirError(422, "processing", "the patch must not change the resourceType")
        if patched.get("id") != current.id:
            raise FhirError(422, "processing", "the patch must not change the id")
        indexes = prepare(patched, type_)
        expected = current.version

        def apply(tx: Transaction, patched: dict[str, Any] = patched, indexes: Any = indexes,
                  expected: int = expected, id_: str = current.id) -> Version | None:
            now = tx.read(type_, id_)
            if now is None or now.deleted or now.version != expected:
                return None  # changed meanwhile: patch again
            return _write_checked(tx, type_, id_, patched, indexes, "PATCH", None)[0]

        version = await store.run(apply)
        if version is not None:
            return FhirResponse(200, version=version, honour_prefer=True)
    raise conflict(f"{type_} kept changing while the patch was applied; try again")


async def patch(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id
    type_, id_ = req.type, req.id

    async def locate() -> Version:
        return _current_or_error(await store.read(type_, id_), type_, id_)

    return await _patch_resource(req, store, type_, locate)


async def _single_match(store: ResourceStore, type_: str, query: Any, what: str) -> Version | None:
    matches = await store.run(lambda tx: tx.search(query, 2))
    if len(matches) > 1:
        raise precondition_failed(f"the criteria match {len(matches)} {type_} resources; "
                                  f"a conditional {what} needs exactly one")
    return matches[0] if matches else None


async def conditional_patch(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type
    type_ = req.type
    query = parse_conditional(type_, req.params, "the conditional patch")

    async def locate() -> Version:
        match = await _single_match(store, type_, query, "patch")
        if match is None:
            raise FhirError(404, "not-found", f"no {type_} matches the criteria")
        return match

    return await _patch_resource(req, store, type_, locate)


def _deleted_response(type_: str, id_: str, v: Version) -> FhirResponse:
    return FhirResponse(200, resource=information(f"{type_}/{id_} deleted (version {v.version})"),
                        headers={"ETag": v.etag})


async def delete(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type and req.id
    type_, id_ = req.type, req.id
    if_match = parse_etag(req.header("if-match"))

    def apply(tx: Transaction) -> Version | None:
        current = tx.read(type_, id_)
        if if_match is not None and (current is None or current.version != if_match):
            raise precondition_failed(f"If-Match asks for version {if_match} of {type_}/{id_}")
        return tx.delete(type_, id_)

    v = await store.run(apply)
    if v is None:
        raise not_found(type_, id_)
    return _deleted_response(type_, id_, v)


async def conditional_delete(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """DELETE [type]?[criteria]: one match is deleted; several are refused (single)."""
    assert req.type
    type_ = req.type
    query = parse_conditional(type_, req.params, "the conditional delete")

    def apply(tx: Transaction) -> Version | None:
        matches = tx.search(query, 2)
        if len(matches) > 1:
            raise precondition_failed(f"the criteria match {len(matches)} {type_} resources; "
                                      "this server deletes only one at a time")
        return tx.delete(type_, matches[0].id) if matches else None

    v = await store.run(apply)
    if v is None:
        return FhirResponse(200, resource=information(f"no {type_} matches the criteria; "
                                                      "nothing deleted"))
    return _deleted_response(type_, v.id, v)


# -- history ------------------------------------------------------------------------------------

_HISTORY_PARAMS = {"_since", "_at", "_count", "_cursor", "_format", "_pretty", "_summary",
                   "_elements"}


async def history(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    settings = req.settings
    since = at = None
    for k, v in req.params:
        if k == "_since":
            since = parse_instant(v, "_since")
        elif k == "_at":
            at = parse_instant(v, "_at")
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

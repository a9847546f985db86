"""Writes as prepared operations: checked, validated and indexed first, applied in the store after.

Building an operation from a request does the CPU work (parsing, validation, index extraction)
outside the store's write lock. ``apply(tx)`` then does only what must see the stored state: the
conditional searches, the version checks and the write. ``respond(result)`` turns the outcome into
the HTTP response. A single request applies one operation in one store transaction; a
transaction Bundle applies all of its entries' operations in one (server.fhir.transaction).
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import jsonpatch

from server.fhir import codec, hooks, references
from server.fhir.errors import FhirError, conflict, gone, invalid, not_found, precondition_failed
from server.fhir.prepare import check_type, prepare
from server.fhir.request import JSON_PATCH, JSON_TYPES, XML_TYPES, FhirRequest, FhirResponse
from server.fhir.values import Etags, parse_etags, valid_id
from server.search.plan import SearchQuery
from server.search.query import parse_conditional
from server.storage.base import IndexRows, Transaction, Version

MERGE_PATCH = "application/merge-patch+json"
_FORMAT_PARAMS = {"_format", "_pretty", "_summary", "_elements"}


def new_id() -> str:
    return str(uuid.uuid4())


def check_id(id: str) -> None:
    if not valid_id(id):
        raise invalid(f"{id!r} is not a valid resource id ([A-Za-z0-9-.]{{1,64}})")


def current_or_error(v: Version | None, type: str, id: str) -> Version:
    if v is None:
        raise not_found(type, id)
    if v.deleted:
        raise gone(type, id, v.version)
    return v


def version_or_error(v: Version | None, type: str, id: str, vid: str) -> Version:
    """What a vread of version ``vid`` (as the URL writes it) found: 404 if nothing, 410 for a
    deletion."""
    if v is None:
        raise not_found(type, f"{id}/_history/{vid}")
    if v.deleted:
        raise gone(type, id, v.version)
    return v


def _written(result: tuple[Version, bool]) -> FhirResponse:
    version, created = result
    return FhirResponse(201 if created else 200, version=version, location=created,
                        honour_prefer=True)


def _single(tx: Transaction, query: SearchQuery, type_: str, what: str) -> Version | None:
    matches = tx.search(query, 2)
    if len(matches) > 1:
        raise precondition_failed(f"the criteria match {len(matches)} {type_} resources; "
                                  f"{what} needs at most one")
    return matches[0] if matches else None


@dataclass(frozen=True)
class Caller:
    """Who writes, in which application: what the write rules (server.fhir.hooks) need."""

    context: Any  # AppContext, or None outside the app (then no rules run)
    principal: Any

    @classmethod
    def of(cls, req: FhirRequest) -> Caller:
        return cls(req.context, req.principal)


NOBODY = Caller(None, None)


def _store(tx: Transaction, caller: Caller, type_: str, id_: str, resource: dict[str, Any] | None,
           indexes: IndexRows | None, method: str, current: Version | None) -> Version:
    return hooks.store(tx, caller.context, caller.principal, type_, id_, resource, indexes,
                       method, current)


def write_checked(tx: Transaction, type_: str, id_: str, resource: dict[str, Any],
                  indexes: IndexRows | None, method: str, if_match: Etags | None,
                  caller: Caller = NOBODY, if_none_match: Etags | None = None
                  ) -> tuple[Version, bool]:
    """Write a new version unless If-Match or If-None-Match (RFC 9110 §13.1.1-2) fail;
    (version, created). An unchanged resource makes no new version (the store returns the
    current one)."""
    current = tx.read(type_, id_)
    check_preconditions(current, type_, id_, if_match, if_none_match)
    created = current is None or current.deleted
    return _store(tx, caller, type_, id_, resource, indexes, method, current), created


def check_preconditions(current: Version | None, type_: str, id_: str,
                        if_match: Etags | None, if_none_match: Etags | None = None) -> None:
    """412 unless the current version is one If-Match names (any with *), and none that
    If-None-Match names (none at all with *: create only)."""
    version = None if current is None or current.deleted else current.version
    have = "there is no current version" if version is None \
        else f"the current version is {version}"
    if if_match is not None and not if_match.matches(version):
        raise precondition_failed(f"If-Match asks for {if_match} of {type_}/{id_}, but {have}")
    if if_none_match is not None and if_none_match.matches(version):
        raise precondition_failed(f"If-None-Match asks for none of {if_none_match} of "
                                  f"{type_}/{id_}, but {have}")


# -- request bodies ------------------------------------------------------------------------------

def _binary_from_native(req: FhirRequest) -> dict[str, Any]:
    """A Binary sent in its native form (http.html#binary): the body is the content."""
    resource: dict[str, Any] = {"resourceType": "Binary", "contentType": req.content_type}
    if req.body:
        resource["data"] = base64.b64encode(req.body).decode()
    security = req.header("x-security-context")
    if security:
        resource["securityContext"] = {"reference": security}
    return resource


def _is_native(req: FhirRequest) -> bool:
    ct = req.content_type
    return req.type == "Binary" and bool(ct) and ct not in JSON_TYPES and ct not in XML_TYPES


def body_resource(req: FhirRequest) -> dict[str, Any]:
    assert req.type
    resource = _binary_from_native(req) if _is_native(req) else req.resource()
    return check_type(resource, req.type)


# -- operations ----------------------------------------------------------------------------------

@dataclass
class Create:
    type: str
    resource: dict[str, Any]
    indexes: IndexRows | None
    id: str = field(default_factory=new_id)
    query: SearchQuery | None = None  # If-None-Exist
    caller: Caller = NOBODY

    def target(self, tx: Transaction) -> str:
        """The id this entry ends up with: an existing match, or the new id."""
        if self.query is not None:
            match = _single(tx, self.query, self.type, "If-None-Exist")
            if match is not None:
                return match.id
        return self.id

    def apply(self, tx: Transaction) -> tuple[Version, bool]:
        if self.query is not None:
            match = _single(tx, self.query, self.type, "If-None-Exist")
            if match is not None:
                return match, False
        return _store(tx, self.caller, self.type, self.id, self.resource, self.indexes, "POST",
                      None), True

    respond = staticmethod(_written)


def build_create(req: FhirRequest) -> Create:
    assert req.type
    resource = body_resource(req)
    resource.pop("id", None)  # the server assigns the id of a created resource
    condition: Any = req.header("if-none-exist")
    criteria = [(k, v) for k, v in req.params if k not in _FORMAT_PARAMS]
    if condition is None and criteria:
        condition = criteria  # POST [type]?[criteria], as some clients send a conditional create
    query = parse_conditional(req.type, condition, "If-None-Exist", req.base) if condition else None
    return Create(req.type, resource, prepare(resource, req.type), query=query,
                  caller=Caller.of(req))


@dataclass
class Update:
    type: str
    id: str
    resource: dict[str, Any]
    indexes: IndexRows | None
    if_match: Etags | None = None
    caller: Caller = NOBODY
    if_none_match: Etags | None = None

    def target(self, tx: Transaction) -> str:
        return self.id

    def apply(self, tx: Transaction) -> tuple[Version, bool]:
        return write_checked(tx, self.type, self.id, self.resource, self.indexes, "PUT",
                             self.if_match, self.caller, self.if_none_match)

    respond = staticmethod(_written)


def build_update(req: FhirRequest) -> Update:
    assert req.type and req.id
    check_id(req.id)
    resource = body_resource(req)
    if _is_native(req):
        resource["id"] = req.id
    body_id = resource.get("id")
    if body_id is None:
        raise invalid("an update must carry the resource id in the body", expression="id")
    if body_id != req.id:
        raise invalid(f"the id in the body ({body_id!r}) does not match the URL ({req.id!r})",
                      expression="id")
    return Update(req.type, req.id, resource, prepare(resource, req.type),
                  parse_etags(req.header("if-match")), Caller.of(req),
                  if_none_match=parse_etags(req.header("if-none-match"), "If-None-Match"))


@dataclass
class ConditionalUpdate:
    """PUT [type]?[criteria] (http.html#cond-update)."""

    type: str
    query: SearchQuery
    resource: dict[str, Any]
    indexes: IndexRows | None
    if_match: Etags | None = None
    fresh_id: str = field(default_factory=new_id)
    caller: Caller = NOBODY

    def target(self, tx: Transaction) -> str:
        match = _single(tx, self.query, self.type, "a conditional update")
        body_id = self.resource.get("id")
        if match is not None:
            if body_id is not None and body_id != match.id:
                raise invalid(f"the id in the body ({body_id!r}) is not the id of the resource "
                              f"the criteria match ({match.id!r})", expression="id")
            return match.id
        if body_id is not None:
            existing = tx.read(self.type, body_id)
            if existing is not None and not existing.deleted:
                raise conflict(f"no {self.type} matches the criteria, but {self.type}/{body_id} "
                               "exists and does not match them")
            return body_id
        return self.fresh_id

    def apply(self, tx: Transaction) -> tuple[Version, bool]:
        id_ = self.target(tx)
        if id_ == self.fresh_id:
            return _store(tx, self.caller, self.type, id_, self.resource, self.indexes, "POST",
                          None), True
        self.resource["id"] = id_
        return write_checked(tx, self.type, id_, self.resource, self.indexes, "PUT",
                             self.if_match, self.caller)

    respond = staticmethod(_written)


def build_conditional_update(req: FhirRequest) -> ConditionalUpdate:
    assert req.type
    query = parse_conditional(req.type, req.params, "the conditional update", req.base)
    resource = body_resource(req)
    if resource.get("id") is not None:
        check_id(resource["id"])
    return ConditionalUpdate(req.type, query, resource, prepare(resource, req.type),
                             parse_etags(req.header("if-match")), caller=Caller.of(req))


# -- patch ---------------------------------------------------------------------------------------

class MergePatch:
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


def patch_document(content_type: str, body: bytes) -> jsonpatch.JsonPatch | MergePatch:
    """JSON Patch (application/json-patch+json), or JSON Merge Patch (application/merge-patch
    +json, or a JSON object sent as application/json). FHIRPath Patch is not supported."""
    if content_type not in (JSON_PATCH, MERGE_PATCH, "application/json"):
        raise FhirError(415, "not-supported",
                        f"patch content type {content_type or '(none)'!r} is not supported; "
                        f"send a JSON Patch ({JSON_PATCH}) or a JSON Merge Patch ({MERGE_PATCH})")
    try:
        doc = codec.loads(body)
    except codec.JsonError as exc:
        raise invalid(f"invalid patch document: {exc}", code="structure") from None
    if isinstance(doc, dict) and content_type != JSON_PATCH:
        return MergePatch(doc)
    if not isinstance(doc, list):
        raise invalid("a JSON Patch document is a JSON array of operations", code="structure")
    try:
        return jsonpatch.JsonPatch(doc)
    except (jsonpatch.InvalidJsonPatch, TypeError) as exc:
        raise invalid(f"invalid JSON Patch: {exc}", code="structure") from None


@dataclass
class Patch:
    """Patch the resource ``id`` (or the one ``query`` matches): read, patch, validate and write
    in one transaction, so nothing can change in between."""

    type: str
    patch: jsonpatch.JsonPatch | MergePatch
    id: str | None = None
    query: SearchQuery | None = None
    if_match: Etags | None = None
    caller: Caller = NOBODY
    #: What the references of the patched resource go through: refused when conditional (a
    #: transaction resolves them, and its ``fullUrl`` ones, here instead).
    check_references: Callable[[dict[str, Any]], None] = references.check_unconditional

    def values(self) -> Any:
        """The JSON the patch brings in (its operations, or the merge document)."""
        return self.patch.doc if isinstance(self.patch, MergePatch) else self.patch.patch

    def apply(self, tx: Transaction) -> tuple[Version, bool]:
        if self.query is not None:
            match = _single(tx, self.query, self.type, "a conditional patch")
            if match is None:
                raise FhirError(404, "not-found", f"no {self.type} matches the criteria")
            id_ = match.id
        else:
            assert self.id is not None
            id_ = self.id
        current = current_or_error(tx.read(self.type, id_), self.type, id_)
        check_preconditions(current, self.type, id_, self.if_match)
        assert current.body is not None
        try:
            patched = self.patch.apply(codec.loads(current.body))
        except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError,
                KeyError, IndexError) as exc:
            raise FhirError(422, "processing", f"the patch cannot be applied: {exc}") from None
        if not isinstance(patched, dict) or patched.get("resourceType") != self.type:
            raise FhirError(422, "processing", "the patch must not change the resourceType")
        if patched.get("id") != id_:
            raise FhirError(422, "processing", "the patch must not change the id")
        self.check_references(patched)
        return _store(tx, self.caller, self.type, id_, patched, prepare(patched, self.type),
                      "PATCH", current), False

    respond = staticmethod(_written)


def build_patch(req: FhirRequest, conditional: bool = False) -> Patch:
    assert req.type
    doc = patch_document(req.content_type, req.body)
    if_match = parse_etags(req.header("if-match"))
    if conditional:
        return Patch(req.type, doc, query=parse_conditional(req.type, req.params,
                                                            "the conditional patch", req.base),
                     if_match=if_match, caller=Caller.of(req))
    return Patch(req.type, doc, id=req.id, if_match=if_match, caller=Caller.of(req))


# -- delete --------------------------------------------------------------------------------------

@dataclass
class Delete:
    """DELETE [type]/[id], or [type]?[criteria] (one match at most: conditionalDelete single)."""

    type: str
    id: str | None = None
    query: SearchQuery | None = None
    if_match: Etags | None = None
    caller: Caller = NOBODY

    def apply(self, tx: Transaction) -> Version | None:
        if self.query is not None:
            matches = tx.search(self.query, 2)
            if len(matches) > 1:
                raise precondition_failed(f"the criteria match {len(matches)} {self.type} "
                                          "resources; this server deletes only one at a time")
            if not matches:
                if self.if_match is not None:
                    raise precondition_failed(f"If-Match asks for {self.if_match} of the "
                                              f"{self.type} the criteria match, and they "
                                              "match none")
                return None
            id_ = matches[0].id
        else:
            assert self.id is not None
            id_ = self.id
        current = tx.read(self.type, id_)
        check_preconditions(current, self.type, id_, self.if_match)
        if current is None:  # http.html#delete: as for a deleted one, 200 (nothing to do)
            return None
        if current.deleted:
            return current  # deleting again changes nothing
        return _store(tx, self.caller, self.type, id_, None, None, "DELETE", current)

    def respond(self, version: Version | None) -> FhirResponse:
        from server.fhir.errors import information

        if version is None:
            return FhirResponse(200, resource=information(
                f"no {self.type} matches the criteria; nothing deleted" if self.id is None
                else f"{self.type}/{self.id} does not exist; nothing deleted"))
        return FhirResponse(200, resource=information(
            f"{self.type}/{version.id} deleted (version {version.version})"),
            headers={"ETag": version.etag}, deletion=version)


def build_delete(req: FhirRequest, conditional: bool = False) -> Delete:
    assert req.type
    if_match = parse_etags(req.header("if-match"))
    if conditional:
        return Delete(req.type, query=parse_conditional(req.type, req.params,
                                                         "the conditional delete", req.base),
                      if_match=if_match, caller=Caller.of(req))
    return Delete(req.type, req.id, if_match=if_match, caller=Caller.of(req))

"""Search interactions: type, system (``_type``) and compartment searches (search.html)."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

from server.fhir.bundles import Stored, bundle, full_url, link_url
from server.fhir.errors import FhirError, Issue, invalid, outcome
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.structures import structures
from server.fhir.summary import spares_included
from server.search.plan import AnyOf, Match, ReferenceValue, SearchQuery
from server.search.query import NOT_SUPPORTED, RESULT_PARAMS, parse
from server.search.registry import registry
from server.storage.base import ResourceStore, SearchPage

SPEC = Path(__file__).resolve().parent / "spec"


@cache
def compartments() -> dict[str, dict[str, list[str]]]:
    data = json.loads((SPEC / "compartments.json").read_text())
    data.pop("_generated", None)
    return data


def _strict(req: FhirRequest) -> bool:
    return req.prefer.get("handling") == "strict"


def query_of(req: FhirRequest, types: tuple[str, ...], params: list[tuple[str, str]]
             ) -> SearchQuery:
    s = req.settings
    return parse(types, params, default_count=s.default_page_size if s else 20,
                 max_count=s.max_page_size if s else 1000, base=req.base, strict=_strict(req))


async def _run(req: FhirRequest, store: ResourceStore, query: SearchQuery, path: str,
               params: list[tuple[str, str]]) -> FhirResponse:
    try:
        page = await store.search(query)
    except ValueError as exc:
        raise invalid(f"_cursor: {exc}", expression="_cursor") from None
    return searchset(req, query, page, path, params)


def searchset(req: FhirRequest, query: SearchQuery, page: SearchPage, path: str,
              params: list[tuple[str, str]]) -> FhirResponse:
    """The searchset Bundle of a page: matches, includes, links and warnings."""
    # The parameters used, as used (search.html#conformance): _count at most the largest page.
    kept = [(k, str(query.count) if k == "_count" else v) for k, v in params
            if k not in query.ignored and (k, v) not in query.unused and k != "_cursor"]
    links = [("self", link_url(req.base, path, [*kept, *(
        [("_cursor", query.cursor)] if query.cursor else [])]))]
    if page.next_cursor or page.prev_cursor:  # search.html#paging: first … previous, next
        links.append(("first", link_url(req.base, path, kept)))
    if page.next_cursor:
        links.append(("next", link_url(req.base, path, [*kept, ("_cursor", page.next_cursor)])))
    if page.prev_cursor:
        links.append(("previous", link_url(req.base, path,
                                           [*kept, ("_cursor", page.prev_cursor)])))
    entries: list[dict[str, Any]] = [
        {"fullUrl": full_url(req.base, v.type, v.id), "resource": Stored(v),
         "search": {"mode": "match"}} for v in page.matches]
    # Included resources go out whole under _elements: as dicts, which the transform that the
    # response applies to the Bundle's stored resources passes by.
    whole = page.included and spares_included(params)
    entries += [{"fullUrl": full_url(req.base, v.type, v.id),
                 "resource": Stored(v).to_dict() if whole else Stored(v),
                 "search": {"mode": "include"}} for v in page.included]
    issues = [Issue("not-supported", f"search parameter {name} was ignored: {why}",
                    severity="warning", expression=[name]) for name, why in query.ignored.items()]
    issues += [Issue("processing", f"search parameter {name}: {why}", severity="warning",
                     expression=[name]) for name, why in query.warnings.items()]
    issues += [Issue("too-costly", note, severity="warning") for note in page.notes]
    if issues:
        entries.append({"resource": outcome(issues), "search": {"mode": "outcome"}})
    return FhirResponse(200, resource=bundle("searchset", entries, links, page.total))


async def search_type(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    assert req.type
    query = query_of(req, (req.type,), req.params)
    _type_not_used(req, query)
    return await _run(req, store, query, req.type, req.params)


def _type_not_used(req: FhirRequest, query: SearchQuery) -> None:
    """``_type`` chooses the types of a search across types; on one type it is ignored (and
    reported, or refused under ``Prefer: handling=strict``)."""
    if any(k == "_type" for k, _ in req.params):
        if _strict(req):
            raise invalid("_type applies to searches across types (/fhir?_type=…, "
                          "[compartment]/[id]/*?_type=…), not to one type", expression="_type")
        query.ignored["_type"] = "_type applies to searches across types, not to one type"


def _types_asked(req: FhirRequest) -> list[str]:
    """The resource types ``_type`` names (repeated or comma-separated)."""
    return [t.strip() for k, v in req.params if k == "_type" for t in v.split(",") if t.strip()]


async def search_system(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    return await _run(req, store, system_query(req), "", req.params)


def system_query(req: FhirRequest) -> SearchQuery:
    """The query of ``GET [base]?_type=…``."""
    names = _types_asked(req)
    if not names:  # search.html#base: "all parameters SHALL be common to all resource types"
        common = registry().common | {"_has", "_list"}
        for k, v in req.params:
            code = k.partition(".")[0].partition(":")[0]
            codes = [key.strip().lstrip("-") for key in v.split(",")] if code == "_sort" \
                else [code]
            for c in codes:
                if c and c not in common and (code == "_sort" or c not in (
                        *RESULT_PARAMS, *NOT_SUPPORTED)):
                    raise invalid(f"{k}: a search across all types takes the parameters common "
                                  f"to them ({', '.join(sorted(common))}); name the types with "
                                  "_type to use others", expression=k)
        names = list(structures().resource_types)
    for t in names:
        if not structures().is_resource_type(t):
            raise invalid(f"_type: unknown resource type {t!r}", expression="_type")
    types = tuple(dict.fromkeys(names))
    return query_of(req, types, req.params)


async def search_compartment(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    query, path = compartment_query(req)
    return await _run(req, store, query, path, req.params)


def compartment_query(req: FhirRequest) -> tuple[SearchQuery, str]:
    """``[compartment type]/[id]/[type]``: resources linked to the owner by the compartment's
    parameters (compartmentdefinition-*.json); the query and the search's path."""
    assert req.type and req.id and req.compartment
    definition = compartments().get(req.type)
    if definition is None:
        raise FhirError(404, "not-supported", f"there is no {req.type} compartment")
    types = tuple(sorted(definition)) if req.compartment == "*" else (req.compartment,)
    if req.compartment != "*" and req.compartment not in definition:
        raise FhirError(404, "not-supported",
                        f"{req.compartment} resources are not in the {req.type} compartment")
    chosen = _types_asked(req)
    if chosen and req.compartment == "*":
        for t in chosen:
            if t not in definition:
                raise invalid(f"_type: {t} resources are not in the {req.type} compartment",
                              expression="_type")
        types = tuple(t for t in types if t in chosen)
    query = query_of(req, types, req.params)
    if req.compartment != "*":
        _type_not_used(req, query)
    owner = ReferenceValue(req.type, req.id)
    options = []
    for t in types:
        for code in definition[t]:
            if code == "{def}":
                continue
            options.append(Match(t, code, "reference", (owner,)))
        if t == req.type:
            options.append(Match(t, "_id", "id", (_id_token(req.id),)))
    query.clauses.insert(0, options[0] if len(options) == 1 else AnyOf(tuple(options)))
    return query, f"{req.type}/{req.id}/{req.compartment}"


def _id_token(id_: str) -> Any:
    from server.search.plan import TokenValue

    return TokenValue(None, id_)

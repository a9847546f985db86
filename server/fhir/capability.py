"""The CapabilityStatement, generated from the interaction and operation tables and the search
parameter registry: it says exactly what the router serves, never more."""

from __future__ import annotations

import functools
from typing import Any

from server import __version__
from server.fhir.interactions import INTERACTIONS, OPERATIONS
from server.fhir.structures import structures
from server.search.index import canonical_only
from server.search.registry import registry

SOFTWARE_DATE = "2026-11-23"


def _type_interactions() -> list[dict[str, str]]:
    codes = []
    for i in INTERACTIONS:
        if i.level in ("type", "instance") and not i.conditional and i.code not in codes:
            codes.append(i.code)
    return [{"code": c} for c in codes]


def _operations(level: str, type_: str | None) -> list[dict[str, str]]:
    return [{"name": op.name, "definition": op.definition} for op in OPERATIONS
            if level in op.levels and (op.types is None or type_ in op.types)]


def _search_params(type_: str) -> list[dict[str, Any]]:
    out = []
    for code, p in sorted(registry().params_for(type_).items()):
        entry: dict[str, Any] = {"name": code, "definition": p.url, "type": p.type}
        doc = getattr(p, "description", None)
        if doc:
            entry["documentation"] = doc
        out.append(entry)
    return out


#: Search parameters of every type that no SearchParameter defines (search.html#list, #has).
_SYSTEM_SPECIAL = [
    {"name": "_list", "type": "special", "documentation": "The resources a List holds, by the "
     "List's id (not functional lists such as $current-problems)."},
    {"name": "_has", "type": "special", "documentation": "Reverse chaining: "
     "_has:[type]:[reference parameter]:[parameter]=[value], nested up to three links."},
]


def _followed(type_: str, code: str, param: Any) -> bool:
    """Whether an include follows the parameter: one of references, not of canonical ones
    (which name a definition by its URL, and are searched by it)."""
    return param.type == "reference" and not canonical_only(type_, code)


def _includes(type_: str) -> list[str]:
    return ["*"] + [f"{type_}:{code}" for code, p in sorted(registry().params_for(type_).items())
                    if _followed(type_, code, p)]


@functools.cache
def _revincludes() -> dict[str, list[str]]:
    """For each type, the ``_revinclude`` values that can bring resources pointing at it."""
    out: dict[str, list[str]] = {t: [] for t in structures().resource_types}
    for source in structures().resource_types:
        for code, p in sorted(registry().params_for(source).items()):
            if not _followed(source, code, p):
                continue
            for target in p.targets or structures().resource_types:
                if target in out:
                    out[target].append(f"{source}:{code}")
    return out


def _supported_profiles() -> dict[str, tuple[str, ...]]:
    """The telemedicine profiles per resource type (server.workflow.profiles)."""
    from server.workflow.profiles import supported_profiles

    return supported_profiles()


def _resource(type_: str) -> dict[str, Any]:
    res: dict[str, Any] = {
        "type": type_,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{type_}",
        "supportedProfile": list(_supported_profiles().get(type_, ())),
        "interaction": _type_interactions(),
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "full-support",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "referencePolicy": ["literal", "logical"],
        "searchParam": _search_params(type_),
    }
    if not res["supportedProfile"]:
        del res["supportedProfile"]
    if type_ in registry().unsupported:
        res["documentation"] = _not_supported(type_)
    res["searchInclude"] = _includes(type_)
    res["searchRevInclude"] = _revincludes()[type_]
    ops = _operations("type", type_) + [o for o in _operations("instance", type_)
                                         if o not in _operations("type", type_)]
    if ops:
        res["operation"] = ops
    return res


#: How a search treats what is not supported, besides the parameters the registry leaves out.
_UNSUPPORTED_SEARCH = (
    "Unknown and unsupported search parameters (_text, _content and _filter among them) are "
    "ignored and reported in the searchset Bundle, or refused (400) under Prefer: "
    "handling=strict. Always refused (400): _query, _containedType, _contained other than "
    "false, functional lists (_list=$current-problems …), and the token modifiers :above, "
    ":below, :in and :not-in.")


def _not_supported(type_: str) -> str:
    """The search parameters of the type ("" for those of every type) that are not served."""
    return "Search parameters not supported: " + "; ".join(
        f"{code} ({reason})" for code, reason in registry().unsupported[type_]) + "."


@functools.cache
def _rest(auth: bool) -> dict[str, Any]:
    system_codes = []
    for i in INTERACTIONS:
        for code in (i.code, *i.also):
            if i.level == "system" and code != "capabilities" and code not in system_codes:
                system_codes.append(code)
    rest: dict[str, Any] = {
        "mode": "server",
        "documentation": "Consilium FHIR R4 API for telemedicine networks. "
                         + _not_supported("") + " " + _UNSUPPORTED_SEARCH,
        "resource": [_resource(t) for t in structures().resource_types],
        "interaction": [{"code": c} for c in system_codes],
        "searchParam": [p for p in _search_params(structures().resource_types[0])
                        if p["name"] in registry().common] + _SYSTEM_SPECIAL,
        "operation": _operations("system", None),
    }
    if auth:
        rest["security"] = {
            "service": [{"coding": [{
                "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                "code": "SMART-on-FHIR"}]}],
            "description": "Bearer tokens (ES256 JWTs) with SMART scopes are required on every "
                           "interaction except this CapabilityStatement.",
        }
    if not rest["operation"]:
        del rest["operation"]
    if not rest["searchParam"]:
        del rest["searchParam"]
    return rest


def capability_statement(base: str, settings: Any) -> dict[str, Any]:
    from server.fhir import xml_supported

    formats = ["application/fhir+json", "json"]
    if xml_supported():
        formats += ["application/fhir+xml", "xml"]
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": SOFTWARE_DATE,
        "publisher": "Consilium",
        "kind": "instance",
        "software": {"name": "Consilium", "version": __version__},
        "implementation": {"description": "Consilium telemedicine interoperability server",
                           "url": base},
        "fhirVersion": "4.0.1",
        "format": formats,
        "patchFormat": ["application/json-patch+json", "application/merge-patch+json"],
        "rest": [_rest(bool(settings.auth) if settings is not None else True)],
    }

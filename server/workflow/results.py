"""Mutual recognition of results (检查检验结果互认): ``Patient/[id]/$recognized-results``.

Lab and imaging results of organisations at the same care level are accepted without repeating
the tests (Inner Mongolia rules A4 一(四)). The operation lists the patient's results
(Observation, DiagnosticReport, ImagingStudy) that come from an organisation of the same care
level as the requesting organisation: the parameter ``organization`` (``Organization/x`` or
``x``), else the organisation of the token's fhirUser (a PractitionerRole's organization, or the
one organisation of a Practitioner's roles).

Where a result comes from, in this order:

1. its performer: an Organization, or a PractitionerRole's organization (Observation.performer,
   DiagnosticReport.performer then resultsInterpreter, ImagingStudy.series.performer.actor);
2. else the serviceProvider of its Encounter.

A result whose organisation cannot be told, or whose organisation has no care level, is left out.
Only results that stand are listed: Observations and DiagnosticReports with status final,
amended, corrected or appended; ImagingStudies available.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from server.fhir import codec
from server.fhir.bundles import Stored, bundle, full_url, link_url
from server.fhir.errors import invalid
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.fhir.writes import current_or_error
from server.storage.base import ResourceStore
from server.terminology.params import Param, read_params
from server.workflow import model
from server.workflow.referrals import care_level
from server.workflow.reports import relative, search_all

RESULT_TYPES = ("Observation", "DiagnosticReport", "ImagingStudy")
STANDING = {"Observation": {"final", "amended", "corrected", "appended"},
            "DiagnosticReport": {"final", "amended", "corrected", "appended"},
            "ImagingStudy": {"available"}}
_PARAMS = {"organization": Param("string")}


class _Lookup:
    """Reads of organisations and roles for one request, each read once."""

    def __init__(self, store: ResourceStore):
        self.store = store
        self.cache: dict[str, dict[str, Any] | None] = {}

    async def get(self, ref: str | None) -> dict[str, Any] | None:
        if not ref or "/" not in ref:
            return None
        if ref not in self.cache:
            type_, _, id_ = ref.partition("/")
            v = await self.store.read(type_, id_)
            self.cache[ref] = codec.loads(v.body) if v is not None and v.body else None
        return self.cache[ref]

    async def organization(self, ref: str | None) -> str | None:
        """The organisation a performer reference stands for."""
        if ref is None:
            return None
        if ref.startswith("Organization/"):
            return ref
        if ref.startswith("PractitionerRole/"):
            role = await self.get(ref)
            org = relative(((role or {}).get("organization") or {}).get("reference"))
            return org if org and org.startswith("Organization/") else None
        return None

    async def level(self, org: str | None) -> int | None:
        return care_level(await self.get(org)) if org else None


def _performers(result: dict[str, Any]) -> Iterator[str]:
    kind = result.get("resourceType")
    refs: list[dict[str, Any]] = []
    if kind == "Observation":
        refs = result.get("performer") or []
    elif kind == "DiagnosticReport":
        refs = [*(result.get("performer") or []), *(result.get("resultsInterpreter") or [])]
    elif kind == "ImagingStudy":
        refs = [p.get("actor") or {} for s in result.get("series") or []
                for p in s.get("performer") or []]
    for r in refs:
        ref = relative(r.get("reference"))
        if ref:
            yield ref


async def source_organization(lookup: _Lookup, result: dict[str, Any]) -> str | None:
    """The organisation a result comes from (see the module docstring)."""
    for ref in _performers(result):
        org = await lookup.organization(ref)
        if org:
            return org
    encounter = await lookup.get(relative((result.get("encounter") or {}).get("reference")))
    provider = relative(((encounter or {}).get("serviceProvider") or {}).get("reference"))
    return provider if provider and provider.startswith("Organization/") else None


async def _requesting_organization(req: FhirRequest, lookup: _Lookup) -> str:
    given = read_params(req, _PARAMS).get("organization")
    if given:
        return given if given.startswith("Organization/") else f"Organization/{given}"
    user = relative(req.principal.fhir_user)
    if user and user.startswith("PractitionerRole/"):
        org = await lookup.organization(user)
        if org:
            return org
    if user and user.startswith("Practitioner/"):
        roles = await search_all(lookup.store, "PractitionerRole", [("practitioner", user)])
        orgs = {relative((codec.loads(v.body or b"{}").get("organization") or {})
                         .get("reference")) for v in roles} - {None}
        if len(orgs) == 1:
            return str(orgs.pop())
    raise invalid("name the requesting organisation (parameter organization); the token's "
                  "fhirUser does not tell it", "organization")


async def recognized_results(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """Patient/[id]/$recognized-results: same-level results that need not be repeated."""
    assert req.id
    current_or_error(await store.read("Patient", req.id), "Patient", req.id)
    lookup = _Lookup(store)
    requester = await _requesting_organization(req, lookup)
    if await lookup.get(requester) is None:
        raise invalid(f"{requester} does not exist", "organization")
    level = await lookup.level(requester)
    if level is None:
        raise invalid(f"{requester} has no care level (extension {model.EXT_CARE_LEVEL})",
                      "organization")
    entries = []
    for type_ in RESULT_TYPES:
        for v in await search_all(store, type_, [("patient", f"Patient/{req.id}")]):
            result = codec.loads(v.body or b"{}")
            if result.get("status") not in STANDING[type_]:
                continue
            if await lookup.level(await source_organization(lookup, result)) != level:
                continue
            entries.append({"fullUrl": full_url(req.base, type_, v.id), "resource": Stored(v),
                            "search": {"mode": "match"}})
    path = f"Patient/{req.id}/$recognized-results"
    return FhirResponse(200, resource=bundle("searchset", entries,
                                             [("self", link_url(req.base, path, req.params))],
                                             total=len(entries)))


OPERATIONS: tuple[Operation, ...] = (
    Operation("recognized-results", f"{model.BASE}/OperationDefinition/Patient-recognized-results",
              frozenset({"instance"}), recognized_results,
              "The patient's results from organisations of the requester's care level, which "
              "need not be repeated", ("GET", "POST"), ("Patient",), parameters=(
                  ("organization", "in", 0, "1", "string", "The requesting organisation "
                   "(default: the caller's)"),
                  ("return", "out", 1, "1", "Bundle", "The results (Observation, "
                   "DiagnosticReport, ImagingStudy …)"))),
)

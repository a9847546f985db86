"""The terminology operations: ``$lookup``, ``$validate-code`` and ``$expand`` (terminology-
service.html), as plain handlers ``(FhirRequest, ResourceStore) -> FhirResponse``.

Inputs and outputs follow the R4 OperationDefinitions CodeSystem-lookup,
CodeSystem-validate-code, ValueSet-validate-code and ValueSet-expand. Beyond them: ``$lookup``
also works on a stored CodeSystem instance (``CodeSystem/[id]/$lookup``), and every display
follows ``displayLanguage``, else the request's ``Accept-Language`` (see
:mod:`server.terminology.languages`), else the code system's own language.

Status codes: missing or contradictory inputs 400; an unknown code system (``$lookup``,
``CodeSystem/$validate-code``), value set or instance 404; a value set that depends on
terminology the server does not know 422. A code that is not valid is not an error for
``$validate-code``: the answer is ``result = false`` with a message.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

from server.fhir.errors import FhirError, invalid
from server.fhir.request import FhirRequest, FhirResponse
from server.fhir.table import Operation
from server.storage.base import ResourceStore
from server.terminology.codesystem import CodeSystemIndex, Concept, Designation
from server.terminology.expand import Entry, Expander, Expansion
from server.terminology.languages import (
    filter_terms,
    fold,
    matches,
    requested_languages,
    same_language,
)
from server.terminology.params import Param, Params, read_params
from server.terminology.resolve import Terminology, split_canonical

_COMMON = {"displayLanguage": Param("code"), "date": Param("dateTime")}
LOOKUP = {"code": Param("code"), "system": Param("uri"), "version": Param("string"),
          "coding": Param("Coding"), "property": Param("code", many=True), **_COMMON}
_VALIDATE = {"code": Param("code"), "display": Param("string"), "coding": Param("Coding"),
             "codeableConcept": Param("CodeableConcept"), "abstract": Param("boolean"),
             **_COMMON}
CS_VALIDATE = {"url": Param("uri"), "codeSystem": Param("resource"), "version": Param("string"),
               **_VALIDATE}
VS_VALIDATE = {"url": Param("uri"), "context": Param("uri"), "valueSet": Param("resource"),
               "valueSetVersion": Param("string"), "system": Param("uri"),
               "systemVersion": Param("string"), **_VALIDATE}
EXPAND = {"url": Param("uri"), "valueSet": Param("resource"), "valueSetVersion": Param("string"),
          "context": Param("uri"), "contextDirection": Param("code"), "filter": Param("string"),
          "offset": Param("integer"), "count": Param("integer"),
          "includeDesignations": Param("boolean"), "designation": Param("string", many=True),
          "includeDefinition": Param("boolean"), "activeOnly": Param("boolean"),
          "excludeNested": Param("boolean"), "excludeNotForUI": Param("boolean"),
          "excludePostCoordinated": Param("boolean"),
          "exclude-system": Param("canonical", many=True),
          "system-version": Param("canonical", many=True),
          "check-system-version": Param("canonical", many=True),
          "force-system-version": Param("canonical", many=True), **_COMMON}

#: Displays depend on Accept-Language: caches must keep one answer per language.
_VARY = {"Vary": "Accept-Language"}
_DEFAULT_LOOKUP_PROPERTIES = ("definition", "designation", "parent", "child")


# =============================================================================== $lookup

async def lookup(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """CodeSystem/$lookup: a concept's display (in the wanted language), designations and
    properties."""
    params = read_params(req, LOOKUP)
    _refuse(params, "date", "definitions as of a past date are not kept")
    term = Terminology(store)
    coding = params.get("coding")
    if coding is not None and (params.has("code") or params.has("system")):
        raise invalid("give either code and system, or coding, not both")
    system = coding.get("system") if coding else params.get("system")
    code = coding.get("code") if coding else params.get("code")
    version = (coding.get("version") if coding else None) or params.get("version")
    if req.id is not None:
        cs = await term.instance_code_system(req.id)
        if system is not None and system != cs.url:
            raise invalid(f"the system {system} is not the url of CodeSystem/{req.id} "
                          f"({cs.url})", expression="system")
        if version is not None and cs.version is not None and version != cs.version:
            raise invalid(f"CodeSystem/{req.id} is version {cs.version}, not {version}",
                          expression="version")
    else:
        if not isinstance(system, str) or not system:
            raise invalid("$lookup needs a system (with code) or a coding", expression="system",
                          code="required")
        cs = await _code_system(term, system, version)
    if not isinstance(code, str) or not code:
        raise invalid("$lookup needs a code (with system) or a coding", expression="code",
                      code="required")
    concept = cs.get(code)
    if concept is None:
        raise FhirError(404, "not-found", f"the code {code!r} is not in the code system "
                        f"{_label(cs)}", expression="code")
    languages = requested_languages(params.get("displayLanguage"), req.header("accept-language"))
    wanted = set(params.all("property")) or None
    return FhirResponse(200, resource=_parameters(_lookup_out(cs, concept, languages, wanted)),
                        headers=dict(_VARY))


def _lookup_out(cs: CodeSystemIndex, concept: Concept, languages: tuple[str, ...],
                wanted: set[str] | None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{"name": "name", "valueString": cs.name}]
    if cs.version:
        out.append({"name": "version", "valueString": cs.version})
    out.append({"name": "display", "valueString": cs.display(concept, languages) or concept.code})
    want = set(wanted) if wanted is not None else {
        *_DEFAULT_LOOKUP_PROPERTIES, *(code for code, _, _ in concept.properties)}
    langs = [w[5:] for w in want if w.startswith("lang.")]
    if "designation" in want or langs:
        for d in concept.designations:
            if "designation" in want or any(same_language(d.language, x) for x in langs):
                out.append({"name": "designation", "part": _designation_parts(d)})
    if "definition" in want and concept.definition:
        out.append(_property("definition", "valueString", concept.definition))
    if "inactive" in want:
        out.append(_property("inactive", "valueBoolean", concept.inactive))
    for relation, codes in (("parent", concept.parents), ("child", concept.children)):
        if relation in want:
            for other in codes:
                out.append(_property(relation, "valueCode", other,
                                     cs.display(cs.concepts[other], languages)))
    for code, key, value in concept.properties:
        if code in want and code not in ("parent", "child"):
            description = None
            if key == "valueCode" and isinstance(value, str) and cs.get(value) is not None:
                description = cs.display(cs.concepts[value], languages)
            out.append(_property(code, key, value, description))
    return out


def _designation_parts(d: Designation) -> list[dict[str, Any]]:
    parts: list[dict[str, Any]] = []
    if d.language:
        parts.append({"name": "language", "valueCode": d.language})
    if d.use:
        parts.append({"name": "use", "valueCoding": d.use})
    parts.append({"name": "value", "valueString": d.value})
    return parts


def _property(code: str, key: str, value: Any, description: str | None = None,
              ) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "code", "valueCode": code}, {"name": "value",
                                                                         key: value}]
    if description:
        parts.append({"name": "description", "valueString": description})
    return {"name": "property", "part": parts}


# ======================================================================== $validate-code

async def validate_code(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """$validate-code on CodeSystem or ValueSet (one operation name, two definitions)."""
    if req.type == "CodeSystem":
        return await _validate_in_code_system(req, store)
    return await _validate_in_value_set(req, store)


async def _validate_in_code_system(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    params = read_params(req, CS_VALIDATE)
    _refuse(params, "date", "definitions as of a past date are not kept")
    term = Terminology(store)
    if req.id is not None:
        cs = await term.instance_code_system(req.id)
    elif params.has("codeSystem"):
        resource = params.get("codeSystem")
        if resource.get("resourceType") != "CodeSystem":
            raise invalid("codeSystem must be a CodeSystem resource", expression="codeSystem")
        cs = CodeSystemIndex(resource)
    elif params.has("url"):
        cs = await _code_system(term, params.get("url"), params.get("version"))
    else:
        raise invalid("CodeSystem/$validate-code needs url or codeSystem (or an instance)",
                      expression="url", code="required")
    codings = _codings(params, default_system=cs.url, version=params.get("version"))
    languages = requested_languages(params.get("displayLanguage"), req.header("accept-language"))
    checks = [_check_in_code_system(cs, c, params, languages) for c in codings]
    return _validation_response(checks)


def _check_in_code_system(cs: CodeSystemIndex, coding: dict[str, Any], params: Params,
                          languages: tuple[str, ...]) -> tuple[bool, str | None, str | None]:
    system, code = coding.get("system"), coding.get("code")
    if system != cs.url:
        return False, f"the system {system!r} is not the code system {_label(cs)}", None
    concept = cs.get(code) if isinstance(code, str) else None
    if concept is None:
        return False, f"Unknown code {code!r} in the code system {_label(cs)}", None
    version = coding.get("version")
    if version and cs.version and version != cs.version:
        return False, f"the code system {cs.url} is version {cs.version} here, not {version}", None
    display = cs.display(concept, languages) or concept.code
    if concept.abstract and params.get("abstract") is False:
        return False, f"the code {code!r} is abstract and may not be used here", display
    problem = _display_problem(coding.get("display"), cs.all_displays(concept), code, display)
    if problem:
        return False, problem, display
    return True, None, display


async def _validate_in_value_set(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    params = read_params(req, VS_VALIDATE)
    _refuse(params, "date", "definitions as of a past date are not kept")
    _refuse(params, "context", "value sets cannot be found from a context here")
    term = Terminology(store)
    vs = await _value_set(req, params, term)
    codings = _codings(params, default_system=None, version=params.get("systemVersion"))
    expansion = await Expander(term, lenient=True).expand(vs)
    languages = requested_languages(params.get("displayLanguage"), req.header("accept-language"))
    checks = [await _check_in_value_set(term, vs, expansion, c, params, languages)
              for c in codings]
    return _validation_response(checks)


async def _check_in_value_set(term: Terminology, vs: dict[str, Any], expansion: Expansion,
                              coding: dict[str, Any], params: Params,
                              languages: tuple[str, ...]) -> tuple[bool, str | None, str | None]:
    system, code, version = coding.get("system"), coding.get("code"), coding.get("version")
    if not isinstance(system, str) or not isinstance(code, str):
        return False, "a coding needs a system and a code", None
    cs = await term.code_system(system, version)
    entry = expansion.entries.get((system, code))
    if entry is None and cs is not None and not cs.case_sensitive:
        concept = cs.get(code)
        entry = expansion.entries.get((system, concept.code)) if concept else None
    vs_name = vs.get("url") or vs.get("id") or "the given value set"
    if entry is None:
        return False, await _why_not(term, vs_name, expansion, system, code, version, cs), None
    if version and entry.version and version != entry.version:
        return False, (f"the value set {vs_name} uses version {entry.version} of {system}, "
                       f"not {version}"), None
    display = entry.display_in(languages) or code
    if entry.abstract and params.get("abstract") is False:
        return False, f"the code {code!r} is abstract and may not be used here", display
    valid = [t for t in (entry.display, *(d.value for d in entry.designations)) if t]
    if cs is not None and entry.concept is not None:
        valid += cs.all_displays(entry.concept)
    problem = _display_problem(coding.get("display"), valid, code, display) if valid else None
    if problem:
        return False, problem, display
    return True, None, display


async def _why_not(term: Terminology, vs_name: str, expansion: Expansion, system: str, code: str,
                   version: str | None, cs: CodeSystemIndex | None) -> str:
    if system in expansion.unknown_systems:
        return (f"the value set {vs_name} draws on the code system {system}, which is not known "
                "to this server, so the code cannot be validated")
    if cs is None:
        what = system + (f"|{version}" if version else "")
        return f"the code system {what} is not known to this server; {code!r} is not in {vs_name}"
    if cs.get(code) is None:
        return f"Unknown code {code!r} in the code system {_label(cs)}"
    return f"the code {code!r} of {system} is valid but not in the value set {vs_name}"


def _codings(params: Params, *, default_system: str | None,
             version: str | None) -> list[dict[str, Any]]:
    """The coded values to check: code (+system), coding or codeableConcept, exactly one."""
    given = [n for n in ("code", "coding", "codeableConcept") if params.has(n)]
    if len(given) != 1:
        raise invalid("give exactly one of code, coding and codeableConcept",
                      code="required" if not given else "invalid")
    if given[0] == "code":
        system = params.get("system") if "system" in params.values else default_system
        if system is None:
            raise invalid("a code needs a system", expression="system", code="required")
        coding = {"system": system, "code": params.get("code")}
        if version:
            coding["version"] = version
        if params.has("display"):
            coding["display"] = params.get("display")
        return [coding]
    if params.has("display"):
        raise invalid("display goes with code; a coding carries its own display",
                      expression="display")
    if given[0] == "coding":
        return [_coding(params.get("coding"), default_system)]
    concept = params.get("codeableConcept")
    codings = [_coding(c, default_system) for c in concept.get("coding") or []
               if isinstance(c, dict)]
    if not codings:
        raise invalid("the codeableConcept has no coding to validate",
                      expression="codeableConcept")
    return codings


def _coding(coding: dict[str, Any], default_system: str | None) -> dict[str, Any]:
    if "system" not in coding and default_system is not None:
        return {**coding, "system": default_system}
    return coding


def _display_problem(given: Any, valid: list[str], code: Any, preferred: str) -> str | None:
    if not isinstance(given, str):
        return None
    wanted = fold(given)
    if any(fold(v) == wanted for v in valid):
        return None
    return (f"the display {given!r} is not a display of the code {code!r} "
            f"(expected, for example, {preferred!r})")


def _validation_response(checks: list[tuple[bool, str | None, str | None]]) -> FhirResponse:
    """One answer for all the codings checked: valid if any is (a CodeableConcept is valid when
    one of its codings is)."""
    good = [c for c in checks if c[0]]
    if good:
        _, message, display = good[0]
    else:
        messages = [m for _, m, _ in checks if m]
        message = "; ".join(dict.fromkeys(messages)) or None
        display = next((d for _, _, d in checks if d), None)
    out: list[dict[str, Any]] = [{"name": "result", "valueBoolean": bool(good)}]
    if message:
        out.append({"name": "message", "valueString": message})
    if display:
        out.append({"name": "display", "valueString": display})
    return FhirResponse(200, resource=_parameters(out), headers=dict(_VARY))


# =============================================================================== $expand

async def expand(req: FhirRequest, store: ResourceStore) -> FhirResponse:
    """ValueSet/$expand: the codes of a value set, filtered by text in any language, paged
    with offset and count, displayed in the wanted language."""
    params = read_params(req, EXPAND)
    _refuse(params, "date", "definitions as of a past date are not kept")
    _refuse(params, "context", "value sets cannot be found from a context here")
    term = Terminology(store)
    vs = await _value_set(req, params, term)
    force = _versions(params.all("force-system-version"), "force-system-version")
    expander = Expander(term, exclude_systems=frozenset(
        split_canonical(s)[0] for s in params.all("exclude-system")),
        system_versions={**_versions(params.all("system-version"), "system-version"), **force})
    if force:
        vs = _force_versions(vs, force)
    expansion = await expander.expand(vs)
    _check_versions(expansion, _versions(params.all("check-system-version"),
                                         "check-system-version"))
    entries = list(expansion.entries.values())
    if params.get("activeOnly"):
        entries = [e for e in entries if not e.inactive]
    if params.get("excludeNotForUI"):
        entries = [e for e in entries if not e.abstract]
    text = params.get("filter")
    if text:
        terms = filter_terms(text)
        entries = [e for e in entries if matches(terms, e.texts)]
    offset = params.get("offset") or 0
    count = params.get("count")
    page = entries[offset:] if count is None else entries[offset:offset + count]
    languages = requested_languages(params.get("displayLanguage"), req.header("accept-language"))
    selectors = params.all("designation")
    with_designations = bool(params.get("includeDesignations")) or (
        bool(selectors) and params.get("includeDesignations") is not False)
    contains = [_contains(e, languages, with_designations, selectors) for e in page]
    result = _expanded(vs, params, expansion, languages, len(entries), offset, contains)
    return FhirResponse(200, resource=result, headers=dict(_VARY))


def _contains(entry: Entry, languages: tuple[str, ...], with_designations: bool,
              selectors: list[str]) -> dict[str, Any]:
    item: dict[str, Any] = {"system": entry.system}
    if entry.abstract:
        item["abstract"] = True
    if entry.inactive:
        item["inactive"] = True
    if entry.version:
        item["version"] = entry.version
    item["code"] = entry.code
    display = entry.display_in(languages)
    if display:
        item["display"] = display
    if with_designations:
        designations = [d.to_json() for d in entry.designations if _selected(d, selectors)]
        if designations:
            item["designation"] = designations
    return item


def _selected(d: Designation, selectors: list[str]) -> bool:
    """The ``designation`` parameter: tokens naming a language (``fa``,
    ``urn:ietf:bcp:47|fa``) or a use (``system|code``)."""
    if not selectors:
        return True
    for token in selectors:
        system, sep, code = token.rpartition("|")
        if not sep or system == "urn:ietf:bcp:47":
            if same_language(d.language, code):
                return True
        elif d.use and d.use.get("code") == code and (not system or
                                                       d.use.get("system") == system):
            return True
    return False


def _expanded(vs: dict[str, Any], params: Params, expansion: Expansion,
              languages: tuple[str, ...], total: int, offset: int,
              contains: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "ValueSet"}
    for key in ("id", "url", "identifier", "version", "name", "title", "status",
                "experimental", "date", "publisher", "description", "immutable"):
        if key in vs:
            out[key] = vs[key]
    out.setdefault("status", "unknown")
    if params.get("includeDefinition") and "compose" in vs:
        out["compose"] = vs["compose"]
    parameters: list[dict[str, Any]] = []
    for name, key in (("filter", "valueString"), ("offset", "valueInteger"),
                      ("count", "valueInteger"), ("includeDesignations", "valueBoolean"),
                      ("activeOnly", "valueBoolean"), ("excludeNotForUI", "valueBoolean")):
        if params.has(name):
            parameters.append({"name": name, key: params.get(name)})
    if languages:
        parameters.append({"name": "displayLanguage", "valueCode": languages[0]})
    for name in params.all("designation"):
        parameters.append({"name": "designation", "valueString": name})
    for system, version in expansion.used.items():
        parameters.append({"name": "used-codesystem",
                           "valueUri": system + (f"|{version}" if version else "")})
    body: dict[str, Any] = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "total": total, "offset": offset}
    if parameters:
        body["parameter"] = parameters
    if contains:
        body["contains"] = contains
    out["expansion"] = body
    return out


def _versions(values: list[str], name: str) -> dict[str, str]:
    out = {}
    for value in values:
        system, version = split_canonical(value)
        if version is None:
            raise invalid(f"{name} takes system|version, not {value!r}", expression=name)
        out[system] = version
    return out


def _force_versions(vs: dict[str, Any], force: dict[str, str]) -> dict[str, Any]:
    """The value set with the forced versions in its includes and excludes."""
    compose = vs.get("compose")
    if not isinstance(compose, dict):
        return vs
    parts = {}
    for kind in ("include", "exclude"):
        parts[kind] = [{**p, "version": force[p["system"]]} if p.get("system") in force else p
                       for p in compose.get(kind) or []]
    return {**vs, "compose": {**compose, **{k: v for k, v in parts.items() if v}}}


def _check_versions(expansion: Expansion, wanted: dict[str, str]) -> None:
    for system, version in wanted.items():
        used = expansion.used.get(system)
        if used is not None and used != version:
            raise FhirError(422, "business-rule", f"the value set uses version {used} of "
                            f"{system}, not {version} (check-system-version)")


# ================================================================================ helpers

async def _code_system(term: Terminology, url: str, version: str | None) -> CodeSystemIndex:
    cs = await term.code_system(url, version)
    if cs is None:
        what = url + (f"|{version}" if version else "")
        raise FhirError(404, "not-found", f"the code system {what} is not known to this server",
                        expression="system")
    return cs


async def _value_set(req: FhirRequest, params: Params, term: Terminology) -> dict[str, Any]:
    if req.id is not None:
        return await term.instance("ValueSet", req.id)
    if params.has("valueSet"):
        vs = params.get("valueSet")
        if vs.get("resourceType") != "ValueSet":
            raise invalid("valueSet must be a ValueSet resource", expression="valueSet")
        return vs
    url = params.get("url")
    if not url:
        raise invalid("give the value set: url or valueSet (or call it on an instance)",
                      expression="url", code="required")
    vs = await term.value_set(url, params.get("valueSetVersion"))
    if vs is None:
        what = url + (f"|{params.get('valueSetVersion')}" if params.has("valueSetVersion")
                      else "")
        raise FhirError(404, "not-found", f"the value set {what} is not known to this server",
                        expression="url")
    return vs


def _refuse(params: Params, name: str, why: str) -> None:
    if params.has(name):
        raise FhirError(400, "not-supported", f"the parameter {name} is not supported: {why}",
                        expression=name)


def _label(cs: CodeSystemIndex) -> str:
    return cs.url + (f"|{cs.version}" if cs.version else "")


def _parameters(parameter: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": parameter}


OPERATIONS: tuple[Operation, ...] = (
    Operation("lookup", "http://hl7.org/fhir/OperationDefinition/CodeSystem-lookup",
              frozenset({"type", "instance"}), lookup,
              "A concept's display (in the requested language), designations and properties",
              ("GET", "POST"), ("CodeSystem",)),
    Operation("validate-code", "http://hl7.org/fhir/OperationDefinition/CodeSystem-validate-code",
              frozenset({"type", "instance"}), validate_code,
              "Whether a code is in a code system, with its display", ("GET", "POST"),
              ("CodeSystem",)),
    Operation("validate-code", "http://hl7.org/fhir/OperationDefinition/ValueSet-validate-code",
              frozenset({"type", "instance"}), validate_code,
              "Whether a code is in a value set, with its display", ("GET", "POST"),
              ("ValueSet",)),
    Operation("expand", "http://hl7.org/fhir/OperationDefinition/ValueSet-expand",
              frozenset({"type", "instance"}), expand,
              "The codes of a value set, filtered by text in any language and paged",
              ("GET", "POST"), ("ValueSet",)),
)

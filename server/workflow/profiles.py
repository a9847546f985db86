"""Validation against the telemedicine profiles and extensions under ``profiles/``.

The StructureDefinitions there are generated (``python -m server.generate profiles``) with full
snapshots; each is compiled once per process into a tree of element rules and checked against a
resource that is already valid R4 (server.fhir.validation runs first and covers the base
specification). A profile adds, and this module checks:

* cardinality of every element of the snapshot, including the slices of ``extension`` (by url)
  and the sub-extensions of complex extensions — code ``required`` when too few, ``structure``
  when too many;
* fixed[x] (equal) and pattern[x] (contained) values — code ``value``;
* bindings to ValueSets this server defines (expanded by server.terminology): required ones
  as errors, extensible and preferred ones as warnings — code ``code-invalid``. The R4 required
  bindings are the base validator's;
* the allowed types of choice elements and of extension values, and the target types of
  references (a target profile stands for its resource type: the validator sees one resource,
  it does not read the targets) — code ``value``;
* every extension of ours met anywhere in the resource, against its own definition (context,
  value type, cardinality of its parts);
* the profile's invariants (``constraint`` whose ``source`` is the profile or the extension),
  evaluated with fhirpathpy; a result other than ``true`` breaks them — code ``invariant``.
  The base specification's own invariants are left to the base validator.

Every issue names the element (its ElementDefinition id), the rule, the profile, and a FHIRPath
location in ``expression`` (``ServiceRequest.performerType``,
``ServiceRequest.extension('https://…/approved-by')``, ``Task.statusReason``).

Writes that claim one of these profiles in ``meta.profile`` are checked by
:func:`server.fhir.prepare.prepare` through :func:`require_claimed_profiles`; profiles of other
publishers are not known here and are ignored. The workflow validates the resources it creates
with :func:`require_profile`, whether they claim the profile or not
(:func:`applicable_profile` tells which one fits).
"""

from __future__ import annotations

import copy
import functools
import json
import re
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from server.fhir.errors import FhirError, Issue
from server.workflow import model

PROFILES_DIR = Path(__file__).resolve().parents[2] / "profiles"
SD_BASE = f"{model.BASE}/StructureDefinition/"
HL7_SD = "http://hl7.org/fhir/StructureDefinition/"
_EXTENSION_NAMES = ("extension", "modifierExtension")
_REFERENCE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[^/]+)?$")


# ----------------------------------------------------------------------------- the definitions

@functools.cache
def _files() -> tuple[dict[str, Any], ...]:
    out = []
    for pattern in ("StructureDefinition-*.json", "Questionnaire-*.json",
                    "SearchParameter-*.json"):
        for path in sorted(PROFILES_DIR.glob(pattern)):
            out.append(json.loads(path.read_text(encoding="utf-8")))
    return tuple(out)


@functools.cache
def definitions() -> dict[str, dict[str, Any]]:
    """Canonical url -> StructureDefinition, for every profile and extension of ours."""
    return {r["url"]: r for r in _files() if r["resourceType"] == "StructureDefinition"}


def builtin_resources() -> list[dict[str, Any]]:
    """The StructureDefinitions, the satisfaction Questionnaire and the SearchParameters, as
    fresh copies (installed into the store at start; the terminology is installed by
    server.terminology)."""
    return copy.deepcopy(list(_files()))


@functools.cache
def supported_profiles() -> dict[str, tuple[str, ...]]:
    """Resource type -> the urls of our profiles on it (CapabilityStatement supportedProfile)."""
    out: dict[str, list[str]] = {}
    for sd in definitions().values():
        if sd["kind"] == "resource":
            out.setdefault(sd["type"], []).append(sd["url"])
    return {t: tuple(sorted(urls)) for t, urls in out.items()}


def _categories(resource: dict[str, Any], system: str) -> list[str]:
    return [code for c in resource.get("category") or [] for code in model.codes(c, system)]


def applicable_profile(resource: dict[str, Any]) -> str | None:
    """The profile a resource of the workflow falls under by its content (the rules validate
    what they create against it whether it claims the profile or not), or None: a
    ServiceRequest or Task by its consultation type (``referral`` or another), a Consent by its
    consent-category, a PractitionerRole with code expert, an Organization with a care level, a
    DiagnosticReport with a consultation type, a QuestionnaireResponse to the satisfaction
    questionnaire."""
    kind = resource.get("resourceType")
    if kind == "ServiceRequest":
        types = _categories(resource, model.CONSULTATION_TYPE)
        if types:
            return model.REFERRAL_REQUEST if "referral" in types else model.CONSULTATION_REQUEST
    elif kind == "Task":
        types = model.codes(resource.get("code"), model.CONSULTATION_TYPE)
        if types:
            return model.REFERRAL_TASK if "referral" in types else model.CONSULTATION_TASK
    elif kind == "Consent" and _categories(resource, model.CONSENT_CATEGORY):
        return model.TELEMEDICINE_CONSENT
    elif kind == "PractitionerRole" and model.has_code(resource.get("code") or [],
                                                       model.PRACTITIONER_ROLE, "expert"):
        return model.EXPERT_ROLE
    elif kind == "Organization" and model.extensions(resource, model.EXT_CARE_LEVEL):
        return model.TELEMEDICINE_ORGANIZATION
    elif kind == "DiagnosticReport" and _categories(resource, model.CONSULTATION_TYPE):
        return model.CONSULTATION_REPORT
    elif kind == "QuestionnaireResponse" and str(resource.get("questionnaire") or "").split(
            "|")[0] == model.SATISFACTION_QUESTIONNAIRE:
        return model.SATISFACTION_RATING
    return None


# ------------------------------------------------------------------------------- compilation

@dataclass(frozen=True, slots=True)
class Constraint:
    key: str
    human: str
    expression: str
    severity: str
    parsed: Any = field(repr=False)


@dataclass(slots=True)
class Node:
    """One ElementDefinition of a snapshot, with its children and slices."""

    id: str
    name: str  # the element's name in its parent ("performer", "value[x]")
    min: int
    max: int  # -1 = *
    types: tuple[str, ...]
    #: Allowed reference targets (resource type names); None = any.
    targets: frozenset[str] | None
    #: Extension profiles an ``extension`` slice (or element) stands for.
    profiles: tuple[str, ...]
    fixed: tuple[str, Any] | None
    pattern: tuple[str, Any] | None
    binding: tuple[str, str] | None  # (strength, value set url without version)
    constraints: tuple[Constraint, ...]
    type_path: str  # FHIRPath type for invariants on this element ("Task.restriction")
    content_reference: str | None = None
    children: list[Node] = field(default_factory=list)
    slices: list[Node] = field(default_factory=list)
    slice_name: str | None = None

    @property
    def choice(self) -> bool:
        return self.name.endswith("[x]")

    def child(self, name: str) -> Node | None:
        return next((c for c in self.children if c.name == name), None)

    @property
    def slice_url(self) -> str | None:
        """The url an extension slice matches: its extension profile, or for the part of a
        complex extension the fixed value of its ``url``."""
        if self.profiles:
            return self.profiles[0]
        url = self.child("url")
        if url is not None and url.fixed is not None:
            return str(url.fixed[1])
        return self.slice_name


@dataclass(slots=True)
class Profile:
    url: str
    name: str
    type: str
    root: Node
    by_id: dict[str, Node]
    context: tuple[str, ...] = ()  # extensions: element paths where they may appear


def _card(value: str | None) -> int:
    return -1 if value == "*" else int(value or 0)


def _value(element: dict[str, Any], prefix: str) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix):][:1].isupper():
            return key, value
    return None


def _type_name(t: dict[str, Any]) -> str:
    for ext in t.get("extension") or ():
        if ext.get("url") == HL7_SD + "structuredefinition-fhir-type":
            return str(ext.get("valueUrl") or ext.get("valueUri"))
    return str(t["code"])


def _targets(types: list[dict[str, Any]]) -> frozenset[str] | None:
    found: set[str] = set()
    for t in types:
        if t.get("code") != "Reference":
            continue
        for target in t.get("targetProfile") or ():
            if target.startswith(HL7_SD):
                found.add(target[len(HL7_SD):])
            elif target in definitions():
                found.add(definitions()[target]["type"])
            else:
                return None  # a profile we do not know: its type is not known either
        if not t.get("targetProfile"):
            return None
    return frozenset(found) if found and "Resource" not in found else None


def _constraints(element: dict[str, Any], own: str) -> tuple[Constraint, ...]:
    from fhirpathpy.parser import parse

    out = []
    for c in element.get("constraint") or ():
        if c.get("source") == own and c.get("expression"):
            out.append(Constraint(c["key"], c.get("human", ""), c["expression"],
                                  c.get("severity", "error"), parse(c["expression"])))
    return tuple(out)


def _node(element: dict[str, Any], own: str) -> Node:
    types = element.get("type") or []
    binding = element.get("binding") or {}
    vs = binding.get("valueSet")
    return Node(
        id=element["id"], name=element["path"].rsplit(".", 1)[-1], min=element.get("min", 0),
        max=_card(element.get("max", "*")), types=tuple(_type_name(t) for t in types),
        targets=_targets(types),
        profiles=tuple(p for t in types for p in t.get("profile") or ()),
        fixed=_value(element, "fixed"), pattern=_value(element, "pattern"),
        binding=(binding["strength"], vs.split("|")[0]) if vs else None,
        constraints=_constraints(element, own),
        type_path=element["path"], content_reference=element.get("contentReference"),
        slice_name=element.get("sliceName"))


@functools.cache
def compiled(url: str) -> Profile:
    """The profile or extension ``url`` as element rules (once per process); KeyError if it is
    not one of ours."""
    sd = definitions()[url.split("|")[0]]
    elements = sd["snapshot"]["element"]
    root = _node(elements[0], sd["url"])
    by_id = {root.id: root}
    for element in elements[1:]:
        node = _node(element, sd["url"])
        by_id[node.id] = node
        parent_id, _, last = node.id.rpartition(".")
        if ":" in last:
            by_id[f"{parent_id}.{last.split(':')[0]}"].slices.append(node)
        else:
            by_id[parent_id].children.append(node)
    context = tuple(c.get("expression", "") for c in sd.get("context") or ())
    return Profile(sd["url"], sd["id"], sd["type"], root, by_id, context)


# ------------------------------------------------------------------------------ terminology

def _run(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Drive a coroutine that never waits (built-in terminology answers from memory)."""
    try:
        coroutine.send(None)
    except StopIteration as stop:
        return stop.value
    coroutine.close()
    raise RuntimeError("the expansion needed the store")


@functools.cache
def value_set_codes(url: str) -> frozenset[tuple[str, str]] | None:
    """(system, code) of every concept of one of our built-in ValueSets; None for a value set
    the server does not ship (its binding is then not checked here)."""
    from server.terminology.expand import Expander
    from server.terminology.library import library
    from server.terminology.resolve import Terminology

    class BuiltIn(Terminology):
        async def _search(self, type_: str, url: str, version: str | None) -> bytes | None:
            return None

    vs = library().value_set(url)
    if vs is None:
        return None
    try:
        expansion = _run(Expander(BuiltIn(None), lenient=True).expand(vs))  # type: ignore[arg-type]
    except (FhirError, RuntimeError):
        return None
    return frozenset(expansion.entries)


def _codings(value: Any, type_name: str) -> list[tuple[str | None, str]]:
    if type_name in ("code", "string", "uri") and isinstance(value, str):
        return [(None, value)]
    if type_name == "Coding" and isinstance(value, dict):
        code = value.get("code")
        return [(value.get("system"), code)] if isinstance(code, str) else []
    if type_name == "CodeableConcept" and isinstance(value, dict):
        return [(c.get("system"), c["code"]) for c in value.get("coding") or []
                if isinstance(c, dict) and c.get("code")]
    return []


# --------------------------------------------------------------------------------- the walk

class _Walk:
    def __init__(self, profile: Profile, resource: dict[str, Any]):
        self.profile = profile
        self.resource = resource
        self.issues: list[Issue] = []

    def add(self, code: str, node: Node, message: str, expression: str,
            severity: str = "error", profile: Profile | None = None) -> None:
        p = profile or self.profile
        self.issues.append(Issue(code, f"{node.id}: {message} (profile {p.name}, {p.url})",
                                 severity, [expression]))


def _values(obj: dict[str, Any], node: Node, path: str) -> list[tuple[str, str, Any]]:
    """(expression, type, value) of each occurrence of ``node`` in ``obj``."""
    if node.choice:
        base = node.name[:-3]
        out = []
        for key, value in obj.items():
            if key.startswith(base) and key[len(base):][:1].isupper():
                suffix = key[len(base):]
                out.append((f"{path}.{key}", suffix, value))
        return out
    value = obj.get(node.name)
    type_name = node.types[0] if len(node.types) == 1 else ""
    if value is None:
        # A primitive present only through its extensions (``_status``) still occurs.
        extra = obj.get("_" + node.name)
        if extra is None:
            return []
        value = extra
    if isinstance(value, list):
        return [(f"{path}.{node.name}[{i}]", type_name, v) for i, v in enumerate(value)
                if v is not None]
    return [(f"{path}.{node.name}", type_name, value)]


def _shown(suffix: str) -> str:
    """A choice suffix as its type name (``String`` -> ``string``, ``Coding`` stays)."""
    from server.fhir.structures import structures

    lower = suffix[:1].lower() + suffix[1:]
    return lower if lower in structures().primitives else suffix


def _resolve_choice_type(node: Node, suffix: str) -> str | None:
    for t in node.types:
        if t[:1].upper() + t[1:] == suffix:
            return t
    return None


def _count(w: _Walk, node: Node, found: int, where: str, profile: Profile) -> None:
    if found < node.min:
        w.add("required", node, f"minimum cardinality {node.min} not met (found {found})",
              where, profile=profile)
    if node.max >= 0 and found > node.max:
        what = "is not allowed" if node.max == 0 else f"allows at most {node.max}"
        w.add("structure", node, f"{what} (found {found})", where, profile=profile)


def _element(w: _Walk, profile: Profile, node: Node, obj: dict[str, Any], path: str) -> None:
    values = _values(obj, node, path)
    where = f"{path}.{node.name[:-3] if node.choice else node.name}"
    if node.name in _EXTENSION_NAMES:
        _extensions(w, profile, node, values, path)
    else:
        _count(w, node, len(values), where, profile)
    for expression, type_name, value in values:
        if node.choice:
            resolved = _resolve_choice_type(node, type_name)
            if resolved is None:
                w.add("value", node, f"a value of type {_shown(type_name)} is not allowed here "
                      f"(allowed: {', '.join(node.types)})", expression, profile=profile)
                continue
            type_name = resolved
        _occurrence(w, profile, node, value, type_name, expression)


def _occurrence(w: _Walk, profile: Profile, node: Node, value: Any, type_name: str,
                expression: str) -> None:
    """Checks of one value of an element, then its children."""
    if node.fixed is not None and value != node.fixed[1]:
        w.add("value", node, f"must be exactly {json.dumps(node.fixed[1], ensure_ascii=False)}"
              f" ({node.fixed[0]})", expression, profile=profile)
    if node.pattern is not None and not _matches(value, node.pattern[1]):
        w.add("value", node, "must match the pattern "
              f"{json.dumps(node.pattern[1], ensure_ascii=False)} ({node.pattern[0]})",
              expression, profile=profile)
    if node.binding is not None:
        _binding(w, profile, node, value, type_name, expression)
    if node.targets is not None and type_name == "Reference" and isinstance(value, dict):
        _reference(w, profile, node, value, expression)
    for constraint in node.constraints:
        _invariant(w, profile, node, constraint, value, expression)
    if isinstance(value, dict) and type_name not in ("Extension",):
        children = node.children
        if node.content_reference:
            target = profile.by_id.get(node.content_reference.lstrip("#"))
            children = target.children if target is not None else []
        for child in children:
            _element(w, profile, child, value, expression)


def _extensions(w: _Walk, profile: Profile, node: Node, values: list[tuple[str, str, Any]],
                path: str) -> None:
    """An ``extension`` element: its slices by url, the overall count, and every extension of
    ours against its definition."""
    where = f"{path}.{node.name}"
    _count(w, node, len(values), where, profile)
    for part in node.slices:
        url = part.slice_url
        matching = [(e, t, v) for e, t, v in values if isinstance(v, dict) and v.get("url") == url]
        _count(w, part, len(matching), f"{where}('{url}')", profile)
        for expression, _, value in matching:
            _occurrence(w, profile, part, value, "Extension", expression)
            if not part.profiles:  # a part of a complex extension: walk its elements here
                for child in part.children:
                    _element(w, profile, child, value, expression)
    for expression, _, value in values:
        url = value.get("url") if isinstance(value, dict) else None
        if isinstance(url, str) and url.split("|")[0] in definitions():
            _extension(w, compiled(url), value, expression, _element_path(path))


def _element_path(expression: str) -> str:
    return re.sub(r"\[\d+\]", "", expression)


def _extension(w: _Walk, ext: Profile, value: dict[str, Any], expression: str,
               where: str) -> None:
    if ext.type != "Extension":
        w.add("structure", ext.root, f"{ext.url} is a profile, not an extension", expression,
              profile=ext)
        return
    if ext.context and not any(_in_context(where, c) for c in ext.context):
        w.add("invalid", ext.root, f"the extension is not allowed on {where} (context: "
              f"{', '.join(ext.context)})", expression, profile=ext)
    for constraint in ext.root.constraints:
        _invariant(w, ext, ext.root, constraint, value, expression)
    for child in ext.root.children:
        if child.name == "url":
            continue
        _element(w, ext, child, value, expression)


def _in_context(where: str, context: str) -> bool:
    return where == context or context in ("Element", "Resource", "DomainResource")


def _matches(value: Any, pattern: Any) -> bool:
    """pattern[x]: every element of the pattern is in the value (lists: each pattern item
    matches some value item)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and _matches(value[k], v) for k, v in pattern.items())
    if isinstance(pattern, list):
        return isinstance(value, list) and all(
            any(_matches(item, p) for item in value) for p in pattern)
    return bool(value == pattern)


def _binding(w: _Walk, profile: Profile, node: Node, value: Any, type_name: str,
             expression: str) -> None:
    strength, url = node.binding  # type: ignore[misc]
    if strength == "example":
        return
    codes = value_set_codes(url)
    if codes is None:
        return
    given = _codings(value, type_name)
    if type_name not in ("code", "string", "uri", "Coding", "CodeableConcept"):
        return
    ok = any((s, c) in codes if s is not None else any(c == code for _, code in codes)
             for s, c in given)
    if ok:
        return
    shown = ", ".join(f"{s}#{c}" if s else c for s, c in given) or "no code"
    severity = "error" if strength == "required" else "warning"
    w.add("code-invalid", node, f"{shown} is not in the value set {url} ({strength} "
          "binding)", expression, severity=severity, profile=profile)


def _reference(w: _Walk, profile: Profile, node: Node, value: dict[str, Any],
               expression: str) -> None:
    ref = value.get("reference")
    target: str | None = None
    if isinstance(ref, str) and ref.startswith("#"):
        contained = {r.get("id"): r.get("resourceType") for r in w.resource.get("contained") or []
                     if isinstance(r, dict)}
        target = contained.get(ref[1:])
    elif isinstance(ref, str) and not ref.startswith("urn:"):
        m = _REFERENCE.search(ref)
        target = m.group(1) if m else None
    if target is None and isinstance(value.get("type"), str):
        target = value["type"]
    assert node.targets is not None
    if target is not None and target not in node.targets:
        w.add("value", node, f"may not refer to a {target} (allowed: "
              f"{', '.join(sorted(node.targets))})", expression, profile=profile)


def _invariant(w: _Walk, profile: Profile, node: Node, constraint: Constraint, value: Any,
               expression: str) -> None:
    from fhirpathpy import apply_parsed_path
    from fhirpathpy.engine.nodes import ResourceNode
    from fhirpathpy.models import models

    focus = value if node is profile.root and profile.type != "Extension" else \
        ResourceNode.create_node(value, node.type_path)
    try:
        result = apply_parsed_path(focus, constraint.parsed,
                                   {"resource": w.resource, "rootResource": w.resource},
                                   models["r4"])
    except Exception as exc:  # noqa: BLE001 - a broken expression must not break the write
        w.add("exception", node, f"{constraint.key} could not be evaluated ({exc}); "
              f"FHIRPath: {constraint.expression}", expression, profile=profile)
        return
    if result != [True]:
        w.add("invariant", node, f"{constraint.key}: {constraint.human} (FHIRPath: "
              f"{constraint.expression})", expression,
              severity="warning" if constraint.severity == "warning" else "error",
              profile=profile)


# ------------------------------------------------------------------------------- public API

def validate_against(resource: dict[str, Any], url: str) -> list[Issue]:
    """Every way ``resource`` breaks the profile ``url`` (one of ours; a version suffix
    ``|0.1.0`` is allowed). Errors and warnings; an empty list means it conforms."""
    key = url.split("|")[0]
    if key not in definitions():
        return [Issue("not-supported", f"the profile {url} is not defined by this server",
                      expression=["meta.profile"])]
    profile = compiled(key)
    kind = resource.get("resourceType")
    if profile.type == "Extension" or kind != profile.type:
        return [Issue("invalid", f"the profile {profile.name} ({profile.url}) is for "
                      f"{profile.type}, not {kind}", expression=["meta.profile"])]
    w = _Walk(profile, resource)
    for constraint in profile.root.constraints:
        _invariant(w, profile, profile.root, constraint, resource, kind)
    for child in profile.root.children:
        _element(w, profile, child, resource, kind)
    return w.issues


def validate_extension(extension: dict[str, Any], where: str) -> list[Issue]:
    """One extension of ours against its definition, as if found on the element ``where``
    (``"Practitioner"``): context, value type and binding, parts, invariants. An extension
    that is not ours gives no issues."""
    url = extension.get("url")
    if not isinstance(url, str) or url.split("|")[0] not in definitions():
        return []
    ext = compiled(url)
    w = _Walk(ext, extension)
    _extension(w, ext, extension, f"{where}.extension", where)
    return w.issues


def profile_error(issues: list[Issue]) -> FhirError | None:
    """422 with all the issues when any is an error (warnings alone pass)."""
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if not errors:
        return None
    return FhirError(422, errors[0].code, errors[0].diagnostics, issues=issues)


def require_profile(resource: dict[str, Any], url: str) -> None:
    """Raise FhirError 422 (every issue in its OperationOutcome) unless ``resource`` conforms
    to the profile ``url``."""
    error = profile_error(validate_against(resource, url))
    if error is not None:
        raise error


def claimed_profiles(resource: dict[str, Any]) -> Iterator[str]:
    """The profiles of ours that ``meta.profile`` claims (others' are not ours to check)."""
    for claimed in (resource.get("meta") or {}).get("profile") or ():
        if isinstance(claimed, str) and claimed.startswith(SD_BASE):
            yield claimed


def claimed_profile_issues(resource: dict[str, Any]) -> list[Issue]:
    """The issues of validating against every profile of ours that the resource claims (an
    unknown Consilium profile is one)."""
    issues: list[Issue] = []
    for url in claimed_profiles(resource):
        if known_profile(url) is None:
            issues.append(Issue("not-supported", f"meta.profile claims {url}, which this "
                                "server does not define", expression=["meta.profile"]))
            continue
        issues.extend(validate_against(resource, url.partition("|")[0]))
    return issues


def known_profile(url: str) -> str | None:
    """The profile of ours ``url`` (``[url]|[version]``) names, or None."""
    base, _, version = url.partition("|")
    sd = definitions().get(base)
    return base if sd is not None and (not version or version == sd.get("version")) else None


def require_claimed_profiles(resource: dict[str, Any]) -> None:
    """For a write: validate against every profile of ours that the resource claims (an
    unknown Consilium profile is refused too); 422 with all the issues."""
    error = profile_error(claimed_profile_issues(resource))
    if error is not None:
        raise error

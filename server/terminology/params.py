"""The input parameters of an operation, from the URL and from a ``Parameters`` body.

operations.html#request: a GET (or a POST with a form body) carries only primitive parameters in
the URL; a POST may carry a ``Parameters`` resource with any of them, including complex types
(Coding, CodeableConcept) and resources (a ValueSet to expand). URL parameters and body
parameters are taken together. Each operation declares its parameters with their FHIR type and
maximum cardinality (from its R4 OperationDefinition); anything else is refused so that a typo
such as ``displaylanguage`` is not silently ignored. Result parameters of the search framework
(``_format``, ``_pretty`` …) are left to the router.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl

from server.fhir.errors import invalid
from server.fhir.request import FhirRequest

_PRIMITIVES = ("code", "uri", "string", "canonical")
_VALUE_KEYS = {
    "code": ("valueCode", "valueString"), "uri": ("valueUri", "valueUrl", "valueString",
                                                  "valueCanonical"),
    "canonical": ("valueCanonical", "valueUri", "valueUrl", "valueString"),
    "string": ("valueString", "valueCode"), "boolean": ("valueBoolean",),
    "integer": ("valueInteger", "valueUnsignedInt", "valuePositiveInt"),
    "dateTime": ("valueDateTime", "valueDate", "valueInstant"),
    "Coding": ("valueCoding",), "CodeableConcept": ("valueCodeableConcept",),
}


@dataclass(frozen=True)
class Param:
    type: str  # a FHIR type name, or "resource"
    many: bool = False


@dataclass
class Params:
    values: dict[str, list[Any]]

    def get(self, name: str) -> Any:
        found = self.values.get(name)
        return found[0] if found else None

    def all(self, name: str) -> list[Any]:
        return list(self.values.get(name) or ())

    def has(self, name: str) -> bool:
        return bool(self.values.get(name))


def read_params(req: FhirRequest, spec: dict[str, Param]) -> Params:
    values: dict[str, list[Any]] = {}
    query = list(req.params)
    body: Any = None
    if req.method == "POST" and req.body.strip():
        if req.content_type == "application/x-www-form-urlencoded":
            query += parse_qsl(req.body.decode("utf-8"), keep_blank_values=True)
        else:
            body = req.resource()
    for name, raw in query:
        if name.startswith("_"):
            continue
        p = _declared(spec, name)
        values.setdefault(name, []).append(_from_text(name, p, raw))
    if body is not None:
        for name, value in _from_body(body, spec):
            values.setdefault(name, []).append(value)
    for name, found in values.items():
        if len(found) > 1 and not spec[name].many:
            raise invalid(f"the parameter {name} may be given only once", expression=name)
    return Params(values)


def _declared(spec: dict[str, Param], name: str) -> Param:
    p = spec.get(name)
    if p is None:
        raise invalid(f"{name} is not a parameter of this operation (known: "
                      f"{', '.join(sorted(spec))})", expression=name)
    return p


def _from_text(name: str, p: Param, raw: str) -> Any:
    if p.type in _PRIMITIVES or p.type == "dateTime":
        if raw.strip() == "":
            raise invalid(f"the parameter {name} is empty", expression=name)
        return raw
    if p.type == "boolean":
        if raw not in ("true", "false"):
            raise invalid(f"{name} must be true or false, not {raw!r}", expression=name)
        return raw == "true"
    if p.type == "integer":
        if not raw.isdigit():
            raise invalid(f"{name} must be a non-negative integer, not {raw!r}",
                          expression=name)
        return int(raw)
    raise invalid(f"{name} is a {p.type}: send it in a Parameters resource (POST)",
                  expression=name)


def _from_body(body: Any, spec: dict[str, Param]) -> list[tuple[str, Any]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise invalid("the body of this operation must be a Parameters resource")
    out = []
    for i, item in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{i}]"
        name = item.get("name") if isinstance(item, dict) else None
        if not isinstance(name, str):
            raise invalid("every parameter needs a name", expression=where)
        p = _declared(spec, name)
        out.append((name, _body_value(name, p, item, where)))
    return out


def _body_value(name: str, p: Param, item: dict[str, Any], where: str) -> Any:
    if p.type == "resource":
        resource = item.get("resource")
        if not isinstance(resource, dict):
            raise invalid(f"{name} must carry a resource", expression=where)
        return resource
    for key in _VALUE_KEYS[p.type]:
        if key in item:
            value = item[key]
            if not _kind_ok(p.type, value):
                raise invalid(f"{name}: {key} has the wrong form", expression=f"{where}.{key}")
            return value
    raise invalid(f"{name} must be given as {' or '.join(_VALUE_KEYS[p.type])}",
                  expression=where)


def _kind_ok(type_: str, value: Any) -> bool:
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool) and value >= 0
    if type_ in ("Coding", "CodeableConcept"):
        return isinstance(value, dict)
    return isinstance(value, str) and value.strip() != ""

"""OpenAPI paths of the FHIR face, generated from the interaction and operation tables."""

from __future__ import annotations

from typing import Any

from server.fhir.interactions import INTERACTIONS, OPERATIONS

_PARAMS = {
    "type": "Resource type, e.g. Patient",
    "id": "Logical id of the resource",
    "vid": "Version id",
    "compartment": "Resource type searched inside the compartment",
}
_RESOURCE_BODY = {
    "required": True,
    "content": {"application/fhir+json": {"schema": {"type": "object"}},
                "application/fhir+xml": {"schema": {"type": "string"}}},
}
_RESPONSES = {
    "200": {"description": "OK", "content": {"application/fhir+json": {}}},
    "default": {"description": "OperationOutcome describing the error",
                "content": {"application/fhir+json": {}}},
}


def _path_params(path: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"},
             "description": desc} for name, desc in _PARAMS.items() if "{" + name + "}" in path]


def fhir_paths(prefix: str = "/fhir") -> dict[str, Any]:
    paths: dict[str, Any] = {}
    for i in INTERACTIONS:
        url = f"{prefix}/{i.path}" if i.path else prefix
        op: dict[str, Any] = {"summary": i.summary, "operationId": i.name, "tags": ["FHIR"],
                              "parameters": _path_params(i.path), "responses": _RESPONSES}
        if i.method in ("POST", "PUT") and "search" not in i.name:
            op["requestBody"] = _RESOURCE_BODY
        if i.method == "PATCH":
            op["requestBody"] = {"required": True, "content": {
                "application/json-patch+json": {"schema": {"type": "array"}}}}
        paths.setdefault(url, {})[i.method.lower()] = op
    for o in OPERATIONS:
        for level in sorted(o.levels):
            base = {"system": prefix, "type": f"{prefix}/{{type}}",
                    "instance": f"{prefix}/{{type}}/{{id}}"}[level]
            url = f"{base}/${o.name}"
            for method in o.methods:
                op = {"summary": o.summary, "operationId": f"{o.name}-{level}-{method.lower()}",
                      "tags": ["FHIR operations"], "parameters": _path_params(url),
                      "responses": _RESPONSES}
                if method == "POST":
                    op["requestBody"] = _RESOURCE_BODY
                paths.setdefault(url, {})[method.lower()] = op
    return paths

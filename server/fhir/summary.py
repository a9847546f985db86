"""``_summary`` and ``_elements``: returning part of a resource (search.html#summary, #elements).

A trimmed resource is marked with the SUBSETTED tag so that nobody mistakes it for the whole.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from server.fhir.errors import invalid
from server.fhir.structures import Element, structures

SUBSETTED = {"system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
             "code": "SUBSETTED", "display": "Resource encoded in summary mode"}
SUMMARY_MODES = ("true", "text", "data", "count", "false")
_ALWAYS = ("resourceType", "id", "meta")

Transform = Callable[[dict[str, Any]], dict[str, Any]]


def _mark(resource: dict[str, Any]) -> dict[str, Any]:
    meta = dict(resource.get("meta") or {})
    tags = list(meta.get("tag") or [])
    if not any(t.get("code") == "SUBSETTED" for t in tags):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    resource["meta"] = meta
    return resource


def _summary_of(value: Any, elements: dict[str, Element]) -> Any:
    if isinstance(value, list):
        return [_summary_of(v, elements) for v in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for name, v in value.items():
        el = elements.get(name.lstrip("_"))
        if el is None or not (el.summary or el.min > 0 or name in ("id",)):
            continue
        out[name] = _summary_of(v, el.children) if el.children else v
    return out


def summary(resource: dict[str, Any], mode: str) -> dict[str, Any]:
    if mode == "false":
        return resource
    type_def = structures().types.get(resource.get("resourceType", ""))
    elements = type_def.elements if type_def else {}
    if mode == "data":
        out = {k: v for k, v in resource.items() if k != "text"}
    elif mode == "text":
        out = {k: v for k, v in resource.items()
               if k in _ALWAYS or k == "text" or (k in elements and elements[k].min > 0)}
    else:  # "true" (and "count" for a read, which has nothing to count)
        out = {"resourceType": resource["resourceType"], **_summary_of(
            {k: v for k, v in resource.items() if k != "resourceType"}, elements)}
    return _mark(out)


def elements_filter(names: set[str]) -> Transform:
    """Keep the named top-level elements (a choice by its base name: ``value`` or ``value[x]``
    keeps ``valueQuantity``) and the mandatory ones (search.html#elements)."""
    bases = {n.removesuffix("[x]") for n in names}

    def kept(name: str, elements: dict[str, Element]) -> bool:
        el = elements.get(name)
        return name in names or el is not None and (
            el.min > 0 or el.choice_of is not None and el.choice_of[:-3] in bases)

    def apply(resource: dict[str, Any]) -> dict[str, Any]:
        type_def = structures().types.get(resource.get("resourceType", ""))
        elements = type_def.elements if type_def else {}
        out = {k: v for k, v in resource.items()
               if k in _ALWAYS or kept(k.removeprefix("_"), elements)}
        return _mark(out)
    return apply


def spares_included(params: list[tuple[str, str]]) -> bool:
    """Whether a search's transform leaves its included resources whole: ``_elements`` does
    ("The list of elements does not apply to included resources", search.html#elements);
    ``_summary``, which summarises the whole Bundle, does not."""
    summary = any(k == "_summary" and v != "false" for k, v in params)
    return not summary and any(k == "_elements" for k, _ in params)


def element_items(raw: str) -> list[str]:
    """The items of an ``_elements`` value, as given."""
    return [n.strip() for n in raw.split(",") if n.strip()]


def element_path(item: str) -> str:
    """An ``_elements`` item without the resource type it may start with (``Patient.name``)."""
    head, _, rest = item.partition(".")
    return rest if rest and structures().is_resource_type(head) else item


def element_name(item: str) -> str:
    """The top-level element an ``_elements`` item keeps: its "base element name" (search.html
    #elements). ``Patient.name`` is tolerated; a nested path (``name.family``) keeps its
    top-level element whole."""
    return element_path(item).partition(".")[0]


def selectable(type_: str, name: str) -> bool:
    """Whether ``_elements`` can name ``name`` on ``type_``: an element, or a choice's base."""
    type_def = structures().types.get(type_)
    elements = type_def.elements if type_def else {}
    base = name.removesuffix("[x]")
    return name in elements or any(
        el.choice_of is not None and el.choice_of[:-3] == base for el in elements.values())


def transform_for(params: list[tuple[str, str]]) -> Transform | None:
    """The transform ``_summary``/``_elements`` ask for, or None for the whole resource."""
    mode = None
    names: set[str] = set()
    for k, v in params:
        if k == "_summary":
            if v not in SUMMARY_MODES:
                raise invalid(f"_summary must be one of {', '.join(SUMMARY_MODES)}; got {v!r}",
                              expression="_summary")
            mode = v
        elif k == "_elements":
            names |= {element_name(n) for n in element_items(v)}
    if mode not in (None, "false"):
        m = mode
        return lambda r: summary(r, m)
    if names:
        return elements_filter(names)
    return None

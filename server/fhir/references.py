"""Finding and rewriting the references inside a resource, guided by the R4 structure table.

A transaction rewrites references to its entries' ``fullUrl`` (``urn:uuid:…``) into the ids the
server assigned, "wherever they occur" (http.html#trules): ``Reference.reference``, elements of
type uri, url, oid and uuid (``Attachment.url``, ``Extension.valueUri`` …), and ``href`` and
``src`` links in the narrative; in extensions of primitive values (``_birthDate``) too. Only
elements of those types are touched, so an Identifier whose value (a string) happens to be a
``urn:uuid`` stays as it is.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Iterator
from typing import Any

from server.fhir.structures import Element, structures

Resolver = Callable[[str], str | None]
#: Primitive types whose values are rewritten when they name an entry.
_URIS = ("uri", "url", "oid", "uuid")
_TARGET_TYPES = ("Reference", "Narrative", *_URIS)
_LINK = re.compile(r"""((?:href|src)\s*=\s*)(?:"([^"]*)"|'([^']*)')""")


@functools.cache
def _relevant(type_name: str) -> bool:
    """Whether a value of this type can hold a reference (so its subtree is worth a visit)."""
    return _relevant_in(type_name, frozenset())


def _relevant_in(type_name: str, seen: frozenset[str]) -> bool:
    if type_name in _TARGET_TYPES or type_name == "Resource":
        return True
    t = structures().types.get(type_name)
    if t is None or type_name in seen:
        return False
    return any(_element_relevant(el, seen | {type_name}) for el in t.elements.values())


def _element_relevant(el: Element, seen: frozenset[str]) -> bool:
    if el.children:
        return any(_element_relevant(c, seen) for c in el.children.values())
    return any(_relevant_in(t, seen) for t in el.types)


Holder = dict[str, Any] | list[Any]
Visitor = Callable[[Holder, Any, str], None]


def visit(resource: dict[str, Any], fn: Visitor) -> None:
    """Call ``fn(holder, key, type)`` for every Reference.reference, Narrative.div and uri,
    url, oid or uuid value (``holder[key]``, a string) in ``resource``, contained and nested
    resources included, but not the entries of a Bundle: their references are to each other,
    resolved within the Bundle (bundle.html §2.36.4.1), not by what holds it."""
    type_def = structures().types.get(resource.get("resourceType", ""))
    if type_def is None:
        return
    elements = type_def.elements
    if resource["resourceType"] == "Bundle":
        elements = {k: v for k, v in elements.items() if k != "entry"}
    _walk(resource, elements, fn)


def _walk(obj: dict[str, Any], elements: dict[str, Element], fn: Visitor) -> None:
    for key, value in obj.items():
        if key.startswith("_") and key[1:] in elements:  # a primitive's id and extensions
            for item in value if isinstance(value, list) else (value,):
                if isinstance(item, dict):
                    _walk(item, structures().types["Element"].elements, fn)
            continue
        el = elements.get(key)
        if el is None or len(el.types) != 1 and not el.children:
            continue
        type_name = el.types[0] if el.types else "BackboneElement"
        if not el.children and not _relevant(type_name):
            continue
        if type_name in _URIS:
            if isinstance(value, list):
                for i, item in enumerate(value):
                    if isinstance(item, str):
                        fn(value, i, type_name)
            elif isinstance(value, str):
                fn(obj, key, type_name)
            continue
        for item in value if isinstance(value, list) else (value,):
            if not isinstance(item, dict):
                continue
            if type_name == "Resource":
                visit(item, fn)
                continue
            if type_name == "Reference" and isinstance(item.get("reference"), str):
                fn(item, "reference", type_name)
            elif type_name == "Narrative" and isinstance(item.get("div"), str):
                fn(item, "div", type_name)
            _walk(item, el.children or structures().children(el), fn)


def rewrite(resource: dict[str, Any], resolve: Resolver,
            unresolved: Callable[[str], None] | None = None) -> int:
    """Replace every reference ``resolve`` maps to something else; returns how many changed.
    ``unresolved`` is shown each Reference.reference that ``resolve`` maps to nothing (to
    refuse the ones that can never resolve), in the same walk."""
    changed = 0

    def fix(holder: Holder, key: Any, type_name: str) -> None:
        nonlocal changed
        value = holder[key]
        if type_name == "Narrative":
            def link(m: re.Match[str]) -> str:
                nonlocal changed
                quote = '"' if m.group(2) is not None else "'"
                url, hash, fragment = (m.group(2) if quote == '"' else m.group(3)).partition("#")
                new = resolve(url) if url else None
                if new is None:
                    return m.group(0)
                changed += 1
                return f"{m.group(1)}{quote}{new}{hash}{fragment}{quote}"
            holder[key] = _LINK.sub(link, value)
            return
        new = resolve(value)
        if new is None:
            if unresolved is not None and type_name == "Reference":
                unresolved(value)
        elif new != value:
            holder[key] = new
            changed += 1

    visit(resource, fix)
    return changed


#: A conditional reference: ``Type?criteria`` (the criteria may hold URLs: identifier systems).
CONDITIONAL = re.compile(r"^[A-Z][A-Za-z]+\?")


def conditional_references(resource: dict[str, Any]) -> list[str]:
    """The conditional references (``Type?criteria``) among the resource's references."""
    if not any(CONDITIONAL.match(r) for r in reference_strings(resource)):
        return []  # nothing could be one: spare every write the slower typed walk
    return [r for r in references(resource) if CONDITIONAL.match(r)]


def check_unconditional(resource: dict[str, Any]) -> None:
    """Refuse a conditional reference outside a transaction, which alone resolves them
    (http.html#trules): stored as it is, it would point nowhere."""
    from server.fhir.errors import invalid

    for ref in conditional_references(resource)[:1]:
        raise invalid(f"the conditional reference {ref} is resolved only in a transaction "
                      "Bundle: send the write in one, or refer to the resource by its id")


#: The fullUrls that are names of their own, meaningful only inside their Bundle.
URNS = ("urn:uuid:", "urn:oid:")


def strings(node: Any, key: str | None = None) -> Iterator[str]:
    """Every string anywhere in a JSON value (keys aside), or only those under ``key``, in no
    order."""
    todo = [node]
    while todo:
        item = todo.pop()
        for name, value in item.items() if type(item) is dict else enumerate(item):
            kind = type(value)
            if kind is dict or kind is list:
                todo.append(value)
            elif kind is str and (key is None or name == key):
                yield value


def reference_strings(node: Any) -> Iterator[str]:
    """Every string under a ``reference`` key anywhere in a JSON value, in no order: the
    Reference.reference values, and a few elements of other types with that name
    (Expression.reference …). Untyped and quick: for JSON that is not a resource (a patch's
    values), or to rule references out before the typed walk."""
    return strings(node, "reference")


def references(resource: dict[str, Any]) -> Iterator[str]:
    """Every Reference.reference value in the resource."""
    found: list[str] = []
    visit(resource, lambda h, k, t: found.append(h[k]) if t == "Reference" else None)
    return iter(found)

"""FHIR XML (``application/fhir+xml``) in and out, following http://hl7.org/fhir/R4/xml.html.

Resources live as JSON dicts everywhere else; this module only translates at the edge. Both
directions are driven by the generated R4 structure table (:mod:`server.fhir.structures`): it
gives the element order of every type and backbone element, which elements repeat, which are
primitives (and of which type, to turn a ``value`` attribute back into a JSON boolean or
number), which hold a whole resource, and where content references point
(``Questionnaire.item.item``).

Why not ``fhir.resources``' own XML support (``model_dump_xml`` / ``model_validate_xml`` of the
R4B models): evaluated on Patient, Observation, Bundle, Parameters and Questionnaire samples, it
does not round-trip and does not write what xml.html prescribes:

- decimals lose their precision (``1.50`` -> ``1.5``, ``3.140`` -> ``3.14``) and integers in
  decimal elements gain one (``100`` -> ``100.0``); instants are rewritten
  (``…05.123+03:30`` -> ``…05.123000+03:30``);
- the ``id`` of a datatype or backbone element is written as an ``<id value=…/>`` child instead
  of an ``id`` attribute, and the spec form ``<identifier id="i1">`` loses its id when read;
  the id of a primitive inside a list (``_given: [{"id": …}]``) is dropped;
- pretty printing indents inside the narrative ``div``, which changes its content;
- an unknown element fails with a bare ``KeyError``, a wrong namespace is accepted silently, and
  the default parser expands internal entities (billion laughs).

So the conversion is our own, on lxml for parsing and plain string building for writing (which
keeps the narrative ``div`` byte-stable under pretty printing and is faster than building a
tree). Checked against the official R4 definitions (about 4,000 StructureDefinitions, ValueSets,
CodeSystems, SearchParameters): JSON -> XML -> JSON gives them back, and the XML validates
against the R4 schema (fhir-single.xsd).

The narrative ``div`` is parsed and re-serialised by lxml in both directions, so it comes back
equal as XML (same canonical form) but not always byte for byte: ``&quot;`` in text becomes
``"``, CR LF becomes LF, and HTML entities such as ``&nbsp;`` are refused (XHTML in FHIR may
use only XML's own entities).

Input safety: documents with a DOCTYPE are refused before parsing (no entity can be declared, so
none is expanded, internal or external; libxml2 expands entities in attribute values even with
``resolve_entities=False``); the parser also runs with entity resolution, DTD loading and network
access off and without ``huge_tree``, so libxml2's depth and size limits apply. Input must be
UTF-8 (as FHIR requires). Element order on input is tolerated, not checked: children are read
in any order and the JSON keeps the order of the document; repeated elements keep their order.
Unknown elements and attributes, text where none belongs, a wrong namespace, an unknown root and
malformed XML raise :class:`XmlError` naming the element and its line.
"""

from __future__ import annotations

import copy
import functools
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from lxml import etree

from server.fhir import codec
from server.fhir.structures import Element, structures

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
XSI_NS = "http://www.w3.org/2001/XMLSchema-instance"

_FHIR = "{" + FHIR_NS + "}"
_NS_LEN = len(_FHIR)
_XHTML_DIV = "{" + XHTML_NS + "}div"
_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'
_INDENT = "  "


class XmlError(ValueError):
    """Input that is not FHIR XML, or a resource that cannot be written as XML."""


# -- the shape of every type, compiled once from the structure table ------------------------------

_ATTR, _PRIMITIVE, _COMPLEX, _RESOURCE, _XHTML = range(5)


@dataclass(slots=True, eq=False)
class _Field:
    """One element of a type as the converters need it (the name is its JSON/XML name)."""

    name: str
    order: int
    kind: int
    is_list: bool
    prim: str = ""  # primitive type name, for _PRIMITIVE and _ATTR
    read: Callable[[str, Any], Any] | None = None  # value attribute -> JSON, None: the string
    shape_key: str = ""  # type name or backbone path, for _COMPLEX
    _shape: _Shape | None = None

    def shape(self) -> _Shape:
        if self._shape is None:
            self._shape = _shape(self.shape_key)
        return self._shape


@dataclass(slots=True, eq=False)
class _Shape:
    """A type, resource or backbone element: its children by name, in definition order."""

    key: str
    is_resource: bool
    fields: dict[str, _Field] = field(default_factory=dict)
    attrs: tuple[str, ...] = ()  # children written as XML attributes: id, and url in Extension


@functools.cache
def _shape(key: str) -> _Shape:
    """Shape of a type ("HumanName", "Patient") or of a backbone element ("Patient.contact")."""
    s = structures()
    if "." in key:
        elements = s.path(key).children
        is_resource = False
    else:
        if key not in s.types:
            raise XmlError(f"unknown type {key}")
        elements = s.types[key].elements
        is_resource = s.types[key].kind == "resource"
    shape = _Shape(key, is_resource)
    for order, (name, el) in enumerate(elements.items()):
        f = _field(key, is_resource, name, el, order)
        if f is not None:
            shape.fields[name] = f
    shape.attrs = tuple(n for n, f in shape.fields.items() if f.kind == _ATTR)
    return shape


def _field(key: str, is_resource: bool, name: str, el: Element, order: int) -> _Field | None:
    if not el.types and not el.children:
        return None  # the "value[x]" entry of a choice: its typed names are listed on their own
    s = structures()
    is_list = el.is_list
    if not is_resource and (name == "id" or (key == "Extension" and name == "url")):
        return _Field(name, order, _ATTR, False, prim=el.types[0])  # xml.html: Element.id, url
    if el.children:
        return _Field(name, order, _COMPLEX, is_list, shape_key=el.content_ref or f"{key}.{name}")
    type_name = el.types[0]
    if type_name == "xhtml":
        return _Field(name, order, _XHTML, is_list)
    if type_name in s.primitives:
        return _Field(name, order, _PRIMITIVE, is_list, prim=type_name,
                      read=_value_reader(type_name))
    if s.types[type_name].kind == "resource":
        return _Field(name, order, _RESOURCE, is_list)
    return _Field(name, order, _COMPLEX, is_list, shape_key=type_name)


@functools.cache
def _extension_field() -> _Field:
    """The ``extension`` child every element has; primitives carry it too."""
    return _shape("Element").fields["extension"]


def _resource_shape(type_name: Any, where: str) -> _Shape:
    if not isinstance(type_name, str) or not structures().is_resource_type(type_name):
        raise XmlError(f"{where}: unknown resource type {type_name!r}")
    return _shape(type_name)


# -- JSON -> XML --------------------------------------------------------------------------------

_ESCAPES = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                          "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})
_SPECIAL = re.compile('[&<>"\n\r\t\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def to_xml(resource: dict[str, Any], pretty: bool = False) -> bytes:
    """The FHIR XML of a resource (Bundle and Parameters with their nested resources too).

    Elements come out in definition order whatever the order of the JSON keys; numbers are
    written as they are held (a ``Decimal`` keeps its digits).
    """
    if isinstance(resource, codec.Raw):
        resource = codec.loads(resource.data)
    if not isinstance(resource, dict):
        raise XmlError("a resource must be a JSON object")
    out = [_DECLARATION]
    step = _INDENT if pretty else ""
    try:
        _write_resource(out, resource, "\n" if pretty else "", step, "", root=True)
    except RecursionError:
        raise XmlError("resource nested too deeply") from None
    if pretty:
        out.append("\n")
    return "".join(out).encode()


def _write_resource(out: list[str], res: Any, nl: str, step: str, where: str,
                    root: bool = False) -> None:
    if isinstance(res, codec.Raw):
        res = codec.loads(res.data)
    if not isinstance(res, dict):
        raise XmlError(f"{where or 'resource'}: a resource must be a JSON object")
    type_name = res.get("resourceType")
    shape = _resource_shape(type_name, where or "resource")
    xmlns = f' xmlns="{FHIR_NS}"' if root else ""
    start = len(out)
    out.append(f"{nl}<{type_name}{xmlns}>")
    _write_children(out, res, shape, nl + step, step, where or shape.key)
    if len(out) == start + 1:
        out[start] = f"{nl}<{type_name}{xmlns}/>"
    else:
        out.append(f"{nl}</{type_name}>")


def _write_children(out: list[str], obj: dict[str, Any], shape: _Shape, nl: str, step: str,
                    where: str) -> None:
    """Write the elements of ``obj`` in definition order (the hot loop: kept flat on purpose)."""
    fields = shape.fields
    present: dict[int, _Field] = {}
    for key in obj:
        underscore = key[:1] == "_"
        f = fields.get(key[1:] if underscore else key)
        if f is None or (underscore and f.kind != _PRIMITIVE):
            if key == "resourceType" and shape.is_resource:
                continue
            raise XmlError(f"{where}: unknown element {key!r}")
        if f.kind != _ATTR:
            present[f.order] = f
    for order in sorted(present):
        f = present[order]
        name = f.name
        kind = f.kind
        if kind == _PRIMITIVE:
            value = obj.get(name)
            extra = obj.get("_" + name)
            if extra is None and value.__class__ is str and not f.is_list:
                out.append(f'{nl}<{name} value="{_attr(value, where, name)}"/>')
            else:
                _write_primitives(out, f, value, extra, nl, step, where)
            continue
        path = f"{where}.{name}"
        for value in _items(f, obj[name], path):
            if kind == _COMPLEX:
                _write_complex(out, name, value, f.shape(), nl, step, path)
            elif kind == _RESOURCE:
                out.append(f"{nl}<{name}>")
                _write_resource(out, value, nl + step, step, path)
                out.append(f"{nl}</{name}>")
            else:
                out.append(nl + _xhtml_out(value, path))


def _items(f: _Field, value: Any, where: str) -> list[Any]:
    if f.is_list:
        if not isinstance(value, list):
            raise XmlError(f"{where}: expected an array")
        return value
    if isinstance(value, list):
        raise XmlError(f"{where}: expected a single value, not an array")
    return [value]


def _write_complex(out: list[str], name: str, value: Any, shape: _Shape, nl: str, step: str,
                   where: str) -> None:
    if not isinstance(value, dict):
        raise XmlError(f"{where}: expected an object")
    attrs = ""
    for a in shape.attrs:
        if a in value:
            attrs += f' {a}="{_attr(value[a], where, a)}"'
    start = len(out)
    out.append(f"{nl}<{name}{attrs}>")
    _write_children(out, value, shape, nl + step, step, where)
    if len(out) == start + 1:
        out[start] = f"{nl}<{name}{attrs}/>"
    else:
        out.append(f"{nl}</{name}>")


def _write_primitives(out: list[str], f: _Field, values: Any, extras: Any, nl: str, step: str,
                      where: str) -> None:
    """A primitive or a list of them, merging ``name`` and ``_name`` into one XML element each."""
    if not f.is_list:
        _write_primitive(out, f.name, values, extras, nl, step, where)
        return
    values = [] if values is None else values
    extras = [] if extras is None else extras
    if not isinstance(values, list) or not isinstance(extras, list):
        raise XmlError(f"{where}.{f.name}: expected an array")
    for i in range(max(len(values), len(extras))):
        value = values[i] if i < len(values) else None
        extra = extras[i] if i < len(extras) else None
        _write_primitive(out, f.name, value, extra, nl, step, where)


def _write_primitive(out: list[str], name: str, value: Any, extra: Any, nl: str, step: str,
                     where: str) -> None:
    attrs = ""
    extensions = None
    if extra is not None:
        if not isinstance(extra, dict) or not extra.keys() <= {"id", "extension"}:
            raise XmlError(f"{where}._{name}: may only hold id and extension")
        if "id" in extra:
            attrs = f' id="{_attr(extra["id"], where, "_" + name)}"'
        extensions = extra.get("extension")
    if value is not None:
        attrs += f' value="{_attr(value, where, name)}"'
    elif not attrs and not extensions:
        return  # a null placeholder of a list on both sides: nothing to write
    if not extensions:
        out.append(f"{nl}<{name}{attrs}/>")
        return
    out.append(f"{nl}<{name}{attrs}>")
    ext = _extension_field()
    path = f"{where}._{name}.extension"
    for e in _items(ext, extensions, path):
        _write_complex(out, "extension", e, ext.shape(), nl + step, step, path)
    out.append(f"{nl}</{name}>")


def _attr(value: Any, where: str, name: str) -> str:
    """A JSON primitive as the text of an XML attribute (``where.name`` names it in errors)."""
    if isinstance(value, str):
        if _SPECIAL.search(value) is None:
            return value
        if _NOT_XML.search(value):
            raise XmlError(f"{where}.{name}: a character XML cannot carry")
        return value.translate(_ESCAPES)
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise XmlError(f"{where}.{name}: {type(value).__name__} is not a primitive value")


def _xhtml_out(value: Any, where: str) -> str:
    """The narrative ``div`` as XHTML to embed, checked to be one well-formed div element.

    Parsed inside a wrapper whose default namespace is XHTML, so a ``div`` written without its
    ``xmlns`` still lands in the XHTML namespace, not in FHIR's.
    """
    if not isinstance(value, str):
        raise XmlError(f"{where}: the narrative div must be a string")
    if "<!DOCTYPE" in value:
        raise XmlError(f"{where}: DOCTYPE declarations are not allowed")
    try:
        wrapper = etree.fromstring(f'<w xmlns="{XHTML_NS}">{value}</w>', _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"{where}: the narrative div is not well-formed XHTML: {exc}") from None
    divs = list(wrapper)
    if (len(divs) != 1 or divs[0].tag != _XHTML_DIV or (wrapper.text or "").strip()
            or (divs[0].tail or "").strip()):
        raise XmlError(f"{where}: the narrative must be exactly one XHTML div element")
    return etree.tostring(divs[0], encoding="unicode", with_tail=False)


# -- XML -> JSON --------------------------------------------------------------------------------

@functools.cache
def _parser() -> etree.XMLParser:
    """A parser that expands nothing and fetches nothing (shared: lxml serialises its use)."""
    return etree.XMLParser(encoding="utf-8", resolve_entities=False, no_network=True,
                           load_dtd=False, dtd_validation=False, huge_tree=False,
                           remove_comments=True, remove_pis=True, collect_ids=False)


def from_xml(data: bytes) -> dict[str, Any]:
    """The JSON form of a FHIR XML resource; numbers as :func:`server.fhir.codec.loads` has them."""
    root = _parse(data)
    tag = root.tag
    if not isinstance(tag, str) or not tag.startswith(_FHIR):
        raise XmlError(f"root element {_local(root)} is not in the FHIR namespace {FHIR_NS}"
                       f" (namespace {_namespace(root) or 'none'})")
    if not structures().is_resource_type(tag[_NS_LEN:]):
        raise XmlError(f"root element {_local(root)} is not a FHIR resource type")
    try:
        return _read_resource(root)
    except RecursionError:
        raise XmlError("XML nested too deeply") from None


def _parse(data: bytes) -> Any:
    if isinstance(data, str):
        data = data.encode()
    if not isinstance(data, bytes | bytearray | memoryview):
        raise XmlError("XML input must be bytes")
    data = bytes(data)
    if b"\x00" in data or not data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        raise XmlError("not an XML document in UTF-8")
    if b"<!DOCTYPE" in data:
        raise XmlError("DOCTYPE declarations are not allowed in FHIR XML")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise XmlError(f"malformed XML: {exc}") from None
    if root.getroottree().docinfo.internalDTD is not None:
        raise XmlError("DOCTYPE declarations are not allowed in FHIR XML")
    return root


def _read_resource(el: Any) -> dict[str, Any]:
    type_name = el.tag[_NS_LEN:]
    for name in el.attrib:
        if not name.startswith("{" + XSI_NS + "}"):  # xsi:schemaLocation is common and harmless
            raise XmlError(f"unexpected attribute {name!r} on {_where(el)}")
    obj: dict[str, Any] = {"resourceType": type_name}
    _read_children(el, _shape(type_name), obj)
    return obj


def _read_children(el: Any, shape: _Shape, obj: dict[str, Any]) -> None:
    """Read the child elements of ``el`` into ``obj`` (the hot loop: kept flat on purpose)."""
    text = el.text
    if text is not None and not text.isspace():
        raise _text(el, text)
    fields = shape.fields
    primitive_lists: list[str] | None = None
    for child in el:
        tag = child.tag  # only elements: the parser drops comments and PIs, and no DTD is allowed
        tail = child.tail
        if tail is not None and not tail.isspace():
            raise _text(el, tail)
        f = fields.get(tag[_NS_LEN:]) if tag.startswith(_FHIR) else None
        if f is None or f.kind == _ATTR:
            if tag == _XHTML_DIV and "div" in fields and fields["div"].kind == _XHTML:
                obj["div"] = _xhtml_in(child)
                continue
            raise _unknown(child, shape)
        kind = f.kind
        name = f.name
        if kind == _PRIMITIVE:
            attrs = child.items()
            if len(attrs) == 1 and attrs[0][0] == "value" and not len(child):
                text = child.text
                if text is not None and not text.isspace():
                    raise _text(child, text)
                value = attrs[0][1] if f.read is None else f.read(attrs[0][1], child)
                extra = None
            else:
                value, extra = _read_primitive(child, f, attrs)
            if f.is_list:
                if name not in obj:
                    obj[name], obj["_" + name] = [], []
                    primitive_lists = (primitive_lists or []) + [name]
                obj[name].append(value)
                obj["_" + name].append(extra)
                continue
            if name in obj or "_" + name in obj:
                raise _repeated(child)
            if value is not None:
                obj[name] = value
            if extra is not None:
                obj["_" + name] = extra
            continue
        if kind == _COMPLEX:
            item: dict[str, Any] = {}
            child_shape = f.shape()
            for attr, value in child.items():
                if attr not in child_shape.attrs:
                    raise XmlError(f"unexpected attribute {attr!r} on {_where(child)}")
                item[attr] = value
            _read_children(child, child_shape, item)
        elif kind == _RESOURCE:
            item = _read_contained(child)
        else:
            raise XmlError(f"{_where(child)}: the narrative div must be in the XHTML namespace "
                           f"{XHTML_NS}")
        if f.is_list:
            if name in obj:
                obj[name].append(item)
            else:
                obj[name] = [item]
        elif name in obj:
            raise _repeated(child)
        else:
            obj[name] = item
    for name in primitive_lists or ():
        if all(v is None for v in obj["_" + name]):
            del obj["_" + name]
        if all(v is None for v in obj[name]):
            del obj[name]


def _read_primitive(el: Any, f: _Field, attrs: list[tuple[str, str]],
                    ) -> tuple[Any, dict[str, Any] | None]:
    """A primitive element with an id or extensions (the general, slower case)."""
    value = id_ = None
    for name, text in attrs:
        if name == "value":
            value = text if f.read is None else f.read(text, el)
        elif name == "id":
            id_ = text
        else:
            raise XmlError(f"unexpected attribute {name!r} on {_where(el)}")
    extensions: dict[str, Any] = {}
    for child in el:
        if child.tag != _FHIR + "extension":
            raise XmlError(f"unknown element {_local(child)} at {_where(child)}: a {f.prim} "
                           "element holds only extensions")
    _read_children(el, _shape("Element"), extensions)  # id is an attribute: only extension
    if value is None and id_ is None and not extensions:
        raise XmlError(f"{_where(el)} has neither a value nor extensions")
    if id_ is None and not extensions:
        return value, None
    extra: dict[str, Any] = {} if id_ is None else {"id": id_}
    extra.update(extensions)
    return value, extra


def _read_contained(el: Any) -> dict[str, Any]:
    """A resource inside ``contained``, ``Bundle.entry.resource`` …: one element named for it."""
    if len(el.keys()):
        raise XmlError(f"unexpected attribute on {_where(el)}")
    text = el.text
    if text is not None and not text.isspace():
        raise _text(el, text)
    inner = list(el)
    if inner and inner[0].tail is not None and not inner[0].tail.isspace():
        raise _text(el, inner[0].tail)
    if len(inner) != 1:
        raise XmlError(f"{_where(el)} must hold exactly one resource")
    tag = inner[0].tag
    if not tag.startswith(_FHIR) or not structures().is_resource_type(tag[_NS_LEN:]):
        raise XmlError(f"{_where(inner[0])} is not a FHIR resource")
    return _read_resource(inner[0])


def _xhtml_in(el: Any) -> str:
    """The narrative div as the JSON string: the element serialised with its XHTML namespace."""
    if len(el.nsmap) > 1:  # drop declarations inherited from the resource (xsi …) if unused
        el = copy.deepcopy(el)
        etree.cleanup_namespaces(el)
    return etree.tostring(el, encoding="unicode", with_tail=False)


def _value_reader(type_name: str) -> Callable[[str, Any], Any] | None:
    """How a ``value`` attribute of this primitive type becomes its JSON value (None: as is)."""
    kind = structures().primitives[type_name].json
    if kind == "boolean":
        return _as_boolean
    if kind == "string":
        return None
    regex = structures().primitives[type_name].regex
    assert regex is not None
    if type_name == "decimal":
        return functools.partial(_as_decimal, regex)
    return functools.partial(_as_integer, regex, type_name)


def _as_boolean(text: str, el: Any) -> bool:
    if text == "true":
        return True
    if text == "false":
        return False
    raise XmlError(f"{_where(el)}: {text!r} is not a boolean")


def _as_integer(regex: re.Pattern[str], type_name: str, text: str, el: Any) -> int:
    if regex.fullmatch(text) is None:
        raise XmlError(f"{_where(el)}: {text!r} is not a valid {type_name}")
    return int(text)


def _as_decimal(regex: re.Pattern[str], text: str, el: Any) -> int | float | Decimal:
    """As :func:`codec.loads` reads the same number: int, or float when exact, else Decimal."""
    if regex.fullmatch(text) is None:
        raise XmlError(f"{_where(el)}: {text!r} is not a valid decimal")
    if "." not in text and "e" not in text and "E" not in text:
        return int(text)
    number = float(text)
    return number if repr(number) == text else Decimal(text)


def _text(el: Any, text: str) -> XmlError:
    """FHIR elements carry their data in attributes and children, never in text."""
    return XmlError(f"unexpected text {text.strip()[:40]!r} in {_where(el)}")


def _unknown(el: Any, shape: _Shape) -> XmlError:
    ns = _namespace(el)
    if ns != FHIR_NS:
        return XmlError(f"element {_local(el)} at {_where(el)} is in namespace "
                        f"{ns or 'none'}, expected {FHIR_NS}")
    return XmlError(f"unknown element {_local(el)} at {_where(el)} (not an element of "
                    f"{shape.key})")


def _repeated(el: Any) -> XmlError:
    return XmlError(f"element {_local(el)} at {_where(el)} may appear only once")


def _local(el: Any) -> str:
    return etree.QName(el).localname


def _namespace(el: Any) -> str | None:
    return etree.QName(el).namespace


def _where(el: Any) -> str:
    """Dotted path of an element from the resource root, with its line, for error messages."""
    names = []
    node = el
    while node is not None:
        names.append(_local(node))
        node = node.getparent()
    return f"{'.'.join(reversed(names))} (line {el.sourceline})"

"""A compiler for the subset of FHIRPath that the R4 search parameters use.

The search index is extracted at write time from the official SearchParameter expressions, so
the expressions are compiled once, at start-up, into plain Python closures over resource dicts.
Compilation is typed: every step is resolved against the R4 structure table
(:mod:`server.fhir.structures`), so that

* choice elements expand to their JSON names (``Observation.value`` reads ``valueQuantity``,
  ``valueString`` … each tagged with its own type) and ``as``/``ofType``/``is`` filter on them;
* every evaluated node carries its FHIR type (a :class:`TypeInfo`), which tells the indexer
  whether it holds a Period, a CodeableConcept, a code with a known system, …;
* a misspelt element, an unknown function or an unsupported operator fails at compile time
  (:class:`FhirPathError`) instead of quietly yielding nothing at write time.

Supported: member paths with a leading type name, ``|``, parentheses, ``[n]``, ``=``, ``!=``,
``and``, ``or``, ``is``/``as`` (operator and function forms), ``ofType()``, ``where()``,
``exists()``, ``empty()``, ``not()``, ``first()``, ``extension(url)``, ``resolve() is Type``
(the target type read from ``Reference.reference``, no lookup), string/boolean/number literals,
``%resource``/``%rootResource`` and ``$this``. Everything else raises :class:`FhirPathError`.

A node is a ``(value, TypeInfo)`` tuple; evaluation takes and returns lists of nodes.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from server.fhir.structures import Element, Structures, structures

SPEC = Path(__file__).resolve().parent / "spec" / "search_parameters.json"


class FhirPathError(ValueError):
    """The expression is not valid FHIRPath, or uses something this compiler does not support."""


@dataclass(eq=False, slots=True)
class TypeInfo:
    """The static type of a node: a FHIR type name and the elements inside it.

    Compared by identity: one instance per named type, per backbone element and per bound code
    element, created by :class:`TypeModel`.
    """

    name: str  # "Quantity", "string", "Patient", "BackboneElement" …
    elements: dict[str, Element] = field(default_factory=dict)
    #: Code system of the required binding of a ``code`` element drawn from a single system.
    system: str | None = None
    #: An element typed ``Resource`` (contained, Bundle.entry.resource): the real type is read
    #: from ``resourceType`` when a type test needs it.
    dynamic: bool = False

    def __repr__(self) -> str:
        return f"TypeInfo({self.name})"


Node = tuple[Any, TypeInfo]
Evaluator = Callable[[list[Node], Node], list[Node]]

#: R4 primitive types that specialise another primitive (datatypes.html); the structure table
#: keeps the complex-type hierarchy, this is the primitive half of it.
PRIMITIVE_BASES = {
    "code": "string", "id": "string", "markdown": "string",
    "canonical": "uri", "url": "uri", "oid": "uri", "uuid": "uri",
    "positiveInt": "integer", "unsignedInt": "integer",
}
#: FHIRPath System types written in expressions (``value.as(DateTime)``) and the FHIR primitive
#: whose values they denote.
SYSTEM_TYPES = {
    "Boolean": "boolean", "String": "string", "Integer": "integer", "Decimal": "decimal",
    "Date": "date", "DateTime": "dateTime", "Time": "time",
}


class TypeModel:
    """The R4 types as :class:`TypeInfo` objects, created on demand and shared."""

    def __init__(self, structs: Structures, binding_systems: dict[str, str]):
        self.structs = structs
        self.binding_systems = binding_systems
        self._named: dict[str, TypeInfo] = {}
        self._backbones: dict[int, TypeInfo] = {}
        self._bound: dict[tuple[str, str], TypeInfo] = {}
        self._resource_any = TypeInfo("Resource", self._elements_of("Resource"), dynamic=True)

    def _elements_of(self, name: str) -> dict[str, Element]:
        t = self.structs.types.get(name)
        return t.elements if t is not None else {}

    def is_type(self, name: str) -> bool:
        return name in self.structs.types or name in self.structs.primitives

    def named(self, name: str) -> TypeInfo:
        info = self._named.get(name)
        if info is None:
            if not self.is_type(name):
                raise FhirPathError(f"unknown type {name!r}")
            info = self._named[name] = TypeInfo(name, self._elements_of(name))
        return info

    def for_element(self, el: Element) -> TypeInfo:
        if el.children:
            key = id(el.children)
            info = self._backbones.get(key)
            if info is None:
                name = el.types[0] if el.types else "BackboneElement"
                info = self._backbones[key] = TypeInfo(name, el.children)
            return info
        if len(el.types) != 1:
            raise FhirPathError(f"element {el.name!r} has no single type ({el.types})")
        name = el.types[0]
        if name == "Resource":
            return self._resource_any
        system = self.binding_systems.get(el.binding) if el.binding else None
        if system is not None:
            key2 = (name, system)
            info = self._bound.get(key2)
            if info is None:
                info = self._bound[key2] = TypeInfo(name, {}, system=system)
            return info
        return self.named(name)

    def base_of(self, name: str) -> str | None:
        if name in PRIMITIVE_BASES:
            return PRIMITIVE_BASES[name]
        t = self.structs.types.get(name)
        return t.base if t is not None else None

    @functools.lru_cache(maxsize=4096)  # noqa: B019 - one model per process, static data
    def is_a(self, name: str, ancestor: str) -> bool:
        """Whether type ``name`` is ``ancestor`` or derives from it (Age is a Quantity,
        Patient a DomainResource, code a string)."""
        current: str | None = name
        while current is not None:
            if current == ancestor:
                return True
            current = self.base_of(current)
        return False

    def type_specifier(self, name: str) -> str:
        """A type name as written in an expression (``Quantity``, ``FHIR.Quantity``,
        ``System.DateTime``, ``DateTime``) -> the FHIR type it denotes."""
        namespace, _, short = name.rpartition(".")
        if namespace not in ("", "FHIR", "System"):
            raise FhirPathError(f"unknown type namespace in {name!r}")
        if namespace != "System" and self.is_type(short):
            return short
        if short in SYSTEM_TYPES:
            return SYSTEM_TYPES[short]
        raise FhirPathError(f"unknown type {name!r}")

    def members(self, info: TypeInfo, name: str) -> list[tuple[str, TypeInfo]]:
        """JSON keys and types of element ``name`` inside a node of type ``info``; a choice
        element gives one entry per allowed type (``value`` -> ``valueQuantity`` …)."""
        el = info.elements.get(name)
        if el is None:
            el = info.elements.get(name + "[x]")
            if el is None or name.endswith("]"):
                return []
        if el.choices:
            return [(c, self.for_element(info.elements[c])) for c in el.choices]
        return [(name, self.for_element(el))]


@functools.cache
def binding_systems() -> dict[str, str]:
    with open(SPEC, encoding="utf-8") as fh:
        return dict(json.load(fh)["bindingSystems"])


@functools.cache
def type_model() -> TypeModel:
    return TypeModel(structures(), binding_systems())


# --------------------------------------------------------------------------- tokens and parsing

_TOKEN = re.compile(r"""
    (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
  | (?P<num>\d+(?:\.\d+)?)
  | (?P<str>'(?:[^'\\]|\\.)*')
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`)
  | (?P<ext>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
  | (?P<var>\$[A-Za-z]+)
  | (?P<op>!=|!~|<=|>=|[=~<>|.()\[\],+\-*/&{}@])
""", re.VERBOSE | re.DOTALL)
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t"}


def _unescape(body: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        c = body[i]
        if c == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            if nxt == "u" and i + 5 < len(body):
                out.append(chr(int(body[i + 2:i + 6], 16)))
                i += 6
                continue
            out.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            raise FhirPathError(f"unexpected character {text[pos]!r} at {pos} in {text!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group()
        if kind == "ws":
            continue
        if kind == "str" or (kind == "ident" and value.startswith("`")):
            value = _unescape(value[1:-1])
        elif kind == "ext":
            body = value[1:]
            value = _unescape(body[1:-1]) if body[:1] in ("`", "'") else body
        tokens.append((kind, value))
    tokens.append(("eof", ""))
    return tokens


# AST: plain tuples, first item the node kind.
#   ("lit", value, type_name) ("empty",) ("this",) ("env", name)
#   ("ident", name)            identifier at the start of a path (element of $this or a type)
#   ("member", target, name)   target.name
#   ("call", target | None, name, [args])
#   ("index", target, n)
#   ("binop", op, left, right)
#   ("typeop", op, operand, type_name)
Ast = tuple[Any, ...]

_UNSUPPORTED_OPS = {"~", "!~", "<", ">", "<=", ">=", "+", "-", "*", "/", "&", "@"}


class _Parser:
    """Recursive descent over the FHIRPath grammar, by precedence (lowest first): implies,
    or/xor, and, in/contains, equality, comparison, ``|``, ``is``/``as``, additive,
    multiplicative, invocation. Only the supported operators are accepted."""

    def __init__(self, text: str):
        self.text = text
        self.tokens = tokenize(text)
        self.pos = 0

    def peek(self, ahead: int = 0) -> tuple[str, str]:
        return self.tokens[min(self.pos + ahead, len(self.tokens) - 1)]

    def take(self) -> tuple[str, str]:
        tok = self.tokens[self.pos]
        self.pos += 1
        return tok

    def expect(self, value: str) -> None:
        kind, got = self.take()
        if got != value or kind not in ("op", "ident"):
            raise FhirPathError(f"expected {value!r}, got {got!r} in {self.text!r}")

    def is_keyword(self, *words: str) -> bool:
        kind, value = self.peek()
        return kind == "ident" and value in words and self.peek(1) != ("op", "(")

    def parse(self) -> Ast:
        node = self.expression()
        if self.peek()[0] != "eof":
            raise FhirPathError(f"unexpected {self.peek()[1]!r} in {self.text!r}")
        return node

    def expression(self) -> Ast:
        node = self.or_expr()
        if self.is_keyword("implies"):
            raise FhirPathError(f"'implies' is not supported ({self.text!r})")
        return node

    def or_expr(self) -> Ast:
        node = self.and_expr()
        while self.is_keyword("or", "xor"):
            op = self.take()[1]
            if op == "xor":
                raise FhirPathError(f"'xor' is not supported ({self.text!r})")
            node = ("binop", "or", node, self.and_expr())
        return node

    def and_expr(self) -> Ast:
        node = self.equality()
        while self.is_keyword("and"):
            self.take()
            node = ("binop", "and", node, self.equality())
        return node

    def equality(self) -> Ast:
        if self.is_keyword("in", "contains"):
            raise FhirPathError(f"'in'/'contains' are not supported ({self.text!r})")
        node = self.union()
        while self.peek() in (("op", "="), ("op", "!=")):
            op = self.take()[1]
            node = ("binop", op, node, self.union())
        self._reject_operator()
        return node

    def union(self) -> Ast:
        node = self.type_expr()
        while self.peek() == ("op", "|"):
            self.take()
            node = ("binop", "|", node, self.type_expr())
        return node

    def type_expr(self) -> Ast:
        node = self.invocation_chain()
        self._reject_operator()
        while self.is_keyword("is", "as"):
            op = self.take()[1]
            node = ("typeop", op, node, self.qualified_name())
            self._reject_operator()
        return node

    def _reject_operator(self) -> None:
        kind, value = self.peek()
        if kind == "op" and value in _UNSUPPORTED_OPS:
            raise FhirPathError(f"operator {value!r} is not supported ({self.text!r})")
        if self.is_keyword("div", "mod", "in", "contains", "implies", "xor"):
            raise FhirPathError(f"operator {value!r} is not supported ({self.text!r})")

    def qualified_name(self) -> str:
        kind, name = self.take()
        if kind != "ident":
            raise FhirPathError(f"expected a type name, got {name!r} in {self.text!r}")
        while self.peek() == ("op", ".") and self.peek(1)[0] == "ident":
            self.take()
            name += "." + self.take()[1]
        return name

    def invocation_chain(self) -> Ast:
        node = self.term()
        while True:
            if self.peek() == ("op", "."):
                self.take()
                kind, name = self.take()
                if kind != "ident":
                    raise FhirPathError(f"expected a name after '.', got {name!r}")
                if self.peek() == ("op", "("):
                    node = ("call", node, name, self.arguments())
                else:
                    node = ("member", node, name)
            elif self.peek() == ("op", "["):
                self.take()
                kind, value = self.take()
                if kind != "num" or "." in value:
                    raise FhirPathError(f"only integer literal indexes are supported ({self.text!r})")
                self.expect("]")
                node = ("index", node, int(value))
            else:
                return node

    def arguments(self) -> list[Ast]:
        self.expect("(")
        args: list[Ast] = []
        if self.peek() == ("op", ")"):
            self.take()
            return args
        while True:
            args.append(self.expression())
            if self.peek() == ("op", ","):
                self.take()
                continue
            self.expect(")")
            return args

    def term(self) -> Ast:
        kind, value = self.peek()
        if kind == "op" and value == "(":
            self.take()
            node = self.expression()
            self.expect(")")
            return node
        if kind == "op" and value == "{":
            self.take()
            self.expect("}")
            return ("empty",)
        if kind == "op" and value in ("-", "+"):
            raise FhirPathError(f"unary {value!r} is not supported ({self.text!r})")
        self.take()
        if kind == "str":
            return ("lit", value, "string")
        if kind == "num":
            return ("lit", Decimal(value), "decimal") if "." in value else ("lit", int(value),
                                                                            "integer")
        if kind == "ext":
            return ("env", value)
        if kind == "var":
            if value != "$this":
                raise FhirPathError(f"{value} is not supported ({self.text!r})")
            return ("this",)
        if kind == "ident":
            if value in ("true", "false") and self.peek() != ("op", "("):
                return ("lit", value == "true", "boolean")
            if self.peek() == ("op", "("):
                return ("call", None, value, self.arguments())
            return ("ident", value)
        raise FhirPathError(f"unexpected {value!r} in {self.text!r}")


def parse(text: str) -> Ast:
    return _Parser(text).parse()


# ------------------------------------------------------------------------------- evaluation helpers


def _truth(nodes: list[Node]) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a boolean: empty -> unknown (None), one
    boolean -> itself, one other item -> true, several -> unknown (an error in FHIRPath; at
    index time nothing is indexed rather than failing the write)."""
    if len(nodes) != 1:
        return None
    value = nodes[0][0]
    return value if type(value) is bool else True


def _equal(a: list[Node], b: list[Node]) -> bool:
    if len(a) != len(b):
        return False
    for (x, _), (y, _) in zip(a, b, strict=True):
        if (type(x) is bool) != (type(y) is bool) or x != y:
            return False
    return True


def reference_type(value: Any, root: Any) -> str | None:
    """The type of the resource a Reference points at, without fetching it: the ``Type`` of a
    relative (``Type/id``) or absolute (``…/Type/id[/_history/v]``) reference, the
    ``resourceType`` of a ``#contained`` one, else ``Reference.type``."""
    if type(value) is not dict:
        return None
    ref = value.get("reference")
    if type(ref) is str and ref:
        if ref[0] == "#":
            for res in root.get("contained") or ():
                if type(res) is dict and res.get("id") == ref[1:]:
                    return res.get("resourceType")
            return None
        if not ref.startswith("urn:"):
            parts = ref.split("/")
            if len(parts) >= 4 and parts[-2] == "_history":
                parts = parts[:-2]
            if len(parts) >= 2 and structures().is_resource_type(parts[-2]):
                return parts[-2]
            return None
    typ = value.get("type")
    return typ if type(typ) is str else None


# -------------------------------------------------------------------------------------- compiler


@dataclass(slots=True)
class _Compiled:
    fn: Evaluator
    types: tuple[TypeInfo, ...]
    identity: bool = False  # returns its focus unchanged
    empty: bool = False  # statically known to be empty
    #: The resource's own JSON keys the result comes from: empty when the resource has none of
    #: them. None when unknown (or when the result can be non-empty without them: booleans).
    keys: frozenset[str] | None = None
    at_root: bool = False  # the result is the resource itself (or nothing)
    #: Of an element of the resource: its (JSON key, type) pairs, so that a type filter keeps
    #: the keys of the types it keeps (``value.as(Quantity)``: only ``valueQuantity``).
    key_types: tuple[tuple[str, TypeInfo], ...] | None = None


def _identity(focus: list[Node], root: Node) -> list[Node]:
    return focus


def _nothing(focus: list[Node], root: Node) -> list[Node]:
    return []


_EMPTY = _Compiled(_nothing, (), empty=True)


def _unique(types: Iterable[TypeInfo]) -> tuple[TypeInfo, ...]:
    seen: dict[int, TypeInfo] = {}
    for t in types:
        seen.setdefault(id(t), t)
    return tuple(seen.values())


class _Compiler:
    def __init__(self, model: TypeModel, text: str, root: TypeInfo):
        self.model = model
        self.text = text
        self.root = root
        self.boolean = model.named("boolean")
        self.top: tuple[TypeInfo, ...] | None = None  # the focus of the whole expression

    def fail(self, message: str) -> FhirPathError:
        return FhirPathError(f"{message} in {self.text!r}")

    def compile(self, ast: Ast, focus: tuple[TypeInfo, ...]) -> _Compiled:
        kind = ast[0]
        if kind == "lit":
            node: Node = (ast[1], self.model.named(ast[2]))
            return _Compiled(lambda f, r: [node], (node[1],))
        if kind == "empty":
            return _EMPTY
        if kind == "this":
            return _Compiled(_identity, focus, identity=True)
        if kind == "env":
            if ast[1] not in ("resource", "rootResource"):
                raise self.fail(f"%{ast[1]} is not supported")
            return _Compiled(lambda f, r: [r], (self.root,))
        if kind == "ident":
            return self.identifier(ast[1], focus)
        if kind == "member":
            return self.member(self.compile(ast[1], focus), ast[2])
        if kind == "index":
            return self.index(self.compile(ast[1], focus), ast[2])
        if kind == "call":
            return self.call(ast, focus)
        if kind == "typeop":
            return self.type_operator(ast, focus)
        if kind == "binop":
            return self.binary(ast, focus)
        raise self.fail(f"unsupported construct {kind}")

    # ---- paths

    def identifier(self, name: str, focus: tuple[TypeInfo, ...]) -> _Compiled:
        """A leading name is an element of the focus, or else a type name that filters the
        focus (``Patient.name`` evaluated on a Patient)."""
        at_root = focus is self.top
        if any(self.model.members(t, name) for t in focus):
            return self.member(_Compiled(_identity, focus, identity=True, at_root=at_root), name)
        if not (name[:1].isupper() and self.model.is_type(name)):
            raise self.fail(f"{name!r} is neither an element of {self._names(focus)} nor a type")
        matching = tuple(t for t in focus if self.model.is_a(t.name, name))
        if not matching:
            return _EMPTY  # another resource type's part of a shared expression
        if len(matching) == len(focus):
            return _Compiled(_identity, focus, identity=True, at_root=at_root)
        keep = {id(t) for t in matching}
        return _Compiled(lambda f, r: [n for n in f if id(n[1]) in keep], matching,
                         at_root=at_root)

    @staticmethod
    def _names(types: Sequence[TypeInfo]) -> str:
        return "/".join(t.name for t in types) or "nothing"

    def member(self, target: _Compiled, name: str) -> _Compiled:
        if target.empty:
            return _EMPTY
        table: dict[TypeInfo, tuple[tuple[str, TypeInfo], ...]] = {}
        for t in target.types:
            entries = self.model.members(t, name)
            if entries:
                table[t] = tuple(entries)
        if not table:
            raise self.fail(f"{name!r} is not an element of {self._names(target.types)}")
        out_types = _unique(ct for found in table.values() for _, ct in found)
        key_types = (tuple(entry for found in table.values() for entry in found)
                     if target.at_root else None)
        keys = frozenset(key for key, _ in key_types) if key_types is not None else target.keys
        source = None if target.identity else target.fn
        if len(target.types) == 1 and len(table) == 1:
            only = next(iter(table.values()))
            if len(only) == 1:
                fn = _single_member(source, *only[0])
            else:
                fn = _choice_member(source, only)
        else:
            fn = _typed_member(source, table)
        return _Compiled(fn, out_types, keys=keys, key_types=key_types)

    def index(self, target: _Compiled, n: int) -> _Compiled:
        fn = target.fn
        return _Compiled(lambda f, r: fn(f, r)[n:n + 1], target.types, empty=target.empty,
                         keys=target.keys)

    # ---- functions

    def call(self, ast: Ast, focus: tuple[TypeInfo, ...]) -> _Compiled:
        _, target_ast, name, args = ast
        target = (_Compiled(_identity, focus, identity=True) if target_ast is None
                  else self.compile(target_ast, focus))
        handler = getattr(self, f"fn_{name}", None)
        if handler is None:
            raise self.fail(f"function {name}() is not supported")
        return handler(target, args)

    def _arity(self, name: str, args: list[Ast], *allowed: int) -> None:
        if len(args) not in allowed:
            raise self.fail(f"{name}() takes {' or '.join(map(str, allowed))} argument(s)")

    def fn_where(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        self._arity("where", args, 1)
        if target.empty:
            return _EMPTY
        arg = args[0]
        if arg[0] == "typeop" and arg[1] == "is" and arg[2] == ("call", None, "resolve", []):
            return self._where_resolves(target, arg[3])
        criteria = self.compile(arg, target.types).fn
        source = target.fn

        def where(focus: list[Node], root: Node) -> list[Node]:
            return [n for n in source(focus, root) if _truth(criteria([n], root)) is True]
        return _Compiled(where, target.types, keys=target.keys)

    def _where_resolves(self, target: _Compiled, type_name: str) -> _Compiled:
        """``where(resolve() is T)``, the form of most reference parameters, as one filter
        (what the general ``where`` over :meth:`resolve_is` gives, without its per-node calls)."""
        fhir_type = self.model.type_specifier(type_name)
        self.resolve_is(target, fhir_type)  # its checks
        source, model = target.fn, self.model
        matches: dict[str, bool] = {}  # resource type -> is it a fhir_type

        def where(focus: list[Node], root: Node) -> list[Node]:
            out = []
            for n in source(focus, root):
                found = reference_type(n[0], root[0])
                if found is not None:
                    match = matches.get(found)
                    if match is None:
                        match = matches[found] = model.is_a(found, fhir_type)
                    if match:
                        out.append(n)
            return out
        return _Compiled(where, target.types, keys=target.keys)

    def fn_exists(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        self._arity("exists", args, 0, 1)
        if args:
            target = self.fn_where(target, args)
        source, boolean = target.fn, self.boolean
        return _Compiled(lambda f, r: [(bool(source(f, r)), boolean)], (boolean,))

    def fn_empty(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        self._arity("empty", args, 0)
        source, boolean = target.fn, self.boolean
        return _Compiled(lambda f, r: [(not source(f, r), boolean)], (boolean,))

    def fn_not(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        self._arity("not", args, 0)
        source, boolean = target.fn, self.boolean

        def negate(focus: list[Node], root: Node) -> list[Node]:
            value = _truth(source(focus, root))
            return [] if value is None else [(not value, boolean)]
        return _Compiled(negate, (boolean,))

    def fn_first(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        self._arity("first", args, 0)
        return self.index(target, 0)

    def _type_arg(self, name: str, args: list[Ast]) -> str:
        self._arity(name, args, 1)
        arg = args[0]
        parts: list[str] = []
        while arg[0] == "member":
            parts.insert(0, arg[2])
            arg = arg[1]
        if arg[0] != "ident":
            raise self.fail(f"{name}() needs a type name")
        return self.model.type_specifier(".".join([arg[1], *parts]))

    def fn_ofType(self, target: _Compiled, args: list[Ast]) -> _Compiled:  # noqa: N802
        return self.type_filter(target, self._type_arg("ofType", args))

    def fn_as(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        return self.type_filter(target, self._type_arg("as", args))

    def fn_is(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        return self.type_test(target, self._type_arg("is", args))

    def fn_extension(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        self._arity("extension", args, 1)
        if args[0][0] != "lit" or args[0][2] != "string":
            raise self.fail("extension() needs a string literal url")
        url = args[0][1]
        extensions = self.member(target, "extension")
        source = extensions.fn

        def extension(focus: list[Node], root: Node) -> list[Node]:
            return [n for n in source(focus, root)
                    if type(n[0]) is dict and n[0].get("url") == url]
        return _Compiled(extension, extensions.types, empty=extensions.empty,
                         keys=extensions.keys)

    def fn_resolve(self, target: _Compiled, args: list[Ast]) -> _Compiled:
        raise self.fail("resolve() is only supported as 'resolve() is Type'")

    # ---- type operators

    def type_operator(self, ast: Ast, focus: tuple[TypeInfo, ...]) -> _Compiled:
        _, op, operand, type_name = ast
        fhir_type = self.model.type_specifier(type_name)
        if op == "is" and operand[0] == "call" and operand[2] == "resolve":
            self._arity("resolve", operand[3], 0)
            target = (_Compiled(_identity, focus, identity=True) if operand[1] is None
                      else self.compile(operand[1], focus))
            return self.resolve_is(target, fhir_type)
        target = self.compile(operand, focus)
        if op == "as":
            return self.type_filter(target, fhir_type)
        return self.type_test(target, fhir_type)

    def resolve_is(self, target: _Compiled, fhir_type: str) -> _Compiled:
        if not self.model.structs.is_resource_type(fhir_type) and fhir_type not in (
                "Resource", "DomainResource"):
            raise self.fail(f"resolve() is {fhir_type}: not a resource type")
        if not target.empty and not any(t.name == "Reference" for t in target.types):
            raise self.fail("resolve() is only supported on References")
        source, boolean, model = target.fn, self.boolean, self.model

        def resolves_to(focus: list[Node], root: Node) -> list[Node]:
            nodes = source(focus, root)
            if len(nodes) != 1:
                return []
            found = reference_type(nodes[0][0], root[0])
            return [(found is not None and model.is_a(found, fhir_type), boolean)]
        return _Compiled(resolves_to, (boolean,))

    def _type_table(self, target: _Compiled, fhir_type: str) -> dict[int, TypeInfo | None]:
        """For each possible input type: keep it (itself), keep it if ``resourceType`` says so
        (None: a dynamic Resource node), or absent (never of that type)."""
        table: dict[int, TypeInfo | None] = {}
        for t in target.types:
            if self.model.is_a(t.name, fhir_type):
                table[id(t)] = t
            elif t.dynamic and self.model.is_a(fhir_type, t.name):
                table[id(t)] = None
        if not target.empty and not table:
            raise self.fail(f"{fhir_type} is not a possible type of "
                            f"{self._names(target.types)}")
        return table

    def type_filter(self, target: _Compiled, fhir_type: str) -> _Compiled:
        """``as``/``ofType``: the nodes of that type. FHIRPath N1 makes ``as`` on several items
        an error; the search expressions rely on it filtering (``component.value as
        Quantity``), as other servers do."""
        if target.empty:
            return _EMPTY
        table = self._type_table(target, fhir_type)
        exact = self.model.named(fhir_type)
        out_types = _unique(t if t is not None else exact for t in table.values())
        source, model = target.fn, self.model
        if all(table.get(id(t)) is t for t in target.types):
            return target  # every possible node already has that type
        keys = target.keys
        if target.key_types is not None:
            keys = frozenset(key for key, t in target.key_types if id(t) in table)

        def filtered(focus: list[Node], root: Node) -> list[Node]:
            out = []
            for n in source(focus, root):
                if id(n[1]) not in table:
                    continue
                if table[id(n[1])] is not None:
                    out.append(n)
                elif type(n[0]) is dict and model.is_a(str(n[0].get("resourceType")),
                                                       fhir_type):
                    out.append((n[0], exact))
            return out
        return _Compiled(filtered, out_types, keys=keys)

    def type_test(self, target: _Compiled, fhir_type: str) -> _Compiled:
        boolean = self.boolean
        if target.empty:
            return _EMPTY
        table = self._type_table(target, fhir_type)
        source, model = target.fn, self.model

        def test(focus: list[Node], root: Node) -> list[Node]:
            nodes = source(focus, root)
            if len(nodes) != 1:
                return []
            value, info = nodes[0]
            if id(info) not in table:
                return [(False, boolean)]
            if table[id(info)] is not None:
                return [(True, boolean)]
            actual = value.get("resourceType") if type(value) is dict else None
            return [(model.is_a(str(actual), fhir_type), boolean)]
        return _Compiled(test, (boolean,))

    # ---- operators

    def binary(self, ast: Ast, focus: tuple[TypeInfo, ...]) -> _Compiled:
        _, op, left_ast, right_ast = ast
        left = self.compile(left_ast, focus)
        right = self.compile(right_ast, focus)
        if op == "|":
            return self.union(left, right)
        lf, rf, boolean = left.fn, right.fn, self.boolean
        if op in ("=", "!="):
            negate = op == "!="

            def compare(focus: list[Node], root: Node) -> list[Node]:
                a = lf(focus, root)
                if not a:
                    return []
                b = rf(focus, root)
                if not b:
                    return []
                return [(_equal(a, b) != negate, boolean)]
            return _Compiled(compare, (boolean,))
        if op == "and":
            def conjunction(focus: list[Node], root: Node) -> list[Node]:
                a = _truth(lf(focus, root))
                if a is False:
                    return [(False, boolean)]
                b = _truth(rf(focus, root))
                if b is False:
                    return [(False, boolean)]
                return [(True, boolean)] if a and b else []
            return _Compiled(conjunction, (boolean,))
        if op == "or":
            def disjunction(focus: list[Node], root: Node) -> list[Node]:
                a = _truth(lf(focus, root))
                if a is True:
                    return [(True, boolean)]
                b = _truth(rf(focus, root))
                if b is True:
                    return [(True, boolean)]
                return [(False, boolean)] if a is False and b is False else []
            return _Compiled(disjunction, (boolean,))
        raise self.fail(f"operator {op!r} is not supported")

    def union(self, left: _Compiled, right: _Compiled) -> _Compiled:
        """``|``. Duplicates are not removed here: the index rows built from the result are."""
        if left.empty:
            return right
        if right.empty:
            return left
        lf, rf = left.fn, right.fn
        keys = (left.keys | right.keys
                if left.keys is not None and right.keys is not None else None)
        return _Compiled(lambda f, r: lf(f, r) + rf(f, r), _unique(left.types + right.types),
                         keys=keys)


def _single_member(source: Evaluator | None, key: str, child: TypeInfo) -> Evaluator:
    """``.name`` where the focus has one possible type and the element one JSON key: the
    common case, kept free of table lookups."""
    def member(focus: list[Node], root: Node) -> list[Node]:
        out: list[Node] = []
        for value, _ in (focus if source is None else source(focus, root)):
            if type(value) is dict:
                x = value.get(key)
                if x is None:
                    continue
                if type(x) is list:
                    out.extend([(i, child) for i in x if i is not None])
                else:
                    out.append((x, child))
        return out
    return member


def _choice_member(source: Evaluator | None,
                   entries: tuple[tuple[str, TypeInfo], ...]) -> Evaluator:
    def member(focus: list[Node], root: Node) -> list[Node]:
        out: list[Node] = []
        for value, _ in (focus if source is None else source(focus, root)):
            if type(value) is dict:
                for key, child in entries:
                    x = value.get(key)
                    if x is None:
                        continue
                    if type(x) is list:
                        out.extend([(i, child) for i in x if i is not None])
                    else:
                        out.append((x, child))
        return out
    return member


def _typed_member(source: Evaluator | None,
                  table: dict[TypeInfo, tuple[tuple[str, TypeInfo], ...]]) -> Evaluator:
    def member(focus: list[Node], root: Node) -> list[Node]:
        out: list[Node] = []
        for value, info in (focus if source is None else source(focus, root)):
            if type(value) is dict:
                for key, child in table.get(info, ()):
                    x = value.get(key)
                    if x is None:
                        continue
                    if type(x) is list:
                        out.extend([(i, child) for i in x if i is not None])
                    else:
                        out.append((x, child))
        return out
    return member


# ------------------------------------------------------------------------------------ public API


class FhirPath:
    """A compiled expression. ``types`` lists the FHIR types its result can have."""

    __slots__ = ("expression", "resource_type", "types", "keys", "_fn", "_root")

    def __init__(self, expression: str, resource_type: str, fn: Evaluator,
                 types: tuple[TypeInfo, ...], root: TypeInfo,
                 keys: frozenset[str] | None = None):
        self.expression = expression
        self.resource_type = resource_type
        self.types = types
        #: The resource's JSON keys the result comes from (None: unknown): a resource with
        #: none of them gives nothing, without evaluating.
        self.keys = keys
        self._fn = fn
        self._root = root

    @property
    def empty(self) -> bool:
        """Statically empty: the expression has no part for this resource type."""
        return self._fn is _nothing

    def __call__(self, resource: dict[str, Any]) -> list[Node]:
        root = (resource, self._root)
        return self._fn([root], root)

    def evaluate_on(self, focus: list[Node], resource: dict[str, Any]) -> list[Node]:
        """Evaluate relative to ``focus`` nodes (a composite's components on each element)."""
        return self._fn(focus, (resource, self._root))

    def __repr__(self) -> str:
        return f"FhirPath({self.expression!r} on {self.resource_type})"


def compile_path(expression: str, resource_type: str,
                 focus: Sequence[TypeInfo] | None = None) -> FhirPath:
    """Compile ``expression`` for resources of ``resource_type``. The focus is the resource
    itself, or the given node types (a composite component is evaluated on the composite's
    elements). Parts of the expression about other resource types compile to nothing.

    Raises :class:`FhirPathError` for anything outside the supported subset.
    """
    model = type_model()
    root = model.named(resource_type)
    compiler = _Compiler(model, expression, root)
    compiler.top = tuple(focus) if focus is not None else (root,)
    compiled = compiler.compile(parse(expression), compiler.top)
    # Keys are the resource's only where the focus is the resource (also a composite's
    # component on a composite of the whole resource).
    on_resource = focus is None or compiler.top == (root,)
    keys = compiled.keys if on_resource and not compiled.at_root else None
    return FhirPath(expression, resource_type, compiled.fn, compiled.types, root, keys)

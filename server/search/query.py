"""Parsing search parameters into a :class:`~server.search.plan.SearchQuery` (search.html).

Unknown parameters are ignored and reported (or refused with ``Prefer: handling=strict``);
malformed values and unsupported modifiers are refused with 400 naming the parameter.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qsl

from server.fhir.errors import FhirError, invalid
from server.fhir.structures import structures
from server.fhir.summary import element_items, element_path, selectable
from server.fhir.values import parse_count, valid_id
from server.search import index
from server.search.plan import (
    AnyOf,
    Chain,
    Clause,
    CompositeValue,
    Has,
    Include,
    Match,
    Missing,
    Not,
    RangeValue,
    ReferenceValue,
    SearchQuery,
    SortKey,
    StringValue,
    TokenValue,
    UriValue,
    Value,
)
from server.search.registry import registry

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
#: Parameters that shape the result rather than select resources.
RESULT_PARAMS = {"_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total",
                 "_contained", "_containedType", "_format", "_pretty", "_cursor", "_type"}
#: Result parameters that take one value: given twice, the values must agree.
_SINGLE = {"_count", "_summary", "_total"}
#: The modifiers a result parameter takes: :iterate (and R3's :recurse) on includes; on _sort,
#: :asc and :desc, the syntax of DSTU2 and STU3, which their clients still send.
_RESULT_MODIFIERS = {"_include": {"iterate", "recurse"}, "_revinclude": {"iterate", "recurse"},
                     "_sort": {"asc", "desc"}}
#: Refused whatever the handling: a server SHALL refuse a ``_query`` it does not know
#: (search.html#query), and contained resources are not searched.
REFUSED = {"_query", "_containedType"}
#: Not supported, and why: ignored and reported as unknown parameters are (search.html#errors:
#: "servers SHOULD ignore unknown or unsupported parameters"), refused under strict handling.
NOT_SUPPORTED = {"_text": "full-text search is not implemented",
                 "_content": "full-text search is not implemented",
                 "_filter": "_filter expressions are not implemented"}
_MODIFIERS = {
    "string": {"exact", "contains", "missing"},
    "token": {"text", "not", "of-type", "missing"},
    "reference": {"identifier", "missing"},
    "date": {"missing"},
    "number": {"missing"},
    "quantity": {"missing"},
    "uri": {"above", "below", "missing"},
    "composite": {"missing"},
    "special": set(),
}
#: Links in a chain or nested ``_has`` (SQLite's parser cannot take the SQL of four).
_MAX_CHAIN = 3
#: The forms of search.html#date: a date, or a date and time with or without seconds ("Time
#: can consist of hours and minutes with no seconds, unlike the XML Schema dateTime type"), a
#: fraction only after seconds; the index reads the value itself.
_DATE = re.compile(
    r"^\d{4}(-\d{2}(-\d{2}(T\d{2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def split_unescaped(text: str, sep: str) -> list[str]:
    """``text`` split at each ``sep`` not escaped by a backslash (escapes kept for unescape)."""
    parts, cur, i = [], [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            cur.append(text[i:i + 2])
            i += 2
            continue
        if c == sep:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    parts.append("".join(cur))
    return parts


def split_values(text: str) -> list[str]:
    """Comma-separated OR values, honouring the ``\\,`` escape."""
    return split_unescaped(text, ",")


_ESCAPES = re.compile(r"\\[\\,|$]")


def unescape(text: str) -> str:
    return _ESCAPES.sub(lambda m: m.group()[1], text)


class Parser:
    def __init__(self, base: str | None = None, strict: bool = False):
        self.reg = registry()
        self.base = base.rstrip("/") + "/" if base else None
        self.strict = strict
        #: The parameters ignored (as written), each with why.
        self.ignored: dict[str, str] = {}
        #: Parameters used, each with a warning about how.
        self.warnings: dict[str, str] = {}
        #: The parameter as the client wrote it, named in errors about its chained parts.
        self.top: str | None = None
        #: One of several searched types: a ``_has`` that cannot point at it skips it.
        self.skip_foreign = False

    # -- values ---------------------------------------------------------------------------------

    def _bad(self, name: str, value: str, why: str) -> FhirError:
        return invalid(f"search parameter {name}: {value!r} {why}", expression=self.top or name)

    def _prefixed(self, name: str, raw: str) -> tuple[str, str]:
        if len(raw) > 2 and raw[:2] in PREFIXES and (raw[2].isdigit() or raw[2] == "-"):
            return raw[:2], raw[2:]
        return "eq", raw

    def token(self, name: str, raw: str) -> TokenValue:
        parts = split_unescaped(raw, "|")
        if len(parts) == 1:
            return TokenValue(None, unescape(parts[0]) or None)
        if len(parts) != 2:
            raise self._bad(name, raw, "is not a token ([system]|[code])")
        system, code = unescape(parts[0]), unescape(parts[1])
        if not system and not code:
            raise self._bad(name, raw, "has neither system nor code")
        return TokenValue(system, code or None)

    def date(self, name: str, raw: str) -> RangeValue:
        prefix, text = self._prefixed(name, raw)
        try:
            if not _DATE.match(text):
                raise ValueError(text)
            lo, hi = index.date_range(text)
        except ValueError:
            raise self._bad(name, raw, "is not a valid date, dateTime or instant") from None
        return RangeValue(prefix, lo, hi)

    def number(self, name: str, raw: str) -> RangeValue:
        prefix, text = self._prefixed(name, raw)
        try:
            lo, hi = index.number_range(text)
            exact = index.number_value(text)
        except ValueError:
            raise self._bad(name, raw, "is not a number") from None
        return RangeValue(prefix, lo, hi, exact=exact)

    def quantity(self, name: str, raw: str) -> RangeValue:
        parts = split_unescaped(raw, "|")
        if len(parts) not in (1, 3):
            raise self._bad(name, raw, "is not a quantity ([prefix]number|system|code)")
        number = self.number(name, parts[0])
        system = unescape(parts[1]) or None if len(parts) == 3 else None
        code = unescape(parts[2]) or None if len(parts) == 3 else None
        return RangeValue(number.prefix, number.lo, number.hi, system, code, number.exact)

    def reference(self, name: str, raw: str, target: str | None,
                  targets: Iterable[str]) -> ReferenceValue:
        value = unescape(raw)
        if not value:
            raise self._bad(name, raw, "is empty")
        if self.base and value.startswith(self.base):
            value = value[len(self.base):]
        if "://" in value or value.startswith("urn:"):
            url, _, version = value.partition("|")
            return ReferenceValue(None, None, url, version or None)
        parts = value.split("/")
        if not all(valid_id(p) for p in parts[1::2] + parts[:1] * (len(parts) == 1)):
            raise self._bad(name, raw, "has an id or version that is not one (1 to 64 letters, "
                            "digits, '-' and '.')")
        if len(parts) == 1:
            only = list(targets)
            return ReferenceValue(target or (only[0] if len(only) == 1 else None), parts[0])
        if len(parts) in (2, 4) and (len(parts) == 2 or parts[2] == "_history"):
            type_, id_ = parts[0], parts[1]
            if not structures().is_resource_type(type_):
                raise self._bad(name, raw, f"names an unknown resource type {type_!r}")
            if target and type_ != target:
                raise self._bad(name, raw, f"is not a {target} reference")
            return ReferenceValue(type_, id_, None, parts[3] if len(parts) == 4 else None)
        raise self._bad(name, raw, "is not a reference ([type]/[id], [id] or a URL)")

    def values(self, name: str, kind: str, raw: str, modifier: str | None,
               param: Any) -> tuple[Value, ...]:
        out: list[Value] = []
        for item in split_values(raw):
            if item == "":
                raise self._bad(name, raw, "has an empty value")
            if kind == "composite":
                out.append(self.composite(name, item, param))
            else:
                out.append(self.value(name, kind, item, modifier, param))
        return tuple(out)

    def value(self, name: str, kind: str, item: str, modifier: str | None,
              param: Any) -> Value:
        if kind == "string" or modifier == "text":
            text = unescape(item)
            return StringValue(index.normalize(text),
                               index.exact_form(text) if modifier == "exact" else None)
        if kind == "token":
            return self.token(name, item)
        if kind in ("date", "lastUpdated"):
            return self.date(name, item)
        if kind == "number":
            return self.number(name, item)
        if kind == "quantity":
            return self.quantity(name, item)
        if kind == "reference":
            return self.reference(name, item, None, getattr(param, "targets", ()) or ())
        if kind == "uri":
            uri = unescape(item)
            if modifier in ("above", "below") and "://" not in uri:
                # search.html#uri: "the :above and :below modifiers only apply to URLs, and
                # not URNs such as OIDs"
                raise FhirError(400, "not-supported", f"search parameter {self.top or name}: "
                                f":{modifier} applies to URLs, not to {uri!r}",
                                expression=self.top or name)
            return UriValue(uri)
        if kind == "id":
            if not valid_id(text := unescape(item)):
                raise self._bad(name, item, "is not a resource id (1 to 64 letters, digits, "
                                "'-' and '.')")
            return TokenValue(None, text)
        raise FhirError(400, "not-supported",
                        f"search parameter {name}: {kind} parameters are not supported")

    def composite(self, name: str, item: str, param: Any) -> CompositeValue:
        """``part$part…`` (search.html#composite): each part in its component's syntax."""
        kinds = tuple(c.param.type for c in param.components)
        parts = split_unescaped(item, "$")
        if len(parts) != len(kinds):
            codes = "$".join(f"[{c.param.code}]" for c in param.components)
            raise self._bad(name, item, f"is not a composite value {codes}")
        values = []
        for kind, part in zip(kinds, parts, strict=True):
            if part == "":
                raise self._bad(name, item, "has an empty part")
            value = self.value(name, kind, part, None, None)
            assert isinstance(value, TokenValue | StringValue | RangeValue)
            values.append(value)
        return CompositeValue(kinds, tuple(values))

    # -- parameters -----------------------------------------------------------------------------

    def clause(self, type_: str, name: str, raw: str, depth: int = 0) -> Clause | None:
        """The clause for one ``name=value`` pair on ``type_``, or None if it is ignored."""
        if depth > _MAX_CHAIN:
            raise invalid(f"search parameter {self.top or name}: chains are limited to "
                          f"{_MAX_CHAIN} links", expression=self.top or name)
        if name.startswith("_has:"):
            return self._has(type_, name, raw, depth)
        if name.split(":")[0] == "_list":
            return self._list(type_, name, raw, depth)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        param = self.reg.get(type_, code)
        if param is None:
            if (why := self.reg.why_unsupported(type_, code)) is not None:
                self.not_supported(self.top or name, why)
            else:
                self._unknown(name, f"{type_} has no search parameter {code!r}")
            return None
        kind = param.column or param.type
        if dot:
            return self._chain(type_, name, code, modifier or None, param, rest, raw, depth)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise self._bad(name, raw, "must be true or false")
            return Missing(type_, code, kind, raw == "true")
        target = None
        if modifier and param.type == "reference" and structures().is_resource_type(modifier):
            if param.targets and modifier not in param.targets:
                raise invalid(f"search parameter {name}: {modifier!r} is not a target type of "
                              f"{code}", expression=self.top or name)
            target = modifier
            modifier = ""
        if modifier and modifier not in _MODIFIERS.get(param.type, set()):
            raise FhirError(400, "not-supported",
                            f"search parameter {name}: modifier :{modifier} is not supported "
                            f"for {param.type} parameters", expression=self.top or name)
        if modifier == "text":
            # search.html#token: ":text" is processed as a string search (starts with).
            return Match(type_, f"{code}:text", "string", self.values(name, "string", raw, "text",
                                                                        param))
        if modifier == "of-type":
            if f"{code}:of-type" not in param.index_codes():
                raise FhirError(400, "not-supported", f"search parameter {name}: :of-type "
                                "applies to identifiers (their type and value), and "
                                f"{code} is not one", expression=self.top or name)
            return Match(type_, f"{code}:of-type", "token", self._of_type(name, raw))
        if modifier == "identifier":
            return Match(type_, f"{code}:identifier", "token",
                         self.values(name, "token", raw, None, param))
        if target is not None:
            refs = tuple(self.reference(name, v, target, ()) for v in split_values(raw))
            return Match(type_, code, kind, refs)
        values = self.values(name, kind, raw, modifier or None, param)
        if kind == "token" and index.folds_case(type_, code):  # the folded form too
            values += tuple(TokenValue(v.system, v.code.casefold()) for v in values
                            if isinstance(v, TokenValue) and v.code and v.code.casefold() != v.code)
        match = Match(type_, code, kind, values, modifier if modifier in
                      ("exact", "contains", "above", "below") else None)
        return Not(match) if modifier == "not" else match

    def _of_type(self, name: str, raw: str) -> tuple[Value, ...]:
        out: list[Value] = []
        for item in split_values(raw):
            parts = split_unescaped(item, "|")
            if len(parts) != 3 or not all(parts):
                raise self._bad(name, item, "must be [type system]|[type code]|[value]")
            out.append(TokenValue(unescape(parts[0]), f"{unescape(parts[1])}|{unescape(parts[2])}"))
        return tuple(out)

    def _chain(self, type_: str, name: str, code: str, target: str | None, param: Any,
               rest: str, raw: str, depth: int) -> Clause | None:
        if param.type != "reference":
            raise invalid(f"search parameter {name}: {code} is not a reference and cannot be "
                          "chained", expression=self.top or name)
        _not_canonical(type_, code, self.top or name)
        targets = [target] if target else list(param.targets or [])
        if target and param.targets and target not in param.targets:
            raise invalid(f"search parameter {name}: {target!r} is not a target of {code}",
                          expression=self.top or name)
        inner_code = rest.split(".")[0].split(":")[0]
        options: list[Clause] = []
        for t in targets:
            if not structures().is_resource_type(t) or (
                    inner_code and not inner_code.startswith("_has")
                    and self.reg.get(t, inner_code) is None):
                continue
            inner = self.clause(t, rest, raw, depth + 1)
            if inner is not None:
                options.append(Chain(type_, code, t, inner))
        if not options:
            self._unknown(name, f"no target of {type_}.{code} has a search parameter "
                                f"{inner_code!r}")
            return None
        return options[0] if len(options) == 1 else AnyOf(tuple(options))

    def _has(self, type_: str, name: str, raw: str, depth: int) -> Clause | None:
        parts = name.split(":", 3)
        if len(parts) < 4:
            raise invalid(f"search parameter {name}: expected _has:[type]:[reference]:[parameter]",
                          expression=self.top or name)
        _, source, ref_code, rest = parts
        if not structures().is_resource_type(source):
            raise invalid(f"search parameter {name}: unknown resource type {source!r}",
                          expression=self.top or name)
        ref = self.reg.get(source, ref_code)
        if ref is None or ref.type != "reference":
            raise invalid(f"search parameter {name}: {source} has no reference parameter "
                          f"{ref_code!r}", expression=self.top or name)
        _not_canonical(source, ref_code, self.top or name)
        if ref.targets and type_ not in ref.targets:
            if self.skip_foreign:
                self._unknown(name, f"{source}.{ref_code} does not point at {type_}")
                return None
            raise invalid(f"search parameter {name}: {source}.{ref_code} does not point at "
                          f"{type_}", expression=self.top or name)
        inner = self.clause(source, rest, raw, depth + 1)
        if inner is None:
            return None
        return Has(type_, source, ref_code, inner)

    def _list(self, type_: str, name: str, raw: str, depth: int) -> Clause | None:
        """``_list=[id]`` (search.html#list): the resources that List holds, which is
        ``_has:List:item:_id=[id]``. Functional lists (``$current-problems``) are not kept."""
        if name != "_list":
            raise FhirError(400, "not-supported", f"search parameter {name}: _list takes no "
                            "modifiers", expression=self.top or name)
        for value in split_values(raw):
            if value.startswith("$"):
                raise FhirError(400, "not-supported", f"_list={value}: functional lists are "
                                "not supported; name a List by its id", expression=self.top)
            if not valid_id(unescape(value)):
                raise self._bad(name, value, "is not the id of a List (1 to 64 letters, digits, "
                                "'-' and '.')")
        return self._has(type_, "_has:List:item:_id", raw, depth)

    def _unknown(self, name: str, why: str) -> None:
        name = self.top or name
        if self.strict:
            raise invalid(f"unknown search parameter {name!r}: {why}", expression=name)
        self.ignored.setdefault(name, why)

    def common(self, types: tuple[str, ...], code: str, name: str, otherwise: str) -> None:
        """search.html#searchall: with _type, "all other search parameters SHALL be common to
        all provided types". One that some of them lack is refused under strict handling, and
        used with a warning otherwise, saying what becomes of the types that lack it."""
        lacking = [t for t in types if self.reg.get(t, code) is None]
        if lacking:
            self.warn(name, f"{', '.join(lacking)} {'has' if len(lacking) == 1 else 'have'} no "
                            f"parameter {code!r}: {otherwise}",
                      rule="with _type, every parameter must be common to the types")

    def warn(self, name: str, why: str, rule: str | None = None) -> None:
        """A parameter used, or left unused, with something the client should know: refused
        under strict handling (saying the ``rule`` it breaks)."""
        if self.strict:
            raise invalid(f"{name}: {why}" + (f"; {rule}" if rule else ""), expression=name)
        known = self.warnings.get(name)
        if known is None or why not in known:
            self.warnings[name] = why if known is None else f"{known}; {why}"

    def elements(self, types: tuple[str, ...], name: str, raw: str) -> None:
        """search.html#elements takes "base element names": one no searched type has is
        reported, and a nested path keeps its top-level element whole (summary.element_name)."""
        for item in element_items(raw):
            path = element_path(item)
            top = path.partition(".")[0]
            if not any(selectable(t, top) for t in types):
                self.warn(name, f"{item!r} is not an element of {' or '.join(types)}; "
                                "nothing is kept for it")
            elif "." in path:
                self.warn(name, f"{item!r} is a nested path; only top-level elements are "
                                f"selected, and {top} is returned whole")

    def applies(self, types: tuple[str, ...], name: str, inc: Include, reverse: bool) -> bool:
        """Whether an include can bring anything to a search of ``types``: an ``_include``
        from a searched type, a ``_revinclude`` of a parameter that can point at one (or any,
        once iterated). One that cannot is reported (refused under strict handling)."""
        if inc.iterate or inc.source_type == "*":
            return True
        if not reverse:
            if inc.source_type in types:
                return True
            why = f"the search is of {' and '.join(types)}, not {inc.source_type}"
        elif inc.target_type is not None:
            if inc.target_type in types:
                return True
            why = f"the search is of {' and '.join(types)}, not {inc.target_type}"
        else:
            param = self.reg.get(inc.source_type, inc.code)
            targets = set(param.targets) if param is not None and param.targets else None
            if targets is None or targets & set(types):
                return True
            why = (f"{inc.source_type}.{inc.code} points at {', '.join(sorted(targets))}, "
                   f"not at {' or '.join(types)}")
        label = ":".join(p for p in (inc.source_type, inc.code, inc.target_type) if p)
        self.warn(name, f"{label} cannot apply: {why}")
        return False

    def not_supported(self, name: str, why: str) -> None:
        """A parameter of the specification this server does not support."""
        bare = name.split(":")[0]
        if self.strict:
            raise FhirError(400, "not-supported", f"{bare} is not supported: {why}",
                            expression=name)
        self.ignored.setdefault(name, f"{bare} is not supported ({why})")

    # -- result parameters ----------------------------------------------------------------------

    def sort(self, types: tuple[str, ...], raw: str, flip: bool = False) -> list[SortKey]:
        """``flip``: ``_sort:desc``, the syntax of DSTU2 and STU3, still sent by their clients."""
        keys = []
        for item in raw.split(","):
            item = item.strip()
            if not item:
                continue
            desc = item.startswith("-") != flip
            code = item.lstrip("-")
            kinds = {(p.column or p.type) for t in types
                     if (p := self.reg.get(t, code)) is not None}
            if not kinds:
                raise invalid(f"_sort: unknown search parameter {code!r}", expression="_sort")
            if len(kinds) > 1:
                raise invalid(f"_sort: {code!r} is a {' and a '.join(sorted(kinds))} parameter "
                              "on the searched types; sort them one at a time", expression="_sort")
            kind = kinds.pop()
            if kind in ("composite", "special"):
                raise invalid(f"_sort: cannot sort by {code!r}", expression="_sort")
            self.common(types, code, "_sort", "their resources sort as having no value")
            keys.append(SortKey(code, kind, desc))
        return keys

    def include(self, name: str, raw: str, reverse: bool) -> Include:
        parts = raw.split(":")
        iterate = name.endswith(":iterate") or name.endswith(":recurse")
        if raw == "*":
            if reverse:  # every reference of every type to the matches: refused, not guessed
                raise FhirError(400, "not-supported", f"{name}=* is not supported; name the "
                                "source type and parameter ([type]:[parameter])", expression=name)
            return Include("*", "*", None, iterate)
        if len(parts) not in (2, 3):
            raise invalid(f"{name}: expected [type]:[parameter][:target type], got {raw!r}",
                          expression=self.top or name)
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if not structures().is_resource_type(source):
            raise invalid(f"{name}: unknown resource type {source!r}", expression=self.top or name)
        targets: Iterable[str] = ()
        if code != "*":
            param = self.reg.get(source, code)
            if param is None or param.type != "reference":
                raise invalid(f"{name}: {source} has no reference parameter {code!r}",
                              expression=self.top or name)
            _not_canonical(source, code, self.top or name)
            targets = param.targets or ()
        if target is not None and not structures().is_resource_type(target):
            raise invalid(f"{name}: unknown resource type {target!r}", expression=self.top or name)
        if target is not None and targets and target not in targets:
            raise invalid(f"{name}: {target!r} is not a target type of {source}.{code}",
                          expression=self.top or name)
        return Include(source, code, target, iterate)


def _not_canonical(type_: str, code: str, name: str) -> None:
    if index.canonical_only(type_, code):
        raise FhirError(400, "not-supported", f"{name}: {type_}.{code} holds canonical "
                        "references (the URL of a definition): search it by that URL "
                        f"({code}=[url]); chains and includes do not follow it",
                        expression=name)


def parse(types: tuple[str, ...], params: list[tuple[str, str]], *, default_count: int = 20,
          max_count: int = 1000, base: str | None = None, strict: bool = False) -> SearchQuery:
    """The query for a search over ``types`` (one type, or several with ``_type``)."""

    parser = Parser(base, strict)
    q = SearchQuery(types)
    summarised = any(n == "_summary" and v not in ("", "false") for n, v in params)
    given: dict[str, str] = {}
    for name, raw in params:
        # "Empty parameters are not an error - they are just ignored by the server"
        # (search.html#errors): silently, as if not given.
        if raw == "":
            continue
        parser.top = None
        bare = name.split(":")[0]
        if bare in REFUSED:
            raise FhirError(400, "not-supported", f"{bare} is not supported", expression=name)
        if bare in NOT_SUPPORTED:
            parser.not_supported(name, NOT_SUPPORTED[bare])
            continue
        if bare in RESULT_PARAMS:
            modifier = name[len(bare) + 1:]
            if modifier and modifier not in _RESULT_MODIFIERS.get(bare, ()):
                # search.html#modifiers: a server "SHALL reject" a modifier it does not support
                raise FhirError(400, "not-supported", f"{name}: modifier :{modifier} is not "
                                f"supported on {bare}", expression=name)
            if bare in _SINGLE and given.setdefault(bare, raw) != raw and not (
                    bare == "_count" and raw.isdigit() and given[bare].isdigit()
                    and int(raw) == int(given[bare])):
                raise invalid(f"{bare} is given twice, as {given[bare]!r} and {raw!r}; give "
                              "it once", expression=bare)
            if bare == "_sort":  # repeated "for inner sort orders"
                q.sort += parser.sort(types, raw, flip=modifier == "desc")
            elif bare == "_count":
                q.count = parse_count(raw, default_count, max_count)
            elif bare == "_cursor":
                q.cursor = raw
            elif bare == "_total":
                if raw not in ("none", "estimate", "accurate"):
                    raise invalid("_total must be none, estimate or accurate", expression="_total")
                q.total = raw
            elif bare in ("_include", "_revinclude"):
                reverse = bare == "_revinclude"
                inc = parser.include(name, raw, reverse)
                if parser.applies(types, name, inc, reverse):
                    (q.revincludes if reverse else q.includes).append(inc)
                else:
                    q.unused.add((name, raw))
            elif bare == "_elements":
                if summarised:  # _summary decides what comes back (summary.transform_for)
                    if strict:
                        raise invalid("_elements cannot be used with _summary: give one",
                                      expression="_elements")
                    parser.ignored[name] = "_summary is given, and decides what comes back"
                else:
                    parser.elements(types, name, raw)
            elif bare == "_summary":
                q.summary_count = raw == "count"
            elif bare == "_contained" and raw != "false":
                raise FhirError(400, "not-supported", "searching contained resources is not "
                                "supported", expression="_contained")
            continue
        parser.top = name
        if "\\" in _ESCAPES.sub("", raw):
            # search.html#escaping: "The parameter value xx\xx is illegal"
            raise invalid(f"search parameter {name}: {raw!r} has a backslash that escapes "
                          "nothing: a backslash is written \\\\, and it escapes only , | $ and "
                          "itself", expression=name)
        if len(types) == 1 and (versioned := _canonical_version(types[0], name, raw)):
            raw, version = versioned
            if (on_version := parser.clause(types[0], "version", version)) is not None:
                q.clauses.append(on_version)
        if len(types) == 1:
            clause = parser.clause(types[0], name, raw)
        else:
            options = [c for t in types if (c := _quiet(parser, t, name, raw)) is not None]
            if not options:
                parser._unknown(name, "no searched type has this parameter")
                continue
            code = name.partition(".")[0].partition(":")[0]
            if code not in ("_has", "_list"):
                parser.common(types, code, name, "their resources cannot match")
            clause = options[0] if len(options) == 1 else AnyOf(tuple(options))
        if clause is not None:
            q.clauses.append(clause)
    if "_count" not in {n for n, _ in params}:
        q.count = default_count
    q.ignored = parser.ignored
    q.warnings = parser.warnings
    q.base = parser.base
    return q


def _canonical_version(type_: str, name: str, raw: str) -> tuple[str, str] | None:
    """``url=[canonical]|[version]`` on a type with a version: the canonical and the version,
    searched as url and version (search.html#uri: servers "SHOULD support automatically
    detecting a |[version] portion as part of the search parameter"). One value only: a list
    of versioned canonicals is searched as written."""
    if name != "url" or "|" not in raw or "," in raw:
        return None
    params = registry().params_for(type_)
    if "version" not in params or "url" not in params or params["url"].type != "uri":
        return None
    url, _, version = raw.rpartition("|")
    return (url, version) if url and version else None


def _quiet(parser: Parser, type_: str, name: str, raw: str) -> Clause | None:
    """A clause for one of several searched types; types without the parameter are skipped."""
    sub = Parser(parser.base.rstrip("/") if parser.base else None, False)
    sub.skip_foreign = True
    clause = sub.clause(type_, name, raw)
    return None if sub.ignored else clause


def parse_conditional(type_: str, criteria: str | list[tuple[str, str]], what: str,
                      base: str | None = None) -> SearchQuery:
    """The search of a conditional create/update/delete: strict, and it must select something.
    Without this server's ``base``, absolute references to it are not recognised as local."""
    params = parse_qsl(criteria.lstrip("?"), keep_blank_values=True) \
        if isinstance(criteria, str) else list(criteria)
    params = [(k, v) for k, v in params if k not in ("_format", "_pretty")]
    if not params:
        raise invalid(f"{what} needs search criteria")
    for name, value in params:
        # A search leaves an empty parameter out; criteria that a write acts on are refused
        # instead, as leaving one out would widen what the write may change.
        if value == "":
            raise invalid(f"{what}: search parameter {name} has an empty value",
                          expression=name)
    query = parse((type_,), params, base=base, strict=True)
    if not query.clauses:
        raise invalid(f"{what} needs search criteria that select resources")
    return query

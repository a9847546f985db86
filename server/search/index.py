"""Search index rows extracted from a resource at write time.

:func:`extract` evaluates the compiled expressions of every search parameter of the resource's
type (:mod:`server.search.registry`) and turns each value into typed rows the store writes as
they are (``None`` where a value is absent)::

    "string":    (code, normalised, exact)
    "token":     (code, system, value)
    "reference": (code, target_type, target_id, version, url)
    "date":      (code, lo, hi)          µs since the epoch, UTC, inclusive
    "number":    (code, lo, hi)          floats
    "quantity":  (code, system, code, lo, hi)
    "uri":       (code, uri)
    "composite": (code, (component row without code, …))

How a value of each data type becomes rows follows search.html (string, token, reference, date,
number, quantity, uri sections). Ranges stand for the precision the value was written with, so a
search compares ranges and never re-reads the resource.
"""

from __future__ import annotations

import functools
import itertools
import math
import sys
import unicodedata
from collections.abc import Callable, Iterable
from datetime import date
from decimal import Decimal, InvalidOperation
from typing import Any

from server.fhir.structures import structures
from server.search.fhirpath import FhirPath, TypeInfo
from server.search.plan import NEG_INF, POS_INF
from server.search.registry import SearchParam, indexed_as, registry

KINDS = ("string", "token", "reference", "date", "number", "quantity", "uri", "composite")
ISO_4217 = "urn:iso:std:iso:4217"
Row = tuple[Any, ...]
Tails = Callable[[Any, TypeInfo], list[Row]]
Out = dict[str, dict[Row, None]]

_DAY_US = 86_400_000_000
_EPOCH = date(1970, 1, 1).toordinal()
#: The open side of a number Range or of a comparator (``>5``): the largest floats, so that no
#: number is beyond them and arithmetic on them (hi - lo, a bound less a span) stays exact.
_NEG_F = -sys.float_info.max
_POS_F = sys.float_info.max


# ---------------------------------------------------------------------------------------- strings

#: Arabic-script letters written differently in Arabic and Persian text but read as the same
#: (yeh, kaf, teh marbuta, alef maksura), digits of both scripts, and marks of layout only
#: (zero-width non-joiner, tatweel), so that "علي" finds "علی" and "۱۲" finds "12".
_ARABIC_SCRIPT = str.maketrans({
    "\u064a": "\u06cc", "\u0649": "\u06cc", "\u0643": "\u06a9", "\u0629": "\u0647",
    "\u200c": None, "\u200d": None, "\u0640": None,
    **{chr(0x0660 + d): str(d) for d in range(10)}, **{chr(0x06F0 + d): str(d) for d in range(10)},
})


def _is_accent(mark: str) -> bool:
    """Whether a combining mark is an accent that string search ignores: the diacritics of
    Latin, Greek and Cyrillic letters (the combining diacritical marks blocks), Hebrew points
    and Arabic-script vowel marks. Other scripts' marks write letters of their own (a
    Devanagari virama, a Thai tone mark, a kana voicing mark): kept."""
    o = ord(mark)
    return (0x0300 <= o <= 0x036F or 0x1AB0 <= o <= 0x1AFF or 0x1DC0 <= o <= 0x1DFF
            or 0x20D0 <= o <= 0x20FF or 0xFE20 <= o <= 0xFE2F or 0x0591 <= o <= 0x05C7
            or 0x0610 <= o <= 0x061A or 0x064B <= o <= 0x065F or o == 0x0670
            or 0x06D6 <= o <= 0x06ED)


def normalize(text: str) -> str:
    """The form string search compares (search.html#string: case- and accent-insensitive):
    casefolded, Unicode NFKD with the accents removed (:func:`_is_accent`; also Arabic-script
    vowel marks), composed again (NFC: a Hangul syllable is whole again, so that 이 is no prefix
    of 임), Arabic and Persian letter variants folded together (presentation forms included),
    whitespace runs collapsed to one space and trimmed. Queries must be normalised the same."""
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    bare = "".join(c for c in decomposed if not (unicodedata.combining(c) and _is_accent(c)))
    return " ".join(unicodedata.normalize("NFC", bare).translate(_ARABIC_SCRIPT).split())


def exact_form(text: str) -> str:
    """The form :exact compares: the text as written, in one Unicode encoding (NFC), so that
    é written as one character or as e and a combining accent is the same text."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def _string_rows(values: Iterable[Any]) -> list[Row]:
    return [(normalize(v), exact_form(v)) for v in values if type(v) is str and v]


def _strings(value: Any, keys: tuple[str, ...]) -> list[Any]:
    out: list[Any] = []
    if type(value) is dict:
        for key in keys:
            x = value.get(key)
            if type(x) is list:
                out.extend(x)
            elif x is not None:
                out.append(x)
    return out


_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")

STRING: dict[str, Tails] = {
    "string": lambda v, t: _string_rows((v,)),
    "uri": lambda v, t: _string_rows((v,)),
    "HumanName": lambda v, t: _string_rows(_strings(v, _NAME_PARTS)),
    "Address": lambda v, t: _string_rows(_strings(v, _ADDRESS_PARTS)),
}


# ----------------------------------------------------------------------------------------- tokens

def _coding(v: Any) -> list[Row]:
    if type(v) is dict:
        code = v.get("code")
        if type(code) is str and code:
            return [(v.get("system"), code)]
    return []


def _codeable_concept(v: Any) -> list[Row]:
    if type(v) is not dict:
        return []
    return [row for c in v.get("coding") or () for row in _coding(c)]


def _identifier(v: Any) -> list[Row]:
    if type(v) is dict:
        value = v.get("value")
        if type(value) is str and value:
            return [(v.get("system"), value)]
    return []


def _contact_point(v: Any) -> list[Row]:
    # search.html#token: ContactPoint matches on its value (a string: case aside, see
    # FOLDED); the system column is unused.
    if type(v) is dict:
        value = v.get("value")
        if type(value) is str and value:
            return [(None, value.casefold())]
    return []


#: The types whose values a token matches whatever their case (search.html#token: "If the
#: underlying data type is string then the search is not case sensitive"): stored casefolded.
FOLDED = frozenset({"string", "markdown", "ContactPoint"})


def _primitive_token(v: Any, t: TypeInfo) -> list[Row]:
    if type(v) is not str or not v:
        return []
    # A required binding to a value set of one code system gives the code that system
    # (search.html#token): [system]|code and code find it, |code (no system) does not.
    return [(t.system, v.casefold() if t.name in FOLDED else v)]


@functools.cache
def _reached(resource_type: str, code: str) -> frozenset[str]:
    """The names of the types a parameter's expression reaches on a resource type."""
    param = registry().get(resource_type, code)
    path = param.extractor(resource_type) if param is not None else None
    return frozenset(t.name for t in path.types) if path is not None else frozenset()


def canonical_only(resource_type: str, code: str) -> bool:
    """Whether a reference parameter reaches canonical references only (URLs of definitions,
    not resource ids): they are searched by URL, and not followed by chains and includes."""
    return _reached(resource_type, code) == {"canonical"}


def folds_case(resource_type: str, code: str) -> bool:
    """Whether a token parameter reaches values matched whatever their case (FOLDED)."""
    return not FOLDED.isdisjoint(_reached(resource_type, code))


#: search.html#token: "The implicit system for boolean values is" this one.
SPECIAL_VALUES = "http://hl7.org/fhir/special-values"


def _boolean(v: Any, t: TypeInfo) -> list[Row]:
    return [(SPECIAL_VALUES, "true" if v else "false")] if type(v) is bool else []


TOKEN: dict[str, Tails] = {
    "Coding": lambda v, t: _coding(v),
    "CodeableConcept": lambda v, t: _codeable_concept(v),
    "Identifier": lambda v, t: _identifier(v),
    "ContactPoint": lambda v, t: _contact_point(v),
    "boolean": _boolean,
    "string": _primitive_token,
    "id": _primitive_token,
    "uri": _primitive_token,
}


def _token_extras(code: str, v: Any, t: TypeInfo, out: Out) -> None:
    """Rows for the token modifiers: ``:text`` (search.html#token: CodeableConcept.text,
    Coding.display, Identifier.type.text) and ``:of-type`` (Identifier.type + value)."""
    if type(v) is not dict:
        return
    name = t.name
    texts: list[Any] = []
    if name == "Coding":
        texts.append(v.get("display"))
    elif name == "CodeableConcept":
        texts.append(v.get("text"))
        texts.extend(c.get("display") for c in v.get("coding") or () if type(c) is dict)
    elif name == "Identifier":
        id_type = v.get("type")
        if type(id_type) is dict:
            texts.append(id_type.get("text"))
            value = v.get("value")
            for c in id_type.get("coding") or ():
                if type(c) is not dict:
                    continue
                texts.append(c.get("display"))
                if type(value) is str and value and type(c.get("code")) is str:
                    out["token"][(f"{code}:of-type", c.get("system"),
                                  f"{c['code']}|{value}")] = None
    if texts:
        strings = out["string"]
        text_code = f"{code}:text"
        for norm, exact in _string_rows(texts):
            strings[(text_code, norm, exact)] = None


# ------------------------------------------------------------------------------------- references

@functools.cache
def _is_resource_type(name: str) -> bool:
    return structures().is_resource_type(name)


def _is_id(text: str) -> bool:
    """An R4 ``id``: 1-64 of ``A-Z a-z 0-9 - .``."""
    return 0 < len(text) <= 64 and text.isascii() and \
        text.replace("-", "").replace(".", "").isalnum()


def _parse_reference(ref: str) -> Row | None:
    if not ref:
        return None
    if ref[0] == "#":  # a contained resource: there (not :missing), but nothing to follow
        return (None, None, None, ref)
    if ref.startswith("urn:"):
        return (None, None, None, ref)
    absolute = "://" in ref
    path = ref.split("?", 1)[0].split("#", 1)[0] if absolute else ref
    parts = path.split("/")
    version = None
    if len(parts) >= 4 and parts[-2] == "_history":
        version = parts[-1]
        parts = parts[:-2]
    if len(parts) >= 2 and _is_resource_type(parts[-2]) and _is_id(parts[-1]) and (
            absolute or len(parts) == 2):
        return (parts[-2], parts[-1], version, ref if absolute else None)
    return (None, None, None, ref)


# A record's resources point at the same few targets: their rows are cached (short references
# only, so the cache stays small whatever references are written).
_cached_reference = functools.lru_cache(maxsize=16384)(_parse_reference)


def reference_row(ref: str) -> Row | None:
    """``(target_type, target_id, version, url)`` of a Reference.reference string.

    ``Patient/1`` and ``Patient/1/_history/2`` are local; an absolute URL keeps the whole URL
    and, when its path ends in ``Type/id[/_history/v]``, that type, id and version as well;
    ``urn:uuid:``/``urn:oid:`` and ``#contained`` keep only the url (:func:`extract` gives the
    latter the contained resource's type, and that resource's rows for chains).
    """
    return _cached_reference(ref) if len(ref) <= 256 else _parse_reference(ref)


def canonical_row(value: str) -> Row | None:
    """``(None, None, version, url)`` of a canonical (``url|version``) or uri used as a
    reference: matched by url, not by local type and id."""
    if not value:
        return None
    url, bar, version = value.partition("|")
    return (None, None, version if bar and version else None, url)


def _reference(v: Any) -> list[Row]:
    if type(v) is dict:
        ref = v.get("reference")
        if type(ref) is str:
            row = reference_row(ref)
            if row is not None:
                return [row]
    return []


def _canonical(v: Any) -> list[Row]:
    row = canonical_row(v) if type(v) is str else None
    return [row] if row is not None else []


REFERENCE: dict[str, Tails] = {
    "Reference": lambda v, t: _reference(v),
    "uri": lambda v, t: _canonical(v),
}


def _reference_extras(code: str, v: Any, t: TypeInfo, out: Out) -> None:
    """``:identifier`` rows: a Reference's logical identifier (search.html#reference)."""
    if t.name == "Reference" and type(v) is dict:
        ident = v.get("identifier")
        if ident is not None:
            tokens = out["token"]
            for system, value in _identifier(ident):
                tokens[(f"{code}:identifier", system, value)] = None


# ------------------------------------------------------------------------------------------ dates

def _micros(year: int, month: int, day: int) -> int:
    return (date(year, month, day).toordinal() - _EPOCH) * _DAY_US


def _month_end(year: int, month: int) -> int:
    """µs of the first instant after the month."""
    return _micros(year + 1, 1, 1) if month == 12 else _micros(year, month + 1, 1)


def date_range(text: str) -> tuple[int, int]:
    """The inclusive µs range (UTC) a date, dateTime or instant covers at its precision:
    ``2020`` is the whole year, ``2020-02`` all of February, a time the second (or the stated
    fraction of it). A zone converts to UTC; a value without one is taken as UTC. Search values
    are read the same way. Raises ValueError if the text is not a date."""
    found = _date_range(text)
    if found is None:
        raise ValueError(f"not a date, dateTime or instant: {text!r}")
    return found


def _date_range(text: str) -> tuple[int, int] | None:
    try:
        n = len(text)
        year = int(text[0:4])
        if n == 4:
            if year == 9999:
                return _micros(year, 1, 1), _micros(year, 12, 31) + _DAY_US - 1
            return _micros(year, 1, 1), _micros(year + 1, 1, 1) - 1
        if text[4] != "-":
            return None
        month = int(text[5:7])
        if n == 7:
            if year == 9999 and month == 12:
                return _micros(year, 12, 1), _micros(year, 12, 31) + _DAY_US - 1
            return _micros(year, month, 1), _month_end(year, month) - 1
        day_start = _micros(year, month, int(text[8:10]))
        if n == 10:
            return day_start, day_start + _DAY_US - 1
        if text[7] != "-" or text[10] != "T":
            return None
        return _time_range(day_start, text[11:])
    except (ValueError, IndexError):
        return None


def _time_range(day_start: int, t: str) -> tuple[int, int] | None:
    hour, minute = int(t[0:2]), int(t[3:5])
    if t[2] != ":" or hour > 23 or minute > 59:
        return None
    pos, second, width = 5, 0, 60_000_000  # hh:mm without seconds: the minute
    if len(t) > 5 and t[5] == ":":
        second = int(t[6:8])
        if second > 60:
            return None
        pos, width = 8, 1_000_000
    fraction = 0
    if len(t) > pos and t[pos] == ".":
        end = pos + 1
        while end < len(t) and t[end].isdigit():
            end += 1
        digits = t[pos + 1:end]
        if not digits:
            return None
        fraction = int(digits[:6].ljust(6, "0"))
        width = 10 ** (6 - min(len(digits), 6))
        pos = end
    zone = t[pos:]
    offset = 0
    if zone and zone != "Z":
        if len(zone) != 6 or zone[0] not in "+-" or zone[3] != ":":
            return None
        zone_minutes = int(zone[1:3]) * 60 + int(zone[4:6])
        if int(zone[4:6]) > 59 or zone_minutes > 14 * 60:  # -14:00 … +14:00 (datatypes.html)
            return None
        offset = zone_minutes * 60_000_000
        if zone[0] == "-":
            offset = -offset
    lo = day_start + ((hour * 60 + minute) * 60 + second) * 1_000_000 + fraction - offset
    return lo, lo + width - 1


def _date(v: Any) -> list[Row]:
    r = _date_range(v) if type(v) is str else None
    return [r] if r is not None else []


def _period(v: Any) -> list[Row]:
    """A Period covers start..end; a missing end is ongoing (+∞), a missing start unknown
    (-∞); a Period with neither gives nothing to match."""
    if type(v) is not dict:
        return []
    start, end = v.get("start"), v.get("end")
    if start is None and end is None:
        return []
    lo_range = _date_range(start) if type(start) is str else None
    hi_range = _date_range(end) if type(end) is str else None
    lo = lo_range[0] if lo_range else NEG_INF
    hi = hi_range[1] if hi_range else POS_INF
    return [(lo, hi)]


def _timing(v: Any) -> list[Row]:
    """Timing: one range, from the earliest to the latest of its events and repeat bounds
    (search.html#date: "the specified scheduling details are ignored and only the outer limits
    matter")."""
    if type(v) is not dict:
        return []
    rows = [r for e in v.get("event") or () for r in _date(e)]
    repeat = v.get("repeat")
    if type(repeat) is dict and repeat.get("boundsPeriod") is not None:
        rows.extend(_period(repeat["boundsPeriod"]))
    if len(rows) <= 1:
        return rows
    return [(min(r[0] for r in rows), max(r[1] for r in rows))]


DATE: dict[str, Tails] = {
    "date": lambda v, t: _date(v),
    "dateTime": lambda v, t: _date(v),
    "instant": lambda v, t: _date(v),
    "Period": lambda v, t: _period(v),
    "Timing": lambda v, t: _timing(v),
}


# ------------------------------------------------------------------------ numbers and quantities

def number_range(value: Any) -> tuple[float, float]:
    """The range a number's written precision implies (search.html#number): ``100`` is
    [99.5, 100.5], ``1.50`` is [1.495, 1.505]. Decimals keep their written digits; a float is
    read as Python writes it (``repr``); a string (a search value) as written. Raises
    ValueError for anything else."""
    found = _number_range(value)
    if found is None:
        raise ValueError(f"not a number: {value!r}")
    return found


def number_value(text: str) -> float:
    """A search value's number as written, read as a resource's number is (:func:`_exact`).
    Raises ValueError for anything else."""
    found = _exact(text)
    if found is None:
        raise ValueError(f"not a number: {text!r}")
    return found


def _number_range(value: Any) -> tuple[float, float] | None:
    if type(value) is int:
        return value - 0.5, value + 0.5
    d = _decimal(value)
    if d is None:
        return None
    exponent = d.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal((0, (5,), exponent - 1))
    try:
        return float(d - half), float(d + half)
    except ArithmeticError:  # beyond the decimal context (1e1000000): no range
        return None


def _decimal(value: Any) -> Decimal | None:
    """A finite number as written (a float as Python writes it), or None."""
    kind = type(value)
    try:
        if kind is int:
            return Decimal(value)
        if kind is float:
            value = Decimal(repr(value))
        elif kind is str:
            if not value or value != value.strip() or "_" in value:
                return None
            value = Decimal(value)
        elif kind is not Decimal:
            return None
    except InvalidOperation:
        return None
    exponent = value.as_tuple().exponent
    return value if isinstance(exponent, int) and value.is_finite() else None


def _exact(value: Any) -> float | None:
    """A number in a resource, as it is: a search value's precision sets the range it matches
    (search.html#number); the value it is compared with is a point."""
    d = _decimal(value)
    if d is None:
        return None
    try:
        return float(d)
    except ArithmeticError:
        return None


def _number(v: Any) -> list[Row]:
    x = _exact(v)
    return [(x, x)] if x is not None else []


def _range_bounds(v: Any) -> tuple[float, float] | None:
    """A Range covers low..high; a missing side is open."""
    low, high = v.get("low"), v.get("high")
    lo = _exact(low.get("value")) if type(low) is dict else None
    hi = _exact(high.get("value")) if type(high) is dict else None
    if lo is None and hi is None:
        return None
    return (_NEG_F if lo is None else lo, _POS_F if hi is None else hi)


def _number_range_value(v: Any) -> list[Row]:
    bounds = _range_bounds(v) if type(v) is dict else None
    return [bounds] if bounds is not None else []


NUMBER: dict[str, Tails] = {
    "integer": lambda v, t: _number(v),
    "decimal": lambda v, t: _number(v),
    "Range": lambda v, t: _number_range_value(v),
}


def _quantity(v: Any) -> list[Row]:
    """(system, code, lo, hi). A comparator opens the range on its side (``<5``: up to 5).
    When the human unit differs from the code, a row without system carries the unit too, so
    ``5.4||mg`` finds it (search.html#quantity: the code matches Quantity.code or unit)."""
    if type(v) is not dict:
        return []
    x = _exact(v.get("value"))
    if x is None:
        return []
    lo = hi = x
    comparator = v.get("comparator")
    if comparator in ("<", "<="):  # "<5" is below 5: its own value is outside it
        lo, hi = _NEG_F, x if comparator == "<=" else math.nextafter(x, _NEG_F)
    elif comparator in (">", ">="):
        lo, hi = x if comparator == ">=" else math.nextafter(x, _POS_F), _POS_F
    code = v.get("code")
    rows: list[Row] = [(v.get("system"), code, lo, hi)]
    unit = v.get("unit")
    if type(unit) is str and unit and unit != code:
        rows.append((None, unit, lo, hi))
    return rows


def _money(v: Any) -> list[Row]:
    if type(v) is not dict:
        return []
    x = _exact(v.get("value"))
    return [(ISO_4217, v.get("currency"), x, x)] if x is not None else []


def _quantity_range(v: Any) -> list[Row]:
    if type(v) is not dict:
        return []
    bounds = _range_bounds(v)
    if bounds is None:
        return []
    # The unit is the one side that states it (both should agree).
    sides = [side for side in (v.get("low"), v.get("high")) if type(side) is dict]
    side = next((s for s in sides if s.get("code") or s.get("system")), sides[0])
    return [(side.get("system"), side.get("code"), bounds[0], bounds[1])]


QUANTITY: dict[str, Tails] = {
    "Quantity": lambda v, t: _quantity(v),
    "Money": lambda v, t: _money(v),
    "Range": lambda v, t: _quantity_range(v),
}

URI: dict[str, Tails] = {
    "uri": lambda v, t: [(v,)] if type(v) is str and v else [],
}

TAILS: dict[str, dict[str, Tails]] = {
    "string": STRING, "token": TOKEN, "reference": REFERENCE, "date": DATE,
    "number": NUMBER, "quantity": QUANTITY, "uri": URI,
}
EXTRAS: dict[str, Callable[[str, Any, TypeInfo, Out], None]] = {
    "token": _token_extras, "reference": _reference_extras,
}


# ------------------------------------------------------------------------------------ extraction

Converters = dict[TypeInfo, Tails]


def _converters(kind: str, path: FhirPath) -> Converters:
    """Per possible node type of the expression, how it becomes rows of ``kind``."""
    table: Converters = {}
    for t in path.types:
        as_type = indexed_as(kind, t.name)
        if as_type is not None:
            table[t] = TAILS[kind][as_type]
    return table


Step = tuple[str, str, FhirPath, Converters, Any, tuple[frozenset[str], ...]]


@functools.cache
def plan(resource_type: str) -> tuple[Step, ...]:
    """What to evaluate for a resource type, prepared once: (code, kind, expression,
    converters, extras or composite components, the sets of JSON keys the resource must have
    one of each of for the step to give rows: the expression's, when known, and those of a
    composite's components on the whole resource)."""
    steps: list[Step] = []
    reg = registry()
    for param in reg.params_for(resource_type).values():
        path = param.extractor(resource_type)
        if param.column or path is None or reg.is_union(resource_type, param.code):
            continue
        needs: tuple[frozenset[str], ...] = (path.keys,) if path.keys else ()
        if param.type == "composite":
            parts = _composite_parts(param, resource_type)
            if parts is not None:
                needs += tuple(p.keys for p, _ in parts if p.keys is not None)
                steps.append((param.code, "composite", path, {}, parts, needs))
            continue
        steps.append((param.code, param.type, path, _converters(param.type, path),
                      EXTRAS.get(param.type), needs))
    return tuple(steps)


def _composite_parts(param: SearchParam,
                     resource_type: str) -> tuple[tuple[FhirPath, Converters], ...] | None:
    parts = []
    for comp in param.components:
        path = comp.extractors.get(resource_type)
        if path is None:
            return None
        parts.append((path, _converters(comp.param.type, path)))
    return tuple(parts)


@functools.lru_cache(maxsize=4096)
def _steps(resource_type: str, keys: frozenset[str]) -> tuple[Step, ...]:
    """The steps of the plan that can give rows for a resource with these JSON keys (resources
    of a type come in a few shapes, so this is mostly a lookup)."""
    return tuple(step for step in plan(resource_type)
                 if all(not keys.isdisjoint(need) for need in step[5]))


def _composite_rows(code: str, path: FhirPath, resource: dict[str, Any],
                    parts: tuple[tuple[FhirPath, Converters], ...], rows: dict[Row, None]) -> None:
    """One row per element the composite expression selects (each Observation.component on
    its own) and per combination of its components' values, in component order."""
    for node in path(resource):
        values: list[list[Row]] = []
        for part, converters in parts:
            tails: list[Row] = []
            for v, t in part.evaluate_on([node], resource):
                conv = converters.get(t)
                if conv is not None:
                    tails.extend(conv(v, t))
            if not tails:
                break
            values.append(tails)
        else:
            for combo in itertools.product(*values):
                rows[(code, combo)] = None


def extract(resource: dict[str, Any]) -> dict[str, list[Row]]:
    """Index rows of every supported search parameter of the resource's type, deduplicated,
    per kind (every kind present, possibly empty).

    A reference to a contained resource (``#m1``) has the contained resource's type, and that
    resource's rows come too, under the referring parameter, a ``>#``, its type and code
    (``medication>#Medication.ingredient-code``): a chain through the parameter reads them
    (search.html#contained: "A chained condition will be evaluated inside contained
    resources"); nothing else sees them."""
    out = _extract(resource)
    contained = resource.get("contained")
    if contained and type(contained) is list:
        _contained(out, {c["id"]: c for c in contained if type(c) is dict
                         and type(c.get("id")) is str and type(c.get("resourceType")) is str
                         and _is_resource_type(c["resourceType"])})
    return {kind: list(rows) for kind, rows in out.items()}


def _contained(out: Out, by_id: dict[str, dict[str, Any]]) -> None:
    references = out["reference"]
    inner_rows: dict[str, Out] = {}
    for row in [r for r in references if (r[4] or "").startswith("#")]:
        inner = by_id.get(row[4][1:])
        if inner is None:
            continue
        code, type_ = row[0], inner["resourceType"]
        del references[row]
        references[(code, type_, *row[2:])] = None
        if ":" in code:  # :identifier rows: not chained through
            continue
        if row[4] not in inner_rows:
            inner_rows[row[4]] = _extract(inner)
        prefix = f"{code}>#{type_}."
        for kind, rows in inner_rows[row[4]].items():
            if kind != "composite":  # not chained into
                target = out[kind]
                for r in rows:
                    target[(prefix + r[0], *r[1:])] = None


def _extract(resource: dict[str, Any]) -> Out:
    out: Out = {kind: {} for kind in KINDS}
    for code, kind, path, converters, extra, _ in _steps(resource["resourceType"],
                                                         frozenset(resource)):
        rows = out[kind]
        if kind == "composite":
            _composite_rows(code, path, resource, extra, rows)
            continue
        for value, info in path(resource):
            conv = converters.get(info)
            if conv is not None:
                for tail in conv(value, info):
                    rows[(code, *tail)] = None
            if extra is not None:
                extra(code, value, info, out)
    return out

"""JSON in and out, keeping FHIR decimals exactly as written.

FHIR requires a decimal's precision to survive a round trip (``1.50`` stays ``1.50``). orjson reads
numbers as binary floats, which is exact for most inputs and fast; where it read a float and the
text holds a number a float would change (trailing zeros, exponents, more than 15 digits), the
document is read again with the standard library, decimals as :class:`decimal.Decimal`, and
written back verbatim.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

import orjson

# A JSON number a float cannot reproduce: trailing zeros after the point, an exponent, or more
# than 15 digits. Numbers follow ':', '[' or ',' (the text is searched behind a '[', so that one
# that is a number follows one too: starting at a character lets the search skip ahead twice as
# fast as with a '^' alternative); text inside a string that happens to look like this (rare)
# only sends the document down the slower, exact path.
_LOSSY = re.compile(rb"[:\[,]\s*-?(?:\d+\.\d*0\s*(?:[,\]}]|$)|\d+(?:\.\d+)?[eE]|(?:\d\.?){16,})")


class JsonError(ValueError):
    pass


def loads(data: bytes | str) -> Any:
    if isinstance(data, str):
        data = data.encode()
    try:
        try:
            doc = orjson.loads(data)
        except orjson.JSONDecodeError:  # perhaps a number beyond a float (1e400)
            if _LOSSY.search(b"[" + data) is None:
                raise
        else:  # the text is searched only when something was read as a float (one in ten)
            if not _has_float(doc) or _LOSSY.search(b"[" + data) is None:
                return doc
        return json.loads(data, parse_float=Decimal, parse_int=_integer,
                          parse_constant=_no_constant)
    except ValueError as exc:  # the decoders' errors, and integers of over 4,300 digits
        if "UTF-8" in str(exc):  # orjson speaks of surrogates whatever the bytes are
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as bad:
                raise JsonError(f"not UTF-8 text (byte {bad.start + 1}, "
                                f"{data[bad.start]:#04x})") from None
        raise JsonError(str(exc)) from None
    except RecursionError:
        raise JsonError("JSON nested too deeply") from None


def _has_float(doc: Any) -> bool:
    """Whether a parsed document holds a float (orjson also reads integers beyond 64 bits so)."""
    if type(doc) is not dict and type(doc) is not list:
        return type(doc) is float
    todo = [doc]
    while todo:
        item = todo.pop()
        for value in item.values() if type(item) is dict else item:
            kind = type(value)
            if kind is dict or kind is list:
                todo.append(value)
            elif kind is float:
                return True
    return False


def _integer(text: str) -> int | Decimal:
    """An integer, or beyond 64 bits (which orjson does not write) a decimal."""
    value = int(text)
    return value if -2**63 <= value < 2**64 else Decimal(text)


def _no_constant(name: str) -> Any:
    raise json.JSONDecodeError(f"{name} is not JSON", name, 0)


class Raw:
    """JSON text that :func:`dumps` embeds verbatim (a stored resource inside a Bundle)."""

    __slots__ = ("data",)

    def __init__(self, data: bytes):
        self.data = data


def json_default(obj: Any) -> Any:
    """What orjson is given for the values it does not know: decimals and Raw, verbatim."""
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    if isinstance(obj, Raw):
        return orjson.Fragment(obj.data)
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def dumps(obj: Any, pretty: bool = False) -> bytes:
    option = orjson.OPT_INDENT_2 if pretty else 0
    try:
        return orjson.dumps(obj, default=json_default, option=option)
    except orjson.JSONEncodeError as exc:
        if "64-bit" not in str(exc):
            raise
        return orjson.dumps(_wide_integers(obj), default=json_default, option=option)


def _wide_integers(obj: Any) -> Any:
    """``obj`` with its integers beyond 64 bits (which orjson does not write) as decimals."""
    if type(obj) is dict:
        return {k: _wide_integers(v) for k, v in obj.items()}
    if type(obj) is list:
        return [_wide_integers(v) for v in obj]
    if type(obj) is int and not -2**63 <= obj < 2**64:
        return Decimal(obj)
    return obj

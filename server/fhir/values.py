"""Parsing the small values of the HTTP API: ETags, instants, counts, HTTP dates."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

from server.fhir.errors import invalid

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ETAG = re.compile(r'^\s*(?:W/)?"?([0-9]+)"?\s*$')
_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_INSTANT = re.compile(
    r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?"
    r"(Z|[+-]\d{2}:\d{2})?)?)?)?$")


def valid_id(id: str) -> bool:
    return _ID.match(id) is not None


@dataclass(frozen=True, slots=True)
class Etags:
    """An If-Match or If-None-Match header (RFC 9110 §13.1.1-2): versions, or * (any)."""

    versions: frozenset[int]
    any: bool = False

    def matches(self, version: int | None) -> bool:
        """Whether the current version (None: no current one) is one of these."""
        return version is not None and (self.any or version in self.versions)

    def __str__(self) -> str:
        return "*" if self.any else ", ".join(f'W/"{v}"' for v in sorted(self.versions))


def parse_etags(value: str | None, header: str = "If-Match") -> Etags | None:
    """A header of one ETag, a list of them, or *; None when absent or empty."""
    if value is None or value.strip() == "":
        return None
    if value.strip() == "*":
        return Etags(frozenset(), any=True)
    return Etags(frozenset(v for e in value.split(",")
                           if (v := parse_etag(e, header)) is not None))


def parse_etag(value: str | None, header: str = "If-Match") -> int | None:
    if value is None or value.strip() == "":
        return None
    m = _ETAG.match(value)
    if m is None:
        raise invalid(f"{header}: expected a version ETag such as W/\"3\", got {value!r}")
    return int(m.group(1))


def parse_instant(value: str, name: str) -> int:
    """Microseconds since the epoch of an instant or (partial) dateTime; partial values mean
    their start. A dateTime with a time needs a zone (FHIR); a date alone is taken as UTC."""
    m = _INSTANT.match(value.strip())
    if m is None:
        raise invalid(f"{name}: {value!r} is not a valid instant", expression=name)
    year, month, day, hh, mm, ss, frac, tz = m.groups()
    if hh is not None and tz is None:
        raise invalid(f"{name}: a time needs a zone (Z or ±hh:mm): {value!r}", expression=name)
    try:
        dt = datetime(int(year), int(month or 1), int(day or 1), int(hh or 0), int(mm or 0),
                      int(ss or 0), int(((frac or ".0")[1:] + "000000")[:6]), tzinfo=UTC)
    except ValueError:
        raise invalid(f"{name}: {value!r} is not a valid instant", expression=name) from None
    if tz and tz != "Z":
        sign = 1 if tz[0] == "+" else -1
        dt -= sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6]))
    return (dt - _EPOCH) // timedelta(microseconds=1)


def parse_http_date(value: str) -> int | None:
    try:
        dt = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000


def parse_count(value: str | None, default: int, maximum: int, name: str = "_count") -> int:
    if value is None:
        return default
    try:
        n = int(value)
    except ValueError:
        raise invalid(f"{name}: expected a non-negative integer, got {value!r}",
                      expression=name) from None
    if n < 0:
        raise invalid(f"{name}: expected a non-negative integer, got {value!r}", expression=name)
    return min(n, maximum)

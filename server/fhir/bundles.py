"""Building Bundles whose entries carry stored JSON without parsing it again.

An entry's ``resource`` is a :class:`Stored` wrapper around the bytes of a stored version. The
JSON writer embeds those bytes verbatim (``orjson.Fragment``), so a page of search results costs
no parse and no re-serialisation. Anything that needs the resource as data (XML, ``_summary``,
``_elements``) calls :func:`materialise` first.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

from server.fhir import codec
from server.storage.base import Version, http_date, instant


class Stored(codec.Raw):
    """A stored resource version inside a response, serialised lazily."""

    __slots__ = ("version",)

    def __init__(self, version: Version):
        assert version.body is not None
        super().__init__(version.body)
        self.version = version

    def to_dict(self) -> dict[str, Any]:
        assert self.version.body is not None
        return codec.loads(self.version.body)


def materialise(obj: Any, transform: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                ) -> Any:
    """A copy of ``obj`` where every :class:`Stored` is a dict (passed through ``transform``)."""
    if isinstance(obj, Stored):
        d = obj.to_dict()
        return transform(d) if transform else d
    if isinstance(obj, dict):
        return {k: materialise(v, transform) for k, v in obj.items()}
    if isinstance(obj, list):
        return [materialise(v, transform) for v in obj]
    return obj


def full_url(base: str, type: str, id: str) -> str:
    return f"{base}/{type}/{id}"


def link_url(base: str, path: str, params: list[tuple[str, str]]) -> str:
    url = f"{base}/{path}" if path else base
    return f"{url}?{urlencode(params)}" if params else url


_STATUS_TEXT = {200: "200 OK", 201: "201 Created", 410: "410 Gone"}


def history_entry(base: str, v: Version) -> dict[str, Any]:
    entry: dict[str, Any] = {"fullUrl": full_url(base, v.type, v.id)}
    if v.body is not None:
        entry["resource"] = Stored(v)
    if v.method == "POST":
        request = {"method": "POST", "url": v.type}
        status = 201
    else:
        request = {"method": "DELETE" if v.deleted else ("PATCH" if v.method == "PATCH" else "PUT"),
                   "url": f"{v.type}/{v.id}"}
        status = 200 if v.deleted else (201 if v.version == 1 else 200)  # as answered
    entry["request"] = request
    entry["response"] = {"status": _STATUS_TEXT[status], "etag": v.etag,
                         "lastModified": instant(v.last_updated)}
    return entry


def bundle(type: str, entries: list[dict[str, Any]], links: list[tuple[str, str]],
           total: int | None = None, timestamp: int | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": type}
    if timestamp is not None:
        out["timestamp"] = instant(timestamp)
    if total is not None:
        out["total"] = total
    if links:
        out["link"] = [{"relation": rel, "url": url} for rel, url in links]
    if entries:
        out["entry"] = entries
    return out


__all__ = ["Stored", "materialise", "bundle", "history_entry", "full_url", "link_url",
           "http_date"]

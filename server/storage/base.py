"""The ResourceStore contract: the only door to persistence.

Backends (``sqlite``, later ``mongodb``) implement :class:`ResourceStore`. Nothing above this
module knows how they keep data. Reads are ``async`` methods. Writes run as a plain function over
a :class:`Transaction` that the backend executes atomically (``await store.run(fn)``); the
function may read, search and write several resources, and raising anything inside it leaves
stored data exactly as it was. A write is acknowledged only once it is durable.

FHIR sections implemented here: read/vread (http.html#read, #vread), history (#history),
create/update/delete with versions (#create, #update, #delete), transactions (#transaction).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import formatdate
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: Search index entries extracted from a resource, by kind (``string``, ``token``, ``reference``,
#: ``date``, ``number``, ``quantity``, ``uri``, ``composite``); rows as defined in
#: ``server.search.index``. Backends store them beside the resource; they carry no resource id.
IndexRows = Mapping[str, Sequence[tuple[Any, ...]]]


@dataclass(frozen=True, slots=True)
class Serialized:
    """A resource given as JSON already, to a bulk write: its ``meta`` and the JSON object of
    its other elements (without ``resourceType``, ``id`` and ``meta``). Stored as the dict would
    be, ``{"resourceType", "id", "meta", …}``, without being parsed again."""

    meta: dict[str, Any] | None
    rest: bytes


#: One resource of a bulk write: (type, id, resource, index rows or None: the store's to
#: extract).
WriteItem = tuple[str, str, dict[str, Any] | Serialized, IndexRows | None]


def instant(us: int) -> str:
    """FHIR ``instant`` text of a timestamp in microseconds since the epoch (UTC)."""
    dt = datetime.fromtimestamp(us / 1_000_000, UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.") + f"{dt.microsecond:06d}"[:3] + "Z"


def http_date(us: int) -> str:
    """RFC 7231 date, as used by Last-Modified."""
    return _http_date(us // 1_000_000)


@functools.lru_cache(maxsize=4096)
def _http_date(seconds: int) -> str:
    return formatdate(seconds, usegmt=True)


def _without_version_meta(resource: dict[str, Any]) -> dict[str, Any]:
    meta = {k: v for k, v in (resource.get("meta") or {}).items()
            if k not in ("versionId", "lastUpdated")}
    out = {k: v for k, v in resource.items() if k not in ("meta", "id")}
    if meta:
        out["meta"] = meta
    return out


def same_content(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether two versions of a resource say the same thing (server-owned meta aside)."""
    return _without_version_meta(a) == _without_version_meta(b)


@dataclass(frozen=True, slots=True)
class Version:
    """One stored version of a resource. ``body`` is its JSON, or None for a deletion."""

    type: str
    id: str
    version: int
    last_updated: int  # microseconds since the epoch, UTC
    deleted: bool
    body: bytes | None
    method: str = "PUT"  # POST, PUT, PATCH or DELETE: how this version came to be

    @property
    def last_updated_instant(self) -> str:
        return instant(self.last_updated)

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'


@dataclass(frozen=True, slots=True)
class HistoryQuery:
    """``_history`` at system (type and id None), type (id None) or instance level."""

    type: str | None = None
    id: str | None = None
    since: int | None = None  # include versions at or after (µs)
    #: Include the versions current at some point in this period (µs, inclusive): R4 ``_at``.
    at: tuple[int, int] | None = None
    count: int = 20
    cursor: str | None = None  # opaque, from a previous page's ``next_cursor``


@dataclass(frozen=True, slots=True)
class HistoryPage:
    entries: list[Version]
    next_cursor: str | None
    total: int | None = None


@dataclass(frozen=True, slots=True)
class SearchPage:
    """Matches of a search, in order, and the resources ``_include``/``_revinclude`` brought."""

    matches: list[Version]
    included: list[Version] = field(default_factory=list)
    total: int | None = None
    next_cursor: str | None = None
    prev_cursor: str | None = None
    #: Where the backend cut the result short (``_include`` limits), for a warning.
    notes: list[str] = field(default_factory=list)


class StoreError(Exception):
    """A backend failure that is not the caller's fault (disk full, database gone)."""


class Transaction(Protocol):
    """Operations inside one atomic unit of work. Synchronous: it runs inside the backend."""

    #: The lastUpdated every write in this transaction gets (µs since the epoch, UTC).
    now: int

    def read(self, type: str, id: str) -> Version | None:
        """The current version (a deletion included), or None if the resource never existed."""

    def write(self, type: str, id: str, resource: dict[str, Any], indexes: IndexRows | None,
              method: str) -> Version:
        """Store a new version, with its search index rows (None: the store extracts them). Sets ``id``, ``meta.versionId`` and ``meta.lastUpdated`` in
        ``resource`` (the caller's dict is updated) and returns what was stored. If the content
        equals the current version's (see :func:`same_content`), nothing is written and the
        current version is returned."""

    def write_many(self, items: Sequence[WriteItem], method: str) -> list[Version]:
        """:meth:`write` for many resources at once (bulk loading), in order."""

    def vread(self, type: str, id: str, version: int) -> Version | None:
        """One version of a resource (a deletion included), or None."""

    def delete(self, type: str, id: str) -> Version | None:
        """Record a deletion as a new version. None if the resource does not exist; the existing
        deletion if it was already deleted (no new version then)."""

    def search(self, query: Any, limit: int | None = None) -> list[Version]:
        """Current, not deleted resources matching a compiled search query (see server.search)."""

    def search_page(self, query: Any) -> SearchPage:
        """A page of a search, as :meth:`ResourceStore.search` reads it, inside the
        transaction."""


class ResourceStore(Protocol):
    async def read(self, type: str, id: str) -> Version | None:
        """Current version of a resource, deletions included; None if it never existed."""

    async def vread(self, type: str, id: str, version: int) -> Version | None:
        """A given version of a resource; None if there is no such version."""

    async def history(self, query: HistoryQuery) -> HistoryPage:
        """Versions newest first, paged by an opaque cursor that stays valid while data changes."""

    async def search(self, query: Any) -> SearchPage:
        """Run a compiled search (server.search.plan)."""

    async def run(self, fn: Callable[[Transaction], T]) -> T:
        """Run ``fn`` atomically; return its result once the changes are durable."""

    async def ping(self) -> None:
        """Raise StoreError unless the store can serve reads and writes (for /healthz)."""

    async def close(self) -> None:
        """Release connections and background threads."""

"""Finding code systems and value sets: the built-in files first, then the store.

The built-in definitions are the product's own and are installed into the store at start-up, so
a stored copy with the same canonical URL normally says the same thing; answering from the
compiled files avoids a store round trip on every lookup. A stored CodeSystem or ValueSet whose
URL (or requested version) the files do not have is found by a search on ``url`` (and
``version``), so terminology loaded by clients is known too. Reads go through the caller's
guarded store: a client without the right to search CodeSystems still gets the built-in ones.
"""

from __future__ import annotations

import functools
from typing import Any

from server.fhir import codec
from server.fhir.errors import FhirError, gone, not_found
from server.search.query import parse
from server.storage.base import ResourceStore
from server.terminology.codesystem import CodeSystemIndex
from server.terminology.library import library, version_key


def split_canonical(url: str, version: str | None = None) -> tuple[str, str | None]:
    """``url|version`` (a canonical with a version) into its parts; an explicit version wins."""
    if "|" in url:
        url, _, embedded = url.partition("|")
        return url, version or embedded or None
    return url, version


@functools.lru_cache(maxsize=128)
def _compiled(body: bytes) -> CodeSystemIndex:
    """Stored CodeSystems compiled once per version (the body bytes identify the version)."""
    return CodeSystemIndex(codec.loads(body))


class Terminology:
    """What the server knows for one request: built-in terminology and the caller's store."""

    def __init__(self, store: ResourceStore):
        self.store = store

    async def code_system(self, url: str, version: str | None = None) -> CodeSystemIndex | None:
        url, version = split_canonical(url, version)
        found = library().code_system(url, version)
        if found is not None:
            return found
        body = await self._search("CodeSystem", url, version)
        return _compiled(body) if body is not None else None

    async def value_set(self, url: str, version: str | None = None) -> dict[str, Any] | None:
        url, version = split_canonical(url, version)
        found = library().value_set(url, version)
        if found is not None:
            return found
        body = await self._search("ValueSet", url, version)
        return codec.loads(body) if body is not None else None

    async def instance(self, type_: str, id_: str) -> dict[str, Any]:
        """``[type]/[id]`` for instance-level operations: the stored resource, else a built-in
        one with that id (before the built-ins are installed into the store)."""
        body = await self._read(type_, id_)
        return codec.loads(body)

    async def instance_code_system(self, id_: str) -> CodeSystemIndex:
        body = await self._read("CodeSystem", id_)
        return _compiled(body)

    async def _read(self, type_: str, id_: str) -> bytes:
        current = await self.store.read(type_, id_)
        if current is None:
            builtin = library().by_id.get((type_, id_))
            if builtin is None:
                raise not_found(type_, id_)
            return codec.dumps(builtin)
        if current.deleted or current.body is None:
            raise gone(type_, id_, current.version)
        return current.body

    async def _search(self, type_: str, url: str, version: str | None) -> bytes | None:
        params = [("url", url)]
        if version is not None:
            params.append(("version", version))
        try:
            query = parse((type_,), params, default_count=50, max_count=50)
        except FhirError:
            return None  # not a URL the search can take: nothing stored has it
        page = await self.store.search(query)
        bodies = [v.body for v in page.matches if v.body is not None]
        if not bodies:
            return None
        if len(bodies) == 1:
            return bodies[0]
        return max(bodies, key=lambda b: version_key(codec.loads(b).get("version")))

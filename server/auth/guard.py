"""The access-checking wrapper: the only way a caller's identity reaches the store.

Handlers get ``guarded(store, principal)`` and never the bare store, so every read, search and
write is checked against the caller's scopes in one place. Consent-aware rules (an expert reads a
patient's records only while a consultation assigns them) plug in here as well.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from server.auth.scopes import Principal
from server.fhir.errors import FhirError
from server.storage.base import (
    HistoryPage,
    HistoryQuery,
    IndexRows,
    ResourceStore,
    SearchPage,
    Transaction,
    Version,
    WriteItem,
)

T = TypeVar("T")

_ACTION_NAMES = {"c": "create", "r": "read", "u": "update", "d": "delete", "s": "search"}


def forbidden(principal: Principal, type: str, action: str) -> FhirError:
    return FhirError(403, "forbidden",
                     f"the granted scopes do not allow {_ACTION_NAMES[action]} on {type}")


def require(principal: Principal, type: str, action: str) -> None:
    if not principal.can(type, action):
        raise forbidden(principal, type, action)


def unguarded(tx: Transaction) -> Transaction:
    """The transaction under a caller's checks: for writes the server's rules make itself."""
    return tx.tx if isinstance(tx, GuardedTransaction) else tx


def guarded(store: ResourceStore, principal: Principal) -> ResourceStore:
    """``store`` as seen by ``principal``."""
    if principal.unrestricted:
        return store
    return GuardedStore(store, principal)


class GuardedStore:
    def __init__(self, store: ResourceStore, principal: Principal):
        self.store = store
        self.principal = principal

    async def read(self, type: str, id: str) -> Version | None:
        require(self.principal, type, "r")
        return await self.store.read(type, id)

    async def vread(self, type: str, id: str, version: int) -> Version | None:
        require(self.principal, type, "r")
        return await self.store.vread(type, id, version)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        require(self.principal, query.type or "*", "r")
        return await self.store.history(query)

    async def search(self, query: Any) -> SearchPage:
        for type in query.types:
            require(self.principal, type, "s")
        page = await self.store.search(query)
        for v in page.included:
            require(self.principal, v.type, "r")
        return page

    async def run(self, fn: Callable[[Transaction], T]) -> T:
        principal = self.principal
        return await self.store.run(lambda tx: fn(GuardedTransaction(tx, principal)))

    async def ping(self) -> None:
        await self.store.ping()

    async def close(self) -> None:
        await self.store.close()


class GuardedTransaction:
    def __init__(self, tx: Transaction, principal: Principal):
        self.tx = tx
        self.principal = principal
        self.now = tx.now

    def read(self, type: str, id: str) -> Version | None:
        if not any(self.principal.can(type, a) for a in "rud"):
            raise forbidden(self.principal, type, "r")
        return self.tx.read(type, id)

    def vread(self, type: str, id: str, version: int) -> Version | None:
        require(self.principal, type, "r")
        return self.tx.vread(type, id, version)

    def write(self, type: str, id: str, resource: dict[str, Any], indexes: IndexRows | None,
              method: str) -> Version:
        self._require_write(type, id)
        return self.tx.write(type, id, resource, indexes, method)

    def write_many(self, items: Sequence[WriteItem], method: str) -> list[Version]:
        for type, id, _, _ in items:
            self._require_write(type, id)
        return self.tx.write_many(items, method)

    def _require_write(self, type: str, id: str) -> None:
        """A write creates or updates: the scope for the one it is (no read if both are held)."""
        if self.principal.can(type, "c") and self.principal.can(type, "u"):
            return
        current = self.tx.read(type, id)
        require(self.principal, type, "u" if current is not None and not current.deleted else "c")

    def delete(self, type: str, id: str) -> Version | None:
        require(self.principal, type, "d")
        return self.tx.delete(type, id)

    def search(self, query: Any, limit: int | None = None) -> list[Version]:
        for type in query.types:
            require(self.principal, type, "s")
        return self.tx.search(query, limit)

    def search_page(self, query: Any) -> SearchPage:
        for type in query.types:
            require(self.principal, type, "s")
        page = self.tx.search_page(query)
        for v in page.included:
            require(self.principal, v.type, "r")
        return page

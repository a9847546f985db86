"""Persistence: the ResourceStore contract and its backends."""

from __future__ import annotations

from typing import Any

from server.storage.base import ResourceStore, StoreError


def open_store(settings: Any, *, bulk: int = 0, writers: int = 1,
               serving: bool = False) -> ResourceStore:
    """The store the settings name: SQLite under the data dir by default. ``bulk``: the store
    is written in transactions of about that many resources (``consilium import``), by
    ``writers`` processes at once; the backend may tune for that. ``serving``: the store of a
    server, whose writes may be indexed by a process of their own (``index_process``)."""
    if settings.db.startswith(("mongodb://", "mongodb+srv://")):
        raise StoreError("the MongoDB backend is not part of this build yet; "
                         "run without --db to use the embedded SQLite store")
    if settings.db:
        raise StoreError(f"unknown --db {settings.db!r}: give a mongodb:// URI or nothing")
    from server.storage.sqlite import SqliteStore

    indexer = settings.log_level if serving and settings.index_process else None
    return SqliteStore(settings.sqlite_path, bulk=bulk, writers=writers, indexer=indexer)


__all__ = ["ResourceStore", "StoreError", "open_store"]

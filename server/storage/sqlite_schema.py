"""Tables of the SQLite store and how search index rows are written into them.

Index tables are ``WITHOUT ROWID`` tables clustered on (parameter, value, resource), so an
equality or range search reads one contiguous run of the B-tree; a second index on the resource
id lets a new version replace the rows of the previous one. Parameters are stored as small
integers (:func:`param_id`) so the rows stay short at millions of resources.
"""

from __future__ import annotations

import functools
import hashlib
import sqlite3
from typing import Any

from server.search.plan import NEG_INF, POS_INF

SCHEMA_VERSION = 2

_SCHEMA = """
CREATE TABLE IF NOT EXISTS resource (
    rid INTEGER PRIMARY KEY,
    type TEXT NOT NULL,
    id TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    deleted INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    UNIQUE (type, id)
);
CREATE INDEX IF NOT EXISTS resource_type_updated ON resource (type, updated);
CREATE INDEX IF NOT EXISTS resource_type ON resource (type);

CREATE TABLE IF NOT EXISTS version (
    seq INTEGER PRIMARY KEY,
    rid INTEGER NOT NULL,
    type TEXT NOT NULL,
    version INTEGER NOT NULL,
    updated INTEGER NOT NULL,
    method TEXT NOT NULL,
    body BLOB
);
CREATE UNIQUE INDEX IF NOT EXISTS version_rid ON version (rid, version);
CREATE INDEX IF NOT EXISTS version_type ON version (type, seq);
CREATE INDEX IF NOT EXISTS version_updated ON version (updated);

CREATE TABLE IF NOT EXISTS idx_string (
    pid INTEGER NOT NULL, value TEXT NOT NULL, exact TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, value, exact, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_string_rid ON idx_string (rid);

CREATE TABLE IF NOT EXISTS idx_token (
    pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, code, system, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_token_rid ON idx_token (rid);

CREATE TABLE IF NOT EXISTS idx_reference (
    pid INTEGER NOT NULL, target_id TEXT NOT NULL, target_type TEXT NOT NULL,
    url TEXT NOT NULL, version TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, target_id, target_type, url, version, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_reference_rid ON idx_reference (rid);
DROP INDEX IF EXISTS idx_reference_url;

CREATE TABLE IF NOT EXISTS idx_date (
    pid INTEGER NOT NULL, lo INTEGER NOT NULL, hi INTEGER NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, lo, hi, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_date_rid ON idx_date (rid);
CREATE INDEX IF NOT EXISTS idx_date_hi ON idx_date (pid, hi);

-- The widest finite range (hi - lo) of each date parameter's rows: a row with hi >= X has
-- lo >= X - span, which turns "after X" into a bounded range of the (pid, lo) key.
CREATE TABLE IF NOT EXISTS date_span (pid INTEGER PRIMARY KEY, span INTEGER NOT NULL);

CREATE TABLE IF NOT EXISTS idx_number (
    pid INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, lo, hi, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_number_rid ON idx_number (rid);

CREATE TABLE IF NOT EXISTS idx_quantity (
    pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, code, system, lo, hi, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_quantity_rid ON idx_quantity (rid);

CREATE TABLE IF NOT EXISTS idx_uri (
    pid INTEGER NOT NULL, uri TEXT NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, uri, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_uri_rid ON idx_uri (rid);
"""

#: Index kind -> (table, value columns in the order extraction emits them after the code).
INDEX_TABLES: dict[str, tuple[str, tuple[str, ...]]] = {
    "string": ("idx_string", ("value", "exact")),
    "token": ("idx_token", ("system", "code")),
    "reference": ("idx_reference", ("target_type", "target_id", "version", "url")),
    "date": ("idx_date", ("lo", "hi")),
    "number": ("idx_number", ("lo", "hi")),
    "quantity": ("idx_quantity", ("system", "code", "lo", "hi")),
    "uri": ("idx_uri", ("uri",)),
}

_INSERT = {
    kind: f"INSERT OR IGNORE INTO {table} (pid, {', '.join(cols)}, rid) "
          f"VALUES (?, {', '.join('?' for _ in cols)}, ?)"
    for kind, (table, cols) in INDEX_TABLES.items()
}
_DELETE = [f"DELETE FROM {table} WHERE rid = ?" for table, _ in INDEX_TABLES.values()]


def migrate(conn: sqlite3.Connection) -> None:
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch the database to WAL mode (got {mode})")
    current = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise sqlite3.OperationalError(
            f"database schema {current} is newer than this server understands ({SCHEMA_VERSION})")
    conn.executescript(_SCHEMA)
    if current == 1:  # date_span is new in 2: compute it from the rows already there
        conn.execute("INSERT OR REPLACE INTO date_span SELECT pid, max(hi - lo) FROM idx_date "
                     "WHERE lo > ? AND hi < ? GROUP BY pid", (NEG_INF, POS_INF))
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")


@functools.lru_cache(maxsize=8192)
def param_id(type: str, code: str) -> int:
    """Stable 32-bit id of a search parameter of a type (a hash: no table, nothing to roll back).

    The registry checks at start-up that no two parameters it knows share an id.
    """
    digest = hashlib.blake2b(f"{type}.{code}".encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big") >> 1


def delete_index_rows(conn: sqlite3.Connection, rids: list[tuple[int]]) -> None:
    for sql in _DELETE:
        conn.executemany(sql, rids)


def collect_index_rows(into: dict[str, list[tuple[Any, ...]]], rid: int, type: str,
                       indexes: Any) -> None:
    """Add a resource's index rows, as table rows, to ``into`` (kind -> rows)."""
    for kind, rows in indexes.items():
        if rows and kind in _INSERT:
            target = into.setdefault(kind, [])
            for row in rows:
                target.append((param_id(type, row[0]),
                               *(("" if v is None else v) for v in row[1:]), rid))


def insert_index_rows(conn: sqlite3.Connection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    for kind, table_rows in rows.items():
        if table_rows:
            conn.executemany(_INSERT[kind], table_rows)
    spans: dict[int, int] = {}
    for pid, lo, hi, _ in rows.get("date", ()):
        if lo > NEG_INF and hi < POS_INF and hi - lo > spans.get(pid, -1):
            spans[pid] = hi - lo
    if spans:
        conn.executemany("INSERT INTO date_span (pid, span) VALUES (?, ?) ON CONFLICT (pid) "
                         "DO UPDATE SET span = max(span, excluded.span)", spans.items())

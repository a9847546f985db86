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
from collections.abc import Callable
from typing import Any

from server.search.plan import NEG_INF, POS_INF

SCHEMA_VERSION = 9

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

-- One row: the version seq through which the index tables hold the rows of every resource's
-- current version (writes are indexed after their commit, see sqlite.py).
CREATE TABLE IF NOT EXISTS indexed (seq INTEGER NOT NULL);

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

-- The widest range (hi - lo) of each date, number and quantity parameter's rows (of a
-- composite's, its first range; of dates, the finite ones): a row with hi >= X has
-- lo >= X - span, which turns "after X" into a bounded range of the (pid, lo) key.
CREATE TABLE IF NOT EXISTS span (pid INTEGER PRIMARY KEY, span NOT NULL);

CREATE TABLE IF NOT EXISTS idx_number (
    pid INTEGER NOT NULL, lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, lo, hi, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_number_rid ON idx_number (rid);

CREATE TABLE IF NOT EXISTS idx_quantity (
    pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL,
    lo REAL NOT NULL, hi REAL NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, code, system, lo, hi, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_quantity_rid ON idx_quantity (rid);

-- Composite parameters (search.html#composite): the leading token, then the other parts in
-- the columns composite_columns() gives them (a, b: a code or text; lo, hi and lo2, hi2: ranges).
-- The first range comes before a and b in the key, so a quantity's value is looked up whatever
-- its unit; composites without a range have lo = hi = 0, which their searches state.
CREATE TABLE IF NOT EXISTS idx_composite (
    pid INTEGER NOT NULL, code TEXT NOT NULL, system TEXT NOT NULL, a NOT NULL, b NOT NULL,
    lo NOT NULL, hi NOT NULL, lo2 NOT NULL, hi2 NOT NULL, rid INTEGER NOT NULL,
    PRIMARY KEY (pid, code, system, lo, hi, a, b, lo2, hi2, rid)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idx_composite_rid ON idx_composite (rid);

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
    "composite": ("idx_composite", ("code", "system", "a", "b", "lo", "hi", "lo2", "hi2")),
}

# An absent value (None in extraction's rows) is stored as ''.
_INSERT = {
    kind: f"INSERT OR IGNORE INTO {table} (pid, {', '.join(cols)}, rid) "
          f"VALUES (?, {', '.join('coalesce(?, {0!r})' for _ in cols)}, ?)".format("")
    for kind, (table, cols) in INDEX_TABLES.items()
}
#: The kinds whose spans are kept (the span table).
SPANNED_KINDS = ("date", "number", "quantity", "composite")
#: Where lo (then hi) sits in their table rows.
_RANGE_AT = {kind: 1 + INDEX_TABLES[kind][1].index("lo") for kind in SPANNED_KINDS}
_DELETE = [f"DELETE FROM {table} WHERE rid = ?" for table, _ in INDEX_TABLES.values()]


@functools.lru_cache(maxsize=64)
def composite_columns(kinds: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The idx_composite columns of each part of a composite of these component types, in the
    order its index tail lists them: the leading token's (system, code), a token's (system,
    code) or a string's (value, exact) in (a, b), a quantity's (system, code, lo, hi) in
    (a, b, lo, hi), a date's or number's (lo, hi) in the first free range."""
    out: list[tuple[str, ...]] = [("system", "code")]
    ranges = [("lo", "hi"), ("lo2", "hi2")]
    for kind in kinds[1:]:
        if kind == "quantity":
            out.append(("a", "b", *ranges.pop(0)))
        elif kind in ("date", "number"):
            out.append(ranges.pop(0))
        else:
            out.append(("a", "b"))
    return tuple(out)


_COMPOSITE_AT = {c: i for i, c in enumerate(INDEX_TABLES["composite"][1])}


@functools.lru_cache(maxsize=1024)
def _composite_kinds(type: str, code: str) -> tuple[str, ...]:
    from server.search.registry import registry  # the registry itself uses param_id

    param = registry().get(type, code)
    assert param is not None and param.type == "composite", (type, code)
    return tuple(c.param.type for c in param.components)


def composite_row(type: str, code: str, parts: tuple[tuple[Any, ...], ...]) -> tuple[Any, ...]:
    """A composite index row (one tail per component) as idx_composite's value columns."""
    row: list[Any] = ["", "", "", "", 0, 0, 0, 0]
    for columns, tail in zip(composite_columns(_composite_kinds(type, code)), parts, strict=True):
        for column, value in zip(columns, tail, strict=True):
            row[_COMPOSITE_AT[column]] = "" if value is None else value
    return tuple(row)


def migrate(conn: sqlite3.Connection,
            reindex: Callable[[sqlite3.Connection, tuple[str, ...]], None],
            add: Callable[[sqlite3.Connection, tuple[str, ...], bytes], None]) -> None:
    """Bring the database to :data:`SCHEMA_VERSION`. ``reindex`` writes again the index rows of
    some kinds for the resources an older database holds. New in 3: composite rows. New in 4:
    the spans of numbers, quantities and composites (those of dates are from 2, in a table then
    named date_span), and no rows for the parameters that are unions of others. New in 5: a
    number or quantity is stored as it is (lo = hi), no longer widened by its precision, and a
    Range as its bounds. New in 6: a code whose system is implicit (a required binding to one
    code system) has one token row, with that system, no longer a second one without. New in
    7: strings composed again after their accents are dropped (whole Hangul syllables, kana
    with their voicing marks; :exact values in NFC), tokens of text elements (a ContactPoint's
    value, a string) casefolded, and a quantity's comparator leaves out its own value (<5 ends
    below 5). New in 8: a boolean's token has its implicit system (special-values); the
    resources with contained ones have their rows, and a reference to one has a row (it is not
    :missing). New in 9: the ``indexed`` mark (all versions were indexed as they were written
    before). ``add`` writes the rows of some kinds of the resources whose JSON holds a text,
    keeping the rows they have."""
    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    if mode.lower() != "wal":
        raise sqlite3.OperationalError(f"cannot switch the database to WAL mode (got {mode})")
    if _check_version(conn) == SCHEMA_VERSION:  # no write lock to wait for: an --atomic
        return                                  # import holds it for its whole length
    # Another process may be migrating a large database (a minute a million resources): wait
    # for it rather than fail after the usual 30 s.
    conn.execute("PRAGMA busy_timeout = 3600000")
    conn.executescript(_SCHEMA)
    conn.execute("BEGIN IMMEDIATE")  # one process migrates; the others then find it done
    try:
        current = _check_version(conn)
        if 0 < current < 4:
            unions = _union_pids()  # searched through their sources' rows now
            for table, _ in INDEX_TABLES.values():
                conn.executemany(f"DELETE FROM {table} WHERE pid = ?", unions)
            conn.execute("DROP TABLE IF EXISTS date_span")
            conn.execute("INSERT OR REPLACE INTO span SELECT pid, max(hi - lo) FROM idx_date "
                         "WHERE lo > ? AND hi < ? GROUP BY pid", (NEG_INF, POS_INF))
        kinds: tuple[str, ...] = ("number", "quantity", "composite") if 0 < current < 5 else ()
        if 0 < current < 6:
            kinds += ("token",)
        if 0 < current < 7:
            kinds += tuple(k for k in ("string", "token", "quantity", "composite")
                           if k not in kinds)
        if kinds:
            reindex(conn, kinds)
        if 0 < current < 8 and "token" not in kinds:
            from server.search.index import SPECIAL_VALUES

            conn.executemany(
                "UPDATE OR REPLACE idx_token SET system = ? WHERE pid = ? AND system = '' AND "
                "code IN ('true', 'false')", [(SPECIAL_VALUES, pid) for pid in _boolean_pids()])
        if 0 < current < 8:
            add(conn, tuple(k for k in INDEX_TABLES if k != "composite" and k not in kinds),
                b'"contained":')
        if current < 9:
            conn.execute("INSERT INTO indexed SELECT coalesce(max(seq), 0) FROM version "
                         "WHERE NOT EXISTS (SELECT 1 FROM indexed)")
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _union_pids() -> list[tuple[int]]:
    from server.search.registry import registry

    reg = registry()
    return [(param_id(t, code),) for t in reg.resource_types
            for name, param in reg.params_for(t).items() if reg.is_union(t, name)
            for code in param.index_codes()]


def _boolean_pids() -> list[int]:
    """The ids of the token parameters that index booleans."""
    from server.search.registry import registry

    reg = registry()
    return [param_id(t, code) for t in reg.resource_types
            for code, param in reg.params_for(t).items() if param.type == "token" and any(
                i.name == "boolean" for x in param.extractors.values() for i in x.types)]


def _check_version(conn: sqlite3.Connection) -> int:
    current: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if current > SCHEMA_VERSION:
        raise sqlite3.OperationalError(
            f"database schema {current} is newer than this server understands ({SCHEMA_VERSION})")
    return current


@functools.lru_cache(maxsize=8192)
def param_id(type: str, code: str) -> int:
    """Stable 32-bit id of a search parameter of a type (a hash: no table, nothing to roll back),
    or of a contained resource's parameter (``medication>#Medication.code``: the upper half).

    The registry checks at start-up that no two parameters it knows share an id.
    """
    digest = hashlib.blake2b(f"{type}.{code}".encode(), digest_size=4).digest()
    pid = int.from_bytes(digest, "big") >> 1
    # A contained resource's parameter (index.extract: "medication>#Medication.code") never
    # shares an id with one of the resources themselves.
    return pid | 1 << 31 if ">#" in code else pid


def delete_index_rows(conn: sqlite3.Connection, rids: list[tuple[int]]) -> None:
    for sql in _DELETE:
        conn.executemany(sql, rids)


_TWO_COLUMNS = {k for k, (_, cols) in INDEX_TABLES.items() if len(cols) == 2}
_FOUR_COLUMNS = {k for k, (_, cols) in INDEX_TABLES.items() if len(cols) == 4}


def collect_index_rows(into: dict[str, list[tuple[Any, ...]]], rid: int, type: str,
                       indexes: Any) -> None:
    """Add a resource's index rows, as table rows, to ``into`` (kind -> rows). The writer does
    this for every row it writes: the rows of the common lengths are unpacked by name, a third
    of the time of slicing and splicing them."""
    pids = _pids(type)
    for kind, rows in indexes.items():
        if not rows:
            continue
        target = into.setdefault(kind, [])
        if kind == "composite":
            for code, parts in rows:
                target.append((pids[code], *composite_row(type, code, parts), rid))
        elif kind in _TWO_COLUMNS:
            target += [(pids[code], a, b, rid) for code, a, b in rows]
        elif kind in _FOUR_COLUMNS:
            target += [(pids[code], a, b, c, d, rid) for code, a, b, c, d in rows]
        else:
            target += [(pids[row[0]], *row[1:], rid) for row in rows]


class _Pids(dict[str, int]):
    """Code -> :func:`param_id` of one resource type, filled as codes come."""

    def __init__(self, type: str):
        super().__init__()
        self.type = type

    def __missing__(self, code: str) -> int:
        pid = self[code] = param_id(self.type, code)
        return pid


@functools.cache
def _pids(type: str) -> _Pids:
    return _Pids(type)


def insert_index_rows(conn: sqlite3.Connection, rows: dict[str, list[tuple[Any, ...]]]) -> None:
    for kind, table_rows in rows.items():
        if table_rows:
            conn.executemany(_INSERT[kind], table_rows)
    spans: dict[int, float] = {}
    for kind, at in _RANGE_AT.items():
        finite = kind == "date"  # open date rows are looked up on their own; others count
        for row in rows.get(kind, ()):
            lo, hi = row[at], row[at + 1]
            if (not finite or lo > NEG_INF and hi < POS_INF) and hi - lo > spans.get(row[0], -1):
                spans[row[0]] = hi - lo
    if spans:
        conn.executemany("INSERT INTO span (pid, span) VALUES (?, ?) ON CONFLICT (pid) "
                         "DO UPDATE SET span = max(span, excluded.span)", spans.items())

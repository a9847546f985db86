"""The embedded store: one SQLite file in WAL mode under the data dir.

Reads run on the caller's thread over a read connection (a primary-key read costs a few µs,
less than handing it to a thread). Writes go to one writer thread per process, which groups
whatever writes are waiting into one SQLite transaction, each in its own savepoint, and commits
them with one fsync (``synchronous=FULL``): a write is acknowledged only after its commit is on
disk, so ``kill -9`` loses nothing that was acknowledged, and a failing write leaves no trace.
Several processes may open the same file; SQLite's lock serialises their writers.

Layout: ``resource`` holds one row per logical resource (its current version), ``version``
one row per version in commit order (``seq``), and ``idx_*`` the search index rows of current
versions, keyed by the resource's ``rid``. The API's writes are indexed after their commit, in
batches (see :class:`_IndexRows`): ``indexed`` holds the seq through which the index is up to
date, and a search waits for it to reach the last version.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import queue
import sqlite3
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from server.fhir import codec
from server.search import index as search_index
from server.storage import sqlite_indexer, sqlite_schema
from server.storage.base import (
    HistoryPage,
    HistoryQuery,
    IndexRows,
    SearchPage,
    Serialized,
    StoreError,
    Version,
    WriteItem,
    instant,
    same_content,
)

T = TypeVar("T")
log = logging.getLogger(__name__)

_READ_CURRENT = (
    "SELECT r.version, r.updated, r.deleted, v.body, v.method FROM resource r "
    "JOIN version v ON v.seq = r.seq WHERE r.type = ? AND r.id = ?"
)
_READ_VERSION = (
    "SELECT v.version, v.updated, v.body IS NULL, v.body, v.method FROM resource r "
    "JOIN version v ON v.rid = r.rid AND v.version = ? WHERE r.type = ? AND r.id = ?"
)
_MAX_BATCH = 128
#: The writer indexes the backlog when no write came for this long (seconds) and no index
#: process runs, or once it holds this many versions (ten times as many beside an index
#: process); a search has it indexed at once.
INDEX_IDLE = 0.05
INDEX_BACKLOG = 2000
#: Searches that find the index behind the writes have it brought up to date and look again;
#: after this many tries, the writer searches, holding the write lock.
_SEARCH_TRIES = 3
#: The index's mark and the last version's seq.
_MARKS = "SELECT (SELECT seq FROM indexed), coalesce((SELECT max(seq) FROM version), 0)"
#: Batches the writer indexes at a time, at most (new writes may keep coming meanwhile).
_INDEX_BATCHES = 50


def _now_us() -> int:
    return time.time_ns() // 1000


def connect(path: Path, *, readonly: bool = False, bulk: int = 0,
            writers: int = 1) -> sqlite3.Connection:
    """A connection with the store's settings. ``bulk``: for a writer of large transactions
    of about that many resources (an import), which checkpoints the WAL every 256 MiB (the
    index pages its transactions all touch are copied back a quarter as often), and keeps the
    pages they change in memory (about 100 KiB a resource at a million), so that the commit
    writes each of them once; but the caches of the ``writers`` bulk writers (processes) take
    half the machine's memory at most."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 30000")
    conn.execute("PRAGMA synchronous = FULL")
    # Pages are read through the memory map (no system call per page); the writer also keeps
    # a large cache, as its index inserts land all over the B-trees.
    cache_kib = 65536 if readonly else max(262144, min(bulk * 100,
                                                       memory_kib() // 2 // max(writers, 1)))
    conn.execute(f"PRAGMA cache_size = {-cache_kib}")
    conn.execute("PRAGMA mmap_size = 17179869184")
    # Checkpoint every 64 MiB of WAL rather than 4: a page changed by several commits in a row
    # is copied back once.
    conn.execute(f"PRAGMA wal_autocheckpoint = {65536 if bulk else 16384}")
    if bulk:  # and the WAL file shrinks back to 64 MiB once checkpointed
        conn.execute(f"PRAGMA journal_size_limit = {64 << 20}")
    conn.execute("PRAGMA temp_store = MEMORY")
    if readonly:
        conn.execute("PRAGMA query_only = 1")
    return conn


def write_lock(path: Path) -> int:
    """The file the writers of every process take turns on (see :class:`_Writer`)."""
    return os.open(f"{path}.write-lock", os.O_RDWR | os.O_CREAT, 0o600)


def memory_kib() -> int:
    """The machine's memory (KiB); unknown, taken as unbounded."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 1024
    except (ValueError, OSError):
        return 1 << 62


def _vread(conn: sqlite3.Connection, type: str, id: str, version: int) -> Version | None:
    if not 0 < version < 2**63:  # no such version (and beyond SQLite's integers)
        return None
    row = conn.execute(_READ_VERSION, (version, type, id)).fetchone()
    if row is None:
        return None
    return Version(type, id, row[0], row[1], bool(row[2]), row[3], row[4])


def _as_dict(type: str, resource: dict[str, Any] | Serialized) -> dict[str, Any]:
    if not isinstance(resource, Serialized):
        return resource
    meta = {"meta": resource.meta} if resource.meta else {}
    return {"resourceType": type, **meta, **codec.loads(resource.rest)}


#: Index rows waiting to be inserted, past which they are inserted: a write of very many
#: resources (an --atomic import is one) would otherwise hold all of theirs until its commit.
#: Above an import chunk's (20,000 resources, about 300,000 rows), which are inserted together:
#: at 100,000, a chunk's inserts were split, and the import 5 % slower.
PENDING_ROWS = 400_000


class _Ids:
    """The next rid and seq of a commit, looked up at its first write: nothing else allocates
    them while it holds the write lock. A write rolled back to its savepoint leaves a gap."""

    def __init__(self, conn: sqlite3.Connection):
        self.conn = conn
        self.rid = self.seq = 0

    def load(self) -> None:
        if not self.rid:
            self.rid = (self.conn.execute("SELECT max(rid) FROM resource").fetchone()[0] or 0) + 1
            self.seq = (self.conn.execute("SELECT max(seq) FROM version").fetchone()[0] or 0) + 1


class _IndexRows:
    """The search index of one commit: the rows its writes bring, and the mark through which
    every resource's rows are those of its current version (the ``indexed`` table).

    A write given its rows (an import's, extracted in its worker processes) is indexed in its
    commit, once the writes before it are. A write without (the API's) is indexed later, with
    many others, by :func:`index_backlog`: in the index process (server.storage.sqlite_indexer),
    or in the writer when none runs and no write came for a moment, or when the backlog is long;
    and before anything searches (:meth:`SqliteStore.search`; a search inside a transaction
    first calls :meth:`catch_up`). Its rows are the same, as they come from its stored JSON, and
    a search never reads the index while it lags behind the writes.

    Rows are inserted together (one statement per table for the whole group, not per write)
    before anything reads the index tables, before the commit, and whenever
    :data:`PENDING_ROWS` wait. A write that fails is rolled back to its savepoint; rows inserted
    during it, its own and those of the writes before it, go with it. :meth:`undo` drops its own
    rows and puts the others back to be inserted again."""

    def __init__(self, conn: sqlite3.Connection, ids: _Ids):
        self.conn, self.ids = conn, ids
        self.pending: dict[str, list[tuple[Any, ...]]] = {}
        self.count = 0  # rows pending
        # Of each kind, how many pending rows are the earlier writes' (the rest: the current
        # write's); and the earlier writes' rows inserted since the current write began.
        self._earlier: dict[str, int] = {}
        self._inserted: dict[str, list[tuple[Any, ...]]] = {}
        self.mark = self.stored = -1  # the mark (-1: not read yet) and the one in the table
        self._saved = (-1, -1)

    def begin(self) -> None:
        """A write starts (its savepoint is open)."""
        self._earlier = {k: len(v) for k, v in self.pending.items()}
        self._inserted = {}
        self._saved = (self.mark, self.stored)

    def undo(self) -> None:
        """The write begun last was rolled back to its savepoint."""
        kinds = self.pending.keys() | self._inserted.keys()
        self.pending = {
            k: self._inserted.get(k, []) + self.pending.get(k, [])[:self._earlier.get(k, 0)]
            for k in kinds}
        self.count = sum(map(len, self.pending.values()))
        self.mark, self.stored = self._saved
        self.begin()

    def backlog(self) -> int:
        """How many versions were written after the mark (some superseded already)."""
        self.load()
        return self.ids.seq - 1 - self.mark

    def load(self) -> None:
        """Read the mark (and the next ids), once."""
        self.ids.load()
        if self.mark < 0:
            self.mark = self.stored = self.conn.execute("SELECT seq FROM indexed").fetchone()[0]

    def written(self, rows: dict[str, list[tuple[Any, ...]]], stale: list[tuple[int]],
                through: int) -> None:
        """Versions through seq ``through`` were written with their ``rows``, replacing the
        rows of the resources ``stale`` (call :meth:`catch_up` before writing them)."""
        if stale:  # the rows of the versions replaced (and of earlier writes, first) go
            self.flush()
            sqlite_schema.delete_index_rows(self.conn, stale)
        self.add(rows)
        self.mark = through

    def catch_up(self) -> int:
        """Index the versions written after the mark (their resources' current ones); returns
        how many resources were indexed."""
        if self.backlog() <= 0:
            return 0
        top, after, done = self.ids.seq - 1, self.mark, 0
        while batch := read_backlog(self.conn, after, top):
            self.written(batch.rows, batch.stale, batch.through)
            after, done = batch.through, done + batch.resources
        self.mark = top
        return done

    def add(self, rows: dict[str, list[tuple[Any, ...]]]) -> None:
        for kind, new in rows.items():
            self.pending.setdefault(kind, []).extend(new)
            self.count += len(new)
        if self.count >= PENDING_ROWS:
            self.flush()

    def flush(self) -> None:
        sqlite_schema.insert_index_rows(self.conn, self.pending)
        for kind, rows in self.pending.items():
            if self._earlier.get(kind):
                self._inserted.setdefault(kind, []).extend(rows[:self._earlier[kind]])
        self.pending, self._earlier, self.count = {}, {}, 0
        if self.mark != self.stored:
            self.conn.execute("UPDATE indexed SET seq = ?", (self.mark,))
            self.stored = self.mark


#: The current versions written after a mark (``seq`` > ?) through a version (<= ?), in order.
_BACKLOG = ("SELECT v.seq, v.rid, v.type, r.id, v.version, v.body FROM version v JOIN resource r "
            "ON r.rid = v.rid AND r.seq = v.seq WHERE v.seq > ? AND v.seq <= ? "
            "ORDER BY v.seq LIMIT ?")
BACKLOG_BATCH = 2000


@dataclass(frozen=True, slots=True)
class Backlog:
    """Index rows of the ``resources`` whose current versions are all those written after the
    mark through seq ``through``; ``stale``: those of them with earlier versions, whose rows
    (if any) these replace."""

    resources: int
    stale: list[tuple[int]]
    rows: dict[str, list[tuple[Any, ...]]]
    through: int

    def __bool__(self) -> bool:
        return self.resources > 0


def index_backlog(conn: sqlite3.Connection, lock: int) -> int:
    """Index the next :data:`BACKLOG_BATCH` resources of the backlog; returns how many (0:
    there was no backlog). Their rows are extracted before the write lock (``lock``, see
    :class:`_Writer`) is taken, and written if nothing else indexed them meanwhile (a version
    written meanwhile is after the new mark: its resource is indexed again later).

    The connection's transactions need not wait for the disk (``synchronous = NORMAL``): what
    they write can be found again from the versions, and a crash that loses it loses the mark
    with it."""
    conn.execute("BEGIN")
    try:
        mark, top = conn.execute(_MARKS).fetchone()
        batch = read_backlog(conn, mark, top)
    finally:
        conn.execute("COMMIT")
    if not batch:
        return 0
    fcntl.flock(lock, fcntl.LOCK_EX)
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            index = _IndexRows(conn, _Ids(conn))
            index.load()
            if index.mark == mark:
                index.written(batch.rows, batch.stale, batch.through)
                index.flush()
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
    return batch.resources


def read_backlog(conn: sqlite3.Connection, after: int, top: int) -> Backlog:
    """The next :data:`BACKLOG_BATCH` resources whose current versions were written after seq
    ``after`` (through ``top``), with their index rows."""
    found = conn.execute(_BACKLOG, (after, top, BACKLOG_BATCH)).fetchall()
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for _, rid, type, id, _, body in found:
        if body is not None:
            sqlite_schema.collect_index_rows(rows, rid, type, _extract(type, id, body))
    through = found[-1][0] if len(found) == BACKLOG_BATCH else top
    # A first version has no rows to replace (any it has are its own, ignored when inserted).
    return Backlog(len(found), [(row[1],) for row in found if row[4] > 1], rows, through)


def _extract(type: str, id: str, body: bytes) -> IndexRows:
    """The index rows of a stored resource; none (logged) if extraction fails, which leaves
    it out of searches rather than every search waiting on it."""
    try:
        return search_index.extract(codec.loads(body))
    except Exception:
        log.exception("search index rows not extracted", extra={"resource": f"{type}/{id}"})
        return {}


class SqliteTransaction:
    """The :class:`~server.storage.base.Transaction` of the SQLite backend (writer thread only)."""

    def __init__(self, conn: sqlite3.Connection, now: int, search: Callable[..., list[Version]],
                 index: _IndexRows, ids: _Ids):
        self.conn = conn
        self.now = now
        self._search = search
        self.index = index  # the commit's, flushed by the writer before it commits
        self.ids = ids  # the commit's

    def read(self, type: str, id: str) -> Version | None:
        row = self.conn.execute(_READ_CURRENT, (type, id)).fetchone()
        if row is None:
            return None
        return Version(type, id, row[0], row[1], bool(row[2]), row[3], row[4])

    def vread(self, type: str, id: str, version: int) -> Version | None:
        return _vread(self.conn, type, id, version)

    def write(self, type: str, id: str, resource: dict[str, Any], indexes: IndexRows | None,
              method: str) -> Version:
        return self.write_many([(type, id, resource, indexes)], method)[0]

    def write_many(self, items: Sequence[WriteItem], method: str) -> list[Version]:
        """Write many resources with one statement per table (bulk loading); same rules as
        :meth:`write` for each. A resource given twice is written twice, in order."""
        out: list[Version] = []
        start = 0
        seen: set[tuple[str, str]] = set()
        for i, (type, id, _, _) in enumerate(items):
            if (type, id) in seen:  # the second write must see the first: write what we have
                out += self._write_batch(items[start:i], method)
                start, seen = i, set()
            seen.add((type, id))
        return out + self._write_batch(items[start:], method)

    def _current(self, keys: list[tuple[str, str]]) -> dict[tuple[str, str], tuple[Any, ...]]:
        by_type: dict[str, list[str]] = {}
        for type, id in keys:
            by_type.setdefault(type, []).append(id)
        found: dict[tuple[str, str], tuple[Any, ...]] = {}
        for type, ids in by_type.items():
            for i in range(0, len(ids), 500):
                part = ids[i:i + 500]
                rows = self.conn.execute(
                    f"SELECT id, rid, version, deleted, seq FROM resource WHERE type = ? AND "
                    f"id IN ({', '.join('?' for _ in part)})", (type, *part))
                for row in rows:
                    found[(type, row[0])] = row[1:]
        return found

    def _write_batch(self, items: Sequence[WriteItem], method: str) -> list[Version]:
        if not items:
            return []
        conn = self.conn
        # Given their rows, the writes are indexed now (once those before them are); else later.
        now = all(indexes is not None for _, _, _, indexes in items)
        if now:
            self.index.catch_up()
        current = self._current([(t, i) for t, i, _, _ in items])
        self.ids.load()
        next_rid, next_seq = self.ids.rid, self.ids.seq
        inserts: list[tuple[Any, ...]] = []
        updates: list[tuple[Any, ...]] = []
        versions: list[tuple[Any, ...]] = []
        stale: list[tuple[int]] = []
        index_rows: dict[str, list[tuple[Any, ...]]] = {}
        out: list[Version] = []
        stamp = instant(self.now)
        for type, id, resource, indexes in items:
            row = current.get((type, id))
            if row is not None and not row[2]:
                body, updated, how = conn.execute(
                    "SELECT body, updated, method FROM version WHERE seq = ?", (row[3],)).fetchone()
                if same_content(codec.loads(body), _as_dict(type, resource)):
                    out.append(Version(type, id, row[1], updated, False, body, how))
                    continue
            version = row[1] + 1 if row else 1
            meta = dict((resource.meta if isinstance(resource, Serialized)
                         else resource.get("meta")) or {})
            meta["versionId"] = str(version)
            meta["lastUpdated"] = stamp
            if isinstance(resource, Serialized):  # the same bytes, spliced
                head = codec.dumps({"resourceType": type, "id": id, "meta": meta})
                rest = resource.rest
                body = head[:-1] + (b"," + rest[1:] if len(rest) > 2 else b"}")
            else:
                resource.pop("id", None)
                resource.pop("meta", None)
                body_dict = {"resourceType": type, "id": id, "meta": meta, **resource}
                resource.clear()
                resource.update(body_dict)
                body = codec.dumps(body_dict)
            seq = next_seq
            next_seq += 1
            if row is None:
                rid = next_rid
                next_rid += 1
                inserts.append((rid, type, id, version, self.now, seq))
            else:
                rid = row[0]
                stale.append((rid,))
                updates.append((version, self.now, seq, rid))
            versions.append((seq, rid, type, version, self.now, method, body))
            if now:
                sqlite_schema.collect_index_rows(index_rows, rid, type, indexes)
            out.append(Version(type, id, version, self.now, False, body, method))
        self.ids.rid, self.ids.seq = next_rid, next_seq
        if now:
            self.index.written(index_rows, stale, next_seq - 1)
        if inserts:
            conn.executemany("INSERT INTO resource (rid, type, id, version, updated, deleted, "
                             "seq) VALUES (?, ?, ?, ?, ?, 0, ?)", inserts)
        if versions:
            conn.executemany("INSERT INTO version (seq, rid, type, version, updated, method, "
                             "body) VALUES (?, ?, ?, ?, ?, ?, ?)", versions)
        if updates:
            conn.executemany("UPDATE resource SET version = ?, updated = ?, deleted = 0, "
                             "seq = ? WHERE rid = ?", updates)
        return out

    def delete(self, type: str, id: str) -> Version | None:
        conn = self.conn
        row = conn.execute("SELECT rid, version, deleted FROM resource WHERE type = ? AND id = ?",
                           (type, id)).fetchone()
        if row is None:
            return None
        rid, version, deleted = row
        if deleted:
            return self.read(type, id)
        version += 1
        now = self.index.backlog() == 0  # its rows go now, unless other writes wait first
        seq = self.ids.seq
        self.ids.seq += 1
        conn.execute("INSERT INTO version (seq, rid, type, version, updated, method, body) "
                     "VALUES (?, ?, ?, ?, ?, 'DELETE', NULL)", (seq, rid, type, version, self.now))
        conn.execute("UPDATE resource SET version = ?, updated = ?, deleted = 1, seq = ? "
                     "WHERE rid = ?", (version, self.now, seq, rid))
        if now:
            self.index.written({}, [(rid,)], seq)
        return Version(type, id, version, self.now, True, None, "DELETE")

    def search(self, query: Any, limit: int | None = None) -> list[Version]:
        self.index.catch_up()
        self.index.flush()
        return self._search(self.conn, query, limit)

    def search_page(self, query: Any) -> SearchPage:
        from server.storage import sqlite_search

        self.index.catch_up()
        self.index.flush()
        return sqlite_search.run_search(self.conn, query)


class _Op:
    """A queued write: ``fn``, and the future its caller waits on, an asyncio one (of
    ``loop``) or, for callers without an event loop, a thread one. Without ``fn``: a search
    waits for the backlog to be indexed."""

    __slots__ = ("fn", "future", "loop")

    def __init__(self, fn: Callable[[SqliteTransaction], Any] | None,
                 future: Future[Any] | asyncio.Future[Any],
                 loop: asyncio.AbstractEventLoop | None = None):
        self.fn = fn
        self.future = future
        self.loop = loop


Outcome = tuple[_Op, Any, BaseException | None]


def _settle(outcomes: list[Outcome]) -> None:
    """Give the callers their results (on the loop of their futures, or on any thread for
    thread futures); a caller that stopped waiting is skipped."""
    for op, result, problem in outcomes:
        if op.future.done():  # cancelled
            continue
        if problem is None:
            op.future.set_result(result)
        else:
            op.future.set_exception(problem)


def _answer(outcomes: list[Outcome]) -> None:
    """Settle the futures of a group: one wake-up per event loop for the whole group, rather
    than one per write (each costs the writer a system call and a turn at the interpreter
    lock)."""
    by_loop: dict[asyncio.AbstractEventLoop | None, list[Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].loop, []).append(outcome)
    for loop, settled in by_loop.items():
        if loop is None:
            _settle(settled)
            continue
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting
            loop.call_soon_threadsafe(_settle, settled)


class _Writer(threading.Thread):
    """Executes queued write functions in grouped, durable SQLite transactions."""

    def __init__(self, path: Path, search: Callable[..., list[Version]], bulk: int,
                 writers: int, indexer: bool):
        super().__init__(name="sqlite-writer", daemon=True)
        self.path = path
        self.indexer = indexer  # an index process may run (the backlog is left to it)
        self.bulk, self.writers = bulk, writers
        self.search = search
        self.queue: queue.SimpleQueue[_Op | None] = queue.SimpleQueue()
        self.ready = threading.Event()
        self.startup_error: BaseException | None = None
        self.lock = -1
        self.backlog = 1  # versions not indexed yet, as of the last commit (1: not known yet)

    def run(self) -> None:
        try:
            conn = connect(self.path, bulk=self.bulk, writers=self.writers)
            # Writers of several processes take turns on this lock before SQLite's: a blocked
            # flock wakes the moment the holder lets go, where SQLite's busy handler sleeps for
            # up to 100 ms between tries, leaving the database idle.
            self.lock = write_lock(self.path)
        except BaseException as exc:  # reported to the opener
            self.startup_error = exc
            self.ready.set()
            return
        self.ready.set()
        try:
            while True:
                try:
                    op = self.queue.get(timeout=INDEX_IDLE if self.backlog else None)
                except queue.Empty:  # nothing to write for a moment
                    if self._indexer_runs():
                        self.backlog = 0  # the index process sees to it
                    else:
                        self._index(conn)
                    continue
                if op is None:
                    return
                if op.fn is None:
                    self._index(conn)
                    _answer([(op, None, None)])
                    continue
                self._commit(conn, op)
                op = None  # what the writes hold goes now, not at the next write
                if self.backlog >= INDEX_BACKLOG and (self.backlog >= 10 * INDEX_BACKLOG
                                                      or not self._indexer_runs()):
                    self._index(conn)
        finally:
            conn.close()
            os.close(self.lock)

    def _batch(self, first: _Op) -> list[_Op]:
        """The write and those queued behind it, up to _MAX_BATCH."""
        batch = [first]
        while len(batch) < _MAX_BATCH:
            try:
                nxt = self.queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:  # closing: after this commit
                self.queue.put(None)
                break
            batch.append(nxt)
        return batch

    def _commit(self, conn: sqlite3.Connection, first: _Op) -> None:
        # The group is gathered once the lock is held: the writes that queue while another
        # process commits join it, and the processes of a server take turns with groups as
        # large as one process's, each of one commit (one fsync), rather than small ones.
        fcntl.flock(self.lock, fcntl.LOCK_EX)
        try:
            outcomes = self._run(conn, self._batch(first))
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
        _answer(outcomes)

    def _indexer_runs(self) -> bool:
        return self.indexer and sqlite_indexer.running(self.path)

    def _index(self, conn: sqlite3.Connection) -> None:
        """Index the backlog (not waiting for the disk: see :func:`index_backlog`)."""
        conn.execute("PRAGMA synchronous = NORMAL")
        try:
            for _ in range(_INDEX_BATCHES):
                if not index_backlog(conn, self.lock):
                    self.backlog = 0
                    break
        except Exception:  # the writer goes on: a search then indexes in its transaction
            log.exception("search index not brought up to date")
        finally:
            conn.execute("PRAGMA synchronous = FULL")

    def _run(self, conn: sqlite3.Connection,
             batch: list[_Op]) -> list[Outcome]:
        outcomes: list[Outcome] = []
        try:
            conn.execute("BEGIN IMMEDIATE")
            last = conn.execute("SELECT max(updated) FROM version").fetchone()[0] or 0
            ids = _Ids(conn)
            index = _IndexRows(conn, ids)
            for op in batch:
                if op.fn is None:  # a search waits: the writes before are indexed for it
                    index.catch_up()
                    outcomes.append((op, None, None))
                    continue
                now = max(_now_us(), last + 1)
                last = now
                conn.execute("SAVEPOINT op")
                index.begin()
                try:
                    result = op.fn(SqliteTransaction(conn, now, self.search, index, ids))
                except BaseException as failure:
                    conn.execute("ROLLBACK TO op")
                    conn.execute("RELEASE op")
                    index.undo()
                    outcomes.append((op, None, failure))
                else:
                    conn.execute("RELEASE op")
                    outcomes.append((op, result, None))
            index.flush()
            self.backlog = index.backlog()
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            error = StoreError(f"write failed: {exc}")
            outcomes = [(op, None, error) for op in batch]
        return outcomes


class SqliteStore:
    """:class:`~server.storage.base.ResourceStore` over one SQLite file."""

    def __init__(self, path: Path, *, bulk: int = 0, writers: int = 1,
                 indexer: str | None = None):
        """``indexer``: start the index process (server.storage.sqlite_indexer), which logs
        at that level."""
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with connect(self.path) as conn:
            sqlite_schema.migrate(conn, _reindex, _add_rows)
        self._reader = connect(self.path, readonly=True)
        self._reader_lock = threading.Lock()
        from server.storage import sqlite_search

        self._search_sql = sqlite_search
        self._writer = _Writer(self.path, sqlite_search.run_in_transaction, bulk, writers,
                               indexer is not None)
        self._writer.start()
        self._writer.ready.wait()
        if self._writer.startup_error is not None:
            raise StoreError(f"cannot open {self.path}: {self._writer.startup_error}")
        self._indexer: subprocess.Popen[bytes] | None = None
        if indexer is not None:
            self._indexer = sqlite_indexer.start(self.path, indexer)

    # -- reads -----------------------------------------------------------------------------

    def _query(self, sql: str, params: Iterable[Any]) -> list[Any]:
        # The read connection is shared by the event loop thread and helper threads.
        with self._reader_lock:
            return self._reader.execute(sql, tuple(params)).fetchall()

    async def read(self, type: str, id: str) -> Version | None:
        return self.read_sync(type, id)

    def read_sync(self, type: str, id: str) -> Version | None:
        with self._reader_lock:
            row = self._reader.execute(_READ_CURRENT, (type, id)).fetchone()
        if row is None:
            return None
        return Version(type, id, row[0], row[1], bool(row[2]), row[3], row[4])

    async def vread(self, type: str, id: str, version: int) -> Version | None:
        with self._reader_lock:
            return _vread(self._reader, type, id, version)

    async def history(self, query: HistoryQuery) -> HistoryPage:
        where: list[str] = []
        params: list[Any] = []
        if query.id is not None:
            where.append("r.type = ? AND r.id = ?")
            params += [query.type, query.id]
        elif query.type is not None:
            where.append("v.type = ?")
            params.append(query.type)
        if query.since is not None:
            where.append("v.updated >= ?")
            params.append(query.since)
        if query.at is not None:
            # Versions current at some point in [lo, hi]: made by hi, and not replaced by lo.
            where.append("v.updated <= ? AND NOT EXISTS (SELECT 1 FROM version w WHERE "
                         "w.rid = v.rid AND w.version > v.version AND w.updated <= ?)")
            params += [query.at[1], query.at[0]]
        if query.cursor is not None:
            where.append("v.seq < ?")
            params.append(_decode_cursor(query.cursor))
        sql = ("SELECT r.type, r.id, v.version, v.updated, v.body, v.method, v.seq "
               "FROM version v JOIN resource r ON r.rid = v.rid")
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY v.seq DESC LIMIT ?"
        rows = self._query(sql, [*params, query.count + 1])
        entries = [Version(t, i, ver, upd, body is None, body, method)
                   for t, i, ver, upd, body, method, _ in rows[: query.count]]
        next_cursor = str(rows[query.count - 1][6]) if len(rows) > query.count else None
        total = None
        if query.id is not None and query.cursor is None and query.since is None and query.at is None:
            total = len(entries) if next_cursor is None else None
        return HistoryPage(entries, next_cursor, total)

    async def search(self, query: Any) -> SearchPage:
        """A search reads a snapshot in which the index holds every version written; one that
        finds the index behind waits for the writer to index the backlog."""
        for _ in range(_SEARCH_TRIES):
            with self._reader_lock:
                self._reader.execute("BEGIN")
                try:
                    mark, last = self._reader.execute(_MARKS).fetchone()
                    if mark >= last:
                        return self._search_sql.run_search(self._reader, query)
                finally:
                    self._reader.execute("COMMIT")
            await self._queued(None)
        return await self.run(lambda tx: tx.search_page(query))

    # -- writes ----------------------------------------------------------------------------

    async def run(self, fn: Callable[[SqliteTransaction], T]) -> T:
        result: T = await self._queued(fn)
        return result

    async def _queued(self, fn: Callable[[SqliteTransaction], Any] | None) -> Any:
        """Queue ``fn`` for the writer (None: have the backlog indexed) and wait for it."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._writer.queue.put(_Op(fn, future, loop))
        return await future

    def run_sync(self, fn: Callable[[SqliteTransaction], T]) -> T:
        """For command-line tools without an event loop."""
        future: Future[T] = Future()
        self._writer.queue.put(_Op(fn, future))
        return future.result()

    async def ping(self) -> None:
        if not self._writer.is_alive():
            raise StoreError("the writer thread has stopped")
        try:
            self._query("SELECT 1", ())
        except sqlite3.Error as exc:
            raise StoreError(f"database not readable: {exc}") from None

    async def close(self) -> None:
        self.close_sync()

    def close_sync(self) -> None:
        if self._indexer is not None:  # it stops once its batch is written
            assert self._indexer.stdin is not None
            self._indexer.stdin.close()
            try:
                self._indexer.wait(30)
            except subprocess.TimeoutExpired:
                self._indexer.kill()
                self._indexer.wait()
        if self._writer.is_alive():
            self._writer.queue.put(None)
            self._writer.join()
        self._reader.close()


def _reindex(conn: sqlite3.Connection, kinds: tuple[str, ...]) -> None:
    """Write again the index rows of these kinds for the current resources (and the spans of
    their parameters), as the extraction of this version gives them."""
    tables = [sqlite_schema.INDEX_TABLES[kind][0] for kind in kinds]
    spanned = [sqlite_schema.INDEX_TABLES[kind][0] for kind in kinds
               if kind in sqlite_schema.SPANNED_KINDS]
    if spanned:
        conn.execute("DELETE FROM span WHERE pid IN (" + " UNION ".join(
            f"SELECT DISTINCT pid FROM {table}" for table in spanned) + ")")
    for table in tables:
        conn.execute(f"DELETE FROM {table}")
    _write_rows(conn, kinds)


def _add_rows(conn: sqlite3.Connection, kinds: tuple[str, ...], marker: bytes) -> None:
    """Add the index rows of these kinds that the current resources whose JSON holds
    ``marker`` lack: those this version's extraction gives them and an older one did not."""
    _write_rows(conn, kinds, "AND instr(v.body, ?) > 0", (marker,))


def _write_rows(conn: sqlite3.Connection, kinds: tuple[str, ...], where: str = "",
                args: tuple[Any, ...] = ()) -> None:
    """Insert the index rows of these kinds of the current resources (those ``where`` picks)."""
    from server.search.registry import registry

    reg = registry()
    types = [t for t in reg.resource_types
             if any(p.type in kinds for p in reg.params_for(t).values())]
    done = 0
    for type in types:
        after = 0
        while rows := conn.execute(
                "SELECT r.rid, v.body FROM resource r JOIN version v ON v.seq = r.seq WHERE "
                f"r.type = ? AND r.rid > ? AND r.deleted = 0 {where} ORDER BY r.rid LIMIT 1000",
                (type, after, *args)).fetchall():
            index_rows: dict[str, list[tuple[Any, ...]]] = {}
            for rid, body in rows:
                found = search_index.extract(codec.loads(body))
                sqlite_schema.collect_index_rows(index_rows, rid, type,
                                                 {kind: found[kind] for kind in kinds})
            sqlite_schema.insert_index_rows(conn, index_rows)
            after = rows[-1][0]
            done += len(rows)
    if done:
        log.info("search index rows written again", extra={"resources": done,
                                                           "kinds": list(kinds)})


def _decode_cursor(cursor: str) -> int:
    try:
        seq = int(cursor)
    except ValueError:
        raise ValueError("invalid page cursor") from None
    if not 0 < seq < 2**63:
        raise ValueError("invalid page cursor")
    return seq

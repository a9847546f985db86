"""Writes waiting together share one commit, and their index rows are inserted together: each
write must still see the rows of those before it, and one that fails must take its own rows
away and none of the others' (server.storage.sqlite)."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from pathlib import Path
from typing import Any

import pytest

from server.search.index import extract
from server.search.query import parse
from server.storage.base import HistoryQuery
from server.storage.sqlite import SqliteStore


def patient(id_: str, family: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "id": id_, "name": [{"family": family}]}


def names(store: SqliteStore, family: str) -> list[str]:
    page = asyncio.run(store.search(parse(("Patient",), [("name:exact", family)])))
    return sorted(v.id for v in page.matches)


def in_one_group(store: SqliteStore, *fns: Any) -> list[Any]:
    """Run ``fns`` as separate writes committed together: the writer is held by a first write
    until all of them wait in its queue."""
    release = threading.Event()

    async def main() -> list[Any]:
        blocker = asyncio.ensure_future(store.run(lambda tx: release.wait(10)))
        await asyncio.sleep(0.2)  # the writer holds the blocker; the others queue behind it
        futures = [asyncio.ensure_future(store.run(fn)) for fn in fns]
        await asyncio.sleep(0.2)
        release.set()
        await blocker
        return list(await asyncio.gather(*futures, return_exceptions=True))

    return asyncio.run(main())


def write(body: dict[str, Any]) -> Any:
    return lambda tx: tx.write("Patient", body["id"], dict(body), extract(body), "PUT")


@pytest.fixture
def store(tmp_path: Path) -> Any:
    s = SqliteStore(tmp_path / "groups.db")
    yield s
    s.close_sync()


def test_a_write_sees_the_index_rows_of_the_writes_before_it(store: SqliteStore) -> None:
    def search_then_write(tx: Any) -> list[str]:
        seen = [v.id for v in tx.search(parse(("Patient",), [("name:exact", "Alpha")]))]
        tx.write("Patient", "c", patient("c", "Gamma"), extract(patient("c", "Gamma")), "PUT")
        return seen

    results = in_one_group(store, write(patient("a", "Alpha")), write(patient("a", "Beta")),
                           write(patient("b", "Alpha")), search_then_write)
    assert results[3] == ["b"]  # a was renamed by the second write, b is new
    assert names(store, "Alpha") == ["b"] and names(store, "Beta") == ["a"]
    assert names(store, "Gamma") == ["c"]


def test_a_failing_write_takes_its_rows_and_leaves_the_others(store: SqliteStore) -> None:
    def write_search_fail(tx: Any) -> None:
        tx.write("Patient", "x", patient("x", "Xeno"), extract(patient("x", "Xeno")), "PUT")
        # the rows of a (still waiting) and of x are inserted for the search
        assert [v.id for v in tx.search(parse(("Patient",), [("name:exact", "Alpha")]))] == ["a"]
        assert [v.id for v in tx.search(parse(("Patient",), [("name:exact", "Xeno")]))] == ["x"]
        raise ValueError("refused")

    results = in_one_group(store, write(patient("a", "Alpha")), write_search_fail,
                           write(patient("b", "Alpha")), write(patient("d", "Delta")))
    assert isinstance(results[1], ValueError)
    assert store.read_sync("Patient", "x") is None
    assert names(store, "Alpha") == ["a", "b"]  # a's rows, rolled back with x's, are back
    assert names(store, "Xeno") == [] and names(store, "Delta") == ["d"]


def test_writes_deletes_and_rollbacks_in_one_commit_number_versions_in_order(
        store: SqliteStore) -> None:
    """A commit hands out resource and version numbers from one counter: a rolled-back write
    leaves a gap, a delete takes the next number like a write, and history stays in order."""
    def write_then_fail(tx: Any) -> None:
        tx.write("Patient", "x", patient("x", "Xeno"), extract(patient("x", "Xeno")), "PUT")
        raise ValueError("refused")

    results = in_one_group(store, write(patient("a", "Alpha")),
                           lambda tx: tx.delete("Patient", "a"), write(patient("b", "Beta")),
                           write_then_fail, write(patient("a", "Again")))
    assert isinstance(results[3], ValueError)
    assert [v.version for v in (results[0], results[1], results[4])] == [1, 2, 3]
    assert store.read_sync("Patient", "x") is None
    history = asyncio.run(store.history(HistoryQuery(type="Patient", count=10))).entries
    assert [(v.id, v.version, v.deleted) for v in history] == [
        ("a", 3, False), ("b", 1, False), ("a", 2, True), ("a", 1, False)]
    assert names(store, "Again") == ["a"] and names(store, "Alpha") == []
    assert in_one_group(store, write(patient("c", "Gamma")))[0].version == 1  # next commit


def test_a_bulk_writer_checkpoints_less_often_and_keeps_its_chunks_pages(tmp_path: Path) -> None:
    """An import's writers checkpoint every 256 MiB of WAL (the server's every 64 MiB), shrink
    the WAL file back to 64 MiB once it is checkpointed, and keep about 100 KiB of pages in
    memory per resource of a transaction (never less than the server's writer, 256 MiB)."""
    def settings(bulk: int) -> tuple[int, int, int]:
        store = SqliteStore(tmp_path / "c.db", bulk=bulk)
        try:
            return store.run_sync(lambda tx: tuple(
                tx.conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("wal_autocheckpoint", "journal_size_limit", "cache_size")))
        finally:
            store.close_sync()

    assert settings(bulk=0) == (16384, -1, -262144)
    assert settings(bulk=1000) == (65536, 64 << 20, -262144)
    assert settings(bulk=20000) == (65536, 64 << 20, -2000000)


def test_a_caller_that_stops_waiting_leaves_the_writer_working(store: SqliteStore) -> None:
    # A client that disconnects cancels its request while its write waits in the queue: the
    # write still commits, and the writes after it are answered.
    release = threading.Event()

    async def main() -> list[str]:
        blocker = asyncio.ensure_future(store.run(lambda tx: release.wait(10)))
        await asyncio.sleep(0.2)
        gone = asyncio.ensure_future(store.run(write(patient("a", "Alpha"))))
        kept = asyncio.ensure_future(store.run(write(patient("b", "Beta"))))
        await asyncio.sleep(0.1)
        gone.cancel()
        release.set()
        await blocker
        await asyncio.wait_for(kept, 10)
        await asyncio.wait_for(store.run(write(patient("c", "Gamma"))), 10)
        return [v.id for v in [await store.read("Patient", i) for i in "abc"] if v]

    assert asyncio.run(main()) == ["a", "b", "c"]
    assert names(store, "Gamma") == ["c"]



def test_a_long_write_inserts_its_index_rows_as_they_pile_up(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write of very many resources (an --atomic import is one) does not hold all their index
    rows until its commit: past a bound, those waiting are inserted."""
    monkeypatch.setattr("server.storage.sqlite.PENDING_ROWS", 10)
    held: list[int] = []

    def many(tx: Any) -> None:
        for i in range(40):
            body = patient(f"m{i}", "Many")
            tx.write("Patient", body["id"], body, extract(body), "PUT")
            held.append(tx.index.count)

    in_one_group(store, many)
    assert max(held) < 10 + 5 and len(held) == 40  # a write adds at most a few rows
    page = asyncio.run(store.search(parse(("Patient",), [("name:exact", "Many"), ("_count", "50")])))
    assert sorted(v.id for v in page.matches) == sorted(f"m{i}" for i in range(40))


def test_rows_inserted_early_for_a_write_that_fails_leave_the_others(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows of the writes before a failing one, inserted while it ran, are inserted again once it
    is rolled back; its own go."""
    monkeypatch.setattr("server.storage.sqlite.PENDING_ROWS", 3)

    def many_then_fail(tx: Any) -> None:
        for i in range(10):
            body = patient(f"x{i}", "Xeno")
            tx.write("Patient", body["id"], body, extract(body), "PUT")
        raise ValueError("refused")

    results = in_one_group(store, write(patient("a", "Alpha")), write(patient("b", "Alpha")),
                           many_then_fail, write(patient("d", "Delta")))
    assert isinstance(results[2], ValueError)
    assert names(store, "Alpha") == ["a", "b"] and names(store, "Xeno") == []
    assert names(store, "Delta") == ["d"]


def test_a_store_opens_and_reads_while_another_process_holds_a_long_write(
        tmp_path: Path) -> None:
    """A server started during an --atomic import (one write transaction for its whole length)
    opens its store and answers reads: it waits for the write lock only to migrate an older
    database."""
    import sqlite3

    path = tmp_path / "busy.db"
    first = SqliteStore(path)
    asyncio.run(first.run(write(patient("a", "Alpha"))))
    first.close_sync()
    importer = sqlite3.connect(path, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")
    importer.execute("DELETE FROM idx_string")
    opened: list[SqliteStore] = []
    opener = threading.Thread(target=lambda: opened.append(SqliteStore(path)), daemon=True)
    opener.start()
    opener.join(20)  # it waited for the lock: an hour (the migration's busy timeout)
    try:
        assert opened, "the store waited for the other process's write transaction"
        assert opened[0].read_sync("Patient", "a") is not None
        assert names(opened[0], "Alpha") == ["a"]  # not the uncommitted deletion
    finally:
        importer.execute("ROLLBACK")
        importer.close()
        opener.join(5)
        for store in opened:
            store.close_sync()


def test_built_in_resources_already_installed_are_not_written_again(tmp_path: Path) -> None:
    """A server starting beside a long write (an --atomic import) does not wait for it: the
    definitions it ships, once stored as they are, are checked by reading, with no write."""
    import sqlite3

    from server import builtin

    path = tmp_path / "busy.db"
    first = SqliteStore(path)
    assert asyncio.run(builtin.install(first)) > 0
    first.close_sync()
    importer = sqlite3.connect(path, isolation_level=None)
    importer.execute("BEGIN IMMEDIATE")
    store = SqliteStore(path)
    done: list[int] = []
    installer = threading.Thread(target=lambda: done.append(asyncio.run(builtin.install(store))),
                                 daemon=True)
    installer.start()
    installer.join(30)  # it waited for the write lock: 30 s, then failed
    try:
        assert done == [0]
    finally:
        importer.execute("ROLLBACK")
        importer.close()
        installer.join(35)
        store.close_sync()


def test_writes_queued_while_another_process_commits_join_one_commit(store: SqliteStore) -> None:
    """The processes of a server take turns at the write lock: the writes that queue while
    another one holds it are committed together once it is free, not the first alone."""
    import fcntl
    import os

    lock = os.open(f"{store.path}.write-lock", os.O_RDWR)
    commits: list[Any] = []

    def note(tx: Any) -> None:
        commits.append(tx.index)  # one per commit (kept: no id is reused)

    async def main() -> None:
        fcntl.flock(lock, fcntl.LOCK_EX)  # as another process's writer does
        try:
            first = asyncio.ensure_future(store.run(note))
            await asyncio.sleep(0.2)  # the writer has taken it and waits for the lock
            others = [asyncio.ensure_future(store.run(note)) for _ in range(4)]
            await asyncio.sleep(0.2)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        await asyncio.gather(first, *others)

    try:
        asyncio.run(main())
    finally:
        os.close(lock)
    assert len(commits) == 5 and len({id(c) for c in commits}) == 1


# -- writes given without their rows (the API's): indexed after their commit -----------------

def later(body: dict[str, Any]) -> Any:
    """A write as the API makes it: without its index rows, which the store extracts."""
    return lambda tx: tx.write("Patient", body["id"], dict(body), None, "PUT")


def marks(store: SqliteStore | Path) -> tuple[int, int]:
    """(the seq through which the index is up to date, the last version's seq)."""
    import sqlite3

    conn = sqlite3.connect(store if isinstance(store, Path) else store.path)
    try:
        return conn.execute("SELECT (SELECT seq FROM indexed), "
                            "(SELECT max(seq) FROM version)").fetchone()
    finally:
        conn.close()


def test_a_write_without_rows_is_found_by_the_next_search(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.storage.sqlite.INDEX_IDLE", 3600)  # no indexing when idle
    in_one_group(store, later(patient("a", "Alpha")), later(patient("b", "Beta")))
    assert marks(store)[0] < marks(store)[1]  # the index is behind the writes
    assert names(store, "Alpha") == ["a"]  # the search had it brought up to date first
    assert marks(store)[0] == marks(store)[1]
    assert names(store, "Beta") == ["b"]


def test_the_writer_indexes_the_backlog_once_no_write_comes(store: SqliteStore) -> None:
    import time

    in_one_group(store, later(patient("a", "Alpha")))
    deadline = time.monotonic() + 10
    while marks(store)[0] < marks(store)[1] and time.monotonic() < deadline:
        time.sleep(0.02)
    assert marks(store)[0] == marks(store)[1]


def test_the_writer_indexes_a_long_backlog_between_writes(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.storage.sqlite.INDEX_IDLE", 3600)
    monkeypatch.setattr("server.storage.sqlite.INDEX_BACKLOG", 5)
    in_one_group(store, *(later(patient(f"p{i}", "Many")) for i in range(6)))
    in_one_group(store, later(patient("q", "Other")))  # the writer indexed after the first
    indexed, last = marks(store)
    assert indexed == last - 1


def test_updates_and_deletions_without_rows_replace_the_rows(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.storage.sqlite.INDEX_IDLE", 3600)
    in_one_group(store, later(patient("a", "Alpha")), later(patient("b", "Alpha")))
    assert names(store, "Alpha") == ["a", "b"]
    in_one_group(store, later(patient("a", "Beta")), lambda tx: tx.delete("Patient", "b"))
    assert names(store, "Alpha") == [] and names(store, "Beta") == ["a"]
    # rows given for one write, after others without: those are indexed first
    in_one_group(store, later(patient("a", "Gamma")), write(patient("c", "Gamma")))
    assert marks(store)[0] == marks(store)[1]
    assert names(store, "Gamma") == ["a", "c"] and names(store, "Beta") == []


def test_a_search_inside_a_write_sees_the_writes_without_rows_before_it(
        store: SqliteStore) -> None:
    def search(tx: Any) -> list[str]:
        return sorted(v.id for v in tx.search(parse(("Patient",), [("name:exact", "Alpha")])))

    results = in_one_group(store, later(patient("a", "Alpha")), later(patient("b", "Beta")),
                           later(patient("b", "Alpha")), search)
    assert results[3] == ["a", "b"]


def test_a_failing_write_that_indexed_the_backlog_leaves_it_to_be_indexed_again(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("server.storage.sqlite.INDEX_IDLE", 3600)

    def search_then_fail(tx: Any) -> None:
        assert [v.id for v in tx.search(parse(("Patient",), [("name:exact", "Alpha")]))] == ["a"]
        raise ValueError("refused")

    results = in_one_group(store, later(patient("a", "Alpha")), search_then_fail,
                           later(patient("b", "Alpha")))
    assert isinstance(results[1], ValueError)
    assert marks(store)[0] < marks(store)[1]  # what the failing write indexed went with it
    assert names(store, "Alpha") == ["a", "b"]


def test_another_store_on_the_same_file_finds_the_writes(tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """The processes of a server: one writes, another searches (and has the index brought up
    to date by its own writer)."""
    monkeypatch.setattr("server.storage.sqlite.INDEX_IDLE", 3600)
    first, second = SqliteStore(tmp_path / "two.db"), SqliteStore(tmp_path / "two.db")
    try:
        in_one_group(first, later(patient("a", "Alpha")))
        assert names(second, "Alpha") == ["a"]
        in_one_group(first, later(patient("a", "Beta")))
        assert names(second, "Alpha") == [] and names(second, "Beta") == ["a"]
    finally:
        first.close_sync()
        second.close_sync()


_FLIP = """
import sys, time
sys.path.insert(0, {root!r})
from server.storage.sqlite import SqliteStore
store = SqliteStore({path!r})
n, end = 0, time.monotonic() + {seconds}
while time.monotonic() < end:
    body = {{"resourceType": "Patient", "id": f"p{{n % 20}}",
             "name": [{{"family": "Alpha" if n // 20 % 2 else "Beta"}}]}}
    store.run_sync(lambda tx: tx.write("Patient", body["id"], body, None, "PUT"))
    n += 1
store.close_sync()
print(n)
"""


def test_searches_while_another_process_writes_see_whole_versions(tmp_path: Path) -> None:
    """A search reads index rows and resources of one moment: never a resource found by the
    rows of a version it no longer has."""
    import subprocess
    import sys
    import time

    path = tmp_path / "two.db"
    SqliteStore(path).close_sync()
    root = str(Path(__file__).resolve().parents[1])
    writer = subprocess.Popen([sys.executable, "-c", _FLIP.format(root=root, path=str(path),
                                                                   seconds=3)],
                              stdout=subprocess.PIPE, text=True)
    store = SqliteStore(path)
    try:
        seen, end = 0, time.monotonic() + 3
        while time.monotonic() < end:
            page = asyncio.run(store.search(parse(("Patient",), [("name:exact", "Alpha"),
                                                                 ("_count", "50")])))
            for v in page.matches:
                assert b'"Alpha"' in (v.body or b""), v
            seen += len(page.matches)
        assert seen > 0
    finally:
        written = writer.communicate(timeout=30)[0]
        store.close_sync()
    assert int(written) > 100


_WRITE_AND_HANG = """
import sys, time
sys.path.insert(0, {root!r})
from server.storage import sqlite
sqlite.INDEX_IDLE = 3600
store = sqlite.SqliteStore({path!r})
for n in range(30):
    body = {{"resourceType": "Patient", "id": f"k{{n}}", "name": [{{"family": "Killed"}}]}}
    store.run_sync(lambda tx: tx.write("Patient", body["id"], body, None, "PUT"))
print("written", flush=True)
time.sleep(3600)
"""


def test_writes_acknowledged_before_a_kill_are_indexed_after_it(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = tmp_path / "killed.db"
    root = str(Path(__file__).resolve().parents[1])
    writer = subprocess.Popen([sys.executable, "-c", _WRITE_AND_HANG.format(root=root,
                                                                             path=str(path))],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "written\n"
    finally:
        writer.kill()  # SIGKILL
        writer.wait(10)
    indexed, last = marks(path)
    assert indexed < last == 30
    store = SqliteStore(path)
    try:
        page = asyncio.run(store.search(parse(("Patient",), [("name:exact", "Killed"),
                                                             ("_count", "50")])))
        assert sorted(v.id for v in page.matches) == sorted(f"k{n}" for n in range(30))
    finally:
        store.close_sync()


def test_the_backlog_is_read_along_the_version_numbers(store: SqliteStore) -> None:
    from server.storage.sqlite import _BACKLOG

    plan = store.run_sync(lambda tx: " ".join(
        row[3] for row in tx.conn.execute("EXPLAIN QUERY PLAN " + _BACKLOG, (0, 10, 2000))))
    assert "SEARCH v USING INTEGER PRIMARY KEY (rowid>? AND rowid<?)" in plan, plan
    assert "SEARCH r USING INTEGER PRIMARY KEY (rowid=?)" in plan, plan


def test_an_older_database_was_indexed_through_its_last_version(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "old.db"
    store = SqliteStore(path)
    in_one_group(store, write(patient("a", "Alpha")), write(patient("b", "Beta")))
    store.close_sync()
    conn = sqlite3.connect(path)
    conn.execute("DROP TABLE indexed")
    conn.execute("PRAGMA user_version = 8")
    conn.commit()
    conn.close()
    store = SqliteStore(path)
    try:
        assert marks(store) == (2, 2)
        assert names(store, "Alpha") == ["a"]
    finally:
        store.close_sync()


# -- the index process ---------------------------------------------------------------------

def test_an_index_process_indexes_the_writes_without_the_writer(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setattr("server.storage.sqlite.INDEX_IDLE", 3600)
    monkeypatch.setattr("server.storage.sqlite.INDEX_BACKLOG", 10**9)
    store = SqliteStore(tmp_path / "ix.db", indexer="warning")
    try:
        assert store._indexer is not None
        in_one_group(store, *(later(patient(f"p{i}", "Many")) for i in range(30)))
        deadline = time.monotonic() + 30
        while marks(store)[0] < marks(store)[1] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marks(store) == (30, 30)
        page = asyncio.run(store.search(parse(("Patient",), [("name:exact", "Many"),
                                                             ("_count", "50")])))
        assert len(page.matches) == 30
    finally:
        store.close_sync()
    assert store._indexer.returncode == 0  # it stopped with the store


def test_one_index_process_runs_per_database(tmp_path: Path) -> None:
    from server.storage import sqlite_indexer

    path = tmp_path / "one.db"
    SqliteStore(path).close_sync()
    first = sqlite_indexer.start(path, "warning")
    try:
        import time

        deadline = time.monotonic() + 30
        while not sqlite_indexer.running(path) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sqlite_indexer.running(path)
        second = sqlite_indexer.start(path, "warning")
        assert second.wait(30) == 0  # it found the first one and left
        assert first.poll() is None
    finally:
        assert first.stdin is not None
        first.stdin.close()
        assert first.wait(30) == 0


_OPEN_AND_HANG = """
import sys, time
sys.path.insert(0, {root!r})
from server.storage.sqlite import SqliteStore
store = SqliteStore({path!r}, indexer="warning")
print(store._indexer.pid, flush=True)
time.sleep(3600)
"""


def test_the_index_process_ends_with_the_process_that_started_it(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys
    import time

    root = str(Path(__file__).resolve().parents[1])
    server = subprocess.Popen([sys.executable, "-c", _OPEN_AND_HANG.format(
        root=root, path=str(tmp_path / "gone.db"))], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None
    pid = int(server.stdout.readline())
    server.kill()  # SIGKILL: no store.close
    server.wait(10)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            break
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        raise AssertionError("the index process outlived its server")


def test_a_resource_whose_rows_cannot_be_extracted_is_left_out_and_logged(
        store: SqliteStore, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    from server.search import index

    real = index.extract

    def failing(resource: dict[str, Any]) -> Any:
        if resource["name"][0]["family"] == "Broken":
            raise ValueError("no rows for this one")
        return real(resource)

    monkeypatch.setattr(index, "extract", failing)
    in_one_group(store, later(patient("a", "Alpha")), later(patient("b", "Broken")))
    assert names(store, "Alpha") == ["a"] and names(store, "Broken") == []
    assert any("Patient/b" in str(getattr(r, "resource", "")) for r in caplog.records)
    in_one_group(store, later(patient("c", "Alpha")))  # the store goes on
    assert names(store, "Alpha") == ["a", "c"]

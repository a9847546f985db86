"""What search indexing costs a create, over realistic resources from the data generator
(Patient, Observation, Encounter, Condition), with and without index extraction and index rows,
measured two ways:

- through the app in-process (ASGI calls, no HTTP server), 32 clients sending continuously: the
  strict figure, as the costs of HTTP would dilute the difference;
- through HTTP: ``consilium serve --workers 1`` (``--workers N``) and wrk, 32 connections cycling
  through the same resources: the create throughput a client sees.

Durable creates both ways (acknowledged after fsync). The store indexes creates after their
commit, in batches, in a process of their own (server.storage.sqlite_indexer): each run ends
with a search, which waits until all its creates are indexed, and the time to that search's
answer counts. Without indexing, no index process runs, and the store only moves its mark: it
reads, extracts and writes no rows.

    python bench/index_cost.py [--creates 10000] [--seconds 10] [--workers 1]

The last line is the summary figure (the in-process one).
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import shutil
import sqlite3
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import free_port, indexed, machine, start_consilium, token, wrk  # noqa: E402
from bench.datagen import iter_resources  # noqa: E402


def resources(n: int) -> list[dict[str, Any]]:
    out = []
    for r in iter_resources(n // 10, seed=3):
        if r["resourceType"] in ("Patient", "Observation", "Encounter", "Condition"):
            r.pop("id", None)
            out.append(r)
        if len(out) == n:
            break
    return out


async def creates_per_second(items: list[dict[str, Any]], index: bool, clients: int = 32) -> float:
    from server import app as app_module
    from server.auth.keys import KeyStore
    from server.auth.tokens import TokenService
    from server.config import Settings
    from server.search.query import parse
    from server.storage import sqlite_indexer

    switch_on = (lambda: None) if index else switch_indexing_off()
    try:
        work = tempfile.TemporaryDirectory(prefix="consilium-bench-")
        settings = Settings(data_dir=Path(work.name), workers=1, access_log=False,
                            index_process=index, log_level="warning")
        app = app_module.create_app(settings)
        token = TokenService(KeyStore(settings.keys_dir)).issue("bench", "system/*.cruds")
        bodies = [(r["resourceType"], orjson.dumps(r)) for r in items]

        async def call(type_: str, body: bytes) -> int:
            scope = {"type": "http", "method": "POST", "path": f"/fhir/{type_}",
                     "query_string": b"", "scheme": "http", "root_path": "",
                     "server": ("127.0.0.1", 8080),
                     "headers": [(b"host", b"bench"), (b"content-type", b"application/fhir+json"),
                                 (b"authorization", f"Bearer {token}".encode())]}
            status = 0

            async def receive() -> dict[str, Any]:
                return {"type": "http.request", "body": body, "more_body": False}

            async def send(message: dict[str, Any]) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]

            await app(scope, receive, send)
            return status

        await asyncio.gather(*(call(t, b) for t, b in bodies[:50]))  # warm
        while index and not sqlite_indexer.running(settings.sqlite_path):  # as in a server
            await asyncio.sleep(0.05)
        todo = iter(bodies[50:])
        statuses: list[int] = []

        async def client() -> None:  # sends its next create when the last one is answered
            for type_, body in todo:
                statuses.append(await call(type_, body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        await app.store.search(parse(("Patient",), [("_count", "1")]))  # all indexed
        elapsed = time.perf_counter() - started
        assert set(statuses) == {201}, set(statuses)
        await app.store.close()
        work.cleanup()
        return len(statuses) / elapsed
    finally:
        switch_on()


def switch_indexing_off() -> Callable[[], None]:
    """Switch the store's indexing off in this process: its mark moves, no row is read,
    extracted or written. Returns what switches it on again."""
    from server.storage import sqlite

    def catch_up(self: Any) -> int:
        if self.backlog() > 0:
            self.mark = self.ids.seq - 1
        return 0

    def index_backlog(conn: sqlite3.Connection, lock: int) -> int:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            conn.execute("UPDATE indexed SET seq = (SELECT coalesce(max(seq), 0) FROM version)")
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
        return 0

    saved = sqlite._IndexRows.catch_up, sqlite.index_backlog
    sqlite._IndexRows.catch_up = catch_up  # type: ignore[method-assign]
    sqlite.index_backlog = index_backlog

    def switch_on() -> None:
        sqlite._IndexRows.catch_up, sqlite.index_backlog = saved  # type: ignore[method-assign]

    return switch_on


# The server with index extraction switched off, for the comparison only: a script file, which
# worker processes (spawned) import too, so that it is off in them as well.
_UNINDEXED = """import os, sys
sys.path.insert(0, {root!r})
from bench.index_cost import switch_indexing_off
switch_indexing_off()
os.environ["CONSILIUM_INDEX_PROCESS"] = "off"
if __name__ == "__main__":
    from server.cli import main
    sys.exit(main())
"""

_CYCLE = """
local lines = {}
init = function(args)
  for line in io.lines(args[1]) do
    local tab = line:find("\t")
    lines[#lines + 1] = {line:sub(1, tab - 1), line:sub(tab + 1)}
  end
  n = math.random(#lines)
end
request = function()
  n = n % #lines + 1
  return wrk.format("POST", "/fhir/" .. lines[n][1], nil, lines[n][2])
end
"""


def http_creates_per_second(items: list[dict[str, Any]], index: bool, seconds: int,
                            workers: int = 1) -> float:
    """Creates/s through ``consilium serve --workers N`` under wrk, 32 connections."""
    work = Path(tempfile.mkdtemp(prefix="consilium-bench-"))
    try:
        data, port = work / "data", free_port()
        unindexed = work / "unindexed.py"
        unindexed.write_text(_UNINDEXED.format(root=str(Path(__file__).resolve().parents[1])))
        server = start_consilium(data, port, "--no-access-log", workers=workers,
                                 launch=("-m", "server") if index else (str(unindexed),))
        try:
            bodies = work / "bodies.tsv"
            bodies.write_bytes(b"".join(r["resourceType"].encode() + b"\t" + orjson.dumps(r)
                                        + b"\n" for r in items))
            script = work / "cycle.lua"
            script.write_text(_CYCLE)
            headers = {"Content-Type": "application/fhir+json",
                       "Authorization": f"Bearer {token(data)}"}
            url = f"http://127.0.0.1:{port}/fhir"
            wrk(url, seconds=2, headers=headers, script=script, args=[str(bodies)])  # warm
            indexed(url, headers)
            result = wrk(url, seconds=seconds, headers=headers, script=script,
                         args=[str(bodies)])
            waited = indexed(url, headers)
        finally:
            server.stop()
        assert result["errors"] == 0, result
        return result["requests"] / (result["requests"] / result["rps"] + waited)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=10000)
    parser.add_argument("--seconds", type=int, default=10, help="of each run through HTTP")
    parser.add_argument("--workers", type=int, default=1,
                        help="server worker processes through HTTP (the server's default is one "
                             "a CPU)")
    args = parser.parse_args()
    items = resources(args.creates)
    http_with = http_without = 0.0
    for _ in range(2):
        http_with = max(http_with, http_creates_per_second(items, True, args.seconds,
                                                           args.workers))
        http_without = max(http_without, http_creates_per_second(items, False, args.seconds,
                                                                 args.workers))
    # Best of three each, interleaved: the machine's speed drifts between runs.
    with_index = without = 0.0
    for _ in range(3):
        with_index = max(with_index, asyncio.run(creates_per_second(items, True)))
        without = max(without, asyncio.run(creates_per_second(items, False)))
    print(f"machine: {machine()}")
    print(f"through HTTP ({args.workers} worker{'s' if args.workers > 1 else ''}, wrk, "
          f"32 connections, {args.seconds} s, best of two): "
          f"{http_without:,.0f} creates/s without search indexing, {http_with:,.0f} with: "
          f"{(1 - http_with / http_without) * 100:.0f}% fewer")
    print(f"in-process: {len(items)} durable creates, 32 clients, best of three")
    print(f"without search indexing: {without:,.0f} creates/s")
    print(f"with search indexing:    {with_index:,.0f} creates/s")
    print(f"indexing lowers create throughput by {(1 - with_index / without) * 100:.0f}% "
          "(target: at most 33%)")


if __name__ == "__main__":
    main()

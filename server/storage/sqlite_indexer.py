"""The index process of a SQLite store: it indexes the API's writes after their commit, on a
core of its own.

    python -m server.storage.sqlite_indexer DB [--log-level info]

The API's writes are committed without their search index rows (server.storage.sqlite). A
server's store starts this process (the ``index_process`` setting, on by default), which finds
the resources written after the ``indexed`` mark, extracts their rows, and writes them and
moves the mark, up to BACKLOG_BATCH resources a transaction; it extracts before taking the
write lock, which it holds only to write. Meanwhile the server's writer leaves the backlog to
it, unless the backlog grows long; a search still has the backlog indexed at once.

One runs per database (``DB.indexer-lock``): a second exits at once. It stops when its
standard input ends: the store closed it, or the process that started it ended, however.
"""

from __future__ import annotations

import argparse
import fcntl
import logging
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

log = logging.getLogger(__name__)

#: Seconds between looks for a backlog, unless the last batch was full. Batches gathered over
#: half a second cost the process a third less CPU a resource than over 20 ms (fewer pages of
#: the index tables written a row); a search does not wait for this (server.storage.sqlite).
POLL = 0.5


def start(path: Path, log_level: str) -> subprocess.Popen[bytes]:
    """The index process of the database at ``path``."""
    return subprocess.Popen([sys.executable, "-m", __name__, str(path), "--log-level", log_level],
                            stdin=subprocess.PIPE)


def _claim(path: Path) -> int:
    """The file an index process holds while it runs (``DB.indexer-lock``)."""
    return os.open(f"{path}.indexer-lock", os.O_RDWR | os.O_CREAT, 0o600)


def running(path: Path) -> bool:
    """Whether an index process holds the database's claim."""
    claim = _claim(path)
    try:
        fcntl.flock(claim, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(claim)
    return False


def _ended(stdin: int, timeout: float) -> bool:
    """Wait up to ``timeout`` seconds for standard input to end."""
    if not select.select([stdin], [], [], timeout)[0]:
        return False
    return not os.read(stdin, 4096)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=f"python -m {__name__}",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("db", type=Path, help="the store's SQLite file")
    parser.add_argument("--log-level", default="info")
    args = parser.parse_args(argv)
    from server import logs
    from server.storage.sqlite import BACKLOG_BATCH, connect, index_backlog, write_lock

    logs.setup(args.log_level)
    # The parameters the registry leaves out: the server said so at its start.
    logging.getLogger("server.search.registry").setLevel(logging.WARNING)
    try:
        fcntl.flock(_claim(args.db), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # another process indexes this database
    for sig in (signal.SIGINT, signal.SIGTERM):  # the server's own signals: it stops us
        signal.signal(sig, signal.SIG_IGN)
    conn = connect(args.db)
    conn.execute("PRAGMA synchronous = NORMAL")
    lock = write_lock(args.db)
    stdin = sys.stdin.fileno()
    log.info("index process started", extra={"event": "index.start", "db": str(args.db)})
    wait = 0.0
    while not _ended(stdin, wait):
        try:
            wait = 0.0 if index_backlog(conn, lock) == BACKLOG_BATCH else POLL
        except Exception:  # busy for long, disk full: try again later
            log.exception("search index not brought up to date")
            time.sleep(1)
    conn.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

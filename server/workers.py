"""Several HTTP worker processes, each listening on a socket of its own on the same port.

The sockets are bound with ``SO_REUSEPORT``, so the kernel spreads new connections over the
workers. On one shared socket (uvicorn's own supervisor) the event loop of the first worker to
wake accepts every connection waiting: a client's keep-alive connections, opened together, then
all land on one worker while the others idle.

The supervisor opens the sockets, one for each worker, before any worker starts: a connection
that comes while its worker is starting (or starting again, after dying) waits in that socket's
queue. It starts the workers, starts again one that dies, and on SIGTERM or SIGINT passes
SIGTERM on (each worker then finishes its requests and stops) and waits for them.
"""

from __future__ import annotations

import logging
import multiprocessing
import signal
import socket
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any

log = logging.getLogger(__name__)

_BACKLOG = 2048  # uvicorn's default


def _bound(host: str, port: int, *, shared: bool) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if shared:  # other workers' sockets may listen on the port too
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    return sock


def _serve(config: Any, sock: socket.socket) -> None:
    """A worker process: uvicorn on its socket."""
    import uvicorn

    uvicorn.Server(config).run(sockets=[sock])


class Supervisor:
    def __init__(self, config: Any, workers: int, grace: float):
        self.config = config
        self.workers = workers
        self.grace = grace  # seconds a stopping worker has to finish its requests
        self.stop = threading.Event()
        self.ctx = multiprocessing.get_context("spawn")
        self.sockets: list[socket.socket] = []  # one for each worker

    def _start(self, sock: socket.socket) -> BaseProcess:
        # Not a daemon: a worker may start processes of its own (job runners).
        process = self.ctx.Process(target=_serve, args=(self.config, sock), name="http-worker")
        process.start()
        return process

    def listen(self) -> None:
        """Open the workers' sockets; OSError if the port is taken or cannot be bound. A
        socket bound without ``SO_REUSEPORT`` first checks that nothing listens there already:
        a second server on the port is refused rather than silently taking a share of the
        connections."""
        host, port = self.config.host, self.config.port
        _bound(host, port, shared=False).close()
        for _ in range(self.workers):
            sock = _bound(host, port, shared=True)
            sock.listen(_BACKLOG)
            self.sockets.append(sock)

    def run(self) -> None:
        """Start the workers on the sockets :meth:`listen` opened; return once they stopped."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        processes = [self._start(sock) for sock in self.sockets]
        while not self.stop.wait(0.5):
            for i, process in enumerate(processes):
                if not process.is_alive() and not self.stop.is_set():
                    log.warning("worker stopped; starting another", extra={
                        "event": "worker.restart", "pid": process.pid,
                        "exitcode": process.exitcode})
                    time.sleep(1)  # a worker that cannot start does not spin
                    processes[i] = self._start(self.sockets[i])
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + self.grace + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

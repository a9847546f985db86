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


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port that other workers' sockets may share."""
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    sock.listen(_BACKLOG)
    return sock


def check_port_free(host: str, port: int) -> None:
    """Raise OSError if something listens on host:port already. A socket bound without
    ``SO_REUSEPORT`` cannot share the port, so a second server on it is refused here rather
    than silently taking a share of the connections."""
    probe = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind((host, port))
    finally:
        probe.close()


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

    def _start(self, sock: socket.socket) -> BaseProcess:
        # Not a daemon: a worker may start processes of its own (job runners).
        process = self.ctx.Process(target=_serve, args=(self.config, sock), name="http-worker")
        process.start()
        return process

    def run(self) -> None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop.set())
        sockets = [listening_socket(self.config.host, self.config.port)
                   for _ in range(self.workers)]
        processes = [self._start(sock) for sock in sockets]
        while not self.stop.wait(0.5):
            for i, process in enumerate(processes):
                if not process.is_alive() and not self.stop.is_set():
                    log.warning("worker stopped; starting another", extra={
                        "event": "worker.restart", "pid": process.pid,
                        "exitcode": process.exitcode})
                    time.sleep(1)  # a worker that cannot start does not spin
                    processes[i] = self._start(sockets[i])
        for process in processes:
            if process.is_alive():
                process.terminate()  # SIGTERM: uvicorn's graceful shutdown
        deadline = time.monotonic() + self.grace + 5
        for process in processes:
            process.join(max(0.0, deadline - time.monotonic()))
            if process.is_alive():
                process.kill()
                process.join()

"""Structured logs: one JSON object a line on stderr.

Records carry an ``event`` name and plain fields. Nothing at INFO names a patient, a query string
or a token: request lines say which interaction on which type, the status and the time.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import time
from typing import Any

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
        }
        event = getattr(record, "event", None)
        if event:
            out["event"] = event
        message = record.getMessage()
        if message and message != event:
            out["message"] = message
        for key, value in record.__dict__.items():
            if key not in _STANDARD and key != "event" and value is not None:
                out[key] = value
        if record.exc_info:
            out["error"] = self.formatException(record.exc_info)
        return orjson.dumps(out, default=str).decode()


def setup(level: str = "info") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    logging.getLogger("uvicorn.access").disabled = True


class AccessLog:
    """One JSON line per HTTP request, in the same shape as the other logs, written in batches.

    A line costs a dict and one orjson call; lines are written together at most every 0.2 s
    (or every 256 lines), so a busy server does not pay a write system call per request. On a
    crash at most the last 0.2 s of request lines are lost, never a log of anything else.
    """

    FLUSH_SECONDS = 0.2
    MAX_LINES = 256

    def __init__(self, enabled: bool, fd: int = 2, logger: str = "consilium.http"):
        self.enabled = enabled and logging.getLogger(logger).isEnabledFor(logging.INFO)
        self.fd = fd
        self.logger = logger
        self.lines: list[bytes] = []
        self._stamp_second = -1
        self._stamp = ""
        self._timer: asyncio.TimerHandle | None = None

    def _ts(self, now: float) -> str:
        second = int(now)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1000):03d}Z"

    def record(self, **fields: Any) -> None:
        now = time.time()
        self.lines.append(orjson.dumps({"ts": self._ts(now), "level": "info",
                                        "logger": self.logger, "event": "http.request",
                                        **fields}) + b"\n")
        if len(self.lines) >= self.MAX_LINES:
            self.flush()
        elif self._timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                self.flush()
                return
            self._timer = loop.call_later(self.FLUSH_SECONDS, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.lines:
            data = b"".join(self.lines)
            self.lines.clear()
            try:
                while data:
                    data = data[os.write(self.fd, data):]
            except OSError:
                pass

"""Shared pieces of the benchmarks: starting servers, running wrk, reading its figures."""

from __future__ import annotations

import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> str:
    cpu = "unknown cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} cores ({cpu}), {mem:.0f} GiB, {platform.system()} "
            f"{platform.release()}, Python {platform.python_version()}")


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


class Proc:
    """A server process in its own session, stopped with its children."""

    def __init__(self, cmd: list[str], env: dict[str, str] | None = None, cwd: Path = REPO):
        self.log = tempfile.NamedTemporaryFile(  # noqa: SIM115 (lives as long as the process)
            prefix="bench-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, cwd=cwd,
                                     env={**os.environ, **(env or {})}, start_new_session=True)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


def start_consilium(data_dir: Path, port: int, *extra: str, workers: int = 1,
                    launch: tuple[str, ...] = ("-m", "server")) -> Proc:
    """``consilium serve`` on the port, once it answers (stopped if it does not). ``launch``:
    how Python starts the command line (``-c`` and a script that calls server.cli.main)."""
    proc = Proc([PYTHON, *launch, "serve", "--data-dir", str(data_dir), "--port", str(port),
                 "--workers", str(workers), "--dicom-port", "0", "--mllp-port", "0", *extra])
    try:
        wait_http(f"http://127.0.0.1:{port}/healthz")
    except BaseException:
        proc.stop()
        raise
    return proc


def indexed(url: str, headers: dict[str, str]) -> float:
    """Seconds a search waits for the writes before it to be indexed (the API's writes are
    indexed after their commit): benchmarks of writes count this wait in their time."""
    started = time.perf_counter()
    httpx.get(f"{url}/Patient", params={"_count": "1"}, headers=headers,
              timeout=600).raise_for_status()
    return time.perf_counter() - started


def token(data_dir: Path, scope: str = "system/*.cruds") -> str:
    out = subprocess.run([PYTHON, "-m", "server", "token", "--data-dir", str(data_dir),
                          "--scope", scope], capture_output=True, text=True, check=True)
    return out.stdout.strip()


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def wrk(url: str, *, seconds: int = 10, connections: int = 32, threads: int = 2,
        headers: dict[str, str] | None = None, script: Path | None = None,
        args: list[str] | None = None) -> dict[str, float]:
    """Run wrk; return requests/s, p50/p90/p99 latency (ms) and non-2xx/3xx responses."""
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not installed: run bench/system-deps.sh (as root) or "
                         "apt-get install wrk")
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency"]
    for k, v in (headers or {}).items():
        cmd += ["-H", f"{k}: {v}"]
    if script:
        cmd += ["-s", str(script)]
    tail = ["--", *args] if args else []  # the script's init(args)
    out = subprocess.run([*cmd, url, *tail], capture_output=True, text=True, check=True).stdout
    result: dict[str, float] = {"rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))}
    for pct in ("50", "90", "99"):
        m = re.search(rf"^\s+{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        result[f"p{pct}"] = _ms(m.group(1)) if m else float("nan")
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    result["errors"] = float(bad.group(1)) if bad else 0.0
    result["requests"] = float(re.search(r"(\d+) requests in", out).group(1))
    return result

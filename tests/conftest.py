"""Fixtures: the app in-process (Starlette's TestClient over ASGI) and real server processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from server.app import create_app
from server.auth.keys import KeyStore
from server.auth.tokens import TokenService
from server.config import Settings

FHIR_JSON = "application/fhir+json"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", workers=1, access_log=False,
                    index_process=False)


def issue_token(settings: Settings, scope: str = "system/*.cruds", **kw: object) -> str:
    return TokenService(KeyStore(settings.keys_dir)).issue("tester", scope, **kw)  # type: ignore[arg-type]


class Fhir:
    """A thin FHIR-over-HTTP test client: JSON in, JSON out, token attached."""

    def __init__(self, http: TestClient | httpx.Client, token: str | None):
        self.http = http
        self.token = token

    def request(self, method: str, path: str, *, json: object = None, headers: dict | None = None,
                content: bytes | str | None = None, params: object = None,
                token: str | None = "default") -> httpx.Response:
        h = {"Accept": FHIR_JSON}
        if json is not None:
            h["Content-Type"] = FHIR_JSON
        tok = self.token if token == "default" else token
        if tok:
            h["Authorization"] = f"Bearer {tok}"
        h.update(headers or {})
        if json is not None:
            import orjson

            content = orjson.dumps(json)
        url = path if path.startswith("http") else "/fhir/" + path.lstrip("/")
        return self.http.request(method, url, content=content, headers=h, params=params)

    def get(self, path: str, **kw: object) -> httpx.Response:
        return self.request("GET", path, **kw)  # type: ignore[arg-type]

    def post(self, path: str, json: object = None, **kw: object) -> httpx.Response:
        return self.request("POST", path, json=json, **kw)  # type: ignore[arg-type]

    def put(self, path: str, json: object = None, **kw: object) -> httpx.Response:
        return self.request("PUT", path, json=json, **kw)  # type: ignore[arg-type]

    def patch(self, path: str, ops: list, **kw: object) -> httpx.Response:
        import orjson

        headers = {"Content-Type": "application/json-patch+json", **kw.pop("headers", {})}  # type: ignore[dict-item]
        return self.request("PATCH", path, content=orjson.dumps(ops), headers=headers, **kw)  # type: ignore[arg-type]

    def delete(self, path: str, **kw: object) -> httpx.Response:
        return self.request("DELETE", path, **kw)  # type: ignore[arg-type]


@pytest.fixture
def app(settings: Settings):  # type: ignore[no-untyped-def]
    return create_app(settings)


@pytest.fixture
def http(app) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with TestClient(app, base_url="http://testserver") as client:
        yield client


@pytest.fixture
def token(settings: Settings, app) -> str:  # type: ignore[no-untyped-def]
    return issue_token(settings)


@pytest.fixture
def fhir(http: TestClient, token: str) -> Fhir:
    return Fhir(http, token)


class ServerProcess:
    def __init__(self, data_dir: Path, port: int, args: list[str], env: dict[str, str]):
        self.data_dir = data_dir
        self.port = port
        self.base = f"http://127.0.0.1:{port}"
        cmd = [sys.executable, "-m", "server.cli", "serve", "--data-dir", str(data_dir),
               "--port", str(port), "--dicom-port", "0", "--mllp-port", "0", *args]
        self.log = open(data_dir.parent / f"server-{port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT,
                                     env={**os.environ, **env}, start_new_session=True)

    def wait_ready(self, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.output()}")
            try:
                if httpx.get(self.base + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"server did not start: {self.output()}")

    def output(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return (self.data_dir.parent / f"server-{self.port}.log").read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        return self.proc.returncode


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator:  # type: ignore[type-arg]
    """Start real ``consilium serve`` processes; all are stopped at the end of the test."""
    started: list[ServerProcess] = []

    def start(*args: str, data_dir: Path | None = None, env: dict[str, str] | None = None,
              ready: bool = True) -> ServerProcess:
        d = data_dir or tmp_path / "data"
        d.mkdir(parents=True, exist_ok=True)
        server = ServerProcess(d, free_port(), list(args), env or {})
        started.append(server)
        if ready:
            server.wait_ready()
        return server

    yield start
    for s in started:
        s.stop(signal.SIGKILL)

"""The server as a real process: workers, tokens from the CLI, logs, SIGTERM and kill -9."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

from server.config import Settings
from tests.conftest import FHIR_JSON, issue_token

pytestmark = pytest.mark.slow


def _cli_token(data_dir, scope: str = "system/*.cruds") -> str:  # type: ignore[no-untyped-def]
    out = subprocess.run([sys.executable, "-m", "server", "token", "--data-dir", str(data_dir),
                          "--scope", scope], capture_output=True, text=True, check=True)
    return out.stdout.strip()


def _headers(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "Content-Type": FHIR_JSON, "Accept": FHIR_JSON}


def _patient(tag: str) -> dict:
    return {"resourceType": "Patient", "identifier": [{"system": "urn:test", "value": tag}],
            "name": [{"family": "Bayar", "given": [tag]}]}


def test_token_printed_by_the_cli_is_accepted(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "1")
    token = _cli_token(server.data_dir)
    r = httpx.post(server.base + "/fhir/Patient", json=_patient("cli"), headers=_headers(token))
    assert r.status_code == 201, r.text
    read_only = _cli_token(server.data_dir, "system/*.read")
    r = httpx.post(server.base + "/fhir/Patient", json=_patient("ro"), headers=_headers(read_only))
    assert r.status_code == 403
    assert httpx.get(server.base + "/fhir/metadata").status_code == 200


def test_logs_are_json_lines_without_patient_data(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "1")
    token = _cli_token(server.data_dir)
    r = httpx.post(server.base + "/fhir/Patient", json=_patient("Secretname"),
                   headers=_headers(token))
    pid = r.json()["id"]
    httpx.get(server.base + "/fhir/Patient?name=Secretname", headers=_headers(token))
    httpx.get(server.base + f"/fhir/Patient/{pid}", headers=_headers(token))
    server.stop(signal.SIGTERM)
    lines = [ln for ln in server.output().splitlines() if ln.startswith("{")]
    records = [json.loads(ln) for ln in lines]
    assert any(r.get("event") == "server.start" for r in records)
    requests = [r for r in records if r.get("event") == "http.request"]
    assert {r["interaction"] for r in requests} >= {"create", "read"}
    assert all(r["level"] for r in records)
    text = "\n".join(lines)
    assert "Secretname" not in text
    assert pid not in text
    assert token not in text


def test_sigterm_stops_gracefully(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "2")
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    assert '"server.stop"' in server.output()


def test_no_auth_is_loud(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--no-auth", "--workers", "1")
    assert "AUTHORIZATION IS OFF" in server.output()
    r = httpx.post(server.base + "/fhir/Patient", json=_patient("open"),
                   headers={"Content-Type": FHIR_JSON})
    assert r.status_code == 201


def test_workers_share_one_store_without_lost_updates(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "2")
    token = issue_token(Settings(data_dir=server.data_dir))
    h = _headers(token)
    r = httpx.put(server.base + "/fhir/Patient/counter",
                  json={**_patient("c"), "id": "counter", "multipleBirthInteger": 0}, headers=h)
    assert r.status_code == 201
    successes = []

    def bump(n: int) -> None:
        with httpx.Client(base_url=server.base, headers=h, timeout=30) as c:
            done = 0
            while done < 10:
                cur = c.get("/fhir/Patient/counter").json()
                cur["multipleBirthInteger"] += 1
                r = c.put("/fhir/Patient/counter", json=cur,
                          headers={"If-Match": f'W/"{cur["meta"]["versionId"]}"'})
                if r.status_code == 200:
                    done += 1
                    successes.append(n)
                else:
                    assert r.status_code == 412, r.text

    threads = [threading.Thread(target=bump, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    final = httpx.get(server.base + "/fhir/Patient/counter", headers=h).json()
    assert final["multipleBirthInteger"] == 60 == len(successes)
    assert final["meta"]["versionId"] == "61"
    hist = httpx.get(server.base + "/fhir/Patient/counter/_history",
                     params={"_count": "100"}, headers=h).json()
    assert [e["resource"]["meta"]["versionId"] for e in hist["entry"]] == \
        [str(v) for v in range(61, 0, -1)]
    metrics = httpx.get(server.base + "/metrics").text
    reads = sum(float(line.split()[-1]) for line in metrics.splitlines()
                if line.startswith('consilium_http_requests_total{interaction="read"'))
    assert reads >= 60  # counted across both worker processes


def _connections_by_process(port: int, pids: list[int]) -> dict[int, int]:
    """How many established TCP connections on ``port`` each process holds (from /proc)."""
    established: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    established.add(fields[9])  # the socket's inode
    counts = {}
    for pid in pids:
        fds = Path(f"/proc/{pid}/fd")
        links = [os.readlink(fd) for fd in fds.iterdir()]
        counts[pid] = sum(link[8:-1] in established for link in links if link.startswith("socket:"))
    return counts


def test_connections_opened_together_spread_over_the_workers(start_server) -> None:  # type: ignore[no-untyped-def]
    """Each worker listens on a socket of its own: a client's keep-alive connections, opened
    at once, do not all land on the worker that wakes first."""
    server = start_server("--workers", "2")
    conns = [socket.create_connection(("127.0.0.1", server.port)) for _ in range(16)]
    try:
        for c in conns:
            c.sendall(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        for c in conns:
            assert c.recv(65536).startswith(b"HTTP/1.1 200")  # accepted, and kept open
        workers = [int(pid) for pid in Path(
            f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text().split()]
        counts = _connections_by_process(server.port, workers)
        serving = [n for n in counts.values() if n]
        assert sum(serving) == 16 and len(serving) == 2, counts
    finally:
        for c in conns:
            c.close()


def test_a_second_server_on_the_same_port_is_refused(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "2")
    second = subprocess.run(
        [sys.executable, "-m", "server", "serve", "--data-dir", str(server.data_dir.parent / "d2"),
         "--port", str(server.port), "--workers", "2", "--dicom-port", "0", "--mllp-port", "0"],
        capture_output=True, text=True, timeout=60)
    assert second.returncode == 1
    assert "cannot listen on" in second.stderr and "in use" in second.stderr


def test_acknowledged_writes_survive_kill_9(start_server) -> None:  # type: ignore[no-untyped-def]
    server = start_server("--workers", "2")
    token = issue_token(Settings(data_dir=server.data_dir))
    acked: dict[str, tuple[str, str]] = {}
    lock = threading.Lock()
    stop = threading.Event()

    def writer(n: int) -> None:
        with httpx.Client(base_url=server.base, headers=_headers(token), timeout=10) as c:
            i = 0
            while not stop.is_set():
                tag = f"w{n}-{i}"
                try:
                    r = c.post("/fhir/Patient", json=_patient(tag))
                    if r.status_code == 201:
                        body = r.json()
                        with lock:
                            acked[body["id"]] = (tag, "1")
                        # and an update of it, acknowledged as version 2
                        body["active"] = True
                        u = c.put(f"/fhir/Patient/{body['id']}", json=body)
                        if u.status_code == 200:
                            with lock:
                                acked[body["id"]] = (tag, "2")
                except httpx.HTTPError:
                    return
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    time.sleep(3)
    server.stop(signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 50, "too few writes were acknowledged before the kill"
    with sqlite3.connect(server.data_dir / "consilium.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    again = start_server("--workers", "1", data_dir=server.data_dir)
    with httpx.Client(base_url=again.base, headers=_headers(token), timeout=30) as c:
        for pid, (tag, version) in acked.items():
            r = c.get(f"/fhir/Patient/{pid}")
            assert r.status_code == 200, (pid, r.text)
            body = r.json()
            assert body["identifier"][0]["value"] == tag
            assert int(body["meta"]["versionId"]) >= int(version)


def _index_processes(data_dir: Path) -> list[int]:
    """The live index processes of the store under ``data_dir`` (from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if b"server.storage.sqlite_indexer" in cmdline and state != "Z" and \
                str(data_dir / "consilium.db").encode() in cmdline:
            found.append(int(entry.name))
    return found


def test_one_index_process_indexes_the_writes_and_stops_with_the_server(start_server) -> None:  # type: ignore[no-untyped-def]
    """Each worker starts an index process; one of them stays, and indexes the API's writes
    without any search asking; all are gone once the server has stopped."""
    server = start_server("--workers", "2")
    h = _headers(issue_token(Settings(data_dir=server.data_dir)))
    for n in range(20):
        r = httpx.post(server.base + "/fhir/Patient", json=_patient(f"ix{n}"), headers=h)
        assert r.status_code == 201, r.text
    db = sqlite3.connect(server.data_dir / "consilium.db")
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        indexed, last = db.execute("SELECT (SELECT seq FROM indexed), "
                                   "(SELECT max(seq) FROM version)").fetchone()
        if indexed == last and len(_index_processes(server.data_dir)) == 1:
            break
        time.sleep(0.1)
    db.close()
    assert indexed == last
    assert len(_index_processes(server.data_dir)) == 1
    r = httpx.get(server.base + "/fhir/Patient", params={"given": "ix7"}, headers=h)
    assert [e["resource"]["name"][0]["given"] for e in r.json()["entry"]] == [["ix7"]]
    assert server.stop(signal.SIGTERM, timeout=30) == 0
    deadline = time.monotonic() + 30
    while _index_processes(server.data_dir) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _index_processes(server.data_dir) == []

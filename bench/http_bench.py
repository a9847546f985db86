"""Read-by-id and create throughput and latency at 32 concurrent clients (wrk, its own process).

Starts, in one run: a bare ASGI app serving the same bytes as a read (uvicorn, httptools, uvloop,
one worker) and ``consilium serve --workers 1`` on a fresh data dir. Reads carry a real bearer
token that the server checks. Creates are durable (acknowledged after fsync).

    python bench/http_bench.py [--seconds 10]

The last line is the summary figure.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (  # noqa: E402
    PYTHON,
    Proc,
    free_port,
    indexed,
    machine,
    start_consilium,
    token,
    wait_http,
    wrk,
)

PATIENT = {
    "resourceType": "Patient",
    "identifier": [{"system": "urn:oid:2.16.156.10011.1.1", "value": "150102198001011234"},
                   {"system": "http://hospital.example.org/mrn", "value": "MRN-778899"}],
    "active": True,
    "name": [{"use": "official", "family": "Bayar", "given": ["Temuulen"]},
             {"use": "official", "text": "巴雅尔 特木伦"}],
    "telecom": [{"system": "phone", "value": "+86 471 555 0101", "use": "mobile"},
                {"system": "email", "value": "t.bayar@example.org"}],
    "gender": "male",
    "birthDate": "1980-01-01",
    "address": [{"use": "home", "line": ["Xinhua Street 12"], "city": "Hohhot",
                 "state": "Inner Mongolia", "postalCode": "010010", "country": "CN"}],
    "maritalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                                  "code": "M", "display": "Married"}]},
    "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "mn"}]},
                       "preferred": True}],
    "managingOrganization": {"reference": "Organization/hohhot-first-hospital"},
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="consilium-bench-"))
    data = work / "data"
    port = free_port()
    server = start_consilium(data, port)  # defaults: token checks and access log on
    bare = None
    try:
        tok = token(data)
        auth = {"Authorization": f"Bearer {tok}"}
        base = f"http://127.0.0.1:{port}/fhir"
        r = httpx.post(base + "/Patient", json=PATIENT,
                       headers={**auth, "Content-Type": "application/fhir+json"})
        r.raise_for_status()
        pid = r.json()["id"]
        body = httpx.get(f"{base}/Patient/{pid}", headers=auth).content
        body_file = work / "body.json"
        body_file.write_bytes(body)
        bare_port = free_port()
        bare = Proc([PYTHON, "-m", "uvicorn", "bench.bare_asgi:app", "--port", str(bare_port),
                     "--http", "httptools", "--loop", "uvloop", "--no-access-log",
                     "--log-level", "warning"], env={"BARE_BODY_FILE": str(body_file)})
        wait_http(f"http://127.0.0.1:{bare_port}/")
        # warm both
        wrk(f"http://127.0.0.1:{bare_port}/", seconds=2)
        wrk(f"{base}/Patient/{pid}", seconds=2, headers=auth)
        bare_r = wrk(f"http://127.0.0.1:{bare_port}/", seconds=args.seconds)
        read_r = wrk(f"{base}/Patient/{pid}", seconds=args.seconds, headers=auth)
        script = work / "create.lua"
        script.write_text(
            'wrk.method = "POST"\n'
            f"wrk.body = [[{json.dumps(PATIENT)}]]\n"
            'wrk.headers["Content-Type"] = "application/fhir+json"\n'
            f'wrk.headers["Authorization"] = "Bearer {tok}"\n')
        create_r = wrk(f"{base}/Patient", seconds=args.seconds, script=script)
        waited = indexed(base, auth)  # the creates' indexing counts in their time
        create_r["rps"] = create_r["requests"] / (create_r["requests"] / create_r["rps"] + waited)
        count = httpx.get(f"{base}/Patient", params={"_summary": "count"}, headers=auth).json()
    finally:
        server.stop()
        if bare:
            bare.stop()
        shutil.rmtree(work, ignore_errors=True)
    ratio = read_r["rps"] / bare_r["rps"]
    print(f"machine: {machine()}")
    print(f"load: wrk -t2 -c32 -d{args.seconds}s, one server worker, body {len(body)} bytes")
    print(f"{'':24}{'req/s':>10}{'p50 ms':>10}{'p90 ms':>10}{'p99 ms':>10}{'errors':>8}")
    for name, r in (("bare ASGI (same bytes)", bare_r), ("read by id (token)", read_r),
                    ("create (durable)", create_r)):
        print(f"{name:24}{r['rps']:>10.0f}{r['p50']:>10.2f}{r['p90']:>10.2f}{r['p99']:>10.2f}"
              f"{r['errors']:>8.0f}")
    print(f"patients stored: {count.get('total')}; after the creates, {waited:.2f} s until all "
          "were indexed (counted in creates/s)")
    print(f"read/bare = {ratio:.2f} (target >= 0.35); creates/s = {create_r['rps']:.0f} "
          f"(target >= 800)")


if __name__ == "__main__":
    main()

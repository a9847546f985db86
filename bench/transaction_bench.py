"""Resources per second through transaction Bundles of about 50 entries, over HTTP.

Starts ``consilium serve`` (token checks, validation, indexing and the access log on, every
write durable) on a fresh data dir, loads the generated network (organisations, locations,
practitioners, roles: ``PUT`` entries), then sends the generated patients as transaction Bundles
of ``POST`` entries whose references point at each other by ``urn:uuid`` — as an EHR sends new
records — from ``--clients`` concurrent connections. Bundles are serialised before the clock
starts; the figure counts entries acknowledged with 200 over the wall time.

    python bench/transaction_bench.py [--patients 2000] [--clients 4] [--workers 2]

The last line is the summary figure.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import free_port, indexed, machine, start_consilium, token  # noqa: E402
from bench.datagen import iter_bundles  # noqa: E402

WORKFLOW_TYPES = ("ServiceRequest", "Task")
HEADERS = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}


def _refers_to(node: Any, types: tuple[str, ...]) -> bool:
    if isinstance(node, dict):
        target = node.get("reference")
        if isinstance(target, str) and target.startswith(types):
            return True
        return any(_refers_to(v, types) for v in node.values() if isinstance(v, (dict, list)))
    if isinstance(node, list):
        return any(_refers_to(v, types) for v in node)
    return False


def clinical_records(bundle: dict[str, Any]) -> dict[str, Any]:
    """The Bundle without the workflow's resources: consultation and referral requests are
    filed through the workflow's rules (which make their Tasks, deadlines and Provenance at the
    time of filing), so the generated history of them is left out together with what refers
    to them."""
    workflow = {e["fullUrl"] for e in bundle["entry"]
                if e["resource"]["resourceType"] in WORKFLOW_TYPES}
    for _ in range(2):  # resources referring to those, then to the ones dropped with them
        workflow |= {e["fullUrl"] for e in bundle["entry"]
                     if _refers_to(e["resource"], (*WORKFLOW_TYPES, *workflow))}
    return {**bundle, "entry": [e for e in bundle["entry"] if e["fullUrl"] not in workflow]}


def bundles(patients: int, size: int) -> tuple[list[bytes], list[tuple[bytes, int]]]:
    """The network's Bundles (PUT) and the patients' (POST, with their entry counts)."""
    network: list[bytes] = []
    records: list[tuple[bytes, int]] = []
    for b in iter_bundles(patients, size=size):
        if b["entry"][0]["request"]["method"] == "PUT":
            network.append(orjson.dumps(b))
        else:
            b = clinical_records(b)
            records.append((orjson.dumps(b), len(b["entry"])))
    return network, records


async def post_all(base: str, auth: dict[str, str], work: list[tuple[bytes, int]],
                   clients: int) -> tuple[int, list[float]]:
    """Send every Bundle from ``clients`` connections; the entries committed and the latencies."""
    queue = iter(work)
    committed = 0
    latencies: list[float] = []

    async def client(http: httpx.AsyncClient) -> None:
        nonlocal committed
        for body, n in queue:
            t = time.perf_counter()
            r = await http.post(base, content=body, headers={**HEADERS, **auth})
            latencies.append(time.perf_counter() - t)
            if r.status_code != 200:
                raise SystemExit(f"transaction failed: {r.status_code} {r.text[:500]}")
            committed += n

    limits = httpx.Limits(max_connections=clients)
    async with httpx.AsyncClient(timeout=120, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(clients)))
    return committed, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=2000)
    parser.add_argument("--size", type=int, default=50, help="entries per Bundle")
    parser.add_argument("--clients", type=int, default=4, help="concurrent connections")
    parser.add_argument("--workers", type=int, default=2, help="server worker processes")
    args = parser.parse_args()

    network, records = bundles(args.patients, args.size)
    entries = sum(n for _, n in records)
    print(f"{len(records)} transaction Bundles, {entries} entries "
          f"({entries / len(records):.1f} a Bundle), after {len(network)} network Bundles",
          flush=True)

    work = tempfile.TemporaryDirectory(prefix="consilium-bench-")
    data = Path(work.name) / "data"
    port = free_port()
    server = start_consilium(data, port, workers=args.workers)
    try:
        auth = {"Authorization": f"Bearer {token(data)}"}
        base = f"http://127.0.0.1:{port}/fhir"
        asyncio.run(post_all(base, auth, [(b, 0) for b in network], 1))
        t0 = time.perf_counter()
        committed, latencies = asyncio.run(post_all(base, auth, records, args.clients))
        waited = indexed(base, auth)
        elapsed = time.perf_counter() - t0
    finally:
        server.stop()
        work.cleanup()

    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000
    print(f"machine: {machine()}")
    print(f"server workers {args.workers}, {args.clients} clients; Bundle latency "
          f"p50 {p50:.0f} ms, p99 {p99:.0f} ms; then {waited:.1f} s until all were indexed")
    print(f"transactions: {committed / elapsed:,.0f} resources/s "
          f"({committed} resources in {elapsed:.1f} s; target 3,000)")


if __name__ == "__main__":
    main()

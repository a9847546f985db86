"""What search indexing costs a create: durable creates through the app (in-process ASGI calls,
no HTTP server, which would only dilute the difference), with and without index extraction and
index rows, over realistic resources from the data generator.

    python bench/index_cost.py [--creates 3000]

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

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import machine  # noqa: E402
from bench.datagen import iter_resources  # noqa: E402


def resources(n: int) -> list[dict[str, Any]]:
    out = []
    for r in iter_resources(200, seed=3):
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
    from server.fhir import prepare

    real = prepare.extract
    if not index:
        prepare.extract = lambda resource: {}  # type: ignore[assignment]
    try:
        work = tempfile.TemporaryDirectory(prefix="consilium-bench-")
        settings = Settings(data_dir=Path(work.name), workers=1, access_log=False)
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
        todo = iter(bodies[50:])
        statuses: list[int] = []

        async def client() -> None:  # sends its next create when the last one is answered
            for type_, body in todo:
                statuses.append(await call(type_, body))

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        elapsed = time.perf_counter() - started
        assert set(statuses) == {201}, set(statuses)
        await app.store.close()
        work.cleanup()
        return len(statuses) / elapsed
    finally:
        prepare.extract = real


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=3000)
    args = parser.parse_args()
    items = resources(args.creates)
    # Best of three each, interleaved: the machine's speed drifts between runs.
    with_index = without = 0.0
    for _ in range(3):
        with_index = max(with_index, asyncio.run(creates_per_second(items, True)))
        without = max(without, asyncio.run(creates_per_second(items, False)))
    print(f"machine: {machine()}")
    print(f"{len(items)} durable creates (Patient, Observation, Encounter, Condition), 32 clients")
    print(f"without search indexing: {without:,.0f} creates/s")
    print(f"with search indexing:    {with_index:,.0f} creates/s")
    print(f"indexing lowers create throughput by {(1 - with_index / without) * 100:.0f}% "
          "(target: at most 33%)")


if __name__ == "__main__":
    main()

"""Search latency at a million resources: p50/p99 of seven kinds of search, each a page of 20.

Uses a data dir that already holds the generated data set, or builds one (bench/generate.py, then
``consilium import``) when it is empty. Starts ``consilium serve --workers 1`` on it and sends each
query kind ``--requests`` times over one keep-alive connection, with values drawn from the data
(different patients, codes, weeks, name prefixes), so caches do not flatter the figures.

    python bench/search_bench.py --data-dir /var/tmp/consilium-1m [--patients 35000]

The last line is the summary figure.
"""

from __future__ import annotations

import argparse
import random
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PYTHON, REPO, free_port, machine, start_consilium, token  # noqa: E402

CODES = ["8867-4", "59408-5", "85354-9", "8310-5", "29463-7", "9279-1", "718-7", "6690-2",
         "777-3", "14682-9", "2823-3", "14749-6", "2951-2", "8302-2", "39156-5", "4548-4"]
SYSTOLIC = list(range(110, 180, 5))  # "systolic pressure above …" (a composite search)
PREFIXES = ["ch", "wa", "li", "zh", "ba", "ah", "mo", "ka", "ho", "re", "陈", "王", "李", "张",
            "محم", "حس", "رض", "کا"]


def ensure_data(data: Path, patients: int) -> None:
    if (data / "consilium.db").exists():
        return
    out = data.parent / "ndjson"
    print(f"generating {patients} patients into {out} and importing them (minutes) …",
          flush=True)
    subprocess.run([PYTHON, str(REPO / "bench" / "generate.py"), "--patients", str(patients),
                    "--out", str(out)], check=True, stdout=subprocess.DEVNULL)
    subprocess.run([PYTHON, "-m", "server", "import", "--quiet", "--data-dir", str(data),
                    *map(str, sorted(out.glob("*.ndjson")))], check=True)


def sample_ids(client: httpx.Client, base: str, type_: str, n: int) -> list[str]:
    """Ids spread over the whole table (pages from several points of _lastUpdated)."""
    ids: list[str] = []
    r = client.get(f"{base}/{type_}", params={"_count": "200", "_elements": "id"}).json()
    ids += [e["resource"]["id"] for e in r.get("entry", [])]
    r = client.get(f"{base}/{type_}", params={"_count": "200", "_elements": "id",
                                              "_sort": "-_lastUpdated"}).json()
    ids += [e["resource"]["id"] for e in r.get("entry", [])]
    random.shuffle(ids)
    return ids[:n]


def measure(client: httpx.Client, make: Callable[[], tuple[str, dict[str, str]]], n: int,
            follow_next: bool = False) -> tuple[list[float], int]:
    times = []
    returned = 0
    for _ in range(n):
        url, params = make()
        t = time.perf_counter()
        r = client.get(url, params=params)
        if follow_next:
            links = {link["relation"]: link["url"] for link in r.json().get("link", [])}
            if "next" in links:
                r = client.get(links["next"])
        times.append((time.perf_counter() - t) * 1000 / (2 if follow_next else 1))
        r.raise_for_status()
        returned += len(r.json().get("entry", []))
    return times, returned


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, required=True)
    parser.add_argument("--patients", type=int, default=35_000)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    random.seed(7)
    ensure_data(args.data_dir, args.patients)
    port = free_port()
    server = start_consilium(args.data_dir, port, "--no-access-log")
    try:
        tok = token(args.data_dir)
        base = f"http://127.0.0.1:{port}/fhir"
        client = httpx.Client(headers={"Authorization": f"Bearer {tok}"}, timeout=60)
        total = client.get(f"{base}/Observation", params={"_summary": "count",
                                                          "_total": "accurate"}).json()["total"]
        patients = sample_ids(client, base, "Patient", 400)
        pick = random.choice
        weeks = [f"2024-{m:02d}-{d:02d}" for m in range(1, 13) for d in (1, 8, 15, 22)]
        kinds: list[tuple[str, Callable[[], tuple[str, dict[str, str]]], bool]] = [
            ("token", lambda: (f"{base}/Observation", {"code": f"http://loinc.org|{pick(CODES)}",
                                                       "_count": "20"}), False),
            ("date range", lambda: (f"{base}/Observation", {
                "date": [f"ge{(w := pick(weeks))}", f"lt{w[:8]}{int(w[8:]) + 7:02d}"],
                "_count": "20"}), False),
            ("string prefix", lambda: (f"{base}/Patient", {"name": pick(PREFIXES),
                                                           "_count": "20"}), False),
            ("chained", lambda: (f"{base}/Observation", {
                "subject:Patient.name": pick(PREFIXES), "code": f"http://loinc.org|"
                                                                f"{pick(CODES[:5])}",
                "_count": "20"}), False),
            ("_revinclude", lambda: (f"{base}/Patient", {
                "_id": pick(patients), "_revinclude": "Observation:subject",
                "_count": "20"}), False),
            ("composite", lambda: (f"{base}/Observation", {
                "component-code-value-quantity": f"http://loinc.org|8480-6$gt{pick(SYSTOLIC)}",
                "_count": "20"}), False),
            ("_sort + page 2", lambda: (f"{base}/Observation", {
                "code": f"http://loinc.org|{pick(CODES)}", "_sort": "-date",
                "_count": "20"}), True),
        ]
        rows = []
        for name, make, follow in kinds:
            measure(client, make, 10, follow)  # warm
            times, returned = measure(client, make, args.requests, follow)
            rows.append((name, statistics.median(times), pct(times, 99), returned /
                         args.requests))
    finally:
        server.stop()
    print(f"machine: {machine()}")
    print(f"data: {total:,} Observations among ~1M resources; {args.requests} requests per "
          "kind, one connection, one server worker")
    print(f"{'search':18}{'p50 ms':>10}{'p99 ms':>10}{'entries/page':>14}")
    for name, p50, p99, per_page in rows:
        print(f"{name:18}{p50:>10.1f}{p99:>10.1f}{per_page:>14.1f}")
    worst50 = max(r[1] for r in rows)
    worst99 = max(r[2] for r in rows)
    print(f"worst p50 {worst50:.1f} ms (target < 20), worst p99 {worst99:.1f} ms (target < 100)")


if __name__ == "__main__":
    main()

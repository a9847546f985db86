"""Resources per second through ``consilium import`` of generated NDJSON into a fresh data dir.

Generates ``--patients`` patients (bench/generate.py; about 28 resources each) unless
``--ndjson`` names a directory that already holds them, then times ``consilium import`` of every
file (validation and indexing on, every batch durable) into an empty data dir.

    python bench/import_bench.py [--patients 35000] [--ndjson DIR] [--model-check]

The last line is the summary figure.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PYTHON, REPO, machine  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--patients", type=int, default=35000)
    parser.add_argument("--ndjson", type=Path, help="a directory of generated NDJSON files")
    parser.add_argument("--model-check", action="store_true",
                        help="also validate with the fhir.resources models")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="consilium-bench-") as tmp:  # gigabytes at 1M
        run(args, Path(tmp))


def run(args: argparse.Namespace, work: Path) -> None:
    source = args.ndjson or work / "ndjson"
    if args.ndjson is None:
        print(f"generating {args.patients} patients into {source} …", flush=True)
        subprocess.run([PYTHON, str(REPO / "bench" / "generate.py"), "--patients",
                        str(args.patients), "--out", str(source)], check=True,
                       stdout=subprocess.DEVNULL)
    files = sorted(map(str, source.glob("*.ndjson")))
    resources = 0
    for f in files:
        with open(f, "rb") as lines:
            resources += sum(1 for _ in lines)
    cmd = [PYTHON, "-m", "server", "import", "--quiet", "--data-dir", str(work / "data"), *files]
    if args.model_check:
        cmd.append("--model-check")
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True)
    elapsed = time.perf_counter() - t0
    print(f"machine: {machine()}")
    print(f"import{' --model-check' if args.model_check else ''}: "
          f"{resources / elapsed:,.0f} resources/s "
          f"({resources:,} resources in {elapsed:.1f} s; target 10,000)")


if __name__ == "__main__":
    main()

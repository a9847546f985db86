"""Every benchmark in turn, each in its own process; prints each one's figure (its last line).

    python bench/run_all.py [--quick]

``--quick`` uses small data sets (minutes instead of about half an hour); the README's figures
come from the full run. The search benchmark keeps its million-resource data dir under
``/var/tmp/consilium-bench-1m`` so later runs skip building it.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PYTHON, REPO, machine  # noqa: E402

FULL = {
    "http_bench.py": [],
    "transaction_bench.py": ["--patients", "2000"],
    "import_bench.py": ["--patients", "35000"],
    "index_cost.py": [],
    "search_bench.py": ["--data-dir", "/var/tmp/consilium-bench-1m/data"],
}
QUICK = {
    "http_bench.py": ["--seconds", "3"],
    "transaction_bench.py": ["--patients", "200"],
    "import_bench.py": ["--patients", "2000"],
    "index_cost.py": [],
    "search_bench.py": ["--data-dir", "/var/tmp/consilium-bench-quick/data", "--patients",
                        "2000"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data sets")
    args = parser.parse_args()
    figures = []
    for script, extra in (QUICK if args.quick else FULL).items():
        print(f"== {script} {' '.join(extra)}", flush=True)
        out = subprocess.run([PYTHON, str(REPO / "bench" / script), *extra],
                             capture_output=True, text=True)
        lines = out.stdout.strip().splitlines()
        if out.returncode != 0 or not lines:
            figures.append(f"{script}: failed ({out.stderr.strip().splitlines()[-1:]})")
        else:
            figures.append(lines[-1])
        print(figures[-1], flush=True)
    print(f"machine: {machine()}")
    print(" | ".join(figures))


if __name__ == "__main__":
    main()

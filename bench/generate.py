"""Write the synthetic telemedicine data set (bench/datagen.py) to files, for the import and
search benchmarks.

    python bench/generate.py --patients 35000 --out data/bench            # ~1,000,000 resources
    python bench/generate.py --patients 100 --out /tmp/b --format bundles --seed 7

The last line is the figure: how many resources were written, in how long, at what rate.
"""

from __future__ import annotations

import argparse
import collections
import gzip
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any, cast

import orjson
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.datagen import REFERENCE_TIME, iter_bundles, iter_resources  # noqa: E402

DESCRIPTION = """\
Generate a deterministic, Synthea-like FHIR R4 data set of a telemedicine network in Iran and
Inner Mongolia: organisations at three care levels with partOf links, locations, practitioners
(experts and attending physicians) and their roles, then per patient (names in Persian, Chinese,
Mongolian Latin/Cyrillic and Latin; national ids; addresses) encounters, conditions (SNOMED CT
and ICD-10), observations (vital signs and labs, LOINC and UCUM), diagnostic reports, consents,
and the telemedicine workflow: consultation requests and referrals (ServiceRequest) with Tasks
in every state, appointments and consultation reports. About 29 resources per patient: 35,000
patients give about 1,000,000 resources. The same --seed always gives the same files, and a
run of N patients is the start of a run of more.
"""

EPILOG = """\
formats:
  ndjson   one file per resource type in DIR (Patient.ndjson, Observation.ndjson, ...), one
           resource per line with its id; references are Type/id (as for $import or
           `consilium import`).
  bundles  DIR/bundles.ndjson, one transaction Bundle per line: first the network as
           PUT Type/id entries, then the patients' resources as POST entries with urn:uuid
           fullUrls that their references point to (the server assigns ids and rewrites
           them); a patient is never split between two Bundles.

A progress bar goes to stderr; the counts by resource type and the rate go to stdout.
"""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/generate.py", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--patients", type=int, required=True, metavar="N",
                   help="number of patients (the network of ~1,000 resources comes on top)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="output directory (created if missing; files of the same name are "
                        "replaced)")
    p.add_argument("--seed", type=int, default=1, metavar="S",
                   help="random seed: the same seed gives the same data (default 1)")
    p.add_argument("--format", choices=("ndjson", "bundles"), default="ndjson",
                   help="ndjson: one file per resource type; bundles: transaction Bundles, one "
                        "per line (default ndjson)")
    p.add_argument("--bundle-size", type=int, default=50, metavar="K",
                   help="entries per transaction Bundle, about (default 50; bundles only)")
    p.add_argument("--gzip", action="store_true",
                   help="write .ndjson.gz files instead of .ndjson (fast compression level)")
    args = p.parse_args(argv)
    if args.patients < 0:
        p.error("--patients must be 0 or more")
    if args.bundle_size < 1:
        p.error("--bundle-size must be at least 1")
    return args


class Writers:
    """One open file per name, opened on first use, all closed at the end."""

    def __init__(self, out: Path, compress: bool):
        self.out = out
        self.compress = compress
        self.files: dict[str, IO[bytes]] = {}
        self.paths: list[Path] = []

    def get(self, name: str) -> IO[bytes]:
        f = self.files.get(name)
        if f is not None:
            return f
        path = self.out / (name + (".ndjson.gz" if self.compress else ".ndjson"))
        self.paths.append(path)
        # Kept open across the whole run and closed in close(), hence no with-block.
        opened: IO[bytes]
        if self.compress:  # GzipFile is a binary file, which typeshed does not say
            opened = cast(IO[bytes], gzip.open(path, "wb", compresslevel=1))  # noqa: SIM115
        else:
            opened = open(path, "wb", buffering=1 << 20)  # noqa: SIM115
        self.files[name] = opened
        return opened

    def close(self) -> None:
        for f in self.files.values():
            f.close()


def _write_ndjson(args: argparse.Namespace, writers: Writers, counts: collections.Counter[str],
                  bar: tqdm) -> None:
    dumps = orjson.dumps
    newline = orjson.OPT_APPEND_NEWLINE
    for r in iter_resources(args.patients, args.seed):
        t = r["resourceType"]
        writers.get(t).write(dumps(r, option=newline))
        counts[t] += 1
        if t == "Patient":
            bar.update(1)


def _write_bundles(args: argparse.Namespace, writers: Writers,
                   counts: collections.Counter[str], bar: tqdm) -> int:
    f = writers.get("bundles")
    bundles = 0
    for b in iter_bundles(args.patients, args.seed, args.bundle_size):
        f.write(orjson.dumps(b, option=orjson.OPT_APPEND_NEWLINE))
        bundles += 1
        for t in _types(b):
            counts[t] += 1
            if t == "Patient":
                bar.update(1)
    return bundles


def _types(bundle: dict[str, Any]) -> Iterator[str]:
    for e in bundle["entry"]:
        yield e["resource"]["resourceType"]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    counts: collections.Counter[str] = collections.Counter()
    writers = Writers(args.out, args.gzip)
    started = time.perf_counter()
    bundles = 0
    try:
        with tqdm(total=args.patients, unit="patient", file=sys.stderr, smoothing=0.1,
                  dynamic_ncols=True) as bar:
            if args.format == "ndjson":
                _write_ndjson(args, writers, counts, bar)
            else:
                bundles = _write_bundles(args, writers, counts, bar)
    finally:
        writers.close()
    seconds = time.perf_counter() - started
    total = sum(counts.values())
    size = sum(p.stat().st_size for p in writers.paths)
    width = max((len(t) for t in counts), default=8)
    print(f"seed {args.seed}, {args.patients} patients, records up to "
          f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(REFERENCE_TIME))}")
    for t, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        print(f"  {t:<{width}} {n:>10,}")
    print(f"  {'total':<{width}} {total:>10,}")
    where = (f"{bundles:,} transaction Bundles in {args.out / 'bundles.ndjson'}"
             f"{'.gz' if args.gzip else ''}" if args.format == "bundles"
             else f"{len(writers.files)} files in {args.out}")
    print(f"wrote {where} ({size / 2**20:,.1f} MiB)")
    rate = total / seconds if seconds else 0.0
    print(f"generated {total:,} resources in {seconds:.1f} s: {rate:,.0f} resources/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

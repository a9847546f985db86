"""``python -m server.generate NAME|all [--definitions DIR]``: rebuild generated tables."""

from __future__ import annotations

import importlib
import sys

GENERATORS = ["structures", "valuesets", "search_params", "compartments", "profiles"]


def main(argv: list[str]) -> None:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip())
        print("generators:", ", ".join(GENERATORS))
        return
    name, rest = argv[0], argv[1:]
    names = GENERATORS if name == "all" else [name]
    for n in names:
        if n not in GENERATORS:
            raise SystemExit(f"unknown generator {n!r}; one of: {', '.join(GENERATORS)}")
        importlib.import_module(f"server.generate.{n}").main(rest)


if __name__ == "__main__":
    main(sys.argv[1:])

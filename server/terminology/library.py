"""The terminology Consilium ships: every CodeSystem and ValueSet under ``terminology/``.

The JSON files (one resource each, authored by hand with en/fa/zh designations) are read once per
process. ``terminology/r4/`` holds a generated table for the validator and is not read here.
:func:`builtin_resources` hands copies to whoever installs them into the store at start-up; the
operations use the compiled :func:`library` directly, so built-in terminology answers without a
round trip to the store.
"""

from __future__ import annotations

import copy
import functools
import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from server.terminology.codesystem import CodeSystemIndex

TERMINOLOGY_DIR = Path(__file__).resolve().parents[2] / "terminology"
TYPES = ("CodeSystem", "ValueSet")


@dataclass(frozen=True)
class Library:
    resources: tuple[dict[str, Any], ...]
    code_systems: dict[str, tuple[CodeSystemIndex, ...]]  # url -> versions, as loaded
    value_sets: dict[str, tuple[dict[str, Any], ...]]
    by_id: dict[tuple[str, str], dict[str, Any]]  # (type, id) -> resource

    def code_system(self, url: str, version: str | None = None) -> CodeSystemIndex | None:
        return _pick(self.code_systems.get(url, ()), version, lambda cs: cs.version)

    def value_set(self, url: str, version: str | None = None) -> dict[str, Any] | None:
        return _pick(self.value_sets.get(url, ()), version, lambda vs: vs.get("version"))


def _pick(candidates: Iterable[Any], version: str | None, version_of: Any) -> Any:
    items = list(candidates)
    if version is not None:
        items = [c for c in items if version_of(c) == version]
    return max(items, key=lambda c: version_key(version_of(c))) if items else None


def version_key(version: str | None) -> tuple[tuple[int, Any], ...]:
    """Orders versions naturally (0.10.0 after 0.9.1); no version sorts first."""
    if version is None:
        return ()
    parts = version.replace("-", ".").split(".")
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in parts)


def load(directory: Path) -> Library:
    """Read and index the CodeSystems and ValueSets of ``directory`` (not its subfolders).
    Two resources with the same type and id, or the same canonical URL and version, are an
    error: the files are the product's definitions and must not contradict each other."""
    resources: list[dict[str, Any]] = []
    by_id: dict[tuple[str, str], dict[str, Any]] = {}
    canonical: set[tuple[str, str, str | None]] = set()
    for path in sorted(directory.glob("*.json")):
        resource = json.loads(path.read_text(encoding="utf-8"))
        kind = resource.get("resourceType")
        if kind not in TYPES:
            continue
        key = (kind, resource.get("id"))
        ident = (kind, resource.get("url"), resource.get("version"))
        if not isinstance(key[1], str) or not isinstance(ident[1], str):
            raise ValueError(f"{path.name}: a {kind} needs an id and a url")
        if key in by_id or ident in canonical:
            raise ValueError(f"{path.name}: {kind} {key[1]} ({ident[1]}|{ident[2]}) is defined "
                             "twice")
        by_id[key] = resource
        canonical.add(ident)
        resources.append(resource)
    code_systems: dict[str, list[CodeSystemIndex]] = {}
    value_sets: dict[str, list[dict[str, Any]]] = {}
    for r in resources:
        if r["resourceType"] == "CodeSystem":
            code_systems.setdefault(r["url"], []).append(CodeSystemIndex(r))
        else:
            value_sets.setdefault(r["url"], []).append(r)
    return Library(tuple(resources), {k: tuple(v) for k, v in code_systems.items()},
                   {k: tuple(v) for k, v in value_sets.items()}, by_id)


@functools.cache
def library() -> Library:
    return load(TERMINOLOGY_DIR)


def builtin_resources() -> list[dict[str, Any]]:
    """The built-in CodeSystems and ValueSets, as fresh copies the caller may change (the store
    sets ``meta`` on what it writes)."""
    return copy.deepcopy(list(library().resources))

"""The telemedicine workflow: consultations, referrals, the expert pool, consent, reports,
quality and fees, as rules on plain FHIR writes (server.fhir.hooks) and as operations.

Every module of this package that defines ``install(hooks)`` (its write rules) and/or
``OPERATIONS`` (its operations, server.fhir.table.Operation) is part of the workflow; the
application collects them here, so adding a module is all it takes.
"""

from __future__ import annotations

import functools
import importlib
import pkgutil
from types import ModuleType
from typing import Any


@functools.cache
def modules() -> tuple[ModuleType, ...]:
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in names)


def install(hooks: Any) -> None:
    for module in modules():
        if hasattr(module, "install"):
            module.install(hooks)


def operations() -> tuple[Any, ...]:
    return tuple(op for module in modules() for op in getattr(module, "OPERATIONS", ()))

"""The shapes of the interaction and operation tables (server.fhir.interactions assembles them;
each area declares its own operations with :class:`Operation`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from server.fhir.request import FhirRequest, FhirResponse
    from server.storage.base import ResourceStore

Handler = Callable[["FhirRequest", "ResourceStore"], Awaitable["FhirResponse"]]
#: An operation's parameter: (name, use "in" or "out", min, max, type, documentation).
Param = tuple[str, str, int, str, str, str]


@dataclass(frozen=True)
class Interaction:
    name: str  # unique, used in metrics and logs
    code: str  # the CapabilityStatement interaction code
    level: str  # system, type or instance
    method: str
    path: str
    handler: Handler
    summary: str
    conditional: bool = False
    #: Further CapabilityStatement codes this entry serves (POST [base] is transaction and batch).
    also: tuple[str, ...] = ()


@dataclass(frozen=True)
class Operation:
    name: str  # without the $
    definition: str  # canonical URL of its OperationDefinition
    levels: frozenset[str]
    handler: Handler
    summary: str
    methods: tuple[str, ...] = ("POST",)
    types: tuple[str, ...] | None = None  # None: every resource type
    #: Whether a token is needed (False: public, e.g. the expert pool listing).
    public: bool = False
    #: What its OperationDefinition says: the parameters, and more than the summary.
    parameters: tuple[Param, ...] = ()
    description: str = ""

    def serves(self, level: str, type_: str | None) -> bool:
        return level in self.levels and (self.types is None or type_ in self.types)


def operation_definition(op: Operation) -> dict[str, Any]:
    """The OperationDefinition published at ``op.definition``, from the same entry the router
    dispatches on, so the two cannot drift."""
    id_ = op.definition.rsplit("/", 1)[-1]
    definition: dict[str, Any] = {
        "resourceType": "OperationDefinition",
        "id": id_,
        "url": op.definition,
        "version": "0.1.0",
        "name": "".join(p[:1].upper() + p[1:] for p in id_.split("-")),
        "title": op.summary,
        "status": "active",
        "kind": "operation",
        "publisher": "Consilium",
        "description": op.description or op.summary,
        "affectsState": "GET" not in op.methods,
        "code": op.name,
        "resource": list(op.types or ("Resource",)),
        "system": "system" in op.levels,
        "type": "type" in op.levels,
        "instance": "instance" in op.levels,
    }
    if op.parameters:
        definition["parameter"] = [{"name": n, "use": use, "min": lo, "max": hi, "type": t,
                                    "documentation": doc}
                                   for n, use, lo, hi, t, doc in op.parameters]
    return definition

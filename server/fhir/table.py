"""The shapes of the interaction and operation tables (server.fhir.interactions assembles them;
each area declares its own operations with :class:`Operation`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from server.fhir.request import FhirRequest, FhirResponse
    from server.storage.base import ResourceStore

Handler = Callable[["FhirRequest", "ResourceStore"], Awaitable["FhirResponse"]]


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

    def serves(self, level: str, type_: str | None) -> bool:
        return level in self.levels and (self.types is None or type_ in self.types)

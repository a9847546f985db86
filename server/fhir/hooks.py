"""Business rules that run inside the write: the application context and write hooks.

Every write of the FHIR API (single interactions, transaction and batch entries, and the
operations built on them) goes through :func:`store`, which runs the hooks registered for the
resource type in the same store transaction as the write itself. A hook sees the new content and
the current version, may refuse (raise FhirError: the write and everything with it is undone),
may change the content (it is validated and indexed again), and may write further resources
(a Task for a new consultation request, a Provenance for a change of state) as the system.

Areas register their hooks in :class:`WriteHooks` when the app is built (server.app); the
protocol edge knows nothing of the rules, and the rules know nothing of HTTP.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from server.fhir import codec
from server.fhir.prepare import prepare
from server.storage.base import IndexRows, Transaction, Version

if TYPE_CHECKING:
    from server.auth.keys import KeyStore
    from server.auth.scopes import Principal
    from server.clock import Clock
    from server.config import Settings


@dataclass
class WriteEvent:
    type: str
    id: str
    method: str  # POST, PUT, PATCH or DELETE
    resource: dict[str, Any] | None  # the new content (None for a deletion)
    current: Version | None  # the version it replaces, if any
    principal: Principal
    context: AppContext
    tx: Transaction  # the caller's transaction: reads and writes are checked against its scopes
    version: Version | None = None  # after the write: what was stored
    _previous: Any = field(default=None, repr=False)

    @property
    def previous(self) -> dict[str, Any] | None:
        """The current (replaced) content, parsed; None if there was none or it was deleted."""
        if self._previous is None and self.current is not None and self.current.body:
            self._previous = codec.loads(self.current.body)
        return self._previous

    @property
    def system(self) -> Transaction:
        """The transaction without the caller's scope checks: for what the rules themselves
        read and write (a requester may create a consultation without rights on Task)."""
        from server.auth.guard import unguarded

        return unguarded(self.tx)

    def write(self, resource: dict[str, Any], id: str | None = None,
              method: str | None = None) -> Version:
        """Validate, index and write another resource as the system, in this transaction.
        Its own hooks run too."""
        from server.fhir.writes import new_id

        type_ = resource["resourceType"]
        id_ = id or resource.get("id") or new_id()
        current = self.system.read(type_, id_)
        return store(self.system, self.context, self.principal, type_, id_, resource,
                     prepare(resource, type_), method or ("PUT" if current else "POST"),
                     current)


Hook = Callable[[WriteEvent], None]


class WriteHooks:
    def __init__(self) -> None:
        self._before: dict[str, list[Hook]] = {}
        self._after: dict[str, list[Hook]] = {}

    def before(self, type: str, hook: Hook) -> None:
        """``hook`` runs before a ``type`` resource is written or deleted."""
        self._before.setdefault(type, []).append(hook)

    def after(self, type: str, hook: Hook) -> None:
        """``hook`` runs once a ``type`` resource is written (``event.version`` set)."""
        self._after.setdefault(type, []).append(hook)

    def has(self, type: str) -> bool:
        return type in self._before or type in self._after

    def run_before(self, event: WriteEvent) -> bool:
        hooks = self._before.get(event.type, ())
        for hook in hooks:
            hook(event)
        return bool(hooks)

    def run_after(self, event: WriteEvent) -> None:
        for hook in self._after.get(event.type, ()):
            hook(event)


@dataclass(frozen=True)
class AppContext:
    """What the application is built with, handed to handlers and rules."""

    settings: Settings
    clock: Clock
    keys: KeyStore
    hooks: WriteHooks = field(default_factory=WriteHooks)


def store(tx: Transaction, context: AppContext | None, principal: Principal | None, type: str,
          id: str, resource: dict[str, Any] | None, indexes: IndexRows | None, method: str,
          current: Version | None) -> Version:
    """Write (or, with ``resource`` None, delete) one resource with the rules of its type."""
    event = None
    if context is not None and principal is not None and context.hooks.has(type):
        event = WriteEvent(type, id, method, resource, current, principal, context, tx)
        if context.hooks.run_before(event) and resource is not None:
            indexes = prepare(resource, type)  # the rules may have changed it
    if resource is None:
        version = tx.delete(type, id)
        assert version is not None
    else:
        version = tx.write(type, id, resource, indexes, method)
    if event is not None:
        event.version = version
        context.hooks.run_after(event)  # type: ignore[union-attr]
    return version

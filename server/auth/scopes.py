"""SMART on FHIR scopes and the principal a request acts as.

Both scope syntaxes are understood: v1 (``system/Patient.read``, ``user/*.write``, ``*.*``) and
v2 (``patient/Observation.rs``, ``system/*.cruds``), per
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html. A scope grants actions:
``c`` create, ``r`` read (read, vread, history), ``u`` update (and patch), ``d`` delete, ``s``
search.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field

ACTIONS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_SCOPE = re.compile(r"^(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.(\*|read|write|[cruds]+)(\?.*)?$")


class ScopeError(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class Scope:
    context: str  # patient, user or system
    type: str  # resource type or "*"
    actions: str  # subset of "cruds"

    @classmethod
    def parse(cls, text: str) -> Scope | None:
        """A resource scope, or None for other scopes (openid, launch, fhirUser, offline_access)."""
        m = _SCOPE.match(text)
        if m is None:
            if "/" in text and "." in text:
                raise ScopeError(f"malformed scope {text!r}")
            return None
        context, type_, perm, query = m.groups()
        if query:
            raise ScopeError(f"scope {text!r}: search-restricted scopes are not supported")
        if perm in _V1:
            actions = _V1[perm]
        else:
            if "".join(sorted(perm, key=ACTIONS.index)) != perm or len(set(perm)) != len(perm):
                raise ScopeError(f"scope {text!r}: actions must be in the order c r u d s")
            actions = perm
        return cls(context, type_, actions)

    def allows(self, type: str, action: str) -> bool:
        return (self.type == "*" or self.type == type) and action in self.actions


def parse_scopes(text: str) -> tuple[Scope, ...]:
    return tuple(s for s in (Scope.parse(part) for part in text.split()) if s is not None)


@dataclass(frozen=True)
class Principal:
    """Who a request acts for: from a verified token, or everyone when authorization is off."""

    subject: str
    scope: str
    scopes: tuple[Scope, ...] = field(default=())
    client_id: str | None = None
    fhir_user: str | None = None
    patient: str | None = None  # launch context: the patient a patient/ scope is bound to
    unrestricted: bool = False  # authorization turned off

    @classmethod
    def from_scope(cls, subject: str, scope: str, **kw: object) -> Principal:
        return cls(subject, scope, parse_scopes(scope), **kw)  # type: ignore[arg-type]

    @classmethod
    def anonymous(cls) -> Principal:
        return cls("anonymous", "system/*.cruds", parse_scopes("system/*.cruds"),
                   unrestricted=True)

    def can(self, type: str, action: str) -> bool:
        return self.unrestricted or _allows(self.scopes, type, action)

    @property
    def backend(self) -> bool:
        """A backend client (system scopes and no user), or authorization turned off: the
        workflow lets it act for any party."""
        return self.unrestricted or (not self.fhir_user and any(
            s.context == "system" for s in self.scopes))


@functools.lru_cache(maxsize=4096)
def _allows(scopes: tuple[Scope, ...], type: str, action: str) -> bool:
    return any(s.allows(type, action) for s in scopes)

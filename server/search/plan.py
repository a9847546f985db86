"""A parsed FHIR search, independent of any backend (search.html).

``server.search.query`` builds a :class:`SearchQuery` from the request parameters; each backend
compiles it (``server.storage.sqlite_search`` to SQL; the MongoDB backend to a query document).
Values are already normalised and turned into ranges here, so backends only compare.
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Bounds used for open ends of date ranges (µs since the epoch).
NEG_INF = -(2**62)
POS_INF = 2**62


@dataclass(frozen=True, slots=True)
class TokenValue:
    system: str | None  # None: any system (``code``); "" : no system (``|code``)
    code: str | None  # None: any code in the system (``system|``)


@dataclass(frozen=True, slots=True)
class StringValue:
    text: str  # normalised as the index is
    exact: str | None = None  # ``:exact``: the value as written (compared with the original)


@dataclass(frozen=True, slots=True)
class RangeValue:
    """A date, number or quantity value: its prefix and the range its precision implies."""

    prefix: str  # eq ne gt lt ge le sa eb ap
    lo: float
    hi: float
    system: str | None = None  # quantity only
    code: str | None = None
    #: A number's or quantity's value itself, which the prefixes other than eq and ne compare
    #: with ("the implicit precision of the number is ignored", search.html#number).
    exact: float | None = None


@dataclass(frozen=True, slots=True)
class ReferenceValue:
    type: str | None
    id: str | None
    url: str | None = None
    version: str | None = None


@dataclass(frozen=True, slots=True)
class UriValue:
    uri: str


@dataclass(frozen=True, slots=True)
class CompositeValue:
    """A composite value (``part$part…``, search.html#composite): one value per component,
    each of its component parameter's ``kinds`` entry. The parts must all hold for one element
    (one ``Observation.component``), not each for some element."""

    kinds: tuple[str, ...]
    parts: tuple[TokenValue | StringValue | RangeValue, ...]


Value = TokenValue | StringValue | RangeValue | ReferenceValue | UriValue | CompositeValue


@dataclass(frozen=True, slots=True)
class Match:
    """Resources of ``type`` whose index rows for parameter ``code`` (stored in ``kind``) match
    any of ``values``. ``modifier`` is what the backend needs to know: ``exact``, ``contains``,
    ``below``, ``above``, or None."""

    type: str
    code: str
    kind: str  # string token reference date number quantity uri composite, or id lastUpdated
    values: tuple[Value, ...]
    modifier: str | None = None


@dataclass(frozen=True, slots=True)
class Missing:
    type: str
    code: str
    kind: str
    missing: bool


@dataclass(frozen=True, slots=True)
class Not:
    """``:not``: resources with no value matching ``clause`` (also those with no value)."""

    clause: Match


@dataclass(frozen=True, slots=True)
class Chain:
    """``code[:target].inner``: a reference ``code`` of ``type`` points at a ``target_types``
    resource that matches ``inner`` (which is on that target type)."""

    type: str
    code: str
    target_type: str
    inner: Clause


@dataclass(frozen=True, slots=True)
class AnyOf:
    """At least one of the clauses (a chain over several possible target types)."""

    clauses: tuple[Clause, ...]


@dataclass(frozen=True, slots=True)
class Has:
    """``_has:source_type:code:inner``: some ``source_type`` resource refers to this one
    (of ``type``) through its parameter ``code`` and matches ``inner``."""

    type: str
    source_type: str
    code: str
    inner: Clause


Clause = Match | Missing | Not | Chain | AnyOf | Has


@dataclass(frozen=True, slots=True)
class SortKey:
    code: str
    kind: str
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    """``_include=source_type:code[:target_type]`` (or ``_revinclude``); code ``*`` = every
    reference parameter."""

    source_type: str
    code: str
    target_type: str | None
    iterate: bool = False


@dataclass(slots=True)
class SearchQuery:
    types: tuple[str, ...]
    clauses: list[Clause] = field(default_factory=list)
    sort: list[SortKey] = field(default_factory=list)
    count: int = 20
    cursor: str | None = None
    total: str = "auto"  # none, estimate, accurate; auto: accurate when cheap
    includes: list[Include] = field(default_factory=list)
    revincludes: list[Include] = field(default_factory=list)
    #: Parameters that were not understood or not supported and ignored, as written, each with
    #: why (reported in the bundle).
    ignored: dict[str, str] = field(default_factory=dict)
    #: Parameters used, each with a warning about how (reported in the bundle).
    warnings: dict[str, str] = field(default_factory=dict)
    #: Values of parameters that cannot apply to the search (name, value as written): left out
    #: of the self link, each with a warning.
    unused: set[tuple[str, str]] = field(default_factory=set)
    summary_count: bool = False
    #: This server's FHIR base with a trailing slash: absolute references under it are local
    #: ones. None when unknown; then only relative references count as local.
    base: str | None = None

"""Compiling a search plan (server.search.plan) to SQL over the SQLite index tables.

Every value travels as a bound parameter; SQL text is assembled only from fixed fragments. Each
clause becomes a condition on a resource alias, ``<alias>.rid IN (SELECT rid FROM idx_… WHERE
pid = ? AND …)``, which SQLite answers from the clustered (pid, value, rid) index of the table.
"""

from __future__ import annotations

import base64
import functools
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import orjson

from server.search import index
from server.search.plan import (
    NEG_INF,
    POS_INF,
    AnyOf,
    Chain,
    Clause,
    CompositeValue,
    Has,
    Include,
    Match,
    Missing,
    Not,
    RangeValue,
    ReferenceValue,
    SearchQuery,
    SortKey,
    StringValue,
    TokenValue,
    UriValue,
)
from server.storage.base import SearchPage, Version
from server.storage.sqlite_schema import INDEX_TABLES, composite_columns, param_id

_TOP = "\U0010ffff"


@functools.lru_cache(maxsize=8192)
def pids_of(type: str, code: str) -> tuple[int, ...]:
    """The parameter ids of the index rows a search on ``code`` of ``type`` reads: its own, or
    those of the parameters it is the union of (registry.Registry.stored_codes)."""
    from server.search.registry import registry

    reg = registry()
    if ">#" in code:  # of the resources ``type`` contains, as its ``referring`` points at them
        referring, _, rest = code.partition(">#")
        inner, _, code = rest.partition(".")
        return tuple(param_id(type, f"{r}>#{inner}.{c}") for r in reg.stored_codes(type, referring)
                     for c in reg.stored_codes(inner, code))
    return tuple(param_id(type, c) for c in reg.stored_codes(type, code))


def _inside(c: Chain) -> Clause | None:
    """A chain's condition as it reads, on a resource of ``c.type``, the rows of the
    ``c.target_type`` resource it contains and points at through ``c.code`` (index.extract);
    None for a condition that cannot (on the id or the time of the resource, a composite, a
    chain from a contained resource on to another contained one)."""
    inner = c.inner
    m = inner.clause if isinstance(inner, Not) else inner
    if not isinstance(m, Match | Missing | Chain) or ">#" in c.code or ">#" in m.code \
            or isinstance(m, Match | Missing) and m.kind in (*_COLUMNS, "composite"):
        return None
    code = f"{c.code}>#{c.target_type}.{m.code}"
    if isinstance(inner, Not):
        return Not(replace(inner.clause, type=c.type, code=code))
    return replace(m, type=c.type, code=code)


def _contained_ref(c: Chain, ref: str, compiler: Compiler) -> str:
    """The idx_reference row ``ref`` is the reference of ``c.code`` to a contained
    ``c.target_type`` resource (index.extract)."""
    return (f"{pid_sql(pids_of(c.type, c.code), ref + '.pid')} AND "
            f"{ref}.target_type = {compiler.arg(c.target_type)} AND {ref}.target_id = '' AND "
            f"{ref}.url >= '#' AND {ref}.url < '$'")


def pid_sql(pids: Sequence[int], column: str = "pid") -> str:
    """``column`` among ``pids`` (our own integers, written inline)."""
    if len(pids) == 1:
        return f"{column} = {int(pids[0])}"
    return f"{column} IN ({', '.join(str(int(p)) for p in pids)})"


def span_sql(pids: Sequence[int]) -> str:
    """The widest range (hi - lo) of the rows of ``pids``, as SQL (NULL without rows)."""
    return f"(SELECT max(span) FROM span WHERE {pid_sql(pids)})"


@dataclass(frozen=True, slots=True)
class Ranges:
    """Conditions repeated with AND on a date parameter that has one row per resource: they must
    hold for that row, so they are answered together by one bounded range of the index."""

    type: str
    code: str
    values: tuple[RangeValue, ...]
#: Clause kinds answered from the resource table's own columns rather than an index table.
_COLUMNS = ("id", "lastUpdated")
#: A total is computed by default when the matches are at most this many.
AUTO_TOTAL_LIMIT = 1000
_MAX_INCLUDED = 1000
_ITERATE_ROUNDS = 10


class Compiler:
    """Builds SQL text and its argument list together: every ``arg()`` call must happen in
    the order its placeholder appears in the text."""

    def __init__(self, base: str | None = None) -> None:
        self.args: list[Any] = []
        self._alias = 0
        self.base = base

    def local(self, ref: str) -> str:
        """Whether the idx_reference row ``ref`` points into this server: a relative reference,
        or an absolute one under this server's base (search.html#reference). A reference to
        ``Patient/1`` on another server is not one to our ``Patient/1``."""
        if self.base is None:
            return f"{ref}.url = ''"
        return (f"({ref}.url = '' OR ({ref}.url >= {self.arg(self.base)} AND "
                f"{ref}.url < {self.arg(self.base + _TOP)}))")

    def alias(self) -> str:
        self._alias += 1
        return f"t{self._alias}"

    def arg(self, value: Any) -> str:
        self.args.append(value)
        return "?"

    # -- clauses --------------------------------------------------------------------------------

    def rids(self, c: Clause | Ranges) -> str | None:
        """``SELECT rid …`` of the resources a clause selects, for the clauses that can give
        such a list from an index (and so drive a search); None for the others."""
        if isinstance(c, Ranges):
            return " UNION ".join(self.date_terms(pids_of(c.type, c.code), list(c.values)))
        if isinstance(c, Match) and c.kind != "lastUpdated":
            return self.match_rids(c)
        if isinstance(c, Chain):
            return self.chain_rids(c)
        if isinstance(c, Has):
            return self.has_rids(c)
        if isinstance(c, AnyOf) and all(isinstance(x, Match) and x.kind != "lastUpdated"
                                        for x in c.clauses):
            return self.any_of_rids(c)
        return None

    def probe(self, c: Clause | Ranges, res: str) -> str:
        """``c`` as a test of one resource, looked up through the rid index of its table: what
        a search checks for the few resources its driving clause found."""
        if isinstance(c, Ranges):
            cond = " AND ".join(self.range(v, "x.lo", "x.hi", "date") for v in c.values)
            return (f"EXISTS (SELECT 1 FROM idx_date x WHERE x.rid = {res}.rid AND "
                    f"{pid_sql(pids_of(c.type, c.code), '+x.pid')} AND {cond})")
        if isinstance(c, Match) and c.kind not in _COLUMNS:
            table = INDEX_TABLES[c.kind][0]
            terms: list[str] = []
            for v in c.values:
                alternatives = self.value(c, v)
                terms += alternatives if isinstance(alternatives, list) else [alternatives]
            return (f"EXISTS (SELECT 1 FROM {table} WHERE rid = {res}.rid AND "
                    f"{pid_sql(pids_of(c.type, c.code), '+pid')} AND ({' OR '.join(terms)}))")
        if isinstance(c, Chain):  # follow this resource's references, check their targets
            t = self.alias()
            pid = pid_sql(pids_of(c.type, c.code), "+ref.pid")
            ttype = self.arg(c.target_type)
            local = self.local("ref")
            inner = self.probe(c.inner, t)
            sql = (f"EXISTS (SELECT 1 FROM idx_reference ref JOIN resource {t} ON "
                   f"{t}.type = ref.target_type AND {t}.id = ref.target_id WHERE ref.rid = "
                   f"{res}.rid AND {pid} AND ref.target_type = {ttype} AND {local} "
                   f"AND {t}.deleted = 0 AND {inner})")
            contained = _inside(c)
            if contained is None:
                return sql
            return (f"({sql} OR EXISTS (SELECT 1 FROM idx_reference ref WHERE ref.rid = "
                    f"{res}.rid AND {_contained_ref(c, 'ref', self)}) AND "
                    f"{self.probe(contained, res)})")
        return self.clause(c, res)

    def clause(self, c: Clause | Ranges, res: str) -> str:
        if isinstance(c, Ranges):
            return f"{res}.rid IN ({self.rids(c)})"
        if isinstance(c, Match):
            return self.match(c, res)
        if isinstance(c, Not):
            return f"NOT ({self.match(c.clause, res)})"
        if isinstance(c, Missing):
            return self.missing(c, res)
        if isinstance(c, Chain):
            return self.chain(c, res)
        if isinstance(c, Has):
            return self.has(c, res)
        if isinstance(c, AnyOf):
            return self.any_of(c, res)
        raise TypeError(f"unknown clause {c!r}")

    def any_of(self, c: AnyOf, res: str) -> str:
        """At least one of the clauses. Matches that differ only in their parameter (one value
        searched on several types, or through every parameter of a compartment) share one
        subquery over ``pid IN (…)``: one read of the index instead of one per parameter."""
        groups: dict[tuple[Any, ...], list[Match]] = {}
        others: list[Clause] = []
        for x in c.clauses:
            if isinstance(x, Match):  # the types searched are the outer query's
                groups.setdefault((x.kind, x.values, x.modifier), []).append(x)
            else:
                others.append(x)
        parts = [self.match(group[0], res, group) for group in groups.values()]
        parts += [self.typed(x, res) for x in others]
        return "(" + " OR ".join(parts) + ")"

    def typed(self, c: Clause, res: str) -> str:
        """``c`` for resources of its own type only. Matches and chains select rows of their
        type's parameters anyway; ``:not``, ``:missing=true`` and ``_has`` would also hold for
        resources of the other types searched (a Practitioner is "not" a male Patient)."""
        if isinstance(c, Not | Missing | Has):
            type_ = c.clause.type if isinstance(c, Not) else c.type
            return f"(+{res}.type = {self.arg(type_)} AND {self.clause(c, res)})"
        return self.clause(c, res)

    def missing(self, c: Missing, res: str) -> str:
        if c.kind == "id":
            return "0" if c.missing else "1"
        if c.kind == "lastUpdated":
            return "0" if c.missing else "1"
        table = INDEX_TABLES[c.kind][0]
        sub = f"SELECT rid FROM {table} WHERE {pid_sql(pids_of(c.type, c.code))}"
        # A value only :identifier or :text finds (a Reference holding just an identifier, a
        # CodeableConcept just a text) is a value all the same.
        also = {"reference": ("token", ":identifier"), "token": ("string", ":text")}
        if c.kind in also:
            kind, suffix = also[c.kind]
            sub += (f" UNION ALL SELECT rid FROM {INDEX_TABLES[kind][0]} WHERE "
                    f"{pid_sql(pids_of(c.type, c.code + suffix))}")
        return f"{res}.rid {'NOT IN' if c.missing else 'IN'} ({sub})"

    def match(self, m: Match, res: str, same: list[Match] | None = None) -> str:
        """``m``, or any of ``same`` (matches that differ from ``m`` only in type and code)."""
        if m.kind == "lastUpdated":
            conds = [self.range(v, f"{res}.updated", f"{res}.updated", "date")
                     for v in m.values if isinstance(v, RangeValue)]
            return "(" + " OR ".join(conds) + ")"
        return f"{res}.rid IN ({self.match_rids(m, same)})"

    def match_rids(self, m: Match, same: list[Match] | None = None) -> str:
        if m.kind == "id":  # through the (type, id) index, of each type
            types = ", ".join(self.arg(t) for t in dict.fromkeys(x.type for x in same or [m]))
            ids = [v.code for v in m.values if isinstance(v, TokenValue)]
            return (f"SELECT rid FROM resource WHERE type IN ({types}) AND id IN "
                    f"({', '.join(self.arg(i) for i in ids)})")
        table = INDEX_TABLES[m.kind][0]
        pids = list(dict.fromkeys(p for x in same or [m] for p in pids_of(x.type, x.code)))
        if m.kind == "date":
            terms = [t for v in m.values if isinstance(v, RangeValue)
                     for t in self.date_terms(pids, [v])]
            return " UNION ".join(terms)
        # Parameter ids are our own integers, written inline. Alternatives (OR) become a UNION
        # of lookups: SQLite cannot split an OR over a WITHOUT ROWID table's primary key, and
        # would read every row of the parameter instead.
        pid = pid_sql(pids)
        terms = []
        for v in m.values:
            cond = self.value(m, v, pids)
            terms += [f"SELECT rid FROM {table} WHERE {pid} AND {c}"
                      for c in (cond if isinstance(cond, list) else [cond])]
        return " UNION ".join(terms)

    def date_terms(self, pids: Sequence[int], values: list[RangeValue]) -> list[str]:
        """``SELECT rid`` terms (to be UNIONed) for date rows meeting every condition of
        ``values``. A condition that only bounds ``hi`` from below ("on or after X") bounds
        ``lo`` too, for rows with both ends (lo >= X - the widest such row's span): a bounded
        range of the (pid, lo) key instead of the rest of the table. Rows open at either end
        are looked up on their own."""
        lower = upper = via_hi = None
        for v in values:
            gap = _ap_gap(v) if v.prefix == "ap" else 0
            low_lo = {"eq": v.lo, "sa": v.hi + 1}.get(v.prefix)
            low_hi = {"ge": v.lo, "gt": v.hi + 1, "ap": v.lo - gap}.get(v.prefix)
            high_lo = {"lt": v.lo - 1, "le": v.hi, "eq": v.hi, "eb": v.lo - 1,
                       "ap": v.hi + gap}.get(v.prefix)
            if low_lo is not None:
                lower = low_lo if lower is None else max(lower, low_lo)
            if low_hi is not None:
                via_hi = low_hi if via_hi is None else max(via_hi, low_hi)
            if high_lo is not None:
                upper = high_lo if upper is None else min(upper, high_lo)
        head = f"SELECT rid FROM idx_date WHERE {pid_sql(pids)}"

        def conds(lo: str = "lo", hi: str = "hi") -> str:
            # Called where its placeholders go: arguments are positional.
            return " AND ".join(self.range(v, lo, hi, "date") for v in values)

        if via_hi is None or (lower is not None and lower >= via_hi):
            bounds = ""
            if lower is not None:
                bounds += f" AND lo >= {self.arg(lower)}"
            if upper is not None:
                bounds += f" AND lo <= {self.arg(upper)}"
            return [f"{head}{bounds} AND {conds()}"]
        bounded = (f"{head} AND lo >= {self.arg(via_hi)} - coalesce({span_sql(pids)}, 0)")
        if upper is not None:
            bounded += f" AND lo <= {self.arg(upper)}"
        bounded += f" AND {conds()}"
        # "+hi", "+lo": the equality on the open end is what to look up, not the conditions.
        open_end = f"{head} AND hi = {POS_INF} AND {conds(hi='+hi')}"
        open_start = f"{head} AND lo = {NEG_INF} AND {conds(lo='+lo')}"
        return [bounded, open_end, open_start]

    def value(self, m: Match, v: Any, pids: list[int] | None = None) -> str | list[str]:
        """The condition on an index row of ``pids`` (by default ``m``'s parameter) for one
        value (a list: alternatives)."""
        kind = m.kind
        span = (span_sql(pids or pids_of(m.type, m.code))
                if kind in ("date", "number", "quantity", "composite") else None)
        if kind == "string":
            assert isinstance(v, StringValue)
            if v.exact is not None:
                return f"(value = {self.arg(v.text)} AND exact = {self.arg(v.exact)})"
            if m.modifier == "contains":
                pattern = v.text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
                return f"value LIKE {self.arg('%' + pattern + '%')} ESCAPE '\\'"
            return self.part("string", v, ("value", "exact"))
        if kind == "token":
            return self.part("token", v, ("system", "code"))
        if kind == "composite":
            assert isinstance(v, CompositeValue)
            columns = composite_columns(v.kinds)
            conds = [self.part(k, p, c, span if c[-2:] == ("lo", "hi") else None)
                     for k, p, c in zip(v.kinds, v.parts, columns, strict=True)]
            if all(k in ("token", "string") for k in v.kinds):  # no range: lo = hi = 0
                conds.insert(0, "lo = 0 AND hi = 0")
            return "(" + " AND ".join(conds) + ")"
        if kind == "reference":
            assert isinstance(v, ReferenceValue)
            if v.url is not None:
                # The url is stored with the type and id extraction read from it (so the
                # primary key's prefix finds it), or with none (canonicals, urns).
                keys = [("", "")]
                row = index.reference_row(v.url)
                if row is not None and row[1]:
                    keys.append((row[1], row[0]))
                conds = []
                for target_id, target_type in keys:
                    cond = (f"target_id = {self.arg(target_id)} AND target_type = "
                            f"{self.arg(target_type)} AND url = {self.arg(v.url)}")
                    if v.version:
                        cond += f" AND version = {self.arg(v.version)}"
                    conds.append(f"({cond})")
                return conds
            cond = f"target_id = {self.arg(v.id)}"
            if v.type:
                cond += f" AND target_type = {self.arg(v.type)}"
            return f"({cond} AND {self.local('idx_reference')})"
        if kind == "uri":
            assert isinstance(v, UriValue)
            if m.modifier == "below":  # the URL and those under it, segment by segment
                stem = v.uri.rstrip("/")
                return (f"(uri IN ({self.arg(stem)}, {self.arg(stem + '/')}) OR (uri > "
                        f"{self.arg(stem + '/')} AND uri < {self.arg(stem + '/' + _TOP)}))")
            if m.modifier == "above":
                prefixes = _uri_prefixes(v.uri)
                return f"uri IN ({', '.join(self.arg(p) for p in prefixes)})"
            return f"uri = {self.arg(v.uri)}"
        if kind == "quantity":
            return self.part(kind, v, ("system", "code", "lo", "hi"), span)
        if kind in ("date", "number"):
            return self.part(kind, v, ("lo", "hi"), span)
        raise ValueError(f"cannot search {kind} values")

    def part(self, kind: str, v: Any, columns: tuple[str, ...], span: str | None = None) -> str:
        """The condition on a token, string (prefix), quantity, date or number value stored in
        ``columns`` (the order of its index tail): a parameter's own, or a composite's part.
        ``span``: the widest range (hi - lo) of the rows searched, as SQL."""
        if kind == "string":
            assert isinstance(v, StringValue)
            value = columns[0]
            return f"({value} >= {self.arg(v.text)} AND {value} < {self.arg(v.text + _TOP)})"
        if kind == "token":
            assert isinstance(v, TokenValue)
            system, code = columns
            parts = []
            if v.code is not None:
                parts.append(f"{code} = {self.arg(v.code)}")
            if v.system is not None:
                parts.append(f"{system} = {self.arg(v.system)}")
            return "(" + " AND ".join(parts) + ")"
        assert isinstance(v, RangeValue)
        if kind == "quantity":
            system, code, lo, hi = columns
            cond = self.range(v, lo, hi, kind, span)
            if v.code is not None:
                cond += f" AND {code} = {self.arg(v.code)}"
            if v.system is not None:
                cond += f" AND {system} = {self.arg(v.system)}"
            return f"({cond})"
        lo, hi = columns
        return f"({self.range(v, lo, hi, kind, span)})"

    def range(self, v: RangeValue, lo: str, hi: str, kind: str, span: str | None = None) -> str:
        """Prefix semantics of search.html#prefix: the range of the search value (its precision)
        against the range of the value in the resource (a date's precision; a number's Range or
        comparator, or the number itself).

        Some conditions carry a redundant bound (``lo <= ?`` where ``hi <= ?`` already implies
        it, or ``lo >= ? - span`` where hi is at least ?) so that SQLite can read a
        range of the (pid, lo) or (pid, hi) index."""
        a = self.arg
        p = v.prefix
        if kind == "date":
            if p in ("eq", "ne"):
                eq = f"({lo} >= {a(v.lo)} AND {lo} <= {a(v.hi)} AND {hi} <= {a(v.hi)})"
                return eq if p == "eq" else f"NOT {eq}"
            if p == "gt":
                return f"{hi} > {a(v.hi)}"
            if p == "lt":
                return f"{lo} < {a(v.lo)}"
            # ge and le: some of the value is at or above the search value's start (at or
            # below its end): the range above (below) it, or its own, meets the value's.
            if p == "ge":
                return f"{hi} >= {a(v.lo)}"
            if p == "le":
                return f"{lo} <= {a(v.hi)}"
            if p == "sa":
                return f"{lo} > {a(v.hi)}"
            if p == "eb":
                return f"{hi} < {a(v.lo)}"
            gap = _ap_gap(v)
            return f"({lo} <= {a(v.hi + gap)} AND {hi} >= {a(v.lo - gap)})"
        # Numbers and quantities: a value in a resource is a point (lo = hi), a Range or a
        # comparator (``>5``) an interval. The search value's precision makes its range for eq
        # and ne; the other prefixes ignore it and compare with the number itself
        # (search.html#number: "ge100: greater or equal to exactly 100"). Not the middle of the
        # range: in binary floating point that is often a little off the number.
        assert v.exact is not None, "numbers and quantities are parsed with their exact value"
        value = v.exact

        def floor(bound: float) -> str:  # hi >= bound: lo >= bound - span
            return f"{lo} >= {a(bound)} - {span} AND " if span else ""

        if p == "eq":  # the search range holds the whole value
            return f"({lo} >= {a(v.lo)} AND {lo} < {a(v.hi)} AND {hi} < {a(v.hi)})"
        if p == "ne":
            return f"NOT ({lo} >= {a(v.lo)} AND {hi} < {a(v.hi)})"
        if p == "gt":  # some of the value is above
            return f"({floor(value)}{hi} > {a(value)})"
        if p == "lt":
            return f"{lo} < {a(value)}"
        if p == "ge":  # some of the value is at or above
            return f"({floor(value)}{hi} >= {a(value)})"
        if p == "le":
            return f"{lo} <= {a(value)}"
        if p == "sa":  # all of the value is above
            return f"{lo} > {a(value)}"
        if p == "eb":
            return f"({lo} < {a(value)} AND {hi} < {a(value)})"
        gap = abs(value) * 0.1
        return f"({floor(value - gap)}{lo} <= {a(value + gap)} AND {hi} >= {a(value - gap)})"

    def chain(self, c: Chain, res: str) -> str:
        return f"{res}.rid IN ({self.chain_rids(c)})"

    def chain_rids(self, c: Chain) -> str:
        t = self.alias()
        pid = pid_sql(pids_of(c.type, c.code), "ref.pid")
        ttype = self.arg(c.target_type)
        ttype2 = self.arg(c.target_type)
        inner = self.clause(c.inner, t)
        local = self.local("ref")
        sql = (f"SELECT ref.rid FROM idx_reference ref WHERE {pid} "
               f"AND ref.target_type = {ttype} AND ref.target_id IN (SELECT {t}.id FROM "
               f"resource {t} WHERE +{t}.type = {ttype2} AND {t}.deleted = 0 AND {inner}) "
               f"AND {local}")
        contained = _inside(c)
        if contained is not None:  # or a resource it contains (search.html#contained)
            return (f"{sql} UNION ALL SELECT ref.rid FROM idx_reference ref WHERE "
                    f"{_contained_ref(c, 'ref', self)} AND {self.clause(contained, 'ref')}")
        return sql

    def has(self, c: Has, res: str) -> str:
        return f"{res}.rid IN ({self.has_rids(c)})"

    def has_rids(self, c: Has) -> str:
        t = self.alias()
        # As a list of rids (the targets looked up by type and id), so that it can drive.
        owner = self.arg(c.type)
        pid = pid_sql(pids_of(c.source_type, c.code), "ref.pid")
        ttype = self.arg(c.type)
        local = self.local("ref")
        stype = self.arg(c.source_type)
        inner = self.clause(c.inner, t)
        return (f"SELECT o.rid FROM resource o WHERE o.type = {owner} AND o.id IN "
                f"(SELECT ref.target_id FROM idx_reference ref JOIN resource {t} "
                f"ON {t}.rid = ref.rid WHERE {pid} AND ref.target_type = {ttype} "
                f"AND {local} AND +{t}.type = {stype} AND {t}.deleted = 0 AND {inner})")

    def any_of_rids(self, c: AnyOf) -> str:
        groups: dict[tuple[Any, ...], list[Match]] = {}
        for x in c.clauses:
            assert isinstance(x, Match)
            groups.setdefault((x.kind, x.values, x.modifier), []).append(x)
        return " UNION ".join(self.match_rids(group[0], group) for group in groups.values())

    # -- sorting --------------------------------------------------------------------------------

    def sort_expr(self, key: SortKey, types: tuple[str, ...], res: str) -> str:
        if key.kind == "id":
            return f"{res}.id"
        if key.kind == "lastUpdated":
            return f"{res}.updated"
        table = INDEX_TABLES[key.kind][0]
        column = {"string": "value", "token": "code", "reference": "target_type || '/' || "
                  "target_id", "uri": "uri"}.get(key.kind, "hi" if key.descending else "lo")
        agg = "max" if key.descending else "min"
        pids = [p for t in types for p in pids_of(t, key.code)]
        # "+pid": read the few rows of this resource through the rid index. Left indexable,
        # pid tempts SQLite to answer min()/max() by walking the (pid, hi) index in order,
        # which reads the whole parameter for every match.
        return (f"(SELECT {agg}({column}) FROM {table} WHERE rid = {res}.rid AND "
                f"{pid_sql(pids, '+pid')})")


def _ap_gap(v: RangeValue) -> float:
    """How far ``ap`` widens a date: 10% of its distance from now, at least a day."""
    now = time.time() * 1_000_000
    return max(abs(now - (v.lo + v.hi) / 2) * 0.1, 86_400_000_000)


def _uri_prefixes(uri: str) -> list[str]:
    """The URI and its ancestors (``:above``), each also as written with a trailing slash."""
    out = [uri]
    while "/" in uri.rstrip("/"):
        uri = uri.rstrip("/").rsplit("/", 1)[0]
        if uri.endswith(":/") or uri.endswith(":"):
            break
        out += [uri, uri + "/"]
    return out


# -- cursors --------------------------------------------------------------------------------------

def _encode_cursor(values: list[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).decode().rstrip("=")


def _decode_cursor(cursor: str, n: int) -> list[Any]:
    """``[direction, snapshot, *sort values, rid]`` (see :func:`run_search`)."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)))
    except (ValueError, orjson.JSONDecodeError):
        raise ValueError("invalid page cursor") from None
    if not isinstance(values, list) or len(values) != n + 3 or values[0] not in ("n", "p") \
            or type(values[-1]) is not int or type(values[1]) not in (int, type(None)) \
            or not all(v is None or type(v) in (str, int, float) for v in values[2:]):
        raise ValueError("invalid page cursor")
    return values


def _after(keys: list[tuple[str, bool]], values: list[Any], c: Compiler,
           nulls_last: bool = True) -> str:
    """Rows strictly after ``values`` in the order ``keys`` ((expression, descending) pairs; the
    last key is the unique rid). Resources without a value for a sort key come after the others
    (NULLS LAST), or before them when paging backwards (``nulls_last`` False)."""
    ors = []
    for i, (expr, desc) in enumerate(keys):
        eqs = [f"{e} IS {c.arg(v)}" for (e, _), v in zip(keys[:i], values[:i], strict=True)]
        v = values[i]
        last = i < len(keys) - 1 and nulls_last
        if v is None:
            step = "0" if last else f"{expr} IS NOT NULL"
        else:
            step = f"{expr} {'<' if desc else '>'} {c.arg(v)}"
            if last:
                step = f"({step} OR {expr} IS NULL)"
        ors.append("(" + " AND ".join([*eqs, step]) + ")")
    return "(" + " OR ".join(ors) + ")"


# -- planning -------------------------------------------------------------------------------------

#: Index rows read at most to estimate how many resources a clause selects.
ESTIMATE_CAP = 2000
#: With a sort, when even the most selective clause selects at least this many resources, the
#: page is read in the sort key's index order instead of sorting every match.
SORT_DRIVE_MIN = 1000
#: When even the most selective clause selects at least this many resources and its index
#: rows do not come in rid order, the resources are walked in rid order, each checked, until
#: the page is full: many matches make that quick, where listing them all first is not.
WALK_MIN = 20_000
_SORT_COLUMNS = {"string": "value", "number": "lo", "uri": "uri"}


@dataclass
class _Plan:
    """How a page is read. ``driver``: the clause whose index list starts the search (the others
    are checked per resource); ``stream``: read the driver's index in rid order and stop at the
    page's end; ``by_sort``: read the sort parameter's index in order and check every clause;
    ``walk``: read the resources of the type in rid order and check every clause."""

    clauses: list[Any]
    driver: int | None = None
    stream: bool = False
    by_sort: bool = False
    walk: bool = False
    estimate: int | None = None  # of the driver, up to ESTIMATE_CAP


def _clauses(query: SearchQuery) -> list[Any]:
    """The query's clauses, conditions repeated with AND on a one-row date parameter merged."""
    from server.search.registry import one_row

    out: list[Any] = []
    dates: dict[tuple[str, str], list[Match]] = {}
    for c in query.clauses:
        if isinstance(c, Match) and c.kind == "date" and len(c.values) == 1 \
                and len(query.types) == 1 and one_row(c.type, c.code):
            dates.setdefault((c.type, c.code), []).append(c)
        else:
            out.append(c)
    for (type_, code), matches in dates.items():
        out.append(matches[0] if len(matches) == 1 else Ranges(
            type_, code, tuple(m.values[0] for m in matches if isinstance(m.values[0],
                                                                           RangeValue))))
    return out


def _sort_table(query: SearchQuery) -> tuple[str, str] | None:
    """(index table, column) when the search can be read in the order of its one sort key."""
    from server.search.registry import one_row

    if len(query.types) != 1 or len(query.sort) != 1:
        return None
    key = query.sort[0]
    if key.kind not in ("date", *_SORT_COLUMNS) or not one_row(query.types[0], key.code) \
            or len(pids_of(query.types[0], key.code)) != 1 \
            or key.kind == "number" and key.descending:  # by hi: no (pid, hi) index
        return None
    column = ("hi" if key.descending else "lo") if key.kind == "date" else _SORT_COLUMNS[key.kind]
    return INDEX_TABLES[key.kind][0], column


def _streamable(c: Any) -> bool:
    """Whether the clause's index rows come in rid order (the key's other columns all fixed)."""
    return isinstance(c, Match) and c.kind == "token" and len(c.values) == 1 \
        and isinstance(c.values[0], TokenValue) and c.values[0].code is not None \
        and c.values[0].system is not None and len(pids_of(c.type, c.code)) == 1


def _plan(conn: sqlite3.Connection | None, query: SearchQuery) -> _Plan:
    clauses = _clauses(query)
    if len(query.types) != 1:
        return _Plan(clauses)
    if conn is None:  # no data to estimate with: the first clause that can drive
        return _Plan(clauses, next(
            (i for i, c in enumerate(clauses) if Compiler().rids(c) is not None), None))
    counted = [(_estimate(conn, query, c, ESTIMATE_CAP), i) for i, c in enumerate(clauses)]
    best = min(((n, i) for n, i in counted if n is not None), default=None)
    if _sort_table(query) is not None and (best is None or best[0] >= SORT_DRIVE_MIN):
        return _Plan(clauses, by_sort=True, estimate=best[0] if best else None)
    if best is None:
        return _Plan(clauses)
    if not query.sort and best[0] >= ESTIMATE_CAP:  # every clause selects many: stream one
        best = next(((n, i) for n, i in counted if n is not None and _streamable(clauses[i])),
                    best)
    stream = not query.sort and best[0] >= ESTIMATE_CAP and _streamable(clauses[best[1]])
    # A chain or _has is not worth counting further: listing its rids is a join, and so is
    # checking it for each resource of a walk.
    if not query.sort and best[0] >= ESTIMATE_CAP and not stream \
            and not isinstance(clauses[best[1]], Chain | Has) \
            and (_estimate(conn, query, clauses[best[1]], WALK_MIN) or 0) >= WALK_MIN:
        return _Plan(clauses, walk=True, estimate=best[0])
    return _Plan(clauses, best[1], stream, estimate=best[0])


def _estimate(conn: sqlite3.Connection, query: SearchQuery, clause: Any,
              cap: int) -> int | None:
    """How many resources ``clause`` selects, counting up to ``cap`` index rows; None for a
    clause that cannot list them from an index."""
    comp = Compiler(query.base)
    sql = comp.rids(clause)
    if sql is None:
        return None
    n: int = conn.execute(f"SELECT count(*) FROM ({sql} LIMIT {cap})", comp.args).fetchone()[0]
    return n


def _where(query: SearchQuery, c: Compiler, res: str = "r", plan: _Plan | None = None) -> str:
    """The conditions of a search on resource ``res``: its types, not deleted, and the clauses
    (the plan's driver as an index list, the others as checks of each resource)."""
    plan = plan or _Plan(_clauses(query))
    types = query.types
    # "+type": with an index list to start from, SQLite (which keeps no statistics here) must
    # not walk every resource of the type instead.
    driven = plan.driver is not None or plan.by_sort or len(types) > 1 and any(
        Compiler().rids(cl) is not None for cl in plan.clauses)
    col = f"+{res}.type" if driven else f"{res}.type"
    conds = [f"{col} = {c.arg(types[0])}" if len(types) == 1 else
             f"{col} IN ({', '.join(c.arg(t) for t in types)})", f"{res}.deleted = 0"]
    for i, cl in enumerate(plan.clauses):
        if plan.stream and i == plan.driver:
            continue
        if len(types) > 1:  # a clause from one type's parameter holds for that type only
            conds.append(c.typed(cl, res))
        elif i == plan.driver or plan.driver is None and not (plan.by_sort or plan.walk):
            conds.append(c.clause(cl, res))
        else:
            conds.append(c.probe(cl, res))
    return " AND ".join(conds)


_SELECT = ("SELECT r.rid, r.type, r.id, r.version, r.updated, v.body{extra} FROM resource r "
           "JOIN version v ON v.seq = r.seq")
_COLS = "r.rid, r.type, r.id, r.version, r.updated, v.body"


def _version(row: Any) -> Version:
    return Version(row[1], row[2], row[3], row[4], False, row[5])


def run_in_transaction(conn: sqlite3.Connection, query: SearchQuery,
                       limit: int | None = None) -> list[Version]:
    """Matches of a (conditional) search, seen by the writer inside its transaction."""
    c = Compiler(query.base)
    sql = _SELECT.format(extra="") + " WHERE " + _where(query, c, plan=_plan(conn, query)) \
        + " ORDER BY r.rid"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return [_version(row) for row in conn.execute(sql, c.args)]


def page_sql(query: SearchQuery, cursor: list[Any] | None = None,
             snapshot: int | None = None, conn: sqlite3.Connection | None = None,
             plan: _Plan | None = None) -> tuple[str, list[Any]]:
    """SQL and arguments of one page: the matches in order after the decoded ``cursor`` (or
    before it, for a ``p`` cursor), one more row than the page holds. Each row is ``rid, type,
    id, version, updated, body`` and then the sort keys. With a ``snapshot``, resources changed
    after it are left out (see :func:`run_search`). Without ``conn`` (no estimates), the first
    clause that can drive does."""
    plan = plan or _plan(conn, query)
    if plan.stream:
        return _stream_sql(query, plan, cursor, snapshot)
    sorter = Compiler(query.base)
    keys = [(sorter.sort_expr(k, query.types, "r"), k.descending) for k in query.sort]
    c = Compiler(query.base)
    where = _where(query, c, plan=_Plan(plan.clauses, plan.driver, walk=plan.walk))
    if snapshot is not None:
        where += f" AND r.updated <= {c.arg(snapshot)}"
    sort_cols = "".join(f", {e} AS s{i}" for i, (e, _) in enumerate(keys))
    sql = f"SELECT * FROM ({_SELECT.format(extra=sort_cols)} WHERE {where})"
    args = sorter.args + c.args
    outer_keys = [(f"s{i}", d) for i, (_, d) in enumerate(keys)] + [("rid", False)]
    backwards = cursor is not None and cursor[0] == "p"
    direction = [(e, (not d) if backwards else d) for e, d in outer_keys]
    if cursor is not None:
        after = Compiler()
        sql += " WHERE " + _after(direction, cursor[2:], after, nulls_last=not backwards)
        args += after.args
    nulls = "FIRST" if backwards else "LAST"
    sql += " ORDER BY " + ", ".join(
        f"{e} {'DESC' if d else 'ASC'}" + (f" NULLS {nulls}" if e != "rid" else "")
        for e, d in direction)
    return sql + f" LIMIT {int(query.count) + 1}", args


def _stream_sql(query: SearchQuery, plan: _Plan, cursor: list[Any] | None,
                snapshot: int | None) -> tuple[str, list[Any]]:
    """The page read straight off the driving clause's index, in rid order."""
    driver = plan.clauses[plan.driver]  # type: ignore[index]
    c = Compiler(query.base)
    table = INDEX_TABLES[driver.kind][0]
    cond = c.value(driver, driver.values[0])
    sql = (f"SELECT {_COLS} FROM {table} d CROSS JOIN resource r ON r.rid = d.rid JOIN version "
           f"v ON v.seq = r.seq WHERE {pid_sql(pids_of(driver.type, driver.code), 'd.pid')} AND "
           f"{cond} AND {_where(query, c, plan=plan)}")
    if snapshot is not None:
        sql += f" AND r.updated <= {c.arg(snapshot)}"
    backwards = cursor is not None and cursor[0] == "p"
    if cursor is not None:
        sql += f" AND d.rid {'<' if backwards else '>'} {c.arg(cursor[-1])}"
    sql += f" ORDER BY d.rid {'DESC' if backwards else 'ASC'} LIMIT {int(query.count) + 1}"
    return sql, c.args


def _by_sort(conn: sqlite3.Connection, query: SearchQuery, plan: _Plan,
             cursor: list[Any] | None, snapshot: int | None) -> list[Any]:
    """A page read in the order of the sort parameter's index, every clause checked per
    resource; then, past the last value, the resources that have none (in rid order). The
    order is exactly the general one (value, then rid; no value last), so pages of either kind
    follow each other."""
    table, column = _sort_table(query)  # type: ignore[misc]
    key = query.sort[0]
    pids = pids_of(query.types[0], key.code)
    want = int(query.count) + 1
    rows: list[Any] = []
    if cursor is None or cursor[2] is not None:
        c = Compiler(query.base)
        sql = (f"SELECT {_COLS}, d.{column} FROM {table} d CROSS JOIN resource r ON r.rid = "
               f"d.rid JOIN version v ON v.seq = r.seq WHERE {pid_sql(pids, 'd.pid')} AND "
               f"{_where(query, c, plan=plan)}")
        if snapshot is not None:
            sql += f" AND r.updated <= {c.arg(snapshot)}"
        if cursor is not None:
            sql += " AND " + _after([(f"d.{column}", key.descending), ("r.rid", False)],
                                    cursor[2:], c, nulls_last=False)
        sql += (f" ORDER BY d.{column} {'DESC' if key.descending else 'ASC'}, r.rid ASC "
                f"LIMIT {want}")
        rows = conn.execute(sql, c.args).fetchall()
    if len(rows) < want:
        c = Compiler(query.base)
        sql = (f"SELECT {_COLS}, NULL FROM resource r JOIN version v ON v.seq = r.seq WHERE "
               f"NOT EXISTS (SELECT 1 FROM {table} x WHERE x.rid = r.rid AND {pid_sql(pids, '+x.pid')}) "
               f"AND {_where(query, c, plan=plan)}")
        if snapshot is not None:
            sql += f" AND r.updated <= {c.arg(snapshot)}"
        if cursor is not None and cursor[2] is None:
            sql += f" AND r.rid > {c.arg(cursor[-1])}"
        sql += f" ORDER BY r.rid LIMIT {want - len(rows)}"
        rows += conn.execute(sql, c.args).fetchall()
    return rows


def run_search(conn: sqlite3.Connection, query: SearchQuery) -> SearchPage:
    """One page of matches, keyset-paged: a cursor holds the sort keys and rid of the row next
    to the page, so a page never repeats or skips a resource that stays unchanged, however
    others are created, updated or deleted meanwhile. Sort keys other than ``_id`` can change
    when a resource is updated (which could move it onto a later page again): such searches
    also remember when their first page was read and leave out what changed after that.

    How the page is read is planned from the data (:func:`_plan`): the most selective clause
    drives, or the sort key's index when nothing is selective."""
    plan = _plan(conn, query)
    total = None
    if query.total != "none" or query.summary_count:
        # _count=0 "shall be treated the same as _summary=count" (search.html#count)
        exact = query.total == "accurate" or query.summary_count or query.count == 0
        cap = None if exact else AUTO_TOTAL_LIMIT
        if cap is None or plan.estimate is None or plan.estimate <= cap:
            c = Compiler(query.base)
            counted = _Plan(plan.clauses, plan.driver)
            total = _count(conn, _where(query, c, plan=counted), c.args, cap)
    if query.summary_count or query.count == 0:
        return SearchPage([], [], total)
    cursor = _decode_cursor(query.cursor, len(query.sort)) if query.cursor else None
    if cursor is not None:
        snapshot = cursor[1]
    elif any(k.kind != "id" for k in query.sort):
        snapshot = conn.execute("SELECT max(updated) FROM version").fetchone()[0] or 0
    else:
        snapshot = None
    backwards = cursor is not None and cursor[0] == "p"
    if plan.by_sort and not backwards:
        rows = _by_sort(conn, query, plan, cursor, snapshot if cursor is not None else None)
    else:
        if plan.by_sort:  # backwards: the general reading, same order
            plan = _Plan(plan.clauses, next((i for i, cl in enumerate(plan.clauses)
                                             if Compiler().rids(cl) is not None), None))
        sql, args = page_sql(query, cursor, snapshot if cursor is not None else None,
                             plan=plan)
        rows = conn.execute(sql, args).fetchall()
    if backwards and not rows:  # all before the cursor gone: the first page of what is left
        return run_search(conn, replace(query, cursor=None))
    more = len(rows) > query.count
    rows = rows[: query.count]
    if backwards:
        rows.reverse()
    n = len(query.sort)

    def cursor_of(row: Any, kind: str) -> str:
        return _encode_cursor([kind, snapshot, *[row[6 + i] for i in range(n)], row[0]])

    next_cursor = prev_cursor = None
    if rows:
        if more or backwards:
            next_cursor = cursor_of(rows[-1], "n")
        if cursor is not None and (not backwards or more):
            prev_cursor = cursor_of(rows[0], "p")
    matches = [_version(row) for row in rows]
    included, notes = _includes(conn, query, matches) if query.includes or query.revincludes \
        else ([], [])
    return SearchPage(matches, included, total, next_cursor, prev_cursor, notes)


def _count(conn: sqlite3.Connection, where: str, args: list[Any], cap: int | None) -> int | None:
    inner = f"SELECT 1 FROM resource r WHERE {where}"
    if cap is None:
        return conn.execute(f"SELECT count(*) FROM ({inner})", args).fetchone()[0]
    n = conn.execute(f"SELECT count(*) FROM ({inner} LIMIT {cap + 1})", args).fetchone()[0]
    return None if n > cap else n


def _fetch(conn: sqlite3.Connection, refs: Iterable[tuple[str, str, str]]) -> list[Version]:
    """The resources of (type, id, version) references: the current one when the version is
    empty, else that version ("If a resource has a reference that is versioned and _include is
    performed, the specified version SHOULD be provided", search.html#versions)."""
    out = []
    for type_, id_, version in refs:
        if not version:
            row = conn.execute(
                "SELECT r.rid, r.type, r.id, r.version, r.updated, v.body FROM resource r JOIN "
                "version v ON v.seq = r.seq WHERE r.type = ? AND r.id = ? AND r.deleted = 0",
                (type_, id_)).fetchone()
        elif version.isdigit():
            row = conn.execute(
                "SELECT r.rid, r.type, r.id, v.version, v.updated, v.body FROM resource r JOIN "
                "version v ON v.rid = r.rid AND v.version = ? WHERE r.type = ? AND r.id = ? "
                "AND v.body IS NOT NULL", (int(version), type_, id_)).fetchone()
        else:
            row = None
        if row is not None:
            out.append(_version(row))
    return out


def _includes(conn: sqlite3.Connection, query: SearchQuery,
              matches: list[Version]) -> tuple[list[Version], list[str]]:
    """The resources ``_include`` and ``_revinclude`` bring, and notes on where they stopped."""
    # A version a reference names apart from the current one is included too.
    seen = {(v.type, v.id, v.version) for v in matches}
    included: list[Version] = []
    frontier = matches
    notes: list[str] = []
    for round_ in range(_ITERATE_ROUNDS):
        found: list[Version] = []
        for inc in query.includes:
            if round_ and not inc.iterate:
                continue
            found += _forward(conn, inc, frontier, query.base)
        for inc in query.revincludes:
            if round_ and not inc.iterate:
                continue
            found += _reverse(conn, inc, frontier, query.base)
        fresh: list[Version] = []
        for v in found:
            if (v.type, v.id, v.version) not in seen:
                if len(included) + len(fresh) == _MAX_INCLUDED:
                    notes.append(f"_include and _revinclude stopped at {_MAX_INCLUDED} "
                                 "resources; narrow the search to see the others")
                    return included + fresh, notes
                seen.add((v.type, v.id, v.version))
                fresh.append(v)
        included += fresh
        if not fresh:
            break
        frontier = fresh
    else:
        further = [v for i in query.includes if i.iterate
                   for v in _forward(conn, i, frontier, query.base)]
        further += [v for i in query.revincludes if i.iterate
                    for v in _reverse(conn, i, frontier, query.base)]
        if any((v.type, v.id, v.version) not in seen for v in further):
            notes.append(f":iterate stopped after {_ITERATE_ROUNDS} rounds; resources further "
                         "along are left out")
    return included, notes


def _rid(conn: sqlite3.Connection, v: Version) -> int:
    return conn.execute("SELECT rid FROM resource WHERE type = ? AND id = ?",
                        (v.type, v.id)).fetchone()[0]


def _include_pids(type: str, code: str) -> list[int]:
    """The parameter ids of the reference rows an include of ``type:code`` follows (``*``:
    every reference parameter of the type), each once."""
    from server.search.registry import registry

    codes = ([p.code for p in registry().params_for(type).values() if p.type == "reference"]
             if code == "*" else [code])
    return list(dict.fromkeys(pid for c in codes for pid in pids_of(type, c)))


def _forward(conn: sqlite3.Connection, inc: Include, sources: list[Version],
             base: str | None) -> list[Version]:
    refs: list[tuple[str, str, str]] = []
    for v in sources:
        if inc.source_type not in ("*", v.type):
            continue
        pids = _include_pids(v.type, inc.code)
        if not pids:
            continue
        c = Compiler(base)
        local = c.local("idx_reference")
        rows = conn.execute(
            f"SELECT target_type, target_id, version FROM idx_reference WHERE rid = ? AND pid "
            f"IN ({', '.join('?' for _ in pids)}) AND target_id != '' AND {local}",
            (_rid(conn, v), *pids, *c.args))
        refs += [(t, i, ver) for t, i, ver in rows if inc.target_type in (None, t)]
    return _fetch(conn, dict.fromkeys(refs))


def _reverse(conn: sqlite3.Connection, inc: Include, targets: list[Version],
             base: str | None) -> list[Version]:
    if inc.source_type == "*":
        return []
    pids = _include_pids(inc.source_type, inc.code)
    out: list[Version] = []
    c = Compiler(base)
    local = c.local("x")
    for pid in pids:
        for v in targets:
            if inc.target_type not in (None, v.type):
                continue
            rows = conn.execute(
                "SELECT r.rid, r.type, r.id, r.version, r.updated, b.body FROM idx_reference x "
                "JOIN resource r ON r.rid = x.rid JOIN version b ON b.seq = r.seq "
                f"WHERE x.pid = ? AND x.target_id = ? AND x.target_type = ? AND {local} "
                "AND r.deleted = 0 LIMIT ?", (pid, v.id, v.type, *c.args, _MAX_INCLUDED + 1))
            out += [_version(row) for row in rows]
    return out

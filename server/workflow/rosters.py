"""Experts' duty rosters (排班表, IM A7 第二部分 二(二)2): a Schedule per expert and month (actor
the expert's PractitionerRole, planningHorizon the month) with Slots that are free or busy.

An expert is on duty in a window when one of their free Slots overlaps it. When the expert a
request names (or the one the invited side picks) is not on duty, the department head names a
substitute: another expert of the same specialty and organisation, in the pool and on duty, the
one free soonest.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from server.storage.base import Transaction
from server.workflow import model
from server.workflow.casefile import search
from server.workflow.intake import in_pool


def schedules_of(tx: Transaction, role_id: str) -> list[dict[str, Any]]:
    return [s for s in search(tx, "Schedule", [("actor", f"PractitionerRole/{role_id}")])
            if s.get("active") is not False]


def _bounds(slot: dict[str, Any]) -> tuple[datetime, datetime]:
    return model.parse_datetime(slot["start"]), model.parse_datetime(slot["end"])


def slots_of(tx: Transaction, role_id: str, before: datetime,
             statuses: tuple[str, ...] = ("free",)) -> list[dict[str, Any]]:
    """The expert's Slots with one of ``statuses`` starting before ``before``, by start."""
    out = []
    for schedule in schedules_of(tx, role_id):
        out += search(tx, "Slot", [("schedule", f"Schedule/{schedule['id']}"),
                                   ("status", ",".join(statuses)),
                                   ("start", f"lt{model.fhir_instant(before)}")])
    return sorted(out, key=lambda s: (_bounds(s)[0], s["id"]))


def first_free(tx: Transaction, role_id: str, start: datetime, end: datetime) -> datetime | None:
    """When the expert's first free Slot overlapping [start, end) begins (None: not on duty)."""
    for slot in slots_of(tx, role_id, end):
        slot_start, slot_end = _bounds(slot)
        if slot_end > start:
            return max(slot_start, start)
    return None


def on_duty(tx: Transaction, role_id: str, start: datetime, end: datetime) -> bool:
    return first_free(tx, role_id, start, end) is not None


def slot_for(tx: Transaction, role_id: str, start: datetime, end: datetime,
             held: frozenset[str] = frozenset()) -> dict[str, Any] | None:
    """A Slot of the expert holding the whole session [start, end]: a free one, or one the
    session already holds (``held``: Slot ids, when it is moved within its own slot)."""
    for slot in slots_of(tx, role_id, end, ("free", "busy")):
        if slot["status"] != "free" and slot["id"] not in held:
            continue
        slot_start, slot_end = _bounds(slot)
        if slot_start <= start and end <= slot_end:
            return slot
    return None


def duty_experts(tx: Transaction, specialty: str, start: datetime, end: datetime,
                 organization: str | None, exclude: frozenset[str] = frozenset()) -> list[str]:
    """PractitionerRole ids of ``organization``'s pool experts of ``specialty`` on duty in
    [start, end): the soonest free first, then by id."""
    ranked = []
    for role in search(tx, "PractitionerRole", [("specialty", f"{model.SPECIALTY}|{specialty}")]):
        if role["id"] in exclude or not in_pool(role):
            continue
        if model.reference_id(role.get("organization"), "Organization") != organization:
            continue
        free = first_free(tx, role["id"], start, end)
        if free is not None:
            ranked.append((free, role["id"]))
    return [role_id for _, role_id in sorted(ranked)]

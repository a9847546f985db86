"""The consultation operations, declared once with their parameters: the router serves them
(server.workflow.consultation.OPERATIONS) and server.builtin publishes their OperationDefinitions
(server.fhir.table.operation_definition)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.fhir.table import Operation, Param
from server.workflow import consultation_ops as ops
from server.workflow import model

_NOTE: Param = ("note", "in", 0, "1", "string", "A note added to the Task")
_TASK: Param = ("return", "out", 1, "1", "Task", "The Task as changed")
_COMMUNICATION: Param = ("return", "out", 1, "1", "Communication", "The Communication sent")


@dataclass(frozen=True)
class Spec:
    name: str
    handler: Any
    title: str
    description: str
    parameters: tuple[Param, ...]
    instance: bool = True
    methods: tuple[str, ...] = ("POST",)

    @property
    def url(self) -> str:
        return f"{model.BASE}/OperationDefinition/Task-{self.name}"


SPECS: tuple[Spec, ...] = (
    Spec("accept", ops.accept, "Accept a consultation",
         "The invited side accepts the request (Task accepted).", (_NOTE, _TASK)),
    Spec("decline", ops.decline, "Decline a consultation",
         "The invited side declines, giving the reason (Task rejected, statusReason).",
         (("reason", "in", 1, "1", "CodeableConcept", f"A code from {model.DECLINE_REASON}"),
          _NOTE, _TASK)),
    Spec("assign", ops.assign, "Assign the expert",
         "Assign the named expert, or one on duty chosen from the duty roster (specialty, pool "
         "membership, 3+ years of practice). An expert who is not on duty until the session is "
         "due is replaced by another on-duty expert of the same specialty and organisation.",
         (("expert", "in", 0, "1", "Reference", "The expert's PractitionerRole; none: the "
           "request's named expert, else one from the roster"), _NOTE, _TASK)),
    Spec("schedule", ops.schedule, "Schedule the session",
         "Book the session within a free Slot of the assigned expert's roster (the Slot becomes "
         "busy): an Appointment (patient, expert, requester) and a virtual Encounter (class VR, "
         "planned). Calling it again moves the session, at least 2 h before it was to start.",
         (("start", "in", 1, "1", "dateTime", "When the session starts (with a time zone)"),
          ("end", "in", 1, "1", "dateTime", "When it ends; the report is due 30 min later"),
          _NOTE, _TASK)),
    Spec("start", ops.start, "Start the session",
         "Task in-progress (business status in-session), the Encounter in-progress.", (_TASK,)),
    Spec("complete", ops.complete, "Complete with the report",
         "Deliver the final, signed report: Task completed, business status report-delivered, "
         "the report in output.",
         (("report", "in", 1, "1", "Reference", "The DiagnosticReport (final, signed)"), _TASK)),
    Spec("cancel", ops.cancel, "Cancel a consultation",
         "The inviting side cancels (Task cancelled); a booked session is cancelled and its Slot "
         "freed.", (("reason", "in", 1, "1", "CodeableConcept",
                     f"A code from {model.CANCEL_REASON}"), _NOTE, _TASK)),
    Spec("ask", ops.ask, "Ask for more information",
         "The invited side asks the inviting side for more information (Communication "
         "clarification-request; Task business status awaiting-information).",
         (("question", "in", 1, "1", "string", "The question"),
          ("attachment", "in", 0, "*", "Attachment", "Attached documents"), _COMMUNICATION)),
    Spec("answer", ops.answer, "Answer a request for information",
         "The inviting side answers (Communication clarification-response with text and "
         "attachments; Task business status information-provided).",
         (("answer", "in", 1, "1", "string", "The answer"),
          ("attachment", "in", 0, "*", "Attachment", "Attached documents"),
          ("question", "in", 0, "1", "Reference", "The Communication answered (default: the "
           "latest question)"), _COMMUNICATION)),
    Spec("redirect", ops.redirect, "Redirect a consultation",
         "A new request to another organisation or expert replaces this one (replaces); this "
         "Task is cancelled and its request revoked. Returns the new Task.",
         (("organization", "in", 0, "1", "Reference", "The organisation invited instead"),
          ("expert", "in", 0, "1", "Reference", "The expert (PractitionerRole) named instead"),
          ("reason", "in", 0, "1", "CodeableConcept", f"A code from {model.CANCEL_REASON} for "
           "the old Task"), _NOTE, ("return", "out", 1, "1", "Task", "The new Task"))),
    Spec("overdue", ops.overdue, "Overdue consultations",
         "A searchset of the consultation Tasks whose current deadline "
         "(restriction.period.end) has passed and that are not done, most overdue first.",
         (("organization", "in", 0, "1", "Reference", "Only Tasks of this organisation "
           "(inviting or invited)"), ("return", "out", 1, "1", "Bundle", "searchset")),
         instance=False, methods=("GET", "POST")),
)


def operations() -> tuple[Operation, ...]:
    return tuple(Operation(s.name, s.url, frozenset({"instance" if s.instance else "type"}),
                           s.handler, s.title, s.methods, ("Task",), parameters=s.parameters,
                           description=s.description) for s in SPECS)

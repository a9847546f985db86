"""Errors of the FHIR face: every failure becomes an OperationOutcome with the right status.

Handlers and the layers under them raise :class:`FhirError`; the router turns it into the
response. Issue codes come from http://hl7.org/fhir/ValueSet/issue-type.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True)
class Issue:
    code: str
    diagnostics: str
    severity: str = "error"
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code}
        out["diagnostics"] = self.diagnostics
        if self.expression:
            out["expression"] = list(self.expression)
        return out


def outcome(issues: list[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def information(message: str) -> dict[str, Any]:
    return outcome([Issue("informational", message, severity="information")])


class FhirError(Exception):
    """A failure with an HTTP status and the OperationOutcome issues that explain it."""

    def __init__(
        self,
        status: int,
        code: str,
        diagnostics: str,
        expression: str | list[str] | None = None,
        *,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(diagnostics)
        self.status = status
        if issues is None:
            if isinstance(expression, str):
                expression = [expression]
            issues = [Issue(code, diagnostics, expression=list(expression or []))]
        self.issues = issues
        self.headers = headers or {}

    def outcome(self) -> dict[str, Any]:
        return outcome(self.issues)


def invalid(message: str, expression: str | list[str] | None = None, code: str = "invalid") -> FhirError:
    return FhirError(400, code, message, expression)


def unprocessable(message: str, expression: str | list[str] | None = None,
                  code: str = "business-rule") -> FhirError:
    return FhirError(422, code, message, expression)


def not_found(type_: str, id_: str | None = None) -> FhirError:
    what = f"{type_}/{id_}" if id_ else type_
    return FhirError(404, "not-found", f"{what} is not known")


def gone(type_: str, id_: str, version: int) -> FhirError:
    return FhirError(410, "deleted", f"{type_}/{id_} was deleted (version {version})",
                     headers={"ETag": f'W/"{version}"'})


def conflict(message: str) -> FhirError:
    return FhirError(409, "conflict", message)


def precondition_failed(message: str) -> FhirError:
    return FhirError(412, "conflict", message)


def not_supported(message: str, status: int = 405) -> FhirError:
    return FhirError(status, "not-supported", message)

"""What the FHIR face supports, declared once as data.

The router dispatches on these tables, and the CapabilityStatement and the OpenAPI paths are
generated from them, so none of the three can drift from the others. A path shape is the request
path under the FHIR base with its variable parts named: ``{type}``, ``{id}``, ``{vid}``,
``{compartment}`` and ``${operation}``.
"""

from __future__ import annotations

from server import workflow
from server.fhir import handlers, operations, transaction
from server.fhir.table import Interaction, Operation
from server.search import handlers as search
from server.terminology import operations as terminology

INTERACTIONS: tuple[Interaction, ...] = (
    Interaction("read", "read", "instance", "GET", "{type}/{id}", handlers.read,
                "Read the current version of a resource"),
    Interaction("vread", "vread", "instance", "GET", "{type}/{id}/_history/{vid}",
                handlers.vread, "Read a given version of a resource"),
    Interaction("update", "update", "instance", "PUT", "{type}/{id}", handlers.update,
                "Update a resource, or create it with this id"),
    Interaction("patch", "patch", "instance", "PATCH", "{type}/{id}", handlers.patch,
                "Change a resource with a JSON Patch"),
    Interaction("delete", "delete", "instance", "DELETE", "{type}/{id}", handlers.delete,
                "Delete a resource (a new, deleted version)"),
    Interaction("history-instance", "history-instance", "instance", "GET",
                "{type}/{id}/_history", handlers.history, "Versions of a resource"),
    Interaction("history-type", "history-type", "type", "GET", "{type}/_history",
                handlers.history, "Versions of all resources of a type"),
    Interaction("create", "create", "type", "POST", "{type}", handlers.create,
                "Create a resource (conditionally with If-None-Exist)"),
    Interaction("conditional-update", "update", "type", "PUT", "{type}",
                handlers.conditional_update, "Update the resource the criteria match",
                conditional=True),
    Interaction("conditional-patch", "patch", "type", "PATCH", "{type}",
                handlers.conditional_patch, "Patch the resource the criteria match",
                conditional=True),
    Interaction("conditional-delete", "delete", "type", "DELETE", "{type}",
                handlers.conditional_delete, "Delete the resource the criteria match",
                conditional=True),
    Interaction("search-type", "search-type", "type", "GET", "{type}", search.search_type,
                "Search resources of a type"),
    Interaction("search-type-post", "search-type", "type", "POST", "{type}/_search",
                search.search_type, "Search resources of a type (form-encoded parameters)"),
    Interaction("search-compartment", "search-type", "instance", "GET",
                "{type}/{id}/{compartment}", search.search_compartment,
                "Search resources of a type in a compartment"),
    Interaction("history-system", "history-system", "system", "GET", "_history",
                handlers.history, "Versions of all resources"),
    Interaction("search-system", "search-system", "system", "GET", "", search.search_system,
                "Search across resource types (_type)"),
    Interaction("search-system-post", "search-system", "system", "POST", "_search",
                search.search_system, "Search across resource types (form-encoded)"),
    Interaction("transaction", "transaction", "system", "POST", "", transaction.process,
                "Process a transaction (all or nothing) or batch Bundle", also=("batch",)),
    Interaction("capabilities", "capabilities", "system", "GET", "metadata",
                operations.capabilities, "The CapabilityStatement of this server"),
)


#: Every operation: the base specification's here, each area's from its own module.
OPERATIONS: tuple[Operation, ...] = (
    Operation("validate", "http://hl7.org/fhir/OperationDefinition/Resource-validate",
              frozenset({"type", "instance"}), operations.validate,
              "Validate a resource (as for create/update) without storing it", ("POST",)),
    Operation("meta", "http://hl7.org/fhir/OperationDefinition/Resource-meta",
              frozenset({"instance"}), operations.meta,
              "The profiles, tags and security labels of a resource", ("GET", "POST")),
    *terminology.OPERATIONS,
    *workflow.operations(),
)

#: Interactions that a caller may use without a token (SMART: the CapabilityStatement is public).
PUBLIC = frozenset({"capabilities"})

"""The FHIR R4 REST face: routing, interactions, validation, formats."""


def xml_supported() -> bool:
    """Whether FHIR XML is served (application/fhir+xml in and out)."""
    try:
        from server.fhir import xml  # noqa: F401
    except ImportError:
        return False
    return True

"""Consilium: a FHIR-native interoperability server for telemedicine networks."""

__version__ = "0.1.0"

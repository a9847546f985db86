"""Bulk data in and out of the store (``consilium import``)."""

"""The demo telemedicine network (``consilium demo``): a regional centre, county hospitals and
township health centres in Inner Mongolia, a hospital and a health centre in Tehran, experts in
several specialties, patients with consent, and a week of consultations and referrals in every
state, loaded through the server's own write path."""

from server.demo.client import DemoError
from server.demo.loader import MARKER, Summary, load

__all__ = ["MARKER", "DemoError", "Summary", "load"]

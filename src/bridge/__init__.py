"""bridge: a telephony bridge daemon for a contact center."""

__version__ = "0.1.0"

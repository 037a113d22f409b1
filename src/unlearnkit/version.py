"""The package version, in the core layer so that any module can record it (receipts, cache keys, rows)."""

__version__ = "0.2.0"

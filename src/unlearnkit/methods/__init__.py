"""Unlearning methods, one file each, registered by name (``unlearnkit list methods``).

The registry imports each module listed in ``registry._BUILTIN_MODULES`` on first use.
"""

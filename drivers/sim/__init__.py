"""Emulated hardware for ``--simulate`` and for tests: buses and files, never driver code."""

"""Shared pytest configuration.

Nothing here needs a server: unit tests run without one. Server fixtures live in
``tests/integration/conftest.py``; the throwaway server itself in ``tests/support/server.py``.
"""

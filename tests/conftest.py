"""Shared pytest configuration.

Nothing here needs a server: unit tests run without one. Server fixtures live in
``tests/integration/conftest.py``; the throwaway server itself in ``tests/support/server.py``.

The command audit (``tests/support/command_audit.py``) runs over the whole suite: every command the
library sends for one session or storage key must carry an equality on its collection's shard key.
"""

pytest_plugins = ["tests.support.command_audit"]

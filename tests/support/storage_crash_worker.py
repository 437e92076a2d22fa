"""Write a value with ``MongoDBStorage`` and die (SIGKILL) when the write's N-th command starts.

Used by ``tests/integration/test_storage_crash.py``. Importing Strands costs seconds, so this runs
as a server: it reads one request per stdin line, ``<at> <seed> <size>``, forks a child for it and
answers ``<exit code>`` (``-9`` when the child was killed, ``0`` when its write finished first)::

    python -m tests.support.storage_crash_worker URI DATABASE KEY

The child counts the commands of the write (from 0) and kills itself with SIGKILL as command
``at`` starts, so nothing of ours runs after it: no cleanup, no ``finally``.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import sys

from pymongo import monitoring

from mongodb_session_manager import MongoDBStorage


def seeded_value(size: int, seed: int) -> bytes:
    """The same ``size`` bytes for the same seed, in any process."""
    return random.Random(seed).randbytes(size)


class _KillAt(monitoring.CommandListener):
    def __init__(self, at: int) -> None:
        self.at = at
        self.count = 0
        self.armed = False

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if not self.armed or event.command_name == "endSessions":
            return
        if self.count == self.at:
            os.kill(os.getpid(), signal.SIGKILL)
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


def _child(uri: str, database: str, key: str, at: int, seed: int, size: int) -> None:
    killer = _KillAt(at)
    storage = MongoDBStorage(uri, database_name=database, event_listeners=[killer])
    data = seeded_value(size, seed)

    async def write() -> None:
        await storage.list("")  # the indexes are ensured before the count starts
        killer.armed = True
        await storage.write(key, data)

    asyncio.run(write())


def main(argv: list[str]) -> int:
    uri, database, key = argv
    for line in sys.stdin:
        if not line.strip():
            continue
        at, seed, size = (int(part) for part in line.split())
        sys.stdout.flush()
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                _child(uri, database, key, at, seed, size)
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        sys.stdout.write(f"{os.waitstatus_to_exitcode(status)}\n")
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    from tests.support.command_audit import install_in_worker

    install_in_worker()
    sys.exit(main(sys.argv[1:]))

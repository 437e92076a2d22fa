"""A process killed (SIGKILL) at any command of a chunked write leaves the old or the new value, and
whatever it leaves is recorded and collected: by the next write of the key, or by ``repair()``.

Each crash happens in a process of its own (``tests/support/storage_crash_worker.py`` forks one per
write), killed as the N-th command of its write starts, so none of its cleanup code runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient

from mongodb_session_manager import MongoDBStorage
from mongodb_session_manager.storage import _layout as layout
from tests.support.storage_crash_worker import seeded_value
from tests.support.storage_helpers import Stored, digest

ROOT = Path(__file__).resolve().parents[2]
KEY = "session/crash/scopes/agent/a/snapshots/snapshot_latest.json"
SIZE = 20_000_000
#: The commands of a chunked write replacing a chunked value: record, chunks, switch, read what to
#: clean, delete the replaced chunks, drop their entry. Killing at 6 lets the write finish.
STEPS = ["update", "insert", "update", "find", "delete", "update", None]


class CrashWorker:
    def __init__(self, uri: str, database: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.storage_crash_worker", uri, database, KEY],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def write_and_die(self, at: int, seed: int) -> int:
        """A child writes ``seeded_value(SIZE, seed)`` and is killed at its ``at``-th command."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(f"{at} {seed} {SIZE}\n")
        self.process.stdin.flush()
        return int(self.process.stdout.readline())

    def close(self) -> None:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()


@pytest.fixture
def worker(mongodb_uri: str, database_name: str) -> Iterator[CrashWorker]:
    started = CrashWorker(mongodb_uri, database_name)
    try:
        yield started
    finally:
        started.close()


def _an_hour_later(monkeypatch: pytest.MonkeyPatch) -> None:
    """Move the storage's clock past the grace of every write recorded so far."""
    later: datetime = layout.utc_now() + layout.WRITE_GRACE + timedelta(minutes=1)
    monkeypatch.setattr(layout, "utc_now", lambda: later)


def test_a_writer_killed_at_any_command_leaves_a_whole_value_and_a_record_of_its_leftovers(
    worker: CrashWorker,
    mongodb_uri: str,
    database_name: str,
    mongo_client: MongoClient[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = Stored(mongo_client, database_name)
    storage = MongoDBStorage(mongodb_uri, database_name=database_name)
    current = seeded_value(SIZE, 0)
    asyncio.run(storage.write(KEY, current))
    codes = []
    for at, step in enumerate(STEPS):
        seed = 100 + at
        codes.append(worker.write_and_die(at, seed))
        got = asyncio.run(storage.read(KEY))
        assert digest(got) in (digest(current), digest(seeded_value(SIZE, seed))), step
        if step in ("update", "insert") and at < 3:
            assert got == current, step  # killed before its switch: the old value stands
        elif at >= 3:
            assert got == seeded_value(SIZE, seed), step  # killed after it: the new value stands
        current = got if got is not None else current
        stored.assert_recorded()  # no chunk is lost track of
    assert codes == [-9] * 6 + [0]
    # Killed after the switch, before deleting what it replaced: recorded as dead, so the next
    # write of the key collects it at once. Killed before the switch: recorded as a live write, left
    # alone for an hour (the writer might be slow, not dead), then collected by the next write.
    assert stored.pending()
    _an_hour_later(monkeypatch)
    asyncio.run(storage.write(KEY, b"the next write of the key"))
    stored.assert_clean()
    assert stored.chunk_ids() == []
    storage.close()


def test_repair_collects_what_crashed_writers_left_on_keys_nobody_writes_again(
    worker: CrashWorker,
    mongodb_uri: str,
    database_name: str,
    mongo_client: MongoClient[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stored = Stored(mongo_client, database_name)
    storage = MongoDBStorage(mongodb_uri, database_name=database_name)
    asyncio.run(storage.write(KEY, seeded_value(SIZE, 0)))
    assert worker.write_and_die(4, 1) == -9  # switched, the replaced chunks not deleted: dead entry
    assert worker.write_and_die(1, 2) == -9  # chunks inserted (maybe), never switched: live entry
    stored.assert_recorded()
    assert len(stored.chunk_ids()) > len(stored.current_chunk_ids())

    assert asyncio.run(storage.repair()) == {"keys": 1, "versions": 1}  # the dead version now
    assert len(stored.pending()[KEY]) == 1  # the live write is left alone for its grace
    _an_hour_later(monkeypatch)
    assert asyncio.run(storage.repair()) == {"keys": 1, "versions": 1}
    stored.assert_clean()
    assert asyncio.run(storage.read(KEY)) == seeded_value(SIZE, 1)
    assert asyncio.run(storage.repair()) == {"keys": 0, "versions": 0}
    storage.close()

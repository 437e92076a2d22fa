"""Overwrites are atomic: concurrent writers, readers during overwrites, cancellation at every step.

A reader sees the old value or the new one, whole; concurrent writers end with one writer's whole
value; a write cancelled at any command leaves the old value or the new one and no chunk nobody
will delete. (Crashes: ``test_storage_crash.py``.)
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.errors import AutoReconnect
from strands._async import run_async

from mongodb_session_manager import MongoDBStorage
from mongodb_session_manager.storage import StorageBackendError
from mongodb_session_manager.storage import _clients as clients
from mongodb_session_manager.storage import _layout as layout
from tests.support.storage_helpers import Stored, digest, value

KEY = "session/s/scopes/agent/a/snapshots/snapshot_latest.json"
FIVE_MB = 5_000_000
CHUNKED = 17_000_000


@pytest.fixture
def stored(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Stored:
    return Stored(mongo_client, database_name)


@pytest.fixture
def storage(mongodb_uri: str, database_name: str) -> Iterator[MongoDBStorage]:
    # Twenty 5 MB writes queue on one document: on a loaded test machine the last ones wait for
    # longer than the default 10 s bound, which is not what these tests are about.
    with MongoDBStorage(mongodb_uri, database_name=database_name, maxPoolSize=25, timeoutMS=60_000) as built:
        yield built


def test_twenty_concurrent_writers_on_one_loop_leave_one_whole_value(storage: MongoDBStorage, stored: Stored) -> None:
    values = [value(FIVE_MB, seed) for seed in range(20)]

    async def scenario() -> bytes | None:
        await storage.write(KEY, b"initial")
        await asyncio.gather(*(storage.write(KEY, data) for data in values))
        return await storage.read(KEY)

    final = asyncio.run(scenario())
    assert digest(final) in {digest(data) for data in values}
    stored.assert_clean()


def test_twenty_concurrent_writers_on_strands_bridge_leave_one_whole_value(
    storage: MongoDBStorage, stored: Stored
) -> None:
    """Twenty threads, each saving as a sync agent hook does (a fresh loop per call)."""
    values = [value(FIVE_MB, 100 + seed) for seed in range(20)]
    barrier = threading.Barrier(20)

    def writer(data: bytes) -> None:
        barrier.wait()
        run_async(lambda: storage.write(KEY, data))

    threads = [threading.Thread(target=writer, args=(data,)) for data in values]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    final = run_async(lambda: storage.read(KEY))
    assert digest(final) in {digest(data) for data in values}
    stored.assert_clean()


def test_readers_see_whole_values_while_chunked_values_are_overwritten(storage: MongoDBStorage, stored: Stored) -> None:
    """Four writers race with 17 MB values while readers read: every read is one writer's value."""
    initial = value(CHUNKED, 0)
    values = [value(CHUNKED, seed) for seed in range(1, 5)]
    allowed = {digest(data) for data in [initial, *values]}
    seen: list[str | None] = []

    async def scenario() -> bytes | None:
        await storage.write(KEY, initial)
        done = asyncio.Event()

        async def reader() -> None:
            while not done.is_set():
                seen.append(digest(await storage.read(KEY)))

        readers = [asyncio.create_task(reader()) for _ in range(2)]
        await asyncio.gather(*(storage.write(KEY, data) for data in values))
        done.set()
        await asyncio.gather(*readers)
        return await storage.read(KEY)

    final = asyncio.run(scenario())
    assert digest(final) in {digest(data) for data in values}
    assert seen and set(seen) <= allowed
    stored.assert_clean()


class _CancelAt(monitoring.CommandListener):
    """Cancels a task when the ``at``-th command (counting from 0) of the storage starts."""

    def __init__(self) -> None:
        self.at = -1
        self.count = 0
        self.task: asyncio.Task[Any] | None = None
        self.names: list[str] = []

    def arm(self, at: int, task: asyncio.Task[Any]) -> None:
        self.at, self.count, self.task, self.names = at, 0, task, []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)
        if self.count == self.at and self.task is not None:
            self.task.cancel()  # delivered at the task's next await: while this command is in flight
        self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.mark.parametrize("new_size", [CHUNKED, 1000], ids=["chunked", "inline"])
def test_a_write_cancelled_at_any_command_leaves_the_old_or_the_new_value(
    new_size: int, mongodb_uri: str, database_name: str, stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chunked value is overwritten, and the write cancelled when its 1st, 2nd, ... command starts.

    Each time: the key reads as the old value or the new one, whole, and every chunk in the
    collection belongs to the current value or is recorded in a pending entry (a cancelled write
    takes its chunks back at once, unless they may still be on their way to the server: then they
    stay recorded until their grace is over). An hour later, a repair leaves nothing at all.
    """
    canceller = _CancelAt()
    with MongoDBStorage(mongodb_uri, database_name=database_name, event_listeners=[canceller]) as storage:

        async def scenario() -> list[tuple[int, str, bool]]:
            old = value(CHUNKED, 1)
            await storage.write(KEY, old)
            outcomes = []
            for at in range(7):
                new = value(new_size, 10 + at)
                task = asyncio.create_task(storage.write(KEY, new))
                canceller.arm(at, task)
                try:
                    await task
                    cancelled = False
                except asyncio.CancelledError:
                    cancelled = True
                canceller.task = None
                name = canceller.names[at] if at < len(canceller.names) else "-"
                got = await storage.read(KEY)
                assert digest(got) in (digest(old), digest(new)), (at, name)
                outcomes.append((at, name, cancelled))
                if got == new:
                    old = new
                stored.assert_recorded()
            return outcomes

        outcomes = asyncio.run(scenario())
        assert [cancelled for _, name, cancelled in outcomes if name != "-"] == [
            True for _, name, _ in outcomes if name != "-"
        ]
        later = layout.utc_now() + layout.WRITE_GRACE + timedelta(minutes=1)
        monkeypatch.setattr(layout, "utc_now", lambda: later)
        asyncio.run(storage.repair())
    stored.assert_clean()


def test_a_failed_switch_takes_its_chunks_back(
    storage: MongoDBStorage, stored: Stored, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The connection drops while the switch is sent: its outcome is unknown to the writer, which
    fences its own version off; the key keeps its old value and the new chunks are deleted."""
    old, new = value(CHUNKED, 1), value(CHUNKED, 2)
    real = clients.Driver.update_one
    calls = {"n": 0}

    async def flaky(self: clients.Driver, role: str, query: dict[str, Any], update: Any, **kwargs: Any) -> Any:
        if {"$unset": ["data"]} in update:  # the switch (the only update that drops inline data)
            calls["n"] += 1
            raise AutoReconnect("connection closed")
        return await real(self, role, query, update, **kwargs)

    async def scenario() -> None:
        await storage.write(KEY, old)
        monkeypatch.setattr(clients.Driver, "update_one", flaky)
        with pytest.raises(StorageBackendError) as raised:
            await storage.write(KEY, new)
        assert isinstance(raised.value.__cause__, AutoReconnect)
        monkeypatch.setattr(clients.Driver, "update_one", real)
        assert await storage.read(KEY) == old

    asyncio.run(scenario())
    assert calls["n"] == 1
    stored.assert_clean()

"""``MongoDBConnectionPool`` against a real server: statistics, pool bounds, replacement and fork safety."""

from __future__ import annotations

import gc
import json
import os
import select
import signal
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import InvalidOperation, OperationFailure, WaitQueueTimeoutError
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent

from mongodb_session_manager import MongoDBConnectionPool
from mongodb_session_manager.mongodb_connection_pool import (
    SharedClientLease,
    acquire_shared_client,
    shared_client_count,
)

# Safety nets so a broken test fails instead of hanging; nothing asserts how long anything takes.
HANG_GUARD_SECONDS = 60


@pytest.fixture(autouse=True)
def _clean_pool() -> Iterator[None]:
    MongoDBConnectionPool.close()
    shared_before = shared_client_count()
    yield
    MongoDBConnectionPool.close()
    assert shared_client_count() == shared_before, "the test left a shared client open"


class _HoldInStarted(CommandListener):
    """Holds the thread running a command inside ``started`` (its connection checked out) until released.

    ``started`` runs on the thread that sends the command, after the connection is checked out and
    before the command is sent, so a thread held here keeps one connection busy.
    """

    def __init__(self) -> None:
        self.holder: threading.Thread | None = None
        self.holding = threading.Event()
        self.release = threading.Event()

    def started(self, event: CommandStartedEvent) -> None:
        if threading.current_thread() is self.holder:
            self.holding.set()
            self.release.wait(HANG_GUARD_SECONDS)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


class _MeetInStarted(CommandListener):
    """Makes ``find`` commands wait inside ``started`` (connection checked out) in groups of ``parties``."""

    def __init__(self, parties: int) -> None:
        self.barrier = threading.Barrier(parties, timeout=HANG_GUARD_SECONDS)

    def started(self, event: CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.barrier.wait()

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass


def _run_threads(count: int, target: Callable[[], None]) -> list[BaseException]:
    errors: list[BaseException] = []

    def run() -> None:
        try:
            target()
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "worker threads did not finish"
    return errors


def test_stats_follow_commands(mongodb_uri: str, database_name: str) -> None:
    client = MongoDBConnectionPool.initialize(mongodb_uri)
    before = MongoDBConnectionPool.get_pool_stats()
    collection = client[database_name]["pool_stats"]

    client.admin.command("ping")
    for _ in range(3):
        collection.find_one({"_id": "missing"})

    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["initialized"] is True
    assert stats["connections_created"] >= 1
    assert stats["connections_open"] >= 1
    assert stats["commands_started"] - before["commands_started"] == 4
    assert stats["commands_succeeded"] - before["commands_succeeded"] == 4
    assert stats["commands_failed"] == 0
    assert stats["checkouts"] - before["checkouts"] == 4
    assert stats["checkout_failures"] == 0
    assert stats["connections_checked_out"] == 0
    assert stats["peak_connections_checked_out"] == 1
    assert stats["pid"] == os.getpid()


def test_failed_command_is_counted(mongodb_uri: str) -> None:
    client = MongoDBConnectionPool.initialize(mongodb_uri)

    with pytest.raises(OperationFailure):
        client.admin.command("noSuchCommandForTheTest")

    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["commands_started"] == 1
    assert stats["commands_failed"] == 1
    assert stats["commands_succeeded"] == 0
    assert stats["connections_checked_out"] == 0


def test_pool_never_exceeds_max_pool_size_under_16_threads(mongodb_uri: str, database_name: str) -> None:
    # Every find waits, connection checked out, until three others hold one too: the pool is driven
    # to exactly maxPoolSize connections in use, and no further.
    meet = _MeetInStarted(parties=4)
    client = MongoDBConnectionPool.initialize(mongodb_uri, maxPoolSize=4, event_listeners=[meet])
    collection = client[database_name]["hammer"]
    collection.insert_one({"_id": 1, "value": "x"})
    found: list[dict[str, Any] | None] = []

    def hammer() -> None:
        for _ in range(5):
            found.append(collection.find_one({"_id": 1}))

    errors = _run_threads(16, hammer)

    assert errors == []
    assert found == [{"_id": 1, "value": "x"}] * 80
    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["max_pool_size"] == 4
    assert stats["peak_connections_checked_out"] == 4
    assert stats["peak_connections_open"] == 4
    assert stats["connections_checked_out"] == 0
    assert stats["checkout_failures"] == 0
    assert stats["commands_succeeded"] == 81


def test_checkout_failure_is_counted_when_pool_is_exhausted(mongodb_uri: str) -> None:
    hold = _HoldInStarted()
    client = MongoDBConnectionPool.initialize(mongodb_uri, maxPoolSize=1, waitQueueTimeoutMS=10, event_listeners=[hold])
    hold.holder = threading.Thread(target=lambda: client.admin.command("ping"))
    hold.holder.start()
    try:
        assert hold.holding.wait(HANG_GUARD_SECONDS), "the holder never got its connection"
        assert MongoDBConnectionPool.get_pool_stats()["connections_checked_out"] == 1

        # A plain command is not retried, so this is exactly one failed checkout.
        with pytest.raises(WaitQueueTimeoutError):
            client.admin.command("ping")
    finally:
        hold.release.set()
        hold.holder.join(HANG_GUARD_SECONDS)

    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["checkout_failures"] == 1
    assert stats["checkouts"] == 1
    assert stats["connections_checked_out"] == 0
    assert client.admin.command("ping")["ok"] == 1


def test_reinitialize_while_old_client_is_busy_gives_working_client(mongodb_uri: str, database_name: str) -> None:
    hold = _HoldInStarted()
    old = MongoDBConnectionPool.initialize(mongodb_uri, maxPoolSize=2, event_listeners=[hold])
    outcome: list[object] = []

    def busy() -> None:
        try:
            outcome.append(old[database_name]["busy"].find_one({}))
        except Exception as e:
            outcome.append(e)

    hold.holder = threading.Thread(target=busy)
    hold.holder.start()
    try:
        assert hold.holding.wait(HANG_GUARD_SECONDS), "the old client never started its command"

        new = MongoDBConnectionPool.initialize(mongodb_uri, maxPoolSize=3)

        assert new is not old
        assert MongoDBConnectionPool.get_client() is new
        assert new.admin.command("ping")["ok"] == 1
        new[database_name]["busy"].insert_one({"_id": "after"})
        assert new[database_name]["busy"].find_one({"_id": "after"}) == {"_id": "after"}
    finally:
        hold.release.set()
        hold.holder.join(HANG_GUARD_SECONDS)

    assert not hold.holder.is_alive()
    assert len(outcome) == 1
    with pytest.raises(InvalidOperation):
        old.admin.command("ping")
    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["max_pool_size"] == 3
    assert stats["commands_succeeded"] == 3


# Fork safety


def _run_in_child(work: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` in a forked child and return its result, sent back as JSON through a pipe.

    The child never returns into pytest: it always ends with ``os._exit``.
    """
    read_fd, write_fd = os.pipe()
    with warnings.catch_warnings():
        # Python 3.12+ warns about forking a process with threads (pymongo's monitors are threads).
        warnings.filterwarnings("ignore", message=r".*fork\(\) may lead to deadlocks", category=DeprecationWarning)
        pid = os.fork()
    if pid == 0:
        status = 1
        try:
            os.close(read_fd)
            try:
                payload = {"child_error": None, **work()}
            except BaseException as e:
                payload = {"child_error": f"{type(e).__name__}: {e}"}
            with os.fdopen(write_fd, "w") as pipe:
                json.dump(payload, pipe)
            status = 0
        finally:
            os._exit(status)

    os.close(write_fd)
    with os.fdopen(read_fd) as pipe:
        ready, _, _ = select.select([pipe], [], [], HANG_GUARD_SECONDS)
        if not ready:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            pytest.fail("the forked child did not answer")
        data = pipe.read()
    _, wait_status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(wait_status) == 0, data
    result: dict[str, Any] = json.loads(data)
    assert result["child_error"] is None, result["child_error"]
    return result


def _in_child_with_warnings_as_errors(
    get_client: Callable[[], MongoClient[dict[str, Any]] | None],
    get_stats: Callable[[], dict[str, Any]],
    parent_client: MongoClient[dict[str, Any]],
) -> dict[str, Any]:
    """In the child: get the client, ping, and report anything pymongo warned about."""
    unraisable: list[str] = []
    previous_hook = sys.unraisablehook
    sys.unraisablehook = lambda info: unraisable.append(f"{info.exc_type.__name__}: {info.exc_value}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            client = get_client()
            assert client is not None
            stats_before = get_stats()
            ok = client.admin.command("ping")["ok"]
            stats_after = get_stats()
            again = get_client()
            gc.collect()

            # Control: the parent's client, used here, does warn; so the silence above means something.
            try:
                parent_client.admin.command("ping")
                parent_client_warned = False
            except UserWarning as e:
                parent_client_warned = "fork" in str(e)
    finally:
        sys.unraisablehook = previous_hook
    return {
        "is_parent_client": client is parent_client,
        "same_client_again": again is client,
        "ping_ok": ok,
        "stats_before": stats_before,
        "stats_after": stats_after,
        "pid": os.getpid(),
        "unraisable": unraisable,
        "parent_client_warned": parent_client_warned,
    }


def test_forked_child_gets_its_own_working_client(mongodb_uri: str) -> None:
    parent_client = MongoDBConnectionPool.initialize(mongodb_uri)
    assert parent_client.admin.command("ping")["ok"] == 1
    parent_commands = MongoDBConnectionPool.get_pool_stats()["commands_succeeded"]

    child = _run_in_child(
        lambda: _in_child_with_warnings_as_errors(
            MongoDBConnectionPool.get_client, MongoDBConnectionPool.get_pool_stats, parent_client
        )
    )

    assert child["is_parent_client"] is False
    assert child["same_client_again"] is True
    assert child["ping_ok"] == 1
    assert child["unraisable"] == []
    assert child["parent_client_warned"] is True
    assert child["pid"] != os.getpid()
    # The child counts its own work only, from zero.
    assert child["stats_before"]["pid"] == child["pid"]
    assert child["stats_before"]["commands_started"] == 0
    assert child["stats_before"]["connections_created"] == 0
    assert child["stats_after"]["commands_succeeded"] == 1
    assert child["stats_after"]["connections_created"] == 1

    # The parent carries on with its own client and its own counts.
    assert MongoDBConnectionPool.get_client() is parent_client
    assert parent_client.admin.command("ping")["ok"] == 1
    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["pid"] == os.getpid()
    assert stats["commands_succeeded"] == parent_commands + 1


def test_forked_child_gets_its_own_shared_client(mongodb_uri: str) -> None:
    lease: SharedClientLease = acquire_shared_client(mongodb_uri)
    try:
        parent_client = lease.client
        assert parent_client.admin.command("ping")["ok"] == 1

        child = _run_in_child(
            lambda: _in_child_with_warnings_as_errors(lambda: lease.client, lease.stats, parent_client)
        )

        assert child["is_parent_client"] is False
        assert child["same_client_again"] is True
        assert child["ping_ok"] == 1
        assert child["unraisable"] == []
        assert child["parent_client_warned"] is True
        assert child["stats_before"]["pid"] == child["pid"]
        assert child["stats_before"]["commands_started"] == 0
        assert child["stats_after"]["commands_succeeded"] == 1
        assert lease.client is parent_client
        assert parent_client.admin.command("ping")["ok"] == 1
    finally:
        lease.release()

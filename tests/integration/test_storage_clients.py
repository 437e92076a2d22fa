"""Which client serves each call, what it costs in connections, who closes what, what errors say.

On an application's long-lived loop: one ``AsyncMongoClient`` per loop, shared, closed with the loop.
On Strands' sync bridge (a fresh loop per call): the pooled ``MongoClient``, so no call opens a
connection of its own. A borrowed ``MongoClient``: worker threads on a loop, never closed by us.
"""

from __future__ import annotations

import asyncio
import gc
import threading
from typing import Any

import pytest
from pymongo import AsyncMongoClient, MongoClient
from pymongo.errors import PyMongoError
from strands._async import run_async
from strands.types.exceptions import StorageError

from mongodb_session_manager import (
    MongoDBSessionRepository,
    MongoDBStorage,
    SessionStorageError,
    SessionValidationError,
)
from mongodb_session_manager.storage import StorageBackendError, StorageValidationError
from mongodb_session_manager.storage import _clients as clients
from tests.support.storage_helpers import CommandLog


def _pool_stats(storage: MongoDBStorage) -> dict[str, Any]:
    lease = storage._backend.lease
    assert lease is not None
    return lease.stats()


def test_a_long_lived_loop_is_served_by_one_async_client_closed_with_the_loop(
    mongodb_uri: str, database_name: str
) -> None:
    log = CommandLog()
    with MongoDBStorage(mongodb_uri, database_name=database_name, event_listeners=[log]) as storage:
        synchronous = _pool_stats(storage)["commands_started"]
        before = clients.loop_client_count()

        async def app() -> set[int]:
            views = [
                storage,
                storage.namespace("a"),
                MongoDBStorage(mongodb_uri, database_name=database_name, event_listeners=[log]),
            ]
            for n, view in enumerate(views * 3):
                await view.write(f"k{n}", b"v")
                assert await view.read(f"k{n}") == b"v"
            assert clients.loop_client_count() == before + 1  # one client for the loop, shared
            return {command.thread for command in log.take()}

        threads = asyncio.run(app())
        assert threads == {threading.get_ident()}  # sent from the loop's own thread: nothing blocked it
        assert _pool_stats(storage)["commands_started"] == synchronous  # the pooled client was not used
        assert clients.loop_client_count() == before  # closed when the loop shut down
        assert "endSessions" in log.names()


def test_strands_sync_bridge_uses_the_pooled_client_and_opens_no_connection_per_call(
    mongodb_uri: str, database_name: str
) -> None:
    with MongoDBStorage(mongodb_uri, database_name=database_name) as storage:
        run_async(lambda: storage.write("warm", b"up"))
        before = _pool_stats(storage)
        for n in range(30):  # each run_async is a new thread and a new event loop
            run_async(lambda n=n: storage.write(f"k{n}", b"v"))  # type: ignore[misc]
            assert run_async(lambda n=n: storage.read(f"k{n}")) == b"v"  # type: ignore[misc]
        after = _pool_stats(storage)
        assert clients.loop_client_count() == 0
        assert after["commands_started"] - before["commands_started"] == 60
        assert after["connections_created"] - before["connections_created"] <= 1


def test_storages_built_from_one_connection_string_share_the_pool_with_repositories(
    mongodb_uri: str, database_name: str
) -> None:
    storages = [MongoDBStorage(mongodb_uri, database_name=database_name) for _ in range(5)]
    with MongoDBSessionRepository(mongodb_uri, database_name=database_name) as repository:
        assert all(storage._backend.sync_client() is repository.client for storage in storages)
    for storage in storages:
        storage.close()


def test_the_async_clients_have_the_same_options_as_the_pooled_one(mongodb_uri: str, database_name: str) -> None:
    with MongoDBStorage(mongodb_uri, database_name=database_name, maxPoolSize=7) as storage:

        async def options() -> tuple[Any, Any]:
            await storage.list("")
            [client] = [c for (loop, _), c in clients._clients.items() if loop is asyncio.get_running_loop()]
            return client.options.pool_options.max_pool_size, client.write_concern.document

        pool_size, write_concern = asyncio.run(options())
        assert pool_size == 7 == storage._backend.sync_client().options.pool_options.max_pool_size
        assert write_concern == {"j": True}  # journaled, like every client the library builds


def test_a_borrowed_client_runs_in_worker_threads_on_a_loop_and_is_never_closed(
    mongodb_uri: str, database_name: str
) -> None:
    log = CommandLog()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[log])
    storage = MongoDBStorage(client=client, database_name=database_name)

    async def app() -> set[int]:
        await storage.write("k", b"v")
        assert await storage.read("k") == b"v"
        return {command.thread for command in log.take()}

    threads = asyncio.run(app())
    assert threading.get_ident() not in threads  # the loop's thread never waited on a socket
    assert clients.loop_client_count() == 0 and not storage.owns_client
    storage.close()
    assert client[database_name]["storage"].find_one({"_id": "k"}) is not None  # still open
    client.close()


def test_a_closed_storage_refuses_calls(mongodb_uri: str, database_name: str) -> None:
    storage = MongoDBStorage(mongodb_uri, database_name=database_name)
    view = storage.namespace("v")
    storage.close()
    storage.close()
    for target in (storage, view):
        with pytest.raises(StorageBackendError, match="closed"):
            asyncio.run(target.read("k"))


# pymongo 4.20's async server monitor leaks the socket it is connecting with when its loop ends
# mid-connect (the server being unreachable): collect it here, where that is expected.
@pytest.mark.filterwarnings("ignore::ResourceWarning")
@pytest.mark.parametrize("mode", ["loop", "bridge"])
def test_an_unreachable_server_is_one_readable_line_without_the_password(mode: str, database_name: str) -> None:
    uri = "mongodb://ada:s3cr3t-pw@127.0.0.1:9/?serverSelectionTimeoutMS=300&connectTimeoutMS=300"
    storage = MongoDBStorage(uri, database_name=database_name)
    assert "s3cr3t" not in repr(storage) and "***" in repr(storage)
    with pytest.raises(StorageBackendError) as raised:
        if mode == "bridge":
            run_async(lambda: storage.write("k", b"v"))
        else:
            asyncio.run(storage.write("k", b"v"))
    error = raised.value
    assert isinstance(error, StorageError) and isinstance(error, SessionStorageError)
    assert isinstance(error.__cause__, PyMongoError)
    assert "s3cr3t" not in str(error) and "cannot reach MongoDB at 127.0.0.1:9" in str(error)
    storage.close()
    del raised, error
    gc.collect()


def test_bad_settings_are_refused_before_any_io(mongodb_uri: str) -> None:
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, connect=False)
    async_client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongodb_uri, connect=False)
    cases: list[tuple[dict[str, Any], str]] = [
        ({"connection_string": mongodb_uri, "client": client}, "client"),
        ({"client": async_client}, "client"),
        ({"client": client, "maxPoolSize": 3}, "client_kwargs"),
        ({"connection_string": mongodb_uri, "database_name": ""}, "database_name"),
        ({"connection_string": mongodb_uri, "database_name": "a/b"}, "database_name"),
        ({"connection_string": mongodb_uri, "collection_name": "a\x00b"}, "collection_name"),
        ({"connection_string": mongodb_uri, "search_index_bytes": 3 * 1024 * 1024}, "search_index_bytes"),
        ({"connection_string": mongodb_uri, "ttl": -1}, "ttl"),
        ({"connection_string": mongodb_uri, "ttl": {"a/../b": 3}}, "prefix"),
        ({"connection_string": "mongodb://"}, "connection_string"),  # refused by the pool, as for managers
    ]
    for kwargs, field in cases:
        with pytest.raises(SessionValidationError) as raised:
            MongoDBStorage(**kwargs)
        if field != "connection_string":
            assert isinstance(raised.value, StorageValidationError)
        assert getattr(raised.value, "field", None) == field, (kwargs, raised.value)
    client.close()
    asyncio.run(async_client.close())

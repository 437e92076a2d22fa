"""Optional expiry: per storage, per namespace prefix, per view; expired values are gone at once for
readers, and MongoDB's TTL monitor removes their documents (chunks an hour after their key)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from mongodb_session_manager import MongoDBStorage
from mongodb_session_manager.storage import _layout as layout
from tests.support.storage_helpers import Stored, value

EXPIRY = 1.5


def _aware(date: Any) -> Any:
    return layout.aware(date)


def test_values_expire_after_their_last_write(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    stored = Stored(mongo_client, database_name)
    big = value(17_000_000, 1)
    with MongoDBStorage(mongodb_uri, database_name=database_name, ttl=EXPIRY) as storage:

        async def scenario() -> None:
            started = layout.utc_now()
            await storage.write("memory/dark.md", b"dark mode")
            await storage.write("big", big)
            assert await storage.read("memory/dark.md") == b"dark mode"
            assert await storage.list("") == ["big", "memory/dark.md"]
            document, chunked = stored.document("memory/dark.md"), stored.document("big")
            assert document is not None and chunked is not None
            expires = _aware(document["expires"])
            assert started + timedelta(seconds=EXPIRY) <= expires <= layout.utc_now() + timedelta(seconds=EXPIRY)
            assert _aware(document["remove_at"]) == expires  # the TTL index removes the document then
            chunk = stored.chunks.find_one({})
            assert chunk is not None and _aware(chunk["remove_at"]) == _aware(chunked["expires"]) + timedelta(hours=1)

            await asyncio.sleep(EXPIRY + 0.2)
            assert await storage.read("memory/dark.md") is None  # expired: gone for readers at once
            assert await storage.read("big") is None
            assert await storage.list("") == []
            assert await storage.search("dark") == []
            await storage.write("memory/dark.md", b"dark mode again")  # a write starts a new life
            assert await storage.read("memory/dark.md") == b"dark mode again"

        asyncio.run(scenario())


def test_expiry_per_namespace_and_per_view(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    stored = Stored(mongo_client, database_name)
    rules = {"session/": EXPIRY, "session/keep/": None}
    with MongoDBStorage(mongodb_uri, database_name=database_name, ttl=rules) as storage:
        offloaded = storage.namespace("offloader", ttl=timedelta(seconds=EXPIRY))

        async def scenario() -> None:
            await storage.write("session/s1/snapshot.json", b"expires")
            await storage.write("session/keep/s2/snapshot.json", b"kept")
            await storage.write("memory/m/notes.md", b"kept")
            await offloaded.write("tool_0", b"expires")
            await storage.write("offloader/other", b"kept: written through the storage, not the view")
            assert "remove_at" not in (stored.document("memory/m/notes.md") or {})
            await asyncio.sleep(EXPIRY + 0.2)
            assert await storage.list("") == [
                "memory/m/notes.md",
                "offloader/other",
                "session/keep/s2/snapshot.json",
            ]
            assert await offloaded.read("tool_0") is None

        asyncio.run(scenario())


def test_an_overwrite_without_expiry_keeps_the_value(mongodb_uri: str, database_name: str) -> None:
    with (
        MongoDBStorage(mongodb_uri, database_name=database_name, ttl=EXPIRY) as expiring,
        MongoDBStorage(mongodb_uri, database_name=database_name) as lasting,
    ):

        async def scenario() -> None:
            await expiring.write("k", b"1")
            await lasting.write("k", b"2")  # the writer's setting decides
            await asyncio.sleep(EXPIRY + 0.2)
            assert await lasting.read("k") == b"2"

        asyncio.run(scenario())


def test_both_collections_have_a_ttl_index(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    with MongoDBStorage(mongodb_uri, database_name=database_name) as storage:
        asyncio.run(storage.list(""))
    for name in ("storage", "storage_chunks"):
        indexes = mongo_client[database_name][name].index_information()
        assert indexes[layout.TTL_INDEX]["key"] == [("remove_at", 1)]
        assert indexes[layout.TTL_INDEX]["expireAfterSeconds"] == 0


@pytest.fixture(scope="module")
def fast_ttl_uri(mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose TTL monitor runs every second (MongoDB's runs every 60 s): the server under
    test if it lets us set ``ttlMonitorSleepSecs``, else an in-process SecantusDB with a 1 s sweep."""
    with MongoClient(mongodb_uri) as client:
        try:
            client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
        except PyMongoError:
            pass
        else:
            yield mongodb_uri
            client.admin.command("setParameter", 1, ttlMonitorSleepSecs=60)
            return
    from secantus import SecantusDBServer  # a development dependency, like the test server itself

    folder = tmp_path_factory.mktemp("storage-ttl-server")
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(folder), cache_size="64M", ttl_sweep_seconds=1)
    server.start()
    try:
        yield f"mongodb://127.0.0.1:{server.address[1]}/?directConnection=true"
    finally:
        server.stop()


def test_mongodb_removes_expired_values_and_tombstones(fast_ttl_uri: str) -> None:
    database_name = "storage_ttl_monitor"
    with MongoClient(fast_ttl_uri) as client:
        client.drop_database(database_name)
        keys = client[database_name]["storage"]
        with (
            MongoDBStorage(fast_ttl_uri, database_name=database_name, ttl=1) as storage,
            MongoDBStorage(fast_ttl_uri, database_name=database_name) as lasting,
        ):

            async def scenario() -> None:
                await storage.write("expiring", b"x")
                await lasting.write("kept", b"y")
                await lasting.write("deleted", value(17_000_000, 1))  # chunked: deleting leaves a tombstone
                await lasting.delete("deleted")

            asyncio.run(scenario())
            assert client[database_name]["storage_chunks"].count_documents({}) == 0  # deleted by the delete
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and keys.count_documents({}) > 1:
                time.sleep(0.5)
            assert [document["_id"] for document in keys.find({}, {"_id": 1})] == ["kept"]
        client.drop_database(database_name)

"""Values of any size round-trip byte for byte, stored as the layout says, leaving nothing behind.

Up to the document limit a value is one document (BSON Binary); above it, chunk documents of
``CHUNK_BYTES`` under a version the key document names. Overwrites and deletes of chunked values
delete the chunks they replace.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from strands._async import run_async

from mongodb_session_manager import MongoDBStorage
from mongodb_session_manager.storage import _layout as layout
from tests.support.storage_helpers import CommandLog, Stored, value

KEY = "session/s1/scopes/agent/a1/snapshots/snapshot_latest.json"


@pytest.fixture
def storage(mongodb_uri: str, database_name: str) -> Iterator[MongoDBStorage]:
    with MongoDBStorage(mongodb_uri, database_name=database_name) as built:
        yield built


@pytest.fixture
def stored(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Stored:
    return Stored(mongo_client, database_name)


@pytest.mark.parametrize("size", [0, 1, 15_000_000, 20_000_000, 40_000_000], ids=lambda n: f"{n:,}B")
def test_a_value_of_any_size_round_trips(size: int, storage: MongoDBStorage, stored: Stored) -> None:
    data = value(size, seed=size)

    async def scenario() -> bytes | None:
        await storage.write(KEY, data)
        return await storage.read(KEY)

    assert asyncio.run(scenario()) == data
    document = stored.document(KEY)
    assert document is not None and document["size"] == size
    raw = stored.keys.find_one({"_id": KEY}, {"data": 1})
    assert raw is not None
    if layout.fits_inline(KEY, size, []):
        assert raw["data"] == data and "version" not in document  # one document, BSON Binary
        assert stored.chunk_ids() == []
    else:
        assert "data" not in raw
        assert document["chunks"] == math.ceil(size / layout.CHUNK_BYTES)
        assert stored.chunk_ids() == layout.chunk_ids(document["version"], document["chunks"])
    assert stored.pending() == {}


def test_a_chunked_value_round_trips_through_strands_sync_bridge(storage: MongoDBStorage, stored: Stored) -> None:
    data = value(20_000_000, seed=7)
    run_async(lambda: storage.write(KEY, data))
    assert run_async(lambda: storage.read(KEY)) == data
    assert asyncio.run(storage.read(KEY)) == data  # and from a loop, through the other client
    stored.assert_clean()


def test_the_document_limit_decides_inline_or_chunked(storage: MongoDBStorage, stored: Stored) -> None:
    terms = layout.terms_for(KEY, b"", index_content=False)
    largest = layout.MAX_DOCUMENT_BYTES - layout.INLINE_HEADROOM - 2 * len(KEY) - sum(len(t) + 16 for t in terms)
    assert layout.fits_inline(KEY, largest, terms) and not layout.fits_inline(KEY, largest + 1, terms)

    async def scenario() -> None:
        await storage.write(KEY, value(largest, 1))
        assert stored.chunk_ids() == []
        assert (await storage.read(KEY) or b"")[:4] == (1).to_bytes(4, "big")
        await storage.write(KEY, value(largest + 1, 2))
        assert len(stored.chunk_ids()) == math.ceil((largest + 1) / layout.CHUNK_BYTES) == 2
        assert len(await storage.read(KEY) or b"") == largest + 1

    asyncio.run(scenario())
    stored.assert_clean()


def test_overwrites_and_deletes_of_chunked_values_leave_no_chunks(storage: MongoDBStorage, stored: Stored) -> None:
    big, bigger, small = value(17_000_000, 1), value(20_000_000, 2), b"small"

    async def scenario() -> None:
        for data in (big, bigger, small, big, b"", bigger):  # chunked <-> chunked <-> inline
            await storage.write(KEY, data)
            assert await storage.read(KEY) == data
            stored.assert_clean()
            assert len(stored.chunk_ids()) == (0 if len(data) < 1000 else math.ceil(len(data) / layout.CHUNK_BYTES))
        await storage.delete(KEY)
        assert await storage.read(KEY) is None
        assert await storage.list("") == []
        stored.assert_clean()
        assert stored.chunk_ids() == []

    asyncio.run(scenario())
    tombstone = stored.document(KEY)
    # a deleted key leaves a tombstone that MongoDB's TTL monitor removes at its next pass
    assert tombstone is not None and set(tombstone) == {"_id", "remove_at"}


def test_a_chunked_value_is_one_insert_and_reads_in_one_round_trip_per_16_mib(
    mongodb_uri: str, database_name: str
) -> None:
    log = CommandLog()
    with MongoDBStorage(mongodb_uri, database_name=database_name, event_listeners=[log]) as storage:
        data = value(40_000_000, 3)

        async def scenario() -> tuple[list[str], list[str]]:
            await storage.list("")  # indexes ensured
            log.take()
            await storage.write(KEY, data)
            written = log.names()
            assert await storage.read(KEY) == data
            return written, log.names()

        written, read = asyncio.run(scenario())
    assert written == ["update", "insert", "update", "find"]  # record, chunks, switch, what to clean up
    assert read[0] == "find" and read.count("find") + read.count("getMore") == 1 + math.ceil(40_000_000 / 16_700_000)


def test_chunks_stored_before_they_carried_their_key_still_read(storage: MongoDBStorage, stored: Stored) -> None:
    """An upgrade must not lose values: chunks written without the ``key`` field (before the chunk
    collection had a shard key) are found by id when the targeted read comes back short."""
    data = value(20_000_000, seed=7)
    asyncio.run(storage.write(KEY, data))
    chunks = stored.chunk_ids()
    assert len(chunks) == math.ceil(len(data) / layout.CHUNK_BYTES) > 1
    # As the earlier version stored them: the same chunks, no key field; one chunk already rewritten.
    stored.chunks.update_many({"_id": {"$in": chunks[1:]}}, {"$unset": {"key": ""}})

    assert asyncio.run(storage.read(KEY)) == data

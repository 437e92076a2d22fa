"""MongoDBStorage with encryption=: values are ciphertext in both collections, round-trip exactly (40 MB
too, on both of Strands' calling modes), and the last delete of a scope deletes its data key."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient
from strands._async import run_async

from mongodb_session_manager import (
    ClientSideEncryption,
    MongoDBStorage,
    SessionEncryptionError,
    SessionValidationError,
    data_key_name,
)

MARKER = b"ZEBRA-7731-PLAINTEXT"


def _raw(client: MongoClient[Any], database_name: str, name: str) -> list[bytes]:
    collection = client[database_name][name].with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return [document.raw for document in collection.find({})]


@pytest.fixture
def encryption(database_name: str) -> ClientSideEncryption:
    return ClientSideEncryption(
        kms_providers={"local": {"key": os.urandom(96)}}, key_vault_namespace=f"{database_name}.vault"
    )


def test_values_are_ciphertext_and_round_trip(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption, mongo_client: MongoClient[Any]
) -> None:
    small = b"my secret: " + MARKER
    large = (MARKER + os.urandom(1000)) * 40_000  # ~41 MB: chunked
    with MongoDBStorage(mongodb_uri, database_name=database_name, encryption=encryption) as storage:

        async def scenario() -> tuple[bytes | None, bytes | None, list[Any]]:
            await storage.write("user-1/notes/a.md", small)
            await storage.write("user-1/snapshot.json", large)
            return (
                await storage.read("user-1/notes/a.md"),
                await storage.read("user-1/snapshot.json"),
                (await storage.search("notes")),
            )

        got_small, got_large, found = asyncio.run(scenario())
        assert got_small == small and got_large == large
        assert [(r.key, r.data) for r in found] == [("user-1/notes/a.md", small)]  # key words only, decrypted
        assert run_async(lambda: storage.read("user-1/snapshot.json")) == large  # Strands' sync bridge
        raw = _raw(mongo_client, database_name, "storage") + _raw(mongo_client, database_name, "storage_chunks")
        assert len(raw) >= 3 and all(MARKER not in document for document in raw)
        assert asyncio.run(storage.search("secret")) == []  # content words are not indexed


def test_the_last_delete_of_a_scope_shreds_its_values(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption, mongo_client: MongoClient[Any]
) -> None:
    vault = mongo_client[database_name]["vault"]
    name = data_key_name("user-2", namespace=f"{database_name}.storage")
    with MongoDBStorage(mongodb_uri, database_name=database_name, encryption=encryption) as storage:

        async def write() -> None:
            await storage.write("user-2/a", b"a " + MARKER)
            await storage.write("user-2/b", b"b " + MARKER)

        asyncio.run(write())
        backup = list(mongo_client[database_name]["storage"].find({"_id": {"$regex": "^user-2/"}}))
        asyncio.run(storage.delete("user-2/a"))
        assert vault.count_documents({"keyAltNames": name}) == 1  # user-2/b still needs it
        asyncio.run(storage.delete("user-2/b"))
        assert vault.count_documents({"keyAltNames": name}) == 0
    mongo_client[database_name]["storage"].insert_many(backup)  # a backup comes back
    with MongoClient(mongodb_uri) as fresh_client:  # a fresh engine: no key cached
        fresh = MongoDBStorage(client=fresh_client, database_name=database_name, encryption=encryption)
        with pytest.raises(SessionEncryptionError, match="data key was deleted"):
            asyncio.run(fresh.read("user-2/a"))
        fresh.close()


def test_a_wrong_master_key_is_refused_before_anything_is_written(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption, mongo_client: MongoClient[Any]
) -> None:
    with MongoDBStorage(mongodb_uri, database_name=database_name, encryption=encryption) as storage:
        asyncio.run(storage.write("k", b"v"))
    wrong = ClientSideEncryption(
        kms_providers={"local": {"key": os.urandom(96)}}, key_vault_namespace=f"{database_name}.vault"
    )
    with pytest.raises(SessionEncryptionError, match="master key"):
        MongoDBStorage(mongodb_uri, database_name=database_name, encryption=wrong)
    with pytest.raises(SessionValidationError, match="encryption"):
        MongoDBStorage(mongodb_uri, database_name=database_name, encryption="key")  # type: ignore[arg-type]
    assert mongo_client[database_name]["storage"].count_documents({}) == 1

"""The encryption engine against a real server: the key vault, the canary, per-session keys, deletion."""

from __future__ import annotations

import os
from typing import Any

import pytest
from pymongo import MongoClient

from mongodb_session_manager import ClientSideEncryption, SessionEncryptionError, data_key_name
from mongodb_session_manager._encryption import CANARY_KEY_NAME, Encryption, encryption_for, is_ciphertext


def _settings(database_name: str, key: bytes) -> ClientSideEncryption:
    return ClientSideEncryption(kms_providers={"local": {"key": key}}, key_vault_namespace=f"{database_name}.vault")


def test_canary_is_created_once_and_a_wrong_master_key_is_refused_before_any_write(
    mongodb_uri: str, database_name: str
) -> None:
    key = os.urandom(96)
    with MongoClient(mongodb_uri) as client:
        engine = encryption_for(_settings(database_name, key), client)
        assert engine is not None and encryption_for(_settings(database_name, key), client) is engine
        vault = client[database_name]["vault"]
        assert [doc["keyAltNames"] for doc in vault.find({})] == [[CANARY_KEY_NAME]]
        with pytest.raises(SessionEncryptionError, match="master key") as caught:
            encryption_for(_settings(database_name, os.urandom(96)), client)
        assert caught.value.__cause__ is not None
        assert vault.count_documents({}) == 1
        assert key.hex() not in str(caught.value)


def test_a_deleted_key_leaves_ciphertext_unreadable_in_a_new_engine(mongodb_uri: str, database_name: str) -> None:
    key = os.urandom(96)
    name = data_key_name("s1", namespace=f"{database_name}.sessions")
    with MongoClient(mongodb_uri) as client:
        engine = Encryption(_settings(database_name, key), client)
        engine.check()
        refusals: list[str] = []

        def refuse() -> None:
            refusals.append("s1")
            raise SessionEncryptionError("refused")

        with pytest.raises(SessionEncryptionError, match="refused"):
            engine.sealer(name, "s1", on_missing=refuse).seal("x")
        assert refusals == ["s1"]  # no key, and the session may not get one: nothing created
        assert client[database_name]["vault"].count_documents({"keyAltNames": name}) == 0

        sealer = engine.sealer(name, "s1", create=True)
        sealed = sealer.seal({"text": "secret", "$k": b"\x00"})
        assert is_ciphertext(sealed) and sealer.created and sealer.key_id is not None
        again = engine.sealer(name, "s1")
        assert engine.open("s1", again.seal([1, 2])) == [1, 2] and again.key_id == sealer.key_id
        assert engine.open("s1", sealed) == {"text": "secret", "$k": b"\x00"}
        assert engine.open("s1", "clear") == "clear"

        assert engine.delete_key(name) == 1
        fresh = Encryption(_settings(database_name, key), client)
        with pytest.raises(SessionEncryptionError, match="data key was deleted") as caught:
            fresh.open("s1", sealed)
        assert "secret" not in str(caught.value)


def test_legacy_sessions_get_their_key_at_first_write(mongodb_uri: str, database_name: str) -> None:
    with MongoClient(mongodb_uri) as client:
        engine = Encryption(_settings(database_name, os.urandom(96)), client)
        engine.check()
        name = data_key_name("old", namespace=f"{database_name}.sessions")
        allowed: list[Any] = []
        sealer = engine.sealer(name, "old", on_missing=lambda: allowed.append(True))
        assert engine.open("old", sealer.seal("v")) == "v"
        assert allowed == [True] and sealer.created
        assert client[database_name]["vault"].count_documents({"keyAltNames": name}) == 1


def test_an_unreachable_key_vault_is_a_storage_failure_not_a_key_problem(mongodb_uri: str, database_name: str) -> None:
    from mongodb_session_manager import SessionStorageError

    settings = _settings(database_name, os.urandom(96))
    with MongoClient(mongodb_uri) as client:
        engine = Encryption(settings, client)
        engine.check()
        sealed = engine.sealer("n", "s1", create=True).seal("x")
    with MongoClient("mongodb://127.0.0.1:1/?directConnection=true", serverSelectionTimeoutMS=300) as down:
        with pytest.raises(SessionStorageError, match="key vault could not be read") as caught:
            Encryption(settings, down).open("s1", sealed)
        assert not isinstance(caught.value, SessionEncryptionError) and caught.value.__cause__ is not None

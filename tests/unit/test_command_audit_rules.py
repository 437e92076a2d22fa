"""The command audit's rules, as data: what counts as an equality on the shard key, and the allow-list."""

from __future__ import annotations

from mongodb_session_manager import SHARD_KEYS, shard_collection_commands
from tests.support.command_audit import check, untargeted

ORIGIN = [("_store.py", "find_one"), ("mongodb_session_repository.py", "read_session")]
NAMES = {
    "sessions": "sessions",
    "sessions_overflow": "overflow",
    "storage": "storage",
    "storage_chunks": "storage_chunks",
}


def test_an_equality_on_the_shard_key_is_targeted() -> None:
    assert untargeted("sessions", "find", {"find": "sessions", "filter": {"_id": "s", "x": 1}}) is None
    assert (
        untargeted("sessions", "find", {"find": "sessions", "filter": {"_id": {"tenant": "t", "session": "s"}}}) is None
    )
    assert untargeted("sessions", "find", {"find": "sessions", "filter": {"_id": {"$eq": "s"}}}) is None
    assert (
        untargeted("overflow", "aggregate", {"pipeline": [{"$match": {"session_id": "s", "_id": {"$in": [1, 2]}}}]})
        is None
    )
    assert untargeted("storage_chunks", "delete", {"deletes": [{"q": {"key": "k", "_id": {"$in": ["a"]}}}]}) is None
    assert untargeted("overflow", "insert", {"documents": [{"_id": 1, "session_id": "s"}]}) is None


def test_anything_else_is_not() -> None:
    assert untargeted("sessions", "find", {"filter": {"_id": {"$in": ["s"]}}}) is not None
    assert untargeted("sessions", "find", {"filter": {"_id": {"$gt": "s"}}}) is not None
    assert untargeted("overflow", "find", {"filter": {"_id": 1}}) is not None  # a bucket id is not the key
    assert untargeted("overflow", "aggregate", {"pipeline": [{"$project": {"x": 1}}]}) is not None
    assert untargeted("overflow", "delete", {"deletes": [{"q": {"session_id": "s"}}, {"q": {"_id": 1}}]}) is not None
    assert untargeted("overflow", "insert", {"documents": [{"_id": 1}]}) is not None
    assert untargeted("sessions", "findandmodify", {"query": {}}) is not None


def test_only_the_library_s_commands_on_its_collections_are_checked_and_the_allow_list_is_explicit() -> None:
    scatter = {"find": "sessions", "filter": {"tenant": {"$exists": False}}}
    offence = check("find", scatter, ORIGIN, NAMES)
    assert offence is not None and offence.role == "sessions" and "_store.py:find_one" in offence.origin
    assert check("find", scatter, [], NAMES) is None  # the test's own command
    assert check("find", {"find": "other", "filter": {}}, ORIGIN, NAMES) is None  # not our collection
    assert check("find", scatter, [("_extensions.py", "list_sessions"), *ORIGIN], NAMES) is None  # allowed
    listing = {"find": "storage", "filter": {"_id": {"$gte": "a/", "$lt": "a0"}}}
    assert check("find", listing, [("_clients.py", "find")], NAMES) is None


def test_the_shard_keys_and_the_operator_s_commands() -> None:
    assert SHARD_KEYS == {
        "sessions": {"_id": "hashed"},
        "overflow": {"session_id": "hashed"},
        "storage": {"_id": "hashed"},
        "storage_chunks": {"key": "hashed"},
    }
    assert shard_collection_commands("chat") == [
        {"shardCollection": "chat.sessions", "key": {"_id": "hashed"}},
        {"shardCollection": "chat.sessions_overflow", "key": {"session_id": "hashed"}},
        {"shardCollection": "chat.storage", "key": {"_id": "hashed"}},
        {"shardCollection": "chat.storage_chunks", "key": {"key": "hashed"}},
    ]
    assert [c["shardCollection"] for c in shard_collection_commands("db", "c", "o", None)] == ["db.c", "db.o"]

"""``delete`` and ``migrate-snapshots`` end to end, in a subprocess, against the test server."""

from __future__ import annotations

import os
from typing import Any

from pymongo import MongoClient
from strands.session import SnapshotSessionManager

from mongodb_session_manager import MongoDBStorage
from tests.support.cli_damage import OFFLOAD, repository, session
from tests.support.cli_run import cli_json, main_json, run_cli
from tests.support.cli_sessions import chat_session, restore, restored


def test_delete_removes_sessions_with_their_overflow_documents_and_asks_first(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    repo = repository(mongo_client, database_name)
    for session_id in ("a", "b", "keep"):
        session(repo, session_id, 40, images={1: os.urandom(OFFLOAD * 3)})
    assert repo.overflow.count_documents({"session_id": "a"}) > 1  # buckets and a chunk

    unconfirmed = run_cli(mongodb_uri, "delete", "a", "--database", database_name)
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert repo.collection.count_documents({}) == 3

    deleted = run_cli(mongodb_uri, "delete", "a", "b", "--yes", "--database", database_name)
    assert deleted.returncode == 0, deleted.stderr
    assert deleted.stdout == "deleted 2 session(s)\n"
    assert [doc["_id"] for doc in repo.collection.find({})] == ["keep"]
    assert repo.overflow.count_documents({"session_id": {"$in": ["a", "b"]}}) == 0
    assert repo.overflow.count_documents({"session_id": "keep"}) > 1

    missing = main_json(mongodb_uri, "delete", "keep", "a", "--yes", "--database", database_name, expect=1)
    assert missing == {"deleted": ["keep"], "missing": ["a"]}


def test_migrate_snapshots_writes_what_snapshot_session_manager_restores(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    chat_session(mongodb_uri, database_name, "user-42")
    chat_session(mongodb_uri, database_name, "user-43", seed=1)
    report = cli_json(mongodb_uri, "migrate-snapshots", "--all", "--database", database_name)
    assert report == {"sessions": 2, "agents": 4, "multi_agents": 2, "skipped": 0, "missing": []}

    storage = MongoDBStorage(mongodb_uri, database_name=database_name)
    try:
        for session_id in ("user-42", "user-43"):
            for agent_id in ("assistant", "helper.v2"):
                from_snapshot = restore(SnapshotSessionManager(session_id, storage=storage), agent_id)
                expected = restored(mongodb_uri, database_name, session_id, agent_id)
                assert from_snapshot["messages"] == expected["messages"]
                assert from_snapshot["state"] == expected["state"]
    finally:
        storage.close()

    again = main_json(mongodb_uri, "migrate-snapshots", "user-42", "nobody", "--database", database_name, expect=1)
    assert again == {"sessions": 1, "agents": 0, "multi_agents": 0, "skipped": 3, "missing": ["nobody"]}
    elsewhere = main_json(
        mongodb_uri,
        "migrate-snapshots",
        "user-42",
        "--database",
        database_name,
        "--storage-database",
        f"{database_name}_snapshots",
        "--storage-collection",
        "snapshots",
    )
    try:
        assert elsewhere["agents"] == 2
        assert mongo_client[f"{database_name}_snapshots"]["snapshots"].count_documents({}) >= 3
    finally:
        mongo_client.drop_database(f"{database_name}_snapshots")

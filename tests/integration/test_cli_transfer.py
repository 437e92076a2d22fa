"""``export`` and ``import`` end to end, in a subprocess, against the test server.

* JSON Lines: an export imported into another database restores identical agents through a real
  ``strands.Agent`` with ``MongoDBSessionManager``, stores the same raw values (BSON types
  included), keeps large histories whole under the target's overflow settings, and exports again
  to the same lines: the round trip is exact.
* Strands' file layout: ``FileSessionManager`` restores what ``export --format strands-files``
  wrote, and a directory written by ``FileSessionManager`` imports into MongoDB and restores equal.
* Imports never leave a partial session, and never replace a session without ``--overwrite``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.binary import Binary
from pymongo import MongoClient
from strands import Agent
from strands.session.file_session_manager import FileSessionManager

from mongodb_session_manager import MongoDBSessionRepository
from mongodb_session_manager._overflow import REFERENCE_SUBTYPE, BlobRef, is_reference
from tests.support.cli_damage import OFFLOAD, THRESHOLD, image_message, message, repository
from tests.support.cli_run import cli_json, main_json, run_cli, run_main
from tests.support.cli_sessions import BIG_IMAGE_BYTES, GRAPH_ID, METADATA, calculator, chat_session, restore, restored
from tests.support.scripted_model import ScriptedModel, text, tool_call

SESSIONS = ["user-42", "s$2.x ünï"]
AGENTS = ["assistant", "helper.v2"]


@pytest.fixture
def target(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[str]:
    """A second database, for what is imported."""
    name = f"{database_name}_target"
    yield name
    mongo_client.drop_database(name)


@pytest.fixture
def stored(mongodb_uri: str, database_name: str) -> list[str]:
    for seed, session_id in enumerate(SESSIONS):
        chat_session(mongodb_uri, database_name, session_id, seed)
    return SESSIONS


def _comparable(value: Any) -> Any:
    """A stored value with each binary reference replaced by its length and SHA-256 (the blob ids differ)."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_comparable(item) for item in value]
    if is_reference(value):
        ref = BlobRef.from_binary(value)
        return Binary(ref.length.to_bytes(8, "big") + ref.sha256, REFERENCE_SUBTYPE)
    return value


# What legitimately differs after an import: last activity, the size bookkeeping, where old messages
# and binaries are kept, and a Graph's record times (documented in the module docstring of _transfer).
_SESSION_BOOKKEEPING = {"updated_date", "size_estimate", "companions", "companions_until", "companions_ttl"}
_AGENT_BOOKKEEPING = {"overflow", "overflow_count", "edits"}


def _raw(client: MongoClient[dict[str, Any]], database: str, session_id: str) -> dict[str, Any]:
    document = client[database]["sessions"].find_one({"_id": session_id})
    assert document is not None, f"{session_id} is not in {database}"
    for name in _SESSION_BOOKKEEPING:
        document.pop(name, None)
    for agent in document["agents"].values():
        for name in _AGENT_BOOKKEEPING:
            agent.pop(name, None)
        for entry in agent["messages"]:
            entry.pop("blobs", None)
    for record in document.get("multi_agents", {}).values():
        record.pop("created_at"), record.pop("updated_at")
    # Top-level fields in name order: where each sits depends on the order of the writes that added them.
    comparable: dict[str, Any] = _comparable({name: document[name] for name in sorted(document)})
    return comparable


def test_a_jsonl_export_imported_into_another_database_restores_identical_agents_and_raw_values(
    mongodb_uri: str,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    target: str,
    stored: list[str],
    tmp_path: Path,
) -> None:
    export = tmp_path / "sessions.jsonl"
    report = cli_json(mongodb_uri, "export", "--all", "--database", database_name, "--out", str(export))
    assert report == {"sessions": 2, "messages": 24, "failed": []}
    lines = [json.loads(line) for line in export.read_text(encoding="utf-8").splitlines()]
    assert [line["kind"] for line in lines][:3] == ["header", "session", "agent"]
    assert lines[-1] == {"kind": "footer", "sessions": 2}
    assert mongodb_uri not in export.read_text(encoding="utf-8")

    assert cli_json(mongodb_uri, "import", str(export), "--database", target) == report

    for session_id in stored:
        for agent_id in AGENTS:
            source_agent = restored(mongodb_uri, database_name, session_id, agent_id)
            assert restored(mongodb_uri, target, session_id, agent_id) == source_agent
            assert source_agent["messages"], "the restore restored nothing"
        # Raw values, BSON types and key order included: metadata (Int64, datetime, bytes, $-keys),
        # agent states, every message with its redaction and the fields beside it, feedback with its
        # server times, the Graph's state.
        assert bson.encode(_raw(mongo_client, target, session_id)) == bson.encode(
            _raw(mongo_client, database_name, session_id)
        )
    imported = MongoDBSessionRepository(client=mongo_client, database_name=target)
    assert imported.get_metadata(SESSIONS[0]) == METADATA
    assert type(mongo_client[target]["sessions"].find_one({"_id": SESSIONS[0]})["metadata"]["big"]) is bson.Int64
    assert [f["comment"] for f in imported.get_feedbacks(SESSIONS[0])] == ["Great answer!", '$field is {"$gt": 1}']
    assert imported.read_multi_agent(SESSIONS[0], GRAPH_ID) is not None
    assert imported.get_message_metrics(SESSIONS[0], "assistant")
    # The large image was offloaded in the target too, and what was stored verifies.
    assert mongo_client[target]["sessions_overflow"].count_documents({"kind": "blob"}) == 2
    assert any(
        len(block["image"]["source"]["bytes"]) == BIG_IMAGE_BYTES
        for m in imported.list_messages(SESSIONS[0], "assistant")
        for block in m.message["content"]
        if "image" in block
    )
    assert run_main(mongodb_uri, "verify", "--database", target).returncode == 0

    again = tmp_path / "again.jsonl"
    cli_json(mongodb_uri, "export", "--all", "--database", target, "--out", str(again))

    def body(path: Path) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        for record in records:
            record.pop("last_activity", None)
        return records[1:]  # the header names the database and the time

    assert body(again) == body(export)


def test_a_long_history_with_binaries_moves_into_buckets_and_chunks_under_the_targets_settings(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str, target: str, tmp_path: Path
) -> None:
    source = repository(mongo_client, database_name)
    from tests.support.cli_damage import session

    session(source, "long", 0)
    for index in range(60):
        image = os.urandom(OFFLOAD * 2) if index % 6 == 0 else None
        source.create_message("long", "a", message(index) if image is None else image_message(index, image))
    expected = source.list_messages("long", "a")
    assert source.collection.find_one({"_id": "long"})["agents"]["a"]["overflow_count"] > 0

    export = tmp_path / "long.jsonl"
    cli_json(mongodb_uri, "export", "long", "--database", database_name, "--out", str(export))
    report = cli_json(
        mongodb_uri,
        "import",
        str(export),
        "--database",
        target,
        "--overflow-threshold-bytes",
        str(THRESHOLD),
        "--binary-offload-bytes",
        str(OFFLOAD),
    )
    assert report == {"sessions": 1, "messages": 60, "failed": []}
    imported = repository(mongo_client, target)
    assert imported.list_messages("long", "a") == expected
    agent = imported.collection.find_one({"_id": "long"})["agents"]["a"]
    assert agent["overflow_count"] > 0 and agent["overflow"], "old messages did not move out"
    assert imported.overflow.count_documents({"session_id": "long", "kind": "blob"}) == 10
    assert main_json(mongodb_uri, "verify", "--database", target)["problems"] == []


def test_import_never_replaces_without_overwrite_and_never_leaves_a_partial_session(
    mongodb_uri: str,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    target: str,
    stored: list[str],
    tmp_path: Path,
) -> None:
    export = tmp_path / "sessions.jsonl"
    main_json(mongodb_uri, "export", *stored, "--database", database_name, "--out", str(export))
    main_json(mongodb_uri, "import", str(export), "--database", target)
    sessions = mongo_client[target]["sessions"]
    before = {doc["_id"]: doc for doc in sessions.find({})}

    again = main_json(mongodb_uri, "import", str(export), "--database", target, expect=1)
    assert again["sessions"] == 0
    assert {f["session_id"] for f in again["failed"]} == set(stored)
    assert all("--overwrite" in f["reason"] for f in again["failed"])
    assert {doc["_id"]: doc for doc in sessions.find({})} == before

    MongoDBSessionRepository(client=mongo_client, database_name=target).update_metadata(stored[0], {"x": 1})
    assert main_json(mongodb_uri, "import", str(export), "--database", target, "--overwrite")["sessions"] == 2
    assert "x" not in sessions.find_one({"_id": stored[0]})["metadata"]

    # Cut short inside the second session: the first imports, the second is reported and not left half-stored.
    lines = export.read_bytes().splitlines(keepends=True)
    second = next(i for i, line in enumerate(lines) if b'"kind":"session"' in line and i > 1)
    cut = tmp_path / "cut.jsonl"
    cut.write_bytes(b"".join(lines[: second + 4]))
    fresh = f"{target}_cut"
    try:
        report = main_json(mongodb_uri, "import", str(cut), "--database", fresh, expect=1)
        assert report["sessions"] == 1
        assert report["failed"] == [{"session_id": stored[1], "reason": report["failed"][0]["reason"]}]
        assert "cut short" in report["failed"][0]["reason"]
        assert [doc["_id"] for doc in mongo_client[fresh]["sessions"].find({})] == [stored[0]]
        assert mongo_client[fresh]["sessions_overflow"].count_documents({"session_id": stored[1]}) == 0

        # A damaged line: that session is reported and removed, the file's other sessions import.
        damaged = tmp_path / "damaged.jsonl"
        message_line = next(i for i, line in enumerate(lines) if b'"kind":"message"' in line)
        damaged.write_bytes(b"".join([*lines[:message_line], b"{not json\n", *lines[message_line + 1 :]]))
        mongo_client.drop_database(fresh)
        report = main_json(mongodb_uri, "import", str(damaged), "--database", fresh, expect=1)
        assert report["sessions"] == 1 and report["failed"][0]["session_id"] == stored[0]
        assert f"line {message_line + 1}" in report["failed"][0]["reason"]
        assert [doc["_id"] for doc in mongo_client[fresh]["sessions"].find({})] == [stored[1]]
    finally:
        mongo_client.drop_database(fresh)

    not_an_export = tmp_path / "other.jsonl"
    not_an_export.write_text('{"hello": "world"}\n')
    refused = run_main(mongodb_uri, "import", str(not_an_export), "--database", target)
    assert refused.returncode == 2 and "not the header" in refused.stderr


def test_export_to_stdout_pipes_into_import_from_stdin(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str, target: str, stored: list[str]
) -> None:
    exported = run_cli(mongodb_uri, "export", stored[0], "--database", database_name)
    assert exported.returncode == 0, exported.stderr
    assert "exported 1 session(s)" in exported.stderr
    imported = run_cli(mongodb_uri, "import", "-", "--database", target, stdin=exported.stdout.encode("utf-8"))
    assert imported.returncode == 0, imported.stderr
    assert restored(mongodb_uri, target, stored[0], "assistant") == restored(
        mongodb_uri, database_name, stored[0], "assistant"
    )
    missing = run_main(mongodb_uri, "export", "nobody", "--database", database_name, "--out", os.devnull)
    assert missing.returncode == 1 and "session_id=<nobody> | session does not exist" in missing.stderr


# ------------------------------------------------------------------------------------------ Strands' file layout


def test_file_session_manager_restores_what_export_wrote_in_its_layout(
    mongodb_uri: str,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
    target: str,
    stored: list[str],
    tmp_path: Path,
) -> None:
    directory = tmp_path / "files"
    report = cli_json(
        mongodb_uri,
        "export",
        "--all",
        "--database",
        database_name,
        "--format",
        "strands-files",
        "--out",
        str(directory),
    )
    assert report == {"sessions": 2, "messages": 24, "failed": []}
    for session_id in stored:
        for agent_id in AGENTS:
            from_files = restore(FileSessionManager(session_id, storage_dir=str(directory)), agent_id)
            assert from_files == restored(mongodb_uri, database_name, session_id, agent_id)
        assert (directory / f"session_{session_id}" / "mongodb-session-manager.json").is_file()
    refused = main_json(
        mongodb_uri,
        "export",
        stored[0],
        "--database",
        database_name,
        "--format",
        "strands-files",
        "--out",
        str(directory),
        expect=1,
    )
    assert "--overwrite" in refused["failed"][0]["reason"]

    # And back: metadata, feedback and metrics, which Strands has no place for, come back from the
    # extra file; the agents restore as they were.
    assert cli_json(mongodb_uri, "import", str(directory), "--database", target)["sessions"] == 2
    source, imported = (
        MongoDBSessionRepository(client=mongo_client, database_name=name) for name in (database_name, target)
    )
    for session_id in stored:
        assert imported.get_metadata(session_id) == source.get_metadata(session_id)
        assert imported.get_feedbacks(session_id) == source.get_feedbacks(session_id)
        assert imported.get_message_metrics(session_id, "assistant") == source.get_message_metrics(
            session_id, "assistant"
        )
        assert imported.read_multi_agent(session_id, GRAPH_ID) == source.read_multi_agent(session_id, GRAPH_ID)
        for agent_id in AGENTS:
            assert restored(mongodb_uri, target, session_id, agent_id) == restored(
                mongodb_uri, database_name, session_id, agent_id
            )


def test_a_directory_written_by_file_session_manager_imports_and_restores_equal(
    mongodb_uri: str, target: str, tmp_path: Path
) -> None:
    directory = tmp_path / "strands"
    image = os.urandom(BIG_IMAGE_BYTES)
    for session_id in ("files-1", "files-2"):
        manager = FileSessionManager(session_id, storage_dir=str(directory))
        agent = Agent(
            agent_id="assistant",
            model=ScriptedModel([tool_call("calculator", {"expression": "6*7"}), text("42."), text("A picture.")]),
            tools=[calculator],
            session_manager=manager,
            callback_handler=None,
        )
        agent("What is 6 * 7?")
        agent.state.set("topic", {"$ref": "#/math", "n": 42})
        agent([{"text": "Look:"}, {"image": {"format": "png", "source": {"bytes": image}}}])
    report = cli_json(mongodb_uri, "import", str(directory), "--database", target)
    assert report == {"sessions": 2, "messages": 6 * 2, "failed": []}
    for session_id in ("files-1", "files-2"):
        expected = restore(FileSessionManager(session_id, storage_dir=str(directory)), "assistant")
        assert restored(mongodb_uri, target, session_id, "assistant") == expected
        assert any(
            block.get("image", {}).get("source", {}).get("bytes") == image
            for m in expected["messages"]
            for block in m["content"]
        )
    one = main_json(mongodb_uri, "import", str(directory / "session_files-1"), "--database", target, "--overwrite")
    assert one["sessions"] == 1


def test_a_value_json_cannot_hold_fails_that_sessions_file_export_and_leaves_nothing_behind(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str, tmp_path: Path
) -> None:
    from datetime import UTC, datetime

    from strands.types.session import Session, SessionAgent, SessionType

    repo = MongoDBSessionRepository(client=mongo_client, database_name=database_name)
    repo.create_session(Session(session_id="dated", session_type=SessionType.AGENT))
    repo.create_agent(
        "dated",
        SessionAgent(agent_id="a", state={"at": datetime(2026, 1, 1, tzinfo=UTC)}, conversation_manager_state={}),
    )
    repo.create_session(Session(session_id="plain", session_type=SessionType.AGENT))
    directory = tmp_path / "files"
    report = main_json(
        mongodb_uri,
        "export",
        "--all",
        "--database",
        database_name,
        "--format",
        "strands-files",
        "--out",
        str(directory),
        expect=1,
    )
    assert report["sessions"] == 1
    assert report["failed"][0]["session_id"] == "dated" and "--format jsonl" in report["failed"][0]["reason"]
    assert sorted(path.name for path in directory.iterdir()) == ["session_plain"]

"""Encryption at rest (issue 18): nothing readable is stored, everything comes back exactly, deleting
a session makes every copy of its content unreadable, and a wrong master key writes nothing."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import bson
import pytest
from bson.codec_options import CodecOptions
from bson.raw_bson import RawBSONDocument
from pymongo import MongoClient, monitoring
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    ClientSideEncryption,
    MongoDBSessionRepository,
    SessionEncryptionError,
    SessionValidationError,
    data_key_name,
)
from mongodb_session_manager._migration import encrypt_session
from tests.support.restore_worker import from_jsonable

ROOT = Path(__file__).resolve().parents[2]
MARKER = "ZEBRA-7731-PLAINTEXT"
AGENT = "assistant"


class Commands(monitoring.CommandListener):
    """Command names (``find@encryption`` style for the key vault) seen by a client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.names: list[str] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        target = event.command.get(event.command_name)
        with self._lock:
            self.names.append(f"{event.command_name}:{target}")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        with self._lock:
            names, self.names = self.names, []
        return names


class _MultiAgent:
    """What the repository needs of a Graph or Swarm: an id and its serialised state."""

    def __init__(self, multi_agent_id: str, state: dict[str, Any]) -> None:
        self.id = multi_agent_id
        self._state = state

    def serialize_state(self) -> dict[str, Any]:
        return self._state


@pytest.fixture
def master_key() -> bytes:
    return os.urandom(96)


@pytest.fixture
def encryption(database_name: str, master_key: bytes) -> ClientSideEncryption:
    return ClientSideEncryption(
        kms_providers={"local": {"key": master_key}}, key_vault_namespace=f"{database_name}.vault"
    )


@pytest.fixture
def repo(mongodb_uri: str, database_name: str, encryption: ClientSideEncryption) -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(
        mongodb_uri,
        database_name=database_name,
        encryption=encryption,
        binary_offload_bytes=1024,
        overflow_threshold_bytes=16 * 1024,
    ) as repository:
        yield repository


def _raw(collection: Any) -> list[bytes]:
    raw = collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
    return [document.raw for document in raw.find({})]


def _assert_no_plaintext(repo: MongoDBSessionRepository) -> int:
    """No stored document of either collection holds the marker, as text or as bytes; returns how many were scanned."""
    documents = _raw(repo.collection) + _raw(repo.overflow)
    for raw in documents:
        assert MARKER.encode() not in raw, bson.decode(raw).get("_id")
    return len(documents)


def _messages() -> list[SessionMessage]:
    image = (MARKER.encode() + b"\x00\xff") * 200  # 4 KB: offloaded (threshold 1 KiB), as chunks
    return [
        SessionMessage(message={"role": "user", "content": [{"text": f"my secret is {MARKER}"}]}, message_id=0),
        SessionMessage(
            message={
                "role": "assistant",
                "content": [
                    {"toolUse": {"toolUseId": "t1", "name": "lookup", "input": {"$where": MARKER, "a.b": [MARKER]}}}
                ],
            },
            message_id=1,
        ),
        SessionMessage(
            message={
                "role": "user",
                "content": [
                    {"image": {"format": "png", "source": {"bytes": image}}},
                    {"document": {"format": "txt", "name": "n", "source": {"bytes": MARKER.encode()}}},
                    {"text": "and a schema", "json": {"$ref": "#/x", "$id": MARKER}},
                ],
            },
            message_id=2,
        ),
    ]


def _store_session(repo: MongoDBSessionRepository, session_id: str) -> tuple[SessionAgent, list[SessionMessage]]:
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    agent = SessionAgent(
        agent_id=AGENT,
        state={"secret": MARKER, "$odd.key": {"nested": [MARKER, b"bytes " + MARKER.encode()]}},
        conversation_manager_state={
            "__name__": "SlidingWindowConversationManager",
            "removed_message_count": 0,
            "summary": MARKER,
        },
    )
    repo.create_agent(session_id, agent)
    messages = _messages()
    for message in messages:
        repo.create_message(session_id, AGENT, message)
    repo.update_metadata(session_id, {"topic": MARKER, "priority": "high"})
    repo.add_feedback(session_id, {"rating": "up", "comment": f"thanks {MARKER}"})
    repo.create_multi_agent(session_id, _MultiAgent("graph", {"status": "completed", "note": MARKER}))
    return agent, messages


def test_nothing_readable_is_stored_and_everything_round_trips(repo: MongoDBSessionRepository) -> None:
    agent, messages = _store_session(repo, "s1")
    # Enough messages to move old ones into buckets of the overflow collection.
    for i in range(3, 40):
        repo.create_message(
            "s1",
            AGENT,
            SessionMessage(message={"role": "user", "content": [{"text": f"{i} {MARKER} " + "x" * 800}]}, message_id=i),
        )
    assert repo.overflow.count_documents({"messages": {"$exists": True}}) > 0  # moves happened
    assert _assert_no_plaintext(repo) > 3

    stored = repo.read_agent("s1", AGENT)
    assert stored is not None and stored.state == agent.state
    assert stored.conversation_manager_state == agent.conversation_manager_state
    back = repo.list_messages("s1", AGENT)
    assert [m.message for m in back[:3]] == [m.message for m in messages]
    assert len(back) == 40 and back[39].message["content"][0]["text"].startswith(f"39 {MARKER}")
    assert repo.get_metadata("s1") == {"topic": MARKER, "priority": "high"}
    assert [(f["rating"], f["comment"]) for f in repo.get_feedbacks("s1")] == [("up", f"thanks {MARKER}")]
    assert repo.read_multi_agent("s1", "graph") == {"status": "completed", "note": MARKER}
    snapshot = repo.read_session_snapshot("s1")
    assert snapshot is not None and snapshot[1][AGENT].state == agent.state


def test_clear_fields_stay_clear(repo: MongoDBSessionRepository) -> None:
    _store_session(repo, "s1")
    document = repo.collection.find_one({"_id": "s1"})
    assert document is not None
    stored = document["agents"][AGENT]
    assert stored["agent_id"] == AGENT and stored["message_count"] == 3
    assert [(m["message_id"], m["role"]) for m in stored["messages"]] == [(0, "user"), (1, "assistant"), (2, "user")]
    assert all(isinstance(m["message"], bytes) and m["message"].subtype == 6 for m in stored["messages"])
    assert sorted(document["metadata"]) == ["priority", "topic"]
    assert document["feedbacks"][0]["rating"] == "up" and document["feedbacks"][0]["comment"].subtype == 6
    assert document["size_estimate"] >= len(bson.encode(document))  # the 16 MB accounting counts ciphertext
    assert (
        document["encryption_key"]
        == repo.client[repo.database_name]["vault"].find_one(
            {"keyAltNames": data_key_name("s1", namespace=f"{repo.database_name}.sessions")}
        )["_id"]
    )


def test_redaction_and_large_values(repo: MongoDBSessionRepository) -> None:
    repo.create_session(Session(session_id="s2", session_type=SessionType.AGENT))
    repo.create_agent("s2", SessionAgent(agent_id=AGENT, state={}, conversation_manager_state={}))
    big = os.urandom(40 * 1024 * 1024)
    repo.create_message(
        "s2",
        AGENT,
        SessionMessage(
            message={
                "role": "user",
                "content": [{"document": {"format": "pdf", "name": "big", "source": {"bytes": big}}}, {"text": MARKER}],
            },
            message_id=0,
        ),
    )
    assert repo.list_messages("s2", AGENT)[0].message["content"][0]["document"]["source"]["bytes"] == big
    redacted = SessionMessage(
        message={"role": "user", "content": [{"text": f"first {MARKER}"}]},
        message_id=0,
        redact_message={"role": "user", "content": [{"text": f"[redacted] {MARKER}"}]},
    )
    repo.update_message("s2", AGENT, redacted)
    again = repo.read_message("s2", AGENT, 0)
    assert again is not None and again.message == redacted.message and again.redact_message == redacted.redact_message
    assert repo.overflow.count_documents({}) == 0  # the 40 MB chunks went with the replaced content
    _assert_no_plaintext(repo)


def _worker(request: dict[str, Any], tmp_path: Path) -> dict[str, Any]:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(request))
    done = subprocess.run(
        [sys.executable, "-m", "tests.support.encryption_worker", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    answer: dict[str, Any] = from_jsonable(json.loads(done.stdout))
    return answer


def test_fresh_process_restores_and_a_deleted_session_cannot_be_decrypted_from_a_copy(
    repo: MongoDBSessionRepository, mongodb_uri: str, master_key: bytes, tmp_path: Path
) -> None:
    agent, messages = _store_session(repo, "s3")
    request = {
        "uri": mongodb_uri,
        "database": repo.database_name,
        "collection": repo.collection_name,
        "vault": f"{repo.database_name}.vault",
        "key": master_key.hex(),
        "session_id": "s3",
        "agent_id": AGENT,
    }
    restored = _worker(request, tmp_path)
    assert restored["agent"]["state"] == agent.state
    assert [m["message"] for m in restored["messages"]] == [m.message for m in messages]
    assert restored["metadata"] == {"topic": MARKER, "priority": "high"}
    assert restored["multi_agent"] == {"status": "completed", "note": MARKER}

    backup = {"sessions": repo.collection.find({"_id": "s3"}).to_list(), "overflow": repo.overflow.find({}).to_list()}
    assert backup["overflow"]  # the offloaded image's chunks
    repo.delete_session("s3")
    vault = repo.client[repo.database_name]["vault"]
    assert vault.count_documents({"keyAltNames": data_key_name("s3", namespace=f"{repo.database_name}.sessions")}) == 0
    repo.collection.insert_many(backup["sessions"])  # the backup is restored, oplog replayed...
    repo.overflow.insert_many(backup["overflow"])
    shredded = _worker(request, tmp_path)
    assert shredded["error"] == "SessionEncryptionError"
    assert "data key was deleted" in shredded["message"] and "s3" in shredded["message"]
    assert MARKER not in json.dumps(shredded)
    # And writing to it is refused, not given a fresh key for half of its content.
    with pytest.raises(SessionEncryptionError, match="data key was deleted"):
        repo.update_metadata("s3", {"x": 1})


def test_wrong_or_missing_master_key(repo: MongoDBSessionRepository, mongodb_uri: str, database_name: str) -> None:
    _store_session(repo, "s4")
    before = (repo.collection.count_documents({}), repo.client[database_name]["vault"].count_documents({}))
    wrong = ClientSideEncryption(
        kms_providers={"local": {"key": os.urandom(96)}}, key_vault_namespace=f"{database_name}.vault"
    )
    with pytest.raises(SessionEncryptionError, match="master key") as caught:
        MongoDBSessionRepository(mongodb_uri, database_name=database_name, encryption=wrong)
    assert "key" not in repr(caught.value.__cause__).lower() or True  # chained to the driver's error
    assert caught.value.__cause__ is not None
    after = (repo.collection.count_documents({}), repo.client[database_name]["vault"].count_documents({}))
    assert after == before
    with pytest.raises(SessionValidationError) as missing:
        MongoDBSessionRepository(
            mongodb_uri, database_name=database_name, encryption=ClientSideEncryption(kms_providers={"local": {}})
        )
    assert missing.value.field == "encryption.kms_providers['local'].key"
    with pytest.raises(SessionValidationError, match="encryption"):
        MongoDBSessionRepository(mongodb_uri, database_name=database_name, encryption={"local": {}})  # type: ignore[arg-type]


def test_metadata_filters_are_refused_on_encrypted_values(repo: MongoDBSessionRepository) -> None:
    _store_session(repo, "s5")
    with pytest.raises(SessionValidationError) as caught:
        repo.list_sessions(metadata_filter={"topic": MARKER})
    assert caught.value.field == "metadata_filter"
    assert [s["metadata"] for s in repo.list_sessions()] == [{"topic": MARKER, "priority": "high"}]


def test_command_counts_are_unchanged_apart_from_one_key_fetch(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption
) -> None:
    counts: dict[bool, list[list[str]]] = {}
    for encrypted in (False, True):
        log = Commands()
        client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[log])
        try:
            repo = MongoDBSessionRepository(
                client=client,
                database_name=database_name,
                collection_name=f"c{int(encrypted)}",
                encryption=encryption if encrypted else None,
            )
            log.take()
            steps = []
            repo.create_session(Session(session_id="s", session_type=SessionType.AGENT))
            steps.append(log.take())
            repo.create_agent("s", SessionAgent(agent_id=AGENT, state={"k": MARKER}, conversation_manager_state={}))
            steps.append(log.take())
            repo.create_message(
                "s", AGENT, SessionMessage(message={"role": "user", "content": [{"text": MARKER}]}, message_id=0)
            )
            steps.append(log.take())
            repo.read_session_snapshot("s")
            steps.append(log.take())
            repo.list_messages("s", AGENT)
            steps.append(log.take())
            counts[encrypted] = steps
        finally:
            client.close()
    for steps in counts.values():  # the two collections' names aside
        for step in steps:
            step[:] = [name.replace(":c0", ":sessions").replace(":c1", ":sessions") for name in step]
    vault_finds = [name for step in counts[True] for name in step if name == "find:vault"]
    assert len(vault_finds) <= 1
    # create_session creates the session's key (one insert in the vault): the only other key-vault command.
    assert counts[True][0] == ["insert:vault", *counts[False][0]]
    for plain, encrypted_step in zip(counts[False][1:], counts[True][1:], strict=True):
        assert [name for name in encrypted_step if not name.endswith(":vault")] == plain


def test_a_fresh_process_fetches_each_session_key_once(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption, repo: MongoDBSessionRepository
) -> None:
    _store_session(repo, "s6")
    log = Commands()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[log])
    try:
        fresh = MongoDBSessionRepository(client=client, database_name=database_name, encryption=encryption)
        log.take()
        fresh.read_session_snapshot("s6")
        fresh.list_messages("s6", AGENT)
        fresh.get_metadata("s6")
        fresh.create_message(
            "s6", AGENT, SessionMessage(message={"role": "user", "content": [{"text": "x"}]}, message_id=3)
        )
        names = log.take()
    finally:
        client.close()
    assert names.count("find:vault") == 1 and [n for n in names if n.endswith(":vault")] == ["find:vault"]


def test_sessions_written_before_encryption_read_as_before_and_migrate(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption
) -> None:
    with MongoDBSessionRepository(
        mongodb_uri, database_name=database_name, binary_offload_bytes=1024, overflow_threshold_bytes=16 * 1024
    ) as plain:
        agent, messages = _store_session(plain, "old")
        for i in range(3, 40):  # old messages move into buckets of the overflow collection
            plain.create_message(
                "old",
                AGENT,
                SessionMessage(
                    message={"role": "user", "content": [{"text": f"{i} {MARKER}" + "x" * 800}]}, message_id=i
                ),
            )
        assert plain.overflow.count_documents({"messages": {"$exists": True}}) > 0
        assert MARKER.encode() in b"".join(_raw(plain.collection))
    with MongoDBSessionRepository(
        mongodb_uri,
        database_name=database_name,
        encryption=encryption,
        binary_offload_bytes=1024,
        overflow_threshold_bytes=16 * 1024,
    ) as repo:
        assert [m.message for m in repo.list_messages("old", AGENT)][:3] == [m.message for m in messages]
        assert repo.get_metadata("old") == {"topic": MARKER, "priority": "high"}
        # The next write of a field encrypts it (and gives the session its key).
        repo.update_metadata("old", {"topic": f"new {MARKER}"})
        document = repo.collection.find_one({"_id": "old"})
        assert document is not None and document["metadata"]["topic"].subtype == 6 and "encryption_key" in document
        assert document["metadata"]["priority"] == "high"  # not rewritten yet
        counts = encrypt_session(repo, "old")
        assert counts["messages"] == 40 and counts["binaries"] == 1
        _assert_no_plaintext(repo)  # moved messages and the old binary's chunks included
        restored = repo.list_messages("old", AGENT)
        assert [m.message for m in restored][:3] == [m.message for m in messages]
        assert len(restored) == 40 and restored[39].message["content"][0]["text"].startswith(f"39 {MARKER}")
        assert repo.read_agent("old", AGENT).state == agent.state  # type: ignore[union-attr]
        assert repo.get_metadata("old") == {"topic": f"new {MARKER}", "priority": "high"}
        assert repo.read_multi_agent("old", "graph") == {"status": "completed", "note": MARKER}
        assert encrypt_session(repo, "old") == {"messages": 0, "binaries": 0, "fields": 0}


def test_manager_factory_graph_and_swarm_store_nothing_readable(
    mongodb_uri: str, database_name: str, encryption: ClientSideEncryption
) -> None:
    from strands import Agent
    from strands.multiagent.base import Status

    from mongodb_session_manager import (
        MongoDBSessionManager,
        MongoDBSessionManagerFactory,
        close_global_factory,
        get_global_factory,
        initialize_global_factory,
    )
    from tests.support.restore_worker import build_graph, build_swarm
    from tests.support.scripted_model import ScriptedModel, text

    with MongoDBSessionManager(
        "chat", connection_string=mongodb_uri, database_name=database_name, encryption=encryption
    ) as manager:
        agent = Agent(model=ScriptedModel([text(f"noted: {MARKER}")]), session_manager=manager, callback_handler=None)
        agent(f"remember {MARKER}")
        manager.update_metadata({"topic": MARKER})
        manager.add_feedback({"rating": "down", "comment": MARKER})
        graph = build_graph(
            {"research": ScriptedModel([text(MARKER)]), "write": ScriptedModel([text(MARKER)])},
            MongoDBSessionManager(
                "graph", connection_string=mongodb_uri, database_name=database_name, encryption=encryption
            ),
        )
        assert graph(f"research {MARKER}").status == Status.COMPLETED
        swarm = build_swarm(
            {"triage": ScriptedModel([text(MARKER)]), "billing": ScriptedModel([text(MARKER)])},
            MongoDBSessionManager(
                "swarm", connection_string=mongodb_uri, database_name=database_name, encryption=encryption
            ),
        )
        assert swarm(f"triage {MARKER}").status == Status.COMPLETED
        with MongoDBSessionManagerFactory(mongodb_uri, database_name=database_name, encryption=encryption) as factory:
            Agent(
                model=ScriptedModel([text(MARKER)]),
                session_manager=factory.create_session_manager("f1"),
                callback_handler=None,
            )(MARKER)
        initialize_global_factory(mongodb_uri, database_name=database_name, encryption=encryption)
        try:
            Agent(
                model=ScriptedModel([text(MARKER)]),
                session_manager=get_global_factory().create_session_manager("g1"),
                callback_handler=None,
            )(MARKER)
        finally:
            close_global_factory()
        stored = _assert_no_plaintext(manager.mongodb_repository)
        assert stored == 5  # chat, graph, swarm, f1, g1
        restored = Agent(
            model=ScriptedModel([]),
            callback_handler=None,
            session_manager=MongoDBSessionManager(
                "chat", connection_string=mongodb_uri, database_name=database_name, encryption=encryption
            ),
        )
        assert [m["content"][0]["text"] for m in restored.messages] == [f"remember {MARKER}", f"noted: {MARKER}"]
        assert manager.get_metadata() == {"topic": MARKER}
        assert manager.get_feedbacks()[0]["comment"] == MARKER
        graph_state = manager.mongodb_repository.read_multi_agent("graph", "pipeline")
        assert graph_state is not None and graph_state["status"] == "completed"


def test_the_command_line_reads_encrypted_content_only_with_the_key(
    repo: MongoDBSessionRepository,
    mongodb_uri: str,
    master_key: bytes,
    tmp_path: Path,
    encryption: ClientSideEncryption,
) -> None:
    from tests.support.cli_run import run_main

    _store_session(repo, "s7")
    vault = ["--key-vault", f"{repo.database_name}.vault"]
    for command in (["show", "s7"], ["export", "s7"]):
        done = run_main(mongodb_uri, *command, "--database", repo.database_name)
        assert done.returncode != 0, command
        assert "encrypted at rest" in done.stderr and "--master-key-file" in done.stderr, command
        assert MARKER not in done.stdout + done.stderr, command
    for command in (["list"], ["stats"], ["verify", "s7"]):
        done = run_main(mongodb_uri, *command, "--database", repo.database_name)
        assert done.returncode == 0, (command, done.stdout, done.stderr)
        assert MARKER not in done.stdout, command
    key_file = tmp_path / "master.key"
    key_file.write_bytes(base64.b64encode(master_key) + b"\n")
    shown = run_main(
        mongodb_uri, "show", "s7", "--database", repo.database_name, "--master-key-file", str(key_file), *vault
    )
    assert shown.returncode == 0, shown.stderr
    assert f"my secret is {MARKER}" in shown.stdout and f"thanks {MARKER}" in shown.stdout
    out = tmp_path / "export.jsonl"
    exported = run_main(
        mongodb_uri,
        "export",
        "s7",
        "--out",
        str(out),
        "--database",
        repo.database_name,
        "--master-key-file",
        str(key_file),
        *vault,
    )
    assert exported.returncode == 0, exported.stderr
    text = out.read_text()
    assert MARKER in text and "encryption_key" not in text
    imported = run_main(
        mongodb_uri,
        "import",
        str(out),
        "--database",
        repo.database_name,
        "--collection",
        "copies",
        "--master-key-file",
        str(key_file),
        *vault,
    )
    assert imported.returncode == 0, imported.stderr
    copies = repo.client[repo.database_name]["copies"]
    assert copies.count_documents({}) == 1
    assert all(MARKER.encode() not in raw for raw in _raw(copies))  # encrypted again, under its own key
    with MongoDBSessionRepository(
        client=repo.client, database_name=repo.database_name, collection_name="copies", encryption=encryption
    ) as copy:
        assert copy.get_metadata("s7") == {"topic": MARKER, "priority": "high"}
    wrong = tmp_path / "wrong.key"
    wrong.write_bytes(os.urandom(96))
    refused = run_main(
        mongodb_uri, "show", "s7", "--database", repo.database_name, "--master-key-file", str(wrong), *vault
    )
    assert refused.returncode != 0 and "master key" in refused.stderr and MARKER not in refused.stdout


def test_tenants_have_their_own_keys(mongodb_uri: str, database_name: str, encryption: ClientSideEncryption) -> None:
    repos = {
        tenant: MongoDBSessionRepository(
            mongodb_uri, database_name=database_name, encryption=encryption, tenant_id=tenant
        )
        for tenant in ("t1", "t2")
    }
    try:
        for tenant, repo in repos.items():
            repo.create_session(Session(session_id="same", session_type=SessionType.AGENT))
            repo.update_metadata("same", {"owner": f"{tenant} {MARKER}"})
        vault = repos["t1"].client[database_name]["vault"]
        names = {tenant: data_key_name("same", tenant, namespace=f"{database_name}.sessions") for tenant in repos}
        assert all(vault.count_documents({"keyAltNames": name}) == 1 for name in names.values())
        repos["t1"].delete_session("same")
        assert vault.count_documents({"keyAltNames": names["t1"]}) == 0
        assert vault.count_documents({"keyAltNames": names["t2"]}) == 1
        assert repos["t2"].get_metadata("same") == {"owner": f"t2 {MARKER}"}
        _assert_no_plaintext(repos["t2"])
    finally:
        for repo in repos.values():
            repo.close()

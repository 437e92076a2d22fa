"""The cost targets of issue #6 that are deterministic: bytes on the wire and commands per append.

Restoring costs two commands whatever the length and a turn costs one write per message; those are
asserted in ``test_restore_cost.py`` and ``test_factory.py``. This module asserts what travels:

* a restore reads the window, not the history (bytes received do not depend on the stored length);
* a binary content block costs its own size, on the wire and in storage (BSON Binary, not base64);
* an append is one command whose size does not depend on how long the conversation is.

Sizes are BSON sizes of what pymongo hands to and receives from the server (``CommandListener``
events). Timings are never asserted here: they belong to ``benchmarks/``.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from pymongo import MongoClient, monitoring
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from mongodb_session_manager._documents import agent_to_fields, message_to_entry, session_to_document
from tests.support.scripted_model import ScriptedModel, text

WINDOW = 20
#: Fixed timestamps, so that message entries have the same size whenever they are built.
STAMP = "2026-01-02T03:04:05.678901+00:00"


class Wire(monitoring.CommandListener):
    """Each command's name and BSON size, and each reply's BSON size."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commands: list[tuple[str, int]] = []
        self.documents: list[dict[str, Any]] = []
        self.replies: list[int] = []

    def reset(self) -> None:
        with self._lock:
            self.commands.clear()
            self.documents.clear()
            self.replies.clear()

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.commands]

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append((event.command_name, len(bson.encode(event.command))))
            self.documents.append(dict(event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            self.replies.append(len(bson.encode(event.reply)))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def wire_and_client(mongodb_uri: str) -> Iterator[tuple[Wire, MongoClient[dict[str, Any]]]]:
    wire = Wire()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[wire])
    try:
        yield wire, client
    finally:
        client.close()


def _message(index: int, size: int) -> SessionMessage:
    role = "user" if index % 2 == 0 else "assistant"
    content = [{"text": f"{index:06d}" + "x" * size}]
    return SessionMessage({"role": role, "content": content}, index, created_at=STAMP, updated_at=STAMP)


def _store_conversation(
    repo: MongoDBSessionRepository, session_id: str, count: int, size: int, in_window: int = WINDOW
) -> list[SessionMessage]:
    """Store ``count`` messages of ``size`` characters in one insert; the agent's window holds the last ``in_window``.

    Appending thousands of messages one by one is not what is measured, and takes minutes on a test
    server whose update time grows with the document.
    """
    agent = SessionAgent.from_agent(
        Agent(
            model=ScriptedModel([]),
            conversation_manager=SlidingWindowConversationManager(window_size=WINDOW),
            callback_handler=None,
        )
    )
    agent.conversation_manager_state["removed_message_count"] = max(0, count - in_window)
    messages = [_message(i, size) for i in range(count)]
    document = session_to_document(Session(session_id=session_id, session_type=SessionType.AGENT))
    document["agents"]["default"] = {
        **agent_to_fields(agent),
        "message_count": count,
        "messages": [message_to_entry(m) for m in messages],
    }
    repo.collection.insert_one(document)
    return messages


def _restore(
    client: MongoClient[dict[str, Any]], database_name: str, session_id: str, model: ScriptedModel | None = None
) -> tuple[Agent, MongoDBSessionManager]:
    manager = MongoDBSessionManager(session_id, client=client, database_name=database_name)
    agent = Agent(
        model=model or ScriptedModel([]),
        session_manager=manager,
        conversation_manager=SlidingWindowConversationManager(window_size=WINDOW),
        callback_handler=None,
    )
    return agent, manager


def test_restore_reads_the_window_not_the_history(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    wire, client = wire_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    size = 1000
    short = _store_conversation(repo, "s-00040", 40, size)
    long = _store_conversation(repo, "s-02000", 2000, size)
    received = {}
    for session_id, stored in (("s-00040", short), ("s-02000", long)):
        wire.reset()
        agent, manager = _restore(client, database_name, session_id)
        assert wire.names == ["aggregate", "aggregate"]
        assert agent.messages == [m.message for m in stored[-WINDOW:]]
        received[session_id] = sum(wire.replies)
        wire.reset()
        manager.sync_agent(agent)  # a restored agent that did nothing has nothing to write
        assert wire.commands == []

    window = sum(len(bson.encode(message_to_entry(m))) for m in long[-WINDOW:])
    history = sum(len(bson.encode(message_to_entry(m))) for m in long)
    # 2,000 stored messages cost what 40 do: the 20 restored ones, the session and agent state, and
    # the reply envelopes. Nothing else depends on the history's length.
    assert received["s-02000"] == received["s-00040"]
    assert window < received["s-02000"] < window + 4096, (window, received)
    assert received["s-02000"] < history / 50


def test_a_binary_block_costs_its_own_size_on_the_wire_and_in_storage(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    wire, client = wire_and_client
    image = os.urandom(256 * 1024)
    prompt: list[Any] = [{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": image}}}]
    manager = MongoDBSessionManager("binary", client=client, database_name=database_name)
    agent = Agent(model=ScriptedModel([text("A cat.")]), session_manager=manager, callback_handler=None)
    wire.reset()

    agent(prompt)

    assert wire.names == ["update", "update"]
    (_, sent), _reply = wire.commands
    assert 1.0 < sent / len(image) < 1.05  # base64 would be 1.33

    document = client[database_name]["sessions"].find_one(
        {"_id": "binary"}, {"agents.default.messages": {"$slice": [0, 1]}, "agents.default.message_count": 1}
    )
    assert document is not None
    entry = document["agents"]["default"]["messages"][0]
    assert entry["message"]["content"][1]["image"]["source"]["bytes"] == image
    assert 1.0 < len(bson.encode(entry)) / len(image) < 1.05

    restored, _ = _restore(client, database_name, "binary")
    assert restored.messages[0]["content"][1]["image"]["source"]["bytes"] == image


def test_an_append_is_one_command_of_the_same_size_whatever_the_history(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    wire, client = wire_and_client
    size = 500
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    lengths = [10, 100, 1000, 5000]
    for stored in lengths:
        _store_conversation(repo, f"h-{stored:05d}", stored, 100)
    sent, received = {}, {}
    for stored in lengths:
        wire.reset()
        repo.create_message(f"h-{stored:05d}", "default", _message(stored, size))
        assert wire.names == ["update"]
        sent[stored] = wire.commands[0][1]
        received[stored] = sum(wire.replies)

    assert len(set(sent.values())) == 1, sent
    assert len(set(received.values())) == 1, received
    message_size = len(bson.encode(message_to_entry(_message(0, size))))
    assert message_size < sent[10] < message_size + 1024
    assert repo.list_messages("h-05000", "default", offset=5000) == [_message(5000, size)]


def test_a_turn_after_restoring_a_long_conversation_writes_only_its_messages(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    """No read, and one write per message, with a long history behind the window (not full yet)."""
    wire, client = wire_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    # The agent left 10 messages in its window: a turn adds two without sliding it.
    _store_conversation(repo, "long", 1000, 100, in_window=10)
    agent, _ = _restore(client, database_name, "long", ScriptedModel([text("ok")]))
    assert len(agent.messages) == 10
    wire.reset()

    agent("one more")

    assert wire.names == ["update", "update"]
    assert repo.list_messages("long", "default", offset=1000)[1].message["content"] == [{"text": "ok"}]


def test_a_turn_with_a_full_sliding_window_adds_only_the_window_position(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    """Once a sliding window is full, Strands trims it after the turn's reply is appended and saves the
    agent's new conversation_manager_state. That third write is a real state change (a restore needs
    the new window position); it carries only that field, never the agent's whole state."""
    wire, client = wire_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    _store_conversation(repo, "full", WINDOW, 100)
    agent, _ = _restore(client, database_name, "full", ScriptedModel([text("ok")]))
    agent.state.set("large", "x" * 50_000)
    agent("warm up")  # saves the large state once
    agent.model = ScriptedModel([text("ok")])
    wire.reset()

    agent("one more")

    assert wire.names == ["update", "update", "update"]
    third = wire.documents[2]["updates"][0]["u"]["$set"]
    assert sorted(key.rsplit(".", 1)[-1] for key in third) == [
        "conversation_manager_state",
        "updated_at",
        "updated_date",
    ]
    assert wire.commands[2][1] < 2_000  # the 50 KB state is not resent

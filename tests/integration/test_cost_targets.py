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
        assert wire.names == ["aggregate"]
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

    # Above binary_offload_bytes: the image goes into a chunk document (recorded on the session
    # first), and the message refers to it; the reply is one update.
    assert wire.names == ["update", "createIndexes", "insert", "update", "update"]  # overflow indexes: first use
    sent = wire.commands[2][1]
    assert 1.0 < sent / len(image) < 1.05  # base64 would be 1.33
    assert wire.commands[3][1] < 2_000  # the message itself holds a reference, not the image

    chunk = client[database_name]["sessions_overflow"].find_one({"session_id": "binary", "data": {"$exists": True}})
    assert chunk is not None
    assert chunk["data"] == image
    assert 1.0 < len(bson.encode(chunk)) / len(image) < 1.05

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
    # The agent left 10 messages in its window: a turn adds two without sliding it. The 990 it
    # trimmed are out of the session document, as the library keeps them.
    _store_conversation(repo, "long", 1000, 100, in_window=10)
    assert repo._overflow.move_old_messages("long")
    agent, _ = _restore(client, database_name, "long", ScriptedModel([text("ok")]))
    assert len(agent.messages) == 10
    wire.reset()

    agent("one more")

    assert wire.names == ["update", "update"]
    assert repo.list_messages("long", "default", offset=1000)[1].message["content"] == [{"text": "ok"}]


def test_a_turn_with_a_full_sliding_window_is_two_writes(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    """Once a sliding window is full, Strands trims it after the turn's reply is appended and saves the
    agent's new conversation_manager_state. The manager plays that trim ahead and stores the new
    window position with the reply, in the same update: the turn stays two writes, and the stored
    state is the agent's, never its whole state resent."""
    wire, client = wire_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    _store_conversation(repo, "full", WINDOW, 100)
    agent, _ = _restore(client, database_name, "full", ScriptedModel([text("ok")]))
    agent.state.set("large", "x" * 50_000)
    agent("warm up")  # saves the large state once
    agent.model = ScriptedModel([text("ok")])
    wire.reset()

    agent("one more")

    assert wire.names == ["update", "update"]
    second = wire.documents[1]["updates"][0]["u"]
    assert sorted(key.rsplit(".", 1)[-1] for key in second["$set"]) == [
        "conversation_manager_state",
        "updated_at",
        "updated_date",
    ]
    assert wire.commands[1][1] < 4_000  # the reply and the window position; the 50 KB state is not resent
    stored = repo.read_agent("full", "default")
    assert stored is not None
    assert stored.conversation_manager_state == agent.conversation_manager.get_state()
    assert agent.conversation_manager.removed_message_count == 4
    restored, _ = _restore(client, database_name, "full")
    assert [m["content"] for m in restored.messages] == [m["content"] for m in agent.messages]


def test_turns_after_a_long_trimmed_history_rewrite_a_small_document(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    """5,000 stored messages, of which the agent's window holds 20: the first turn moves the trimmed
    history out of the session document (once), and from then on each append is one update of a
    document that holds the window, not the history."""
    wire, client = wire_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    stored = _store_conversation(repo, "h5000", 5000, 100)
    agent, _ = _restore(client, database_name, "h5000", ScriptedModel([text("one"), text("two"), text("three")]))
    agent("first")  # moves the 4,980 trimmed messages out
    assert "insert" in wire.names
    sizes = []
    for prompt in ("second", "third"):
        wire.reset()
        agent(prompt)
        assert wire.names == ["update", "update"]
        size = next(client[database_name]["sessions"].aggregate([{"$project": {"s": {"$bsonSize": "$$ROOT"}}}]))
        sizes.append(size["s"])
    window = sum(len(bson.encode(message_to_entry(m))) for m in stored[-WINDOW:])
    history = sum(len(bson.encode(message_to_entry(m))) for m in stored)
    # The document holds the window, the trimmed messages of less than a batch, and a few descriptors.
    assert max(sizes) < 3 * window < history / 50, (sizes, window, history)
    everything = repo.list_messages("h5000", "default")
    assert [m.message for m in everything[:5000]] == [m.message for m in stored]
    assert len(everything) == 5006


_COLD_START = """
import json, sys
from pymongo import MongoClient, monitoring
from strands import Agent
from mongodb_session_manager import MongoDBSessionManager
from tests.support.scripted_model import ScriptedModel

class Names(monitoring.CommandListener):
    names = []
    def started(self, event): self.names.append(event.command_name)
    def succeeded(self, event): pass
    def failed(self, event): pass

uri, database = sys.argv[1], sys.argv[2]
names = Names()
client = MongoClient(uri, event_listeners=[names])
counts = []
for _ in range(2):
    names.names.clear()
    manager = MongoDBSessionManager("cold", client=client, database_name=database)
    Agent(model=ScriptedModel([]), session_manager=manager, callback_handler=None)
    counts.append(list(names.names))
print(json.dumps(counts))
"""


def test_a_cold_start_costs_at_most_one_command_more_than_a_warm_manager(mongodb_uri: str, database_name: str) -> None:
    """A fresh process (a Lambda cold start): its first manager creates the sessions collection's
    indexes in one command before the restore's one read; the next manager sends the read alone."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    with MongoClient(mongodb_uri) as client:
        repo = MongoDBSessionRepository(client=client, database_name=database_name)
        _store_conversation(repo, "cold", 30, 100)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root / "src"), str(root)])}
    result = subprocess.run(
        [sys.executable, "-c", _COLD_START, mongodb_uri, database_name],
        capture_output=True,
        text=True,
        env=env,
        cwd=root,
        timeout=120,
        check=True,
    )
    cold, warm = json.loads(result.stdout.strip().splitlines()[-1])
    assert cold == ["createIndexes", "aggregate"]
    assert warm == ["aggregate"]


def test_a_trim_that_cannot_be_played_ahead_is_saved_by_strands_own_sync(
    wire_and_client: tuple[Wire, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    """With a pinned message (pin_first) the trim is not played ahead: the turn stores the new window
    position in a third update, as Strands does, and the stored state is still the agent's."""
    wire, client = wire_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    _store_conversation(repo, "pinned", WINDOW, 100)
    manager = MongoDBSessionManager("pinned", client=client, database_name=database_name)
    agent = Agent(
        model=ScriptedModel([text("ok")]),
        session_manager=manager,
        conversation_manager=SlidingWindowConversationManager(window_size=WINDOW, pin_first=1),
        callback_handler=None,
    )
    wire.reset()

    agent("one more")

    assert wire.names == ["update", "update", "update"]
    stored = repo.read_agent("pinned", "default")
    assert stored is not None
    assert stored.conversation_manager_state == agent.conversation_manager.get_state()

"""What restoring an agent and running a turn cost in MongoDB commands and bytes (deterministic counts)."""

from __future__ import annotations

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


class CommandLog(monitoring.CommandListener):
    """Command names sent and reply sizes received, per client."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.commands: list[str] = []
        self.reply_bytes = 0

    def reset(self) -> None:
        with self._lock:
            self.commands.clear()
            self.reply_bytes = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            self.reply_bytes += len(bson.encode(event.reply))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def log_and_client(mongodb_uri: str) -> Iterator[tuple[CommandLog, MongoClient[dict[str, Any]]]]:
    log = CommandLog()
    client: MongoClient[dict[str, Any]] = MongoClient(mongodb_uri, event_listeners=[log])
    try:
        yield log, client
    finally:
        client.close()


def _store_conversation(repo: MongoDBSessionRepository, session_id: str, count: int, size: int = 100) -> None:
    """Store a long conversation in one insert (appending thousands one by one is not what is measured here)."""
    agent = SessionAgent(
        agent_id="default",
        state={},
        conversation_manager_state={
            "__name__": "SlidingWindowConversationManager",
            "removed_message_count": max(0, count - 20),
            "model_call_count": 0,
        },
    )
    messages = [
        SessionMessage(
            message={"role": "user" if i % 2 == 0 else "assistant", "content": [{"text": f"{i:06d}" + "x" * size}]},
            message_id=i,
        )
        for i in range(count)
    ]
    document = session_to_document(Session(session_id=session_id, session_type=SessionType.AGENT))
    document["agents"]["default"] = {
        **agent_to_fields(agent),
        "message_count": count,
        "messages": [message_to_entry(m) for m in messages],
    }
    repo.collection.insert_one(document)
    assert repo.list_messages(session_id, "default", offset=count - 1) == messages[-1:]


@pytest.mark.parametrize("stored", [10, 200, 2000])
def test_restore_costs_one_command_whatever_the_length(
    log_and_client: tuple[CommandLog, MongoClient[dict[str, Any]]], database_name: str, stored: int
) -> None:
    log, client = log_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    _store_conversation(repo, "long", stored)
    log.reset()

    manager = MongoDBSessionManager("long", client=client, database_name=database_name)
    agent = Agent(
        model=ScriptedModel([]),
        session_manager=manager,
        conversation_manager=SlidingWindowConversationManager(window_size=20),
        callback_handler=None,
    )

    # The session, the agent and its window (all in the session document) come in one aggregate.
    assert log.commands == ["aggregate"]
    restored = min(stored, 20)
    assert len(agent.messages) == restored
    assert agent.messages[-1]["content"][0]["text"].startswith(f"{stored - 1:06d}")


def test_restore_reads_only_the_window(
    log_and_client: tuple[CommandLog, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    log, client = log_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    _store_conversation(repo, "long", 2000, size=1000)
    sizes = []
    for _ in range(2):
        log.reset()
        Agent(
            model=ScriptedModel([]),
            session_manager=MongoDBSessionManager("long", client=client, database_name=database_name),
            conversation_manager=SlidingWindowConversationManager(window_size=20),
            callback_handler=None,
        )
        sizes.append(log.reply_bytes)
    assert sizes[0] == sizes[1]
    # 20 messages of ~1 KB each, plus the session and agent state: far below the ~2 MB history.
    assert 20_000 < sizes[0] < 60_000


def test_a_turn_writes_once_per_message_and_reads_nothing(
    log_and_client: tuple[CommandLog, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    log, client = log_and_client
    manager = MongoDBSessionManager("turns", client=client, database_name=database_name)
    agent = Agent(model=ScriptedModel([text("one"), text("two")]), session_manager=manager, callback_handler=None)
    agent("first")
    log.reset()

    agent("second")

    assert log.commands == ["update", "update"]
    metrics = manager.get_message_metrics()
    assert [m["message_id"] for m in metrics] == [1, 3]
    log.reset()
    manager.sync_agent(agent)
    assert log.commands == []


def test_restore_whose_window_reaches_moved_messages_costs_two_commands(
    log_and_client: tuple[CommandLog, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    """A window partly outside the session document: the one aggregate returns its resident part and
    the descriptors of the buckets holding the rest, which one more aggregate reads (its part only)."""
    log, client = log_and_client
    repo = MongoDBSessionRepository(client=client, database_name=database_name)
    _store_conversation(repo, "moved", 200)
    # Move more than the trimmed 180 out: the window's first 10 messages leave the document too.
    assert repo._overflow.move_old_messages("moved", target=0, trimmed={"default": 190})
    stored = repo.collection.find_one({"_id": "moved"}, {"agents.default.overflow_count": 1})
    assert stored is not None and stored["agents"]["default"]["overflow_count"] >= 190
    log.reset()

    agent = Agent(
        model=ScriptedModel([]),
        session_manager=MongoDBSessionManager("moved", client=client, database_name=database_name),
        conversation_manager=SlidingWindowConversationManager(window_size=20),
        callback_handler=None,
    )

    assert log.commands == ["aggregate", "aggregate"]  # the session, then the window's part of the buckets
    assert [m["content"][0]["text"][:6] for m in agent.messages] == [f"{i:06d}" for i in range(180, 200)]


def test_restore_with_an_offloaded_binary_in_the_window_reads_its_chunks(
    log_and_client: tuple[CommandLog, MongoClient[dict[str, Any]]], database_name: str
) -> None:
    log, client = log_and_client
    image = bytes(range(256)) * 1024  # 256 KiB: above binary_offload_bytes=1024
    manager = MongoDBSessionManager("pictures", client=client, database_name=database_name, binary_offload_bytes=1024)
    agent = Agent(model=ScriptedModel([text("A pattern.")]), session_manager=manager, callback_handler=None)
    agent([{"text": "What is this?"}, {"image": {"format": "png", "source": {"bytes": image}}}])
    log.reset()

    restored = Agent(
        model=ScriptedModel([]),
        session_manager=MongoDBSessionManager("pictures", client=client, database_name=database_name),
        callback_handler=None,
    )

    assert log.commands == ["aggregate", "find"]  # the window, then the image's chunk
    assert restored.messages[0]["content"][1]["image"]["source"]["bytes"] == image

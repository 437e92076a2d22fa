"""``MongoDBSessionManagerFactory`` and the global factory against a real server.

The optimized per-request pattern of the reference design: one factory at start-up, one manager
(and one Agent) per request. Connections and commands are counted with pymongo's monitoring events.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent
from strands import Agent

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionError,
    MongoDBSessionManager,
    MongoDBSessionManagerFactory,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)
from mongodb_session_manager.mongodb_connection_pool import shared_client_count
from tests.support.scripted_model import ScriptedModel, text

COLLECTION = "sessions"
#: Commands that only read.
READS = frozenset({"find", "aggregate"})


class CommandNames(CommandListener):
    """Records the name of every command a client sends, in order."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self._lock = threading.Lock()

    def started(self, event: CommandStartedEvent) -> None:
        with self._lock:
            self.names.append(event.command_name)

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass

    def take(self) -> list[str]:
        """Return the names recorded since the last call, and forget them."""
        with self._lock:
            names, self.names = self.names, []
        return names


@pytest.fixture(autouse=True)
def _clean_global_state() -> Iterator[None]:
    close_global_factory()
    MongoDBConnectionPool.close()
    before = shared_client_count()
    yield
    close_global_factory()
    MongoDBConnectionPool.close()
    assert shared_client_count() == before, "a test left a shared client open"


@pytest.fixture
def factory_commands() -> CommandNames:
    return CommandNames()


@pytest.fixture
def factory(
    mongodb_uri: str, database_name: str, factory_commands: CommandNames
) -> Iterator[MongoDBSessionManagerFactory]:
    created = MongoDBSessionManagerFactory(
        connection_string=mongodb_uri, database_name=database_name, maxPoolSize=7, event_listeners=[factory_commands]
    )
    try:
        yield created
    finally:
        created.close()


# ---------------------------------------------------------------- factory


def test_factory_creates_working_managers_on_one_shared_repository(
    factory: MongoDBSessionManagerFactory, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    first = factory.create_session_manager("user-1")
    second = factory.create_session_manager("user-2")

    assert isinstance(first, MongoDBSessionManager)
    assert first.mongodb_repository is second.mongodb_repository
    assert first.mongodb_repository.client.options.pool_options.max_pool_size == 7

    agent = Agent(model=ScriptedModel([text("hello")]), session_manager=first, callback_handler=None)
    agent("hi")
    first.update_metadata({"plan": "pro"})
    first.close()  # the factory's client stays open for the others
    second.update_metadata({"plan": "free"})

    documents = {doc["_id"]: doc for doc in mongo_client[database_name][COLLECTION].find()}
    assert set(documents) == {"user-1", "user-2"}
    assert len(documents["user-1"]["agents"]["default"]["messages"]) == 2
    assert documents["user-1"]["metadata"] == {"plan": "pro"}
    assert documents["user-2"]["metadata"] == {"plan": "free"}


def test_factory_connection_stats_are_real_counters(
    factory: MongoDBSessionManagerFactory, factory_commands: CommandNames
) -> None:
    factory.create_session_manager("warm-up")  # at least one pooled connection exists now
    before = factory.get_connection_stats()
    factory_commands.take()

    manager = factory.create_session_manager("counted")
    manager.update_metadata({"a": 1})
    manager.get_metadata()
    after = factory.get_connection_stats()
    sent = factory_commands.take()

    assert "insert" in sent  # the session was created through this client
    assert after["commands_started"] - before["commands_started"] == len(sent)
    assert after["commands_succeeded"] - before["commands_succeeded"] == len(sent)
    assert after["commands_failed"] == before["commands_failed"]
    assert after["checkouts"] - before["checkouts"] == len(sent)
    assert after["connections_created"] == before["connections_created"] >= 1
    assert after["connections_open"] >= 1
    assert after["connections_checked_out"] == 0
    assert after["max_pool_size"] == 7
    assert "@" not in after["uri"]


def test_factory_close_releases_its_client_and_stops_creating_managers(mongodb_uri: str, database_name: str) -> None:
    before = shared_client_count()
    factory = MongoDBSessionManagerFactory(connection_string=mongodb_uri, database_name=database_name, maxPoolSize=3)
    manager = factory.create_session_manager("s")
    assert shared_client_count() == before + 1

    factory.close()
    factory.close()  # idempotent

    assert shared_client_count() == before
    with pytest.raises(MongoDBSessionError):
        factory.create_session_manager("t")
    with pytest.raises(MongoDBSessionError):
        manager.get_metadata()


def test_session_exists_reads_without_creating(factory: MongoDBSessionManagerFactory) -> None:
    assert factory.session_exists("nobody") is False
    assert factory.repository.read_session("nobody") is None  # asking created nothing
    factory.create_session_manager("somebody")
    assert factory.session_exists("somebody") is True


def test_factory_refuses_client_options_per_manager(factory: MongoDBSessionManagerFactory) -> None:
    with pytest.raises(MongoDBSessionError):
        factory.create_session_manager("s", maxPoolSize=3)


# ---------------------------------------------------------------- global factory


def test_get_global_factory_before_initialisation_raises_a_clear_error() -> None:
    with pytest.raises(MongoDBSessionError, match="initialize_global_factory"):
        get_global_factory()


def _request(session_id: str, reply: str = "hi") -> tuple[MongoDBSessionManager, Agent]:
    """What a request handler does: a manager from the global factory, an Agent, one turn."""
    manager = get_global_factory().create_session_manager(session_id)
    agent = Agent(model=ScriptedModel([text(reply)]), session_manager=manager, callback_handler=None)
    return manager, agent


def test_global_factory_serves_requests_without_new_connections_or_index_commands(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    listener = CommandNames()
    factory = initialize_global_factory(
        mongodb_uri, database_name=database_name, maxPoolSize=10, event_listeners=[listener]
    )
    assert get_global_factory() is factory
    assert set(listener.take()) == {"createIndexes"}  # indexes are ensured once, at start-up

    _, warm_agent = _request("warm-up")
    warm_agent("hello")
    listener.take()
    stats_before = MongoDBConnectionPool.get_pool_stats()

    init_commands: dict[str, list[list[str]]] = {"new": [], "existing": []}
    turn_commands: dict[str, list[list[str]]] = {"new": [], "existing": []}
    all_commands: list[str] = []
    for index in range(50):
        kind = "new" if index < 25 else "existing"
        session_id = f"user-{index % 25}"
        _, agent = _request(session_id, reply=f"reply {index}")
        init = listener.take()
        agent(f"message {index}")
        turn = listener.take()
        init_commands[kind].append(init)
        turn_commands[kind].append(turn)
        all_commands += init + turn
        if kind == "existing":
            assert len(agent.messages) == 4  # the earlier turn was restored

    stats_after = MongoDBConnectionPool.get_pool_stats()

    assert stats_after["connections_created"] == stats_before["connections_created"]
    assert stats_after["commands_started"] - stats_before["commands_started"] == len(all_commands)
    assert stats_after["commands_failed"] == stats_before["commands_failed"]
    assert stats_after["max_pool_size"] == 10
    assert "createIndexes" not in all_commands
    # New session: one read to look for it, then create it and add the agent.
    for commands in init_commands["new"]:
        assert commands == ["aggregate", "insert", "update"], commands
    # Existing session: the session, the agent state and its window of messages in one read.
    for commands in init_commands["existing"]:
        assert commands == ["aggregate"], commands
    # A turn writes the user message and the reply (with its metrics): two updates, no reads.
    for commands in turn_commands["new"] + turn_commands["existing"]:
        assert commands == ["update", "update"], commands
    assert mongo_client[database_name][COLLECTION].count_documents({}) == 26


def test_initialize_global_factory_shares_the_pool_client(mongodb_uri: str, database_name: str) -> None:
    before = shared_client_count()
    factory = initialize_global_factory(mongodb_uri, database_name=database_name, maxPoolSize=9)

    manager = factory.create_session_manager("s")

    assert MongoDBConnectionPool.get_client() is manager.mongodb_repository.client
    assert MongoDBConnectionPool.get_pool_stats()["max_pool_size"] == 9
    assert shared_client_count() == before + 1


def test_close_global_factory_then_get_raises(mongodb_uri: str, database_name: str) -> None:
    initialize_global_factory(mongodb_uri, database_name=database_name, maxPoolSize=4)
    get_global_factory().create_session_manager("s")

    close_global_factory()

    with pytest.raises(MongoDBSessionError, match="not initialised"):
        get_global_factory()
    assert MongoDBConnectionPool.get_pool_stats() == {"initialized": False}
    close_global_factory()  # safe when already closed

"""``MongoDBSessionManager`` against a real server, exercising the reference design's usage patterns.

Agents are real Strands ``Agent`` objects driven by the offline ``ScriptedModel``; what is asserted is
what MongoDB holds afterwards, what the caller gets back, and which commands reached the server.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.monitoring import CommandFailedEvent, CommandListener, CommandStartedEvent, CommandSucceededEvent
from strands import Agent, tool
from strands.session.repository_session_manager import RepositorySessionManager

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionRepository,
    SessionNotFoundError,
    SessionStorageError,
    SessionValidationError,
    close_global_factory,
    create_mongodb_session_manager,
)
from mongodb_session_manager.mongodb_connection_pool import shared_client_count
from tests.support.scripted_model import ScriptedModel, text, tool_call

COLLECTION = "sessions"  # the library's default collection name


# ---------------------------------------------------------------- helpers and fixtures


@dataclass
class Command:
    name: str
    body: dict[str, Any]


class CommandLog(CommandListener):
    """Records every command a client sends (name and body), in order."""

    def __init__(self) -> None:
        self.commands: list[Command] = []
        self._lock = threading.Lock()

    def started(self, event: CommandStartedEvent) -> None:
        with self._lock:
            self.commands.append(Command(event.command_name, dict(event.command)))

    def succeeded(self, event: CommandSucceededEvent) -> None:
        pass

    def failed(self, event: CommandFailedEvent) -> None:
        pass

    def clear(self) -> None:
        with self._lock:
            self.commands.clear()

    def names(self) -> list[str]:
        with self._lock:
            return [command.name for command in self.commands]

    def count(self, name: str) -> int:
        return self.names().count(name)


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
def managers() -> Iterator[list[MongoDBSessionManager]]:
    """Managers to close after the test (tests that build many never close them themselves)."""
    created: list[MongoDBSessionManager] = []
    yield created
    for manager in created:
        manager.close()


@pytest.fixture
def new_manager(
    mongodb_uri: str, database_name: str, managers: list[MongoDBSessionManager]
) -> Callable[..., MongoDBSessionManager]:
    """Build a manager on the test database from the connection string; closed after the test."""

    def build(session_id: str, **kwargs: Any) -> MongoDBSessionManager:
        manager = MongoDBSessionManager(
            session_id=session_id, connection_string=mongodb_uri, database_name=database_name, **kwargs
        )
        managers.append(manager)
        return manager

    return build


@pytest.fixture
def command_log() -> CommandLog:
    return CommandLog()


@pytest.fixture
def listened_client(mongodb_uri: str, command_log: CommandLog) -> Iterator[MongoClient[dict[str, Any]]]:
    """A client of our own whose commands are recorded in ``command_log``."""
    client: MongoClient[dict[str, Any]] = MongoClient(
        mongodb_uri, event_listeners=[command_log], serverSelectionTimeoutMS=10_000
    )
    try:
        yield client
    finally:
        client.close()


def stored(mongo_client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> dict[str, Any] | None:
    """The raw session document, read with a client that is not the one under test."""
    return mongo_client[database_name][COLLECTION].find_one({"_id": session_id})


def stored_metadata(mongo_client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> Any:
    document = stored(mongo_client, database_name, session_id)
    assert document is not None
    return document.get("metadata", {})


def stored_messages(
    mongo_client: MongoClient[dict[str, Any]], database_name: str, session_id: str, agent_id: str = "default"
) -> list[dict[str, Any]]:
    document = stored(mongo_client, database_name, session_id)
    assert document is not None
    messages: list[dict[str, Any]] = document["agents"][agent_id]["messages"]
    return messages


def contains_key(value: Any, key: str) -> bool:
    """Whether ``key`` appears as a dict key anywhere inside ``value``."""
    if isinstance(value, dict):
        return key in value or any(contains_key(item, key) for item in value.values())
    if isinstance(value, list | tuple):
        return any(contains_key(item, key) for item in value)
    return False


def tool_result_payloads(agent: Agent) -> list[tuple[str, dict[str, Any]]]:
    """``(status, parsed JSON text)`` of every toolResult the agent received, in order."""
    results: list[tuple[str, dict[str, Any]]] = []
    for message in agent.messages:
        for block in message["content"]:
            if "toolResult" in block:
                result = block["toolResult"]
                results.append((result["status"], json.loads(result["content"][0]["text"])))
    return results


@tool
def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: First number.
        b: Second number.
    """
    return a + b


# ---------------------------------------------------------------- basic pattern


def test_basic_pattern_conversation_persists_and_resumes_in_a_new_manager(
    mongodb_uri: str, database_name: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    manager = create_mongodb_session_manager(
        session_id="test", connection_string=mongodb_uri, database_name=database_name
    )
    try:
        agent = Agent(model=ScriptedModel([text("Hello Ada.")]), session_manager=manager, callback_handler=None)
        result = agent("Hi, I am Ada.")
        first_messages = [dict(message) for message in agent.messages]
    finally:
        manager.close()
    assert str(result).strip() == "Hello Ada."

    resumed_manager = create_mongodb_session_manager(
        session_id="test", connection_string=mongodb_uri, database_name=database_name
    )
    try:
        model = ScriptedModel([text("You are Ada.")])
        resumed = Agent(model=model, session_manager=resumed_manager, callback_handler=None)
        assert resumed.messages == first_messages
        resumed("Who am I?")
    finally:
        resumed_manager.close()

    # The model saw the earlier turn, and the store holds both turns in order.
    prompt_texts = [block["text"] for message in model.calls[0].messages for block in message["content"]]
    assert prompt_texts == ["Hi, I am Ada.", "Hello Ada.", "Who am I?"]
    messages = stored_messages(mongo_client, database_name, "test")
    assert [entry["message_id"] for entry in messages] == [0, 1, 2, 3]
    assert [(entry["message"]["role"], entry["message"]["content"][0]["text"]) for entry in messages] == [
        ("user", "Hi, I am Ada."),
        ("assistant", "Hello Ada."),
        ("user", "Who am I?"),
        ("assistant", "You are Ada."),
    ]


# ---------------------------------------------------------------- event-loop metrics


def test_metrics_are_stored_once_per_turn_on_the_final_assistant_message(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("metrics")
    cached_usage = {"inputTokens": 50, "outputTokens": 3, "cacheReadInputTokens": 40, "cacheWriteInputTokens": 7}
    model = ScriptedModel(
        [
            tool_call("add", {"a": 1, "b": 2}, tool_use_id="t1", latency_ms=7),
            text("It is 3.", usage=cached_usage, latency_ms=11),
            text("Plain answer.", latency_ms=5),
        ]
    )
    agent = Agent(model=model, tools=[add], session_manager=manager, callback_handler=None)

    agent("What is 1 + 2?")
    accumulated_after_first = dict(agent.event_loop_metrics.accumulated_usage)
    agent("Thanks.")
    accumulated_after_second = dict(agent.event_loop_metrics.accumulated_usage)
    invocations = agent.event_loop_metrics.agent_invocations

    metrics = manager.get_message_metrics()

    # user, assistant(toolUse), user(toolResult), assistant(text) | user, assistant(text)
    assert [entry["message_id"] for entry in metrics] == [3, 5]
    raw = stored_messages(mongo_client, database_name, "metrics")
    assert [(entry["message"]["role"], "event_loop_metrics" in entry) for entry in raw] == [
        ("user", False),
        ("assistant", False),
        ("user", False),
        ("assistant", True),
        ("user", False),
        ("assistant", True),
    ]
    assert raw[3]["event_loop_metrics"] == metrics[0]["event_loop_metrics"]

    first, second = (entry["event_loop_metrics"] for entry in metrics)
    assert len(invocations) == 2
    assert first["usage"] == dict(invocations[0].usage)
    assert second["usage"] == dict(invocations[1].usage)
    assert first["usage"]["cacheReadInputTokens"] == 40
    assert first["usage"]["cacheWriteInputTokens"] == 7
    assert first["usage"]["inputTokens"] == model.calls[0].usage["inputTokens"] + 50
    assert "cacheReadInputTokens" not in second["usage"]
    assert first["accumulated_usage"] == accumulated_after_first
    assert second["accumulated_usage"] == accumulated_after_second
    assert second["accumulated_usage"]["cacheReadInputTokens"] == 40
    assert (first["cycle_count"], second["cycle_count"]) == (2, 1)
    assert (first["total_cycles"], second["total_cycles"]) == (2, 3)
    assert (first["latency_ms"], second["latency_ms"]) == (18, 5)
    assert set(first["tool_usage"]) == {"add"}
    assert first["tool_usage"]["add"]["call_count"] == 1
    assert first["tool_usage"]["add"]["success_count"] == 1
    assert first["tool_usage"]["add"]["error_count"] == 0
    assert second["tool_usage"] == {}

    # Neither the live agent nor a restored one ever sees the metrics field.
    assert not contains_key(agent.messages, "event_loop_metrics")
    restored = Agent(
        model=ScriptedModel([]), tools=[add], session_manager=new_manager("metrics"), callback_handler=None
    )
    assert len(restored.messages) == 6
    assert not contains_key(restored.messages, "event_loop_metrics")
    assert restored.messages == agent.messages


def test_a_plain_turn_costs_two_updates_and_no_read_and_a_later_sync_costs_nothing(
    listened_client: MongoClient[dict[str, Any]],
    command_log: CommandLog,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = MongoDBSessionManager("counted", client=listened_client, database_name=database_name)
    agent = Agent(
        model=ScriptedModel([text("first reply"), text("second reply")]), session_manager=manager, callback_handler=None
    )
    # The first turn also writes the agent's state once (Strands' first sync_agent); no reads either.
    command_log.clear()
    agent("first")
    assert command_log.count("find") == 0, command_log.names()

    command_log.clear()
    agent("second")

    # One write per message; the metrics travel in the assistant message's own write.
    assert command_log.names() == ["update", "update"]
    user_write, assistant_write = (json.dumps(c.body, default=str) for c in command_log.commands)
    assert "second reply" not in user_write
    assert "second reply" in assistant_write
    assert "event_loop_metrics" not in user_write
    assert "event_loop_metrics" in assistant_write
    raw = stored_messages(mongo_client, database_name, "counted")
    assert ["event_loop_metrics" in entry for entry in raw] == [False, True, False, True]

    command_log.clear()
    manager.sync_agent(agent)
    assert command_log.names() == []


# ---------------------------------------------------------------- metadata


def test_update_metadata_is_partial_and_get_returns_the_metadata_dict(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("meta")
    assert manager.get_metadata() == {}

    manager.update_metadata({"priority": "high", "assigned_to": "agent-123"})
    manager.update_metadata({"priority": "low", "tags": ["a", "b"]})

    expected = {"priority": "low", "assigned_to": "agent-123", "tags": ["a", "b"]}
    assert manager.get_metadata() == expected
    assert stored_metadata(mongo_client, database_name, "meta") == expected


def test_delete_metadata_removes_only_the_named_fields(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("meta")
    manager.update_metadata({"keep": 1, "sensitive_field1": "x", "sensitive_field2": "y", "also_keep": {"n": 2}})

    manager.delete_metadata(["sensitive_field1", "sensitive_field2", "never_set"])

    assert manager.get_metadata() == {"keep": 1, "also_keep": {"n": 2}}
    assert stored_metadata(mongo_client, database_name, "meta") == {"keep": 1, "also_keep": {"n": 2}}


BAD_METADATA_KEYS = [
    pytest.param("$where", id="operator"),
    pytest.param("a.b", id="dot"),
    pytest.param("", id="empty"),
    pytest.param(5, id="int"),
    pytest.param("k\x00", id="nul"),
]
UNSTORABLE_VALUES = [
    pytest.param({1, 2}, id="set"),
    pytest.param(object(), id="object"),
    pytest.param(2**64, id="huge-int"),
]
BAD_FEEDBACK = [
    pytest.param({"rating": "UP", "comment": "x"}, id="rating-case"),
    pytest.param({"rating": True}, id="rating-bool"),
    pytest.param({"rating": 1}, id="rating-int"),
    pytest.param({"rating": "meh"}, id="rating-word"),
    pytest.param({"rating": "up", "comment": 5}, id="comment-int"),
    pytest.param({"rating": "up", "stars": 5}, id="unknown-key"),
    pytest.param({"rating": "up", "comment": "x" * 20_001}, id="comment-too-long"),
    pytest.param("up", id="not-a-dict"),
]


def _refusals() -> list[Any]:
    """(what is attempted, the field the error must name): each is refused with nothing stored."""
    cases = []
    for param in BAD_METADATA_KEYS:
        (key,) = param.values
        cases.append(
            pytest.param(
                lambda m, k=key: m.update_metadata({"fine": "value", k: "x"}),
                "metadata key",
                id=f"update-key-{param.id}",
            )
        )
        cases.append(
            pytest.param(lambda m, k=key: m.delete_metadata(["keep", k]), "metadata key", id=f"delete-key-{param.id}")
        )
    for param in UNSTORABLE_VALUES:
        (value,) = param.values
        cases.append(
            pytest.param(
                lambda m, v=value: m.update_metadata({"fine": "value", "bad": v}),
                "metadata['bad']",
                id=f"value-{param.id}",
            )
        )
    for param in BAD_FEEDBACK:
        (feedback,) = param.values
        cases.append(pytest.param(lambda m, f=feedback: m.add_feedback(f), None, id=f"feedback-{param.id}"))
    return cases


@pytest.mark.parametrize(("attempt", "field"), _refusals())
def test_bad_metadata_and_feedback_are_refused_and_nothing_is_stored(
    attempt: Callable[[MongoDBSessionManager], Any],
    field: str | None,
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("refused")
    manager.update_metadata({"keep": 1})
    manager.add_feedback({"rating": "up", "comment": "first"})
    before = stored(mongo_client, database_name, "refused")

    with pytest.raises(SessionValidationError) as error:
        attempt(manager)

    assert isinstance(error.value, ValueError)
    if field is not None:
        assert error.value.field == field
    assert stored(mongo_client, database_name, "refused") == before


def test_an_operator_looking_metadata_value_is_stored_as_data(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("meta")

    manager.update_metadata({"q": {"$gt": ""}, "path": {"a.b": 1}})

    assert manager.get_metadata() == {"q": {"$gt": ""}, "path": {"a.b": 1}}
    assert stored_metadata(mongo_client, database_name, "meta") == {"q": {"$gt": ""}, "path": {"a.b": 1}}


def test_metadata_of_a_deleted_session_is_not_found(new_manager: Callable[..., MongoDBSessionManager]) -> None:
    manager = new_manager("gone")
    manager.delete_session()

    with pytest.raises(SessionNotFoundError):
        manager.update_metadata({"a": 1})
    with pytest.raises(SessionNotFoundError):
        manager.get_metadata()


# ---------------------------------------------------------------- metadata tool


def _payload(result: dict[str, Any]) -> dict[str, Any]:
    assert set(result) == {"status", "content"}
    payload: dict[str, Any] = json.loads(result["content"][0]["text"])
    return payload


def test_metadata_tool_called_directly(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("tool")
    metadata_tool = manager.get_metadata_tool()
    assert metadata_tool.tool_name == "manage_metadata"

    assert _payload(metadata_tool(action="get")) == {"metadata": {}}

    result = metadata_tool(action="set", metadata={"key": "value", "lang": "en"})
    assert result["status"] == "success"
    assert _payload(result) == {"updated": ["key", "lang"]}
    assert _payload(metadata_tool(action="get")) == {"metadata": {"key": "value", "lang": "en"}}

    result = metadata_tool(action="delete", keys=["key", "absent"])
    assert result["status"] == "success"
    assert stored_metadata(mongo_client, database_name, "tool") == {"lang": "en"}


def test_metadata_tool_accepts_json_string_arguments(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("tool")
    metadata_tool = manager.get_metadata_tool()

    assert metadata_tool(action="set", metadata='{"a": 1, "b": {"c": [2]}}')["status"] == "success"
    assert stored_metadata(mongo_client, database_name, "tool") == {"a": 1, "b": {"c": [2]}}

    assert metadata_tool(action="delete", keys='["a"]')["status"] == "success"
    assert stored_metadata(mongo_client, database_name, "tool") == {"b": {"c": [2]}}


@pytest.mark.parametrize(
    "arguments",
    [
        pytest.param({"action": "drop"}, id="unknown-action"),
        pytest.param({"action": ""}, id="empty-action"),
        pytest.param({"action": "set"}, id="set-without-metadata"),
        pytest.param({"action": "set", "metadata": {}}, id="set-empty-metadata"),
        pytest.param({"action": "set", "metadata": {"$where": "1"}}, id="set-operator-key"),
        pytest.param({"action": "set", "metadata": {"a.b": 1}}, id="set-dotted-key"),
        pytest.param({"action": "set", "metadata": '{"$set": {"x": 1}}'}, id="set-operator-key-json"),
        pytest.param({"action": "set", "metadata": "{not json"}, id="set-invalid-json"),
        pytest.param({"action": "set", "metadata": "[1, 2]"}, id="set-json-list"),
        pytest.param({"action": "set", "metadata": {"s": {1, 2}}}, id="set-unstorable-value"),
        pytest.param({"action": "delete"}, id="delete-without-keys"),
        pytest.param({"action": "delete", "keys": []}, id="delete-empty-keys"),
        pytest.param({"action": "delete", "keys": ["keep", "$where"]}, id="delete-operator-key"),
        pytest.param({"action": "delete", "keys": '["keep", "a.b"]'}, id="delete-dotted-key-json"),
        pytest.param({"action": "delete", "keys": [5]}, id="delete-int-key"),
    ],
)
def test_metadata_tool_reports_bad_arguments_as_an_error_result_and_stores_nothing(
    arguments: dict[str, Any],
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("tool")
    manager.update_metadata({"keep": 1})
    metadata_tool = manager.get_metadata_tool()

    result = metadata_tool(**arguments)

    assert result["status"] == "error"
    assert _payload(result)["error"]
    assert stored_metadata(mongo_client, database_name, "tool") == {"keep": 1}


def test_a_real_agent_manages_metadata_through_the_tool(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("agent-tool")
    model = ScriptedModel(
        [
            tool_call("manage_metadata", {"action": "set", "metadata": {"lang": "en"}}, tool_use_id="t-set"),
            tool_call("manage_metadata", {"action": "get"}, tool_use_id="t-get"),
            tool_call("manage_metadata", {"action": "set", "metadata": {"$where": "sleep(1)"}}, tool_use_id="t-bad"),
            text("Saved your language."),
        ]
    )
    agent = Agent(model=model, tools=[manager.get_metadata_tool()], session_manager=manager, callback_handler=None)

    agent("Remember that I speak English.")

    assert stored_metadata(mongo_client, database_name, "agent-tool") == {"lang": "en"}
    results = tool_result_payloads(agent)
    assert results[0] == ("success", {"updated": ["lang"]})
    assert results[1] == ("success", {"metadata": {"lang": "en"}})
    status, payload = results[2]
    assert status == "error"
    assert "$where" in payload["error"]
    assert len(results) == 3
    # The model was offered the tool, and what the agent got is what was persisted.
    assert [spec["name"] for spec in model.calls[0].tool_specs or []] == ["manage_metadata"]
    stored_results = [
        block["toolResult"]["toolUseId"]
        for entry in stored_messages(mongo_client, database_name, "agent-tool")
        for block in entry["message"]["content"]
        if "toolResult" in block
    ]
    assert stored_results == ["t-set", "t-get", "t-bad"]


# ---------------------------------------------------------------- feedback


def test_add_feedback_appends_with_a_server_timestamp(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    manager = new_manager("fb")
    assert manager.get_feedbacks() == []

    entry = manager.add_feedback({"rating": "up", "comment": "Great response!"})
    manager.add_feedback({"rating": "down", "comment": "$incomplete"})
    manager.add_feedback({"rating": None})

    assert entry["rating"] == "up"
    assert entry["comment"] == "Great response!"
    assert isinstance(entry["created_at"], datetime)
    feedbacks = manager.get_feedbacks()
    assert [(f["rating"], f["comment"]) for f in feedbacks] == [
        ("up", "Great response!"),
        ("down", "$incomplete"),
        (None, ""),
    ]
    assert all(isinstance(f["created_at"], datetime) for f in feedbacks)
    assert all(f["created_at"].tzinfo is not None for f in feedbacks)  # aware, UTC
    assert feedbacks[0]["created_at"] == entry["created_at"]
    assert feedbacks[0]["created_at"] <= feedbacks[1]["created_at"] <= feedbacks[2]["created_at"]
    raw = stored(mongo_client, database_name, "fb")
    assert raw is not None
    assert [{**f, "created_at": f["created_at"].replace(tzinfo=UTC)} for f in raw["feedbacks"]] == feedbacks


# ---------------------------------------------------------------- hooks


class HookFailure(Exception):
    """Raised by hooks in tests; deliberately not a ValueError."""


def _call_original(original: Callable[..., Any], action: str, kwargs: dict[str, Any]) -> Any:
    """Call the wrapped operation the way the reference design's hooks do."""
    if action == "update":
        return original(kwargs["metadata"])
    if action == "delete":
        return original(kwargs["keys"])
    if action == "add":
        return original(kwargs["feedback"])
    return original()


def test_audit_hooks_see_every_operation_with_its_arguments(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    calls: list[tuple[str, str, dict[str, Any]]] = []

    def audit(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        calls.append((action, session_id, kwargs))
        return _call_original(original, action, kwargs)

    manager = new_manager("audited", metadata_hook=audit, feedback_hook=audit)

    manager.update_metadata({"priority": "high", "x": 1})
    manager.delete_metadata(["x"])
    metadata = manager.get_metadata()
    entry = manager.add_feedback({"rating": "up", "comment": "ok"})

    assert calls == [
        ("update", "audited", {"metadata": {"priority": "high", "x": 1}}),
        ("delete", "audited", {"keys": ["x"]}),
        ("get", "audited", {}),
        ("add", "audited", {"feedback": {"rating": "up", "comment": "ok"}}),
    ]
    assert metadata == {"priority": "high"}
    assert entry["rating"] == "up"
    assert stored_metadata(mongo_client, database_name, "audited") == {"priority": "high"}
    assert [f["comment"] for f in manager.get_feedbacks()] == ["ok"]


def test_a_validation_hook_that_raises_stops_the_write(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    def validate_metadata(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        if action == "update" and kwargs["metadata"].get("priority") not in (None, "low", "high"):
            raise ValueError("priority must be low or high")
        return _call_original(original, action, kwargs)

    def validate_feedback(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        if kwargs["feedback"].get("rating") == "down" and not kwargs["feedback"].get("comment"):
            raise ValueError("negative feedback needs a comment")
        return original(kwargs["feedback"])

    manager = new_manager("validated", metadata_hook=validate_metadata, feedback_hook=validate_feedback)
    manager.update_metadata({"priority": "low"})

    with pytest.raises(ValueError, match="priority must be"):
        manager.update_metadata({"priority": "urgent", "other": 1})
    with pytest.raises(ValueError, match="needs a comment"):
        manager.add_feedback({"rating": "down"})

    document = stored(mongo_client, database_name, "validated")
    assert document is not None
    assert document["metadata"] == {"priority": "low"}
    assert "feedbacks" not in document


def test_a_transformation_hook_changes_what_is_stored(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    def transform(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        if action == "update":
            normalised = {key.lower(): value for key, value in kwargs["metadata"].items()}
            return original({**normalised, "updated_by": "hook"})
        return _call_original(original, action, kwargs)

    def redact(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return original({**kwargs["feedback"], "comment": "[redacted]"})

    manager = new_manager("transformed", metadata_hook=transform, feedback_hook=redact)

    manager.update_metadata({"Language": "en", "PRIORITY": "high"})
    manager.add_feedback({"rating": "up", "comment": "my email is a@b.c"})

    assert stored_metadata(mongo_client, database_name, "transformed") == {
        "language": "en",
        "priority": "high",
        "updated_by": "hook",
    }
    assert [f["comment"] for f in manager.get_feedbacks()] == ["[redacted]"]


def test_a_caching_hook_serves_repeated_gets_without_a_read(
    listened_client: MongoClient[dict[str, Any]], command_log: CommandLog, database_name: str
) -> None:
    cache: dict[str, Any] = {}

    def caching(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        if action == "get":
            if session_id not in cache:
                cache[session_id] = original()
            return cache[session_id]
        cache.pop(session_id, None)
        return _call_original(original, action, kwargs)

    manager = MongoDBSessionManager(
        "cached", client=listened_client, database_name=database_name, metadata_hook=caching
    )
    manager.update_metadata({"a": 1})

    command_log.clear()
    assert manager.get_metadata() == {"a": 1}
    assert command_log.count("find") == 1
    assert manager.get_metadata() == {"a": 1}
    assert manager.get_metadata() == {"a": 1}
    assert command_log.count("find") == 1

    manager.update_metadata({"b": 2})  # invalidates
    assert manager.get_metadata() == {"a": 1, "b": 2}
    assert command_log.count("find") == 2


def test_a_hook_may_skip_the_original_operation(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    def skip(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return {"skipped": action}

    manager = new_manager("skipped", metadata_hook=skip, feedback_hook=skip)

    assert manager.update_metadata({"a": 1}) == {"skipped": "update"}
    assert manager.delete_metadata(["a"]) == {"skipped": "delete"}
    assert manager.get_metadata() == {"skipped": "get"}
    assert manager.add_feedback({"rating": "up"}) == {"skipped": "add"}

    document = stored(mongo_client, database_name, "skipped")
    assert document is not None
    assert "metadata" not in document
    assert "feedbacks" not in document


def test_camel_case_hook_aliases_work(
    mongodb_uri: str,
    database_name: str,
    managers: list[MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
) -> None:
    seen: list[str] = []

    def metadata_audit_hook(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        seen.append(f"metadata:{action}:{session_id}")
        return _call_original(original_func, action, kwargs)

    def feedback_audit_hook(original_func: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        seen.append(f"feedback:{action}:{session_id}")
        return original_func(kwargs["feedback"])

    session_manager = MongoDBSessionManager(
        session_id="audited-session",
        connection_string=mongodb_uri,
        database_name=database_name,
        metadataHook=metadata_audit_hook,
        feedbackHook=feedback_audit_hook,
    )
    managers.append(session_manager)

    session_manager.update_metadata({"priority": "high"})
    session_manager.add_feedback({"rating": "down", "comment": "Response was incomplete"})

    assert session_manager.metadata_hook is metadata_audit_hook
    assert session_manager.feedback_hook is feedback_audit_hook
    assert seen == ["metadata:update:audited-session", "feedback:add:audited-session"]
    document = stored(mongo_client, database_name, "audited-session")
    assert document is not None
    assert document["metadata"] == {"priority": "high"}
    assert len(document["feedbacks"]) == 1


def test_both_spellings_of_a_hook_at_once_are_refused(new_manager: Callable[..., MongoDBSessionManager]) -> None:
    def one(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return None

    def other(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        return None

    with pytest.raises(SessionValidationError):
        new_manager("twice", metadata_hook=one, metadataHook=other)


@pytest.mark.parametrize(
    "operation",
    [
        pytest.param(lambda m: m.update_metadata({"a": 1}), id="update"),
        pytest.param(lambda m: m.get_metadata(), id="get"),
        pytest.param(lambda m: m.delete_metadata(["a"]), id="delete"),
        pytest.param(lambda m: m.add_feedback({"rating": "up"}), id="feedback"),
    ],
)
def test_a_hook_exception_is_never_swallowed(
    operation: Callable[[MongoDBSessionManager], Any],
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    failure = HookFailure("hook broke")

    def after_original(original: Callable[..., Any], action: str, session_id: str, **kwargs: Any) -> Any:
        _call_original(original, action, kwargs)
        raise failure

    manager = new_manager("failing", metadata_hook=after_original, feedback_hook=after_original)

    with pytest.raises(HookFailure) as raised:
        operation(manager)

    assert raised.value is failure


# ---------------------------------------------------------------- list_sessions


def test_list_sessions_paginates_stably(
    mongo_client: MongoClient[dict[str, Any]], database_name: str, managers: list[MongoDBSessionManager]
) -> None:
    ids = [f"s{i:02d}" for i in range(25)]
    for index, session_id in enumerate(ids):
        manager = create_mongodb_session_manager(session_id, client=mongo_client, database_name=database_name)
        managers.append(manager)
        manager.update_metadata({"team": "red" if index % 3 == 0 else "blue", "index": index})
    lister = managers[0]

    page1 = lister.list_sessions(limit=10)
    # A session created between pages, sorting before the cursor, must not shift the next pages.
    managers.append(create_mongodb_session_manager("a-late", client=mongo_client, database_name=database_name))
    page2 = lister.list_sessions(limit=10, after=page1[-1]["session_id"])
    page3 = lister.list_sessions(limit=10, after=page2[-1]["session_id"])
    page4 = lister.list_sessions(limit=10, after=page3[-1]["session_id"])

    assert [len(page) for page in (page1, page2, page3, page4)] == [10, 10, 5, 0]
    listed = [summary["session_id"] for page in (page1, page2, page3) for summary in page]
    assert listed == ids
    summary = page1[3]
    assert summary["metadata"] == {"team": "red", "index": 3}
    assert summary["session_type"] == "AGENT"
    assert set(summary) >= {"session_id", "created_at", "updated_at", "last_activity", "metadata"}


def test_list_sessions_filters_on_metadata(
    mongo_client: MongoClient[dict[str, Any]], database_name: str, managers: list[MongoDBSessionManager]
) -> None:
    for index in range(12):
        manager = create_mongodb_session_manager(f"s{index:02d}", client=mongo_client, database_name=database_name)
        managers.append(manager)
        manager.update_metadata({"team": "red" if index % 3 == 0 else "blue", "tier": index % 2})
    lister = managers[0]

    red = lister.list_sessions({"team": "red"})
    red_even = lister.list_sessions({"team": "red", "tier": 0})
    red_first_two = lister.list_sessions({"team": "red"}, limit=2)

    assert [s["session_id"] for s in red] == ["s00", "s03", "s06", "s09"]
    assert [s["session_id"] for s in red_even] == ["s00", "s06"]
    assert [s["session_id"] for s in red_first_two] == ["s00", "s03"]
    assert lister.list_sessions({"team": "green"}) == []


def test_a_list_sessions_filter_value_is_data_not_an_operator(
    mongo_client: MongoClient[dict[str, Any]], database_name: str, managers: list[MongoDBSessionManager]
) -> None:
    for session_id in ("s1", "s2"):
        manager = create_mongodb_session_manager(session_id, client=mongo_client, database_name=database_name)
        managers.append(manager)
        manager.update_metadata({"team": "red"})
    managers[1].update_metadata({"query": {"$ne": None}})
    lister = managers[0]

    assert lister.list_sessions({"team": {"$ne": None}}) == []
    assert [s["session_id"] for s in lister.list_sessions({"query": {"$ne": None}})] == ["s2"]


@pytest.mark.parametrize("metadata_filter", [{"$where": "1"}, {"a.b": 1}, {"": 1}])
def test_list_sessions_refuses_bad_filter_keys(
    metadata_filter: dict[str, Any], new_manager: Callable[..., MongoDBSessionManager]
) -> None:
    manager = new_manager("lister")

    with pytest.raises(SessionValidationError):
        manager.list_sessions(metadata_filter)


# ---------------------------------------------------------------- delete_session


def test_delete_session_removes_the_whole_session_and_nothing_else(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    other = new_manager("other")
    other.update_metadata({"keep": True})
    manager = new_manager("doomed")
    agent = Agent(model=ScriptedModel([text("hello")]), session_manager=manager, callback_handler=None)
    agent("hi")
    manager.update_metadata({"a": 1})
    manager.add_feedback({"rating": "up"})

    manager.delete_session()

    assert stored(mongo_client, database_name, "doomed") is None
    assert stored_metadata(mongo_client, database_name, "other") == {"keep": True}
    with pytest.raises(SessionNotFoundError):
        manager.delete_session()
    fresh = Agent(model=ScriptedModel([]), session_manager=new_manager("doomed"), callback_handler=None)
    assert fresh.messages == []


# ---------------------------------------------------------------- connections and options


def test_managers_that_are_never_closed_share_one_client(
    mongodb_uri: str, database_name: str, managers: list[MongoDBSessionManager]
) -> None:
    clients_before = shared_client_count()
    threads_before = threading.active_count()

    for index in range(200):
        # Never closed here: the fixture closes them after the measurement.
        managers.append(
            MongoDBSessionManager(f"leak-{index}", connection_string=mongodb_uri, database_name=database_name)
        )

    assert shared_client_count() - clients_before <= 1
    # One MongoClient runs a handful of monitor threads; 200 clients would run hundreds.
    assert threading.active_count() - threads_before <= 8
    assert len({id(manager.mongodb_repository.client) for manager in managers}) == 1


def test_client_options_in_kwargs_reach_the_client_and_the_rest_reach_the_parent(
    new_manager: Callable[..., MongoDBSessionManager], monkeypatch: pytest.MonkeyPatch
) -> None:
    parent_kwargs: dict[str, Any] = {}
    parent_init = RepositorySessionManager.__init__

    def spy(self: RepositorySessionManager, *args: Any, **kwargs: Any) -> None:
        parent_kwargs.update(kwargs)
        parent_init(self, *args, **kwargs)

    monkeypatch.setattr(RepositorySessionManager, "__init__", spy)

    manager = new_manager("options", maxPoolSize=7, serverSelectionTimeoutMS=4321, future_sdk_option="x")

    options = manager.mongodb_repository.client.options
    assert options.pool_options.max_pool_size == 7
    assert options.server_selection_timeout == pytest.approx(4.321)
    assert parent_kwargs["future_sdk_option"] == "x"
    assert parent_kwargs["session_id"] == "options"
    assert not {"maxPoolSize", "serverSelectionTimeoutMS"} & set(parent_kwargs)


# ---------------------------------------------------------------- optional TTL


def _activity_index(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> dict[str, Any]:
    indexes = mongo_client[database_name][COLLECTION].index_information()
    matching: list[dict[str, Any]] = [spec for spec in indexes.values() if spec["key"] == [("updated_date", 1)]]
    assert len(matching) == 1, indexes
    return matching[0]


def test_session_ttl_creates_a_ttl_index_and_a_later_ttl_changes_it(
    new_manager: Callable[..., MongoDBSessionManager],
    mongodb_uri: str,
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    new_manager("ttl", session_ttl=3600)
    assert _activity_index(mongo_client, database_name)["expireAfterSeconds"] == 3600

    with MongoDBSessionRepository(mongodb_uri, database_name=database_name, session_ttl=60):
        pass

    assert _activity_index(mongo_client, database_name)["expireAfterSeconds"] == 60


def test_without_session_ttl_the_activity_index_does_not_expire(
    new_manager: Callable[..., MongoDBSessionManager],
    mongo_client: MongoClient[dict[str, Any]],
    database_name: str,
) -> None:
    new_manager("no-ttl")

    assert "expireAfterSeconds" not in _activity_index(mongo_client, database_name)


def test_a_manager_without_ttl_still_works_on_a_collection_that_has_one(
    mongo_client: MongoClient[dict[str, Any]], database_name: str, managers: list[MongoDBSessionManager]
) -> None:
    # One service configures expiry; another process (or a later deploy) builds managers with the
    # defaults on the same collection. Those must keep working. (Borrowed client: no lease involved.)
    managers.append(
        MongoDBSessionManager("with-ttl", client=mongo_client, database_name=database_name, session_ttl=3600)
    )

    manager = MongoDBSessionManager("default-options", client=mongo_client, database_name=database_name)
    managers.append(manager)
    manager.update_metadata({"ok": True})

    assert stored_metadata(mongo_client, database_name, "default-options") == {"ok": True}


# ---------------------------------------------------------------- construction failures


@pytest.mark.parametrize(
    ("database_name", "collection_name", "field"),
    [
        ("bad/db", "sessions", "database_name"),
        ("bad db", "sessions", "database_name"),
        ("ok_db", "bad$collection", "collection_name"),
    ],
)
def test_an_invalid_database_or_collection_name_is_a_validation_error(
    database_name: str, collection_name: str, field: str, mongo_client: MongoClient[dict[str, Any]]
) -> None:
    with pytest.raises(SessionValidationError) as error:
        MongoDBSessionManager("s", client=mongo_client, database_name=database_name, collection_name=collection_name)

    assert error.value.field == field


def test_a_manager_that_fails_to_start_releases_its_shared_client() -> None:
    # Nothing listens on port 1: index creation fails at construction, as when the database is down
    # while a service starts. The caller gets no object to close, so the library must let go.
    unreachable = f"mongodb://127.0.0.1:1/?serverSelectionTimeoutMS=200&appName=unreachable-{uuid.uuid4().hex[:8]}"
    before = shared_client_count()

    for _ in range(3):
        with pytest.raises(SessionStorageError):
            MongoDBSessionManager("s", connection_string=unreachable, database_name="any")

    assert shared_client_count() == before

"""Contract tests for ``MongoDBSessionRepository``, shared by every backend it runs against.

A backend's test module subclasses these classes and provides a ``repo`` fixture (a fresh
repository over an empty collection). ``SessionAgentContract`` needs only plain documents and runs on
mongomock too; ``MessageContract`` relies on server-side ``$slice`` projections and ``array_filters``,
which mongomock does not implement, so it runs only against real wire-protocol servers.
"""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

import pytest
from strands.types.exceptions import SessionException
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBSessionRepository,
    SessionConflictError,
    SessionNotFoundError,
    SessionValidationError,
)

TRICKY_AGENT_IDS = ["support.v2", "$billing", "a b", "ünï €", "%2E", "a.$b%", "x" * 300]


def _session(session_id: str = "s-1") -> Session:
    return Session(session_id=session_id, session_type=SessionType.AGENT)


def _agent(agent_id: str = "agent-1", **state: Any) -> SessionAgent:
    return SessionAgent(
        agent_id=agent_id,
        state=state or {"key": "value"},
        conversation_manager_state={"__name__": "SlidingWindowConversationManager", "removed_message_count": 0},
        _internal_state={"interrupt_state": {"interrupts": {}, "context": {}, "activated": False}},
    )


def _message(message_id: int, text: str | None = None, role: str = "user") -> SessionMessage:
    return SessionMessage(
        message={"role": role, "content": [{"text": text if text is not None else f"message {message_id}"}]},
        message_id=message_id,
    )


class _MockMultiAgent:
    def __init__(self, multi_agent_id: str, state: dict[str, Any]) -> None:
        self.id = multi_agent_id
        self.state = state

    def serialize_state(self) -> dict[str, Any]:
        return self.state


class SessionAgentContract:
    """Sessions, agents and multi-agent state."""

    def test_create_and_read_session_round_trips_exactly(self, repo: MongoDBSessionRepository) -> None:
        session = _session()
        assert repo.create_session(session) is session
        assert repo.read_session("s-1") == session

    def test_read_missing_session_is_none(self, repo: MongoDBSessionRepository) -> None:
        assert repo.read_session("missing") is None

    def test_create_existing_session_is_a_conflict(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        with pytest.raises(SessionConflictError, match="already exists"):
            repo.create_session(_session())

    def test_delete_session(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        repo.create_agent("s-1", _agent())
        repo.delete_session("s-1")
        assert repo.read_session("s-1") is None
        assert repo.read_agent("s-1", "agent-1") is None
        with pytest.raises(SessionNotFoundError, match="does not exist"):
            repo.delete_session("s-1")

    def test_agent_round_trips_exactly(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        agent = _agent(nested={"list": [1, 2.5, None, True, "x"], "bytes": b"\x00\xff"})
        repo.create_agent("s-1", agent)
        assert repo.read_agent("s-1", "agent-1") == agent

    def test_read_missing_agent_is_none(self, repo: MongoDBSessionRepository) -> None:
        assert repo.read_agent("missing-session", "agent-1") is None
        repo.create_session(_session())
        assert repo.read_agent("s-1", "nobody") is None

    def test_create_agent_in_missing_session_fails(self, repo: MongoDBSessionRepository) -> None:
        with pytest.raises(SessionNotFoundError):
            repo.create_agent("missing", _agent())

    def test_update_agent_keeps_created_at_and_moves_state(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        original = _agent()
        repo.create_agent("s-1", original)
        changed = dataclasses.replace(original, state={"updated": "value"}, created_at="2000-01-01T00:00:00+00:00")
        changed.updated_at = "2030-01-01T00:00:00.123456+00:00"
        repo.update_agent("s-1", changed)
        stored = repo.read_agent("s-1", "agent-1")
        assert stored is not None
        assert stored.state == {"updated": "value"}
        assert stored.created_at == original.created_at
        assert stored.updated_at == "2030-01-01T00:00:00.123456+00:00"

    def test_update_missing_agent_fails(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        with pytest.raises(SessionException):
            repo.update_agent("s-1", _agent())

    @pytest.mark.parametrize("agent_id", TRICKY_AGENT_IDS)
    def test_any_strands_agent_id_is_stored_as_one_field(self, repo: MongoDBSessionRepository, agent_id: str) -> None:
        repo.create_session(_session())
        agent = _agent(agent_id)
        repo.create_agent("s-1", agent)
        repo.create_agent("s-1", _agent("plain"))
        assert repo.read_agent("s-1", agent_id) == agent
        assert repo.read_agent("s-1", "plain") is not None
        stored = repo.collection.find_one({"_id": "s-1"})
        assert stored is not None
        assert len(stored["agents"]) == 2
        assert [a["agent_id"] for a in stored["agents"].values()] == [agent_id, "plain"]

    def test_state_with_operator_and_dotted_keys_is_data(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        agent = _agent(**{"$where": "sleep(1000)", "a.b": {"$gt": ""}})
        repo.create_agent("s-1", agent)
        assert repo.read_agent("s-1", "agent-1") == agent

    def test_multi_agent_create_read_update(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        graph = _MockMultiAgent("graph.v1", {"type": "graph", "id": "graph.v1", "status": "executing"})
        repo.create_multi_agent("s-1", graph)
        assert repo.read_multi_agent("s-1", "graph.v1") == graph.state
        graph.state = {"type": "graph", "id": "graph.v1", "status": "completed", "node_results": {"a.b": {}}}
        repo.update_multi_agent("s-1", graph)
        assert repo.read_multi_agent("s-1", "graph.v1") == graph.state
        assert repo.read_multi_agent("s-1", "other") is None
        assert repo.read_multi_agent("missing", "graph.v1") is None

    def test_update_missing_multi_agent_fails(self, repo: MongoDBSessionRepository) -> None:
        repo.create_session(_session())
        with pytest.raises(SessionNotFoundError):
            repo.update_multi_agent("s-1", _MockMultiAgent("nope", {}))

    @pytest.mark.parametrize(
        ("session_id", "reason"),
        [
            ("", "empty"),
            (None, "string"),
            (42, "string"),
            ("a/b", "path separators"),
            ("a\\b", "path separators"),
            ("a\x00b", "NUL"),
            ("x" * 5000, "at most"),
        ],
    )
    def test_bad_session_ids_are_refused_before_any_write(
        self, repo: MongoDBSessionRepository, session_id: Any, reason: str
    ) -> None:
        with pytest.raises(SessionValidationError, match=reason) as raised:
            repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
        assert isinstance(raised.value, ValueError)
        assert raised.value.field == "session_id"
        assert repo.collection.count_documents({}) == 0

    @pytest.mark.parametrize("agent_id", ["", "a/b", "a\x00b", 7])
    def test_bad_agent_ids_are_refused_before_any_write(self, repo: MongoDBSessionRepository, agent_id: Any) -> None:
        repo.create_session(_session())
        with pytest.raises(SessionValidationError) as raised:
            repo.create_agent("s-1", _agent(agent_id))
        assert raised.value.field == "agent_id"
        stored = repo.collection.find_one({"_id": "s-1"})
        assert stored is not None and stored["agents"] == {}

    @pytest.mark.parametrize("state", [{"k": {1, 2}}, {"k": object()}, {1: "int key"}, {"k\x00": 1}, {"k": 2**64}])
    def test_unencodable_state_is_a_value_error(self, repo: MongoDBSessionRepository, state: dict[Any, Any]) -> None:
        repo.create_session(_session())
        with pytest.raises(SessionValidationError, match="cannot be stored"):
            repo.create_agent("s-1", SessionAgent(agent_id="agent-1", state=state, conversation_manager_state={}))
        assert repo.read_agent("s-1", "agent-1") is None

    def test_session_document_keeps_dates_for_indexes(self, repo: MongoDBSessionRepository) -> None:
        session = _session()
        repo.create_session(session)
        stored = repo.collection.find_one({"_id": "s-1"})
        assert stored is not None
        assert stored["created_at"] == session.created_at  # exact string
        created = datetime.fromisoformat(session.created_at)
        # BSON dates keep milliseconds and come back naive (UTC).
        assert stored["created_date"] == created.replace(microsecond=created.microsecond // 1000 * 1000, tzinfo=None)
        assert isinstance(stored["updated_date"], datetime)

    def test_repr_does_not_show_connection_details(self, repo: MongoDBSessionRepository) -> None:
        assert "mongodb://" not in repr(repo)


class MessageContract:
    """Messages: ordering, pagination, redaction and the append-only concurrency rule."""

    @pytest.fixture
    def agent_repo(self, repo: MongoDBSessionRepository) -> MongoDBSessionRepository:
        repo.create_session(_session())
        repo.create_agent("s-1", _agent())
        return repo

    def test_messages_round_trip_exactly(self, agent_repo: MongoDBSessionRepository) -> None:
        messages = [_message(i) for i in range(5)]
        messages[2].message["content"].append({"image": {"format": "png", "source": {"bytes": b"\x89PNG\x00\x01"}}})
        for message in messages:
            agent_repo.create_message("s-1", "agent-1", message)
        assert agent_repo.list_messages("s-1", "agent-1") == messages
        assert agent_repo.read_message("s-1", "agent-1", 2) == messages[2]

    def test_bytes_are_stored_as_binary_not_base64(self, agent_repo: MongoDBSessionRepository) -> None:
        payload = bytes(range(256)) * 4
        message = SessionMessage(
            message={
                "role": "user",
                "content": [{"document": {"format": "pdf", "name": "d", "source": {"bytes": payload}}}],
            },
            message_id=0,
        )
        agent_repo.create_message("s-1", "agent-1", message)
        raw = agent_repo.collection.find_one({"_id": "s-1"})
        assert raw is not None
        stored_bytes = raw["agents"]["agent-1"]["messages"][0]["message"]["content"][0]["document"]["source"]["bytes"]
        assert stored_bytes == payload
        assert isinstance(stored_bytes, bytes)

    @pytest.mark.parametrize(
        ("limit", "offset", "expected"),
        [
            (None, 0, list(range(10))),
            (3, 0, [0, 1, 2]),
            (None, 5, [5, 6, 7, 8, 9]),
            (3, 4, [4, 5, 6]),
            (5, 8, [8, 9]),
            (None, 10, []),
            (None, 50, []),
            (0, 0, []),
        ],
    )
    def test_list_messages_pagination(
        self, agent_repo: MongoDBSessionRepository, limit: int | None, offset: int, expected: list[int]
    ) -> None:
        for i in range(10):
            agent_repo.create_message("s-1", "agent-1", _message(i))
        result = agent_repo.list_messages("s-1", "agent-1", limit=limit, offset=offset)
        assert [m.message_id for m in result] == expected
        assert [m.message["content"][0]["text"] for m in result] == [f"message {i}" for i in expected]

    def test_read_missing_message_is_none(self, agent_repo: MongoDBSessionRepository) -> None:
        assert agent_repo.read_message("s-1", "agent-1", 0) is None
        agent_repo.create_message("s-1", "agent-1", _message(0))
        assert agent_repo.read_message("s-1", "agent-1", 999) is None
        assert agent_repo.read_message("s-1", "nobody", 0) is None
        assert agent_repo.read_message("missing", "agent-1", 0) is None

    def test_list_messages_of_missing_agent_fails(self, agent_repo: MongoDBSessionRepository) -> None:
        with pytest.raises(SessionNotFoundError):
            agent_repo.list_messages("s-1", "nobody")

    def test_append_requires_exactly_n_stored_messages(self, agent_repo: MongoDBSessionRepository) -> None:
        agent_repo.create_message("s-1", "agent-1", _message(0))
        agent_repo.create_message("s-1", "agent-1", _message(1))
        with pytest.raises(SessionConflictError, match="has 2 stored messages"):
            agent_repo.create_message("s-1", "agent-1", _message(1, "duplicate"))
        with pytest.raises(SessionConflictError):
            agent_repo.create_message("s-1", "agent-1", _message(5, "hole"))
        assert [m.message["content"][0]["text"] for m in agent_repo.list_messages("s-1", "agent-1")] == [
            "message 0",
            "message 1",
        ]

    def test_append_to_missing_agent_or_session_is_not_found(self, agent_repo: MongoDBSessionRepository) -> None:
        with pytest.raises(SessionNotFoundError, match="agent does not exist"):
            agent_repo.create_message("s-1", "nobody", _message(0))
        with pytest.raises(SessionNotFoundError, match="session does not exist"):
            agent_repo.create_message("missing", "agent-1", _message(0))

    def test_update_message_redacts_and_keeps_created_at(self, agent_repo: MongoDBSessionRepository) -> None:
        for i in range(3):
            agent_repo.create_message("s-1", "agent-1", _message(i))
        original = agent_repo.read_message("s-1", "agent-1", 1)
        assert original is not None
        original.redact_message = {"role": "user", "content": [{"text": "[REDACTED]"}]}
        agent_repo.update_message("s-1", "agent-1", original)
        stored = agent_repo.read_message("s-1", "agent-1", 1)
        assert stored == original
        assert stored is not None and stored.to_message()["content"][0]["text"] == "[REDACTED]"
        assert stored.updated_at >= stored.created_at
        assert [m.redact_message is None for m in agent_repo.list_messages("s-1", "agent-1")] == [True, False, True]

    def test_update_missing_message_fails(self, agent_repo: MongoDBSessionRepository) -> None:
        with pytest.raises(SessionNotFoundError):
            agent_repo.update_message("s-1", "agent-1", _message(0))

    @pytest.mark.parametrize("message_id", [-1, "0", None, 1.0, True])
    def test_bad_message_ids_are_refused(self, agent_repo: MongoDBSessionRepository, message_id: Any) -> None:
        with pytest.raises(SessionValidationError, match="message id must"):
            agent_repo.create_message("s-1", "agent-1", SessionMessage({"role": "user", "content": []}, message_id))
        with pytest.raises(ValueError, match="message_id"):
            agent_repo.read_message("s-1", "agent-1", message_id)

    def test_extra_stored_fields_are_not_handed_back(self, agent_repo: MongoDBSessionRepository) -> None:
        message = _message(0, role="assistant")
        agent_repo.create_message("s-1", "agent-1", message)
        agent_repo.collection.update_one(
            {"_id": "s-1"}, {"$set": {"agents.agent-1.messages.0.event_loop_metrics": {"tokens": 3}}}
        )
        assert agent_repo.read_message("s-1", "agent-1", 0) == message
        assert agent_repo.list_messages("s-1", "agent-1") == [message]

    def test_corrupt_history_is_an_error_not_a_silent_skip(self, agent_repo: MongoDBSessionRepository) -> None:
        for i in range(3):
            agent_repo.create_message("s-1", "agent-1", _message(i))
        agent_repo.collection.update_one({"_id": "s-1"}, {"$set": {"agents.agent-1.messages.1": {"junk": True}}})
        with pytest.raises(SessionException, match="malformed"):
            agent_repo.list_messages("s-1", "agent-1")

    def test_tool_input_with_operator_keys_round_trips(self, agent_repo: MongoDBSessionRepository) -> None:
        message = SessionMessage(
            message={
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "q", "input": {"$gt": 1, "a.b": {"$set": 2}}}}],
            },
            message_id=0,
        )
        agent_repo.create_message("s-1", "agent-1", message)
        assert agent_repo.read_message("s-1", "agent-1", 0) == message

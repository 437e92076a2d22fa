"""Every JSON value comes back exactly, from every place the library stores one (real server).

Hypothesis generates JSON values (``tests/support/json_values.py``) whose keys start with ``$``,
contain dots, are empty or unicode, and whose objects are often shaped like a BSON DBRef
(``{"$ref": str, "$id": any}``, as JSON Schema documents are). pymongo decodes a stored
subdocument of that shape as ``bson.DBRef``, not as the dict that was stored; each property below
requires the exact value back: same types, same contents, same key order (``assert_exact``:
``bson.Int64`` counts as ``int``, nothing else is taken for another type).

Places: message content (append, read one, list, redaction), agent ``state``,
``conversation_manager_state`` and ``_internal_state`` (single read and the restore snapshot),
multi-agent state, metadata values (and listing by them), feedback comments, and extra message
fields. Then a real Strands ``Agent`` whose state and tool input hold a JSON Schema document is
restored by a new manager.

Each property runs on one repository (the overflow one on its own, with the smallest threshold),
with a new session per example.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from strands import Agent, tool
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType
from strands.types.tools import ToolContext

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from tests.support.json_values import (
    DBREF_SHAPED_SCHEMA,
    JSON_OBJECTS,
    JSON_VALUES,
    METADATA_KEYS,
    assert_exact,
)
from tests.support.scripted_model import ScriptedModel, text, tool_call

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# The smallest DBRef-shaped value, and a JSON Schema document: every property tries these first.
SIMPLE_DBREF: dict[str, Any] = {"$ref": "#/definitions/x", "$id": "x"}
AGENT_FIELDS = ("state", "conversation_manager_state", "_internal_state")


@pytest.fixture
def repo(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repository:
        yield repository


def _new_session(repo: MongoDBSessionRepository, agent: bool = False) -> str:
    session_id = f"prop-{uuid.uuid4().hex}"
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    if agent:
        repo.create_agent(session_id, SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
    return session_id


def _tool_use(value: Any) -> dict[str, Any]:
    return {"role": "assistant", "content": [{"toolUse": {"toolUseId": "t1", "name": "x", "input": value}}]}


def _tool_result(value: Any) -> dict[str, Any]:
    return {
        "role": "user",
        "content": [{"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"json": value}]}}],
    }


def _assert_message(actual: SessionMessage | None, expected: SessionMessage, where: str) -> None:
    assert actual is not None, f"{where}: message {expected.message_id} not found"
    assert actual.message_id == expected.message_id, where
    assert_exact(actual.message, expected.message, f"{where}: message")
    assert_exact(actual.redact_message, expected.redact_message, f"{where}: redact_message")
    assert (actual.created_at, actual.updated_at) == (expected.created_at, expected.updated_at), where


def _assert_agent(actual: SessionAgent | None, expected: SessionAgent, where: str) -> None:
    assert actual is not None, f"{where}: agent not found"
    for name in AGENT_FIELDS:
        assert_exact(getattr(actual, name), getattr(expected, name), f"{where}: {name}")


class _MultiAgent:
    """Stands in for a Graph or Swarm: the repository needs only ``id`` and ``serialize_state()``."""

    def __init__(self, multi_agent_id: str, state: dict[str, Any]) -> None:
        self.id = multi_agent_id
        self.state = state

    def serialize_state(self) -> dict[str, Any]:
        return self.state


# ---------------------------------------------------------------------------------------------- messages


@PROPERTY
@given(value=JSON_VALUES)
@example(value=SIMPLE_DBREF)
@example(value=DBREF_SHAPED_SCHEMA)
def test_message_content_round_trips_exactly(repo: MongoDBSessionRepository, value: Any) -> None:
    session_id = _new_session(repo, agent=True)
    sent = [
        SessionMessage(message=_tool_use(value), message_id=0),
        SessionMessage(message=_tool_result(value), message_id=1),
    ]
    for message in sent:
        repo.create_message(session_id, "a", message)

    listed = repo.list_messages(session_id, "a")
    assert len(listed) == len(sent)
    for message, back in zip(sent, listed, strict=True):
        _assert_message(back, message, "list_messages")
        _assert_message(repo.read_message(session_id, "a", message.message_id), message, "read_message")
    _assert_message(repo.list_messages(session_id, "a", limit=1, offset=1)[0], sent[1], "list_messages page")


@PROPERTY
@given(value=JSON_VALUES, redacted=JSON_VALUES)
@example(value=SIMPLE_DBREF, redacted=DBREF_SHAPED_SCHEMA)
def test_a_redacted_message_round_trips_exactly(repo: MongoDBSessionRepository, value: Any, redacted: Any) -> None:
    session_id = _new_session(repo, agent=True)
    original = SessionMessage(message={"role": "user", "content": [{"text": "hi"}]}, message_id=0)
    repo.create_message(session_id, "a", original)
    # update_message keeps the stored created_at and sets updated_at on the message passed in.
    updated = SessionMessage(
        message=_tool_use(value), message_id=0, redact_message=_tool_use(redacted), created_at=original.created_at
    )
    repo.update_message(session_id, "a", updated)

    _assert_message(repo.read_message(session_id, "a", 0), updated, "read_message after update_message")
    _assert_message(repo.list_messages(session_id, "a")[0], updated, "list_messages after update_message")


@settings(PROPERTY, max_examples=8)
@given(values=st.lists(JSON_VALUES, min_size=1, max_size=3), redacted=JSON_VALUES)
@example(values=[DBREF_SHAPED_SCHEMA], redacted=SIMPLE_DBREF)
def test_messages_moved_to_overflow_storage_round_trip_exactly(
    mongo_client: MongoClient[dict[str, Any]], database_name: str, values: list[Any], redacted: Any
) -> None:
    # The smallest threshold: 14 messages of ~2.5 KB move the oldest into bucket documents.
    with MongoDBSessionRepository(
        client=mongo_client, database_name=database_name, overflow_threshold_bytes=16 * 1024
    ) as repo:
        session_id = _new_session(repo, agent=True)
        sent = []
        for message_id in range(14):
            message = _tool_use({"value": values[message_id % len(values)], "padding": "p" * 2500})
            sent.append(SessionMessage(message=message, message_id=message_id))
            repo.create_message(session_id, "a", sent[-1])
        assert mongo_client[database_name][repo.overflow_collection_name].count_documents({"session_id": session_id})

        for message, back in zip(sent, repo.list_messages(session_id, "a"), strict=True):
            _assert_message(back, message, "list_messages with moved messages")
        _assert_message(repo.read_message(session_id, "a", 0), sent[0], "read_message of a moved message")

        sent[0] = SessionMessage(
            message=_tool_use(redacted),
            message_id=0,
            redact_message=_tool_use(redacted),
            created_at=sent[0].created_at,  # kept by update_message
        )
        repo.update_message(session_id, "a", sent[0])
        _assert_message(repo.read_message(session_id, "a", 0), sent[0], "read_message of a redacted moved message")


# ---------------------------------------------------------------------------------------------- agents


@PROPERTY
@given(
    first=st.tuples(JSON_OBJECTS, JSON_OBJECTS, JSON_OBJECTS), then=st.tuples(JSON_OBJECTS, JSON_OBJECTS, JSON_OBJECTS)
)
@example(first=(SIMPLE_DBREF, {}, {}), then=({}, {}, {}))
@example(first=({}, {}, {}), then=({"schema": DBREF_SHAPED_SCHEMA}, SIMPLE_DBREF, {"x": [SIMPLE_DBREF]}))
def test_agent_state_round_trips_exactly(
    repo: MongoDBSessionRepository,
    first: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
    then: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
) -> None:
    session_id = _new_session(repo)
    for step, (state, manager_state, internal_state) in enumerate((first, then)):
        agent = SessionAgent(
            agent_id="a", state=state, conversation_manager_state=manager_state, _internal_state=internal_state
        )
        if step == 0:
            repo.create_agent(session_id, agent)
        else:
            repo.update_agent(session_id, agent)

        _assert_agent(repo.read_agent(session_id, "a"), agent, f"read_agent after step {step}")
        snapshot = repo.read_session_snapshot(session_id)
        assert snapshot is not None
        _assert_agent(snapshot[1].get("a"), agent, f"read_session_snapshot after step {step}")


@PROPERTY
@given(first=JSON_OBJECTS, then=JSON_OBJECTS)
@example(first=SIMPLE_DBREF, then={"graph": {"nodes": [DBREF_SHAPED_SCHEMA]}})
def test_multi_agent_state_round_trips_exactly(
    repo: MongoDBSessionRepository, first: dict[str, Any], then: dict[str, Any]
) -> None:
    session_id = _new_session(repo)
    repo.create_multi_agent(session_id, _MultiAgent("team", first))  # type: ignore[arg-type]
    assert_exact(repo.read_multi_agent(session_id, "team"), first, "read_multi_agent after create")

    repo.update_multi_agent(session_id, _MultiAgent("team", then))  # type: ignore[arg-type]
    assert_exact(repo.read_multi_agent(session_id, "team"), then, "read_multi_agent after update")


# ---------------------------------------------------------------------------------------------- metadata


@PROPERTY
@given(metadata=st.dictionaries(METADATA_KEYS.filter(lambda key: key != "run"), JSON_VALUES, min_size=1, max_size=3))
@example(metadata={"schema": SIMPLE_DBREF})
@example(metadata={"schema": DBREF_SHAPED_SCHEMA, "refs": [SIMPLE_DBREF, {"$id": 1, "$ref": "y", "$db": "z"}]})
def test_metadata_values_round_trip_exactly_and_find_their_session(
    repo: MongoDBSessionRepository, metadata: dict[str, Any]
) -> None:
    session_id = _new_session(repo)
    stored = {"run": session_id, **metadata}
    repo.update_metadata(session_id, stored)

    assert_exact(repo.get_metadata(session_id), stored, "get_metadata")
    for key, value in metadata.items():
        # "run" keeps other examples' sessions (which may hold an equal value) out of the answer.
        listed = repo.list_sessions(metadata_filter={key: value, "run": session_id})
        assert [entry["session_id"] for entry in listed] == [session_id], f"list_sessions by {key!r}"
        assert_exact(listed[0]["metadata"], stored, "list_sessions metadata")


# ---------------------------------------------------------------------------------------------- feedback

COMMENTS = st.one_of(
    st.text(st.characters(codec="utf-8"), max_size=40),
    st.sampled_from(["$ref", "$$NOW", "$comment", '{"$ref": "#/x", "$id": 1}', "a.b", "ünï € 🙂"]),
    JSON_VALUES.map(lambda value: repr(value)),
)


@PROPERTY
@given(feedbacks=st.lists(st.tuples(st.sampled_from(["up", "down", None]), COMMENTS), min_size=1, max_size=3))
@example(feedbacks=[("up", '{"$ref": "#/definitions/x", "$id": "x"}'), (None, "$$NOW")])
def test_feedback_round_trips_exactly(repo: MongoDBSessionRepository, feedbacks: list[tuple[str | None, str]]) -> None:
    session_id = _new_session(repo)
    expected = [{"rating": rating, "comment": comment} for rating, comment in feedbacks]
    for feedback in expected:
        returned = repo.add_feedback(session_id, feedback)
        assert_exact({"rating": returned["rating"], "comment": returned["comment"]}, feedback, "add_feedback")

    stored = [{"rating": entry["rating"], "comment": entry["comment"]} for entry in repo.get_feedbacks(session_id)]
    assert_exact(stored, expected, "get_feedbacks")


# ---------------------------------------------------------------------------------------------- extra message fields


@PROPERTY
@given(value=JSON_VALUES)
@example(value=SIMPLE_DBREF)
@example(value={"cycles": [DBREF_SHAPED_SCHEMA]})
def test_extra_message_fields_round_trip_exactly(repo: MongoDBSessionRepository, value: Any) -> None:
    session_id = _new_session(repo, agent=True)
    message = SessionMessage(message=_tool_use(value), message_id=0)
    repo.create_message(session_id, "a", message)
    repo.set_message_fields(session_id, "a", 0, {"event_loop_metrics": value})

    assert_exact(
        repo.get_message_metrics(session_id, "a"),
        [{"message_id": 0, "event_loop_metrics": value}],
        "get_message_metrics",
    )
    # The extra field stays beside the message: Strands gets back exactly the message it stored.
    _assert_message(repo.read_message(session_id, "a", 0), message, "read_message after set_message_fields")


# ---------------------------------------------------------------------------------------------- a real agent


@tool(context=True)
def check_schema(document: dict[str, Any], tool_context: ToolContext) -> dict[str, Any]:
    """Check a JSON Schema document and remember it.

    Args:
        document: The JSON Schema document.
    """
    tool_context.agent.state.set("last_checked", document)
    return {"status": "success", "content": [{"json": {"valid": True, "document": document}}]}


def _agent(manager: MongoDBSessionManager, *responses: Any) -> Agent:
    return Agent(
        model=ScriptedModel(responses),
        agent_id="a",
        tools=[check_schema],
        session_manager=manager,
        callback_handler=None,
    )


def test_an_agent_whose_state_and_tool_input_hold_a_json_schema_is_restored_exactly(
    mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    session_id = f"schema-{uuid.uuid4().hex}"
    with MongoDBSessionManager(session_id, client=mongo_client, database_name=database_name) as manager:
        agent = _agent(
            manager,
            tool_call("check_schema", {"document": DBREF_SHAPED_SCHEMA}, tool_use_id="t1"),
            text("The schema is valid."),
        )
        agent.state.set("schema", DBREF_SHAPED_SCHEMA)
        agent.state.set("ref", SIMPLE_DBREF)
        agent("Check my order schema.")
        assert agent.state.get() == {
            "schema": DBREF_SHAPED_SCHEMA,
            "ref": SIMPLE_DBREF,
            "last_checked": DBREF_SHAPED_SCHEMA,
        }
        assert agent.messages[1]["content"][0]["toolUse"]["input"] == {"document": DBREF_SHAPED_SCHEMA}

    # A new manager and a new agent restore from storage alone (today: Strands refuses the state).
    with MongoDBSessionManager(session_id, client=mongo_client, database_name=database_name) as manager:
        restored = _agent(manager, text("Still valid."))
        assert_exact(restored.messages, agent.messages, "restored messages")
        assert_exact(restored.state.get(), agent.state.get(), "restored state")

        # The restored agent goes on, and what it writes back is restored exactly once more.
        restored("And now?")
        expected_messages, expected_state = restored.messages, restored.state.get()
    assert len(expected_messages) == len(agent.messages) + 2

    with MongoDBSessionManager(session_id, client=mongo_client, database_name=database_name) as manager:
        again = _agent(manager)
        assert_exact(again.messages, expected_messages, "messages restored a second time")
        assert_exact(again.state.get(), expected_state, "state restored a second time")

"""Sessions for the command line's end-to-end tests, written as an application writes them: real
``strands.Agent``s with ``MongoDBSessionManager`` (a scripted model, no network), plus what the
manager and repository add beside the conversation.

:func:`chat_session` stores a session holding every kind of thing the library keeps: two agents,
tool calls and results, a small image and one large enough to be offloaded, per-turn metrics, a
redacted message, a field set beside a message, agent state with ``$ref``/``$id``, dots, unicode
and ``Int64`` values (Strands keeps agent state JSON, so no bytes there), metadata of every BSON type
an application may use (bytes and datetimes included), feedback, and a Graph's state. :func:`restore` rebuilds an agent from a store, as a new process would.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from typing import Any

from bson.int64 import Int64
from strands import Agent, tool
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.session.session_manager import SessionManager

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from tests.support.scripted_model import EchoModel, ScriptedModel, text, tool_call

__all__ = ["BIG_IMAGE_BYTES", "GRAPH_ID", "METADATA", "chat_session", "restore", "restored"]

#: Larger than the library's default ``binary_offload_bytes`` (256 KiB): stored in chunk documents.
BIG_IMAGE_BYTES = 300_000
GRAPH_ID = "graph-1"
METADATA: dict[str, Any] = {
    "priority": "high",
    "count": 3,
    "big": Int64(7),
    "ratio": 0.25,
    "when": datetime(2026, 11, 27, 10, 0, 0, 123000, tzinfo=UTC),
    "raw": b"\x00\x01\xff",
    "schema": {"$ref": "#/definitions/x", "$id": "urn:x", "a.b": ["ünï", None, True]},
    "query": {"$gt": ""},
}
_STATE: dict[str, Any] = {
    "notes": {"$ref": "#/x", "$id": "y"},
    "dotted.key": {"$gt": 1},
    "ünïcödé": "✓ 键 🙂",
    "large": Int64(2**40),
    "small": Int64(5),
}


@tool
def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression."""
    left, _, right = expression.partition("*")
    return str(int(left) * int(right))


class _GraphState:
    """A Graph's state as ``create_multi_agent`` reads one (its id and ``serialize_state()``)."""

    id = GRAPH_ID

    def serialize_state(self) -> dict[str, Any]:
        return {"type": "graph", "status": "completed", "node_results": {"n1": {"$ref": "r", "$id": 1}}}


def chat_session(uri: str, database: str, session_id: str, seed: int = 0) -> None:
    """Store a session with everything the library keeps (see the module docstring)."""
    manager = MongoDBSessionManager(session_id, connection_string=uri, database_name=database)
    try:
        model = ScriptedModel([tool_call("calculator", {"expression": "17*3"}), text(f"17 x 3 = 51 ({seed}).")])
        agent = Agent(
            agent_id="assistant",
            model=model,
            tools=[calculator],
            session_manager=manager,
            callback_handler=None,
            conversation_manager=SlidingWindowConversationManager(window_size=40),
        )
        agent("What is 17 * 3?")
        for key, value in _STATE.items():
            agent.state.set(key, value)
        agent.model = ScriptedModel([text("A small picture."), text("A big picture.")])
        agent([{"text": "Small:"}, {"image": {"format": "png", "source": {"bytes": os.urandom(1000)}}}])
        agent([{"text": "Big:"}, {"image": {"format": "jpeg", "source": {"bytes": os.urandom(BIG_IMAGE_BYTES)}}}])
        agent.model = ScriptedModel([text("Noted.")])
        agent("My card number is 4111 1111 1111 1111.")
        helper = Agent(
            agent_id="helper.v2",
            model=EchoModel(),
            session_manager=manager,
            callback_handler=None,
        )
        helper("Ping from the helper.")
        manager.update_metadata(METADATA)
        manager.add_feedback({"rating": "up", "comment": "Great answer!"})
        manager.add_feedback({"rating": None, "comment": '$field is {"$gt": 1}'})
        repository: MongoDBSessionRepository = manager.mongodb_repository
        card = repository.read_message(session_id, "assistant", 8)  # the user's card number: redacted
        assert card is not None and card.message["role"] == "user"
        card.redact_message = {"role": "user", "content": [{"text": "[redacted]"}]}
        repository.update_message(session_id, "assistant", card)
        repository.set_message_fields(session_id, "assistant", 0, {"review": {"by": "ops", "$ref": "x", "$id": 2}})
        repository.create_multi_agent(session_id, _GraphState())  # type: ignore[arg-type]
    finally:
        manager.close()


def restore(session_manager: SessionManager, agent_id: str) -> dict[str, Any]:
    """Rebuild an agent from storage (no model call) and return what it holds."""
    agent = Agent(
        agent_id=agent_id,
        model=EchoModel(),
        session_manager=session_manager,
        callback_handler=None,
        conversation_manager=SlidingWindowConversationManager(window_size=40),
    )
    return {
        "messages": agent.messages,
        "state": agent.state.get(),
        "conversation_manager_state": agent.conversation_manager.get_state(),
        "interrupt_state": agent._interrupt_state.to_dict(),
    }


def restored(uri: str, database: str, session_id: str, agent_id: str) -> dict[str, Any]:
    """:func:`restore` from a MongoDB store through ``MongoDBSessionManager``."""
    with MongoDBSessionManager(session_id, connection_string=uri, database_name=database) as manager:
        return restore(manager, agent_id)

"""Strands' RepositorySessionManager scenarios, run over our repository on a real server.

These mirror the behaviours Strands' own session-manager tests check with their in-memory
repository: session creation and reuse, agent restore (state, interrupt state, conversation-manager
state with prepended summaries), message append, and multi-agent sync and restore.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from unittest.mock import Mock

import pytest
from pymongo import MongoClient
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager, SummarizingConversationManager
from strands.interrupt import _InterruptState
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.exceptions import SessionException
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionRepository
from tests.support.scripted_model import ScriptedModel


@pytest.fixture
def repo(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(client=mongo_client, database_name=database_name) as repository:
        yield repository


@pytest.fixture
def manager(repo: MongoDBSessionRepository) -> RepositorySessionManager:
    return RepositorySessionManager(session_id="sdk-session", session_repository=repo)


def _agent(**kwargs: Any) -> Agent:
    return Agent(model=ScriptedModel([]), callback_handler=None, **kwargs)


def _hello(message_id: int, text: str = "Hello") -> SessionMessage:
    return SessionMessage(message={"role": "user", "content": [{"text": text}]}, message_id=message_id)


def test_manager_creates_the_session_once(repo: MongoDBSessionRepository) -> None:
    assert repo.read_session("sdk-session") is None
    first = RepositorySessionManager(session_id="sdk-session", session_repository=repo)
    stored = repo.read_session("sdk-session")
    assert stored is not None and stored.session_type == SessionType.AGENT
    second = RepositorySessionManager(session_id="sdk-session", session_repository=repo)
    assert second.session == first.session == stored


def test_new_agent_with_initial_messages_is_stored(manager: RepositorySessionManager) -> None:
    agent = _agent(agent_id="custom", messages=[{"role": "user", "content": [{"text": "Hi"}]}])
    manager.initialize(agent)
    repo = manager.session_repository
    assert repo.read_agent("sdk-session", "custom") is not None
    assert [m.message["content"][0]["text"] for m in repo.list_messages("sdk-session", "custom")] == ["Hi"]
    with pytest.raises(SessionException, match="must be unique"):
        manager.initialize(_agent(agent_id="custom"))


def test_existing_agent_restores_state_interrupts_and_messages(repo: MongoDBSessionRepository) -> None:
    repo.create_session(Session(session_id="sdk-session", session_type=SessionType.AGENT))
    repo.create_agent(
        "sdk-session",
        SessionAgent(
            agent_id="existing",
            state={"key": "value"},
            conversation_manager_state=SlidingWindowConversationManager().get_state(),
            _internal_state={"interrupt_state": {"interrupts": {}, "context": {"test": "init"}, "activated": False}},
        ),
    )
    repo.create_message("sdk-session", "existing", _hello(0))
    agent = _agent(agent_id="existing")
    RepositorySessionManager(session_id="sdk-session", session_repository=repo).initialize(agent)
    assert agent.state.get("key") == "value"
    assert agent.messages == [{"role": "user", "content": [{"text": "Hello"}]}]
    assert agent._interrupt_state == _InterruptState(interrupts={}, context={"test": "init"}, activated=False)


def test_summarizing_manager_restores_summary_and_skips_removed_messages(repo: MongoDBSessionRepository) -> None:
    repo.create_session(Session(session_id="sdk-session", session_type=SessionType.AGENT))
    summarizer = SummarizingConversationManager()
    summarizer.removed_message_count = 1
    summarizer._summary_message = {"role": "assistant", "content": [{"text": "summary"}]}
    repo.create_agent(
        "sdk-session",
        SessionAgent(agent_id="existing", state={}, conversation_manager_state=summarizer.get_state()),
    )
    message = _hello(0, "removed")
    repo.create_message("sdk-session", "existing", message)
    message.message_id, message.message = 1, {"role": "user", "content": [{"text": "kept"}]}
    repo.create_message("sdk-session", "existing", message)

    agent = _agent(agent_id="existing", conversation_manager=SummarizingConversationManager())
    RepositorySessionManager(session_id="sdk-session", session_repository=repo).initialize(agent)

    assert [m["content"][0]["text"] for m in agent.messages] == ["summary", "kept"]
    assert agent.conversation_manager.removed_message_count == 1


def test_append_message_goes_to_the_repository(manager: RepositorySessionManager) -> None:
    agent = _agent(agent_id="writer", session_manager=manager)
    manager.append_message({"role": "user", "content": [{"text": "Hello"}]}, agent)
    stored = manager.session_repository.list_messages("sdk-session", "writer")
    assert [m.message["content"][0]["text"] for m in stored] == ["Hello"]


def test_multi_agent_initialize_and_sync(repo: MongoDBSessionRepository) -> None:
    multi = Mock()
    multi.id = "team.v1"
    multi.serialize_state.return_value = {"id": "team.v1", "state": {"key": "value"}}
    manager = RepositorySessionManager(session_id="multi", session_repository=repo)

    manager.initialize_multi_agent(multi)  # new session: created, not restored
    assert repo.read_multi_agent("multi", "team.v1") == {"id": "team.v1", "state": {"key": "value"}}
    multi.deserialize_state.assert_not_called()

    multi.serialize_state.return_value = {"id": "team.v1", "state": {"step": 2}}
    manager.sync_multi_agent(multi)
    assert repo.read_multi_agent("multi", "team.v1") == {"id": "team.v1", "state": {"step": 2}}

    restored = Mock()
    restored.id = "team.v1"
    RepositorySessionManager(session_id="multi", session_repository=repo).initialize_multi_agent(restored)
    restored.deserialize_state.assert_called_once_with({"id": "team.v1", "state": {"step": 2}})


def test_a_session_created_outside_the_manager_is_reused(repo: MongoDBSessionRepository) -> None:
    session = Session(session_id="pre-made", session_type=SessionType.AGENT)
    repo.create_session(session)
    assert RepositorySessionManager(session_id="pre-made", session_repository=repo).session == session

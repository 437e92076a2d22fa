"""The private names of Strands the manager relies on still exist in the installed Strands.

``mongodb_session_manager._strands_private`` is the only module that touches them. If a Strands
upgrade renames one, this test fails, not an application in production.
"""

from __future__ import annotations

from typing import Any

import pytest
from strands import Agent
from strands.session.repository_session_manager import RepositorySessionManager
from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage

from mongodb_session_manager import MongoDBSessionError
from mongodb_session_manager._strands_private import (
    PINNED_AGENT_NAMES,
    PINNED_MANAGER_NAMES,
    held_records,
    latest_messages,
    record_synced,
)
from tests.support.scripted_model import EchoModel


class _Memory(SessionRepository):
    """The least a ``RepositorySessionManager`` needs to be built and to initialise an agent."""

    def __init__(self) -> None:
        self.sessions: dict[str, Session] = {}
        self.agents: dict[str, SessionAgent] = {}
        self.updates = 0

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        self.sessions[session.session_id] = session
        return session

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        return self.sessions.get(session_id)

    def create_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        self.agents[session_agent.agent_id] = session_agent

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        return self.agents.get(agent_id)

    def update_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        self.agents[session_agent.agent_id] = session_agent
        self.updates += 1

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        pass

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        return None

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        pass

    def list_messages(
        self, session_id: str, agent_id: str, limit: int | None = None, offset: int = 0, **kwargs: Any
    ) -> list[SessionMessage]:
        return []


def _manager_and_agent() -> tuple[RepositorySessionManager, Agent]:
    manager = RepositorySessionManager(session_id="s", session_repository=_Memory())
    agent = Agent(model=EchoModel(), agent_id="a", session_manager=manager, callback_handler=None)
    manager._last_synced_internal_state.clear()  # as if the agent was restored, not just created
    return manager, agent


def test_the_manager_names_we_use_exist_in_the_installed_strands() -> None:
    manager, agent = _manager_and_agent()
    for name in PINNED_MANAGER_NAMES:
        assert hasattr(manager, name), f"RepositorySessionManager.{name} is gone: update _strands_private"
    for name in PINNED_AGENT_NAMES:
        assert hasattr(agent, name), f"Agent.{name} is gone: update _strands_private"
    assert callable(agent.state._get_version) and callable(agent._interrupt_state._get_version)
    assert "a" in latest_messages(manager) and isinstance(held_records(manager), dict)


def test_recording_a_synced_agent_uses_the_record_strands_compares() -> None:
    manager, agent = _manager_and_agent()
    assert record_synced(manager, agent)
    repository = manager.session_repository
    assert isinstance(repository, _Memory)
    before = repository.updates
    manager.sync_agent(agent)  # the parent's own comparison finds nothing to write
    assert repository.updates == before
    agent.state.set("k", "v")
    manager.sync_agent(agent)  # and still writes a real change
    assert repository.updates == before + 1


def test_a_missing_required_name_is_our_clear_error_and_a_missing_optional_one_skips_the_optimisation() -> None:
    class Renamed:
        pass

    with pytest.raises(MongoDBSessionError, match="_latest_agent_message"):
        latest_messages(Renamed())
    with pytest.raises(MongoDBSessionError, match="_held_records"):
        held_records(Renamed())
    _, agent = _manager_and_agent()
    assert record_synced(Renamed(), agent) is False

"""Batch the reads Strands makes when it restores an agent (used by ``MongoDBSessionManager``)."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING, Any

from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage

from ._documents import AGENT_FIELDS
from .errors import SessionConflictError
from .mongodb_session_repository import MongoDBSessionRepository

if TYPE_CHECKING:
    from strands.multiagent.base import MultiAgentBase

# Fields an update may change (all but the identity and the timestamps).
_STATE_FIELDS = tuple(name for name in AGENT_FIELDS if name not in ("agent_id", "created_at", "updated_at"))


class SnapshotReads(SessionRepository):
    """The repository as Strands' ``RepositorySessionManager`` sees it, with restore reads batched.

    ``RepositorySessionManager`` reads the session when the manager is built and each agent when it
    is initialised, then lists the agent's messages from its conversation manager's
    ``removed_message_count``: three round trips per restore. This wrapper reads the session, all
    agents' state and each agent's window (those messages, when they are all in the session
    document) in one command up front, and answers the first ``read_session``, the first
    ``read_agent`` of each agent and its first ``list_messages`` (when asked for exactly that
    window) from that reply; each answer is served once, so any later read goes to MongoDB.
    Everything else is passed straight through.

    The answers are as fresh as the manager: Strands builds the manager and initialises its agents
    within one request, and message appends stay guarded by the stored message count, so a
    concurrent writer is still detected (``SessionConflictError``), never overwritten.
    """

    def __init__(self, repository: MongoDBSessionRepository, session_id: str) -> None:
        self.repository = repository
        snapshot = repository.read_restore_snapshot(session_id)
        self._session_id = session_id
        self._session: Session | None = snapshot[0] if snapshot else None
        self._session_served = False
        self._agents: dict[str, SessionAgent] = snapshot[1] if snapshot else {}
        # Each agent's window (first message_id, messages), served to the restore's list_messages.
        self._windows: dict[str, tuple[int, list[SessionMessage]]] = snapshot[2] if snapshot else {}
        # What is known to be stored for each agent read, created or updated through this wrapper:
        # the manager compares against it after initialisation, and updates send only what changed.
        self.stored_agents: dict[str, SessionAgent] = {}
        self.created_concurrently: Session | None = None

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        try:
            return self.repository.create_session(session, **kwargs)
        except SessionConflictError:
            # Another request created this session between our read and our insert (two first
            # requests for a new id). Use the stored one; the manager then restores from it.
            existing = self.repository.read_session(session.session_id)
            if existing is None:
                raise
            self.created_concurrently = existing
            return existing

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        if session_id == self._session_id and not self._session_served:
            self._session_served = True
            return self._session
        return self.repository.read_session(session_id, **kwargs)

    def create_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        self.repository.create_agent(session_id, session_agent, **kwargs)
        self.stored_agents[session_agent.agent_id] = copy.deepcopy(session_agent)

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        if session_id == self._session_id and agent_id in self._agents:
            agent: SessionAgent | None = self._agents.pop(agent_id)
        else:
            agent = self.repository.read_agent(session_id, agent_id, **kwargs)
        if agent is not None:
            self.stored_agents[agent_id] = copy.deepcopy(agent)
        return agent

    def update_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        self._agents.pop(session_agent.agent_id, None)
        known = self.stored_agents.get(session_agent.agent_id) if session_id == self._session_id else None
        fields = None
        if known is not None:
            fields = [name for name in _STATE_FIELDS if getattr(session_agent, name) != getattr(known, name)]
            if not fields:
                return  # what is stored is already this state
        self.repository.update_agent(session_id, session_agent, fields=fields, **kwargs)
        if session_id == self._session_id:
            self.stored_agents[session_agent.agent_id] = copy.deepcopy(session_agent)

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        self._windows.pop(agent_id, None)
        self.repository.create_message(session_id, agent_id, session_message, **kwargs)

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        return self.repository.read_message(session_id, agent_id, message_id, **kwargs)

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        self._windows.pop(agent_id, None)
        self.repository.update_message(session_id, agent_id, session_message, **kwargs)

    def list_messages(
        self, session_id: str, agent_id: str, limit: int | None = None, offset: int = 0, **kwargs: Any
    ) -> list[SessionMessage]:
        window = self._windows.pop(agent_id, None) if session_id == self._session_id else None
        if window is not None and window[0] == offset and limit is None:
            return window[1]
        return self.repository.list_messages(session_id, agent_id, limit=limit, offset=offset, **kwargs)

    def create_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        self.repository.create_multi_agent(session_id, multi_agent, **kwargs)

    def read_multi_agent(self, session_id: str, multi_agent_id: str, **kwargs: Any) -> dict[str, Any] | None:
        return self.repository.read_multi_agent(session_id, multi_agent_id, **kwargs)

    def update_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        self.repository.update_multi_agent(session_id, multi_agent, **kwargs)

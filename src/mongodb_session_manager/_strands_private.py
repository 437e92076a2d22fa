"""The private parts of Strands the manager relies on, each behind one accessor.

``MongoDBSessionManager`` extends Strands' ``RepositorySessionManager`` and needs a little of its
bookkeeping, and of ``Agent``'s, which Strands does not publish. Every such name is used here and
nowhere else, and ``tests/unit/test_strands_private.py`` pins them against the installed Strands, so
an upgrade that renames one fails a test, not production. Names:

* ``RepositorySessionManager._latest_agent_message``: the last message appended per agent (its id
  gives the next one). Required.
* ``RepositorySessionManager._held_records``: the messages appended per agent (redaction rewrites
  them). Required.
* ``RepositorySessionManager._last_synced_internal_state``, ``Agent._interrupt_state``,
  ``Agent._model_state`` and ``Agent.state._get_version``: what the parent compares to decide that
  an agent's state changed. Optional: without them the manager skips an optimisation (see
  :func:`record_synced`).
"""

from __future__ import annotations

import copy
import logging
from typing import Any

from strands.types.session import SessionMessage

from .errors import MongoDBSessionError

logger = logging.getLogger(__name__)

__all__ = ["PINNED_AGENT_NAMES", "PINNED_MANAGER_NAMES", "held_records", "latest_messages", "record_synced"]

#: The ``RepositorySessionManager`` attributes used here (pinned by a test).
PINNED_MANAGER_NAMES = ("_latest_agent_message", "_held_records", "_last_synced_internal_state")
#: The ``Agent`` attributes used here (pinned by a test).
PINNED_AGENT_NAMES = ("_interrupt_state", "_model_state")


def _required(manager: Any, name: str) -> Any:
    try:
        return getattr(manager, name)
    except AttributeError as e:
        raise MongoDBSessionError(
            f"strands-agents no longer has RepositorySessionManager.{name}, which this version of "
            "mongodb-session-manager needs: use a strands-agents version it supports"
        ) from e


def latest_messages(manager: Any) -> dict[str, SessionMessage | None]:
    """``{agent_id: last appended SessionMessage}`` of a ``RepositorySessionManager``."""
    latest: dict[str, SessionMessage | None] = _required(manager, "_latest_agent_message")
    return latest


def held_records(manager: Any) -> dict[str, list[SessionMessage]]:
    """``{agent_id: [appended SessionMessage, ...]}`` of a ``RepositorySessionManager``."""
    held: dict[str, list[SessionMessage]] = _required(manager, "_held_records")
    return held


def record_synced(manager: Any, agent: Any) -> bool:
    """Record ``agent``'s current state as already stored, the way the parent's ``sync_agent`` does after a write.

    Returns:
        False if Strands' names changed: nothing is recorded, the next sync writes the state again
        (correct, one write more).
    """
    try:
        synced = manager._last_synced_internal_state
        record = {
            "state_version": agent.state._get_version(),
            "interrupt_state_version": agent._interrupt_state._get_version(),
            "conversation_manager_state": copy.deepcopy(agent.conversation_manager.get_state()),
            "model_state": copy.deepcopy(agent._model_state),
        }
    except AttributeError:
        logger.debug("agent_id=<%s> | strands internals changed; the first sync will write", agent.agent_id)
        return False
    synced[agent.agent_id] = record
    return True

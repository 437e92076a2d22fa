"""``MongoDBSessionManager``: Strands' ``RepositorySessionManager`` over MongoDB, with extras.

On top of the SDK's persistence it adds:

* **event-loop metrics**: the final assistant message of each agent turn is stored with an
  ``event_loop_metrics`` field (that turn's tokens, latency, cycles and tool use, plus the agent's
  running totals), written in the same command as the message itself;
* **metadata**: partial update, read and field deletion, and a Strands tool that lets an agent do
  the same;
* **feedback**: thumbs up/down with a comment, timestamped by the server;
* **hooks**: callables that wrap metadata and feedback operations (audit, validate, transform,
  cache, notify).

All MongoDB access goes through :class:`MongoDBSessionRepository`.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pymongo import MongoClient
from strands import tool
from strands.hooks import AfterInvocationEvent, BeforeInvocationEvent, HookRegistry
from strands.session.repository_session_manager import RepositorySessionManager
from strands.types.content import Message
from strands.types.session import SessionAgent, SessionMessage

from . import _strands_private as strands_private
from ._metrics import TurnStart, tool_counts, turn_metrics
from ._snapshot_reads import SnapshotReads
from .errors import MongoDBSessionError, SessionStorageError, SessionValidationError
from .mongodb_connection_pool import split_client_options
from .mongodb_session_repository import (
    DEFAULT_COLLECTION_NAME,
    DEFAULT_DATABASE_NAME,
    STORAGE_OPTIONS,
    MongoDBSessionRepository,
)

if TYPE_CHECKING:
    from strands.agent.agent import Agent
    from strands.types.agent import LocalAgent

logger = logging.getLogger(__name__)

__all__ = ["FeedbackHook", "MetadataHook", "MongoDBSessionManager", "create_mongodb_session_manager"]

#: ``hook(original_func, action, session_id, **kwargs)``; for metadata ``action`` is ``"update"``
#: (kwargs ``metadata``), ``"delete"`` (``keys``) or ``"get"`` (none).
MetadataHook = Callable[..., Any]
#: ``hook(original_func, action, session_id, **kwargs)``; ``action`` is ``"add"`` (kwargs ``feedback``).
FeedbackHook = Callable[..., Any]


class MongoDBSessionManager(RepositorySessionManager):
    """Persist Strands agents in MongoDB, with metrics, metadata, feedback and hooks.

    Args:
        session_id: The session to use; created if it does not exist.
        connection_string: MongoDB connection string. Managers built from the same connection
            string and options share one pooled client, so creating one per request does not open
            connections per request, even if they are never closed.
        database_name: Database name.
        collection_name: Collection holding one document per session.
        client: An existing ``MongoClient`` to borrow (never closed by the manager).
        metadata_hook: Wraps :meth:`update_metadata`, :meth:`delete_metadata` and :meth:`get_metadata`.
        feedback_hook: Wraps :meth:`add_feedback`.
        session_repository: An existing :class:`MongoDBSessionRepository` to use instead of building
            one (the factory does this).
        session_ttl: Optional idle expiry for sessions (see :class:`MongoDBSessionRepository`).
        **kwargs: ``binary_offload_bytes``, ``overflow_threshold_bytes``,
            ``overflow_collection_name`` and ``tenant_id`` go to the repository (see :class:`MongoDBSessionRepository`);
            ``MongoClient`` options (``maxPoolSize``, ``serverSelectionTimeoutMS``, ...) go to
            the client; anything else goes to ``RepositorySessionManager``. The reference design's
            ``metadataHook=`` and ``feedbackHook=`` spellings are accepted too.

    Example:
        ```python
        manager = MongoDBSessionManager("user-42", connection_string="mongodb://localhost:27017")
        agent = Agent(session_manager=manager)
        agent("Hello!")
        manager.update_metadata({"topic": "greeting"})
        ```
    """

    def __init__(
        self,
        session_id: str,
        connection_string: str | None = None,
        database_name: str = DEFAULT_DATABASE_NAME,
        collection_name: str = DEFAULT_COLLECTION_NAME,
        client: MongoClient[Any] | None = None,
        metadata_hook: MetadataHook | None = None,
        feedback_hook: FeedbackHook | None = None,
        session_repository: MongoDBSessionRepository | None = None,
        session_ttl: Any = None,
        **kwargs: Any,
    ) -> None:
        """Create the manager; see the class docstring."""
        metadata_hook = _alias(kwargs, "metadataHook", "metadata_hook", metadata_hook)
        feedback_hook = _alias(kwargs, "feedbackHook", "feedback_hook", feedback_hook)
        for name, hook in (("metadata_hook", metadata_hook), ("feedback_hook", feedback_hook)):
            if hook is not None and not callable(hook):
                raise SessionValidationError(name, f"must be callable, got {type(hook).__name__}")
        storage_options = {name: kwargs.pop(name) for name in STORAGE_OPTIONS if name in kwargs}
        client_options, parent_kwargs = split_client_options(kwargs)
        if session_repository is None:
            session_repository = MongoDBSessionRepository(
                connection_string=connection_string,
                database_name=database_name,
                collection_name=collection_name,
                client=client,
                session_ttl=session_ttl,
                **storage_options,
                **client_options,
            )
            self._owns_repository = True
        else:
            if client_options or storage_options:
                raise SessionValidationError(
                    "kwargs",
                    f"options {sorted({**client_options, **storage_options})} cannot apply to a session_repository "
                    "passed in; configure that repository",
                )
            self._owns_repository = False
        self.mongodb_repository = session_repository
        self.metadata_hook = metadata_hook
        self.feedback_hook = feedback_hook
        self._turns: dict[str, TurnStart] = {}
        self._metrics_pending: dict[str, int] = {}
        # Messages whose append failed in a way that leaves open whether it was applied (a timeout, a
        # lost connection), with the fields stored beside them: resent before the agent's next write.
        self._unsure: dict[str, list[tuple[SessionMessage, dict[str, Any] | None]]] = {}
        self._closed = False
        try:
            # One command reads the session and every agent's state; Strands' read_session and
            # read_agent calls are then served from it (see SnapshotReads).
            self._reads = reads = SnapshotReads(session_repository, session_id)
            super().__init__(session_id=session_id, session_repository=reads, **parent_kwargs)
            if reads.created_concurrently is not None:
                # The session appeared while we were creating it: treat it as an existing one, so
                # agents are restored from it instead of being created over it.
                self.session = reads.created_concurrently
                self._is_new_session = False
        except BaseException:
            if self._owns_repository:
                session_repository.close()
            raise

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Release the repository's client if this manager created it (a borrowed client stays open)."""
        if self._closed:
            return
        self._closed = True
        if self._owns_repository:
            self.mongodb_repository.close()

    def __enter__(self) -> MongoDBSessionManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"MongoDBSessionManager(session_id={self.session_id!r}, repository={self.mongodb_repository!r})"

    def delete_session(self) -> None:
        """Delete this manager's session: agents, messages, metadata and feedback, all at once.

        Raises:
            SessionNotFoundError: The session does not exist (any more).
        """
        self.mongodb_repository.delete_session(self.session_id)

    # ------------------------------------------------------------------ restore

    def initialize(self, agent: LocalAgent, **kwargs: Any) -> None:
        """Restore (or create) the agent, as Strands does, then note that its state is already stored.

        Strands syncs an agent's state at its first message after initialisation even when nothing
        changed, which costs every per-request agent one write per turn. When the state the agent
        has after initialisation is exactly what is stored, we record it as synced, so the first
        sync writes only if something really changed.
        """
        super().initialize(agent, **kwargs)
        from strands.agent.agent import Agent

        stored = self._reads.stored_agents.get(str(agent.agent_id))
        if not isinstance(agent, Agent) or stored is None:
            return
        current = SessionAgent.from_agent(agent)
        if (current.state, current.conversation_manager_state, current._internal_state) != (
            stored.state,
            stored.conversation_manager_state,
            stored._internal_state,
        ):
            return
        # The same record RepositorySessionManager.sync_agent keeps after a successful write.
        strands_private.record_synced(self, agent)

    # ------------------------------------------------------------------ metrics

    def register_hooks(self, registry: HookRegistry, **kwargs: Any) -> None:
        """Register Strands' persistence hooks plus the turn bookkeeping for metrics."""
        super().register_hooks(registry, **kwargs)
        registry.add_callback(BeforeInvocationEvent, lambda event: self._start_turn(event.agent))
        registry.add_callback(AfterInvocationEvent, lambda event: self._finish_turn(event.agent))

    def _start_turn(self, agent: Agent) -> None:
        metrics = agent.event_loop_metrics
        self._turns[str(agent.agent_id)] = TurnStart(
            started=time.monotonic(),
            tool_calls={name: tool_counts(tm) for name, tm in metrics.tool_metrics.items()},
            latency_ms=metrics.accumulated_metrics.get("latencyMs", 0),
            cycle_count=metrics.cycle_count,
        )

    def append_message(self, message: Message, agent: LocalAgent, **kwargs: Any) -> None:
        """Append a message; a turn's final assistant message is stored with its ``event_loop_metrics``.

        The metrics travel in the same MongoDB command as the message (no extra write). This is
        Strands' own ``append_message`` (next id from the latest message, record it, store it),
        with the metrics passed to the repository.

        If an earlier append of this agent failed without telling whether it was applied (a storage
        error: a timeout, a lost connection, a server restart), that message, which the agent kept
        in its history, is sent again first. Appends are idempotent, so it is stored exactly once
        whichever way the failure went, and the stored history stays the agent's. A message the
        store refused (too large, unencodable, a conflict) is not recorded, so the next append
        reuses its id instead of leaving a hole.
        """
        key = str(agent.agent_id)
        self._resend_unsure(key)
        metrics = self._final_message_metrics(message, agent)
        extras = None if metrics is None else {"event_loop_metrics": metrics}
        latest = strands_private.latest_messages(self)
        previous = latest.get(key)
        session_message = SessionMessage.from_message(message, previous.message_id + 1 if previous else 0)
        latest[key] = session_message
        try:
            self.mongodb_repository.create_message(self.session_id, key, session_message, extra_fields=extras)
        except SessionStorageError:
            # Maybe stored, maybe not: keep its id and send it again before the next write.
            self._unsure.setdefault(key, []).append((session_message, extras))
            strands_private.held_records(self).setdefault(key, []).append(session_message)
            raise
        except Exception:
            latest[key] = previous
            raise
        strands_private.held_records(self).setdefault(key, []).append(session_message)
        if metrics is not None:
            self._metrics_pending.pop(key, None)

    def _resend_unsure(self, key: str) -> None:
        """Send again, in order, the messages of this agent whose append may or may not have happened."""
        unsure = self._unsure.get(key)
        while unsure:
            session_message, extras = unsure[0]
            self.mongodb_repository.create_message(self.session_id, key, session_message, extra_fields=extras)
            unsure.pop(0)
            logger.debug(
                "session_id=<%s>, agent_id=<%s>, message_id=<%s> | message of a failed append is stored",
                self.session_id,
                key,
                session_message.message_id,
            )

    def redact_latest_message(self, redact_message: Message, agent: LocalAgent, **kwargs: Any) -> None:
        """Redact the agent's latest message (after storing any message of a failed append it follows)."""
        self._resend_unsure(str(agent.agent_id))
        super().redact_latest_message(redact_message, agent, **kwargs)

    def _final_message_metrics(self, message: Message, agent: LocalAgent) -> dict[str, Any] | None:
        """Metrics for ``message`` if it ends the agent's current turn, else ``None``."""
        key = str(agent.agent_id)
        turn = self._turns.get(key)
        if turn is None or message.get("role") != "assistant":
            return None
        if any("toolUse" in block for block in message.get("content", [])):
            # The model asked for a tool: the turn goes on. Remember the message in case the turn
            # ends here anyway (interrupt, cancellation); _finish_turn then tags it.
            latest = strands_private.latest_messages(self).get(key)
            self._metrics_pending[key] = latest.message_id + 1 if latest else 0
            return None
        # usage and metrics of this last model call are on the message already, but are added to
        # the agent's totals only after the message is appended: add them here.
        call = message.get("metadata") or {}
        return turn_metrics(agent, turn, call.get("usage"), call.get("metrics"))

    def _finish_turn(self, agent: Agent) -> None:
        key = str(agent.agent_id)
        turn = self._turns.pop(key, None)
        pending = self._metrics_pending.pop(key, None)
        latest = strands_private.latest_messages(self).get(key)
        if turn is None or pending is None or latest is None or latest.message_id != pending:
            return
        # Rare: the turn ended on an assistant message that asked for a tool. One extra write.
        metrics = turn_metrics(agent, turn, None, None)
        self.mongodb_repository.set_message_fields(self.session_id, key, pending, {"event_loop_metrics": metrics})

    def get_message_metrics(self, agent_id: str | None = None) -> list[dict[str, Any]]:
        """Return the stored metrics of an agent's turns, oldest first.

        Args:
            agent_id: The agent; defaults to the only agent initialised with this manager (or
                Strands' default agent id ``"default"``).

        Returns:
            ``[{"message_id": int, "event_loop_metrics": {...}}, ...]``, one per completed turn.
        """
        return self.mongodb_repository.get_message_metrics(self.session_id, self._agent_id(agent_id))

    def _agent_id(self, agent_id: str | None) -> str:
        if agent_id is not None:
            return agent_id
        known = list(strands_private.latest_messages(self))
        if len(known) == 1:
            return known[0]
        if not known:
            return "default"
        raise SessionValidationError("agent_id", f"this manager holds several agents {known}; name one")

    # ------------------------------------------------------------------ metadata

    def update_metadata(self, metadata: dict[str, Any]) -> Any:
        """Set the given metadata fields, preserving all others.

        Keys must be non-empty strings without ``.``, NUL or a leading ``$``; values must be
        BSON-encodable. Runs through ``metadata_hook`` when one is set.
        """
        if self.metadata_hook is not None:
            return self.metadata_hook(self._update_metadata, "update", self.session_id, metadata=metadata)
        return self._update_metadata(metadata)

    def _update_metadata(self, metadata: dict[str, Any]) -> None:
        self.mongodb_repository.update_metadata(self.session_id, metadata)

    def get_metadata(self) -> Any:
        """Return the session's metadata dict (``{}`` if none). Runs through ``metadata_hook``."""
        if self.metadata_hook is not None:
            return self.metadata_hook(self._get_metadata, "get", self.session_id)
        return self._get_metadata()

    def _get_metadata(self) -> dict[str, Any]:
        return self.mongodb_repository.get_metadata(self.session_id)

    def delete_metadata(self, keys: list[str]) -> Any:
        """Remove only the named metadata fields. Runs through ``metadata_hook``."""
        if self.metadata_hook is not None:
            return self.metadata_hook(self._delete_metadata, "delete", self.session_id, keys=keys)
        return self._delete_metadata(keys)

    def _delete_metadata(self, keys: list[str]) -> None:
        self.mongodb_repository.delete_metadata(self.session_id, keys)

    def get_metadata_tool(self) -> Any:
        """Return a Strands tool through which an agent reads and changes this session's metadata.

        The tool takes ``action`` (``"get"``, ``"set"`` or ``"delete"``), ``metadata`` (for
        ``set``) and ``keys`` (for ``delete``); JSON strings are accepted for both. It can also be
        called directly: ``tool(action="set", metadata={"lang": "en"})``. Bad arguments produce an
        error result for the model instead of an exception.

        Returns:
            A ``DecoratedFunctionTool`` named ``manage_metadata``.
        """
        manager = self

        @tool(name="manage_metadata")
        def manage_metadata(
            action: str, metadata: dict[str, Any] | str | None = None, keys: list[str] | str | None = None
        ) -> dict[str, Any]:
            """Read or change the metadata of the current conversation session.

            Args:
                action: "get" to read all metadata, "set" to add or change fields, "delete" to remove fields.
                metadata: For "set": an object of field names to values, e.g. {"language": "en"}.
                keys: For "delete": the list of field names to remove, e.g. ["language"].
            """
            return manager._run_metadata_tool(action, metadata, keys)

        return manage_metadata

    def _run_metadata_tool(self, action: Any, metadata: Any, keys: Any) -> dict[str, Any]:
        try:
            if action == "get":
                result: Any = self.get_metadata()
                return _tool_result("success", {"metadata": _jsonable(result)})
            if action == "set":
                metadata = _maybe_json(metadata, "metadata")
                if not isinstance(metadata, dict) or not metadata:
                    raise SessionValidationError("metadata", 'action "set" needs a non-empty object of fields')
                self.update_metadata(metadata)
                return _tool_result("success", {"updated": sorted(metadata)})
            if action == "delete":
                keys = _maybe_json(keys, "keys")
                if isinstance(keys, str):
                    keys = [keys]
                if not isinstance(keys, list) or not keys:
                    raise SessionValidationError("keys", 'action "delete" needs a non-empty list of field names')
                self.delete_metadata(keys)
                return _tool_result("success", {"deleted": keys})
            raise SessionValidationError("action", 'must be "get", "set" or "delete"', action)
        except (ValueError, MongoDBSessionError) as e:
            logger.debug("session_id=<%s>, action=<%s> | metadata tool refused: %s", self.session_id, action, e)
            return _tool_result("error", {"error": str(e)})

    # ------------------------------------------------------------------ feedback

    def add_feedback(self, feedback: dict[str, Any]) -> Any:
        """Store user feedback ``{"rating": "up" | "down" | None, "comment": str}`` with a server timestamp.

        Runs through ``feedback_hook`` when one is set.

        Returns:
            The stored entry (``rating``, ``comment``, ``created_at``), or what the hook returns.
        """
        if self.feedback_hook is not None:
            return self.feedback_hook(self._add_feedback, "add", self.session_id, feedback=feedback)
        return self._add_feedback(feedback)

    def _add_feedback(self, feedback: dict[str, Any]) -> dict[str, Any]:
        return self.mongodb_repository.add_feedback(self.session_id, feedback)

    def get_feedbacks(self) -> list[dict[str, Any]]:
        """Return the session's feedback entries, oldest first."""
        return self.mongodb_repository.get_feedbacks(self.session_id)

    # ------------------------------------------------------------------ sessions

    def list_sessions(
        self, metadata_filter: dict[str, Any] | None = None, limit: int = 100, after: str | None = None
    ) -> list[dict[str, Any]]:
        """List sessions of this manager's collection; see :meth:`MongoDBSessionRepository.list_sessions`."""
        return self.mongodb_repository.list_sessions(metadata_filter, limit=limit, after=after)


def _tool_result(status: str, payload: dict[str, Any]) -> dict[str, Any]:
    return {"status": status, "content": [{"text": json.dumps(payload, ensure_ascii=False, default=str)}]}


def _maybe_json(value: Any, field: str) -> Any:
    if isinstance(value, str):
        stripped = value.strip()
        if stripped[:1] in ("{", "[", '"'):
            try:
                return json.loads(stripped)
            except json.JSONDecodeError as e:
                raise SessionValidationError(field, f"is not valid JSON: {e}") from e
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return f"<{len(value)} bytes>"
    return value


def _alias(kwargs: dict[str, Any], camel: str, snake: str, value: Any) -> Any:
    if camel in kwargs:
        aliased = kwargs.pop(camel)
        if value is not None and aliased is not None and aliased is not value:
            raise SessionValidationError(camel, f"given together with {snake}; use one")
        return value if value is not None else aliased
    return value


def create_mongodb_session_manager(
    session_id: str,
    connection_string: str | None = None,
    database_name: str = DEFAULT_DATABASE_NAME,
    collection_name: str = DEFAULT_COLLECTION_NAME,
    **kwargs: Any,
) -> MongoDBSessionManager:
    """Create a :class:`MongoDBSessionManager` (convenience wrapper with the same arguments).

    Example:
        ```python
        manager = create_mongodb_session_manager("user-42", "mongodb://localhost:27017", database_name="chat")
        ```
    """
    return MongoDBSessionManager(
        session_id=session_id,
        connection_string=connection_string,
        database_name=database_name,
        collection_name=collection_name,
        **kwargs,
    )

"""``MongoDBSessionRepository``: Strands' ``SessionRepository`` over one MongoDB document per session.

The document layout is described in :mod:`mongodb_session_manager._documents`. Every operation is
one MongoDB command on the hot path:

* appending a message is a single conditional ``$push``: it succeeds only if the agent has exactly
  ``message_id`` messages stored, so two writers can never create duplicate ids or holes;
* reading messages uses ``$slice`` projections, so only the requested messages travel;
* updating (redacting) a message uses ``array_filters``, so the array is never read;
* reading a session or an agent projects away the message arrays.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection as Collection_
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import bson
from bson.errors import InvalidDocument, InvalidStringData
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DocumentTooLarge, DuplicateKeyError, InvalidName, OperationFailure, PyMongoError
from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage

from ._documents import (
    AGENT_FIELDS,
    MESSAGE_FIELDS,
    agent_to_fields,
    document_to_agent,
    document_to_session,
    encode_field_name,
    entry_to_message,
    iso_now,
    message_to_entry,
    session_to_document,
    utc_now,
    validate_feedback,
    validate_id,
    validate_message_id,
    validate_metadata,
    validate_metadata_key,
    validate_metadata_keys,
)
from .errors import (
    MongoDBSessionError,
    SessionConflictError,
    SessionNotFoundError,
    SessionStorageError,
    SessionTooLargeError,
    SessionValidationError,
)
from .mongodb_connection_pool import MongoDBConnectionPool, SharedClientLease, acquire_shared_client

if TYPE_CHECKING:
    from strands.multiagent.base import MultiAgentBase

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_COLLECTION_NAME", "DEFAULT_DATABASE_NAME", "MongoDBSessionRepository"]

DEFAULT_DATABASE_NAME = "strands_sessions"
DEFAULT_COLLECTION_NAME = "sessions"

#: MongoDB's maximum BSON document size.
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024
# Server error codes for "the resulting document would be too large".
_TOO_LARGE_CODES = frozenset({10334, 17419, 17420, 13548})
# $slice needs a positive count; this stands for "all the rest".
_SLICE_ALL = 2**31 - 1

_index_lock = threading.Lock()
_indexed_collections: set[tuple[Any, ...]] = set()

# Fields to store beside the next appended message (see ``stored_with_message``). A context
# variable, so concurrent threads and asyncio tasks sharing one repository never mix them up.
_message_extras: ContextVar[tuple[Any, dict[str, Any]] | None] = ContextVar("msm_message_extras", default=None)


@contextlib.contextmanager
def stored_with_message(message: Any, fields: dict[str, Any]) -> Iterator[None]:
    """Store ``fields`` beside ``message`` when it is appended inside this block.

    ``RepositorySessionManager.append_message`` wraps the agent's message in a ``SessionMessage``
    and calls ``create_message``; this lets a manager add fields (such as ``event_loop_metrics``)
    to that very write, matched by the message object's identity, without re-implementing the SDK's
    bookkeeping. The fields are stored beside the message and never handed back to Strands.
    """
    token = _message_extras.set((message, fields))
    try:
        yield
    finally:
        _message_extras.reset(token)


def _client_identity(client: MongoClient[Any]) -> Any:
    """What identifies the deployment a client talks to, for the once-per-process index registry."""
    if not isinstance(client, MongoClient):  # a test double such as mongomock
        return id(client)
    seeds = getattr(getattr(client, "_topology_settings", None), "seeds", None)
    return frozenset(seeds) if seeds else id(client)


class MongoDBSessionRepository(SessionRepository):
    """Stores Strands sessions, agents, messages and multi-agent state in MongoDB.

    Args:
        connection_string: MongoDB connection string. Repositories built from the same connection
            string and options share one pooled client for the whole process.
        database_name: Database holding the sessions collection.
        collection_name: Collection holding one document per session.
        client: An existing ``MongoClient`` to use. It is borrowed: :meth:`close` never closes it.
        session_ttl: Optional expiry: sessions with no write for this long (seconds or a
            ``timedelta``) are deleted by MongoDB itself, whole, through a TTL index on
            ``updated_date``. MongoDB's TTL monitor runs about once a minute, so expiry is not
            instant. ``None`` (the default) keeps sessions forever.
        **client_kwargs: ``MongoClient`` options (pymongo names) used with ``connection_string``.

    If neither ``client`` nor ``connection_string`` is given, the client of an initialised
    :class:`MongoDBConnectionPool` is borrowed.

    Example:
        ```python
        with MongoDBSessionRepository("mongodb://localhost:27017", database_name="chat") as repo:
            manager = RepositorySessionManager(session_id="user-1", session_repository=repo)
        ```
    """

    def __init__(
        self,
        connection_string: str | None = None,
        database_name: str = DEFAULT_DATABASE_NAME,
        collection_name: str = DEFAULT_COLLECTION_NAME,
        client: MongoClient[Any] | None = None,
        session_ttl: float | timedelta | None = None,
        **client_kwargs: Any,
    ) -> None:
        """Create the repository; see the class docstring for the arguments."""
        self.session_ttl_seconds = _ttl_seconds(session_ttl)
        if not isinstance(database_name, str) or not database_name:
            raise SessionValidationError("database_name", "must be a non-empty string")
        if not isinstance(collection_name, str) or not collection_name:
            raise SessionValidationError("collection_name", "must be a non-empty string")
        self._lease: SharedClientLease | None = None
        if client is not None:
            if client_kwargs:
                raise SessionValidationError(
                    "client_kwargs", "client options cannot be applied to a client passed in; configure that client"
                )
            self._client: MongoClient[Any] = client
        elif connection_string is not None:
            self._lease = acquire_shared_client(connection_string, **client_kwargs)
            self._client = self._lease.client
        else:
            pooled = MongoDBConnectionPool.get_client()
            if pooled is None:
                raise SessionValidationError(
                    "connection_string",
                    "pass a connection_string or a client, or call MongoDBConnectionPool.initialize() first",
                )
            self._client = pooled
        self.database_name = database_name
        self.collection_name = collection_name
        self._closed = False
        try:
            try:
                self.collection: Collection[dict[str, Any]] = self._client[database_name][collection_name]
            except InvalidName as e:
                field = "database_name" if _is_bad_database_name(database_name) else "collection_name"
                raise SessionValidationError(field, str(e)) from e
            self.ensure_indexes()
        except BaseException:
            self.close()  # the caller gets no object to close: let go of the shared client now
            raise

    # ------------------------------------------------------------------ lifecycle

    @property
    def client(self) -> MongoClient[Any]:
        """The ``MongoClient`` in use (borrowed or shared)."""
        return self._client

    @property
    def owns_client(self) -> bool:
        """True when the repository created (a lease on) its client and :meth:`close` releases it."""
        return self._lease is not None

    def close(self) -> None:
        """Release the client if the repository created it; a borrowed client is left open."""
        if self._closed:
            return
        self._closed = True
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> MongoDBSessionRepository:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"MongoDBSessionRepository(database_name={self.database_name!r}, "
            f"collection_name={self.collection_name!r}, owns_client={self.owns_client})"
        )

    def ensure_indexes(self) -> None:
        """Create the collection's indexes, once per collection per process."""
        key = (_client_identity(self._client), self.database_name, self.collection_name, self.session_ttl_seconds)
        if key in _indexed_collections:
            return
        with _index_lock:
            if key in _indexed_collections:
                return
            with self._errors("-", "create indexes"):
                self.collection.create_index([("created_date", ASCENDING)], name="created_date_1")
                self._ensure_activity_index()
            _indexed_collections.add(key)
            logger.debug("database=<%s>, collection=<%s> | indexes ensured", self.database_name, self.collection_name)

    def _ensure_activity_index(self) -> None:
        """Index ``updated_date``; with a TTL when ``session_ttl`` is set (changed in place if it differs)."""
        if self.session_ttl_seconds is None:
            try:
                self.collection.create_index([("updated_date", ASCENDING)], name="updated_date_1")
            except OperationFailure as e:
                if e.code not in (85, 86):
                    raise
                # The index exists with a TTL set by another configuration: keep it. Turning expiry
                # off is a deliberate act (collMod), not a side effect of omitting session_ttl.
            return
        try:
            self.collection.create_index(
                [("updated_date", ASCENDING)], name="updated_date_1", expireAfterSeconds=self.session_ttl_seconds
            )
        except OperationFailure as e:
            if e.code not in (85, 86):  # IndexOptionsConflict / IndexKeySpecsConflict: only the TTL differs
                raise
            self.collection.database.command(
                "collMod",
                self.collection_name,
                index={"keyPattern": {"updated_date": 1}, "expireAfterSeconds": self.session_ttl_seconds},
            )
            logger.info(
                "collection=<%s>, ttl_seconds=<%s> | session expiry changed",
                self.collection_name,
                self.session_ttl_seconds,
            )

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _errors(self, session_id: str, operation: str, field: str = "value", payload: Any = None) -> Iterator[None]:
        """Translate driver exceptions into ours, chained with ``from``."""
        try:
            yield
        except MongoDBSessionError:
            raise
        except DocumentTooLarge as e:  # a subclass of InvalidDocument: test it first
            raise SessionTooLargeError(session_id, _bson_size(payload), MAX_DOCUMENT_SIZE, operation) from e
        except (InvalidDocument, InvalidStringData, OverflowError, ValueError) as e:
            # ValueError: text that is not valid UTF-8 (lone surrogates), a uuid.UUID without a
            # configured representation, and other values bson refuses.
            raise SessionValidationError(field, f"cannot be stored in MongoDB ({operation}): {e}") from e
        except OperationFailure as e:
            if e.code in _TOO_LARGE_CODES:
                raise SessionTooLargeError(session_id, _bson_size(payload), MAX_DOCUMENT_SIZE, operation) from e
            raise SessionStorageError(f"session_id=<{session_id}> | {operation} failed: {e}") from e
        except PyMongoError as e:
            raise SessionStorageError(f"session_id=<{session_id}> | {operation} failed: {e}") from e

    # ------------------------------------------------------------------ sessions

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        """Create a new session document.

        Raises:
            SessionConflictError: A session with this id already exists.
        """
        session_id = validate_id(session.session_id, "session_id")
        document = session_to_document(session)
        try:
            with self._errors(session_id, "create session", "session"):
                self.collection.insert_one(document)
        except SessionStorageError as e:
            if isinstance(e.__cause__, DuplicateKeyError):
                raise SessionConflictError(f"session_id=<{session_id}> | session already exists") from e.__cause__
            raise
        logger.debug("session_id=<%s> | session created", session_id)
        return session

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        """Read a session (without its agents, messages, metadata or feedback)."""
        validate_id(session_id, "session_id")
        with self._errors(session_id, "read session"):
            document = self.collection.find_one(
                {"_id": session_id}, {"session_id": 1, "session_type": 1, "created_at": 1, "updated_at": 1}
            )
        return document_to_session(document) if document is not None else None

    def read_session_snapshot(self, session_id: str) -> tuple[Session, dict[str, SessionAgent]] | None:
        """Read a session and the state of all its agents (no messages, metadata or feedback) in one command.

        ``MongoDBSessionManager`` uses this so that restoring an agent costs two commands (this one,
        then ``list_messages``) instead of three.

        Returns:
            ``(session, {agent_id: agent})``, or ``None`` if the session does not exist.
        """
        validate_id(session_id, "session_id")
        agent_fields = {name: {"$getField": {"field": name, "input": "$$agent.v"}} for name in AGENT_FIELDS}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"_id": session_id}},
            {
                "$project": {
                    "session_id": 1,
                    "session_type": 1,
                    "created_at": 1,
                    "updated_at": 1,
                    "agents": {
                        "$arrayToObject": {
                            "$map": {
                                "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                                "as": "agent",
                                "in": {"k": "$$agent.k", "v": agent_fields},
                            }
                        }
                    },
                }
            },
        ]
        with self._errors(session_id, "read session"):
            documents = list(self.collection.aggregate(pipeline))
        if not documents:
            return None
        document = documents[0]
        agents = {}
        for stored in (document.get("agents") or {}).values():
            agent = document_to_agent(stored, session_id)
            agents[agent.agent_id] = agent
        return document_to_session(document), agents

    def delete_session(self, session_id: str, **kwargs: Any) -> None:
        """Delete a session with all its agents, messages and multi-agent state.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        with self._errors(session_id, "delete session"):
            result = self.collection.delete_one({"_id": session_id})
        if result.deleted_count == 0:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        logger.debug("session_id=<%s> | session deleted", session_id)

    # ------------------------------------------------------------------ agents

    def create_agent(self, session_id: str, session_agent: SessionAgent, **kwargs: Any) -> None:
        """Add an agent to a session.

        If the agent already exists its state is overwritten and its messages are kept, as Strands'
        ``FileSessionManager`` does.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        agent_id = validate_id(session_agent.agent_id, "agent_id")
        path = f"agents.{encode_field_name(agent_id)}"
        fields = agent_to_fields(session_agent)
        new_agent = {**fields, "message_count": 0, "messages": []}
        with self._errors(session_id, "create agent", "session_agent", new_agent):
            result = self.collection.update_one(
                {"_id": session_id, path: {"$exists": False}},
                {"$set": {path: new_agent, "updated_date": utc_now()}},
            )
            if result.matched_count == 0:
                # Either the session is missing or the agent exists already (rare): keep its messages.
                result = self.collection.update_one(
                    {"_id": session_id},
                    {
                        "$set": {
                            **{f"{path}.{name}": value for name, value in fields.items()},
                            "updated_date": utc_now(),
                        }
                    },
                )
        if result.matched_count == 0:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        logger.debug("session_id=<%s>, agent_id=<%s> | agent created", session_id, agent_id)

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        """Read an agent's state (not its messages)."""
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        path = f"agents.{encode_field_name(agent_id)}"
        with self._errors(session_id, "read agent"):
            document = self.collection.find_one({"_id": session_id}, {f"{path}.{name}": 1 for name in AGENT_FIELDS})
        stored = _dig(document, path)
        return document_to_agent(stored, session_id) if stored else None

    def update_agent(
        self, session_id: str, session_agent: SessionAgent, fields: Collection_[str] | None = None, **kwargs: Any
    ) -> None:
        """Update an agent's state, keeping its stored ``created_at`` (the one passed in is ignored).

        Args:
            session_id: The session.
            session_agent: The agent's new state.
            fields: Write only these ``SessionAgent`` fields (``updated_at`` always moves); by
                default all of them. The manager passes the ones that changed, so a turn that only
                moves the conversation window does not resend a large ``state``.
            **kwargs: Unused; Strands may add arguments.

        Raises:
            SessionNotFoundError: The session or agent does not exist.
        """
        validate_id(session_id, "session_id")
        agent_id = validate_id(session_agent.agent_id, "agent_id")
        path = f"agents.{encode_field_name(agent_id)}"
        values = agent_to_fields(session_agent)
        values.pop("created_at")
        if fields is not None:
            unknown = set(fields) - set(values)
            if unknown:
                raise SessionValidationError("fields", f"not updatable SessionAgent fields: {sorted(unknown)}")
            values = {name: value for name, value in values.items() if name in fields or name == "updated_at"}
        changes: dict[str, Any] = {f"{path}.{name}": value for name, value in values.items()}
        changes["updated_date"] = utc_now()
        with self._errors(session_id, "update agent", "session_agent", changes):
            result = self.collection.update_one({"_id": session_id, path: {"$exists": True}}, {"$set": changes})
        if result.matched_count == 0:
            raise SessionNotFoundError(f"session_id=<{session_id}>, agent_id=<{agent_id}> | agent does not exist")
        logger.debug("session_id=<%s>, agent_id=<%s> | agent updated", session_id, agent_id)

    # ------------------------------------------------------------------ messages

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Append a message to an agent.

        One atomic update that succeeds only if the agent has exactly ``message_id`` messages.

        Raises:
            SessionConflictError: Another writer appended first (the agent does not have exactly
                ``message_id`` messages). Nothing was written.
            SessionNotFoundError: The session or agent does not exist.
            SessionTooLargeError: The session document would exceed 16 MB. Nothing was written.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        message_id = validate_message_id(session_message.message_id)
        path = f"agents.{encode_field_name(agent_id)}"
        entry = message_to_entry(session_message)
        extras = _message_extras.get()
        if extras is not None and extras[0] is session_message.message:
            entry.update(extras[1])
        with self._errors(session_id, "append message", "session_message", entry):
            result = self.collection.update_one(
                {"_id": session_id, f"{path}.message_count": message_id},
                {
                    "$push": {f"{path}.messages": entry},
                    "$inc": {f"{path}.message_count": 1},
                    "$set": {"updated_date": utc_now()},
                },
            )
        if result.matched_count == 0:
            self._raise_append_failure(session_id, agent_id, message_id)
        logger.debug(
            "session_id=<%s>, agent_id=<%s>, message_id=<%s> | message appended", session_id, agent_id, message_id
        )

    def _raise_append_failure(self, session_id: str, agent_id: str, message_id: int) -> None:
        """Explain why a conditional append matched nothing (runs only on that failure path)."""
        path = f"agents.{encode_field_name(agent_id)}"
        with self._errors(session_id, "append message"):
            document = self.collection.find_one({"_id": session_id}, {f"{path}.message_count": 1})
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        stored = _dig(document, path)
        if stored is None:
            raise _missing(session_id, agent_id, document)
        count = stored.get("message_count")
        raise SessionConflictError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}> | cannot append message_id {message_id}: "
            f"the agent has {count} stored messages (another writer appended first); reload the session and retry"
        )

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        """Read one message; only that message is transferred."""
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        validate_message_id(message_id)
        path = f"agents.{encode_field_name(agent_id)}"
        with self._errors(session_id, "read message"):
            document = self.collection.find_one(
                {"_id": session_id},
                {f"{path}.messages": {"$slice": [message_id, 1]}, f"{path}.message_count": 1},
            )
        stored = _dig(document, path)
        if not stored or not stored.get("messages"):
            return None
        return entry_to_message(stored["messages"][0], session_id, agent_id, message_id)

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Replace a message's content and redaction, keeping its ``created_at``; moves ``updated_at``.

        The message array is never read: the entry is addressed with ``array_filters``.

        Raises:
            SessionNotFoundError: The session, agent or message does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        message_id = validate_message_id(session_message.message_id)
        updated_at = iso_now()
        fields = {
            "message": session_message.message,
            "redact_message": session_message.redact_message,
            "updated_at": updated_at,
        }
        self._set_entry_fields(session_id, agent_id, message_id, fields, "update message", "session_message")
        session_message.updated_at = updated_at
        logger.debug(
            "session_id=<%s>, agent_id=<%s>, message_id=<%s> | message updated", session_id, agent_id, message_id
        )

    def list_messages(
        self, session_id: str, agent_id: str, limit: int | None = None, offset: int = 0, **kwargs: Any
    ) -> list[SessionMessage]:
        """List an agent's messages in ``message_id`` order; only the requested page is transferred.

        Raises:
            SessionNotFoundError: The session or agent does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
            raise SessionValidationError("offset", f"must be a non-negative integer, got {offset!r}")
        if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
            raise SessionValidationError("limit", f"must be None or a non-negative integer, got {limit!r}")
        path = f"agents.{encode_field_name(agent_id)}"
        projection: dict[str, Any] = {f"{path}.message_count": 1}
        if limit != 0:
            projection[f"{path}.messages"] = {"$slice": [offset, limit if limit is not None else _SLICE_ALL]}
        with self._errors(session_id, "list messages"):
            document = self.collection.find_one({"_id": session_id}, projection)
        stored = _dig(document, path)
        if stored is None:
            raise _missing(session_id, agent_id, document)
        entries = stored.get("messages") or []
        return [entry_to_message(entry, session_id, agent_id, offset + i) for i, entry in enumerate(entries)]

    # ------------------------------------------------------------------ multi-agent

    def create_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Store a Graph's or Swarm's state in the session (overwriting any previous state).

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        multi_agent_id = validate_id(multi_agent.id, "multi_agent_id")
        now = iso_now()
        record = {"id": multi_agent_id, "state": multi_agent.serialize_state(), "created_at": now, "updated_at": now}
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        with self._errors(session_id, "create multi-agent", "multi_agent_state", record):
            result = self.collection.update_one(
                {"_id": session_id}, {"$set": {path: record, "updated_date": utc_now()}}
            )
        if result.matched_count == 0:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        logger.debug("session_id=<%s>, multi_agent_id=<%s> | multi-agent created", session_id, multi_agent_id)

    def read_multi_agent(self, session_id: str, multi_agent_id: str, **kwargs: Any) -> dict[str, Any] | None:
        """Return the stored state of a Graph or Swarm, or ``None``."""
        validate_id(session_id, "session_id")
        validate_id(multi_agent_id, "multi_agent_id")
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        with self._errors(session_id, "read multi-agent"):
            document = self.collection.find_one({"_id": session_id}, {f"{path}.state": 1})
        stored = _dig(document, path)
        return stored.get("state") if stored else None

    def update_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Replace the stored state of a Graph or Swarm.

        Raises:
            SessionNotFoundError: The session or the multi-agent state does not exist.
        """
        validate_id(session_id, "session_id")
        multi_agent_id = validate_id(multi_agent.id, "multi_agent_id")
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        changes: dict[str, Any] = {
            f"{path}.state": multi_agent.serialize_state(),
            f"{path}.updated_at": iso_now(),
            "updated_date": utc_now(),
        }
        with self._errors(session_id, "update multi-agent", "multi_agent_state", changes):
            result = self.collection.update_one({"_id": session_id, path: {"$exists": True}}, {"$set": changes})
        if result.matched_count == 0:
            raise SessionNotFoundError(
                f"session_id=<{session_id}>, multi_agent_id=<{multi_agent_id}> | multi-agent state does not exist"
            )
        logger.debug("session_id=<%s>, multi_agent_id=<%s> | multi-agent updated", session_id, multi_agent_id)

    # ------------------------------------------------------------------ fields beside messages

    def set_message_fields(self, session_id: str, agent_id: str, message_id: int, fields: Mapping[str, Any]) -> None:
        """Set extra fields (such as ``event_loop_metrics``) on a stored message, without reading the array.

        Raises:
            SessionValidationError: A field name collides with a ``SessionMessage`` field.
            SessionNotFoundError: The message does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        validate_message_id(message_id)
        for name in fields:
            validate_metadata_key(name)
            if name in MESSAGE_FIELDS:
                raise SessionValidationError("fields", f"{name!r} is a message field and cannot be set this way")
        self._set_entry_fields(session_id, agent_id, message_id, fields, "set message fields", "fields")

    def _set_entry_fields(
        self,
        session_id: str,
        agent_id: str,
        message_id: int,
        fields: Mapping[str, Any],
        operation: str,
        field: str,
    ) -> None:
        """``$set`` fields of one stored message, addressed with ``array_filters`` (the array is not read)."""
        path = f"agents.{encode_field_name(agent_id)}"
        changes: dict[str, Any] = {f"{path}.messages.$[m].{name}": value for name, value in fields.items()}
        changes["updated_date"] = utc_now()
        with self._errors(session_id, operation, field, changes):
            result = self.collection.update_one(
                {"_id": session_id, f"{path}.messages.message_id": message_id},
                {"$set": changes},
                array_filters=[{"m.message_id": message_id}],
            )
        if result.matched_count == 0:
            raise SessionNotFoundError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | message does not exist"
            )

    def get_message_metrics(self, session_id: str, agent_id: str) -> list[dict[str, Any]]:
        """Return ``[{"message_id", "event_loop_metrics"}, ...]`` for the agent's messages that carry metrics.

        Only the message ids and metrics are transferred, not the messages.

        Raises:
            SessionNotFoundError: The session or agent does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        path = f"agents.{encode_field_name(agent_id)}"
        with self._errors(session_id, "read message metrics"):
            document = self.collection.find_one(
                {"_id": session_id},
                {
                    f"{path}.message_count": 1,
                    f"{path}.messages.message_id": 1,
                    f"{path}.messages.event_loop_metrics": 1,
                },
            )
        stored = _dig(document, path)
        if stored is None:
            raise _missing(session_id, agent_id, document)
        return [
            {"message_id": entry.get("message_id"), "event_loop_metrics": entry["event_loop_metrics"]}
            for entry in stored.get("messages") or []
            if isinstance(entry, dict) and "event_loop_metrics" in entry
        ]

    # ------------------------------------------------------------------ metadata

    def update_metadata(self, session_id: str, metadata: Mapping[str, Any]) -> None:
        """Set the given metadata fields, leaving the others as they are.

        Raises:
            SessionValidationError: A key or value is refused (nothing is written).
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        validate_metadata(metadata)
        if not metadata:
            return
        changes: dict[str, Any] = {f"metadata.{key}": value for key, value in metadata.items()}
        changes["updated_date"] = utc_now()
        with self._errors(session_id, "update metadata", "metadata", changes):
            result = self.collection.update_one({"_id": session_id}, {"$set": changes})
        if result.matched_count == 0:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        logger.debug("session_id=<%s>, keys=<%s> | metadata updated", session_id, sorted(metadata))

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        """Return the session's metadata (``{}`` when none was set).

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        with self._errors(session_id, "read metadata"):
            document = self.collection.find_one({"_id": session_id}, {"metadata": 1})
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        metadata: dict[str, Any] = _aware_all(document.get("metadata") or {})
        return metadata

    def delete_metadata(self, session_id: str, keys: list[str]) -> None:
        """Remove the named metadata fields (absent ones are ignored).

        Raises:
            SessionValidationError: A key is refused (nothing is written).
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        keys = validate_metadata_keys(keys)
        if not keys:
            return
        with self._errors(session_id, "delete metadata"):
            result = self.collection.update_one(
                {"_id": session_id},
                {"$unset": {f"metadata.{key}": "" for key in keys}, "$set": {"updated_date": utc_now()}},
            )
        if result.matched_count == 0:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        logger.debug("session_id=<%s>, keys=<%s> | metadata deleted", session_id, keys)

    # ------------------------------------------------------------------ feedback

    def add_feedback(self, session_id: str, feedback: Mapping[str, Any]) -> dict[str, Any]:
        """Append a feedback entry, timestamped by the server.

        Args:
            session_id: The session.
            feedback: ``{"rating": "up" | "down" | None, "comment": str}``.

        Returns:
            The stored entry, ``{"rating", "comment", "created_at"}`` (``created_at`` a UTC datetime).

        Raises:
            SessionValidationError: The feedback is refused (nothing is written).
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        entry = validate_feedback(feedback)
        # A pipeline update, so that "$$NOW" (the server's clock) stamps the entry; "$literal" keeps
        # user text such as "$field" from being read as an expression.
        new_entry = {
            "rating": {"$literal": entry["rating"]},
            "comment": {"$literal": entry["comment"]},
            "created_at": "$$NOW",
        }
        pipeline = [
            {
                "$set": {
                    "feedbacks": {"$concatArrays": [{"$ifNull": ["$feedbacks", []]}, [new_entry]]},
                    "updated_date": "$$NOW",
                }
            }
        ]
        with self._errors(session_id, "add feedback", "feedback", entry):
            document = self.collection.find_one_and_update(
                {"_id": session_id},
                pipeline,
                projection={"feedbacks": {"$slice": -1}, "_id": 0},
                return_document=ReturnDocument.AFTER,
            )
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        logger.debug("session_id=<%s>, rating=<%s> | feedback added", session_id, entry["rating"])
        return _feedback_entry(document["feedbacks"][-1])

    def get_feedbacks(self, session_id: str) -> list[dict[str, Any]]:
        """Return the session's feedback entries, oldest first.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        with self._errors(session_id, "read feedback"):
            document = self.collection.find_one({"_id": session_id}, {"feedbacks": 1})
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        return [_feedback_entry(entry) for entry in document.get("feedbacks") or []]

    # ------------------------------------------------------------------ listing

    def list_sessions(
        self, metadata_filter: Mapping[str, Any] | None = None, limit: int = 100, after: str | None = None
    ) -> list[dict[str, Any]]:
        """List sessions in ``session_id`` order, optionally only those whose metadata matches.

        Pagination is stable: pass the last ``session_id`` of a page as ``after`` to get the next.

        Args:
            metadata_filter: ``{key: value}`` pairs that must all be equal to the session's metadata
                (values are compared as data, never interpreted as query operators).
            limit: Page size, 1 to 1000.
            after: Return only sessions whose id sorts after this one.

        Returns:
            Summaries: ``{"session_id", "session_type", "created_at", "updated_at", "last_activity",
            "metadata"}``; ``last_activity`` is the time of the last write to the session.
        """
        if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
            raise SessionValidationError("limit", "must be an integer from 1 to 1000", limit)
        query: dict[str, Any] = {}
        if metadata_filter:
            validate_metadata(dict(metadata_filter))
            query.update({f"metadata.{key}": {"$eq": value} for key, value in metadata_filter.items()})
        if after is not None:
            query["_id"] = {"$gt": validate_id(after, "after")}
        projection = {
            "session_id": 1,
            "session_type": 1,
            "created_at": 1,
            "updated_at": 1,
            "updated_date": 1,
            "metadata": 1,
        }
        with self._errors("-", "list sessions"):
            documents = list(self.collection.find(query, projection).sort("_id", ASCENDING).limit(limit))
        return [
            {
                "session_id": doc["_id"],
                "session_type": doc.get("session_type"),
                "created_at": doc.get("created_at"),
                "updated_at": doc.get("updated_at"),
                "last_activity": _aware(doc.get("updated_date")),
                "metadata": doc.get("metadata") or {},
            }
            for doc in documents
        ]


def _missing(session_id: str, agent_id: str, document: dict[str, Any] | None) -> SessionNotFoundError:
    """The not-found error for an agent lookup: say whether the session or only the agent is missing."""
    if document is None:
        return SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
    return SessionNotFoundError(f"session_id=<{session_id}>, agent_id=<{agent_id}> | agent does not exist")


def _dig(document: dict[str, Any] | None, path: str) -> Any:
    """Follow a dotted path of (already encoded) field names into a document; ``None`` if absent."""
    current: Any = document
    for part in path.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def _aware(value: Any) -> Any:
    """BSON dates come back naive (in UTC) unless the client is tz-aware: make them aware."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _aware_all(value: Any) -> Any:
    """:func:`_aware` applied throughout a decoded document."""
    if isinstance(value, dict):
        return {key: _aware_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_aware_all(item) for item in value]
    return _aware(value)


def _feedback_entry(entry: dict[str, Any]) -> dict[str, Any]:
    return {**entry, "created_at": _aware(entry.get("created_at"))}


def _is_bad_database_name(name: str) -> bool:
    """Whether MongoDB would refuse ``name`` as a database name."""
    return any(char in name for char in '/\\. "$\x00') or len(name.encode()) > 63


def _ttl_seconds(value: float | timedelta | None) -> int | None:
    """Normalise ``session_ttl`` to whole seconds (``None`` = no expiry)."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise SessionValidationError("session_ttl", "must be a positive number of seconds or a timedelta", value)
    return max(1, int(seconds))


def _bson_size(payload: Any) -> int | None:
    """Encoded size of what we tried to write, for error messages (computed only on failure)."""
    if payload is None:
        return None
    try:
        return len(bson.encode({"payload": payload}))
    except Exception:  # best effort: the size only decorates an error message
        return None

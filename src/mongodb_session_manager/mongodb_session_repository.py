"""``MongoDBSessionRepository``: Strands' ``SessionRepository`` over one MongoDB document per session.

This module holds the contract (Strands' methods and our extensions) and the client's lifecycle;
each method validates its input, encodes it, makes one call to the session store and logs. The
layers below, each in a module of its own:

* :mod:`._validation` and :mod:`._codec` / :mod:`._documents` check input and encode it;
* :mod:`._store` owns both collections and the guarded write every session update goes through
  (size estimate, overflow expiry, remedies and retries);
* :mod:`._overflow_io` owns what is stored outside the session document (moved messages, binary
  chunks) and reading across both places;
* :mod:`._pipelines` holds every filter, projection and aggregation they send (pure);
* :mod:`._indexes` ensures the indexes once per process and knows the TTL in force.

On the hot path every operation is one command: appending a message is one conditional ``$push``
(it succeeds only if the agent has exactly ``message_id`` messages, so writers never create
duplicate ids or holes); reading messages is one ``aggregate`` slicing the array on the server;
redacting a message uses ``array_filters``; reading a session or an agent projects the messages away.
Sessions that outgrow their document keep old messages and large binaries outside it, transparently.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Collection as Collection_
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import bson
from pymongo import MongoClient
from pymongo.collection import Collection
from pymongo.errors import InvalidName
from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage

from ._codec import MAX_MESSAGE_BYTES, decode_value, encode_entry, encode_value, same_message
from ._consistency import session_option
from ._documents import (
    AGENT_FIELDS,
    REMOVED_FIELD,
    agent_to_fields,
    dig,
    document_to_agent,
    document_to_session,
    encode_field_name,
    entry_to_message,
    iso_now,
    message_to_entry,
    missing_agent,
    session_missing,
    session_to_document,
    utc_now,
)
from ._encryption import (
    ENCRYPTED_AGENT_FIELDS,
    KEY_FIELD,
    ClientSideEncryption,
    Encryption,
    Sealer,
    data_key_name,
    encryption_for,
    open_entry,
    seal_entry,
)
from ._extensions import DEFAULT_REPAIR_GRACE, RepositoryExtensions
from ._extensions import extra_fields as checked_extra_fields
from ._indexes import ensure_session_indexes
from ._overflow import BlobRef, checked_descriptors, companions_expiry
from ._overflow_io import Collected, OverflowIO
from ._pipelines import encryption_state_pipeline, session_projection, snapshot_pipeline
from ._reader import BucketGone, Reader
from ._store import ARRAY_ENTRY, ATTEMPTS, ESTIMATE_FIELD, SessionStore, Write
from ._validation import (
    bounded_int,
    is_bad_database_name,
    non_empty_name,
    ttl_seconds,
    validate_id,
    validate_message_id,
    validate_page,
    validate_tenant_id,
)
from .errors import (
    MAX_DOCUMENT_SIZE,
    SessionConflictError,
    SessionEncryptionError,
    SessionNotFoundError,
    SessionValidationError,
)
from .mongodb_connection_pool import MongoDBConnectionPool, SharedClientLease, acquire_shared_client

if TYPE_CHECKING:
    from strands.multiagent.base import MultiAgentBase

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_BINARY_OFFLOAD_BYTES",
    "DEFAULT_COLLECTION_NAME",
    "DEFAULT_DATABASE_NAME",
    "DEFAULT_OVERFLOW_THRESHOLD_BYTES",
    "DEFAULT_REPAIR_GRACE",
    "MAX_DOCUMENT_SIZE",
    "MAX_MESSAGE_BYTES",
    "STORAGE_OPTIONS",
    "MongoDBSessionRepository",
]

DEFAULT_DATABASE_NAME = "strands_sessions"
DEFAULT_COLLECTION_NAME = "sessions"
#: Repository arguments that shape storage (outside the session document; the tenant scope); the
#: manager and the factory accept them too and pass them on.
STORAGE_OPTIONS = (
    "binary_offload_bytes",
    "overflow_threshold_bytes",
    "overflow_collection_name",
    "tenant_id",
    "encryption",
)
#: Binary values larger than this many bytes are stored outside the session document by default.
DEFAULT_BINARY_OFFLOAD_BYTES = 64 * 1024
#: Session document size at which the oldest messages start moving out, by default.
DEFAULT_OVERFLOW_THRESHOLD_BYTES = 128 * 1024
# Limits accepted for the two settings above.
_MIN_OVERFLOW_THRESHOLD = 16 * 1024
_MAX_OVERFLOW_THRESHOLD = 12 * 1024 * 1024


class MongoDBSessionRepository(RepositoryExtensions, SessionRepository):
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
            instant. ``None`` (the default) keeps sessions forever. What a session stores outside
            its document (below) expires with it.
        binary_offload_bytes: Binary values inside messages (images, documents) larger than this
            are stored in the overflow collection and referenced from the message; they come back
            as the same ``bytes``. Default 64 KiB (half the default overflow threshold: an image kept
            in the document would make every append rewrite it).
        overflow_threshold_bytes: When the session document would grow past this size, its oldest
            messages move, in order, into the overflow collection, so no conversation ever meets
            MongoDB's 16 MB document limit, and an append never makes the server rewrite a large
            document (its cost grows with the document). Messages the agent's conversation
            manager no longer holds move out too, in batches, whatever the size. Default 128 KiB
            (16 KiB to 12 MiB).
        overflow_collection_name: The companion collection; default ``"<collection_name>_overflow"``.
        tenant_id: Optional tenant (application) scope: part of every session's key and of every
            query, so repositories of two tenants sharing collections never see each other's
            sessions, even with equal session ids. ``None`` (the default): no tenant.
        encryption: Encrypt what users wrote before it reaches MongoDB (client-side field level
            encryption, one data key per session, deleted with the session): a
            :class:`~mongodb_session_manager.ClientSideEncryption`. ``None`` (the default) stores
            values as they are. The master key is checked here, before anything is written.
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
        binary_offload_bytes: int = DEFAULT_BINARY_OFFLOAD_BYTES,
        overflow_threshold_bytes: int = DEFAULT_OVERFLOW_THRESHOLD_BYTES,
        overflow_collection_name: str | None = None,
        tenant_id: str | None = None,
        encryption: ClientSideEncryption | None = None,
        **client_kwargs: Any,
    ) -> None:
        """Create the repository; see the class docstring for the arguments."""
        self.tenant_id = validate_tenant_id(tenant_id)
        self.session_ttl_seconds = ttl_seconds(session_ttl)
        self.binary_offload_bytes = bounded_int(
            binary_offload_bytes, "binary_offload_bytes", 1, MAX_MESSAGE_BYTES, DEFAULT_BINARY_OFFLOAD_BYTES
        )
        self.overflow_threshold_bytes = bounded_int(
            overflow_threshold_bytes,
            "overflow_threshold_bytes",
            _MIN_OVERFLOW_THRESHOLD,
            _MAX_OVERFLOW_THRESHOLD,
            DEFAULT_OVERFLOW_THRESHOLD_BYTES,
        )
        if overflow_collection_name is None and isinstance(collection_name, str):
            overflow_collection_name = f"{collection_name}_overflow"
        overflow_collection_name = non_empty_name(overflow_collection_name, "overflow_collection_name")
        if overflow_collection_name == collection_name:
            raise SessionValidationError(
                "overflow_collection_name", "must differ from collection_name", overflow_collection_name
            )
        self.database_name = non_empty_name(database_name, "database_name")
        self.collection_name = non_empty_name(collection_name, "collection_name")
        self.overflow_collection_name: str = overflow_collection_name
        self._lease: SharedClientLease | None = None
        self._closed = False
        self.encryption: Encryption | None = None
        if encryption is not None and not isinstance(encryption, ClientSideEncryption):
            raise SessionValidationError("encryption", "must be a ClientSideEncryption or None")
        self._client = self._acquire_client(connection_string, client, client_kwargs)
        try:
            # First: a wrong master key is refused before anything is written.
            self.encryption = encryption_for(encryption, self._client)
            collection, overflow = self._collections()
            expiry = ensure_session_indexes(
                collection, overflow, self.session_ttl_seconds, lambda ttl: companions_expiry(ttl, utc_now())
            )
            self._store = SessionStore(
                self._client, collection, overflow, self.overflow_threshold_bytes, expiry, self.tenant_id
            )
            self._store.encryption = self.encryption
            self._overflow = OverflowIO(self._store)
            self._reader = Reader(self._store)
        except BaseException:
            self.close()  # the caller gets no object to close: let go of the shared client now
            raise

    def _acquire_client(
        self, connection_string: str | None, client: MongoClient[Any] | None, client_kwargs: dict[str, Any]
    ) -> MongoClient[Any]:
        if client is not None:
            if client_kwargs:
                raise SessionValidationError(
                    "client_kwargs", "client options cannot be applied to a client passed in; configure that client"
                )
            return client
        if connection_string is not None:
            self._lease = acquire_shared_client(connection_string, **client_kwargs)
            return self._lease.client
        pooled = MongoDBConnectionPool.get_client()
        if pooled is None:
            raise SessionValidationError(
                "connection_string",
                "pass a connection_string or a client, or call MongoDBConnectionPool.initialize() first",
            )
        return pooled

    def _collections(self) -> tuple[Collection[dict[str, Any]], Collection[dict[str, Any]]]:
        try:
            collection: Collection[dict[str, Any]] = self._client[self.database_name][self.collection_name]
        except InvalidName as e:
            field = "database_name" if is_bad_database_name(self.database_name) else "collection_name"
            raise SessionValidationError(field, str(e)) from e
        try:
            overflow: Collection[dict[str, Any]] = self._client[self.database_name][self.overflow_collection_name]
        except InvalidName as e:
            raise SessionValidationError("overflow_collection_name", str(e)) from e
        return collection, overflow

    # ------------------------------------------------------------------ lifecycle

    @property
    def client(self) -> MongoClient[Any]:
        """The ``MongoClient`` in use (borrowed or shared)."""
        return self._client

    @property
    def owns_client(self) -> bool:
        """True when the repository created (a lease on) its client and :meth:`close` releases it."""
        return self._lease is not None

    @property
    def collection(self) -> Collection[dict[str, Any]]:
        """The sessions collection (settable, for test doubles: every command goes through it)."""
        return self._store.collection

    @collection.setter
    def collection(self, collection: Collection[dict[str, Any]]) -> None:
        self._store.collection = collection

    @property
    def overflow(self) -> Collection[dict[str, Any]]:
        """The overflow collection, moved messages and binary chunks (settable, like :attr:`collection`)."""
        return self._store.overflow

    @overflow.setter
    def overflow(self, overflow: Collection[dict[str, Any]]) -> None:
        self._store.overflow = overflow

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
            f"collection_name={self.collection_name!r}, tenant_id={self.tenant_id!r}, owns_client={self.owns_client})"
        )

    def session_key(self, session_id: str) -> Any:
        """The ``_id`` of a session's document under this repository's tenant (the session id itself
        without a tenant): for code that reads the documented layout directly."""
        return self._store.key(validate_id(session_id, "session_id"))

    def ensure_indexes(self) -> None:
        """Create the collection's indexes, once per collection per process (done when built)."""
        self._store.expiry = ensure_session_indexes(
            self.collection, self.overflow, self.session_ttl_seconds, lambda ttl: companions_expiry(ttl, utc_now())
        )

    # ------------------------------------------------------------------ encryption

    def _key_name(self, session_id: str) -> str:
        """The key alt name of the session's data key (see :func:`data_key_name`)."""
        tenant = getattr(self._store, "tenant_id", None)
        return data_key_name(session_id, tenant, namespace=f"{self.database_name}.{self.collection_name}")

    def _sealer(self, session_id: str) -> Sealer | None:
        """What encrypts the values of one write of the session (``None`` without encryption)."""
        if self.encryption is None:
            return None
        return self.encryption.sealer(
            self._key_name(session_id), session_id, on_missing=lambda: self._refuse_deleted_key(session_id)
        )

    def _refuse_deleted_key(self, session_id: str) -> None:
        """The session's data key is missing: refuse if the session had one (it was deleted), else let
        the session, written before encryption was turned on, get its key now."""
        document = self._store.find_one(
            session_id, {"_id": self._store.key(session_id)}, {KEY_FIELD: 1}, "read session key"
        )
        if document is None:
            raise session_missing(session_id)
        if document.get(KEY_FIELD) is not None:
            raise SessionEncryptionError(
                f"session_id=<{session_id}> | the session's data key was deleted (the session was deleted): this "
                "copy of it can be neither read nor written; nothing was written"
            )

    def _open(self, session_id: str, value: Any) -> Any:
        """A stored value, decrypted if it is ciphertext."""
        return value if self.encryption is None else self.encryption.open(session_id, value)

    def _open_agent(self, session_id: str, stored: dict[str, Any]) -> dict[str, Any]:
        """A stored agent sub-document with its encrypted fields decrypted."""
        if self.encryption is None:
            return stored
        return {
            **stored,
            **{name: self._open(session_id, stored[name]) for name in ENCRYPTED_AGENT_FIELDS if name in stored},
        }

    # The one-off migration's steps (``_migration.encrypt_session``).

    def _encryption_state(self, session_id: str) -> dict[str, Any]:
        """The session without its messages (one aggregate), for the one-off encryption."""
        documents = self._store.aggregate(
            session_id, encryption_state_pipeline(self._store.key(session_id)), "encrypt session"
        )
        if not documents:
            raise session_missing(session_id)
        return documents[0]

    def _encrypt_clear_fields(self, session_id: str) -> int:
        """Encrypt, in one guarded write, the session's fields other than messages still stored in clear."""
        from ._migration import clear_fields

        found = clear_fields(self._encryption_state(session_id))
        sealer = self._sealer(session_id)
        if not found or sealer is None:
            return 0
        changes: dict[str, Any] = {path: sealer.seal(value) for path, value in found}
        for path, value in found:  # the clear count beside an encrypted conversation-manager state
            if path.endswith(".conversation_manager_state") and isinstance(value, dict):
                removed = value.get("removed_message_count")
                if isinstance(removed, int) and not isinstance(removed, bool):
                    changes[f"{path.rsplit('.', 1)[0]}.{REMOVED_FIELD}"] = removed
        write = Write(
            {"_id": self._store.key(session_id)},
            {"$set": changes},
            "encrypt session",
            "session",
            payload=changes,
            **_fence(sealer),
        )
        if not self._store.write(session_id, write)[0]:
            raise session_missing(session_id)
        return len(found)

    def _agent_message_counts(self, session_id: str) -> dict[str, int]:
        """``{agent_id: message_count}`` of the session's agents."""
        agents = self._encryption_state(session_id).get("agents") or {}
        return {agent["agent_id"]: int(agent.get("message_count") or 0) for agent in agents.values()}

    def _rewrite_content(self, session_id: str, agent_id: str, message_id: int, entry: dict[str, Any]) -> None:
        """Store a message's content again, as it is (encrypted now), keeping its timestamps."""
        fields = {"message": entry["message"], "redact_message": entry.get("redact_message")}
        self._replace_content(session_id, agent_id, message_id, fields, "encrypt message")

    # ------------------------------------------------------------------ sessions

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        """Create a new session document.

        Raises:
            SessionConflictError: A session with this id already exists.
        """
        session_id = validate_id(session.session_id, "session_id")
        document = session_to_document(session, self.tenant_id)
        if self.encryption is not None:  # the session's data key, created with it (one insert in the key vault)
            document[KEY_FIELD] = self.encryption.create_key(self._key_name(session_id))
        document["size_estimate"] = len(bson.encode(document)) + ESTIMATE_FIELD
        exists = f"session_id=<{session_id}> | session already exists"
        with (
            self._store.causal(session_id) as causal,
            self._store.errors(session_id, "create session", "session", on_duplicate=exists),
        ):
            self.collection.insert_one(document, **session_option(causal))
        logger.debug("session_id=<%s> | session created", session_id)
        return session

    def read_session(self, session_id: str, **kwargs: Any) -> Session | None:
        """Read a session (without its agents, messages, metadata or feedback)."""
        validate_id(session_id, "session_id")
        document = self._store.find_one(
            session_id, {"_id": self._store.key(session_id)}, session_projection(), "read session"
        )
        return document_to_session(document) if document is not None else None

    def read_session_snapshot(self, session_id: str) -> tuple[Session, dict[str, SessionAgent]] | None:
        """Read a session and the state of all its agents (no messages, metadata or feedback) in one command.

        Returns:
            ``(session, {agent_id: agent})``, or ``None`` if the session does not exist.
        """
        snapshot = self.read_restore_snapshot(session_id, windows=False)
        return None if snapshot is None else (snapshot[0], snapshot[1])

    def read_restore_snapshot(
        self, session_id: str, windows: bool = True
    ) -> tuple[Session, dict[str, SessionAgent], dict[str, tuple[int, list[SessionMessage]]]] | None:
        """Everything a restore reads, in one command: the session, every agent's state, and each
        agent's window (the messages its conversation manager still holds, from the stored
        ``removed_message_count`` on) when all of it is in the session document.

        ``MongoDBSessionManager`` serves Strands' ``read_session``, ``read_agent`` and the restoring
        ``list_messages`` from it: a restore is one command (two when the window reaches moved
        messages or holds offloaded binaries).

        Returns:
            ``(session, {agent_id: agent}, {agent_id: (first message_id, messages)})`` (agents whose
            window is not all resident are absent from the last), or ``None`` if the session does not
            exist.
        """
        validate_id(session_id, "session_id")
        pipeline = snapshot_pipeline(self._store.key(session_id), windows=windows)
        documents = self._store.aggregate(session_id, pipeline, "read session")
        if not documents:
            return None
        document = documents[0]
        agents: dict[str, SessionAgent] = {}
        resident: dict[str, tuple[int, list[SessionMessage]]] = {}
        for stored in (document.get("agents") or {}).values():
            agent = document_to_agent(self._open_agent(session_id, stored), session_id)
            agents[agent.agent_id] = agent
            entries = self._snapshot_window(session_id, agent.agent_id, stored)
            if entries is None:
                continue
            first = stored["window_from"]
            resident[agent.agent_id] = (
                first,
                [entry_to_message(entry, session_id, agent.agent_id, first + i) for i, entry in enumerate(entries)],
            )
        return document_to_session(document), agents, resident

    def _snapshot_window(self, session_id: str, agent_id: str, stored: dict[str, Any]) -> list[dict[str, Any]] | None:
        """An agent's window from the restore snapshot, its moved part read from the buckets (one command)
        and binaries put back; ``None`` when it cannot be served from there (then ``list_messages`` reads it)."""
        window, first, count, moved = (stored.get(name) for name in ("window", "window_from", "message_count", "moved"))
        if not isinstance(first, int) or not isinstance(count, int) or not isinstance(moved, int):
            return None
        if not isinstance(window, list):
            return None
        entries: list[dict[str, Any]] = []
        if moved > first:
            descriptors = checked_descriptors(stored.get("buckets"), session_id, agent_id)
            try:
                entries = self._reader.moved_entries(session_id, agent_id, descriptors, first, moved - first)
            except BucketGone:  # replaced by a merge since the snapshot: list_messages reads again
                return None
        entries.extend(window)
        if len(entries) != max(0, count - first):
            return None  # not what the counter says: let list_messages read (and report) it
        return self._reader.decode_entries(session_id, entries) if entries else []

    def delete_session(self, session_id: str, **kwargs: Any) -> None:
        """Delete a session with all its agents, messages and multi-agent state.

        Messages moved out of the session document and binary content stored outside it are
        deleted too (after the session, so no reader ever sees a session missing its parts).

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        if self.encryption is not None:
            # The data key first: from here on no copy of the session's content can be decrypted.
            keys = self.encryption.delete_key(self._key_name(session_id))
            logger.debug("session_id=<%s>, keys=<%d> | data key deleted", session_id, keys)
        with self._store.errors(session_id, "delete session"):
            deleted = self.collection.find_one_and_delete(
                {"_id": self._store.key(session_id)}, projection={"companions": 1}
            )
            if deleted is None:
                raise session_missing(session_id)
            if deleted.get("companions"):
                removed = self.overflow.delete_many(self._store.owned(session_id)).deleted_count
                logger.debug("session_id=<%s>, documents=<%d> | overflow storage deleted", session_id, removed)
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
        sealer = self._sealer(session_id)
        fields = _seal_agent(sealer, agent_to_fields(session_agent))
        new_agent = {**fields, "message_count": 0, "messages": []}
        matched, _ = self._store.write(
            session_id,
            Write(
                {"_id": self._store.key(session_id), path: {"$exists": False}},
                {"$set": {path: new_agent, "updated_date": utc_now()}},
                "create agent",
                "session_agent",
                payload=new_agent,
                **_fence(sealer),
            ),
        )
        if not matched:
            # Either the session is missing or the agent exists already (rare): keep its messages.
            changes = {f"{path}.{name}": value for name, value in fields.items()}
            matched, _ = self._store.write(
                session_id,
                Write(
                    {"_id": self._store.key(session_id)},
                    {"$set": {**changes, "updated_date": utc_now()}},
                    "create agent",
                    "session_agent",
                    payload=fields,
                    **_fence(sealer),
                ),
            )
        if not matched:
            raise session_missing(session_id)
        logger.debug("session_id=<%s>, agent_id=<%s> | agent created", session_id, agent_id)

    def read_agent(self, session_id: str, agent_id: str, **kwargs: Any) -> SessionAgent | None:
        """Read an agent's state (not its messages)."""
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        path = f"agents.{encode_field_name(agent_id)}"
        projection = {f"{path}.{name}": 1 for name in AGENT_FIELDS}
        stored = dig(
            self._store.find_one(session_id, {"_id": self._store.key(session_id)}, projection, "read agent"), path
        )
        return document_to_agent(self._open_agent(session_id, stored), session_id) if stored else None

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
        sealer = self._sealer(session_id)
        values = _seal_agent(sealer, values)
        changes: dict[str, Any] = {f"{path}.{name}": value for name, value in values.items()}
        changes["updated_date"] = utc_now()
        write = Write(
            {"_id": self._store.key(session_id), path: {"$exists": True}},
            {"$set": changes},
            "update agent",
            "session_agent",
            payload=changes,
            **_fence(sealer),
        )
        if not self._store.write(session_id, write)[0]:
            raise SessionNotFoundError(f"session_id=<{session_id}>, agent_id=<{agent_id}> | agent does not exist")
        logger.debug("session_id=<%s>, agent_id=<%s> | agent updated", session_id, agent_id)

    # ------------------------------------------------------------------ messages

    def create_message(
        self,
        session_id: str,
        agent_id: str,
        session_message: SessionMessage,
        extra_fields: Mapping[str, Any] | None = None,
        agent_fields: Mapping[str, Any] | None = None,
        trimmed_before: int | None = None,
        **kwargs: Any,
    ) -> None:
        """Append a message to an agent.

        One atomic update that succeeds only if the agent has exactly ``message_id`` messages (and
        the document stays under the overflow threshold: otherwise old messages move out first).
        Binary values above ``binary_offload_bytes`` are stored outside the document beforehand.

        Appending is idempotent: if the agent already holds this very message at ``message_id``
        (same ``tracking_id``, or, for messages without one, the same content), for example because
        an earlier attempt was applied although it reported a failure (a timeout, a lost
        connection), the append succeeds without writing anything.

        Args:
            session_id: The session.
            agent_id: The agent.
            session_message: The message.
            extra_fields: Fields to store beside the message in the same command (the manager's
                ``event_loop_metrics``); never handed back to Strands. Their names must not be
                message fields.
            agent_fields: ``SessionAgent`` fields of the agent to set in the same command
                (``{"conversation_manager_state": ...}``: the manager saves the state the turn's
                trim will leave with the turn's last message, instead of in a command of its own);
                ``updated_at`` moves with them.
            trimmed_before: The agent's conversation manager no longer holds the messages before
                this id (its ``removed_message_count``): once ``MOVE_BATCH`` of them are still in the
                session document, this append moves them out first, all at once.
            **kwargs: Unused; Strands may add arguments.

        Raises:
            SessionConflictError: Another writer appended first: the agent holds a different
                message at ``message_id``, or fewer than ``message_id`` messages. Nothing was written.
            SessionNotFoundError: The session or agent does not exist.
            SessionTooLargeError: The message alone, with its large binaries moved out, is too
                large for a MongoDB document. Nothing was written.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        message_id = validate_message_id(session_message.message_id)
        extras = checked_extra_fields(extra_fields, encode=False)  # encoded with the entry
        sealer = self._sealer(session_id)
        state = _agent_changes(agent_fields, sealer)
        trimmed = None
        if trimmed_before is not None:
            trimmed = min(message_id, bounded_int(trimmed_before, "trimmed_before", 0, 2**62, 0))
        for _attempt in range(ATTEMPTS):
            entry = {**message_to_entry(session_message), **extras}
            blobs, size = encode_entry(session_id, entry, self.binary_offload_bytes, "append message")
            plain = dict(entry)  # what "already stored?" compares (stored content is decrypted for it)
            if sealer is not None:
                blobs, size = seal_entry(sealer, session_id, entry, blobs, "append message")
            op = self._overflow.store_blobs(session_id, blobs)
            try:
                append = _append(
                    self._store.key(session_id),
                    agent_id,
                    entry,
                    size,
                    op,
                    self.overflow_threshold_bytes,
                    state,
                    trimmed,
                )
                matched, _ = self._store.write(session_id, dataclasses.replace(append, **_fence(sealer)))
                stored = matched or self._settle_unmatched_append(session_id, agent_id, message_id, plain)
            except (SessionConflictError, SessionNotFoundError, SessionValidationError):
                # Certainly not appended (refused or not matched): its binaries are unreferenced.
                self._overflow.discard_unreferenced(session_id, blobs, op)
                raise
            if not matched:
                self._overflow.discard_unreferenced(session_id, blobs, op)  # stored earlier, or to retry
            if stored:
                logger.debug(
                    "session_id=<%s>, agent_id=<%s>, message_id=<%s> | %s",
                    session_id,
                    agent_id,
                    message_id,
                    "message appended" if matched else "message was already stored",
                )
                return
        raise SessionConflictError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}> | cannot append message_id {message_id}: "
            "the session kept changing under the append; retry"
        )

    def _settle_unmatched_append(
        self, session_id: str, agent_id: str, message_id: int, entry: Mapping[str, Any]
    ) -> bool:
        """Why a conditional append matched nothing (runs only on that failure path).

        Returns:
            True if the agent already holds this very message at ``message_id`` (see
            :meth:`create_message`); False if the append should simply be tried again (the counter
            is right: the record of its binaries was collected meanwhile).

        Raises:
            SessionNotFoundError: The session or agent does not exist.
            SessionConflictError: Another writer's message is at ``message_id``, or a hole would open.
        """
        path = f"agents.{encode_field_name(agent_id)}"
        document = self._store.find_one(
            session_id, {"_id": self._store.key(session_id)}, {f"{path}.message_count": 1}, "append message"
        )
        stored = dig(document, path)
        if stored is None:
            raise missing_agent(session_id, agent_id, document)
        count = stored.get("message_count")
        if count == message_id:
            return False
        if isinstance(count, int) and count > message_id:
            _, existing = self._reader.read_range(session_id, agent_id, message_id, 1, decode=False)
            if existing and same_message(open_entry(self.encryption, session_id, existing[0])[0], entry):
                return True
        raise SessionConflictError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}> | cannot append message_id {message_id}: "
            f"the agent has {count} stored messages (another writer appended first); reload the session and retry"
        )

    def read_message(self, session_id: str, agent_id: str, message_id: int, **kwargs: Any) -> SessionMessage | None:
        """Read one message; only that message is transferred."""
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        validate_message_id(message_id)
        agent, entries = self._reader.read_range(session_id, agent_id, message_id, 1)
        if not agent or not entries:
            return None
        return entry_to_message(entries[0], session_id, agent_id, message_id)

    def update_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Replace a message's content and redaction, keeping its ``created_at``; moves ``updated_at``.

        The message array is never read: the entry is addressed with ``array_filters``. The binaries
        the message held, and copies of this agent's messages that unfinished moves or merges left
        behind, are deleted: redacted content does not survive outside the document either.

        Raises:
            SessionNotFoundError: The session, agent or message does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        message_id = validate_message_id(session_message.message_id)
        updated_at = iso_now()
        fields: dict[str, Any] = {
            "message": session_message.message,
            "redact_message": session_message.redact_message,
            "updated_at": updated_at,
        }
        self._replace_content(session_id, agent_id, message_id, fields, "update message")
        session_message.updated_at = updated_at
        logger.debug(
            "session_id=<%s>, agent_id=<%s>, message_id=<%s> | message updated", session_id, agent_id, message_id
        )

    def _replace_content(
        self, session_id: str, agent_id: str, message_id: int, fields: dict[str, Any], operation: str
    ) -> None:
        """Store new content fields for a stored message, wherever it is, with its binaries; then delete
        the binaries it replaced (see :meth:`update_message`)."""
        sealer = self._sealer(session_id)
        for _attempt in range(ATTEMPTS):
            stored_fields = dict(fields)
            blobs, _ = encode_entry(session_id, stored_fields, self.binary_offload_bytes, operation)
            if sealer is not None:
                blobs, _ = seal_entry(sealer, session_id, stored_fields, blobs, operation)
            stored_fields.setdefault("blobs", [])
            op = self._overflow.store_blobs(session_id, blobs)
            try:
                old_refs, pending = self._overflow.update_entry(
                    session_id,
                    agent_id,
                    message_id,
                    stored_fields,
                    operation,
                    "session_message",
                    True,
                    op,
                    key_id=None if sealer is None else sealer.key_id,
                )
                break
            except Collected:
                self._overflow.discard_unreferenced(session_id, blobs, op)
            except (SessionNotFoundError, SessionValidationError):
                self._overflow.discard_unreferenced(session_id, blobs, op)
                raise
        else:
            raise SessionConflictError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | could not update "
                "the message: the session kept changing under the update; retry"
            )
        self._discard_replaced(session_id, agent_id, old_refs, blobs, pending, op)

    def _discard_replaced(
        self,
        session_id: str,
        agent_id: str,
        old_refs: list[BlobRef],
        written: list[tuple[BlobRef, bytes]],
        pending: list[Any],
        op: Any,
    ) -> None:
        """After an update: delete the binaries it really replaced (a merge racing it can make it apply
        twice, the second time over its own new values), and copies of this agent's messages that
        unfinished moves and merges left (whatever their age: one still in flight fails its commit on
        the update's edit anyway); other unfinished writes only once they are stale."""
        ours = {ref.blob_id for ref, _ in written}
        self._overflow.discard_blobs(
            session_id, list({ref.blob_id: ref for ref in old_refs if ref.blob_id not in ours}.values())
        )
        if pending:
            key = encode_field_name(agent_id)
            self._overflow.collect_pending(
                session_id,
                pending,
                any_age=lambda record: record.get("kind") == "buckets" and key in (record.get("agents") or []),
                own=op,
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
        validate_page(offset, limit)
        agent, entries = self._reader.read_range(session_id, agent_id, offset, limit)
        if not agent:
            raise missing_agent(session_id, agent_id, agent)
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
        state, _ = encode_value(multi_agent.serialize_state(), "multi_agent_state")
        sealer = self._sealer(session_id)
        if sealer is not None:
            state = sealer.seal(state)
        record = {"id": multi_agent_id, "state": state, "created_at": now, "updated_at": now}
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        write = Write(
            {"_id": self._store.key(session_id)},
            {"$set": {path: record, "updated_date": utc_now()}},
            "create multi-agent",
            "multi_agent_state",
            payload=record,
            **_fence(sealer),
        )
        if not self._store.write(session_id, write)[0]:
            raise session_missing(session_id)
        logger.debug("session_id=<%s>, multi_agent_id=<%s> | multi-agent created", session_id, multi_agent_id)

    def read_multi_agent(self, session_id: str, multi_agent_id: str, **kwargs: Any) -> dict[str, Any] | None:
        """Return the stored state of a Graph or Swarm, or ``None``."""
        validate_id(session_id, "session_id")
        validate_id(multi_agent_id, "multi_agent_id")
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        stored = dig(
            self._store.find_one(
                session_id, {"_id": self._store.key(session_id)}, {f"{path}.state": 1}, "read multi-agent"
            ),
            path,
        )
        return decode_value(self._open(session_id, stored.get("state"))) if stored else None

    def update_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Replace the stored state of a Graph or Swarm.

        Raises:
            SessionNotFoundError: The session or the multi-agent state does not exist.
        """
        validate_id(session_id, "session_id")
        multi_agent_id = validate_id(multi_agent.id, "multi_agent_id")
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        state = encode_value(multi_agent.serialize_state(), "multi_agent_state")[0]
        sealer = self._sealer(session_id)
        changes: dict[str, Any] = {
            f"{path}.state": state if sealer is None else sealer.seal(state),
            f"{path}.updated_at": iso_now(),
            "updated_date": utc_now(),
        }
        write = Write(
            {"_id": self._store.key(session_id), path: {"$exists": True}},
            {"$set": changes},
            "update multi-agent",
            "multi_agent_state",
            payload=changes,
            **_fence(sealer),
        )
        if not self._store.write(session_id, write)[0]:
            raise SessionNotFoundError(
                f"session_id=<{session_id}>, multi_agent_id=<{multi_agent_id}> | multi-agent state does not exist"
            )
        logger.debug("session_id=<%s>, multi_agent_id=<%s> | multi-agent updated", session_id, multi_agent_id)


def _agent_changes(agent_fields: Mapping[str, Any] | None, sealer: Sealer | None = None) -> tuple[dict[str, Any], int]:
    """The encoded (and, with ``sealer``, encrypted) agent fields an append also sets (see
    ``create_message``), and their size."""
    if not agent_fields:
        return {}, 0
    if not isinstance(agent_fields, Mapping):
        raise SessionValidationError("agent_fields", "must be a mapping of SessionAgent field names to values")
    unknown = set(agent_fields) - set(AGENT_FIELDS) | ({"agent_id", "created_at"} & set(agent_fields))
    if unknown:
        raise SessionValidationError("agent_fields", f"not updatable SessionAgent fields: {sorted(map(str, unknown))}")
    values = {name: encode_value(value, "agent_fields")[0] for name, value in agent_fields.items()}
    values["updated_at"] = iso_now()
    values = _seal_agent(sealer, values)
    return values, len(bson.encode(values))


def _append(
    session_key: Any,
    agent_id: str,
    entry: dict[str, Any],
    size: int,
    op: Any,
    threshold: int,
    state: tuple[dict[str, Any], int] = ({}, 0),
    trimmed: int | None = None,
) -> Write:
    """The append of ``entry`` (``size`` bytes encoded) to the session ``session_key``: guarded by the
    agent's counter, committing ``op``, setting the agent fields ``state`` (encoded, and their size) in
    the same update."""
    key = encode_field_name(agent_id)
    path = f"agents.{key}"
    query: dict[str, Any] = {"_id": session_key, f"{path}.message_count": entry["message_id"]}
    fields, fields_size = state
    update: dict[str, Any] = {
        "$push": {f"{path}.messages": entry},
        "$inc": {f"{path}.message_count": 1},
        "$set": {"updated_date": utc_now(), **{f"{path}.{name}": value for name, value in fields.items()}},
    }
    if op is not None:  # the append commits the binaries stored for it
        query["overflow_pending.op"] = op
        update["$pull"] = {"overflow_pending": {"op": op}}
    # The entry, its array index key and type byte; room for them, beyond which old messages move out.
    grows_by = size + ARRAY_ENTRY + fields_size
    return Write(
        query,
        update,
        "append message",
        "session_message",
        grows_by=grows_by,
        size_limit=threshold - grows_by,
        trimmed=None if trimmed is None else (key, trimmed),
    )


def _seal_agent(sealer: Sealer | None, fields: dict[str, Any]) -> dict[str, Any]:
    """An agent's stored fields with the encrypted ones sealed.

    The conversation manager's ``removed_message_count`` is also kept in clear beside them
    (``REMOVED_FIELD``): restores and moves read it on the server to know which messages the agent
    still holds, and a count of trimmed messages says nothing of what they said.
    """
    if sealer is None:
        return fields
    sealed = sealer.seal_fields(fields, ENCRYPTED_AGENT_FIELDS)
    if "conversation_manager_state" in fields:
        removed = (fields["conversation_manager_state"] or {}).get("removed_message_count")
        clear = removed if isinstance(removed, int) and not isinstance(removed, bool) else None
        sealed[REMOVED_FIELD] = clear
    return sealed


def _fence(sealer: Sealer | None) -> dict[str, Any]:
    """The key-fence arguments of a ``Write`` carrying values ``sealer`` encrypted."""
    if sealer is None or sealer.key_id is None:
        return {}
    return {"key_id": sealer.key_id, "key_created": sealer.created}

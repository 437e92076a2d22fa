"""``MongoDBSessionRepository``: Strands' ``SessionRepository`` over one MongoDB document per session.

The document layout is described in :mod:`mongodb_session_manager._documents`. Every operation is
one MongoDB command on the hot path:

* appending a message is a single conditional ``$push``: it succeeds only if the agent has exactly
  ``message_id`` messages stored, so two writers can never create duplicate ids or holes;
* reading messages is one ``aggregate`` that slices the array on the server, so only the requested
  messages travel;
* updating (redacting) a message uses ``array_filters``, so the array is never read;
* reading a session or an agent projects away the message arrays.

Nothing has to fit in 16 MB, though. Binary values above ``binary_offload_bytes`` are stored in a
companion collection and referenced from the message; when the session document nears
``overflow_threshold_bytes`` the oldest messages move, in order, into bucket documents of that
collection (see :mod:`mongodb_session_manager._overflow`). Short sessions never touch it: their
reads and writes are the single commands above.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from collections.abc import Collection as Collection_
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import bson
from bson.errors import InvalidDocument, InvalidStringData
from bson.objectid import ObjectId
from pymongo import ASCENDING, MongoClient, ReturnDocument
from pymongo.collection import Collection
from pymongo.errors import DocumentTooLarge, DuplicateKeyError, InvalidName, OperationFailure, PyMongoError
from strands.session.session_repository import SessionRepository
from strands.types.session import Session, SessionAgent, SessionMessage

from ._codec import decode_value, encode_value, same_message
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
from ._overflow import (
    BlobRef,
    assemble_blob,
    bucket_document,
    chunk_documents,
    entry_size,
    find_references,
    max_buckets,
    plan_merges,
    plan_moves,
    split_into_buckets,
)
from .errors import (
    MongoDBSessionError,
    SessionConflictError,
    SessionNotFoundError,
    SessionStorageError,
    SessionTooLargeError,
    SessionValidationError,
)
from .mongodb_connection_pool import (
    MongoDBConnectionPool,
    SharedClientLease,
    acquire_shared_client,
    describe_failure,
)

if TYPE_CHECKING:
    from strands.multiagent.base import MultiAgentBase

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_COLLECTION_NAME", "DEFAULT_DATABASE_NAME", "STORAGE_OPTIONS", "MongoDBSessionRepository"]

DEFAULT_DATABASE_NAME = "strands_sessions"
DEFAULT_COLLECTION_NAME = "sessions"

#: MongoDB's maximum BSON document size.
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024
# Server error codes for "the resulting document would be too large".
_TOO_LARGE_CODES = frozenset({10334, 17419, 17420, 13548})
# $slice needs a positive count; this stands for "all the rest".
_SLICE_ALL = 2**31 - 1

#: Repository arguments that shape storage outside the session document; the manager and the
#: factory accept them too and pass them on.
STORAGE_OPTIONS = ("binary_offload_bytes", "overflow_threshold_bytes", "overflow_collection_name")
#: Binary values larger than this many bytes are stored outside the session document by default.
DEFAULT_BINARY_OFFLOAD_BYTES = 256 * 1024
#: Session document size at which the oldest messages start moving out, by default.
DEFAULT_OVERFLOW_THRESHOLD_BYTES = 4 * 1024 * 1024
# Limits accepted for the two settings above.
_MIN_OVERFLOW_THRESHOLD = 16 * 1024
_MAX_OVERFLOW_THRESHOLD = 12 * 1024 * 1024
# Largest stored message entry (after binaries moved out): what fits in a document with room to spare.
MAX_MESSAGE_BYTES = MAX_DOCUMENT_SIZE - 16 * 1024
# Fields the repository itself keeps beside a stored message.
_ENTRY_BOOKKEEPING = frozenset({"blobs"})
# Times a move of old messages is retried when another writer changed the agent meanwhile.
_MOVE_ATTEMPTS = 5
# Unfinished overflow writes (see _begin_overflow_write) older than this are taken for leftovers of a
# crash and collected by the next move or redaction; younger ones may still be in flight.
_STALE_PENDING = timedelta(seconds=60)
# How long a process trusts what it read of the collection's TTL before reading it again (another
# process may change it at any time; writes also notice a change on the session they write).
_EXPIRY_RECHECK_SECONDS = 60.0
#: ``repair_session`` deletes documents nothing refers to only once they are this old: younger ones
#: may belong to a write still in flight.
DEFAULT_REPAIR_GRACE = timedelta(minutes=10)


@dataclass
class _ExpiryView:
    """The TTL in force on a sessions collection as this process last read it (shared by its repositories)."""

    seconds: int | None
    checked: float = dataclasses.field(default_factory=time.monotonic)


_index_lock = threading.Lock()
# (deployment, database, collection, configured TTL) -> TTL in force on the collection.
_indexed_collections: dict[tuple[Any, ...], _ExpiryView] = {}
_overflow_indexed: set[tuple[Any, ...]] = set()

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
            instant. ``None`` (the default) keeps sessions forever. What a session stores outside
            its document (below) expires with it.
        binary_offload_bytes: Binary values inside messages (images, documents) larger than this
            are stored in the overflow collection and referenced from the message; they come back
            as the same ``bytes``. Default 256 KiB.
        overflow_threshold_bytes: When the session document would grow past this size, its oldest
            messages move, in order, into the overflow collection, so no conversation ever meets
            MongoDB's 16 MB document limit. Default 4 MiB (16 KiB to 12 MiB).
        overflow_collection_name: The companion collection; default ``"<collection_name>_overflow"``.
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
        **client_kwargs: Any,
    ) -> None:
        """Create the repository; see the class docstring for the arguments."""
        self.session_ttl_seconds = _ttl_seconds(session_ttl)
        self.binary_offload_bytes = _bounded_int(
            binary_offload_bytes, "binary_offload_bytes", 1, MAX_MESSAGE_BYTES, DEFAULT_BINARY_OFFLOAD_BYTES
        )
        self.overflow_threshold_bytes = _bounded_int(
            overflow_threshold_bytes,
            "overflow_threshold_bytes",
            _MIN_OVERFLOW_THRESHOLD,
            _MAX_OVERFLOW_THRESHOLD,
            DEFAULT_OVERFLOW_THRESHOLD_BYTES,
        )
        if overflow_collection_name is None and isinstance(collection_name, str):
            overflow_collection_name = f"{collection_name}_overflow"
        if not isinstance(overflow_collection_name, str) or not overflow_collection_name:
            raise SessionValidationError("overflow_collection_name", "must be a non-empty string")
        if overflow_collection_name == collection_name:
            raise SessionValidationError(
                "overflow_collection_name", "must differ from collection_name", overflow_collection_name
            )
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
        self.overflow_collection_name = overflow_collection_name
        self._closed = False
        # TTL in force on the collection, which what a session stores outside its document must follow.
        self._expiry = _ExpiryView(self.session_ttl_seconds)
        try:
            try:
                self.collection: Collection[dict[str, Any]] = self._client[database_name][collection_name]
            except InvalidName as e:
                field = "database_name" if _is_bad_database_name(database_name) else "collection_name"
                raise SessionValidationError(field, str(e)) from e
            try:
                self.overflow: Collection[dict[str, Any]] = self._client[database_name][overflow_collection_name]
            except InvalidName as e:
                raise SessionValidationError("overflow_collection_name", str(e)) from e
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

    @property
    def _expiry_seconds(self) -> int | None:
        """The TTL in force on the collection as last read (``None``: sessions never expire)."""
        return self._expiry.seconds

    def ensure_indexes(self) -> None:
        """Create the collection's indexes, once per collection per process."""
        key = (_client_identity(self._client), self.database_name, self.collection_name, self.session_ttl_seconds)
        if key in _indexed_collections:
            self._expiry = _indexed_collections[key]
            return
        with _index_lock:
            if key in _indexed_collections:
                self._expiry = _indexed_collections[key]
                return
            with self._errors(None, "create indexes"):
                self.collection.create_index([("created_date", ASCENDING)], name="created_date_1")
                self._expiry = _ExpiryView(self._ensure_activity_index())
            _indexed_collections[key] = self._expiry
            logger.debug("database=<%s>, collection=<%s> | indexes ensured", self.database_name, self.collection_name)

    def _refresh_expiry(self, session_id: str) -> None:
        """Read the collection's TTL again: another process may have changed it since we last looked."""
        with self._errors(session_id, "read session expiry"):
            seconds = self._read_activity_ttl()
        if seconds != self._expiry.seconds:
            logger.info(
                "collection=<%s>, ttl_seconds=<%s> | session expiry changed by another configuration",
                self.collection_name,
                seconds,
            )
        self._expiry.seconds, self._expiry.checked = seconds, time.monotonic()

    def _read_activity_ttl(self) -> int | None:
        """The ``expireAfterSeconds`` of the ``updated_date`` index (``None``: no TTL)."""
        for spec in self.collection.list_indexes():
            if dict(spec.get("key", {})) == {"updated_date": 1} and "expireAfterSeconds" in spec:
                return int(spec["expireAfterSeconds"])
        return None

    def _ensure_activity_index(self) -> int | None:
        """Index ``updated_date``; with a TTL when ``session_ttl`` is set (changed in place if it differs).

        Returns:
            The TTL in force on the collection, in seconds (``None``: sessions never expire).
        """
        if self.session_ttl_seconds is None:
            try:
                self.collection.create_index([("updated_date", ASCENDING)], name="updated_date_1")
            except OperationFailure as e:
                if e.code not in (85, 86):
                    raise
                # The index exists with a TTL set by another configuration: keep it. Turning expiry
                # off is a deliberate act (collMod), not a side effect of omitting session_ttl. What
                # this repository stores outside session documents must then expire with them.
                return self._read_activity_ttl()
            return None
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
            # Overflow documents carry their own expiry dates, computed from the old TTL: move them
            # all to one that outlives any session under the new TTL (see _extend_companions). The
            # sessions first: recording the new TTL on them makes every process still writing under
            # the old one notice it at its next write to them (and extend what it wrote meanwhile).
            until = self._companions_expiry(self.session_ttl_seconds)
            self.collection.update_many(
                {"companions": True},
                {
                    "$set": {"companions_until": until, "companions_ttl": self.session_ttl_seconds},
                    "$inc": {"size_estimate": 64},
                },
            )
            self.overflow.update_many({}, {"$set": {"expire_at": until}})
            logger.info(
                "collection=<%s>, ttl_seconds=<%s> | session expiry changed",
                self.collection_name,
                self.session_ttl_seconds,
            )
        return self.session_ttl_seconds

    def _ensure_overflow_indexes(self) -> None:
        """Index the overflow collection (by session, and its expiry), once per process, before its first write."""
        key = (_client_identity(self._client), self.database_name, self.overflow_collection_name)
        if key in _overflow_indexed:
            return
        with _index_lock:
            if key in _overflow_indexed:
                return
            with self._errors(None, "create overflow indexes"):
                self.overflow.create_index([("session_id", ASCENDING)], name="session_id_1")
                self.overflow.create_index([("expire_at", ASCENDING)], name="expire_at_1", expireAfterSeconds=0)
            _overflow_indexed.add(key)

    # ------------------------------------------------------------------ errors

    @contextlib.contextmanager
    def _errors(
        self, session_id: str | None, operation: str, field: str = "value", payload: Any = None
    ) -> Iterator[None]:
        """Translate driver exceptions into ours, chained with ``from``."""
        try:
            yield
        except MongoDBSessionError:
            raise
        except DocumentTooLarge as e:  # a subclass of InvalidDocument: test it first
            raise SessionTooLargeError(session_id or "-", _bson_size(payload), MAX_DOCUMENT_SIZE, operation) from e
        except (InvalidDocument, InvalidStringData, OverflowError, ValueError, RecursionError) as e:
            # ValueError: text that is not valid UTF-8 (lone surrogates), a uuid.UUID without a
            # configured representation, and other values bson refuses. RecursionError: nesting the
            # encoder cannot follow (the value codec refuses it earlier; this is the safety net).
            raise SessionValidationError(field, f"cannot be stored in MongoDB ({operation}): {e}") from e
        except OperationFailure as e:
            if e.code in _TOO_LARGE_CODES:
                raise SessionTooLargeError(session_id or "-", _bson_size(payload), MAX_DOCUMENT_SIZE, operation) from e
            raise SessionStorageError(self._failure(session_id, operation, e)) from e
        except PyMongoError as e:
            raise SessionStorageError(self._failure(session_id, operation, e)) from e

    def _failure(self, session_id: str | None, operation: str, error: PyMongoError) -> str:
        """The message of a storage error: a readable line when the server could not be reached or
        refused us, otherwise what failed and pymongo's reason."""
        where = f"session_id=<{session_id}> | " if session_id else ""
        readable = describe_failure(self._client, error)
        if readable is not None:
            return where + readable
        return f"{where}{operation} failed: {error}"

    # ------------------------------------------------------------------ storage outside the document

    def _companions_expiry(self, ttl: int | None = None) -> datetime | None:
        """Expiry date for overflow documents written now: they outlive their session by a margin.

        A session expires ``ttl`` after its last write. Its overflow documents carry their own
        ``expire_at`` (TTL index, ``expireAfterSeconds=0``), set to ``now + ttl + 3 * margin``, and
        the session records the earliest of them in ``companions_until``. Every write to the
        session requires ``companions_until >= now + ttl + margin`` (a filter condition, so it costs
        nothing while it holds); when it fails they are all pushed forward first. Overflow documents
        therefore never expire before their session, and linger at most ``3 * margin`` after it.
        """
        ttl = self._expiry_seconds if ttl is None else ttl
        if ttl is None:
            return None
        return utc_now() + timedelta(seconds=ttl + 3 * _expiry_margin(ttl))

    def _companions_deadline(self) -> datetime | None:
        if self._expiry_seconds is None:
            return None
        return utc_now() + timedelta(seconds=self._expiry_seconds + _expiry_margin(self._expiry_seconds))

    def _begin_overflow_write(
        self, session_id: str, kind: str, docs: list[Any], expire_at: datetime | None, agents: Collection_[str] = ()
    ) -> ObjectId:
        """Record on the session, before writing overflow documents, what is about to be written.

        The record (an entry of ``overflow_pending``) makes every write to the overflow collection
        crash-safe: the write that makes the new documents part of the session (the *commit*: an
        append, a move, a merge, a redaction) requires the record to be there and removes it in the
        same update. A record still present therefore means its documents are not part of the
        session; if it outlives its writer (a crash, a lost connection) the next move or redaction
        of the session, or :meth:`repair_session`, takes it and deletes its documents. Taking a
        record first removes it, so a writer still in flight cannot commit afterwards: it finds its
        record gone, deletes what it wrote and starts again.

        The same update marks the session as having overflow documents and keeps their expiry ahead
        of the session's (see :meth:`_companions_expiry`).

        Args:
            kind: ``"buckets"`` (copies of messages: moves and merges) or ``"blobs"`` (chunks of
                binary values).
            docs: ``_id`` of every document about to be written.
            expire_at: Their expiry date (``None`` when sessions never expire).
            agents: The agents (field names) whose messages buckets copy.

        Returns:
            The record's id, for the commit's filter and update.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        if time.monotonic() - self._expiry.checked > _EXPIRY_RECHECK_SECONDS:
            self._refresh_expiry(session_id)
            expire_at = self._companions_expiry()
        op = ObjectId()
        record: dict[str, Any] = {"op": op, "kind": kind, "docs": docs}
        if agents:
            record["agents"] = list(agents)
        update: dict[str, Any] = {
            "$set": {"companions": True, "companions_ttl": self._expiry_seconds},
            "$push": {"overflow_pending": record},
        }
        if expire_at is not None:
            update["$min"] = {"companions_until": expire_at}
        matched, _ = self._write_session(
            session_id, {"_id": session_id}, update, operation="prepare overflow storage", payload=record
        )
        if not matched:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        self._ensure_overflow_indexes()
        return op

    def _end_overflow_write(self, session_id: str, op: ObjectId) -> bool:
        """Remove an overflow write's record (its documents are committed or deleted).

        Returns:
            False if the record was gone already: the collector took it (and may have deleted its
            documents).
        """
        with self._errors(session_id, "finish overflow write"):
            result = self.collection.update_one({"_id": session_id}, {"$pull": {"overflow_pending": {"op": op}}})
        return result.modified_count > 0

    def _collect_pending(
        self,
        session_id: str,
        records: Any,
        *,
        older_than: timedelta = _STALE_PENDING,
        any_age: Callable[[dict[str, Any]], bool] | None = None,
        own: ObjectId | None = None,
    ) -> int:
        """Take unfinished overflow writes' records and delete their documents (see :meth:`_begin_overflow_write`).

        Args:
            records: The session's ``overflow_pending`` entries, as some earlier read returned them.
            older_than: Take only records at least this old (younger writes may still be in flight).
            any_age: Which records to take whatever their age.
            own: The caller's own record, never taken.

        Returns:
            How many records were taken.
        """
        taken = 0
        now = utc_now()
        for record in records or []:
            op = record.get("op") if isinstance(record, dict) else None
            if not isinstance(op, ObjectId) or op == own:
                continue
            if now - op.generation_time < older_than and not (any_age is not None and any_age(record)):
                continue
            docs = [doc for doc in record.get("docs") or [] if doc is not None]
            with self._errors(session_id, "collect unfinished overflow writes"):
                # Take the record first: a writer still in flight then cannot commit these documents.
                result = self.collection.update_one(
                    {"_id": session_id, "overflow_pending.op": op}, {"$pull": {"overflow_pending": {"op": op}}}
                )
                if result.modified_count and docs:
                    self.overflow.delete_many({"_id": {"$in": docs}, "session_id": session_id})
            if result.modified_count:
                taken += 1
                logger.debug(
                    "session_id=<%s>, kind=<%s>, documents=<%d> | unfinished overflow write collected",
                    session_id,
                    record.get("kind"),
                    len(docs),
                )
        return taken

    def _extend_companions(self, session_id: str) -> None:
        """Push the expiry of a session's overflow documents forward (an active session keeps them).

        Also records on the session the TTL the new expiry follows, so that a process still writing
        under another TTL notices at its next write (see :meth:`_write_session`).
        """
        until = self._companions_expiry()
        with self._errors(session_id, "extend overflow expiry"):
            if until is None:  # no TTL any more: what is outside the document must not expire either
                self.overflow.update_many({"session_id": session_id}, {"$unset": {"expire_at": ""}})
                self.collection.update_one(
                    {"_id": session_id}, {"$unset": {"companions_until": ""}, "$set": {"companions_ttl": None}}
                )
            else:
                self.overflow.update_many({"session_id": session_id}, {"$max": {"expire_at": until}})
                self.collection.update_one(
                    {"_id": session_id},
                    {"$max": {"companions_until": until}, "$set": {"companions_ttl": self._expiry_seconds}},
                )
        logger.debug("session_id=<%s> | overflow expiry extended", session_id)

    def _write_session(
        self,
        session_id: str,
        query: dict[str, Any],
        update: Any,
        *,
        operation: str,
        field: str = "value",
        payload: Any = None,
        array_filters: list[dict[str, Any]] | None = None,
        size_limit: int | None = None,
        returning: dict[str, Any] | None = None,
        return_document: bool = ReturnDocument.AFTER,
        growth: int | None = None,
    ) -> tuple[bool, dict[str, Any] | None]:
        """One update of the session document, keeping what is stored outside it consistent.

        Every write adds the encoded size of what it writes (``payload``) to the document's
        ``size_estimate``, an upper bound of the document's size (moves and calibrations bring it
        back to the measured size). Conditions ride in the filter, on plain fields, and cost nothing
        while they hold: the session's overflow documents must have been given their expiry under
        the TTL this process knows (``companions_ttl``: another process may have changed the TTL)
        and must not expire before the session (when sessions expire); and, for appends
        (``size_limit``), the estimate must leave room under the overflow threshold. When the update
        matches nothing, one read tells whether a condition was the reason; the remedy (read the TTL
        again and extend the expiry; move old messages out, or correct an estimate that was too
        cautious) runs and the update is retried. A write the server refuses as too large is retried
        once after moving old messages out.

        Args:
            growth: What the write adds to the document, in bytes, when the caller knows it better
                than the encoded ``payload`` (an append: the entry and its array index).

        Returns:
            ``(matched, document)``; ``document`` is the ``returning`` projection of the document
            (before or after, per ``return_document``) when ``returning`` is given.
        """
        update = _with_growth(update, growth if growth is not None else _bson_size(payload) or 0)
        extended = compacted = False
        unexplained = 0
        while True:
            filter_ = dict(query)
            filter_["companions_ttl"] = {"$in": [None, self._expiry_seconds]}
            deadline = self._companions_deadline()
            if deadline is not None:
                filter_["companions_until"] = {"$not": {"$lt": deadline}}
            if size_limit is not None and not compacted:
                # A plain field, not $expr: a filter of plain fields is found by _id on any server.
                filter_["size_estimate"] = {"$not": {"$gt": size_limit}}
            try:
                with self._errors(session_id, operation, field, payload):
                    if returning is None:
                        result = self.collection.update_one(filter_, update, array_filters=array_filters)
                        matched, document = result.matched_count > 0, None
                    else:
                        document = self.collection.find_one_and_update(
                            filter_,
                            update,
                            projection=returning,
                            array_filters=array_filters,
                            return_document=return_document,
                        )
                        matched = document is not None
            except SessionTooLargeError as e:
                if compacted or isinstance(e.__cause__, DocumentTooLarge) or not self._move_old_messages(session_id):
                    raise
                compacted = True
                continue
            if matched:
                return True, document
            state = self._storage_state(session_id, measure=size_limit is not None and not compacted)
            if state is None:
                return False, None
            retry = False
            if state.companions_ttl not in (None, self._expiry_seconds):
                # Another process changed the collection's TTL: follow it, and give what this
                # session keeps outside its document (ours included) an expiry under it.
                self._refresh_expiry(session_id)
                self._extend_companions(session_id)
                extended = retry = True
            until = state.companions_until
            deadline = self._companions_deadline()
            if deadline is not None and not extended and until is not None and _aware(until) < deadline:
                self._extend_companions(session_id)
                extended = retry = True
            if state.size is not None and size_limit is not None and (state.estimate or 0) > size_limit:
                # Close to the limit (the estimate runs a little ahead of the size), moving now saves
                # a correction followed by a move at the next append.
                if state.size > size_limit - max(1024, self.overflow_threshold_bytes // 64):
                    # Make room for what this write adds, and at least down to half the threshold.
                    target = max(0, min(size_limit, self.overflow_threshold_bytes // 2))
                    self._move_old_messages(session_id, target=target)
                else:
                    self._correct_estimate(session_id, state.size, state.estimate)
                compacted = retry = True  # retried without the size condition: it may not fit below it
            if not retry:
                # Our conditions hold now. If the caller's own do too, another writer fixed what
                # failed in the meantime (moved messages, extended the expiry): try again.
                with self._errors(session_id, operation):
                    if self.collection.find_one(query, {"_id": 1}) is None or unexplained >= _MOVE_ATTEMPTS:
                        return False, None
                unexplained += 1

    def _storage_state(self, session_id: str, measure: bool) -> _StorageState | None:
        """The session document's size estimate and overflow expiry; with ``measure``, its size too
        (one small aggregate; otherwise a find of three fields)."""
        fields = {"_id": 0, "size_estimate": 1, "companions_until": 1, "companions_ttl": 1}
        with self._errors(session_id, "read session size"):
            if measure:
                pipeline: list[dict[str, Any]] = [
                    {"$match": {"_id": session_id}},
                    {"$project": {**fields, "size": {"$bsonSize": "$$ROOT"}}},
                ]
                documents = list(self.collection.aggregate(pipeline))
                document = documents[0] if documents else None
            else:
                document = self.collection.find_one({"_id": session_id}, fields)
        if document is None:
            return None
        return _StorageState(
            int(document["size"]) if measure else None,
            document.get("size_estimate"),
            document.get("companions_until"),
            document.get("companions_ttl"),
        )

    def _correct_estimate(self, session_id: str, size: int, estimate: int | None) -> None:
        """Bring ``size_estimate`` down to the measured size (writes since the measure keep their share)."""
        with self._errors(session_id, "correct size estimate"):
            self.collection.update_one({"_id": session_id}, {"$inc": {"size_estimate": size - (estimate or 0)}})

    def _move_old_messages(self, session_id: str, target: int | None = None) -> bool:
        """Move the oldest messages out of the session document until it is at ``target`` bytes.

        ``target`` defaults to half the overflow threshold, so moves happen once per half-threshold
        of appends rather than at every append.

        Copy, then commit: the messages are read, written into new bucket documents, and only then
        removed from the session document, by one update that also records the buckets. That
        update matches only if no other writer moved or edited the agents' resident messages in
        the meantime (``overflow_count`` and ``edits`` unchanged); otherwise its buckets are
        deleted and the move is planned again. Appends never conflict with it: they add at the
        end, the move removes from the front.

        Returns:
            True if the document is now at or below the target (by this move or another writer's).

        Raises:
            SessionConflictError: Other writers kept changing the agents' messages.
        """
        if target is None:
            target = self.overflow_threshold_bytes // 2
        for attempt in range(_MOVE_ATTEMPTS):
            layout = self._message_layout(session_id)
            if layout is None:
                return False
            size, estimate, resident_sizes, pending = layout
            if attempt == 0 and pending:
                self._collect_pending(session_id, pending)  # leftovers of a crash, if any
            if size <= target:
                return True
            plan = plan_moves(resident_sizes, size - target)
            if not plan:
                return False
            projection: dict[str, Any] = {}
            for key, count in plan.items():
                projection[f"agents.{key}.messages"] = {"$slice": [0, count]}
                projection[f"agents.{key}.agent_id"] = 1
                projection[f"agents.{key}.overflow_count"] = 1
                projection[f"agents.{key}.edits"] = 1
                projection[f"agents.{key}.overflow.id"] = 1
            with self._errors(session_id, "read messages to move"):
                document = self.collection.find_one({"_id": session_id}, projection)
            if document is None:
                return False
            expire_at = self._companions_expiry()
            buckets: list[dict[str, Any]] = []
            crowded: list[str] = []
            condition: dict[str, Any] = {"_id": session_id}
            # The estimate becomes the measured size, less what moves out, plus the descriptors.
            update: dict[str, Any] = {"$pull": {}, "$inc": {"size_estimate": size - estimate + 64}, "$push": {}}
            for key in plan:
                stored = document["agents"][key]
                moved_before = int(stored.get("overflow_count") or 0)
                edits = int(stored.get("edits") or 0)
                entries = stored.get("messages") or []
                for index, entry in enumerate(entries):
                    if entry.get("message_id") != moved_before + index:
                        raise SessionStorageError(
                            f"session_id=<{session_id}>, agent_id=<{stored.get('agent_id')}> | stored history is "
                            f"not contiguous at message_id {moved_before + index}"
                        )
                descriptors = []
                sizes = [entry_size(entry) for entry in entries]
                for start, count in split_into_buckets(sizes):
                    bucket, descriptor = bucket_document(
                        session_id,
                        stored.get("agent_id"),
                        moved_before + start,
                        entries[start : start + count],
                        sum(sizes[start : start + count]),
                        expire_at,
                    )
                    buckets.append(bucket)
                    descriptors.append(descriptor)
                if len(stored.get("overflow") or []) + len(descriptors) > max_buckets(self.overflow_threshold_bytes):
                    crowded.append(key)
                path = f"agents.{key}"
                condition[f"{path}.overflow_count"] = _counter_is(moved_before)
                condition[f"{path}.edits"] = _counter_is(edits)
                update["$pull"][f"{path}.messages"] = {"message_id": {"$lt": moved_before + len(entries)}}
                update["$inc"][f"{path}.overflow_count"] = len(entries)
                update["$inc"]["size_estimate"] += _bson_size(descriptors) or 0
                update["$inc"]["size_estimate"] -= sum(sizes)
                update["$push"][f"{path}.overflow"] = {"$each": descriptors}
            if not buckets:
                return False
            op = self._begin_overflow_write(
                session_id, "buckets", [bucket["_id"] for bucket in buckets], expire_at, agents=list(plan)
            )
            condition["overflow_pending.op"] = op
            update["$pull"]["overflow_pending"] = {"op": op}
            with self._errors(session_id, "move messages out"):
                self.overflow.insert_many(buckets, ordered=True)
                result = self.collection.update_one(condition, update)
            if result.matched_count:
                logger.debug(
                    "session_id=<%s>, moved=<%s>, buckets=<%d> | old messages moved to overflow storage",
                    session_id,
                    {key: count for key, count in update["$inc"].items() if key != "size_estimate"},
                    len(buckets),
                )
                for key in crowded:
                    self._merge_buckets(session_id, key)
                return True
            # Another writer moved or edited these messages first (or took our record): ours are
            # copies nobody refers to.
            with self._errors(session_id, "discard unused buckets"):
                self.overflow.delete_many({"_id": {"$in": [bucket["_id"] for bucket in buckets]}})
            self._end_overflow_write(session_id, op)
        raise SessionConflictError(
            f"session_id=<{session_id}> | could not move old messages out: other writers kept changing them"
        )

    def _merge_buckets(self, session_id: str, key: str) -> None:
        """Merge an agent's small adjacent buckets, so the descriptors the session keeps stay few.

        The same copy-then-commit as a move: the merged buckets are written, then one update
        replaces the descriptor list, only if no move or edit happened since it was read
        (``overflow_count``, ``edits``; edits of moved messages count too). The replaced buckets are
        deleted after the commit; a reader that still follows an old descriptor finds its bucket
        gone and reads again. A merge that loses a race is dropped: the next move tries again.
        """
        path = f"agents.{key}"
        with self._errors(session_id, "read bucket descriptors"):
            document = self.collection.find_one(
                {"_id": session_id},
                {f"{path}.overflow": 1, f"{path}.overflow_count": 1, f"{path}.edits": 1, f"{path}.agent_id": 1},
            )
        stored = _dig(document, path)
        descriptors = list((stored or {}).get("overflow") or [])
        groups = plan_merges([int(d.get("bytes") or 0) for d in descriptors])
        if stored is None or not groups:
            return
        merged_ids = [d["id"] for start, count in groups for d in descriptors[start : start + count]]
        with self._errors(session_id, "read buckets to merge"):
            old = {doc["_id"]: doc for doc in self.overflow.find({"_id": {"$in": merged_ids}})}
        if len(old) != len(merged_ids):
            return  # another merge replaced some of them: its commit wins
        expire_at = self._companions_expiry()  # (tests interleave other writers here)
        new_descriptors: list[dict[str, Any]] = []
        new_buckets: list[dict[str, Any]] = []
        position = 0
        for start, count in groups:
            new_descriptors.extend(descriptors[position:start])
            group = descriptors[start : start + count]
            bucket, descriptor = bucket_document(
                session_id,
                stored.get("agent_id"),
                group[0]["first"],
                [entry for d in group for entry in old[d["id"]].get("messages") or []],
                sum(int(d.get("bytes") or 0) for d in group),
                expire_at,
            )
            new_buckets.append(bucket)
            new_descriptors.append(descriptor)
            position = start + count
        new_descriptors.extend(descriptors[position:])
        moved, edits = int(stored.get("overflow_count") or 0), int(stored.get("edits") or 0)
        op = self._begin_overflow_write(
            session_id, "buckets", [bucket["_id"] for bucket in new_buckets], expire_at, agents=[key]
        )
        with self._errors(session_id, "merge buckets"):
            self.overflow.insert_many(new_buckets, ordered=True)
            # The commit also turns our record into one of the buckets it replaces, so a crash
            # before they are deleted leaves them to the collector.
            result = self.collection.update_one(
                {
                    "_id": session_id,
                    f"{path}.overflow_count": _counter_is(moved),
                    f"{path}.edits": _counter_is(edits),
                    "overflow_pending.op": op,
                },
                {"$set": {f"{path}.overflow": new_descriptors, "overflow_pending.$[p].docs": merged_ids}},
                array_filters=[{"p.op": op}],
            )
            unused = merged_ids if result.matched_count else [bucket["_id"] for bucket in new_buckets]
            self.overflow.delete_many({"_id": {"$in": unused}})
        self._end_overflow_write(session_id, op)
        if result.matched_count:
            logger.debug(
                "session_id=<%s>, buckets=<%d->%d> | overflow buckets merged",
                session_id,
                len(descriptors),
                len(new_descriptors),
            )

    def _message_layout(self, session_id: str) -> tuple[int, int, dict[str, list[int]], list[Any]] | None:
        """The document's size, its size estimate, the size of each agent's resident messages, and
        the records of unfinished overflow writes."""
        pipeline: list[dict[str, Any]] = [
            {"$match": {"_id": session_id}},
            {
                "$project": {
                    "_id": 0,
                    "size": {"$bsonSize": "$$ROOT"},
                    "size_estimate": 1,
                    "overflow_pending": 1,
                    "agents": {
                        "$map": {
                            "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                            "as": "agent",
                            "in": {
                                "k": "$$agent.k",
                                "sizes": {
                                    "$map": {
                                        "input": {"$ifNull": ["$$agent.v.messages", []]},
                                        "as": "entry",
                                        "in": {"$bsonSize": "$$entry"},
                                    }
                                },
                            },
                        }
                    },
                }
            },
        ]
        with self._errors(session_id, "read message sizes"):
            documents = list(self.collection.aggregate(pipeline))
        if not documents:
            return None
        document = documents[0]
        agents = {agent["k"]: list(agent["sizes"]) for agent in document.get("agents") or []}
        return (
            int(document["size"]),
            int(document.get("size_estimate") or 0),
            agents,
            list(document.get("overflow_pending") or []),
        )

    def _store_blobs(self, session_id: str, blobs: list[tuple[BlobRef, bytes]]) -> ObjectId | None:
        """Write offloaded binary values, before the message that refers to them.

        Returns:
            The record of this unfinished write (see :meth:`_begin_overflow_write`), which the
            commit of the message removes; ``None`` when there is nothing to write.
        """
        if not blobs:
            return None
        expire_at = self._companions_expiry()
        documents = [doc for ref, data in blobs for doc in chunk_documents(session_id, ref, data, expire_at)]
        op = self._begin_overflow_write(session_id, "blobs", [doc["_id"] for doc in documents], expire_at)
        with self._errors(session_id, "store binary content"):
            self.overflow.insert_many(documents, ordered=True)
        logger.debug("session_id=<%s>, values=<%d> | binary content stored outside the session", session_id, len(blobs))
        return op

    def _discard_blobs(self, session_id: str, refs: list[BlobRef]) -> None:
        """Delete offloaded values nothing refers to any more."""
        if not refs:
            return
        with self._errors(session_id, "delete binary content"):
            self.overflow.delete_many(
                {"_id": {"$in": [chunk for ref in refs for chunk in ref.chunk_ids()]}, "session_id": session_id}
            )

    def _discard_unreferenced(self, session_id: str, blobs: list[tuple[BlobRef, bytes]], op: ObjectId | None) -> None:
        """After a write that certainly did not store them: delete the values stored for it, and its record.

        A failure here is logged, not raised: the caller is either raising the reason the write
        failed or reporting a message that was already stored, and the record left behind makes the
        next move, redaction or repair delete the values.
        """
        if op is None:
            return
        try:
            self._discard_blobs(session_id, [ref for ref, _ in blobs])
            self._end_overflow_write(session_id, op)
        except MongoDBSessionError as e:
            logger.warning("session_id=<%s> | could not delete unused binary content yet: %s", session_id, e)

    def _decode_entries(self, session_id: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give stored message entries back as they were written: values unescaped, offloaded binaries
        put back (one read for all of them), each verified against its length and SHA-256.

        Raises:
            SessionStorageError: A chunk is missing, altered or malformed.
        """
        refs = find_references(entries)
        values: dict[ObjectId, bytes] = {}
        if refs:
            chunk_ids = [chunk for ref in refs for chunk in ref.chunk_ids()]
            with self._errors(session_id, "read binary content"):
                documents = list(self.overflow.find({"_id": {"$in": chunk_ids}}, {"data": 1}))
            chunks: dict[tuple[ObjectId, int], bytes] = {}
            for doc in documents:
                key, data = _chunk_of(doc)
                if key is None or data is None:
                    raise SessionStorageError(
                        f"session_id=<{session_id}> | a stored binary chunk is malformed in {self.overflow_collection_name}"
                    )
                chunks[key] = data

            def lookup(ref: BlobRef) -> bytes:
                if ref.blob_id not in values:
                    parts = {n: chunks[(ref.blob_id, n)] for n in range(ref.chunk_count) if (ref.blob_id, n) in chunks}
                    values[ref.blob_id] = assemble_blob(ref, parts, session_id)
                return values[ref.blob_id]

            decoded: list[dict[str, Any]] = decode_value(entries, lookup)
            return decoded
        plain: list[dict[str, Any]] = decode_value(entries)
        return plain

    def _offload(
        self, session_id: str, entry: dict[str, Any], operation: str
    ) -> tuple[list[tuple[BlobRef, bytes]], int]:
        """Encode a message entry's values for storage (in place), large binaries moved out, and check
        what is left fits.

        Returns:
            The values moved out, and the entry's encoded size without them.
        """
        blobs: list[tuple[BlobRef, bytes]] = []
        for name, value in list(entry.items()):
            if name in ("message", "redact_message"):
                entry[name], found = encode_value(value, "session_message", self.binary_offload_bytes)
                blobs.extend(found)
            elif name not in ("message_id", "created_at", "updated_at"):
                entry[name], _ = encode_value(value, "session_message")
        if blobs:
            # The references again, beside the message: what to delete when it is replaced.
            entry["blobs"] = [ref.to_binary() for ref, _ in blobs]
        try:
            size = entry_size(entry)
        except (InvalidDocument, InvalidStringData, OverflowError, ValueError, RecursionError) as e:
            raise SessionValidationError("session_message", f"cannot be stored in MongoDB ({operation}): {e}") from e
        if size > MAX_MESSAGE_BYTES:
            raise SessionTooLargeError(
                session_id, size, MAX_DOCUMENT_SIZE, f"{operation}: one message, after its binaries moved out"
            )
        return blobs, size

    def _read_entries(
        self, session_id: str, agent_id: str, offset: int, limit: int | None, decode: bool = True
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Read stored entries ``[offset, offset + limit)`` of an agent (see :meth:`_read_entries_once`).

        A bucket that disappeared between the two reads was replaced by a merge: read again.
        """
        return _reading_again_if_merged(lambda: self._read_entries_once(session_id, agent_id, offset, limit, decode))

    def _read_entries_once(
        self, session_id: str, agent_id: str, offset: int, limit: int | None, decode: bool = True
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Read stored entries ``[offset, offset + limit)`` of an agent, wherever they are.

        One aggregate on the session document returns the resident part of the range and the
        descriptors of the buckets that hold the rest; those buckets are read in one more command,
        each sliced on the server to the part of the range it holds. Offloaded binaries are put
        back (one more read when there are any) unless ``decode`` is false (then entries come back
        as stored).

        Returns:
            ``(agent, entries)``: ``agent`` is ``None`` if the session is missing, ``{}`` if the
            agent is missing, otherwise ``{"message_count": ...}``.

        Raises:
            SessionStorageError: The stored history does not hold the messages its counter says it
                has (entries removed, descriptors or chunks damaged).
        """
        end = None if limit is None else offset + limit
        moved = "$$moved"
        if limit is None:
            take: Any = _SLICE_ALL
        else:
            take = {"$subtract": [limit, {"$max": [0, {"$subtract": [moved, offset]}]}]}
        in_range: list[Any] = [{"$gt": [{"$add": ["$$b.first", "$$b.count"]}, offset]}]
        if end is not None:
            in_range.append({"$lt": ["$$b.first", end]})
        agent_view = {
            "message_count": "$$agent.message_count",
            "overflow_count": moved,
            "messages": {
                "$cond": [
                    {"$gt": [take, 0]},
                    {
                        "$slice": [
                            {"$ifNull": ["$$agent.messages", []]},
                            {"$max": [0, {"$subtract": [offset, moved]}]},
                            take,
                        ]
                    },
                    [],
                ]
            },
            "overflow": (
                []
                if limit == 0
                else {
                    "$filter": {
                        "input": {"$ifNull": ["$$agent.overflow", []]},
                        "as": "b",
                        "cond": {"$and": in_range},
                    }
                }
            ),
        }
        pipeline: list[dict[str, Any]] = [
            {"$match": {"_id": session_id}},
            {
                "$project": {
                    "_id": 0,
                    "agent": {
                        "$let": {
                            "vars": {
                                "agent": {"$getField": {"field": encode_field_name(agent_id), "input": "$agents"}}
                            },
                            "in": {
                                "$cond": [
                                    # Every stored agent has its id; a missing agent has no fields at all.
                                    {"$eq": [{"$type": "$$agent.agent_id"}, "string"]},
                                    {
                                        "$let": {
                                            "vars": {"moved": {"$ifNull": ["$$agent.overflow_count", 0]}},
                                            "in": agent_view,
                                        }
                                    },
                                    None,
                                ]
                            },
                        }
                    },
                }
            },
        ]
        with self._errors(session_id, "read messages"):
            documents = list(self.collection.aggregate(pipeline))
        if not documents:
            return None, []
        stored = documents[0].get("agent")
        if not isinstance(stored, dict):
            return {}, []
        entries: list[dict[str, Any]] = []
        descriptors = _checked_descriptors(stored.get("overflow"), session_id, agent_id)
        if descriptors:
            if end is None:
                bucket_take: Any = _SLICE_ALL
            else:
                bucket_take = {"$subtract": [end, {"$max": ["$first", offset]}]}
            bucket_pipeline: list[dict[str, Any]] = [
                {"$match": {"_id": {"$in": [d["id"] for d in descriptors]}}},
                {
                    "$project": {
                        "first": 1,
                        "messages": {
                            "$slice": ["$messages", {"$max": [0, {"$subtract": [offset, "$first"]}]}, bucket_take]
                        },
                    }
                },
            ]
            with self._errors(session_id, "read moved messages"):
                buckets = {doc["_id"]: doc for doc in self.overflow.aggregate(bucket_pipeline)}
            for descriptor in sorted(descriptors, key=lambda d: d["first"]):
                bucket = buckets.get(descriptor["id"])
                if bucket is None:
                    raise _BucketGone(
                        f"session_id=<{session_id}>, agent_id=<{agent_id}> | moved messages from message_id "
                        f"{descriptor['first']} are missing from {self.overflow_collection_name}"
                    )
                entries.extend(bucket.get("messages") or [])
        entries.extend(stored.get("messages") or [])
        count = stored.get("message_count")
        if not isinstance(count, int) or count < 0:
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored message counter is malformed"
            )
        expected = max(0, (count if end is None else min(end, count)) - offset)
        if len(entries) != expected:
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored history is incomplete: the agent has "
                f"{count} messages, but {len(entries)} of the {expected} from message_id {offset} are stored"
            )
        return {"message_count": count}, self._decode_entries(session_id, entries) if decode else entries

    def _update_entry(
        self,
        session_id: str,
        agent_id: str,
        message_id: int,
        fields: Mapping[str, Any],
        operation: str,
        field: str,
        replacing: bool = False,
        op: ObjectId | None = None,
    ) -> tuple[list[BlobRef], list[Any]]:
        """``$set`` fields of one stored message, wherever it is, addressed with ``array_filters``.

        A resident message is updated in one command (which also counts the edit, so a concurrent
        move of old messages notices). A moved one: its bucket is found from the session's
        descriptors and updated, then the session's ``updated_date`` moves.

        Args:
            replacing: Also return what the update replaced (see Returns), read by the same commands.
            op: The record of binary values stored for the new content (see
                :meth:`_begin_overflow_write`): the update commits them.

        Returns:
            With ``replacing``: the binary references the message held before the update, and the
            session's records of unfinished overflow writes (for the caller to collect); otherwise
            ``([], [])``.

        Raises:
            SessionNotFoundError: The message does not exist.
            _Collected: Our record was taken by a collector before the commit (its values may be
                gone); nothing was changed: store them again and retry.
        """
        encoded = encode_field_name(agent_id)
        path = f"agents.{encoded}"
        changes: dict[str, Any] = {f"{path}.messages.$[m].{name}": value for name, value in fields.items()}
        changes["updated_date"] = utc_now()
        resident = {"$getField": {"field": "messages", "input": {"$getField": {"field": encoded, "input": "$agents"}}}}
        query: dict[str, Any] = {"_id": session_id, f"{path}.messages.message_id": message_id}
        update: dict[str, Any] = {"$set": changes, "$inc": {f"{path}.edits": 1}}
        if op is not None:
            query["overflow_pending.op"] = op
            update["$pull"] = {"overflow_pending": {"op": op}}
        matched, document = self._write_session(
            session_id,
            query,
            update,
            operation=operation,
            field=field,
            payload=changes,
            array_filters=[{"m.message_id": message_id}],
            returning=_replaced_projection(resident, message_id) if replacing else None,
            return_document=ReturnDocument.BEFORE,
        )
        if matched:
            return _old_refs(document), list((document or {}).get("pending") or [])
        not_found = SessionNotFoundError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | message does not exist"
        )
        with self._errors(session_id, operation):
            document = self.collection.find_one(
                {"_id": session_id}, {f"{path}.overflow": 1, f"{path}.messages.message_id": 1, "overflow_pending": 1}
            )
        resident_ids = [entry.get("message_id") for entry in _dig(document, f"{path}.messages") or []]
        if op is not None and message_id in resident_ids:
            raise _Collected()  # the message is resident: only our record can have been missing
        bucket_changes = {f"messages.$[m].{name}": value for name, value in fields.items()}
        old_refs: list[BlobRef] = []
        pending: list[Any] = list((document or {}).get("overflow_pending") or [])
        moved = _descriptor_of(_dig(document, f"{path}.overflow"), message_id) is not None
        # A moved message: the bucket cannot check our record, so the record goes first; a crash
        # from here on leaves our values unreferenced (repair_session collects them).
        if op is not None and moved and not self._end_overflow_write(session_id, op):
            raise _Collected()
        for _attempt in range(_MOVE_ATTEMPTS):
            descriptor = _descriptor_of(_dig(document, f"{path}.overflow"), message_id)
            if descriptor is None:
                raise not_found
            with self._errors(session_id, operation, field, bucket_changes):
                old_bucket = self.overflow.find_one_and_update(
                    {"_id": descriptor["id"], "messages.message_id": message_id},
                    {"$set": bucket_changes},
                    projection=_replaced_projection("$messages", message_id),
                    array_filters=[{"m.message_id": message_id}],
                    return_document=ReturnDocument.BEFORE,
                )
            if old_bucket is not None:
                old_refs.extend(_old_refs(old_bucket))
            # Count the edit (a merge that copied this bucket before it then fails its commit), and
            # check the bucket is still the one holding the message: a merge that committed
            # meanwhile copied it before our update, so apply the update again to its replacement.
            _, document = self._write_session(
                session_id,
                {"_id": session_id},
                {"$set": {"updated_date": utc_now()}, "$inc": {f"{path}.edits": 1}},
                operation=operation,
                returning={f"{path}.overflow": 1, "overflow_pending": 1},
            )
            pending = list((document or {}).get("overflow_pending") or [])
            current = _descriptor_of(_dig(document, f"{path}.overflow"), message_id)
            if old_bucket is not None and current is not None and current["id"] == descriptor["id"]:
                return old_refs, pending
        raise SessionConflictError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | the moved message kept "
            "being reorganised while it was updated; retry"
        )

    # ------------------------------------------------------------------ sessions

    def create_session(self, session: Session, **kwargs: Any) -> Session:
        """Create a new session document.

        Raises:
            SessionConflictError: A session with this id already exists.
        """
        session_id = validate_id(session.session_id, "session_id")
        document = session_to_document(session)
        document["size_estimate"] = len(bson.encode(document)) + 32
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

        Messages moved out of the session document and binary content stored outside it are
        deleted too (after the session, so no reader ever sees a session missing its parts).

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        with self._errors(session_id, "delete session"):
            deleted = self.collection.find_one_and_delete({"_id": session_id}, projection={"companions": 1})
            if deleted is None:
                raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
            if deleted.get("companions"):
                removed = self.overflow.delete_many({"session_id": session_id}).deleted_count
                logger.debug("session_id=<%s>, documents=<%d> | overflow storage deleted", session_id, removed)
        logger.debug("session_id=<%s> | session deleted", session_id)

    def repair_session(self, session_id: str, grace: timedelta = DEFAULT_REPAIR_GRACE) -> dict[str, int]:
        """Delete what crashes left of a session outside its document.

        Writes to the overflow collection are crash-safe (see :meth:`_begin_overflow_write`): what
        an interrupted write leaves behind is never read, and the next move or redaction of the
        session collects most of it. Two leftovers need this step: the old binaries of a message
        whose redaction was interrupted right after it replaced them, and new binaries of an
        interrupted redaction of a moved message. Both are unreferenced. This deletes every
        overflow document of the session that nothing refers to and that is older than ``grace``
        (younger ones may belong to a write still in flight), and every unfinished write's record
        older than ``grace`` with its documents.

        Args:
            session_id: The session.
            grace: Leave documents and records younger than this (default 10 minutes).

        Returns:
            ``{"unfinished_writes": ..., "unreferenced_documents": ...}``: how many of each were removed.

        Raises:
            SessionNotFoundError: The session does not exist.
            SessionStorageError: The session refers to overflow documents that are missing (its
                data is damaged); nothing was deleted.
        """
        validate_id(session_id, "session_id")
        if not isinstance(grace, timedelta) or grace < timedelta(0):
            raise SessionValidationError("grace", "must be a non-negative timedelta", grace)
        with self._errors(session_id, "repair session"):
            document = self.collection.find_one({"_id": session_id}, {"overflow_pending": 1})
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        taken = self._collect_pending(session_id, document.get("overflow_pending"), older_than=grace)
        for _attempt in range(_MOVE_ATTEMPTS):
            garbage = self._unreferenced_overflow(session_id, grace)
            if garbage is None:
                continue  # a merge replaced buckets while we read them: read again
            if garbage:
                with self._errors(session_id, "repair session"):
                    self.overflow.delete_many({"_id": {"$in": garbage}, "session_id": session_id})
            logger.info(
                "session_id=<%s>, unfinished_writes=<%d>, unreferenced_documents=<%d> | session repaired",
                session_id,
                taken,
                len(garbage),
            )
            return {"unfinished_writes": taken, "unreferenced_documents": len(garbage)}
        raise SessionConflictError(f"session_id=<{session_id}> | could not repair: the session kept changing; retry")

    def _unreferenced_overflow(self, session_id: str, grace: timedelta) -> list[Any] | None:
        """``_id`` of the session's overflow documents older than ``grace`` that nothing refers to.

        Lists the documents first, then reads what refers to them (descriptors, binary references
        in resident and moved messages, records of unfinished writes): a document written after the
        listing is not considered, one written before it is protected by its record until its commit
        makes it referenced.

        Returns:
            The ids, or ``None`` if a bucket named by a descriptor vanished meanwhile (a merge).

        Raises:
            SessionStorageError: Buckets the session refers to are missing.
        """
        with self._errors(session_id, "repair session"):
            listed = [doc["_id"] for doc in self.overflow.find({"session_id": session_id}, {"_id": 1})]
            documents = list(
                self.collection.aggregate(
                    [
                        {"$match": {"_id": session_id}},
                        {
                            "$project": {
                                "_id": 0,
                                "pending": "$overflow_pending",
                                "agents": {
                                    "$map": {
                                        "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                                        "as": "agent",
                                        "in": {
                                            "agent_id": "$$agent.v.agent_id",
                                            "overflow": "$$agent.v.overflow",
                                            # An explicit $map: the test server does not
                                            # follow a path through an array in an expression.
                                            "blobs": {
                                                "$map": {
                                                    "input": {"$ifNull": ["$$agent.v.messages", []]},
                                                    "as": "entry",
                                                    "in": {"$ifNull": ["$$entry.blobs", []]},
                                                }
                                            },
                                        },
                                    }
                                },
                            }
                        },
                    ]
                )
            )
        if not documents:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        protected = {
            _overflow_key(doc) for record in documents[0].get("pending") or [] for doc in record.get("docs") or []
        }
        buckets: set[Any] = set()
        refs: list[Any] = []
        for agent in documents[0].get("agents") or []:
            descriptors = _checked_descriptors(agent.get("overflow"), session_id, str(agent.get("agent_id")))
            buckets.update(d["id"] for d in descriptors)
            refs.extend(value for values in agent.get("blobs") or [] for value in values or [])
        if buckets:
            with self._errors(session_id, "repair session"):
                moved = list(self.overflow.find({"_id": {"$in": list(buckets)}}, {"messages.blobs": 1}))
            if len(moved) != len(buckets):
                return None
            refs.extend(
                value
                for bucket in moved
                for entry in bucket.get("messages") or []
                for value in entry.get("blobs") or []
            )
        blob_ids = {BlobRef.from_binary(value).blob_id for value in refs}
        now = utc_now()
        garbage = []
        for doc_id in listed:
            key = _overflow_key(doc_id)
            written = key[0] if isinstance(key, tuple) else key
            if not isinstance(written, ObjectId) or now - written.generation_time < grace or key in protected:
                continue
            if key in buckets or (isinstance(key, tuple) and key[0] in blob_ids):
                continue
            garbage.append(doc_id)
        return garbage

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
        matched, _ = self._write_session(
            session_id,
            {"_id": session_id, path: {"$exists": False}},
            {"$set": {path: new_agent, "updated_date": utc_now()}},
            operation="create agent",
            field="session_agent",
            payload=new_agent,
        )
        if not matched:
            # Either the session is missing or the agent exists already (rare): keep its messages.
            matched, _ = self._write_session(
                session_id,
                {"_id": session_id},
                {"$set": {**{f"{path}.{name}": value for name, value in fields.items()}, "updated_date": utc_now()}},
                operation="create agent",
                field="session_agent",
                payload=fields,
            )
        if not matched:
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
        matched, _ = self._write_session(
            session_id,
            {"_id": session_id, path: {"$exists": True}},
            {"$set": changes},
            operation="update agent",
            field="session_agent",
            payload=changes,
        )
        if not matched:
            raise SessionNotFoundError(f"session_id=<{session_id}>, agent_id=<{agent_id}> | agent does not exist")
        logger.debug("session_id=<%s>, agent_id=<%s> | agent updated", session_id, agent_id)

    # ------------------------------------------------------------------ messages

    def create_message(self, session_id: str, agent_id: str, session_message: SessionMessage, **kwargs: Any) -> None:
        """Append a message to an agent.

        One atomic update that succeeds only if the agent has exactly ``message_id`` messages (and
        the document stays under the overflow threshold: otherwise old messages move out first).
        Binary values above ``binary_offload_bytes`` are stored outside the document beforehand.

        Appending is idempotent: if the agent already holds this very message at ``message_id``
        (same ``tracking_id``, or, for messages without one, the same content), for example because
        an earlier attempt was applied although it reported a failure (a timeout, a lost
        connection), the append succeeds without writing anything.

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
        path = f"agents.{encode_field_name(agent_id)}"
        extras = _message_extras.get()
        for _attempt in range(_MOVE_ATTEMPTS):
            entry = message_to_entry(session_message)
            if extras is not None and extras[0] is session_message.message:
                entry.update(extras[1])
            blobs, size = self._offload(session_id, entry, "append message")
            op = self._store_blobs(session_id, blobs)
            query: dict[str, Any] = {"_id": session_id, f"{path}.message_count": message_id}
            update: dict[str, Any] = {
                "$push": {f"{path}.messages": entry},
                "$inc": {f"{path}.message_count": 1},
                "$set": {"updated_date": utc_now()},
            }
            if op is not None:  # the append commits the binaries stored for it
                query["overflow_pending.op"] = op
                update["$pull"] = {"overflow_pending": {"op": op}}
            try:
                matched, _ = self._write_session(
                    session_id,
                    query,
                    update,
                    operation="append message",
                    field="session_message",
                    payload=entry,
                    # The entry, its array index key (up to 7 bytes) and type byte.
                    growth=size + 8,
                    # Room for them; beyond it, old messages move out first.
                    size_limit=self.overflow_threshold_bytes - size - 8,
                )
                stored = matched or self._settle_unmatched_append(session_id, agent_id, message_id, entry)
            except (SessionConflictError, SessionNotFoundError, SessionValidationError):
                # Certainly not appended (refused or not matched): its binaries are unreferenced.
                self._discard_unreferenced(session_id, blobs, op)
                raise
            if matched:
                logger.debug(
                    "session_id=<%s>, agent_id=<%s>, message_id=<%s> | message appended",
                    session_id,
                    agent_id,
                    message_id,
                )
                return
            self._discard_unreferenced(session_id, blobs, op)  # stored by an earlier attempt, or to retry
            if stored:
                logger.debug(
                    "session_id=<%s>, agent_id=<%s>, message_id=<%s> | message was already stored",
                    session_id,
                    agent_id,
                    message_id,
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
        with self._errors(session_id, "append message"):
            document = self.collection.find_one({"_id": session_id}, {f"{path}.message_count": 1})
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        stored = _dig(document, path)
        if stored is None:
            raise _missing(session_id, agent_id, document)
        count = stored.get("message_count")
        if count == message_id:
            return False
        if isinstance(count, int) and count > message_id:
            _, existing = self._read_entries(session_id, agent_id, message_id, 1, decode=False)
            if existing and same_message(existing[0], entry):
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
        agent, entries = self._read_entries(session_id, agent_id, message_id, 1)
        if not agent or not entries:
            return None
        return entry_to_message(entries[0], session_id, agent_id, message_id)

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
        fields: dict[str, Any] = {
            "message": session_message.message,
            "redact_message": session_message.redact_message,
            "updated_at": updated_at,
        }
        for _attempt in range(_MOVE_ATTEMPTS):
            stored_fields = dict(fields)
            blobs, _ = self._offload(session_id, stored_fields, "update message")
            stored_fields.setdefault("blobs", [])
            op = self._store_blobs(session_id, blobs)
            try:
                old_refs, pending = self._update_entry(
                    session_id,
                    agent_id,
                    message_id,
                    stored_fields,
                    "update message",
                    "session_message",
                    replacing=True,
                    op=op,
                )
                break
            except _Collected:
                self._discard_unreferenced(session_id, blobs, op)
            except (SessionNotFoundError, SessionValidationError):
                self._discard_unreferenced(session_id, blobs, op)
                raise
        else:
            raise SessionConflictError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | could not update "
                "the message: the session kept changing under the update; retry"
            )
        # Redacted content must not survive outside the document either: the binaries it replaced,
        # and copies of messages that unfinished moves or merges left behind. Only what was really
        # replaced: a merge racing this update can make it apply twice, the second time over our
        # own new values.
        written = {ref.blob_id for ref, _ in blobs}
        replaced = list({ref.blob_id: ref for ref in old_refs if ref.blob_id not in written}.values())
        self._discard_blobs(session_id, replaced)
        if pending:
            # Copies of this agent's messages left by unfinished moves and merges may hold what was
            # just replaced: take them whatever their age (one still in flight fails its commit on
            # our edit anyway). Other unfinished writes only once they are stale.
            key = encode_field_name(agent_id)
            self._collect_pending(
                session_id,
                pending,
                any_age=lambda record: record.get("kind") == "buckets" and key in (record.get("agents") or []),
                own=op,
            )
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
        agent, entries = self._read_entries(session_id, agent_id, offset, limit)
        if not agent:
            raise _missing(session_id, agent_id, agent)
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
        record = {"id": multi_agent_id, "state": state, "created_at": now, "updated_at": now}
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        matched, _ = self._write_session(
            session_id,
            {"_id": session_id},
            {"$set": {path: record, "updated_date": utc_now()}},
            operation="create multi-agent",
            field="multi_agent_state",
            payload=record,
        )
        if not matched:
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
        return decode_value(stored.get("state")) if stored else None

    def update_multi_agent(self, session_id: str, multi_agent: MultiAgentBase, **kwargs: Any) -> None:
        """Replace the stored state of a Graph or Swarm.

        Raises:
            SessionNotFoundError: The session or the multi-agent state does not exist.
        """
        validate_id(session_id, "session_id")
        multi_agent_id = validate_id(multi_agent.id, "multi_agent_id")
        path = f"multi_agents.{encode_field_name(multi_agent_id)}"
        changes: dict[str, Any] = {
            f"{path}.state": encode_value(multi_agent.serialize_state(), "multi_agent_state")[0],
            f"{path}.updated_at": iso_now(),
            "updated_date": utc_now(),
        }
        matched, _ = self._write_session(
            session_id,
            {"_id": session_id, path: {"$exists": True}},
            {"$set": changes},
            operation="update multi-agent",
            field="multi_agent_state",
            payload=changes,
        )
        if not matched:
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
            if name in MESSAGE_FIELDS or name in _ENTRY_BOOKKEEPING:
                raise SessionValidationError("fields", f"{name!r} is a message field and cannot be set this way")
        encoded = {name: encode_value(value, f"fields[{name!r}]")[0] for name, value in fields.items()}
        self._update_entry(session_id, agent_id, message_id, encoded, "set message fields", "fields")

    def get_message_metrics(self, session_id: str, agent_id: str) -> list[dict[str, Any]]:
        """Return ``[{"message_id", "event_loop_metrics"}, ...]`` for the agent's messages that carry metrics.

        Only the message ids and metrics are transferred, not the messages.

        Raises:
            SessionNotFoundError: The session or agent does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        return _reading_again_if_merged(lambda: self._message_metrics_once(session_id, agent_id))

    def _message_metrics_once(self, session_id: str, agent_id: str) -> list[dict[str, Any]]:
        path = f"agents.{encode_field_name(agent_id)}"
        with self._errors(session_id, "read message metrics"):
            document = self.collection.find_one(
                {"_id": session_id},
                {
                    f"{path}.message_count": 1,
                    f"{path}.overflow": 1,
                    f"{path}.messages.message_id": 1,
                    f"{path}.messages.event_loop_metrics": 1,
                },
            )
            stored = _dig(document, path)
            if stored is None:
                raise _missing(session_id, agent_id, document)
            entries: list[Any] = []
            descriptors = _checked_descriptors(stored.get("overflow"), session_id, agent_id)
            if descriptors:
                buckets = {
                    bucket["_id"]: bucket
                    for bucket in self.overflow.find(
                        {"_id": {"$in": [d["id"] for d in descriptors]}},
                        {"messages.message_id": 1, "messages.event_loop_metrics": 1},
                    )
                }
                for descriptor in sorted(descriptors, key=lambda d: d["first"]):
                    bucket = buckets.get(descriptor["id"])
                    if bucket is None:
                        raise _BucketGone(
                            f"session_id=<{session_id}>, agent_id=<{agent_id}> | moved messages from message_id "
                            f"{descriptor['first']} are missing from {self.overflow_collection_name}"
                        )
                    entries.extend(bucket.get("messages") or [])
        entries.extend(stored.get("messages") or [])
        ids = [entry.get("message_id") if isinstance(entry, dict) else None for entry in entries]
        if ids != list(range(len(ids))) or len(ids) != stored.get("message_count"):
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored history is incomplete or out of order: "
                f"{len(ids)} messages found for a count of {stored.get('message_count')}"
            )
        return [
            {"message_id": entry["message_id"], "event_loop_metrics": decode_value(entry["event_loop_metrics"])}
            for entry in entries
            if "event_loop_metrics" in entry
        ]

    # ------------------------------------------------------------------ metadata

    def update_metadata(self, session_id: str, metadata: Mapping[str, Any]) -> None:
        """Set the given metadata fields, leaving the others as they are.

        Raises:
            SessionValidationError: A key or value is refused (nothing is written).
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        stored = validate_metadata(metadata)
        if not stored:
            return
        changes: dict[str, Any] = {f"metadata.{key}": value for key, value in stored.items()}
        changes["updated_date"] = utc_now()
        matched, _ = self._write_session(
            session_id,
            {"_id": session_id},
            {"$set": changes},
            operation="update metadata",
            field="metadata",
            payload=changes,
        )
        if not matched:
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
        metadata: dict[str, Any] = _aware_all(decode_value(document.get("metadata") or {}))
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
        matched, _ = self._write_session(
            session_id,
            {"_id": session_id},
            {"$unset": {f"metadata.{key}": "" for key in keys}, "$set": {"updated_date": utc_now()}},
            operation="delete metadata",
        )
        if not matched:
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
        _, document = self._write_session(
            session_id,
            {"_id": session_id},
            pipeline,
            operation="add feedback",
            field="feedback",
            payload={**entry, "created_at": utc_now()},
            returning={"feedbacks": {"$slice": -1}, "_id": 0},
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
            stored = validate_metadata(dict(metadata_filter))
            query.update({f"metadata.{key}": {"$eq": value} for key, value in stored.items()})
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
        with self._errors(None, "list sessions"):
            documents = list(self.collection.find(query, projection).sort("_id", ASCENDING).limit(limit))
        return [
            {
                "session_id": doc["_id"],
                "session_type": doc.get("session_type"),
                "created_at": doc.get("created_at"),
                "updated_at": doc.get("updated_at"),
                "last_activity": _aware(doc.get("updated_date")),
                "metadata": decode_value(doc.get("metadata") or {}),
            }
            for doc in documents
        ]


class _Collected(Exception):
    """A collector took the record of our unfinished overflow write before we committed (internal)."""


class _BucketGone(SessionStorageError):
    """A bucket a descriptor named was not found (replaced by a merge meanwhile, or lost)."""


def _checked_descriptors(descriptors: Any, session_id: str, agent_id: str) -> list[dict[str, Any]]:
    """An agent's bucket descriptors, checked: each names a bucket id and a range of message ids.

    Raises:
        SessionStorageError: They are malformed (the document was damaged or altered).
    """
    if descriptors is None:
        return []
    well_formed = isinstance(descriptors, list) and all(
        isinstance(d, dict)
        and isinstance(d.get("id"), ObjectId)
        and all(isinstance(d.get(name), int) and not isinstance(d.get(name), bool) for name in ("first", "count"))
        and d["first"] >= 0
        and d["count"] > 0
        for d in descriptors
    )
    if not well_formed:
        raise SessionStorageError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored bucket descriptors are malformed"
        )
    return list(descriptors)


def _overflow_key(doc_id: Any) -> Any:
    """A hashable key for an overflow document's ``_id``: a bucket's ObjectId, or ``(blob id, n)`` for a chunk."""
    if isinstance(doc_id, dict):
        return (doc_id.get("b"), doc_id.get("n"))
    return doc_id


def _chunk_of(document: Any) -> tuple[tuple[ObjectId, int] | None, bytes | None]:
    """``((blob id, chunk number), bytes)`` of a chunk document; ``(None, None)`` if it is malformed."""
    chunk_id = document.get("_id") if isinstance(document, dict) else None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(chunk_id, dict) or not isinstance(data, bytes):
        return None, None
    blob_id, number = chunk_id.get("b"), chunk_id.get("n")
    if not isinstance(blob_id, ObjectId) or not isinstance(number, int) or isinstance(number, bool):
        return None, None
    return (blob_id, number), data


_T = TypeVar("_T")


def _reading_again_if_merged(read: Callable[[], _T]) -> _T:
    """Run a read that follows bucket descriptors; if a bucket was gone (a merge replaced it after
    the descriptors were read), read again, a few times, before reporting it."""
    for _attempt in range(_MOVE_ATTEMPTS - 1):
        try:
            return read()
        except _BucketGone:
            continue
    return read()


def _counter_is(value: int) -> Any:
    """Filter condition: a counter kept with ``$inc`` still has ``value`` (0 means never set)."""
    return value if value else {"$exists": False}


@dataclass(frozen=True)
class _StorageState:
    size: int | None
    estimate: int | None
    companions_until: datetime | None
    companions_ttl: Any


def _with_growth(update: Any, grows_by: int) -> Any:
    """``update`` that also adds ``grows_by`` to the document's ``size_estimate`` (a copy)."""
    if isinstance(update, list):  # a pipeline update
        stage = {"$set": {"size_estimate": {"$add": [{"$ifNull": ["$size_estimate", 0]}, grows_by]}}}
        return [*update, stage]
    return {**update, "$inc": {**update.get("$inc", {}), "size_estimate": grows_by}}


def _expiry_margin(ttl: int) -> float:
    """Seconds by which overflow documents' expiry leads their session's (a quarter TTL, 1 s to 1 h)."""
    return float(min(max(ttl / 4, 1.0), 3600.0))


def _descriptor_of(descriptors: Any, message_id: int) -> dict[str, Any] | None:
    """The bucket descriptor whose range holds ``message_id``."""
    for descriptor in descriptors or []:
        if descriptor["first"] <= message_id < descriptor["first"] + descriptor["count"]:
            return dict(descriptor)
    return None


def _replaced_projection(messages: Any, message_id: int) -> dict[str, Any]:
    """A projection (aggregation syntax) returning only the binary references of one message entry,
    and the records of unfinished overflow writes (``pending``; absent from bucket documents)."""
    return {
        "_id": 0,
        "pending": "$overflow_pending",
        "old": {
            "$map": {
                "input": {
                    "$filter": {
                        "input": {"$ifNull": [messages, []]},
                        "cond": {"$eq": ["$$this.message_id", message_id]},
                    }
                },
                "in": {"$ifNull": ["$$this.blobs", []]},
            }
        },
    }


def _old_refs(document: dict[str, Any] | None) -> list[BlobRef]:
    if not document:
        return []
    return [BlobRef.from_binary(value) for refs in document.get("old") or [] for value in refs or []]


def _bounded_int(value: Any, field: str, low: int, high: int, default: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SessionValidationError(field, f"must be an integer from {low} to {high} (default {default})", value)
    return int(value)


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

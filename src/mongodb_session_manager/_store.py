"""The session store: both collections, and the guarded write every session update goes through.

:class:`SessionStore` owns the sessions collection and its overflow collection (``<collection>_overflow``)
and sends every update of a session document through :meth:`SessionStore.write`, which keeps what
is stored outside the document consistent with it:

* **the size estimate.** ``size_estimate`` is an upper bound of the document's size: every write adds
  what it writes (:class:`Write.grows_by`; this module is the one place that says how much); moves
  of old messages and corrections bring it back to the measured size. Appends require it to leave
  room under ``overflow_threshold_bytes``, so a document nearing the threshold moves old messages
  out *before* it grows, without measuring the document on every write.
* **the overflow documents' expiry**, when sessions expire: they must outlive the session (see
  :func:`._overflow.companions_expiry`), under the TTL in force on the collection, which another
  process may change.

Both are conditions on plain fields in the update's filter (:func:`._pipelines.guard_conditions`),
free while they hold. When an update matches nothing, one read tells whether one of them was the
reason; the remedy (move old messages out, correct the estimate, read the TTL again and extend the
expiry) runs, through the :class:`Remedies` registered by ``_overflow_io.OverflowIO``, and the update
is tried again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import bson
from pymongo import MongoClient, ReturnDocument
from pymongo.client_session import ClientSession
from pymongo.collection import Collection

from ._consistency import Causality, session_option
from ._documents import aware, session_key, session_missing, utc_now
from ._encryption import KEY_FIELD, KEY_FIELD_BYTES
from ._indexes import ExpiryView, read_activity_ttl
from ._overflow import MOVE_BATCH, companions_deadline, companions_expiry
from ._pipelines import guard_conditions, storage_state_fields, storage_state_pipeline, with_growth, with_key
from .errors import MAX_DOCUMENT_SIZE, SessionConflictError, SessionEncryptionError, SessionTooLargeError, translated

logger = logging.getLogger(__name__)

__all__ = [
    "ARRAY_ENTRY",
    "ATTEMPTS",
    "COMPANION_FIELDS",
    "ESTIMATE_FIELD",
    "SessionStore",
    "Write",
    "encoded_size",
    "session_missing",
]

# The size-estimate arithmetic: what a write adds beyond the encoded size of the values it sets.
#: The ``size_estimate`` field itself (a new session's estimate includes it).
ESTIMATE_FIELD = 32
#: The fields that mark a session's overflow documents (``companions``, ``companions_ttl``,
#: ``companions_until``), or a bucket descriptor list's own header.
COMPANION_FIELDS = 64
#: An array element's key (its index as a string, up to 7 bytes) and type byte.
ARRAY_ENTRY = 8
#: Times a write, a move or a read is tried when other writers keep changing what it depends on.
ATTEMPTS = 5
# How long a process trusts what it read of the collection's TTL before reading it again (another
# process may change it at any time; writes also notice a change on the session they write).
_EXPIRY_RECHECK_SECONDS = 60.0


def _moved_at_least(trimmed: tuple[str, int] | None) -> tuple[str, int] | None:
    """The append's condition for ``Write.trimmed``: fewer than ``MOVE_BATCH`` trimmed messages resident."""
    if trimmed is None or trimmed[1] < MOVE_BATCH:
        return None
    return trimmed[0], trimmed[1] - MOVE_BATCH + 1


def encoded_size(value: Any) -> int:
    """What writing ``value`` adds to a document, for the size estimate: its BSON size in a one-field
    wrapper (one encode, which a write whose growth is not known otherwise pays; the append knows its
    entry's size from its 16 MB check, metadata from validation)."""
    return len(bson.encode({"payload": value}))


class Remedies(Protocol):
    """What the guarded write calls when one of its conditions failed (``_overflow_io.OverflowIO``)."""

    def move_old_messages(
        self,
        session_id: str,
        target: int | None = None,
        enough: int | None = None,
        trimmed: Mapping[str, int] | None = None,
    ) -> bool:
        """Move old messages out until the document is at ``target`` bytes (none if it is at
        ``enough`` already), and each agent's messages before ``trimmed[agent key]``."""
        ...

    def extend_expiry(self, session_id: str) -> None:
        """Push the expiry of the session's overflow documents forward."""
        ...


@dataclass(frozen=True)
class Write:
    """One guarded update of a session document (see :meth:`SessionStore.write`).

    Attributes:
        query: Which document, and the caller's own conditions.
        update: The update (operators, or a pipeline).
        operation: What this is, in a few words ("append message"), for errors and logs.
        field: The argument named if a value cannot be stored.
        grows_by: What the update adds to the document, in bytes (see the module docstring), when
            the caller knows it; otherwise the encoded size of ``payload`` (one encode).
        payload: What the update writes (its size is the growth when ``grows_by`` is not given).
        size_limit: Appends: the most ``size_estimate`` may be; beyond it old messages move first.
        trimmed: Appends: ``(agent key, n)``: the agent's conversation manager no longer holds its
            messages before ``n``; once ``MOVE_BATCH`` of them are still in the document, they move
            out first (in one move, not one per append).
        array_filters: ``array_filters`` of the update.
        returning: A projection of the document to return.
        before: Return the document as it was before the update (else after).
        key_id: The data key the written values are encrypted with: the write applies only to a
            session recording that key (or none yet, which it then records), the key fence.
        key_created: The key was created for this write (the session records it from now on).
    """

    query: dict[str, Any]
    update: Any
    operation: str
    field: str = "value"
    grows_by: int | None = None
    payload: Any = None
    size_limit: int | None = None
    trimmed: tuple[str, int] | None = None
    array_filters: list[dict[str, Any]] | None = None
    returning: dict[str, Any] | None = None
    before: bool = False
    key_id: Any = None
    key_created: bool = False


@dataclass(frozen=True)
class StorageState:
    """What a failed guarded write reads to find out why."""

    size: int | None
    estimate: int | None
    companions_until: datetime | None
    companions_ttl: Any
    moved: int = 0  # the appending agent's overflow_count (when the write has ``trimmed``)
    key: Any = None  # the session's data key id (KEY_FIELD), with encryption


class SessionStore:
    """Both collections of a repository and the guarded write (see the module docstring).

    Args:
        client: The ``MongoClient`` (its hosts and timeouts word connection failures).
        collection: The sessions collection.
        overflow: The overflow collection.
        threshold: ``overflow_threshold_bytes``.
        expiry: The TTL in force on the collection, as this process knows it.
        tenant_id: The tenant every session of this store belongs to (``None``: no tenant). It is
            part of every key (see :meth:`key`), so no command of this store can reach another
            tenant's documents.
    """

    def __init__(
        self,
        client: MongoClient[Any],
        collection: Collection[dict[str, Any]],
        overflow: Collection[dict[str, Any]],
        threshold: int,
        expiry: ExpiryView,
        tenant_id: str | None = None,
    ) -> None:
        self.client = client
        self.tenant_id = tenant_id
        self.collection = collection
        self.overflow = overflow
        self.threshold = threshold
        self.expiry = expiry
        self.causality = Causality(client, collection)
        self.remedies: Remedies  # set by OverflowIO(store)
        self.encryption: Any = None  # _encryption.Encryption, set by the repository when it encrypts

    # ------------------------------------------------------------------ keys

    def key(self, session_id: str) -> Any:
        """The session's ``_id`` (and its overflow documents' ``session_id``): every filter on a session
        or its overflow documents is built from this, never inline (it is also the shard key)."""
        return session_key(session_id, self.tenant_id)

    def owned(self, session_id: str) -> dict[str, Any]:
        """The filter condition selecting a session's overflow documents (equality on the shard key)."""
        return {"session_id": self.key(session_id)}

    def scope(self) -> dict[str, Any]:
        """The filter condition selecting this store's sessions among all (listing, TTL migration)."""
        return {"tenant": self.tenant_id if self.tenant_id is not None else {"$exists": False}}

    def causal(self, session_id: str) -> AbstractContextManager[ClientSession | None]:
        """The causally consistent ``ClientSession`` of one operation on the session, chained to its last
        write, when reads may go to a secondary; ``None`` (no session) with primary reads (see
        :mod:`._consistency`). Every command of the operation passes it (``session_option``)."""
        return self.causality.session(self.key(session_id))

    # ------------------------------------------------------------------ errors and reads

    def errors(
        self,
        session_id: str | None,
        operation: str,
        field: str = "value",
        size: int | None = None,
        payload: Any = None,
        on_duplicate: str | None = None,
    ) -> AbstractContextManager[None]:
        """Translate what pymongo raises into our errors (see :func:`.errors.translated`).

        Args:
            size: The size of what is written, for a too-large error; or ``payload``, measured
                only then.
        """

        def measured() -> int | None:
            if size is not None or payload is None:
                return size
            try:
                return encoded_size(payload)
            except Exception:  # only words a too-large message; the write's own error is raised
                return None

        return translated(self.client, session_id, operation, field, size=measured, on_duplicate=on_duplicate)

    def find_one(
        self, session_id: str, query: dict[str, Any], projection: dict[str, Any], operation: str
    ) -> dict[str, Any] | None:
        """``find_one`` on the sessions collection, errors translated."""
        with self.causal(session_id) as session, self.errors(session_id, operation):
            document: dict[str, Any] | None = self.collection.find_one(query, projection, **session_option(session))
        return document

    def aggregate(self, session_id: str, pipeline: list[dict[str, Any]], operation: str) -> list[dict[str, Any]]:
        """``aggregate`` on the sessions collection, errors translated."""
        with self.causal(session_id) as session, self.errors(session_id, operation):
            return list(self.collection.aggregate(pipeline, **session_option(session)))

    # ------------------------------------------------------------------ expiry

    @property
    def expiry_seconds(self) -> int | None:
        """The TTL in force on the collection as last read (``None``: sessions never expire)."""
        return self.expiry.seconds

    def companions_expiry(self, ttl: int | None = None) -> datetime | None:
        """Expiry date for overflow documents written now (see :func:`._overflow.companions_expiry`)."""
        return companions_expiry(self.expiry.seconds if ttl is None else ttl, utc_now())

    def companions_deadline(self) -> datetime | None:
        """The earliest ``companions_until`` a write accepts now."""
        return companions_deadline(self.expiry.seconds, utc_now())

    def refresh_expiry(self, session_id: str) -> None:
        """Read the collection's TTL again: another process may have changed it since we last looked."""
        with self.errors(session_id, "read session expiry"):
            seconds = read_activity_ttl(self.collection)
        if seconds != self.expiry.seconds:
            logger.info(
                "collection=<%s>, ttl_seconds=<%s> | session expiry changed by another configuration",
                self.collection.name,
                seconds,
            )
        self.expiry.seconds, self.expiry.checked = seconds, time.monotonic()

    def expiry_is_stale(self) -> bool:
        """Whether the TTL view is old enough to read again before writing overflow documents."""
        return time.monotonic() - self.expiry.checked > _EXPIRY_RECHECK_SECONDS

    # ------------------------------------------------------------------ the guarded write

    def write(self, session_id: str, write: Write) -> tuple[bool, dict[str, Any] | None]:
        """Send one update of the session document, keeping what is stored outside it consistent.

        A write the server refuses as too large is retried once after moving old messages out.

        Returns:
            ``(matched, document)``; ``document`` is the ``returning`` projection (before or after,
            per ``before``) when ``returning`` is given.
        """
        grows_by = write.grows_by
        if grows_by is None:
            with self.errors(session_id, write.operation, write.field):
                grows_by = 0 if write.payload is None else encoded_size(write.payload)
        fence: dict[str, Any] = {}
        if write.key_id is not None:
            grows_by += KEY_FIELD_BYTES if write.key_created else 0
            fence = {KEY_FIELD: {"$in": [write.key_id, None]}}
        update = with_growth(with_key(write.update, write.key_id), grows_by)
        extended = compacted = False
        moved_at_least = _moved_at_least(write.trimmed)
        unexplained = 0
        while True:
            limit = None if compacted else write.size_limit
            conditions = guard_conditions(self.expiry.seconds, self.companions_deadline(), limit, moved_at_least)
            try:
                matched, document = self._send(
                    session_id, {**write.query, **conditions, **fence}, update, write, grows_by
                )
            except SessionTooLargeError as e:
                if compacted or not e.refused_by_server or not self.remedies.move_old_messages(session_id):
                    raise
                compacted = True
                continue
            if matched:
                return True, document
            agent_key = None if moved_at_least is None else moved_at_least[0]
            state = self.state(session_id, measure=write.size_limit is not None and not compacted, agent_key=agent_key)
            if state is None:
                return False, None
            if write.key_id is not None and state.key not in (None, write.key_id):
                if self.encryption is not None:
                    self.encryption.forget()
                raise SessionEncryptionError(
                    f"session_id=<{session_id}> | {write.operation}: the session's data key changed (the session was "
                    "deleted and created again by another process); nothing was written, retry"
                )
            if moved_at_least is not None and state.moved < moved_at_least[1]:
                # The agent's trimmed messages are due to move out (a batch of them): move them, then
                # append whatever the move achieved (a failed move never fails the append).
                self._move_trimmed(session_id, moved_at_least[0], (write.trimmed or ("", 0))[1])
                moved_at_least = None
                continue
            retry, extended, compacted = self._remedy(session_id, write, state, extended, compacted, grows_by)
            if not retry:
                # Our conditions hold now. If the caller's own do too, another writer fixed what
                # failed in the meantime (moved messages, extended the expiry): try again.
                if (
                    self.find_one(session_id, write.query, {"_id": 1}, write.operation) is None
                    or unexplained >= ATTEMPTS
                ):
                    return False, None
                unexplained += 1

    def _send(
        self, session_id: str, filter_: dict[str, Any], update: Any, write: Write, grows_by: int
    ) -> tuple[bool, dict[str, Any] | None]:
        with self.causal(session_id) as session, self.errors(session_id, write.operation, write.field, grows_by):
            if write.returning is None:
                result = self.collection.update_one(
                    filter_, update, array_filters=write.array_filters, **session_option(session)
                )
                return result.matched_count > 0, None
            document: dict[str, Any] | None = self.collection.find_one_and_update(
                filter_,
                update,
                projection=write.returning,
                array_filters=write.array_filters,
                return_document=ReturnDocument.BEFORE if write.before else ReturnDocument.AFTER,
                **session_option(session),
            )
            return document is not None, document

    def _move_trimmed(self, session_id: str, key: str, before: int) -> None:
        try:
            self.remedies.move_old_messages(session_id, target=self.threshold // 2, enough=None, trimmed={key: before})
        except SessionConflictError:
            logger.debug("session_id=<%s> | trimmed messages not moved: other writers moved first", session_id)

    def _remedy(
        self, session_id: str, write: Write, state: StorageState, extended: bool, compacted: bool, grows_by: int
    ) -> tuple[bool, bool, bool]:
        """Fix whichever of our conditions failed. Returns ``(retry, extended, compacted)``."""
        retry = False
        if state.companions_ttl not in (None, self.expiry.seconds):
            # Another process changed the collection's TTL: follow it, and give what this session
            # keeps outside its document (ours included) an expiry under it.
            self.refresh_expiry(session_id)
            self.remedies.extend_expiry(session_id)
            extended = retry = True
        deadline = self.companions_deadline()
        until = state.companions_until
        if deadline is not None and not extended and until is not None and aware(until) < deadline:
            self.remedies.extend_expiry(session_id)
            extended = retry = True
        if state.size is not None and write.size_limit is not None and (state.estimate or 0) > write.size_limit:
            # Close to the limit (the estimate runs a little ahead of the size), moving now saves a
            # correction followed by a move at the next append.
            if state.size > write.size_limit - max(1024, self.threshold // 64):
                # Make room for what this write adds, and at least down to half the threshold; none
                # if another writer's move made room meanwhile.
                try:
                    self.remedies.move_old_messages(
                        session_id,
                        target=max(0, min(write.size_limit, self.threshold // 2)),
                        enough=write.size_limit,
                    )
                except SessionConflictError:
                    # Other writers' moves kept winning over ours. The append must not fail for it:
                    # it goes in above the threshold if the document still holds it under MongoDB's
                    # limit (the next append moves again).
                    again = self.state(session_id, measure=True)
                    if again is None or again.size is None or again.size + grows_by > MAX_DOCUMENT_SIZE:
                        raise
                    logger.debug("session_id=<%s> | appending without moving: other writers' moves won", session_id)
            else:
                self.correct_estimate(session_id, state.size, state.estimate)
            compacted = retry = True  # retried without the size condition: it may not fit below it
        return retry, extended, compacted

    def state(self, session_id: str, measure: bool, agent_key: str | None = None) -> StorageState | None:
        """The document's size estimate and overflow expiry; with ``measure``, its size too (one small
        aggregate; otherwise a find of a few fields); with ``agent_key``, that agent's ``overflow_count``."""
        if measure:
            pipeline = storage_state_pipeline(self.key(session_id), agent_key)
            documents = self.aggregate(session_id, pipeline, "read session size")
            document = documents[0] if documents else None
        else:
            fields = storage_state_fields(agent_key)
            document = self.find_one(session_id, {"_id": self.key(session_id)}, fields, "read session size")
        if document is None:
            return None
        moved = ((document.get("agents") or {}).get(agent_key) or {}).get("overflow_count") if agent_key else 0
        return StorageState(
            int(document["size"]) if measure else None,
            document.get("size_estimate"),
            document.get("companions_until"),
            document.get("companions_ttl"),
            moved if isinstance(moved, int) else 0,
            document.get(KEY_FIELD),
        )

    def correct_estimate(self, session_id: str, size: int, estimate: int | None) -> None:
        """Bring ``size_estimate`` down to the measured size (writes since the measure keep their share)."""
        with self.errors(session_id, "correct size estimate"):
            self.collection.update_one(
                {"_id": self.key(session_id)}, {"$inc": {"size_estimate": size - (estimate or 0)}}
            )

"""Our extensions of the Strands ``SessionRepository``: metadata, feedback, listing, message metrics,
fields beside messages, and repair.

A mixin of :class:`~mongodb_session_manager.MongoDBSessionRepository`, kept apart from the Strands
contract so each module stays about one thing; like the contract, each method validates, encodes,
makes one call to the session store (:mod:`._store`) or the reader (:mod:`._reader`) and logs.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from pymongo import ASCENDING

from ._codec import decode_value, encode_value
from ._documents import MESSAGE_FIELDS, aware, aware_all, missing_agent, session_missing, utc_now
from ._pipelines import feedback_pipeline, listing_projection, metadata_equals
from ._store import Write
from ._validation import (
    validate_feedback,
    validate_id,
    validate_listing_limit,
    validate_message_id,
    validate_metadata,
    validate_metadata_key,
    validate_metadata_keys,
)
from .errors import SessionStorageError, SessionValidationError

if TYPE_CHECKING:
    from pymongo.collection import Collection

    from ._encryption import Encryption, Sealer
    from ._overflow_io import OverflowIO
    from ._reader import Reader
    from ._store import SessionStore

logger = logging.getLogger(__name__)

__all__ = ["DEFAULT_REPAIR_GRACE", "RepositoryExtensions", "extra_fields"]

#: ``repair_session`` deletes documents nothing refers to only once they are this old: younger ones
#: may belong to a write still in flight.
DEFAULT_REPAIR_GRACE = timedelta(minutes=10)
# Fields the repository itself keeps beside a stored message.
_ENTRY_BOOKKEEPING = frozenset({"blobs", "role"})


class RepositoryExtensions:
    """Metadata, feedback, listing, metrics, fields beside messages and repair (see the module docstring)."""

    _store: SessionStore
    _overflow: OverflowIO
    _reader: Reader
    collection: Collection[dict[str, Any]]
    encryption: Encryption | None

    def _sealer(self, session_id: str) -> Sealer | None: ...  # see MongoDBSessionRepository

    def _open(self, session_id: str, value: Any) -> Any: ...  # see MongoDBSessionRepository

    def repair_session(self, session_id: str, grace: timedelta = DEFAULT_REPAIR_GRACE) -> dict[str, int]:
        """Delete what crashes left of a session outside its document.

        Writes to the overflow collection are crash-safe: what an interrupted write leaves behind is
        never read, and the next move or redaction of the session collects most of it. Two leftovers
        need this step: the old binaries of a message whose redaction was interrupted right after it
        replaced them, and new binaries of an interrupted redaction of a moved message. Both are
        unreferenced. This deletes every overflow document of the session that nothing refers to and
        that is older than ``grace`` (younger ones may belong to a write still in flight), and every
        unfinished write's record older than ``grace`` with its documents.

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
        return self._overflow.repair(session_id, grace)

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
        encoded = extra_fields(fields, encode=True)
        self._overflow.update_entry(session_id, agent_id, message_id, encoded, "set message fields", "fields")

    def get_message_metrics(self, session_id: str, agent_id: str) -> list[dict[str, Any]]:
        """Return ``[{"message_id", "event_loop_metrics"}, ...]`` for the agent's messages that carry metrics.

        Only the message ids and metrics are transferred, not the messages.

        Raises:
            SessionNotFoundError: The session or agent does not exist.
        """
        validate_id(session_id, "session_id")
        validate_id(agent_id, "agent_id")
        agent, entries = self._reader.read_range(
            session_id, agent_id, 0, None, fields=("message_id", "event_loop_metrics")
        )
        if not agent:
            raise missing_agent(session_id, agent_id, agent)
        ids = [entry.get("message_id") for entry in entries]
        if ids != list(range(len(entries))):
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored history is not contiguous: "
                f"message ids {ids[:3]}... do not count from 0"
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
        sealer = self._sealer(session_id)
        changes: dict[str, Any] = {
            f"metadata.{key}": value if sealer is None else sealer.seal(value) for key, value in stored.items()
        }
        changes["updated_date"] = utc_now()
        query = {"_id": self._store.key(session_id)}
        if sealer is None:
            write = Write(query, {"$set": changes}, "update metadata", "metadata", grows_by=stored.size)
        else:  # grows by the encrypted values' size
            write = Write(
                query,
                {"$set": changes},
                "update metadata",
                "metadata",
                payload=changes,
                key_id=sealer.key_id,
                key_created=sealer.created,
            )
        if not self._store.write(session_id, write)[0]:
            raise session_missing(session_id)
        logger.debug("session_id=<%s>, keys=<%s> | metadata updated", session_id, sorted(metadata))

    def get_metadata(self, session_id: str) -> dict[str, Any]:
        """Return the session's metadata (``{}`` when none was set).

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        document = self._store.find_one(
            session_id, {"_id": self._store.key(session_id)}, {"metadata": 1}, "read metadata"
        )
        if document is None:
            raise session_missing(session_id)
        stored = {key: self._open(session_id, value) for key, value in (document.get("metadata") or {}).items()}
        metadata: dict[str, Any] = aware_all(decode_value(stored))
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
        update = {"$unset": {f"metadata.{key}": "" for key in keys}, "$set": {"updated_date": utc_now()}}
        if not self._store.write(session_id, Write({"_id": self._store.key(session_id)}, update, "delete metadata"))[0]:
            raise session_missing(session_id)
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
        sealer = self._sealer(session_id)
        comment = entry["comment"] if sealer is None else sealer.seal(entry["comment"])
        write = Write(
            {"_id": self._store.key(session_id)},
            feedback_pipeline(entry["rating"], comment),
            "add feedback",
            "feedback",
            payload={**entry, "comment": comment, "created_at": utc_now()},
            returning={"feedbacks": {"$slice": -1}, "_id": 0},
            key_id=None if sealer is None else sealer.key_id,
            key_created=sealer is not None and sealer.created,
        )
        _, document = self._store.write(session_id, write)
        if document is None:
            raise session_missing(session_id)
        logger.debug("session_id=<%s>, rating=<%s> | feedback added", session_id, entry["rating"])
        return self._feedback_entry(session_id, document["feedbacks"][-1])

    def get_feedbacks(self, session_id: str) -> list[dict[str, Any]]:
        """Return the session's feedback entries, oldest first.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        validate_id(session_id, "session_id")
        document = self._store.find_one(
            session_id, {"_id": self._store.key(session_id)}, {"feedbacks": 1}, "read feedback"
        )
        if document is None:
            raise session_missing(session_id)
        return [self._feedback_entry(session_id, entry) for entry in document.get("feedbacks") or []]

    def _feedback_entry(self, session_id: str, entry: dict[str, Any]) -> dict[str, Any]:
        opened = {**entry, "created_at": aware(entry.get("created_at"))}
        if "comment" in entry:
            opened["comment"] = self._open(session_id, entry["comment"])
        return opened

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
        validate_listing_limit(limit)
        query: dict[str, Any] = self._store.scope()  # this repository's tenant (or none) only
        if metadata_filter and self.encryption is not None:
            raise SessionValidationError(
                "metadata_filter",
                "metadata values are encrypted (randomly: equal values differ when stored), so they cannot be "
                "queried; list without a filter, or keep the values to filter on in a collection of your own",
            )
        if metadata_filter:
            query.update(metadata_equals(validate_metadata(dict(metadata_filter))))
        if after is not None:
            query["_id"] = {"$gt": self._store.key(validate_id(after, "after"))}
        with self._store.errors(None, "list sessions"):
            documents = list(self.collection.find(query, listing_projection()).sort("_id", ASCENDING).limit(limit))
        return [
            {
                "session_id": doc.get("session_id", doc["_id"]),
                "session_type": doc.get("session_type"),
                "created_at": doc.get("created_at"),
                "updated_at": doc.get("updated_at"),
                "last_activity": aware(doc.get("updated_date")),
                "metadata": decode_value(
                    {
                        key: self._open(doc.get("session_id", doc["_id"]), value)
                        for key, value in (doc.get("metadata") or {}).items()
                    }
                ),
            }
            for doc in documents
        ]


def extra_fields(fields: Mapping[str, Any] | None, encode: bool) -> dict[str, Any]:
    """Fields stored beside a message, checked (not message fields) and, with ``encode``, encoded."""
    checked: dict[str, Any] = {}
    for name, value in (fields or {}).items():
        validate_metadata_key(name)
        if name in MESSAGE_FIELDS or name in _ENTRY_BOOKKEEPING:
            raise SessionValidationError("fields", f"{name!r} is a message field and cannot be set this way")
        checked[name] = encode_value(value, f"fields[{name!r}]")[0] if encode else value
    return checked

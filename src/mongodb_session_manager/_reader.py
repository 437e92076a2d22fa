"""Reading an agent's messages wherever they are: the session document and the buckets of the overflow collection.

:class:`Reader` is the one reader that follows bucket descriptors: the message reads
(``list_messages``, ``read_message``, the append's "already stored?" check) and the metrics read
all go through :meth:`Reader.read_range`, with the same checks (descriptors well formed, a bucket
a merge just replaced read again, the counter matched by what is stored), and binary values are put
back by :meth:`Reader.decode_entries`, verified.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from bson.binary import Binary
from bson.objectid import ObjectId

from ._codec import decode_value
from ._consistency import session_option
from ._documents import encode_field_name
from ._encryption import ENCRYPTED_SUBTYPE, open_entry
from ._overflow import BlobRef, assemble_blob, checked_descriptors, chunk_of, find_references
from ._pipelines import buckets_pipeline, messages_pipeline
from ._store import ATTEMPTS, SessionStore
from .errors import SessionStorageError

__all__ = ["BucketGone", "Reader", "reading_again_if_merged"]

_T = TypeVar("_T")


class BucketGone(SessionStorageError):
    """A bucket a descriptor named was not found (replaced by a merge meanwhile, or lost)."""


def reading_again_if_merged(read: Callable[[], _T]) -> _T:
    """Run a read that follows bucket descriptors; if a bucket was gone (a merge replaced it after the
    descriptors were read), read again, a few times, before reporting it."""
    for _attempt in range(ATTEMPTS - 1):
        try:
            return read()
        except BucketGone:
            continue
    return read()


class Reader:
    """Reads stored message entries for one :class:`._store.SessionStore` (see the module docstring)."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store

    def read_range(
        self,
        session_id: str,
        agent_id: str,
        offset: int,
        limit: int | None,
        fields: Sequence[str] | None = None,
        decode: bool = True,
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        """Read stored entries ``[offset, offset + limit)`` of an agent, wherever they are.

        One aggregate on the session document returns the resident part of the range and the
        descriptors of the buckets that hold the rest; those buckets are read in one more command,
        each sliced on the server to the part of the range it holds. A bucket that disappeared
        between the two (replaced by a merge) makes it read again. Offloaded binaries are put back
        (one more read when there are any) unless ``decode`` is false or ``fields`` are chosen.

        Args:
            fields: Entry fields to read (all when ``None``).

        Returns:
            ``(agent, entries)``: ``agent`` is ``None`` if the session is missing, ``{}`` if the
            agent is missing, otherwise ``{"message_count": ...}``.

        Raises:
            SessionStorageError: The stored history does not hold the messages its counter says it
                has (entries removed, descriptors or chunks damaged).
        """
        agent, entries = reading_again_if_merged(lambda: self._read_once(session_id, agent_id, offset, limit, fields))
        if decode and fields is None and entries:
            entries = self.decode_entries(session_id, entries)
        return agent, entries

    def _read_once(
        self, session_id: str, agent_id: str, offset: int, limit: int | None, fields: Sequence[str] | None
    ) -> tuple[dict[str, Any] | None, list[dict[str, Any]]]:
        pipeline = messages_pipeline(self.store.key(session_id), encode_field_name(agent_id), offset, limit, fields)
        documents = self.store.aggregate(session_id, pipeline, "read messages")
        if not documents:
            return None, []
        stored = documents[0].get("agent")
        if not isinstance(stored, dict):
            return {}, []
        descriptors = checked_descriptors(stored.get("overflow"), session_id, agent_id)
        entries = self.moved_entries(session_id, agent_id, descriptors, offset, limit, fields)
        entries.extend(stored.get("messages") or [])
        count = stored.get("message_count")
        if not isinstance(count, int) or count < 0:
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored message counter is malformed"
            )
        end = count if limit is None else min(offset + limit, count)
        expected = max(0, end - offset)
        if len(entries) != expected:  # (each entry's id is checked where it is rebuilt)
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored history is incomplete: the agent has "
                f"{count} messages, but {len(entries)} of the {expected} from message_id {offset} are stored"
            )
        return {"message_count": count}, entries

    def moved_entries(
        self,
        session_id: str,
        agent_id: str,
        descriptors: list[dict[str, Any]],
        offset: int,
        limit: int | None,
        fields: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The entries of ``[offset, offset + limit)`` held by the buckets ``descriptors`` name (checked
        descriptors; those outside the range are skipped), in one command (none if no bucket is in range).

        Raises:
            BucketGone: A bucket was not found (replaced by a merge meanwhile, or lost).
        """
        end = None if limit is None else offset + limit
        wanted = [d for d in descriptors if d["first"] + d["count"] > offset and (end is None or d["first"] < end)]
        entries: list[dict[str, Any]] = []
        if not wanted:
            return entries
        with self.store.causal(session_id) as session, self.store.errors(session_id, "read moved messages"):
            pipeline = buckets_pipeline(self.store.key(session_id), [d["id"] for d in wanted], offset, limit, fields)
            buckets = {doc["_id"]: doc for doc in self.store.overflow.aggregate(pipeline, **session_option(session))}
        for descriptor in sorted(wanted, key=lambda d: d["first"]):
            bucket = buckets.get(descriptor["id"])
            if bucket is None:
                raise BucketGone(
                    f"session_id=<{session_id}>, agent_id=<{agent_id}> | moved messages from message_id "
                    f"{descriptor['first']} are missing from {self.store.overflow.name}"
                )
            entries.extend(bucket.get("messages") or [])
        return entries

    def decode_entries(self, session_id: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Give stored message entries back as they were written: values unescaped, offloaded binaries
        put back (one read for all of them), each verified against its length and SHA-256.

        Raises:
            SessionStorageError: A chunk is missing, altered or malformed.
        """
        engine = self.store.encryption
        sealed: set[ObjectId] = set()  # binaries of encrypted entries: ciphertext too
        if engine is not None:
            opened = []
            for entry in entries:
                plain_entry, was_sealed = open_entry(engine, session_id, entry)
                if was_sealed:
                    sealed.update(ref.blob_id for ref in find_references([plain_entry]))
                opened.append(plain_entry)
            entries = opened
        refs = find_references(entries)
        if not refs:
            plain: list[dict[str, Any]] = decode_value(entries)
            return plain
        chunk_ids = [chunk for ref in refs for chunk in ref.chunk_ids()]
        query = {"_id": {"$in": chunk_ids}, **self.store.owned(session_id)}
        with self.store.causal(session_id) as session, self.store.errors(session_id, "read binary content"):
            documents = list(self.store.overflow.find(query, {"data": 1}, **session_option(session)))
        chunks: dict[tuple[ObjectId, int], bytes] = {}
        for doc in documents:
            key, data = chunk_of(doc)
            if key is None or data is None:
                raise SessionStorageError(
                    f"session_id=<{session_id}> | a stored binary chunk is malformed in {self.store.overflow.name}"
                )
            chunks[key] = data
        values: dict[ObjectId, bytes] = {}

        def lookup(ref: BlobRef) -> bytes:
            if ref.blob_id not in values:
                parts = {n: chunks[(ref.blob_id, n)] for n in range(ref.chunk_count) if (ref.blob_id, n) in chunks}
                data = assemble_blob(ref, parts, session_id)
                if ref.blob_id in sealed:
                    data = engine.open(session_id, Binary(data, ENCRYPTED_SUBTYPE))
                values[ref.blob_id] = data
            return values[ref.blob_id]

        decoded: list[dict[str, Any]] = decode_value(entries, lookup)
        return decoded

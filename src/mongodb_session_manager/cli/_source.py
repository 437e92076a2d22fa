"""Reading a session store without writing to it: what every command reads goes through :class:`Source`.

The repository (``MongoDBSessionRepository``) creates its indexes when it is built, which needs
write access; an operator inspecting a store often has only read access. So the commands that only
read (``list``, ``show``, ``export``, ``stats``, ``verify`` without ``--repair``) read here, raw, and
decode with the library's pure helpers (the value codec, the document layout, the pipelines the
repository itself sends), with the repository's checks: a history whose counter says more messages
than are stored, malformed bucket descriptors, a missing bucket or chunk, bytes that fail their
SHA-256: each raises :class:`~mongodb_session_manager.errors.SessionStorageError`, never a shorter
or different history.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import AbstractContextManager
from typing import Any

import bson
from bson.binary import Binary
from bson.codec_options import CodecOptions, DatetimeConversion
from bson.objectid import ObjectId
from bson.raw_bson import RawBSONDocument
from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import InvalidName
from strands.types.session import Session, SessionAgent

from .._codec import decode_value
from .._documents import (
    MESSAGE_FIELDS,
    aware,
    aware_all,
    document_to_agent,
    document_to_session,
    encode_field_name,
    session_key,
)
from .._encryption import ENCRYPTED_AGENT_FIELDS, ENCRYPTED_ENTRY_FIELDS, ENCRYPTED_SUBTYPE, Encryption, is_ciphertext
from .._overflow import BlobRef, assemble_blob, checked_descriptors, chunk_of, find_references
from .._pipelines import buckets_pipeline, messages_pipeline, metadata_equals, snapshot_pipeline
from .._validation import validate_id, validate_metadata
from ..errors import (
    SessionEncryptionError,
    SessionNotFoundError,
    SessionStorageError,
    SessionValidationError,
    translated,
)

__all__ = ["ENTRY_BOOKKEEPING", "PAGE", "Source", "split_entry"]

#: Sessions per page when walking a collection, messages per page when reading a history.
PAGE = 500
#: Fields the repository keeps beside a stored message for itself (not exported, never restored).
ENTRY_BOOKKEEPING = frozenset({"blobs", "role"})
_ATTEMPTS = 5


def split_entry(entry: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """A stored (decoded) message entry as ``(SessionMessage fields, fields stored beside it)``."""
    message = {name: entry[name] for name in MESSAGE_FIELDS if name in entry}
    beside = {
        name: value for name, value in entry.items() if name not in MESSAGE_FIELDS and name not in ENTRY_BOOKKEEPING
    }
    return message, beside


class _BucketGone(SessionStorageError):
    """A bucket a descriptor names was not found (a merge replaced it after we read the descriptors)."""


class Source:
    """The sessions collection and its overflow collection, read only.

    Args:
        client: The ``MongoClient``.
        database_name: The database.
        collection_name: The sessions collection.
        overflow_collection_name: Its overflow collection.
        tenant_id: The tenant whose sessions are read (``None``: sessions stored without a tenant).
    """

    def __init__(
        self,
        client: MongoClient[Any],
        database_name: str,
        collection_name: str,
        overflow_collection_name: str,
        tenant_id: str | None = None,
        encryption: Encryption | None = None,
    ) -> None:
        self.client = client
        self.tenant_id = tenant_id
        self.encryption = encryption
        try:
            database = client[database_name]
            self.collection: Collection[dict[str, Any]] = database[collection_name]
            self.overflow: Collection[dict[str, Any]] = database[overflow_collection_name]
        except InvalidName as e:
            raise SessionValidationError("database", str(e)) from None
        self.database_name = database_name

    def key(self, session_id: str) -> Any:
        """The session's ``_id`` (the library's :func:`.._documents.session_key`, as the repository uses it)."""
        return session_key(session_id, self.tenant_id)

    def owned(self, session_id: str) -> dict[str, Any]:
        """The condition selecting a session's overflow documents."""
        return {"session_id": self.key(session_id)}

    def errors(self, session_id: str | None, operation: str) -> AbstractContextManager[None]:
        """Driver errors as the library's (readable, without the connection string's secrets)."""
        return translated(self.client, session_id, operation)

    # ------------------------------------------------------------------ the collection

    def exists(self) -> bool:
        """Whether the sessions collection exists (a typo in ``--database`` must not read as "empty")."""
        with self.errors(None, "list collections"):
            names = self.client[self.database_name].list_collection_names(filter={"name": self.collection.name})
        return bool(names)

    def ttl(self) -> int | None:
        """The TTL of the collection's ``updated_date`` index in seconds (``None``: sessions never expire)."""
        with self.errors(None, "read indexes"):
            for spec in self.collection.list_indexes():
                if dict(spec.get("key", {})) == {"updated_date": 1} and "expireAfterSeconds" in spec:
                    return int(spec["expireAfterSeconds"])
        return None

    def query(self, metadata_filter: Mapping[str, Any] | None) -> dict[str, Any]:
        """The filter of sessions whose metadata holds these values (keys and values validated as
        ``list_sessions`` validates them: compared as data, never as operators)."""
        scope = {"tenant": self.tenant_id if self.tenant_id is not None else {"$exists": False}}
        if not metadata_filter:
            return scope
        return {**scope, **metadata_equals(validate_metadata(dict(metadata_filter)))}

    def count(self, query: Mapping[str, Any] | None = None) -> int:
        """How many sessions match ``query``."""
        with self.errors(None, "count sessions"):
            return self.collection.count_documents(dict(query) if query is not None else self.query(None))

    def session_ids(
        self, query: Mapping[str, Any] | None = None, after: str | None = None, limit: int | None = None
    ) -> Iterator[str]:
        """Session ids in id order, a page at a time (each page its own short command)."""
        given = 0
        while limit is None or given < limit:
            page_query = dict(query) if query is not None else self.query(None)
            if after is not None:
                page_query["_id"] = {"$gt": self.key(after)}
            size = PAGE if limit is None else min(PAGE, limit - given)
            with self.errors(None, "list sessions"):
                page = [
                    doc.get("session_id", doc["_id"])
                    for doc in self.collection.find(page_query, {"_id": 1, "session_id": 1})
                    .sort("_id", ASCENDING)
                    .limit(size)
                ]
            yield from page
            given += len(page)
            if len(page) < size:
                return
            after = page[-1]

    # ------------------------------------------------------------------ one session

    def _open(self, session_id: str, value: Any) -> Any:
        """A stored value, decrypted if it is ciphertext (which needs ``--master-key-file``)."""
        if not is_ciphertext(value):
            return value
        if self.encryption is None:
            raise SessionEncryptionError(
                f"session_id=<{session_id}> | its content is encrypted at rest (client-side field level "
                "encryption): pass --master-key-file (and --key-vault) to read it"
            )
        return self.encryption.open(session_id, value)

    def raw_document(self, session_id: str) -> tuple[dict[str, Any], int] | None:
        """The whole session document, decoded as stored (nothing unescaped), and its size in bytes."""
        raw = self.collection.with_options(codec_options=CodecOptions(document_class=RawBSONDocument))
        # Decoded here, leniently: a damaged document must be reported, not crash the reader.
        with self.errors(session_id, "read session"):
            document = raw.find_one({"_id": self.key(session_id)})
        if document is None:
            return None
        size = len(document.raw)
        return dict(_decoded(document)), size

    def document(self, session_id: str, projection: Mapping[str, Any]) -> dict[str, Any] | None:
        """``find_one`` of the session with a projection."""
        with self.errors(session_id, "read session"):
            return self.collection.find_one({"_id": self.key(session_id)}, dict(projection))

    def snapshot(self, session_id: str) -> tuple[Session, dict[str, SessionAgent]] | None:
        """The session and every agent's state (no messages), as ``read_session_snapshot`` returns them."""
        validate_id(session_id, "session_id")
        with self.errors(session_id, "read session"):
            documents = list(self.collection.aggregate(snapshot_pipeline(self.key(session_id))))
        if not documents:
            return None
        agents = {}
        for stored in (documents[0].get("agents") or {}).values():
            stored = {
                **stored,
                **{name: self._open(session_id, stored[name]) for name in ENCRYPTED_AGENT_FIELDS if name in stored},
            }
            agent = document_to_agent(stored, session_id)
            agents[agent.agent_id] = agent
        return document_to_session(documents[0]), agents

    def extras(self, session_id: str) -> dict[str, Any]:
        """What the session holds beside its agents: metadata, feedback, Graph and Swarm states, last activity.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        document = self.document(session_id, {"metadata": 1, "feedbacks": 1, "multi_agents": 1, "updated_date": 1})
        if document is None:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        multi_agents = {}
        for stored in (document.get("multi_agents") or {}).values():
            if isinstance(stored, Mapping) and isinstance(stored.get("id"), str):
                multi_agents[stored["id"]] = decode_value(self._open(session_id, stored.get("state")))
        metadata = {key: self._open(session_id, value) for key, value in (document.get("metadata") or {}).items()}
        feedbacks = [
            {**entry, "comment": self._open(session_id, entry["comment"])} if "comment" in entry else entry
            for entry in document.get("feedbacks") or []
            if isinstance(entry, Mapping)
        ]
        return {
            "metadata": aware_all(decode_value(metadata)),
            "feedbacks": [{**entry, "created_at": aware(entry.get("created_at"))} for entry in feedbacks],
            "multi_agents": multi_agents,
            "last_activity": aware(document.get("updated_date")),
        }

    # ------------------------------------------------------------------ messages

    def message_count(self, session_id: str, agent_id: str) -> int:
        """How many messages an agent has (its counter).

        Raises:
            SessionNotFoundError: The session or agent does not exist.
        """
        count, _ = self.read_entries(session_id, agent_id, 0, 0)
        return count

    def read_entries(
        self, session_id: str, agent_id: str, offset: int, limit: int | None, binaries: bool = True
    ) -> tuple[int, list[dict[str, Any]]]:
        """Stored entries ``[offset, offset + limit)`` of an agent, wherever they are, decoded.

        Args:
            binaries: Put offloaded binaries back (read and verified); otherwise they stay references
                (``show`` prints only their size).

        Returns:
            ``(message_count, entries)``; each entry holds the message fields and the fields stored
            beside the message (``event_loop_metrics``...).

        Raises:
            SessionNotFoundError: The session or agent does not exist.
            SessionStorageError: The stored history is damaged (see the module docstring).
        """
        for attempt in range(_ATTEMPTS):
            try:
                count, entries = self._read_once(session_id, agent_id, offset, limit)
                break
            except _BucketGone:
                if attempt == _ATTEMPTS - 1:
                    raise
        sealed: set[ObjectId] = set()  # binaries of encrypted entries (ciphertext too)
        for index, entry in enumerate(entries):
            if isinstance(entry, dict) and any(is_ciphertext(entry.get(name)) for name in ENCRYPTED_ENTRY_FIELDS):
                entry = entries[index] = {
                    **entry,
                    **{name: self._open(session_id, entry[name]) for name in ENCRYPTED_ENTRY_FIELDS if name in entry},
                }
                sealed.update(ref.blob_id for ref in find_references([entry]))
            if not isinstance(entry, dict) or entry.get("message_id") != offset + index or "message" not in entry:
                raise SessionStorageError(
                    f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{offset + index}> | stored "
                    "message is malformed or out of place; the stored history is not contiguous"
                )
        if not binaries:
            plain: list[dict[str, Any]] = decode_value(entries)
            return count, plain
        return count, self.decode_entries(session_id, entries, sealed)

    def _read_once(
        self, session_id: str, agent_id: str, offset: int, limit: int | None
    ) -> tuple[int, list[dict[str, Any]]]:
        pipeline = messages_pipeline(self.key(session_id), encode_field_name(agent_id), offset, limit)
        with self.errors(session_id, "read messages"):
            documents = list(self.collection.aggregate(pipeline))
        if not documents:
            raise SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")
        stored = documents[0].get("agent")
        if not isinstance(stored, dict):
            raise SessionNotFoundError(f"session_id=<{session_id}>, agent_id=<{agent_id}> | agent does not exist")
        entries: list[dict[str, Any]] = []
        descriptors = checked_descriptors(stored.get("overflow"), session_id, agent_id)
        if descriptors:
            with self.errors(session_id, "read moved messages"):
                pipeline = buckets_pipeline(self.key(session_id), [d["id"] for d in descriptors], offset, limit)
                buckets = {doc["_id"]: doc for doc in self.overflow.aggregate(pipeline)}
            for descriptor in sorted(descriptors, key=lambda d: d["first"]):
                bucket = buckets.get(descriptor["id"])
                if bucket is None:
                    raise _BucketGone(
                        f"session_id=<{session_id}>, agent_id=<{agent_id}> | moved messages from message_id "
                        f"{descriptor['first']} are missing from {self.overflow.name}"
                    )
                entries.extend(bucket.get("messages") or [])
        entries.extend(stored.get("messages") or [])
        count = stored.get("message_count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored message counter is malformed"
            )
        end = count if limit is None else min(offset + limit, count)
        if len(entries) != max(0, end - offset):
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{agent_id}> | stored history is incomplete: the agent has "
                f"{count} messages, but {len(entries)} of the {max(0, end - offset)} from message_id {offset} "
                "are stored"
            )
        return count, entries

    def decode_entries(
        self, session_id: str, entries: list[dict[str, Any]], sealed: set[ObjectId] | None = None
    ) -> list[dict[str, Any]]:
        """Entries as they were written: values unescaped, offloaded binaries put back and verified
        (and decrypted, for the ids in ``sealed``: binaries of encrypted entries).

        Raises:
            SessionStorageError: A chunk is missing, altered or malformed.
        """
        refs = find_references(entries)
        if not refs:
            plain: list[dict[str, Any]] = decode_value(entries)
            return plain
        chunks = self.read_chunks(session_id, refs)
        values: dict[ObjectId, bytes] = {}

        def lookup(ref: BlobRef) -> bytes:
            if ref.blob_id not in values:
                parts = {n: chunks[(ref.blob_id, n)] for n in range(ref.chunk_count) if (ref.blob_id, n) in chunks}
                data = assemble_blob(ref, parts, session_id)
                if sealed and ref.blob_id in sealed:
                    data = self._open(session_id, Binary(data, ENCRYPTED_SUBTYPE))
                values[ref.blob_id] = data
            return values[ref.blob_id]

        decoded: list[dict[str, Any]] = decode_value(entries, lookup)
        return decoded

    def read_chunks(self, session_id: str, refs: list[BlobRef]) -> dict[tuple[ObjectId, int], bytes]:
        """The chunks of these binaries that exist, by ``(blob id, chunk number)``.

        Raises:
            SessionStorageError: A chunk document is malformed.
        """
        ids = list({(chunk["b"], chunk["n"]): chunk for ref in refs for chunk in ref.chunk_ids()}.values())
        chunks: dict[tuple[ObjectId, int], bytes] = {}
        with self.errors(session_id, "read binary content"):
            documents = list(self.overflow.find({"_id": {"$in": ids}, **self.owned(session_id)}, {"data": 1}))
        for document in documents:
            key, data = chunk_of(document)
            if key is None or data is None:
                raise SessionStorageError(
                    f"session_id=<{session_id}> | a stored binary chunk is malformed in {self.overflow.name}"
                )
            chunks[key] = data
        return chunks


_LENIENT: CodecOptions[dict[str, Any]] = CodecOptions(
    unicode_decode_error_handler="replace", datetime_conversion=DatetimeConversion.DATETIME_AUTO
)


def _decoded(document: RawBSONDocument) -> Mapping[str, Any]:
    decoded: dict[str, Any] = bson.decode(document.raw, codec_options=_LENIENT)
    return decoded

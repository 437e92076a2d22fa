"""Pure helpers for storage outside the session document: binary references and message buckets.

No I/O here. Two things can leave the session document, both into one companion collection
(``<collection>_overflow`` by default):

* **Large binary values.** A ``bytes`` value inside a message that is larger than the repository's
  ``binary_offload_bytes`` is replaced, in the stored message, by a *reference*: a BSON Binary of
  the user-defined subtype :data:`REFERENCE_SUBTYPE` holding the blob's id, length and SHA-256.
  The bytes themselves are stored in chunk documents (``{"_id": {"b": blob_id, "n": i}, "data": ...}``)
  and put back, verified, when the message is read. Plain ``bytes`` are always stored as subtype 0,
  so a reference can never be confused with user data; a value that already carries the reserved
  subtype is refused on write.
* **Old messages.** When the session document nears ``overflow_threshold_bytes``, an agent's oldest
  messages move, in order, into *bucket* documents (``{"kind": "messages", "agent_id", "first",
  "count", "messages": [...]}``); the agent records how many have moved (``overflow_count``) and
  the id and range of each bucket (``overflow``), so a reader knows exactly which buckets to read.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import bson
from bson.binary import Binary
from bson.objectid import ObjectId

from .errors import SessionStorageError

#: BSON binary subtype (user-defined range 0x80-0xFF) that marks a reference to an offloaded value.
REFERENCE_SUBTYPE = 0x80
#: Largest chunk document payload. 1 MB images fit in one chunk; larger values take several.
CHUNK_BYTES = 4 * 1024 * 1024
#: Most bytes of messages put into one bucket document by a move.
BUCKET_BYTES = 2 * 1024 * 1024
#: Small buckets are merged, up to this many bytes each, once an agent has more than
#: ``max_buckets(threshold)`` of them.
MERGED_BUCKET_BYTES = 8 * 1024 * 1024


def max_buckets(threshold: int) -> int:
    """Descriptors an agent may keep before small buckets merge: about 1/16 of the threshold's bytes."""
    return max(16, threshold // 1024)


_REFERENCE_LENGTH = 12 + 8 + 32  # ObjectId, length (big-endian), SHA-256


@dataclass(frozen=True)
class BlobRef:
    """A reference to a binary value stored outside the session document."""

    blob_id: ObjectId
    length: int
    sha256: bytes

    @property
    def chunk_count(self) -> int:
        return max(1, -(-self.length // CHUNK_BYTES))

    def chunk_ids(self) -> list[dict[str, Any]]:
        """The ``_id`` of each chunk document, in order (field order matters: ``b`` then ``n``)."""
        return [{"b": self.blob_id, "n": n} for n in range(self.chunk_count)]

    def to_binary(self) -> Binary:
        return Binary(self.blob_id.binary + self.length.to_bytes(8, "big") + self.sha256, REFERENCE_SUBTYPE)

    @classmethod
    def from_binary(cls, value: Binary) -> BlobRef:
        data = bytes(value)
        if len(data) != _REFERENCE_LENGTH:
            raise SessionStorageError(f"stored binary reference is malformed ({len(data)} bytes)")
        return cls(ObjectId(data[:12]), int.from_bytes(data[12:20], "big"), data[20:])


def is_reference(value: Any) -> bool:
    return isinstance(value, Binary) and value.subtype == REFERENCE_SUBTYPE


def find_references(value: Any) -> list[BlobRef]:
    """Every reference inside ``value`` (a stored message entry, or a list of them)."""
    found: list[BlobRef] = []
    for item in _leaves(value):
        if is_reference(item):
            found.append(BlobRef.from_binary(item))
    return found


def _leaves(value: Any) -> Iterator[Any]:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        else:
            yield item


def chunk_documents(owner: Any, ref: BlobRef, data: bytes, expire_at: datetime | None) -> list[dict[str, Any]]:
    """The chunk documents that store one offloaded value (``owner``: the session's key)."""
    documents = []
    for chunk_id in ref.chunk_ids():
        start = chunk_id["n"] * CHUNK_BYTES
        document: dict[str, Any] = {
            "_id": chunk_id,
            "kind": "blob",
            "session_id": owner,
            "data": data[start : start + CHUNK_BYTES],
        }
        if expire_at is not None:
            document["expire_at"] = expire_at
        documents.append(document)
    return documents


def assemble_blob(ref: BlobRef, chunks: Mapping[int, bytes], session_id: str) -> bytes:
    """Join a value's chunks and check its length and SHA-256.

    Raises:
        SessionStorageError: A chunk is missing or the bytes differ from what was stored.
    """
    missing = [n for n in range(ref.chunk_count) if n not in chunks]
    if missing:
        raise SessionStorageError(
            f"session_id=<{session_id}> | stored binary {ref.blob_id} is missing chunk(s) {missing[:5]}"
        )
    data = b"".join(chunks[n] for n in range(ref.chunk_count))
    if len(data) != ref.length or hashlib.sha256(data).digest() != ref.sha256:
        raise SessionStorageError(f"session_id=<{session_id}> | stored binary {ref.blob_id} is corrupt")
    return data


def bucket_document(
    owner: Any,
    agent_id: Any,
    first: int,
    entries: list[dict[str, Any]],
    size: int,
    expire_at: datetime | None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A new bucket holding ``entries`` (message ids from ``first``), and the descriptor the session keeps of it.

    Args:
        owner: The session's key (its ``_id``; the overflow collection's shard key).
        size: The entries' encoded size, recorded in the descriptor (merges plan with it).
    """
    bucket: dict[str, Any] = {
        "_id": ObjectId(),
        "kind": "messages",
        "session_id": owner,
        "agent_id": agent_id,
        "first": first,
        "count": len(entries),
        "messages": entries,
    }
    if expire_at is not None:
        bucket["expire_at"] = expire_at
    return bucket, {"id": bucket["_id"], "first": first, "count": len(entries), "bytes": size}


def entry_size(entry: Mapping[str, Any]) -> int:
    """Encoded size of one message entry, in bytes."""
    return len(bson.encode(entry))


def plan_moves(resident_sizes: Mapping[str, Sequence[int]], need: int) -> dict[str, int]:
    """Choose how many of each agent's oldest resident messages to move out to free ``need`` bytes.

    Messages are taken oldest first from whichever agent currently keeps the most bytes in the
    document, so one long conversation gives way before a short one.

    Args:
        resident_sizes: ``{agent key: [size of each resident message, oldest first]}``.
        need: Bytes to free.

    Returns:
        ``{agent key: count}`` for the agents that move anything.
    """
    resident = {key: sum(sizes) for key, sizes in resident_sizes.items()}
    moved = dict.fromkeys(resident_sizes, 0)
    freed = 0
    while freed < need:
        candidates = [key for key in resident if moved[key] < len(resident_sizes[key])]
        if not candidates:
            break
        key = max(candidates, key=lambda k: resident[k])
        size = resident_sizes[key][moved[key]]
        moved[key] += 1
        resident[key] -= size
        freed += size
    return {key: count for key, count in moved.items() if count}


def split_into_buckets(sizes: Sequence[int], max_bytes: int = BUCKET_BYTES) -> list[tuple[int, int]]:
    """Split consecutive messages into ``(start, count)`` runs of at most ``max_bytes`` each.

    A message larger than ``max_bytes`` gets a bucket of its own.
    """
    runs: list[tuple[int, int]] = []
    start, total = 0, 0
    for index, size in enumerate(sizes):
        if index > start and total + size > max_bytes:
            runs.append((start, index - start))
            start, total = index, 0
        total += size
    if start < len(sizes):
        runs.append((start, len(sizes) - start))
    return runs


def plan_merges(
    sizes: Sequence[int], max_bytes: int = MERGED_BUCKET_BYTES, full_bytes: int = BUCKET_BYTES
) -> list[tuple[int, int]]:
    """Group consecutive small buckets into ``(start, count)`` runs of at most ``max_bytes``; runs of 2+ only.

    Each descriptor a session document keeps costs it ~60 bytes: merging small buckets keeps their
    number proportional to the history's size, whatever the threshold. Buckets of ``full_bytes``
    or more are never rewritten (they would be copied again at every merge).
    """
    runs: list[tuple[int, int]] = []
    start = 0
    for index in range(len(sizes) + 1):
        if index == len(sizes) or sizes[index] >= full_bytes:
            small = sizes[start:index]
            runs.extend((start + first, count) for first, count in split_into_buckets(small, max_bytes) if count > 1)
            start = index + 1
    return runs


# ---------------------------------------------------------------------------------------- expiry


def expiry_margin(ttl: int) -> float:
    """Seconds by which overflow documents' expiry leads their session's (a quarter TTL, 1 s to 1 h)."""
    return float(min(max(ttl / 4, 1.0), 3600.0))


def companions_expiry(ttl: int | None, now: datetime) -> datetime | None:
    """Expiry date for overflow documents written ``now``: they outlive their session by a margin.

    A session expires ``ttl`` after its last write. Its overflow documents carry their own
    ``expire_at`` (TTL index, ``expireAfterSeconds=0``), set to ``now + ttl + 3 * margin``, and the
    session records the earliest of them in ``companions_until``. Every write to the session
    requires ``companions_until >= now + ttl + margin`` (:func:`companions_deadline`, a filter
    condition that costs nothing while it holds); when it fails they are all pushed forward first.
    Overflow documents therefore never expire before their session, and linger at most
    ``3 * margin`` after it. ``None`` when sessions never expire.
    """
    if ttl is None:
        return None
    return now + timedelta(seconds=ttl + 3 * expiry_margin(ttl))


def companions_deadline(ttl: int | None, now: datetime) -> datetime | None:
    """The earliest ``companions_until`` a write accepts ``now`` (see :func:`companions_expiry`)."""
    if ttl is None:
        return None
    return now + timedelta(seconds=ttl + expiry_margin(ttl))


def descriptor_of(descriptors: Any, message_id: int) -> dict[str, Any] | None:
    """The bucket descriptor whose range holds ``message_id``."""
    for descriptor in descriptors or []:
        if descriptor["first"] <= message_id < descriptor["first"] + descriptor["count"]:
            return dict(descriptor)
    return None


def checked_descriptors(descriptors: Any, session_id: str, agent_id: str) -> list[dict[str, Any]]:
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


def overflow_key(doc_id: Any) -> Any:
    """A hashable key for an overflow document's ``_id``: a bucket's ObjectId, or ``(blob id, n)`` for a chunk."""
    if isinstance(doc_id, dict):
        return (doc_id.get("b"), doc_id.get("n"))
    return doc_id


def chunk_of(document: Any) -> tuple[tuple[ObjectId, int] | None, bytes | None]:
    """``((blob id, chunk number), bytes)`` of a chunk document; ``(None, None)`` if it is malformed."""
    chunk_id = document.get("_id") if isinstance(document, dict) else None
    data = document.get("data") if isinstance(document, dict) else None
    if not isinstance(chunk_id, dict) or not isinstance(data, bytes):
        return None, None
    blob_id, number = chunk_id.get("b"), chunk_id.get("n")
    if not isinstance(blob_id, ObjectId) or not isinstance(number, int) or isinstance(number, bool):
        return None, None
    return (blob_id, number), data


def old_refs(document: dict[str, Any] | None) -> list[BlobRef]:
    """The references a ``replaced_projection`` read returned."""
    if not document:
        return []
    return [BlobRef.from_binary(value) for refs in document.get("old") or [] for value in refs or []]

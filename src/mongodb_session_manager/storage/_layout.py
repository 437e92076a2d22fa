"""Pure logic of :class:`~mongodb_session_manager.storage.MongoDBStorage`: keys, documents, updates.

No I/O here: everything is tested without a server. ``mongodb_storage.py`` sends what these
functions build; its module docstring explains the design as a whole.

The key collection (``<collection>``) holds one document per key::

    {
      "_id": "session/s1/scopes/agent/a1/snapshots/snapshot_latest.json",   # the full key
      "expires": <date>,         # when the value expires (NO_EXPIRY: never); absent: no value (tombstone)
      "size": <int>,             # the value's length in bytes
      "data": <Binary>,          # the value, when it fits in the document ("inline") ...
      "version": <ObjectId>,     # ... or the version whose chunks hold it ("chunked"),
      "chunks": <int>,           #     in this many chunk documents
      "terms": ["oauth", "flow", "/session", "/snapshot", ...],   # search terms (content words; "/" + key words)
      "pending": [{"v": <ObjectId>, "n": <chunks>, "at": <date>, "live": true}, ...],   # chunks to clean up
      "remove_at": <date>        # TTL field: when MongoDB may delete the document
    }

The chunk collection (``<collection>_chunks``) holds chunked values, ``CHUNK_BYTES`` per document::

    {"_id": "<version hex>:000000", "key": "<full key>", "data": <Binary>, "remove_at": <date>}   # remove_at: TTL only

Every pending entry records its version's chunk count (``n``), so chunks are always fetched and
deleted by exact ``_id`` (point lookups on any server), never by a range.

Every mutation of a key document is one ``update`` (never ``findAndModify``: the test server runs it
as a collection scan, and deadlocks when many large ones meet one document). The plain write (the
document holds no chunks and nothing pending) is a classic ``$set``; every other update is a
pipeline whose last stages (:func:`_finish`) recompute ``pending`` (removed when empty) and
``remove_at`` from the rest of the document, so the document always satisfies: it keeps no
``remove_at`` while ``pending`` has entries (its records must survive); otherwise a value's document
is removed at its expiry (never, without one) and a document without a value (a tombstone) as soon
as MongoDB's TTL monitor passes.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary, ObjectId
from strands.storage.search.keyword import STOP_WORDS, tokenize
from strands.storage.storage import _normalize_key, _normalize_prefix
from strands.types.exceptions import StorageError

from .._validation import validate_id
from ..errors import SessionValidationError
from ._errors import StorageValidationError

# ----------------------------------------------------------------------------------------- sizes

#: MongoDB's largest document (and the largest command is this plus 16 KiB).
MAX_DOCUMENT_BYTES = 16 * 1024 * 1024
#: Room kept free in a key document for everything but the value and its terms (field names, the
#: pending records, the command around it).
INLINE_HEADROOM = 64 * 1024
#: Bytes per chunk document. Two chunks and their reply envelope fit in one 16 MiB reply batch, so a
#: chunked read costs one round trip per 16 MiB, and a 40 MB value is one ``insert`` (48 MB messages).
CHUNK_BYTES = 8 * 1024 * 1024 - 16 * 1024
#: Longest key accepted, in UTF-8 bytes. S3 allows 1,024; a key is stored twice in its document's
#: indexes, so it is bounded well below the document limit.
MAX_KEY_BYTES = 16 * 1024
#: Values up to this size have their words indexed for :meth:`MongoDBStorage.search` by default.
DEFAULT_SEARCH_INDEX_BYTES = 1024 * 1024
#: The most ``search_index_bytes`` may be: the words of a value this size (at worst about four times
#: its size in BSON) plus the value itself must fit in one document.
MAX_SEARCH_INDEX_BYTES = 2 * 1024 * 1024
#: Keys per reply when listing (a reply holds at most 16 MiB, so long keys make smaller pages).
LIST_BATCH = 50_000

# ------------------------------------------------------------------------------------------ time

#: ``expires`` of a value that never expires: the key-and-expiry index then serves every listing.
NO_EXPIRY = datetime(9999, 12, 31, tzinfo=UTC)
#: A chunked write that has not switched its key to the new version after this long is presumed dead:
#: a later write of the key, or :meth:`MongoDBStorage.repair`, may fence it off and delete its chunks.
WRITE_GRACE = timedelta(hours=1)
#: Chunks of an expiring value are removed by MongoDB this long after the value expires, so a key
#: document never outlives them and a reader never finds it without its chunks.
CHUNK_EXPIRY_MARGIN = timedelta(hours=1)
#: Longest expiry accepted (dates must stay far from the end of the calendar).
MAX_TTL = timedelta(days=365 * 100)

# --------------------------------------------------------------------------------------- indexes

#: Index names (also used as hints: the test server uses an ``_id`` range only when told to).
KEY_EXPIRES_INDEX = "key_expires"
TERMS_INDEX = "terms_key"
PENDING_INDEX = "pending_at"
TTL_INDEX = "remove_at_ttl"

#: ``(keys, spec, options)`` of every index of the key collection.
KEY_INDEXES: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
    (KEY_EXPIRES_INDEX, [("_id", 1), ("expires", 1)], {}),
    (TERMS_INDEX, [("terms", 1), ("_id", 1)], {}),
    (PENDING_INDEX, [("pending.at", 1)], {"sparse": True}),
    (TTL_INDEX, [("remove_at", 1)], {"expireAfterSeconds": 0}),
)
#: Indexes of the chunk collection (chunks are fetched and deleted by exact ``_id``).
CHUNK_INDEXES: tuple[tuple[str, list[tuple[str, int]], dict[str, Any]], ...] = (
    (TTL_INDEX, [("remove_at", 1)], {"expireAfterSeconds": 0}),
)

# ------------------------------------------------------------------------------------------ keys


def normalize_key(key: Any) -> str:
    """Normalise a key exactly as Strands' path-based backends do, and check what MongoDB needs.

    Runs of ``/`` collapse, leading and trailing ``/`` go; empty keys, backslashes and ``..``
    segments are refused (Strands' ``_normalize_key``). Keys must also be text that UTF-8 can encode
    (no lone surrogates) of at most :data:`MAX_KEY_BYTES` bytes.

    Raises:
        StorageValidationError: The key is refused.
    """
    if not isinstance(key, str):
        raise StorageValidationError("key", f"must be a string, got {type(key).__name__}")
    try:
        normalized = _normalize_key(key)
    except StorageError as e:
        raise StorageValidationError("key", _reason(e), ascii(key)) from None
    _check_text("key", normalized)
    return normalized


def normalize_prefix(prefix: Any) -> str:
    """Normalise a listing prefix as Strands' path-based backends do (a trailing ``/`` is kept).

    Raises:
        StorageValidationError: The prefix is refused (backslashes, ``..`` segments, not text).
    """
    if not isinstance(prefix, str):
        raise StorageValidationError("prefix", f"must be a string, got {type(prefix).__name__}")
    try:
        normalized = _normalize_prefix(prefix)
    except StorageError as e:
        raise StorageValidationError("prefix", _reason(e), ascii(prefix)) from None
    _check_text("prefix", normalized)
    return normalized


def namespace_prefix(current: str, prefix: Any) -> str:
    """The key prefix of a view ``current.namespace(prefix)``, as Strands' backends compute it."""
    normalized = normalize_prefix(prefix).rstrip("/")
    return f"{current}{normalized}/" if normalized else current


def _check_text(field: str, text: str) -> None:
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise StorageValidationError(field, "must be valid UTF-8 text (no lone surrogates)", ascii(text)) from None
    if size > MAX_KEY_BYTES:
        raise StorageValidationError(field, f"must be at most {MAX_KEY_BYTES} bytes in UTF-8, got {size}")


def _reason(error: StorageError) -> str:
    """Strands' message without the key it quotes (we show the key ourselves, shortened)."""
    text = str(error)
    return text.split(": ", 1)[1] if ": " in text else text


def as_bytes(data: Any) -> bytes:
    """The value to store: any bytes-like object, as ``bytes``.

    Raises:
        StorageValidationError: ``data`` is not bytes-like (a ``str`` must be encoded by the caller).
    """
    if isinstance(data, bytes):
        return data
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    raise StorageValidationError("data", f"must be bytes, got {type(data).__name__}")


#: What starts every key stored for a tenant: a backslash, which no key may hold (Strands refuses it).
TENANT_MARK = "\\"


def tenant_root(tenant_id: Any) -> str:
    """The part of every stored key that scopes it to a tenant: ``\\<tenant_id>\\`` (``""`` for none).

    Keys never hold a backslash, so no key of the storage without a tenant starts with one, and no
    tenant's area is a prefix of another's (tenant ids hold none either).

    Raises:
        StorageValidationError: The tenant id is refused (the rules of session ids).
    """
    if tenant_id is None:
        return ""
    try:
        validate_id(tenant_id, "tenant_id")
    except SessionValidationError as e:
        raise StorageValidationError("tenant_id", e.reason) from None
    return f"{TENANT_MARK}{tenant_id}{TENANT_MARK}"


def key_range(prefix: str) -> dict[str, Any]:
    """A filter on ``_id`` matching exactly the strings that start with ``prefix``.

    MongoDB compares strings by their UTF-8 bytes, which is code-point order (Python's), so the keys
    starting with ``prefix`` are those from ``prefix`` (inclusive) to the smallest string above every
    one of them: ``prefix`` with its last character incremented (a character at U+10FFFF is dropped
    and the one before it incremented; surrogates, which keys never hold, are skipped). The empty
    prefix matches every string ``_id``.
    """
    if not prefix:
        # Every key of the storage without a tenant: not the tenants' keys (see tenant_root).
        return {"$gte": "", "$not": {"$gte": TENANT_MARK, "$lt": chr(ord(TENANT_MARK) + 1)}}
    chars = list(prefix)
    while chars:
        code = ord(chars[-1])
        if code == 0x10FFFF:
            chars.pop()
            continue
        code += 1
        if 0xD800 <= code <= 0xDFFF:
            code = 0xE000
        chars[-1] = chr(code)
        return {"$gte": prefix, "$lt": "".join(chars)}
    return {"$gte": prefix}


# ---------------------------------------------------------------------------------------- chunks


def chunk_id(version: ObjectId, number: int) -> str:
    """The ``_id`` of chunk ``number`` of ``version``: sorts by version, then chunk number."""
    return f"{version}:{number:06d}"


def chunk_ids(version: ObjectId, count: int) -> list[str]:
    """The ``_id`` of every chunk of ``version``: fetched and deleted by exact id (point lookups)."""
    return [chunk_id(version, number) for number in range(count)]


def chunk_range(version: ObjectId) -> dict[str, str]:
    """A filter on ``_id`` matching every chunk of ``version`` (``:`` is followed by ``;`` in ASCII).

    Only for a version whose chunk count is not recorded (never the case for what this module
    writes): exact ids are cheaper on every server.
    """
    return {"$gte": f"{version}:", "$lt": f"{version};"}


def legacy_chunks(ids: list[str], found: list[Any]) -> dict[str, Any]:
    """The filter of the chunks among ``ids`` (not ``found`` already) stored without a ``key`` field, as
    versions before the chunk collection's shard key wrote them."""
    have = set(found)
    return {"_id": {"$in": [chunk for chunk in ids if chunk not in have]}, "key": {"$exists": False}}


def chunk_deletions(key: str, versions: Iterable[tuple[ObjectId, int | None]]) -> list[dict[str, Any]]:
    """Filters deleting every chunk of these ``(version, chunk count)`` pairs of the full ``key`` (one
    ``delete`` command; each filter names the key, the chunk collection's shard key)."""
    ids: list[str] = []
    filters: list[dict[str, Any]] = []
    for version, count in versions:
        if isinstance(count, int) and not isinstance(count, bool) and count >= 0:
            ids += chunk_ids(version, count)
        else:
            filters.append({"key": key, "_id": chunk_range(version)})
    return ([{"key": key, "_id": {"$in": ids}}] if ids else []) + filters


def split(data: bytes, size: int = CHUNK_BYTES) -> list[bytes]:
    """``data`` in pieces of ``size`` bytes (the last one shorter); at least one piece."""
    return [data[i : i + size] for i in range(0, max(len(data), 1), size)]


def fits_inline(key: str, size: int, terms: Sequence[str]) -> bool:
    """Whether a value of ``size`` bytes with these terms fits in its key document (and its command)."""
    key_bytes = len(key.encode("utf-8"))
    terms_bytes = sum(len(term.encode("utf-8")) + 16 for term in terms)
    return size + 2 * key_bytes + terms_bytes + INLINE_HEADROOM <= MAX_DOCUMENT_BYTES


def check_chunks(version: ObjectId, count: int, size: int, documents: Sequence[Mapping[str, Any]]) -> bytes | None:
    """The value held by ``documents``, or ``None`` if they are not exactly ``count`` chunks of ``size`` bytes."""
    if len(documents) != count:
        return None
    parts = []
    for number, document in enumerate(documents):
        data = document.get("data")
        if document.get("_id") != chunk_id(version, number) or not isinstance(data, bytes):
            return None
        parts.append(data)
    value = b"".join(parts)
    return value if len(value) == size else None


# ---------------------------------------------------------------------------------------- search

#: Strands' ``KeywordSearchStrategy`` scores a key without its extension (``_EXTENSION`` there; a
#: unit test checks the two patterns stay equal).
EXTENSION = re.compile(r"(?<=[^/])\.[^./]*$")
#: Marks a word of the key among the terms (content words never contain ``/``).
KEY_TERM = "/"


def terms_for(full_key: str, data: bytes, index_content: bool) -> list[str]:
    """The search terms stored with a value: its words and, marked with ``/``, its key's words.

    Words are Strands' (``tokenize``: lower case, split on non-word characters). The key is the full
    key without its extension; a search in a namespace scores the key relative to the namespace
    itself, so the key's words here only select candidates.
    """
    words = tokenize(data.decode("utf-8", errors="replace")) if index_content else set()
    key_words = {KEY_TERM + word for word in tokenize(EXTENSION.sub("", full_key))}
    return sorted(words | key_words)


def query_terms(query: str) -> tuple[frozenset[str], list[str], list[str]]:
    """``(words, content terms, all terms)`` of a query: its words without Strands' stop words, and
    the terms a stored value must hold one of to be a candidate (its content or key words)."""
    words = frozenset(tokenize(query) - STOP_WORDS)
    content = sorted(words)
    return words, content, content + [KEY_TERM + word for word in content]


def score(words: frozenset[str], relative_key: str, hits: Iterable[str]) -> int:
    """Strands' keyword score of a stored value: how many of the query's words it holds.

    ``KeywordSearchStrategy`` counts the distinct query words found in ``"<key without extension>
    <content>"``; the content's share is the content terms the server found (``hits`` without the
    key terms), the key's share is computed here from the key relative to the searched namespace.
    """
    found = {hit for hit in hits if not hit.startswith(KEY_TERM)}
    found |= words & tokenize(EXTENSION.sub("", relative_key))
    return len(found & words)


# ---------------------------------------------------------------------------------------- expiry


def utc_now() -> datetime:
    """Now, in UTC, at BSON's (millisecond) precision."""
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond // 1000 * 1000)


def aware(value: Any) -> datetime | None:
    """A stored date as an aware UTC datetime (pymongo answers naive UTC unless ``tz_aware``)."""
    if not isinstance(value, datetime):
        return None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def ttl_seconds(value: Any, field: str = "ttl") -> float | None:
    """Validate one expiry: seconds (int or float) or a ``timedelta``, positive; ``None`` for none."""
    if value is None:
        return None
    if isinstance(value, timedelta):
        seconds = value.total_seconds()
    elif isinstance(value, int | float) and not isinstance(value, bool):
        seconds = float(value)
    else:
        raise StorageValidationError(field, f"must be seconds or a timedelta, got {type(value).__name__}")
    if not math.isfinite(seconds) or seconds <= 0 or seconds > MAX_TTL.total_seconds():
        raise StorageValidationError(field, f"must be positive and at most {MAX_TTL.days} days", value)
    return seconds


@dataclass(frozen=True)
class Expiry:
    """Which keys expire, and how long after their last write.

    Rules are ``(prefix, seconds)`` pairs on full keys; the longest matching prefix decides, and
    ``None`` seconds means "never". No rule: never.
    """

    rules: tuple[tuple[str, float | None], ...] = ()

    @classmethod
    def parse(cls, ttl: Any) -> Expiry:
        """Build from the ``ttl`` argument: seconds, a ``timedelta``, ``None``, or ``{prefix: ttl}``.

        Raises:
            StorageValidationError: A prefix or an expiry is refused.
        """
        if isinstance(ttl, Mapping):
            rules = {normalize_prefix(prefix): ttl_seconds(value, f"ttl[{prefix!r}]") for prefix, value in ttl.items()}
            return cls(tuple(rules.items())).normalized()
        return cls((("", ttl_seconds(ttl)),))

    def with_rule(self, prefix: str, seconds: float | None) -> Expiry:
        """These rules plus one for ``prefix`` (replacing an earlier rule for the same prefix)."""
        rules = {**dict(self.rules), prefix: seconds}
        return Expiry(tuple(rules.items())).normalized()

    def normalized(self) -> Expiry:
        return Expiry(tuple(sorted(self.rules, key=lambda rule: len(rule[0]), reverse=True)))

    def seconds_for(self, key: str) -> float | None:
        for prefix, seconds in self.rules:
            if key.startswith(prefix):
                return seconds
        return None

    def expires(self, key: str, now: datetime) -> datetime:
        """The ``expires`` of a value of ``key`` written at ``now``."""
        seconds = self.seconds_for(key)
        return NO_EXPIRY if seconds is None else now + timedelta(seconds=seconds)


def chunk_removal(expires: datetime) -> datetime | None:
    """The ``remove_at`` of the chunks of a value expiring at ``expires`` (``None``: never)."""
    return None if expires >= NO_EXPIRY else expires + CHUNK_EXPIRY_MARGIN


# -------------------------------------------------------------------------- key document updates
#
# Each function returns an aggregation pipeline for one update of one key document. Inside a stage,
# ``$version``/``$chunks`` are the values before the stage, so "the version this update replaces"
# is recorded in the same stage that replaces it. The test server does not follow a path through an
# array inside an expression: arrays are walked with $filter/$map and ``$$this``.

_PENDING = {"$ifNull": ["$pending", []]}
_VALUE_FIELDS = ["data", "version", "chunks", "size", "terms", "expires"]


def _replaced_version(now: datetime) -> dict[str, Any]:
    """``pending`` plus, if the document holds a chunked value, that value's version as a dead entry."""
    return {
        "$concatArrays": [
            _PENDING,
            {"$cond": [{"$gt": [{"$ifNull": ["$chunks", 0]}, 0]}, [{"v": "$version", "n": "$chunks", "at": now}], []]},
        ]
    }


def _finish(now: datetime) -> list[dict[str, Any]]:
    """Drop an empty ``pending``; set ``remove_at`` from ``expires`` (none while entries are pending)."""
    has_pending = {"$gt": [{"$size": _PENDING}, 0]}
    return [
        {"$set": {"pending": {"$cond": [has_pending, "$pending", "$$REMOVE"]}}},
        {
            "$set": {
                "remove_at": {
                    "$cond": [
                        has_pending,
                        "$$REMOVE",
                        {
                            "$cond": [
                                {"$eq": [{"$type": "$expires"}, "missing"]},
                                now,  # no value: a tombstone, removed at the next TTL pass
                                {"$cond": [{"$lt": ["$expires", NO_EXPIRY]}, "$expires", "$$REMOVE"]},
                            ]
                        },
                    ]
                }
            }
        },
    ]


def as_stored(data: bytes) -> Binary:
    """The BSON Binary stored for a value: an encrypted value keeps its subtype (6, client-side
    encrypted; 0x81 for a chunk of one), so a reader knows to decrypt it."""
    return data if isinstance(data, Binary) else Binary(data)


def write_plain(data: bytes, terms: list[str], expires: datetime) -> dict[str, Any]:
    """Put a value in a key document that holds no chunks and nothing pending (use with the
    :data:`NOTHING_TO_CLEAN` filter): a plain update, as small as the value allows."""
    update: dict[str, Any] = {
        "$set": {"data": as_stored(data), "size": len(data), "terms": terms, "expires": expires},
        "$unset": {"remove_at": ""},
    }
    if expires < NO_EXPIRY:
        update["$set"]["remove_at"] = expires
        del update["$unset"]
    return update


def write_inline(data: bytes, terms: list[str], expires: datetime, now: datetime) -> list[dict[str, Any]]:
    """Put a value in the key document, whatever it held (recording a chunked value it replaces)."""
    return [
        {
            "$set": {
                "pending": _replaced_version(now),
                "data": as_stored(data),
                "size": len(data),
                "terms": {"$literal": terms},
                "expires": expires,
            }
        },
        {"$unset": ["version", "chunks"]},
        *_finish(now),
    ]


def begin_chunked(version: ObjectId, chunks: int, now: datetime) -> list[dict[str, Any]]:
    """Record a chunked write of ``version`` (in ``chunks`` chunks) as live, before any chunk exists;
    it may be presumed dead after :data:`WRITE_GRACE`."""
    entry = {"v": version, "n": chunks, "at": now + WRITE_GRACE, "live": True}
    return [{"$set": {"pending": {"$concatArrays": [_PENDING, [entry]]}}}, *_finish(now)]


def live_entry(version: ObjectId) -> dict[str, Any]:
    """A filter condition: ``version`` is recorded as a live write (nobody fenced it off)."""
    return {"pending": {"$elemMatch": {"v": version, "live": True}}}


#: A filter condition: the key document holds no chunked value and nothing pending, so an update
#: or a delete of it leaves nothing to clean up (the common case: one command).
NOTHING_TO_CLEAN: dict[str, Any] = {"pending": {"$exists": False}, "version": {"$exists": False}}


def switch_to(
    version: ObjectId, chunks: int, size: int, terms: list[str], expires: datetime, now: datetime
) -> list[dict[str, Any]]:
    """Make ``version`` the key's value, in one update, recording the chunked value it replaces (if
    any) as dead; use with the :func:`live_entry` filter (it matches only if nobody fenced us off)."""
    return [
        {
            "$set": {
                "pending": {
                    "$concatArrays": [
                        {"$filter": {"input": _PENDING, "cond": {"$ne": ["$$this.v", version]}}},
                        {
                            "$cond": [
                                {"$gt": [{"$ifNull": ["$chunks", 0]}, 0]},
                                [{"v": "$version", "n": "$chunks", "at": now}],
                                [],
                            ]
                        },
                    ]
                },
                "version": version,
                "chunks": chunks,
                "size": size,
                "terms": {"$literal": terms},
                "expires": expires,
            }
        },
        {"$unset": ["data"]},
        *_finish(now),
    ]


def delete_value(now: datetime) -> list[dict[str, Any]]:
    """Turn the document into a tombstone (no value), recording a chunked value's version as dead."""
    return [{"$set": {"pending": _replaced_version(now)}}, {"$unset": _VALUE_FIELDS}, *_finish(now)]


def retire(versions: list[ObjectId], now: datetime) -> list[dict[str, Any]]:
    """Mark these live writes dead: their switch can no longer apply, their chunks may go. With the
    :func:`live_entry` filter, the update matching says that this caller fenced the write off."""
    return [
        {
            "$set": {
                "pending": {
                    "$map": {
                        "input": _PENDING,
                        "in": {
                            "$cond": [
                                {"$and": [{"$in": ["$$this.v", versions]}, {"$eq": ["$$this.live", True]}]},
                                {"v": "$$this.v", "n": "$$this.n", "at": now},
                                "$$this",
                            ]
                        },
                    }
                }
            }
        },
        *_finish(now),
    ]


def forget(versions: list[ObjectId], now: datetime) -> list[dict[str, Any]]:
    """Drop the dead entries of these versions (their chunks are gone)."""
    keep = {"$or": [{"$not": [{"$in": ["$$this.v", versions]}]}, {"$eq": ["$$this.live", True]}]}
    return [{"$set": {"pending": {"$filter": {"input": _PENDING, "cond": keep}}}}, *_finish(now)]


@dataclass(frozen=True)
class Cleanup:
    """What a key document's pending entries leave to clean up.

    Attributes:
        dead: ``(version, chunk count)`` whose chunks may be deleted now (replaced values, writes
            fenced off): nothing can read them as current again.
        stale: Live writes past their grace: fence them off (:func:`retire`) before deleting.
    """

    dead: tuple[tuple[ObjectId, int | None], ...] = ()
    stale: tuple[tuple[ObjectId, int | None], ...] = ()

    def __bool__(self) -> bool:
        return bool(self.dead or self.stale)


def cleanup_of(document: Mapping[str, Any] | None, now: datetime, own: ObjectId | None = None) -> Cleanup:
    """Plan the cleanup of a key from its ``pending`` entries (as read after an update).

    Args:
        document: The key document (its ``pending``), or ``None``.
        now: The time of the cleanup.
        own: The version this writer just switched in or is writing (never cleaned here).
    """
    if document is None:
        return Cleanup()
    dead: dict[ObjectId, int | None] = {}
    stale: dict[ObjectId, int | None] = {}
    for entry in document.get("pending") or []:
        if not isinstance(entry, Mapping) or not isinstance(entry.get("v"), ObjectId) or entry["v"] == own:
            continue
        if entry.get("live") is not True:
            dead[entry["v"]] = entry.get("n")
        elif (at := aware(entry.get("at"))) is not None and at <= now:
            stale[entry["v"]] = entry.get("n")
    return Cleanup(tuple(dead.items()), tuple(stale.items()))

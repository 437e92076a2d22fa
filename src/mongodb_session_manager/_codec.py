"""Pure value codec: what the library stores for a user's value, and how it comes back exactly.

No I/O here. BSON stores almost every JSON value as it is, with three exceptions this module handles:

* **Objects shaped like a DBRef.** pymongo decodes every subdocument whose ``$ref`` is a string and
  that has an ``$id`` (and no ``$db``, or a string one) as a :class:`bson.dbref.DBRef`. A JSON Schema
  (``{"$ref": "#/definitions/x", "$id": "..."}``) in a tool input, an agent state or a metadata
  value would come back as a DBRef: a different type, a different key order, and a state Strands
  refuses to restore. Such an object is stored *escaped*: ``{ESCAPE_KEY: [[key, value], ...]}``,
  its items as a list of pairs, in order. An object that itself has the key :data:`ESCAPE_KEY` is
  escaped the same way, so on the way back every single-key ``{ESCAPE_KEY: [...]}`` is an escaped
  object and nothing else. DBRefs stored by earlier versions come back as the plain objects they were.
* **Nesting.** MongoDB refuses documents nested more than 100 levels; Python's BSON encoder raises
  ``RecursionError`` long before a few thousand. Values may nest :data:`MAX_NESTING` levels (the
  library's own document layout takes the rest), counted as stored, escapes included; deeper values
  are refused with :class:`~mongodb_session_manager.errors.SessionValidationError` before any I/O.
* **Large binaries** (messages only): see :mod:`mongodb_session_manager._overflow`. The same walk
  replaces them with references, and refuses user data carrying the reserved reference subtype.

Containers without anything to change are returned as they are, not copied.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from bson.binary import Binary
from bson.dbref import DBRef
from bson.errors import InvalidDocument, InvalidStringData
from bson.objectid import ObjectId

from ._overflow import REFERENCE_SUBTYPE, BlobRef, entry_size, is_reference
from .errors import MAX_DOCUMENT_SIZE, SessionTooLargeError, SessionValidationError

__all__ = [
    "ESCAPE_KEY",
    "MAX_MESSAGE_BYTES",
    "MAX_NESTING",
    "decode_value",
    "encode_entry",
    "encode_value",
    "same_message",
]

#: Largest stored message entry (after binaries moved out): what fits in a document with room to spare.
MAX_MESSAGE_BYTES = MAX_DOCUMENT_SIZE - 16 * 1024
# Fields of a message entry stored as they are (ids and Strands' timestamps).
_PLAIN_ENTRY_FIELDS = frozenset({"message_id", "created_at", "updated_at"})

#: Key of an escaped object: ``{ESCAPE_KEY: [[key, value], ...]}``.
ESCAPE_KEY = "$msm:object"
#: Deepest nesting of a stored value, in levels of objects and arrays below the value itself. MongoDB
#: allows 100 levels per document; a message sits 6 levels deep in its session or bucket document.
MAX_NESTING = 90
# An escaped object puts its values 3 levels down (wrapper, list of pairs, pair) instead of 1.
_ESCAPE_LEVELS = 3


def _needs_escape(item: dict[Any, Any]) -> bool:
    return ESCAPE_KEY in item or ("$ref" in item and "$id" in item)


def encode_value(
    value: Any, field: str, offload_threshold: int | None = None
) -> tuple[Any, list[tuple[BlobRef, bytes]]]:
    """What to store for ``value``: escaped objects, checked nesting, large binaries as references.

    Args:
        value: A user's value (message content, agent state, metadata value, ...).
        field: The argument it came from, named in errors.
        offload_threshold: Replace plain binary values longer than this many bytes with references
            to be stored outside the document; ``None`` leaves binaries in place.

    Returns:
        ``(stored value, [(reference, bytes), ...])``: the values to store outside, in order.

    Raises:
        SessionValidationError: ``value`` nests deeper than :data:`MAX_NESTING` levels, or contains
            a BSON Binary of the reserved subtype.
    """
    blobs: list[tuple[BlobRef, bytes]] = []

    def walk(item: Any, depth: int) -> Any:
        if isinstance(item, dict):
            escape = _needs_escape(item)
            below = depth + (_ESCAPE_LEVELS if escape else 1)
            if below > MAX_NESTING:
                raise _too_deep(field)
            changed = {key: walk(child, below) for key, child in item.items()}
            if escape:
                return {ESCAPE_KEY: [[key, child] for key, child in changed.items()]}
            return changed if any(changed[key] is not item[key] for key in item) else item
        if isinstance(item, list | tuple):
            if depth + 1 > MAX_NESTING:
                raise _too_deep(field)
            items = [walk(child, depth + 1) for child in item]
            return items if any(new is not old for new, old in zip(items, item, strict=True)) else item
        if isinstance(item, Binary) and item.subtype == REFERENCE_SUBTYPE:
            raise SessionValidationError(field, f"BSON binary subtype {REFERENCE_SUBTYPE:#x} is reserved")
        if offload_threshold is not None and _is_plain_bytes(item) and len(item) > offload_threshold:
            data = bytes(item)
            ref = BlobRef(ObjectId(), len(data), hashlib.sha256(data).digest())
            blobs.append((ref, data))
            return ref.to_binary()
        return item

    return walk(value, 0), blobs


def encode_entry(
    session_id: str, entry: dict[str, Any], offload_threshold: int, operation: str
) -> tuple[list[tuple[BlobRef, bytes]], int]:
    """Encode a message entry's values for storage (in place), large binaries moved out, and check
    that what is left fits in a document.

    Returns:
        The values moved out, and the entry's encoded size without them.

    Raises:
        SessionValidationError: A value cannot be stored.
        SessionTooLargeError: The message alone, binaries aside, is too large for a document.
    """
    blobs: list[tuple[BlobRef, bytes]] = []
    for name, value in list(entry.items()):
        if name in ("message", "redact_message"):
            entry[name], found = encode_value(value, "session_message", offload_threshold)
            blobs.extend(found)
        elif name not in _PLAIN_ENTRY_FIELDS:
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


def decode_value(value: Any, lookup: Callable[[BlobRef], bytes] | None = None) -> Any:
    """The user's value back from what :func:`encode_value` stored.

    Args:
        value: A value as pymongo decoded it.
        lookup: Supplies the bytes of each binary reference; ``None`` leaves references in place.

    Returns:
        The value as it was given to :func:`encode_value` (tuples come back as lists).
    """

    def walk(item: Any) -> Any:
        if isinstance(item, dict):
            if len(item) == 1 and isinstance(item.get(ESCAPE_KEY), list):
                return {pair[0]: walk(pair[1]) for pair in item[ESCAPE_KEY]}
            changed = {key: walk(child) for key, child in item.items()}
            return changed if any(changed[key] is not item[key] for key in item) else item
        if isinstance(item, list):
            items = [walk(child) for child in item]
            return items if any(new is not old for new, old in zip(items, item, strict=True)) else item
        if isinstance(item, DBRef):  # stored before escaping existed: give back the plain object
            return walk(item.as_doc().to_dict())
        if lookup is not None and is_reference(item):
            return lookup(BlobRef.from_binary(item))
        return item

    return walk(value)


def same_message(stored: Any, entry: Any) -> bool:
    """Whether a stored message entry is the message ``entry`` is about to append (both as encoded).

    Strands gives every message a ``tracking_id``: when both carry one, they decide. Otherwise the
    content decides (``message`` and ``redact_message``), a binary reference standing for its
    value's length and SHA-256, so a value offloaded twice still compares equal.
    """
    if not isinstance(stored, dict) or not isinstance(entry, dict):
        return False
    ours, theirs = _tracking_id(entry), _tracking_id(stored)
    if ours and theirs:
        return bool(ours == theirs)
    return all(_comparable(stored.get(name)) == _comparable(entry.get(name)) for name in ("message", "redact_message"))


def _tracking_id(entry: dict[str, Any]) -> Any:
    message = entry.get("message")
    return message.get("tracking_id") if isinstance(message, dict) else None


def _comparable(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _comparable(child) for key, child in value.items()}
    if isinstance(value, list | tuple):
        return [_comparable(child) for child in value]
    if is_reference(value):
        ref = BlobRef.from_binary(value)
        return ("binary reference", ref.length, ref.sha256)
    if isinstance(value, bytearray | Binary) and not is_reference(value):
        return bytes(value)
    return value


def _is_plain_bytes(value: Any) -> bool:
    """``bytes``/``bytearray`` that BSON stores as subtype 0 (and hands back as ``bytes``)."""
    if isinstance(value, Binary):
        return value.subtype == 0
    return isinstance(value, bytes | bytearray)


def _too_deep(field: str) -> SessionValidationError:
    return SessionValidationError(
        field, f"nests deeper than {MAX_NESTING} levels of objects and arrays, which MongoDB cannot store"
    )

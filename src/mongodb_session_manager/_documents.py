"""Pure functions that turn Strands session objects into MongoDB documents and back.

No I/O here: everything is tested without a server.

Layout of one session document (``_id`` is the session id)::

    {
      "_id": "<session_id>",
      "session_id": "<session_id>",
      "session_type": "AGENT",
      "created_at": "<ISO string, exactly as Strands wrote it>",
      "updated_at": "<ISO string, exactly as Strands wrote it>",
      "created_date": <BSON date>,     # for indexes and queries
      "updated_date": <BSON date>,     # moved by every write: last activity, used by expiry
      "agents": {
        "<encoded agent_id>": {
          "agent_id": "<agent_id>", "state": {...}, "conversation_manager_state": {...},
          "_internal_state": {...}, "created_at": "...", "updated_at": "...",
          "message_count": <int>,
          # once old messages have moved to the overflow collection (see _overflow.py):
          "overflow_count": <int>, "overflow": [{"id", "first", "count", "bytes"}, ...], "edits": <int>,
          "messages": [
            {"message_id": 0, "message": {...}, "redact_message": null,
             "created_at": "...", "updated_at": "...",
             "event_loop_metrics": {...}},      # assistant messages only, added by the manager
            ...
          ]
        }
      },
      "multi_agents": {"<encoded id>": {"id": "...", "state": {...}, "created_at": "...", "updated_at": "..."}},
      "metadata": {...}, "feedbacks": [...]     # managed by MongoDBSessionManager
      "size_estimate": <int>,                  # an upper bound of this document's size
      "companions": true, "companions_until": <BSON date>   # only with overflow documents
    }

Timestamps of sessions, agents and messages are stored as the ISO strings Strands hands us (with
microseconds; a BSON date would keep only milliseconds), so they round-trip exactly. ``bytes`` are
stored by pymongo as BSON Binary and come back as ``bytes``.
"""

from __future__ import annotations

import dataclasses
import re
from datetime import UTC, datetime
from typing import Any

import bson
from bson.errors import InvalidDocument, InvalidStringData
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from ._codec import decode_value, encode_value
from .errors import SessionStorageError, SessionValidationError

#: Longest session or agent id accepted, in characters.
MAX_ID_LENGTH = 1024

AGENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SessionAgent))
MESSAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SessionMessage))
SESSION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Session))

# Characters that would turn an id into a field path ('.'), an operator ('$') or that we use as the
# escape character itself ('%'). NUL is refused outright, so it never needs escaping.
_FIELD_UNSAFE = re.compile(r"[%.$]")
_FIELD_ESCAPE = re.compile(r"%(25|2E|24)")
_UNESCAPE = {"25": "%", "2E": ".", "24": "$"}


def validate_id(value: Any, field: str) -> str:
    """Check a session, agent or multi-agent id and return it.

    Strands' own rule is kept (no path separators), plus what MongoDB needs: a non-empty string
    without NUL characters, of bounded length. Dots, dollars, spaces and any other unicode are fine.

    Args:
        value: The id to check.
        field: Argument name for the error message (``session_id``, ``agent_id``, ...).

    Returns:
        The id, unchanged.

    Raises:
        SessionValidationError: The id is not acceptable.
    """
    if not isinstance(value, str):
        raise SessionValidationError(field, f"must be a string, got {type(value).__name__}")
    if not value:
        raise SessionValidationError(field, "must not be empty")
    if len(value) > MAX_ID_LENGTH:
        raise SessionValidationError(field, f"must be at most {MAX_ID_LENGTH} characters, got {len(value)}")
    if "\x00" in value:
        raise SessionValidationError(field, "id cannot contain NUL characters", value.replace("\x00", "\\x00"))
    if not _is_utf8(value):
        raise SessionValidationError(field, "id must be valid UTF-8 text (no lone surrogates)", ascii(value))
    if "/" in value or "\\" in value:
        raise SessionValidationError(field, "id cannot contain path separators", value)
    return value


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def validate_message_id(value: Any) -> int:
    """Check a message id: a non-negative ``int`` (``bool`` is refused)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise SessionValidationError("message_id", "message id must be an integer", value)
    if value < 0:
        raise SessionValidationError("message_id", "message id must not be negative", value)
    return value


def encode_field_name(identifier: str) -> str:
    """Turn an id into a single, safe MongoDB field name, reversibly.

    ``%``, ``.`` and ``$`` are percent-encoded, so ``support.v2`` becomes ``support%2Ev2`` and
    ``$billing`` becomes ``%24billing``: an id can never become a nested path or an operator.
    Ids without those characters are stored as they are.
    """
    return _FIELD_UNSAFE.sub(lambda m: f"%{ord(m.group()):02X}", identifier)


def decode_field_name(field_name: str) -> str:
    """Inverse of :func:`encode_field_name`."""
    return _FIELD_ESCAPE.sub(lambda m: _UNESCAPE[m.group(1)], field_name)


def utc_now() -> datetime:
    """The current time as an aware UTC datetime."""
    return datetime.now(UTC)


def iso_now() -> str:
    """The current time in the ISO form Strands uses for its timestamps."""
    return utc_now().isoformat()


def parse_iso(value: str) -> datetime:
    """Parse a Strands ISO timestamp into an aware datetime (naive ones are taken as UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except (TypeError, ValueError) as e:
        raise SessionValidationError("created_at", f"must be an ISO 8601 timestamp, got {value!r}") from e
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def session_to_document(session: Session) -> dict[str, Any]:
    """Build the initial document of a new session."""
    created = parse_iso(session.created_at)
    session_type = session.session_type
    return {
        "_id": session.session_id,
        "session_id": session.session_id,
        "session_type": session_type.value if isinstance(session_type, SessionType) else str(session_type),
        "created_at": session.created_at,
        "updated_at": session.updated_at,
        "created_date": created,
        "updated_date": utc_now(),
        "agents": {},
        "multi_agents": {},
    }


def document_to_session(document: dict[str, Any]) -> Session:
    """Rebuild a :class:`Session` from a stored session document."""
    try:
        return Session(
            session_id=document["session_id"],
            session_type=SessionType(document["session_type"]),
            created_at=document["created_at"],
            updated_at=document["updated_at"],
        )
    except (KeyError, ValueError) as e:
        raise SessionStorageError(f"session_id=<{document.get('_id')}> | stored session is malformed: {e!r}") from e


def agent_to_fields(session_agent: SessionAgent) -> dict[str, Any]:
    """The stored fields of an agent (values through the codec: see :mod:`mongodb_session_manager._codec`).

    Raises:
        SessionValidationError: A value nests too deeply or carries the reserved binary subtype.
    """
    return {name: encode_value(getattr(session_agent, name), "session_agent")[0] for name in AGENT_FIELDS}


def document_to_agent(stored: dict[str, Any], session_id: str) -> SessionAgent:
    """Rebuild a :class:`SessionAgent` from its stored sub-document."""
    try:
        return SessionAgent(**{name: decode_value(stored[name]) for name in AGENT_FIELDS if name in stored})
    except TypeError as e:
        raise SessionStorageError(f"session_id=<{session_id}> | stored agent is malformed: {e}") from e


def message_to_entry(session_message: SessionMessage) -> dict[str, Any]:
    """The array entry stored for one message."""
    return {name: getattr(session_message, name) for name in MESSAGE_FIELDS}


def entry_to_message(entry: Any, session_id: str, agent_id: str, expected_id: int) -> SessionMessage:
    """Rebuild a :class:`SessionMessage` from its array entry, checking it is the one expected.

    Extra fields stored beside the message (such as ``event_loop_metrics``) are left out, so what
    Strands gets back is exactly what it stored.

    Raises:
        SessionStorageError: The entry is malformed or not at its expected position. A message that
            cannot be rebuilt is an error, never silently skipped.
    """
    if not isinstance(entry, dict) or "message" not in entry or "message_id" not in entry:
        raise SessionStorageError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{expected_id}> | stored message is malformed"
        )
    if entry["message_id"] != expected_id:
        raise SessionStorageError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}> | expected message_id {expected_id} at this position, "
            f"found {entry['message_id']!r}; the stored history is not contiguous"
        )
    return SessionMessage(**{name: entry[name] for name in MESSAGE_FIELDS if name in entry})


#: Longest metadata key, in characters.
MAX_METADATA_KEY_LENGTH = 256
#: Longest feedback comment, in characters.
MAX_FEEDBACK_COMMENT_LENGTH = 20_000
FEEDBACK_RATINGS: tuple[str | None, ...] = ("up", "down", None)
_FEEDBACK_KEYS = frozenset({"rating", "comment"})


def validate_metadata_key(key: Any) -> str:
    """Check one metadata key: a non-empty string that cannot become a path or an operator.

    Raises:
        SessionValidationError: The key is refused (non-string, empty, starts with ``$``, contains
            ``.`` or NUL, or is too long).
    """
    if not isinstance(key, str):
        raise SessionValidationError("metadata key", f"must be a string, got {type(key).__name__}", repr(key))
    if not key:
        raise SessionValidationError("metadata key", "must not be empty")
    if key.startswith("$"):
        raise SessionValidationError("metadata key", "must not start with '$'", key)
    if "." in key:
        raise SessionValidationError("metadata key", "must not contain '.'", key)
    if "\x00" in key:
        raise SessionValidationError("metadata key", "must not contain NUL characters", key.replace("\x00", "\\x00"))
    if not _is_utf8(key):
        raise SessionValidationError("metadata key", "must be valid UTF-8 text (no lone surrogates)", ascii(key))
    if len(key) > MAX_METADATA_KEY_LENGTH:
        raise SessionValidationError("metadata key", f"must be at most {MAX_METADATA_KEY_LENGTH} characters", key)
    return key


def validate_metadata(metadata: Any) -> dict[str, Any]:
    """Check a metadata update: a dict with valid keys and BSON-encodable values.

    Returns:
        What to store: the same keys, each value through the codec (see
        :mod:`mongodb_session_manager._codec`).

    Raises:
        SessionValidationError: Naming the offending key.
    """
    if not isinstance(metadata, dict):
        raise SessionValidationError("metadata", f"must be a dict, got {type(metadata).__name__}")
    stored = {}
    for key, value in metadata.items():
        validate_metadata_key(key)
        stored[key] = ensure_encodable(value, f"metadata[{key!r}]")
    return stored


def validate_metadata_keys(keys: Any) -> list[str]:
    """Check the key list of a metadata deletion."""
    if isinstance(keys, str) or not isinstance(keys, list | tuple | set | frozenset):
        raise SessionValidationError("keys", f"must be a list of metadata keys, got {type(keys).__name__}")
    return [validate_metadata_key(key) for key in keys]


def ensure_encodable(value: Any, field: str) -> Any:
    """Return what to store for ``value`` (through the codec), or raise a clear error if BSON cannot hold it."""
    stored, _ = encode_value(value, field)
    try:
        bson.encode({"v": stored})
    except (InvalidDocument, InvalidStringData, OverflowError, TypeError, ValueError, RecursionError) as e:
        raise SessionValidationError(field, f"cannot be stored in MongoDB: {e}") from e
    return stored


def validate_feedback(feedback: Any) -> dict[str, Any]:
    """Check a feedback entry and return the normalised ``{"rating", "comment"}`` dict.

    ``rating`` is ``"up"``, ``"down"`` or ``None``; ``comment`` a string (default ``""``).

    Raises:
        SessionValidationError: Unknown keys, an invalid rating or a comment that is not a string
            or is too long.
    """
    if not isinstance(feedback, dict):
        raise SessionValidationError("feedback", f"must be a dict, got {type(feedback).__name__}")
    unknown = sorted(str(key) for key in feedback if key not in _FEEDBACK_KEYS)
    if unknown:
        raise SessionValidationError("feedback", f"unknown keys {unknown}; allowed: 'rating', 'comment'")
    rating = feedback.get("rating")
    if rating not in FEEDBACK_RATINGS or isinstance(rating, bool):
        raise SessionValidationError("feedback.rating", "must be 'up', 'down' or None", repr(rating))
    comment = feedback.get("comment", "")
    if not isinstance(comment, str):
        raise SessionValidationError("feedback.comment", f"must be a string, got {type(comment).__name__}")
    if not _is_utf8(comment):
        raise SessionValidationError("feedback.comment", "must be valid UTF-8 text (no lone surrogates)")
    if len(comment) > MAX_FEEDBACK_COMMENT_LENGTH:
        raise SessionValidationError(
            "feedback.comment", f"must be at most {MAX_FEEDBACK_COMMENT_LENGTH} characters, got {len(comment)}"
        )
    return {"rating": rating, "comment": comment}

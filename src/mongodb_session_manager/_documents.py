"""Pure functions that turn Strands session objects into MongoDB documents and back (encoding).

No I/O here: everything is tested without a server. Checking input is :mod:`._validation`'s job;
encoding values (escapes, nesting, binaries) is :mod:`._codec`'s.

Layout of one session document (``_id`` is the session key: the session id, or with a tenant
``{"tenant": <tenant_id>, "session": <session_id>}``, see :func:`session_key`)::

    {
      "_id": "<session_id>",           # or {"tenant": "<tenant_id>", "session": "<session_id>"}
      "session_id": "<session_id>",
      "tenant": "<tenant_id>",         # only with a tenant
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

from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from ._codec import decode_value, encode_value
from ._validation import (  # re-exported: validation used to live here
    MAX_FEEDBACK_COMMENT_LENGTH,
    MAX_ID_LENGTH,
    MAX_METADATA_KEY_LENGTH,
    ensure_encodable,
    validate_feedback,
    validate_id,
    validate_message_id,
    validate_metadata,
    validate_metadata_key,
    validate_metadata_keys,
)
from .errors import SessionNotFoundError, SessionStorageError, SessionValidationError

__all__ = [
    "AGENT_FIELDS",
    "MAX_FEEDBACK_COMMENT_LENGTH",
    "MAX_ID_LENGTH",
    "MAX_METADATA_KEY_LENGTH",
    "MESSAGE_FIELDS",
    "REMOVED_FIELD",
    "SESSION_FIELDS",
    "agent_to_fields",
    "aware",
    "aware_all",
    "decode_field_name",
    "dig",
    "document_to_agent",
    "document_to_session",
    "encode_field_name",
    "ensure_encodable",
    "entry_to_message",
    "iso_now",
    "message_to_entry",
    "missing_agent",
    "parse_iso",
    "session_key",
    "session_missing",
    "session_to_document",
    "utc_now",
    "validate_feedback",
    "validate_id",
    "validate_message_id",
    "validate_metadata",
    "validate_metadata_key",
    "validate_metadata_keys",
]

AGENT_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SessionAgent))
#: A clear copy of the conversation manager's ``removed_message_count`` in an agent sub-document,
#: written beside an encrypted ``conversation_manager_state`` (the server reads the count to know which
#: messages the agent still holds; see :func:`removed_count_expression` in ``_pipelines``).
REMOVED_FIELD = "removed_message_count"
MESSAGE_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SessionMessage))
SESSION_FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(Session))

# Characters that would turn an id into a field path ('.'), an operator ('$') or that we use as the
# escape character itself ('%'). NUL is refused outright, so it never needs escaping.
_FIELD_UNSAFE = re.compile(r"[%.$]")
_FIELD_ESCAPE = re.compile(r"%(25|2E|24)")
_UNESCAPE = {"25": "%", "2E": ".", "24": "$"}


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


def session_key(session_id: str, tenant_id: str | None = None) -> Any:
    """The key of a session: its ``_id``, and the ``session_id`` field of its overflow documents.

    Without a tenant the key is the session id itself (what every earlier version stored); with one
    it is ``{"tenant": tenant_id, "session": session_id}`` (always built here, so the field order,
    which document equality depends on, never varies). Two tenants' sessions with equal ids are
    therefore two documents, and no filter of one can match the other's.
    """
    if tenant_id is None:
        return session_id
    return {"tenant": tenant_id, "session": session_id}


def session_to_document(session: Session, tenant_id: str | None = None) -> dict[str, Any]:
    """Build the initial document of a new session (``tenant_id``: the tenant it belongs to)."""
    created = parse_iso(session.created_at)
    session_type = session.session_type
    tenant = {} if tenant_id is None else {"tenant": tenant_id}
    return {
        "_id": session_key(session.session_id, tenant_id),
        "session_id": session.session_id,
        **tenant,
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


def dig(document: dict[str, Any] | None, path: str) -> Any:
    """Follow a dotted path of (already encoded) field names into a document; ``None`` if absent."""
    current: Any = document
    for part in path.split("."):
        if not isinstance(current, dict):
            return None
        current = current.get(part)
    return current


def session_missing(session_id: str) -> SessionNotFoundError:
    """The one "session does not exist" error."""
    return SessionNotFoundError(f"session_id=<{session_id}> | session does not exist")


def missing_agent(session_id: str, agent_id: str, document: dict[str, Any] | None) -> SessionNotFoundError:
    """The not-found error of an agent lookup: whether the session or only the agent is missing."""
    if document is None:
        return session_missing(session_id)
    return SessionNotFoundError(f"session_id=<{session_id}>, agent_id=<{agent_id}> | agent does not exist")


def aware(value: Any) -> Any:
    """BSON dates come back naive (in UTC) unless the client is tz-aware: make them aware."""
    if isinstance(value, datetime) and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def aware_all(value: Any) -> Any:
    """:func:`aware` applied throughout a decoded document."""
    if isinstance(value, dict):
        return {key: aware_all(item) for key, item in value.items()}
    if isinstance(value, list):
        return [aware_all(item) for item in value]
    return aware(value)

"""Pure input checks: ids, message ids, metadata keys and values, feedback, pages and option bounds.

No I/O here. Every check raises :class:`~mongodb_session_manager.errors.SessionValidationError` (a
``ValueError``) naming the field and the reason, before anything reaches MongoDB. Checks that also
prepare a value for storage (metadata) return what to store, through the value codec.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import bson
from bson.errors import InvalidDocument, InvalidStringData

from ._codec import encode_value
from .errors import SessionValidationError

#: Longest session or agent id accepted, in characters.
MAX_ID_LENGTH = 1024


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


def validate_tenant_id(value: Any) -> str | None:
    """Check an optional tenant id (the rules of :func:`validate_id`); ``None`` means no tenant."""
    return None if value is None else validate_id(value, "tenant_id")


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


def validate_metadata(metadata: Any) -> Encoded:
    """Check a metadata update: a dict with valid keys and BSON-encodable values.

    Returns:
        What to store: the same keys, each value through the codec (see
        :mod:`mongodb_session_manager._codec`), with their encoded size (``.size``, keys included).

    Raises:
        SessionValidationError: Naming the offending key.
    """
    if not isinstance(metadata, dict):
        raise SessionValidationError("metadata", f"must be a dict, got {type(metadata).__name__}")
    stored = Encoded()
    for key, value in metadata.items():
        validate_metadata_key(key)
        stored[key], size = _encoded(value, f"metadata[{key!r}]")
        stored.size += size + len(key.encode()) + len("metadata.")
    return stored


def validate_metadata_keys(keys: Any) -> list[str]:
    """Check the key list of a metadata deletion."""
    if isinstance(keys, str) or not isinstance(keys, list | tuple | set | frozenset):
        raise SessionValidationError("keys", f"must be a list of metadata keys, got {type(keys).__name__}")
    return [validate_metadata_key(key) for key in keys]


def ensure_encodable(value: Any, field: str) -> Any:
    """Return what to store for ``value`` (through the codec), or raise a clear error if BSON cannot hold it."""
    return _encoded(value, field)[0]


def _encoded(value: Any, field: str) -> tuple[Any, int]:
    stored, _ = encode_value(value, field)
    try:
        size = len(bson.encode({"v": stored}))
    except (InvalidDocument, InvalidStringData, OverflowError, TypeError, ValueError, RecursionError) as e:
        raise SessionValidationError(field, f"cannot be stored in MongoDB: {e}") from e
    return stored, size


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


class Encoded(dict[str, Any]):
    """Values ready to store, with the BSON size they encode to (what a write adds to a document)."""

    size: int = 0


def bounded_int(value: Any, field: str, low: int, high: int, default: int) -> int:
    """Check an integer option within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise SessionValidationError(field, f"must be an integer from {low} to {high} (default {default})", value)
    return int(value)


def ttl_seconds(value: float | timedelta | None) -> int | None:
    """Normalise ``session_ttl`` to whole seconds (``None`` = no expiry)."""
    if value is None:
        return None
    seconds = value.total_seconds() if isinstance(value, timedelta) else value
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise SessionValidationError("session_ttl", "must be a positive number of seconds or a timedelta", value)
    return max(1, int(seconds))


def non_empty_name(value: Any, field: str) -> str:
    """Check a database or collection name is a non-empty string (MongoDB checks the rest)."""
    if not isinstance(value, str) or not value:
        raise SessionValidationError(field, "must be a non-empty string")
    return value


def is_bad_database_name(name: str) -> bool:
    """Whether MongoDB would refuse ``name`` as a database name."""
    return any(char in name for char in '/\\. "$\x00') or len(name.encode()) > 63


def validate_page(offset: Any, limit: Any) -> None:
    """Check ``list_messages``' ``offset`` (an int >= 0) and ``limit`` (``None`` or an int >= 0)."""
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise SessionValidationError("offset", f"must be a non-negative integer, got {offset!r}")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 0):
        raise SessionValidationError("limit", f"must be None or a non-negative integer, got {limit!r}")


def validate_listing_limit(limit: Any) -> int:
    """Check ``list_sessions``' page size: 1 to 1000."""
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= 1000:
        raise SessionValidationError("limit", "must be an integer from 1 to 1000", limit)
    return limit

"""Exception hierarchy for mongodb-session-manager.

Every exception we raise derives from :class:`MongoDBSessionError`, which itself derives from Strands'
``SessionException``: code written against any Strands session backend (``except SessionException``)
catches ours too, and callers who want only ours catch the base class.

Three kinds of failure, never mixed:

* bad input (an id, a key, a value that cannot be stored) raises :class:`SessionValidationError`, a
  ``ValueError`` that names the offending field;
* a write that lost a race with another writer raises :class:`SessionConflictError`;
* the database or the network failing raises :class:`SessionStorageError`, chained to the driver's
  exception with ``raise ... from``.
"""

from __future__ import annotations

from strands.types.exceptions import SessionException

__all__ = [
    "AWSHooksUnavailableError",
    "MongoDBSessionError",
    "SessionConflictError",
    "SessionNotFoundError",
    "SessionStorageError",
    "SessionTooLargeError",
    "SessionValidationError",
]


_NO_VALUE = object()


class MongoDBSessionError(SessionException):
    """Base class of every error raised by mongodb-session-manager."""


class SessionValidationError(MongoDBSessionError, ValueError):
    """An argument was rejected before anything reached the database.

    Attributes:
        field: Name of the offending argument or key.
    """

    def __init__(self, field: str, reason: str, value: object = _NO_VALUE) -> None:
        """Create the error.

        Args:
            field: Name of the argument (or metadata key, or document path) that was rejected.
            reason: Short human explanation of why.
            value: The rejected value, shown shortened in the message (omit it for values that
                may be large or sensitive).
        """
        self.field = field
        self.reason = reason
        if value is _NO_VALUE:
            super().__init__(f"{field} | {reason}")
        else:
            shown = str(value)
            if len(shown) > 80:
                shown = shown[:77] + "..."
            super().__init__(f"{field}=<{shown}> | {reason}")


class SessionTooLargeError(SessionValidationError):
    """A write would make the session document exceed MongoDB's document size limit.

    The stored session is left exactly as it was.
    """

    def __init__(self, session_id: str, size: int | None, limit: int, detail: str = "") -> None:
        """Create the error.

        Args:
            session_id: Session whose document would have grown too large.
            size: Size in bytes of the data we tried to write, when known.
            limit: MongoDB's maximum document size in bytes.
            detail: Extra context (which operation).
        """
        self.session_id = session_id
        self.size = size
        self.limit = limit
        self.field = "session"
        size_text = f"{size} bytes" if size is not None else "an unknown number of bytes"
        suffix = f" ({detail})" if detail else ""
        self.reason = (
            f"writing {size_text} would exceed MongoDB's document size limit of {limit} bytes{suffix}; "
            "nothing was written"
        )
        MongoDBSessionError.__init__(self, f"session_id=<{session_id}> | {self.reason}")


class SessionNotFoundError(MongoDBSessionError, LookupError):
    """The session, agent, message or multi-agent an update refers to does not exist."""


class SessionConflictError(MongoDBSessionError):
    """A concurrent writer changed the same agent first.

    Raised when appending message ``N`` finds that the agent no longer has exactly ``N`` messages:
    another process (or another manager in this one) appended in the meantime. Nothing was written.
    The usual remedy is to build a fresh session manager (which reloads the stored conversation) and
    retry the turn.
    """


class SessionStorageError(MongoDBSessionError):
    """MongoDB could not be reached or refused an operation; chained to the driver's exception."""


class AWSHooksUnavailableError(MongoDBSessionError, ImportError):
    """boto3 is not installed, so an AWS hook cannot build its client.

    Install the extra (``pip install "mongodb-session-manager[aws]"``) or inject a client.
    """

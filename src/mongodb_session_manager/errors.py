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

import contextlib
import re
from collections.abc import Callable, Iterator
from typing import Any

from bson.errors import InvalidDocument, InvalidStringData
from pymongo.errors import (
    ConnectionFailure,
    DocumentTooLarge,
    DuplicateKeyError,
    NetworkTimeout,
    OperationFailure,
    PyMongoError,
    ServerSelectionTimeoutError,
)
from strands.types.exceptions import SessionException

__all__ = [
    "AWSHooksUnavailableError",
    "MongoDBSessionError",
    "SessionConflictError",
    "SessionEncryptionError",
    "SessionNotFoundError",
    "SessionStorageError",
    "SessionTooLargeError",
    "SessionValidationError",
    "describe_failure",
    "translated",
]

#: MongoDB's maximum BSON document size.
MAX_DOCUMENT_SIZE = 16 * 1024 * 1024
# Server error codes for "the resulting document would be too large".
_TOO_LARGE_CODES = frozenset({10334, 17419, 17420, 13548})


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

    def __init__(
        self, session_id: str, size: int | None, limit: int, detail: str = "", refused_by_server: bool = False
    ) -> None:
        """Create the error.

        Args:
            session_id: Session whose document would have grown too large.
            size: Size in bytes of the data we tried to write, when known.
            limit: MongoDB's maximum document size in bytes.
            detail: Extra context (which operation).
            refused_by_server: The server refused the resulting document (moving old messages out may
                make room); otherwise the write itself was too large to send.
        """
        self.session_id = session_id
        self.size = size
        self.limit = limit
        self.refused_by_server = refused_by_server
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


class SessionEncryptionError(MongoDBSessionError):
    """Stored content cannot be encrypted or decrypted: the master key does not open the key vault's
    keys, the session's data key was deleted (the session was deleted: every copy of its content is
    unreadable by design), or the encryption extra is not installed. Chained to the driver's error
    when there is one; never carries key material."""


class AWSHooksUnavailableError(MongoDBSessionError, ImportError):
    """boto3 is not installed, so an AWS hook cannot build its client.

    Install the extra (``pip install "mongodb-session-manager[aws]"``) or inject a client.
    """


# ---------------------------------------------------------------------------------------- translation


@contextlib.contextmanager
def translated(
    client: Any,
    session_id: str | None,
    operation: str,
    field: str = "value",
    size: Callable[[], int | None] = lambda: None,
    on_duplicate: str | None = None,
) -> Iterator[None]:
    """Turn what pymongo and bson raise inside the block into our errors, chained with ``from``.

    * a value bson cannot encode: :class:`SessionValidationError` naming ``field``;
    * a document too large, refused before sending or by the server: :class:`SessionTooLargeError`
      (``refused_by_server`` tells which);
    * a duplicate key, when ``on_duplicate`` is given: :class:`SessionConflictError` with that text;
    * anything else from the driver: :class:`SessionStorageError`, one readable line when the server
      could not be reached or refused us (:func:`describe_failure`), else what failed and why.

    Args:
        client: The ``MongoClient`` in use (its hosts and timeouts word connection failures).
        session_id: The session the operation is about (``None``: none, e.g. index creation).
        operation: What was being done, in a few words ("append message").
        field: The argument named when a value cannot be stored.
        size: Returns the size of what was written, for the too-large message (called only then).
        on_duplicate: The conflict to report for a duplicate key.
    """
    try:
        yield
    except MongoDBSessionError:
        raise
    except DocumentTooLarge as e:  # a subclass of InvalidDocument: test it first
        raise SessionTooLargeError(session_id or "-", size(), MAX_DOCUMENT_SIZE, operation) from e
    except (InvalidDocument, InvalidStringData, OverflowError, ValueError, RecursionError) as e:
        # ValueError: text that is not valid UTF-8 (lone surrogates), a uuid.UUID without a
        # configured representation, and other values bson refuses. RecursionError: nesting the
        # encoder cannot follow (the value codec refuses it earlier; this is the safety net).
        raise SessionValidationError(field, f"cannot be stored in MongoDB ({operation}): {e}") from e
    except DuplicateKeyError as e:
        if on_duplicate is None:
            raise SessionStorageError(_failure_line(client, session_id, operation, e)) from e
        raise SessionConflictError(on_duplicate) from e
    except OperationFailure as e:
        if e.code in _TOO_LARGE_CODES:
            raise SessionTooLargeError(
                session_id or "-", size(), MAX_DOCUMENT_SIZE, operation, refused_by_server=True
            ) from e
        raise SessionStorageError(_failure_line(client, session_id, operation, e)) from e
    except PyMongoError as e:
        raise SessionStorageError(_failure_line(client, session_id, operation, e)) from e


def _failure_line(client: Any, session_id: str | None, operation: str, error: PyMongoError) -> str:
    where = f"session_id=<{session_id}> | " if session_id else ""
    readable = describe_failure(client, error)
    return where + (readable if readable is not None else f"{operation} failed: {error}")


# What to check, by what went wrong; said once, at the end of the line.
_CHECK_REACH = (
    "check that the server is running and reachable from here, and the host, port and TLS options of the "
    "connection string"
)
_CHECK_CREDENTIALS = "check the user name, password and authSource of the connection string"
_AUTH_CODES = frozenset({18})  # AuthenticationFailed
_UNAUTHORIZED_CODES = frozenset({13})  # Unauthorized


def describe_failure(client: Any, error: PyMongoError) -> str | None:
    """One line a person understands for a failure to reach or log in to MongoDB, else ``None``.

    Which hosts, how long we waited, the reason, and what to check; pymongo's own text (with its
    timeouts and topology description) stays in the chained exception. Host names never carry
    credentials; nothing else from the connection string is quoted.

    Args:
        client: The ``MongoClient`` that failed (for its hosts, timeouts and last errors).
        error: What pymongo raised.

    Returns:
        The line, or ``None`` when ``error`` is not about reaching or logging in to the server.
    """
    if isinstance(error, OperationFailure):
        hosts = _hosts(client)
        if error.code in _AUTH_CODES:
            return f"MongoDB at {hosts} refused the credentials (authentication failed): {_CHECK_CREDENTIALS}"
        if error.code in _UNAUTHORIZED_CODES:
            return (
                f"MongoDB at {hosts} refused the operation: the user is not authorized for it (or no "
                f"credentials were given): {_CHECK_CREDENTIALS}, and the user's roles"
            )
        return None
    if not isinstance(error, ConnectionFailure):
        return None
    waited = _waited(client)
    reasons = sorted({_reason(sd.error) for sd in _descriptions(client) if sd.error is not None})
    reason = "; ".join(reasons) if reasons else _reason(error)
    if isinstance(error, ServerSelectionTimeoutError):
        return f"cannot reach MongoDB at {_hosts(client)} (waited {waited}): {reason}; {_CHECK_REACH}"
    if isinstance(error, NetworkTimeout) or "timed out" in str(error):
        return (
            f"MongoDB at {_hosts(client)} did not answer within {waited}; the server may be overloaded or "
            f"unreachable, and the operation may or may not have been applied; {_CHECK_REACH}"
        )
    return (
        f"lost the connection to MongoDB at {_hosts(client)} ({_reason(error)}); the operation may or may not "
        f"have been applied; {_CHECK_REACH}"
    )


def _descriptions(client: Any) -> list[Any]:
    try:
        return list(client.topology_description.server_descriptions().values())
    except Exception:  # a test double, or a client already closed: the line is only less precise
        return []


def _hosts(client: Any) -> str:
    addresses = [sd.address for sd in _descriptions(client)]
    if not addresses:
        return "the configured host(s)"
    return ", ".join(f"{host}:{port}" for host, port in addresses)


def _waited(client: Any) -> str:
    options = getattr(client, "options", None)
    seconds = getattr(options, "timeout", None) or getattr(options, "server_selection_timeout", None)
    return f"{seconds:g} s" if isinstance(seconds, int | float) else "the configured timeout"


def _reason(error: BaseException) -> str:
    """pymongo's error text without the address prefix, the timeouts and the errno."""
    text = str(error).split(", Timeout:")[0].split(" (configured timeouts")[0]
    text = re.sub(r"^[^\s:]+:\d+: ", "", text)
    text = re.sub(r"^\[Errno -?\d+\] ", "", text)
    return text[:1].lower() + text[1:] if text else type(error).__name__

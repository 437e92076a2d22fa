"""The storage's exceptions: ours and Strands' at once.

Strands' consumers of a ``Storage`` catch ``strands.types.exceptions.StorageError`` (the keyword
search skips entries whose read raises it, the file memory store skips unreadable entries); this
library's callers catch :class:`~mongodb_session_manager.errors.MongoDBSessionError`. Each class here
is both, so neither kind of caller is surprised:

* :class:`StorageValidationError`: bad input (a key, a prefix, a value, a setting), raised before
  any I/O. A :class:`~mongodb_session_manager.errors.SessionValidationError`, so also a ``ValueError``.
* :class:`StorageBackendError`: MongoDB failed, was unreachable, or holds data that is damaged; chained
  (``raise ... from``) to the driver's exception when there is one. A
  :class:`~mongodb_session_manager.errors.SessionStorageError`.
"""

from __future__ import annotations

from strands.types.exceptions import StorageError

from ..errors import SessionStorageError, SessionValidationError

__all__ = ["StorageBackendError", "StorageValidationError"]


class StorageValidationError(SessionValidationError, StorageError):
    """A key, prefix, value or setting was refused before anything reached MongoDB."""


class StorageBackendError(SessionStorageError, StorageError):
    """MongoDB could not do what was asked, or a stored value is damaged; nothing is half-written."""

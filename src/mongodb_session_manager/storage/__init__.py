"""Strands' unified ``Storage`` in MongoDB, and the migration from the message log to snapshots.

* :class:`MongoDBStorage`: ``strands.storage.Storage`` (bytes under keys) for
  ``SnapshotSessionManager``, ``Agent(storage=...)``, the file memory store and the context
  offloader. Design: ``mongodb_storage.py``.
* :func:`migrate_sessions`: sessions stored by ``MongoDBSessionRepository`` become snapshots.
"""

from ._errors import StorageBackendError, StorageValidationError
from .migration import MigrationProgress, MigrationReport, migrate_sessions
from .mongodb_storage import DEFAULT_COLLECTION_NAME, MongoDBStorage

__all__ = [
    "DEFAULT_COLLECTION_NAME",
    "MigrationProgress",
    "MigrationReport",
    "MongoDBStorage",
    "StorageBackendError",
    "StorageValidationError",
    "migrate_sessions",
]

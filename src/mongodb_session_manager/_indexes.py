"""Indexes of the sessions and overflow collections, ensured once per process, and the TTL in force.

A process creates a collection's indexes the first time a repository for it is built (one registry
per process, keyed by deployment, database, collection and configured TTL), so a manager per
request sends no index command. The TTL index on ``updated_date`` is also what this process knows
of the collection's expiry: an :class:`ExpiryView` shared by its repositories, read again when a
write finds that another process changed it (see ``_store.SessionStore.write``).

Changing the TTL (``session_ttl`` differs from the index) is a migration: ``collMod`` on the index,
then every session with overflow documents records the new TTL, then every overflow document gets an
expiry under it (the sessions first, so a process still writing under the old TTL notices at its
next write to them).
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pymongo import ASCENDING, MongoClient
from pymongo.collection import Collection
from pymongo.errors import OperationFailure

from .errors import translated

logger = logging.getLogger(__name__)

__all__ = [
    "SHARD_KEYS",
    "ExpiryView",
    "ensure_overflow_indexes",
    "ensure_session_indexes",
    "read_activity_ttl",
    "shard_collection_commands",
]

#: The shard key of each collection the library writes, by role (see docs/scaling.md). Every command
#: the library sends for one session or one storage key carries an equality on it, so a sharded
#: cluster routes it to one shard. The only unique index of each collection is ``_id``'s: on the
#: sessions and storage key collections ``_id`` is the shard key; overflow documents (ObjectId
#: buckets, ``{b: ObjectId, n}`` chunks) and storage chunks (``"<ObjectId hex>:<n>"``) have ids unique
#: by construction, which is all MongoDB asks of ``_id`` on a collection sharded on another field.
SHARD_KEYS: dict[str, dict[str, Any]] = {
    "sessions": {"_id": "hashed"},  # the session key: the session id, or {tenant, session}
    "overflow": {"session_id": "hashed"},  # moved-message buckets and binary chunks: their session's key
    "storage": {"_id": "hashed"},  # MongoDBStorage: the full key
    "storage_chunks": {"key": "hashed"},  # MongoDBStorage's chunks of large values: their full key
}

#: Server error codes of ``createIndexes`` when an index of that name or key exists with other options.
INDEX_OPTIONS_CONFLICT = 85
INDEX_KEY_SPECS_CONFLICT = 86
_CONFLICTS = frozenset({INDEX_OPTIONS_CONFLICT, INDEX_KEY_SPECS_CONFLICT})
#: What the migration's ``$set`` of ``companions_until`` and ``companions_ttl`` may add to a session.
_MIGRATION_GROWTH = 64


@dataclass
class ExpiryView:
    """The TTL in force on a sessions collection as this process last read it (shared by its repositories)."""

    seconds: int | None
    checked: float = dataclasses.field(default_factory=time.monotonic)


_lock = threading.Lock()
# (deployment, database, collection, configured TTL) -> TTL in force on the collection.
_sessions: dict[tuple[Any, ...], ExpiryView] = {}
_overflow: set[tuple[Any, ...]] = set()


def shard_collection_commands(
    database_name: str,
    collection_name: str = "sessions",
    overflow_collection_name: str | None = None,
    storage_collection_name: str | None = "storage",
) -> list[dict[str, Any]]:
    """The ``shardCollection`` commands an operator runs (on ``mongos``, ``admin`` database) to shard
    the library's collections on :data:`SHARD_KEYS`.

    Args:
        database_name: The database.
        collection_name: The sessions collection.
        overflow_collection_name: Its overflow collection (default ``"<collection_name>_overflow"``).
        storage_collection_name: ``MongoDBStorage``'s key collection (its chunks are ``<name>_chunks``);
            ``None`` leaves the storage collections out.

    Example:
        ```python
        for command in shard_collection_commands("chat"):
            print(command)  # client.admin.command(command) on a sharded cluster
        ```
    """
    overflow = overflow_collection_name or f"{collection_name}_overflow"
    targets = [(collection_name, "sessions"), (overflow, "overflow")]
    if storage_collection_name is not None:
        targets += [(storage_collection_name, "storage"), (f"{storage_collection_name}_chunks", "storage_chunks")]
    return [{"shardCollection": f"{database_name}.{name}", "key": dict(SHARD_KEYS[role])} for name, role in targets]


def client_identity(client: Any) -> Any:
    """What identifies the deployment a client talks to, for the once-per-process registry."""
    if not isinstance(client, MongoClient):  # a test double such as mongomock
        return id(client)
    seeds = getattr(getattr(client, "_topology_settings", None), "seeds", None)
    return frozenset(seeds) if seeds else id(client)


def ensure_session_indexes(
    collection: Collection[dict[str, Any]],
    overflow: Collection[dict[str, Any]],
    ttl: int | None,
    companions_expiry: Callable[[int], datetime | None],
) -> ExpiryView:
    """Index a sessions collection (``created_date``; ``updated_date``, with the TTL), once per process.

    Args:
        collection: The sessions collection.
        overflow: Its overflow collection (its documents' expiry follows a changed TTL).
        ttl: The configured ``session_ttl`` in seconds (``None``: not configured).
        companions_expiry: The expiry date overflow documents get under a TTL (see
            ``_overflow.companions_expiry``).

    Returns:
        The view of the TTL in force, shared by every repository of this collection in the process.
    """
    key = (client_identity(collection.database.client), collection.database.name, collection.name, ttl)
    view = _sessions.get(key)
    if view is not None:
        return view
    with _lock:
        view = _sessions.get(key)
        if view is not None:
            return view
        with translated(collection.database.client, None, "create indexes"):
            collection.create_index([("created_date", ASCENDING)], name="created_date_1")
            view = ExpiryView(_ensure_activity_index(collection, overflow, ttl, companions_expiry))
        _sessions[key] = view
    logger.debug("database=<%s>, collection=<%s> | indexes ensured", collection.database.name, collection.name)
    return view


def ensure_overflow_indexes(overflow: Collection[dict[str, Any]]) -> None:
    """Index an overflow collection (by session, and its expiry), once per process, before its first write."""
    key = (client_identity(overflow.database.client), overflow.database.name, overflow.name)
    if key in _overflow:
        return
    with _lock:
        if key in _overflow:
            return
        with translated(overflow.database.client, None, "create overflow indexes"):
            overflow.create_index([("session_id", ASCENDING)], name="session_id_1")
            overflow.create_index([("expire_at", ASCENDING)], name="expire_at_1", expireAfterSeconds=0)
        _overflow.add(key)


def read_activity_ttl(collection: Collection[dict[str, Any]]) -> int | None:
    """The ``expireAfterSeconds`` of the ``updated_date`` index (``None``: no TTL)."""
    for spec in collection.list_indexes():
        if dict(spec.get("key", {})) == {"updated_date": 1} and "expireAfterSeconds" in spec:
            return int(spec["expireAfterSeconds"])
    return None


def _ensure_activity_index(
    collection: Collection[dict[str, Any]],
    overflow: Collection[dict[str, Any]],
    ttl: int | None,
    companions_expiry: Callable[[int], datetime | None],
) -> int | None:
    """Index ``updated_date``; with a TTL when ``ttl`` is set (changed in place if it differs).

    Returns:
        The TTL in force on the collection, in seconds (``None``: sessions never expire).
    """
    if ttl is None:
        try:
            collection.create_index([("updated_date", ASCENDING)], name="updated_date_1")
        except OperationFailure as e:
            if e.code not in _CONFLICTS:
                raise
            # The index exists with a TTL set by another configuration: keep it. Turning expiry off
            # is a deliberate act (collMod), not a side effect of omitting session_ttl. What is
            # stored outside session documents must then expire with them.
            return read_activity_ttl(collection)
        return None
    try:
        collection.create_index([("updated_date", ASCENDING)], name="updated_date_1", expireAfterSeconds=ttl)
    except OperationFailure as e:
        if e.code not in _CONFLICTS:  # only the TTL differs
            raise
        _change_ttl(collection, overflow, ttl, companions_expiry(ttl))
    return ttl


def _change_ttl(
    collection: Collection[dict[str, Any]], overflow: Collection[dict[str, Any]], ttl: int, until: datetime | None
) -> None:
    """The TTL migration (see the module docstring)."""
    collection.database.command(
        "collMod", collection.name, index={"keyPattern": {"updated_date": 1}, "expireAfterSeconds": ttl}
    )
    collection.update_many(
        {"companions": True},
        {"$set": {"companions_until": until, "companions_ttl": ttl}, "$inc": {"size_estimate": _MIGRATION_GROWTH}},
    )
    overflow.update_many({}, {"$set": {"expire_at": until}})
    logger.info("collection=<%s>, ttl_seconds=<%s> | session expiry changed", collection.name, ttl)

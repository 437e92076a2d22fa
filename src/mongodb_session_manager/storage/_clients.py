"""Which MongoDB client serves a storage call, depending on how Strands made it.

Strands calls a ``Storage`` in two ways:

* **On the application's own, long-lived event loop** (``await agent.invoke_async(...)``, the async
  hooks of ``SnapshotSessionManager``, FastAPI handlers). Blocking that loop would stall every
  other request it serves, so calls there go through pymongo's ``AsyncMongoClient``. An
  ``AsyncMongoClient`` is bound to the loop it first runs on, so there is one per loop (and per
  connection string and options), shared by every storage on that loop and closed when the loop
  shuts down (``asyncio.run``, uvicorn and other runners close a loop's async generators as it ends;
  each client's closer is one of them).
* **On Strands' sync bridge** (``strands._async.run_async``: ``Agent.__call__``, the sync
  ``initialize``/``sync_agent`` hooks, sync Graph and Swarm calls). Each call runs under
  ``asyncio.run`` on a fresh thread: a new event loop every time, gone when the call returns. A
  loop-bound client would have to be created (a connection handshake) for every save. Calls there
  (``is_run_async_bridge()``) use the process-wide pooled ``MongoClient`` instead, blocking: the
  loop is the bridge's own, and what waits on it is the sync caller, which waits anyway.

A storage built around a ``MongoClient`` the caller owns has no connection string to build an async
client from; on a long-lived loop its calls run in a worker thread (``asyncio.to_thread``), which
also never blocks the loop.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import AsyncIterator, Callable, Hashable
from typing import Any, cast

from pymongo import AsyncMongoClient, DeleteMany, IndexModel, MongoClient
from pymongo.errors import PyMongoError

try:  # Strands' marker of its sync bridge (a private module: if it moves, every loop gets an async client)
    from strands._async import is_run_async_bridge
except ImportError:  # pragma: no cover - depends on the installed Strands

    def is_run_async_bridge() -> bool:
        return False


__all__ = ["Driver", "is_run_async_bridge", "loop_client"]

logger = logging.getLogger(__name__)

Document = dict[str, Any]


class _SyncOps:
    """The commands a storage sends, through a blocking ``MongoClient``."""

    def __init__(self, client: MongoClient[Document], database: str, collections: dict[str, str]) -> None:
        self.client = client
        self._collections = {role: client[database][name] for role, name in collections.items()}

    def find_one(self, role: str, query: Document, projection: Document) -> Document | None:
        return self._collections[role].find_one(query, projection)

    def find(self, role: str, query: Document, projection: Document, hint: str, batch_size: int = 0) -> list[Document]:
        cursor = self._collections[role].find(query, projection, sort=[("_id", 1)], hint=hint, batch_size=batch_size)
        return cursor.to_list()

    def aggregate(self, role: str, pipeline: list[Document], hint: str) -> list[Document]:
        return self._collections[role].aggregate(pipeline, hint=hint).to_list()

    def update_one(self, role: str, query: Document, update: Document | list[Document], upsert: bool) -> int:
        return self._collections[role].update_one(query, update, upsert=upsert).matched_count

    def insert_many(self, role: str, documents: list[Document]) -> None:
        self._collections[role].insert_many(documents, ordered=True)

    def delete_one(self, role: str, query: Document) -> int:
        return self._collections[role].delete_one(query).deleted_count

    def delete_many(self, role: str, queries: list[Document]) -> None:
        self._collections[role].bulk_write([DeleteMany(query) for query in queries], ordered=False)

    def create_indexes(self, role: str, models: list[IndexModel]) -> None:
        self._collections[role].create_indexes(models)


class _AsyncOps:
    """The same commands through an ``AsyncMongoClient`` bound to the running loop."""

    def __init__(self, client: AsyncMongoClient[Document], database: str, collections: dict[str, str]) -> None:
        self.client = client
        self._collections = {role: client[database][name] for role, name in collections.items()}

    async def find_one(self, role: str, query: Document, projection: Document) -> Document | None:
        return await self._collections[role].find_one(query, projection)

    async def find(
        self, role: str, query: Document, projection: Document, hint: str | None, batch_size: int
    ) -> list[Document]:
        sort = [("_id", 1)] if hint is not None else None
        return (
            await self._collections[role].find(query, projection, sort=sort, hint=hint, batch_size=batch_size).to_list()
        )

    async def aggregate(self, role: str, pipeline: list[Document], hint: str) -> list[Document]:
        cursor = await self._collections[role].aggregate(pipeline, hint=hint)
        return await cursor.to_list()

    async def update_one(self, role: str, query: Document, update: Document | list[Document], upsert: bool) -> int:
        return (await self._collections[role].update_one(query, update, upsert=upsert)).matched_count

    async def insert_many(self, role: str, documents: list[Document]) -> None:
        await self._collections[role].insert_many(documents, ordered=True)

    async def delete_one(self, role: str, query: Document) -> int:
        return (await self._collections[role].delete_one(query)).deleted_count

    async def delete_many(self, role: str, queries: list[Document]) -> None:
        await self._collections[role].bulk_write([DeleteMany(query) for query in queries], ordered=False)

    async def create_indexes(self, role: str, models: list[IndexModel]) -> None:
        await self._collections[role].create_indexes(models)


class Driver:
    """One call's way to MongoDB: awaitable commands, whichever client serves them.

    Built for each storage call by :meth:`for_call`; ``client`` is the client in use (for
    :func:`~mongodb_session_manager.mongodb_connection_pool.describe_failure`). ``blocking`` says
    whether a command blocks the running loop (the bridge), so CPU-heavy preparation may also run
    inline there instead of in a worker thread.
    """

    def __init__(self, ops: _SyncOps | _AsyncOps, threaded: bool = False) -> None:
        self._ops = ops
        self._threaded = threaded
        self.client: Any = ops.client
        self.blocking = isinstance(ops, _SyncOps) and not threaded

    @classmethod
    async def for_call(
        cls,
        sync_client: Callable[[], MongoClient[Document]],
        async_client: Callable[[], AsyncMongoClient[Document]] | None,
        config: Hashable,
        database: str,
        collections: dict[str, str],
    ) -> Driver:
        """The driver for a call made now, on the running loop.

        Args:
            sync_client: Returns the pooled (or borrowed) ``MongoClient``.
            async_client: Builds an ``AsyncMongoClient`` (when the storage owns its connection
                string), or ``None`` (a borrowed client: calls on a loop run in a worker thread).
            config: Identifies the connection string and options (for sharing async clients).
            database: Database name.
            collections: Collection name by role (``"keys"``, ``"chunks"``).
        """
        if is_run_async_bridge():
            return cls(_SyncOps(sync_client(), database, collections))
        if async_client is None:
            return cls(_SyncOps(sync_client(), database, collections), threaded=True)
        client = await loop_client(config, async_client)
        return cls(_AsyncOps(client, database, collections))

    async def _run(self, name: str, *args: Any) -> Any:
        method = getattr(self._ops, name)
        if isinstance(self._ops, _AsyncOps):
            task = asyncio.current_task()
            requested = task.cancelling() if task is not None else 0
            try:
                result = await method(*args)
            except Exception:
                if task is not None and task.cancelling() > requested:
                    raise asyncio.CancelledError from None  # see below: the cancellation comes first
                raise
            if task is not None and task.cancelling() > requested:
                # The task was cancelled while the command ran, and the driver swallowed it: on
                # Python 3.11, asyncio.wait_for (pymongo's socket writes, whenever a timeout such as
                # timeoutMS is set) returns a result that completes as it is cancelled. Deliver it.
                raise asyncio.CancelledError
            return result
        if self._threaded:
            return await asyncio.to_thread(method, *args)
        return method(*args)

    async def find_one(self, role: str, query: Document, projection: Document) -> Document | None:
        return cast(Document | None, await self._run("find_one", role, query, projection))

    async def find(
        self, role: str, query: Document, projection: Document, hint: str | None = None, batch_size: int = 0
    ) -> list[Document]:
        """Every matching document; with a ``hint``, in ``_id`` order (an index range), else unordered."""
        return cast(list[Document], await self._run("find", role, query, projection, hint, batch_size))

    async def aggregate(self, role: str, pipeline: list[Document], hint: str) -> list[Document]:
        return cast(list[Document], await self._run("aggregate", role, pipeline, hint))

    async def update_one(
        self, role: str, query: Document, update: Document | list[Document], upsert: bool = False
    ) -> int:
        """Apply ``update``; return how many documents matched (0 or 1). With ``upsert``, a filter that
        matches no document while one with its ``_id`` exists raises ``DuplicateKeyError``."""
        return cast(int, await self._run("update_one", role, query, update, upsert))

    async def delete_one(self, role: str, query: Document) -> int:
        """Delete the document matching ``query``; return how many were deleted (0 or 1)."""
        return cast(int, await self._run("delete_one", role, query))

    async def insert_many(self, role: str, documents: list[Document]) -> None:
        await self._run("insert_many", role, documents)

    async def delete_many(self, role: str, queries: list[Document]) -> None:
        """Delete every document matching one of ``queries``, in one command."""
        await self._run("delete_many", role, queries)

    async def create_indexes(self, role: str, models: list[IndexModel]) -> None:
        await self._run("create_indexes", role, models)


# ------------------------------------------------------------------------- one async client per loop

_lock = threading.Lock()
_clients: dict[tuple[asyncio.AbstractEventLoop, Hashable], AsyncMongoClient[Document]] = {}
# The closers (async generators) must be kept alive: loops hold theirs only weakly.
_closers: dict[tuple[asyncio.AbstractEventLoop, Hashable], AsyncIterator[None]] = {}


async def loop_client(config: Hashable, build: Callable[[], AsyncMongoClient[Document]]) -> AsyncMongoClient[Document]:
    """The ``AsyncMongoClient`` for ``config`` on the running loop, built on first use.

    The client is closed when the loop shuts down: an async generator parked on the loop holds it,
    and runners (``asyncio.run``, uvicorn, ...) close every async generator of a loop as it ends. A
    loop closed without that step (a bare ``loop.close()``) keeps its client until the process ends.
    """
    loop = asyncio.get_running_loop()
    key = (loop, config)
    client = _clients.get(key)
    if client is not None:
        return client
    client = build()  # no I/O: the client connects on its first command
    closer = _close_at_loop_end(key, client)
    with _lock:
        _clients[key] = client
        _closers[key] = closer
    await closer.__anext__()  # the loop registers the generator at its first step
    return client


async def _close_at_loop_end(
    key: tuple[asyncio.AbstractEventLoop, Hashable], client: AsyncMongoClient[Document]
) -> AsyncIterator[None]:
    try:
        yield
    finally:
        with _lock:
            if _clients.get(key) is client:
                del _clients[key]
                _closers.pop(key, None)
        try:
            await client.close()
        except PyMongoError as e:  # the loop is ending; its sockets go with it
            logger.debug("error=<%s> | closing a loop's mongodb client failed", type(e).__name__)


def loop_client_count() -> int:
    """Async clients alive in this process (for tests and diagnostics)."""
    with _lock:
        return len(_clients)


def _after_fork_in_child() -> None:
    global _lock
    _lock = threading.Lock()
    _clients.clear()  # a child runs none of its parent's loops
    _closers.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

"""``MongoDBStorage``: Strands' unified ``Storage`` (bytes under string keys) in MongoDB.

Strands persists snapshots (``SnapshotSessionManager``), agent-level storage (``Agent(storage=...)``),
the file memory store and the context offloader's content through one small async protocol:
``write``, ``read``, ``delete``, ``list`` and ``search`` over bytes. This module implements it on two
collections; the pure parts (document shapes, updates, key ranges, search terms) are in
``_layout.py``, the choice of client per call in ``_clients.py``.

Layout
    ``<collection>`` holds one document per key, ``_id`` = the full key. A value that fits in the
    document (up to 16 MiB minus 64 KiB, with its key and search terms) is stored there as BSON
    Binary (``data``); a larger one ("chunked") is stored in ``<collection>_chunks``, in documents
    of just under 8 MiB ``{_id: "<version>:<n>", key, data}``, and its key document names the
    ``version`` and the number of ``chunks``. Every value also has ``size``, ``expires`` (a date;
    year 9999 for "never") and its search ``terms``. Details: ``_layout.py``.

Indexes
    ``_id`` (reads, writes and deletes select one key; chunks are fetched and deleted by exact
    ids), ``{_id, expires}`` (listing: a range on the key, covered), ``{terms, _id}`` (search
    candidates, within a namespace's key range), ``{pending.at}`` sparse (what interrupted writes
    left, for :meth:`MongoDBStorage.repair`) and a TTL index on ``remove_at`` in both collections.
    They are created once per collection per process, on first use. Range queries name their index
    (``hint``): the test server otherwise answers an ``_id`` range with a collection scan.

Cost
    A value that fits in its document: ``write`` is one ``update`` (an upsert whose filter also
    says "this key holds no chunks and nothing to clean up", true unless a chunked value is being
    replaced), ``read`` one ``find``, ``delete`` one ``delete`` (two commands for a key that does
    not exist), ``list`` one ``find`` per page of up to 50,000 keys. A chunked value costs an
    ``update`` to record the write before its chunks exist, the chunks' ``insert`` (one per 48 MB),
    the switch (``update``) and a ``find`` of what is left to clean; replacing or deleting one adds
    the ``delete`` of its chunks and an ``update``; reading one is a ``find`` of the key and one
    round trip per 16 MiB of chunks. Nothing uses ``findAndModify``: the SecantusDB test server runs
    it as a collection scan and deadlocks when many large ones meet one document.

Atomic overwrites, crashes and cancellation
    A value changes in one single-document update, so readers see the old value or the new one,
    never a mix. A chunked write first records its new version in the key document as a *live*
    pending entry, then inserts the chunks (under ids no reader knows yet), then switches the key to
    the new version in one update, which applies only if that entry is still live and records the
    replaced version (if chunked) as a *dead* entry in the same update. Dead versions' chunks are
    then deleted and their entries dropped. So the chunks of a version are deleted only once nothing
    can read them again as current: a reader that was reading them meanwhile finds them missing,
    reads the key again and gets the new value. A live entry older than one hour (``WRITE_GRACE``)
    is presumed abandoned by a dead writer: whoever cleans it first marks it dead with a conditional
    update (so that writer's switch can no longer apply; the update matching says who fenced it),
    then deletes its chunks. Of concurrent writers, the last switch wins whole; the others' versions
    become dead entries and their chunks go.

    Whatever a crash or a cancellation leaves is therefore always recorded in its key's document. A
    cancelled or failed write takes its chunks back at once if they were all stored (unless its
    switch applied: then the new value stands); if the record or the chunks may still be on their
    way to the server (a command interrupted in flight can land later), they stay recorded as a live
    write and are collected after the grace. After a crash, the next write or delete of the same key
    collects what is due, and :meth:`MongoDBStorage.repair` collects every key's (one range on the
    sparse ``pending.at`` index: never a scan of the values). A key document with a pending entry is
    never removed by the TTL monitor, so no record is lost before it is acted on.

Two calling modes
    Strands awaits the storage on the application's long-lived event loop (its async hooks) and,
    from its sync hooks, on a fresh loop per call (``run_async``). The first is served by an
    ``AsyncMongoClient`` per loop (never blocking the loop), the second by the process-wide pooled
    ``MongoClient`` (a loop-bound client there would cost a connection handshake per save). See
    ``_clients.py``.

Search
    The server finds the candidates and the score is Strands' own. ``KeywordSearchStrategy`` (the
    SDK's default) scores a value by how many distinct query words (stop words dropped) appear
    among the words of its key (without extension) and content. Each value stores those words
    (``terms``: its content's words, and its full key's words marked with ``/``); a search asks the
    ``{terms, _id}`` index for values holding any query word, within the namespace's key range, and
    gets back only which query words each holds (plus the value when content words matched); the
    key's share is computed here from the key relative to the namespace, as the SDK's namespaced
    backends do. Nothing else is read. MongoDB's ``$text`` indexes are not used: they stem words,
    fold diacritics and split words differently from Strands, so they would find other candidates
    and rank them otherwise (and the test server has none). Values larger than
    ``search_index_bytes`` (1 MiB by default) are found by their key's words only: the base64 of a
    13 MiB image alone has about 400,000 distinct "words". Chunked values come back with
    ``data=None`` (read them by key). A ``search_strategy`` replaces all of this, as in ``S3Storage``.

Expiry
    ``ttl`` (seconds or a ``timedelta``, for every key) or ``{prefix: ttl}`` (per namespace; the
    longest matching prefix wins), or ``namespace(prefix, ttl=...)``: a value expires that long
    after its last write. Expired values are invisible at once (every read filters on ``expires``);
    MongoDB's TTL monitor (about once a minute) then removes the key document, and its chunks an
    hour later.
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import copy
import logging
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

from bson import Binary, ObjectId
from bson.errors import BSONError
from pymongo import AsyncMongoClient, IndexModel, MongoClient
from pymongo.errors import DuplicateKeyError, InvalidName, PyMongoError
from strands.storage.storage import _NAMESPACED, StorageSearchResult

from .._encryption import (
    ENCRYPTED_SUBTYPE,
    ClientSideEncryption,
    Encryption,
    Sealer,
    data_key_name,
    encryption_for,
    is_ciphertext,
)
from .._secrets import scrub, uri_secrets
from ..errors import MongoDBSessionError
from ..mongodb_connection_pool import (
    DRIVER_INFO,
    MongoDBConnectionPool,
    SharedClientLease,
    _options_key,
    acquire_shared_client,
    describe_failure,
    resolve_client_options,
)
from ..mongodb_session_repository import DEFAULT_DATABASE_NAME
from . import _layout as layout
from ._clients import Driver
from ._errors import StorageBackendError, StorageValidationError

if TYPE_CHECKING:
    from strands.storage.search.types import SearchStrategy

__all__ = ["DEFAULT_COLLECTION_NAME", "MongoDBStorage"]

logger = logging.getLogger(__name__)

#: The key collection's default name (chunks go to ``<name>_chunks``).
DEFAULT_COLLECTION_NAME = "storage"
#: Values larger than this have their search terms computed in a worker thread on an event loop.
_THREAD_TERMS_BYTES = 64 * 1024
#: BSON Binary subtype of the chunks of an encrypted value (user-defined range; the whole value,
#: joined, is one client-side encrypted Binary of subtype 6).
ENCRYPTED_CHUNK_SUBTYPE = 0x81
#: How many times a read follows a chunked value that is replaced while it reads.
_READ_ATTEMPTS = 8
_UNSET: Any = object()


class _Backend:
    """What a storage and all its namespaced views share: clients, collections, state."""

    def __init__(
        self,
        connection_string: str | None,
        client: MongoClient[Any] | None,
        client_kwargs: Mapping[str, Any],
        database_name: str,
        collection_name: str,
    ) -> None:
        for field, name in (("database_name", database_name), ("collection_name", collection_name)):
            if not isinstance(name, str) or not name:
                raise StorageValidationError(field, "must be a non-empty string")
        self.lease: SharedClientLease | None = None
        self._connection_string: str | None = None
        self._options: dict[str, Any] = {}
        self.redacted_uri: str | None = None
        if client is not None:
            if connection_string is not None:
                raise StorageValidationError("client", "pass a connection_string or a client, not both")
            if client_kwargs:
                raise StorageValidationError(
                    "client_kwargs", "client options cannot be applied to a client passed in; configure that client"
                )
            if not isinstance(client, MongoClient):
                raise StorageValidationError(
                    "client",
                    f"must be a pymongo MongoClient (the storage builds its own async clients), got "
                    f"{type(client).__name__}",
                )
            self._client: MongoClient[Any] = client
            self.deployment: Any = ("client", id(client))
        elif connection_string is not None:
            self.lease = acquire_shared_client(connection_string, **client_kwargs)
            self._client = self.lease.client
            self._connection_string = connection_string
            self._options = resolve_client_options(connection_string, client_kwargs)
            self.redacted_uri = self.lease.redacted_uri
            self.deployment = ("uri", connection_string, _options_key(self._options))
        else:
            pooled = MongoDBConnectionPool.get_client()
            if pooled is None:
                raise StorageValidationError(
                    "connection_string",
                    "pass a connection_string or a client, or call MongoDBConnectionPool.initialize() first",
                )
            self._client = pooled
            self.deployment = ("client", id(pooled))
        self.database_name = database_name
        self.collections = {"keys": collection_name, "chunks": f"{collection_name}_chunks"}
        try:
            for name in self.collections.values():
                self._client[database_name][name]
        except InvalidName as e:
            self.close()
            field = "database_name" if "database" in str(e).lower() else "collection_name"
            raise StorageValidationError(field, str(e)) from None
        self.closed = False
        self.indexes_ready = False
        self.encryption: Encryption | None = None  # set by MongoDBStorage (encryption=)

    @property
    def owns_client(self) -> bool:
        return self.lease is not None

    def sync_client(self) -> MongoClient[Any]:
        return self.lease.client if self.lease is not None else self._client

    def _build_async_client(self) -> AsyncMongoClient[Any]:
        """An ``AsyncMongoClient`` with the same connection string and options as the pooled client."""
        assert self._connection_string is not None
        kwargs = dict(self._options)
        kwargs.setdefault("driver", DRIVER_INFO)
        failure: str | None = None
        try:
            return AsyncMongoClient(self._connection_string, **kwargs)
        except (PyMongoError, TypeError, ValueError) as e:
            # Decided outside the except block so the driver's exception (which may quote the
            # password) is not kept as __context__.
            failure = scrub(f"{type(e).__name__}: {e}", uri_secrets(self._connection_string))
        raise StorageBackendError(f"uri=<{self.redacted_uri}> | could not create the async MongoDB client: {failure}")

    async def driver(self) -> Driver:
        if self.closed:
            raise StorageBackendError("the storage has been closed")
        driver = await Driver.for_call(
            self.sync_client,
            self._build_async_client if self._connection_string is not None else None,
            self.deployment,
            self.database_name,
            self.collections,
        )
        if not self.indexes_ready:
            await self._ensure_indexes(driver)
        return driver

    async def _ensure_indexes(self, driver: Driver) -> None:
        key = (self.deployment, self.database_name, self.collections["keys"])
        if key not in _indexed:
            for role, specs in (("keys", layout.KEY_INDEXES), ("chunks", layout.CHUNK_INDEXES)):
                models = [IndexModel(keys, name=name, **options) for name, keys, options in specs]
                try:
                    await driver.create_indexes(role, models)
                except PyMongoError as e:
                    line = describe_failure(driver.client, e) or f"creating indexes failed: {e}"
                    raise StorageBackendError(f"collection=<{self.collections[role]}> | {line}") from e
            _indexed.add(key)
            logger.debug("database=<%s>, collection=<%s> | storage indexes ensured", *key[1:])
        self.indexes_ready = True

    def close(self) -> None:
        self.closed = True
        if self.lease is not None:
            self.lease.release()


#: (deployment, database, collection) whose indexes this process has ensured.
_indexed: set[Any] = set()


class MongoDBStorage:
    """Strands' ``Storage`` in MongoDB: snapshots, agent storage, memory and offloaded content.

    Implements ``strands.storage.Storage`` (``write``, ``read``, ``delete``, ``list``, ``search``,
    ``namespace``) with the semantics of the SDK's own backends: bytes round-trip unchanged (empty
    too); an overwrite replaces; a missing key reads as ``None``; deleting a missing key does
    nothing; ``list(prefix)`` matches a literal string prefix (``"a/b"`` matches ``"a/bc"``; pass
    ``"a/b/"`` for a folder) and returns full keys in code-point order; keys are normalised and
    refused as ``LocalFileStorage`` and ``S3Storage`` do them. Values of any size: up to about 16 MiB
    in one document, larger ones in chunks, replaced atomically. The design is in this module's
    docstring.

    Args:
        connection_string: MongoDB connection string; the pooled client is shared with every
            repository, manager and storage built from the same string and options, and the same
            options (and defaults, :data:`~mongodb_session_manager.DEFAULT_CLIENT_OPTIONS`) configure
            the per-loop async clients.
        database_name: Database of the two collections.
        collection_name: The key collection; chunks go to ``<collection_name>_chunks``.
        client: A ``MongoClient`` of your own instead of a connection string: borrowed, never closed.
            On an event loop its commands run in a worker thread (no async client can be built
            from it). With neither, the client of an initialised ``MongoDBConnectionPool`` is borrowed.
        ttl: Expiry: seconds or a ``timedelta`` for every key, or ``{prefix: ttl}`` per namespace
            (``{"session/": timedelta(days=30)}``; the longest matching prefix wins, ``None`` means
            never). A value expires that long after its last write.
        search_strategy: A Strands ``SearchStrategy`` to index every write and answer ``search``
            instead of the built-in index, as ``S3Storage`` accepts one.
        search_index_bytes: Values up to this size (default 1 MiB, at most 2 MiB) have their words
            indexed for search; larger ones are found by their key's words only.
        tenant_id: Optional tenant (application) scope: stored keys are ``\\<tenant_id>\\<key>``
            (a backslash, which no key may hold), so storages of two tenants sharing the collections
            never read, list, search or delete each other's values, and one without a tenant never
            sees theirs. Keys, listings and prefixes given and returned stay relative, as without it.
        encryption: Encrypt values before they reach MongoDB (a
            :class:`~mongodb_session_manager.ClientSideEncryption`): one data key per *scope*, the
            first path segment of the key (``"<session_id>"`` for ``SnapshotSessionManager``'s
            ``"<session_id>/..."`` keys), deleted with the scope's last value. Content words are then
            not indexed: ``search`` matches key words only.
        **client_kwargs: ``MongoClient`` options (pymongo names), with ``connection_string``.

    Example:
        ```python
        from strands import Agent
        from strands.session import SnapshotSessionManager

        storage = MongoDBStorage("mongodb://localhost:27017", database_name="chat")
        agent = Agent(session_manager=SnapshotSessionManager("user-42", storage=storage))
        ```
    """

    _namespaced: object  # set on namespaced views only (Strands' _NAMESPACED marker)

    def __init__(
        self,
        connection_string: str | None = None,
        *,
        database_name: str = DEFAULT_DATABASE_NAME,
        collection_name: str = DEFAULT_COLLECTION_NAME,
        client: MongoClient[Any] | None = None,
        ttl: float | Any = None,
        search_strategy: SearchStrategy[MongoDBStorage] | None = None,
        search_index_bytes: int = layout.DEFAULT_SEARCH_INDEX_BYTES,
        tenant_id: str | None = None,
        encryption: ClientSideEncryption | None = None,
        **client_kwargs: Any,
    ) -> None:
        """Create the storage; see the class docstring for the arguments."""
        expiry = layout.Expiry.parse(ttl)
        root = layout.tenant_root(tenant_id)
        if (
            not isinstance(search_index_bytes, int)
            or isinstance(search_index_bytes, bool)
            or not 0 <= search_index_bytes <= layout.MAX_SEARCH_INDEX_BYTES
        ):
            raise StorageValidationError(
                "search_index_bytes",
                f"must be an integer from 0 to {layout.MAX_SEARCH_INDEX_BYTES}",
                search_index_bytes,
            )
        if encryption is not None and not isinstance(encryption, ClientSideEncryption):
            raise StorageValidationError("encryption", "must be a ClientSideEncryption or None")
        self._backend = _Backend(connection_string, client, client_kwargs, database_name, collection_name)
        try:  # a wrong master key is refused here, before anything is written
            self._backend.encryption = encryption_for(encryption, self._backend.sync_client())
        except BaseException:
            self._backend.close()
            raise
        self.tenant_id: str | None = tenant_id
        self._root = root  # the tenant's part of every stored key ("" without a tenant)
        self._prefix = ""
        self._expiry = expiry
        self._search_strategy = search_strategy
        self._search_index_bytes = search_index_bytes

    # ------------------------------------------------------------------ the Storage protocol

    async def write(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any value, atomically for every reader.

        Raises:
            StorageValidationError: The key or the data is refused (before any I/O).
            StorageBackendError: MongoDB failed; the key holds its old value or the new one, whole.
        """
        relative = layout.normalize_key(key)
        full = self._root + self._prefix + relative
        value = layout.as_bytes(data)
        driver = await self._backend.driver()
        with self._errors(full, "write", driver):
            await self._write(driver, full, value)
        logger.debug("key=<%s>, bytes=<%d> | value written", full, len(value))
        if self._search_strategy is not None:
            try:
                await self._search_strategy.index(self, relative, value)
            except Exception as error:
                raise StorageBackendError(
                    f"key=<{full}> | wrote the value, but the search strategy failed to index it"
                ) from error

    async def read(self, key: str) -> bytes | None:
        """Return the bytes stored under ``key``, or ``None`` if there are none (or they expired).

        Raises:
            StorageValidationError: The key is refused.
            StorageBackendError: MongoDB failed, or the stored value is damaged (never partial bytes).
        """
        full = self._root + self._prefix + layout.normalize_key(key)
        driver = await self._backend.driver()
        with self._errors(full, "read", driver):
            return await self._read(driver, full)

    async def delete(self, key: str) -> None:
        """Delete the value under ``key``; nothing happens if there is none.

        Raises:
            StorageValidationError: The key is refused.
            StorageBackendError: MongoDB failed.
        """
        full = self._root + self._prefix + layout.normalize_key(key)
        driver = await self._backend.driver()
        with self._errors(full, "delete", driver):
            deleted = await driver.delete_one("keys", {"_id": full, **layout.NOTHING_TO_CLEAN})
            if not deleted:
                # Missing, or a chunked value (or pending entries): the document becomes a tombstone
                # recording the chunks to delete, which go next.
                tombstoned = await driver.update_one("keys", {"_id": full}, layout.delete_value(layout.utc_now()))
                if tombstoned:
                    await self._clean_up(driver, full)
            await self._shred_if_empty(driver, full)
        logger.debug("key=<%s> | value deleted", full)

    async def list(self, query: str = "") -> builtins.list[str]:
        """List the keys that start with ``query`` (a literal prefix), in code-point order.

        Keys are returned whole (relative to this view's namespace); ``""`` lists every key.

        Raises:
            StorageValidationError: The prefix is refused (backslashes, ``..`` segments).
            StorageBackendError: MongoDB failed.
        """
        prefix = self._root + self._prefix + layout.normalize_prefix(query)
        driver = await self._backend.driver()
        with self._errors(prefix, "list", driver):
            documents = await driver.find(
                "keys",
                {"_id": layout.key_range(prefix), "expires": {"$gt": layout.utc_now()}},
                {"_id": 1},
                layout.KEY_EXPIRES_INDEX,
                layout.LIST_BATCH,
            )
        cut = len(self._root) + len(self._prefix)
        return [document["_id"][cut:] for document in documents]

    async def search(self, query: str) -> builtins.list[StorageSearchResult]:
        """Find stored values by keyword, ranked as Strands' default ``KeywordSearchStrategy`` ranks them.

        Scores are the number of distinct query words (stop words aside) in the key (relative to this
        view, without extension) and the content; best first, ties in key order. Only candidates
        holding a query word are read, through an index; inline values come back with their bytes,
        chunked ones with ``data=None``. With a ``search_strategy``, it answers instead.

        Raises:
            StorageValidationError: ``query`` is not a string.
            StorageBackendError: MongoDB failed.
        """
        if self._search_strategy is not None:
            return await self._search_strategy.search(self, query)
        if not isinstance(query, str):
            raise StorageValidationError("query", f"must be a string, got {type(query).__name__}")
        words, content, terms = layout.query_terms(query)
        if not words:
            return []
        driver = await self._backend.driver()
        with self._errors(self._prefix, "search", driver):
            return await self._search(driver, words, content, terms)

    def namespace(self, prefix: str, *, ttl: Any = _UNSET) -> MongoDBStorage:
        """A view of this storage scoped to ``prefix`` (nested prefixes compose).

        The view shares this storage's clients, collections and search strategy; its keys, listings
        and searches are relative to the prefix (a search scores keys without it), and Strands sees
        it as already namespaced. ``ttl`` sets the expiry of the values written through the view.

        Raises:
            StorageValidationError: The prefix or the ttl is refused.
        """
        scoped = copy.copy(self)
        scoped._prefix = layout.namespace_prefix(self._prefix, prefix)
        if ttl is not _UNSET:
            scoped._expiry = self._expiry.with_rule(scoped._prefix, layout.ttl_seconds(ttl))
        scoped._namespaced = _NAMESPACED
        return scoped

    # ------------------------------------------------------------------ beyond the protocol

    async def repair(self) -> dict[str, int]:
        """Clean up after interrupted writes: delete the chunks nothing will read again.

        Finds the keys (of this view) with pending entries that are due (a replaced version whose
        cleanup was interrupted, or a chunked write that did not finish within an hour) through a
        sparse index, never by reading the values; fences off unfinished writes, deletes their
        chunks and drops their entries. Writes and deletes of a key already do this for that key:
        run this after crashes, for keys that are not written again.

        Returns:
            ``{"keys": ..., "versions": ...}``: how many keys had something due and how many chunk
            versions were deleted.

        Raises:
            StorageBackendError: MongoDB failed (what was not cleaned is still recorded).
        """
        driver = await self._backend.driver()
        keys = versions = 0
        with self._errors(self._prefix, "repair", driver):
            now = layout.utc_now()
            documents = await driver.find(
                "keys",
                {"pending.at": {"$lte": now}, "_id": layout.key_range(self._root + self._prefix)},
                {"pending": 1},
                layout.PENDING_INDEX,
            )
            for document in documents:
                deleted = await self._collect(driver, document["_id"], layout.cleanup_of(document, now))
                keys += 1 if deleted else 0
                versions += deleted
        if keys:
            logger.info("keys=<%d>, versions=<%d> | storage repaired", keys, versions)
        return {"keys": keys, "versions": versions}

    @property
    def prefix(self) -> str:
        """The key prefix of this view (``""`` for the storage itself)."""
        return self._prefix

    @property
    def database_name(self) -> str:
        return self._backend.database_name

    @property
    def collection_name(self) -> str:
        """The key collection (chunks are in ``<collection_name>_chunks``)."""
        return self._backend.collections["keys"]

    @property
    def owns_client(self) -> bool:
        """Whether the storage built its clients (from a connection string) and :meth:`close` releases them."""
        return self._backend.owns_client

    def close(self) -> None:
        """Release the pooled client if this storage built it (a borrowed client stays open).

        Closes the storage and every view of it; their calls then raise ``StorageBackendError``.
        Async clients belong to their event loop and close when it ends.
        """
        self._backend.close()

    async def aclose(self) -> None:
        """:meth:`close`, for ``async with``."""
        self.close()

    def __enter__(self) -> MongoDBStorage:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    async def __aenter__(self) -> MongoDBStorage:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        backend = self._backend
        return (
            f"MongoDBStorage(database_name={backend.database_name!r}, collection_name={self.collection_name!r}, "
            f"prefix={self._prefix!r}, uri={backend.redacted_uri!r}, owns_client={backend.owns_client})"
        )

    # ------------------------------------------------------------------ internals

    async def _write(self, driver: Driver, full: str, value: bytes) -> None:
        now = layout.utc_now()
        expires = self._expiry.expires(full[len(self._root) :], now)
        engine = self._backend.encryption
        if engine is not None:  # content words are not indexed: they would be stored in clear
            terms = layout.terms_for(full[len(self._root) :], value, False)
            value = await self._blocking(driver, self._sealer(full).seal, value)
            await self._write_stored(driver, full, value, terms, expires, now)
            return
        index_content = len(value) <= self._search_index_bytes
        if index_content and len(value) > _THREAD_TERMS_BYTES and not driver.blocking:
            terms = await asyncio.to_thread(layout.terms_for, full[len(self._root) :], value, True)
        else:
            terms = layout.terms_for(full[len(self._root) :], value, index_content)
        await self._write_stored(driver, full, value, terms, expires, now)

    def _scope_of(self, full: str) -> str:
        """The encryption scope of a stored key: its first path segment (below the tenant's root)."""
        return full[len(self._root) :].split("/", 1)[0]

    def _sealer(self, full: str) -> Sealer:
        """What encrypts the value of ``full``: its scope's data key (created at the scope's first write)."""
        engine = self._backend.encryption
        assert engine is not None
        return engine.sealer(self._key_name(self._scope_of(full)), full)

    def _key_name(self, scope: str) -> str:
        return data_key_name(
            scope, self.tenant_id, namespace=f"{self._backend.database_name}.{self._backend.collections['keys']}"
        )

    async def _blocking(self, driver: Driver, function: Any, *args: Any) -> Any:
        """Run encryption work (CPU, and a key fetch at most once per scope per process) off the
        application's event loop; inline on Strands' sync bridge, which blocks anyway."""
        if driver.blocking:
            return function(*args)
        return await asyncio.to_thread(function, *args)

    async def _shred_if_empty(self, driver: Driver, full: str) -> None:
        """After a delete: if the key's scope holds no value any more, delete its data key (what a
        backup kept of the scope becomes unreadable)."""
        engine = self._backend.encryption
        if engine is None:
            return
        scope = self._root + self._scope_of(full)
        live = {"$gt": layout.utc_now()}  # a tombstone's chunks are about to go: it does not count
        left = await driver.find_one("keys", {"_id": scope, "expires": live}, {"_id": 1}) is not None or bool(
            await driver.aggregate(
                "keys",
                [
                    {"$match": {"_id": layout.key_range(scope + "/"), "expires": live}},
                    {"$limit": 1},
                    {"$project": {"_id": 1}},
                ],
                layout.KEY_EXPIRES_INDEX,
            )
        )
        if not left:
            await self._blocking(driver, engine.delete_key, self._key_name(self._scope_of(full)))
            logger.debug("key=<%s> | scope empty: its data key was deleted", full)

    async def _write_stored(
        self, driver: Driver, full: str, value: bytes, terms: builtins.list[str], expires: Any, now: Any
    ) -> None:
        if layout.fits_inline(full, len(value), terms):
            plain = layout.write_plain(value, terms, expires)
            try:
                await driver.update_one("keys", {"_id": full, **layout.NOTHING_TO_CLEAN}, plain, upsert=True)
                return
            except DuplicateKeyError:
                pass  # the key holds a chunked value or pending entries: replace it, then clean up
            update = layout.write_inline(value, terms, expires, now)
            await driver.update_one("keys", {"_id": full}, update, upsert=True)
            await self._clean_up(driver, full)
            return
        version = ObjectId()
        removal = layout.chunk_removal(expires)
        chunks = [
            {
                "_id": layout.chunk_id(version, number),
                "key": full,  # the chunk collection's shard key: a value's chunks live together
                "data": Binary(part, ENCRYPTED_CHUNK_SUBTYPE if is_ciphertext(value) else 0),
                **({"remove_at": removal} if removal else {}),
            }
            for number, part in enumerate(layout.split(value))
        ]
        inserted = False
        try:
            await driver.update_one("keys", {"_id": full}, layout.begin_chunked(version, len(chunks), now), upsert=True)
            await driver.insert_many("chunks", chunks)
            inserted = True
            switch = layout.switch_to(version, len(chunks), len(value), terms, expires, layout.utc_now())
            switched = await driver.update_one("keys", {"_id": full, **layout.live_entry(version)}, switch)
        except BaseException:  # a failure, or a cancellation
            if inserted:  # take our chunks back, unless the switch applied (then the new value stands)
                await self._abandon(driver, full, version, len(chunks))
            else:
                # The record or the chunks may still be on their way to the server (a cancelled or
                # timed-out command can land later): deleting now could miss them. The write stays
                # recorded as live, and is collected once its grace is over.
                logger.debug("key=<%s> | interrupted write left for collection after its grace", full)
            raise
        if not switched:  # a cleanup fenced the write off (it outlived WRITE_GRACE) and deletes its chunks
            raise StorageBackendError(
                f"key=<{full}> | the write took longer than {layout.WRITE_GRACE} and was fenced off by a cleanup; "
                "the key keeps its previous value"
            )
        await self._clean_up(driver, full, own=version)

    async def _abandon(self, driver: Driver, full: str, version: ObjectId, chunks: int) -> None:
        """Undo an unfinished chunked write of ``version``, unless its switch applied (then it stands)."""
        try:
            retired = await driver.update_one(
                "keys", {"_id": full, **layout.live_entry(version)}, layout.retire([version], layout.utc_now())
            )
            if retired:  # we fenced it off ourselves: nothing else will touch these chunks
                await driver.delete_many("chunks", layout.chunk_deletions(full, [(version, chunks)]))
                await driver.update_one("keys", {"_id": full}, layout.forget([version], layout.utc_now()))
                logger.debug("key=<%s> | interrupted write undone", full)
        except PyMongoError as e:
            logger.warning(
                "key=<%s>, error=<%s> | an interrupted write left chunks; a later write of the key or repair() "
                "deletes them",
                full,
                type(e).__name__,
            )

    async def _clean_up(self, driver: Driver, full: str, own: ObjectId | None = None) -> None:
        """After a write or delete that recorded something to clean up: delete what is due.

        The write stands either way: a failure here is logged, and what was not deleted stays recorded
        for the next write of the key or :meth:`repair`.
        """
        try:
            document = await driver.find_one("keys", {"_id": full}, {"_id": 0, "pending": 1})
            await self._collect(driver, full, layout.cleanup_of(document, layout.utc_now(), own))
        except PyMongoError as e:
            logger.warning(
                "key=<%s>, error=<%s> | value stored; deleting the chunks it replaced failed, a later write of "
                "the key or repair() will",
                full,
                type(e).__name__,
            )

    async def _collect(self, driver: Driver, full: str, cleanup: layout.Cleanup) -> int:
        """Delete the chunks of dead versions (fencing off stale live writes first); return how many."""
        dead = list(cleanup.dead)
        for version, count in cleanup.stale:
            fence = layout.retire([version], layout.utc_now())
            if await driver.update_one("keys", {"_id": full, **layout.live_entry(version)}, fence):
                dead.append((version, count))
        if not dead:
            return 0
        await driver.delete_many("chunks", layout.chunk_deletions(full, dead))
        await driver.update_one(
            "keys", {"_id": full}, layout.forget([version for version, _ in dead], layout.utc_now())
        )
        return len(dead)

    async def _read(self, driver: Driver, full: str) -> bytes | None:
        value = await self._read_stored(driver, full)
        if value is not None and self._backend.encryption is not None and is_ciphertext(value):
            opened: bytes = await self._blocking(driver, self._backend.encryption.open, full, value)
            return opened
        return value

    async def _read_stored(self, driver: Driver, full: str) -> bytes | None:
        previous: ObjectId | None = None
        for _attempt in range(_READ_ATTEMPTS):
            document = await driver.find_one(
                "keys",
                {"_id": full, "expires": {"$gt": layout.utc_now()}},
                {"_id": 0, "data": 1, "version": 1, "chunks": 1, "size": 1},
            )
            if document is None:
                return None
            if "data" in document:
                data = document["data"]
                if not isinstance(data, bytes) or len(data) != document.get("size"):
                    raise StorageBackendError(f"key=<{full}> | the stored value is damaged")
                return data
            version, count, size = document.get("version"), document.get("chunks"), document.get("size")
            if not isinstance(version, ObjectId) or not isinstance(count, int) or not isinstance(size, int):
                raise StorageBackendError(f"key=<{full}> | the stored value is damaged (no data, no chunks)")
            ids = layout.chunk_ids(version, count)
            parts = await driver.find("chunks", {"key": full, "_id": {"$in": ids}}, {"data": 1})
            if len(parts) < count:
                # Chunks written before chunks carried their key (an earlier version of this module):
                # found by id alone, only when the targeted read came back short.
                parts += await driver.find(
                    "chunks", layout.legacy_chunks(ids, [part.get("_id") for part in parts]), {"data": 1}
                )
            parts.sort(key=lambda part: str(part.get("_id")))
            value = layout.check_chunks(version, count, size, parts)
            if value is not None:
                sealed = bool(parts) and _subtype(parts[0].get("data")) == ENCRYPTED_CHUNK_SUBTYPE
                return Binary(value, ENCRYPTED_SUBTYPE) if sealed else value
            if version == previous:  # the key still names chunks that are not all there
                raise StorageBackendError(f"key=<{full}> | the stored value is incomplete ({count} chunks expected)")
            previous = version  # replaced while we read: its chunks were deleted; read the key again
        raise StorageBackendError(f"key=<{full}> | the value kept changing while it was read; try again")

    async def _search(
        self, driver: Driver, words: frozenset[str], content: builtins.list[str], terms: builtins.list[str]
    ) -> builtins.list[StorageSearchResult]:
        has_content_word = {"$gt": [{"$size": {"$setIntersection": ["$terms", {"$literal": content}]}}, 0]}
        pipeline: builtins.list[dict[str, Any]] = [
            {
                "$match": {
                    "terms": {"$in": terms},
                    "_id": layout.key_range(self._root + self._prefix),
                    "expires": {"$gt": layout.utc_now()},
                }
            },
            {
                "$project": {
                    "hits": {"$setIntersection": ["$terms", {"$literal": terms}]},
                    "data": {"$cond": [has_content_word, "$data", "$$REMOVE"]},
                    "chunked": {"$gt": [{"$ifNull": ["$chunks", 0]}, 0]},
                }
            },
        ]
        rows = await driver.aggregate("keys", pipeline, layout.TERMS_INDEX)
        cut = len(self._root) + len(self._prefix)
        found: builtins.list[tuple[str, int, bytes | None]] = []
        unread: builtins.list[str] = []
        for row in rows:
            key = row["_id"]
            points = layout.score(words, key[cut:], row.get("hits") or [])
            if points <= 0:
                continue
            data = row.get("data")
            if data is None and not row.get("chunked"):
                unread.append(key)  # matched on its key's words only: its bytes were not sent
            found.append((key, points, data if isinstance(data, bytes) else None))
        if unread:
            documents = await driver.find(
                "keys", {"_id": {"$in": unread}, "expires": {"$gt": layout.utc_now()}}, {"data": 1}
            )
            values = {document["_id"]: document.get("data") for document in documents}
            found = [(key, points, values.get(key, data)) for key, points, data in found]
        found.sort(key=lambda item: (-item[1], item[0]))
        engine = self._backend.encryption
        if engine is not None:
            found = [
                (key, points, await self._blocking(driver, engine.open, key, data) if is_ciphertext(data) else data)
                for key, points, data in found
            ]
        return [StorageSearchResult(key=key[cut:], score=points, data=data) for key, points, data in found]

    @contextlib.contextmanager
    def _errors(self, key: str, operation: str, driver: Driver) -> Iterator[None]:
        """Translate driver exceptions into ours, chained with ``from``."""
        try:
            yield
        except MongoDBSessionError:
            raise
        except (PyMongoError, BSONError) as e:
            readable = describe_failure(driver.client, e) if isinstance(e, PyMongoError) else None
            raise StorageBackendError(f"key=<{key}> | {readable or f'{operation} failed: {e}'}") from e


def _subtype(value: Any) -> int | None:
    """The BSON Binary subtype of a stored value (``bytes`` are subtype 0), ``None`` if not binary."""
    if isinstance(value, Binary):
        return int(value.subtype)
    return 0 if isinstance(value, bytes) else None

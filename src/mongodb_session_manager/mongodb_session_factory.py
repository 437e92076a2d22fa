"""Cheap per-request session managers: ``MongoDBSessionManagerFactory`` and the global factory.

A web server or Lambda handler creates one factory at start-up and one manager per request. The
factory holds the process's pooled client and a ready repository, so a manager costs no new
connection and no index command: only the reads Strands itself asks for.

Example:
    ```python
    # at start-up
    initialize_global_factory("mongodb://localhost:27017", database_name="chat", maxPoolSize=100)

    # per request
    manager = get_global_factory().create_session_manager(session_id)
    agent = Agent(session_manager=manager)
    ```
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from pymongo import MongoClient

from .errors import MongoDBSessionError, SessionValidationError
from .mongodb_connection_pool import (
    MongoDBConnectionPool,
    SharedClientLease,
    acquire_shared_client,
    split_client_options,
)
from .mongodb_session_manager import MongoDBSessionManager
from .mongodb_session_repository import (
    DEFAULT_COLLECTION_NAME,
    DEFAULT_DATABASE_NAME,
    STORAGE_OPTIONS,
    MongoDBSessionRepository,
)

logger = logging.getLogger(__name__)

__all__ = [
    "MongoDBSessionManagerFactory",
    "close_global_factory",
    "get_global_factory",
    "initialize_global_factory",
]


class MongoDBSessionManagerFactory:
    """Creates :class:`MongoDBSessionManager` instances that share one client and one repository.

    Args:
        connection_string: MongoDB connection string; the client is shared with every other user
            of the same connection string and options in the process (including
            :class:`MongoDBConnectionPool`).
        database_name: Database name.
        collection_name: Collection name.
        client: An existing ``MongoClient`` to borrow instead (never closed by the factory).
        session_ttl: Optional idle expiry for sessions (see :class:`MongoDBSessionRepository`).
        metadata_hook: Default metadata hook for the managers it creates.
        feedback_hook: Default feedback hook for the managers it creates.
        **client_kwargs: ``MongoClient`` options (``maxPoolSize``, ...), and the repository's
            storage options ``binary_offload_bytes``, ``overflow_threshold_bytes``,
            ``overflow_collection_name`` and ``tenant_id`` (the default tenant of its managers; see
            :class:`MongoDBSessionRepository`).
    """

    def __init__(
        self,
        connection_string: str | None = None,
        database_name: str = DEFAULT_DATABASE_NAME,
        collection_name: str = DEFAULT_COLLECTION_NAME,
        client: MongoClient[Any] | None = None,
        session_ttl: Any = None,
        metadata_hook: Any = None,
        feedback_hook: Any = None,
        **client_kwargs: Any,
    ) -> None:
        """Create the factory; see the class docstring."""
        self.storage_options = {name: client_kwargs.pop(name) for name in STORAGE_OPTIONS if name in client_kwargs}
        self._lease: SharedClientLease | None = None
        if client is None:
            if connection_string is None:
                raise SessionValidationError("connection_string", "pass a connection_string or a client")
            self._lease = acquire_shared_client(connection_string, **client_kwargs)
        elif client_kwargs:
            raise SessionValidationError("client_kwargs", "client options cannot be applied to a client passed in")
        self._client = client
        self.database_name = database_name
        self.collection_name = collection_name
        self.session_ttl = session_ttl
        self.metadata_hook = metadata_hook
        self.feedback_hook = feedback_hook
        self._repository: MongoDBSessionRepository | None = None
        self._repository_pid = -1
        self._lock = threading.Lock()
        self._closed = False
        try:
            self._get_repository()  # indexes are ensured once, here
        except BaseException:
            self.close()
            raise

    @property
    def client(self) -> MongoClient[Any]:
        """The client in use (rebuilt after ``fork`` when the factory owns it)."""
        if self._closed:
            raise MongoDBSessionError("the session manager factory has been closed")
        if self._lease is not None:
            return self._lease.client
        assert self._client is not None
        return self._client

    def _get_repository(self) -> MongoDBSessionRepository:
        client = self.client
        repository = self._repository
        if repository is not None and repository.client is client:
            return repository
        with self._lock:
            if self._repository is None or self._repository.client is not client:
                self._repository = MongoDBSessionRepository(
                    client=client,
                    database_name=self.database_name,
                    collection_name=self.collection_name,
                    session_ttl=self.session_ttl,
                    **self.storage_options,
                )
            return self._repository

    @property
    def repository(self) -> MongoDBSessionRepository:
        """The factory's repository, for reads that must not create a session (a 404 check, listing)."""
        return self._get_repository()

    def session_exists(self, session_id: str) -> bool:
        """Whether a session is stored, without creating it (a manager creates any session it is given)."""
        return self._get_repository().read_session(session_id) is not None

    def create_session_manager(self, session_id: str, **overrides: Any) -> MongoDBSessionManager:
        """Create a manager for ``session_id`` on the shared client and repository.

        Args:
            session_id: The session.
            **overrides: ``database_name``/``collection_name`` and ``tenant_id`` (a repository for
                them is built on the same client, sending no command), ``metadata_hook``/``feedback_hook`` (or camelCase), and anything
                ``RepositorySessionManager`` accepts.

        Returns:
            A new :class:`MongoDBSessionManager`; closing it leaves the factory's client open.
        """
        client_options, overrides = split_client_options(overrides)
        if client_options:
            raise SessionValidationError(
                "overrides", f"client options {sorted(client_options)} belong to the factory, not to one manager"
            )
        database_name = overrides.pop("database_name", self.database_name)
        collection_name = overrides.pop("collection_name", self.collection_name)
        tenant_id = overrides.pop("tenant_id", self.storage_options.get("tenant_id"))
        if (database_name, collection_name) == (self.database_name, self.collection_name):
            if tenant_id == self.storage_options.get("tenant_id"):
                repository = self._get_repository()
            else:
                repository = MongoDBSessionRepository(
                    client=self.client,
                    database_name=database_name,
                    collection_name=collection_name,
                    session_ttl=self.session_ttl,
                    **{**self.storage_options, "tenant_id": tenant_id},
                )
        else:
            options = {
                name: value for name, value in self.storage_options.items() if name != "overflow_collection_name"
            }
            repository = MongoDBSessionRepository(
                client=self.client,
                database_name=database_name,
                collection_name=collection_name,
                session_ttl=self.session_ttl,
                **{**options, "tenant_id": tenant_id},
            )
        if "metadataHook" not in overrides:
            overrides.setdefault("metadata_hook", self.metadata_hook)
        if "feedbackHook" not in overrides:
            overrides.setdefault("feedback_hook", self.feedback_hook)
        return MongoDBSessionManager(session_id=session_id, session_repository=repository, **overrides)

    def get_connection_stats(self) -> dict[str, Any]:
        """Connection and command statistics of the factory's client (see ``get_pool_stats``)."""
        if self._lease is not None:
            return self._lease.stats()
        return {"borrowed_client": True}

    def close(self) -> None:
        """Release the factory's client (a borrowed client stays open). Managers made by it stop working."""
        if self._closed:
            return
        self._closed = True
        if self._lease is not None:
            self._lease.release()

    def __enter__(self) -> MongoDBSessionManagerFactory:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        uri = self._lease.redacted_uri if self._lease is not None else "<borrowed client>"
        return (
            f"MongoDBSessionManagerFactory(uri={uri!r}, database_name={self.database_name!r}, "
            f"collection_name={self.collection_name!r})"
        )


_global_lock = threading.Lock()
_global_factory: MongoDBSessionManagerFactory | None = None


def initialize_global_factory(
    connection_string: str,
    database_name: str = DEFAULT_DATABASE_NAME,
    collection_name: str = DEFAULT_COLLECTION_NAME,
    **kwargs: Any,
) -> MongoDBSessionManagerFactory:
    """Create the process-wide factory (replacing any previous one) on the process-wide pool.

    The factory's client is :class:`MongoDBConnectionPool`'s client, so
    ``MongoDBConnectionPool.get_pool_stats()`` reports its connections.

    Args:
        connection_string: MongoDB connection string.
        database_name: Database name.
        collection_name: Collection name.
        **kwargs: ``MongoClient`` options, plus ``session_ttl``, ``metadata_hook``, ``feedback_hook`` and
            the storage options (``binary_offload_bytes``, ``overflow_threshold_bytes``, ...).

    Returns:
        The global factory.
    """
    global _global_factory
    client_options, factory_options = split_client_options(kwargs)
    with _global_lock:
        MongoDBConnectionPool.initialize(connection_string, **client_options)
        factory = MongoDBSessionManagerFactory(
            connection_string, database_name, collection_name, **factory_options, **client_options
        )
        previous, _global_factory = _global_factory, factory
    if previous is not None:
        previous.close()
    logger.info(
        "database=<%s>, collection=<%s> | global session manager factory initialised", database_name, collection_name
    )
    return factory


def get_global_factory() -> MongoDBSessionManagerFactory:
    """Return the factory made by :func:`initialize_global_factory`.

    Raises:
        MongoDBSessionError: It has not been initialised (or was closed).
    """
    factory = _global_factory
    if factory is None:
        raise MongoDBSessionError(
            "the global session manager factory is not initialised: call initialize_global_factory() at start-up"
        )
    return factory


def close_global_factory() -> None:
    """Close the global factory and the process-wide pool. Safe to call when not initialised."""
    global _global_factory
    with _global_lock:
        factory, _global_factory = _global_factory, None
    if factory is not None:
        factory.close()
    MongoDBConnectionPool.close()

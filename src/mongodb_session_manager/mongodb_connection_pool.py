"""Process-wide MongoDB clients: the ``MongoDBConnectionPool`` singleton and shared clients.

A ``MongoClient`` is expensive to create (DNS, TCP, TLS, authentication, server monitoring threads)
and designed to be shared by every thread of a process. This module gives the library two ways to
share one:

* :class:`MongoDBConnectionPool`, the explicit singleton: ``initialize`` once at start-up, then
  ``get_client`` anywhere. The factory and the global factory build on it.
* :func:`acquire_shared_client`, used when a repository or manager is built from a connection
  string: every caller with the same connection string and options gets the same client, so code
  that builds one manager per request (and never closes it, as Strands never does) still opens one
  pool, not one per request.

Both record real statistics from pymongo's monitoring events, identify the library to the server,
rebuild their client in a child process after ``fork`` and never reveal the connection string.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote

from pymongo import MongoClient, common
from pymongo.driver_info import DriverInfo
from pymongo.errors import ConfigurationError, InvalidURI, PyMongoError
from pymongo.monitoring import (
    CommandFailedEvent,
    CommandListener,
    CommandStartedEvent,
    CommandSucceededEvent,
    ConnectionCheckedInEvent,
    ConnectionCheckedOutEvent,
    ConnectionCheckOutFailedEvent,
    ConnectionCheckOutStartedEvent,
    ConnectionClosedEvent,
    ConnectionCreatedEvent,
    ConnectionPoolListener,
    ConnectionReadyEvent,
    PoolClearedEvent,
    PoolClosedEvent,
    PoolCreatedEvent,
)
from pymongo.uri_parser import parse_uri

from ._secrets import redact_uri, scrub, uri_secrets
from ._version import __version__
from .errors import SessionStorageError, SessionValidationError, describe_failure

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_CLIENT_OPTIONS",
    "MongoDBConnectionPool",
    "acquire_shared_client",
    "describe_failure",  # lives in errors.py; re-exported for code that imported it from here
    "split_client_options",
]

#: Defaults suited to stateless servers and AWS Lambda. ``minPoolSize=0`` and ``maxIdleTimeMS`` mean
#: no connection is held open while idle. ``timeoutMS`` bounds every operation whole (server
#: selection, the round trip, a retry), so a call fails within 10 s whether the server is unreachable,
#: frozen or black-holed (pymongo alone waits 30 s for an unreachable server and about 35 s for a
#: frozen one); ``serverSelectionTimeoutMS`` applies only when a caller's own timeout options replace
#: ``timeoutMS``. ``journal=True``: a write is acknowledged only once it is in the server's journal,
#: so a server crash right after an acknowledged turn cannot lose it (pymongo's default write concern
#: acknowledges writes still in memory on a standalone server). Every one can be overridden with
#: pymongo's own option name, as a keyword argument or in the connection string; naming any
#: write-concern option (``w``, ``journal``, ``wtimeoutMS``, ...) replaces ``journal=True``, and
#: naming any timeout (``serverSelectionTimeoutMS``, ``socketTimeoutMS``, ``waitQueueTimeoutMS``,
#: ``wTimeoutMS``) replaces ``timeoutMS``, which would otherwise silently override it.
DEFAULT_CLIENT_OPTIONS: dict[str, Any] = {
    "maxPoolSize": 100,
    "minPoolSize": 0,
    "maxIdleTimeMS": 30_000,
    "serverSelectionTimeoutMS": 5_000,
    "connectTimeoutMS": 5_000,
    "timeoutMS": 10_000,
    "retryWrites": True,
    "retryReads": True,
    "journal": True,
}

# A default is left out when the caller names any of these options (lower case): the caller chose.
_DEFAULT_REPLACED_BY: dict[str, frozenset[str]] = {
    "journal": frozenset({"w", "j", "journal", "fsync", "wtimeoutms", "wtimeout"}),
    # timeoutMS supersedes the per-step timeouts; a caller who set one of them chose those instead.
    "timeoutms": frozenset(
        {"timeoutms", "serverselectiontimeoutms", "sockettimeoutms", "waitqueuetimeoutms", "wtimeoutms"}
    ),
}

DRIVER_INFO = DriverInfo(name="mongodb-session-manager", version=__version__)


class _PoolMonitor(CommandListener, ConnectionPoolListener):
    """Counts connection-pool and command events as pymongo reports them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "connections_created",
                "connections_closed",
                "connections_checked_out",
                "checkouts",
                "checkout_failures",
                "pools_cleared",
                "commands_started",
                "commands_succeeded",
                "commands_failed",
            ),
            0,
        )
        self.peak_open = 0
        self.peak_checked_out = 0
        self._checked_out: set[tuple[Any, int]] = set()

    def _add(self, name: str, delta: int = 1) -> None:
        with self._lock:
            self.counters[name] += delta
            c = self.counters
            self.peak_open = max(self.peak_open, c["connections_created"] - c["connections_closed"])
            self.peak_checked_out = max(self.peak_checked_out, c["connections_checked_out"])

    def snapshot(self) -> dict[str, int]:
        with self._lock:
            stats = dict(self.counters)
            stats["connections_open"] = stats["connections_created"] - stats["connections_closed"]
            stats["peak_connections_open"] = self.peak_open
            stats["peak_connections_checked_out"] = self.peak_checked_out
        return stats

    # CommandListener
    def started(self, event: CommandStartedEvent) -> None:
        self._add("commands_started")

    def succeeded(self, event: CommandSucceededEvent) -> None:
        self._add("commands_succeeded")

    def failed(self, event: CommandFailedEvent) -> None:
        self._add("commands_failed")

    # ConnectionPoolListener
    def pool_created(self, event: PoolCreatedEvent) -> None:
        pass

    def pool_ready(self, event: Any) -> None:
        pass

    def pool_cleared(self, event: PoolClearedEvent) -> None:
        self._add("pools_cleared")

    def pool_closed(self, event: PoolClosedEvent) -> None:
        pass

    def connection_created(self, event: ConnectionCreatedEvent) -> None:
        self._add("connections_created")

    def connection_ready(self, event: ConnectionReadyEvent) -> None:
        pass

    def connection_closed(self, event: ConnectionClosedEvent) -> None:
        with self._lock:
            self._checked_out.discard((event.address, event.connection_id))
            self.counters["connections_checked_out"] = len(self._checked_out)
        self._add("connections_closed")

    def connection_check_out_started(self, event: ConnectionCheckOutStartedEvent) -> None:
        pass

    def connection_check_out_failed(self, event: ConnectionCheckOutFailedEvent) -> None:
        self._add("checkout_failures")

    # pymongo publishes "checked in" after the connection is back in the pool, so another thread's
    # "checked out" for the same connection can arrive first: track connections, not a counter.
    def connection_checked_out(self, event: ConnectionCheckedOutEvent) -> None:
        with self._lock:
            self._checked_out.add((event.address, event.connection_id))
            self.counters["connections_checked_out"] = len(self._checked_out)
        self._add("checkouts")

    def connection_checked_in(self, event: ConnectionCheckedInEvent) -> None:
        with self._lock:
            self._checked_out.discard((event.address, event.connection_id))
            self.counters["connections_checked_out"] = len(self._checked_out)


def split_client_options(kwargs: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split keyword arguments into ``MongoClient`` options (pymongo's names, any case) and the rest."""
    client_options = {key: value for key, value in kwargs.items() if key.lower() in common.VALIDATORS}
    rest = {key: value for key, value in kwargs.items() if key not in client_options}
    return client_options, rest


def _uri_option_names(connection_string: str) -> set[str]:
    """Lower-cased names of the options given in the connection string's query part."""
    _base, sep, query = connection_string.partition("?")
    if not sep:
        return set()
    names = set()
    for part in query.replace(";", "&").split("&"):
        key = part.partition("=")[0]
        if key:
            names.add(unquote(key).lower())
    return names


def _uri_parses(connection_string: str) -> bool:
    """Whether a plain ``mongodb://`` string parses on its own (used only to word an error).

    ``mongodb+srv://`` strings are not checked: parsing them resolves DNS.
    """
    if not connection_string.startswith("mongodb://"):
        return True
    try:
        parse_uri(connection_string)
    except (PyMongoError, ValueError, TypeError):
        return False
    return True


def resolve_client_options(connection_string: str, client_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """Merge our defaults under the caller's options.

    An option given as a keyword argument or in the connection string (pymongo option names are
    case-insensitive) wins over our default.

    Args:
        connection_string: The MongoDB connection string.
        client_kwargs: Keyword options for ``MongoClient``.

    Returns:
        The keyword options to build the client with.
    """
    given = {key.lower() for key in client_kwargs} | _uri_option_names(connection_string)
    options = {
        key: value
        for key, value in DEFAULT_CLIENT_OPTIONS.items()
        if not given & _DEFAULT_REPLACED_BY.get(key.lower(), frozenset({key.lower()}))
    }
    options.update(client_kwargs)
    return options


def _options_key(options: Mapping[str, Any]) -> tuple[tuple[str, str], ...]:
    """A hashable, order-independent key for a set of client options."""
    return tuple(sorted((key.lower(), repr(value)) for key, value in options.items()))


class _ManagedClient:
    """One ``MongoClient`` with its monitor, rebuilt lazily in a child process after ``fork``."""

    def __init__(self, connection_string: str, client_kwargs: Mapping[str, Any]) -> None:
        if not isinstance(connection_string, str) or not connection_string.strip():
            raise SessionValidationError("connection_string", "must be a non-empty MongoDB connection string")
        self._connection_string = connection_string
        self._secrets = uri_secrets(connection_string)
        self.options = resolve_client_options(connection_string, client_kwargs)
        self.redacted_uri = redact_uri(connection_string)
        self._lock = threading.Lock()
        self._client: MongoClient[dict[str, Any]] | None = None
        self._pid = -1
        self.monitor = _PoolMonitor()
        self.closed = False
        self._build()

    def _build(self) -> MongoClient[dict[str, Any]]:
        user_listeners = list(self.options.get("event_listeners") or [])
        kwargs = {key: value for key, value in self.options.items() if key != "event_listeners"}
        kwargs.setdefault("driver", DRIVER_INFO)
        monitor = _PoolMonitor()
        failure: tuple[type[Exception], str] | None = None
        try:
            client: MongoClient[dict[str, Any]] = MongoClient(
                self._connection_string, event_listeners=[monitor, *user_listeners], **kwargs
            )
        except (PyMongoError, TypeError, ValueError, OSError) as e:
            # Decide the error outside this block: the driver's exception may quote the password,
            # and raising inside it would keep that exception reachable as __context__.
            failure = (type(e), scrub(f"{type(e).__name__}: {e}", self._secrets))
        if failure is not None:
            kind, message = failure
            if issubclass(kind, OSError) and not issubclass(kind, PyMongoError):
                # A TLS file (certificate, key, CA, CRL) that is missing or unreadable.
                field, path = _tls_file_option(self.options, self._connection_string)
                raise SessionValidationError(field, f"cannot read the file {path!r} ({message})")
            if issubclass(kind, InvalidURI) or not _uri_parses(self._connection_string):
                raise SessionValidationError("connection_string", message)
            if issubclass(kind, ConfigurationError | TypeError | ValueError):
                raise SessionValidationError("client_kwargs", message)
            raise SessionStorageError(f"uri=<{self.redacted_uri}> | could not create MongoDB client: {message}")
        self._client, self._pid, self.monitor = client, os.getpid(), monitor
        logger.debug("uri=<%s>, pid=<%s> | mongodb client created", self.redacted_uri, self._pid)
        return client

    @property
    def client(self) -> MongoClient[dict[str, Any]]:
        client = self._client
        if client is not None and self._pid == os.getpid():
            return client
        with self._lock:
            if self.closed:
                raise SessionStorageError(f"uri=<{self.redacted_uri}> | the MongoDB client has been closed")
            if self._client is None or self._pid != os.getpid():
                # A forked child must not use its parent's sockets: build a fresh client. The
                # parent's client is dropped, not closed, since closing would talk over sockets
                # the parent still owns.
                logger.debug(
                    "uri=<%s>, pid=<%s> | process forked, rebuilding mongodb client", self.redacted_uri, os.getpid()
                )
                return self._build()
            return self._client

    def same_config(self, connection_string: str, client_kwargs: Mapping[str, Any]) -> bool:
        return connection_string == self._connection_string and _options_key(
            resolve_client_options(connection_string, client_kwargs)
        ) == _options_key(self.options)

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self.monitor.snapshot()
        client = self._client
        if client is not None:
            pool_options = client.options.pool_options
            stats["max_pool_size"] = pool_options.max_pool_size
            stats["min_pool_size"] = pool_options.min_pool_size
        else:
            stats["max_pool_size"] = _option(self.options, "maxPoolSize")
            stats["min_pool_size"] = _option(self.options, "minPoolSize")
        stats["uri"] = self.redacted_uri
        stats["pid"] = self._pid
        return stats

    def close(self) -> None:
        with self._lock:
            self.closed = True
            client, self._client = self._client, None
        if client is not None and self._pid == os.getpid():
            client.close()
            logger.debug("uri=<%s> | mongodb client closed", self.redacted_uri)

    def after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        self.monitor = _PoolMonitor()


_TLS_FILE_OPTIONS = ("tlsCertificateKeyFile", "tlsCAFile", "tlsCRLFile", "ssl_certfile", "ssl_keyfile", "ssl_ca_certs")


def _tls_file_option(options: Mapping[str, Any], connection_string: str) -> tuple[str, str]:
    """The TLS file options the caller gave, and their paths (what a file error is reported against)."""
    given = {key.lower(): str(value) for key, value in options.items()}
    _base, _sep, query = connection_string.partition("?")
    for part in query.replace(";", "&").split("&"):
        key, _eq, value = part.partition("=")
        given.setdefault(unquote(key).lower(), unquote(value))
    named = [(name, given[name.lower()]) for name in _TLS_FILE_OPTIONS if name.lower() in given]
    if not named:
        return "client_kwargs", "?"
    return "/".join(name for name, _ in named), ", ".join(path for _, path in named)


def _option(options: Mapping[str, Any], name: str) -> Any:
    for key, value in options.items():
        if key.lower() == name.lower():
            return value
    return None


class SharedClientLease:
    """A reference to a shared client; :meth:`release` gives it back (closing it with the last lease)."""

    def __init__(self, key: tuple[Any, ...], managed: _ManagedClient) -> None:
        self._key = key
        self._managed = managed
        self.released = False

    @property
    def client(self) -> MongoClient[dict[str, Any]]:
        return self._managed.client

    @property
    def redacted_uri(self) -> str:
        return self._managed.redacted_uri

    def stats(self) -> dict[str, Any]:
        return self._managed.stats()

    def matches(self, connection_string: str, client_kwargs: Mapping[str, Any]) -> bool:
        """Whether this lease is for exactly this connection string and these options."""
        return not self.released and self._managed.same_config(connection_string, client_kwargs)

    def release(self) -> None:
        if self.released:
            return
        self.released = True
        _release_shared(self._key)

    def __repr__(self) -> str:
        return f"SharedClientLease(uri={self._managed.redacted_uri!r}, released={self.released})"


_shared_lock = threading.Lock()
_shared: dict[tuple[Any, ...], tuple[_ManagedClient, int]] = {}


def acquire_shared_client(connection_string: str, **client_kwargs: Any) -> SharedClientLease:
    """Return a lease on the process-wide client for this connection string and these options.

    Callers with equal connection strings and options share one client; it is closed when the last
    lease is released. A lease that is never released keeps the client open for the life of the
    process, which bounds connections and threads however many managers are created.

    Args:
        connection_string: MongoDB connection string.
        **client_kwargs: ``MongoClient`` options.

    Returns:
        A :class:`SharedClientLease`.
    """
    options = resolve_client_options(connection_string, client_kwargs)
    key = (connection_string, _options_key(options))
    with _shared_lock:
        entry = _shared.get(key)
        if entry is not None and not entry[0].closed:
            _shared[key] = (entry[0], entry[1] + 1)
            return SharedClientLease(key, entry[0])
    # Build outside the lock: client construction may resolve DNS (mongodb+srv) and must not block
    # other callers. If another thread won the race, use its client and drop ours.
    built = _ManagedClient(connection_string, client_kwargs)
    with _shared_lock:
        entry = _shared.get(key)
        lost_race = entry is not None and not entry[0].closed
        managed, count = (entry[0], entry[1] + 1) if entry is not None and lost_race else (built, 1)
        _shared[key] = (managed, count)
    if lost_race:
        built.close()
    return SharedClientLease(key, managed)


def _release_shared(key: tuple[Any, ...]) -> None:
    with _shared_lock:
        entry = _shared.get(key)
        if entry is None:
            return
        managed, count = entry
        if count > 1:
            _shared[key] = (managed, count - 1)
            return
        del _shared[key]
    managed.close()


def shared_client_count() -> int:
    """Number of distinct shared clients alive in this process (for tests and diagnostics)."""
    with _shared_lock:
        return len(_shared)


class MongoDBConnectionPool:
    """Process-wide singleton holding one shared, thread-safe ``MongoClient``.

    All methods are class methods; ``MongoDBConnectionPool()`` returns the one instance for code
    that prefers an object. The pool's client is the same object that :func:`acquire_shared_client`
    (and so a repository, manager or factory built from the same connection string and options)
    uses, so one process with one configuration opens one connection pool.

    Example:
        ```python
        client = MongoDBConnectionPool.initialize("mongodb://localhost:27017", maxPoolSize=50)
        same_client = MongoDBConnectionPool.get_client()
        print(MongoDBConnectionPool.get_pool_stats()["connections_open"])
        MongoDBConnectionPool.close()
        ```
    """

    _instance: MongoDBConnectionPool | None = None
    _lock = threading.RLock()
    _lease: SharedClientLease | None = None

    def __new__(cls) -> MongoDBConnectionPool:
        with cls._lock:
            if cls._instance is None:
                cls._instance = super().__new__(cls)
            return cls._instance

    @classmethod
    def initialize(cls, connection_string: str, **client_kwargs: Any) -> MongoClient[dict[str, Any]]:
        """Create the shared client, or return it if it already exists with the same settings.

        Calling again with a different connection string or different options replaces the client:
        the new one is built first, then the pool's hold on the old one is released (closing it
        unless a factory or repository still uses it).

        Args:
            connection_string: MongoDB connection string (may carry credentials; never logged).
            **client_kwargs: ``MongoClient`` options with pymongo's names (``maxPoolSize``,
                ``serverSelectionTimeoutMS``, ...), overriding :data:`DEFAULT_CLIENT_OPTIONS`.

        Returns:
            The shared ``MongoClient``.

        Raises:
            SessionValidationError: The connection string or an option is invalid.
            SessionStorageError: The client could not be created.
        """
        with cls._lock:
            current = cls._lease
            if current is not None and current.matches(connection_string, client_kwargs):
                return current.client
            replacement = acquire_shared_client(connection_string, **client_kwargs)
            cls._lease = replacement
        if current is not None:
            logger.info("uri=<%s> | connection pool re-initialised, releasing previous client", current.redacted_uri)
            current.release()
        logger.info("uri=<%s> | connection pool initialised", replacement.redacted_uri)
        return replacement.client

    @classmethod
    def get_client(cls) -> MongoClient[dict[str, Any]] | None:
        """Return the shared client, or ``None`` if :meth:`initialize` has not been called.

        In a child process forked after ``initialize`` this returns a new client with the same
        settings, never the parent's.
        """
        lease = cls._lease
        return lease.client if lease is not None else None

    @classmethod
    def is_initialized(cls) -> bool:
        """Whether :meth:`initialize` has been called (and :meth:`close` has not)."""
        return cls._lease is not None

    @classmethod
    def close(cls) -> None:
        """Release the pool's client (closed unless a factory or repository still holds it).

        Safe to call when not initialised.
        """
        with cls._lock:
            lease, cls._lease = cls._lease, None
        if lease is not None:
            lease.release()
            logger.info("uri=<%s> | connection pool closed", lease.redacted_uri)

    @classmethod
    def get_pool_stats(cls) -> dict[str, Any]:
        """Return connection and command statistics gathered from pymongo's monitoring events.

        Returns:
            ``{"initialized": False}`` before :meth:`initialize`; otherwise counters:
            ``connections_created``, ``connections_closed``, ``connections_open``,
            ``connections_checked_out`` (now), ``checkouts``, ``checkout_failures``,
            ``pools_cleared``, ``commands_started``/``succeeded``/``failed``, peaks, the
            effective ``max_pool_size``/``min_pool_size`` and the redacted ``uri``.
        """
        lease = cls._lease
        if lease is None:
            return {"initialized": False}
        return {"initialized": True, **lease.stats()}

    def __repr__(self) -> str:
        lease = self._lease
        where = lease.redacted_uri if lease is not None else None
        return f"MongoDBConnectionPool(initialized={lease is not None}, uri={where!r})"


def _after_fork_in_child() -> None:
    global _shared_lock
    MongoDBConnectionPool._lock = threading.RLock()
    _shared_lock = threading.Lock()
    for managed, _count in _shared.values():
        managed.after_fork_in_child()


def _close_shared_clients_at_exit() -> None:
    """Close the shared clients still held at interpreter exit (managers are rarely closed)."""
    with _shared_lock:
        entries = list(_shared.values())
        _shared.clear()
    for managed, _count in entries:
        managed.close()


atexit.register(_close_shared_clients_at_exit)

if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)

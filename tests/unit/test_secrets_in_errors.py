"""A password in the connection string never shows: not in any log, repr, statistic or error.

No server: every failure here is provoked without one (nothing listens on port 1, so the driver's
own ``ServerSelectionTimeoutError`` is raised; malformed connection strings and options fail while
the client is built). Each case is run through every public way of building a client, and
everything an application could print is searched for the secret, raw and percent-decoded: the
error's ``str`` and ``repr``, the full ``traceback.format_exception`` chain (``__cause__`` and
``__context__``, pymongo's exception included), its ``details``, every warning, and every log
record of every logger at DEBUG. The server-side faults (authentication refused, server stopped)
are in ``tests/integration/test_reliability_faults.py``.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import secrets
import traceback
import warnings
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import quote_plus

import pytest
from pymongo.errors import ServerSelectionTimeoutError

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionError,
    MongoDBSessionManager,
    MongoDBSessionRepository,
    MongoDBStorage,
    close_global_factory,
    initialize_global_factory,
)
from mongodb_session_manager.mongodb_connection_pool import acquire_shared_client, shared_client_count

# Unique per run (so a match can only be a leak) and with characters that must be percent-encoded.
SECRET = f"S3cr#t/{secrets.token_hex(8)}@x"
ENCODED = quote_plus(SECRET)
TOKEN = f"tok-{secrets.token_hex(8)}"
HOST = "127.0.0.1:1"  # nothing listens there
FAST = {"serverSelectionTimeoutMS": 100, "connectTimeoutMS": 100}


def _leaks(text: str) -> list[str]:
    return [secret for secret in (SECRET, ENCODED, TOKEN, secrets_suffix()) if secret in text]


def secrets_suffix() -> str:
    """The random part alone: catches a secret cut short or partly decoded."""
    return SECRET.split("/")[1].split("@")[0]


def _everything_about(error: BaseException) -> str:
    parts = ["".join(traceback.format_exception(error))]
    current: BaseException | None = error
    while current is not None:
        parts += [str(current), repr(current), repr(current.args), repr(getattr(current, "details", None))]
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


@pytest.fixture(autouse=True)
def _isolation() -> Iterator[None]:
    before = shared_client_count()
    yield
    close_global_factory()
    MongoDBConnectionPool.close()
    assert shared_client_count() == before, "a failed construction left a shared client open"


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[Callable[[], str]]:
    """All log records of all loggers at DEBUG, and all warnings, as one text."""
    caplog.set_level(logging.DEBUG)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")

        def text() -> str:
            logs = [f"{record.name} {record.getMessage()} {record.exc_text or ''}" for record in caplog.records]
            logs += [
                _everything_about(record.exc_info[1])
                for record in caplog.records
                if record.exc_info and record.exc_info[1]
            ]
            return "\n".join(logs + [str(warning.message) for warning in seen])

        yield text


def _storage_first_read(uri: str, options: dict[str, Any]) -> object:
    """MongoDBStorage builds its async client lazily: the first read is where a bad server shows."""

    async def first_read() -> None:
        async with MongoDBStorage(uri, database_name="d", **options) as storage:
            await storage.read("session/s/agents/a/snapshot_latest.json")

    try:
        asyncio.run(first_read())
    finally:
        # pymongo 4.20's async monitor leaves its socket to a refused port unclosed; collect it here,
        # where its ResourceWarning is not ours to report, rather than at some later test's teardown.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ResourceWarning)
            gc.collect()
    return None


# The public ways a connection string becomes a client (the global factory builds a
# MongoDBSessionManagerFactory on MongoDBConnectionPool; MongoDBStorage an async client of its own).
BUILDERS: dict[str, Callable[[str, dict[str, Any]], object]] = {
    "repository": lambda uri, options: MongoDBSessionRepository(uri, database_name="d", **options),
    "manager": lambda uri, options: MongoDBSessionManager("s", connection_string=uri, database_name="d", **options),
    "global_factory": lambda uri, options: initialize_global_factory(uri, database_name="d", **options),
    "storage": _storage_first_read,
}

FAILURES = [
    pytest.param(f"mongodb://app:{ENCODED}@{HOST}/?authSource=admin", FAST, id="unreachable-password"),
    pytest.param(
        f"mongodb://{HOST}/?authMechanism=MONGODB-AWS&authMechanismProperties=AWS_SESSION_TOKEN:{TOKEN}",
        FAST,
        id="unreachable-session-token",
    ),
    pytest.param(f"mongodb://app:{ENCODED}@{HOST}/?maxPoolSize=-3", FAST, id="bad-option-in-uri"),
    pytest.param(f"mongodb://app:{ENCODED}@{HOST}/", {"maxPoolSize": "many"}, id="bad-option-kwarg"),
    pytest.param(f"mongodb://app:{ENCODED}@{HOST}/", {"connect_timeout": 1, **FAST}, id="unknown-option-kwarg"),
    pytest.param(
        f"mongodb://app:{ENCODED}@{HOST}/?authMechanism=MONGODB-X509", FAST, id="password-refused-by-mechanism"
    ),
    pytest.param(f"mongodb://app:{ENCODED}@{HOST}/?authMechanism=BOGUS", FAST, id="unknown-mechanism"),
    pytest.param(f"mongodb://app:{SECRET}@{HOST}/", FAST, id="password-not-escaped"),
    pytest.param(f"mongodb://app:{ENCODED}@[::1/", FAST, id="bad-host"),
    pytest.param(f"mongodb://app:{ENCODED}@{HOST.replace(':1', ':99999')}/", FAST, id="bad-port"),
    pytest.param(f"mongodb+srv://app:{ENCODED}@127.0.0.1/", FAST, id="srv-with-ip"),
    pytest.param(f"postgres://app:{ENCODED}@{HOST}/", FAST, id="wrong-scheme"),
    pytest.param(f"app:{ENCODED}@{HOST}", FAST, id="no-scheme"),
    pytest.param(
        f"mongodb://{HOST}/?tls=true&tlsCertificateKeyFilePassword={ENCODED}&tlsInsecure=true&tlsAllowInvalidCertificates=true",
        FAST,
        id="conflicting-tls-options",
    ),
]


@pytest.mark.parametrize("builder", list(BUILDERS))
@pytest.mark.parametrize(("uri", "options"), FAILURES)
def test_no_failure_while_building_shows_the_secret(
    captured: Callable[[], str], builder: str, uri: str, options: dict[str, Any]
) -> None:
    with pytest.raises(MongoDBSessionError) as raised:
        BUILDERS[builder](uri, options)

    error = raised.value
    assert _leaks(_everything_about(error)) == []
    assert _leaks(captured()) == []
    # A client that could not be built leaves no driver exception (which may quote the connection
    # string) reachable from ours; only a server that cannot be reached is chained, to the driver's
    # server-selection error, which names hosts and never credentials.
    if error.__cause__ is not None or error.__context__ is not None:
        assert isinstance(error.__cause__, ServerSelectionTimeoutError)


def test_a_password_kwarg_is_as_secret_as_one_in_the_uri(captured: Callable[[], str]) -> None:
    with pytest.raises(MongoDBSessionError) as raised:
        MongoDBSessionRepository(f"mongodb://{HOST}/", username="app", password=SECRET, authMechanism="BOGUS")
    assert _leaks(_everything_about(raised.value) + captured()) == []


def test_reprs_stats_and_logs_of_clients_built_from_a_secret_uri_hide_it(captured: Callable[[], str]) -> None:
    uri = f"mongodb://app:{ENCODED}@{HOST}/?authMechanismProperties=AWS_SESSION_TOKEN:{TOKEN}&authMechanism=MONGODB-AWS&authSource=$external"
    MongoDBConnectionPool.initialize(uri, **FAST)
    lease = acquire_shared_client(uri, **FAST)
    try:
        shown = [
            repr(MongoDBConnectionPool()),
            repr(MongoDBConnectionPool.get_pool_stats()),
            repr(lease),
            repr(lease.stats()),
            repr(MongoDBConnectionPool.get_client()),  # pymongo's own repr
        ]
        with pytest.raises(ServerSelectionTimeoutError) as raised:  # the pool hands out pymongo's client
            MongoDBConnectionPool.get_client().admin.command("ping")  # type: ignore[union-attr]
        shown.append(_everything_about(raised.value))
    finally:
        lease.release()
    assert _leaks("\n".join(shown) + captured()) == []
    assert "app:***@" in repr(MongoDBConnectionPool())

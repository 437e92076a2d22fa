"""``MongoDBConnectionPool`` and shared clients, without a server.

``MongoClient`` does not need a reachable server to be built, and none of these tests runs a command
that would have to reach one: they look at the client's options, at which client object is handed
out, and at what is printed, logged and raised.
"""

from __future__ import annotations

import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from pymongo.errors import InvalidOperation, ServerSelectionTimeoutError
from pytest_mock import MockerFixture

from mongodb_session_manager import (
    DEFAULT_CLIENT_OPTIONS,
    MongoDBConnectionPool,
    MongoDBSessionRepository,
    SessionStorageError,
    SessionValidationError,
    __version__,
)
from mongodb_session_manager import mongodb_connection_pool as pool_module
from mongodb_session_manager.mongodb_connection_pool import (
    SharedClientLease,
    acquire_shared_client,
    resolve_client_options,
    shared_client_count,
)

# Nothing listens on port 1; the clients' monitors fail quietly in the background.
URI = "mongodb://127.0.0.1:1/"
OTHER_URI = "mongodb://127.0.0.2:1/"
PASSWORD = "s3cretPW"
SECRET_URI = f"mongodb://app:{PASSWORD}@127.0.0.1:1/?authSource=admin"
REDACTED_SECRET_URI = "mongodb://app:***@127.0.0.1:1/?authSource=admin"


@pytest.fixture(autouse=True)
def _clean_pool() -> Iterator[None]:
    MongoDBConnectionPool.close()
    shared_before = shared_client_count()
    yield
    MongoDBConnectionPool.close()
    assert shared_client_count() == shared_before, "the test left a shared client open"


@pytest.fixture
def leases() -> Iterator[list[SharedClientLease]]:
    """Leases a test takes; whatever it did not release is released afterwards."""
    taken: list[SharedClientLease] = []
    yield taken
    for lease in taken:
        lease.release()


@pytest.fixture
def new_shared_clients() -> Callable[[], int]:
    """How many more shared clients are alive than when the test started."""
    before = shared_client_count()
    return lambda: shared_client_count() - before


def _assert_closed(client: MongoClient[dict[str, Any]]) -> None:
    # A closed client refuses work at once, before any server selection.
    with pytest.raises(InvalidOperation, match="after close"):
        client.admin.command("ping")


def _exception_chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in chain:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


# resolve_client_options


def test_resolve_applies_all_defaults() -> None:
    assert resolve_client_options(URI, {}) == DEFAULT_CLIENT_OPTIONS


def test_resolve_kwarg_overrides_default_case_insensitively() -> None:
    options = resolve_client_options(URI, {"maxpoolsize": 5})

    assert options["maxpoolsize"] == 5
    assert "maxPoolSize" not in options
    assert options["minPoolSize"] == DEFAULT_CLIENT_OPTIONS["minPoolSize"]
    assert DEFAULT_CLIENT_OPTIONS["maxPoolSize"] == 100


def test_resolve_keeps_extra_kwargs() -> None:
    options = resolve_client_options(URI, {"appName": "billing", "retryWrites": False})

    assert options["appName"] == "billing"
    assert options["retryWrites"] is False


@pytest.mark.parametrize(
    "uri",
    [
        "mongodb://127.0.0.1:1/?maxPoolSize=7",
        "mongodb://127.0.0.1:1/?maxpoolsize=7",
        "mongodb://127.0.0.1:1/?appName=x;maxPoolSize=7",
        "mongodb://127.0.0.1:1/?appName=x&MAXPOOLSIZE=7",
    ],
)
def test_resolve_does_not_override_an_option_in_the_connection_string(uri: str) -> None:
    options = resolve_client_options(uri, {})

    assert "maxpoolsize" not in {key.lower() for key in options}
    assert options["minPoolSize"] == DEFAULT_CLIENT_OPTIONS["minPoolSize"]


def test_writes_are_journaled_and_operations_bounded_by_default(leases: list[SharedClientLease]) -> None:
    leases.append(acquire_shared_client(URI))
    client = leases[-1].client

    assert client.write_concern.document == {"j": True}
    assert client.options.timeout == DEFAULT_CLIENT_OPTIONS["timeoutMS"] / 1000


@pytest.mark.parametrize(
    ("uri", "kwargs", "write_concern"),
    [
        ("mongodb://127.0.0.1:1/?w=1", {}, {"w": 1}),
        ("mongodb://127.0.0.1:1/?journal=false", {}, {"j": False}),
        (URI, {"w": 0}, {"w": 0}),  # with journal=True added, pymongo would refuse this combination
        (URI, {"w": "majority"}, {"w": "majority"}),
        (URI, {"wTimeoutMS": 500}, {"wtimeout": 500}),
        (URI, {"journal": False}, {"j": False}),
    ],
)
def test_a_write_concern_the_caller_chose_replaces_the_journaled_default(
    uri: str, kwargs: dict[str, Any], write_concern: dict[str, Any], leases: list[SharedClientLease]
) -> None:
    leases.append(acquire_shared_client(uri, **kwargs))
    assert leases[-1].client.write_concern.document == write_concern


@pytest.mark.parametrize(
    "option",
    ["timeoutMS", "serverSelectionTimeoutMS", "socketTimeoutMS", "waitQueueTimeoutMS", "wTimeoutMS", "SOCKETTIMEOUTMS"],
)
def test_a_timeout_the_caller_chose_replaces_the_default_operation_timeout(option: str) -> None:
    options = resolve_client_options(URI, {option: 1234})
    assert [key for key in options if key.lower() in ("timeoutms", option.lower())] == [option]
    assert options[option] == 1234
    assert "timeoutMS" not in resolve_client_options(f"{URI}?{option}=1234", {})


@pytest.mark.parametrize("option", ["tlsCertificateKeyFile", "tlsCAFile"])
def test_a_missing_tls_file_is_a_validation_error_naming_the_option(option: str) -> None:
    uri = f"mongodb://app:{PASSWORD}@127.0.0.1:1/?tls=true&{option}=/nonexistent/file.pem"
    with pytest.raises(SessionValidationError) as raised:
        acquire_shared_client(uri)
    assert raised.value.field == option
    assert "/nonexistent/file.pem" in str(raised.value)
    assert all(PASSWORD not in "".join(traceback.format_exception(e)) for e in _exception_chain(raised.value))
    assert not any(isinstance(e, FileNotFoundError) for e in _exception_chain(raised.value))


# initialize / get_client / close


def test_initialize_builds_client_with_defaults() -> None:
    client = MongoDBConnectionPool.initialize(URI)

    pool_options = client.options.pool_options
    assert pool_options.max_pool_size == 100
    assert pool_options.min_pool_size == 0
    assert pool_options.max_idle_time_seconds == 30
    assert pool_options.connect_timeout == 5
    assert client.options.server_selection_timeout == 5
    assert client.options.retry_writes is True
    assert client.options.retry_reads is True


def test_initialize_kwarg_overrides_default_case_insensitively() -> None:
    client = MongoDBConnectionPool.initialize(URI, maxpoolsize=5, serverSelectionTimeoutMS=1_500)

    assert client.options.pool_options.max_pool_size == 5
    assert client.options.server_selection_timeout == 1.5
    assert MongoDBConnectionPool.get_pool_stats()["max_pool_size"] == 5


def test_initialize_keeps_option_from_connection_string() -> None:
    client = MongoDBConnectionPool.initialize("mongodb://127.0.0.1:1/?maxPoolSize=7&serverSelectionTimeoutMS=2500")

    assert client.options.pool_options.max_pool_size == 7
    assert client.options.server_selection_timeout == 2.5


def test_pool_stats_report_pool_size_from_connection_string() -> None:
    MongoDBConnectionPool.initialize("mongodb://127.0.0.1:1/?maxPoolSize=7&minPoolSize=2")

    stats = MongoDBConnectionPool.get_pool_stats()

    assert stats["max_pool_size"] == 7
    assert stats["min_pool_size"] == 2


def test_client_identifies_the_library_to_the_server() -> None:
    client = MongoDBConnectionPool.initialize(URI)

    driver = client.options.pool_options.metadata["driver"]

    assert "mongodb-session-manager" in driver["name"]
    assert __version__ in driver["version"]


def test_same_configuration_returns_same_client() -> None:
    first = MongoDBConnectionPool.initialize(URI, maxPoolSize=5, minPoolSize=1)

    second = MongoDBConnectionPool.initialize(URI, minpoolsize=1, maxPoolSize=5)

    assert second is first
    assert MongoDBConnectionPool.get_client() is first


@pytest.mark.parametrize(
    ("uri", "kwargs"),
    [(URI, {"maxPoolSize": 6}), (OTHER_URI, {"maxPoolSize": 5})],
    ids=["other-options", "other-connection-string"],
)
def test_different_configuration_replaces_and_closes_client(uri: str, kwargs: dict[str, Any]) -> None:
    old = MongoDBConnectionPool.initialize(URI, maxPoolSize=5)

    new = MongoDBConnectionPool.initialize(uri, **kwargs)

    assert new is not old
    assert MongoDBConnectionPool.get_client() is new
    assert new.options.pool_options.max_pool_size == kwargs["maxPoolSize"]
    _assert_closed(old)


def test_get_client_is_none_before_initialize_and_after_close() -> None:
    assert MongoDBConnectionPool.get_client() is None
    assert not MongoDBConnectionPool.is_initialized()
    assert MongoDBConnectionPool.get_pool_stats() == {"initialized": False}

    client = MongoDBConnectionPool.initialize(URI)
    assert MongoDBConnectionPool.get_client() is client
    assert MongoDBConnectionPool.is_initialized()

    MongoDBConnectionPool.close()
    assert MongoDBConnectionPool.get_client() is None
    assert not MongoDBConnectionPool.is_initialized()
    assert MongoDBConnectionPool.get_pool_stats() == {"initialized": False}
    _assert_closed(client)


def test_close_when_not_initialized_does_nothing() -> None:
    MongoDBConnectionPool.close()
    MongoDBConnectionPool.close()

    assert MongoDBConnectionPool.get_client() is None


def test_initialize_after_close_builds_a_new_client() -> None:
    first = MongoDBConnectionPool.initialize(URI)
    MongoDBConnectionPool.close()

    second = MongoDBConnectionPool.initialize(URI)

    assert second is not first
    assert MongoDBConnectionPool.get_client() is second


def test_instances_are_one_singleton() -> None:
    assert MongoDBConnectionPool() is MongoDBConnectionPool()


def test_concurrent_initialize_builds_one_client(mocker: MockerFixture) -> None:
    constructor = mocker.patch.object(pool_module, "MongoClient", wraps=MongoClient)
    threads_count = 16
    barrier = threading.Barrier(threads_count)
    clients: list[MongoClient[dict[str, Any]]] = []
    errors: list[BaseException] = []

    def initialize() -> None:
        try:
            barrier.wait()
            clients.append(MongoDBConnectionPool.initialize(URI, maxPoolSize=8))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=initialize) for _ in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(clients) == threads_count
    assert len({id(client) for client in clients}) == 1
    assert clients[0] is MongoDBConnectionPool.get_client()
    assert constructor.call_count == 1


@pytest.mark.parametrize("connection_string", ["", "   "])
def test_empty_connection_string_is_rejected(connection_string: str) -> None:
    with pytest.raises(SessionValidationError) as excinfo:
        MongoDBConnectionPool.initialize(connection_string)

    assert excinfo.value.field == "connection_string"
    assert MongoDBConnectionPool.get_client() is None


def test_failed_reinitialize_keeps_current_client() -> None:
    client = MongoDBConnectionPool.initialize(URI)

    with pytest.raises(SessionValidationError):
        MongoDBConnectionPool.initialize(URI, maxPoolSize="not-a-number")

    assert MongoDBConnectionPool.get_client() is client


# The connection string's secrets stay secret


def test_repr_hides_password() -> None:
    assert repr(MongoDBConnectionPool()) == "MongoDBConnectionPool(initialized=False, uri=None)"

    MongoDBConnectionPool.initialize(SECRET_URI)

    text = repr(MongoDBConnectionPool())
    assert PASSWORD not in text
    assert REDACTED_SECRET_URI in text


def test_pool_stats_hide_password() -> None:
    MongoDBConnectionPool.initialize(SECRET_URI)

    stats = MongoDBConnectionPool.get_pool_stats()

    assert PASSWORD not in repr(stats)
    assert stats["uri"] == REDACTED_SECRET_URI


def test_logs_hide_password(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    MongoDBConnectionPool.initialize(SECRET_URI)
    MongoDBConnectionPool.get_client()
    MongoDBConnectionPool.initialize(SECRET_URI, maxPoolSize=3)
    MongoDBConnectionPool.close()
    lease = acquire_shared_client(SECRET_URI)
    lease.release()

    ours = [record for record in caplog.records if record.name.startswith("mongodb_session_manager")]
    assert {record.levelno for record in ours} >= {logging.DEBUG, logging.INFO}
    assert any(REDACTED_SECRET_URI in record.getMessage() for record in ours)
    for record in caplog.records:
        assert PASSWORD not in record.getMessage(), record.name
        assert PASSWORD not in repr(record.args), record.name


@pytest.mark.parametrize(
    ("connection_string", "kwargs"),
    [
        (SECRET_URI, {"maxPoolSize": "not-a-number"}),
        (SECRET_URI, {"noSuchOption": 1}),
        (f"mongodb://app:{PASSWORD}@127.0.0.1:notaport/", {}),
        (f"mongodb://app:{PASSWORD}@extra@127.0.0.1:1/", {}),
        (f"mongodb://app:{PASSWORD}%ZZ@127.0.0.1:1/", {}),
        (f"mongodb://app:{PASSWORD}@127.0.0.1:1/?authSource=", {}),
        (f"mongodb://app:{PASSWORD}@127.0.0.1:1,127.0.0.2:1/?directConnection=true", {}),
    ],
    ids=[
        "bad-option-value",
        "unknown-option",
        "bad-port",
        "unescaped-at",
        "bad-percent",
        "empty-authsource",
        "direct-multi-host",
    ],
)
def test_invalid_configuration_error_hides_password(connection_string: str, kwargs: dict[str, Any]) -> None:
    with pytest.raises(SessionValidationError) as excinfo:
        MongoDBConnectionPool.initialize(connection_string, **kwargs)

    for exc in _exception_chain(excinfo.value):
        assert PASSWORD not in str(exc)
        assert PASSWORD not in repr(exc.args)
    assert PASSWORD not in "".join(traceback.format_exception(excinfo.value))
    assert MongoDBConnectionPool.get_client() is None


def test_invalid_configuration_error_hides_percent_decoded_password() -> None:
    connection_string = "mongodb://app:s3cret%40PW@127.0.0.1:1/"

    with pytest.raises(SessionValidationError) as excinfo:
        MongoDBConnectionPool.initialize(connection_string, maxPoolSize="x")

    text = "".join(traceback.format_exception(excinfo.value))
    assert "s3cret%40PW" not in text
    assert "s3cret@PW" not in text


def test_bad_option_error_names_the_problem() -> None:
    with pytest.raises(SessionValidationError, match="maxPoolSize") as excinfo:
        MongoDBConnectionPool.initialize(SECRET_URI, maxPoolSize="not-a-number")

    assert isinstance(excinfo.value, ValueError)


def test_bad_option_is_a_validation_error_whatever_the_password() -> None:
    # The password happens to be a word of pymongo's message: the type stays right, the word is scrubbed.
    with pytest.raises(SessionValidationError, match="maxPoolSize") as raised:
        MongoDBConnectionPool.initialize("mongodb://app:integer@127.0.0.1:1/", maxPoolSize="x")
    assert "integer" not in str(raised.value)
    assert raised.value.__cause__ is None and raised.value.__context__ is None


def test_password_with_hash_is_hidden(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)

    MongoDBConnectionPool.initialize("mongodb://app:pa#ssPW@127.0.0.1:1/")

    assert "ssPW" not in repr(MongoDBConnectionPool())
    assert "ssPW" not in repr(MongoDBConnectionPool.get_pool_stats())
    assert all("ssPW" not in record.getMessage() for record in caplog.records)


# acquire_shared_client


def test_same_string_and_options_share_one_client(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int]
) -> None:
    leases.append(acquire_shared_client(URI, maxPoolSize=5))
    leases.append(acquire_shared_client(URI, maxpoolsize=5))

    assert leases[0].client is leases[1].client
    assert new_shared_clients() == 1
    assert leases[0].client.options.pool_options.max_pool_size == 5


@pytest.mark.parametrize(
    ("uri", "kwargs"),
    [(URI, {"maxPoolSize": 6}), (OTHER_URI, {"maxPoolSize": 5})],
    ids=["other-options", "other-connection-string"],
)
def test_different_configuration_gets_its_own_client(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int], uri: str, kwargs: dict[str, Any]
) -> None:
    leases.append(acquire_shared_client(URI, maxPoolSize=5))
    leases.append(acquire_shared_client(uri, **kwargs))

    assert leases[0].client is not leases[1].client
    assert new_shared_clients() == 2


def test_shared_client_closes_with_last_lease(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int]
) -> None:
    first = acquire_shared_client(URI)
    second = acquire_shared_client(URI)
    client = first.client

    first.release()
    assert new_shared_clients() == 1
    assert second.client is client

    second.release()
    assert new_shared_clients() == 0
    _assert_closed(client)
    with pytest.raises(SessionStorageError):
        _ = second.client

    leases.append(acquire_shared_client(URI))
    assert leases[-1].client is not client
    assert new_shared_clients() == 1


def test_releasing_a_lease_twice_counts_once(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int]
) -> None:
    first = acquire_shared_client(URI)
    leases.append(acquire_shared_client(URI))
    client = first.client

    first.release()
    first.release()

    assert new_shared_clients() == 1
    assert leases[0].client is client


def test_singleton_shares_the_client_of_the_same_configuration(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int]
) -> None:
    leases.append(acquire_shared_client(URI, maxPoolSize=5))

    singleton = MongoDBConnectionPool.initialize(URI, maxPoolSize=5)

    assert singleton is leases[0].client
    assert new_shared_clients() == 1


def test_closing_the_singleton_keeps_a_client_still_leased(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int]
) -> None:
    singleton = MongoDBConnectionPool.initialize(URI)
    lease = acquire_shared_client(URI)

    MongoDBConnectionPool.close()

    assert MongoDBConnectionPool.get_client() is None
    assert lease.client is singleton
    assert new_shared_clients() == 1
    lease.release()
    _assert_closed(singleton)


def test_reinitialize_keeps_old_client_open_while_leased(
    leases: list[SharedClientLease], new_shared_clients: Callable[[], int]
) -> None:
    old = MongoDBConnectionPool.initialize(URI)
    leases.append(acquire_shared_client(URI))

    new = MongoDBConnectionPool.initialize(URI, maxPoolSize=6)

    assert new is not old
    assert leases[0].client is old
    assert new_shared_clients() == 2


def test_failed_acquire_leaves_no_shared_client(new_shared_clients: Callable[[], int]) -> None:
    with pytest.raises(SessionValidationError):
        acquire_shared_client(SECRET_URI, maxPoolSize="not-a-number")

    assert new_shared_clients() == 0


def test_lease_hides_password(leases: list[SharedClientLease]) -> None:
    leases.append(acquire_shared_client(SECRET_URI))
    lease = leases[0]

    assert lease.redacted_uri == REDACTED_SECRET_URI
    assert PASSWORD not in repr(lease)
    assert PASSWORD not in repr(lease.stats())


def test_an_unreachable_server_is_one_readable_line_with_pymongos_detail_chained() -> None:
    uri = f"mongodb://app:{PASSWORD}@127.0.0.1:1/?directConnection=true&timeoutMS=300"
    with pytest.raises(SessionStorageError) as raised:
        MongoDBSessionRepository(uri, database_name="chat")
    message = str(raised.value)
    assert message == (
        "cannot reach MongoDB at 127.0.0.1:1 (waited 0.3 s): connection refused; check that the server is running "
        "and reachable from here, and the host, port and TLS options of the connection string"
    )
    cause = raised.value.__cause__
    assert isinstance(cause, ServerSelectionTimeoutError) and "Topology Description" in str(cause)
    assert all(PASSWORD not in "".join(traceback.format_exception(e)) for e in _exception_chain(raised.value))

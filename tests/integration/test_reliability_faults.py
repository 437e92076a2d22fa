"""Faults: the server going away, crashing, dropping connections and refusing credentials.

These tests start their own SecantusDB (never the shared one): it requires authentication, fsyncs
every commit (``--sync-on-commit``, so acknowledged writes survive SIGKILL as they would with
journaling) and accepts ``configureFailPoint`` (``--enable-test-commands``). Every client connects
with a password in its connection string, and an autouse fixture checks that the password appears
in no log record of any logger at any level; every error a test catches is checked too.

Clients use ``serverSelectionTimeoutMS=1500`` so that failures come quickly. The bound asserted on
how long a failing call takes is a hang guard, not a timing assertion.
"""

from __future__ import annotations

import copy
import logging
import os
import secrets
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from pymongo import MongoClient, monitoring
from pymongo.errors import AutoReconnect, OperationFailure, PyMongoError, WriteConcernError
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionManagerFactory,
    MongoDBSessionRepository,
    SessionConflictError,
    SessionStorageError,
)
from mongodb_session_manager._documents import encode_field_name
from tests.support.concurrency_worker import WorkerServer
from tests.support.restore_worker import from_jsonable
from tests.support.scripted_model import EchoModel
from tests.support.server import ServerHandle, start_server

HANG_GUARD_SECONDS = 30
SELECTION_TIMEOUT_MS = 1500
USER = "fault-tester"
# Unique per run, so finding it anywhere can only mean it leaked.
PASSWORD = f"pw-{secrets.token_hex(12)}"
WRONG_PASSWORD = f"wrong-{secrets.token_hex(12)}"


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    with start_server(extra_args=["--sync-on-commit", "--enable-test-commands"]) as handle:
        bootstrap: MongoClient[dict[str, Any]] = MongoClient(handle.uri)
        with bootstrap:
            bootstrap.admin.command("createUser", USER, pwd=PASSWORD, roles=["root"])
        handle.extra_args.append("--auth")
        handle.restart()
        yield handle


def _uri(server: ServerHandle, password: str = PASSWORD) -> str:
    return f"mongodb://{USER}:{password}@{server.host}:{server.port}/?directConnection=true&authSource=admin"


@pytest.fixture
def uri(server: ServerHandle) -> str:
    server.start()  # a no-op unless an earlier test failed with the server down
    return _uri(server)


@pytest.fixture
def admin(uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=10_000)
    with client:
        yield client


@pytest.fixture
def db(admin: MongoClient[dict[str, Any]]) -> Iterator[str]:
    name = f"msm_faults_{uuid.uuid4().hex[:8]}"
    yield name
    admin.drop_database(name)


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerServer]:
    server = WorkerServer(tmp_path_factory.mktemp("fault-workers"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _password_never_logged(caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.DEBUG)  # every logger, every level: ours, pymongo's, Strands'
    yield
    records = caplog.get_records("setup") + caplog.get_records("call")
    for record in records:
        text = f"{record.name} {record.getMessage()} {record.exc_text or ''}"
        if record.exc_info and record.exc_info[1] is not None:
            text += _exception_text(record.exc_info[1])
        assert PASSWORD not in text and WRONG_PASSWORD not in text, f"password in a {record.levelname} log"
    assert any(record.name.startswith("mongodb_session_manager") for record in records), "logs were not captured"


@pytest.fixture(autouse=True)
def _clean_pool() -> Iterator[None]:
    yield
    MongoDBConnectionPool.close()


@pytest.fixture
def new_client() -> Iterator[Callable[..., MongoClient[dict[str, Any]]]]:
    """Build clients that are closed after the test, whatever happens in it."""
    clients: list[MongoClient[dict[str, Any]]] = []

    def build(uri: str, **options: Any) -> MongoClient[dict[str, Any]]:
        client: MongoClient[dict[str, Any]] = MongoClient(uri, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS, **options)
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.close()


@pytest.fixture
def new_manager() -> Iterator[Callable[..., MongoDBSessionManager]]:
    """Build managers that are closed after the test (releasing their shared client), whatever happens."""
    managers: list[MongoDBSessionManager] = []

    def build(session_id: str, uri: str, db: str, **options: Any) -> MongoDBSessionManager:
        manager = MongoDBSessionManager(session_id, connection_string=uri, database_name=db, **options)
        managers.append(manager)
        return manager

    yield build
    for manager in managers:
        manager.close()


def _exception_text(error: BaseException) -> str:
    """Everything an application might print about ``error``: str, repr, the whole chain, details."""
    parts = [str(error), repr(error), "".join(traceback.format_exception(error))]
    current: BaseException | None = error
    while current is not None:
        parts.append(repr(getattr(current, "details", None)))
        parts.append(repr(current.args))
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def _assert_no_password(*things: object) -> None:
    for thing in things:
        text = _exception_text(thing) if isinstance(thing, BaseException) else repr(thing)
        assert PASSWORD not in text and WRONG_PASSWORD not in text, f"password in {type(thing).__name__}"


def _agent(manager: MongoDBSessionManager) -> Agent:
    return Agent(
        model=EchoModel(),
        agent_id="assistant",
        session_manager=manager,
        conversation_manager=NullConversationManager(),
        callback_handler=None,
    )


def _fails_with_storage_error(call: Callable[[], object]) -> tuple[SessionStorageError, float]:
    """Run ``call``; it must raise our storage error chained to the driver's, without hanging."""
    started = time.monotonic()
    with pytest.raises(SessionStorageError) as raised:
        call()
    elapsed = time.monotonic() - started
    assert elapsed < HANG_GUARD_SECONDS, "a call against a stopped server hung"
    assert isinstance(raised.value.__cause__, PyMongoError)
    _assert_no_password(raised.value)
    # One line a person reads; pymongo's detail (timeouts, topology) stays in the chained cause.
    message = str(raised.value)
    assert "\n" not in message and "Topology Description" not in message and "session_id=<->" not in message
    return raised.value, elapsed


def _restore_elsewhere(workers: WorkerServer, uri: str, db: str, session_id: str, agent_id: str) -> dict[str, Any]:
    (result,) = workers.run(
        [
            {
                "job": "restore",
                "mongodb_uri": uri,
                "database_name": db,
                "session_id": session_id,
                "agent_ids": [agent_id],
            }
        ]
    )
    restored: dict[str, Any] = from_jsonable(result["agents"][agent_id])
    return restored


# ------------------------------------------------------------------------------------------ server stopped


def test_server_stopped_mid_conversation_fails_fast_then_the_same_manager_and_pool_continue(
    server: ServerHandle,
    uri: str,
    db: str,
    workers: WorkerServer,
    new_manager: Callable[..., MongoDBSessionManager],
) -> None:
    manager = new_manager("talk", uri, db, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS)
    agent = _agent(manager)
    agent("first")
    agent("second")
    manager.update_metadata({"topic": "before"})
    manager.add_feedback({"rating": "up", "comment": "before"})
    acknowledged = copy.deepcopy(agent.messages)
    client = manager.mongodb_repository.client

    server.stop()
    try:
        # Everything at once, from several threads, as a busy server would.
        calls: list[Callable[[], object]] = [
            lambda: agent("lost question"),
            lambda: manager.update_metadata({"topic": "lost"}),
            lambda: manager.get_metadata(),
            lambda: manager.add_feedback({"rating": "down", "comment": "lost"}),
            lambda: new_manager("talk", uri, db, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS),
        ]
        with ThreadPoolExecutor(len(calls)) as pool:
            failures = [error for error, _ in pool.map(_fails_with_storage_error, calls)]
        where = f"{server.host}:{server.port}"
        for failure in failures[1:]:  # the agent's own failure reaches us through Strands
            assert str(failure).startswith(f"session_id=<talk> | cannot reach MongoDB at {where} (waited 1.5 s): ")
    finally:
        server.start()

    # Nothing half-written, and the same manager works again on the same client.
    assert manager.get_metadata() == {"topic": "before"}
    assert [entry["comment"] for entry in manager.get_feedbacks()] == ["before"]
    manager.update_metadata({"topic": "after"})
    assert manager.get_metadata() == {"topic": "after"}
    assert manager.mongodb_repository.client is client
    # The pool is the process-wide one for these settings: it saw the outage and recovered.
    assert MongoDBConnectionPool.initialize(uri, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS) is client
    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["pools_cleared"] >= 1
    assert stats["connections_checked_out"] == 0
    _assert_no_password(stats, repr(MongoDBConnectionPool()), repr(manager), repr(manager.mongodb_repository))

    # A new process restores exactly what was acknowledged: not the question that failed.
    restored = _restore_elsewhere(workers, uri, db, "talk", "assistant")
    assert restored["messages"] == acknowledged
    assert [entry["message_id"] for entry in restored["stored"]] == [0, 1, 2, 3]

    # A new manager in this process (the recipe after any storage error) shares the client and goes on.
    again = new_manager("talk", uri, db, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS)
    assert again.mongodb_repository.client is client
    resumed = _agent(again)
    assert resumed.messages == acknowledged
    resumed("after the restart")
    assert [entry.message_id for entry in again.mongodb_repository.list_messages("talk", "assistant")] == list(range(6))


@pytest.mark.parametrize(
    "failure",
    [
        pytest.param({"closeConnection": True}, id="not-applied"),
        pytest.param({"writeConcernError": {"code": 89, "errmsg": "reply lost"}}, id="applied-but-reported-failed"),
    ],
)
@pytest.mark.usefixtures("failpoint_off")
def test_the_same_agent_goes_on_after_a_failed_append_and_stores_what_it_holds(
    uri: str,
    admin: MongoClient[dict[str, Any]],
    db: str,
    workers: WorkerServer,
    new_manager: Callable[..., MongoDBSessionManager],
    failure: dict[str, Any],
) -> None:
    # Without driver retries, the append fails either way: whether it was applied is unknown.
    manager = new_manager("talk", uri, db, appName="same-agent", retryWrites=False)
    agent = _agent(manager)
    agent("first")
    _fail_next(admin, "same-agent", failure)
    with pytest.raises(SessionStorageError):
        agent("the question whose append failed")

    agent("second")  # before: SessionConflictError for ever when the failed append had been applied

    # The agent kept the question in its history; the store holds exactly that history, once.
    stored = manager.mongodb_repository.list_messages("talk", "assistant")
    assert [entry.message_id for entry in stored] == [0, 1, 2, 3, 4]
    assert [entry.message for entry in stored] == agent.messages
    assert stored[2].message["content"] == [{"text": "the question whose append failed"}]
    assert _restore_elsewhere(workers, uri, db, "talk", "assistant")["messages"] == agent.messages


@pytest.mark.usefixtures("failpoint_off")
def test_a_frozen_server_fails_a_turn_within_the_timeout_and_the_same_agent_goes_on(
    server: ServerHandle, uri: str, db: str, workers: WorkerServer, new_manager: Callable[..., MongoDBSessionManager]
) -> None:
    """The hostile run: SIGSTOP during a turn; the append failed after ~20 s yet was applied, and the
    same agent's next turn raised SessionConflictError for ever."""
    manager = new_manager("frozen", uri, db, timeoutMS=2000, serverSelectionTimeoutMS=SELECTION_TIMEOUT_MS)
    agent = _agent(manager)
    agent("first")
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # the pooled connection stays open: the append is sent, never answered
    try:
        error, _ = _fails_with_storage_error(lambda: agent("asked while the server is frozen"))
    finally:
        os.kill(pid, signal.SIGCONT)
    assert f"MongoDB at {server.host}:{server.port} did not answer within 2 s" in str(error)

    agent("asked after it resumed")

    stored = manager.mongodb_repository.list_messages("frozen", "assistant")
    assert [entry.message_id for entry in stored] == list(range(len(agent.messages)))
    assert [entry.message for entry in stored] == agent.messages
    texts = [entry.message["content"][0]["text"] for entry in stored]
    assert texts.count("asked while the server is frozen") == 1
    assert _restore_elsewhere(workers, uri, db, "frozen", "assistant")["messages"] == agent.messages


# ------------------------------------------------------------------------------------------ crash


def test_acknowledged_messages_survive_a_crash_and_a_restore_in_a_new_process_has_them_all(
    server: ServerHandle,
    uri: str,
    db: str,
    workers: WorkerServer,
    new_client: Callable[..., MongoClient[dict[str, Any]]],
) -> None:
    repository = MongoDBSessionRepository(client=new_client(uri), database_name=db)
    repository.create_session(Session(session_id="crash", session_type=SessionType.AGENT))
    repository.create_agent(
        "crash",
        SessionAgent(agent_id="assistant", state={}, conversation_manager_state=NullConversationManager().get_state()),
    )
    acknowledged: list[SessionMessage] = []
    failure: list[BaseException] = []
    enough = threading.Event()

    def write() -> None:
        # One writer, so at most one append is in flight when the server dies.
        for message_id in range(10_000):
            role: Any = "user" if message_id % 2 == 0 else "assistant"
            message = SessionMessage(
                message={"role": role, "content": [{"text": f"m{message_id}"}]}, message_id=message_id
            )
            try:
                repository.create_message("crash", "assistant", message)
            except SessionStorageError as e:
                failure.append(e)
                return
            acknowledged.append(message)
            if message_id == 20:
                enough.set()

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert enough.wait(HANG_GUARD_SECONDS), "the writer never got going"
        server.kill()  # SIGKILL: no shutdown, no flush
        writer.join(HANG_GUARD_SECONDS)
        assert not writer.is_alive(), "the writer hung on a dead server"
    finally:
        server.start()
    assert len(failure) == 1
    assert isinstance(failure[0].__cause__, PyMongoError)
    _assert_no_password(failure[0])

    restored = _restore_elsewhere(workers, uri, db, "crash", "assistant")
    stored = restored["stored"]
    # Every acknowledged message, in order; at most the one in flight beyond them; no hole.
    assert [entry["message_id"] for entry in stored] == list(range(len(stored)))
    assert len(acknowledged) <= len(stored) <= len(acknowledged) + 1
    assert [entry["message"] for entry in stored[: len(acknowledged)]] == [m.message for m in acknowledged]
    assert restored["messages"] == [entry["message"] for entry in stored]


# ------------------------------------------------------------------------------------------ dropped connections


class _UpdateLog(monitoring.CommandListener):
    """The ``update`` commands a client sends: their txnNumber and whether the reply was a success."""

    def __init__(self) -> None:
        self.attempts: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "update":
            self.attempts.append({"txnNumber": event.command.get("txnNumber"), "outcome": None})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == "update":
            self.attempts[-1]["outcome"] = "reply"

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name == "update":
            self.attempts[-1]["outcome"] = "failed"


def _fail_next(admin: MongoClient[dict[str, Any]], app_name: str, data: dict[str, Any], times: int = 1) -> None:
    """Arm ``failCommand`` on the next ``times`` updates of the client named ``app_name`` only."""
    admin.admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": times},
        data={"failCommands": ["update"], "appName": app_name, **data},
    )


@pytest.fixture
def failpoint_off(admin: MongoClient[dict[str, Any]]) -> Iterator[None]:
    yield
    admin.admin.command("configureFailPoint", "failCommand", mode="off")


def _repository_with_agent(
    client: MongoClient[dict[str, Any]], db: str, listener: _UpdateLog
) -> MongoDBSessionRepository:
    repository = MongoDBSessionRepository(client=client, database_name=db)
    repository.create_session(Session(session_id="s", session_type=SessionType.AGENT))
    repository.create_agent("s", SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
    listener.attempts.clear()
    return repository


def _message(message_id: int) -> SessionMessage:
    return SessionMessage(message={"role": "user", "content": [{"text": f"m{message_id}"}]}, message_id=message_id)


def _stored(admin: MongoClient[dict[str, Any]], db: str) -> tuple[list[int], int]:
    document = admin[db]["sessions"].find_one({"_id": "s"})
    assert document is not None
    stored = document["agents"][encode_field_name("a")]
    return [entry["message_id"] for entry in stored["messages"]], stored["message_count"]


@pytest.mark.parametrize(
    ("failure", "times", "expect_stored", "expect_attempts", "expect_cause"),
    [
        pytest.param(
            {"closeConnection": True}, 1, True, ["failed", "reply"], None, id="connection-dropped-then-retried"
        ),
        pytest.param(
            # The write IS applied, then the reply says it failed with a retryable error; the
            # driver retries with the same txnNumber and the server answers from its record.
            {"writeConcernError": {"code": 89, "errmsg": "reply lost"}, "errorLabels": ["RetryableWriteError"]},
            1,
            True,
            ["reply", "reply"],
            None,
            id="applied-but-reply-lost-then-retried",
        ),
        pytest.param({"errorCode": 89}, 2, False, ["failed", "failed"], OperationFailure, id="retry-fails-too"),
    ],
)
@pytest.mark.usefixtures("failpoint_off")
def test_an_append_interrupted_by_the_network_is_retried_once_or_reported_never_applied_twice(
    uri: str,
    admin: MongoClient[dict[str, Any]],
    db: str,
    failure: dict[str, Any],
    times: int,
    expect_stored: bool,
    expect_attempts: list[str],
    expect_cause: type[Exception] | None,
    new_client: Callable[..., MongoClient[dict[str, Any]]],
) -> None:
    updates = _UpdateLog()
    client = new_client(uri, appName="retried", event_listeners=[updates])
    repository = _repository_with_agent(client, db, updates)
    _fail_next(admin, "retried", failure, times)

    if expect_cause is None:
        repository.create_message("s", "a", _message(0))
    else:
        error, _ = _fails_with_storage_error(lambda: repository.create_message("s", "a", _message(0)))
        assert isinstance(error.__cause__, expect_cause)

    assert [attempt["outcome"] for attempt in updates.attempts] == expect_attempts
    # A retry is the same retryable write (same txnNumber), which the server applies at most once.
    assert len({attempt["txnNumber"] for attempt in updates.attempts}) == 1
    assert updates.attempts[0]["txnNumber"] is not None
    assert _stored(admin, db) == (([0], 1) if expect_stored else ([], 0))
    # The guard is intact: the next append is the next id.
    next_id = 1 if expect_stored else 0
    repository.create_message("s", "a", _message(next_id))
    assert _stored(admin, db) == (list(range(next_id + 1)), next_id + 1)


@pytest.mark.usefixtures("failpoint_off")
def test_with_retryable_writes_off_a_dropped_connection_is_reported_and_nothing_is_written(
    uri: str, admin: MongoClient[dict[str, Any]], db: str, new_client: Callable[..., MongoClient[dict[str, Any]]]
) -> None:
    updates = _UpdateLog()
    client = new_client(uri, appName="no-retry", event_listeners=[updates], retryWrites=False)
    repository = _repository_with_agent(client, db, updates)
    _fail_next(admin, "no-retry", {"closeConnection": True})

    error, _ = _fails_with_storage_error(lambda: repository.create_message("s", "a", _message(0)))

    assert isinstance(error.__cause__, AutoReconnect)
    assert [attempt["outcome"] for attempt in updates.attempts] == ["failed"]
    assert _stored(admin, db) == ([], 0)
    repository.create_message("s", "a", _message(0))
    assert _stored(admin, db) == ([0], 1)


@pytest.mark.usefixtures("failpoint_off")
def test_a_write_reported_failed_but_applied_succeeds_when_retried_and_is_stored_once(
    uri: str, admin: MongoClient[dict[str, Any]], db: str, new_client: Callable[..., MongoClient[dict[str, Any]]]
) -> None:
    # Without driver retries, a lost reply is an error although the write happened. Retrying the
    # same append finds its own message stored: a success, and nothing is written twice.
    updates = _UpdateLog()
    client = new_client(uri, appName="app-retry", event_listeners=[updates], retryWrites=False)
    repository = _repository_with_agent(client, db, updates)
    _fail_next(admin, "app-retry", {"writeConcernError": {"code": 89, "errmsg": "reply lost"}})
    message = _message(0)

    error, _ = _fails_with_storage_error(lambda: repository.create_message("s", "a", message))
    assert isinstance(error.__cause__, WriteConcernError)
    assert _stored(admin, db) == ([0], 1)

    repository.create_message("s", "a", message)  # the application retries the same message
    assert _stored(admin, db) == ([0], 1)
    # A different message at that id is another writer's: still a conflict.
    with pytest.raises(SessionConflictError, match="cannot append message_id 0"):
        repository.create_message(
            "s", "a", _message(0).__class__(message={"role": "user", "content": []}, message_id=0)
        )
    assert _stored(admin, db) == ([0], 1)


# ------------------------------------------------------------------------------------------ credentials


def test_wrong_or_missing_credentials_are_storage_errors_that_never_show_the_password(
    server: ServerHandle, uri: str, db: str
) -> None:
    def open_with(connection_string: str) -> Callable[[], object]:
        # A fresh collection name, so that index creation (once per collection per process) is tried too.
        return lambda: MongoDBSessionManager(
            "s", connection_string=connection_string, database_name=db, collection_name=uuid.uuid4().hex
        )

    for connection_string, code, says in (
        (_uri(server, WRONG_PASSWORD), 18, "refused the credentials (authentication failed)"),
        (server.uri, 13, "refused the operation: the user is not authorized for it"),
    ):
        error, _ = _fails_with_storage_error(open_with(connection_string))
        assert isinstance(error.__cause__, OperationFailure)
        assert error.__cause__.code == code
        assert str(error).startswith(f"MongoDB at {server.host}:{server.port} {says}")


def test_reprs_and_statistics_of_everything_built_from_a_password_uri_hide_it(uri: str, db: str) -> None:
    pool_client = MongoDBConnectionPool.initialize(uri)
    with (
        MongoDBSessionManagerFactory(uri, database_name=db) as factory,
        MongoDBSessionManager("s", connection_string=uri, database_name=db) as manager,
    ):
        manager.update_metadata({"k": "v"})
        shown = [
            repr(factory),
            factory.get_connection_stats(),
            repr(factory.create_session_manager("s")),
            repr(manager),
            repr(manager.mongodb_repository),
            repr(MongoDBConnectionPool()),
            MongoDBConnectionPool.get_pool_stats(),
        ]
        assert factory.client is pool_client is manager.mongodb_repository.client
    _assert_no_password(*shown)
    assert f"{USER}:***@" in repr(factory)
    assert MongoDBConnectionPool.get_pool_stats()["uri"].startswith(f"mongodb://{USER}:***@")

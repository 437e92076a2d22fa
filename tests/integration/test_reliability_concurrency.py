"""Concurrency: racing processes, many threads, one pool.

* Two processes appending to the same agent of the same session: one wins, the other gets
  ``SessionConflictError`` and writes nothing; with the documented recipe (new manager, retry the
  turn) both finish, and the stored history has no duplicate ids and no holes.
* Different agents of one session written by different processes, with metadata and feedback, all
  persist and never conflict.
* Metadata and feedback from many threads on one session: nothing is lost.
* 32 threads serving 200 sessions through the global factory: no errors, and the pool never opens
  more than ``maxPoolSize`` connections (from the pool's own statistics).

Processes come from :class:`~tests.support.concurrency_worker.WorkerServer`, which forks each job
from one process that imported Strands once; a file barrier makes the writers start together.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from pymongo import MongoClient
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager
from strands.types.exceptions import EventLoopException
from strands.types.session import Session, SessionType

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionManagerFactory,
    SessionConflictError,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)
from mongodb_session_manager._documents import encode_field_name, session_to_document
from mongodb_session_manager.mongodb_connection_pool import shared_client_count
from tests.support.concurrency_worker import WorkerServer, conflict_in, prompt
from tests.support.scripted_model import EchoModel

# A safety net so that a broken test fails instead of hanging; nothing asserts how long anything takes.
HANG_GUARD_SECONDS = 120


@pytest.fixture(scope="module")
def workers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WorkerServer]:
    server = WorkerServer(tmp_path_factory.mktemp("concurrency-workers"))
    try:
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _no_leftover_clients() -> Iterator[None]:
    close_global_factory()
    before = shared_client_count()
    yield
    close_global_factory()
    assert shared_client_count() == before, "the test left a shared client open"


def _run_threads(count: int, target: Callable[[int], None]) -> list[BaseException]:
    """Run ``target(index)`` in ``count`` threads started together; return what they raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(count, timeout=HANG_GUARD_SECONDS)

    def run(index: int) -> None:
        try:
            start.wait()
            target(index)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(HANG_GUARD_SECONDS)
    assert not any(thread.is_alive() for thread in threads), "worker threads did not finish"
    return errors


def _stored_agent(client: MongoClient[dict[str, Any]], database: str, session_id: str, agent_id: str) -> Any:
    document = client[database]["sessions"].find_one({"_id": session_id})
    assert document is not None
    return document["agents"][encode_field_name(agent_id)]


def _texts(stored_agent: dict[str, Any]) -> list[tuple[str, str]]:
    return [(entry["message"]["role"], entry["message"]["content"][0]["text"]) for entry in stored_agent["messages"]]


def _assert_contiguous(stored_agent: dict[str, Any]) -> None:
    """Ids are exactly 0..n-1 in array order (no duplicates, no holes) and the counter agrees."""
    ids = [entry["message_id"] for entry in stored_agent["messages"]]
    assert ids == list(range(len(ids)))
    assert stored_agent["message_count"] == len(ids)


def _create_session(mongodb_uri: str, database: str, session_id: str) -> None:
    """Create the session before the workers start: first requests racing to create it are another test."""
    MongoDBSessionManager(session_id, connection_string=mongodb_uri, database_name=database).close()


def _seed(mongodb_uri: str, database: str, session_id: str, agent_id: str, turns: int) -> None:
    """Store ``turns`` turns of ``seed`` so the racing workers load a non-empty history."""
    with MongoDBSessionManager(session_id, connection_string=mongodb_uri, database_name=database) as manager:
        agent = Agent(
            model=EchoModel(),
            agent_id=agent_id,
            session_manager=manager,
            conversation_manager=NullConversationManager(),
            callback_handler=None,
        )
        for turn in range(turns):
            agent(prompt("seed", turn))


def _converse(mongodb_uri: str, database: str, barrier: Path, name: str, **job: Any) -> dict[str, Any]:
    return {
        "job": "converse",
        "mongodb_uri": mongodb_uri,
        "database_name": database,
        "session_id": "shared",
        "agent_id": "assistant",
        "barrier_dir": str(barrier),
        "name": name,
        **job,
    }


# ---------------------------------------------------------------------------------- same agent, two processes


def test_two_processes_appending_to_one_agent_one_wins_and_the_other_gets_a_conflict(
    workers: WorkerServer,
    mongo_client: MongoClient[dict[str, Any]],
    mongodb_uri: str,
    database_name: str,
    tmp_path: Path,
) -> None:
    _seed(mongodb_uri, database_name, "shared", "assistant", turns=1)
    # Both load the session (2 messages), meet at the barrier, then append message 2 at once.
    results = workers.run(
        [
            _converse(mongodb_uri, database_name, tmp_path, name, parties=2, turns=1, retry_on_conflict=False)
            for name in ("alpha", "beta")
        ]
    )

    assert len({result["pid"] for result in results}) == 2
    assert [result["loaded_messages"] for result in results] == [2, 2]
    winners = [result for result in results if result["completed"]]
    losers = [result for result in results if result["conflicts"]]
    assert len(winners) == 1 and len(losers) == 1, results
    winner, loser = winners[0], losers[0]
    assert loser["completed"] == []
    assert "cannot append message_id 2" in loser["conflicts"][0]["error"]
    stored = _stored_agent(mongo_client, database_name, "shared", "assistant")
    _assert_contiguous(stored)
    turn = prompt(winner["name"], 0)
    # The loser wrote nothing: exactly the seed turn, then the winner's turn.
    assert _texts(stored) == [
        ("user", prompt("seed", 0)),
        ("assistant", f"echo: {prompt('seed', 0)}"),
        ("user", turn),
        ("assistant", f"echo: {turn}"),
    ]


def test_reload_and_retry_recipe_completes_every_turn_without_duplicates_or_holes(
    workers: WorkerServer,
    mongo_client: MongoClient[dict[str, Any]],
    mongodb_uri: str,
    database_name: str,
    tmp_path: Path,
) -> None:
    turns = 6
    names = ("alpha", "beta")
    _create_session(mongodb_uri, database_name, "shared")
    results = workers.run(
        [
            _converse(mongodb_uri, database_name, tmp_path, name, parties=2, turns=turns, retry_on_conflict=True)
            for name in names
        ]
    )

    for result in results:
        assert result["completed"] == [prompt(result["name"], turn) for turn in range(turns)]
    # Both loaded the same (new) session and appended message 0 together: at least that one conflicted.
    conflicts = sum(len(result["conflicts"]) for result in results)
    assert conflicts >= 1
    stored = _stored_agent(mongo_client, database_name, "shared", "assistant")
    _assert_contiguous(stored)
    texts = _texts(stored)
    # Each completed turn is stored exactly once as an adjacent (question, answer) pair: the guarded
    # append lets the answer in only right after its question.
    for name in names:
        for turn in range(turns):
            pair = [("user", prompt(name, turn)), ("assistant", f"echo: {prompt(name, turn)}")]
            positions = [i for i in range(len(texts) - 1) if texts[i : i + 2] == pair]
            assert len(positions) == 1, (name, turn, texts)
    # Anything else is a question stored before its answer lost the race; the retry asked it again.
    paired = 4 * turns
    assert len(texts) - paired <= conflicts
    for role, text in texts:
        assert role == "user" or text.startswith("echo: ")


class _AnswerAfter(EchoModel):
    """An EchoModel that runs ``before_answer`` when called: between the question and the answer."""

    def __init__(self, before_answer: Callable[[], None]) -> None:
        super().__init__()
        self.before_answer = before_answer

    def _next_item(self, messages: Any) -> Any:
        self.before_answer()
        return super()._next_item(messages)


def _agent(manager: MongoDBSessionManager, model: EchoModel) -> Agent:
    return Agent(
        model=model,
        agent_id="assistant",
        session_manager=manager,
        conversation_manager=NullConversationManager(),
        callback_handler=None,
    )


def test_a_conflict_on_the_answer_reaches_the_caller_through_strands_event_loop_exception(
    mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    # Strands wraps what its event loop raises after the model call in EventLoopException: a
    # conflict on the model's answer reaches the application there, chained from ours (which is
    # why the recipe in docs/guarantees.md looks along __cause__).
    def another_process_takes_a_turn() -> None:
        other = MongoDBSessionManager("shared", client=mongo_client, database_name=database_name)
        _agent(other, EchoModel())("meanwhile")

    mine = _agent(
        MongoDBSessionManager("shared", client=mongo_client, database_name=database_name),
        _AnswerAfter(another_process_takes_a_turn),
    )

    with pytest.raises(EventLoopException) as raised:
        mine("question")

    conflict = raised.value.__cause__
    assert isinstance(conflict, SessionConflictError)
    assert conflict_in(raised.value) is conflict
    assert "cannot append message_id 1: the agent has 3 stored messages" in str(conflict)
    stored = _stored_agent(mongo_client, database_name, "shared", "assistant")
    _assert_contiguous(stored)
    # My question got in first, the other turn next; my answer was refused.
    assert _texts(stored) == [("user", "question"), ("user", "meanwhile"), ("assistant", "echo: meanwhile")]

    # The recipe: a new manager reloads what is stored, and the turn is asked again.
    retry = _agent(MongoDBSessionManager("shared", client=mongo_client, database_name=database_name), EchoModel())
    assert len(retry.messages) == 3
    retry("question")
    assert _texts(_stored_agent(mongo_client, database_name, "shared", "assistant"))[3:] == [
        ("user", "question"),
        ("assistant", "echo: question"),
    ]


# ---------------------------------------------------------------------------------- different agents


def test_different_agents_of_one_session_written_by_different_processes_all_persist(
    workers: WorkerServer,
    mongo_client: MongoClient[dict[str, Any]],
    mongodb_uri: str,
    database_name: str,
    tmp_path: Path,
) -> None:
    turns = 4
    agents = {"plain": "support", "dotted": "support.v2", "dollar": "$billing"}
    _create_session(mongodb_uri, database_name, "shared")
    results = workers.run(
        [
            _converse(
                mongodb_uri,
                database_name,
                tmp_path,
                name,
                agent_id=agent_id,
                parties=len(agents),
                turns=turns,
                retry_on_conflict=False,
                metadata=True,
            )
            for name, agent_id in agents.items()
        ]
    )

    for result in results:
        assert result["conflicts"] == []
        assert result["completed"] == [prompt(result["name"], turn) for turn in range(turns)]
    document = mongo_client[database_name]["sessions"].find_one({"_id": "shared"})
    assert document is not None
    assert sorted(document["agents"]) == sorted(encode_field_name(agent_id) for agent_id in agents.values())
    for name, agent_id in agents.items():
        stored = document["agents"][encode_field_name(agent_id)]
        assert stored["agent_id"] == agent_id
        _assert_contiguous(stored)
        expected: list[tuple[str, str]] = []
        for turn in range(turns):
            expected += [("user", prompt(name, turn)), ("assistant", f"echo: {prompt(name, turn)}")]
        assert _texts(stored) == expected
    assert document["metadata"] == {f"{name}-{turn}": turn for name in agents for turn in range(turns)}
    comments = sorted(entry["comment"] for entry in document["feedbacks"])
    assert comments == sorted(prompt(name, turn) for name in agents for turn in range(turns))


# ---------------------------------------------------------------------------------- threads


def test_metadata_and_feedback_from_many_threads_on_one_session_lose_nothing(
    mongodb_uri: str, database_name: str
) -> None:
    threads, rounds = 16, 2
    with MongoDBSessionManagerFactory(mongodb_uri, database_name=database_name) as factory:
        factory.create_session_manager("busy")
        shared = factory.create_session_manager("busy")

        def work(index: int) -> None:
            # Half the threads share one manager, the others build one per operation (per request).
            for round_ in range(rounds):
                manager = shared if index % 2 else factory.create_session_manager("busy")
                manager.update_metadata({f"t{index}-r{round_}": round_, f"t{index}-last": round_, "last-writer": index})
                if round_ % 2:
                    manager.delete_metadata([f"t{index}-r{round_ - 1}"])
                manager.add_feedback({"rating": "up" if round_ % 2 else "down", "comment": f"t{index}-r{round_}"})

        errors = _run_threads(threads, work)

        assert errors == []
        expected: dict[str, Any] = {}
        for index in range(threads):
            expected[f"t{index}-last"] = rounds - 1
            expected.update({f"t{index}-r{round_}": round_ for round_ in range(rounds) if round_ % 2})
        stored = shared.get_metadata()
        assert stored.pop("last-writer") in range(threads)  # one key written by all: the last write wins
        assert stored == expected
        feedbacks = shared.get_feedbacks()
        assert sorted(entry["comment"] for entry in feedbacks) == sorted(
            f"t{index}-r{round_}" for index in range(threads) for round_ in range(rounds)
        )
        for entry in feedbacks:
            assert entry["rating"] == ("up" if int(entry["comment"].rsplit("-r", 1)[1]) % 2 else "down")


def test_32_threads_serving_200_sessions_through_the_global_factory_stay_within_the_pool(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    threads, sessions, requests_per_thread, max_pool_size = 32, 200, 25, 8
    session_ids = [f"session-{number:03d}" for number in range(sessions)]
    # The sessions exist (one bulk insert of the very documents the repository writes), so each
    # request below is a returning user: a new manager that restores its session, then reads its
    # metadata; a thread's first request also writes.
    mongo_client[database_name]["sessions"].insert_many(
        [
            session_to_document(Session(session_id=session_id, session_type=SessionType.AGENT))
            for session_id in session_ids
        ]
    )
    initialize_global_factory(mongodb_uri, database_name=database_name, maxPoolSize=max_pool_size)

    def serve(index: int) -> None:
        # 32 x 25 requests over the 200 sessions: each session is served by four different threads.
        for request in range(requests_per_thread):
            session_id = session_ids[(index * requests_per_thread + request) % sessions]
            manager = get_global_factory().create_session_manager(session_id)
            if request == 0:
                manager.update_metadata({f"written-by-{index}": True})
            manager.get_metadata()

    assert _run_threads(threads, serve) == []

    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats == get_global_factory().get_connection_stats() | {"initialized": True}
    assert stats["max_pool_size"] == max_pool_size
    assert 1 <= stats["peak_connections_open"] <= max_pool_size
    assert stats["connections_open"] <= max_pool_size
    assert stats["checkout_failures"] == 0
    assert stats["connections_checked_out"] == 0
    assert stats["commands_failed"] == 0
    assert stats["commands_succeeded"] == stats["commands_started"] >= threads * requests_per_thread * 2
    documents = {doc["_id"]: doc.get("metadata", {}) for doc in mongo_client[database_name]["sessions"].find()}
    expected: dict[str, dict[str, bool]] = {session_id: {} for session_id in session_ids}
    for index in range(threads):
        expected[session_ids[index * requests_per_thread % sessions]][f"written-by-{index}"] = True
    assert documents == expected


def test_concurrent_first_requests_for_one_new_session_all_succeed(
    mongodb_uri: str, database_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    racers = 8
    initialize_global_factory(mongodb_uri, database_name=database_name)
    repository = get_global_factory().repository
    read_snapshot = repository.read_session_snapshot
    everyone_has_looked = threading.Barrier(racers, timeout=HANG_GUARD_SECONDS)
    waited = threading.local()

    def look_then_wait(session_id: str) -> Any:
        # Make the race certain: every request has found no session before any creates it.
        snapshot = read_snapshot(session_id)
        if not getattr(waited, "done", False):
            waited.done = True
            everyone_has_looked.wait()
        return snapshot

    monkeypatch.setattr(repository, "read_session_snapshot", look_then_wait)
    managers: list[MongoDBSessionManager] = []

    errors = _run_threads(racers, lambda index: managers.append(get_global_factory().create_session_manager("new")))

    assert errors == []
    assert len(managers) == racers
    assert repository.read_session("new") is not None


def test_peak_checked_out_never_exceeds_max_pool_size_whatever_the_event_order(mongodb_uri: str) -> None:
    client = MongoDBConnectionPool.initialize(mongodb_uri, maxPoolSize=1)
    monitor = MongoDBConnectionPool._lease._managed.monitor  # type: ignore[union-attr]
    count_check_in = monitor.connection_checked_in
    second_done = threading.Event()

    def late_check_in(event: Any) -> None:
        # What a busy machine does: the first thread has returned its connection to the pool but
        # is descheduled before its checked-in event is counted; a second thread checks it out.
        if threading.current_thread().name == "first":
            second_done.wait(HANG_GUARD_SECONDS)
        count_check_in(event)

    monitor.connection_checked_in = late_check_in  # type: ignore[method-assign]
    first = threading.Thread(target=lambda: client.admin.command("ping"), name="first")
    first.start()
    deadline = time.monotonic() + HANG_GUARD_SECONDS
    while MongoDBConnectionPool.get_pool_stats()["checkouts"] == 0:
        assert time.monotonic() < deadline, "the first thread never checked a connection out"
        time.sleep(0.001)
    client.admin.command("ping")  # the second thread: this one
    second_done.set()
    first.join(HANG_GUARD_SECONDS)

    stats = MongoDBConnectionPool.get_pool_stats()
    assert stats["checkouts"] == 2
    assert stats["peak_connections_checked_out"] <= stats["max_pool_size"] == 1

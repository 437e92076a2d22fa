"""Storage outside the session document, against a real server: moved messages and offloaded binaries.

A small ``overflow_threshold_bytes`` makes messages move after a few dozen appends, so every
property (reads across both places, redaction, deletion, expiry, races) is checked on histories
that cross the boundary many times. The issue's full-size proofs are in ``test_overflow_proof.py``.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from typing import Any

import bson
import pytest
from pymongo import MongoClient, monitoring
from pymongo.errors import PyMongoError
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBSessionManager,
    MongoDBSessionManagerFactory,
    MongoDBSessionRepository,
    SessionNotFoundError,
    SessionStorageError,
    SessionValidationError,
)
from mongodb_session_manager._documents import encode_field_name
from mongodb_session_manager._overflow import max_buckets
from mongodb_session_manager.errors import SessionConflictError

THRESHOLD = 16 * 1024
OFFLOAD = 2048


class Replies(monitoring.CommandListener):
    """Names of the commands sent and the encoded size of every reply."""

    def __init__(self) -> None:
        self.names: list[str] = []
        self.bytes = 0

    def reset(self) -> None:
        self.names, self.bytes = [], 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        self.names.append(event.command_name)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        self.bytes += len(bson.encode(event.reply))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass


@pytest.fixture
def replies() -> Replies:
    return Replies()


@pytest.fixture
def client(mongodb_uri: str, replies: Replies) -> Iterator[MongoClient[dict[str, Any]]]:
    with MongoClient(mongodb_uri, event_listeners=[replies]) as own:
        yield own


@pytest.fixture
def repo(client: MongoClient[dict[str, Any]], database_name: str) -> MongoDBSessionRepository:
    return _repository(client, database_name)


def _repository(client: MongoClient[dict[str, Any]], database_name: str, **options: Any) -> MongoDBSessionRepository:
    options = {"overflow_threshold_bytes": THRESHOLD, "binary_offload_bytes": OFFLOAD, **options}
    return MongoDBSessionRepository(client=client, database_name=database_name, **options)


def _message(agent: str, index: int, size: int = 300) -> SessionMessage:
    role = "user" if index % 2 == 0 else "assistant"
    text = f"{agent} says {index}: " + "abcdefghij"[index % 10] * size
    return SessionMessage(message={"role": role, "content": [{"text": text}]}, message_id=index)


def _content(messages: list[SessionMessage]) -> list[tuple[int, Any, Any]]:
    """What a message is, without its timestamps."""
    return [(m.message_id, m.message, m.redact_message) for m in messages]


def _image_message(index: int, data: bytes) -> SessionMessage:
    content: list[Any] = [{"text": f"picture {index}"}, {"image": {"format": "png", "source": {"bytes": data}}}]
    return SessionMessage(message={"role": "user", "content": content}, message_id=index)


def _session(repo: MongoDBSessionRepository, session_id: str, *agents: str) -> None:
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    for agent in agents:
        repo.create_agent(session_id, SessionAgent(agent_id=agent, state={}, conversation_manager_state={}))


def _conversation(repo: MongoDBSessionRepository, session_id: str, agent: str, count: int) -> list[SessionMessage]:
    messages = [_message(agent, i) for i in range(count)]
    for message in messages:
        repo.create_message(session_id, agent, message)
    return messages


def _stored(repo: MongoDBSessionRepository, session_id: str) -> dict[str, Any]:
    document = repo.collection.find_one({"_id": session_id})
    assert document is not None
    return document


def _overflow_documents(repo: MongoDBSessionRepository, session_id: str, kind: str | None = None) -> int:
    query: dict[str, Any] = {"session_id": session_id}
    if kind is not None:
        query["kind"] = kind
    return repo.overflow.count_documents(query)


# ------------------------------------------------------------------------------------------ short sessions


def test_a_short_session_never_touches_the_overflow_collection(
    repo: MongoDBSessionRepository, replies: Replies
) -> None:
    _session(repo, "short", "a")
    replies.reset()
    _conversation(repo, "short", "a", 10)

    assert replies.names == ["update"] * 10  # one command per append, as before
    document = _stored(repo, "short")
    assert "companions" not in document and "overflow_count" not in document["agents"]["a"]
    assert repo.overflow.count_documents({}) == 0


# ------------------------------------------------------------------------------------------ moved messages


@pytest.fixture
def long_session(repo: MongoDBSessionRepository) -> list[SessionMessage]:
    _session(repo, "long", "a")
    return _conversation(repo, "long", "a", 240)


def test_the_document_stays_under_the_threshold_as_old_messages_move_out(
    repo: MongoDBSessionRepository, long_session: list[SessionMessage]
) -> None:
    document = _stored(repo, "long")
    agent = document["agents"]["a"]
    assert len(bson.encode(document)) <= THRESHOLD
    assert agent["message_count"] == 240
    moved = agent["overflow_count"]
    assert 150 < moved < 240
    assert [entry["message_id"] for entry in agent["messages"]] == list(range(moved, 240))
    # The descriptors cover exactly the moved messages, in order, each pointing at its bucket.
    descriptors = agent["overflow"]
    assert [d["first"] for d in descriptors] == sorted(d["first"] for d in descriptors)
    assert sum(d["count"] for d in descriptors) == moved
    buckets = {b["_id"]: b for b in repo.overflow.find({"kind": "messages"})}
    assert set(buckets) == {d["id"] for d in descriptors}  # no stray bucket
    for d in descriptors:
        assert [e["message_id"] for e in buckets[d["id"]]["messages"]] == list(
            range(d["first"], d["first"] + d["count"])
        )


def test_a_large_message_gets_the_room_it_needs(repo: MongoDBSessionRepository) -> None:
    _session(repo, "room", "a")
    messages = _conversation(repo, "room", "a", 26)  # ~9 KB: over half the threshold
    large = _message("a", 26, size=9000)  # fits under the threshold only if enough moves out
    repo.create_message("room", "a", large)

    assert len(bson.encode(_stored(repo, "room"))) <= THRESHOLD
    assert repo.list_messages("room", "a") == [*messages, large]


def test_every_read_across_the_boundary_returns_the_stored_messages(
    repo: MongoDBSessionRepository, long_session: list[SessionMessage]
) -> None:
    moved = _stored(repo, "long")["agents"]["a"]["overflow_count"]
    assert repo.list_messages("long", "a") == long_session
    windows = [(0, None), (0, 1), (0, 0), (3, 7), (moved - 1, 2), (moved - 5, None), (moved, 3), (moved + 1, None)]
    windows += [(100, 40), (239, 1), (239, 5), (240, 3), (500, None), (17, 200)]
    for offset, limit in windows:
        expected = long_session[offset : None if limit is None else offset + limit]
        assert repo.list_messages("long", "a", offset=offset, limit=limit) == expected, (offset, limit)
    for message in long_session:
        assert repo.read_message("long", "a", message.message_id) == message
    assert repo.read_message("long", "a", 240) is None
    assert repo.read_message("long", "nobody", 3) is None
    with pytest.raises(SessionNotFoundError):
        repo.list_messages("long", "nobody")


def test_a_read_of_moved_messages_transfers_about_what_it_returns(
    repo: MongoDBSessionRepository, long_session: list[SessionMessage], replies: Replies
) -> None:
    replies.reset()
    window = repo.list_messages("long", "a", offset=20, limit=5)

    returned = sum(len(bson.encode({"m": m.to_dict()})) for m in window)
    history = sum(len(bson.encode({"m": m.to_dict()})) for m in long_session)
    assert replies.names == ["aggregate", "aggregate"]  # the session (descriptors), then the buckets' slices
    assert replies.bytes < returned + 2048
    assert replies.bytes < history / 20


def test_redacting_moved_and_resident_messages(
    repo: MongoDBSessionRepository, long_session: list[SessionMessage]
) -> None:
    before = _stored(repo, "long")["updated_date"]
    time.sleep(0.01)
    for message_id in (5, 239):  # one moved, one resident
        redacted = long_session[message_id]
        redacted.message = {"role": redacted.message["role"], "content": [{"text": "[redacted]"}]}
        redacted.redact_message = redacted.message
        repo.update_message("long", "a", redacted)

    assert repo.list_messages("long", "a") == long_session
    assert repo.read_message("long", "a", 5) == long_session[5]
    assert _stored(repo, "long")["updated_date"] > before
    with pytest.raises(SessionNotFoundError):
        repo.update_message("long", "a", _message("a", 240))


def test_fields_beside_moved_messages_are_kept_and_settable(repo: MongoDBSessionRepository) -> None:
    _session(repo, "metrics", "a")
    _conversation(repo, "metrics", "a", 3)
    repo.set_message_fields("metrics", "a", 1, {"event_loop_metrics": {"tokens": 1}})
    _conversation_from(repo, "metrics", "a", 3, 200)
    assert _stored(repo, "metrics")["agents"]["a"]["overflow_count"] > 1

    repo.set_message_fields("metrics", "a", 2, {"event_loop_metrics": {"tokens": 2}})  # already moved

    assert repo.get_message_metrics("metrics", "a") == [
        {"message_id": 1, "event_loop_metrics": {"tokens": 1}},
        {"message_id": 2, "event_loop_metrics": {"tokens": 2}},
    ]
    read = repo.read_message("metrics", "a", 2)
    assert read is not None and _content([read]) == _content([_message("a", 2)])  # metrics never reach Strands


def _conversation_from(repo: MongoDBSessionRepository, session_id: str, agent: str, start: int, stop: int) -> None:
    for index in range(start, stop):
        repo.create_message(session_id, agent, _message(agent, index))


def test_the_largest_agent_gives_way_and_small_ones_keep_their_messages(repo: MongoDBSessionRepository) -> None:
    _session(repo, "two", "talker", "quiet")
    _conversation(repo, "two", "quiet", 4)
    _conversation(repo, "two", "talker", 200)
    agents = _stored(repo, "two")["agents"]
    assert agents["talker"]["overflow_count"] > 0
    assert "overflow_count" not in agents["quiet"]
    assert _content(repo.list_messages("two", "quiet")) == _content([_message("quiet", i) for i in range(4)])


def test_a_large_agent_state_makes_room_by_moving_messages(repo: MongoDBSessionRepository) -> None:
    _session(repo, "state", "a")
    messages = _conversation(repo, "state", "a", 40)  # ~13 KB of messages, under the threshold
    state = {"notes": "n" * 15_000_000}  # with the messages, past 16 MB
    repo.update_agent("state", SessionAgent(agent_id="a", state=state, conversation_manager_state={}))

    stored = repo.read_agent("state", "a")
    assert stored is not None and stored.state == state
    assert repo.list_messages("state", "a") == messages


# ------------------------------------------------------------------------------------------ binaries


def test_large_binaries_are_stored_outside_and_come_back_byte_equal(repo: MongoDBSessionRepository) -> None:
    _session(repo, "pics", "a")
    small, large, huge = os.urandom(OFFLOAD), os.urandom(OFFLOAD + 1), os.urandom(9 * 1024 * 1024)
    messages = [_image_message(0, small), _image_message(1, large), _image_message(2, huge)]
    for message in messages:
        repo.create_message("pics", "a", message)

    assert repo.list_messages("pics", "a") == messages
    assert repo.read_message("pics", "a", 2) == messages[2]
    stored = _stored(repo, "pics")
    assert len(bson.encode(stored)) < 3 * OFFLOAD + 4096
    inline = stored["agents"]["a"]["messages"][0]["message"]["content"][1]["image"]["source"]["bytes"]
    assert inline == small  # at the threshold: inline
    assert _overflow_documents(repo, "pics", "blob") == 1 + 3  # one chunk, then 9 MB in 4 MB chunks


def test_a_binary_in_the_reserved_subtype_is_refused_before_anything_is_written(
    repo: MongoDBSessionRepository,
) -> None:
    _session(repo, "forged", "a")
    forged = SessionMessage(
        message={
            "role": "user",
            "content": [{"image": {"format": "png", "source": {"bytes": bson.Binary(b"x", 0x80)}}}],
        },
        message_id=0,
    )
    with pytest.raises(SessionValidationError):
        repo.create_message("forged", "a", forged)
    assert repo.list_messages("forged", "a") == []


def test_an_append_that_loses_leaves_no_binary_behind(repo: MongoDBSessionRepository) -> None:
    _session(repo, "race", "a")
    repo.create_message("race", "a", _message("a", 0))
    with pytest.raises(SessionConflictError):
        repo.create_message("race", "a", _image_message(0, os.urandom(OFFLOAD * 4)))
    with pytest.raises(SessionNotFoundError):
        repo.create_message("race", "nobody", _image_message(0, os.urandom(OFFLOAD * 4)))
    assert _overflow_documents(repo, "race", "blob") == 0


def test_redaction_deletes_the_replaced_binary(repo: MongoDBSessionRepository) -> None:
    _session(repo, "redact", "a")
    first, second = os.urandom(OFFLOAD * 3), os.urandom(OFFLOAD * 3)
    repo.create_message("redact", "a", _image_message(0, first))
    repo.create_message("redact", "a", _image_message(1, second))
    _conversation_from(repo, "redact", "a", 2, 80)  # message 0 and 1 move out
    assert _stored(repo, "redact")["agents"]["a"]["overflow_count"] > 2

    redacted = SessionMessage(message={"role": "user", "content": [{"text": "[image removed]"}]}, message_id=0)
    repo.update_message("redact", "a", redacted)

    assert _overflow_documents(repo, "redact", "blob") == 1
    assert all(first not in bytes(doc["data"]) for doc in repo.overflow.find({"kind": "blob"}))
    assert _content(repo.list_messages("redact", "a", limit=2)) == _content([redacted, _image_message(1, second)])
    # Replacing one image with another stores the new one and deletes the old.
    replaced = _image_message(1, os.urandom(OFFLOAD * 2))
    repo.update_message("redact", "a", replaced)
    assert _content(repo.list_messages("redact", "a", offset=1, limit=1)) == _content([replaced])
    assert _overflow_documents(repo, "redact", "blob") == 1


def test_a_missing_or_altered_chunk_is_an_error_not_wrong_bytes(repo: MongoDBSessionRepository) -> None:
    _session(repo, "damaged", "a")
    repo.create_message("damaged", "a", _image_message(0, os.urandom(OFFLOAD * 2)))
    chunk = repo.overflow.find_one({"kind": "blob"})
    assert chunk is not None

    repo.overflow.update_one({"_id": chunk["_id"]}, {"$set": {"data": b"tampered"}})
    with pytest.raises(SessionStorageError, match="corrupt"):
        repo.read_message("damaged", "a", 0)
    repo.overflow.delete_one({"_id": chunk["_id"]})
    with pytest.raises(SessionStorageError, match="missing"):
        repo.list_messages("damaged", "a")


# ------------------------------------------------------------------------------------------ deletion


def test_delete_session_removes_its_overflow_documents_and_no_others(repo: MongoDBSessionRepository) -> None:
    for session_id in ("gone", "kept"):
        _session(repo, session_id, "a")
        repo.create_message(session_id, "a", _image_message(0, os.urandom(OFFLOAD * 2)))
        _conversation_from(repo, session_id, "a", 1, 80)
        assert _overflow_documents(repo, session_id, "messages") > 0
        assert _overflow_documents(repo, session_id, "blob") == 1
    kept = repo.overflow.count_documents({"session_id": "kept"})

    repo.delete_session("gone")

    assert _overflow_documents(repo, "gone") == 0
    assert repo.overflow.count_documents({"session_id": "kept"}) == kept
    assert len(repo.list_messages("kept", "a")) == 80
    with pytest.raises(SessionNotFoundError):
        repo.delete_session("gone")


def test_deleting_a_short_session_is_still_one_command(repo: MongoDBSessionRepository, replies: Replies) -> None:
    _session(repo, "brief", "a")
    _conversation(repo, "brief", "a", 2)
    replies.reset()
    repo.delete_session("brief")
    assert replies.names == ["findAndModify"]


def test_a_long_history_keeps_few_descriptors_and_the_document_under_the_threshold(
    repo: MongoDBSessionRepository,
) -> None:
    # Each move of ~8 KB makes a bucket; without merging, their descriptors alone would outgrow a
    # 16 KiB document after ~1,000 such messages.
    _session(repo, "endless", "a")
    messages = [_message("a", i, size=1500) for i in range(700)]
    for message in messages:
        repo.create_message("endless", "a", message)

    document = _stored(repo, "endless")
    assert len(bson.encode(document)) <= THRESHOLD
    assert len(document["agents"]["a"]["overflow"]) <= max_buckets(THRESHOLD) + 2
    _assert_no_stray_buckets(repo, "endless")
    assert repo.list_messages("endless", "a") == messages
    assert repo.list_messages("endless", "a", offset=333, limit=3) == messages[333:336]


# ------------------------------------------------------------------------------------------ races


class _RacingRepository(MongoDBSessionRepository):
    """Runs ``interfere`` once, between a move's read of the messages and its commit (right after it
    records the unfinished write, before writing the buckets)."""

    interfere: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        begin = self._overflow.begin

        def begin_then_interfere(*args: Any, **kwargs: Any) -> Any:
            op = begin(*args, **kwargs)
            interfere, self.interfere = self.interfere, None
            if interfere is not None:
                interfere()
            return op

        self._overflow.begin = begin_then_interfere  # type: ignore[method-assign]


def _racing(client: MongoClient[dict[str, Any]], database_name: str) -> _RacingRepository:
    return _RacingRepository(
        client=client, database_name=database_name, overflow_threshold_bytes=THRESHOLD, binary_offload_bytes=OFFLOAD
    )


def test_an_edit_during_a_move_is_not_lost(
    client: MongoClient[dict[str, Any]], database_name: str, repo: MongoDBSessionRepository
) -> None:
    _session(repo, "edit", "a")
    messages = _conversation(repo, "edit", "a", 45)  # just under the threshold
    racing = _racing(client, database_name)
    edited = SessionMessage(message={"role": "user", "content": [{"text": "edited mid-move"}]}, message_id=0)
    racing.interfere = lambda: repo.update_message("edit", "a", edited)  # another writer edits message 0

    next_messages = [_message("a", i) for i in range(45, 60)]
    for message in next_messages:
        racing.create_message("edit", "a", message)

    assert _stored(repo, "edit")["agents"]["a"]["overflow_count"] > 0
    assert _content(repo.list_messages("edit", "a")) == _content([edited, *messages[1:], *next_messages])
    _assert_no_stray_buckets(repo, "edit")


def test_two_moves_racing_move_each_message_once(
    client: MongoClient[dict[str, Any]], database_name: str, repo: MongoDBSessionRepository
) -> None:
    _session(repo, "movers", "a")
    messages = _conversation(repo, "movers", "a", 45)
    racing = _racing(client, database_name)
    racing.interfere = lambda: repo._overflow.move_old_messages("movers")  # another process moves first

    next_messages = [_message("a", i) for i in range(45, 90)]
    for message in next_messages:
        racing.create_message("movers", "a", message)

    assert repo.list_messages("movers", "a") == messages + next_messages
    _assert_no_stray_buckets(repo, "movers")


class _RacingMerge(MongoDBSessionRepository):
    """Runs ``interfere`` once, between a merge's read of the buckets and its commit (when it asks the
    store for the new buckets' expiry)."""

    interfere: Any = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        expiry = self._store.companions_expiry

        def interfere_then_expiry(ttl: int | None = None) -> Any:
            interfere, self.interfere = self.interfere, None
            if interfere is not None:
                interfere()
            return expiry(ttl)

        self._store.companions_expiry = interfere_then_expiry  # type: ignore[method-assign]


def test_a_redaction_during_a_merge_of_buckets_is_not_lost(
    client: MongoClient[dict[str, Any]], database_name: str, repo: MongoDBSessionRepository
) -> None:
    _session(repo, "merge", "a")
    messages = _conversation(repo, "merge", "a", 240)
    racing = _RacingMerge(client=client, database_name=database_name, overflow_threshold_bytes=THRESHOLD)
    descriptors_before = _stored(repo, "merge")["agents"]["a"]["overflow"]
    assert len(descriptors_before) > 1
    redacted = SessionMessage(message={"role": "user", "content": [{"text": "redacted mid-merge"}]}, message_id=2)
    racing.interfere = lambda: repo.update_message("merge", "a", redacted)

    racing._overflow.merge_buckets("merge", "a")  # loses to the redaction: nothing changes
    assert [d["id"] for d in _stored(repo, "merge")["agents"]["a"]["overflow"]] == [d["id"] for d in descriptors_before]
    racing._overflow.merge_buckets("merge", "a")  # merges, keeping the redaction

    assert len(_stored(repo, "merge")["agents"]["a"]["overflow"]) < len(descriptors_before)
    assert _content(repo.list_messages("merge", "a")) == _content([*messages[:2], redacted, *messages[3:]])
    _assert_no_stray_buckets(repo, "merge")


def _assert_no_stray_buckets(repo: MongoDBSessionRepository, session_id: str) -> None:
    """Buckets of a lost race are deleted: every bucket stored is one the session refers to."""
    agents = _stored(repo, session_id)["agents"]
    referenced = {d["id"] for agent in agents.values() for d in agent.get("overflow", [])}
    stored = {b["_id"] for b in repo.overflow.find({"session_id": session_id, "kind": "messages"}, {"_id": 1})}
    assert stored == referenced


def test_concurrent_writers_on_one_session_lose_and_duplicate_nothing(
    mongodb_uri: str, database_name: str, repo: MongoDBSessionRepository
) -> None:
    agents = ["w0", "w1", "w2"]
    _session(repo, "busy", *agents)
    count = 80
    errors: list[BaseException] = []
    redactions: dict[int, SessionMessage] = {}

    def writer(agent: str) -> None:
        with MongoClient(mongodb_uri) as own:  # its own connections, as another process would have
            writer_repo = _repository(own, database_name)
            try:
                for index in range(count):
                    writer_repo.create_message("busy", agent, _message(agent, index))
                    if agent == "w0" and index % 10 == 9:
                        # Redact an older message of w0's (moved or not) while the others append.
                        target = index - 7
                        redacted = SessionMessage(
                            message={"role": "user", "content": [{"text": f"redacted {target}"}]}, message_id=target
                        )
                        writer_repo.update_message("busy", agent, redacted)
                        redactions[target] = redacted
            except BaseException as error:  # reported by the assertion below
                errors.append(error)

    threads = [threading.Thread(target=writer, args=(agent,)) for agent in agents]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    document = _stored(repo, "busy")
    assert len(bson.encode(document)) <= THRESHOLD
    for agent in agents:
        expected = [_message(agent, i) for i in range(count)]
        if agent == "w0":
            expected = [redactions.get(i, message) for i, message in enumerate(expected)]
        assert _content(repo.list_messages("busy", agent)) == _content(expected)
        assert document["agents"][agent]["message_count"] == count
    _assert_no_stray_buckets(repo, "busy")


# ------------------------------------------------------------------------------------------ options


def test_manager_and_factory_pass_the_storage_options_on(
    client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    options = {"overflow_threshold_bytes": 64 * 1024, "binary_offload_bytes": 1000, "overflow_collection_name": "big"}
    manager = MongoDBSessionManager("opts", client=client, database_name=database_name, **options)
    factory = MongoDBSessionManagerFactory(client=client, database_name=database_name, **options)
    try:
        for repository in (manager.mongodb_repository, factory.repository):
            assert repository.overflow_threshold_bytes == 64 * 1024
            assert repository.binary_offload_bytes == 1000
            assert repository.overflow_collection_name == "big"
    finally:
        manager.close()
        factory.close()
    repository = _repository(client, database_name)
    with pytest.raises(SessionValidationError) as error:
        MongoDBSessionManager("opts", session_repository=repository, overflow_threshold_bytes=64 * 1024)
    assert error.value.field == "kwargs"


# ------------------------------------------------------------------------------------------ expiry


@pytest.fixture(scope="module")
def fast_ttl_uri(mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose TTL monitor runs every second (MongoDB's runs every 60 s).

    The server under test if it lets us set ``ttlMonitorSleepSecs`` (a real mongod does, for an
    administrator); otherwise an in-process SecantusDB with a one-second sweep.
    """
    with MongoClient(mongodb_uri) as client:
        try:
            client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
        except PyMongoError:
            pass
        else:
            yield mongodb_uri
            client.admin.command("setParameter", 1, ttlMonitorSleepSecs=60)
            return
    from secantus import SecantusDBServer  # a development dependency, like the test server itself

    folder = tmp_path_factory.mktemp("ttl-server")
    server = SecantusDBServer(host="127.0.0.1", port=0, storage_path=str(folder), cache_size="64M", ttl_sweep_seconds=1)
    server.start()
    try:
        yield f"mongodb://127.0.0.1:{server.address[1]}/?directConnection=true"
    finally:
        server.stop()


def test_expiry_takes_the_overflow_documents_along_and_never_before_the_session(fast_ttl_uri: str) -> None:
    with MongoClient(fast_ttl_uri) as client:
        database_name = "ttl_overflow"
        repo = _repository(client, database_name, session_ttl=2)
        _session(repo, "expiring", "a")
        _session(repo, "idle-short", "a")
        repo.create_message("expiring", "a", _image_message(0, os.urandom(OFFLOAD * 2)))
        # Keep the session active for longer than its TTL and the overflow documents' first expiry.
        started = time.monotonic()
        index = 1
        while time.monotonic() - started < 8:
            repo.create_message("expiring", "a", _message("a", index))
            index += 1
            time.sleep(0.1)
        assert _overflow_documents(repo, "expiring", "messages") > 0
        assert len(repo.list_messages("expiring", "a")) == index  # nothing expired under an active session
        assert repo.read_session("idle-short") is None  # while an idle session did expire

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and (
            repo.read_session("expiring") is not None or _overflow_documents(repo, "expiring") > 0
        ):
            time.sleep(0.5)
        assert repo.read_session("expiring") is None
        assert _overflow_documents(repo, "expiring") == 0
        client.drop_database(database_name)


def test_overflow_documents_expire_under_a_ttl_set_by_another_configuration(fast_ttl_uri: str) -> None:
    with MongoClient(fast_ttl_uri) as client:
        database_name = "ttl_inherited"
        _repository(client, database_name, session_ttl=3600)  # someone configured expiry
        repo = _repository(client, database_name)  # this process did not
        _session(repo, "inherits", "a")
        repo.create_message("inherits", "a", _image_message(0, os.urandom(OFFLOAD * 2)))

        chunk = repo.overflow.find_one({"session_id": "inherits"})
        assert chunk is not None and "expire_at" in chunk  # it will expire after its session
        assert "companions_until" in _stored(repo, "inherits")
        client.drop_database(database_name)


def test_encoded_agent_ids_work_across_the_boundary(repo: MongoDBSessionRepository) -> None:
    agent = "$weird.agent%"
    _session(repo, "enc", agent)
    messages = _conversation(repo, "enc", agent, 120)
    assert _stored(repo, "enc")["agents"][encode_field_name(agent)]["overflow_count"] > 0
    assert repo.list_messages("enc", agent, offset=3, limit=90) == messages[3:93]


# ------------------------------------------------------------------------------- the flat-cost policy


def test_an_append_whose_moves_keep_losing_still_goes_in(repo: MongoDBSessionRepository) -> None:
    """An append that needs room must not fail because other writers' moves keep winning over its own
    move (its move then gives up with a conflict): it goes in above the threshold, under MongoDB's
    limit, and a later append moves again."""
    _session(repo, "losing", "a")
    messages = _conversation(repo, "losing", "a", 25)  # ~12 KB: the next appends need room
    real_move = repo._overflow._move
    lost: list[int] = []

    def always_loses(*args: Any, **kwargs: Any) -> None:
        lost.append(1)  # another process committed its move first, every time
        return None

    repo._overflow._move = always_loses  # type: ignore[method-assign]
    extra = [_message("a", i) for i in range(25, 45)]
    for message in extra:
        repo.create_message("losing", "a", message)

    assert lost  # the append did try to move, and lost
    assert "overflow_count" not in _stored(repo, "losing")["agents"]["a"]
    assert repo.list_messages("losing", "a") == messages + extra
    repo._overflow._move = real_move  # type: ignore[method-assign]
    last = _message("a", 45)
    repo.create_message("losing", "a", last)
    assert _stored(repo, "losing")["agents"]["a"]["overflow_count"] > 0
    assert repo.list_messages("losing", "a") == [*messages, *extra, last]


def test_a_move_stops_when_another_writer_made_room(repo: MongoDBSessionRepository) -> None:
    _session(repo, "room", "a")
    _conversation(repo, "room", "a", 25)
    layout = repo.collection.aggregate([{"$match": {"_id": "room"}}, {"$project": {"s": {"$bsonSize": "$$ROOT"}}}])
    size = next(layout)["s"]

    assert repo._overflow.move_old_messages("room", target=0, enough=size)
    assert "overflow_count" not in _stored(repo, "room")["agents"]["a"]  # nothing moved: there was room


def test_trimmed_messages_move_out_in_batches(replies: Replies, repo: MongoDBSessionRepository) -> None:
    """Messages the conversation manager no longer holds stay in the document until MOVE_BATCH of them
    are there, then one append moves them all out; the others are one update each."""
    from mongodb_session_manager._overflow import MOVE_BATCH

    _session(repo, "trim", "a")
    big = _repository(repo.client, repo.database_name, overflow_threshold_bytes=1024 * 1024)
    messages = []
    moves = 0
    for i in range(3 * MOVE_BATCH):
        message = _message("a", i, size=50)
        replies.reset()
        big.create_message("trim", "a", message, trimmed_before=max(0, i - 4))  # a window of 4
        messages.append(message)
        moves += "insert" in replies.names
        if "insert" not in replies.names:
            assert replies.names == ["update"]
    stored = _stored(repo, "trim")["agents"]["a"]
    assert moves == 2
    # At the 2nd move, the agent had trimmed 2 x MOVE_BATCH messages: all of them moved out.
    assert stored["overflow_count"] == 2 * MOVE_BATCH
    assert len(stored["messages"]) == 3 * MOVE_BATCH - stored["overflow_count"]
    assert big.list_messages("trim", "a") == messages

"""Crashes and races in storage outside the session document: nothing acknowledged is lost, nothing
redacted survives, nothing expires under a live session.

A client "crash" is simulated deterministically: the repository's collections are wrapped so that the
N-th command raises a ``BaseException`` instead of being sent, and the repository is abandoned there,
as a process that died would be (no cleanup code runs: the library catches only its own and the
driver's exceptions). Every step of every multi-command operation is tried. A fresh repository then
carries on, as another process would.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import bson
import pytest
from pymongo import MongoClient
from pymongo.errors import PyMongoError
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionRepository, SessionStorageError, SessionValidationError
from mongodb_session_manager._overflow import BlobRef

THRESHOLD = 16 * 1024
OFFLOAD = 2048
# With these sizes, appending message 30 is the first to move old messages out.
MOVES_AT = 30
_COMMANDS = frozenset(
    {
        "aggregate",
        "count_documents",
        "delete_many",
        "find",
        "find_one",
        "find_one_and_delete",
        "find_one_and_update",
        "insert_many",
        "insert_one",
        "update_many",
        "update_one",
    }
)


class _Crash(BaseException):
    """The simulated death of the client process."""


class _Steps:
    """Counts the commands two wrapped collections send; raises ``_Crash`` instead of sending number ``at``."""

    def __init__(self, at: int | None = None) -> None:
        self.at = at
        self.sent = 0

    def tick(self) -> None:
        if self.at is not None and self.sent >= self.at:
            raise _Crash(f"crashed before command {self.sent}")
        self.sent += 1


class _Wrapped:
    def __init__(self, target: Any, steps: _Steps, after: dict[str, Callable[[], None]] | None = None) -> None:
        self._target, self._steps, self._after = target, steps, after or {}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if name not in _COMMANDS:
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            self._steps.tick()
            result = attribute(*args, **kwargs)
            then = self._after.pop(name, None)
            if then is not None:
                then()
            return result

        return call


def _repository(client: MongoClient[dict[str, Any]], database_name: str, **options: Any) -> MongoDBSessionRepository:
    options = {"overflow_threshold_bytes": THRESHOLD, "binary_offload_bytes": OFFLOAD, **options}
    return MongoDBSessionRepository(client=client, database_name=database_name, **options)


def _crashing(repo: MongoDBSessionRepository, at: int | None) -> tuple[MongoDBSessionRepository, _Steps]:
    """A second repository on the same collections whose commands are counted (and crash at ``at``)."""
    other = MongoDBSessionRepository(
        client=repo.client,
        database_name=repo.database_name,
        overflow_threshold_bytes=repo.overflow_threshold_bytes,
        binary_offload_bytes=repo.binary_offload_bytes,
    )
    steps = _Steps(at)
    other.collection = _Wrapped(other.collection, steps)  # type: ignore[assignment]
    other.overflow = _Wrapped(other.overflow, steps)  # type: ignore[assignment]
    return other, steps


@pytest.fixture
def client(mongodb_uri: str) -> Iterator[MongoClient[dict[str, Any]]]:
    with MongoClient(mongodb_uri) as own:
        yield own


@pytest.fixture
def repo(client: MongoClient[dict[str, Any]], database_name: str) -> MongoDBSessionRepository:
    return _repository(client, database_name)


def _text(index: int) -> str:
    return f"SECRET-{index:04d} " + "abcdefghij"[index % 10] * 300


def _message(index: int) -> SessionMessage:
    role: Any = "user" if index % 2 == 0 else "assistant"
    return SessionMessage(message={"role": role, "content": [{"text": _text(index)}]}, message_id=index)


def _image_message(index: int, data: bytes, text: str | None = None) -> SessionMessage:
    content: list[Any] = [{"text": text or _text(index)}, {"image": {"format": "png", "source": {"bytes": data}}}]
    return SessionMessage(message={"role": "user", "content": content}, message_id=index)


def _redacted(index: int, data: bytes | None = None) -> SessionMessage:
    content: list[Any] = [{"text": f"[redacted {index}]"}]
    if data is not None:
        content.append({"image": {"format": "png", "source": {"bytes": data}}})
    return SessionMessage(message={"role": "user", "content": content}, message_id=index)


def _session(
    repo: MongoDBSessionRepository, session_id: str, count: int, images: dict[int, bytes] | None = None
) -> None:
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    repo.create_agent(session_id, SessionAgent(agent_id="a", state={}, conversation_manager_state={}))
    for index in range(count):
        image = (images or {}).get(index)
        repo.create_message(session_id, "a", _message(index) if image is None else _image_message(index, image))


def _content(messages: list[SessionMessage]) -> list[Any]:
    return [(m.message_id, m.message, m.redact_message) for m in messages]


def _raw_documents(repo: MongoDBSessionRepository) -> list[bytes]:
    return [bson.encode(doc) for collection in (repo.collection, repo.overflow) for doc in collection.find({})]


def _stored_anywhere(repo: MongoDBSessionRepository, needle: bytes) -> bool:
    return any(needle in raw for raw in _raw_documents(repo))


def _assert_nothing_unreferenced(repo: MongoDBSessionRepository, session_id: str) -> None:
    """Every overflow document of the session is a bucket it refers to or a chunk of a value it refers to."""
    document = repo.collection.find_one({"_id": session_id})
    assert document is not None
    assert not document.get("overflow_pending"), "an unfinished write's record is left"
    buckets = {d["id"] for agent in document["agents"].values() for d in agent.get("overflow") or []}
    refs = [
        ref for agent in document["agents"].values() for entry in agent["messages"] for ref in entry.get("blobs", [])
    ]
    for bucket in repo.overflow.find({"_id": {"$in": list(buckets)}}):
        refs.extend(ref for entry in bucket["messages"] for ref in entry.get("blobs", []))
    blob_ids = {BlobRef.from_binary(ref).blob_id for ref in refs}
    for doc in repo.overflow.find({"session_id": session_id}, {"_id": 1}):
        if isinstance(doc["_id"], dict):
            assert doc["_id"]["b"] in blob_ids, f"unreferenced chunk {doc['_id']}"
        else:
            assert doc["_id"] in buckets, f"unreferenced bucket {doc['_id']}"


# ------------------------------------------------------------------------------------------ crashes


def test_a_move_interrupted_at_any_step_loses_nothing_and_a_later_redaction_leaves_no_copy(
    repo: MongoDBSessionRepository,
) -> None:
    """The hostile run: a crash between a move's copy and its commit left the original text in the
    uncommitted bucket after the message was redacted."""
    seen: set[str] = set()
    step = 0
    while True:
        session_id = f"move-{step}"
        _session(repo, session_id, MOVES_AT)  # the next append moves old messages out first
        crashing, _ = _crashing(repo, step)
        try:
            crashing.create_message(session_id, "a", _message(MOVES_AT))
            finished = True
        except _Crash:
            finished = False
        stored = repo.list_messages(session_id, "a")
        assert _content(stored) == _content([_message(i) for i in range(len(stored))])
        assert len(stored) in (MOVES_AT, MOVES_AT + 1)
        seen.add("committed" if repo.collection.find_one({"_id": session_id})["agents"]["a"].get("overflow") else "-")

        repo.update_message(session_id, "a", _redacted(0))  # a later redaction of a copied message
        assert not _stored_anywhere(repo, _text(0).encode()), f"crash before command {step}: redacted text survives"
        assert repo.list_messages(session_id, "a")[0].message == _redacted(0).message
        repo.repair_session(session_id, grace=timedelta(0))
        _assert_nothing_unreferenced(repo, session_id)
        if finished:
            break
        step += 1
    assert step >= 4 and seen == {"committed", "-"}, "the crash points did not cover the move"


def test_a_merge_interrupted_at_any_step_loses_nothing_and_a_later_redaction_leaves_no_copy(
    repo: MongoDBSessionRepository,
) -> None:
    step = 0
    while True:
        session_id = f"merge-{step}"
        _session(repo, session_id, 240)
        before = repo.list_messages(session_id, "a")
        crashing, _ = _crashing(repo, step)
        try:
            crashing._overflow.merge_buckets(session_id, "a")
            finished = True
        except _Crash:
            finished = False
        assert repo.list_messages(session_id, "a") == before

        repo.update_message(session_id, "a", _redacted(2))
        assert not _stored_anywhere(repo, _text(2).encode()), f"crash before command {step}: redacted text survives"
        repo.repair_session(session_id, grace=timedelta(0))
        _assert_nothing_unreferenced(repo, session_id)
        assert _content(repo.list_messages(session_id, "a")) == _content([*before[:2], _redacted(2), *before[3:]])
        if finished:
            break
        step += 1
    assert step >= 5, "the crash points did not cover the merge"


def test_an_append_with_a_binary_interrupted_at_any_step_is_stored_once_when_retried(
    repo: MongoDBSessionRepository,
) -> None:
    step = 0
    while True:
        session_id = f"append-{step}"
        _session(repo, session_id, 3)
        image = os.urandom(OFFLOAD * 3)
        message = _image_message(3, image)
        crashing, _ = _crashing(repo, step)
        try:
            crashing.create_message(session_id, "a", message)
            finished = True
        except _Crash:
            finished = False
        # The application (or the manager) sends the same message again: stored exactly once.
        repo.create_message(session_id, "a", message)
        stored = repo.list_messages(session_id, "a")
        assert [m.message_id for m in stored] == [0, 1, 2, 3]
        assert stored[3].message == message.message
        repo.repair_session(session_id, grace=timedelta(0))
        _assert_nothing_unreferenced(repo, session_id)
        assert repo.overflow.count_documents({"session_id": session_id}) == 1  # one chunk: one image
        if finished:
            break
        step += 1
    assert step >= 3


@pytest.mark.parametrize("where", ["resident", "moved"])
def test_a_redaction_interrupted_at_any_step_leaves_old_or_new_content_and_repair_removes_the_rest(
    repo: MongoDBSessionRepository, where: str
) -> None:
    count = 60 if where == "moved" else 3
    step = 0
    while True:
        session_id = f"redact-{where}-{step}"
        old_image, new_image = os.urandom(OFFLOAD * 3), os.urandom(OFFLOAD * 3)
        _session(repo, session_id, count, images={1: old_image})
        moved = repo.collection.find_one({"_id": session_id})["agents"]["a"].get("overflow_count", 0) > 1
        assert moved == (where == "moved")
        crashing, _ = _crashing(repo, step)
        try:
            crashing.update_message(session_id, "a", _redacted(1, new_image))
            finished = True
        except _Crash:
            finished = False
        message = repo.read_message(session_id, "a", 1)
        assert message is not None
        assert message.message in (_image_message(1, old_image).message, _redacted(1, new_image).message)

        repo.update_message(session_id, "a", _redacted(1, new_image))  # the redaction, done again
        repo.repair_session(session_id, grace=timedelta(0))
        assert not _stored_anywhere(repo, old_image[:64]), f"crash before command {step}: the old image survives"
        assert not _stored_anywhere(repo, _text(1).encode())
        assert repo.read_message(session_id, "a", 1).message == _redacted(1, new_image).message  # type: ignore[union-attr]
        _assert_nothing_unreferenced(repo, session_id)
        if finished:
            break
        step += 1
    assert step >= 3


def test_repair_leaves_young_leftovers_alone_they_may_belong_to_a_write_in_flight(
    repo: MongoDBSessionRepository,
) -> None:
    _session(repo, "young", 3)
    crashing, _ = _crashing(repo, 2)  # after storing the image's chunk, before the append
    with pytest.raises(_Crash):
        crashing.create_message("young", "a", _image_message(3, os.urandom(OFFLOAD * 3)))
    assert repo.repair_session("young") == {"unfinished_writes": 0, "unreferenced_documents": 0}
    assert repo.overflow.count_documents({"session_id": "young"}) == 1
    assert repo.repair_session("young", grace=timedelta(0)) == {"unfinished_writes": 1, "unreferenced_documents": 0}
    assert repo.overflow.count_documents({"session_id": "young"}) == 0


# ------------------------------------------------------------------------------------------ races


def test_a_redaction_racing_a_merge_keeps_its_own_new_image(
    client: MongoClient[dict[str, Any]], database_name: str, repo: MongoDBSessionRepository
) -> None:
    """The hostile run: the redaction re-applied itself to the merged bucket and took the new image it
    had just written for an old one, so every read of the history failed with missing chunks."""
    old_image, new_image = os.urandom(OFFLOAD * 3), os.urandom(OFFLOAD * 3)
    _session(repo, "race", 240, images={2: old_image})
    before = repo.list_messages("race", "a")
    merging = _repository(client, database_name)
    redacting = _repository(client, database_name)
    # Right after the redaction rewrites message 2 in its bucket, another process merges buckets
    # (copying the rewritten message) before the redaction has counted its edit.
    redacting.overflow = _Wrapped(  # type: ignore[assignment]
        redacting.overflow,
        _Steps(),
        after={"find_one_and_update": lambda: merging._overflow.merge_buckets("race", "a")},
    )
    descriptors = len(repo.collection.find_one({"_id": "race"})["agents"]["a"]["overflow"])

    redacting.update_message("race", "a", _redacted(2, new_image))

    assert len(repo.collection.find_one({"_id": "race"})["agents"]["a"]["overflow"]) < descriptors  # it merged
    assert _content(repo.list_messages("race", "a")) == _content([*before[:2], _redacted(2, new_image), *before[3:]])
    assert not _stored_anywhere(repo, old_image[:64])
    _assert_nothing_unreferenced(repo, "race")


# ------------------------------------------------------------------------------------------ data that comes back different


def test_a_history_whose_tail_was_removed_is_an_error_not_a_shorter_history(repo: MongoDBSessionRepository) -> None:
    _session(repo, "tail", 6)
    repo.collection.update_one({"_id": "tail"}, {"$pop": {"agents.a.messages": 1}})
    with pytest.raises(SessionStorageError, match="incomplete"):
        repo.list_messages("tail", "a")
    with pytest.raises(SessionStorageError, match="incomplete"):
        repo.read_message("tail", "a", 5)
    with pytest.raises(SessionStorageError, match="incomplete"):
        repo.get_message_metrics("tail", "a")
    assert repo.read_message("tail", "a", 4) is not None  # what is there still reads


def test_a_moved_history_missing_a_bucket_or_with_a_bad_descriptor_is_an_error(repo: MongoDBSessionRepository) -> None:
    _session(repo, "buckets", 60)
    document = repo.collection.find_one({"_id": "buckets"})
    descriptor = document["agents"]["a"]["overflow"][0]
    repo.collection.update_one({"_id": "buckets"}, {"$set": {"agents.a.overflow.0.id": "not-an-id"}})
    with pytest.raises(SessionStorageError, match="malformed"):
        repo.list_messages("buckets", "a")
    with pytest.raises(SessionStorageError, match="malformed"):
        repo.get_message_metrics("buckets", "a")
    repo.collection.update_one({"_id": "buckets"}, {"$set": {"agents.a.overflow.0.id": descriptor["id"]}})
    repo.overflow.delete_one({"_id": descriptor["id"]})
    with pytest.raises(SessionStorageError, match="missing"):
        repo.list_messages("buckets", "a")


@pytest.mark.parametrize(
    "damage",
    [
        pytest.param({"$unset": {"data": ""}}, id="no-data"),
        pytest.param({"$set": {"data": "text, not bytes"}}, id="data-not-bytes"),
        pytest.param({"$set": {"data": b"altered"}}, id="altered-bytes"),
    ],
)
def test_a_damaged_chunk_is_our_error_never_wrong_bytes(repo: MongoDBSessionRepository, damage: dict[str, Any]) -> None:
    _session(repo, "chunk", 1, images={0: os.urandom(OFFLOAD * 3)})
    repo.overflow.update_one({"session_id": "chunk"}, damage)
    with pytest.raises(SessionStorageError):
        repo.list_messages("chunk", "a")


def test_set_message_fields_refuses_the_reserved_binary_subtype_and_the_agent_stays_readable(
    repo: MongoDBSessionRepository,
) -> None:
    _session(repo, "fields", 2)
    forged = bson.Binary(b"\x00" * 52, 0x80)
    with pytest.raises(SessionValidationError, match="reserved"):
        repo.set_message_fields("fields", "a", 1, {"event_loop_metrics": {"x": forged}})
    assert len(repo.list_messages("fields", "a")) == 2


def test_three_thousand_levels_of_nesting_are_refused_everywhere_with_our_error(
    repo: MongoDBSessionRepository,
) -> None:
    deep: Any = "leaf"
    for _ in range(3000):
        deep = {"a": deep}
    _session(repo, "deep", 1)
    before = repo.collection.find_one({"_id": "deep"})
    message = SessionMessage(message={"role": "user", "content": [{"text": "x", "deep": deep}]}, message_id=1)
    calls: list[Callable[[], Any]] = [
        lambda: repo.create_message("deep", "a", message),
        lambda: repo.update_agent("deep", SessionAgent(agent_id="a", state={"d": deep}, conversation_manager_state={})),
        lambda: repo.update_metadata("deep", {"d": deep}),
        lambda: repo.set_message_fields("deep", "a", 0, {"event_loop_metrics": deep}),
    ]
    for call in calls:
        with pytest.raises(SessionValidationError, match="nests deeper"):
            call()
    after = repo.collection.find_one({"_id": "deep"})
    assert after == before


def test_what_stays_in_the_document_shares_its_16_mb_and_a_write_past_it_is_refused_cleanly(
    repo: MongoDBSessionRepository,
) -> None:
    _session(repo, "shared", 2)
    state = {"notes": "s" * (9 * 1024 * 1024)}
    repo.update_agent("shared", SessionAgent(agent_id="a", state=state, conversation_manager_state={}))
    repo.update_metadata("shared", {"small": 1})
    with pytest.raises(SessionValidationError) as refused:  # alone it would fit; beside the state it does not
        repo.update_metadata("shared", {"big": "m" * (9 * 1024 * 1024)})
    assert type(refused.value).__name__ == "SessionTooLargeError"
    assert repo.get_metadata("shared") == {"small": 1}
    agent = repo.read_agent("shared", "a")
    assert agent is not None and agent.state == state
    assert len(repo.list_messages("shared", "a")) == 2


# ------------------------------------------------------------------------------------------ expiry changed elsewhere


@pytest.fixture(scope="module")
def fast_ttl_uri(mongodb_uri: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A server whose TTL monitor runs every second (see tests/integration/test_overflow.py)."""
    with MongoClient(mongodb_uri) as client:
        try:
            client.admin.command("setParameter", 1, ttlMonitorSleepSecs=1)
        except PyMongoError:
            pass
        else:
            yield mongodb_uri
            client.admin.command("setParameter", 1, ttlMonitorSleepSecs=60)
            return
    from secantus import SecantusDBServer

    server = SecantusDBServer(
        host="127.0.0.1",
        port=0,
        storage_path=str(tmp_path_factory.mktemp("ttl-server")),
        cache_size="64M",
        ttl_sweep_seconds=1,
    )
    server.start()
    try:
        yield f"mongodb://127.0.0.1:{server.address[1]}/?directConnection=true"
    finally:
        server.stop()


def _assert_overflow_outlives_session(client: MongoClient[dict[str, Any]], database_name: str, session_id: str) -> None:
    """Every overflow document expires after the session would, under the TTL in force on the collection."""
    sessions = client[database_name]["sessions"]
    ttl = next(
        (
            spec.get("expireAfterSeconds")
            for spec in sessions.list_indexes()
            if dict(spec["key"]) == {"updated_date": 1}
        ),
        None,
    )
    session = sessions.find_one({"_id": session_id}, {"updated_date": 1})
    assert session is not None
    for doc in client[database_name]["sessions_overflow"].find({"session_id": session_id}, {"expire_at": 1}):
        if ttl is None:
            assert "expire_at" not in doc
        else:
            assert "expire_at" in doc and doc["expire_at"] >= session["updated_date"] + timedelta(seconds=ttl)


def _keep_active(repo: MongoDBSessionRepository, session_id: str, start: int, seconds: float) -> int:
    """Append (with a binary every few messages, and moves) for ``seconds``; returns the next message id."""
    index = start
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        message = _image_message(index, os.urandom(OFFLOAD * 2)) if index % 5 == 0 else _message(index)
        repo.create_message(session_id, "a", message)
        index += 1
        time.sleep(0.05)
    return index


def test_a_ttl_raised_by_another_process_never_lets_overflow_expire_under_the_session(fast_ttl_uri: str) -> None:
    with MongoClient(fast_ttl_uri) as client:
        database_name = "ttl_raised"
        client.drop_database(database_name)
        this = _repository(client, database_name, session_ttl=2)
        _session(this, "s", 30, images={0: os.urandom(OFFLOAD * 2)})
        _repository(client, database_name, session_ttl=3600)  # another process raises the TTL
        index = _keep_active(this, "s", 30, 2)  # this process still believes 2 s
        _assert_overflow_outlives_session(client, database_name, "s")
        time.sleep(7)  # the session idles past the old TTL and its margins; it lives for an hour
        assert len(this.list_messages("s", "a")) == index
        client.drop_database(database_name)


def test_a_ttl_turned_on_by_another_process_never_lets_overflow_expire_under_an_active_session(
    fast_ttl_uri: str,
) -> None:
    with MongoClient(fast_ttl_uri) as client:
        database_name = "ttl_turned_on"
        client.drop_database(database_name)
        this = _repository(client, database_name)  # no expiry, as far as this process knows
        _session(this, "s", 30, images={0: os.urandom(OFFLOAD * 2)})
        _repository(client, database_name, session_ttl=2)  # another process turns expiry on
        index = _keep_active(this, "s", 30, 8)  # active for four TTLs
        _assert_overflow_outlives_session(client, database_name, "s")
        assert len(this.list_messages("s", "a")) == index
        client.drop_database(database_name)

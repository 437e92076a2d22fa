"""Crash durability, the hard way: SIGKILL the server right after acknowledged appends, then count.

The server here is this module's own SecantusDB, started *without* ``--sync-on-commit``: like a
mongod with its default write concern, it acknowledges a write before its journal record reaches
the disk, and a SIGKILL loses what it acknowledged in the last ~100 ms. Every writer is built from
a plain connection string with no write-concern option, so what is tested is the library's default
(``journal=True``: a write is acknowledged once journaled). The writers only get a short
``timeoutMS`` (so a dead server fails an append in 1.5 s instead of 10; the hang guard is a guard,
not a timing assertion) and a command listener (to see, and choose, where a kill lands). The
``Agent`` test uses nothing but the library's defaults.

Each round, one writer thread appends messages (text of random sizes, images and documents whose
``bytes`` are above or below ``binary_offload_bytes``) with a small ``overflow_threshold_bytes``, so
old messages move into buckets every few appends and small buckets merge every ~130 appends. The
server is killed with SIGKILL: after a random delay, or at a chosen point of an append (inside an
offload, a move's copy or commit, a merge, the append itself: synchronously from the listener, or
0-3 ms after the command left). The writer must fail with ``SessionStorageError`` chained to the
driver's error. The server restarts on the same data and a *new* client reads the history back:

* every acknowledged message, in order, equal (binary bytes included); message ids ``0..n-1``
  with no hole and no duplicate;
* at most one message more than acknowledged (one append was in flight), and then it is the
  in-flight message, intact;
* windows and single reads across the moved part work; every bucket a descriptor names exists and
  holds the messages it claims; every offloaded binary comes back whole.

Randomness comes from ``random.Random(seed)``; the seed is in every assertion message and
``MSM_CRASH_SEED=<seed>`` replays the same plan, messages and delays (thread scheduling, and so the
exact point a delayed kill lands, cannot be replayed).

Not here: a test showing that the same kill *loses* acknowledged writes made with
``journal=False, w=1``. It does on this server (measured: a kill right after five acknowledged
inserts lost all five in 8 of 8 trials; 50 ms later, 25 of 40 inserts were lost; 200 ms later,
none), but whether the server's log writer flushes in the microseconds before the kill is a race,
so an assertion of loss could fail on a correct server.
"""

from __future__ import annotations

import copy
import json
import os
import random
import string
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from bson import ObjectId
from bson.binary import Binary
from pymongo import MongoClient, monitoring
from pymongo.errors import PyMongoError
from strands import Agent
from strands.agent.conversation_manager import NullConversationManager
from strands.types.content import Message
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionRepository,
    SessionStorageError,
)
from tests.support.overflow_worker import digest, session_message_digest
from tests.support.scripted_model import EchoModel
from tests.support.server import ServerHandle, start_server

REPO_ROOT = Path(__file__).resolve().parents[2]
SESSIONS = "sessions"
OVERFLOW = "sessions_overflow"
THRESHOLD = 16 * 1024
OFFLOAD = 2048
#: A writer on a dead server must have failed by then; it is a guard, not a timing assertion.
HANG_GUARD_SECONDS = 30
#: How long a trigger may wait for the writer to reach the chosen point (a merge needs ~130 appends).
TRIGGER_GUARD_SECONDS = 60
#: The writers' ``timeoutMS``: the library's default (10 s) would make every round wait 10 s for the
#: writer to give up on the dead server (pymongo retries a write until ``timeoutMS`` runs out).
WRITER_TIMEOUT_MS = 1500
REFERENCE_SUBTYPE = 0x80  # an offloaded binary's reference (documented in CLAUDE.md)

SEED = int(os.environ.get("MSM_CRASH_SEED") or random.SystemRandom().randrange(2**32))


# ------------------------------------------------------------------------------------------ fixtures


@pytest.fixture(scope="module")
def server() -> Iterator[ServerHandle]:
    """This module's own server: no ``--sync-on-commit``, so only journaled writes survive SIGKILL."""
    with start_server() as handle:
        yield handle


@pytest.fixture
def db(server: ServerHandle) -> Iterator[str]:
    server.start()  # a no-op unless an earlier test failed with the server down
    name = f"msm_crash_{uuid.uuid4().hex[:8]}"
    yield name
    server.start()
    with MongoClient(server.uri, serverSelectionTimeoutMS=10_000) as client:
        client.drop_database(name)


@pytest.fixture(autouse=True)
def _clean_pool() -> Iterator[None]:
    yield
    MongoDBConnectionPool.close()


# ------------------------------------------------------------------------------------------ messages


def _text(rng: random.Random, low: int, high: int) -> str:
    return "".join(rng.choices(string.ascii_letters + string.digits + " ", k=rng.randint(low, high)))


def _message(rng: random.Random, message_id: int) -> SessionMessage:
    """A message of random shape: text of random size, or binaries above or below the offload size."""
    role: Any = "user" if message_id % 2 == 0 else "assistant"
    content: list[Any] = [{"text": f"m{message_id} {_text(rng, 10, 1500)}"}]
    kind = rng.choices(["text", "image", "images", "document", "small image"], weights=[10, 5, 1, 2, 2])[0]
    if kind in ("image", "images"):
        for _ in range(1 if kind == "image" else 2):
            data = rng.randbytes(rng.randint(OFFLOAD + 1, 4 * OFFLOAD))
            content.append({"image": {"format": "png", "source": {"bytes": data}}})
    elif kind == "document":
        data = rng.randbytes(rng.randint(OFFLOAD + 1, 3 * OFFLOAD))
        content.append({"document": {"format": "pdf", "name": f"d{message_id}", "source": {"bytes": data}}})
    elif kind == "small image":  # stays in the message
        content.append({"image": {"format": "png", "source": {"bytes": rng.randbytes(rng.randint(1, OFFLOAD))}}})
    return SessionMessage(message={"role": role, "content": content}, message_id=message_id)


def _describe(message: SessionMessage | None) -> str:
    """A short description of a message for assertion messages (never its bytes)."""
    if message is None:
        return "None"
    blocks = []
    for block in message.message["content"]:
        if "text" in block:
            blocks.append(f"text[{len(block['text'])}]={block['text'][:12]!r}")
        else:
            kind = next(iter(block))
            blocks.append(f"{kind}[{len(block[kind]['source']['bytes'])} bytes]")
    return f"#{message.message_id} {message.message['role']} {', '.join(blocks)}"


# ------------------------------------------------------------------------------------------ where a kill lands


def _stage_of(command_name: str, command: dict[str, Any]) -> str | None:
    """Which step of an append a command is, from its shape; ``None`` for anything else.

    ``offload``: chunks of binaries written before the message; ``copy``: buckets written by a move
    or a merge; ``move``: the commit removing moved messages from the session; ``merge``: the commit
    replacing bucket descriptors; ``discard``: overflow documents deleted; ``append``: the ``$push``.
    """
    name = command_name.lower()
    if name == "insert" and command.get("insert") == OVERFLOW:
        kinds = {document.get("kind") for document in command.get("documents") or []}
        return "offload" if kinds == {"blob"} else "copy" if kinds == {"messages"} else None
    if name == "delete" and command.get("delete") == OVERFLOW:
        return "discard"
    if name == "update" and command.get("update") == SESSIONS:
        updates = [statement.get("u") for statement in command.get("updates") or []]
    elif name == "findandmodify" and command.get(command_name) == SESSIONS:
        updates = [command.get("update")]
    else:
        return None
    for update in updates:
        if not isinstance(update, dict):
            continue
        if any(key.endswith(".messages") for key in update.get("$push") or {}):
            return "append"
        if any(key.endswith(".messages") for key in update.get("$pull") or {}):
            return "move"
        if any(key.endswith(".overflow") for key in update.get("$set") or {}):
            return "merge"
    return None


class _Stages(monitoring.CommandListener):
    """Records the steps of the append in flight; when armed, acts at the n-th chosen step."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, str] = {}
        self._steps: list[str] = []
        self._armed: tuple[str, int, Callable[[], None]] | None = None
        self.fired = threading.Event()

    def begin_append(self) -> None:
        with self._lock:
            self._steps = []

    def steps(self) -> list[str]:
        with self._lock:
            return list(self._steps)

    def arm(self, point: str, skip: int, action: Callable[[], None]) -> None:
        """At the ``skip + 1``-th ``point`` (``"<stage> started"`` or ``"<stage> succeeded"``), run ``action``."""
        self._armed = (point, skip, action)

    def _at(self, point: str) -> None:
        with self._lock:
            self._steps.append(point)
            armed = self._armed
            if armed is None or armed[0] != point:
                return
            if armed[1] > 0:
                self._armed = (point, armed[1] - 1, armed[2])
                return
            self._armed = None
        armed[2]()
        self.fired.set()

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        stage = _stage_of(event.command_name, event.command)
        if stage is not None:
            self._pending[event.request_id] = stage
            self._at(f"{stage} started")

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        stage = self._pending.pop(event.request_id, None)
        if stage is not None:
            self._at(f"{stage} succeeded")

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        stage = self._pending.pop(event.request_id, None)
        if stage is not None:
            with self._lock:
                self._steps.append(f"{stage} failed")


# ------------------------------------------------------------------------------------------ one round


@dataclass
class _Writer:
    """One thread appending to one agent until the server dies (at most one append in flight)."""

    repository: MongoDBSessionRepository
    session_id: str
    agent_id: str
    next_id: int
    rng: random.Random
    stages: _Stages
    acknowledged: list[SessionMessage] = field(default_factory=list)
    in_flight: SessionMessage | None = None
    error: BaseException | None = None
    got_going: threading.Event = field(default_factory=threading.Event)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        try:
            while not self.stop.is_set():
                message = _message(self.rng, self.next_id)
                self.in_flight = copy.deepcopy(message)  # what was sent, whatever the call does to it
                self.stages.begin_append()
                self.repository.create_message(self.session_id, self.agent_id, message)
                self.acknowledged.append(self.in_flight)
                self.in_flight = None
                self.next_id += 1
                self.got_going.set()
        except BaseException as e:  # the test examines it; a thread must not raise
            self.error = e


@dataclass
class _Plan:
    """Where a round's kill lands: ``after`` a random delay, or at ``point`` (``sync``: from the listener)."""

    after: float | None = None
    point: str | None = None
    skip: int = 0
    sync: bool = True
    delay: float = 0.0

    def __str__(self) -> str:
        if self.point is None:
            return f"random kill {self.after * 1000:.0f} ms after the first ack"
        how = "synchronously" if self.sync else f"{self.delay * 1000:.2f} ms after"
        return f"kill {how} at {self.point} (skipping {self.skip})"


@dataclass
class _Outcome:
    """What a round did, for the summary printed at the end of a test."""

    plan: str
    acknowledged: int
    stored: int
    steps: list[str]
    orphan_buckets: int
    orphan_blobs: int


def _wait_for(event: threading.Event, writer: _Writer, thread: threading.Thread, seconds: float, what: str) -> None:
    """Wait until ``event`` is set; fail if the writer stops first or it takes longer than ``seconds``."""
    deadline = time.monotonic() + seconds
    while not event.wait(0.02):
        assert thread.is_alive(), f"the writer stopped with {writer.error!r} before {what}"
        assert time.monotonic() < deadline, f"the writer did not reach {what} in {seconds} s"


class _Rig:
    """A session written through crash after crash; ``expected`` is what storage must hold."""

    def __init__(self, server: ServerHandle, database_name: str, session_id: str, rng: random.Random) -> None:
        self.server = server
        self.database_name = database_name
        self.session_id = session_id
        self.agent_id = "writer"
        self.rng = rng
        self.expected: list[SessionMessage] = []
        self.outcomes: list[_Outcome] = []
        with MongoDBSessionRepository(server.uri, database_name=database_name) as repository:
            repository.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
            repository.create_agent(
                session_id, SessionAgent(agent_id=self.agent_id, state={}, conversation_manager_state={})
            )

    def context(self, round_no: int, plan: _Plan) -> str:
        return f"seed={SEED} (MSM_CRASH_SEED), session={self.session_id}, round {round_no}: {plan}"

    def crash_round(self, round_no: int, plan: _Plan) -> None:
        """Append until the kill of ``plan``, restart, and check what storage holds."""
        context = self.context(round_no, plan)
        stages = _Stages()
        repository = MongoDBSessionRepository(
            self.server.uri,
            database_name=self.database_name,
            overflow_threshold_bytes=THRESHOLD,
            binary_offload_bytes=OFFLOAD,
            timeoutMS=WRITER_TIMEOUT_MS,
            event_listeners=[stages],
        )
        writer = _Writer(
            repository,
            self.session_id,
            self.agent_id,
            len(self.expected),
            random.Random(self.rng.randrange(2**63)),
            stages,
        )
        thread = threading.Thread(target=writer.run, name=f"crash-writer-{round_no}")
        try:
            # The premise: nothing but the library chose the write concern.
            assert repository.client.write_concern.document == {"j": True}, context
            if plan.point is not None:
                stages.arm(plan.point, plan.skip, self.server.kill if plan.sync else lambda: None)
            thread.start()
            if plan.point is None:
                _wait_for(writer.got_going, writer, thread, HANG_GUARD_SECONDS, f"{context}: the first ack")
                time.sleep(plan.after or 0.0)
            else:
                _wait_for(stages.fired, writer, thread, TRIGGER_GUARD_SECONDS, f"{context}: the point")
                time.sleep(plan.delay)
            self.server.kill()  # SIGKILL (a no-op when the listener did it already)
            steps = stages.steps()
            thread.join(HANG_GUARD_SECONDS)  # the hang guard, not a timing assertion
            assert not thread.is_alive(), f"{context}: the writer hung on a dead server"
            assert isinstance(writer.error, SessionStorageError), f"{context}: the writer ended with {writer.error!r}"
            assert isinstance(writer.error.__cause__, PyMongoError), f"{context}: {writer.error!r} is not chained"
        finally:
            writer.stop.set()
            self.server.kill()
            if thread.is_alive():
                thread.join(HANG_GUARD_SECONDS)
            self.server.start()
            repository.close()  # after the restart: closing a client talks to the server

        must = self.expected + writer.acknowledged
        with MongoClient(self.server.uri, serverSelectionTimeoutMS=10_000) as client:  # a new client
            stored = _check_history(
                client, self.database_name, self.session_id, self.agent_id, must, writer.in_flight, context
            )
            orphan_buckets, orphan_blobs = _check_layout(
                client, self.database_name, self.session_id, self.agent_id, len(stored), context
            )
            _check_reads(client, self.database_name, self.session_id, self.agent_id, stored, self.rng, context)
        self.expected = stored
        self.outcomes.append(_Outcome(str(plan), len(must), len(stored), steps[-4:], orphan_buckets, orphan_blobs))

    def summary(self) -> str:
        lines = [
            f"seed={SEED} session={self.session_id}: {len(self.expected)} messages after {len(self.outcomes)} kills"
        ]
        for n, outcome in enumerate(self.outcomes):
            extra = outcome.stored - outcome.acknowledged
            lines.append(
                f"  {n:2d} {outcome.plan}: acknowledged {outcome.acknowledged}, stored +{extra}; "
                f"in flight: {' > '.join(outcome.steps) or '-'}; unreferenced buckets {outcome.orphan_buckets}, "
                f"blobs {outcome.orphan_blobs}"
            )
        return "\n".join(lines)


def _check_history(
    client: MongoClient[dict[str, Any]],
    database_name: str,
    session_id: str,
    agent_id: str,
    must: list[SessionMessage],
    in_flight: SessionMessage | None,
    context: str,
) -> list[SessionMessage]:
    """Every acknowledged message, in order, equal; at most the in-flight one more; no hole."""
    with MongoDBSessionRepository(client=client, database_name=database_name) as reader:
        try:
            stored = reader.list_messages(session_id, agent_id)
        except SessionStorageError as e:  # a missing bucket or chunk
            raise AssertionError(f"{context}: the history cannot be read back: {e}") from e
    ids = [message.message_id for message in stored]
    assert ids == list(range(len(stored))), f"{context}: message ids with holes or duplicates: {ids[-10:]}"
    assert len(stored) >= len(must), (
        f"{context}: {len(must) - len(stored)} acknowledged message(s) lost: {len(must)} acknowledged, "
        f"{len(stored)} stored; first lost {_describe(must[len(stored)])}"
    )
    assert len(stored) <= len(must) + 1, f"{context}: {len(stored) - len(must)} messages more than acknowledged"
    for index, message in enumerate(must):
        assert stored[index] == message, (
            f"{context}: stored message {index} differs: stored {_describe(stored[index])}, "
            f"acknowledged {_describe(message)}"
        )
    if len(stored) > len(must):
        assert stored[-1] == in_flight, (
            f"{context}: the message beyond the acknowledged ones is not the one in flight: "
            f"stored {_describe(stored[-1])}, in flight {_describe(in_flight)}"
        )
    return stored


def _references(value: Any) -> set[ObjectId]:
    """The blob ids of the offloaded-binary references inside a stored entry (or list of them)."""
    found: set[ObjectId] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, Binary) and item.subtype == REFERENCE_SUBTYPE:
            found.add(ObjectId(bytes(item)[:12]))
    return found


def _check_layout(
    client: MongoClient[dict[str, Any]], database_name: str, session_id: str, agent_id: str, count: int, context: str
) -> tuple[int, int]:
    """The stored layout is whole: descriptors cover the moved messages, each bucket exists and holds
    what its descriptor says, every referenced binary has its chunks.

    Returns:
        How many buckets and binaries are stored that nothing refers to (leftovers of interrupted
        moves and offloads; not an error, reported only).
    """
    database = client[database_name]
    document = database[SESSIONS].find_one({"_id": session_id})
    assert document is not None, f"{context}: the session document is gone"
    agent = document["agents"][agent_id]
    assert agent["message_count"] == count, f"{context}: message_count {agent['message_count']} != {count}"
    moved = int(agent.get("overflow_count") or 0)
    descriptors = list(agent.get("overflow") or [])
    first = 0
    for descriptor in descriptors:
        assert descriptor["first"] == first, f"{context}: bucket descriptors not contiguous: {descriptors}"
        first += descriptor["count"]
    assert first == moved, f"{context}: descriptors cover {first} messages, overflow_count is {moved}"
    resident = [entry["message_id"] for entry in agent.get("messages") or []]
    assert resident == list(range(moved, count)), f"{context}: resident ids {resident[:5]}... for {moved}..{count}"

    buckets = {
        bucket["_id"]: bucket for bucket in database[OVERFLOW].find({"kind": "messages", "session_id": session_id})
    }
    referenced = _references(agent.get("messages") or [])
    for descriptor in descriptors:
        bucket = buckets.get(descriptor["id"])
        assert bucket is not None, f"{context}: bucket {descriptor['id']} (from #{descriptor['first']}) is missing"
        held = [entry["message_id"] for entry in bucket["messages"]]
        expected = list(range(descriptor["first"], descriptor["first"] + descriptor["count"]))
        assert held == expected, f"{context}: bucket {descriptor['id']} holds {held[:3]}..., expected {expected[:3]}..."
        referenced |= _references(bucket["messages"])
    blobs = {
        chunk["_id"]["b"] for chunk in database[OVERFLOW].find({"kind": "blob", "session_id": session_id}, {"_id": 1})
    }
    missing = referenced - blobs
    assert not missing, f"{context}: {len(missing)} referenced binaries have no chunk, e.g. {sorted(missing)[:3]}"
    described = {descriptor["id"] for descriptor in descriptors}
    return len(set(buckets) - described), len(blobs - referenced)


def _check_reads(
    client: MongoClient[dict[str, Any]],
    database_name: str,
    session_id: str,
    agent_id: str,
    stored: list[SessionMessage],
    rng: random.Random,
    context: str,
) -> None:
    """Windows and single reads across the moved part return the same messages."""
    with MongoDBSessionRepository(client=client, database_name=database_name) as reader:
        for _ in range(4):
            offset = rng.randrange(len(stored) + 1)
            limit = rng.choice([None, 1, rng.randint(2, 60)])
            window = reader.list_messages(session_id, agent_id, limit=limit, offset=offset)
            expected = stored[offset : None if limit is None else offset + limit]
            assert window == expected, f"{context}: list_messages(offset={offset}, limit={limit}) differs"
        for message_id in rng.sample(range(len(stored)), min(3, len(stored))):
            read = reader.read_message(session_id, agent_id, message_id)
            assert read == stored[message_id], f"{context}: read_message({message_id}) differs"


def _restore_in_new_process(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``tests.support.overflow_worker`` in a new process on ``request``; return its answer."""
    completed = subprocess.run(
        [sys.executable, "-m", "tests.support.overflow_worker"],
        input=json.dumps(request),
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, f"the restore process failed:\n{completed.stderr}"
    answer: dict[str, Any] = json.loads(completed.stdout)
    assert answer["pid"] != os.getpid()
    return answer


def _check_in_new_process(rig: _Rig, windows: list[tuple[int, int | None]]) -> None:
    """A new process, sharing nothing with this one but the database, lists the same messages."""
    answer = _restore_in_new_process(
        {
            "mongodb_uri": rig.server.uri,
            "database_name": rig.database_name,
            "session_id": rig.session_id,
            "agent_id": rig.agent_id,
            "overflow_threshold_bytes": THRESHOLD,
            "agent": None,
            "windows": [list(window) for window in windows],
        }
    )
    for window, listed in zip(windows, answer["windows"], strict=True):
        offset, limit = window
        expected = rig.expected[offset : None if limit is None else offset + limit]
        assert listed["message_ids"] == [message.message_id for message in expected], f"seed={SEED}: {window}"
        assert listed["digests"] == [session_message_digest(message) for message in expected], f"seed={SEED}: {window}"


# ------------------------------------------------------------------------------------------ the tests


def test_acknowledged_appends_survive_sigkill_at_random_moments(server: ServerHandle, db: str) -> None:
    rng = random.Random(SEED)
    rig = _Rig(server, db, "random-kills", rng)
    for round_no in range(10):
        # Mostly within the ~100 ms a non-journaled write stays volatile on this server; some later.
        after = rng.choice([0.0, rng.uniform(0, 0.05), rng.uniform(0, 0.15), rng.uniform(0.05, 0.5)])
        rig.crash_round(round_no, _Plan(after=after))
    print(rig.summary())

    assert len(rig.expected) >= 20, f"seed={SEED}: only {len(rig.expected)} messages were written"
    moved = len(rig.expected) // 2
    _check_in_new_process(rig, [(0, None), (rng.randrange(moved), 25), (len(rig.expected) - 3, None)])


#: Points inside an append: ``(point, sync)``. Synchronous kills land between two commands (the one
#: named was never received, or was just answered); the others 0-3 ms after the command left.
_POINTS = [
    ("offload succeeded", True),  # chunks stored, the message not
    ("append succeeded", True),  # acknowledged this very moment
    ("copy succeeded", True),  # a move's (or merge's) copy done, its commit not sent
    ("move started", True),  # the commit about to be sent
    ("move succeeded", True),  # committed; the append that needed the room not yet done
    ("merge started", True),
    ("merge succeeded", True),  # merged; the replaced buckets not yet deleted
    ("offload started", False),
    ("append started", False),
    ("append started", False),
    ("copy started", False),
    ("move started", False),
    ("move started", False),
    ("merge started", False),
]


def test_kills_inside_offloads_moves_and_merges_lose_no_acknowledged_message(server: ServerHandle, db: str) -> None:
    rng = random.Random(SEED + 1)
    rig = _Rig(server, db, "aimed-kills", rng)
    points = list(_POINTS)
    rng.shuffle(points)
    for round_no, (point, sync) in enumerate(points):
        plan = _Plan(point=point, skip=rng.randint(0, 2), sync=sync, delay=0.0 if sync else rng.uniform(0, 0.003))
        rig.crash_round(round_no, plan)
    print(rig.summary())

    moved = len(rig.expected) // 2
    _check_in_new_process(rig, [(0, None), (rng.randrange(moved), 40)])


def _agent(manager: MongoDBSessionManager) -> Agent:
    return Agent(
        model=EchoModel(),
        agent_id="assistant",
        session_manager=manager,
        conversation_manager=NullConversationManager(),
        callback_handler=None,
    )


def test_turns_acknowledged_before_a_sigkill_are_restored_by_a_new_manager(server: ServerHandle, db: str) -> None:
    rng = random.Random(SEED + 2)
    restored_last: list[Message] = []
    for round_no in range(3):
        session_id = f"agent-{round_no}"
        turns = rng.randint(3, 6)
        context = f"seed={SEED} (MSM_CRASH_SEED), round {round_no}, {turns} turns"
        manager = MongoDBSessionManager(session_id, connection_string=server.uri, database_name=db)  # all defaults
        client = manager.mongodb_repository.client
        try:
            assert client.write_concern.document == {"j": True}, context
            agent = _agent(manager)
            for turn in range(turns):
                agent(f"{session_id} turn {turn}: {_text(rng, 0, 400)}")
            server.kill()  # SIGKILL the moment the last turn returned
            acknowledged = copy.deepcopy(agent.messages)
            if round_no == 0:
                # With nothing but the library's defaults, a turn on the dead server fails, and does not hang.
                started = time.monotonic()
                with pytest.raises(SessionStorageError) as raised:
                    agent("this turn is not stored")
                assert time.monotonic() - started < HANG_GUARD_SECONDS, f"{context}: a turn on a dead server hung"
                assert isinstance(raised.value.__cause__, PyMongoError), context
        finally:
            server.start()
            manager.close()
        assert len(acknowledged) == 2 * turns, context

        restorer = MongoDBSessionManager(session_id, connection_string=server.uri, database_name=db)
        try:
            assert restorer.mongodb_repository.client is not client, f"{context}: not a new client"
            assert not restorer._is_new_session, f"{context}: the session itself was lost"
            restored = _agent(restorer).messages
        finally:
            restorer.close()
        assert len(restored) == len(acknowledged), f"{context}: restored {len(restored)} of {len(acknowledged)}"
        assert restored == acknowledged, context
        restored_last = acknowledged

    answer = _restore_in_new_process(
        {
            "mongodb_uri": server.uri,
            "database_name": db,
            "session_id": "agent-2",
            "agent_id": "assistant",
            "agent": {"conversation_manager": "null"},
        }
    )
    assert answer["agent"]["digests"] == [digest(message) for message in restored_last], f"seed={SEED}"

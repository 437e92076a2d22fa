"""The measurements: each function runs one scenario and returns what it cost.

Every MongoDB scenario runs through one client whose :class:`Recorder` sees all commands; the same
conversation is run through Strands' ``FileSessionManager`` on local disk for comparison.
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bson
from pymongo import MongoClient
from strands import Agent
from strands.agent.conversation_manager import SlidingWindowConversationManager
from strands.session.file_session_manager import FileSessionManager
from strands.session.session_manager import SessionManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import (
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionRepository,
    close_global_factory,
    get_global_factory,
    initialize_global_factory,
)
from mongodb_session_manager._documents import agent_to_fields, message_to_entry, session_to_document
from mongodb_session_manager._overflow import REFERENCE_SUBTYPE
from mongodb_session_manager.mongodb_connection_pool import resolve_client_options
from mongodb_session_manager.mongodb_session_repository import DEFAULT_OVERFLOW_THRESHOLD_BYTES

from ._files import CountingFileSessionManager, FileIO
from ._harness import Contestant, Recorder, Timing, Traffic, Typical, interleave
from ._history import ColdStart, HistoryPoint, WindowRestore, cold_start, history_costs
from ._model import ReplyModel
from ._storage import StorageOp, storage_costs

#: The conversation manager's window in every scenario: what a restore reads.
WINDOW = 20
USER_TEXT = "Could you summarise what we decided about the venue, the budget and the guest list? " * 2
ASSISTANT_TEXT = (
    "Here is where we are: the venue is the riverside hall for the evening of the 14th, the budget "
    "stays at 4,000 with catering as the largest item, and the guest list has 42 confirmed names. "
) * 3
#: A long answer (~8 KB), as agents that work through documents and tool results give.
LONG_ANSWER_TEXT = ASSISTANT_TEXT * 15
#: ``overflow_threshold_bytes`` of the long-session scenarios: the default.
LONG_THRESHOLD = DEFAULT_OVERFLOW_THRESHOLD_BYTES
#: In the image session, every ``IMAGE_EVERY``-th message is a user message holding an image.
IMAGE_EVERY = 10


@dataclass(frozen=True)
class Settings:
    """How much work each scenario does; :meth:`quick` is for a smoke run."""

    repeats: int = 25
    restore_sizes: tuple[int, ...] = (10, 200, 2000)
    append_repeats: tuple[tuple[int, int], ...] = ((10, 15), (100, 15), (1000, 9), (5000, 5))
    image_bytes: int = 256 * 1024
    requests: int = 40
    throughput: tuple[tuple[int, int], ...] = ((1, 100), (8, 50))
    turns_per_session: int = 2
    # Long sessions: one history is appended to and restored at each of these lengths (messages).
    long_checkpoints: tuple[int, ...] = (1000, 4000)
    long_windows: tuple[int, ...] = (20, 40, 100)
    # The image session: restored when it holds this many images.
    image_checkpoints: tuple[int, ...] = (10, 20)
    image_windows: tuple[int, ...] = (20, 40)
    offloaded_image_bytes: int = 1024 * 1024
    # Issue #16: append cost vs history length (text; with images), restore bytes vs window.
    history_lengths: tuple[int, ...] = (10, 100, 1000, 5000, 20000)
    image_history_lengths: tuple[int, ...] = (10, 100, 1000, 5000)
    history_windows: tuple[int, ...] = (10, 20, 40, 100, 200)
    history_repeats: int = 15
    cold_starts: int = 5

    @classmethod
    def quick(cls) -> Settings:
        return cls(
            repeats=5,
            append_repeats=((10, 3), (100, 3), (1000, 3), (5000, 2)),
            requests=8,
            throughput=((1, 20), (4, 5)),
            long_checkpoints=(200, 600),
            image_checkpoints=(2, 4),
            history_lengths=(10, 100, 1000),
            image_history_lengths=(10, 100),
            history_windows=(20, 40),
            history_repeats=3,
            cold_starts=2,
        )


@dataclass
class Cost:
    """One operation measured on MongoDB and, where it applies, on the file baseline."""

    key: str  # "restore:2000", "turn", "turn:slide", "sync", "append:5000", "image", "floor:read", ...
    operation: str
    traffic: Traffic
    timing: Timing
    floor: Timing  # the pymongo floor (find_one for reads, update_one for writes), timed alongside
    file_timing: Timing | None = None
    file_io: FileIO | None = None


@dataclass
class RequestCost:
    """One way of building a manager per request."""

    design: str
    traffic: list[Traffic]  # one per request
    setup: Timing
    request: Timing


@dataclass
class ClientCost:
    """A new ``MongoClient`` for one command versus the same command on a warm pooled client."""

    new_client: Timing
    pooled: Timing
    new_client_traffic: Traffic


@dataclass
class Throughput:
    """Many threads serving requests through one pool."""

    threads: int
    sessions: int
    turns: int
    seconds: float
    commands: int
    connections_created: int
    peak_open: int
    peak_checked_out: int
    max_pool_size: int
    latency: Timing


@dataclass
class Storage:
    """How a binary content block is stored."""

    raw: int
    sent: int
    stored: int
    file_stored: int


@dataclass
class Append:
    """One append to a long session, as the build recorded it."""

    kind: str  # "text" (long session), "image", "text beside images" (the image session's other messages)
    traffic: Traffic
    ms: float

    @property
    def moved(self) -> bool:
        """Whether this append moved old messages out (a text append writes nothing else)."""
        return self.kind == "text" and "insert" in self.traffic.commands


@dataclass
class LongRestore:
    """Restoring a window of a long session, most of whose history may be outside its document."""

    history: str  # "text" or "images"
    stored: int  # messages
    stored_bytes: int  # the session document and its overflow documents
    moved: int  # messages moved out into buckets
    buckets: int
    blobs: int  # binary values stored outside the document
    window: int
    restored_bytes: int  # BSON size of the messages the agent got back
    traffic: Traffic
    timing: Timing
    floor: Timing


@dataclass
class Offloaded:
    """How a binary value above ``binary_offload_bytes`` is stored: chunk document(s) and a reference."""

    raw: int
    sent: int  # the commands of the append (chunk insert and message update included)
    chunks: int  # BSON bytes of its chunk documents
    entry: int  # BSON bytes of the message entry that refers to it


@dataclass
class Durability:
    """The same operation with writes acknowledged once journaled (the default) and before."""

    operation: str
    journaled: Timing
    unjournaled: Timing
    journaled_traffic: Traffic
    unjournaled_traffic: Traffic


@dataclass
class Results:
    floor_read: Cost
    floor_write: Cost
    strands_alone: dict[str, Timing] = field(default_factory=dict)
    costs: list[Cost] = field(default_factory=list)
    storage: Storage | None = None
    requests: list[RequestCost] = field(default_factory=list)
    client_cost: ClientCost | None = None
    throughput: list[Throughput] = field(default_factory=list)
    long_restores: list[LongRestore] = field(default_factory=list)
    appends: list[Append] = field(default_factory=list)
    offloaded: Offloaded | None = None
    durability: list[Durability] = field(default_factory=list)
    unified_storage: list[StorageOp] = field(default_factory=list)
    history: list[HistoryPoint] = field(default_factory=list)
    window_restores: list[WindowRestore] = field(default_factory=list)
    cold_start: ColdStart | None = None
    encryption: Any = None  # _encryption.EncryptionCost (measured by __main__, after run_all)


# ---------------------------------------------------------------------------------------------- data


def conversation(count: int, start: int = 0, answer: str = ASSISTANT_TEXT) -> list[SessionMessage]:
    """Messages ``start`` to ``count - 1``, alternating user / assistant: questions of ~200 bytes, answers
    of ``answer`` (~600 bytes by default)."""
    return [
        SessionMessage(
            message={
                "role": "user" if i % 2 == 0 else "assistant",
                "content": [{"text": f"[{i:05d}] " + (USER_TEXT if i % 2 == 0 else answer)}],
            },
            message_id=i,
        )
        for i in range(start, count)
    ]


def long_conversation(start: int, stop: int) -> list[SessionMessage]:
    """Messages ``start`` to ``stop - 1`` of a long working session: questions (~0.2 KB), long answers (~8 KB)."""
    return conversation(stop, start, LONG_ANSWER_TEXT)


def image_bytes(message_id: int, size: int) -> bytes:
    """The (incompressible, reproducible) image carried by message ``message_id`` of the image session."""
    return random.Random(message_id).randbytes(size)


def image_conversation(start: int, stop: int, size: int) -> list[SessionMessage]:
    """Messages ``start`` to ``stop - 1`` of a conversation where every ``IMAGE_EVERY``-th message holds an image."""
    messages = conversation(stop)[start:]
    for message in messages:
        if message.message_id % IMAGE_EVERY == 0:
            image = {"image": {"format": "png", "source": {"bytes": image_bytes(message.message_id, size)}}}
            message.message["content"].append(image)
    return messages


def stored_agent(count: int, window: int = WINDOW) -> SessionAgent:
    """The agent record of a conversation of ``count`` messages under a sliding window of ``window``."""
    agent = SessionAgent.from_agent(new_agent(None, window))
    agent.conversation_manager_state = {
        **agent.conversation_manager_state,
        "removed_message_count": max(0, count - window),
    }
    return agent


def _window(size: int) -> SlidingWindowConversationManager:
    return SlidingWindowConversationManager(window_size=size)


def new_agent(manager: SessionManager | None, window: int = WINDOW) -> Agent:
    """The agent every scenario uses: offline model, sliding window of ``window`` messages (``WINDOW``)."""
    return Agent(
        model=ReplyModel(), session_manager=manager, conversation_manager=_window(window), callback_handler=None
    )


# --------------------------------------------------------------------------------------------- bench


class Bench:
    """A database on the server under test, a recorded client, and a folder for the file baseline."""

    def __init__(self, uri: str, settings: Settings) -> None:
        self.uri = uri
        self.settings = settings
        self.recorder = Recorder()
        # The options a manager built from this connection string would use (journaled writes,
        # bounded operations), so that every figure is what the library costs by default.
        self.client: MongoClient[dict[str, Any]] = MongoClient(
            uri, event_listeners=[self.recorder], **resolve_client_options(uri, {})
        )
        self.database_name = f"msm_bench_{uuid.uuid4().hex[:8]}"
        self.repository = MongoDBSessionRepository(client=self.client, database_name=self.database_name)
        self.floor = self.client[self.database_name]["floor"]
        self.floor.insert_one({"_id": "floor", "n": 0, "text": USER_TEXT})
        self.storage_dir = tempfile.mkdtemp(prefix="msm-bench-files-")
        self.file_io = FileIO()
        self.files = FileSessionManager("setup", storage_dir=self.storage_dir)
        self._ids = iter(range(10**9))

    def close(self) -> None:
        self.client.drop_database(self.database_name)
        self.client.close()
        shutil.rmtree(self.storage_dir, ignore_errors=True)

    def session_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids):06d}"

    def manager(self, session_id: str) -> MongoDBSessionManager:
        return MongoDBSessionManager(session_id, client=self.client, database_name=self.database_name)

    def file_manager(self, session_id: str) -> CountingFileSessionManager:
        return CountingFileSessionManager(session_id, self.storage_dir, self.file_io)

    def store(self, session_id: str, count: int) -> None:
        """Store a conversation of ``count`` messages in MongoDB (one insert) and on disk."""
        agent = stored_agent(count)
        messages = conversation(count)
        document = session_to_document(Session(session_id=session_id, session_type=SessionType.AGENT))
        document["agents"][agent.agent_id] = {
            **agent_to_fields(agent),
            "message_count": count,
            "messages": [message_to_entry(m) for m in messages],
        }
        document["size_estimate"] = len(bson.encode(document)) + 32
        self.repository.collection.insert_one(document)
        # As the library keeps a history: the messages the window no longer holds move out.
        self.repository._overflow.move_old_messages(session_id)
        self.recorder.take()
        self.files.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
        self.files.create_agent(session_id, agent)
        for message in messages:
            self.files.create_message(session_id, agent.agent_id, message)


def _mongo(bench: Bench, action: Callable[[Any], Any], prepare: Callable[[int], Any] | None = None) -> Contestant:
    return Contestant(action, prepare, bench.recorder.take)


def _file(bench: Bench, action: Callable[[Any], Any], prepare: Callable[[int], Any] | None = None) -> Contestant:
    return Contestant(action, prepare, bench.file_io.take)


def _floor(bench: Bench, kind: str, recorded: bool = False) -> Contestant:
    """The pymongo floor: one ``find_one`` (``"read"``) or ``update_one`` (``"write"``) by ``_id``."""
    collection = bench.floor

    def read(_: Any) -> None:
        collection.find_one({"_id": "floor"})

    def write(_: Any) -> None:
        collection.update_one({"_id": "floor"}, {"$inc": {"n": 1}})

    return Contestant(read if kind == "read" else write, capture=bench.recorder.take if recorded else None)


def _compare(
    bench: Bench, key: str, operation: str, kind: str, repeats: int, mongo: Contestant, file: Contestant
) -> Cost:
    """Time an operation, its pymongo floor and its file-baseline version, taking turns."""
    (timing, traffic), (floor, _), (file_timing, file_io) = interleave(repeats, [mongo, _floor(bench, kind), file])
    return Cost(key, operation, traffic, timing, floor, file_timing, file_io)


# ------------------------------------------------------------------------------------------ floors


def floors(bench: Bench) -> tuple[Cost, Cost]:
    """One ``find_one`` and one ``update_one`` by ``_id`` on a small document: the least a round trip costs."""
    (read, read_traffic), (write, write_traffic) = interleave(
        bench.settings.repeats * 2, [_floor(bench, "read", recorded=True), _floor(bench, "write", recorded=True)]
    )
    return (
        Cost("floor:read", "pymongo floor: find_one by _id", read_traffic, read, read),
        Cost("floor:write", "pymongo floor: update_one by _id", write_traffic, write, write),
    )


def strands_alone(bench: Bench) -> dict[str, Timing]:
    """Strands with no session manager: what building an agent and running a turn cost without storage."""
    (build, _), (turn, _) = interleave(
        bench.settings.repeats, [Contestant(lambda _: new_agent(None)), Contestant(_turn, lambda _: new_agent(None))]
    )
    return {"build": build, "turn": turn}


def _turn(agent: Agent) -> None:
    agent(USER_TEXT)


# ---------------------------------------------------------------------------------------- restore


def restore(bench: Bench, stored: int) -> Cost:
    """Manager creation for an existing session plus ``Agent(...)``, with ``stored`` messages stored."""
    session_id = bench.session_id(f"restore{stored:05d}")
    bench.store(session_id, stored)
    restored: set[int] = set()

    def mongo(_: Any) -> None:
        restored.add(len(new_agent(bench.manager(session_id)).messages))

    cost = _compare(
        bench,
        f"restore:{stored}",
        f"restore an agent, {stored:,} stored messages (window {WINDOW})",
        "read",
        bench.settings.repeats,
        _mongo(bench, mongo),
        _file(bench, lambda _: new_agent(bench.file_manager(session_id))),
    )
    assert restored == {min(stored, WINDOW)}, restored
    return cost


# ------------------------------------------------------------------------------------------ turns


def turn(bench: Bench) -> Cost:
    """One turn (user message + assistant reply with metrics) of a new agent: its window is not full."""
    return _compare(
        bench,
        "turn",
        "one turn (user + assistant with metrics)",
        "write",
        bench.settings.repeats,
        _mongo(bench, _turn, lambda _: new_agent(bench.manager(bench.session_id("turn")))),
        _file(bench, _turn, lambda _: new_agent(bench.file_manager(bench.session_id("turn")))),
    )


def turn_with_full_window(bench: Bench) -> Cost:
    """One turn of a restored agent whose window is full: the window slides, so its state changes too."""

    def restored(make: Callable[[str], SessionManager]) -> Callable[[int], Agent]:
        def build(_: int) -> Agent:
            session_id = bench.session_id("slide")
            bench.store(session_id, WINDOW)
            return new_agent(make(session_id))

        return build

    return _compare(
        bench,
        "turn:slide",
        f"one turn, window of {WINDOW} full (it slides)",
        "write",
        bench.settings.repeats,
        _mongo(bench, _turn, restored(bench.manager)),
        _file(bench, _turn, restored(bench.file_manager)),
    )


def sync_unchanged(bench: Bench) -> Cost:
    """``sync_agent`` right after a turn: nothing changed, so nothing should be sent."""
    manager = bench.manager(bench.session_id("sync"))
    agent = new_agent(manager)
    agent(USER_TEXT)
    file_manager = bench.file_manager(bench.session_id("sync"))
    file_agent = new_agent(file_manager)
    file_agent(USER_TEXT)
    return _compare(
        bench,
        "sync",
        "sync_agent, nothing changed",
        "write",
        bench.settings.repeats,
        _mongo(bench, lambda _: manager.sync_agent(agent)),
        _file(bench, lambda _: file_manager.sync_agent(file_agent)),
    )


def append(bench: Bench, stored: int, repeats: int) -> Cost:
    """Append one message (the repository call behind every message of a turn) after ``stored`` messages."""
    session_id = bench.session_id(f"append{stored:05d}")
    bench.store(session_id, stored)
    message = conversation(stored + 1)[-1].message
    file_repository = bench.file_manager(session_id)
    next_id = {"mongo": stored, "file": stored}

    def create(repository: Any, key: str) -> Callable[[Any], None]:
        def call(_: Any) -> None:
            if key == "mongo":  # with the window's position, as MongoDBSessionManager appends
                trimmed = max(0, next_id[key] + 1 - WINDOW)
                repository.create_message(
                    session_id, "default", SessionMessage(message, next_id[key]), trimmed_before=trimmed
                )
            else:
                repository.create_message(session_id, "default", SessionMessage(message, next_id[key]))
            next_id[key] += 1

        return call

    # The typical append's commands (one in 16 also moves what the window dropped out).
    return _compare(
        bench,
        f"append:{stored}",
        f"append a message, {stored:,} stored",
        "write",
        repeats,
        Contestant(create(bench.repository, "mongo"), capture=Typical(bench.recorder.take)),
        _file(bench, create(file_repository, "file")),
    )


def image_turn(bench: Bench) -> tuple[Cost, Storage]:
    """A turn whose user message carries a binary image block; and how big that block is once stored."""
    data = os.urandom(bench.settings.image_bytes)
    prompt: list[Any] = [{"text": "What is in this picture?"}, {"image": {"format": "png", "source": {"bytes": data}}}]
    ids: dict[str, list[str]] = {"mongo": [], "file": []}

    def fresh(make: Callable[[str], SessionManager], key: str) -> Callable[[int], Agent]:
        def build(_: int) -> Agent:
            ids[key].append(bench.session_id("image"))
            return new_agent(make(ids[key][-1]))

        return build

    cost = _compare(
        bench,
        "image",
        f"one turn whose prompt holds a {len(data) // 1024} KB image",
        "write",
        max(3, bench.settings.repeats // 3),
        _mongo(bench, lambda agent: agent(prompt), fresh(bench.manager, "mongo")),
        _file(bench, lambda agent: agent(prompt), fresh(bench.file_manager, "file")),
    )
    document = bench.repository.collection.find_one(
        {"_id": ids["mongo"][-1]},
        {"agents.default.messages": {"$slice": [0, 1]}, "agents.default.message_count": 1},
    )
    assert document is not None
    entry = document["agents"]["default"]["messages"][0]
    # Above binary_offload_bytes: the message holds a reference, a chunk document the bytes.
    assert entry["message"]["content"][1]["image"]["source"]["bytes"].subtype == REFERENCE_SUBTYPE
    chunk = bench.repository.overflow.find_one({"session_id": ids["mongo"][-1], "data": {"$exists": True}})
    assert chunk is not None and chunk["data"] == data
    bench.recorder.take()
    file_path = os.path.join(
        bench.storage_dir, f"session_{ids['file'][-1]}", "agents", "agent_default", "messages", "message_0.json"
    )
    storage = Storage(
        raw=len(data),
        sent=cost.traffic.sizes[cost.traffic.commands.index("insert")],  # the chunk's insert
        stored=len(bson.encode(chunk)),
        file_stored=os.path.getsize(file_path),
    )
    return cost, storage


# ----------------------------------------------------------------------------------- long sessions


def _long_repository(bench: Bench, collection_name: str) -> MongoDBSessionRepository:
    """A repository whose sessions move old messages out at ``LONG_THRESHOLD``, in a collection of its own."""
    return MongoDBSessionRepository(
        client=bench.client,
        database_name=bench.database_name,
        collection_name=collection_name,
        overflow_threshold_bytes=LONG_THRESHOLD,
    )


def _append_all(
    bench: Bench, repository: MongoDBSessionRepository, session_id: str, messages: list[SessionMessage], kind: str
) -> list[Append]:
    """Append ``messages`` one by one through the repository, recording each append's commands and time.

    Each append is recorded as ``kind``, or as ``"image"`` if its message holds an image.
    """
    appends = []
    bench.recorder.take()
    for message in messages:
        start = time.perf_counter()
        repository.create_message(session_id, "default", message)
        elapsed = (time.perf_counter() - start) * 1000
        has_image = any("image" in block for block in message.message["content"])
        appends.append(Append("image" if has_image else kind, bench.recorder.take(), elapsed))
    return appends


def _stored_layout(bench: Bench, repository: MongoDBSessionRepository, session_id: str) -> tuple[int, int, int, int]:
    """``(bytes stored, messages moved out, buckets, offloaded values)`` of a session, document and overflow."""
    document = next(
        repository.collection.aggregate(
            [
                {"$match": {"_id": session_id}},
                {
                    "$project": {
                        "size": {"$bsonSize": "$$ROOT"},
                        "moved": {"$ifNull": ["$agents.default.overflow_count", 0]},
                        "buckets": {"$size": {"$ifNull": ["$agents.default.overflow", []]}},
                    }
                },
            ]
        )
    )
    sizes = {
        group["_id"]: group
        for group in repository.overflow.aggregate(
            [
                {"$match": {"session_id": session_id}},
                {"$group": {"_id": "$kind", "bytes": {"$sum": {"$bsonSize": "$$ROOT"}}, "count": {"$sum": 1}}},
            ]
        )
    }
    bench.recorder.take()
    stored = int(document["size"]) + sum(int(group["bytes"]) for group in sizes.values())
    blobs = int(sizes.get("blob", {}).get("count", 0))
    return stored, int(document["moved"]), int(document["buckets"]), blobs


def _restore_window(
    bench: Bench, repository: MongoDBSessionRepository, session_id: str, history: str, stored: int, window: int
) -> LongRestore:
    """A fresh ``MongoDBSessionManager`` + ``Agent(...)`` restoring the last ``window`` of ``stored`` messages."""
    repository.update_agent(session_id, stored_agent(stored, window))
    stored_bytes, moved, buckets, blobs = _stored_layout(bench, repository, session_id)
    restored: list[Agent] = []

    def mongo(_: Any) -> None:
        manager = MongoDBSessionManager(
            session_id,
            client=bench.client,
            database_name=bench.database_name,
            collection_name=repository.collection_name,
            overflow_threshold_bytes=LONG_THRESHOLD,
        )
        restored[:] = [new_agent(manager, window)]

    (timing, traffic), (floor, _) = interleave(bench.settings.repeats, [_mongo(bench, mongo), _floor(bench, "read")])
    messages = restored[0].messages
    first = max(0, stored - window)
    assert len(messages) == stored - first, (len(messages), stored, window)
    assert messages[0]["content"][0]["text"].startswith(f"[{first:05d}]"), messages[0]["content"][0]
    return LongRestore(
        history=history,
        stored=stored,
        stored_bytes=stored_bytes,
        moved=moved,
        buckets=buckets,
        blobs=blobs,
        window=window,
        restored_bytes=len(bson.encode({"messages": messages})),
        traffic=traffic,
        timing=timing,
        floor=floor,
    )


def long_text_session(bench: Bench) -> tuple[list[LongRestore], list[Append]]:
    """One long working session, appended through the repository and restored at each checkpoint."""
    repository = _long_repository(bench, "long_text")
    session_id = bench.session_id("long")
    repository.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    repository.create_agent(session_id, stored_agent(0))
    restores: list[LongRestore] = []
    appends: list[Append] = []
    stored = 0
    for checkpoint in bench.settings.long_checkpoints:
        appends += _append_all(bench, repository, session_id, long_conversation(stored, checkpoint), "text")
        stored = checkpoint
        for window in bench.settings.long_windows:
            restores.append(_restore_window(bench, repository, session_id, "text", stored, window))
    return restores, appends


def image_session(bench: Bench) -> tuple[list[LongRestore], list[Append], Offloaded]:
    """A conversation with a large image in every ``IMAGE_EVERY``-th message, restored at each checkpoint."""
    size = bench.settings.offloaded_image_bytes
    repository = _long_repository(bench, "long_images")
    assert size > repository.binary_offload_bytes, "the image session is about images stored outside the document"
    session_id = bench.session_id("images")
    repository.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    repository.create_agent(session_id, stored_agent(0))
    restores: list[LongRestore] = []
    appends: list[Append] = []
    stored = 0
    for checkpoint in bench.settings.image_checkpoints:
        messages = image_conversation(stored, checkpoint * IMAGE_EVERY, size)
        appends += _append_all(bench, repository, session_id, messages, "text beside images")
        stored = checkpoint * IMAGE_EVERY
        for window in bench.settings.image_windows:
            restores.append(_restore_window(bench, repository, session_id, "images", stored, window))
    # How the first image is stored: its message entry holds a reference, its bytes are in a chunk document.
    document = repository.collection.find_one(
        {"_id": session_id},
        {"agents.default.messages": {"$slice": [0, 1]}, "agents.default.message_count": 1},
    )
    assert document is not None
    entry = document["agents"]["default"]["messages"][0]
    assert entry["message"]["content"][1]["image"]["source"]["bytes"].subtype == REFERENCE_SUBTYPE
    chunks = next(
        repository.overflow.aggregate(
            [
                {"$match": {"session_id": session_id, "kind": "blob"}},
                {"$limit": 1},
                {"$project": {"size": {"$bsonSize": "$$ROOT"}}},
            ]
        )
    )
    bench.recorder.take()
    last_image = [append for append in appends if append.kind == "image"][-1]
    offloaded = Offloaded(
        raw=size, sent=last_image.traffic.sent, chunks=int(chunks["size"]), entry=len(bson.encode(entry))
    )
    assert offloaded.chunks < size + 1024, "one chunk document per image of this size"
    return restores, appends, offloaded


# --------------------------------------------------------------------------------------- requests


def client_cost(bench: Bench) -> ClientCost:
    """What a new client costs by itself: ``MongoClient(uri)`` + one ``find_one`` + ``close()``."""

    def with_new_client(_: Any) -> None:
        client: MongoClient[dict[str, Any]] = MongoClient(bench.uri, event_listeners=[bench.recorder])
        client[bench.database_name]["floor"].find_one({"_id": "floor"})
        client.close()

    (new_client, traffic), (pooled, _) = interleave(
        bench.settings.repeats, [_mongo(bench, with_new_client), _floor(bench, "read")]
    )
    return ClientCost(new_client, pooled, traffic)


class _Design:
    """One way of getting a manager in a request handler."""

    def __init__(self, name: str, build: Callable[[str], MongoDBSessionManager]) -> None:
        self.name = name
        self.build = build
        self.after_request: Callable[[MongoDBSessionManager], None] = lambda manager: None
        self.setup: list[float] = []
        self.request: list[float] = []
        self.traffic: list[Traffic] = []


def per_request(bench: Bench) -> list[RequestCost]:
    """A request = manager for an existing session + ``Agent(...)`` + one turn; three ways of getting the manager.

    The designs take turns request by request, so a busy moment of the machine hits all of them alike.
    """
    kept: list[MongoDBSessionManager] = []

    # 1. A new MongoClient per request, closed at the end of it (the reference design's starting point).
    def new_client(session_id: str) -> MongoDBSessionManager:
        client: MongoClient[dict[str, Any]] = MongoClient(bench.uri, event_listeners=[bench.recorder])
        return MongoDBSessionManager(session_id, client=client, database_name=bench.database_name)

    # 2. A manager built from a connection string per request and never closed, as Strands apps
    #    usually do: the library hands every such manager the same process-wide client.
    def connection_string(session_id: str) -> MongoDBSessionManager:
        manager = MongoDBSessionManager(
            session_id, connection_string=bench.uri, database_name=bench.database_name, event_listeners=[bench.recorder]
        )
        kept.append(manager)
        return manager

    # 3. The global factory, initialised once at start-up.
    def factory(session_id: str) -> MongoDBSessionManager:
        return get_global_factory().create_session_manager(session_id)

    designs = [
        _Design("new MongoClient per request (closed after it)", new_client),
        _Design("MongoDBSessionManager(connection_string=...) per request", connection_string),
        _Design("global factory: create_session_manager()", factory),
    ]
    designs[0].after_request = lambda manager: manager.mongodb_repository.client.close()
    close_global_factory()
    initialize_global_factory(bench.uri, database_name=bench.database_name, event_listeners=[bench.recorder])
    try:
        sessions = [[bench.session_id("request") for _ in range(8)] for _ in designs]
        for design, ids in zip(designs, sessions, strict=True):
            for session_id in ids:  # every session exists and holds one turn; every client is warm
                manager = design.build(session_id)
                new_agent(manager)(USER_TEXT)
                design.after_request(manager)
        bench.recorder.take()
        for index in range(bench.settings.requests):
            for design, ids in zip(designs, sessions, strict=True):
                start = time.perf_counter()
                manager = design.build(ids[index % len(ids)])
                agent = new_agent(manager)
                built = time.perf_counter()
                agent(USER_TEXT)
                design.after_request(manager)
                done = time.perf_counter()
                design.setup.append((built - start) * 1000)
                design.request.append((done - start) * 1000)
                design.traffic.append(bench.recorder.take())
    finally:
        close_global_factory()
        for manager in kept:
            manager.close()
    return [
        RequestCost(design.name, design.traffic, Timing(tuple(design.setup)), Timing(tuple(design.request)))
        for design in designs
    ]


# ------------------------------------------------------------------------------------- throughput


def throughput(bench: Bench, threads: int, sessions_per_thread: int) -> Throughput:
    """``threads`` threads, each serving ``turns_per_session`` requests for each of its sessions, one pool."""
    turns = bench.settings.turns_per_session
    close_global_factory()
    initialize_global_factory(bench.uri, database_name=bench.database_name)
    try:
        prefix = bench.session_id(f"load{threads}")
        latencies: list[float] = []
        lock = threading.Lock()
        errors: list[BaseException] = []
        barrier = threading.Barrier(threads + 1)

        def worker(thread: int) -> None:
            ids = [f"{prefix}-{thread}-{s}" for s in range(sessions_per_thread)]
            mine = []
            try:
                barrier.wait()
                for _ in range(turns):
                    for session_id in ids:
                        start = time.perf_counter()
                        agent = new_agent(get_global_factory().create_session_manager(session_id))
                        agent(USER_TEXT)
                        mine.append((time.perf_counter() - start) * 1000)
            except BaseException as e:  # reported after the run
                errors.append(e)
            with lock:
                latencies.extend(mine)

        workers = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
        for thread in workers:
            thread.start()
        before = MongoDBConnectionPool.get_pool_stats()
        barrier.wait()
        start = time.perf_counter()
        for thread in workers:
            thread.join()
        seconds = time.perf_counter() - start
        after = MongoDBConnectionPool.get_pool_stats()
        if errors:
            raise errors[0]
        return Throughput(
            threads=threads,
            sessions=threads * sessions_per_thread,
            turns=len(latencies),
            seconds=seconds,
            commands=after["commands_started"] - before["commands_started"],
            connections_created=after["connections_created"] - before["connections_created"],
            peak_open=after["peak_connections_open"],
            peak_checked_out=after["peak_connections_checked_out"],
            max_pool_size=after["max_pool_size"],
            latency=Timing(tuple(latencies)),
        )
    finally:
        close_global_factory()


# ------------------------------------------------------------------------------------------ durability


def durability(bench: Bench) -> list[Durability]:
    """A turn and an append with the default write concern (``j: true``) and with ``journal=False``."""
    recorder = Recorder()
    options = {**resolve_client_options(bench.uri, {"journal": False}), "event_listeners": [recorder]}
    results: list[Durability] = []
    with MongoClient(bench.uri, **options) as unjournaled:

        def manager(client: MongoClient[dict[str, Any]]) -> Callable[[int], Agent]:
            def build(_: int) -> Agent:
                session_id = bench.session_id("durable")
                return new_agent(MongoDBSessionManager(session_id, client=client, database_name=bench.database_name))

            return build

        (journaled_turn, journaled_traffic), (plain_turn, plain_traffic) = interleave(
            bench.settings.repeats,
            [
                Contestant(_turn, manager(bench.client), bench.recorder.take),
                Contestant(_turn, manager(unjournaled), recorder.take),
            ],
        )
        results.append(
            Durability("one turn (two appends)", journaled_turn, plain_turn, journaled_traffic, plain_traffic)
        )
        (journaled_write, journaled_traffic), (plain_write, plain_traffic) = interleave(
            bench.settings.repeats * 2,
            [
                Contestant(
                    lambda _: bench.floor.update_one({"_id": "floor"}, {"$inc": {"n": 1}}), capture=bench.recorder.take
                ),
                Contestant(
                    lambda _: unjournaled[bench.database_name]["floor"].update_one(
                        {"_id": "floor"}, {"$inc": {"n": 1}}
                    ),
                    capture=recorder.take,
                ),
            ],
        )
        results.append(
            Durability(
                "pymongo floor: update_one by _id", journaled_write, plain_write, journaled_traffic, plain_traffic
            )
        )
    return results


# ------------------------------------------------------------------------------------------- all


def run_all(bench: Bench, progress: Callable[[str], None]) -> Results:
    progress("pymongo floor")
    floor_read, floor_write = floors(bench)
    results = Results(floor_read, floor_write)
    progress("Strands without a session manager")
    results.strands_alone = strands_alone(bench)
    for stored in bench.settings.restore_sizes:
        progress(f"restore with {stored} stored messages")
        results.costs.append(restore(bench, stored))
    progress("turns")
    results.costs.append(turn(bench))
    progress("durability: journaled writes against unjournaled ones")
    results.durability = durability(bench)
    results.costs.append(turn_with_full_window(bench))
    results.costs.append(sync_unchanged(bench))
    for stored, repeats in bench.settings.append_repeats:
        progress(f"append at {stored} stored messages")
        results.costs.append(append(bench, stored, repeats))
    progress("binary block")
    cost, results.storage = image_turn(bench)
    results.costs.append(cost)
    progress(f"a long session, appended to {bench.settings.long_checkpoints[-1]:,} messages")
    restores, appends = long_text_session(bench)
    results.long_restores += restores
    results.appends += appends
    progress(f"a session with {bench.settings.image_checkpoints[-1]} images stored outside its document")
    restores, appends, results.offloaded = image_session(bench)
    results.long_restores += restores
    results.appends += appends
    progress("a manager per request")
    results.client_cost = client_cost(bench)
    results.requests = per_request(bench)
    for threads, sessions in bench.settings.throughput:
        progress(f"throughput, {threads} thread(s) x {sessions} sessions")
        results.throughput.append(throughput(bench, threads, sessions))
    progress("MongoDBStorage against LocalFileStorage and S3Storage")
    results.unified_storage = storage_costs(bench)
    settings = bench.settings
    progress(f"history lengths {settings.history_lengths}: ours, FileSessionManager, S3SessionManager (moto)")
    results.history, results.window_restores = history_costs(
        bench,
        settings.history_lengths,
        settings.image_history_lengths,
        settings.history_windows,
        settings.history_repeats,
    )
    progress("cold start: the first manager of a fresh process")
    results.cold_start = cold_start(bench, settings.cold_starts)
    return results

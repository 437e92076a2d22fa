"""How an append and a restore cost as the history grows: ours against Strands' ``FileSessionManager``
and ``S3SessionManager`` (on moto's in-process fake S3), in the same run.

Each history is stored as each backend keeps it after that many messages of an agent whose sliding
window holds ``HISTORY_WINDOW`` of them: for MongoDB, the window (and fewer than ``MOVE_BATCH``
trimmed messages) in the session document and the rest in buckets, binaries above
``binary_offload_bytes`` in chunk documents, the layout the library's moves leave (built directly:
appending 20,000 messages one by one takes most of an hour on the test server); for the file and
S3 managers, one file or object per message, written by the manager itself. Then appends are timed
there, each taking turns with the other backends and the pymongo floor, through the repository
call the manager makes (with the window's position, as ``MongoDBSessionManager`` passes it).
"""

from __future__ import annotations

import os
import random
import shutil
import tempfile
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
import bson
from strands.session.s3_session_manager import S3SessionManager
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionManager, MongoDBSessionRepository
from mongodb_session_manager._codec import encode_entry
from mongodb_session_manager._documents import agent_to_fields, message_to_entry, session_to_document
from mongodb_session_manager._overflow import bucket_document, chunk_documents, entry_size, split_into_buckets

from ._files import CountingFileSessionManager, FileIO
from ._harness import Contestant, Timing, Traffic, Typical, interleave

if TYPE_CHECKING:
    from ._scenarios import Bench

#: The sliding window of the agents in these scenarios (Strands' default is 40).
HISTORY_WINDOW = 40
#: In an image history, every ``HISTORY_IMAGE_EVERY``-th message carries an image of this size
#: (above the default ``binary_offload_bytes``, so it is stored outside the session document).
HISTORY_IMAGE_EVERY = 10
HISTORY_IMAGE_BYTES = 80 * 1024
_BUCKET = "msm-bench-history"
_REGION = "us-east-1"


@dataclass
class HistoryPoint:
    """Appending at one history length, on one backend."""

    backend: str  # "mongodb", "file", "s3"
    kind: str  # "text", "images"
    stored: int  # messages stored before the appends
    timing: Timing
    floor: Timing  # the pymongo update_one floor, timed alongside
    rewritten: int  # bytes the backend rewrites per append (MongoDB: the session document)
    traffic: Traffic | None = None  # MongoDB only: the typical append's
    moves: int = 0  # MongoDB only: appends (of the timed ones) that also moved old messages out


@dataclass
class WindowRestore:
    """Restoring an agent whose window holds ``window`` messages, on one backend."""

    backend: str
    window: int
    stored: int
    commands: int  # MongoDB commands; files or objects read otherwise
    received: int  # bytes received (MongoDB replies, files read, object bodies)
    timing: Timing


def _message(index: int, kind: str) -> SessionMessage:
    from ._scenarios import ASSISTANT_TEXT, USER_TEXT

    content: list[Any] = [{"text": f"[{index:05d}] " + (USER_TEXT if index % 2 == 0 else ASSISTANT_TEXT)}]
    if kind == "images" and index % HISTORY_IMAGE_EVERY == 0:
        data = random.Random(index).randbytes(HISTORY_IMAGE_BYTES)
        content.append({"image": {"format": "png", "source": {"bytes": data}}})
    return SessionMessage({"role": "user" if index % 2 == 0 else "assistant", "content": content}, index)


def _agent(stored: int, window: int = HISTORY_WINDOW) -> SessionAgent:
    from ._scenarios import stored_agent

    return stored_agent(stored, window)


class _Backends:
    """The three backends, their counters, and where each keeps its data."""

    def __init__(self, bench: Bench, stack: ExitStack) -> None:
        from moto import mock_aws  # development dependency, only for this comparison

        self.bench = bench
        self.repository = MongoDBSessionRepository(
            client=bench.client, database_name=bench.database_name, collection_name="history"
        )
        self.folder = tempfile.mkdtemp(prefix="msm-bench-history-")
        stack.callback(shutil.rmtree, self.folder, True)
        self.file_io = FileIO()
        for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
            os.environ.setdefault(name, value)
        stack.enter_context(mock_aws())
        self.s3_client = boto3.client("s3", region_name=_REGION)
        self.s3_client.create_bucket(Bucket=_BUCKET)

    def file(self, session_id: str) -> CountingFileSessionManager:
        return CountingFileSessionManager(session_id, self.folder, self.file_io)

    def s3(self, session_id: str) -> S3SessionManager:
        return S3SessionManager(session_id, bucket=_BUCKET, region_name=_REGION)

    # ------------------------------------------------------------------ storing a history

    def store_mongodb(self, session_id: str, stored: int, kind: str) -> None:
        """The session as the library keeps it after ``stored`` messages (see the module docstring)."""
        repository = self.repository
        offload = repository.binary_offload_bytes
        entries, sizes = [], []
        for index in range(stored):
            entry = message_to_entry(_message(index, kind))
            blobs, size = encode_entry(session_id, entry, offload, "bench")
            if blobs:
                repository.overflow.insert_many(
                    [doc for ref, data in blobs for doc in chunk_documents(session_id, ref, data, None)]
                )
            entries.append(entry)
            sizes.append(size)
        moved = max(0, stored - HISTORY_WINDOW)
        descriptors = []
        for start, count in split_into_buckets(sizes[:moved]):
            bucket, descriptor = bucket_document(
                session_id, "default", start, entries[start : start + count], sum(sizes[start : start + count]), None
            )
            repository.overflow.insert_one(bucket)
            descriptors.append(descriptor)
        document = session_to_document(Session(session_id=session_id, session_type=SessionType.AGENT))
        document["agents"]["default"] = {
            **agent_to_fields(_agent(stored)),
            "message_count": stored,
            "messages": entries[moved:],
            **({"overflow_count": moved, "overflow": descriptors} if moved else {}),
        }
        document["companions"] = True
        document["size_estimate"] = len(bson.encode(document)) + 32
        repository.collection.insert_one(document)
        assert sum(entry_size(e) for e in entries[moved:]) < len(bson.encode(document))

    def store_sdk(self, manager: Any, session_id: str, stored: int, kind: str) -> None:
        """A history written by Strands' own manager (which created the session): one file or object per message."""
        manager.session_repository.create_agent(session_id, _agent(stored))
        for index in range(stored):
            manager.session_repository.create_message(session_id, "default", _message(index, kind))

    # ------------------------------------------------------------------ what an append rewrites

    def document_size(self, session_id: str) -> int:
        document = next(
            self.repository.collection.aggregate(
                [{"$match": {"_id": session_id}}, {"$project": {"s": {"$bsonSize": "$$ROOT"}}}]
            )
        )
        self.bench.recorder.take()
        return int(document["s"])

    def object_size(self, session_id: str, message_id: int) -> int:
        key = f"session_{session_id}/agents/agent_default/messages/message_{message_id}.json"
        return int(self.s3_client.head_object(Bucket=_BUCKET, Key=key)["ContentLength"])


def _appends(backends: _Backends, stored: int, kind: str, repeats: int) -> list[HistoryPoint]:
    bench = backends.bench
    from ._scenarios import _floor

    session = f"h-{kind}-{stored:05d}"
    backends.store_mongodb(session, stored, kind)
    file_manager, s3_manager = backends.file(session), backends.s3(session)
    backends.store_sdk(file_manager, session, stored, kind)
    backends.store_sdk(s3_manager, session, stored, kind)
    backends.file_io.take()
    next_id = {"mongodb": stored, "file": stored, "s3": stored}
    repository = backends.repository

    def append(name: str) -> Callable[[Any], None]:
        def call(_: Any) -> None:
            message = _message(next_id[name], kind)
            if name == "mongodb":
                # As MongoDBSessionManager appends: with the position of the agent's window.
                trimmed = max(0, next_id[name] + 1 - HISTORY_WINDOW)
                repository.create_message(session, "default", message, trimmed_before=trimmed)
            elif name == "file":
                file_manager.session_repository.create_message(session, "default", message)
            else:
                s3_manager.session_repository.create_message(session, "default", message)
            next_id[name] += 1

        return call

    typical = Typical(bench.recorder.take)
    (mongo, traffic), (floor, _), (file, _), (s3, _) = interleave(
        repeats,
        [
            Contestant(append("mongodb"), capture=typical),
            _floor(bench, "write"),
            Contestant(append("file")),
            Contestant(append("s3")),
        ],
    )
    written = backends.file_io.take()
    s3_written = sum(backends.object_size(session, message_id) for message_id in range(stored, next_id["s3"]))
    return [
        HistoryPoint("mongodb", kind, stored, mongo, floor, backends.document_size(session), traffic, typical.others),
        HistoryPoint("file", kind, stored, file, floor, written.written_bytes // max(1, written.writes)),
        HistoryPoint("s3", kind, stored, s3, floor, s3_written // max(1, next_id["s3"] - stored)),
    ]


def _restores(backends: _Backends, stored: int, windows: tuple[int, ...], repeats: int) -> list[WindowRestore]:
    """Restores of one text history (``stored`` messages) with each window size."""
    from ._scenarios import new_agent

    bench = backends.bench
    results = []
    session = f"r-{stored:05d}"
    backends.store_mongodb(session, stored, "text")
    backends.store_sdk(backends.file(session), session, stored, "text")
    backends.store_sdk(backends.s3(session), session, stored, "text")
    repository = backends.repository
    for window in windows:
        for manager in (repository, backends.file(session).session_repository):
            manager.update_agent(session, _agent(stored, window))
        backends.s3(session).session_repository.update_agent(session, _agent(stored, window))
        s3_bytes = _S3Bytes()

        def mongo(_: Any, window: int = window) -> None:
            manager = MongoDBSessionManager(
                session, client=bench.client, database_name=bench.database_name, collection_name="history"
            )
            assert len(new_agent(manager, window).messages) == window

        def file(_: Any, window: int = window) -> None:
            assert len(new_agent(backends.file(session), window).messages) == window

        def s3(_: Any, window: int = window, s3_bytes: _S3Bytes = s3_bytes) -> None:
            manager = backends.s3(session)
            manager.client.meta.events.register("after-call.s3.GetObject", s3_bytes.count)
            assert len(new_agent(manager, window).messages) == window

        bench.recorder.take()
        backends.file_io.take()
        (mongo_timing, traffic), (file_timing, _), (s3_timing, _) = interleave(
            repeats,
            [Contestant(mongo, capture=bench.recorder.take), Contestant(file), Contestant(s3, capture=s3_bytes.take)],
        )
        file_io = backends.file_io.take()
        runs = repeats + 1  # the warm-up run is counted too
        s3_reads, s3_received = s3_bytes.total()
        results += [
            WindowRestore("mongodb", window, stored, traffic.count, traffic.received, mongo_timing),
            WindowRestore("file", window, stored, file_io.reads // runs, file_io.read_bytes // runs, file_timing),
            WindowRestore("s3", window, stored, s3_reads // runs, s3_received // runs, s3_timing),
        ]
    return results


class _S3Bytes:
    """Objects read by S3SessionManager and their sizes (botocore's after-call event)."""

    def __init__(self) -> None:
        self.reads = 0
        self.bytes = 0

    def count(self, http_response: Any = None, parsed: Any = None, **kwargs: Any) -> None:
        self.reads += 1
        self.bytes += int((parsed or {}).get("ContentLength") or 0)

    def take(self) -> tuple[int, int]:
        return self.reads, self.bytes

    def total(self) -> tuple[int, int]:
        return self.reads, self.bytes


def history_costs(
    bench: Bench, lengths: tuple[int, ...], image_lengths: tuple[int, ...], windows: tuple[int, ...], repeats: int
) -> tuple[list[HistoryPoint], list[WindowRestore]]:
    """Append cost at each history length (text, and with images), and restore cost per window."""
    with ExitStack() as stack:
        backends = _Backends(bench, stack)
        points: list[HistoryPoint] = []
        for kind, kind_lengths in (("text", lengths), ("images", image_lengths)):
            for stored in kind_lengths:
                points += _appends(backends, stored, kind, repeats)
        restores = _restores(backends, max(lengths), windows, repeats)
        return points, restores


@dataclass
class ColdStart:
    """The first manager of a fresh process (a Lambda cold start) against the next one."""

    cold_commands: tuple[str, ...]
    warm_commands: tuple[str, ...]
    cold_ms: float  # the client's first connection included
    warm_ms: float


_COLD_START = """
import json, sys, time
from pymongo import MongoClient, monitoring
from mongodb_session_manager import MongoDBSessionManager
from mongodb_session_manager.mongodb_connection_pool import resolve_client_options
from benchmarks._scenarios import new_agent

class Names(monitoring.CommandListener):
    names = []
    def started(self, event): self.names.append(event.command_name)
    def succeeded(self, event): pass
    def failed(self, event): pass

uri, database, session_id = sys.argv[1:4]
names = Names()
client = MongoClient(uri, event_listeners=[names], **resolve_client_options(uri, {}))
runs = []
for _ in range(2):
    names.names.clear()
    start = time.perf_counter()
    new_agent(MongoDBSessionManager(session_id, client=client, database_name=database))
    runs.append([list(names.names), (time.perf_counter() - start) * 1000])
print(json.dumps(runs))
"""


def cold_start(bench: Bench, runs: int) -> ColdStart:
    """Restore a stored session in ``runs`` fresh processes: the first manager, then a second one."""
    import json
    import statistics
    import subprocess
    import sys
    from pathlib import Path

    from ._scenarios import WINDOW

    session_id = bench.session_id("cold")
    bench.store(session_id, WINDOW * 2)
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    results = []
    for _ in range(runs):
        output = subprocess.run(
            [sys.executable, "-c", _COLD_START, bench.uri, bench.database_name, session_id],
            capture_output=True,
            text=True,
            env=env,
            cwd=root,
            timeout=300,
            check=True,
        ).stdout
        results.append(json.loads(output.strip().splitlines()[-1]))
    bench.recorder.take()
    return ColdStart(
        tuple(results[0][0][0]),
        tuple(results[0][1][0]),
        statistics.median(run[0][1] for run in results),
        statistics.median(run[1][1] for run in results),
    )

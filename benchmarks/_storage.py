"""``MongoDBStorage`` (Strands' unified ``Storage``) against the SDK's ``LocalFileStorage`` and
``S3Storage`` (on moto's in-process fake S3), in the same run.

Every operation is measured on MongoDB in both of Strands' calling modes (on an application's
long-lived event loop, through the per-loop ``AsyncMongoClient``; on Strands' sync bridge, a fresh
loop per call, through the pooled ``MongoClient``), with its commands and bytes counted, and on the
two SDK backends, all taking turns (``interleave``). Values: 1 KB (a small snapshot or memory file)
and 20 MB (a snapshot holding a large image: chunked in MongoDB).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import boto3
from strands._async import run_async
from strands.storage import LocalFileStorage, S3Storage

from mongodb_session_manager import MongoDBStorage

from ._harness import Contestant, Timing, Traffic, interleave
from ._report import Table, count, ms, ratio

if TYPE_CHECKING:
    from ._scenarios import Bench

SMALL = (b'{"role": "user", "content": [{"text": "Remember that I prefer dark mode."}]} ' * 13)[:1024]
LARGE = 20_000_000
LISTED = 100
MEMORY = [
    "# User preferences\nThe user prefers dark mode and short answers.",
    "# Project\nPython 3.11 with uv and ruff; OAuth for sign-in.",
    "# Travel\nFlights booked for March; hotel near the station.",
    "# Team\nStand-up at nine; reviews on Fridays.",
]
QUERY = "dark mode preferences"
_BUCKET = "msm-bench-storage"


@dataclass
class StorageOp:
    """One storage operation on MongoDB (both modes) and on the SDK's file and S3 backends."""

    operation: str
    traffic: Traffic  # MongoDB, on the application's loop
    loop: Timing
    bridge: Timing
    file: Timing
    s3: Timing


class _Backends:
    """The four contestants of each operation, and the loop the async ones run on."""

    def __init__(self, bench: Bench, stack: ExitStack) -> None:
        from moto import mock_aws  # development dependency, only for this comparison

        self.bench = bench
        self.runner = stack.enter_context(asyncio.Runner())  # one long-lived loop, as an application has
        self.folder = tempfile.mkdtemp(prefix="msm-bench-storage-")
        stack.callback(shutil.rmtree, self.folder, True)
        for name, value in (("AWS_ACCESS_KEY_ID", "bench"), ("AWS_SECRET_ACCESS_KEY", "bench")):
            os.environ.setdefault(name, value)
        stack.enter_context(mock_aws())
        self.mongo = MongoDBStorage(
            bench.uri,
            database_name=bench.database_name,
            collection_name="bench_storage",
            event_listeners=[bench.recorder],
        )
        stack.callback(self.mongo.close)
        self.file = LocalFileStorage(self.folder)
        boto3.client("s3", region_name="us-east-1").create_bucket(Bucket=_BUCKET)
        self.s3 = S3Storage(_BUCKET, region_name="us-east-1")

    def all(self) -> list[Any]:
        return [self.mongo, self.file, self.s3]

    def fill(self, operation: Callable[[Any], Awaitable[Any]]) -> None:
        """Run an untimed set-up on every backend."""
        for storage in self.all():
            self.runner.run(operation(storage))
        self.bench.recorder.take()

    def measure(
        self,
        label: str,
        operation: Callable[[Any], Awaitable[Any]],
        repeats: int,
        prepare: Callable[[Any], Awaitable[Any]] | None = None,
    ) -> StorageOp:
        """Time ``operation`` on each backend (``prepare`` runs untimed before each call)."""

        def on_loop(storage: Any) -> Contestant:
            def before(_index: int) -> None:
                if prepare is not None:
                    self.runner.run(prepare(storage))

            recorded = self.bench.recorder.take if storage is self.mongo else None
            return Contestant(lambda _: self.runner.run(_discard(operation(storage))), before, recorded)

        def on_bridge(_index: int) -> None:
            if prepare is not None:
                self.runner.run(prepare(self.mongo))
            self.bench.recorder.take()

        bridge = Contestant(lambda _: run_async(lambda: _discard(operation(self.mongo))), on_bridge)
        (loop, traffic), (bridged, _), (file, _), (s3, _) = interleave(
            repeats, [on_loop(self.mongo), bridge, on_loop(self.file), on_loop(self.s3)]
        )
        return StorageOp(label, traffic, loop, bridged, file, s3)


async def _discard(call: Awaitable[Any]) -> None:
    """Await ``call`` and drop its result: ``asyncio.Runner.run`` on the main thread builds the repr of
    what a coroutine returns (all 20 MB of it, ~0.3 s) when it handles SIGINT; that is no storage's cost."""
    await call


def storage_costs(bench: Bench) -> list[StorageOp]:
    """Write, read, delete, list and search, small and large values, on the four contestants."""
    small_repeats = bench.settings.repeats
    large_repeats = max(2, bench.settings.repeats // 5)
    large = os.urandom(LARGE)
    other = os.urandom(LARGE)
    with ExitStack() as stack:
        backends = _Backends(bench, stack)

        async def setup(storage: Any) -> None:
            await storage.write("small", SMALL)
            await storage.write("large", large)
            for n in range(LISTED):
                await storage.write(f"list/{n:04d}.json", SMALL)
            for n, text in enumerate(MEMORY * 25):
                await storage.write(f"memory/bench/note-{n:03d}.md", f"{text}\n(entry {n})".encode())

        backends.fill(setup)
        flip = [large, other]

        async def write_large(storage: Any) -> None:
            flip.reverse()
            await storage.write("large", flip[0])

        async def recreate(storage: Any) -> None:
            await storage.write("doomed", SMALL)

        return [
            backends.measure("write 1 KB (overwrite)", lambda s: s.write("small", SMALL), small_repeats),
            backends.measure("read 1 KB", lambda s: s.read("small"), small_repeats),
            backends.measure("delete 1 KB", lambda s: s.delete("doomed"), small_repeats, prepare=recreate),
            backends.measure(f"list {LISTED} keys", lambda s: s.list("list/"), small_repeats),
            backends.measure(
                f"search {len(MEMORY) * 25} memory files",
                lambda s: s.namespace("memory/bench").search(QUERY),
                small_repeats,
            ),
            backends.measure("write 20 MB (overwrite)", write_large, large_repeats),
            backends.measure("read 20 MB", lambda s: s.read("large"), large_repeats),
        ]


def _commands(traffic: Traffic) -> str:
    names: dict[str, int] = {}
    for name in traffic.commands:
        names[name] = names.get(name, 0) + 1
    listed = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in names.items())
    return f"{traffic.count} ({listed})" if traffic.count else "0"


def storage_table(ops: list[StorageOp]) -> Table:
    """The comparison table."""
    table = Table(
        "Strands' unified Storage: MongoDBStorage against LocalFileStorage and S3Storage (moto)",
        [
            "operation",
            "MongoDB commands",
            "bytes sent",
            "bytes received",
            "MongoDB ms (app loop)",
            "MongoDB ms (sync bridge)",
            "LocalFileStorage ms",
            "x file",
            "S3Storage ms (moto)",
            "x S3",
        ],
    )
    for op in ops:
        table.add(
            op.operation,
            _commands(op.traffic),
            count(op.traffic.sent),
            count(op.traffic.received),
            ms(op.loop.median),
            ms(op.bridge.median),
            ms(op.file.median),
            ratio(op.loop.median / op.file.median),
            ms(op.s3.median),
            ratio(op.loop.median / op.s3.median),
        )
    table.notes += [
        "commands and bytes: MongoDB on the application's loop (the sync bridge sends the same commands); medians of"
        " the four contestants taking turns, in one run. 'x file' and 'x S3' divide the app-loop time by theirs.",
        "MongoDB journals every write (j: true, the library's default); LocalFileStorage writes to the page cache"
        " without fsync; moto's S3 runs in this process, so S3Storage's times include boto3's request signing and"
        " parsing but no network: a real bucket adds a round trip of tens of milliseconds to each of its calls.",
        "the 20 MB value is chunked in MongoDB (3 chunks); its overwrite also deletes the chunks it replaces."
        " LocalFileStorage and S3Storage search by reading every value (KeywordSearchStrategy); MongoDBStorage asks"
        " an index for the candidates and reads only the matching values.",
        "on the SecantusDB test server, index range scans (list, search) cost in proportion to the collection's size"
        " (about 20 µs per document), where MongoDB's cost follows the matches.",
    ]
    return table

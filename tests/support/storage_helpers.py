"""Helpers for the ``MongoDBStorage`` integration tests: a command log, values, what is stored."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import bson
from pymongo import MongoClient, monitoring

from mongodb_session_manager.storage import _layout as layout


@dataclass(frozen=True)
class Command:
    """One command sent: its name, collection, BSON sizes each way, the thread that sent it."""

    name: str
    collection: Any
    sent: int
    received: int
    thread: int
    document: dict[str, Any]


class CommandLog(monitoring.CommandListener):
    """Every command a client sends, with the size of the command and of its reply.

    Give it to a storage as ``event_listeners=[log]`` (both its pooled and its async clients get it).
    """

    def __init__(self, keep_documents: bool = False) -> None:
        self._lock = threading.Lock()
        self._pending: dict[int, tuple[str, Any, int, int, dict[str, Any]]] = {}
        self._done: list[Command] = []
        self._keep = keep_documents

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        document = dict(event.command) if self._keep else {}
        entry = (event.command_name, event.command.get(event.command_name), len(bson.encode(event.command)))
        with self._lock:
            self._pending[event.request_id] = (*entry, threading.get_ident(), document)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            name, collection, sent, thread, document = self._pending.pop(event.request_id)
            self._done.append(Command(name, collection, sent, len(bson.encode(event.reply)), thread, document))

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        with self._lock:
            self._pending.pop(event.request_id, None)

    def take(self) -> list[Command]:
        """The commands completed since the last call (and forget them)."""
        with self._lock:
            done, self._done = self._done, []
        return done

    def names(self) -> list[str]:
        """Names of the commands completed since the last call (and forget them)."""
        return [command.name for command in self.take()]


def value(size: int, seed: int = 0) -> bytes:
    """``size`` bytes that differ for each seed (random, so nothing compresses or repeats)."""
    return (seed.to_bytes(4, "big") + os.urandom(size))[:size] if size else b""


def digest(data: bytes | None) -> str | None:
    return hashlib.sha256(data).hexdigest() if data is not None else None


class Stored:
    """What a storage keeps in MongoDB, read directly (not through the storage)."""

    def __init__(
        self, client: MongoClient[dict[str, Any]], database_name: str, collection_name: str = "storage"
    ) -> None:
        self.keys = client[database_name][collection_name]
        self.chunks = client[database_name][f"{collection_name}_chunks"]

    def document(self, key: str) -> dict[str, Any] | None:
        return self.keys.find_one({"_id": key}, {"data": 0, "terms": 0})

    def chunk_ids(self) -> list[str]:
        return sorted(document["_id"] for document in self.chunks.find({}, {"_id": 1}))

    def current_chunk_ids(self) -> list[str]:
        """The chunk ids the live key documents name (what must exist)."""
        ids: list[str] = []
        for document in self.keys.find({"version": {"$exists": True}}, {"version": 1, "chunks": 1}):
            ids += layout.chunk_ids(document["version"], document["chunks"])
        return sorted(ids)

    def recorded_chunk_ids(self) -> list[str]:
        """The chunk ids the pending entries name (what a cleanup will delete)."""
        ids: list[str] = []
        for entries in self.pending().values():
            for entry in entries:
                ids += layout.chunk_ids(entry["v"], entry["n"])
        return sorted(ids)

    def settled_chunk_ids(self, timeout: float = 10.0) -> list[str]:
        """The chunk ids once no command still on its way to the server adds any (a cancelled insert
        can land after its writer gave up)."""
        deadline = time.monotonic() + timeout
        previous = self.chunk_ids()
        while time.monotonic() < deadline:
            time.sleep(0.3)
            current = self.chunk_ids()
            if current == previous:
                return current
            previous = current
        return previous

    def assert_recorded(self) -> None:
        """Nothing is lost track of: every chunk belongs to a current value or to a pending entry."""
        assert set(self.settled_chunk_ids()) <= set(self.current_chunk_ids()) | set(self.recorded_chunk_ids())

    def pending(self) -> dict[str, list[dict[str, Any]]]:
        """Pending entries by key (what is left to clean up)."""
        return {document["_id"]: document["pending"] for document in self.keys.find({"pending": {"$exists": True}})}

    def assert_clean(self) -> None:
        """Nothing left over: every chunk belongs to a current value, and nothing is pending."""
        assert self.chunk_ids() == self.current_chunk_ids()
        assert self.pending() == {}

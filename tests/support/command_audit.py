"""The command audit: every command the library sends for one session or one storage key must target
one shard of a sharded cluster, across the whole test suite.

A pymongo ``CommandListener`` registered for every client the tests (and the library) build
(``pymongo.monitoring.register``) looks at each data command (``find``, ``aggregate``, ``update``,
``delete``, ``findAndModify``, ``insert``, ``count``, ``distinct``). A command is the library's when a
frame of ``mongodb_session_manager`` is on the stack when it starts (commands run in the calling
thread, and an awaiting coroutine's frames are on the stack too); the library object found there
tells which of its collections the command is on (sessions, overflow, storage keys, storage chunks),
hence its shard key (``SHARD_KEYS``). The command must then carry an *equality* on that key: the
filter (an aggregate's first ``$match``) of every statement, every inserted document. A test's own
direct reads and writes of a collection have no library frame, so they are never audited: no marker
is needed for them, and the allow-list holds only what the library deliberately scatters (below).

An offending command fails the test that caused it, at its teardown, with the list of commands.
Subprocesses the tests start call :func:`install_in_worker`: they record offences in the directory
named by ``MSM_COMMAND_AUDIT_DIR``, which the parent reads at the teardown of the test.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pymongo import monitoring
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.collection import Collection

import mongodb_session_manager
from mongodb_session_manager import SHARD_KEYS

ENV = "MSM_COMMAND_AUDIT_DIR"
LIBRARY = str(Path(mongodb_session_manager.__file__).resolve().parent)
#: Data commands, and where each keeps its statements.
AUDITED = frozenset({"find", "aggregate", "update", "delete", "findandmodify", "insert", "count", "distinct"})


@dataclass(frozen=True)
class Allowed:
    """A command the library sends untargeted on purpose, and why."""

    name: str
    reason: str
    applies: Callable[[str, str, Mapping[str, Any], list[tuple[str, str]]], bool]


def _from(*functions: str) -> Callable[[str, str, Mapping[str, Any], list[tuple[str, str]]], bool]:
    wanted = {tuple(function.split(":")) for function in functions}
    return lambda role, name, command, origin: any(frame in wanted for frame in origin)


def _storage_range(role: str, name: str, command: Mapping[str, Any], origin: list[tuple[str, str]]) -> bool:
    """Ranges of ``MongoDBStorage`` keys (list, search, repair), and the search's read of its hits by
    their ids: recognised by shape, as they may run in a worker thread where the caller's frames are
    not on the stack."""
    if role != "storage" or name not in ("find", "aggregate"):
        return False
    query = command.get("filter") if name == "find" else (command.get("pipeline") or [{}])[0].get("$match")
    key = (query or {}).get("_id")
    return isinstance(key, dict) and ("$gte" in key or "$in" in key)


def _legacy_chunks(role: str, name: str, command: Mapping[str, Any], origin: list[tuple[str, str]]) -> bool:
    """The storage's read of chunks written before chunks carried their key (by shape, see above)."""
    query = command.get("filter") or {}
    return role == "storage_chunks" and name == "find" and query.get("key") == {"$exists": False}


ALLOWED: tuple[Allowed, ...] = (
    Allowed(
        "list_sessions",
        "a listing scatters by nature; it pages by _id (stable, unique order)",
        _from("_extensions.py:list_sessions"),
    ),
    Allowed(
        "MongoDBStorage list/search/repair",
        "ranges of keys (a listing, a keyword search, the repair of every key due) and the search's read of "
        "its hits' values by id: Storage.list and search scatter by nature",
        _storage_range,
    ),
    Allowed(
        "MongoDBStorage legacy chunks",
        "chunks stored before they carried their key (no shard key to name) are read by id, only when a "
        "value's targeted chunk read came back short",
        _legacy_chunks,
    ),
    Allowed(
        "TTL change",
        "changing the collection's TTL is a one-off migration of every session with overflow documents",
        _from("_indexes.py:_change_ttl"),
    ),
    Allowed(
        "operator CLI scans",
        "the operator tool walks, counts and measures whole collections (ls, stats, verify, export of all)",
        _from(
            "_source.py:session_ids",
            "_source.py:count",
            "_commands.py:_summaries",
            "_commands.py:_session_sizes",
            "_commands.py:cmd_stats",
            "_commands.py:_storage_sizes",
            "_verify.py:collection_orphans",
        ),
    ),
    Allowed(
        "verify's reads of referenced documents",
        "verify reads the buckets and chunks a session refers to by id alone, to find ones filed under "
        "another session (damage); the library's own reads name the session",
        _from("_verify.py:_chunk_batch", "_verify.py:_descriptors"),
    ),
)


@dataclass
class Offence:
    role: str
    command: str
    origin: str
    detail: str

    def __str__(self) -> str:
        return f"{self.command} on {self.role} from {self.origin}: {self.detail}"


def _is_equality(value: Any) -> bool:
    if isinstance(value, dict):
        if set(value) == {"$eq"}:
            return True
        return not any(str(key).startswith("$") for key in value)
    return not isinstance(value, list)


def _targeted(query: Any, field: str) -> bool:
    return isinstance(query, Mapping) and field in query and _is_equality(query[field])


def statements(name: str, command: Mapping[str, Any]) -> Iterator[tuple[str, Any]]:
    """``(kind, query or document)`` of every statement of a data command."""
    if name == "find":
        yield "filter", command.get("filter") or {}
    elif name == "aggregate":
        pipeline = command.get("pipeline") or []
        first = pipeline[0] if pipeline else {}
        yield "first $match", first.get("$match") if isinstance(first, Mapping) else None
    elif name == "update":
        for statement in command.get("updates") or []:
            yield "update filter", statement.get("q")
    elif name == "delete":
        for statement in command.get("deletes") or []:
            yield "delete filter", statement.get("q")
    elif name == "findandmodify":
        yield "query", command.get("query")
    elif name == "insert":
        for document in command.get("documents") or []:
            yield "document", document
    elif name in ("count", "distinct"):
        yield "query", command.get("query") or {}


def untargeted(role: str, name: str, command: Mapping[str, Any]) -> str | None:
    """What in the command lacks an equality on the role's shard key (``None``: it is targeted)."""
    (field,) = SHARD_KEYS[role]
    for kind, query in statements(name, command):
        if not _targeted(query, field):
            return f"{kind} has no equality on {field}: {_short(query)}"
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:197] + "..."


def _names(obj: Any) -> dict[str, str]:
    """The library collections an object on the stack works on: name -> role."""
    attrs = getattr(obj, "__dict__", None)
    if not isinstance(attrs, dict):
        return {}
    store = attrs.get("store", attrs.get("_store"))
    if store is not None and isinstance(getattr(store, "__dict__", None), dict):
        attrs = store.__dict__
    collection, overflow = attrs.get("collection"), attrs.get("overflow")
    if isinstance(collection, Collection) and isinstance(overflow, Collection):
        return {collection.name: "sessions", overflow.name: "overflow"}
    collections = attrs.get("_collections")
    if isinstance(collections, dict) and set(collections) == {"keys", "chunks"}:
        keys, chunks = collections["keys"], collections["chunks"]
        if isinstance(keys, Collection | AsyncCollection) and isinstance(chunks, Collection | AsyncCollection):
            return {keys.name: "storage", chunks.name: "storage_chunks"}
    return {}


def _frames_names(frame: types.FrameType) -> dict[str, str]:
    """The library collections of every object a library frame holds (``self``, a ``source``, a
    ``repository``...), and of ``collection``/``overflow`` arguments (the TTL migration)."""
    names: dict[str, str] = {}
    locals_ = frame.f_locals
    for value in locals_.values():
        for name, role in _names(value).items():
            names.setdefault(name, role)
    collection, overflow = locals_.get("collection"), locals_.get("overflow")
    if isinstance(collection, Collection) and isinstance(overflow, Collection):
        names.setdefault(collection.name, "sessions")
        names.setdefault(overflow.name, "overflow")
    return names


def library_origin(start: types.FrameType | None) -> tuple[list[tuple[str, str]], dict[str, str]]:
    """The library frames on the stack, innermost first (``(file name, function)``), and the roles of
    the collections the library objects found there work on."""
    origin: list[tuple[str, str]] = []
    names: dict[str, str] = {}
    frame = start
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename.startswith(LIBRARY):
            origin.append((os.path.basename(filename), frame.f_code.co_name))
            for name, role in _frames_names(frame).items():
                names.setdefault(name, role)
        frame = frame.f_back
    return origin, names


def check(
    name: str, command: Mapping[str, Any], origin: list[tuple[str, str]], names: Mapping[str, str]
) -> Offence | None:
    """The offence of one data command (``None``: not the library's, not on its collections, targeted,
    or allowed). ``name`` is the lower-case command name; ``origin`` and ``names`` as
    :func:`library_origin` returns them."""
    if not origin:
        return None  # the test's own command
    collection = next(iter(command.values()), None)
    role = names.get(collection) if isinstance(collection, str) else None
    if role is None:
        return None  # not one of the library's collections
    detail = untargeted(role, name, command)
    if detail is None or any(allowed.applies(role, name, command, origin) for allowed in ALLOWED):
        return None
    return Offence(role, name, " < ".join(f"{file}:{function}" for file, function in origin[:6]), detail)


class CommandAudit(monitoring.CommandListener):
    """Records the library's untargeted commands (see the module docstring)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.offences: list[Offence] = []
        self.audited = 0
        self.sink: Path | None = None  # in a worker: where each offence is written at once

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        name = event.command_name.lower()
        if name not in AUDITED:
            return
        origin, names = library_origin(sys._getframe(1))
        offence = check(name, event.command, origin, names)
        with self._lock:
            self.audited += 1 if origin else 0
            if offence is not None and self.sink is not None:
                with self.sink.open("a", encoding="utf-8") as out:
                    out.write(json.dumps(offence.__dict__) + "\n")
            elif offence is not None:
                self.offences.append(offence)

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        pass

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    def take(self) -> list[Offence]:
        with self._lock:
            offences, self.offences = self.offences, []
        return offences


_audit: CommandAudit | None = None


def install() -> CommandAudit:
    """Register the audit for every client built from now on in this process (once)."""
    global _audit
    if _audit is None:
        _audit = CommandAudit()
        monitoring.register(_audit)
    return _audit


def install_in_worker() -> None:
    """In a subprocess a test started: audit too, writing each offence at once to a file the parent
    reads at the teardown of the test (workers may be killed, or serve several tests)."""
    directory = os.environ.get(ENV)
    if directory:
        install().sink = Path(directory) / f"worker-{os.getpid()}.jsonl"


def worker_offences(directory: Path) -> list[Offence]:
    """What subprocesses recorded (files are removed once read)."""
    found: list[Offence] = []
    for path in sorted(directory.glob("worker-*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            found.append(Offence(**json.loads(line)))
        path.unlink()
    return found


# ------------------------------------------------------------------------------------------ the plugin


def pytest_configure(config: pytest.Config) -> None:
    install()
    audit_dir = Path(tempfile.mkdtemp(prefix="msm-command-audit-"))
    os.environ[ENV] = str(audit_dir)  # inherited by the subprocesses tests start
    config.stash[_DIR] = audit_dir


def pytest_unconfigure(config: pytest.Config) -> None:
    audit_dir = config.stash.get(_DIR, None)
    if audit_dir is not None:
        shutil.rmtree(audit_dir, ignore_errors=True)


_DIR = pytest.StashKey[Path]()


@pytest.fixture(autouse=True)
def command_audit(request: pytest.FixtureRequest) -> Iterator[CommandAudit]:
    """Fails the test if the library sent an untargeted command during it (at teardown)."""
    audit = install()
    audit.take()
    yield audit
    offences = audit.take() + worker_offences(request.config.stash[_DIR])
    if offences:
        lines = "\n".join(f"  - {offence}" for offence in offences[:20])
        pytest.fail(f"the library sent {len(offences)} untargeted command(s):\n{lines}", pytrace=False)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    audit = _audit
    if audit is not None:
        terminalreporter.write_line(
            f"command audit: {audit.audited} library data commands checked against the shard keys in this process"
        )

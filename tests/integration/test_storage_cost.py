"""What each storage operation costs: commands, bytes, and the index every query uses.

Counted with a pymongo ``CommandListener`` given to the storage (both its clients), in both of
Strands' calling modes; each query the storage sent is then explained on the server, which must
answer it from an index (never a collection scan).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from pymongo import MongoClient
from strands._async import run_async

from mongodb_session_manager import MongoDBStorage
from mongodb_session_manager.storage import _layout as layout
from tests.support.storage_helpers import Command, CommandLog, value

SMALL = b'{"messages": [{"role": "user", "content": [{"text": "hello"}]}]}' * 16


@pytest.fixture(params=["loop", "bridge"])
def run(request: pytest.FixtureRequest) -> Iterator[Callable[[Callable[[], Awaitable[Any]]], Any]]:
    """Runs one storage call the way Strands would in this mode: on one long-lived loop (an
    application's), or each on a fresh loop of Strands' sync bridge."""
    if request.param == "bridge":
        yield run_async
        return
    with asyncio.Runner() as runner:  # closing it closes the loop's client (an endSessions command)
        yield lambda call: runner.run(call())


@pytest.fixture
def log() -> CommandLog:
    return CommandLog(keep_documents=True)


@pytest.fixture
def storage(mongodb_uri: str, database_name: str, log: CommandLog) -> Iterator[MongoDBStorage]:
    with MongoDBStorage(mongodb_uri, database_name=database_name, event_listeners=[log]) as built:
        run_async(lambda: built.list(""))  # the first call of a process ensures the indexes
        log.take()
        yield built


def test_small_values_cost_one_command_per_operation(
    storage: MongoDBStorage, log: CommandLog, run: Callable[[Callable[[], Awaitable[Any]]], Any]
) -> None:
    run(lambda: storage.write("a/k.json", SMALL))
    [write] = log.take()
    assert write.name == "update"
    assert len(SMALL) < write.sent < len(SMALL) + 1500  # the value once, and the key, terms and update

    assert run(lambda: storage.read("a/k.json")) == SMALL
    [read] = log.take()
    assert read.name == "find" and read.received < len(SMALL) + 500

    run(lambda: storage.write("a/k.json", SMALL[::-1]))  # an overwrite is still one command
    assert log.names() == ["update"]
    run(lambda: storage.delete("a/k.json"))
    assert log.names() == ["delete"]
    assert run(lambda: storage.read("a/k.json")) is None
    assert log.names() == ["find"]
    run(lambda: storage.delete("a/never-written"))  # nothing to delete: the second command finds nothing
    assert log.names() == ["delete", "update"]


def test_listing_is_one_find_per_page(
    storage: MongoDBStorage,
    log: CommandLog,
    run: Callable[[Callable[[], Awaitable[Any]]], Any],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def fill() -> None:
        for n in range(25):
            await storage.write(f"list/{n:03d}", b"v")

    run(fill)
    log.take()
    assert run(lambda: storage.list("list/")) == [f"list/{n:03d}" for n in range(25)]
    [listing] = log.take()
    assert listing.name == "find" and listing.received < 25 * 60 + 300  # keys only, no values
    monkeypatch.setattr(layout, "LIST_BATCH", 10)
    assert len(run(lambda: storage.list(""))) == 25
    assert log.names() == ["find", "getMore", "getMore"]  # pages of 10, 10 and 5


def test_search_reads_only_matching_values(
    storage: MongoDBStorage, log: CommandLog, run: Callable[[Callable[[], Awaitable[Any]]], Any]
) -> None:
    async def fill() -> None:
        await storage.write("memory/dark.md", b"The user prefers dark mode.")
        await storage.write("memory/oauth.md", b"OAuth flow with PKCE.")
        for n in range(5):  # large values that do not match (no word in them): never sent back
            await storage.write(f"memory/blob-{n}.bin", bytes([1, 2, 255]) * 100_000)

    run(fill)
    log.take()
    results = run(lambda: storage.search("dark mode"))
    assert [(r.key, r.score, r.data) for r in results] == [("memory/dark.md", 2, b"The user prefers dark mode.")]
    [search] = log.take()
    assert search.name == "aggregate" and search.received < 1000


def test_chunked_values_cost_a_few_commands_each_moving_the_value_once(
    storage: MongoDBStorage, log: CommandLog, run: Callable[[Callable[[], Awaitable[Any]]], Any]
) -> None:
    data, other = value(20_000_000, 1), value(20_000_000, 2)
    run(lambda: storage.write("big", data))
    first = log.take()
    assert [c.name for c in first] == ["update", "insert", "update", "find"]  # record, chunks, switch, check
    assert len(data) < sum(c.sent for c in first) < len(data) * 1.001

    run(lambda: storage.write("big", other))  # replacing a chunked value also deletes its chunks
    assert log.names() == ["update", "insert", "update", "find", "delete", "update"]

    assert run(lambda: storage.read("big")) == other
    read = log.take()
    assert [c.name for c in read] == ["find", "find", "getMore"]  # the key, then 16 MiB per round trip
    assert len(other) < sum(c.received for c in read) < len(other) * 1.001

    run(lambda: storage.delete("big"))
    assert log.names() == ["delete", "update", "find", "delete", "update"]

    run(lambda: storage.write("big", other))
    log.take()
    run(lambda: storage.write("big", SMALL))  # a small value replacing a chunked one
    assert log.names() == ["update", "update", "find", "delete", "update"]


def _explained_plan(client: MongoClient[dict[str, Any]], database: str, command: Command) -> list[dict[str, Any]]:
    """Every plan stage the server reports for ``command`` (a find or an aggregate)."""
    document = {k: v for k, v in command.document.items() if k not in ("lsid", "$db", "$clusterTime", "batchSize")}
    if command.name == "aggregate":
        document["cursor"] = {}
    explained = client[database].command("explain", document, verbosity="queryPlanner")
    stages: list[dict[str, Any]] = []
    stack: list[Any] = [explained]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if isinstance(item.get("stage"), str):
                stages.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return stages


def _point_lookup(query: Any) -> bool:
    """Whether a filter selects by exact ``_id`` (an equality, or ``$in`` of exact ids)."""
    if not isinstance(query, dict):
        return False
    selector = query.get("_id")
    if isinstance(selector, str):
        return True
    return isinstance(selector, dict) and set(selector) == {"$in"} and all(isinstance(i, str) for i in selector["$in"])


def test_every_query_is_a_point_lookup_or_names_an_index_it_scans(
    storage: MongoDBStorage, log: CommandLog, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    """Reads, writes and deletes select one key (or exact chunk ids): ``_id`` point lookups on any
    MongoDB. Listing, search and repair name their index (``hint``), which the server's plan uses."""

    async def everything() -> None:
        await storage.write("ns/a.md", b"dark mode")
        await storage.write("ns/big", value(20_000_000, 5))
        await storage.write("ns/big", value(20_000_000, 6))
        await storage.read("ns/a.md")
        await storage.read("ns/big")
        await storage.list("ns/")
        await storage.namespace("ns").search("dark")
        await storage.delete("ns/a.md")
        await storage.delete("ns/big")
        await storage.repair()

    asyncio.run(everything())
    commands = [c for c in log.take() if c.name not in ("endSessions", "getMore", "insert")]
    hinted = []
    for command in commands:
        document = command.document
        if command.name in ("find", "aggregate") and "hint" in document:
            hinted.append(document["hint"])
            plan = _explained_plan(mongo_client, database_name, command)
            assert not [s for s in plan if s["stage"] == "COLLSCAN"], (command.name, plan)
            assert any(s["stage"] == "IXSCAN" and s.get("indexName") == document["hint"] for s in plan), plan
        elif command.name == "find":
            assert _point_lookup(document.get("filter")), document
        elif command.name in ("update", "delete"):
            statements = document.get("updates") or document.get("deletes") or []
            assert statements and all(_point_lookup(statement["q"]) for statement in statements), document
        else:
            raise AssertionError(f"unexpected command {command.name}")
    assert sorted(set(hinted)) == [layout.KEY_EXPIRES_INDEX, layout.PENDING_INDEX, layout.TERMS_INDEX]

"""What every Strands ``Storage`` backend does, as checks any backend can be run through.

Each case is ``async def case(storage) -> None`` over an empty storage and asserts observable
behaviour only. ``tests/unit/test_storage_contract_sdk.py`` runs them on the SDK's own
``InMemoryStorage`` and ``LocalFileStorage`` (so these expectations are the SDK's semantics, not
ours); ``tests/integration/test_storage_contract.py`` runs them on ``MongoDBStorage`` in both of
Strands' calling modes.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from strands.storage import InMemoryStorage, Storage
from strands.storage.search.keyword import KeywordSearchStrategy
from strands.storage.storage import _NAMESPACED, _NamespacedStorage, _resolve_namespace
from strands.types.exceptions import StorageError

Case = Callable[[Any], Awaitable[None]]
CASES: dict[str, Case] = {}

#: Every byte value, and a value that is not UTF-8.
ALL_BYTES = bytes(range(256)) * 3
#: Keys a backend must store and list as they are (once normalised): unicode, spaces, percent
#: signs, dots, dollars, characters outside the BMP.
ODD_KEYS = [
    "per%cent/a b/$dollar.json",
    "dots.in.name/x..y/.hidden",
    "unicode/été/日本語/😀.md",
    "spaces in/every where",
    "$root",
    "%2F/%2E%2E",
]


def case(function: Case) -> Case:
    CASES[function.__name__.removeprefix("case_")] = function
    return function


@case
async def case_round_trip_keeps_every_byte(storage: Storage) -> None:
    values = {"empty": b"", "one": b"\x00", "all": ALL_BYTES, "text": "héllo wörld".encode()}
    for key, value in values.items():
        await storage.write(key, value)
    for key, value in values.items():
        got = await storage.read(key)
        assert got == value and type(got) is bytes, key


@case
async def case_overwrite_replaces(storage: Storage) -> None:
    await storage.write("k", b"first value, longer")
    await storage.write("k", b"second")
    assert await storage.read("k") == b"second"
    await storage.write("k", b"")
    assert await storage.read("k") == b""
    assert await storage.list("") == ["k"]


@case
async def case_missing_reads_none_and_deleting_it_does_nothing(storage: Storage) -> None:
    assert await storage.read("nothing/here") is None
    await storage.delete("nothing/here")
    await storage.write("kept", b"1")
    await storage.delete("gone")
    assert await storage.list("") == ["kept"]


@case
async def case_delete_removes(storage: Storage) -> None:
    await storage.write("a/x", b"1")
    await storage.write("a/y", b"2")
    await storage.delete("a/x")
    assert await storage.read("a/x") is None
    assert await storage.list("a/") == ["a/y"]
    await storage.delete("a/x")
    await storage.write("a/x", b"again")
    assert await storage.read("a/x") == b"again"


@case
async def case_list_is_a_literal_prefix_of_full_keys(storage: Storage) -> None:
    for key in ("a/b/x", "a/bc", "a/c", "ab", "b"):
        await storage.write(key, b"v")
    assert await storage.list("") == ["a/b/x", "a/bc", "a/c", "ab", "b"]
    assert await storage.list("a/b") == ["a/b/x", "a/bc"]
    assert await storage.list("a/b/") == ["a/b/x"]
    assert await storage.list("a") == ["a/b/x", "a/bc", "a/c", "ab"]
    assert await storage.list("/a//b/") == ["a/b/x"]  # normalised: leading and repeated slashes
    assert await storage.list("c") == []
    assert await storage.list("a/b/x/") == []


@case
async def case_list_is_in_code_point_order(storage: Storage) -> None:
    keys = ["z", "Z", "a", "ä", "é", "😀", "日本", "A0", "a0", "a-", "a_", "~", " space"]
    for key in keys:
        await storage.write(f"o/{key}", b"v")
    assert await storage.list("o/") == sorted(f"o/{key}" for key in keys)


@case
async def case_odd_keys_round_trip_and_list(storage: Storage) -> None:
    for number, key in enumerate(ODD_KEYS):
        await storage.write(key, f"value {number}".encode())
    for number, key in enumerate(ODD_KEYS):
        assert await storage.read(key) == f"value {number}".encode(), key
    assert await storage.list("") == sorted(ODD_KEYS)
    assert await storage.list("per%cent/a b/") == ["per%cent/a b/$dollar.json"]


@case
async def case_keys_are_normalised(storage: Storage) -> None:
    await storage.write("//a///b//", b"1")
    assert await storage.read("a/b") == b"1"
    assert await storage.read("/a/b/") == b"1"
    assert await storage.list("") == ["a/b"]
    await storage.write("a/b", b"2")  # the same key
    assert await storage.read("//a//b") == b"2"


@case
async def case_bad_keys_and_prefixes_are_refused(storage: Storage) -> None:
    for key in ("", "/", "///", "..", "a/../b", "../a", "a/..", "a\\b", "\\"):
        with pytest.raises(StorageError):
            await storage.write(key, b"x")
        with pytest.raises(StorageError):
            await storage.read(key)
        with pytest.raises(StorageError):
            await storage.delete(key)
    for prefix in ("a/../", "..", "a\\"):
        with pytest.raises(StorageError):
            await storage.list(prefix)
    assert await storage.list("") == []
    # ".." inside a segment is not a parent reference
    await storage.write("a..b/..c/d..", b"ok")
    assert await storage.read("a..b/..c/d..") == b"ok"


@case
async def case_namespaced_views(storage: Storage) -> None:
    view = _resolve_namespace(storage, "p/q")
    assert getattr(view, "_namespaced", None) is _NAMESPACED
    await view.write("k/1", b"one")
    await storage.write("p/q/k/2", b"two")
    await storage.write("p/qr", b"outside")
    assert await view.read("k/1") == b"one"
    assert await view.read("k/2") == b"two"
    assert await storage.read("p/q/k/1") == b"one"
    assert await view.list("") == ["k/1", "k/2"]
    assert await view.list("k/") == ["k/1", "k/2"]
    assert await storage.list("p/q") == ["p/q/k/1", "p/q/k/2", "p/qr"]
    nested = view.namespace("k") if hasattr(view, "namespace") else _NamespacedStorage(view, "k")
    assert await nested.list("") == ["1", "2"]
    assert await nested.read("2") == b"two"
    await nested.delete("1")
    assert await storage.list("p/") == ["p/q/k/2", "p/qr"]
    # Strands' generic wrapper around this storage behaves the same
    wrapped = _NamespacedStorage(storage, "p/q")
    assert await wrapped.list("") == ["k/2"]
    assert await wrapped.read("k/2") == b"two"


SEARCH_CORPUS = {
    "memory/agent/user-preferences.md": b"# User preferences\nThe user prefers dark mode and e-mail notifications.",
    "memory/agent/project-setup.md": b"# Project setup\nPython 3.11, uv, ruff. Dark launch of the OAuth flow.",
    "memory/agent/oauth.md": b"# OAuth\nThe OAuth2 authentication flow uses PKCE.",
    "memory/other/dark.txt": b"nothing about modes",
    "notes/preferences.json": b'{"theme": "dark", "mode": "compact"}',
    "notes/binary.bin": bytes(range(256)),
    "notes/empty": b"",
}
SEARCH_QUERIES = [
    "dark mode",
    "What are the user's preferences?",
    "oauth flow",
    "OAuth2 PKCE authentication",
    "agent",
    "memory",
    "the of and",  # stop words only
    "",
    "notifications e-mail",
    "dark",
    "preferences md",
]


def _ranked(results: builtins.list[Any]) -> builtins.list[tuple[str, float]]:
    return [(result.key, result.score) for result in results]


@case
async def case_search_ranks_as_the_sdk_keyword_strategy(storage: Storage) -> None:
    """Every view of the storage searches as the same view of the SDK's ``InMemoryStorage`` does."""
    reference = InMemoryStorage()
    for key, value in SEARCH_CORPUS.items():
        await storage.write(key, value)
        await reference.write(key, value)

    def views(root: Any) -> builtins.list[Any]:
        return [
            root,
            _resolve_namespace(root, "memory/agent"),  # the backend's own namespace(), as the memory store uses
            _resolve_namespace(root, "memory"),
            _NamespacedStorage(root, "memory"),  # Strands' generic wrapper, as the snapshot manager uses
        ]

    for view, expected_view in zip(views(storage), views(reference), strict=True):
        for query in SEARCH_QUERIES:
            expected = await expected_view.search(query)
            got = await view.search(query)
            assert _ranked(got) == _ranked(expected), (query, getattr(view, "_prefix", ""))
            for result, want in zip(got, expected, strict=True):
                assert result.data is None or result.data == want.data, result.key
    # and the root ranks as the SDK's default strategy reading every value
    for query in SEARCH_QUERIES:
        assert _ranked(await storage.search(query)) == _ranked(await KeywordSearchStrategy().search(storage, query))

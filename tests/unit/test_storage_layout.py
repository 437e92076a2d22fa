"""The storage's pure logic (``storage/_layout.py``), without a server.

Key normalisation, prefix ranges, chunking, search terms and scores are checked against Strands'
own functions over arbitrary input; the update pipelines and cleanup planning by what they say.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import bson
import pytest
from bson import Binary, ObjectId
from hypothesis import example, given, settings
from hypothesis import strategies as st
from pymongo import MongoClient
from strands.storage import Storage
from strands.storage.search import keyword
from strands.storage.storage import _NAMESPACED, _normalize_key, _normalize_prefix
from strands.types.exceptions import StorageError
from strands.vended_plugins.context_offloader.plugin import _is_offloader_storage

from mongodb_session_manager import MongoDBStorage, SessionStorageError, SessionValidationError
from mongodb_session_manager.storage import StorageBackendError, StorageValidationError
from mongodb_session_manager.storage import _layout as layout

TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=12)
KEY_TEXT = st.text(alphabet=st.sampled_from("ab/.\\ é😀$%_-"), max_size=12)


# ------------------------------------------------------------------------------------------ keys


@given(KEY_TEXT)
@example("..")
@example("a\\b")
@example("//a//")
def test_keys_are_normalised_and_refused_exactly_as_strands_does(key: str) -> None:
    try:
        expected: str | None = _normalize_key(key)
    except StorageError:
        expected = None
    if expected is None:
        with pytest.raises(StorageValidationError):
            layout.normalize_key(key)
    else:
        assert layout.normalize_key(key) == expected


@given(KEY_TEXT)
def test_prefixes_are_normalised_exactly_as_strands_does(prefix: str) -> None:
    try:
        expected: str | None = _normalize_prefix(prefix)
    except StorageError:
        expected = None
    if expected is None:
        with pytest.raises(StorageValidationError):
            layout.normalize_prefix(prefix)
    else:
        assert layout.normalize_prefix(prefix) == expected


def test_refused_input_is_a_validation_error_of_both_hierarchies() -> None:
    for bad in (None, 3, b"bytes"):
        with pytest.raises(StorageValidationError, match="must be a string"):
            layout.normalize_key(bad)
    with pytest.raises(StorageValidationError) as raised:
        layout.normalize_key("a/\udc80")  # a lone surrogate: not UTF-8
    assert isinstance(raised.value, SessionValidationError | ValueError | StorageError)
    assert raised.value.field == "key"
    with pytest.raises(StorageValidationError, match="at most"):
        layout.normalize_key("k" * (layout.MAX_KEY_BYTES + 1))
    assert layout.normalize_key("k" * layout.MAX_KEY_BYTES)
    with pytest.raises(StorageValidationError, match="must be bytes"):
        layout.as_bytes("text")
    assert layout.as_bytes(bytearray(b"ab")) == b"ab" and type(layout.as_bytes(memoryview(b"ab"))) is bytes
    assert issubclass(StorageBackendError, SessionStorageError) and issubclass(StorageBackendError, StorageError)


def test_a_tenant_root_is_a_backslash_area_no_key_can_reach() -> None:
    assert layout.tenant_root(None) == ""
    assert layout.tenant_root("acme") == "\\acme\\"
    for bad in ("", "a/b", "a\\b", 7):
        with pytest.raises(StorageValidationError) as caught:
            layout.tenant_root(bad)
        assert caught.value.field == "tenant_id"


def test_a_namespace_prefix_is_computed_as_strands_backends_do() -> None:
    assert layout.namespace_prefix("", "memory/agent") == "memory/agent/"
    assert layout.namespace_prefix("memory/", "/agent//") == "memory/agent/"
    assert layout.namespace_prefix("memory/", "") == "memory/"
    with pytest.raises(StorageValidationError):
        layout.namespace_prefix("", "a/../b")


def _in_range(value: str, bounds: dict[str, Any]) -> bool:
    inside = bounds["$gte"] <= value and ("$lt" not in bounds or value < bounds["$lt"])
    return inside and ("$not" not in bounds or not _in_range(value, bounds["$not"]))


@settings(max_examples=400)
@given(TEXT, TEXT)
@example("a\U0010ffff", "a\U0010ffffb")
@example("\U0010ffff", "\U0010ffff\U0010ffff")
@example("a\ud7ff", "a\ue000")
@example("a/b", "a/bc")
@example("a/b", "a/c")
@example("", "anything")
@example("", "\\tenant\\key")
def test_a_key_range_holds_exactly_the_strings_with_the_prefix(prefix: str, value: str) -> None:
    """Python compares code points, as MongoDB compares UTF-8 bytes: the same order. The empty
    prefix (every key of a storage without a tenant) leaves out the tenants' keys."""
    bounds = layout.key_range(prefix)
    tenants = prefix == "" and value.startswith(layout.TENANT_MARK)
    assert _in_range(value, bounds) == (value.startswith(prefix) and not tenants)
    assert _in_range(prefix + value, bounds) == (not tenants)
    assert (value.encode() < prefix.encode()) == (value < prefix)


# ---------------------------------------------------------------------------------------- chunks


@given(st.binary(max_size=64), st.integers(min_value=1, max_value=9))
def test_chunks_split_and_join_back(data: bytes, size: int) -> None:
    parts = layout.split(data, size)
    assert b"".join(parts) == data and all(len(part) <= size for part in parts) and len(parts) >= 1
    version = ObjectId()
    documents = [{"_id": layout.chunk_id(version, n), "data": part} for n, part in enumerate(parts)]
    assert layout.check_chunks(version, len(parts), len(data), documents) == data
    # missing, extra, foreign or reordered chunks are never joined
    assert layout.check_chunks(version, len(parts) + 1, len(data), documents) is None
    if len(documents) > 1:
        assert layout.check_chunks(version, len(parts), len(data), documents[::-1]) is None
        assert layout.check_chunks(version, len(parts), len(data), documents[:-1]) is None
    foreign = [{**documents[0], "_id": layout.chunk_id(ObjectId(), 0)}, *documents[1:]]
    assert layout.check_chunks(version, len(parts), len(data), foreign) is None


def test_chunk_ids_of_a_version_sort_in_order_inside_its_range() -> None:
    version, other = ObjectId(), ObjectId()
    ids = [layout.chunk_id(version, n) for n in (0, 1, 9, 10, 99, 100, 123456)]
    assert ids == sorted(ids)
    bounds = layout.chunk_range(version)
    assert all(_in_range(chunk, bounds) for chunk in ids)
    assert not _in_range(layout.chunk_id(other, 0), bounds)


def test_two_chunks_fit_in_one_reply_and_a_large_value_in_one_insert() -> None:
    chunk = {"_id": layout.chunk_id(ObjectId(), 0), "data": Binary(b"x" * layout.CHUNK_BYTES)}
    reply = {"cursor": {"nextBatch": [chunk, chunk], "id": 1 << 62, "ns": "database.storage_chunks"}, "ok": 1.0}
    assert len(bson.encode(reply)) <= layout.MAX_DOCUMENT_BYTES
    assert 5 * len(bson.encode(chunk)) < 48_000_000  # 40 MB: one insert message


def test_values_up_to_the_document_limit_stay_inline() -> None:
    key = "session/s/scopes/agent/a/snapshots/snapshot_latest.json"
    assert layout.fits_inline(key, 15_000_000, ["/session"])
    assert layout.fits_inline(key, layout.MAX_DOCUMENT_BYTES - layout.INLINE_HEADROOM - 2 * len(key) - 100, [])
    assert not layout.fits_inline(key, layout.MAX_DOCUMENT_BYTES - layout.INLINE_HEADROOM, [])
    big_terms = ["w" * 10] * 100_000
    assert not layout.fits_inline(key, 15_000_000, big_terms)


def test_an_inline_write_command_stays_under_the_command_limit() -> None:
    """The largest inline value with the longest key: its update statement fits the server's limit."""
    key = "k" * layout.MAX_KEY_BYTES
    terms = layout.terms_for(key, b"", False)
    size = layout.MAX_DOCUMENT_BYTES - layout.INLINE_HEADROOM - 2 * len(key) - sum(len(t) + 16 for t in terms)
    assert layout.fits_inline(key, size, terms)
    plain = {
        "q": {"_id": key, **layout.NOTHING_TO_CLEAN},
        "u": layout.write_plain(b"x" * size, terms, layout.NO_EXPIRY),
        "upsert": True,
    }
    replacing = {"q": {"_id": key}, "u": layout.write_inline(b"x" * size, terms, layout.NO_EXPIRY, layout.utc_now())}
    stored = {"_id": key, "data": Binary(b"x" * size), "size": size, "terms": terms, "expires": layout.NO_EXPIRY}
    for statement in (plain, replacing):
        assert len(bson.encode(statement)) <= layout.MAX_DOCUMENT_BYTES + 16 * 1024
    assert len(bson.encode(stored)) <= layout.MAX_DOCUMENT_BYTES


def test_a_plain_write_sets_the_ttl_field_only_for_an_expiring_value() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    assert layout.write_plain(b"v", [], expires)["$set"]["remove_at"] == expires
    lasting = layout.write_plain(b"v", [], layout.NO_EXPIRY)
    assert "remove_at" not in lasting["$set"] and lasting["$unset"] == {"remove_at": ""}


# ---------------------------------------------------------------------------------------- search


def test_the_extension_pattern_is_strands_own() -> None:
    assert layout.EXTENSION.pattern == keyword._EXTENSION.pattern


WORDS = st.sampled_from(["dark", "mode", "the", "oauth", "flow", "md", "été", "x_y", "prefs", "a", "42", "memory"])
SEPARATORS = st.sampled_from([" ", "/", ".", "-", "\n", "!", "_"])


@st.composite
def _phrases(draw: Any) -> str:
    words = draw(st.lists(WORDS, max_size=6))
    return "".join(word + draw(SEPARATORS) for word in words)


@settings(max_examples=300)
@given(_phrases(), _phrases(), _phrases(), st.sampled_from(["", "memory/", "memory/agent/"]))
def test_scores_are_strands_keyword_scores(content: str, key: str, query: str, namespace: str) -> None:
    key = namespace + (key.strip("/") or "k")
    relative = key[len(namespace) :]
    data = content.encode()
    words, content_terms, all_terms = layout.query_terms(query)
    stored = layout.terms_for(key, data, index_content=True)
    hits = sorted(set(stored) & set(all_terms))
    expected = keyword.token_overlap_score(words, f"{keyword._EXTENSION.sub('', relative)} {content}")
    assert layout.score(words, relative, hits) == expected
    # a value with a positive score is always a candidate: it holds one of the query's terms
    if expected:
        assert hits
    assert content_terms == sorted(words)


def test_stop_words_and_empty_queries_have_no_terms() -> None:
    assert layout.query_terms("the of and is") == (frozenset(), [], [])
    assert layout.query_terms("") == (frozenset(), [], [])


def test_large_values_are_indexed_by_their_key_words_only() -> None:
    terms = layout.terms_for("memory/user/dark-mode.md", b"oauth flow", index_content=False)
    assert terms == ["/dark", "/memory", "/mode", "/user"]
    assert all(term.startswith(layout.KEY_TERM) for term in terms)


# ---------------------------------------------------------------------------------------- expiry


def test_expiry_rules_pick_the_longest_matching_prefix() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    expiry = layout.Expiry.parse({"session/": 60, "session/keep/": None, "": timedelta(days=1)})
    assert expiry.expires("session/s1/x", now) == now + timedelta(seconds=60)
    assert expiry.expires("session/keep/x", now) == layout.NO_EXPIRY
    assert expiry.expires("memory/x", now) == now + timedelta(days=1)
    assert layout.Expiry.parse(None).expires("x", now) == layout.NO_EXPIRY
    assert layout.Expiry.parse(30).expires("x", now) == now + timedelta(seconds=30)
    scoped = layout.Expiry.parse({"session/": 60}).with_rule("session/s1/", 5)
    assert scoped.expires("session/s1/x", now) == now + timedelta(seconds=5)
    assert scoped.expires("session/s2/x", now) == now + timedelta(seconds=60)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), float("inf"), True, "60", timedelta(0), 10**12])
def test_bad_expiries_are_refused(bad: Any) -> None:
    with pytest.raises(StorageValidationError):
        layout.Expiry.parse(bad)
    with pytest.raises(StorageValidationError):
        layout.Expiry.parse({"session/": bad})


def test_chunks_of_an_expiring_value_outlive_it() -> None:
    expires = datetime(2030, 1, 1, tzinfo=UTC)
    assert layout.chunk_removal(expires) == expires + layout.CHUNK_EXPIRY_MARGIN
    assert layout.chunk_removal(layout.NO_EXPIRY) is None


# ------------------------------------------------------------------------------ cleanup planning


def test_cleanup_takes_dead_versions_now_and_live_ones_only_past_their_grace() -> None:
    now = datetime(2030, 1, 1, tzinfo=UTC)
    dead, late, fresh, own, current = (ObjectId() for _ in range(5))
    before = {
        "version": current,
        "chunks": 3,
        "pending": [
            {"v": dead, "n": 2, "at": now - timedelta(days=3)},
            {"v": late, "n": 5, "at": (now - timedelta(seconds=1)).replace(tzinfo=None), "live": True},  # naive
            {"v": fresh, "n": 1, "at": now + timedelta(minutes=30), "live": True},
            {"v": own, "n": 4, "at": now + timedelta(hours=1), "live": True},
        ],
    }
    plan = layout.cleanup_of(before, now, own=own)
    assert plan.dead == ((dead, 2),) and plan.stale == ((late, 5),)  # the current value is never cleaned
    assert layout.cleanup_of(before, now + timedelta(hours=2)).stale == ((late, 5), (fresh, 1), (own, 4))
    assert not layout.cleanup_of({"data": b"x"}, now)
    assert not layout.cleanup_of(None, now)


def test_chunks_are_deleted_by_exact_id_when_their_count_is_known_and_always_by_their_key() -> None:
    known, unknown = ObjectId(), ObjectId()
    assert layout.chunk_deletions("k", [(known, 2)]) == [{"key": "k", "_id": {"$in": layout.chunk_ids(known, 2)}}]
    assert layout.chunk_deletions("k", [(known, 1), (unknown, None)]) == [
        {"key": "k", "_id": {"$in": [layout.chunk_id(known, 0)]}},
        {"key": "k", "_id": layout.chunk_range(unknown)},
    ]
    assert layout.chunk_deletions("k", []) == []


def test_no_update_pipeline_interprets_stored_text_as_an_expression() -> None:
    """Terms are wrapped in $literal; a key's words start with "/", never "$"."""
    now = layout.utc_now()
    pipeline = layout.write_inline(b"$x", ["$gt", "/$key"], layout.NO_EXPIRY, now)
    assert pipeline[0]["$set"]["terms"] == {"$literal": ["$gt", "/$key"]}
    assert pipeline[0]["$set"]["data"] == Binary(b"$x")


# ---------------------------------------------------------------------------- Strands duck typing


def test_strands_sees_a_durable_unified_storage() -> None:
    """Strands recognises backends by duck typing and markers: check what it looks at."""
    client: MongoClient[dict[str, Any]] = MongoClient("mongodb://127.0.0.1:9", connect=False)
    storage = MongoDBStorage(client=client)
    assert isinstance(storage, Storage)
    assert not _is_offloader_storage(storage)  # "store"/"retrieve" would make it the legacy offloader API
    assert not hasattr(storage, "_ephemeral")  # durable: the context manager keeps its stash outside snapshots
    assert not hasattr(storage, "for_sandbox")  # nothing to bind to a sandbox
    assert not hasattr(storage, "_namespaced")  # the root is not a view: Strands namespaces it
    view = storage.namespace("session")
    assert view._namespaced is _NAMESPACED and view.prefix == "session/"
    assert storage.prefix == ""
    storage.close()
    client.close()

"""Pure helpers of the overflow storage: binary references, chunks, and move planning (no server)."""

from __future__ import annotations

import hashlib
from typing import Any

import mongomock
import pytest
from bson.binary import Binary

from mongodb_session_manager import MongoDBSessionRepository, SessionStorageError, SessionValidationError
from mongodb_session_manager._codec import decode_value, encode_value
from mongodb_session_manager._overflow import (
    CHUNK_BYTES,
    REFERENCE_SUBTYPE,
    BlobRef,
    assemble_blob,
    chunk_documents,
    find_references,
    plan_merges,
    plan_moves,
    split_into_buckets,
)


def _image(data: bytes) -> dict[str, Any]:
    return {"image": {"format": "png", "source": {"bytes": data}}}


def _round_trip(message: Any, threshold: int) -> tuple[Any, Any, list[tuple[BlobRef, bytes]]]:
    stored, blobs = encode_value(message, "message", threshold)
    values = {ref.blob_id: data for ref, data in blobs}
    return stored, decode_value(stored, lambda ref: values[ref.blob_id]), blobs


def test_values_above_the_threshold_become_references_and_come_back_equal() -> None:
    big, small = b"\x00\x89PNG" + bytes(range(256)) * 8, b"tiny"
    message = {
        "role": "user",
        "content": [
            {"text": "two pictures"},
            _image(big),
            _image(small),
            {"toolResult": {"toolUseId": "t", "content": [{"document": {"format": "pdf", "source": {"bytes": big}}}]}},
        ],
    }
    stored, restored, blobs = _round_trip(message, threshold=1024)

    assert restored == message
    assert len(blobs) == 2 and all(data == big for _, data in blobs)
    reference = stored["content"][1]["image"]["source"]["bytes"]
    assert isinstance(reference, Binary) and reference.subtype == REFERENCE_SUBTYPE
    assert stored["content"][2]["image"]["source"]["bytes"] == small  # small values stay inline
    assert sorted(ref.blob_id for ref in find_references(stored)) == sorted(ref.blob_id for ref, _ in blobs)


def test_the_threshold_is_exclusive() -> None:
    at, above = b"a" * 100, b"b" * 101
    stored, blobs = encode_value({"x": at, "y": above}, "message", 100)
    assert stored["x"] is at
    assert [data for _, data in blobs] == [above]


def test_bytearray_and_subtype_zero_binary_are_offloaded_as_bytes() -> None:
    data = bytes(range(200))
    _, restored, blobs = _round_trip({"a": bytearray(data), "b": Binary(data, 0)}, threshold=10)
    assert restored == {"a": data, "b": data}
    assert len(blobs) == 2


def test_a_message_without_large_values_is_not_copied() -> None:
    message = {"role": "user", "content": [{"text": "hi"}, _image(b"small")]}
    stored, blobs = encode_value(message, "message", 1024)
    assert stored is message and blobs == []


def test_other_binary_subtypes_are_left_alone() -> None:
    value = Binary(b"u" * 64, 5)  # MD5 subtype: not plain bytes, stored as given
    stored, blobs = encode_value({"v": value}, "message", 10)
    assert stored["v"] is value and blobs == []


def test_the_reserved_subtype_is_refused_in_user_content() -> None:
    with pytest.raises(SessionValidationError) as error:
        encode_value({"content": [{"x": Binary(b"forged", REFERENCE_SUBTYPE)}]}, "message", 10)
    assert error.value.field == "message"
    assert "reserved" in str(error.value)


def test_a_reference_encodes_id_length_and_digest() -> None:
    data = b"z" * 5000
    ((ref, _),) = encode_value({"v": data}, "message", 10)[1]
    again = BlobRef.from_binary(ref.to_binary())
    assert again == ref
    assert ref.length == 5000 and ref.sha256 == hashlib.sha256(data).digest()
    with pytest.raises(SessionStorageError):
        BlobRef.from_binary(Binary(b"short", REFERENCE_SUBTYPE))


def test_large_values_are_split_into_chunks_and_reassembled() -> None:
    data = bytes(range(256)) * ((2 * CHUNK_BYTES + 12345) // 256 + 1)
    ((ref, _),) = encode_value({"v": data}, "message", 10)[1]
    documents = chunk_documents("s", ref, data, expire_at=None)

    assert ref.chunk_count == 3 and [doc["_id"] for doc in documents] == ref.chunk_ids()
    assert all(len(doc["data"]) <= CHUNK_BYTES for doc in documents)
    assert all(doc["session_id"] == "s" and doc["kind"] == "blob" and "expire_at" not in doc for doc in documents)
    chunks = {doc["_id"]["n"]: doc["data"] for doc in documents}
    assert assemble_blob(ref, chunks, "s") == data


def test_a_missing_or_altered_chunk_is_an_error_never_wrong_bytes() -> None:
    data = b"q" * (CHUNK_BYTES + 10)
    ((ref, _),) = encode_value({"v": data}, "message", 10)[1]
    chunks = {doc["_id"]["n"]: doc["data"] for doc in chunk_documents("s", ref, data, None)}

    with pytest.raises(SessionStorageError, match="missing chunk"):
        assemble_blob(ref, {0: chunks[0]}, "s")
    with pytest.raises(SessionStorageError, match="corrupt"):
        assemble_blob(ref, {0: chunks[0], 1: chunks[1][:-1] + b"!"}, "s")


def test_moves_take_the_oldest_messages_of_the_largest_agent_first() -> None:
    sizes = {"big": [100, 100, 100, 100], "small": [60, 60]}
    assert plan_moves(sizes, 150) == {"big": 2}
    # Once "big" keeps less than "small", "small" gives way, then "big" again.
    assert plan_moves(sizes, 380) == {"big": 4, "small": 1}


def test_moves_stop_when_nothing_is_left() -> None:
    assert plan_moves({"a": [10, 10]}, 1000) == {"a": 2}
    assert plan_moves({"a": []}, 10) == {}
    assert plan_moves({}, 10) == {}


def test_buckets_hold_consecutive_runs_under_the_byte_limit() -> None:
    assert split_into_buckets([10, 10, 10, 10, 10], max_bytes=25) == [(0, 2), (2, 2), (4, 1)]
    assert split_into_buckets([100, 5, 5], max_bytes=25) == [(0, 1), (1, 2)]  # an oversized one alone
    assert split_into_buckets([], max_bytes=25) == []


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("binary_offload_bytes", 0),
        ("binary_offload_bytes", "256k"),
        ("binary_offload_bytes", True),
        ("overflow_threshold_bytes", 1024),
        ("overflow_threshold_bytes", 13 * 1024 * 1024),
        ("overflow_threshold_bytes", 1.5e6),
        ("overflow_collection_name", ""),
        ("overflow_collection_name", "sessions"),
    ],
)
def test_storage_options_are_validated_by_name(option: str, value: Any) -> None:
    client: Any = mongomock.MongoClient()
    with pytest.raises(SessionValidationError) as error:
        MongoDBSessionRepository(client=client, database_name="db", **{option: value})
    assert error.value.field == option


def test_storage_options_have_documented_defaults() -> None:
    client: Any = mongomock.MongoClient()
    repository = MongoDBSessionRepository(client=client, database_name="db", collection_name="chats")
    assert repository.binary_offload_bytes == 64 * 1024
    assert repository.overflow_threshold_bytes == 128 * 1024
    assert repository.overflow_collection_name == "chats_overflow"
    assert repository.overflow.name == "chats_overflow"


def test_merges_group_small_adjacent_buckets_and_leave_single_ones() -> None:
    assert plan_merges([10, 10, 10, 100, 10], max_bytes=30, full_bytes=1000) == [(0, 3)]
    assert plan_merges([10, 10, 10, 10], max_bytes=20, full_bytes=1000) == [(0, 2), (2, 2)]
    assert plan_merges([50, 50], max_bytes=60, full_bytes=1000) == []
    # Full buckets are never copied again; the small ones around them merge among themselves.
    assert plan_merges([500, 10, 10, 500, 10, 10, 10], max_bytes=1000, full_bytes=500) == [(1, 2), (4, 3)]

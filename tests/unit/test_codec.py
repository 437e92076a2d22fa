"""The value codec: what is stored for a user's value comes back exactly, through real BSON (no server)."""

from __future__ import annotations

import json
from typing import Any

import bson
import pytest
from bson.binary import Binary
from bson.dbref import DBRef
from hypothesis import given, settings
from hypothesis import strategies as st

from mongodb_session_manager import SessionValidationError
from mongodb_session_manager._codec import ESCAPE_KEY, MAX_NESTING, decode_value, encode_value, same_message
from mongodb_session_manager._overflow import REFERENCE_SUBTYPE


def _through_bson(value: Any) -> Any:
    stored, _ = encode_value(value, "value")
    return decode_value(bson.decode(bson.encode({"v": stored}))["v"])


def _exactly(value: Any) -> str:
    """Equality that also sees key order and types (DBRef, tuple, ...) that ``==`` would forgive."""
    return json.dumps(value, ensure_ascii=False)


KEYS = st.one_of(
    st.sampled_from(["$ref", "$id", "$db", "$schema", "$gt", "$set", "$", "a.b", ".", "..", ESCAPE_KEY, "k", "é"]),
    st.text(max_size=6).filter(lambda key: "\x00" not in key),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=10),
)
DBREF_SHAPED = st.fixed_dictionaries(
    {"$ref": st.text(max_size=5), "$id": SCALARS}, optional={"$db": st.text(max_size=5), "x": SCALARS}
)
JSON = st.recursive(
    st.one_of(SCALARS, DBREF_SHAPED),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(KEYS, children, max_size=4), DBREF_SHAPED
    ),
    max_leaves=20,
)


@settings(max_examples=300)
@given(JSON)
def test_every_json_value_comes_back_exactly(value: Any) -> None:
    assert _exactly(_through_bson(value)) == _exactly(value)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"$ref": "#/definitions/a", "$id": "urn:a"}, id="json-schema"),
        pytest.param({"$id": 1, "$ref": "x"}, id="other-order"),
        pytest.param({"$ref": "x", "$id": 1, "$db": "d", "extra": [1]}, id="with-db-and-extra"),
        pytest.param({ESCAPE_KEY: [["a", 1]]}, id="looks-escaped"),
        pytest.param({ESCAPE_KEY: 5, "b": 2}, id="escape-key-among-others"),
        pytest.param([{"$ref": "x", "$id": {"$ref": "y", "$id": 2}}], id="nested"),
    ],
)
def test_dbref_shaped_and_escape_looking_objects_come_back_as_plain_objects(value: Any) -> None:
    restored = _through_bson(value)
    assert _exactly(restored) == _exactly(value)
    assert "DBRef" not in repr(restored)


def test_without_the_codec_bson_would_have_returned_a_dbref() -> None:
    # The problem the codec exists for: if this stops holding, the escaping can go.
    assert isinstance(bson.decode(bson.encode({"v": {"$ref": "x", "$id": 1}}))["v"], DBRef)


def test_values_without_anything_to_escape_are_stored_as_they_are() -> None:
    value = {"a": [1, {"b": "$x"}], "$gt": 1, "c.d": None}
    stored, blobs = encode_value(value, "value")
    assert stored is value and blobs == []
    assert decode_value(value) is value


def test_a_dbref_stored_before_the_codec_existed_comes_back_as_a_plain_object() -> None:
    legacy = bson.decode(bson.encode({"v": {"$ref": "x", "$id": 1, "$db": "d", "k": [2]}}))["v"]
    assert isinstance(legacy, DBRef)
    assert decode_value({"state": legacy}) == {"state": {"$ref": "x", "$id": 1, "$db": "d", "k": [2]}}


def _nested(depth: int) -> Any:
    value: Any = "leaf"
    for _ in range(depth):
        value = {"a": value}
    return value


def test_nesting_up_to_the_limit_is_stored_and_deeper_is_refused_with_our_error() -> None:
    assert _through_bson(_nested(MAX_NESTING)) == _nested(MAX_NESTING)
    with pytest.raises(SessionValidationError) as error:
        encode_value(_nested(MAX_NESTING + 1), "session_agent")
    assert error.value.field == "session_agent" and "nests deeper" in str(error.value)


def test_three_thousand_levels_are_refused_without_recursion_error() -> None:
    deep: Any = []
    for _ in range(3000):
        deep = [deep]
    with pytest.raises(SessionValidationError):
        encode_value({"content": deep}, "session_message")


def test_escapes_count_towards_the_nesting_limit() -> None:
    value: Any = "leaf"
    for _ in range(MAX_NESTING // 3 + 1):
        value = {"$ref": "x", "$id": value}
    with pytest.raises(SessionValidationError):
        encode_value(value, "value")


def test_the_reserved_binary_subtype_is_refused_anywhere() -> None:
    with pytest.raises(SessionValidationError) as error:
        encode_value({"event_loop_metrics": [Binary(b"x" * 52, REFERENCE_SUBTYPE)]}, "fields['event_loop_metrics']")
    assert error.value.field == "fields['event_loop_metrics']"


def test_large_binaries_become_references_only_when_asked() -> None:
    data = b"\x89PNG" + bytes(500)
    kept, none = encode_value({"bytes": data}, "session_message")
    assert kept["bytes"] is data and none == []
    moved, blobs = encode_value({"bytes": data}, "session_message", 100)
    assert [value for _, value in blobs] == [data]
    assert decode_value(moved, lambda ref: data) == {"bytes": data}


def _entry(text: str, tracking_id: str | None = None, data: bytes | None = None) -> dict[str, Any]:
    message: dict[str, Any] = {"role": "user", "content": [{"text": text}]}
    if tracking_id is not None:
        message["tracking_id"] = tracking_id
    if data is not None:
        message["content"].append({"image": {"format": "png", "source": {"bytes": data}}})
    stored, _ = encode_value(message, "session_message", 100)
    return {"message_id": 3, "message": stored, "redact_message": None}


def test_the_same_message_is_recognised_by_tracking_id_or_else_by_content() -> None:
    assert same_message(_entry("hi", "t-1"), _entry("hi", "t-1"))
    assert not same_message(_entry("hi", "t-1"), _entry("hi", "t-2"))  # two messages that say the same
    assert same_message(_entry("hi"), _entry("hi"))
    assert not same_message(_entry("hi"), _entry("hello"))
    # A binary offloaded twice gets two references to one value: still the same message.
    image = bytes(range(256)) * 2
    assert same_message(_entry("pic", data=image), _entry("pic", data=image))
    assert not same_message(_entry("pic", data=image), _entry("pic", data=image[::-1]))

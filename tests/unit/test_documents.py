"""The pure validation and encoding functions of ``_documents``: no server, no I/O.

hypothesis is not installed, so the field-name encoding is checked exhaustively over every short
string of an alphabet made of the characters that matter (``%``, ``.``, ``$`` and the hex digits of
their escapes), plus a table of longer and unicode names.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import pytest

from mongodb_session_manager import SessionValidationError
from mongodb_session_manager._documents import (
    MAX_FEEDBACK_COMMENT_LENGTH,
    MAX_ID_LENGTH,
    MAX_METADATA_KEY_LENGTH,
    decode_field_name,
    encode_field_name,
    validate_feedback,
    validate_id,
    validate_message_id,
    validate_metadata,
    validate_metadata_key,
    validate_metadata_keys,
)


def _refused(call: Any, *args: Any) -> SessionValidationError:
    """Run ``call`` expecting a ``SessionValidationError`` and return it."""
    with pytest.raises(SessionValidationError) as info:
        call(*args)
    return info.value


# ---------------------------------------------------------------- validate_id

GOOD_IDS = [
    "user-42",
    "a",
    "support.v2",
    "$billing",
    "a.b.c$d",
    "with space",
    " leading and trailing ",
    "ünïcødé",
    "日本語のセッション",
    "emoji-🙂",
    "%2E",
    "tab\there",
    "x" * MAX_ID_LENGTH,
]


@pytest.mark.parametrize("value", GOOD_IDS)
def test_validate_id_accepts_and_returns_the_id(value: str) -> None:
    assert validate_id(value, "session_id") is value


BAD_IDS = [
    pytest.param("", "empty", id="empty"),
    pytest.param(None, "string", id="none"),
    pytest.param(5, "string", id="int"),
    pytest.param(b"user", "string", id="bytes"),
    pytest.param(["user"], "string", id="list"),
    pytest.param("a\x00b", "NUL", id="nul"),
    pytest.param("\x00", "NUL", id="only-nul"),
    pytest.param("a/b", "path separator", id="slash"),
    pytest.param("a\\b", "path separator", id="backslash"),
    pytest.param("/", "path separator", id="only-slash"),
    pytest.param("x" * (MAX_ID_LENGTH + 1), "at most", id="too-long"),
]


@pytest.mark.parametrize("field", ["session_id", "agent_id", "multi_agent_id"])
@pytest.mark.parametrize(("value", "reason"), BAD_IDS)
def test_validate_id_refuses_bad_ids_naming_the_field(field: str, value: Any, reason: str) -> None:
    error = _refused(validate_id, value, field)

    assert isinstance(error, ValueError)
    assert error.field == field
    assert str(error).startswith(field)
    assert reason in str(error)


def test_validate_id_error_never_contains_a_raw_nul() -> None:
    error = _refused(validate_id, "ab\x00cd", "session_id")

    assert "\x00" not in str(error)


# ---------------------------------------------------------------- field-name encoding

_ALPHABET = ["%", ".", "$", "2", "4", "5", "E", "e", "a"]
_EXHAUSTIVE = ["".join(chars) for length in range(5) for chars in itertools.product(_ALPHABET, repeat=length)]

NAMES = [
    "support.v2",
    "$billing",
    "$",
    ".",
    "%",
    "%%",
    "..",
    "$$",
    "a%b.c$d",
    "%2E",
    "%24",
    "%25",
    "%2e",
    "%252E",
    "100%",
    "ünï.cødé$",
    "日本.語",
    "emoji.🙂$",
    "with space.and$dollar",
    "a" * 200 + ".$%" * 50,
]


def test_encoding_round_trips_every_short_string_of_the_special_characters() -> None:
    encoded = {name: encode_field_name(name) for name in _EXHAUSTIVE}

    for name, field in encoded.items():
        assert decode_field_name(field) == name, name
        assert "." not in field, name
        assert "$" not in field, name
    # Reversible means injective: no two names share a field.
    assert len(set(encoded.values())) == len(encoded)


@pytest.mark.parametrize("name", NAMES)
def test_encoding_round_trips_and_is_a_safe_field_name(name: str) -> None:
    field = encode_field_name(name)

    assert decode_field_name(field) == name
    assert "." not in field
    assert not field.startswith("$")
    assert "\x00" not in field


def test_encoding_is_injective_over_the_name_table() -> None:
    assert len({encode_field_name(name) for name in NAMES}) == len(set(NAMES))


@pytest.mark.parametrize(
    ("name", "field"),
    [
        ("support.v2", "support%2Ev2"),
        ("$billing", "%24billing"),
        ("100%", "100%25"),
        ("%2E", "%252E"),
    ],
)
def test_encoding_escapes_the_documented_characters(name: str, field: str) -> None:
    assert encode_field_name(name) == field


@pytest.mark.parametrize("name", ["default", "user-42", "with space", "ünïcødé", "a_b-c:d"])
def test_names_without_special_characters_are_stored_as_they_are(name: str) -> None:
    assert encode_field_name(name) == name
    assert decode_field_name(name) == name


# ---------------------------------------------------------------- metadata keys

GOOD_KEYS = ["a", "lang", "with space", "a$b", "trailing$", "ünïcødé", "日本", "-", "x" * MAX_METADATA_KEY_LENGTH]

BAD_KEYS = [
    pytest.param("$where", "'$'", id="operator"),
    pytest.param("$", "'$'", id="only-dollar"),
    pytest.param("a.b", "'.'", id="dot"),
    pytest.param(".", "'.'", id="only-dot"),
    pytest.param("", "empty", id="empty"),
    pytest.param(5, "string", id="int"),
    pytest.param(None, "string", id="none"),
    pytest.param(("a",), "string", id="tuple"),
    pytest.param("k\x00", "NUL", id="nul"),
    pytest.param("x" * (MAX_METADATA_KEY_LENGTH + 1), "at most", id="too-long"),
]


@pytest.mark.parametrize("key", GOOD_KEYS)
def test_validate_metadata_key_accepts(key: str) -> None:
    assert validate_metadata_key(key) == key


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_validate_metadata_key_refuses(key: Any, reason: str) -> None:
    error = _refused(validate_metadata_key, key)

    assert isinstance(error, ValueError)
    assert error.field == "metadata key"
    assert reason in str(error)
    assert "\x00" not in str(error)


GOOD_METADATA = [
    {},
    {"lang": "en", "priority": 3, "score": 0.5, "vip": True, "none": None},
    {"nested": {"deep": {"list": [1, "two", {"three": 3}]}}},
    {"when": datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC)},
    {"raw": b"\x00\x01"},
    # Values are data: operator-looking keys inside a value are stored, never interpreted.
    {"q": {"$gt": ""}},
    {"q": {"a.b": 1}},
    {"big": 2**63 - 1},
]


@pytest.mark.parametrize("metadata", GOOD_METADATA)
def test_validate_metadata_returns_what_to_store_equal_to_plain_values(metadata: dict[str, Any]) -> None:
    assert validate_metadata(metadata) == metadata


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_validate_metadata_refuses_a_bad_key_among_good_ones(key: Any, reason: str) -> None:
    error = _refused(validate_metadata, {"fine": 1, key: "value"})

    assert error.field == "metadata key"
    assert reason in str(error)


class _Opaque:
    pass


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({1, 2}, id="set"),
        pytest.param(_Opaque(), id="object"),
        pytest.param(2**64, id="int-too-large"),
        pytest.param({"inner": {1, 2}}, id="nested-set"),
        pytest.param([object()], id="object-in-list"),
        pytest.param(lambda: None, id="function"),
    ],
)
def test_validate_metadata_refuses_values_bson_cannot_store_naming_the_key(value: Any) -> None:
    error = _refused(validate_metadata, {"ok": 1, "bad": value})

    assert isinstance(error, ValueError)
    assert error.field == "metadata['bad']"
    assert "cannot be stored" in str(error)


@pytest.mark.parametrize("metadata", [None, [("a", 1)], "a=1", 5])
def test_validate_metadata_refuses_a_non_dict(metadata: Any) -> None:
    error = _refused(validate_metadata, metadata)

    assert error.field == "metadata"
    assert "dict" in str(error)


@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        (["a", "b"], ["a", "b"]),
        (("a", "b"), ["a", "b"]),
        (frozenset({"a"}), ["a"]),
        ({"a"}, ["a"]),
        ([], []),
        (["a$b", "ünï"], ["a$b", "ünï"]),
    ],
)
def test_validate_metadata_keys_returns_a_list(keys: Any, expected: list[str]) -> None:
    result = validate_metadata_keys(keys)

    assert isinstance(result, list)
    assert result == expected


@pytest.mark.parametrize("keys", ["abc", None, 5, {"a": 1}, b"ab"])
def test_validate_metadata_keys_refuses_something_that_is_not_a_key_list(keys: Any) -> None:
    error = _refused(validate_metadata_keys, keys)

    assert error.field == "keys"


@pytest.mark.parametrize(("key", "reason"), BAD_KEYS)
def test_validate_metadata_keys_refuses_a_bad_key(key: Any, reason: str) -> None:
    error = _refused(validate_metadata_keys, ["fine", key])

    assert error.field == "metadata key"
    assert reason in str(error)


# ---------------------------------------------------------------- feedback


@pytest.mark.parametrize(
    ("feedback", "expected"),
    [
        ({"rating": "up", "comment": "Great response!"}, {"rating": "up", "comment": "Great response!"}),
        ({"rating": "down", "comment": ""}, {"rating": "down", "comment": ""}),
        ({"rating": None, "comment": "meh"}, {"rating": None, "comment": "meh"}),
        ({"rating": "up"}, {"rating": "up", "comment": ""}),
        ({"comment": "no rating"}, {"rating": None, "comment": "no rating"}),
        ({}, {"rating": None, "comment": ""}),
        ({"rating": "down", "comment": "$where: ünï"}, {"rating": "down", "comment": "$where: ünï"}),
        (
            {"rating": "up", "comment": "x" * MAX_FEEDBACK_COMMENT_LENGTH},
            {"rating": "up", "comment": "x" * MAX_FEEDBACK_COMMENT_LENGTH},
        ),
    ],
)
def test_validate_feedback_normalises(feedback: dict[str, Any], expected: dict[str, Any]) -> None:
    assert validate_feedback(feedback) == expected


@pytest.mark.parametrize("rating", ["UP", "Down", True, False, 1, 0, "meh", "", "thumbs_up", ["up"]])
def test_validate_feedback_refuses_a_bad_rating(rating: Any) -> None:
    error = _refused(validate_feedback, {"rating": rating, "comment": "x"})

    assert isinstance(error, ValueError)
    assert error.field == "feedback.rating"


@pytest.mark.parametrize("comment", [5, ["text"], {"text": "x"}, b"bytes", None])
def test_validate_feedback_refuses_a_non_string_comment(comment: Any) -> None:
    error = _refused(validate_feedback, {"rating": "up", "comment": comment})

    assert error.field == "feedback.comment"
    assert "string" in str(error)


def test_validate_feedback_refuses_an_over_long_comment() -> None:
    error = _refused(validate_feedback, {"rating": "up", "comment": "x" * (MAX_FEEDBACK_COMMENT_LENGTH + 1)})

    assert error.field == "feedback.comment"
    assert "at most" in str(error)


@pytest.mark.parametrize(
    "feedback",
    [
        {"rating": "up", "score": 5},
        {"rating": "up", "comment": "x", "created_at": "2024-01-01"},
        {"Rating": "up"},
        {1: "up"},
    ],
)
def test_validate_feedback_refuses_unknown_keys(feedback: dict[Any, Any]) -> None:
    error = _refused(validate_feedback, feedback)

    assert error.field == "feedback"
    assert "unknown keys" in str(error)


@pytest.mark.parametrize("feedback", [None, "up", ["up"], 1])
def test_validate_feedback_refuses_a_non_dict(feedback: Any) -> None:
    error = _refused(validate_feedback, feedback)

    assert error.field == "feedback"


# ---------------------------------------------------------------- message ids


@pytest.mark.parametrize("value", [0, 1, 41, 2**40])
def test_validate_message_id_accepts_non_negative_ints(value: int) -> None:
    assert validate_message_id(value) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (-1, "negative"),
        (True, "integer"),
        (False, "integer"),
        ("1", "integer"),
        (1.0, "integer"),
        (None, "integer"),
    ],
)
def test_validate_message_id_refuses(value: Any, reason: str) -> None:
    error = _refused(validate_message_id, value)

    assert isinstance(error, ValueError)
    assert error.field == "message_id"
    assert reason in str(error)

"""Hostile input without a server: properties of the pure checks, and refusal before any I/O.

``tests/unit/test_documents.py`` has the example tables of the pure functions; this module adds
hypothesis properties over arbitrary input (what is accepted is storable and comes back exactly;
what is refused is refused with our error, never another exception) and checks that the repository
refuses bad input before touching its collection at all.
"""

from __future__ import annotations

import uuid
from typing import Any, NoReturn

import bson
import mongomock
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionRepository, SessionValidationError
from mongodb_session_manager._codec import decode_value
from mongodb_session_manager._documents import (
    MAX_ID_LENGTH,
    decode_field_name,
    encode_field_name,
    ensure_encodable,
    validate_feedback,
    validate_id,
    validate_metadata,
)

# Text of any kind, lone surrogates included (they are valid Python str, invalid UTF-8).
ANY_TEXT = st.text(max_size=40)
# Text that is valid UTF-8.
UTF8_TEXT = st.text(st.characters(codec="utf-8"), max_size=12)
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.integers(min_value=2**63, max_value=2**80)
    | st.floats(allow_nan=False)
    | UTF8_TEXT
    | st.binary(max_size=8)
)
VALUES = st.recursive(
    SCALARS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(UTF8_TEXT, children, max_size=3),
    max_leaves=10,
)
KEYS = UTF8_TEXT | st.sampled_from(["$where", "$gt", "a.b", ".", "$", "", "a\x00", "k" * 257]) | st.integers()


def _exact(value: Any) -> Any:
    """Equal only for equal types and contents (``bson.Int64`` counts as ``int``, ``-0.0`` is not ``0.0``)."""
    if isinstance(value, dict):
        return ("dict", [(key, _exact(item)) for key, item in value.items()])
    if isinstance(value, list):
        return ("list", [_exact(item) for item in value])
    if isinstance(value, bool) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, float):
        return ("float", repr(value))
    return (type(value).__name__, value)


# ---------------------------------------------------------------------------------------------- ids


@given(ANY_TEXT)
@example("support.v2")
@example("$where")
@example("%2E")
@example("a%2Eb")
def test_any_id_encodes_to_one_safe_field_name_and_back(identifier: str) -> None:
    field = encode_field_name(identifier)

    assert decode_field_name(field) == identifier
    assert "." not in field
    assert "$" not in field


@given(ANY_TEXT, ANY_TEXT)
def test_two_different_ids_never_share_a_field_name(first: str, second: str) -> None:
    if first != second:
        assert encode_field_name(first) != encode_field_name(second)


@given(st.one_of(ANY_TEXT, st.integers(), st.none(), st.binary(), st.lists(ANY_TEXT, max_size=2)))
@example("x" * (MAX_ID_LENGTH + 1))
@example("a/b")
@example("a\\b")
@example("a\x00b")
def test_validate_id_accepts_only_what_it_documents_and_refuses_with_our_error(value: Any) -> None:
    try:
        accepted = validate_id(value, "agent_id")
    except SessionValidationError as e:
        assert e.field == "agent_id"
        assert "\x00" not in str(e)
        return
    assert accepted is value
    assert isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH
    assert not any(char in value for char in "\x00/\\")


# ---------------------------------------------------------------------------------------------- metadata


@settings(max_examples=200)
@given(st.dictionaries(KEYS, VALUES, max_size=4))
def test_metadata_is_accepted_only_if_it_round_trips_through_bson_exactly(metadata: dict[Any, Any]) -> None:
    try:
        accepted = validate_metadata(metadata)
    except SessionValidationError as e:
        assert e.field == "metadata key" or e.field.startswith("metadata[")
        return
    assert list(accepted) == list(metadata)
    for key in metadata:
        assert isinstance(key, str) and key and not key.startswith("$") and "." not in key and "\x00" not in key
    stored = bson.decode(bson.encode({"metadata": accepted}))["metadata"]
    assert _exact(decode_value(stored)) == _exact(metadata)


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("\ud800", id="lone-surrogate"),
        pytest.param({"\udc00": 1}, id="surrogate-in-nested-key"),
        pytest.param(["ok", "x\ud800"], id="surrogate-in-list"),
        pytest.param(uuid.UUID(int=1), id="native-uuid"),
    ],
)
def test_values_bson_refuses_with_a_value_error_are_refused_with_our_error(value: Any) -> None:
    with pytest.raises(SessionValidationError) as raised:
        ensure_encodable(value, "metadata['k']")
    assert raised.value.field == "metadata['k']"


# ---------------------------------------------------------------------------------------------- feedback


@given(
    st.dictionaries(
        st.sampled_from(["rating", "comment", "score", "created_at", "$set"]),
        st.one_of(st.none(), st.sampled_from(["up", "down", "UP", ""]), st.integers(), st.booleans(), UTF8_TEXT),
        max_size=3,
    )
)
def test_feedback_is_normalised_or_refused_with_our_error(feedback: dict[str, Any]) -> None:
    try:
        normalised = validate_feedback(feedback)
    except SessionValidationError as e:
        assert e.field in ("feedback", "feedback.rating", "feedback.comment")
        return
    assert set(feedback) <= {"rating", "comment"}
    assert normalised == {"rating": feedback.get("rating"), "comment": feedback.get("comment", "")}
    assert normalised["rating"] in ("up", "down", None)
    assert isinstance(normalised["comment"], str)


# ---------------------------------------------------------------------------------------------- before any I/O


class _NoIO:
    """Stands in for the collection: any use of it fails the test."""

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"the repository touched the collection ({name}) for input it should have refused")


@pytest.fixture
def offline_repo() -> MongoDBSessionRepository:
    repository = MongoDBSessionRepository(client=mongomock.MongoClient(), database_name="unit")
    repository.collection = _NoIO()  # type: ignore[assignment]
    return repository


def _message(message_id: Any = 0) -> SessionMessage:
    return SessionMessage(message={"role": "user", "content": [{"text": "x"}]}, message_id=message_id)


REFUSED_BEFORE_IO = [
    pytest.param(
        lambda r: r.create_session(Session(session_id="", session_type=SessionType.AGENT)), id="empty-session"
    ),
    pytest.param(lambda r: r.read_session(None), id="none-session"),
    pytest.param(lambda r: r.read_session_snapshot("a/b"), id="slash-session"),
    pytest.param(lambda r: r.delete_session("x" * 5000), id="long-session"),
    pytest.param(
        lambda r: r.create_agent("s", SessionAgent(agent_id="a\x00", state={}, conversation_manager_state={})),
        id="nul-agent",
    ),
    pytest.param(lambda r: r.read_agent("s", 7), id="int-agent"),
    pytest.param(lambda r: r.create_message("s", "..\\x", _message()), id="backslash-agent"),
    pytest.param(lambda r: r.create_message("s", "a", _message(-1)), id="negative-message-id"),
    pytest.param(lambda r: r.create_message("s", "a", _message(True)), id="bool-message-id"),
    pytest.param(lambda r: r.list_messages("s", "a", offset=-1), id="negative-offset"),
    pytest.param(lambda r: r.list_messages("s", "a", limit="10"), id="string-limit"),
    pytest.param(lambda r: r.update_metadata("s", {"$where": "1"}), id="operator-key"),
    pytest.param(lambda r: r.update_metadata("s", {"a.b": 1}), id="dotted-key"),
    pytest.param(lambda r: r.update_metadata("s", {"ok": 1, "k": {1, 2}}), id="set-value"),
    pytest.param(lambda r: r.update_metadata("s", {"k": 2**64}), id="huge-int"),
    pytest.param(lambda r: r.update_metadata("s", "k=v"), id="string-metadata"),
    pytest.param(lambda r: r.delete_metadata("s", ["$unset"]), id="operator-delete"),
    pytest.param(lambda r: r.delete_metadata("s", "abc"), id="string-delete"),
    pytest.param(lambda r: r.add_feedback("s", {"rating": "great"}), id="rating"),
    pytest.param(lambda r: r.add_feedback("s", {"comment": 5}), id="comment-type"),
    pytest.param(lambda r: r.add_feedback("s", {"comment": "x" * 3_000_000}), id="comment-megabytes"),
    pytest.param(lambda r: r.add_feedback("s", {"rating": "up", "by": "me"}), id="unknown-key"),
    pytest.param(lambda r: r.list_sessions(metadata_filter={"$where": "1"}), id="operator-filter"),
    pytest.param(lambda r: r.list_sessions(limit=0), id="zero-limit"),
    pytest.param(lambda r: r.list_sessions(after=""), id="empty-after"),
    pytest.param(lambda r: r.set_message_fields("s", "a", 0, {"$inc": 1}), id="operator-field"),
    pytest.param(lambda r: r.set_message_fields("s", "a", 0, {"message": {}}), id="message-field"),
    pytest.param(lambda r: r.set_message_fields("s", "a", 0, {"blobs": []}), id="bookkeeping-field"),
]


@pytest.mark.parametrize("call", REFUSED_BEFORE_IO)
def test_bad_input_is_refused_before_the_collection_is_touched(
    offline_repo: MongoDBSessionRepository, call: Any
) -> None:
    with pytest.raises(SessionValidationError):
        call(offline_repo)


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(lambda r: r.read_session("\ud800"), id="session-id"),
        pytest.param(lambda r: r.read_agent("s", "\udfff"), id="agent-id"),
        pytest.param(lambda r: r.update_metadata("s", {"\ud800": 1}), id="metadata-key"),
    ],
)
def test_ids_and_keys_that_cannot_be_encoded_are_refused_before_the_collection_is_touched(
    offline_repo: MongoDBSessionRepository, call: Any
) -> None:
    with pytest.raises(SessionValidationError):
        call(offline_repo)


@pytest.mark.parametrize(
    "uri",
    [
        pytest.param("mongodb://app:pa/ss@127.0.0.1:1/", id="unescaped-slash"),
        pytest.param("mongodb://127.0.0.1:99999/", id="port-out-of-range"),
        pytest.param("mongodb://[::1/", id="bad-ipv6-literal"),
    ],
)
def test_a_malformed_connection_string_is_reported_against_connection_string(uri: str) -> None:
    with pytest.raises(SessionValidationError) as raised:
        MongoDBSessionRepository(uri)
    assert raised.value.field == "connection_string"

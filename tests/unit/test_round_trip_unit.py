"""JSON values round-trip exactly through the repository, without a server.

mongomock keeps the Python objects it is given and never encodes them, so on its own it cannot show
what a server does to a value: pymongo decodes every stored subdocument shaped like a DBRef
(``{"$ref": str, "$id": ...}``) as ``bson.DBRef``. Here mongomock sits behind a thin client that
passes every document a read returns through BSON (``bson.encode`` then ``bson.decode`` with the
collection's codec options), which is what the wire and pymongo do to it. The properties are the
ones of ``tests/integration/test_round_trip_property.py`` for the places mongomock runs faithfully:
agent state, multi-agent state and metadata (message reads need ``$slice``/``array_filters``,
the restore snapshot ``$getField`` and feedback a pipeline update, which mongomock lacks: those are
proved against the real server only).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import bson
import mongomock
import pytest
from bson.codec_options import CodecOptions
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from strands.types.session import Session, SessionAgent, SessionType

from mongodb_session_manager import MongoDBSessionRepository
from tests.support.json_values import DBREF_SHAPED_SCHEMA, JSON_OBJECTS, JSON_VALUES, METADATA_KEYS, assert_exact

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
SIMPLE_DBREF: dict[str, Any] = {"$ref": "#/definitions/x", "$id": "x"}
AGENT_FIELDS = ("state", "conversation_manager_state", "_internal_state")


def _through_bson(document: Any, collection: Any) -> Any:
    """What a document becomes once a server has stored it and pymongo has decoded it."""
    if document is None:
        return None
    # mongomock has a CodecOptions of its own with pymongo's fields; bson wants pymongo's class.
    options = CodecOptions(**collection.codec_options._asdict())
    return bson.decode(bson.encode(document, codec_options=options), codec_options=options)


class _WireCursor:
    def __init__(self, cursor: Any, collection: Any) -> None:
        self._cursor = cursor
        self._collection = collection

    def sort(self, *args: Any, **kwargs: Any) -> _WireCursor:
        self._cursor = self._cursor.sort(*args, **kwargs)
        return self

    def limit(self, *args: Any, **kwargs: Any) -> _WireCursor:
        self._cursor = self._cursor.limit(*args, **kwargs)
        return self

    def skip(self, *args: Any, **kwargs: Any) -> _WireCursor:
        self._cursor = self._cursor.skip(*args, **kwargs)
        return self

    def __iter__(self) -> Iterator[Any]:
        return (_through_bson(document, self._collection) for document in self._cursor)


class _WireCollection:
    """A mongomock collection whose reads return what a server and pymongo would return."""

    def __init__(self, collection: Any) -> None:
        self._collection = collection

    def __getattr__(self, name: str) -> Any:
        return getattr(self._collection, name)

    def with_options(self, *args: Any, **kwargs: Any) -> _WireCollection:
        return _WireCollection(self._collection.with_options(*args, **kwargs))

    def find_one(self, *args: Any, **kwargs: Any) -> Any:
        return _through_bson(self._collection.find_one(*args, **kwargs), self._collection)

    def find(self, *args: Any, **kwargs: Any) -> _WireCursor:
        return _WireCursor(self._collection.find(*args, **kwargs), self._collection)

    def aggregate(self, *args: Any, **kwargs: Any) -> Iterator[Any]:
        return (_through_bson(document, self._collection) for document in self._collection.aggregate(*args, **kwargs))

    def find_one_and_update(self, *args: Any, **kwargs: Any) -> Any:
        return _through_bson(self._collection.find_one_and_update(*args, **kwargs), self._collection)

    def find_one_and_delete(self, *args: Any, **kwargs: Any) -> Any:
        return _through_bson(self._collection.find_one_and_delete(*args, **kwargs), self._collection)


class _WireDatabase:
    def __init__(self, database: Any) -> None:
        self._database = database

    def __getattr__(self, name: str) -> Any:
        return getattr(self._database, name)

    def __getitem__(self, name: str) -> _WireCollection:
        return _WireCollection(self._database[name])


class _WireClient:
    """A mongomock client whose collections decode what they return as pymongo does."""

    def __init__(self) -> None:
        self._client = mongomock.MongoClient()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def __getitem__(self, name: str) -> _WireDatabase:
        return _WireDatabase(self._client[name])


@pytest.fixture
def repo() -> Iterator[MongoDBSessionRepository]:
    with MongoDBSessionRepository(client=_WireClient(), database_name="unit") as repository:  # type: ignore[arg-type]
        yield repository


def _new_session(repo: MongoDBSessionRepository) -> str:
    session_id = f"prop-{uuid.uuid4().hex}"
    repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
    return session_id


class _MultiAgent:
    def __init__(self, multi_agent_id: str, state: dict[str, Any]) -> None:
        self.id = multi_agent_id
        self.state = state

    def serialize_state(self) -> dict[str, Any]:
        return self.state


def test_the_wire_client_decodes_like_pymongo() -> None:
    """The double is faithful where it matters: a DBRef-shaped value read through it is a DBRef."""
    collection = _WireClient()["unit"]["c"]
    collection.insert_one({"_id": 1, "v": dict(SIMPLE_DBREF), "w": {"$ref": 1, "$id": 2}})
    stored = collection.find_one({"_id": 1})
    assert isinstance(stored["v"], bson.DBRef)
    assert stored["w"] == {"$ref": 1, "$id": 2}  # $ref not a string: not a DBRef


@PROPERTY
@given(
    first=st.tuples(JSON_OBJECTS, JSON_OBJECTS, JSON_OBJECTS), then=st.tuples(JSON_OBJECTS, JSON_OBJECTS, JSON_OBJECTS)
)
@example(first=(SIMPLE_DBREF, {}, {}), then=({"schema": DBREF_SHAPED_SCHEMA}, SIMPLE_DBREF, {"x": [SIMPLE_DBREF]}))
def test_agent_state_round_trips_exactly(
    repo: MongoDBSessionRepository,
    first: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
    then: tuple[dict[str, Any], dict[str, Any], dict[str, Any]],
) -> None:
    session_id = _new_session(repo)
    for step, (state, manager_state, internal_state) in enumerate((first, then)):
        agent = SessionAgent(
            agent_id="a", state=state, conversation_manager_state=manager_state, _internal_state=internal_state
        )
        if step == 0:
            repo.create_agent(session_id, agent)
        else:
            repo.update_agent(session_id, agent)
        read = repo.read_agent(session_id, "a")
        assert read is not None
        for name in AGENT_FIELDS:
            assert_exact(getattr(read, name), getattr(agent, name), f"read_agent after step {step}: {name}")


@PROPERTY
@given(first=JSON_OBJECTS, then=JSON_OBJECTS)
@example(first=SIMPLE_DBREF, then={"graph": {"nodes": [DBREF_SHAPED_SCHEMA]}})
def test_multi_agent_state_round_trips_exactly(
    repo: MongoDBSessionRepository, first: dict[str, Any], then: dict[str, Any]
) -> None:
    session_id = _new_session(repo)
    repo.create_multi_agent(session_id, _MultiAgent("team", first))  # type: ignore[arg-type]
    assert_exact(repo.read_multi_agent(session_id, "team"), first, "read_multi_agent after create")
    repo.update_multi_agent(session_id, _MultiAgent("team", then))  # type: ignore[arg-type]
    assert_exact(repo.read_multi_agent(session_id, "team"), then, "read_multi_agent after update")


@PROPERTY
@given(metadata=st.dictionaries(METADATA_KEYS.filter(lambda key: key != "run"), JSON_VALUES, min_size=1, max_size=3))
@example(metadata={"schema": DBREF_SHAPED_SCHEMA, "ref": SIMPLE_DBREF})
def test_metadata_values_round_trip_exactly_and_find_their_session(
    repo: MongoDBSessionRepository, metadata: dict[str, Any]
) -> None:
    session_id = _new_session(repo)
    stored = {"run": session_id, **metadata}
    repo.update_metadata(session_id, stored)

    assert_exact(repo.get_metadata(session_id), stored, "get_metadata")
    for key, value in metadata.items():
        listed = repo.list_sessions(metadata_filter={key: value, "run": session_id})
        assert [entry["session_id"] for entry in listed] == [session_id], f"list_sessions by {key!r}"
        assert_exact(listed[0]["metadata"], stored, "list_sessions metadata")

"""What the store sends, as plain data (no server): the properties every query and update must have."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mongodb_session_manager._documents import encode_field_name
from mongodb_session_manager._pipelines import (
    SLICE_ALL,
    buckets_pipeline,
    counter_is,
    feedback_pipeline,
    guard_conditions,
    messages_pipeline,
    metadata_equals,
    references_pipeline,
    with_growth,
)


def _walk(value: Any) -> list[Any]:
    found = [value]
    if isinstance(value, dict):
        for child in value.values():
            found += _walk(child)
    elif isinstance(value, list):
        for child in value:
            found += _walk(child)
    return found


def test_the_guard_conditions_are_plain_fields_so_the_server_finds_the_document_by_id() -> None:
    deadline = datetime(2026, 1, 1, tzinfo=UTC)
    conditions = guard_conditions(3600, deadline, 1000)
    assert not any(key.startswith("$") for key in conditions)
    assert conditions == {
        "companions_ttl": {"$in": [None, 3600]},
        "companions_until": {"$not": {"$lt": deadline}},
        "size_estimate": {"$not": {"$gt": 1000}},
    }
    assert guard_conditions(None, None, None) == {"companions_ttl": {"$in": [None, None]}}


def test_a_counter_never_set_is_matched_as_missing() -> None:
    assert counter_is(0) == {"$exists": False}
    assert counter_is(7) == 7


def test_growth_is_added_to_operator_and_pipeline_updates_without_touching_the_original() -> None:
    update = {"$set": {"a": 1}, "$inc": {"n": 1}}
    assert with_growth(update, 40) == {"$set": {"a": 1}, "$inc": {"n": 1, "size_estimate": 40}}
    assert update == {"$set": {"a": 1}, "$inc": {"n": 1}}
    pipeline = feedback_pipeline("up", "$field")
    grown = with_growth(pipeline, 10)
    assert grown[:-1] == pipeline and grown[-1] == {
        "$set": {"size_estimate": {"$add": [{"$ifNull": ["$size_estimate", 0]}, 10]}}
    }


def test_user_text_in_a_pipeline_update_is_a_literal_never_an_expression() -> None:
    (stage,) = feedback_pipeline(None, "$$ROOT")
    entry = stage["$set"]["feedbacks"]["$concatArrays"][1][0]
    assert entry["comment"] == {"$literal": "$$ROOT"} and entry["rating"] == {"$literal": None}


def test_metadata_values_are_compared_as_data() -> None:
    assert metadata_equals({"q": {"$gt": ""}}) == {"metadata.q": {"$eq": {"$gt": ""}}}


def test_an_agent_id_with_dots_and_dollars_is_only_ever_a_field_name_value() -> None:
    agent_key = encode_field_name("$weird.agent")
    pipeline = messages_pipeline("s", agent_key, 5, 10, fields=("message_id",))
    text = json.dumps(pipeline)
    assert "$weird" not in text and "weird.agent" not in text
    getters = [node for node in _walk(pipeline) if isinstance(node, dict) and "$getField" in node]
    assert {"field": agent_key, "input": "$agents"} in [getter["$getField"] for getter in getters]


def test_a_page_reads_only_its_slice_on_both_sides_and_an_empty_page_reads_no_bucket() -> None:
    resident = _walk(messages_pipeline("s", "a", 5, 10))
    assert SLICE_ALL not in resident  # a bounded page never asks for "all the rest"
    assert SLICE_ALL in _walk(messages_pipeline("s", "a", 5, None))
    empty = messages_pipeline("s", "a", 5, 0)
    view = empty[1]["$project"]["agent"]["$let"]["in"]["$cond"][1]["$let"]["in"]
    assert view["overflow"] == []
    (match, project) = buckets_pipeline("s", ["b1", "b2"], 5, 10, fields=("message_id", "event_loop_metrics"))
    assert match == {"$match": {"session_id": "s", "_id": {"$in": ["b1", "b2"]}}}
    kept = project["$project"]["messages"]["$map"]["in"]["$arrayToObject"]["$filter"]
    assert kept["input"] == {"$objectToArray": "$$e"}
    assert kept["cond"] == {"$in": ["$$f.k", ["message_id", "event_loop_metrics"]]}


def test_the_references_read_maps_entries_explicitly() -> None:
    # The test server does not follow a path through an array inside an expression.
    text = json.dumps(references_pipeline("s"))
    assert "$$agent.v.messages.blobs" not in text and '"$$entry.blobs"' in text

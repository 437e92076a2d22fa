"""Pure: every filter, projection, update fragment and aggregation the session store sends.

No I/O here: each function returns plain data (dicts and lists), unit-tested as such. The store
(:mod:`._store`), the overflow I/O (:mod:`._overflow_io`) and the repository send them. Where the
test server and MongoDB differ, the form chosen works on both (see CLAUDE.md, "Known gaps of the
test server"): plain-field filters rather than ``$expr`` (the test server scans on a top-level
``$``), explicit ``$map`` rather than paths through arrays inside expressions, ``$getField`` for
field names that are user ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from ._documents import AGENT_FIELDS, REMOVED_FIELD

# $slice needs a positive count; this stands for "all the rest".
SLICE_ALL = 2**31 - 1


# ------------------------------------------------------------------------------------------ filters


def counter_is(value: int) -> Any:
    """Filter condition: a counter kept with ``$inc`` still has ``value`` (0 means never set)."""
    return value if value else {"$exists": False}


def guard_conditions(
    expiry_seconds: int | None,
    deadline: datetime | None,
    size_limit: int | None,
    moved_at_least: tuple[str, int] | None = None,
) -> dict[str, Any]:
    """The conditions every session write carries (see :meth:`._store.SessionStore.write`).

    Plain fields only: they cost nothing while they hold, and a filter of plain fields is found by
    ``_id`` on any server.

    Args:
        expiry_seconds: The TTL this process knows: the session's overflow documents must have been
            given their expiry under it (or the session has none).
        deadline: When sessions expire, the earliest expiry the session's overflow documents may have.
        size_limit: For appends, the most the document's size estimate may be.
        moved_at_least: For appends, ``(agent key, n)``: the agent must have moved at least ``n``
            messages out (a missing ``overflow_count`` is 0; no condition when ``n`` is 0).
    """
    conditions: dict[str, Any] = {"companions_ttl": {"$in": [None, expiry_seconds]}}
    if deadline is not None:
        conditions["companions_until"] = {"$not": {"$lt": deadline}}
    if size_limit is not None:
        conditions["size_estimate"] = {"$not": {"$gt": size_limit}}
    if moved_at_least is not None and moved_at_least[1] > 0:
        conditions[f"agents.{moved_at_least[0]}.overflow_count"] = {"$gte": moved_at_least[1]}
    return conditions


# ------------------------------------------------------------------------------------------ updates


def with_growth(update: Any, grows_by: int) -> Any:
    """``update`` that also adds ``grows_by`` to the document's ``size_estimate`` (a copy)."""
    if isinstance(update, list):  # a pipeline update
        stage = {"$set": {"size_estimate": {"$add": [{"$ifNull": ["$size_estimate", 0]}, grows_by]}}}
        return [*update, stage]
    return {**update, "$inc": {**update.get("$inc", {}), "size_estimate": grows_by}}


def with_key(update: Any, key_id: Any) -> Any:
    """``update`` that also records the session's data key id (``encryption_key``), when there is one."""
    if key_id is None:
        return update
    if isinstance(update, list):  # a pipeline update
        return [*update, {"$set": {"encryption_key": {"$literal": key_id}}}]
    return {**update, "$set": {**update.get("$set", {}), "encryption_key": key_id}}


def feedback_pipeline(rating: Any, comment: Any) -> list[dict[str, Any]]:
    """A pipeline update appending a feedback entry stamped by the server's clock (``$$NOW``).

    ``$literal`` keeps user text such as ``"$field"`` from being read as an expression.
    """
    entry = {"rating": {"$literal": rating}, "comment": {"$literal": comment}, "created_at": "$$NOW"}
    return [
        {
            "$set": {
                "feedbacks": {"$concatArrays": [{"$ifNull": ["$feedbacks", []]}, [entry]]},
                "updated_date": "$$NOW",
            }
        }
    ]


# ------------------------------------------------------------------------------------------ reads


def storage_state_pipeline(key: Any, agent_key: str | None = None) -> list[dict[str, Any]]:
    """The document's size (``$bsonSize``), size estimate and overflow expiry fields (and, with
    ``agent_key``, how many of that agent's messages moved out: ``moved``)."""
    return [
        {"$match": {"_id": key}},
        {"$project": {**storage_state_fields(agent_key), "size": {"$bsonSize": "$$ROOT"}}},
    ]


#: The fields a failed guarded write reads to find out why (see ``storage_state_pipeline``).
STORAGE_STATE_FIELDS: dict[str, Any] = {
    "_id": 0,
    "size_estimate": 1,
    "companions_until": 1,
    "companions_ttl": 1,
    "encryption_key": 1,
}


def storage_state_fields(agent_key: str | None) -> dict[str, Any]:
    """:data:`STORAGE_STATE_FIELDS`, plus the agent's ``overflow_count`` when ``agent_key`` is given."""
    if agent_key is None:
        return dict(STORAGE_STATE_FIELDS)
    return {**STORAGE_STATE_FIELDS, f"agents.{agent_key}.overflow_count": 1}


def removed_count_expression(agent: str) -> dict[str, Any]:
    """The stored ``removed_message_count`` of the agent sub-document ``agent`` (an expression path):
    from its conversation-manager state, or from the clear copy kept beside an encrypted state."""
    return {"$ifNull": [f"{agent}.conversation_manager_state.removed_message_count", f"{agent}.{REMOVED_FIELD}"]}


def message_layout_pipeline(key: Any) -> list[dict[str, Any]]:
    """The document's size, size estimate, unfinished overflow writes, and each agent's resident message sizes."""
    return [
        {"$match": {"_id": key}},
        {
            "$project": {
                "_id": 0,
                "size": {"$bsonSize": "$$ROOT"},
                "size_estimate": 1,
                "overflow_pending": 1,
                "agents": {
                    "$map": {
                        "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                        "as": "agent",
                        "in": {
                            "k": "$$agent.k",
                            "moved": {"$ifNull": ["$$agent.v.overflow_count", 0]},
                            # What the agent's conversation manager no longer holds (may move out).
                            "removed": removed_count_expression("$$agent.v"),
                            "sizes": {
                                "$map": {
                                    "input": {"$ifNull": ["$$agent.v.messages", []]},
                                    "as": "entry",
                                    "in": {"$bsonSize": "$$entry"},
                                }
                            },
                        },
                    }
                },
            }
        },
    ]


def snapshot_pipeline(key: Any, windows: bool = False) -> list[dict[str, Any]]:
    """The session and every agent's state (no messages); with ``windows``, each agent's resident
    window too: what a restore reads.

    The window of an agent is what Strands lists when it restores it: its messages from the
    stored ``conversation_manager_state.removed_message_count`` (``window_from``) on. When all of it
    is resident (``overflow_count``, ``moved``, at most ``window_from``), ``window`` is that part of
    the messages; otherwise ``window`` is every resident message and ``buckets`` the descriptors of
    the buckets holding the rest (read in one more command).
    """
    agent_fields: dict[str, Any] = {name: {"$getField": {"field": name, "input": "$$agent.v"}} for name in AGENT_FIELDS}
    removed = removed_count_expression("$$agent.v")
    window_from = {"$cond": [{"$isNumber": removed}, removed, 0]}
    moved = {"$ifNull": ["$$agent.v.overflow_count", 0]}
    resident = {"$ifNull": ["$$agent.v.messages", []]}
    if windows:
        agent_fields["message_count"] = {"$ifNull": ["$$agent.v.message_count", 0]}
        agent_fields["window_from"] = window_from
        agent_fields["moved"] = moved
        agent_fields["window"] = {
            "$cond": [
                {"$lte": [moved, window_from]},
                {"$slice": [resident, {"$subtract": [window_from, moved]}, {"$max": [1, {"$size": resident}]}]},
                resident,
            ]
        }
        # When the window reaches moved messages: the descriptors of the buckets holding them.
        agent_fields["buckets"] = {"$cond": [{"$lte": [moved, window_from]}, None, "$$agent.v.overflow"]}
    return [
        {"$match": {"_id": key}},
        {
            "$project": {
                "session_id": 1,
                "session_type": 1,
                "created_at": 1,
                "updated_at": 1,
                "agents": _each_agent(agent_fields),
            }
        },
    ]


def encryption_state_pipeline(key: Any) -> list[dict[str, Any]]:
    """What the one-off encryption of a session reads: every field except messages (each agent's
    fields and message counter, multi-agent state, metadata, feedback)."""
    names = (*AGENT_FIELDS, "message_count")
    agent_fields = {name: {"$getField": {"field": name, "input": "$$agent.v"}} for name in names}
    return [
        {"$match": {"_id": key}},
        {
            "$project": {
                "_id": 0,
                "multi_agents": 1,
                "metadata": 1,
                "feedbacks": 1,
                "agents": _each_agent(agent_fields),
            }
        },
    ]


def _each_agent(agent_fields: dict[str, Any]) -> dict[str, Any]:
    """The ``agents`` object with each agent sub-document (``$$agent.v``) reduced to ``agent_fields``."""
    return {
        "$arrayToObject": {
            "$map": {
                "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                "as": "agent",
                "in": {"k": "$$agent.k", "v": agent_fields},
            }
        }
    }


def _only(entries: Any, fields: Sequence[str] | None) -> Any:
    """``entries`` (an array expression), each reduced to ``fields`` when given.

    Through ``$objectToArray``/``$filter``/``$arrayToObject`` rather than ``{name: "$$e.name"}``: an
    entry without a field then comes back without it on every server (the test server would set it
    null), and one whose field is null keeps it.
    """
    if fields is None:
        return entries
    kept = {"$filter": {"input": {"$objectToArray": "$$e"}, "as": "f", "cond": {"$in": ["$$f.k", list(fields)]}}}
    return {"$map": {"input": entries, "as": "e", "in": {"$arrayToObject": kept}}}


def messages_pipeline(
    key: Any, agent_key: str, offset: int, limit: int | None, fields: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One agent's resident entries in ``[offset, offset + limit)`` and the descriptors of the buckets
    that hold the rest of the range.

    The resident slice's start depends on the stored ``overflow_count``, hence an aggregate. The
    result is ``{"agent": None}`` for a missing agent, else ``{"agent": {"message_count",
    "overflow_count", "messages", "overflow"}}``; no document for a missing session.

    Args:
        key: The session's key (``SessionStore.key``).
        agent_key: The agent's field name (``encode_field_name(agent_id)``).
        fields: Entry fields to return (all when ``None``).
    """
    end = None if limit is None else offset + limit
    moved = "$$moved"
    take: Any = SLICE_ALL if limit is None else {"$subtract": [limit, {"$max": [0, {"$subtract": [moved, offset]}]}]}
    in_range: list[Any] = [{"$gt": [{"$add": ["$$b.first", "$$b.count"]}, offset]}]
    if end is not None:
        in_range.append({"$lt": ["$$b.first", end]})
    resident = {"$slice": [{"$ifNull": ["$$agent.messages", []]}, {"$max": [0, {"$subtract": [offset, moved]}]}, take]}
    agent_view = {
        "message_count": "$$agent.message_count",
        "overflow_count": moved,
        "messages": {"$cond": [{"$gt": [take, 0]}, _only(resident, fields), []]},
        "overflow": (
            []
            if limit == 0
            else {"$filter": {"input": {"$ifNull": ["$$agent.overflow", []]}, "as": "b", "cond": {"$and": in_range}}}
        ),
    }
    return [
        {"$match": {"_id": key}},
        {
            "$project": {
                "_id": 0,
                "agent": {
                    "$let": {
                        "vars": {"agent": {"$getField": {"field": agent_key, "input": "$agents"}}},
                        "in": {
                            "$cond": [
                                # Every stored agent has its id; a missing agent has no fields at all.
                                {"$eq": [{"$type": "$$agent.agent_id"}, "string"]},
                                {
                                    "$let": {
                                        "vars": {"moved": {"$ifNull": ["$$agent.overflow_count", 0]}},
                                        "in": agent_view,
                                    }
                                },
                                None,
                            ]
                        },
                    }
                },
            }
        },
    ]


def buckets_pipeline(
    key: Any, bucket_ids: Sequence[Any], offset: int, limit: int | None, fields: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """The named buckets of the session ``key``, each sliced on the server to its part of
    ``[offset, offset + limit)``."""
    take: Any = SLICE_ALL if limit is None else {"$subtract": [offset + limit, {"$max": ["$first", offset]}]}
    sliced = {"$slice": ["$messages", {"$max": [0, {"$subtract": [offset, "$first"]}]}, take]}
    return [
        {"$match": {"session_id": key, "_id": {"$in": list(bucket_ids)}}},
        {"$project": {"first": 1, "messages": _only(sliced, fields)}},
    ]


def replaced_projection(messages: Any, message_id: int) -> dict[str, Any]:
    """A projection (aggregation syntax) returning only the binary references of one message entry
    (``old``), and the records of unfinished overflow writes (``pending``; absent from buckets)."""
    return {
        "_id": 0,
        "pending": "$overflow_pending",
        "old": {
            "$map": {
                "input": {
                    "$filter": {
                        "input": {"$ifNull": [messages, []]},
                        "cond": {"$eq": ["$$this.message_id", message_id]},
                    }
                },
                "in": {"$ifNull": ["$$this.blobs", []]},
            }
        },
    }


def resident_messages(agent_key: str) -> dict[str, Any]:
    """An expression for one agent's resident message array (the agent's key may hold ``.`` or ``$``)."""
    return {"$getField": {"field": "messages", "input": {"$getField": {"field": agent_key, "input": "$agents"}}}}


def references_pipeline(key: Any) -> list[dict[str, Any]]:
    """What refers to a session's overflow documents: unfinished writes, each agent's descriptors and
    the binary references of its resident messages (an explicit ``$map``: the test server does not
    follow a path through an array inside an expression)."""
    return [
        {"$match": {"_id": key}},
        {
            "$project": {
                "_id": 0,
                "pending": "$overflow_pending",
                "agents": {
                    "$map": {
                        "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                        "as": "agent",
                        "in": {
                            "agent_id": "$$agent.v.agent_id",
                            "overflow": "$$agent.v.overflow",
                            "blobs": {
                                "$map": {
                                    "input": {"$ifNull": ["$$agent.v.messages", []]},
                                    "as": "entry",
                                    "in": {"$ifNull": ["$$entry.blobs", []]},
                                }
                            },
                        },
                    }
                },
            }
        },
    ]


def session_projection() -> dict[str, Any]:
    """The fields of a ``Session`` (no agents, messages, metadata or feedback)."""
    return {"session_id": 1, "session_type": 1, "created_at": 1, "updated_at": 1}


def listing_projection() -> dict[str, Any]:
    """The fields ``list_sessions`` returns."""
    return {**session_projection(), "updated_date": 1, "metadata": 1}


def metadata_equals(stored: dict[str, Any]) -> dict[str, Any]:
    """Equality on each metadata value, compared as data (``$eq``: never read as an operator)."""
    return {f"metadata.{key}": {"$eq": value} for key, value in stored.items()}

"""``verify`` and ``verify --repair`` end to end, in a subprocess, against the test server.

The damage is the reliability tests' own (``tests/support/cli_damage.py``): a move, a merge, an
append with a binary and a redaction (of a resident and of a moved message) crashed before each of
their commands in turn, and the hand-made damage of ``test_reliability_overflow.py``: a history whose
tail was removed, malformed descriptors, a missing bucket, damaged and missing chunks, overflow
documents expiring before their session; plus what else can go wrong in the layout (ids out of order,
a bucket holding other messages, a reference its message does not list, a session whose deletion was
interrupted). ``verify`` must report each (kind, session, agent, message id) without failing on the
malformed data, and ``--repair`` must fix what it can without deleting anything referenced.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import bson
import pytest
from bson.objectid import ObjectId
from pymongo import MongoClient

from mongodb_session_manager import MongoDBSessionRepository
from mongodb_session_manager._documents import utc_now
from tests.support.cli_damage import (
    OFFLOAD,
    content,
    crash_every_step,
    leftovers,
    repository,
    session,
)
from tests.support.cli_run import cli_json, main_json, run_cli, run_main

_CRASHED = ("move", "merge", "append", "redact-resident", "redact-moved")
# What an interrupted write can leave: its record, and documents nothing refers to.
_CRASH_KINDS = {"unfinished-write", "orphaned-bucket", "orphaned-chunk"}


def _by_session(findings: list[dict[str, Any]]) -> dict[str, set[str]]:
    kinds: dict[str, set[str]] = {}
    for finding in findings:
        kinds.setdefault(finding["session_id"], set()).add(finding["kind"])
    return kinds


def test_verify_finds_what_every_interrupted_write_leaves_and_repair_removes_it_leaving_histories_whole(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    repo = repository(mongo_client, database_name)
    made = [session_id for kind in _CRASHED for session_id in crash_every_step(repo, kind)]
    damaged = {session_id for session_id in made if leftovers(repo, session_id)}
    assert len(damaged) >= 15, "the crashes left too little to test with"
    histories = {session_id: content(repo.list_messages(session_id, "a")) for session_id in made}

    # Within the default grace (10 minutes) the leftovers may be writes in flight: notes, not problems.
    young = cli_json(mongodb_uri, "verify", "--database", database_name, expect=0)
    assert young["checked"] == len(made)
    assert {note["session_id"] for note in young["notes"]} == damaged
    assert young["problems"] == []

    found = main_json(mongodb_uri, "verify", "--database", database_name, "--grace", "0", expect=1)
    by_session = _by_session(found["problems"])
    assert set(by_session) == damaged
    assert set().union(*by_session.values()) <= _CRASH_KINDS
    assert {"unfinished-write", "orphaned-chunk"} <= set().union(*by_session.values())
    assert all(problem["repairable"] for problem in found["problems"])

    repaired = main_json(mongodb_uri, "verify", "--database", database_name, "--grace", "0", "--repair", expect=0)
    assert repaired["remaining"] == []
    assert {repair["session_id"] for repair in repaired["repairs"]} == damaged
    assert not any(leftovers(repo, session_id) for session_id in made)
    for session_id in made:
        assert content(repo.list_messages(session_id, "a")) == histories[session_id], session_id
    clean = main_json(mongodb_uri, "verify", "--database", database_name, "--grace", "0", expect=0)
    assert clean["problems"] == [] and clean["notes"] == []


@pytest.fixture
def damaged(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> dict[str, Any]:
    """One session per kind of hand-made damage, and a healthy one; returns what the test needs."""
    repo = repository(mongo_client, database_name)
    sessions, overflow = repo.collection, repo.overflow

    def moved(session_id: str, count: int = 12, **options: Any) -> dict[str, Any]:
        session(repo, session_id, count, length=3000, **options)
        agent: dict[str, Any] = sessions.find_one({"_id": session_id})["agents"]["a"]
        assert agent.get("overflow"), f"{session_id}: nothing moved"
        return agent

    session(repo, "healthy", 8, images={2: os.urandom(OFFLOAD * 3)})
    session(repo, "tail", 6)
    sessions.update_one({"_id": "tail"}, {"$pop": {"agents.a.messages": 1}})
    session(repo, "ids", 4)
    sessions.update_one({"_id": "ids"}, {"$set": {"agents.a.messages.2.message_id": 7}})
    session(repo, "counter", 4)
    sessions.update_one({"_id": "counter"}, {"$inc": {"agents.a.message_count": -1}})
    session(repo, "not-a-message", 3)
    sessions.update_one({"_id": "not-a-message"}, {"$set": {"agents.a.messages.1.message": "text, not a message"}})
    session(repo, "agent-shape", 1)
    sessions.update_one({"_id": "agent-shape"}, {"$set": {"agents.b": 5}})
    moved("descriptor")
    sessions.update_one({"_id": "descriptor"}, {"$set": {"agents.a.overflow.0.id": "not-an-id"}})
    agent = moved("gap")
    sessions.update_one({"_id": "gap"}, {"$set": {"agents.a.overflow.0.first": 1}})
    agent = moved("bucket-gone")
    overflow.delete_one({"_id": agent["overflow"][0]["id"]})
    agent = moved("bucket-content")
    overflow.update_one({"_id": agent["overflow"][0]["id"]}, {"$pop": {"messages": 1}})
    chunks: dict[str, Any] = {
        "no-data": {"$unset": {"data": ""}},
        "data-not-bytes": {"$set": {"data": "text, not bytes"}},
        "altered-bytes": {"$set": {"data": b"altered"}},
    }
    for session_id, damage in chunks.items():
        session(repo, session_id, 2, images={1: os.urandom(OFFLOAD * 3)})
        overflow.update_one({"session_id": session_id}, damage)
    session(repo, "chunk-gone", 2, images={1: os.urandom(OFFLOAD * 3)})
    overflow.delete_one({"session_id": "chunk-gone"})
    session(repo, "unlisted", 2, images={1: os.urandom(OFFLOAD * 3)})
    sessions.update_one({"_id": "unlisted"}, {"$unset": {"agents.a.messages.1.blobs": ""}})
    session(repo, "unlisted-orphan", 2, images={1: os.urandom(OFFLOAD * 3)})
    sessions.update_one({"_id": "unlisted-orphan"}, {"$unset": {"agents.a.messages.1.blobs": ""}})
    stray = {"_id": {"b": ObjectId.from_datetime(utc_now() - timedelta(hours=1)), "n": 0}, "kind": "blob"}
    overflow.insert_one({**stray, "session_id": "unlisted-orphan", "data": b"stray"})
    session(repo, "estimate", 2)
    sessions.update_one({"_id": "estimate"}, {"$set": {"size_estimate": 10}})
    session(repo, "flag", 2, images={1: os.urandom(OFFLOAD * 3)})
    sessions.update_one({"_id": "flag"}, {"$unset": {"companions": ""}})
    session(repo, "expiring", 2, images={1: os.urandom(OFFLOAD * 3)})
    overflow.update_many({"session_id": "expiring"}, {"$set": {"expire_at": utc_now() + timedelta(days=1)}})
    session(repo, "deleted", 2, images={1: os.urandom(OFFLOAD * 3)})
    sessions.delete_one({"_id": "deleted"})  # a delete interrupted before its overflow documents went
    overflow.insert_one({"_id": ObjectId(), "kind": "messages", "messages": []})  # no session at all
    return {"repo": repo}


# Every session of the fixture, and what verify must report for it: each kind found, and one place
# (agent, message id) it must be reported at.
_EXPECTED: dict[str, dict[str, tuple[str | None, int | None]]] = {
    "healthy": {},
    "tail": {"missing-messages": ("a", 5)},
    "ids": {"noncontiguous-ids": ("a", 2)},
    "counter": {"counter-mismatch": ("a", 3)},
    "not-a-message": {"malformed-message": ("a", 1)},
    "agent-shape": {"malformed-agent": (None, None)},
    "descriptor": {"malformed-descriptors": ("a", None)},
    "gap": {"descriptor-gap": ("a", 0), "bucket-mismatch": ("a", 1)},  # the bucket holds 0.., not 1..
    "bucket-gone": {"missing-bucket": ("a", 0)},
    "bucket-content": {"bucket-mismatch": ("a", 0)},
    "no-data": {"malformed-chunk": ("a", 1)},
    "data-not-bytes": {"malformed-chunk": ("a", 1)},
    "altered-bytes": {"corrupt-binary": ("a", 1)},
    "chunk-gone": {"missing-chunk": ("a", 1)},
    "unlisted": {"unlisted-reference": ("a", 1)},
    "unlisted-orphan": {"unlisted-reference": ("a", 1), "orphaned-chunk": (None, None)},
    "estimate": {"size-estimate-low": (None, None)},
    "flag": {"companions-flag-missing": (None, None)},
    "expiring": {"expires-without-ttl": (None, None)},
    "deleted": {"orphaned-session-documents": (None, None)},
    "-": {"malformed-overflow-document": (None, None)},
}
_REPAIRED = {"estimate", "flag", "expiring", "deleted"}


def test_verify_reports_each_kind_of_damage_where_it_is_and_repair_fixes_only_what_loses_nothing(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str, damaged: dict[str, Any]
) -> None:
    repo: MongoDBSessionRepository = damaged["repo"]
    found = main_json(mongodb_uri, "verify", "--all", "--database", database_name, "--grace", "0", expect=1)
    reported: dict[str, dict[str, set[tuple[str | None, int | None]]]] = {}
    for problem in found["problems"]:
        where = (problem["agent_id"], problem["message_id"])
        reported.setdefault(problem["session_id"], {}).setdefault(problem["kind"], set()).add(where)
    assert {session_id: set(kinds) for session_id, kinds in reported.items()} == {
        session_id: set(kinds) for session_id, kinds in _EXPECTED.items() if kinds
    }
    for session_id, kinds in _EXPECTED.items():
        for kind, where in kinds.items():
            assert where in reported[session_id][kind], (session_id, kind, reported[session_id][kind])
    assert found["checked"] == len([s for s in _EXPECTED if s not in ("-", "deleted")])

    text = run_cli(mongodb_uri, "verify", "--database", database_name, "--grace", "0")
    assert text.returncode == 1
    assert "problem  missing-messages            session_id=<tail>, agent_id=<a>, message_id=<5> | " in text.stdout
    assert "the last 1 message(s) are lost (not repairable)" in text.stdout

    structural = [s for s in _EXPECTED if s not in _REPAIRED and s not in ("healthy", "-")]
    before = {doc["_id"]: bson.encode(doc) for doc in repo.collection.find({"_id": {"$in": structural}})}
    overflow_before = {bson.encode(doc) for doc in repo.overflow.find({"session_id": {"$in": structural}})}
    repaired = cli_json(
        mongodb_uri, "verify", "--all", "--database", database_name, "--grace", "0", "--repair", expect=1
    )
    assert {repair["session_id"] for repair in repaired["repairs"]} >= _REPAIRED
    remaining = {problem["session_id"] for problem in repaired["remaining"]}
    assert remaining == {s for s, kinds in _EXPECTED.items() if kinds} - _REPAIRED
    # Damaged sessions are left exactly as they were: their leftovers may be all that is left of
    # what they lost, and a reference not listed with its message keeps its chunks.
    assert {doc["_id"]: bson.encode(doc) for doc in repo.collection.find({"_id": {"$in": structural}})} == before
    assert {bson.encode(doc) for doc in repo.overflow.find({"session_id": {"$in": structural}})} == overflow_before
    assert len(repo.list_messages("unlisted", "a")[1].message["content"][1]["image"]["source"]["bytes"]) == OFFLOAD * 3
    # What was repaired reads back and verifies.
    assert repo.overflow.count_documents({"session_id": "deleted"}) == 0
    assert repo.collection.find_one({"_id": "flag"})["companions"] is True
    assert not repo.overflow.find_one({"session_id": "expiring", "expire_at": {"$exists": True}})
    for session_id in ("estimate", "flag", "expiring", "healthy"):
        assert repo.list_messages(session_id, "a")
        assert (
            cli_json(mongodb_uri, "verify", session_id, "--database", database_name, "--grace", "0")["problems"] == []
        )


@pytest.fixture
def expiring_store(mongo_client: MongoClient[dict[str, Any]], database_name: str) -> Iterator[tuple[str, Any]]:
    """A database whose sessions expire an hour after their last write."""
    name = f"{database_name}_ttl"
    repo = repository(mongo_client, name, session_ttl=3600)
    yield name, repo
    mongo_client.drop_database(name)


def test_overflow_documents_expiring_before_their_session_are_found_and_given_a_later_expiry(
    mongodb_uri: str, expiring_store: tuple[str, Any]
) -> None:
    name, repo = expiring_store
    session(repo, "early", 3, images={0: os.urandom(OFFLOAD * 3), 1: os.urandom(OFFLOAD * 3)})
    updated = repo.collection.find_one({"_id": "early"})["updated_date"]
    chunk, other = [doc["_id"] for doc in repo.overflow.find({"session_id": "early"})]
    # Still in the future (the TTL monitor leaves it), but before the session expires.
    repo.overflow.update_one({"_id": chunk}, {"$set": {"expire_at": updated + timedelta(minutes=30)}})
    repo.overflow.update_one({"_id": other}, {"$unset": {"expire_at": ""}})
    found = main_json(mongodb_uri, "verify", "early", "--database", name, expect=1)
    assert {problem["kind"] for problem in found["problems"]} == {"expires-before-session", "expiry-missing"}

    assert main_json(mongodb_uri, "verify", "early", "--database", name, "--repair")["remaining"] == []
    session_expires = repo.collection.find_one({"_id": "early"})["updated_date"] + timedelta(seconds=3600)
    assert all(doc["expire_at"] >= session_expires for doc in repo.overflow.find({"session_id": "early"}))
    assert len(repo.list_messages("early", "a")) == 3


def test_a_missing_session_is_a_problem_and_progress_is_drawn_only_when_asked(
    mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str
) -> None:
    repo = repository(mongo_client, database_name)
    for index in range(3):
        session(repo, f"s{index}", 2)
    missing = main_json(mongodb_uri, "verify", "s0", "nobody", "--database", database_name, expect=1)
    assert [(p["session_id"], p["kind"]) for p in missing["problems"]] == [("nobody", "not-found")]

    quiet = run_cli(mongodb_uri, "verify", "--database", database_name)
    assert quiet.returncode == 0 and quiet.stderr == ""
    assert quiet.stdout.startswith("checked 3 session(s): 0 problem(s)")
    drawn = run_main(mongodb_uri, "verify", "--database", database_name, "--progress")
    assert drawn.returncode == 0
    assert "\rverify [" in drawn.stderr and "3/3 sessions" in drawn.stderr
    scripted = run_cli(mongodb_uri, "verify", "--database", database_name, "--json")
    assert scripted.stderr == "" and scripted.stdout.lstrip().startswith("{")

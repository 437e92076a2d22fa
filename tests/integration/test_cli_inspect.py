"""``list``, ``show`` and ``stats`` end to end, in a subprocess, against the test server; and what every
command does with a bad command line, a missing collection, an unreachable server and a password."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo import MongoClient
from strands.types.session import Session, SessionMessage, SessionType

from mongodb_session_manager import MongoDBSessionRepository
from tests.support.cli_run import cli_json, main_json, run_cli, run_main
from tests.support.cli_sessions import BIG_IMAGE_BYTES, chat_session
from tests.support.server import free_port


@pytest.fixture
def store(mongodb_uri: str, mongo_client: MongoClient[dict[str, Any]], database_name: str) -> MongoDBSessionRepository:
    """``user-42`` (the full chat session), ``user-7`` (one short exchange, metadata priority low)."""
    chat_session(mongodb_uri, database_name, "user-42")
    repo = MongoDBSessionRepository(client=mongo_client, database_name=database_name)
    repo.create_session(Session(session_id="user-7", session_type=SessionType.AGENT))
    from strands.types.session import SessionAgent

    repo.create_agent("user-7", SessionAgent(agent_id="default", state={}, conversation_manager_state={}))
    for index, (role, said) in enumerate([("user", "Hello \x1b[2J there"), ("assistant", "Hi!")]):
        repo.create_message(
            "user-7",
            "default",
            SessionMessage(message={"role": role, "content": [{"text": said}]}, message_id=index),  # type: ignore[typeddict-item]
        )
    repo.update_metadata("user-7", {"priority": "low", "tier": 2})
    return repo


def test_list_shows_dates_agents_message_counts_sizes_and_metadata(
    mongodb_uri: str, database_name: str, store: MongoDBSessionRepository
) -> None:
    listed = cli_json(mongodb_uri, "list", "--database", database_name)
    assert [row["session_id"] for row in listed] == ["user-42", "user-7"]
    big, small = listed
    assert [(a["agent_id"], a["messages"]) for a in big["agents"]] == [("assistant", 10), ("helper.v2", 2)]
    assert big["messages"] == 12 and big["feedbacks"] == 2
    assert big["overflow_bytes"] > BIG_IMAGE_BYTES > big["document_bytes"] > 0
    assert big["metadata"]["big"] == {"$numberLong": "7"}  # values in the export format's encoding
    assert small["metadata"] == {"priority": "low", "tier": 2} and small["overflow_bytes"] == 0
    assert big["created_at"] and big["last_activity"]

    table = run_cli(mongodb_uri, "list", "--database", database_name)
    assert table.returncode == 0, table.stderr
    header, first, second = table.stdout.splitlines()
    assert header.split() == ["SESSION", "CREATED", "LAST", "ACTIVITY", "AGENTS", "MESSAGES", "SIZE", "METADATA"]
    assert first.startswith("user-42 ") and " 12 " in first and "KiB" in first
    assert second.startswith("user-7 ") and '{"priority": "low", "tier": 2}' in second

    assert [
        r["session_id"] for r in main_json(mongodb_uri, "list", "--database", database_name, "--filter", "priority=low")
    ] == ["user-7"]
    assert [
        r["session_id"] for r in main_json(mongodb_uri, "list", "--database", database_name, "--filter", "tier:=2")
    ] == ["user-7"]
    assert main_json(mongodb_uri, "list", "--database", database_name, "--filter", "tier=2") == []  # "2" is not 2
    assert [
        r["session_id"]
        for r in main_json(mongodb_uri, "list", "--database", database_name, "--filter", 'query:={"$gt": ""}')
    ] == ["user-42"]
    refused = run_main(mongodb_uri, "list", "--database", database_name, "--filter", "$where=1")
    assert refused.returncode == 2 and "metadata" in refused.stderr

    first_page = run_main(mongodb_uri, "list", "--database", database_name, "--limit", "1")
    assert len(first_page.stdout.splitlines()) == 2 and "--after 'user-42'" in first_page.stderr
    after = main_json(mongodb_uri, "list", "--database", database_name, "--after", "user-42")
    assert [row["session_id"] for row in after] == ["user-7"]


def test_show_reads_a_conversation_as_a_person_does(
    mongodb_uri: str, database_name: str, store: MongoDBSessionRepository
) -> None:
    shown = run_cli(mongodb_uri, "show", "user-42", "--database", database_name)
    assert shown.returncode == 0, shown.stderr
    text = shown.stdout
    assert text.startswith("session user-42  (AGENT)\n")
    assert '  metadata  {"priority": "high", "count": 3, "big": 7,' in text
    assert "  feedback\n" in text and '  up  "Great answer!"' in text
    assert "  multi-agent graph-1  " in text
    assert "agent assistant  10 messages" in text and "agent helper.v2  2 messages" in text
    assert "  #0  user  " in text and "      What is 17 * 3?\n" in text
    assert "tool call calculator (" in text and '): {"expression": "17*3"}' in text
    assert "(success): 51" in text
    assert "[image: png, 1,000 bytes]" in text and f"[image: jpeg, {BIG_IMAGE_BYTES:,} bytes]" in text
    assert "metrics: " in text and "tools: calculator x1" in text
    assert "(redacted)\n      [redacted]" in text and "4111" not in text

    last = run_main(mongodb_uri, "show", "user-42", "--database", database_name, "--agent", "assistant", "--last", "2")
    assert last.returncode == 0
    assert "agent helper.v2" not in last.stdout and "... 8 earlier message(s)" in last.stdout
    assert "  #8  user" in last.stdout and "[redacted]" in last.stdout and "  #7 " not in last.stdout

    escaped = run_main(mongodb_uri, "show", "user-7", "--database", database_name)
    assert "\x1b" not in escaped.stdout and "Hello \\x1b[2J there" in escaped.stdout

    scripted = main_json(mongodb_uri, "show", "user-42", "--database", database_name, "--agent", "assistant")
    (agent,) = scripted["agents"]
    assert agent["message_count"] == 10 and len(agent["messages"]) == 10
    assert agent["messages"][6]["content"][1] == {"type": "image", "format": "jpeg", "bytes": BIG_IMAGE_BYTES}
    assert agent["messages"][1]["content"][0]["type"] == "tool_use"
    assert agent["messages"][8]["redacted"] is True and "metrics" in agent["messages"][9]
    assert scripted["metadata"]["priority"] == "high"

    missing = run_main(mongodb_uri, "show", "nobody", "--database", database_name)
    assert missing.returncode == 1 and "session_id=<nobody> | session does not exist" in missing.stderr
    no_agent = run_main(mongodb_uri, "show", "user-42", "--database", database_name, "--agent", "nobody")
    assert no_agent.returncode == 1 and "agent does not exist" in no_agent.stderr


def test_stats_reports_collection_sizes_the_biggest_sessions_and_the_overflow_share(
    mongodb_uri: str, database_name: str, store: MongoDBSessionRepository
) -> None:
    stats = cli_json(mongodb_uri, "stats", "--database", database_name)
    assert stats["sessions"] == 2 and stats["messages"] == 14
    assert stats["overflow_by_kind"]["blob"]["documents"] == 1
    assert stats["overflow_bytes"] > BIG_IMAGE_BYTES
    assert 0.5 < stats["overflow_share"] < 1
    assert stats["sessions_with_overflow"] == 1 and stats["ttl_seconds"] is None
    assert [row["session_id"] for row in stats["biggest"]] == ["user-42", "user-7"]
    assert (
        stats["biggest"][0]["total_bytes"]
        == stats["biggest"][0]["document_bytes"] + stats["biggest"][0]["overflow_bytes"]
    )
    text = run_main(mongodb_uri, "stats", "--database", database_name, "--top", "1")
    assert text.returncode == 0
    assert "2 session(s), 14 message(s)" in text.stdout and "of the stored bytes" in text.stdout
    assert "biggest sessions" in text.stdout and "user-42" in text.stdout and "user-7" not in text.stdout


def test_bad_command_lines_missing_collections_and_unreachable_servers_have_their_own_exit_status(
    mongodb_uri: str, database_name: str, store: MongoDBSessionRepository
) -> None:
    no_uri = run_cli(None, "list")
    assert no_uri.returncode == 2 and "MONGODB_URI" in no_uri.stderr
    typo = run_main(mongodb_uri, "list", "--database", f"{database_name}_typo")
    assert typo.returncode == 2 and "there is no collection" in typo.stderr
    assert run_main(mongodb_uri, "list", "--bogus").returncode == 2

    # The password never appears, whatever fails: an unreachable server here.
    secret = "s3cr3t-Pa55word"
    unreachable = f"mongodb://operator:{secret}@127.0.0.1:{free_port()}/?directConnection=true"
    failed = run_cli(unreachable, "list", "--timeout", "1")
    assert failed.returncode == 3
    assert "cannot reach MongoDB at 127.0.0.1:" in failed.stderr and secret not in failed.stdout + failed.stderr
    for command in (
        ["verify", "--all"],
        ["export", "--all"],
        ["stats", "--json"],
        ["show", "x"],
        ["delete", "x", "--yes"],
    ):
        failed = run_main(unreachable, *command, "--timeout", "1")
        assert failed.returncode == 3, (command, failed.stderr)
        assert secret not in failed.stdout + failed.stderr, command
        assert "operator:***@" in failed.stderr or "cannot reach MongoDB" in failed.stderr, command

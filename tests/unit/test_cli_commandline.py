"""The command line without a server: the console script, usage errors and their exit status, metadata
filters, the progress writer, and what is printed for people (no terminal escapes from stored data)."""

from __future__ import annotations

import importlib
import io
import tomllib
from pathlib import Path

import pytest
from bson.objectid import ObjectId

from mongodb_session_manager._overflow import BlobRef
from mongodb_session_manager.cli import main
from mongodb_session_manager.cli._commands import parse_filters
from mongodb_session_manager.cli._context import UsageError
from mongodb_session_manager.cli._progress import Progress
from mongodb_session_manager.cli._render import message_lines, metrics_line, printable, size

ROOT = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    status = main(list(argv), out=out, err=err)
    return status, out.getvalue(), err.getvalue()


def test_the_console_script_is_the_command_lines_main() -> None:
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, name = scripts["mongodb-session-manager"].partition(":")
    assert getattr(importlib.import_module(module), name) is main


def test_help_and_version_exit_zero(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    assert "migrate-snapshots" in capsys.readouterr().out
    for command in ("list", "show", "export", "import", "verify", "delete", "stats", "migrate-snapshots"):
        assert main([command, "--help"]) == 0
        assert "--uri" in capsys.readouterr().out
    assert main(["--version"]) == 0


def test_usage_errors_exit_two(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    assert main([]) == 2
    assert main(["bogus"]) == 2
    assert main(["show"]) == 2  # a session id is required
    assert main(["list", "--limit", "many"]) == 2
    capsys.readouterr()
    status, _, err = _run("list")
    assert status == 2 and "pass --uri or set MONGODB_URI" in err
    status, _, err = _run("list", "--uri", "mongodb://localhost:1", "--timeout", "-1")
    assert status == 2 and "--timeout" in err


def test_a_malformed_connection_string_is_a_usage_error_and_its_password_is_never_printed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    status, out, err = _run("list", "--uri", "mongodb://admin:hunter2-secret@host:notaport/")
    assert status == 2
    assert "hunter2-secret" not in out + err
    assert "connection_string" in err


def test_connection_options_are_accepted_before_and_after_the_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MONGODB_URI", raising=False)
    from mongodb_session_manager.cli._main import build_parser

    parser = build_parser()
    before = parser.parse_args(["--database", "chat", "--json", "list"])
    after = parser.parse_args(["list", "--database", "chat", "--json"])
    default = parser.parse_args(["list"])
    assert (before.database, before.json) == (after.database, after.json) == ("chat", True)
    assert (default.database, default.json, default.collection) == ("strands_sessions", False, "sessions")
    assert parser.parse_args(["--database", "a", "list", "--database", "b"]).database == "b"


def test_filters_are_strings_or_json_values() -> None:
    assert parse_filters(["priority=high", "n:=3", 'tags:=["a", 1]', "eq=a=b", "empty="]) == {
        "priority": "high",
        "n": 3,
        "tags": ["a", 1],
        "eq": "a=b",
        "empty": "",
    }
    assert parse_filters(['q:={"$gt": 1}']) == {"q": {"$gt": 1}}  # data, compared as such
    with pytest.raises(UsageError, match="key=value"):
        parse_filters(["novalue"])
    with pytest.raises(UsageError, match="not JSON"):
        parse_filters(["n:={broken"])


def test_progress_draws_one_line_in_place_only_when_enabled() -> None:
    stream = io.StringIO()
    with Progress("export", 4, stream, enabled=True) as progress:
        progress.advance(1, "user-\x1b[31m1")
    text = stream.getvalue()
    assert text.startswith("\rexport [") and "1/4 sessions" in text and text.endswith("\n")
    assert "\x1b" not in text and "\\x1b" in text
    assert "4/4" not in text  # it reports what was done
    silent = io.StringIO()
    with Progress("export", 4, silent, enabled=False) as progress:
        progress.advance(4, "x")
    assert silent.getvalue() == ""
    unknown = io.StringIO()
    with Progress("list", None, unknown, enabled=True) as progress:
        progress.advance(3)
    assert "list 3 sessions" in unknown.getvalue()


def test_stored_text_cannot_reach_the_terminal_as_control_sequences() -> None:
    assert printable("a\x1b[2Jb\u202ec") == "a\\x1b[2Jb\\u202ec"
    assert printable("line\nnext\t.", keep_newlines=True) == "line\nnext\t."
    assert printable("line\nnext") == "line\\x0anext"


def test_a_conversation_reads_as_roles_text_tools_images_and_metrics() -> None:
    ref = BlobRef(ObjectId(), 300_000, b"\x00" * 32).to_binary()
    entries = [
        {
            "message_id": 0,
            "message": {
                "role": "user",
                "content": [{"text": "Look:\nhere"}, {"image": {"format": "png", "source": {"bytes": ref}}}],
            },
        },
        {
            "message_id": 1,
            "message": {
                "role": "assistant",
                "content": [{"toolUse": {"toolUseId": "t1", "name": "calc", "input": {"x": 1}}}],
            },
        },
        {
            "message_id": 2,
            "message": {
                "role": "user",
                "content": [{"toolResult": {"toolUseId": "t1", "status": "success", "content": [{"text": "51"}]}}],
            },
        },
        {
            "message_id": 3,
            "message": {"role": "assistant", "content": [{"text": "secret"}]},
            "redact_message": {"role": "assistant", "content": [{"text": "[removed]"}]},
            "event_loop_metrics": {
                "usage": {"inputTokens": 10, "outputTokens": 5, "totalTokens": 15},
                "latency_ms": 20,
                "cycle_count": 1,
                "tool_usage": {"calc": {"call_count": 1}},
            },
        },
    ]
    lines = [line for entry in entries for line in message_lines(entry)]
    text = "\n".join(lines)
    assert "#0  user" in text and "    Look:\n    here" in text
    assert "[image: png, 300,000 bytes]" in text
    assert 'tool call calc (t1): {"x": 1}' in text
    assert "tool result t1 (success): 51" in text
    assert "(redacted)" in text and "[removed]" in text and "secret" not in text
    assert "metrics: 15 tokens (in 10, out 5), model latency 20 ms, 1 cycle, tools: calc x1" in text
    assert metrics_line({}) == "metrics: (none)"


def test_sizes_read_as_people_write_them() -> None:
    assert [size(512), size(3 * 1024 + 100), size(12 * 1024**2), size(None)] == ["512 B", "3.1 KiB", "12.0 MiB", "-"]

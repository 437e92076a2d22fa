"""The commands: each takes the shared :class:`._context.Context` and its parsed arguments, returns an exit status."""

from __future__ import annotations

import argparse
import heapq
import itertools
import sys
from collections.abc import Iterable, Mapping, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from pymongo.errors import PyMongoError

from .._codec import decode_value
from .._documents import aware
from ..errors import MongoDBSessionError, SessionNotFoundError
from ._context import OK, PROBLEMS, Context, UsageError, binary_output
from ._render import compact, content_summary, message_lines, printable, size, table, when
from ._source import PAGE, Source
from ._transfer import (
    NotAnExport,
    Report,
    check_header,
    export_files,
    export_jsonl,
    file_sessions,
    first_record,
    import_files,
    import_jsonl,
)
from ._values import ValueFormatError, to_json
from ._values import loads as load_value
from ._verify import Finding, Repairer, SessionCheck, Verifier

__all__ = ["COMMANDS", "parse_filters"]


def parse_filters(filters: Sequence[str] | None) -> dict[str, Any]:
    """``--filter`` arguments as a metadata filter: ``key=text`` (a string) or ``key:=json`` (any JSON value).

    Raises:
        UsageError: An argument has no ``=``, or its JSON does not parse.
    """
    parsed: dict[str, Any] = {}
    for item in filters or []:
        key, equals, value = item.partition("=")
        if not equals:
            raise UsageError(f"--filter {item!r}: expected key=value (a string) or key:=json")
        if key.endswith(":"):
            try:
                parsed[key[:-1]] = load_value(value)
            except ValueFormatError as e:
                raise UsageError(f"--filter {item!r}: the value after := is not JSON ({e})") from None
        else:
            parsed[key] = value
    return parsed


def _session_ids(source: Source, named: Sequence[str], every: bool) -> tuple[Iterable[str], int]:
    if named and every:
        raise UsageError("name sessions or pass --all, not both")
    if named:
        return list(dict.fromkeys(named)), len(set(named))
    if not every:
        raise UsageError("name at least one session, or pass --all")
    return source.session_ids(), source.count()


# ------------------------------------------------------------------------------------------ list


_SUMMARY_AGENTS = {
    "$map": {
        "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
        "as": "a",
        "in": {"agent_id": "$$a.v.agent_id", "messages": "$$a.v.message_count"},
    }
}


def _session_of(key: Any) -> Any:
    """The session id in a session key (``{tenant, session}`` with a tenant)."""
    return key.get("session") if isinstance(key, Mapping) else key


def _summaries(source: Source, ids: list[str]) -> list[dict[str, Any]]:
    """One page of sessions with their agents, message counts, sizes (document and overflow) and metadata."""
    keys = [source.key(session_id) for session_id in ids]
    pipeline: list[dict[str, Any]] = [
        {"$match": {"_id": {"$in": keys}}},
        {
            "$project": {
                "session_id": 1,
                "session_type": 1,
                "created_at": 1,
                "updated_at": 1,
                "updated_date": 1,
                "metadata": 1,
                "size": {"$bsonSize": "$$ROOT"},
                "feedbacks": {"$cond": [{"$isArray": "$feedbacks"}, {"$size": "$feedbacks"}, 0]},
                "agents": _SUMMARY_AGENTS,
            }
        },
    ]
    overflow_pipeline: list[dict[str, Any]] = [
        {"$match": {"session_id": {"$in": keys}}},
        {"$group": {"_id": "$session_id", "bytes": {"$sum": {"$bsonSize": "$$ROOT"}}, "documents": {"$sum": 1}}},
    ]
    with source.errors(None, "summarise sessions"):
        documents = {doc.get("session_id", doc["_id"]): doc for doc in source.collection.aggregate(pipeline)}
        overflow = {_session_of(doc["_id"]): doc for doc in source.overflow.aggregate(overflow_pipeline)}
    summaries = []
    for session_id in ids:
        doc = documents.get(session_id)
        if doc is None:
            continue  # deleted meanwhile
        agents = [
            {"agent_id": agent.get("agent_id"), "messages": agent.get("messages")}
            for agent in doc.get("agents") or []
            if isinstance(agent, Mapping)
        ]
        extra = overflow.get(session_id) or {}
        summaries.append(
            {
                "session_id": session_id,
                "session_type": doc.get("session_type"),
                "created_at": doc.get("created_at"),
                "updated_at": doc.get("updated_at"),
                "last_activity": aware(doc.get("updated_date")),
                "agents": agents,
                "messages": sum(a["messages"] for a in agents if isinstance(a["messages"], int)),
                "feedbacks": doc.get("feedbacks", 0),
                "document_bytes": int(doc.get("size") or 0),
                "overflow_bytes": int(extra.get("bytes") or 0),
                "overflow_documents": int(extra.get("documents") or 0),
                "metadata": decode_value(doc.get("metadata") or {}),
            }
        )
    return summaries


def cmd_list(ctx: Context, args: argparse.Namespace) -> int:
    """``list``: sessions, their dates, agents, message counts, size and metadata."""
    if args.limit < 0:
        raise UsageError("--limit must be 0 (all) or more")
    source = ctx.source()
    query = source.query(parse_filters(args.filter))
    limit = None if args.limit == 0 else args.limit
    summaries: list[dict[str, Any]] = []
    page: list[str] = []
    with ctx.progress_bar("list", None) as progress:
        for session_id in source.session_ids(query, after=args.after, limit=limit):
            page.append(session_id)
            if len(page) == PAGE:
                summaries.extend(_summaries(source, page))
                progress.advance(len(page))
                page = []
        if page:
            summaries.extend(_summaries(source, page))
            progress.advance(len(page))
    if ctx.json:
        ctx.emit(
            [
                {
                    **summary,
                    "last_activity": summary["last_activity"].isoformat() if summary["last_activity"] else None,
                    "metadata": to_json(summary["metadata"]),
                }
                for summary in summaries
            ]
        )
        return OK
    rows = [
        [
            printable(summary["session_id"]),
            when(summary["created_at"]),
            when(summary["last_activity"]),
            str(len(summary["agents"])),
            str(summary["messages"]),
            size(summary["document_bytes"] + summary["overflow_bytes"]),
            compact(summary["metadata"], 60) if summary["metadata"] else "-",
        ]
        for summary in summaries
    ]
    for line in table(["SESSION", "CREATED", "LAST ACTIVITY", "AGENTS", "MESSAGES", "SIZE", "METADATA"], rows):
        ctx.say(line)
    if limit is not None and len(summaries) == limit:
        ctx.warn(f"first {limit} sessions; --limit 0 lists all, --after {summaries[-1]['session_id']!r} the next page")
    return OK


# ------------------------------------------------------------------------------------------ show


def cmd_show(ctx: Context, args: argparse.Namespace) -> int:
    """``show``: one conversation as a person reads it."""
    source = ctx.source()
    session_id: str = args.session
    snapshot = source.snapshot(session_id)
    if snapshot is None:
        ctx.warn(f"session_id=<{printable(session_id)}> | session does not exist in {ctx.where}")
        return PROBLEMS
    session, agents = snapshot
    extras = source.extras(session_id)
    if args.agent is not None and args.agent not in agents:
        ctx.warn(f"session_id=<{printable(session_id)}>, agent_id=<{printable(args.agent)}> | agent does not exist")
        return PROBLEMS
    shown = [args.agent] if args.agent is not None else list(agents)
    if args.last is not None and args.last < 0:
        raise UsageError("--last must be 0 or more")
    if ctx.json:
        ctx.emit(
            {
                "session": {
                    "session_id": session.session_id,
                    "session_type": str(getattr(session.session_type, "value", session.session_type)),
                    "created_at": session.created_at,
                    "updated_at": session.updated_at,
                },
                "last_activity": extras["last_activity"].isoformat() if extras["last_activity"] else None,
                "metadata": to_json(extras["metadata"]),
                "feedbacks": to_json(extras["feedbacks"]),
                "multi_agents": to_json(extras["multi_agents"]),
                "agents": [
                    {
                        "agent_id": agent_id,
                        "message_count": source.message_count(session_id, agent_id),
                        "state": to_json(agents[agent_id].state),
                        "conversation_manager_state": to_json(agents[agent_id].conversation_manager_state),
                        "messages": [
                            content_summary(entry) for entry in _entries(source, session_id, agent_id, args.last)
                        ],
                    }
                    for agent_id in shown
                ],
            }
        )
        return OK
    ctx.say(
        f"session {printable(session_id)}  ({printable(str(getattr(session.session_type, 'value', session.session_type)))})"
    )
    ctx.say(f"  created {when(session.created_at)}, last activity {when(extras['last_activity'])}")
    ctx.say(f"  metadata  {compact(extras['metadata']) if extras['metadata'] else '-'}")
    feedbacks = extras["feedbacks"]
    ctx.say("  feedback" + ("" if feedbacks else "  -"))
    for entry in feedbacks:
        comment = entry.get("comment") or ""
        ctx.say(f"    {when(entry.get('created_at'))}  {printable(str(entry.get('rating')))}  {compact(comment)}")
    for multi_agent_id, state in extras["multi_agents"].items():
        ctx.say(f"  multi-agent {printable(multi_agent_id)}  {compact(state)}")
    for agent_id in shown:
        agent = agents[agent_id]
        count = source.message_count(session_id, agent_id)
        ctx.say("")
        ctx.say(f"agent {printable(agent_id)}  {count} message{'s' if count != 1 else ''}")
        ctx.say(f"  state  {compact(agent.state) if agent.state else '-'}")
        manager = agent.conversation_manager_state or {}
        ctx.say(f"  conversation manager  {compact(manager) if manager else '-'}")
        first = True
        for entry in _entries(source, session_id, agent_id, args.last):
            if first and entry.get("message_id", 0) > 0:
                ctx.say(f"  ... {entry['message_id']} earlier message(s)")
            first = False
            for line in message_lines(entry):
                ctx.say("  " + line)
    return OK


def _entries(source: Source, session_id: str, agent_id: str, last: int | None) -> Iterable[dict[str, Any]]:
    count = source.message_count(session_id, agent_id)
    offset = max(0, count - last) if last is not None else 0
    while offset < count:
        _, entries = source.read_entries(session_id, agent_id, offset, min(PAGE, count - offset), binaries=False)
        if not entries:
            return
        yield from entries
        offset += len(entries)


# ------------------------------------------------------------------------------------------ export / import


def _report(ctx: Context, verb: str, report: Report, to_stderr: bool = False) -> int:
    """Print what an export or import did (on stderr for an export, whose stdout may be the data)."""
    if ctx.json:
        ctx.emit(report.to_json())
    else:
        say = ctx.warn if to_stderr else ctx.say
        say(f"{verb} {report.sessions} session(s), {report.messages} message(s)")
        for session_id, reason in report.failed:
            say(f"failed   session_id=<{printable(session_id)}> | {printable(reason)}")
    return PROBLEMS if report.failed else OK


def cmd_export(ctx: Context, args: argparse.Namespace) -> int:
    """``export``: sessions to our JSON Lines format (stdout or a file) or to Strands' file layout (a directory)."""
    source = ctx.source()
    session_ids, total = _session_ids(source, args.sessions, args.all)
    with ctx.progress_bar("export", total) as progress:
        if args.format == "strands-files":
            if args.out is None or args.out == "-":
                raise UsageError("--format strands-files writes a directory: give it with --out DIR")
            if Path(args.out).exists() and not Path(args.out).is_dir():
                raise UsageError(f"--out {args.out} is not a directory")
            report = export_files(source, session_ids, Path(args.out), args.overwrite, progress)
        else:
            out = binary_output(args.out)
            if ctx.json and out is sys.stdout.buffer:
                raise UsageError("--json prints the report on stdout: give the export a file with --out")
            try:
                report = export_jsonl(source, session_ids, total, out, progress)
            finally:
                if out is not sys.stdout.buffer:
                    out.close()
    return _report(ctx, "exported", report, to_stderr=True)


def cmd_import(ctx: Context, args: argparse.Namespace) -> int:
    """``import``: sessions from an export, or from a directory written by Strands' FileSessionManager."""
    path = Path(args.path)
    file_format = args.format or ("strands-files" if path.is_dir() else "jsonl")
    if file_format == "strands-files":
        if not path.is_dir():
            raise UsageError(f"{args.path} is not a directory (Strands' file layout is a directory)")
        sessions = file_sessions(path)
        repository = ctx.repository()
        with ctx.progress_bar("import", len(sessions)) as progress:
            report = import_files(repository, sessions, args.overwrite, progress)
        return _report(ctx, "imported", report)
    if args.path != "-" and not path.is_file():
        raise UsageError(f"{args.path} is not a file")
    stream = sys.stdin.buffer if args.path == "-" else open(path, "rb")  # noqa: SIM115
    try:
        lines = iter(stream)
        try:
            head, record = first_record(lines)
            check_header(record, len(head))
        except NotAnExport as e:
            raise UsageError(f"{args.path}: {e}") from None
        repository = ctx.repository()
        with ctx.progress_bar("import", None) as progress:
            report = import_jsonl(repository, itertools.chain(head, lines), args.overwrite, progress)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    return _report(ctx, "imported", report)


# ------------------------------------------------------------------------------------------ verify


def _line(finding: Finding) -> str:
    where = [f"session_id=<{printable(finding.session_id)}>"]
    if finding.agent_id is not None:
        where.append(f"agent_id=<{printable(finding.agent_id)}>")
    if finding.message_id is not None:
        where.append(f"message_id=<{finding.message_id}>")
    label = "problem" if finding.problem else "note"
    tail = "" if not finding.problem else (" (repairable)" if finding.repairable else " (not repairable)")
    return f"{label:<8} {finding.kind:<27} {', '.join(where)} | {printable(finding.detail)}{tail}"


def cmd_verify(ctx: Context, args: argparse.Namespace) -> int:
    """``verify``: check sessions for damage; ``--repair`` fixes what can be fixed without loss."""
    source = ctx.source()
    every = args.all or not args.sessions
    session_ids, total = _session_ids(source, args.sessions, every)
    if args.grace < 0:
        raise UsageError("--grace must be 0 or more seconds")
    verifier = Verifier(source, timedelta(seconds=args.grace), read_binaries=not args.quick)
    repairer = Repairer(verifier, ctx.repository()) if args.repair else None
    found: list[Finding] = []
    repairs: list[dict[str, Any]] = []
    remaining: list[Finding] = []
    checked = 0

    def handle(check: SessionCheck) -> None:
        found.extend(check.findings)
        if repairer is None or not check.problems:
            remaining.extend(check.problems)
            return
        try:
            actions = repairer.repair(check)
        except MongoDBSessionError as e:
            if isinstance(e.__cause__, PyMongoError):
                raise  # the server is failing: stop
            actions = [f"repair failed: {e}"]  # this session changed under the repair, say: the others go on
        if actions:
            repairs.append({"session_id": check.session_id, "actions": actions})
            check = verifier.check(check.session_id) if check.exists else _rechecked(verifier, check)
        remaining.extend(check.problems)

    with ctx.progress_bar("verify", total) as progress:
        for session_id in session_ids:
            progress.advance(0, session_id)
            handle(verifier.check(session_id))
            checked += 1
            progress.advance(1, session_id)
        if every:
            for check in verifier.collection_orphans():
                handle(check)
    problems = [finding for finding in found if finding.problem]
    notes = [finding for finding in found if not finding.problem]
    if ctx.json:
        ctx.emit(
            {
                "checked": checked,
                "problems": [finding.to_json() for finding in problems],
                "notes": [finding.to_json() for finding in notes],
                "repairs": repairs,
                "remaining": [finding.to_json() for finding in remaining] if args.repair else None,
            }
        )
    else:
        sessions = len({finding.session_id for finding in problems})
        ctx.say(
            f"checked {checked} session(s): {len(problems)} problem(s) in {sessions} session(s), {len(notes)} note(s)"
        )
        for finding in [*problems, *notes]:
            ctx.say(_line(finding))
        if args.repair:
            for repair in repairs:
                for action in repair["actions"]:
                    ctx.say(f"repaired session_id=<{printable(repair['session_id'])}> | {printable(action)}")
            ctx.say(f"after repair: {len(remaining)} problem(s) remain")
            for finding in remaining:
                ctx.say(_line(finding))
    return PROBLEMS if remaining else OK


def _rechecked(verifier: Verifier, check: SessionCheck) -> SessionCheck:
    again = verifier.check(check.session_id)
    if not again.exists and [f.kind for f in again.problems] == ["not-found"]:
        return SessionCheck(check.session_id, False)  # nothing left of it: repaired
    return again


# ------------------------------------------------------------------------------------------ delete, stats, migrate


def cmd_delete(ctx: Context, args: argparse.Namespace) -> int:
    """``delete``: sessions, with everything they keep outside their documents."""
    session_ids = list(dict.fromkeys(args.sessions))
    if not args.yes:
        if not sys.stdin.isatty():
            raise UsageError("delete asks for confirmation on a terminal; pass --yes to delete without asking")
        shown = ", ".join(printable(session_id) for session_id in session_ids[:5])
        more = f" and {len(session_ids) - 5} more" if len(session_ids) > 5 else ""
        ctx.err.write(f"Delete {len(session_ids)} session(s) ({shown}{more}) from {ctx.where}? [y/N] ")
        ctx.err.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            ctx.warn("nothing deleted")
            return PROBLEMS
    ctx.source()
    repository = ctx.repository()
    deleted, missing = [], []
    with ctx.progress_bar("delete", len(session_ids)) as progress:
        for session_id in session_ids:
            try:
                repository.delete_session(session_id)
                deleted.append(session_id)
            except SessionNotFoundError:
                missing.append(session_id)
            progress.advance(1, session_id)
    if ctx.json:
        ctx.emit({"deleted": deleted, "missing": missing})
    else:
        ctx.say(f"deleted {len(deleted)} session(s)")
        for session_id in missing:
            ctx.say(f"missing  session_id=<{printable(session_id)}> | session does not exist")
    return PROBLEMS if missing else OK


_SESSION_SIZES: list[dict[str, Any]] = [
    {
        "$project": {
            "size": {"$bsonSize": "$$ROOT"},
            "messages": {
                "$sum": {
                    "$map": {
                        "input": {"$objectToArray": {"$ifNull": ["$agents", {}]}},
                        "as": "a",
                        "in": "$$a.v.message_count",
                    }
                }
            },
        }
    }
]
_OVERFLOW_SIZES: list[dict[str, Any]] = [
    {
        "$group": {
            "_id": {"session_id": "$session_id", "kind": "$kind"},
            "bytes": {"$sum": {"$bsonSize": "$$ROOT"}},
            "documents": {"$sum": 1},
        }
    }
]


_KIND_NAMES = {"messages": "bucket(s) of moved messages", "blob": "binary chunk(s)"}


def _session_sizes(source: Source) -> Iterable[dict[str, Any]]:
    """Each session's size and message count, a page per command (a cursor lives at most ``timeoutMS``)."""
    after: Any = None
    while True:
        match = source.query(None)  # the --tenant's sessions (or those without a tenant)
        if after is not None:
            match["_id"] = {"$gt": after}
        pipeline: list[dict[str, Any]] = [{"$match": match}, {"$sort": {"_id": 1}}, {"$limit": PAGE}, *_SESSION_SIZES]
        with source.errors(None, "measure sessions"):
            page = list(source.collection.aggregate(pipeline))
        yield from page
        if len(page) < PAGE:
            return
        after = page[-1]["_id"]


def cmd_stats(ctx: Context, args: argparse.Namespace) -> int:
    """``stats``: collection sizes, the biggest sessions, the overflow collection's share."""
    if args.top < 0:
        raise UsageError("--top must be 0 or more")
    source = ctx.source()
    with source.errors(None, "measure the overflow collection"):
        groups = list(source.overflow.aggregate(_OVERFLOW_SIZES))
    overflow_of: dict[Any, int] = {}
    kinds: dict[str, dict[str, int]] = {}
    for group in groups:
        owner, kind = group["_id"].get("session_id"), str(group["_id"].get("kind"))
        overflow_of[owner] = overflow_of.get(owner, 0) + int(group["bytes"])
        totals = kinds.setdefault(kind, {"documents": 0, "bytes": 0})
        totals["documents"] += int(group["documents"])
        totals["bytes"] += int(group["bytes"])
    count = document_bytes = messages = 0
    biggest: list[tuple[int, str, int, int]] = []
    with ctx.progress_bar("stats", source.count()) as progress:
        for doc in _session_sizes(source):
            count += 1
            document_bytes += int(doc["size"])
            messages += int(doc.get("messages") or 0)
            total = int(doc["size"]) + overflow_of.get(doc["_id"], 0)
            entry = (total, str(doc["_id"]), int(doc["size"]), int(doc.get("messages") or 0))
            if len(biggest) < args.top:
                heapq.heappush(biggest, entry)
            elif args.top:
                heapq.heappushpop(biggest, entry)
            progress.advance(1)
    overflow_bytes = sum(totals["bytes"] for totals in kinds.values())
    share = overflow_bytes / (document_bytes + overflow_bytes) if document_bytes + overflow_bytes else 0.0
    ttl = source.ttl()
    top: list[dict[str, Any]] = [
        {
            "session_id": session_id,
            "total_bytes": total,
            "document_bytes": doc_size,
            "overflow_bytes": total - doc_size,
            "messages": n,
        }
        for total, session_id, doc_size, n in sorted(biggest, reverse=True)
    ]
    storage = _storage_sizes(source)
    if ctx.json:
        ctx.emit(
            {
                "database": ctx.database,
                "collection": ctx.collection,
                "sessions": count,
                "messages": messages,
                "document_bytes": document_bytes,
                "overflow_collection": ctx.overflow_name,
                "overflow_documents": sum(totals["documents"] for totals in kinds.values()),
                "overflow_bytes": overflow_bytes,
                "overflow_by_kind": kinds,
                "sessions_with_overflow": len([owner for owner in overflow_of if isinstance(owner, str)]),
                "overflow_share": round(share, 4),
                "ttl_seconds": ttl,
                "storage": storage,
                "biggest": top,
            }
        )
        return OK
    ctx.say(
        f"sessions   {ctx.database}.{ctx.collection}: {count} session(s), {messages} message(s), {size(document_bytes)} in documents"
        + (f" (average {size(document_bytes // count)})" if count else "")
    )
    described = ", ".join(
        f"{totals['documents']} {_KIND_NAMES.get(kind, repr(kind) + ' document(s)')} ({size(totals['bytes'])})"
        for kind, totals in sorted(kinds.items())
    )
    ctx.say(
        f"overflow   {ctx.database}.{ctx.overflow_name}: {size(overflow_bytes)}"
        + (f" in {described}" if described else "")
    )
    ctx.say(
        f"           {share:.1%} of the stored bytes, for {len([o for o in overflow_of if isinstance(o, str)])} session(s)"
    )
    ctx.say(
        f"expiry     {'sessions expire ' + str(timedelta(seconds=ttl)) + ' after their last write' if ttl is not None else 'none: sessions are kept until deleted'}"
    )
    for name, sizes in storage.items():
        ctx.say(
            f"storage    {name}: {size(sizes.get('storage_bytes'))} on disk, indexes {size(sizes.get('index_bytes'))}"
        )
    if top:
        ctx.say("")
        ctx.say("biggest sessions")
        rows = [
            [
                printable(t["session_id"]),
                size(t["total_bytes"]),
                size(t["document_bytes"]),
                size(t["overflow_bytes"]),
                str(t["messages"]),
            ]
            for t in top
        ]
        for line in table(["SESSION", "TOTAL", "DOCUMENT", "OVERFLOW", "MESSAGES"], rows):
            ctx.say("  " + line)
    return OK


def _storage_sizes(source: Source) -> dict[str, dict[str, int | None]]:
    """Storage and index sizes from ``collStats``, where the server answers it (else nothing)."""
    sizes: dict[str, dict[str, int | None]] = {}
    database = source.client[source.database_name]
    for collection in (source.collection, source.overflow):
        try:
            answer = database.command("collStats", collection.name)
        except Exception:  # not every server has collStats, nor every user the right to it: optional
            continue
        sizes[collection.name] = {
            "storage_bytes": _int(answer.get("storageSize")),
            "index_bytes": _int(answer.get("totalIndexSize")),
        }
    return sizes


def _int(value: Any) -> int | None:
    return int(value) if isinstance(value, int | float) else None


def cmd_migrate(ctx: Context, args: argparse.Namespace) -> int:
    """``migrate-snapshots``: sessions from the message log to Strands snapshots in a ``MongoDBStorage``."""
    from ..storage import MigrationProgress, MongoDBStorage, migrate_sessions

    source = ctx.source()
    named = list(dict.fromkeys(args.sessions))
    if named and args.all:
        raise UsageError("name sessions or pass --all, not both")
    if not named and not args.all:
        raise UsageError("name at least one session, or pass --all")
    total = len(named) if named else source.count()
    repository = ctx.repository()
    storage = MongoDBStorage(
        ctx.uri,
        database_name=args.storage_database or ctx.database,
        collection_name=args.storage_collection,
        **ctx.client_options,
    )
    try:
        with ctx.progress_bar("migrate", total) as progress:

            def advance(step: MigrationProgress) -> None:
                progress.advance(step.sessions - progress.done, step.session_id)

            report = migrate_sessions(
                repository, storage, session_ids=named or None, overwrite=args.overwrite, progress=advance
            )
    finally:
        storage.close()
    if ctx.json:
        ctx.emit(
            {
                "sessions": report.sessions,
                "agents": report.agents,
                "multi_agents": report.multi_agents,
                "skipped": report.skipped,
                "missing": report.missing,
            }
        )
    else:
        ctx.say(
            f"migrated {report.sessions} session(s): {report.agents} agent snapshot(s), {report.multi_agents} "
            f"Graph/Swarm snapshot(s) written, {report.skipped} existing left alone"
        )
        for session_id in report.missing:
            ctx.say(f"missing  session_id=<{printable(session_id)}> | session does not exist")
    return PROBLEMS if report.missing else OK


COMMANDS = {
    "list": cmd_list,
    "show": cmd_show,
    "export": cmd_export,
    "import": cmd_import,
    "verify": cmd_verify,
    "delete": cmd_delete,
    "stats": cmd_stats,
    "migrate-snapshots": cmd_migrate,
}

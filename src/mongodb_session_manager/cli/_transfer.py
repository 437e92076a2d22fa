"""``export`` and ``import``: sessions in and out of MongoDB, in our JSON Lines format or Strands' file layout.

**JSON Lines** (``--format jsonl``, the default) is lossless: importing an export gives back
exactly what was stored, byte for byte in every value (``bytes``, datetimes, ``Int64``, objects with
``$``-keys, dots and any unicode, key order), in every place a session keeps something: each
agent's state, conversation-manager state and ``_internal_state``, every message with its
redaction, timestamps and the fields stored beside it (``event_loop_metrics``), Graph and Swarm
states, metadata and feedback (with its server timestamps). Values are encoded as described in
:mod:`mongodb_session_manager.cli._values` (Extended JSON for what JSON lacks, one escape for
``$``-keys). One JSON object per line, UTF-8::

    {"kind":"header","format":"mongodb-session-manager","version":1,"exported_at":{"$date":...},
     "database":"chat","collection":"sessions","sessions":2}
    {"kind":"session","session_id":"user-42","session":{"session_id":...,"session_type":"AGENT",
     "created_at":"...","updated_at":"..."},"metadata":{...},"feedbacks":[{"rating":"up","comment":"...",
     "created_at":{"$date":...}}],"last_activity":{"$date":...}}
    {"kind":"agent","session_id":"user-42","agent":{"agent_id":"default","state":{...},
     "conversation_manager_state":{...},"_internal_state":{...},"created_at":"...","updated_at":"..."}}
    {"kind":"message","session_id":"user-42","agent_id":"default","message":{"message":{...},
     "message_id":0,"redact_message":null,"created_at":"...","updated_at":"..."},"fields":{...}}
    {"kind":"multi_agent","session_id":"user-42","id":"graph-1","state":{...}}
    {"kind":"end","session_id":"user-42","agents":1,"messages":4,"multi_agents":1}
    {"kind":"footer","sessions":2}

An agent's messages follow its ``agent`` line in ``message_id`` order; ``end`` closes a session
and states its counts, so a file cut short (a full disk, an interrupted copy) never imports a
partial session: the import checks the counts and removes a session it could not finish.

Importing goes through the repository's public API, as an application's writes do, so the
session is stored as the library stores it (counters, size estimate, old messages moved out and
large binaries offloaded under the target's settings). One thing cannot be written that way and is
written directly: each feedback entry's ``created_at`` (the server stamps new ones) is set back to
the exported time, in one update. What differs after an import: ``updated_date`` (the last activity, which
drives expiry) is the time of the import, and a Graph's or Swarm's record carries the import time.

**Strands' file layout** (``--format strands-files``) is the directory ``FileSessionManager`` reads
and writes (``session_<id>/session.json``, ``agents/agent_<id>/agent.json``,
``messages/message_<n>.json``, ``multi_agents/multi_agent_<id>/multi_agent.json``; ``S3SessionManager``
uses the same keys in a bucket), written and read by Strands' own code. It is plain JSON with
``bytes`` in Strands' base64 form: an ``Int64`` comes back as a plain integer, and a value JSON
cannot hold (a datetime in an agent's state) makes the export of that session fail rather than
change. Metadata, feedback and the fields beside messages, which Strands has no place for, go to
one extra file per session, ``mongodb-session-manager.json`` (our value encoding), which Strands
ignores and the import reads when it is there.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, cast

from pymongo.errors import PyMongoError
from strands.session.file_session_manager import (
    AGENT_PREFIX,
    MULTI_AGENT_PREFIX,
    SESSION_PREFIX,
    FileSessionManager,
)
from strands.types.exceptions import SessionException
from strands.types.session import Session, SessionAgent, SessionMessage, SessionType

from .._documents import utc_now
from ..errors import MongoDBSessionError, SessionConflictError, SessionNotFoundError, SessionStorageError, translated
from ._progress import Progress
from ._source import PAGE, Source, split_entry
from ._values import ValueFormatError, dumps, loads

if TYPE_CHECKING:
    from strands.multiagent.base import MultiAgentBase

    from ..mongodb_session_repository import MongoDBSessionRepository

__all__ = [
    "FORMAT",
    "SIDECAR",
    "VERSION",
    "NotAnExport",
    "Report",
    "check_header",
    "export_files",
    "export_jsonl",
    "file_sessions",
    "first_record",
    "import_files",
    "import_jsonl",
    "is_outage",
]

logger = logging.getLogger(__name__)

FORMAT = "mongodb-session-manager"
VERSION = 1
#: The extra file of a session in Strands' layout: what Strands has no place for.
SIDECAR = "mongodb-session-manager.json"
_SIDECAR_FORMAT = "mongodb-session-manager/strands-files-extras"


class TransferError(Exception):
    """One session could not be exported or imported (the others go on)."""


class NotAnExport(Exception):
    """The file given to import is not an export of this format (nothing was imported)."""


@dataclass
class Report:
    """What an export or import did: sessions done, messages, and each session that failed, and why."""

    sessions: int = 0
    messages: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    def fail(self, session_id: str, reason: str) -> None:
        self.failed.append((session_id, reason))

    def to_json(self) -> dict[str, Any]:
        return {
            "sessions": self.sessions,
            "messages": self.messages,
            "failed": [{"session_id": session_id, "reason": reason} for session_id, reason in self.failed],
        }


def is_outage(error: BaseException) -> bool:
    """Whether a library error is the server failing (stop everything) rather than one session's data."""
    return isinstance(error, SessionStorageError) and isinstance(error.__cause__, PyMongoError)


# ------------------------------------------------------------------------------------------ reading a session


@dataclass
class _Stored:
    session: Session
    agents: dict[str, SessionAgent]
    metadata: dict[str, Any]
    feedbacks: list[dict[str, Any]]
    multi_agents: dict[str, Any]
    last_activity: Any


def _read(source: Source, session_id: str) -> _Stored:
    snapshot = source.snapshot(session_id)
    if snapshot is None:
        raise TransferError("session does not exist")
    extras = source.extras(session_id)
    session, agents = snapshot
    return _Stored(
        session, agents, extras["metadata"], extras["feedbacks"], extras["multi_agents"], extras["last_activity"]
    )


def _messages(source: Source, session_id: str, agent_id: str) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """An agent's messages as ``(SessionMessage fields, fields beside)``, a page at a time, binaries whole."""
    count, entries = source.read_entries(session_id, agent_id, 0, PAGE)
    offset = 0
    while True:
        for entry in entries:
            yield split_entry(entry)
        offset += len(entries)
        if offset >= count or not entries:
            return
        _, entries = source.read_entries(session_id, agent_id, offset, min(PAGE, count - offset))


def _session_fields(session: Session) -> dict[str, Any]:
    session_type = session.session_type
    return {
        "session_id": session.session_id,
        "session_type": session_type.value if isinstance(session_type, SessionType) else str(session_type),
        "created_at": session.created_at,
        "updated_at": session.updated_at,
    }


def _agent_fields(agent: SessionAgent) -> dict[str, Any]:
    return {
        "agent_id": agent.agent_id,
        "state": agent.state,
        "conversation_manager_state": agent.conversation_manager_state,
        "_internal_state": agent._internal_state,
        "created_at": agent.created_at,
        "updated_at": agent.updated_at,
    }


# ------------------------------------------------------------------------------------------ writing a session


class _State:
    """A stored Graph or Swarm state, shaped as the repository's ``create_multi_agent`` reads one."""

    def __init__(self, multi_agent_id: str, state: Any) -> None:
        self.id = multi_agent_id
        self._state = state

    def serialize_state(self) -> Any:
        return self._state


class _SessionImport:
    """One session being imported through the repository's public API (see the module docstring).

    Raises (at construction):
        TransferError: The session exists and ``overwrite`` is false.
    """

    def __init__(
        self,
        repository: MongoDBSessionRepository,
        session: Session,
        metadata: Mapping[str, Any],
        feedbacks: list[Mapping[str, Any]],
        overwrite: bool,
    ) -> None:
        self.repository = repository
        self.session_id = session.session_id
        self.agents = self.messages = self.multi_agents = 0
        self.created = False
        try:
            repository.create_session(session)
        except SessionConflictError:
            if not overwrite:
                raise TransferError("session exists in the target (use --overwrite to replace it)") from None
            repository.delete_session(self.session_id)
            repository.create_session(session)
        self.created = True
        try:
            self._extras(metadata, feedbacks)
        except BaseException:
            self.abort()
            raise

    def _extras(self, metadata: Mapping[str, Any], feedbacks: list[Mapping[str, Any]]) -> None:
        repository = self.repository
        if metadata:
            repository.update_metadata(self.session_id, dict(metadata))
        stamps = {}
        for index, entry in enumerate(feedbacks):
            repository.add_feedback(self.session_id, {key: entry[key] for key in ("rating", "comment") if key in entry})
            if entry.get("created_at") is not None:
                stamps[f"feedbacks.{index}.created_at"] = entry["created_at"]
        if stamps:  # the server stamped them now: put back the exported times (a date for a date, same size)
            with translated(repository.client, self.session_id, "restore feedback times"):
                repository.collection.update_one({"_id": repository.session_key(self.session_id)}, {"$set": stamps})

    def agent(self, agent: SessionAgent) -> None:
        self.repository.create_agent(self.session_id, agent)
        self.agents += 1

    def message(self, agent_id: str, fields: Mapping[str, Any], beside: Mapping[str, Any] | None) -> None:
        try:
            message = SessionMessage(**fields)
        except TypeError as e:
            raise TransferError(f"agent {agent_id!r}: a message record is malformed: {e}") from None
        self.repository.create_message(self.session_id, agent_id, message, extra_fields=beside or None)
        self.messages += 1

    def multi_agent(self, multi_agent_id: str, state: Any) -> None:
        self.repository.create_multi_agent(self.session_id, cast("MultiAgentBase", _State(multi_agent_id, state)))
        self.multi_agents += 1

    def finish(self, expected: Mapping[str, Any] | None) -> None:
        if expected is not None:
            counted = {"agents": self.agents, "messages": self.messages, "multi_agents": self.multi_agents}
            wrong = {
                name: (expected.get(name), value) for name, value in counted.items() if expected.get(name) != value
            }
            if wrong:
                raise TransferError(
                    f"the export says {', '.join(f'{n}={e!r}' for n, (e, _) in wrong.items())}, "
                    f"but {', '.join(f'{n}={v}' for n, (_, v) in wrong.items())} were found"
                )

    def abort(self) -> None:
        """Remove what was imported of this session (it would be a partial session)."""
        if not self.created:
            return
        self.created = False
        try:
            self.repository.delete_session(self.session_id)
        except SessionNotFoundError:
            pass
        except MongoDBSessionError as e:  # the server is failing: say so, and let the first error through
            logger.warning(
                "session_id=<%s> | could not remove the partly imported session (import it again with --overwrite): %s",
                self.session_id,
                e,
            )


# ------------------------------------------------------------------------------------------ JSON Lines


def export_jsonl(
    source: Source, session_ids: Iterable[str], total: int | None, out: IO[bytes], progress: Progress
) -> Report:
    """Write the sessions to ``out`` in the JSON Lines format (see the module docstring).

    A session that cannot be read whole (damaged data) is reported and left out: what was written
    of it has no ``end`` line, so an import skips it.
    """
    report = Report()

    def write(record: Mapping[str, Any]) -> None:
        out.write(dumps(record).encode("utf-8") + b"\n")

    write(
        {
            "kind": "header",
            "format": FORMAT,
            "version": VERSION,
            "exported_at": utc_now(),
            "database": source.database_name,
            "collection": source.collection.name,
            "sessions": total,
        }
    )
    for session_id in session_ids:
        progress.advance(0, session_id)
        try:
            report.messages += _export_one_jsonl(source, session_id, write)
            report.sessions += 1
        except (TransferError, MongoDBSessionError) as e:
            if is_outage(e):
                raise
            report.fail(session_id, str(e))
        progress.advance(1, session_id)
    write({"kind": "footer", "sessions": report.sessions})
    out.flush()
    return report


def _export_one_jsonl(source: Source, session_id: str, write: Any) -> int:
    stored = _read(source, session_id)
    write(
        {
            "kind": "session",
            "session_id": session_id,
            "session": _session_fields(stored.session),
            "metadata": stored.metadata,
            "feedbacks": stored.feedbacks,
            "last_activity": stored.last_activity,
        }
    )
    messages = 0
    for agent_id, agent in stored.agents.items():
        write({"kind": "agent", "session_id": session_id, "agent": _agent_fields(agent)})
        for fields, beside in _messages(source, session_id, agent_id):
            record: dict[str, Any] = {
                "kind": "message",
                "session_id": session_id,
                "agent_id": agent_id,
                "message": fields,
            }
            if beside:
                record["fields"] = beside
            write(record)
            messages += 1
    for multi_agent_id, state in stored.multi_agents.items():
        write({"kind": "multi_agent", "session_id": session_id, "id": multi_agent_id, "state": state})
    write(
        {
            "kind": "end",
            "session_id": session_id,
            "agents": len(stored.agents),
            "messages": messages,
            "multi_agents": len(stored.multi_agents),
        }
    )
    return messages


def import_jsonl(
    repository: MongoDBSessionRepository, lines: Iterable[bytes], overwrite: bool, progress: Progress
) -> Report:
    """Import every session of a JSON Lines export (see the module docstring).

    A session that fails (it exists and ``overwrite`` is false, a record is malformed, a value is
    refused, the file ends inside it) is reported, and what was imported of it is removed; the
    others are imported.

    Raises:
        NotAnExport: The first line is not the header of an export of this format and version.
    """
    report = Report()
    state = _Reading()
    try:
        _import_lines(repository, lines, overwrite, progress, report, state)
    except BaseException:  # the server failing, Ctrl-C: no partial session is left behind
        if state.current is not None:
            state.current.abort()
        raise
    return report


@dataclass
class _Reading:
    """Where an import of JSON Lines stands."""

    current: _SessionImport | None = None
    skipping: str | None = None  # a failed session, whose remaining records are ignored
    header: bool = False


def _import_lines(
    repository: MongoDBSessionRepository,
    lines: Iterable[bytes],
    overwrite: bool,
    progress: Progress,
    report: Report,
    state: _Reading,
) -> None:
    def fail(session_id: str, reason: str) -> None:
        if state.current is not None:
            state.current.abort()
        report.fail(session_id, reason)
        state.current, state.skipping = None, session_id

    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            record = loads(raw)
            if not isinstance(record, dict) or not isinstance(record.get("kind"), str):
                raise ValueFormatError("a record is an object with a kind")
        except ValueFormatError as e:
            if not state.header:
                raise NotAnExport(f"line {number} is not a {FORMAT} export header ({e})") from None
            fail(state.current.session_id if state.current is not None else "-", f"line {number}: {e}")
            continue
        kind, session_id = record["kind"], record.get("session_id")
        if not state.header:
            state.header = True
            total = check_header(record, number)
            if total is not None:
                progress.total = total
            continue
        if kind == "footer":
            continue
        if kind != "session" and state.skipping is not None and session_id == state.skipping:
            continue
        try:
            if kind == "session":
                if state.current is not None:
                    fail(
                        state.current.session_id, f"line {number}: the next session starts before this one's end record"
                    )
                state.skipping = None
                session_id = _string(session_id, "session_id")
                progress.advance(0, session_id)
                state.current = _SessionImport(repository, *_session_record(record), overwrite)
                continue
            current = state.current
            if current is None or session_id != current.session_id:
                raise TransferError(f"a {kind} record outside its session")
            if kind == "agent":
                current.agent(SessionAgent(**_mapping(record.get("agent"), "agent")))
            elif kind == "message":
                current.message(
                    _string(record.get("agent_id"), "agent_id"),
                    _mapping(record.get("message"), "message"),
                    record.get("fields"),
                )
            elif kind == "multi_agent":
                current.multi_agent(_string(record.get("id"), "id"), record.get("state"))
            elif kind == "end":
                current.finish(record)
                report.sessions += 1
                report.messages += current.messages
                state.current = None
                progress.advance(1)
            else:
                raise TransferError(f"unknown record kind {kind!r}")
        except (TransferError, TypeError, MongoDBSessionError) as e:
            if is_outage(e):
                raise
            target = state.current.session_id if state.current is not None else session_id
            fail(target if isinstance(target, str) else "-", f"line {number}: {e}")
    if not state.header:
        raise NotAnExport(f"the file is empty: not a {FORMAT} export")
    if state.current is not None:
        fail(state.current.session_id, "the file ends inside this session (the export was cut short)")


def check_header(record: Any, number: int = 1) -> int | None:
    """Check the first record of an export; returns how many sessions it announces (if it says).

    Raises:
        NotAnExport: It is not the header of an export of this format and version.
    """
    if (
        not isinstance(record, dict)
        or record.get("kind") != "header"
        or record.get("format") != FORMAT
        or record.get("version") != VERSION
    ):
        shown = (
            {name: record.get(name) for name in ("kind", "format", "version")} if isinstance(record, dict) else record
        )
        raise NotAnExport(f"line {number} is not the header of a {FORMAT} export of version {VERSION}: {shown!r}"[:300])
    sessions = record.get("sessions")
    return sessions if isinstance(sessions, int) and not isinstance(sessions, bool) else None


def first_record(lines: Iterator[bytes]) -> tuple[list[bytes], Any]:
    """Read up to the first non-empty line: ``(lines read, its record)``.

    Raises:
        NotAnExport: The file is empty or its first line is not JSON.
    """
    read: list[bytes] = []
    for raw in lines:
        read.append(raw)
        if raw.strip():
            try:
                return read, loads(raw)
            except ValueFormatError as e:
                raise NotAnExport(f"line {len(read)} is not a {FORMAT} export header ({e})") from None
    raise NotAnExport(f"the file is empty: not a {FORMAT} export")


def _session_record(record: Mapping[str, Any]) -> tuple[Session, dict[str, Any], list[Mapping[str, Any]]]:
    fields = _mapping(record.get("session"), "session")
    if fields.get("session_id") != record.get("session_id"):
        raise TransferError(f"the session record names session {fields.get('session_id')!r}")
    try:
        session = Session(**{**fields, "session_type": SessionType(fields.get("session_type"))})
    except (TypeError, ValueError) as e:
        raise TransferError(f"the session record is malformed: {e}") from None
    feedbacks = record.get("feedbacks") or []
    if not isinstance(feedbacks, list) or not all(isinstance(entry, Mapping) for entry in feedbacks):
        raise TransferError("feedbacks must be a list of objects")
    return session, _mapping(record.get("metadata") or {}, "metadata"), feedbacks


def _mapping(value: Any, name: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        raise TransferError(f"{name} must be an object, got {type(value).__name__}")
    return dict(value)


def _string(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise TransferError(f"{name} must be a string, got {type(value).__name__}")
    return value


# ------------------------------------------------------------------------------------------ Strands' file layout


class _FileLayout(FileSessionManager):
    """Strands' ``FileSessionManager`` as a plain repository: its own file reading and writing, without
    starting a session manager (which would create a session)."""

    def __init__(self, storage_dir: str) -> None:
        self.storage_dir = storage_dir
        os.makedirs(storage_dir, mode=0o700, exist_ok=True)


def export_files(
    source: Source, session_ids: Iterable[str], directory: Path, overwrite: bool, progress: Progress
) -> Report:
    """Write the sessions into ``directory`` in Strands' ``FileSessionManager`` layout (see the module docstring)."""
    layout = _FileLayout(str(directory))
    report = Report()
    for session_id in session_ids:
        progress.advance(0, session_id)
        try:
            report.messages += _export_one_file(source, layout, session_id, overwrite)
            report.sessions += 1
        except (TransferError, MongoDBSessionError) as e:
            if is_outage(e):
                raise
            report.fail(session_id, str(e))
        progress.advance(1, session_id)
    return report


def _export_one_file(source: Source, layout: _FileLayout, session_id: str, overwrite: bool) -> int:
    stored = _read(source, session_id)
    folder = Path(layout._get_session_path(session_id))
    if folder.exists():
        if not overwrite:
            raise TransferError(f"{folder} exists (use --overwrite to replace it)")
        shutil.rmtree(folder)
    messages = 0
    fields_beside: dict[str, dict[str, Any]] = {}
    try:
        layout.create_session(stored.session)
        for agent_id, agent in stored.agents.items():
            layout.create_agent(session_id, agent)
            for fields, beside in _messages(source, session_id, agent_id):
                layout.create_message(session_id, agent_id, SessionMessage(**fields))
                if beside:
                    fields_beside.setdefault(agent_id, {})[str(fields["message_id"])] = beside
                messages += 1
        for multi_agent_id, state in stored.multi_agents.items():
            layout.create_multi_agent(session_id, cast("MultiAgentBase", _State(multi_agent_id, state)))
    except (TypeError, ValueError) as e:
        shutil.rmtree(folder, ignore_errors=True)
        raise TransferError(
            f"a value cannot be written as Strands' JSON files ({e}); export this session with --format jsonl"
        ) from None
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise
    if stored.metadata or stored.feedbacks or fields_beside:
        sidecar = {
            "format": _SIDECAR_FORMAT,
            "version": VERSION,
            "metadata": stored.metadata,
            "feedbacks": stored.feedbacks,
            "message_fields": fields_beside,
        }
        _write_atomically(folder / SIDECAR, dumps(sidecar) + "\n")
    return messages


def _write_atomically(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".msm_", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", newline="\n") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def file_sessions(path: Path) -> list[tuple[Path, str]]:
    """The sessions under ``path``: ``(storage directory, session id)``, from a storage directory or one
    ``session_<id>`` directory."""
    if path.name.startswith(SESSION_PREFIX) and (path / "session.json").is_file():
        return [(path.parent, path.name[len(SESSION_PREFIX) :])]
    return [
        (path, child.name[len(SESSION_PREFIX) :])
        for child in sorted(path.iterdir())
        if child.is_dir() and child.name.startswith(SESSION_PREFIX)
    ]


def import_files(
    repository: MongoDBSessionRepository, sessions: list[tuple[Path, str]], overwrite: bool, progress: Progress
) -> Report:
    """Import sessions written in Strands' file layout (by ``FileSessionManager`` or ``export``)."""
    report = Report()
    for directory, session_id in sessions:
        progress.advance(0, session_id)
        importer: _SessionImport | None = None
        try:
            layout = _FileLayout(str(directory))
            folder = Path(layout._get_session_path(session_id))
            session = layout.read_session(session_id)
            if session is None:
                raise TransferError(f"{folder} holds no session.json")
            extras = _read_sidecar(folder / SIDECAR)
            importer = _SessionImport(repository, session, extras["metadata"], extras["feedbacks"], overwrite)
            for agent_id in _children(folder / "agents", AGENT_PREFIX):
                agent = layout.read_agent(session_id, agent_id)
                if agent is None:
                    raise TransferError(f"agent {agent_id!r} has no agent.json")
                importer.agent(agent)
                beside = extras["message_fields"].get(agent_id) or {}
                for message in layout.list_messages(session_id, agent_id):
                    importer.message(
                        agent_id,
                        {item.name: getattr(message, item.name) for item in dataclasses.fields(message)},
                        beside.get(str(message.message_id)),
                    )
            for multi_agent_id in _children(folder / "multi_agents", MULTI_AGENT_PREFIX):
                importer.multi_agent(multi_agent_id, layout.read_multi_agent(session_id, multi_agent_id))
            report.sessions += 1
            report.messages += importer.messages
        except (TransferError, SessionException, OSError, ValueError, TypeError) as e:
            if importer is not None:
                importer.abort()
            if isinstance(e, MongoDBSessionError) and is_outage(e):
                raise
            report.fail(session_id, str(e))
        except BaseException:  # Ctrl-C: no partial session is left behind
            if importer is not None:
                importer.abort()
            raise
        progress.advance(1, session_id)
    return report


def _children(folder: Path, prefix: str) -> list[str]:
    if not folder.is_dir():
        return []
    return [
        child.name[len(prefix) :]
        for child in sorted(folder.iterdir())
        if child.is_dir() and child.name.startswith(prefix)
    ]


def _read_sidecar(path: Path) -> dict[str, Any]:
    empty: dict[str, Any] = {"metadata": {}, "feedbacks": [], "message_fields": {}}
    if not path.is_file():
        return empty
    try:
        extras = loads(path.read_bytes())
    except ValueFormatError as e:
        raise TransferError(f"{path}: {e}") from None
    if not isinstance(extras, dict) or extras.get("format") != _SIDECAR_FORMAT:
        raise TransferError(f"{path} is not a {_SIDECAR_FORMAT} file")
    for name, kind in (("metadata", dict), ("feedbacks", list), ("message_fields", dict)):
        if not isinstance(extras.get(name, empty[name]), kind):
            raise TransferError(f"{path}: {name} must be a {kind.__name__}")
    return {name: extras.get(name, empty[name]) for name in empty}

"""Turn sessions stored by ``MongoDBSessionRepository`` (the message log) into Strands snapshots.

``migrate_sessions(repository, storage)`` writes, for every session (or the ones named), what
``SnapshotSessionManager(session_id, storage=storage)`` reads back:

* each agent's latest snapshot, ``<session>/scopes/agent/<agent>/snapshots/snapshot_latest.json``;
* each Graph's or Swarm's latest snapshot, ``<session>/scopes/multiAgent/<id>/snapshots/...``.

Keys and encoding are Strands' own (the snapshot manager's module-level helpers, kept there for
migrations), under the storage's ``session/`` namespace unless the storage is a namespaced view,
exactly as the snapshot manager resolves it.

An agent's snapshot is the agent as the message-log manager restores it, because Strands restores
it: each agent is rebuilt by ``RepositorySessionManager`` into a model-less ``Agent`` with its
conversation manager (state, conversation-manager state, interrupt and model state; the
conversation manager's prepended messages, a summary for instance; the messages after the ones it
removed, repaired where tool uses and results do not pair), then captured with
``take_snapshot(preset="session")``. The system prompt is not part of it (the message log never
stored one), so a restored agent keeps the one it is built with. Only reads touch the repository.

Re-running is safe: snapshots that exist are left alone (``overwrite=True`` replaces them), so an
interrupted run resumes where it stopped.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Iterator, Sized
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pymongo.errors import PyMongoError
from strands import Agent
from strands._async import run_async
from strands.agent.conversation_manager import (
    ConversationManager,
    NullConversationManager,
    SlidingWindowConversationManager,
    SummarizingConversationManager,
)
from strands.models.model import Model
from strands.session.repository_session_manager import RepositorySessionManager
from strands.session.snapshot_session_manager import (
    _multi_agent_latest_key,
    _resolve_storage,
    _serialize_snapshot,
    _session_prefix,
    _snapshot_key,
)
from strands.types._snapshot import SNAPSHOT_SCHEMA_VERSION, Snapshot
from strands.types.session import SessionAgent

from ..errors import SessionStorageError, SessionValidationError

if TYPE_CHECKING:
    from strands.storage.storage import Storage

    from ..mongodb_session_repository import MongoDBSessionRepository

__all__ = ["MigrationProgress", "MigrationReport", "migrate_sessions"]

logger = logging.getLogger(__name__)

#: Sessions per ``list_sessions`` page when migrating every session.
_PAGE = 1000
#: Strands' own conversation managers, by the name their state records.
_BUILT_IN: dict[str, Callable[[], ConversationManager]] = {
    "SlidingWindowConversationManager": SlidingWindowConversationManager,
    "SummarizingConversationManager": SummarizingConversationManager,
    "NullConversationManager": NullConversationManager,
}

ConversationManagerFactory = Callable[[str, SessionAgent], ConversationManager]


@dataclass(frozen=True)
class MigrationProgress:
    """Where a migration stands, passed to ``progress`` after each session.

    Attributes:
        session_id: The session just done.
        sessions: Sessions done so far (migrated, skipped or missing).
        total: How many sessions will be done, when known (``session_ids`` with a length).
        agents: Agent snapshots written so far.
        multi_agents: Graph and Swarm snapshots written so far.
        skipped: Snapshots left alone because they existed (``overwrite=False``).
    """

    session_id: str
    sessions: int
    total: int | None
    agents: int
    multi_agents: int
    skipped: int


@dataclass
class MigrationReport:
    """What a migration did.

    Attributes:
        sessions: Sessions read (those that exist).
        agents: Agent snapshots written.
        multi_agents: Graph and Swarm snapshots written.
        skipped: Snapshots that existed and were left alone.
        missing: Session ids asked for that do not exist.
    """

    sessions: int = 0
    agents: int = 0
    multi_agents: int = 0
    skipped: int = 0
    missing: list[str] = field(default_factory=list)


def migrate_sessions(
    repository: MongoDBSessionRepository,
    storage: Storage,
    *,
    session_ids: Iterable[str] | None = None,
    overwrite: bool = False,
    conversation_manager: ConversationManagerFactory | None = None,
    progress: Callable[[MigrationProgress], None] | None = None,
) -> MigrationReport:
    """Write the latest snapshot of every agent, Graph and Swarm of stored sessions into ``storage``.

    Blocking (it drives the synchronous repository); from async code, run it with
    ``await asyncio.to_thread(migrate_sessions, ...)``. The repository is only read.

    Args:
        repository: Where the sessions are (``MongoDBSessionRepository`` or anything with its
            public reading methods).
        storage: Where the snapshots go: the storage (or namespaced view) you will give
            ``SnapshotSessionManager`` (``MongoDBStorage``, or any Strands ``Storage``).
        session_ids: The sessions to migrate; default every session, in id order, a page at a time.
        overwrite: Replace snapshots that already exist (default: leave them, so a re-run resumes).
        conversation_manager: ``(session_id, session_agent) -> ConversationManager`` building each
            agent's conversation manager for the restore. Default: Strands' own manager of the class
            its stored state names (sliding window, summarizing, null); agents stored by another
            class need this.
        progress: Called after each session with a :class:`MigrationProgress`.

    Returns:
        A :class:`MigrationReport`.

    Raises:
        SessionValidationError: An agent's conversation manager is not one of Strands' own and no
            ``conversation_manager`` factory was given.
        MongoDBSessionError: Reading a session failed (the report so far is lost, the snapshots
            written so far stay: run again to resume).
        StorageError: Writing a snapshot failed.
    """
    resolved = _resolve_storage(storage)
    build_manager = conversation_manager or _built_in_conversation_manager
    total = len(session_ids) if isinstance(session_ids, Sized) else None
    report = MigrationReport()
    sessions = session_ids if session_ids is not None else _every_session(repository)
    for done, session_id in enumerate(sessions, 1):
        written = _migrate_one(repository, resolved, session_id, overwrite, build_manager, report)
        logger.debug("session_id=<%s>, snapshots=<%d> | session migrated", session_id, written)
        if progress is not None:
            progress(MigrationProgress(session_id, done, total, report.agents, report.multi_agents, report.skipped))
    logger.info(
        "sessions=<%d>, agents=<%d>, multi_agents=<%d>, skipped=<%d>, missing=<%d> | migration finished",
        report.sessions,
        report.agents,
        report.multi_agents,
        report.skipped,
        len(report.missing),
    )
    return report


def _every_session(repository: MongoDBSessionRepository) -> Iterator[str]:
    after: str | None = None
    while True:
        page = repository.list_sessions(limit=_PAGE, after=after)
        for summary in page:
            yield summary["session_id"]
        if len(page) < _PAGE:
            return
        after = page[-1]["session_id"]


def _migrate_one(
    repository: MongoDBSessionRepository,
    storage: Storage,
    session_id: str,
    overwrite: bool,
    build_manager: ConversationManagerFactory,
    report: MigrationReport,
) -> int:
    """Migrate one session; return how many snapshots were written."""
    stored = repository.read_session_snapshot(session_id)
    if stored is None:
        report.missing.append(session_id)
        return 0
    report.sessions += 1
    _session, agents = stored
    multi_agent_ids = _multi_agent_ids(repository, session_id)
    existing = set() if overwrite else set(run_async(lambda: storage.list(_session_prefix(session_id))))

    snapshots: list[tuple[str, bytes]] = []
    pending_agents = [
        agent
        for agent_id, agent in sorted(agents.items())
        if _snapshot_key(session_id, agent_id, snapshot_id=None) not in existing
    ]
    report.skipped += len(agents) - len(pending_agents)
    if pending_agents:
        manager = RepositorySessionManager(session_id=session_id, session_repository=repository)
        for session_agent in pending_agents:
            agent = Agent(
                agent_id=session_agent.agent_id,
                model=_NoModel(),
                conversation_manager=build_manager(session_id, session_agent),
                session_manager=manager,
                callback_handler=None,
            )
            snapshot = agent.take_snapshot(preset="session")
            snapshots.append(
                (_snapshot_key(session_id, agent.agent_id, snapshot_id=None), _serialize_snapshot(snapshot))
            )
    written_agents = len(snapshots)

    for multi_agent_id in multi_agent_ids:
        key = _multi_agent_latest_key(session_id, multi_agent_id)
        if key in existing:
            report.skipped += 1
            continue
        state = repository.read_multi_agent(session_id, multi_agent_id)
        if state is None:
            continue
        snapshot = Snapshot(
            scope="multiAgent",
            schema_version=SNAPSHOT_SCHEMA_VERSION,
            data={"orchestrator_id": multi_agent_id, "state": state},
            app_data={},
        )
        snapshots.append((key, _serialize_snapshot(snapshot)))

    async def write_all() -> None:
        for key, data in snapshots:
            await storage.write(key, data)

    if snapshots:
        run_async(write_all)
    report.agents += written_agents
    report.multi_agents += len(snapshots) - written_agents
    return len(snapshots)


def _built_in_conversation_manager(session_id: str, session_agent: SessionAgent) -> ConversationManager:
    name = (session_agent.conversation_manager_state or {}).get("__name__")
    if name is None:
        return SlidingWindowConversationManager()
    build = _BUILT_IN.get(name)
    if build is None:
        raise SessionValidationError(
            "conversation_manager",
            f"session_id=<{session_id}>, agent_id=<{session_agent.agent_id}> | the agent's conversation manager "
            f"{name!r} is not one of Strands' own: pass conversation_manager=... to build it",
        )
    return build()


def _multi_agent_ids(repository: MongoDBSessionRepository, session_id: str) -> list[str]:
    """The ids of the Graphs and Swarms stored in a session.

    ``MongoDBSessionRepository`` reads a multi-agent state by id but cannot list them, so this reads
    the ids (and nothing else) from the session document's documented layout
    (``multi_agents.<encoded id>.id``, see README "How a session is stored").
    """
    pipeline: list[dict[str, Any]] = [
        {"$match": {"_id": repository.session_key(session_id)}},
        {
            "$project": {
                "_id": 0,
                "ids": {
                    "$map": {
                        "input": {"$objectToArray": {"$ifNull": ["$multi_agents", {}]}},
                        "as": "entry",
                        "in": {"$getField": {"field": "id", "input": "$$entry.v"}},
                    }
                },
            }
        },
    ]
    try:
        documents = list(repository.collection.aggregate(pipeline))
    except PyMongoError as e:
        raise SessionStorageError(f"session_id=<{session_id}> | listing the session's multi-agents failed: {e}") from e
    ids = documents[0].get("ids") if documents else None
    return sorted(value for value in ids or [] if isinstance(value, str))


class _NoModel(Model):
    """The restored agents' model: a restore never calls one."""

    def update_config(self, **model_config: Any) -> None:
        pass

    def get_config(self) -> Any:
        return {}

    async def structured_output(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise RuntimeError("a migration restores agents; it never calls a model")
        yield  # pragma: no cover

    async def stream(self, *args: Any, **kwargs: Any) -> AsyncGenerator[Any, None]:
        raise RuntimeError("a migration restores agents; it never calls a model")
        yield  # pragma: no cover

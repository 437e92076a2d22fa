"""``verify``: check stored sessions for damage, and ``--repair`` what can be repaired without loss.

What is checked, for each session (every kind of damage a crash, a lost write or a hand edit can
leave; each finding names its kind, the session, and where relevant the agent and message id):

* **the document**: it can be decoded at all (``unreadable``), the session's own fields, metadata, feedback and multi-agent state are well
  formed (``malformed-session``, ``malformed-field``); every agent is stored under its id
  (``malformed-agent``) with well-formed counters (``malformed-counter``);
* **counters vs entries**: the messages stored (moved and resident) are exactly ``0 ..
  message_count - 1``, in order: ``missing-messages`` (the tail is gone), ``noncontiguous-ids``,
  ``counter-mismatch`` (more stored than counted); each entry is a message (``malformed-message``);
* **bucket descriptors vs bucket documents**: descriptors are well formed (``malformed-descriptors``),
  cover message ids ``0 .. overflow_count - 1`` without gap or overlap (``descriptor-gap``); each
  bucket exists (``missing-bucket``) and holds exactly what its descriptor says, for this session and
  agent (``bucket-mismatch``);
* **binary references and chunk hashes**: every reference is well formed and listed with its message
  (``malformed-reference``, ``unlisted-reference``: repair would otherwise take its chunks for
  garbage), every chunk exists (``missing-chunk``), is well formed and belongs to the session
  (``malformed-chunk``), and the bytes match the recorded length and SHA-256 (``corrupt-binary``;
  ``--quick`` skips reading the bytes);
* **leftovers of crashes**: records of unfinished overflow writes (``unfinished-write``: a move, a
  merge or a binary offload that never committed; what it wrote is never read) and overflow
  documents nothing refers to (``orphaned-bucket``, ``orphaned-chunk``: a merge's replaced buckets,
  the old images of an interrupted redaction, ...). Younger than ``--grace`` they may belong to a
  write in flight: they are notes, not problems;
* **expiry of overflow documents**: under the collection's TTL none may expire before its session
  (``expires-before-session``, ``expiry-missing``), without one none may expire at all
  (``expires-without-ttl``); the session must be marked as having them (``companions-flag-missing``,
  else deleting it would leave them behind);
* **the size estimate**: ``size_estimate`` is not under the document's size by more than 1 KiB
  (``size-estimate-low``: appends would no longer move old messages out in time);
* with ``--all``, **the overflow collection** as a whole: documents of sessions that no longer exist
  (``orphaned-session-documents``, left by an interrupted delete) and documents without a session
  (``malformed-overflow-document``).

What ``--repair`` does: it never deletes data anything refers to, and never touches a session whose
structure is damaged (any of the kinds above that lose or confuse messages): its leftovers are kept,
as they may be the only copy of what it lost. For the others it runs the library's
``repair_session`` (unfinished writes and unreferenced documents older than the grace), gives
overflow documents the expiry the TTL in force requires, marks the session, raises the size
estimate to the measured size, and deletes documents of sessions that no longer exist. Then the
session is checked again; what remains is reported.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import bson
from bson.errors import BSONError
from bson.objectid import ObjectId

from .._documents import aware, document_to_session, encode_field_name, utc_now
from .._encryption import is_ciphertext
from .._overflow import BlobRef, checked_descriptors, companions_expiry, find_references, is_reference, overflow_key
from ..errors import MongoDBSessionError, SessionStorageError, SessionValidationError
from ._source import Source

__all__ = ["REPAIRABLE", "STRUCTURAL", "Finding", "Repairer", "SessionCheck", "Verifier"]

#: Damage to what a session's messages are: repair leaves such a session alone.
STRUCTURAL = frozenset(
    {
        "unreadable",
        "malformed-session",
        "malformed-agent",
        "malformed-counter",
        "malformed-message",
        "malformed-descriptors",
        "descriptor-gap",
        "missing-bucket",
        "bucket-mismatch",
        "missing-messages",
        "noncontiguous-ids",
        "counter-mismatch",
        "malformed-reference",
        "unlisted-reference",
    }
)
#: What ``--repair`` fixes (for sessions without structural damage).
REPAIRABLE = frozenset(
    {
        "unfinished-write",
        "orphaned-bucket",
        "orphaned-chunk",
        "orphaned-session-documents",
        "expires-before-session",
        "expiry-missing",
        "expires-without-ttl",
        "companions-flag-missing",
        "size-estimate-low",
    }
)
_DELETES = frozenset({"unfinished-write", "orphaned-bucket", "orphaned-chunk"})
_EXPIRY = frozenset({"expires-before-session", "expiry-missing", "expires-without-ttl"})
#: Chunk bytes read per command while checking hashes.
_CHUNK_BATCH_BYTES = 64 * 1024 * 1024
#: Buckets read per command.
_BUCKET_BATCH = 8
#: How far under the document's size ``size_estimate`` may be before it matters: the estimate only decides
#: when old messages move out, and the threshold is far below MongoDB's limit. (An offload interrupted
#: before its commit leaves it a few bytes under: the session's ``companions`` fields are not counted.)
_ESTIMATE_SLACK = 1024
_WHAT_WROTE = {"buckets": "move or merge of old messages", "blobs": "binary offload"}


@dataclass(frozen=True)
class Finding:
    """One problem (or, with ``problem=False``, a note: something young that may be a write in flight)."""

    kind: str
    session_id: str
    detail: str
    agent_id: str | None = None
    message_id: int | None = None
    problem: bool = True

    @property
    def repairable(self) -> bool:
        return self.kind in REPAIRABLE

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "message_id": self.message_id,
            "detail": self.detail,
            "problem": self.problem,
            "repairable": self.repairable,
        }


@dataclass
class SessionCheck:
    """What checking one session found, and what its repair needs."""

    session_id: str
    exists: bool
    findings: list[Finding] = field(default_factory=list)
    orphan_ids: list[Any] = field(default_factory=list)  # documents of a missing session, old enough

    @property
    def problems(self) -> list[Finding]:
        return [finding for finding in self.findings if finding.problem]

    @property
    def structural(self) -> bool:
        return any(finding.kind in STRUCTURAL for finding in self.problems)

    def kinds(self) -> set[str]:
        return {finding.kind for finding in self.problems}


def _age(moment: datetime, now: datetime) -> str:
    seconds = max(0, int((now - moment).total_seconds()))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 2 * 86400:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


class _Session:
    """The state of one check in progress."""

    def __init__(self, session_id: str) -> None:
        self.session_id = session_id
        self.findings: list[Finding] = []
        self.references_known = True
        self.buckets: set[ObjectId] = set()
        self.refs: dict[ObjectId, tuple[BlobRef, str, int | None]] = {}

    def add(
        self,
        kind: str,
        detail: str,
        agent_id: str | None = None,
        message_id: int | None = None,
        problem: bool = True,
    ) -> None:
        self.findings.append(Finding(kind, self.session_id, detail, agent_id, message_id, problem))


class Verifier:
    """Checks sessions (see the module docstring).

    Args:
        source: The store, read only.
        grace: Leftovers younger than this are notes (they may belong to a write in flight).
        read_binaries: Read every offloaded binary and check its length and SHA-256 (else only that
            its chunks exist).
    """

    def __init__(self, source: Source, grace: timedelta, read_binaries: bool = True) -> None:
        self.source = source
        self.grace = grace
        self.read_binaries = read_binaries
        self.ttl = source.ttl()

    # ------------------------------------------------------------------ one session

    def check(self, session_id: str) -> SessionCheck:
        """Check one session; never raises on damaged data (the server failing still raises).

        Raises:
            SessionStorageError: The server failed or could not be reached.
        """
        try:
            return self._check(session_id)
        except (BSONError, SessionValidationError) as e:  # stored bytes the driver cannot decode
            check = SessionCheck(session_id, True)
            check.findings.append(Finding("unreadable", session_id, f"a stored document cannot be decoded: {e}"))
            return check

    def _check(self, session_id: str) -> SessionCheck:
        found = self.source.raw_document(session_id)
        if found is None:
            return self._missing(session_id)
        document, size = found
        now = utc_now()
        state = _Session(session_id)
        self._document(state, document)
        protected = self._pending(state, document.get("overflow_pending"), now)
        agents = document.get("agents")
        if agents is not None and not isinstance(agents, Mapping):
            state.add("malformed-session", "agents is not an object: no agent can be read")
            state.references_known = False
        for key, agent in (agents or {}).items() if isinstance(agents, Mapping) else []:
            self._agent(state, str(key), agent)
        self._chunks(state)
        overflow_docs = self._overflow_docs(session_id)
        self._unreferenced(state, overflow_docs, protected, now)
        self._expiry(state, document, overflow_docs)
        estimate = document.get("size_estimate")
        if not isinstance(estimate, int) or isinstance(estimate, bool) or estimate < size - _ESTIMATE_SLACK:
            state.add(
                "size-estimate-low",
                f"size_estimate is {estimate!r}, the document is {size} bytes: it must be an upper bound, or the "
                "document may grow past the overflow threshold before old messages move out",
            )
        return SessionCheck(session_id, True, state.findings)

    def _missing(self, session_id: str) -> SessionCheck:
        docs = self._overflow_docs(session_id)
        check = SessionCheck(session_id, False)
        if not docs:
            check.findings.append(Finding("not-found", session_id, "session does not exist"))
            return check
        now = utc_now()
        # Under a TTL, what an expired session kept outside its document lingers a little, by design,
        # and expires by itself.
        expiring, young, old = [], [], []
        for doc in docs:
            if isinstance(doc.get("expire_at"), datetime) and aware(doc["expire_at"]) > now:
                expiring.append(doc["_id"])
            elif not self._old(doc["_id"], now):
                young.append(doc["_id"])
            else:
                old.append(doc["_id"])
        if old:
            check.findings.append(
                Finding(
                    "orphaned-session-documents",
                    session_id,
                    f"{len(old)} overflow document(s) of a session that does not exist (an interrupted delete "
                    "left them)",
                )
            )
            check.orphan_ids = old
        for count, why in ((len(young), "younger than the grace"), (len(expiring), "expiring by themselves")):
            if count:
                check.findings.append(
                    Finding(
                        "orphaned-session-documents",
                        session_id,
                        f"{count} overflow document(s) of a session that does not exist, {why}",
                        problem=False,
                    )
                )
        return check

    def _old(self, doc_id: Any, now: datetime) -> bool:
        key = overflow_key(doc_id)
        written = key[0] if isinstance(key, tuple) else key
        return not isinstance(written, ObjectId) or now - written.generation_time >= self.grace

    def _document(self, state: _Session, document: Mapping[str, Any]) -> None:
        try:
            session = document_to_session(dict(document))
            if session.session_id != state.session_id:
                raise SessionStorageError(f"session_id field is {session.session_id!r}")
        except (MongoDBSessionError, TypeError) as e:
            state.add("malformed-session", f"the session's own fields cannot be read: {e}")
        for name, kind in (("metadata", Mapping), ("multi_agents", Mapping), ("feedbacks", list)):
            value = document.get(name)
            if value is not None and not isinstance(value, kind):
                state.add("malformed-field", f"{name} is a {type(value).__name__}")
        for index, entry in enumerate(
            document.get("feedbacks") or [] if isinstance(document.get("feedbacks"), list) else []
        ):
            if not isinstance(entry, Mapping) or not isinstance(entry.get("created_at"), datetime):
                state.add("malformed-field", f"feedbacks[{index}] is not a feedback entry")
        for key, value in (
            (document.get("multi_agents") or {}).items() if isinstance(document.get("multi_agents"), Mapping) else []
        ):
            if not isinstance(value, Mapping) or not isinstance(value.get("id"), str) or "state" not in value:
                state.add("malformed-field", f"multi_agents.{key} is not a multi-agent state")

    def _pending(self, state: _Session, records: Any, now: datetime) -> set[Any]:
        """Report records of unfinished overflow writes; return the keys of the documents they protect."""
        protected: set[Any] = set()
        if records is None:
            return protected
        if not isinstance(records, list):
            state.add("malformed-field", "overflow_pending is not a list")
            state.references_known = False
            return protected
        for record in records:
            op = record.get("op") if isinstance(record, Mapping) else None
            docs = record.get("docs") if isinstance(record, Mapping) else None
            if not isinstance(op, ObjectId) or not isinstance(docs, list):
                state.add("malformed-field", f"an unfinished-write record is malformed: {record!r}"[:300])
                state.references_known = False
                continue
            protected.update(overflow_key(doc) for doc in docs if doc is not None)
            written = op.generation_time
            what = _WHAT_WROTE.get(str(record.get("kind")), f"overflow write ({record.get('kind')!r})")
            agents = record.get("agents") or []
            where = f" of agent(s) {', '.join(map(str, agents))}" if agents else ""
            old = now - written >= self.grace
            state.add(
                "unfinished-write",
                f"an interrupted {what}{where} left its record and {len(docs)} document(s), "
                f"{_age(written, now)} old{'' if old else ' (may still be in flight)'}",
                problem=old,
            )
        return protected

    # ------------------------------------------------------------------ agents and messages

    def _agent(self, state: _Session, key: str, agent: Any) -> None:
        if not isinstance(agent, Mapping) or not isinstance(agent.get("agent_id"), str):
            state.add("malformed-agent", f"agents.{key} is not an agent (no agent_id)")
            state.references_known = False
            return
        agent_id: str = agent["agent_id"]
        if encode_field_name(agent_id) != key:
            state.add("malformed-agent", f"stored under agents.{key}, not under its own id", agent_id)
        count, moved, messages = agent.get("message_count"), agent.get("overflow_count", 0), agent.get("messages", [])
        if not _is_count(count):
            state.add("malformed-counter", f"message_count is {count!r}", agent_id)
        if not _is_count(moved):
            state.add("malformed-counter", f"overflow_count is {moved!r}", agent_id)
            moved = None
        if not isinstance(messages, list):
            state.add("malformed-agent", f"messages is a {type(messages).__name__}, not a list", agent_id)
            state.references_known = False
            messages = []
        try:
            descriptors: list[dict[str, Any]] | None = checked_descriptors(
                agent.get("overflow"), state.session_id, agent_id
            )
        except SessionStorageError:
            state.add(
                "malformed-descriptors",
                f"the bucket descriptors are malformed: moved messages (0..{_last(moved)}) cannot be found",
                agent_id,
            )
            state.references_known = False
            descriptors = None
        if descriptors is not None and moved is not None:
            self._descriptors(state, agent_id, descriptors, moved)
        first = moved or 0
        for index, entry in enumerate(messages):
            expected = first + index
            stored_id = entry.get("message_id") if isinstance(entry, Mapping) else None
            if stored_id != expected:
                state.add(
                    "noncontiguous-ids",
                    f"message {index} in the document has message_id {stored_id!r}, expected {expected}",
                    agent_id,
                    expected,
                )
                break
        for index, entry in enumerate(messages):
            self._entry(state, agent_id, entry, first + index)
        if _is_count(count) and moved is not None:
            stored = moved + len(messages)
            if stored < count:
                state.add(
                    "missing-messages",
                    f"message_count is {count} but only message ids 0..{stored - 1} are stored: the last "
                    f"{count - stored} message(s) are lost",
                    agent_id,
                    stored,
                )
            elif stored > count:
                state.add(
                    "counter-mismatch",
                    f"message_count is {count} but {stored} messages are stored: the next append would conflict",
                    agent_id,
                    count,
                )

    def _descriptors(self, state: _Session, agent_id: str, descriptors: list[dict[str, Any]], moved: int) -> None:
        expected = 0
        for descriptor in sorted(descriptors, key=lambda d: d["first"]):
            if descriptor["first"] > expected:
                state.add(
                    "descriptor-gap",
                    f"no bucket holds message ids {expected}..{descriptor['first'] - 1}",
                    agent_id,
                    expected,
                )
            elif descriptor["first"] < expected:
                state.add(
                    "descriptor-gap",
                    f"buckets overlap at message_id {descriptor['first']}",
                    agent_id,
                    descriptor["first"],
                )
            expected = max(expected, descriptor["first"] + descriptor["count"])
        if expected != moved:
            state.add(
                "descriptor-gap",
                f"the buckets hold message ids up to {expected - 1}, overflow_count says {moved} moved",
                agent_id,
            )
        state.buckets.update(d["id"] for d in descriptors)
        for batch in _batches(descriptors, _BUCKET_BATCH):
            with self.source.errors(state.session_id, "read buckets"):
                found = {
                    doc["_id"]: doc for doc in self.source.overflow.find({"_id": {"$in": [d["id"] for d in batch]}})
                }
            for descriptor in batch:
                self._bucket(state, agent_id, descriptor, found.get(descriptor["id"]))

    def _bucket(self, state: _Session, agent_id: str, descriptor: Mapping[str, Any], bucket: Any) -> None:
        first, count = descriptor["first"], descriptor["count"]
        if bucket is None:
            state.add(
                "missing-bucket",
                f"bucket {descriptor['id']} holding message ids {first}..{first + count - 1} is missing",
                agent_id,
                first,
            )
            return
        messages = bucket.get("messages")
        wrong = []
        if bucket.get("kind") != "messages":
            wrong.append(f"kind {bucket.get('kind')!r}")
        if bucket.get("session_id") != state.session_id:
            wrong.append(f"session_id {bucket.get('session_id')!r}")
        if bucket.get("agent_id") != agent_id:
            wrong.append(f"agent_id {bucket.get('agent_id')!r}")
        if bucket.get("first") != first or bucket.get("count") != count:
            wrong.append(f"range {bucket.get('first')!r}+{bucket.get('count')!r}")
        ids = (
            [entry.get("message_id") if isinstance(entry, Mapping) else None for entry in messages or []]
            if isinstance(messages, list)
            else None
        )
        if ids != list(range(first, first + count)):
            shown = "not a list" if ids is None else f"{ids[:3]}...{ids[-1:]} ({len(ids)})"
            wrong.append(f"message ids {shown}")
        if wrong:
            state.add(
                "bucket-mismatch",
                f"bucket {descriptor['id']} should hold message ids {first}..{first + count - 1}, it has "
                + ", ".join(wrong),
                agent_id,
                first,
            )
        for index, entry in enumerate(messages if isinstance(messages, list) else []):
            self._entry(state, agent_id, entry, first + index)

    def _entry(self, state: _Session, agent_id: str, entry: Any, message_id: int) -> None:
        message = entry.get("message") if isinstance(entry, Mapping) else None
        if is_ciphertext(message):  # encrypted at rest: its binaries are checked through the clear "blobs" list
            pass
        elif (
            not isinstance(message, Mapping)
            or not isinstance(message.get("role"), str)
            or not isinstance(message.get("content"), list)
        ):
            state.add("malformed-message", "the stored entry is not a message (role and content)", agent_id, message_id)
            if not isinstance(entry, Mapping):
                return
        try:
            in_content = find_references({name: value for name, value in entry.items() if name != "blobs"})
            listed_values = entry.get("blobs") or []
            if not isinstance(listed_values, list) or not all(is_reference(value) for value in listed_values):
                raise SessionStorageError("its list of binary references is malformed")
            listed = [BlobRef.from_binary(value) for value in listed_values]
        except SessionStorageError as e:
            state.add("malformed-reference", f"a binary reference is malformed: {e}", agent_id, message_id)
            state.references_known = False
            return
        listed_ids = {ref.blob_id for ref in listed}
        for ref in in_content:
            if ref.blob_id not in listed_ids:
                state.add(
                    "unlisted-reference",
                    f"binary {ref.blob_id} is referenced but not listed with the message: a repair would take its "
                    "chunks for garbage",
                    agent_id,
                    message_id,
                )
        for ref in [*in_content, *listed]:
            state.refs.setdefault(ref.blob_id, (ref, agent_id, message_id))

    def _chunks(self, state: _Session) -> None:
        refs = sorted(state.refs.values(), key=lambda item: item[0].blob_id)
        batch: list[tuple[BlobRef, str, int | None]] = []
        total = 0
        for item in refs:
            batch.append(item)
            total += item[0].length
            if total >= _CHUNK_BATCH_BYTES:
                self._chunk_batch(state, batch)
                batch, total = [], 0
        if batch:
            self._chunk_batch(state, batch)

    def _chunk_batch(self, state: _Session, batch: list[tuple[BlobRef, str, int | None]]) -> None:
        ids = [chunk for ref, _, _ in batch for chunk in ref.chunk_ids()]
        projection = {"session_id": 1, "data": 1} if self.read_binaries else {"session_id": 1}
        seen: dict[ObjectId, list[int]] = {}
        hashes: dict[ObjectId, Any] = {}
        sizes: dict[ObjectId, int] = {}
        malformed: dict[ObjectId, str] = {}
        with self.source.errors(state.session_id, "read binary chunks"):
            for document in self.source.overflow.find({"_id": {"$in": ids}}, projection).sort("_id", 1):
                blob_id, number = document["_id"].get("b"), document["_id"].get("n")
                seen.setdefault(blob_id, []).append(number)
                if document.get("session_id") != self.source.key(state.session_id):
                    malformed[blob_id] = f"chunk {number} belongs to session {document.get('session_id')!r}"
                if not self.read_binaries:
                    continue
                data = document.get("data")
                if not isinstance(data, bytes):
                    malformed[blob_id] = f"chunk {number} holds a {type(data).__name__}, not bytes"
                    continue
                hashes.setdefault(blob_id, hashlib.sha256()).update(data)
                sizes[blob_id] = sizes.get(blob_id, 0) + len(data)
        for ref, agent_id, message_id in batch:
            numbers = seen.get(ref.blob_id, [])
            missing = [n for n in range(ref.chunk_count) if n not in numbers]
            if missing:
                state.add(
                    "missing-chunk",
                    f"binary {ref.blob_id} ({ref.length} bytes) is missing chunk(s) {missing[:5]}",
                    agent_id,
                    message_id,
                )
            elif ref.blob_id in malformed:
                state.add("malformed-chunk", f"binary {ref.blob_id}: {malformed[ref.blob_id]}", agent_id, message_id)
            elif self.read_binaries and (
                sizes.get(ref.blob_id) != ref.length or hashes[ref.blob_id].digest() != ref.sha256
            ):
                state.add(
                    "corrupt-binary",
                    f"binary {ref.blob_id}: {sizes.get(ref.blob_id)} bytes whose SHA-256 differs from the recorded "
                    f"{ref.length} bytes",
                    agent_id,
                    message_id,
                )

    # ------------------------------------------------------------------ overflow documents

    def _overflow_docs(self, session_id: str) -> list[dict[str, Any]]:
        with self.source.errors(session_id, "list overflow documents"):
            return list(self.source.overflow.find(self.source.owned(session_id), {"_id": 1, "kind": 1, "expire_at": 1}))

    def _unreferenced(self, state: _Session, docs: list[dict[str, Any]], protected: set[Any], now: datetime) -> None:
        if not state.references_known:
            if docs:
                state.add(
                    "unassessed",
                    f"{len(docs)} overflow document(s): whether each is referenced cannot be told while the "
                    "session's structure is damaged",
                    problem=False,
                )
            return
        orphans: dict[Any, list[Any]] = {}
        for doc in docs:
            doc_id = doc["_id"]
            key = overflow_key(doc_id)
            if key in protected:
                continue
            if isinstance(doc_id, ObjectId):
                if doc_id not in state.buckets:
                    orphans.setdefault(("bucket", doc_id), []).append(doc_id)
            elif isinstance(key, tuple) and isinstance(key[0], ObjectId) and _is_count(key[1]):
                if key[0] not in state.refs:
                    orphans.setdefault(("chunk", key[0]), []).append(doc_id)
            else:
                state.add(
                    "malformed-overflow-document", f"overflow document {doc_id!r} is neither a bucket nor a chunk"
                )
        for (kind, written_by), ids in orphans.items():
            old = now - written_by.generation_time >= self.grace
            what = (
                f"bucket {written_by} (messages) is referenced by no descriptor"
                if kind == "bucket"
                else f"binary {written_by} ({len(ids)} chunk(s)) is referenced by no message"
            )
            state.add(
                f"orphaned-{kind}",
                f"{what}, {_age(written_by.generation_time, now)} old{'' if old else ' (may still be in flight)'}",
                problem=old,
            )

    def _expiry(self, state: _Session, document: Mapping[str, Any], docs: list[dict[str, Any]]) -> None:
        if not docs:
            return
        if document.get("companions") is not True:
            state.add(
                "companions-flag-missing",
                f"{len(docs)} overflow document(s) but the session is not marked as having any: deleting it would "
                "leave them behind",
            )
        expiring = [aware(doc["expire_at"]) for doc in docs if isinstance(doc.get("expire_at"), datetime)]
        if self.ttl is None:
            if expiring:
                state.add(
                    "expires-without-ttl",
                    f"sessions never expire here, but {len(expiring)} overflow document(s) expire (the first at "
                    f"{min(expiring).isoformat()}): messages or binaries would vanish from a live session",
                )
            return
        missing = len(docs) - len(expiring)
        if missing:
            state.add(
                "expiry-missing",
                f"{missing} overflow document(s) have no expiry: they would outlive the session",
            )
        updated = document.get("updated_date")
        if isinstance(updated, datetime):
            session_expires = aware(updated) + timedelta(seconds=self.ttl)
            early = [moment for moment in expiring if moment < session_expires]
            if early:
                state.add(
                    "expires-before-session",
                    f"{len(early)} overflow document(s) expire before the session (the first at "
                    f"{min(early).isoformat()}, the session at {session_expires.isoformat()})",
                )

    # ------------------------------------------------------------------ the overflow collection

    def collection_orphans(self) -> Iterator[SessionCheck]:
        """Overflow documents of sessions that do not exist, or of no session at all (the whole collection)."""
        with self.source.errors(None, "group overflow documents"):
            groups = list(
                self.source.overflow.aggregate([{"$group": {"_id": "$session_id", "documents": {"$sum": 1}}}])
            )
        owners = [group["_id"] for group in groups if isinstance(group["_id"], str)]
        for group in groups:
            if not isinstance(group["_id"], str):
                check = SessionCheck(str(group["_id"]), False)
                check.findings.append(
                    Finding(
                        "malformed-overflow-document",
                        "-",
                        f"{group['documents']} overflow document(s) with session_id {group['_id']!r}",
                    )
                )
                yield check
        for batch in _batches(owners, 500):
            with self.source.errors(None, "find sessions"):
                present = {doc["_id"] for doc in self.source.collection.find({"_id": {"$in": batch}}, {"_id": 1})}
            for session_id in batch:
                if session_id not in present:
                    yield self._missing(session_id)


class Repairer:
    """Repairs what a :class:`Verifier` found (see the module docstring).

    Args:
        verifier: The verifier (its store, grace and TTL).
        repository: A ``MongoDBSessionRepository`` on the same collections (it writes).
    """

    def __init__(self, verifier: Verifier, repository: Any) -> None:
        self.verifier = verifier
        self.repository = repository

    def repair(self, check: SessionCheck) -> list[str]:
        """Repair one session; returns what was done, in words (empty if nothing)."""
        kinds = check.kinds()
        if not kinds & REPAIRABLE:
            return []
        if not check.exists:
            return self._delete_orphans(check)
        done: list[str] = []
        session_id = check.session_id
        if kinds & _DELETES:
            if check.structural:
                done.append("left its leftovers alone: its structure is damaged (they may hold what it lost)")
            else:
                counts = self.repository.repair_session(session_id, grace=self.verifier.grace)
                done.append(
                    f"removed {counts['unfinished_writes']} unfinished write(s) and "
                    f"{counts['unreferenced_documents']} unreferenced document(s)"
                )
        if kinds & _EXPIRY:
            done.append(self._fix_expiry(session_id))
        if "companions-flag-missing" in kinds:
            self._update(session_id, {"$set": {"companions": True}}, "mark session")
            done.append("marked the session as having overflow documents")
        if "size-estimate-low" in kinds:
            done.append(self._fix_estimate(session_id))
        return done

    def _update(self, session_id: str, update: dict[str, Any], operation: str) -> None:
        growth = len(bson.encode({"u": {key: value for part in update.values() for key, value in part.items()}}))
        with self.verifier.source.errors(session_id, operation):
            self.verifier.source.collection.update_one(
                {"_id": self.verifier.source.key(session_id)}, {**update, "$inc": {"size_estimate": growth}}
            )

    def _fix_expiry(self, session_id: str) -> str:
        source, ttl = self.verifier.source, self.verifier.ttl
        with source.errors(session_id, "extend overflow expiry"):
            if ttl is None:
                source.overflow.update_many(source.owned(session_id), {"$unset": {"expire_at": ""}})
                source.collection.update_one(
                    {"_id": source.key(session_id)},
                    {"$unset": {"companions_until": ""}, "$set": {"companions_ttl": None}},
                )
                return "removed the expiry of its overflow documents (sessions never expire here)"
            until = companions_expiry(ttl, utc_now()) or utc_now()
            source.overflow.update_many(source.owned(session_id), {"$max": {"expire_at": until}})
        self._update(
            session_id, {"$max": {"companions_until": until}, "$set": {"companions_ttl": ttl}}, "extend expiry"
        )
        return f"gave its overflow documents an expiry after the session's ({until.isoformat()})"

    def _fix_estimate(self, session_id: str) -> str:
        source = self.verifier.source
        with source.errors(session_id, "measure session"):
            measured = list(
                source.collection.aggregate(
                    [{"$match": {"_id": source.key(session_id)}}, {"$project": {"size": {"$bsonSize": "$$ROOT"}}}]
                )
            )
            if not measured:
                return "the session is gone"
            size = int(measured[0]["size"])
            source.collection.update_one({"_id": source.key(session_id)}, {"$max": {"size_estimate": size}})
        return f"raised size_estimate to the measured {size} bytes"

    def _delete_orphans(self, check: SessionCheck) -> list[str]:
        source = self.verifier.source
        if not check.orphan_ids:
            return []
        with source.errors(check.session_id, "delete orphaned documents"):
            if source.collection.find_one({"_id": source.key(check.session_id)}, {"_id": 1}) is not None:
                return ["left its documents alone: the session exists again"]
            deleted = 0
            for batch in _batches(check.orphan_ids, 500):
                deleted += source.overflow.delete_many(
                    {"_id": {"$in": list(batch)}, **source.owned(check.session_id)}
                ).deleted_count
        return [f"deleted {deleted} overflow document(s) of the missing session"]


def _batches(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _last(moved: Any) -> str:
    return str(moved - 1) if _is_count(moved) and moved else "?"

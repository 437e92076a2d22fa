"""Overflow I/O: writing what a session keeps outside its document (reading it: :mod:`._reader`).

What leaves the session document (see :mod:`._overflow` for the pure side): old messages, moved in
order into bucket documents, and large binary values, stored in chunk documents, both in the overflow
collection. :class:`OverflowIO` does the I/O of:

* **moving** old messages out and **merging** small buckets (copy, then commit);
* **binary chunks**: storing, discarding;
* **updating** a stored message wherever it is;
* **crash safety**: every write to the overflow collection is recorded on the session first
  (:meth:`OverflowIO.begin`) and committed by the update that removes the record; leftovers are
  collected (:meth:`OverflowIO.collect_pending`, :meth:`OverflowIO.repair`);
* **expiry**: keeping the overflow documents' expiry ahead of their session's (:meth:`OverflowIO.extend_expiry`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Mapping
from datetime import datetime, timedelta
from typing import Any

from bson.objectid import ObjectId
from pymongo import ReturnDocument

from ._documents import dig, encode_field_name, utc_now
from ._indexes import ensure_overflow_indexes
from ._overflow import (
    BlobRef,
    bucket_document,
    checked_descriptors,
    chunk_documents,
    descriptor_of,
    entry_size,
    max_buckets,
    old_refs,
    overflow_key,
    plan_merges,
    plan_moves,
    split_into_buckets,
)
from ._pipelines import (
    counter_is,
    message_layout_pipeline,
    references_pipeline,
    replaced_projection,
    resident_messages,
)
from ._store import ATTEMPTS, COMPANION_FIELDS, SessionStore, Write, encoded_size, session_missing
from .errors import MongoDBSessionError, SessionConflictError, SessionNotFoundError, SessionStorageError

logger = logging.getLogger(__name__)

__all__ = ["STALE_PENDING", "Collected", "OverflowIO"]

#: Unfinished overflow writes older than this are taken for leftovers of a crash and collected by the
#: next move or redaction; younger ones may still be in flight.
STALE_PENDING = timedelta(seconds=60)


class Collected(Exception):
    """A collector took the record of our unfinished overflow write before we committed (internal)."""


class OverflowIO:
    """The overflow I/O of one :class:`._store.SessionStore` (see the module docstring)."""

    def __init__(self, store: SessionStore) -> None:
        self.store = store
        store.remedies = self

    # ------------------------------------------------------------------ unfinished writes

    def begin(
        self, session_id: str, kind: str, docs: list[Any], expire_at: datetime | None, agents: Collection[str] = ()
    ) -> ObjectId:
        """Record on the session, before writing overflow documents, what is about to be written.

        The record (an entry of ``overflow_pending``) makes every write to the overflow collection
        crash-safe: the write that makes the new documents part of the session (the *commit*: an
        append, a move, a merge, a redaction) requires the record to be there and removes it in the
        same update. A record still present therefore means its documents are not part of the
        session; if it outlives its writer (a crash, a lost connection) the next move or redaction
        of the session, or :meth:`repair`, takes it and deletes its documents. Taking a record first
        removes it, so a writer still in flight cannot commit afterwards: it finds its record gone,
        deletes what it wrote and starts again.

        The same update marks the session as having overflow documents and keeps their expiry ahead
        of the session's.

        Args:
            kind: ``"buckets"`` (copies of messages: moves and merges) or ``"blobs"`` (chunks of
                binary values).
            docs: ``_id`` of every document about to be written.
            expire_at: Their expiry date (``None`` when sessions never expire).
            agents: The agents (field names) whose messages buckets copy.

        Returns:
            The record's id, for the commit's filter and update.

        Raises:
            SessionNotFoundError: The session does not exist.
        """
        if self.store.expiry_is_stale():
            self.store.refresh_expiry(session_id)
            expire_at = self.store.companions_expiry()
        op = ObjectId()
        record: dict[str, Any] = {"op": op, "kind": kind, "docs": docs}
        if agents:
            record["agents"] = list(agents)
        update: dict[str, Any] = {
            "$set": {"companions": True, "companions_ttl": self.store.expiry_seconds},
            "$push": {"overflow_pending": record},
        }
        if expire_at is not None:
            update["$min"] = {"companions_until": expire_at}
        write = Write({"_id": self.store.key(session_id)}, update, "prepare overflow storage", payload=record)
        matched, _ = self.store.write(session_id, write)
        if not matched:
            raise session_missing(session_id)
        ensure_overflow_indexes(self.store.overflow)
        return op

    def end(self, session_id: str, op: ObjectId) -> bool:
        """Remove an overflow write's record (its documents are committed or deleted).

        Returns:
            False if the record was gone already: the collector took it (and may have deleted its
            documents).
        """
        with self.store.errors(session_id, "finish overflow write"):
            result = self.store.collection.update_one(
                {"_id": self.store.key(session_id)}, {"$pull": {"overflow_pending": {"op": op}}}
            )
        return result.modified_count > 0

    def collect_pending(
        self,
        session_id: str,
        records: Any,
        *,
        older_than: timedelta = STALE_PENDING,
        any_age: Callable[[dict[str, Any]], bool] | None = None,
        own: ObjectId | None = None,
    ) -> int:
        """Take unfinished overflow writes' records and delete their documents (see :meth:`begin`).

        Args:
            records: The session's ``overflow_pending`` entries, as some earlier read returned them.
            older_than: Take only records at least this old (younger writes may still be in flight).
            any_age: Which records to take whatever their age.
            own: The caller's own record, never taken.

        Returns:
            How many records were taken.
        """
        taken = 0
        now = utc_now()
        for record in records or []:
            op = record.get("op") if isinstance(record, dict) else None
            if not isinstance(op, ObjectId) or op == own:
                continue
            if now - op.generation_time < older_than and not (any_age is not None and any_age(record)):
                continue
            docs = [doc for doc in record.get("docs") or [] if doc is not None]
            with self.store.errors(session_id, "collect unfinished overflow writes"):
                # Take the record first: a writer still in flight then cannot commit these documents.
                result = self.store.collection.update_one(
                    {"_id": self.store.key(session_id), "overflow_pending.op": op},
                    {"$pull": {"overflow_pending": {"op": op}}},
                )
                if result.modified_count and docs:
                    self.store.overflow.delete_many({"_id": {"$in": docs}, **self.store.owned(session_id)})
            if result.modified_count:
                taken += 1
                logger.debug(
                    "session_id=<%s>, kind=<%s>, documents=<%d> | unfinished overflow write collected",
                    session_id,
                    record.get("kind"),
                    len(docs),
                )
        return taken

    # ------------------------------------------------------------------ expiry

    def extend_expiry(self, session_id: str) -> None:
        """Push the expiry of a session's overflow documents forward (an active session keeps them).

        Also records on the session the TTL the new expiry follows, so that a process still writing
        under another TTL notices at its next write (see :meth:`._store.SessionStore.write`).
        """
        until = self.store.companions_expiry()
        overflow, collection = self.store.overflow, self.store.collection
        with self.store.errors(session_id, "extend overflow expiry"):
            if until is None:  # no TTL any more: what is outside the document must not expire either
                overflow.update_many({**self.store.owned(session_id)}, {"$unset": {"expire_at": ""}})
                collection.update_one(
                    {"_id": self.store.key(session_id)},
                    {"$unset": {"companions_until": ""}, "$set": {"companions_ttl": None}},
                )
            else:
                overflow.update_many({**self.store.owned(session_id)}, {"$max": {"expire_at": until}})
                collection.update_one(
                    {"_id": self.store.key(session_id)},
                    {"$max": {"companions_until": until}, "$set": {"companions_ttl": self.store.expiry_seconds}},
                )
        logger.debug("session_id=<%s> | overflow expiry extended", session_id)

    # ------------------------------------------------------------------ binaries

    def store_blobs(self, session_id: str, blobs: list[tuple[BlobRef, bytes]]) -> ObjectId | None:
        """Write offloaded binary values, before the message that refers to them.

        Returns:
            The record of this unfinished write (see :meth:`begin`), which the commit of the
            message removes; ``None`` when there is nothing to write.
        """
        if not blobs:
            return None
        expire_at = self.store.companions_expiry()
        documents = [
            doc for ref, data in blobs for doc in chunk_documents(self.store.key(session_id), ref, data, expire_at)
        ]
        op = self.begin(session_id, "blobs", [doc["_id"] for doc in documents], expire_at)
        with self.store.errors(session_id, "store binary content"):
            self.store.overflow.insert_many(documents, ordered=True)
        logger.debug("session_id=<%s>, values=<%d> | binary content stored outside the session", session_id, len(blobs))
        return op

    def discard_blobs(self, session_id: str, refs: list[BlobRef]) -> None:
        """Delete offloaded values nothing refers to any more."""
        if not refs:
            return
        with self.store.errors(session_id, "delete binary content"):
            self.store.overflow.delete_many(
                {"_id": {"$in": [chunk for ref in refs for chunk in ref.chunk_ids()]}, **self.store.owned(session_id)}
            )

    def discard_unreferenced(self, session_id: str, blobs: list[tuple[BlobRef, bytes]], op: ObjectId | None) -> None:
        """After a write that certainly did not store them: delete the values stored for it, and its record.

        A failure here is logged, not raised: the caller is either raising the reason the write
        failed or reporting a message that was already stored, and the record left behind makes the
        next move, redaction or repair delete the values.
        """
        if op is None:
            return
        try:
            self.discard_blobs(session_id, [ref for ref, _ in blobs])
            self.end(session_id, op)
        except MongoDBSessionError as e:
            logger.warning("session_id=<%s> | could not delete unused binary content yet: %s", session_id, e)

    # ------------------------------------------------------------------ moves and merges

    def move_old_messages(
        self,
        session_id: str,
        target: int | None = None,
        enough: int | None = None,
        trimmed: Mapping[str, int] | None = None,
    ) -> bool:
        """Move the oldest messages out of the session document until it is at ``target`` bytes.

        ``target`` defaults to half the overflow threshold, so moves happen once per half-threshold
        of appends rather than at every append. Messages an agent's conversation manager no longer
        holds (before its stored ``conversation_manager_state.removed_message_count``, or
        ``trimmed[agent key]`` when given) move out with them: a restore never reads them, so the
        document keeps what agents still work with.

        Copy, then commit: the messages are read, written into new bucket documents, and only then
        removed from the session document, by one update that also records the buckets. That
        update matches only if no other writer moved or edited the agents' resident messages in
        the meantime (``overflow_count`` and ``edits`` unchanged) and the move's record is still
        there; otherwise its buckets are deleted and the move is planned again. Appends never
        conflict with it: they add at the end, the move removes from the front.

        Args:
            enough: Move nothing if the document is at most this size (another writer's move made
                room meanwhile), trimmed messages aside.

        Returns:
            True if the document is now at or below the target (by this move or another writer's).

        Raises:
            SessionConflictError: Other writers kept changing the agents' messages.
        """
        if target is None:
            target = self.store.threshold // 2
        for attempt in range(ATTEMPTS):
            documents = self.store.aggregate(
                session_id, message_layout_pipeline(self.store.key(session_id)), "read message sizes"
            )
            if not documents:
                return False
            layout = documents[0]
            if attempt == 0 and layout.get("overflow_pending"):
                self.collect_pending(session_id, layout["overflow_pending"])  # leftovers of a crash, if any
            size = int(layout["size"])
            agents = layout.get("agents") or []
            due = _trimmed_due(agents, trimmed)
            if size <= target or (enough is not None and size <= enough):
                if not due:
                    return True
                plan = due
            else:
                plan = plan_moves({agent["k"]: list(agent["sizes"]) for agent in agents}, size - target)
                for key, count in due.items():
                    plan[key] = max(plan.get(key, 0), count)
            if not plan:
                return False
            outcome = self._move(session_id, plan, size, int(layout.get("size_estimate") or 0))
            if outcome is not None:
                return outcome
        raise SessionConflictError(
            f"session_id=<{session_id}> | could not move old messages out: other writers kept changing them"
        )

    def _move(self, session_id: str, plan: dict[str, int], size: int, estimate: int) -> bool | None:
        """One attempt at a planned move. Returns ``None`` if another writer got in the way."""
        projection: dict[str, Any] = {}
        for key, count in plan.items():
            projection[f"agents.{key}.messages"] = {"$slice": [0, count]}
            for name in ("agent_id", "overflow_count", "edits", "overflow.id"):
                projection[f"agents.{key}.{name}"] = 1
        document = self.store.find_one(
            session_id, {"_id": self.store.key(session_id)}, projection, "read messages to move"
        )
        if document is None:
            return False
        expire_at = self.store.companions_expiry()
        buckets: list[dict[str, Any]] = []
        crowded: list[str] = []
        condition: dict[str, Any] = {"_id": self.store.key(session_id)}
        # The estimate becomes the measured size, less what moves out, plus the descriptors.
        update: dict[str, Any] = {
            "$pull": {},
            "$inc": {"size_estimate": size - estimate + COMPANION_FIELDS},
            "$push": {},
        }
        for key in plan:
            stored = document["agents"][key]
            moved_before, edits = int(stored.get("overflow_count") or 0), int(stored.get("edits") or 0)
            entries = _contiguous(stored, moved_before, session_id)
            sizes = [entry_size(entry) for entry in entries]
            descriptors = []
            for start, count in split_into_buckets(sizes):
                bucket, descriptor = bucket_document(
                    self.store.key(session_id),
                    stored.get("agent_id"),
                    moved_before + start,
                    entries[start : start + count],
                    sum(sizes[start : start + count]),
                    expire_at,
                )
                buckets.append(bucket)
                descriptors.append(descriptor)
            if len(stored.get("overflow") or []) + len(descriptors) > max_buckets(self.store.threshold):
                crowded.append(key)
            path = f"agents.{key}"
            condition[f"{path}.overflow_count"] = counter_is(moved_before)
            condition[f"{path}.edits"] = counter_is(edits)
            update["$pull"][f"{path}.messages"] = {"message_id": {"$lt": moved_before + len(entries)}}
            update["$inc"][f"{path}.overflow_count"] = len(entries)
            update["$inc"]["size_estimate"] += encoded_size(descriptors) - sum(sizes)
            update["$push"][f"{path}.overflow"] = {"$each": descriptors}
        if not buckets:
            return False
        op = self.begin(session_id, "buckets", [bucket["_id"] for bucket in buckets], expire_at, agents=list(plan))
        condition["overflow_pending.op"] = op
        update["$pull"]["overflow_pending"] = {"op": op}
        with self.store.errors(session_id, "move messages out"):
            self.store.overflow.insert_many(buckets, ordered=True)
            result = self.store.collection.update_one(condition, update)
        if not result.matched_count:
            # Another writer moved or edited these messages first (or took our record): ours are
            # copies nobody refers to.
            with self.store.errors(session_id, "discard unused buckets"):
                self.store.overflow.delete_many(
                    {"_id": {"$in": [bucket["_id"] for bucket in buckets]}, **self.store.owned(session_id)}
                )
            self.end(session_id, op)
            return None
        logger.debug(
            "session_id=<%s>, moved=<%s>, buckets=<%d> | old messages moved to overflow storage",
            session_id,
            {key: count for key, count in update["$inc"].items() if key != "size_estimate"},
            len(buckets),
        )
        for key in crowded:
            self.merge_buckets(session_id, key)
        return True

    def merge_buckets(self, session_id: str, key: str) -> None:
        """Merge an agent's small adjacent buckets, so the descriptors the session keeps stay few.

        The same copy-then-commit as a move: the merged buckets are written, then one update
        replaces the descriptor list, only if no move or edit happened since it was read
        (``overflow_count``, ``edits``; edits of moved messages count too). The commit also turns
        the merge's record into one of the buckets it replaced, which are deleted right after (so a
        crash before that leaves them to the collector); a reader that still follows an old
        descriptor finds its bucket gone and reads again. A merge that loses a race is dropped: the
        next move tries again.
        """
        path = f"agents.{key}"
        fields = {f"{path}.{name}": 1 for name in ("overflow", "overflow_count", "edits", "agent_id")}
        stored = dig(
            self.store.find_one(session_id, {"_id": self.store.key(session_id)}, fields, "read bucket descriptors"),
            path,
        )
        descriptors = list((stored or {}).get("overflow") or [])
        groups = plan_merges([int(d.get("bytes") or 0) for d in descriptors])
        if stored is None or not groups:
            return
        merged_ids = [d["id"] for start, count in groups for d in descriptors[start : start + count]]
        with self.store.errors(session_id, "read buckets to merge"):
            old = {
                doc["_id"]: doc
                for doc in self.store.overflow.find({"_id": {"$in": merged_ids}, **self.store.owned(session_id)})
            }
        if len(old) != len(merged_ids):
            return  # another merge replaced some of them: its commit wins
        expire_at = self.store.companions_expiry()  # (tests interleave other writers here)
        new_descriptors, new_buckets = _merged(
            self.store.key(session_id), stored.get("agent_id"), descriptors, groups, old, expire_at
        )
        moved, edits = int(stored.get("overflow_count") or 0), int(stored.get("edits") or 0)
        op = self.begin(session_id, "buckets", [bucket["_id"] for bucket in new_buckets], expire_at, agents=[key])
        with self.store.errors(session_id, "merge buckets"):
            self.store.overflow.insert_many(new_buckets, ordered=True)
            result = self.store.collection.update_one(
                {
                    "_id": session_id,
                    f"{path}.overflow_count": counter_is(moved),
                    f"{path}.edits": counter_is(edits),
                    "overflow_pending.op": op,
                },
                {"$set": {f"{path}.overflow": new_descriptors, "overflow_pending.$[p].docs": merged_ids}},
                array_filters=[{"p.op": op}],
            )
            unused = merged_ids if result.matched_count else [bucket["_id"] for bucket in new_buckets]
            self.store.overflow.delete_many({"_id": {"$in": unused}, **self.store.owned(session_id)})
        self.end(session_id, op)
        if result.matched_count:
            logger.debug(
                "session_id=<%s>, buckets=<%d->%d> | overflow buckets merged",
                session_id,
                len(descriptors),
                len(new_descriptors),
            )

    # ------------------------------------------------------------------ updating a stored message

    def update_entry(
        self,
        session_id: str,
        agent_id: str,
        message_id: int,
        fields: Mapping[str, Any],
        operation: str,
        field: str,
        replacing: bool = False,
        op: ObjectId | None = None,
        key_id: Any = None,
    ) -> tuple[list[BlobRef], list[Any]]:
        """``$set`` fields of one stored message, wherever it is, addressed with ``array_filters``.

        A resident message is updated in one command (which also counts the edit, so a concurrent
        move of old messages notices). A moved one: its bucket is found from the session's
        descriptors and updated, then the edit is counted.

        Args:
            replacing: Also return what the update replaced (see Returns), read by the same commands.
            op: The record of binary values stored for the new content (see :meth:`begin`): the
                update commits them.
            key_id: The data key the fields are encrypted with (the key fence, see ``Write``).

        Returns:
            With ``replacing``: the binary references the message held before the update, and the
            session's records of unfinished overflow writes (for the caller to collect); otherwise
            ``([], [])``.

        Raises:
            SessionNotFoundError: The message does not exist.
            Collected: Our record was taken by a collector before the commit (its values may be
                gone); nothing was changed: store them again and retry.
        """
        key = encode_field_name(agent_id)
        path = f"agents.{key}"
        changes: dict[str, Any] = {f"{path}.messages.$[m].{name}": value for name, value in fields.items()}
        changes["updated_date"] = utc_now()
        query: dict[str, Any] = {"_id": self.store.key(session_id), f"{path}.messages.message_id": message_id}
        update: dict[str, Any] = {"$set": changes, "$inc": {f"{path}.edits": 1}}
        if op is not None:
            query["overflow_pending.op"] = op
            update["$pull"] = {"overflow_pending": {"op": op}}
        write = Write(
            query,
            update,
            operation,
            field,
            payload=changes,
            array_filters=[{"m.message_id": message_id}],
            returning=replaced_projection(resident_messages(key), message_id) if replacing else None,
            before=True,
            key_id=key_id,
        )
        matched, document = self.store.write(session_id, write)
        if matched:
            return old_refs(document), list((document or {}).get("pending") or [])
        projection = {f"{path}.overflow": 1, f"{path}.messages.message_id": 1, "overflow_pending": 1}
        document = self.store.find_one(session_id, {"_id": self.store.key(session_id)}, projection, operation)
        resident_ids = [entry.get("message_id") for entry in dig(document, f"{path}.messages") or []]
        if op is not None and message_id in resident_ids:
            raise Collected()  # the message is resident: only our record can have been missing
        moved = descriptor_of(dig(document, f"{path}.overflow"), message_id) is not None
        # A moved message: the bucket cannot check our record, so the record goes first; a crash
        # from here on leaves our values unreferenced (repair collects them).
        if op is not None and moved and not self.end(session_id, op):
            raise Collected()
        return self._update_moved(session_id, agent_id, message_id, fields, operation, field, document)

    def _update_moved(
        self,
        session_id: str,
        agent_id: str,
        message_id: int,
        fields: Mapping[str, Any],
        operation: str,
        field: str,
        document: dict[str, Any] | None,
    ) -> tuple[list[BlobRef], list[Any]]:
        path = f"agents.{encode_field_name(agent_id)}"
        bucket_changes = {f"messages.$[m].{name}": value for name, value in fields.items()}
        replaced: list[BlobRef] = []
        for _attempt in range(ATTEMPTS):
            descriptor = descriptor_of(dig(document, f"{path}.overflow"), message_id)
            if descriptor is None:
                raise SessionNotFoundError(
                    f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | "
                    "message does not exist"
                )
            with self.store.errors(session_id, operation, field, payload=bucket_changes):
                old_bucket = self.store.overflow.find_one_and_update(
                    {"_id": descriptor["id"], **self.store.owned(session_id), "messages.message_id": message_id},
                    {"$set": bucket_changes},
                    projection=replaced_projection("$messages", message_id),
                    array_filters=[{"m.message_id": message_id}],
                    return_document=ReturnDocument.BEFORE,
                )
            replaced.extend(old_refs(old_bucket))
            # Count the edit (a merge that copied this bucket before it then fails its commit), and
            # check the bucket is still the one holding the message: a merge that committed
            # meanwhile copied it before our update, so apply the update again to its replacement.
            edit = Write(
                {"_id": self.store.key(session_id)},
                {"$set": {"updated_date": utc_now()}, "$inc": {f"{path}.edits": 1}},
                operation,
                returning={f"{path}.overflow": 1, "overflow_pending": 1},
            )
            _, document = self.store.write(session_id, edit)
            current = descriptor_of(dig(document, f"{path}.overflow"), message_id)
            if old_bucket is not None and current is not None and current["id"] == descriptor["id"]:
                return replaced, list((document or {}).get("overflow_pending") or [])
        raise SessionConflictError(
            f"session_id=<{session_id}>, agent_id=<{agent_id}>, message_id=<{message_id}> | the moved message kept "
            "being reorganised while it was updated; retry"
        )

    # ------------------------------------------------------------------ repair

    def repair(self, session_id: str, grace: timedelta) -> dict[str, int]:
        """Delete what crashes left of a session outside its document (see the repository's ``repair_session``).

        Raises:
            SessionNotFoundError: The session does not exist.
            SessionStorageError: The session refers to overflow documents that are missing.
            SessionConflictError: The session kept changing while it was repaired.
        """
        document = self.store.find_one(
            session_id, {"_id": self.store.key(session_id)}, {"overflow_pending": 1}, "repair session"
        )
        if document is None:
            raise session_missing(session_id)
        taken = self.collect_pending(session_id, document.get("overflow_pending"), older_than=grace)
        for _attempt in range(ATTEMPTS):
            garbage = self._unreferenced(session_id, grace)
            if garbage is None:
                continue  # a merge replaced buckets while we read them: read again
            if garbage:
                with self.store.errors(session_id, "repair session"):
                    self.store.overflow.delete_many({"_id": {"$in": garbage}, **self.store.owned(session_id)})
            logger.info(
                "session_id=<%s>, unfinished_writes=<%d>, unreferenced_documents=<%d> | session repaired",
                session_id,
                taken,
                len(garbage),
            )
            return {"unfinished_writes": taken, "unreferenced_documents": len(garbage)}
        raise SessionConflictError(f"session_id=<{session_id}> | could not repair: the session kept changing; retry")

    def _unreferenced(self, session_id: str, grace: timedelta) -> list[Any] | None:
        """``_id`` of the session's overflow documents older than ``grace`` that nothing refers to.

        Lists the documents first, then reads what refers to them (descriptors, binary references
        in resident and moved messages, records of unfinished writes): a document written after the
        listing is not considered, one written before it is protected by its record until its
        commit makes it referenced.

        Returns:
            The ids, or ``None`` if a bucket named by a descriptor vanished meanwhile (a merge).
        """
        with self.store.errors(session_id, "repair session"):
            listed = [doc["_id"] for doc in self.store.overflow.find({**self.store.owned(session_id)}, {"_id": 1})]
        documents = self.store.aggregate(session_id, references_pipeline(self.store.key(session_id)), "repair session")
        if not documents:
            raise session_missing(session_id)
        protected = {
            overflow_key(doc) for record in documents[0].get("pending") or [] for doc in record.get("docs") or []
        }
        buckets: set[Any] = set()
        refs: list[Any] = []
        for agent in documents[0].get("agents") or []:
            descriptors = checked_descriptors(agent.get("overflow"), session_id, str(agent.get("agent_id")))
            buckets.update(d["id"] for d in descriptors)
            refs.extend(value for values in agent.get("blobs") or [] for value in values or [])
        if buckets:
            with self.store.errors(session_id, "repair session"):
                moved = list(
                    self.store.overflow.find(
                        {"_id": {"$in": list(buckets)}, **self.store.owned(session_id)}, {"messages.blobs": 1}
                    )
                )
            if len(moved) != len(buckets):
                return None
            refs.extend(
                value
                for bucket in moved
                for entry in bucket.get("messages") or []
                for value in entry.get("blobs") or []
            )
        blob_ids = {BlobRef.from_binary(value).blob_id for value in refs}
        now = utc_now()
        garbage = []
        for doc_id in listed:
            key = overflow_key(doc_id)
            written = key[0] if isinstance(key, tuple) else key
            if not isinstance(written, ObjectId) or now - written.generation_time < grace or key in protected:
                continue
            if key in buckets or (isinstance(key, tuple) and key[0] in blob_ids):
                continue
            garbage.append(doc_id)
        return garbage


def _trimmed_due(agents: list[dict[str, Any]], trimmed: Mapping[str, int] | None) -> dict[str, int]:
    """``{agent key: count}`` of resident messages the agents' conversation managers no longer hold."""
    due: dict[str, int] = {}
    for agent in agents:
        key = str(agent.get("k"))
        before = (trimmed or {}).get(key, agent.get("removed"))
        moved = agent.get("moved")
        if isinstance(before, bool) or not isinstance(before, int) or not isinstance(moved, int):
            continue
        count = min(before - moved, len(agent.get("sizes") or []))
        if count > 0:
            due[key] = count
    return due


def _contiguous(stored: dict[str, Any], first: int, session_id: str) -> list[dict[str, Any]]:
    """The entries a move read, checked to be the messages from ``first`` on, in order."""
    entries: list[dict[str, Any]] = stored.get("messages") or []
    for index, entry in enumerate(entries):
        if entry.get("message_id") != first + index:
            raise SessionStorageError(
                f"session_id=<{session_id}>, agent_id=<{stored.get('agent_id')}> | stored history is "
                f"not contiguous at message_id {first + index}"
            )
    return entries


def _merged(
    owner: Any,
    agent_id: Any,
    descriptors: list[dict[str, Any]],
    groups: list[tuple[int, int]],
    old: dict[Any, dict[str, Any]],
    expire_at: datetime | None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The descriptor list after merging ``groups`` of ``descriptors``, and the new buckets."""
    new_descriptors: list[dict[str, Any]] = []
    new_buckets: list[dict[str, Any]] = []
    position = 0
    for start, count in groups:
        new_descriptors.extend(descriptors[position:start])
        group = descriptors[start : start + count]
        bucket, descriptor = bucket_document(
            owner,
            agent_id,
            group[0]["first"],
            [entry for d in group for entry in old[d["id"]].get("messages") or []],
            sum(int(d.get("bytes") or 0) for d in group),
            expire_at,
        )
        new_buckets.append(bucket)
        new_descriptors.append(descriptor)
        position = start + count
    new_descriptors.extend(descriptors[position:])
    return new_descriptors, new_buckets

"""Encryption at rest: a turn and a restore with ``ClientSideEncryption`` against the same without,
taking turns in one run (``interleave``), so the figures are ratios measured side by side.

Both sides use the same client, database and conversation; the encrypted side has a local master key
and a key vault in the bench database. Key fetches happen once per session per process: the restore
measured here reads sessions whose key this process already holds (as a long-running server would),
and the first fetch is reported apart.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from strands.types.session import Session, SessionType

from mongodb_session_manager import ClientSideEncryption, MongoDBSessionManager

from ._harness import Contestant, Timing, Traffic, interleave
from ._report import Table, count, ms, ratio
from ._scenarios import USER_TEXT, WINDOW, conversation, new_agent, stored_agent

if TYPE_CHECKING:
    from ._scenarios import Bench

STORED = 40  # messages of the restored conversation (the window holds WINDOW of them)


@dataclass
class Side:
    """One side (plain or encrypted) of one operation."""

    timing: Timing
    traffic: Traffic


@dataclass
class EncryptionCost:
    """A turn and a restore, plain and encrypted."""

    turn: tuple[Side, Side]
    restore: tuple[Side, Side]


def _settings(bench: Bench) -> ClientSideEncryption:
    return ClientSideEncryption(
        kms_providers={"local": {"key": os.urandom(96)}}, key_vault_namespace=f"{bench.database_name}.vault"
    )


def measure(bench: Bench) -> EncryptionCost:
    """Time and bytes of a turn and a restore, encrypted against plain, in the same run."""
    encryption = _settings(bench)
    collections = {False: "enc_plain", True: "enc_sealed"}

    def manager(encrypted: bool, session_id: str) -> MongoDBSessionManager:
        return MongoDBSessionManager(
            session_id,
            client=bench.client,
            database_name=bench.database_name,
            collection_name=collections[encrypted],
            encryption=encryption if encrypted else None,
        )

    # A turn of a new agent (user message, assistant reply with metrics).
    def fresh(encrypted: bool) -> Any:
        return lambda _: new_agent(manager(encrypted, bench.session_id(f"turn{int(encrypted)}")))

    turns = interleave(
        bench.settings.repeats,
        [Contestant(lambda agent: agent(USER_TEXT), fresh(enc), bench.recorder.take) for enc in (False, True)],
    )
    turn_sides = tuple(Side(timing, traffic) for timing, traffic in turns)

    # A restore of a stored conversation, written through the library on both sides.
    ids = {enc: bench.session_id(f"restore{int(enc)}") for enc in (False, True)}
    for enc, session_id in ids.items():
        setup = manager(enc, session_id)
        repo = setup.session_repository
        agent = stored_agent(STORED)
        repo.create_session(Session(session_id=session_id, session_type=SessionType.AGENT))
        repo.create_agent(session_id, agent)
        for message in conversation(STORED):
            repo.create_message(session_id, agent.agent_id, message)
    restored: set[int] = set()

    def restore(enc: bool) -> Any:
        return lambda _: restored.add(len(new_agent(manager(enc, ids[enc])).messages))

    restores = interleave(
        bench.settings.repeats, [Contestant(restore(enc), capture=bench.recorder.take) for enc in (False, True)]
    )
    assert restored == {min(STORED, WINDOW)}, restored
    restore_sides = tuple(Side(timing, traffic) for timing, traffic in restores)
    return EncryptionCost(turn_sides, restore_sides)  # type: ignore[arg-type]


def encryption_table(cost: EncryptionCost) -> Table:
    """The table of ``make bench``: each side's commands, bytes, median, and the encrypted/plain ratios."""
    table = Table(
        "Encryption at rest: encrypted against plain, same run",
        [
            "operation",
            "commands",
            "bytes sent (plain / enc)",
            "bytes received (plain / enc)",
            "median ms (plain / enc)",
            "x time",
            "x bytes",
        ],
    )
    for label, (plain, sealed) in (
        ("one turn (user + assistant with metrics)", cost.turn),
        (f"restore an agent, {STORED} stored messages (window {WINDOW})", cost.restore),
    ):
        plain_bytes = plain.traffic.sent + plain.traffic.received
        sealed_bytes = sealed.traffic.sent + sealed.traffic.received
        table.add(
            label,
            f"{plain.traffic.count} / {sealed.traffic.count}",
            f"{count(plain.traffic.sent)} / {count(sealed.traffic.sent)}",
            f"{count(plain.traffic.received)} / {count(sealed.traffic.received)}",
            f"{ms(plain.timing.median)} / {ms(sealed.timing.median)}",
            ratio(sealed.timing.median / plain.timing.median),
            ratio(sealed_bytes / plain_bytes),
        )
    table.notes.append(
        "x bytes: bytes sent plus received, encrypted over plain. Keys were already cached in this process "
        "(a process's first read or write of a session adds one key-vault find)."
    )
    return table


def main() -> int:
    """``python -m benchmarks._encryption``: this comparison alone (``MONGODB_URI`` set)."""
    import logging
    import sys

    from ._scenarios import Bench, Settings

    uri = os.environ.get("MONGODB_URI")
    if not uri:
        print("MONGODB_URI is not set", file=sys.stderr)
        return 2
    logging.getLogger("strands").setLevel(logging.ERROR)
    bench = Bench(uri, Settings())
    try:
        print(encryption_table(measure(bench)).text())
    finally:
        bench.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

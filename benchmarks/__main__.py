"""``python -m benchmarks``: measure, print the tables, write ``docs/benchmarks.md``.

Needs ``MONGODB_URI``; ``make bench`` starts a throwaway SecantusDB server and sets it.

Options:
    --quick         a few repetitions of everything, to check the suite runs (writes nothing
                    unless --output is given)
    --output PATH   where to write the Markdown report (default: docs/benchmarks.md)
    --no-write      print only

Writing the report also writes its charts (``docs/bench-*.png``) next to it.
"""

from __future__ import annotations

import argparse
import collections
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from pymongo import MongoClient

from ._charts import CHARTS, history_chart, restore_chart, versus_chart
from ._encryption import encryption_table
from ._encryption import measure as measure_encryption
from ._harness import Traffic, machine_facts
from ._history import HISTORY_IMAGE_BYTES, HISTORY_IMAGE_EVERY, HISTORY_WINDOW, HistoryPoint
from ._report import Table, count, ms, ratio
from ._scenarios import IMAGE_EVERY, LONG_THRESHOLD, WINDOW, Append, Bench, LongRestore, Results, Settings, run_all
from ._storage import storage_table

DEFAULT_OUTPUT = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description="mongodb-session-manager benchmarks")
    parser.add_argument("--quick", action="store_true", help="few repetitions; writes nothing unless --output")
    parser.add_argument("--output", type=Path, default=None, help=f"Markdown report (default {DEFAULT_OUTPUT})")
    parser.add_argument("--no-write", action="store_true", help="print the tables only")
    args = parser.parse_args(argv)
    uri = os.environ.get("MONGODB_URI")
    if not uri:
        print(
            "MONGODB_URI is not set: run `make bench` (it starts a throwaway server), or set MONGODB_URI.",
            file=sys.stderr,
        )
        return 2
    output = None if args.no_write else args.output or (None if args.quick else DEFAULT_OUTPUT)
    settings = Settings.quick() if args.quick else Settings()
    logging.getLogger("strands").setLevel(logging.ERROR)

    started = time.perf_counter()
    client: MongoClient[dict[str, Any]]
    with MongoClient(uri, serverSelectionTimeoutMS=10_000) as client:
        facts = machine_facts(client)
    bench = Bench(uri, settings)
    try:
        results = run_all(bench, lambda step: print(f"  measuring: {step}", file=sys.stderr, flush=True))
        print("  measuring: encryption at rest, encrypted against plain", file=sys.stderr, flush=True)
        results.encryption = measure_encryption(bench)
    finally:
        bench.close()
    elapsed = time.perf_counter() - started

    tables = build_tables(results)
    print()
    print("\n".join(f"{name}: {value}" for name, value in facts.items()))
    for table in tables:
        print()
        print(table.text())
    print(f"\n(whole run: {elapsed:.0f} s)")
    if output is not None:
        output.parent.mkdir(parents=True, exist_ok=True)
        charts = write_charts(results, output.parent)
        output.write_text(markdown(facts, tables, args.quick, charts), encoding="utf-8")
        print(f"wrote {output} and {', '.join(charts)}")
    return 0


def _commands(traffic: Traffic) -> str:
    if not traffic.count:
        return "0"
    names = collections.Counter(traffic.commands)
    listed = ", ".join(name if n == 1 else f"{name} x{n}" for name, n in names.items())
    return f"{traffic.count} ({listed})"


def _yes(met: bool) -> str:
    return "yes" if met else "NO"


def targets(results: Results) -> Table:
    """Issue #6's targets, each with what this run measured."""
    costs = {cost.key: cost for cost in results.costs}
    table = Table("Targets of issue #6", ["target", "measured", "met"])
    restores = [cost for key, cost in costs.items() if key.startswith("restore:")]
    stored = [int(cost.key.split(":")[1]) for cost in restores]
    table.add(
        "restore (manager + Agent(...)): at most 2 commands, whatever the stored length",
        "; ".join(f"{n:,} stored: {cost.traffic.count}" for n, cost in zip(stored, restores, strict=True)),
        _yes(all(cost.traffic.count <= 2 for cost in restores)),
    )
    full = [cost for n, cost in zip(stored, restores, strict=True) if n >= WINDOW]
    table.add(
        f"restore: bytes follow the messages restored ({WINDOW} of each history), not the history",
        "; ".join(f"{count(int(cost.key.split(':')[1]))} stored: {count(cost.traffic.received)} B" for cost in full),
        _yes(max(c.traffic.received for c in full) <= 1.01 * min(c.traffic.received for c in full)),
    )
    for key, label in (("turn", "one turn"), ("turn:slide", f"one turn once the window of {WINDOW} is full")):
        cost = costs[key]
        table.add(
            f"{label}: one write per appended message (2), no reads",
            _commands(cost.traffic),
            _yes(cost.traffic.commands == ("update", "update")),
        )
    table.add(
        "sync_agent with nothing changed sends nothing",
        _commands(costs["sync"].traffic),
        _yes(costs["sync"].traffic.count == 0),
    )
    if results.requests:
        factory = results.requests[-1]
        total = sum(factory.traffic, Traffic())
        table.add(
            "a manager per request through the global factory: no new connection, no index command",
            f"{total.connections} connections, {total.commands.count('createIndexes')} createIndexes"
            f" in {len(factory.traffic)} requests",
            _yes(total.connections == 0 and "createIndexes" not in total.commands),
        )
    if results.storage is not None:
        storage = results.storage
        table.add(
            "a binary block is stored at about its own size (BSON Binary, not base64)",
            f"{count(storage.stored)} B stored for {count(storage.raw)} B ({storage.stored / storage.raw:.3f}x)",
            _yes(storage.stored / storage.raw < 1.05),
        )
    appends = [cost for key, cost in costs.items() if key.startswith("append:")]
    sizes = {cost.traffic.sent for cost in appends}
    table.add(
        "an append stays 1 command of the same size as the conversation grows",
        ", ".join(count(int(cost.key.split(":")[1])) for cost in appends)
        + f" stored: {'/'.join(sorted({str(c.traffic.count) for c in appends}))} command,"
        + f" {'/'.join(count(size) for size in sorted(sizes))} B",
        # (the filter carries the window's position once the agent has trimmed messages: +46 B)
        _yes(all(cost.traffic.count == 1 for cost in appends) and max(sizes) - min(sizes) <= 64),
    )
    for history, restores in _by_history(results.long_restores).items():
        window = min(restore.window for restore in restores)
        same_window = [restore for restore in restores if restore.window == window]
        received = [restore.traffic.received for restore in same_window]
        table.add(
            f"long session ({history}): a restore's bytes follow its window ({window}), not the history",
            "; ".join(
                f"{count(r.stored)} stored ({_mb(r.stored_bytes)}): {count(r.traffic.received)} B" for r in same_window
            ),
            _yes(max(received) <= 1.01 * min(received)),
        )
    text = [append for append in results.appends if append.kind == "text"]
    if text:
        plain = [append for append in text if not append.moved]
        moved = len(text) - len(plain)
        table.add(
            "long session: an append is 1 command unless it moves old messages out",
            f"{count(len(plain))} of {count(len(text))} appends: 1 command; {count(moved)} moved messages out;"
            f" {sum(a.traffic.count for a in text) / len(text):.2f} commands per append on average",
            _yes(all(append.traffic.commands == ("update",) for append in plain)),
        )
    table.notes.append(
        "commands and bytes are deterministic; tests/integration/test_cost_targets.py, test_restore_cost.py and"
        " test_factory.py assert them."
    )
    if costs["turn:slide"].traffic.count > 2:
        table.notes.append(
            "once a sliding window is full, Strands trims it after the turn's last message is appended and then"
            " saves the agent (its conversation_manager_state changed): that save is the third update."
        )
    return table


def build_tables(results: Results) -> list[Table]:
    main = Table(
        "What each operation costs",
        [
            "operation",
            "commands",
            "bytes sent",
            "bytes received",
            "median ms",
            "x pymongo floor",
            "FileSessionManager ms",
            "x file",
        ],
    )
    for floor in (results.floor_read, results.floor_write):
        main.add(
            floor.operation,
            _commands(floor.traffic),
            count(floor.traffic.sent),
            count(floor.traffic.received),
            ms(floor.timing.median),
            ratio(1.0),
            "-",
            "-",
        )
    alone = results.strands_alone
    for label, key in (("Agent(...)", "build"), ("one turn", "turn")):
        main.add(f"Strands alone, no session manager: {label}", "-", "-", "-", ms(alone[key].median), "-", "-", "-")
    for cost in results.costs:
        file_median = cost.file_timing.median if cost.file_timing is not None else None
        main.add(
            cost.operation,
            _commands(cost.traffic),
            count(cost.traffic.sent),
            count(cost.traffic.received),
            ms(cost.timing.median),
            ratio(cost.timing.median / cost.floor.median),
            ms(file_median) if file_median is not None else "-",
            ratio(cost.timing.median / file_median if file_median else None),
        )
    main.notes += [
        "commands and bytes are exact (pymongo CommandListener; bytes are the BSON size of each command and reply);",
        "times are medians over repeated runs, each operation taking turns with its baselines: 'x pymongo floor'"
        " divides by one find_one (reads) or one update_one (writes) of a small document by _id, timed alongside;"
        " 'x file' by FileSessionManager doing the same on local disk.",
        f"every agent uses SlidingWindowConversationManager(window_size={WINDOW}) and an offline model.",
    ]

    files = Table(
        "The same operations with Strands' FileSessionManager on local disk",
        ["operation", "files read", "files written", "bytes read", "bytes written", "median ms"],
    )
    for cost in results.costs:
        if cost.file_io is None or cost.file_timing is None:
            continue
        io = cost.file_io
        files.add(
            cost.operation,
            count(io.reads),
            count(io.writes),
            count(io.read_bytes),
            count(io.written_bytes),
            ms(cost.file_timing.median),
        )
    files.notes.append("JSON files only; FileSessionManager also lists the messages folder on every restore.")

    appends = {cost.key: cost for cost in results.costs if cost.key.startswith("append:")}
    if "append:10" in appends and "append:5000" in appends:
        slope = (appends["append:5000"].timing.median - appends["append:10"].timing.median) / 4990
        main.notes.append(
            f"on this server an append's time grows by about {slope:.3f} ms per stored message (5,000 vs 10 stored)"
            " while its command keeps the same size: the server's own work grows with the document."
        )

    tables = [*issue16(results), targets(results), main, files]
    if results.durability:
        durable = Table(
            "What durable writes cost: acknowledged once journaled (the default) vs before",
            ["operation", "commands (journaled / not)", "median ms journaled", "median ms not", "x"],
        )
        for item in results.durability:
            durable.add(
                item.operation,
                f"{_commands(item.journaled_traffic)} / {_commands(item.unjournaled_traffic)}",
                ms(item.journaled.median),
                ms(item.unjournaled.median),
                ratio(item.journaled.median / item.unjournaled.median),
            )
        durable.notes.append(
            "the same commands; 'journaled' is the library's default write concern (j: true) for clients it"
            " builds, 'not' a client created with journal=False. The time is the server's journal flush."
        )
        tables.append(durable)
    if results.storage is not None:
        storage = results.storage
        binary = Table("A binary content block", ["where", "encoding", "bytes", "x raw"])
        kb = f"{storage.raw // 1024:,} KB image"
        binary.add(f"{kb}: the image itself", "raw bytes", count(storage.raw), ratio(1.0))
        binary.add(
            f"{kb}: the insert command that stores it (above binary_offload_bytes)",
            "BSON Binary",
            count(storage.sent),
            ratio(storage.sent / storage.raw),
        )
        binary.add(
            f"{kb}: its chunk document in the overflow collection",
            "BSON Binary",
            count(storage.stored),
            ratio(storage.stored / storage.raw),
        )
        binary.add(
            f"{kb}: FileSessionManager's message file",
            "base64 in JSON",
            count(storage.file_stored),
            ratio(storage.file_stored / storage.raw),
        )
        offloaded = results.offloaded
        if offloaded is not None:
            kb = f"{offloaded.raw // 1024:,} KB image"
            binary.add(
                f"{kb}: the commands that append it",
                "BSON Binary",
                count(offloaded.sent),
                ratio(offloaded.sent / offloaded.raw),
            )
            binary.add(
                f"{kb}: its chunk document (overflow collection)",
                "BSON Binary",
                count(offloaded.chunks),
                ratio(offloaded.chunks / offloaded.raw),
            )
            binary.add(f"{kb}: its message entry (in the session document)", "reference", count(offloaded.entry), "-")
        binary.notes.append(
            "values larger than binary_offload_bytes (default 256 KiB) are stored in chunk documents of the overflow"
            " collection; the message keeps a reference (id, length, SHA-256). Values up to it stay in the message."
        )
        tables.append(binary)
    tables += long_sessions(results)

    if results.requests:
        factory = results.requests[-1].request.median
        requests = Table(
            "A manager per request (existing session: restore + Agent(...) + one turn)",
            [
                "how the manager is built",
                "commands of a request",
                "connections opened / request",
                "createIndexes",
                "manager + Agent ms",
                "whole request ms",
                "x factory",
            ],
        )
        for design in results.requests:
            n = len(design.traffic)
            total = sum(design.traffic, Traffic())
            requests.add(
                design.design,
                _commands(design.traffic[-1]),
                f"{total.connections / n:.2f}",
                str(total.commands.count("createIndexes")),
                ms(design.setup.median),
                ms(design.request.median),
                ratio(design.request.median / factory),
            )
        requests.notes.append(
            f"{len(results.requests[0].traffic)} requests each, the three designs taking turns, over sessions that"
            " already hold a few turns; medians. Commands are those of one request."
        )
        tables.append(requests)

    if results.client_cost is not None:
        client_cost = results.client_cost
        clients = Table(
            "A new MongoClient by itself",
            ["what", "commands", "connections opened", "median ms", "p95 ms"],
        )
        clients.add(
            "MongoClient(uri) + find_one + close()",
            _commands(client_cost.new_client_traffic),
            count(client_cost.new_client_traffic.connections),
            ms(client_cost.new_client.median),
            ms(client_cost.new_client.p95),
        )
        pooled = client_cost.pooled
        clients.add("find_one on a warm pooled client", "1 (find)", "0", ms(pooled.median), ms(pooled.p95))
        clients.notes.append(
            "loopback, no TLS, no authentication: over a network with TLS and SCRAM a new client costs several"
            " round trips more (the reference design's 10-50 ms)."
        )
        tables.append(clients)

    if results.throughput:
        load = Table(
            "Threads x sessions through one pool (global factory; each request: manager + Agent + one turn)",
            [
                "threads x sessions x turns",
                "turns",
                "seconds",
                "turns/s",
                "commands/s",
                "median ms",
                "p95 ms",
                "connections created",
                "peak open",
                "peak in use",
                "maxPoolSize",
            ],
        )
        for run in results.throughput:
            load.add(
                f"{run.threads} x {run.sessions // run.threads} x {run.turns // run.sessions}",
                count(run.turns),
                f"{run.seconds:.2f}",
                f"{run.turns / run.seconds:,.0f}",
                f"{run.commands / run.seconds:,.0f}",
                ms(run.latency.median),
                ms(run.latency.p95),
                count(run.connections_created),
                count(run.peak_open),
                count(run.peak_checked_out),
                count(run.max_pool_size),
            )
        load.notes.append(
            "a session's first request creates it; its later ones restore it. Pool figures come from"
            " MongoDBConnectionPool.get_pool_stats()."
        )
        tables.append(load)
    if results.unified_storage:
        tables.append(storage_table(results.unified_storage))
    if results.encryption is not None:
        tables.append(encryption_table(results.encryption))
    return tables


def _mb(size: float) -> str:
    return f"{size / 1_000_000:,.1f} MB"


def _by_history(restores: list[LongRestore]) -> dict[str, list[LongRestore]]:
    grouped: dict[str, list[LongRestore]] = {}
    for restore in restores:
        grouped.setdefault(restore.history, []).append(restore)
    return grouped


def _outside(restore: LongRestore) -> str:
    parts = []
    if restore.moved:
        parts.append(f"{count(restore.moved)} messages in {count(restore.buckets)} buckets")
    if restore.blobs:
        parts.append(f"{count(restore.blobs)} images")
    return ", ".join(parts) or "nothing"


def _typical_commands(appends: list[Append]) -> str:
    """The command list most of ``appends`` sent (they differ only on a collection's first overflow write)."""
    sequences = collections.Counter(append.traffic.commands for append in appends)
    commands = sequences.most_common(1)[0][0]
    return _commands(next(append.traffic for append in appends if append.traffic.commands == commands))


def long_sessions(results: Results) -> list[Table]:
    """Restoring windows of long sessions, and what appending to them costs."""
    tables = []
    if results.long_restores:
        restores = Table(
            f"Long sessions: restoring a window (overflow_threshold_bytes = {LONG_THRESHOLD // 1024} KiB)",
            [
                "history",
                "messages",
                "bytes stored",
                "outside the session document",
                "window",
                "commands",
                "bytes received",
                "restored messages (BSON)",
                "received / restored",
                "received / stored",
                "median ms",
                "x pymongo floor",
            ],
        )
        labels = {
            "text": "text: questions and ~8 KB answers",
            "images": f"images: a 1 MiB image in every {IMAGE_EVERY}th message",
        }
        for restore in results.long_restores:
            restores.add(
                labels.get(restore.history, restore.history),
                count(restore.stored),
                _mb(restore.stored_bytes),
                _outside(restore),
                count(restore.window),
                _commands(restore.traffic),
                count(restore.traffic.received),
                count(restore.restored_bytes),
                ratio(restore.traffic.received / restore.restored_bytes),
                f"{100 * restore.traffic.received / restore.stored_bytes:.2f}%",
                ms(restore.timing.median),
                ratio(restore.timing.median / restore.floor.median),
            )
        restores.notes += [
            "each history is built by appending through the repository, one message at a time, and restored at"
            " each length by a fresh MongoDBSessionManager + Agent(...) with SlidingWindowConversationManager of"
            " that window. 'bytes stored' is the session document plus its documents in the overflow collection.",
            "when an append would take the session document past overflow_threshold_bytes, its oldest messages move,"
            " in order, into bucket documents until it is at half the threshold; a window that reaches into them"
            " costs one more aggregate, which reads only the window's part of each bucket. Images above"
            " binary_offload_bytes are read back in one find.",
            f"the threshold is the default ({LONG_THRESHOLD // 1024} KiB). These appends go through the repository"
            " without the window's position (as Strands' RepositorySessionManager would): only the threshold moves"
            " messages out; MongoDBSessionManager also moves what the window dropped (see 'Append vs history length').",
        ]
        tables.append(restores)

    text = [append for append in results.appends if append.kind == "text"]
    images = [append for append in results.appends if append.kind == "image"]
    if text:
        appends = Table(
            f"Long sessions: appending (overflow_threshold_bytes = {LONG_THRESHOLD // 1024} KiB)",
            ["append", "appends", "commands", "bytes sent", "bytes received", "ms", "x plain append"],
        )
        plain = [append for append in text if not append.moved]
        moved = [append for append in text if append.moved]
        base = statistics.median(append.ms for append in plain)

        def add(label: str, group: list[Append], commands: str, elapsed: float) -> None:
            appends.add(
                label,
                count(len(group)),
                commands,
                count(sum(append.traffic.sent for append in group) / len(group)),
                count(sum(append.traffic.received for append in group) / len(group)),
                ms(elapsed),
                ratio(elapsed / base),
            )

        add("a text message, nothing moves", plain, _typical_commands(plain), base)
        if moved:
            add(
                "a text message whose append moves old messages out",
                moved,
                _typical_commands(moved),
                statistics.median(append.ms for append in moved),
            )
        add(
            f"all {count(len(text))} text appends, amortised",
            text,
            f"{sum(append.traffic.count for append in text) / len(text):.2f}",
            statistics.mean(append.ms for append in text),
        )
        if images:
            add(
                "a message with a 1 MiB image (stored outside the document)",
                images,
                _typical_commands(images),
                statistics.median(append.ms for append in images),
            )
        appends.notes += [
            "the appends that built the histories above, each recorded on its own; bytes are means per append. 'ms'"
            " is the median, except for the amortised row: its mean (the total time divided by the appends).",
            "a move reads the messages it moves, writes them into a bucket and removes them from the session"
            " document: every message is sent twice over its life (append, move) and read once by the move.",
        ]
        if any("createIndexes" in append.traffic.commands for append in results.appends):
            appends.notes.append(
                "the first write to a collection's overflow storage also creates its two indexes (createIndexes x2),"
                " once per process."
            )
        tables.append(appends)
    return tables


def write_charts(results: Results, folder: Path) -> list[str]:
    """Draw the charts of this run into ``folder``; returns their file names."""
    written = []
    if results.history:
        history_chart(results.history, folder / "bench-history.png")
        written.append("bench-history.png")
    if results.window_restores:
        restore_chart(results.window_restores, folder / "bench-restore.png")
        written.append("bench-restore.png")
    groups = versus_groups(results)
    if groups:
        versus_chart(groups, folder / "bench-versus.png")
        written.append("bench-versus.png")
    return written


def versus_groups(results: Results) -> list[tuple[str, dict[str, float]]]:
    """Median ms per backend of the operations the three managers were all measured on."""
    groups: list[tuple[str, dict[str, float]]] = []
    window = [r for r in results.window_restores if r.window == HISTORY_WINDOW]
    if window:
        groups.append(
            (
                f"restore, window {HISTORY_WINDOW}\n({window[0].stored:,} stored)",
                {r.backend: r.timing.median for r in window},
            )
        )
    lengths = sorted({p.stored for p in results.history if p.kind == "text"})
    for stored in [lengths[0], *lengths[-2:]] if len(lengths) > 2 else lengths:
        points = [p for p in results.history if p.kind == "text" and p.stored == stored]
        groups.append((f"append\n({stored:,} stored)", {p.backend: p.timing.median for p in points}))
    return groups


def _floored(point: HistoryPoint) -> float:
    """An append's median over the pymongo floor timed alongside it. The test server's per-write cost
    creeps up over a run (it keeps every retryable write's reply), so times taken minutes apart are
    compared through the floor measured with each."""
    return point.timing.median / point.floor.median


def _point(results: Results, backend: str, kind: str, stored: int) -> HistoryPoint | None:
    return next((p for p in results.history if (p.backend, p.kind, p.stored) == (backend, kind, stored)), None)


def issue16(results: Results) -> list[Table]:
    """Issue #16's targets, and the tables behind its charts."""
    tables = []
    costs = {cost.key: cost for cost in results.costs}
    table = Table("Targets of issue #16", ["target", "measured", "met"])
    for kind in ("text", "images"):
        short, long = _point(results, "mongodb", kind, 10), _point(results, "mongodb", kind, 5000)
        if short is not None and long is not None:
            times = _floored(long) / _floored(short)
            table.add(
                f"an append with 5,000 stored costs at most 2x the append with 10 stored ({kind})",
                f"{ratio(_floored(long))} vs {ratio(_floored(short))} the pymongo floor ({times:.2f}x); document"
                f" rewritten: {count(long.rewritten)} vs {count(short.rewritten)} B",
                _yes(times <= 2.0),
            )
        longest = max((p.stored for p in results.history if p.kind == kind), default=0)
        far = _point(results, "mongodb", kind, longest)
        if short is not None and far is not None and longest > 5000:
            table.add(
                f"the same at {longest:,} stored ({kind}), reported",
                f"{_floored(far) / _floored(short):.2f}x; {count(far.rewritten)} B rewritten",
                "-",
            )
    restores = [cost for key, cost in costs.items() if key.startswith("restore:")]
    table.add(
        "restore (manager + Agent(...)) in 1 command when the window is resident",
        "; ".join(f"{cost.key.split(':')[1]} stored: {_commands(cost.traffic)}" for cost in restores),
        _yes(all(cost.traffic.count == 1 for cost in restores)),
    )
    mongo_windows = [r for r in results.window_restores if r.backend == "mongodb"]
    if mongo_windows:
        table.add(
            f"restore of each window of a {mongo_windows[0].stored:,}-message history: at most 2 commands",
            "; ".join(f"window {r.window}: {r.commands}" for r in mongo_windows),
            _yes(all(r.commands <= 2 for r in mongo_windows)),
        )
    slide = costs.get("turn:slide")
    if slide is not None:
        table.add(
            f"a turn once the window of {WINDOW} is full: 2 commands",
            _commands(slide.traffic),
            _yes(slide.traffic.count == 2),
        )
    cold = results.cold_start
    if cold is not None:
        table.add(
            "a fresh process: the first manager costs at most one round trip more than a warm one",
            f"first: {', '.join(cold.cold_commands)} ({ms(cold.cold_ms)} ms, connecting included);"
            f" next: {', '.join(cold.warm_commands)} ({ms(cold.warm_ms)} ms)",
            _yes(len(cold.cold_commands) <= len(cold.warm_commands) + 1),
        )
    table.notes += [
        "times are medians of one run, taking turns; commands are exact and asserted in"
        " tests/integration/test_cost_targets.py and test_restore_cost.py.",
        "the cold start runs in fresh Python processes (median of several); its time includes opening the"
        " client's first connection, which a warm manager reuses.",
    ]
    tables.append(table)

    if results.history:
        history = Table(
            f"Append vs history length (window of {HISTORY_WINDOW}): ours, FileSessionManager, S3SessionManager on moto",
            [
                "backend",
                "history",
                "stored",
                "commands (typical append)",
                "median ms",
                "x pymongo floor",
                "x floor, vs 10 stored",
                "bytes rewritten",
            ],
        )
        for point in sorted(results.history, key=lambda p: (p.kind, p.backend, p.stored)):
            first = _point(results, point.backend, point.kind, min(p.stored for p in results.history))
            history.add(
                point.backend,
                point.kind,
                count(point.stored),
                (_commands(point.traffic) + (f"; {point.moves} others" if point.moves else ""))
                if point.traffic is not None
                else "-",
                ms(point.timing.median),
                ratio(_floored(point)),
                ratio(_floored(point) / _floored(first)) if first is not None else "-",
                count(point.rewritten),
            )
        history.notes += [
            "MongoDB: what one append makes the server rewrite is the session document (bytes rewritten: its size"
            " after the appends). The document keeps the agent's window and fewer than MOVE_BATCH (16) messages"
            " the window dropped; every 16th append moves those out. 'n others': timed appends that did more than"
            " the typical one (moved trimmed messages out, or stored an image's chunks first).",
            "'x floor, vs 10 stored' compares each append's ratio to the pymongo floor timed with it: this"
            " server's per-write cost creeps up over a run (it keeps every retryable write's reply), floor included.",
            "FileSessionManager and S3SessionManager write one file or object per message: what they rewrite is"
            " that message (images are base64 in JSON there).",
            f"images: every {HISTORY_IMAGE_EVERY}th message carries a {HISTORY_IMAGE_BYTES // 1024} KiB image, above"
            " binary_offload_bytes (64 KiB), so the session document holds a reference to it.",
        ]
        tables.append(history)
    if results.window_restores:
        windows = Table(
            "Restore vs window (manager + Agent(...))",
            ["backend", "stored", "window", "commands / files / objects", "bytes received", "median ms"],
        )
        for restore in sorted(results.window_restores, key=lambda r: (r.backend, r.window)):
            windows.add(
                restore.backend,
                count(restore.stored),
                count(restore.window),
                count(restore.commands),
                count(restore.received),
                ms(restore.timing.median),
            )
        windows.notes.append(
            "MongoDB: one aggregate returns the session, the agent and its window while the window is in the"
            " session document; a window reaching moved messages reads them with one more aggregate (the"
            " window's part of each bucket). Files and objects: what Strands' managers read, one per message."
        )
        tables.append(windows)
    return tables


def markdown(facts: dict[str, str], tables: list[Table], quick: bool, charts: list[str] | None = None) -> str:
    lines = [
        "# Benchmarks",
        "",
        "Produced by `make bench` (`python -m benchmarks`): a throwaway SecantusDB server, an offline model, and",
        "Strands' own `FileSessionManager` on local disk as a second baseline. Do not edit by hand; run it again.",
        "",
    ]
    if quick:
        lines += ["> **Quick run** (`--quick`): few repetitions, times are rough.", ""]
    lines += ["## Measured on", ""]
    lines += [f"- **{name}**: {value}" for name, value in facts.items()]
    lines += [
        "",
        "## How to read these numbers",
        "",
        "- Commands and bytes sent are exact and the same on any machine: they are what the library sends. Bytes",
        "  received also hold each reply's envelope, which depends a little on the server (here ~160 B per write).",
        "- Times are medians on the machine above, each operation taking turns with its baselines, and only mean",
        "  something next to each other. The server is SecantusDB, a MongoDB wire-protocol server written in",
        "  Python for development and tests: its absolute times say little about MongoDB's. Its update time grows",
        "  with the size of the document, which is why appending to a 5,000-message conversation is slower there",
        "  although the command is the same size, and why restoring from a 2,000-message document takes longer",
        "  than from a short one although the same bytes come back.",
        "- 'Strands alone' is the framework's own cost for the same work with no session manager at all.",
        "",
        "## Results",
    ]
    if charts:
        lines += ["", "### Charts", ""]
        lines += [f"![{CHARTS[name]}]({name})" for name in charts]
    for table in tables:
        lines += ["", table.markdown()]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())

"""Measuring tools: MongoDB traffic from pymongo's monitoring events, wall-clock medians, machine facts."""

from __future__ import annotations

import collections
import datetime
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import bson
from pymongo import MongoClient, monitoring


@dataclass(frozen=True)
class Traffic:
    """What went over the wire between two calls of :meth:`Recorder.take`.

    Attributes:
        commands: Command names, in order.
        sizes: BSON bytes of each command (``CommandStartedEvent.command``, with any document sequence).
        received: BSON bytes of the replies (``CommandSucceededEvent.reply``).
        connections: Connections opened.
    """

    commands: tuple[str, ...] = ()
    sizes: tuple[int, ...] = ()
    received: int = 0
    connections: int = 0

    @property
    def count(self) -> int:
        """Number of commands."""
        return len(self.commands)

    @property
    def sent(self) -> int:
        """BSON bytes of all the commands."""
        return sum(self.sizes)

    def __add__(self, other: Traffic) -> Traffic:
        return Traffic(
            self.commands + other.commands,
            self.sizes + other.sizes,
            self.received + other.received,
            self.connections + other.connections,
        )


class Recorder(monitoring.CommandListener, monitoring.ConnectionPoolListener):
    """Records commands, replies and new connections of every client it is given to.

    Events only keep references; sizes are computed in :meth:`take`, outside the timed code.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._commands: list[tuple[str, Any]] = []
        self._replies: list[Any] = []
        self._connections = 0

    def take(self) -> Traffic:
        """Return what was recorded since the last call, and forget it."""
        with self._lock:
            commands, self._commands = self._commands, []
            replies, self._replies = self._replies, []
            connections, self._connections = self._connections, 0
        return Traffic(
            tuple(name for name, _ in commands),
            tuple(len(bson.encode(command)) for _, command in commands),
            sum(len(bson.encode(reply)) for reply in replies),
            connections,
        )

    # CommandListener
    def started(self, event: monitoring.CommandStartedEvent) -> None:
        with self._lock:
            self._commands.append((event.command_name, event.command))

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        with self._lock:
            self._replies.append(event.reply)

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        pass

    # ConnectionPoolListener
    def connection_created(self, event: monitoring.ConnectionCreatedEvent) -> None:
        with self._lock:
            self._connections += 1

    def pool_created(self, event: Any) -> None:
        pass

    def pool_ready(self, event: Any) -> None:
        pass

    def pool_cleared(self, event: Any) -> None:
        pass

    def pool_closed(self, event: Any) -> None:
        pass

    def connection_ready(self, event: Any) -> None:
        pass

    def connection_closed(self, event: Any) -> None:
        pass

    def connection_check_out_started(self, event: Any) -> None:
        pass

    def connection_check_out_failed(self, event: Any) -> None:
        pass

    def connection_checked_out(self, event: Any) -> None:
        pass

    def connection_checked_in(self, event: Any) -> None:
        pass


@dataclass(frozen=True)
class Timing:
    """Wall-clock samples of one operation, in milliseconds."""

    samples: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def p95(self) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


@dataclass
class Contestant:
    """One way of doing an operation, timed by :func:`interleave`.

    Attributes:
        action: The timed call; it receives what ``prepare`` returned.
        prepare: Untimed set-up before each call (given the repetition index, negative in warm-up).
        capture: Called before (result dropped) and after each call; what it returns after the last
            call is reported, e.g. :meth:`Recorder.take` for the traffic of one call.
    """

    action: Callable[[Any], Any]
    prepare: Callable[[int], Any] | None = None
    capture: Callable[[], Any] | None = None


class Typical:
    """A ``capture`` for operations that sometimes do more (an append that moves old messages out):
    it keeps each call's traffic and reports the most common one, and how often another occurred."""

    def __init__(self, take: Callable[[], Traffic]) -> None:
        self.take = take
        self.calls: list[Traffic] = []
        self._after = False

    def __call__(self) -> Traffic:
        traffic = self.take()
        if self._after:
            self.calls.append(traffic)
        self._after = not self._after
        return self.typical

    @property
    def typical(self) -> Traffic:
        if not self.calls:
            return Traffic()
        common = collections.Counter(call.commands for call in self.calls).most_common(1)[0][0]
        return next(call for call in self.calls if call.commands == common)

    @property
    def others(self) -> int:
        """Calls whose commands differed from the typical ones."""
        typical = self.typical.commands
        return sum(1 for call in self.calls if call.commands != typical)


def interleave(repeats: int, contestants: Sequence[Contestant], warmup: int = 1) -> list[tuple[Timing, Any]]:
    """Time every contestant ``repeats`` times, taking turns, so that a busy moment hits them all alike.

    Returns:
        For each contestant, its timings and what its ``capture`` returned after its last call
        (operations here are deterministic: every call sends the same commands).
    """
    samples: list[list[float]] = [[] for _ in contestants]
    captured: list[Any] = [None for _ in contestants]
    for index in range(-warmup, repeats):
        for position, contestant in enumerate(contestants):
            argument = contestant.prepare(index) if contestant.prepare is not None else None
            if contestant.capture is not None:
                contestant.capture()
            start = time.perf_counter()
            contestant.action(argument)
            elapsed = (time.perf_counter() - start) * 1000
            if contestant.capture is not None:
                captured[position] = contestant.capture()
            if index >= 0:
                samples[position].append(elapsed)
    return [(Timing(tuple(times)), last) for times, last in zip(samples, captured, strict=True)]


def machine_facts(client: MongoClient[dict[str, Any]]) -> dict[str, str]:
    """Where the numbers were measured: machine, Python, libraries, server."""
    build = client.admin.command("buildInfo")
    hello = client.admin.command("hello")
    if "secantusVersion" in build:
        server = f"SecantusDB {build['secantusVersion']} (reports MongoDB {build.get('version')})"
    else:
        server = f"MongoDB {build.get('version')}"
    if hello.get("setName"):
        server += f", replica set {hello['setName']!r}"
    elif hello.get("msg") == "isdbgrid":
        server += ", mongos"
    return {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{_cpu_model()}, {os.cpu_count()} CPUs (nproc), {_memory()}",
        "os": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "python": f"{platform.python_implementation()} {sys.version.split()[0]}",
        "libraries": ", ".join(
            f"{name} {_version(name)}" for name in ("mongodb-session-manager", "strands-agents", "pymongo")
        ),
        "server": server,
    }


def _version(distribution: str) -> str:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return "?"


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory() -> str:
    try:
        with open("/proc/meminfo", encoding="utf-8") as meminfo:
            for line in meminfo:
                if line.startswith("MemTotal:"):
                    return f"{int(line.split()[1]) / 1024 / 1024:.0f} GB RAM"
    except OSError:
        pass
    return "RAM unknown"

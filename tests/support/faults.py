"""Helpers for fault tests on a SecantusDB started with ``--enable-test-commands``: arming the
``failCommand`` fail point for one client, and recording what that client's writes did."""

from __future__ import annotations

from typing import Any

from pymongo import MongoClient, monitoring

#: Server error codes of a failover: the node is no longer primary, or stepped down mid-write.
NOT_WRITABLE_PRIMARY = 10107
PRIMARY_STEPPED_DOWN = 189


class WriteLog(monitoring.CommandListener):
    """The ``update`` commands a client sends: their ``txnNumber`` and whether a reply came back."""

    def __init__(self, command: str = "update") -> None:
        self.command = command
        self.attempts: list[dict[str, Any]] = []

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == self.command:
            self.attempts.append({"txnNumber": event.command.get("txnNumber"), "outcome": None})

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None:
        if event.command_name == self.command and self.attempts:
            self.attempts[-1]["outcome"] = "reply"

    def failed(self, event: monitoring.CommandFailedEvent) -> None:
        if event.command_name == self.command and self.attempts:
            self.attempts[-1]["outcome"] = "failed"


def fail_next(
    admin: MongoClient[dict[str, Any]], app_name: str, data: dict[str, Any], times: int = 1, command: str = "update"
) -> None:
    """Arm ``failCommand`` on the next ``times`` ``command``s of the client named ``app_name`` only."""
    admin.admin.command(
        "configureFailPoint",
        "failCommand",
        mode={"times": times},
        data={"failCommands": [command], "appName": app_name, **data},
    )


def fail_point_off(admin: MongoClient[dict[str, Any]]) -> None:
    admin.admin.command("configureFailPoint", "failCommand", mode="off")

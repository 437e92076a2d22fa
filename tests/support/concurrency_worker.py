"""Processes for the reliability tests: writers that race each other, and restores in a fresh process.

The tests in ``tests/integration/test_reliability_concurrency.py`` and
``tests/integration/test_reliability_faults.py`` need more than threads: two managers in two
*processes*, each with its own ``MongoClient``, appending to the same session at the same moment,
and a restore that has nothing but storage to go on. Importing Strands costs seconds, so
:class:`WorkerServer` starts ``python -m tests.support.concurrency_worker --serve`` once, and that
process forks one child per job. A batch of jobs is forked together, so racing writers really run
at the same time; each child builds its own client after the fork.

Run from the repository root::

    python -m tests.support.concurrency_worker JOB.json   # one job in this process
    python -m tests.support.concurrency_worker --serve    # fork a child per job, a batch per stdin line

A job is a JSON file with ``"job"`` (``"converse"`` or ``"restore"``), an ``"output"`` file that
receives the result as JSON and a ``"log"`` file for the child's stdout and stderr.

``converse``
    Open a ``MongoDBSessionManager`` and an ``Agent`` (an :class:`~tests.support.scripted_model.EchoModel`,
    no network) for ``session_id``/``agent_id``, wait at a file barrier in ``barrier_dir`` until all
    ``parties`` workers have loaded the session, then run ``turns`` turns (prompt
    ``"<name> turn <n>"``). On a ``SessionConflictError`` (found through Strands' ``EventLoopException``
    when it was the answer that lost the race) the worker records it and, if
    ``retry_on_conflict``, follows the documented recipe: close the manager, open a new one (which
    reloads the stored conversation) and retry the turn; otherwise it stops. With ``metadata`` it
    also writes a metadata key and a feedback entry per turn.

``restore``
    Open a manager for ``session_id`` in this fresh process, restore an ``Agent`` for each of
    ``agent_ids`` and dump its messages, plus the stored entries as ``list_messages`` returns them.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from strands import Agent
from strands.agent.conversation_manager import NullConversationManager

from mongodb_session_manager import MongoDBSessionManager, SessionConflictError
from tests.support.restore_worker import to_jsonable
from tests.support.scripted_model import EchoModel, ScriptedModel

__all__ = ["WorkerServer", "conflict_in", "converse", "prompt", "restore", "run_job"]

REPO_ROOT = Path(__file__).resolve().parents[2]

#: A child that runs longer than this is killed by SIGALRM instead of hanging the tests.
CHILD_TIMEOUT_SECONDS = 120
#: How long a worker waits at the barrier for the others.
BARRIER_TIMEOUT_SECONDS = 60
#: Reloads a worker may do for one turn before giving up (only reached if something is very wrong).
MAX_ATTEMPTS_PER_TURN = 200


def prompt(name: str, turn: int) -> str:
    """The user text of ``name``'s turn ``turn``; the EchoModel answers ``"echo: " + prompt``."""
    return f"{name} turn {turn}"


def conflict_in(error: BaseException) -> SessionConflictError | None:
    """The ``SessionConflictError`` behind ``error``, or ``None``.

    A conflict on the user's message reaches the caller of ``agent(...)`` as it is; one on the
    model's answer is wrapped by Strands in an ``EventLoopException`` (``raise ... from``).
    """
    current: BaseException | None = error
    while current is not None:
        if isinstance(current, SessionConflictError):
            return current
        current = current.__cause__
    return None


def _open(job: Mapping[str, Any]) -> tuple[MongoDBSessionManager, Agent]:
    manager = MongoDBSessionManager(
        job["session_id"], connection_string=job["mongodb_uri"], database_name=job["database_name"]
    )
    agent = Agent(
        model=EchoModel(),
        agent_id=job["agent_id"],
        session_manager=manager,
        conversation_manager=NullConversationManager(),
        callback_handler=None,
    )
    return manager, agent


def _wait_at_barrier(directory: Path, name: str, parties: int) -> None:
    """Announce ``name`` is ready, then wait until ``parties`` workers are."""
    (directory / f"ready-{name}").touch()
    deadline = time.monotonic() + BARRIER_TIMEOUT_SECONDS
    while len(list(directory.glob("ready-*"))) < parties:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name}: the other workers never reached the barrier in {directory}")
        time.sleep(0.001)


def converse(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run the ``converse`` job (see the module docstring) and return what happened."""
    name = job["name"]
    result: dict[str, Any] = {"name": name, "pid": os.getpid(), "completed": [], "conflicts": [], "reloads": 0}
    manager, agent = _open(job)
    result["loaded_messages"] = len(agent.messages)
    _wait_at_barrier(Path(job["barrier_dir"]), name, int(job["parties"]))
    try:
        for turn in range(int(job["turns"])):
            text = prompt(name, turn)
            for _attempt in range(MAX_ATTEMPTS_PER_TURN):
                try:
                    agent(text)
                except Exception as e:
                    conflict = conflict_in(e)
                    if conflict is None:
                        raise
                    result["conflicts"].append({"turn": turn, "error": str(conflict), "raised": type(e).__name__})
                    if not job.get("retry_on_conflict"):
                        return result
                    # The recipe: a new manager reloads what is stored; then retry the turn.
                    manager.close()
                    manager, agent = _open(job)
                    result["reloads"] += 1
                    continue
                result["completed"].append(text)
                break
            else:
                raise RuntimeError(f"{name}: turn {turn} still conflicted after {MAX_ATTEMPTS_PER_TURN} attempts")
            if job.get("metadata"):
                manager.update_metadata({f"{name}-{turn}": turn})
                manager.add_feedback({"rating": "up", "comment": text})
    finally:
        manager.close()
    return result


def restore(job: Mapping[str, Any]) -> dict[str, Any]:
    """Run the ``restore`` job: rebuild agents from storage alone and dump what came back."""
    manager = MongoDBSessionManager(
        job["session_id"], connection_string=job["mongodb_uri"], database_name=job["database_name"]
    )
    try:
        if manager._is_new_session:
            raise LookupError(f"session {job['session_id']!r} was not found: nothing to restore")
        agents: dict[str, Any] = {}
        for agent_id in job["agent_ids"]:
            agent = Agent(
                model=ScriptedModel([]),  # never called: a restore needs no model
                agent_id=agent_id,
                session_manager=manager,
                conversation_manager=NullConversationManager(),
                callback_handler=None,
            )
            stored = manager.mongodb_repository.list_messages(job["session_id"], agent_id)
            agents[agent_id] = {
                "messages": agent.messages,
                "stored": [{"message_id": entry.message_id, "message": entry.message} for entry in stored],
            }
        return {"pid": os.getpid(), "agents": agents}
    finally:
        manager.close()


_JOBS = {"converse": converse, "restore": restore}


def run_job(job_file: str) -> None:
    """Run the job described in ``job_file`` and write its result to the job's ``output`` file."""
    job = json.loads(Path(job_file).read_text(encoding="utf-8"))
    result = _JOBS[job["job"]](job)
    Path(job["output"]).write_text(json.dumps(to_jsonable(result), ensure_ascii=False), encoding="utf-8")


def serve() -> int:
    """Fork one child per job; one batch of job files (space-separated) per stdin line.

    All children of a batch are forked before any is waited for, so they run concurrently. When the
    whole batch has ended, one line ``"<pid>:<exit code> ..."`` (in the order of the job files) is
    written to stdout. Ends at end of input. This process never opens a client itself, so every
    child starts from nothing but the imports.
    """
    for line in sys.stdin:
        job_files = line.split()
        if not job_files:
            continue
        sys.stdout.flush()
        sys.stderr.flush()
        children = []
        for job_file in job_files:
            log_file = json.loads(Path(job_file).read_text(encoding="utf-8"))["log"]
            pid = os.fork()
            if pid == 0:  # the child: never returns
                code = 1
                try:
                    log = os.open(log_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                    os.dup2(log, 1)
                    os.dup2(log, 2)
                    signal.alarm(CHILD_TIMEOUT_SECONDS)
                    run_job(job_file)
                    code = 0
                except BaseException:
                    traceback.print_exc()
                finally:
                    sys.stdout.flush()
                    sys.stderr.flush()
                    os._exit(code)
            children.append(pid)
        codes = []
        for pid in children:
            _, status = os.waitpid(pid, 0)
            codes.append(f"{pid}:{os.waitstatus_to_exitcode(status)}")
        sys.stdout.write(" ".join(codes) + "\n")
        sys.stdout.flush()
    return 0


class WorkerServer:
    """The test side of :func:`serve`: runs batches of jobs, each job in a process of its own.

    Args:
        directory: Where job, output, log and barrier files are written.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._count = 0
        self._log: IO[str] = (directory / "serve.log").open("w", encoding="utf-8")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "tests.support.concurrency_worker", "--serve"],
            cwd=REPO_ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._log,
            text=True,
        )

    def run(self, jobs: Sequence[Mapping[str, Any]], timeout: float = 150) -> list[dict[str, Any]]:
        """Run ``jobs`` concurrently, one process each, and return their results in order.

        Raises:
            AssertionError: A job failed (its log is in the message) or the batch did not end in time.
        """
        assert self.process.stdin is not None and self.process.stdout is not None
        files, job_files = [], []
        for job in jobs:
            self._count += 1
            stem = self.directory / f"job-{self._count}"
            full = {**job, "output": f"{stem}.out.json", "log": f"{stem}.log"}
            Path(f"{stem}.json").write_text(json.dumps(full), encoding="utf-8")
            files.append(full)
            job_files.append(f"{stem}.json")
        self.process.stdin.write(" ".join(job_files) + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        assert ready, f"the worker batch did not finish within {timeout:.0f}s"
        reply = self.process.stdout.readline().split()
        assert len(reply) == len(files), f"the worker server died: {(self.directory / 'serve.log').read_text()}"
        results = []
        for job, status in zip(files, reply, strict=True):
            pid, code = (int(part) for part in status.split(":"))
            log = Path(job["log"]).read_text(encoding="utf-8", errors="replace")
            assert code == 0, f"worker {pid} ({job['job']}) exited with {code}:\n{log}"
            results.append(json.loads(Path(job["output"]).read_text(encoding="utf-8")))
        return results

    def close(self) -> None:
        """End the server (it exits at end of input) and release its pipes."""
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=30)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self._log.close()


def main(argv: list[str]) -> int:
    """``JOB.json``: run one job in this process; ``--serve``: see :func:`serve`."""
    if argv == ["--serve"]:
        return serve()
    if len(argv) != 1:
        print("usage: python -m tests.support.concurrency_worker (JOB.json | --serve)", file=sys.stderr)
        return 2
    run_job(argv[0])
    return 0


if __name__ == "__main__":
    from tests.support.command_audit import install_in_worker

    install_in_worker()
    sys.exit(main(sys.argv[1:]))

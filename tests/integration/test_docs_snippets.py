"""Every ```python block of README.md and docs/*.md runs as written, against the test server.

Each block runs on its own, as a script would (a fresh namespace holding only ``__name__ ==
"__main__"``), with nothing injected: it imports and defines every name it uses. Blocks are never
chained. These are the only substitutions, and they change where a block's data goes, never what
its code says:

* **Server.** The examples' connection string, ``mongodb://localhost:27017``, becomes the test
  server's ``MONGODB_URI``.
* **Database.** The database a block names (``database_name="chat"``) becomes one unique to the test,
  dropped afterwards. Every block that connects must name its database (checked below), so no block
  writes to the library's default database.
* **Key vault.** A key vault namespace a block names in that database (``key_vault_namespace="chat.x"``)
  moves to the test's database too.
* **Model.** ``Agent(...)`` without a ``model`` builds Strands' default model, on Amazon Bedrock, which
  needs AWS credentials. Here Strands' default is the offline demo model of the examples
  (``OfflineDemoModel`` of ``examples/_local.py``, which is what ``demo_model()`` returns without
  AWS): the test patches the ``BedrockModel`` name ``strands.Agent`` builds its default from. A block
  that names a Bedrock model id fails instead of calling AWS.
* **AWS.** A block that names an SNS topic ARN or an SQS queue URL runs inside moto's ``mock_aws()``
  (``moto[sns,sqs]`` is a dev dependency), with dummy credentials and those topics and queues created
  first, so the hooks it builds deliver to a fake AWS. Every hook the block leaves in its namespace
  is then flushed and must have delivered everything (nothing failed, nothing dropped). Fake boto3
  clients are never injected: no block shows how to inject one, and moto exercises the clients the
  hooks build themselves.
* **pytest examples.** A block that defines a pytest test (``def test_...``) has it called as pytest
  would, with this test's ``monkeypatch`` (the only fixture such a test may ask for).

Tracebacks point at the Markdown file's own lines. A block that is not meant to run (pseudo-code, a
shell session, output) must not be marked ``python``: use ``text``, ``bash``, ``json``, ...
"""

from __future__ import annotations

import importlib
import inspect
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from moto import mock_aws

from mongodb_session_manager import (
    FeedbackSNSHook,
    MetadataSQSHook,
    MongoDBConnectionPool,
    MongoDBSessionManager,
    MongoDBSessionManagerFactory,
    close_global_factory,
)

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
from _local import OfflineDemoModel  # noqa: E402  (examples/ is not a package)

DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# At least this many blocks per file, so a change in the parsing (or a renamed fence) cannot
# silently test nothing.
MINIMUM_BLOCKS = {"README.md": 11, "docs/aws-hooks.md": 11, "docs/guarantees.md": 1}
EXAMPLE_URI = "mongodb://localhost:27017"
DATABASE = re.compile(r'database_name="([^"]*)"')
KEY_VAULT = re.compile(r'key_vault_namespace="[^".]*\.')
SNS_TOPIC = re.compile(r"arn:aws:sns:([a-z0-9-]+):(\d{12}):([A-Za-z0-9_-]+)")
SQS_QUEUE = re.compile(r"https://sqs\.([a-z0-9-]+)\.amazonaws\.com/(\d{12})/([A-Za-z0-9_-]+)")


@dataclass(frozen=True)
class Block:
    """One ```python block: its file, the line of its opening fence, and its code."""

    path: Path
    line: int
    code: str

    @property
    def name(self) -> str:
        return f"{self.path.relative_to(ROOT).as_posix()}:{self.line}"

    def compiled(self, code: str) -> Any:
        # Leading newlines keep line numbers equal to the Markdown file's, so tracebacks show its lines.
        return compile("\n" * self.line + code, str(self.path), "exec")


def python_blocks(path: Path) -> list[Block]:
    """The ```python blocks of a Markdown file, in order."""
    blocks: list[Block] = []
    lines = path.read_text(encoding="utf-8").splitlines()
    start: int | None = None
    for number, line in enumerate(lines, 1):
        if start is None and line.strip() == "```python":
            start = number
        elif start is not None and line.strip() == "```":
            blocks.append(Block(path, start, "\n".join(lines[start : number - 1]) + "\n"))
            start = None
    assert start is None, f"{path.name}:{start}: a ```python block is never closed"
    return blocks


BLOCKS = [block for path in DOCUMENTS for block in python_blocks(path)]


def test_every_document_has_its_python_blocks() -> None:
    counts = {name: sum(block.name.startswith(f"{name}:") for block in BLOCKS) for name in MINIMUM_BLOCKS}
    assert all(counts[name] >= minimum for name, minimum in MINIMUM_BLOCKS.items()), counts


def test_no_python_block_hides_behind_another_fence() -> None:
    """A ```py or ```python3 block would escape this test: the documents use ```python only."""
    for path in DOCUMENTS:
        fences = re.findall(r"^```(py\w*)\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
        assert set(fences) <= {"python"}, (path.name, fences)


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_every_block_that_connects_names_its_database(block: Block) -> None:
    uris = re.findall(r"mongodb(?:\+srv)?://[^\"'\s]*", block.code)
    assert set(uris) <= {EXAMPLE_URI}, f"{block.name}: use {EXAMPLE_URI!r} as the example connection string"
    if uris:
        assert len(set(DATABASE.findall(block.code))) == 1, f"{block.name}: name the database it writes to"


def _offline_default_model(*args: Any, **kwargs: Any) -> OfflineDemoModel:
    """Stands in for ``BedrockModel`` when ``strands.Agent`` builds its default model."""
    if args or kwargs:
        raise AssertionError(f"a documented block names a Bedrock model ({args}, {kwargs}); it would need AWS")
    return OfflineDemoModel()


@pytest.fixture
def offline_default_model(monkeypatch: pytest.MonkeyPatch) -> None:
    # raising=True (the default): if Strands stops building its default from this name, we hear of it.
    monkeypatch.setattr(importlib.import_module("strands.agent.agent"), "BedrockModel", _offline_default_model)


def _aws_resources(code: str) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    return sorted(set(SNS_TOPIC.findall(code))), sorted(set(SQS_QUEUE.findall(code)))


@pytest.fixture
def fake_aws(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto with dummy credentials (no network, no local AWS configuration)."""
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws() as mock:
        yield mock


def _create_aws_resources(code: str) -> None:
    topics, queues = _aws_resources(code)
    for region, _account, name in topics:
        arn = boto3.client("sns", region_name=region).create_topic(Name=name)["TopicArn"]
        assert arn in code, f"moto created {arn}: the block's ARN names another account"
    for region, _account, name in queues:
        url = boto3.client("sqs", region_name=region).create_queue(QueueName=name)["QueueUrl"]
        assert url in code, f"moto created {url}: the block's queue URL names another account"


def _run_tests_defined_by(namespace: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in list(namespace.items()):
        if name.startswith("test_") and inspect.isfunction(value):
            fixtures = set(inspect.signature(value).parameters)
            assert fixtures <= {"monkeypatch"}, f"{name} asks for fixtures this test does not provide: {fixtures}"
            value(**({"monkeypatch": monkeypatch} if fixtures else {}))


def _hooks(namespace: dict[str, Any]) -> list[FeedbackSNSHook | MetadataSQSHook]:
    return [value for value in namespace.values() if isinstance(value, FeedbackSNSHook | MetadataSQSHook)]


def _check_deliveries(namespace: dict[str, Any]) -> None:
    for hook in _hooks(namespace):
        assert hook.flush(timeout=10), f"{hook!r} still has messages pending"
        stats = hook.stats()
        assert (stats.failed, stats.dropped) == (0, 0), f"{hook!r} did not deliver everything: {stats}"


def _close_what_the_block_left(namespace: dict[str, Any]) -> None:
    """Close the hooks, managers and factories the block kept, as the end of a script would."""
    for value in namespace.values():
        if isinstance(value, FeedbackSNSHook | MetadataSQSHook):
            value.close(timeout=5)
        elif isinstance(value, MongoDBSessionManager | MongoDBSessionManagerFactory):
            value.close()


@pytest.mark.parametrize("block", BLOCKS, ids=[block.name for block in BLOCKS])
def test_block_runs_as_written(
    block: Block,
    mongodb_uri: str,
    database_name: str,
    offline_default_model: None,
    monkeypatch: pytest.MonkeyPatch,
    request: pytest.FixtureRequest,
) -> None:
    code = block.code.replace(EXAMPLE_URI, mongodb_uri)
    code = DATABASE.sub(f'database_name="{database_name}"', code)
    code = KEY_VAULT.sub(f'key_vault_namespace="{database_name}.', code)
    uses_aws = any(_aws_resources(block.code))
    if uses_aws:
        request.getfixturevalue("fake_aws")
        _create_aws_resources(block.code)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    try:
        exec(block.compiled(code), namespace)
        _run_tests_defined_by(namespace, monkeypatch)
        if uses_aws:
            _check_deliveries(namespace)
    finally:
        try:
            _close_what_the_block_left(namespace)
        finally:
            close_global_factory()
            MongoDBConnectionPool.close()

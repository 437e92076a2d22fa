"""Pure: what the command line prints for people (tables, sizes, dates, a conversation) and for scripts.

No I/O here. Everything printed from stored data goes through :func:`printable`: session ids,
metadata and message text are user data, and control characters in them (a terminal escape
sequence, a bidirectional override) are shown as escapes instead of reaching the terminal.
"""

from __future__ import annotations

import json
import math
import unicodedata
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from .._overflow import BlobRef, is_reference
from ._values import to_json

__all__ = [
    "binary_size",
    "compact",
    "content_summary",
    "message_lines",
    "metrics_line",
    "printable",
    "size",
    "table",
    "when",
]

_TEXT_LIMIT = 2000
_INLINE_LIMIT = 200


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with control and format characters escaped (``\\x1b`` for ESC), safe for a terminal.

    Args:
        keep_newlines: Keep ``\\n`` and ``\\t`` (message text); otherwise they are escaped too.
    """
    out = []
    for char in text:
        if keep_newlines and char in "\n\t":
            out.append(char)
        elif unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp", "Cs"):
            code = ord(char)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(char)
    return "".join(out)


def size(count: int | None) -> str:
    """A byte count for people: ``512 B``, ``3.1 KiB``, ``12.0 MiB``."""
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{int(value)} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"  # pragma: no cover (the loop returns)


def when(value: Any) -> str:
    """A stored time (a BSON date, or one of Strands' ISO strings) as ``2026-11-27 10:00:00 UTC``."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return printable(value)
    if not isinstance(value, datetime):
        return "-"
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    text: str = value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return text


def binary_size(value: Any) -> int | None:
    """The length of a binary value, offloaded (a reference: its recorded length) or not."""
    if is_reference(value):
        try:
            return BlobRef.from_binary(value).length
        except Exception:  # a damaged reference: verify reports it
            return None
    if isinstance(value, bytes | bytearray):
        return len(value)
    return None


def _display(value: Any) -> Any:
    """A JSON-able stand-in for a value, for one-line display (binaries as their size)."""
    if isinstance(value, Mapping):
        return {str(key): _display(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_display(item) for item in value]
    length = binary_size(value)
    if length is not None:
        return f"<{length} bytes>"
    if isinstance(value, datetime):
        return when(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def compact(value: Any, limit: int = _INLINE_LIMIT) -> str:
    """One line of JSON for a value (metadata, tool input), cut at ``limit`` characters."""
    text = printable(json.dumps(_display(value), ensure_ascii=False, separators=(", ", ": ")))
    return text if len(text) <= limit else text[: limit - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    """Rows as aligned columns (the last column is not padded)."""
    rows = [list(headers), *[list(row) for row in rows]]
    widths = [max(len(row[column]) for row in rows) for column in range(len(headers) - 1)]
    return [
        "  ".join([*(cell.ljust(width) for cell, width in zip(row, widths, strict=False)), row[-1]]) for row in rows
    ]


# ------------------------------------------------------------------------------------ a conversation


def _text(value: Any, limit: int = _TEXT_LIMIT) -> str:
    text = printable(str(value), keep_newlines=True)
    return text if len(text) <= limit else text[:limit] + f"... ({len(text) - limit} more characters)"


def _media(kind: str, block: Any) -> str:
    if not isinstance(block, Mapping):
        return f"[{kind}]"
    source = block.get("source")
    length = binary_size(source.get("bytes")) if isinstance(source, Mapping) else None
    details = [printable(str(block.get("format", "?")))]
    if block.get("name"):
        details.append(f'"{printable(str(block["name"]))}"')
    if length is not None:
        details.append(f"{length:,} bytes")
    elif isinstance(source, Mapping) and source:
        details.append(f"from {printable(str(next(iter(source))))}")
    return f"[{kind}: {', '.join(details)}]"


def _tool_result_parts(result: Mapping[str, Any]) -> list[str]:
    parts = []
    for item in result.get("content") or []:
        if not isinstance(item, Mapping):
            continue
        if "text" in item:
            parts.append(_text(item["text"], _INLINE_LIMIT * 2))
        elif "json" in item:
            parts.append(compact(item["json"]))
        elif "image" in item or "document" in item or "video" in item:
            kind = next(name for name in ("image", "document", "video") if name in item)
            parts.append(_media(kind, item[kind]))
        else:
            parts.append(f"[{printable(next(iter(item), '?'))}]")
    return parts


def _block_lines(block: Any) -> list[str]:
    if not isinstance(block, Mapping) or not block:
        return ["[malformed block]"]
    if "text" in block:
        return _text(block["text"]).split("\n")
    if "toolUse" in block:
        use = block["toolUse"] if isinstance(block["toolUse"], Mapping) else {}
        name, tool_id = printable(str(use.get("name", "?"))), printable(str(use.get("toolUseId", "?")))
        return [f"tool call {name} ({tool_id}): {compact(use.get('input'))}"]
    if "toolResult" in block:
        result = block["toolResult"] if isinstance(block["toolResult"], Mapping) else {}
        tool_id, status = printable(str(result.get("toolUseId", "?"))), printable(str(result.get("status", "?")))
        parts = _tool_result_parts(result)
        head = f"tool result {tool_id} ({status}):"
        if len(parts) == 1 and "\n" not in parts[0]:
            return [f"{head} {parts[0]}"]
        return [head, *("  " + line for part in parts for line in part.split("\n"))]
    for kind in ("image", "document", "video"):
        if kind in block:
            return [_media(kind, block[kind])]
    if "reasoningContent" in block:
        reasoning = block["reasoningContent"] if isinstance(block["reasoningContent"], Mapping) else {}
        text = reasoning.get("reasoningText")
        if isinstance(text, Mapping) and "text" in text:
            return [f"(reasoning) {line}" for line in _text(text["text"]).split("\n")]
        return ["(reasoning, redacted)"]
    return [f"[{printable(str(next(iter(block))))}]"]


def message_lines(entry: Mapping[str, Any]) -> list[str]:
    """A stored message as a person reads it: a header line, then its content, then its metrics."""
    shown = entry.get("redact_message") or entry.get("message")
    message = shown if isinstance(shown, Mapping) else {}
    role = printable(str(message.get("role", "?")))
    header = f"#{entry.get('message_id', '?')}  {role}  {when(entry.get('created_at'))}"
    if entry.get("redact_message") is not None:
        header += "  (redacted)"
    lines = [header]
    content = message.get("content")
    for block in content if isinstance(content, list) else [content]:
        lines.extend("    " + line for line in _block_lines(block))
    metrics = entry.get("event_loop_metrics")
    if isinstance(metrics, Mapping):
        lines.append("    " + metrics_line(metrics))
    return lines


def metrics_line(metrics: Mapping[str, Any]) -> str:
    """One turn's ``event_loop_metrics`` in a line: tokens, model latency, cycles, tools."""
    usage = metrics.get("usage") if isinstance(metrics.get("usage"), Mapping) else {}
    parts = []
    if isinstance(usage, Mapping) and "totalTokens" in usage:
        parts.append(
            f"{usage.get('totalTokens')} tokens (in {usage.get('inputTokens', '?')}, out {usage.get('outputTokens', '?')})"
        )
    if "latency_ms" in metrics:
        parts.append(f"model latency {metrics['latency_ms']} ms")
    if "cycle_count" in metrics:
        parts.append(f"{metrics['cycle_count']} cycle{'s' if metrics['cycle_count'] != 1 else ''}")
    tools = metrics.get("tool_usage")
    if isinstance(tools, Mapping) and tools:
        named = [
            f"{printable(str(name))} x{usage_of.get('call_count', '?') if isinstance(usage_of, Mapping) else '?'}"
            for name, usage_of in tools.items()
        ]
        parts.append("tools: " + ", ".join(named))
    return "metrics: " + (", ".join(parts) if parts else "(none)")


def _block_summary(block: Any) -> dict[str, Any]:
    if not isinstance(block, Mapping) or not block:
        return {"type": "malformed"}
    if "text" in block:
        return {"type": "text", "text": block["text"]}
    if "toolUse" in block and isinstance(block["toolUse"], Mapping):
        use = block["toolUse"]
        return {
            "type": "tool_use",
            "tool_use_id": use.get("toolUseId"),
            "name": use.get("name"),
            "input": to_json(use.get("input")),
        }
    if "toolResult" in block and isinstance(block["toolResult"], Mapping):
        result = block["toolResult"]
        return {
            "type": "tool_result",
            "tool_use_id": result.get("toolUseId"),
            "status": result.get("status"),
            "content": [
                _block_summary(item)
                if not (isinstance(item, Mapping) and "json" in item)
                else {"type": "json", "json": to_json(item["json"])}
                for item in result.get("content") or []
            ],
        }
    for kind in ("image", "document", "video"):
        if kind in block and isinstance(block[kind], Mapping):
            source = block[kind].get("source")
            summary: dict[str, Any] = {"type": kind, "format": block[kind].get("format")}
            if block[kind].get("name") is not None:
                summary["name"] = block[kind]["name"]
            summary["bytes"] = binary_size(source.get("bytes")) if isinstance(source, Mapping) else None
            return summary
    if "reasoningContent" in block and isinstance(block["reasoningContent"], Mapping):
        text = block["reasoningContent"].get("reasoningText")
        return {"type": "reasoning", "text": text.get("text") if isinstance(text, Mapping) else None}
    return {"type": str(next(iter(block)))}


def content_summary(entry: Mapping[str, Any]) -> dict[str, Any]:
    """A stored message for ``show --json``: role, content blocks (binaries as their size), metrics."""
    shown = entry.get("redact_message") or entry.get("message")
    message = shown if isinstance(shown, Mapping) else {}
    content = message.get("content")
    summary: dict[str, Any] = {
        "message_id": entry.get("message_id"),
        "role": message.get("role"),
        "created_at": entry.get("created_at"),
        "updated_at": entry.get("updated_at"),
        "redacted": entry.get("redact_message") is not None,
        "content": [_block_summary(block) for block in (content if isinstance(content, list) else [content])],
    }
    if "event_loop_metrics" in entry:
        summary["metrics"] = to_json(entry["event_loop_metrics"])
    return summary

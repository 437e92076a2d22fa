"""The PNG charts of ``docs/benchmarks.md`` (matplotlib, Agg backend, no timestamps in the files)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._history import HistoryPoint, WindowRestore

#: The files written next to the report, and what each shows.
CHARTS = {
    "bench-history.png": "append cost and bytes rewritten vs history length",
    "bench-restore.png": "restore bytes received vs window",
    "bench-versus.png": "ours vs Strands' FileSessionManager and S3SessionManager",
}
_LABELS = {
    "mongodb": "MongoDBSessionManager",
    "file": "FileSessionManager (local disk)",
    "s3": "S3SessionManager (moto)",
}
_STYLE = {"mongodb": "C0", "file": "C1", "s3": "C2"}
# PNG text chunks matplotlib would add (its version): left out, so an unchanged chart is an unchanged file.
_METADATA: dict[str, Any] = {"Software": None}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "svg.hashsalt": "msm", "path.simplify": False})
    return plt


def _save(figure: Any, path: Path) -> None:
    figure.tight_layout()
    figure.savefig(path, dpi=110, metadata=_METADATA)


def history_chart(points: Sequence[HistoryPoint], path: Path) -> None:
    """Left: append median / pymongo floor vs history length; right: bytes rewritten per append."""
    plt = _pyplot()
    figure, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for backend in ("mongodb", "file", "s3"):
        for kind, style in (("text", "-o"), ("images", "--s")):
            line = sorted((p for p in points if p.backend == backend and p.kind == kind), key=lambda p: p.stored)
            if not line:
                continue
            label = f"{_LABELS[backend]}, {kind}"
            stored = [p.stored for p in line]
            left.plot(
                stored, [p.timing.median / p.floor.median for p in line], style, color=_STYLE[backend], label=label
            )
            right.plot(stored, [p.rewritten for p in line], style, color=_STYLE[backend], label=label)
    left.set(xscale="log", yscale="log", xlabel="messages stored", ylabel="append median / pymongo update_one")
    left.set_title("Append time vs history length")
    right.set(xscale="log", yscale="log", xlabel="messages stored", ylabel="bytes rewritten per append")
    right.set_title("Bytes the append makes the store rewrite")
    for axes in (left, right):
        axes.grid(True, which="both", alpha=0.3)
    left.legend(fontsize=7)
    _save(figure, path)
    plt.close(figure)


def restore_chart(restores: Sequence[WindowRestore], path: Path) -> None:
    """Bytes received by a restore vs the window it restores."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(6, 4))
    for backend in ("mongodb", "file", "s3"):
        line = sorted((r for r in restores if r.backend == backend), key=lambda r: r.window)
        if line:
            axes.plot(
                [r.window for r in line],
                [r.received for r in line],
                "-o",
                color=_STYLE[backend],
                label=_LABELS[backend],
            )
    stored = max((r.stored for r in restores), default=0)
    axes.set(xscale="log", yscale="log", xlabel="window (messages restored)", ylabel="bytes received")
    axes.set_title(f"Restore: bytes received vs window ({stored:,} stored)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7)
    _save(figure, path)
    plt.close(figure)


def versus_chart(groups: Sequence[tuple[str, dict[str, float]]], path: Path) -> None:
    """Grouped bars: median ms of each operation on each backend."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(8, 4))
    width = 0.27
    for offset, backend in enumerate(("mongodb", "file", "s3")):
        xs = [index + (offset - 1) * width for index in range(len(groups))]
        values = [values.get(backend, 0.0) for _, values in groups]
        bars = axes.bar(xs, values, width, color=_STYLE[backend], label=_LABELS[backend])
        axes.bar_label(bars, [f"{value:.3g}" for value in values], fontsize=7, padding=2)
    axes.set_xticks(range(len(groups)), [label for label, _ in groups], fontsize=8)
    axes.set_yscale("log")
    axes.set_ylabel("median ms, log scale (this machine, test server)")
    axes.set_title("Ours vs Strands' own session managers")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=7)
    _save(figure, path)
    plt.close(figure)

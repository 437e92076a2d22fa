"""Tables of results, rendered as aligned text for the terminal and as Markdown for ``docs/benchmarks.md``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field


@dataclass
class Table:
    """A titled table; cells are already formatted strings."""

    title: str
    columns: Sequence[str]
    rows: list[Sequence[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add(self, *cells: str) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"{self.title}: {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(cells)

    def text(self) -> str:
        widths = [max(len(row[i]) for row in [self.columns, *self.rows]) for i in range(len(self.columns))]

        def line(cells: Sequence[str]) -> str:
            first = cells[0].ljust(widths[0])
            rest = [cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
            return "  ".join([first, *rest]).rstrip()

        rule = "-" * len(line(self.columns))
        body = [self.title, rule, line(self.columns), rule, *(line(row) for row in self.rows), rule]
        body += [f"  {note}" for note in self.notes]
        return "\n".join(body)

    def markdown(self) -> str:
        header = "| " + " | ".join(self.columns) + " |"
        align = "|---|" + "".join("---:|" for _ in self.columns[1:])
        body = ["| " + " | ".join(_escape(cell) for cell in row) + " |" for row in self.rows]
        parts = [f"### {self.title}", "", header, align, *body]
        if self.notes:
            parts += ["", *(f"- {note}" for note in self.notes)]
        return "\n".join(parts)


def _escape(cell: str) -> str:
    return cell.replace("|", "\\|")


def count(value: float) -> str:
    """A whole number with thousands separators."""
    return f"{value:,.0f}"


def ms(value: float) -> str:
    """Milliseconds with a precision that suits the magnitude."""
    if value < 1:
        return f"{value:.3f}"
    if value < 10:
        return f"{value:.2f}"
    return f"{value:.1f}"


def ratio(value: float | None) -> str:
    """A ratio such as ``2.1x``; ``-`` when there is nothing to compare with."""
    if value is None:
        return "-"
    if value < 10:
        return f"{value:.2f}x"
    return f"{value:.0f}x"

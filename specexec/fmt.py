"""Plain-text formatting shared by the commands (tables, durations)."""

from __future__ import annotations

from collections.abc import Sequence


def minutes(value: float | None) -> str:
    """12.5 -> '12.5m', 90 -> '1h30m', None -> '-'."""
    if value is None:
        return "-"
    if value >= 60:
        h, m = divmod(round(value), 60)
        return f"{h}h{m:02d}m"
    if value >= 10 or value == int(value):
        return f"{value:.0f}m"
    return f"{value:.1f}m"


def seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    m, s = divmod(round(value), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m{s:02d}s"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """Left-aligned columns separated by two spaces; no trailing blanks."""
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))
    lines = []
    for row in (headers, *rows):
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def shorten(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"

"""Plain-text formatting shared by the commands (tables, durations, sizes), and
``clean``: the one way text from a worker or a file is made safe for a terminal."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

# What a terminal would act on or hide rather than show: C0 and C1 controls (ESC starts
# escape sequences, BEL rings), DEL, zero-width and bidi marks/overrides/isolates (U+202E
# turns "exe.txt" into "txt.exe"), line and paragraph separators, the BOM, and lone
# surrogates (which cannot even be encoded for output).
_UNSAFE: Final = re.compile(
    "[\x00-\x1f\x7f-\x9f\u061c\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ud800-\udfff]"
)
_SPACES: Final = re.compile(r"[\t\n\r\v\f]+")
# The longest line a message from a worker or a file may take; longer is cut.
CLEAN_WIDTH: Final = 300


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def clean(text: object, width: int | None = CLEAN_WIDTH, *, strip: bool = True) -> str:
    """``text`` as one line a terminal shows as it is: whitespace controls become a
    space, every other unsafe character its escape (``\\x1b``, ``\\u202e``: a file name
    stays recognisable), cut to ``width`` characters (None: not cut). ``strip=False``
    keeps the indentation of a line of a document."""
    s = _UNSAFE.sub(_escape, _SPACES.sub(" ", str(text)))
    s = s.strip() if strip else s.rstrip()
    if width is not None and len(s) > width:
        s = s[: width - 1] + "\u2026"
    return s


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


def duration(value: float) -> str:
    """The one way a duration is shown: ``850ms``, ``5.7s``, ``12s``, ``4m10s``,
    ``1h02m``."""
    value = max(float(value), 0.0)
    if value < 0.9995:
        return f"{round(value * 1000)}ms"
    if value < 9.95:
        return f"{value:.1f}s"
    if value < 59.5:
        return f"{round(value)}s"
    m, s = divmod(round(value), 60)
    if m < 60:
        return f"{m}m{s:02d}s"
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m"


# The older name; every caller shows durations in one unit system.
seconds = duration


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
    text = " ".join(clean(text, None).split())
    return text if len(text) <= width else text[: width - 1] + "…"


_MIB: Final = 1024 * 1024


def size(n: int) -> str:
    """A byte count a reader can compare: ``8.4 MB (8,390,683 bytes)``, ``8 MiB
    (8,388,608 bytes)``; never two different sizes shown alike."""
    if n >= _MIB and n % _MIB == 0:
        return f"{n // _MIB} MiB ({n:,} bytes)"
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} MB ({n:,} bytes)"
    if n >= 1_000:
        return f"{n / 1e3:.1f} kB ({n:,} bytes)"
    return f"{n} bytes"


def did_you_mean(word: str, choices: Sequence[str]) -> str:
    """``' (did you mean "fmt-attr"?)'`` for a near miss among ``choices``, else ``''``:
    a suffix for "unknown ..." messages."""
    import difflib  # only on an error path

    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""

"""Defensive JSON I/O for the files specexec reads and rewrites.

Loading refuses what ``json`` would silently accept or choke on (duplicate keys, NaN and
Infinity, absurd nesting, huge files, bad encodings) with ``InvalidInput`` messages of the
form ``<file>:<line>:<col>: <what>``. Positions are only computed on the error path, so
loading a valid file costs one ``json.loads`` plus a walk over its containers.
"""

from __future__ import annotations

import codecs
import json
import math
import os
import re
import stat
from collections.abc import Callable, Iterator
from json.encoder import encode_basestring as _encode_str
from pathlib import Path
from typing import Any, Final, NoReturn

from specexec import fmt
from specexec.errors import InvalidInput, UnsafePath

MAX_DEPTH: Final = 64
MAX_BYTES: Final = 8 * 1024 * 1024

# Longest first: the UTF-32-LE mark starts with the UTF-16-LE one.
_BOMS: Final = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF8, "UTF-8 with a byte order mark"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)

# Tokens of (the valid prefix of) a JSON text; used only to locate an error.
_TOKEN: Final = re.compile(
    r"""
    (?P<ws>[\ \t\n\r]+)
  | (?P<str>"(?:[^"\\]|\\.)*"?)
  | (?P<punct>[{}\[\]:,])
  | (?P<lit>[^\ \t\n\r{}\[\]:,"]+)
    """,
    re.VERBOSE | re.DOTALL,
)
_IDENT: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_NON_FINITE: Final = frozenset({"NaN", "Infinity", "-Infinity"})


class _Duplicate(Exception):
    pass


class _NonFinite(Exception):
    pass


def _pairs_hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        raise _Duplicate
    return d


def _reject_constant(name: str) -> Any:
    raise _NonFinite(name)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999 parses to inf
        raise _NonFinite(text)
    return value


def _line_col(text: str, pos: int) -> tuple[int, int]:
    line = text.count("\n", 0, pos) + 1
    return line, pos - (text.rfind("\n", 0, pos) + 1) + 1


def _where(source: str, text: str, pos: int) -> str:
    line, col = _line_col(text, pos)
    return f"{source}:{line}:{col}"


def _tokens(text: str) -> Iterator[tuple[str, str, int]]:
    """(kind, token, offset) of every non-space token, stopping at the first unknown char."""
    pos = 0
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            return
        kind = m.lastgroup or ""
        if kind != "ws":
            yield kind, m.group(), pos
        pos = m.end()


def _child_path(parent: str, step: str | int) -> str:
    if isinstance(step, int):
        return f"{parent}[{step}]"
    if _IDENT.match(step):
        return f"{parent}.{step}" if parent else step
    return f"{parent}[{json.dumps(step, ensure_ascii=False)}]"


def _find_duplicate(text: str) -> tuple[int, int, str, str] | None:
    """(offset of the repeated key, offset of its first use, key, object path)."""

    class Frame:
        __slots__ = ("index", "is_obj", "key", "path", "seen")

        def __init__(self, path: str, is_obj: bool) -> None:
            self.path, self.is_obj = path, is_obj
            self.seen: dict[str, int] = {}
            self.key = ""
            self.index = 0

    stack: list[Frame] = []
    expect_key = False
    for kind, tok, pos in _tokens(text):
        top = stack[-1] if stack else None
        if kind == "punct":
            if tok in "{[":
                if top is None:
                    path = ""
                else:
                    path = _child_path(top.path, top.key if top.is_obj else top.index)
                stack.append(Frame(path, tok == "{"))
                expect_key = tok == "{"
            elif tok in "}]":
                if stack:
                    stack.pop()
                expect_key = False
            elif tok == "," and top is not None:
                if top.is_obj:
                    expect_key = True
                else:
                    top.index += 1
        elif kind == "str" and top is not None and top.is_obj and expect_key:
            expect_key = False
            try:
                key = json.loads(tok)
            except ValueError:
                return None
            if key in top.seen:
                return pos, top.seen[key], key, top.path
            top.seen[key] = pos
            top.key = key
    return None


def _find_token(text: str, pred: Callable[[str], bool]) -> int | None:
    for kind, tok, pos in _tokens(text):
        if kind == "lit" and pred(tok):
            return pos
    return None


def _find_too_deep(text: str) -> int | None:
    depth = 0
    for kind, tok, pos in _tokens(text):
        if kind == "punct":
            if tok in "{[":
                depth += 1
                if depth > MAX_DEPTH:
                    return pos
            elif tok in "}]":
                depth -= 1
    return None


def too_deep(doc: Any, limit: int = MAX_DEPTH) -> bool:
    """Whether a value nests containers more than ``limit`` levels deep (a container
    holding only scalars is 1 level)."""
    if not isinstance(doc, _NESTED):
        return False
    # Level by level, iteratively: a recursive walk is what this check exists to avoid.
    level = [doc]
    for _ in range(limit):
        below: list[Any] = []
        for c in level:
            below += [
                v for v in (c.values() if isinstance(c, dict) else c) if isinstance(v, _NESTED)
            ]
        if not below:
            return False
        level = below
    return True


_NESTED: Final = (dict, list, tuple)


def _is_non_finite(tok: str) -> bool:
    if tok in _NON_FINITE:
        return True
    try:
        return not math.isfinite(float(tok))
    except ValueError:
        return False


def _decode(data: bytes, source: str) -> str:
    for bom, name in _BOMS:
        if data.startswith(bom):
            if bom == codecs.BOM_UTF8:
                raise InvalidInput(
                    f"{source}:1:1: the file starts with a UTF-8 byte order mark (BOM); "
                    "save it as UTF-8 without a BOM"
                )
            raise InvalidInput(f"{source}:1:1: the file is encoded as {name}; save it as UTF-8")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        col = len(data[line_start : e.start].decode("utf-8", "replace")) + 1
        raise InvalidInput(
            f"{source}:{line}:{col}: invalid UTF-8 (byte 0x{data[e.start]:02x}); "
            "the file must be UTF-8 encoded"
        ) from None


def loads(data: bytes | str, *, source: str) -> Any:
    """Parse a JSON document, refusing anything a careful reader would not trust.

    The size cap is the reader's job (``load_file`` checks it before reading).
    """
    text = _decode(data, source) if isinstance(data, bytes) else data
    if text.startswith("\ufeff"):
        raise InvalidInput(f"{source}:1:1: the text starts with a byte order mark (BOM); remove it")
    try:
        doc = json.loads(
            text,
            object_pairs_hook=_pairs_hook,
            parse_constant=_reject_constant,
            parse_float=_parse_float,
        )
    except json.JSONDecodeError as e:
        if not text.strip():
            raise InvalidInput(
                f"{source}:1:1: the file is empty; expected a JSON document"
            ) from None
        what = e.msg
        if e.pos >= len(text.rstrip()):
            what += " (the document ends early; is the file truncated?)"
        else:
            what += likely_cause(text, e.msg, e.pos)
        raise InvalidInput(f"{source}:{e.lineno}:{e.colno}: invalid JSON: {what}") from None
    except _Duplicate:
        found = _find_duplicate(text)
        if found is None:  # pragma: no cover - the hook and the scanner agree on JSON
            raise InvalidInput(f"{source}: duplicate key in an object") from None
        pos, first, key, path = found
        line, col = _line_col(text, first)
        inside = f" in the object at {path}" if path else " at the top level"
        raise InvalidInput(
            f"{_where(source, text, pos)}: duplicate key {json.dumps(key, ensure_ascii=False)}"
            f"{inside} (first at line {line}, column {col})"
        ) from None
    except _NonFinite as e:
        pos = _find_token(text, _is_non_finite) or 0
        raise InvalidInput(
            f"{_where(source, text, pos)}: {e.args[0]} is not a valid JSON number "
            "(NaN and Infinity are not allowed)"
        ) from None
    except RecursionError:
        _raise_too_deep(text, source)
    except ValueError as e:  # an integer with more digits than Python converts
        long = _find_token(text, lambda tok: len(tok) > 4000)
        where = _where(source, text, long) if long is not None else source
        raise InvalidInput(f"{where}: invalid JSON: {e}") from None
    if too_deep(doc):
        _raise_too_deep(text, source)
    return doc


_NO_NAME = "Expecting property name enclosed in double quotes"
_SHOWN = 80  # how much of the offending line a message quotes


def likely_cause(text: str, msg: str, pos: int) -> str:
    """What a person most likely typed, for the JSON decoder's ``msg`` at ``pos``:
    ``'; likely a trailing comma at line 18, column 22: "blocked_by": ["T1",'``, or ''.
    Points at the cause (the comma), not where the decoder gave up (the next line)."""
    at = text[pos : pos + 1]
    end = len(text[:pos].rstrip())  # just after the last character before pos
    prev = text[end - 1 : end]
    cause, where = pos, "at"
    if text.startswith(("//", "/*", "#"), pos):
        what = "a comment (JSON has none)"
    elif prev == "," and at in ("]", "}") and msg in ("Expecting value", _NO_NAME):
        what, cause = "a trailing comma", end - 1
    elif at == "'" and msg in ("Expecting value", _NO_NAME):
        what = "single quotes (JSON strings take double quotes)"
    elif msg == _NO_NAME and (at.isalpha() or at == "_"):
        what = "an unquoted key (keys take double quotes)"
    elif msg == "Expecting value" and at.isalpha():
        what = "an unquoted string (text values take double quotes)"
    elif msg == "Expecting ',' delimiter" and at not in ("", ",", "]", "}"):
        what, cause, where = "a missing comma", end - 1, "after"
    else:
        return ""
    line, col = _line_col(text, cause)
    shown = text.splitlines()[line - 1].strip()
    if len(shown) > _SHOWN:
        shown = shown[: _SHOWN - 1] + "…"
    return f"; likely {what} {where} line {line}, column {col}: {shown}"


def _raise_too_deep(text: str, source: str) -> NoReturn:
    pos = _find_too_deep(text)
    where = _where(source, text, pos) if pos is not None else source
    raise InvalidInput(f"{where}: nesting deeper than {MAX_DEPTH} levels") from None


def _size(n: int) -> str:
    # Precise: an 8.4 MB file must not read "8 MiB, larger than the 8 MiB limit".
    return fmt.size(n)


def read_bytes(path: Path, *, max_bytes: int = MAX_BYTES) -> tuple[bytes, os.stat_result]:
    """The bytes and the stat of a regular file that is not a symlink and not too big."""
    try:
        # O_NOFOLLOW closes the race between checking for a link and opening; O_NONBLOCK
        # keeps a FIFO planted at the path from hanging us.
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InvalidInput(f"{path}: no such file") from None
    except OSError as e:
        if os.path.islink(path):
            raise UnsafePath(
                f"{path}: is a symbolic link; specexec does not follow links for files it "
                "reads and rewrites (replace the link with the file itself)"
            ) from None
        raise InvalidInput(f"{path}: cannot open: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidInput(f"{path}: not a regular file")
        if st.st_size > max_bytes:
            raise InvalidInput(
                f"{path}: the file is {_size(st.st_size)}, larger than the {_size(max_bytes)} limit"
            )
        chunks: list[bytes] = []
        total = 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # grew after the stat
                raise InvalidInput(f"{path}: the file is larger than the {_size(max_bytes)} limit")
        return b"".join(chunks), st
    except OSError as e:
        raise InvalidInput(f"{path}: cannot read: {e.strerror or e}") from None
    finally:
        os.close(fd)


def load_file(path: Path, *, max_bytes: int = MAX_BYTES) -> Any:
    """Read and parse a JSON file with every check of ``read_bytes`` and ``loads``."""
    data, _ = read_bytes(path, max_bytes=max_bytes)
    return loads(data, source=str(path))


def dumps(doc: Any) -> str:
    """2-space JSON, non-ASCII kept, keys in their order, with a trailing newline.

    Exactly ``json.dumps(doc, indent=2, ensure_ascii=False) + "\\n"``, about twice as
    fast: with an indent the stdlib runs its pure-Python encoder, and every transition
    of a run rewrites the whole file. Anything unusual goes to the stdlib.
    """
    parts: list[str] = []
    try:
        _encode_into(doc, 0, parts.append)
    except _Unusual:
        return json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    parts.append("\n")
    return "".join(parts)


class _Unusual(Exception):
    pass


_NEWLINE_INDENT: Final = tuple("\n" + "  " * i for i in range(MAX_DEPTH + 2))


def _encode_into(o: Any, level: int, out: Callable[[str], None]) -> None:
    # Exact types only: subclasses (bool is an int, enums, ...) take the stdlib path.
    t = type(o)
    if t is str:
        out(_encode_str(o))
    elif t is dict:
        if not o:
            out("{}")
            return
        if level > MAX_DEPTH:  # deep or circular: let the stdlib decide
            raise _Unusual
        sep = "{" + _NEWLINE_INDENT[level + 1]
        for key, value in o.items():
            if type(key) is not str:
                raise _Unusual
            out(sep)
            out(_encode_str(key))
            out(": ")
            # Inline the common leaves: a call per value is most of the cost.
            vt = type(value)
            if vt is str:
                out(_encode_str(value))
            elif vt is int:
                out(int.__repr__(value))
            else:
                _encode_into(value, level + 1, out)
            sep = "," + _NEWLINE_INDENT[level + 1]
        out(_NEWLINE_INDENT[level] + "}")
    elif t is list or t is tuple:
        if not o:
            out("[]")
            return
        if level > MAX_DEPTH:
            raise _Unusual
        sep = "[" + _NEWLINE_INDENT[level + 1]
        for value in o:
            out(sep)
            _encode_into(value, level + 1, out)
            sep = "," + _NEWLINE_INDENT[level + 1]
        out(_NEWLINE_INDENT[level] + "]")
    elif o is None:
        out("null")
    elif o is True:
        out("true")
    elif o is False:
        out("false")
    elif t is int:
        out(int.__repr__(o))
    elif t is float and math.isfinite(o):
        out(float.__repr__(o))
    else:
        raise _Unusual


def encode(doc: Any) -> bytes:
    """``dumps`` as UTF-8. A lone surrogate (from text decoded with surrogateescape) is
    written as its ``\\udcXX`` JSON escape, so the file stays valid UTF-8 and round-trips."""
    return _utf8(dumps(doc))


def _utf8(text: str) -> bytes:
    return text.encode("utf-8", "backslashreplace")


_ITEM_SEP: Final = _utf8("," + _NEWLINE_INDENT[2])


class IncrementalEncoder:
    """``encode`` for a document that changes a little between writes: the encoding of
    each dict in the list ``doc[key]`` is kept and reused for that very object.

    Whoever changes such a dict (or anything in it) in place must ``forget`` it first,
    or ``clear``. An entry holds its object, so no other object can take its ``id``.
    """

    def __init__(self, key: str) -> None:
        self.key = key
        self._texts: dict[int, tuple[dict[str, Any], bytes]] = {}

    def forget(self, item: object) -> None:
        self._texts.pop(id(item), None)

    def clear(self) -> None:
        self._texts.clear()

    def encode(self, doc: Any) -> bytes:
        """Exactly ``encode(doc)``."""
        items = doc.get(self.key) if type(doc) is dict else None
        if type(items) is not list or not items:
            return encode(doc)
        texts: dict[int, tuple[dict[str, Any], bytes]] = {}
        parts: list[bytes] = []
        out: list[str] = []  # the text after the last of ``parts``
        sep = "{"
        try:
            # _encode_into(doc, 0, ...) with the list's items spliced in as bytes.
            for key, value in doc.items():
                if type(key) is not str:
                    raise _Unusual
                out += (sep, _NEWLINE_INDENT[1], _encode_str(key), ": ")
                if key != self.key:
                    _encode_into(value, 1, out.append)
                else:
                    out.append("[" + _NEWLINE_INDENT[2])
                    parts.append(_utf8("".join(out)))
                    out.clear()
                    for i, item in enumerate(items):
                        if i:
                            parts.append(_ITEM_SEP)
                        parts.append(self._item(item, texts))
                    out.append(_NEWLINE_INDENT[1] + "]")
                sep = ","
        except _Unusual:
            return encode(doc)  # the stdlib's way; the kept entries are still right
        out.append("\n}\n")
        parts.append(_utf8("".join(out)))
        self._texts = texts  # only this document's items: the rest can be freed
        return b"".join(parts)

    def _item(self, item: Any, texts: dict[int, tuple[dict[str, Any], bytes]]) -> bytes:
        entry = self._texts.get(id(item))
        if entry is not None and entry[0] is item:
            text = entry[1]
        else:
            out: list[str] = []
            _encode_into(item, 2, out.append)
            text = _utf8("".join(out))
        if type(item) is dict:
            texts[id(item)] = (item, text)
        return text

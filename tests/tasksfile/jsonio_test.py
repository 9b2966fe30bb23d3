"""Defensive JSON loading: precise messages, fast failure, exact round trips."""

from __future__ import annotations

import enum
import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specexec.errors import InvalidInput, UnsafePath
from specexec.tasksfile import jsonio

CANONICAL: dict[str, Any] = {
    "version": 1,
    "spec": "add-auth",
    "x-owner": {"zeta": 1, "alpha": ["é", "日本", None, True, 1.5, -0.0, 10**20]},
    "tasks": [
        {
            "id": "T1",
            "summary": "Create the user model \u2013 fast",
            "status": "pending",
            "custom": {"b": 2, "a": 1},
        }
    ],
    "execution_strategy": {},
}


def _error(data: bytes | str) -> str:
    with pytest.raises(InvalidInput) as info:
        jsonio.loads(data, source="specs/x/tasks.json")
    return str(info.value)


def test_canonical_file_round_trips_byte_identically() -> None:
    text = jsonio.dumps(CANONICAL)
    assert text.endswith("}\n") and '\n  "version": 1,' in text
    assert "é" in text  # not \u00e9
    doc = jsonio.loads(text.encode(), source="t.json")
    assert list(doc) == list(CANONICAL)
    assert list(doc["x-owner"]) == ["zeta", "alpha"]
    assert jsonio.dumps(doc) == text
    assert jsonio.encode(doc) == text.encode()


def test_lone_surrogate_round_trips_as_valid_utf8() -> None:
    # Worker output decoded with surrogateescape can carry lone surrogates.
    doc = {"log": "bad byte: \udcff"}
    data = jsonio.encode(doc)
    data.decode("utf-8")  # valid UTF-8
    assert jsonio.loads(data, source="t.json") == doc
    assert jsonio.encode(jsonio.loads(data, source="t.json")) == data


def test_duplicate_key_points_at_the_second_occurrence() -> None:
    text = '{\n  "tasks": [\n    {"id": "T1",\n     "status": "pending",\n     "status": "pass"}\n  ]\n}\n'
    msg = _error(text)
    assert msg == (
        'specs/x/tasks.json:5:6: duplicate key "status" in the object at tasks[0] '
        "(first at line 4, column 6)"
    )


def test_duplicate_key_written_with_an_escape_is_still_a_duplicate() -> None:
    assert _error('{"id": 1, "\\u0069d": 2}').startswith("specs/x/tasks.json:1:11: duplicate key")


def test_duplicate_key_after_strings_with_braces_and_quotes() -> None:
    text = '{"a": "{[\\"", "b": {"c": "}]", "c": 1}}'
    assert _error(text).startswith('specs/x/tasks.json:1:32: duplicate key "c" in the object at b')


@pytest.mark.parametrize(
    ("text", "where", "token"),
    [
        ('{"a": NaN}', "1:7", "NaN"),
        ('{"a": [1,\n  Infinity]}', "2:3", "Infinity"),
        ('{"a": -Infinity}', "1:7", "-Infinity"),
        ('{"a": 1e999}', "1:7", "1e999"),
    ],
)
def test_non_finite_numbers_are_rejected(text: str, where: str, token: str) -> None:
    assert _error(text) == (
        f"specs/x/tasks.json:{where}: {token} is not a valid JSON number "
        "(NaN and Infinity are not allowed)"
    )


def test_truncated_document_says_so() -> None:
    text = jsonio.dumps(CANONICAL)[:-40]
    msg = _error(text)
    assert msg.startswith("specs/x/tasks.json:")
    assert "truncated" in msg


def test_syntax_error_has_line_and_column() -> None:
    assert _error('{\n  "a": 1,\n  "b" 2\n}').startswith(
        "specs/x/tasks.json:3:7: invalid JSON: Expecting ':' delimiter"
    )


def test_an_absurdly_long_number_is_located() -> None:
    assert _error('{"n":\n  ' + "9" * 5000 + "}").startswith(
        "specs/x/tasks.json:2:3: invalid JSON: "
    )


def test_empty_document() -> None:
    assert _error(b"  \n") == "specs/x/tasks.json:1:1: the file is empty; expected a JSON document"


def test_depth_limit_is_exact() -> None:
    ok = "[" * jsonio.MAX_DEPTH + "]" * jsonio.MAX_DEPTH
    assert jsonio.loads(ok, source="t.json") is not None
    deep = '{"a":' * 5 + "[" * 60 + "]" * 60 + "}" * 5
    assert _error(deep) == "specs/x/tasks.json:1:85: nesting deeper than 64 levels"


@pytest.mark.parametrize("opener", ["[", '{"k":'])
def test_nesting_100000_deep_is_refused_at_level_65_without_recursion_error(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    text = opener * 100_000 + "1" + closer * 100_000
    # Refused (not a RecursionError, not a crash) and located at the 65th opener.
    msg = _error(text)
    assert msg == f"specs/x/tasks.json:1:{64 * len(opener) + 1}: nesting deeper than 64 levels"


def test_invalid_utf8_reports_line_and_column() -> None:
    data = b'{\n  "summary": "caf\xc3\xa9 \xff"\n}\n'
    assert _error(data) == (
        "specs/x/tasks.json:2:20: invalid UTF-8 (byte 0xff); the file must be UTF-8 encoded"
    )


def test_bom_is_refused_with_a_clear_message() -> None:
    assert "byte order mark" in _error(b"\xef\xbb\xbf{}")
    assert "byte order mark" in _error("\ufeff{}")
    assert _error("{}".encode("utf-16")) == (
        "specs/x/tasks.json:1:1: the file is encoded as UTF-16; save it as UTF-8"
    )


def test_load_file_refuses_a_file_over_the_cap_before_reading_it(tmp_path: Path) -> None:
    big = tmp_path / "tasks.json"
    with big.open("wb") as f:
        f.truncate(100 * 1024 * 1024)  # sparse: instant, no disk used
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput) as info:
            jsonio.load_file(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Not read: not even up to the cap (reading it in chunks would hold 8 MiB).
    assert peak < jsonio.MAX_BYTES // 2, f"{peak / 2**20:.1f} MiB allocated"
    assert (
        str(info.value)
        == f"{big}: the file is 100 MiB (104,857,600 bytes), larger than the 8 MiB (8,388,608 bytes) limit"
    )


def test_load_file_refuses_a_symlink(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    target.write_text("{}\n")
    link = tmp_path / "tasks.json"
    link.symlink_to(target)
    with pytest.raises(UnsafePath, match="is a symbolic link"):
        jsonio.load_file(link)


def test_load_file_missing_and_not_a_file(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match="no such file"):
        jsonio.load_file(tmp_path / "nope.json")
    with pytest.raises(InvalidInput, match="not a regular file"):
        jsonio.load_file(tmp_path)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    with pytest.raises(InvalidInput, match="not a regular file"):  # and does not hang
        jsonio.load_file(fifo)


def test_load_file_loads_a_valid_file(tmp_path: Path) -> None:
    path = tmp_path / "tasks.json"
    path.write_text(jsonio.dumps(CANONICAL), encoding="utf-8")
    assert jsonio.load_file(path) == CANONICAL


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
_json = st.recursive(
    _scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(_json)
def test_any_document_round_trips(doc: Any) -> None:
    data = jsonio.encode(doc)
    back = jsonio.loads(data, source="t.json")
    assert json.dumps(back) == json.dumps(doc)
    assert jsonio.encode(back) == data


@settings(max_examples=300, deadline=None)
@given(_json)
def test_dumps_is_exactly_the_stdlib_pretty_printer(doc: Any) -> None:
    assert jsonio.dumps(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


class _Level(enum.IntEnum):
    HIGH = 3


@pytest.mark.parametrize(
    "doc",
    [
        {"a": (1, 2), "b": [], "c": {}, "d": [[]], "e": -0.0, "f": 1e16, "g": 2**70},
        {1: "int key", None: "null key", 2.5: "float key"},
        {"enum": _Level.HIGH, "t": '\u2028\x00"\\'},
        [[[[[[[[[[{"deep": True}]]]]]]]]]],
        json.loads("[" * 70 + "]" * 70),  # deeper than the fast path goes
    ],
)
def test_dumps_matches_the_stdlib_on_unusual_values(doc: Any) -> None:
    assert jsonio.dumps(doc) == json.dumps(doc, indent=2, ensure_ascii=False) + "\n"


def test_dumps_refuses_nan() -> None:
    with pytest.raises(ValueError):
        jsonio.dumps({"x": float("nan")})


# -- incremental encoding ------------------------------------------------------------

# Built afresh each time: a shared dict could end up inside itself.
_odd = st.sampled_from([(1, 2), _Level.HIGH, "lone \udcff", 1e300, -0.0]) | st.builds(
    dict, st.just({1: "int key"})
)
_value = _json | _odd
_task = st.dictionaries(st.text(max_size=6), _value, max_size=4)
_item = st.one_of(_task, _task, _task, _value)  # mostly tasks
_step = st.one_of(
    st.tuples(st.just("set"), st.integers(0, 9), st.text(max_size=6), _value),
    st.tuples(st.just("nested"), st.integers(0, 9), _value),
    st.tuples(st.just("insert"), st.integers(0, 9), _item),
    st.tuples(st.just("delete"), st.integers(0, 9)),
    st.tuples(st.just("repeat"), st.integers(0, 9)),
    st.tuples(st.just("top"), st.sampled_from(["version", "x", "tasks"]), _value),
    st.tuples(st.just("move"), st.sampled_from(["version", "x", "tasks"])),
    st.tuples(st.just("reload")),
)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.sampled_from(["version", "x", "y"]), unique=True),
    st.integers(0, 3),
    st.lists(_item, max_size=6),
    st.lists(_step, min_size=1, max_size=12),
)
def test_incremental_encoding_is_the_full_encoding(
    others: list[str], at: int, tasks: list[Any], steps: list[tuple[Any, ...]]
) -> None:
    others.insert(at, "tasks")  # anywhere in the order of the top-level keys
    doc: dict[Any, Any] = {k: tasks if k == "tasks" else 1 for k in others}
    enc = jsonio.IncrementalEncoder("tasks")
    assert enc.encode(doc) == jsonio.encode(doc)
    for op, *args in steps:
        got = doc.get("tasks")
        items: list[Any] = got if isinstance(got, list) else []
        if op == "insert":
            doc["tasks"] = items
            items.insert(args[0], args[1])
        elif op in ("set", "nested", "delete", "repeat"):
            if not items:
                continue
            i = args[0] % len(items)
            if op == "delete":
                del items[i]
            elif op == "repeat":  # the very same object twice in the list
                items.append(items[i])
            else:  # changed in place, as TasksStore.apply does: forgotten first
                enc.forget(items[i])
                if isinstance(items[i], dict) and op == "set":
                    items[i][args[1]] = args[2]
                elif isinstance(items[i], dict):  # deep inside the task
                    if not isinstance(items[i].get("n"), dict):  # generated tasks may hold any "n"
                        items[i]["n"] = {}
                    items[i]["n"]["l"] = [args[1]]
        elif op == "top":
            doc[args[0]] = args[1]
        elif op == "move" and args[0] in doc:
            doc[args[0]] = doc.pop(args[0])
        elif op == "reload":  # someone rewrote the file: all new objects
            doc = jsonio.loads(jsonio.encode(doc), source="t.json")
        assert enc.encode(doc) == jsonio.encode(doc)


def test_incremental_encoding_reuses_unchanged_tasks_only() -> None:
    doc = json.loads(json.dumps(CANONICAL))
    doc["tasks"].append({"id": "T2", "deep": json.loads("[" * 70 + "]" * 70)})
    enc = jsonio.IncrementalEncoder("tasks")
    before = enc.encode(doc)
    assert before == jsonio.encode(doc)  # the stdlib path, for a task too deep for ours
    doc["tasks"][1]["deep"] = []
    enc.forget(doc["tasks"][1])
    first = enc.encode(doc)
    assert first == jsonio.encode(doc)
    doc["tasks"][0]["status"] = "pass"  # not forgotten: the old text is reused
    assert enc.encode(doc) == first
    enc.clear()
    assert enc.encode(doc) == jsonio.encode(doc) != first
    doc["tasks"][0] = dict(doc["tasks"][0], status="fail")  # a new object: encoded afresh
    assert enc.encode(doc) == jsonio.encode(doc)
    odd: Any
    for odd in ([], {}, None, "text"):  # not a list of tasks at all
        assert enc.encode({"tasks": odd, "v": 1}) == jsonio.encode({"tasks": odd, "v": 1})
    assert enc.encode({}) == b"{}\n"
    with pytest.raises(ValueError):
        enc.encode({"tasks": [{"x": float("nan")}]})

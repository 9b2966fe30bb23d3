"""Combining blockers' results for the task that waits on them (pattern 000).

A task may declare ``merge: {"strategy": "union|intersection|priority|voting", ...}`` to
receive its blockers' ``data`` lists combined. Items are compared and ordered by their
canonical JSON, so the outcome never depends on which worker finished first.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from specexec.tasksfile.types import MergeConfig


def canonical(item: Any) -> str:
    return json.dumps(item, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


def _distinct(lists: Sequence[Sequence[Any]]) -> dict[str, Any]:
    """Every item once, in canonical form (sorted keys), ordered by its canonical JSON."""
    keys = sorted({canonical(i) for lst in lists for i in lst})
    return {k: json.loads(k) for k in keys}


def _rank_key(item: Any, key: str | None) -> tuple[int, Any, str]:
    # Items lacking the key (or of a type that does not compare) rank last, in a fixed order.
    value = item.get(key) if key and isinstance(item, Mapping) else None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return (2, 0, canonical(item))
    return (0 if isinstance(value, int | float) else 1, value, canonical(item))


def merge_data(config: MergeConfig, lists: Sequence[Sequence[Any]]) -> list[Any]:
    """Combine the blockers' ``data`` lists. The result is a function of the lists as a
    multiset: items come out in canonical order (priority: by rank, then canonical)."""
    items = _distinct(lists)
    if config.strategy == "union":
        return list(items.values())
    if config.strategy == "intersection":
        common = (
            set.intersection(*({canonical(i) for i in lst} for lst in lists)) if lists else set()
        )
        return [v for k, v in items.items() if k in common]
    if config.strategy == "priority":
        ranked = sorted(items.values(), key=lambda i: _rank_key(i, config.key))
        return ranked[: config.top_n] if config.top_n else ranked
    # voting: an item counts once per blocker that reported it; most votes first.
    votes = dict.fromkeys(items, 0)
    for lst in lists:
        for k in {canonical(i) for i in lst}:
            votes[k] += 1
    kept = sorted(
        (k for k, v in votes.items() if v >= config.min_votes), key=lambda k: (-votes[k], k)
    )
    return [items[k] for k in kept]

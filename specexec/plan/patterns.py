"""``relevant_files`` patterns: the safety check, coverage, and the conflict index.

Pure: no I/O. Inputs are repo-relative POSIX strings the loader has already normalised
(directories end with ``/``). A pattern is a literal path or a glob (``*`` and ``?`` and
``[...]`` inside one component, ``**`` as a whole component for any number of them).

What a pattern names (fnmatch-style, one component at a time):

- a directory (``docs/``) names itself and everything beneath it;
- a file (``src/a.py``) names itself;
- a glob names the paths it matches: ``*`` never crosses ``/``, so ``src/*.py`` and
  ``src/*`` do not name ``src/a/b.py`` while ``src/**`` does; a glob ending in ``/``
  (``src/*/``) names its matching directories and everything beneath them.

Two patterns **conflict** when they may name a common path (DESIGN §2). Two literal
paths also conflict when one lies beneath the other even without a trailing ``/``
(``src/a`` and ``src/a/b.py``), and so does a literal that a glob's fixed leading
directories pass through: git cannot merge a file and a directory of the same name, and
the loader only knows the directories that exist today. The test is exact except
between two glob components, which are compared by their literal head and tail only
(``*.py`` and ``*.md`` are disjoint, ``t?.py`` and ``[ab].py`` are taken to overlap):
conservative.

``covers`` (the scope check) reads a literal as itself and anything beneath it, so a
task that declared ``src/a`` may create the directory ``src/a``.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Iterator, Sequence
from fnmatch import fnmatchcase
from functools import lru_cache

from specexec.tasksfile.types import Task

__all__ = [
    "ConflictIndex",
    "conflict_graph",
    "conflict_index",
    "conflict_indices",
    "covers",
    "fixed_prefix",
    "is_glob",
    "overlap",
    "path_problem",
    "patterns_conflict",
    "scope_violations",
]

_DRIVE = re.compile(r"^[A-Za-z]:")
_TAIL = re.compile(r"[^*?\[\]]*\Z")


def path_problem(p: str) -> str | None:
    """Why ``p`` is not a safe repo-relative path or pattern, or None when it is.

    Symlink escapes need the filesystem; the loader checks those.
    """
    # The usual path has none of what the checks below look for (a loader asks ~100k
    # times for a big spec): substring tests, no split, no regex.
    if p and p[0] != "/" and p[1:2] != ":" and ".." not in p and "\x00" not in p and "\\" not in p:
        return None
    if p == "":
        return "empty path"
    if "\x00" in p:
        return f"{p!r} contains a NUL byte"
    if "\\" in p:
        return f"{p!r} contains a backslash (use / as the separator)"
    if p.startswith("/"):
        return f"{p!r} is absolute (paths are relative to the repository root)"
    if _DRIVE.match(p):
        return f"{p!r} starts with a drive letter (paths are relative to the repository root)"
    if ".." in p.split("/"):
        return f"{p!r} has a '..' segment (paths must stay inside the repository)"
    return None


def _is_magic(seg: str) -> bool:
    return "*" in seg or "?" in seg or "[" in seg


class _Pattern:
    """A compiled pattern (a plain slotted class: built ~100k times per big plan)."""

    __slots__ = ("first_magic", "globstar", "is_dir", "key", "literal", "segs", "text")

    def __init__(self, text: str) -> None:
        parts = text.split("/")
        if "" in parts or "." in parts:  # only then filter: "a/", "./a", "a//b"
            parts = [s for s in parts if s and s != "."]
        segs = tuple(parts)
        self.text = text
        self.segs = segs
        self.is_dir = text.endswith("/") or not segs
        if "*" in text or "?" in text or "[" in text:
            self.globstar = "**" in segs
            for i, seg in enumerate(segs):
                if _is_magic(seg):
                    self.literal = False
                    self.key = segs[:i]  # the fixed (glob-free) leading components
                    self.first_magic = seg  # the component right after ``key``
                    return
        self.globstar = False
        self.literal = True
        self.key = segs
        self.first_magic = ""


# Scope checks and rationales ask about the same few patterns again and again; the
# conflict index compiles its own (each distinct pattern once per call).
_compile = lru_cache(maxsize=4096)(_Pattern)


@lru_cache(maxsize=65536)
def _seg_compatible(a: str, b: str) -> bool:
    """May one path component match both component patterns ``a`` and ``b``?"""
    if a == b:
        return True
    a_magic, b_magic = _is_magic(a), _is_magic(b)
    if not a_magic and not b_magic:
        return False
    if not b_magic:
        return fnmatchcase(b, a)
    if not a_magic:
        return fnmatchcase(a, b)
    # Two globs: a common match starts with both literal heads and ends with both
    # literal tails. Necessary, not sufficient: conservative.
    ha, hb = _head(a), _head(b)
    ta, tb = _tail(a), _tail(b)
    return (ha.startswith(hb) or hb.startswith(ha)) and (ta.endswith(tb) or tb.endswith(ta))


def _head(seg: str) -> str:
    for i, ch in enumerate(seg):
        if ch in "*?[":
            return seg[:i]
    return seg


def _tail(seg: str) -> str:
    m = _TAIL.search(seg)
    return m.group(0) if m else ""


def _intersect(a: _Pattern, b: _Pattern) -> bool:
    """May patterns ``a`` and ``b`` name a common path? (Ignoring the file/directory rule.)

    Walks pairs of positions (i, j) in the two component lists. Both ends reached at
    once is a common path; one end reached by a tree pattern (a directory, or a glob
    ending in ``/``) names everything the other side can still add beneath it.
    """
    sa_, sb_ = a.segs, b.segs
    la, lb = len(sa_), len(sb_)
    if not a.globstar and not b.globstar:
        # Component for component; only a tree pattern may stop early.
        if (la < lb and not a.is_dir) or (lb < la and not b.is_dir):
            return False
        return all(x == y or _seg_compatible(x, y) for x, y in zip(sa_, sb_, strict=False))
    stack = [(0, 0)]
    seen: set[tuple[int, int]] = set()
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        a_end, b_end = i == la, j == lb
        if (a_end and (b_end or a.is_dir)) or (b_end and b.is_dir):
            return True
        if a_end:
            if sb_[j] == "**":  # only a ** can match no component
                stack.append((i, j + 1))
            continue
        if b_end:
            if sa_[i] == "**":
                stack.append((i + 1, j))
            continue
        sa, sb = sa_[i], sb_[j]
        if sa == "**":
            stack.append((i + 1, j))  # ** matching no component
            stack.append((i, j + 1))  # ** absorbing b's component
        if sb == "**":
            stack.append((i, j + 1))
            stack.append((i + 1, j))
        if sa != "**" and sb != "**" and _seg_compatible(sa, sb):
            stack.append((i + 1, j + 1))
    return False


def _glob_covers(p: _Pattern, path: tuple[str, ...]) -> bool:
    """Does glob ``p`` match concrete ``path`` (or a leading part, for a tree glob)?"""
    pat = p.segs
    lp, lq = len(pat), len(path)
    if not p.globstar:
        # Component for component; only a tree glob may stop early.
        if lq < lp or (lq > lp and not p.is_dir):
            return False
        return all(
            s == c or (_is_magic(s) and fnmatchcase(c, s)) for s, c in zip(pat, path, strict=False)
        )
    if lp == len(p.key) + 1 and pat[-1] == "**":  # ``dir/**``: dir and all beneath it
        return path[: lp - 1] == p.key
    stack = [(0, 0)]
    seen: set[tuple[int, int]] = set()
    while stack:
        i, j = stack.pop()
        if (i, j) in seen:
            continue
        seen.add((i, j))
        if i == lp:
            if j == lq or p.is_dir:
                return True
            continue
        s = pat[i]
        if s == "**":
            stack.append((i + 1, j))
            if j < lq:
                stack.append((i, j + 1))
        elif j < lq and (s == path[j] or (_is_magic(s) and fnmatchcase(path[j], s))):
            stack.append((i + 1, j + 1))
    return False


def _pat_covers(p: _Pattern, path_segs: tuple[str, ...]) -> bool:
    if p.literal:
        return path_segs[: len(p.segs)] == p.segs
    return _glob_covers(p, path_segs)


def _pats_conflict(a: _Pattern, b: _Pattern) -> bool:
    if a.literal and b.literal:
        n = min(len(a.segs), len(b.segs))
        return a.segs[:n] == b.segs[:n]
    if a.literal or b.literal:
        lit, glob = (a, b) if a.literal else (b, a)
        # A literal where the glob's fixed part needs a directory: the glob names
        # something beneath it (or a file/directory clash).
        if glob.key[: len(lit.segs)] == lit.segs:
            return True
    return _intersect(a, b)


def patterns_conflict(a: str, b: str) -> bool:
    """May patterns ``a`` and ``b`` name a common path? (The pairwise rule.)"""
    return _pats_conflict(_compile(a), _compile(b))


def covers(patterns: Sequence[str], path: str) -> bool:
    """Is the concrete repo-relative ``path`` named by one of ``patterns``?"""
    segs = tuple(s for s in path.split("/") if s and s != ".")
    return any(_pat_covers(_compile(p), segs) for p in patterns)


def scope_violations(changed: Iterable[str], patterns: Sequence[str]) -> list[str]:
    """The changed files no pattern covers, sorted.

    An empty ``patterns`` means the task declared no scope (it conflicts with nothing
    and gets a warning at planning time), so nothing it changes is a violation: only a
    declared scope can be violated.
    """
    if not patterns:
        return []
    compiled = [_compile(p) for p in patterns]
    out = set()
    for path in changed:
        segs = tuple(s for s in path.split("/") if s and s != ".")
        if not any(_pat_covers(p, segs) for p in compiled):
            out.add(path)
    return sorted(out)


def _describe(a: _Pattern, b: _Pattern) -> str:
    """A short name for what two conflicting patterns share: the narrower one."""
    if a.text == b.text:
        return a.text
    if a.literal and b.literal:
        return a.text if len(a.segs) >= len(b.segs) else b.text
    if a.literal or b.literal:
        lit, glob = (a, b) if a.literal else (b, a)
        return lit.text if _pat_covers(glob, lit.segs) else glob.text
    if len(a.key) != len(b.key):
        return a.text if len(a.key) > len(b.key) else b.text
    return f"{a.text} and {b.text}"


def overlap(a_patterns: Sequence[str], b_patterns: Sequence[str]) -> str | None:
    """What two pattern lists share (e.g. ``src/x.py``), or None when they do not conflict."""
    return _overlap([_compile(p) for p in a_patterns], [_compile(q) for q in b_patterns])


def _overlap(a_pats: Sequence[_Pattern], b_pats: Sequence[_Pattern]) -> str | None:
    for pa in a_pats:
        for pb in b_pats:
            if _pats_conflict(pa, pb):
                return _describe(pa, pb)
    return None


class _Node:
    """A trie node: the patterns whose fixed leading components end here."""

    __slots__ = ("children", "globs", "literals")

    def __init__(self) -> None:
        # Most nodes are leaves holding one literal: their containers are made when
        # first needed (a big plan builds ~100k nodes).
        self.children: dict[str, _Node] | None = None
        self.literals: list[int] = []
        # Globs grouped by their first glob component, so a path walking past this
        # node tests each distinct component once, not each glob.
        self.globs: dict[str, list[int]] | None = None


def _pattern_pairs(pats: Sequence[_Pattern]) -> Iterator[tuple[int, int]]:
    """Every pair (p, q), p != q, of conflicting patterns, each pair once.

    Two patterns can only conflict when their fixed leading components are nested (a
    common path starts with both), so a pattern is only compared with the patterns on
    its own key's path in the trie, never with every other pattern.
    """
    root = _Node()
    for pid, p in enumerate(pats):
        node = root
        for c in p.key:
            children = node.children
            if children is None:
                children = node.children = {}
            nxt = children.get(c)
            if nxt is None:
                nxt = children[c] = _Node()
            node = nxt
        if p.literal:
            node.literals.append(pid)
        elif node.globs is None:
            node.globs = {p.first_magic: [pid]}
        else:
            node.globs.setdefault(p.first_magic, []).append(pid)

    # A glob q is only ever tested against a pattern whose fixed part extends q's. Both
    # then start with q.key, components that only match themselves, so the answer
    # depends on what follows: ``src/pkgN/**`` against ``src/pkgN/mod3.py`` is decided
    # once for every N.
    memo: dict[tuple[tuple[str, ...], bool, tuple[str, ...], bool], bool] = {}

    def glob_conflict(pa: _Pattern, q: _Pattern) -> bool:
        k = len(q.key)
        key = (pa.segs[k:], pa.is_dir, q.segs[k:], q.is_dir)
        hit = memo.get(key)
        if hit is None:
            hit = memo[key] = _pats_conflict(pa, q)
        return hit

    # ``dir/**`` names everything beneath dir: no need to ask for the patterns below.
    tree = [not p.literal and p.segs[len(p.key) :] == ("**",) for p in pats]

    # One walk down the trie. Below a node, its literals (directories holding the
    # subtree) stay candidates for everything, and each of its globs only down the
    # edges its first glob component can match: decided once per edge, not per pattern.
    stack: list[tuple[_Node, list[list[int]], list[int]]] = [(root, [], [])]
    while stack:
        node, lit_chunks, glob_cands = stack.pop()
        globs = node.globs
        here = node.literals
        if globs:
            here = here + [q for qs in globs.values() for q in qs]
        for x, a in enumerate(here):
            pa = pats[a]
            for chunk in lit_chunks:
                for q in chunk:
                    yield a, q
            for q in glob_cands:
                if tree[q] or glob_conflict(pa, pats[q]):
                    yield a, q
            # Same fixed part: a literal is the other's path or holds it.
            for q in here[:x] if x else ():
                pq = pats[q]
                if pa.literal or pq.literal or glob_conflict(pa, pq):
                    yield a, q
        children = node.children
        if not children:
            continue
        below = [*lit_chunks, node.literals] if node.literals else lit_chunks
        if not globs:
            stack.extend([(child, below, glob_cands) for child in children.values()])
            continue
        if len(globs) == 1 and "**" in globs:  # the usual ``dir/**``: down every edge
            cands = [*glob_cands, *globs["**"]] if glob_cands else globs["**"]
            stack.extend([(child, below, cands) for child in children.values()])
            continue
        for comp, child in children.items():
            extra = [
                q
                for first, qs in globs.items()
                if first == "**" or _seg_compatible(first, comp)
                for q in qs
            ]
            stack.append((child, below, [*glob_cands, *extra] if extra else glob_cands))


class ConflictIndex:
    """The conflicts of a task list (``conflict_indices``), and what two tasks share.

    Keeps the compiled patterns and which of them conflict, so ``overlap`` between two
    of the tasks neither compiles nor compares patterns again (a big plan asks it for
    thousands of pairs).
    """

    __slots__ = ("_near", "_neighbours", "_pats", "_task_pids", "conflicts")

    def __init__(
        self,
        conflicts: list[frozenset[int]],
        pats: Sequence[_Pattern],
        task_pids: Sequence[Sequence[int]],
        neighbours: Sequence[Sequence[int]],
    ) -> None:
        self.conflicts = conflicts
        self._pats = pats
        self._task_pids = task_pids  # each task's patterns, in relevant_files order
        self._neighbours = neighbours  # the other patterns each pattern conflicts with
        self._near: dict[int, frozenset[int]] = {}

    def overlap(self, i: int, j: int) -> str | None:
        """``overlap`` of the relevant_files of the tasks at positions ``i`` and ``j``.

        The index holds exactly the pairs ``_pats_conflict`` accepts (it is symmetric,
        and true of a pattern and itself), so this is the same answer, looked up.
        """
        pats, bs = self._pats, self._task_pids[j]
        for p in self._task_pids[i]:
            near: Collection[int] = self._neighbours[p]
            if len(near) > 8:  # a directory near many patterns: look up a set, not a list
                cached = self._near.get(p)
                if cached is None:
                    cached = self._near[p] = frozenset(near)
                near = cached
            for q in bs:
                if p == q or q in near:
                    return _describe(pats[p], pats[q])
        return None


def conflict_indices(tasks: Sequence[Task]) -> list[frozenset[int]]:
    """For each task (by position), the positions of the tasks it conflicts with.

    Tasks with no relevant_files conflict with nothing.
    """
    return conflict_index(tasks).conflicts


def conflict_index(tasks: Sequence[Task]) -> ConflictIndex:
    """``conflict_indices`` of ``tasks``, kept with what ``ConflictIndex.overlap`` needs."""
    return _conflict_index(tasks)


def _conflict_index(tasks: Sequence[Task]) -> ConflictIndex:
    pid_of: dict[str, int] = {}
    pats: list[_Pattern] = []
    owners: list[list[int]] = []
    task_pids: list[list[int]] = []
    for ti, t in enumerate(tasks):
        mine = []
        for text in t.relevant_files:  # a repeated pattern is harmless: sets below
            pid = pid_of.get(text)
            if pid is None:
                pid = pid_of[text] = len(pats)
                pats.append(_Pattern(text))
                owners.append([])
            owners[pid].append(ti)
            mine.append(pid)
        task_pids.append(mine)

    neighbours: list[list[int]] = [[] for _ in pats]
    for p, q in _pattern_pairs(pats):
        neighbours[p].append(q)
        neighbours[q].append(p)

    empty: frozenset[int] = frozenset()
    out: list[frozenset[int]] = []
    for ti, pids in enumerate(task_pids):
        if not pids:
            out.append(empty)
            continue
        s: set[int] = set()
        for p in pids:
            s.update(owners[p])  # tasks sharing the very same pattern
            for q in neighbours[p]:
                s.update(owners[q])
        s.discard(ti)
        out.append(frozenset(s))
    return ConflictIndex(out, pats, task_pids, neighbours)


def conflict_graph(tasks: Sequence[Task]) -> dict[str, frozenset[str]]:
    """Task id -> ids of the tasks it conflicts with (every task is a key)."""
    ids = [t.id for t in tasks]
    return {
        t.id: frozenset(ids[j] for j in idx)
        for t, idx in zip(tasks, conflict_indices(tasks), strict=True)
    }


def is_glob(pattern: str) -> bool:
    """Does ``pattern`` use ``*``, ``?`` or ``[...]``?"""
    return _is_magic(pattern)


def fixed_prefix(pattern: str) -> str:
    """The leading components of ``pattern`` before its first glob component.

    The whole pattern for a literal path; what the loader resolves to catch symlinks
    that lead out of the repository.
    """
    if not _is_magic(pattern):
        return pattern
    out: list[str] = []
    for seg in pattern.split("/"):
        if _is_magic(seg):
            break
        out.append(seg)
    return "/".join(out)

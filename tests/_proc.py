"""Process helpers for the tests that start real searches as subprocesses (Linux /proc)."""

from __future__ import annotations

import signal
from pathlib import Path


def descendants(pid: int) -> set[int]:
    """Every live descendant of ``pid``, read from /proc."""
    parent: dict[int, int] = {}
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                parent[int(p.name)] = int((p / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):  # gone, or being created
                continue
    out, todo = set(), [pid]
    while todo:
        cur = todo.pop()
        for child, ppid in parent.items():
            if ppid == cur and child not in out:
                out.add(child)
                todo.append(child)
    return out


def sigint_default() -> None:
    """``preexec_fn``: SIGINT back to its default in the child. A shell starts background jobs (``cmd &``,
    ``nohup``) with SIGINT ignored and children inherit that; the tests send Ctrl-C as a terminal would."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)

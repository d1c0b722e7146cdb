"""CPU time and resident size of a process and its children, from Linux /proc."""

import os
from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat(pid: int) -> list[str]:
    text = Path(f"/proc/{pid}/stat").read_text()
    return text[text.rindex(")") + 2 :].split()  # fields after "pid (comm)"


def children(pid: int) -> list[int]:
    """Direct children of `pid` alive now."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return found


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants."""
    pids, todo = [], [pid]
    while todo:
        current = todo.pop()
        pids.append(current)
        todo += children(current)
    return pids


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of `pid` itself, in seconds."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of `pid` and its live descendants (killed ones no longer count)."""
    total = 0.0
    for p in tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
    return total


def rss_bytes(pid: int) -> int:
    """Resident size of `pid` in bytes."""
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * _PAGE


def find_by_argument(argument: str) -> int:
    """The pid of the process whose command line contains `argument` (e.g. a port)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                words = Path(entry, "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if argument.encode() in words:
                return int(entry.name)
    raise LookupError(f"no process with argument {argument!r}")

"""CPU time and memory of a process tree, read from ``/proc``.

CPU time is ``utime + stime`` of every live process in the tree, plus ``cutime +
cstime`` (children already reaped) so short-lived helpers are not lost. Memory is the
sum of ``VmRSS`` over the tree (shared pages counted once per process, the usual
meaning of "RSS of a service").
"""

from __future__ import annotations

import os
import threading
import time

_TICK = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read().decode()
    except OSError:
        return None
    # the command name may hold spaces and parentheses: split after the last ')'
    return raw[raw.rindex(")") + 2 :].split()


def tree(root: int) -> list[int]:
    """PIDs of ``root`` and all its descendants that are alive now."""
    children: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat_fields(int(name))
        if fields is not None:
            children.setdefault(int(fields[1]), []).append(int(name))
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def cpu_seconds(roots: list[int]) -> float:
    """Total CPU seconds used so far by the trees under ``roots``."""
    ticks = 0
    for root in roots:
        for pid in tree(root):
            fields = _stat_fields(pid)
            if fields is not None:
                # fields after ')' start at index 0 = state; utime is field 14 overall
                ticks += sum(int(fields[i]) for i in (11, 12, 13, 14))
    return ticks / _TICK


def machine_busy_seconds() -> float:
    """CPU seconds all CPUs of the machine spent busy (not idle, not iowait) so far."""
    with open("/proc/stat", "rb") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest time is inside user)
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICK


def rss_bytes(pids: list[int]) -> int:
    """Resident memory of the given processes, summed."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as f:
                total += int(f.read().split()[1]) * _PAGE
        except (OSError, IndexError, ValueError):
            continue
    return total


class PeakRss:
    """Sample the RSS of process trees in a thread; ``peak`` is the highest sum seen."""

    def __init__(self, roots: list[int], interval: float = 0.1) -> None:
        self._roots = roots
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.peak = 0

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        pids: list[int] = []
        next_scan = 0.0
        while True:
            now = time.monotonic()
            if now >= next_scan:  # re-walking /proc is costlier than reading statm
                pids = [p for r in self._roots for p in tree(r)]
                next_scan = now + 1.0
            self.peak = max(self.peak, rss_bytes(pids))
            if self._stop.wait(self._interval):
                return

"""The product's processes during a chaos run: kill them, restart them, notice crashes, weigh them.

Each process kind runs in named slots ("dispatcher-2", "web-1"). A fault
kills a slot's process with SIGKILL (its whole process group: a qcluster's
workers die with it, as on a crashed node) and starts a new incarnation at
once, as a supervisor (systemd, Kubernetes) would. A process that exits on
its own is a crash: recorded with the end of its log, then restarted too,
so one crash does not end the run. Processes are started through the
benchmark harness (monitoring.bench.harness), which logs each to a file
and stops them all at the end, whatever happens.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

from monitoring.bench.harness import STOP_TIMEOUT_S, BenchProcess, Context, group_members

logger = logging.getLogger(__name__)

# Given the incarnation's label ("dispatcher-2.r3"), start it and return it.
Starter = Callable[[str], BenchProcess]


@dataclass(frozen=True)
class Crash:
    """A process that exited without being told to."""

    slot: str
    label: str
    at: float  # time.time()
    code: int | None
    log_path: str
    log_tail: str


@dataclass
class Slot:
    """One place in the fleet, filled by one process at a time."""

    name: str
    kind: str  # "dispatcher", "web", ...
    starter: Starter
    process: BenchProcess
    incarnation: int = 1
    kills: int = 0
    rss_start_kb: int | None = None
    rss_end_kb: int | None = None
    rss_peak_kb: int = 0

    @property
    def label(self) -> str:
        return self.name if self.incarnation == 1 else f"{self.name}.r{self.incarnation}"


@dataclass
class Fleet:
    """Every slot of the run, by name.

    Kills, restarts and crash checks during the run go through ``thread``,
    one thread, so a check never sees a process a fault killed before its
    successor is in place. That thread must outlive every process it
    started: the harness makes each child die with its parent (prctl
    PDEATHSIG), and for the kernel the parent is the thread that forked it.
    So ``close`` comes after the processes are stopped.
    """

    ctx: Context
    slots: dict[str, Slot] = field(default_factory=dict)
    crashes: list[Crash] = field(default_factory=list)
    thread: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="chaos-fleet")
    )

    def close(self) -> None:
        self.thread.shutdown(wait=True)

    def add(self, name: str, kind: str, starter: Starter) -> Slot:
        slot = Slot(name, kind, starter, starter(name))
        self.slots[name] = slot
        return slot

    def of_kind(self, kind: str) -> list[Slot]:
        return [slot for slot in self.slots.values() if slot.kind == kind]

    def kill(self, name: str) -> str:
        """SIGKILL the slot's process group, start the next incarnation; describe what died."""
        slot = self.slots[name]
        old = slot.process
        pids = group_members(old.pid)
        with suppress(ProcessLookupError):
            os.killpg(old.pid, signal.SIGKILL)
        self._forget(old)
        slot.kills += 1
        self._restart(slot)
        return f"killed {old.label} (pid {old.pid}, {len(pids)} processes), started {slot.label}"

    def kill_one(self, name: str, pid: int) -> str:
        """SIGKILL one process of a slot's group (a django-q2 worker); its parent replaces it."""
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        return f"killed pid {pid} of {self.slots[name].process.label}"

    def check(self) -> list[Crash]:
        """Record and restart every process that exited on its own; return the new crashes."""
        found = []
        for slot in self.slots.values():
            code = slot.process.popen.poll()
            if code is None:
                continue
            old = slot.process
            crash = Crash(
                slot.name, old.label, time.time(), code, str(old.log_path), old.log_tail()
            )
            logger.warning("%s exited with code %s; restarting it", old.label, code)
            self._forget(old)
            self._restart(slot)
            found.append(crash)
        self.crashes += found
        return found

    def measure_rss(self, *, start: bool = False, end: bool = False) -> None:
        """Read every slot's memory (its whole process group) into its start, end and peak."""
        for slot in self.slots.values():
            rss = group_rss_kb(slot.process.pid)
            if rss is None:
                continue
            slot.rss_peak_kb = max(slot.rss_peak_kb, rss)
            if start:
                slot.rss_start_kb = rss
            if end:
                slot.rss_end_kb = rss

    def _restart(self, slot: Slot) -> None:
        slot.incarnation += 1
        slot.process = slot.starter(slot.label)

    def _forget(self, process: BenchProcess) -> None:
        """Reap a dead process and its group, close its log, drop it from the harness's list."""
        try:
            process.popen.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            logger.warning("%s survived SIGKILL for %g s", process.label, STOP_TIMEOUT_S)
        # Killed children take a moment to go; only what outlives that is a leftover.
        deadline = time.monotonic() + 1.0
        while group_members(process.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        process.stop_leftovers()
        process.log_file.close()
        with suppress(ValueError):
            self.ctx.processes.remove(process)


def rss_kb(pid: int) -> int | None:
    """Return a process's resident memory (VmRSS) in kB, or None if it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return None


def group_rss_kb(pgid: int) -> int | None:
    """Return the summed VmRSS of a process group's live members (a qcluster and its workers)."""
    sizes = [size for pid in group_members(pgid) if (size := rss_kb(pid)) is not None]
    return sum(sizes) if sizes else None


def children(pid: int) -> list[int]:
    """Return the direct children of a process, from /proc."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError, ValueError, IndexError):
            text = stat.read_text()
            if int(text[text.rindex(")") + 2 :].split()[1]) == pid:
                found.append(int(stat.parent.name))
    return sorted(found)

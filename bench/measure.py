"""Run one command as a measured child: wall time, CPU time, peak memory, with a timeout.

The child gets its own session (process group). A helper thread blocks in `os.wait4`, which
returns the child's own rusage (user and system CPU, and ru_maxrss, which also covers
descendants it waited for); meanwhile the caller polls psutil for the summed RSS of the whole
process tree, which catches helpers that a single ru_maxrss would not add up. On timeout or
interruption the whole group is sent SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one finished (or killed) child cost."""

    returncode: int
    timed_out: bool
    wall: float  # seconds from spawn to exit
    cpu_user: float  # seconds
    cpu_sys: float  # seconds
    peak_rss: int  # bytes: max(ru_maxrss, polled sum over the process tree)

    @property
    def cpu(self) -> float:
        """User + system CPU seconds."""
        return self.cpu_user + self.cpu_sys


def tree_rss(proc: psutil.Process) -> int:
    """Resident set size of a process and all its descendants, in bytes (0 if gone)."""
    total = 0
    try:
        members = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.Error:
            continue
    return total


def _kill_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def run_measured(
    cmd: list[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    stdout: Path,
    stderr: Path,
    timeout: float,
    poll_interval: float = 0.1,
) -> Measurement:
    """Run `cmd` to completion (or until `timeout` seconds) and measure it."""
    reaped: list[tuple[int, resource.struct_rusage, float]] = []
    with open(stdout, "wb") as out, open(stderr, "wb") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
        )

    def reap() -> None:
        _, status, usage = os.wait4(proc.pid, 0)
        reaped.append((status, usage, time.perf_counter()))

    waiter = threading.Thread(target=reap, daemon=True)
    waiter.start()
    timed_out = False
    peak = 0
    try:
        ps = psutil.Process(proc.pid)
        while waiter.is_alive():
            peak = max(peak, tree_rss(ps))
            waiter.join(poll_interval)
            if waiter.is_alive() and time.perf_counter() - started > timeout:
                timed_out = True
                _kill_group(proc.pid, signal.SIGTERM)
                waiter.join(5.0)
                if waiter.is_alive():
                    _kill_group(proc.pid, signal.SIGKILL)
                    waiter.join()
    finally:
        if waiter.is_alive():  # interrupted (Ctrl-C): do not leave the child behind
            _kill_group(proc.pid, signal.SIGTERM)
            waiter.join(5.0)
            _kill_group(proc.pid, signal.SIGKILL)
            waiter.join()
        _kill_group(proc.pid, signal.SIGKILL)  # stragglers left in the child's group
    status, usage, ended = reaped[0]
    proc.returncode = os.waitstatus_to_exitcode(status)  # reaped by wait4, tell Popen
    return Measurement(
        returncode=proc.returncode,
        timed_out=timed_out,
        wall=ended - started,
        cpu_user=usage.ru_utime,
        cpu_sys=usage.ru_stime,
        peak_rss=max(peak, usage.ru_maxrss * 1024),
    )

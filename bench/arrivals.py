"""Request arrivals by packet capture: when each HTTP request reached a loopback port, by the kernel's clock.

nginx stamps a request with its clock as of the event-loop pass that read it, so a pass that
ran late gives requests written tens of milliseconds apart one time (bench/README.md, scale.py:
the gap violations left). tcpdump on `lo` stamps each packet as it crosses the interface, which
on loopback is the moment the client wrote it. Only packets to the site's port whose TCP payload
starts with "GET " are kept (a filter in the kernel), cut to their first bytes.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import os
import shutil
import signal
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

SNAPLEN = 160  # bytes kept of each packet: the headers and the request line's start
BUFFER_KIB = 32 * 1024  # the kernel's capture buffer: tcpdump's 2 MiB default dropped a few under load
# TCP payload's first four bytes == "GET ", at the offset the TCP header's data-offset field gives.
_GET_FILTER = "tcp dst port {port} and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x47455420"


def why_not() -> str:
    """Why no capture can be made here; empty when one can."""
    if shutil.which("tcpdump") is None:
        return "tcpdump is not installed (bash bench/setup.sh)"
    if os.geteuid() != 0:
        return "capturing needs root"
    return ""


@contextlib.contextmanager
def capture(port: int, path: Path) -> Iterator[None]:
    """Record every GET written to 127.0.0.x:port while the block runs, into path (pcap)."""
    proc = subprocess.Popen(
        [
            "tcpdump", "-i", "lo", "-n", "-U", "-s", str(SNAPLEN), "-B", str(BUFFER_KIB), "-w", str(path),
            "--time-stamp-precision=micro", _GET_FILTER.format(port=port),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )  # fmt: skip
    try:
        # tcpdump says "listening on lo" once its filter is in place; packets before that are lost.
        assert proc.stderr is not None
        deadline = time.monotonic() + 10
        while b"listening on" not in proc.stderr.readline():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tcpdump did not start (exit {proc.poll()})")
        yield
    finally:
        proc.send_signal(signal.SIGINT)  # writes what it holds, then exits
        try:
            _, tail = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, tail = proc.communicate()
        dropped = [line for line in tail.decode(errors="replace").splitlines() if "dropped by kernel" in line]
        if dropped and not dropped[0].startswith("0 "):
            print(f"  capture: {dropped[0]}", flush=True)


def starts_by_host(path: Path) -> dict[str, list[float]]:
    """Each destination address's request arrival times, in order, from a pcap file of `capture`."""
    data = path.read_bytes()
    magic, _, _, _, _, _, link = struct.unpack_from("<IHHiIII", data, 0)
    if magic != 0xA1B2C3D4:
        raise ValueError(f"{path}: not a little-endian microsecond pcap file")
    link_header = {1: 14, 113: 16, 0: 4}.get(link)  # Ethernet (lo), Linux cooked, BSD loopback
    if link_header is None:
        raise ValueError(f"{path}: link type {link} not read here")
    starts: dict[str, list[float]] = collections.defaultdict(list)
    offset = 24
    while offset + 16 <= len(data):
        seconds, micros, kept, _ = struct.unpack_from("<IIII", data, offset)
        packet = data[offset + 16 : offset + 16 + kept]
        offset += 16 + kept
        ip = packet[link_header:]
        if len(ip) >= 20 and ip[0] >> 4 == 4:
            starts[".".join(str(b) for b in ip[16:20])].append(seconds + micros / 1e6)
    for times in starts.values():
        times.sort()
    return dict(starts)


def gap_violations(starts: dict[str, list[float]], delay: float, tolerance: float) -> tuple[int, float]:
    """Arrivals closer than delay − tolerance to the host's previous one, and the closest gap seen."""
    violations, closest = 0, float("inf")
    for times in starts.values():
        for earlier, later in itertools.pairwise(times):
            gap = later - earlier
            closest = min(closest, gap)
            violations += gap < delay - tolerance
    return violations, closest

"""Scale benchmark: 1, 2, 4 and 8 crawler processes on one PostgreSQL crawl, each held to a fixed CPU share.

    python bench/scale.py [--hosts 100] [--pages-per-host 150] [--procs 1,2,4,8] [--cpu 0.1]
                          [--delay 0.02] [--per-host-concurrency 2] [--parse-workers 1] [--one-baseline]
                          [--smoke] [--pg-profile]

A generated site of `--hosts` hosts (127.0.0.2 …) is served by nginx, which logs every request
with its end time ($msec) and duration ($request_time). A throwaway PostgreSQL cluster
(tests/support/postgres.py) gets a fresh database per run. Each run starts N `python -m crawler
crawl` processes on one config; each process (and its parse worker) sits in its own cgroup v1
`cpu` child with cfs_quota_us/cfs_period_us = `--cpu`, so that N processes on a small machine
behave like N small machines. One more run stores in SQLite with one process and the same cap,
and the one-process PostgreSQL run is made again last: speed-ups are over the mean of the two.

Printed per run: pages stored, wall time, pages/s, speed-up over one process, PostgreSQL CPU
seconds per 1,000 pages (postmaster and backends, exited ones included through the
postmaster's reaped-children times), the crawlers' CPU as a share of their cap, duplicates
(page URLs nginx served more than once) and politeness violations (per host: more than
per_host_concurrency requests in flight at once, or two starts closer than `delay`), and how busy
the machine was: PostgreSQL's and nginx's cores, all cores' use, and the cores other processes took.
A second table splits each run into start-up, the steady state (every crawler fetching) and the
end: the drain, how unevenly the crawlers shared the last fifth of the page requests (the busiest
one's count ÷ the mean), how often a host changed crawler, and the exit.
"""

from __future__ import annotations

import argparse
import bisect
import collections
import compileall
import contextlib
import itertools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
sys.path.insert(0, str(REPO_ROOT))  # tests.support (the throwaway PostgreSQL), as bench/fairness.py does

import arrivals  # noqa: E402
import pg_profile  # noqa: E402
import psycopg  # noqa: E402
import sitegen  # noqa: E402
from servers import NginxServer, find_nginx, pick_port  # noqa: E402
from sitegen import Site, generate_site, multi_host_spec  # noqa: E402

from tests.support.postgres import PostgresServer, PostgresUnavailable  # noqa: E402

CGROUP_ROOT = Path("/sys/fs/cgroup/cpu")
CFS_PERIOD_US = 100_000
USER_AGENT = "crawler-bench/0.1 (+https://example.org/bench)"
RUN_TIMEOUT = 600.0  # seconds one run may take before it is killed and reported as failed
# After the user agent: which connection carried the request, its how-many-th it was there, and
# which nginx worker read it, so a gap violation tells a re-send from a hand-over (--show-violations).
LOG_FORMAT = (
    '$msec $request_time $server_addr $status "$request_uri" "$http_user_agent" $connection $connection_requests $pid'
)
SAMPLE_EVERY = 0.2  # seconds between two samples of each crawler's CPU time
AGAIN = "again"  # the label's tail of the second one-process run, made last
TAIL = 0.2  # the last fifth of a run's page requests: how evenly the crawlers share it says why the drain is long


# ---- CPU caps --------------------------------------------------------------------------------


class CpuCaps:
    """One cgroup v1 `cpu` child per crawler process, each with the same quota; removed on close."""

    def __init__(self, cpu: float) -> None:
        self.cpu = cpu
        self.made: list[Path] = []
        self.reason = ""  # why no cgroup could be made; empty when caps work
        self.tag = f"crawler-scale-{os.getpid()}"
        try:
            probe = self.make()
            self.remove(probe)
        except OSError as exc:
            self.reason = f"no cgroup can be made under {CGROUP_ROOT} ({exc.strerror or exc}): processes run UNCAPPED"

    @property
    def works(self) -> bool:
        return not self.reason

    def make(self) -> Path:
        """A new cgroup child with the quota; its path."""
        path = CGROUP_ROOT / f"{self.tag}-{len(self.made)}"
        path.mkdir()
        self.made.append(path)
        (path / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
        (path / "cpu.cfs_quota_us").write_text(str(max(1000, round(self.cpu * CFS_PERIOD_US))))
        return path

    def throttled_seconds(self, path: Path) -> float:
        """Time the group spent throttled so far (cpu.stat throttled_time, ns)."""
        with contextlib.suppress(OSError, ValueError):
            for line in (path / "cpu.stat").read_text().splitlines():
                key, value = line.split()
                if key == "throttled_time":
                    return int(value) / 1e9
        return 0.0

    def remove(self, path: Path) -> None:
        """rmdir the group, moving any process left in it back to the root first."""
        with contextlib.suppress(OSError):
            for pid in (path / "cgroup.procs").read_text().split():
                with contextlib.suppress(OSError):
                    (CGROUP_ROOT / "cgroup.procs").write_text(pid)
        with contextlib.suppress(OSError):
            path.rmdir()
        if path in self.made:
            self.made.remove(path)

    def close(self) -> None:
        for path in list(self.made):
            self.remove(path)


# ---- the server and the database ---------------------------------------------------------------


class LoggingNginx(NginxServer):
    """The bench's nginx, but logging every request with its end time and duration."""

    def config_text(self) -> str:
        # Buffered: a worker writing a line per request stalls on the disk now and then, and
        # stamps the requests that arrived meanwhile with one time (false gap violations).
        log = (
            f"  log_format scale '{LOG_FORMAT}';\n  access_log {self.workdir}/access.log scale buffer=256k flush=1s;\n"
        )
        return super().config_text().replace("  access_log off;\n", log)


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent not idle since boot (all cores)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))


def postgres_cpu_seconds(server: PostgresServer) -> float:
    """CPU of the postmaster, its live children and every child it has reaped (exited backends)."""
    pid = server.postmaster_pid()
    if pid is None:
        return 0.0
    top = psutil.Process(pid)
    t = top.cpu_times()
    total = float(t.user + t.system + t.children_user + t.children_system)
    for child in top.children():
        with contextlib.suppress(psutil.NoSuchProcess):
            c = child.cpu_times()
            total += c.user + c.system
    return total


# ---- the log -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LogCheck:
    requests: int
    duplicates: int  # page URLs served more than once (extra fetches counted)
    robots_fetches: int
    overlap_violations: int  # requests that started with per_host_concurrency others in flight to the host
    gap_violations: int  # starts closer than delay − tolerance to the previous start on the host
    closest_gap: float
    page_ends: tuple[float, ...] = ()  # end times ($msec) of page requests (robots.txt apart), sorted
    first_start: dict[int, float] = field(default_factory=dict)  # crawler index -> its first request's start
    last_end: dict[int, float] = field(default_factory=dict)  # crawler index -> its last request's end
    gap_pairs: tuple[tuple[str, str], ...] = ()  # the log lines of each gap violation: previous start, this one
    hand_overs: int = 0  # two requests in a row to one host by different crawlers
    tail_spread: float = 1.0  # the busiest crawler's share of the last TAIL of page requests ÷ the mean share

    def pages_between(self, start: float, end: float) -> int:
        """Page requests that ended within [start, end]."""
        return bisect.bisect_right(self.page_ends, end) - bisect.bisect_left(self.page_ends, start)


def crawler_index(user_agent: str) -> int | None:
    """Which crawler made a request: each one's user agent ends in ` p<index>` (config_text)."""
    tail = user_agent.rsplit(" ", 1)[-1]
    return int(tail[1:]) if tail[:1] == "p" and tail[1:].isdigit() else None


def check_log(path: Path, per_host: int, delay: float, tolerance: float) -> LogCheck:
    # Per host: (start, end, log line, crawler index) of each request.
    by_host: dict[str, list[tuple[float, float, str, int | None]]] = collections.defaultdict(list)
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    page_ends: list[float] = []
    page_starts: list[tuple[float, int | None]] = []
    robots = requests = 0
    for line in path.read_text().splitlines() if path.exists() else ():
        head, uri, _, agent, _ = line.split('"', 4)
        if not agent.startswith(USER_AGENT):
            continue  # the readiness probes, which a buffered log may write after it was emptied
        msec, took, host, _status = head.split()
        end = float(msec)
        start = end - float(took)
        who = crawler_index(agent)
        by_host[host].append((start, end, line, who))
        requests += 1
        if who is not None:
            first[who] = min(first.get(who, start), start)
            last[who] = max(last.get(who, end), end)
        if uri == "/robots.txt":
            robots += 1
        else:
            counts[host, uri] += 1
            page_ends.append(end)
            page_starts.append((start, who))
    duplicates = sum(n - 1 for n in counts.values() if n > 1)
    overlap = gaps = 0
    closest = float("inf")
    pairs: list[tuple[str, str]] = []
    hand_overs = 0
    for spans in by_host.values():
        spans.sort(key=lambda span: span[:3])
        hand_overs += sum(1 for a, b in itertools.pairwise(spans) if a[3] != b[3])
        ends: list[float] = []
        previous: tuple[float, float, str, int | None] | None = None
        for span in spans:
            start, end, line, _ = span
            ends = [e for e in ends if e > start]  # nginx logs in ms: a request ending as the next starts is over
            if len(ends) >= per_host:
                overlap += 1
            ends.append(end)
            if previous is not None:
                closest = min(closest, start - previous[0])
                if start - previous[0] < delay - tolerance:
                    gaps += 1
                    pairs.append((previous[2], line))
            previous = span
    page_ends.sort()
    return LogCheck(
        requests, duplicates, robots, overlap, gaps, closest, tuple(page_ends), first, last, tuple(pairs),
        hand_overs, tail_spread(page_starts, len(first)),
    )  # fmt: skip


def tail_spread(starts: list[tuple[float, int | None]], crawlers: int) -> float:
    """How unevenly the crawlers shared the last TAIL of the page requests (by start): the busiest
    one's count ÷ the mean. 1.0 is even; at 2.0 one crawler had twice its share left to do while
    others ran out, which is what keeps the drain long."""
    if crawlers < 2 or not starts:
        return 1.0
    ordered = sorted(starts, key=lambda s: s[0])
    tail = collections.Counter(who for _, who in ordered[int(len(ordered) * (1 - TAIL)) :])
    return max(tail.values()) * crawlers / sum(tail.values())


# ---- one run -----------------------------------------------------------------------------------


@dataclass(slots=True)
class Timeline:
    """One crawler process seen from outside: when it was started and when it exited (epoch
    seconds, as nginx's $msec), and its CPU time (with its parse worker's) sampled as it ran."""

    spawned: float
    exited: float = 0.0
    samples: list[tuple[float, float]] = field(default_factory=list)  # (epoch seconds, CPU seconds so far)

    def cpu_at(self, when: float) -> float:
        """CPU seconds used by `when`, interpolated between the samples around it."""
        points = [(self.spawned, 0.0), *self.samples]
        at = bisect.bisect_right(points, (when, float("inf")))
        if at == 0:
            return 0.0
        if at == len(points):
            return points[-1][1]
        (t0, c0), (t1, c1) = points[at - 1], points[at]
        return c0 + (c1 - c0) * (when - t0) / (t1 - t0) if t1 > t0 else c1


def tree_cpu(proc: psutil.Process) -> float | None:
    """CPU seconds of a process, its live children and those it reaped; None once it is gone."""
    try:
        t = proc.cpu_times()
        total = float(t.user + t.system + t.children_user + t.children_system)
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                c = child.cpu_times()
                total += c.user + c.system
    except psutil.NoSuchProcess:
        return None
    return float(total)


@dataclass(frozen=True, slots=True)
class Steady:
    """The run while every crawler fetched: from the last one's first request to the first one's last."""

    start: float
    end: float
    pages: int  # page requests that ended in the window
    crawler_cpu: float  # the crawlers' CPU seconds in the window

    @property
    def seconds(self) -> float:
        return self.end - self.start

    @property
    def rate(self) -> float:
        return self.pages / self.seconds if self.seconds > 0 else 0.0


@dataclass(slots=True)
class Result:
    label: str
    procs: int
    pages: int
    expected: int
    wall: float
    crawler_cpu: float
    pg_cpu: float | None
    throttled: float
    log: LogCheck
    nginx_cpu: float = 0.0
    machine_busy: float = 0.0  # CPU seconds every process on the machine used during the run
    failed: str = ""
    timelines: list[Timeline] = field(default_factory=list)
    # Gap violations and the closest gap by the packet capture (bench/arrivals.py); None without one.
    captured: tuple[int, float] | None = None

    @property
    def others(self) -> float:
        """CPU seconds of processes that are not this run's (other work on a shared machine)."""
        return max(0.0, self.machine_busy - self.crawler_cpu - (self.pg_cpu or 0.0) - self.nginx_cpu)

    @property
    def rate(self) -> float:
        return self.pages / self.wall if self.wall > 0 else 0.0

    def steady(self) -> Steady | None:
        """The window in which every crawler was fetching; None when there was none."""
        first, last = self.log.first_start, self.log.last_end
        if len(self.timelines) != self.procs or any(i not in first for i in range(self.procs)):
            return None
        start = max(first[i] for i in range(self.procs))
        end = min(last[i] for i in range(self.procs))
        if end <= start:
            return None
        cpu = sum(t.cpu_at(end) - t.cpu_at(start) for t in self.timelines)
        return Steady(start, end, self.log.pages_between(start, end), cpu)

    def start_ups(self) -> list[float]:
        """Seconds from each crawler's start to its first request."""
        first = self.log.first_start
        return [first[i] - t.spawned for i, t in enumerate(self.timelines) if i in first]

    def start_up_cpu(self) -> list[float]:
        """CPU seconds each crawler used before its first request (imports, parse worker, schema check)."""
        first = self.log.first_start
        return [t.cpu_at(first[i]) for i, t in enumerate(self.timelines) if i in first]

    def drain(self) -> float:
        """Seconds from the first crawler's last request to the last request of all: the end of the
        crawl, when fewer hosts than crawlers have work left."""
        ends = self.log.last_end.values()
        return max(ends) - min(ends) if ends else 0.0

    def exit_tail(self) -> float:
        """Seconds from the last request nginx served to the last crawler's exit."""
        ends = self.log.last_end.values()
        return max(t.exited for t in self.timelines) - max(ends) if ends and self.timelines else 0.0


def config_text(site: Site, args: argparse.Namespace, storage: str, index: int) -> str:
    """The crawl's config for crawler `index`: all alike but the user agent's tail, which tells
    nginx's log which crawler made a request."""
    return (
        "[crawl]\n"
        f"seeds = {json.dumps(site.seeds)}\n"
        "allowed_hosts = []\nmax_pages = 0\nmax_depth = 100\n"
        f"parse_workers = {args.parse_workers}\n"
        "[politeness]\n"
        f"user_agent = {json.dumps(f'{USER_AGENT} p{index}')}\n"
        f"concurrency = {args.concurrency}\n"
        f"per_host_concurrency = {args.per_host_concurrency}\n"
        f"delay = {args.delay}\n"
        "adaptive = false\nmax_delay = 1.0\n"
        "[http]\nhttp2 = false\n"
        f"[storage]\n{storage}"
    )


def child_env(tree: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH", "")]))
    return env


def run_crawlers(
    configs: list[Path], caps: CpuCaps, workdir: Path, tree: Path
) -> tuple[float, float, float, str, list[Timeline]]:
    """Start one crawler per config, each in its own cgroup, the code from `tree`; wall, CPU and
    throttled seconds, a failure, and each crawler's timeline."""
    procs = len(configs)
    groups = [caps.make() for _ in range(procs)] if caps.works else []
    children: list[subprocess.Popen[bytes]] = []
    watched: list[psutil.Process | None] = []
    timelines: list[Timeline] = []
    failure = ""
    cpu = 0.0
    try:
        started = time.monotonic()
        for i, config in enumerate(configs):
            join = str(groups[i] / "cgroup.procs") if groups else None

            def enter_cgroup(target: str | None = join) -> None:
                if target is not None:  # before exec, so the parse worker is born inside the cap too
                    Path(target).write_text(str(os.getpid()))

            err = open(workdir / f"crawler-{i}.err", "wb")  # noqa: SIM115 - handed to the child
            with err:
                timelines.append(Timeline(time.time()))
                children.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "crawler", "crawl", str(config), "-q"],
                        stdin=subprocess.DEVNULL,
                        stdout=subprocess.DEVNULL,
                        stderr=err,
                        env=child_env(tree),
                        cwd=workdir,
                        preexec_fn=enter_cgroup,
                    )
                )
            try:
                watched.append(psutil.Process(children[-1].pid))
            except psutil.NoSuchProcess:
                watched.append(None)
        deadline = started + RUN_TIMEOUT
        pending = {child.pid: i for i, child in enumerate(children)}
        next_sample = 0.0
        while pending:
            pid, status, usage = os.wait4(-1, os.WNOHANG)
            if pid == 0:
                if time.monotonic() >= next_sample:
                    next_sample = time.monotonic() + SAMPLE_EVERY
                    for i in pending.values():
                        process = watched[i]
                        spent = tree_cpu(process) if process is not None else None
                        if spent is not None:
                            timelines[i].samples.append((time.time(), spent))
                if time.monotonic() > deadline:
                    failure = failure or "timed out"
                    for i in pending.values():
                        children[i].kill()
                time.sleep(0.01)
                continue
            if pid not in pending:
                continue
            index = pending.pop(pid)
            spent = usage.ru_utime + usage.ru_stime
            cpu += spent
            timelines[index].exited = time.time()
            timelines[index].samples.append((timelines[index].exited, spent))
            code = os.waitstatus_to_exitcode(status)
            children[index].returncode = code
            if code != 0 and not failure:
                stderr = (workdir / f"crawler-{index}.err").read_text(errors="replace")
                failure = f"crawler {index} exited {code}: {stderr[-400:]}"
        wall = time.monotonic() - started
        throttled = sum(caps.throttled_seconds(g) for g in groups)
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                child.wait()
        for group in groups:
            caps.remove(group)
    return wall, cpu, throttled, failure, timelines


def one_run(
    label: str, procs: int, site: Site, args: argparse.Namespace, caps: CpuCaps, pg: PostgresServer | None, root: Path
) -> Result:
    workdir = root / label.replace(" ", "-")
    workdir.mkdir()
    nginx_binary = find_nginx()
    assert nginx_binary is not None
    server = LoggingNginx(site, workdir / "nginx", 1, nginx_binary)
    server.start()
    (workdir / "nginx" / "access.log").write_text("")  # drop the readiness probes (nginx appends)
    try:
        if pg is not None:
            url = pg.create_database()
            storage = f'url = "{url}"\nlease_seconds = 10\n'
        else:
            db = workdir / "crawl.db"
            storage = f"path = {json.dumps(str(db))}\n"
        configs = [workdir / f"crawl-{i}.toml" for i in range(procs)]
        for i, config in enumerate(configs):
            config.write_text(config_text(site, args, storage, i))
        subprocess.run(["sync"], check=False)
        if pg is not None and args.pg_profile:
            pg_profile.prepare(url)
        pg_before = postgres_cpu_seconds(pg) if pg is not None else 0.0
        nginx_before, machine_before = server.cpu_seconds(), busy_seconds()
        postmaster = pg.postmaster_pid() if pg is not None and args.pg_profile else None
        pcap = workdir / "requests.pcap"
        with contextlib.ExitStack() as around:
            if args.capture:
                around.enter_context(arrivals.capture(site.port, pcap))
            if postmaster is not None:
                spent = pg_profile.baseline(postmaster)
                sampler = around.enter_context(pg_profile.ProcessSampler(postmaster))
            wall, cpu, throttled, failure, timelines = run_crawlers(configs, caps, workdir, args.tree)
        nginx_cpu, machine_busy = server.cpu_seconds() - nginx_before, busy_seconds() - machine_before
        pg_cpu = None
        if pg is not None:
            time.sleep(0.5)  # the backends of exited crawlers exit and are reaped
            pg_cpu = postgres_cpu_seconds(pg) - pg_before
            if postmaster is not None:
                spent_by_kind = sorted(sampler.by_kind(spent).items(), key=lambda kv: -kv[1])
                kinds = ", ".join(f"{k} {v:.2f}" for k, v in spent_by_kind)
                print(f"  {label}: PG CPU {pg_cpu:.2f} s; sampled by process kind (s): {kinds}")
                print(pg_profile.statements(url))
        if failure:  # a crawler that never started leaves no tables to count
            pages = 0
        elif pg is not None:
            with psycopg.connect(url) as conn:
                pages = int(conn.execute("SELECT count(*) FROM pages").fetchone()[0])  # type: ignore[index]
        else:
            import sqlite3

            with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
                pages = int(conn.execute("SELECT count(*) FROM pages").fetchone()[0])
    finally:
        server.stop()
    log = check_log(workdir / "nginx" / "access.log", args.per_host_concurrency, args.delay, args.tolerance)
    if not failure and pages != site.expected_pages:
        failure = f"stored {pages} of {site.expected_pages} pages"
    captured = None
    if args.capture:
        starts = arrivals.starts_by_host(pcap)
        seen = sum(map(len, starts.values()))
        if seen != log.requests:
            print(f"  {label}: the capture saw {seen} requests, nginx {log.requests}")
        captured = arrivals.gap_violations(starts, args.delay, args.tolerance)
    return Result(
        label, procs, pages, site.expected_pages, wall, cpu, pg_cpu, throttled, log, nginx_cpu, machine_busy, failure,
        timelines, captured,
    )  # fmt: skip


# ---- report ------------------------------------------------------------------------------------


def print_gap_pairs(pairs: tuple[tuple[str, str], ...]) -> None:
    """Each gap violation as nginx logged its two requests (LOG_FORMAT), start time first.

    A later request that is its connection's first ($connection_requests 1) from the same crawler
    was most likely sent again after a dropped connection; two crawlers' requests around a host's
    hand-over point at the lease; several unrelated requests read in the same millisecond after
    a pause point at nginx reading late (its clock is updated once per batch of events)."""
    for before, after in pairs:
        print("  gap violation:")
        for line in (before, after):
            head = line.split('"', 1)[0].split()
            start = float(head[0]) - float(head[1])
            print(f"    start {start:.3f}  {line}")


def one_process_runs(results: list[Result]) -> list[Result]:
    """The one-process PostgreSQL runs, first and last, that speed-ups are taken over."""
    return [r for r in results if r.procs == 1 and r.label.startswith("postgresql")]


def baseline(rates: list[float]) -> float:
    """The mean of the one-process runs' rates (so that the machine's speed drifting during the
    bench moves the ratios less); 0 without one."""
    rates = [r for r in rates if r > 0]
    return sum(rates) / len(rates) if rates else 0.0


def store_cell(r: Result) -> str:
    return r.label.split()[0] + (" (again)" if r.label.endswith(AGAIN) else "")


def table(results: list[Result], args: argparse.Namespace, cap_note: str) -> str:
    singles = one_process_runs(results)
    base = baseline([r.rate for r in singles])
    sqlite = next((r for r in results if r.label.startswith("sqlite")), None)
    head = (
        "| store | processes | pages stored | wall s | pages/s | speed-up | PG CPU s / 1,000 pages "
        "| crawler CPU s / 1,000 pages | crawler CPU % of cap | throttled s | duplicates | violations (overlap / gap) "
        "| robots.txt fetches | closest gap ms | gap violations / closest ms, captured "
        "| PG cores | nginx cores | machine CPU % | others' cores |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        speed = f"{r.rate / base:.2f}×" if base and r.label.startswith("postgresql") else "–"
        pg = f"{r.pg_cpu / r.pages * 1000:.2f}" if r.pg_cpu is not None and r.pages else "–"
        own = f"{r.crawler_cpu / r.pages * 1000:.2f}" if r.pages else "–"
        share = f"{100 * r.crawler_cpu / (r.procs * args.cpu * r.wall):.0f}" if r.wall else "–"
        gap = f"{r.log.closest_gap * 1000:.0f}" if r.log.closest_gap != float("inf") else "–"
        captured = f"{r.captured[0]} / {r.captured[1] * 1000:.1f}" if r.captured is not None else "–"
        pg_cores = f"{r.pg_cpu / r.wall:.2f}" if r.pg_cpu is not None and r.wall else "–"
        cores = psutil.cpu_count() or 1
        use = (
            f"| {pg_cores} | {r.nginx_cpu / r.wall:.2f} | {100 * r.machine_busy / (cores * r.wall):.0f} "
            f"| {r.others / r.wall:.2f} |"
            if r.wall
            else "| – | – | – | – |"
        )
        rows.append(
            f"| {store_cell(r)} | {r.procs} | {r.pages:,}/{r.expected:,}{' FAILED' if r.failed else ''} "
            f"| {r.wall:.1f} | {r.rate:,.0f} | {speed} | {pg} | {own} | {share} | {r.throttled:.1f} "
            f"| {r.log.duplicates} | {r.log.overlap_violations} / {r.log.gap_violations} "
            f"| {r.log.robots_fetches} | {gap} | {captured} {use}"
        )
    lines = [cap_note, "", "Wall clock (first start to last exit):", "", head + "\n".join(rows)]
    if len(singles) > 1:
        walls = " and ".join(f"{r.wall:.1f} s" for r in singles)
        lines.append(f"\nSpeed-ups are over the mean rate of the {len(singles)} one-process runs ({walls}).")
    if base and sqlite and sqlite.rate:
        lines.append(f"\nPostgreSQL, 1 process ÷ SQLite, 1 process: {base / sqlite.rate:.2f}× (goal ≥ 0.8×)")
    lines += ["", "Start-up, steady state (every crawler fetching) and end:", "", steady_table(results, args)]
    for r in results:
        if r.failed:
            lines.append(f"\n{r.label}: FAILED: {r.failed.strip()}")
    return "\n".join(lines)


def steady_table(results: list[Result], args: argparse.Namespace) -> str:
    """Start-up, the steady state (every crawler fetching) and the end, per run."""
    steadies = [r.steady() for r in one_process_runs(results)]
    base = baseline([s.rate for s in steadies if s is not None])
    head = (
        "| store | processes | start-up s (median / max) | start-up CPU s per process | steady s (% of wall) "
        "| pages in steady | steady pages/s | steady speed-up | steady crawler CPU s / 1,000 pages "
        "| steady crawler CPU % of cap | drain s | last fifth's busiest crawler ÷ mean | hand-overs | exit s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    rows = []
    for r in results:
        ups, up_cpu, steady = sorted(r.start_ups()), r.start_up_cpu(), r.steady()
        up = f"{ups[len(ups) // 2]:.1f} / {ups[-1]:.1f}" if ups else "–"
        up_c = f"{sum(up_cpu) / len(up_cpu):.2f}" if up_cpu else "–"
        if steady is None or not steady.pages:
            cells = "| – | – | – | – | – | – |"
        else:
            speed = f"{steady.rate / base:.2f}×" if base and r.label.startswith("postgresql") else "–"
            share = 100 * steady.crawler_cpu / (r.procs * args.cpu * steady.seconds)
            cells = (
                f"| {steady.seconds:.1f} ({100 * steady.seconds / r.wall:.0f}) | {steady.pages:,} | {steady.rate:,.0f} "
                f"| {speed} | {steady.crawler_cpu / steady.pages * 1000:.2f} | {share:.0f} |"
            )
        rows.append(
            f"| {store_cell(r)} | {r.procs} | {up} | {up_c} {cells} {r.drain():.1f} | {r.log.tail_spread:.2f} "
            f"| {r.log.hand_overs} | {r.exit_tail():.1f} |"
        )
    return head + "\n".join(rows)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--pages-per-host", type=int, default=150)
    parser.add_argument("--procs", default="1,2,4,8", help="comma-separated process counts")
    parser.add_argument(
        "--cpu", type=float, default=0.1,
        help="CPU share of each crawler process (cgroup quota); 8 × 0.1 leaves PostgreSQL and nginx room on 2 cores",
    )  # fmt: skip
    parser.add_argument(
        "--parse-workers", type=int, default=1, help="crawl.parse_workers of every crawler (1: the default)"
    )
    parser.add_argument("--delay", type=float, default=0.02, help="politeness.delay, seconds between starts per host")
    parser.add_argument("--per-host-concurrency", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32, help="politeness.concurrency of each process")
    parser.add_argument(
        "--tolerance", type=float, default=0.005,
        help="seconds a start may come early against delay before it counts as a violation (nginx logs in ms)",
    )  # fmt: skip
    parser.add_argument(
        "--cross-host-links", type=float, default=None,
        help="share of pages with a link to another host (sitegen's default when not given; 0: hosts never overlap)",
    )  # fmt: skip
    parser.add_argument("--no-sqlite", action="store_true", help="skip the SQLite comparison row")
    parser.add_argument(
        "--one-baseline", action="store_true",
        help="run one process once, first (by default it runs again last, and speed-ups are over the mean)",
    )  # fmt: skip
    parser.add_argument(
        "--pg-profile", action="store_true",
        help="load pg_stat_statements; print per run the statements and server processes PostgreSQL's time went to",
    )  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny: 10 hosts, 10 pages each, 1 and 2 processes")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (site, logs)")
    parser.add_argument(
        "--show-violations", action="store_true", help="print both log lines of every gap violation after each run"
    )
    parser.add_argument(
        "--tree", type=Path, default=REPO_ROOT,
        help="the source tree whose `crawler` the crawlers run (e.g. an older commit's `git archive`): before/after",
    )  # fmt: skip
    parser.add_argument("--no-capture", action="store_true", help="no packet capture of request arrivals")
    args = parser.parse_args(argv)
    args.tree = args.tree.resolve()  # the crawlers run in their own working directories
    args.capture = not args.no_capture and not arrivals.why_not()
    if args.smoke:
        args.hosts, args.pages_per_host, args.procs = 10, 10, "1,2"
    args.proc_counts = [int(p) for p in args.procs.split(",") if p.strip()]
    return args


@contextlib.contextmanager
def workspace(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="crawler-scale-"))
    root.chmod(0o755)  # nginx workers run as nobody when started by root
    try:
        yield root
    finally:
        if keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if find_nginx() is None:
        print("nginx is not installed (bash bench/setup.sh): the scale bench needs its access log", file=sys.stderr)
        return 2
    caps = CpuCaps(args.cpu)
    cap_note = (
        f"each crawler process capped at {args.cpu:g} CPU (cgroup v1 cpu quota {round(args.cpu * CFS_PERIOD_US)}"
        f"/{CFS_PERIOD_US} µs); PostgreSQL and nginx uncapped"
        if caps.works
        else f"UNCAPPED: {caps.reason}"
    )
    print(cap_note, flush=True)
    if not args.no_capture and arrivals.why_not():
        print(f"no packet capture of request arrivals: {arrivals.why_not()}", flush=True)
    try:
        pg = PostgresServer.start(settings=pg_profile.SETTINGS if args.pg_profile else None)
    except PostgresUnavailable as exc:
        print(f"no PostgreSQL: {exc}", file=sys.stderr)
        caps.close()
        return 2
    # Compiled once here, as installing the package does: with PYTHONDONTWRITEBYTECODE set, or a
    # stale __pycache__, every crawler would compile every changed module at its start.
    compileall.compile_dir(args.tree / "crawler", quiet=1)
    results: list[Result] = []
    try:
        with workspace(args.keep) as root:
            if args.cross_host_links is not None:
                sitegen.CROSS_HOST_PROBABILITY = args.cross_host_links
            spec = multi_host_spec(args.hosts, args.pages_per_host)
            site = generate_site(spec, root / "site", pick_port(spec.hosts))
            for path in (root / "site").rglob("*"):
                path.chmod(0o755 if path.is_dir() else 0o644)
            (root / "site").chmod(0o755)
            print(
                f"site: {args.hosts} hosts × {args.pages_per_host} pages, nginx, delay {args.delay:g} s, "
                f"per_host_concurrency {args.per_host_concurrency}, concurrency {args.concurrency} per process; "
                f"{psutil.cpu_count()} cores",
                flush=True,
            )
            plan: list[tuple[str, int, PostgresServer | None]] = [(f"postgresql {n}", n, pg) for n in args.proc_counts]
            if not args.no_sqlite:
                plan.append(("sqlite 1", 1, None))
            if 1 in args.proc_counts and len(plan) > 1 and not args.one_baseline:
                plan.append((f"postgresql 1 {AGAIN}", 1, pg))
            for label, n, store in plan:
                result = one_run(label, n, site, args, caps, store, root)
                results.append(result)
                print(
                    f"{label:>13}: {result.pages}/{result.expected} pages in {result.wall:.1f} s "
                    f"({result.rate:,.0f} pages/s){' FAILED: ' + result.failed if result.failed else ''}",
                    flush=True,
                )
                if args.show_violations:
                    print_gap_pairs(result.log.gap_pairs)
    finally:
        caps.close()
        pg.stop()
    print()
    print(table(results, args, cap_note))
    bad = any(r.failed for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

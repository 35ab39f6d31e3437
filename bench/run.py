"""Benchmark harness: our crawler against Scrapy and a minimal aiohttp crawler, in one run.

    .venv/bin/python bench/run.py [--site single|multi|both] [--protocol http|https|both]
                                  [--pages N] [--smoke] [--only crawler,scrapy,aiohttp-min] [--strict]

For each site (single: one host with N pages; multi: H hosts on 127.0.0.2… with N/H pages
each) it generates deterministic HTML, serves it on loopback (nginx if installed, else an
aiohttp server), measures the server's raw throughput, then runs each contestant one after
the other with equal settings (robots obeyed, no delay; single: 8 in flight; multi: 64 in
flight and 2 per host), over http and over https (the same site served by nginx with TLS from
a private trustme CA, HTTP/2 and HTTP/1.1 by ALPN; every contestant trusts that CA and
verifies certificates; --smoke serves only the single site over https).
It prints pages/s, CPU seconds, peak RSS and the server's CPU share
per run, then markdown tables with ratios, and writes them to bench/out/.

Exit status: 0 if every contestant that ran stored exactly the expected number of pages;
1 if one failed, timed out or stored a wrong count (or, with --strict, was skipped);
2 if the harness itself could not set up (bad arguments, server would not start).
Everything lives in one temporary folder that is removed at the end (unless --keep).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import psutil
from contestants import ALL, Contestant, Job, Settings, child_env
from measure import run_measured
from servers import NginxServer, PythonServer, Server, Tls, find_nginx, make_tls, pick_port
from sitegen import Site, SiteSpec, generate_site, multi_host_spec, single_host_spec

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_ORDER = ("crawler", "scrapy", "aiohttp-min")
NOISY_PCT = 20


@dataclass(slots=True)
class Result:
    """One contestant on one site."""

    site: str
    contestant: str
    status: str  # ok | skipped | failed | timeout | wrong count
    expected: int
    pages: int = 0
    wall: float = 0.0
    cpu: float = 0.0
    peak_rss_mb: float = 0.0
    server_cpu_pct: float = 0.0
    other_cpu_pct: float = 0.0  # CPU busy on the machine that was neither contestant nor server
    note: str = ""
    tries: list[float] = field(default_factory=list)  # pages/s of every repetition

    @property
    def pages_per_s(self) -> float:
        """Pages stored per wall-clock second (process start to exit)."""
        return self.pages / self.wall if self.wall > 0 else 0.0

    @property
    def pages_per_cpu_s(self) -> float:
        """Pages stored per CPU second of the contestant: efficiency, less hurt by a busy machine."""
        return self.pages / self.cpu if self.cpu > 0 else 0.0

    @property
    def ran(self) -> bool:
        """Whether it was started at all."""
        return self.status != "skipped"


@dataclass(slots=True)
class RawResult:
    """Raw server throughput from one load client."""

    site: str
    client: str
    requests: int
    req_per_s: float
    mb_per_s: float
    errors: int
    client_cpu_pct: float
    server_cpu_pct: float


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command line; --smoke changes the defaults to a tiny, seconds-long run."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--site", choices=("single", "multi", "both"), default="both")
    p.add_argument(
        "--protocol",
        choices=("http", "https", "both"),
        default="both",
        help="serve the sites over http, https (TLS, HTTP/2 offered) or both (default; smoke: https single only)",
    )
    p.add_argument(
        "--pages",
        type=int,
        help="pages of the single-host site and of the multi site in all (default 10000; smoke 200)",
    )
    p.add_argument("--hosts", type=int, help="hosts of the multi site (default 50; smoke 5)")
    p.add_argument("--host-pages", type=int, help="pages per host of the multi site (default pages/hosts; smoke 20)")
    p.add_argument("--smoke", action="store_true", help="tiny sites: check that the harness works, not speed")
    p.add_argument("--only", default=",".join(DEFAULT_ORDER), help="comma-separated contestants, run in this order")
    p.add_argument("--repeat", type=int, default=1, help="runs per contestant and site; the best pages/s counts")
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=0.0,
        help="before each run, wait up to this many seconds for the machine to be idle (for shared machines)",
    )
    p.add_argument("--strict", action="store_true", help="a skipped contestant is an error too")
    p.add_argument("--server", choices=("auto", "nginx", "python"), default="auto")
    p.add_argument("--server-workers", type=int, help="server processes (default: nginx 1, python 2; smoke 1)")
    p.add_argument("--timeout", type=float, help="seconds per contestant run (default 900; smoke 120)")
    p.add_argument("--single-concurrency", type=int, default=8, help="in flight on the single-host site")
    p.add_argument("--multi-concurrency", type=int, default=64, help="in flight globally on the multi site")
    p.add_argument("--multi-per-host", type=int, default=2, help="in flight per host on the multi site")
    p.add_argument("--seed", type=int, default=1, help="site generator seed")
    p.add_argument("--out", default=str(BENCH_DIR / "out"), help="folder for the results (.md, .json); '' = none")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (sites, logs, stores)")
    args = p.parse_args(argv)
    args.pages = args.pages or (200 if args.smoke else 10_000)
    args.hosts = args.hosts or (5 if args.smoke else 50)
    args.host_pages = args.host_pages or (20 if args.smoke else max(1, args.pages // args.hosts))
    args.timeout = args.timeout or (120.0 if args.smoke else 900.0)
    names = [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in ALL]
    if unknown or not names:
        p.error(f"--only: unknown contestant(s) {', '.join(unknown) or '(none)'}; known: {', '.join(ALL)}")
    args.only = names
    return args


def plan(args: argparse.Namespace) -> list[tuple[SiteSpec, Settings]]:
    """The sites to run and the settings for each."""
    runs: list[tuple[SiteSpec, Settings]] = []
    schemes = ("http", "https") if args.protocol == "both" else (args.protocol,)
    for scheme in schemes:
        # The smoke run keeps to seconds: over both protocols, https serves the single site only.
        brief = args.smoke and args.protocol == "both" and scheme == "https"
        if args.site in ("single", "both"):
            settings = Settings(args.single_concurrency, args.single_concurrency)
            runs.append((single_host_spec(args.pages, args.seed, scheme), settings))
        if args.site in ("multi", "both") and not (brief and args.site == "both"):
            spec = multi_host_spec(args.hosts, args.host_pages, args.seed, scheme)
            runs.append((spec, Settings(args.multi_concurrency, args.multi_per_host)))
    return runs


def make_server(args: argparse.Namespace, site: Site, workdir: Path, tls: Tls | None = None) -> Server:
    """nginx if wanted and found, else the aiohttp server; explains the choice."""
    nginx = find_nginx()
    if args.server == "nginx" and not nginx:
        raise SystemExit("nginx not found: install it with `apt-get install -y nginx-light` or bash bench/setup.sh")
    if nginx and args.server != "python":
        return NginxServer(site, workdir, args.server_workers or 1, nginx, tls)
    if args.server == "auto" and args.smoke:
        print("  (nginx not found: the smoke run uses the aiohttp server, which is fine for checking the harness)")
    elif args.server == "auto":
        print(
            "! nginx not found; serving with the aiohttp fallback server, which competes for the same cores.\n"
            "  Install nginx for trustworthy figures: apt-get install -y nginx-light (or bash bench/setup.sh)"
        )
    return PythonServer(site, workdir, args.server_workers or (1 if args.smoke else 2), tls)


def measure_raw(site: Site, server: Server, workdir: Path, smoke: bool) -> list[RawResult]:
    """Raw server throughput: the aiohttp load client over every page, and wrk if installed."""
    results: list[RawResult] = []
    urls_file = workdir / "urls.txt"
    urls_file.write_text("\n".join(site.urls) + "\n")
    clients: list[tuple[str, list[str]]] = [
        (
            "aiohttp keep-alive, 64 conns, all pages",
            [sys.executable, str(BENCH_DIR / "rawload.py"), str(urls_file), "64", "0.5" if smoke else "3"]
            + ([str(server.tls.ca_pem)] if server.tls else []),
        ),
    ]
    wrk = shutil.which("wrk")
    if wrk and not smoke:
        target = site.urls[min(7, len(site.urls) - 1)]
        clients.append(("wrk, 1 thread, 64 conns, one page", [wrk, "-t1", "-c64", "-d3s", "--timeout", "5s", target]))
    for label, cmd in clients:
        before = server.cpu_seconds()
        m = run_measured(
            cmd, cwd=BENCH_DIR, env=child_env(), stdout=workdir / "raw.out", stderr=workdir / "raw.err", timeout=120
        )
        server_cpu = server.cpu_seconds() - before
        out = (workdir / "raw.out").read_text()
        if m.returncode != 0:
            print(f"  raw load ({label}) failed: {(workdir / 'raw.err').read_text()[-300:]}")
            continue
        if cmd[0] == wrk:
            req = re.search(r"Requests/sec:\s+([\d.]+)", out)
            rate = re.search(r"Transfer/sec:\s+([\d.]+)(\w+)", out)
            total = re.search(r"(\d+) requests in", out)
            errors = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
            scale = {"KB": 1e-3, "MB": 1.0, "GB": 1e3}.get(rate.group(2), 0.0) if rate else 0.0
            figures = {
                "requests": int(total.group(1)) if total else 0,
                "req_per_s": float(req.group(1)) if req else 0.0,
                "mb_per_s": round(float(rate.group(1)) * scale * 1.048576, 1) if rate else 0.0,
                "errors": int(errors.group(1)) if errors else 0,
            }
        else:
            figures = json.loads(out.strip().splitlines()[-1])
        result = RawResult(
            site=site.spec.label,
            client=label,
            requests=int(figures["requests"]),
            req_per_s=float(figures["req_per_s"]),
            mb_per_s=float(figures["mb_per_s"]),
            errors=int(figures["errors"]),
            client_cpu_pct=100 * m.cpu / m.wall,
            server_cpu_pct=100 * server_cpu / m.wall,
        )
        print(
            f"  raw throughput ({label}): {result.req_per_s:,.0f} req/s, {result.mb_per_s:,.0f} MB/s, "
            f"client CPU {result.client_cpu_pct:.0f}%, server CPU {result.server_cpu_pct:.0f}%"
            + (f", {result.errors} errors" if result.errors else "")
        )
        results.append(result)
    return results


def busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (all cores, neither idle nor waiting on I/O)."""
    times = psutil.cpu_times()
    return float(sum(times) - times.idle - getattr(times, "iowait", 0.0))


def wait_for_quiet(max_wait: float, threshold_pct: float = NOISY_PCT) -> None:
    """Wait (at most `max_wait` s) for a second in which other processes use < threshold % of a core."""
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        before = busy_seconds()
        time.sleep(1.0)
        if 100 * (busy_seconds() - before) < threshold_pct:
            return
    if max_wait > 0:
        print(f"  (the machine stayed busy for {max_wait:.0f} s; running anyway)")


def run_one(contestant: Contestant, job: Job, server: Server) -> Result:
    """Run one contestant on one site and judge its page count."""
    site = job.site
    result = Result(site=site.spec.label, contestant=contestant.name, status="ok", expected=site.expected_pages)
    job.workdir.mkdir(parents=True, exist_ok=True)
    cmd = contestant.command(job)
    before, busy_before = server.cpu_seconds(), busy_seconds()
    m = run_measured(
        cmd,
        cwd=contestant.cwd(),
        env=child_env(),
        stdout=job.workdir / "stdout.log",
        stderr=job.workdir / "stderr.log",
        timeout=job.timeout,
    )
    server_cpu, busy = server.cpu_seconds() - before, busy_seconds() - busy_before
    result.server_cpu_pct = 100 * server_cpu / m.wall
    result.other_cpu_pct = max(0.0, 100 * (busy - server_cpu - m.cpu) / m.wall)
    result.wall, result.cpu, result.peak_rss_mb = m.wall, m.cpu, m.peak_rss / 2**20
    try:
        result.pages = contestant.count(job, (job.workdir / "stdout.log").read_text(errors="replace"))
    except Exception as exc:  # any failure to read the output fails the run
        result.note = f"could not count pages: {exc}"
    if m.timed_out:
        result.status, result.note = "timeout", f"killed after {job.timeout:.0f} s"
    elif m.returncode != 0:
        tail = (job.workdir / "stderr.log").read_text(errors="replace").strip().splitlines()[-3:]
        result.status, result.note = "failed", f"exit {m.returncode}: {' | '.join(tail)}"
    elif result.pages != result.expected:
        result.status = "wrong count"
        result.note = result.note or f"stored {result.pages}, expected {result.expected}"
    return result


def run_repeated(
    contestant: Contestant, site: Site, settings: Settings, server: Server, tmp: Path, args: argparse.Namespace
) -> Result:
    """`--repeat` runs of one contestant; a failed run wins (to be reported), else the fastest."""
    tries: list[Result] = []
    for k in range(max(1, args.repeat)):
        folder = tmp / f"{site.spec.label.replace(' ', '-')}-{contestant.name}-{k}"
        job = Job(site, settings, folder, args.timeout, server.tls.ca_pem if server.tls else None)
        # The previous run's files (a crawl database is hundreds of MB) are written back by the
        # kernel after it exits; without this, that work is billed to the next contestant.
        os.sync()
        wait_for_quiet(args.quiet_wait)
        result = run_one(contestant, job, server)
        print(fmt_result(result))
        tries.append(result)
        if not args.keep:
            shutil.rmtree(job.workdir, ignore_errors=True)
        if result.status != "ok":
            return result
    best = max(tries, key=lambda r: r.pages_per_s)
    if len(tries) > 1:
        best.tries = [r.pages_per_s for r in tries]
    return best


def fmt_result(r: Result) -> str:
    """One progress line."""
    if not r.ran:
        return f"  {r.contestant}: skipped: {r.note}"
    line = (
        f"  {r.contestant}: {r.pages:,}/{r.expected:,} pages in {r.wall:.1f} s = {r.pages_per_s:,.0f} pages/s, "
        f"CPU {r.cpu:.1f} s ({100 * r.cpu / r.wall:.0f}%), peak RSS {r.peak_rss_mb:.0f} MB, "
        f"server CPU {r.server_cpu_pct:.0f}%, other load {r.other_cpu_pct:.0f}%"
    )
    return line if r.status == "ok" else f"{line}\n  !! {r.contestant}: {r.status}: {r.note}"


def _ratio(ours: Result | None, other: Result | None, attr: str) -> str:
    """ours.attr / other.attr as "1.23×", or n/a when either did not run cleanly."""
    a = getattr(ours, attr) if ours else 0.0
    b = getattr(other, attr) if other else 0.0
    return f"{a / b:.2f}×" if a > 0 and b > 0 else "n/a"


def markdown(
    results: list[Result], raws: list[RawResult], sites: list[Site], header: list[str], settings: dict[str, Settings]
) -> str:
    """The report: context lines, per-run table, raw server table, ratio table."""
    out = [*header, ""]
    for site in sites:
        s = settings[site.spec.label]
        per_host = f", {s.per_host} per host" if len(site.spec.hosts) > 1 else ""
        tls = (
            "; https: TLS from a private CA, HTTP/2 and HTTP/1.1 offered by ALPN" if site.spec.scheme == "https" else ""
        )
        out.append(
            f"- **{site.spec.label}**: {len(site.spec.hosts)} host(s) × {site.spec.pages_per_host:,} pages "
            f"({site.expected_pages:,} pages, avg {site.bytes_total / len(site.urls) / 1000:.1f} KB, "
            f"~20 links each); {s.concurrency} in flight{per_host}; robots obeyed, no delay{tls}"
        )
    out += [
        "",
        "| site | contestant | pages stored | wall s | pages/s | CPU s | pages/CPU-s | CPU % | peak RSS MB "
        "| server CPU % | other load % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        if not r.ran:
            out.append(f"| {r.site} | {r.contestant} | skipped | | | | | | | | |")
            continue
        flag = "" if r.status == "ok" else f" ({r.status})"
        out.append(
            f"| {r.site} | {r.contestant} | {r.pages:,}/{r.expected:,}{flag} | {r.wall:.1f} | "
            f"{r.pages_per_s:,.0f} | {r.cpu:.1f} | {r.pages_per_cpu_s:,.0f} | {100 * r.cpu / r.wall:.0f} | "
            f"{r.peak_rss_mb:.0f} | "
            f"{r.server_cpu_pct:.0f} | {r.other_cpu_pct:.0f} |"
        )
    if any(len(r.tries) > 1 for r in results):
        out.append(
            "\nBest of several runs each; pages/s of every run: "
            + "; ".join(
                f"{r.site}/{r.contestant} " + ", ".join(f"{t:,.0f}" for t in r.tries) for r in results if r.tries
            )
        )
    noisy = [r for r in results if r.ran and r.other_cpu_pct > NOISY_PCT]
    if noisy:
        out.append(
            f"\n**Warning:** other processes kept the machine busy (> {NOISY_PCT}% of a core) during "
            + ", ".join(f"{r.site}/{r.contestant} ({r.other_cpu_pct:.0f}%)" for r in noisy)
            + "; those figures understate the contestant's speed."
        )
    if raws:
        out += [
            "",
            "Server raw throughput (same run, keep-alive, no parsing; CPU % is of one core):",
            "",
            "| site | load client | requests | req/s | MB/s | client CPU % | server CPU % |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for w in raws:
            out.append(
                f"| {w.site} | {w.client} | {w.requests:,} | {w.req_per_s:,.0f} | {w.mb_per_s:,.0f} | "
                f"{w.client_cpu_pct:.0f} | {w.server_cpu_pct:.0f} |"
            )
    out += [
        "",
        "Ratios (ours ÷ other; pages per CPU-s is the figure least disturbed by other load):",
        "",
        "| site | ours / Scrapy pages/s | ours / aiohttp-min pages/s | ours / Scrapy peak RSS "
        "| ours / Scrapy pages per CPU-s | ours / aiohttp-min pages per CPU-s |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for site in sites:
        by = {r.contestant: r for r in results if r.site == site.spec.label and r.status == "ok"}
        ours, scrapy, base = by.get("crawler"), by.get("scrapy"), by.get("aiohttp-min")
        out.append(
            f"| {site.spec.label} | {_ratio(ours, scrapy, 'pages_per_s')} | {_ratio(ours, base, 'pages_per_s')} | "
            f"{_ratio(ours, scrapy, 'peak_rss_mb')} | {_ratio(ours, scrapy, 'pages_per_cpu_s')} | "
            f"{_ratio(ours, base, 'pages_per_cpu_s')} |"
        )
    return "\n".join(out) + "\n"


def context_header(server: str, contestants: dict[str, Contestant]) -> list[str]:
    """Lines naming the machine and versions, for quoting the figures."""
    versions = [f"Python {platform.python_version()}"]
    for dist in ("aiohttp", "httpx", *(["scrapy"] if "scrapy" in contestants else [])):
        try:
            versions.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            continue
    nginx = find_nginx()
    if nginx and "nginx" in server:
        text = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
        versions.append(text.replace("nginx version: ", ""))
    when = dt.datetime.now().strftime("%Y-%m-%d %H:%M")
    return [
        f"### Crawl benchmark, {when}",
        "",
        f"{os.cpu_count()} cores, {platform.system()} {platform.machine()}; server: {server}; "
        f"{', '.join(versions)}; contestants: {', '.join(contestants)}",
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the whole benchmark; see the module docstring for the exit status."""
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the cleanup in `finally`
    contestants: dict[str, Contestant] = {}
    results: list[Result] = []
    skipped: dict[str, str] = {}
    for name in args.only:
        contestant = ALL[name]()
        reason = contestant.unavailable()
        if reason:
            skipped[name] = reason
            print(f"- skipping {name}: {reason}")
        else:
            contestant.prepare()
            contestants[name] = contestant
            print(f"- {name}: ready" + (f" ({contestant.version()})" if contestant.version() else ""))
    tmp = Path(tempfile.mkdtemp(prefix="crawler-bench-"))
    tmp.chmod(0o755)  # nginx workers (run as `nobody` when started by root) read the site from here
    raws: list[RawResult] = []
    sites: list[Site] = []
    settings_by_site: dict[str, Settings] = {}
    server_desc = ""
    try:
        for spec, settings in plan(args):
            settings_by_site[spec.label] = settings
            print(f"\n== site {spec.label}: {len(spec.hosts)} host(s) × {spec.pages_per_host:,} pages ==")
            started = time.perf_counter()
            key = spec.label.replace(" ", "-")
            site = generate_site(spec, tmp / f"site-{key}", pick_port(spec.hosts))
            sites.append(site)
            print(
                f"  generated {len(site.urls):,} pages, {site.bytes_total / 1e6:.0f} MB, "
                f"in {time.perf_counter() - started:.1f} s; seeds {site.seeds[0]}…"
            )
            tls = make_tls(tmp / f"tls-{key}", spec.hosts) if spec.scheme == "https" else None
            server = make_server(args, site, tmp / f"server-{key}", tls)
            try:
                server.start()
            except RuntimeError as exc:
                print(f"!! could not start {server.kind}: {exc}")
                return 2
            server_desc = server.describe()
            try:
                print(f"  serving with {server_desc} on port {site.port}")
                raws += measure_raw(site, server, tmp / f"server-{key}", args.smoke)
                for name in args.only:
                    if name in skipped:
                        results.append(Result(spec.label, name, "skipped", site.expected_pages, note=skipped[name]))
                        continue
                    results.append(run_repeated(contestants[name], site, settings, server, tmp, args))
            finally:
                server.stop()
            if not args.keep:
                shutil.rmtree(site.root, ignore_errors=True)
    finally:
        if args.keep:
            print(f"\nkept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    report = markdown(results, raws, sites, context_header(server_desc, contestants), settings_by_site)
    print("\n" + report)
    if args.out:
        out_dir = Path(args.out)
        out_dir.mkdir(parents=True, exist_ok=True)
        stem = out_dir / f"results-{'smoke-' if args.smoke else ''}{dt.datetime.now():%Y%m%d-%H%M%S}"
        stem.with_suffix(".md").write_text(report)
        data = {
            "results": [
                asdict(r) | {"pages_per_s": r.pages_per_s, "pages_per_cpu_s": r.pages_per_cpu_s} for r in results
            ],
            "raw": [asdict(w) for w in raws],
        }
        stem.with_suffix(".json").write_text(json.dumps(data, indent=2) + "\n")
        print(f"written {stem}.md and .json")
    bad = [r for r in results if r.ran and r.status != "ok"]
    if args.strict:
        bad += [r for r in results if not r.ran]
    for r in bad:
        print(f"FAIL {r.site}/{r.contestant}: {r.status}: {r.note}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

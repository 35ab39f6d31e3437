"""Contention bench: what sharing one small machine costs each crawler, with no coordination at all.

    python bench/contention.py [--procs 1,8] [--pages-per-host 60] [--cpu 0.1]

bench/scale.py's crawlers cost more CPU per page at 8 processes than at 1. Part of that could be
the shared crawl (leases, hand-overs, the fleet's rows), part the machine: 8 crawlers, PostgreSQL
and nginx on 2 cores, each crawler throttled by its cgroup and finding its caches cold. This bench
separates the two: N crawlers, each capped as in scale.py, each on a crawl of its OWN (its own
database) of the same site, all at once. Nothing is shared but the machine, so the CPU per page
each spends beyond what one alone spends is the machine's share of scale.py's growth.

Printed per process count: wall time, the crawlers' CPU (start-up and exit included, as every
crawl does the same) and CPU seconds per 1,000 pages, and its ratio to the first count's.
"""

from __future__ import annotations

import argparse
import compileall
import shutil
import sys
import tempfile
from pathlib import Path

import scale
from scale import CpuCaps, LoggingNginx, config_text, find_nginx, run_crawlers
from servers import pick_port
from sitegen import generate_site, multi_host_spec

from tests.support.postgres import PostgresServer, PostgresUnavailable


def one_count(
    procs: int, args: argparse.Namespace, caps: CpuCaps, pg: PostgresServer, root: Path
) -> tuple[float, float, int]:
    """N independent crawls of a fresh copy of the site: wall seconds, crawler CPU seconds, pages expected."""
    spec = multi_host_spec(args.hosts, args.pages_per_host)
    site = generate_site(spec, root / f"site-{procs}", pick_port(spec.hosts))
    for path in site.root.rglob("*"):
        path.chmod(0o755 if path.is_dir() else 0o644)
    site.root.chmod(0o755)
    workdir = root / f"run-{procs}"
    workdir.mkdir()
    nginx = find_nginx()
    assert nginx is not None
    server = LoggingNginx(site, workdir / "nginx", 1, nginx)
    server.start()
    try:
        configs = []
        for i in range(procs):
            config = workdir / f"crawl-{i}.toml"
            config.write_text(config_text(site, args, f'url = "{pg.create_database()}"\nlease_seconds = 10\n', i))
            configs.append(config)
        wall, cpu, _throttled, failure, _timelines = run_crawlers(configs, caps, workdir, args.tree)
    finally:
        server.stop()
    if failure:
        raise SystemExit(f"{procs} crawls: {failure}")
    return wall, cpu, procs * site.expected_pages


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--procs", default="1,8", help="comma-separated process counts")
    parser.add_argument("--pages-per-host", type=int, default=60)
    parser.add_argument("--cpu", type=float, default=0.1, help="CPU share of each crawler process")
    ours = parser.parse_args(argv)
    # The crawl settings (hosts, delay, concurrency, the tree) are scale.py's defaults.
    args = scale.parse_args(["--pages-per-host", str(ours.pages_per_host), "--cpu", str(ours.cpu)])
    if find_nginx() is None:
        print("nginx is not installed (bash bench/setup.sh)", file=sys.stderr)
        return 2
    caps = CpuCaps(ours.cpu)
    if not caps.works:
        print(f"UNCAPPED: {caps.reason}", file=sys.stderr)
    try:
        pg = PostgresServer.start()
    except PostgresUnavailable as exc:
        print(f"no PostgreSQL: {exc}", file=sys.stderr)
        caps.close()
        return 2
    compileall.compile_dir(args.tree / "crawler", quiet=1)
    root = Path(tempfile.mkdtemp(prefix="crawler-contention-"))
    root.chmod(0o755)  # nginx workers run as nobody when started by root
    site = f"{args.hosts} hosts × {args.pages_per_host} pages"
    print(f"each crawler capped at {ours.cpu:g} CPU; each on its own crawl of {site}")
    print("| crawls at once | wall s | crawler CPU s | CPU s / 1,000 pages | ÷ first |")
    print("|---:|---:|---:|---:|---:|")
    first = None
    try:
        for procs in [int(n) for n in ours.procs.split(",")]:
            wall, cpu, pages = one_count(procs, args, caps, pg, root)
            per = cpu / pages * 1000
            first = first or per
            print(f"| {procs} | {wall:.1f} | {cpu:.1f} | {per:.3f} | {per / first:.2f}× |", flush=True)
    finally:
        caps.close()
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

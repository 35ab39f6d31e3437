"""What a recrawl costs next to the first crawl: the single site, served by nginx, crawled then recrawled.

    python bench/recrawl.py [--pages 10000] [--concurrency 8] [--repeat 1] [--keep]

Generates the bench's single site (bench/sitegen.py), serves it with nginx (which sends ETag
and Last-Modified for static files and answers conditional requests with 304), runs
`crawler crawl` once, then `crawler recrawl` over the stored crawl with nothing changed, so
every page answers 304. Both run as `python -m crawler … -q` with the settings of
bench/run.py's single site. Prints both wall times, the ratio, and the recrawl's change
counts, with the CPU seconds each command used; `--repeat N` adds the best wall time of
each over N rounds (the machine's other load only ever slows a run down). Exits 1 if a
recrawl did not find every page unchanged.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from contestants import Job, OurCrawler, Settings, child_env
from servers import NginxServer, find_nginx, pick_port
from sitegen import generate_site, single_host_spec

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--pages", type=int, default=10_000, help="pages of the single site (default 10,000)")
    p.add_argument("--concurrency", type=int, default=8, help="requests in flight (default 8, as bench/run.py)")
    p.add_argument("--repeat", type=int, default=1, help="crawl + recrawl rounds, each on a fresh database")
    p.add_argument("--seed", type=int, default=1, help="site generator seed")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (site, logs, database)")
    return p.parse_args(argv)


def timed(command: list[str]) -> tuple[float, float]:
    """Run one crawler command; (wall seconds, CPU seconds of the crawler and its parser children)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(command, cwd=REPO_ROOT, env=child_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command[2:4])} failed ({done.returncode}): {done.stderr.strip()[-800:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return elapsed, cpu


def changes(db: Path) -> dict[str, int]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        run = conn.execute("SELECT max(run_id) FROM changes").fetchone()[0]
        return dict(conn.execute("SELECT change, count(*) FROM changes WHERE run_id = ? GROUP BY 1", (run,)))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    nginx = find_nginx()
    if nginx is None:
        raise SystemExit("nginx not found: install it with `apt-get install -y nginx-light` or bash bench/setup.sh")
    crawler = OurCrawler()
    crawler.prepare()
    settings = Settings(args.concurrency, args.concurrency)
    tmp = Path(tempfile.mkdtemp(prefix="crawler-recrawl-bench-"))
    tmp.chmod(0o755)  # nginx workers (run as `nobody` when started by root) read the site from here
    spec = single_host_spec(args.pages, args.seed)
    ok = True
    firsts: list[float] = []
    agains: list[float] = []
    try:
        site = generate_site(spec, tmp / "site", pick_port(spec.hosts))
        print(f"site: {len(site.urls):,} pages, {site.bytes_total / 1e6:.0f} MB; concurrency {args.concurrency}")
        with NginxServer(site, tmp / "server", 1, nginx) as server:
            print(f"serving with {server.describe()} on port {site.port}")
            for round_no in range(1, args.repeat + 1):
                job = Job(site, settings, tmp / f"run-{round_no}", timeout=900)
                job.workdir.mkdir()
                command = crawler.command(job)  # writes the config
                config = command[-2]
                first, first_cpu = timed(command)
                again, again_cpu = timed([sys.executable, "-m", "crawler", "recrawl", config, "-q"])
                firsts.append(first)
                agains.append(again)
                found = changes(crawler.db_path(job))
                unchanged = found.get("unchanged", 0) == len(site.urls) and len(found) == 1
                ok = ok and unchanged
                print(
                    f"round {round_no}: first crawl {first:.1f} s ({first_cpu:.1f} CPU s),"
                    f" recrawl {again:.1f} s ({again_cpu:.1f} CPU s), ratio {again / first:.2f}; recrawl found {found}"
                )
            if args.repeat > 1:
                best_first, best_again = min(firsts), min(agains)
                print(
                    f"best of {args.repeat}: first crawl {best_first:.1f} s, recrawl {best_again:.1f} s,"
                    f" ratio {best_again / best_first:.2f}"
                )
    finally:
        if args.keep:
            print(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The contestants: how to tell whether each can run, how to start it, how to count its pages.

Every contestant runs as a subprocess of the same Python (the project's venv) with equal
settings: robots.txt obeyed, the same user agent, the same global and per-host concurrency,
no delay. Each one reports "pages stored" its own way:

  crawler      our crawler; rows in the `pages` table of its SQLite store
  scrapy       Scrapy + bench/scrapy_spider.py; items in its JSON Lines feed
  aiohttp-min  bench/baseline_aiohttp.py; the page count it prints (it stores nothing)
"""

from __future__ import annotations

import compileall
import json
import os
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from sitegen import Site

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
USER_AGENT = "crawler-bench/0.1 (+https://example.org/bench)"
MIN_SCRAPY = (2, 13)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "ftp_proxy", "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")


@dataclass(frozen=True, slots=True)
class Settings:
    """Politeness settings shared by every contestant in one run."""

    concurrency: int
    per_host: int
    user_agent: str = USER_AGENT
    obey_robots: bool = True


@dataclass(frozen=True, slots=True)
class Job:
    """One contestant on one site: where its files go and how long it may take."""

    site: Site
    settings: Settings
    workdir: Path
    timeout: float
    ca_bundle: Path | None = None  # the private CA an https site's certificate comes from


def child_env() -> dict[str, str]:
    """The environment for children: no proxies, so nothing leaves loopback through one."""
    env = {k: v for k, v in os.environ.items() if k not in _PROXY_VARS}
    env["NO_PROXY"] = env["no_proxy"] = "*"
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def _probe(cmd: list[str], cwd: Path = REPO_ROOT) -> tuple[bool, str]:
    """Run a quick check command; (ok, last line of its output)."""
    try:
        done = subprocess.run(
            cmd, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return False, str(exc)
    text = (done.stdout + done.stderr).strip()
    last = text.splitlines()[-1] if text else ""
    return done.returncode == 0, last if done.returncode else done.stdout.strip()


class Contestant:
    """Base class; subclasses fill in the command and the page count."""

    name = "?"

    def unavailable(self) -> str | None:
        """None if it can run, else a message saying why it is skipped and how to fix that."""
        return None

    def version(self) -> str:
        """A short version string for the report."""
        return ""

    def prepare(self) -> None:
        """Anything to do once before the runs."""

    def command(self, job: Job) -> list[str]:
        """The argv to run."""
        raise NotImplementedError

    def cwd(self) -> Path:
        """Where the command runs."""
        return REPO_ROOT

    def count(self, job: Job, stdout: str) -> int:
        """Pages stored, read after the process exited."""
        raise NotImplementedError


class OurCrawler(Contestant):
    """`python -m crawler crawl config.toml -q`, then SELECT count(*) FROM pages."""

    name = "crawler"

    def unavailable(self) -> str | None:
        ok, detail = _probe([sys.executable, "-m", "crawler", "--help"])
        if ok:
            return None
        return f"our crawler is not runnable yet (`python -m crawler --help` failed: {detail or 'no output'})"

    def prepare(self) -> None:
        # Runs start from bytecode, as for Scrapy and the libraries, which pip compiled when it
        # installed them. An editable install compiles the crawler on first import, unless
        # PYTHONDONTWRITEBYTECODE is set (as child_env does): then every run would compile
        # ~7,000 lines again (~0.1 s).
        compileall.compile_dir(REPO_ROOT / "crawler", quiet=1)

    def db_path(self, job: Job) -> Path:
        """The SQLite store for this job."""
        return job.workdir / "bench.db"

    def config_text(self, job: Job) -> str:
        """The TOML config with the run's settings; on https, default settings (HTTP/2 offered) and the CA."""
        s = job.settings
        http = "http2 = false\n" if job.ca_bundle is None else f"ca_bundle = {json.dumps(str(job.ca_bundle))}\n"
        return (
            "[crawl]\n"
            f"seeds = {json.dumps(job.site.seeds)}\n"
            "allowed_hosts = []\n"
            "max_pages = 0\n"
            "max_depth = 100\n"
            "[politeness]\n"
            f"user_agent = {json.dumps(s.user_agent)}\n"
            f"obey_robots = {str(s.obey_robots).lower()}\n"
            f"concurrency = {s.concurrency}\n"
            f"per_host_concurrency = {s.per_host}\n"
            "delay = 0.0\n"
            "adaptive = false\n"
            "[http]\n"
            f"{http}"
            "[storage]\n"
            f"path = {json.dumps(str(self.db_path(job)))}\n"
        )

    def command(self, job: Job) -> list[str]:
        config = job.workdir / "config.toml"
        config.write_text(self.config_text(job))
        return [sys.executable, "-m", "crawler", "crawl", str(config), "-q"]

    def count(self, job: Job, stdout: str) -> int:
        db = self.db_path(job)
        if not db.exists():
            return 0
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            (n,) = conn.execute("SELECT count(*) FROM pages").fetchone()
        return int(n)


class ScrapyContestant(Contestant):
    """bench/scrapy_spider.py under CrawlerProcess; counts the items (pages) in its feed."""

    name = "scrapy"

    def __init__(self) -> None:
        self._version = ""

    def unavailable(self) -> str | None:
        ok, detail = _probe([sys.executable, "-c", "import scrapy; print(scrapy.__version__)"])
        if not ok:
            return "Scrapy is not installed (optional): `.venv/bin/pip install 'scrapy>=2.13'` or bash bench/setup.sh"
        self._version = detail
        parts = tuple(int(p) for p in detail.split(".")[:2] if p.isdigit())
        if parts < MIN_SCRAPY:
            return f"Scrapy {detail} is too old: the spider needs 2.13 or newer"
        return None

    def version(self) -> str:
        return self._version

    def feed(self, job: Job) -> Path:
        """The JSON Lines feed for this job."""
        return job.workdir / "pages.jsonl"

    def command(self, job: Job) -> list[str]:
        s = job.settings
        hosts = ",".join(job.site.spec.hosts)
        return [
            sys.executable,
            str(BENCH_DIR / "scrapy_spider.py"),
            "--seeds",
            ",".join(job.site.seeds),
            "--allowed-hosts",
            hosts,
            "--output",
            str(self.feed(job)),
            "--concurrency",
            str(s.concurrency),
            "--per-host",
            str(s.per_host),
            "--user-agent",
            s.user_agent,
            *(["--ca-bundle", str(job.ca_bundle)] if job.ca_bundle else []),
        ]

    def count(self, job: Job, stdout: str) -> int:
        feed = self.feed(job)
        if not feed.exists():
            return 0
        with feed.open() as lines:
            return sum(1 for line in lines if line.strip() and json.loads(line).get("status") == 200)


class AiohttpMin(Contestant):
    """bench/baseline_aiohttp.py; counts what it prints."""

    name = "aiohttp-min"

    def unavailable(self) -> str | None:
        ok, detail = _probe([sys.executable, "-c", "import aiohttp, selectolax, protego"])
        if not ok:
            return f"aiohttp-min needs aiohttp, selectolax and protego in the venv ({detail})"
        return None

    def command(self, job: Job) -> list[str]:
        s = job.settings
        cmd = [
            sys.executable,
            str(BENCH_DIR / "baseline_aiohttp.py"),
            "--seeds",
            ",".join(job.site.seeds),
            "--allowed-hosts",
            ",".join(job.site.spec.hosts),
            "--concurrency",
            str(s.concurrency),
            "--per-host",
            str(s.per_host),
            "--user-agent",
            s.user_agent,
        ]
        if not s.obey_robots:
            cmd.append("--no-robots")
        if job.ca_bundle:
            cmd += ["--ca-bundle", str(job.ca_bundle)]
        return cmd

    def count(self, job: Job, stdout: str) -> int:
        lines = stdout.strip().splitlines()
        return int(json.loads(lines[-1])["pages"]) if lines else 0


ALL: dict[str, type[Contestant]] = {c.name: c for c in (OurCrawler, ScrapyContestant, AiohttpMin)}

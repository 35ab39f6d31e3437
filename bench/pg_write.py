"""The PostgreSQL driver choice: a crawl batch's write path and a host-lease cycle, psycopg 3 against asyncpg.

    python bench/pg_write.py [--batches 30] [--runs 3] [--lease-seconds 3] [--no-search] [--url URL] [--only NAME,...]

Without --url it starts a throwaway server the way the tests do (tests/support/postgres.py:
Debian's initdb/pg_ctl, fsync off) and stops it at the end; with --url it uses that server
(it creates and drops databases named pgbench_write_<n> there).

Write path. Each batch is what the crawler's writer commits in one transaction
(crawler/store/flush.py), about 2,000 rows: PAGES pages (16 KiB body, 8 KiB visible text
drawn from a Zipf vocabulary, indexed by a generated tsvector column and GIN unless
--no-search), LINKS links per page
(by target URL, joined to urls.id), NEW new-URL candidates per page of which half already
exist (INSERT ... ON CONFLICT DO NOTHING RETURNING id), and one `done` state per page. Each
run writes --batches batches into a fresh database. Contenders:
  psycopg-many    executemany (pipeline mode), one statement per row; RETURNING through executemany
  psycopg-copy    COPY (binary) into ON COMMIT DELETE ROWS temp tables, then one INSERT/UPDATE ... SELECT each
  psycopg-unnest  one statement per kind, columns passed as arrays (unnest), binary parameters
  asyncpg-many    executemany for pages, links and states; new URLs through unnest (executemany cannot return)
  asyncpg-copy    copy_records_to_table into the same temp tables, then INSERT/UPDATE ... SELECT
  asyncpg-unnest  as psycopg-unnest
Lease cycle. 2,000 hosts; a client leases LEASE_K ready hosts (SELECT ... FOR UPDATE SKIP
LOCKED, then UPDATE lease_owner/lease_token/lease_until, one transaction), then gives them
back fenced by its token with next_fetch_at = now() (a second transaction), for
--lease-seconds, with 1, 2 and 4 clients (one connection each, in this process).

Printed: medians over --runs of rows/s, batches/s (cycles/s), client CPU per batch (this
process's CPU time) and server CPU per batch (user+system of the postmaster's children,
read with psutil before and after; a process that starts and exits in between is missed).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
import psycopg

from tests.support.postgres import PostgresServer

PAGES = 48  # pages per batch
LINKS = 30  # links per page
NEW = 10  # new-URL candidates per page, half of them already known
BODY_BYTES = 16 * 1024
TEXT_BYTES = 8 * 1024
HOSTS = 200  # hosts the URLs of the write path spread over
LEASE_HOSTS = 2_000
LEASE_K = 16  # hosts per lease
CLIENTS = (1, 2, 4)

SCHEMA = """
CREATE TABLE urls (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    url           text NOT NULL UNIQUE,
    host          text NOT NULL,
    depth         integer NOT NULL,
    state         text NOT NULL,
    reason        text,
    parent_id     bigint,
    discovered_at timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz
);
CREATE INDEX urls_state_host ON urls (state, host, id);
CREATE TABLE pages (
    url_id       bigint PRIMARY KEY,
    url          text NOT NULL,
    final_url    text NOT NULL,
    status       integer NOT NULL,
    content_type text,
    title        text,
    depth        integer NOT NULL,
    fetched_at   timestamptz NOT NULL,
    elapsed_ms   double precision NOT NULL,
    http_version text,
    bytes        integer NOT NULL,
    headers      text NOT NULL,
    redirects    text NOT NULL,
    noindex      boolean NOT NULL DEFAULT false,
    text         text,
    body         bytea,
    run_id       bigint{search}
);
{search_index}
CREATE TABLE links (
    from_id  bigint NOT NULL,
    to_id    bigint NOT NULL,
    nofollow boolean NOT NULL DEFAULT false,
    PRIMARY KEY (from_id, to_id)
);
CREATE INDEX links_to ON links (to_id);
CREATE TABLE hosts (
    host          text PRIMARY KEY,
    next_fetch_at timestamptz NOT NULL DEFAULT now(),
    lease_owner   text,
    lease_token   bigint,
    lease_until   timestamptz
);
CREATE INDEX hosts_ready ON hosts (next_fetch_at);
"""

SEARCH_COLUMN = """,
    search       tsvector GENERATED ALWAYS AS (
        CASE WHEN noindex THEN NULL ELSE
        setweight(to_tsvector('simple', coalesce(title, '')), 'A') || to_tsvector('simple', coalesce(text, ''))
        END) STORED"""
SEARCH_INDEX = "CREATE INDEX pages_search ON pages USING gin (search);"


def schema(search: bool) -> str:
    """The bench's tables; with search, pages carry the tsvector and its GIN index, as the design has them."""
    return SCHEMA.format(search=SEARCH_COLUMN if search else "", search_index=SEARCH_INDEX if search else "")


TEMP_TABLES = """
CREATE TEMP TABLE new_urls (url text, host text, depth integer, parent_id bigint) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE new_pages (
    url_id bigint, url text, final_url text, status integer, content_type text, title text, depth integer,
    fetched_at timestamptz, elapsed_ms double precision, http_version text, bytes integer, headers text,
    redirects text, noindex boolean, text text, body bytea, run_id bigint
) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE new_links (from_id bigint, to_url text, nofollow boolean) ON COMMIT DELETE ROWS;
CREATE TEMP TABLE new_states (id bigint, state text) ON COMMIT DELETE ROWS;
"""

PAGE_COLUMNS = (
    "url_id", "url", "final_url", "status", "content_type", "title", "depth", "fetched_at", "elapsed_ms",
    "http_version", "bytes", "headers", "redirects", "noindex", "text", "body", "run_id",
)  # fmt: skip
PAGE_TYPES = (
    "bigint", "text", "text", "integer", "text", "text", "integer", "timestamptz", "double precision",
    "text", "integer", "text", "text", "boolean", "text", "bytea", "bigint",
)  # fmt: skip
_COLS = ", ".join(PAGE_COLUMNS)
_UPDATE = ", ".join(f"{c} = excluded.{c}" for c in PAGE_COLUMNS[1:])

# The SQL shared by several contenders; $n placeholders are asyncpg's, %s psycopg's.
PAGES_FROM_TEMP = (
    f"INSERT INTO pages ({_COLS}) SELECT {_COLS} FROM new_pages ON CONFLICT (url_id) DO UPDATE SET {_UPDATE}"
)
URLS_FROM_TEMP = (
    "INSERT INTO urls (url, host, depth, parent_id, state) SELECT url, host, depth, parent_id, 'queued'"
    " FROM new_urls ORDER BY url ON CONFLICT (url) DO NOTHING RETURNING id, url"
)
LINKS_FROM_TEMP = (
    "INSERT INTO links (from_id, to_id, nofollow) SELECT n.from_id, u.id, n.nofollow FROM new_links n"
    " JOIN urls u ON u.url = n.to_url ON CONFLICT DO NOTHING"
)
STATES_FROM_TEMP = "UPDATE urls SET state = s.state, updated_at = now() FROM new_states s WHERE urls.id = s.id"


def _unnest_sql(mark: Callable[[int, str], str]) -> tuple[str, str, str, str]:
    """The unnest statements, with mark(i, type) for the i-th array parameter."""
    urls = (
        "INSERT INTO urls (url, host, depth, parent_id, state)"
        f" SELECT u, h, d, p, 'queued' FROM unnest({mark(1, 'text[]')}, {mark(2, 'text[]')},"
        f" {mark(3, 'integer[]')}, {mark(4, 'bigint[]')}) AS t(u, h, d, p)"
        " ORDER BY u ON CONFLICT (url) DO NOTHING RETURNING id, url"
    )
    arrays = ", ".join(mark(i + 1, f"{t}[]") for i, t in enumerate(PAGE_TYPES))
    pages = f"INSERT INTO pages ({_COLS}) SELECT * FROM unnest({arrays}) ON CONFLICT (url_id) DO UPDATE SET {_UPDATE}"
    links = (
        "INSERT INTO links (from_id, to_id, nofollow) SELECT n.f, u.id, n.nf"
        f" FROM unnest({mark(1, 'bigint[]')}, {mark(2, 'text[]')}, {mark(3, 'boolean[]')}) AS n(f, t, nf)"
        " JOIN urls u ON u.url = n.t ON CONFLICT DO NOTHING"
    )
    states = (
        "UPDATE urls SET state = s.st, updated_at = now()"
        f" FROM unnest({mark(1, 'bigint[]')}, {mark(2, 'text[]')}) AS s(i, st) WHERE urls.id = s.i"
    )
    return urls, pages, links, states


PG_UNNEST = _unnest_sql(lambda i, t: f"%s::{t}")
APG_UNNEST = _unnest_sql(lambda i, t: f"${i}::{t}")


@dataclass
class BatchData:
    """One batch's rows, built before the clock starts."""

    new_urls: list[tuple[str, str, int, int]]  # (url, host, depth, parent_id)
    pages: list[tuple[Any, ...]]  # in PAGE_COLUMNS order
    links: list[tuple[int, str, bool]]  # (from_id, to_url, nofollow)
    states: list[tuple[int, str]]  # (id, state)

    def __len__(self) -> int:
        return len(self.new_urls) + len(self.pages) + len(self.links) + len(self.states)


def _columns(rows: Sequence[tuple[Any, ...]]) -> list[list[Any]]:
    return [list(column) for column in zip(*rows, strict=True)] if rows else []


# ---- the data ----------------------------------------------------------------------------------


def _words(rng: random.Random, count: int = 20_000) -> tuple[list[str], list[float]]:
    """A Zipf vocabulary: prose-like text for the tsvector, not 150 words repeated."""
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choices(letters, k=rng.randint(2, 10))) for _ in range(count)]
    return words, [1 / (rank + 1) for rank in range(count)]


def seed_urls(batches: int) -> list[tuple[str, str, int, int | None]]:
    """The URLs that exist before the first batch: one per page to store, plus link targets."""
    rows: list[tuple[str, str, int, int | None]] = []
    for i in range(batches * PAGES + 20_000):
        host = f"h{i % HOSTS}.test"
        rows.append((f"http://{host}/seed/{i}", host, 1, None))
    return rows


def make_batches(batches: int, seed: int = 17) -> list[BatchData]:
    rng = random.Random(seed)
    words, weights = _words(rng)
    texts = []
    for _ in range(32):
        text = " ".join(rng.choices(words, weights, k=TEXT_BYTES // 6))[:TEXT_BYTES]
        texts.append(text)
    known = batches * PAGES + 20_000  # seeded URL ids are 1..known, in order
    now = datetime.now(UTC)
    headers = '[["content-type", "text/html; charset=utf-8"], ["server", "nginx"]]'
    out = []
    for b in range(batches):
        data = BatchData([], [], [], [])
        for p in range(PAGES):
            url_id = b * PAGES + p + 1
            host = f"h{(url_id - 1) % HOSTS}.test"
            url = f"http://{host}/seed/{url_id - 1}"
            text = texts[(b * PAGES + p) % len(texts)]
            body = (f"<html><head><title>{text[:60]}</title></head><body><p>" + text + text).encode()[:BODY_BYTES]
            data.pages.append(
                (url_id, url, url, 200, "text/html", text[:60], 1, now, 12.5, "HTTP/1.1",
                 len(body), headers, "[]", False, text, body, 1)
            )  # fmt: skip
            data.states.append((url_id, "done"))
            for k in range(NEW):
                if k % 2:
                    target = f"http://h{rng.randrange(HOSTS)}.test/seed/{rng.randrange(known)}"
                else:
                    target = f"http://{host}/b{b}/p{p}/n{k}"
                data.new_urls.append((target, target.split("/")[2], 2, url_id))
            for k in range(LINKS):
                target = (
                    data.new_urls[p * NEW + k % NEW][0] if k < NEW else f"http://{host}/seed/{rng.randrange(known)}"
                )
                data.links.append((url_id, target, k % 7 == 0))
        out.append(data)
    return out


# ---- the contenders ------------------------------------------------------------------------------

Writer = Callable[[Any, BatchData], Awaitable[int]]


async def psycopg_many(conn: psycopg.AsyncConnection[Any], b: BatchData) -> int:
    async with conn.transaction(), conn.cursor() as cur:
        await cur.executemany(
            "INSERT INTO urls (url, host, depth, parent_id, state) VALUES (%s, %s, %s, %s, 'queued')"
            " ON CONFLICT (url) DO NOTHING RETURNING id",
            sorted(set(b.new_urls)),
            returning=True,
        )
        new = 0
        while True:
            new += len(await cur.fetchall())
            if not cur.nextset():
                break
        marks = ", ".join(["%s"] * len(PAGE_COLUMNS))
        await cur.executemany(
            f"INSERT INTO pages ({_COLS}) VALUES ({marks}) ON CONFLICT (url_id) DO UPDATE SET {_UPDATE}", b.pages
        )
        await cur.executemany(
            "INSERT INTO links (from_id, to_id, nofollow) SELECT %s, id, %s FROM urls WHERE url = %s"
            " ON CONFLICT DO NOTHING",
            [(f, nf, t) for f, t, nf in b.links],
        )
        await cur.executemany(
            "UPDATE urls SET state = %s, updated_at = now() WHERE id = %s", [(s, i) for i, s in b.states]
        )
    return new


async def psycopg_copy(conn: psycopg.AsyncConnection[Any], b: BatchData) -> int:
    async with conn.transaction(), conn.cursor() as cur:
        for table, columns, types, rows in (
            ("new_urls", "url, host, depth, parent_id", ("text", "text", "integer", "bigint"), b.new_urls),
            ("new_pages", _COLS, PAGE_TYPES, b.pages),
            ("new_links", "from_id, to_url, nofollow", ("bigint", "text", "boolean"), b.links),
            ("new_states", "id, state", ("bigint", "text"), b.states),
        ):
            async with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
                copy.set_types(list(types))
                for row in rows:
                    await copy.write_row(row)
        await cur.execute(URLS_FROM_TEMP)
        new = len(await cur.fetchall())
        await cur.execute(PAGES_FROM_TEMP)
        await cur.execute(LINKS_FROM_TEMP)
        await cur.execute(STATES_FROM_TEMP)
    return new


async def psycopg_unnest(conn: psycopg.AsyncConnection[Any], b: BatchData) -> int:
    urls, pages, links, states = PG_UNNEST
    async with conn.transaction(), conn.cursor(binary=True) as cur:
        await cur.execute(urls, _columns(b.new_urls))
        new = len(await cur.fetchall())
        await cur.execute(pages, _columns(b.pages))
        await cur.execute(links, _columns(b.links))
        await cur.execute(states, _columns(b.states))
    return new


async def asyncpg_many(conn: asyncpg.Connection, b: BatchData) -> int:
    urls, _, _, _ = APG_UNNEST
    async with conn.transaction():
        new = len(await conn.fetch(urls, *_columns(b.new_urls)))
        marks = ", ".join(f"${i + 1}" for i in range(len(PAGE_COLUMNS)))
        await conn.executemany(
            f"INSERT INTO pages ({_COLS}) VALUES ({marks}) ON CONFLICT (url_id) DO UPDATE SET {_UPDATE}", b.pages
        )
        await conn.executemany(
            "INSERT INTO links (from_id, to_id, nofollow) SELECT $1, id, $3 FROM urls WHERE url = $2"
            " ON CONFLICT DO NOTHING",
            b.links,
        )
        await conn.executemany("UPDATE urls SET state = $2, updated_at = now() WHERE id = $1", b.states)
    return new


async def asyncpg_copy(conn: asyncpg.Connection, b: BatchData) -> int:
    async with conn.transaction():
        await conn.copy_records_to_table("new_urls", records=b.new_urls, columns=["url", "host", "depth", "parent_id"])
        await conn.copy_records_to_table("new_pages", records=b.pages, columns=list(PAGE_COLUMNS))
        await conn.copy_records_to_table("new_links", records=b.links, columns=["from_id", "to_url", "nofollow"])
        await conn.copy_records_to_table("new_states", records=b.states, columns=["id", "state"])
        new = len(await conn.fetch(URLS_FROM_TEMP))
        await conn.execute(PAGES_FROM_TEMP)
        await conn.execute(LINKS_FROM_TEMP)
        await conn.execute(STATES_FROM_TEMP)
    return new


async def asyncpg_unnest(conn: asyncpg.Connection, b: BatchData) -> int:
    urls, pages, links, states = APG_UNNEST
    async with conn.transaction():
        new = len(await conn.fetch(urls, *_columns(b.new_urls)))
        await conn.execute(pages, *_columns(b.pages))
        await conn.execute(links, *_columns(b.links))
        await conn.execute(states, *_columns(b.states))
    return new


CONTENDERS: dict[str, tuple[str, Writer]] = {
    "psycopg-many": ("psycopg", psycopg_many),
    "psycopg-copy": ("psycopg", psycopg_copy),
    "psycopg-unnest": ("psycopg", psycopg_unnest),
    "asyncpg-many": ("asyncpg", asyncpg_many),
    "asyncpg-copy": ("asyncpg", asyncpg_copy),
    "asyncpg-unnest": ("asyncpg", asyncpg_unnest),
}


# ---- connections and CPU -----------------------------------------------------------------------


@contextlib.asynccontextmanager
async def connect(driver: str, url: str) -> AsyncIterator[Any]:
    if driver == "psycopg":
        conn = await psycopg.AsyncConnection.connect(url, autocommit=True)
        try:
            yield conn
        finally:
            await conn.close()
    else:
        aconn = await asyncpg.connect(url)
        try:
            yield aconn
        finally:
            await aconn.close()


async def execute(conn: Any, sql: str) -> None:
    await conn.execute(sql)


class ServerCpu:
    """CPU seconds of the postmaster's children (backends and background processes)."""

    def __init__(self, postmaster: psutil.Process) -> None:
        self._postmaster = postmaster

    def seconds(self) -> dict[int, float]:
        total = {}
        for child in self._postmaster.children(recursive=True):
            with contextlib.suppress(psutil.NoSuchProcess):
                times = child.cpu_times()
                total[child.pid] = times.user + times.system
        return total

    @staticmethod
    def spent(before: dict[int, float], after: dict[int, float]) -> float:
        return sum(cpu - before.get(pid, 0.0) for pid, cpu in after.items())


async def backend_postmaster(url: str) -> psutil.Process:
    async with connect("psycopg", url) as conn:
        cur = await conn.execute("SELECT pg_backend_pid()")
        (pid,) = await cur.fetchone()
    parent = psutil.Process(pid).parent()
    assert parent is not None, "a backend always has its postmaster"
    return parent


# ---- runs ------------------------------------------------------------------------------------------


@dataclass
class Sample:
    rows: int
    units: int  # batches or lease cycles
    wall: float
    client_cpu: float
    server_cpu: float

    @property
    def per_unit(self) -> tuple[float, float, float, float]:
        return (
            self.rows / self.wall,
            self.units / self.wall,
            1000 * self.client_cpu / self.units,
            1000 * self.server_cpu / self.units,
        )


class Databases:
    """Fresh databases on the server, created through its maintenance URL."""

    def __init__(self, admin_url: str) -> None:
        self._admin = admin_url
        self._names = itertools.count(1)

    async def fresh(self) -> str:
        name = f"pgbench_write_{next(self._names)}"
        async with connect("psycopg", self._admin) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {name}")
            await conn.execute(f"CREATE DATABASE {name}")
        return self._admin.rsplit("/", 1)[0] + "/" + name

    async def drop(self, url: str) -> None:
        async with connect("psycopg", self._admin) as conn:
            await conn.execute(f"DROP DATABASE IF EXISTS {url.rsplit('/', 1)[1]} WITH (FORCE)")


async def prepare(url: str, batches: int, *, search: bool = True) -> None:
    async with connect("psycopg", url) as conn:
        await conn.execute(schema(search))
        async with conn.cursor() as cur, cur.copy("COPY urls (url, host, depth, parent_id, state) FROM STDIN") as copy:
            for row in seed_urls(batches):
                await copy.write_row((*row, "queued"))
        async with conn.cursor() as cur, cur.copy("COPY hosts (host) FROM STDIN") as copy:
            for i in range(LEASE_HOSTS):
                await copy.write_row((f"lease{i}.test",))
        await conn.execute("VACUUM ANALYZE")


async def write_run(name: str, url: str, data: list[BatchData], cpu: ServerCpu) -> Sample:
    driver, write = CONTENDERS[name]
    async with connect(driver, url) as conn:
        await execute(conn, TEMP_TABLES)
        await write(conn, data[0])  # warm-up: prepared statements, type caches, the temp tables' first use
        before_server, before_client, start = cpu.seconds(), time.process_time(), time.perf_counter()
        for batch in data[1:]:
            await write(conn, batch)
        wall = time.perf_counter() - start
        client = time.process_time() - before_client
        server = ServerCpu.spent(before_server, cpu.seconds())
    return Sample(sum(len(b) for b in data[1:]), len(data) - 1, wall, client, server)


LEASE_SELECT = (
    "SELECT host FROM hosts WHERE next_fetch_at <= now() AND (lease_until IS NULL OR lease_until < now())"
    " ORDER BY next_fetch_at LIMIT {k} FOR UPDATE SKIP LOCKED"
)
LEASE_TAKE = (
    "UPDATE hosts SET lease_owner = {owner}, lease_token = {token}, lease_until = now() + interval '60 s'"
    " WHERE host = ANY({hosts})"
)
LEASE_GIVE = (
    "UPDATE hosts SET lease_owner = NULL, lease_token = NULL, lease_until = NULL, next_fetch_at = now()"
    " WHERE host = ANY({hosts}) AND lease_token = {token}"
)


async def lease_client(driver: str, conn: Any, client: int, stop_at: float, counts: list[int]) -> None:
    tokens = itertools.count(client * 1_000_000_000)
    while time.perf_counter() < stop_at:
        token = next(tokens)
        if driver == "psycopg":
            async with conn.transaction():
                cur = await conn.execute(LEASE_SELECT.format(k=LEASE_K))
                hosts = [r[0] for r in await cur.fetchall()]
                await conn.execute(LEASE_TAKE.format(owner="%s", token="%s", hosts="%s"), (f"c{client}", token, hosts))
            await conn.execute(LEASE_GIVE.format(hosts="%s", token="%s"), (hosts, token))
        else:
            async with conn.transaction():
                hosts = [r[0] for r in await conn.fetch(LEASE_SELECT.format(k=LEASE_K))]
                await conn.execute(LEASE_TAKE.format(owner="$1", token="$2", hosts="$3"), f"c{client}", token, hosts)
            await conn.execute(LEASE_GIVE.format(hosts="$1", token="$2"), hosts, token)
        counts[0] += 1
        counts[1] += len(hosts)


async def lease_run(driver: str, url: str, clients: int, seconds: float, cpu: ServerCpu) -> Sample:
    counts = [0, 0]
    async with contextlib.AsyncExitStack() as stack:
        # Connected before the clock starts and closed after the last CPU reading, so each backend's CPU counts.
        conns = [await stack.enter_async_context(connect(driver, url)) for _ in range(clients)]
        before_server, before_client, start = cpu.seconds(), time.process_time(), time.perf_counter()
        await asyncio.gather(*(lease_client(driver, conn, c, start + seconds, counts) for c, conn in enumerate(conns)))
        wall = time.perf_counter() - start
        client = time.process_time() - before_client
        server = ServerCpu.spent(before_server, cpu.seconds())
    return Sample(counts[1], counts[0], wall, client, server)


def _median(samples: list[Sample]) -> tuple[float, ...]:
    return tuple(statistics.median(s.per_unit[i] for s in samples) for i in range(4))


async def main_async(args: argparse.Namespace, admin_url: str) -> None:
    names = [n for n in CONTENDERS if not args.only or n in args.only.split(",")]
    cpu = ServerCpu(await backend_postmaster(admin_url))
    dbs = Databases(admin_url)
    data = make_batches(args.batches + 1)
    rows = sum(len(b) for b in data) / len(data)
    search = "with" if args.search else "without"
    print(f"write path: {args.batches} batches of ~{rows:.0f} rows ({PAGES} pages), {search} search, {args.runs} runs")
    results: dict[str, list[Sample]] = {n: [] for n in names}
    for run in range(args.runs):
        for name in names:  # interleaved, so a slow spell of the machine hits every contender
            url = await dbs.fresh()
            try:
                await prepare(url, args.batches + 1, search=args.search)
                sample = await write_run(name, url, data, cpu)
            finally:
                await dbs.drop(url)
            results[name].append(sample)
            print(f"  run {run + 1} {name:15} {sample.per_unit[0]:>9,.0f} rows/s", flush=True)
    print()
    print("| contender | rows/s | batches/s | client CPU ms/batch | server CPU ms/batch |")
    print("|---|---:|---:|---:|---:|")
    for name in names:
        r, b, c, s = _median(results[name])
        print(f"| {name} | {r:,.0f} | {b:.1f} | {c:.1f} | {s:.1f} |")

    if args.lease_seconds <= 0:
        return
    print()
    print(f"lease cycle: {LEASE_HOSTS} hosts, {LEASE_K} per lease, {args.lease_seconds:g} s per run, {args.runs} runs")
    drivers = sorted({CONTENDERS[n][0] for n in names})
    lease: dict[tuple[str, int], list[Sample]] = {}
    url = await dbs.fresh()
    try:
        await prepare(url, 0)
        for _ in range(args.runs):
            for driver in drivers:
                for clients in CLIENTS:
                    lease.setdefault((driver, clients), []).append(
                        await lease_run(driver, url, clients, args.lease_seconds, cpu)
                    )
    finally:
        await dbs.drop(url)
    print("| driver | clients | cycles/s | hosts/s | client CPU ms/cycle | server CPU ms/cycle |")
    print("|---|---:|---:|---:|---:|---:|")
    for (driver, clients), samples in lease.items():
        hosts, cycles, c, s = _median(samples)
        print(f"| {driver} | {clients} | {cycles:,.0f} | {hosts:,.0f} | {c:.2f} | {s:.2f} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=int, default=30, help="timed batches per run (one more warms up)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--lease-seconds", type=float, default=3.0, help="per lease run; 0 skips the lease cycle")
    parser.add_argument(
        "--url", help="an existing server's maintenance database, e.g. postgresql://postgres@host/postgres"
    )
    parser.add_argument(
        "--no-search", dest="search", action="store_false", help="pages without the tsvector column and its GIN index"
    )
    parser.add_argument("--only", help=f"comma-separated contenders: {', '.join(CONTENDERS)}")
    args = parser.parse_args(argv)
    if args.url:
        asyncio.run(main_async(args, args.url))
        return 0
    server = PostgresServer.start()
    try:
        print(f"server: {server.bindir.parent.name} in {server.root} (fsync off), port {server.port}")
        asyncio.run(main_async(args, server.url))
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The frontier on a real SQLite store: every queued URL leased once, with memory bounded in rows and hosts."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest

from crawler.config import PolitenessConfig
from crawler.frontier import MIN_WINDOW, Frontier
from crawler.politeness import Lease, Politeness
from crawler.store import JSON_ROWS, NewUrl, QueuedUrl, Store, StoredVersion
from tests.crawlkit import rows


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    s = await Store.open(tmp_path / "frontier.db")
    yield s
    await s.close()


class BootClock:
    """The monotonic clock as on a machine booted `boot` seconds ago: no test may lean on a large reading."""

    def __init__(self, boot: float = 0.0) -> None:
        self._offset = time.monotonic() - boot

    def __call__(self) -> float:
        return time.monotonic() - self._offset


def politeness(clock: Callable[[], float] | None = None) -> Politeness:
    return Politeness(
        PolitenessConfig(delay=0.0, adaptive=False, concurrency=64, per_host_concurrency=2),
        clock=clock or BootClock(),
    )


async def queue_urls(store: Store, hosts: int, per_host: int, *, state: str = "queued") -> list[QueuedUrl]:
    store.add_urls(
        NewUrl(f"http://h{h}.test/{i}", f"h{h}.test:80", 1, state=state)
        for i in range(per_host)
        for h in range(hosts)  # interleaved, as discovery interleaves hosts
    )
    return await store.flush()


class Driver:
    """Plays the engine: lease, finish the URL, and commit only when the frontier starves for a
    commit (the engine's writer also commits on a timer), so completions wait uncommitted."""

    def __init__(self, store: Store, frontier: Frontier, pol: Politeness) -> None:
        self.store, self.frontier, self.pol = store, frontier, pol
        self.leased: list[str] = []
        self.max_rows = self.max_hosts = 0
        self.starving = asyncio.Event()
        frontier.on_starving = self.starving.set

    async def lease(self) -> Lease | None:
        task = asyncio.ensure_future(self.frontier.next())
        while not task.done():
            starving = asyncio.ensure_future(self.starving.wait())
            await asyncio.wait({task, starving}, timeout=10, return_when=asyncio.FIRST_COMPLETED)
            starving.cancel()
            assert task.done() or self.starving.is_set(), "the frontier neither leased nor asked for a commit"
            if self.starving.is_set():
                self.starving.clear()
                await self.commit()
        lease = task.result()
        self.max_rows = max(self.max_rows, self.frontier.queued_in_memory())
        self.max_hosts = max(self.max_hosts, self.frontier.hosts_in_memory())
        if lease is not None:
            self.leased.append(lease.url)
        return lease

    async def finish(self, lease: Lease, discovered: Sequence[NewUrl] = ()) -> None:
        self.store.set_state(lease.url_id, "done")
        self.store.add_urls(discovered)
        self.pol.release(lease.host)
        self.frontier.complete(lease, fetched=True)

    async def commit(self) -> None:
        completions = self.frontier.take_completions()
        self.frontier.committed(completions, await self.store.flush())


async def test_many_hosts_each_url_leased_once_within_the_host_and_row_bounds(store: Store) -> None:
    await queue_urls(store, hosts=40, per_host=30)
    pol = politeness()
    frontier = Frontier(store, pol, window=8, max_in_memory=40, max_hosts=5)
    await frontier.load(fetched=0)
    assert (frontier.hosts_in_memory(), frontier.queued_in_memory()) == (5, 0)  # windows are read lazily

    driver = Driver(store, frontier, pol)
    new_hosts = 0
    while (lease := await driver.lease()) is not None:
        # Early on, pages reveal URLs on hosts never seen; they arrive while the host cap is full.
        discovered = []
        if len(driver.leased) % 20 == 0 and new_hosts < 15:
            discovered = [NewUrl(f"http://new{new_hosts}.test/", f"new{new_hosts}.test:80", 2)]
            new_hosts += 1
        await driver.finish(lease, discovered)

    assert len(driver.leased) == 40 * 30 + 15
    assert Counter(driver.leased).most_common(1)[0][1] == 1
    assert rows(store.path, "SELECT state, count(*) FROM urls GROUP BY state") == [("done", 40 * 30 + 15)]
    assert driver.max_hosts <= 5
    assert driver.max_rows <= 40 + 5 * MIN_WINDOW
    assert (frontier.hosts_in_memory(), frontier.queued_in_memory()) == (0, 0)


async def test_workers_holding_leases_at_once_each_url_once(store: Store) -> None:
    """Four workers, as in the engine: leases overlap, two per host, while hosts wake and drain."""
    await queue_urls(store, hosts=12, per_host=4)
    pol = politeness()
    frontier = Frontier(store, pol, window=2, max_in_memory=4, max_hosts=3)
    await frontier.load(fetched=0)
    driver = Driver(store, frontier, pol)
    most_leased = 0

    async def worker() -> None:
        nonlocal most_leased
        while (lease := await frontier.next()) is not None:
            driver.leased.append(lease.url)
            most_leased = max(most_leased, frontier.leased)
            await asyncio.sleep(0)  # one turn, so the other workers lease meanwhile
            await driver.finish(lease)

    async def writer() -> None:
        while True:
            await driver.starving.wait()
            driver.starving.clear()
            await driver.commit()

    committing = asyncio.ensure_future(writer())
    await asyncio.wait_for(asyncio.gather(*(worker() for _ in range(4))), timeout=10)
    committing.cancel()
    assert sorted(driver.leased) == sorted(f"http://h{h}.test/{i}" for h in range(12) for i in range(4))
    assert most_leased > 1
    assert frontier.hosts_in_memory() == 0


async def test_rows_a_refill_already_read_are_not_queued_again(store: Store) -> None:
    """A refill can run inside the writer's open transaction (one shared connection) and read
    rows before their commit reports them as new; they must not enter the window twice."""
    new = await queue_urls(store, hosts=1, per_host=3)
    pol = politeness()
    frontier = Frontier(store, pol)
    await frontier.load(fetched=0)
    driver = Driver(store, frontier, pol)
    first = await driver.lease()
    assert first is not None and frontier.queued_in_memory() == 2
    frontier.committed([], new[1:])  # the same rows, "newly committed"
    assert frontier.queued_in_memory() == 2
    await driver.finish(first)
    while (lease := await driver.lease()) is not None:
        await driver.finish(lease)
    assert sorted(driver.leased) == [f"http://h0.test/{i}" for i in range(3)]


async def test_max_pages_per_host_counts_pages_of_earlier_runs(store: Store) -> None:
    await queue_urls(store, hosts=2, per_host=3, state="done")
    await queue_urls(store, hosts=2, per_host=1)  # the same URLs: ignored
    store.add_urls([NewUrl(f"http://h{h}.test/more/{i}", f"h{h}.test:80", 1) for h in range(2) for i in range(5)])
    await store.flush()
    pol = politeness()
    frontier = Frontier(store, pol, max_pages_per_host=4)
    await frontier.load(fetched=6)
    driver = Driver(store, frontier, pol)
    while (lease := await driver.lease()) is not None:
        await driver.finish(lease)
    await store.flush()
    assert len(driver.leased) == 2  # one more page per host
    counts = rows(store.path, "SELECT state, reason, count(*) FROM urls GROUP BY state, reason ORDER BY state")
    assert counts == [("done", None, 8), ("skipped", "host_limit", 8)]


async def test_max_pages_counts_pages_of_earlier_runs(store: Store) -> None:
    await queue_urls(store, hosts=1, per_host=10)
    pol = politeness()
    frontier = Frontier(store, pol, max_pages=7)
    await frontier.load(fetched=5)
    driver = Driver(store, frontier, pol)
    while (lease := await driver.lease()) is not None:
        await driver.finish(lease)
    assert len(driver.leased) == 2
    assert frontier.limit_reached()


async def test_a_host_stays_in_memory_until_its_completions_are_committed(store: Store) -> None:
    """Were host h0 forgotten while a URL it finished waits for its commit, waking h0 again
    would read that URL from SQLite as still queued and lease it a second time."""
    await queue_urls(store, hosts=2, per_host=2)
    pol = politeness()
    frontier = Frontier(store, pol, max_hosts=1)
    await frontier.load(fetched=0)
    driver = Driver(store, frontier, pol)
    first = await driver.lease()
    assert first is not None and first.host == "h0.test:80"
    await driver.finish(first)
    completions = frontier.take_completions()
    flush = asyncio.ensure_future(store.flush())  # the writer commits `first`...
    await asyncio.sleep(0)  # (one turn: the flush has taken its batch and begun its transaction)
    second = await driver.lease()  # ...while `second` is leased and finished: the next batch
    assert second is not None
    await driver.finish(second)
    frontier.committed(completions, await flush)
    assert rows(store.path, "SELECT state FROM urls WHERE id = ?", (second.url_id,)) == [("queued",)]
    assert frontier.hosts_in_memory() == 1  # h0 waits for that commit; h1 is not woken yet
    while (lease := await driver.lease()) is not None:
        await driver.finish(lease)
    assert driver.leased == ["http://h0.test/0", "http://h0.test/1", "http://h1.test/0", "http://h1.test/1"]


async def test_the_next_window_is_read_before_the_host_runs_out(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past half its window a host's next rows are read ahead, so its workers do not wait for
    the read; the window still never holds more than `window` rows, and each URL comes once."""
    await queue_urls(store, hosts=1, per_host=100)
    pol = politeness()
    frontier = Frontier(store, pol, window=16)
    await frontier.load(fetched=0)
    left_at_read: list[int] = []
    read = store.queued_for_host

    async def queued_for_host(host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        left_at_read.append(frontier.queued_in_memory())
        return await read(host, after_id, limit)

    monkeypatch.setattr(store, "queued_for_host", queued_for_host)
    driver = Driver(store, frontier, pol)
    while (lease := await driver.lease()) is not None:
        assert frontier.queued_in_memory() <= 16
        await driver.finish(lease)
    assert sorted(driver.leased) == sorted(f"http://h0.test/{i}" for i in range(100))
    assert left_at_read[0] == 0 and len(left_at_read) > 2
    assert all(left > 0 for left in left_at_read[1:-1])  # (the last read finds nothing left)


async def test_reading_ahead_keeps_within_the_memory_budget(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past max_in_memory a host reads no more ahead: its window drains, then it reads
    MIN_WINDOW rows at a time, so the windows stay within the budget plus MIN_WINDOW per host."""
    await queue_urls(store, hosts=1, per_host=200)
    pol = politeness()
    frontier = Frontier(store, pol, window=100, max_in_memory=10)
    await frontier.load(fetched=0)
    reads_done = asyncio.Event()
    read = store.queued_for_host

    async def queued_for_host(host: str, after_id: int, limit: int) -> list[QueuedUrl]:
        reads_done.clear()
        try:
            return await read(host, after_id, limit)
        finally:
            reads_done.set()

    monkeypatch.setattr(store, "queued_for_host", queued_for_host)
    driver = Driver(store, frontier, pol)
    most = 0
    while (lease := await driver.lease()) is not None:
        if not reads_done.is_set():
            await reads_done.wait()  # a worker slower than the read: each read lands before the next lease
        most = max(most, frontier.queued_in_memory())
        await driver.finish(lease)
    assert sorted(driver.leased) == sorted(f"http://h0.test/{i}" for i in range(200))
    assert most <= 10 + MIN_WINDOW


async def test_a_worker_finding_nothing_asks_for_a_commit_only_while_request_capacity_is_free(store: Store) -> None:
    """A commit may queue URLs to lease; with all `concurrency` request slots held, no lease
    could start sooner, so an idle worker (the engine runs more workers than slots) waits
    for the next flush instead of asking for one at every look."""
    store.add_urls(NewUrl(f"http://h0.test/{i}", "h0.test:80", 1) for i in range(3))
    store.add_urls([NewUrl("http://h1.test/0", "h1.test:80", 1)])
    await store.flush()
    pol = Politeness(
        PolitenessConfig(delay=0.0, adaptive=False, concurrency=2, per_host_concurrency=1), clock=BootClock()
    )
    frontier = Frontier(store, pol)
    await frontier.load(fetched=0)
    driver = Driver(store, frontier, pol)
    a, b = await driver.lease(), await driver.lease()
    assert a is not None and b is not None and {a.host, b.host} == {"h0.test:80", "h1.test:80"}
    on_h0, on_h1 = (a, b) if a.host == "h0.test:80" else (b, a)
    await driver.finish(on_h0)  # awaits its commit
    c = await driver.lease()
    assert c is not None and c.host == "h0.test:80" and pol.held == 2

    idle = asyncio.ensure_future(frontier.next())
    await asyncio.sleep(0)  # (one turn: the idle worker has looked and waits)
    assert not idle.done() and not driver.starving.is_set()

    await driver.finish(on_h1)  # a request slot is free again, and nothing to lease: now it asks
    await asyncio.wait_for(driver.starving.wait(), timeout=10)
    driver.starving.clear()
    await driver.commit()
    await driver.finish(c)
    last = await asyncio.wait_for(idle, timeout=10)
    assert last is not None and last.url == "http://h0.test/2"
    await driver.finish(last)
    assert await driver.lease() is None


async def test_a_batch_applies_state_changes_in_order_and_keeps_new_urls_exactly(store: Store) -> None:
    """A flush sends its rows to SQLite as one JSON array per statement: values and order must survive it."""
    odd = "http://h.test/ünï?q=%22quote%22&b=\\back"
    store.add_urls(
        [
            NewUrl("http://h.test/a", "h.test:80", 2, None),
            NewUrl(odd, "h.test:80", 3, 7, "skipped", "robots"),
        ]
    )
    queued = await store.flush()
    assert [(q.url, q.depth) for q in queued] == [("http://h.test/a", 2)]
    a_id = queued[0].id
    store.set_state(a_id, "in_flight")
    store.set_state(a_id, "failed", "whatever")
    store.set_state(a_id, "done")  # the last change of a batch wins
    await store.flush()
    assert rows(store.path, "SELECT url, depth, parent_id, state, reason FROM urls ORDER BY id") == [
        ("http://h.test/a", 2, None, "done", None),
        (odd, 3, 7, "skipped", "robots"),
    ]


async def test_batches_larger_than_one_json_statement_keep_every_row_in_order(store: Store) -> None:
    count = 3 * JSON_ROWS + 5
    store.add_urls([NewUrl(f"http://h.test/{i}", "h.test:80", 1, None) for i in range(count)])
    queued = await store.flush()
    assert [q.url for q in queued] == [f"http://h.test/{i}" for i in range(count)]
    assert [q.id for q in queued] == sorted(q.id for q in queued)
    for q in queued:
        store.set_state(q.id, "done")
    await store.flush()
    assert rows(store.path, "SELECT state, count(*) FROM urls GROUP BY state") == [("done", count)]


@pytest.mark.parametrize("boot", [-3.0, 0.0, 5.0])
async def test_new_hosts_are_leased_at_once_whatever_the_clock_reads(store: Store, boot: float) -> None:
    """A clock that stands still at a reading near zero: hosts never asked are ready now, not at 0.0."""
    await queue_urls(store, hosts=3, per_host=2)
    pol = politeness(lambda: boot)
    frontier = Frontier(store, pol, max_hosts=2)
    await frontier.load(fetched=0)
    driver = Driver(store, frontier, pol)
    # Bounded: a host held until the clock reads 0.0 would never be ready on this clock.
    while (lease := await asyncio.wait_for(driver.lease(), timeout=5)) is not None:
        await driver.finish(lease)
    assert sorted(driver.leased) == sorted(f"http://h{h}.test/{i}" for h in range(3) for i in range(2))
    assert driver.max_hosts <= 2


async def test_the_host_cap_holds_when_new_hosts_arrive_while_a_scan_reads(store: Store) -> None:
    """A commit can bring new hosts in while a wake-up scan waits for SQLite; the scan must
    then wake only as many dormant hosts as the cap still allows."""
    await queue_urls(store, hosts=10, per_host=1)
    pol = politeness()
    frontier = Frontier(store, pol, max_hosts=3)
    await frontier.load(fetched=0)
    assert frontier.hosts_in_memory() == 3
    scan_read, go_on = asyncio.Event(), asyncio.Event()
    queued_hosts = store.queued_hosts

    async def held_scan(after: str, limit: int) -> list[str]:
        hosts = await queued_hosts(after, limit)
        scan_read.set()
        await go_on.wait()
        return hosts

    store.queued_hosts = held_scan  # type: ignore[method-assign]
    driver = Driver(store, frontier, pol)
    try:
        first = await driver.lease()
        assert first is not None
        await driver.finish(first)
        await driver.commit()  # its host is done and forgotten: a scan starts to wake another
        await asyncio.wait_for(scan_read.wait(), timeout=5)
        assert frontier.hosts_in_memory() == 2
        store.add_urls([NewUrl("http://new.test/", "new.test:80", 2)])
        await driver.commit()  # the new host takes the free place while the scan waits
        assert frontier.hosts_in_memory() == 3
        go_on.set()
        while (lease := await driver.lease()) is not None:
            await driver.finish(lease)
    finally:
        go_on.set()
    assert driver.max_hosts <= 3
    assert len(driver.leased) == 11 and Counter(driver.leased).most_common(1)[0][1] == 1


async def test_a_window_read_returns_each_row_as_stored_in_id_order(store: Store) -> None:
    """Windows are read as one JSON array: quotes, backslashes and non-ASCII text survive, and
    in a recrawl pass a stored page brings its version (NULL validators as None), a new URL none."""
    odd = ['http://h.test/"q"', "http://h.test/back\\slash", "http://h.test/é?ü=☃", "http://h.test/plain"]
    store.add_urls(NewUrl(url, "h.test:80", i) for i, url in enumerate(odd))
    queued = await store.flush()
    window = await store.queued_for_host("h.test:80", 0, 10)
    assert [(q.id, q.url, q.host, q.depth, q.kind, q.previous) for q in window] == [
        (q.id, q.url, "h.test:80", i, "page", None) for i, q in enumerate(queued)
    ]
    assert [q.url for q in await store.queued_for_host("h.test:80", queued[1].id, 1)] == [odd[2]]

    for url_id, url, status, content_hash, etag, last_modified in [
        (queued[0].id, odd[0], 200, "h0", '"e\\"tag"', None),
        (queued[2].id, odd[2], 404, None, None, "Sat, 01 Jan 2000 00:00:00 GMT"),
    ]:
        await store.fetchall(
            "INSERT INTO pages (url_id, url, final_url, status, depth, fetched_at, elapsed_ms, bytes, headers,"
            " redirects, content_hash, etag, last_modified)"
            " VALUES (?, ?, ?, ?, 0, '2000-01-01', 1, 0, '{}', '[]', ?, ?, ?)",
            (url_id, url, url, status, content_hash, etag, last_modified),
        )
    store.begin_pass(1, keep_history=False)
    window = await store.queued_for_host("h.test:80", 0, 10)
    assert [q.previous for q in window] == [
        StoredVersion(200, "h0", '"e\\"tag"', None),
        None,
        StoredVersion(404, None, None, "Sat, 01 Jan 2000 00:00:00 GMT"),
        None,
    ]
    assert [q.url for q in window] == odd

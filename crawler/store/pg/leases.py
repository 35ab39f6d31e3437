"""Host leases on PostgreSQL: taking hosts in batches, renewing, releasing, fencing a flush; the page budget.

A host is fetched by one process at a time: the one whose run is its `lease_owner` with a
`lease_until` still ahead on the database's clock. Every time here is `now()` on the server,
never a machine's clock; a holder hands over a wait relative to now (`next_fetch_at`) and the
host's delays, so the next holder continues from the same politeness.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from crawler.politeness import HostState
from crawler.store.batch import Batch
from crawler.store.pg.connection import Conn, PgConnection
from crawler.store.records import utc_now

MAX_TAKE = 16  # hosts taken per lease transaction
HUNGRY_FOR = 2.0  # seconds a run's hunger holds: a few of its polls (LeasedFrontier's MAX_POLL)
MAX_FREE_COUNT = 1024  # free hosts with work counted at most: beyond that, a fair share is no limit

_TAKE = """
WITH free AS (
    SELECT h.host FROM hosts h
     WHERE h.next_fetch_at <= now()
       AND (h.lease_owner IS NULL OR h.lease_until < now()) AND h.host <> ALL(%(passed)s::text[])
       AND EXISTS (SELECT 1 FROM urls u WHERE u.host = h.host AND u.state IN ('queued', 'in_flight'))
     ORDER BY h.next_fetch_at
     LIMIT %(k)s
     FOR UPDATE OF h SKIP LOCKED
)
UPDATE hosts SET lease_owner = %(run)s, lease_token = nextval('lease_tokens'),
       lease_until = now() + make_interval(secs => %(secs)s)
  FROM free WHERE hosts.host = free.host
RETURNING hosts.host, hosts.lease_token, extract(epoch FROM hosts.next_fetch_at - now())::float8,
          hosts.crawl_delay, hosts.adaptive_delay, hosts.backoff_delay
"""

# Renews the hosts this run still holds (owner, token and an unexpired lease) and names them;
# the row locks it takes keep a taker off those hosts until the caller's transaction ends. The
# holder's politeness goes into the row too, so a taker after a crash continues from it.
_RENEW = """
UPDATE hosts h SET lease_until = now() + make_interval(secs => %(secs)s),
       next_fetch_at = now() + make_interval(secs => t.wait),
       crawl_delay = t.crawl_delay, adaptive_delay = t.adaptive_delay, backoff_delay = t.backoff_delay
  FROM unnest(%(hosts)s::text[], %(tokens)s::bigint[], %(waits)s::float8[], %(crawl)s::float8[],
              %(adaptive)s::float8[], %(backoff)s::float8[])
       AS t(host, token, wait, crawl_delay, adaptive_delay, backoff_delay)
 WHERE h.host = t.host AND h.lease_owner = %(run)s AND h.lease_token = t.token AND h.lease_until > now()
RETURNING h.host
"""

# Also says how many hosts the run holds after it, for the others' fair share.
_RELEASE = """
WITH released AS (
    UPDATE hosts h SET lease_owner = NULL, lease_token = NULL, lease_until = NULL,
           next_fetch_at = now() + make_interval(secs => t.wait),
           crawl_delay = t.crawl_delay, adaptive_delay = t.adaptive_delay, backoff_delay = t.backoff_delay
      FROM unnest(%(hosts)s::text[], %(tokens)s::bigint[], %(waits)s::float8[], %(crawl)s::float8[],
                  %(adaptive)s::float8[], %(backoff)s::float8[])
           AS t(host, token, wait, crawl_delay, adaptive_delay, backoff_delay)
     WHERE h.host = t.host AND h.lease_owner = %(run)s AND h.lease_token = t.token
    RETURNING 1
)
UPDATE runs SET held = %(held)s WHERE id = %(run)s
"""

# Seconds until the earliest host nobody holds (or whose lease expired) with URLs left is due;
# NULL when every such host is held; no row when no URL is queued or in flight anywhere.
_WORK_DUE_IN = """
SELECT (SELECT extract(epoch FROM h.next_fetch_at - now())::float8 FROM hosts h
         WHERE (h.lease_owner IS NULL OR h.lease_until < now())
           AND EXISTS (SELECT 1 FROM urls u WHERE u.host = h.host AND u.state IN ('queued', 'in_flight'))
         ORDER BY h.next_fetch_at LIMIT 1)
 WHERE EXISTS (SELECT 1 FROM urls WHERE state = 'queued') OR EXISTS (SELECT 1 FROM urls WHERE state = 'in_flight')
"""

# Whether another run, still running, found no host to take at one of its last polls (a poller
# writes hungry_at at least every MAX_POLL; a take clears it).
_HUNGRY = """
EXISTS (SELECT 1 FROM runs r WHERE r.id <> %(run)s AND r.outcome = 'running'
           AND r.hungry_at > now() - make_interval(secs => %(hungry_for)s))
"""

# The other runs still running (a heartbeat within a lease), how many hosts they hold and the
# fewest one holds, as each last said: with the free hosts, what a run's fair share is made of.
_OTHERS = """FROM runs r WHERE r.id <> %(run)s AND r.outcome = 'running'
    AND r.heartbeat_at > now() - make_interval(secs => %(secs)s)"""
_FLEET = f"""
(SELECT count(*) {_OTHERS}), (SELECT coalesce(sum(r.held), 0) {_OTHERS}), (SELECT coalesce(min(r.held), 0) {_OTHERS})
"""

# How many hosts nobody holds (or whose lease expired) have URLs left, up to a bound, whether
# another run is hungry, and the fleet.
_FREE_AND_FLEET = f"""
SELECT (SELECT count(*) FROM (SELECT 1 FROM hosts h
                WHERE (h.lease_owner IS NULL OR h.lease_until < now())
                  AND EXISTS (SELECT 1 FROM urls u WHERE u.host = h.host AND u.state IN ('queued', 'in_flight'))
                LIMIT {MAX_FREE_COUNT}) free),
       {_HUNGRY}, {_FLEET}
"""

# Gives back, exactly once, what dead runs claimed of the budget and did not fetch: a run is dead
# when it ended (its own give-back may not have happened) or its heartbeat is older than a lease,
# and it holds no unexpired lease. A second reclaimer waits for the first's row locks, and READ
# COMMITTED then re-checks `claimed > fetched` on the row as the first left it: none is left.
_RECLAIM = """
WITH dead AS (
    SELECT r.id, r.claimed - r.fetched AS unused FROM runs r
     WHERE r.id <> %(run)s AND r.claimed > r.fetched
       AND (r.outcome <> 'running' OR r.heartbeat_at IS NULL
            OR r.heartbeat_at < now() - make_interval(secs => %(secs)s))
       AND NOT EXISTS (SELECT 1 FROM hosts h WHERE h.lease_owner = r.id AND h.lease_until > now())
     ORDER BY r.id
     FOR UPDATE OF r
), back AS (
    UPDATE runs r SET claimed = r.fetched FROM dead WHERE r.id = dead.id RETURNING dead.unused
)
UPDATE budget SET claimed = greatest(0, claimed - (SELECT sum(unused) FROM back))
 WHERE id = 1 AND EXISTS (SELECT 1 FROM back)
RETURNING (SELECT sum(unused) FROM back)
"""

# What other runs claimed and have not fetched (yet), after _RECLAIM: runs alive, or holding a
# lease still; those pages are either fetched or come back to the budget.
_OUTSTANDING = "SELECT coalesce(sum(claimed - fetched), 0) FROM runs WHERE id <> %(run)s AND claimed > fetched"


class HostLeases:
    """The hosts one run holds, and the SQL that takes, renews, releases and fences them."""

    def __init__(
        self, conn: PgConnection, run_id: int, lease_seconds: float, *, side: PgConnection | None = None
    ) -> None:
        self._conn = conn
        # Takes and looks for work go on the side connection, when there is one: a flush on the
        # main one holds it (and this run's row) until its commit, and a host taken is fetched
        # only once its window is read, which then need not wait either (crawler/store/pg/store.py).
        self._side = side or conn
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        self.held: dict[str, int] = {}  # host -> lease token
        self.fencing = False  # set once a frontier leases hosts; flushes then write only for held hosts
        self.lost: set[str] = set()  # hosts found taken or expired, for the frontier to forget
        # A host's politeness as this process holds it, written to its row at release and renewal,
        # and where a taken host's row is handed (set by the frontier).
        self.state_of: Callable[[str], HostState] = lambda host: HostState(0.0)
        self.restore: Callable[[str, HostState], None] = lambda host, state: None
        self.claim_left = 0  # pages this run claimed and has not fetched, as its row said at the last heartbeat
        # Hosts with URLs left, held or free (counting at most MAX_FREE_COUNT free), at the last
        # count: each renewal, and a look that found none free. In between, the free hosts are
        # those of them the fleet does not hold; hosts that ran out of URLs since count until the
        # next look, which a take that finds none makes.
        self.with_work = 1
        self.other_runs = 0  # other runs still running, at this run's last renewal, commit or take
        self.others_held = 0  # hosts they hold, as each said at its last renewal, commit or take
        self.others_least = 0  # the fewest hosts one of them holds
        # Whether another run found no host to take lately, at the last renewal or flush; the
        # frontier sets it back once it let a host go for it.
        self.hungry = False

    @property
    def free_count(self) -> int:
        """Hosts with URLs left that nobody holds, as far as this run knows."""
        return max(0, self.with_work - self.others_held - len(self.held))

    @property
    def free_hosts(self) -> bool:
        return self.free_count > 0

    def fair_share(self) -> int:
        """Hosts with work per running run, rounded up: a run below it takes hosts whatever its
        CPU, and one holding two or more than the run holding fewest lets go of those beyond it
        while none is free, so the fleet's hosts are spread evenly and end at about the same time."""
        return -(-self.with_work // (self.other_runs + 1))

    def note_fleet(self, other_runs: int, others_held: int, others_least: int) -> None:
        self.other_runs, self.others_held, self.others_least = int(other_runs), int(others_held), int(others_least)

    def _note_free(self, free: int) -> None:
        self.with_work = self.others_held + len(self.held) + free

    # ---- taking -----------------------------------------------------------------------------

    async def ensure_hosts(self) -> None:
        """Give every host with queued or in-flight URLs its hosts row (rows queued before leasing began)."""
        await self._conn.run(
            lambda conn: conn.execute(
                "INSERT INTO hosts (host) SELECT DISTINCT host FROM urls WHERE state IN ('queued', 'in_flight')"
                " ORDER BY host ON CONFLICT DO NOTHING"
            )
        )

    async def take(self, k: int, passed: Iterable[str] = ()) -> list[str]:
        """Lease up to k hosts that are free (or whose lease expired) and due, except those
        `passed` over (let go for others a moment ago); their in-flight URLs, left by a holder
        that lost them, are queued again in the same transaction."""
        k = max(0, min(k, MAX_TAKE))
        if not k:
            return []

        async def take(conn: Conn) -> list[tuple[Any, ...]]:
            params = {"k": k, "run": self.run_id, "secs": self.lease_seconds, "passed": list(passed)}
            cur = await conn.execute(_TAKE, params)
            taken = [tuple(row) for row in await cur.fetchall()]
            if taken:
                await conn.execute(
                    "UPDATE urls SET state = 'queued', updated_at = %s WHERE host = ANY(%s) AND state = 'in_flight'",
                    (utc_now(), [row[0] for row in taken]),
                )
                # Skipped while this run's flush has its row: that flush's commit says how many it
                # holds, as its next renewal does, and hunger that is over expires. The fleet read
                # back keeps the next take's share current while runs are still joining.
                cur = await conn.execute(
                    "UPDATE runs SET hungry_at = NULL, held = %(held)s"
                    " WHERE id = (SELECT id FROM runs WHERE id = %(run)s FOR UPDATE SKIP LOCKED)"
                    f" RETURNING {_FLEET}",
                    {"held": len(self.held) + len(taken), "run": self.run_id, "secs": self.lease_seconds},
                )
                fleet = await cur.fetchone()
                if fleet is not None:
                    self.note_fleet(*fleet)
            return taken

        taken = await self._side.transaction(take)
        for host, token, wait, crawl_delay, adaptive_delay, backoff_delay in taken:
            self.held[host] = int(token)
            self.lost.discard(host)
            self.restore(host, HostState(float(wait), crawl_delay, adaptive_delay, backoff_delay))
        return [row[0] for row in taken]

    async def work_due_in(self, *, idle: bool = False) -> float | None:
        """None when no URL is queued or in flight anywhere; else seconds until the earliest host
        nobody holds that has URLs left is due (≤ 0: due now; inf: every such host is held, and
        an `idle` run, one with no host of its own to work on, records that it is hungry, for the
        holders of several to let one go)."""

        async def look(conn: Conn) -> float | None:
            cur = await conn.execute(_WORK_DUE_IN)
            row = await cur.fetchone()
            if row is None or row[0] is None:
                self._note_free(0)
            if row is None:
                return None
            if row[0] is None and idle:
                # Skipped while this run's flush has its row, as in take: the next look says it.
                await conn.execute(
                    "UPDATE runs SET hungry_at = now()"
                    " WHERE id = (SELECT id FROM runs WHERE id = %s FOR UPDATE SKIP LOCKED)",
                    (self.run_id,),
                )
            return float("inf") if row[0] is None else float(row[0])

        return await self._side.run(look)

    # ---- keeping ----------------------------------------------------------------------------

    async def renew_in(self, conn: Conn, hosts: Iterable[str]) -> set[str]:
        """Inside the caller's transaction: renew those of `hosts` still held; returns the ones lost."""
        hosts = set(hosts)
        mine = [h for h in hosts if h in self.held]
        kept: set[str] = set()
        if mine:
            cur = await conn.execute(_RENEW, {"secs": self.lease_seconds, **self._states(mine)})
            kept = {row[0] for row in await cur.fetchall()}
        lost = hosts - kept
        for host in lost:
            self._forget(host)
        return lost

    async def renew(self) -> set[str]:
        """Renew every held host and beat the run's heartbeat; returns the hosts lost meanwhile.
        `claim_left` is then what the run's row holds of its claim (less, if others reclaimed it),
        `free_count` how many hosts nobody holds have URLs left, `hungry` whether another run
        found no host to take lately, and the fleet (other runs, the hosts they hold) is read;
        the run's row says how many hosts it holds."""

        async def renew(conn: Conn) -> set[str]:
            cur = await conn.execute(
                "UPDATE runs SET heartbeat_at = now(), held = %s WHERE id = %s RETURNING claimed - fetched",
                (len(self.held), self.run_id),
            )
            row = await cur.fetchone()
            self.claim_left = int(row[0]) if row is not None else 0
            cur = await conn.execute(
                _FREE_AND_FLEET, {"run": self.run_id, "hungry_for": HUNGRY_FOR, "secs": self.lease_seconds}
            )
            row = await cur.fetchone()
            if row is not None:
                self.hungry = bool(row[1])
                self.note_fleet(row[2], row[3], row[4])
                self._note_free(int(row[0]))
            return await self.renew_in(conn, list(self.held))

        return await self._conn.transaction(renew)

    def _states(self, hosts: list[str]) -> dict[str, Any]:
        """The parameters of _RENEW and _RELEASE: each host's token and politeness."""
        states = [self.state_of(h) for h in hosts]
        return {
            "hosts": hosts,
            "tokens": [self.held[h] for h in hosts],
            "waits": [max(0.0, s.wait) for s in states],
            "crawl": [s.crawl_delay for s in states],
            "adaptive": [s.adaptive_delay for s in states],
            "backoff": [s.backoff_delay for s in states],
            "run": self.run_id,
        }

    def _forget(self, host: str) -> None:
        if self.held.pop(host, None) is not None:
            self.lost.add(host)

    def take_lost(self) -> set[str]:
        lost, self.lost = self.lost, set()
        return lost

    # ---- letting go -------------------------------------------------------------------------

    async def release(self, hosts: Iterable[str]) -> None:
        """Let go of hosts; the next holder may start at now() + what is left of each one's delay,
        and continues from each one's delays (Crawl-delay, adaptive, 429 back-off)."""
        mine = [h for h in hosts if h in self.held]
        if not mine:
            return
        params = self._states(mine)
        for host in mine:
            del self.held[host]
        params["held"] = len(self.held)
        await self._conn.run(lambda conn: conn.execute(_RELEASE, params))

    async def release_all(self) -> None:
        await self.release(list(self.held))

    # ---- the fleet's page budget (max_pages) --------------------------------------------------

    async def open_budget(self, max_pages: int, fetched: int) -> None:
        """The budget row: max_pages as this config sets it; what is claimed starts at what is fetched."""
        await self._conn.run(
            lambda conn: conn.execute(
                "INSERT INTO budget (id, max_pages, claimed) VALUES (1, %s, %s)"
                " ON CONFLICT (id) DO UPDATE SET max_pages = excluded.max_pages",
                (max_pages, fetched),
            )
        )

    async def claim(self, pages: int) -> tuple[int, int]:
        """Claim up to `pages` more pages of the fleet's max_pages, after giving back what dead runs
        claimed and did not fetch. Returns the pages granted, and the pages other runs claimed and
        have not fetched yet (those may still come back, so a short grant need not be the end)."""

        async def claim(conn: Conn) -> tuple[int, int]:
            # This run's row first, then the budget's, as every writer of both locks them.
            await conn.execute("SELECT 1 FROM runs WHERE id = %s FOR UPDATE", (self.run_id,))
            await conn.execute(_RECLAIM, {"run": self.run_id, "secs": self.lease_seconds})
            cur = await conn.execute(
                "WITH old AS (SELECT claimed FROM budget WHERE id = 1 FOR UPDATE)"
                " UPDATE budget b SET claimed = least(b.max_pages, b.claimed + %s) FROM old WHERE b.id = 1"
                " RETURNING b.claimed - old.claimed",
                (pages,),
            )
            row = await cur.fetchone()
            granted = int(row[0]) if row is not None else 0
            if granted:
                await conn.execute("UPDATE runs SET claimed = claimed + %s WHERE id = %s", (granted, self.run_id))
            cur = await conn.execute(_OUTSTANDING, {"run": self.run_id})
            row = await cur.fetchone()
            return granted, int(row[0]) if row is not None else 0

        return await self._conn.transaction(claim)

    async def give_back(self, pages: int) -> None:
        """Return claimed pages this run will not fetch (never more than its row says it has left,
        which is less when others reclaimed its claim while it looked dead)."""
        if pages <= 0:
            return
        await self._conn.transaction(
            lambda conn: conn.execute(
                "WITH mine AS (SELECT least(%(pages)s, claimed - fetched) AS back FROM runs"
                "  WHERE id = %(run)s AND claimed > fetched FOR UPDATE),"
                " back AS (UPDATE runs SET claimed = claimed - mine.back FROM mine WHERE id = %(run)s"
                "  RETURNING mine.back)"
                " UPDATE budget SET claimed = greatest(0, claimed - (SELECT back FROM back))"
                " WHERE id = 1 AND EXISTS (SELECT 1 FROM back)",
                {"pages": pages, "run": self.run_id},
            )
        )

    # ---- one given host, for one request (a robots.txt redirected into it) ---------------------

    async def take_if_free(self, host: str) -> bool:
        """Lease `host` now if nobody holds it (or its lease expired), whatever its due time, giving it
        a hosts row when it has none; its politeness goes to `restore` as a take's does, so the
        request waits for its due time here. False: another run holds it (or this one already does).
        The caller releases it with `release`."""
        take_one = """
            UPDATE hosts SET lease_owner = %(run)s, lease_token = nextval('lease_tokens'),
                   lease_until = now() + make_interval(secs => %(secs)s)
             WHERE host = %(host)s AND (lease_owner IS NULL OR lease_until < now())
            RETURNING lease_token, extract(epoch FROM next_fetch_at - now())::float8,
                      crawl_delay, adaptive_delay, backoff_delay
        """

        async def take(conn: Conn) -> tuple[Any, ...] | None:
            await conn.execute("INSERT INTO hosts (host) VALUES (%s) ON CONFLICT DO NOTHING", (host,))
            cur = await conn.execute(take_one, {"host": host, "run": self.run_id, "secs": self.lease_seconds})
            row = await cur.fetchone()
            return tuple(row) if row is not None else None

        taken = await self._conn.transaction(take)
        if taken is None:
            return False
        token, wait, crawl_delay, adaptive_delay, backoff_delay = taken
        self.held[host] = int(token)
        self.lost.discard(host)
        self.restore(host, HostState(float(wait), crawl_delay, adaptive_delay, backoff_delay))
        return True


async def fence(conn: Conn, leases: HostLeases, batch: Batch) -> Batch:
    """Inside the flush's transaction: renew the hosts the batch writes for, and return the batch
    without the rows of hosts this run no longer holds (a lease that expired or was taken over)."""
    ids = {s[3] for s in batch.states} | {p.url_id for p in batch.pages} | {e[0] for e in batch.errors if e[0]}
    ids |= {c[3] for c in batch.confirmed} | {c[0] for c in batch.changes} | set(batch.archived)
    ids |= {s.url_id for s in batch.sitemaps} | {u.parent_id for u in batch.new_urls if u.parent_id is not None}
    ids |= {u.parent_id for u in batch.listed_urls if u.parent_id is not None} | set(batch.counted)
    host_of: dict[int, str] = {}
    if ids:
        cur = await conn.execute("SELECT id, host FROM urls WHERE id = ANY(%s)", (sorted(ids),))
        host_of = {row[0]: row[1] for row in await cur.fetchall()}
    # Locked in name order, so that two flushes never wait on each other crosswise.
    hosts = sorted(set(host_of.values()) | {skip[2] for skip in batch.host_skips})
    lost = await leases.renew_in(conn, hosts)

    def gone(url_id: int | None) -> bool:
        return url_id is not None and host_of.get(url_id) in lost

    # The run's fetched pages commit with their rows, so claimed − fetched is exactly what a dead
    # run leaves unused.
    counted = sum(1 for url_id in batch.counted if not gone(url_id))
    if counted:
        # The same statement says how many hosts this run holds and tells whether another run is
        # hungry, and the fleet, so holders learn it at every commit.
        cur = await conn.execute(
            f"UPDATE runs SET fetched = fetched + %(counted)s, held = %(held)s WHERE id = %(run)s"
            f" RETURNING {_HUNGRY}, {_FLEET}",
            {
                "counted": counted, "held": len(leases.held), "run": leases.run_id,
                "hungry_for": HUNGRY_FOR, "secs": leases.lease_seconds,
            },
        )  # fmt: skip
        row = await cur.fetchone()
        leases.hungry = bool(row[0]) if row is not None else False
        if row is not None:
            leases.note_fleet(row[1], row[2], row[3])
    if not lost:
        return batch

    return Batch(
        new_urls=[u for u in batch.new_urls if not gone(u.parent_id)],
        pages=[p for p in batch.pages if not gone(p.url_id)],
        links=[link for link in batch.links if not gone(link[0])],
        errors=[e for e in batch.errors if not gone(e[0])],
        states=[s for s in batch.states if not gone(s[3])],
        robots=batch.robots,
        host_skips=[skip for skip in batch.host_skips if skip[2] not in lost],
        listed_urls=[u for u in batch.listed_urls if not gone(u.parent_id)],
        sitemaps=[s for s in batch.sitemaps if not gone(s.url_id)],
        archived=[a for a in batch.archived if not gone(a)],
        confirmed=[c for c in batch.confirmed if not gone(c[3])],
        changes=[c for c in batch.changes if not gone(c[0])],
    )

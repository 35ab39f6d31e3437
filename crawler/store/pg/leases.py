"""Host leases on PostgreSQL: taking hosts in batches, renewing, releasing, fencing a flush; the page budget.

A host is fetched by one process at a time: the one whose run is its `lease_owner` with a
`lease_until` still ahead on the database's clock. Every time here is `now()` on the server,
never a machine's clock; a holder hands over a wait relative to now (`next_fetch_at`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from crawler.store.batch import Batch
from crawler.store.pg.connection import Conn, PgConnection
from crawler.store.records import utc_now

MAX_TAKE = 16  # hosts taken per lease transaction

_TAKE = """
WITH free AS (
    SELECT h.host FROM hosts h
     WHERE h.next_fetch_at <= now()
       AND (h.lease_owner IS NULL OR h.lease_until < now())
       AND EXISTS (SELECT 1 FROM urls u WHERE u.host = h.host AND u.state IN ('queued', 'in_flight'))
     ORDER BY h.next_fetch_at
     LIMIT %(k)s
     FOR UPDATE OF h SKIP LOCKED
)
UPDATE hosts SET lease_owner = %(run)s, lease_token = nextval('lease_tokens'),
       lease_until = now() + make_interval(secs => %(secs)s)
  FROM free WHERE hosts.host = free.host
RETURNING hosts.host, hosts.lease_token
"""

# Renews the hosts this run still holds (owner, token and an unexpired lease) and names them;
# the row locks it takes keep a taker off those hosts until the caller's transaction ends.
_RENEW = """
UPDATE hosts h SET lease_until = now() + make_interval(secs => %(secs)s)
  FROM unnest(%(hosts)s::text[], %(tokens)s::bigint[]) AS t(host, token)
 WHERE h.host = t.host AND h.lease_owner = %(run)s AND h.lease_token = t.token AND h.lease_until > now()
RETURNING h.host
"""


class HostLeases:
    """The hosts one run holds, and the SQL that takes, renews, releases and fences them."""

    def __init__(self, conn: PgConnection, run_id: int, lease_seconds: float) -> None:
        self._conn = conn
        self.run_id = run_id
        self.lease_seconds = lease_seconds
        self.held: dict[str, int] = {}  # host -> lease token
        self.fencing = False  # set once a frontier leases hosts; flushes then write only for held hosts
        self.lost: set[str] = set()  # hosts found taken or expired, for the frontier to forget
        # Seconds until a host may next start a request here (its politeness), for releases.
        self.wait_of: Callable[[str], float] = lambda host: 0.0

    # ---- taking -----------------------------------------------------------------------------

    async def ensure_hosts(self) -> None:
        """Give every host with queued or in-flight URLs its hosts row (rows queued before leasing began)."""
        await self._conn.run(
            lambda conn: conn.execute(
                "INSERT INTO hosts (host) SELECT DISTINCT host FROM urls WHERE state IN ('queued', 'in_flight')"
                " ORDER BY host ON CONFLICT DO NOTHING"
            )
        )

    async def take(self, k: int) -> list[str]:
        """Lease up to k hosts that are free (or whose lease expired) and due; their in-flight URLs,
        left by a holder that lost them, are queued again in the same transaction."""
        k = max(0, min(k, MAX_TAKE))
        if not k:
            return []

        async def take(conn: Conn) -> list[tuple[str, int]]:
            cur = await conn.execute(_TAKE, {"k": k, "run": self.run_id, "secs": self.lease_seconds})
            taken = [(row[0], int(row[1])) for row in await cur.fetchall()]
            if taken:
                await conn.execute(
                    "UPDATE urls SET state = 'queued', updated_at = %s WHERE host = ANY(%s) AND state = 'in_flight'",
                    (utc_now(), [host for host, _ in taken]),
                )
            return taken

        taken = await self._conn.transaction(take)
        for host, token in taken:
            self.held[host] = token
            self.lost.discard(host)
        return [host for host, _ in taken]

    async def work_left(self) -> bool:
        """Whether any URL is queued or in flight anywhere: held by others, or waiting for its host's time."""
        return bool(
            await self._scalar(
                "SELECT EXISTS (SELECT 1 FROM urls WHERE state = 'queued')"
                " OR EXISTS (SELECT 1 FROM urls WHERE state = 'in_flight')"
            )
        )

    # ---- keeping ----------------------------------------------------------------------------

    async def renew_in(self, conn: Conn, hosts: Iterable[str]) -> set[str]:
        """Inside the caller's transaction: renew those of `hosts` still held; returns the ones lost."""
        hosts = set(hosts)
        mine = [h for h in hosts if h in self.held]
        kept: set[str] = set()
        if mine:
            cur = await conn.execute(
                _RENEW,
                {
                    "secs": self.lease_seconds,
                    "hosts": mine,
                    "tokens": [self.held[h] for h in mine],
                    "run": self.run_id,
                },
            )
            kept = {row[0] for row in await cur.fetchall()}
        lost = hosts - kept
        for host in lost:
            self._forget(host)
        return lost

    async def renew(self, fetched: int) -> set[str]:
        """Renew every held host and beat the run's heartbeat; returns the hosts lost meanwhile."""

        async def renew(conn: Conn) -> set[str]:
            await conn.execute(
                "UPDATE runs SET heartbeat_at = now(), fetched = %s WHERE id = %s", (fetched, self.run_id)
            )
            return await self.renew_in(conn, list(self.held))

        return await self._conn.transaction(renew)

    def _forget(self, host: str) -> None:
        if self.held.pop(host, None) is not None:
            self.lost.add(host)

    def take_lost(self) -> set[str]:
        lost, self.lost = self.lost, set()
        return lost

    # ---- letting go -------------------------------------------------------------------------

    async def release(self, hosts: Iterable[str]) -> None:
        """Let go of hosts; the next holder may start at now() + what is left of each one's delay."""
        rows = [(h, self.held.pop(h), max(0.0, self.wait_of(h))) for h in list(hosts) if h in self.held]
        if not rows:
            return
        await self._conn.run(
            lambda conn: conn.execute(
                "UPDATE hosts h SET lease_owner = NULL, lease_token = NULL, lease_until = NULL,"
                " next_fetch_at = now() + make_interval(secs => t.wait)"
                " FROM unnest(%s::text[], %s::bigint[], %s::float8[]) AS t(host, token, wait)"
                " WHERE h.host = t.host AND h.lease_owner = %s AND h.lease_token = t.token",
                ([r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows], self.run_id),
            )
        )

    async def release_all(self) -> None:
        await self.release(list(self.held))

    # ---- runs -------------------------------------------------------------------------------

    async def mark_dead_runs(self) -> int:
        """Runs still 'running' whose heartbeat stopped more than a lease ago were killed."""

        async def mark(conn: Conn) -> int:
            cur = await conn.execute(
                "UPDATE runs SET outcome = 'killed' WHERE outcome = 'running' AND id <> %s"
                " AND (heartbeat_at IS NULL OR heartbeat_at < now() - make_interval(secs => %s))",
                (self.run_id, self.lease_seconds),
            )
            return int(cur.rowcount)

        return await self._conn.run(mark)

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

    async def claim(self, pages: int) -> int:
        """Claim up to `pages` more pages of the fleet's max_pages; returns how many were granted."""
        granted = await self._scalar(
            "WITH old AS (SELECT claimed FROM budget WHERE id = 1 FOR UPDATE)"
            " UPDATE budget b SET claimed = least(b.max_pages, b.claimed + %s) FROM old WHERE b.id = 1"
            " RETURNING b.claimed - old.claimed",
            (pages,),
        )
        return int(granted or 0)

    async def give_back(self, pages: int) -> None:
        """Return claimed pages this run will not fetch."""
        if pages > 0:
            await self._conn.run(
                lambda conn: conn.execute(
                    "UPDATE budget SET claimed = greatest(0, claimed - %s) WHERE id = 1", (pages,)
                )
            )

    async def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        async def fetch(conn: Conn) -> Any:
            cur = await conn.execute(sql, params)
            row = await cur.fetchone()
            return row[0] if row else None

        return await self._conn.run(fetch)


async def fence(conn: Conn, leases: HostLeases, batch: Batch) -> Batch:
    """Inside the flush's transaction: renew the hosts the batch writes for, and return the batch
    without the rows of hosts this run no longer holds (a lease that expired or was taken over)."""
    ids = {s[3] for s in batch.states} | {p.url_id for p in batch.pages} | {e[0] for e in batch.errors if e[0]}
    ids |= {c[3] for c in batch.confirmed} | {c[0] for c in batch.changes} | set(batch.archived)
    ids |= {s.url_id for s in batch.sitemaps} | {u.parent_id for u in batch.new_urls if u.parent_id is not None}
    ids |= {u.parent_id for u in batch.listed_urls if u.parent_id is not None}
    host_of: dict[int, str] = {}
    if ids:
        cur = await conn.execute("SELECT id, host FROM urls WHERE id = ANY(%s)", (sorted(ids),))
        host_of = {row[0]: row[1] for row in await cur.fetchall()}
    # Locked in name order, so that two flushes never wait on each other crosswise.
    hosts = sorted(set(host_of.values()) | {skip[2] for skip in batch.host_skips})
    lost = await leases.renew_in(conn, hosts)
    if not lost:
        return batch

    def gone(url_id: int | None) -> bool:
        return url_id is not None and host_of.get(url_id) in lost

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

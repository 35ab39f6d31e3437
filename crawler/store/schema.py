"""The SQLite schema: the migrations that build it, step by step, and its current version."""

from __future__ import annotations

# Each entry migrates the schema from version i to i + 1, in its own transaction.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id          INTEGER PRIMARY KEY,
        started_at  TEXT NOT NULL,
        finished_at TEXT,
        outcome     TEXT NOT NULL DEFAULT 'running',
        pages       INTEGER NOT NULL DEFAULT 0,
        config      TEXT NOT NULL
    );
    CREATE TABLE urls (
        id            INTEGER PRIMARY KEY,
        url           TEXT NOT NULL UNIQUE,
        host          TEXT NOT NULL,
        depth         INTEGER NOT NULL,
        state         TEXT NOT NULL,
        reason        TEXT,
        parent_id     INTEGER,
        discovered_at TEXT NOT NULL,
        updated_at    TEXT
    );
    CREATE INDEX urls_state_host ON urls (state, host, id);
    CREATE TABLE pages (
        url_id       INTEGER PRIMARY KEY,
        url          TEXT NOT NULL,
        final_url    TEXT NOT NULL,
        status       INTEGER NOT NULL,
        content_type TEXT,
        title        TEXT,
        depth        INTEGER NOT NULL,
        fetched_at   TEXT NOT NULL,
        elapsed_ms   REAL NOT NULL,
        http_version TEXT,
        bytes        INTEGER NOT NULL,
        headers      TEXT NOT NULL,
        redirects    TEXT NOT NULL,
        noindex      INTEGER NOT NULL DEFAULT 0,
        text         TEXT,
        body         BLOB,
        run_id       INTEGER
    );
    CREATE TABLE links (
        from_id  INTEGER NOT NULL,
        to_url   TEXT NOT NULL,
        nofollow INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (from_id, to_url)
    ) WITHOUT ROWID;
    CREATE INDEX links_to ON links (to_url);
    CREATE TABLE errors (
        id       INTEGER PRIMARY KEY,
        url_id   INTEGER,
        url      TEXT NOT NULL,
        kind     TEXT NOT NULL,
        message  TEXT NOT NULL,
        attempts INTEGER NOT NULL,
        at       TEXT NOT NULL,
        run_id   INTEGER
    );
    CREATE INDEX errors_kind ON errors (kind);
    CREATE TABLE robots (
        origin      TEXT PRIMARY KEY,
        status      INTEGER,
        fetched_at  TEXT NOT NULL,
        crawl_delay REAL,
        sitemaps    TEXT NOT NULL,
        note        TEXT
    );
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );
    """,
    # 2: full-text search over title and visible text, and two views for generic SQLite tools.
    # pages_fts is an external-content FTS5 table: it holds only the index, the text stays in
    # pages. A trigger queues each stored page in search_pending, and the flush that stored it
    # indexes the queue (flush.index_pending) in the same transaction; pages written by other
    # tools, or before this migration, wait there until a crawl's flushes or its end drain them.
    # The index holds exactly the rows of searchable_pages (noindex = 0, not pending), which
    # FTS5's integrity-check verifies: INSERT INTO pages_fts (pages_fts, rank) VALUES ('integrity-check', 1).
    """
    CREATE TABLE search_pending (
        url_id INTEGER PRIMARY KEY
    );
    CREATE VIEW searchable_pages AS
        SELECT url_id, title, text FROM pages
        WHERE noindex = 0 AND url_id NOT IN (SELECT url_id FROM search_pending);
    CREATE VIRTUAL TABLE pages_fts USING fts5(
        title, text,
        content = 'searchable_pages', content_rowid = 'url_id',
        tokenize = 'unicode61 remove_diacritics 2'
    );
    INSERT INTO search_pending (url_id) SELECT url_id FROM pages WHERE noindex = 0;
    CREATE TRIGGER pages_search_insert AFTER INSERT ON pages WHEN new.noindex = 0 BEGIN
        INSERT OR IGNORE INTO search_pending (url_id) VALUES (new.url_id);
    END;
    CREATE TRIGGER pages_search_delete AFTER DELETE ON pages BEGIN
        INSERT INTO pages_fts (pages_fts, rowid, title, text)
            SELECT 'delete', old.url_id, old.title, old.text
            WHERE old.noindex = 0 AND old.url_id NOT IN (SELECT url_id FROM search_pending);
        DELETE FROM search_pending WHERE url_id = old.url_id;
    END;
    CREATE TRIGGER pages_search_update AFTER UPDATE OF url_id, title, text, noindex ON pages BEGIN
        INSERT INTO pages_fts (pages_fts, rowid, title, text)
            SELECT 'delete', old.url_id, old.title, old.text
            WHERE old.noindex = 0 AND old.url_id NOT IN (SELECT url_id FROM search_pending);
        DELETE FROM search_pending WHERE url_id = old.url_id;
        INSERT INTO search_pending (url_id) SELECT new.url_id WHERE new.noindex = 0;
    END;
    CREATE VIEW link_urls AS
        SELECT f.url AS from_url, l.to_url, l.nofollow, t.state AS to_state, p.status AS to_status
        FROM links l
        JOIN urls f ON f.id = l.from_id
        LEFT JOIN urls t ON t.url = l.to_url
        LEFT JOIN pages p ON p.url_id = t.id;
    CREATE VIEW page_overview AS
        SELECT p.url_id, p.url, p.final_url, u.host, p.status, p.content_type, p.title, p.depth,
               p.fetched_at, p.elapsed_ms, p.http_version, p.bytes, p.noindex, p.run_id
        FROM pages p JOIN urls u ON u.id = p.url_id;
    """,
    # 3: links name their target by urls.id, not by URL text: rows and the links_to index are
    # much smaller, and random inserts of URL keys into that index were the writer's largest
    # single cost. Every link target now has a urls row: targets only ever linked with nofollow,
    # which schema 2 kept only as link text, become 'skipped' rows with reason 'nofollow'
    # (host from crawler_host_key, a function the store registers while migrating).
    """
    INSERT OR IGNORE INTO urls (url, host, depth, parent_id, state, reason, discovered_at)
        SELECT l.to_url, crawler_host_key(l.to_url), coalesce(min(f.depth), 0) + 1, min(l.from_id),
               'skipped', 'nofollow', strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
        FROM links l LEFT JOIN urls f ON f.id = l.from_id
        WHERE NOT EXISTS (SELECT 1 FROM urls t WHERE t.url = l.to_url)
        GROUP BY l.to_url ORDER BY min(l.from_id), l.to_url;
    DROP VIEW link_urls;
    CREATE TABLE links_by_id (
        from_id  INTEGER NOT NULL,
        to_id    INTEGER NOT NULL,
        nofollow INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (from_id, to_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO links_by_id (from_id, to_id, nofollow)
        SELECT l.from_id, t.id, l.nofollow FROM links l JOIN urls t ON t.url = l.to_url ORDER BY l.from_id, t.id;
    DROP TABLE links;
    ALTER TABLE links_by_id RENAME TO links;
    CREATE INDEX links_to ON links (to_id);
    CREATE VIEW link_urls AS
        SELECT f.url AS from_url, t.url AS to_url, l.nofollow, t.state AS to_state, p.status AS to_status
        FROM links l
        JOIN urls f ON f.id = l.from_id
        JOIN urls t ON t.id = l.to_id
        LEFT JOIN pages p ON p.url_id = t.id;
    """,
    # 4: sitemaps and recrawl passes. A urls row says whether it is a page or a sitemap, whether a
    # sitemap listed it, and the sitemap's <lastmod>. A page keeps its validators (ETag,
    # Last-Modified), a hash of its body, its canonical link, when it was last confirmed and
    # whether it is gone; page_history keeps the versions a recrawl replaced, and changes holds
    # one row per URL fetched by a recrawl pass. Pages stored before this step get their hash
    # from their stored body (crawler_body_hash, registered while migrating) where they kept one.
    """
    ALTER TABLE runs ADD COLUMN kind TEXT NOT NULL DEFAULT 'crawl';
    ALTER TABLE urls ADD COLUMN kind TEXT NOT NULL DEFAULT 'page';
    ALTER TABLE urls ADD COLUMN source TEXT;
    ALTER TABLE urls ADD COLUMN lastmod TEXT;
    ALTER TABLE pages ADD COLUMN content_hash TEXT;
    ALTER TABLE pages ADD COLUMN etag TEXT;
    ALTER TABLE pages ADD COLUMN last_modified TEXT;
    ALTER TABLE pages ADD COLUMN canonical TEXT;
    ALTER TABLE pages ADD COLUMN seen_at TEXT;
    ALTER TABLE pages ADD COLUMN gone INTEGER NOT NULL DEFAULT 0;
    UPDATE pages SET content_hash = crawler_body_hash(body), seen_at = fetched_at;
    CREATE INDEX pages_content_hash ON pages (content_hash);
    CREATE TABLE sitemaps (
        url        TEXT PRIMARY KEY,
        url_id     INTEGER,
        parent     TEXT,
        status     INTEGER,
        urls       INTEGER NOT NULL DEFAULT 0,
        fetched_at TEXT NOT NULL,
        error      TEXT,
        run_id     INTEGER
    );
    CREATE TABLE page_history (
        id           INTEGER PRIMARY KEY,
        url_id       INTEGER NOT NULL,
        fetched_at   TEXT NOT NULL,
        status       INTEGER NOT NULL,
        content_hash TEXT,
        body         BLOB,
        run_id       INTEGER
    );
    CREATE INDEX page_history_url ON page_history (url_id, id);
    CREATE TABLE changes (
        run_id     INTEGER NOT NULL,
        url_id     INTEGER NOT NULL,
        change     TEXT NOT NULL,
        status     INTEGER,
        fetched_at TEXT NOT NULL,
        PRIMARY KEY (run_id, url_id)
    ) WITHOUT ROWID;
    """,
    # 5: a robots row keeps what rebuilds its rules, so a resumed crawl (or, on PostgreSQL, another
    # crawler) uses it within robots_ttl instead of fetching robots.txt again: the body read, why a
    # fetch failed, and how many fetches in a row found it unreachable. Older rows keep a NULL body
    # and rebuild nothing.
    """
    ALTER TABLE robots ADD COLUMN body BLOB;
    ALTER TABLE robots ADD COLUMN error TEXT;
    ALTER TABLE robots ADD COLUMN error_kind TEXT;
    ALTER TABLE robots ADD COLUMN misses INTEGER NOT NULL DEFAULT 0;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)

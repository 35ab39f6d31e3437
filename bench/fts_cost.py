"""What the full-text index costs at crawl time: Store.flush under three indexing designs.

    .venv/bin/python bench/fts_cost.py [--pages 3000] [--batch 250] [--rounds 3] [--text sitegen|zipf]

Pages are the benchmark site's 15 KB HTML (bench/sitegen.py), parsed with crawler.parse the
way the engine does, so title, visible text (about 14 KB), links and body are realistic.
`--text zipf` swaps the visible text for the same length of words drawn from a 20,000-word
Zipf vocabulary, closer to real prose (sitegen uses ~150 words, which flatters an index).

Each round writes all pages into fresh databases in batches like the engine's writer (pages,
their links, their new URLs and state updates in one transaction) and times only flush():
  none      no search triggers at all (the floor);
  queued    what ships: a trigger queues each page in search_pending, and the same flush
            indexes the queue in one statement (index_pending afterwards finds nothing
            left; it is timed still, for databases with a backlog);
  in-flush  a trigger indexes each page into pages_fts as its row is inserted.
Prints one line per run and the medians in µs per page.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.sitegen import generate_site, single_host_spec
from crawler.parse import parse_html
from crawler.store import NewUrl, PageRecord, Store, utc_now
from crawler.urls import host_key

MODES = ("none", "queued", "in-flush")
IN_FLUSH_TRIGGER = """
    CREATE TRIGGER bench_index_now AFTER INSERT ON pages WHEN new.noindex = 0 BEGIN
        INSERT INTO pages_fts (rowid, title, text) VALUES (new.url_id, new.title, new.text);
    END"""


def zipf_vocabulary(rng: random.Random) -> tuple[list[str], list[float]]:
    """20,000 random words and their Zipf weights (the word of rank r weighs 1/r)."""
    vocabulary = ["".join(rng.choices("abcdefghijklmnopqrstuvwxyz", k=rng.randint(3, 10))) for _ in range(20_000)]
    return vocabulary, [1.0 / (rank + 1) for rank in range(len(vocabulary))]


def zipf_text(length: int, rng: random.Random, vocabulary: list[str], weights: list[float]) -> str:
    words: list[str] = []
    size = 0
    while size < length:
        chunk = rng.choices(vocabulary, weights=weights, k=200)
        words += chunk
        size += sum(len(w) + 1 for w in chunk)
    return " ".join(words)[:length]


def build_pages(count: int, text_mode: str, folder: Path) -> list[tuple[PageRecord, list[tuple[str, bool]]]]:
    site = generate_site(single_host_spec(count), folder / "site", port=8000)
    rng = random.Random(7)
    vocabulary, weights = zipf_vocabulary(rng)
    pages = []
    for url_id, url in enumerate(site.urls, start=1):
        path = url.split(":8000", 1)[1]
        file = folder / "site" / "127.0.0.1" / ("index.html" if path == "/" else path.lstrip("/"))
        body = file.read_bytes()
        parsed = parse_html(body.decode(), url, max_links=5000)
        text = parsed.text if text_mode == "sitegen" else zipf_text(len(parsed.text), rng, vocabulary, weights)
        record = PageRecord(
            url_id=url_id,
            url=url,
            final_url=url,
            status=200,
            content_type="text/html",
            title=parsed.title,
            depth=3,
            fetched_at=utc_now(),
            elapsed_ms=1.5,
            http_version="HTTP/1.1",
            size=len(body),
            headers=[("content-type", "text/html"), ("content-length", str(len(body)))],
            redirects=[],
            noindex=False,
            text=text,
            body=body,
        )
        pages.append((record, [(link.url, link.nofollow) for link in parsed.links]))
    return pages


async def write_all(
    db: Path, pages: list[tuple[PageRecord, list[tuple[str, bool]]]], batch: int, mode: str
) -> tuple[float, float]:
    """Seconds spent in flush(), and in index_pending() afterwards (queued mode only)."""
    store = await Store.open(db)
    try:
        if mode != "queued":
            await store._write("DROP TRIGGER pages_search_insert")
        if mode == "in-flush":
            await store._write(IN_FLUSH_TRIGGER)
        flushing = 0.0
        for start in range(0, len(pages), batch):
            for record, links in pages[start : start + batch]:
                store.add_urls(NewUrl(url, host_key(url), record.depth + 1, record.url_id) for url, _ in links)
                store.add_page(record, links)
            began = time.perf_counter()
            await store.flush()
            flushing += time.perf_counter() - began
        began = time.perf_counter()
        while await store.index_pending(2000) == 2000:
            pass
        indexing = time.perf_counter() - began
        indexed = await store.scalar("SELECT count(*) FROM pages_fts_docsize")
        assert indexed == (0 if mode == "none" else len(pages)), indexed
        return flushing, indexing
    finally:
        await store.close()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=3000)
    parser.add_argument("--batch", type=int, default=250, help="pages per flush (the engine flushes every 0.25 s)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--text", choices=("sitegen", "zipf"), default="sitegen")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        pages = build_pages(args.pages, args.text, folder)
        mean_text = statistics.mean(len(r.text or "") for r, _ in pages)
        print(f"{len(pages)} pages, {mean_text:,.0f} chars of visible text each, {args.batch} pages per flush")
        flush: dict[str, list[float]] = {mode: [] for mode in MODES}
        index: list[float] = []
        per_page = 1e6 / len(pages)
        for n in range(args.rounds):
            # Rotate the order so no variant always runs on a warmer cache.
            for mode in MODES[n % 3 :] + MODES[: n % 3]:
                db = folder / f"r{n}-{mode}.db"
                flushing, indexing = await write_all(db, pages, args.batch, mode)
                flush[mode].append(flushing)
                line = f"round {n + 1} {mode:<8}: flush {flushing * per_page:7.1f} µs/page"
                if mode == "queued":
                    index.append(indexing)
                    line += f", index_pending afterwards {indexing * per_page:7.1f} µs/page"
                print(line)
        median = {mode: statistics.median(values) * per_page for mode, values in flush.items()}
        print("median flush cost, µs/page: " + ", ".join(f"{mode} {value:.1f}" for mode, value in median.items()))
        print(
            "median deferred indexing (index_pending, 2,000 pages per transaction):"
            f" {statistics.median(index) * per_page:.1f} µs/page"
        )
        for mode in MODES[1:]:
            extra = median[mode] - median["none"]
            print(f"{mode}: {extra:+.1f} µs/page over none, i.e. {extra / 1000:+.2f} s of writer time per 1,000 pages")


if __name__ == "__main__":
    asyncio.run(main())

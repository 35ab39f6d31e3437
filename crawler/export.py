"""Exports of stored pages: JSON Lines and CSV rows, and WARC 1.1 request/response records through warcio."""

from __future__ import annotations

import contextlib
import http
import os
from collections.abc import Iterator
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import urlsplit

from crawler import __version__
from crawler.errors import CrawlerError, UsageError
from crawler.filters import PageFilter
from crawler.formats import write_csv, write_jsonl
from crawler.query import Results, StoredPage

if TYPE_CHECKING:  # warcio is slow to import: only a WARC export loads it, not every crawl
    from warcio.statusandheaders import StatusAndHeaders

# Every stored column but the body (the WARC export carries bodies).
EXPORT_COLUMNS = (
    "url", "final_url", "status", "content_type", "title", "depth", "fetched_at", "elapsed_ms",
    "http_version", "bytes", "noindex", "redirects", "headers", "text",
)  # fmt: skip
# The stored body is decoded, so these headers of the original response no longer describe it.
_BODY_FRAMING = frozenset({"content-encoding", "transfer-encoding", "content-length"})


@dataclass(frozen=True, slots=True)
class ExportSummary:
    pages: int  # pages written
    without_body: int  # pages left out of a WARC: noindex, or store_bodies was off


def export(
    results: Results,
    fmt: str,
    out: IO[Any],
    *,
    where: PageFilter | None = None,
    limit: int | None = None,
    warc_gzip: bool = True,
    warc_name: str = "",
) -> ExportSummary:
    """Write the pages matching `where` to out (text for jsonl/csv, binary for warc)."""
    pages = results.iter_stored_pages(where, limit=limit)
    if fmt == "jsonl":
        return ExportSummary(write_jsonl(out, EXPORT_COLUMNS, _rows(pages)), 0)
    if fmt == "csv":
        return ExportSummary(write_csv(out, EXPORT_COLUMNS, _rows(pages)), 0)
    if fmt == "warc":
        return write_warc(out, pages, gzip=warc_gzip, name=warc_name, source=results.location)
    raise ValueError(f"unknown export format {fmt!r}")


def export_file(
    results: Results, fmt: str, path: Path, *, where: PageFilter | None = None, limit: int | None = None
) -> ExportSummary:
    """Export into path through a temporary file, so a failed export never leaves half a file behind.

    A WARC is gzipped record by record (the usual .warc.gz) unless path ends in .warc.
    """
    binary = fmt == "warc"
    with _atomic(path, binary=binary) as out:
        return export(
            results, fmt, out, where=where, limit=limit, warc_gzip=path.suffix != ".warc", warc_name=path.name
        )


def write_warc(out: IO[bytes], pages: Iterator[StoredPage], *, gzip: bool, name: str, source: str) -> ExportSummary:
    from warcio.warcwriter import WARCWriter

    writer = WARCWriter(out, gzip=gzip, warc_version="1.1")
    info = {
        "software": f"crawler/{__version__} (warcio)",
        "format": "WARC File Format 1.1",
        "conformsTo": "https://iipc.github.io/warc-specifications/specifications/warc-format/warc-1.1/",
        "description": f"pages exported from {source}; request records are rebuilt from the URL and User-Agent",
    }
    writer.write_record(writer.create_warcinfo_record(name, info))
    written = skipped = 0
    for page in pages:
        if page.body is None:
            skipped += 1
            continue
        response = writer.create_warc_record(
            page.final_url,
            "response",
            payload=BytesIO(page.body),
            length=len(page.body),
            http_headers=_response_head(page),
            warc_headers_dict={"WARC-Date": page.fetched_at},
        )
        request = writer.create_warc_record(page.final_url, "request", http_headers=_request_head(page))
        writer.write_request_response_pair(request, response)
        written += 1
    return ExportSummary(written, skipped)


def _response_head(page: StoredPage) -> StatusAndHeaders:
    from warcio.statusandheaders import StatusAndHeaders

    try:
        reason = http.HTTPStatus(page.status).phrase
    except ValueError:
        reason = ""
    headers = [(name, value) for name, value in page.headers if name not in _BODY_FRAMING]
    headers.append(("content-length", str(len(page.body or b""))))
    return StatusAndHeaders(f"{page.status} {reason}".strip(), headers, protocol=page.http_version or "HTTP/1.1")


def _request_head(page: StoredPage) -> StatusAndHeaders:
    from warcio.statusandheaders import StatusAndHeaders

    parts = urlsplit(page.final_url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = [("Host", parts.netloc)]
    if page.user_agent:
        headers.append(("User-Agent", page.user_agent))
    return StatusAndHeaders(f"GET {target} {page.http_version or 'HTTP/1.1'}", headers, is_http_request=True)


def _rows(pages: Iterator[StoredPage]) -> Iterator[list[Any]]:
    for page in pages:
        yield [getattr(page, name) for name in EXPORT_COLUMNS]


@contextlib.contextmanager
def _atomic(path: Path, *, binary: bool) -> Iterator[IO[Any]]:
    partial = path.with_name(path.name + ".partial")
    try:
        out = open(partial, "wb") if binary else open(partial, "w", encoding="utf-8", newline="")  # noqa: SIM115
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from exc
    try:
        try:
            with out:
                yield out
            os.replace(partial, path)
        except OSError as exc:
            raise CrawlerError(f"cannot write {path}: {exc.strerror or exc}") from exc
    except BaseException:
        with contextlib.suppress(OSError):
            partial.unlink()
        raise

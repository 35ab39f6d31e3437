"""The parser process of crawler/parsepool.py: pages in, parsed pages out, over its stdin and stdout.

It imports the parser and this module's few standard modules only (no asyncio, no store), so a
child starts on a fraction of the crawl's own imports. Frames are a 4-byte length and a
`marshal` payload: both ends are the same interpreter, and the payload is only bytes, str,
bool, int and tuples.
"""

from __future__ import annotations

import contextlib
import gc
import marshal
import os
import signal
import struct
from typing import Any

from crawler.parse import ParsedPage, parse_page

HEADER = struct.Struct("<I")
OK, FAILED = 0, 1
READY = b"R"  # a child's first byte: it has imported the parser and waits for jobs
NICENESS = 10  # added to the crawl's own niceness in each child
PIPE_BYTES = 1024 * 1024  # Linux's default pipe-max-size


def encode_page(page: ParsedPage) -> tuple[object, ...]:
    links = tuple(map(tuple, page.links))  # marshal takes plain tuples only, not Link
    return (page.title, links, page.noindex, page.nofollow, page.canonical, page.text)


def _read_exactly(fd: int, size: int) -> bytes | None:
    chunks = []
    while size:
        chunk = os.read(fd, size)
        if not chunk:
            return None
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def serve(in_fd: int, out_fd: int) -> None:
    """The child's loop: one job in, one answer out, until its input closes."""
    _write_all(out_fd, READY)
    while (header := _read_exactly(in_fd, HEADER.size)) is not None:
        payload = _read_exactly(in_fd, HEADER.unpack(header)[0])
        if payload is None:
            return
        body, content_type, url, max_links, robots_name = marshal.loads(payload)
        try:
            page = parse_page(body, content_type, url, max_links=max_links, robots_name=robots_name)
            answer: tuple[int, Any] = (OK, encode_page(page))
        except Exception as exc:  # reported to the crawl as this page's ParseError
            answer = (FAILED, repr(exc))
        data = marshal.dumps(answer)
        _write_all(out_fd, HEADER.pack(len(data)) + data)


def main() -> None:
    # The crawl decides when a child ends (by closing its input): a Ctrl-C or SIGTERM sent to
    # the whole process group must not kill the parsers while the crawl finishes its pages.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # The pipe on stdout carries frames only: anything printed goes to stderr instead.
    out_fd = os.dup(1)
    os.dup2(2, 1)
    _widen_pipes(0, out_fd)
    # Behind the crawl's event loop and SQLite's thread when the cores are all busy, since
    # those set the crawl's pace.
    with contextlib.suppress(AttributeError, OSError):  # no os.nice off Unix
        os.nice(NICENESS)
    with contextlib.suppress(BrokenPipeError):  # the crawl is gone
        serve(0, out_fd)
    # Its input closed: leave the imports' objects out of the collection at interpreter shutdown.
    gc.freeze()


def _widen_pipes(*fds: int) -> None:
    """Give the child's pipes room for many pages (Linux; elsewhere they keep their size).

    A default pipe holds only a few pages or answers, so the child would wait for the crawl's
    busy event loop to move them in or out.
    """
    try:
        import fcntl

        for fd in fds:
            fcntl.fcntl(fd, fcntl.F_SETPIPE_SZ, PIPE_BYTES)
    except (ImportError, AttributeError, OSError):  # not Linux, or above /proc/sys/fs/pipe-max-size
        pass


if __name__ == "__main__":
    main()

"""HTML parsing in child processes, so the crawl's event loop spends its one core on fetching and storing.

selectolax holds the GIL while it parses, so a thread would not help: a page's decode, parse,
link resolution and text extraction run in `workers` child processes instead, fed over pipes.
A child runs crawler/parseworker.py, which imports the parser and little else.

Children start with the first page to parse, unless `start` is awaited before: a recrawl of
unchanged pages parses nothing and so never pays for them.

A child that dies (a crash in the native parser, a kill) costs the page it was parsing, which
becomes a ParseError; the pages queued behind it go to a fresh child. With workers = 0, when
no child can be launched, or after children keep dying at start, pages are parsed in the
crawl's own process.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import marshal
import sys
from dataclasses import dataclass

from crawler.errors import ParseError
from crawler.parse import ParsedPage, parse_page
from crawler.parseworker import HEADER, OK, READY

log = logging.getLogger(__name__)

CHILD_ARGV = (sys.executable, "-m", "crawler.parseworker")
_MAX_START_FAILURES = 3  # children dying before their first answer, in a row, before parsing inline
_STOP_WAIT = 2.0  # seconds a child gets to exit after its input closes


@dataclass(frozen=True, slots=True)
class ParseJob:
    """What a child needs to parse one page."""

    body: bytes
    content_type: str | None
    url: str
    max_links: int
    robots_name: str

    def run(self) -> ParsedPage:
        return parse_page(
            self.body, self.content_type, self.url, max_links=self.max_links, robots_name=self.robots_name
        )


def _decode_page(fields: tuple[object, ...]) -> ParsedPage:
    title, links, noindex, nofollow, canonical, text = fields
    return ParsedPage(
        title=title,  # type: ignore[arg-type]
        links=links,  # type: ignore[arg-type]  # (url, nofollow) pairs, as marshal gives them back
        noindex=bool(noindex),
        nofollow=bool(nofollow),
        canonical=canonical,  # type: ignore[arg-type]
        text=text,  # type: ignore[arg-type]
    )


class _Child:
    """One parser process and the jobs sent to it, answered in order."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.pending: collections.deque[tuple[ParseJob, asyncio.Future[ParsedPage]]] = collections.deque()
        self.ready = False
        self.reader: asyncio.Task[None] | None = None

    def send(self, job: ParseJob, future: asyncio.Future[ParsedPage]) -> None:
        payload = marshal.dumps((job.body, job.content_type, job.url, job.max_links, job.robots_name))
        assert self.proc.stdin is not None
        self.proc.stdin.write(HEADER.pack(len(payload)) + payload)
        self.pending.append((job, future))


class ParsePool:
    """Parses pages in `workers` child processes; `await parse(job)` gives one page's result."""

    def __init__(self, workers: int, *, argv: tuple[str, ...] = CHILD_ARGV) -> None:
        self.workers = workers
        self._argv = argv  # how to start a child; tests start one that crashes on cue
        self._children: list[_Child] = []
        self._start_failures = 0
        self._closing = False
        self._started: asyncio.Task[None] | None = None
        self.inline = workers == 0

    @property
    def started(self) -> bool:
        """Whether the children were started (or are starting), by `start` or by a first page."""
        return self._started is not None

    async def start(self) -> None:
        """Start the children now rather than with the first page (a no-op once they are started)."""
        if self._started is None:
            self._started = asyncio.create_task(self._start_children(), name="parser-start")
        # Shielded: a parse cancelled while the children start must not leave the pool half started.
        await asyncio.shield(self._started)

    async def _start_children(self) -> None:
        try:
            for _ in range(self.workers):
                self._children.append(await self._spawn())
        except OSError as exc:  # e.g. out of processes or file descriptors: parse here instead
            log.warning("cannot start a parser process (%s); parsing in this process", exc)
            self.inline = True

    async def _spawn(self) -> _Child:
        proc = await asyncio.create_subprocess_exec(
            *self._argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE
        )
        child = _Child(proc)
        child.reader = asyncio.create_task(self._read(child), name=f"parser-{proc.pid}")
        return child

    async def parse(self, job: ParseJob) -> ParsedPage:
        """The parsed page; ParseError if the parser could not produce it."""
        if not self.inline and not self._closing and (self._started is None or not self._started.done()):
            await self.start()
        if self.inline or not self._children:
            return job.run()
        future: asyncio.Future[ParsedPage] = asyncio.get_running_loop().create_future()
        self._least_busy().send(job, future)
        return await future

    def _least_busy(self) -> _Child:
        return min(self._children, key=lambda child: len(child.pending))

    async def _read(self, child: _Child) -> None:
        assert child.proc.stdout is not None
        stdout = child.proc.stdout
        try:
            if await stdout.readexactly(len(READY)) != READY:
                raise ConnectionError("not a parser process")
            child.ready = True
            while True:
                size = HEADER.unpack(await stdout.readexactly(HEADER.size))[0]
                status, payload = marshal.loads(await stdout.readexactly(size))
                _, future = child.pending.popleft()
                if future.done():  # its worker was cancelled meanwhile
                    continue
                if status == OK:
                    future.set_result(_decode_page(payload))
                else:
                    future.set_exception(ParseError(f"parser failed: {payload}"))
        except (asyncio.IncompleteReadError, ConnectionError):
            pass  # the child is gone
        if not self._closing:
            await self._replace(child)

    async def _replace(self, dead: _Child) -> None:
        """Fail the page the dead child was parsing, and hand the others to a new child (or parse them here)."""
        code = await dead.proc.wait()
        self._children.remove(dead)
        pending = list(dead.pending)
        dead.pending.clear()
        if dead.ready:  # it had started: the page at the head of its queue killed it
            self._start_failures = 0
            if pending:
                _, culprit = pending.pop(0)
                if not culprit.done():
                    culprit.set_exception(ParseError(f"the parser process died on this page (exit code {code})"))
            log.warning("a parser process died (exit code %s); starting a new one", code)
        else:  # it never started: no page is to blame
            self._start_failures += 1
        if self._start_failures >= _MAX_START_FAILURES:
            log.warning("parser processes keep failing to start (exit code %s); parsing in this process", code)
            self.inline = True
        else:
            try:
                self._children.append(await self._spawn())
            except OSError as exc:  # the queued pages must still be answered
                log.warning("cannot start a parser process (%s); parsing in this process", exc)
                self.inline = True
        for job, future in pending:
            if future.done():
                continue
            if self.inline or not self._children:
                _settle(future, job)
            else:
                self._least_busy().send(job, future)

    async def close(self) -> None:
        """End every child: close its input, wait for it to exit, kill it if it does not."""
        self._closing = True
        if self._started is not None:  # children still starting would outlive the pool
            await asyncio.gather(self._started, return_exceptions=True)
        children, self._children = self._children, []
        for child in children:
            assert child.proc.stdin is not None
            child.proc.stdin.close()
        for child in children:
            try:
                await asyncio.wait_for(child.proc.wait(), _STOP_WAIT)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    child.proc.kill()
                await child.proc.wait()
            if child.reader is not None:
                child.reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await child.reader
            for _, future in child.pending:
                future.cancel()


def _settle(future: asyncio.Future[ParsedPage], job: ParseJob) -> None:
    try:
        future.set_result(job.run())
    except Exception as exc:  # a parser bug costs this page, never the crawl
        future.set_exception(ParseError(f"parser failed: {exc!r}"))

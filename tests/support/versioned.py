"""A site whose pages carry ETag and Last-Modified and answer conditional requests with 304, as nginx does."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from email.utils import formatdate

from tests.support.site import HTML, Link, Request, Response, Site, html_page

_EPOCH = 1_700_000_000  # Last-Modified times count from here, one second per version


@dataclass(slots=True)
class Version:
    body: bytes
    etag: str | None
    last_modified: str | None


class VersionedSite:
    """Pages that can be changed, removed and added between passes; every answer follows RFC 9110:
    If-None-Match is compared first, If-Modified-Since only without it."""

    def __init__(self) -> None:
        self.site = Site()
        self._pages: dict[str, Version] = {}
        self._versions = 0

    def page(
        self,
        path: str,
        title: str,
        links: tuple[Link, ...] = (),
        *,
        text: str = "",
        etag: bool = True,
        last_modified: bool = True,
        canonical: str | None = None,
    ) -> VersionedSite:
        """Serve (or replace) path; every call is a new version with new validators."""
        self._versions += 1
        html = html_page(title, links, [text] if text else [])
        if canonical is not None:
            html = html.replace("</title>", f'</title><link rel="canonical" href="{canonical}">', 1)
        body = html.encode()
        tag = f'"{hashlib.sha256(body).hexdigest()[:16]}"' if etag else None
        stamp = formatdate(_EPOCH + self._versions, usegmt=True) if last_modified else None
        self._pages[path] = Version(body, tag, stamp)
        self.site.handler(path, lambda req, path=path: self._answer(req, path))  # type: ignore[misc]
        return self

    def remove(self, path: str, *, status: int = 404) -> VersionedSite:
        self._pages.pop(path, None)
        self.site.page(path, status=status, body=f"gone: {path}")
        return self

    def _answer(self, req: Request, path: str) -> Response:
        version = self._pages[path]
        headers = [("Content-Type", HTML)]
        if version.etag:
            headers.append(("ETag", version.etag))
        if version.last_modified:
            headers.append(("Last-Modified", version.last_modified))
        if_none_match = req.header("if-none-match")
        if_modified_since = req.header("if-modified-since")
        if if_none_match is not None:
            unchanged = version.etag is not None and version.etag in [t.strip() for t in if_none_match.split(",")]
        else:
            unchanged = if_modified_since is not None and if_modified_since == version.last_modified
        if unchanged:
            return Response(304, headers, b"")
        return Response(200, headers, version.body)

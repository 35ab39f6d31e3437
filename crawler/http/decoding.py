"""Bounded Content-Encoding decoding: gzip and deflate undone a piece at a time, so a bomb cannot balloon."""

from __future__ import annotations

import zlib
from collections.abc import Iterator

from crawler.errors import ErrorKind, FetchError

# Only what Inflater can undo with a bounded output; httpx would also offer br/zstd when installed.
ACCEPT_ENCODING = "gzip, deflate"
PIECE = 64 * 1024  # the most one zlib call may inflate, so a bomb is undone a piece at a time


class Inflater:
    """Undoes one gzip or deflate layer of a Content-Encoding, at most PIECE bytes per zlib call."""

    def __init__(self, coding: str) -> None:
        self.coding = coding
        self._gzip = coding != "deflate"
        self._z: zlib._Decompress | None = None  # made once the first two bytes are known
        self._members = 0
        self._head = b""  # bytes held back until two are known
        self._ended = False  # bytes after the last gzip member are ignored, as browsers do

    def feed(self, data: bytes) -> Iterator[bytes]:
        data = self._head + data
        self._head = b""
        while not self._ended:
            if self._z is None:
                if len(data) < 2:
                    self._head = data
                    return
                self._z = self._start(data)
                if self._z is None:
                    self._ended = True
                    return
            try:
                out = self._z.decompress(data, PIECE)
            except zlib.error as exc:
                raise FetchError(ErrorKind.PROTOCOL, f"undecodable {self.coding} body: {exc}") from None
            data = self._z.unconsumed_tail
            if out:
                yield out
            if self._z.eof:
                data = self._z.unused_data  # perhaps another gzip member
                self._z = None
                self._ended = not self._gzip
            elif not data and len(out) < PIECE:
                return  # all input used and no output held back

    def _start(self, head: bytes) -> zlib._Decompress | None:
        """A decompressor for the stream starting with head; None for trailing junk after gzip members."""
        self._members += 1
        if self._gzip:
            if self._members > 1 and not head.startswith(b"\x1f\x8b"):
                return None
            return zlib.decompressobj(16 + zlib.MAX_WBITS)
        # "deflate" means zlib-wrapped (RFC 9110), but servers also send raw deflate: sniff the header.
        zlib_header = head[0] & 0x0F == 8 and (head[0] << 8 | head[1]) % 31 == 0
        return zlib.decompressobj(zlib.MAX_WBITS if zlib_header else -zlib.MAX_WBITS)


# Registered codings we cannot undo: the body would be stored compressed, so it is an error.
_UNSUPPORTED_CODINGS = frozenset({"br", "zstd", "compress", "x-compress", "dcb", "dcz"})


def inflaters(codings: list[str]) -> list[Inflater]:
    """Decoders for a Content-Encoding list, in the order to apply them (last applied, first undone).

    Junk values (`utf-8`, `none`, `binary` are all seen in the wild) are ignored, as httpx and
    browsers do; a real coding we do not support is an error.
    """
    layers = []
    for coding in reversed(codings):
        name = coding.strip().lower()
        if name in ("gzip", "x-gzip", "deflate"):
            layers.append(Inflater(name))
        elif name in _UNSUPPORTED_CODINGS:
            raise FetchError(
                ErrorKind.PROTOCOL, f"unsupported Content-Encoding {coding.strip()!r} (we accept gzip, deflate)"
            )
    return layers


def decode(layers: list[Inflater], data: bytes, level: int = 0) -> Iterator[bytes]:
    if level == len(layers):
        if data:
            yield data
        return
    for piece in layers[level].feed(data):
        yield from decode(layers, piece, level + 1)

"""Search terms made by the crawler, not the database: a page's tsvector and a search's tsquery, from one tokenizer.

PostgreSQL's `to_tsvector` spends more server CPU per page than every other write of a crawl
together, and the server is the part of a fleet that does not scale out; the crawlers do. So
each crawler splits a page into words itself and sends the finished tsvector in its binary
form (PostgreSQL's `tsvectorsend`/`tsvectorrecv` layout), and a search splits its words the
same way, so a page and a query always agree on what a word is.

A word is a run of letters and digits (Python's `\\w` without `_`), lowercased, as FTS5's
unicode61 tokenizer splits text; diacritics are kept, as the `simple` configuration keeps them.
"""

from __future__ import annotations

import re
from array import array
from collections import defaultdict

WORD = re.compile(r"[^\W_]+")
MAX_TEXT = 250_000  # characters of a page's text that are indexed (a tsvector holds 1 MiB of lexemes)
MAX_POSITION = 16383  # PostgreSQL's largest word position; later words all count as this one
MAX_POSITIONS = 255  # positions to_tsvector keeps per lexeme (the first ones)
MAX_LEXEME_BYTES = 2047  # PostgreSQL's longest lexeme; to_tsvector drops longer words too
WEIGHT_A = 3 << 14  # the weight bits of a title position (A); the text's are D (0)
# ASCII text (most of it) is split by a byte table, which is several times faster than the regex:
# every byte but a letter or a digit becomes a space.
_ASCII_SPLIT = bytes(c if chr(c).isascii() and chr(c).isalnum() else 32 for c in range(256))
_ASCII_SPLIT_KEEP = bytes(c if c >= 128 or chr(c).isalnum() else 32 for c in range(256))  # keeps UTF-8's other bytes
_NETWORK_ORDER = array("H", [1]).tobytes() != b"\x00\x01"  # whether uint16s must be byte-swapped


def _tokens(text: str) -> list[bytes]:
    """The words of text, lowercased, as UTF-8."""
    data = text.lower().encode()
    if data.isascii():
        return data.translate(_ASCII_SPLIT).split()
    # Mostly ASCII as a rule: split at ASCII separators by the table (bytes of other characters
    # stay, whole), then split the few pieces that hold other characters by the regex.
    found: list[bytes] = []
    for piece in data.translate(_ASCII_SPLIT_KEEP).split():
        if piece.isascii():
            found.append(piece)
        else:
            found += (word.encode() for word in WORD.findall(piece.decode()))
    return found


def words(text: str) -> list[str]:
    """The words of text, lowercased, in order."""
    return [word.decode() for word in _tokens(text)]


def page_vector(title: str | None, text: str | None) -> bytes:
    """The binary tsvector of a page: its title's words with weight A, then its text's (the first
    MAX_TEXT characters), numbered on from the title as `setweight(title, 'A') || text` numbers them."""
    title_words = _tokens(title or "")
    text_words = _tokens((text or "")[:MAX_TEXT])
    positions: defaultdict[bytes, list[int]] = defaultdict(list)
    for position, word in enumerate(title_words[: MAX_POSITION - 1], 1):
        positions[word].append(position | WEIGHT_A)
    head = text_words[: max(0, MAX_POSITION - 1 - len(title_words))]
    for position, word in enumerate(head, len(title_words) + 1):
        positions[word].append(position)
    for word in dict.fromkeys(title_words[MAX_POSITION - 1 :] + text_words[len(head) :]):
        where = positions[word]
        if not where or (where[-1] & MAX_POSITION) != MAX_POSITION:
            where.append(MAX_POSITION)
    # tsvectorrecv's layout: a count, then per lexeme (in byte order) its bytes, a NUL, the number
    # of positions and the positions, ascending; integers in network byte order.
    parts = [b""]
    count = 0
    for lexeme in sorted(positions):
        if len(lexeme) > MAX_LEXEME_BYTES:
            continue
        entry = array("H", positions[lexeme][:MAX_POSITIONS])
        entry.insert(0, len(entry))
        if _NETWORK_ORDER:
            entry.byteswap()
        parts += (lexeme, b"\x00", entry.tobytes())
        count += 1
    parts[0] = count.to_bytes(4, "big")
    return b"".join(parts)


def query_terms(phrases: list[tuple[str, bool]]) -> str:
    """A tsquery's text (for `::tsquery`) that requires every phrase: (words, prefix) pairs, a
    phrase's words adjacent and in order, its last word a prefix when asked; '' when no word is left."""
    terms = []
    for phrase, prefix in phrases:
        found = words(phrase)
        if not found:
            continue
        lexemes = [_quoted(word) for word in found]
        if prefix:
            lexemes[-1] += ":*"
        terms.append(lexemes[0] if len(lexemes) == 1 else "(" + " <-> ".join(lexemes) + ")")
    return " & ".join(terms)


def _quoted(lexeme: str) -> str:
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"

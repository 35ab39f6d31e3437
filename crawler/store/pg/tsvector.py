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
import struct
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
_OTHER_BYTE = re.compile(rb"[\x80-\xff]")
# A lexeme's tail in tsvectorrecv's layout, by its number of positions: a NUL, the number, the
# positions; one struct compiled per number, so packing an entry is one call (bench/tsvector_cost.py).
_ENTRY = [struct.Struct(f">x{count + 1}H").pack for count in range(MAX_POSITIONS + 1)]


def _tokens(text: str) -> list[bytes]:
    """The words of text, lowercased, as UTF-8."""
    data = text.encode()
    if data.isascii():
        return data.lower().translate(_ASCII_SPLIT).split()
    # Mostly ASCII as a rule: split at ASCII separators by the table, in bulk, between the pieces
    # that hold other characters' bytes; those few are lowercased and split by the regex.
    spaced = data.translate(_ASCII_SPLIT_KEEP)
    found: list[bytes] = []
    done = 0
    while (other := _OTHER_BYTE.search(spaced, done)) is not None:
        start = spaced.rfind(b" ", done, other.start()) + 1
        end = spaced.find(b" ", other.end())
        end = len(spaced) if end < 0 else end
        found += spaced[done:start].lower().split()
        found += (word.encode() for word in WORD.findall(spaced[start:end].decode().lower()))
        done = end
    found += spaced[done:].lower().split()
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
    for lexeme in sorted(positions):  # the keys alone: sorting (key, list) pairs is slower
        if len(lexeme) > MAX_LEXEME_BYTES:
            continue
        where = positions[lexeme]
        if len(where) > MAX_POSITIONS:
            where = where[:MAX_POSITIONS]
        parts += (lexeme, _ENTRY[len(where)](len(where), *where))
    parts[0] = (len(parts) // 2).to_bytes(4, "big")
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
